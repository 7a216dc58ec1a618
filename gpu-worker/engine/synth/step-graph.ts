// The one compiled synthesis step: image → V augmented views → CLIP image tower → weighted (1 − cos)
// against per-view text embeddings → loss, per-view cosines and d(loss)/d(image), in one session.run.
// All randomness is drawn on the host from the seeded RNG and fed as inputs, so a run is reproducible
// and the same graph serves every step (and, later, several jobs sharing one run).

import { appendGradients } from '../autodiff/gradient.ts';
import type { TowerSource } from '../clip/graphs.ts';
import { imageFeatures, l2normalize } from '../clip/graphs.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type DType, type ModelIR } from '../onnx/ir.ts';

export interface StepGraphShape {
  /** Image size being optimized (any size; every view is resampled to the encoder size). */
  height: number;
  width: number;
  /** Total views per step (global + patch); the host decides which is which. */
  views: number;
  /** Prompt slots per view (unused slots get weight 0). */
  promptSlots: number;
  /** Size of the Gaussian noise bank (noise is bank[index]·sign per view). */
  noiseBank: number;
  /** Recipe.colorOnImage: colour as if applied to the image before the crop (default true). */
  colorOnImage?: boolean;
  dtype?: DType;
}

export const STEP_INPUTS = [
  'image', // [1,3,H,W]
  'resample_rows', // [V,1,S,H]
  'resample_cols', // [V,1,W,S]
  'brightness', // [V,1,1,1] additive offset
  'saturation', // [V,1,1,1] factor
  'contrast', // [V,1,1,1] factor
  'cutout_rows', // [V,1,S,1] 1 inside the cut-out rows
  'cutout_cols', // [V,1,1,S] 1 inside the cut-out columns
  'noise_index', // [V] int64 into the noise bank
  'noise_scale', // [V,1,1,1] noise std × random sign
  'targets', // [V,K,E] unit text embeddings
  'weights', // [V,K] loss weight of each (view, prompt) pair; negative pushes away
  // With colorOnImage only: the rectangle whose mean the contrast pivots on (the image for a global
  // view, its crop for a patch view), as separable averaging weights.
  'pivot_rows', // [V,1,1,H]
  'pivot_cols', // [V,1,W,1]
] as const;

/**
 * Builds the step graph. `noise` is the bank [M,3,S,S] of unit normal samples, made by the caller from
 * a fixed seed so that compiled graphs are identical across processes.
 */
export function stepGraph(src: TowerSource, shape: StepGraphShape, noise: Float32Array): ModelIR {
  const dt = shape.dtype ?? 'float32';
  const S = src.arch.imageResolution;
  const { height: H, width: W, views: V, promptSlots: K, noiseBank: M } = shape;
  const E = src.arch.embedDim;
  if (noise.length !== M * 3 * S * S) throw new Error(`noise bank must hold ${M}×3×${S}×${S} values`);
  const b = new GraphBuilder('synth_step');
  const image = b.input('image', dt, [1, 3, H, W]);
  const rows = b.input('resample_rows', dt, [V, 1, S, H]);
  const colsT = b.input('resample_cols', dt, [V, 1, W, S]);
  const bright = b.input('brightness', dt, [V, 1, 1, 1]);
  const sat = b.input('saturation', dt, [V, 1, 1, 1]);
  const con = b.input('contrast', dt, [V, 1, 1, 1]);
  const cutR = b.input('cutout_rows', dt, [V, 1, S, 1]);
  const cutC = b.input('cutout_cols', dt, [V, 1, 1, S]);
  const noiseIdx = b.input('noise_index', 'int64', [V]);
  const noiseScale = b.input('noise_scale', dt, [V, 1, 1, 1]);
  const targets = b.input('targets', dt, [V, K, E]);
  const weights = b.input('weights', dt, [V, K]);
  const colorOnImage = shape.colorOnImage ?? true;
  const pivot = colorOnImage ? { rows: b.input('pivot_rows', dt, [V, 1, 1, H]), cols: b.input('pivot_cols', dt, [V, 1, W, 1]) } : undefined;

  const bank = b.constant({ dtype: dt, dims: [M, 3, S, S], data: dt === 'float64' ? Float64Array.from(noise) : noise }, 'noise_bank');
  const views = augmentViews(b, { image, rows, colsT, bright, sat, con, cutR, cutC, noiseIdx, noiseScale, bank, pivot });

  const feats = imageFeatures(b, src, views, dt);
  const unit = b.reshape(l2normalize(b, feats), [V, 1, E]);
  const cos = b.op1('ReduceSum', [b.mul(unit, targets), b.ints([-1])], { keepdims: A.i(0) }, { outputNames: ['cosine'] }); // [V,K]
  const oneMinus = b.sub(b.scalar(1, dt), cos);
  const loss = b.op1('ReduceSum', [b.mul(oneMinus, weights)], { keepdims: A.i(0) }, { outputNames: ['loss'] });
  const grads = appendGradients(b, { loss, wrt: [image] });
  b.output(loss);
  b.output(cos);
  b.output(b.op1('Identity', [grads.get(image)!], {}, { outputNames: ['grad_image'] }));
  return b.toModel({ kind: 'clipag-synth-step', views: String(V), height: String(H), width: String(W), prompt_slots: String(K) });
}

