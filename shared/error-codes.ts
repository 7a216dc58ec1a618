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
  { status: 402, code: 'spend_limit_reached', meaning: "a new generation once the account's cost this month has reached the monthly limit it set (PUT /v1/spend-limit), or a lower one the operator set for it", advice: 'raise or remove the limit (the operator raises theirs), or wait for the next UTC month' },
  { status: 403, code: 'forbidden', meaning: 'local mode: a signed link that is tampered with or expired', advice: 'ask for a fresh link' },
  { status: 404, code: 'not_found', meaning: "no such generation (also another account's id; `param` \"id\"), no such image of it, or one the output check withheld (`param` \"index\"), or no such path (`param` null)", advice: 'check the id, the index, or the path' },
  { status: 405, code: 'method_not_allowed', meaning: 'the path exists, not with this method (`Allow` says which)', advice: 'use one of those' },
  { status: 409, code: 'idempotency_key_reused', meaning: 'the Idempotency-Key was used with another body', advice: 'a new key, or the first body' },
  { status: 409, code: 'idempotency_in_progress', meaning: "the key's first request is still being made", advice: 'retry after Retry-After seconds' },
  { status: 409, code: 'job_terminal', meaning: 'a cancel of a generation that already succeeded or failed', advice: 'nothing to cancel' },
  { status: 409, code: 'job_not_finished', meaning: "a delete of a queued or running generation, a redelivery of its webhook (its event is sent when it ends), or one of its images", advice: 'cancel it first, or wait for it to end' },
  { status: 409, code: 'no_webhook', meaning: 'a webhook redelivery for a generation with no event to send: it asked for no webhook, it was deleted, or its POST was answered 503', advice: 'nothing to redeliver; GET the generation instead' },
  { status: 409, code: 'upload_in_use', meaning: 'a delete of an upload that a queued or running generation of the account uses as its init', advice: 'wait for it to end (or cancel it), then delete the upload' },
  { status: 409, code: 'corrupt_record', meaning: 'the stored record is unreadable', advice: 'retrying will not help: contact the operator with the request_id' },
  { status: 408, code: 'request_timeout', meaning: "local mode: the request's headers or body stopped arriving before Node's time limit", advice: 'send the request again' },
  { status: 410, code: 'output_gone', meaning: "an image of a generation that was deleted, or whose outputs expired (`outputs_expire_at`), or one deleted while `?include=b64` read it; the message names its seed", advice: 'make it again: the same request with that seed and n 1' },
  { status: 411, code: 'length_required', meaning: 'local mode: an upload PUT without Content-Length', advice: 'send the length' },
  { status: 412, code: 'upload_link_used', meaning: 'local mode: a second PUT to an upload link (each link writes once; S3 answers it 412 PreconditionFailed)', advice: 'ask POST /v1/uploads for another' },
  { status: 413, code: 'payload_too_large', meaning: 'a body or upload over its limit, or (`?include=b64`, `param: "include"`) images over 4 MiB together to put in one answer', advice: 'make it smaller; fetch the images by their links' },
  { status: 415, code: 'unsupported_media_type', meaning: 'a body that is not application/json in UTF-8, or that has a Content-Encoding', advice: 'set the Content-Type; send UTF-8, uncompressed' },
  { status: 429, code: 'rate_limited', meaning: "over the account's requests per minute, or (POST /v1/uploads, or a generation whose init is a URL) its uploads per hour; the RateLimit fields say which", advice: 'retry after Retry-After seconds' },
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

/**
 * What a client does about a failed generation: `fix_request`, the same request fails the same way
 * again (change it, or the model); `resubmit`, a new request (a new Idempotency-Key) may succeed;
 * `same_key`, repeat the POST with the same Idempotency-Key, which queues this very job.
 */
export type JobErrorClass = 'fix_request' | 'resubmit' | 'same_key';

export interface JobErrorCode {
  code: string;
  class: JobErrorClass;
  /** Why the generation failed. */
  meaning: string;
  /** What the caller does about it. */
  advice: string;
}

/** The README groups these under one row: they share a meaning and advice. */
const CANNOT_RUN = { class: 'fix_request', meaning: 'the request (or the model it names) cannot run', advice: 'fix the request; a retry fails the same way' } as const;
const NOT_COMPILABLE = {
  class: 'fix_request',
  meaning: "the model's image tower (an imported one) uses an operation the gradient compiler cannot run or differentiate",
  advice: 'use another model; the operator can check it with `clipag gradcheck`',
} as const;

