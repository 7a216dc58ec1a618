// A client of the clipag HTTP API that retries the way the README asks (Limits, HTTP errors), for
// `clipag remote`. Fetch only: no SDK, no dependency. A 2xx answer is checked for what this client reads
// of it and no more (ClientGeneration, below), so that a newer API, which adds fields and enum values,
// is still read; an answer that is not the API's at all is refused.
//
// Retry rules, in one place:
// - 429 and 503 with the error envelope and Retry-After (rate_limited, too_many_active_jobs,
//   queue_unavailable, busy, unavailable), and 409 idempotency_in_progress: wait as Retry-After says,
//   at least MIN_RETRY_AFTER_MS, a floor that doubles on each such wait of the same request (a
//   Retry-After of 0, again and again, is no tight loop), plus 0-10 % jitter (clients refused together
//   do not come back together). A Retry-After that is not a whole number of seconds ("1.5") is rounded
//   up; one that is neither seconds nor an HTTP date is ignored (back-off, below). A Retry-After that
//   runs past the deadline ends the call at once (WaitPastDeadline): retrying sooner is refused, and
//   waiting out the rest of --timeout to then give up helps no one.
// - The AWS gateway's own 429, 500, 502, 503, 504 (`{"message": …}`, no envelope, no Retry-After),
//   network errors and attempts that got no answer in time: exponential back-off with jitter (about 1,
//   2, 4, 8, 16 s, at most 30 s a wait), at most BACKOFF_ATTEMPTS of them; the app's own 500
//   internal_error at most INTERNAL_ERROR_ATTEMPTS tries (a bug does not go away by waiting). A
//   connection refused by this machine (no local server) and a host DNS does not know are tried
//   REFUSED_LOCAL_ATTEMPTS times, quickly.
// - Every request: at most MAX_ATTEMPTS tries in all, whatever mix of the above; but a POST of a
//   generation refused 429 too_many_active_jobs waits as Retry-After says until the deadline, those
//   tries not counted: the account's own generations end and free the room (a batch with more lines in
//   flight than the account may run, or a queue behind a GPU that is still starting, is no failure).
// - A request fetch will never send (a port it blocks, a URL with credentials, a header it cannot
//   carry) fails at once (CannotSend); anything else fails at once too (ApiError, with the envelope's
//   code, message, param and request_id).
// - The deadline bounds everything: no attempt runs past it (by more than DEADLINE_GRACE_MS), a
//   `Prefer: wait` never asks past it, and no wait starts that would end after it.
// POST /v1/generations is only retried with the one Idempotency-Key the caller made for it, so a retry
// after a lost answer gets the same job (ADR 0004); POST /v1/webhook-secret likewise gets the same
// secret, not a second rotation (ADR 0028). Every error thrown says (`lost`) whether an attempt
// may have reached the server without its answer coming back: for a POST, a job may exist. Signed URLs
// (upload PUT, image GET) never carry the API key, and no message here ever holds the key, a URL's
// credentials or a URL's query (a signed URL's signature).
import { isIP } from 'node:net';
import { setTimeout as sleepFor } from 'node:timers/promises';
import { z } from '@hono/zod-openapi';
import type { ErrorEnvelope } from '../shared/schemas/error.ts';
import type { GenerationRequest } from '../shared/schemas/generation.ts';
import { JOB_STATUSES } from '../shared/schemas/job.ts';
import { initImageContentType } from '../shared/init-image.ts';
import { SpendLimitDeleted, SpendLimitView, UploadView, WebhookSecretCreated, WebhookSecretDeleted, WebhookSecretStatus, type UploadRequest } from '../functions/schemas.ts';

/**
 * A generation as this client reads it: the fields `clipag remote` uses, checked as far as it uses them.
 * Not the API's GenerationView, which is closed (nested objects strict, statuses and policy categories
 * enums): a server one version newer, with a request parameter, a usage figure, a status or a category
 * this version does not know, was "not a clipag API" to it, and a POST it had answered (the job made,
 * and charged) was reported lost. Here keys it does not know pass at every level (and stay in the
 * answer, for --json), and enum values are plain strings; `object` is still "generation" and each
 * field used must be there with its type, so what is not the API's answer is still refused.
 */
