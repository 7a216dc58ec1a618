// The CLIPAG recipe as data: the authors' notebook defaults (MISSION.md) and their documented bounds.
// Requests override fields; validateRecipe() rejects bad values before any compute starts.

import { EngineError } from '../errors.ts';

export interface Recipe {
  steps: number;
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Gradient-norm clipping threshold (L2 over all pixels). */
  gradClip: number;
  globalViews: number;
  patchViews: number;
  globalWeight: number;
  patchWeight: number;
  /** Zoom: a global view's window side is min(H, W) / U(resize); a patch view's is its crop / U(resize). */
  resize: [number, number];
  /** Shift: ± this fraction of a global view's window, or of a patch view's crop (DiffAugment's translation). */
  translation: number;
  /** Patch views: crop side as a fraction of min(H, W) (128 px of a 224 image). */
  patchFraction: number;
  flip: boolean;
  /** DiffAugment colour: brightness ± 0.5, saturation × U(0, 2), contrast × U(0.5, 1.5). */
  color: boolean;
  /**
   * Colour as the notebook applies it, to the whole image before the crop: a view's zero border stays
   * black and the contrast pivots on the image's mean. false: on the view, border and all (ADR 0025).
   */
  colorOnImage: boolean;
  /** DiffAugment cutout: a square of this fraction of the view side is zeroed. 0 disables. */
  cutout: number;
  noiseStd: number;
  /** Dynamic thresholding percentile (Imagen): |2x − 1| is clipped to its p-quantile and rescaled. */
  thresholdPercentile: number;
  /** Keep a frame every k steps (0: none). */
  frameEvery: number;
  /** GMM init: samples drawn and scored. */
  initSamples: number;
}

export const DEFAULT_RECIPE: Recipe = {
  steps: 100,
  lr: 0.0175,
  betas: [0.9, 0.999],
  eps: 1e-8,
  weightDecay: 0.01, // torch.optim.AdamW's default, which the notebook does not change
  // The notebook's clip_grad_norm_(image, max_norm=0.001): every step's gradient is rescaled to this
  // norm before AdamW (a recipe review found 1.0 here, which never triggered: raw-gradient AdamW).
  gradClip: 0.001,
  globalViews: 32,
  patchViews: 32,
  globalWeight: 1,
  patchWeight: 5,
  resize: [0.8, 1.2],
  translation: 0.125,
  patchFraction: 128 / 224,
  // The notebook does not flip views either. A mirrored view asks for the mirrored layout, so flipped
  // views pull an object named "on the left" to both sides (ADR 0008); `flip: true` turns them on.
  flip: false,
  color: true,
  colorOnImage: true,
  cutout: 0.5,
  noiseStd: 0.01,
  thresholdPercentile: 0.95,
  frameEvery: 10,
  initSamples: 1000,
};

/**
 * Style transfer in the manner of CLIPStyler: the init image is the content, the prompt the style.
 * Patch views carry the style (double weight), colour jitter is off (it would fight the style's
 * palette), and the request adds a content-preservation loss (SynthRequest.contentWeight).
 */
export const STYLE_RECIPE: Partial<Recipe> = { patchWeight: 10, color: false };
export const STYLE_CONTENT_WEIGHT = 20;

export const LIMITS = {
  steps: [1, 1000],
  views: [1, 256],
  initSamples: [1, 10000],
  side: [16, 2048],
  pixels: 1024 * 1024,
  promptChars: 1000,
} as const;

/** The least grad_clip and eps: well inside float32's normal range, so the scaled gradient does not underflow. */
const MIN_FLOAT32_SCALE = 1e-30;

