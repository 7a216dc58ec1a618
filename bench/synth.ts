// Synthesis benchmark (issue 3, item 9). Not a test. Run: npm run bench:synth
//
// Seconds per image for the default recipe (32 global + 32 patch views, 100 steps, AdamW, thresholding,
// frames every 10 steps, GMM init from 1000 samples) on
//   - the tiny model (the reference fixture's random-weight tiny CLIP via test/helpers/bundle.ts, with the
//     project's test prior models/test-prior), all 100 steps measured;
//   - ViT-B/32 dims with random weights (a bundle written to a temp folder: safetensors from a fixed seed,
//     tokenizer built from the reference vocab), where only a few steps are measured and the per-step
//     time is extrapolated to 100 steps (step 1 is excluded as warm-up; the GMM init is measured with
//     fewer samples and extrapolated per sample). Every extrapolation is printed as such.
// Output 224×224 (one stage). Host overhead = optimize time outside session.run (pool round trip
// included in session.run, as synthesize() measures it) / optimize time, compile excluded.
// Env: BENCH_SYNTH_VITB_STEPS (default 4), BENCH_THREADS (default 2). The last line is one JSON object.

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PRESETS } from '../gpu-worker/engine/clip/arch.ts';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { type SynthRequest, synthesize } from '../gpu-worker/engine/synth/synthesize.ts';
import { DEFAULT_RECIPE } from '../gpu-worker/engine/synth/recipe.ts';
import { makeTinyBundle } from '../test/helpers/bundle.ts';
import { median, peakRssMb, r1, r3, randomBundle, runChild } from './common.ts';

const THREADS = Number(process.env.BENCH_THREADS ?? 2);
const VITB_STEPS = Number(process.env.BENCH_SYNTH_VITB_STEPS ?? 4);
const REPO = fileURLToPath(new URL('..', import.meta.url));
const TEST_PRIOR = join(REPO, 'models/test-prior/prior.safetensors');
const REPO_ROOT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..');
const PROMPT = 'a red apple on a wooden table';

interface SynthCase {
  model: 'tiny' | 'ViT-B-32';
  steps: number;
  initSamples: number;
}

interface SynthCaseResult {
  model: string;
  stepsMeasured: number;
  stepMs: number[];
  medianStepMs: number;
  sessionRunMsPerStep: number;
  hostMsPerStep: number;
  hostShare: number;
  timings: Record<string, number>;
  initSamples: number;
  initMsPerSample: number;
  prewarmMs: number;
  encoderPasses: number;
  peakRssMb: number;
  bundleMs: number;
}

