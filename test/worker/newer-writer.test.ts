// Data a newer clipag wrote, reaching this (older) worker during a deploy or after a worker rollback:
// a queue message with a higher `v` or a field it does not know, a job whose stored spec has a key it
// does not know. It must neither run it (the spec is strict on purpose) nor dead-letter it as damage:
// the job stays queued, its message comes back later for a worker that knows it, and waiting spends
// none of its deliveries. Real garbage is still dead-lettered. The real local adapters; a scripted
// synthesizer stands in for the engine. The copies' delay is shortened in the queue (recorded as asked
// for), so that the tests see them come back.
import { afterEach, describe, expect, it } from 'vitest';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { newJobId } from '../../shared/ids.ts';
import { markPending } from '../../shared/pending.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import { readRunSamples, runStartOf, runStatsKey } from '../../shared/run-stats.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import type { JobQueue, SendOptions } from '../../shared/ports.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import type { WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor, waitForStatus, type Env } from './helpers.ts';
import { outcome, patched, standInImage, start, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

const oneImage: Synthesizer = { run: async () => outcome(6, false, [standInImage(0)]) };

/** The record as stored, rewritten as a newer API would write it (`patch` edits the raw JSON). */
async function rewrite(env: Env, id: string, patch: (rec: any) => void): Promise<void> {
  const key = BlobJobStore.keyFor(OWNER, id);
  const rec = JSON.parse(Buffer.from((await env.blobs.get(key))!.body).toString());
  patch(rec);
  await env.blobs.put(key, Buffer.from(JSON.stringify(rec)));
}

async function rawRecord(env: Env, id: string): Promise<any> {
  return JSON.parse(Buffer.from((await env.blobs.get(BlobJobStore.keyFor(OWNER, id)))!.body).toString());
}

/**
 * The local queue, with every send's asked-for delay recorded; while `fast` is on, a delayed send is
 * made visible at once (the test need not wait out a minute), after that with the delay asked for.
 */
function recordingQueue(queue: JobQueue) {
  const delays: number[] = [];
  const groups: Array<string | undefined> = [];
  const ctl = { fast: true, delays, groups };
  const wrapped = patched(queue, {
    send: (body: string, options?: SendOptions) => {
      if (options?.delaySec !== undefined) delays.push(options.delaySec);
      groups.push(options?.group);
      return queue.send(body, ctl.fast ? (options?.group !== undefined ? { group: options.group } : {}) : options);
    },
  });
  return Object.assign(ctl, { queue: wrapped });
}

const received = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'received' }> => e.type === 'received');
const released = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'released' }> => e.type === 'released');
const activeMarker = async (env: Env, id: string) => (await listKeys(env.blobs, pendingJobKey('active', OWNER, id))).length === 1;
const WAITING = 'written by a newer clipag; waiting for a worker that knows it';

