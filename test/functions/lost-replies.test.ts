// S3 resends a PUT whose reply was lost, and the resend fails its condition when the first one landed.
// A POST must not take its own idempotency claim, or its own new job record, for someone else's: it
// answers 202 with one job, and a retry with the same key replays it. (S3 cannot be made to lose a
// reply here: lostReplyOnce wraps the real local store; test/functions/usage.test.ts and
// test/worker/output-check.test.ts cover the same for the usage ledger and the worker's final write.)
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

describe('a conditional create whose reply was lost', () => {
  it.each([
    ['the idempotency claim', (key: string) => key.startsWith('jobs/.idempotency/')],
    ['the job record', (key: string) => key.startsWith('jobs/acct_alice/')],
  ])('%s: 202 with one job, and the retry replays it', async (_what, which) => {
    const lossy = lostReplyOnce(h.blobs, (key) => which(key), 'putIfAbsent');
    const app = createApp({ ...h.deps, blobs: lossy.blobs, jobs: new BlobJobStore(lossy.blobs) });
    const post = () =>
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'lost-1' },
        body: JSON.stringify({ prompt: 'a red circle' }),
      });
    const first = await post();
    expect(lossy.lost()).toBe(1);
    expect(first.status, await first.clone().text()).toBe(202);
    const id = ((await first.json()) as { id: string }).id;
    const again = await post();
    expect(again.status).toBe(200);
    expect(((await again.json()) as { id: string }).id).toBe(id);
    expect((await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.id)).toEqual([id]);
    expect(await h.queue.receive({ max: 10, waitSec: 0 })).toHaveLength(1);
  });
});
