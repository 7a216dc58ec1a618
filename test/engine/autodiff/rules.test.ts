// One central-finite-difference check per gradient rule (see fd.ts for the method and error metric).
//
// float64 wherever onnxruntime's CPU EP has float64 kernels: step h = 1e-6 gives truncation ~h² ≈ 1e-12 and
// rounding ~eps64·|L|/h ≈ 1e-9, so a relative tolerance of 1e-6 leaves three orders of margin and still
// fails on any wrong rule (a wrong rule is off by O(1)).
//
// Conv, Erf, Mean and Softplus have no float64 CPU kernels, so those checks run in float32 with h = 1e-2:
// the FD rounding is then ~eps32·Σ|out⊙R|/h ≈ 1.2e-7·(≈20)/1e-2 ≈ 2e-4 relative to an O(1) gradient, and
// truncation ~h²·|f'''| ≈ 1e-4 (zero for Conv, which is bilinear in X and W). Tolerance 3e-3 covers both
// with margin while staying far below the O(1) error of a wrong rule.

import { describe, expect, test, vi } from 'vitest';
import { A, tensor } from '../../../gpu-worker/engine/onnx/ir.ts';
import type { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { GraphBuilder as Builder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';
import { appendGradients } from '../../../gpu-worker/engine/autodiff/gradient.ts';
import {
  NOT_DIFFERENTIABLE,
  getGradientRule,
  registerGradient,
  registeredOps,
} from '../../../gpu-worker/engine/autodiff/registry.ts';
import { type CheckSpec, type Var, gradCheck } from './fd.ts';

// The ops whose gradient rule the compiler really called during the running check (not what its label
// says): the registry's lookup is wrapped so that each rule it hands out records its op when it runs.
const ruleRuns = vi.hoisted(() => ({ current: null as Set<string> | null }));
vi.mock('../../../gpu-worker/engine/autodiff/registry.ts', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../../gpu-worker/engine/autodiff/registry.ts')>();
  return {
    ...real,
    getGradientRule(op: string) {
      const rule = real.getGradientRule(op);
      return rule && ((ctx: Parameters<typeof rule>[0]) => (ruleRuns.current?.add(op), rule(ctx)));
    },
  };
});

const TOL64 = 1e-6;
const TOL32 = 3e-3;
/** Ops whose rule an FD check below really differentiated (filled as the checks run). */
const covered = new Set<string>();

function check(ops: string | string[], name: string, spec: CheckSpec, tol?: number) {
  const label = `${Array.isArray(ops) ? ops.join('+') : ops}: ${name}`;
  test(label, async () => {
    const ran = new Set<string>();
    ruleRuns.current = ran;
    let r: Awaited<ReturnType<typeof gradCheck>>;
    try {
      r = await gradCheck(spec);
    } finally {
      ruleRuns.current = null;
    }
    for (const op of ran) covered.add(op);
    // The label names only ops whose rule this check differentiates (a wrong label would claim coverage).
    expect([...ran].sort(), `${label}: rules run`).toEqual(expect.arrayContaining(Array.isArray(ops) ? ops : [ops]));
    const t = tol ?? (spec.dtype === 'float64' ? TOL64 : TOL32);
    expect(r.maxError, `${label} errors ${JSON.stringify(r.errors)}`).toBeLessThan(t);
    // The graph loss and the harness's own float64 sum agree: the checked graph is the intended one.
    expect(Math.abs(r.lossGraph - r.lossHere)).toBeLessThan((spec.dtype === 'float64' ? 1e-9 : 1e-3) * (1 + Math.abs(r.lossHere)));
  });
}
const f64 = (vars: Var[], build: CheckSpec['build'], extra: Partial<CheckSpec> = {}): CheckSpec => ({ dtype: 'float64', vars, build, ...extra });
const f32 = (vars: Var[], build: CheckSpec['build'], extra: Partial<CheckSpec> = {}): CheckSpec => ({ dtype: 'float32', vars, build, ...extra });
const ints = (b: GraphBuilder, v: number[], shape = [v.length]) => b.constant(tensor('int64', shape, v), 'idx');

describe('elementwise', () => {
  check('Add', '[2,3,4] + [4] broadcast', f64([{ name: 'a', shape: [2, 3, 4] }, { name: 'b', shape: [4] }], (b, v) => b.add(v.a, v.b)));
  check('Add', '[2,1,4] + [3,1] both broadcast', f64([{ name: 'a', shape: [2, 1, 4] }, { name: 'b', shape: [3, 1] }], (b, v) => b.add(v.a, v.b)));
  check('Sub', '[3,1] - [2,1,4]', f64([{ name: 'a', shape: [3, 1] }, { name: 'b', shape: [2, 1, 4] }], (b, v) => b.sub(v.a, v.b)));
  check('Mul', '[2,1,4] * [3,1]', f64([{ name: 'a', shape: [2, 1, 4] }, { name: 'b', shape: [3, 1] }], (b, v) => b.mul(v.a, v.b)));
  check('Mul', 'scalar * [2,3]', f64([{ name: 'a', shape: [] }, { name: 'b', shape: [2, 3] }], (b, v) => b.mul(v.a, v.b)));
  check('Div', '[2,3] / [3]', f64([{ name: 'a', shape: [2, 3] }, { name: 'b', shape: [3], lo: 0.5, hi: 1.5 }], (b, v) => b.div(v.a, v.b)));
  check('Div', '[1,3] / [2,1] (both broadcast)', f64([{ name: 'a', shape: [1, 3] }, { name: 'b', shape: [2, 1], lo: -1.5, hi: -0.5 }], (b, v) => b.div(v.a, v.b)));
  check('Neg', 'neg', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.neg(v.x)));
  check('Identity', 'identity', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Identity', [v.x])));
  check('Sum', 'three inputs with broadcast', f64([{ name: 'a', shape: [2, 3] }, { name: 'b', shape: [3] }, { name: 'c', shape: [2, 1] }], (b, v) => b.op1('Sum', [v.a, v.b, v.c])));
  // Mean and Softplus have no float64 CPU kernels either: float32 like Erf.
  check('Mean', 'two inputs with broadcast (float32)', f32([{ name: 'a', shape: [2, 3] }, { name: 'b', shape: [3] }], (b, v) => b.op1('Mean', [v.a, v.b])));
  check('Pow', 'constant exponent 3', f64([{ name: 'x', shape: [2, 3], lo: 0.5, hi: 1.5 }], (b, v) => b.op1('Pow', [v.x, b.scalar(3, 'float64')])));
  check('Pow', 'constant exponent 2 (negative base)', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Pow', [v.x, b.scalar(2, 'float64')])));
  check('Pow', 'constant exponent -0.5', f64([{ name: 'x', shape: [5], lo: 0.5, hi: 1.5 }], (b, v) => b.op1('Pow', [v.x, b.scalar(-0.5, 'float64')])));
  check('Pow', 'variable exponent (broadcast)', f64([{ name: 'x', shape: [2, 3], lo: 0.5, hi: 1.5 }, { name: 'p', shape: [3], lo: 0.5, hi: 2.5 }], (b, v) => b.op1('Pow', [v.x, v.p])));
  test('Pow: at a zero base the exponent\'s gradient (p ≥ 0) and the base\'s (p = 0) are 0 as in PyTorch, not NaN', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const b = new Builder();
    const x = b.input('x', 'float64', [4]);
    const p = b.input('p', 'float64', [4]);
    const g = appendGradients(b, { loss: b.reduceSum(b.op1('Pow', [x, p]), [0], false), wrt: [x, p] });
    b.output(b.op1('Identity', [g.get(x)!], {}, { outputNames: ['gx'] }));
    b.output(b.op1('Identity', [g.get(p)!], {}, { outputNames: ['gp'] }));
    const out = await runModel(b.toModel(), { x: tensor('float64', [4], [0, 2, 0, 0]), p: tensor('float64', [4], [2, 2, 3, 0]) });
    expect([...(out.gx.data as Float64Array)]).toEqual([0, 4, 0, 0]);
    expect([...(out.gp.data as Float64Array)]).toEqual([0, 4 * Math.log(2), 0, 0]);
  });
  test('Pow: an active exponent of another dtype (float32 base, float64 exponent) gets a float64 gradient', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const b = new Builder();
    const x = b.input('x', 'float32', [2, 3]);
    const p = b.input('p', 'float64', [3]);
    const g = appendGradients(b, { loss: b.reduceSum(b.op1('Pow', [x, p]), [0, 1], false), wrt: [x, p] });
    expect(b.dtype(g.get(p)!)).toBe('float64');
    b.output(b.op1('Identity', [g.get(x)!], {}, { outputNames: ['gx'] }));
    b.output(b.op1('Identity', [g.get(p)!], {}, { outputNames: ['gp'] }));
    const xs = [1, 2, 3, 0.5, 1.5, 2.5], ps = [2, 0.5, 3];
    const out = await runModel(b.toModel(), { x: tensor('float32', [2, 3], xs), p: tensor('float64', [3], ps) });
    const gx = xs.map((v, i) => ps[i % 3] * v ** (ps[i % 3] - 1));
    const gp = ps.map((q, j) => [xs[j], xs[j + 3]].reduce((s, v) => s + v ** q * Math.log(v), 0));
    [...(out.gx.data as Float32Array)].forEach((v, i) => expect(v).toBeCloseTo(gx[i], 5));
    [...(out.gp.data as Float64Array)].forEach((v, j) => expect(v).toBeCloseTo(gp[j], 5));
  });
  check('Sqrt', 'sqrt', f64([{ name: 'x', shape: [2, 3], lo: 0.2, hi: 2 }], (b, v) => b.op1('Sqrt', [v.x])));
  check('Exp', 'exp', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Exp', [v.x])));
  check('Log', 'log', f64([{ name: 'x', shape: [2, 3], lo: 0.2, hi: 2 }], (b, v) => b.op1('Log', [v.x])));
  check('Reciprocal', 'reciprocal', f64([{ name: 'x', shape: [2, 3], lo: 0.5, hi: 1.5 }], (b, v) => b.op1('Reciprocal', [v.x])));
  check('Tanh', 'tanh', f64([{ name: 'x', shape: [2, 3], lo: -2, hi: 2 }], (b, v) => b.op1('Tanh', [v.x])));
  check('Sigmoid', 'sigmoid', f64([{ name: 'x', shape: [2, 3], lo: -3, hi: 3 }], (b, v) => b.sigmoid(v.x)));
  // The sigmoid gate x·σ(α·x) (QuickGELU, SiLU) has one fused rule on its outer Mul. 'basic' keeps
  // onnxruntime from fusing the float64 forward into com.microsoft.QuickGelu, which is float32 only.
  const gate = (b: GraphBuilder, x: string, alpha: number, alphaFirst = false) => {
    const a = b.scalar(alpha, 'float64');
    return b.mul(b.sigmoid(alphaFirst ? b.mul(a, x) : b.mul(x, a)), x);
  };
  check('Mul', 'sigmoid gate x·σ(1.702·x) (QuickGELU, fused rule)', f64([{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }], (b, v) => gate(b, v.x, 1.702), { optimization: 'basic' }));
  check('Mul', 'sigmoid gate σ(x·1)·x (SiLU, α first, x second)', f64([{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }], (b, v) => gate(b, v.x, 1, true), { optimization: 'basic' }));
  check('Mul', 'sigmoid gate whose σ and x have other consumers', f64([{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }], (b, v) => {
    const s = b.sigmoid(b.mul(v.x, b.scalar(-0.7, 'float64')));
    return b.add(b.add(b.mul(v.x, s), b.mul(s, s)), b.op1('Exp', [v.x]));
  }, { optimization: 'basic' }));
  check('Mul', 'x·σ(w·x) with w a wrt (no fused rule: w is not a build-time constant)', f64([{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }, { name: 'w', shape: [] }], (b, v) => b.mul(v.x, b.sigmoid(b.mul(v.x, v.w))), { optimization: 'basic' }));
  check('Mul', 'x·σ(α·x) with α a one-element parameter (an initializer and a wrt: no fused rule)', f64([{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }, { name: 'a', shape: [1], init: true }], (b, v) => b.mul(b.sigmoid(b.mul(v.a, v.x)), v.x), { optimization: 'basic' }));
  // α folded at build time from a parameter (an initializer that is a wrt): it is in the builder's constants,
  // but carries a gradient, so the fused rule (which sends nothing down the Sigmoid's path) must not apply.
  for (const [form, alphaOf] of [
    ['Identity(a)', (b: GraphBuilder, a: string) => b.op1('Identity', [a])],
    ['Reshape(a, [])', (b: GraphBuilder, a: string) => b.reshape(a, [])],
    ['Mul(a, 2)', (b: GraphBuilder, a: string) => b.mul(a, b.scalar(2, 'float64'))],
  ] as const) {
    check('Mul', `x·σ(α·x) with α = ${form} folded from a wrt initializer (no fused rule)`, f64(
      [{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }, { name: 'a', shape: [1], data: [0.65], init: true }],
      (b, v) => b.mul(v.x, b.sigmoid(b.mul(v.x, alphaOf(b, v.a)))),
      { optimization: 'basic' },
    ));
  }
  // The production form: float32 at onnxruntime's 'all' level (which fuses the forward into QuickGelu), with α
  // from a Constant node as a torch export writes it (Mul(Constant α, x)).
  check('Mul', 'QuickGELU gate, float32 at level all, α from a Constant node (fused rule)', f32(
    [{ name: 'x', shape: [3, 4], lo: -3, hi: 3 }],
    (b, v) => {
      const alpha = b.op1('Constant', [], { value: A.t(tensor('float32', [], [1.702])) });
      return b.mul(v.x, b.sigmoid(b.mul(alpha, v.x)));
    },
    { optimization: 'all', step: 3e-3 },
  ), 1e-3);
  check('Softplus', 'softplus (float32)', f32([{ name: 'x', shape: [2, 3], lo: -3, hi: 3 }], (b, v) => b.op1('Softplus', [v.x])));
  // Erf has no float64 CPU kernel: float32 (see the header for step and tolerance).
  check('Erf', 'erf (float32)', f32([{ name: 'x', shape: [3, 4], lo: -2, hi: 2 }], (b, v) => b.op1('Erf', [v.x])));
  // Kinks: uniform(-1,1) data is ~1e-3 away from 0 at worst for these sizes, far beyond h = 1e-6.
  check('Relu', 'relu', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('Relu', [v.x])));
  check('Abs', 'abs', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('Abs', [v.x])));
  check('Clip', 'min and max', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('Clip', [v.x, b.scalar(-0.45, 'float64'), b.scalar(0.55, 'float64')])));
  check('Clip', 'min only', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('Clip', [v.x, b.scalar(-0.45, 'float64')])));
  check('Clip', 'max only (min omitted)', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('Clip', [v.x, '', b.scalar(0.3, 'float64')])));
  check('Max', 'two inputs with broadcast', f64([{ name: 'a', shape: [2, 3] }, { name: 'b', shape: [3] }], (b, v) => b.op1('Max', [v.a, v.b])));
  check('Max', 'with a constant (clamp)', f64([{ name: 'a', shape: [2, 3] }], (b, v, c) => b.op1('Max', [v.a, c.rand([2, 3])])));
  check('Min', 'three inputs', f64([{ name: 'a', shape: [2, 3] }, { name: 'b', shape: [2, 3] }, { name: 'c', shape: [1, 3] }], (b, v) => b.op1('Min', [v.a, v.b, v.c])));
  check('Where', 'cond constant, branches broadcast', f64([{ name: 'x', shape: [2, 3] }, { name: 'y', shape: [3] }], (b, v) => {
    const cond = b.constant(tensor('bool', [2, 3], [1, 0, 1, 0, 0, 1]), 'cond');
    return b.op1('Where', [cond, v.x, v.y]);
  }));
  check('Where', 'cond computed from the wrt itself (cond inactive)', f64([{ name: 'x', shape: [3, 4] }], (b, v) => {
    const cond = b.op1('Greater', [v.x, b.scalar(0.1, 'float64')]);
    return b.op1('Where', [cond, b.mul(v.x, v.x), b.neg(v.x)]);
  }));
  check('Cast', 'float32 -> float64 -> float32 (float32 check)', f32([{ name: 'x', shape: [2, 3] }], (b, v) => {
    const d = b.cast(v.x, 'float64');
    return b.cast(b.op1('Exp', [d]), 'float32');
  }));
});

