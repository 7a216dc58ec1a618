import { forEachLimited } from '../shared/concurrency.ts';
import { CorruptDocumentError } from '../shared/errors.ts';
import { PENDING_JOBS_PREFIX, parsePendingJobKey, pendingJobKey, type PendingKind } from '../shared/keys.ts';
import { endNewerJobRecord, NewerJobRecordError, type JobEnding, type NewerJobSeen } from '../shared/jobstore.ts';
import { clearPending, markPending, settleStoredOutputs } from '../shared/pending.ts';
import type { BlobMeta, BlobStore, JobQueue, JobStore } from '../shared/ports.ts';
import { canceledRecord, isTerminal, pastCancelDeadline, TERMINAL_STATUSES, waitingSince, type JobRecord, type JobStatus } from '../shared/schemas/job.ts';
import { deliverStartedEvent, deliverWebhook, startedEventDue, webhookOwed, type WebhookSender } from '../shared/webhooks.ts';
import { encodeQueueMessage } from '../shared/schemas/queue.ts';
import type { ViewOptions } from '../shared/views.ts';
import type { RetentionPass } from './local-retention.ts';
import type { AppLogEntry } from './types.ts';
import { usageOfRecord } from '../shared/usage.ts';

/**
 * A job queued this long and never started may have lost its message (a process that died between
 * the job's create and its send). It is sent again, at most once per this period.
 */
export const RESEND_AFTER_MS = 5 * 60_000;

/** A marker whose job record never appeared (its create failed) is dropped after this long. */
export const ORPHAN_MARKER_AFTER_MS = 15 * 60_000;
/** An `outputs` marker younger than this, of an ended job not deleted, may be a DELETE's in flight (see sweepOne). */
export const FRESH_OUTPUTS_MARKER_MS = 60_000;

/**
 * Past the queue's retention by this much, a job no message can reach is failed `expired`: the
 * margin covers the clock skew between the stamp and the send it precedes.
 */
export const EXPIRY_MARGIN_MS = 60 * 60_000;

/** Markers handled at once by a sweep: bounded, so a backlog of thousands does not open thousands of requests. */
const SWEEP_CONCURRENCY = 8;
/**
 * How long a sweep keeps starting webhook attempts (each up to 10 s). With the Lambda's 2-minute limit
 * this leaves room for the lost messages, which go first, and for the attempts still out.
 */
export const WEBHOOK_BUDGET_MS = 60_000;

export interface QueuedJobDeps {
  blobs: BlobStore;
  jobs: JobStore;
  queue: JobQueue;
  clock: () => Date;
  log?: (entry: AppLogEntry) => void;
}

/** What the sweep needs beyond re-sending: completion webhooks to retry (ADR 0013). */
export interface SweepDeps extends QueuedJobDeps {
  webhooks: { send: WebhookSender; signedUrlTtlSec: number; view?: ViewOptions };
  /** Default WEBHOOK_BUDGET_MS. */
  webhookBudgetMs?: number;
  /**
   * When (clock ms) the sweep must have returned: the Lambda's own end less a margin. No marker is
   * started past it (those left count as kept, and `deferred`): a sweep the Lambda kills mid-way records
   * nothing of what it did (a webhook a receiver already took is sent again next time) and writes no
   * report line, which the waiting-customer alarm reads.
   */
  deadline?: number;
  /** The queue's message retention; unset (the local queue keeps messages for ever): nothing expires. */
  queueRetentionSec?: number;
}

/**
 * The body of a `pending/msg` marker whose POST answered 503 but could not record the job as failed
 * (ADR 0012): the sweep fails such a job `enqueue_failed` instead of sending it. Told apart from the
 * ordinary, empty marker by its size, which a listing shows: neither the API nor the sweep may read
 * objects under `pending/`.
 */
const REFUSED_MARKER_BODY = new TextEncoder().encode('refused');

/** Marks the job's message as refused: its POST answered 503, so nothing may send it behind its caller's back. */
export async function markMessageRefused(blobs: BlobStore, owner: string, jobId: string): Promise<void> {
  await blobs.put(pendingJobKey('msg', owner, jobId), REFUSED_MARKER_BODY, { contentType: 'application/octet-stream' });
}

/** A `pending/msg` marker's state: unproven (send it once long queued) or refused (its POST answered 503). */
export type MessageMarker = { state: 'unproven' | 'refused' };

function markerOf(meta: Pick<BlobMeta, 'size'>): MessageMarker {
  return { state: meta.size > 0 ? 'refused' : 'unproven' };
}

