// The synthesis loop: prompt in, image out, no generator. The host draws augmentations from the seeded
// RNG, the compiled step graph returns loss and d(loss)/d(image), and the host applies AdamW, gradient
// clipping and dynamic thresholding, keeping the best-loss image.

import type { ClipEngine } from '../engine.ts';
import { EngineError } from '../errors.ts';
import { stepGraph } from './step-graph.ts';
import { fillViewOperators, type Window } from './resample.ts';
import { DEFAULT_RECIPE, LIMITS, type Recipe, type Stage, defaultSchedule, validateRecipe } from './recipe.ts';
import { type PlanarImage, cloneImage, encodePng, noiseImage, resizeBilinear, resizeCover, solidImage, squareCropsCovering } from './image.ts';
import { Rng } from './rng.ts';
import { samplePriorYielding } from './prior.ts';
import { MAX_PROMPT_WEIGHT, MAX_RELATIVE_PROMPT_WEIGHT } from '../../../shared/schemas/generation.ts';

export interface WeightedPrompt {
  text: string;
  /** Positive pulls toward the text, negative pushes away. */
  weight: number;
}

export type InitSpec =
  | { kind: 'gmm'; priorPath?: string }
  | { kind: 'noise' }
  | { kind: 'solid'; rgb: [number, number, number] }
  | { kind: 'image'; image: PlanarImage; strength: number };

export interface SynthRequest {
  prompts: WeightedPrompt[];
  width: number;
  height: number;
  seed: number;
  init?: InitSpec;
  recipe?: Partial<Recipe>;
  /** Coarse-to-fine stages (sizes and steps); default from defaultSchedule(). */
  schedule?: Stage[];
  /** Style transfer / editing: pull toward the init image with this weight (mean squared error). */
  contentWeight?: number;
  /**
   * Texts the final image is also scored against, in the same pass as its prompts (no extra encoder
   * pass): the output policy's concepts. Their cosines come back as SynthResult.screenCosines.
   */
  screenTexts?: readonly string[];
}

export interface StageTiming {
  width: number;
  height: number;
  steps: number;
  ms: number;
}

export interface SynthProgress {
  step: number;
  totalSteps: number;
  stage: number;
  stages: number;
  loss: number;
  bestLoss: number;
  elapsedMs: number;
  etaMs: number;
}

export interface SynthOptions {
  onProgress?: (p: SynthProgress) => void;
  onFrame?: (frame: { step: number; png: Uint8Array }) => void;
  signal?: AbortSignal;
  /** Return a copy of the initial image (before any step) as SynthResult.initialImage. */
  keepInitial?: boolean;
}

export interface PromptScore {
  text: string;
  weight: number;
  cosine: number;
}

export interface SynthResult {
  /** The image as a PNG, encoded when first read (a JPEG or WebP job never reads it: 3–39 ms saved). */
  readonly png: Uint8Array;
  image: PlanarImage;
  width: number;
  height: number;
  frames: { step: number; png: Uint8Array }[];
  bestLoss: number;
  bestStep: number;
  lossHistory: number[];
  initialScores: PromptScore[];
  /** The initial image at the first stage's size, when SynthOptions.keepInitial asked for it. */
  initialImage?: PlanarImage;
  scores: PromptScore[];
  /** The final image's cosine to each of req.screenTexts (as its prompts' are taken); null where the model cannot read the text. Empty without screenTexts. */
  screenCosines: Array<number | null>;
  stepsDone: number;
  aborted: boolean;
  /** What the model cannot read of the prompts (ClipEngine.promptWarnings); empty when it reads them all. */
  warnings: string[];
  usage: {
    /** Image-encoder forward+backward passes (views × steps) plus forward-only scoring passes. */
    encoderPasses: number;
    encoderBackwardPasses: number;
    /** `encode`: the progress frames' PNGs (the final PNG is encoded when first read, outside these). */
    timingsMs: { init: number; compile: number; optimize: number; sessionRun: number; score: number; encode: number; total: number };
    /** Each stage run: its size, the steps done and the wall time of its step loop (compile excluded). Run statistics fit a step's cost against its size from these (ADR 0014). */
    stages: StageTiming[];
  };
}

const PROMPT_SLOTS = [1, 2, 4, 8];
/**
 * The API's bound on a request's weights (MAX_PROMPT_WEIGHT). The engine itself takes any finite
 * weights: they are relative, and the worker derives weights past that bound (a negative prompt weighs
 * half the positive ones together), as may a job stored before the bound. A sum that would overflow is
 * scaled first (a weight of 1e308 made it Infinity, and every prompt ran at weight 0).
 */
