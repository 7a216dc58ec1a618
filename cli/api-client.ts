// A client of the clipag HTTP API that retries the way the README asks (Limits, HTTP errors), for
// `clipag remote`. Fetch only: no SDK, no dependency. Types come from the API's own zod schemas.
//
// Retry rules, in one place:
// - 429 and 503 with the error envelope and Retry-After (rate_limited, too_many_active_jobs,
//   queue_unavailable, busy, unavailable), and 409 idempotency_in_progress: wait as Retry-After says.
//   A Retry-After that runs past the deadline ends the call at once (TimedOut): retrying sooner is
//   refused, and waiting out the rest of --timeout to then give up helps no one.
// - The AWS gateway's own 429, 500, 502, 503, 504 (`{"message": …}`, no envelope, no Retry-After),
//   network errors and attempts that got no answer in time: exponential back-off with jitter (about 1,
//   2, 4, 8, 16 s, at most 30 s a wait), at most BACKOFF_ATTEMPTS tries in a row; the app's own 500
//   internal_error at most INTERNAL_ERROR_ATTEMPTS tries (a bug does not go away by waiting).
// - Anything else fails at once (ApiError, with the envelope's code, message, param and request_id).
// POST /v1/generations is only retried with the one Idempotency-Key the caller made for it, so a retry
// after a lost answer gets the same job (ADR 0004). Signed URLs (upload PUT, image GET) never carry the
// API key, and no message here ever holds the key or a signed URL's query (its signature).
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { z } from '@hono/zod-openapi';
import type { ErrorEnvelope } from '../shared/schemas/error.ts';
import type { GenerationRequest } from '../shared/schemas/generation.ts';
import type { GenerationView } from '../shared/schemas/view.ts';
import type { UploadRequest, UploadView } from '../functions/schemas.ts';

export type GenerationBody = z.input<typeof GenerationRequest>;
export type Generation = GenerationView;
export type Upload = z.output<typeof UploadView>;
type UploadBody = z.input<typeof UploadRequest>;
type Envelope = ErrorEnvelope['error'];

/** Back-off tries in a row (network errors, the gateway's own answers) before giving up. */
export const BACKOFF_ATTEMPTS = 6;
/** Tries of a request the app answers 500 internal_error. */
export const INTERNAL_ERROR_ATTEMPTS = 3;
/** The longest back-off wait. */
export const BACKOFF_CAP_MS = 30_000;
/** The shortest wait on a Retry-After. */
const MIN_RETRY_AFTER_MS = 500;
/** How long an attempt may go unanswered beyond the wait it asked for, before it counts as lost. */
const ANSWER_GRACE_MS = 30_000;
/** An image download's attempt. */
const DOWNLOAD_ATTEMPT_MS = 120_000;

/** The API (or a signed URL) said no, in a way a retry will not change. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
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

/** The deadline came before an answer that ends the call (a Retry-After past it, or retries that ran out of time). */
export class TimedOut extends Error {
  override readonly name = 'TimedOut';
}

/** Transient failures, retried until BACKOFF_ATTEMPTS (or INTERNAL_ERROR_ATTEMPTS) ran out. */
export class GaveUp extends Error {
  override readonly name = 'GaveUp';
}

/** The caller's signal (Ctrl-C) stopped the call. */
export class Interrupted extends Error {
  override readonly name = 'Interrupted';
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
}

/** One call's bound: an absolute time (Date.now() ms) after which no wait starts. */
export interface CallOptions {
  deadline: number;
}

interface Attempt {
  method: 'GET' | 'POST' | 'PUT';
  url: string;
  /** Shown in notes and errors: the method and the path, never a query. */
  what: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** An API call (bearer key, error envelope), or a signed URL (neither). */
  api: boolean;
  attemptMs: number;
  deadline: number;
  /** Said when a retry re-sends: "with the same Idempotency-Key". */
  resend?: string;
}

/** A 2xx answer, its body read. */
interface Answer {
  res: Response;
  bytes: Uint8Array;
}

type Verdict = { retry: 'after'; ms: number; why: string } | { retry: 'backoff'; why: string; internal?: boolean } | { retry: 'no'; error: Error };

