// The worker's download cache of pushed models is bounded: download folders a dead process left are
// swept, and past CLIPAG_MODEL_CACHE_MAX_BYTES the least recently used content-hash folders that no
// model is served from (and no engine is open on) are deleted. A local blob store stands in for S3:
// the cache, not the transport, is under test.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startWorker } from '../../gpu-worker/main.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { parseConfig } from '../../shared/config.ts';
import { ModelStore } from '../../shared/modelstore.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tmp = (label: string) => {
  const d = mkdtempSync(join(tmpdir(), `clipag-${label}-`));
  dirs.push(d);
  return d;
};
const bundle = (name: string, description = `tiny ${name}`) => {
  const d = makeTinyBundle('quickgelu', { manifest: { name, robust: true, description } });
  dirs.push(d);
  return d;
};
const localBlobs = () => new LocalBlobStore({ rootDir: tmp('cache-blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });

const MiB = 2 ** 20;
/** A pid no process has (Linux pids end at 2^22). */
const DEAD_PID = 999_999_999;
const LONG_AGO = new Date('2001-01-01T00:00:00Z');

/** A content-hash folder of `bytes` bytes, last used at `usedAt`. */
function fakeHashFolder(cacheDir: string, hex: string, bytes: number, usedAt: Date): string {
  const name = hex.repeat(64);
  mkdirSync(join(cacheDir, name), { recursive: true });
  writeFileSync(join(cacheDir, name, 'weights.safetensors'), Buffer.alloc(bytes, 1));
  utimesSync(join(cacheDir, name), usedAt, usedAt);
  return name;
}

function bytesUnder(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) total += e.isDirectory() ? bytesUnder(join(dir, e.name)) : statSync(join(dir, e.name)).size;
  return total;
}

describe('model cache housekeeping', () => {
  it('at its first locate, removes dead processes\' download folders and the least recently used folders over the budget; the served one and a live download stay', async () => {
    const blobs = localBlobs();
    const pushed = await new ModelStore(blobs).push(bundle('tiny-e'), 'tiny-e');
    const cacheDir = tmp('cache-budget');
    // An earlier process downloaded the model...
    const first = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1 });
    try {
      await first.locate('tiny-e');
    } finally {
      await first.close();
    }
    const served = join(cacheDir, pushed.contentHash);
    const servedBytes = bytesUnder(served);
    const weightsIno = statSync(join(served, 'weights.safetensors')).ino;
    // ... and used it longest ago of all; two bundles of earlier pushes are in the cache as well.
    utimesSync(served, LONG_AGO, LONG_AGO);
    const older = fakeHashFolder(cacheDir, 'a', MiB, new Date('2002-01-01T00:00:00Z'));
    const newer = fakeHashFolder(cacheDir, 'b', MiB, new Date('2003-01-01T00:00:00Z'));
    // A download a SIGKILLed process left, one this (live) process is writing, and a file that is not the cache's.
    const stale = `.tmp-${'c'.repeat(16)}-${DEAD_PID}-abcd`;
    const live = `.tmp-${'d'.repeat(16)}-${process.pid}-abcd`;
    for (const t of [stale, live]) {
      mkdirSync(join(cacheDir, t));
      writeFileSync(join(cacheDir, t, 'weights.safetensors'), Buffer.alloc(MiB, 1));
    }
    writeFileSync(join(cacheDir, 'README'), 'not a cache folder');

    // Room for the served bundle and one more MiB: one of the two others must go, the older.
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1, cacheMaxBytes: servedBytes + 1.5 * MiB });
    try {
      expect(await reg.locate('tiny-e')).toBe(served);
      expect(readdirSync(cacheDir).sort()).toEqual([live, 'README', newer, pushed.contentHash].sort());
      expect(existsSync(join(cacheDir, older))).toBe(false);
      expect(existsSync(join(cacheDir, stale))).toBe(false);
      // served from the cache, not downloaded again, and marked used now
      expect(statSync(join(served, 'weights.safetensors')).ino).toBe(weightsIno);
      expect(statSync(served).mtimeMs).toBeGreaterThan(LONG_AGO.getTime());
    } finally {
      await reg.close();
    }
  });

  it('without a budget nothing is evicted, though dead processes\' download folders are still swept', async () => {
    const blobs = localBlobs();
    const pushed = await new ModelStore(blobs).push(bundle('tiny-u'), 'tiny-u');
    const cacheDir = tmp('cache-unlimited');
    mkdirSync(cacheDir, { recursive: true });
    const old = fakeHashFolder(cacheDir, 'e', MiB, LONG_AGO);
    const stale = `.tmp-${'f'.repeat(16)}-${DEAD_PID}-0123abcd`;
    mkdirSync(join(cacheDir, stale));
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1 });
    try {
      await reg.locate('tiny-u');
      expect(readdirSync(cacheDir).sort()).toEqual([old, pushed.contentHash].sort());
    } finally {
      await reg.close();
    }
  });

  it('never evicts a folder a model is served from, or one an engine is still open on (a job on a bundle a --force push replaced)', async () => {
    const blobs = localBlobs();
    const store = new ModelStore(blobs);
    const a = await store.push(bundle('tiny-a'), 'tiny-a');
    const b = await store.push(bundle('tiny-b'), 'tiny-b');
    const cacheDir = tmp('cache-in-use');
    // A budget of one byte: every folder not in use goes. The index is read again on every locate.
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1, cacheMaxBytes: 1, indexTtlMs: 0 });
    try {
      await reg.locate('tiny-a');
      utimesSync(join(cacheDir, a.contentHash), LONG_AGO, LONG_AGO); // the least recently used of all
      const unused = fakeHashFolder(cacheDir, '1', MiB, new Date('2005-01-01T00:00:00Z'));
      await reg.locate('tiny-b'); // a download: the budget is checked
      expect(readdirSync(cacheDir).sort()).toEqual([a.contentHash, b.contentHash].sort());
      expect(existsSync(join(cacheDir, unused))).toBe(false);

      // A job holds tiny-b's engine while a --force push replaces the bundle.
      const held = await reg.use('tiny-b');
      const b2 = await store.push(bundle('tiny-b', 'tiny tiny-b, retrained'), 'tiny-b', { force: true });
      const next = await reg.use('tiny-b'); // downloads b2: tiny-b is served from it now
      next.done();
      expect(b2.contentHash).not.toBe(b.contentHash);
      // Another download checks the budget: the old bundle of tiny-b is no model's any more, but the
      // held engine is open on it (it reads the bundle's prior per job).
      const c = await store.push(bundle('tiny-c'), 'tiny-c');
      await reg.locate('tiny-c');
      expect(readdirSync(cacheDir).sort()).toEqual([a.contentHash, b.contentHash, b2.contentHash, c.contentHash].sort());

      // The job ends: its engine closes; the next download's check deletes the folder.
      held.done();
      const d = await store.push(bundle('tiny-d'), 'tiny-d');
      await reg.locate('tiny-d');
      expect(readdirSync(cacheDir).sort()).toEqual([a.contentHash, b2.contentHash, c.contentHash, d.contentHash].sort());
      expect(reg.resolve('tiny-b')).toBe(join(cacheDir, b2.contentHash));
    } finally {
      await reg.close();
    }
  });

  it('the registry refuses a budget that is not a non-negative integer', () => {
    const store = new ModelStore(localBlobs());
    for (const bad of [-1, 1.5, Number.NaN]) {
      expect(() => createModelRegistry({ store, cacheMaxBytes: bad })).toThrow(expect.objectContaining({ code: 'invalid_input', message: expect.stringContaining('cacheMaxBytes') }));
    }
  });
});

