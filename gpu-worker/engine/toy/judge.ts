// The independent judge: a small CNN (strided convolutions, ReLU, one hidden dense layer) with one
// cross-entropy head per attribute (shape, colour, size, position), trained on fresh single-object world
// images. It shares nothing with the CLIPs (architecture, loss, data stream), so it can grade their images.

import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { z } from 'zod';
import { join, resolve } from 'node:path';
import { appendGradients } from '../autodiff/gradient.ts';
import { isBundleFilePath, sha256File } from '../clip/bundle.ts';
import { EngineError } from '../errors.ts';
import { readSafetensors, writeSafetensors } from '../io/safetensors.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type TensorData } from '../onnx/ir.ts';
import { encodeModel } from '../onnx/codec.ts';
import { type EngineSession, createSession } from '../runtime/session.ts';
import { Rng } from '../synth/rng.ts';
import { type AdamConfig, type AdamState, type Params, adamStep, assertCheckpointReplaceable, checkParamShapes, loadCheckpoint, lrAt, newAdamState, progressPrinter, saveCheckpoint, withCheckpoint } from './optim.ts';
import { COLOURS, POSITIONS, SHAPES, SIZES, WORLD_SIZE, type WorldObject, sampleBatch } from './world.ts';

export const JUDGE_FORMAT = 'clipag-toy-judge';
export const JUDGE_MIN_ACCURACY = 0.97;

export const HEADS = { shape: SHAPES, colour: COLOURS, size: SIZES, position: POSITIONS } as const;
export type Attribute = keyof typeof HEADS;
export const ATTRIBUTES = Object.keys(HEADS) as Attribute[];

export interface JudgeArch {
  /** Output channels of the strided 3×3 (first: 5×5) convolutions, each halving the resolution. */
  channels: number[];
  hidden: number;
}
export const JUDGE_ARCH: JudgeArch = { channels: [16, 32, 64, 64], hidden: 128 };

const JudgeManifestFields = z.object({
  weights: z.string().refine(isBundleFilePath, { message: 'must be a plain relative path inside the bundle' }),
  architecture: z.object({ channels: z.array(z.number().int().positive()).min(1).max(8), hidden: z.number().int().positive() }),
  sha256: z.record(z.string(), z.string()).optional(),
});

export function judgeTensors(arch: JudgeArch): [string, number[]][] {
  const out: [string, number[]][] = [];
  let cin = 3;
  arch.channels.forEach((c, i) => {
    const k = i === 0 ? 5 : 3;
    out.push([`conv${i}.weight`, [c, cin, k, k]], [`conv${i}.bias`, [c]]);
    cin = c;
  });
  const side = WORLD_SIZE / 2 ** arch.channels.length;
  out.push(['fc.weight', [cin * side * side, arch.hidden]], ['fc.bias', [arch.hidden]]);
  for (const a of ATTRIBUTES) out.push([`head.${a}.weight`, [arch.hidden, HEADS[a].length]], [`head.${a}.bias`, [HEADS[a].length]]);
  return out;
}

export function initJudgeParams(arch: JudgeArch, rng: Rng): Params {
  const p: Params = new Map();
  for (const [name, dims] of judgeTensors(arch)) {
    const n = dims.reduce((a, b) => a * b, 1);
    const d = new Float32Array(n);
    if (name.endsWith('.weight')) {
      const fanIn = dims.length === 4 ? dims[1] * dims[2] * dims[3] : dims[0];
      const std = Math.sqrt(2 / fanIn); // He init for ReLU
      for (let i = 0; i < n; i++) d[i] = rng.normal() * std;
    }
    p.set(name, { dtype: 'float32', dims, data: d });
  }
  return p;
}

