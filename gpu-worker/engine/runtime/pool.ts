// A worker_threads pool of ORT sessions. onnxruntime-node's session.run blocks its thread's event loop
// for the whole run (seconds for a CLIP backward pass), so the server keeps sessions off the main thread.
// Graphs handed over as IR are serialized there too (seconds at ViT-B/32 size).
//
// Every worker loads every model: any idle worker can take any run. Loads are cached by key.
//
// A worker thread that dies (an uncaught error, an exit, out of memory) is replaced: only the work that
// was in flight on it fails, as `aborted` (retryable), and the new thread re-opens a key's session on
// the key's next run there. Threads that keep dying (more than maxRestarts within restartWindowMs) are
// a machine or process problem: the pool stops replacing them and refuses work as runtime_unavailable.

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { Worker } from 'node:worker_threads';
import { EngineError } from '../errors.ts';
import type { ModelIR, TensorData } from '../onnx/ir.ts';
import { transferablesOf } from './pool-protocol.ts';
import type { LoadResult, ModelSource, PoolRequest, PoolResponse } from './pool-protocol.ts';
import type { SessionOptions } from './session.ts';

export interface EnginePoolOptions {
  /** Worker threads (default 1). Each holds its own copy of every loaded model. */
  size?: number;
  /**
   * Options for every session. intraOpThreads defaults to cores / size so that workers running
   * at once do not oversubscribe the CPU.
   */
  sessionOptions?: SessionOptions;
  /**
   * How long close() waits for work in flight before it fails what is left as `aborted` and returns
   * (default 30 s). A native run that never returns (a hung device) would otherwise hold close()
   * forever. A thread still inside onnxruntime then ends once its call returns (see runningThreads).
   */
  closeTimeoutMs?: number;
  /** Dead worker threads replaced within restartWindowMs before the pool gives up (default 3). */
  maxRestarts?: number;
  /** The window maxRestarts counts deaths in (default 60 s). */
  restartWindowMs?: number;
}

export interface RunOptions {
  /**
   * Move the feed buffers to the worker instead of copying them. The caller's typed arrays become
   * detached (length 0) afterwards, so only use it for feeds built for this one run.
   */
  transfer?: boolean;
}

export interface LoadOptions {
  /**
   * Bytes only: move the model bytes to the worker instead of copying them (a ViT-B/32 graph is over 300 MB, and
   * the copy is made on the caller's thread). The caller's array becomes detached (length 0), so only use
   * it for bytes encoded for this one load. With several workers all but one get a copy. Bytes that are a
   * view on part of a larger buffer are copied anyway: moving them would detach the whole buffer.
   */
  transfer?: boolean;
  /**
   * IR models only: from this many bytes of initializers up, the worker writes the graph to a temporary
   * .onnx with external data and loads it by path (protobuf caps an in-memory model at 2 GB). Default 1.5 GiB.
   */
  inlineLimitBytes?: number;
  /**
   * IR models only: the folder for that temporary file (default: this thread's os.tmpdir()). The pool
   * makes a folder of its own there for each such load, and removes it once the load is answered or its
   * thread has ended, so a thread that ends mid-write (close(), a crash) leaves nothing behind. One a
   * killed process left (`clipag-graph-<its pid>-<its nonce>-*`) is removed by the next process's first pool or load there.
   */
  tempDir?: string;
}

export interface EngineHandle {
  readonly key: string;
  readonly inputNames: string[];
  readonly outputNames: string[];
  run(feeds: Record<string, TensorData>, fetches?: string[], opts?: RunOptions): Promise<Record<string, TensorData>>;
}

export const DEFAULT_INLINE_LIMIT_BYTES = 1.5 * 2 ** 30;
const DEFAULT_CLOSE_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_RESTARTS = 3;
const DEFAULT_RESTART_WINDOW_MS = 60_000;
/** How long close() waits for the idle threads it terminates to end. */
const TERMINATE_GRACE_MS = 1_000;

type Pending = { resolve: (v: unknown) => void; reject: (e: EngineError) => void };

/** What the pool needs to open a key again on a replacement thread. */
interface ModelEntry {
  source: ModelSource;
  options: SessionOptions;
  /** Which load of the key this is: an unload removes only the sessions this load opened. */
  gen: number;
  /** IR models from this many bytes of initializers up are loaded through a temporary file in `tempDir`. */
  inlineLimitBytes: number;
  tempDir: string;
}

