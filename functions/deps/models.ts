import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { BlobStore } from '../../shared/ports.ts';
import type { ModelInfo } from '../schemas.ts';

const MODEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** Caches a model lister for `ttlMs`, so a POST does not re-list on every request. */
export function memoizeModels(list: () => Promise<ModelInfo[]>, ttlMs = 60_000): () => Promise<ModelInfo[]> {
  let cached: { at: number; value: Promise<ModelInfo[]> } | undefined;
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at > ttlMs) {
      const value = list();
      cached = { at: now, value };
      value.catch(() => {
        if (cached?.value === value) cached = undefined; // do not cache a failure
      });
    }
    return cached.value;
  };
}

function mark(names: Iterable<string>, defaultModel: string): ModelInfo[] {
  return [...new Set(names)].sort().map((id) => ({ id, ...(id === defaultModel ? { default: true } : {}) }));
}

/** Local mode: the `<modelsDir>/<name>/manifest.json` bundles (the worker's registry reads the same folders). */
export function modelsFromDir(modelsDir: string, defaultModel: string): () => Promise<ModelInfo[]> {
  return memoizeModels(async () => {
    const names = existsSync(modelsDir)
      ? readdirSync(modelsDir, { withFileTypes: true })
          .filter((e) => e.isDirectory() && MODEL_NAME.test(e.name) && existsSync(join(modelsDir, e.name, 'manifest.json')))
          .map((e) => e.name)
      : [];
    return mark(names, defaultModel);
  });
}

/** AWS mode: the default model (shipped in the worker image) plus bundles under `models/<name>/manifest.json` in the bucket. */
export function modelsFromBucket(blobs: BlobStore, defaultModel: string): () => Promise<ModelInfo[]> {
  return memoizeModels(async () => {
    const names = [defaultModel];
    let cursor: string | undefined;
    do {
      const page = await blobs.list('models/', cursor === undefined ? {} : { cursor });
      for (const item of page.items) {
        const m = /^models\/([^/]+)\/manifest\.json$/.exec(item.key);
        if (m && MODEL_NAME.test(m[1])) names.push(m[1]);
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return mark(names, defaultModel);
  });
}
