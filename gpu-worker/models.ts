// The model registry: model name → bundle folder → one ClipEngine per process.
//
// Bundles are the repo's `models/<name>/` folders that hold a `manifest.json` (or explicit
// name → folder entries), and, when a model store is given, the models pushed to it
// (shared/modelstore.ts, docs/model-store.md). Local folders win over store models of the same name;
// such a clash is logged once per name as a warning, since the API (in AWS mode) lists the pushed
// bundle while this registry serves the folder.
// A store model is downloaded into `<cacheDir>/<content hash>/`, every file checked against the
// store's sha256 (a corrupt download is deleted and fetched once more, then `invalid_model`), and the
// folder is reused by later jobs and later processes. Past a byte budget (cacheMaxBytes) the least
// recently used folders no engine is open on are deleted (a later job downloads one again), and
// download folders a dead process left are swept at the cache's first use. Engines are opened on first
// use and cached (past maxOpenModels the least recently used one no job holds is closed, once the new
// one has opened); every engine shares one
// EnginePool (the ORT sessions' worker threads), so compiled graphs of all models live in the same
// threads and the event loop stays free.

import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { bundleContentHash, isOtherBundleKind, localBundleContentHash, type ModelIndex, ModelStore, ModelStoreError, NewerModelIndexError, sha256Bytes, sha256OfFile } from '../shared/modelstore.ts';
import { RetryableError } from '../shared/errors.ts';
import { ClipEngine } from './engine/engine.ts';
import { EngineError } from './engine/errors.ts';
import { EnginePool, PROCESS_NONCE, tempOwnerMayBeAlive } from './engine/runtime/pool.ts';
import type { Device } from './engine/runtime/providers.ts';
import { MODEL_NAME_PATTERN } from '../shared/schemas/common.ts';

const MODEL_NAME = MODEL_NAME_PATTERN;

export interface ModelRegistryOptions {
  /** Folder whose `<name>/manifest.json` subfolders are the models (default: none scanned). */
  modelsDir?: string;
  /** Extra or overriding entries: model name → bundle folder. */
  bundles?: Record<string, string>;
  device?: Device;
  /** Threads per ORT session (default: all cores). */
  threads?: number;
  /** Shared pool; the registry makes (and owns) one when absent. */
  pool?: EnginePool;
  /** Pool worker threads when the registry makes the pool (default 1: one job at a time per GPU). */
  poolSize?: number;
  /** session.disable_prepacking for the sessions of the pool the registry makes (about half the CPU weight memory, a slower step). */
  disablePrepacking?: boolean;
  /** Models pushed with `clipag models push` are served from here (after the local folders). */
  store?: ModelStore;
  /** Download cache of store models, one `<contentHash>/` folder per bundle (default: <tmp>/clipag-models). */
  cacheDir?: string;
  /**
   * Bytes the cache's `<contentHash>/` folders may take together (default: no limit; the worker:
   * CLIPAG_MODEL_CACHE_MAX_BYTES). Past it the least recently used folders that no engine is open on
   * are deleted (a later job downloads one again); the folder just fetched, those being downloaded and
   * those engines are open on stay even when they alone are over it.
   */
  cacheMaxBytes?: number;
  /** How long a store index read stays fresh before `engine(name)` looks again (default 60 s). */
  indexTtlMs?: number;
  /**
   * Where a local folder that shadows a pushed model of the same name is reported (default: the
   * store's onWarning, which the worker routes to its log; else stderr).
   */
  onWarning?: (message: string) => void;
  /** Each engine's idle step graphs kept loaded (ClipEngine's maxLeasedGraphs; the worker: CLIPAG_MAX_LEASED_GRAPHS). */
  maxLeasedGraphs?: number;
  /**
   * Engines kept open at once (default: no limit; the worker: CLIPAG_MAX_OPEN_MODELS). Past it the least
   * recently used one no job holds is closed, its weights and sessions released; the next use of its
   * model opens it again. Without it every model ever asked for stayed resident for the life of the process.
   */
  maxOpenModels?: number;
}