export { MAX_PROMPT_WEIGHT };
/**
 * The most a prompt may weigh relative to the positive weights together (the API's bound too).
 * Normalized weights are float32 in the step graph: a negative prompt of -1000 against a positive one
 * of 1e-300 would be -1e303 there, an infinite loss. A million to one is far past any useful mix.
 */
export { MAX_RELATIVE_PROMPT_WEIGHT };
const SMALLEST_NORMAL = 2 ** -1022;
/** The output policy's concepts are capped at 500 (MAX_OUTPUT_CONCEPTS). */
const MAX_SCREEN_TEXTS = 500;
const NOISE_BANK = 16;
const NOISE_SEED = 0x6e6f6973;

/**
 * Prompt weights divided by the sum of the positive ones (so those sum to 1), refused with
 * invalid_input where that cannot be done in range: a non-finite weight, no positive weight, or a
 * weight more than MAX_RELATIVE_PROMPT_WEIGHT times the positive sum. Where the plain sum is not a
 * finite normal number (it overflows, or it is subnormal), the weights are first scaled by the
 * largest magnitude.
 */
export function normalizePromptWeights(weights: readonly number[]): number[] {
  const bad = (msg: string): never => {
    throw new EngineError('invalid_input', msg, { param: 'prompts' });
  };
  let maxAbs = 0;
  for (const w of weights) {
    if (!Number.isFinite(w)) bad(`prompt weights must be finite numbers, got ${w}`);
    maxAbs = Math.max(maxAbs, Math.abs(w));
  }
  // The plain sum where it is a normal finite number (bit for bit what the engine always computed);
  // the scaled one only where it is not.
  let sum = 0;
  for (const w of weights) if (w > 0) sum += w;
  let scaled = weights;
  if (!(Number.isFinite(sum) && sum >= SMALLEST_NORMAL)) {
    scaled = maxAbs > 0 ? weights.map((w) => w / maxAbs) : weights;
    sum = 0;
    for (const w of scaled) if (w > 0) sum += w;
  }
  if (!(sum > 0 && Number.isFinite(sum))) bad('at least one prompt needs a positive weight (all-zero or all-negative weights give nothing to move toward)');
  const out = scaled.map((w) => w / sum);
  for (const [k, w] of out.entries()) {
    if (!(Math.abs(w) <= MAX_RELATIVE_PROMPT_WEIGHT)) {
      bad(`prompt ${k + 1}'s weight ${weights[k]} is more than ${MAX_RELATIVE_PROMPT_WEIGHT} times the positive weights together (${weights.filter((x) => x > 0).join(' + ')}); give the prompts weights of comparable size`);
    }
  }
  return out;
}

