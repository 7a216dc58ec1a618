// The model store against S3: s3rver started here on 127.0.0.1, the real S3BlobStore, the worker's
// model registry downloading into a cache keyed by content hash. GETs are counted by a wrapper.
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { modelsFromBucket, modelsFromDir } from '../../functions/deps/models.ts';
import { runList, runPush } from '../../cli/models.ts';
import { startWorker } from '../../gpu-worker/main.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { EnginePool } from '../../gpu-worker/engine/runtime/pool.ts';
import { S3BlobStore } from '../../shared/adapters/aws/s3-blobstore.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { parseConfig } from '../../shared/config.ts';
import { bundleContentHash, localBundleContentHash, ModelStore, ModelStoreError, modelIndexKey, modelKey, sha256Bytes } from '../../shared/modelstore.ts';
import type { BlobObject, BlobStore } from '../../shared/ports.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { PRIOR } from '../worker/helpers.ts';
import { harness } from '../functions/helpers.ts';
import { makeTempDir } from '../shared/contract/helpers.ts';

const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as new (options: Record<string, unknown>) => { run(): Promise<AddressInfo>; close(): Promise<void> };

let s3rver: InstanceType<typeof S3rver>;
let endpoint = '';
let cleanupS3 = async () => {};
let n = 0;

beforeAll(async () => {
  const { dir, cleanup } = await makeTempDir('s3rver-models');
  cleanupS3 = cleanup;
  s3rver = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir });
  endpoint = `http://127.0.0.1:${(await s3rver.run()).port}`;
});
afterAll(async () => {
  await s3rver?.close();
  await cleanupS3();
});

const client = () =>
  new S3Client({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });

async function freshBucket(): Promise<{ bucket: string; blobs: S3BlobStore }> {
  const bucket = `models-${process.pid}-${n++}`;
  const c = client();
  await c.send(new CreateBucketCommand({ Bucket: bucket }));
  return { bucket, blobs: new S3BlobStore({ client: c, bucket }) };
}

/** Counts get() per key; optionally fails put() of chosen keys (an interrupted push). */
class CountingBlobs implements BlobStore {
  gets: string[] = [];
  failPut?: (key: string) => boolean;
  failDelete = false;
  constructor(private readonly inner: BlobStore) {}
  fileGets = () => this.gets.filter((k) => !k.endsWith('/bundle.json'));
  get(key: string): Promise<BlobObject | null> {
    this.gets.push(key);
    return this.inner.get(key);
  }
  put(key: string, body: Uint8Array, o?: { contentType?: string }) {
    if (this.failPut?.(key)) return Promise.reject(new Error(`network down while writing ${key}`));
    return this.inner.put(key, body, o);
  }
  head = (key: string) => this.inner.head(key);
  list = (prefix: string, o?: { cursor?: string; limit?: number }) => this.inner.list(prefix, o);
  delete = (key: string) => (this.failDelete ? Promise.reject(new Error(`network down while deleting ${key}`)) : this.inner.delete(key));
  putIfAbsent(key: string, body: Uint8Array, o?: { contentType?: string }) {
    if (this.failPut?.(key)) return Promise.reject(new Error(`connection reset while writing ${key}`));
    return this.inner.putIfAbsent(key, body, o);
  }
  replaceIfMatch = (key: string, body: Uint8Array, etag: string, o?: { contentType?: string }) => this.inner.replaceIfMatch(key, body, etag, o);
  signedGetUrl = (key: string, s: number) => this.inner.signedGetUrl(key, s);
  signedPutUrl: BlobStore['signedPutUrl'] = (key, o) => this.inner.signedPutUrl(key, o);
}