/** A load of a key sent to one thread, and the runs given to that thread on it. */
interface SessionRef {
  gen: number;
  /** Settles when the thread answered the load. */
  ready: Promise<unknown>;
  /** Runs on this session not answered yet (those waiting for a re-open included): an unload waits for them. */
  runs: Set<Promise<unknown>>;
}

const noop = (): void => undefined;

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  /** Loads sent to this thread, by key: its sessions (a replacement thread starts with none). */
  readonly sessions = new Map<string, SessionRef>();
  /** Temporary folders of loads sent to this thread and not answered, by request id. */
  private readonly tempDirs = new Map<number, string>();
  /** Runs given to this thread that wait for it to re-open their key's session first. */
  waiting = 0;
  alive = true;
  /** close() is ending this thread: its exit is not a death. */
  stopping = false;
  /** The thread has ended. */
  exited = false;
  /** Why it stopped taking work: what a request sent to it after that gets. */
  error?: EngineError;

  constructor(onDeath: (w: PoolWorker, why: string) => void) {
    const isTs = import.meta.url.endsWith('.ts');
    // From TypeScript sources (tsx, vitest) the worker starts on a small .mjs entry that registers tsx's
    // loader itself and then imports pool-worker.ts (see pool-worker-tsx.mjs for why --import is not enough).
    // execArgv is emptied so a parent's `--import tsx` is not registered twice in the worker.
    this.worker = isTs
      ? new Worker(new URL('./pool-worker-tsx.mjs', import.meta.url), {
          execArgv: [],
          workerData: { entry: new URL('./pool-worker.ts', import.meta.url).href },
        })
      : new Worker(new URL('./pool-worker.js', import.meta.url), { execArgv: [] });
    this.worker.on('message', (res: PoolResponse) => {
      const p = this.pending.get(res.id);
      this.pending.delete(res.id);
      const settle = (): void => {
        if (!p) return;
        if (res.ok) p.resolve(res.value);
        else p.reject(new EngineError(res.error.code, res.error.message, res.error.detail));
      };
      // The thread is done with a load's temporary file once it answers (even a load close() gave up
      // on); the load settles once the file is gone.
      const removing = this.dropTempDir(res.id);
      if (removing) void removing.then(settle);
      else settle();
    });
    // An uncaught error emits 'error' and then 'exit': onDeath acts on the first.
    this.worker.on('error', (e) => onDeath(this, `engine worker thread crashed: ${e.message}`));
    this.worker.on('exit', (code) => {
      this.exited = true;
      // ...and with every file once it has ended, whatever it was doing.
      for (const id of [...this.tempDirs.keys()]) this.dropTempDir(id);
      onDeath(this, `engine worker thread exited with code ${code}`);
    });
  }

  /** Remembers `dir` as request `id`'s temporary folder, removed when the request is answered or the thread ends. */
  addTempDir(id: number, dir: string): void {
    this.tempDirs.set(id, dir);
  }

  /**
   * Removes request `id`'s temporary folder, if it has one (resolves once it is gone). Only once the
   * thread can no longer be writing there: it answered the request, ended, or was never sent it.
   */
  dropTempDir(id: number): Promise<void> | undefined {
    const dir = this.tempDirs.get(id);
    if (dir === undefined) return undefined;
    this.tempDirs.delete(id);
    return rm(dir, { recursive: true, force: true }).catch(noop);
  }

  /** Takes no more work; what was in flight on it fails with `error`. */
  fail(error: EngineError): void {
    this.alive = false;
    this.error ??= error;
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  /** Requests sent and not answered, plus runs waiting for a session: how busy it is. */
  get load(): number {
    return this.pending.size + this.waiting;
  }
}

/** Bytes of `model`'s initializers: what decides whether it loads through a temporary file. */
function initializerBytes(model: ModelIR): number {
  let bytes = 0;
  for (const t of model.initializers.values()) bytes += t.data.byteLength;
  return bytes;
}

/**
 * False only when the OS says no process `pid` exists (ESRCH): EPERM is another user's live process,
 * and a pid that cannot be asked about is not taken for dead. Pid reuse only makes a dead one look alive.
 */
