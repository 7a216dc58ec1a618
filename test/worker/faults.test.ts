// Faults around a finished run (a fault-injection review, ADR 0005): storage that fails for a while or
// for good, a usage write that fails, a second copy of the held message, a stop that lands before the
// claim, and a run that throws on its way out of a drain. The ports are the real local ones, wrapped
// to inject the failure (S3 cannot be made to refuse on demand); the synthesizers are stand-ins
// whose timing the test controls.
import { afterEach, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { NonRetryableError, RetryableError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, JobStore } from '../../shared/ports.ts';
import { RECENT_JOBS_KEPT, readUsage, recordUsage } from '../../shared/usage.ts';
import { readRunSamples, runStartOf } from '../../shared/run-stats.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor } from './helpers.ts';
import { finishedOf, outcome, patched, SqsReceiptRulesQueue, sleep, standInImage, start, stepping, stopWorkers } from './stand-ins.ts';
import type { WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { markPending } from '../../shared/pending.ts';
import { pendingJobKey } from '../../shared/keys.ts';

afterEach(stopWorkers);

/** The blob store, failing writes to keys under `prefix` with `error()` while `failing()` says so. */
function failingWrites(blobs: BlobStore, prefix: string, error: () => Error, failing: () => boolean) {
  const counts = { failed: 0 };
  const guard = <A extends [string, ...unknown[]], R>(write: (...args: A) => Promise<R>) => async (...args: A): Promise<R> => {
    if (args[0].startsWith(prefix) && failing()) {
      counts.failed++;
      throw error();
    }
    return write(...args);
  };
  const store = patched(blobs, {
    put: guard(blobs.put.bind(blobs)),
    putIfAbsent: guard(blobs.putIfAbsent.bind(blobs)),
    replaceIfMatch: guard(blobs.replaceIfMatch.bind(blobs)),
  } as never);
  return { store, counts };
}

/** The queue with its first ack failing (SQS DeleteMessage timed out): that delivery comes back after its visibility. */
function ackFailsOnce(queue: JobQueue): JobQueue {
  let failAck = true;
  return patched(queue, {
    ack: (async (receipt: string) => {
      if (failAck) {
        failAck = false;
        throw new RetryableError('injected: SQS DeleteMessage timed out');
      }
      return queue.ack(receipt);
    }) as never,
  });
}

type Mutate = Parameters<JobStore['update']>[2];
/** The job store with its first claim's write delayed by `ms` (an fsync on a loaded machine); `around` may wrap each write's mutation. */
function slowFirstClaim(jobs: JobStore, ms: number, around: (mutate: Mutate) => Mutate = (mutate) => mutate): JobStore {
  let slow = true;
  return patched(jobs, {
    update: (async (owner: string, id: string, mutate: Mutate, options?: Parameters<JobStore['update']>[3]) => {
      if (slow && (await jobs.get(owner, id))?.status === 'queued') {
        slow = false;
        await sleep(ms);
      }
      return jobs.update(owner, id, around(mutate), options);
    }) as never,
  }) as JobStore;
}

const ofType = <T extends WorkerEvent['type']>(events: WorkerEvent[], type: T) => events.filter((e): e is Extract<WorkerEvent, { type: T }> => e.type === type);

describe('storage faults after a run', () => {
  it('a passing S3 fault on the images is retried in place: the run is not redone, and the job succeeds on its first attempt', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    let left = 3;
    const { store, counts } = failingWrites(env.blobs, `outputs/${OWNER}/${job.id}/`, () => new RetryableError('injected: S3 503 SlowDown'), () => left-- > 0);
    let runs = 0;
    const w = start({ queue: env.queue, jobs: env.jobs, blobs: store }, stepping(3, 1, () => runs++, [standInImage(0), standInImage(1)]));
    await waitFor('the job to finish', () => finishedOf(w.events));
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'succeeded' });
    expect(counts.failed).toBe(3);
    expect(runs).toBe(1);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'succeeded', attempts: 1 });
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([0, 1].map((i) => `outputs/${OWNER}/${job.id}/${i}.png`));
    expect(ofType(w.events, 'released')).toEqual([]);
  });

  it('storage that refuses for good (a 403 from a broken policy) fails no job: the message goes back, and after two such jobs the worker is unhealthy and takes no more', async () => {
    const env = await makeEnv();
    const jobs = [await submit(env, {}), await submit(env, {}), await submit(env, {})];
    const { store } = failingWrites(env.blobs, 'outputs/', () => new NonRetryableError('S3 request failed (403 AccessDenied)'), () => true);
    let runs = 0;
    const w = start({ queue: env.queue, jobs: env.jobs, blobs: store }, stepping(2, 1, () => runs++, [standInImage(0)]), { resultWriteRetryMs: 300 });
    await waitFor('unhealthy', () => ofType(w.events, 'unhealthy')[0]);
    expect(ofType(w.events, 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'machine_failures' }]);
    await w.worker.stop();
    expect(runs).toBe(2);
    const recs = await Promise.all(jobs.map((j) => env.jobs.get(OWNER, j.id)));
    // None failed: two were tried and given back, the third never taken.
    expect(recs.map((r) => r!.status)).toEqual(['queued', 'queued', 'queued']);
    expect(ofType(w.events, 'released').map((e) => e.reason)).toEqual(['retryable_error', 'retryable_error']);
    expect(await env.queue.depth()).toBe(3);
    // What an operator reads: why, and that it is the storage.
    expect(w.logs.find((l) => l.msg === 'job attempt failed')?.fields?.error).toMatchObject({ name: 'StorageFailure', message: expect.stringMatching(/could not store image 0: S3 request failed \(403 AccessDenied\)/) });
  });

  it('a full disk (ENOSPC) is the machine\'s fault, not the job\'s: retried on every delivery, not failed at once', async () => {
    const env = await makeEnv();
    const job = await submit(env, {});
    const full = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const w = start(env, { run: async () => Promise.reject(full) }, { maxMachineFailures: 5 });
    // Retried on every delivery (3 here), then given up as any retryable failure is; never failed at once as the job's fault.
    const rec = await waitFor('the job to end', async () => ((await env.jobs.get(OWNER, job.id))!.status === 'failed' ? env.jobs.get(OWNER, job.id) : undefined));
    expect(rec!.error).toMatchObject({ code: 'retries_exhausted', message: expect.stringMatching(/gave up after 3 attempts/) });
    expect(ofType(w.events, 'released').map((e) => e.reason)).toEqual(['retryable_error', 'retryable_error']);
  });

  it('a job that fails on its last delivery after storing some of its images keeps none of them', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    // Image 0 is stored; image 1 never is.
    const { store } = failingWrites(env.blobs, `outputs/${OWNER}/${job.id}/1.png`, () => new RetryableError('injected: S3 503 SlowDown'), () => true);
    const w = start({ queue: env.queue, jobs: env.jobs, blobs: store }, stepping(1, 1, undefined, [standInImage(0), standInImage(1)]), { maxReceives: 1, resultWriteRetryMs: 100, maxMachineFailures: 5 });
    await waitFor('the job to finish', () => finishedOf(w.events));
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'failed', error: { code: 'retries_exhausted' }, outputs: [] });
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);
  });
});