/** The job's `pending/msg` marker (null: none), found by listing its exact key: both roles may list, neither may read `pending/`. */
export async function messageMarker(blobs: BlobStore, owner: string, jobId: string): Promise<MessageMarker | null> {
  const key = pendingJobKey('msg', owner, jobId);
  const found = (await blobs.list(key, { limit: 1 })).items.find((item) => item.key === key);
  return found ? markerOf(found) : null;
}

/**
 * Whether a refused marker still binds the job: queued, never started, and never queued again since
 * its create (no `enqueued_at`). A refusal is only ever written for a job fresh from its create, before
 * anything sent it; every later send stamps `enqueued_at` (a replay's re-queue, a re-send, a worker's
 * requeue), so a job that has one was queued again after its refusal, and the marker is void. Decided
 * by the record alone, not by comparing the marker's time with the job's: a listing gives S3's
 * LastModified in whole seconds, and another machine's clock (ADR 0012).
 */
export function refusalBinds(job: JobRecord): boolean {
  return job.status === 'queued' && job.attempts === 0 && job.enqueued_at === undefined;
}

/**
 * Fails `enqueue_failed` a job whose POST answered 503 but could not fail it then (a refused marker),
 * as its caller was told; a retry with the same Idempotency-Key re-queues it. Conditional: a job
 * started, ended, or queued again since its create (refusalBinds) is left alone. Returns the record as
 * it now stands.
 */
export async function failRefusedJob(deps: QueuedJobDeps, job: JobRecord): Promise<JobRecord> {
  const now = deps.clock().toISOString();
  let failed = false;
  const current = await deps.jobs.update(job.owner, job.id, (cur) => {
    failed = refusalBinds(cur);
    return failed ? { ...cur, status: 'failed', finished_at: now, error: { code: 'enqueue_failed', message: 'the job could not be queued; submit it again' } } : null;
  });
  if (failed) {
    await clearPending(deps.blobs, 'active', job.owner, job.id);
    deps.log?.({ level: 'warn', msg: 'a job whose POST answered 503 failed enqueue_failed, not sent', job_id: job.id, owner: job.owner });
  }
  return current;
}

/**
 * A replay's re-send, by the sweep's rule: only a long-queued job whose message is not proven sent
 * (its `pending/msg` marker is there, and not a refusal that still binds it) is sent again. A job
 * merely waiting in a backlog has no marker: re-sending it on every replay would add a duplicate
 * message every 5 minutes.
 */
export async function resendIfMessageUnproven(deps: QueuedJobDeps, job: JobRecord): Promise<JobRecord> {
  if (!isLongQueued(job, deps.clock())) return job;
  const marker = await messageMarker(deps.blobs, job.owner, job.id);
  if (!marker || (marker.state === 'refused' && refusalBinds(job))) return job;
  return (await resendIfLongQueued(deps, job)).job;
}

export function sendJobMessage(queue: JobQueue, job: Pick<JobRecord, 'id' | 'owner'>): Promise<{ messageId: string }> {
  return queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }), { group: job.owner });
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
export function resendIfLongQueued(deps: QueuedJobDeps, job: JobRecord): Promise<{ job: JobRecord; resent: boolean; sendFailed: boolean }> {
  return resendIf(deps, job, isLongQueued, 'long-queued job');
}

/** resendIfLongQueued's send, for the jobs `due` picks (judged again in the record's conditional write). */
async function resendIf(
  deps: QueuedJobDeps,
  job: JobRecord,
  due: (job: JobRecord, now: Date) => boolean,
  what: string,
): Promise<{ job: JobRecord; resent: boolean; sendFailed: boolean }> {
  const now = deps.clock();
  if (!due(job, now)) return { job, resent: false, sendFailed: false };
  let won = false;
  const stamp = now.toISOString();
  const before = job.enqueued_at;
  let current = await deps.jobs.update(job.owner, job.id, (cur) => {
    won = due(cur, now);
    return won ? { ...cur, enqueued_at: stamp } : null;
  });
  if (!won) return { job: current, resent: false, sendFailed: false };
  try {
    await sendJobMessage(deps.queue, current);
    await clearPending(deps.blobs, 'msg', job.owner, job.id);
    return { job: current, resent: true, sendFailed: false };
  } catch (error) {
    deps.log?.({ level: 'warn', msg: `re-send of a ${what} failed`, job_id: job.id, owner: job.owner, error: describe(error) });
    current = await deps.jobs
      .update(job.owner, job.id, (cur) => (cur.enqueued_at === stamp ? { ...cur, enqueued_at: before } : null))
      .catch(() => current);
    return { job: current, resent: false, sendFailed: true };
  }
}