describe('CLIPAG_MODEL_CACHE_MAX_BYTES', () => {
  it('is bytes or unlimited, 20 GiB by default; anything else is refused naming the variable', () => {
    expect(parseConfig({}).modelCacheMaxBytes).toBe(20 * 2 ** 30);
    expect(parseConfig({ CLIPAG_MODEL_CACHE_MAX_BYTES: '1048576' }).modelCacheMaxBytes).toBe(MiB);
    expect(parseConfig({ CLIPAG_MODEL_CACHE_MAX_BYTES: '0' }).modelCacheMaxBytes).toBe(0);
    expect(parseConfig({ CLIPAG_MODEL_CACHE_MAX_BYTES: 'unlimited' }).modelCacheMaxBytes).toBe(Infinity);
    for (const bad of ['-1', '1.5', '20GiB', 'lots', '99999999999999999999']) {
      expect(() => parseConfig({ CLIPAG_MODEL_CACHE_MAX_BYTES: bad })).toThrow(/CLIPAG_MODEL_CACHE_MAX_BYTES/);
    }
  });

  it('reaches the worker\'s model cache', async () => {
    const blobs = localBlobs();
    const pushed = await new ModelStore(blobs).push(bundle('tiny-w'), 'tiny-w');
    const cacheDir = tmp('cache-worker');
    mkdirSync(cacheDir, { recursive: true });
    const old = fakeHashFolder(cacheDir, '2', MiB, LONG_AGO);
    const config = parseConfig({ CLIPAG_MODELS_DIR: tmp('no-models'), CLIPAG_DATA_DIR: tmp('data'), CLIPAG_MODEL_CACHE_MAX_BYTES: '1' });
    const qdir = tmp('cache-queue');
    const running = startWorker({
      queue: new LocalJobQueue({ dir: qdir, visibilitySec: 30, maxReceives: 3 }),
      blobs,
      config,
      modelStore: new ModelStore(blobs),
      modelCacheDir: cacheDir,
      warmUp: false,
      worker: { receiveWaitSec: 0 },
      log: { debug() {}, info() {}, warn() {}, error() {} },
    });
    try {
      await running.models.locate('tiny-w');
      expect(readdirSync(cacheDir)).toEqual([pushed.contentHash]);
      expect(existsSync(join(cacheDir, old))).toBe(false);
    } finally {
      await running.stop();
    }
  });
});
