// What each owner has used, day by day (ADR 0019): the worker adds a job's usage when it writes it to
// the job's record, and `GET /v1/usage` reads it back with the cost at the deployment's price. One small
// document per owner and UTC month, `usage/<owner>/<YYYY-MM>.json`, so a month is one read however
// many jobs it held.
import { z } from 'zod';
import { readDoc, updateDocument } from './documents.ts';
import { CorruptDocumentError } from './errors.ts';
import { usageKey } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { costUsd } from './run-stats.ts';
import { ApiKeyId } from './schemas/common.ts';
import type { JobRecord } from './schemas/job.ts';

/** One day's figures: of the whole owner, or of one of its API keys. */
const FIGURES = {
  /** Generations whose run ended here with its usage written (succeeded, or failed after the run when every image was withheld). */
  generations: z.number().int().nonnegative(),
  /** Images made, withheld ones included (the compute was spent). */
  images: z.number().int().nonnegative(),
  worker_seconds: z.number().finite().nonnegative(),
  encoder_passes: z.number().int().nonnegative(),
  /**
   * Of worker_seconds, those of jobs whose record kept their price (`hourly_usd`), and their cost at
   * those prices: the day's cost stays what it was when the deployment's price changes (ADR 0022).
   * Absent: none (days written before prices were kept, or a deployment with no price).
   */
  priced_seconds: z.number().finite().nonnegative().optional(),
  priced_cost_usd: z.number().finite().nonnegative().optional(),
};
const pricedWithin = (d: { priced_seconds?: number | undefined; worker_seconds: number }) => (d.priced_seconds ?? 0) <= d.worker_seconds + 1e-9;
const PRICED_WITHIN = { message: 'priced_seconds must not exceed worker_seconds' };
// Loose, here and below: a field a later version adds is kept by this one's writes (it adds what it
// knows; `clipag usage audit` finds what it could not), instead of every add failing on the month.
const Figures = z.object(FIGURES).loose().refine(pricedWithin, PRICED_WITHIN);
/** One day's figures (what this version knows of them). */
export interface UsageFigures {
  generations: number;
  images: number;
  worker_seconds: number;
  encoder_passes: number;
  priced_seconds?: number | undefined;
  priced_cost_usd?: number | undefined;
}

/** At most this many API keys per day are itemised; the owner's totals count every job. */
export const MAX_KEYS_PER_DAY = 100;

const DayUsage = z
  .object({
    ...FIGURES,
    /**
     * The same figures per API key that created the jobs (ADR 0022), for the jobs whose record names
     * one. Absent: none did (jobs created before keys were recorded).
     */
    by_api_key: z
      .record(ApiKeyId, Figures)
      .refine((keys) => Object.keys(keys).length <= MAX_KEYS_PER_DAY, { message: `at most ${MAX_KEYS_PER_DAY} keys a day` })
      .optional(),
  })
  .loose()
  .refine(pricedWithin, PRICED_WITHIN);
export interface DayUsage extends UsageFigures {
  by_api_key?: Record<string, UsageFigures> | undefined;
}

/**
 * How many of the ids of the jobs added last `recent_jobs` keeps: the once-per-job check of the
 * versions before `counted_jobs`, still written for them (they refuse a longer list, and keep a field
 * they do not know). This version checks `counted_jobs`.
 */
export const RECENT_JOBS_KEPT = 500;

const JobIds = z.array(z.string().min(1).max(100));
const UsageDoc = z
  .object({
    v: z.literal(1),
    days: z.record(z.string().regex(/^\d{4}-\d{2}-\d{2}$/), DayUsage),
    recent_jobs: JobIds.max(RECENT_JOBS_KEPT).default([]),
    /**
     * Every job the month counts, so an add repeated for the same job counts once however late it
     * comes. Repeats come within seconds (an S3 PUT that landed but whose reply was lost is sent again,
     * fails its condition, and the add re-reads; a worker retries a record write it could not confirm),
     * but also much later: a message back after its job was added but before the record's
     * `usage_recorded_at` stamp and the ack landed (a crash, or both writes failing) comes back after a
     * visibility timeout, or a deferred second copy after the job's deadline; a window of the last
     * RECENT_JOBS_KEPT jobs had let a batch customer's other jobs push it out, and the job was counted
     * twice. A job is always added to the month it ended in, so the month's ids are every id an add
     * can repeat. About 29 bytes a job (a 26-character id, quoted): 10,000 jobs make 290 KB, read and
     * rewritten by each add. Absent: a document written before it, whose `recent_jobs` is all it knows.
     */
    counted_jobs: JobIds.optional(),
  })
  .loose();

/**
 * The month's document. One that does not read, or holds a day outside its month (or no real day),
 * is a CorruptDocumentError (the API's 409), never taken for zero.
 */
