// A worker_threads pool of ORT sessions. onnxruntime-node's session.run blocks its thread's event loop
// for the whole run (seconds for a CLIP backward pass), so the server keeps sessions off the main thread.
//
// Every worker loads every model: any idle worker can take any run. Loads are cached by key.

import { cpus } from 'node:os';
import { Worker } from 'node:worker_threads';
import { EngineError } from '../errors.ts';
import type { TensorData } from '../onnx/ir.ts';
import { transferablesOf } from './pool-protocol.ts';
import type { LoadResult, PoolRequest, PoolResponse } from './pool-protocol.ts';
import type { SessionOptions } from './session.ts';

export interface EnginePoolOptions {
  /** Worker threads (default 1). Each holds its own copy of every loaded model. */
  size?: number;
  /**
   * Options for every session. intraOpThreads defaults to cores / size so that workers running
   * at once do not oversubscribe the CPU.
   */
  sessionOptions?: SessionOptions;
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
   * Move the model bytes to the worker instead of copying them (a ViT-B/32 graph is over 300 MB, and
   * the copy is made on the caller's thread). The caller's array becomes detached (length 0), so only use
   * it for bytes encoded for this one load. With several workers all but one get a copy. Bytes that are a
   * view on part of a larger buffer are copied anyway: moving them would detach the whole buffer.
   */
  transfer?: boolean;
}

export interface EngineHandle {
  readonly key: string;
  readonly inputNames: string[];
  readonly outputNames: string[];
  run(feeds: Record<string, TensorData>, fetches?: string[], opts?: RunOptions): Promise<Record<string, TensorData>>;
}

type Pending = { resolve: (v: unknown) => void; reject: (e: EngineError) => void };

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  alive = true;

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
      if (!p) return;
      this.pending.delete(res.id);
      if (res.ok) p.resolve(res.value);
      else p.reject(new EngineError(res.error.code, res.error.message, res.error.detail));
    });
    this.worker.on('error', (e) => onDeath(this, `engine worker crashed: ${e.message}`));
    this.worker.on('exit', (code) => onDeath(this, `engine worker exited with code ${code}`));
  }

  failAll(why: string): void {
    this.alive = false;
    for (const p of this.pending.values()) p.reject(new EngineError('runtime_failed', why));
    this.pending.clear();
  }
}

export class EnginePool {
  private static opened = 0;
  /** Pools of this thread started and not yet closed (each holds `size` worker threads). */
  static get openPools(): number {
    return EnginePool.opened;
  }

  private readonly workers: PoolWorker[] = [];
  private readonly handles = new Map<string, Promise<EngineHandle>>();
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly sessionOptions: SessionOptions;
  private nextId = 1;
  private closing?: Promise<void>;

  /** The options every session of this pool opens with (a copy; a load may add its own). */
  get options(): Readonly<SessionOptions> {
    return { ...this.sessionOptions };
  }

  constructor(opts: EnginePoolOptions = {}) {
    const size = opts.size ?? 1;
    if (!Number.isInteger(size) || size < 1) throw new EngineError('invalid_input', `EnginePool size must be a positive integer, got ${size}`);
    this.sessionOptions = { ...opts.sessionOptions };
    if (this.sessionOptions.intraOpThreads === undefined && size > 1) {
      this.sessionOptions.intraOpThreads = Math.max(1, Math.floor(cpus().length / size));
    }
    for (let i = 0; i < size; i++) {
      this.workers.push(new PoolWorker((w, why) => w.failAll(why)));
    }
    EnginePool.opened++;
  }

  /** The keys loaded (or loading) now. */
  get loadedKeys(): string[] {
    return [...this.handles.keys()];
  }

  get size(): number {
    return this.workers.length;
  }

  private live(): PoolWorker[] {
    const live = this.workers.filter((w) => w.alive);
    if (live.length === 0) throw new EngineError('runtime_unavailable', 'every engine worker has died; create a new EnginePool (see the earlier runtime_failed error for the cause)');
    return live;
  }

  private send(w: PoolWorker, req: PoolRequest, transfer: ArrayBuffer[] = []): Promise<unknown> {
    const p = new Promise<unknown>((resolve, reject) => {
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
        reject(new EngineError('invalid_input', `cannot send the request to the engine worker: ${(e as Error).message}`));
      }
    });
    this.inflight.add(p);
    const done = (): void => void this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  private checkOpen(): void {
    if (this.closing) throw new EngineError('aborted', 'the engine pool is closed; create a new EnginePool');
  }

  /**
   * Load `model` (ONNX bytes, or a path — use a path for models with external data) under `key` in every
   * worker. A second load of the same key returns the cached handle without reloading, even if `model`
   * differs: pick keys that identify the model (e.g. a content hash or file path plus variant).
   */
  load(key: string, model: Uint8Array | string, opts: SessionOptions = {}, loadOpts: LoadOptions = {}): Promise<EngineHandle> {
    this.checkOpen();
    const cached = this.handles.get(key);
    if (cached) return cached;
    const options = { ...this.sessionOptions, ...opts };
    const workers = this.live();
    // Bytes are copied to each worker (structured clone); a buffer can be transferred only once, so
    // with transfer the last worker gets the original and the others copies (made before it moves).
    const movable =
      loadOpts.transfer && typeof model !== 'string' && model.buffer instanceof ArrayBuffer && model.byteOffset === 0 && model.byteLength === model.buffer.byteLength && model.byteLength > 0
        ? [model.buffer]
        : [];
    const loading = Promise.all(
      workers.map((w, i) => this.send(w, { id: this.nextId++, type: 'load', key, model, options }, i === workers.length - 1 ? movable : [])),
    ).then((results) => this.makeHandle(key, results[0] as LoadResult));
    this.handles.set(key, loading);
    // A failed load is not cached, so the caller can fix the model and retry under the same key.
    loading.catch(() => {
      if (this.handles.get(key) === loading) this.handles.delete(key);
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
      this.checkOpen();
      // least in-flight requests first: a busy worker's queue waits behind a blocking run
      const w = this.live().reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
      const transfer = opts.transfer ? transferablesOf(Object.values(feeds)) : [];
      return this.send(w, { id: this.nextId++, type: 'run', key, feeds, fetches }, transfer) as Promise<Record<string, TensorData>>;
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Release `key`'s sessions in every worker; a later load of the key loads afresh. */
  async unload(key: string): Promise<void> {
    this.checkOpen();
    const h = this.handles.get(key);
    if (!h) return;
    this.handles.delete(key);
    await h.catch(() => undefined);
    await Promise.all(this.live().map((w) => this.send(w, { id: this.nextId++, type: 'unload', key })));
  }

  /** Stop taking work, wait for what is in flight, release sessions and end the workers. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
      await Promise.allSettled(this.workers.filter((w) => w.alive).map((w) => this.send(w, { id: this.nextId++, type: 'close' })));
      for (const w of this.workers) w.alive = false;
      await Promise.all(this.workers.map((w) => w.worker.terminate()));
      EnginePool.opened--;
    })();
    return this.closing;
  }
}
