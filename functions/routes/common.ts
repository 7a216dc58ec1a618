import { describeErrorCodes, type ApiErrorCodeName } from '../../shared/error-codes.ts';
import { ErrorEnvelope } from '../../shared/schemas/error.ts';

export const SECURITY = [{ bearerAuth: [] }];

const envelope = (description: string) => ({ description, content: { 'application/json': { schema: ErrorEnvelope } } });
const retryAfter = { 'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer' as const, minimum: 0 } } };

/** Where the deployment limits requests per account (ADR 0026), every /v1 answer carries these (IETF draft-ietf-httpapi-ratelimit-headers). */
export const rateLimitFields = {
  'RateLimit-Policy': {
    description: 'The limits that counted this request, most specific first: `"<name>";q=<count>;w=<window seconds>` each (sliding windows): `"requests"` per minute on every /v1 route, `"uploads"` per hour on POST /v1/uploads and on a POST /v1/generations whose `init` is a URL (the API stores the image as an upload)',
    schema: { type: 'string' as const },
  },
  RateLimit: {
    description:
      'Their state, in the same order: `"<name>";r=<left>;t=<seconds>`. With some left, t is when the current window ends; with none left (r=0, and on a 429), when one more will be let through, as Retry-After',
    schema: { type: 'string' as const },
  },
};

/** POST /v1/uploads' 429: its hourly limit, or the request rate. */
export const uploadsTooMany = {
  ...envelope("rate_limited: over the account's upload URLs per hour, or its requests per minute (the RateLimit fields name which); retry after Retry-After seconds"),
  headers: { ...retryAfter, ...rateLimitFields },
};

/**
 * The error responses a route documents (all share the envelope), each naming its codes in the words
 * of the one table (shared/error-codes.ts). Every /v1 operation refuses a query parameter it does not
 * declare (middleware/limits.ts declaredQueryOnly), hence a 400 on each.
 */
export const errors = {
  400: envelope(describeErrorCodes('validation_error', 'invalid_json')),
  401: envelope(describeErrorCodes('unauthorized')),
  402: envelope(describeErrorCodes('spend_limit_reached')),
  404: envelope(describeErrorCodes('not_found')),
  409: envelope(describeErrorCodes('corrupt_record')),
  410: envelope(describeErrorCodes('output_gone')),
  413: envelope(describeErrorCodes('payload_too_large')),
  415: {
    ...envelope(`${describeErrorCodes('unsupported_media_type')}. \`param\` names the header: "Content-Type", or "Content-Encoding" for a coding other than identity`),
    headers: { 'Accept-Encoding': { description: '`identity`, on a 415 for a Content-Encoding: the only coding a request body may have', schema: { type: 'string' as const } } },
  },
  429: {
    ...envelope(`${describeErrorCodes('rate_limited', 'too_many_active_jobs')}. See the RateLimit fields`),
    headers: { ...retryAfter, ...rateLimitFields },
  },
  503: {
    ...envelope(`${describeErrorCodes('queue_unavailable', 'busy', 'unavailable')}. Safe to repeat: a POST /v1/generations with the same Idempotency-Key makes at most one generation`),
    headers: retryAfter,
  },
} as const;

/**
 * RFC 7240's `Prefer: wait=N` (other preferences in the header are ignored): how long to hold the
 * response for the generation to end, at most `max` seconds; null when not asked for or not allowed.
 */
export function preferredWaitSec(header: string | undefined, max: number): number | null {
  if (!header || max <= 0) return null;
  // Preferences are comma-separated; a quoted value may hold commas, so split outside quotes only.
  for (const part of header.match(/(?:[^,"]|"[^"]*")+/g) ?? []) {
    const m = /^\s*wait\s*=\s*(?:(\d+)|"(\d+)")\s*(?:;.*)?$/i.exec(part);
    if (m) return Math.min(Number(m[1] ?? m[2]), max);
  }
  return null;
}

/** The 400 of a route that reads prompts: the content policy can refuse one. */
export const promptBadRequest = envelope(describeErrorCodes('validation_error', 'invalid_json', 'content_policy'));

/** A route's own 409: the codes it can answer, besides corrupt_record. */
export function conflict(...codes: ApiErrorCodeName[]): ReturnType<typeof envelope> {
  return envelope(describeErrorCodes(...codes, 'corrupt_record'));
}

export function pick<K extends keyof typeof errors>(...codes: K[]): Pick<typeof errors, K> {
  return Object.fromEntries(codes.map((k) => [k, errors[k]])) as Pick<typeof errors, K>;
}
