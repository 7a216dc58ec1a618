/**
 * One GET /v1/generations counts as one request against the account's rate (ADR 0026), so what it may
 * read is bounded: at most 100 job documents (LIST_SCAN_LIMIT, the largest page), filtered or not,
 * corrupt documents included. A filter that finds few still pages on to every match.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { newJobId } from '../../shared/ids.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { harness, type Harness } from './helpers.ts';
import { countingBlobs } from '../helpers/counting-blobs.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** The app on a blob store that counts its calls by method. */
function countingApp() {
  const { blobs, calls } = countingBlobs(h.blobs);
  const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs) });
  const get = async (query: string) => {
    for (const k of Object.keys(calls)) delete calls[k];
    const res = await app.request(`/v1/generations${query}`, { headers: { Authorization: `Bearer ${h.alice}` } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { data: { id: string }[]; next_cursor: string | null };
    // (The API key is read through the harness's own store, not counted here.)
    // A listing is either call: listByOwner takes keys only (listKeys) where the store has it.
    return { body, gets: calls.get ?? 0, lists: (calls.list ?? 0) + (calls.listKeys ?? 0) };
  };
  return get;
}

/** `count` of alice's jobs, oldest first; the oldest canceled, the rest succeeded. */
async function jobsOfAlice(count: number, t0 = Date.now() - 1_000_000): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const job = newJobRecord({ id: newJobId(t0 + i * 10), owner: 'acct_alice', spec: GenerationSpec.parse({ prompt: `p${i}`, model: 'toy' }) });
    await h.jobs.create({ ...job, status: (i === 0 ? 'canceled' : 'succeeded') as JobRecord['status'] });
    ids.push(job.id);
  }
  return ids;
}

describe('GET /v1/generations reads', () => {
  it('a status filter reads at most 100 generations a request (the largest page), and paging still finds the one match', async () => {
    const ids = await jobsOfAlice(250);
    const get = countingApp();
    const pages: { data: { id: string }[] }[] = [];
    let cursor: string | null = null;
    do {
      const { body, gets, lists } = await get(`?status=canceled&limit=100${cursor ? `&cursor=${cursor}` : ''}`);
      expect(gets).toBeLessThanOrEqual(100);
      expect(lists).toBe(1);
      pages.push(body);
      cursor = body.next_cursor;
    } while (cursor && pages.length < 10);
    expect(pages.map((p) => p.data.map((j) => j.id))).toEqual([[], [], [ids[0]]]);
  });

  it('the largest plain page reads as many: 100', async () => {
    await jobsOfAlice(150);
    const { body, gets } = await countingApp()('?limit=100');
    expect(body.data).toHaveLength(100);
    expect(gets).toBe(100);
  });

  it('corrupt documents count among the generations read: a page of them does not let the filter read on', async () => {
    const ids = await jobsOfAlice(50);
    // 100 documents newer than every job, none of them readable.
    for (let i = 0; i < 100; i++) await h.blobs.put(`jobs/acct_alice/${newJobId(Date.now() + i)}.json`, new TextEncoder().encode('{not json'));
    const get = countingApp();
    const first = await get('?status=canceled');
    expect(first.gets).toBe(100);
    expect(first.body.data).toEqual([]);
    expect(first.body.next_cursor).not.toBeNull();
    const second = await get(`?status=canceled&cursor=${first.body.next_cursor}`);
    expect(second.gets).toBe(50);
    expect(second.body.data.map((j) => j.id)).toEqual([ids[0]]);
  });
});
