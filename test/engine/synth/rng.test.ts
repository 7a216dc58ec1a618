import { describe, expect, it } from 'vitest';
import { Rng, createRng } from '../../../gpu-worker/engine/synth/rng.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';

const draw = (r: Rng, n: number) => Array.from({ length: n }, () => r.nextU32());

describe('Rng', () => {
  it('matches the xoshiro128** reference sequence for state [1,2,3,4]', () => {
    // Reference values from the C implementation (prng.di.unimi.it/xoshiro128starstar.c).
    const r = Rng.fromState([1, 2, 3, 4]);
    expect(draw(r, 6)).toEqual([11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  });

  it('is deterministic per seed, and different seeds differ', () => {
    expect(draw(createRng(42), 100)).toEqual(draw(createRng(42), 100));
    const a = draw(createRng(0), 100);
    const b = draw(createRng(1), 100);
    const c = draw(createRng(2 ** 32), 100); // high word only
    expect(a).not.toEqual(b);
    expect(a).not.toEqual(c);
    expect(draw(createRng(5n), 10)).toEqual(draw(createRng(5), 10));
    // A pinned prefix: any change to seeding or the generator breaks reproducibility of old seeds.
    const r = createRng(1234);
    expect([r.nextU32(), r.nextU32(), r.next(), r.normal()]).toEqual([398652832, 1867665334, 0.6616128650960396, -0.9114870969185757]);
  });

  it('forks by label independently of how much the parent drew', () => {
    const p1 = createRng(7);
    const p2 = createRng(7);
    for (let i = 0; i < 1000; i++) p2.next();
    expect(draw(p1.fork('aug'), 20)).toEqual(draw(p2.fork('aug'), 20));
    expect(draw(p1.fork('aug'), 20)).not.toEqual(draw(p1.fork('init'), 20));
    expect(draw(p1.fork('aug'), 20)).not.toEqual(draw(createRng(8).fork('aug'), 20));
    expect(draw(p1.fork('aug'), 20)).not.toEqual(draw(createRng(7), 20));
  });

  it('has the right uniform moments and range', () => {
    const r = createRng(99);
    const n = 200_000;
    let s = 0, s2 = 0, min = 1, max = 0;
    for (let i = 0; i < n; i++) {
      const x = r.next();
      s += x; s2 += x * x;
      min = Math.min(min, x); max = Math.max(max, x);
    }
    const mean = s / n;
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.005);
    expect(Math.abs(s2 / n - mean * mean - 1 / 12)).toBeLessThan(0.002);
  });

  it('has the right normal moments', () => {
    const r = createRng(3);
    const n = 200_000;
    let s = 0, s2 = 0, s4 = 0;
    for (let i = 0; i < n; i++) {
      const x = r.normal();
      s += x; s2 += x * x; s4 += x ** 4;
    }
    expect(Math.abs(s / n)).toBeLessThan(0.01);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.015);
    expect(Math.abs(s4 / n - 3)).toBeLessThan(0.1); // kurtosis of a Gaussian
  });

  it('int(n) is in range and unbiased enough; bad n is a typed error', () => {
    const r = createRng(11);
    const counts = new Array(6).fill(0);
    for (let i = 0; i < 60_000; i++) counts[r.int(6)]++;
    for (const c of counts) expect(Math.abs(c - 10_000)).toBeLessThan(400);
    expect(() => r.int(0)).toThrow(EngineError);
    expect(() => r.int(1.5)).toThrow(EngineError);
    expect(() => createRng(-1)).toThrow(EngineError);
    expect(() => createRng(0.5)).toThrow(EngineError);
  });

  it('categorical follows the weights', () => {
    const r = createRng(5);
    const counts = [0, 0, 0];
    for (let i = 0; i < 30_000; i++) counts[r.categorical([1, 0, 3])]++;
    expect(counts[1]).toBe(0);
    expect(Math.abs(counts[2] / 30_000 - 0.75)).toBeLessThan(0.015);
    expect(() => r.categorical([0, 0])).toThrow(EngineError);
  });
});