/**
 * Sends the message of every job that a process which has ended left unsent: queued, never started,
 * last queued before `before` (when the caller started), with an ordinary `pending/msg` marker (its
 * send was never confirmed) and no message in the queue (`hasMessage`). The sweep waits RESEND_AFTER_MS
 * for such a job, since its message may only be slow; a caller that knows no other process can be
 * sending it (`clipag serve` starting alone on its data folder after a kill -9) sends it at once.
 * Of concurrent senders (a replay, a sweep) only the one whose write moved `enqueued_at` sends, as in
 * resendIfLongQueued. Returns how many were sent, and how many sends failed (the sweep retries those).
 */
export async function sendMessagesLeftUnsent(
  deps: QueuedJobDeps,
  { before, hasMessage }: { before: Date; hasMessage: (job: JobRecord) => Promise<boolean> },
): Promise<{ sent: number; failed: number }> {
  const result = { sent: 0, failed: 0 };
  const markers: BlobMeta[] = [];
  let cursor: string | undefined;
  do {
    const page = await deps.blobs.list(`${PENDING_JOBS_PREFIX}msg/`, cursor === undefined ? {} : { cursor });
    markers.push(...page.items);
    cursor = page.cursor;
  } while (cursor !== undefined);
  const leftUnsent = (job: JobRecord) => job.status === 'queued' && job.attempts === 0 && queuedSince(job) < before.getTime();
  await forEachLimited(markers, SWEEP_CONCURRENCY, async (marker) => {
    const named = parsePendingJobKey(marker.key);
    // A refusal (its POST answered 503) is the sweep's to fail, never to send.
    if (!named || named.kind !== 'msg' || markerOf(marker).state !== 'unproven') return;
    try {
      const job = await deps.jobs.get(named.owner, named.jobId);
      if (!job || !leftUnsent(job) || (await hasMessage(job))) return;
      const { resent, sendFailed } = await resendIf(deps, job, leftUnsent, 'job left unsent');
      if (resent) {
        result.sent++;
        deps.log?.({ level: 'warn', msg: 'sent the message of a queued job that a stopped process left unsent', job_id: job.id, owner: job.owner });
      }
      if (sendFailed) result.failed++;
    } catch (error) {
      // A record this version cannot read: the sweep's to handle (and to log).
      if (error instanceof NewerJobRecordError || error instanceof CorruptDocumentError) return;
      result.failed++;
      deps.log?.({ level: 'warn', msg: 'a job left unsent was not sent; the queued-job sweep sends it later', key: marker.key, error: describe(error) });
    }
  });
  return result;
}

export interface SweepReport {
  /** Markers looked at. */
  scanned: number;
  /** Long-queued jobs whose message was sent again. */
  resent: number;
  /** Markers removed: their work is done (or the job never came to exist). */
  cleared: number;
  /** Markers kept: their work is still to come (or the job may yet be created). */
  kept: number;
  /** Jobs failed `expired`: queued (or held by a lapsed lease) past the queue's retention, so no message can reach them. */
  expired: number;
  /** Markers that could not be handled this time, failed re-sends included (logged; the next sweep tries again). */
  errors: number;
  /** Keys under the prefix that this code does not write (logged, left alone). */
  foreign: number;
  /** Markers not looked at this time: the sweep's deadline came first (counted in `kept` too). */
  deferred: number;
  /** Webhook events (completions, and started events: ADR 0036) sent with a 2xx answer. */
  webhooksDelivered: number;
  /** Webhook attempts that failed (retried later, or given up after the last). */
  webhooksFailed: number;
  /**
   * Seconds the longest-waiting queued job has waited since its message was last sent, or since a
   * worker put it back after a run (`queued_at`); 0 with none.
   * Running jobs do not count: the queue's own oldest-message age does count them, so a long run
   * looked like a stuck queue. The AWS alarm on waiting customers reads this figure (ADR 0012).
   */
  oldestQueuedSec: number;
}

/**
 * How long an ended run's place is kept while its usage is not in the ledger (the worker gave the
 * message back to record it: 30 s, then 60 s; its retry delays are at most 15 min). Past it the place
 * goes whatever the ledger says: the last delivery gives up on the ledger (clipag usage rebuild).
 */
export const USAGE_AWAIT_MS = 60 * 60_000;