/** The recipe a request runs: the notebook defaults, then the model's own defaults, then the request's fields. */
export function validateRequest(req: SynthRequest, encoderSize: number, modelDefaults: Partial<Recipe> = {}): { recipe: Recipe; schedule: Stage[] } {
  const recipe: Recipe = { ...DEFAULT_RECIPE, ...modelDefaults, ...req.recipe };
  validateRecipe(recipe);
  if (!Array.isArray(req.prompts) || req.prompts.length === 0) throw new EngineError('invalid_input', 'at least one prompt is required', { param: 'prompts' });
  if (req.prompts.length > PROMPT_SLOTS[PROMPT_SLOTS.length - 1]) throw new EngineError('invalid_input', `at most ${PROMPT_SLOTS[PROMPT_SLOTS.length - 1]} prompts`, { param: 'prompts' });
  for (const p of req.prompts) {
    if (typeof p.text !== 'string' || p.text.trim() === '') throw new EngineError('invalid_input', 'prompt text must not be empty', { param: 'prompts' });
    if (p.text.length > LIMITS.promptChars) throw new EngineError('invalid_input', `prompt is ${p.text.length} characters; the limit is ${LIMITS.promptChars}`, { param: 'prompts' });
    if (!Number.isFinite(p.weight)) throw new EngineError('invalid_input', 'prompt weights must be finite numbers', { param: 'prompts' });
  }
  if (req.screenTexts !== undefined) {
    if (!Array.isArray(req.screenTexts) || req.screenTexts.length > MAX_SCREEN_TEXTS) throw new EngineError('invalid_input', `screenTexts must be an array of at most ${MAX_SCREEN_TEXTS} texts`, { param: 'screenTexts' });
    for (const t of req.screenTexts) {
      if (typeof t !== 'string' || t.trim() === '' || t.length > 1000) throw new EngineError('invalid_input', 'every screen text must be a non-empty string of at most 1000 characters', { param: 'screenTexts' });
    }
  }
  if (!req.prompts.some((p) => p.weight > 0)) throw new EngineError('invalid_input', 'at least one prompt needs a positive weight (all-zero or all-negative weights give nothing to move toward)', { param: 'prompts' });
  normalizePromptWeights(req.prompts.map((p) => p.weight)); // the bounds, before any compute is spent
  const side = (v: number, param: string) => {
    if (!Number.isInteger(v) || v < LIMITS.side[0] || v > LIMITS.side[1] || v % 8 !== 0) {
      throw new EngineError('invalid_input', `${param} must be a multiple of 8 in [${LIMITS.side[0]}, ${LIMITS.side[1]}], got ${v}`, { param });
    }
  };
  side(req.width, 'width');
  side(req.height, 'height');
  if (req.width * req.height > LIMITS.pixels) throw new EngineError('invalid_input', `${req.width}×${req.height} exceeds ${LIMITS.pixels} pixels`, { param: 'width' });
  if (!Number.isInteger(req.seed) || req.seed < 0 || req.seed > 0xffffffff) throw new EngineError('invalid_input', 'seed must be a uint32', { param: 'seed' });
  if (req.init?.kind === 'image') {
    const s = req.init.strength;
    if (!(s >= 0 && s <= 1)) throw new EngineError('invalid_input', `strength must be in [0, 1], got ${s}`, { param: 'strength' });
  }
  if (req.contentWeight !== undefined && !(req.contentWeight >= 0 && Number.isFinite(req.contentWeight))) throw new EngineError('invalid_input', 'content weight must be ≥ 0', { param: 'content_weight' });
  const schedule = req.schedule ?? defaultSchedule(req.width, req.height, recipe.steps, encoderSize);
  if (schedule.length === 0 || schedule.length > 6) throw new EngineError('invalid_input', 'schedule needs 1–6 stages', { param: 'schedule' });
  const last = schedule[schedule.length - 1];
  if (last.width !== req.width || last.height !== req.height) throw new EngineError('invalid_input', 'the last stage must have the requested size', { param: 'schedule' });
  for (const s of schedule) {
    side(s.width, 'schedule.width');
    side(s.height, 'schedule.height');
    if (!Number.isInteger(s.steps) || s.steps < 1) throw new EngineError('invalid_input', 'every stage needs ≥ 1 step', { param: 'schedule' });
  }
  const total = schedule.reduce((a, s) => a + s.steps, 0);
  if (total > LIMITS.steps[1]) throw new EngineError('invalid_input', `schedule has ${total} steps; the limit is ${LIMITS.steps[1]}`, { param: 'steps' });
  return { recipe, schedule };
}

/** The p-quantile of |2x − 1| (quickselect on a copy: O(n), no full sort on the hot path). */
export function quantileAbsCentered(x: Float32Array, p: number, scratch?: Float32Array): number {
  const n = x.length;
  const a = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.abs(2 * x[i] - 1);
  // torch.quantile's linear interpolation between order statistics.
  const pos = p * (n - 1);
  const lo = Math.floor(pos);
  const vlo = select(a, lo);
  if (lo + 1 >= n) return vlo;
  let vhi = Infinity;
  for (let i = lo + 1; i < n; i++) if (a[i] < vhi) vhi = a[i]; // after select, a[lo+1..] ≥ a[lo]
  return vlo + (vhi - vlo) * (pos - lo);
}

function select(a: Float32Array, k: number): number {
  let lo = 0, hi = a.length - 1;
  while (hi > lo) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot) i++;
      while (a[j] > pivot) j--;
      if (i <= j) {
        const t = a[i]; a[i] = a[j]; a[j] = t;
        i++; j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k];
  }
  return a[k];
}

/** Imagen's dynamic thresholding in the [−1, 1] domain: s = max(1, quantile); y = clip(y, −s, s)/s. */
export function dynamicThreshold(x: Float32Array, p: number, scratch?: Float32Array): void {
  const s = Math.max(1, quantileAbsCentered(x, p, scratch));
  for (let i = 0; i < x.length; i++) {
    let y = 2 * x[i] - 1;
    y = y > s ? s : y < -s ? -s : y;
    x[i] = (y / s + 1) / 2;
  }
}

/**
 * Content preservation (style transfer, editing): adds c·mean((x − x₀)²)'s gradient, 2c(x − x₀)/n, to
 * `grad` and returns the loss term.
 */
export function addContentLoss(x: Float32Array, x0: Float32Array, c: number, grad: Float32Array): number {
  const n = x.length;
  let sse = 0;
  for (let i = 0; i < n; i++) {
    const d = x[i] - x0[i];
    sse += d * d;
    grad[i] += (2 * c * d) / n;
  }
  return (c * sse) / n;
}

