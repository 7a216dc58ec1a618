// The queue worker: long-poll → lease (visibility heartbeat) → job lifecycle → ack/release.
// One job at a time (one GPU per task). States and retry classes: docs/adr/0005-worker-lifecycle.md.

import { randomUUID } from 'node:crypto';
import { forEachLimited } from '../../shared/concurrency.ts';
import { deletePrefix } from '../../shared/prefix.ts';
import { jobOutputsPrefix } from '../../shared/keys.ts';
import { outputFile } from '../../shared/output-format.ts';
import { CorruptDocumentError, NonRetryableError, PreconditionFailedError, ValidationError, exhaustedResource } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, JobStore, ReceivedMessage } from '../../shared/ports.ts';
import { cancelDeadline, cancelDue as cancelDueAt, canceledRecord, isTerminal, type JobRecord, MAX_JOB_WARNING_CHARS, MAX_JOB_WARNINGS, TERMINAL_STATUSES, waitingSince, type JobOutput, type JobStatus, type OutputCheck } from '../../shared/schemas/job.ts';
import type { OutputScreen } from '../../shared/prompt-policy.ts';
import { NewerQueueMessageError, parseQueueMessage, type QueueMessage } from '../../shared/schemas/queue.ts';
import { BlobJobStore, NewerJobRecordError, RefusedJobRecordError } from '../../shared/jobstore.ts';
import { NewerModelError, type ModelRegistry } from '../models.ts';
import { attemptErrorOf, classifyError, describe, exhaustedJobErrorOf, isMachineFailure, isUnexplainedRunFailure, jobErrorOf, StorageFailure } from './errors.ts';
import { abortedOutcome, type SynthesisOutcome, type SynthesisProgress, type SynthesizedImage, type Synthesizer } from './synthesizer.ts';
import { noTaskProtection, type TaskProtection } from './task-protection.ts';
import { startedEventUntried, type WebhookNotifier } from '../../shared/webhooks.ts';
import { recordRunSample, runStartOf, runStatsKey } from '../../shared/run-stats.ts';
import { recordUsage, usageOfRecord } from '../../shared/usage.ts';
import { frameKey } from '../../shared/views.ts';
import { clearPending, markPending, settleStoredOutputs } from '../../shared/pending.ts';

/** A PNG's size from its IHDR (the engine's own encoder wrote it). */
function pngSize(png: Uint8Array): { width: number; height: number } {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  return { width: dv.getUint32(16), height: dv.getUint32(20) };
}


/** Output objects written at once at the end of a run. */
const OUTPUT_WRITE_CONCURRENCY = 8;

export type WorkerState = 'idle' | 'warming' | 'polling' | 'running' | 'draining' | 'stopped';

export interface WorkerConfig {
  /** Lease length asked for on receive and on every heartbeat. */
  visibilityTimeoutSec: number;
  /** The queue's redrive limit: the delivery with this receive count is the last attempt. */
  maxReceives: number;
  /** Long-poll wait (0..20 s). stop() can take up to this long when it lands mid-poll. */
  receiveWaitSec: number;
  /** Minimum gap between progress writes to the job record (default 1000 ms; 0: every step). */
  progressIntervalMs?: number;
  /** First back-off after a failed receive, doubled up to 30 s (default 1000 ms). */
  pollErrorBackoffMs?: number;
  /**
   * How often an idle worker sweeps the dead-letter queue (default 60 000 ms; 0 disables). A worker
   * killed during a job's last delivery never marks it failed; the queue's redrive moves the message
   * to the DLQ, and the sweep marks such jobs `failed` with `retries_exhausted`.
   */
  deadLetterSweepMs?: number;
  /**
   * Wall-clock limit of one attempt, from the claim (default: none; `startWorker` passes the config's
   * CLIPAG_JOB_TIMEOUT_SEC). At the deadline the run's AbortSignal fires and the job fails with code
   * `timeout`, message acked: not retried, since the same spec on the same hardware would time out
   * again. The lease heartbeat stops extending one visibility timeout after the deadline, so an
   * engine that ignores the abort cannot hold the message for ever.
   */
  jobTimeoutSec?: number;
  /** Caps every job's steps at min(spec.steps, maxSteps) (CPU demos: `clipag serve --steps N`);
   * progress totals count the steps actually run. Default: as requested. */
  maxSteps?: number;
  /** The most a warm-up (WorkerDeps.warmUp) may take before the worker polls without it. Default 90 s. */
  warmUpTimeoutMs?: number;
  /**
   * The deployment's hourly worker price (USD), kept on each record the run ends (`hourly_usd`) so the
   * job's cost, and the owner's ledger, stay at the price of its day. Default: none (no cost figures).
   */
  hourlyUsd?: number;
  /**
   * Jobs in a row that fail on this machine (isMachineFailure: the execution provider does not load,
   * the device faults during a run) after which the worker is unhealthy: it stops taking jobs and
   * emits `unhealthy`, and the container exits non-zero so ECS replaces the task, instead of spending
   * every queued job's deliveries. A warm-up that fails on the machine makes it unhealthy at once.
   * On `device: 'cuda'`, also the number of *different* jobs (at least 2) whose runs fail in a row
   * with an unexplained `runtime_failed` (isUnexplainedRunFailure: not out of memory) after which it
   * is unhealthy: a device fault in a form the classifier does not know. Default 2.
   */
  maxMachineFailures?: number;
  /**
   * The blob store and queue are a folder on this machine's disk (local mode, `clipag serve`). A job
   * whose writes fail there on a full or read-only disk, or on too many open files (ENOSPC, EROFS,
   * EMFILE, …), then does not count toward maxMachineFailures, nor a receive failing so toward
   * maxReceiveFailures: another machine would find the same disk (there is none; `serve` would exit,
   * API and all), and it passes once an operator frees space. In AWS such a failure is this task's own
   * (its disk, descriptors it leaks): it counts, and ECS replaces the task. Default false.
   */
  storageOnThisDisk?: boolean;
  /**
   * The device the engine runs on (`CLIPAG_EXECUTION_PROVIDER`). With `cuda`, a warm-up whose run
   * fails (runtime_failed, not out of memory) makes the worker unhealthy: the default model at the
   * default size cannot run on this GPU; and unexplained run failures of different jobs in a row
   * count against it (maxMachineFailures). On the CPU both are the jobs' own. Default `cpu`.
   */
  device?: 'cpu' | 'cuda';
  /**
   * Receives in a row that fail (each followed by a back-off) after which the worker is unhealthy:
   * a task that can never receive takes no jobs while ECS sees it healthy. A receive the queue
   * refuses for good (NonRetryableError: AccessDenied, QueueDoesNotExist, a KMS key it may not use)
   * makes it unhealthy at once. Default 10 (about 3 minutes of back-off). With storageOnThisDisk, a
   * receive that fails on the data folder's disk or file table (ENOSPC, EDQUOT, EROFS, EMFILE, ENFILE)
   * does not count: the worker keeps trying, and takes jobs again once the disk is usable.
   */
  maxReceiveFailures?: number;
  /**
   * A retryable failure's message comes back after this many seconds times its receive count (at
   * most 900 s), so that the retry can land on another worker, and a passing fault can pass. Default
   * 0: at once.
   */
  retryDelaySec?: number;
  /**
   * How long a finished run's result writes (images, frames, the final record) are retried in place,
   * with back-off, while the lease is held, before the message is given back (default 60 000 ms). The
   * run is in memory, and giving the message back redoes it on a GPU.
   */
  resultWriteRetryMs?: number;
}

/** Why a worker stopped taking jobs on its own (its process should exit non-zero and be replaced). */
export type UnhealthyReason = 'machine_failures' | 'run_failures' | 'warm_up' | 'stuck_run' | 'poll_loop_crashed' | 'queue_unreachable';

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export interface Clock {
  /** Wall-clock ms (timestamps, leases). */
  now(): number;
  /**
   * Ms on a clock that never steps (durations: the time limit, billed worker_seconds), so that an NTP
   * step or a VM resume neither bills a run for the jump nor fails it. Without it, `now` measures them
   * (a test clock that moves both).
   */
  monotonic?(): number;
}

export type JobOutcome = 'succeeded' | 'failed' | 'canceled' | 'requeued' | 'skipped' | 'lease_lost';

/** What the worker did, for logs, metrics and tests (observing, never steering). */
export type WorkerEvent =
  | { type: 'state'; state: WorkerState }
  | { type: 'received'; messageId: string; receiveCount: number }
  | { type: 'job_started'; jobId: string; attempt: number }
  | { type: 'progress'; jobId: string; step: number; total: number }
  | { type: 'progress_written'; jobId: string; step: number; cancelRequested: boolean }
  | { type: 'heartbeat'; messageId: string; visibilitySec: number }
  /** The run's AbortController fired; `step` is the last step reported before it. */
  | { type: 'abort'; jobId: string; reason: 'cancel' | 'drain' | 'lease_lost' | 'timeout'; step: number }
  /** The heartbeat stopped extending the lease: the job is past its deadline plus one visibility timeout. */
  | { type: 'lease_stopped'; messageId: string; reason: 'deadline' }
  | { type: 'acked'; messageId: string; reason: string }
  | { type: 'released'; messageId: string; reason: string }
  | { type: 'requeued'; messageId: string; reason: string }
  | { type: 'dead_lettered'; messageId: string; reason: string }
  | { type: 'job_finished'; jobId: string; outcome: JobOutcome; stepsDone?: number; error?: { code: string; message: string } }
  | { type: 'poll_error'; error: unknown }
  /** The worker stopped taking jobs because this machine or process cannot run them; see UnhealthyReason. */
  | { type: 'unhealthy'; reason: UnhealthyReason };

export interface WorkerDeps {
  queue: JobQueue;
  jobs: JobStore;
  blobs: BlobStore;
  synthesizer: Synthesizer;
  /** When given, a job naming an unknown model fails before it is marked running. */
  models?: ModelRegistry;
  config: WorkerConfig;
  /** Marks the task busy while a job is held, so scale-in takes idle tasks (default: none, outside ECS). */
  protection?: TaskProtection;
  /** Told when a job ends here, to send its completion webhook at once, and when one asking for it starts here, its started event (retries are the sweep's). */
  webhooks?: WebhookNotifier;
  /**
   * The output check (ADR 0017) for a job's owner: read before each run (the owner's current policy,
   * ADR 0018); every image is scored against its concepts, and its rules decide which images are
   * withheld or flagged. Default: none (no check).
   */
  outputScreen?: (owner: string) => Promise<OutputScreen>;
  /**
   * Run once before the first poll (state `warming`): loads the models jobs will use and compiles their
   * graphs, so that no customer's first job pays (and is billed for) the worker's cold start. A failure
   * is logged and the worker polls anyway: the first job then pays as before. It gets at most
   * `config.warmUpTimeoutMs`, and stop() ends it at once (its signal aborts; what cannot be aborted,
   * such as a model download, finishes unawaited).
   */
  warmUp?: (signal: AbortSignal) => Promise<void>;
  clock?: Clock;
  log?: Logger;
  onEvent?: (event: WorkerEvent) => void;
}

