// What each owner has used, day by day (ADR 0019): the worker adds a job's usage when it writes it to
// the job's record, and `GET /v1/usage` reads it back with the cost at the deployment's price. One small
// document per owner and UTC month, `usage/<owner>/<YYYY-MM>.json`, so a month is one read however
// many jobs it held.
import { z } from 'zod';
import { readDoc, updateDocument } from './documents.ts';
import { CorruptDocumentError } from './errors.ts';
import { usageKey } from './keys.ts';
import type { BlobStore } from './ports.ts';

const DayUsage = z
  .object({
    /** Generations whose run ended here with its usage written (succeeded, or failed after the run when every image was withheld). */
    generations: z.number().int().nonnegative(),
    /** Images made, withheld ones included (the compute was spent). */
    images: z.number().int().nonnegative(),
    worker_seconds: z.number().finite().nonnegative(),
    encoder_passes: z.number().int().nonnegative(),
  })
  .strict();
export type DayUsage = z.output<typeof DayUsage>;

/**
 * The ids of the jobs added last, so an add repeated for the same job counts once: an S3 PUT that
 * landed but whose reply was lost is sent again by the SDK, fails its condition, and the add is
 * re-read and retried, as is a worker's retry of a record write it could not confirm. Such repeats
 * come within seconds; the window only bounds the document.
 */
export const RECENT_JOBS_KEPT = 500;

const UsageDoc = z
  .object({
    v: z.literal(1),
    days: z.record(z.string().regex(/^\d{4}-\d{2}-\d{2}$/), DayUsage),
    recent_jobs: z.array(z.string().min(1).max(100)).max(RECENT_JOBS_KEPT).default([]),
  })
  .strict();


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
 * RECENT_JOBS_KEPT). A conditional read-modify-write: workers may race.
 */
export async function recordUsage(blobs: BlobStore, owner: string, jobId: string, at: Date, used: { images: number; workerSeconds: number; encoderPasses: number }): Promise<void> {
  const day = at.toISOString().slice(0, 10);
  const month = day.slice(0, 7);
  const key = usageKey(owner, month);
  await updateDocument(blobs, key, (current) => {
    const doc = current ? parse(current, key, month) : { v: 1 as const, days: {}, recent_jobs: [] };
    if (doc.recent_jobs.includes(jobId)) return null; // counted already
    const days = doc.days;
    const was = days[day] ?? { generations: 0, images: 0, worker_seconds: 0, encoder_passes: 0 };
    days[day] = DayUsage.parse({
      generations: was.generations + 1,
      images: was.images + used.images,
      // Milliseconds, as the job records keep them: sums of many jobs stay exact to the millisecond.
      worker_seconds: Math.round((was.worker_seconds + used.workerSeconds) * 1000) / 1000,
      encoder_passes: was.encoder_passes + used.encoderPasses,
    });
    return Buffer.from(JSON.stringify({ v: 1, days, recent_jobs: [...doc.recent_jobs, jobId].slice(-RECENT_JOBS_KEPT) }));
  });
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
