// The synthesizer port: a job's generation spec in, PNGs + scores + usage out.
//
// The worker only knows this interface; `createEngineSynthesizer` is the real one, on the CLIPAG
// engine (ORT sessions in the worker-thread pool, so this process's event loop keeps serving
// heartbeats and progress writes while a step runs; an uploaded init image is decoded on a thread of
// its own, init-decode.ts, for the same reason). Engine code stays free of AWS/HTTP: the only storage
// access here is the BlobStore port, to fetch an uploaded init image.

import { uploadKey } from '../../shared/keys.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { imageSeed, isModelVersion, modelVersionMismatch, NEGATIVE_PROMPT_SHARE, weightedPrompts, type GenerationSpec } from '../../shared/schemas/generation.ts';
import { EngineError } from '../engine/errors.ts';
import { encodeOutput } from '../engine/synth/image.ts';
import { isLossyOutputFormat, type LossyOutputFormat } from '../../shared/output-format.ts';
import { MAX_IMAGE_FILE_BYTES } from '../../shared/image-header.ts';
import type { ClipEngine } from '../engine/engine.ts';
import type { Recipe, Stage } from '../engine/synth/recipe.ts';
import { type InitSpec, type PromptScore, type SynthRequest, synthesize, validateRequest } from '../engine/synth/synthesize.ts';
import type { ModelRegistry } from '../models.ts';
import { type FitSize, decodeInitImage } from './init-decode.ts';

/** Weight of `negative_prompt` relative to the positive prompts' total (the CLI's `--negative` uses the same; the API's cancel-out check too). */
export const NEGATIVE_PROMPT_WEIGHT = -NEGATIVE_PROMPT_SHARE;
/** The smallest positive normal double: below it a number keeps fewer significant bits (and 0.5 × 5e-324 is 0). */
const SMALLEST_NORMAL = 2 ** -1022;
/** `init: "upload:<id>"` without `strength`: keep 40 % of the image, 60 % noise (the CLI default). */
export const DEFAULT_INIT_STRENGTH = 0.6;

export interface SynthesisJob {
  id: string;
  owner: string;
  spec: GenerationSpec;
}

export interface SynthesisProgress {
  /** Steps done over all n images. */
  step: number;
  total: number;
  /** Which of the n images is being optimized (0-based). */
  image: number;
}

export interface SynthesizedImage {
  index: number;
  seed: number;
  /** Encoded when first read (SynthResult.png): a JPEG or WebP job's image is never encoded as a PNG. */
  readonly png: Uint8Array;
  /** The image in the lossy format the spec asks for (output_format "jpeg" or "webp", at its output_quality; ADR 0041, 0043). */
  lossy?: { format: LossyOutputFormat; bytes: Uint8Array };
  width: number;
  height: number;
  /** Weighted mean cosine between the output and the positive prompts (the engine's final scoring pass). */
  clipScore: number;
  scores: PromptScore[];
  /** Cosines to SynthesisRunOptions.screenTexts, in order (null: a text the model cannot read); empty without them. */
  screenCosines: Array<number | null>;
  frames: { step: number; png: Uint8Array }[];
  stepsDone: number;
}

export interface SynthesisOutcome {
  /** Only the images that ran to completion (none of them partial). */
  images: SynthesizedImage[];
  aborted: boolean;
  stepsDone: number;
  totalSteps: number;
  encoderPasses: number;
  /** `optimize`: the step loops alone (without model load, init, scoring and encoding). */
  timingsMs: { total: number; sessionRun: number; optimize: number };
  /** The step loops by stage size, summed over the images: steps and wall time (compile excluded). Absent: not measured. */
  stages?: Array<{ width: number; height: number; steps: number; ms: number }>;
  /** What the model cannot read of the prompts (unknown words, truncation), for the job record. */
  warnings?: string[];
  /** The content hash of the bundle the engine ran (ModelRegistry.use), for the job record's model_version. */
  modelVersion?: string;
}

export interface SynthesisRunOptions {
  signal?: AbortSignal;
  onProgress?: (p: SynthesisProgress) => void;
  /** The output policy's concepts: every finished image is also scored against them (ADR 0017). */
  screenTexts?: readonly string[];
}

