// The CLIPAG recipe on the project's tiny model: the loss falls, similarity rises, negative prompts
// push away, seeds reproduce bit for bit, multi-scale gives the requested size, abort stops within a
// step, the augmentations' gradients pass a finite-difference check, and bad input fails before compute.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';
import { decodeImage, encodePng, resizeCover, solidImage, squareCropsCovering } from '../../../gpu-worker/engine/synth/image.ts';
import { augmentViews, stepGraph } from '../../../gpu-worker/engine/synth/step-graph.ts';
import { createSession } from '../../../gpu-worker/engine/runtime/session.ts';
import { encodeModel } from '../../../gpu-worker/engine/onnx/codec.ts';
import { AdamW, MAX_PROMPT_WEIGHT, type SynthRequest, addContentLoss, normalizePromptWeights, clipGradNorm, dynamicThreshold, planViews, quantileAbsCentered, synthesize } from '../../../gpu-worker/engine/synth/synthesize.ts';
import { Rng } from '../../../gpu-worker/engine/synth/rng.ts';
import { DEFAULT_RECIPE, STYLE_CONTENT_WEIGHT, STYLE_RECIPE, defaultSchedule } from '../../../gpu-worker/engine/synth/recipe.ts';
import { fillViewOperators } from '../../../gpu-worker/engine/synth/resample.ts';
import { tensor } from '../../../gpu-worker/engine/onnx/ir.ts';
import { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { runModel } from '../../../gpu-worker/engine/runtime/session.ts';
import { makeTinyBundle } from '../../helpers/bundle.ts';
import { gradCheck, normal, rng } from '../autodiff/fd.ts';
import { REPO_ROOT } from '../../../cli/common.ts';

const PRIOR = join(REPO_ROOT, 'models', 'test-prior', 'prior.safetensors');
const FAST = { globalViews: 8, patchViews: 8, initSamples: 64 };

let engine: ClipEngine;
beforeAll(async () => {
  engine = await ClipEngine.open(makeTinyBundle('quickgelu', { prior: PRIOR }), { threads: 2 });
});
afterAll(async () => engine?.close());

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('synthesis on the tiny model', () => {
  it('default recipe (32+32 views, GMM init): loss falls and the prompt similarity rises', async () => {
    const res = await synthesize(engine, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 7, recipe: { steps: 40, initSamples: 256 } });
    expect(res.stepsDone).toBe(40);
    expect(mean(res.lossHistory.slice(-5))).toBeLessThan(mean(res.lossHistory.slice(0, 5)));
    expect(res.scores[0].cosine).toBeGreaterThan(res.initialScores[0].cosine + 0.01);
    expect(res.usage.encoderBackwardPasses).toBe(40 * 64);
    expect(res.frames.map((f) => f.step)).toEqual([0, 10, 20, 30]);
    const png = decodeImage(res.png);
    expect([png.width, png.height]).toEqual([32, 32]);
    expect(res.bestLoss).toBe(Math.min(...res.lossHistory));
    // The PNG is encoded when first read (a JPEG or WebP job never reads it), once: the same bytes after.
    expect(Object.getOwnPropertyDescriptor(res, 'png')?.get).toBeTypeOf('function');
    expect(res.png).toBe(res.png);
    expect(Buffer.from(res.png).equals(Buffer.from(encodePng(res.image)))).toBe(true);
  });

  it('a negative prompt lowers its own similarity', async () => {
    const base: SynthRequest = { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 3, init: { kind: 'noise' }, recipe: { steps: 30, ...FAST } };
    // Weight 0 keeps the prompt in the run (same views, same RNG draws) without any pull.
    const without = await synthesize(engine, { ...base, prompts: [...base.prompts, { text: 'a diagram of a red circle', weight: 0 }] });
    const withNeg = await synthesize(engine, { ...base, prompts: [...base.prompts, { text: 'a diagram of a red circle', weight: -1 }] });
    expect(withNeg.scores[1].cosine).toBeLessThan(without.scores[1].cosine - 0.03);
    expect(withNeg.scores[1].cosine).toBeLessThan(withNeg.initialScores[1].cosine);
  });

  it('the same seed reproduces the PNG bit for bit; another seed differs', async () => {
    const req: SynthRequest = { prompts: [{ text: 'a diagram of a red circle', weight: 1 }], width: 32, height: 32, seed: 11, recipe: { steps: 8, ...FAST } };
    const a = await synthesize(engine, req);
    const b = await synthesize(engine, req);
    const c = await synthesize(engine, { ...req, seed: 12 });
    expect(Buffer.from(a.png).equals(Buffer.from(b.png))).toBe(true);
    expect(Buffer.from(a.png).equals(Buffer.from(c.png))).toBe(false);
  });

  it('the same seed makes the same PNG whatever the engine\'s thread count (1 or 2), and on an engine opened afresh', async () => {
    const req: SynthRequest = { prompts: [{ text: 'a diagram of a red circle', weight: 1 }], width: 32, height: 32, seed: 21, recipe: { steps: 4, ...FAST } };
    const twoThreads = await synthesize(engine, req);
    const single = await ClipEngine.open(makeTinyBundle('quickgelu', { prior: PRIOR }), { threads: 1 });
    try {
      const oneThread = await synthesize(single, req);
      expect(Buffer.from(oneThread.png).equals(Buffer.from(twoThreads.png))).toBe(true);
    } finally {
      await single.close();
    }
  });

  it('the step graph\'s noise bank is drawn only when its graph is built, not again on a run that leases it warm', async () => {
    const { vi } = await import('vitest');
    const fills = vi.spyOn(Rng.prototype, 'fillNormal');
    try {
      const req: SynthRequest = { prompts: [{ text: 'a diagram of a red circle', weight: 1 }], width: 40, height: 40, seed: 3, recipe: { steps: 2, ...FAST } };
      const bankDraws = () => fills.mock.calls.filter(([out]) => out.length === 16 * 3 * engine.imageSize ** 2).length;
      const first = await synthesize(engine, req);
      expect(bankDraws()).toBe(1); // a size no earlier test ran: its graph is built here
      const again = await synthesize(engine, req);
      expect(bankDraws()).toBe(1);
      expect(Buffer.from(again.png).equals(Buffer.from(first.png))).toBe(true); // the same bank as before
    } finally {
      fills.mockRestore();
    }
  });

  it('multi-scale: a 64×48 request runs coarse-to-fine and returns 64×48', async () => {
    const schedule = defaultSchedule(64, 48, 12, 32);
    expect(schedule.map((s) => [s.width, s.height])).toEqual([[32, 24], [64, 48]]);
    const sizes: number[] = [];
    const res = await synthesize(engine, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 64, height: 48, seed: 1, init: { kind: 'noise' }, recipe: { steps: 12, ...FAST } }, {
      onProgress: (p) => sizes.push(p.stage),
    });
    expect(new Set(sizes)).toEqual(new Set([1, 2]));
    const png = decodeImage(res.png);
    expect([png.width, png.height]).toEqual([64, 48]);
    // Each stage is timed on its own (what prices sizes never run): the schedule's sizes and steps, inside the optimize time.
    expect(res.usage.stages.map(({ width, height, steps }) => ({ width, height, steps }))).toEqual(schedule);
    expect(res.usage.stages.every((st) => st.ms > 0)).toBe(true);
    expect(res.usage.stages.reduce((t, st) => t + st.ms, 0)).toBeLessThanOrEqual(res.usage.timingsMs.optimize - res.usage.timingsMs.compile);
  });

  it('a narrow request (8:1) runs: every coarse stage keeps sides of at least 16', async () => {
    expect(defaultSchedule(1024, 64, 10, 64).every((st) => st.width >= 16 && st.height >= 16 && st.width % 8 === 0 && st.height % 8 === 0)).toBe(true);
    const res = await synthesize(engine, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 256, height: 32, seed: 1, init: { kind: 'noise' }, recipe: { steps: 4, ...FAST } });
    expect([decodeImage(res.png).width, decodeImage(res.png).height]).toEqual([256, 32]);
    // The score covers the whole strip: the mean cosine over the 8 square windows of the output, not
    // its centre alone. Recomputed here from the PNG (8-bit, hence the tolerance).
    const out = decodeImage(res.png);
    const { unit: text } = await engine.embedText(['a photo of a cat']);
    const E = text.length;
    const windowCosines = [];
    for (const w of squareCropsCovering(out)) {
      const u = await engine.embedPixels(resizeCover(w, engine.imageSize, engine.imageSize).data, 1, 1);
      windowCosines.push(u.reduce((acc, x, i) => acc + x * text[i]!, 0));
    }
    expect(windowCosines).toHaveLength(8);
    expect(res.scores[0]!.cosine).toBeCloseTo(mean(windowCosines), 2);
  });

  it('per-size step graphs are kept least-recently-used: beyond the limit the oldest idle one is unloaded', async () => {
    const small = await ClipEngine.open(makeTinyBundle('quickgelu'), { threads: 1, maxLeasedGraphs: 2 });
    try {
      const run = (width: number, height: number) =>
        synthesize(small, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width, height, seed: 1, init: { kind: 'noise' }, recipe: { steps: 1, ...FAST } });
      const a = await run(32, 32);
      await run(32, 24);
      await run(24, 32);
      expect(small.leasedGraphs.map((k) => k.split(':step:')[1].split(':')[0])).toEqual(['24x32', '32x24']);
      // the unloaded size loads again, and gives the same image
      const again = await run(32, 32);
      expect(Buffer.from(again.png).equals(Buffer.from(a.png))).toBe(true);
      expect(small.leasedGraphs).toHaveLength(2);
    } finally {
      await small.close();
    }
  });

  it('abort stops within one step and returns what exists', async () => {
    const ac = new AbortController();
    const res = await synthesize(engine, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 1, init: { kind: 'noise' }, recipe: { steps: 50, ...FAST } }, {
      signal: ac.signal,
      onProgress: (p) => p.step === 3 && ac.abort(),
    });
    expect(res.aborted).toBe(true);
    expect(res.stepsDone).toBe(3);
    expect(decodeImage(res.png).width).toBe(32);
  });

  it('abort is honoured during the start search too: no more encoder batches, no step, no scoring', async () => {
    const ac = new AbortController();
    let batches = 0;
    const watched = new Proxy(engine, {
      get: (t, p, r) =>
        p === 'embedPixels'
          ? async (...args: Parameters<ClipEngine['embedPixels']>) => {
              batches++;
              const out = await t.embedPixels(...args);
              ac.abort(); // a cancel arrives during the first batch
              return out;
            }
          : Reflect.get(t, p, r),
    });
    const res = await synthesize(watched, { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 1, init: { kind: 'gmm', priorPath: PRIOR }, recipe: { steps: 50, ...FAST, initSamples: 640 } }, { signal: ac.signal });
    expect(res).toMatchObject({ aborted: true, stepsDone: 0 });
    expect(batches).toBe(1); // of the 40 the search would take
    expect(res.usage.encoderPasses).toBe(16);
  });

  it('GMM sampling yields to the event loop: a timer set during it fires at once, and an abort during it ends the run promptly', async () => {
    const ac = new AbortController();
    let batches = 0;
    const watched = new Proxy(engine, {
      get: (t, p, r) => (p === 'embedPixels' ? (...args: Parameters<ClipEngine['embedPixels']>) => (batches++, t.embedPixels(...args)) : Reflect.get(t, p, r)),
    });
    const req: SynthRequest = { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 1, init: { kind: 'gmm', priorPath: PRIOR }, recipe: { steps: 50, ...FAST, initSamples: 8000 } };
    // 8000 samples are ~4 s of sampling on a 2-core machine: before sampling yielded, the timer fired only then.
    let abortedAt = 0;
    const t0 = performance.now();
    setTimeout(() => {
      abortedAt = performance.now();
      ac.abort();
    }, 50);
    const res = await synthesize(watched, req, { signal: ac.signal });
    const end = performance.now();
    expect(abortedAt - t0).toBeLessThan(500);
    expect(end - abortedAt).toBeLessThan(300);
    expect(res).toMatchObject({ aborted: true, stepsDone: 0 });
    expect(batches).toBe(0); // sampling never finished, so the start search never began
    expect(res.usage.encoderPasses).toBe(0);
  });

  it('init image with strength keeps content (strength 0 starts from the image)', async () => {
    const red = solidImage(32, 32, [0.9, 0.1, 0.1]);
    const req = { prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 32, height: 32, seed: 1, init: { kind: 'image' as const, image: red, strength: 0 }, contentWeight: 50, recipe: { steps: 5, ...FAST } };
    const res = await synthesize(engine, req, { keepInitial: true });
    const img = res.image.data;
    const meanR = mean(Array.from(img.subarray(0, 1024))), meanG = mean(Array.from(img.subarray(1024, 2048)));
    expect(meanR).toBeGreaterThan(meanG + 0.3); // still red
    // keepInitial returns the start image itself (strength 0: the init image), not the result.
    expect(Array.from(res.initialImage!.data)).toEqual(Array.from(red.data));
    expect(Array.from(res.image.data)).not.toEqual(Array.from(red.data));
    expect((await synthesize(engine, req)).initialImage).toBeUndefined();
  });
});

