// Review F5: a job's lease is its holder's wall-clock stamp, read by other workers against their own
// clocks. A worker whose clock runs ahead of the holder's must not take a live run over when a
// duplicate message of the job reaches it; a lease that has really run out is still taken over.
// Worker B's wall clock is injected (its monotonic clock is the real one); the holder is a record.
import { afterEach, describe, expect, it } from 'vitest';
import { createWorker, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { OWNER, makeEnv, submit, waitFor, type Env } from './helpers.ts';
import { finishedOf, outcome } from './stand-ins.ts';

const VIS_SEC = 30;
const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

/** Starts a worker whose wall clock reads `aheadMs` later than the holder's. */
function startAhead(env: Env, aheadMs: number, runs: string[]) {
  const events: WorkerEvent[] = [];
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs,
    synthesizer: { run: async () => (runs.push('B'), outcome(6, false)) },
    config: { visibilityTimeoutSec: VIS_SEC, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 },
    clock: { now: () => Date.now() + aheadMs, monotonic: () => performance.now() },
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return events;
}

/** A job another worker holds by another message, its lease running out at `leaseExpiresAt` (the holder's clock); the job's own message is the duplicate. */
async function heldJob(env: Env, leaseExpiresAt: number) {
  const job = await submit(env, { steps: 6 });
  await env.jobs.update(OWNER, job.id, (cur) => ({
    ...cur, status: 'running', attempts: 1, started_at: new Date().toISOString(), progress: { step: 2, total: 6 },
    lease_message_id: 'the-holders-message', lease_expires_at: new Date(leaseExpiresAt).toISOString(), lease_token: 'the-holders-token',
  }));
  return job;
}

describe('a lease read by a worker whose clock runs ahead', () => {
  it('a live holder just before its renewal (half a timeout left) is not taken over by a worker one whole timeout ahead', async () => {
    const env = await makeEnv();
    const job = await heldJob(env, Date.now() + (VIS_SEC * 1000) / 2 + 1000);
    const runs: string[] = [];
    const b = startAhead(env, VIS_SEC * 1000, runs);
    await waitFor('B settled the duplicate', () => finishedOf(b));
    expect(finishedOf(b)).toMatchObject({ outcome: 'skipped' });
    expect(b.find((e) => e.type === 'acked')).toMatchObject({ reason: 'duplicate_of_running' });
    expect(runs).toEqual([]);
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'running', attempts: 1, lease_message_id: 'the-holders-message', lease_token: 'the-holders-token', progress: { step: 2 } });
  });

  it('a lease that ran out over a timeout ago (its holder died) is still taken over by a worker in step', async () => {
    const env = await makeEnv();
    const job = await heldJob(env, Date.now() - (VIS_SEC + 5) * 1000);
    const runs: string[] = [];
    const b = startAhead(env, 0, runs);
    await waitFor('B ran the job', () => finishedOf(b));
    expect(finishedOf(b)).toMatchObject({ outcome: 'succeeded' });
    expect(runs).toEqual(['B']);
    expect(await env.jobs.get(OWNER, job.id)).toMatchObject({ status: 'succeeded', attempts: 2 });
  });
});
