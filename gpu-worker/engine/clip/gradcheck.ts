// Random directional-derivative check of a model's pixel gradient: for random directions d,
// compare ∇L·d from the compiled backward pass with the central difference (L(x+hd) − L(x−hd)) / 2h.
// Operators run it (`clipag gradcheck --model DIR`) on any bundle, including foreign towers.

import type { DType, ModelIR } from '../onnx/ir.ts';
import { EngineError } from '../errors.ts';
import type { ClipArch } from './arch.ts';
import { Rng } from '../synth/rng.ts';
import type { EngineHandle } from '../runtime/pool.ts';

export interface GradcheckOptions {
  batch?: number;
  directions?: number;
  seed?: number;
  dtype?: DType;
  /** Step in pixel units; default 1e-3 (float64) or 3e-2 (float32, where rounding dominates below that). */
  step?: number;
}

export interface GradcheckResult {
  dtype: DType;
  batch: number;
  step: number;
  directions: { analytic: number; numeric: number; relError: number }[];
  maxRelError: number;
  /** Passes below 1e-6 in float64 and 2e-2 in float32 (see the comment in gradcheck()). */
  tolerance: number;
  passed: boolean;
}


/**
 * Why a bundle's image tower cannot be checked in float64, or undefined when it can. onnxruntime's
 * CPU provider has float32-only kernels for some ops: Erf (the exact GELU of `activation: "gelu"`
 * models), and the Conv/ConvTranspose foreign ONNX towers hold (ADR 0001). Those bundles are checked
 * in float32, with its tolerance.
 */
export function float64Obstacle(bundle: { arch: Pick<ClipArch, 'activation'>; foreign?: unknown }): string | undefined {
  if (bundle.foreign) return 'its image tower is a foreign ONNX graph, which runs in float32 (onnxruntime has no float64 CPU Conv kernel)';
  if (bundle.arch.activation === 'gelu') return 'it uses exact GELU (an Erf op), which onnxruntime\'s CPU provider has no float64 kernel for';
  return undefined;
}

/** The dtype a bundle's gradient check runs in by default: float64, or float32 where float64Obstacle says why not. */
export function gradcheckDType(bundle: { arch: Pick<ClipArch, 'activation'>; foreign?: unknown }, requested?: string): 'float64' | 'float32' {
  if (requested !== undefined && requested !== 'float64' && requested !== 'float32') {
    throw new EngineError('invalid_input', `--dtype must be float64 or float32, got ${requested}`);
  }
  const obstacle = float64Obstacle(bundle);
  if (requested === 'float64' && obstacle) throw new EngineError('invalid_input', `this model cannot be checked in float64: ${obstacle}; use --dtype float32`);
  return (requested as 'float64' | 'float32' | undefined) ?? (obstacle ? 'float32' : 'float64');
}

/** Pixels a sparse test direction touches. */
const SPARSE_PIXELS = 64;

/**
 * `handle` runs an image-gradient graph (inputs pixels [B,3,R,R], targets [B,E], weights [B];
 * outputs cosine [B], grad_pixels) such as `imageGradientGraph`.
 */
