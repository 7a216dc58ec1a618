// A job naming a model whose store index a newer `clipag models push` wrote (a format_version this
// worker does not read), reaching an older worker: the API lists such a model by name, so it accepts
// the job (ADR 0030). The worker must not fail it: a retry on every delivery would end it
// `retries_exhausted` ("the worker stopped or crashed"). It waits for a newer worker as a record a newer
// clipag wrote does: a delayed fresh copy, no delivery spent, the job left queued. Real local adapters
// and the real model registry on the real model store; a stand-in synthesizer locates the model as the
// engine's does (registry.use), then returns a made-up image.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createModelRegistry, type ModelRegistry } from '../../gpu-worker/models.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import type { WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { ModelStore, modelIndexKey } from '../../shared/modelstore.ts';
import { markPending } from '../../shared/pending.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import type { JobQueue } from '../../shared/ports.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor, waitForStatus, type Env } from './helpers.ts';
import { outcome, patched, standInImage, start, stopWorkers } from './stand-ins.ts';

const registries: ModelRegistry[] = [];
afterEach(async () => {
  await stopWorkers();
  await Promise.all(registries.splice(0).map((r) => r.close()));
});

const WAITING = 'written by a newer clipag; waiting for a worker that knows it';
const received = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'received' }> => e.type === 'received');
const released = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'released' }> => e.type === 'released');

/** Pushes a tiny bundle as `name` with this version's CLI (`force`: over a newer clipag's index). */
async function push(env: Env, name: string, force = false): Promise<void> {
  await new ModelStore(env.blobs).push(makeTinyBundle('quickgelu', { manifest: { name, robust: true, description: `tiny ${name}` } }), name, { force });
}

/** Rewrites `name`'s index as a newer clipag's push would: a format_version this version does not read, another bundle. */
async function pushedByNewerClipag(env: Env, name: string): Promise<void> {
  const key = modelIndexKey(name);
  const index = JSON.parse(Buffer.from((await env.blobs.get(key))!.body).toString()) as Record<string, unknown>;
  Object.assign(index, { format_version: 3, content_hash: 'f'.repeat(64) });
  await env.blobs.put(key, Buffer.from(JSON.stringify(index)));
}

/** The real registry on the store in `env` (indexTtlMs 0: every look reads the index, as one after the TTL does); its warnings. */
function registryOn(env: Env, warnings: string[] = []): ModelRegistry {
  const registry = createModelRegistry({ store: new ModelStore(env.blobs, { onWarning: (m) => void warnings.push(m) }), cacheDir: mkdtempSync(join(tmpdir(), 'clipag-newer-model-cache-')), threads: 1, indexTtlMs: 0 });
  registries.push(registry);
  return registry;
}

/** The local queue; a delayed send is made visible at once (the test need not wait out a minute), its asked-for delay recorded. */
function fastCopies(queue: JobQueue) {
  const delays: number[] = [];
  return { delays, queue: patched(queue, { send: (body: string, options?: { delaySec?: number }) => (options?.delaySec !== undefined && delays.push(options.delaySec), queue.send(body)) }) };
}

/** Locates the job's model first, as the engine synthesizer's registry.use does; `before` runs first. */
function locating(models: ModelRegistry, runs: { count: number }, before?: () => Promise<void>): Synthesizer {
  return {
    run: async (job) => {
      runs.count++;
      await before?.();
      await models.locate(job.spec.model);
      return outcome(2, false, [standInImage(0)]);
    },
  };
}

describe('a job naming a model whose index a newer clipag pushed', () => {
  it('waits before its claim, again and again, without spending a delivery; the job stays queued with its place; once the model reads here it runs', async () => {
    const env = await makeEnv();
    await push(env, 'future');
    await pushedByNewerClipag(env, 'future');
    const q = fastCopies(env.queue);
    const warnings: string[] = [];
    const models = registryOn(env, warnings);
    const job = await submit(env, { model: 'future', steps: 2 });
    await markPending(env.blobs, 'active', OWNER, job.id);
    const runs = { count: 0 };
    const w = start({ ...env, queue: q.queue }, locating(models, runs), { deadLetterSweepMs: 1 }, { models });
    // More receipts than the redrive limit (3): each a fresh copy, received for the first time.
    await waitFor('four receipts', () => received(w.events).length >= 4);
    expect(received(w.events).map((e) => e.receiveCount)).toEqual(received(w.events).map(() => 1));
    expect(released(w.events).length).toBeGreaterThanOrEqual(3);
    expect(released(w.events).every((e) => e.reason === 'newer_writer')).toBe(true);
    expect(runs.count).toBe(0); // never claimed
    const waiting = (await env.jobs.get(OWNER, job.id))!;
    expect([waiting.status, waiting.attempts, waiting.error]).toEqual(['queued', 0, null]);
    expect((await listKeys(env.blobs, pendingJobKey('active', OWNER, job.id))).length).toBe(1);
    expect(w.events.some((e) => e.type === 'dead_lettered' || (e.type === 'job_finished' && e.outcome === 'failed'))).toBe(false);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: WAITING, fields: expect.objectContaining({ job_id: job.id, what: 'model', unknown: ['model future: format_version 3'] }) }));
    expect(Math.min(...q.delays)).toBeGreaterThanOrEqual(60);
    // The operator hears what to upgrade (the registry's warning, in the worker's log).
    expect(warnings[0]).toMatch(/model future: .*written by a newer clipag.*upgrade the workers/);

    // The model pushed again in a format this worker reads (or a newer worker came): the next copy runs.
    await push(env, 'future', true);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts], JSON.stringify(done.error)).toEqual(['succeeded', 1]);
    expect(runs.count).toBe(1);
  });

  it('met by the run (pushed between the check and the run): the attempt goes back to queued and the job waits, with no failure and no delivery spent', async () => {
    const env = await makeEnv();
    await push(env, 'future');
    const q = fastCopies(env.queue);
    const models = registryOn(env);
    const job = await submit(env, { model: 'future', steps: 2 });
    const runs = { count: 0 };
    const w = start({ ...env, queue: q.queue }, locating(models, runs, () => pushedByNewerClipag(env, 'future')), { deadLetterSweepMs: 1 }, { models });
    await waitFor('three receipts', () => received(w.events).length >= 3);
    expect(received(w.events).map((e) => e.receiveCount)).toEqual(received(w.events).map(() => 1));
    expect(runs.count).toBe(1); // the copies wait before a claim
    const waiting = (await env.jobs.get(OWNER, job.id))!;
    expect([waiting.status, waiting.attempts, waiting.error]).toEqual(['queued', 1, null]);
    expect(released(w.events).every((e) => e.reason === 'newer_writer')).toBe(true);
    expect(w.events.some((e) => e.type === 'dead_lettered' || (e.type === 'job_finished' && e.outcome === 'failed'))).toBe(false);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });
});
