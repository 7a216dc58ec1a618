// Measured run times per model, output size and kind of start (ADR 0014): the worker records each
// succeeded job's time, split into the step loops and the rest; the API turns the recent ones into time
// and cost estimates. One small JSON document per (model, size, start) at
// `stats/<model>/<width>x<height>-<start>.json`, the last RUN_STATS_KEEP runs.
import { z } from 'zod';
import { updateDocument } from './documents.ts';
import { assertValidKey } from './keys.ts';
import type { BlobStore } from './ports.ts';

export const RUN_STATS_PREFIX = 'stats/';
/** Runs kept per (model, size): enough for a stable median, recent enough to follow a new GPU type. */
export const RUN_STATS_KEEP = 50;

const RunSample = z
  .object({
    /** Worker seconds for the whole job (model load, init, steps, scoring, uploads). */
    seconds: z.number().finite().nonnegative(),
    /** Of those, the optimization step loops. The rest is paid per image (init, scoring) or per job. */
    loopSeconds: z.number().finite().nonnegative(),
    /** Optimization steps over all images of the job (steps × n, after any cap). */
    steps: z.number().int().positive(),
    /** Images in the job. */
    n: z.number().int().positive(),
    at: z.string(),
    /** The job it came from, so a repeated add (an S3 write whose reply was lost) counts once; absent in samples recorded before. */
    job: z.string().min(1).max(100).optional(),
  })
  .strict()
  .refine((s) => s.loopSeconds <= s.seconds, { message: 'loopSeconds must not exceed seconds' });
export type RunSample = z.output<typeof RunSample>;

const RunStatsDoc = z.object({ v: z.literal(2), samples: z.array(RunSample).max(RUN_STATS_KEEP) }).strict();

/** The kind of start: a GMM start scores its samples (1000 encoder passes an image on the recipe), a noise or image start does not. */
export type RunStart = 'gmm' | 'noise' | 'image';

export function runStartOf(init: string): RunStart {
  return init === 'gmm' || init === 'noise' ? init : 'image';
}

export interface RunKey {
  model: string;
  width: number;
  height: number;
  start: RunStart;
}

export function runStatsKey(k: RunKey): string {
  const key = `${RUN_STATS_PREFIX}${k.model}/${k.width}x${k.height}-${k.start}.json`;
  assertValidKey(key, 'model');
  return key;
}

function parseDoc(body: Uint8Array): RunSample[] {
  try {
    const parsed = RunStatsDoc.safeParse(JSON.parse(Buffer.from(body).toString('utf8')));
    return parsed.success ? parsed.data.samples : [];
  } catch {
    return []; // unreadable statistics are no statistics: estimates say so, the next run starts afresh
  }
}

/** The recorded runs of one (model, size, start), oldest first; none when nothing was recorded or the document is unreadable. */
export async function readRunSamples(blobs: BlobStore, k: RunKey): Promise<RunSample[]> {
  const found = await blobs.get(runStatsKey(k));
  return found ? parseDoc(found.body) : [];
}

/** Appends one run (a conditional read-modify-write: updateDocument), once per `sample.job`. */
export async function recordRunSample(blobs: BlobStore, k: RunKey, sample: RunSample): Promise<void> {
  const checked = RunSample.parse(sample);
  await updateDocument(blobs, runStatsKey(k), (current) => {
    const had = current ? parseDoc(current) : [];
    if (checked.job !== undefined && had.some((s) => s.job === checked.job)) return null; // recorded already
    const samples = [...had, checked].slice(-RUN_STATS_KEEP);
    return Buffer.from(JSON.stringify({ v: 2, samples }));
  });
}

const STATS_NAME = /^(\d{1,5})x(\d{1,5})-(gmm|noise|image)\.json$/;

/**
 * The recorded runs an estimate rests on: those of this very (model, size, start); else, when none
 * was recorded, those of the same model and start at the nearest size by pixel count (`basis` names
 * it). A step's cost is mostly the CLIP passes over the model-sized views, the same at every output
 * size, so a near size is a fair guide, and better than no figure; the answer says which size it is.
 */
export async function readEstimateSamples(blobs: BlobStore, k: RunKey): Promise<{ samples: RunSample[]; basis: { width: number; height: number } | null }> {
  const own = await readRunSamples(blobs, k);
  if (own.length > 0) return { samples: own, basis: null };
  const prefix = `${RUN_STATS_PREFIX}${k.model}/`;
  const sizes: Array<{ width: number; height: number }> = [];
  let cursor: string | undefined;
  do {
    const page = await blobs.list(prefix, cursor === undefined ? {} : { cursor });
    for (const item of page.items) {
      const m = STATS_NAME.exec(item.key.slice(prefix.length));
      if (m && m[3] === k.start) sizes.push({ width: Number(m[1]), height: Number(m[2]) });
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  const distance = (s: { width: number; height: number }) => Math.abs(Math.log((s.width * s.height) / (k.width * k.height)));
  sizes.sort((a, b) => distance(a) - distance(b) || b.width * b.height - a.width * a.height);
  for (const size of sizes) {
    const samples = await readRunSamples(blobs, { ...k, ...size });
    if (samples.length > 0) return { samples, basis: size };
  }
  return { samples: [], basis: null };
}

function quantile(sorted: readonly number[], q: number): number {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (i - lo);
}

export interface RunEstimate {
  /** Worker seconds for the job, median and 90th percentile (see estimateSeconds). */
  median: number;
  p90: number;
  /** How many recorded runs it rests on. */
  runs: number;
}

/**
 * A job's worker seconds from recorded runs of the same model, size and start: the per-image part
 * (init, scoring, uploads, and a cold worker's model load) times n, plus the per-step part times
 * steps × n. Each part's median (90th percentile) over the runs. `null` with no recorded run: no
 * figure is better than an invented one.
 */
export function estimateSeconds(samples: readonly RunSample[], job: { steps: number; n: number }): RunEstimate | null {
  if (samples.length === 0) return null;
  const sorted = (xs: number[]) => xs.sort((a, b) => a - b);
  const perStep = sorted(samples.map((s) => s.loopSeconds / s.steps));
  const perImage = sorted(samples.map((s) => (s.seconds - s.loopSeconds) / s.n));
  const at = (q: number) => quantile(perImage, q) * job.n + quantile(perStep, q) * job.steps * job.n;
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return { median: round(at(0.5)), p90: round(at(0.9)), runs: samples.length };
}

/** Worker seconds at the deployment's hourly price, in US dollars (6 decimals). */
export function costUsd(seconds: number, hourlyUsd: number): number {
  return Math.round(((seconds * hourlyUsd) / 3600) * 1e6) / 1e6;
}
