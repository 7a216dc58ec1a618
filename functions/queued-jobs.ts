import { CorruptDocumentError } from '../shared/errors.ts';
import { PENDING_JOBS_PREFIX, parsePendingJobKey, pendingJobKey } from '../shared/keys.ts';
import type { BlobMeta, BlobStore, JobQueue, JobStore } from '../shared/ports.ts';
import type { JobRecord } from '../shared/schemas/job.ts';
import { encodeQueueMessage } from '../shared/schemas/queue.ts';
import type { AppLogEntry } from './types.ts';

/**
 * A job queued this long and never started may have lost its message (a process that died between
 * the job's create and its send). It is sent again, at most once per this period.
 */
export const RESEND_AFTER_MS = 5 * 60_000;

/** A marker whose job record never appeared (its create failed) is dropped after this long. */
export const ORPHAN_MARKER_AFTER_MS = 15 * 60_000;

/** Markers handled at once by a sweep: bounded, so a backlog of thousands does not open thousands of requests. */
const SWEEP_CONCURRENCY = 8;

export interface QueuedJobDeps {
  blobs: BlobStore;
  jobs: JobStore;
  queue: JobQueue;
  clock: () => Date;
  log?: (entry: AppLogEntry) => void;
}

export function sendJobMessage(queue: JobQueue, job: Pick<JobRecord, 'id' | 'owner'>): Promise<{ messageId: string }> {
  return queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }));
}

/** Marks a job as "message not yet proven sent". Written before the job exists; idempotent. */
export async function markPending(blobs: BlobStore, owner: string, jobId: string): Promise<void> {
  await blobs.put(pendingJobKey(owner, jobId), new Uint8Array(0), { contentType: 'application/octet-stream' });
}

function queuedSince(job: JobRecord): number {
  return Date.parse(job.enqueued_at ?? job.created_at);
}

/** Queued, never started, and last sent over RESEND_AFTER_MS ago. */
export function isLongQueued(job: JobRecord, now: Date): boolean {
  return job.status === 'queued' && job.attempts === 0 && now.getTime() - queuedSince(job) > RESEND_AFTER_MS;
}

/**
 * Sends the message of a long-queued job again. A duplicate is harmless: a worker drops a message
 * for a job another one holds, or one already finished. Of concurrent callers (replays, sweeps) only
 * the one whose write moved `enqueued_at` sends. A failed send puts the stamp back, so the next
 * caller tries again; the job is not marked failed, since it may well have its message (waiting
 * in a backlog). Returns the record as it now stands.
 */
export async function resendIfLongQueued(deps: QueuedJobDeps, job: JobRecord): Promise<{ job: JobRecord; resent: boolean }> {
  const now = deps.clock();
  if (!isLongQueued(job, now)) return { job, resent: false };
  let won = false;
  const stamp = now.toISOString();
  const before = job.enqueued_at;
  let current = await deps.jobs.update(job.owner, job.id, (cur) => {
    won = isLongQueued(cur, now);
    return won ? { ...cur, enqueued_at: stamp } : null;
  });
  if (!won) return { job: current, resent: false };
  try {
    await sendJobMessage(deps.queue, current);
    return { job: current, resent: true };
  } catch (error) {
    deps.log?.({ level: 'warn', msg: 're-send of a long-queued job failed', job_id: job.id, owner: job.owner, error: describe(error) });
    current = await deps.jobs
      .update(job.owner, job.id, (cur) => (cur.enqueued_at === stamp ? { ...cur, enqueued_at: before } : null))
      .catch(() => current);
    return { job: current, resent: false };
  }
}

export interface SweepReport {
  /** Markers looked at. */
  scanned: number;
  /** Long-queued jobs whose message was sent again. */
  resent: number;
  /** Markers removed: the job started, finished or was canceled, or never came to exist. */
  cleared: number;
  /** Markers kept: the job is still queued (or may yet be created). */
  kept: number;
  /** Markers that could not be handled this time (logged; the next sweep tries again). */
  errors: number;
  /** Keys under the prefix that this code does not write (logged, left alone). */
  foreign: number;
}

