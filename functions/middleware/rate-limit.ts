import type { MiddlewareHandler } from 'hono';
import { operatorMessage, TooManyRequestsError } from '../../shared/errors.ts';
import type { RateDecision, SlidingWindowRateLimiter } from '../../shared/rate-limit.ts';
import type { AppEnv, AppLogEntry } from '../types.ts';
import { errorResponse } from './errors.ts';

/** A store outage is logged at most this often (every request would otherwise log it). */
const WARN_EVERY_MS = 60_000;

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
 * The per-account request limit (ADR 0026), after `auth`: over it, a 429 rate_limited with
 * Retry-After; every answer carries the RateLimit fields. When the counts cannot be read or written
 * the request goes through (fail open, logged): an outage of the counter must not take the API down,
 * and API Gateway's stage throttle still bounds the whole deployment.
 */
export function rateLimit(limiter: SlidingWindowRateLimiter, options: { clock: () => Date; log: (entry: AppLogEntry) => void }): MiddlewareHandler<AppEnv> {
  let lastWarnMs = -Infinity;
  return async function rateLimitMiddleware(c, next) {
    let decision: RateDecision;
    try {
      decision = await limiter.take(c.get('owner'), options.clock().getTime());
    } catch (error) {
      const now = Date.now();
      if (now - lastWarnMs >= WARN_EVERY_MS) {
        lastWarnMs = now;
        options.log({ level: 'warn', msg: 'rate limit: the counts are unavailable; requests go through unlimited (logged once a minute)', request_id: c.get('requestId'), error: operatorMessage(error) });
      }
      return next();
    }
    const headers = rateLimitHeaders(limiter.name, decision);
    if (!decision.allowed) {
      const res = errorResponse(
        c,
        new TooManyRequestsError(`over this account's limit of ${decision.limit} requests per ${decision.windowSec} s; retry after ${decision.resetSec} s`, {
          code: 'rate_limited',
          retryAfterSec: decision.resetSec,
        }),
      );
      for (const [name, value] of Object.entries(headers)) res.headers.set(name, value);
      return res;
    }
    await next();
    for (const [name, value] of Object.entries(headers)) c.res.headers.set(name, value);
  };
}
