// Finite-difference checks for the graph forms foreign CLIP exports (OpenAI, OpenCLIP, Hugging Face) put in
// front of the gradient compiler that rules.test.ts checks only in simpler forms: 4-D and batch-broadcast
// MatMul, multi-axis ReduceMean, LayerNorm as exporters wrote it before opset 17, Hugging Face attention with
// finfo.min / -inf masks, grouped and depthwise Conv on batches, the vision-embedding and MultiheadAttention
// plumbing, rule branches no other test reaches, and that build-time folding stays on plumbing.
// Method, error metric and tolerances as in rules.test.ts (see fd.ts): float64 where onnxruntime's CPU EP has
// kernels (1e-6), float32 (3e-3 at h = 1e-2) where it does not (Conv, Erf) or where the production dtype and
// onnxruntime's level-'all' fusions are the point.

import { describe, expect, test } from 'vitest';
import { A, type Attr, type DType, tensor } from '../../../gpu-worker/engine/onnx/ir.ts';
import { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';
import { appendGradients } from '../../../gpu-worker/engine/autodiff/gradient.ts';
import { hasGradientRule, isNotDifferentiable } from '../../../gpu-worker/engine/autodiff/registry.ts';
import { SHAPE_RULES } from '../../../gpu-worker/engine/onnx/shapes.ts';
import { type CheckSpec, type Var, gradCheck } from './fd.ts';

const TOL64 = 1e-6;
const TOL32 = 3e-3;

/**
 * `zero`: wrt vars whose gradient is exactly zero in exact arithmetic (the key bias of attention: softmax is blind
 * to a shift that is the same for every key). fd.ts normalizes each var's error by its own largest gradient, which
 * for those is rounding noise; they are held to an absolute bound against the other gradients instead.
 */
function check(name: string, spec: CheckSpec, tol?: number, opts: { zero?: string[] } = {}) {
  test(name, async () => {
    const r = await gradCheck(spec);
    const zero = new Set(opts.zero ?? []);
    const errs = Object.entries(r.errors).filter(([w]) => !zero.has(w));
    const maxError = Math.max(0, ...errs.map(([, e]) => e));
    const t = tol ?? (spec.dtype === 'float64' ? TOL64 : TOL32);
    for (const [w, g] of Object.entries(r.grads)) {
      expect(g.every(Number.isFinite), `${name}: gradient of ${w} has a non-finite element`).toBe(true);
    }
    expect(maxError, `${name} errors ${JSON.stringify(Object.fromEntries(errs))}`).toBeLessThan(t);
    if (zero.size) {
      const big = Math.max(...Object.entries(r.grads).filter(([w]) => !zero.has(w)).flatMap(([, g]) => [...g].map(Math.abs)));
      for (const w of zero) {
        const m = Math.max(...[...r.grads[w]!].map(Math.abs));
        expect(m, `${name}: the gradient of ${w} should vanish`).toBeLessThan((spec.dtype === 'float64' ? 1e-12 : 1e-5) * big);
      }
    }
    expect(Math.abs(r.lossGraph - r.lossHere)).toBeLessThan((spec.dtype === 'float64' ? 1e-9 : 1e-3) * (1 + Math.abs(r.lossHere)));
  });
}
const f64 = (vars: Var[], build: CheckSpec['build'], extra: Partial<CheckSpec> = {}): CheckSpec => ({ dtype: 'float64', vars, build, ...extra });
const f32 = (vars: Var[], build: CheckSpec['build'], extra: Partial<CheckSpec> = {}): CheckSpec => ({ dtype: 'float32', vars, build, ...extra });
const constNode = (b: GraphBuilder, dt: DType, dims: number[], v: number[]) => b.op1('Constant', [], { value: A.t(tensor(dt, dims, v)) });

// ------------------------------------------------------------------------------------------------
describe('1. MatMul: 4-D and batch broadcasting', () => {
  const cases: [string, number[], number[], boolean?][] = [
    ['[B,H,T,D] x [B,H,D,T]', [2, 2, 3, 2], [2, 2, 2, 3]],
    ['[1,H,T,D] x [B,H,D,T] (A broadcast over B)', [1, 2, 3, 2], [2, 2, 2, 3]],
    ['[B,H,T,D] x [1,H,D,T] (B broadcast over B)', [2, 2, 3, 2], [1, 2, 2, 3]],
    ['[B,1,T,D] x [1,H,D,T] (both broadcast)', [2, 1, 3, 2], [1, 2, 2, 3]],
    ['[B,H,T,D] x [H,D,T] (rank 4 x rank 3)', [2, 2, 3, 2], [2, 2, 3]],
    ['[H,T,D] x [B,H,D,T] (rank 3 x rank 4)', [2, 3, 2], [2, 2, 2, 3]],
    ['[B,H,T,D] x [D,N] weight (Gemm path), weight an initializer', [2, 2, 3, 4], [4, 3], true],
    ['[T,D] x [B,H,D,T] (2-D A, 4-D B)', [3, 2], [2, 2, 2, 3]],
    ['[D] x [B,H,D,T] (vector A)', [2], [2, 2, 2, 3]],
    ['[B,H,T,D] x [D] (vector B)', [2, 2, 3, 2], [2]],
  ];
  for (const [label, as, ws, init] of cases) {
    check(`MatMul ${label} float64`, f64([{ name: 'a', shape: as }, { name: 'w', shape: ws, init }], (b, v) => b.matmul(v.a, v.w)));
  }
  // float32 at onnxruntime's 'all' level, where the backward's Transpose+MatMul become FusedMatMul (with
  // transBatch forms for 4-D operands): the fused kernel must agree with the broadcast semantics too.
  for (const [label, as, ws] of cases.slice(0, 6)) {
    check(`MatMul ${label} float32 at level all`, f32([{ name: 'a', shape: as }, { name: 'w', shape: ws }], (b, v) => b.matmul(v.a, v.w), { optimization: 'all' }));
  }
  check('MatMul Q·Kᵀ with Kᵀ = Transpose(K, [0,1,3,2]) and broadcast Q, float32 at level all', f32(
    [{ name: 'q', shape: [1, 2, 3, 2] }, { name: 'k', shape: [2, 2, 3, 2] }],
    (b, v) => b.matmul(v.q, b.transpose(v.k, [0, 1, 3, 2])),
    { optimization: 'all' },
  ));
});

// ------------------------------------------------------------------------------------------------
describe('2. ReduceMean over several axes', () => {
  // keepdims undefined: the attribute is left out (default 1, as torch.onnx writes it).
  const cases: [string, number[], number[] | undefined, 0 | 1 | undefined][] = [
    ['axes [1,-1] keepdims 0', [2, 3, 4], [1, -1], 0],
    ['axes [-3,-1] keepdims 1', [2, 3, 4], [-3, -1], 1],
    ['axes [2,0] (unsorted) keepdims 1', [2, 3, 4], [2, 0], 1],
    ['axes [-2,-1] keepdims 0 on 4-D', [2, 2, 3, 2], [-2, -1], 0],
    ['axes [0,1,2] keepdims 0 (to a scalar)', [2, 3, 2], [0, 1, 2], 0],
    ['no axes (all) keepdims 0', [2, 3], undefined, 0],
    ['no axes (all) keepdims 1', [2, 3], undefined, 1],
    ['axes [-1,1], keepdims left out (1)', [2, 3, 4], [-1, 1], undefined],
  ];
  for (const [label, shape, axes, keep] of cases) {
    check(`ReduceMean ${label}`, f64([{ name: 'x', shape }], (b, v) => {
      const attrs: Record<string, Attr> = {};
      if (axes) attrs.axes = A.ints(axes);
      if (keep !== undefined) attrs.keepdims = A.i(keep);
      return b.op1('ReduceMean', [v.x], attrs);
    }));
  }
  check('ReduceMean axes [-1] then broadcast back (x - mean) feeding a product', f64([{ name: 'x', shape: [2, 5] }], (b, v) => {
    const c = b.sub(v.x, b.reduceMean(v.x, [-1], true));
    return b.mul(c, c);
  }));
  check('ReduceSum axes [-1,-3] keepdims 1 (axes input)', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.reduceSum(v.x, [-1, -3], true)));
  test('opset-18 ReduceMean (axes as input #1) is refused at build, naming the op; the registry has only the opset-17 form', () => {
    const b = new GraphBuilder();
    const x = b.input('x', 'float64', [2, 3]);
    let err: unknown;
    try {
      b.op1('ReduceMean', [x, b.ints([0, 1])], { keepdims: A.i(0) });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EngineError);
    expect((err as Error).message).toMatch(/ReduceMean takes its axes as an "axes" attribute/);
  });
});

