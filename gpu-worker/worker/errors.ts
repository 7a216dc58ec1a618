// Retry classes for the worker: a failure either releases the message for another attempt
// (retryable) or fails the job for good with a reason (permanent). See docs/adr/0005.

import { ClipagError, PreconditionFailedError, isRetryable } from '../../shared/errors.ts';
import { EngineError } from '../engine/errors.ts';

/**
 * Engine failures that depend on the machine, not the request: an execution provider that did not
 * load, a session run that onnxruntime rejected (e.g. device out of memory), an engine closed under
 * the job. Every other engine code (invalid_input, invalid_model, invalid_weights, …) is about the
 * request or the bundle and cannot succeed on a retry. Retries are bounded by the receive limit.
 */
const RETRYABLE_ENGINE_CODES = new Set(['runtime_unavailable', 'runtime_failed', 'aborted']);

export type ErrorClass = 'retryable' | 'permanent';

export function classifyError(error: unknown): ErrorClass {
  if (error instanceof EngineError) return RETRYABLE_ENGINE_CODES.has(error.code) ? 'retryable' : 'permanent';
  // A conditional write that kept losing (job store contention) or a receipt that raced: try again later.
  if (error instanceof PreconditionFailedError) return 'retryable';
  return isRetryable(error) ? 'retryable' : 'permanent';
}

/** The `{code, message}` stored on a failed job. Unknown errors never leak their text to the caller. */
export function jobErrorOf(error: unknown): { code: string; message: string } {
  if (error instanceof EngineError) return { code: error.code, message: error.message };
  if (error instanceof ClipagError && error.status < 500) return { code: error.code, message: error.message };
  if (error instanceof ClipagError) return { code: error.code, message: 'internal error while running the job' };
  return { code: 'internal_error', message: 'internal error while running the job' };
}

export function describe(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    return { name: error.name, message: error.message, code: (error as { code?: unknown }).code, stack: error.stack?.split('\n').slice(0, 6).join('\n') };
  }
  return { value: String(error) };
}