export class AdamW {
  private m: Float32Array;
  private v: Float32Array;
  private t = 0;
  constructor(n: number, private readonly r: Pick<Recipe, 'lr' | 'betas' | 'eps' | 'weightDecay'>) {
    this.m = new Float32Array(n);
    this.v = new Float32Array(n);
  }
  /** torch.optim.AdamW semantics (decoupled weight decay, bias-corrected moments). */
  step(p: Float32Array, g: Float32Array): void {
    const { lr, eps, weightDecay } = this.r;
    const [b1, b2] = this.r.betas;
    this.t++;
    const bc1 = 1 - b1 ** this.t, bc2 = 1 - b2 ** this.t;
    const stepSize = lr / bc1;
    const sqrtBc2 = Math.sqrt(bc2);
    const decay = 1 - lr * weightDecay;
    const m = this.m, v = this.v;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i];
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      p[i] = p[i] * decay - (stepSize * m[i]) / (Math.sqrt(v[i]) / sqrtBc2 + eps);
    }
  }
}

interface ViewPlan {
  windows: Window[];
  weights: Float32Array; // per view
  /** The rectangle each view's colour pivots on (colorOnImage): the image for a global view, its crop for a patch view. */
  pivots: Array<{ x0: number; y0: number; x1: number; y1: number }>;
}

/** Draw this step's view windows: global views (resize + translation) then patch views. */
export function planViews(rng: Rng, r: Recipe, H: number, W: number): ViewPlan {
  const windows: Window[] = [];
  const weights = new Float32Array(r.globalViews + r.patchViews);
  const pivots: ViewPlan['pivots'] = [];
  const short = Math.min(H, W);
  for (let v = 0; v < r.globalViews; v++) {
    const size = short / rng.uniform(r.resize[0], r.resize[1]);
    // Centre: anywhere along the long axis (so non-square outputs are covered), ± translation.
    const cx = (W - short) * rng.next() + short / 2 + rng.uniform(-r.translation, r.translation) * size;
    const cy = (H - short) * rng.next() + short / 2 + rng.uniform(-r.translation, r.translation) * size;
    windows.push({ x: cx - size / 2, y: cy - size / 2, size, flip: r.flip && rng.next() < 0.5 });
    weights[v] = r.globalWeight / r.globalViews;
    pivots.push({ x0: 0, y0: 0, x1: W, y1: H });
  }
  for (let v = 0; v < r.patchViews; v++) {
    // A crop of the image, then (as the notebook runs DiffAugment on the resized crops too) a zoom and
    // a shift of that crop, in its own units. Beyond the crop the window reads the image's own pixels
    // where the notebook pads with zeros.
    const patch = short * r.patchFraction;
    const px = rng.next() * (W - patch), py = rng.next() * (H - patch);
    const size = patch / rng.uniform(r.resize[0], r.resize[1]);
    const cx = px + patch / 2 + rng.uniform(-r.translation, r.translation) * patch;
    const cy = py + patch / 2 + rng.uniform(-r.translation, r.translation) * patch;
    windows.push({ x: cx - size / 2, y: cy - size / 2, size, flip: r.flip && rng.next() < 0.5 });
    weights[r.globalViews + v] = r.patchWeight / r.patchViews;
    pivots.push({ x0: px, y0: py, x1: px + patch, y1: py + patch }); // the notebook colours the resized crop
  }
  return { windows, weights, pivots };
}