describe('the usage ledger and the ack', () => {
  it('a usage write that fails gives the message back instead of acking it; its redelivery records the job once, without running it again', async () => {
    const env = await makeEnv();
    const job = await submit(env, {});
    let left = 1;
    const { store, counts } = failingWrites(env.blobs, `usage/${OWNER}/`, () => new RetryableError('injected: S3 503 SlowDown'), () => left-- > 0);
    let runs = 0;
    const w = start({ queue: env.queue, jobs: env.jobs, blobs: store }, stepping(2, 1, () => runs++, [standInImage(0)]));
    await waitFor('the redelivery to settle', () => ofType(w.events, 'acked')[0]);
    expect(counts.failed).toBe(1);
    expect(ofType(w.events, 'released').map((e) => e.reason)).toEqual(['usage_unrecorded']);
    expect(ofType(w.events, 'acked').map((e) => e.reason)).toEqual(['already_succeeded']);
    expect(runs).toBe(1);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'succeeded', attempts: 1 });
    expect(await readUsage(env.blobs, OWNER, rec.finished_at!.slice(0, 7))).toEqual([expect.objectContaining({ generations: 1, images: 1, encoder_passes: 7 })]);
    // The run's time still reached the estimates (the redelivery would not know it).
    expect(await readRunSamples(env.blobs, { model: rec.spec.model, width: rec.spec.width, height: rec.spec.height, start: runStartOf(rec.spec.init) })).toHaveLength(1);
    await waitFor('the queue empty', async () => (await env.queue.depth()) === 0);
  });

  it('the job keeps its place among the owner\'s active jobs until its usage is in the ledger (a spend limit reads the ledger; review-races F2)', async () => {
    const env = await makeEnv();
    const job = await submit(env, {});
    await markPending(env.blobs, 'active', OWNER, job.id); // what the POST writes (ADR 0016)
    let failing = true;
    const { store } = failingWrites(env.blobs, `usage/${OWNER}/`, () => new RetryableError('injected: S3 503 SlowDown'), () => failing);
    const w = start({ queue: env.queue, jobs: env.jobs, blobs: store }, stepping(2, 1, undefined, [standInImage(0)]), { retryDelaySec: 1 });
    await waitFor('the usage write given back', () => ofType(w.events, 'released')[0]);
    await waitFor('the run reported ended', () => finishedOf(w.events));
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('succeeded');
    await sleep(200); // a place freed at the end would be gone by now (the clear is not awaited)
    expect(await listKeys(env.blobs, pendingJobKey('active', OWNER, job.id))).toHaveLength(1);
    // The redelivery records the usage: the place is freed then.
    failing = false;
    await waitFor('the redelivery acked', () => ofType(w.events, 'acked')[0], 15_000);
    await waitFor('the place freed', async () => (await listKeys(env.blobs, pendingJobKey('active', OWNER, job.id))).length === 0);
    expect(await readUsage(env.blobs, OWNER, (await env.jobs.get(OWNER, job.id))!.finished_at!.slice(0, 7))).toEqual([expect.objectContaining({ generations: 1 })]);
  });

  it('a message back after its ack failed, once the ledger has counted 500 other jobs of the owner, adds nothing: the record says its usage is recorded', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 3 });
    const queue = ackFailsOnce(env.queue);
    let runs = 0;
    const w = start({ queue, jobs: env.jobs, blobs: env.blobs }, stepping(3, 1, () => runs++, [standInImage(0)]), { visibilityTimeoutSec: 2 });
    await waitFor('the first end', () => finishedOf(w.events), 20_000);
    await w.worker.stop();
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec.usage_recorded_at).toEqual(expect.any(String));
    const month = rec.finished_at!.slice(0, 7);
    const at = new Date(rec.finished_at!);
    // The owner's other jobs ending meanwhile (a batch customer): past the ledger's own window.
    for (let i = 0; i < RECENT_JOBS_KEPT; i++) await recordUsage(env.blobs, OWNER, `other-${i}`, at, { images: 0, workerSeconds: 0, encoderPasses: 0 });
    const before = (await readUsage(env.blobs, OWNER, month))[0]!;
    // The un-acked delivery comes back after its visibility timeout.
    const w2 = start({ queue: env.queue, jobs: env.jobs, blobs: env.blobs }, stepping(3, 1, () => runs++, [standInImage(0)]), { visibilityTimeoutSec: 2 });
    await waitFor('the redelivery acked', () => ofType(w2.events, 'acked')[0], 20_000);
    expect(ofType(w2.events, 'acked').map((e) => e.reason)).toEqual(['already_succeeded']);
    expect(runs).toBe(1);
    const after = (await readUsage(env.blobs, OWNER, month))[0]!;
    expect(after).toEqual(before);
  });
});

