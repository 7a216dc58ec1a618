// A generation's model_version: the content hash of the bundle that made it. A local folder hashes as
// its pushed copy is indexed, a store model by its index, and the worker's engine keeps the hash of
// what it opened even when the folder is edited under it.
import { mkdtempSync, readFileSync, rmSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { heldAtVersion } from '../../gpu-worker/worker/synthesizer.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { localBundleContentHash, ModelStore, ModelStoreError } from '../../shared/modelstore.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { createApp } from '../../functions/app.ts';
import { LIMITS } from '../functions/helpers.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-model-version-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => join(root, `${name}-${++n}`);

/** Rewrites a file with other bytes and a later mtime (a same-second edit must not hide behind the cache). */
function edit(path: string, text: string): void {
  writeFileSync(path, text);
  const later = new Date(Date.now() + 60_000);
  utimesSync(path, later, later);
}

describe('localBundleContentHash', () => {
  it('is the content hash a push of the same folder indexes', async () => {
    const dir = makeTinyBundle('quickgelu', { dir: fresh('tiny') });
    const blobs = new LocalBlobStore({ rootDir: fresh('blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
    const pushed = await new ModelStore(blobs).push(dir, undefined);
    expect(await localBundleContentHash(dir)).toBe(pushed.contentHash);
  });

  it('changes when a file of the bundle changes, and not for a file the manifest does not name', async () => {
    const dir = makeTinyBundle('quickgelu', { dir: fresh('tiny') });
    const before = await localBundleContentHash(dir);
    writeFileSync(join(dir, 'NOTES.txt'), 'not part of the bundle');
    expect(await localBundleContentHash(dir)).toBe(before);
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    edit(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, description: 'edited' }));
    const after = await localBundleContentHash(dir);
    expect(after).toMatch(/^[0-9a-f]{64}$/);
    expect(after).not.toBe(before);
  });

  it('refuses a folder whose manifest names a missing file, saying which', async () => {
    const dir = makeTinyBundle('quickgelu', { dir: fresh('tiny') });
    unlinkSync(join(dir, 'tokenizer.json'));
    const err = await localBundleContentHash(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelStoreError);
    expect((err as Error).message).toMatch(/tokenizer\.json named by manifest\.json is missing/);
  });
});

describe("the worker's model registry", () => {
  it('names the bundle a local engine opened, even after the folder is edited', async () => {
    const models = fresh('models');
    const dir = makeTinyBundle('quickgelu', { dir: join(models, 'tiny') });
    const opened = await localBundleContentHash(dir);
    const reg = createModelRegistry({ modelsDir: models, threads: 1 });
    try {
      const first = await reg.use('tiny');
      expect(first.contentHash).toBe(opened);
      first.done();
      const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
      edit(join(dir, 'manifest.json'), JSON.stringify({ ...manifest, description: 'edited while served' }));
      expect(await localBundleContentHash(dir)).not.toBe(opened);
      // The engine still holds what it opened: its images come from that bundle.
      const again = await reg.use('tiny');
      expect(again.contentHash).toBe(opened);
      again.done();
    } finally {
      await reg.close();
    }
  });

  it('names a store model by its index', async () => {
    const dir = makeTinyBundle('quickgelu', { dir: fresh('tiny') });
    const blobs = new LocalBlobStore({ rootDir: fresh('blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
    const pushed = await new ModelStore(blobs).push(dir, 'tiny-quickgelu');
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: fresh('cache'), threads: 1 });
    try {
      const held = await reg.use('tiny-quickgelu');
      expect(held.contentHash).toBe(pushed.contentHash);
      held.done();
    } finally {
      await reg.close();
    }
  });
});

describe('a pinned model_version at the worker (heldAtVersion)', () => {
  it('runs the bundle its whole hash or a 12-digit start names, and refuses another as invalid_model on model_version', async () => {
    const models = fresh('models');
    const dir = makeTinyBundle('quickgelu', { dir: join(models, 'tiny') });
    const hash = await localBundleContentHash(dir);
    const reg = createModelRegistry({ modelsDir: models, threads: 1 });
    try {
      for (const pin of [undefined, hash, hash.slice(0, 12)]) {
        const held = await heldAtVersion(reg, 'tiny', pin);
        expect(held.contentHash).toBe(hash);
        held.done();
      }
      const other = hash.startsWith('0') ? `1${hash.slice(1)}` : `0${hash.slice(1)}`;
      const err = await heldAtVersion(reg, 'tiny', other).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EngineError);
      expect(err).toMatchObject({ code: 'invalid_model', detail: { param: 'model_version' } });
      expect((err as Error).message).toContain(`is bundle ${hash} here, not model_version ${other}`);
    } finally {
      await reg.close();
    }
  });

  it('looks a store model up afresh before refusing: a bundle pushed since its index was read runs', async () => {
    const blobs = new LocalBlobStore({ rootDir: fresh('blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
    const first = await new ModelStore(blobs).push(makeTinyBundle('quickgelu', { dir: fresh('tiny') }), 'tiny-quickgelu');
    // Within the index's TTL (the default minute) this registry still serves the first bundle.
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: fresh('cache'), threads: 1 });
    try {
      const before = await reg.use('tiny-quickgelu');
      expect(before.contentHash).toBe(first.contentHash);
      before.done();
      const secondDir = makeTinyBundle('quickgelu', { dir: fresh('tiny'), manifest: { description: 'pushed again' } });
      const second = await new ModelStore(blobs).push(secondDir, 'tiny-quickgelu', { force: true });
      expect(second.contentHash).not.toBe(first.contentHash);
      const held = await heldAtVersion(reg, 'tiny-quickgelu', second.contentHash);
      expect(held.contentHash).toBe(second.contentHash);
      held.done();
    } finally {
      await reg.close();
    }
  });
});

describe("the documents' model_version example", () => {
  it('is the shipped default model\'s content hash, so a caller who copies it gets the embedded model', async () => {
    const hash = await localBundleContentHash(join(REPO_ROOT, 'models', 'toy'));
    const doc = createApp({ blobs: undefined as never, queue: undefined as never, jobs: undefined as never, keys: undefined as never, models: async () => [], limits: LIMITS });
    const spec = (await (await doc.request('/openapi.json')).json()) as { components: { schemas: Record<string, { properties: Record<string, { example?: string }> }> } };
    expect(spec.components.schemas.GenerationRequest!.properties.model_version!.example).toBe(hash);
    expect(spec.components.schemas.Generation!.properties.model_version!.example).toBe(hash);
  });
});