describe('init image through multi-scale', () => {
  it('strength 0 keeps a larger init image sharp: finer stages add back the detail the coarse stage lacked', async () => {
    // A 2-px checkerboard at 64×64: the tiny model (32 px) starts at 32×32, where it averages to grey.
    const board = solidImage(64, 64, [0, 0, 0]);
    for (let y = 0; y < 64; y++) for (let x = 0; x < 64; x++) if ((Math.floor(x / 2) + Math.floor(y / 2)) % 2 === 0) for (let c = 0; c < 3; c++) board.data[c * 4096 + y * 64 + x] = 1;
    const res = await synthesize(engine, {
      prompts: [{ text: 'a photo of a cat', weight: 1 }], width: 64, height: 64, seed: 1,
      init: { kind: 'image', image: board, strength: 0 }, recipe: { steps: 2, lr: 1e-6, ...FAST },
    });
    expect(res.stepsDone).toBe(2);
    let se = 0;
    for (let i = 0; i < board.data.length; i++) se += (res.image.data[i] - board.data[i]) ** 2;
    const psnr = 10 * Math.log10(1 / (se / board.data.length));
    expect(psnr).toBeGreaterThan(30); // without the detail carried over: 6.7 dB (close to grey)
  });
});

describe('style transfer (CLIPStyler-like preset)', () => {
  it('the content-preservation loss keeps the output closer to the content image', async () => {
    const content = solidImage(32, 32, [0.2, 0.6, 0.9]);
    const base: SynthRequest = { prompts: [{ text: 'a diagram of a red circle', weight: 1 }], width: 32, height: 32, seed: 4, init: { kind: 'image', image: content, strength: 0 }, recipe: { ...STYLE_RECIPE, steps: 25, ...FAST, lr: 0.05 } };
    const dist = (img: Float32Array) => Math.sqrt(img.reduce((a, v, i) => a + (v - content.data[i]) ** 2, 0) / img.length);
    const free = await synthesize(engine, { ...base, contentWeight: 0 });
    const kept = await synthesize(engine, { ...base, contentWeight: STYLE_CONTENT_WEIGHT });
    expect(dist(kept.image.data)).toBeLessThan(dist(free.image.data));
  });
});

