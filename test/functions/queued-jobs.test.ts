// The queued-job sweep: a job whose queue message was lost (the process died between the job's
// create and its send) gets its message again, without its caller having to retry.
import { markPending } from '../../shared/pending.ts';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { ORPHAN_MARKER_AFTER_MS, RESEND_AFTER_MS, startQueuedJobSweeps, sweepQueuedJobs, USAGE_AWAIT_MS, type SweepDeps } from '../../functions/queued-jobs.ts';
import { jobOutputsPrefix, PENDING_JOBS_PREFIX, pendingJobKey } from '../../shared/keys.ts';
import type { JobQueue } from '../../shared/ports.ts';
import { httpWebhookSender } from '../../shared/webhooks.ts';
import { blobsRefusingList, drainJobIds, harness, pendingMessageMarkers, queueWithOutage, type Harness } from './helpers.ts';

let h: Harness;
let offsetMs: number;
const clock = () => new Date(Date.now() + offsetMs);
const logs: Array<{ level: string; msg: string }> = [];

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
  logs.length = 0;
});
afterEach(() => h.close());

function sweepDeps(queue: JobQueue = h.queue): SweepDeps {
  return { blobs: h.blobs, jobs: h.jobs, queue, clock, log: (e) => logs.push(e), webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } };
}

const drain = () => drainJobIds(h.queue);

const markers = () => pendingMessageMarkers(h.blobs);

/** A queue whose send never completes: the request "dies" after the job's create, before its message. */
function queueThatDiesOnSend(): JobQueue {
  return new Proxy(h.queue, {
    get(target, prop, receiver) {
      if (prop === 'send') return () => new Promise(() => undefined);
      return Reflect.get(target, prop, receiver);
    },
  });
}

async function postDyingRequest(idempotencyKey?: string): Promise<string> {
  const app = createApp({ ...h.deps, queue: queueThatDiesOnSend(), clock });
  const before = new Set((await h.jobs.listByOwner('acct_alice', { limit: 100 })).jobs.map((j) => j.id));
  void app.request('/v1/generations', {
    method: 'POST',
    headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : {}) },
    body: JSON.stringify({ prompt: 'apple' }),
  });
  for (let i = 0; i < 200; i++) {
    const fresh = (await h.jobs.listByOwner('acct_alice', { limit: 100 })).jobs.find((j) => !before.has(j.id));
    if (fresh) return fresh.id;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('the job was never created');
}

