/**
 * Listings that need keys only go through `listKeys` (shared/prefix.ts): the local store's `list` opens,
 * hashes and reads the content type of every object it returns, which a generation's frames view, a
 * DELETE's removal of its outputs and every POST's count of active generations paid for nothing.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { BlobStore, KeyPage, ListOptions, ListPage } from '../../shared/ports.ts';
import { listKeys } from '../../shared/prefix.ts';
import { frameKey } from '../../shared/views.ts';
import { harness, type Harness } from './helpers.ts';
import { countingBlobs } from '../helpers/counting-blobs.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

describe('key-only listings', () => {
  it('POST, GET frames and DELETE list keys without reading an object through list', async () => {
    const { blobs, calls, args } = countingBlobs(h.blobs);
    const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs) });
    const auth = { Authorization: `Bearer ${h.alice}` };
    const created = await app.request('/v1/generations', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a red circle', model: 'toy' }) });
    expect(created.status).toBe(202);
    const { id } = (await created.json()) as { id: string };
    expect(calls.listKeys).toBeGreaterThan(0); // the active generations counted
    const image = `outputs/acct_alice/${id}/0.png`;
    await h.blobs.put(image, new Uint8Array([1]), { contentType: 'image/png' });
    for (let step = 0; step <= 200; step += 10) await h.blobs.put(frameKey('acct_alice', id, 0, step, 64, 64), new Uint8Array([2]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), outputs: [{ key: image, width: 64, height: 64 }] }));

    const frames = await app.request(`/v1/generations/${id}/frames`, { headers: auth });
    expect(frames.status).toBe(200);
    expect(((await frames.json()) as { data: unknown[] }).data).toHaveLength(21);
    const deleted = await app.request(`/v1/generations/${id}`, { method: 'DELETE', headers: auth });
    expect(deleted.status).toBe(200);
    expect((await h.blobs.listKeys(`outputs/acct_alice/${id}/`)).keys).toEqual([]);
    // The one listing that needs more than keys: the workers' presence (a queued view's `queue`, ADR 0040),
    // whose freshness is each document's write time, which only `list` gives (on S3 at no extra cost).
    expect(args.filter(([method, prefix]) => method === 'list' && prefix !== 'workers/')).toEqual([]);
    expect(calls.list ?? 0).toBeLessThanOrEqual(1);
    expect(calls.head ?? 0).toBe(0);
  });

  it('a store without listKeys pages through list: the same keys and cursor', async () => {
    for (const key of ['p/1', 'p/2', 'p/3', 'q/1']) await h.blobs.put(key, new Uint8Array([1]));
    const listOnly = { list: (prefix: string, options?: ListOptions): Promise<ListPage> => h.blobs.list(prefix, options) } as BlobStore;
    const first: KeyPage = await listKeys(listOnly, 'p/', { limit: 2 });
    expect(first).toEqual({ keys: ['p/1', 'p/2'], cursor: 'p/2' });
    expect(await listKeys(listOnly, 'p/', { cursor: first.cursor! })).toEqual({ keys: ['p/3'] });
    expect(await listKeys(h.blobs, 'p/', { limit: 2 })).toEqual(first);
  });
});