export interface Synthesizer {
  run(job: SynthesisJob, options?: SynthesisRunOptions): Promise<SynthesisOutcome>;
}

export interface EngineSynthesizerOptions {
  models: ModelRegistry;
  blobs: BlobStore;
  /**
   * Recipe fields applied to every job. The product runs the notebook recipe; tests and CPU demos
   * shrink views and GMM samples here. The public generation schema is strict and has no recipe
   * field, so this is worker configuration, not a request option. `steps` is a cap, not a value:
   * a job runs min(spec.steps, steps) (see stepsFor).
   */
  recipeOverrides?: Partial<Recipe>;
  /** Caps every job's steps (min with `recipeOverrides.steps` when both are given). */
  maxSteps?: number;
}

/** The steps a job really runs: the spec's, capped by the worker's `maxSteps` / `recipeOverrides.steps`. */
export function stepsFor(spec: Pick<GenerationSpec, 'steps'>, recipeOverrides: Partial<Recipe> = {}, maxSteps?: number): number {
  return Math.min(spec.steps, recipeOverrides.steps ?? Infinity, maxSteps ?? Infinity);
}

/** The engine requests for a job: n of them, seeds seed+i (mod 2³²); the init image is decoded once by the caller. */
export function toSynthRequests(job: SynthesisJob, init: InitSpec, recipeOverrides: Partial<Recipe> = {}, maxSteps?: number): SynthRequest[] {
  const { spec } = job;
  let weighted = weightedPrompts(spec);
  // The engine divides every weight by the positive prompts' total, so the negative prompt is scaled
  // by that total first: its pull is −0.5 of the positives' whether they weigh 1 or 10.
  const positiveTotalOf = (ps: readonly { weight: number }[]) => ps.filter((p) => p.weight > 0).reduce((a, p) => a + p.weight, 0);
  let positiveTotal = positiveTotalOf(weighted);
  // Weights are relative, so where that total or its share for the negative prompt is no finite normal
  // number (a job stored before the API's floor on weights, or the engine API's callers), they are first
  // divided by the largest: 0.5 × 5e-324 is 0 (the negative prompt weighed nothing), and eight weights
  // of 1e308 sum to Infinity. Otherwise they pass as given, so the engine computes what it always did.
  if (!(Number.isFinite(positiveTotal) && Math.abs(NEGATIVE_PROMPT_WEIGHT) * positiveTotal >= SMALLEST_NORMAL)) {
    const largest = Math.max(0, ...weighted.map((p) => Math.abs(p.weight)));
    if (largest > 0 && Number.isFinite(largest)) {
      weighted = weighted.map((p) => ({ ...p, weight: p.weight / largest }));
      positiveTotal = positiveTotalOf(weighted);
    }
  }
  const prompts = [
    ...weighted.map((p) => ({ text: p.text, weight: p.weight })),
    ...(spec.negative_prompt !== undefined ? [{ text: spec.negative_prompt, weight: NEGATIVE_PROMPT_WEIGHT * positiveTotal }] : []),
  ];
  return Array.from({ length: spec.n }, (_, i) => ({
    prompts,
    width: spec.width,
    height: spec.height,
    seed: imageSeed(job.id, spec, i),
    init,
    recipe: { ...recipeOverrides, steps: stepsFor(spec, recipeOverrides, maxSteps) },
  }));
}

/**
 * The sizes synthesize fits an init image at for `request`: its stages' (the schedule validateRequest
 * gives it, the same for each of a job's n images). None for a request it refuses, since synthesize
 * then fails with that refusal before it reads the image.
 */
export function initFitSizes(request: SynthRequest, engine: Pick<ClipEngine, 'imageSize' | 'bundle'>): FitSize[] {
  let schedule: Stage[];
  try {
    schedule = validateRequest(request, engine.imageSize, engine.bundle.manifest.recipe).schedule;
  } catch {
    return [];
  }
  return [...new Map(schedule.map((s) => [`${s.width}x${s.height}`, { width: s.width, height: s.height }])).values()];
}