const ClientGeneration = z.looseObject({
  id: z.string().min(1),
  object: z.literal('generation'),
  // Any status: one this version does not know (a newer server's) is shown as it is and is not taken for
  // an end (remote.ts `ended` names the three that end a generation), so the run waits for one of those.
  status: z.string().min(1),
  progress: z.looseObject({ step: z.number(), total: z.number(), attempt: z.number() }),
  cancel_requested: z.boolean(),
  outputs: z.array(
    z.looseObject({
      index: z.number().int().nonnegative(),
      seed: z.number(),
      url: z.string(),
      clip_score: z.number().optional(),
      content_flags: z.array(z.looseObject({ category: z.string(), action: z.string(), concept: z.string(), cosine: z.number(), message: z.string() })).optional(),
    }),
  ),
  withheld_outputs: z.array(z.looseObject({ index: z.number().int().nonnegative(), content_flags: z.array(z.looseObject({ rule: z.string() })) })),
  // Absent from an API before it.
  expired_outputs: z.array(z.looseObject({ index: z.number().int().nonnegative(), seed: z.number() })).optional(),
  error: z.looseObject({ code: z.string(), message: z.string() }).nullable(),
  usage: z.looseObject({ cost_usd: z.number().nullable() }),
  warnings: z.array(z.string()),
  request: z.looseObject({ model: z.string(), width: z.number(), height: z.number(), steps: z.number(), n: z.number().int().positive(), init: z.string() }),
  content_flags: z.array(z.looseObject({ category: z.string(), term: z.string(), message: z.string() })),
  webhook: z.looseObject({ secret: z.string().optional() }).nullable(),
  deleted_at: z.string().nullable(),
  // While queued (ADR 0040; absent from an API before it): shown, never needed, so one this version
  // cannot read does not make the answer "not a generation" (the answer is returned as sent: remote.ts
  // checks the note's type where it shows it).
  queue: z.looseObject({ note: z.string() }).optional().catch(() => undefined),
});
/** GET /v1/generations: `data`, and `next_cursor` for paging (an older API's list has it too). */
const ClientGenerationList = z.looseObject({ object: z.literal('list'), data: z.array(ClientGeneration), next_cursor: z.string().nullable().optional() });
/** POST /v1/estimates: its answer is not read (the request check is the call's point), only told from another's. */
const ClientEstimate = z.looseObject({ object: z.literal('estimate') });
/** GET and PUT /v1/spend-limit: `operator_monthly_usd` is absent from an API before operator limits. */
const ClientSpendLimit = SpendLimitView.extend({ operator_monthly_usd: z.number().nullable().optional() });

export type GenerationBody = z.input<typeof GenerationRequest>;
export type Generation = z.output<typeof ClientGeneration>;
export type Estimate = z.output<typeof ClientEstimate>;
export type Upload = z.output<typeof UploadView>;
type UploadBody = z.input<typeof UploadRequest>;
export type WebhookSecret = z.output<typeof WebhookSecretCreated>;
export type WebhookSecretState = z.output<typeof WebhookSecretStatus>;
export type SpendLimit = z.output<typeof ClientSpendLimit>;
type Envelope = ErrorEnvelope['error'];

/** Back-off tries (network errors, the gateway's own answers) before giving up. */
export const BACKOFF_ATTEMPTS = 6;
/** Tries of a request the app answers 500 internal_error. */
export const INTERNAL_ERROR_ATTEMPTS = 3;
/** Tries of a request whose connection this machine refuses (no server listening here), or whose host DNS does not know, before giving up. */
export const REFUSED_LOCAL_ATTEMPTS = 3;
/** Tries of one request in all (back-offs and Retry-After waits together). */
export const MAX_ATTEMPTS = 12;
/** The longest back-off wait, and the highest the Retry-After floor grows. */
export const BACKOFF_CAP_MS = 30_000;
/** The refusal of a new generation while the account has as many active as it may: waited out (the deadline bounds it). */
const ACTIVE_LIMIT_CODES: readonly string[] = ['too_many_active_jobs'];
/** The shortest wait on a Retry-After (the first; it doubles on each further one of the same request). */
export const MIN_RETRY_AFTER_MS = 1000;
/** At most this share of a Retry-After wait is added to it at random. */
const RETRY_AFTER_JITTER = 0.1;
/** The first wait after a connection this machine refused (it doubles). */
const REFUSED_LOCAL_FIRST_MS = 250;
/** How long an attempt may go unanswered beyond the wait it asked for, before it counts as lost. */
const ANSWER_GRACE_MS = 30_000;
/** An image download's or an upload's attempt. */
const TRANSFER_ATTEMPT_MS = 120_000;
/** An attempt may run this far past the deadline (an answer held until the deadline is on its way). */
const DEADLINE_GRACE_MS = 1000;
/** An attempt's bound when the deadline is (nearly) here: one last read still gets this long. */
const MIN_ATTEMPT_MS = 2000;

/** The code of a 2xx whose body is not the `kind` asked for (ApiError's `code`). */
const NOT_A: Readonly<Record<string, string>> = {
  'a generation': 'not_a_generation',
  'a list of generations': 'not_a_list',
  'a webhook secret': 'not_a_webhook_secret',
  'a webhook secret status': 'not_a_webhook_secret',
  'a webhook secret deletion': 'not_a_webhook_secret',
  'a spend limit': 'not_a_spend_limit',
  'a spend limit deletion': 'not_a_spend_limit',
};

/** Said of a request that stopped without its answer: could an attempt have reached the server, its answer lost? */
interface MaybeLost {
  /** True when an attempt may have reached the server and no answer came back (for a POST: a job may exist). */
  lost: boolean;
}

/** The API (or a signed URL) said no, in a way a retry will not change. */
export class ApiError extends Error implements MaybeLost {
  override readonly name = 'ApiError';
  lost = false;
  constructor(
    /** What was asked: `POST /v1/generations`. */
    readonly what: string,
    readonly status: number,
    /** The envelope's code; for an answer without the envelope, `http_<status>`. */
    readonly code: string,
    readonly detail: string,
    readonly param: string | null = null,
    readonly requestId: string | null = null,
  ) {
    super(`${what}: ${status} ${code}: ${detail}${param ? ` (param ${param})` : ''}${requestId ? ` [request_id ${requestId}]` : ''}`);
  }
}

/**
 * The API's 404 for a generation id this key's account has none under: `param: "id"`; a server from
 * before that param was set is known by its message.
 */
export function isUnknownGeneration(e: unknown): e is ApiError {
  return e instanceof ApiError && e.status === 404 && e.code === 'not_found' && (e.param === 'id' || (e.param === null && e.detail.startsWith('no generation')));
}