export interface QueueWorker {
  /** Starts the poll loop (idempotent while running). */
  start(): void;
  /** Stops polling, aborts the running job at a step boundary, releases its message, and resolves
   * when no lease is held any more. Idempotent: every call returns the same promise. */
  stop(): Promise<void>;
  readonly state: WorkerState;
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** JSON lines on stdout/stderr, the shape CloudWatch Logs Insights parses. */
export function jsonLogger(level: 'debug' | 'info' | 'warn' | 'error' = 'info', base: Record<string, unknown> = {}): Logger {
  const order = { debug: 10, info: 20, warn: 30, error: 40 } as const;
  const emit = (l: keyof typeof order) => (msg: string, fields: Record<string, unknown> = {}) => {
    if (order[l] < order[level]) return;
    const time = new Date().toISOString();
    // time, level and msg first, and never a field's: a `level` among the fields would hide an error
    // line from the error alarm ({ $.level = "error" }).
    const line = JSON.stringify(Object.assign({ time, level: l, msg, ...base, ...fields }, { time, level: l, msg }));
    (l === 'error' || l === 'warn' ? process.stderr : process.stdout).write(`${line}\n`);
  };
  return { debug: emit('debug'), info: emit('info'), warn: emit('warn'), error: emit('error') };
}

type AbortReason = 'cancel' | 'drain' | 'lease_lost' | 'timeout';

/** The output check of each finished image that matched a rule (ADR 0017); none without a screen. */
export function checkOutputs(images: readonly SynthesizedImage[], screen: OutputScreen | undefined): OutputCheck[] {
  if (!screen || screen.concepts.length === 0) return [];
  const checks: OutputCheck[] = [];
  for (const image of images) {
    // Throws when the synthesizer did not score the concepts: an image is never published unchecked.
    const hits = screen.judge(image.screenCosines, image.clipScore);
    if (hits.length === 0) continue;
    checks.push({
      index: image.index,
      withheld: hits.some((h) => h.action === 'withhold'),
      flags: hits.slice(0, MAX_JOB_WARNINGS).map((h) => ({ ...h, cosine: Number(h.cosine.toFixed(6)) })),
    });
  }
  return checks;
}

/** The error of a job whose every image was withheld: what each matched, so the caller can tell why. */
function withheldMessage(checks: readonly OutputCheck[]): string {
  const first = checks[0]!.flags.find((f) => f.action === 'withhold')!;
  const more = checks.length > 1 ? ` (and ${checks.length - 1} more image${checks.length > 2 ? 's' : ''}; see withheld_outputs)` : ' (see withheld_outputs)';
  return `the output check withheld every image: image ${checks[0]!.index} looks like "${first.concept}" (${first.category}, rule ${first.rule}, cosine ${first.cosine.toFixed(3)}): ${first.message}${more}`.slice(0, MAX_JOB_WARNING_CHARS);
}

const systemClock: Clock = { now: () => Date.now(), monotonic: () => performance.now() };
const MAX_BACKOFF_MS = 30_000;
/** While receives keep failing on the server's full (or read-only) disk or file table, how often that is said again. */
const EXHAUSTION_REPEAT_MS = 5 * 60_000;
/** Dead letters one sweep looks at (10 at a time); more wait for a later sweep. */
const DEAD_LETTER_SWEEP_MAX = 100;
/** How soon after a worker starts its first dead-letter sweep runs (later ones: every deadLetterSweepMs). */
const FIRST_DEAD_LETTER_SWEEP_MS = 10_000;
/** The longest a retryable failure's message is held back before its retry (SQS allows 12 h). */
const MAX_RETRY_DELAY_SEC = 900;
/** Long enough for a model download and its compiles on a GPU instance; short of the 120 s ECS stop timeout. */
const DEFAULT_WARM_UP_TIMEOUT_MS = 90_000;
const DEFAULT_RESULT_WRITE_RETRY_MS = 60_000;
/** How long a second copy of a held message is put off at most: SQS allows 12 h from its receipt. */
const COPY_DEFER_MAX_SEC = 11 * 3600;
/** Without a job time limit, how long a copy is put off (it comes back, sees the job, and is put off again or acked). */
const COPY_DEFER_DEFAULT_SEC = 3600;
/**
 * Data a newer clipag wrote (a queue message, a job record) comes back after this long at first, and
 * after a tenth of the job's wait later on, at most SQS's longest delay: soon during a rolling deploy,
 * rarely for a job that only newer workers can run and none is running (a rollback).
 */
const NEWER_WRITER_DELAY_SEC = [60, 900] as const;
/** Back-off between result-write tries: 250 ms, doubling, at most 5 s. */
const RESULT_WRITE_BACKOFF_MS = [250, 5_000] as const;

/**
 * Why the dead-letter sweep fails a job, as far as its record tells: one never started was set aside on
 * its first receipts (its message or record did not read there), one that was started ran out of tries
 * (its worker stopped or died during each).
 */
function deadLetteredMessage(attempts: number): string {
  return attempts === 0
    ? 'the job never started: its message was dead-lettered on receipt by a worker that could not read the message or the job (a worker older than the request, or a damaged record); submit it again'
    : `the job's message was dead-lettered after ${attempts} attempt${attempts === 1 ? '' : 's'} that ended without an outcome (the worker stopped or crashed during each)`;
}

/** Not storage trouble: a conditional write that lost, a record that does not read or that the store will not write, a bad argument. */
const notStorageTrouble = (error: unknown) =>
  error instanceof PreconditionFailedError || error instanceof CorruptDocumentError || error instanceof RefusedJobRecordError || error instanceof ValidationError;

export function createWorker(deps: WorkerDeps): QueueWorker {
  const { queue, jobs, blobs, synthesizer, models, config } = deps;
  const protection = deps.protection ?? noTaskProtection;
  const clock = deps.clock ?? systemClock;
  const elapsedClock = () => (clock.monotonic ? clock.monotonic() : clock.now());
  const log = deps.log ?? silentLogger;
  const visibilitySec = config.visibilityTimeoutSec;
  const progressIntervalMs = config.progressIntervalMs ?? 1000;
  if (!(visibilitySec >= 1)) throw new RangeError('visibilityTimeoutSec must be ≥ 1');
  if (!(Number.isInteger(config.maxReceives) && config.maxReceives >= 1)) throw new RangeError('maxReceives must be a positive integer');
  const jobTimeoutSec = config.jobTimeoutSec;
  if (jobTimeoutSec !== undefined && !(jobTimeoutSec > 0 && jobTimeoutSec * 1000 <= 2 ** 31 - 1)) throw new RangeError('jobTimeoutSec must be in (0, 2147483] s');
  const resultWriteRetryMs = config.resultWriteRetryMs ?? DEFAULT_RESULT_WRITE_RETRY_MS;
  if (!(resultWriteRetryMs >= 0)) throw new RangeError('resultWriteRetryMs must be ≥ 0');
  const maxSteps = config.maxSteps;
  if (maxSteps !== undefined && !(Number.isInteger(maxSteps) && maxSteps >= 1)) throw new RangeError('maxSteps must be a positive integer');

  let state: WorkerState = 'idle';
  let stopping = false;
  let loop: Promise<void> | undefined;
  let stopped: Promise<void> | undefined;
  let current: { abort(reason: AbortReason): void } | undefined;
  let wakeBackoff: (() => void) | undefined;
  /** Ends the warm-up now (stop() during `warming`). */
  let endWarmUp: (() => void) | undefined;

  const emit = (event: WorkerEvent) => {
    try {
      deps.onEvent?.(event);
    } catch (error) {
      log.warn('onEvent listener threw', { error: describe(error) });
    }
  };
  /**
   * The job of each delivery whose body parsed: the lines about the delivery (its lease, ack, release,
   * dead letter) name the job and its owner, so that a paging line such as `message dead-lettered`
   * joins to the job's other lines.
   */
  const jobOfDelivery = new WeakMap<ReceivedMessage, QueueMessage>();
  /** The ids a line about a delivery carries: its job's, once its body parsed, and the message's own. */
  const about = (m: ReceivedMessage): Record<string, string> => {
    const msg = jobOfDelivery.get(m);
    return { ...(msg ? { job_id: msg.job_id, owner: msg.owner } : {}), message_id: m.messageId };
  };
  /**
   * The tenant a copy of a delivery is sent for: the group it came with, else its job's owner (a
   * message an older API sent without one), so that the queue keeps serving tenants fairly.
   */
  const sentFor = (m: ReceivedMessage): { group?: string } => {
    const group = m.group ?? jobOfDelivery.get(m)?.owner;
    return group !== undefined ? { group } : {};
  };
  /**
   * What each job read here runs: model, size and steps per image (after the worker's cap). Its
   * `job finished` line carries them, since the GPU time per image depends on all three.
   */
  const runShapeOf = new WeakMap<QueueMessage, { model: string; width: number; height: number; steps: number; request_id?: string }>();
  const setState = (next: WorkerState) => {
    if (state === next) return;
    state = next;
    log.debug('worker state', { state });
    emit({ type: 'state', state });
  };
  const iso = () => new Date(clock.now()).toISOString();
  /**
   * Whether the job is to end `canceled`: its caller asked to, or its `cancel_after` deadline has
   * passed on this worker's clock (ADR 0034: a deadline is a cancel asked for in advance, and ends the
   * job wherever a cancel request would).
   */
  const cancelDue = (cur: Pick<JobRecord, 'spec' | 'created_at' | 'cancel_requested'>): boolean => cancelDueAt(cur, clock.now());
  /** `cur` ended `canceled` now (saying so when its deadline ended it: canceledRecord). */
  const canceled = (cur: JobRecord): JobRecord => canceledRecord(cur, iso(), clock.now());

  /** Run-statistics documents a newer clipag wrote that this worker has said it leaves alone: said once each. */
  const newerStats = new Set<string>();

  // ------------------------------------------------------------ health

  const maxMachineFailures = config.maxMachineFailures ?? 2;
  /** Jobs in a row that failed on this machine; a job that succeeds here resets it. */
  let machineFailures = 0;
  /**
   * The different jobs whose runs failed in a row with an unexplained runtime_failed. One job failing
   * again and again (a redelivery) is one job: its own error, not the machine's.
   */
  const runFailureJobs = new Set<string>();
  const maxRunFailureJobs = Math.max(2, maxMachineFailures);
  const maxReceiveFailures = config.maxReceiveFailures ?? 10;
  if (!(Number.isInteger(maxReceiveFailures) && maxReceiveFailures >= 1)) throw new RangeError('maxReceiveFailures must be a positive integer');
  let unhealthyReason: UnhealthyReason | undefined;
  /**
   * Stops taking jobs (once): the loop ends after what it holds, as on stop(). The process owner
   * (gpu-worker/main.ts) exits non-zero on the event, so ECS replaces the task and, with it, the
   * instance's place in the fleet.
   */
  const unhealthy = (reason: UnhealthyReason, fields: Record<string, unknown> = {}) => {
    if (unhealthyReason) return;
    unhealthyReason = reason;
    log.error('worker unhealthy; taking no more jobs', { reason, ...fields });
    stopping = true;
    wakeBackoff?.();
    emit({ type: 'unhealthy', reason });
  };

  // ------------------------------------------------------------ lease (visibility heartbeat)

  /** Extends the message's visibility every visibilitySec/2 while held; `stop()` waits for an extend
   * in flight, so a late heartbeat can never hide a message after it was released. */
  function holdLease(m: ReceivedMessage, receivedAt: number, onLost: () => void, onExtended: (sentAt: number) => Promise<void> = async () => undefined) {
    /** When the queue's current lease began: the receive, then each extend that succeeded, as it was sent. */
    let validFrom = receivedAt;
    let timer: NodeJS.Timeout | undefined;
    let inflight: Promise<void> | undefined;
    let held = true;
    /** No extension at or after this time on the monotonic clock (the job's deadline plus one visibility timeout). */
    let stopExtendingAt = Infinity;
    /** The engine call has returned (or thrown): time past the deadline is then spent on uploads, not a stuck run. */
    let runEnded = false;
    const everyMs = (visibilitySec * 1000) / 2;
    /** Consecutive failed extends: the next try comes sooner, well inside what is left of the timeout. */
    let failures = 0;
    const tick = () => {
      // On the clock the deadline is measured on: a wall clock stepped forward must not make a healthy run look stuck.
      if (elapsedClock() >= stopExtendingAt) {
        // The run ignored its timeout abort: let the lease lapse instead of holding the message for
        // ever; the redelivery finds the record failed (timeout) once this run returns, or retries it.
        log.warn('job past its deadline; no longer extending the lease', { ...about(m) });
        emit({ type: 'lease_stopped', messageId: m.messageId, reason: 'deadline' });
        // A run that ignores its abort this long holds the GPU for good: this process must go.
        if (!runEnded) unhealthy('stuck_run', { ...about(m) });
        timer = undefined;
        held = false; // writes waiting on the lease (resultWriter) stop trying
        return;
      }
      const sentAt = clock.now();
      inflight = queue
        .extendVisibility(m.receipt, visibilitySec)
        .then(() => {
          failures = 0;
          validFrom = Math.max(validFrom, sentAt);
          emit({ type: 'heartbeat', messageId: m.messageId, visibilitySec });
          // Not awaited: a slow job-store write must not push back the next extend.
          onExtended(sentAt).catch((error) => log.warn('job lease not renewed in the record', { ...about(m), error: describe(error) }));
        })
        .catch((error) => {
          if (!held) return;
          if (error instanceof PreconditionFailedError) {
            // The delivery is over (expired and redelivered elsewhere): the job is someone else's now.
            log.warn('lease lost', { ...about(m), error: describe(error) });
            held = false;
            onLost();
          } else {
            failures++;
            log.warn('heartbeat failed; retrying soon', { ...about(m), failures, error: describe(error) });
          }
        })
        .finally(() => {
          inflight = undefined;
          // After a failure the last good extend is already half a timeout old: retry after 1/16,
          // 1/8, … of the timeout (at most a quarter), not a whole beat later at the expiry.
          const delay = failures === 0 ? everyMs : Math.min(everyMs / 2, (everyMs / 8) * 2 ** (failures - 1));
          if (held) timer = setTimeout(tick, delay);
        });
    };
    // Half a timeout after the receive, not after this call (a scale-in protection call came between).
    timer = setTimeout(tick, Math.max(0, everyMs - (clock.now() - receivedAt)));
    return {
      get held() {
        return held;
      },
      /** When the queue's current lease began: it runs one visibility timeout from here. */
      get validFrom() {
        return validFrom;
      },
      /** From now on the heartbeat stops extending at `deadlineMs` (monotonic clock) + one visibility timeout. */
      setDeadline(deadlineMs: number): void {
        stopExtendingAt = deadlineMs + visibilitySec * 1000;
      },
      /** The engine call has settled: a lapse past the deadline from now on is no stuck run. */
      engineDone(): void {
        runEnded = true;
      },
      async release(): Promise<void> {
        held = false;
        clearTimeout(timer);
        await inflight;
      },
    };
  }

  // ------------------------------------------------------------ result writes

  /**
   * Stores the pieces of one finished run, each retried in place with back-off while the lease is
   * held, until `resultWriteRetryMs` after the run's first failed write: the run is in memory, and an
   * S3 hiccup must not redo it on a GPU. What still fails is a StorageFailure (retryable, and a mark
   * against this machine's health). A lost conditional write or a corrupt record is no storage
   * trouble and is not retried here.
   */
  function resultWriter(lease: { readonly held: boolean }) {
    let giveUpAt: number | undefined;
    return async function store<T>(what: string, write: () => Promise<T>): Promise<T> {
      for (let tries = 1; ; tries++) {
        try {
          return await write();
        } catch (error) {
          if (notStorageTrouble(error)) throw error;
          giveUpAt ??= clock.now() + resultWriteRetryMs;
          const wait = Math.min(RESULT_WRITE_BACKOFF_MS[1], RESULT_WRITE_BACKOFF_MS[0] * 2 ** (tries - 1));
          if (!lease.held) throw new StorageFailure(what, error, { leaseLost: true });
          if (clock.now() + wait > giveUpAt) throw new StorageFailure(what, error);
          log.warn('result write failed; retrying in place', { what, tries, error: describe(error) });
          await new Promise((resolve) => setTimeout(resolve, wait));
        }
      }
    };
  }

  // ------------------------------------------------------------ queue settlement

  /** `onFailure`: what a failed ack means here (default: a redelivery, which the record checks skip). */
  async function ack(m: ReceivedMessage, reason: string, onFailure = 'ack failed; the message will be redelivered and skipped'): Promise<void> {
    try {
      await queue.ack(m.receipt);
      emit({ type: 'acked', messageId: m.messageId, reason });
    } catch (error) {
      log.warn(onFailure, { ...about(m), reason, error: describe(error) });
    }
  }

  /** Hands the message back now, or after `delaySec` (its visibility set to that). */
  async function release(m: ReceivedMessage, reason: string, delaySec = 0): Promise<void> {
    try {
      if (delaySec > 0) await queue.extendVisibility(m.receipt, delaySec);
      else await queue.release(m.receipt);
      emit({ type: 'released', messageId: m.messageId, reason });
    } catch (error) {
      log.warn('release failed; the message returns when its visibility timeout passes', { ...about(m), reason, error: describe(error) });
    }
  }

  /**
   * Gives a message back without spending a delivery: a drain (scale-in, deploy, Spot reclaim,
   * Ctrl-C) is not an attempt, but a plain release would count towards the redrive limit, so three
   * clean stops would dead-letter a healthy job. A fresh copy is sent, then this delivery is acked
   * (a crash in between duplicates the message; the lease and the record checks make that harmless).
   * If the send fails the message is released instead, which spends a delivery but loses nothing.
   */
  async function requeue(m: ReceivedMessage, reason: string): Promise<void> {
    // The fresh copy lives the queue's whole retention again: stamp the job first, so the queued-job
    // sweep never takes it for one no message can reach (ADR 0012). Best effort: a record that cannot
    // be read or written must not keep the message from going back.
    let heldCopy: { leaseExpiresAt: string | null | undefined } | undefined;
    try {
      const msg = parseQueueMessage(m.body);
      jobOfDelivery.set(m, msg);
      await jobs.update(msg.owner, msg.job_id, (cur) => {
        heldCopy = copyOfHeld(cur, m) ? { leaseExpiresAt: cur.lease_expires_at } : undefined;
        return isTerminal(cur.status) || heldCopy ? null : { ...cur, enqueued_at: iso() };
      });
    } catch (error) {
      log.warn('requeue: the job record could not be stamped', { ...about(m), error: describe(error) });
    }
    if (heldCopy) {
      // A second copy of the message whose delivery holds the job (a stop came as it arrived): a fresh
      // copy and an ack of this one would, on SQS (a delete with any receipt deletes the message), take
      // the holder's message away, and the fresh copy would be dropped as a duplicate: the job left
      // with none. Put off, as handle() puts such a copy off.
      const delaySec = copyDelaySec(heldCopy.leaseExpiresAt);
      log.info('a second copy of the message whose delivery holds the job, received while stopping; it comes back after the lease', { ...about(m), delaySec });
      await release(m, 'copy_of_held', delaySec);
      return;
    }
    try {
      await queue.send(m.body, sentFor(m));
    } catch (error) {
      log.warn('requeue send failed; releasing instead (this delivery counts)', { ...about(m), reason, error: describe(error) });
      await release(m, reason);
      return;
    }
    emit({ type: 'requeued', messageId: m.messageId, reason });
    // Rare (the send worked, the delete did not): this delivery comes back next to its copy; the
    // one that finds the other holding the job is dropped as a duplicate.
    await ack(m, `requeued:${reason}`, 'ack after requeue failed; the job has two messages until one is settled');
  }

  /** Copy to the DLQ, then ack (a crash in between duplicates a dead letter, never loses one).
   * Without a DLQ port the message is released, and the queue's redrive takes it at the receive limit. */
  async function deadLetter(m: ReceivedMessage, reason: string): Promise<void> {
    if (!queue.deadLetter) {
      log.error('no dead-letter queue configured; releasing for the redrive policy', { ...about(m), reason });
      await release(m, `dead_letter:${reason}`);
      return;
    }
    try {
      await queue.deadLetter.send(m.body, sentFor(m));
    } catch (error) {
      log.error('dead-letter send failed; releasing', { ...about(m), reason, error: describe(error) });
      await release(m, `dead_letter_failed:${reason}`);
      return;
    }
    // An error line: each dead letter pages through the worker's error alarm, also while the DLQ
    // depth alarm is already in ALARM (ADR 0023).
    log.error('message dead-lettered', { ...about(m), reason, receiveCount: m.receiveCount });
    emit({ type: 'dead_lettered', messageId: m.messageId, reason });
    await ack(m, `dead_lettered:${reason}`);
  }

  // ------------------------------------------------------------ job record writes

  const finish = (
    msg: QueueMessage,
    outcome: JobOutcome,
    extra: { stepsDone?: number; error?: { code: string; message: string }; workerSeconds?: number; secondsPerImage?: number } = {},
    /** The code the failure had before the job's table mapped it (a `config_error` the job shows as internal_error). */
    attemptCode?: string,
    /** The job's place among its owner's active jobs stays taken: its usage is not in the ledger yet (see jobEnded). */
    placeKept = false,
  ) => {
    // `error_code` at the top level: the failures-by-code metric (cdk/lib/queue-alarms.ts) takes its
    // dimension from it. The codes are the worker's and the engine's own (not only those a failed job
    // may show): a small, fixed set.
    const errorCode = attemptCode ?? extra.error?.code;
    log.info('job finished', { job_id: msg.job_id, owner: msg.owner, outcome, ...runShapeOf.get(msg), ...(errorCode !== undefined ? { error_code: errorCode } : {}), ...extra });
    if (outcome === 'succeeded') {
      machineFailures = 0;
      runFailureJobs.clear();
    }
    if (outcome === 'succeeded' || outcome === 'failed' || outcome === 'canceled') jobEnded(msg, placeKept);
    emit({ type: 'job_finished', jobId: msg.job_id, outcome, ...extra });
  };

  /**
   * A job ended here: its place among its owner's active jobs is free (ADR 0016; best effort, the
   * queued-job sweep removes a marker left behind), and its completion webhook goes out (ADR 0013).
   * With `placeKept` (its usage write failed; the message comes back to record it) the place stays
   * taken until the ledger has the run: a spend limit's check reads the ledger, and ADR 0033 bounds the
   * overshoot by the jobs that hold places (review-races F2). The webhook goes out all the same.
   */
  function jobEnded(msg: QueueMessage, placeKept = false): void {
    if (!placeKept) void clearPending(blobs, 'active', msg.owner, msg.job_id);
    deps.webhooks?.notify(msg.owner, msg.job_id);
  }

  /**
   * Once a job has ended (`rec` is its record as this write left it), what its attempts stored is
   * settled: the images and frames its record does not name go (all of them for a job that ended
   * without images or was deleted; removeOrphanedOutputs), since no record will name them; and the
   * `outputs` marker goes (settleStoredOutputs leaves a record still
   * queued or running alone). Called after the end is recorded and the message settled: a failure is
   * only logged, and the queued-job sweep retries it from the marker (ADR 0005).
   */
  async function removeOrphans(rec: JobRecord): Promise<void> {
    await settleStoredOutputs(blobs, rec).catch((error) =>
      log.warn('stored images of an ended job were not removed; the queued-job sweep retries', { job_id: rec.id, owner: rec.owner, status: rec.status, error: describe(error) }),
    );
  }

  /**
   * Whether another delivery runs the job under a lease that has not run out: this message is then a
   * duplicate, and must neither run the job nor end it (cancel, fail). The holder renews its lease
   * every half visibility timeout to a full one ahead, so a live holder's lease never runs out; a dead
   * holder's lapses when its own message comes back, which then takes the job over.
   * The lease is the holder's wall-clock stamp, read against this worker's clock: it counts as run out
   * only a further `leaseSkewMs` later, so a worker whose clock runs ahead (by up to 1.5 timeouts) does
   * not take a live run over. That delays no recovery: a dead holder's own message takes the job over
   * (copyOfHeld, unchanged), and a duplicate dropped here is one the job does not need.
   */
  const leaseSkewMs = visibilitySec * 1000;
  /** A running job whose lease is live by its holder's clock (the skew margin above). */
  const runsUnderLiveLease = (cur: Pick<JobRecord, 'status' | 'lease_expires_at'>): boolean =>
    cur.status === 'running' && typeof cur.lease_expires_at === 'string' && Date.parse(cur.lease_expires_at) + leaseSkewMs > clock.now();
  const heldByAnother = (cur: JobRecord, m: ReceivedMessage): boolean =>
    runsUnderLiveLease(cur) && cur.lease_message_id !== undefined && cur.lease_message_id !== m.messageId;

  /**
   * Whether this delivery is a second copy of the very message whose delivery holds the job: SQS
   * may hand one message out twice, under one id, while the first is still held. The holder renews
   * the record's lease every half visibility timeout to a full one ahead, so a holder that is alive
   * leaves more than a quarter of a timeout on it; a crashed holder's own message comes back as its
   * lease runs out (the record's runs a write's latency behind the queue's), with less left.
   */
  const copyOfHeld = (cur: JobRecord, m: ReceivedMessage): boolean =>
    cur.status === 'running' &&
    cur.lease_message_id === m.messageId &&
    // The local queue knows the holder's process has ended (a kill -9, a crash): no live holder is
    // renewing this lease, so the delivery takes the job over now, as when the lease has run out.
    m.previousHolderGone !== true &&
    typeof cur.lease_expires_at === 'string' &&
    Date.parse(cur.lease_expires_at) - clock.now() > (visibilitySec * 1000) / 4;

  /**
   * Whether the job passed to another attempt after this one claimed it (`attempt` > 0): this one's
   * lease lapsed and a redelivery took over. Such an attempt writes nothing more and settles nothing:
   * SQS deletes a message on a DeleteMessage with an older receipt even while another reader holds
   * it, so an ack would take the new holder's message away. Its receipt just lapses.
   */
  const superseded = (rec: JobRecord, attempt: number): boolean => attempt > 0 && rec.attempts !== attempt;

  /**
   * Ends the job `canceled`. Before a claim (`attempt` 0) only while no other delivery holds it; after,
   * only while the record is still this attempt's.
   */
  async function markCanceled(msg: QueueMessage, m: ReceivedMessage, attempt: number, progress?: JobRecord['progress']): Promise<JobRecord> {
    return jobs.update(msg.owner, msg.job_id, (cur) =>
      isTerminal(cur.status) || heldByAnother(cur, m) || superseded(cur, attempt)
        ? null
        : { ...canceled(cur), ...(progress ? { progress } : {}) },
    );
  }

  /**
   * Ends the job `failed`, with the same guards as `markCanceled`; without them (the dead-letter sweep)
   * only a terminal record is left alone. A job whose caller asked to cancel it ends `canceled`: that
   * is what the caller was told to expect, and a failure would tell them to submit it again.
   */
  async function markFailed(msg: QueueMessage, error: { code: string; message: string }, guard?: { m: ReceivedMessage; attempt: number }): Promise<JobRecord> {
    return jobs.update(msg.owner, msg.job_id, (cur) => {
      if (isTerminal(cur.status)) return null;
      if (guard && (heldByAnother(cur, guard.m) || superseded(cur, guard.attempt))) return null;
      return cancelDue(cur) ? canceled(cur) : { ...cur, status: 'failed', finished_at: iso(), error };
    });
  }

  /** Back to `queued` for the next delivery: the record must not claim a run that nobody is doing. */
  async function markQueued(msg: QueueMessage, attempt: number): Promise<JobRecord> {
    return jobs.update(msg.owner, msg.job_id, (cur) =>
      isTerminal(cur.status) || cur.attempts !== attempt ? null : { ...cur, status: 'queued', progress: { step: 0, total: cur.progress.total }, queued_at: iso() },
    );
  }

  /**
   * After a retryable failure of this attempt's run: back to `queued` for the next delivery, or ended
   * `canceled` when its caller asked to cancel it meanwhile (the run failed before a progress write saw
   * the cancel). Re-queued, such a job would hold its place among its owner's active jobs (ADR 0016) and
   * its webhook through the retry delay (up to MAX_RETRY_DELAY_SEC), only for that delivery to cancel
   * it before it starts. One write, so a cancel landing now either ends it here or is seen by that
   * delivery. Only while the record is still this attempt's (as markQueued).
   */
  /**
   * A claimed attempt that stops short (a retryable failure, a model only a newer worker reads): the
   * job put back to queued, or ended here when it was superseded (lease_lost) or its caller asked to
   * cancel it (as the abort path ends a cancel seen mid-run: nothing billed, the message acked, whatever
   * an attempt stored removed, its place freed and its webhook told by finish). 'ended' when it ended.
   */
  async function putBackOrEnd(m: ReceivedMessage, msg: QueueMessage, attempt: number, error: unknown): Promise<JobRecord | 'ended'> {
    const rec = await markQueuedOrCanceled(msg, attempt);
    if (superseded(rec, attempt)) {
      await finish(msg, 'lease_lost', { error: attemptErrorOf(error) });
      return 'ended';
    }
    if (rec.status === 'canceled') {
      await ack(m, 'canceled');
      await removeOrphans(rec);
      await finish(msg, 'canceled', { error: attemptErrorOf(error) });
      return 'ended';
    }
    return rec;
  }

  async function markQueuedOrCanceled(msg: QueueMessage, attempt: number): Promise<JobRecord> {
    return jobs.update(msg.owner, msg.job_id, (cur) => {
      if (isTerminal(cur.status) || cur.attempts !== attempt) return null;
      return cancelDue(cur)
        ? canceled(cur)
        : { ...cur, status: 'queued', progress: { step: 0, total: cur.progress.total }, queued_at: iso() };
    });
  }

  /** This message duplicates the delivery that holds the job: it is dropped, and ends nothing. */
  async function dropDuplicate(m: ReceivedMessage, msg: QueueMessage, lease: { release(): Promise<void> }, leaseExpiresAt: string | null | undefined): Promise<void> {
    log.info('duplicate message for a job another worker holds; dropping it', { ...about(m), leaseExpiresAt });
    await lease.release();
    await ack(m, 'duplicate_of_running');
    finish(msg, 'skipped');
  }

  /**
   * Adds an ended job to its owner's usage ledger (ADR 0019) before its message is acked. A write
   * that fails gives the message back (after the retry delay) instead, and so would a crash before
   * it: its redelivery finds the job ended and adds it then. On the last delivery the failure is
   * logged and the message acked (`clipag usage audit` finds the gap, `clipag usage rebuild` closes
   * it). True when the caller should ack; the lease is released either way when false.
   */
  async function settleUsage(m: ReceivedMessage, msg: QueueMessage, job: JobRecord, lease: { release(): Promise<void> }): Promise<boolean> {
    const used = usageOfRecord(job);
    if (!used) return true;
    const { day: _day, ...figures } = used;
    try {
      await recordUsage(blobs, msg.owner, msg.job_id, new Date(job.finished_at!), figures);
    } catch (error) {
      const last = m.receiveCount >= config.maxReceives;
      log.error(last ? 'usage not recorded on the last delivery; the owner\'s daily totals miss this job (clipag usage rebuild)' : 'usage not recorded yet; the message comes back to record it', { job_id: msg.job_id, owner: msg.owner, ...figures, error: describe(error) });
      if (last) return true;
      await lease.release();
      await release(m, 'usage_unrecorded', retryDelaySec(m));
      return false;
    }
    // Stamped, so that a copy of this message that comes back later (a lost ack; a duplicate delivery
    // held back past the job's end) need not add it again. Best effort: without the stamp that add is
    // made and the ledger's own check counts it once (it keeps every job of the month, shared/usage.ts).
    await jobs
      .update(msg.owner, msg.job_id, (cur) => (cur.usage_recorded_at ? null : { ...cur, usage_recorded_at: iso() }))
      .catch((error) => log.warn('usage recorded, but the record was not stamped with it', { job_id: msg.job_id, owner: msg.owner, error: describe(error) }));
    return true;
  }

  /** How long a retried message waits before it is seen again (retryDelaySec × its receive count). */
  const retryDelaySec = (m: ReceivedMessage) => Math.min(MAX_RETRY_DELAY_SEC, (config.retryDelaySec ?? 0) * m.receiveCount);

  /**
   * A second copy of the held message: it neither runs the job nor is acked (SQS may delete the
   * holder's copy with it, and a holder that then died would leave the job no message). It comes back
   * after the job's deadline: the job has ended by then (the copy is acked), or its holder died and
   * its own copy has taken over.
   */
  /** How long a second copy of the held message is put off: past the holder's lease and the job's deadline. */
  function copyDelaySec(leaseExpiresAt: string | null | undefined): number {
    const leftSec = Math.ceil((Date.parse(leaseExpiresAt ?? '') - clock.now()) / 1000);
    return Math.min(COPY_DEFER_MAX_SEC, Math.max(Math.max(1, leftSec) + Math.ceil(visibilitySec / 4), (jobTimeoutSec ?? COPY_DEFER_DEFAULT_SEC) + visibilitySec));
  }

  async function deferCopy(m: ReceivedMessage, msg: QueueMessage, lease: { release(): Promise<void> }, leaseExpiresAt: string | null | undefined): Promise<void> {
    // Put off past the job's deadline, not just past this lease: the holder renews its lease for as
    // long as it runs, and every return of the copy would be one more receive towards the redrive
    // limit (a false dead letter). The copy is never the one that resumes the job: a holder that dies
    // leaves its own copy, which comes back when its lease runs out.
    const delaySec = copyDelaySec(leaseExpiresAt);
    log.info('a second copy of the message whose delivery holds the job; it comes back after the lease', { ...about(m), leaseExpiresAt, delaySec });
    await lease.release();
    await release(m, 'copy_of_held', delaySec);
    finish(msg, 'skipped');
  }

  // ------------------------------------------------------------ data a newer clipag wrote

  /**
   * The job's record, which did not read here: the store's NewerJobRecordError when a newer clipag
   * wrote it (what this version makes out of it: to decide with, never to run or to write). Damage is
   * looked at once more: rewritten since the read that failed (by a newer writer, or an operator's fix),
   * it is no damage to park ('reads_now', or the newer record now). Null for damage.
   */
  async function readNewerRecord(msg: { job_id: string; owner: string }, error: CorruptDocumentError): Promise<NewerJobRecordError | 'reads_now' | null> {
    if (error.key !== BlobJobStore.keyFor(msg.owner, msg.job_id)) return null; // another document (an owner's policy, a ledger)
    if (error instanceof NewerJobRecordError) return error;
    try {
      return (await jobs.get(msg.owner, msg.job_id)) ? 'reads_now' : null;
    } catch (again) {
      if (again instanceof NewerJobRecordError) return again;
      if (!(again instanceof CorruptDocumentError)) log.warn('job record: could not tell whether a newer clipag wrote it', { job_id: msg.job_id, owner: msg.owner, error: describe(again) });
      return null;
    }
  }

  /**
   * Data a newer clipag wrote (the message, the job's record, or the index of the model it names),
   * which this worker must neither run (it would make a different image from a request it does not
   * fully understand) nor take for damage (dead-lettered on its first receipt, the job would later fail
   * "retries_exhausted" without a run).
   * The job is left as it is: queued, its owner's place held, no failure counted. Its message goes back
   * for a worker that knows the data, as a drain's requeue does, so that the wait spends none of the
   * job's deliveries: a fresh copy sent with a delay, then this delivery acked. A job that has ended
   * meanwhile (a newer worker ran it; the queued-job sweep expired it after the queue's retention,
   * ADR 0012) has its message dropped instead (the callers check), which ends the cycle.
   * `leaseUntil` (ms): while the record names this delivery's lease, a copy back before it lapses would
   * be taken for a duplicate of a live run and dropped, leaving the job no message; it comes back after.
   */
  async function waitForNewerWorker(m: ReceivedMessage, msg: QueueMessage, what: 'message' | 'record' | 'model', unknown: readonly string[], since: number | undefined, leaseUntil = 0): Promise<void> {
    const waitedSec = since === undefined || !Number.isFinite(since) ? 0 : Math.max(0, (clock.now() - since) / 1000);
    let delaySec = Math.min(NEWER_WRITER_DELAY_SEC[1], Math.max(NEWER_WRITER_DELAY_SEC[0], Math.round(waitedSec / 10)));
    const leaseLeftSec = Math.ceil((leaseUntil - clock.now()) / 1000);
    if (leaseLeftSec > 0) delaySec = Math.min(COPY_DEFER_MAX_SEC, Math.max(delaySec, leaseLeftSec + Math.ceil(visibilitySec / 4)));
    // A warning, not an error: during a deploy this is expected. A job no worker here can ever run (a
    // rollback left only older ones) shows as the queued-job sweep's oldestQueuedSec, whose alarm pages.
    log.warn('written by a newer clipag; waiting for a worker that knows it', { ...about(m), what, unknown: unknown.slice(0, 10), delaySec, waitedSec: Math.round(waitedSec) });
    // SQS delays a send by at most 15 minutes; past that only the delivery's own visibility can wait.
    const sent = delaySec <= NEWER_WRITER_DELAY_SEC[1]
      ? await queue.send(m.body, { delaySec, ...sentFor(m) }).then(
          () => true,
          (error: unknown) => (log.warn('the copy of a newer message was not sent; releasing it instead (this delivery counts)', { ...about(m), error: describe(error) }), false),
        )
      : false;
    if (!sent) {
      await release(m, 'newer_writer', delaySec);
      return finish(msg, 'requeued');
    }
    emit({ type: 'released', messageId: m.messageId, reason: 'newer_writer' });
    // Rare (the send worked, the delete did not): this delivery comes back next to its copy, and goes
    // round the same way; a worker that runs the job drops the other as a duplicate.
    await ack(m, 'newer_writer', 'ack after sending the copy of a newer message failed; the job has two messages until one is settled');
    return finish(msg, 'requeued');
  }

  /** What `waitForNewerWorker` logs as not known here, for a model only a newer clipag can serve. */
  const newerModelUnknown = (error: NewerModelError) => [`model ${error.model}: format_version ${error.formatVersion}`];

  /**
   * A model only a newer clipag can serve, met by the run (its index was rewritten after the check
   * before the claim): this attempt goes back to `queued` (or ends `canceled` when its caller asked
   * meanwhile, as after a retryable failure), and the job waits for a newer worker as it would have
   * before the claim: a retry would fail the same way on every delivery, and end `retries_exhausted`.
   */
  async function waitForNewerModel(m: ReceivedMessage, msg: QueueMessage, attempt: number, error: NewerModelError): Promise<void> {
    try {
      let since: number | undefined;
      if (attempt > 0) {
        const rec = await putBackOrEnd(m, msg, attempt, error);
        if (rec === 'ended') return;
        since = waitingSince(rec);
      }
      return await waitForNewerWorker(m, msg, 'model', newerModelUnknown(error), since);
    } catch (writeError) {
      // As when a failure cannot be recorded: the record still names this attempt's lease, and the
      // message comes back when it runs out.
      log.error('could not put a job back for a newer worker; the message comes back when its lease runs out', { job_id: msg.job_id, owner: msg.owner, error: describe(writeError) });
    }
  }

  // ------------------------------------------------------------ one message

  async function handle(m: ReceivedMessage, receivedAt: number): Promise<void> {
    emit({ type: 'received', messageId: m.messageId, receiveCount: m.receiveCount });
    let msg: QueueMessage;
    /** What this version does not know of a message a newer clipag wrote: it only puts its job back. */
    let newerMessage: readonly string[] | undefined;
    try {
      msg = parseQueueMessage(m.body);
      jobOfDelivery.set(m, msg);
    } catch (error) {
      if (error instanceof NewerQueueMessageError) {
        newerMessage = error.unknown;
        msg = { v: 1, ...error.job };
        jobOfDelivery.set(m, msg);
      } else {
        log.warn('malformed queue message', { ...about(m), error: describe(error), body: m.body.slice(0, 200) });
        await deadLetter(m, 'malformed');
        return;
      }
    }
    let abortRun: ((reason: AbortReason) => void) | undefined;
    let lostEarly = false;
    let attempt = 0;
    /** Set once this attempt marked the images it is about to store (the `outputs` marker). */
    let storing = false;
    /**
     * Another attempt holds the job now (or this one failed after storing): it may have ended the job
     * and settled its images, marker included, before these landed. The marker goes back, and when the
     * job has already ended it is settled here at once (the other attempt's settling may have listed
     * before these landed and then removed the marker put back). Best effort: what is left stays marked.
     */
    const remarkStoredImages = async () => {
      if (!storing) return;
      try {
        await markPending(blobs, 'outputs', msg.owner, msg.job_id);
        const now = await jobs.get(msg.owner, msg.job_id);
        if (now) await removeOrphans(now); // a record still queued or running is left alone
      } catch (error) {
        log.warn('stored images of a superseded attempt not re-marked; the lifecycle rule removes them', { job_id: msg.job_id, owner: msg.owner, error: describe(error) });
      }
    };
    // The record's copy of the lease, renewed with the message's: lets another delivery tell a
    // duplicate message (the job is held) from a redelivery after a crash (the lease ran out). It
    // counts from the moments the queue's does (the receive, each extend as it was sent), so it neither
    // outlives the queue's (a redelivery after a crash would look like a copy of a live hold) nor falls
    // short of it (a duplicate would take a live run over); a late renewal never moves it back.
    const renewRecordLease = async (sentAt: number) => {
      if (attempt === 0) return;
      const until = new Date(sentAt + visibilitySec * 1000).toISOString();
      await jobs.update(msg.owner, msg.job_id, (cur) =>
        cur.status === 'running' && cur.attempts === attempt && !(typeof cur.lease_expires_at === 'string' && cur.lease_expires_at >= until) ? { ...cur, lease_expires_at: until } : null,
      );
    };
    const lease = holdLease(m, receivedAt, () => (abortRun ? abortRun('lease_lost') : (lostEarly = true)), renewRecordLease);
    try {
      const job = await jobs.get(msg.owner, msg.job_id);
      if (!job) {
        log.warn('job record not found; dropping the message', { job_id: msg.job_id, owner: msg.owner });
        await lease.release();
        await ack(m, 'job_missing');
        return finish(msg, 'skipped');
      }
      // The POST's request id (records made since it was stored): the trace from the API's line to this job's lines.
      runShapeOf.set(msg, { model: job.spec.model, width: job.spec.width, height: job.spec.height, steps: Math.min(job.spec.steps, maxSteps ?? Infinity), ...(job.request_id ? { request_id: job.request_id } : {}) });
      if (isTerminal(job.status)) {
        // This very message back after its run ended: its usage write failed (the message was given
        // back for it), or the final write landed but answered an error. The ledger may miss the run;
        // it counts a job once, so telling it again is harmless. The ended job's marker and webhook
        // are seen to as well.
        if (!newerMessage && job.lease_message_id === m.messageId && usageOfRecord(job)) {
          const settled = job.usage_recorded_at !== undefined || (await settleUsage(m, msg, job, lease));
          jobEnded(msg, !settled);
          if (!settled) return finish(msg, 'skipped');
        }
        await lease.release();
        await ack(m, `already_${job.status}`);
        return finish(msg, 'skipped');
      }
      // Another delivery runs it: a duplicate message ends nothing (not even a requested cancel,
      // which the holder sees at its next progress write).
      if (heldByAnother(job, m)) return dropDuplicate(m, msg, lease, job.lease_expires_at);
      if (copyOfHeld(job, m)) return deferCopy(m, msg, lease, job.lease_expires_at);
      // Canceled by its caller, or received past its deadline (ADR 0034): not run.
      if (cancelDue(job)) {
        const rec = await markCanceled(msg, m, 0);
        await lease.release();
        await ack(m, rec.status === 'canceled' ? 'canceled_before_start' : 'changed_before_start');
        // An earlier attempt may have stored images before it was put back (a storage fault on its record).
        await removeOrphans(rec);
        return finish(msg, rec.status === 'canceled' ? 'canceled' : 'skipped', { stepsDone: 0 });
      }
      // A message a newer clipag wrote: its job, ended, held or canceled, was seen to above; otherwise it waits.
      if (newerMessage) {
        await lease.release();
        return waitForNewerWorker(m, msg, 'message', newerMessage, waitingSince(job));
      }
      if (m.receiveCount > config.maxReceives) {
        // Only when the queue has no redrive at this limit: enforce it here.
        const error = { code: 'retries_exhausted', message: `the job was attempted ${m.receiveCount - 1} times without finishing` };
        const rec = await markFailed(msg, error, { m, attempt: 0 });
        // Another delivery took the job meanwhile: this one is a duplicate (dead-lettering it would
        // have the dead-letter sweep fail the live run).
        if (!isTerminal(rec.status)) return dropDuplicate(m, msg, lease, rec.lease_expires_at);
        await lease.release();
        await deadLetter(m, 'retries_exhausted');
        await removeOrphans(rec);
        return finish(msg, rec.status as JobOutcome, { error });
      }
      if (models && !models.has(job.spec.model)) {
        const error = { code: 'invalid_model', message: `unknown model "${job.spec.model}"; available: ${models.list().map((x) => x.name).join(', ') || '(none)'}` };
        const rec = await markFailed(msg, error, { m, attempt: 0 });
        if (!isTerminal(rec.status)) return dropDuplicate(m, msg, lease, rec.lease_expires_at);
        await lease.release();
        await ack(m, 'invalid_model');
        await removeOrphans(rec);
        return finish(msg, rec.status as JobOutcome, { error });
      }
      // A model whose index a newer clipag pushed: the run would fail on every delivery, and the job end
      // retries_exhausted. It waits for a newer worker instead, as a newer record does, before a claim.
      const newerModel = await models?.waitsForNewer(job.spec.model);
      if (newerModel) {
        await lease.release();
        return waitForNewerWorker(m, msg, 'model', newerModelUnknown(newerModel), waitingSince(job));
      }

      // Claim it: a versioned write that re-checks terminal/cancel on the freshest record.
      const steps = Math.min(job.spec.steps, maxSteps ?? Infinity);
      const total = steps * job.spec.n;
      const startedAt = elapsedClock();
      let claimed = false;
      let heldElsewhere = false;
      let copy = false;
      const leaseToken = randomUUID();
      // A stop that came while the record was read: the job goes back unclaimed (not an attempt).
      if (stopping) {
        await lease.release();
        await requeue(m, 'drain');
        return finish(msg, 'requeued', { stepsDone: 0 });
      }
      const running = await jobs.update(msg.owner, msg.job_id, (cur) => {
        claimed = false;
        heldElsewhere = false;
        copy = false;
        // Our own claim, written though its reply was lost (the retried write failed its condition):
        // it is ours already, and claiming again would count a second attempt.
        if (cur.status === 'running' && cur.lease_token === leaseToken) {
          claimed = true;
          return null;
        }
        // Running by way of another message under a live lease: the holder has its own message (which
        // comes back if it dies), so this one is a duplicate. The held message itself coming back
        // (released, or lapsed) takes the job over; a second copy of it while the holder lives does
        // not. Checked first: a duplicate ends nothing.
        if (heldByAnother(cur, m)) {
          heldElsewhere = true;
          return null;
        }
        if (copyOfHeld(cur, m)) {
          copy = true;
          return null;
        }
        if (isTerminal(cur.status) || cancelDue(cur)) return null;
        claimed = true;
        const leaseUntil = new Date(lease.validFrom + visibilitySec * 1000).toISOString();
        return {
          ...cur, status: 'running', attempts: cur.attempts + 1, started_at: cur.started_at ?? iso(), progress: { step: 0, total }, error: null,
          lease_message_id: m.messageId, lease_expires_at: leaseUntil, lease_token: leaseToken,
        };
      });
      if (heldElsewhere) return dropDuplicate(m, msg, lease, running.lease_expires_at);
      if (copy) return deferCopy(m, msg, lease, running.lease_expires_at);
      if (!claimed) {
        // Changed between the read and the claim: ended, or a cancel was asked for.
        const rec = isTerminal(running.status) ? running : await markCanceled(msg, m, 0);
        await lease.release();
        await ack(m, 'changed_before_start');
        await removeOrphans(rec);
        return finish(msg, isTerminal(running.status) || rec.status !== 'canceled' ? 'skipped' : 'canceled');
      }
      attempt = running.attempts;
      // `queuedSec`: how long this job waited to start (the dashboard's queue-wait percentiles; the
      // sweep's oldestQueuedSec only samples the longest wait of the jobs still queued).
      const queuedSec = Math.max(0, Math.round(clock.now() - waitingSince(running))) / 1000;
      log.info('job started', { ...about(m), ...(job.request_id ? { request_id: job.request_id } : {}), attempt, receiveCount: m.receiveCount, queuedSec, model: job.spec.model, steps, requestedSteps: job.spec.steps, n: job.spec.n });
      emit({ type: 'job_started', jobId: msg.job_id, attempt });
      // The caller's generation.started event (ADR 0036), when it asked for one and no attempt of it was
      // made: in the background, never waited for by the run; its retries are the queued-job sweep's.
      if (startedEventUntried(running, new Date(clock.now()))) deps.webhooks?.notifyStarted?.(msg.owner, msg.job_id);

      // Run, with progress writes that double as the cancel check.
      const ac = new AbortController();
      let reason: AbortReason | undefined;
      abortRun = (r) => {
        if (reason) return;
        reason = r;
        emit({ type: 'abort', jobId: msg.job_id, reason: r, step: progress.latest?.step ?? 0 });
        ac.abort(r);
      };
      const progress = progressWriter(msg, attempt, total, (r) => abortRun!(r));
      current = { abort: abortRun };
      if (lostEarly) abortRun('lease_lost');
      if (stopping) abortRun('drain');
      // The time limit: a timer for an idle engine, and a clock check on every progress report.
      const deadline = jobTimeoutSec === undefined ? undefined : startedAt + jobTimeoutSec * 1000;
      let deadlineTimer: NodeJS.Timeout | undefined;
      if (deadline !== undefined) {
        lease.setDeadline(deadline);
        deadlineTimer = setTimeout(() => abortRun!('timeout'), Math.max(0, deadline - elapsedClock()));
      }
      // The caller's deadline (ADR 0034), on the wall clock its created_at is stamped on: a cancel asked
      // for in advance, checked at every step and by a timer for an idle engine. Passed, the run stops as
      // on a cancel (markCanceled then says why).
      const cancelAt = cancelDeadline(running);
      let cancelAtTimer: NodeJS.Timeout | undefined;
      const cancelAtPassed = () => cancelAt !== undefined && clock.now() >= cancelAt;
      const watchCancelAt = () => {
        if (cancelAt === undefined) return;
        if (cancelAtPassed()) return abortRun!('cancel');
        // A timer may fire a little early: it looks again then.
        cancelAtTimer = setTimeout(watchCancelAt, Math.min(2 ** 31 - 1, Math.max(1, cancelAt - clock.now())));
      };
      watchCancelAt();
      const onProgress = (p: SynthesisProgress) => {
        progress.report(p);
        if (deadline !== undefined && elapsedClock() >= deadline) abortRun!('timeout');
        if (cancelAtPassed()) abortRun!('cancel');
      };
      let outcome: SynthesisOutcome | undefined;
      let runError: unknown;
      let screen: OutputScreen | undefined;
      try {
        screen = await deps.outputScreen?.(msg.owner);
        const screenTexts = screen?.concepts.length ? { screenTexts: screen.concepts } : {};
        outcome = await synthesizer.run({ id: running.id, owner: running.owner, spec: { ...running.spec, steps } }, { signal: ac.signal, onProgress, ...screenTexts });
      } catch (error) {
        runError = error;
      } finally {
        lease.engineDone();
        clearTimeout(deadlineTimer);
        clearTimeout(cancelAtTimer);
        current = undefined;
        await progress.close();
      }
      if (reason === 'timeout' && (runError !== undefined || outcome?.aborted)) {
        // Whatever the engine did with the abort (returned partial, or threw), the job timed out.
        const stepsDone = outcome?.stepsDone ?? progress.latest?.step ?? 0;
        const error = {
          code: 'timeout',
          message: `the job ran past its ${jobTimeoutSec} s time limit and was stopped after ${Math.min(stepsDone, total)} of ${total} steps; it is not retried (the same request would time out again): ask for fewer steps, fewer images or a smaller size`,
        };
        if (runError !== undefined) log.warn('run threw after the timeout abort', { job_id: msg.job_id, owner: msg.owner, error: describe(runError) });
        // A job its caller asked to cancel ends `canceled`, as markFailed ends it: a timeout's advice to
        // submit a smaller request would tell them to pay again for what they stopped.
        let endedCanceled = false;
        const rec = await jobs.update(msg.owner, msg.job_id, (cur) => {
          if (isTerminal(cur.status) || cur.attempts !== attempt) return null;
          endedCanceled = cancelDue(cur);
          const progressed = { ...cur, progress: { step: Math.min(stepsDone, total), total } };
          return endedCanceled ? canceled(progressed) : { ...progressed, finished_at: iso(), status: 'failed', error };
        });
        await lease.release();
        if (superseded(rec, attempt)) return finish(msg, 'lease_lost', { stepsDone });
        await ack(m, 'timeout');
        // This run stored nothing; an earlier attempt may have.
        await removeOrphans(rec);
        return endedCanceled && rec.status === 'canceled' ? finish(msg, 'canceled', { stepsDone }) : finish(msg, 'failed', { stepsDone, error });
      }
      if (runError !== undefined && reason !== undefined) {
        // The run threw on its way out of an abort (a session rejected mid-step): it ends as the abort
        // says. A drain must not spend a delivery, nor a cancel end the job failed.
        log.warn('run threw after an abort; settled as the abort', { job_id: msg.job_id, owner: msg.owner, reason, error: describe(runError) });
        outcome = abortedOutcome(progress.latest?.step ?? 0, total);
        runError = undefined;
      }
      if (runError !== undefined) throw runError;
      if (!outcome) throw new Error('synthesizer returned nothing');
      const last = progress.latest ?? { step: outcome.stepsDone, total };
      /** Ends the job canceled once its run has returned (a cancel or a deadline): recorded, acked, what it stored settled. */
      const endCanceledAfterRun = async (stepsDone: number) => {
        const rec = await markCanceled(msg, m, attempt, { step: Math.min(last.step, total), total });
        await lease.release();
        if (superseded(rec, attempt)) return finish(msg, 'lease_lost', { stepsDone });
        await ack(m, 'canceled');
        await removeOrphans(rec);
        return finish(msg, 'canceled', { stepsDone });
      };

      if (outcome.aborted) {
        if (reason === 'lease_lost') {
          // Another delivery owns the job now; write nothing, ack nothing.
          await lease.release();
          return finish(msg, 'lease_lost', { stepsDone: outcome.stepsDone });
        }
        const fresh = reason === 'cancel' ? undefined : await jobs.get(msg.owner, msg.job_id);
        if (reason === 'cancel' || (fresh && cancelDue(fresh) && !isTerminal(fresh.status))) {
          return await endCanceledAfterRun(outcome.stepsDone);
        }
        // Drain: the next worker redoes the job from the start (the seed makes it the same image).
        const rec = await markQueued(msg, attempt);
        await lease.release();
        if (superseded(rec, attempt)) return finish(msg, 'lease_lost', { stepsDone: outcome.stepsDone });
        await requeue(m, 'drain');
        return finish(msg, 'requeued', { stepsDone: outcome.stepsDone });
      }
      // Not aborted: the run completed (an abort that landed after the last step changes nothing).

      // The output check decides what is published; a withheld image is never stored, nor its frames.
      const checks = checkOutputs(outcome.images, screen);
      const withheld = new Set(checks.filter((c) => c.withheld).map((c) => c.index));
      for (const c of checks) log.info('output check matched', { job_id: msg.job_id, owner: msg.owner, index: c.index, withheld: c.withheld, rules: c.flags.map((f) => f.rule) });
      const allWithheld = outcome.images.length > 0 && withheld.size === outcome.images.length;

      // Another delivery may have taken the job over while this run went on (its lease lapsed): it
      // writes nothing then, not even outputs (a delete of a withheld image could remove the new
      // holder's), and settles nothing.
      const before = await jobs.get(msg.owner, msg.job_id);
      if (before && superseded(before, attempt)) {
        await lease.release();
        return finish(msg, 'lease_lost', { stepsDone: outcome.stepsDone });
      }
      // A cancel the API took while the run went on, which the throttled progress write had not seen
      // yet (up to an interval and a step late), or a cancel_after deadline that passed in that time:
      // honoured as if it had stopped the run. Only one that comes once the images are being stored is
      // too late (the caller was answered "stops"; the compute is spent either way, the result is not
      // theirs to be billed for).
      if (before && cancelDue(before) && !isTerminal(before.status)) {
        return await endCanceledAfterRun(outcome.stepsDone);
      }

      // Outputs first, then the record: a record never points at a missing object.
      const store = resultWriter(lease);
      const prefix = jobOutputsPrefix(msg.owner, msg.job_id);
      const outputs: JobOutput[] = [];
      // Several writes at once: a job's images and frames (up to ~200 objects) are billed time.
      const writes: Array<() => Promise<unknown>> = [];
      // The format the spec asks for (ADR 0041, 0043); frames stay PNG.
      const format = job.spec.output_format ?? 'png';
      const file = outputFile(format);
      for (const image of outcome.images) {
        const key = `${prefix}${image.index}.${file.extension}`;
        if (withheld.has(image.index)) {
          // An earlier attempt under another policy may have stored it and its frames: the record never
          // names them, but they go too.
          writes.push(() => store(`withheld image ${image.index}`, () => blobs.delete(key)), () => store(`withheld image ${image.index}'s frames`, () => deletePrefix(blobs, `${prefix}frames/${image.index}/`)));
          continue;
        }
        const bytes = format === 'png' ? image.png : image.lossy?.format === format ? image.lossy.bytes : undefined;
        // The synthesizer encodes what the spec asks for: an image without it is this code's fault, and stored as another format it would be a file the view misnames.
        if (bytes === undefined) throw new Error(`the synthesizer made no ${format} file of image ${image.index}`);
        writes.push(() => store(`image ${image.index}`, () => blobs.put(key, bytes, { contentType: file.contentType })));
        for (const frame of image.frames) {
          const { width, height } = pngSize(frame.png);
          const frameAt = frameKey(msg.owner, msg.job_id, image.index, frame.step, width, height);
          writes.push(() => store(`image ${image.index}'s frame ${frame.step}`, () => blobs.put(frameAt, frame.png, { contentType: 'image/png' })));
        }
        // A score that is not finite (a NaN cosine) is left out, as JobOutput's optional clip_score allows:
        // the record would not validate with it, and the images are good without it.
        const score = Number(image.clipScore.toFixed(6));
        const scored = Number.isFinite(score);
        if (!scored) log.warn('image score is not finite; its output has no clip_score', { job_id: msg.job_id, owner: msg.owner, image: image.index, clip_score: String(image.clipScore) });
        outputs.push({ key, width: image.width, height: image.height, ...(scored ? { clip_score: score } : {}) });
      }
      // Marked before the first image is stored: until the record names them or they are removed, the
      // queued-job sweep can find images that this attempt leaves behind (a crash, a lost record write).
      if (outputs.length > 0) {
        await store('the stored-images marker', () => markPending(blobs, 'outputs', msg.owner, msg.job_id));
        storing = true;
      }
      await forEachLimited(writes, OUTPUT_WRITE_CONCURRENCY, async (write) => void (await write()));
      const usage = { encoder_passes: outcome.encoderPasses, worker_seconds: Math.max(0, Math.round(elapsedClock() - startedAt)) / 1000 };
      // The worker's cap (clipag serve --steps) said in the record: its request still shows the steps asked for.
      const warnings = [...(steps < job.spec.steps ? [`steps capped at ${steps} by this server (asked ${job.spec.steps})`] : []), ...(outcome.warnings ?? [])];
      let wrote = false;
      const done = await store('the job record', () => jobs.update(msg.owner, msg.job_id, (cur) => {
        wrote = false;
        // A finished run wins over a cancel that arrived after the last step; a job already terminal stays so.
        if (isTerminal(cur.status) || cur.attempts !== attempt) return null;
        wrote = true;
        return {
          ...cur, status: allWithheld ? 'failed' : 'succeeded', finished_at: iso(), progress: { step: total, total }, outputs, usage,
          ...(config.hourlyUsd !== undefined ? { hourly_usd: config.hourlyUsd } : {}),
          error: allWithheld ? { code: 'content_policy', message: withheldMessage(checks) } : null,
          ...(warnings.length ? { warnings: warnings.slice(0, MAX_JOB_WARNINGS).map((w) => w.slice(0, MAX_JOB_WARNING_CHARS)) } : {}),
          ...(checks.length ? { output_checks: checks } : {}),
          ...(outcome.modelVersion !== undefined ? { model_version: outcome.modelVersion } : {}),
        };
      }));
      // This attempt's result is the record's: this write, or one that landed but whose reply was lost
      // (the update then re-read a terminal record of this very attempt, with this run's usage).
      const ours = wrote || (done.attempts === attempt && isTerminal(done.status) && done.usage.worker_seconds === usage.worker_seconds && done.usage.encoder_passes === usage.encoder_passes);
      if (superseded(done, attempt)) {
        await remarkStoredImages();
        await lease.release();
        return finish(msg, 'lease_lost', { stepsDone: outcome.stepsDone });
      }
      const ended = {
        stepsDone: outcome.stepsDone,
        ...(ours && allWithheld ? { error: done.error! } : {}),
        // What the customer is billed for: the run's worker seconds, and per image made (withheld ones
        // included). The operator's dashboard (cdk/lib/dashboard.ts) reads secondsPerImage from this line.
        ...(ours ? { workerSeconds: usage.worker_seconds, ...(outcome.images.length > 0 ? { secondsPerImage: Math.round((usage.worker_seconds / outcome.images.length) * 1000) / 1000 } : {}) } : {}),
      };
      // The run's time feeds the API's estimates (ADR 0014). Statistics only: a failure is logged.
      const recordSample = async () => {
        const key = { model: done.spec.model, width: done.spec.width, height: done.spec.height, start: runStartOf(done.spec.init) };
        const loopSeconds = Math.min(usage.worker_seconds, outcome.timingsMs.optimize / 1000);
        const stageSeconds = (outcome.stages ?? []).reduce((t, st) => t + st.ms / 1000, 0);
        const sample = {
          seconds: usage.worker_seconds, loopSeconds, steps: total, n: outcome.images.length, at: iso(), job: msg.job_id,
          // A step's cost at each stage size: what prices a size never run (ADR 0014).
          ...(outcome.stages?.length && stageSeconds <= loopSeconds ? { stages: outcome.stages.map((st) => ({ width: st.width, height: st.height, steps: st.steps, seconds: st.ms / 1000 })) } : {}),
        };
        const recorded = await recordRunSample(blobs, key, sample).catch((error) => void log.warn('run statistics not recorded', { job_id: msg.job_id, owner: msg.owner, error: describe(error) }));
        if (recorded === 'newer_document' && !newerStats.has(runStatsKey(key))) {
          newerStats.add(runStatsKey(key));
          log.warn('run statistics written by a newer clipag; left as they are, this run not recorded (not repeated for this document)', { key: runStatsKey(key), job_id: msg.job_id });
        }
      };
      // The usage before the ack, with the lease still held: see settleUsage. (The redelivery that
      // records the usage then does not know the run's stages: the sample is recorded now.)
      // After the end: the record names these images now, or the job ended another way while they were
      // being stored (a cancel, the sweep's expiry), and whoever ended it may have removed its images
      // before these landed: they go now.
      if (ours && !(await settleUsage(m, msg, done, lease))) {
        await recordSample();
        await removeOrphans(done);
        return finish(msg, allWithheld ? 'failed' : 'succeeded', ended, undefined, true);
      }
      await lease.release();
      await ack(m, ours ? (allWithheld ? 'output_withheld' : 'succeeded') : `already_${done.status}`);
      await removeOrphans(done);
      if (ours) await recordSample();
      return finish(msg, !ours ? 'skipped' : allWithheld ? 'failed' : 'succeeded', ended);
    } catch (error) {
      await lease.release();
      await remarkStoredImages();
      await onFailure(m, msg, attempt, error, lease.validFrom + visibilitySec * 1000);
    } finally {
      current = undefined;
      await lease.release();
    }
  }

  /** `leaseUntil` (ms): when this delivery's lease, which the record may name, runs out. */
  async function onFailure(m: ReceivedMessage, msg: QueueMessage, attempt: number, error: unknown, leaseUntil = 0): Promise<void> {
    const newer = error instanceof CorruptDocumentError ? await readNewerRecord(msg, error) : null;
    if (newer === 'reads_now') {
      log.warn('job record rewritten since it failed to read; the message is handled again', { ...about(m), attempt });
      // Before a claim, a fresh copy at once (spending no delivery). After one, the record names this
      // delivery's lease: a copy would be dropped as its duplicate, so the message is left to come back
      // when the lease runs out, and takes the job over.
      if (attempt === 0) await requeue(m, 'record_changed');
      return finish(msg, 'requeued');
    }
    if (newer) {
      // The record a newer clipag wrote (a request field this version does not know): the checks that
      // settle a message before a claim, made on the record without what is unknown; otherwise it waits.
      const { record: rec, seen } = newer;
      if (TERMINAL_STATUSES.has(seen.status as JobStatus)) {
        await ack(m, `already_${seen.status}`);
        return finish(msg, 'skipped');
      }
      if (rec && superseded(rec, attempt)) return finish(msg, 'lease_lost');
      const noLease = { release: async () => undefined };
      if (attempt === 0 && rec && heldByAnother(rec, m)) return dropDuplicate(m, msg, noLease, rec.lease_expires_at);
      if (attempt === 0 && rec && copyOfHeld(rec, m)) return deferCopy(m, msg, noLease, rec.lease_expires_at);
      return waitForNewerWorker(m, msg, 'record', newer.unknown, newer.waitingSince, attempt > 0 ? leaseUntil : 0);
    }
    if (error instanceof NewerModelError) return waitForNewerModel(m, msg, attempt, error);
    if (error instanceof CorruptDocumentError) {
      // The job document cannot be read, so it cannot be marked failed either, and every redelivery
      // would hit the same wall: park the message in the DLQ (once) for an operator.
      log.error('job document is corrupt; dead-lettering its message', { job_id: msg.job_id, owner: msg.owner, key: error.key, detail: error.detail });
      await deadLetter(m, 'corrupt_record');
      return finish(msg, 'failed', { error: { code: error.code, message: error.message } });
    }
    const cls = classifyError(error);
    const lastAttempt = m.receiveCount >= config.maxReceives;
    // An error the worker does not know (a plain Error, no retry class: internal_error) is a bug in the
    // worker or the engine: an error line, which pages (WorkerErrorLines), not only the failure share.
    const bug = cls === 'permanent' && jobErrorOf(error).code === 'internal_error';
    log[bug ? 'error' : 'warn']('job attempt failed', { job_id: msg.job_id, owner: msg.owner, class: cls, receiveCount: m.receiveCount, lastAttempt, error: describe(error) });
    const diskOfTheStore = config.storageOnThisDisk ? exhaustedResource(error) : undefined;
    if (diskOfTheStore) {
      log.error(`job attempt failed: ${diskOfTheStore.condition} (${diskOfTheStore.code}); the job is retried, and jobs run again once the disk is usable`, { job_id: msg.job_id, owner: msg.owner, code: diskOfTheStore.code });
    } else if (isMachineFailure(error)) {
      if (++machineFailures >= maxMachineFailures) unhealthy('machine_failures', { failures: machineFailures, error: describe(error) });
    } else if (config.device === 'cuda' && isUnexplainedRunFailure(error)) {
      // Neither the job's fault nor the machine's, on its own. Runs of different jobs failing so in a
      // row on a GPU, none succeeding between, are the machine's: a device fault in a form not known
      // here. (The CPU has no such sticky state: there they are the jobs' or the model's.)
      runFailureJobs.add(msg.job_id);
      if (runFailureJobs.size >= maxRunFailureJobs) unhealthy('run_failures', { jobs: runFailureJobs.size, error: describe(error) });
    } else {
      // In a row: a job failing for its own reasons shows this machine can run jobs.
      machineFailures = 0;
      runFailureJobs.clear();
    }
    try {
      if (cls === 'retryable' && !lastAttempt) {
        if (attempt > 0 && (await putBackOrEnd(m, msg, attempt, error)) === 'ended') return;
        await release(m, 'retryable_error', retryDelaySec(m));
        return finish(msg, 'requeued', { error: attemptErrorOf(error) });
      }
      const jobError = cls === 'retryable' ? exhaustedJobErrorOf(error, m.receiveCount) : jobErrorOf(error);
      // What the metric counts the failure by: the job's code for an exhausted retry, else the error's own.
      const attemptCode = cls === 'retryable' ? jobError.code : attemptErrorOf(error).code;
      const rec = await markFailed(msg, jobError, { m, attempt });
      if (superseded(rec, attempt)) return finish(msg, 'lease_lost', { error: jobError }, attemptCode);
      if (!isTerminal(rec.status)) {
        // Before a claim, another delivery took the job meanwhile: this one is a duplicate.
        await ack(m, 'duplicate_of_running');
        return finish(msg, 'skipped', { error: jobError }, attemptCode);
      }
      // Out of memory on the last delivery is the request's size, as a timeout is: no dead letter (which pages).
      if (cls === 'retryable' && jobError.code === 'retries_exhausted') await deadLetter(m, 'retries_exhausted');
      else await ack(m, 'failed');
      // This run, or an earlier attempt, may have stored some images: a failed job keeps none.
      await removeOrphans(rec);
      return finish(msg, rec.status === 'canceled' ? 'canceled' : 'failed', { error: jobError }, attemptCode);
    } catch (writeError) {
      // Could not even record the failure (storage down?). The record still says this attempt runs
      // it, under a lease that lapses with the message's: the message is left to come back then (a
      // release now would find that lease live and be put off as a copy of the held message, which
      // spends a delivery). At the receive limit the redrive policy dead-letters it.
      log.error('could not record the failure; the message comes back when its lease runs out', { job_id: msg.job_id, owner: msg.owner, error: describe(writeError) });
    }
  }

  /** Throttled progress writes (≤ 1 per progressIntervalMs, plus a trailing one); each write sees the
   * freshest record, so a cancel is noticed on the next write and never overwritten. */
  function progressWriter(msg: QueueMessage, attempt: number, total: number, abort: (r: AbortReason) => void) {
    let latest: SynthesisProgress | undefined;
    let written = -1;
    let inflight: Promise<void> | undefined;
    let lastWriteAt = -Infinity;
    let trailing: NodeJS.Timeout | undefined;
    let closed = false;
    const write = () => {
      trailing = undefined;
      if (closed || inflight || !latest || latest.step === written) return;
      const p = { step: Math.min(latest.step, total), total };
      lastWriteAt = clock.now();
      inflight = jobs
        .update(msg.owner, msg.job_id, (cur) =>
          isTerminal(cur.status) || cur.cancel_requested || cur.attempts !== attempt || cur.status !== 'running' ? null : { ...cur, progress: p },
        )
        .then((rec) => {
          written = p.step;
          emit({ type: 'progress_written', jobId: msg.job_id, step: p.step, cancelRequested: rec.cancel_requested });
          if (rec.cancel_requested || rec.status === 'canceled') abort('cancel');
          else if (rec.attempts !== attempt || isTerminal(rec.status)) abort('lease_lost');
        })
        .catch((error) => log.warn('progress write failed (skipped)', { job_id: msg.job_id, owner: msg.owner, error: describe(error) }))
        .finally(() => {
          inflight = undefined;
          // The interval counts from the end of a write: with slow (fsynced) writes, back-to-back
          // rewrites would leave a concurrent cancel's read stale at every attempt.
          lastWriteAt = clock.now();
          schedule();
        });
    };
    const schedule = () => {
      if (closed || inflight || trailing || !latest || latest.step === written) return;
      const wait = lastWriteAt + progressIntervalMs - clock.now();
      if (wait <= 0) write();
      else trailing = setTimeout(write, wait);
    };
    return {
      get latest() {
        return latest;
      },
      report: (p: SynthesisProgress) => {
        latest = p;
        emit({ type: 'progress', jobId: msg.job_id, step: p.step, total: p.total });
        schedule();
      },
      async close() {
        closed = true;
        clearTimeout(trailing);
        await inflight;
      },
    };
  }

  // ------------------------------------------------------------ poll loop

  let lastSweep = clock.now();
  /**
   * The first sweep comes soon after the start, not a whole period later: a server restarted after its
   * runs were killed finds their letters moved at its first receives, and a crash-looping one (each run
   * shorter than the period) never swept at all, its jobs `running` through every restart.
   */
  let swept = false;
  /** DLQ messages already warned about (the sweep sees the same ones every time): warn once each. */
  const sweepWarned = new Set<string>();
  /** Marks jobs whose message sits in the DLQ but whose record is not terminal; leaves the message there. */
  async function sweepDeadLetters(): Promise<void> {
    const dlq = queue.deadLetter;
    if (!dlq) return;
    // Batches of 10, each kept hidden until the sweep's end, so that the next batch holds other letters:
    // one batch released at once came back as the same 10 oldest on every sweep (the local queue delivers
    // oldest first), and a job whose letter came 11th was never settled.
    const seen: ReceivedMessage[] = [];
    try {
      while (seen.length < DEAD_LETTER_SWEEP_MAX) {
        const batch = await dlq.receive({ max: 10, waitSec: 0, visibilitySec: 60 });
        seen.push(...batch);
        if (batch.length < 10) break;
      }
    } catch (error) {
      log.warn('dead-letter sweep: receive failed', { error: describe(error) });
      if (seen.length === 0) return;
    }
    for (const m of seen) {
      try {
        const msg = parseQueueMessage(m.body);
        const job = await jobs.get(msg.owner, msg.job_id);
        // A job running under a live lease has a holder (a duplicate of its message was dead-lettered):
        // left alone; the holder ends it, and a later sweep finds it ended. Live by the holder's clock,
        // so a sweeping worker whose clock runs ahead does not fail a run that is going on.
        // Not when the lease is this very letter's delivery's: the queue moved the message because no one
        // kept it hidden, so that delivery is over (a live holder's heartbeat would now be refused, and it
        // stops), and the job would otherwise read `running` for up to two timeouts more, for nothing.
        const held = job !== null && runsUnderLiveLease(job) && job.lease_message_id !== m.messageId;
        if (job && !isTerminal(job.status) && !held) {
          const error = { code: 'retries_exhausted', message: deadLetteredMessage(job.attempts) };
          const rec = await markFailed(msg, error);
          // Its earlier attempts may have stored images (a worker killed after its uploads).
          await removeOrphans(rec);
          jobEnded(msg);
          emit({ type: 'dead_lettered', messageId: m.messageId, reason: 'swept' });
          log.error(`dead-letter sweep: job marked ${rec.status}`, { job_id: msg.job_id, owner: msg.owner, message_id: m.messageId });
        }
      } catch (error) {
        // Malformed messages (ValidationError) and corrupt job documents are why such messages are in
        // the DLQ in the first place: nothing to settle, nothing new to say on every sweep.
        if (error instanceof ValidationError || error instanceof CorruptDocumentError) {
          log.debug('dead-letter sweep: message left as is', { ...about(m), error: describe(error) });
        } else if (!sweepWarned.has(m.messageId)) {
          if (sweepWarned.size >= 10_000) sweepWarned.clear();
          sweepWarned.add(m.messageId);
          log.warn('dead-letter sweep: could not settle a message (not repeated for this message)', { ...about(m), error: describe(error) });
        }
      } finally {
        // Keep it visible in the DLQ for the depth alarm and for inspection.
        await dlq.release(m.receipt).catch(() => undefined);
      }
    }
  }

  async function run(): Promise<void> {
    if (deps.warmUp && !stopping) {
      setState('warming');
      const t0 = clock.now();
      const ac = new AbortController();
      const limitMs = config.warmUpTimeoutMs ?? DEFAULT_WARM_UP_TIMEOUT_MS;
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        deps.warmUp(ac.signal).then(
          () => 'done' as const,
          (error: unknown) => {
            if (ac.signal.aborted) return 'ended' as const;
            // The device cannot run anything: every job taken would fail on it. On a GPU, the default
            // model failing its run at the default size says the same (out of memory aside).
            if (isMachineFailure(error) || (config.device === 'cuda' && isUnexplainedRunFailure(error))) unhealthy('warm_up', { device: config.device ?? 'cpu', error: describe(error) });
            else log.warn(/^unknown model /.test((error as Error | undefined)?.message ?? '') ? 'warm-up failed: the default model does not exist; requests that name no model are refused until it does (a bundle in the models folder, or clipag models push)' : 'warm-up failed; the first job pays the cold start', { error: describe(error) });
            return 'failed' as const;
          },
        ),
        new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), limitMs))),
        new Promise<'ended'>((resolve) => (endWarmUp = () => resolve('ended'))),
      ]);
      clearTimeout(timer);
      endWarmUp = undefined;
      ac.abort(); // whatever is still running of it stops at its next step
      if (outcome === 'done') log.info('warmed up', { ms: clock.now() - t0 });
      if (outcome === 'timeout') log.warn('warm-up took longer than its limit; polling without it', { limitMs });
    }
    /** Receive failures in a row that count toward queue_unreachable. */
    let failures = 0;
    /** Receive failures in a row of any kind: the back-off doubles with each. */
    let failedInARow = 0;
    /** While receives fail on the server's disk or file table (ENOSPC, EROFS, EMFILE, …): since when, how often, when last said. */
    let exhaustion: { code: string; since: number; failures: number; saidAt: number } | undefined;
    const sweepMs = config.deadLetterSweepMs ?? 60_000;
    while (!stopping) {
      if (sweepMs > 0 && clock.now() - lastSweep >= (swept ? sweepMs : Math.min(sweepMs, FIRST_DEAD_LETTER_SWEEP_MS))) {
        lastSweep = clock.now();
        swept = true;
        await sweepDeadLetters();
      }
      setState('polling');
      let messages: ReceivedMessage[];
      try {
        messages = await queue.receive({ max: 1, waitSec: config.receiveWaitSec, visibilitySec });
        failures = 0;
        failedInARow = 0;
        if (exhaustion) {
          log.info('receiving again: the disk or file table that refused is usable; taking jobs', { code: exhaustion.code, failures: exhaustion.failures, since: new Date(exhaustion.since).toISOString() });
          exhaustion = undefined;
        }
      } catch (error) {
        failedInARow++;
        emit({ type: 'poll_error', error });
        const exhausted = config.storageOnThisDisk ? exhaustedResource(error) : undefined;
        if (exhausted) {
          // Local mode's queue writes each delivery (and its lock) into the data folder: a full or
          // read-only disk, or a file table out of descriptors, fails the receive, not the queue. It
          // passes once an operator frees space, and giving up would stop `clipag serve`, API and all,
          // for good. So it does not count toward queue_unreachable: the worker backs off and keeps
          // trying, and says so at once and then every few minutes, not on every poll. (In AWS an
          // EMFILE under an SQS error is this task leaking descriptors: it counts, and ECS replaces it.)
          const now = clock.now();
          if (exhaustion?.code !== exhausted.code) exhaustion = { code: exhausted.code, since: now, failures: 0, saidAt: -Infinity };
          exhaustion.failures++;
          if (now - exhaustion.saidAt >= EXHAUSTION_REPEAT_MS) {
            exhaustion.saidAt = now;
            log.error(`cannot receive: ${exhausted.condition} (${exhausted.code}); no jobs are taken until it is usable again, and the worker keeps trying`, {
              code: exhausted.code,
              failures: exhaustion.failures,
              since: new Date(exhaustion.since).toISOString(),
              error: describe(error),
            });
          }
        } else {
          failures++;
          // A queue this task may never read (refused for good), or one that failed every receive for
          // minutes: a live task taking no jobs looks healthy to ECS, pages nobody, and counts toward
          // the fleet's size. It goes, and ECS replaces it (or its restarts show, and page).
          if (error instanceof NonRetryableError || failures >= maxReceiveFailures) {
            log.error('cannot receive from the queue; giving up', { failures, nonRetryable: error instanceof NonRetryableError, error: describe(error) });
            unhealthy('queue_unreachable', { failures });
            continue;
          }
        }
        const backoff = Math.min(MAX_BACKOFF_MS, (config.pollErrorBackoffMs ?? 1000) * 2 ** (failedInARow - 1));
        if (exhausted) log.debug('receive failed; backing off', { backoffMs: backoff, code: exhausted.code });
        else log.warn('receive failed; backing off', { backoffMs: backoff, error: describe(error) });
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, backoff);
          wakeBackoff = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wakeBackoff = undefined;
        continue;
      }
      const receivedAt = clock.now();
      for (const m of messages) {
        if (stopping) {
          // Received while stopping: give it straight back, without spending a delivery.
          await requeue(m, 'drain');
          continue;
        }
        setState('running');
        // Protected for the longest a job may take (its time limit, else 2 h) plus a margin for the
        // uploads; cleared as soon as the message is settled.
        await protection.protect(((jobTimeoutSec ?? 7200) + 300) / 60);
        try {
          if (stopping) {
            // stop() came while the protection call was in flight: do not start the job.
            await requeue(m, 'drain');
            continue;
          }
          await handle(m, receivedAt);
        } catch (error) {
          // handle() settles every path itself; reaching here is a bug. Never take the process down.
          log.error('unexpected error handling a message', { ...about(m), error: describe(error) });
        } finally {
          await protection.unprotect();
        }
        if (stopping) setState('draining');
      }
    }
  }

  return {
    get state() {
      return state;
    },
    start() {
      if (loop || stopping) return;
      log.info('worker starting', { visibilitySec, maxReceives: config.maxReceives, receiveWaitSec: config.receiveWaitSec, jobTimeoutSec, maxSteps });
      loop = run().catch((error) => unhealthy('poll_loop_crashed', { error: describe(error) }));
    },
    stop() {
      if (!stopped) {
        stopping = true;
        if (state !== 'idle') setState('draining');
        current?.abort('drain');
        wakeBackoff?.();
        endWarmUp?.();
        stopped = (async () => {
          await loop;
          // Webhooks of jobs that ended here: each attempt is bounded, and so is the wait; an unsent
          // one is the sweep's.
          await deps.webhooks?.drain();
          setState('stopped');
          log.info('worker stopped');
        })();
      }
      return stopped;
    },
  };
}