export function processMayBeAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid < 1 || pid > 0x7fffffff) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * This process's temp-folder nonce: 8 hex characters drawn once per process, written into the names of
 * the temp folders it makes (next to its pid). A pid alone does not tell this process from a killed
 * predecessor: in a container the server is pid 1 (or 7 under tini) after every restart, so a folder
 * the last run left in a persistent volume carries our own pid. The worker threads of a process never
 * make these folders (the main thread makes and removes them), so one module instance per process draws it.
 */
export const PROCESS_NONCE = randomBytes(4).toString('hex');

/**
 * Whether the process that named a temp folder `<pid>-<nonce>` may still be writing it: this process
 * when the pid and nonce are ours; a dead predecessor's when only the pid is ours (pids are unique
 * among live processes of one namespace); otherwise what processMayBeAlive says.
 */
export function tempOwnerMayBeAlive(pid: number, nonce: string): boolean {
  if (pid === process.pid) return nonce === PROCESS_NONCE;
  return processMayBeAlive(pid);
}

/**
 * A large graph's temporary folder: `clipag-graph-<pid>-<PROCESS_NONCE>-<mkdtemp's 6 characters>`. The
 * pid and nonce of the process that made it tell a folder a SIGKILLed process left (the OOM killer is
 * likely exactly while a graph of 1.5 GB or more is written) from one a live process is writing.
 */
const GRAPH_TEMP_DIR = /^clipag-graph-(\d+)-([0-9a-f]{8})-[A-Za-z0-9]{6}$/;

/**
 * Removes the large-graph temporary folders in `parent` whose process no longer exists (nothing else
 * removes them: the pool that made one died with its process). Folders of live processes and other
 * names stay. Best effort: one that cannot be read or removed is left. Returns the names removed.
 */
export function sweepStaleGraphDirs(parent: string): string[] {
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = GRAPH_TEMP_DIR.exec(name);
    if (!m || tempOwnerMayBeAlive(Number(m[1]), m[2]!)) continue;
    try {
      rmSync(join(parent, name), { recursive: true, force: true });
      removed.push(name);
    } catch {
      // another user's, or a read-only folder: left as it is
    }
  }
  return removed;
}

/** Temp folder parents this process has swept: once each, at the first pool or large-graph load there. */
const sweptGraphParents = new Set<string>();
function sweepGraphParentOnce(parent: string): void {
  const key = resolvePath(parent);
  if (sweptGraphParents.has(key)) return;
  sweptGraphParents.add(key);
  sweepStaleGraphDirs(key);
}

function makeTempDir(parent: string): string {
  sweepGraphParentOnce(parent);
  try {
    return mkdtempSync(join(parent, `clipag-graph-${process.pid}-${PROCESS_NONCE}-`));
  } catch (e) {
    throw new EngineError('runtime_failed', `cannot make a temporary folder for a large graph in ${parent}: ${(e as Error).message}`, { tempDir: parent });
  }
}

function isModelIR(model: Uint8Array | string | ModelIR): model is ModelIR {
  return typeof model === 'object' && !(model instanceof Uint8Array);
}

/** Resolves true when `p` settles before `ms` pass, false otherwise; leaves no timer behind. */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, ms))));
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

function checkNonNegative(name: string, v: number | undefined, integer = false): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v))) {
    throw new EngineError('invalid_input', `EnginePool ${name} must be a non-negative ${integer ? 'integer' : 'number'}, got ${v}`);
  }
}

export class EnginePool {
  private static opened = 0;
  /** Every pool of this thread that is open, or closed with threads still inside a native call. */
  private static readonly live = new Set<EnginePool>();
  /** Pools of this thread started and not yet closed (each holds `size` worker threads). */
  static get openPools(): number {
    return EnginePool.opened;
  }

  /**
   * Worker threads of every pool of this thread that may be inside a native call now: one with work
   * in flight, or one close() gave up waiting for (runningThreads). process.exit() joins every worker
   * thread first, so with such a thread it waits for the call and then aborts (endProcess).
   */
  /** Pools this thread still tracks for busyThreads (open ones, and closed ones with a thread not ended): diagnostics. */
  static get trackedPools(): number {
    return EnginePool.live.size;
  }

  static get busyThreads(): number {
    let n = 0;
    for (const pool of EnginePool.live) {
      const busy = pool.closing ? pool.runningThreads : pool.workers.filter((w) => !w.exited && w.pending.size > 0).length;
      if (pool.closing && busy === 0) EnginePool.live.delete(pool);
      n += busy;
    }
    return n;
  }

