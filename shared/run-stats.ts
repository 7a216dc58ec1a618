// Measured run times per model and output size (ADR 0014): the worker records each succeeded job's
// worker seconds per step; the API turns the recent ones into time and cost estimates. One small JSON
// document per (model, size) at `stats/<model>/<width>x<height>.json`, the last RUN_STATS_KEEP runs.
import { z } from 'zod';
import { PreconditionFailedError } from './errors.ts';
import { assertValidKey } from './keys.ts';
import type { BlobStore } from './ports.ts';

export const RUN_STATS_PREFIX = 'stats/';
/** Runs kept per (model, size): enough for a stable median, recent enough to follow a new GPU type. */
export const RUN_STATS_KEEP = 50;
/** Workers finishing runs of one size at the same moment race for one document: enough tries for a fleet. */
const RECORD_TRIES = 20;

const RunSample = z
  .object({
    /** Worker seconds for the whole job (model load, init, steps, uploads). */
    seconds: z.number().finite().nonnegative(),
    /** Optimization steps over all images of the job (steps × n, after any cap). */
    steps: z.number().int().positive(),
    at: z.string(),
  })
  .strict();
export type RunSample = z.output<typeof RunSample>;

const RunStatsDoc = z.object({ v: z.literal(1), samples: z.array(RunSample).max(RUN_STATS_KEEP) }).strict();

export function runStatsKey(model: string, width: number, height: number): string {
  const key = `${RUN_STATS_PREFIX}${model}/${width}x${height}.json`;
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

/** The recorded runs of one (model, size), oldest first; none when nothing was recorded or the document is unreadable. */
export async function readRunSamples(blobs: BlobStore, model: string, width: number, height: number): Promise<RunSample[]> {
  const found = await blobs.get(runStatsKey(model, width, height));
  return found ? parseDoc(found.body) : [];
}

/** Appends one run: conditional writes, re-read after a lost race with a jittered pause; throws after RECORD_TRIES. */
export async function recordRunSample(blobs: BlobStore, model: string, width: number, height: number, sample: RunSample): Promise<void> {
  const key = runStatsKey(model, width, height);
  const checked = RunSample.parse(sample);
  for (let attempt = 0; ; attempt++) {
    const found = await blobs.get(key);
    const samples = [...(found ? parseDoc(found.body) : []), checked].slice(-RUN_STATS_KEEP);
    const body = Buffer.from(JSON.stringify({ v: 1, samples }));
    try {
      if (found) await blobs.replaceIfMatch(key, body, found.etag, { contentType: 'application/json' });
      else await blobs.putIfAbsent(key, body, { contentType: 'application/json' });
      return;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError) || attempt + 1 >= RECORD_TRIES) throw error;
      await new Promise((r) => setTimeout(r, Math.random() * 10 * (attempt + 1)));
    }
  }
}

function quantile(sorted: readonly number[], q: number): number {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (i - lo);
}

export interface RunEstimate {
  /** Worker seconds for the job: median and 90th percentile of the recorded seconds per step, times its steps. */
  median: number;
  p90: number;
  /** How many recorded runs it rests on. */
  runs: number;
}

/** `null` with no recorded run: no figure is better than an invented one. */
export function estimateSeconds(samples: readonly RunSample[], steps: number): RunEstimate | null {
  if (samples.length === 0) return null;
  const perStep = samples.map((s) => s.seconds / s.steps).sort((a, b) => a - b);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return { median: round(quantile(perStep, 0.5) * steps), p90: round(quantile(perStep, 0.9) * steps), runs: samples.length };
}

/** Worker seconds at the deployment's hourly price, in US dollars (6 decimals). */
export function costUsd(seconds: number, hourlyUsd: number): number {
  return Math.round(((seconds * hourlyUsd) / 3600) * 1e6) / 1e6;
}
