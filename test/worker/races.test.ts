// Races between deliveries of one job (the review in ADR 0023's follow-up): a superseded attempt
// settles nothing, a duplicate message ends nothing, a live holder is never taken over, and a run
// whose final write answered an error still reaches the usage ledger. Stand-ins: synthesizers that
// return on cue (the races need the engine's timing controlled), and, for F1, a queue with SQS's
// receipt rules, which neither the local queue (stricter: it refuses old receipts) nor local-aws-sqs
// reproduces on demand.
import { afterEach, describe, expect, it } from 'vitest';
import type { Synthesizer, SynthesisOutcome } from '../../gpu-worker/worker/synthesizer.ts';
import { RetryableError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, JobStore } from '../../shared/ports.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { readUsage } from '../../shared/usage.ts';
import { harness } from '../functions/helpers.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor } from './helpers.ts';
import { handMadePng } from '../helpers/png.ts';
import { finishedOf, outcome, patched, SqsReceiptRulesQueue, sleep, standInImage, start, stepping, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

const FRAME = { step: 0, png: handMadePng(64, 64, new Uint8Array(0)) };

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
    expect(sqs.left).toBe(0);
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
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 1, lease_message_id: 'another-message', lease_expires_at: new Date(Date.now() + 2000).toISOString() }));
    await env.queue.deadLetter!.send(m!.body);
    await env.queue.ack(m!.receipt);
    // A 2 s visibility timeout: the lease counts as lapsed 2 s after it ends (the skew margin).
    const w = start(env, { run: async () => outcome(1, false) }, { deadLetterSweepMs: 1, receiveWaitSec: 0, visibilityTimeoutSec: 2 });
    await sleep(800);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('running');
    // Ended by the holder's clock but within the margin: a sweeper whose clock runs ahead leaves it.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, lease_expires_at: new Date(Date.now() - 500).toISOString() }));
    await sleep(800);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('running');
    // The sweep marks the record failed, then settles stored outputs, then emits: wait for the event.
    await waitFor('swept once the holder is gone', () => w.events.some((e) => e.type === 'dead_lettered'), 20_000);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('failed');
  });

  it("a letter whose own delivery holds the lease is swept at once, by the first sweep soon after the worker starts (crash review: 'running' for 2 min)", async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 1 });
    // Its last delivery died mid-run (a killed server): the record keeps that delivery's lease, which
    // reads live for a minute more, and the queue moves the very message to the dead-letter queue.
    const deliveries: Array<{ messageId: string }> = [];
    for (let i = 0; i < 3; i++) deliveries.push(...(await env.queue.receive({ waitSec: 0, visibilitySec: 0 })));
    expect(deliveries.map((d) => d.messageId)).toEqual(Array(3).fill(deliveries[0]!.messageId));
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 3, lease_message_id: deliveries[0]!.messageId, lease_expires_at: new Date(Date.now() + 60_000).toISOString() }));
    expect(await env.queue.receive({ waitSec: 0 })).toEqual([]); // the 4th receive moved it
    expect(await env.queue.deadLetter!.depth()).toBe(1);
    const t0 = Date.now();
    // The default sweep period (60 s), and the default visibility timeout.
    const w = start(env, { run: async () => outcome(1, false) }, { receiveWaitSec: 0, deadLetterSweepMs: 60_000 });
    await waitFor('swept', () => w.events.some((e) => e.type === 'dead_lettered'), 20_000);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'failed', error: { code: 'retries_exhausted' } });
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
      // A's engine was past its last step, but had stored nothing yet: the cancel the API answered ends it (ADR 0005).
      finishA();
      await waitFor('A done', () => finishedOf(a.events));
      expect(finishedOf(a.events)).toMatchObject({ outcome: 'canceled' });
      expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'canceled', outputs: [] });
      expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
      expect(await listKeys(h.blobs, `outputs/acct_alice/${id}/`)).toEqual([]);
    } finally {
      await stopWorkers(); // before the folder goes: a worker still polling writes into it (ENOTEMPTY)
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
    // (Many retries: A rewrites the record on every step, and this write must win one race.)
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, lease_expires_at: new Date(Date.now() + 14_000).toISOString() }), { retries: 50 });
    await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: OWNER }));
    const b = start(env, stepping(80, 25, () => runs++));
    await waitFor('B dropped the duplicate', () => b.events.some((e) => e.type === 'acked'));
    expect(b.events.find((e) => e.type === 'acked')).toMatchObject({ reason: 'duplicate_of_running' });
    await waitFor('A done', () => finishedOf(a.events));
    expect(finishedOf(a.events)).toMatchObject({ outcome: 'succeeded' });
    expect(runs).toBe(1);
  });

  it('a run whose final write landed but answered an error is settled in place: counted once in the usage ledger, not run again', async () => {
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
    let runs = 0;
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, { run: async () => (runs++, outcome(6, false)) });
    // The write is tried again in place; it finds the record ended by this very attempt, with its usage.
    await waitFor('the job to finish', () => finishedOf(w.events), 20_000);
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'succeeded' });
    expect(runs).toBe(1);
    expect(failOnce).toBe(false);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'succeeded', usage: { encoder_passes: 7 } });
    const days = await readUsage(env.blobs, OWNER, rec.finished_at!.slice(0, 7));
    expect(days).toEqual([expect.objectContaining({ generations: 1, encoder_passes: 7 })]);
  });

  it('a cancel the API took during the run\'s last interval, which no progress write saw, still ends it canceled: nothing stored, nothing billed (review-races F1)', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    let finish!: () => void;
    const gate = new Promise<void>((r) => (finish = r));
    // A progress interval longer than the run: as a cancel in a GPU run's last second meets it.
    const w = start(env, { run: async () => (await gate, outcome(6, false, [standInImage(0, [FRAME])])) }, { progressIntervalMs: 60_000 });
    await waitFor('started', () => w.events.some((e) => e.type === 'job_started'));
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true }));
    finish();
    await waitFor('done', () => finishedOf(w.events));
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'canceled' });
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'canceled', outputs: [], error: null, usage: { encoder_passes: 0, worker_seconds: 0 } });
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);
    expect(await readUsage(env.blobs, OWNER, rec.finished_at!.slice(0, 7))).toEqual([]);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
  });

  it('a job whose caller asked to cancel it ends canceled, not failed, when its last delivery dies and its message is dead-lettered', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    // Its worker died mid-run after the cancel was asked for; the queue dead-lettered the message.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 3, cancel_requested: true, lease_expires_at: new Date(Date.now() - 1000).toISOString() }));
    const [m] = await env.queue.receive({ max: 1, waitSec: 0 });
    await env.queue.deadLetter!.send(m!.body);
    await env.queue.ack(m!.receipt);
    // A 2 s visibility timeout: the lease that ran out a second ago counts as lapsed after the 2 s skew margin.
    const w = start(env, { run: async () => { throw new Error('nothing to run'); } }, { deadLetterSweepMs: 50, visibilityTimeoutSec: 2 });
    await waitFor('the sweep settled it', () => w.events.some((e) => e.type === 'dead_lettered'));
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'canceled', error: null });
  });

  it('a cancel asked for mid-run, then a retryable error before a progress write saw it: the job ends canceled at once, its message acked and its place freed, not re-queued behind the retry delay', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    await markPending(env.blobs, 'active', OWNER, job.id); // what the POST writes (ADR 0016)
    let fail!: () => void;
    const failing = new Promise<void>((r) => (fail = r));
    const w = start(env, { run: async () => { await failing; throw new RetryableError('injected: a transient engine fault'); } }, { retryDelaySec: 30 });
    await waitFor('the run started', () => w.events.some((e) => e.type === 'job_started'));
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true }), { retries: 30 }); // what POST …/cancel writes to a running job
    fail();
    await waitFor('the attempt to end', () => finishedOf(w.events));
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'canceled' });
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'canceled', attempts: 1, error: null, finished_at: expect.any(String) });
    expect(w.events.filter((e) => e.type === 'acked').map((e) => (e as { reason: string }).reason)).toEqual(['canceled']);
    expect(w.events.filter((e) => e.type === 'released')).toEqual([]);
    expect(await env.queue.depth()).toBe(0);
    await waitFor('its place freed', async () => (await listKeys(env.blobs, pendingJobKey('active', OWNER, job.id))).length === 0);
  });

  it('without a cancel, the same retryable error puts the job back to queued and gives its message back after the retry delay', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const w = start(env, { run: async () => { throw new RetryableError('injected: a transient engine fault'); } }, { retryDelaySec: 30 });
    await waitFor('the attempt to end', () => finishedOf(w.events));
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'requeued' });
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'queued', attempts: 1 });
    expect(w.events.filter((e) => e.type === 'released').map((e) => (e as { reason: string }).reason)).toEqual(['retryable_error']);
  });
});

