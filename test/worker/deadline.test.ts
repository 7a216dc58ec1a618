// The caller's deadline (cancel_after, ADR 0034) at the worker: a job received past it is not run, and
// a run it passes stops within a step, like a cancel; either ends `canceled` with error
// deadline_exceeded, nothing billed, and one generation.canceled event. The worker reads the deadline
// on its injected clock, which these tests move.
import { afterEach, describe, expect, it } from 'vitest';
import { newJobId } from '../../shared/ids.ts';
import { RetryableError } from '../../shared/errors.ts';
import { markPending } from '../../shared/pending.ts';
import { GenerationSpec, type GenerationRequestInput } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { GenerationEvent } from '../../shared/schemas/view.ts';
import { newWebhookSecret, webhookNotifier, type WebhookRequest } from '../../shared/webhooks.ts';
import { createWorker, silentLogger, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { listKeys, makeEnv, OWNER, waitFor, waitForStatus, type Env } from './helpers.ts';
import { outcome, sleep, standInImage, stepping } from './stand-ins.ts';

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

/** The worker's clock: the machine's, moved on by `offsetMs`. */
function movableClock() {
  const c = { offsetMs: 0, now: () => Date.now() + c.offsetMs };
  return c;
}

/** A worker on the local adapters, its clock `clock`, its webhooks sent to `sent` (answered 200). */
function start(env: Env, synthesizer: Synthesizer, clock: { now(): number }) {
  const events: WorkerEvent[] = [];
  const sent: WebhookRequest[] = [];
  const webhooks = webhookNotifier({
    jobs: env.jobs, blobs: env.blobs, signedUrlTtlSec: 600, clock: () => new Date(clock.now()),
    send: async (request) => {
      sent.push(request);
      return 200;
    },
  });
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer, webhooks, log: silentLogger,
    // A wall clock only (no monotonic one): the test moves it.
    clock: { now: clock.now },
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 },
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { worker, events, sent };
}

/** A queued job made at `createdAt` (as the API makes one: its record, its place, then its message), with a webhook. */
async function submitAt(env: Env, createdAt: Date, input: Partial<GenerationRequestInput>): Promise<JobRecord> {
  const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny', ...input });
  const job = await env.jobs.create(newJobRecord({ id: newJobId(), owner: OWNER, spec, now: createdAt, webhook: { url: 'https://example.com/hooks', secret: newWebhookSecret() } }));
  await markPending(env.blobs, 'active', OWNER, job.id);
  await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }));
  return job;
}

const finishedOf = (events: WorkerEvent[], jobId: string) =>
  waitFor(`job_finished for ${jobId}`, () => events.find((e): e is Extract<WorkerEvent, { type: 'job_finished' }> => e.type === 'job_finished' && e.jobId === jobId));

/** The events sent for `jobId`, parsed as the documented body. */
const eventsFor = (sent: WebhookRequest[], jobId: string) => sent.map((r) => GenerationEvent.parse(JSON.parse(r.body))).filter((e) => e.data.id === jobId);