/** Emit the judge; returns the per-head logits. Weights come from `w` (inputs or initializers). */
function emitJudge(b: GraphBuilder, arch: JudgeArch, pixels: string, w: (name: string) => string): Record<Attribute, string> {
  const B = b.shape(pixels)[0];
  let x = b.mul(b.sub(pixels, b.scalar(0.5)), b.scalar(4));
  arch.channels.forEach((c, i) => {
    const k = i === 0 ? 5 : 3;
    const y = b.op1('Conv', [x, w(`conv${i}.weight`)], { kernel_shape: A.ints([k, k]), strides: A.ints([2, 2]), pads: A.ints([(k - 1) / 2, (k - 1) / 2, (k - 1) / 2, (k - 1) / 2]) });
    x = b.op1('Relu', [b.add(y, b.reshape(w(`conv${i}.bias`), [1, c, 1, 1]))]);
  });
  const flat = b.reshape(x, [B, b.shape(x).slice(1).reduce((a, c) => a * c, 1)]);
  const h = b.op1('Relu', [b.add(b.matmul(flat, w('fc.weight')), w('fc.bias'))]);
  const out = {} as Record<Attribute, string>;
  for (const a of ATTRIBUTES) out[a] = b.add(b.matmul(h, w(`head.${a}.weight`)), w(`head.${a}.bias`));
  return out;
}

/**
 * The judge's loss graph: pixels + one-hot labels per head → summed cross-entropy (mean over the batch)
 * and either the parameter gradients ("grad:<name>", mode 'train') or the pixel gradient
 * ("grad:pixels", mode 'attack', for the robustness probe's white-box PGD).
 */
export function judgeLossGraph(arch: JudgeArch, batch: number, mode: 'train' | 'attack' = 'train'): Uint8Array {
  const b = new GraphBuilder(`toy_judge_${mode}`);
  const px = b.input('pixels', 'float32', [batch, 3, WORLD_SIZE, WORLD_SIZE]);
  const names = new Map<string, string>();
  for (const [n, dims] of judgeTensors(arch)) names.set(n, b.input(n, 'float32', dims));
  const logits = emitJudge(b, arch, px, (n) => names.get(n)!);
  const losses = ATTRIBUTES.map((a) => {
    const y = b.input(`label:${a}`, 'float32', [batch, HEADS[a].length]);
    return b.reduceSum(b.mul(y, b.op1('LogSoftmax', [logits[a]], { axis: A.i(1) })), [0, 1], false);
  });
  const loss = b.op1('Identity', [b.mul(b.op1('Sum', losses), b.scalar(-1 / batch))], {}, { outputNames: ['loss'] });
  b.output(loss);
  for (const a of ATTRIBUTES) b.output(b.op1('Identity', [logits[a]], {}, { outputNames: [`logits:${a}`] }));
  if (mode === 'train') {
    const grads = appendGradients(b, { loss, wrt: [...names.values()] });
    for (const n of names.keys()) b.output(b.op1('Identity', [grads.get(names.get(n)!)!], {}, { outputNames: [`grad:${n}`] }));
  } else {
    const grads = appendGradients(b, { loss, wrt: [px] });
    b.output(b.op1('Identity', [grads.get(px)!], {}, { outputNames: ['grad:pixels'] }));
  }
  return encodeModel(b.toModel());
}

export function judgeInferGraph(arch: JudgeArch, params: Params, batch: number): Uint8Array {
  const b = new GraphBuilder('toy_judge');
  const px = b.input('pixels', 'float32', [batch, 3, WORLD_SIZE, WORLD_SIZE]);
  const names = new Map<string, string>();
  for (const [n] of judgeTensors(arch)) names.set(n, b.initializer(n, params.get(n)!));
  const logits = emitJudge(b, arch, px, (n) => names.get(n)!);
  for (const a of ATTRIBUTES) b.output(b.op1('Identity', [logits[a]], {}, { outputNames: [`logits:${a}`] }));
  return encodeModel(b.toModel());
}

export type Labels = Record<Attribute, number>;
export function labelsOf(o: WorldObject): Labels {
  return {
    shape: SHAPES.indexOf(o.shape),
    colour: COLOURS.indexOf(o.colour),
    size: SIZES.indexOf(o.size),
    position: POSITIONS.indexOf(o.position),
  };
}

/** Single-object world images (held-out pairs included) with light pixel noise, as the judge sees them. */
export function judgeBatch(rng: Rng, n: number, noise = true): { pixels: Float32Array; labels: Labels[] } {
  const w = sampleBatch(rng, n, { allowHeldOut: true, twoObjectRate: 0 });
  if (noise) {
    const per = 3 * WORLD_SIZE * WORLD_SIZE;
    for (let i = 0; i < n; i++) {
      const std = rng.uniform(0, 0.06);
      for (let k = i * per; k < (i + 1) * per; k++) w.pixels[k] = Math.min(1, Math.max(0, w.pixels[k] + std * rng.normal()));
    }
  }
  return { pixels: w.pixels, labels: w.scenes.map((s) => labelsOf(s.objects[0])) };
}