export function validateRecipe(r: Recipe): void {
  const bad = (param: string, msg: string) => {
    throw new EngineError('invalid_input', `${param} ${msg}`, { param });
  };
  const int = (param: string, v: number, [lo, hi]: readonly [number, number]) => {
    if (!Number.isInteger(v) || v < lo || v > hi) bad(param, `must be an integer in [${lo}, ${hi}], got ${v}`);
  };
  for (const [param, v] of [['flip', r.flip], ['color', r.color], ['color_on_image', r.colorOnImage]] as const) {
    if (typeof v !== 'boolean') bad(param, `must be true or false, got ${JSON.stringify(v)}`);
  }
  int('steps', r.steps, LIMITS.steps);
  int('global_views', r.globalViews, [0, LIMITS.views[1]]);
  int('patch_views', r.patchViews, [0, LIMITS.views[1]]);
  if (r.globalViews + r.patchViews < 1) bad('views', 'need at least one global or patch view');
  int('init_samples', r.initSamples, LIMITS.initSamples);
  int('frame_every', r.frameEvery, [0, 1000]);
  const pos = (param: string, v: number) => {
    if (!(Number.isFinite(v) && v > 0)) bad(param, `must be a positive number, got ${v}`);
  };
  pos('lr', r.lr);
  pos('eps', r.eps);
  pos('grad_clip', r.gradClip);
  if (!(r.weightDecay >= 0 && r.weightDecay < 1)) bad('weight_decay', 'must be in [0, 1)');
  // AdamW shrinks the pixels by 1 − lr·weight_decay each step: at or past 0 every pixel flips sign and
  // clamps to black, and the job would return a black image as a success.
  if (!(r.lr * r.weightDecay < 1)) bad('lr', `× weight_decay must be below 1 (${r.lr} × ${r.weightDecay}): each step would scale the image by 1 − lr·weight_decay ≤ 0, and it would turn black`);
  // The gradient is scaled to grad_clip in float32 (and Adam divides by √v + eps there): far below its
  // normal range (1.2e-38) it underflows to 0, the image never moves, and the start image is returned.
  for (const [param, v] of [['grad_clip', r.gradClip], ['eps', r.eps]] as const) {
    if (v < MIN_FLOAT32_SCALE) bad(param, `must be at least ${MIN_FLOAT32_SCALE}, got ${v}: smaller values underflow in float32, and the image would never move`);
  }
  if (!(r.betas[0] >= 0 && r.betas[0] < 1 && r.betas[1] >= 0 && r.betas[1] < 1)) bad('betas', 'must be in [0, 1)');
  if (!(r.resize[0] > 0 && r.resize[1] >= r.resize[0] && r.resize[1] < 10)) bad('resize', 'must be 0 < lo ≤ hi < 10');
  if (!(r.translation >= 0 && r.translation <= 0.5)) bad('translation', 'must be in [0, 0.5]');
  if (!(r.patchFraction > 0 && r.patchFraction <= 1)) bad('patch_fraction', 'must be in (0, 1]');
  if (!(r.cutout >= 0 && r.cutout < 1)) bad('cutout', 'must be in [0, 1)');
  if (!(r.noiseStd >= 0 && r.noiseStd <= 1)) bad('noise_std', 'must be in [0, 1]');
  if (!(r.thresholdPercentile > 0 && r.thresholdPercentile <= 1)) bad('threshold_percentile', 'must be in (0, 1]');
  if (!(Number.isFinite(r.globalWeight) && Number.isFinite(r.patchWeight) && r.globalWeight >= 0 && r.patchWeight >= 0)) bad('view_weights', 'must be finite and ≥ 0');
  // Each view's weight is its kind's weight over the count: with no weight on any view taken, the loss
  // and its gradient are 0 at every step, and the job would return its starting image as a success.
  if (!((r.globalViews > 0 && r.globalWeight > 0) || (r.patchViews > 0 && r.patchWeight > 0))) {
    bad('view_weights', `must put a weight > 0 on the views taken (global_views ${r.globalViews} × global_weight ${r.globalWeight} + patch_views ${r.patchViews} × patch_weight ${r.patchWeight} is 0): nothing would be optimized`);
  }
}

// The schedule lives in shared/: the API prices a job by the stages the worker will run (ADR 0014).
export { type Stage, defaultSchedule } from '../../../shared/schedule.ts';