/**
 * Whether an ended job's active place is kept for its usage (review-diff15 F4): it made a run the
 * ledger counts, the ledger has not got it (the record is stamped when it has), and it ended within
 * USAGE_AWAIT_MS. Its worker frees the place once the usage is written (ADR 0033's addendum); the sweep
 * freeing it earlier would let a POST take it while the spend check does not count the run.
 */
export function usageAwaited(job: JobRecord, now: Date): boolean {
  return job.usage_recorded_at === undefined && job.finished_at !== null && usageOfRecord(job) !== null && now.getTime() - Date.parse(job.finished_at) < USAGE_AWAIT_MS;
}

/**
 * The queued-job sweep: walks the `pending/` markers and makes sure every job still queued and never
 * started has a message. Without it a job whose message was lost stays `queued` for ever unless its
 * caller happens to retry with the same Idempotency-Key. It also retries the completion webhooks
 * that ended jobs still owe, and removes the images an ended job's attempts left that no record names.
 * Safe to run concurrently and repeatedly.
 */
export async function sweepQueuedJobs(deps: SweepDeps): Promise<SweepReport> {
  const report: SweepReport = { scanned: 0, resent: 0, cleared: 0, kept: 0, expired: 0, errors: 0, foreign: 0, deferred: 0, webhooksDelivered: 0, webhooksFailed: 0, oldestQueuedSec: 0 };
  const deadline = deps.deadline ?? Infinity;
  const defer = () => {
    report.scanned++;
    report.kept++;
    report.deferred++;
  };
  const markers: BlobMeta[] = [];
  let cursor: string | undefined;
  do {
    const page = await deps.blobs.list(PENDING_JOBS_PREFIX, cursor === undefined ? {} : { cursor });
    markers.push(...page.items);
    cursor = page.cursor;
  } while (cursor !== undefined);
  // Lost messages (and active-job markers) first: they are quick, and a slow webhook receiver must not
  // keep a job from its worker. Webhook attempts then get a time budget; the rest wait for the next sweep.
  const isHook = (m: BlobMeta) => parsePendingJobKey(m.key)?.kind === 'hook';
  /** Jobs still queued or running (their active-job marker kept): their webhook is not owed yet. */
  const unended = new Set<string>();
  await forEachLimited(markers.filter((m) => !isHook(m)), SWEEP_CONCURRENCY, async (m) => (deps.clock().getTime() >= deadline ? defer() : sweepOne(deps, m, report, unended)));
  const stopHooksAt = Math.min(deadline, deps.clock().getTime() + (deps.webhookBudgetMs ?? WEBHOOK_BUDGET_MS));
  // Every job with a webhook has its marker from its creation: a backlog of queued ones would each cost
  // a read of the budget before an ended job's turn. Those the listing shows still active are skipped.
  const hooks = markers.filter((m) => {
    if (!isHook(m)) return false;
    const named = parsePendingJobKey(m.key);
    if (named && unended.has(`${named.owner}/${named.jobId}`)) {
      report.scanned++;
      report.kept++;
      return false;
    }
    return true;
  });
  await forEachLimited(ownerByOwner(hooks), SWEEP_CONCURRENCY, async (m) => {
    if (deps.clock().getTime() >= stopHooksAt) {
      if (deps.clock().getTime() >= deadline) defer();
      else {
        report.scanned++;
        report.kept++;
      }
      return;
    }
    await sweepOne(deps, m, report);
  });
  return report;
}

/**
 * Webhook markers taken owner by owner: one of each owner's, then the next of each, and so on. The
 * sweep's time budget is shared, and in key order one owner's many webhooks to a receiver that never
 * answers (each attempt waits its 10 s) would use it up before any other owner's turn.
 */
function ownerByOwner(markers: readonly BlobMeta[]): BlobMeta[] {
  const byOwner = new Map<string, BlobMeta[]>();
  for (const m of markers) {
    const owner = parsePendingJobKey(m.key)?.owner ?? '';
    const list = byOwner.get(owner);
    if (list) list.push(m);
    else byOwner.set(owner, [m]);
  }
  const turns: BlobMeta[] = [];
  const lists = [...byOwner.values()];
  for (let round = 0; turns.length < markers.length; round++) {
    for (const list of lists) if (round < list.length) turns.push(list[round]!);
  }
  return turns;
}

