import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { isListedErrorCode } from '../../shared/error-codes.ts';
import { numberRuleMessage } from '../../shared/schemas/field-hints.ts';
import { AuthError, ClipagError, NewerDocumentError, PreconditionFailedError, RetryableError, TooManyRequestsError, ValidationError, exhaustedResource, toErrorEnvelope } from '../../shared/errors.ts';
import type { ErrorEnvelopeBody, ExhaustedResource } from '../../shared/errors.ts';
import { NewerJobRecordError } from '../../shared/jobstore.ts';
import { IdempotencyInProgressError, NewerClaimError } from '../idempotency.ts';
import type { AppEnv, AppLogEntry } from '../types.ts';
import { clientRequestId } from './request-id.ts';

/** An HTTP-level error with an explicit public code (405, 415, malformed JSON, ...). */
export class HttpError extends ClipagError {
  readonly retryable = false;
  constructor(
    readonly status: number,
    code: string,
    message: string,
    param?: string,
  ) {
    super(code, message, { param });
  }
}

const HTTP_EXCEPTION_CODES: Record<number, string> = {
  400: 'invalid_json',
  404: 'not_found',
  405: 'method_not_allowed',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
};

/**
 * Retry-After of a job record or an Idempotency-Key claim a newer clipag wrote: a deploy under way serves it from the newer API
 * within minutes; a rollback that stays, not before the newer version is back. Either way, not every second.
 */
export const NEWER_RECORD_RETRY_AFTER_SEC = 30;

/**
 * Maps anything thrown to the one envelope; 5xx never leak internals, and no status and code pair
 * leaves that the table (shared/error-codes.ts) does not list.
 */
export function envelopeFor(error: unknown, requestId: string): { status: number; body: ErrorEnvelopeBody } {
  const envelope = listedEnvelopeFor(error, requestId);
  const { code } = envelope.body.error;
  if (envelope.status < 500 && !isListedErrorCode(envelope.status, code)) {
    // A 4xx no client was told of (a ConflictError without its code, say): a bug of ours, not the
    // caller's mistake. The 500 is logged at error with the error's own code (onError, requestLog).
    return { status: 500, body: { error: { code: 'internal_error', message: 'internal error', param: null, request_id: requestId } } };
  }
  return envelope;
}

function listedEnvelopeFor(error: unknown, requestId: string): { status: number; body: ErrorEnvelopeBody } {
  if (writtenByNewerVersion(error)) {
    // Written by a newer API or worker (ADR 0030): this version must neither act on it nor call it
    // damage (409 corrupt_record tells the caller to give up). A version that reads it answers the retry.
    return { status: 503, body: { error: { code: 'unavailable', message: error.message, param: null, request_id: requestId } } };
  }
  if (error instanceof PreconditionFailedError) {
    // A conditional write lost to another request, that no route turned into its own answer. Its
    // message names the storage key; the caller only needs to retry, as for the routes' own `busy`.
    return { status: 503, body: { error: { code: 'busy', message: 'the record is being updated by another request; retry', param: null, request_id: requestId } } };
  }
  if (error instanceof HTTPException && !(error instanceof ClipagError)) {
    const status = error.status;
    const code = HTTP_EXCEPTION_CODES[status] ?? (status >= 500 ? 'internal_error' : 'bad_request');
    const message = status === 400 ? 'request body is not valid JSON' : status >= 500 ? 'internal error' : error.message;
    return { status, body: { error: { code, message, param: null, request_id: requestId } } };
  }
  const exhausted = exhaustedResourceOf(error);
  if (exhausted) {
    // The server's own disk or file table, not the request and not a bug: the caller retries (with the
    // same Idempotency-Key, which completes whatever the failed request left), and is told why. The
    // operator's log line keeps the errno's own message, with its path.
    const message = `${exhausted.condition} (${exhausted.code}); retry later`;
    return { status: 503, body: { error: { code: 'unavailable', message, param: null, request_id: requestId } } };
  }
  const envelope = toErrorEnvelope(error, requestId);
  if (error instanceof RetryableError && envelope.body.error.code === 'unavailable') {
    // Adapter errors carry SDK messages; callers only need to know to retry.
    envelope.body.error.message = 'a dependency is temporarily unavailable; retry later';
  }
  return envelope;
}

