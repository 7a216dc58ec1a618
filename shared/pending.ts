// Writing and removing the markers of shared/keys.ts (`pending/<kind>/<owner>/<job>`). The API writes
// them; the API, the worker and the queued-job sweep remove them when their work is done.
import { pendingJobKey, type PendingKind } from './keys.ts';
import type { BlobStore } from './ports.ts';

/** Marks a job's work as unfinished: its message, its webhook, or its place among its owner's active jobs. Idempotent. */
export async function markPending(blobs: BlobStore, kind: PendingKind, owner: string, jobId: string): Promise<void> {
  await blobs.put(pendingJobKey(kind, owner, jobId), new Uint8Array(0), { contentType: 'application/octet-stream' });
}

/** The work is done. A failed delete is harmless: the queued-job sweep finds the marker and drops it. */
export async function clearPending(blobs: BlobStore, kind: PendingKind, owner: string, jobId: string): Promise<void> {
  await blobs.delete(pendingJobKey(kind, owner, jobId)).catch(() => undefined);
}
