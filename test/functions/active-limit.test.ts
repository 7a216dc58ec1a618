// The per-owner limit of active (queued or running) generations (ADR 0016).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { RESEND_AFTER_MS, sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { PENDING_JOBS_PREFIX, pendingJobKey } from '../../shared/keys.ts';
import { parseConfig } from '../../shared/config.ts';
import { markPending } from '../../shared/pending.ts';
import { expectEnvelope, harness, LIMITS, queueWithOutage, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const limited = () => createApp({ ...h.deps, limits: { ...LIMITS, maxActiveJobs: 2 } });
function post(app: ReturnType<typeof createApp>, body: unknown, key?: string, secret = h.alice) {
  return app.request('/v1/generations', {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json', ...(key ? { 'Idempotency-Key': key } : {}) },
    body: JSON.stringify(body),
  });
}
const activeMarkers = async (owner = 'acct_alice') => (await h.blobs.list(`${PENDING_JOBS_PREFIX}active/${owner}/`)).items.map((i) => i.key);

describe('active generations per owner', () => {
  it('at the limit a new generation is a 429 with Retry-After, writing nothing; other owners are not affected', async () => {
    const app = limited();
    const a = (await (await post(app, { prompt: 'a' }, 'k-a')).json()) as { id: string };
    expect((await post(app, { prompt: 'b' })).status).toBe(202);
    const res = await post(app, { prompt: 'c' }, 'k-c');
    const error = await expectEnvelope(res, 429, 'too_many_active_jobs');
    expect(res.headers.get('Retry-After')).toBe('30');
    expect(error.message).toBe('at most 2 generations may be queued or running at once, and that many are (or are being made). Retry when some have finished.');
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(2);
    expect((await post(app, { prompt: 'c' }, undefined, h.bob)).status).toBe(202);
    // A retry of a request whose job exists is still answered with it.
    const replay = await post(app, { prompt: 'a' }, 'k-a');
    expect(replay.status).toBe(200);
    expect(((await replay.json()) as { id: string }).id).toBe(a.id);
  });

  it("the 429's Retry-After is the soonest likely end among the running ones, from their own progress; 30 s while all are queued", async () => {
    const app = limited();
    const a = (await (await post(app, { prompt: 'a', steps: 100 })).json()) as { id: string };
    const b = (await (await post(app, { prompt: 'b', steps: 100 })).json()) as { id: string };
    expect((await post(app, { prompt: 'c' })).headers.get('Retry-After')).toBe('30');
    const running = (id: string, step: number, startedSecAgo: number) =>
      h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: new Date(Date.now() - startedSecAgo * 1000).toISOString(), progress: { ...cur.progress, step } }));
    // a: 20 of 100 steps in 40 s, so about 160 s to go (capped at 120); b: 50 of 100 in 20 s, so 20 s to go.
    await running(a.id, 20, 40);
    expect(Number((await post(app, { prompt: 'c' })).headers.get('Retry-After'))).toBe(120);
    await running(b.id, 50, 20);
    const after = Number((await post(app, { prompt: 'c' })).headers.get('Retry-After'));
    expect(after).toBeGreaterThanOrEqual(20);
    expect(after).toBeLessThanOrEqual(22);
    // Nearly done, or done and storing its images: at least a second.
    await running(b.id, 99, 1);
    expect((await post(app, { prompt: 'c' })).headers.get('Retry-After')).toBe('1');
    await running(b.id, 100, 30);
    expect((await post(app, { prompt: 'c' })).headers.get('Retry-After')).toBe('1');
    // ... unless its lease lapsed (its worker died): then its pace says nothing, and a's 120 s stand.
    await h.jobs.update('acct_alice', b.id, (cur) => ({ ...cur, lease_expires_at: new Date(Date.now() - 1000).toISOString() }));
    expect((await post(app, { prompt: 'c' })).headers.get('Retry-After')).toBe('120');
    await h.jobs.update('acct_alice', b.id, (cur) => ({ ...cur, lease_expires_at: new Date(Date.now() + 60_000).toISOString() }));
    // A second attempt counts its steps from 0 again under the first one's started_at: its pace is unknown.
    await h.jobs.update('acct_alice', a.id, (cur) => ({ ...cur, status: 'queued', started_at: null, progress: { ...cur.progress, step: 0 } }));
    await h.jobs.update('acct_alice', b.id, (cur) => ({ ...cur, attempts: 2, progress: { ...cur.progress, step: 5 } }));
    expect((await post(app, { prompt: 'c' })).headers.get('Retry-After')).toBe('30');
  });

  it('a canceled, failed or finished job frees its place; the key a 429 refused is not spent', async () => {
    const app = limited();
    const a = (await (await post(app, { prompt: 'a' })).json()) as { id: string };
    const b = (await (await post(app, { prompt: 'b' })).json()) as { id: string };
    expect((await post(app, { prompt: 'c' }, 'k-c')).status).toBe(429);
    expect((await app.request(`/v1/generations/${a.id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
    expect(await activeMarkers()).toEqual([pendingJobKey('active', 'acct_alice', b.id)]);
    const c = await post(app, { prompt: 'c' }, 'k-c');
    expect(c.status).toBe(202);
    expect((await post(app, { prompt: 'd' })).status).toBe(429);
  });

  it('a 503 (the job failed to enqueue) frees its place, and the retry that queues it again takes it back', async () => {
    const { queue: flaky, outage } = queueWithOutage(h.queue);
    const app = createApp({ ...h.deps, queue: flaky, limits: { ...LIMITS, maxActiveJobs: 1 } });
    expect((await post(app, { prompt: 'a' }, 'k-a')).status).toBe(503);
    expect(await activeMarkers()).toEqual([]);
    outage.down = false;
    const retry = await post(app, { prompt: 'a' }, 'k-a');
    expect(retry.status).toBe(200);
    const { id } = (await retry.json()) as { id: string };
    expect(await activeMarkers()).toEqual([pendingJobKey('active', 'acct_alice', id)]);
    expect((await post(app, { prompt: 'b' })).status).toBe(429);
  });

  it('a request that makes no job gives back the place it took: a replay, a reused key (409)', async () => {
    const app = limited();
    const { id } = (await (await post(app, { prompt: 'a' }, 'k-a')).json()) as { id: string };
    expect((await post(app, { prompt: 'a' }, 'k-a')).status).toBe(200);
    await expectEnvelope(await post(app, { prompt: 'other' }, 'k-a'), 409, 'idempotency_key_reused');
    expect(await activeMarkers()).toEqual([pendingJobKey('active', 'acct_alice', id)]);
    // The one place left is still free.
    expect((await post(app, { prompt: 'b' })).status).toBe(202);
  });

  it('the sweep removes the marker of a job that ended without removing it, and keeps the others', async () => {
    const app = limited();
    const a = (await (await post(app, { prompt: 'a' })).json()) as { id: string };
    const b = (await (await post(app, { prompt: 'b' })).json()) as { id: string };
    // The worker finished `a` and recorded its usage, but crashed before removing its marker.
    await h.jobs.update('acct_alice', a.id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage_recorded_at: new Date().toISOString() }));
    expect((await post(app, { prompt: 'c' })).status).toBe(429);
    const report = await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date(), webhooks: { send: async () => 200, signedUrlTtlSec: 60 } });
    expect(report).toMatchObject({ cleared: 1, kept: 1, errors: 0 });
    expect(await activeMarkers()).toEqual([pendingJobKey('active', 'acct_alice', b.id)]);
    expect((await post(app, { prompt: 'c' })).status).toBe(202);
  });

  it('the limit is at most 1000 (one listing page), checked at start', () => {
    expect(() => parseConfig({ CLIPAG_MAX_ACTIVE_JOBS: '1001' })).toThrow(/CLIPAG_MAX_ACTIVE_JOBS/);
    expect(parseConfig({ CLIPAG_MAX_ACTIVE_JOBS: '1000' }).maxActiveJobs).toBe(1000);
  });

  it('at the limit, a retry of a job that failed to enqueue is told to wait (429), not replayed as failed', async () => {
    const { queue: flaky, outage } = queueWithOutage(h.queue);
    const app = createApp({ ...h.deps, queue: flaky, limits: { ...LIMITS, maxActiveJobs: 1 } });
    expect((await post(app, { prompt: 'a' }, 'k-a')).status).toBe(503);
    outage.down = false;
    expect((await post(app, { prompt: 'b' })).status).toBe(202); // the owner is now at the limit
    await expectEnvelope(await post(app, { prompt: 'a' }, 'k-a'), 429, 'too_many_active_jobs');
    // A key used with another body is a 409 whatever the count: waiting would not help.
    await expectEnvelope(await post(app, { prompt: 'other' }, 'k-a'), 409, 'idempotency_key_reused');
  });

  it('at the limit, a replay of a job queued long and never started sends its lost message again', async () => {
    let offsetMs = 0;
    const app = createApp({ ...h.deps, clock: () => new Date(Date.now() + offsetMs), limits: { ...LIMITS, maxActiveJobs: 1 } });
    const { id } = (await (await post(app, { prompt: 'a' }, 'k-lost')).json()) as { id: string };
    const [lost] = await h.queue.receive({ waitSec: 0 });
    await h.queue.ack(lost!.receipt); // the message is gone; the job still waits, holding the owner's one place
    // Lost as a process that died between the create and the send loses it: its message marker stays
    // (a job merely waiting in a backlog has none, and is not sent again).
    await markPending(h.blobs, 'msg', 'acct_alice', id);
    offsetMs = RESEND_AFTER_MS + 1000;
    const retry = await post(app, { prompt: 'a' }, 'k-lost');
    expect([retry.status, ((await retry.json()) as { id: string }).id]).toEqual([200, id]);
    const [again] = await h.queue.receive({ waitSec: 0 });
    expect(again && JSON.parse(again.body).job_id).toBe(id);
  });

  it('a sweep that removes a marker just as a retry re-queues its job puts it back', async () => {
    const id = ((await (await post(limited(), { prompt: 'a' })).json()) as { id: string }).id;
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'enqueue_failed', message: 'x' } }));
    const marker = pendingJobKey('active', 'acct_alice', id);
    // The re-queue lands between the sweep's read of the job (failed) and its delete of the marker.
    const racing = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'delete'
          ? async (key: string) => {
              if (key === marker) await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'queued', finished_at: null, error: null }));
              return target.delete(key);
            }
          : Reflect.get(target, prop, receiver),
    });
    await sweepQueuedJobs({ blobs: racing, jobs: h.jobs, queue: h.queue, clock: () => new Date(), webhooks: { send: async () => 200, signedUrlTtlSec: 60 } });
    expect(await activeMarkers()).toEqual([marker]);
  });

  it("a sweep between a retry's first marker write and its re-queue removes the markers; the retry writes them again", async () => {
    const { queue: flaky, outage } = queueWithOutage(h.queue);
    // Holds the retry's re-queue (its first job update once the queue is back) until the sweep has run.
    let release: (() => void) | undefined;
    let reached: (() => void) | undefined;
    const atGate = new Promise<void>((r) => (reached = r));
    const jobs = new Proxy(h.jobs, {
      get: (target, prop, receiver) =>
        prop === 'update'
          ? async (...args: Parameters<typeof target.update>) => {
              if (!outage.down && !release) await new Promise<void>((go) => ((release = go), reached!()));
              return target.update(...args);
            }
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, jobs, queue: flaky });
    const send = () => post(app, { prompt: 'apple' }, 'k-race');
    expect((await send()).status).toBe(503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    outage.down = false;
    const retry = send();
    await atGate; // the markers are written, the re-queue not yet made
    const jobMarker = pendingJobKey('active', 'acct_alice', job!.id);
    // Beside the job's, the place the retry took for itself until its replay ends (it has no job: the sweep leaves it).
    const [retryPlace] = (await activeMarkers()).filter((key) => key !== jobMarker);
    expect((await activeMarkers()).sort()).toEqual([jobMarker, retryPlace!].sort());
    await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date(), webhooks: { send: async () => 200, signedUrlTtlSec: 60 } });
    expect(await activeMarkers()).toEqual([retryPlace]); // the job was still failed when the sweep looked twice
    release!();
    expect((await retry).status).toBe(200);
    expect(await activeMarkers()).toEqual([pendingJobKey('active', 'acct_alice', job!.id)]);
  });
});