/** Seconds from a Retry-After field (delta-seconds or an HTTP date); undefined when absent or unreadable. */
export function retryAfterMs(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 && ms % 1000 !== 0 ? 1 : 0)} s`;

/** A URL as it may be shown: origin and path, without the query that signs it. */
export function shownUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(an unreadable URL)';
  }
}

export class ClipagClient {
  readonly #base: URL;
  readonly #key: string;
  readonly #note: (line: string) => void;
  readonly #signal: AbortSignal | undefined;
  readonly #fetch: typeof fetch;
  readonly #random: () => number;

  constructor(opts: ClientOptions) {
    // A trailing slash, so that relative paths land under a stage path ("…/prod/" + "v1/…").
    this.#base = new URL(opts.url.endsWith('/') ? opts.url : `${opts.url}/`);
    this.#key = opts.key;
    this.#note = opts.note;
    this.#signal = opts.signal;
    this.#fetch = opts.fetch ?? fetch;
    this.#random = opts.random ?? Math.random;
  }

  /** An upload grant (POST /v1/uploads), then the bytes PUT to its signed URL with the headers it names. */
  async upload(bytes: Uint8Array, o: CallOptions): Promise<Upload> {
    const body: UploadBody = { content_type: 'image/png', bytes: bytes.length };
    const { json } = await this.#api<Upload>('POST', 'v1/uploads', { ...o, body });
    await this.#send({
      method: 'PUT',
      url: json.url,
      what: `PUT ${shownUrl(json.url)}`,
      headers: json.headers,
      body: bytes,
      api: false,
      attemptMs: DOWNLOAD_ATTEMPT_MS,
      deadline: o.deadline,
    });
    return json;
  }

  /** POST /v1/generations with its Idempotency-Key (the same on every retry) and `Prefer: wait` when waitSec > 0. */
  async createGeneration(body: GenerationBody, o: CallOptions & { idempotencyKey: string; waitSec: number }): Promise<{ generation: Generation; replayed: boolean; held: boolean }> {
    const { json, res } = await this.#api<Generation>('POST', 'v1/generations', {
      ...o,
      body,
      headers: { 'Idempotency-Key': o.idempotencyKey },
      resend: 'with the same Idempotency-Key',
    });
    return { generation: json, replayed: res.headers.get('idempotent-replayed') === 'true', held: res.headers.has('preference-applied') };
  }

  /** GET /v1/generations/{id}, held with `Prefer: wait` when waitSec > 0. `held`: the API honoured the wait. */
  async getGeneration(id: string, o: CallOptions & { waitSec: number }): Promise<{ generation: Generation; held: boolean }> {
    const { json, res } = await this.#api<Generation>('GET', `v1/generations/${encodeURIComponent(id)}`, o);
    return { generation: json, held: res.headers.has('preference-applied') };
  }

  /** POST /v1/generations/{id}/cancel (idempotent; 409 job_terminal once it succeeded or failed). */
  async cancelGeneration(id: string, o: CallOptions): Promise<Generation> {
    return (await this.#api<Generation>('POST', `v1/generations/${encodeURIComponent(id)}/cancel`, o)).json;
  }

  /** A signed URL's bytes (an output image), retried as the API is; no key sent. */
  async download(url: string, o: CallOptions): Promise<Uint8Array> {
    return (await this.#send({ method: 'GET', url, what: `GET ${shownUrl(url)}`, headers: {}, api: false, attemptMs: DOWNLOAD_ATTEMPT_MS, deadline: o.deadline })).bytes;
  }

  async #api<T>(
    method: 'GET' | 'POST',
    path: string,
    o: CallOptions & { body?: unknown; headers?: Record<string, string>; waitSec?: number; resend?: string },
  ): Promise<{ json: T; res: Response }> {
    const url = new URL(path, this.#base).toString();
    const headers: Record<string, string> = { Authorization: `Bearer ${this.#key}`, Accept: 'application/json', ...o.headers };
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    if (o.waitSec !== undefined && o.waitSec > 0) headers.Prefer = `wait=${o.waitSec}`;
    const { res, bytes } = await this.#send({
      method,
      url,
      what: `${method} ${new URL(url).pathname}`,
      headers,
      ...(o.body !== undefined ? { body: JSON.stringify(o.body) } : {}),
      api: true,
      attemptMs: (o.waitSec ?? 0) * 1000 + ANSWER_GRACE_MS,
      deadline: o.deadline,
      ...(o.resend ? { resend: o.resend } : {}),
    });
    let json: T;
    try {
      json = JSON.parse(new TextDecoder().decode(bytes)) as T;
    } catch {
      throw new ApiError(`${method} ${new URL(url).pathname}`, res.status, 'not_json', `the answer is not JSON (is ${this.#base.origin} a clipag API?)`);
    }
    return { json, res };
  }

  /** Sends one request until it is answered with a 2xx, retrying by the rules above. */
  async #send(a: Attempt): Promise<Answer> {
    let backoffs = 0;
    let internals = 0;
    for (;;) {
      const verdict = await this.#attempt(a);
      if ('answer' in verdict) return verdict.answer;
      if (verdict.retry === 'no') throw verdict.error;
      let ms: number;
      let how: string;
      if (verdict.retry === 'after') {
        backoffs = 0;
        // A Retry-After of 0, again and again, must not become a tight loop.
        ms = Math.max(MIN_RETRY_AFTER_MS, verdict.ms);
        if (Date.now() + ms > a.deadline) {
          throw new TimedOut(`${a.what}: ${verdict.why} and asks to wait ${seconds(ms)} (Retry-After), past --timeout (${seconds(Math.max(0, a.deadline - Date.now()))} left)`);
        }
        how = `waiting ${seconds(ms)} (Retry-After)`;
      } else {
        backoffs++;
        if (verdict.internal) internals++;
        const limit = verdict.internal ? INTERNAL_ERROR_ATTEMPTS : BACKOFF_ATTEMPTS;
        const tries = verdict.internal ? internals : backoffs;
        if (tries >= limit) throw new GaveUp(`${a.what}: ${verdict.why}; gave up after ${limit} tries`);
        // 1, 2, 4 … s, each scaled by a random factor in [0.5, 1.5) so that clients refused together do not return together.
        const nominal = Math.min(BACKOFF_CAP_MS, 1000 * 2 ** (backoffs - 1));
        ms = Math.round(Math.min(BACKOFF_CAP_MS, nominal * (0.5 + this.#random())));
        const left = a.deadline - Date.now();
        if (left <= 0) throw new TimedOut(`${a.what}: ${verdict.why}; --timeout passed while retrying`);
        // Capped at what is left of --timeout: one last try at the deadline.
        ms = Math.min(ms, left);
        how = `backing off ${seconds(ms)} (try ${tries + 1} of ${limit})`;
      }
      this.#note(`clipag remote: ${a.what}: ${verdict.why}; ${how}, then ${a.resend ? `sending it again ${a.resend}` : 'trying again'}`);
      try {
        await sleepFor(ms, undefined, this.#signal ? { signal: this.#signal } : {});
      } catch (e) {
        if (this.#signal?.aborted) throw new Interrupted(`interrupted while waiting to retry ${a.what}`);
        throw e;
      }
    }
  }

  /** One try: the 2xx answer, or what to do about it. */
  async #attempt(a: Attempt): Promise<{ answer: Answer } | Verdict> {
    if (this.#signal?.aborted) throw new Interrupted(`interrupted before ${a.what}`);
    const timeout = AbortSignal.timeout(a.attemptMs);
    const signal = this.#signal ? AbortSignal.any([this.#signal, timeout]) : timeout;
    let res: Response;
    try {
      res = await this.#fetch(a.url, {
        method: a.method,
        headers: a.headers,
        ...(a.body !== undefined ? { body: a.body } : {}),
        signal,
        // The API never redirects; a redirect followed elsewhere could carry the key there.
        redirect: 'manual',
      });
      if (res.ok) {
        // Read now, inside the attempt: a body cut short is retried like any lost answer.
        return { answer: { res, bytes: new Uint8Array(await res.arrayBuffer()) } };
      }
    } catch (e) {
      if (this.#signal?.aborted) throw new Interrupted(`interrupted during ${a.what}`);
      if (timeout.aborted) return { retry: 'backoff', why: `no answer within ${seconds(a.attemptMs)}` };
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      return { retry: 'backoff', why: `network error (${cause?.code ?? cause?.message ?? (e as Error).message})` };
    }
    const text = await res.text().catch(() => '');
    const envelope = a.api ? envelopeOf(text) : undefined;
    const after = retryAfterMs(res.headers.get('retry-after'));
    const status = res.status;
    if (status >= 300 && status < 400) {
      return { retry: 'no', error: new ApiError(a.what, status, `http_${status}`, `redirected to ${res.headers.get('location') ?? '(no Location)'}; give that address instead`) };
    }
    if (envelope) {
      const why = `${status} ${envelope.code}`;
      if ((status === 429 || status === 503) && after !== undefined) return { retry: 'after', ms: after, why };
      if (status === 409 && envelope.code === 'idempotency_in_progress') return { retry: 'after', ms: after ?? 1000, why: `${why} (its first try is still being made)` };
      if (status === 429 || status === 503) return { retry: 'backoff', why };
      if (status === 500) return { retry: 'backoff', why: `${why} [request_id ${envelope.request_id}]`, internal: true };
      return { retry: 'no', error: new ApiError(a.what, status, envelope.code, envelope.message, envelope.param, envelope.request_id) };
    }
    // No envelope: the AWS gateway's own answer, a proxy's, or (for a signed URL) the store's.
    const said = gatewayMessage(text);
    const why = `${status}${said ? ` ${JSON.stringify(said)}` : ''} (${a.api ? 'from the gateway, not the API' : 'from the store'})`;
    if (status === 429 || status === 503) return after !== undefined ? { retry: 'after', ms: after, why } : { retry: 'backoff', why };
    if (status >= 500) return { retry: 'backoff', why };
    const hint = a.api ? (status === 404 ? ' (is the URL the API\'s base address?)' : '') : status === 403 || status === 404 ? ' (the link expired, or the image was deleted)' : '';
    return { retry: 'no', error: new ApiError(a.what, status, `http_${status}`, `${said ?? 'no error envelope'}${hint}`) };
  }
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

/** The gateway's `{"message": "Too Many Requests"}`, or a short text body; never a long page. */
function gatewayMessage(text: string): string | undefined {
  try {
    const m = (JSON.parse(text) as { message?: unknown })?.message;
    if (typeof m === 'string') return m.slice(0, 200);
  } catch {
    // Not JSON.
  }
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat && flat.length <= 200 && !flat.startsWith('<') ? flat : undefined;
}
