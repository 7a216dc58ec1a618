// Probes of the toy models' gradients that need no synthesis recipe, reported by eval-pag:
// - zeroShotUnderAttack: how adversarially robust each CLIP is (zero-shot accuracy after L2 PGD on the
//   zero-shot loss itself), so a reader can see how "plain" the plain twin really is;
// - judgeUnderAttack: the same for the judge, which is a plain CNN;
// - gradientMorph: the PAG test with the gradient alone (no views, no augmentation): push a world image
//   of one shape toward the zero-shot prompt of another and ask the judge what it now sees.
// Both CLIP probes run the model's own zero-shot classifier as a loss graph (zeroShotAttackGraph).

import { appendGradients } from '../autodiff/gradient.ts';
import { type TowerSource, imageFeatures, l2normalize } from '../clip/graphs.ts';
import { type ClipEngine } from '../engine.ts';
import { EngineError } from '../errors.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type ModelIR, type TensorData } from '../onnx/ir.ts';
import { createSession } from '../runtime/session.ts';
import { Rng } from '../synth/rng.ts';
import { pgdUpdate } from './attack.ts';
import { ATTRIBUTES, type Judge, judgeBatch, judgeLossFeeds, judgeLossGraph } from './judge.ts';
import { SHAPES, SHAPE_COLOUR_PAIRS, type Shape, WORLD_SIZE, isHeldOut, sampleBatch } from './world.ts';
import { ZERO_SHOT_PROMPTS } from './zero-shot.ts';

