// The model registry: model name → bundle folder → one ClipEngine per process.
//
// Bundles are the repo's `models/<name>/` folders that hold a `manifest.json` (or explicit
// name → folder entries). Engines are opened on first use and cached for the life of the process;
// every engine shares one EnginePool (the ORT sessions' worker threads), so compiled graphs of all
// models live in the same threads and the event loop stays free.

import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ClipEngine } from './engine/engine.ts';
import { EngineError } from './engine/errors.ts';
import { EnginePool } from './engine/runtime/pool.ts';
import type { Device } from './engine/runtime/providers.ts';

const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

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
}

export interface ModelInfo {
  name: string;
  dir: string;
}

export interface ModelRegistry {
  /** Every model this registry can open, by name (sorted). */
  list(): ModelInfo[];
  has(name: string): boolean;
  /** The bundle folder of `name`; EngineError('invalid_model') when unknown. */
  resolve(name: string): string;
  /** The process-wide engine for `name`, opened once (concurrent callers share the same open). */
  engine(name: string): Promise<ClipEngine>;
  /** Closes every engine and the pool when the registry owns it. Idempotent. */
  close(): Promise<void>;
}

/** `<modelsDir>/<name>/manifest.json` folders, name → absolute folder. */
export function scanModelsDir(modelsDir: string): Record<string, string> {
  const root = resolve(modelsDir);
  const out: Record<string, string> = {};
  if (!existsSync(root) || !statSync(root).isDirectory()) return out;
  for (const name of readdirSync(root).sort()) {
    const dir = join(root, name);
    if (MODEL_NAME.test(name) && existsSync(join(dir, 'manifest.json'))) out[name] = dir;
  }
  return out;
}

export function createModelRegistry(options: ModelRegistryOptions = {}): ModelRegistry {
  const bundles: Record<string, string> = {
    ...(options.modelsDir ? scanModelsDir(options.modelsDir) : {}),
    ...Object.fromEntries(Object.entries(options.bundles ?? {}).map(([k, v]) => [k, resolve(v)])),
  };
  for (const name of Object.keys(bundles)) {
    if (!MODEL_NAME.test(name)) throw new EngineError('invalid_model', `model name "${name}" is not a valid model name`);
  }
  const ownsPool = !options.pool;
  let pool = options.pool;
  const engines = new Map<string, Promise<ClipEngine>>();
  let closed: Promise<void> | undefined;

  const sharedPool = (): EnginePool =>
    (pool ??= new EnginePool({
      size: options.poolSize ?? 1,
      sessionOptions: { device: options.device ?? 'cpu', intraOpThreads: options.threads },
    }));

  const registry: ModelRegistry = {
    list: () => Object.entries(bundles).sort(([a], [b]) => a.localeCompare(b)).map(([name, dir]) => ({ name, dir })),
    has: (name) => Object.hasOwn(bundles, name),
    resolve(name) {
      if (!Object.hasOwn(bundles, name)) {
        const known = Object.keys(bundles).sort();
        throw new EngineError('invalid_model', `unknown model "${name}"; available: ${known.length ? known.join(', ') : '(none)'}`, { param: 'model' });
      }
      return bundles[name];
    },
    engine(name) {
      if (closed) return Promise.reject(new EngineError('aborted', 'model registry is closed'));
      let p = engines.get(name);
      if (!p) {
        p = Promise.resolve().then(() => ClipEngine.open(registry.resolve(name), { pool: sharedPool(), device: options.device, threads: options.threads }));
        engines.set(name, p);
        // A failed open is not cached: a fixed bundle (or a transient read error) can load next time.
        p.catch(() => engines.delete(name));
      }
      return p;
    },
    close() {
      closed ??= (async () => {
        const opened = await Promise.allSettled([...engines.values()]);
        for (const r of opened) if (r.status === 'fulfilled') await r.value.close();
        engines.clear();
        if (ownsPool && pool) await pool.close();
      })();
      return closed;
    },
  };
  return registry;
}