  private readonly workers: PoolWorker[] = [];
  /** Every thread this pool started, replaced ones included. */
  private threads: PoolWorker[] = [];
  private readonly handles = new Map<string, Promise<EngineHandle>>();
  /** The source and options of every key loaded (or loading), to re-open it on a replacement thread. */
  private readonly models = new Map<string, ModelEntry>();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly sessionOptions: SessionOptions;
  /** How long close() waits for work in flight (EnginePoolOptions.closeTimeoutMs). */
  readonly closeTimeoutMs: number;
  private readonly maxRestarts: number;
  private readonly restartWindowMs: number;
  /** When worker threads died (performance.now()), within the restart window. */
  private deaths: number[] = [];
  private replaced = 0;
  private broken?: EngineError;
  private nextId = 1;
  /** Numbers the loads of keys (ModelEntry.gen). */
  private nextGen = 1;
  private closing?: Promise<void>;

  /** The options every session of this pool opens with (a copy; a load may add its own). */
  get options(): Readonly<SessionOptions> {
    return { ...this.sessionOptions };
  }

  constructor(opts: EnginePoolOptions = {}) {
    const size = opts.size ?? 1;
    if (!Number.isInteger(size) || size < 1) throw new EngineError('invalid_input', `EnginePool size must be a positive integer, got ${size}`);
    checkNonNegative('closeTimeoutMs', opts.closeTimeoutMs);
    checkNonNegative('maxRestarts', opts.maxRestarts, true);
    checkNonNegative('restartWindowMs', opts.restartWindowMs);
    this.closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.maxRestarts = opts.maxRestarts ?? DEFAULT_MAX_RESTARTS;
    this.restartWindowMs = opts.restartWindowMs ?? DEFAULT_RESTART_WINDOW_MS;
    this.sessionOptions = { ...opts.sessionOptions };
    if (this.sessionOptions.intraOpThreads === undefined && size > 1) {
      this.sessionOptions.intraOpThreads = Math.max(1, Math.floor(cpus().length / size));
    }
    // Large graphs go to os.tmpdir() unless a load names another folder (swept at its first use there).
    sweepGraphParentOnce(tmpdir());
    for (let i = 0; i < size; i++) this.workers.push(this.spawn());
    EnginePool.opened++;
    EnginePool.live.add(this);
  }

  /** The keys loaded (or loading) now. */
  get loadedKeys(): string[] {
    return [...this.handles.keys()];
  }

  get size(): number {
    return this.workers.length;
  }

  /** Dead worker threads replaced so far. */
  get restarts(): number {
    return this.replaced;
  }

  /** Set once threads died too often to be replaced: every load and run is refused with it. */
  get failure(): EngineError | undefined {
    return this.broken;
  }

  /**
   * Threads of this pool that have not ended. After close() only threads it gave up waiting for: each
   * ends when its native call returns, and keeps the process alive until then, so a process that ends
   * by itself (its event loop empties) waits for the call and exits cleanly. One that calls
   * process.exit() before then aborts when the call returns (onnxruntime-node cannot return into a
   * thread that is being stopped), as letting go of the thread (unref) would make a natural exit do.
   */
  get runningThreads(): number {
    return this.threads.filter((w) => !w.exited).length;
  }

  /** The worker threads' ids now (a replaced thread has a new one). */
  get threadIds(): number[] {
    return this.workers.map((w) => w.worker.threadId);
  }

  private spawn(): PoolWorker {
    const w = new PoolWorker((dead, why) => this.onDeath(dead, why));
    this.threads = [...this.threads.filter((t) => !t.exited), w];
    return w;
  }

  private onDeath(w: PoolWorker, why: string): void {
    if (!w.alive) return;
    if (w.stopping || this.closing) {
      w.fail(new EngineError('aborted', `${why} while the engine pool closed; retry on a new pool`));
      return;
    }
    const now = performance.now();
    this.deaths = this.deaths.filter((t) => now - t < this.restartWindowMs);
    this.deaths.push(now);
    if (this.deaths.length > this.maxRestarts) {
      this.broken ??= new EngineError(
        'runtime_unavailable',
        `engine worker threads died ${this.deaths.length} times within ${Math.round(this.restartWindowMs / 1000)} s (last: ${why}); ` +
          'the pool no longer replaces them: this process cannot run the engine reliably, restart it',
        { deaths: this.deaths.length, windowMs: this.restartWindowMs },
      );
      w.fail(this.broken);
      return;
    }
    // Only what was in flight on this thread fails; the job is fine and can be retried.
    w.fail(new EngineError('aborted', `${why}; the request was in flight on it and can be retried (the pool started a replacement thread)`));
    this.workers[this.workers.indexOf(w)] = this.spawn();
    this.replaced++;
  }

