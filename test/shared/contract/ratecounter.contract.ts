import { describe, expect, it } from 'vitest';
import type { RateCounter } from '../../../shared/ports.ts';
import { SlidingWindowRateLimiter } from '../../../shared/rate-limit.ts';

let serial = 0;
/** Keys unique per test, so suites may share one store. */
const freshKey = (label: string) => `${label}/${process.pid}-${Date.now().toString(36)}-${serial++}`;
const LATER = () => Math.ceil(Date.now() / 1000) + 3600;

export function rateCounterContract(name: string, makeCounter: () => Promise<RateCounter>): void {
  describe(`RateCounter contract: ${name}`, () => {
    it('an absent count reads 0; each add below the ceiling returns the new count', async () => {
      const counter = await makeCounter();
      const key = freshKey('add');
      expect(await counter.get(key, 7)).toBe(0);
      expect(await counter.addBelow(key, 7, 3, LATER())).toBe(1);
      expect(await counter.addBelow(key, 7, 3, LATER())).toBe(2);
      expect(await counter.get(key, 7)).toBe(2);
    });

    it('at the ceiling nothing is added and null comes back; a higher ceiling adds again', async () => {
      const counter = await makeCounter();
      const key = freshKey('ceiling');
      expect(await counter.addBelow(key, 1, 2, LATER())).toBe(1);
      expect(await counter.addBelow(key, 1, 2, LATER())).toBe(2);
      expect(await counter.addBelow(key, 1, 2, LATER())).toBeNull();
      expect(await counter.addBelow(key, 1, 1, LATER())).toBeNull();
      expect(await counter.get(key, 1)).toBe(2);
      expect(await counter.addBelow(key, 1, 3, LATER())).toBe(3);
      expect(await counter.addBelow(key, 2, 0, LATER())).toBeNull();
      expect(await counter.get(key, 2)).toBe(0);
    });

    it('keys and windows count apart', async () => {
      const counter = await makeCounter();
      const [a, b] = [freshKey('a'), freshKey('b')];
      await counter.addBelow(a, 5, 10, LATER());
      await counter.addBelow(a, 5, 10, LATER());
      await counter.addBelow(a, 6, 10, LATER());
      await counter.addBelow(b, 5, 10, LATER());
      expect([await counter.get(a, 5), await counter.get(a, 6), await counter.get(b, 5), await counter.get(b, 4)]).toEqual([2, 1, 1, 0]);
    });

    it('concurrent adds never pass the ceiling, and each success gets its own count', async () => {
      const counter = await makeCounter();
      const key = freshKey('race');
      const results = await Promise.all(Array.from({ length: 30 }, () => counter.addBelow(key, 9, 10, LATER())));
      const granted = results.filter((r): r is number => r !== null).sort((x, y) => x - y);
      expect(granted).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(await counter.get(key, 9)).toBe(10);
    });

    it('under the sliding-window limiter, concurrent requests of one account get exactly the limit through', async () => {
      const limiter = new SlidingWindowRateLimiter(await makeCounter(), { limit: 12, name: 'requests' });
      const owner = freshKey('owner');
      const now = Date.now();
      const decisions = await Promise.all(Array.from({ length: 40 }, () => limiter.take(owner, now)));
      expect(decisions.filter((d) => d.allowed)).toHaveLength(12);
      expect(decisions.filter((d) => !d.allowed).every((d) => d.remaining === 0 && d.resetSec >= 1)).toBe(true);
    });
  });
}