export interface AugmentValues {
  image: string; // [1,3,H,W]
  rows: string; // [V,1,S,H]
  colsT: string; // [V,1,W,S]
  bright: string;
  sat: string;
  con: string;
  cutR: string;
  cutC: string;
  noiseIdx: string;
  noiseScale: string;
  bank: string; // [M,3,S,S]
  /**
   * Colour as the notebook applies it, before the crop (see Recipe.colorOnImage), pivoting the contrast
   * on the mean of a rectangle of the image: pivot.rows [V,1,1,H] and pivot.cols [V,1,W,1] are its
   * separable averaging weights. Absent: colour on the view, its zero border included.
   */
  pivot?: { rows: string; cols: string };
}

/** The differentiable augmentation pipeline: image [1,3,H,W] → views [V,3,S,S]. */
export function augmentViews(b: GraphBuilder, a: AugmentValues): string {
  const dt = b.dtype(a.image);
  return b.scope('augment', () => {
    // Geometry: crop, resize, translate, flip — Ry·img·Rxᵀ with broadcasting over (view, channel).
    let x = b.matmul(b.matmul(a.rows, a.image), a.colsT); // [V,3,S,S]
    // DiffAugment colour: brightness, saturation, contrast.
    if (a.pivot) {
      // As the notebook: colour first (a global view: the whole image; a patch view: its crop), then
      // the crop and zoom. The colour map is affine per pixel, v ↦ c·sat(v) + c·b + (1 − c)·m with m
      // the pivot rectangle's mean after brightness (saturation keeps each pixel's channel mean), and
      // the crop is linear: so the view is c·sat(x) plus the constant times the view's coverage
      // (Ry·1·Rxᵀ, an outer product of the operators' row sums), which is 0 on the zero border, exactly.
      const chanMean = b.reduceMean(x, [1], true);
      x = b.add(b.mul(b.sub(x, chanMean), a.sat), chanMean);
      const pixelMean = b.reduceMean(a.image, [1], true); // [1,1,H,W]
      const m = b.add(b.matmul(b.matmul(a.pivot.rows, pixelMean), a.pivot.cols), a.bright); // [V,1,1,1]
      const offset = b.add(b.mul(a.con, a.bright), b.mul(b.sub(b.scalar(1, dt), a.con), m));
      const coverage = b.mul(b.reduceSum(a.rows, [3], true), b.reduceSum(a.colsT, [2], true)); // [V,1,S,S]
      x = b.add(b.mul(x, a.con), b.mul(offset, coverage));
    } else {
      // On the view, its zero border included (the toy models' measured recipe).
      x = b.add(x, a.bright);
      const chanMean = b.reduceMean(x, [1], true);
      x = b.add(b.mul(b.sub(x, chanMean), a.sat), chanMean);
      const allMean = b.reduceMean(x, [1, 2, 3], true);
      x = b.add(b.mul(b.sub(x, allMean), a.con), allMean);
    }
    // Cutout: zero a rectangle (outer product of a row and a column indicator).
    x = b.mul(x, b.sub(b.scalar(1, dt), b.mul(a.cutR, a.cutC)));
    // Gaussian noise from the bank, scaled by ±std per view.
    return b.add(x, b.mul(b.gather(a.bank, a.noiseIdx, 0), a.noiseScale));
  });
}