async function waitUntil(ok: () => boolean, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const tmp = (label: string) => mkdtempSync(join(tmpdir(), `clipag-${label}-`));
const bundle = (name: string, opts: { variant?: 'quickgelu' | 'gelu'; description?: string; prior?: string } = {}) =>
  makeTinyBundle(opts.variant ?? 'quickgelu', { manifest: { name, robust: true, description: opts.description ?? `tiny ${name}` }, prior: opts.prior });

describe('model store on S3 (s3rver)', () => {
  it('push → list → describe: checksums, sizes and the content hash are recorded; the index is written last', async () => {
    const { blobs } = await freshBucket();
    const dir = bundle('tiny-a');
    const progress: string[] = [];
    const store = new ModelStore(blobs);
    const res = await store.push(dir, 'tiny-a', { onProgress: (p) => progress.push(`${p.phase}:${p.file ?? ''}`) });
    expect(res.status).toBe('pushed');
    expect(res.files.map((f) => f.path)).toEqual(['manifest.json', 'tokenizer.json', 'weights.safetensors']);
    for (const f of res.files) {
      const obj = await blobs.get(modelKey('tiny-a', `${res.contentHash}/${f.path}`)); // under its content hash
      expect(obj!.body.byteLength).toBe(f.size);
      expect(Buffer.compare(Buffer.from(obj!.body), readFileSync(join(dir, f.path)))).toBe(0);
    }
    expect(res.contentHash).toBe(bundleContentHash(res.files));
    expect(progress.at(-1)).toBe('index:'); // the index is the last write
    expect(progress.filter((p) => p.startsWith('upload:'))).toHaveLength(3);

    const listed = await store.list();
    expect(listed.map((m) => m.name)).toEqual(['tiny-a']);
    expect(listed[0]).toMatchObject({ content_hash: res.contentHash, summary: { robust: true, embed_dim: 32, input_size: expect.any(Number), description: 'tiny tiny-a' } });
    expect(await store.describe('tiny-a')).toEqual(listed[0]);
    expect(await store.describe('nope')).toBeNull();

    // GET /v1/models in AWS mode: the store's models with what the index says, plus the image's default model
    const models = await modelsFromBucket(blobs, 'toy')();
    expect(models).toEqual([
      { id: 'tiny-a', description: 'tiny tiny-a', robust: true, embed_dim: 32, input_size: listed[0].summary.input_size, content_hash: res.contentHash, license: expect.any(String), source: expect.any(String) },
      { id: 'toy', default: true },
    ]);

    // ... and through the API's route, with the fields beyond the Model schema intact
    const h = await harness();
    try {
      h.deps.models = modelsFromBucket(blobs, 'toy');
      const res = await h.request('/v1/models');
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ object: 'list', data: models });
    } finally {
      await h.close();
    }

    // the same bundle again: nothing uploaded
    const again = await store.push(dir, undefined);
    expect(again).toMatchObject({ status: 'unchanged', uploadedBytes: 0, contentHash: res.contentHash });
  });

  it('worker registry: downloads from the store once, verifies, caches by content hash across jobs and restarts', async () => {
    const { blobs } = await freshBucket();
    const counting = new CountingBlobs(blobs);
    const dir = bundle('tiny-w');
    const pushed = await new ModelStore(blobs).push(dir, 'tiny-w');
    const cacheDir = tmp('model-cache');

    const reg = createModelRegistry({ store: new ModelStore(counting), cacheDir, threads: 1 });
    try {
      expect(reg.has('tiny-w')).toBe(true); // may be served; the store decides
      expect((await reg.refresh()).map((m) => [m.name, m.source, m.contentHash])).toEqual([['tiny-w', 'store', pushed.contentHash]]);
      counting.gets = [];
      const [d1, d2] = await Promise.all([reg.locate('tiny-w'), reg.locate('tiny-w')]);
      expect(d1).toBe(join(cacheDir, pushed.contentHash));
      expect(d2).toBe(d1);
      expect(counting.fileGets().sort()).toEqual(pushed.files.map((f) => modelKey('tiny-w', `${pushed.contentHash}/${f.path}`)).sort()); // each file once
      expect(readdirSync(cacheDir)).toEqual([pushed.contentHash]); // no temp folder left
      expect(reg.resolve('tiny-w')).toBe(d1);

      // a job: the engine opens from the cache folder and works
      const engine = await reg.engine('tiny-w');
      const { unit } = await engine.embedText(['a photo of a cat']);
      expect(unit.length).toBe(32);
      expect(await reg.engine('tiny-w')).toBe(engine);

      // second job: no download at all (fresh index within the TTL)
      counting.gets = [];
      expect(await reg.locate('tiny-w')).toBe(d1);
      expect(counting.gets).toEqual([]);
    } finally {
      await reg.close();
    }

    // a process restart: a new registry on the same cache folder reads the index, not the files
    const reg2 = createModelRegistry({ store: new ModelStore(counting), cacheDir, threads: 1 });
    try {
      counting.gets = [];
      expect(await reg2.locate('tiny-w')).toBe(join(cacheDir, pushed.contentHash));
      expect(counting.gets).toEqual([modelIndexKey('tiny-w')]);
      await expect(reg2.locate('missing-model')).rejects.toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/unknown model "missing-model".*tiny-w/) });
      expect(reg2.has('Bad Name')).toBe(false);
    } finally {
      await reg2.close();
    }

    // a damaged cache folder (edited on disk) is detected by checksum and fetched again
    writeFileSync(join(cacheDir, pushed.contentHash, 'tokenizer.json'), '{}');
    const reg3 = createModelRegistry({ store: new ModelStore(counting), cacheDir, threads: 1 });
    try {
      counting.gets = [];
      const d = await reg3.locate('tiny-w');
      expect(counting.fileGets()).toHaveLength(3);
      expect(readFileSync(join(d, 'tokenizer.json'))).toEqual(readFileSync(join(dir, 'tokenizer.json')));
    } finally {
      await reg3.close();
    }
  });

  it('a corrupted object in the store is detected by checksum, fetched once more, then refused with invalid_model', async () => {
    const { blobs } = await freshBucket();
    const counting = new CountingBlobs(blobs);
    const dir = bundle('tiny-c');
    const pushed = await new ModelStore(blobs).push(dir, 'tiny-c');
    // flip one byte of the weights in the bucket (same size: only the checksum can tell)
    const key = modelKey('tiny-c', `${pushed.contentHash}/weights.safetensors`);
    const good = (await blobs.get(key))!.body;
    const bad = Uint8Array.from(good);
    bad[bad.length - 5] ^= 0xff;
    await blobs.put(key, bad);

    const cacheDir = tmp('model-cache-bad');
    const reg = createModelRegistry({ store: new ModelStore(counting), cacheDir, threads: 1 });
    try {
      await expect(reg.engine('tiny-c')).rejects.toMatchObject({
        code: 'invalid_model',
        message: expect.stringMatching(/tiny-c in the store is corrupt: weights\.safetensors .*sha256.*2 downloads.*clipag models push DIR --name tiny-c --force/),
      });
      expect(counting.gets.filter((k) => k === key)).toHaveLength(2); // retried once
      expect(readdirSync(cacheDir)).toEqual([]); // nothing cached, no temp folder left
      expect(existsSync(join(cacheDir, pushed.contentHash))).toBe(false);
    } finally {
      await reg.close();
    }

    // a plain push of the same bundle sees the right sizes and changes nothing; --force uploads
    // every file again, which repairs the damaged object
    expect(await new ModelStore(blobs).push(dir, 'tiny-c')).toMatchObject({ status: 'unchanged', uploadedBytes: 0 });
    const repaired = await new ModelStore(blobs).push(dir, 'tiny-c', { force: true });
    expect(repaired).toMatchObject({ status: 'reuploaded', contentHash: pushed.contentHash, uploadedBytes: pushed.totalBytes, removed: [] });
    expect(Buffer.compare(Buffer.from((await blobs.get(key))!.body), Buffer.from(good))).toBe(0);
    const reg2 = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1 });
    try {
      expect(await reg2.locate('tiny-c')).toBe(join(cacheDir, pushed.contentHash));
    } finally {
      await reg2.close();
    }
  });

  it('a half push (index never written) is not listed and not served; pushing again completes it', async () => {
    const { blobs } = await freshBucket();
    const counting = new CountingBlobs(blobs);
    counting.failPut = (k) => k.endsWith('/bundle.json'); // the connection drops before the index is written
    const dir = bundle('tiny-h');
    // A push that fails removes what it uploaded ...
    await expect(new ModelStore(counting).push(dir, 'tiny-h')).rejects.toThrow(/connection reset while writing models\/tiny-h\/bundle\.json; nothing was listed, and the 3 file\(s\) this push uploaded were removed$/);
    expect((await blobs.list('models/tiny-h/')).items).toEqual([]);
    // ... unless it cannot (the connection stays down; a killed push leaves the same):
    counting.failDelete = true;
    await expect(new ModelStore(counting).push(dir, 'tiny-h')).rejects.toThrow(/bundle\.json; nothing was listed, and the files this push uploaded under models\/tiny-h\/[0-9a-f]{64}\/ could not all be removed/);
    // the files are there ...
    expect((await blobs.list('models/tiny-h/')).items.map((i) => i.key.split('/').at(-1)).sort()).toEqual(['manifest.json', 'tokenizer.json', 'weights.safetensors']);
    // ... but the model is not deployed
    const store = new ModelStore(blobs);
    expect(await store.list()).toEqual([]);
    expect(await modelsFromBucket(blobs, 'toy')()).toEqual([{ id: 'toy', default: true }]);
    // The image's default model with the input size the deployment read from the repo (CLIPAG_DEFAULT_MODEL_INPUT_SIZE).
    expect(await modelsFromBucket(blobs, 'toy', { defaultInputSize: 64 })()).toEqual([{ id: 'toy', default: true, input_size: 64 }]);
    const reg = createModelRegistry({ store, cacheDir: tmp('model-cache-half'), threads: 1 });
    try {
      await expect(reg.locate('tiny-h')).rejects.toMatchObject({ code: 'invalid_model' });
      expect(reg.has('tiny-h')).toBe(false); // seen missing: the worker fails such a job fast
    } finally {
      await reg.close();
    }
    // the retry finishes the job
    const res = await store.push(dir, 'tiny-h');
    expect(res.status).toBe('pushed');
    expect((await store.list()).map((m) => m.name)).toEqual(['tiny-h']);
    // A push under the default's name does not replace the image's entry: the worker serves its own
    // folder over it, so the pushed bundle's content_hash is no model_version any generation records.
    await store.push(makeTinyBundle('quickgelu', { dir: tmp('tiny-shadow'), manifest: { name: 'toy' } }), 'toy');
    expect((await store.list()).map((m) => m.name)).toEqual(['tiny-h', 'toy']);
    expect((await modelsFromBucket(blobs, 'toy', { defaultInputSize: 64 })()).find((m) => m.id === 'toy')).toEqual({ id: 'toy', default: true, input_size: 64 });
  });

  it('a different bundle under an existing name is refused without --force; with it the old objects are replaced', async () => {
    const { blobs } = await freshBucket();
    const store = new ModelStore(blobs);
    const first = makeTinyBundle('quickgelu', { manifest: { name: 'robust-x', robust: true } });
    // an extra checksummed file that the replacement does not have
    writeFileSync(join(first, 'LICENSE.txt'), 'MIT\n');
    const m = JSON.parse(readFileSync(join(first, 'manifest.json'), 'utf8'));
    m.sha256 = { 'LICENSE.txt': sha256Bytes(readFileSync(join(first, 'LICENSE.txt'))) };
    writeFileSync(join(first, 'manifest.json'), JSON.stringify(m));
    const a = await store.push(first, 'robust-x');
    expect(a.files.map((f) => f.path)).toContain('LICENSE.txt');
    const other = makeTinyBundle('gelu', { manifest: { name: 'robust-x', robust: true } });
    const err = await store.push(other, 'robust-x').catch((e) => e);
    expect(err).toBeInstanceOf(ModelStoreError);
    expect(err).toMatchObject({ code: 'conflict', message: expect.stringMatching(/already exists .*different bundle.*--force/) });
    expect((await store.describe('robust-x'))!.content_hash).toBe(a.contentHash); // untouched

    const deleteRequests = { many: 0, one: 0 };
    const deleteMany = blobs.deleteMany.bind(blobs);
    const deleteOne = blobs.delete.bind(blobs);
    blobs.deleteMany = async (keys) => (deleteRequests.many++, deleteMany(keys));
    blobs.delete = async (key) => (deleteRequests.one++, deleteOne(key));
    const b = await store.push(other, 'robust-x', { force: true });
    expect(b.status).toBe('replaced');
    expect(b.contentHash).not.toBe(a.contentHash);
    // the replaced bundle's folder is gone, LICENSE.txt with it
    expect(b.removed.sort()).toEqual(a.files.map((f) => modelKey('robust-x', `${a.contentHash}/${f.path}`)).sort());
    expect((await blobs.list(`models/robust-x/${a.contentHash}/`)).items).toEqual([]);
    // in one DeleteObjects request, not one DELETE per file
    expect(deleteRequests).toEqual({ many: 1, one: 0 });
    expect((await store.describe('robust-x'))!.content_hash).toBe(b.contentHash);
    const w = await blobs.get(modelKey('robust-x', `${b.contentHash}/weights.safetensors`));
    expect(Buffer.compare(Buffer.from(w!.body), readFileSync(join(other, 'weights.safetensors')))).toBe(0);
  });

  it('bad input: a local file that does not match manifest.json sha256, a name mismatch, a bad name, a folder without manifest', async () => {
    const { blobs } = await freshBucket();
    const store = new ModelStore(blobs);
    const dir = bundle('tiny-s');
    const m = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    m.sha256 = { 'tokenizer.json': '0'.repeat(64) };
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m));
    await expect(store.push(dir, 'tiny-s')).rejects.toMatchObject({ code: 'checksum_mismatch', message: expect.stringMatching(/tokenizer\.json has sha256 .*manifest\.json says 0{64}.*Nothing was uploaded/) });
    expect((await blobs.list('models/')).items).toEqual([]);

    await expect(store.push(bundle('tiny-n'), 'other-name')).rejects.toMatchObject({ code: 'invalid_bundle', message: expect.stringMatching(/named "tiny-n".*push with --name tiny-n/) });
    await expect(store.push(bundle('tiny-n2'), 'Bad Name')).rejects.toMatchObject({ code: 'invalid_name' });
    await expect(store.push(tmp('empty'), 'x')).rejects.toMatchObject({ code: 'invalid_bundle', message: expect.stringMatching(/no manifest\.json.*clipag models import/) });
  });

  it('clipag models push / list in AWS mode write to the configured bucket; the AWS worker serves from it', async () => {
    const { bucket, blobs } = await freshBucket();
    const env = {
      CLIPAG_MODE: 'aws',
      AWS_REGION: 'us-east-1',
      CLIPAG_BUCKET: bucket,
      CLIPAG_QUEUE_URL: 'http://127.0.0.1:9/queue/unused',
      CLIPAG_S3_ENDPOINT: endpoint,
    };
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = 'S3RVER';
    process.env.AWS_SECRET_ACCESS_KEY = 'S3RVER';
    const out: string[] = [];
    const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    try {
      const dir = bundle('cli-model');
      expect(await runPush([dir, '--name', 'cli-model'], env)).toBe(0);
      expect(out.join('')).toMatch(/sha256 [0-9a-f]{64}  weights\.safetensors/);
      expect(out.join('')).toMatch(/cli-model: pushed to s3:\/\/.*content hash [0-9a-f]{64}/);
      await expect(runPush([bundle('cli-model', { variant: 'gelu' }), '--name', 'cli-model'], env)).rejects.toMatchObject({ code: 'invalid_input', detail: { store_code: 'conflict' }, message: expect.stringMatching(/--force/) });
      out.length = 0;
      expect(await runList(['--json'], env)).toBe(0);
      const listed = JSON.parse(out.join(''));
      expect(listed.models).toEqual([expect.objectContaining({ name: 'cli-model', robust: true, embed_dim: 32, files: 3 })]);
    } finally {
      log.mockRestore();
      stdout.mockRestore();
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
    }

    // startWorker in AWS mode puts the store on its blob store (the queue here is a local one: the
    // wiring, not SQS, is under test)
    const config = parseConfig({ ...env, CLIPAG_MODELS_DIR: tmp('no-models') });
    const cacheDir = tmp('worker-cache');
    const qdir = tmp('queue');
    const running = startWorker({ queue: new LocalJobQueue({ dir: qdir, visibilitySec: 30, maxReceives: 3 }), blobs, config, modelCacheDir: cacheDir, worker: { receiveWaitSec: 0 }, log: { debug() {}, info() {}, warn() {}, error() {} } });
    try {
      expect((await running.models.refresh()).map((m) => m.name)).toEqual(['cli-model']);
      const d = await running.models.locate('cli-model');
      expect(d.startsWith(cacheDir)).toBe(true);
    } finally {
      await running.stop();
      rmSync(qdir, { recursive: true, force: true });
    }
  });
});

