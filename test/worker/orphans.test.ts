// Images that an attempt stored and that no final record names (ADR 0005): when a later event ends
// the job without images (a time-out, a cancel, a dead letter, a model gone), what the earlier
// attempt stored goes with it, instead of waiting for the bucket's lifecycle rule. The ports are the
// real local ones, wrapped to inject the fault that leaves such images behind; the synthesizers are
// stand-ins whose timing the test controls.
import { afterEach, describe, expect, it } from 'vitest';
import type { ModelRegistry } from '../../gpu-worker/models.ts';
import type { WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { RetryableError } from '../../shared/errors.ts';
import { FRESH_OUTPUTS_MARKER_MS, sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { jobOutputsPrefix, pendingJobKey, removeOrphanedOutputs } from '../../shared/keys.ts';
import { markPending, settleStoredOutputs } from '../../shared/pending.ts';
import type { BlobStore, JobStore } from '../../shared/ports.ts';
import type { JobRecord } from '../../shared/schemas/job.ts';
import { handMadePng } from '../helpers/png.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor, type Env } from './helpers.ts';
import { finishedOf, outcome, patched, standInImage, start, stepping, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

const FRAME = { step: 0, png: handMadePng(64, 64, new Uint8Array(0)) };

/** The keys a run of two images (image 0 with one frame) stores for `job`. */
function storedKeys(job: JobRecord): string[] {
  const prefix = jobOutputsPrefix(OWNER, job.id);
  return [`${prefix}0.png`, `${prefix}1.png`, `${prefix}frames/0/0000_64x64.png`].sort();
}

/**
 * The job store with the first write that would mark a job succeeded failing (S3 down for the final
 * record, past the in-place retries): that attempt's images are stored, and the job goes back to
 * `queued` with no record naming them.
 */
function finalRecordWriteFailsOnce(jobs: JobStore): JobStore {
  let failed = false;
  return patched(jobs, {
    update: ((owner: string, id: string, mutate: Parameters<JobStore['update']>[2], options?: Parameters<JobStore['update']>[3]) =>
      jobs.update(owner, id, (cur) => {
        const next = mutate(cur);
        if (next?.status === 'succeeded' && !failed) {
          failed = true;
          throw new RetryableError('injected: S3 503 on the final record');
        }
        return next;
      }, options)) as never,
  }) as JobStore;
}

/** A first run that makes two images (image 0 with a frame); every later run is `later`'s. */
function firstRunStores(later: Synthesizer): Synthesizer {
  let runs = 0;
  return {
    run: (job, options) => (++runs === 1 ? Promise.resolve(outcome(6, false, [standInImage(0, [FRAME]), standInImage(1)])) : later.run(job, options)),
  };
}

/** The state a first attempt leaves when it stored its images and was then put back: queued, `attempts` counted, images stored (and marked, as the worker marks them). */
async function leftByAnEarlierAttempt(env: Env, job: JobRecord, changes: Partial<JobRecord> = {}): Promise<void> {
  await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, attempts: 1, started_at: new Date().toISOString(), ...changes }));
  await markPending(env.blobs, 'outputs', OWNER, job.id);
  const prefix = jobOutputsPrefix(OWNER, job.id);
  await env.blobs.put(`${prefix}0.png`, standInImage(0).png, { contentType: 'image/png' });
  await env.blobs.put(`${prefix}1.png`, standInImage(1).png, { contentType: 'image/png' });
  await env.blobs.put(`${prefix}frames/0/0000_64x64.png`, FRAME.png, { contentType: 'image/png' });
}

/** The job's `outputs` marker, if there is one (the worker writes it before storing images). */
const outputsMarker = async (env: Env, job: JobRecord) => listKeys(env.blobs, pendingJobKey('outputs', OWNER, job.id));

/** The job's record as `ended` says, and none of its images or frames left, nor their marker. */
async function expectEndedWithoutImages(env: Env, job: JobRecord, ended: Record<string, unknown>): Promise<void> {
  expect((await env.jobs.get(OWNER, job.id))!).toMatchObject(ended);
  expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, job.id))).toEqual([]);
  expect(await outputsMarker(env, job)).toEqual([]);
}

/** The earlier attempt's delivery, whose worker died: received once, then back on the queue (one receive counted). */
async function earlierDeliveryDied(env: Env): Promise<void> {
  const [first] = await env.queue.receive({ waitSec: 0 });
  await env.queue.release(first!.receipt);
}