describe('the usage ledger, a job counted long ago', () => {
  it('a message back after its usage was added but neither its stamp nor its ack landed, once 500 other jobs of the owner have been added, adds nothing', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 3 });
    // The record write stamping usage_recorded_at fails (S3 down for a moment), and so does the ack: the
    // message comes back (as after a crash between the ledger's add and the stamp).
    let failStamp = true;
    const jobs = patched(env.jobs, {
      update: ((owner: string, id: string, mutate: Mutate, options?: Parameters<JobStore['update']>[3]) =>
        env.jobs.update(owner, id, (cur) => {
          const next = mutate(cur);
          if (failStamp && next?.usage_recorded_at && !cur.usage_recorded_at) {
            failStamp = false;
            throw new RetryableError('injected: S3 503 on the usage stamp');
          }
          return next;
        }, options)) as never,
    }) as JobStore;
    const queue = ackFailsOnce(env.queue);
    let runs = 0;
    const w = start({ queue, jobs, blobs: env.blobs }, stepping(3, 1, () => runs++, [standInImage(0)]), { visibilityTimeoutSec: 2 });
    await waitFor('the first end', () => finishedOf(w.events), 20_000);
    await w.worker.stop();
    expect(failStamp).toBe(false);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'succeeded' });
    expect(rec.usage_recorded_at).toBeUndefined();
    const month = rec.finished_at!.slice(0, 7);
    const at = new Date(rec.finished_at!);
    expect(await readUsage(env.blobs, OWNER, month)).toEqual([expect.objectContaining({ generations: 1 })]);
    // The owner's other jobs ending meanwhile (a batch customer on a fleet).
    for (let i = 0; i < RECENT_JOBS_KEPT; i++) await recordUsage(env.blobs, OWNER, `other-${i}`, at, { images: 0, workerSeconds: 0, encoderPasses: 0 });
    const before = (await readUsage(env.blobs, OWNER, month))[0]!;
    expect(before.generations).toBe(RECENT_JOBS_KEPT + 1);
    // The un-acked delivery comes back after its visibility timeout, and finds no stamp.
    const w2 = start(env, stepping(3, 1, () => runs++, [standInImage(0)]), { visibilityTimeoutSec: 2 });
    await waitFor('the redelivery acked', () => ofType(w2.events, 'acked')[0], 20_000);
    expect(ofType(w2.events, 'acked').map((e) => e.reason)).toEqual(['already_succeeded']);
    expect(runs).toBe(1);
    expect((await readUsage(env.blobs, OWNER, month))[0]).toEqual(before);
    // Stamped now: a later copy does not even look at the ledger.
    expect((await env.jobs.get(OWNER, job.id))!.usage_recorded_at).toEqual(expect.any(String));
  });
});