/** A job record or an Idempotency-Key claim a newer clipag wrote: the same deploy in progress, the same wait. */
function writtenByNewerVersion(error: unknown): error is NewerJobRecordError | NewerClaimError | NewerDocumentError {
  return error instanceof NewerJobRecordError || error instanceof NewerClaimError || error instanceof NewerDocumentError;
}

/**
 * The server's disk or file table refusing (ENOSPC, EROFS, EMFILE, …; also as the cause of an error
 * that wraps it), unless the error is a 4xx that answers for itself.
 */
function exhaustedResourceOf(error: unknown): ExhaustedResource | undefined {
  return error instanceof ClipagError && error.status < 500 ? undefined : exhaustedResource(error);
}

export function errorResponse(c: Context<AppEnv>, error: unknown): Response {
  const { status, body } = envelopeFor(error, c.get('requestId') ?? 'unknown');
  c.set('errorCode', body.error.code);
  // Each by the status answered, not the error's own: an unlisted 4xx is answered 500 (envelopeFor).
  if (status === 401 && error instanceof AuthError) c.header('WWW-Authenticate', 'Bearer realm="clipag"');
  if (status === 503) c.header('Retry-After', String(writtenByNewerVersion(error) ? NEWER_RECORD_RETRY_AFTER_SEC : (exhaustedResourceOf(error)?.retryAfterSec ?? 1)));
  if (status === 429 && error instanceof TooManyRequestsError) c.header('Retry-After', String(error.retryAfterSec));
  // The first request with the key is still running (its job a moment away), or died (until its claim is stale).
  if (body.error.code === 'idempotency_in_progress') c.header('Retry-After', String(error instanceof IdempotencyInProgressError ? error.retryAfterSec : 1));
  if (error instanceof HttpError && error.status === 405 && allowHeader.has(error)) c.header('Allow', allowHeader.get(error));
  // RFC 9110 §12.5.3: a 415 for a content coding says which codings would do.
  if (error instanceof HttpError && error.status === 415 && error.param === 'Content-Encoding') c.header('Accept-Encoding', 'identity');
  return c.json(body, status as ContentfulStatusCode);
}

const allowHeader = new WeakMap<HttpError, string>();
export function methodNotAllowed(allowed: string[]): HttpError {
  // HEAD answers wherever GET does (Hono runs the GET route without the body), so it is named too.
  // One list for the message and Allow, so the two never disagree.
  const methods = [...allowed, ...(allowed.includes('GET') && !allowed.includes('HEAD') ? ['HEAD'] : [])].join(', ');
  const error = new HttpError(405, 'method_not_allowed', `method not allowed; use ${methods}`);
  allowHeader.set(error, methods);
  return error;
}

/**
 * The one onError: the envelope for every thrown error, and a log line for 5xx, with what an operator
 * needs to follow it up: the request's id (in AWS also the gateway's, which its access log joins to
 * the caller's IP), the account once the key was read, and the caller's own X-Request-Id if it sent one.
 * A /v1 request's 5xx is logged by the request-log middleware instead, on its one line per request
 * (after this handler has made the envelope), so it is never logged twice.
 */
export function onError(log: (entry: AppLogEntry) => void): ErrorHandler<AppEnv> {
  return function onErrorHandler(error, c) {
    const response = errorResponse(c, error);
    if (response.status >= 500 && !c.get('requestLinePending')) {
      log({
        level: 'error',
        msg: 'request failed',
        request_id: c.get('requestId'),
        owner: c.get('owner'),
        client_request_id: clientRequestId(c),
        method: c.req.method,
        path: c.req.path,
        status: response.status,
        ...failureDetail(error),
      });
    }
    return response;
  };
}