describe('cancel_after at the worker', () => {
  it('a job received past its deadline is not run: canceled with deadline_exceeded, no outputs, usage 0, its place freed, one generation.canceled event', async () => {
    const env = await makeEnv();
    let runs = 0;
    const clock = movableClock();
    const job = await submitAt(env, new Date(clock.now() - 120_000), { cancel_after: 60 });
    const w = start(env, stepping(6, 1, () => runs++), clock);
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
    expect(done.status).toBe('canceled');
    expect(done.error).toEqual({ code: 'deadline_exceeded', message: 'canceled: the generation had not ended 60 s after it was created (cancel_after)' });
    expect(done.cancel_requested).toBe(true);
    expect([done.attempts, done.started_at, done.outputs, done.usage]).toEqual([0, null, [], { encoder_passes: 0, worker_seconds: 0 }]);
    expect(done.finished_at).not.toBeNull();
    expect(runs).toBe(0);
    expect((await finishedOf(w.events, job.id)).outcome).toBe('canceled');
    expect(w.events).toContainEqual(expect.objectContaining({ type: 'acked', reason: 'canceled_before_start' }));
    await waitFor('the event', () => eventsFor(w.sent, job.id).length > 0);
    await waitFor('its place freed', async () => (await listKeys(env.blobs, 'pending/active/')).length === 0);
    await sleep(100);
    const events = eventsFor(w.sent, job.id);
    expect(events.map((e) => e.type)).toEqual(['generation.canceled']);
    expect(events[0]!.data).toMatchObject({ status: 'canceled', error: { code: 'deadline_exceeded' }, outputs: [], usage: { encoder_passes: 0, worker_seconds: 0 }, request: { cancel_after: 60 } });
    expect(await env.queue.depth()).toBe(0);
  });

  it('a run whose deadline passes stops within a step and ends canceled with deadline_exceeded, nothing billed', async () => {
    const env = await makeEnv();
    const clock = movableClock();
    const job = await submitAt(env, new Date(clock.now()), { cancel_after: 60, steps: 500 });
    const w = start(env, stepping(500, 5), clock);
    await waitFor('a few steps', () => w.events.some((e) => e.type === 'progress' && e.jobId === job.id && e.step >= 3));
    clock.offsetMs = 61_000; // the caller's 60 s are up
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
    expect(done.status).toBe('canceled');
    expect(done.error).toEqual({ code: 'deadline_exceeded', message: 'canceled: the generation had not ended 60 s after it was created (cancel_after)' });
    expect([done.outputs, done.usage, done.attempts]).toEqual([[], { encoder_passes: 0, worker_seconds: 0 }, 1]);
    const abort = w.events.find((e): e is Extract<WorkerEvent, { type: 'abort' }> => e.type === 'abort')!;
    expect(abort).toMatchObject({ reason: 'cancel', jobId: job.id });
    const fin = await finishedOf(w.events, job.id);
    expect(fin.outcome).toBe('canceled');
    // Aborted after step k was reported: only the step under way may still finish.
    expect(fin.stepsDone! - abort.step).toBeLessThanOrEqual(1);
    expect(fin.stepsDone).toBeLessThan(500);
    await waitFor('the event', () => eventsFor(w.sent, job.id).length > 0);
    expect(eventsFor(w.sent, job.id).map((e) => e.type)).toEqual(['generation.canceled']);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
  });

  it('a deadline that passes after the last step but before the images are stored still ends it canceled, nothing stored or billed (review-diff15 F3)', async () => {
    const env = await makeEnv();
    const clock = movableClock();
    const job = await submitAt(env, new Date(clock.now()), { cancel_after: 60 });
    let finish!: () => void;
    const gate = new Promise<void>((r) => (finish = r));
    // A run past its last step (it no longer looks at the abort): the deadline passes, then it returns its image.
    const w = start(env, { run: async () => (await gate, outcome(6, false, [standInImage(0)])) }, clock);
    await waitFor('started', () => w.events.some((e) => e.type === 'job_started'));
    clock.offsetMs = 61_000;
    await sleep(100);
    finish();
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
    expect([done.status, done.error?.code, done.outputs, done.usage]).toEqual(['canceled', 'deadline_exceeded', [], { encoder_passes: 0, worker_seconds: 0 }]);
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);
  });

  it('an engine that reports no step is stopped by the timer at the deadline', async () => {
    const env = await makeEnv();
    const clock = movableClock();
    // Created 59.7 s ago with 60 s: the deadline passes 0.3 s into a run that reports nothing for 30 s.
    const job = await submitAt(env, new Date(clock.now() - 59_700), { cancel_after: 60 });
    const silent: Synthesizer = {
      async run(_job, { signal } = {}) {
        for (let i = 0; i < 3000 && !signal?.aborted; i++) await sleep(10);
        return outcome(0, signal?.aborted === true);
      },
    };
    const w = start(env, silent, clock);
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed'], 10_000);
    expect([done.status, done.error?.code]).toEqual(['canceled', 'deadline_exceeded']);
    expect(w.events).toContainEqual(expect.objectContaining({ type: 'abort', reason: 'cancel', jobId: job.id }));
  });

  it('a retryable failure after the deadline ends the job canceled, not queued again', async () => {
    const env = await makeEnv();
    const clock = movableClock();
    const job = await submitAt(env, new Date(clock.now()), { cancel_after: 60 });
    const failing: Synthesizer = {
      async run() {
        clock.offsetMs = 61_000;
        throw new RetryableError('injected: S3 503 SlowDown');
      },
    };
    const w = start(env, failing, clock);
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
    expect([done.status, done.error?.code, done.attempts]).toEqual(['canceled', 'deadline_exceeded', 1]);
    expect((await finishedOf(w.events, job.id)).outcome).toBe('canceled');
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
  });

  it('before its deadline a job runs as any other; a job without cancel_after runs however long it waited', async () => {
    const env = await makeEnv();
    const clock = movableClock();
    const images = [standInImage(0)];
    const inTime = await submitAt(env, new Date(clock.now() - 30_000), { cancel_after: 60 });
    const noDeadline = await submitAt(env, new Date(clock.now() - 3 * 86_400_000), {});
    const w = start(env, stepping(6, 1, undefined, images), clock);
    for (const job of [inTime, noDeadline]) {
      const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
      expect([done.status, done.error, done.cancel_requested, done.outputs.length]).toEqual(['succeeded', null, false, 1]);
      expect(done.usage.encoder_passes).toBe(7);
    }
    expect('cancel_after' in noDeadline.spec).toBe(false);
    await waitFor('both events', () => eventsFor(w.sent, inTime.id).length + eventsFor(w.sent, noDeadline.id).length === 2);
    expect([...eventsFor(w.sent, inTime.id), ...eventsFor(w.sent, noDeadline.id)].map((e) => e.type)).toEqual(['generation.succeeded', 'generation.succeeded']);
  });
});
