// Cost figures (ADR 0014): usage.cost_usd at the deployment's worker price, and POST /v1/estimates from
// the run times the worker records per model and size.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { estimateSeconds, fitNonNegativeLine, readRunSamples, recordRunSample, RUN_STATS_KEEP, runSampleJobTag, runStatsKey, type RunKey } from '../../shared/run-stats.ts';
import { defaultSchedule } from '../../shared/schedule.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const priced = () => createApp({ ...h.deps, limits: { ...LIMITS, workerHourlyUsd: 3.6 } }); // 0.001 USD per second
const auth = () => ({ Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' });
/** A run of `steps` steps per image × n images: `fixed` seconds per image plus `perStep` per step. */
const run = (fixed: number, perStep: number, steps: number, n = 1) => ({
  seconds: fixed * n + perStep * steps * n,
  loopSeconds: perStep * steps * n,
  steps: steps * n,
  n,
  at: new Date().toISOString(),
});
const toy = (width = 224, height = 224, start: RunKey['start'] = 'gmm'): RunKey => ({ model: 'toy', width, height, start });

describe('the run statistics', () => {
  it('count a job once: a repeat, and a write that landed but whose reply was lost (S3 resends it)', async () => {
    await recordRunSample(h.blobs, toy(), { ...run(2, 0.1, 5), job: 'job-1' });
    await recordRunSample(h.blobs, toy(), { ...run(2, 0.1, 5), job: 'job-1' });
    const lossy = lostReplyOnce(h.blobs);
    await recordRunSample(lossy.blobs, toy(), { ...run(2, 0.1, 5), job: 'job-2' });
    expect(lossy.lost()).toBe(1);
    await recordRunSample(h.blobs, toy(), run(2, 0.1, 5)); // a sample without a job (recorded before) is kept as it is
    // Kept as a tag, not the id: the document is every account's, and the README says it holds no id.
    expect((await readRunSamples(h.blobs, toy())).map((s) => s.job)).toEqual([runSampleJobTag('job-1'), runSampleJobTag('job-2'), undefined]);
    expect(JSON.stringify((await readRunSamples(h.blobs, toy())))).not.toMatch(/job-1|job-2/);
    // A sample an earlier version stored under the plain id still counts its job once.
    const old = toy(96, 96);
    await h.blobs.put(runStatsKey(old), Buffer.from(JSON.stringify({ v: 2, samples: [{ ...run(2, 0.1, 5), job: 'job-old' }] })));
    expect(await recordRunSample(h.blobs, old, { ...run(2, 0.1, 5), job: 'job-old' })).toBe('duplicate');
    expect(await readRunSamples(h.blobs, old)).toHaveLength(1);
  });
});

describe('POST /v1/estimates', () => {
  it('a size never run, with runs of one size only: a larger size gets their figures times the ratio of the pixels (labelled), a smaller one them as they are', async () => {
    // 14 runs at 64×64, each timing its one stage (the stages of one size: no fit), as a review recorded them.
    for (let i = 0; i < 14; i++) {
      const sample = run(1.2 + i * 0.02, 0.1 + i * 0.005, 3);
      await recordRunSample(h.blobs, toy(64, 64), { ...sample, job: `j${i}`, stages: [{ width: 64, height: 64, steps: 3, seconds: sample.loopSeconds }] });
    }
    await recordRunSample(h.blobs, toy(128, 128, 'noise'), run(1, 0.01, 10)); // another start: a basis for that start only
    await h.blobs.put('stats/toy/not-a-size.json', Buffer.from('{}')); // a stray object is ignored
    const ask = async (body: Record<string, unknown>) => (await (await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 3, ...body }) })).json()) as any;
    // Its own size: the runs' figures, basis null.
    const at64 = await ask({ width: 64, height: 64 });
    expect(at64).toMatchObject({ basis: null, runs: 14, note: null });
    // 128×128 has 4× the pixels: 4× the figures, not 64×64's as they are (which ran 2–5.6× low at larger sizes).
    const at128 = await ask({ width: 128, height: 128 });
    expect(at128).toMatchObject({ runs: 14, basis: { method: 'scaled', width: 64, height: 64, sizes: [{ width: 64, height: 64 }], factor: 4 }, note: null });
    expect(at128.worker_seconds.median).toBeCloseTo(4 * at64.worker_seconds.median, 2);
    expect(at128.worker_seconds.p90).toBeCloseTo(4 * at64.worker_seconds.p90, 2);
    expect(at128.cost_usd.median).toBeCloseTo(at128.worker_seconds.median / 1000, 6);
    // Steps and n still count, per step and per image, before the scaling.
    const more = await ask({ width: 128, height: 128, steps: 30, n: 2 });
    expect(more.worker_seconds.median).toBeCloseTo(4 * (await ask({ width: 64, height: 64, steps: 30, n: 2 })).worker_seconds.median, 2);
    // A noise start rests on noise-start runs only (128×128: 1 + 0.01 × 10 = 1.1 s). 192×192 has 2.25× the pixels...
    expect(await ask({ width: 192, height: 192, init: 'noise', steps: 10 })).toMatchObject({ worker_seconds: { median: 2.475 }, basis: { method: 'scaled', width: 128, height: 128, factor: 2.25 } });
    // ...a smaller size keeps the figures as they are, with no factor: much of a job's cost does not shrink with the pixels...
    const smaller = await ask({ width: 96, height: 96, init: 'noise', steps: 10 });
    expect(smaller).toMatchObject({ worker_seconds: { median: 1.1 }, basis: { method: 'nearest', width: 128, height: 128 } });
    expect(smaller.basis).not.toHaveProperty('factor');
    // ...and one size is not stretched to a size more than 4× away in pixels: no figures, and why.
    const far = await ask({ width: 448, height: 448, init: 'noise' });
    expect(far).toMatchObject({ worker_seconds: null, cost_usd: null, runs: 0, basis: null });
    expect(far.note).toMatch(/nearest is 128×128, more than 4× away/);
  });

  it('a size never run, with untimed runs (recorded before stage timings) at two sizes: the cost fitted against the output size of the runs', async () => {
    // A world where a step costs 0.02 s + 2 µs an output pixel, and an image 1 s + 4 µs an output pixel.
    const untimed = (side: number, steps: number) => run(1 + 4e-6 * side * side, 0.02 + 2e-6 * side * side, steps);
    const truth = (side: number, steps: number, n: number) => n * (1 + 4e-6 * side * side + steps * (0.02 + 2e-6 * side * side));
    await recordRunSample(h.blobs, toy(224, 224), untimed(224, 10));
    const ask = async (body: Record<string, unknown>) => (await (await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', ...body }) })).json()) as any;
    expect((await ask({ width: 256, height: 256, steps: 10 })).basis).toMatchObject({ method: 'scaled', width: 224, height: 224 }); // one size: scaled
    await recordRunSample(h.blobs, toy(448, 448), untimed(448, 10));
    for (const [side, steps, n] of [[256, 10, 1], [384, 40, 2], [640, 7, 3]] as const) {
      const got = await ask({ width: side, height: side, steps, n });
      expect(got.basis).toEqual({ method: 'fit', width: side <= 320 ? 224 : 448, height: side <= 320 ? 224 : 448, sizes: expect.arrayContaining([{ width: 224, height: 224 }, { width: 448, height: 448 }]) });
      expect(got.worker_seconds.median, `${side} px`).toBeCloseTo(truth(side, steps, n), 2);
    }
    // Past 4× the largest size run the fit is not stretched, and the nearest size is too far: no figures.
    const beyond = await ask({ width: 1024, height: 1024, steps: 10 });
    expect(beyond).toMatchObject({ worker_seconds: null, basis: null });
    expect(beyond.note).toMatch(/nearest is 448×448, more than 4× away in pixels, and a cost fitted over the sizes run is not stretched that far/);
  });

  it("a size never run: a step's cost fitted against its size from timed stages, summed over the stages the job will run", async () => {
    // A world where a step costs 0.05 s + 2 µs a pixel of its stage, and an image 1 s + 1 µs an output pixel.
    const step = (px: number) => 0.05 + 2e-6 * px;
    const perImage = (px: number) => 1 + 1e-6 * px;
    const timedRun = (side: number, steps: number) => {
      const stages = defaultSchedule(side, side, steps, 224).map((st) => ({ ...st, seconds: st.steps * step(st.width * st.height) }));
      const loop = stages.reduce((t, st) => t + st.seconds, 0);
      return { seconds: perImage(side * side) + loop, loopSeconds: loop, steps, n: 1, at: new Date().toISOString(), stages };
    };
    const truth = (side: number, steps: number, n: number) => n * (perImage(side * side) + defaultSchedule(side, side, steps, 224).reduce((t, st) => t + st.steps * step(st.width * st.height), 0));
    const ask = async (body: Record<string, unknown>) => (await (await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', ...body }) })).json()) as any;

    // One 448 px run times two stages (224 and 448 px): enough for the step's line, not for the image part.
    await recordRunSample(h.blobs, toy(448, 448), timedRun(448, 100));
    const at896 = await ask({ width: 896, steps: 100, n: 2 }); // stages 224, 448, 896: 4× the largest timed stage
    expect(at896).toMatchObject({ runs: 1, basis: { method: 'fit', width: 448, height: 448, sizes: [{ width: 448, height: 448 }] }, note: null });
    const loop896 = truth(896, 100, 2) - 2 * perImage(896 * 896);
    expect(at896.worker_seconds.median).toBeCloseTo(loop896 + 2 * perImage(448 * 448), 2); // the image part as measured at 448
    // Beyond 4× the largest timed stage the line is not stretched, and the nearest size is too far: no figures.
    const beyond = await ask({ width: 1024, steps: 100 });
    expect(beyond).toMatchObject({ worker_seconds: null, basis: null });
    expect(beyond.note).toMatch(/the largest stage timed here is 200704 pixels, and this job's largest is more than 4× that/);

    // A second size fits the image part too: the estimate is the world's own cost, at sizes between and beyond.
    await recordRunSample(h.blobs, toy(224, 224), timedRun(224, 100));
    for (const [side, steps, n] of [[896, 100, 2], [320, 40, 1], [640, 7, 3]] as const) {
      const got = await ask({ width: side, steps, n });
      expect(got.basis.method).toBe('fit');
      expect(got.worker_seconds.median).toBeCloseTo(truth(side, steps, n), 2);
      expect(got.worker_seconds.p90).toBeNull(); // 2 runs: too few for a 90th percentile
    }
    // The old way (the nearest size's per-step cost) was far low at 896 px: the reason for the fit.
    const nearestOnly = estimateSeconds([timedRun(448, 100)], { steps: 100, n: 2 })!.median;
    expect(truth(896, 100, 2) / nearestOnly).toBeGreaterThan(2);
    // Untimed runs (recorded before stage timings) at the 8 sizes nearest 896 do not hide the timed ones further off.
    for (const side of [864, 832, 928, 960, 800, 768, 992, 736]) await recordRunSample(h.blobs, toy(side, side), run(1, 0.5, 10));
    expect((await ask({ width: 896, steps: 100, n: 2 })).basis.method).toBe('fit');
  });

  it('below every size run, the fit holds each part at its value at the smallest size measured: a small image is not priced at nearly nothing', async () => {
    // Runs at 448 px (1 s an image beside its steps) and 896 px (6 s): the image line through them
    // crosses zero above 64 px, and the fit through the origin put a 64 px image's part at 0.03 s.
    const step = (px: number) => 0.01 + 1e-7 * px;
    const timed = (side: number, perImage: number) => {
      const stages = defaultSchedule(side, side, 100, 224).map((st) => ({ ...st, seconds: st.steps * step(st.width * st.height) }));
      const loop = stages.reduce((t, st) => t + st.seconds, 0);
      return { seconds: perImage + loop, loopSeconds: loop, steps: 100, n: 1, at: new Date().toISOString(), stages };
    };
    for (let i = 0; i < 3; i++) {
      await recordRunSample(h.blobs, toy(448, 448), { ...timed(448, 1), job: `a${i}` });
      await recordRunSample(h.blobs, toy(896, 896), { ...timed(896, 6), job: `b${i}` });
    }
    const ask = async (side: number) => (await (await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', width: side, height: side, steps: 100 }) })).json()) as any;
    for (const side of [64, 128, 224]) {
      const got = await ask(side);
      expect(got.basis.method).toBe('fit');
      // The steps, each at least what a step of the smallest stage timed (224 px) cost.
      const stepsAtLeast = defaultSchedule(side, side, 100, 224).reduce((t, st) => t + st.steps * step(Math.max(224 * 224, st.width * st.height)), 0);
      expect(got.worker_seconds.median - stepsAtLeast, `${side} px`).toBeGreaterThanOrEqual(0.99);
    }
  });

  it('before any run: no figures (null), never invented ones; nothing is queued or stored', async () => {
    const res = await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 50, n: 2 }) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      object: 'estimate', model: 'toy', width: 224, height: 224, steps: 100, worker_seconds: null, cost_usd: null, runs: 0, basis: null,
      note: 'no run of model toy with a gmm start was recorded on this deployment yet', hourly_usd: 3.6,
      // No worker has written its presence here (ADR 0040).
      queue: { workers_ready: 0, workers_busy: 0, workers_starting: 0, note: 'no worker is running: one is started when generations wait, which takes a few minutes (a machine boots and loads the model); the generation starts then' },
    });
    expect(await h.queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });

  it('from recorded runs: a per-image part times n plus a per-step part times steps × n (median, p90); cost at the price', async () => {
    // Per image 2 s (init, scoring, uploads); per step 0.1, 0.1, 0.2, 0.1 and 0.1 s. A cold worker's
    // model load adds 20 s to the first run: the median hides it, the 90th percentile shows it.
    await recordRunSample(h.blobs, toy(), { ...run(2, 0.1, 5), seconds: 20 + run(2, 0.1, 5).seconds });
    for (const [perStep, steps, n] of [[0.1, 200, 1], [0.2, 50, 2], [0.1, 100, 4], [0.1, 10, 1]] as const) await recordRunSample(h.blobs, toy(), run(2, perStep, steps, n));
    await recordRunSample(h.blobs, toy(448, 448), run(99, 9, 1)); // another size: not mixed in
    await recordRunSample(h.blobs, toy(224, 224, 'noise'), run(0.1, 9, 1)); // another start: not mixed in
    const res = await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 100, n: 2 }) });
    const body = (await res.json()) as any;
    // Median: 2 s × 2 images + 0.1 s × 100 steps × 2 images = 24 s.
    expect(body).toMatchObject({ steps: 200, worker_seconds: { median: 24 }, cost_usd: { median: 0.024 }, runs: 5 });
    expect(body.worker_seconds.p90).toBeGreaterThan(30); // the cold start and the slow run
    // A short job is not priced like a long one: 5 steps → 2 + 0.5 s.
    // Below 5 runs there is no 90th percentile to give, at its price either.
    await recordRunSample(h.blobs, toy(640, 640), run(2, 0.1, 10));
    expect(await (await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', width: 640, steps: 10 }) })).json()).toMatchObject({ worker_seconds: { median: 3, p90: null }, cost_usd: { median: 0.003, p90: null }, runs: 1 });
    const short = (await (await h.request('/v1/estimates', { json: { prompt: 'apple', steps: 5 } })).json()) as any;
    expect(short).toMatchObject({ worker_seconds: { median: 2.5 }, cost_usd: null, hourly_usd: null });
  });

  it("a fit's p90 shows the spread of the runs it rests on, though most sizes hold one run", async () => {
    const step = (px: number) => 0.05 + 2e-6 * px;
    const timedRun = (side: number, slow = 1) => {
      const stages = defaultSchedule(side, side, 50, 224).map((st) => ({ ...st, seconds: slow * st.steps * step(st.width * st.height) }));
      const loop = stages.reduce((t, st) => t + st.seconds, 0);
      return { seconds: slow * 1 + loop, loopSeconds: loop, steps: 50, n: 1, at: new Date().toISOString(), stages };
    };
    const sides = [256, 320, 384, 448, 512];
    for (const side of sides) await recordRunSample(h.blobs, toy(side, side), timedRun(side));
    const even = (await (await h.request('/v1/estimates', { json: { prompt: 'apple', width: 640, steps: 50 } })).json()) as any;
    expect(even.basis.method).toBe('fit');
    expect(even.worker_seconds.p90).toBeCloseTo(even.worker_seconds.median, 2); // five runs exactly on the line: no spread
    await recordRunSample(h.blobs, toy(576, 576), timedRun(576, 2)); // one run twice as slow
    const spread = (await (await h.request('/v1/estimates', { json: { prompt: 'apple', width: 640, steps: 50 } })).json()) as any;
    expect(spread.worker_seconds.p90 / spread.worker_seconds.median).toBeGreaterThan(1.3);
  });

  it("a fit's p90 rests on the latest runs, whatever their size", async () => {
    const step = (px: number) => 0.05 + 2e-6 * px;
    const timedRun = (side: number, i: number, slow = 1) => {
      const stages = defaultSchedule(side, side, 50, 224).map((st) => ({ ...st, seconds: slow * st.steps * step(st.width * st.height) }));
      const loop = stages.reduce((t, st) => t + st.seconds, 0);
      return { seconds: 1 + loop, loopSeconds: loop, steps: 50, n: 1, at: new Date(Date.UTC(2026, 11, 1, 0, 0, i)).toISOString(), job: `j${side}-${i}`, stages };
    };
    // The far size's 50 runs are the oldest; the near size's last 25 (the latest of all) ran slow.
    for (let i = 0; i < 50; i++) await recordRunSample(h.blobs, toy(256, 256), timedRun(256, i));
    for (let i = 0; i < 50; i++) await recordRunSample(h.blobs, toy(448, 448), timedRun(448, 100 + i, i >= 25 ? 2 : 1));
    const got = (await (await h.request('/v1/estimates', { json: { prompt: 'apple', width: 512, steps: 50 } })).json()) as any;
    expect(got.basis.method).toBe('fit');
    expect(got.worker_seconds.p90 / got.worker_seconds.median).toBeGreaterThan(1.1);
  });

  it("at a size run before, a step graph's compile (in the loop time, not in the timed stages) is paid per image, not per step", async () => {
    // 25 steps of 0.1 s, 1 s per image, and 3 s compiling the size's step graph inside the loop.
    await recordRunSample(h.blobs, toy(), { seconds: 6.5, loopSeconds: 5.5, steps: 25, n: 1, at: new Date().toISOString(), stages: [{ width: 224, height: 224, steps: 25, seconds: 2.5 }] });
    const body = (await (await h.request('/v1/estimates', { json: { prompt: 'apple', steps: 100 } })).json()) as any;
    expect(body).toMatchObject({ basis: null, worker_seconds: { median: 14 } }); // 4 + 100 × 0.1, not 1 + 100 × 0.22
  });

  it('counts the steps the workers will run: a deployment step cap applies', async () => {
    await recordRunSample(h.blobs, toy(), run(1, 0.5, 3));
    const capped = createApp({ ...h.deps, limits: { ...LIMITS, maxSteps: 3 } });
    const body = (await (await capped.request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 100, n: 4 }) })).json()) as any;
    expect(body).toMatchObject({ steps: 12, worker_seconds: { median: 4 + 6 } });
    // A generation made there counts the same steps from its first view (review-docs F5: it said 400 until it ran).
    const made = (await (await capped.request('/v1/generations', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 100, n: 4 }) })).json()) as any;
    expect([made.status, made.progress, made.request.steps]).toEqual(['queued', { step: 0, total: 12, attempt: 0 }, 100]);
  });

  it('is validated like a generation: 400 for a bad body or unknown model, 415 without JSON, 401 without a key', async () => {
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple', steps: 0 } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple', model: 'nope' } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/estimates', { method: 'POST', body: 'prompt=apple', headers: { 'Content-Type': 'text/plain' } }), 415);
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple' }, key: null }), 401);
    await expectEnvelope(await h.request('/v1/estimates', { method: 'GET' }), 405);
  });

  it('an unreadable statistics document gives no figures (not a 500), and the next run starts it afresh', async () => {
    await h.blobs.put(runStatsKey(toy()), Buffer.from('{"v": 2, "samples": [{"seconds": -1'));
    const res = await h.request('/v1/estimates', { json: { prompt: 'apple' } });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ worker_seconds: null, runs: 0 });
    await recordRunSample(h.blobs, toy(), run(1, 0.5, 10));
    expect(await readRunSamples(h.blobs, toy())).toHaveLength(1);
  });
});

