// The opt-in generation.started webhook event (ADR 0036) at the worker: sent when a worker first claims
// a job that asked for it, in the background (the run never waits for the receiver), before the end
// event, with its own webhook-id and the same signature; not sent again by a later attempt of the run;
// a failed first attempt is left to the queued-job sweep, which sends nothing once the job has ended.
// Real local adapters and a real receiver on 127.0.0.1; stand-in synthesizers (the subject is delivery).
import { Webhook } from 'standardwebhooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { createWorker, silentLogger, type QueueWorker } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { newJobId } from '../../shared/ids.ts';
import { markPending } from '../../shared/pending.ts';
import { GenerationSpec, type GenerationRequestInput } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord, type JobWebhookStarted } from '../../shared/schemas/job.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { GenerationEvent } from '../../shared/schemas/view.ts';
import { httpWebhookSender, newWebhookSecret, webhookNotifier, type WebhookSender } from '../../shared/webhooks.ts';
import { webhookReceiver } from '../helpers/webhook-receiver.ts';
import { makeEnv, OWNER, waitFor, waitForStatus, type Env } from './helpers.ts';
import { outcome, sleep, standInImage, stepping } from './stand-ins.ts';

const hook = webhookReceiver();
beforeEach(() => hook.reset());

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

const realSend = httpWebhookSender({ allowPrivate: true });

/** A worker on the local adapters whose webhooks go through a real notifier (`send`: to the receiver unless told otherwise). */
function start(env: Env, synthesizer: Synthesizer, send: WebhookSender = realSend): QueueWorker {
  const webhooks = webhookNotifier({ jobs: env.jobs, blobs: env.blobs, signedUrlTtlSec: 600, clock: () => new Date(), send });
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer, webhooks, log: silentLogger,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 },
  });
  worker.start();
  workers.push(worker);
  return worker;
}

/** A queued job with a webhook to the receiver, as the API makes one (record, markers, message); its secret. */
async function submit(env: Env, input: Partial<GenerationRequestInput> = {}, beforeSend?: (job: JobRecord) => Promise<void>): Promise<{ job: JobRecord; secret: string }> {
  const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny', ...input });
  const secret = newWebhookSecret();
  const job = await env.jobs.create(newJobRecord({ id: newJobId(), owner: OWNER, spec, webhook: { url: hook.url, secret } }));
  await markPending(env.blobs, 'hook', OWNER, job.id);
  await markPending(env.blobs, 'active', OWNER, job.id);
  await beforeSend?.(job);
  await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }));
  return { job, secret };
}

const BOTH = { webhook_events: ['started', 'ended'] } as Partial<GenerationRequestInput>;
const images = [standInImage(0)];
const typesReceived = () => hook.received.map((r) => (JSON.parse(r.body) as { type: string }).type);
const idsReceived = () => hook.received.map((r) => r.headers['webhook-id']);

/** A synthesizer that steps until `release()` (or an abort), then succeeds. */
function gated() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  let started = 0;
  const synthesizer: Synthesizer = {
    async run(_job, { signal, onProgress } = {}) {
      started++;
      for (let s = 1; ; s++) {
        if (signal?.aborted) return outcome(s - 1, true);
        onProgress?.({ step: Math.min(s, 5), total: 6, image: 0 });
        const go = await Promise.race([opened.then(() => true), sleep(20).then(() => false)]);
        if (go) return outcome(6, false, images);
      }
    },
  };
  return { synthesizer, release: () => open(), runs: () => started };
}