async function sweepOne(deps: SweepDeps, marker: BlobMeta, report: SweepReport, unended?: Set<string>): Promise<void> {
  report.scanned++;
  const named = parsePendingJobKey(marker.key);
  if (!named) {
    // Not a marker this code writes: leave it alone, but say so.
    report.foreign++;
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: not a pending-job marker; left as is', key: marker.key });
    return;
  }
  // Removes the marker, then reads the job again: a 503 retry that re-queued it between our read and
  // the delete wrote the marker anew just before, and it goes back (ADR 0012, 0016).
  const clear = async (recheck = true) => {
    await deps.blobs.delete(marker.key);
    const again = recheck ? await deps.jobs.get(named.owner, named.jobId).catch(() => null) : null;
    if (again && markerNeeded(named.kind, again)) {
      // A refusal goes back as a refusal while it binds the job: never as an ordinary marker, which a
      // later sweep would send behind its 503.
      if (named.kind === 'msg' && marker.size > 0 && refusalBinds(again)) await markMessageRefused(deps.blobs, named.owner, named.jobId);
      else await markPending(deps.blobs, named.kind, named.owner, named.jobId);
      report.kept++;
      return;
    }
    report.cleared++;
  };
  try {
    let job: JobRecord | null;
    try {
      job = await deps.jobs.get(named.owner, named.jobId);
    } catch (error) {
      if (error instanceof NewerJobRecordError) return await sweepNewer(deps, marker, named, error, clear, report, unended);
      if (!(error instanceof CorruptDocumentError)) throw error;
      // Nothing a message or a webhook could do for it; the API answers 409 corrupt_record for it.
      deps.log?.({ level: 'warn', msg: 'queued-job sweep: corrupt job record; marker dropped', key: error.key, detail: error.detail });
      await clear(false);
      return;
    }
    if (!job) {
      // The create failed (or is still in flight: hence the grace period).
      if (deps.clock().getTime() - marker.lastModified.getTime() > ORPHAN_MARKER_AFTER_MS) await clear(false);
      else report.kept++;
      return;
    }
    if (named.kind === 'msg') await sweepMessage(deps, job, markerOf(marker), clear, report);
    else if (named.kind === 'active') {
      // Counts against its owner while queued or running; an ended job's marker is one its ender
      // could not remove (a crash, a failed delete). A job no message can reach any more would hold
      // its place (and its webhook) for ever: it fails `expired`. A queued job past its caller's
      // deadline ends `canceled` (ADR 0034), also while no worker runs to receive its message.
      if (job.status === 'queued' && pastCancelDeadline(job, deps.clock().getTime())) job = await cancelPastDeadline(deps, job);
      if (!isTerminal(job.status) && deps.queueRetentionSec !== undefined && unreachable(job, deps.clock(), deps.queueRetentionSec)) {
        const expired = await expire(deps, job, deps.queueRetentionSec);
        if (isTerminal(expired.status) && expired.error?.code === 'expired') report.expired++;
        // A worker that died after storing images, or an attempt put back after storing them, left
        // images no record will name. Best effort: the job has ended either way, and its `outputs`
        // marker brings a later sweep back to them.
        await settleStoredOutputs(deps.blobs, expired).catch((error) =>
          deps.log?.({ level: 'warn', msg: 'queued-job sweep: stored images of an expired job were not removed; a later sweep retries', job_id: expired.id, owner: expired.owner, error: describe(error) }),
        );
        job = expired;
      }
      if (isTerminal(job.status) && !usageAwaited(job, deps.clock())) await clear();
      else if (isTerminal(job.status)) report.kept++;
      else {
        report.kept++;
        // Its webhook marker is skipped unread, unless its started event (ADR 0036) is due.
        if (!startedEventDue(job, deps.clock())) unended?.add(`${job.owner}/${job.id}`);
        if (job.status === 'queued') {
          const waitedSec = Math.max(0, Math.floor((deps.clock().getTime() - waitingSince(job)) / 1000));
          report.oldestQueuedSec = Math.max(report.oldestQueuedSec, waitedSec);
        }
      }
    } else if (named.kind === 'outputs') {
      // An attempt stored images, and whoever ended the job could not settle them (it died, or the
      // removal failed): those no record names go now, then the marker. A job still queued or
      // running keeps it (an attempt may be storing); a store error is counted below and retried.
      // A fresh marker of an ended job that is not deleted is left for a later sweep: a DELETE writes
      // it before marking the record deleted, and clearing it in between would leave that DELETE,
      // should it then die, without the marker that finishes its removal.
      if (isTerminal(job.status) && job.deleted_at === undefined && deps.clock().getTime() - marker.lastModified.getTime() < FRESH_OUTPUTS_MARKER_MS) report.kept++;
      else if (await settleStoredOutputs(deps.blobs, job)) report.cleared++;
      else report.kept++;
    } else await sweepWebhook(deps, job, clear, report);
  } catch (error) {
    report.errors++;
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: marker not handled; the next sweep tries again', key: marker.key, error: describe(error) });
  }
}

