// The GMM initialization prior (CLIPAG recipe, "Initialization"): one Gaussian per class (or per
// k-means cluster) over images downscaled to 16×16, with full covariance plus floor·I (floor = 1e-4).
// A run draws N samples (default 1000), upsamples them, scores them against the prompt, and starts from
// the best one. The file format is specified in docs/prior-format.md; this module fits, writes, loads
// (with full validation, so a corrupt prior is refused before any compute) and samples it.
//
// A sample is mean + L·z with z ~ N(0, I) and L the lower Cholesky factor of Σ + floor·I, so the file
// stores L rather than Σ: sampling then needs no factorization at load time.

import { EngineError } from '../errors.ts';
import type { TensorData } from '../onnx/ir.ts';
import { f16ToF32, f32ToF16, readSafetensors, writeSafetensors } from '../io/safetensors.ts';
import { resizeCover, type PlanarImage } from './image.ts';
import type { Rng } from './rng.ts';

export const PRIOR_FORMAT = 'clipag-gmm-prior';
export const PRIOR_VERSION = '1';
/** Side of the prior's images. */
export const PRIOR_RESOLUTION = 16;
/** Elements per sample: 3·16·16, CHW planar. */
export const PRIOR_DIM = 3 * PRIOR_RESOLUTION * PRIOR_RESOLUTION;
export const DEFAULT_FLOOR = 1e-4;

export type CholeskyDType = 'float32' | 'float16';

export interface GmmPrior {
  /** K, the number of Gaussian components (≥ 1). */
  components: number;
  /** Image side (16); dim = 3·resolution². */
  resolution: number;
  dim: number;
  /** [K, dim] component means, CHW planar, values in [0,1]. */
  means: Float32Array;
  /**
   * [K, dim, dim] row-major lower-triangular Cholesky factors of Σ_k + floor·I. Float32 values, or
   * IEEE half bit patterns (Uint16Array) when choleskyDType is 'float16': kept as stored so that a
   * 200-class prior costs 236 MB of memory, not 472 MB; sampling decodes one component at a time.
   */
  cholesky: Float32Array | Uint16Array;
  choleskyDType: CholeskyDType;
  /** [K] component weights, normalized to sum 1. */
  weights: Float64Array;
  /** The covariance floor added before factorization. */
  floor: number;
  /** The file's string metadata (format, version, source, …), as read or as to be written. */
  metadata: Record<string, string>;
}

const bad = (msg: string, detail: Record<string, unknown> = {}) => new EngineError('invalid_model', `invalid prior file: ${msg}`, detail);

// ---------------------------------------------------------------------------------------------------
// Half-precision factors are decoded through a 64 Ki-entry table: one lookup per element keeps
// sampling from a float16 prior as fast as from a float32 one.

const F16_TABLE = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = f16ToF32(h);
  return t;
})();

// ---------------------------------------------------------------------------------------------------
// Validation (file → GmmPrior)

function parseNumber(meta: Record<string, string>, key: string): number {
  const s = meta[key];
  if (s === undefined) throw bad(`metadata key "${key}" is missing`, { key });
  const v = Number(s);
  if (s.trim() === '' || !Number.isFinite(v)) throw bad(`metadata "${key}" is not a number: ${JSON.stringify(s)}`, { key });
  return v;
}

/**
 * Build a GmmPrior from a safetensors file's tensors and metadata, checking everything the sampler
 * relies on: metadata, tensor names, dtypes and shapes, finiteness, means in [0,1], lower-triangular
 * factors with a positive diagonal, and non-negative weights. Throws EngineError('invalid_model').
 */
