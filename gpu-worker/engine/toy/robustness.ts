// Probes of the toy models' gradients that need no synthesis recipe, reported by eval-pag:
// - zeroShotUnderAttack: how adversarially robust each CLIP is (zero-shot accuracy after L2 PGD on the
//   zero-shot loss itself), so a reader can see how "plain" the plain twin really is;
// - judgeUnderAttack: the same for the judge, which is a plain CNN;
// - gradientMorph: the PAG test with the gradient alone (no views, no augmentation): push a world image
//   of one shape toward the caption of another and ask the judge what it now sees.

import { appendGradients } from '../autodiff/gradient.ts';
import { type TowerSource, imageFeatures, l2normalize } from '../clip/graphs.ts';
import { type ClipEngine } from '../engine.ts';
import { EngineError } from '../errors.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type ModelIR, type TensorData } from '../onnx/ir.ts';
import { createSession } from '../runtime/session.ts';
import { Rng } from '../synth/rng.ts';
import { pgdUpdate } from './attack.ts';
import { ToyClipTrainer, encodeWorldBatch, nearestText, worldTokenizer } from './clip-train.ts';
import { ATTRIBUTES, type Judge, judgeBatch, judgeLossFeeds, judgeTrainGraph } from './judge.ts';
import { type Caption, type Scene, SHAPES, SHAPE_COLOUR_PAIRS, SYNONYMS, type Shape, WORLD_SIZE, isHeldOut, sampleBatch } from './world.ts';

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
const PER_IMAGE = 3 * WORLD_SIZE * WORLD_SIZE;
const SEED = 90001;

