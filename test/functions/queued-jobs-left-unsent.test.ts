// A job whose message a killed process never sent (kill -9 between the job's create and its send) is
// sent when `clipag serve` starts alone on the data folder (sendMessagesLeftUnsent), not after the
// sweep's 5 minutes, during which replays answered `200 queued` for a job nothing would run.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { markMessageRefused, RESEND_AFTER_MS, sendMessagesLeftUnsent, sweepQueuedJobs, type QueuedJobDeps } from '../../functions/queued-jobs.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import type { JobQueue } from '../../shared/ports.ts';
import type { JobRecord } from '../../shared/schemas/job.ts';
import { httpWebhookSender } from '../../shared/webhooks.ts';
import { drainJobIds, harness, pendingMessageMarkers, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const deps = (): QueuedJobDeps => ({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date() });
const noMessage = async (_job: JobRecord) => false;

const drain = () => drainJobIds(h.queue);

const msgMarkers = () => pendingMessageMarkers(h.blobs);

/** A POST whose send never completes: the process "dies" after the job's create, before its message. */
async function postDyingRequest(prompt = 'apple', idempotencyKey?: string): Promise<string> {
  const dying: JobQueue = new Proxy(h.queue, { get: (t, p, r) => (p === 'send' ? () => new Promise(() => undefined) : Reflect.get(t, p, r)) });
  const app = createApp({ ...h.deps, queue: dying });
  const before = new Set((await h.jobs.listByOwner('acct_alice', { limit: 100 })).jobs.map((j) => j.id));
  void app.request('/v1/generations', {
    method: 'POST',
    headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : {}) },
    body: JSON.stringify({ prompt }),
  });
  for (let i = 0; i < 200; i++) {
    const fresh = (await h.jobs.listByOwner('acct_alice', { limit: 100 })).jobs.find((j) => !before.has(j.id));
    // The marker is written before the record: once the record is there, the request is at its send.
    if (fresh) return fresh.id;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('the job was never created');
}

describe('sendMessagesLeftUnsent', () => {
  it('sends, once, the message of a job created before the start and never sent, however fresh', async () => {
    const id = await postDyingRequest();
    expect(await drain()).toEqual([]);
    const startedAt = new Date(Date.now() + 1);
    expect(await sendMessagesLeftUnsent(deps(), { before: startedAt, hasMessage: noMessage })).toEqual({ sent: 1, failed: 0 });
    expect(await drain()).toEqual([id]);
    expect(await msgMarkers()).toEqual([]);
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'queued', attempts: 0 });

    // Nothing more: by a second pass, nor by the sweep (the marker is gone).
    expect(await sendMessagesLeftUnsent(deps(), { before: startedAt, hasMessage: noMessage })).toEqual({ sent: 0, failed: 0 });
    expect(await sweepQueuedJobs({ ...deps(), webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } })).toMatchObject({ resent: 0 });
    expect(await drain()).toEqual([]);
  });

  it('leaves a job that has its message, one queued after the start, and one whose POST answered 503', async () => {
    const hasIt = await postDyingRequest('has its message');
    const refused = await postDyingRequest('refused');
    await markMessageRefused(h.blobs, 'acct_alice', refused);
    const startedAt = new Date(Date.now() + 1);
    await new Promise((r) => setTimeout(r, 5)); // a create after the start is stamped later than it
    const afterStart = await postDyingRequest('after the start');
    const asked: string[] = [];
    const report = await sendMessagesLeftUnsent(deps(), {
      before: startedAt,
      hasMessage: async (job) => {
        asked.push(job.id);
        return job.id === hasIt;
      },
    });
    expect(report).toEqual({ sent: 0, failed: 0 });
    expect(asked).toEqual([hasIt]); // the other two are not candidates at all
    expect(await drain()).toEqual([]);
    expect((await msgMarkers()).sort()).toEqual([hasIt, refused, afterStart].map((id) => pendingJobKey('msg', 'acct_alice', id)).sort());
    for (const id of [hasIt, afterStart]) expect((await h.jobs.get('acct_alice', id))?.enqueued_at).toBeUndefined();
  });

  it('with a concurrent replay that re-sends the same job, the message is sent once', async () => {
    const id = await postDyingRequest('apple', 'left-unsent');
    const startedAt = new Date(Date.now() + 1);
    // Both are due: the job has waited past RESEND_AFTER_MS by the clock both read, so a replay re-sends it too.
    const later = () => new Date(Date.now() + RESEND_AFTER_MS + 60_000);
    const app = createApp({ ...h.deps, clock: later });
    const [report, replay] = await Promise.all([
      sendMessagesLeftUnsent({ ...deps(), clock: later }, { before: startedAt, hasMessage: noMessage }),
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'left-unsent' },
        body: JSON.stringify({ prompt: 'apple' }),
      }),
    ]);
    expect(replay.status).toBe(200);
    // One of the two sent it (the conditional enqueued_at stamp lets one through), never both.
    expect(report.sent).toBeLessThanOrEqual(1);
    expect(await drain()).toEqual([id]);
  });

  it('a send that fails is counted and leaves the marker for the sweep', async () => {
    const id = await postDyingRequest();
    const failing: JobQueue = new Proxy(h.queue, { get: (t, p, r) => (p === 'send' ? async () => Promise.reject(new Error('queue down')) : Reflect.get(t, p, r)) });
    const report = await sendMessagesLeftUnsent({ ...deps(), queue: failing }, { before: new Date(Date.now() + 1), hasMessage: noMessage });
    expect(report).toEqual({ sent: 0, failed: 1 });
    expect(await msgMarkers()).toEqual([pendingJobKey('msg', 'acct_alice', id)]);
    expect((await h.jobs.get('acct_alice', id))?.enqueued_at).toBeUndefined(); // the stamp put back
  });
});
