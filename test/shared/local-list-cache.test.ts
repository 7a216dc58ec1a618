/**
 * Long-run review finding 3: a local listing re-read and re-sorted the whole folder on each call (paging
 * an owner's jobs was quadratic), and each listed job document was read and hashed twice (list() heads
 * it, listByOwner gets it). The store now keeps a folder's sorted keys while the folder's stamp (identity,
 * mtime, ctime) is unchanged, and listByOwner lists keys only. These tests hold the cache to never
 * hiding or inventing a key, including for a second store instance (another process) on the same folder.
 */
import { mkdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LIST_CACHE_MIN_KEYS, LocalBlobStore } from '../../shared/adapters/local/blobstore.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { makeTempDir } from './contract/helpers.ts';
import { createdJobs } from '../helpers/jobs.ts';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function tempRoot(): Promise<string> {
  const { dir, cleanup } = await makeTempDir('list-cache');
  cleanups.push(cleanup);
  return dir;
}

function open(root: string, warnings: string[] = []): LocalBlobStore {
  return new LocalBlobStore({ rootDir: root, signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1', log: { warn: (_msg, fields) => warnings.push(String(fields?.file)) } });
}

/** Counts the folder walks `store` makes (a listing served from its cache makes none). */
function countWalks(store: LocalBlobStore): { walks: () => number } {
  const spy = vi.spyOn(store as unknown as { readTree: (baseFolder: string) => Promise<unknown> }, 'readTree');
  return { walks: () => spy.mock.calls.length };
}

/** Writes `count` files under objects/`folder` by hand (as a restored backup would), names `<prefix>NNNN`. */
async function seedFiles(root: string, folder: string, count: number, prefix = 'k'): Promise<string[]> {
  await mkdir(join(root, 'objects', folder), { recursive: true });
  const keys = Array.from({ length: count }, (_, i) => `${folder}/${prefix}${String(i).padStart(4, '0')}`);
  await Promise.all(keys.map((key) => writeFile(join(root, 'objects', key), key)));
  return keys;
}

/**
 * Sets the folders' mtimes an hour back, as a folder nobody wrote to for an hour has: a listing trusts
 * only such a folder from memory (one changed in the last seconds may change again within the same
 * clock tick without its mtime moving, so it is read again).
 */
let settled = 0;
async function settle(root: string, ...folders: string[]): Promise<void> {
  const old = new Date(Date.UTC(2026, 0, 1) + ++settled * 1000); // each call its own time, long past
  for (const folder of folders) await utimes(join(root, 'objects', folder), old, old);
}

const allKeys = async (store: BlobStore, prefix: string) => (await store.listKeys!(prefix)).keys;

describe('local listing cache: never stale', () => {
  it('a settled folder is listed from memory; a key another instance creates or deletes in between is seen at once', async () => {
    const root = await tempRoot();
    const keys = await seedFiles(root, 'jobs/acct', LIST_CACHE_MIN_KEYS);
    await settle(root, 'jobs/acct');
    const reader = open(root);
    const writer = open(root); // another process on the same data folder
    const { walks } = countWalks(reader);
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(keys);
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(keys);
    expect(walks()).toBe(1); // the second listing was served from memory

    await writer.put('jobs/acct/k0010a', Buffer.from('new'));
    const withNew = [...keys.slice(0, 11), 'jobs/acct/k0010a', ...keys.slice(11)];
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(withNew);
    expect((await reader.list('jobs/acct/', { cursor: 'jobs/acct/k0010', limit: 1 })).items.map((i) => i.key)).toEqual(['jobs/acct/k0010a']);

    await settle(root, 'jobs/acct');
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(withNew);
    const walked = walks();
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(withNew);
    expect(walks()).toBe(walked); // cached again
    await writer.delete('jobs/acct/k0003');
    expect(await allKeys(reader, 'jobs/acct/')).toEqual(withNew.filter((k) => k !== 'jobs/acct/k0003'));
    expect(await reader.head('jobs/acct/k0003')).toBeNull();
  });

  it('a file renamed into a settled folder from elsewhere (by hand, or another program) is seen', async () => {
    const root = await tempRoot();
    const keys = await seedFiles(root, 'uploads/o', LIST_CACHE_MIN_KEYS);
    await settle(root, 'uploads/o');
    const store = open(root);
    expect(await allKeys(store, 'uploads/o/')).toEqual(keys);
    expect(await allKeys(store, 'uploads/o/')).toEqual(keys);
    await writeFile(join(root, 'outside'), 'x');
    await rename(join(root, 'outside'), join(root, 'objects/uploads/o/a-late-one'));
    expect(await allKeys(store, 'uploads/o/')).toEqual(['uploads/o/a-late-one', ...keys]);
    // And a file removed by hand is gone from the next listing.
    await settle(root, 'uploads/o');
    await allKeys(store, 'uploads/o/');
    await rm(join(root, 'objects/uploads/o/k0000'));
    expect(await allKeys(store, 'uploads/o/')).toEqual(['uploads/o/a-late-one', ...keys.slice(1)]);
  });

  it('a change whose folder mtime was then set back (rsync -t, cp -p, touch -r) is seen: the ctime moved', async () => {
    const root = await tempRoot();
    const keys = await seedFiles(root, 'jobs/sync', LIST_CACHE_MIN_KEYS);
    await settle(root, 'jobs/sync');
    const folder = join(root, 'objects/jobs/sync');
    const before = await stat(folder);
    const store = open(root);
    expect(await allKeys(store, 'jobs/sync/')).toEqual(keys);
    expect(await allKeys(store, 'jobs/sync/')).toEqual(keys);
    // The ctime moves only to a later clock tick than settle's utimes gave it (≤ 10 ms).
    await new Promise((resolve) => setTimeout(resolve, 50));
    await writeFile(join(folder, 'restored'), 'x');
    await utimes(folder, before.atime, before.mtime);
    expect((await stat(folder)).mtimeMs).toBe(before.mtimeMs); // the mtime is what the cached listing saw
    expect(await allKeys(store, 'jobs/sync/')).toEqual([...keys, 'jobs/sync/restored']);
  });

  it('a folder changed in the last seconds is read again on every listing (its mtime cannot yet be trusted)', async () => {
    const root = await tempRoot();
    const keys = await seedFiles(root, 'jobs/busy', LIST_CACHE_MIN_KEYS);
    const store = open(root);
    const other = open(root);
    const { walks } = countWalks(store);
    expect(await allKeys(store, 'jobs/busy/')).toEqual(keys);
    await other.put('jobs/busy/z1', Buffer.from('1'));
    expect(await allKeys(store, 'jobs/busy/')).toEqual([...keys, 'jobs/busy/z1']);
    await other.delete('jobs/busy/k0000');
    expect(await allKeys(store, 'jobs/busy/')).toEqual([...keys.slice(1), 'jobs/busy/z1']);
    expect(await allKeys(store, 'jobs/busy/')).toEqual([...keys.slice(1), 'jobs/busy/z1']);
    expect(walks()).toBe(4);
  });

  it('nested folders: a change in a subfolder, a new subfolder or a removed one is seen by the listings of every prefix above it', async () => {
    const root = await tempRoot();
    const q = await seedFiles(root, 'p/q', LIST_CACHE_MIN_KEYS);
    const r = await seedFiles(root, 'p/r', 3);
    await settle(root, 'p', 'p/q', 'p/r');
    const store = open(root);
    const other = open(root);
    const { walks } = countWalks(store);
    expect(await allKeys(store, 'p/')).toEqual([...q, ...r]);
    expect(await allKeys(store, 'p/q/')).toEqual(q);
    expect(await allKeys(store, 'p/')).toEqual([...q, ...r]);
    expect(await allKeys(store, 'p/q/')).toEqual(q);
    expect(walks()).toBe(2); // one per listed folder, then both from memory

    // p's own mtime does not move: only p/q's does.
    await writeFile(join(root, 'objects/p/q/added'), 'x');
    expect(await allKeys(store, 'p/')).toEqual(['p/q/added', ...q, ...r]);
    expect(await allKeys(store, 'p/q/')).toEqual(['p/q/added', ...q]);
    expect(await allKeys(store, 'p/q')).toEqual(['p/q/added', ...q]); // a partial prefix walks p/

    await settle(root, 'p', 'p/q', 'p/r');
    await allKeys(store, 'p/');
    await other.put('p/s/t/deep', Buffer.from('1')); // new folders two levels down
    expect(await allKeys(store, 'p/')).toEqual(['p/q/added', ...q, ...r, 'p/s/t/deep']);

    await settle(root, 'p', 'p/q', 'p/r', 'p/s', 'p/s/t');
    await allKeys(store, 'p/');
    for (const key of r) await other.delete(key); // empties p/r, which the store removes
    expect(await allKeys(store, 'p/')).toEqual(['p/q/added', ...q, 'p/s/t/deep']);
  });

  it('a folder removed and made again (a new folder at the same path) is read again', async () => {
    const root = await tempRoot();
    await seedFiles(root, 'f/g', LIST_CACHE_MIN_KEYS, 'old');
    await settle(root, 'f/g');
    const store = open(root);
    await allKeys(store, 'f/g/');
    await rm(join(root, 'objects/f/g'), { recursive: true });
    const fresh = await seedFiles(root, 'f/g', LIST_CACHE_MIN_KEYS, 'new');
    await settle(root, 'f/g'); // an old mtime too, as a restored backup has
    expect(await allKeys(store, 'f/g/')).toEqual(fresh);
  });

  it('pages from memory exactly as a full filter would: any cursor, inside or outside the prefix, any limit', async () => {
    const root = await tempRoot();
    const a = await seedFiles(root, 'm/a', LIST_CACHE_MIN_KEYS + 6);
    const ab = await seedFiles(root, 'm/ab', 5);
    const b = await seedFiles(root, 'm/b', 4);
    await writeFile(join(root, 'objects/m/a.json'), '{}'); // '.' sorts before '/': m/a.json < m/a/...
    await settle(root, 'm', 'm/a', 'm/ab', 'm/b');
    const store = open(root);
    const everything = ['m/a.json', ...a, ...ab, ...b];
    expect(await allKeys(store, 'm/')).toEqual(everything);
    for (const prefix of ['m/', 'm/a', 'm/a/', 'm/ab', 'm/b/', 'm/c']) {
      const matching = everything.filter((k) => k.startsWith(prefix));
      for (const cursor of [undefined, 'a', 'm/', 'm/a', 'm/a/k0007', 'm/a/k0007x', 'm/a/k9999', 'm/ab/k0001', 'm/b', 'z']) {
        const after = cursor === undefined ? matching : matching.filter((k) => k > cursor);
        for (const limit of [1, 7, 1000]) {
          const page = await store.listKeys(prefix, { limit, ...(cursor !== undefined ? { cursor } : {}) });
          expect(page.keys, `${prefix} ${cursor} ${limit}`).toEqual(after.slice(0, limit));
          expect(page.cursor, `${prefix} ${cursor} ${limit}`).toBe(after.length > limit ? after[limit - 1] : undefined);
        }
      }
    }
  });

  it('files whose names are not keys are skipped and warned about once, from memory too', async () => {
    const root = await tempRoot();
    const keys = await seedFiles(root, 'jobs/w', LIST_CACHE_MIN_KEYS);
    await writeFile(join(root, 'objects/jobs/w/copy of k0001'), 'x');
    await settle(root, 'jobs/w');
    const warnings: string[] = [];
    const store = open(root, warnings);
    expect(await allKeys(store, 'jobs/w/')).toEqual(keys);
    expect(await allKeys(store, 'jobs/w/')).toEqual(keys);
    expect(warnings).toEqual([join(root, 'objects/jobs/w/copy of k0001')]);
  });

  it('keeps a bounded number of listings, dropping the least recently used', async () => {
    const root = await tempRoot();
    const store = open(root);
    const folders = Array.from({ length: 40 }, (_, i) => `many/f${i}`);
    for (const folder of folders) await seedFiles(root, folder, LIST_CACHE_MIN_KEYS);
    await settle(root, ...folders);
    for (const folder of folders) await allKeys(store, `${folder}/`);
    const trees = (store as unknown as { trees: Map<string, { keys: string[]; folders: Map<string, unknown>; strays: string[] }> }).trees;
    expect(trees.size).toBe(32);
    expect([...trees.keys()]).toEqual(folders.slice(8));
    const weight = (store as unknown as { treesWeight: number }).treesWeight;
    expect(weight).toBe([...trees.values()].reduce((sum, t) => sum + t.keys.length + t.folders.size + t.strays.length, 0));
  });
});

describe('BlobJobStore.listByOwner reads each listed document once', () => {
  async function seeded(owner: string, count: number) {
    const root = await tempRoot();
    const raw = open(root);
    return { raw, newestFirst: await createdJobs(new BlobJobStore(raw), owner, count) };
  }

  /** Every read of an object's bytes the store makes, by key: get (read whole) and head (hashed from a stream). */
  function countReads(store: LocalBlobStore) {
    const reads = new Map<string, number>();
    const count = (key: string) => reads.set(key, (reads.get(key) ?? 0) + 1);
    const readObject = (store as unknown as { readObject: (key: string) => Promise<unknown> }).readObject.bind(store);
    vi.spyOn(store as unknown as { readObject: (key: string) => Promise<unknown> }, 'readObject').mockImplementation((key) => (count(key), readObject(key)));
    const head = store.head.bind(store);
    vi.spyOn(store, 'head').mockImplementation((key) => (count(key), head(key)));
    return reads;
  }

  it('a page of 20, and the next: one read per job, none twice', async () => {
    const { raw, newestFirst } = await seeded('alice', 30);
    const reads = countReads(raw);
    const jobs = new BlobJobStore(raw);
    const page = await jobs.listByOwner('alice', { limit: 20 });
    expect(page.jobs).toEqual(newestFirst.slice(0, 20));
    expect(page.cursor).toBe(newestFirst[19]!.id);
    expect(Object.fromEntries(reads)).toEqual(Object.fromEntries(newestFirst.slice(0, 20).map((j) => [BlobJobStore.keyFor('alice', j.id), 1])));
    reads.clear();
    const rest = await jobs.listByOwner('alice', { limit: 20, cursor: page.cursor! });
    expect(rest.jobs).toEqual(newestFirst.slice(20));
    expect(rest.cursor).toBeUndefined();
    expect([...reads.values()]).toEqual(Array(10).fill(1));
    // endBefore cuts the page before its documents are read.
    reads.clear();
    const cut = await jobs.listByOwner('alice', { limit: 20, endBefore: newestFirst[5]!.id });
    expect(cut.jobs).toEqual(newestFirst.slice(0, 5));
    expect(cut.cursor).toBeUndefined();
    expect(reads.size).toBe(5);
  });

  it('a store without listKeys is listed through list, with the same answer', async () => {
    const { raw, newestFirst } = await seeded('bob', 7);
    const { listKeys: _dropped, ...rest } = Object.fromEntries(
      (['put', 'get', 'head', 'list', 'listKeys', 'delete', 'putIfAbsent', 'replaceIfMatch', 'signedGetUrl', 'signedPutUrl'] as const).map((name) => [name, (raw[name] as (...a: unknown[]) => unknown).bind(raw)]),
    );
    const withoutListKeys = rest as unknown as BlobStore;
    expect(withoutListKeys.listKeys).toBeUndefined();
    const jobs = new BlobJobStore(withoutListKeys);
    const first = await jobs.listByOwner('bob', { limit: 4 });
    expect(first).toEqual({ jobs: newestFirst.slice(0, 4), cursor: newestFirst[3]!.id });
    expect(await jobs.listByOwner('bob', { limit: 4, cursor: first.cursor! })).toEqual({ jobs: newestFirst.slice(4) });
  });
});