  private live(): PoolWorker[] {
    const live = this.workers.filter((w) => w.alive);
    if (live.length === 0) throw this.broken ?? new EngineError('runtime_unavailable', 'every engine worker thread has died; create a new EnginePool');
    return live;
  }

  private send(w: PoolWorker, req: PoolRequest, transfer: ArrayBuffer[] = []): Promise<unknown> {
    // A thread that died between picking it and sending: the message would go nowhere and never be answered.
    if (!w.alive) {
      w.dropTempDir(req.id);
      return Promise.reject(w.error ?? new EngineError('aborted', 'the engine worker thread stopped; retry'));
    }
    return new Promise<unknown>((resolve, reject) => {
      w.pending.set(req.id, { resolve, reject });
      try {
        try {
          w.worker.postMessage(req, transfer);
        } catch (e) {
          // A buffer that cannot be moved (one Node marked untransferable) is still correct copied.
          if (transfer.length === 0 || !(e instanceof Error && e.name === 'DataCloneError')) throw e;
          w.worker.postMessage(req);
        }
      } catch (e) {
        w.pending.delete(req.id);
        w.dropTempDir(req.id);
        reject(new EngineError('invalid_input', `cannot send the request to the engine worker: ${(e as Error).message}`));
      }
    });
  }

  /** Remembers `p` until it settles, so close() can wait for it. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    const done = (): void => void this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  private checkOpen(): void {
    if (this.closing) throw new EngineError('aborted', 'the engine pool is closed; create a new EnginePool');
  }

  private checkUsable(): void {
    this.checkOpen();
    if (this.broken) throw this.broken;
  }

  /**
   * Sends a load of `key` to `w` and records it as `w`'s session (dropped again if it fails). A graph
   * over the entry's inline limit goes through a temporary file: its folder is made here, on this
   * thread, so that it is removed even when the thread ends while writing it (see PoolWorker.dropTempDir).
   */
  private loadOn(w: PoolWorker, key: string, entry: ModelEntry, transfer: ArrayBuffer[] = []): SessionRef {
    const req: PoolRequest = { id: this.nextId++, type: 'load', key, gen: entry.gen, model: entry.source, options: entry.options };
    if (transfer.length > 0) req.returnBytes = true;
    let sent: Promise<unknown>;
    try {
      if (typeof entry.source === 'object' && !(entry.source instanceof Uint8Array) && w.alive && initializerBytes(entry.source.model) >= entry.inlineLimitBytes) {
        req.dir = makeTempDir(entry.tempDir);
        w.addTempDir(req.id, req.dir);
      }
      sent = this.send(w, req, transfer);
    } catch (e) {
      sent = Promise.reject(e);
    }
    const ref: SessionRef = { gen: entry.gen, ready: sent, runs: new Set() };
    w.sessions.set(key, ref);
    sent.catch(() => {
      if (w.sessions.get(key) === ref) w.sessions.delete(key);
    });
    return ref;
  }

