// The queue worker end to end on real parts: the local queue/blob store/job store in a temp folder,
// the real engine on the tiny reference CLIP. The only stand-in is FlakyBlobStore, a wrapper around
// the real LocalBlobStore that injects storage errors (a real S3 hiccup cannot be produced on demand).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RetryableError } from '../../shared/errors.ts';
import type { BlobStore, PutOptions } from '../../shared/ports.ts';
import { startWorker, type RunningWorker } from '../../gpu-worker/main.ts';
import { createModelRegistry, type ModelRegistry } from '../../gpu-worker/models.ts';
import { silentLogger, type WorkerConfig, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { decodeImage } from '../../gpu-worker/engine/synth/image.ts';
import { readRunSamples } from '../../shared/run-stats.ts';
import { markPending } from '../../shared/pending.ts';
import type { WebhookNotifier } from '../../shared/webhooks.ts';
import { readUsage } from '../../shared/usage.ts';
import { generationView } from '../../shared/views.ts';
import { FAST_RECIPE, OWNER, type Env, listKeys, makeEnv, makeModelsDir, submit, waitFor, waitForStatus } from './helpers.ts';
import { xmpOf } from '../helpers/png.ts';

let models: ModelRegistry;
beforeAll(async () => {
  models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 2 });
  await models.engine('tiny'); // open once for the whole file (models are cached per process)
});
afterAll(async () => models?.close());

const running: RunningWorker[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
});

function start(env: Env, opts: { blobs?: BlobStore; recipe?: Record<string, unknown>; progressIntervalMs?: number; deadLetterSweepMs?: number; webhooks?: WebhookNotifier; worker?: Partial<WorkerConfig> } = {}) {
  const events: WorkerEvent[] = [];
  const r = startWorker({
    queue: env.queue, jobs: env.jobs, blobs: opts.blobs ?? env.blobs, config: env.config, models,
    recipeOverrides: { ...FAST_RECIPE, ...opts.recipe },
    worker: { progressIntervalMs: opts.progressIntervalMs ?? 0, pollErrorBackoffMs: 50, ...(opts.deadLetterSweepMs !== undefined ? { deadLetterSweepMs: opts.deadLetterSweepMs } : {}), ...opts.worker },
    log: silentLogger,
    onEvent: (e) => events.push(e),
    ...(opts.webhooks ? { webhooks: opts.webhooks } : {}),
  });
  running.push(r);
  return { ...r, events };
}

/** The real local blob store, failing `put`s under a prefix on demand. */
class FlakyBlobStore implements BlobStore {
  failures = 0;
  constructor(private readonly inner: BlobStore, private readonly prefix: string, private remaining: number) {}
  put(key: string, body: Uint8Array, options?: PutOptions) {
    if (key.startsWith(this.prefix) && this.remaining > 0) {
      this.remaining--;
      this.failures++;
      return Promise.reject(new RetryableError('injected: S3 503 SlowDown'));
    }
    return this.inner.put(key, body, options);
  }
  get = (k: string) => this.inner.get(k);
  head = (k: string) => this.inner.head(k);
  list = (p: string, o?: Parameters<BlobStore['list']>[1]) => this.inner.list(p, o);
  delete = (k: string) => this.inner.delete(k);
  putIfAbsent = (k: string, b: Uint8Array, o?: PutOptions) => this.inner.putIfAbsent(k, b, o);
  replaceIfMatch = (k: string, b: Uint8Array, e: string, o?: PutOptions) => this.inner.replaceIfMatch(k, b, e, o);
  signedGetUrl = (k: string, s: number) => this.inner.signedGetUrl(k, s);
  signedPutUrl = (k: string, o: Parameters<BlobStore['signedPutUrl']>[1]) => this.inner.signedPutUrl(k, o);
}

const finishedOf = (events: WorkerEvent[], jobId: string) =>
  waitFor(`job_finished for ${jobId}`, () => finished(events).find((e) => e.jobId === jobId));
const finished = (events: WorkerEvent[]) => events.filter((e): e is Extract<WorkerEvent, { type: 'job_finished' }> => e.type === 'job_finished');