async function runCase(c: SynthCase): Promise<SynthCaseResult> {
  const tb = performance.now();
  let dir: string;
  let cleanup = () => {};
  const prior = existsSync(TEST_PRIOR) ? TEST_PRIOR : undefined;
  if (c.model === 'tiny') {
    // The project's own small model (the embedded default) when present; else the reference tiny CLIP.
    dir = existsSync(join(REPO_ROOT_DIR, 'models', 'toy', 'manifest.json')) ? join(REPO_ROOT_DIR, 'models', 'toy') : makeTinyBundle('quickgelu', prior ? { prior } : {});
  } else {
    dir = mkdtempSync(join(tmpdir(), 'clipag-bench-vitb32-'));
    await randomBundle(PRESETS['ViT-B-32'], dir, 'bench/synth.ts');
    cleanup = () => rmSync(dir, { recursive: true, force: true });
  }
  const bundleMs = performance.now() - tb;
  const engine = await ClipEngine.open(dir, { threads: THREADS });
  try {
    const stepEnds: number[] = [];
    const req: SynthRequest = {
      prompts: [{ text: PROMPT, weight: 1 }],
      // The default recipe at the model's own input size (what clipag generate does without --size).
      width: engine.imageSize,
      height: engine.imageSize,
      seed: 7,
      init: engine.bundle.priorPath ? { kind: 'gmm' } : prior ? { kind: 'gmm', priorPath: prior } : { kind: 'noise' },
      // The notebook's views, also for bundles with their own recipe defaults (models/toy uses 16 + 0),
      // so that figures stay comparable across models and with earlier runs.
      recipe: { steps: c.steps, initSamples: c.initSamples, globalViews: DEFAULT_RECIPE.globalViews, patchViews: DEFAULT_RECIPE.patchViews },
    };
    // Compile the graphs the init and scoring use (text b1, image b16 and b1) first, so `init` per sample
    // is scoring time only; compile is a one-time cost per worker.
    const tw = performance.now();
    const R = engine.imageSize;
    await engine.embedText([PROMPT]);
    await engine.embedPixels(new Float32Array(16 * 3 * R * R), 16, 16);
    await engine.embedPixels(new Float32Array(3 * R * R), 1, 1);
    const prewarmMs = performance.now() - tw;
    const res = await synthesize(engine, req, { onProgress: (p) => stepEnds.push(p.elapsedMs) });
    const t = res.usage.timingsMs;
    // Per-step wall times from the progress callbacks; step 1 also pays graph compile/load, so drop it.
    const steps = stepEnds.map((e, i) => e - (i ? stepEnds[i - 1] : 0)).slice(1);
    const loopMs = t.optimize - t.compile;
    const host = loopMs - t.sessionRun;
    return {
      model: c.model, stepsMeasured: res.stepsDone, stepMs: steps.map(r1), medianStepMs: r1(median(steps)),
      sessionRunMsPerStep: r1(t.sessionRun / res.stepsDone), hostMsPerStep: r3(host / res.stepsDone), hostShare: r3(host / loopMs),
      timings: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, r1(v)])), initSamples: c.initSamples,
      initMsPerSample: r3(t.init / c.initSamples), prewarmMs: Math.round(prewarmMs), encoderPasses: res.usage.encoderPasses, peakRssMb: Math.round(peakRssMb()), bundleMs: Math.round(bundleMs),
    };
  } finally {
    await engine.close();
    cleanup();
  }
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--child');
  if (i >= 0) {
    console.log(JSON.stringify(await runCase(JSON.parse(process.argv[i + 1]) as SynthCase)));
    return;
  }
  const self = fileURLToPath(import.meta.url);
  const STEPS = DEFAULT_RECIPE.steps, SAMPLES = DEFAULT_RECIPE.initSamples;
  console.log(`clipag synthesis benchmark — default recipe (${DEFAULT_RECIPE.globalViews}+${DEFAULT_RECIPE.patchViews} views, ${STEPS} steps, GMM init ${SAMPLES} samples), at each model's own input size, ${THREADS} threads, CPU EP`);
  const tiny = await runChild<SynthCaseResult>(self, { model: 'tiny', steps: STEPS, initSamples: SAMPLES });
  const vitbSamples = 48;
  const vitb = await runChild<SynthCaseResult>(self, { model: 'ViT-B-32', steps: VITB_STEPS, initSamples: vitbSamples });

  const perImage = (r: SynthCaseResult) => {
    // One image = init (SAMPLES scored) + STEPS steps + final scoring/encoding; compile is a one-time cost per worker.
    const init = r.initMsPerSample * SAMPLES;
    const steps = r.medianStepMs * STEPS;
    const rest = r.timings.score + r.timings.encode * (r.stepsMeasured === STEPS ? 1 : STEPS / r.stepsMeasured);
    return { init, steps, rest, total: init + steps + rest };
  };
  const show = (label: string, r: SynthCaseResult, extrapolated: boolean) => {
    const p = perImage(r);
    console.log(`\n${label}`);
    console.log(`  steps measured: ${r.stepsMeasured}${extrapolated ? ` (per-step median of steps 2..${r.stepsMeasured}, extrapolated to ${STEPS})` : ''}; step times ms: ${r.stepMs.length > 12 ? `${r.stepMs.slice(0, 6).join(', ')} … (${r.stepMs.length})` : r.stepMs.join(', ')}`);
    console.log(`  median step ${r.medianStepMs} ms; session.run ${r.sessionRunMsPerStep} ms/step; host outside session.run ${r.hostMsPerStep} ms/step → ${r1(100 * r.hostShare)} % of the loop`);
    console.log(`  timings (ms, this run): ${Object.entries(r.timings).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    console.log(`  init: ${r.initSamples} GMM samples scored in ${r.timings.init} ms → ${r.initMsPerSample} ms/sample${r.initSamples !== SAMPLES ? ` (extrapolated to ${SAMPLES}: ${r1(p.init / 1000)} s)` : ''}`);
    console.log(`  per image: init ${r1(p.init / 1000)} s + ${STEPS} steps ${r1(p.steps / 1000)} s + score/encode ${r1(p.rest / 1000)} s = ${r1(p.total / 1000)} s (+ one-time compile: step graph ${r1(r.timings.compile / 1000)} s, text/image graphs ${r1(r.prewarmMs / 1000)} s); peak RSS ${r.peakRssMb} MB`);
    return p;
  };
  const pt = show('tiny model (reference fixture, 32 px encoder), 100 steps measured', tiny, false);
  const pv = show(`ViT-B/32 dims, random weights, ${vitb.stepsMeasured} steps measured`, vitb, true);
  console.log('\nGPU: no GPU machine was available to this benchmark; GPU figures come from running `npm run bench:synth` in the worker container on a GPU instance with the CUDA EP (device: cuda).');
  console.log(JSON.stringify({
    tiny_s_per_image: r3(pt.total / 1000),
    tiny_step_ms: tiny.medianStepMs,
    tiny_host_share: tiny.hostShare,
    vitb32_s_per_image: r1(pv.total / 1000),
    vitb32_s_per_image_extrapolated: true,
    vitb32_step_ms: vitb.medianStepMs,
    vitb32_steps_measured: vitb.stepsMeasured,
    vitb32_host_share: vitb.hostShare,
    vitb32_init_s: r1(pv.init / 1000),
    threads: THREADS,
  }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