/**
 * Worker A runs a generation of `n` images but cannot extend its lease, and its image writes stall
 * (after its check that it still holds the job) until `releasePuts()`; worker B gets the message once
 * A's lease lapses and ends the job `succeeded` with `bImages`. Resolves once B has ended it.
 */
async function storesAfterTakeover(n: number, aImages: SynthesisOutcome['images'], bImages: SynthesisOutcome['images']) {
  const sqs = new SqsReceiptRulesQueue();
  const h = await harness({ queue: sqs });
  const res = await h.request('/v1/generations', { json: { prompt: 'a red circle', n } });
  const id = ((await res.json()) as { id: string }).id;
  const blind = new Proxy(sqs, {
    get: (t, p, r) => (p === 'extendVisibility' ? async () => { throw new RetryableError('injected: ChangeMessageVisibility timed out'); } : Reflect.get(t, p, r)),
  }) as JobQueue;
  let releasePuts!: () => void;
  const putsGate = new Promise<void>((r) => (releasePuts = r));
  let stalled = false;
  const stallingBlobs = patched(h.blobs, {
    put: (async (key: string, ...rest: Parameters<BlobStore['put']> extends [string, ...infer R] ? R : never) => {
      if (key.startsWith('outputs/')) {
        stalled = true;
        await putsGate;
      }
      return h.blobs.put(key, ...rest);
    }) as never,
  }) as BlobStore;
  const a = start({ queue: blind, jobs: h.jobs, blobs: stallingBlobs }, { run: async () => outcome(6, false, aImages) }, { visibilityTimeoutSec: 2 });
  await waitFor('A storing', () => stalled, 15_000);
  const b = start({ queue: sqs, jobs: h.jobs, blobs: h.blobs }, stepping(3, 20, undefined, bImages), { visibilityTimeoutSec: 2 });
  await waitFor('B done', () => finishedOf(b.events), 20_000);
  expect(finishedOf(b.events)).toMatchObject({ outcome: 'succeeded' });
  expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'succeeded', attempts: 2 });
  return { h, id, a, releasePuts };
}

