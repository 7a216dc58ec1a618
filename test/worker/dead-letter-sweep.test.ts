// The worker's dead-letter sweep looks past the first 10 letters: with the local queue (oldest first)
// one batch released at once came back as the same 10 on every sweep, so once 10 letters of ended jobs
// piled up, a job whose letter came later was never marked failed.
import { afterEach, describe, expect, it } from 'vitest';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { OWNER, makeEnv, submit, waitFor } from './helpers.ts';
import { outcome, start, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

describe('dead-letter sweep', () => {
  it('settles a letter behind 12 letters of jobs that already ended, and keeps every letter in the queue', async () => {
    const env = await makeEnv();
    const ended = [];
    for (let i = 0; i < 12; i++) {
      const job = await submit(env, { steps: 1 });
      await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString() }));
      ended.push(job);
    }
    const stuck = [];
    for (let i = 0; i < 3; i++) {
      const job = await submit(env, { steps: 1 });
      await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 3 }));
      stuck.push(job);
    }
    // Every message moved to the dead-letter queue, the ended jobs' first (the oldest letters).
    for (const m of await env.queue.receive({ max: 10 })) await env.queue.ack(m.receipt);
    for (const m of await env.queue.receive({ max: 10 })) await env.queue.ack(m.receipt);
    for (const job of [...ended, ...stuck]) await env.queue.deadLetter!.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: OWNER }));
    const w = start(env, { run: async () => outcome(1, false) }, { deadLetterSweepMs: 1, receiveWaitSec: 0 });
    for (const job of stuck) {
      await waitFor(`job ${job.id} failed by the sweep`, async () => (await env.jobs.get(OWNER, job.id))?.status === 'failed', 20_000);
      expect((await env.jobs.get(OWNER, job.id))!.error?.code).toBe('retries_exhausted');
    }
    // The record turns failed before the sweep removes the run's orphans and emits its event: the third
    // event may come a moment after the third record (a CI run under load saw 2 here).
    const swept = () => w.events.filter((e) => e.type === 'dead_lettered' && e.reason === 'swept').length;
    await waitFor('three swept events', async () => swept() >= 3 || undefined, 20_000);
    expect(swept()).toBe(3);
    for (const job of ended) expect((await env.jobs.get(OWNER, job.id))!.status).toBe('succeeded');
    await waitFor('every letter back in view', async () => (await env.queue.deadLetter!.depth()) === 15 || undefined, 20_000);
  });
});