export async function synthesize(engine: ClipEngine, req: SynthRequest, opts: SynthOptions = {}): Promise<SynthResult> {
  const t0 = performance.now();
  const S = engine.imageSize;
  const E = engine.embedDim;
  const { recipe: r, schedule } = validateRequest(req, S, engine.bundle.manifest.recipe);
  const timings = { init: 0, compile: 0, optimize: 0, sessionRun: 0, score: 0, encode: 0, total: 0 };
  const stageTimings: StageTiming[] = [];
  const root = Rng.fromSeed(req.seed);
  const augRng = root.fork('augment');
  const initRng = root.fork('init');

  // Prompts → unit text embeddings (one slot per prompt; unused slots get weight 0).
  const K = PROMPT_SLOTS.find((k) => k >= req.prompts.length)!;
  const { unit: textUnit } = await engine.embedText(req.prompts.map((p) => p.text));
  // Before the run, so a text the engine cannot embed fails the request before the compute is spent.
  const screenUnits = req.screenTexts?.length ? await engine.conceptEmbeddings(req.screenTexts) : [];
  const promptWeights = normalizePromptWeights(req.prompts.map((p) => p.weight));
  let encoderPasses = 0;
  let encoderBackwardPasses = 0;

  const promptUnits = req.prompts.map((_, k) => textUnit.subarray(k * E, (k + 1) * E));
  const scoreImage = async (img: PlanarImage, screen: ReadonlyArray<Float32Array | null> = []): Promise<{ scores: PromptScore[]; screenCosines: Array<number | null> }> => {
    const { cosines, passes } = await cosinesOver(engine, img, [...promptUnits, ...screen]);
    encoderPasses += passes;
    return {
      scores: req.prompts.map((p, k) => ({ text: p.text, weight: p.weight, cosine: cosines[k]! })),
      screenCosines: cosines.slice(req.prompts.length),
    };
  };

  // ---- initialization ----
  const tInit = performance.now();
  const first = schedule[0];
  let image = await initialImage(engine, req, first, r, initRng, textUnit, promptWeights, E, () => (encoderPasses += 1), opts.signal);
  const contentTarget = req.init?.kind === 'image' && req.contentWeight ? req.init.image : undefined;
  timings.init = performance.now() - tInit;
  // An abort (a cancel, a drain, the time limit) is honoured between every pass, not only between
  // steps: the start search alone is 63 encoder batches, tens of seconds on a CPU at ViT-B/32.
  const unscored = () => ({ scores: req.prompts.map((p) => ({ text: p.text, weight: p.weight, cosine: Number.NaN })), screenCosines: [] as Array<number | null> });
  const initialScores = opts.signal?.aborted ? unscored().scores : (await scoreImage(image)).scores;
  const initialCopy = opts.keepInitial ? cloneImage(image) : undefined;

  const V = r.globalViews + r.patchViews;
  // The step graph's noise bank (an initializer: the same for every run at this size), made only when a
  // graph is built: 2.4 M normals (9.6 MB) at 224 px, wasted on every run whose graph is leased warm.
  const noiseBank = () => Rng.fromSeed(NOISE_SEED).fillNormal(new Float32Array(NOISE_BANK * 3 * S * S)) as Float32Array;

  const totalSteps = schedule.reduce((a, s) => a + s.steps, 0);
  const lossHistory: number[] = [];
  const frames: { step: number; png: Uint8Array }[] = [];
  let best = { loss: Infinity, step: -1, image: cloneImage(image) };
  let stepsDone = 0;
  let aborted = opts.signal?.aborted ?? false;
  const tOpt = performance.now();

  // An init image keeps its detail through the coarse-to-fine stages: each finer stage adds back
  // what the coarser stage's copy of the init lacks, weighted like the init itself (1 − strength).
  // Without this a 512 px photo went through a 224 px first stage and strength 0 returned it blurred.
  const initImage = req.init?.kind === 'image' ? req.init : undefined;
  let initAtStage = initImage ? resizeCover(initImage.image, first.width, first.height) : undefined;

  for (let si = 0; si < schedule.length && !aborted; si++) {
    if (opts.signal?.aborted) {
      aborted = true; // before compiling the next stage's graph
      break;
    }
    const stage = schedule[si];
    if (image.width !== stage.width || image.height !== stage.height) {
      image = resizeBilinear(image, stage.width, stage.height);
      if (initImage && initAtStage) {
        const here = resizeCover(initImage.image, stage.width, stage.height);
        const carried = resizeBilinear(initAtStage, stage.width, stage.height);
        const keep = 1 - initImage.strength;
        for (let i = 0; i < image.data.length; i++) image.data[i] = Math.min(1, Math.max(0, image.data[i] + keep * (here.data[i] - carried.data[i])));
        initAtStage = here;
      }
    }
    const H = stage.height, W = stage.width;
    const tc = performance.now();
    // Leased for the stage: the engine keeps a few step graphs (one per output size) and may unload
    // the least recently used idle one, never one a stage is running.
    const lease = await engine.leaseGraph(`step:${H}x${W}:v${V}:k${K}:m${NOISE_BANK}:c${r.colorOnImage ? 'image' : 'view'}`, () =>
      stepGraph(engine.towerSource(), { height: H, width: W, views: V, promptSlots: K, noiseBank: NOISE_BANK, colorOnImage: r.colorOnImage }, noiseBank()),
    );
    const handle = lease.handle;
    timings.compile += performance.now() - tc;
    const stageStart = { at: performance.now(), steps: stepsDone };
    try {
      const adam = new AdamW(3 * H * W, r);
      const scratch = new Float32Array(3 * H * W);
      const content = contentTarget ? resizeCover(contentTarget, W, H).data : undefined;
      const targets = new Float32Array(V * K * E);
      for (let v = 0; v < V; v++) for (let k = 0; k < req.prompts.length; k++) targets.set(textUnit.subarray(k * E, (k + 1) * E), (v * K + k) * E);

      // Host work that does not depend on this step's gradient (drawing the next step's views, encoding
      // the last frame) overlaps the session run, which executes in the engine pool's worker thread.
      let next = drawAugmentation(augRng, r, planViews(augRng, r, H, W), targets, promptWeights, K, S, H, W, V);
      let pendingFrame: { step: number; image: PlanarImage } | undefined;
      const flushFrame = () => {
        if (!pendingFrame) return;
        const te = performance.now();
        const frame = { step: pendingFrame.step, png: encodePng(pendingFrame.image) };
        timings.encode += performance.now() - te;
        pendingFrame = undefined;
        frames.push(frame);
        opts.onFrame?.(frame);
      };
      for (let s = 0; s < stage.steps; s++) {
        if (opts.signal?.aborted) {
          aborted = true;
          break;
        }
        const feeds = { ...next, image: { dtype: 'float32' as const, dims: [1, 3, H, W], data: Float32Array.from(image.data) } };
        const tr = performance.now();
        const running = handle.run(feeds, ['loss', 'grad_image'], { transfer: true });
        if (s + 1 < stage.steps) next = drawAugmentation(augRng, r, planViews(augRng, r, H, W), targets, promptWeights, K, S, H, W, V);
        flushFrame();
        const out = await running;
        timings.sessionRun += performance.now() - tr;
        encoderPasses += V;
        encoderBackwardPasses += V;
        let loss = (out.loss.data as Float32Array)[0];
        const grad = out.grad_image.data as Float32Array;
        if (content && req.contentWeight) loss += addContentLoss(image.data, content, req.contentWeight, grad);
        if (!Number.isFinite(loss)) throw new EngineError('numerical_error', `loss became ${loss} at step ${stepsDone}; the model or input produced non-finite values (try another seed, a lower lr, or check the model with clipag gradcheck)`);
        lossHistory.push(loss);
        if (loss < best.loss) best = { loss, step: stepsDone, image: cloneImage(image) };
        if (r.frameEvery > 0 && stepsDone % r.frameEvery === 0) pendingFrame = { step: stepsDone, image: cloneImage(image) };
        clipGradNorm(grad, r.gradClip);
        adam.step(image.data, grad);
        dynamicThreshold(image.data, r.thresholdPercentile, scratch);
        stepsDone++;
        const elapsed = performance.now() - tOpt;
        opts.onProgress?.({
          step: stepsDone, totalSteps, stage: si + 1, stages: schedule.length, loss, bestLoss: best.loss,
          elapsedMs: elapsed, etaMs: (elapsed / stepsDone) * (totalSteps - stepsDone),
        });
      }
      flushFrame();
      if (stepsDone > stageStart.steps) stageTimings.push({ width: W, height: H, steps: stepsDone - stageStart.steps, ms: performance.now() - stageStart.at });
      // Keep the best image of the final resolution: a coarse stage's best would need upsampling.
      if (si < schedule.length - 1 && !aborted) best = { loss: Infinity, step: -1, image: cloneImage(image) };
    } finally {
      lease.release();
    }
  }
  timings.optimize = performance.now() - tOpt;
  if (best.step < 0) best = { loss: lossHistory[lossHistory.length - 1] ?? Infinity, step: stepsDone, image: cloneImage(image) };
  let finalImage = best.image;
  if (finalImage.width !== req.width || finalImage.height !== req.height) finalImage = resizeBilinear(finalImage, req.width, req.height);

  const ts = performance.now();
  // An aborted run's image is thrown away: it is not scored.
  const { scores, screenCosines } = aborted ? unscored() : await scoreImage(finalImage, screenUnits);
  timings.score = performance.now() - ts;
  timings.total = performance.now() - t0;
  let png: Uint8Array | undefined;
  return {
    get png() {
      return (png ??= encodePng(finalImage));
    },
    image: finalImage, width: req.width, height: req.height, frames, bestLoss: best.loss, bestStep: best.step, lossHistory,
    initialScores, initialImage: initialCopy, scores, screenCosines, stepsDone, aborted, warnings: engine.promptWarnings(req.prompts.map((p) => p.text)),
    usage: { encoderPasses, encoderBackwardPasses, timingsMs: timings, stages: stageTimings },
  };
}