describe('bad input fails before any compute', () => {
  const ok: SynthRequest = { prompts: [{ text: 'a cat', weight: 1 }], width: 32, height: 32, seed: 1 };
  it.each([
    ['empty prompt', { prompts: [{ text: '  ', weight: 1 }] }, /empty/],
    ['over-long prompt', { prompts: [{ text: 'x'.repeat(1001), weight: 1 }] }, /limit/],
    ['all-zero weights', { prompts: [{ text: 'a cat', weight: 0 }] }, /positive weight/],
    ['size not a multiple of 8', { width: 30 }, /multiple of 8/],
    ['size too large', { width: 4096, height: 4096 }, /2048|pixels/],
    ['steps out of bounds', { recipe: { steps: 0 } }, /steps/],
    ['steps too many', { recipe: { steps: 5000 } }, /steps/],
    ['a switch that is not true or false', { recipe: { colorOnImage: 'yes' as never } }, /color_on_image must be true or false/],
    ['strength out of range', { init: { kind: 'image', image: solidImage(8, 8, [0, 0, 0]), strength: 2 } }, /strength/],
    ['a non-finite weight', { prompts: [{ text: 'a cat', weight: Number.POSITIVE_INFINITY }] }, /prompt weights must be finite numbers/],
    ['a negative weight of -1e308 against 1', { prompts: [{ text: 'a cat', weight: 1 }, { text: 'a dog', weight: -1e308 }] }, /prompt 2's weight -1e\+308 is more than 1000000 times/],
    ['a negative weight a million times the positive ones', { prompts: [{ text: 'a cat', weight: 1e-300 }, { text: 'a dog', weight: -1000 }] }, /prompt 2's weight -1000 is more than 1000000 times the positive weights together/],
  ] as [string, Partial<SynthRequest>, RegExp][])('%s', async (_name, patch, msg) => {
    const err = await synthesize(engine, { ...ok, ...patch }).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.code).toBe('invalid_input');
    expect(err.message).toMatch(msg);
  });

  it('prompt weights are normalized by the positive ones\' sum; the largest allowed ones and tiny ones stay finite; the bound is the API\'s', () => {
    expect(normalizePromptWeights([1])).toEqual([1]);
    expect(normalizePromptWeights([3, 1, -2])).toEqual([3 / 4, 1 / 4, -2 / 4]);
    const big = normalizePromptWeights([MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT, -MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT, MAX_PROMPT_WEIGHT]);
    expect(big.every((w) => Number.isFinite(Math.fround(w)))).toBe(true);
    expect(big[0]).toBeCloseTo(1 / 7, 12);
    const tiny = normalizePromptWeights([1e-320, 3e-320, -1e-320]); // a denormal sum: scaled first
    expect(tiny.map((w) => Number(w.toPrecision(2)))).toEqual([0.25, 0.75, -0.25]);
    expect(MAX_PROMPT_WEIGHT).toBe(1000);
    // Past the API's bound, as the worker derives them (three prompts of 1000 and a negative one at half
    // their sum, -1500) or as a job stored before the bound holds them: relative, so they run.
    expect(normalizePromptWeights([1000, 1000, 1000, -1500])).toEqual([1 / 3, 1 / 3, 1 / 3, -0.5]);
    // A sum that overflows (1e308 twice was Infinity: every prompt at weight 0) is scaled first.
    expect(normalizePromptWeights([1e308, 1e308, -1e308])).toEqual([0.5, 0.5, -0.5]);
  });

  it('a corrupt prior file is refused', async () => {
    const bad = join(engine.bundle.dir, 'corrupt-prior.safetensors');
    writeFileSync(bad, Buffer.from('this is not a safetensors file at all'));
    const err = await synthesize(engine, { ...ok, init: { kind: 'gmm', priorPath: bad } }).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.code).toBe('invalid_model');
  });
});

