// POST /v1/estimates at a size run before (extremes review F4): the coarse-to-fine schedule spends a
// long run's steps mostly at small sizes and a short run's at the full size, so a step's cost is
// priced stage by stage from the runs' timed stages, not as an average over whole runs. Synthetic
// runs whose stages cost what a known world says (no timing).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { estimateSeconds, recordRunSample, type RunKey, type RunSample } from '../../shared/run-stats.ts';
import { defaultSchedule, type Stage } from '../../shared/schedule.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** The harness's toy model reads 224 px: a 1024² job runs stages of 224, 448, 896 and 1024 px. */
const INPUT_SIZE = 224;
const SIDE = 1024;
const at1024: RunKey = { model: 'toy', width: SIDE, height: SIDE, start: 'gmm' };
const schedule = (steps: number) => defaultSchedule(SIDE, SIDE, steps, INPUT_SIZE);

/**
 * A world: an image costs `perImage` beside its steps, and a stage of k steps (per image) at a size
 * costs `stage(px, k)`. A run of `steps` per image × n records its stages summed over its n images.
 */
function world(stage: (px: number, k: number) => number, perImage = 2) {
  const stagesOf = (steps: number, n: number) => schedule(steps).map((st) => ({ ...st, steps: st.steps * n, seconds: stage(st.width * st.height, st.steps) * n }));
  return {
    run: (steps: number, n: number, job: string, slow = 1): RunSample => {
      const stages = stagesOf(steps, n).map((st) => ({ ...st, seconds: st.seconds * slow }));
      const loop = stages.reduce((t, st) => t + st.seconds, 0);
      return { seconds: perImage * n + loop, loopSeconds: loop, steps: steps * n, n, at: new Date().toISOString(), job, stages };
    },
    truth: (steps: number, n: number) => n * (perImage + schedule(steps).reduce((t, st: Stage) => t + stage(st.width * st.height, st.steps), 0)),
  };
}

const ask = async (body: Record<string, unknown>) => (await (await h.request('/v1/estimates', { json: { prompt: 'apple', width: SIDE, height: SIDE, ...body } })).json()) as any;