// ------------------------------------------------------------------------------------------------
/** LayerNorm as torch.onnx exported it before opset 17 (ReduceMean → Sub → Pow 2 → ReduceMean → Add eps → Sqrt → Div → Mul → Add). */
function layerNormDecomposed(b: GraphBuilder, x: string, g: string, beta: string, dt: DType, opts: { expDtype?: DType; axes?: number[]; eps?: number } = {}): string {
  const axes = opts.axes ?? [-1];
  const mean = b.op1('ReduceMean', [x], { axes: A.ints(axes) }); // keepdims default 1, as exported
  const xc = b.sub(x, mean);
  const sq = b.op1('Pow', [xc, constNode(b, opts.expDtype ?? dt, [], [2])]);
  const v = b.op1('ReduceMean', [sq], { axes: A.ints(axes) });
  const sd = b.op1('Sqrt', [b.add(v, constNode(b, dt, [], [opts.eps ?? 1e-5]))]);
  return b.add(b.mul(b.div(xc, sd), g), beta);
}

describe('3. LayerNorm before opset 17, and LayerNormalization', () => {
  const vars = (shape: number[], pshape: number[]): Var[] => [
    { name: 'x', shape },
    { name: 'g', shape: pshape, lo: 0.5, hi: 1.5, init: true },
    { name: 'bb', shape: pshape, init: true },
  ];
  check('decomposed LayerNorm float64, [2,3,5] over the last axis, gamma/beta parameters', f64(vars([2, 3, 5], [5]), (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float64')));
  check('decomposed LayerNorm float64, exponent a float32 Constant (mixed Pow types)', f64(vars([3, 4], [4]), (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float64', { expDtype: 'float32' })));
  check('decomposed LayerNorm float64 over the last two axes [-2,-1]', f64(vars([2, 3, 2], [3, 2]), (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float64', { axes: [-2, -1] })));
  check('decomposed LayerNorm float32 at level all (onnxruntime fuses it into LayerNormalization)', f32(
    vars([2, 3, 6], [6]),
    (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float32'),
    { optimization: 'all', step: 3e-3 },
  ));
  check('decomposed LayerNorm float32 at level disabled', f32(
    vars([2, 3, 6], [6]),
    (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float32'),
    { optimization: 'disabled', step: 3e-3 },
  ));
  check('decomposed LayerNorm float64, a large eps (1e-1) makes the eps path visible', f64(vars([2, 4], [4]), (b, v) => layerNormDecomposed(b, v.x, v.g, v.bb, 'float64', { eps: 1e-1 })));
  check('LayerNormalization float64 on 4-D, axis -1, gamma/beta parameters', f64(vars([2, 2, 2, 3], [3]), (b, v) => b.op1('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1), epsilon: A.f(1e-5) })));
  check('LayerNormalization float32 at level all, axis -2 over [3,4]', f32(
    vars([2, 3, 4], [3, 4]),
    (b, v) => b.op1('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-2), epsilon: A.f(1e-5) }),
    { optimization: 'all', step: 3e-3 },
  ));
  check('LayerNormalization float64, scale broadcast [1,4] over [3,4]', f64(vars([3, 4], [1, 4]), (b, v) => b.op1('LayerNormalization', [v.x, v.g, v.bb], { axis: A.i(-1) })));
});

// ------------------------------------------------------------------------------------------------
// Hugging Face CLIPAttention as torch.onnx exports it: q/k/v projections, Shape → Gather → Unsqueeze → Concat
// reshape targets, [B,T,C]→[B,T,H,D], Transpose [0,2,1,3], Kᵀ by Transpose [0,1,3,2], scale, an additive causal
// mask plus an additive padding mask (finfo.min each: their sum overflows to -inf in float32), Softmax, ·V,
// Transpose back, Reshape, out projection.
const B = 2, T = 3, H = 2, HD = 2, C = H * HD;
type MaskKind = 'finfo' | '-inf' | '-1e9' | 'where-inf';
const FINFO: Record<string, number> = { float32: -3.4028234663852886e38, float64: -1.7976931348623157e308 };

function hfAttention(b: GraphBuilder, v: Record<string, string>, dt: DType, mask: MaskKind, scaleAt: 'q' | 'scores-div' | 'sdpa'): string {
  const big = mask === 'finfo' ? FINFO[dt]! : mask === '-1e9' ? -1e9 : -Infinity;
  const lin = (x: string, w: string, bias: string) => b.add(b.matmul(x, w), bias);
  const shape = b.op1('Shape', [v.x]);
  const dim = (i: number) => b.op1('Unsqueeze', [b.gather(shape, b.constant(tensor('int64', [], [i]), 'i'), 0), b.ints([0])]);
  const bsz = dim(0), tl = dim(1);
  const heads = (t: string) => b.transpose(b.op1('Reshape', [t, b.concat([bsz, tl, b.ints([H]), b.ints([HD])], 0)]), [0, 2, 1, 3]);
  let q = lin(v.x, v.wq, v.bq);
  if (scaleAt === 'q') q = b.mul(q, constNode(b, dt, [], [HD ** -0.5]));
  const qh = heads(q), kh = heads(lin(v.x, v.wk, v.bk)), vh = heads(lin(v.x, v.wv, v.bv));
  let s: string;
  if (scaleAt === 'sdpa') {
    // torch's scaled_dot_product_attention export: both sides times sqrt(scale), scale = 1/sqrt(D) computed in-graph.
    const sc = b.op1('Sqrt', [b.div(constNode(b, dt, [], [1]), b.op1('Sqrt', [constNode(b, dt, [], [HD])]))]);
    s = b.matmul(b.mul(qh, sc), b.mul(b.transpose(kh, [0, 1, 3, 2]), sc));
  } else {
    s = b.matmul(qh, b.transpose(kh, [0, 1, 3, 2]));
    if (scaleAt === 'scores-div') s = b.div(s, constNode(b, dt, [], [Math.sqrt(HD)]));
  }
  // Causal mask [1,1,T,T] (j > i masked) and padding mask [B,1,1,T] (batch 1's last key masked).
  const causal = Array.from({ length: T * T }, (_, k) => (k % T > Math.floor(k / T) ? big : 0));
  const pad = Array.from({ length: B * T }, (_, k) => (k === B * T - 1 ? big : 0));
  if (mask === 'where-inf') {
    // masked_fill(mask, -inf) exports as Where(mask, -inf, scores).
    const m = b.constant(tensor('bool', [1, 1, T, T], causal.map((c) => (c !== 0 ? 1 : 0))), 'causal_bool');
    s = b.op1('Where', [m, constNode(b, dt, [], [-Infinity]), s]);
  } else {
    s = b.add(s, constNode(b, dt, [1, 1, T, T], causal));
    s = b.add(s, b.op1('Expand', [constNode(b, dt, [B, 1, 1, T], pad), b.ints([B, 1, T, T])]));
  }
  const p = b.op1('Softmax', [s], { axis: A.i(-1) });
  const o = b.transpose(b.matmul(p, vh), [0, 2, 1, 3]);
  const flat = b.op1('Reshape', [o, b.concat([bsz, tl, b.ints([C])], 0)]);
  return lin(flat, v.wo, v.bo);
}
const attnVars: Var[] = [
  { name: 'x', shape: [B, T, C] },
  ...['q', 'k', 'v', 'o'].flatMap((n): Var[] => [{ name: `w${n}`, shape: [C, C], lo: -0.8, hi: 0.8, init: true }, { name: `b${n}`, shape: [C], lo: -0.3, hi: 0.3, init: true }]),
];

describe('4. Hugging Face attention with huge negative masks', () => {
  const ZERO = { zero: ['bk'] };
  for (const mask of ['finfo', '-inf', '-1e9', 'where-inf'] as const) {
    check(`HF attention float64, mask ${mask}, scale on q`, f64(attnVars, (b, v) => hfAttention(b, v, 'float64', mask, 'q'), { maxElems: 24 }), TOL64, ZERO);
  }
  check('HF attention float64, finfo.min mask, scores / sqrt(D)', f64(attnVars, (b, v) => hfAttention(b, v, 'float64', 'finfo', 'scores-div'), { maxElems: 24 }), TOL64, ZERO);
  // 'basic': at 'extended' and above onnxruntime folds the constant sqrt(scale) into FusedMatMul's alpha, a float32
  // attribute, where the forward-only graph has a single consumer of the product (and the graph with the backward
  // pass does not): the two graphs then differ by float32 rounding of the scale (2e-8), an onnxruntime effect.
  check('HF attention float64, -inf mask, SDPA-style sqrt(scale) on both sides', f64(attnVars, (b, v) => hfAttention(b, v, 'float64', '-inf', 'sdpa'), { maxElems: 24, optimization: 'basic' }), TOL64, ZERO);
  for (const mask of ['finfo', '-inf', 'where-inf'] as const) {
    check(`HF attention float32 at level all, mask ${mask}`, f32(attnVars, (b, v) => hfAttention(b, v, 'float32', mask, 'q'), { maxElems: 0, directions: 4, optimization: 'all', step: 3e-3 }), 1e-3, ZERO);
  }
  check('HF attention float32 at level all, SDPA-style scale, finfo.min mask', f32(attnVars, (b, v) => hfAttention(b, v, 'float32', 'finfo', 'sdpa'), { maxElems: 0, directions: 4, optimization: 'all', step: 3e-3 }), 1e-3, ZERO);
});

// ------------------------------------------------------------------------------------------------
describe('5. Conv with groups on batches (float32: no float64 Conv/ConvTranspose kernel on the CPU)', () => {
  const conv = (label: string, xs: number[], ws: number[], attrs: Record<string, Attr>, bias = false) =>
    check(`Conv ${label}`, f32(
      [{ name: 'x', shape: xs }, { name: 'w', shape: ws, init: true }, ...(bias ? [{ name: 'bias', shape: [ws[0]!], init: true }] : [])],
      (b, v) => b.op1('Conv', bias ? [v.x, v.w, v.bias] : [v.x, v.w], attrs),
      { maxElems: 48, directions: 6 },
    ));
  conv('group 2, N 2, stride 2, pads 1, bias', [2, 4, 5, 5], [6, 2, 3, 3], { group: A.i(2), strides: A.ints([2, 2]), pads: A.ints([1, 1, 1, 1]) }, true);
  conv('depthwise (group = C = 3), N 2, stride 2, pads 1', [2, 3, 6, 6], [3, 1, 3, 3], { group: A.i(3), strides: A.ints([2, 2]), pads: A.ints([1, 1, 1, 1]) });
  conv('depthwise with multiplier 2 (group 3, M 6), N 2, stride 1, pads [0,1,1,0]', [2, 3, 4, 5], [6, 1, 2, 2], { group: A.i(3), pads: A.ints([0, 1, 1, 0]) }, true);
  conv('group 3, N 3, stride 3 (dropped rows), dilation 2, asymmetric pads', [3, 6, 7, 8], [3, 2, 2, 2], { group: A.i(3), strides: A.ints([3, 2]), dilations: A.ints([2, 2]), pads: A.ints([1, 0, 0, 2]) });
  conv('1-D depthwise, N 2, stride 2, pads 2', [2, 4, 9], [4, 1, 3], { group: A.i(4), strides: A.ints([2]), pads: A.ints([2, 2]) });
  conv('patch embedding with N 2 and auto_pad VALID', [2, 3, 8, 8], [4, 3, 4, 4], { strides: A.ints([4, 4]), auto_pad: A.s('VALID') });
});

// ------------------------------------------------------------------------------------------------
// Hugging Face CLIPVisionEmbeddings + pre-LayerNorm + pooled class token + projection, as exported:
// Conv (patches) → Flatten/Reshape → Transpose → Concat(class embedding Expand-ed to the batch) → Add(Gather(pos
// table, position_ids)) → LayerNorm → Gather(axis 1, 0) → LayerNorm → MatMul (projection, no bias).
describe('6. other forms real CLIP exports use', () => {
  const Dm = 4, P = 2, R = 4, NP = (R / P) ** 2;
  check('HF vision embeddings → class token → projection (float32, all parameters)', f32(
    [
      { name: 'px', shape: [2, 3, R, R] },
      { name: 'patch_w', shape: [Dm, 3, P, P], init: true },
      { name: 'cls', shape: [Dm], init: true },
      { name: 'pos', shape: [NP + 1, Dm], init: true },
      { name: 'ln_g', shape: [Dm], lo: 0.5, hi: 1.5, init: true },
      { name: 'ln_b', shape: [Dm], init: true },
      { name: 'proj', shape: [Dm, 3], init: true },
    ],
    (b, v) => {
      const pe = b.op1('Conv', [v.px, v.patch_w], { strides: A.ints([P, P]) });
      const flat = b.op1('Reshape', [pe, b.ints([0, 0, -1])]); // flatten(2) with a 0 (copy) in the target
      const seq = b.transpose(flat, [0, 2, 1]);
      const cls = b.op1('Expand', [v.cls, b.ints([2, 1, 1])]);
      const x = b.concat([cls, seq], 1);
      const posIds = b.constant(tensor('int64', [1, NP + 1], Array.from({ length: NP + 1 }, (_, i) => i)), 'position_ids');
      const h = b.add(x, b.gather(v.pos, posIds, 0));
      const ln = (t: string) => b.op1('LayerNormalization', [t, v.ln_g, v.ln_b], { axis: A.i(-1) });
      const pooled = b.gather(ln(h), b.constant(tensor('int64', [], [0]), 'zero'), 1);
      return b.matmul(ln(pooled), v.proj);
    },
    { maxElems: 0, directions: 6, step: 3e-3 },
  ), 1e-3);
  check('Gemm without C (torch Linear on 2-D, no bias), transB 1', f64([{ name: 'a', shape: [3, 4] }, { name: 'w', shape: [5, 4], init: true }], (b, v) => b.op1('Gemm', [v.a, v.w], { transB: A.i(1) })));
  check('Gemm with C [1,N]', f64([{ name: 'a', shape: [3, 4] }, { name: 'w', shape: [4, 5] }, { name: 'c', shape: [1, 5] }], (b, v) => b.op1('Gemm', [v.a, v.w, v.c])));
  check('Squeeze without axes (all unit dims)', f64([{ name: 'x', shape: [1, 3, 1, 2] }], (b, v) => b.op1('Squeeze', [v.x])));
  check('Slice + Squeeze class token x[:, 0, :]', f64([{ name: 'x', shape: [2, 3, 4] }], (b, v) => b.op1('Squeeze', [b.slice(v.x, [0], [1], [1]), b.ints([1])])));
  check('Expand to a higher rank with a lower-rank shape ([3,1] by [2,1,4])', f64([{ name: 'x', shape: [3, 1] }], (b, v) => b.op1('Expand', [v.x, b.ints([2, 1, 4])])));
  check('Div by a runtime norm: x / Sqrt(ReduceSum(Pow(x, 2))) (normalize without ReduceL2)', f64([{ name: 'x', shape: [3, 4] }], (b, v) =>
    b.div(v.x, b.op1('Sqrt', [b.reduceSum(b.op1('Pow', [v.x, constNode(b, 'float64', [], [2])]), [-1], true)]))));
  check('Erf GELU, 4-D activations (float32)', f32([{ name: 'x', shape: [2, 2, 3] , lo: -2, hi: 2 }], (b, v) =>
    b.mul(b.mul(v.x, b.scalar(0.5)), b.add(b.scalar(1), b.op1('Erf', [b.div(v.x, b.scalar(Math.SQRT2))])))));
  check('Softmax axis 1 of a 4-D tensor', f64([{ name: 'x', shape: [2, 3, 2, 2], lo: -2, hi: 2 }], (b, v) => b.op1('Softmax', [v.x], { axis: A.i(1) })));
  check('Pow with an int64 Constant exponent 3', f64([{ name: 'x', shape: [2, 3], lo: 0.5, hi: 1.5 }], (b, v) => b.op1('Pow', [v.x, constNode(b, 'int64', [], [3])])));

  // Pow branches no other test reaches: constant exponents 0 and 1 (folded at build time) and a one-element
  // exponent of higher rank than the base (the output, and so the gradient, is broadcast up).
  check('Pow constant exponent 1', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('Pow', [v.x, b.scalar(1, 'float64')])));
  check('Pow constant exponent 0 (zero gradient, as PyTorch)', f64([{ name: 'x', shape: [2, 3], lo: 0.5, hi: 1.5 }, { name: 'y', shape: [2, 3] }], (b, v) => b.add(b.op1('Pow', [v.x, b.scalar(0, 'float64')]), b.mul(v.x, v.y))));
  check('Pow exponent [1,1] over a [3] base (output [1,3])', f64([{ name: 'x', shape: [3], lo: 0.5, hi: 1.5 }], (b, v) => b.op1('Pow', [v.x, constNode(b, 'float64', [1, 1], [3])])));
  // 'basic': at 'all' onnxruntime folds the harness's scalar Mul by R into the MatMul (FusedMatMul, whose alpha
  // is a float32 attribute), which rounds the float64 loss to float32 precision (not the compiler's doing).
  check('MatMul vector · vector (scalar output)', f64([{ name: 'a', shape: [4] }, { name: 'w', shape: [4] }], (b, v) => b.matmul(v.a, v.w), { optimization: 'basic' }));
  check('ReduceSum noop_with_empty_axes 1 without axes (identity)', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.mul(b.op1('ReduceSum', [v.x], { noop_with_empty_axes: A.i(1) }), v.x)));
  check('ReduceSum with an empty axes tensor (all axes)', f64([{ name: 'x', shape: [2, 3] }], (b, v) => b.op1('ReduceSum', [v.x, b.constant(tensor('int64', [0], []), 'noaxes')], { keepdims: A.i(0) })));
  check('Slice that selects nothing, next to one that does', f64([{ name: 'x', shape: [3, 4] }], (b, v) => [b.slice(v.x, [1], [1], [0]), b.slice(v.x, [1], [3], [1])]));
  // OpenCLIP / torch nn.MultiheadAttention as exported: sequence-first [T,B,C], in-projection to 3C, unflatten
  // to [T,B,3,C] → Unsqueeze → Transpose → Squeeze → Gather(0/1/2) for q, k, v; heads [T,B·H,D] → [B·H,T,D];
  // 3-D bmm; out-projection as Gemm(transB 1) on [T·B, C].
  check('OpenCLIP MultiheadAttention export (LND, Gather q/k/v, 3-D bmm, Gemm out-projection)', f64(
    [
      { name: 'x', shape: [T, B, C] },
      { name: 'w_in', shape: [3 * C, C], lo: -0.8, hi: 0.8, init: true },
      { name: 'b_in', shape: [3 * C], lo: -0.3, hi: 0.3, init: true },
      { name: 'w_out', shape: [C, C], lo: -0.8, hi: 0.8, init: true },
      { name: 'b_out', shape: [C], init: true },
    ],
    (b, v) => {
      const proj = b.add(b.matmul(v.x, b.transpose(v.w_in, [1, 0])), v.b_in); // [T,B,3C]
      const un = b.op1('Unsqueeze', [b.reshape(proj, [T, B, 3, C]), b.ints([0])]); // [1,T,B,3,C]
      const st = b.op1('Squeeze', [b.transpose(un, [3, 1, 2, 0, 4]), b.ints([-2])]); // [3,T,B,C]
      const pick = (i: number) => b.gather(st, b.constant(tensor('int64', [], [i]), 'qkv'), 0);
      const heads = (t: string) => b.transpose(b.reshape(t, [T, B * H, HD]), [1, 0, 2]); // [B·H,T,D]
      const q = b.mul(heads(pick(0)), b.scalar(HD ** -0.5, 'float64'));
      const k = heads(pick(1)), vv = heads(pick(2));
      const causal = Array.from({ length: T * T }, (_, i) => (i % T > Math.floor(i / T) ? -Infinity : 0));
      const s = b.add(b.matmul(q, b.transpose(k, [0, 2, 1])), b.constant(tensor('float64', [T, T], causal), 'attn_mask'));
      const o = b.matmul(b.op1('Softmax', [s], { axis: A.i(-1) }), vv); // [B·H,T,D]
      const o2 = b.reshape(b.transpose(o, [1, 0, 2]), [T * B, C]);
      return b.reshape(b.op1('Gemm', [o2, v.w_out, v.b_out], { transB: A.i(1) }), [T, B, C]);
    },
    { maxElems: 24 },
  ));
  // OpenAI CLIP's VisionTransformer: class_embedding + zeros(B,1,W) (ConstantOfShape) concatenated before the
  // patches; ln_post on x[:, 0, :]; x @ proj.
  check('OpenAI CLIP embeddings: class + ConstantOfShape zeros, Concat, positional Add, x[:,0,:] @ proj (float32)', f32(
    [
      { name: 'px', shape: [2, 3, 4, 4] },
      { name: 'conv1', shape: [4, 3, 2, 2], init: true },
      { name: 'cls', shape: [4], init: true },
      { name: 'pos', shape: [5, 4], init: true },
      { name: 'proj', shape: [4, 3], init: true },
    ],
    (b, v) => {
      const pe = b.op1('Conv', [v.px, v.conv1], { strides: A.ints([2, 2]) });
      const seq = b.transpose(b.reshape(pe, [2, 4, 4]), [0, 2, 1]);
      const zeros = b.op1('ConstantOfShape', [b.ints([2, 1, 4])], { value: A.t(tensor('float32', [1], [0])) });
      const x = b.add(b.concat([b.add(v.cls, zeros), seq], 1), v.pos);
      return b.matmul(b.gather(x, b.constant(tensor('int64', [], [0]), 'zero'), 1), v.proj);
    },
    { maxElems: 0, directions: 6 },
  ));
  test('every float op the builder accepts has a gradient rule or is refused by name (not silently zero)', () => {
    const noRule: string[] = [];
    for (const op of Object.keys(SHAPE_RULES).sort()) {
      if (hasGradientRule(op) || isNotDifferentiable(op)) continue;
      noRule.push(op);
    }
    // The ops with a shape rule but no gradient rule: a foreign tower using one on its active path is refused
    // at import (listUnsupportedOps); appendGradients refuses them by name too.
    for (const op of noRule) {
      const b = new GraphBuilder();
      const x = b.input('x', 'float32', [2, 3]);
      const y = unaryLike(b, op, x);
      const l = b.reduceSum(b.mul(y, y), [0, 1], false);
      let err: unknown;
      try {
        appendGradients(b, { loss: l, wrt: [x] });
      } catch (e) {
        err = e;
      }
      expect(err, op).toBeInstanceOf(EngineError);
      expect((err as EngineError).code, op).toBe('unsupported_op');
      expect((err as EngineError).message, op).toMatch(new RegExp(`no gradient rule for op ${op} `));
    }
    expect(noRule).toMatchInlineSnapshot(`
      [
        "ConvTranspose",
        "Cos",
        "Elu",
        "GatherElements",
        "HardSigmoid",
        "LeakyRelu",
        "ReduceLogSumExp",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
        "ScatterElements",
        "ScatterND",
        "Sin",
        "Trilu",
      ]
    `);
  });
});

// ------------------------------------------------------------------------------------------------
describe('build-time folding stays on plumbing', () => {
  test('a float op with a small constant and a large float initializer is not folded (only plumbing is)', () => {
    // Folding such an op did the float work in JS element by element at build time (a second and 9 MB per
    // [768, 3072] weight). Each weight's values are counted as they are read: building must read none.
    // 300×300 is over the fold's element bound; 64×64 is under it, so only the float rule keeps it unfolded.
    let reads = 0;
    const counted = (n: number) =>
      new Proxy(new Float32Array(n).fill(0.5), {
        get(target, key, receiver) {
          if (typeof key === 'string' && /^\d+$/.test(key)) reads++;
          return Reflect.get(target, key, receiver);
        },
      });
    const b = new GraphBuilder();
    for (const [rows, cols] of [[300, 300], [64, 64]] as const) {
      const w = b.initializer(`w${rows}`, { dtype: 'float32', dims: [rows, cols], data: counted(rows * cols) }); // as given, not copied
      const scaled = b.mul(b.scalar(0.125), w); // Mul(Constant, weight): the first input is the small one
      const masked = b.op1('Where', [b.constant(tensor('bool', [], [1]), 'keep'), w, b.scalar(0)]);
      const shifted = b.add(b.constant(tensor('float32', [cols], new Float32Array(cols)), 'bias'), w); // bias first, > 16 floats
      for (const v of [scaled, masked, shifted]) expect(b.consts.has(v), `${v} of w${rows}`).toBe(false);
      expect(reads, `values of w${rows} read while building`).toBe(0);
    }
    // No weight-sized value was made beside the weights themselves.
    const big = (m: Map<string, { dims: number[] }>) => [...m].filter(([, t]) => t.dims.reduce((p, d) => p * d, 1) >= 64 * 64).map(([name]) => name).sort();
    expect(big(b.consts)).toEqual(['w300', 'w64']);
    expect(big(b.initializers)).toEqual(['w300', 'w64']);
    const w = 'w300';
    // Plumbing still folds: integer shape arithmetic, and a tiny float scalar feeding it.
    const dims = b.op1('Shape', [w]);
    const half = b.op1('Div', [dims, b.constant(tensor('int64', [], [2]), 'two')]);
    expect(Array.from(b.consts.get(half)!.data as BigInt64Array, Number)).toEqual([150, 150]);
    const sc = b.op1('Mul', [b.scalar(2), b.scalar(0.25)]);
    expect(Array.from(b.consts.get(sc)!.data as Float32Array)).toEqual([0.5]);
  });
});

function unaryLike(b: GraphBuilder, op: string, x: string): string {
  const i64 = (v: number[], dims = [v.length]) => b.constant(tensor('int64', dims, v), 'i');
  switch (op) {
    case 'GatherElements': return b.op1(op, [x, i64([0, 1, 0, 1, 0, 1], [2, 3])], { axis: A.i(0) });
    case 'ScatterND': return b.op1(op, [x, i64([0], [1, 1]), b.constant(tensor('float32', [1, 3], [1, 2, 3]), 'u')]);
    case 'ScatterElements': return b.op1(op, [x, i64([0, 1, 0, 1, 0, 1], [2, 3]), x], { axis: A.i(0) });
    case 'ConvTranspose': return b.reshape(b.op1(op, [b.reshape(x, [1, 2, 3]), b.constant(tensor('float32', [2, 2, 1], [1, 2, 3, 4]), 'w')]), [2, 3]);
    case 'Trilu': return b.op1(op, [x]);
    default:
      if (op.startsWith('Reduce')) return b.op1(op, [x], { axes: A.ints([1]), keepdims: A.i(1) });
      return b.op1(op, [x]);
  }
}

describe('shape rules refuse what onnxruntime would refuse at load or run time, naming it', () => {
  const refused = (build: (b: GraphBuilder) => void): Error => {
    const b = new GraphBuilder();
    try {
      build(b);
    } catch (e) {
      return e as Error;
    }
    throw new Error('not refused');
  };
  test("Pad's axes input (opset 18) is refused at build: the shape and gradient rules would use it, and onnxruntime refuses the model at opset 17", () => {
    const e = refused((b) => b.op1('Pad', [b.input('x', 'float32', [2, 3]), b.ints([0, 1, 0, 1]), b.scalar(0, 'float32'), b.ints([1])]));
    expect(e).toBeInstanceOf(EngineError);
    expect(e.message).toMatch(/Pad takes no "axes" input at opset 13–17/);
  });
  test('Pad pads of the wrong length are refused at build', () => {
    expect(refused((b) => b.op1('Pad', [b.input('x', 'float32', [2, 3]), b.ints([1, 1])])).message).toMatch(/Pad pads has 2 values; a rank-2 input needs 4/);
  });
  test('Conv output channels not a multiple of group are refused at build (onnxruntime failed only at run time)', () => {
    const e = refused((b) => b.op1('Conv', [b.input('x', 'float32', [1, 4, 5, 5]), b.input('w', 'float32', [3, 2, 3, 3])], { group: A.i(2) }));
    expect(e.message).toMatch(/Conv output channels 3 are not a multiple of group 2/);
  });
});