describe('deliveries', () => {
  it('a second copy of the held message (SQS at-least-once, same message id) neither takes the live run over nor is dropped: it comes back once, after the job\'s deadline, and is acked then', async () => {
    const env = await makeEnv();
    const sqs = new SqsReceiptRulesQueue(2, 300);
    const job = await submit({ jobs: env.jobs, queue: sqs }, { steps: 6 });
    let runs = 0;
    let finishA!: () => void;
    const gate = new Promise<void>((r) => (finishA = r));
    // (A 6 s time limit: the copy is put off past the job's deadline, so that it comes back once at most.)
    const a = start({ queue: sqs, jobs: env.jobs, blobs: env.blobs }, { run: async () => (runs++, await gate, outcome(6, false)) }, { visibilityTimeoutSec: 4, jobTimeoutSec: 6 });
    await waitFor('A started', () => ofType(a.events, 'job_started')[0]);
    const b = start({ queue: sqs, jobs: env.jobs, blobs: env.blobs }, stepping(6, 1, () => runs++), { visibilityTimeoutSec: 4, jobTimeoutSec: 6 });
    await waitFor('B saw the copy', () => ofType(b.events, 'released')[0]);
    expect(ofType(b.events, 'released')).toEqual([expect.objectContaining({ reason: 'copy_of_held' })]);
    expect(ofType(b.events, 'job_started')).toEqual([]);
    finishA();
    await waitFor('A done', () => finishedOf(a.events));
    expect(finishedOf(a.events)).toMatchObject({ outcome: 'succeeded' });
    // The copy comes back once the lease it saw has run out, finds the job ended, and is acked.
    // (Either worker may receive it.)
    const acks = () => [...ofType(a.events, 'acked'), ...ofType(b.events, 'acked')];
    await waitFor('the copy acked', () => acks().find((e) => e.reason === 'already_succeeded'), 25_000);
    // It came back once: no climb towards the redrive limit while the holder ran.
    expect(ofType(b.events, 'released').length + ofType(a.events, 'released').length).toBe(1);
    expect(runs).toBe(1);
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'succeeded', attempts: 1 });
    expect(sqs.left).toBe(0);
  });

  it('a second copy of the held message that reaches a worker as it stops is put off, not sent again and acked (on SQS that ack would delete the holder\'s message)', async () => {
    const env = await makeEnv();
    // The copy becomes visible 800 ms after the message: A holds the job by then, and B is stopping.
    const sqs = new SqsReceiptRulesQueue(2, 800);
    const job = await submit({ jobs: env.jobs, queue: sqs }, { steps: 6 });
    let finishA!: () => void;
    const gate = new Promise<void>((r) => (finishA = r));
    const a = start({ queue: sqs, jobs: env.jobs, blobs: env.blobs }, { run: async () => (await gate, outcome(6, false)) }, { visibilityTimeoutSec: 4, jobTimeoutSec: 6 });
    await waitFor('A started', () => ofType(a.events, 'job_started')[0]);
    const b = start({ queue: sqs, jobs: env.jobs, blobs: env.blobs }, stepping(6, 1), { visibilityTimeoutSec: 4, jobTimeoutSec: 6, receiveWaitSec: 3 });
    await waitFor('B polling', () => b.worker.state === 'polling');
    const stopped = b.worker.stop();
    await stopped;
    expect(ofType(b.events, 'requeued')).toEqual([]);
    expect(ofType(b.events, 'acked')).toEqual([]);
    expect(ofType(b.events, 'released')).toEqual([expect.objectContaining({ reason: 'copy_of_held' })]);
    // Nothing new was sent: the two copies of the one message are all there is.
    expect(sqs.stored).toHaveLength(2);
    finishA();
    await waitFor('A done', () => finishedOf(a.events));
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'succeeded', attempts: 1 });
  });

  it('a slow claim does not make the record\'s lease outlive the queue\'s: after a failure it could not record, the message comes back and takes over, not put off as a copy', async () => {
    const env = await makeEnv();
    let failQueuedWrite = true;
    // The claim's write comes 700 ms after the receive, of a 2 s lease; the write that would put the job back fails once.
    const jobs = slowFirstClaim(env.jobs, 700, (mutate) => (cur) => {
      const next = mutate(cur);
      if (next && next.status === 'queued' && cur.status === 'running' && failQueuedWrite) {
        failQueuedWrite = false;
        throw new RetryableError('injected: S3 503');
      }
      return next;
    });
    let runs = 0;
    const job = await submit(env, {});
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, {
      async run() {
        runs++;
        if (runs === 1) throw new RetryableError('injected: GPU hiccup');
        return outcome(6, false);
      },
    }, { visibilityTimeoutSec: 2 });
    const done = await waitFor('the job to end', async () => {
      const rec = await env.jobs.get(OWNER, job.id);
      return rec && ['succeeded', 'failed'].includes(rec.status) ? rec : undefined;
    }, 20_000);
    expect([done.status, runs]).toEqual(['succeeded', 2]);
    expect(ofType(w.events, 'released')).toEqual([]);
  });

  it('a claim slower than half a visibility timeout does not leave the record\'s lease short of the queue\'s: a live holder never looks lapsed', async () => {
    const env = await makeEnv();
    // The claim lands 1.3 s after the receive, after the first heartbeat extended the 2 s lease.
    const jobs = slowFirstClaim(env.jobs, 1300);
    const job = await submit(env, {});
    start({ queue: env.queue, jobs, blobs: env.blobs }, stepping(200, 20), { visibilityTimeoutSec: 2, progressIntervalMs: 1000 });
    await waitFor('claimed', async () => (await env.jobs.get(OWNER, job.id))?.status === 'running');
    // For 2.5 s of the run, the record's lease (what a duplicate message is judged by) never lapses.
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      const rec = (await env.jobs.get(OWNER, job.id))!;
      expect(rec.status).toBe('running');
      expect(Date.parse(rec.lease_expires_at!)).toBeGreaterThan(Date.now());
      await sleep(10);
    }
  });

  it('a stop that lands while the record is read sends the job back unclaimed: no attempt is counted, nothing runs', async () => {
    const env = await makeEnv();
    const job = await submit(env, {});
    let stop: (() => Promise<void>) | undefined;
    let stopped: Promise<void> | undefined;
    const jobs = patched(env.jobs, {
      get: (async (owner: string, id: string) => {
        stopped ??= stop?.();
        return env.jobs.get(owner, id);
      }) as never,
    }) as JobStore;
    let runs = 0;
    const w = start({ queue: env.queue, jobs, blobs: env.blobs }, stepping(2, 1, () => runs++));
    stop = () => w.worker.stop();
    await waitFor('the stop', () => stopped !== undefined);
    await stopped;
    expect(runs).toBe(0);
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'queued', attempts: 0, started_at: null });
    expect(ofType(w.events, 'requeued')).toEqual([expect.objectContaining({ reason: 'drain' })]);
    // A fresh copy: its next delivery is the first.
    const [m] = await env.queue.receive({ waitSec: 0 });
    expect(m!.receiveCount).toBe(1);
  });

  it('a run that throws on its way out of a drain is requeued, not released: the drain spends no delivery', async () => {
    const env = await makeEnv();
    const job = await submit(env, {});
    const w = start(env, {
      async run(_job, { signal, onProgress } = {}) {
        for (let s = 1; ; s++) {
          if (signal?.aborted) throw new EngineError('runtime_failed', 'session rejected while it was torn down');
          onProgress?.({ step: s, total: 1000, image: 0 });
          await sleep(5);
        }
      },
    });
    await waitFor('started', () => ofType(w.events, 'job_started')[0]);
    await w.worker.stop();
    expect(ofType(w.events, 'released')).toEqual([]);
    expect(ofType(w.events, 'requeued')).toEqual([expect.objectContaining({ reason: 'drain' })]);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('queued');
    const [m] = await env.queue.receive({ waitSec: 0 });
    expect(m!.receiveCount).toBe(1);
  });
});