/** The loss graph's feeds other than the pixels: one-hot labels per head and the weights. */
export function judgeLossFeeds(params: Params, labels: Labels[]): Record<string, TensorData> {
  const feeds: Record<string, TensorData> = {};
  for (const a of ATTRIBUTES) {
    const K = HEADS[a].length, y = new Float32Array(labels.length * K);
    labels.forEach((l, i) => (y[i * K + l[a]] = 1));
    feeds[`label:${a}`] = { dtype: 'float32', dims: [labels.length, K], data: y };
  }
  for (const [k, t] of params) feeds[k] = t;
  return feeds;
}

// ---- training ------------------------------------------------------------------------------------

export interface JudgeTrainConfig {
  arch: JudgeArch;
  batch: number;
  steps: number;
  seed: number;
  lr: number;
  warmup: number;
}
export function defaultJudgeConfig(o: Partial<JudgeTrainConfig> = {}): JudgeTrainConfig {
  return { arch: JUDGE_ARCH, batch: 64, steps: 1500, seed: 7, lr: 2e-3, warmup: 50, ...o };
}

export const JUDGE_CHECKPOINT_KIND = 'toy-judge';

export interface JudgeTrainResult {
  params: Params;
  step: number;
  elapsedS: number;
  lossHistory: { step: number; loss: number }[];
}

export interface JudgeTrainOptions {
  threads?: number;
  /** Resumed from when it exists (unless resume is false); a symbolic link is followed, and the file is locked for the run. */
  checkpoint?: string;
  checkpointEvery?: number;
  resume?: boolean;
  /** A fresh run may replace a checkpoint of another kind (a CLIP's) at `checkpoint`. */
  force?: boolean;
  progress?: boolean;
  maxStepsThisRun?: number;
  log?: (s: string) => void;
}

export async function trainJudge(cfg: JudgeTrainConfig, opts: JudgeTrainOptions = {}): Promise<JudgeTrainResult> {
  return withCheckpoint(opts.checkpoint, (checkpoint) => trainJudgeLocked(cfg, { ...opts, checkpoint }));
}

async function trainJudgeLocked(cfg: JudgeTrainConfig, opts: JudgeTrainOptions): Promise<JudgeTrainResult> {
  const root = Rng.fromSeed(cfg.seed);
  const config = cfg as unknown as Record<string, unknown>;
  let params: Params, adam: AdamState, step = 0, before = 0;
  let history: { step: number; loss: number }[] = [];
  if (opts.checkpoint && opts.resume !== false && existsSync(opts.checkpoint)) {
    const ck = loadCheckpoint(opts.checkpoint, JUDGE_CHECKPOINT_KIND, config);
    checkParamShapes(ck.params, judgeTensors(cfg.arch), `checkpoint ${opts.checkpoint}`);
    if (ck.step > cfg.steps) throw new EngineError('invalid_model', `checkpoint ${opts.checkpoint} is at step ${ck.step}, past the ${cfg.steps} planned; use another --checkpoint or --no-resume`);
    ({ params, adam, step } = ck);
    before = ck.elapsedS;
    history = ck.history as typeof history;
    opts.log?.(`resuming ${opts.checkpoint} at step ${step}`);
  } else {
    if (opts.checkpoint) assertCheckpointReplaceable(opts.checkpoint, JUDGE_CHECKPOINT_KIND, opts.force);
    params = initJudgeParams(cfg.arch, root.fork('init'));
    adam = newAdamState(params);
  }
  const adamCfg: AdamConfig = { lr: cfg.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-4, gradClip: 5 };
  const sess = await createSession(judgeLossGraph(cfg.arch, cfg.batch), { intraOpThreads: opts.threads });
  const t0 = performance.now();
  const elapsed = () => before + (performance.now() - t0) / 1000;
  const bar = opts.progress ? progressPrinter(cfg.steps, 'train-judge') : undefined;
  const save = async () => {
    if (opts.checkpoint) await saveCheckpoint(opts.checkpoint, { kind: JUDGE_CHECKPOINT_KIND, config, step, elapsedS: elapsed(), history, params, adam });
  };
  let thisRun = 0;
  try {
    while (step < cfg.steps && (opts.maxStepsThisRun === undefined || thisRun < opts.maxStepsThisRun)) {
      const { pixels, labels } = judgeBatch(root.fork(`batch:${step}`), cfg.batch);
      const feeds: Record<string, TensorData> = { ...judgeLossFeeds(params, labels), pixels: { dtype: 'float32', dims: [cfg.batch, 3, WORLD_SIZE, WORLD_SIZE], data: pixels } };
      const out = await sess.run(feeds, ['loss', ...[...params.keys()].map((n) => `grad:${n}`)]);
      const grads = new Map([...params.keys()].map((n) => [n, out[`grad:${n}`].data as Float32Array]));
      adamStep(params, grads, adam, adamCfg, lrAt(step, cfg.steps, cfg.lr, cfg.warmup, 0.02), (n) => n.endsWith('.weight'));
      step++;
      thisRun++;
      const loss = (out.loss.data as Float32Array)[0];
      if (step % 10 === 0) history.push({ step, loss });
      bar?.(step, `loss ${loss.toFixed(4)} ${elapsed().toFixed(0)}s`);
      if (step % (opts.checkpointEvery ?? 200) === 0 && step < cfg.steps) await save();
    }
    await save();
  } finally {
    await sess.release();
  }
  return { params, step, elapsedS: elapsed(), lossHistory: history };
}