/**
 * The codes a failed generation carries (its `error.code`): the one table that JobError's description
 * is written from, that the README's "Why a generation failed" table is checked against
 * (test/functions/openapi-conformance.test.ts), and that the worker keeps a failed job to
 * (gpu-worker/worker/errors.ts jobErrorOf: any other code is stored as internal_error). As with
 * API_ERROR_CODES, a code is never reworded and codes may be added; a client treats one it does not
 * know as internal_error.
 */
export const JOB_ERROR_CODES = [
  { code: 'invalid_input', ...CANNOT_RUN },
  { code: 'invalid_model', ...CANNOT_RUN },
  { code: 'invalid_weights', ...CANNOT_RUN },
  { code: 'invalid_tokenizer', ...CANNOT_RUN },
  { code: 'numerical_error', class: 'fix_request', meaning: 'the loss became non-finite for this spec and seed', advice: 'another seed or fewer steps' },
  { code: 'content_policy', class: 'fix_request', meaning: 'the output check withheld every image (ADR 0017)', advice: 'change the prompt; the compute is billed' },
  { code: 'timeout', class: 'fix_request', meaning: "the run passed the deployment's time limit (`CLIPAG_JOB_TIMEOUT_SEC`)", advice: 'fewer steps, a smaller size or smaller `n`' },
  {
    code: 'out_of_memory',
    class: 'fix_request',
    meaning: "the run ran out of the worker's memory (the GPU's, or the host's) on its last delivery: the request is too large for this deployment's workers",
    advice: 'a smaller size (`width` × `height`) or another model; `n` and `steps` do not change it',
  },
  { code: 'invalid_graph', ...NOT_COMPILABLE },
  { code: 'unsupported_op', ...NOT_COMPILABLE },
  { code: 'not_differentiable', ...NOT_COMPILABLE },
  { code: 'retries_exhausted', class: 'resubmit', meaning: 'the worker failed to finish it on every delivery (machine or storage trouble)', advice: 'submit it again' },
  { code: 'expired', class: 'resubmit', meaning: "AWS: no worker started it within the queue's retention (4 days)", advice: 'submit it again' },
  { code: 'internal_error', class: 'resubmit', meaning: "a bug; the details are in the worker's log under the job id", advice: 'submit it again; report it if it repeats' },
  { code: 'enqueue_failed', class: 'same_key', meaning: 'the POST got a 503 and the job never reached the queue', advice: 'repeat the POST with the same Idempotency-Key: it queues this job' },
] as const satisfies readonly JobErrorCode[];

export type JobErrorCodeName = (typeof JOB_ERROR_CODES)[number]['code'];

const JOB_CODES: ReadonlySet<string> = new Set(JOB_ERROR_CODES.map((entry) => entry.code));

/** Whether a failed generation may carry `code` (JOB_ERROR_CODES lists it). */
export function isJobErrorCode(code: string): code is JobErrorCodeName {
  return JOB_CODES.has(code);
}

const JOB_ERROR_CLASS_HEADINGS: Record<JobErrorClass, string> = {
  fix_request: 'Fix the request (the same request fails the same way again)',
  resubmit: 'Submit it again (a new request, with a new Idempotency-Key, may succeed)',
  same_key: 'Repeat the POST with the same Idempotency-Key (it queues this very job)',
};

/** The job table in words, by class, for JobError's `code`: one line per meaning, as the README's rows group codes. */
export function jobErrorCodeTableText(): string {
  const classes = Object.keys(JOB_ERROR_CLASS_HEADINGS) as JobErrorClass[];
  const lines = (cls: JobErrorClass) => {
    const byMeaning = new Map<string, JobErrorCode[]>();
    for (const e of JOB_ERROR_CODES.filter((x) => x.class === cls)) {
      const key = `${e.meaning}\0${e.advice}`;
      byMeaning.set(key, [...(byMeaning.get(key) ?? []), e]);
    }
    return [...byMeaning.values()].map((group) => {
      const { meaning, advice } = group[0]!;
      return `- ${group.map((e) => `\`${e.code}\``).join(', ')}: ${meaning}. ${advice[0]!.toUpperCase()}${advice.slice(1)}.`;
    });
  };
  return [
    'Why the generation failed. Stable and machine-readable; never reworded. Codes may be added: treat one you do not know like internal_error.',
    ...classes.flatMap((cls) => [`${JOB_ERROR_CLASS_HEADINGS[cls]}:`, ...lines(cls)]),
  ].join('\n');
}