/**
 * The queued-job sweep: walks the `pending/` markers and makes sure every job still queued and never
 * started has a message. Without it a job whose message was lost stays `queued` for ever unless its
 * caller happens to retry with the same Idempotency-Key. Safe to run concurrently and repeatedly.
 */
export async function sweepQueuedJobs(deps: QueuedJobDeps): Promise<SweepReport> {
  const report: SweepReport = { scanned: 0, resent: 0, cleared: 0, kept: 0, errors: 0, foreign: 0 };
  let cursor: string | undefined;
  do {
    const page = await deps.blobs.list(PENDING_JOBS_PREFIX, cursor === undefined ? {} : { cursor });
    for (let i = 0; i < page.items.length; i += SWEEP_CONCURRENCY) {
      await Promise.all(page.items.slice(i, i + SWEEP_CONCURRENCY).map((item) => sweepOne(deps, item, report)));
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  return report;
}

async function sweepOne(deps: QueuedJobDeps, marker: BlobMeta, report: SweepReport): Promise<void> {
  report.scanned++;
  const named = parsePendingJobKey(marker.key);
  if (!named) {
    // Not a marker this code writes: leave it alone, but say so.
    report.foreign++;
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: not a pending-job marker; left as is', key: marker.key });
    return;
  }
  const clear = async () => {
    await deps.blobs.delete(marker.key);
    report.cleared++;
  };
  try {
    let job: JobRecord | null;
    try {
      job = await deps.jobs.get(named.owner, named.jobId);
    } catch (error) {
      if (!(error instanceof CorruptDocumentError)) throw error;
      // Nothing a message could do for it; the API answers 409 corrupt_record for it.
      deps.log?.({ level: 'warn', msg: 'queued-job sweep: corrupt job record; marker dropped', key: error.key, detail: error.detail });
      await clear();
      return;
    }
    if (!job) {
      // The create failed (or is still in flight: hence the grace period).
      if (deps.clock().getTime() - marker.lastModified.getTime() > ORPHAN_MARKER_AFTER_MS) await clear();
      else report.kept++;
      return;
    }
    if (job.status !== 'queued' || job.attempts > 0) {
      // Started at least once: from then on the worker's lease, its re-queue and the dead-letter
      // sweep own the message. Finished, failed or canceled: nothing to send.
      await clear();
      return;
    }
    const { resent } = await resendIfLongQueued(deps, job);
    if (resent) {
      report.resent++;
      deps.log?.({ level: 'warn', msg: 'queued-job sweep: sent the message of a long-queued job again', job_id: job.id, owner: job.owner });
    }
    report.kept++;
  } catch (error) {
    report.errors++;
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: marker not handled; the next sweep tries again', key: marker.key, error: describe(error) });
  }
}

export interface SweepTimer {
  /** Stops the timer and waits for a sweep in progress. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Runs the sweep now and then every `everyMs` (local mode; in AWS a scheduled Lambda runs it). Sweeps
 * never overlap; a failed sweep is logged and the next one runs on time.
 */
export function startQueuedJobSweeps(deps: QueuedJobDeps, everyMs: number): SweepTimer {
  let running: Promise<void> | undefined;
  let stopped = false;
  const tick = () => {
    if (stopped || running) return;
    running = sweepQueuedJobs(deps)
      .then(
        (report) => {
          if (report.resent > 0 || report.errors > 0 || report.foreign > 0) deps.log?.({ level: 'info', msg: 'queued-job sweep', ...report });
        },
        (error: unknown) => deps.log?.({ level: 'warn', msg: 'queued-job sweep failed; the next one runs on time', error: describe(error) }),
      )
      .finally(() => {
        running = undefined;
      });
  };
  tick();
  const timer = setInterval(tick, everyMs);
  timer.unref();
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