export function priorFromTensors(tensors: Map<string, TensorData>, metadata: Record<string, string> | undefined): GmmPrior {
  const meta = metadata ?? {};
  if (meta.format !== PRIOR_FORMAT) throw bad(`metadata "format" must be "${PRIOR_FORMAT}"; got ${JSON.stringify(meta.format)}`);
  if (meta.version !== PRIOR_VERSION) throw bad(`unsupported version ${JSON.stringify(meta.version)} (this build reads version ${PRIOR_VERSION})`);
  if (meta.layout !== 'chw') throw bad(`metadata "layout" must be "chw"; got ${JSON.stringify(meta.layout)}`);
  const resolution = parseNumber(meta, 'resolution');
  if (resolution !== PRIOR_RESOLUTION) throw bad(`resolution ${resolution} is not supported (must be ${PRIOR_RESOLUTION})`);
  const floor = parseNumber(meta, 'floor');
  if (!(floor >= 0)) throw bad(`floor must be ≥ 0; got ${floor}`);
  if (typeof meta.source !== 'string') throw bad('metadata key "source" is missing (say what the prior was fitted on)');
  const declaredK = parseNumber(meta, 'components');

  const allowed = new Set(['means', 'cholesky', 'weights']);
  for (const name of tensors.keys()) if (!allowed.has(name)) throw bad(`unexpected tensor "${name}" (allowed: means, cholesky, weights)`, { tensor: name });
  const means = tensors.get('means');
  const chol = tensors.get('cholesky');
  if (!means) throw bad('tensor "means" is missing');
  if (!chol) throw bad('tensor "cholesky" is missing');
  const D = PRIOR_DIM;

  if (means.dtype !== 'float32') throw bad(`"means" must be F32; got ${means.dtype}`);
  if (means.dims.length !== 2 || means.dims[1] !== D || means.dims[0] < 1) throw bad(`"means" must be [K ≥ 1, ${D}]; got [${means.dims.join(', ')}]`);
  const K = means.dims[0];
  if (declaredK !== K) throw bad(`metadata says ${declaredK} components but "means" has ${K}`);
  if (chol.dtype !== 'float32' && chol.dtype !== 'float16') throw bad(`"cholesky" must be F32 or F16; got ${chol.dtype}`);
  if (chol.dims.length !== 3 || chol.dims[0] !== K || chol.dims[1] !== D || chol.dims[2] !== D) {
    throw bad(`"cholesky" must be [${K}, ${D}, ${D}]; got [${chol.dims.join(', ')}]`);
  }
  const md = means.data as Float32Array;
  if (md.length !== K * D) throw bad(`"means" holds ${md.length} values, expected ${K * D}`);
  const cd = chol.data as Float32Array | Uint16Array;
  if (cd.length !== K * D * D) throw bad(`"cholesky" holds ${cd.length} values, expected ${K * D * D}`);

  for (let i = 0; i < md.length; i++) {
    const v = md[i];
    if (!Number.isFinite(v)) throw bad(`"means" has a non-finite value at component ${Math.floor(i / D)}, element ${i % D}`);
    // Means of [0,1] images lie in [0,1]; a 0–255 scale is the usual mistake.
    if (v < -1e-6 || v > 1 + 1e-6) throw bad(`"means" value ${v} at component ${Math.floor(i / D)} is outside [0,1] (pixel values must be scaled to [0,1])`);
  }

  const half = chol.dtype === 'float16';
  const val = half ? (i: number) => F16_TABLE[cd[i]] : (i: number) => cd[i];
  for (let k = 0; k < K; k++) {
    const base = k * D * D;
    for (let r = 0; r < D; r++) {
      const row = base + r * D;
      for (let c = 0; c <= r; c++) {
        if (!Number.isFinite(val(row + c))) throw bad(`"cholesky" has a non-finite value at component ${k}, [${r}, ${c}]`);
      }
      const d = val(row + r);
      if (!(d > 0)) throw bad(`"cholesky" diagonal must be positive; component ${k} has ${d} at [${r}, ${r}]`);
      for (let c = r + 1; c < D; c++) {
        if (val(row + c) !== 0) throw bad(`"cholesky" must be lower-triangular; component ${k} has ${val(row + c)} at [${r}, ${c}]`);
      }
    }
  }

  const weights = new Float64Array(K);
  const wt = tensors.get('weights');
  if (wt) {
    if (wt.dtype !== 'float32') throw bad(`"weights" must be F32; got ${wt.dtype}`);
    if (wt.dims.length !== 1 || wt.dims[0] !== K) throw bad(`"weights" must be [${K}]; got [${wt.dims.join(', ')}]`);
    const w = wt.data as Float32Array;
    let total = 0;
    for (let k = 0; k < K; k++) {
      if (!Number.isFinite(w[k]) || w[k] < 0) throw bad(`"weights" must be finite and ≥ 0; component ${k} has ${w[k]}`);
      total += w[k];
    }
    if (!(total > 0)) throw bad('"weights" are all zero');
    for (let k = 0; k < K; k++) weights[k] = w[k] / total;
  } else {
    weights.fill(1 / K);
  }

  return {
    components: K,
    resolution: PRIOR_RESOLUTION,
    dim: D,
    means: md,
    cholesky: cd,
    choleskyDType: half ? 'float16' : 'float32',
    weights,
    floor,
    metadata: { ...meta },
  };
}

