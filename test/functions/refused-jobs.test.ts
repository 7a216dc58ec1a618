// A POST answered 503 whose job may exist but could not be failed (ADR 0012, "A 503 never runs; a job
// that will run is a 202"): its `pending/msg` marker is rewritten as a refusal. These pin what the
// sweep and the retries do with it: the refused job never runs behind the 503, and the retry the 503
// invited runs it.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { markMessageRefused, sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { RetryableError } from '../../shared/errors.ts';
import { markPending } from '../../shared/pending.ts';
import type { BlobStore, JobStore, ListOptions } from '../../shared/ports.ts';
import type { JobRecord } from '../../shared/schemas/job.ts';
import { parseQueueMessage } from '../../shared/schemas/queue.ts';
import { httpWebhookSender } from '../../shared/webhooks.ts';
import { expectEnvelope, harness, LIMITS, queueWithOutage, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => (h = await harness()));
afterEach(async () => h.close());

/** The messages on the queue, as job ids. */
async function queued(): Promise<string[]> {
  return (await h.queue.receive({ max: 10, waitSec: 0 })).map((m) => parseQueueMessage(m.body).job_id);
}

/**
 * A job store whose `update` fails while `down.updates` is set, and whose first `create` lands but
 * reports an error (a timeout): the POST's refusal can then only be its marker.
 */
function storeThatCannotFail(base: JobStore = h.jobs) {
  const down = { updates: true };
  let failCreate = true;
  const jobs = new Proxy(base, {
    get: (target, prop, receiver) => {
      if (prop === 'update') return (...args: Parameters<typeof target.update>) => (down.updates ? Promise.reject(new RetryableError('injected: S3 timeout')) : target.update(...args));
      if (prop === 'create')
        return async (job: JobRecord) => {
          if (!failCreate) return target.create(job);
          failCreate = false;
          await target.create(job);
          throw new RetryableError('injected: the create timed out (it landed)', { code: 'store_unavailable' });
        };
      return Reflect.get(target, prop, receiver);
    },
  });
  return { jobs, down };
}

/** Listings as S3 gives them: LastModified in whole seconds, from a clock `skewMs` off the API's. */
function s3LikeListing(blobs: BlobStore, skewMs = 0): BlobStore {
  return new Proxy(blobs, {
    get: (target, prop) => {
      if (prop === 'list')
        return async (at: string, options?: ListOptions) => {
          const page = await target.list(at, options);
          return { ...page, items: page.items.map((i) => ({ ...i, lastModified: new Date(Math.floor((i.lastModified.getTime() + skewMs) / 1000) * 1000) })) };
        };
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

function sweepAt(aheadMs: number, blobs: BlobStore = h.blobs, jobs: JobStore = h.jobs) {
  return sweepQueuedJobs({ blobs, jobs, queue: h.queue, clock: () => new Date(Date.now() + aheadMs), webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } });
}

function postApple(app: ReturnType<typeof createApp>, key?: string) {
  return Promise.resolve(
    app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(key === undefined ? {} : { 'Idempotency-Key': key }) },
      body: JSON.stringify({ prompt: 'apple' }),
    }),
  );
}

async function msgMarkers(): Promise<Array<[string, number]>> {
  return (await h.blobs.list('pending/msg/')).items.map((i) => [i.key, i.size]);
}

describe('the sweep honours a refusal whatever the listing says of its time', () => {
  it.each([
    // The refusal written in the same second as the create: S3's floored LastModified comes before created_at.
    ['LastModified in whole seconds', 0],
    // S3's clock behind the API's.
    ['a listing clock 30 s behind', -30_000],
  ])('%s: the job fails enqueue_failed, nothing is sent, the marker is never made an ordinary one', async (_name, skewMs) => {
    const blobs = s3LikeListing(h.blobs, skewMs);
    const { jobs, down } = storeThatCannotFail();
    const app = createApp({ ...h.deps, blobs, jobs });
    // Just after a second boundary: the whole refusal (~0.3-0.5 s) falls in the create's second.
    while (Date.now() % 1000 > 30) await new Promise((r) => setTimeout(r, 5));
    await expectEnvelope(await postApple(app), 503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'queued', attempts: 0 });
    expect((await msgMarkers()).map(([, size]) => size > 0)).toEqual([true]); // refused

    // The store still failing: the sweep cannot fail the job, and keeps the refusal as it is.
    expect(await sweepAt(60_000, blobs, jobs)).toMatchObject({ errors: 1, resent: 0 });
    expect((await msgMarkers()).map(([, size]) => size > 0)).toEqual([true]);

    down.updates = false;
    expect(await sweepAt(60_000, blobs)).toMatchObject({ resent: 0, errors: 0 });
    expect(await h.jobs.get('acct_alice', job!.id)).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect(await msgMarkers()).toEqual([]);
    expect(await sweepAt(6 * 60_000, blobs)).toMatchObject({ resent: 0 });
    expect(await queued()).toEqual([]); // nothing ran behind the 503
  });

  it('a refusal that a re-queue has since voided (the job stamped enqueued_at) is an ordinary marker: the job is sent, not failed', async () => {
    const res = await postApple(createApp(h.deps));
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    expect(await queued()).toEqual([id]);
    // A retry re-queued the job (enqueued_at), then a refusal write that was slow landed, and the
    // re-queue's own message was lost.
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, enqueued_at: new Date().toISOString() }));
    await markMessageRefused(h.blobs, 'acct_alice', id);
    expect(await sweepAt(60_000)).toMatchObject({ resent: 0, kept: expect.any(Number) });
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'queued' });
    expect(await sweepAt(6 * 60_000)).toMatchObject({ resent: 1 });
    expect(await queued()).toEqual([id]);
  });
});