export interface RobustnessOptions {
  /** L2 budgets in [0,1] pixel units over the 3×64×64 image (0: clean). */
  eps: number[];
  /** Batches of 32 fresh one-object scenes (seen pairs only). */
  batches: number;
  /** PGD steps, each of stepSize·ε. */
  steps: number;
  stepSize: number;
  /** onnxruntime threads of the judge's attack session (the CLIPs' attack runs on their engine). */
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
 * What both CLIP probes need: a native toy-world CLIP, its zero-shot classifier over the 48 prompts
 * "a COLOUR SHAPE" as a loss graph, and a way to run it on a batch for given labels.
 */
async function zeroShotProbe(engine: ClipEngine) {
  if (engine.bundle.foreign || engine.imageSize !== WORLD_SIZE) {
    throw new EngineError('invalid_model', `the robustness and morph probes need a native ${WORLD_SIZE}px toy-world CLIP; ${engine.name} is not one (use --no-probes)`);
  }
  const pairs = SHAPE_COLOUR_PAIRS;
  const K = pairs.length;
  const text = (await engine.embedText(ZERO_SHOT_PROMPTS)).unit;
  const src = engine.towerSource();
  // the model's own learned temperature (training clamps it at 100); a bundle without one is refused
  const scale = Math.min(100, Math.exp(Number(src.weights('logit_scale').data[0])));
  const h = await engine.graph(`toy-zero-shot-attack:b${BATCH}:k${K}`, () => zeroShotAttackGraph(src, scale, BATCH, K));
  const texts: TensorData = { dtype: 'float32', dims: [K, engine.embedDim], data: text };
  const pairIndex = (shape: Shape, colour: string) => pairs.findIndex(([s, c]) => s === shape && c === colour);
  const feeds = (x: Float32Array, labels: number[]): Record<string, TensorData> => {
    const onehot = new Float32Array(BATCH * K);
    labels.forEach((t, i) => (onehot[i * K + t] = 1));
    return {
      pixels: { dtype: 'float32', dims: [BATCH, 3, WORLD_SIZE, WORLD_SIZE], data: x },
      texts,
      labels: { dtype: 'float32', dims: [BATCH, K], data: onehot },
    };
  };
  /** d(cross-entropy of `labels`)/d(pixels) at x, one label (a pair index) per image. */
  const gradient = async (x: Float32Array, labels: number[]) => (await h.run(feeds(x, labels), ['grad_pixels'])).grad_pixels.data as Float32Array;
  /** The zero-shot choice (a pair index) for each image at x. */
  const choose = async (x: Float32Array): Promise<number[]> => {
    const logits = (await h.run(feeds(x, []), ['logits'])).logits.data as Float32Array;
    return Array.from({ length: BATCH }, (_, i) => {
      let best = 0;
      for (let k = 1; k < K; k++) if (logits[i * K + k] > logits[i * K + best]) best = k;
      return best;
    });
  };
  return { pairs, pairIndex, gradient, choose };
}

/**
 * The zero-shot classifier as a loss: pixels [B,3,R,R] in [0,1], texts [K,E] (unit prompt embeddings)
 * and labels [B,K] (one-hot) → logits = scale·cos(image, prompt) with the model's own learned
 * temperature, loss = mean cross-entropy, and its gradient w.r.t. the pixels ("grad_pixels").
 */
export function zeroShotAttackGraph(src: TowerSource, logitScale: number, batch: number, prompts: number): ModelIR {
  const b = new GraphBuilder('toy_zero_shot_attack');
  const R = src.arch.imageResolution;
  const px = b.input('pixels', 'float32', [batch, 3, R, R]);
  const texts = b.input('texts', 'float32', [prompts, src.arch.embedDim]);
  const labels = b.input('labels', 'float32', [batch, prompts]);
  const img = l2normalize(b, imageFeatures(b, src, px, 'float32'));
  const logits = b.mul(b.matmul(img, b.transpose(texts, [1, 0])), b.scalar(logitScale));
  const ce = b.neg(b.reduceSum(b.mul(labels, b.op1('LogSoftmax', [logits], { axis: A.i(1) })), [0, 1], false));
  const loss = b.op1('Identity', [b.mul(ce, b.scalar(1 / batch))], {}, { outputNames: ['loss'] });
  b.output(loss);
  b.output(b.op1('Identity', [logits], {}, { outputNames: ['logits'] }));
  const grads = appendGradients(b, { loss, wrt: [px] });
  b.output(b.op1('Identity', [grads.get(px)!], {}, { outputNames: ['grad_pixels'] }));
  return b.toModel();
}

/**
 * The standard zero-shot robustness measurement, white-box: L2 PGD (`steps` normalized-gradient steps
 * of stepSize·ε from the clean image, projected onto the ε-ball and [0,1]) that maximizes the
 * cross-entropy of the true prompt among the 48 "a COLOUR SHAPE" prompts, the very classifier that is
 * then scored. Both twins face the identical attack on identical images.
 */
export async function zeroShotUnderAttack(engine: ClipEngine, o: RobustnessOptions = DEFAULT_ROBUSTNESS): Promise<RobustnessPoint[]> {
  const { pairIndex, gradient, choose } = await zeroShotProbe(engine);
  const points: RobustnessPoint[] = [];
  for (const eps of o.eps) {
    let correct = 0, n = 0;
    for (let b = 0; b < o.batches; b++) {
      const world = sampleBatch(Rng.fromSeed(SEED).fork(`batch:${b}`), BATCH, { allowHeldOut: false, twoObjectRate: 0 });
      const truth = world.scenes.map(({ objects: [obj] }) => pairIndex(obj.shape, obj.colour));
      const x = new Float32Array(world.pixels);
      for (let s = 0; eps > 0 && s < o.steps; s++) pgdUpdate(x, world.pixels, await gradient(x, truth), BATCH, 'l2', eps, o.stepSize * eps);
      (await choose(x)).forEach((c, i) => (correct += c === truth[i] ? 1 : 0));
      n += BATCH;
    }
    points.push({ eps, accuracy: correct / n });
  }
  return points;
}

/**
 * The judge's own robustness: white-box L2 PGD on its summed cross-entropy, on fresh one-object world
 * images; accuracy is all four heads right. A human's verdict does not change under a change of RMS
 * 0.009 per value (ε = 1), so this says how far the judge is from a human reader.
 */
export async function judgeUnderAttack(judge: Judge, o: RobustnessOptions = DEFAULT_ROBUSTNESS): Promise<RobustnessPoint[]> {
  const sess = await createSession(judgeLossGraph(judge.manifest.architecture, BATCH, 'attack'), { intraOpThreads: o.threads });
  try {
    const points: RobustnessPoint[] = [];
    for (const eps of o.eps) {
      let correct = 0, n = 0;
      for (let b = 0; b < o.batches; b++) {
        const { pixels, labels } = judgeBatch(Rng.fromSeed(SEED).fork(`judge:${b}`), BATCH, false);
        const feeds = judgeLossFeeds(judge.params, labels);
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

export interface MorphOptions {
  /** L2 budgets of the morph (visible changes: ε 8 is RMS 0.07 per value). */
  eps: number[];
  batches: number;
  steps: number;
}

export const DEFAULT_MORPH: MorphOptions = { eps: [2, 4, 8], batches: 2, steps: 20 };

export interface MorphPoint {
  eps: number;
  /** The judge reads the target shape (and the unchanged colour). */
  judgeSeesTarget: number;
  /** The model itself ranks the target shape first among the 48 prompts "a COLOUR SHAPE". */
  modelSeesTarget: number;
}

/**
 * Targeted PGD from a world image toward the prompt "a COLOUR SHAPE" of the same colour and another
 * shape (never a held-out pair): descend the zero-shot cross-entropy of that prompt, image by image,
 * with `steps` normalized-gradient steps of 2.5·ε/steps inside the L2 ball. A perceptually aligned
 * gradient redraws the shape so the judge sees it; an adversarial one convinces only the model itself.
 */
export async function gradientMorph(engine: ClipEngine, judge: Judge, o: MorphOptions = DEFAULT_MORPH): Promise<MorphPoint[]> {
  const { pairs, pairIndex, gradient, choose } = await zeroShotProbe(engine);
  const points: MorphPoint[] = [];
  for (const eps of o.eps) {
    let judgeOk = 0, modelOk = 0, n = 0;
    for (let b = 0; b < o.batches; b++) {
      const rng = Rng.fromSeed(SEED).fork(`morph:${b}`);
      const world = sampleBatch(rng.fork('scenes'), BATCH, { allowHeldOut: false, twoObjectRate: 0 });
      const pick = rng.fork('targets');
      const targets = world.scenes.map(({ objects: [src] }) => {
        let shape: Shape;
        do shape = SHAPES[Math.floor(pick.uniform(0, SHAPES.length))];
        while (shape === src.shape || isHeldOut(shape, src.colour));
        return pairIndex(shape, src.colour);
      });
      const x = new Float32Array(world.pixels);
      for (let s = 0; s < o.steps; s++) {
        const grad = await gradient(x, targets);
        for (let k = 0; k < grad.length; k++) grad[k] = -grad[k]; // descend: toward the target prompt
        pgdUpdate(x, world.pixels, grad, BATCH, 'l2', eps, (2.5 * eps) / o.steps);
      }
      const verdicts = await judge.classify(x, BATCH);
      const choice = await choose(x);
      targets.forEach((t, i) => {
        const [shape, colour] = pairs[t];
        if (verdicts[i].shape.label === shape && verdicts[i].colour.label === colour) judgeOk++;
        if (pairs[choice[i]][0] === shape) modelOk++;
        n++;
      });
    }
    points.push({ eps, judgeSeesTarget: judgeOk / n, modelSeesTarget: modelOk / n });
  }
  return points;
}