/**
 * A marker of a job whose record a newer clipag wrote (ADR 0030): this version can neither send its
 * message (the re-send writes the record), settle its images nor deliver its webhook (both read the
 * record whole), so those markers stay for a version that reads it. What the sweep promises every
 * waiting job holds for it too, from the record's stored times: a queued one counts in
 * `oldestQueuedSec` (the waiting-customer alarm), and one no message can reach any more is expired.
 * Its older workers keep sending its message back (no delivery spent), so the queue's retention
 * alone would never end it. A status this version does not know is neither counted nor expired: it
 * cannot tell whether that job waits.
 */
async function sweepNewer(
  deps: SweepDeps,
  marker: BlobMeta,
  named: { kind: PendingKind; owner: string; jobId: string },
  newer: NewerJobRecordError,
  clear: (recheck?: boolean) => Promise<void>,
  report: SweepReport,
  unended?: Set<string>,
): Promise<void> {
  const { seen } = newer;
  const ended = TERMINAL_STATUSES.has(seen.status as JobStatus);
  if (named.kind === 'active') {
    if (ended) return clear(false); // an ender that could not remove it (as for any ended job)
    const now = deps.clock();
    if (deps.queueRetentionSec !== undefined && unreachable(seen, now, deps.queueRetentionSec)) {
      const ending = await endNewerJobRecord(deps.blobs, named.owner, named.jobId, (cur) => (unreachable(cur, now, deps.queueRetentionSec!) ? expiredEnding(cur, now, deps.queueRetentionSec!) : null));
      if (ending) {
        if (ending.error?.code === 'expired') {
          report.expired++;
          deps.log?.({ level: 'warn', msg: 'queued-job sweep: a job no queue message can reach failed as expired (its record was written by a newer clipag)', job_id: named.jobId, owner: named.owner, status_was: seen.status });
        }
        return clear(false);
      }
    }
    report.kept++;
    unended?.add(`${named.owner}/${named.jobId}`);
    // Waiting: queued, or running on a lease that lapsed (its newer worker died; this version's workers
    // send its message back for a newer one), counted from when it last waited or its lease lapsed.
    const lapsedAt = seen.status === 'running' && seen.lease_expires_at !== undefined ? Date.parse(seen.lease_expires_at) : NaN;
    const waitingFrom = seen.status === 'queued' ? newer.waitingSince : Number.isFinite(lapsedAt) && lapsedAt < now.getTime() ? lapsedAt : undefined;
    if (waitingFrom !== undefined) {
      report.oldestQueuedSec = Math.max(report.oldestQueuedSec, Math.max(0, Math.floor((now.getTime() - waitingFrom) / 1000)));
    }
    // Once per sweep and job (every waiting job has this marker), not per marker.
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: job record written by a newer clipag; its markers kept for a version that reads it', job_id: named.jobId, owner: named.owner, status: seen.status, unknown: newer.unknown.slice(0, 10) });
    return;
  }
  // A message marker of a job a worker has started, or that ended, is done with (as sweepMessage
  // decides); the rest wait for a version that reads the record, as do a status this one does not know.
  const started = seen.status === 'running' || ended || (newer.record !== undefined && newer.record.attempts > 0);
  if (named.kind === 'msg' && started) return clear(false);
  report.kept++;
}

/** The stored times `unreachable` reads: a record's, or what was read of a newer clipag's. */
type ReachFields = Pick<NewerJobSeen, 'status' | 'created_at' | 'enqueued_at'> & { lease_expires_at?: string | null };

/**
 * Whether no queue message can reach the job any more: it waits (queued, or running on a lease that
 * lapsed: its worker died) and its last message was sent over the queue's retention ago. Every send
 * of a job's message comes at or after the stamp it is counted from (created_at, enqueued_at: the
 * API's re-sends and re-queues, the worker's requeue), so a later message cannot exist.
 */