/**
 * One queued-job sweep over `blobs` (no job here owes a webhook: a send would be a bug), on a clock past
 * the age at which an ended job's fresh `outputs` marker is settled (FRESH_OUTPUTS_MARKER_MS): as the
 * sweep every 5 minutes finds it.
 */
const sweepOnce = (env: Env, blobs: BlobStore = env.blobs) =>
  sweepQueuedJobs({ blobs, jobs: env.jobs, queue: env.queue, clock: () => new Date(Date.now() + FRESH_OUTPUTS_MARKER_MS + 1000), webhooks: { send: () => Promise.reject(new Error('no webhook is owed here')), signedUrlTtlSec: 600 } });

/**
 * A run of two images whose first image write waits for `meanwhile` (another path acting on the job)
 * to finish; returns the worker's events once that attempt has ended.
 */
async function runWhileStoring(env: Env, meanwhile: () => Promise<unknown>): Promise<WorkerEvent[]> {
  let once: Promise<unknown> | undefined;
  const blobs = patched(env.blobs, {
    put: (async (key: string, body: Uint8Array, options?: Parameters<BlobStore['put']>[2]) => {
      if (key.startsWith('outputs/')) await (once ??= meanwhile());
      return env.blobs.put(key, body, options);
    }) as never,
  }) as BlobStore;
  const w = start({ queue: env.queue, jobs: env.jobs, blobs }, firstRunStores(stepping(1, 1)));
  await waitFor('the attempt to end', () => finishedOf(w.events), 20_000);
  return w.events;
}

const ofType = <T extends WorkerEvent['type']>(events: WorkerEvent[], type: T) => events.filter((e): e is Extract<WorkerEvent, { type: T }> => e.type === type);
/** The job_finished event that ended the job (not a requeue). */
const ended = (events: WorkerEvent[]) => ofType(events, 'job_finished').find((e) => ['succeeded', 'failed', 'canceled'].includes(e.outcome));