describe('generation.started at the worker', () => {
  it('with ["started","ended"]: exactly two events, started first then succeeded, distinct ids, both verifying against the secret', async () => {
    const env = await makeEnv();
    const { job, secret } = await submit(env, BOTH);
    start(env, stepping(6, 5, undefined, images));
    await waitForStatus(env, job.id, ['succeeded']);
    await waitFor('two events', () => hook.received.length >= 2);
    await sleep(300); // and no third
    expect(typesReceived()).toEqual(['generation.started', 'generation.succeeded']);
    expect(idsReceived()).toEqual([`evt_${job.id}_started`, `evt_${job.id}_succeeded`]);
    const verifier = new Webhook(secret);
    const [started, ended] = hook.received.map((r) => GenerationEvent.parse(verifier.verify(r.body, r.headers)));
    const done = (await env.jobs.get(OWNER, job.id))!;
    // The generation as it stood when the attempt went: running, or (a run this short can end before its
    // first started attempt is sent) already succeeded; the end event still comes after it.
    expect(started).toMatchObject({ type: 'generation.started', timestamp: done.started_at, data: { id: job.id, status: expect.stringMatching(/^(running|succeeded)$/), started_at: done.started_at, request: { webhook_events: ['started', 'ended'] } } });
    expect(ended).toMatchObject({ type: 'generation.succeeded', timestamp: done.finished_at, data: { id: job.id, status: 'succeeded' } });
    // Each event's own delivery state: the end event's as before, the started event's beside it.
    expect(done.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String), started: { attempts: 1, delivered_at: expect.any(String), last_error: null, claimed_until: null } });
  });

  it('without webhook_events: exactly one event, as before', async () => {
    const env = await makeEnv();
    const { job } = await submit(env);
    start(env, stepping(6, 5, undefined, images));
    await waitForStatus(env, job.id, ['succeeded']);
    await waitFor('the end event', () => hook.received.length >= 1);
    await sleep(300);
    expect(idsReceived()).toEqual([`evt_${job.id}_succeeded`]);
    expect((await env.jobs.get(OWNER, job.id))!.webhook!.started).toBeUndefined();
  });

  it('a receiver slow to fail the started event: the run ends on time, the end event follows it, and the sweep sends no started event after the end', async () => {
    const env = await makeEnv();
    const { job } = await submit(env, BOTH);
    let startedAnsweredAt = 0;
    // The started attempt takes 1.5 s and fails; the others go to the receiver.
    const send: WebhookSender = async (request) => {
      if (request.headers['webhook-id']!.endsWith('_started')) {
        await sleep(3000);
        startedAnsweredAt = Date.now();
        return 503;
      }
      return realSend(request);
    };
    start(env, stepping(6, 5, undefined, images), send);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed', 'canceled']);
    expect(done.status).toBe('succeeded');
    expect(startedAnsweredAt).toBe(0); // the run did not wait for the receiver, which had not answered yet
    await waitFor('the end event', () => hook.received.length >= 1, 15_000);
    expect(startedAnsweredAt).toBeGreaterThan(0); // it went after the started attempt
    expect(typesReceived()).toEqual(['generation.succeeded']);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec.webhook!.started).toMatchObject({ attempts: 1, delivered_at: null, last_error: 'HTTP 503', next_attempt_at: expect.any(String) });
    // The sweep, once the retry is due: the job has ended, so no started event goes out after the end.
    const sweep = () => sweepQueuedJobs({ blobs: env.blobs, jobs: env.jobs, queue: env.queue, clock: () => new Date(Date.now() + 3_600_000), webhooks: { send: realSend, signedUrlTtlSec: 600 } });
    await sweep();
    await sweep();
    expect(typesReceived()).toEqual(['generation.succeeded']);
  });

  it('a failed started event of a job still running is retried by the sweep when due, before the end event', async () => {
    const env = await makeEnv();
    const { job, secret } = await submit(env, BOTH);
    hook.answer = 503;
    const gate = gated();
    start(env, gate.synthesizer);
    await waitFor('the first started attempt', () => hook.received.length >= 1);
    await waitFor('its failure recorded', async () => (await env.jobs.get(OWNER, job.id))!.webhook!.started?.last_error === 'HTTP 503');
    hook.answer = 200;
    let offsetMs = 0;
    const sweep = () => sweepQueuedJobs({ blobs: env.blobs, jobs: env.jobs, queue: env.queue, clock: () => new Date(Date.now() + offsetMs), webhooks: { send: realSend, signedUrlTtlSec: 600 } });
    await sweep(); // not due
    expect(hook.received).toHaveLength(1);
    offsetMs = 31_000;
    expect(await sweep()).toMatchObject({ webhooksDelivered: 1 });
    expect(idsReceived()).toEqual([`evt_${job.id}_started`, `evt_${job.id}_started`]);
    expect(new Webhook(secret).verify(hook.received[1]!.body, hook.received[1]!.headers)).toBeTruthy();
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('running');
    gate.release();
    await waitForStatus(env, job.id, ['succeeded']);
    await waitFor('the end event', () => hook.received.length >= 3);
    expect(typesReceived()).toEqual(['generation.started', 'generation.started', 'generation.succeeded']);
  });

  it('a later attempt of the run (the job put back when its worker stopped, then taken by another) sends no second started event', async () => {
    const env = await makeEnv();
    const { job } = await submit(env, BOTH);
    const gate = gated();
    const first = start(env, gate.synthesizer);
    await waitFor('the started event', () => hook.received.length >= 1);
    await waitFor('the first run under way', () => gate.runs() >= 1);
    await first.stop(); // the run is put back, its message with it
    const back = (await env.jobs.get(OWNER, job.id))!;
    expect([back.status, back.attempts]).toEqual(['queued', 1]);
    start(env, stepping(6, 5, undefined, images));
    const done = await waitForStatus(env, job.id, ['succeeded'], 30_000);
    expect(done.attempts).toBe(2);
    await waitFor('the end event', () => hook.received.length >= 2);
    await sleep(300);
    expect(typesReceived()).toEqual(['generation.started', 'generation.succeeded']);
    expect(done.webhook!.started).toMatchObject({ attempts: 1, delivered_at: expect.any(String) });
  });

  it('a takeover after a worker crashed (its lease lapsed): no second started event once one was sent; the first one if none was tried', async () => {
    const env = await makeEnv();
    const lapsed = new Date(Date.now() - 120_000).toISOString();
    /** The record a worker that died mid-run leaves: running, its lease lapsed; `started` as it left it. */
    const crashed = async (started: JobWebhookStarted | undefined) => {
      // Written before its message is sent, so that a worker polling already finds it so.
      const { job } = await submit(env, BOTH, async (made) => {
        await env.jobs.update(OWNER, made.id, (cur) => ({
          ...cur, status: 'running', attempts: 1, started_at: lapsed, lease_message_id: 'a-message-gone-with-its-worker', lease_expires_at: lapsed, lease_token: 'dead',
          webhook: { ...cur.webhook!, ...(started ? { started } : {}) },
        }));
      });
      return job;
    };
    const sent = await crashed({ attempts: 1, delivered_at: lapsed, given_up_at: null, next_attempt_at: null, claimed_until: null, last_error: null });
    start(env, stepping(6, 5, undefined, images));
    const done = await waitForStatus(env, sent.id, ['succeeded'], 30_000);
    expect(done.attempts).toBe(2);
    await waitFor('the end event', () => hook.received.length >= 1);
    await sleep(300);
    expect(idsReceived()).toEqual([`evt_${sent.id}_succeeded`]);
    // A worker that died before its started attempt: the run that takes over makes it.
    hook.reset();
    const untried = await crashed(undefined);
    await waitForStatus(env, untried.id, ['succeeded'], 30_000);
    await waitFor('both events', () => hook.received.length >= 2);
    await sleep(300);
    expect(idsReceived()).toEqual([`evt_${untried.id}_started`, `evt_${untried.id}_succeeded`]);
  });
});
