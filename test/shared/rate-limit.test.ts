// The sliding-window arithmetic of the per-account request limit (ADR 0026), on the memory counter
// (the contract suites prove the DynamoDB adapter counts alike).
import { describe, expect, it } from 'vitest';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import type { RateCounter } from '../../shared/ports.ts';
import { SlidingWindowRateLimiter } from '../../shared/rate-limit.ts';
import { rng } from '../helpers/rng.ts';

const W = 60_000;
/** The start of a window, far from the epoch (any aligned instant). */
const T0 = 29_000_000 * W;

function limiter(limit: number, counter: RateCounter = new MemoryRateCounter()) {
  return new SlidingWindowRateLimiter(counter, { limit, name: 'requests' });
}

describe('SlidingWindowRateLimiter', () => {
  it('lets the limit through in a window, then refuses with the exact wait: the rest of the window plus the time the old count needs to age out', async () => {
    const l = limiter(5);
    const got = [];
    for (let i = 0; i < 5; i++) got.push(await l.take('acct', T0 + 10_000));
    expect(got.map((d) => [d.allowed, d.remaining, d.resetSec])).toEqual([
      [true, 4, 50],
      [true, 3, 50],
      [true, 2, 50],
      [true, 1, 50],
      [true, 0, 62], // none left: t is when the next one fits, as a refusal's Retry-After
    ]);
    // Next window at 12 s: 5 × (1 − 12/60) + 0 + 1 = 5 ≤ 5.
    expect(await l.take('acct', T0 + 10_000)).toMatchObject({ allowed: false, remaining: 0, resetSec: 62, limit: 5, windowSec: 60 });
    expect((await l.take('acct', T0 + W + 11_900)).allowed).toBe(false);
    expect((await l.take('acct', T0 + W + 12_000)).allowed).toBe(true);
  });

  it('slides: half-way through the next window half of the old count still counts; refusals are not counted', async () => {
    const l = limiter(5);
    for (let i = 0; i < 5; i++) await l.take('acct', T0 + 1000);
    const half = T0 + W + 30_000;
    const got = [];
    for (let i = 0; i < 4; i++) got.push(await l.take('acct', half));
    // 5 × 0.5 = 2.5 counted: room for 2.
    expect(got.map((d) => d.allowed)).toEqual([true, true, false, false]);
    // 5 × (1 − (30 + d)/60) + 2 + 1 ≤ 5 at d = 6 s, however often it was refused meanwhile.
    expect(got[2]!.resetSec).toBe(6);
    for (let i = 0; i < 20; i++) expect((await l.take('acct', half + 5_000)).allowed).toBe(false);
    expect((await l.take('acct', half + 6_000)).allowed).toBe(true);
  });

  it('t on the last request let through (r=0) is exact too: a second earlier is refused, at t it goes through', async () => {
    for (const [limit, at] of [[1, 59_999], [5, 10_000], [3, 30_500]] as const) {
      const l = limiter(limit);
      let last;
      for (let i = 0; i < limit; i++) last = await l.take('acct', T0 + at);
      expect(last).toMatchObject({ allowed: true, remaining: 0 });
      const t = last!.resetSec;
      if (t >= 2) expect((await l.take('acct', T0 + at + (t - 1) * 1000)).allowed, `limit ${limit}`).toBe(false);
      expect((await l.take('acct', T0 + at + t * 1000)).allowed, `limit ${limit}`).toBe(true);
    }
  });

  it('a refused account is refused from memory until its Retry-After: no store call, the same deadline', async () => {
    const memory = new MemoryRateCounter();
    let calls = 0;
    const counting: RateCounter = { get: (k, w) => (calls++, memory.get(k, w)), addBelow: (k, w, c, e) => (calls++, memory.addBelow(k, w, c, e)) };
    const l = limiter(2, counting);
    await l.take('acct', T0);
    await l.take('acct', T0);
    const first = await l.take('acct', T0 + 1000);
    expect(first).toMatchObject({ allowed: false, fromStore: true });
    const before = calls;
    const again = await l.take('acct', T0 + 11_000);
    expect(again).toMatchObject({ allowed: false, fromStore: false, resetSec: first.resetSec - 10 });
    expect(calls).toBe(before);
    expect((await l.take('other', T0 + 11_000)).allowed).toBe(true);
  });

  it('a refusal stands when the read for its wait fails (the wait is then the ceiling\'s)', async () => {
    const memory = new MemoryRateCounter();
    let failCurrent = false;
    const flaky: RateCounter = {
      get: async (k, w) => {
        if (failCurrent && w === Math.floor(T0 / W)) throw new Error('injected: read failed');
        return memory.get(k, w);
      },
      addBelow: (k, w, c, e) => memory.addBelow(k, w, c, e),
    };
    const l = limiter(2, flaky);
    await l.take('acct', T0 + 10_000);
    await l.take('acct', T0 + 10_000);
    failCurrent = true;
    expect(await l.take('acct', T0 + 10_000)).toMatchObject({ allowed: false, resetSec: 50 + 30 });
  });

  it('accounts count apart', async () => {
    const l = limiter(2);
    await l.take('a', T0);
    await l.take('a', T0);
    expect((await l.take('a', T0)).allowed).toBe(false);
    expect((await l.take('b', T0)).allowed).toBe(true);
  });

  it('randomized: never more than the limit in one window, and Retry-After is exact to the second (a second earlier is refused, then it is let through)', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const random = rng(seed);
      const limit = 1 + Math.floor(random() * 30);
      const l = limiter(limit);
      const perWindow = new Map<number, number>();
      let now = T0 + Math.floor(random() * W);
      let refusals = 0;
      for (let i = 0; i < 600; i++) {
        now += Math.floor(random() * random() * 8000);
        const d = await l.take('acct', now);
        if (d.allowed) {
          const w = Math.floor(now / W);
          perWindow.set(w, (perWindow.get(w) ?? 0) + 1);
          continue;
        }
        refusals++;
        if (d.resetSec >= 2) expect((await l.take('acct', now + (d.resetSec - 1) * 1000)).allowed, `seed ${seed} step ${i}: a second early`).toBe(false);
        now += d.resetSec * 1000;
        expect((await l.take('acct', now)).allowed, `seed ${seed} step ${i}: at Retry-After`).toBe(true);
        const w = Math.floor(now / W);
        perWindow.set(w, (perWindow.get(w) ?? 0) + 1);
      }
      expect(Math.max(...perWindow.values())).toBeLessThanOrEqual(limit);
      expect(refusals, `seed ${seed}: the test must reach the limit`).toBeGreaterThan(0);
    }
  });

  it('a client under its rate is never refused; one at twice its rate gets close to its limit through per window', async () => {
    const limit = 60;
    const under = limiter(limit);
    for (let t = 0; t < 10 * W; t += W / (0.9 * limit)) expect((await under.take('steady', T0 + t)).allowed).toBe(true);
    const over = limiter(limit);
    const perWindow: number[] = [];
    for (let t = 0; t < 10 * W; t += W / (2 * limit)) {
      if ((await over.take('greedy', T0 + t)).allowed) perWindow[Math.floor(t / W)] = (perWindow[Math.floor(t / W)] ?? 0) + 1;
    }
    // After the first window, the sliding estimate keeps it within 10 % under the limit.
    for (const n of perWindow.slice(1)) {
      expect(n).toBeGreaterThanOrEqual(0.9 * limit);
      expect(n).toBeLessThanOrEqual(limit);
    }
  });

  it('reads the previous window once per account (one store call per request in steady state)', async () => {
    const memory = new MemoryRateCounter();
    let gets = 0;
    const counting: RateCounter = { get: (k, w) => (gets++, memory.get(k, w)), addBelow: (k, w, c, e) => memory.addBelow(k, w, c, e) };
    const l = limiter(100, counting);
    for (let i = 0; i < 20; i++) await l.take('acct', T0 + W + i);
    expect(gets).toBe(1);
  });

  it('refuses a nonsensical configuration', () => {
    const counter = new MemoryRateCounter();
    expect(() => new SlidingWindowRateLimiter(counter, { limit: 0, name: 'requests' })).toThrow(/≥ 1/);
    expect(() => new SlidingWindowRateLimiter(counter, { limit: 1.5, name: 'requests' })).toThrow(/whole/);
    expect(() => new SlidingWindowRateLimiter(counter, { limit: 5, windowSec: 0, name: 'requests' })).toThrow(/window/);
    expect(() => new SlidingWindowRateLimiter(counter, { limit: 5, name: 'Bad Name' })).toThrow(/name/);
  });
});