// ---- the judge at inference ----------------------------------------------------------------------

export interface JudgeManifest {
  format: typeof JUDGE_FORMAT;
  format_version: 1;
  name: string;
  architecture: JudgeArch;
  heads: Record<Attribute, readonly string[]>;
  weights: string;
  sha256: Record<string, string>;
  /** Accuracy on fresh world images at training time (per attribute and all four). */
  accuracy: Record<Attribute | 'all', number>;
  training: Record<string, unknown>;
}

export type Verdict = Record<Attribute, { label: string; index: number; p: number }>;

const JUDGE_BATCH = 32;

export class Judge {
  private constructor(readonly manifest: JudgeManifest, readonly params: Params, private readonly session: EngineSession) {}

  static async fromParams(arch: JudgeArch, params: Params, manifest?: Partial<JudgeManifest>, threads?: number): Promise<Judge> {
    checkParamShapes(params, judgeTensors(arch), 'judge weights');
    const s = await createSession(judgeInferGraph(arch, params, JUDGE_BATCH), { intraOpThreads: threads });
    return new Judge({ architecture: arch, ...manifest } as JudgeManifest, params, s);
  }

  static async open(dirIn: string, threads?: number): Promise<Judge> {
    const dir = resolve(dirIn);
    const mpath = join(dir, 'manifest.json');
    if (!existsSync(mpath)) throw new EngineError('invalid_model', `no judge manifest.json in ${dir} (train one with clipag train-judge)`, { path: mpath });
    let m: JudgeManifest;
    try {
      m = JSON.parse(readFileSync(mpath, 'utf8')) as JudgeManifest;
    } catch (e) {
      throw new EngineError('invalid_model', `${mpath} is not valid JSON: ${(e as Error).message}`, { path: mpath });
    }
    if (m === null || typeof m !== 'object' || m.format !== JUDGE_FORMAT || m.format_version !== 1) throw new EngineError('invalid_model', `${mpath} is not a ${JUDGE_FORMAT} v1 manifest`, { path: mpath });
    // The fields the loader reads, checked before it reads them (a missing one was a TypeError).
    const parsed = JudgeManifestFields.safeParse(m);
    if (!parsed.success) {
      throw new EngineError('invalid_model', `${mpath}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`, { path: mpath });
    }
    for (const a of ATTRIBUTES) {
      if (JSON.stringify(m.heads?.[a]) !== JSON.stringify(HEADS[a])) throw new EngineError('invalid_model', `judge ${dir}: head ${a} labels ${JSON.stringify(m.heads?.[a])} do not match this world (${HEADS[a].join(', ')})`);
    }
    const wpath = join(dir, m.weights);
    if (!existsSync(wpath) || !statSync(wpath).isFile()) throw new EngineError('invalid_model', `judge weights ${wpath} are missing (or not a file)`, { path: wpath });
    const want = m.sha256?.[m.weights];
    if (want && (await sha256File(wpath)) !== want) throw new EngineError('invalid_model', `judge weights ${wpath} do not match the manifest's sha256 (corrupt or replaced)`, { path: wpath });
    const st = readSafetensors(wpath);
    // The judge's graph is float32 throughout: a float16 (or integer) tensor failed deep in onnxruntime.
    const notF32 = [...st.tensors].filter(([, t]) => t.dtype !== 'float32');
    if (notF32.length > 0) {
      throw new EngineError('invalid_model', `judge weights ${wpath}: ${notF32.slice(0, 3).map(([n, t]) => `${n} is ${t.dtype}`).join(', ')}${notF32.length > 3 ? `, and ${notF32.length - 3} more` : ''}; the judge needs float32 weights`, { path: wpath });
    }
    return Judge.fromParams(m.architecture, st.tensors, m, threads);
  }

