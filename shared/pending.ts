// Writing and removing the markers of shared/keys.ts (`pending/<kind>/<owner>/<job>`). The API and
// the worker write them; the API, the worker and the queued-job sweep remove them when their work is done.
import { pendingJobKey, removeOrphanedOutputs, type PendingKind } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { isTerminal, type JobRecord } from './schemas/job.ts';

/** Marks a job's work as unfinished: its message, its webhook, its place among its owner's active jobs, or images stored that no record names yet. Idempotent. */
export async function markPending(blobs: BlobStore, kind: PendingKind, owner: string, jobId: string): Promise<void> {
  await blobs.put(pendingJobKey(kind, owner, jobId), new Uint8Array(0), { contentType: 'application/octet-stream' });
}

/** The work is done. A failed delete is harmless: the queued-job sweep finds the marker and drops it. */
export async function clearPending(blobs: BlobStore, kind: PendingKind, owner: string, jobId: string): Promise<void> {
  await blobs.delete(pendingJobKey(kind, owner, jobId)).catch(() => undefined);
}

/**
 * Once a job has ended, what its attempts stored is settled: the images of a job that ended without
 * them (failed, canceled) are removed (removeOrphanedOutputs), and the `outputs` marker the worker
 * wrote before storing goes, so nothing retries it. A job still queued or running is left alone (an
 * attempt may be storing now).
 *
 * It throws what the store throws, with the marker still there: the queued-job sweep then tries again
 * (ADR 0005), and the bucket's lifecycle rule stays the last backstop. True when the job is settled.
 */
export async function settleStoredOutputs(blobs: BlobStore, job: Pick<JobRecord, 'owner' | 'id' | 'status' | 'attempts' | 'outputs'>): Promise<boolean> {
  if (!isTerminal(job.status)) return false;
  // Never started: nothing stored, so nothing to remove (removeOrphanedOutputs does not even list).
  await removeOrphanedOutputs(blobs, job);
  await clearPending(blobs, 'outputs', job.owner, job.id);
  return true;
}