/** The app's own 404 for a path it has no route for (functions/middleware/errors.ts, notFound): the URL is wrong, not an id. */
export function isUnknownRoute(e: unknown): e is ApiError {
  return e instanceof ApiError && e.status === 404 && e.code === 'not_found' && e.param === null && e.detail.startsWith('no route for ');
}

/** The deadline came before an answer that ends the call (retries that ran out of time, an attempt unanswered at the deadline). */
export class TimedOut extends Error implements MaybeLost {
  override readonly name: string = 'TimedOut';
  lost = false;
}

/** A 429 or 503 whose Retry-After runs past the deadline: the API refused, for now, and says until when. */
export class WaitPastDeadline extends TimedOut {
  override readonly name = 'WaitPastDeadline';
  constructor(
    readonly what: string,
    readonly status: number,
    /** The envelope's code, or `http_<status>`. */
    readonly code: string,
    /** The envelope's message (or the gateway's), with its request id. */
    readonly detail: string,
    /** Which limit, from the RateLimit fields (`"uploads" (1 per 3600 s)`), when the answer has them. */
    readonly policy: string | null,
    readonly retryAfterMs: number,
    /** When a retry may come (Date.now() ms). */
    readonly retryAt: number,
    /** What was left of the deadline (ms). */
    readonly leftMs: number,
  ) {
    super(`${what}: ${status} ${code}: ${detail}${policy ? ` (limit ${policy})` : ''}; it asks to wait ${seconds(retryAfterMs)} (Retry-After; until ${untilText(retryAt)}), past the deadline (${seconds(Math.max(0, leftMs))} left)`);
  }
}

/** Transient failures, retried until the tries ran out. */
export class GaveUp extends Error implements MaybeLost {
  override readonly name = 'GaveUp';
  lost = false;
  constructor(
    message: string,
    /** The last try's connection was refused (nothing listens there). */
    readonly refused = false,
    /** The last try found no such host (DNS). */
    readonly noHost = false,
  ) {
    super(message);
  }
}

/** fetch will never send this request (a port it blocks, a URL with credentials, a header value it refuses): no retry can help. */
export class CannotSend extends Error implements MaybeLost {
  override readonly name = 'CannotSend';
  lost = false;
  constructor(
    message: string,
    /** To the API (its URL is the caller's --url), or to a signed URL the API gave. */
    readonly api: boolean,
  ) {
    super(message);
  }
}

/** The caller's signal (Ctrl-C) stopped the call. */
export class Interrupted extends Error implements MaybeLost {
  override readonly name = 'Interrupted';
  lost = false;
}

/** A schema's safeParse, as zod's has it: enough to check an answer without zod's types here. */
interface Checks {
  safeParse(value: unknown): { success: true } | { success: false; error: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> } };
}

export interface ClientOptions {
  /** The API's base URL; a path in it (a stage) is kept. */
  url: string;
  key: string;
  /** Where it says what it waits for and why (stderr). */
  note: (line: string) => void;
  /** Aborts every request and wait (Ctrl-C). */
  signal?: AbortSignal;
  fetch?: typeof fetch;
  random?: () => number;
  /** How a retry waits (tests give one that only records the wait). */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
}

/** One call's bound: an absolute time (Date.now() ms) after which no wait starts and no attempt runs (but for DEADLINE_GRACE_MS). */
export interface CallOptions {
  deadline: number;
}

interface Attempt {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  /** Shown in notes and errors: the method and the path, never a query. */
  what: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** An API call (bearer key, error envelope), or a signed URL (neither). */
  api: boolean;
  /** An attempt's bound beyond the wait it asks for (capped by the deadline). */
  attemptMs: number;
  /** The longest `Prefer: wait` to ask for; each attempt asks for no more than what is left of the deadline. */
  waitSec?: number;
  deadline: number;
  /** Said when a retry re-sends: "with the same Idempotency-Key". */
  resend?: string;
  /** Refusals (envelope codes of a Retry-After answer) waited out until the deadline, not counted against MAX_ATTEMPTS. */
  patientWith?: readonly string[];
}

/** A 2xx answer, its body read. */
interface Answer {
  res: Response;
  bytes: Uint8Array;
}

type Verdict = { lost: boolean } & (
  | { retry: 'after'; ms: number; why: string; said: string; policy: string | null; detail: string; status: number; code: string }
  | { retry: 'backoff'; why: string; internal?: boolean; refused?: boolean; noHost?: boolean }
  | { retry: 'no'; error: ApiError | CannotSend }
);

const IMF_FIXDATE = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/;

/**
 * The longest Retry-After taken as said: RFC 9111 §1.2.2's bound for delta-seconds (2^31). Past it
 * (9999999999999, from a proxy or a broken server) the wait is no less a refusal, and its "until" must
 * still be a date (past year 275760 it is none, and printing it threw "Invalid time value").
 */
export const MAX_RETRY_AFTER_SEC = 2 ** 31;

/**
 * Milliseconds from a Retry-After field: delta-seconds (RFC 9110; a decimal such as "1.5", which the RFC
 * does not allow, is rounded up to whole seconds: never sooner than asked; at most MAX_RETRY_AFTER_SEC)
 * or an IMF-fixdate; undefined when absent or unreadable ("-1", "soon", a date in another format), so
 * that the request backs off.
 */