describe('an attempt stored images, then a later event ended the job without them', () => {
  it('the job times out on its next attempt: it ends failed (timeout) and keeps none of the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const w = start({ queue: env.queue, jobs: finalRecordWriteFailsOnce(env.jobs), blobs: env.blobs }, firstRunStores(stepping(100_000, 10)), { jobTimeoutSec: 1, resultWriteRetryMs: 0 });
    await waitFor('the first attempt put back', () => ofType(w.events, 'job_finished').find((e) => e.outcome === 'requeued'));
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, job.id))).toEqual(storedKeys(job));
    expect(await outputsMarker(env, job)).toEqual([pendingJobKey('outputs', OWNER, job.id)]);
    await waitFor('the job to end', () => ended(w.events), 20_000);
    await expectEndedWithoutImages(env, job, { status: 'failed', attempts: 2, error: { code: 'timeout' }, outputs: [] });
  });

  it('the job is canceled while its next attempt runs: it ends canceled and keeps none of the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const w = start({ queue: env.queue, jobs: finalRecordWriteFailsOnce(env.jobs), blobs: env.blobs }, firstRunStores(stepping(100_000, 10)), { resultWriteRetryMs: 0 });
    await waitFor('the second attempt', () => ofType(w.events, 'job_started').find((e) => e.attempt === 2));
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, job.id))).toEqual(storedKeys(job));
    // What POST …/cancel does to a running job; it races a progress write every step, so it retries as the API's cancel does (30×).
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true }), { retries: 50 });
    await waitFor('the job to end', () => ended(w.events), 20_000);
    await expectEndedWithoutImages(env, job, { status: 'canceled', attempts: 2, outputs: [] });
  });

  it('a cancel asked for while the attempt that stored them ran, whose final write then failed: that attempt ends the job canceled at once (not re-queued) and keeps none of the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    let runs = 0;
    const synthesizer: Synthesizer = {
      async run() {
        runs++;
        await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true }), { retries: 50 }); // may race the worker's heartbeat
        return outcome(6, false, [standInImage(0, [FRAME]), standInImage(1)]);
      },
    };
    const w = start({ queue: env.queue, jobs: finalRecordWriteFailsOnce(env.jobs), blobs: env.blobs }, synthesizer, { resultWriteRetryMs: 0 });
    await waitFor('the job to end', () => ended(w.events), 20_000);
    expect(runs).toBe(1);
    expect(ofType(w.events, 'acked').map((e) => e.reason)).toEqual(['canceled']);
    expect(ofType(w.events, 'released')).toEqual([]);
    expect(ofType(w.events, 'job_finished').map((e) => e.outcome)).toEqual(['canceled']);
    await expectEndedWithoutImages(env, job, { status: 'canceled', attempts: 1, outputs: [] });
    expect(await env.queue.depth()).toBe(0);
  });

  it('the dead-letter sweep fails a job whose worker died after storing images: it keeps none of them', async () => {
    const env = await makeEnv();
    const job = await submit({ jobs: env.jobs, queue: env.queue.deadLetter! }, { n: 2 }); // its message already dead-lettered by the redrive
    await leftByAnEarlierAttempt(env, job, { status: 'running', attempts: 3, lease_expires_at: new Date(Date.now() - 60_000).toISOString() });
    const w = start(env, stepping(1, 1), { deadLetterSweepMs: 50 });
    await waitFor('the sweep', () => ofType(w.events, 'dead_lettered')[0], 20_000);
    await expectEndedWithoutImages(env, job, { status: 'failed', error: { code: 'retries_exhausted' } });
  });

  it('a delivery past the receive limit (no redrive at it) fails the job, dead-letters its message, and keeps none of the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job);
    await earlierDeliveryDied(env);
    const w = start(env, stepping(1, 1), { maxReceives: 1 });
    await waitFor('the job to end', () => ended(w.events), 20_000);
    expect(ofType(w.events, 'dead_lettered').map((e) => e.reason)).toEqual(['retries_exhausted']);
    await expectEndedWithoutImages(env, job, { status: 'failed', error: { code: 'retries_exhausted' } });
  });

  it('a delivery that fails before its claim on the last attempt fails the job and keeps none of the images an earlier attempt stored', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job);
    await earlierDeliveryDied(env);
    // The record cannot be read on this delivery (the job store's update still works).
    const jobs = patched(env.jobs, { get: (async () => Promise.reject(new RetryableError('injected: S3 503 on GET'))) as never }) as JobStore;
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, stepping(1, 1), { maxReceives: 2 });
    await waitFor('the job to end', () => ended(w.events), 20_000);
    await expectEndedWithoutImages(env, job, { status: 'failed', attempts: 1, error: { code: 'retries_exhausted' } });
  });

  it('a cancel that lands between the record\'s read and the claim (its worker died after storing images) ends the job canceled, keeping none of them', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job, { status: 'running', lease_message_id: 'a-dead-workers-message', lease_expires_at: new Date(Date.now() - 60_000).toISOString() });
    // The record as read shows no cancel; POST …/cancel marks the running job just after.
    const jobs = patched(env.jobs, {
      get: (async (owner: string, id: string) => {
        const read = await env.jobs.get(owner, id);
        await env.jobs.update(owner, id, (cur) => ({ ...cur, cancel_requested: true }), { retries: 50 }); // may race the worker's heartbeat
        return read;
      }) as never,
    }) as JobStore;
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, stepping(1, 1));
    await waitFor('the job to end', () => ended(w.events), 20_000);
    expect(ofType(w.events, 'acked').map((e) => e.reason)).toEqual(['changed_before_start']);
    await expectEndedWithoutImages(env, job, { status: 'canceled', attempts: 1, outputs: [] });
  });

  it('a job whose model is gone by its next delivery fails invalid_model and keeps none of the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job);
    const models = { has: () => false, list: () => [] } as unknown as ModelRegistry;
    const w = start(env, stepping(1, 1), {}, { models });
    await waitFor('the job to end', () => ended(w.events), 20_000);
    await expectEndedWithoutImages(env, job, { status: 'failed', error: { code: 'invalid_model' } });
  });

  it('a removal that fails neither fails nor holds up the job\'s end: it is canceled, its message acked, the failure logged, and the next queued-job sweep removes the images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job, { cancel_requested: true });
    const blobs = patched(env.blobs, {
      list: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) =>
        prefix.startsWith('outputs/') ? Promise.reject(new RetryableError('injected: S3 503 on LIST')) : env.blobs.list(prefix, options)) as never,
      listKeys: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) =>
        prefix.startsWith('outputs/') ? Promise.reject(new RetryableError('injected: S3 503 on LIST')) : env.blobs.listKeys(prefix, options)) as never,
    }) as BlobStore;
    const w = start({ queue: env.queue, jobs: env.jobs, blobs }, stepping(1, 1));
    await waitFor('the job to end', () => ended(w.events), 20_000);
    expect(ended(w.events)).toMatchObject({ outcome: 'canceled' });
    expect(ofType(w.events, 'acked').map((e) => e.reason)).toEqual(['canceled_before_start']);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('canceled');
    expect(w.logs.find((l) => l.level === 'warn' && /stored images of an ended job were not removed/.test(l.msg))?.fields).toMatchObject({ job_id: job.id, owner: OWNER, status: 'canceled', error: expect.objectContaining({ message: 'injected: S3 503 on LIST' }) });
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, job.id))).toEqual(storedKeys(job));
    expect(await env.queue.depth()).toBe(0);

    // The marker stayed: the queued-job sweep retries the removal, and then drops it.
    expect(await outputsMarker(env, job)).toEqual([pendingJobKey('outputs', OWNER, job.id)]);
    expect(await sweepOnce(env)).toMatchObject({ scanned: 1, cleared: 1, errors: 0 });
    await expectEndedWithoutImages(env, job, { status: 'canceled', outputs: [] });
  });

  it('a job that ends another way while its attempt is storing images (the sweep expires it and removes what it finds): the attempt removes the images that landed after', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const events = await runWhileStoring(env, async () => {
      const rec = await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'expired', message: 'injected' } }), { retries: 50 });
      await settleStoredOutputs(env.blobs, rec);
    });
    expect(finishedOf(events)).toMatchObject({ outcome: 'skipped' });
    expect(ofType(events, 'acked').map((e) => e.reason)).toEqual(['already_failed']);
    await expectEndedWithoutImages(env, job, { status: 'failed', error: { code: 'expired' }, outputs: [] });
  });

  it('an attempt superseded while storing (another attempt took the job and ended it, settling what it found): it removes what landed after, itself', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const events = await runWhileStoring(env, async () => {
      const rec = await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, attempts: cur.attempts + 1, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'timeout', message: 'injected' } }), { retries: 50 });
      await settleStoredOutputs(env.blobs, rec);
    });
    expect(finishedOf(events)).toMatchObject({ outcome: 'lease_lost' });
    // The job had ended: settled at once, marker included (the other attempt's settling had listed too early).
    await expectEndedWithoutImages(env, job, { status: 'failed', attempts: 2 });
  });

  it('an attempt superseded while storing, by one still running: the marker goes back and stays until that one settles', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    // Another attempt takes the job over (still running) and, as if it had stored and settled, drops the marker.
    const events = await runWhileStoring(env, async () => {
      await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, attempts: cur.attempts + 1, lease_message_id: 'another', lease_expires_at: new Date(Date.now() + 600_000).toISOString() }), { retries: 50 });
      await env.blobs.delete(pendingJobKey('outputs', OWNER, job.id));
    });
    expect(finishedOf(events)).toMatchObject({ outcome: 'lease_lost' });
    expect(await outputsMarker(env, job)).toEqual([pendingJobKey('outputs', OWNER, job.id)]);
    expect(await sweepOnce(env)).toMatchObject({ errors: 0 });
    expect(await outputsMarker(env, job)).toEqual([pendingJobKey('outputs', OWNER, job.id)]); // still running: kept
  });

  it('a succeeded job keeps its images and drops their marker', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const marked: string[] = [];
    const blobs = patched(env.blobs, {
      put: ((key: string, body: Uint8Array, options?: Parameters<BlobStore['put']>[2]) => {
        // The marker goes first: no image is stored before it.
        if (key.startsWith('outputs/') || key.startsWith('pending/outputs/')) marked.push(key.startsWith('pending/') ? 'marker' : 'image');
        return env.blobs.put(key, body, options);
      }) as never,
    }) as BlobStore;
    const w = start({ queue: env.queue, jobs: env.jobs, blobs }, firstRunStores(stepping(1, 1)));
    await waitFor('the job to end', () => ended(w.events), 20_000);
    expect(marked).toEqual(['marker', 'image', 'image', 'image']);
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'succeeded', outputs: [{ key: `${jobOutputsPrefix(OWNER, job.id)}0.png` }, { key: `${jobOutputsPrefix(OWNER, job.id)}1.png` }] });
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, job.id))).toEqual(storedKeys(job));
    expect(await outputsMarker(env, job)).toEqual([]);
  });
});