  /**
   * Load `model` under `key` in every worker: ONNX bytes, a path (for models with external data), or a
   * graph as IR, which the worker serializes itself so that the caller's thread does not (seconds at
   * ViT-B/32 size). A second load of the same key returns the cached handle without reloading, even if
   * `model` differs: pick keys that identify the model (e.g. a content hash or file path plus variant).
   *
   * The pool keeps `model` (the IR or bytes by reference, moved bytes as the worker hands them back)
   * until the key is unloaded, to re-open it on a thread that replaces a dead one. An IR whose weights
   * live in SharedArrayBuffers (see shared-memory.ts) costs little to keep and nothing to send.
   */
  load(key: string, model: Uint8Array | string | ModelIR, opts: SessionOptions = {}, loadOpts: LoadOptions = {}): Promise<EngineHandle> {
    this.checkUsable();
    const cached = this.handles.get(key);
    if (cached) return cached;
    const options = { ...this.sessionOptions, ...opts };
    const source: ModelSource = isModelIR(model) ? { kind: 'graph', model } : model;
    const entry: ModelEntry = {
      source,
      options,
      gen: this.nextGen++,
      inlineLimitBytes: loadOpts.inlineLimitBytes ?? DEFAULT_INLINE_LIMIT_BYTES,
      tempDir: loadOpts.tempDir ?? tmpdir(),
    };
    const workers = this.live();
    // Bytes are copied to each worker (structured clone); a buffer can be transferred only once, so
    // with transfer the last worker gets the original and the others copies (made before it moves).
    const movable =
      loadOpts.transfer && model instanceof Uint8Array && model.buffer instanceof ArrayBuffer && model.byteOffset === 0 && model.byteLength === model.buffer.byteLength && model.byteLength > 0
        ? [model.buffer]
        : [];
    const attempts = workers.map((w, i) => this.loadOn(w, key, entry, i === workers.length - 1 ? movable : []));
    const loading = this.track(
      Promise.all(attempts.map((a) => a.ready)).then((results) => {
        const moved = (results as LoadResult[]).find((r) => r.bytes)?.bytes;
        if (moved) entry.source = moved;
        return this.makeHandle(key, results[0] as LoadResult);
      }),
    );
    this.handles.set(key, loading);
    this.models.set(key, entry);
    // A failed load is not cached, so the caller can fix the model and retry under the same key; the
    // threads where it did open (one thread died during the load, say) close it again.
    loading.catch(() => {
      if (this.handles.get(key) === loading) this.handles.delete(key);
      if (this.models.get(key) === entry) this.models.delete(key);
      workers.forEach((w, i) =>
        attempts[i]!.ready.then(
          () => {
            if (w.sessions.get(key) !== attempts[i] || this.closing) return; // a later load of the key replaced it
            w.sessions.delete(key);
            this.send(w, { id: this.nextId++, type: 'unload', key, gen: entry.gen }).catch(noop);
          },
          noop,
        ),
      );
    });
    return loading;
  }

  private makeHandle(key: string, info: LoadResult): EngineHandle {
    return {
      key,
      inputNames: info.inputNames,
      outputNames: info.outputNames,
      run: (feeds, fetches, opts) => this.run(key, feeds, fetches, opts),
    };
  }