/**
 * Read and validate a prior file. Any problem (missing file, truncated or corrupt safetensors, wrong
 * shapes, NaN, non-triangular factor, bad metadata) is an EngineError('invalid_model') raised here,
 * before a run spends any compute.
 */
export function loadPrior(path: string): GmmPrior {
  let file: { metadata?: Record<string, string>; tensors: Map<string, TensorData> };
  try {
    file = readSafetensors(path);
  } catch (e) {
    throw new EngineError('invalid_model', `invalid prior file ${path}: ${readFailure((e as Error).message, path)}`, { path });
  }
  try {
    return priorFromTensors(file.tensors, file.metadata);
  } catch (e) {
    if (e instanceof EngineError) throw new EngineError(e.code, e.message.replace('invalid prior file:', `invalid prior file ${path}:`), { ...e.detail, path });
    throw e;
  }
}

/** The reader's message without the path it repeats (the caller names the file once). */
function readFailure(msg: string, path: string): string {
  const opening = `cannot open safetensors file ${path}: `;
  if (msg.startsWith(opening)) return `cannot open it: ${msg.slice(opening.length).replace(`, open '${path}'`, '')}`;
  if (msg.startsWith(`${path}: `)) msg = msg.slice(path.length + 2);
  return `cannot read it as safetensors: ${msg}`;
}

// ---------------------------------------------------------------------------------------------------
// Sampling

/** Float32 copy of component k's factor (decoding half bits once per component). */
function componentFactor(prior: GmmPrior, k: number, out: Float32Array): Float32Array {
  const D = prior.dim;
  const src = prior.cholesky;
  const base = k * D * D;
  if (prior.choleskyDType === 'float16') {
    for (let i = 0; i < D * D; i++) out[i] = F16_TABLE[src[base + i]];
  } else {
    out.set((src as Float32Array).subarray(base, base + D * D));
  }
  return out;
}

export interface PriorSamples {
  /** [n, dim] samples, CHW planar per row, clamped to [0,1]. */
  data: Float32Array;
  /** The component each sample was drawn from. */
  components: Int32Array;
}

/**
 * Draw n samples: component k ~ weights, then mean_k + L_k·z with z ~ N(0, I), clamped to [0,1].
 * All random draws happen first, in sample order (component, then dim normals), so the result depends
 * only on the rng state, not on how the arithmetic is grouped. Returns [n, dim] float32.
 */
export function samplePrior(prior: GmmPrior, n: number, rng: Rng): Float32Array {
  return samplePriorDetailed(prior, n, rng).data;
}

export function samplePriorDetailed(prior: GmmPrior, n: number, rng: Rng): PriorSamples {
  const out = emptySamples(prior, n);
  const work = samplingWork(prior, n, rng, out);
  while (!work.next().done);
  return out;
}

/** How long samplePriorYielding computes before letting the thread's other work run. */
export const PRIOR_SLICE_MS = 8;