describe('the queued-job sweep, on a marker of stored images', () => {
  it('keeps it while the job may still store images; once the job has ended it removes the images no record names, and then the marker', async () => {
    const env = await makeEnv();
    const sweep = () => sweepOnce(env);
    const running = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, running, { status: 'running', lease_expires_at: new Date(Date.now() + 60_000).toISOString() });
    const failed = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, failed, { status: 'failed', finished_at: new Date().toISOString(), error: { code: 'timeout', message: 'injected' } });
    const succeeded = await submit(env, { n: 2 });
    const prefix = jobOutputsPrefix(OWNER, succeeded.id);
    await leftByAnEarlierAttempt(env, succeeded, { status: 'succeeded', finished_at: new Date().toISOString(), outputs: [{ key: `${prefix}0.png`, width: 64, height: 64 }, { key: `${prefix}1.png`, width: 64, height: 64 }] });

    expect(await sweep()).toMatchObject({ scanned: 3, cleared: 2, kept: 1, errors: 0 });
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, running.id))).toEqual(storedKeys(running));
    expect(await outputsMarker(env, running)).toEqual([pendingJobKey('outputs', OWNER, running.id)]);
    await expectEndedWithoutImages(env, failed, { status: 'failed' });
    expect(await listKeys(env.blobs, prefix)).toEqual(storedKeys(succeeded));
    expect(await outputsMarker(env, succeeded)).toEqual([]);
  });

  it('a removal that fails keeps the marker, is counted as an error, and is retried by the next sweep', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job, { status: 'canceled', finished_at: new Date().toISOString() });
    let failing = true;
    const blobs = patched(env.blobs, {
      list: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) =>
        failing && prefix.startsWith('outputs/') ? Promise.reject(new RetryableError('injected: S3 503 on LIST')) : env.blobs.list(prefix, options)) as never,
      listKeys: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) =>
        failing && prefix.startsWith('outputs/') ? Promise.reject(new RetryableError('injected: S3 503 on LIST')) : env.blobs.listKeys(prefix, options)) as never,
    }) as BlobStore;
    const sweep = () => sweepOnce(env, blobs);
    expect(await sweep()).toMatchObject({ scanned: 1, cleared: 0, errors: 1 });
    expect(await outputsMarker(env, job)).toEqual([pendingJobKey('outputs', OWNER, job.id)]);
    failing = false;
    expect(await sweep()).toMatchObject({ scanned: 1, cleared: 1, errors: 0 });
    await expectEndedWithoutImages(env, job, { status: 'canceled' });
  });
});