describe('augmentation gradients (finite differences, float64)', () => {
  it.each([true, false])('crop/resize/flip operators, colour (on the image first: %s), cutout and noise: d(views)/d(image)', async (colorOnImage) => {
    const V = 3, S = 8, H = 12, W = 10, M = 2;
    const rows = new Float64Array(V * S * H), cols = new Float64Array(V * W * S);
    const wins = [
      { x: -1.5, y: 0.5, size: 11, flip: false },
      { x: 2, y: 3, size: 6.5, flip: true },
      { x: 0, y: 0, size: 10, flip: false },
    ];
    wins.forEach((w, v) => fillViewOperators(rows, v * S * H, cols, v * W * S, S, H, W, w));
    const r = await gradCheck({
      dtype: 'float64',
      vars: [{ name: 'image', shape: [1, 3, H, W], lo: 0, hi: 1 }],
      directions: 6,
      build: (b, v, c) => {
        const k = (name: string, dims: number[], data: number[]) => b.constant(tensor('float64', dims, data), name);
        return augmentViews(b, {
          image: v.image,
          rows: b.constant({ dtype: 'float64', dims: [V, 1, S, H], data: rows }, 'rows'),
          colsT: b.constant({ dtype: 'float64', dims: [V, 1, W, S], data: cols }, 'cols'),
          bright: k('b', [V, 1, 1, 1], [0.2, -0.3, 0.1]),
          sat: k('s', [V, 1, 1, 1], [1.5, 0.3, 1.0]),
          con: k('c', [V, 1, 1, 1], [0.7, 1.4, 1.0]),
          cutR: k('cr', [V, 1, S, 1], Array.from({ length: V * S }, (_, i) => (i % S >= 2 && i % S < 6 ? 1 : 0))),
          cutC: k('cc', [V, 1, 1, S], Array.from({ length: V * S }, (_, i) => (i % S >= 3 && i % S < 7 ? 1 : 0))),
          noiseIdx: b.constant(tensor('int64', [V], [1, 0, 1]), 'ni'),
          noiseScale: k('ns', [V, 1, 1, 1], [0.01, -0.01, 0.01]),
          bank: c.rand([M, 3, S, S]),
          // Pivots: the whole image for view 0, a rectangle for views 1 and 2 (as a patch view's crop).
          ...(colorOnImage
            ? {
                pivot: {
                  rows: k('pr', [V, 1, 1, H], [...new Array(H).fill(1 / H), ...Array.from({ length: 2 * H }, (_, i) => ((i % H) >= 3 && (i % H) < 9 ? 1 / 6 : 0))]),
                  cols: k('pc', [V, 1, W, 1], [...new Array(W).fill(1 / W), ...Array.from({ length: 2 * W }, (_, i) => ((i % W) >= 2 && (i % W) < 7 ? 1 / 5 : 0))]),
                },
              }
            : {}),
        });
      },
    });
    expect(r.maxError).toBeLessThan(1e-7);
  });

  it("colour first is exactly the notebook's order: colour the image (a global view) or the crop (a patch view, pivoting on the crop's mean), then crop; the zero border stays black", async () => {
    const V = 2, S = 8, H = 12, W = 10;
    const rows = new Float64Array(V * S * H), cols = new Float64Array(V * W * S);
    const wins = [{ x: -2.5, y: -1, size: 14, flip: false }, { x: 1, y: 2, size: 7, flip: true }]; // a zoom-out with a border, and a crop
    wins.forEach((w, v) => fillViewOperators(rows, v * S * H, cols, v * W * S, S, H, W, w));
    const r = rng(5);
    const img = Float64Array.from({ length: 3 * H * W }, () => r());
    const [bright, sat, con] = [[0.2, -0.3], [1.5, 0.3], [0.7, 1.4]];
    const b = new GraphBuilder('colour_order');
    const image = b.input('image', 'float64', [1, 3, H, W]);
    const k = (name: string, data: number[], dims = [V, 1, 1, 1]) => b.constant(tensor('float64', dims, data), name);
    b.output(b.op1('Identity', [augmentViews(b, {
      image, rows: b.constant({ dtype: 'float64', dims: [V, 1, S, H], data: rows }, 'rows'), colsT: b.constant({ dtype: 'float64', dims: [V, 1, W, S], data: cols }, 'cols'),
      bright: k('b', bright), sat: k('s', sat), con: k('c', con),
      cutR: k('cr', new Array(V * S).fill(0), [V, 1, S, 1]), cutC: k('cc', new Array(V * S).fill(0), [V, 1, 1, S]),
      noiseIdx: b.constant(tensor('int64', [V], [0, 0]), 'ni'), noiseScale: k('ns', [0, 0]), bank: b.constant(tensor('float64', [1, 3, S, S], new Array(3 * S * S).fill(0)), 'bank'),
      // View 0 pivots on the whole image; view 1 on rows 2–7 and columns 1–6, as a patch on its crop.
      pivot: {
        rows: k('pr', [...new Array(H).fill(1 / H), ...Array.from({ length: H }, (_, y) => (y >= 2 && y < 8 ? 1 / 6 : 0))], [V, 1, 1, H]),
        cols: k('pc', [...new Array(W).fill(1 / W), ...Array.from({ length: W }, (_, x) => (x >= 1 && x < 7 ? 1 / 6 : 0))], [V, 1, W, 1]),
      },
    })], {}, { outputNames: ['views'] }));
    const got = (await runModel(b.toModel(), { image: { dtype: 'float64', dims: [1, 3, H, W], data: img } }, { graphOptimizationLevel: 'basic' })).views!.data as Float64Array;
    for (let v = 0; v < V; v++) {
      // The notebook: brightness, saturation and contrast (about the whole image's mean) on the image...
      const coloured = img.map((x) => x + bright[v]!);
      for (let p = 0; p < H * W; p++) {
        const mean = (coloured[p]! + coloured[H * W + p]! + coloured[2 * H * W + p]!) / 3;
        for (let ch = 0; ch < 3; ch++) coloured[ch * H * W + p] = (coloured[ch * H * W + p]! - mean) * sat[v]! + mean;
      }
      // The pivot: the mean of the whole image (view 0) or of its rectangle (view 1), after brightness.
      let sum = 0, count = 0;
      for (let ch = 0; ch < 3; ch++)
        for (let y = 0; y < H; y++)
          for (let x = 0; x < W; x++) {
            if (v === 1 && !(y >= 2 && y < 8 && x >= 1 && x < 7)) continue;
            sum += coloured[ch * H * W + y * W + x]!;
            count++;
          }
      const all = sum / count;
      for (let i = 0; i < coloured.length; i++) coloured[i] = (coloured[i]! - all) * con[v]! + all;
      // ...then the crop: Ry·img·Rxᵀ, zero beyond the image.
      for (let ch = 0; ch < 3; ch++)
        for (let sy = 0; sy < S; sy++)
          for (let sx = 0; sx < S; sx++) {
            let want = 0;
            for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) want += rows[v * S * H + sy * H + y]! * coloured[ch * H * W + y * W + x]! * cols[v * W * S + x * S + sx]!;
            expect(got[((v * 3 + ch) * S + sy) * S + sx], `view ${v} channel ${ch} (${sy}, ${sx})`).toBeCloseTo(want, 10);
          }
    }
    // The zoom-out's corner lies beyond the image: black, as in the notebook (the colour-on-view order gave it the brightness).
    expect(got[0]).toBeCloseTo(0, 12);
  });
});