/**
 * samplePriorDetailed in slices of about `sliceMs` (default PRIOR_SLICE_MS), yielding to the event loop
 * (setImmediate) between them: at the default 1000 samples sampling is ~0.5 s of CPU, and 5 s at the
 * 10 000 maximum, which would otherwise stall everything sharing the thread (`clipag serve`'s API, a
 * worker's heartbeat, an abort timer). The work and the rng draws are exactly those of the synchronous
 * version, in the same order, so the samples are bit-identical. `signal` is checked between slices: an
 * abort returns undefined (the rng is then left part-way).
 */
export async function samplePriorYielding(
  prior: GmmPrior, n: number, rng: Rng, opts: { signal?: AbortSignal; sliceMs?: number } = {},
): Promise<PriorSamples | undefined> {
  const out = emptySamples(prior, n);
  const sliceMs = opts.sliceMs ?? PRIOR_SLICE_MS;
  if (opts.signal?.aborted) return undefined;
  const work = samplingWork(prior, n, rng, out);
  let deadline = performance.now() + sliceMs;
  while (!work.next().done) {
    if (performance.now() < deadline) continue;
    await new Promise<void>((res) => setImmediate(res));
    if (opts.signal?.aborted) return undefined;
    deadline = performance.now() + sliceMs;
  }
  return out;
}

function emptySamples(prior: GmmPrior, n: number): PriorSamples {
  if (!Number.isInteger(n) || n < 1) throw new EngineError('invalid_input', `prior sample count must be a positive integer; got ${n}`, { param: 'samples' });
  return { data: new Float32Array(n * prior.dim), components: new Int32Array(n) };
}

/**
 * The sampling itself, as a generator that pauses after each unit of work (one sample's draws, one
 * component's factor decode, one sample's L·z): the synchronous and the yielding samplers both run it
 * to the end, so they cannot differ.
 */
function* samplingWork(prior: GmmPrior, n: number, rng: Rng, result: PriorSamples): Generator<void, void, void> {
  const D = prior.dim;
  const comps = result.components;
  const z = new Float64Array(n * D);
  for (let i = 0; i < n; i++) {
    comps[i] = prior.components === 1 ? 0 : rng.categorical(prior.weights);
    for (let j = 0; j < D; j++) z[i * D + j] = rng.normal();
    yield;
  }
  const out = result.data;
  // Group by component so each factor is decoded once.
  const L = new Float32Array(D * D);
  const used = new Set<number>(comps);
  for (const k of [...used].sort((a, b) => a - b)) {
    componentFactor(prior, k, L);
    yield;
    const mb = k * D;
    for (let i = 0; i < n; i++) {
      if (comps[i] !== k) continue;
      const zb = i * D;
      for (let r = 0; r < D; r++) {
        const row = r * D;
        let acc = prior.means[mb + r];
        for (let c = 0; c <= r; c++) acc += L[row + c] * z[zb + c];
        out[zb + r] = acc < 0 ? 0 : acc > 1 ? 1 : acc;
      }
      yield;
    }
  }
}

/** Row i of a [n, dim] sample buffer as a 16×16 PlanarImage (a copy). */
export function sampleImage(samples: Float32Array, i: number, resolution = PRIOR_RESOLUTION): PlanarImage {
  const D = 3 * resolution * resolution;
  if (!Number.isInteger(i) || i < 0 || (i + 1) * D > samples.length) throw new EngineError('invalid_input', `sample index ${i} out of range`);
  return { width: resolution, height: resolution, data: samples.slice(i * D, (i + 1) * D) };
}

/**
 * An image as a prior sample: resize to cover 16×16 (antialiased, aspect kept) and centre-crop. Odd
 * sizes and non-square images are fine; the result is CHW float32 of length 768.
 */
export function downscaleForPrior(img: PlanarImage, resolution = PRIOR_RESOLUTION): Float32Array {
  return resizeCover(img, resolution, resolution, { antialias: true }).data;
}

// ---------------------------------------------------------------------------------------------------
// Fitting

/**
 * Streaming mean/covariance of one group, in float64. Sums are taken around the first sample (a shift)
 * so that the covariance does not suffer cancellation for nearly constant pixels.
 */