describe('a job whose stored spec a newer API wrote', () => {
  it('is put back, again and again, without spending a delivery; the job stays queued with its place; a worker that knows the spec runs it', async () => {
    const env = await makeEnv();
    const q = recordingQueue(env.queue);
    const job = await submit(env, { steps: 2 });
    await markPending(env.blobs, 'active', OWNER, job.id); // what the POST writes (ADR 0016)
    await rewrite(env, job.id, (r) => void (r.spec.guidance = 3)); // a request parameter this worker does not know
    let runs = 0;
    const w = start({ ...env, queue: q.queue }, { run: async (...args) => (runs++, oneImage.run(...args)) }, { deadLetterSweepMs: 1 });
    // More returns than the redrive limit (3): each is a fresh copy, received for the first time.
    await waitFor('four receipts', () => received(w.events).length >= 4);
    expect(received(w.events).map((e) => e.receiveCount)).toEqual(received(w.events).map(() => 1));
    expect(released(w.events).length).toBeGreaterThanOrEqual(3);
    expect(released(w.events).every((e) => e.reason === 'newer_writer')).toBe(true);
    expect(runs).toBe(0);
    expect(w.events.some((e) => e.type === 'dead_lettered')).toBe(false);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
    const raw = await rawRecord(env, job.id);
    expect([raw.status, raw.attempts, raw.error]).toEqual(['queued', 0, null]);
    expect(await activeMarker(env, job.id)).toBe(true);
    expect(w.events.some((e) => e.type === 'job_finished' && e.outcome === 'failed')).toBe(false);
    expect(w.logs.some((l) => l.level === 'error')).toBe(false);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: WAITING, fields: expect.objectContaining({ job_id: job.id, owner: OWNER, what: 'record', unknown: ['spec.guidance'] }) }));
    // Asked for a delay of a minute at least: never a tight loop.
    expect(Math.min(...q.delays)).toBeGreaterThanOrEqual(60);
    // Each copy is sent for the job's owner (the message came from an API that named no tenant): the
    // queue keeps serving owners fairly.
    expect(q.groups.length).toBeGreaterThanOrEqual(3);
    expect(new Set(q.groups)).toEqual(new Set([OWNER]));

    // A worker that knows the field (stand-in: the spec as this one reads it) takes the next copy and runs it.
    await rewrite(env, job.id, (r) => void delete r.spec.guidance);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts], JSON.stringify(done.error)).toEqual(['succeeded', 1]);
    expect(runs).toBe(1);
  });

  it('a job that ended meanwhile (the queued-job sweep expired it) has its message dropped: the cycle ends', async () => {
    const env = await makeEnv();
    const q = recordingQueue(env.queue);
    const job = await submit(env, { steps: 2 });
    await rewrite(env, job.id, (r) => void (r.spec.guidance = 3));
    const w = start({ ...env, queue: q.queue }, oneImage);
    await waitFor('two receipts', () => received(w.events).length >= 2);
    // What the (newer) sweep writes after the queue's retention, keeping the spec it reads.
    await rewrite(env, job.id, (r) => Object.assign(r, { status: 'failed', finished_at: new Date().toISOString(), error: { code: 'expired', message: 'not run within 4 day(s)' } }));
    await waitFor('the message dropped', () => w.events.some((e) => e.type === 'acked' && e.reason === 'already_failed'));
    await waitFor('the queue to empty', async () => (await env.queue.depth()) === 0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('rewritten readable between the read that failed and the second look (a newer worker, an operator): handled again, not parked as damage', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 2 });
    let failedReads = 0;
    // The first read fails as a newer record did; by the time the worker looks again, it reads.
    const jobs = patched(env.jobs, {
      get: (owner: string, id: string) => (failedReads++ === 0 ? Promise.reject(new CorruptDocumentError(BlobJobStore.keyFor(owner, id), 'does not match its schema: spec: Unrecognized key: "guidance"')) : env.jobs.get(owner, id)),
    });
    const w = start({ ...env, jobs }, oneImage, { deadLetterSweepMs: 1 });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts]).toEqual(['succeeded', 1]);
    expect(w.events.some((e) => e.type === 'dead_lettered')).toBe(false);
    expect(w.events).toContainEqual(expect.objectContaining({ type: 'requeued', reason: 'record_changed' }));
  });

  it('real damage (a known field of the wrong type) is still dead-lettered at once', async () => {
    const env = await makeEnv();
    const q = recordingQueue(env.queue);
    const job = await submit(env, { steps: 2 });
    await rewrite(env, job.id, (r) => Object.assign(r.spec, { steps: 'two', guidance: 3 }));
    const w = start({ ...env, queue: q.queue }, oneImage);
    await waitFor('the dead letter', () => w.events.some((e) => e.type === 'dead_lettered' && e.reason === 'corrupt_record'));
    expect(released(w.events)).toEqual([]);
    expect(q.delays).toEqual([]);
  });

  it('written during the run: the message goes back after this delivery\'s lease (else the copy would be dropped as a duplicate), nothing failed', async () => {
    const env = await makeEnv();
    const q = recordingQueue(env.queue);
    q.fast = false; // the copy must not come back under the lease that the record still names
    const job = await submit(env, { steps: 2 });
    await markPending(env.blobs, 'active', OWNER, job.id);
    const w = start({ ...env, queue: q.queue }, {
      run: async (...args) => {
        // A newer API writes the record while this worker runs the job (its next write cannot read it).
        await rewrite(env, job.id, (r) => void (r.spec.guidance = 3));
        return oneImage.run(...args);
      },
    }, { visibilityTimeoutSec: 120 });
    await waitFor('the copy', () => released(w.events).some((e) => e.reason === 'newer_writer'));
    expect(q.delays).toHaveLength(1);
    // Past the lease (120 s from its last renewal), not the usual minute.
    expect(q.delays[0]).toBeGreaterThan(120);
    const raw = await rawRecord(env, job.id);
    expect([raw.status, raw.attempts]).toEqual(['running', 1]);
    expect(await activeMarker(env, job.id)).toBe(true);
    expect(w.events.some((e) => e.type === 'dead_lettered' || (e.type === 'job_finished' && e.outcome === 'failed'))).toBe(false);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });
});