describe('the whole step graph (finite differences, float64)', () => {
  it("d(loss)/d(image) through views, the tiny tower, [V,K] prompt weights (one negative) and the cosine targets", async () => {
    const src = engine.towerSource();
    const S = src.arch.imageResolution, E = src.arch.embedDim;
    const V = 3, K = 2, M = 2, H = 40, W = 36;
    const r = rng(11);
    const model = stepGraph(src, { height: H, width: W, views: V, promptSlots: K, noiseBank: M, dtype: 'float64' }, Float32Array.from(normal(r, M * 3 * S * S)));
    // ORT's QuickGelu fusion has no float64 kernel: basic optimization only.
    const session = await createSession(encodeModel(model), { inputInfos: model.inputs, graphOptimizationLevel: 'basic', intraOpThreads: 1 });
    try {
      const rows = new Float64Array(V * S * H), cols = new Float64Array(V * W * S);
      [{ x: -2, y: 1, size: 34, flip: false }, { x: 5, y: 3, size: 20, flip: true }, { x: 0, y: 0, size: 36, flip: false }].forEach((w, v) =>
        fillViewOperators(rows, v * S * H, cols, v * W * S, S, H, W, w),
      );
      const f64 = (dims: number[], data: ArrayLike<number>) => ({ dtype: 'float64' as const, dims, data: Float64Array.from(data) });
      const unitRows = (n: number) => {
        const x = normal(r, n * E);
        for (let i = 0; i < n; i++) {
          const norm = Math.hypot(...x.slice(i * E, (i + 1) * E));
          for (let j = 0; j < E; j++) x[i * E + j]! /= norm;
        }
        return x;
      };
      const fixed = {
        resample_rows: f64([V, 1, S, H], rows),
        resample_cols: f64([V, 1, W, S], cols),
        brightness: f64([V, 1, 1, 1], [0.1, -0.2, 0]),
        saturation: f64([V, 1, 1, 1], [1.3, 0.6, 1]),
        contrast: f64([V, 1, 1, 1], [0.8, 1.2, 1]),
        cutout_rows: f64([V, 1, S, 1], Array.from({ length: V * S }, (_, i) => (i % S >= 4 && i % S < 12 ? 0 : 1))),
        cutout_cols: f64([V, 1, 1, S], Array.from({ length: V * S }, (_, i) => (i % S >= 6 && i % S < 14 ? 0 : 1))),
        noise_index: { dtype: 'int64' as const, dims: [V], data: BigInt64Array.from([1n, 0n, 1n]) },
        noise_scale: f64([V, 1, 1, 1], [0.02, -0.01, 0]),
        targets: f64([V, K, E], unitRows(V * K)),
        weights: f64([V, K], [0.4, -0.2, 0.3, 0, 0.5, 0.25]), // a negative prompt's weight, an unused slot
        // The colour pivots: the whole image (a global view), then a crop's rows 5–24 and columns 4–23 (patch views).
        pivot_rows: f64([V, 1, 1, H], [...new Array(H).fill(1 / H), ...Array.from({ length: 2 * H }, (_, i) => (i % H >= 5 && i % H < 25 ? 1 / 20 : 0))]),
        pivot_cols: f64([V, 1, W, 1], [...new Array(W).fill(1 / W), ...Array.from({ length: 2 * W }, (_, i) => (i % W >= 4 && i % W < 24 ? 1 / 20 : 0))]),
      };
      const x = Float64Array.from({ length: 3 * H * W }, () => 0.2 + 0.6 * r());
      const run = async (image: Float64Array) => session.run({ ...fixed, image: f64([1, 3, H, W], image) }, ['loss', 'grad_image']);
      const at = await run(x);
      const grad = at.grad_image!.data as Float64Array;
      const loss = async (image: Float64Array) => ((await run(image)).loss!.data as Float64Array)[0]!;
      const h = 1e-5;
      for (let k = 0; k < 4; k++) {
        // Dense random directions, and a sparse one (an error orthogonal to the gradient shows there).
        const d = k < 3 ? Float64Array.from(normal(r, x.length)) : Float64Array.from(x, (_, i) => (i % 97 === 5 ? (i % 2 ? 1 : -1) : 0));
        const numeric = ((await loss(x.map((v, i) => v + h * d[i]!))) - (await loss(x.map((v, i) => v - h * d[i]!)))) / (2 * h);
        const analytic = grad.reduce((t, g, i) => t + g * d[i]!, 0);
        expect(Math.abs(numeric - analytic) / Math.max(1e-8, Math.abs(analytic)), `direction ${k}: numeric ${numeric}, analytic ${analytic}`).toBeLessThan(1e-6);
      }
    } finally {
      await session.release();
    }
  });
});