export interface ModelInfo {
  name: string;
  /** The bundle folder; for a store model, its cache folder (present once downloaded). */
  dir: string;
  source: 'local' | 'store';
  /** Store models: the bundle's content hash (the cache key). */
  contentHash?: string;
}

/** What one store download did (for logs and tests). */
export interface StoreFetch {
  name: string;
  contentHash: string;
  dir: string;
  /** 'cached': the folder was there and verified; 'downloaded': fetched now. */
  outcome: 'cached' | 'downloaded';
  /** Download attempts (0 when cached; 2 when the first was corrupt). */
  attempts: number;
  bytes: number;
}

export interface ModelRegistry {
  /** Every model this registry can open, by name (sorted): local folders and the store models seen by the last refresh(). */
  list(): ModelInfo[];
  /**
   * Whether `name` may be served. With a store this is also true for any valid name not listed
   * yet (a model pushed after the last refresh): `engine(name)` then decides, failing with
   * `invalid_model` when the store does not have it either.
   */
  has(name: string): boolean;
  /** The bundle folder of `name` if it is on disk now (local, or a store model already fetched); EngineError('invalid_model') otherwise. */
  resolve(name: string): string;
  /** The bundle folder of `name`, downloading a store model into the cache first when needed. */
  locate(name: string): Promise<string>;
  /**
   * Before a job on `name` is claimed: the NewerModelError `locate` would throw (its store index is in
   * a format a newer clipag wrote, and this process serves no bundle the index still names), else
   * undefined. Reads the index (within its TTL), never downloads; anything else wrong (no such model, a
   * store that does not answer) is left to `locate`, where the run meets it.
   */
  waitsForNewer(name: string): Promise<NewerModelError | undefined>;
  /** Re-reads the store's model list (no-op without a store); returns list(). */
  refresh(): Promise<ModelInfo[]>;
  /** The process-wide engine for `name`, opened once (concurrent callers share the same open). */
  engine(name: string): Promise<ClipEngine>;
  /**
   * The engine for `name`, held until `done()`: a job's way in. When a `--force` push replaces a store
   * model, the engine of the old bundle is closed (its sessions and memory released) once nothing
   * holds it; `engine()` callers do not hold it. `contentHash`: the bundle the engine was opened from
   * (bundleContentHash, as `clipag models push` would index it), absent when it could not be taken.
   */
  use(name: string): Promise<{ engine: ClipEngine; done(): void; contentHash?: string }>;
  /** Closes every engine and the pool when the registry owns it. Idempotent. */
  close(): Promise<void>;
}

/**
 * A store model only a newer clipag can serve: its index is in a format_version this version does not
 * read (ADR 0030). Neither the request's fault (invalid_model would tell its caller to change it) nor
 * a bundle to serve: the deployment is behind the CLI that pushed it. Retryable: a newer worker may take
 * the job. The worker checks for it before it claims a job (ModelRegistry.waitsForNewer) and puts the
 * job back for a newer worker without spending a delivery, as for a record a newer clipag wrote.
 */
export class NewerModelError extends RetryableError {
  readonly model: string;
  readonly formatVersion: number;
  constructor(model: string, cause: NewerModelIndexError) {
    super(`model ${model}: ${cause.message}`, { cause });
    this.model = model;
    this.formatVersion = cause.formatVersion;
  }
}

/** `<modelsDir>/<name>/manifest.json` folders, name → absolute folder. */
export function scanModelsDir(modelsDir: string): Record<string, string> {
  const root = resolve(modelsDir);
  const out: Record<string, string> = {};
  if (!existsSync(root) || !statSync(root).isDirectory()) return out;
  for (const name of readdirSync(root).sort()) {
    const dir = join(root, name);
    if (MODEL_NAME.test(name) && existsSync(join(dir, 'manifest.json')) && !isOtherBundleKind(dir)) out[name] = dir;
  }
  return out;
}

const HEX64 = /^[0-9a-f]{64}$/;
/**
 * A download folder: `.tmp-<first 16 hex of the content hash>-<pid>-<PROCESS_NONCE>-<random hex>`, the pid
 * and nonce of the downloading process (the nonce tells a restarted container's pid 1 from its predecessor).
 */
