/**
 * Typed errors shared by the API and the worker.
 *
 * Every error carries a stable machine-readable `code` (part of the public API
 * contract, never reworded), an HTTP status hint for the API layer, and a
 * `retryable` flag the worker uses to decide between releasing a message
 * (retry later) and failing the job for good.
 */

import { isListedErrorCode } from './error-codes.ts';

export interface ClipagErrorOptions {
  code?: string;
  param?: string;
  cause?: unknown;
}

export abstract class ClipagError extends Error {
  abstract readonly status: number;
  abstract readonly retryable: boolean;
  readonly code: string;
  /** The request field the error is about, when there is one (e.g. `width`). */
  readonly param: string | undefined;

  protected constructor(defaultCode: string, message: string, options: ClipagErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? defaultCode;
    this.param = options.param;
  }
}

export class ValidationError extends ClipagError {
  readonly status = 400;
  readonly retryable = false;
  constructor(message: string, param?: string, options: Omit<ClipagErrorOptions, 'param'> = {}) {
    super('validation_error', message, { ...options, param });
  }
}

export class AuthError extends ClipagError {
  readonly status = 401;
  readonly retryable = false;
  constructor(message = 'missing, invalid or revoked API key', options: ClipagErrorOptions = {}) {
    super('unauthorized', message, options);
  }
}

export class NotFoundError extends ClipagError {
  readonly status = 404;
  readonly retryable = false;
  constructor(message = 'not found', options: ClipagErrorOptions = {}) {
    super('not_found', message, options);
  }
}

export class ConflictError extends ClipagError {
  readonly status = 409;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('conflict', message, options);
  }
}

/** What was there is gone for good (410): a deleted or expired image. Retrying does not bring it back. */
export class GoneError extends ClipagError {
  readonly status = 410;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('gone', message, options);
  }
}

/** A conditional write lost: the object exists already, or its version/etag moved on. */
export class PreconditionFailedError extends ClipagError {
  readonly status = 412;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('precondition_failed', message, options);
  }
}

export class PayloadTooLargeError extends ClipagError {
  readonly status = 413;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('payload_too_large', message, options);
  }
}

/**
 * The account has spent what it allowed itself this month (402, ADR 0033): retrying does not help
 * until the limit is raised or removed, or the next UTC month begins.
 */
export class SpendLimitReachedError extends ClipagError {
  readonly status = 402;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('spend_limit_reached', message, options);
  }
}

/** The caller is at a limit of its own (429): it may try again after `retryAfterSec`. */
export class TooManyRequestsError extends ClipagError {
  readonly status = 429;
  readonly retryable = true;
  readonly retryAfterSec: number;
  constructor(message: string, options: ClipagErrorOptions & { retryAfterSec?: number } = {}) {
    super('too_many_requests', message, options);
    this.retryAfterSec = options.retryAfterSec ?? 30;
  }
}

/** Transient: throttling, a dependency timing out, a lost lease. Try again later. */
export class RetryableError extends ClipagError {
  readonly status = 503;
  readonly retryable = true;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('unavailable', message, options);
  }
}

/** Permanent: retrying cannot help (bad model bundle, corrupt input, misconfiguration). */
export class NonRetryableError extends ClipagError {
  readonly status = 500;
  readonly retryable = false;
  constructor(message: string, options: ClipagErrorOptions = {}) {
    super('internal_error', message, options);
  }
}

/**
 * A stored document (job record, API key record, idempotency claim) that cannot be read back: not
 * UTF-8 JSON, or not the schema's shape. Retrying cannot fix it. The API answers 409 `corrupt_record`
 * (the resource exists but is in a state the server cannot serve; a 500 would invite endless
 * retries), the worker dead-letters the job's message, listings skip the document. `key` names the
 * blob for logs; the public message never includes it or the parse details.
 */
export class CorruptDocumentError extends ClipagError {
  readonly status = 409;
  readonly retryable = false;
  readonly key: string;
  readonly detail: string;
  constructor(key: string, detail: string, options: ClipagErrorOptions = {}) {
    super('corrupt_record', 'the stored record for this resource is unreadable; contact the operator with the request id', options);
    this.key = key;
    this.detail = detail;
  }
}

/**
 * A stored document a newer clipag wrote (a version, a field or a value this one does not know; ADR
 * 0030): not damage, and not this version's to act on. The API answers it as a newer job record,
 * 503 `unavailable` with the newer-version Retry-After, and a version that reads it answers the retry.
 */
export class NewerDocumentError extends CorruptDocumentError {
  constructor(key: string, detail: string, publicMessage: string, options: ClipagErrorOptions = {}) {
    super(key, detail, options);
    this.message = publicMessage;
  }
}