export async function gradcheck(handle: EngineHandle, shape: { batch: number; resolution: number; embedDim: number }, opts: GradcheckOptions = {}): Promise<GradcheckResult> {
  const dtype = opts.dtype ?? 'float64';
  const { batch: B, resolution: R, embedDim: E } = shape;
  const rng = Rng.fromSeed(opts.seed ?? 1234);
  const rand = () => rng.next();
  const Arr = dtype === 'float64' ? Float64Array : Float32Array;
  const n = B * 3 * R * R;
  const x = new Arr(n).map(() => 0.2 + 0.6 * rand());
  const targets = new Arr(B * E);
  for (let b = 0; b < B; b++) {
    let s = 0;
    for (let k = 0; k < E; k++) s += (targets[b * E + k] = rand() - 0.5) ** 2;
    for (let k = 0; k < E; k++) targets[b * E + k] /= Math.sqrt(s);
  }
  const weights = new Arr(B).map(() => 0.5 + rand());
  const feeds = (px: Float32Array | Float64Array) => ({
    pixels: { dtype, dims: [B, 3, R, R], data: px },
    targets: { dtype, dims: [B, E], data: targets },
    weights: { dtype, dims: [B], data: weights },
  });
  const objective = (cos: ArrayLike<number>) => {
    let s = 0;
    for (let b = 0; b < B; b++) s += weights[b] * cos[b];
    return s;
  };
  const base = await handle.run(feeds(x));
  const g = base.grad_pixels.data as Float32Array | Float64Array;
  // float32: the objective is O(1) and carries ~1e-7 relative rounding per evaluation; with h = 3e-2 the
  // difference quotient's rounding error is ~1e-7/h ≈ 3e-6 absolute, and the O(h²) truncation error of a
  // smooth network is ~1e-4 relative: 2e-2 leaves room for both without hiding a wrong rule (those give
  // O(1) errors). float64: rounding ~1e-16/h and truncation ~h², so 1e-6 is strict.
  const h = opts.step ?? (dtype === 'float64' ? 1e-3 : 3e-2);
  const tolerance = dtype === 'float64' ? 1e-6 : 2e-2;
  const out: GradcheckResult['directions'] = [];
  let gn = 0;
  for (let i = 0; i < n; i++) gn += g[i] * g[i];
  gn = Math.sqrt(gn) || 1;
  for (let k = 0; k < (opts.directions ?? 4); k++) {
    const d = new Arr(n);
    if (k % 2 === 0) {
      // Half random, half along the analytic gradient: a dense random direction in ~10⁵ dimensions is
      // nearly orthogonal to the gradient, so its derivative would drown in rounding. The true
      // derivative along ĝ differs from |ĝ| unless ĝ is right, but only to second order in an error
      // orthogonal to the gradient (a 25 % one moves it by about 3 %): hence the other kind below.
      let rn = 0;
      for (let i = 0; i < n; i++) rn += (d[i] = rand() - 0.5) ** 2;
      rn = Math.sqrt(rn) || 1;
      for (let i = 0; i < n; i++) d[i] = d[i] / rn + g[i] / gn;
    } else {
      // Sparse: ±1 on a few random pixels. Each pixel's gradient is tested on its own, so an error
      // in any direction shows at first order.
      for (let j = 0; j < Math.min(SPARSE_PIXELS, n); j++) d[Math.floor(rand() * n)] = rand() < 0.5 ? -1 : 1;
    }
    let norm = 0;
    for (let i = 0; i < n; i++) norm += d[i] * d[i];
    norm = Math.sqrt(norm) || 1;
    // The error is measured against |∇L·d|, or the root of Σ(gᵢdᵢ)² where that is larger: the
    // terms of a sparse direction have random signs, so |∇L·d| can cancel to almost nothing, while an
    // error of the same relative size per pixel sums to about that root.
    let analytic = 0;
    let scale = 0;
    for (let i = 0; i < n; i++) {
      d[i] /= norm;
      analytic += g[i] * d[i];
      scale += (g[i] * d[i]) ** 2;
    }
    scale = Math.sqrt(scale);
    const plus = new Arr(n), minus = new Arr(n);
    for (let i = 0; i < n; i++) {
      plus[i] = x[i] + h * d[i];
      minus[i] = x[i] - h * d[i];
    }
    const lp = objective((await handle.run(feeds(plus), ['cosine'])).cosine.data as Float64Array);
    const lm = objective((await handle.run(feeds(minus), ['cosine'])).cosine.data as Float64Array);
    const numeric = (lp - lm) / (2 * h);
    const relError = Math.abs(analytic - numeric) / Math.max(scale, Math.abs(numeric), 1e-12);
    out.push({ analytic, numeric, relError });
  }
  const maxRelError = Math.max(...out.map((o) => o.relError));
  return { dtype, batch: B, step: h, directions: out, maxRelError, tolerance, passed: maxRelError < tolerance };
}

export type { ModelIR };