export class GaussianAccumulator {
  readonly dim: number;
  count = 0;
  private shift: Float64Array;
  private s1: Float64Array;
  private s2: Float64Array; // lower triangle used, [dim, dim]
  private d: Float64Array;

  constructor(dim = PRIOR_DIM) {
    this.dim = dim;
    this.shift = new Float64Array(dim);
    this.s1 = new Float64Array(dim);
    this.s2 = new Float64Array(dim * dim);
    this.d = new Float64Array(dim);
  }

  add(x: ArrayLike<number>): void {
    const D = this.dim;
    if (x.length !== D) throw new EngineError('invalid_input', `prior sample has ${x.length} values, expected ${D} (3·16·16 CHW)`);
    for (let i = 0; i < D; i++) if (!Number.isFinite(x[i])) throw new EngineError('invalid_input', `prior sample has a non-finite value at ${i}`);
    if (this.count === 0) for (let i = 0; i < D; i++) this.shift[i] = x[i];
    const d = this.d, s1 = this.s1, s2 = this.s2;
    for (let i = 0; i < D; i++) {
      d[i] = x[i] - this.shift[i];
      s1[i] += d[i];
    }
    for (let r = 0; r < D; r++) {
      const dr = d[r];
      if (dr === 0) continue;
      const row = r * D;
      for (let c = 0; c <= r; c++) s2[row + c] += dr * d[c];
    }
    this.count++;
  }

  /** Mean [dim]. */
  mean(): Float64Array {
    const m = new Float64Array(this.dim);
    for (let i = 0; i < this.dim; i++) m[i] = this.shift[i] + this.s1[i] / this.count;
    return m;
  }

  /**
   * Full symmetric covariance [dim, dim] with the unbiased 1/(n−1) normalization (numpy/torch `cov`
   * default); a single sample gives zero covariance, which the floor then makes a valid isotropic one.
   */
  covariance(): Float64Array {
    const D = this.dim, n = this.count;
    const cov = new Float64Array(D * D);
    if (n < 2) return cov;
    for (let r = 0; r < D; r++) {
      for (let c = 0; c <= r; c++) {
        const v = (this.s2[r * D + c] - (this.s1[r] * this.s1[c]) / n) / (n - 1);
        cov[r * D + c] = v;
        cov[c * D + r] = v;
      }
    }
    return cov;
  }
}

/**
 * In-place lower Cholesky factor of a symmetric positive-definite [n, n] matrix (float64): the lower
 * triangle of `a` becomes L and the upper triangle is zeroed. Throws if a pivot is not positive.
 */
export function choleskyInPlace(a: Float64Array, n: number): Float64Array {
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let d = a[rj + j];
    for (let k = 0; k < j; k++) d -= a[rj + k] * a[rj + k];
    if (!(d > 0)) throw new EngineError('invalid_input', `covariance is not positive definite (pivot ${d} at ${j}); use a larger floor`, { pivot: j });
    const ljj = Math.sqrt(d);
    a[rj + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= a[ri + k] * a[rj + k];
      a[ri + j] = s / ljj;
    }
    for (let c = j + 1; c < n; c++) a[rj + c] = 0;
  }
  return a;
}

export interface FitOptions {
  /** Added to the covariance diagonal before factorization (default 1e-4, the authors' value). */
  floor?: number;
  /** Storage dtype of the Cholesky factors (default float32). */
  dtype?: CholeskyDType;
  /** Component weights; default: proportional to each group's sample count. */
  weights?: 'count' | 'uniform';
  /** What the prior was fitted on (metadata "source"). */
  source?: string;
  /** Called after each group is fitted. */
  onGroup?: (index: number, count: number) => void;
}

/** Per-component results from fitting one group, in float64. */
export interface FittedComponent {
  mean: Float64Array;
  /** Lower Cholesky factor of cov + floor·I. */
  cholesky: Float64Array;
  count: number;
}

