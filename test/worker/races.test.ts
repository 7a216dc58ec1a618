// Races between deliveries of one job (the review in ADR 0023's follow-up): a superseded attempt
// settles nothing, a duplicate message ends nothing, a live holder is never taken over, and a run
// whose final write answered an error still reaches the usage ledger. Stand-ins: synthesizers that
// return on cue (the races need the engine's timing controlled), and, for F1, a queue with SQS's
// receipt rules, which neither the local queue (stricter: it refuses old receipts) nor local-aws-sqs
// reproduces on demand.
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { createWorker, type QueueWorker, type WorkerConfig, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { SynthesisOutcome, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { PreconditionFailedError, RetryableError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, JobStore, ReceiveOptions, ReceivedMessage } from '../../shared/ports.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { readUsage } from '../../shared/usage.ts';
import { harness } from '../functions/helpers.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor } from './helpers.ts';

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const outcome = (stepsDone: number, aborted: boolean, images: SynthesisOutcome['images'] = []): SynthesisOutcome => ({
  images, aborted, stepsDone, totalSteps: stepsDone, encoderPasses: 7, timingsMs: { total: 0, sessionRun: 0, optimize: 0 },
});

/** Steps of `ms` each, reporting progress and honouring the abort. */
const stepping = (steps: number, ms: number, onRun?: () => void): Synthesizer => ({
  async run(_job, { signal, onProgress } = {}) {
    onRun?.();
    for (let s = 1; s <= steps; s++) {
      if (signal?.aborted) return outcome(s - 1, true);
      onProgress?.({ step: s, total: steps, image: 0 });
      await sleep(ms);
    }
    return outcome(steps, false);
  },
});

function start(deps: { queue: JobQueue; jobs: JobStore; blobs: BlobStore }, synthesizer: Synthesizer, config: Partial<WorkerConfig> = {}) {
  const events: WorkerEvent[] = [];
  const worker = createWorker({
    queue: deps.queue, jobs: deps.jobs, blobs: deps.blobs, synthesizer,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0, ...config },
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { worker, events };
}

const finishedOf = (events: WorkerEvent[]) => events.find((e): e is Extract<WorkerEvent, { type: 'job_finished' }> => e.type === 'job_finished');

/**
 * SQS's receipt rules (AWS docs): every receive makes a new receipt; ChangeMessageVisibility with an
 * old one fails; DeleteMessage with an older receipt still deletes the message, even while another
 * reader holds it.
 */
class SqsReceiptRulesQueue implements JobQueue {
  readonly deadLetter = undefined;
  readonly msgs = new Map<string, { id: string; body: string; visibleAt: number; receiveCount: number; token: string; sentAt: Date }>();
  async send(body: string) {
    const id = randomUUID();
    this.msgs.set(id, { id, body, visibleAt: 0, receiveCount: 0, token: '', sentAt: new Date() });
    return { messageId: id };
  }
  async receive(options: ReceiveOptions = {}): Promise<ReceivedMessage[]> {
    const deadline = Date.now() + (options.waitSec ?? 0) * 1000;
    for (;;) {
      const out: ReceivedMessage[] = [];
      for (const m of this.msgs.values()) {
        if (m.visibleAt > Date.now() || out.length >= (options.max ?? 1)) continue;
        m.receiveCount++;
        m.token = randomUUID();
        m.visibleAt = Date.now() + (options.visibilitySec ?? 30) * 1000;
        out.push({ messageId: m.id, body: m.body, receipt: `${m.id}|${m.token}`, receiveCount: m.receiveCount, sentAt: m.sentAt });
      }
      if (out.length > 0 || Date.now() >= deadline) return out;
      await sleep(20);
    }
  }
  async extendVisibility(receipt: string, sec: number) {
    const [id, token] = receipt.split('|');
    const m = this.msgs.get(id!);
    if (!m || m.token !== token || m.visibleAt <= Date.now()) throw new PreconditionFailedError('ReceiptHandleIsInvalid');
    m.visibleAt = Date.now() + sec * 1000;
  }
  async ack(receipt: string) {
    this.msgs.delete(receipt.split('|')[0]!);
  }
  async release(receipt: string) {
    await this.extendVisibility(receipt, 0);
  }
}

/**
 * Worker A takes a job but cannot extend its lease (an SQS brown-out seen from its host); worker B
 * (running `bRun`) gets the same message once the lease lapses and takes the job over. A's engine
 * returns `images` when `finishA()` is called.
 */
async function supersededRun(bRun: Synthesizer, images: SynthesisOutcome['images'] = []) {
  const env = await makeEnv();
  const sqs = new SqsReceiptRulesQueue();
  const job = await submit({ jobs: env.jobs, queue: sqs }, { steps: 6 });
  const blind = new Proxy(sqs, {
    get: (t, p, r) => (p === 'extendVisibility' ? async () => { throw new RetryableError('injected: ChangeMessageVisibility timed out'); } : Reflect.get(t, p, r)),
  }) as JobQueue;
  let finishA!: () => void;
  const gateA = new Promise<void>((r) => (finishA = r));
  const a = start({ queue: blind, jobs: env.jobs, blobs: env.blobs }, { run: async () => (await gateA, outcome(6, false, images)) }, { visibilityTimeoutSec: 2 });
  await waitFor('A started', () => a.events.some((e) => e.type === 'job_started'));
  const b = start({ queue: sqs, jobs: env.jobs, blobs: env.blobs }, bRun, { visibilityTimeoutSec: 2 });
  await waitFor('B took the job over', () => b.events.some((e) => e.type === 'job_started'), 15_000);
  return { env, sqs, job, a, b, finishA };
}

describe('deliveries of one job racing', () => {
  it('a superseded attempt (its lease lapsed, the same message went to another worker) settles nothing: the new holder finishes the job', async () => {
    const { env, sqs, job, a, b, finishA } = await supersededRun(stepping(60, 50));
    finishA();
    await waitFor('A done', () => finishedOf(a.events), 15_000);
    expect(finishedOf(a.events)).toMatchObject({ outcome: 'lease_lost' });
    expect(a.events.filter((e) => e.type === 'acked' || e.type === 'released')).toEqual([]); // its old receipt would delete B's message
    await waitFor('B done', () => finishedOf(b.events), 15_000);
    expect(finishedOf(b.events)).toMatchObject({ outcome: 'succeeded' });
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'succeeded', attempts: 2 });
    expect(sqs.msgs.size).toBe(0);
  });

  it('a superseded attempt notices before its uploads: it writes no outputs (its withheld-image delete could remove the new holder\'s)', async () => {
    const image = { index: 0, seed: 1, png: new Uint8Array([137, 80, 78, 71]), width: 64, height: 64, clipScore: 0.3, scores: [], screenCosines: [], frames: [], stepsDone: 6 };
    const { env, job, a, finishA } = await supersededRun(stepping(200, 50), [image]);
    finishA();
    await waitFor('A done', () => finishedOf(a.events), 15_000);
    expect(finishedOf(a.events)).toMatchObject({ outcome: 'lease_lost' });
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]); // B is still running: nothing is A's to write
  });

  it('the dead-letter sweep leaves a job that a live lease holds, and fails it once the lease has lapsed', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 1 });
    const [m] = await env.queue.receive({ waitSec: 0 });
    // A duplicate of the message was dead-lettered while another delivery holds the job.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_message_id: 'another-message', lease_expires_at: new Date(Date.now() + 1500).toISOString() }));
    await env.queue.deadLetter!.send(m!.body);
    await env.queue.ack(m!.receipt);
    const w = start(env, { run: async () => outcome(1, false) }, { deadLetterSweepMs: 1, receiveWaitSec: 0 });
    await sleep(800);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('running');
    await waitFor('failed once the holder is gone', async () => (await env.jobs.get(OWNER, job.id))!.status === 'failed', 20_000);
    expect(w.events.some((e) => e.type === 'dead_lettered')).toBe(true);
  });

  it('a duplicate message neither cancels nor fails a job another worker runs; the holder ends it, and a DELETE stays deleted', async () => {
    const h = await harness();
    try {
      const res = await h.request('/v1/generations', { json: { prompt: 'a red circle' } });
      const id = ((await res.json()) as { id: string }).id;
      await h.queue.send(encodeQueueMessage({ v: 1, job_id: id, owner: 'acct_alice' })); // a duplicate
      let finishA!: () => void;
      const gateA = new Promise<void>((r) => (finishA = r));
      const image = { index: 0, seed: 1, png: new Uint8Array([137, 80, 78, 71]), width: 64, height: 64, clipScore: 0.3, scores: [], screenCosines: [], frames: [], stepsDone: 6 };
      const a = start(h, { run: async () => (await gateA, outcome(6, false, [image])) });
      await waitFor('A started', () => a.events.some((e) => e.type === 'job_started'));
      expect((await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' })).status).toBe(200);
      const b = start(h, { run: async () => { throw new Error('a duplicate must not run'); } });
      await waitFor('B settled the duplicate', () => b.events.some((e) => e.type === 'acked'));
      expect(b.events.find((e) => e.type === 'acked')).toMatchObject({ reason: 'duplicate_of_running' });
      expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'running', cancel_requested: true });
      await expectStatus(await h.request(`/v1/generations/${id}`, { method: 'DELETE' }), 409); // not ended: nothing to delete yet
      // A's engine was past its last step: the finished run wins over the late cancel (ADR 0005).
      finishA();
      await waitFor('A done', () => finishedOf(a.events));
      expect(finishedOf(a.events)).toMatchObject({ outcome: 'succeeded' });
      expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
      expect(await listKeys(h.blobs, `outputs/acct_alice/${id}/`)).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('a live holder is never taken over by a duplicate, however close its lease is to its next renewal', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    let runs = 0;
    const a = start(env, stepping(80, 25, () => runs++));
    await waitFor('A started', () => a.events.some((e) => e.type === 'job_started'));
    // The record just before A's next renewal: under half of a 30 s lease left.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, lease_expires_at: new Date(Date.now() + 14_000).toISOString() }));
    await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: OWNER }));
    const b = start(env, stepping(80, 25, () => runs++));
    await waitFor('B dropped the duplicate', () => b.events.some((e) => e.type === 'acked'));
    expect(b.events.find((e) => e.type === 'acked')).toMatchObject({ reason: 'duplicate_of_running' });
    await waitFor('A done', () => finishedOf(a.events));
    expect(finishedOf(a.events)).toMatchObject({ outcome: 'succeeded' });
    expect(runs).toBe(1);
  });

  it('a run whose final write landed but answered an error is still added to the usage ledger when its message comes back', async () => {
    const env = await makeEnv();
    let failOnce = true;
    const jobs = new Proxy(env.jobs, {
      get(target, prop, receiver) {
        if (prop !== 'update') return Reflect.get(target, prop, receiver);
        return async (...args: Parameters<JobStore['update']>) => {
          const next = await target.update(...args);
          if (next.status === 'succeeded' && failOnce) {
            failOnce = false;
            throw new RetryableError('injected: the PUT landed, its reply was lost, the SDK gave up');
          }
          return next;
        };
      },
    });
    const job = await submit(env, { steps: 6 });
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, { run: async () => outcome(6, false) });
    await waitFor('the redelivery', () => w.events.filter((e) => e.type === 'job_finished').length >= 2, 20_000);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'succeeded', usage: { encoder_passes: 7 } });
    const days = await readUsage(env.blobs, OWNER, rec.finished_at!.slice(0, 7));
    expect(days).toEqual([expect.objectContaining({ generations: 1, encoder_passes: 7 })]);
  });

  it('a job whose caller asked to cancel it ends canceled, not failed, when its last delivery dies and its message is dead-lettered', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    // Its worker died mid-run after the cancel was asked for; the queue dead-lettered the message.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 3, cancel_requested: true, lease_expires_at: new Date(Date.now() - 1000).toISOString() }));
    const [m] = await env.queue.receive({ max: 1, waitSec: 0 });
    await env.queue.deadLetter!.send(m!.body);
    await env.queue.ack(m!.receipt);
    const w = start(env, { run: async () => { throw new Error('nothing to run'); } }, { deadLetterSweepMs: 50 });
    await waitFor('the sweep settled it', () => w.events.some((e) => e.type === 'dead_lettered'));
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'canceled', error: null });
  });
});

async function expectStatus(res: Response, status: number): Promise<void> {
  expect(res.status, await res.clone().text()).toBe(status);
}