const DOWNLOAD_DIR = /^\.tmp-[0-9a-f]{16}-(\d+)-([0-9a-f]{8})-[0-9a-f]+$/;

export interface ModelCacheOptions {
  onFetch?: (f: StoreFetch) => void;
  /** Bytes the `<contentHash>/` folders may take together before the least recently used are deleted (default: no limit). */
  maxBytes?: number;
  /** Folders in use now (an engine is open on them): never deleted. */
  inUse?: () => Iterable<string>;
  /** A `<contentHash>/` folder the budget deleted: whoever remembered it as downloaded must fetch it again. */
  onEvicted?: (dir: string) => void;
  /** Why a sweep or an eviction could not remove a folder (best effort: the fetch goes on). */
  onWarning?: (message: string) => void;
}

/**
 * Downloads store models into `<cacheDir>/<contentHash>/` and verifies them. A folder only gets its
 * final name after every file matched its sha256 (it is assembled in a temp folder and renamed), so a
 * crash mid-download leaves a `.tmp-*` folder, never a half bundle under a hash name; the first fetch
 * of a process removes those of processes that no longer exist. Each fetch marks its folder used now
 * (its mtime); past maxBytes the folders used longest ago that are not in use are deleted.
 */
export class ModelCache {
  private readonly inflight = new Map<string, Promise<StoreFetch>>();
  /** Hashes whose cached folder this process has verified once. */
  private readonly verified = new Set<string>();
  private readonly maxBytes: number;
  /** The sweep of dead processes' download folders, run once before the first fetch. */
  private swept?: Promise<void>;
  /** Evictions, one after another (two downloads ending together would count the same folders). */
  private evicting: Promise<void> = Promise.resolve();
  /** Whether this cache has checked the budget yet: at its first fetch, then after each download (only those add bytes). */
  private checkedOnce = false;

  /** Absolute, so that folders compare equal to the resolved paths options.inUse names. */
  readonly cacheDir: string;

  constructor(
    readonly store: ModelStore,
    cacheDir: string,
    private readonly options: ModelCacheOptions = {},
  ) {
    this.cacheDir = resolve(cacheDir);
    const max = options.maxBytes ?? Infinity;
    if (!(max === Infinity || (Number.isSafeInteger(max) && max >= 0))) throw new EngineError('invalid_input', `cacheMaxBytes must be a non-negative integer (bytes) or Infinity, got ${max}`);
    this.maxBytes = max;
  }

  dirOf(contentHash: string): string {
    if (!HEX64.test(contentHash)) throw new EngineError('invalid_model', `content hash ${JSON.stringify(contentHash)} is not a sha256 hex digest`);
    return join(this.cacheDir, contentHash);
  }

  /** The verified cache folder of `index`'s bundle, downloading it when absent or damaged. */
  fetch(index: ModelIndex): Promise<StoreFetch> {
    let p = this.inflight.get(index.content_hash);
    if (!p) {
      p = this.fetchNow(index).finally(() => this.inflight.delete(index.content_hash));
      this.inflight.set(index.content_hash, p);
    }
    return p;
  }

  private async fetchNow(index: ModelIndex): Promise<StoreFetch> {
    // Housekeeping never fails a fetch: what it cannot do is reported and left for next time.
    const report = (e: unknown) => this.options.onWarning?.(`model cache ${this.cacheDir}: ${(e as Error).message}`);
    await (this.swept ??= this.removeDeadDownloads().catch(report));
    const f = await this.fetchVerified(index);
    await this.markUsed(f.dir);
    if (f.outcome === 'downloaded' || !this.checkedOnce) {
      this.checkedOnce = true;
      await (this.evicting = this.evicting.then(() => this.evictOverBudget(f.contentHash)).catch(report));
    }
    this.options.onFetch?.(f);
    return f;
  }