/**
 * Compiles the graphs a one-prompt job of `size`×`size` uses (the batch-1 text graph, a gradient graph
 * per coarse-to-fine stage for the recipe's views, the batch-16 and batch-1 image graphs of the GMM start
 * and the scoring) by running steps on every stage, so a worker's first job does not pay (and is not
 * billed for) them. `recipe` is the worker's own overrides, so the view count is the jobs'. A job with a
 * negative prompt (two prompt slots) or of another size still compiles its own on first use.
 */
export async function warmUp(
  engine: ClipEngine,
  recipe: Partial<Recipe> = {},
  size = engine.imageSize,
  options: { maxSteps?: number; signal?: AbortSignal } = {},
): Promise<void> {
  // The stages depend on the size alone (given a step for each): one step per stage reaches them all.
  // Twice as many steps as stages: a session's second run is still slow too (its memory arena grows;
  // 1.3–1.9 s against 0.5 s at ViT-B/32 dims on the CPU), and the first job would pay it. The
  // schedule gives every stage two of them up to 3 stages, which the worker's default sizes never
  // pass; past that some middle stages get one. A worker's step cap runs fewer, on the stages
  // defaultSchedule picks for that many: warm the same ones.
  const stages = defaultSchedule(size, size, Number.MAX_SAFE_INTEGER, engine.imageSize).length;
  const steps = Math.min(2 * stages, options.maxSteps ?? Infinity, recipe.steps ?? Infinity);
  await synthesize(engine, {
    prompts: [{ text: 'a photo', weight: 1 }],
    width: size,
    height: size,
    seed: 0,
    init: engine.bundle.priorPath ? { kind: 'gmm' } : { kind: 'noise' },
    // 16 GMM samples: one batch-16 image pass compiles that graph, at a fraction of a real start's cost.
    recipe: { ...recipe, steps, initSamples: 16, frameEvery: 0 },
  }, options.signal ? { signal: options.signal } : {});
}