describe('POST /v1/estimates at a size run before', () => {
  it('prices a long job from short runs (3–30 steps) stage by stage, each stage size at its own cost, its first step\'s extra included', async () => {
    // A step at 224 px costs 0.03 s, at 448 px 0.09, at 896 px 0.33, at 1024 px 0.43, and a stage's
    // first step 4 more steps' worth (a freshly leased graph and its buffers): a short run's steps cost
    // far more each than a long one's, as the review's 1024² runs did (0.96 s a step at 2 steps, 0.37 at 500).
    const perStep = (px: number) => 0.01 + 4e-7 * px;
    const w = world((px, k) => perStep(px) * (k + 4));
    const samples = [w.run(3, 1, 'a'), w.run(10, 2, 'b'), w.run(30, 1, 'c'), w.run(20, 4, 'd'), w.run(3, 4, 'e')];
    for (const s of samples) await recordRunSample(h.blobs, at1024, s);
    // Within 4× of the longest stage a run timed: each stage's line, exact here (no noise).
    for (const [steps, n] of [[100, 2], [100, 1], [20, 1], [3, 1]] as const) {
      const got = await ask({ steps, n });
      expect(got, `${steps} steps × ${n}`).toMatchObject({ basis: null, runs: 5, note: null });
      expect(got.worker_seconds.median / w.truth(steps, n), `${steps} steps × ${n}`).toBeCloseTo(1, 3);
      expect(got.worker_seconds.p90 / w.truth(steps, n), `${steps} steps × ${n}`).toBeCloseTo(1, 3); // runs exactly on the world: no spread
    }
    // Further (500 steps: stages of 100-200 steps from runs that timed at most 12): the line is not
    // stretched that far (a noisy slope priced it as low as 0.34×); the steps cost what they did as
    // run, first steps included: high, never low.
    for (const n of [1, 3]) {
      const got = await ask({ steps: 500, n });
      expect(got.worker_seconds.median / w.truth(500, n), `500 steps × ${n}`).toBeGreaterThan(1);
      expect(got.worker_seconds.median / w.truth(500, n), `500 steps × ${n}`).toBeLessThan(3);
    }
    // An average over whole runs (the figure before) priced a 100-step job far high.
    expect(estimateSeconds(samples, { steps: 100, n: 1 })!.median / w.truth(100, 1)).toBeGreaterThan(1.5);
  });

  it("a stage's first steps cost more: a 500-step job is priced by the 500-step run, a 2-step job by the 2-step run", async () => {
    // The review's case: one 2-step run and one 500-step run, each stage's first step 4 steps' worth more.
    const d = (px: number) => 0.01 + 4e-7 * px;
    const w = world((px, k) => d(px) * (k + 4));
    const two = w.run(2, 1, 'two');
    const long = w.run(500, 1, 'long');
    await recordRunSample(h.blobs, at1024, two);
    await recordRunSample(h.blobs, at1024, long);
    const got500 = await ask({ steps: 500 });
    expect(got500).toMatchObject({ basis: null, runs: 2, worker_seconds: { p90: null } });
    expect(got500.worker_seconds.median / long.seconds).toBeCloseTo(1, 3);
    expect((await ask({ steps: 2 })).worker_seconds.median / two.seconds).toBeCloseTo(1, 3);
    // The average over whole runs put the 500-step job far above its run (the review measured 3×).
    expect(estimateSeconds([two, long], { steps: 500, n: 1 })!.median / long.seconds).toBeGreaterThan(1.3);
  });

  it('one run slower throughout (a busy machine) barely moves the median, and shows in the p90', async () => {
    const w = world((px, k) => (0.01 + 4e-7 * px) * (k + 4));
    const samples = [w.run(3, 1, 'a'), w.run(10, 2, 'b'), w.run(30, 1, 'c'), w.run(20, 4, 'd'), w.run(3, 4, 'e'), w.run(10, 1, 'f'), w.run(30, 1, 'slow', 3)];
    for (const s of samples) await recordRunSample(h.blobs, at1024, s);
    const got = await ask({ steps: 100 });
    expect(got.runs).toBe(7);
    expect(got.worker_seconds.median / w.truth(100, 1)).toBeCloseTo(1, 3);
    expect(got.worker_seconds.p90 / w.truth(100, 1)).toBeGreaterThan(1.3);
  });

  it('short runs slower and long ones faster (a busier machine earlier) price a longer job less low: the p90 takes the slopes\' spread too, and a job far past the runs is priced as they ran', async () => {
    // The review's probe: runs of 3 and 5 steps 10 % slow, of 20 and 30 steps 10 % fast. The median
    // slope alone priced a 500-step job at 0.65× its cost, p90 included.
    const w = world((px, k) => (0.01 + 4e-7 * px) * (k + 4));
    const samples = [w.run(3, 1, 'a', 1.1), w.run(5, 1, 'b', 1.1), w.run(10, 1, 'c'), w.run(20, 1, 'd', 0.9), w.run(30, 1, 'e', 0.9)];
    for (const s of samples) await recordRunSample(h.blobs, at1024, s);
    // Within reach the line is still stretched 3×: the p90 comes out at 0.83× here (the median 0.75×),
    // the price of pricing from runs this short; beyond reach, as run.
    const within = await ask({ steps: 100 });
    expect(within.worker_seconds.p90 / w.truth(100, 1)).toBeGreaterThan(0.8);
    expect(within.worker_seconds.p90).toBeGreaterThan(within.worker_seconds.median);
    const far = await ask({ steps: 500 });
    expect(far.worker_seconds.median / w.truth(500, 1)).toBeGreaterThan(1);
    expect(far.worker_seconds.p90 / w.truth(500, 1)).toBeGreaterThan(1);
  });

  it('a stage size that no run timed (short runs skip stages) is interpolated by its pixels between the sizes timed', async () => {
    // A step's cost grows with its pixels; 3-step runs time 224 and 1024 px only, 2-step runs 1024 px only.
    const w = world((px, k) => (0.01 + 4e-7 * px) * k);
    for (const [i, [steps, n]] of ([[3, 1], [3, 2], [2, 1]] as const).entries()) await recordRunSample(h.blobs, at1024, w.run(steps, n, `r${i}`));
    expect(new Set(schedule(3).map((st) => st.width))).toEqual(new Set([224, 1024]));
    const got = await ask({ steps: 500, n: 2 });
    expect(got.worker_seconds.median).toBeCloseTo(w.truth(500, 2), 2);
  });

  it('runs of the very steps asked for give the figures they always gave (median and p90 over the runs)', async () => {
    // Six 100-step runs, some slower throughout (a busier machine), one twice as slow.
    const w = world((px, k) => (0.02 + 3e-7 * px) * k);
    const samples = [1, 1.1, 0.9, 1.3, 1.05, 2].map((slow, i) => w.run(100, 1, `s${i}`, slow));
    for (const s of samples) await recordRunSample(h.blobs, at1024, s);
    const got = await ask({ steps: 100, n: 2 });
    const before = estimateSeconds(samples, { steps: 100, n: 2 })!;
    expect(got).toMatchObject({ basis: null, runs: 6 });
    expect(got.worker_seconds.median).toBeCloseTo(before.median, 3);
    expect(got.worker_seconds.p90).toBeCloseTo(before.p90!, 3);
    expect(got.worker_seconds.p90).toBeGreaterThan(got.worker_seconds.median * 1.2);
  });

  it('runs recorded before stage timings (no stages) are left out once timed runs exist, and priced as before without any', async () => {
    const w = world((px, k) => (0.02 + 3e-7 * px) * k);
    const untimed = { seconds: 100, loopSeconds: 99, steps: 10, n: 1, at: new Date().toISOString(), job: 'old' }; // 9.9 s a step
    await recordRunSample(h.blobs, at1024, untimed);
    expect((await ask({ steps: 500 })).worker_seconds.median).toBeCloseTo(1 + 500 * 9.9, 2);
    await recordRunSample(h.blobs, at1024, w.run(30, 1, 'new'));
    const got = await ask({ steps: 500 });
    expect(got.runs).toBe(1);
    expect(got.worker_seconds.median).toBeCloseTo(w.truth(500, 1), 2);
  });
});