export interface ResolveInitOptions {
  /** The sizes an upload is fitted at (initFitSizes): the only ones the engine can resize it to. */
  fitSizes?: readonly FitSize[];
  /** Stops an upload's decode at once; resolveInit then rejects as `aborted`. */
  signal?: AbortSignal;
}

/**
 * Resolves `spec.init` to the engine's InitSpec, fetching `uploads/<owner>/<id>` for an upload and
 * decoding it off this thread (decodeInitImage): its image has the upload's size and holds its fits
 * at `fitSizes` only.
 */
export async function resolveInit(job: SynthesisJob, blobs: BlobStore, { fitSizes, signal }: ResolveInitOptions = {}): Promise<InitSpec> {
  const { init, strength } = job.spec;
  if (init === 'gmm') return { kind: 'gmm' };
  if (init === 'noise') return { kind: 'noise' };
  const id = init.slice('upload:'.length);
  const object = await blobs.get(uploadKey(job.owner, id)); // storage errors propagate (retryable ones are retried)
  if (!object) throw new EngineError('invalid_input', `init image upload:${id} does not exist (upload it with POST /v1/uploads first)`, { param: 'init' });
  // The limit the config caps CLIPAG_MAX_UPLOAD_BYTES at: whatever size the API takes, this takes too.
  const image = await decodeInitImage(object.body, { maxBytes: MAX_IMAGE_FILE_BYTES, fitSizes, signal });
  return { kind: 'image', image, strength: strength ?? DEFAULT_INIT_STRENGTH };
}

/**
 * The weighted mean cosine over the positive prompts (0 with none). Weights are relative, so each is
 * divided by the largest first and the score is the same at any scale: on the raw weights a subnormal
 * one rounded weight × cosine to the weight or to 0 (a score of exactly 1 or 0, which switched off the
 * output check's above_prompt_by, judged against this score), and weights near 1e308 overflowed the sum.
 */
export function clipScore(scores: PromptScore[]): number {
  let largest = 0;
  for (const s of scores) if (s.weight > largest) largest = s.weight;
  if (!(largest > 0 && Number.isFinite(largest))) return 0;
  let num = 0;
  let den = 0;
  for (const s of scores) {
    if (s.weight > 0) {
      const w = s.weight / largest;
      num += w * s.cosine;
      den += w;
    }
  }
  return num / den;
}

/** The outcome of a run stopped by its abort before it made any image. */
export function abortedOutcome(stepsDone: number, totalSteps: number): SynthesisOutcome {
  return { images: [], aborted: true, stepsDone, totalSteps, encoderPasses: 0, timingsMs: { total: 0, sessionRun: 0, optimize: 0 } };
}

/**
 * The engine of `model`, held, and checked to be the bundle `modelVersion` names when the request
 * pinned one. A store model pushed again since this process read its index is looked up afresh once
 * before the job is refused: the API checked the version against a newer list than ours.
 */
export async function heldAtVersion(models: ModelRegistry, model: string, modelVersion: string | undefined): ReturnType<ModelRegistry['use']> {
  const held = await models.use(model);
  if (modelVersion === undefined || (held.contentHash !== undefined && isModelVersion(held.contentHash, modelVersion))) return held;
  held.done();
  await models.refresh();
  const again = await models.use(model);
  if (again.contentHash !== undefined && isModelVersion(again.contentHash, modelVersion)) return again;
  again.done();
  throw new EngineError(
    'invalid_model',
    again.contentHash === undefined
      ? `model "${model}": this worker cannot hash its bundle, so it cannot run model_version ${modelVersion}`
      : modelVersionMismatch(model, again.contentHash, modelVersion),
    { param: 'model_version' },
  );
}

