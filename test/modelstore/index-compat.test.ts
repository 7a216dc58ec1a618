// A model index a newer `clipag models push` wrote, read by this version's store, API listing and
// worker registry (the operator's CLI and the deployment upgrade apart). Fields it does not know in a
// format it knows: listed and served. A format_version it does not know: an operator's problem, said
// so, never the caller's `invalid_model`; a bundle this process already serves keeps being served
// while the index still names it.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { modelsFromDir } from '../../functions/deps/models.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { classifyError, jobErrorOf } from '../../gpu-worker/worker/errors.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { ModelStore, ModelStoreError, modelIndexKey, NewerModelIndexError, parseModelIndex } from '../../shared/modelstore.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { patched } from '../worker/stand-ins.ts';

const tmp = (label: string) => mkdtempSync(join(tmpdir(), `clipag-${label}-`));
const localBlobs = () => new LocalBlobStore({ rootDir: tmp('index-compat-blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
const bundle = (name: string, variant: 'quickgelu' | 'gelu' = 'quickgelu') => makeTinyBundle(variant, { manifest: { name, robust: true, description: `tiny ${name}` } });

/** Pushes `name`, then rewrites its index with `edit` (what a newer clipag would have written). */
async function pushedThenRewritten(blobs: LocalBlobStore, name: string, edit: (index: Record<string, any>) => void) {
  const pushed = await new ModelStore(blobs).push(bundle(name), name);
  await rewrite(blobs, name, edit);
  return pushed;
}
async function rewrite(blobs: LocalBlobStore, name: string, edit: (index: Record<string, any>) => void): Promise<void> {
  const index = JSON.parse(Buffer.from((await blobs.get(modelIndexKey(name)))!.body).toString()) as Record<string, any>;
  edit(index);
  await blobs.put(modelIndexKey(name), Buffer.from(JSON.stringify(index)));
}

describe('an index with fields this version does not know (same format_version)', () => {
  it('is listed (store, API) and served (worker registry), with no warning', async () => {
    const blobs = localBlobs();
    const pushed = await pushedThenRewritten(blobs, 'richer', (index) => {
      index.signed_by = 'release-key-2';
      index.summary.recipe = 'v2';
      index.files[0].compression = 'none';
    });
    const warnings: string[] = [];
    const store = new ModelStore(blobs, { onWarning: (m) => void warnings.push(m) });
    expect((await store.list()).map((i) => [i.name, i.content_hash])).toEqual([['richer', pushed.contentHash]]);
    expect(await store.describe('richer')).toMatchObject({ signed_by: 'release-key-2', summary: { recipe: 'v2' } });
    expect((await modelsFromDir(tmp('no-models'), 'richer', { store: blobs })()).map((m) => [m.id, m.content_hash])).toEqual([['richer', pushed.contentHash]]);

    const reg = createModelRegistry({ store, cacheDir: tmp('richer-cache'), threads: 1 });
    try {
      expect((await reg.refresh()).map((m) => m.name)).toEqual(['richer']);
      expect(await reg.locate('richer')).toMatch(new RegExp(`${pushed.contentHash}$`));
    } finally {
      await reg.close();
    }
    expect(warnings).toEqual([]);
  });

  it('the same bundle pushed again by this version leaves the richer index as it is', async () => {
    const blobs = localBlobs();
    await pushedThenRewritten(blobs, 'kept', (index) => {
      index.signed_by = 'release-key-2';
    });
    expect((await new ModelStore(blobs).push(bundle('kept'), 'kept')).status).toBe('unchanged');
    expect(await new ModelStore(blobs).describe('kept')).toMatchObject({ signed_by: 'release-key-2' });
  });
});

describe('an index in a format_version this version does not know', () => {
  const newer = (index: Record<string, any>) => {
    index.format_version = 3;
  };

  it('describe() says a newer clipag wrote it and what to upgrade; list() skips it with that warning', async () => {
    const blobs = localBlobs();
    const pushed = await pushedThenRewritten(blobs, 'future', newer);
    const warnings: string[] = [];
    const store = new ModelStore(blobs, { onWarning: (m) => void warnings.push(m) });
    const error = await store.describe('future').then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(NewerModelIndexError);
    expect(error).toMatchObject({ code: 'newer_format', formatVersion: 3, contentHash: pushed.contentHash, message: expect.stringMatching(/written by a newer clipag \(index format_version 3.*upgrade the workers and the API/) });
    expect((error as ModelStoreError).message).not.toMatch(/re-push|--force/);
    expect(await store.list()).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(/^model future skipped: .*written by a newer clipag/)]);
  });

  it("the API lists it by name only (a newer worker serves it: a request naming it is no 'unknown model'); an unreadable index is not listed", async () => {
    const blobs = localBlobs();
    await pushedThenRewritten(blobs, 'future', newer);
    await pushedThenRewritten(blobs, 'broken', (index) => {
      index.files = 'not a list';
    });
    expect(await modelsFromDir(tmp('no-models'), 'future', { store: blobs })()).toEqual([{ id: 'future', default: true }]);
  });

  it('a worker that has not served it fails the attempt as retryable (another worker, or a later try, may read it), never invalid_model', async () => {
    const blobs = localBlobs();
    await pushedThenRewritten(blobs, 'future', newer);
    const warnings: string[] = [];
    const reg = createModelRegistry({ store: new ModelStore(blobs, { onWarning: (m) => void warnings.push(m) }), cacheDir: tmp('future-cache'), threads: 1 });
    try {
      expect(reg.has('future')).toBe(true);
      const error = await reg.locate('future').then(() => undefined, (e: unknown) => e);
      expect(error).toMatchObject({ retryable: true, message: expect.stringMatching(/model future: .*written by a newer clipag/) });
      // How the worker files it (gpu-worker/worker/errors.ts): released for a retry, not a request to fix.
      expect(classifyError(error)).toBe('retryable');
      expect(jobErrorOf(error).code).not.toBe('invalid_model');
      expect(warnings.some((w) => /model future: .*written by a newer clipag.*upgrade the workers/.test(w))).toBe(true);
    } finally {
      await reg.close();
    }
  });

  it('a worker that serves the bundle keeps serving it while the newer index names the same content; another content is refused as above', async () => {
    const blobs = localBlobs();
    const pushed = await new ModelStore(blobs).push(bundle('served'), 'served');
    const warnings: string[] = [];
    // indexTtlMs 0: every locate reads the index again, as one after the TTL does.
    const reg = createModelRegistry({ store: new ModelStore(blobs, { onWarning: (m) => void warnings.push(m) }), cacheDir: tmp('served-cache'), threads: 1, indexTtlMs: 0 });
    try {
      const dir = await reg.locate('served');
      expect(dir).toMatch(new RegExp(`${pushed.contentHash}$`));
      await rewrite(blobs, 'served', newer);
      expect(await reg.locate('served')).toBe(dir);
      expect(warnings).toEqual([expect.stringMatching(/model served: .*written by a newer clipag.*serving the bundle already read/)]);

      // A newer clipag replaced the bundle: the one held is not what the operator serves any more.
      await rewrite(blobs, 'served', (index) => {
        index.content_hash = 'f'.repeat(64);
      });
      const error = await reg.locate('served').then(() => undefined, (e: unknown) => e);
      expect(error).toMatchObject({ retryable: true, message: expect.stringMatching(/written by a newer clipag/) });
      expect(classifyError(error)).toBe('retryable');
    } finally {
      await reg.close();
    }
  });

  it('a refresh does not take a model whose index it cannot read for one that is gone (its jobs would fail as naming an unknown model)', async () => {
    const blobs = localBlobs();
    const pushed = await new ModelStore(blobs).push(bundle('listed'), 'listed');
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('listed-cache'), threads: 1, indexTtlMs: 3_600_000 });
    try {
      expect((await reg.refresh()).map((m) => m.name)).toEqual(['listed']);
      await rewrite(blobs, 'listed', newer);
      await reg.refresh();
      expect(reg.has('listed')).toBe(true);
      expect(await reg.locate('listed')).toMatch(new RegExp(`${pushed.contentHash}$`));
    } finally {
      await reg.close();
    }
  });

  it('this version\'s push over it is refused as a version conflict, not a broken entry; --force replaces it', async () => {
    const blobs = localBlobs();
    await pushedThenRewritten(blobs, 'future', newer);
    const store = new ModelStore(blobs);
    const error = await store.push(bundle('future'), 'future').then(() => undefined, (e: unknown) => e);
    expect(error).toMatchObject({ code: 'conflict', message: expect.stringMatching(/written by a newer clipag.*--force/) });
    expect((error as Error).message).not.toMatch(/broken/);
    await store.push(bundle('future'), 'future', { force: true });
    expect((await store.describe('future'))!.format_version).toBe(2);
  });
});

