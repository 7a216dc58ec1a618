// Retry classes for the worker: a failure either releases the message for another attempt
// (retryable) or fails the job for good with a reason (permanent). See docs/adr/0005.

import { isJobErrorCode } from '../../shared/error-codes.ts';
import { ClipagError, PreconditionFailedError, isRetryable } from '../../shared/errors.ts';
import { EngineError } from '../engine/errors.ts';
import { isDeviceFault, isOutOfMemory } from '../engine/runtime/session.ts';

/**
 * Engine failures that depend on the machine, not the request: an execution provider that did not
 * load or a device that failed (runtime_unavailable), a session run that onnxruntime rejected (e.g.
 * device out of memory), an engine closed under the job. Every other engine code (invalid_input, invalid_model, invalid_weights, …) is about the
 * request or the bundle and cannot succeed on a retry. Retries are bounded by the receive limit.
 */
const RETRYABLE_ENGINE_CODES = new Set(['runtime_unavailable', 'runtime_failed', 'aborted']);
/**
 * Engine codes that are permanent whatever else changes: `numerical_error` (a NaN/Inf loss) is a
 * property of the spec, model and seed, so every redelivery would repeat it. Listed explicitly (and
 * matched by string too, for an error that lost its class crossing a thread boundary) so that a
 * future widening of the retryable set cannot make them loop.
 */
const PERMANENT_ENGINE_CODES = new Set(['numerical_error']);

export type ErrorClass = 'retryable' | 'permanent';

/**
 * The worker could not store a finished run (its images, frames or final record) even after retrying
 * in place: S3 refused (403 from a broken IAM, bucket or KMS policy) or stayed down. That says
 * something about the deployment or the machine, not the request: the job is retried, not failed, and
 * it counts against this worker's health.
 */