export function retryAfterMs(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.min(Math.ceil(Number(v)), MAX_RETRY_AFTER_SEC) * 1000;
  if (!IMF_FIXDATE.test(v)) return undefined;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** When a retry may come, for a message: an ISO date, or words where the number is no date (no message is lost to a RangeError). */
export function untilText(at: number): string {
  return Number.isFinite(at) && Math.abs(at) <= 8.64e15 ? new Date(at).toISOString() : 'a time past any date';
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 && ms % 1000 !== 0 ? 1 : 0)} s`;

/** A URL as it may be shown: origin and path, without credentials or the query that signs it. */
export function shownUrl(url: string, base?: string): string {
  try {
    const u = new URL(url, base);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(an unreadable URL)';
  }
}

/** Text that may quote a URL (an error's message): every URL in it as shownUrl shows it. */
export function scrubbed(text: string): string {
  return text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>()]+/gi, (u) => shownUrl(u)).replace(/\/\/[^\s/@]*@/g, '//…@');
}

/** A server on this machine: localhost, [::1], or an IPv4 address in 127.0.0.0/8 (an address, never a name that merely starts with "127."). */
export function isLoopbackUrl(url: URL): boolean {
  const h = url.hostname;
  return h === 'localhost' || h === '[::1]' || (isIP(h) === 4 && h.startsWith('127.'));
}

export class ClipagClient {
  readonly #base: URL;
  readonly #key: string;
  readonly #note: (line: string) => void;
  readonly #signal: AbortSignal | undefined;
  readonly #fetch: typeof fetch;
  readonly #random: () => number;
  readonly #sleep: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /** Statuses this version does not know that were already said (#statusSaid). */
  readonly #unknownStatuses = new Set<string>();

  constructor(opts: ClientOptions) {
    // A trailing slash, so that relative paths land under a stage path ("…/prod/" + "v1/…").
    this.#base = new URL(opts.url.endsWith('/') ? opts.url : `${opts.url}/`);
    this.#key = opts.key;
    this.#note = opts.note;
    this.#signal = opts.signal;
    this.#fetch = opts.fetch ?? fetch;
    this.#random = opts.random ?? Math.random;
    this.#sleep = opts.sleep ?? ((ms, signal) => sleepFor(ms, undefined, signal ? { signal } : {}));
  }

  /**
   * An upload grant (POST /v1/uploads), then the bytes PUT to its signed URL with the headers it names.
   * The API gives uploads no Idempotency-Key: a grant whose answer was lost and is asked for again is
   * a second grant (each counts toward the upload quota).
   */
  async upload(bytes: Uint8Array, o: CallOptions): Promise<Upload> {
    const body: UploadBody = { content_type: initImageContentType(bytes), bytes: bytes.length };
    const { json } = await this.#api<Upload>('POST', 'v1/uploads', UploadView, 'an upload grant', { ...o, body });
    const what = `PUT ${shownUrl(json.url)}`;
    // Whether a try whose answer was lost came before (in an earlier round of this loop too).
    let earlierLost = false;
    for (let conflicts = 0; ; conflicts++) {
      try {
        await this.#send({ method: 'PUT', url: json.url, what, headers: json.headers, body: bytes, api: false, attemptMs: TRANSFER_ATTEMPT_MS, deadline: o.deadline });
        return json;
      } catch (e) {
        // The link writes once (ADR 0044): after a try whose answer was lost, a 412 says that try landed.
        earlierLost ||= e instanceof ApiError && e.lost;
        if (e instanceof ApiError && earlierLost && e.status === 412) {
          this.#note(`clipag remote: ${what}: 412 after a try whose answer was lost: that try stored the image (the link writes once)`);
          return json;
        }
        // S3's 409 ConditionalRequestConflict: that lost try is still being written; its outcome decides.
        if (e instanceof ApiError && earlierLost && e.status === 409 && conflicts < 2 && Date.now() < o.deadline) {
          this.#note(`clipag remote: ${what}: 409 while a try whose answer was lost is still being stored; asking again in 1 s`);
          await this.#sleep(1000, this.#signal).catch((error: unknown) => {
            throw this.#signal?.aborted ? Object.assign(new Interrupted(`interrupted while waiting to retry ${what}`), { lost: true }) : error;
          });
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * POST /v1/estimates: the API's own checks of a request (the content policy, the model, sizes) and
   * what it would take, with nothing queued, uploaded or charged.
   */
  async estimate(body: GenerationBody, o: CallOptions): Promise<Estimate> {
    return (await this.#api<Estimate>('POST', 'v1/estimates', ClientEstimate, 'an estimate', { ...o, body })).json;
  }

  /** POST /v1/generations with its Idempotency-Key (the same on every retry) and `Prefer: wait` when waitSec > 0. */
  async createGeneration(body: GenerationBody, o: CallOptions & { idempotencyKey: string; waitSec: number }): Promise<{ generation: Generation; replayed: boolean; held: boolean }> {
    const { json, res } = await this.#api<Generation>('POST', 'v1/generations', ClientGeneration, 'a generation', {
      ...o,
      body,
      headers: { 'Idempotency-Key': o.idempotencyKey },
      resend: 'with the same Idempotency-Key',
      patientWith: ACTIVE_LIMIT_CODES,
    });
    return { generation: this.#statusSaid(json), replayed: res.headers.get('idempotent-replayed') === 'true', held: res.headers.has('preference-applied') };
  }

  /** GET /v1/generations/{id}, held with `Prefer: wait` when waitSec > 0. `held`: the API honoured the wait. */
  async getGeneration(id: string, o: CallOptions & { waitSec: number }): Promise<{ generation: Generation; held: boolean }> {
    const { json, res } = await this.#api<Generation>('GET', `v1/generations/${encodeURIComponent(id)}`, ClientGeneration, 'a generation', o);
    return { generation: this.#statusSaid(json), held: res.headers.has('preference-applied') };
  }

  /**
   * GET /v1/generations?idempotency_key=K: the generation this Idempotency-Key made for the account,
   * whatever body it was sent with; null when it made none (a 409 idempotency_in_progress, its first
   * request still making it, is waited out as for a POST). An API older than the lookup ignores the
   * parameter and answers its plain list, without the key said back: read as none found, so the
   * caller goes on as it did before there was a lookup.
   */
  async generationByKey(key: string, o: CallOptions): Promise<Generation | null> {
    const { json, res } = await this.#api<z.output<typeof ClientGenerationList>>('GET', `v1/generations?${new URLSearchParams({ idempotency_key: key })}`, ClientGenerationList, 'a list of generations', o);
    const found = res.headers.get('idempotency-key') === key ? json.data[0] : undefined;
    return found ? this.#statusSaid(found) : null;
  }

  /** GET /v1/generations with the list's query (filters, limit, cursor): one page, and the cursor of the next (null at the end). */
  async listGenerations(query: URLSearchParams, o: CallOptions): Promise<{ data: Generation[]; nextCursor: string | null }> {
    const { json } = await this.#api<z.output<typeof ClientGenerationList>>('GET', `v1/generations?${query}`, ClientGenerationList, 'a list of generations', o);
    return { data: json.data.map((g) => this.#statusSaid(g)), nextCursor: json.next_cursor ?? null };
  }

  /** POST /v1/generations/{id}/webhook/redeliver: its event sent again now; the generation after the attempt. */
  async redeliverWebhook(id: string, o: CallOptions): Promise<Generation> {
    return this.#statusSaid((await this.#api<Generation>('POST', `v1/generations/${encodeURIComponent(id)}/webhook/redeliver`, ClientGeneration, 'a generation', o)).json);
  }

  /** POST /v1/generations/{id}/cancel (idempotent; 409 job_terminal once it succeeded or failed). */
  async cancelGeneration(id: string, o: CallOptions): Promise<Generation> {
    return this.#statusSaid((await this.#api<Generation>('POST', `v1/generations/${encodeURIComponent(id)}/cancel`, ClientGeneration, 'a generation', o)).json);
  }

  /**
   * A generation whose status this version does not know (a newer API's) is said once per status, so
   * that a run waiting through it, until --timeout, is not a mystery. The status is passed on as it is.
   */
  #statusSaid(g: Generation): Generation {
    if (!(JOB_STATUSES as readonly string[]).includes(g.status) && !this.#unknownStatuses.has(g.status)) {
      this.#unknownStatuses.add(g.status);
      this.#note(`clipag remote: generation ${g.id} is ${JSON.stringify(g.status)}, a status this clipag does not know (the API is newer than it): not taken for an end, it is waited on until the generation succeeds, fails or is canceled`);
    }
    return g;
  }

  /**
   * POST /v1/webhook-secret with its Idempotency-Key (the same on every retry): the account's new
   * secret, its only showing. `replayed`: an earlier request with the key made it (nothing rotated);
   * `created`: the account had none (201), else it was rotated (200), as the first request was answered.
   */
  async createWebhookSecret(o: CallOptions & { idempotencyKey: string }): Promise<{ secret: WebhookSecret; created: boolean; replayed: boolean }> {
    const { json, res } = await this.#api<WebhookSecret>('POST', 'v1/webhook-secret', WebhookSecretCreated, 'a webhook secret', {
      ...o,
      headers: { 'Idempotency-Key': o.idempotencyKey },
      resend: 'with the same Idempotency-Key',
    });
    return { secret: json, created: res.status === 201, replayed: res.headers.get('idempotent-replayed') === 'true' };
  }

  /** GET /v1/webhook-secret: whether the account has one, since when, and the replaced ones still signing (never a secret). */
  async webhookSecretStatus(o: CallOptions): Promise<WebhookSecretState> {
    return (await this.#api<WebhookSecretState>('GET', 'v1/webhook-secret', WebhookSecretStatus, 'a webhook secret status', o)).json;
  }

  /** DELETE /v1/webhook-secret (idempotent: `deleted` false when there was none). */
  async deleteWebhookSecret(o: CallOptions): Promise<z.output<typeof WebhookSecretDeleted>> {
    return (await this.#api<z.output<typeof WebhookSecretDeleted>>('DELETE', 'v1/webhook-secret', WebhookSecretDeleted, 'a webhook secret deletion', o)).json;
  }

  /** GET /v1/spend-limit: the account's monthly limit (null: none) with this month's cost (ADR 0033). */
  async spendLimit(o: CallOptions): Promise<SpendLimit> {
    return (await this.#api<SpendLimit>('GET', 'v1/spend-limit', ClientSpendLimit, 'a spend limit', o)).json;
  }

  /** PUT /v1/spend-limit: sets it (a PUT: the same again after a lost answer sets the same). */
  async setSpendLimit(monthlyUsd: number, o: CallOptions): Promise<SpendLimit> {
    return (await this.#api<SpendLimit>('PUT', 'v1/spend-limit', ClientSpendLimit, 'a spend limit', { ...o, body: { monthly_usd: monthlyUsd } })).json;
  }

  /** DELETE /v1/spend-limit (idempotent: `deleted` false when there was none). */
  async deleteSpendLimit(o: CallOptions): Promise<z.output<typeof SpendLimitDeleted>> {
    return (await this.#api<z.output<typeof SpendLimitDeleted>>('DELETE', 'v1/spend-limit', SpendLimitDeleted, 'a spend limit deletion', o)).json;
  }

  /** A signed URL's bytes (an output image), retried as the API is; no key sent. */
  async download(url: string, o: CallOptions): Promise<Uint8Array> {
    return (await this.#send({ method: 'GET', url, what: `GET ${shownUrl(url)}`, headers: {}, api: false, attemptMs: TRANSFER_ATTEMPT_MS, deadline: o.deadline })).bytes;
  }

  async #api<T>(
    method: 'GET' | 'POST' | 'PUT' | 'DELETE',
    path: string,
    schema: Checks,
    kind: string,
    o: CallOptions & { body?: unknown; headers?: Record<string, string>; waitSec?: number; resend?: string; patientWith?: readonly string[] },
  ): Promise<{ json: T; res: Response }> {
    const url = new URL(path, this.#base).toString();
    const what = `${method} ${new URL(url).pathname}`;
    const headers: Record<string, string> = { Authorization: `Bearer ${this.#key}`, Accept: 'application/json', ...o.headers };
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    const { res, bytes } = await this.#send({
      method,
      url,
      what,
      headers,
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
      api: true,
      attemptMs: ANSWER_GRACE_MS,
      ...(o.waitSec !== undefined && o.waitSec > 0 ? { waitSec: o.waitSec } : {}),
      deadline: o.deadline,
      ...(o.resend ? { resend: o.resend } : {}),
      ...(o.patientWith ? { patientWith: o.patientWith } : {}),
    });
    // A 2xx that is not what the API answers: not this API (or not this version of it). For a POST, a
    // job may have been made all the same: said as `lost`, so the caller gives the Idempotency-Key.
    const wrong = (code: string, why: string) => Object.assign(new ApiError(what, res.status, code, `${why} (is ${this.#base.origin} a clipag API?)`), { lost: method === 'POST' });
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw wrong('not_json', 'the answer is not JSON');
    }
    const checked = schema.safeParse(json);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      const where = issue?.path.length ? issue.path.map(String).join('.') : 'the body';
      throw wrong(NOT_A[kind] ?? 'not_an_upload', `the answer is not ${kind} as the API's schema has it (${where}: ${issue?.message ?? 'invalid'})`);
    }
    // The answer as the API sent it (a field this client's schema does not know yet is kept for --json).
    return { json: json as T, res };
  }

  /** Sends one request until it is answered with a 2xx, retrying by the rules above. */
  async #send(a: Attempt): Promise<Answer> {
    let tries = 0;
    let backoffs = 0;
    let internals = 0;
    let refusedInRow = 0;
    let afters = 0;
    // Tries refused by a limit this request waits out (patientWith): not counted against MAX_ATTEMPTS.
    let patient = 0;
    let lost = false;
    const failed = <E extends Error & MaybeLost>(e: E): E => {
      e.lost ||= lost;
      return e;
    };
    const local = (() => {
      try {
        return isLoopbackUrl(new URL(a.url));
      } catch {
        return false;
      }
    })();
    for (;;) {
      tries++;
      let verdict: { answer: Answer } | Verdict;
      try {
        verdict = await this.#attempt(a);
      } catch (e) {
        if (e instanceof Interrupted) throw failed(e);
        throw e;
      }
      if ('answer' in verdict) return verdict.answer;
      lost ||= verdict.lost;
      if (verdict.retry === 'no') throw failed(verdict.error);
      const left = a.deadline - Date.now();
      let ms: number;
      let how: string;
      if (verdict.retry === 'after') {
        refusedInRow = 0;
        if (verdict.ms > 0 && verdict.ms > left) {
          throw failed(new WaitPastDeadline(a.what, verdict.status, verdict.code, verdict.detail, verdict.policy, verdict.ms, Date.now() + verdict.ms, left));
        }
        const waitedOut = a.patientWith?.includes(verdict.code) === true;
        if (waitedOut) patient++;
        else if (tries - patient >= MAX_ATTEMPTS) throw failed(new GaveUp(`${a.what}: ${verdict.why}; gave up after ${tries} tries`));
        afters++;
        // Never sooner than asked; at least a floor that doubles with each Retry-After of this request, plus jitter.
        const floor = Math.min(BACKOFF_CAP_MS, MIN_RETRY_AFTER_MS * 2 ** (afters - 1));
        ms = Math.round(Math.max(verdict.ms, floor) * (1 + RETRY_AFTER_JITTER * this.#random()));
        if (left <= 0) throw failed(new TimedOut(`${a.what}: ${verdict.why}; the deadline passed while retrying`));
        // Capped at what is left of the deadline (the Retry-After itself fits): one last try at it.
        ms = Math.min(ms, left);
        how = `waiting ${seconds(ms)} (Retry-After ${verdict.said})`;
      } else {
        // Nothing listens on this machine, or no such host: no use backing off for half a minute.
        const quick = (verdict.refused === true && local) || verdict.noHost === true;
        refusedInRow = quick ? refusedInRow + 1 : 0;
        if (!quick) backoffs++;
        if (verdict.internal) internals++;
        const limit = quick ? REFUSED_LOCAL_ATTEMPTS : verdict.internal ? INTERNAL_ERROR_ATTEMPTS : BACKOFF_ATTEMPTS;
        const count = quick ? refusedInRow : verdict.internal ? internals : backoffs;
        if (count >= limit || tries - patient >= MAX_ATTEMPTS) throw failed(new GaveUp(`${a.what}: ${verdict.why}; gave up after ${tries} tries`, verdict.refused === true, verdict.noHost === true));
        // 1, 2, 4 … s (0.25, 0.5 s for a refused local connection), each scaled by a random factor in
        // [0.5, 1.5) so that clients refused together do not return together.
        const nominal = quick ? REFUSED_LOCAL_FIRST_MS * 2 ** (refusedInRow - 1) : Math.min(BACKOFF_CAP_MS, 1000 * 2 ** (backoffs - 1));
        ms = Math.round(Math.min(BACKOFF_CAP_MS, nominal * (0.5 + this.#random())));
        if (left <= 0) throw failed(new TimedOut(`${a.what}: ${verdict.why}; the deadline passed while retrying`));
        // Capped at what is left of the deadline: one last try at it.
        ms = Math.min(ms, left);
        how = `backing off ${seconds(ms)} (try ${count + 1} of ${limit})`;
      }
      this.#note(`clipag remote: ${a.what}: ${verdict.why}; ${how}, then ${a.resend ? `sending it again ${a.resend}` : 'trying again'}`);
      try {
        await this.#sleep(ms, this.#signal);
      } catch (e) {
        if (this.#signal?.aborted) throw failed(new Interrupted(`interrupted while waiting to retry ${a.what}`));
        throw e;
      }
    }
  }

  /** One try: the 2xx answer, or what to do about it. */
  async #attempt(a: Attempt): Promise<{ answer: Answer } | Verdict> {
    if (this.#signal?.aborted) throw new Interrupted(`interrupted before ${a.what}`);
    const left = a.deadline - Date.now();
    // The wait asked for and the attempt's bound: never past the deadline (but for the grace an
    // answer held until it needs), never under MIN_ATTEMPT_MS (a last read at the deadline).
    const waitSec = a.waitSec ? Math.max(0, Math.min(a.waitSec, Math.floor(left / 1000))) : 0;
    const headers = waitSec > 0 ? { ...a.headers, Prefer: `wait=${waitSec}` } : a.headers;
    const attemptMs = Math.max(MIN_ATTEMPT_MS, Math.min(waitSec * 1000 + a.attemptMs, left + DEADLINE_GRACE_MS));
    const timeout = AbortSignal.timeout(attemptMs);
    const signal = this.#signal ? AbortSignal.any([this.#signal, timeout]) : timeout;
    const unanswered = (): Verdict => ({ retry: 'backoff', why: `no answer within ${seconds(attemptMs)}`, lost: true });
    let res: Response;
    try {
      res = await this.#fetch(a.url, {
        method: a.method,
        headers,
        ...(a.body !== undefined ? { body: a.body } : {}),
        signal,
        // The API never redirects; a redirect followed elsewhere could carry the key there.
        redirect: 'manual',
      });
    } catch (e) {
      if (this.#signal?.aborted) throw Object.assign(new Interrupted(`interrupted during ${a.what}`), { lost: true });
      if (timeout.aborted) return unanswered();
      return networkVerdict(a, e);
    }
    if (res.ok) {
      // Read now, inside the attempt: a body cut short is retried like any lost answer.
      try {
        return { answer: { res, bytes: new Uint8Array(await res.arrayBuffer()) } };
      } catch (e) {
        if (this.#signal?.aborted) throw Object.assign(new Interrupted(`interrupted during ${a.what}`), { lost: true });
        if (timeout.aborted) return unanswered();
        return { retry: 'backoff', why: `the answer was cut short (${causeText(e)})`, lost: true };
      }
    }
    const text = await res.text().catch(() => '');
    const envelope = a.api ? envelopeOf(text) : undefined;
    const said = res.headers.get('retry-after');
    const after = retryAfterMs(said);
    const status = res.status;
    // A 5xx may come after the work was done (a job made, then the answer failed); a 4xx never.
    const lost = status >= 500;
    if (status >= 300 && status < 400) {
      const location = res.headers.get('location');
      return { retry: 'no', error: new ApiError(a.what, status, `http_${status}`, `redirected to ${location === null ? '(no Location)' : shownUrl(location, a.url)}; give that address instead`), lost };
    }
    const policy = limitOf(res.headers.get('ratelimit-policy'), res.headers.get('ratelimit'));
    const waitFor = (why: string, code: string, detail: string): Verdict => ({ retry: 'after', ms: after!, why, said: said!.trim(), policy, detail, status, code, lost });
    if (envelope) {
      const why = `${status} ${envelope.code}`;
      const detail = `${envelope.message}${envelope.request_id ? ` [request_id ${envelope.request_id}]` : ''}`;
      if ((status === 429 || status === 503) && after !== undefined) return waitFor(why, envelope.code, detail);
      // The key is claimed by an earlier try of this very request: a job is being made.
      if (status === 409 && envelope.code === 'idempotency_in_progress') {
        return after !== undefined ? { ...waitFor(`${why} (its first try is still being made)`, envelope.code, detail), lost: true } : { retry: 'backoff', why: `${why} (its first try is still being made)`, lost: true };
      }
      if (status === 429 || status === 503) return { retry: 'backoff', why, lost };
      if (status === 500) return { retry: 'backoff', why: `${why} [request_id ${envelope.request_id}]`, internal: true, lost };
      return { retry: 'no', error: new ApiError(a.what, status, envelope.code, envelope.message, envelope.param, envelope.request_id), lost };
    }
    // No envelope: the AWS gateway's own answer, a proxy's, or (for a signed URL) the store's.
    const message = gatewayMessage(text);
    const why = `${status}${message ? ` ${JSON.stringify(message)}` : ''} (${a.api ? 'from the gateway, not the API' : 'from the store'})`;
    if (status === 429 || status === 503) return after !== undefined ? waitFor(why, `http_${status}`, message ?? 'no error envelope') : { retry: 'backoff', why, lost };
    if (status >= 500) return { retry: 'backoff', why, lost };
    // API Gateway answers a path it has no route for with 404 "Not Found" (HTTP API) or 403 "Missing Authentication Token" (REST API).
    const wrongPath = status === 404 || (status === 403 && message === 'Missing Authentication Token');
    const hint = a.api
      ? wrongPath ? " (is the URL the API's base address, with its stage path and without /v1?)" : ''
      : status === 403 || status === 404 ? ' (the link expired, or the image was deleted)'
      : status === 412 && a.method === 'PUT' ? ' (the upload link was used already: each writes once)' : '';
    return { retry: 'no', error: new ApiError(a.what, status, `http_${status}`, `${message ?? 'no error envelope'}${hint}`), lost };
  }
}

/**
 * Which limit a 429 is of, from the RateLimit fields (draft-ietf-httpapi-ratelimit-headers, as the API
 * sends them): `"uploads" (1 per 3600 s)`. With several policies, the one with none left; null when
 * the answer has none.
 */
export function limitOf(policyField: string | null, stateField: string | null): string | null {
  if (!policyField) return null;
  const policies = [...policyField.matchAll(/"([^"]*)"\s*;\s*q=(\d+)\s*;\s*w=(\d+)/g)].map((m) => ({ name: m[1]!, text: `"${m[1]}" (${m[2]} per ${m[3]} s)` }));
  if (policies.length === 0) return scrubbed(policyField.slice(0, 200));
  const spent = [...(stateField ?? '').matchAll(/"([^"]*)"\s*;\s*r=0\b/g)].map((m) => m[1]);
  return (policies.find((p) => spent.includes(p.name)) ?? policies[0]!).text;
}

/** What fetch's throw means: a network error to retry, or a request fetch will never send. */
function networkVerdict(a: Attempt, e: unknown): Verdict {
  const cause = (e as { cause?: { code?: unknown; message?: unknown; errors?: Array<{ code?: unknown }> } }).cause;
  const code = typeof cause?.code === 'string' ? cause.code : typeof cause?.errors?.[0]?.code === 'string' ? cause.errors[0].code : undefined;
  if (code !== undefined) {
    // Refused, or no such host: the request never reached a server. Anything else (a reset, a
    // socket closed mid-answer) may have come after the server had the request.
    const unsent = code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EAI_AGAIN';
    return { retry: 'backoff', why: `network error (${code})`, refused: code === 'ECONNREFUSED', noHost: code === 'ENOTFOUND', lost: !unsent };
  }
  // undici's own refusals, before any connection: "fetch failed" with a cause but no system code (a
  // port fetch blocks, a scheme it does not speak), or a TypeError of its own (credentials in the URL,
  // a header value it cannot carry). Sending it again would fail the same way.
  if (e instanceof TypeError && (e.message !== 'fetch failed' || typeof cause?.message === 'string')) {
    const why = e.message === 'fetch failed' ? String(cause?.message) : e.message;
    return { retry: 'no', error: new CannotSend(`${a.what}: fetch will not send it (${scrubbed(why)})`, a.api), lost: false };
  }
  return { retry: 'backoff', why: `network error (${causeText(e)})`, lost: true };
}

/** An error's own words, URLs in it shown without credentials or query. */
function causeText(e: unknown): string {
  const cause = (e as { cause?: { code?: unknown; message?: unknown } }).cause;
  const text = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : e instanceof Error ? e.message : String(e);
  return scrubbed(text);
}

/** The error envelope in a body, if it is one. */
function envelopeOf(text: string): Envelope | undefined {
  try {
    const body = JSON.parse(text) as { error?: Partial<Envelope> };
    const e = body?.error;
    if (e && typeof e.code === 'string' && typeof e.message === 'string') {
      return { code: e.code, message: e.message, param: typeof e.param === 'string' ? e.param : null, request_id: typeof e.request_id === 'string' ? e.request_id : '' };
    }
  } catch {
    // Not JSON: not an envelope.
  }
  return undefined;
}

/** The gateway's `{"message": "Too Many Requests"}`, or a short text body; never a long page, nor a URL's query. */
function gatewayMessage(text: string): string | undefined {
  try {
    const m = (JSON.parse(text) as { message?: unknown })?.message;
    if (typeof m === 'string') return scrubbed(m.slice(0, 200));
  } catch {
    // Not JSON.
  }
  const flat = text.replace(/\s+/g, ' ').trim();
  // S3's own error document (a signed link's answer in AWS): its Code and Message.
  const s3 = /^<\?xml[^>]*>\s*<Error>\s*<Code>([A-Za-z]{1,64})<\/Code>\s*<Message>([^<]{0,200})<\/Message>/.exec(flat);
  if (s3) return scrubbed(`${s3[1]}: ${s3[2]}`);
  return flat && flat.length <= 200 && !flat.startsWith('<') ? scrubbed(flat) : undefined;
}