  private async fetchVerified(index: ModelIndex): Promise<StoreFetch> {
    if (bundleContentHash(index.files) !== index.content_hash) {
      throw new EngineError('invalid_model', `store index of model ${index.name} is inconsistent (its content hash does not match its files); re-push it with clipag models push DIR --name ${index.name} --force`);
    }
    const dir = this.dirOf(index.content_hash);
    if (existsSync(dir)) {
      if (this.verified.has(index.content_hash) || (await this.verifyDir(dir, index)) === null) {
        this.verified.add(index.content_hash);
        return { name: index.name, contentHash: index.content_hash, dir, outcome: 'cached', attempts: 0, bytes: 0 };
      }
      // damaged cache (disk error, someone edited it): fetch it again
      await rm(dir, { recursive: true, force: true });
    }
    let lastProblem = '';
    for (let attempt = 1; attempt <= 2; attempt++) {
      const tmp = join(this.cacheDir, `.tmp-${index.content_hash.slice(0, 16)}-${process.pid}-${PROCESS_NONCE}-${randomBytes(4).toString('hex')}`);
      try {
        await mkdir(tmp, { recursive: true });
        let bytes = 0;
        let problem: string | null = null;
        for (const f of index.files) {
          const body = await this.store.getFile(index, f.path);
          if (!body) {
            throw new EngineError('invalid_model', `model ${index.name}: ${f.path} is missing from the store although its index lists it; re-push it with clipag models push DIR --name ${index.name} --force`);
          }
          const sha = sha256Bytes(body);
          if (body.byteLength !== f.size || sha !== f.sha256) {
            problem = `${f.path} downloaded as ${body.byteLength} bytes with sha256 ${sha.slice(0, 12)}…, the index says ${f.size} bytes, ${f.sha256.slice(0, 12)}…`;
            break;
          }
          const out = join(tmp, f.path);
          await mkdir(dirname(out), { recursive: true });
          await writeFile(out, body);
          bytes += body.byteLength;
        }
        // what is on disk must also be what was checked
        problem ??= await this.verifyDir(tmp, index);
        if (problem !== null) {
          lastProblem = problem;
          continue; // the finally removes tmp; try once more
        }
        try {
          await rename(tmp, dir);
        } catch (e) {
          // another process finished the same bundle first: its folder is as good as ours
          if (!existsSync(dir)) throw e;
        }
        this.verified.add(index.content_hash);
        return { name: index.name, contentHash: index.content_hash, dir, outcome: 'downloaded', attempts: attempt, bytes };
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    }
    throw new EngineError(
      'invalid_model',
      `model ${index.name} in the store is corrupt: ${lastProblem} (checked after 2 downloads). Re-push it from a good bundle: clipag models push DIR --name ${index.name} --force`,
      { model: index.name, param: 'model' },
    );
  }

  /**
   * Removes the `.tmp-*` download folders whose process no longer exists (a crash or SIGKILL mid-download;
   * every other download removes its own). A live process's, this one's included, is left: it is writing.
   * One with this process's pid but another nonce is a predecessor's that had the same pid (a container restart).
   */
  private async removeDeadDownloads(): Promise<void> {
    for (const name of await this.entries()) {
      const m = DOWNLOAD_DIR.exec(name);
      if (!m || tempOwnerMayBeAlive(Number(m[1]), m[2]!)) continue;
      await rm(join(this.cacheDir, name), { recursive: true, force: true }).catch((e: Error) =>
        this.options.onWarning?.(`model cache: cannot remove ${join(this.cacheDir, name)}, a download a process that no longer exists left: ${e.message}`),
      );
    }
  }

  /** Records a use of `dir` (its mtime, which nothing else changes once the folder has its name): what eviction orders by. */
  private async markUsed(dir: string): Promise<void> {
    const now = new Date();
    // A folder that cannot be touched is only evicted a little early: the job goes on.
    await utimes(dir, now, now).catch(() => undefined);
  }

  /**
   * Past maxBytes, deletes the `<hash>/` folders used longest ago, until the rest fit: never `keep` (the
   * folder just fetched), a hash being fetched, or a folder options.inUse names. Each deleted folder is
   * reported to options.onEvicted.
   */
  private async evictOverBudget(keep: string): Promise<void> {
    if (this.maxBytes === Infinity) return;
    const folders: { hash: string; dir: string; bytes: number; usedAt: number }[] = [];
    for (const name of await this.entries()) {
      if (!HEX64.test(name)) continue;
      const dir = join(this.cacheDir, name);
      const st = await stat(dir).catch(() => null);
      if (!st?.isDirectory()) continue;
      folders.push({ hash: name, dir, bytes: await bytesUnder(dir), usedAt: st.mtimeMs });
    }
    let total = folders.reduce((sum, f) => sum + f.bytes, 0);
    if (total <= this.maxBytes) return;
    folders.sort((a, b) => a.usedAt - b.usedAt || a.hash.localeCompare(b.hash));
    for (const f of folders) {
      if (total <= this.maxBytes) return;
      // asked right before each removal: a fetch may have started during the last one
      if (f.hash === keep || this.inflight.has(f.hash) || this.inUseNow().has(f.dir)) continue;
      try {
        await rm(f.dir, { recursive: true, force: true });
      } catch (e) {
        this.options.onWarning?.(`model cache: cannot remove ${f.dir} (over the cache's ${this.maxBytes} bytes): ${(e as Error).message}`);
        continue;
      }
      this.verified.delete(f.hash);
      this.options.onEvicted?.(f.dir);
      total -= f.bytes;
    }
  }

  private inUseNow(): Set<string> {
    return new Set([...(this.options.inUse?.() ?? [])].map((d) => resolve(d)));
  }

  /** The names in the cache folder (none while it does not exist, or cannot be read: the fetch then says why). */
  private async entries(): Promise<string[]> {
    try {
      return (await readdir(this.cacheDir)).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.options.onWarning?.(`model cache: cannot list ${this.cacheDir}: ${(e as Error).message}`);
      return [];
    }
  }

  /** null when every file of `index` is in `dir` with the right size and sha256, else the first problem. */
  private async verifyDir(dir: string, index: ModelIndex): Promise<string | null> {
    for (const f of index.files) {
      const p = join(dir, f.path);
      if (!existsSync(p)) return `${f.path} is missing`;
      const size = statSync(p).size;
      if (size !== f.size) return `${f.path} has ${size} bytes, the index says ${f.size}`;
      const sha = await sha256OfFile(p);
      if (sha !== f.sha256) return `${f.path} has sha256 ${sha.slice(0, 12)}…, the index says ${f.sha256.slice(0, 12)}…`;
    }
    return null;
  }
}

/** Bytes of the files under `dir` (links not followed); what cannot be read counts 0. */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await bytesUnder(p);
    else total += (await lstat(p).catch(() => null))?.size ?? 0;
  }
  return total;
}