describe('model store in local mode', () => {
  it('GET /v1/models lists the models folder from the manifests, plus the local store when given; the registry serves both', async () => {
    const modelsDir = tmp('models-dir');
    cpSync(bundle('folder-model', { description: 'from a folder' }), join(modelsDir, 'folder-model'), { recursive: true });
    // The repo's toy judge sits in models/ too, but is no model a request may name: not listed.
    mkdirSync(join(modelsDir, 'toy-judge'));
    writeFileSync(join(modelsDir, 'toy-judge', 'manifest.json'), JSON.stringify({ format: 'clipag-toy-judge', format_version: 1, name: 'toy-judge' }));
    const blobs = new LocalBlobStore({ rootDir: tmp('local-blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
    const pushed = await new ModelStore(blobs).push(bundle('pushed-model'), 'pushed-model');

    expect(await modelsFromDir(modelsDir, 'folder-model')()).toEqual([
      { id: 'folder-model', description: 'from a folder', robust: true, embed_dim: 32, input_size: 32, content_hash: await localBundleContentHash(join(modelsDir, 'folder-model')), license: expect.any(String), source: expect.any(String), default: true },
    ]);
    const both = await modelsFromDir(modelsDir, 'folder-model', { store: blobs })();
    expect(both.map((m) => [m.id, m.content_hash])).toEqual([['folder-model', await localBundleContentHash(join(modelsDir, 'folder-model'))], ['pushed-model', pushed.contentHash]]);

    const reg = createModelRegistry({ modelsDir, store: new ModelStore(blobs), cacheDir: tmp('local-cache'), threads: 1 });
    try {
      expect((await reg.refresh()).map((m) => [m.name, m.source])).toEqual([['folder-model', 'local'], ['pushed-model', 'store']]);
      expect(await reg.locate('folder-model')).toBe(join(modelsDir, 'folder-model'));
      expect(await reg.locate('pushed-model')).toMatch(new RegExp(`${pushed.contentHash}$`));
    } finally {
      await reg.close();
    }
  });

  const localBlobs = () => new LocalBlobStore({ rootDir: tmp('local-blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });

  it('a manifest.json saved with a byte-order mark is listed in full, as the engine and the store read it', async () => {
    const modelsDir = tmp('models-dir');
    const dir = join(modelsDir, 'bom-model');
    cpSync(bundle('bom-model', { description: 'saved by an editor' }), dir, { recursive: true });
    writeFileSync(join(dir, 'manifest.json'), `\uFEFF${readFileSync(join(dir, 'manifest.json'), 'utf8')}`);
    expect(await modelsFromDir(modelsDir, 'bom-model')()).toEqual([
      { id: 'bom-model', description: 'saved by an editor', robust: true, embed_dim: 32, input_size: 32, content_hash: await localBundleContentHash(dir), license: expect.any(String), source: expect.any(String), default: true },
    ]);
  });

  it('a pushed model that a local folder of the same name shadows: the registry serves the folder and warns once, naming both', async () => {
    const modelsDir = tmp('models-dir');
    cpSync(bundle('dup-model', { description: 'the folder' }), join(modelsDir, 'dup-model'), { recursive: true });
    const blobs = localBlobs();
    const warnings: string[] = [];
    // The worker gives the store its log's warn (gpu-worker/main.ts): the registry reports through it.
    const store = new ModelStore(blobs, { onWarning: (m) => void warnings.push(m) });
    const pushed = await store.push(bundle('dup-model', { variant: 'gelu', description: 'the pushed one' }), 'dup-model');

    const reg = createModelRegistry({ modelsDir, store, cacheDir: tmp('dup-cache'), threads: 1 });
    try {
      expect(await reg.locate('dup-model')).toBe(join(modelsDir, 'dup-model'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(`model "dup-model" is both the local folder ${join(modelsDir, 'dup-model')} and a model pushed to the store (content hash ${pushed.contentHash.slice(0, 12)}`);
      expect(warnings[0]).toMatch(/serves the local folder .*GET \/v1\/models in AWS mode describes the pushed bundle/);
      await reg.locate('dup-model');
      expect(warnings).toHaveLength(1);
    } finally {
      await reg.close();
    }
    // At start-up the worker lists the store (refresh): the clash is reported from that listing, once.
    warnings.length = 0;
    const fresh = createModelRegistry({ modelsDir, store, cacheDir: tmp('dup-cache'), threads: 1 });
    try {
      expect((await fresh.refresh()).find((m) => m.name === 'dup-model')?.source).toBe('local');
      expect(warnings).toHaveLength(1);
      await fresh.locate('dup-model');
      expect(warnings).toHaveLength(1);
    } finally {
      await fresh.close();
    }
  });

  it('clipag models push refuses a name that is a models-folder bundle of other content, unless --force; pushing that very bundle is fine', async () => {
    const modelsDir = tmp('models-dir');
    const folder = join(modelsDir, 'clash');
    cpSync(bundle('clash'), folder, { recursive: true });
    const env = { CLIPAG_DATA_DIR: tmp('push-data'), CLIPAG_MODELS_DIR: modelsDir };
    const out: string[] = [];
    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((c) => (out.push(String(c)), true));
    try {
      const other = bundle('clash', { variant: 'gelu' });
      const refused = runPush([other, '--name', 'clash'], env);
      await expect(refused).rejects.toMatchObject({ code: 'invalid_input', message: expect.stringContaining(`model "clash" is also the folder ${folder} in the models folder, with another bundle`) });
      await expect(refused).rejects.toMatchObject({ message: expect.stringMatching(/serve it before the store's model.*--force to push anyway/) });
      expect(await new ModelStore(new LocalBlobStore({ rootDir: join(env.CLIPAG_DATA_DIR, 'blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' })).describe('clash')).toBeNull();

      // the folder itself (import into models/NAME, then push it: docs/model-store.md) goes through, with a note
      expect(await runPush([folder], env)).toBe(0);
      expect(out.join('')).toMatch(/note: .*clash holds this same bundle/);
      out.length = 0;
      expect(await runPush([other, '--name', 'clash', '--force'], env)).toBe(0);
      expect(out.join('')).toMatch(/warning: pushing "clash" although .*clash holds another bundle \(--force\)/);
    } finally {
      stdout.mockRestore();
    }
  });

  it('two concurrent pushes of different bundles under one name: one wins, the other gets a conflict, and the winner is served intact', async () => {
    // The local store enforces conditional writes (s3rver does not), so the race is decided here.
    for (let round = 0; round < 4; round++) {
      const blobs = localBlobs();
      const a = bundle('raced');
      const b = bundle('raced', { variant: 'gelu' });
      const results = await Promise.allSettled([new ModelStore(blobs).push(a, 'raced'), new ModelStore(blobs).push(b, 'raced')]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(won, `round ${round}`).toHaveLength(1);
      expect(lost[0].reason).toMatchObject({ code: 'conflict' });
      const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<ModelStore['push']>>>).value;
      const index = (await new ModelStore(blobs).describe('raced'))!;
      expect(index.content_hash).toBe(winner.contentHash);
      // only the winner's folder is left, and a worker downloads and verifies it
      const folders = new Set((await blobs.list('models/raced/')).items.map((i) => i.key.split('/')[2]));
      expect([...folders].sort()).toEqual([winner.contentHash, 'bundle.json'].sort());
      const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('race-cache'), threads: 1 });
      try {
        expect(await reg.locate('raced')).toMatch(new RegExp(`${winner.contentHash}$`));
      } finally {
        await reg.close();
      }
    }
  });

  it('a worker whose cached index names a replaced bundle re-reads the index instead of failing the job', async () => {
    const blobs = localBlobs();
    const first = await new ModelStore(blobs).push(bundle('swapped'), 'swapped');
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('swap-cache'), threads: 1, indexTtlMs: 3_600_000 });
    try {
      expect((await reg.refresh()).map((m) => m.contentHash)).toEqual([first.contentHash]); // index cached for an hour
      const second = await new ModelStore(blobs).push(bundle('swapped', { variant: 'gelu' }), 'swapped', { force: true });
      expect(second.status).toBe('replaced');
      expect(await reg.locate('swapped')).toMatch(new RegExp(`${second.contentHash}$`));
    } finally {
      await reg.close();
    }
  });

  it('a --force push retires the old bundle\'s engine: a job holding it finishes on it, then its sessions are released', async () => {
    const blobs = localBlobs();
    await new ModelStore(blobs).push(bundle('retiring'), 'retiring');
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('retire-cache'), pool, indexTtlMs: 0 });
    try {
      const first = await reg.use('retiring');
      await first.engine.embedText(['a red circle']);
      const oldKeys = first.engine.loadedGraphs;
      expect(oldKeys.length).toBeGreaterThan(0);
      await new ModelStore(blobs).push(bundle('retiring', { variant: 'gelu' }), 'retiring', { force: true });
      const second = await reg.use('retiring');
      expect(second.engine).not.toBe(first.engine);
      // Still held: the old engine keeps running its job.
      expect((await first.engine.embedText(['a blue star'])).unit.length).toBeGreaterThan(0);
      first.done();
      await waitUntil(() => oldKeys.every((k) => !pool.loadedKeys.includes(k)));
      await expect(first.engine.embedText(['a green ring'])).rejects.toMatchObject({ code: 'aborted' });
      // The new bundle's engine is the current one, and serves.
      expect((await second.engine.embedText(['a red circle'])).unit.length).toBeGreaterThan(0);
      second.done();
      expect(await reg.engine('retiring')).toBe(second.engine);
    } finally {
      await reg.close();
      await pool.close();
    }
  });

  it('retiring the old engine leaves the new one working when the re-push changed only the prior (same weights, same manifest)', async () => {
    const blobs = localBlobs();
    await new ModelStore(blobs).push(bundle('prior-swap', { prior: PRIOR }), 'prior-swap');
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('prior-swap-cache'), pool, indexTtlMs: 0 });
    try {
      const first = await reg.use('prior-swap');
      await first.engine.embedText(['a red circle']);
      await new ModelStore(blobs).push(bundle('prior-swap', { prior: join(REPO_ROOT, 'models', 'toy', 'prior.safetensors') }), 'prior-swap', { force: true });
      const second = await reg.use('prior-swap');
      expect(second.engine).not.toBe(first.engine);
      await second.engine.embedText(['a red circle']); // compiled while the old engine is still held
      const oldKeys = [...first.engine.loadedGraphs];
      first.done();
      await waitUntil(() => !pool.loadedKeys.some((k) => oldKeys.includes(k)));
      expect((await second.engine.embedText(['a red circle'])).unit.length).toBeGreaterThan(0);
      second.done();
    } finally {
      await reg.close();
      await pool.close();
    }
  });

  it('a model stored in index format 1 (flat files) is still served; pushing it again rewrites it in format 2', async () => {
    const blobs = localBlobs();
    const dir = bundle('old-layout');
    const files = ['manifest.json', 'tokenizer.json', 'weights.safetensors'].map((path) => {
      const body = readFileSync(join(dir, path));
      return { path, sha256: sha256Bytes(body), size: body.byteLength, body };
    });
    for (const f of files) await blobs.put(modelKey('old-layout', f.path), f.body);
    const contentHash = bundleContentHash(files);
    const v1 = {
      format: 'clipag-model-store-index', format_version: 1, name: 'old-layout', content_hash: contentHash,
      files: files.map(({ path, sha256, size }) => ({ path, sha256, size })), total_bytes: files.reduce((a, f) => a + f.size, 0),
      pushed_at: '2026-01-01T00:00:00.000Z', summary: { robust: true, embed_dim: 32, input_size: 32 },
    };
    await blobs.put(modelIndexKey('old-layout'), Buffer.from(JSON.stringify(v1)));
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('v1-cache'), threads: 1 });
    try {
      expect(await reg.locate('old-layout')).toMatch(new RegExp(`${contentHash}$`));
    } finally {
      await reg.close();
    }
    // A worker that has read the format-1 index but not downloaded yet, when the model is re-pushed:
    const stale = createModelRegistry({ store: new ModelStore(blobs), cacheDir: tmp('v1-stale-cache'), threads: 1, indexTtlMs: 3_600_000 });
    try {
      await stale.refresh();
      const again = await new ModelStore(blobs).push(dir, 'old-layout');
      expect(again).toMatchObject({ status: 'reuploaded', contentHash });
      expect(again.removed.sort()).toEqual(files.map((f) => modelKey('old-layout', f.path)).sort());
      expect((await new ModelStore(blobs).describe('old-layout'))!.format_version).toBe(2);
      // its cached index names flat files that are gone; it re-reads the index and serves the same content
      expect(await stale.locate('old-layout')).toMatch(new RegExp(`${contentHash}$`));
    } finally {
      await stale.close();
    }
  });

  it('clipag models push refuses a bundle whose tokenizer or prior cannot be read: nothing is listed', async () => {
    const data = tmp('push-data');
    const env = { CLIPAG_DATA_DIR: data };
    const badTok = bundle('bad-tok');
    writeFileSync(join(badTok, 'tokenizer.json'), '{"not":"a tokenizer"}');
    await expect(runPush([badTok], env)).rejects.toMatchObject({ code: 'invalid_tokenizer' });
    const badPrior = bundle('bad-prior', { prior: PRIOR });
    writeFileSync(join(badPrior, 'prior.safetensors'), 'garbage');
    await expect(runPush([badPrior], env)).rejects.toMatchObject({ message: expect.stringMatching(/prior\.safetensors/) });
    const out: string[] = [];
    const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((c) => (out.push(String(c)), true));
    const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
    try {
      expect(await runList(['--json'], env)).toBe(0);
    } finally {
      stdout.mockRestore();
      log.mockRestore();
    }
    expect(JSON.parse(out.join('')).models).toEqual([]);
  });
});