/** Fit one Gaussian: mean, covariance, and the Cholesky factor of Σ + floor·I. */
export function fitComponent(acc: GaussianAccumulator, floor = DEFAULT_FLOOR): FittedComponent {
  if (acc.count < 1) throw new EngineError('invalid_input', 'cannot fit a Gaussian to an empty group');
  const D = acc.dim;
  const a = acc.covariance();
  for (let i = 0; i < D; i++) a[i * D + i] += floor;
  return { mean: acc.mean(), cholesky: choleskyInPlace(a, D), count: acc.count };
}

/** Assemble a GmmPrior (with metadata) from fitted components. */
export function assemblePrior(comps: FittedComponent[], opts: FitOptions = {}): GmmPrior {
  const floor = opts.floor ?? DEFAULT_FLOOR;
  const dtype = opts.dtype ?? 'float32';
  const K = comps.length;
  if (K < 1) throw new EngineError('invalid_input', 'a prior needs at least one group of images');
  const D = comps[0].mean.length;
  if (D !== PRIOR_DIM) throw new EngineError('invalid_input', `prior components must have ${PRIOR_DIM} values; got ${D}`);
  const means = new Float32Array(K * D);
  const chol = dtype === 'float16' ? new Uint16Array(K * D * D) : new Float32Array(K * D * D);
  const weights = new Float64Array(K);
  let total = 0;
  comps.forEach((c, k) => {
    for (let i = 0; i < D; i++) means[k * D + i] = Math.min(1, Math.max(0, c.mean[i]));
    const base = k * D * D;
    if (dtype === 'float16') for (let i = 0; i < D * D; i++) chol[base + i] = f32ToF16(c.cholesky[i]);
    else (chol as Float32Array).set(c.cholesky, base);
    weights[k] = opts.weights === 'uniform' ? 1 : c.count;
    total += weights[k];
  });
  for (let k = 0; k < K; k++) weights[k] /= total;
  return {
    components: K,
    resolution: PRIOR_RESOLUTION,
    dim: D,
    means,
    cholesky: chol,
    choleskyDType: dtype,
    weights,
    floor,
    metadata: {
      format: PRIOR_FORMAT,
      version: PRIOR_VERSION,
      resolution: String(PRIOR_RESOLUTION),
      layout: 'chw',
      floor: String(floor),
      source: opts.source ?? '',
      components: String(K),
    },
  };
}

/**
 * Fit one Gaussian per group (a class folder, or a k-means cluster). Each group is an array of
 * 768-value CHW samples in [0,1] (see downscaleForPrior). Fewer samples than 768 are fine: the floor
 * keeps Σ + floor·I positive definite.
 */
export function fitPrior(groups: Iterable<ArrayLike<number>[]>, opts: FitOptions = {}): GmmPrior {
  const floor = opts.floor ?? DEFAULT_FLOOR;
  if (!(floor > 0) || !Number.isFinite(floor)) throw new EngineError('invalid_input', `floor must be a positive number; got ${floor}`, { param: 'floor' });
  const comps: FittedComponent[] = [];
  let g = 0;
  for (const group of groups) {
    if (group.length === 0) throw new EngineError('invalid_input', `group ${g} has no samples`);
    const acc = new GaussianAccumulator(PRIOR_DIM);
    for (const x of group) acc.add(x);
    comps.push(fitComponent(acc, floor));
    opts.onGroup?.(g, group.length);
    g++;
  }
  return assemblePrior(comps, { ...opts, floor });
}

export interface KMeansResult {
  /** [K, dim] centroids. */
  centroids: Float64Array;
  /** Cluster of each sample. */
  assignments: Int32Array;
  iterations: number;
}

/**
 * Lloyd's k-means with k-means++ seeding from `rng` (deterministic per seed). An emptied cluster is
 * re-seeded with the sample farthest from its centroid. Used by `clipag prior fit --clusters K`.
 */