describe('gpu-worker queue worker', () => {
  it('runs a job to succeeded: n PNGs and frames under outputs/<owner>/<job>/, scores, usage, progress; message acked', async () => {
    const env = await makeEnv();
    const job = await submit(env, { prompt: 'a photo of a cat', negative_prompt: 'a blurry photo', n: 2, steps: 6 });
    const w = start(env);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed', 'canceled']);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.attempts).toBe(1);
    expect(done.progress).toEqual({ step: 12, total: 12 });
    expect(done.started_at).not.toBeNull();
    expect(done.finished_at).not.toBeNull();
    expect(done.outputs.map((o) => o.key)).toEqual([`outputs/${OWNER}/${job.id}/0.png`, `outputs/${OWNER}/${job.id}/1.png`]);
    for (const out of done.outputs) {
      const obj = await env.blobs.get(out.key);
      expect(obj?.contentType).toBe('image/png');
      const img = decodeImage(obj!.body);
      expect([img.width, img.height, out.width, out.height]).toEqual([64, 64, 64, 64]);
      expect(xmpOf(obj!.body)).toContain('trainedAlgorithmicMedia'); // marked as generated (ADR 0032)
      expect(Number.isFinite(out.clip_score)).toBe(true);
    }
    // Seeds seed+i: the two images differ.
    const [a, b] = await Promise.all(done.outputs.map((o) => env.blobs.get(o.key)));
    expect(Buffer.from(a!.body).equals(Buffer.from(b!.body))).toBe(false);
    const frames = await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/frames/`);
    // Named with their step and the size of their stage, as the PNG has it (this 32 px model runs a
    // 64 px image coarse to fine: 32 px first).
    const first = frames.find((k) => k.includes('/frames/0/0000_'))!;
    expect(first).toMatch(new RegExp(`^outputs/${OWNER}/${job.id}/frames/0/0000_(\\d+)x(\\d+)\\.png$`));
    const [, fw, fh] = /_(\d+)x(\d+)\.png$/.exec(first)!;
    const firstBytes = (await env.blobs.get(first))!.body;
    expect(xmpOf(firstBytes)).toContain('trainedAlgorithmicMedia'); // frames too
    const firstPng = decodeImage(firstBytes);
    expect([Number(fw), Number(fh)]).toEqual([firstPng.width, firstPng.height]);
    expect(frames.some((k) => /\/frames\/1\/0004_\d+x\d+\.png$/.test(k))).toBe(true);
    // 6 steps × 8 views × 2 images of backward passes, plus GMM scoring and final scoring passes.
    expect(done.usage.encoder_passes).toBeGreaterThanOrEqual(2 * 6 * 8);
    expect(done.usage.worker_seconds).toBeGreaterThan(0);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
    expect(w.events.some((e) => e.type === 'progress_written')).toBe(true);
    // After the ack the worker still records the run's statistics (ADR 0014), then polls again.
    expect((await finishedOf(w.events, job.id)).outcome).toBe('succeeded');
    await waitFor('the worker back to polling', () => w.worker.state === 'polling');
  });

  it('an image of a request without a seed is made again, bit for bit, from the seed its view reports', async () => {
    const env = await makeEnv();
    const first = await submit(env, { seed: undefined, n: 2, steps: 3 });
    start(env);
    const done = await waitForStatus(env, first.id, ['succeeded', 'failed', 'canceled']);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const view = await generationView(done, env.blobs, 600, new Date());
    const [, second] = view.outputs;
    expect(second!.seed).toBe((view.outputs[0]!.seed + 1) >>> 0);
    const again = await submit(env, { seed: second!.seed, n: 1, steps: 3 });
    const redone = await waitForStatus(env, again.id, ['succeeded', 'failed', 'canceled']);
    const [was, now] = await Promise.all([env.blobs.get(done.outputs[1]!.key), env.blobs.get(redone.outputs[0]!.key)]);
    expect(Buffer.from(now!.body).equals(Buffer.from(was!.body))).toBe(true);
  });

  it('frees the owner\'s place and tells its webhook notifier of the jobs that end here, records the run for estimates and the owner\'s usage, and its stop waits for the deliveries', async () => {
    const env = await makeEnv();
    const told: string[] = [];
    let drains = 0;
    const CALLER_KEY = '01kaaaaaaaaaaaaaaaaaaaaaaa';
    // The deployment's price (CLIPAG_WORKER_HOURLY_USD) is kept on the record and in the ledger.
    const w = start({ ...env, config: { ...env.config, workerHourlyUsd: 3.6 } }, { webhooks: { notify: (_owner, id) => void told.push(id), drain: async () => void drains++ } });
    const ok = await submit(env, { n: 2 }, CALLER_KEY);
    const bad = await submit(env, { model: 'no-such-model' });
    // As the API marks them: each counts against its owner until it ends.
    for (const job of [ok, bad]) await markPending(env.blobs, 'active', OWNER, job.id);
    await waitForStatus(env, ok.id, ['succeeded']);
    await waitForStatus(env, bad.id, ['failed']);
    await waitFor('both notified', () => told.length >= 2);
    expect(told.sort()).toEqual([ok.id, bad.id].sort());
    await waitFor('their places freed', async () => (await listKeys(env.blobs, 'pending/active/')).length === 0);
    const samples = await readRunSamples(env.blobs, { model: 'tiny', width: 64, height: 64, start: 'gmm' });
    expect(samples).toHaveLength(1); // the succeeded job only
    expect(samples[0]).toMatchObject({ steps: 12, n: 2 });
    expect(samples[0]!.loopSeconds).toBeGreaterThan(0);
    expect(samples[0]!.loopSeconds).toBeLessThanOrEqual(samples[0]!.seconds);
    // Each stage's steps and time, over both images: what prices sizes never run.
    const stages = samples[0]!.stages!;
    expect(stages.reduce((t, st) => t + st.steps, 0)).toBe(12);
    expect(stages.at(-1)).toMatchObject({ width: 64, height: 64 });
    expect(stages.every((st) => st.seconds > 0)).toBe(true);
    expect(stages.reduce((t, st) => t + st.seconds, 0)).toBeLessThanOrEqual(samples[0]!.loopSeconds);
    // The owner's usage (ADR 0019): the succeeded job, once, with the figures of its record.
    const done = (await env.jobs.get(OWNER, ok.id))!;
    const days = await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7));
    expect(done.hourly_usd).toBe(3.6);
    const cost = Math.round(done.usage.worker_seconds * 1000) / 1e6; // 0.001 USD a second
    const figures = { generations: 1, images: 2, worker_seconds: done.usage.worker_seconds, encoder_passes: done.usage.encoder_passes, priced_seconds: done.usage.worker_seconds, priced_cost_usd: cost };
    // ...itemised under the API key that created the job.
    expect(days).toEqual([{ date: done.finished_at!.slice(0, 10), ...figures, by_api_key: { [CALLER_KEY]: figures } }]);
    expect((await generationView(done, env.blobs, 600, new Date(), { workerHourlyUsd: 100 })).usage).toMatchObject({ cost_usd: cost, hourly_usd: 3.6 });
    // The failed job ran no synthesis: no usage, no price.
    expect((await env.jobs.get(OWNER, bad.id))!.hourly_usd).toBeUndefined();
    await w.stop();
    expect(drains).toBe(1);
  });

  it('a prompt longer than the model reads is run, and the record says what was cut (warnings)', async () => {
    const env = await makeEnv();
    const long = Array.from({ length: 90 }, (_, i) => 'abcdefghij'[i % 10]).join(' '); // 90 words, 179 chars
    const ok = await submit(env, { prompt: 'a photo of a cat', steps: 1 });
    const cut = await submit(env, { prompt: long, steps: 1 });
    start(env);
    const [a, b] = [await waitForStatus(env, ok.id, ['succeeded', 'failed']), await waitForStatus(env, cut.id, ['succeeded', 'failed'])];
    expect([a.status, b.status]).toEqual(['succeeded', 'succeeded']);
    expect(a.warnings).toBeUndefined();
    expect(b.warnings).toEqual([expect.stringMatching(/92 tokens, more than model tiny[a-z-]*'s context of 77; it reads only the first 75/)]);
  });

  it('a cancel requested mid-run is seen by the next progress write and stops the run within one step', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 500, init: 'noise' });
    // Progress writes at most every 10 ms: still racing the cancel, but (now that every job-record
    // write fsyncs its temp file) not rewriting the record back to back, which on a loaded disk left
    // the cancel's read stale at almost every attempt until the 200 steps were done.
    const w = start(env, { progressIntervalMs: 10 });
    await waitFor('a few steps', () => w.events.some((e) => e.type === 'progress_written' && e.step >= 3));
    // What POST /v1/generations/:id/cancel does: a versioned write of cancel_requested.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true }), { retries: 50 }); // races a progress write every step, as the API's cancel does (it retries 30×)
    const done = await waitForStatus(env, job.id, ['canceled', 'succeeded', 'failed']);
    expect(done.status).toBe('canceled');
    expect(done.cancel_requested).toBe(true);
    expect(done.finished_at).not.toBeNull();
    expect(w.events.some((e) => e.type === 'progress_written' && e.cancelRequested)).toBe(true);
    const abort = w.events.find((e) => e.type === 'abort') as Extract<WorkerEvent, { type: 'abort' }>;
    expect(abort).toMatchObject({ reason: 'cancel', jobId: job.id });
    const fin = await finishedOf(w.events, job.id);
    expect(fin.outcome).toBe('canceled');
    // Aborted after step k was reported: only the step already under way (k+1) may still finish.
    expect(fin.stepsDone! - abort.step).toBeLessThanOrEqual(1);
    expect(fin.stepsDone).toBeLessThan(500);
    expect(done.outputs).toEqual([]);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
  });

  it('malformed messages go to the DLQ and the worker keeps serving', async () => {
    const env = await makeEnv();
    await env.queue.send('this is not json');
    await env.queue.send(JSON.stringify({ v: '1', job_id: 'x', owner: 'y' }));
    await env.queue.send(JSON.stringify({ v: 1, job_id: '../../etc', owner: OWNER }));
    // A newer writer's message (test/worker/newer-writer.test.ts) is no poison: for a job that does not exist it is dropped.
    await env.queue.send(JSON.stringify({ v: 2, job_id: 'x', owner: 'y' }));
    const w = start(env);
    const job = await submit(env, { steps: 2 });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(done.status).toBe('succeeded');
    await waitFor('the newer message dropped', () => w.events.some((e) => e.type === 'acked' && e.reason === 'job_missing'));
    expect(await env.queue.deadLetter!.depth()).toBe(3);
    const dead = await env.queue.deadLetter!.receive({ max: 10 });
    expect(dead.map((m) => m.body).sort()).toEqual(['this is not json', JSON.stringify({ v: '1', job_id: 'x', owner: 'y' }), JSON.stringify({ v: 1, job_id: '../../etc', owner: OWNER })].sort());
    expect(w.events.filter((e) => e.type === 'dead_lettered').length).toBe(3);
    await waitFor('the queue to empty', async () => (await env.queue.depth()) === 0);
    expect(['polling', 'running']).toContain(w.worker.state);
  });

  it('skips canceled and finished jobs (idempotent redelivery) and drops messages for missing jobs', async () => {
    const env = await makeEnv();
    const canceled = await submit(env, { steps: 2 });
    await env.jobs.update(OWNER, canceled.id, (cur) => ({ ...cur, status: 'canceled', cancel_requested: true, finished_at: new Date().toISOString() }));
    const requested = await submit(env, { steps: 2 });
    await env.jobs.update(OWNER, requested.id, (cur) => ({ ...cur, cancel_requested: true }));
    const ok = await submit(env, { steps: 2 });
    await env.queue.send(JSON.stringify({ v: 1, job_id: 'nosuchjob', owner: OWNER }));
    const w = start(env);
    await waitForStatus(env, ok.id, ['succeeded']);
    // A duplicate delivery of the finished job is acked and changes nothing (read once the run's last
    // write, the stamp of its usage, has landed).
    await waitFor('the usage stamp', async () => Boolean((await env.jobs.get(OWNER, ok.id))?.usage_recorded_at));
    const before = await env.jobs.get(OWNER, ok.id);
    await env.queue.send(JSON.stringify({ v: 1, job_id: ok.id, owner: OWNER }));
    await waitFor('the queue to empty', async () => (await env.queue.depth()) === 0);
    await waitFor('4 skips/cancels', () => finished(w.events).length >= 5);
    expect(await env.jobs.get(OWNER, ok.id)).toEqual(before);
    expect((await env.jobs.get(OWNER, canceled.id))!.attempts).toBe(0);
    const req = (await env.jobs.get(OWNER, requested.id))!;
    expect([req.status, req.attempts]).toEqual(['canceled', 0]);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('non-retryable errors fail the job with a reason and ack the message', async () => {
    const env = await makeEnv();
    const missingUpload = await submit(env, { init: 'upload:nosuchupload', strength: 0.5 });
    const badModel = await submit(env, { model: 'nosuchmodel' });
    start(env);
    const a = await waitForStatus(env, missingUpload.id, ['failed', 'succeeded']);
    expect(a.status).toBe('failed');
    expect(a.error?.code).toBe('invalid_input');
    expect(a.error?.message).toMatch(/upload:nosuchupload/);
    expect(a.attempts).toBe(1);
    const b = await waitForStatus(env, badModel.id, ['failed', 'succeeded']);
    expect(b.error).toEqual({ code: 'invalid_model', message: expect.stringMatching(/unknown model "nosuchmodel".*tiny/) });
    await waitFor('the acks', async () => (await env.queue.depth()) === 0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('an init upload is fetched from uploads/<owner>/<id> and used', async () => {
    const env = await makeEnv();
    const { encodePng, solidImage } = await import('../../gpu-worker/engine/synth/image.ts');
    await env.blobs.put(`uploads/${OWNER}/up1`, encodePng(solidImage(40, 40, [1, 0, 0])), { contentType: 'image/png' });
    const job = await submit(env, { init: 'upload:up1', strength: 0, steps: 1 });
    start(env, { recipe: { lr: 1e-6 } });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    const img = decodeImage((await env.blobs.get(done.outputs[0].key))!.body);
    // strength 0 keeps the upload: still (nearly) pure red after one tiny step.
    expect(img.data[0]).toBeGreaterThan(0.9);
    expect(img.data[64 * 64]).toBeLessThan(0.1);
    expect(done.warnings ?? []).toEqual([]); // square on square: nothing cropped
  });

  it('an init image of another shape is centre-cropped, and the job says so', async () => {
    const env = await makeEnv();
    const { encodePng, solidImage } = await import('../../gpu-worker/engine/synth/image.ts');
    await env.blobs.put(`uploads/${OWNER}/wide`, encodePng(solidImage(100, 50, [1, 0, 0])), { contentType: 'image/png' });
    const job = await submit(env, { init: 'upload:wide', strength: 0.5, steps: 1 });
    start(env);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.warnings).toContainEqual('the init image is 100×50: it was scaled to cover 64×64 and centre-cropped (ask for its aspect ratio to keep all of it)');
  });

  it('a retryable storage error on the outputs is retried in place: the job succeeds on its first attempt, its run not redone', async () => {
    const env = await makeEnv();
    const flaky = new FlakyBlobStore(env.blobs, 'outputs/', 1);
    const job = await submit(env, { steps: 2 });
    const w = start(env, { blobs: flaky });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(done.status).toBe('succeeded');
    expect(done.attempts).toBe(1);
    expect(flaky.failures).toBe(1);
    expect(done.outputs).toHaveLength(1);
    expect(await env.blobs.head(done.outputs[0]!.key)).not.toBeNull();
    await waitFor('the run to settle', () => finished(w.events).length === 1);
    expect(finished(w.events).map((e) => e.outcome)).toEqual(['succeeded']);
    expect(w.events.filter((e) => e.type === 'released')).toEqual([]);
  });

  it('after 3 receives the job fails with retries_exhausted and the message is dead-lettered', async () => {
    const env = await makeEnv();
    const flaky = new FlakyBlobStore(env.blobs, 'outputs/', Infinity);
    const job = await submit(env, { steps: 1 });
    // Each delivery retries its writes in place for 50 ms, then gives the message back. (Storage
    // failures count against the machine; a high limit keeps this worker taking the job.)
    const w = start(env, { blobs: flaky, worker: { resultWriteRetryMs: 50, maxMachineFailures: 10 } });
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded']);
    expect(done.status).toBe('failed');
    expect(done.error?.code).toBe('retries_exhausted');
    expect(done.error?.message).toMatch(/3 attempts/);
    expect(done.attempts).toBe(3);
    expect(flaky.failures).toBeGreaterThanOrEqual(3 * 2); // each attempt writes the image and its one frame at once, and tries again
    await waitFor('the DLQ copy and the ack', async () => (await env.queue.deadLetter!.depth()) === 1 && (await env.queue.depth()) === 0);
    const received = w.events.filter((e) => e.type === 'received').map((e) => (e as { receiveCount: number }).receiveCount);
    expect(received).toEqual([1, 2, 3]);
  });

  it('a job whose worker died on its last delivery is marked failed by the dead-letter sweep', async () => {
    const env = await makeEnv({ CLIPAG_RECEIVE_WAIT_SEC: '0' });
    const job = await submit(env, { steps: 1 });
    // The state a killed worker leaves: record "running", message moved to the DLQ by the redrive.
    const [m] = await env.queue.receive({ waitSec: 0 });
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 3 }));
    await env.queue.deadLetter!.send(m.body);
    await env.queue.ack(m.receipt);
    start(env, { deadLetterSweepMs: 1 });
    const done = await waitForStatus(env, job.id, ['failed']);
    expect(done.error?.code).toBe('retries_exhausted');
    // The message stays in the DLQ (for the depth alarm and inspection).
    await new Promise((r) => setTimeout(r, 100));
    expect(await env.queue.deadLetter!.depth()).toBe(1);
  });

  it('the visibility heartbeat keeps a job longer than the timeout from being redelivered', async () => {
    const env = await makeEnv({ CLIPAG_VISIBILITY_TIMEOUT_SEC: '2' });
    const job = await submit(env, { steps: 500, init: 'noise' });
    const w = start(env, { recipe: { globalViews: 64, patchViews: 64, frameEvery: 0 } /* ≥ 10 s of work: the job must outlive the 5 s observation */, progressIntervalMs: 1000 });
    await waitForStatus(env, job.id, ['running']);
    const t0 = Date.now();
    // A second consumer on the same queue keeps polling while the job runs past 2 × the timeout.
    let stolen = 0;
    while (Date.now() - t0 < 5_000) {
      stolen += (await env.queue.receive({ waitSec: 0 })).length;
      await new Promise((r) => setTimeout(r, 200));
    }
    const heartbeats = w.events.filter((e) => e.type === 'heartbeat').length;
    await w.stop(); // drains (the job is requeued, covered by the next test)
    expect(stolen).toBe(0);
    expect(heartbeats).toBeGreaterThanOrEqual(4); // every 1 s for 5+ s
    const rec = await env.jobs.get(OWNER, job.id);
    expect(rec!.attempts).toBe(1);
  });

  it('stop() drains: aborts at a step boundary, requeues the job and its message; idempotent', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 500, init: 'noise' });
    const w = start(env, { recipe: { globalViews: 16, patchViews: 16, frameEvery: 0 } });
    await waitFor('a few steps', () => w.events.some((e) => e.type === 'progress' && e.step >= 3));
    const t0 = Date.now();
    const p1 = w.stop();
    const p2 = w.stop();
    expect(p2).toBe(p1);
    expect(w.worker.state).toBe('draining');
    await p1;
    const drainMs = Date.now() - t0;
    expect(w.worker.state).toBe('stopped');
    expect(drainMs).toBeLessThan(5_000);
    await w.stop(); // again, after the fact
    const fin = await finishedOf(w.events, job.id);
    expect(fin.outcome).toBe('requeued');
    expect(fin.stepsDone).toBeLessThan(500);
    expect(w.events.find((e) => e.type === 'requeued')).toMatchObject({ reason: 'drain' });
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect([rec.status, rec.attempts, rec.progress.step]).toEqual(['queued', 1, 0]);
    // The fresh copy's send is stamped: the queued-job sweep counts the queue's retention from it,
    // and the wait to start again from the moment the worker put the job back (not from its first send).
    expect(Date.parse(rec.enqueued_at!)).toBeGreaterThanOrEqual(t0);
    expect(Date.parse(rec.queued_at!)).toBeGreaterThanOrEqual(t0);
    // Given back, not left to time out: visible again at once, as a fresh copy whose first delivery
    // this is (a drain is not an attempt; the record's `attempts` still counts the start).
    const again = await env.queue.receive({ waitSec: 0 });
    expect(again.map((m) => [m.receiveCount, JSON.parse(m.body).job_id])).toEqual([[1, job.id]]);
    // Nothing more happens after stop.
    const n = w.events.length;
    await new Promise((r) => setTimeout(r, 300));
    expect(w.events.length).toBe(n);
  });

  it('stop() while idle-polling resolves within the long-poll wait', async () => {
    const env = await makeEnv();
    // The queue's receives counted: the one in flight when stop() comes is the last.
    let receives = 0;
    const queue = new Proxy(env.queue, { get: (target, prop, receiver) => (prop === 'receive' ? (...a: Parameters<typeof target.receive>) => (receives++, target.receive(...a)) : Reflect.get(target, prop, receiver)) });
    const w = start({ ...env, queue });
    await waitFor('polling', () => w.worker.state === 'polling' && receives > 0);
    const atStop = receives;
    const t0 = Date.now();
    await w.stop();
    expect(receives).toBe(atStop); // no poll after stop(): it ends with the one it is in
    // CLIPAG_RECEIVE_WAIT_SEC=1. A hang guard, wide for a busy 2-core machine, not a speed claim.
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(w.worker.state).toBe('stopped');
  });
});