  private run(key: string, feeds: Record<string, TensorData>, fetches?: string[], opts: RunOptions = {}): Promise<Record<string, TensorData>> {
    try {
      this.checkUsable();
      // least busy first: a busy worker's queue waits behind a blocking run
      const w = this.live().reduce((a, b) => (b.load < a.load ? b : a));
      const transfer = opts.transfer ? transferablesOf(Object.values(feeds)) : [];
      const send = () => this.send(w, { id: this.nextId++, type: 'run', key, feeds, fetches }, transfer) as Promise<Record<string, TensorData>>;
      const entry = this.models.get(key);
      // A thread that replaced a dead one opens the key on its first run there.
      const session = w.sessions.get(key) ?? (entry ? this.loadOn(w, key, entry) : undefined);
      // Without a session or a source the worker answers why (the key was never loaded, or unloaded).
      if (!session) return this.track(send());
      w.waiting++;
      const running = session.ready.then(
        () => {
          w.waiting--;
          return send();
        },
        (e: unknown) => {
          w.waiting--;
          throw e;
        },
      );
      // An unload of the key waits for it (a run waiting for a re-open included), so it does not release the session first.
      session.runs.add(running);
      const done = (): void => void session.runs.delete(running);
      running.then(done, done);
      return this.track(running);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Release `key`'s sessions in every worker, once the runs already given to them have finished; a
   * later load of the key loads afresh. Only the sessions of the load this unload removes: a load of the
   * key made while it waits keeps its own.
   */
  async unload(key: string): Promise<void> {
    this.checkOpen();
    const h = this.handles.get(key);
    const entry = this.models.get(key);
    if (!h || !entry) return;
    this.handles.delete(key);
    this.models.delete(key);
    await h.catch(noop);
    await Promise.all(
      this.live().map(async (w) => {
        const session = w.sessions.get(key);
        if (session?.gen === entry.gen) {
          w.sessions.delete(key);
          // A re-open in flight on a replacement thread would open the session after this unload; runs
          // given to the thread on it (waiting for that re-open, say) would find it released.
          await session.ready.catch(noop);
          while (session.runs.size > 0) await Promise.allSettled([...session.runs]);
        }
        // The thread may have died meanwhile: its sessions went with it.
        if (!w.alive) return;
        await this.send(w, { id: this.nextId++, type: 'unload', key, gen: entry.gen });
      }),
    );
  }

  /**
   * Tests only: ends worker thread `index` as a crash would: an uncaught error in it ('throw'),
   * process.exit inside it ('exit'), or ended from outside ('terminate': only on an idle thread, since
   * a thread stopped inside onnxruntime aborts the whole process when the native call returns).
   */
  crashWorkerForTest(index: number, how: 'throw' | 'exit' | 'terminate' = 'throw'): void {
    const w = this.workers[index];
    if (!w) throw new EngineError('invalid_input', `no worker ${index} in a pool of ${this.workers.length}`);
    if (how === 'terminate') void w.worker.terminate();
    else w.worker.postMessage({ id: this.nextId++, type: 'crash', how } satisfies PoolRequest);
  }

  /**
   * Stop taking work, wait up to closeTimeoutMs for what is in flight, release sessions and end the
   * workers; work still in flight after that fails as `aborted`. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    const deadline = performance.now() + this.closeTimeoutMs;
    const drain = async () => {
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    };
    if (await settlesWithin(drain(), deadline - performance.now())) {
      const released = Promise.allSettled(this.workers.filter((w) => w.alive).map((w) => this.send(w, { id: this.nextId++, type: 'close' })));
      await settlesWithin(released, deadline - performance.now());
    }
    const cut = new EngineError(
      'aborted',
      `the engine pool closed after waiting ${this.closeTimeoutMs} ms for work in flight (a run that does not return: a hung device or native call); retry it`,
    );
    const ended: Promise<unknown>[] = [];
    for (const w of this.workers) {
      w.stopping = true;
      // A request still unanswered may be inside onnxruntime. A thread terminated there aborts the whole
      // process when the native call returns ("terminate called after throwing an instance of
      // 'Napi::Error'"), so such a thread is asked to exit once it is back. It stays referenced: a
      // process may not end while the call runs, since that ends the thread inside the call and aborts
      // just the same (an unref'd thread lets the event loop empty, and Node then waits at exit for the
      // call and aborts: exit code 134). Kept referenced, the process ends once the thread has taken its
      // exit request, cleanly. An idle thread is simply ended.
      const busy = w.alive && w.pending.size > 0;
      if (w.alive) w.fail(cut);
      if (busy) w.worker.postMessage({ id: this.nextId++, type: 'exit' } satisfies PoolRequest);
      else ended.push(w.worker.terminate());
    }
    // Nothing of the models is kept past close(): the IR of every graph (and so its weights) goes with them.
    this.handles.clear();
    this.models.clear();
    for (const w of this.threads) w.sessions.clear();
    await settlesWithin(Promise.allSettled(ended), TERMINATE_GRACE_MS);
    EnginePool.opened--;
    // Kept in `live` only while a thread it let go of may still be inside a native call (busyThreads
    // drops it once that thread has ended).
    if (this.runningThreads === 0) EnginePool.live.delete(this);
  }
}

/** How long endProcess waits by default for a native call to return before it ends the process anyway. */
const END_PROCESS_GRACE_MS = 5_000;

/**
 * Ends the process with `code`, as process.exit() would, unless an engine thread may still be inside a
 * native call (EnginePool.busyThreads: a hung device's run that close() gave up on). process.exit()
 * joins worker threads first: it would wait for that call, however long, and then abort (exit code 134,
 * "terminate called after throwing an instance of 'Napi::Error'"). So it waits up to `graceMs` for such
 * calls to return and then exits with `code`, cleanly; past that it says why and kills the process
 * (SIGKILL: the status a shell sees is 137), since nothing else ends a process whose thread is stuck in
 * native code.
 */
export async function endProcess(code: number, opts: { graceMs?: number; warn?: (message: string) => void } = {}): Promise<never> {
  const deadline = performance.now() + (opts.graceMs ?? END_PROCESS_GRACE_MS);
  while (EnginePool.busyThreads > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const busy = EnginePool.busyThreads;
  if (busy > 0) {
    (opts.warn ?? ((m: string) => process.stderr.write(`${m}\n`)))(
      `${busy} engine thread(s) still inside a native call (a run that does not return: a hung device); ending the process without waiting for it (SIGKILL) instead of exiting with code ${code}`,
    );
    process.kill(process.pid, 'SIGKILL');
  }
  process.exit(code);
}