export function kmeans(samples: ArrayLike<number>[], K: number, rng: Rng, opts: { maxIterations?: number } = {}): KMeansResult {
  const n = samples.length;
  if (!Number.isInteger(K) || K < 1) throw new EngineError('invalid_input', `clusters must be a positive integer; got ${K}`, { param: 'clusters' });
  if (n < K) throw new EngineError('invalid_input', `cannot make ${K} clusters from ${n} images`, { param: 'clusters' });
  const D = samples[0].length;
  for (const s of samples) if (s.length !== D) throw new EngineError('invalid_input', 'k-means samples differ in length');
  const cent = new Float64Array(K * D);
  const dist2 = (i: number, k: number) => {
    const s = samples[i];
    let acc = 0;
    for (let j = 0; j < D; j++) {
      const d = s[j] - cent[k * D + j];
      acc += d * d;
    }
    return acc;
  };
  // k-means++ seeding.
  const setCentroid = (k: number, i: number) => {
    for (let j = 0; j < D; j++) cent[k * D + j] = samples[i][j];
  };
  setCentroid(0, rng.int(n));
  const best = new Float64Array(n).fill(Infinity);
  for (let k = 1; k < K; k++) {
    for (let i = 0; i < n; i++) best[i] = Math.min(best[i], dist2(i, k - 1));
    let total = 0;
    for (let i = 0; i < n; i++) total += best[i];
    setCentroid(k, total > 0 ? rng.categorical(best) : rng.int(n));
  }
  const assign = new Int32Array(n).fill(-1);
  const maxIt = opts.maxIterations ?? 100;
  let it = 0;
  const d2 = new Float64Array(n);
  for (; it < maxIt; it++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      let bk = 0, bd = Infinity;
      for (let k = 0; k < K; k++) {
        const d = dist2(i, k);
        if (d < bd) { bd = d; bk = k; }
      }
      d2[i] = bd;
      if (assign[i] !== bk) { assign[i] = bk; changed++; }
    }
    if (changed === 0 && it > 0) break;
    const counts = new Int32Array(K);
    cent.fill(0);
    for (let i = 0; i < n; i++) {
      const k = assign[i];
      counts[k]++;
      for (let j = 0; j < D; j++) cent[k * D + j] += samples[i][j];
    }
    for (let k = 0; k < K; k++) {
      if (counts[k] > 0) {
        for (let j = 0; j < D; j++) cent[k * D + j] /= counts[k];
      } else {
        // Re-seed an empty cluster with the worst-fitted sample; it then owns that sample.
        let far = 0;
        for (let i = 1; i < n; i++) if (d2[i] > d2[far]) far = i;
        setCentroid(k, far);
        d2[far] = 0; // so a second empty cluster picks a different sample
      }
    }
  }
  return { centroids: cent, assignments: assign, iterations: it };
}

// ---------------------------------------------------------------------------------------------------
// Writing

/** The tensors and metadata of a prior file (docs/prior-format.md). */
export function priorToTensors(prior: GmmPrior, meta: Record<string, string> = {}): { tensors: Map<string, TensorData>; metadata: Record<string, string> } {
  const K = prior.components, D = prior.dim;
  const tensors = new Map<string, TensorData>();
  tensors.set('means', { dtype: 'float32', dims: [K, D], data: prior.means });
  tensors.set('cholesky', { dtype: prior.choleskyDType, dims: [K, D, D], data: prior.cholesky });
  const uniform = prior.weights.every((w) => Math.abs(w - 1 / K) < 1e-12);
  if (!uniform) tensors.set('weights', { dtype: 'float32', dims: [K], data: Float32Array.from(prior.weights) });
  const metadata: Record<string, string> = {
    ...prior.metadata,
    ...meta,
    format: PRIOR_FORMAT,
    version: PRIOR_VERSION,
    resolution: String(prior.resolution),
    layout: 'chw',
    floor: String(prior.floor),
    components: String(K),
  };
  if (metadata.source === undefined) metadata.source = '';
  return { tensors, metadata };
}

/** Write a prior file. `meta` adds or overrides metadata (e.g. { source: 'tiny-imagenet train' }). */
export async function writePrior(path: string, prior: GmmPrior, meta: Record<string, string> = {}): Promise<void> {
  const { tensors, metadata } = priorToTensors(prior, meta);
  await writeSafetensors(path, tensors, metadata);
}