  /** Classify [n,3,64,64] images. */
  async classify(pixels: Float32Array, n: number): Promise<Verdict[]> {
    const per = 3 * WORLD_SIZE * WORLD_SIZE;
    const out: Verdict[] = [];
    for (let s = 0; s < n; s += JUDGE_BATCH) {
      const m = Math.min(JUDGE_BATCH, n - s);
      const px = new Float32Array(JUDGE_BATCH * per);
      px.set(pixels.subarray(s * per, (s + m) * per));
      const res = await this.session.run({ pixels: { dtype: 'float32', dims: [JUDGE_BATCH, 3, WORLD_SIZE, WORLD_SIZE], data: px } });
      for (let i = 0; i < m; i++) {
        const v = {} as Verdict;
        for (const a of ATTRIBUTES) {
          const K = HEADS[a].length, lg = (res[`logits:${a}`].data as Float32Array).subarray(i * K, (i + 1) * K);
          let best = 0;
          for (let k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
          let z = 0;
          for (let k = 0; k < K; k++) z += Math.exp(lg[k] - lg[best]);
          v[a] = { label: HEADS[a][best], index: best, p: 1 / z };
        }
        out.push(v);
      }
    }
    return out;
  }

  /** Accuracy on n fresh single-object world images (no pixel noise), per attribute and all four. */
  async accuracy(n: number, seed: number): Promise<Record<Attribute | 'all', number>> {
    const { pixels, labels } = judgeBatch(Rng.fromSeed(seed).fork('judge-check'), n, false);
    const v = await this.classify(pixels, n);
    const acc = { shape: 0, colour: 0, size: 0, position: 0, all: 0 };
    v.forEach((vi, i) => {
      let all = true;
      for (const a of ATTRIBUTES) {
        const ok = vi[a].index === labels[i][a];
        if (ok) acc[a]++;
        all &&= ok;
      }
      if (all) acc.all++;
    });
    for (const k of Object.keys(acc) as (keyof typeof acc)[]) acc[k] /= n;
    return acc;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** The judge is usable only if every attribute reaches the threshold on fresh images. */
export function judgePasses(acc: Record<Attribute | 'all', number>, min = JUDGE_MIN_ACCURACY): boolean {
  return ATTRIBUTES.every((a) => acc[a] >= min);
}

export async function writeJudgeBundle(dir: string, arch: JudgeArch, params: Params, accuracy: Record<Attribute | 'all', number>, training: Record<string, unknown>): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const ordered = new Map(judgeTensors(arch).map(([n]) => [n, params.get(n)!]));
  await writeSafetensors(join(dir, 'weights.safetensors'), ordered, { format: JUDGE_FORMAT });
  const m: JudgeManifest = {
    format: JUDGE_FORMAT,
    format_version: 1,
    name: 'toy-judge',
    architecture: arch,
    heads: HEADS,
    weights: 'weights.safetensors',
    sha256: { 'weights.safetensors': await sha256File(join(dir, 'weights.safetensors')) },
    accuracy,
    training,
  };
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(m, null, 2) + '\n');
}