/** Engine keys of store models: this prefix, then the bundle's cache folder. */
const STORE_KEY = 'store:';

export function createModelRegistry(options: ModelRegistryOptions = {}): ModelRegistry {
  const bundles: Record<string, string> = {
    ...(options.modelsDir ? scanModelsDir(options.modelsDir) : {}),
    ...Object.fromEntries(Object.entries(options.bundles ?? {}).map(([k, v]) => [k, resolve(v)])),
  };
  for (const name of Object.keys(bundles)) {
    if (!MODEL_NAME.test(name)) throw new EngineError('invalid_model', `model name "${name}" is not a valid model name`);
  }
  for (const field of ['maxLeasedGraphs', 'maxOpenModels'] as const) {
    const v = options[field];
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new EngineError('invalid_input', `${field} must be a positive integer, got ${v}`);
  }
  const maxOpenModels = options.maxOpenModels ?? Infinity;
  const store = options.store;
  const cache = store
    ? new ModelCache(store, resolve(options.cacheDir ?? join(tmpdir(), 'clipag-models')), {
        maxBytes: options.cacheMaxBytes,
        // The folders engines are open on (or opening), the bundle a --force push replaced included while
        // a job still runs on it: an engine reads its bundle's prior per job. A folder only downloaded
        // once is not protected, or a long-lived process could never evict a model it once served.
        inUse: () => [...engines.keys()].filter((k) => k.startsWith(STORE_KEY)).map((k) => k.slice(STORE_KEY.length)),
        // locate() downloads it again (openNamed always locates), instead of resolve() naming a folder that is gone.
        onEvicted: (dir) => {
          for (const [name, d] of fetched) if (d === dir) fetched.delete(name);
        },
        onWarning: (m) => warn(m),
      })
    : undefined;
  const indexTtlMs = options.indexTtlMs ?? 60_000;
  /** Store models: the last index read per name (null: the store said it has no such model). */
  const indexes = new Map<string, { at: number; index: ModelIndex | null }>();
  /** Store models already on disk: name → cache folder of the hash last served. */
  const fetched = new Map<string, string>();
  const warn = options.onWarning ?? store?.onWarning ?? ((m: string) => void process.stderr.write(`warning: ${m}\n`));
  /** Local model names checked for a pushed model of the same name: each clash is reported once. */
  const shadowChecks = new Map<string, Promise<void>>();
  const reportShadowed = (name: string, index: ModelIndex) =>
    warn(
      `model "${name}" is both the local folder ${bundles[name]} and a model pushed to the store (content hash ${index.content_hash.slice(0, 12)}…, pushed ${index.pushed_at}): ` +
        'this worker serves the local folder (local folders win), while GET /v1/models in AWS mode describes the pushed bundle. ' +
        'Remove the folder from the models folder (the worker image copies models/) and rebuild the image, or push under another name',
    );
  /** Once per local name, when a store is configured: does the store have a model of that name too? */
  function checkShadowed(name: string): Promise<void> {
    if (!store || !Object.hasOwn(bundles, name)) return Promise.resolve();
    let p = shadowChecks.get(name);
    if (!p) {
      // A store that cannot be read now does not stop a job on a local folder.
      p = store.describe(name).then((index) => (index ? reportShadowed(name, index) : undefined), () => undefined);
      shadowChecks.set(name, p);
    }
    return p;
  }
  const ownsPool = !options.pool;
  let pool = options.pool;
  const engines = new Map<string, Promise<ClipEngine>>();
  /**
   * The content hash of the bundle each engine was opened from (by engine key), taken when it opened:
   * a local folder edited later still names what the engine holds. Undefined where it could not be taken.
   */
  const versions = new Map<string, Promise<string | undefined>>();
  /** Holders of each engine (by engine key) through `use()`. */
  const holders = new Map<string, number>();
  /** The engine key each store model name resolved to last; an engine no name resolves to any more is retired. */
  const currentKey = new Map<string, string>();
  const retired = new Set<string>();
  /** Engine keys, least recently asked for first (a Map iterates in insertion order). */
  const lastUsed = new Map<string, true>();
  let closed: Promise<void> | undefined;

  function unhold(key: string): void {
    const n = (holders.get(key) ?? 1) - 1;
    if (n > 0) holders.set(key, n);
    else holders.delete(key);
    closeIfRetiredAndIdle(key);
    // An engine that was held when the limit was passed can go now.
    closeLeastRecentlyUsed();
  }

  /** Past maxOpenModels, retires the least recently used engines no job holds (never `keep`, the one being opened). */
  function closeLeastRecentlyUsed(keep?: string): void {
    for (const key of [...lastUsed.keys()]) {
      if (engines.size <= maxOpenModels) return;
      if (!engines.has(key)) lastUsed.delete(key);
      else if (key !== keep && (holders.get(key) ?? 0) === 0) {
        retired.add(key);
        closeIfRetiredAndIdle(key);
      }
    }
  }

  /** Closes a retired engine once nothing holds it (a job on the old bundle finishes on it first). */
  function closeIfRetiredAndIdle(key: string): void {
    if (!retired.has(key) || (holders.get(key) ?? 0) > 0) return;
    const p = engines.get(key);
    retired.delete(key);
    engines.delete(key);
    versions.delete(key);
    lastUsed.delete(key);
    void p?.then((e) => e.close()).catch(() => undefined);
  }

  const sharedPool = (): EnginePool =>
    (pool ??= new EnginePool({
      size: options.poolSize ?? 1,
      sessionOptions: { device: options.device ?? 'cpu', intraOpThreads: options.threads, ...(options.disablePrepacking ? { disablePrepacking: true } : {}) },
    }));

  const known = () => [...new Set([...Object.keys(bundles), ...[...indexes].filter(([, v]) => v.index).map(([k]) => k)])].sort();
  const unknownModel = (name: string) =>
    new EngineError('invalid_model', `unknown model "${name}"; available: ${known().length ? known().join(', ') : '(none)'}${store ? ' (push one with clipag models push DIR --name NAME)' : ''}`, { param: 'model' });

  async function storeIndex(name: string): Promise<ModelIndex | null> {
    const hit = indexes.get(name);
    if (hit && Date.now() - hit.at < indexTtlMs) return hit.index;
    try {
      const index = await store!.describe(name);
      indexes.set(name, { at: Date.now(), index });
      return index;
    } catch (e) {
      if (e instanceof NewerModelIndexError) {
        // The same bundle content as the one this process serves (a newer clipag re-pushed it, or
        // rewrote its index): keep serving it, looking again after the TTL.
        if (hit?.index && e.contentHash === hit.index.content_hash) {
          warn(`model ${name}: ${e.message}; serving the bundle already read (content hash ${hit.index.content_hash.slice(0, 12)}…), which the index still names`);
          indexes.set(name, { at: Date.now(), index: hit.index });
          return hit.index;
        }
        // Neither the request's fault nor a bundle to serve (NewerModelError). The operator hears it here.
        warn(`model ${name}: ${e.message}`);
        throw new NewerModelError(name, e);
      }
      if (e instanceof ModelStoreError) throw new EngineError('invalid_model', `model ${name}: ${e.message}`, { param: 'model' });
      // a transient store error: keep serving the bundle this process already has
      if (hit?.index) return hit.index;
      throw e;
    }
  }

  const openEngine = (key: string, dir: string): Promise<ClipEngine> => {
    let p = engines.get(key);
    if (!p) {
      // Hashed as it opens (a store bundle's folder is named by its hash, checked when it was fetched).
      const version = key.startsWith(STORE_KEY)
        ? Promise.resolve(basename(dir))
        : localBundleContentHash(dir).catch((e: unknown) => {
            warn(`model bundle ${dir}: no content hash for its generations' model_version: ${e instanceof Error ? e.message : String(e)}`);
            return undefined;
          });
      p = Promise.resolve().then(() => ClipEngine.open(dir, { pool: sharedPool(), device: options.device, threads: options.threads, maxLeasedGraphs: options.maxLeasedGraphs }));
      engines.set(key, p);
      versions.set(key, version);
      // A failed open is not cached: a fixed bundle (or a transient read error) can load next time.
      p.catch(() => {
        engines.delete(key);
        versions.delete(key);
      });
    }
    return p;
  };

  /** The engine for `name` and its key; `hold` counts a holder before anything can retire it. */
  async function openNamed(name: string, hold = false): Promise<{ key: string; engine: ClipEngine }> {
    if (closed) throw new EngineError('aborted', 'model registry is closed');
    let key: string;
    let dir: string;
    if (Object.hasOwn(bundles, name) || !store) {
      if (store) {
        await checkShadowed(name);
        if (closed) throw new EngineError('aborted', 'model registry is closed');
      }
      key = name;
      dir = engines.has(name) ? '' : registry.resolve(name);
    } else {
      // store models: one engine per bundle content (a --force push is picked up after the index TTL)
      dir = await registry.locate(name);
      if (closed) throw new EngineError('aborted', 'model registry is closed');
      key = `${STORE_KEY}${dir}`;
      const before = currentKey.get(name);
      currentKey.set(name, key);
      retired.delete(key); // back to a bundle it served before, whose engine may not be closed yet
      if (before !== undefined && before !== key && ![...currentKey.values()].includes(before)) {
        retired.add(before);
        closeIfRetiredAndIdle(before);
      }
    }
    if (hold) holders.set(key, (holders.get(key) ?? 0) + 1);
    lastUsed.delete(key);
    lastUsed.set(key, true);
    try {
      const engine = await (engines.get(key) ?? openEngine(key, dir));
      // Only once it opened: a bundle that fails to open must not cost an idle model its engine.
      closeLeastRecentlyUsed(key);
      return { key, engine };
    } catch (error) {
      if (hold) unhold(key);
      throw error;
    }
  }

  const registry: ModelRegistry = {
    list: () =>
      known().map((name): ModelInfo => {
        if (Object.hasOwn(bundles, name)) return { name, dir: bundles[name], source: 'local' };
        const index = indexes.get(name)!.index!;
        return { name, dir: cache!.dirOf(index.content_hash), source: 'store', contentHash: index.content_hash };
      }),
    has(name) {
      if (Object.hasOwn(bundles, name)) return true;
      if (!store || !MODEL_NAME.test(name)) return false;
      const seen = indexes.get(name);
      // not seen yet, seen in the store, or seen missing long enough ago to look again
      return !seen || seen.index !== null || Date.now() - seen.at >= indexTtlMs;
    },
    resolve(name) {
      if (Object.hasOwn(bundles, name)) return bundles[name];
      const dir = fetched.get(name);
      if (dir) return dir;
      if (store && MODEL_NAME.test(name) && indexes.get(name)?.index) {
        throw new EngineError('invalid_model', `model "${name}" is in the store but not downloaded yet; call locate("${name}") (engine() does)`, { param: 'model' });
      }
      throw unknownModel(name);
    },
    async locate(name) {
      if (Object.hasOwn(bundles, name)) {
        await checkShadowed(name);
        return bundles[name];
      }
      if (!store || !MODEL_NAME.test(name)) throw unknownModel(name);
      const index = await storeIndex(name);
      if (!index) throw unknownModel(name);
      let f: StoreFetch;
      try {
        f = await cache!.fetch(index);
      } catch (error) {
        // The cached index may be stale: a --force push replaced the bundle and removed its files.
        // Read the index again (once); only a newer bundle is worth a second fetch.
        if (!(error instanceof EngineError) || error.code !== 'invalid_model') throw error;
        indexes.delete(name);
        const fresh = await storeIndex(name);
        if (!fresh) throw unknownModel(name);
        // The same index again: the failure is the store's. Another one (a new bundle, or the same
        // content re-pushed in another layout) is worth a second fetch.
        if (fresh.content_hash === index.content_hash && fresh.format_version === index.format_version && fresh.pushed_at === index.pushed_at) throw error;
        f = await cache!.fetch(fresh);
      }
      fetched.set(name, f.dir);
      return f.dir;
    },
    async waitsForNewer(name) {
      if (Object.hasOwn(bundles, name) || !store || !MODEL_NAME.test(name)) return undefined;
      try {
        await storeIndex(name);
        return undefined;
      } catch (error) {
        return error instanceof NewerModelError ? error : undefined;
      }
    },
    async refresh() {
      if (store) {
        const now = Date.now();
        // A model whose index is there but does not read (a newer clipag's, say) is not "gone": what
        // this process holds of it stays, and asking for it says why (storeIndex).
        const skipped = new Set<string>();
        const listed = await store.list({ onSkipped: (name) => skipped.add(name) });
        const names = new Set([...listed.map((i) => i.name), ...skipped]);
        for (const index of listed) {
          indexes.set(index.name, { at: now, index });
          if (Object.hasOwn(bundles, index.name) && !shadowChecks.has(index.name)) {
            shadowChecks.set(index.name, Promise.resolve());
            reportShadowed(index.name, index);
          }
        }
        for (const [name, v] of indexes) if (!names.has(name) && v.index) indexes.set(name, { at: now, index: null });
      }
      return registry.list();
    },
    engine(name) {
      return openNamed(name).then((o) => o.engine);
    },
    async use(name) {
      const { key, engine } = await openNamed(name, true);
      let released = false;
      const contentHash = await versions.get(key);
      return {
        engine,
        ...(contentHash !== undefined ? { contentHash } : {}),
        done() {
          if (released) return;
          released = true;
          unhold(key);
        },
      };
    },
    close() {
      closed ??= (async () => {
        const opened = await Promise.allSettled([...engines.values()]);
        // All at once: each close waits for its engine's runs up to the pool's closeTimeoutMs, so one
        // after another they could take that long per engine.
        await Promise.allSettled(opened.map((r) => (r.status === 'fulfilled' ? r.value.close() : undefined)));
        engines.clear();
        versions.clear();
        if (ownsPool && pool) await pool.close();
      })();
      return closed;
    },
  };
  return registry;
}