describe('queued-job sweep', () => {
  it('a job created by a request that died before its send gets its message from the sweep (no retry needed)', async () => {
    const id = await postDyingRequest(); // no Idempotency-Key: the caller cannot even retry
    expect(await drain()).toEqual([]);
    expect(await markers()).toEqual([pendingJobKey('msg', 'acct_alice', id)]);

    // Fresh: the message may only be slow; nothing is sent yet.
    // (Its active-job marker, ADR 0016, is kept too: the job is queued.)
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ scanned: 2, resent: 0, kept: 2 });
    expect(await drain()).toEqual([]);

    offsetMs = RESEND_AFTER_MS + 60_000;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ scanned: 2, resent: 1, cleared: 1, kept: 1, errors: 0 });
    expect(await drain()).toEqual([id]);
    const job = await h.jobs.get('acct_alice', id);
    expect(job).toMatchObject({ status: 'queued', attempts: 0 });
    expect(Date.parse(job!.enqueued_at!)).toBeGreaterThan(Date.parse(job!.created_at) + RESEND_AFTER_MS);

    // Sent: the marker is gone, and later sweeps send nothing more.
    expect(await markers()).toEqual([]);
    offsetMs += 2 * RESEND_AFTER_MS;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ scanned: 1, resent: 0 }); // the active marker only
    expect(await drain()).toEqual([]);
  });

  it('a job whose POST sent its message leaves no marker: waiting in a backlog for long is not re-sent', async () => {
    const ids: string[] = [];
    for (const prompt of ['a', 'b', 'c']) ids.push(((await (await h.request('/v1/generations', { json: { prompt } })).json()) as { id: string }).id);
    expect(await markers()).toEqual([]);
    for (const minutes of [5, 10, 15]) {
      offsetMs = minutes * 60_000 + 1000;
      expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ resent: 0 });
    }
    expect((await drain()).sort()).toEqual([...ids].sort()); // one message each, no more
  });

  it('concurrent sweeps (and a concurrent replay) send the message once', async () => {
    const id = await postDyingRequest('dies-once');
    offsetMs = RESEND_AFTER_MS + 1000;
    const app = createApp({ ...h.deps, clock });
    const [a, b, replay] = await Promise.all([
      sweepQueuedJobs(sweepDeps()),
      sweepQueuedJobs(sweepDeps()),
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'dies-once' },
        body: JSON.stringify({ prompt: 'apple' }),
      }),
    ]);
    expect(replay.status).toBe(200);
    expect(a.resent + b.resent).toBeLessThanOrEqual(1);
    expect(await drain()).toEqual([id]);
  });

  it('a message marker is cleared once its job has started, finished or been canceled, and kept while it waits', async () => {
    const ids: string[] = [];
    for (const prompt of ['a', 'b', 'c', 'd']) {
      const res = await h.request('/v1/generations', { json: { prompt } });
      expect(res.status).toBe(202);
      ids.push(((await res.json()) as { id: string }).id);
    }
    // As if each POST had died after its create (the markers' work not done).
    for (const id of ids) await markPending(h.blobs, 'msg', 'acct_alice', id);
    const [running, succeeded, canceled, waiting] = ids as [string, string, string, string];
    await h.jobs.update('acct_alice', running, (cur) => ({ ...cur, status: 'running', attempts: 1 }));
    // Its worker recorded its usage (the record says so): its place is the sweep's to free.
    await h.jobs.update('acct_alice', succeeded, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage_recorded_at: new Date().toISOString() }));
    expect((await h.request(`/v1/generations/${canceled}/cancel`, { method: 'POST' })).status).toBe(200);
    offsetMs = RESEND_AFTER_MS / 2; // waiting, but not for long
    const report = await sweepQueuedJobs(sweepDeps());
    // 4 message markers (3 cleared) and 3 active ones (the cancel freed the fourth): the succeeded
    // job's is cleared, the running and the waiting job keep theirs.
    expect(report).toEqual({ scanned: 7, resent: 0, cleared: 4, kept: 3, expired: 0, errors: 0, foreign: 0, deferred: 0, webhooksDelivered: 0, webhooksFailed: 0, oldestQueuedSec: expect.any(Number) });
    expect(await markers()).toEqual([pendingJobKey('msg', 'acct_alice', waiting)]);
  });

  it('reports how long the longest-waiting queued job has waited since its last send; running jobs do not count', async () => {
    expect((await sweepQueuedJobs(sweepDeps())).oldestQueuedSec).toBe(0); // nothing waits
    const app = createApp({ ...h.deps, clock });
    const post = async (prompt: string) => ((await (await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt }) })).json()) as { id: string }).id;
    const long = await post('a long run');
    await h.jobs.update('acct_alice', long, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: clock().toISOString() }));
    offsetMs = 20 * 60_000; // the run has gone on for 20 minutes
    const waiting = await post('waits');
    offsetMs += 90_000;
    const report = await sweepQueuedJobs(sweepDeps());
    expect(report.oldestQueuedSec).toBeGreaterThanOrEqual(90);
    expect(report.oldestQueuedSec).toBeLessThan(120); // not the 21 minutes since the running job was sent
    // A re-queued job counts from its new send.
    await h.jobs.update('acct_alice', waiting, (cur) => ({ ...cur, enqueued_at: clock().toISOString() }));
    offsetMs += 5000;
    expect((await sweepQueuedJobs(sweepDeps())).oldestQueuedSec).toBeLessThan(30);
    // The long run failed retryably after 25 minutes and its worker put it back (queued_at): its run is no wait.
    offsetMs += 5 * 60_000;
    await h.jobs.update('acct_alice', long, (cur) => ({ ...cur, status: 'queued', queued_at: clock().toISOString() }));
    offsetMs += 10_000;
    const after = (await sweepQueuedJobs(sweepDeps())).oldestQueuedSec;
    expect(after).toBeGreaterThanOrEqual(10);
    expect(after).toBeLessThan(330); // the other job's 5 min 15 s, not the 27 minutes since the long run was sent
  });

  it('a job no queue message can reach any more (it waited past the queue\'s retention) fails expired, freeing its place and telling its webhook', async () => {
    const DAY = 86_400;
    const ids: string[] = [];
    for (const prompt of ['queued', 'lapsed', 'live', 'resent']) {
      const res = await h.request('/v1/generations', { json: { prompt, webhook_url: 'https://hooks.example.com/clipag' } });
      expect(res.status).toBe(202);
      ids.push(((await res.json()) as { id: string }).id);
    }
    const [queued, lapsed, live, resent] = ids as [string, string, string, string];
    offsetMs = (DAY + 3600 + 60) * 1000; // past one day's retention and the margin
    const inAMinute = new Date(clock().getTime() + 60_000).toISOString();
    // A worker died holding `lapsed`; `live` is being run (its heartbeat renews the lease); `resent` got a new message an hour ago.
    await h.jobs.update('acct_alice', lapsed, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_expires_at: new Date(Date.now() + 30_000).toISOString() }));
    await h.jobs.update('acct_alice', live, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_expires_at: inAMinute }));
    await h.jobs.update('acct_alice', resent, (cur) => ({ ...cur, enqueued_at: new Date(clock().getTime() - 3600_000).toISOString() }));

    // Local mode (no retention known): nothing expires, however long.
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ expired: 0 });
    const sent: string[] = [];
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY, webhooks: { send: async (req) => (sent.push(JSON.parse(req.body).type), 200), signedUrlTtlSec: 600 } });
    expect(report).toMatchObject({ expired: 2, errors: 0, webhooksDelivered: 2 });
    for (const id of [queued, lapsed]) {
      const view = (await (await h.request(`/v1/generations/${id}`)).json()) as any;
      expect([view.status, view.error.code, view.error.message]).toEqual(['failed', 'expired', 'not run within 1 day(s) (how long the queue keeps a job); submit it again']);
    }
    expect(sent).toEqual(['generation.failed', 'generation.failed']);
    for (const id of [live, resent]) expect((await h.jobs.get('acct_alice', id))!.status).not.toBe('failed');
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}active/`)).items.map((i) => i.key).sort()).toEqual([live, resent].map((id) => pendingJobKey('active', 'acct_alice', id)).sort());
  });

  it("an ended run's place is kept while its usage is not in the ledger (its worker frees it once written), for at most USAGE_AWAIT_MS (review-diff15 F4)", async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const { id } = (await res.json()) as { id: string };
    await drain();
    const finished = clock().toISOString();
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, started_at: finished, finished_at: finished, outputs: [{ key: `${jobOutputsPrefix('acct_alice', id)}0.png`, width: 64, height: 64 }], usage: { encoder_passes: 7, worker_seconds: 2 } }));
    const active = async () => (await h.blobs.list(`${PENDING_JOBS_PREFIX}active/`)).items.map((i) => i.key);
    expect(await active()).toEqual([pendingJobKey('active', 'acct_alice', id)]);
    await sweepQueuedJobs(sweepDeps());
    expect(await active()).toEqual([pendingJobKey('active', 'acct_alice', id)]);
    // The ledger has it (the record says so): the place goes.
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, usage_recorded_at: clock().toISOString() }));
    await sweepQueuedJobs(sweepDeps());
    expect(await active()).toEqual([]);
    // Never written (the last delivery gave up on the ledger, its own clear failed): freed after USAGE_AWAIT_MS.
    await markPending(h.blobs, 'active', 'acct_alice', id);
    await h.jobs.update('acct_alice', id, (cur) => { const { usage_recorded_at: _r, ...rest } = cur; return rest; });
    offsetMs = USAGE_AWAIT_MS - 60_000;
    await sweepQueuedJobs(sweepDeps());
    expect(await active()).toHaveLength(1);
    offsetMs = USAGE_AWAIT_MS + 60_000;
    await sweepQueuedJobs(sweepDeps());
    expect(await active()).toEqual([]);
  });

  it('an expired job keeps none of the images an attempt of it stored; a live job\'s stay', async () => {
    const DAY = 86_400;
    const ids: string[] = [];
    for (const prompt of ['lapsed', 'live']) ids.push(((await (await h.request('/v1/generations', { json: { prompt } })).json()) as { id: string }).id);
    const [lapsed, live] = ids as [string, string];
    offsetMs = (DAY + 3600 + 60) * 1000;
    // Both stored images: `lapsed`'s worker then died; `live`'s is storing them now.
    await h.jobs.update('acct_alice', lapsed, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_expires_at: new Date(Date.now() + 30_000).toISOString() }));
    await h.jobs.update('acct_alice', live, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_expires_at: new Date(clock().getTime() + 60_000).toISOString() }));
    for (const id of ids) for (const key of ['0.png', 'frames/0/0000_64x64.png']) await h.blobs.put(`${jobOutputsPrefix('acct_alice', id)}${key}`, new Uint8Array([1, 2, 3]));
    const outputsOf = async (id: string) => (await h.blobs.list(jobOutputsPrefix('acct_alice', id))).items.map((i) => i.key);

    expect(await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY })).toMatchObject({ expired: 1, errors: 0 });
    expect(await h.jobs.get('acct_alice', lapsed)).toMatchObject({ status: 'failed', error: { code: 'expired' } });
    expect(await outputsOf(lapsed)).toEqual([]);
    expect(await outputsOf(live)).toHaveLength(2);
  });

  it('an expired job\'s images that cannot be removed leave the expiry and the sweep as they are: logged, not an error', async () => {
    const DAY = 86_400;
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    offsetMs = (DAY + 3600 + 60) * 1000;
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, attempts: 1 })); // queued again after an attempt
    await h.blobs.put(`${jobOutputsPrefix('acct_alice', id)}0.png`, new Uint8Array([1, 2, 3]));
    expect(await sweepQueuedJobs({ ...sweepDeps(), blobs: blobsRefusingList(h.blobs, 'outputs/'), queueRetentionSec: DAY })).toMatchObject({ expired: 1, errors: 0 });
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'failed', error: { code: 'expired' } });
    expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/stored images of an expired job were not removed/), job_id: id }));
  });

  it('an unreachable job whose caller asked to cancel it ends canceled, not expired', async () => {
    const DAY = 86_400;
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    offsetMs = (DAY + 3600 + 60) * 1000;
    // Its worker died mid-run after the cancel was asked for, and its message is gone.
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, cancel_requested: true, lease_expires_at: new Date(Date.now() + 30_000).toISOString() }));
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY });
    expect(report).toMatchObject({ expired: 0, errors: 0 });
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'canceled', error: null });
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}active/`)).items).toEqual([]);
  });

  it('a job re-queued by a worker (attempts > 0) is left to the worker: its marker goes, nothing is sent', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const { id } = (await res.json()) as { id: string };
    await drain();
    await markPending(h.blobs, 'msg', 'acct_alice', id);
    // A drained worker puts the job back to queued and sends a fresh copy of its message itself.
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'queued', attempts: 1 }));
    offsetMs = RESEND_AFTER_MS * 3;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ resent: 0, cleared: 1 });
    expect(await drain()).toEqual([]);
  });

  it('a marker whose job was never created is kept for a grace period, then dropped', async () => {
    await h.blobs.put(pendingJobKey('msg', 'acct_alice', 'gen_never_created'), new Uint8Array(0));
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ kept: 1, cleared: 0 });
    offsetMs = ORPHAN_MARKER_AFTER_MS + 60_000;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ kept: 0, cleared: 1 });
    expect(await markers()).toEqual([]);
    expect(await drain()).toEqual([]);
  });

  it('a corrupt job record drops its marker with a warning; a key it did not write is left alone and reported', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const { id } = (await res.json()) as { id: string };
    await markPending(h.blobs, 'msg', 'acct_alice', id);
    await h.blobs.put(`jobs/acct_alice/${id}.json`, Buffer.from('{"not": "a job"'));
    await h.blobs.put(`${PENDING_JOBS_PREFIX}stray/extra/parts`, new Uint8Array(0));
    offsetMs = RESEND_AFTER_MS * 2;
    const report = await sweepQueuedJobs(sweepDeps());
    expect(report).toMatchObject({ scanned: 3, cleared: 2, errors: 0, foreign: 1, resent: 0 }); // its message and active markers
    expect((await h.blobs.list(PENDING_JOBS_PREFIX)).items.map((i) => i.key)).toEqual([`${PENDING_JOBS_PREFIX}stray/extra/parts`]);
    expect(logs.map((l) => l.msg)).toEqual(
      expect.arrayContaining([expect.stringContaining('corrupt job record'), expect.stringContaining('not a pending-job marker')]),
    );
  });

  it('a failed re-send keeps the job queued and its marker; the next sweep sends it', async () => {
    const id = await postDyingRequest();
    offsetMs = RESEND_AFTER_MS + 1000;
    const { queue: down } = queueWithOutage(h.queue);
    // A failed send is an error of the sweep (its Lambda fails, and the alarm counts it).
    expect(await sweepQueuedJobs(sweepDeps(down))).toMatchObject({ resent: 0, kept: 1, errors: 1 });
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'queued' });
    expect((await h.jobs.get('acct_alice', id))!.enqueued_at).toBeUndefined(); // the stamp went back
    expect(logs.some((l) => l.msg.includes('re-send of a long-queued job failed'))).toBe(true);
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ resent: 1 });
    expect(await drain()).toEqual([id]);
  });

  it('a 503 leaves the marker for the sweep to drop (the job failed); the retry re-queues and sends once', async () => {
    const { queue: flaky, outage } = queueWithOutage(h.queue);
    const app = createApp({ ...h.deps, queue: flaky, clock });
    const post = () =>
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'flaky' },
        body: JSON.stringify({ prompt: 'apple' }),
      });
    expect((await post()).status).toBe(503);
    offsetMs = ORPHAN_MARKER_AFTER_MS * 2;
    // The job is failed (enqueue_failed): the sweep drops its marker, and sends nothing.
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ cleared: 1, resent: 0 });
    outage.down = false;
    const retry = await post();
    expect(retry.status).toBe(200);
    const { id } = (await retry.json()) as { id: string };
    expect(await drain()).toEqual([id]);
    expect(await markers()).toEqual([]); // sent: nothing left to sweep
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ resent: 0 });
    expect(await drain()).toEqual([]);
  });

  it('startQueuedJobSweeps sweeps at once and then on its period; stop() waits and is idempotent', async () => {
    const first = await postDyingRequest();
    offsetMs = RESEND_AFTER_MS + 1000;
    const once = startQueuedJobSweeps(sweepDeps(), 3_600_000);
    await once.stop();
    expect(await drain()).toEqual([first]); // the first sweep ran before stop() returned
    await once.stop();

    await h.jobs.update('acct_alice', first, (cur) => ({ ...cur, status: 'running', attempts: 1 }));
    const second = await postDyingRequest();
    const periodic = startQueuedJobSweeps(sweepDeps(), 20);
    await new Promise((r) => setTimeout(r, 100));
    expect(await drain()).toEqual([]); // fresh: the early sweeps send nothing
    offsetMs += RESEND_AFTER_MS + 1000; // a later sweep finds it long-queued
    let sent: string[] = [];
    for (let i = 0; i < 200 && sent.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
      sent = await drain();
    }
    await periodic.stop();
    await periodic.stop();
    expect(sent).toEqual([second]);
  });
});