describe('removeOrphanedOutputs', () => {
  it('removes what an ended job without images has stored, idempotently; never what a record names, what a live attempt may be storing, and lists nothing for a job never started', async () => {
    const env = await makeEnv();
    const listed: string[] = [];
    const blobs = patched(env.blobs, {
      list: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) => (listed.push(prefix), env.blobs.list(prefix, options))) as never,
      listKeys: ((prefix: string, options?: Parameters<BlobStore['list']>[1]) => (listed.push(prefix), env.blobs.listKeys(prefix, options))) as never,
    }) as BlobStore;
    const job = await submit(env, { n: 2 });
    await leftByAnEarlierAttempt(env, job);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    const prefix = jobOutputsPrefix(OWNER, job.id);
    const named = [{ key: `${prefix}0.png`, width: 64, height: 64 }, { key: `${prefix}1.png`, width: 64, height: 64 }];

    // Left alone: records still queued or running (not even listed), and one never started (nothing can be stored).
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'queued' })).toBe(false);
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'running' })).toBe(false);
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'canceled', attempts: 0 })).toBe(false);
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'succeeded', attempts: 0, outputs: named, deleted_at: new Date().toISOString() })).toBe(false);
    expect(listed).toEqual([]);
    // A record that names every image: looked at, nothing of it removed.
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'succeeded', outputs: named })).toBe(true);
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'failed', outputs: named })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual(storedKeys(job));

    // Ended without images: all of it goes, and only this job's.
    const other = await submit(env, {});
    await leftByAnEarlierAttempt(env, other);
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'canceled' })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual([]);
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, other.id))).toEqual(storedKeys(other));
    expect(await removeOrphanedOutputs(blobs, { ...rec, status: 'failed' })).toBe(true); // again: nothing left, no error
  });

  it('a succeeded record: removes the images it does not name and their frames; never a named image, a named image\'s frames, or a key of another shape', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 3 });
    await leftByAnEarlierAttempt(env, job);
    const prefix = jobOutputsPrefix(OWNER, job.id);
    // Image 2 with frames too; image 1's frames beside image 1; a key no version writes yet.
    for (const key of [`${prefix}2.png`, `${prefix}frames/1/0000_64x64.png`, `${prefix}frames/2/0000_64x64.png`, `${prefix}frames/2/0002_64x64.png`, `${prefix}meta.json`]) {
      await env.blobs.put(key, FRAME.png, { contentType: 'image/png' });
    }
    const rec = (await env.jobs.get(OWNER, job.id))!;
    // It names images 0 and 2 (image 1 was withheld by the attempt that ended it).
    const named = [{ key: `${prefix}0.png`, width: 64, height: 64 }, { key: `${prefix}2.png`, width: 64, height: 64 }];
    expect(await removeOrphanedOutputs(env.blobs, { ...rec, status: 'succeeded', outputs: named })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual(
      [`${prefix}0.png`, `${prefix}2.png`, `${prefix}frames/0/0000_64x64.png`, `${prefix}frames/2/0000_64x64.png`, `${prefix}frames/2/0002_64x64.png`, `${prefix}meta.json`].sort(),
    );
    // A named key of another shape: which frames are whose cannot be told, so none go (the unnamed image still does).
    await env.blobs.put(`${prefix}frames/1/0000_64x64.png`, FRAME.png, { contentType: 'image/png' });
    await env.blobs.put(`${prefix}1.png`, FRAME.png, { contentType: 'image/png' });
    expect(await removeOrphanedOutputs(env.blobs, { ...rec, status: 'succeeded', outputs: [...named, { key: `${prefix}legacy-image`, width: 64, height: 64 }] })).toBe(true);
    expect(await listKeys(env.blobs, `${prefix}frames/1/`)).toEqual([`${prefix}frames/1/0000_64x64.png`]);
    expect(await listKeys(env.blobs, `${prefix}1.png`)).toEqual([]);
  });

  it('JPEG outputs (`<index>.jpg`, ADR 0041) are images as PNG ones are: an unnamed one goes with its frames, a named one\'s frames stay', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const prefix = jobOutputsPrefix(OWNER, job.id);
    for (const key of [`${prefix}0.jpg`, `${prefix}1.jpg`, `${prefix}frames/0/0000_64x64.png`, `${prefix}frames/1/0000_64x64.png`]) {
      await env.blobs.put(key, FRAME.png, { contentType: 'image/png' });
    }
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(await removeOrphanedOutputs(env.blobs, { ...rec, status: 'succeeded', attempts: 1, outputs: [{ key: `${prefix}0.jpg`, width: 64, height: 64 }] })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual([`${prefix}0.jpg`, `${prefix}frames/0/0000_64x64.png`]);
  });

  it('a deleted record: everything under its prefix goes, whatever its status and whatever it names; another job\'s stays', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const other = await submit(env, {});
    await leftByAnEarlierAttempt(env, job);
    await leftByAnEarlierAttempt(env, other);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    const prefix = jobOutputsPrefix(OWNER, job.id);
    const named = [{ key: `${prefix}0.png`, width: 64, height: 64 }, { key: `${prefix}1.png`, width: 64, height: 64 }];
    const deleted_at = new Date().toISOString();
    expect(await removeOrphanedOutputs(env.blobs, { ...rec, status: 'succeeded', outputs: named, deleted_at })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual([]);
    await leftByAnEarlierAttempt(env, job);
    expect(await removeOrphanedOutputs(env.blobs, { ...rec, status: 'failed', outputs: [], deleted_at })).toBe(true);
    expect(await listKeys(env.blobs, prefix)).toEqual([]);
    expect(await listKeys(env.blobs, jobOutputsPrefix(OWNER, other.id))).toEqual(storedKeys(other));
  });

  it('refuses a job id that is not one, before touching storage', () => {
    expect(() => jobOutputsPrefix(OWNER, '../other')).toThrow(/not a job id/);
    expect(() => jobOutputsPrefix('a/b', 'j')).toThrow(/not an owner id/);
  });
});