describe('host-side pieces', () => {
  /** torch.quantile's 'linear' rule, from a full sort: the reference the selection-based quantile must match. */
  const sortedQuantile = (values: number[], p: number) => {
    const sorted = [...values].sort((a, b) => a - b);
    const pos = p * (sorted.length - 1);
    const lo = Math.floor(pos), hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
  };

  it('dynamic thresholding rescales by the quantile s > 1 (not a clamp), keeps pixels in [0,1], and is the identity on in-range images', () => {
    const x = Float32Array.from({ length: 1000 }, (_, i) => -0.5 + (2 * i) / 999); // |2x − 1| up to 2
    const before = Array.from(x);
    const s = sortedQuantile(before.map((v) => Math.abs(2 * v - 1)), 0.95);
    expect(s).toBeGreaterThan(1.5);
    dynamicThreshold(x, 0.95);
    before.forEach((v, i) => expect(x[i], `pixel ${i}`).toBeCloseTo((Math.min(s, Math.max(-s, 2 * v - 1)) / s + 1) / 2, 5));
    // In range but compressed: 0.9 becomes (0.8 / s + 1) / 2, where a clamp would keep it.
    expect(x[Math.round(((0.9 + 0.5) * 999) / 2)]).toBeLessThan(0.75);
    const y = Float32Array.from({ length: 100 }, (_, i) => i / 99);
    const inRange = Float32Array.from(y);
    dynamicThreshold(y, 0.95);
    expect(Array.from(y)).toEqual(Array.from(inRange).map((v) => Math.fround(v)));
  });

  it('the quantile interpolates linearly between order statistics (torch.quantile)', () => {
    // |2x − 1| = 0.96, 0.74, 0.4, 0.22, 0.76, 0.94, 0.1; sorted 0.1, 0.22, 0.4, 0.74, 0.76, 0.94, 0.96.
    const x = Float32Array.from([0.02, 0.13, 0.3, 0.61, 0.88, 0.97, 0.45]);
    expect(quantileAbsCentered(x, 0.3)).toBeCloseTo(0.22 + (0.4 - 0.22) * 0.8, 6); // position 1.8
    expect(quantileAbsCentered(x, 0.95)).toBeCloseTo(0.94 + (0.96 - 0.94) * 0.7, 6); // position 5.7
    expect(quantileAbsCentered(x, 1)).toBeCloseTo(0.96, 6);
    expect(quantileAbsCentered(Float32Array.from([0.8]), 0.95)).toBeCloseTo(0.6, 6);
    // Many values, fractional positions, against the sort.
    const big = Float32Array.from({ length: 1001 }, (_, i) => ((i * 7919) % 1009) / 1008);
    for (const p of [0.5, 0.9, 0.95, 0.987]) expect(quantileAbsCentered(big, p), `p ${p}`).toBeCloseTo(sortedQuantile(Array.from(big, (v) => Math.abs(2 * v - 1)), p), 6);
  });

  it('AdamW follows torch.optim.AdamW: decoupled weight decay and bias-corrected moments', () => {
    const r = { lr: 0.05, betas: [0.9, 0.99] as [number, number], eps: 1e-8, weightDecay: 0.1 };
    // Step 1 moves each value by lr against its gradient's sign (m̂ = g, v̂ = g²), after the decay.
    const p = Float32Array.from([0.5, -0.2, 0.9]);
    const g = Float32Array.from([0.3, -2, 1e-3]);
    new AdamW(3, r).step(p, g);
    [0.5, -0.2, 0.9].forEach((p0, i) => expect(p[i]).toBeCloseTo(p0 * (1 - r.lr * r.weightDecay) - r.lr * Math.sign(g[i]!), 6));
    // Then step for step against the algorithm as torch documents it, in float64.
    const theta = [0.5, -0.2, 0.9], m = [0, 0, 0], v = [0, 0, 0];
    const q = Float32Array.from(theta);
    const opt = new AdamW(3, r);
    for (let t = 1; t <= 5; t++) {
      const grad = theta.map((_, i) => Math.sin(t * (i + 1)) * (i + 0.5));
      opt.step(q, Float32Array.from(grad));
      for (let i = 0; i < 3; i++) {
        theta[i]! -= r.lr * r.weightDecay * theta[i]!;
        m[i] = r.betas[0] * m[i]! + (1 - r.betas[0]) * grad[i]!;
        v[i] = r.betas[1] * v[i]! + (1 - r.betas[1]) * grad[i]! ** 2;
        const mHat = m[i]! / (1 - r.betas[0] ** t), vHat = v[i]! / (1 - r.betas[1] ** t);
        theta[i]! -= (r.lr * mHat) / (Math.sqrt(vHat) + r.eps);
      }
      theta.forEach((want, i) => expect(q[i], `step ${t}, value ${i}`).toBeCloseTo(want, 5));
    }
  });

  it('the default recipe is the notebook\'s: its gradient is clipped to norm 0.001 every step (normalized-gradient AdamW)', () => {
    expect(DEFAULT_RECIPE).toMatchObject({ steps: 100, lr: 0.0175, gradClip: 0.001, globalViews: 32, patchViews: 32, globalWeight: 1, patchWeight: 5, resize: [0.8, 1.2], translation: 0.125, cutout: 0.5, noiseStd: 0.01, thresholdPercentile: 0.95, initSamples: 1000, flip: false });
    const g = Float32Array.from([3, 4, 0]); // norm 5
    clipGradNorm(g, DEFAULT_RECIPE.gradClip);
    expect(Math.hypot(...g)).toBeCloseTo(0.001, 9);
    expect(g[0]! / g[1]!).toBeCloseTo(0.75, 6); // the direction kept
    const small = Float32Array.from([3e-4, 4e-4]);
    clipGradNorm(small, DEFAULT_RECIPE.gradClip);
    expect(Array.from(small)).toEqual([Math.fround(3e-4), Math.fround(4e-4)]); // under the norm: untouched
  });

  it('patch views are zoomed and shifted crops (the notebook runs DiffAugment on them too)', () => {
    const H = 448, W = 448;
    const plan = planViews(Rng.fromSeed(3), { ...DEFAULT_RECIPE, globalViews: 0, patchViews: 400 }, H, W);
    const patch = (W * 128) / 224;
    const sizes = plan.windows.map((w) => w.size);
    expect(Math.min(...sizes)).toBeGreaterThanOrEqual(patch / 1.2 - 1e-9);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(patch / 0.8 + 1e-9);
    expect(Math.max(...sizes) - Math.min(...sizes)).toBeGreaterThan(patch * 0.3); // zooms drawn across the range
    for (const w of plan.windows) {
      // The window's centre is a crop's centre, shifted by at most 0.125 of the crop.
      const [cx, cy] = [w.x + w.size / 2, w.y + w.size / 2];
      for (const c of [cx, cy]) {
        expect(c).toBeGreaterThanOrEqual(patch / 2 - 0.125 * patch - 1e-9);
        expect(c).toBeLessThanOrEqual(W - patch / 2 + 0.125 * patch + 1e-9);
      }
    }
    expect(Array.from(plan.weights).every((x) => Math.abs(x - 5 / 400) < 1e-7)).toBe(true);
    // Each window is its crop (the colour pivot), zoomed about the crop's centre shifted by at most 0.125 of the crop.
    plan.windows.forEach((w, i) => {
      const crop = plan.pivots[i]!;
      expect(crop.x1 - crop.x0).toBeCloseTo(patch, 9);
      expect(Math.abs(w.x + w.size / 2 - (crop.x0 + crop.x1) / 2)).toBeLessThanOrEqual(0.125 * patch + 1e-9);
      expect(Math.abs(w.y + w.size / 2 - (crop.y0 + crop.y1) / 2)).toBeLessThanOrEqual(0.125 * patch + 1e-9);
    });
    // The shift: some window centres lie beyond where an unshifted crop's centre can be.
    const centres = plan.windows.flatMap((w) => [w.x + w.size / 2, w.y + w.size / 2]);
    expect(centres.some((c) => c < patch / 2 - 1 || c > W - patch / 2 + 1)).toBe(true);
    // Non-square, at a stage smaller than the encoder: windows keep the crop's share of the short side.
    const narrow = planViews(Rng.fromSeed(4), { ...DEFAULT_RECIPE, globalViews: 0, patchViews: 50 }, 112, 224);
    for (const w of narrow.windows) expect(w.size).toBeGreaterThanOrEqual((112 * 128) / 224 / 1.2 - 1e-9);
  });

  it("the content loss's gradient matches central differences", () => {
    const n = 48;
    const x = Float32Array.from({ length: n }, (_, i) => 0.5 + 0.4 * Math.sin(i * 1.3));
    const x0 = Float32Array.from({ length: n }, (_, i) => 0.5 + 0.3 * Math.cos(i * 0.7));
    const c = 0.7;
    const grad = new Float32Array(n);
    addContentLoss(x, x0, c, grad);
    const loss = (at: Float32Array) => addContentLoss(at, x0, c, new Float32Array(n));
    for (let k = 0; k < 4; k++) {
      const d = Float32Array.from({ length: n }, (_, i) => Math.sin((i + 1) * (k + 2) * 0.37));
      const h = 1e-2; // the loss is quadratic: central differences are exact but for rounding
      const shifted = (sign: number) => Float32Array.from(x, (v, i) => v + sign * h * d[i]!);
      const numeric = (loss(shifted(1)) - loss(shifted(-1))) / (2 * h);
      const analytic = grad.reduce((t, gi, i) => t + gi * d[i]!, 0);
      expect(Math.abs(numeric - analytic) / Math.max(1e-6, Math.abs(analytic)), `direction ${k}`).toBeLessThan(1e-3);
    }
  });
});

