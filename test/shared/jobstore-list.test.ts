/**
 * BlobJobStore.listByOwner reads a page's job documents a few at once (review finding 1: one after
 * another, a 20-job page waited on 21 round trips), and still answers exactly what it did: key order
 * (newest first), corrupt documents skipped and logged, any other failure thrown, the same cursor.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../shared/adapters/local/blobstore.ts';
import { NonRetryableError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { BlobStore } from '../../shared/ports.ts';
import type { JobRecord } from '../../shared/schemas/index.ts';
import { makeTempDir } from './contract/helpers.ts';
import { createdJobs } from '../helpers/jobs.ts';

const LAT = 20;
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A BlobStore whose every `get` takes LAT ms (or `delayMs(key)`), counting how many run at once; `failGet` makes a key's get throw. */
function slowGets(inner: BlobStore, failGet: (key: string) => Error | undefined = () => undefined, delayMs: (key: string) => number = () => LAT) {
  const stats = { inFlight: 0, maxInFlight: 0, gets: 0 };
  const store = new Proxy(inner, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target) as unknown;
      if (typeof value !== 'function') return value;
      if (prop !== 'get') return (value as (...a: unknown[]) => unknown).bind(target);
      return async (key: string) => {
        stats.gets++;
        stats.inFlight++;
        stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
        try {
          await new Promise((r) => setTimeout(r, delayMs(key)));
          const failure = failGet(key);
          if (failure) throw failure;
          return await target.get(key);
        } finally {
          stats.inFlight--;
        }
      };
    },
  });
  return { store, stats };
}

async function seeded(owner: string, count: number): Promise<{ raw: LocalBlobStore; newestFirst: JobRecord[] }> {
  const { dir, cleanup } = await makeTempDir('jobstore-list');
  cleanups.push(cleanup);
  const raw = new LocalBlobStore({ rootDir: dir, signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
  return { raw, newestFirst: await createdJobs(new BlobJobStore(raw), owner, count) };
}

describe('BlobJobStore.listByOwner reads a page at once', () => {
  it('a 20-job page: its records read concurrently (bounded), in well under 20 round trips, in key order', async () => {
    const { raw, newestFirst } = await seeded('alice', 25);
    // Newer documents answer later, so an answer's arrival order is not the page's order.
    const position = (key: string) => newestFirst.findIndex((j) => key.includes(j.id));
    const { store, stats } = slowGets(raw, () => undefined, (key) => LAT + (position(key) % 4 === 0 ? 15 : 0));
    const page = await new BlobJobStore(store).listByOwner('alice', { limit: 20 });
    expect(page.jobs.map((j) => j.id)).toEqual(newestFirst.slice(0, 20).map((j) => j.id));
    expect(page.jobs).toEqual(newestFirst.slice(0, 20));
    expect(page.cursor).toBe(newestFirst[19]!.id);
    expect(stats.gets).toBe(20);
    expect(stats.maxInFlight).toBeGreaterThan(1);
    expect(stats.maxInFlight).toBeLessThanOrEqual(16);
    // No clock: the reads in flight at once show the concurrency (one at a time: maxInFlight 1).
    // The cursor resumes after the page's last job, as before.
    const rest = await new BlobJobStore(store).listByOwner('alice', { limit: 20, cursor: page.cursor! });
    expect(rest.jobs.map((j) => j.id)).toEqual(newestFirst.slice(20).map((j) => j.id));
    expect(rest.cursor).toBeUndefined();
  });

  it('a 100-job page reads at most 16 at once', async () => {
    const { raw, newestFirst } = await seeded('bob', 100);
    const { store, stats } = slowGets(raw);
    const page = await new BlobJobStore(store).listByOwner('bob', { limit: 100 });
    expect(page.jobs.map((j) => j.id)).toEqual(newestFirst.map((j) => j.id));
    expect(stats.maxInFlight).toBe(16);
  });

  it('corrupt documents are still skipped and logged, in key order; the others keep their order', async () => {
    const { raw, newestFirst } = await seeded('carol', 6);
    // Unreadable JSON, and a document that names another job: both corrupt.
    await raw.put(`jobs/carol/${newestFirst[1]!.id}.json`, Buffer.from('{not json'));
    await raw.put(`jobs/carol/${newestFirst[4]!.id}.json`, Buffer.from(JSON.stringify({ ...newestFirst[0]!, id: newestFirst[0]!.id })));
    // A key under the prefix that is not a job document is passed over, unread.
    await raw.put('jobs/carol/notes.txt', Buffer.from('x'));
    // The second corrupt document answers first: the log still follows key order.
    const { store } = slowGets(raw, () => undefined, (key) => (key.includes(newestFirst[1]!.id) ? 4 * LAT : LAT));
    const warnings: Array<{ msg: string; key: unknown }> = [];
    const page = await new BlobJobStore(store, { log: { warn: (msg, fields) => warnings.push({ msg, key: fields?.key }) } }).listByOwner('carol', { limit: 100 });
    expect(page.jobs.map((j) => j.id)).toEqual([0, 2, 3, 5].map((i) => newestFirst[i]!.id));
    expect(warnings).toEqual([
      { msg: 'skipping a corrupt job document in a listing', key: `jobs/carol/${newestFirst[1]!.id}.json` },
      { msg: 'skipping a corrupt job document in a listing', key: `jobs/carol/${newestFirst[4]!.id}.json` },
    ]);
  });

  it('any other failure of a read fails the listing', async () => {
    const { raw, newestFirst } = await seeded('dave', 5);
    const { store } = slowGets(raw, (key) => (key.includes(newestFirst[3]!.id) ? new NonRetryableError('store down') : undefined));
    await expect(new BlobJobStore(store).listByOwner('dave')).rejects.toThrow('store down');
  });
});
