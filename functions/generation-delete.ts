// What DELETE /v1/generations/{id} does to a generation that has ended (ADR 0021), in one place: the
// route runs it for a caller, and the record retention (CLIPAG_RECORD_RETENTION_DAYS, ADR 0037) for a
// generation that ended long enough ago. The order matters: each step leaves a state that a retry (or
// the queued-job sweep) finishes from.

import { ConflictError } from '../shared/errors.ts';
import { clearPending, markPending } from '../shared/pending.ts';
import type { BlobStore, JobMutation, JobStore } from '../shared/ports.ts';
import { removeJobOutputs } from '../shared/retention.ts';
import { deletedRecord, isTerminal, type JobRecord } from '../shared/schemas/job.ts';
import { IdempotencyLedger } from './idempotency.ts';
import type { AppLogEntry } from './types.ts';

export interface GenerationDeleteDeps {
  blobs: BlobStore;
  jobs: JobStore;
  ledger: Pick<IdempotencyLedger, 'forgetBody'>;
  /** The record's versioned read-modify-write (the route's answers a 404 or a 503 busy in its own words). */
  update: (owner: string, id: string, mutate: JobMutation) => Promise<JobRecord>;
}

/**
 * Deletes an ended generation's images and frames and blanks its prompts, labels and flags; drops its
 * Idempotency-Key and the body's hash. Idempotent: a generation deleted before is scrubbed of what an
 * older version left. A queued or running one is a 409 job_not_finished. Returns the record as it stands.
 */
export async function deleteEndedGeneration(d: GenerationDeleteDeps, owner: string, id: string, now: string): Promise<JobRecord> {
  // The `outputs` marker before the record: a process that dies between marking the record deleted
  // and removing its images (a Lambda timeout, a killed serve) left them stored for good, still served
  // through links signed before the DELETE; the queued-job sweep now finishes the removal
  // (settleStoredOutputs removes all a deleted job stored). Only for an ended job that ran: one still
  // running is refused below, and its attempt keeps its own marker.
  const before = await d.jobs.get(owner, id);
  if (before && isTerminal(before.status) && before.attempts > 0 && before.deleted_at === undefined) await markPending(d.blobs, 'outputs', owner, id);
  // Then the record: once it says deleted, no view links an image, and a retry after a failed
  // delete of the objects below finishes the job. It keeps its Idempotency-Key until the key's claim
  // is done with (below): a retry of a DELETE that died in between finds the claim by it.
  let job = await d.update(owner, id, (cur) => {
    if (!isTerminal(cur.status)) {
      throw new ConflictError(`generation ${id} is ${cur.status}; cancel it, and delete it once it has ended`, { code: 'job_not_finished' });
    }
    return cur.deleted_at !== undefined ? null : deletedRecord(cur, now);
  });
  // The claim keeps a hash of the body, which would confirm a guess of the deleted prompt: replaced,
  // only now that the record says deleted (a claim marked so answers any body with its generation,
  // which must then be a deleted one), and then the key leaves the record.
  // (A record an older version deleted still has both: its DELETE again scrubs them.)
  if (job.idempotency_key !== null || job.body_hash !== null) {
    if (job.idempotency_key !== null) await d.ledger.forgetBody({ owner, key: job.idempotency_key, jobId: id });
    job = await d.update(owner, id, (cur) => (cur.idempotency_key === null && cur.body_hash === null ? null : { ...cur, idempotency_key: null, body_hash: null }));
  }
  await removeJobOutputs(d.blobs, owner, id);
  // Its images are gone: nothing is left for the sweep to settle.
  if (job.attempts > 0) await clearPending(d.blobs, 'outputs', owner, id);
  return job;
}

/**
 * The delete a record retention runs (ADR 0037): DELETE's, on the job store's own read-modify-write,
 * with its own idempotency ledger. `clipag serve` and the AWS sweep build it alike.
 */
export function retentionDelete(blobs: BlobStore, jobs: JobStore, clock: () => Date, log?: (entry: AppLogEntry) => void): (owner: string, id: string) => Promise<void> {
  const ledger = new IdempotencyLedger(blobs, jobs, log ? { log } : {});
  const deps: GenerationDeleteDeps = { blobs, jobs, ledger, update: (owner, id, mutate) => jobs.update(owner, id, mutate) };
  return async (owner, id) => {
    await deleteEndedGeneration(deps, owner, id, clock().toISOString());
  };
}
