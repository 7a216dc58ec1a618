// The API's per-account limits (ADR 0026): a sliding-window counter over whole windows (a minute for
// requests, an hour for upload URLs, one longest wait for Prefer: wait holds).
// The estimate at time t is `previous × (1 − elapsed/window) + current`, the usual approximation of
// a true sliding window (Cloudflare's): an instant burst at a window's edge cannot double the rate, as
// a fixed window lets it, and the store keeps two integers per account, not a log of requests (how far
// the approximation goes: ADR 0026). A request is
// counted only when it is let through (the adapter's conditional add), so a client that keeps
// retrying while refused is not locked out for longer than its own accepted traffic says.
import type { RateCounter } from './ports.ts';

export interface RateDecision {
  allowed: boolean;
  /** Requests per window. */
  limit: number;
  windowSec: number;
  /** Requests left now (after this one, when it was let through). */
  remaining: number;
  /**
   * With requests left: seconds until the current window ends (from then on its requests start to
   * age out). With none left (the last one let through, or refused): seconds until one more request
   * would be let through, if no other is let through meanwhile.
   */
  resetSec: number;
  /**
   * False when a refusal came from this instance's memory of an earlier one (the account is refused
   * until a known time, so the store is not asked again); true when the store decided.
   */
  fromStore: boolean;
}

export interface RateLimiterOptions {
  /** Requests per window, ≥ 1. */
  limit: number;
  /** Default 60 s. */
  windowSec?: number;
  /** What is limited, part of every key: `requests`, `uploads`, `waits`. */
  name: string;
  /** Previous-window counts kept in memory (they change no more once their window is over). Default 10 000. */
  cacheEntries?: number;
}

/** Seconds as the headers give them: whole, at least 1 (a 0 would invite an immediate retry that fails). */
const wholeSec = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

export class SlidingWindowRateLimiter {
  readonly limit: number;
  readonly windowSec: number;
  readonly name: string;
  private readonly windowMs: number;
  private readonly cacheEntries: number;
  /**
   * The previous window's count per key, read once: that window is over, so only requests in flight
   * at its end can still add to it. In steady state a request then costs the store one call.
   */
  private readonly previous = new Map<string, number>();
  /**
   * Accounts refused until a known time (ms): until then nothing can change the decision (the
   * estimate only falls as time passes, and no other request is let through at the ceiling), so a
   * client that ignores Retry-After costs no store call.
   */
  private readonly refusedUntil = new Map<string, number>();

  constructor(
    private readonly counter: RateCounter,
    options: RateLimiterOptions,
  ) {
    if (!Number.isInteger(options.limit) || options.limit < 1) throw new RangeError(`rate limit must be a whole number ≥ 1 (got ${options.limit})`);
    const windowSec = options.windowSec ?? 60;
    if (!Number.isInteger(windowSec) || windowSec < 1) throw new RangeError(`rate window must be whole seconds ≥ 1 (got ${windowSec})`);
    if (!/^[a-z][a-z0-9-]*$/.test(options.name)) throw new RangeError(`rate limit name must be lower-case letters, digits and hyphens (got ${JSON.stringify(options.name)})`);
    this.limit = options.limit;
    this.windowSec = windowSec;
    this.windowMs = windowSec * 1000;
    this.name = options.name;
    this.cacheEntries = options.cacheEntries ?? 10_000;
  }

  /**
   * A refusal of `subject` this limiter still remembers at `nowMs` (until its Retry-After), or null:
   * known without the store and without counting, for work worth skipping when it would be refused.
   */
  knownRefusal(subject: string, nowMs: number): RateDecision | null {
    const key = `${this.name}/${subject}`;
    const until = this.refusedUntil.get(key);
    if (until === undefined) return null;
    // A refusal with more left than any this limiter gives (under two windows, `waitMs`) was made
    // before the clock stepped back: its wait would grow by the step, so the store decides afresh.
    if (nowMs < until && until - nowMs <= 2 * this.windowMs) return { limit: this.limit, windowSec: this.windowSec, allowed: false, remaining: 0, resetSec: wholeSec(until - nowMs), fromStore: false };
    this.refusedUntil.delete(key);
    return null;
  }

  /** Counts one request of `subject` at `nowMs` if it is within the limit. Store errors propagate (the caller decides to fail open). */
  async take(subject: string, nowMs: number): Promise<RateDecision> {
    const key = `${this.name}/${subject}`;
    const base = { limit: this.limit, windowSec: this.windowSec };
    const known = this.knownRefusal(subject, nowMs);
    if (known) return known;
    const window = Math.floor(nowMs / this.windowMs);
    const elapsedMs = nowMs - window * this.windowMs;
    const weight = 1 - elapsedMs / this.windowMs;
    const previous = await this.previousCount(key, window - 1);
    // Let through while previous × weight + current + 1 ≤ limit, i.e. current + 1 ≤ floor(limit − previous × weight).
    const ceiling = Math.floor(this.limit - previous * weight + 1e-9);
    // Kept until the next window has used it as its previous one.
    const expiresAtSec = Math.ceil(((window + 2) * this.windowMs) / 1000);
    const current = ceiling > 0 ? await this.counter.addBelow(key, window, ceiling, expiresAtSec) : null;
    if (current !== null) {
      const remaining = Math.max(0, ceiling - current);
      const resetMs = remaining > 0 ? this.windowMs - elapsedMs : this.waitMs(previous, current, elapsedMs);
      return { ...base, allowed: true, remaining, resetSec: wholeSec(resetMs), fromStore: true };
    }
    // Refused: the count is at the ceiling (more if others raced in); it is read for the wait. The
    // decision stands if that read fails: the wait is then the ceiling's, the shortest it can be.
    let atCeiling = Math.max(ceiling, 0);
    try {
      atCeiling = Math.max(atCeiling, await this.counter.get(key, window));
    } catch {
      // keep the ceiling's wait
    }
    const waitMs = this.waitMs(previous, atCeiling, elapsedMs);
    if (this.refusedUntil.size >= this.cacheEntries) this.refusedUntil.clear();
    this.refusedUntil.set(key, nowMs + waitMs);
    return { ...base, allowed: false, remaining: 0, resetSec: wholeSec(waitMs), fromStore: true };
  }

  /**
   * How long until previous × weight + current + 1 ≤ limit, with no request let through meanwhile:
   * within this window the weight falls; past its end, this window's count is the previous one.
   */
  private waitMs(previous: number, current: number, elapsedMs: number): number {
    const room = this.limit - 1 - current;
    if (room >= 0 && previous > 0) {
      // previous × (1 − (elapsed + d)/W) ≤ room  ⇔  d ≥ W × (1 − room/previous) − elapsed
      const d = this.windowMs * (1 - room / previous) - elapsedMs;
      if (elapsedMs + d < this.windowMs) return Math.max(0, d);
    }
    // In the next window: current × (1 − e/W) + 1 ≤ limit  ⇔  e ≥ W × (1 − (limit − 1)/current).
    const intoNext = current > 0 ? Math.max(0, this.windowMs * (1 - (this.limit - 1) / current)) : 0;
    return this.windowMs - elapsedMs + intoNext;
  }

  private async previousCount(key: string, window: number): Promise<number> {
    const cacheKey = `${key}\u0000${window}`;
    const cached = this.previous.get(cacheKey);
    if (cached !== undefined) return cached;
    const count = await this.counter.get(key, window);
    if (this.previous.size >= this.cacheEntries) this.previous.clear();
    this.previous.set(cacheKey, count);
    return count;
  }
}