export function unreachable(job: ReachFields, now: Date, queueRetentionSec: number): boolean {
  // The lease is the worker's wall-clock stamp: it counts as lapsed only the skew margin later, so a
  // sweep whose clock runs ahead of a live worker's (which keeps half a visibility timeout on it) does
  // not expire the run.
  const waiting = job.status === 'queued' || (job.status === 'running' && (!job.lease_expires_at || Date.parse(job.lease_expires_at) + EXPIRY_MARGIN_MS < now.getTime()));
  const since = Date.parse(job.enqueued_at ?? job.created_at ?? '');
  return waiting && Number.isFinite(since) && now.getTime() - since > queueRetentionSec * 1000 + EXPIRY_MARGIN_MS;
}

/** How an unreachable job ends: `canceled` when its caller asked to cancel it (a run whose worker then died), else failed `expired`. */
function expiredEnding(job: { cancel_requested?: boolean }, now: Date, queueRetentionSec: number): JobEnding {
  const days = Math.round((queueRetentionSec / 86_400) * 10) / 10;
  if (job.cancel_requested) return { status: 'canceled', finished_at: now.toISOString() };
  return { status: 'failed', finished_at: now.toISOString(), error: { code: 'expired', message: `not run within ${days} day(s) (how long the queue keeps a job); submit it again` } };
}

/**
 * Ends `canceled` a queued job past its `cancel_after` deadline (ADR 0034), as a caller's cancel of a
 * queued job does: conditionally (a worker that claimed it meanwhile ends it within a step), nothing
 * billed; what an earlier attempt stored is settled, and the caller clears the job's place. Its webhook
 * goes out with the sweep's webhooks (this one's, since the job is no longer among those still
 * active). Returns the record as it now stands.
 */
async function cancelPastDeadline(deps: SweepDeps, job: JobRecord): Promise<JobRecord> {
  const now = deps.clock();
  let ended = false;
  const updated = await deps.jobs.update(job.owner, job.id, (cur) => {
    ended = cur.status === 'queued' && pastCancelDeadline(cur, now.getTime());
    return ended ? canceledRecord(cur, now.toISOString(), now.getTime()) : null;
  });
  if (!ended) return updated;
  deps.log?.({ level: 'info', msg: 'queued-job sweep: a queued job past its cancel_after ended canceled', job_id: job.id, owner: job.owner, cancel_after: job.spec.cancel_after });
  // Queued again after an attempt that stored images: no record will name them (best effort; the
  // `outputs` marker that attempt left brings a later sweep back to them).
  if (updated.attempts > 0) {
    await settleStoredOutputs(deps.blobs, updated).catch((error) =>
      deps.log?.({ level: 'warn', msg: 'queued-job sweep: stored images of a job canceled at its deadline were not removed; a later sweep retries', job_id: job.id, owner: job.owner, error: describe(error) }),
    );
  }
  return updated;
}

/** Fails an unreachable job `expired` (conditionally: a worker that took it meanwhile wins). */
async function expire(deps: SweepDeps, job: JobRecord, queueRetentionSec: number): Promise<JobRecord> {
  const now = deps.clock();
  const updated = await deps.jobs.update(job.owner, job.id, (cur) => {
    if (isTerminal(cur.status) || !unreachable(cur, now, queueRetentionSec)) return null;
    // Its caller asked to cancel it (a run whose worker then died): it ends as asked, not as a failure to resubmit.
    return { ...cur, ...expiredEnding(cur, now, queueRetentionSec) };
  });
  if (updated.error?.code === 'expired') deps.log?.({ level: 'warn', msg: 'queued-job sweep: a job no queue message can reach failed as expired', job_id: job.id, owner: job.owner, status_was: job.status });
  return updated;
}

/** Whether a job still needs its marker of this kind (what the sweep checks again after a delete). */
function markerNeeded(kind: PendingKind, job: JobRecord): boolean {
  if (kind === 'msg') return job.status === 'queued' && job.attempts === 0;
  if (kind === 'active' || kind === 'outputs') return !isTerminal(job.status);
  return webhookOwed(job);
}

