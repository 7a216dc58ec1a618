// What the worker's log lines say about a job, for an operator joining them: each names the job as
// `job_id` and `owner` and the delivery as `message_id` (the keys the API, webhook and sweep lines use),
// `job started` says how long the job waited, `job finished` what it ran and its error code, a bug is an
// error line, and no field can overwrite a line's time, level or message. The real local adapters; a
// scripted synthesizer stands in for the engine.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { RetryableError } from '../../shared/errors.ts';
import type { JobQueue } from '../../shared/ports.ts';
import { createWorker, jsonLogger, type Clock, type Logger, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { OWNER, makeEnv, submit, waitFor, type Env } from './helpers.ts';
import { finishedOf, outcome, patched, standInImage } from './stand-ins.ts';

interface Logged { level: string; msg: string; fields: Record<string, unknown> }

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

function start(env: Pick<Env, 'jobs' | 'blobs'> & { queue: JobQueue }, synthesizer: Synthesizer, clock?: Clock) {
  const events: WorkerEvent[] = [];
  const logs: Logged[] = [];
  const at = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => void logs.push({ level, msg, fields });
  const log: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer, log,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 },
    ...(clock ? { clock } : {}),
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { events, logs };
}

const oneImage: Synthesizer = { run: async () => outcome(6, false, [standInImage(0)]) };

describe('the lines about one delivery name its job', () => {
  it('a corrupt job document: `message dead-lettered`, the paging line, names the job, its owner and the message', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    await env.blobs.put(BlobJobStore.keyFor(OWNER, job.id), Buffer.from('{"id":'));
    const w = start(env, oneImage);
    await waitFor('the dead letter', () => w.events.some((e) => e.type === 'dead_lettered'));
    const received = w.events.find((e): e is Extract<WorkerEvent, { type: 'received' }> => e.type === 'received')!;
    const dead = w.logs.find((l) => l.msg === 'message dead-lettered');
    expect(dead).toMatchObject({ level: 'error', fields: { job_id: job.id, owner: OWNER, message_id: received.messageId, reason: 'corrupt_record' } });
  });

  it('an ack that fails names the job and the message; `job started` names the message its lease and ack lines name', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const queue = patched(env.queue, { ack: () => Promise.reject(new RetryableError('SQS is unavailable: socket hang up')) });
    const w = start({ ...env, queue }, oneImage);
    await waitFor('the job to finish', () => finishedOf(w.events));
    const started = w.logs.find((l) => l.msg === 'job started')!;
    expect(started.fields).toMatchObject({ job_id: job.id, owner: OWNER, message_id: expect.any(String) });
    const ackFailed = w.logs.find((l) => l.msg.startsWith('ack failed'));
    expect(ackFailed?.fields).toMatchObject({ job_id: job.id, owner: OWNER, message_id: started.fields.message_id, reason: 'succeeded' });
    // No line about the job keeps the old camelCase keys.
    for (const l of w.logs) expect(Object.keys(l.fields), l.msg).not.toEqual(expect.arrayContaining([expect.stringMatching(/^(jobId|messageId)$/)]));
  });
});

describe('job started and job finished', () => {
  it("`job started` carries the job's wait to start (queuedSec, a number) counted from its send", async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    // The worker's clock two minutes after the job was sent: it has waited at least that long.
    const clock: Clock = { now: () => Date.now() + 120_000, monotonic: () => performance.now() };
    const w = start(env, oneImage, clock);
    await waitFor('the job to finish', () => finishedOf(w.events));
    const started = w.logs.find((l) => l.msg === 'job started')!;
    expect(started.fields).toMatchObject({ job_id: job.id, queuedSec: expect.any(Number) });
    expect(started.fields.queuedSec).toBeGreaterThanOrEqual(120);
  });

  it("`job started` and `job finished` carry the POST's request id stored on the job (the trace from the API's request line)", async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 }, undefined, 'req_0123456789abcdefghijklmnop');
    const w = start(env, oneImage);
    await waitFor('the job to finish', () => finishedOf(w.events));
    expect(w.logs.find((l) => l.msg === 'job started')!.fields).toMatchObject({ job_id: job.id, request_id: 'req_0123456789abcdefghijklmnop' });
    expect(w.logs.find((l) => l.msg === 'job finished')!.fields).toMatchObject({ job_id: job.id, request_id: 'req_0123456789abcdefghijklmnop' });
  });

  it('`job finished` names the model, size and steps the job ran', async () => {
    const env = await makeEnv();
    const done = await submit(env, { steps: 6, width: 96, height: 64 });
    const w = start(env, oneImage);
    await waitFor('the job to finish', () => finishedOf(w.events));
    expect(w.logs.find((l) => l.msg === 'job finished')!.fields).toMatchObject({ job_id: done.id, outcome: 'succeeded', model: 'tiny', width: 96, height: 64, steps: 6 });
  });
});

describe('a bug is an error line', () => {
  it('a synthesizer that throws a plain Error (internal_error) logs `job attempt failed` at error, with the job error code on `job finished`', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const w = start(env, { run: async () => Promise.reject(new Error('undefined is not a function')) });
    await waitFor('the job to finish', () => finishedOf(w.events));
    expect(w.logs.find((l) => l.msg === 'job attempt failed')).toMatchObject({ level: 'error', fields: { job_id: job.id, class: 'permanent' } });
    expect(w.logs.find((l) => l.msg === 'job finished')!.fields).toMatchObject({ outcome: 'failed', error_code: 'internal_error', error: { code: 'internal_error' } });
  });

  it('a passing network fault (retryable, though also internal_error to the caller) stays a warning: it does not page', async () => {
    const env = await makeEnv();
    await submit(env, { steps: 6 });
    const w = start(env, { run: async () => Promise.reject(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })) });
    await waitFor('the job to be requeued', () => finishedOf(w.events));
    const attempts = w.logs.filter((l) => l.msg === 'job attempt failed');
    expect(attempts.length).toBeGreaterThanOrEqual(1);
    for (const a of attempts) expect(a).toMatchObject({ level: 'warn', fields: { class: 'retryable' } });
  });
});

describe('jsonLogger', () => {
  it("never lets a field overwrite the line's time, level or msg (the error alarm reads level)", () => {
    const out: string[] = [];
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
    try {
      jsonLogger('info', { component: 'worker' }).error('worker unhealthy', { level: 'info', msg: 'overwritten', time: 'then', reason: 'stuck_run' });
    } finally {
      stderr.mockRestore();
    }
    expect(out).toHaveLength(1);
    const line = JSON.parse(out[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ level: 'error', msg: 'worker unhealthy', component: 'worker', reason: 'stuck_run' });
    expect(Date.parse(line.time as string)).not.toBeNaN();
    // time, level and msg lead the line, as Logs Insights shows it.
    expect(Object.keys(line).slice(0, 3)).toEqual(['time', 'level', 'msg']);
  });
});
