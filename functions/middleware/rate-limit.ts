import type { Context, MiddlewareHandler } from 'hono';
import { NonRetryableError, operatorMessage, TooManyRequestsError } from '../../shared/errors.ts';
import type { RateDecision, SlidingWindowRateLimiter } from '../../shared/rate-limit.ts';
import type { AppEnv, AppLogEntry } from '../types.ts';

/**
 * After the counts fail to answer, this instance lets requests through unlimited for this long
 * without asking again: a slow or missing table must not add its deadline to every request.
 */
export const SKIP_AFTER_FAILURE_MS = 30_000;

/**
 * The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers): the policy (`q` requests per `w`
 * seconds) and the state (`r` left, `t` seconds: see RateDecision.resetSec).
 */
export function rateLimitHeaders(name: string, d: RateDecision): Record<string, string> {
  return {
    'RateLimit-Policy': `"${name}";q=${d.limit};w=${d.windowSec}`,
    RateLimit: `"${name}";r=${d.remaining};t=${d.resetSec}`,
  };
}

/**
 * The fail-open state of one counter, shared by every limit counted in it: when the counter fails,
 * all of them leave it alone for SKIP_AFTER_FAILURE_MS, so a request that passes several limits waits
 * out one failed call, not one per limit, and the failure is logged once.
 */
export class CounterBreaker {
  private skipUntilMs = -Infinity;
  private unlimited = 0;

  constructor(private readonly log: (entry: AppLogEntry) => void) {}

  /** True while the counter is being left alone (the request goes through unlimited). */
  open(): boolean {
    if (Date.now() >= this.skipUntilMs) return false;
    this.unlimited++;
    return true;
  }

  trip(error: unknown, requestId: string | undefined): void {
    this.skipUntilMs = Date.now() + SKIP_AFTER_FAILURE_MS;
    this.log({
      level: error instanceof NonRetryableError ? 'error' : 'warn',
      // `event`: the name the CDK's metric filter and alarm match (cdk/lib/queue-alarms.ts).
      event: 'rate_limit_unavailable',
      msg: `rate limit: the counts are unavailable; requests go through unlimited for ${SKIP_AFTER_FAILURE_MS / 1000} s`,
      request_id: requestId,
      error: operatorMessage(error),
      unlimited_before: this.unlimited,
    });
    this.unlimited = 0;
  }
}

export interface RateGateOptions {
  clock: () => Date;
  log: (entry: AppLogEntry) => void;
  /** Shared by the gates on one counter (default: a breaker of its own). */
  breaker?: CounterBreaker;
  /** The operator's line when the store refuses an account (default: over its limit, a 429). */
  overMessage?: string;
}

/** Where a limit is checked: the owner of the request, against one limiter, failing open. */
export class RateGate {
  private readonly breaker: CounterBreaker;

  constructor(
    private readonly limiter: SlidingWindowRateLimiter,
    private readonly options: RateGateOptions,
  ) {
    this.breaker = options.breaker ?? new CounterBreaker(options.log);
  }

  /**
   * Counts the request against the owner's limit. Within it: the RateLimit fields to add to the
   * answer. Over it: throws a 429 rate_limited (the fields are set on the context first, so the error
   * answer carries them). The counter unavailable: `null` (fail open, see rateLimit).
   */
  async check(c: Context<AppEnv>): Promise<Record<string, string> | null> {
    const decision = await this.decide(c);
    if (decision === null) return null;
    const { limiter } = this;
    const headers = rateLimitHeaders(limiter.name, decision);
    if (decision.allowed) return headers;
    for (const [name, value] of Object.entries(headers)) c.header(name, value, { append: true });
    throw new TooManyRequestsError(`over this account's limit of ${decision.limit} ${limiter.name} per ${decision.windowSec} s; retry after ${decision.resetSec} s`, {
      code: 'rate_limited',
      retryAfterSec: decision.resetSec,
    });
  }

  /**
   * Throws the 429 `check` would, without counting, when this instance already knows the owner is over
   * the limit (an earlier refusal, until its Retry-After): for work that is wasted if then refused (an
   * init image fetched from a URL, ADR 0038). Not knowing, it lets the request on to `check`.
   */
  refuseIfKnownOver(c: Context<AppEnv>): void {
    const decision = this.limiter.knownRefusal(c.get('owner'), this.options.clock().getTime());
    if (!decision) return;
    for (const [name, value] of Object.entries(rateLimitHeaders(this.limiter.name, decision))) c.header(name, value, { append: true });
    throw new TooManyRequestsError(`over this account's limit of ${decision.limit} ${this.limiter.name} per ${decision.windowSec} s; retry after ${decision.resetSec} s`, {
      code: 'rate_limited',
      retryAfterSec: decision.resetSec,
    });
  }

  /** The owner's request counted if within the limit, and the decision; `null` when the counter is unavailable (logged). */
  async decide(c: Context<AppEnv>): Promise<RateDecision | null> {
    const { limiter, options } = this;
    if (this.breaker.open()) return null;
    let decision: RateDecision;
    try {
      decision = await limiter.take(c.get('owner'), options.clock().getTime());
    } catch (error) {
      this.breaker.trip(error, c.get('requestId'));
      return null;
    }
    // Once per refusal the store decided (later ones until Retry-After come from memory): who, and for how long.
    if (!decision.allowed && decision.fromStore) {
      options.log({ level: 'warn', event: 'rate_limit_refused', msg: options.overMessage ?? 'rate limit: an account is over its limit', request_id: c.get('requestId'), owner: c.get('owner'), limit_name: limiter.name, limit: decision.limit, window_sec: decision.windowSec, retry_after_sec: decision.resetSec });
    }
    return decision;
  }
}

/** Adds `headers` to the answer, after any a nearer limit added (RFC 9110 lists: one field, comma-separated). */
function appendTo(c: Context<AppEnv>, headers: Record<string, string>): void {
  try {
    for (const [name, value] of Object.entries(headers)) c.res.headers.append(name, value);
  } catch {
    // An immutable response (Response.redirect, a fetched one): the same response, headers copied.
    c.res = new Response(c.res.body, c.res);
    for (const [name, value] of Object.entries(headers)) c.res.headers.append(name, value);
  }
}

/**
 * The per-account request limit (ADR 0026), after `auth`: over it, a 429 rate_limited with
 * Retry-After; every answer it counted carries the RateLimit fields. When the counts cannot be read
 * or written the request goes through (fail open): an outage of the counter must not take the API
 * down, and API Gateway's stage throttle still bounds the whole deployment. The failure is logged
 * (an error when it will not pass by itself: a missing table, a missing grant), and the counter is
 * left alone for SKIP_AFTER_FAILURE_MS.
 */
export function rateLimit(gate: RateGate): MiddlewareHandler<AppEnv> {
  return async function rateLimitMiddleware(c, next) {
    const headers = await gate.check(c);
    await next();
    if (headers) appendTo(c, headers);
  };
}
