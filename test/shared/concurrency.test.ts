import { describe, expect, it } from 'vitest';
import { forEachLimited } from '../../shared/concurrency.ts';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('forEachLimited', () => {
  it('runs every item, never more than the limit at once, and a slow item holds one slot only', async () => {
    let running = 0;
    let peak = 0;
    const done: number[] = [];
    await forEachLimited([30, 1, 1, 1, 1, 1, 1, 1], 3, async (ms) => {
      running++;
      peak = Math.max(peak, running);
      await tick(ms);
      running--;
      done.push(ms);
    });
    expect([peak, done.length, done.at(-1)]).toEqual([3, 8, 30]); // the slow one finished last; the others went past it
    await forEachLimited([], 4, async () => {
      throw new Error('never called');
    });
  });

  it('throws the first failure after the calls already started have settled, and starts no more', async () => {
    const settled: number[] = [];
    const started: number[] = [];
    const run = forEachLimited([1, 2, 3, 4, 5, 6], 2, async (i) => {
      started.push(i);
      if (i === 2) throw new Error('item 2 failed');
      await tick(10);
      settled.push(i);
    });
    await expect(run).rejects.toThrow('item 2 failed');
    expect(settled).toEqual(started.filter((i) => i !== 2)); // nothing left running behind the error
    expect(started.length).toBeLessThan(6);
  });
});