describe('images of an attempt superseded while it stored them', () => {
  it('land after the generation was DELETEd: the attempt removes them itself, and no marker is left (ADR 0021: a delete removes the images)', async () => {
    const { h, id, a, releasePuts } = await storesAfterTakeover(1, [standInImage(0, [FRAME])], [standInImage(0, [FRAME])]);
    try {
      const prefix = `outputs/acct_alice/${id}/`;
      expect(await listKeys(h.blobs, prefix)).toEqual([`${prefix}0.png`, `${prefix}frames/0/0000_64x64.png`]);
      expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
      expect(await listKeys(h.blobs, prefix)).toEqual([]);
      releasePuts(); // A's stalled writes land now
      await waitFor('A done', () => finishedOf(a.events), 20_000);
      expect(finishedOf(a.events)).toMatchObject({ outcome: 'lease_lost' });
      expect(await listKeys(h.blobs, prefix)).toEqual([]);
      expect(await listKeys(h.blobs, pendingJobKey('outputs', 'acct_alice', id))).toEqual([]);
      expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'succeeded', deleted_at: expect.any(String) });
    } finally {
      await stopWorkers(); // before the folder goes: a worker still polling writes into it (ENOTEMPTY)
      await h.close();
    }
  });

  it('include an index the succeeded record does not name (the attempt that ended it withheld it): that image and its frames go, the named ones stay', async () => {
    // B publishes only image 0, as when its output check withheld image 1 (the owner's policy is read again per run).
    const { h, id, a, releasePuts } = await storesAfterTakeover(2, [standInImage(0, [FRAME]), standInImage(1, [FRAME])], [standInImage(0, [FRAME])]);
    try {
      const prefix = `outputs/acct_alice/${id}/`;
      releasePuts();
      await waitFor('A done', () => finishedOf(a.events), 20_000);
      expect(finishedOf(a.events)).toMatchObject({ outcome: 'lease_lost' });
      expect((await h.jobs.get('acct_alice', id))!.outputs.map((o) => o.key)).toEqual([`${prefix}0.png`]);
      expect(await listKeys(h.blobs, prefix)).toEqual([`${prefix}0.png`, `${prefix}frames/0/0000_64x64.png`]);
      expect(await listKeys(h.blobs, pendingJobKey('outputs', 'acct_alice', id))).toEqual([]);
    } finally {
      await stopWorkers(); // before the folder goes: a worker still polling writes into it (ENOTEMPTY)
      await h.close();
    }
  });
});

async function expectStatus(res: Response, status: number): Promise<void> {
  expect(res.status, await res.clone().text()).toBe(status);
}
