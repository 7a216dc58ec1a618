// What a deployment keeps of a generation, and the one way its images go: DELETE /v1/generations/{id}
// and local mode's retention pass (functions/local-retention.ts) remove them alike. In AWS the
// bucket's lifecycle rule removes them instead (cdk/lib/stateful-stack.ts expire-outputs).
import { jobOutputsPrefix } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { deletePrefix } from './prefix.ts';
import { isTerminal, type JobRecord } from './schemas/job.ts';
import { outputsExpireAt, outputsExpireMs } from './views.ts';

/**
 * Removes a generation's stored images and their progress frames (`outputs/<owner>/<job>/`, all of
 * it); returns the keys removed. Idempotent. The record is not touched: what it says of the removal
 * is its caller's business (DELETE marks it deleted; an expiry leaves it as S3's lifecycle rule does).
 */
export function removeJobOutputs(blobs: BlobStore, owner: string, jobId: string): Promise<string[]> {
  return deletePrefix(blobs, jobOutputsPrefix(owner, jobId));
}

/**
 * A job whose first enqueue failed (its POST answered 503): the retry with the same Idempotency-Key
 * queues it again, so it may yet run and store images. Not once the caller has deleted it (ADR 0021):
 * a deleted generation stays ended.
 */
export function requeueable(job: Pick<JobRecord, 'status' | 'error' | 'deleted_at'>): boolean {
  return job.status === 'failed' && job.error?.code === 'enqueue_failed' && job.deleted_at === undefined;
}

/**
 * What a retention of `days` makes of a job's stored images at `nowMs`:
 * - `remove`: its `outputs_expire_at` has passed (the view promised their removal by then);
 * - `wait` for a job that ended at `endedAt` (ms) with images, not yet expired; `endedAt` null: it has
 *   not ended (or may run again), so whether and when cannot be told yet;
 * - `done`: nothing to remove, now or later (no record, deleted, or ended without images).
 * An ended record never changes its images or its end again, so a `wait` with an end needs no
 * second reading of the record. The end is what a caller keeps, not the expiry: the expiry follows
 * the retention (`outputsExpireMs`), which an operator may change between two passes.
 */
export type OutputsVerdict = { kind: 'remove'; endedAt: number } | { kind: 'done' } | { kind: 'wait'; endedAt: number | null };

export function outputsVerdict(job: JobRecord | null, days: number, nowMs: number): OutputsVerdict {
  // Deleted: DELETE removed them (and anything an attempt stored later is settled by that attempt).
  if (job === null || job.deleted_at !== undefined) return { kind: 'done' };
  if (!isTerminal(job.status) || requeueable(job)) return { kind: 'wait', endedAt: null };
  if (outputsExpireAt(job, days) === null) return { kind: 'done' };
  const endedAt = Date.parse(job.finished_at!);
  return outputsExpireMs(endedAt, days) <= nowMs ? { kind: 'remove', endedAt } : { kind: 'wait', endedAt };
}


/**
 * What a record retention of `days` (CLIPAG_RECORD_RETENTION_DAYS, ADR 0037) makes of a job at
 * `nowMs`, in OutputsVerdict's terms: `remove` (delete it as DELETE does: its images, prompts, labels,
 * flags and Idempotency-Key) once `days` have passed since it ended; `wait` until then (`endedAt` null:
 * not ended); `done` for one deleted before, or no record.
 */
export function recordVerdict(job: JobRecord | null, days: number, nowMs: number): OutputsVerdict {
  if (job === null || job.deleted_at !== undefined) return { kind: 'done' };
  // One whose POST was answered 503 (requeueable) counts from that end too: a retry with its key may
  // queue it again, which the delete's own read sees (it is then not due), so it is judged then.
  if (!isTerminal(job.status) || job.finished_at === null) return { kind: 'wait', endedAt: null };
  const endedAt = Date.parse(job.finished_at);
  return outputsExpireMs(endedAt, days) <= nowMs ? { kind: 'remove', endedAt } : { kind: 'wait', endedAt };
}
