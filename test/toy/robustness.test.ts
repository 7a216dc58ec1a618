// The zero-shot attack of the robustness probe: its graph's pixel gradient matches finite differences,
// its logits are the zero-shot classifier eval-pag and train-toy score with, and the attack works.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';
import { nearestText } from '../../gpu-worker/engine/toy/clip-train.ts';
import { zeroShotAttackGraph, zeroShotUnderAttack } from '../../gpu-worker/engine/toy/robustness.ts';
import { SHAPE_COLOUR_PAIRS, WORLD_SIZE, sampleBatch } from '../../gpu-worker/engine/toy/world.ts';
import { ZERO_SHOT_PROMPTS } from '../../gpu-worker/engine/toy/zero-shot.ts';
import { type TensorData } from '../../gpu-worker/engine/onnx/ir.ts';

const B = 4, K = SHAPE_COLOUR_PAIRS.length, PER = 3 * WORLD_SIZE * WORLD_SIZE;
let engine: ClipEngine;
beforeAll(async () => {
  engine = await ClipEngine.open(join(REPO_ROOT, 'models', 'toy-plain'), { threads: 1 });
});
afterAll(() => engine.close());

describe('zero-shot attack graph', () => {
  it('its logits pick what the zero-shot chooser picks, and its pixel gradient matches finite differences', async () => {
    const text = (await engine.embedText([...ZERO_SHOT_PROMPTS])).unit;
    const world = sampleBatch(Rng.fromSeed(77), B, { allowHeldOut: false, twoObjectRate: 0 });
    const onehot = new Float32Array(B * K);
    // wrong labels, so the loss is far from saturated and its gradient is large enough to check
    world.scenes.forEach(({ objects: [o] }, i) => (onehot[i * K + ((SHAPE_COLOUR_PAIRS.findIndex(([s, c]) => s === o.shape && c === o.colour) + 7) % K)] = 1));
    const h = await engine.graph(`test-zero-shot-attack:b${B}`, () => zeroShotAttackGraph(engine.towerSource(), 30, B, K));
    const feeds = (px: Float32Array): Record<string, TensorData> => ({
      pixels: { dtype: 'float32', dims: [B, 3, WORLD_SIZE, WORLD_SIZE], data: px },
      texts: { dtype: 'float32', dims: [K, engine.embedDim], data: text },
      labels: { dtype: 'float32', dims: [B, K], data: onehot },
    });
    const out = await h.run(feeds(world.pixels), ['loss', 'logits', 'grad_pixels']);
    const logits = out.logits.data as Float32Array;
    const unit = (await engine.embedImages(Array.from({ length: B }, (_, i) => ({ width: WORLD_SIZE, height: WORLD_SIZE, data: world.pixels.subarray(i * PER, (i + 1) * PER) })))).unit;
    for (let i = 0; i < B; i++) {
      let best = 0;
      for (let k = 1; k < K; k++) if (logits[i * K + k] > logits[i * K + best]) best = k;
      expect(best).toBe(nearestText(unit, i, text, engine.embedDim));
    }
    const grad = out.grad_pixels.data as Float32Array;
    const rng = Rng.fromSeed(3);
    for (let trial = 0; trial < 2; trial++) {
      const dir = Float32Array.from(world.pixels, () => rng.normal());
      let norm = 0;
      for (const v of dir) norm += v * v;
      norm = Math.sqrt(norm);
      let analytic = 0;
      for (let k = 0; k < dir.length; k++) analytic += (grad[k] * dir[k]) / norm;
      const lossAt = async (eps: number) => ((await h.run(feeds(Float32Array.from(world.pixels, (v, k) => v + (eps * dir[k]) / norm)), ['loss'])).loss.data as Float32Array)[0];
      const step = 0.05;
      const fd = ((await lossAt(step)) - (await lossAt(-step))) / (2 * step);
      expect(Math.abs(fd - analytic), `fd ${fd} vs analytic ${analytic}`).toBeLessThan(2e-2 * Math.abs(analytic));
    }
  });

  it('PGD on it takes the plain twin from right to wrong within an invisible budget; ε 0 leaves accuracy alone', async () => {
    const pts = await zeroShotUnderAttack(engine, { eps: [0, 1], batches: 1, steps: 10, stepSize: 0.25 });
    expect(pts[0].accuracy).toBeGreaterThan(0.9);
    expect(pts[1].accuracy).toBeLessThan(0.4);
  });
});