describe('a DELETE that dies between its record and its images (crash review, 2026-12-07)', () => {
  it('leaves an outputs marker first, so the sweep removes the images a killed DELETE left behind', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    const keys = ['0.png', 'frames/0/0000_64x64.png'].map((k) => `${jobOutputsPrefix('acct_alice', id)}${k}`);
    for (const key of keys) await h.blobs.put(key, new Uint8Array([1, 2, 3]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage_recorded_at: new Date().toISOString(), outputs: [{ key: keys[0]!, width: 64, height: 64 }] }));
    // The process dies once the record says deleted: every removal of its images fails from then on.
    const dying = new Proxy(h.blobs, {
      get(target, prop) {
        if (prop === 'list' || prop === 'listKeys' || prop === 'delete' || prop === 'deleteMany') {
          return (at: string, ...rest: unknown[]) => (at.startsWith('outputs/') ? Promise.reject(new Error('killed')) : (target[prop] as (...a: unknown[]) => unknown)(at, ...rest));
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const app = createApp({ ...h.deps, blobs: dying });
    const res = await app.request(`/v1/generations/${id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${h.alice}` } });
    expect(res.status).toBeGreaterThanOrEqual(500);
    expect((await h.jobs.get('acct_alice', id))!.deleted_at).toEqual(expect.any(String));
    expect((await h.blobs.listKeys(jobOutputsPrefix('acct_alice', id))).keys).toHaveLength(2); // left behind
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([pendingJobKey('outputs', 'acct_alice', id)]);
    // The next sweep finishes the removal and drops the marker (and the job's active marker, ended).
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ cleared: 2, errors: 0 });
    expect((await h.blobs.listKeys(jobOutputsPrefix('acct_alice', id))).keys).toEqual([]);
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([]);
  });

  it('a sweep between the marker and the record leaves the fresh marker, so a DELETE that dies after it is still finished', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    const image = `${jobOutputsPrefix('acct_alice', id)}0.png`;
    await h.blobs.put(image, new Uint8Array([1, 2, 3]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), outputs: [{ key: image, width: 64, height: 64 }] }));
    // The DELETE's first step, then a sweep, then its record step; then it dies before removing anything.
    await markPending(h.blobs, 'outputs', 'acct_alice', id);
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ errors: 0 });
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([pendingJobKey('outputs', 'acct_alice', id)]);
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, deleted_at: new Date().toISOString(), outputs: [] }));
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ errors: 0 });
    expect((await h.blobs.listKeys(jobOutputsPrefix('acct_alice', id))).keys).toEqual([]);
    // A fresh marker of an ended job nobody deletes is settled once it is older than a minute.
    const { id: other } = (await (await h.request('/v1/generations', { json: { prompt: 'pear' } })).json()) as { id: string };
    await h.jobs.update('acct_alice', other, (cur) => ({ ...cur, status: 'canceled', attempts: 1, finished_at: new Date().toISOString() }));
    await markPending(h.blobs, 'outputs', 'acct_alice', other);
    await sweepQueuedJobs(sweepDeps());
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([pendingJobKey('outputs', 'acct_alice', other)]);
    offsetMs = 61_000;
    await sweepQueuedJobs(sweepDeps());
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([]);
  });

  it('a DELETE refused (the job still runs) or of a job never started leaves no marker', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(409);
    await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' });
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
    expect((await h.blobs.listKeys(`${PENDING_JOBS_PREFIX}outputs/`)).keys).toEqual([]);
  });
});