/** How many stack frames a 5xx's line keeps: enough to place the bug, not the whole framework below it. */
const STACK_FRAMES = 10;

/**
 * What a 5xx's log line says of its error (never the answer, which stays generic): the error's own
 * code (the answer may not show it: a config_error is answered as internal_error), `Name: message`,
 * the first frames of its stack (source-mapped in Lambda, NODE_OPTIONS=--enable-source-maps: the
 * bundle is minified), its cause, and an AWS SDK error's HTTP status and request id (from the error or
 * anywhere down its causes: the adapters wrap the SDK's), which AWS support asks for.
 */
export function failureDetail(error: unknown): Record<string, unknown> {
  if (error === undefined) return {};
  const detail: Record<string, unknown> = {
    ...(error instanceof ClipagError ? { code: error.code } : {}),
    error: describeError(error),
  };
  if (error instanceof Error) {
    const frames = (error.stack ?? '')
      .split('\n')
      .filter((line) => /^\s*at /.test(line))
      .slice(0, STACK_FRAMES)
      .map((line) => line.trim());
    if (frames.length > 0) detail.stack = frames.join('\n');
    if (error.cause !== undefined) detail.cause = describeError(error.cause);
  }
  const metadata = awsMetadata(error);
  if (metadata?.httpStatusCode !== undefined) detail.aws_http_status = metadata.httpStatusCode;
  if (metadata?.requestId !== undefined) detail.aws_request_id = metadata.requestId;
  return detail;
}

/** `Name: message` of an Error; anything else as text, never throwing itself (String() does on an object without a prototype). */
export function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  try {
    return String(error);
  } catch {
    return Object.prototype.toString.call(error);
  }
}