/** A job whose message is not proven sent: send it again once it has waited long. */
async function sweepMessage(deps: SweepDeps, job: JobRecord, marker: MessageMarker, clear: (recheck?: boolean) => Promise<void>, report: SweepReport): Promise<void> {
  if (job.status !== 'queued' || job.attempts > 0) {
    // A worker has it (or had it): from its first start the worker's lease, its re-queue and the
    // dead-letter sweep own the message. Ended or canceled: nothing to send.
    return clear();
  }
  if (marker.state === 'refused') {
    // Its POST answered 503 and could not fail it then: it fails now, as its caller was told.
    const current = await failRefusedJob(deps, job);
    if (refusalBinds(current)) {
      // Not failed (a store answering oddly): the refusal stays as it is, for the next sweep.
      report.kept++;
      return;
    }
    if (current.status !== 'queued' || current.attempts > 0) return clear();
    // Still queued: queued again since its refusal (a replay's re-queue stamped enqueued_at), so the
    // refusal is void and the marker is an ordinary one (that re-queue's send may have failed too).
    job = current;
  }
  const { resent, sendFailed } = await resendIfLongQueued(deps, job);
  if (sendFailed) {
    // Counted as an error: a sweep that cannot send fails, and its alarm shows it.
    report.errors++;
  } else if (resent) {
    // The re-send cleared the marker.
    report.resent++;
    report.cleared++;
    deps.log?.({ level: 'warn', msg: 'queued-job sweep: sent the message of a long-queued job again', job_id: job.id, owner: job.owner });
  } else {
    report.kept++;
  }
}

/**
 * A job that owes a completion webhook: deliver it once the job has ended and the attempt is due.
 * Before that, a started event it owes (ADR 0036) is retried here when due; once the job has ended
 * that event is owed no more (the end event says it), so none goes out after the end.
 */
async function sweepWebhook(deps: SweepDeps, job: JobRecord, clear: (recheck?: boolean) => Promise<void>, report: SweepReport): Promise<void> {
  if (!webhookOwed(job)) return clear();
  const delivery = { jobs: deps.jobs, blobs: deps.blobs, clock: deps.clock, ...deps.webhooks, ...(deps.log ? { log: deps.log } : {}) };
  if (!isTerminal(job.status)) {
    if (!startedEventDue(job, deps.clock())) {
      report.kept++;
      return;
    }
    const started = await deliverStartedEvent(delivery, job.owner, job.id);
    if (started === 'delivered') report.webhooksDelivered++;
    if (started === 'failed' || started === 'gave_up') report.webhooksFailed++;
    // The run may have ended while this attempt was out, its own end attempt held back for it
    // (endDue): the end event goes now, not a sweep later (the review of ADR 0036).
    const fresh = await deps.jobs.get(job.owner, job.id).catch(() => null);
    if (!fresh || !isTerminal(fresh.status) || !webhookOwed(fresh)) {
      report.kept++;
      return;
    }
  }
  // The worker made the first attempt, or nobody did (a cancel while queued, a crash).
  const result = await deliverWebhook(delivery, job.owner, job.id);
  if (result === 'delivered') report.webhooksDelivered++;
  if (result === 'failed' || result === 'gave_up') report.webhooksFailed++;
  if (result === 'delivered' || result === 'gave_up') return clear();
  report.kept++;
}

export interface SweepTimer {
  /** Stops the timer and waits for a sweep in progress. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Runs the sweep now and then every `everyMs` (local mode; in AWS a scheduled Lambda runs it). Sweeps
 * never overlap; a failed sweep is logged and the next one runs on time. With `retention` (local mode's
 * stand-in for the bucket's lifecycle rules), each sweep is followed by a retention pass, which is
 * logged once when it removed something or failed, and never keeps the sweep from running.
 */
export function startQueuedJobSweeps(deps: SweepDeps, everyMs: number, options: { retention?: RetentionPass } = {}): SweepTimer {
  let running: Promise<void> | undefined;
  let stopped = false;
  const { retention } = options;
  const tick = () => {
    if (stopped || running) return;
    running = sweepQueuedJobs(deps)
      .then(
        (report) => {
          if (report.resent > 0 || report.errors > 0 || report.foreign > 0 || report.webhooksFailed > 0) deps.log?.({ level: 'info', msg: 'queued-job sweep', ...report });
        },
        (error: unknown) => deps.log?.({ level: 'warn', msg: 'queued-job sweep failed; the next one runs on time', error: describe(error) }),
      )
      .then(async () => {
        if (!retention || stopped) return;
        try {
          const report = await retention.run();
          if (report.generations > 0 || report.uploads > 0 || report.records > 0 || report.errors > 0) {
            const msg = report.errors > 0 ? 'local retention: not all that has expired was removed; the next pass tries again' : 'local retention: removed what has expired';
            deps.log?.({ level: report.errors > 0 ? 'warn' : 'info', msg, ...report });
          }
        } catch (error) {
          deps.log?.({ level: 'warn', msg: 'local retention pass failed; the next one runs on time', error: describe(error) });
        }
      })
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
