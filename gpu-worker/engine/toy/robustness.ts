// How adversarially robust a toy CLIP is: zero-shot accuracy on fresh world images after L2 PGD.
// eval-pag reports it for both twins, so a reader can see how "plain" the plain twin really is (a
// plain OpenAI CLIP loses almost all zero-shot accuracy at an L∞ budget of 1/255; see the report).

import { type ClipEngine } from '../engine.ts';
import { createSession } from '../runtime/session.ts';
import { Rng } from '../synth/rng.ts';
import { pgdUpdate } from './attack.ts';
import { ToyClipTrainer, encodeWorldBatch, worldTokenizer } from './clip-train.ts';
import { ATTRIBUTES, HEADS, type Judge, type JudgeArch, judgeBatch, judgeTrainGraph } from './judge.ts';
import { COLOURS, SHAPES, WORLD_SIZE, sampleBatch } from './world.ts';
import { type TensorData } from '../onnx/ir.ts';

export interface RobustnessOptions {
  /** L2 budgets in [0,1] pixel units over the 3×64×64 image (0: clean). */
  eps: number[];
  /** Batches of 32 fresh one-object scenes (seen pairs only). */
  batches: number;
  /** PGD steps, each of stepSize·ε. */
  steps: number;
  stepSize: number;
  threads?: number;
}

export const DEFAULT_ROBUSTNESS: RobustnessOptions = { eps: [0, 0.25, 0.5, 1, 2], batches: 8, steps: 10, stepSize: 0.25 };

export interface RobustnessPoint {
  eps: number;
  /** CLIPs: zero-shot shape+colour accuracy among the 48 prompts "a COLOUR SHAPE". Judge: all four heads right. */
  accuracy: number;
}

const BATCH = 32;
const SEED = 90001;

/**
 * The attack is the one the robust twin trains against, made stronger: it maximizes the in-batch
 * contrastive loss (the captions fixed) with `steps` normalized-gradient steps, projected onto the ε-ball
 * and [0,1]. It never sees the 48 zero-shot prompts, so the accuracy is that of an attack transferred
 * from the training loss; both twins face the identical attack on identical images.
 */
export async function zeroShotUnderAttack(engine: ClipEngine, o: RobustnessOptions = DEFAULT_ROBUSTNESS): Promise<RobustnessPoint[]> {
  const arch = engine.bundle.arch;
  const params = engine.bundle.weights;
  const per = 3 * WORLD_SIZE * WORLD_SIZE, E = engine.embedDim;
  const pairs = SHAPES.flatMap((s) => COLOURS.map((c) => [s, c] as const));
  const text = (await engine.embedText(pairs.map(([s, c]) => `a ${c} ${s}`))).unit;
  const tok = worldTokenizer();
  const trainer = await ToyClipTrainer.create(arch, BATCH, o.threads, 0);
  try {
    const points: RobustnessPoint[] = [];
    for (const eps of o.eps) {
      let correct = 0, n = 0;
      for (let b = 0; b < o.batches; b++) {
        const world = sampleBatch(Rng.fromSeed(SEED).fork(`batch:${b}`), BATCH, { allowHeldOut: false, twoObjectRate: 0 });
        const feeds = encodeWorldBatch(world, tok, arch).feeds;
        const pixels = eps > 0 ? (await trainer.pgd(params, feeds, { norm: 'l2', eps, steps: o.steps, stepSize: o.stepSize, rampFraction: 0 })).pixels : world.pixels;
        const images = Array.from({ length: BATCH }, (_, i) => ({ width: WORLD_SIZE, height: WORLD_SIZE, data: pixels.subarray(i * per, (i + 1) * per) }));
        const unit = (await engine.embedImages(images)).unit;
        for (let i = 0; i < BATCH; i++) {
          let best = 0, bestScore = -Infinity;
          for (let p = 0; p < pairs.length; p++) {
            let d = 0;
            for (let k = 0; k < E; k++) d += unit[i * E + k] * text[p * E + k];
            if (d > bestScore) [best, bestScore] = [p, d];
          }
          const obj = world.scenes[i].objects[0];
          if (pairs[best][0] === obj.shape && pairs[best][1] === obj.colour) correct++;
          n++;
        }
      }
      points.push({ eps, accuracy: correct / n });
    }
    return points;
  } finally {
    await trainer.release();
  }
}

/**
 * The judge's own robustness: white-box L2 PGD on its summed cross-entropy, on fresh one-object world
 * images; accuracy is all four heads right. A human's verdict does not change under a change of RMS
 * 0.009 per value (ε = 1), so this says how far the judge is from a human reader.
 */
export async function judgeUnderAttack(judge: Judge, arch: JudgeArch, o: RobustnessOptions = DEFAULT_ROBUSTNESS): Promise<RobustnessPoint[]> {
  const sess = await createSession(judgeTrainGraph(arch, BATCH, true), { intraOpThreads: o.threads });
  try {
    const points: RobustnessPoint[] = [];
    for (const eps of o.eps) {
      let correct = 0, n = 0;
      for (let b = 0; b < o.batches; b++) {
        const { pixels, labels } = judgeBatch(Rng.fromSeed(SEED).fork(`judge:${b}`), BATCH, false);
        const feeds: Record<string, TensorData> = {};
        for (const a of ATTRIBUTES) {
          const K = HEADS[a].length, y = new Float32Array(BATCH * K);
          labels.forEach((l, i) => (y[i * K + l[a]] = 1));
          feeds[`label:${a}`] = { dtype: 'float32', dims: [BATCH, K], data: y };
        }
        for (const [k, t] of judge.params) feeds[k] = t;
        const x = new Float32Array(pixels);
        const px = (): TensorData => ({ dtype: 'float32', dims: [BATCH, 3, WORLD_SIZE, WORLD_SIZE], data: x });
        for (let s = 0; eps > 0 && s < o.steps; s++) {
          const out = await sess.run({ ...feeds, pixels: px() }, ['grad:pixels']);
          pgdUpdate(x, pixels, out['grad:pixels'].data as Float32Array, BATCH, 'l2', eps, o.stepSize * eps);
        }
        const verdicts = await judge.classify(x, BATCH);
        verdicts.forEach((v, i) => {
          if (ATTRIBUTES.every((a) => v[a].index === labels[i][a])) correct++;
          n++;
        });
      }
      points.push({ eps, accuracy: correct / n });
    }
    return points;
  } finally {
    await sess.release();
  }
}
