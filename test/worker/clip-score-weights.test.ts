// Prompt weights are relative (extremes review F1, F2): a job's clip_score, which the output check's
// above_prompt_by rules are judged against, and its negative prompt's pull must be the same whether
// its weights are 1 or 5e-324. The API refuses |weight| < 1e-6 now, but jobs stored before that, and
// the engine API's callers, still reach the worker with them. Real engine (the tiny reference CLIP).
import { rmSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { compileOutputScreen } from '../../shared/prompt-policy.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { NEGATIVE_PROMPT_WEIGHT, clipScore, createEngineSynthesizer, toSynthRequests } from '../../gpu-worker/worker/synthesizer.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

/** A stored spec as a job from before the API's floor on weights holds it (GenerationSpec.parse refuses such weights now). */
const storedSpec = (weights: number[], extra: Record<string, unknown> = {}): GenerationSpec => ({
  ...GenerationSpec.parse({ prompts: weights.map((_, i) => ({ text: ['a cat', 'a red circle'][i]!, weight: 1 })), model: 'bare', width: 64, height: 64, steps: 2, seed: 7, ...extra }),
  prompts: weights.map((weight, i) => ({ text: ['a cat', 'a red circle'][i]!, weight })),
});

describe('clipScore', () => {
  it('is the same weighted mean at any scale of the weights: subnormal, tiny and huge ones included', () => {
    const score = (weights: number[]) => clipScore(weights.map((weight, i) => ({ text: `p${i}`, weight, cosine: [0.72, 0.2, 0.9][i]! })));
    // One prompt: its cosine, whatever it weighs (5e-324 gave exactly 1, and 2e-323 gave 0.75).
    for (const w of [1, 1e-300, 1e-320, 2e-323, 5e-324, 1e308]) expect(score([w]), `weight ${w}`).toBe(0.72);
    // Two subnormal weights in the ratio 2 : 1 (exact multiples of the smallest), against 2 : 1.
    expect(score([0, 1e-323, 5e-324])).toBeCloseTo((2 * 0.2 + 0.9) / 3, 12);
    expect(score([0, 2, 1])).toBeCloseTo((2 * 0.2 + 0.9) / 3, 12);
    // Weights whose sum overflows (it gave 0) weigh as equal ones; a negative weight never counts.
    expect(score([1e308, 1e308, -1e308])).toBeCloseTo((0.72 + 0.2) / 2, 12);
    expect(score([3e-300, 1e-300])).toBeCloseTo(score([3, 1]), 12);
    expect(score([-1])).toBe(0);
  });
});

describe('a job whose prompt weights are tiny', () => {
  it('gets the negative prompt at −0.5 of the positive weights, not at 0', () => {
    const weightsOf = (w: number) => toSynthRequests({ id: 'j', owner: 'o', spec: storedSpec([w], { negative_prompt: 'blurry' }) }, { kind: 'noise' })[0]!.prompts.map((p) => p.weight);
    for (const w of [5e-324, 1e-320, 3e-308]) {
      const [positive, negative] = weightsOf(w);
      expect(negative, `weight ${w}`).toBeLessThan(0);
      expect(negative! / positive!, `weight ${w}`).toBe(NEGATIVE_PROMPT_WEIGHT);
    }
    // Ordinary weights pass as given (the engine computes what it always did).
    expect(weightsOf(1)).toEqual([1, NEGATIVE_PROMPT_WEIGHT]);
    expect(weightsOf(0.25)).toEqual([0.25, 0.25 * NEGATIVE_PROMPT_WEIGHT]);
    // Eight weights of 1e308 would sum to Infinity, and the negative prompt weigh −Infinity.
    const huge = toSynthRequests({ id: 'j', owner: 'o', spec: storedSpec([1e308, 1e308], { negative_prompt: 'blurry' }) }, { kind: 'noise' })[0]!.prompts.map((p) => p.weight);
    expect(huge.every(Number.isFinite)).toBe(true);
    expect(huge[2]! / (huge[0]! + huge[1]!)).toBe(NEGATIVE_PROMPT_WEIGHT);
  });

  it('makes the same images, clip_score and output-check verdict as weight 1, and its negative prompt still counts', async () => {
    const dir = makeTinyBundle('quickgelu');
    const models = createModelRegistry({ bundles: { bare: dir }, threads: 1 });
    try {
      // An operator's rule: withhold an image at least as close to the concept as to its prompt. The
      // concept is the prompt's own text, so it must fire at every weight (a clip_score of 1 hid it).
      const screen = compileOutputScreen([{ id: 'own', category: 'likeness', action: 'withhold', message: 'as close to the concept as to the prompt', concepts: ['a cat'], above_prompt_by: -1e-6 }]);
      const synth = createEngineSynthesizer({ models, blobs: undefined as never, recipeOverrides: { globalViews: 2, patchViews: 0, frameEvery: 0 } });
      const runOne = async (weights: number[], extra: Record<string, unknown> = {}) => {
        const out = await synth.run({ id: 'job1', owner: 'acct_a', spec: storedSpec(weights, extra) }, { screenTexts: screen.concepts });
        expect(out.images).toHaveLength(1);
        return out.images[0]!;
      };
      const one = await runOne([1]);
      expect(screen.judge(one.screenCosines, one.clipScore).map((h) => h.action)).toEqual(['withhold']);
      for (const w of [5e-324, 1e-320, 1e-300]) {
        const tiny = await runOne([w]);
        expect(Buffer.from(tiny.png).equals(Buffer.from(one.png)), `weight ${w}: the same image`).toBe(true);
        expect(tiny.clipScore, `weight ${w}`).toBe(one.clipScore);
        expect(screen.judge(tiny.screenCosines, tiny.clipScore).map((h) => h.action), `weight ${w}`).toEqual(['withhold']);
      }
      // Two prompts, 3 : 1 at 1e-300 and at 3 : 1.
      const mixed = await runOne([3, 1]);
      const mixedTiny = await runOne([3e-300, 1e-300]);
      expect(mixedTiny.clipScore).toBeCloseTo(mixed.clipScore, 12);
      // The negative prompt changes the image at weight 1, and changes it the same way at 5e-324.
      const negative = await runOne([1], { negative_prompt: 'a red circle' });
      expect(Buffer.from(negative.png).equals(Buffer.from(one.png))).toBe(false);
      const negativeTiny = await runOne([5e-324], { negative_prompt: 'a red circle' });
      expect(Buffer.from(negativeTiny.png).equals(Buffer.from(negative.png))).toBe(true);
    } finally {
      await models.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