/**
 * The cosine of an image to each unit text embedding, as a generation's scores are taken: a score
 * covers the whole image, so a non-square one is scored on square windows that together cover it (the
 * encoder sees squares), and each cosine is their mean. One encoder pass per window, at batch 1, so
 * no new graph is compiled for it. A null embedding (a text the model cannot read) gives null.
 */
export async function cosinesOver(engine: ClipEngine, img: PlanarImage, units: ReadonlyArray<Float32Array | null>): Promise<{ cosines: Array<number | null>; passes: number }> {
  const S = engine.imageSize;
  const E = engine.embedDim;
  const sums = new Float64Array(units.length);
  const windows = squareCropsCovering(img);
  for (const window of windows) {
    const unit = await engine.embedPixels(resizeCover(window, S, S).data, 1, 1);
    units.forEach((u, k) => u && (sums[k]! += dot(unit, 0, u, 0, E)));
  }
  return { cosines: units.map((u, k) => (u ? sums[k]! / windows.length : null)), passes: windows.length };
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
  return s;
}

export function clipGradNorm(g: Float32Array, maxNorm: number): void {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  const norm = Math.sqrt(s);
  if (norm > maxNorm) {
    const f = maxNorm / (norm + 1e-6); // torch.nn.utils.clip_grad_norm_
    for (let i = 0; i < g.length; i++) g[i] *= f;
  }
}

/** Every step input except the image: view operators, colour, cutout, noise, targets and weights. */
function drawAugmentation(rng: Rng, r: Recipe, plan: ViewPlan, targets: Float32Array, promptWeights: number[], K: number, S: number, H: number, W: number, V: number) {
  const rows = new Float32Array(V * S * H);
  const cols = new Float32Array(V * W * S);
  plan.windows.forEach((win, v) => fillViewOperators(rows, v * S * H, cols, v * W * S, S, H, W, win));
  const bright = new Float32Array(V), sat = new Float32Array(V), con = new Float32Array(V);
  const cutR = new Float32Array(V * S), cutC = new Float32Array(V * S);
  const noiseIdx = new BigInt64Array(V);
  const noiseScale = new Float32Array(V);
  for (let v = 0; v < V; v++) {
    bright[v] = r.color ? rng.next() - 0.5 : 0;
    sat[v] = r.color ? rng.next() * 2 : 1;
    con[v] = r.color ? rng.next() + 0.5 : 1;
    if (r.cutout > 0) {
      // DiffAugment rand_cutout: a square of side ratio·S centred at a uniform position, clipped.
      const size = Math.round(r.cutout * S);
      const cy = rng.int(S + (1 - (size % 2))), cx = rng.int(S + (1 - (size % 2)));
      for (let i = Math.max(0, cy - (size >> 1)); i < Math.min(S, cy - (size >> 1) + size); i++) cutR[v * S + i] = 1;
      for (let i = Math.max(0, cx - (size >> 1)); i < Math.min(S, cx - (size >> 1) + size); i++) cutC[v * S + i] = 1;
    }
    noiseIdx[v] = BigInt(rng.int(NOISE_BANK));
    noiseScale[v] = rng.next() < 0.5 ? -r.noiseStd : r.noiseStd;
  }
  const weights = new Float32Array(V * K);
  for (let v = 0; v < V; v++) for (let k = 0; k < promptWeights.length; k++) weights[v * K + k] = plan.weights[v] * promptWeights[k];
  const E = targets.length / (V * K);
  // The pivot rectangles as separable averaging weights: each pixel's overlap with the span, normalized.
  const pivot = r.colorOnImage ? { rows: new Float32Array(V * H), cols: new Float32Array(V * W) } : undefined;
  if (pivot) {
    const span = (out: Float32Array, off: number, n: number, lo: number, hi: number) => {
      for (let i = 0; i < n; i++) out[off + i] = Math.max(0, Math.min(i + 1, hi) - Math.max(i, lo)) / (hi - lo);
    };
    plan.pivots.forEach((p, v) => {
      span(pivot.rows, v * H, H, p.y0, p.y1);
      span(pivot.cols, v * W, W, p.x0, p.x1);
    });
  }
  return {
    ...(pivot ? { pivot_rows: { dtype: 'float32' as const, dims: [V, 1, 1, H], data: pivot.rows }, pivot_cols: { dtype: 'float32' as const, dims: [V, 1, W, 1], data: pivot.cols } } : {}),
    resample_rows: { dtype: 'float32' as const, dims: [V, 1, S, H], data: rows },
    resample_cols: { dtype: 'float32' as const, dims: [V, 1, W, S], data: cols },
    brightness: { dtype: 'float32' as const, dims: [V, 1, 1, 1], data: bright },
    saturation: { dtype: 'float32' as const, dims: [V, 1, 1, 1], data: sat },
    contrast: { dtype: 'float32' as const, dims: [V, 1, 1, 1], data: con },
    cutout_rows: { dtype: 'float32' as const, dims: [V, 1, S, 1], data: cutR },
    cutout_cols: { dtype: 'float32' as const, dims: [V, 1, 1, S], data: cutC },
    noise_index: { dtype: 'int64' as const, dims: [V], data: noiseIdx },
    noise_scale: { dtype: 'float32' as const, dims: [V, 1, 1, 1], data: noiseScale },
    targets: { dtype: 'float32' as const, dims: [V, K, E], data: Float32Array.from(targets) },
    weights: { dtype: 'float32' as const, dims: [V, K], data: weights },
  };
}