describe('default multi-scale schedule', () => {
  it.each([1, 2, 3, 4, 5, 7, 100])('with %i steps every stage has a step and the last stage is the output size', (steps) => {
    const s = defaultSchedule(224, 160, steps, 32);
    expect(s.reduce((a, x) => a + x.steps, 0)).toBe(steps);
    expect(s.every((x) => x.steps >= 1)).toBe(true);
    expect(s[s.length - 1]).toMatchObject({ width: 224, height: 160 });
    for (let i = 1; i < s.length; i++) expect(s[i].width).toBeGreaterThanOrEqual(s[i - 1].width);
  });

  it('the last stage has at least 2 steps whenever the run has 2 (its first scores the upsampled previous stage, its last update is never scored): fewer stages rather than a last stage of 1', () => {
    for (const [w, h, enc] of [[224, 160, 32], [1024, 1024, 64], [1024, 64, 64], [512, 384, 224]] as const) {
      for (let steps = 2; steps <= 40; steps++) {
        const s = defaultSchedule(w, h, steps, enc);
        const where = `${w}x${h} on ${enc}, ${steps} steps: ${JSON.stringify(s)}`;
        expect(s.reduce((a, x) => a + x.steps, 0), where).toBe(steps);
        expect(s.at(-1), where).toMatchObject({ width: w, height: h });
        expect(s.at(-1)!.steps, where).toBeGreaterThanOrEqual(2);
        expect(s.every((x) => x.steps >= 1), where).toBe(true);
      }
    }
    // 1024² on a 64 px model has 5 sizes: 3 steps keep the coarsest and the output; 4 steps the middle one too.
    expect(defaultSchedule(1024, 1024, 3, 64)).toEqual([{ width: 64, height: 64, steps: 1 }, { width: 1024, height: 1024, steps: 2 }]);
    expect(defaultSchedule(1024, 1024, 4, 64)).toEqual([{ width: 64, height: 64, steps: 1 }, { width: 256, height: 256, steps: 1 }, { width: 1024, height: 1024, steps: 2 }]);
    // The default 100 steps are split as before: 40 % on the first stage, the rest evenly.
    expect(defaultSchedule(1024, 1024, 100, 64).map((x) => x.steps)).toEqual([40, 15, 15, 15, 15]);
    expect(defaultSchedule(1024, 1024, 2, 64)).toEqual([{ width: 1024, height: 1024, steps: 2 }]);
  });
});