export function createEngineSynthesizer(options: EngineSynthesizerOptions): Synthesizer {
  return {
    async run(job, { signal, onProgress, screenTexts } = {}) {
      // A stop before the model is opened (a download and compiles) or the init fetched ends the run
      // at once, as one between steps does.
      if (signal?.aborted) return abortedOutcome(0, 0);
      // Held for the run: a --force push of the model meanwhile closes the old engine only after it.
      const held = await heldAtVersion(options.models, job.spec.model, job.spec.model_version);
      try {
        const engine = held.engine;
        if (signal?.aborted) return abortedOutcome(0, 0);
        // The schedule does not depend on the start, so a stand-in start gives the stage sizes to fit an upload at.
        const fitSizes = initFitSizes(toSynthRequests(job, { kind: 'noise' }, options.recipeOverrides, options.maxSteps)[0]!, engine);
        let init: InitSpec;
        try {
          init = await resolveInit(job, options.blobs, { fitSizes, signal });
        } catch (e) {
          if (signal?.aborted) return abortedOutcome(0, 0); // a stop during the decode ends the run as one before it
          throw e;
        }
        // "gmm" is the API's default start, so a model shipped without a prior would fail every
        // request that names no init: it starts from noise instead, and the job says so.
        const initWarnings: string[] = [];
        if (init.kind === 'gmm' && !engine.bundle.priorPath) {
          init = { kind: 'noise' };
          initWarnings.push(`model ${job.spec.model} ships no GMM prior: the image started from noise (init "gmm" needs one; see clipag prior fit)`);
        }
        if (init.kind === 'image') {
          // Fitted as CLIP preprocesses (scaled to cover, centre-cropped): a different shape loses its edges.
          const { width: iw, height: ih } = init.image;
          if (Math.abs(iw / ih - job.spec.width / job.spec.height) > 0.01) {
            initWarnings.push(`the init image is ${iw}×${ih}: it was scaled to cover ${job.spec.width}×${job.spec.height} and centre-cropped (ask for its aspect ratio to keep all of it)`);
          }
        }
        const requests = toSynthRequests(job, init, options.recipeOverrides, options.maxSteps).map((r) => (screenTexts?.length ? { ...r, screenTexts } : r));
        const perImage = stepsFor(job.spec, options.recipeOverrides, options.maxSteps);
        const totalSteps = perImage * requests.length;
        const outcome: SynthesisOutcome & Required<Pick<SynthesisOutcome, 'stages'>> = {
          images: [], aborted: false, stepsDone: 0, totalSteps, encoderPasses: 0, timingsMs: { total: 0, sessionRun: 0, optimize: 0 }, stages: [],
          ...(held.contentHash !== undefined ? { modelVersion: held.contentHash } : {}),
        };
        for (let i = 0; i < requests.length; i++) {
          if (signal?.aborted) {
            outcome.aborted = true;
            break;
          }
          const res = await synthesize(engine, requests[i], {
            signal,
            onProgress: (p) => onProgress?.({ step: outcome.stepsDone + p.step, total: totalSteps, image: i }),
          });
          outcome.warnings ??= [...initWarnings, ...res.warnings]; // the same prompts and start for every image
          outcome.stepsDone += res.stepsDone;
          outcome.encoderPasses += res.usage.encoderPasses;
          outcome.timingsMs.total += res.usage.timingsMs.total;
          outcome.timingsMs.sessionRun += res.usage.timingsMs.sessionRun;
          outcome.timingsMs.optimize += res.usage.timingsMs.optimize;
          for (const st of res.usage.stages) {
            const same = outcome.stages.find((o) => o.width === st.width && o.height === st.height);
            if (same) {
              same.steps += st.steps;
              same.ms += st.ms;
            } else outcome.stages.push({ ...st });
          }
          if (res.aborted) {
            outcome.aborted = true;
            break;
          }
          outcome.images.push({
            // Read through: a PNG is encoded only for a job that stores one.
            get png() {
              return res.png;
            },
            index: i, seed: requests[i].seed, width: res.width, height: res.height,
            ...(isLossyOutputFormat(job.spec.output_format) ? { lossy: { format: job.spec.output_format, bytes: await encodeOutput(res.image, job.spec.output_format, job.spec.output_quality) } } : {}),
            clipScore: clipScore(res.scores), scores: res.scores, screenCosines: res.screenCosines, frames: res.frames, stepsDone: res.stepsDone,
          });
        }
        return outcome;
      } finally {
        held.done();
      }
    },
  };
}
