// Review F3: a refusal remembered in memory (the account refused until a known time) must not
// stretch its Retry-After when the clock steps back after it: the wait stays within what the
// limiter itself can ask (under two windows), and the store decides at the time the clock now reads.
import { describe, expect, it } from 'vitest';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import { SlidingWindowRateLimiter } from '../../shared/rate-limit.ts';

const W = 60_000;
/** The start of a window, far from the epoch (any aligned instant). */
const T0 = 29_000_000 * W;

describe('SlidingWindowRateLimiter and a clock stepped back', () => {
  it('a refusal, then the clock steps back 10 minutes: no Retry-After of 650 s; the store decides afresh', async () => {
    const l = new SlidingWindowRateLimiter(new MemoryRateCounter(), { limit: 3, name: 'requests' });
    for (let i = 0; i < 3; i++) expect((await l.take('acct', T0 + 30_000)).allowed).toBe(true);
    expect(await l.take('acct', T0 + 30_000)).toMatchObject({ allowed: false, resetSec: 50 });
    // Still refused from memory a moment later, with the wait it named (no store call needed).
    expect(await l.take('acct', T0 + 40_000)).toMatchObject({ allowed: false, resetSec: 40, fromStore: false });
    // Ten minutes back: a window in which the account made no request.
    const stepped = await l.take('acct', T0 + 30_000 - 10 * W);
    expect(stepped).toMatchObject({ allowed: true, fromStore: true });
    expect(stepped.resetSec).toBeLessThanOrEqual(2 * l.windowSec);
  });
});