function parse(body: Uint8Array, key: string, month: string): z.output<typeof UsageDoc> {
  const doc = readDoc(UsageDoc, body, key);
  for (const date of Object.keys(doc.days)) {
    const real = !Number.isNaN(Date.parse(`${date}T00:00:00Z`)) && new Date(`${date}T00:00:00Z`).toISOString().startsWith(date);
    if (!date.startsWith(`${month}-`) || !real) throw new CorruptDocumentError(key, `day ${date} is not a day of ${month}`);
  }
  return doc;
}

/**
 * Adds one generation's usage to its owner's day (UTC, of `at`), once per `jobId` (see
 * `counted_jobs`). A conditional read-modify-write: workers may race.
 */
export async function recordUsage(blobs: BlobStore, owner: string, jobId: string, at: Date, used: Used): Promise<void> {
  const day = at.toISOString().slice(0, 10);
  const month = day.slice(0, 7);
  const key = usageKey(owner, month);
  await updateDocument(blobs, key, (current) => {
    const doc = current ? parse(current, key, month) : { v: 1 as const, days: {}, recent_jobs: [] };
    // With the ids a version before counted_jobs added (it writes recent_jobs only).
    const counted = new Set([...(doc.counted_jobs ?? []), ...doc.recent_jobs]);
    if (counted.has(jobId)) return null; // counted already
    addToDay(doc.days, day, used);
    counted.add(jobId);
    return Buffer.from(JSON.stringify({ ...doc, v: 1, days: doc.days, recent_jobs: [...doc.recent_jobs, jobId].slice(-RECENT_JOBS_KEPT), counted_jobs: [...counted] }));
  });
}

export interface Used {
  images: number;
  workerSeconds: number;
  encoderPasses: number;
  /** The price the job's record kept (`hourly_usd`); absent: none kept. */
  hourlyUsd?: number;
  /** The API key that created the job (the record's `api_key_id`); absent: not recorded. */
  apiKeyId?: string;
}

// Milliseconds and micro-dollars, as the records and views keep them: sums of many jobs stay exact.
const ms = (seconds: number) => Math.round(seconds * 1000) / 1000;
const micro = (usd: number) => Math.round(usd * 1e6) / 1e6;

function addFigures(was: UsageFigures | undefined, used: Used): UsageFigures {
  const w = was ?? { generations: 0, images: 0, worker_seconds: 0, encoder_passes: 0 };
  const priced = used.hourlyUsd !== undefined;
  return {
    ...w,
    generations: w.generations + 1,
    images: w.images + used.images,
    worker_seconds: ms(w.worker_seconds + used.workerSeconds),
    encoder_passes: w.encoder_passes + used.encoderPasses,
    ...(w.priced_seconds !== undefined || priced
      ? {
          priced_seconds: ms((w.priced_seconds ?? 0) + (priced ? used.workerSeconds : 0)),
          // Each job at its own price, rounded as its view shows it: the day is the sum of its jobs' costs.
          priced_cost_usd: micro((w.priced_cost_usd ?? 0) + (priced ? costUsd(used.workerSeconds, used.hourlyUsd!) : 0)),
        }
      : {}),
  };
}

function addToDay(days: Record<string, DayUsage>, day: string, used: Used): void {
  const { by_api_key: keys, ...was } = days[day] ?? { generations: 0, images: 0, worker_seconds: 0, encoder_passes: 0 };
  const key = used.apiKeyId;
  const known = key !== undefined && keys !== undefined && Object.hasOwn(keys, key);
  // A day with more keys than it itemises still counts the job in the owner's totals.
  const itemised = key !== undefined && (known || Object.keys(keys ?? {}).length < MAX_KEYS_PER_DAY);
  const byKey = itemised ? { ...keys, [key]: addFigures(known ? keys[key] : undefined, used) } : keys;
  days[day] = DayUsage.parse({ ...addFigures(was, used), ...(byKey !== undefined ? { by_api_key: byKey } : {}) });
}

/**
 * A day's cost: its priced jobs at their own prices, the rest (jobs whose record kept no price) at
 * today's `hourlyUsd`. Null when some seconds have no price and the deployment sets none.
 */
export function dayCostUsd(day: UsageFigures, hourlyUsd: number | undefined): number | null {
  const unpriced = ms(day.worker_seconds - (day.priced_seconds ?? 0));
  if (day.priced_seconds === undefined && hourlyUsd === undefined) return null;
  if (unpriced > 0 && hourlyUsd === undefined) return null;
  return micro((day.priced_cost_usd ?? 0) + (unpriced > 0 ? costUsd(unpriced, hourlyUsd!) : 0));
}

/**
 * A month's cost as GET /v1/usage shows it: each day's (dayCostUsd), and their total, the sum of the
 * days as shown (so the figures a reader adds up agree). The total is null when a day's is, and for a
 * month with nothing in it where no price is set (it costs nothing only where there is a price to say so).
 */