async function initialImage(
  engine: ClipEngine, req: SynthRequest, stage: Stage, r: Recipe, rng: Rng, textUnit: Float32Array, promptWeights: number[], E: number, countPass: () => void,
  signal?: AbortSignal,
): Promise<PlanarImage> {
  const init = req.init ?? { kind: 'gmm' };
  const { width: W, height: H } = stage;
  switch (init.kind) {
    case 'noise':
      return noiseImage(W, H, rng);
    case 'solid':
      return solidImage(W, H, init.rgb);
    case 'image': {
      // strength 0 keeps the image, 1 replaces it with noise: x₀ = (1 − s)·image + s·noise.
      const base = resizeCover(init.image, W, H);
      const noise = noiseImage(W, H, rng);
      const s = init.strength;
      for (let i = 0; i < base.data.length; i++) base.data[i] = (1 - s) * base.data[i] + s * noise.data[i];
      return base;
    }
    case 'gmm': {
      const path = init.priorPath ?? engine.bundle.priorPath;
      if (!path) throw new EngineError('invalid_input', `model ${engine.name} ships no GMM prior; use init "noise" or fit one with clipag prior fit`, { param: 'init' });
      const prior = engine.prior(path);
      const n = r.initSamples;
      const res = prior.resolution;
      // Sampled in slices that yield to the event loop (0.5 s of CPU at 1000 samples, 5 s at 10 000):
      // the thread's other work (a server's requests, a heartbeat) runs meanwhile, and an abort is seen
      // within a slice. An aborted run's image is thrown away, so any image will do: component 0's mean.
      const drawn = await samplePriorYielding(prior, n, rng, signal ? { signal } : {});
      if (!drawn) return resizeBilinear({ width: res, height: res, data: prior.means.slice(0, 3 * res * res) }, W, H);
      const samples = drawn.data; // n × 3·16·16, CHW, [0,1]
      const S = engine.imageSize;
      const B = n === 1 ? 1 : 16;
      let bestScore = -Infinity;
      let bestIdx = 0;
      const px = new Float32Array(B * 3 * S * S);
      for (let start = 0; start < n && !(start > 0 && signal?.aborted); start += B) {
        const m = Math.min(B, n - start);
        for (let i = 0; i < m; i++) {
          const small = { width: res, height: res, data: samples.subarray((start + i) * 3 * res * res, (start + i + 1) * 3 * res * res) };
          px.set(resizeBilinear(small, S, S).data, i * 3 * S * S);
        }
        const unit = await engine.embedPixels(px, m, B);
        for (let i = 0; i < m; i++) {
          countPass();
          let score = 0;
          promptWeights.forEach((w, k) => (score += w * dot(unit, i * E, textUnit, k * E, E)));
          if (score > bestScore) {
            bestScore = score;
            bestIdx = start + i;
          }
        }
      }
      const chosen = { width: res, height: res, data: samples.slice(bestIdx * 3 * res * res, (bestIdx + 1) * 3 * res * res) };
      return resizeBilinear(chosen, W, H);
    }
  }
}