describe('an index whose bytes are damaged', () => {
  it('a byte that is not UTF-8, in a field this version does not even read, makes it invalid_index naming the byte (never served with U+FFFD in its place)', async () => {
    const blobs = localBlobs();
    await pushedThenRewritten(blobs, 'damaged', (index) => {
      index.note = 'release ZZ';
    });
    const good = Buffer.from((await blobs.get(modelIndexKey('damaged')))!.body);
    expect(parseModelIndex(good, 'models/damaged').name).toBe('damaged');
    const at = good.indexOf('ZZ');
    const bad = Buffer.concat([good.subarray(0, at), Buffer.from([0xff, 0xfe]), good.subarray(at + 2)]);
    const error = (() => {
      try {
        parseModelIndex(bad, 'models/damaged');
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(ModelStoreError);
    expect((error as ModelStoreError).code).toBe('invalid_index');
    expect((error as Error).message).toContain(`byte ${at}, 0xFF,`);
    await blobs.put(modelIndexKey('damaged'), bad);
    await expect(new ModelStore(blobs).describe('damaged')).rejects.toThrow(/not UTF-8/);
  });
});

describe('a push that fails partway (a full disk)', () => {
  it('removes the files it uploaded and says so; nothing is listed; the same push later succeeds', async () => {
    const inner = localBlobs();
    let puts = 0;
    let full = true;
    // The real local store, with a disk that fills up at the third file.
    const blobs = patched(inner, {
      put: async (...args: Parameters<LocalBlobStore['put']>) => {
        if (full && ++puts === 3) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        return inner.put(...args);
      },
    });
    const dir = bundle('spilled');
    const error = await new ModelStore(blobs).push(dir, 'spilled').then(() => undefined, (e: unknown) => e as Error);
    expect(error?.message).toMatch(/^ENOSPC: no space left on device, write; nothing was listed, and the 3 file\(s\) this push uploaded were removed$/);
    expect((await inner.list('models/')).items.map((i) => i.key)).toEqual([]);
    expect(await new ModelStore(inner).list()).toEqual([]);
    full = false;
    expect((await new ModelStore(blobs).push(dir, 'spilled')).status).toBe('pushed');
  });
});

describe('a --force push of the same bundle (a repair) that fails partway', () => {
  it('never removes files the live index names, even when the index cannot be read at that moment', async () => {
    const inner = localBlobs();
    const dir = bundle('live');
    await new ModelStore(inner).push(dir, 'live');
    const before = (await inner.list('models/live/')).items.map((i) => i.key).sort();
    let puts = 0;
    let indexReads = 0;
    let armed = false;
    const blobs = patched(inner, {
      put: async (...args: Parameters<LocalBlobStore['put']>) => {
        if (armed && ++puts === 2) throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
        return inner.put(...args);
      },
      get: async (key: string) => {
        if (armed && key === modelIndexKey('live') && ++indexReads >= 3) throw new Error('503 SlowDown');
        return inner.get(key);
      },
    });
    armed = true;
    const error = await new ModelStore(blobs).push(dir, 'live', { force: true }).then(() => undefined, (e: unknown) => e as Error);
    expect(error?.message).toBe('read ECONNRESET');
    expect((await inner.list('models/live/')).items.map((i) => i.key).sort()).toEqual(before);
    expect((await new ModelStore(inner).describe('live'))?.name).toBe('live');
  });
});
