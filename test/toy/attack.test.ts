// pgdUpdate: the PGD step shared by the CLIP trainer, the judge's robustness check and eval-pag.
import { describe, expect, it } from 'vitest';
import { pgdUpdate } from '../../gpu-worker/engine/toy/attack.ts';

const norm = (a: Float32Array, b: Float32Array, o: number, n: number) => {
  let s = 0;
  for (let k = 0; k < n; k++) s += (a[o + k] - b[o + k]) ** 2;
  return Math.sqrt(s);
};

describe('pgdUpdate', () => {
  const clean = new Float32Array([0.5, 0.5, 0.5, 0.5, 0.1, 0.9, 0.5, 0.5]);
  const grad = new Float32Array([3, 4, 0, 0, -1, 1, 0, 0]);

  it('L2: steps along each image\'s normalized gradient and projects onto the ball', () => {
    const x = new Float32Array(clean);
    pgdUpdate(x, clean, grad, 2, 'l2', 1, 0.1);
    // image 0: gradient (3,4,0,0)/5 · 0.1
    expect(x[0]).toBeCloseTo(0.56, 6);
    expect(x[1]).toBeCloseTo(0.58, 6);
    expect(x[2]).toBe(0.5);
    // a second, larger step is cut back to the ε-ball
    pgdUpdate(x, clean, grad, 2, 'l2', 0.15, 0.3);
    expect(norm(x, clean, 0, 4)).toBeCloseTo(0.15, 5);
  });

  it('L2: pixels stay in [0, 1]', () => {
    const x = new Float32Array(clean);
    pgdUpdate(x, clean, new Float32Array([0, 0, 0, 0, -100, 100, 0, 0]), 2, 'l2', 10, 5);
    for (const v of x) expect(v >= 0 && v <= 1).toBe(true);
    expect(x[4]).toBe(0);
    expect(x[5]).toBe(1);
  });

  it('L∞: signed steps, clipped to the box around the clean pixels', () => {
    const x = new Float32Array(clean);
    pgdUpdate(x, clean, grad, 2, 'linf', 0.05, 0.03);
    expect(x[0]).toBeCloseTo(0.53, 6);
    expect(x[2]).toBe(0.5); // zero gradient: no move
    expect(x[4]).toBeCloseTo(0.07, 6);
    pgdUpdate(x, clean, grad, 2, 'linf', 0.05, 0.03);
    expect(x[0]).toBeCloseTo(0.55, 6);
    expect(x[4]).toBeCloseTo(0.05, 6);
  });
});