export function monthCostUsd(days: readonly UsageFigures[], hourlyUsd: number | undefined): { days: Array<number | null>; total: number | null } {
  const costs = days.map((d) => dayCostUsd(d, hourlyUsd));
  const unknown = costs.some((c) => c === null) || (costs.length === 0 && hourlyUsd === undefined);
  return { days: costs, total: unknown ? null : micro(costs.reduce<number>((a, c) => a + c!, 0)) };
}

/**
 * What the worker adds to the ledger for this job, as its record shows it: a run that ended with its
 * usage written (succeeded, or failed because every image was withheld), on the UTC day it finished;
 * null for a job the ledger does not count.
 */
export function usageOfRecord(job: JobRecord): (Used & { day: string }) | null {
  if (job.finished_at === null) return null;
  const withheld = (job.output_checks ?? []).filter((c) => c.withheld).length;
  const allWithheld = job.status === 'failed' && job.error?.code === 'content_policy' && withheld > 0 && job.outputs.length === 0;
  if (job.status !== 'succeeded' && !allWithheld) return null;
  return {
    day: job.finished_at.slice(0, 10),
    images: job.outputs.length + withheld,
    workerSeconds: job.usage.worker_seconds,
    encoderPasses: job.usage.encoder_passes,
    ...(job.hourly_usd !== undefined ? { hourlyUsd: job.hourly_usd } : {}),
    ...(job.api_key_id !== undefined ? { apiKeyId: job.api_key_id } : {}),
  };
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** An owner's job records as one scan saw them: every readable one, and the ids of those that did not read. */
export interface JobScan {
  records: JobRecord[];
  unreadable: string[];
}

/** The month's days as the records show them (ascending), and the jobs counted, oldest end first. */
export function usageFromRecords(records: Iterable<JobRecord>, month: string): { days: Array<DayUsage & { date: string }>; jobs: string[] } {
  const days: Record<string, DayUsage> = {};
  const counted: Array<{ id: string; at: string }> = [];
  // In the order the jobs ended, as their workers added them: past MAX_KEYS_PER_DAY keys a day, the
  // keys itemised are the first ones to end there.
  const byEnd = [...records].sort((a, b) => cmp(a.finished_at ?? '', b.finished_at ?? '') || cmp(a.id, b.id));
  for (const job of byEnd) {
    const used = usageOfRecord(job);
    if (!used || !used.day.startsWith(`${month}-`)) continue;
    addToDay(days, used.day, used);
    counted.push({ id: job.id, at: job.finished_at! });
  }
  counted.sort((a, b) => cmp(a.at, b.at) || cmp(a.id, b.id));
  return { days: Object.keys(days).sort().map((date) => ({ date, ...days[date]! })), jobs: counted.map((c) => c.id) };
}

/**
 * Replaces the owner's month with what the job records show (the repair for a document that does not
 * read, or that missed jobs whose adds failed), then catches up: a second scan adds, as their workers
 * would have, the month's jobs the first scan did not count (they ended in between, and their adds
 * either failed on the unreadable document or were overwritten). The rebuilt document keeps every
 * counted job's id (`counted_jobs`), and every add is once per job, so a worker's add landing at the
 * same time, or a late one for a job the rebuild counted, counts once. A job ending after the second
 * scan is added by its worker as usual.
 */
export async function rebuildUsage(blobs: BlobStore, owner: string, month: string, scan: () => Promise<JobScan>): Promise<Array<DayUsage & { date: string }>> {
  const key = usageKey(owner, month);
  const rebuilt = usageFromRecords((await scan()).records, month);
  const days = Object.fromEntries(rebuilt.days.map(({ date, ...d }) => [date, d]));
  const body = Buffer.from(JSON.stringify({ v: 1, days, recent_jobs: rebuilt.jobs.slice(-RECENT_JOBS_KEPT), counted_jobs: rebuilt.jobs }));
  // Whatever is there, readable or not, is replaced (conditionally on what was read: a racing add re-reads).
  await updateDocument(blobs, key, () => body);
  const counted = new Set(rebuilt.jobs);
  for (const job of (await scan()).records) {
    const used = usageOfRecord(job);
    if (used && used.day.startsWith(`${month}-`) && !counted.has(job.id)) await recordUsage(blobs, owner, job.id, new Date(job.finished_at!), used);
  }
  return readUsage(blobs, owner, month);
}

/** An owner's usage in a month, day by day (ascending); empty when nothing was recorded. */
export async function readUsage(blobs: BlobStore, owner: string, month: string): Promise<Array<DayUsage & { date: string }>> {
  const key = usageKey(owner, month);
  const found = await blobs.get(key);
  if (!found) return [];
  const { days } = parse(found.body, key, month);
  return Object.keys(days)
    .sort()
    .map((date) => ({ date, ...days[date]! }));
}