describe('run statistics', () => {
  it('keep the latest runs, and concurrent records all land (conditional writes)', async () => {
    await Promise.all(Array.from({ length: 12 }, (_, i) => recordRunSample(h.blobs, toy(64, 64), run(i + 1, 0, 1))));
    expect((await readRunSamples(h.blobs, toy(64, 64))).map((s) => s.seconds).sort((a, b) => a - b)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    for (let i = 0; i < RUN_STATS_KEEP; i++) await recordRunSample(h.blobs, toy(64, 64), run(100 + i, 0, 1));
    const kept = await readRunSamples(h.blobs, toy(64, 64));
    expect(kept).toHaveLength(RUN_STATS_KEEP);
    expect(kept[0]!.seconds).toBe(100); // the oldest went
  });

  it('refuse nonsense samples and estimate nothing from nothing', async () => {
    await expect(recordRunSample(h.blobs, toy(64, 64), { ...run(1, 0, 1), seconds: -1 })).rejects.toThrow(/seconds/);
    await expect(recordRunSample(h.blobs, toy(64, 64), { ...run(1, 0, 1), steps: 0 })).rejects.toThrow(/steps/);
    await expect(recordRunSample(h.blobs, toy(64, 64), { ...run(1, 1, 1), loopSeconds: 5 })).rejects.toThrow(/loopSeconds must not exceed seconds/); // loop longer than the job
    expect(estimateSeconds([], { steps: 100, n: 1 })).toBeNull();
    // Stages that took longer than the job, or more than a schedule's 6, are refused too.
    await expect(recordRunSample(h.blobs, toy(64, 64), { ...run(1, 1, 1), stages: [{ width: 64, height: 64, steps: 1, seconds: 3 }] })).rejects.toThrow(/stages cannot take longer/);
    await expect(recordRunSample(h.blobs, toy(64, 64), { ...run(9, 1, 1), stages: Array.from({ length: 7 }, () => ({ width: 64, height: 64, steps: 1, seconds: 0.1 })) })).rejects.toThrow(/6/);
  });

  it('fit a cost line that never falls with size nor goes below zero', () => {
    expect(fitNonNegativeLine([{ x: 1, y: 3 }, { x: 3, y: 7 }, { x: 5, y: 11 }])).toEqual({ a: 1, b: 2 });
    expect(fitNonNegativeLine([{ x: 1, y: 5 }, { x: 3, y: 3 }])).toEqual({ a: 4, b: 0 }); // falling: flat at the mean
    const origin = fitNonNegativeLine([{ x: 1, y: 0 }, { x: 2, y: 4 }]); // a would be −4: through the origin instead
    expect(origin.a).toBe(0);
    expect(origin.b).toBeCloseTo(8 / 5, 12);
  });
});

describe('usage.cost_usd', () => {
  it('is worker_seconds at the price, and null where the deployment sets none', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage: { encoder_passes: 1600, worker_seconds: 12.5 } }));
    const unpriced = (await (await h.request(`/v1/generations/${id}`)).json()) as any;
    expect(unpriced.usage).toEqual({ encoder_passes: 1600, worker_seconds: 12.5, cost_usd: null, hourly_usd: null });
    const got = (await (await priced().request(`/v1/generations/${id}`, { headers: auth() })).json()) as any;
    expect(got.usage).toEqual({ encoder_passes: 1600, worker_seconds: 12.5, cost_usd: 0.0125, hourly_usd: 3.6 });
  });

  it('stays at the price the worker kept when the run ended, whatever the deployment charges today', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage: { encoder_passes: 1600, worker_seconds: 12.5 }, hourly_usd: 7.2 }));
    const kept = { encoder_passes: 1600, worker_seconds: 12.5, cost_usd: 0.025, hourly_usd: 7.2 };
    expect(((await (await priced().request(`/v1/generations/${id}`, { headers: auth() })).json()) as any).usage).toEqual(kept); // today 3.6
    expect(((await (await h.request(`/v1/generations/${id}`)).json()) as any).usage).toEqual(kept); // today no price at all
    // Lists carry the same figure.
    const listed = ((await (await priced().request('/v1/generations', { headers: auth() })).json()) as any).data.find((g: any) => g.id === id);
    expect(listed.usage).toEqual(kept);
  });
});