/** The `$metadata` of the first AWS SDK error in `error`'s cause chain (five links at most, so a cyclic chain ends too). */
function awsMetadata(error: unknown): { httpStatusCode?: number; requestId?: string } | undefined {
  let at: unknown = error;
  for (let depth = 0; depth < 5 && at !== null && typeof at === 'object'; depth++) {
    const metadata = (at as { $metadata?: unknown }).$metadata;
    if (metadata !== null && typeof metadata === 'object') {
      const { httpStatusCode, requestId } = metadata as { httpStatusCode?: unknown; requestId?: unknown };
      return {
        ...(typeof httpStatusCode === 'number' ? { httpStatusCode } : {}),
        ...(typeof requestId === 'string' ? { requestId } : {}),
      };
    }
    at = (at as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Unknown route → 404; a known path with the wrong method → 405 with Allow. */
export function notFound(routes: ReadonlyArray<{ pattern: RegExp; methods: string[] }>): NotFoundHandler<AppEnv> {
  return function notFoundHandler(c) {
    const match = routes.find((r) => r.pattern.test(c.req.path));
    if (match) return errorResponse(c, methodNotAllowed(match.methods));
    // The address a newcomer opens first, and a trailing slash on a path that exists without it.
    const trimmed = c.req.path.length > 1 ? c.req.path.replace(/\/+$/, '') : c.req.path;
    const hint =
      c.req.path === '/'
        ? ': the API is under /v1 (GET /v1/models, POST /v1/generations …); GET /openapi.json describes it'
        : trimmed !== c.req.path && routes.some((r) => r.pattern.test(trimmed))
          ? `: without the trailing slash, ${trimmed}`
          : '';
    return errorResponse(c, new HttpError(404, 'not_found', `no route for ${c.req.method} ${c.req.path}${hint}`));
  };
}

/** zod-openapi's defaultHook: validation failures become a 400 envelope naming the first bad field. */
export function validationHook(
  result: { success: true; data: unknown; target: string } | { success: false; error: { issues: ReadonlyArray<ZodIssueLike> }; target: string; data?: unknown },
): void {
  if (result.success) return;
  const issues = result.error.issues;
  const first = issues[0];
  const paramOf = (issue: ZodIssueLike): string | undefined => {
    const path = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys' && issue.keys?.length) return path ? `${path}.${issue.keys[0]}` : issue.keys[0];
    return path || undefined;
  };
  // One issue per field: zod reports a seed of 1e30 twice (over the safe-integer bound and over the
  // field's own), and only the field's rule means anything to a caller.
  const byField = new Map<string, ZodIssueLike>();
  for (const issue of issues) {
    const p = paramOf(issue) ?? '';
    const kept = byField.get(p);
    if (!kept || (isSafeIntegerBound(kept) && !isSafeIntegerBound(issue))) byField.set(p, issue);
  }
  const message = [...byField.values()]
    .slice(0, 3)
    .map((issue) => {
      const p = paramOf(issue);
      const missing = p ? missingField(issue, p, result.data) : undefined;
      if (missing) return missing;
      // A rule that names its field itself ("limit must be …") is not prefixed with it again.
      // Only zod's own words are replaced: a schema's hand-written message says more ("from 1 to 100").
      const text = (/^(Too small|Too big|Invalid input): /.test(issue.message) ? numberRuleMessage(issue) : undefined) ?? issue.message;
      return p && !text.startsWith(`${p} `) ? `${p}: ${text}` : text;
    })
    .join('; ');
  throw new ValidationError(message || `invalid ${result.target}`, first ? paramOf(first) : undefined);
}

/**
 * A required field the request leaves out, said so: "bytes is required (number)", where zod words it
 * in JavaScript's terms ("expected number, received undefined"; JSON has no undefined) or names only
 * the value it wanted (a literal or an enum). Whether the field is absent is read from what was
 * validated (the JSON body, the query, the headers), not from zod's wording; undefined when it is there.
 */
function missingField(issue: ZodIssueLike, param: string, validated: unknown): string | undefined {
  if (!['invalid_type', 'invalid_value', 'invalid_union'].includes(issue.code) || !isAbsent(validated, issue.path)) return undefined;
  const values = Array.isArray(issue.values) ? issue.values.map((v) => JSON.stringify(v)) : [];
  const expected =
    issue.code === 'invalid_type' && typeof issue.expected === 'string' ? issue.expected : issue.code === 'invalid_value' && values.length > 0 ? (values.length === 1 ? values[0] : `one of ${values.join(', ')}`) : undefined;
  return `${param} is required${expected ? ` (${expected})` : ''}`;
}

/** Whether `path` names a member its object lacks (or holds as undefined): false when the path does not lead to an object. */
function isAbsent(validated: unknown, path: ReadonlyArray<PropertyKey>): boolean {
  if (path.length === 0) return false;
  let at = validated;
  for (const key of path.slice(0, -1)) {
    if (at === null || typeof at !== 'object') return false;
    at = (at as Record<PropertyKey, unknown>)[key];
  }
  if (at === null || typeof at !== 'object') return false;
  const last = path[path.length - 1]!;
  return !Object.prototype.hasOwnProperty.call(at, last) || (at as Record<PropertyKey, unknown>)[last] === undefined;
}

/** zod's `.int()` bound (±2^53 − 1), which it reports beside a field's own bound. */
function isSafeIntegerBound(issue: ZodIssueLike): boolean {
  return (issue.code === 'too_big' || issue.code === 'too_small') && Math.abs(Number(issue.maximum ?? issue.minimum)) === Number.MAX_SAFE_INTEGER;
}

interface ZodIssueLike {
  maximum?: unknown;
  minimum?: unknown;
  /** too_small / too_big: "number", "string", "array"…; and whether the bound itself is allowed. */
  origin?: unknown;
  inclusive?: unknown;
  code: string;
  path: ReadonlyArray<PropertyKey>;
  message: string;
  keys?: string[];
  /** invalid_type's expected type ("number"); invalid_value's expected values (a literal's, an enum's). */
  expected?: unknown;
  values?: ReadonlyArray<unknown>;
}