describe('a queue message a newer API wrote', () => {
  it('v 2, or v 1 with a field this worker does not know: put back without spending a delivery, the job left queued with its place; dropped once the job has ended', async () => {
    const env = await makeEnv();
    const q = recordingQueue(env.queue);
    const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 2, seed: 7, model: 'tiny' });
    const ids: string[] = [];
    for (const body of [(id: string) => ({ v: 2, job_id: id, owner: OWNER }), (id: string) => ({ v: 1, job_id: id, owner: OWNER, priority: 'high' })]) {
      const job = await env.jobs.create(newJobRecord({ id: newJobId(), owner: OWNER, spec }));
      await markPending(env.blobs, 'active', OWNER, job.id);
      await env.queue.send(JSON.stringify(body(job.id)));
      ids.push(job.id);
    }
    let runs = 0;
    const w = start({ ...env, queue: q.queue }, { run: async (...args) => (runs++, oneImage.run(...args)) }, { deadLetterSweepMs: 1 });
    await waitFor('eight receipts', () => received(w.events).length >= 8);
    expect(received(w.events).every((e) => e.receiveCount === 1)).toBe(true);
    expect(runs).toBe(0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
    for (const id of ids) {
      const job = (await env.jobs.get(OWNER, id))!;
      expect([job.status, job.attempts]).toEqual(['queued', 0]);
      expect(await activeMarker(env, id)).toBe(true);
    }
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: WAITING, fields: expect.objectContaining({ job_id: ids[0], what: 'message', unknown: ['v: 2'] }) }));
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: WAITING, fields: expect.objectContaining({ job_id: ids[1], what: 'message', unknown: ['priority'] }) }));
    expect(Math.min(...q.delays)).toBeGreaterThanOrEqual(60);

    // Ended elsewhere (a newer worker ran them, or the sweep expired them): the copies are dropped.
    for (const id of ids) await env.jobs.update(OWNER, id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'expired', message: 'not run' } }));
    await waitFor('the queue to empty', async () => (await env.queue.depth()) === 0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('garbage is still dead-lettered: a lower or non-numeric v, a missing job id, a known field of the wrong type', async () => {
    const env = await makeEnv();
    const bodies = [{ v: 0, job_id: 'x', owner: OWNER }, { v: '2', job_id: 'x', owner: OWNER }, { v: 2, owner: OWNER }, { v: 1, job_id: 42, owner: OWNER, extra: 1 }].map((b) => JSON.stringify(b));
    for (const b of bodies) await env.queue.send(b);
    const w = start(env, oneImage);
    await waitFor('four dead letters', () => w.events.filter((e) => e.type === 'dead_lettered').length === 4);
    expect(await env.queue.deadLetter!.depth()).toBe(4);
    expect(w.events.filter((e) => e.type === 'dead_lettered').map((e) => (e as { reason: string }).reason)).toEqual(['malformed', 'malformed', 'malformed', 'malformed']);
    expect(released(w.events)).toEqual([]);
  });
});

describe('the dead-letter sweep', () => {
  it('names why it fails a job: never started (set aside on receipt) or the attempts that ended without an outcome', async () => {
    const env = await makeEnv();
    const never = await submit(env, { steps: 2 });
    const twice = await submit(env, { steps: 2 });
    await env.jobs.update(OWNER, twice.id, (cur) => ({ ...cur, status: 'running', attempts: 2, lease_message_id: 'm-gone', lease_expires_at: new Date(Date.now() - 60_000).toISOString() }));
    // Their messages as an older worker (or the queue's redrive) left them: in the dead-letter queue.
    for (const m of await env.queue.receive({ max: 10 })) {
      await env.queue.deadLetter!.send(m.body);
      await env.queue.ack(m.receipt);
    }
    start(env, oneImage, { deadLetterSweepMs: 1 });
    const a = await waitForStatus(env, never.id, ['failed']);
    expect(a.error).toEqual({ code: 'retries_exhausted', message: expect.stringMatching(/never started: its message was dead-lettered on receipt/) });
    const b = await waitForStatus(env, twice.id, ['failed']);
    expect(b.error).toEqual({ code: 'retries_exhausted', message: expect.stringMatching(/after 2 attempts that ended without an outcome/) });
  });
});

describe('run statistics a newer worker wrote', () => {
  it('a document of a higher version is left untouched, and said so once', async () => {
    const env = await makeEnv();
    const first = await submit(env, { steps: 2 });
    const spec = first.spec;
    const key = runStatsKey({ model: spec.model, width: spec.width, height: spec.height, start: runStartOf(spec.init) });
    const newer = Buffer.from(JSON.stringify({ v: 3, samples: [{ seconds: 1, loopSeconds: 1, steps: 2, n: 1, at: '2026-01-01T00:00:00.000Z', gpu: 'L4' }] }));
    await env.blobs.put(key, newer);
    const second = await submit(env, { steps: 2 });
    const w = start(env, oneImage);
    await waitForStatus(env, first.id, ['succeeded']);
    await waitForStatus(env, second.id, ['succeeded']);
    await waitFor('both finished', () => w.events.filter((e) => e.type === 'job_finished' && e.outcome === 'succeeded').length === 2);
    expect(Buffer.from((await env.blobs.get(key))!.body).equals(newer)).toBe(true);
    expect(w.logs.filter((l) => l.msg.startsWith('run statistics written by a newer clipag'))).toHaveLength(1);
    expect(await readRunSamples(env.blobs, { model: spec.model, width: spec.width, height: spec.height, start: runStartOf(spec.init) })).toEqual([]);
  });
});
