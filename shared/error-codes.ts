/**
 * The API's error codes (`error.code` of the envelope): the one table that the OpenAPI document's
 * ErrorEnvelope, each operation's error descriptions (functions/routes/common.ts) and the README's
 * "HTTP errors" table are written from, or checked against (test/functions/openapi-conformance.test.ts).
 * A code is part of the public contract and is never reworded; codes may be added, so a client acts
 * on the HTTP status for one it does not know. A 5xx with any other code never leaves the API
 * (shared/errors.ts toErrorEnvelope): it is answered as 500 internal_error (503 unavailable where
 * retrying helps), its own code kept for the log.
 */
export interface ApiErrorCode {
  status: number;
  code: string;
  /** When it is answered. */
  meaning: string;
  /** What the caller does about it. */
  advice: string;
}

export const API_ERROR_CODES = [
  { status: 400, code: 'validation_error', meaning: 'a parameter, header or body field breaks a rule (an `init` upload that is not a usable image too), or a query parameter is one the operation does not take', advice: 'fix it; `param` names it' },
  { status: 400, code: 'invalid_json', meaning: 'the body is not JSON, or not UTF-8', advice: 'send a JSON body in UTF-8' },
  { status: 400, code: 'upload_not_found', meaning: "the `init` upload does not exist: never uploaded, expired, deleted, or another account's (`param` \"init\")", advice: 'upload the image again' },
  { status: 400, code: 'content_policy', meaning: 'a prompt the content policy refuses (`param` names it)', advice: 'change the prompt' },
  { status: 400, code: 'upload_interrupted', meaning: 'local mode: the client stopped sending a signed-URL upload mid-body', advice: 'send the upload again' },
  { status: 400, code: 'bad_request', meaning: 'any other malformed request (in local mode, also bytes that are not HTTP)', advice: 'fix the request' },
  { status: 401, code: 'unauthorized', meaning: 'a missing, malformed, unknown or revoked API key', advice: 'check the key' },
  { status: 403, code: 'forbidden', meaning: 'local mode: a signed link that is tampered with or expired', advice: 'ask for a fresh link' },
  { status: 404, code: 'not_found', meaning: "no such generation (also another account's id), or no such path", advice: 'check the id and the path' },
  { status: 405, code: 'method_not_allowed', meaning: 'the path exists, not with this method (`Allow` says which)', advice: 'use one of those' },
  { status: 409, code: 'idempotency_key_reused', meaning: 'the Idempotency-Key was used with another body', advice: 'a new key, or the first body' },
  { status: 409, code: 'idempotency_in_progress', meaning: "the key's first request is still being made", advice: 'retry after Retry-After seconds' },
  { status: 409, code: 'job_terminal', meaning: 'a cancel of a generation that already succeeded or failed', advice: 'nothing to cancel' },
  { status: 409, code: 'job_not_finished', meaning: "a delete of a queued or running generation, or a redelivery of its webhook (its event is sent when it ends)", advice: 'cancel it first, or wait for it to end' },
  { status: 409, code: 'no_webhook', meaning: 'a webhook redelivery for a generation with no event to send: it asked for no webhook, it was deleted, or its POST was answered 503', advice: 'nothing to redeliver; GET the generation instead' },
  { status: 409, code: 'corrupt_record', meaning: 'the stored record is unreadable', advice: 'retrying will not help: contact the operator with the request_id' },
  { status: 408, code: 'request_timeout', meaning: "local mode: the request's headers or body stopped arriving before Node's time limit", advice: 'send the request again' },
  { status: 411, code: 'length_required', meaning: 'local mode: an upload PUT without Content-Length', advice: 'send the length' },
  { status: 413, code: 'payload_too_large', meaning: 'a body or upload over its limit', advice: 'make it smaller' },
  { status: 415, code: 'unsupported_media_type', meaning: 'a body that is not application/json in UTF-8, or that has a Content-Encoding', advice: 'set the Content-Type; send UTF-8, uncompressed' },
  { status: 429, code: 'rate_limited', meaning: "over the account's requests per minute, or (POST /v1/uploads) its upload URLs per hour; the RateLimit fields say which", advice: 'retry after Retry-After seconds' },
  { status: 429, code: 'too_many_active_jobs', meaning: 'as many generations queued or running as the account may have', advice: 'retry after Retry-After seconds' },
  { status: 431, code: 'headers_too_large', meaning: "local mode: request headers over Node's 16 KB", advice: 'send smaller headers' },
  { status: 500, code: 'internal_error', meaning: 'a bug or a misconfiguration', advice: 'retry later; report it with the request_id' },
  { status: 503, code: 'queue_unavailable', meaning: 'the job queue is unavailable', advice: 'retry after Retry-After seconds, with the same Idempotency-Key' },
  { status: 503, code: 'busy', meaning: 'the record is being updated by another request', advice: 'retry after Retry-After seconds, with the same Idempotency-Key' },
  { status: 503, code: 'unavailable', meaning: 'a dependency is unavailable', advice: 'retry after Retry-After seconds, with the same Idempotency-Key' },
] as const satisfies readonly ApiErrorCode[];

export type ApiErrorCodeName = (typeof API_ERROR_CODES)[number]['code'];

const BY_CODE: ReadonlyMap<string, ApiErrorCode> = new Map(API_ERROR_CODES.map((entry) => [entry.code, entry]));

/** Whether the table lists `code` at `status`: what a client may be answered. */
export function isListedErrorCode(status: number, code: string): boolean {
  return BY_CODE.get(code)?.status === status;
}

/** `code: meaning (advice)` for each, as an operation's response description names its codes. */
export function describeErrorCodes(...codes: ApiErrorCodeName[]): string {
  return codes
    .map((code) => {
      const entry = BY_CODE.get(code)!;
      return `${code}: ${entry.meaning} (${entry.advice})`;
    })
    .join('; ');
}

/** The whole table in words, for the ErrorEnvelope's `code`. */
export function errorCodeTableText(): string {
  const rows = API_ERROR_CODES.map((e) => `- ${e.status} \`${e.code}\`: ${e.meaning}. ${e.advice[0]!.toUpperCase()}${e.advice.slice(1)}.`);
  return [
    "Stable and machine-readable; never reworded. Codes may be added: act on the HTTP status for one you do not know. The codes, by status:",
    ...rows,
  ].join('\n');
}