describe('linear algebra', () => {
  check('MatMul', '[2,3,4] x [4,5] (2-D Gemm path), weight is an initializer', f64([{ name: 'a', shape: [2, 3, 4] }, { name: 'w', shape: [4, 5], init: true }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', '[3,4] x [4,5]', f64([{ name: 'a', shape: [3, 4] }, { name: 'w', shape: [4, 5] }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', 'batched [2,3,4] x [2,4,5]', f64([{ name: 'a', shape: [2, 3, 4] }, { name: 'w', shape: [2, 4, 5] }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', 'broadcast batch [2,1,3,4] x [3,4,2]', f64([{ name: 'a', shape: [2, 1, 3, 4] }, { name: 'w', shape: [3, 4, 2] }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', '[3,4] x [2,4,5] (2-D A, batched B)', f64([{ name: 'a', shape: [3, 4] }, { name: 'w', shape: [2, 4, 5] }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', 'vector x matrix [4] x [4,3]', f64([{ name: 'a', shape: [4] }, { name: 'w', shape: [4, 3] }], (b, v) => b.matmul(v.a, v.w)));
  check('MatMul', 'matrix x vector [2,3,4] x [4]', f64([{ name: 'a', shape: [2, 3, 4] }, { name: 'w', shape: [4] }], (b, v) => b.matmul(v.a, v.w)));
  for (const [ta, tb] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
    check('Gemm', `transA=${ta} transB=${tb}, alpha/beta, C broadcast [N]`, f64(
      [{ name: 'a', shape: ta ? [4, 3] : [3, 4] }, { name: 'w', shape: tb ? [5, 4] : [4, 5] }, { name: 'c', shape: [5] }],
      (b, v) => b.op1('Gemm', [v.a, v.w, v.c], { transA: A.i(ta), transB: A.i(tb), alpha: A.f(0.7), beta: A.f(1.3) }),
    ));
  }
  check('Gemm', 'C of shape [3,1]', f64([{ name: 'a', shape: [3, 4] }, { name: 'w', shape: [4, 5] }, { name: 'c', shape: [3, 1] }], (b, v) => b.op1('Gemm', [v.a, v.w, v.c])));
  // Conv: float32 only on CPU (see header). Sizes keep per-element checks cheap on the small tensors.
  check('Conv', '2-D stride 2, pads 1, bias (float32)', f32(
    [{ name: 'x', shape: [2, 3, 5, 5] }, { name: 'w', shape: [4, 3, 3, 3] }, { name: 'bias', shape: [4] }],
    (b, v) => b.op1('Conv', [v.x, v.w, v.bias], { strides: A.ints([2, 2]), pads: A.ints([1, 1, 1, 1]) }),
  ));
  check('Conv', '2-D stride 3 (dropped rows), dilation 2, asymmetric pads, group 2 (float32)', f32(
    [{ name: 'x', shape: [1, 4, 8, 7] }, { name: 'w', shape: [6, 2, 2, 3] }],
    (b, v) => b.op1('Conv', [v.x, v.w], { strides: A.ints([3, 2]), dilations: A.ints([2, 1]), pads: A.ints([1, 0, 0, 2]), group: A.i(2) }),
  ));
  check('Conv', 'patch embedding: kernel = stride, no bias (float32)', f32(
    [{ name: 'x', shape: [2, 3, 8, 8] }, { name: 'w', shape: [5, 3, 4, 4] }],
    (b, v) => b.op1('Conv', [v.x, v.w], { strides: A.ints([4, 4]) }),
  ));
  check('Conv', '1-D conv (float32)', f32(
    [{ name: 'x', shape: [2, 2, 9] }, { name: 'w', shape: [3, 2, 3] }, { name: 'bias', shape: [3] }],
    (b, v) => b.op1('Conv', [v.x, v.w, v.bias], { strides: A.ints([2]), pads: A.ints([1, 1]) }),
  ));
});

describe('softmax and normalization', () => {
  check('Softmax', 'axis -1', f64([{ name: 'x', shape: [2, 3, 4], lo: -2, hi: 2 }], (b, v) => b.op1('Softmax', [v.x], { axis: A.i(-1) })));
  check('Softmax', 'axis 1', f64([{ name: 'x', shape: [2, 3, 4], lo: -2, hi: 2 }], (b, v) => b.op1('Softmax', [v.x], { axis: A.i(1) })));
  check('LogSoftmax', 'axis -1', f64([{ name: 'x', shape: [3, 5], lo: -2, hi: 2 }], (b, v) => b.op1('LogSoftmax', [v.x], { axis: A.i(-1) })));
  check('LogSoftmax', 'axis 0', f64([{ name: 'x', shape: [3, 5], lo: -2, hi: 2 }], (b, v) => b.op1('LogSoftmax', [v.x], { axis: A.i(0) })));
  check('LayerNormalization', 'axis -1 with scale and bias', f64(
    [{ name: 'x', shape: [2, 3, 5] }, { name: 'g', shape: [5], lo: 0.5, hi: 1.5 }, { name: 'bb', shape: [5] }],
    (b, v) => b.op1('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1), epsilon: A.f(1e-5) }),
  ));
  check('LayerNormalization', 'axis 1 over [3,4], no bias, scale an initializer', f64(
    [{ name: 'x', shape: [2, 3, 4] }, { name: 'g', shape: [3, 4], lo: 0.5, hi: 1.5, init: true }],
    (b, v) => b.op1('LayerNormalization', [v.x, v.g], { axis: A.i(1) }),
  ));
  // float32 (the production dtype) takes the path that reuses the forward node's Mean/InvStdDev outputs.
  check('LayerNormalization', 'float32, reusing Mean/InvStdDev added to the forward node', f32(
    [{ name: 'x', shape: [3, 6] }, { name: 'g', shape: [6] }, { name: 'bb', shape: [6] }],
    (b, v) => b.op1('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1) }),
  ));
  check('LayerNormalization', 'float32, forward node already exposes Mean/InvStdDev', f32(
    [{ name: 'x', shape: [4, 6] }, { name: 'g', shape: [6] }, { name: 'bb', shape: [6] }],
    (b, v) => b.op('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1) }, { outputs: 3 })[0],
  ));
  // A graph that reads the statistics too: their gradients reach x (an export that uses them would
  // otherwise get a wrong pixel gradient without a word).
  check('LayerNormalization', 'float32, Y, Mean and InvStdDev all on the loss path', f32(
    [{ name: 'x', shape: [3, 5] }, { name: 'g', shape: [5] }, { name: 'bb', shape: [5] }],
    (b, v) => b.op('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1), epsilon: A.f(1e-2) }, { outputs: 3 }),
  ));
  check('LayerNormalization', 'float32, Mean only', f32(
    [{ name: 'x', shape: [3, 5] }, { name: 'g', shape: [5] }],
    (b, v) => b.op('LayerNormalization', [v.x, v.g], { axis: A.i(-1), epsilon: A.f(1e-2) }, { outputs: 3 })[1]!,
    { wrt: ['x'] },
  ));
  check('LayerNormalization', 'float32, InvStdDev over axes 1.. of [2,3,4]', f32(
    [{ name: 'x', shape: [2, 3, 4] }, { name: 'g', shape: [3, 4] }],
    (b, v) => b.op('LayerNormalization', [v.x, v.g], { axis: A.i(1), epsilon: A.f(1e-2) }, { outputs: 3 })[2]!,
    { wrt: ['x'] },
  ));
});

describe('reductions', () => {
  check('ReduceSum', 'axes [1] keepdims 1', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.reduceSum(v.x, [1], true)));
  check('ReduceSum', 'axes [-1, 0] keepdims 0', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.reduceSum(v.x, [-1, 0], false)));
  check('ReduceSum', 'all axes (no axes input)', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('ReduceSum', [v.x], { keepdims: A.i(0) })));
  check('ReduceMean', 'axes [-1] keepdims 1', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.reduceMean(v.x, [-1], true)));
  check('ReduceMean', 'axes [0, 2] keepdims 0', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.reduceMean(v.x, [0, 2], false)));
  check('ReduceL2', 'axes [-1] keepdims 0', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('ReduceL2', [v.x], { axes: A.ints([-1]), keepdims: A.i(0) })));
  check('ReduceL2', 'axes [0] keepdims 1', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.op1('ReduceL2', [v.x], { axes: A.ints([0]), keepdims: A.i(1) })));
  check(['ReduceL2', 'Div'], 'l2normalize: x / ReduceL2(x, axes [-1], keepdims 1)', f64([{ name: 'x', shape: [3, 4] }], (b, v) =>
    b.div(v.x, b.op1('ReduceL2', [v.x], { axes: A.ints([-1]), keepdims: A.i(1) }))));
  test('ReduceL2: a zero row gets a zero gradient (as in PyTorch), not NaN', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const b = new Builder();
    const x = b.input('x', 'float64', [2, 3]);
    const n = b.op1('ReduceL2', [x], { axes: A.ints([-1]), keepdims: A.i(1) });
    const g = appendGradients(b, { loss: b.reduceSum(n, [0, 1], false), wrt: [x] }).get(x)!;
    b.output(b.op1('Identity', [g], {}, { outputNames: ['g'] }));
    const out = await runModel(b.toModel(), { x: tensor('float64', [2, 3], [0, 0, 0, 3, 4, 0]) });
    const got = [...(out.g.data as Float64Array)];
    expect(got.slice(0, 3)).toEqual([0, 0, 0]);
    [0.6, 0.8, 0].forEach((v, i) => expect(got[3 + i]).toBeCloseTo(v, 12));
  });
  check('ReduceMax', 'axes [1] keepdims 0', f64([{ name: 'x', shape: [2, 5, 3] }], (b, v) => b.op1('ReduceMax', [v.x], { axes: A.ints([1]), keepdims: A.i(0) })));
  check('ReduceMax', 'axes [-1, 0] keepdims 1', f64([{ name: 'x', shape: [2, 5, 3] }], (b, v) => b.op1('ReduceMax', [v.x], { axes: A.ints([-1, 0]), keepdims: A.i(1) })));
  test('ReduceMax: tied maxima share the gradient equally', async () => {
    const r = await gradCheckTies();
    expect([...r]).toEqual([0.5, 0, 0.5, 0, 1, 0]);
  });
});

describe('shape ops', () => {
  check('Reshape', '[2,3,4] -> [4,-1]', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.mul(b.reshape(v.x, [4, -1]), b.scalar(2, 'float64'))));
  check('Flatten', 'axis 2', f64([{ name: 'x', shape: [2, 3, 2, 2] }], (b, v) => b.op1('Flatten', [v.x], { axis: A.i(2) })));
  check('Squeeze', 'axes [-2]', f64([{ name: 'x', shape: [2, 3, 1, 2] }], (b, v) => b.op1('Squeeze', [v.x, ints(b, [-2])])));
  check('Unsqueeze', 'axes [0, -1]', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Unsqueeze', [v.x, ints(b, [0, -1])])));
  check('Transpose', 'perm [2,0,1]', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.transpose(v.x, [2, 0, 1])));
  check('Transpose', '4-D perm [0,2,1,3] (attention heads)', f64([{ name: 'x', shape: [2, 3, 2, 4] }], (b, v) => b.transpose(v.x, [0, 2, 1, 3])));
  check('Transpose', '4-D perm [0,1,3,2] (keys for the scores)', f64([{ name: 'x', shape: [2, 3, 2, 4] }], (b, v) => b.transpose(v.x, [0, 1, 3, 2])));
  check('Transpose', '6-D perm [0,2,4,1,3,5] (patchify)', f64([{ name: 'x', shape: [1, 2, 2, 3, 2, 2] }], (b, v) => b.transpose(v.x, [0, 2, 4, 1, 3, 5])));
  check('Transpose', 'default perm (reverse)', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.op1('Transpose', [v.x])));
  check('Expand', '[3,1] -> [2,3,4]', f64([{ name: 'x', shape: [3, 1] }], (b, v) => b.op1('Expand', [v.x, ints(b, [2, 3, 4])])));
  check('Tile', 'repeats [2,1,3]', f64([{ name: 'x', shape: [2, 3, 2] }], (b, v) => b.op1('Tile', [v.x, ints(b, [2, 1, 3])])));
  check('Concat', 'three inputs on axis 1', f64([{ name: 'a', shape: [2, 1, 3] }, { name: 'b', shape: [2, 2, 3] }, { name: 'c', shape: [2, 3, 3] }], (b, v) => b.concat([v.a, v.b, v.c], 1)));
  check('Concat', 'negative axis, one input constant', f64([{ name: 'a', shape: [2, 3] }], (b, v, c) => b.concat([v.a, c.rand([2, 2])], -1)));
  check('Split', 'sizes [1,3] axis -1, both outputs used', f64([{ name: 'x', shape: [2, 4] }], (b, v) => {
    const [p, q] = b.op('Split', [v.x, ints(b, [1, 3])], { axis: A.i(-1) }, { outputs: 2 });
    return [b.mul(p, p), q];
  }));
  check('Split', 'equal parts, middle output unused (zeros filled)', f64([{ name: 'x', shape: [6, 2] }], (b, v) => {
    const [p, , r] = b.op('Split', [v.x], { axis: A.i(0) }, { outputs: 3 });
    return b.add(p, b.op1('Exp', [r]));
  }));
  check(['Split', 'Concat'], 'Split -> Concat round trip', f64([{ name: 'x', shape: [3, 5] }], (b, v) => {
    const parts = b.op('Split', [v.x, ints(b, [2, 1, 2])], { axis: A.i(1) }, { outputs: 3 });
    return b.mul(b.concat([parts[2], parts[0], parts[1]], 1), v.x);
  }));
  check('Slice', 'negative start, step 1, two axes', f64([{ name: 'x', shape: [4, 5] }], (b, v) => b.slice(v.x, [1, -4], [3, 4], [0, 1])));
  check('Slice', 'step 2', f64([{ name: 'x', shape: [3, 7] }], (b, v) => b.slice(v.x, [1], [7], [1], [2])));
  check('Slice', 'step -1 (reverse) on axis 0', f64([{ name: 'x', shape: [4, 3] }], (b, v) => b.slice(v.x, [-1], [-1000], [0], [-1])));
  check('Slice', 'steps -2 and 3 on two axes', f64([{ name: 'x', shape: [6, 8] }], (b, v) => b.slice(v.x, [5, 1], [0, 8], [0, 1], [-2, 3])));
  check('Slice', 'step -3 ending early, negative axis', f64([{ name: 'x', shape: [2, 9] }], (b, v) => b.slice(v.x, [7], [1], [-1], [-3])));
  // "To the end" as exporters write it, INT64_MAX, passed through a folded Concat: folding once wrapped it
  // to INT64_MIN, which made the slice empty and its gradient silently zero.
  // onnxruntime reads an end of INT64_MAX or INT32_MAX as "to the end" in the step's direction (numpy's None):
  // with a negative step that is index 0 included, not the last element (which made the slice empty).
  check('Slice', 'ends INT64_MAX with step -3', f64([{ name: 'x', shape: [2, 7] }], (b, v) =>
    b.op1('Slice', [v.x, b.ints([5]), b.constant(tensor('int64', [1], [9223372036854775807n]), 'end'), b.ints([1]), b.ints([-3])])));
  check('Slice', 'ends INT32_MAX (int32 inputs) with step -1', f64([{ name: 'x', shape: [5, 2] }], (b, v) => {
    const i32 = (q: number) => b.constant(tensor('int32', [1], [q]), 'i32');
    return b.op1('Slice', [v.x, i32(3), i32(2147483647), i32(0), i32(-1)]);
  }));
  test('Slice: INT_MAX ends with negative steps agree with onnxruntime (static shape, values, exact gradient)', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const I64 = 9223372036854775807n, I32 = 2147483647;
    const d = 7;
    const xs = Array.from({ length: d }, (_, i) => i / 10);
    // [start, end, step, ends dtype] → the indices numpy's x[start::step] selects.
    const cases: [number, bigint | number, number, 'int64' | 'int32'][] = [
      [1, I64, -3, 'int64'], [3, I32, -1, 'int32'], [3, I32, -1, 'int64'], [4, I32, -2, 'int64'], [-1, I64, -1, 'int64'], [6, I64, -4, 'int64'], [2, I64, 2, 'int64'],
    ];
    for (const [start, end, step, edt] of cases) {
      const want: number[] = [];
      const s0 = start < 0 ? start + d : start;
      for (let i = s0; step > 0 ? i < d : i >= 0; i += step) want.push(i);
      const b = new Builder();
      const x = b.input('x', 'float64', [d]);
      const q = (v: number | bigint) => b.constant(tensor(edt, [1], [v as number]), 'q');
      const y = b.op1('Slice', [x, q(start), q(end), q(0), q(step)]);
      const label = `start ${start} end ${end} step ${step} (${edt})`;
      expect(b.shape(y), label).toEqual([want.length]);
      const w = b.constant(tensor('float64', [want.length], want.map((_, k) => k + 1)), 'w');
      const loss = b.reduceSum(b.mul(y, w), [0], false);
      const g = appendGradients(b, { loss, wrt: [x] }).get(x)!;
      b.output(b.op1('Identity', [y], {}, { outputNames: ['y'] }));
      b.output(b.op1('Identity', [g], {}, { outputNames: ['g'] }));
      const out = await runModel(b.toModel(), { x: tensor('float64', [d], xs) });
      expect([...(out.y.data as Float64Array)], label).toEqual(want.map((i) => xs[i]));
      const gw = new Array(d).fill(0);
      want.forEach((i, k) => (gw[i] += k + 1));
      expect([...(out.g.data as Float64Array)], label).toEqual(gw);
    }
  });
  check('Dropout', 'inference mode: a ratio, no training_mode', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Dropout', [v.x, b.constant(tensor('float64', [], [0.5]), 'ratio')])));
  check('Dropout', 'training_mode a constant false', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Dropout', [v.x, b.constant(tensor('float64', [], [0.3]), 'ratio'), b.constant(tensor('bool', [], [0]), 'mode')])));
  check('Slice', 'ends INT64_MAX through a folded Concat', f64([{ name: 'x', shape: [2, 5] }], (b, v) => {
    const end = b.op1('Concat', [b.constant(tensor('int64', [1], [9223372036854775807n]), 'end')], { axis: A.i(0) });
    return b.op1('Slice', [v.x, b.ints([2]), end, b.ints([1])]);
  }));
  check('Gather', 'axis 0, repeated indices [[0,2],[2,1]]', f64([{ name: 'x', shape: [3, 4] }], (b, v) => b.gather(v.x, ints(b, [0, 2, 2, 1], [2, 2]), 0)));
  check('Gather', 'axis 1, repeated and negative indices', f64([{ name: 'x', shape: [2, 4, 3] }], (b, v) => b.gather(v.x, ints(b, [3, -1, 0, 3, 1], [5]), 1)));
  check('Gather', 'axis -1, scalar index', f64([{ name: 'x', shape: [2, 4] }], (b, v) => b.gather(v.x, ints(b, [2], []), -1)));
  check('Gather', 'axis 1, scalar index on rank 3 (class token x[:, 0])', f64([{ name: 'x', shape: [2, 4, 3] }], (b, v) => b.gather(v.x, ints(b, [0], []), 1)));
  check('Gather', 'indices computed at run time (non-constant), repeated and negative', f64(
    [{ name: 'x', shape: [5, 3] }, { name: 'fi', shape: [2, 3], data: [4, 0, 4, -1, 2, 2] }],
    (b, v) => b.gather(v.x, b.cast(v.fi, 'int64'), 0),
    { wrt: ['x'] },
  ));
  check('Pad', 'constant mode, positive pads, constant value active', f64([{ name: 'x', shape: [2, 3] }, { name: 'cv', shape: [] }], (b, v) => b.op1('Pad', [v.x, ints(b, [1, 0, 2, 2]), v.cv])));
  check('Pad', 'negative pads (crop) on one side of each axis', f64([{ name: 'x', shape: [3, 5] }], (b, v) => b.op1('Pad', [v.x, ints(b, [-1, 2, 1, -2])])));
});

describe('graph-level behaviour', () => {
  check(['Mul', 'Exp', 'Add'], 'accumulation: one value used three times', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.add(b.mul(v.x, v.x), b.op1('Exp', [v.x]))));
  check(['MatMul', 'Tanh'], 'wrt an initializer and an input, weight used twice', f64(
    [{ name: 'x', shape: [2, 4] }, { name: 'w', shape: [4, 4], init: true }],
    (b, v) => b.matmul(b.op1('Tanh', [b.matmul(v.x, v.w)]), v.w),
  ));
  check(['Reshape', 'Mul'], 'shape plumbing (Shape -> Gather -> Concat -> Reshape) stays inactive', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => {
    const s = b.op1('Shape', [v.x]);
    const d0 = b.gather(s, ints(b, [0], []), 0);
    const d0v = b.op1('Unsqueeze', [d0, ints(b, [0])]);
    const tgt = b.concat([d0v, ints(b, [-1])], 0);
    const r = b.op1('Reshape', [v.x, tgt]);
    return b.mul(r, r);
  }));

  test('a wrt the loss does not depend on gets a zeros gradient', async () => {
    const r = await gradCheck(f64([{ name: 'x', shape: [2, 3] }, { name: 'unused', shape: [4] }], (b, v) => b.op1('Exp', [v.x])));
    expect(r.maxError).toBeLessThan(TOL64);
    expect([...r.grads.unused]).toEqual([0, 0, 0, 0]);
  });

  test('a non-scalar loss without a seed gives the gradient of its sum; an explicit seed gives a VJP', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const y = b.mul(x, x);
    const s = b.input('s', 'float64', [3]);
    const g1 = appendGradients(b, { loss: y, wrt: [x] }).get(x)!;
    const g2 = appendGradients(b, { loss: y, wrt: [x], seed: s }).get(x)!;
    b.output(b.op1('Identity', [g1], {}, { outputNames: ['g1'] }));
    b.output(b.op1('Identity', [g2], {}, { outputNames: ['g2'] }));
    const out = await runModel(b.toModel(), { x: tensor('float64', [3], [1, -2, 3]), s: tensor('float64', [3], [10, 100, 1000]) });
    expect([...(out.g1.data as Float64Array)]).toEqual([2, -4, 6]);
    expect([...(out.g2.data as Float64Array)]).toEqual([20, -400, 6000]);
  });

  test('the sigmoid gate x·σ(1.702·x) takes its fused rule: five full-size backward ops, none for the Sigmoid', () => {
    const b = new Builder();
    const x = b.input('x', 'float32', [4, 8]);
    const y = b.mul(x, b.sigmoid(b.mul(x, b.scalar(1.702, 'float32'))));
    const before = b.nodes.length;
    appendGradients(b, { loss: b.reduceSum(y, [0, 1], false), wrt: [x] });
    const full = b.nodes.slice(before).filter((n) => ['Mul', 'Sub', 'Add'].includes(n.op) && n.outputs.some((o) => b.shape(o).length === 2));
    expect(full.map((n) => n.op).sort()).toEqual(['Add', 'Mul', 'Mul', 'Mul', 'Sub']);
    expect(b.nodes.slice(before).some((n) => n.name.includes('Sigmoid'))).toBe(false);
  });

  test('the gate takes its fused rule with α from a Constant node, and not with α folded from a wrt', () => {
    const sigmoidGrads = (alphaFrom: 'constant' | 'parameter') => {
      const b = new Builder();
      const x = b.input('x', 'float32', [4, 8]);
      const a = b.initializer('a', tensor('float32', [1], [1.702]));
      const alpha = alphaFrom === 'constant' ? b.op1('Constant', [], { value: A.t(tensor('float32', [], [1.702])) }) : b.op1('Identity', [a]);
      const s = b.op1('Sigmoid', [b.mul(alpha, x)], {}, { name: 'gate_sigmoid' });
      const before = b.nodes.length;
      appendGradients(b, { loss: b.reduceSum(b.mul(x, s), [0, 1], false), wrt: alphaFrom === 'constant' ? [x] : [x, a] });
      return b.nodes.slice(before).filter((n) => n.name.includes('grad/gate_sigmoid')).length;
    };
    expect(sigmoidGrads('constant')).toBe(0);
    expect(sigmoidGrads('parameter')).toBeGreaterThan(0);
  });

  test('the harness fails on a wrong rule (a test that can fail)', async () => {
    const real = getGradientRule('Neg')!;
    registerGradient('Neg', (c) => [c.GO(0)!]); // sign error on purpose
    try {
      const r = await gradCheck(f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.neg(v.x)));
      expect(r.maxError).toBeGreaterThan(0.5);
    } finally {
      registerGradient('Neg', real);
    }
  });

  test('an op without a rule is unsupported_op, naming op and node', () => {
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const y = b.op1('Sin', [x], {}, { name: 'my_sin' });
    const l = b.reduceSum(b.mul(y, y), [0], false);
    let err: unknown;
    try {
      appendGradients(b, { loss: l, wrt: [x] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toBe('unsupported_op');
    expect((err as EngineError).message).toMatch(/op Sin/);
    expect((err as EngineError).message).toMatch(/node my_sin/);
    expect((err as EngineError).detail).toMatchObject({ op: 'Sin', node: 'my_sin' });
  });

  test('an active path through a non-differentiable op is not_differentiable, naming op, node and input', () => {
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const h = b.mul(x, b.scalar(3, 'float64'));
    const y = b.op1('Floor', [h], {}, { name: 'quantize' });
    const l = b.reduceSum(b.mul(y, x), [0], false);
    let err: unknown;
    try {
      appendGradients(b, { loss: l, wrt: [x] });
    } catch (e) {
      err = e;
    }
    expect((err as EngineError).code).toBe('not_differentiable');
    expect((err as EngineError).message).toMatch(/op Floor \(node quantize\)/);
    expect((err as EngineError).detail).toMatchObject({ op: 'Floor', node: 'quantize', input: h });
  });

  test('an active Clip bound is not_differentiable (a rule can refuse one input), naming the input', async () => {
    const clamped = () => {
      const b = new Builder();
      const x = b.input('x', 'float64', [4]);
      const lo = b.input('lo', 'float64', []);
      const y = b.op1('Clip', [x, lo], {}, { name: 'clamp' });
      return { b, x, lo, l: b.reduceSum(y, [0], false) };
    };
    const refused = clamped();
    expect(() => appendGradients(refused.b, { loss: refused.l, wrt: [refused.x, refused.lo] })).toThrow(/op Clip \(node clamp\), input #1 "lo"/);
    // With x alone it is taken, and the gradient is right: 1 where x is above the bound, 0 where it was clipped.
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const { b, x, l } = clamped();
    b.output(b.op1('Identity', [appendGradients(b, { loss: l, wrt: [x] }).get(x)!], {}, { outputNames: ['gx'] }));
    const out = await runModel(b.toModel(), { x: tensor('float64', [4], [-2, 0.5, -0.25, 3]), lo: tensor('float64', [], [0]) });
    expect([...(out.gx.data as Float64Array)]).toEqual([0, 1, 0, 1]);
  });

  test('a Dropout whose training_mode is not a constant false is not differentiable, and says why', () => {
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const mode = b.input('mode', 'bool', []);
    const y = b.op1('Dropout', [x, b.constant(tensor('float64', [], [0.5]), 'ratio'), mode], {}, { name: 'drop' });
    const l = b.reduceSum(y, [0], false);
    expect(() => appendGradients(b, { loss: l, wrt: [x] })).toThrow(/op Dropout \(node drop\).*training mode.*eval mode/);
  });

  test('a reduce written in another opset\'s form is refused where it is built, naming the op and the form', () => {
    const b = new Builder();
    const x = b.input('x', 'float64', [2, 3]);
    expect(() => b.op1('ReduceSum', [x], { axes: A.ints([1]) })).toThrow(/ReduceSum takes its axes as input #1 at opset 13–17, not as an "axes" attribute/);
    expect(() => b.op1('ReduceMean', [x, b.ints([1])])).toThrow(/ReduceMean takes its axes as an "axes" attribute at opset 13–17, not as input #1/);
    expect(() => b.op1('ReduceMax', [x], { axes: A.ints([1]), noop_with_empty_axes: A.i(1) })).toThrow(/ReduceMax has no "noop_with_empty_axes" attribute/);
  });

  test('an inactive non-differentiable op (off the wrt path) and unsupported ops off the path are fine', async () => {
    const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const c = b.input('c', 'float64', [3]);
    const q = b.op1('Sin', [b.op1('Floor', [c])]); // depends on c only, and c is not a wrt
    const l = b.reduceSum(b.mul(q, x), [0], false);
    const g = appendGradients(b, { loss: l, wrt: [x] });
    // L = Σ q·x, so ∂L/∂x is q = sin(floor(c)) exactly: the branch off the path is computed, not differentiated.
    b.output(b.op1('Identity', [g.get(x)!], {}, { outputNames: ['gx'] }));
    const cs = [1.7, -0.3, 2.2];
    const out = await runModel(b.toModel(), { x: tensor('float64', [3], [0.5, -1, 2]), c: tensor('float64', [3], cs) });
    const want = cs.map((v) => Math.sin(Math.floor(v)));
    expect(want.every((v) => Math.abs(v) > 0.5)).toBe(true); // no zero the gradient could hit by chance
    [...(out.gx.data as Float64Array)].forEach((v, i) => expect(v, `∂L/∂x[${i}]`).toBeCloseTo(want[i]!, 12));
  });

  test('integer and constant wrt names are refused', () => {
    const b = new Builder();
    const x = b.input('x', 'float64', [3]);
    const i = b.input('i', 'int64', [3]);
    const k = b.scalar(2, 'float64');
    const l = b.reduceSum(b.mul(x, k), [0], false);
    expect(() => appendGradients(b, { loss: l, wrt: [i] })).toThrow(/only float values/);
    expect(() => appendGradients(b, { loss: l, wrt: [k] })).toThrow(/graph input or a named initializer/);
  });

  test('no registered op is also marked not differentiable', () => {
    for (const op of registeredOps()) expect(NOT_DIFFERENTIABLE.has(op)).toBe(false);
    expect(() => registerGradient('Floor', (c) => [c.GO(0)])).toThrow();
  });
});

async function gradCheckTies(): Promise<Float64Array> {
  const { runModel } = await import('../../../gpu-worker/engine/runtime/session.ts');
  const b = new Builder();
  const x = b.input('x', 'float64', [2, 3]);
  const y = b.op1('ReduceMax', [x], { axes: A.ints([1]), keepdims: A.i(0) });
  const l = b.reduceSum(y, [0], false);
  const g = appendGradients(b, { loss: l, wrt: [x] }).get(x)!;
  b.output(b.op1('Identity', [g], {}, { outputNames: ['g'] }));
  const out = await runModel(b.toModel(), { x: tensor('float64', [2, 3], [2, 1, 2, 0, 5, 3]) });
  return out.g.data as Float64Array;
}

// Runs last in file order: every op with a gradient rule must have at least one FD check above whose
// gradient graph really called that rule (recorded as the checks ran, not taken from their labels).
test('every registered gradient rule has a finite-difference test', () => {
  const missing = registeredOps().filter((op) => !covered.has(op));
  expect(missing).toEqual([]);
});