export class StorageFailure extends Error {
  override readonly name = 'StorageFailure';
  /** The retries stopped because the lease was gone, not because storage kept failing: no mark against the machine. */
  readonly leaseLost: boolean;
  constructor(readonly what: string, override readonly cause: unknown, opts: { leaseLost?: boolean } = {}) {
    super(`could not store ${what}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.leaseLost = opts.leaseLost ?? false;
  }
}

/**
 * Errors of the machine's own disk and file table (a full model cache, a read-only or failing
 * volume, too many open files): the request is not at fault, and another worker would run it.
 */
const MACHINE_SYSTEM_CODES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'EMFILE', 'ENFILE']);

/**
 * A failure of this machine, not of the job: the execution provider does not load, the device fails
 * its runs (a sticky CUDA error, an ECC or Xid fault: session.ts makes those runtime_unavailable, and
 * a runtime_failed whose message shows one, such as an engine thread's wrapped error, counts too),
 * every engine thread has died, its disk is full or failing, or its storage writes keep failing.
 * Another worker might run the job; this one will fail every job it takes.
 */
export function isMachineFailure(error: unknown): boolean {
  if (error instanceof StorageFailure) return !error.leaseLost;
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && MACHINE_SYSTEM_CODES.has(code)) return true;
  if (!(error instanceof EngineError)) return false;
  return error.code === 'runtime_unavailable' || (error.code === 'runtime_failed' && isDeviceFault(error.message));
}

/**
 * A run that onnxruntime rejected for a reason its message does not name: a job's own error (shapes
 * a model cannot take), or a device fault in a form isDeviceFault does not know. Out of memory is the
 * job's (ADR 0023) and is not one. The worker counts these across different jobs: several jobs in a
 * row failing so on one machine say the machine is broken (worker.ts, `run_failures`).
 */
export function isUnexplainedRunFailure(error: unknown): boolean {
  return error instanceof EngineError && error.code === 'runtime_failed' && !isOutOfMemoryFailure(error) && !isMachineFailure(error);
}

export function classifyError(error: unknown): ErrorClass {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && PERMANENT_ENGINE_CODES.has(code)) return 'permanent';
  if (isMachineFailure(error) || error instanceof StorageFailure) return 'retryable';
  if (error instanceof EngineError) return RETRYABLE_ENGINE_CODES.has(error.code) ? 'retryable' : 'permanent';
  // A conditional write that kept losing (job store contention) or a receipt that raced: try again later.
  if (error instanceof PreconditionFailedError) return 'retryable';
  return isRetryable(error) ? 'retryable' : 'permanent';
}

/**
 * Absolute filesystem paths (POSIX `/a/b…` with at least two segments, `file://` URLs, Windows
 * `C:\a\b`). API paths (`/v1/…`) and the path part of http(s) URLs are left alone.
 */
const ABSOLUTE_PATH = /file:\/\/[^\s'"`]+|(?<![\w.:/~-])\/(?!v1\/)(?:[^\s'"`,;:()[\]{}<>/\\]+\/)+[^\s'"`,;:()[\]{}<>/\\]*|\b[A-Za-z]:\\(?:[^\s'"`,;:()[\]{}<>\\]+\\)*[^\s'"`,;:()[\]{}<>\\]*/g;

/** Replaces absolute server paths in a message with `<path>/<basename>`: callers learn which file, not where it lives. */
export function redactPaths(message: string): string {
  return message.replace(ABSOLUTE_PATH, (path) => {
    const base = path.split(/[\\/]/).filter(Boolean).pop() ?? '';
    return `<path>/${base}`;
  });
}

/** What a failed job says of an error whose text is not the caller's to read. */
export const INTERNAL_JOB_ERROR_MESSAGE = 'internal error while running the job';

/**
 * An attempt's failure as the worker's `job finished` line and events name it: an engine error's or a
 * ClipagError's own code (config_error, runtime_failed: what operators count failures by), with its
 * message when it is an engine or 4xx one (absolute paths redacted; the worker's log line, via
 * describe(), keeps the full message). Unknown errors never leak their text. Not what a failed job
 * carries: jobErrorOf.
 */
export function attemptErrorOf(error: unknown): { code: string; message: string } {
  if (error instanceof EngineError) return { code: error.code, message: redactPaths(error.message) };
  if (error instanceof ClipagError && error.status < 500) return { code: error.code, message: redactPaths(error.message) };
  if (error instanceof ClipagError) return { code: error.code, message: INTERNAL_JOB_ERROR_MESSAGE };
  return { code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE };
}

/**
 * The `{code, message}` stored on a failed job (and so shown to the API caller): attemptErrorOf's when
 * its code is one a failed generation documents (JOB_ERROR_CODES), else `internal_error` with a generic
 * message. A code outside that table is a failure the worker does not know as the request's (a store's
 * `validation_error` about a record it built, a `config_error`): its own code and message would tell
 * the caller the wrong thing, and stay in the worker's log line.
 */
export function jobErrorOf(error: unknown): { code: string; message: string } {
  const attempt = attemptErrorOf(error);
  return isJobErrorCode(attempt.code) ? attempt : { code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE };
}

/** An engine run or load that failed for want of device (or host) memory (session.ts isOutOfMemory). */
export function isOutOfMemoryFailure(error: unknown): boolean {
  return error instanceof EngineError && error.code === 'runtime_failed' && isOutOfMemory(error.message);
}

/**
 * What a job ends with when its last delivery failed with a retryable error. Out of memory is retried
 * (the model may fit another GPU, ADR 0023; a run that fails so frees the engine's idle graphs for
 * the next try), but one that still does not fit on its last delivery would fail so again: it ends
 * `out_of_memory`, which tells the caller to make the request smaller, not to submit it again.
 */
export function exhaustedJobErrorOf(error: unknown, attempts: number): { code: string; message: string } {
  const last = attemptErrorOf(error).message;
  if (isOutOfMemoryFailure(error)) {
    return { code: 'out_of_memory', message: `the run did not fit in the worker's memory on its last of ${attempts} attempts (${last}); the same request would fail so again: ask for a smaller size` };
  }
  return { code: 'retries_exhausted', message: `gave up after ${attempts} attempts; last error: ${last}` };
}

export function describe(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    return { name: error.name, message: error.message, code: (error as { code?: unknown }).code, stack: error.stack?.split('\n').slice(0, 6).join('\n') };
  }
  return { value: String(error) };
}
