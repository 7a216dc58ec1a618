// The operator's gradcheck (`clipag gradcheck`) must catch a wrong gradient, including an error
// orthogonal to the true gradient, which a check along the gradient alone sees only at second order
// (an fp16 constant bug once made a foreign tower's gradient 25 % wrong and passed that check by a
// hair). A stand-in graph with a known objective: what gradcheck is given is an engine handle, and a
// handle whose gradient is wrong on purpose cannot be had from a correct compiler.
import { describe, expect, it } from 'vitest';
import { gradcheck } from '../../gpu-worker/engine/clip/gradcheck.ts';
import type { EngineHandle } from '../../gpu-worker/engine/runtime/pool.ts';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';

const R = 16;
const N = 3 * R * R;

/** L(x) = Σ aᵢxᵢ + 0.1·Σ xᵢ³, reported as the cosine of batch item 0; its gradient plus `error`. */
function handle(error: Float64Array): EngineHandle {
  const rng = Rng.fromSeed(7);
  const a = Float64Array.from({ length: N }, () => rng.next() - 0.5);
  return {
    key: 'fake',
    inputNames: ['pixels', 'targets', 'weights'],
    outputNames: ['cosine', 'grad_pixels'],
    async run(feeds) {
      const x = feeds.pixels!.data as Float64Array;
      const w = (feeds.weights!.data as Float64Array)[0]!;
      let l = 0;
      const g = new Float64Array(N);
      for (let i = 0; i < N; i++) {
        l += a[i]! * x[i]! + 0.1 * x[i]! ** 3;
        g[i] = w * (a[i]! + 0.3 * x[i]! ** 2) + error[i]!;
      }
      return { cosine: { dtype: 'float64', dims: [1], data: new Float64Array([l]) }, grad_pixels: { dtype: 'float64', dims: [1, 3, R, R], data: g } };
    },
  };
}

/** An error of `fraction`·|∇L| in a random direction made orthogonal to a (the main part of ∇L). */
function orthogonalError(fraction: number): Float64Array {
  const rng = Rng.fromSeed(99);
  const e = Float64Array.from({ length: N }, () => rng.next() - 0.5);
  const a = Float64Array.from({ length: N }, ((r) => () => r.next() - 0.5)(Rng.fromSeed(7)));
  const dot = (u: Float64Array, v: Float64Array) => u.reduce((s, ui, i) => s + ui * v[i]!, 0);
  const k = dot(e, a) / dot(a, a);
  for (let i = 0; i < N; i++) e[i] -= k * a[i]!;
  const scale = (fraction * Math.sqrt(dot(a, a))) / Math.sqrt(dot(e, e));
  return e.map((v) => v * scale);
}

describe('gradcheck', () => {
  const shape = { batch: 1, resolution: R, embedDim: 4 };
  it('passes a right gradient in float64', async () => {
    const res = await gradcheck(handle(new Float64Array(N)), shape, { dtype: 'float64', directions: 4 });
    expect(res.maxRelError).toBeLessThan(1e-6);
    expect(res.passed).toBe(true);
  });
  it('fails a gradient 25 % off in a direction orthogonal to the true one, on the sparse directions', async () => {
    const res = await gradcheck(handle(orthogonalError(0.25)), shape, { dtype: 'float64', directions: 4 });
    expect(res.passed).toBe(false);
    const [alongGradient, sparse] = [res.directions.filter((_, k) => k % 2 === 0), res.directions.filter((_, k) => k % 2 === 1)];
    expect(Math.max(...sparse.map((d) => d.relError))).toBeGreaterThan(0.1); // first order
    expect(Math.max(...alongGradient.map((d) => d.relError))).toBeLessThan(0.1); // what the old check alone saw
  });
});