/** What both CLIP probes need: a native toy-world CLIP and the 48 zero-shot prompts embedded. */
async function clipProbe(engine: ClipEngine) {
  if (engine.bundle.foreign || engine.imageSize !== WORLD_SIZE) {
    throw new EngineError('invalid_model', `the robustness and morph probes need a native ${WORLD_SIZE}px toy-world CLIP; ${engine.name} is not one (use --no-probes)`);
  }
  const pairs = SHAPE_COLOUR_PAIRS;
  const text = (await engine.embedText(pairs.map(([s, c]) => `a ${c} ${s}`))).unit;
  return { arch: engine.bundle.arch, params: engine.bundle.weights, E: engine.embedDim, pairs, text, tok: worldTokenizer() };
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
  const { pairs, text } = await clipProbe(engine);
  const src = engine.towerSource();
  // the model's own learned temperature (training clamps it at 100); a bundle without one is refused
  const scale = Math.min(100, Math.exp(Number(src.weights('logit_scale').data[0])));
  const K = pairs.length;
  const h = await engine.graph(`toy-zero-shot-attack:b${BATCH}:k${K}`, () => zeroShotAttackGraph(src, scale, BATCH, K));
  const texts: TensorData = { dtype: 'float32', dims: [K, engine.embedDim], data: text };
  const points: RobustnessPoint[] = [];
  for (const eps of o.eps) {
    let correct = 0, n = 0;
    for (let b = 0; b < o.batches; b++) {
      const world = sampleBatch(Rng.fromSeed(SEED).fork(`batch:${b}`), BATCH, { allowHeldOut: false, twoObjectRate: 0 });
      const truth = world.scenes.map(({ objects: [obj] }) => pairs.findIndex(([s, c]) => s === obj.shape && c === obj.colour));
      const onehot = new Float32Array(BATCH * K);
      truth.forEach((t, i) => (onehot[i * K + t] = 1));
      const labels: TensorData = { dtype: 'float32', dims: [BATCH, K], data: onehot };
      const x = new Float32Array(world.pixels);
      const feeds = (): Record<string, TensorData> => ({ pixels: { dtype: 'float32', dims: [BATCH, 3, WORLD_SIZE, WORLD_SIZE], data: x }, texts, labels });
      for (let s = 0; eps > 0 && s < o.steps; s++) {
        const out = await h.run(feeds(), ['grad_pixels']);
        pgdUpdate(x, world.pixels, out.grad_pixels.data as Float32Array, BATCH, 'l2', eps, o.stepSize * eps);
      }
      const logits = (await h.run(feeds(), ['logits'])).logits.data as Float32Array;
      for (let i = 0; i < BATCH; i++) {
        let best = 0;
        for (let k = 1; k < K; k++) if (logits[i * K + k] > logits[i * K + best]) best = k;
        if (best === truth[i]) correct++;
        n++;
      }
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
  const sess = await createSession(judgeTrainGraph(judge.manifest.architecture, BATCH, 'attack'), { intraOpThreads: o.threads });
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
  threads?: number;
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
 * Targeted PGD from a world image toward the full caption of the same object with another shape
 * (colour, size and position unchanged; never a held-out pair): descend the contrastive loss with
 * `steps` normalized-gradient steps of 2.5·ε/steps inside the L2 ball. A perceptually aligned gradient
 * redraws the shape so the judge sees it; an adversarial one convinces only the model itself.
 */
export async function gradientMorph(engine: ClipEngine, judge: Judge, o: MorphOptions = DEFAULT_MORPH): Promise<MorphPoint[]> {
  const { arch, params, E, pairs, text, tok } = await clipProbe(engine);
  const trainer = await ToyClipTrainer.create(arch, BATCH, o.threads, 0);
  try {
    const points: MorphPoint[] = [];
    for (const eps of o.eps) {
      let judgeOk = 0, modelOk = 0, n = 0;
      for (let b = 0; b < o.batches; b++) {
        const rng = Rng.fromSeed(SEED).fork(`morph:${b}`);
        const world = sampleBatch(rng.fork('scenes'), BATCH, { allowHeldOut: false, twoObjectRate: 0 });
        const pick = rng.fork('targets');
        const scenes: Scene[] = world.scenes.map((s) => {
          const src = s.objects[0];
          let shape: Shape;
          do shape = SHAPES[Math.floor(pick.uniform(0, SHAPES.length))];
          while (shape === src.shape || isHeldOut(shape, src.colour));
          return { ...s, objects: [{ ...src, shape }] };
        });
        const captions: Caption[] = scenes.map(({ objects: [t] }) => ({
          text: `a ${t.size} ${t.colour} ${t.shape} ${SYNONYMS.position[t.position][0][0]}`,
          objects: [{ shape: t.shape, colour: t.colour, size: t.size, position: t.position }],
        }));
        const feeds = encodeWorldBatch({ pixels: world.pixels, scenes, captions }, tok, arch).feeds;
        const x = new Float32Array(world.pixels);
        for (let s = 0; s < o.steps; s++) {
          const { grad } = await trainer.lossAndPixelGrad(params, { ...feeds, pixels: { ...feeds.pixels, data: x } });
          for (let k = 0; k < grad.length; k++) grad[k] = -grad[k]; // descend: toward the target caption
          pgdUpdate(x, world.pixels, grad, BATCH, 'l2', eps, (2.5 * eps) / o.steps);
        }
        const verdicts = await judge.classify(x, BATCH);
        const images = Array.from({ length: BATCH }, (_, i) => ({ width: WORLD_SIZE, height: WORLD_SIZE, data: x.subarray(i * PER_IMAGE, (i + 1) * PER_IMAGE) }));
        const unit = (await engine.embedImages(images)).unit;
        for (let i = 0; i < BATCH; i++) {
          const t = scenes[i].objects[0];
          if (verdicts[i].shape.label === t.shape && verdicts[i].colour.label === t.colour) judgeOk++;
          if (pairs[nearestText(unit, i, text, E)][0] === t.shape) modelOk++;
          n++;
        }
      }
      points.push({ eps, judgeSeesTarget: judgeOk / n, modelSeesTarget: modelOk / n });
    }
    return points;
  } finally {
    await trainer.release();
  }
}