const EXACT_W = 60_000;
const EXACT_T0 = 29_000_000 * EXACT_W;

describe('exactness (a mutation review: each of these survived before)', () => {
  it('lets exactly the sliding allowance through where the float product lands a hair under a whole number (60/min, a full previous window, 20 s in: 20)', async () => {
    const l = new SlidingWindowRateLimiter(new MemoryRateCounter(), { limit: 60, name: 'requests' });
    for (let i = 0; i < 60; i++) expect((await l.take('acct', EXACT_T0 + 1000)).allowed).toBe(true);
    // 60 × (1 − 20/60) = 40 still counted: room for exactly 20 (60 − 60 × 2/3 is 19.999999999999993 in floats).
    const got = [];
    for (let i = 0; i < 21; i++) got.push((await l.take('acct', EXACT_T0 + EXACT_W + 20_000)).allowed);
    expect(got.filter(Boolean)).toHaveLength(20);
  });

  it("keeps each window's count until the next window has read it as its previous (TTL two windows past the window's start)", async () => {
    const seen: number[] = [];
    const inner = new MemoryRateCounter();
    const spy: RateCounter = { get: (k, w) => inner.get(k, w), addBelow: (k, w, c, exp) => (seen.push(exp), inner.addBelow(k, w, c, exp)) };
    const l = new SlidingWindowRateLimiter(spy, { limit: 5, name: 'requests' });
    await l.take('acct', EXACT_T0 + 59_000);
    expect(seen[0]! * 1000).toBeGreaterThanOrEqual(EXACT_T0 + 2 * EXACT_W);
  });
});