describe('the retry the 503 invited, when the refused job would have been answered as it stands', () => {
  it('at an active-job limit of 1: the refused job does not hold the place, and the retry re-queues and sends it', async () => {
    const { jobs, down } = storeThatCannotFail();
    const app = createApp({ ...h.deps, jobs, limits: { ...LIMITS, maxActiveJobs: 1 } });
    await expectEnvelope(await postApple(app, 'k1'), 503);
    expect((await h.blobs.list('pending/active/')).items).toEqual([]); // the refusal freed its place
    down.updates = false;
    const retry = await postApple(app, 'k1');
    expect(retry.status).toBe(200);
    const body = (await retry.json()) as { id: string; status: string };
    expect(body.status).toBe('queued');
    expect(await queued()).toEqual([body.id]);
    expect(await h.jobs.get('acct_alice', body.id)).toMatchObject({ status: 'queued', enqueued_at: expect.any(String) });
    expect(await sweepAt(60_000)).toMatchObject({ resent: 0 });
    expect(await h.jobs.get('acct_alice', body.id)).toMatchObject({ status: 'queued' });
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
  });

  it('at the limit because its place could not be freed: the retry fails it, checks again, and re-queues it', async () => {
    const { jobs, down } = storeThatCannotFail();
    // The blob store drops deletes of active markers while the store is down.
    const blobs = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'delete'
          ? (key: string) => (down.updates && key.startsWith('pending/active/') ? Promise.reject(new RetryableError('injected: S3 timeout')) : target.delete(key))
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, blobs, jobs, limits: { ...LIMITS, maxActiveJobs: 1 } });
    await expectEnvelope(await postApple(app, 'k1'), 503);
    expect((await h.blobs.list('pending/active/')).items).toHaveLength(1); // it still fills the limit
    down.updates = false;
    const retry = await postApple(app, 'k1');
    expect(retry.status).toBe(200);
    const body = (await retry.json()) as { id: string; status: string };
    expect(body.status).toBe('queued');
    expect(await queued()).toEqual([body.id]);
    expect(await sweepAt(60_000)).toMatchObject({ resent: 0 });
    expect(await h.jobs.get('acct_alice', body.id)).toMatchObject({ status: 'queued' });
  });

  it('at the limit held by other jobs: the retry gets the 429, and the refused job is failed (a later retry re-queues it), never answered queued', async () => {
    const { jobs, down } = storeThatCannotFail();
    const app = createApp({ ...h.deps, jobs, limits: { ...LIMITS, maxActiveJobs: 1 } });
    await expectEnvelope(await postApple(app, 'k1'), 503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    await markPending(h.blobs, 'active', 'acct_alice', 'someotherjob0000000000000'); // another job holds the place
    down.updates = false;
    await expectEnvelope(await postApple(app, 'k1'), 429, 'too_many_active_jobs');
    expect(await h.jobs.get('acct_alice', job!.id)).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect(await queued()).toEqual([]);
    await h.blobs.delete('pending/active/acct_alice/someotherjob0000000000000');
    const retry = await postApple(app, 'k1');
    expect(retry.status).toBe(200);
    expect(await retry.json()).toMatchObject({ id: job!.id, status: 'queued' });
    expect(await queued()).toEqual([job!.id]);
  });

  it('another check failing (no default model now): the retry gets that error, and the refused job is failed, not answered queued', async () => {
    const { jobs, down } = storeThatCannotFail();
    await expectEnvelope(await postApple(createApp({ ...h.deps, jobs }), 'k1'), 503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    down.updates = false;
    await expectEnvelope(await postApple(createApp({ ...h.deps, jobs, models: async () => [] }), 'k1'), 400, 'validation_error');
    expect(await h.jobs.get('acct_alice', job!.id)).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect(await sweepAt(6 * 60_000)).toMatchObject({ resent: 0 });
    expect(await queued()).toEqual([]);
  });
});

describe('a failed send whose failing write landed though every try threw', () => {
  it('is answered 503 (the record reads failed), not 202 for a job the sweep will not send', async () => {
    const { queue } = queueWithOutage(h.queue);
    // The first update writes, then loses its reply; the next ones fail outright.
    let updates = 0;
    const jobs = new Proxy(h.jobs, {
      get: (target, prop, receiver) =>
        prop === 'update'
          ? async (...args: Parameters<typeof target.update>) => {
              if (updates++ > 0) throw new RetryableError('injected: S3 timeout');
              await target.update(...args);
              throw new RetryableError('injected: the reply was lost');
            }
          : Reflect.get(target, prop, receiver),
    });
    const res = await postApple(createApp({ ...h.deps, queue, jobs }));
    await expectEnvelope(res, 503, 'queue_unavailable');
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect((await h.blobs.list('pending/active/')).items).toEqual([]);
  });
});
