// The worker's download cache of pushed models is bounded: download folders a dead process left are
// swept, and past CLIPAG_MODEL_CACHE_MAX_BYTES the least recently used content-hash folders that no
// engine is open on are deleted (the folder just fetched and those being downloaded excepted). A local
// blob store stands in for S3: the cache, not the transport, is under test.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startWorker } from '../../gpu-worker/main.ts';
import { PROCESS_NONCE } from '../../gpu-worker/engine/runtime/pool.ts';
import { createModelRegistry, ModelCache } from '../../gpu-worker/models.ts';
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
/** A nonce this process did not draw. */
const OTHER_NONCE = PROCESS_NONCE === '0badc0de' ? '0badf00d' : '0badc0de';
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
    // A download a SIGKILLed process left, one a killed predecessor with this very pid left (a container
    // restart), one this (live) process is writing, and a file that is not the cache's.
    const stale = `.tmp-${'c'.repeat(16)}-${DEAD_PID}-${OTHER_NONCE}-abcd`;
    const predecessor = `.tmp-${'c'.repeat(16)}-${process.pid}-${OTHER_NONCE}-abcd`;
    const live = `.tmp-${'d'.repeat(16)}-${process.pid}-${PROCESS_NONCE}-abcd`;
    for (const t of [stale, predecessor, live]) {
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
      expect(existsSync(join(cacheDir, predecessor))).toBe(false);
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
    const stale = `.tmp-${'f'.repeat(16)}-${DEAD_PID}-${OTHER_NONCE}-0123abcd`;
    mkdirSync(join(cacheDir, stale));
    // an older version's name (no nonce) is not a shape this cache makes: left alone
    const older = `.tmp-${'f'.repeat(16)}-${DEAD_PID}-0123abcd`;
    mkdirSync(join(cacheDir, older));
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1 });
    try {
      await reg.locate('tiny-u');
      expect(readdirSync(cacheDir).sort()).toEqual([old, older, pushed.contentHash].sort());
    } finally {
      await reg.close();
    }
  });

  it('never evicts the folder just fetched, or one an engine is still open on (a job on a bundle a --force push replaced); a folder only downloaded once goes', async () => {
    const blobs = localBlobs();
    const store = new ModelStore(blobs);
    const a = await store.push(bundle('tiny-a'), 'tiny-a');
    const b = await store.push(bundle('tiny-b'), 'tiny-b');
    const cacheDir = tmp('cache-in-use');
    // A budget of one byte: every folder not in use goes. The index is read again on every locate.
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1, cacheMaxBytes: 1, indexTtlMs: 0 });
    try {
      await reg.locate('tiny-a');
      expect(reg.resolve('tiny-a')).toBe(join(cacheDir, a.contentHash));
      const unused = fakeHashFolder(cacheDir, '1', MiB, new Date('2005-01-01T00:00:00Z'));
      await reg.locate('tiny-b'); // a download: the budget is checked
      // tiny-a was only downloaded (no engine is open on it): it goes, and is no longer taken for on disk
      expect(readdirSync(cacheDir)).toEqual([b.contentHash]);
      expect(existsSync(join(cacheDir, unused))).toBe(false);
      expect(() => reg.resolve('tiny-a')).toThrow(/not downloaded yet/);

      // A job holds tiny-b's engine while a --force push replaces the bundle.
      const held = await reg.use('tiny-b');
      const b2 = await store.push(bundle('tiny-b', 'tiny tiny-b, retrained'), 'tiny-b', { force: true });
      const next = await reg.use('tiny-b'); // downloads b2: tiny-b is served from it now
      next.done();
      expect(b2.contentHash).not.toBe(b.contentHash);
      // Another download checks the budget: the old bundle of tiny-b is no model's any more, but the
      // held engine is open on it (it reads the bundle's prior per job); b2's engine is open too.
      const c = await store.push(bundle('tiny-c'), 'tiny-c');
      await reg.locate('tiny-c');
      expect(readdirSync(cacheDir).sort()).toEqual([b.contentHash, b2.contentHash, c.contentHash].sort());

      // The job ends: its engine closes; the next download's check deletes its folder, and tiny-c's
      // (downloaded, never opened). b2 stays: its engine is open.
      held.done();
      const d = await store.push(bundle('tiny-d'), 'tiny-d');
      await reg.locate('tiny-d');
      expect(readdirSync(cacheDir).sort()).toEqual([b2.contentHash, d.contentHash].sort());
      expect(reg.resolve('tiny-b')).toBe(join(cacheDir, b2.contentHash));
      expect(() => reg.resolve('tiny-c')).toThrow(/not downloaded yet/);
    } finally {
      await reg.close();
    }
  });

  it('a long-lived process can evict a model it served once: past maxOpenModels its engine closes, its folder goes, and its next use downloads it again', async () => {
    const blobs = localBlobs();
    const store = new ModelStore(blobs);
    const pushed: Record<string, string> = {};
    for (const n of ['tiny-a', 'tiny-b', 'tiny-c']) pushed[n] = (await store.push(bundle(n), n)).contentHash;
    const cacheDir = tmp('cache-served-once');
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir, threads: 1, cacheMaxBytes: 1, maxOpenModels: 1 });
    try {
      for (const n of ['tiny-a', 'tiny-b', 'tiny-c']) {
        const job = await reg.use(n);
        await job.engine.embedText(['a red circle']);
        job.done();
      }
      // tiny-a's engine closed when tiny-b's opened; tiny-c's download then deleted tiny-a's folder.
      const aDir = join(cacheDir, pushed['tiny-a']!);
      expect(existsSync(aDir)).toBe(false);
      expect(readdirSync(cacheDir)).not.toContain(pushed['tiny-a']);

      const again = await reg.use('tiny-a');
      try {
        expect(existsSync(join(aDir, 'weights.safetensors'))).toBe(true); // downloaded again
        expect((await again.engine.embedText(['a red circle'])).unit).toHaveLength(again.engine.embedDim);
      } finally {
        again.done();
      }
      expect(reg.resolve('tiny-a')).toBe(aDir);
    } finally {
      await reg.close();
    }
  });

  it('a ModelCache given a relative folder compares it resolved with the folders in use: those stay', async () => {
    const blobs = localBlobs();
    const store = new ModelStore(blobs);
    await store.push(bundle('tiny-r'), 'tiny-r');
    const cacheDir = tmp('cache-relative');
    mkdirSync(cacheDir, { recursive: true });
    const open = fakeHashFolder(cacheDir, '3', MiB, LONG_AGO);
    const idle = fakeHashFolder(cacheDir, '4', MiB, LONG_AGO);
    const cache = new ModelCache(store, relative(process.cwd(), cacheDir), { maxBytes: 1, inUse: () => [join(cacheDir, open)] });
    expect(cache.cacheDir).toBe(cacheDir);
    const f = await cache.fetch((await store.describe('tiny-r'))!);
    expect(f.dir).toBe(join(cacheDir, f.contentHash));
    expect(readdirSync(cacheDir).sort()).toEqual([open, f.contentHash].sort());
    expect(existsSync(join(cacheDir, idle))).toBe(false);
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
