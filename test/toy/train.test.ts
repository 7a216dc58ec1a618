// Training on the gradient engine: a short run shows the contrastive loss falling, a PGD step raises
// it, checkpoints resume exactly, and checkpoints from another architecture or corrupt files are refused.
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';
import {
  TOY_ARCH, ToyClipTrainer, defaultToyConfig, encodeWorldBatch, initClipParams, trainToyClip, worldTokenizer,
} from '../../gpu-worker/engine/toy/clip-train.ts';
import { sampleBatch } from '../../gpu-worker/engine/toy/world.ts';

// A small arch so the test runs in seconds on 2 cores.
const ARCH = { ...TOY_ARCH, visionWidth: 32, visionHeads: 1, visionLayers: 1, textWidth: 32, textHeads: 1, textLayers: 1, embedDim: 32 };
const dir = mkdtempSync(join(tmpdir(), 'clipag-toy-train-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('toy CLIP training', () => {
  it('a short plain run lowers the contrastive loss', async () => {
    // Random batches (shapeGroup 1): colour alone separates most captions, so the loss falls within a few dozen steps.
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 16, steps: 60, warmup: 5, lr: 3e-3, seed: 3, shapeGroup: 1 });
    const losses: number[] = [];
    const res2 = await trainToyClip(cfg, { threads: 1, onStep: (e) => losses.push(e.loss) });
    expect(res2.step).toBe(60);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(losses.slice(0, 10)), last = mean(losses.slice(-10));
    expect(last).toBeLessThan(first - 0.4);
    expect(res2.params.get('logit_scale')!.data[0]).toBeGreaterThan(0);
  });

  it('a PGD step raises the loss, stays in the eps-ball and in [0, 1]', async () => {
    const trainer = await ToyClipTrainer.create(ARCH, 8, 1);
    try {
      const params = initClipParams(ARCH, Rng.fromSeed(1));
      const enc = encodeWorldBatch(sampleBatch(Rng.fromSeed(9), 8), worldTokenizer(), ARCH);
      const eps = 1.0;
      const r = await trainer.pgd(params, enc.feeds, { norm: 'l2', eps, steps: 1, stepSize: 1, rampFraction: 0 });
      expect(r.lossAfter).toBeGreaterThan(r.lossBefore + 1e-3);
      const clean = enc.feeds.pixels.data as Float32Array, n = clean.length / 8;
      for (let i = 0; i < 8; i++) {
        let d2 = 0;
        for (let k = i * n; k < (i + 1) * n; k++) {
          expect(r.pixels[k]).toBeGreaterThanOrEqual(0);
          expect(r.pixels[k]).toBeLessThanOrEqual(1);
          d2 += (r.pixels[k] - clean[k]) ** 2;
        }
        expect(Math.sqrt(d2)).toBeLessThanOrEqual(eps + 1e-4);
      }
      const inf = await trainer.pgd(params, enc.feeds, { norm: 'linf', eps: 4 / 255, steps: 2, stepSize: 0.5, rampFraction: 0 });
      expect(inf.lossAfter).toBeGreaterThan(inf.lossBefore);
    } finally {
      await trainer.release();
    }
  });

  it('an interrupted robust run resumes from its checkpoint to the same weights', async () => {
    const cfg = defaultToyConfig(true, { arch: ARCH, batch: 8, steps: 6, warmup: 2, seed: 4 });
    const straight = await trainToyClip(cfg, { threads: 1 });
    const ck = join(dir, 'resume.ckpt');
    const part = await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 3 });
    expect(part.finished).toBe(false);
    const rest = await trainToyClip(cfg, { threads: 1, checkpoint: ck });
    expect(rest.resumedFrom).toBe(3);
    expect(rest.step).toBe(6);
    for (const [k, t] of straight.params) expect(Array.from(rest.params.get(k)!.data as Float32Array)).toEqual(Array.from(t.data as Float32Array));
  });

  it('refuses a checkpoint from another architecture or a corrupt one, with a clear error', async () => {
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 2, warmup: 1 });
    const ck = join(dir, 'arch.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck });
    const other = { ...cfg, arch: { ...ARCH, visionLayers: 2 } };
    await expect(trainToyClip(other, { threads: 1, checkpoint: ck })).rejects.toThrow(/different arch/);
    await expect(trainToyClip({ ...cfg, robust: true }, { threads: 1, checkpoint: ck })).rejects.toThrow(/different robust/);
    const bytes = readFileSync(ck);
    writeFileSync(ck, bytes.subarray(0, bytes.length >> 1));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/checkpoint .* is unreadable/);
  });
});