/**
 * An error as an operator's tool shows it: a corrupt record by its storage key and what is wrong with
 * it (the API's wording, "contact the operator", is for callers).
 */
export function operatorMessage(error: unknown): string {
  if (error instanceof CorruptDocumentError) return `the stored record ${error.key} does not read (${error.detail})`;
  return error instanceof Error ? error.message : String(error);
}

/** Configuration is invalid; lists every problem at once so an operator fixes them in one go. */
export class ConfigError extends ClipagError {
  readonly status = 500;
  readonly retryable = false;
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('config_error', `invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

export function isClipagError(error: unknown): error is ClipagError {
  return error instanceof ClipagError;
}

/** Whether an arbitrary thrown value should be retried. Unknown errors are treated as retryable
 * only when they look like transient I/O; everything else is permanent so a poison job cannot loop. */
export function isRetryable(error: unknown): boolean {
  if (error instanceof ClipagError) return error.retryable;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && ['ECONNRESET', 'ETIMEDOUT', 'ECONNREFUSED', 'EPIPE', 'EAI_AGAIN'].includes(code);
}

/**
 * The server's own disk and file table refusing: full (ENOSPC, EDQUOT), read-only (EROFS), out of
 * file descriptors (EMFILE, ENFILE). Local mode's adapters throw these as Node raised them. None is
 * the request's fault and none is a bug: each passes once an operator frees space (or remounts the
 * disk), or once a burst of open files is over. So the API answers 503 `unavailable` with Retry-After
 * (not a 500, which the README calls a bug), and the worker keeps polling (the queue is not gone).
 * `condition` is what a caller is told (no path); `retryAfterSec`: a disk needs an operator, a burst
 * of open files passes in seconds.
 */
const EXHAUSTED_RESOURCES: Readonly<Record<string, { condition: string; retryAfterSec: number }>> = {
  ENOSPC: { condition: "the server's disk is full", retryAfterSec: 30 },
  EDQUOT: { condition: "the server's disk quota is used up", retryAfterSec: 30 },
  EROFS: { condition: "the server's data folder is on a read-only file system", retryAfterSec: 30 },
  EMFILE: { condition: 'the server has too many open files', retryAfterSec: 5 },
  ENFILE: { condition: "the server's system has too many open files", retryAfterSec: 5 },
};

export interface ExhaustedResource {
  /** The errno code: ENOSPC, EDQUOT, EROFS, EMFILE or ENFILE. */
  code: string;
  condition: string;
  retryAfterSec: number;
}

/**
 * Whether `error`, or one of its causes (an adapter or the worker may wrap it: five links at most, so a
 * cyclic chain ends too), is the server's disk or file table refusing (EXHAUSTED_RESOURCES); else undefined.
 */
export function exhaustedResource(error: unknown): ExhaustedResource | undefined {
  let at: unknown = error;
  for (let depth = 0; depth < 5 && at !== null && typeof at === 'object'; depth++) {
    const code = (at as { code?: unknown }).code;
    const known = typeof code === 'string' && Object.hasOwn(EXHAUSTED_RESOURCES, code) ? EXHAUSTED_RESOURCES[code] : undefined;
    if (known && typeof code === 'string') return { code, ...known };
    at = (at as { cause?: unknown }).cause;
  }
  return undefined;
}

export interface ErrorEnvelopeBody {
  error: { code: string; message: string; param: string | null; request_id: string };
}

/**
 * The one error shape of every 4xx/5xx response. Unknown errors never leak their message. A 5xx whose
 * code the API does not document (API_ERROR_CODES: a NonRetryableError's `config_error`, say) is
 * answered as the documented one: 500 internal_error, or 503 unavailable where retrying helps; its own
 * code is for the log.
 */
export function toErrorEnvelope(error: unknown, requestId: string): { status: number; body: ErrorEnvelopeBody } {
  if (error instanceof ClipagError) {
    const internal = error.status >= 500;
    const documented = !internal || isListedErrorCode(error.status, error.code);
    const [status, code] = documented ? [error.status, error.code] : error.retryable ? [503, 'unavailable'] : [500, 'internal_error'];
    return {
      status,
      body: {
        error: {
          code,
          message: internal && !(error instanceof RetryableError) ? 'internal error' : error.message,
          param: error.param ?? null,
          request_id: requestId,
        },
      },
    };
  }
  return {
    status: 500,
    body: { error: { code: 'internal_error', message: 'internal error', param: null, request_id: requestId } },
  };
}
