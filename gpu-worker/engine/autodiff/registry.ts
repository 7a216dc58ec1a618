// Gradient rules: op -> emitted ONNX nodes, in the style of ONNX Runtime's gradient_builder
// (I(i) forward input, O(i) forward output, GO(i) gradient of an output, GI(i) gradient of an input).
//
// onnxruntime-node has no autodiff, so every rule writes its backward pass as ordinary ONNX ops into the
// same GraphBuilder; forward and backward then run in one session.run. Shapes are static, so rules emit
// constant axes/shapes (no Shape/ConstantOfShape plumbing at run time).

import { EngineError } from '../errors.ts';
import { A, type Attr, type DType, type Node, type TensorData, numel, tensor, valueAt } from '../onnx/ir.ts';
import type { GraphBuilder } from '../onnx/builder.ts';
import { attrFloat, attrInt, attrInts, attrString, constInts, normAxis, sliceParams } from '../onnx/shapes.ts';

/** What a rule sees. Names follow ORT's gradient builder. */
export interface GradCtx {
  /** The forward node being differentiated. */
  node: Node;
  op: string;
  /** The builder the backward nodes are appended to. */
  b: GraphBuilder;
  attrs: Record<string, Attr>;
  /** Forward input name #i ('' when an optional input is omitted). */
  I(i: number): string;
  /** Forward output name #i. */
  O(i: number): string;
  /** Accumulated gradient of output #i, or null when no gradient flows into it (treat as zeros). */
  GO(i: number): string | null;
  /** Whether input #i needs a gradient (it is active: on a path from a wrt to the loss). */
  needs(i: number): boolean;
  /** Whether any value of the graph (not only this node's inputs) is active, i.e. needs a gradient. */
  isActive(name: string): boolean;
  /** Number of forward inputs (including omitted optional ones). */
  nIn: number;
  has(i: number): boolean;
  shape(name: string): number[];
  dtype(name: string): DType;
  /** Build-time value of input #i (initializer, Constant, folded plumbing), if known. */
  const(i: number): TensorData | undefined;
  /** Sum-reduce a broadcast gradient back to `shape` (ReduceSum over the broadcast axes + Reshape). */
  reduceToShape(g: string, shape: number[]): string;
  /** A scalar constant in the node's float dtype. */
  scalar(v: number, dtype?: DType): string;
  /** Zeros of a shape in the node's float dtype. */
  zeros(shape: number[], dtype?: DType): string;
  /** Raise not_differentiable for input #i (e.g. an active Clip bound the rule does not support). */
  notDiff(i: number, why: string): never;
}

/** Returns one gradient per forward input (null where none is produced or needed). */
export type GradRule = (c: GradCtx) => (string | null)[];

const RULES = new Map<string, { rule: GradRule; outputs: 'all' | readonly number[] }>();

/**
 * Ops that are registered as having no derivative (zero almost everywhere, or integer/bool outputs).
 * An active path through one is a `not_differentiable` error, distinct from `unsupported_op` (no rule).
 * Ops with integer/bool outputs are normally cut off by activity analysis already (their outputs are inactive);
 * the ones with float outputs (Floor, Round, Sign, ...) are what actually trigger the error.
 */
export const NOT_DIFFERENTIABLE: ReadonlySet<string> = new Set([
  'ArgMax', 'ArgMin', 'Equal', 'Less', 'LessOrEqual', 'Greater', 'GreaterOrEqual', 'Shape', 'Size',
  'Floor', 'Ceil', 'Round', 'Sign', 'IsNaN', 'IsInf', 'Not', 'And', 'Or', 'Xor', 'OneHot',
  'ConstantOfShape', 'Range', 'Constant', 'NonZero', 'RandomNormal', 'RandomUniform', 'RandomNormalLike',
  'RandomUniformLike', 'Bernoulli', 'TopK',
]);

/**
 * `outputs`: the outputs whose gradient the rule reads (default: output #0 only). A gradient flowing
 * into any other output is refused by the compiler, naming it, rather than silently dropped.
 */
export function registerGradient(op: string, rule: GradRule, opts: { outputs?: 'all' | readonly number[] } = {}): void {
  if (NOT_DIFFERENTIABLE.has(op)) throw new Error(`op ${op} is registered as not differentiable`);
  RULES.set(op, { rule, outputs: opts.outputs ?? [0] });
}
export function getGradientRule(op: string): GradRule | undefined {
  return RULES.get(op)?.rule;
}
/** Whether the rule for `op` reads the gradient of its output #k. */
export function ruleReadsOutput(op: string, k: number): boolean {
  const outputs = RULES.get(op)?.outputs;
  return outputs === 'all' || (outputs?.includes(k) ?? false);
}
export function hasGradientRule(op: string): boolean {
  return RULES.has(op);
}
export function isNotDifferentiable(op: string): boolean {
  return NOT_DIFFERENTIABLE.has(op);
}
/** All ops with a gradient rule, sorted. */
export function registeredOps(): string[] {
  return [...RULES.keys()].sort();
}

// ------------------------------------------------------------------------------------------------
// Small emit helpers shared by rules.

const I64_MAX = 9223372036854775807n;

/** `ReduceSum` over `axes` (opset 13+: axes as input). */
function rsum(b: GraphBuilder, x: string, axes: number[], keepdims: boolean): string {
  if (axes.length === 0) return x;
  return b.op1('ReduceSum', [x, b.ints(axes)], { keepdims: A.i(keepdims ? 1 : 0) });
}
function reshapeTo(b: GraphBuilder, x: string, shape: number[]): string {
  const s = b.shape(x);
  if (s.length === shape.length && s.every((d, i) => d === shape[i])) return x;
  return b.reshape(x, shape);
}
function sameShape(a: number[], c: number[]): boolean {
  return a.length === c.length && a.every((d, i) => d === c[i]);
}

/** Sum-reduce `g` (of a broadcast shape) back to `target`. Exported for gradient.ts and tests. */
export function reduceToShape(b: GraphBuilder, g: string, target: number[]): string {
  const gs = b.shape(g);
  if (sameShape(gs, target)) return g;
  const k = gs.length - target.length;
  if (k < 0) throw new EngineError('invalid_graph', `reduceToShape: gradient [${gs}] has lower rank than target [${target}]`);
  const lead: number[] = [];
  for (let i = 0; i < k; i++) lead.push(i);
  const inner: number[] = [];
  for (let i = k; i < gs.length; i++) if (target[i - k] === 1 && gs[i] !== 1) inner.push(i);
  let out: string;
  if (inner.length === 0) {
    // Only leading axes are broadcast: keepdims=0 lands exactly on the target shape.
    out = rsum(b, g, lead, false);
  } else {
    out = rsum(b, g, [...lead, ...inner], true);
  }
  return reshapeTo(b, out, target);
}

function perm2(rank: number): number[] {
  const p = Array.from({ length: rank }, (_, i) => i);
  [p[rank - 2], p[rank - 1]] = [p[rank - 1], p[rank - 2]];
  return p;
}

// ------------------------------------------------------------------------------------------------
// Elementwise arithmetic. Broadcast operands get their gradient sum-reduced to their own shape.

registerGradient('Add', (c) => [
  c.needs(0) ? c.reduceToShape(c.GO(0)!, c.shape(c.I(0))) : null,
  c.needs(1) ? c.reduceToShape(c.GO(0)!, c.shape(c.I(1))) : null,
]);

registerGradient('Sub', (c) => [
  c.needs(0) ? c.reduceToShape(c.GO(0)!, c.shape(c.I(0))) : null,
  // Negate after reducing: the reduced tensor is never larger than the broadcast one.
  c.needs(1) ? c.b.neg(c.reduceToShape(c.GO(0)!, c.shape(c.I(1)))) : null,
]);

/**
 * y = x · Sigmoid(α·x) with α a builder-made scalar constant (QuickGELU at α = 1.702, SiLU at 1), seen from its
 * outer Mul: which input is x, and the Sigmoid's input z = α·x and output s. Null for any other Mul.
 */
function sigmoidGatePattern(c: GradCtx): { xIndex: 0 | 1; z: string; s: string } | null {
  const b = c.b;
  const outShape = c.shape(c.O(0));
  for (const xIndex of [0, 1] as const) {
    const x = c.I(xIndex), s = c.I(1 - xIndex);
    const sig = b.producer.get(s);
    if (!sig || sig.op !== 'Sigmoid' || (sig.domain ?? '') !== '') continue;
    const z = sig.inputs[0]!;
    const scale = b.producer.get(z);
    if (!scale || scale.op !== 'Mul' || (scale.domain ?? '') !== '' || scale.inputs.length !== 2) continue;
    const k = scale.inputs.indexOf(x);
    if (k < 0 || scale.inputs[1 - k] === x) continue;
    // α must be a constant the builder made: a named initializer is a parameter, which may be a wrt,
    // and the fused rule sends nothing down the Sigmoid's path to it. A value folded from a parameter
    // (Identity, Reshape, Mul of a wrt initializer) is in b.consts too, so α must also be inactive.
    const alphaName = scale.inputs[1 - k]!;
    const alpha = b.consts.get(alphaName);
    if (!alpha || numel(alpha.dims) !== 1 || (b.initializers.has(alphaName) && !b.constantNames.has(alphaName))) continue;
    if (c.isActive(alphaName)) continue;
    if (![x, s, z].every((v) => sameShape(c.shape(v), outShape))) continue;
    return { xIndex, z, s };
  }
  return null;
}

registerGradient('Mul', (c) => {
  const g = c.GO(0)!;
  const gate = c.needs(0) || c.needs(1) ? sigmoidGatePattern(c) : null;
  if (gate && c.needs(gate.xIndex)) {
    // d/dx [x·σ(z)], z = α·x: σ(z) + α·x·σ(z)(1 − σ(z)) = s·(1 + z·(1 − s)). Five full-size ops where the
    // Mul, Sigmoid and scale rules one by one take seven (2 % of the ViT-B/32 step). The path through s
    // is inside it, so s gets no gradient from here; s's other consumers still send theirs the long way.
    const b = c.b;
    const slope = b.mul(gate.s, b.add(b.mul(gate.z, b.sub(c.scalar(1), gate.s)), c.scalar(1)));
    const out: (string | null)[] = [null, null];
    out[gate.xIndex] = b.mul(g, slope);
    return out;
  }
  return [
    c.needs(0) ? c.reduceToShape(c.b.mul(g, c.I(1)), c.shape(c.I(0))) : null,
    c.needs(1) ? c.reduceToShape(c.b.mul(g, c.I(0)), c.shape(c.I(1))) : null,
  ];
});

registerGradient('Div', (c) => {
  const g = c.GO(0)!;
  const b = c.b;
  const gOverB = c.needs(0) || c.needs(1) ? b.div(g, c.I(1)) : '';
  return [
    c.needs(0) ? c.reduceToShape(gOverB, c.shape(c.I(0))) : null,
    // d(a/b)/db = -(a/b)/b = -y/b: reuse g/b times y.
    c.needs(1) ? b.neg(c.reduceToShape(b.mul(gOverB, c.O(0)), c.shape(c.I(1)))) : null,
  ];
});

registerGradient('Neg', (c) => [c.b.neg(c.GO(0)!)]);
registerGradient('Identity', (c) => [c.GO(0)!]);
// Inference-mode Dropout (no training_mode input, or a constant false one) passes its input through, as
// exporters leave it in eval-mode graphs. In training mode it is random: no gradient rule fits that.
registerGradient('Dropout', (c) => {
  if (c.has(2)) {
    const mode = c.const(2);
    if (!mode || valueAt(mode, 0) !== 0) c.notDiff(0, 'a Dropout in training mode (training_mode not a constant false) is random: export the model in eval mode');
  }
  return [c.GO(0)!, null, null];
});

registerGradient('Sum', (c) => c.node.inputs.map((x, i) => (c.needs(i) ? c.reduceToShape(c.GO(0)!, c.shape(x)) : null)));
registerGradient('Mean', (c) => {
  const n = c.node.inputs.length;
  const g = c.b.mul(c.GO(0)!, c.scalar(1 / n));
  return c.node.inputs.map((x, i) => (c.needs(i) ? c.reduceToShape(g, c.shape(x)) : null));
});

registerGradient('Pow', (c) => {
  const b = c.b;
  const g = c.GO(0)!;
  const out: (string | null)[] = [null, null];
  if (c.needs(0)) {
    const e = c.const(1);
    let term: string;
    if (e && numel(e.dims) === 1) {
      // Constant scalar exponent: fold p and p-1 at build time; p=2 (variance, norms) needs no Pow at all.
      const p = valueAt(e, 0); // a float16 exponent is stored as its bits
      if (p === 0) term = b.mul(g, c.scalar(0));
      else if (p === 1) term = g;
      else if (p === 2) term = b.mul(g, b.mul(c.I(0), c.scalar(2)));
      else term = b.mul(g, b.mul(b.op1('Pow', [c.I(0), c.scalar(p - 1, c.dtype(c.I(1)))]), c.scalar(p)));
    } else {
      const ex = c.dtype(c.I(1)) === c.dtype(c.I(0)) ? c.I(1) : b.cast(c.I(1), c.dtype(c.I(0)));
      const pm1 = b.sub(ex, c.scalar(1));
      // p·a^(p−1) is 0·∞ = NaN at a = 0, p = 0, where a^0 = 1 is flat: 0 there, as in PyTorch.
      const slope = b.op1('Where', [b.op1('Equal', [ex, c.scalar(0)]), c.scalar(0), b.mul(b.op1('Pow', [c.I(0), pm1]), ex)]);
      term = b.mul(g, slope);
    }
    out[0] = c.reduceToShape(term, c.shape(c.I(0)));
  }
  if (c.needs(1)) {
    // d(a^p)/dp = a^p · ln a (defined for a > 0). At a = 0 with p ≥ 0 that is 0·(−∞) = NaN: PyTorch defines
    // it as 0 there (a^p is constant in p from the right), so mask it the same way.
    const pdt = c.dtype(c.I(1));
    const term = b.mul(b.mul(g, c.O(0)), b.op1('Log', [c.I(0)]));
    const zeroBase = b.op1('And', [
      b.op1('Equal', [c.I(0), c.scalar(0)]),
      b.op1('GreaterOrEqual', [c.I(1), c.scalar(0, pdt)]),
    ]);
    const gp = c.reduceToShape(b.op1('Where', [zeroBase, c.scalar(0), term]), c.shape(c.I(1)));
    // The exponent may have another float dtype than the base (ONNX allows it): its gradient has its own.
    out[1] = c.dtype(gp) === pdt ? gp : b.cast(gp, pdt);
  }
  return out;
});

registerGradient('Sqrt', (c) => [c.b.mul(c.b.div(c.GO(0)!, c.O(0)), c.scalar(0.5))]);
registerGradient('Exp', (c) => [c.b.mul(c.GO(0)!, c.O(0))]);
registerGradient('Log', (c) => [c.b.div(c.GO(0)!, c.I(0))]);
registerGradient('Reciprocal', (c) => [c.b.neg(c.b.mul(c.GO(0)!, c.b.mul(c.O(0), c.O(0))))]);
registerGradient('Tanh', (c) => {
  const b = c.b;
  return [b.mul(c.GO(0)!, b.sub(c.scalar(1), b.mul(c.O(0), c.O(0))))];
});
registerGradient('Sigmoid', (c) => {
  const b = c.b;
  return [b.mul(c.GO(0)!, b.mul(c.O(0), b.sub(c.scalar(1), c.O(0))))];
});
registerGradient('Erf', (c) => {
  const b = c.b;
  const x = c.I(0);
  const e = b.op1('Exp', [b.neg(b.mul(x, x))]);
  return [b.mul(c.GO(0)!, b.mul(e, c.scalar(2 / Math.sqrt(Math.PI))))];
});
registerGradient('Relu', (c) => {
  const b = c.b;
  const mask = b.op1('Greater', [c.O(0), c.scalar(0)]);
  return [b.op1('Where', [mask, c.GO(0)!, c.scalar(0)])];
});
registerGradient('Abs', (c) => [c.b.mul(c.GO(0)!, c.b.op1('Sign', [c.I(0)]))]);
registerGradient('Softplus', (c) => [c.b.mul(c.GO(0)!, c.b.sigmoid(c.I(0)))]);

registerGradient('Clip', (c) => {
  const b = c.b;
  if (c.has(1) && c.needs(1)) c.notDiff(1, 'a gradient with respect to a Clip bound is not supported; make min a constant');
  if (c.has(2) && c.needs(2)) c.notDiff(2, 'a gradient with respect to a Clip bound is not supported; make max a constant');
  // Pass the gradient where min <= x <= max (PyTorch's clamp convention at the boundary).
  let mask: string | null = null;
  if (c.has(1)) mask = b.op1('GreaterOrEqual', [c.I(0), c.I(1)]);
  if (c.has(2)) {
    const m2 = b.op1('LessOrEqual', [c.I(0), c.I(2)]);
    mask = mask ? b.op1('And', [mask, m2]) : m2;
  }
  if (!mask) return [c.GO(0)!];
  return [b.op1('Where', [mask, c.GO(0)!, c.scalar(0)])];
});

/**
 * Equal(a, y) for a forward input and the forward output it may have produced (the winner masks of Max, Min and
 * ReduceMax). onnxruntime's CPU EP has no float16 Equal: it inserts Cast(float16→float32) in front of it, and then
 * removes that cast together with the Cast(float32→float16) that made `a` in a float16 island, so Equal reads `a`
 * before its float16 rounding and finds it unequal to the (rounded) output almost everywhere: the winner's
 * gradient was silently 0. Explicit casts to float32 are kept (they are not the EP's own), and compare the values
 * the forward actually compared.
 */
function equalExact(c: GradCtx, a: string, y: string): string {
  const b = c.b;
  if (c.dtype(a) !== 'float16') return b.op1('Equal', [a, y]);
  return b.op1('Equal', [b.cast(a, 'float32'), b.cast(y, 'float32')]);
}

function maxMin(c: GradCtx): (string | null)[] {
  const b = c.b;
  const n = c.node.inputs.length;
  const out: (string | null)[] = new Array(n).fill(null);
  if (n === 1) return [c.GO(0)!];
  // The winner of each element gets the whole gradient; ties go to the first input that attains the
  // extreme, so exactly one input receives it (a valid subgradient, never double-counted).
  let taken: string | null = null;
  let last = -1;
  for (let i = n - 1; i >= 0; i--) if (c.needs(i)) { last = i; break; }
  for (let i = 0; i <= last; i++) {
    const eq = equalExact(c, c.I(i), c.O(0));
    const mine: string = taken ? b.op1('And', [eq, b.op1('Not', [taken])]) : eq;
    if (c.needs(i)) out[i] = c.reduceToShape(b.op1('Where', [mine, c.GO(0)!, c.scalar(0)]), c.shape(c.I(i)));
    if (i < last) taken = taken ? b.op1('Or', [taken, mine]) : mine;
  }
  return out;
}
registerGradient('Max', maxMin);
registerGradient('Min', maxMin);

registerGradient('Where', (c) => {
  const b = c.b;
  const g = c.GO(0)!;
  return [
    null, // the condition is boolean: never differentiable
    c.needs(1) ? c.reduceToShape(b.op1('Where', [c.I(0), g, c.scalar(0)]), c.shape(c.I(1))) : null,
    c.needs(2) ? c.reduceToShape(b.op1('Where', [c.I(0), c.scalar(0), g]), c.shape(c.I(2))) : null,
  ];
});

registerGradient('Cast', (c) => {
  // Only float<->float casts are ever active (activity analysis drops integer values).
  const from = c.dtype(c.I(0));
  return [c.dtype(c.GO(0)!) === from ? c.GO(0)! : c.b.cast(c.GO(0)!, from)];
});

// ------------------------------------------------------------------------------------------------
// Linear algebra.

registerGradient('MatMul', (c) => {
  const b = c.b;
  let a = c.I(0), w = c.I(1);
  const as0 = c.shape(a), ws0 = c.shape(w);
  const g0 = c.GO(0)!;
  // Promote rank-1 operands like ONNX/numpy matmul, then undo at the end.
  if (as0.length === 1) a = b.reshape(a, [1, as0[0]]);
  if (ws0.length === 1) w = b.reshape(w, [ws0[0], 1]);
  const as = b.shape(a), ws = b.shape(w);
  // dY in promoted form (a rank-1 operand's unit dim put back).
  const batchBroadcast = [...broadcast(as.slice(0, -2), ws.slice(0, -2)), as[as.length - 2], ws[ws.length - 1]];
  const g = reshapeTo(b, g0, batchBroadcast);
  const K = as[as.length - 1], N = ws[ws.length - 1];
  let ga: string | null = null, gw: string | null = null;
  if (ws.length === 2) {
    // The common linear layer: [..., M, K] x [K, N]. Flatten the batch into rows and use 2-D Gemm with
    // trans flags: no Transpose node, no batched MatMul + ReduceSum for the weight gradient.
    const rows = numel(as.slice(0, -1));
    const g2 = reshapeTo(b, g, [rows, N]);
    if (c.needs(0)) ga = reshapeTo(b, b.op1('Gemm', [g2, w], { transB: A.i(1) }), as);
    if (c.needs(1)) {
      const a2 = reshapeTo(b, a, [rows, K]);
      gw = b.op1('Gemm', [a2, g2], { transA: A.i(1) });
    }
  } else {
    // Batched (attention): dA = dY · Bᵀ, dB = Aᵀ · dY; broadcast batch dims are summed back.
    // onnxruntime fuses Transpose+MatMul into FusedMatMul at the default optimization level.
    if (c.needs(0)) {
      const wt = b.transpose(w, perm2(ws.length));
      ga = c.reduceToShape(b.matmul(g, wt), as);
    }
    if (c.needs(1)) {
      if (as.length === 2) {
        // [M,K] x [..., K, N]: dB = Aᵀ · dY broadcast over the batch; a plain MatMul does it.
        gw = b.matmul(b.transpose(a, [1, 0]), g);
      } else {
        const at = b.transpose(a, perm2(as.length));
        gw = b.matmul(at, g);
      }
      gw = c.reduceToShape(gw, ws);
    }
  }
  return [
    c.needs(0) && ga ? reshapeTo(b, ga, as0) : null,
    c.needs(1) && gw ? reshapeTo(b, gw, ws0) : null,
  ];
});

function broadcast(a: number[], c: number[]): number[] {
  const r = Math.max(a.length, c.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i] ?? 1, y = c[c.length - r + i] ?? 1;
    out.push(x === 1 ? y : x);
  }
  return out;
}

registerGradient('Gemm', (c) => {
  const b = c.b;
  const ta = attrInt(c.attrs, 'transA', 0), tb = attrInt(c.attrs, 'transB', 0);
  const alpha = attrFloat(c.attrs, 'alpha', 1), beta = attrFloat(c.attrs, 'beta', 1);
  const g = c.GO(0)!;
  const al: Record<string, Attr> = alpha !== 1 ? { alpha: A.f(alpha) } : {};
  // Y = alpha·A'B' + beta·C with A' = transA ? Aᵀ : A. Every case is one Gemm with trans flags.
  let ga: string | null = null, gb: string | null = null, gc: string | null = null;
  if (c.needs(0)) {
    ga = ta === 0
      ? b.op1('Gemm', [g, c.I(1)], { transB: A.i(tb ? 0 : 1), ...al })
      : b.op1('Gemm', [c.I(1), g], { transA: A.i(tb), transB: A.i(1), ...al });
  }
  if (c.needs(1)) {
    gb = tb === 0
      ? b.op1('Gemm', [c.I(0), g], { transA: A.i(ta ? 0 : 1), ...al })
      : b.op1('Gemm', [g, c.I(0)], { transA: A.i(1), transB: A.i(ta), ...al });
  }
  if (c.has(2) && c.needs(2)) {
    const gs = beta !== 1 ? b.mul(g, c.scalar(beta)) : g;
    gc = c.reduceToShape(gs, c.shape(c.I(2)));
  }
  return [ga, gb, gc];
});

registerGradient('Conv', (c) => {
  const b = c.b;
  const x = c.I(0), w = c.I(1);
  const xs = c.shape(x), wsh = c.shape(w), ys = c.shape(c.O(0));
  const sp = xs.length - 2;
  const autoPad = attrString(c.attrs, 'auto_pad', 'NOTSET');
  if (autoPad !== 'NOTSET' && autoPad !== 'VALID') {
    throw new EngineError('unsupported_op', `no gradient rule for Conv with auto_pad=${autoPad} (node ${c.node.name}); use explicit pads`, { op: 'Conv', node: c.node.name });
  }
  const group = attrInt(c.attrs, 'group', 1);
  const k = attrInts(c.attrs, 'kernel_shape') ?? wsh.slice(2);
  const strides = attrInts(c.attrs, 'strides') ?? k.map(() => 1);
  const dil = attrInts(c.attrs, 'dilations') ?? k.map(() => 1);
  const pads = attrInts(c.attrs, 'pads') ?? new Array(2 * sp).fill(0);
  const g = c.GO(0)!;
  const out: (string | null)[] = [null, null, null];
  if (c.needs(0)) {
    // dX = ConvTranspose(dY, W) with the same strides/pads/dilations/group; output_padding recovers the
    // rows that the forward's floor division dropped, so the result has exactly X's shape.
    const outPad = k.map((kk, i) => xs[2 + i] - (strides[i] * (ys[2 + i] - 1) + (kk - 1) * dil[i] + 1 - pads[i] - pads[i + sp]));
    const attrs: Record<string, Attr> = {
      kernel_shape: A.ints(k), strides: A.ints(strides), dilations: A.ints(dil), pads: A.ints(pads), group: A.i(group),
    };
    if (outPad.some((p) => p !== 0)) attrs.output_padding = A.ints(outPad);
    out[0] = b.op1('ConvTranspose', [g, w], attrs);
  }
  if (c.needs(1)) {
    // dW as a Conv on transposed operands: X becomes the input with batch=C/group and channels=group·N,
    // dY becomes the weight [M, N, out spatial]; the forward's stride acts as dilation and its dilation
    // as stride. Grouped: channel blocks pair up through Conv's own `group`.
    const [N, C] = xs;
    const Cg = C / group;
    const sps = Array.from({ length: sp }, (_, i) => 2 + i);
    let xt: string;
    if (group === 1) xt = b.transpose(x, [1, 0, ...sps]);
    else {
      const x5 = b.reshape(x, [N, group, Cg, ...xs.slice(2)]);
      const t = b.transpose(x5, [2, 1, 0, ...sps.map((s) => s + 1)]);
      xt = b.reshape(t, [Cg, group * N, ...xs.slice(2)]);
    }
    const gt = b.transpose(g, [1, 0, ...sps]);
    const convW = b.op1('Conv', [xt, gt], {
      kernel_shape: A.ints(ys.slice(2)), strides: A.ints(dil), dilations: A.ints(strides), pads: A.ints(pads), group: A.i(group),
    });
    // The result's spatial extent can exceed the kernel (trailing input rows the forward never reached).
    const cs = b.shape(convW);
    let cw = convW;
    if (k.some((kk, i) => cs[2 + i] !== kk)) cw = b.slice(convW, k.map(() => 0), k, sps);
    out[1] = b.transpose(cw, [1, 0, ...sps]);
  }
  if (c.has(2) && c.needs(2)) out[2] = rsum(b, g, [0, ...Array.from({ length: sp }, (_, i) => 2 + i)], false);
  return out;
});

// ------------------------------------------------------------------------------------------------
// Normalization and softmax.

registerGradient('Softmax', (c) => {
  const b = c.b;
  const axis = attrInt(c.attrs, 'axis', -1);
  const y = c.O(0), g = c.GO(0)!;
  const gy = b.mul(g, y);
  const s = rsum(b, gy, [normAxis(axis, c.shape(y).length)], true);
  // dX = Y ⊙ (dY − Σ dY⊙Y) = dY⊙Y − Y ⊙ Σ(dY⊙Y): reuses dY⊙Y.
  return [b.sub(gy, b.mul(y, s))];
});

registerGradient('LogSoftmax', (c) => {
  const b = c.b;
  const axis = normAxis(attrInt(c.attrs, 'axis', -1), c.shape(c.O(0)).length);
  const g = c.GO(0)!;
  const s = rsum(b, g, [axis], true);
  return [b.sub(g, b.mul(b.op1('Exp', [c.O(0)]), s))];
});

registerGradient('LayerNormalization', (c) => {
  const b = c.b;
  const node = c.node;
  const x = c.I(0), scale = c.I(1);
  const xs = c.shape(x);
  const r = xs.length;
  const axis = normAxis(attrInt(c.attrs, 'axis', -1), r);
  const normAxes = Array.from({ length: r - axis }, (_, i) => axis + i);
  const dt = c.dtype(x);
  let mean: string, inv: string;
  if (dt === 'float64') {
    // onnxruntime only implements float64 LayerNormalization with float32 statistics (stash type float):
    // reusing them would cap the gradient at float32 precision, so recompute them in float64.
    const eps = attrFloat(c.attrs, 'epsilon', 1e-5);
    mean = b.op1('ReduceMean', [x], { axes: A.ints(normAxes), keepdims: A.i(1) });
    const xc = b.sub(x, mean);
    const v = b.op1('ReduceMean', [b.mul(xc, xc)], { axes: A.ints(normAxes), keepdims: A.i(1) });
    inv = b.op1('Reciprocal', [b.op1('Sqrt', [b.add(v, c.scalar(eps))])]);
  } else {
    // Reuse the forward's Mean/InvStdDev: ORT's kernel writes them for free when the optional outputs exist,
    // so add them to the forward node rather than recomputing two reductions.
    while (node.outputs.length < 3) node.outputs.push('');
    for (const k of [1, 2]) {
      if (node.outputs[k] === '') {
        const name = b.uniq(`${node.name}_${k === 1 ? 'mean' : 'invstd'}`);
        node.outputs[k] = name;
        // The statistics have the stash type: float32 unless stash_type says otherwise.
        const stash: DType = attrInt(c.attrs, 'stash_type', 1) === 1 ? 'float32' : dt;
        b.values.set(name, { name, dtype: stash, shape: xs.map((d, i) => (i < axis ? d : 1)) });
        b.producer.set(name, node);
      }
    }
    mean = node.outputs[1];
    inv = node.outputs[2];
    if (c.dtype(mean) !== dt) mean = b.cast(mean, dt);
    if (c.dtype(inv) !== dt) inv = b.cast(inv, dt);
  }
  // The statistics' own gradients (a graph that reads Mean or InvStdDev), in the input's dtype.
  const asDt = (v: string | null) => (v !== null && c.dtype(v) !== dt ? b.cast(v, dt) : v);
  const g = c.GO(0), gMean = asDt(c.GO(1)), gInv = asDt(c.GO(2));
  const xc = b.sub(x, mean);
  const xhat = b.mul(xc, inv);
  const out: (string | null)[] = [null, null, null];
  if (g !== null && c.needs(1)) out[1] = c.reduceToShape(b.mul(g, xhat), c.shape(scale));
  if (g !== null && c.has(2) && c.needs(2)) out[2] = c.reduceToShape(g, c.shape(c.I(2)));
  if (c.needs(0)) {
    const n = normAxes.reduce((p, a) => p * xs[a]!, 1);
    const parts: string[] = [];
    if (g !== null) {
      // dX = invstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), ĝ = dY ⊙ scale, means over the normalized axes.
      const gh = b.mul(g, scale);
      const m1 = b.op1('ReduceMean', [gh], { axes: A.ints(normAxes), keepdims: A.i(1) });
      const m2 = b.op1('ReduceMean', [b.mul(gh, xhat)], { axes: A.ints(normAxes), keepdims: A.i(1) });
      parts.push(b.mul(b.sub(b.sub(gh, m1), b.mul(xhat, m2)), inv));
    }
    // Mean = Σx / n over the normalized axes: each x gets dMean / n.
    if (gMean !== null) parts.push(b.op1('Expand', [b.mul(gMean, c.scalar(1 / n, dt)), b.ints(xs)]));
    // InvStdDev = (var + ε)^(−1/2) with var = Σ(x − μ)² / n: d/dx = −InvStdDev³ · (x − μ) / n (μ's own
    // term sums to zero over the normalized axes).
    if (gInv !== null) parts.push(b.mul(b.mul(gInv, b.mul(inv, b.mul(inv, inv))), b.mul(xc, c.scalar(-1 / n, dt))));
    out[0] = parts.length ? parts.reduce((acc, p) => b.add(acc, p)) : null;
  }
  return out;
}, { outputs: [0, 1, 2] });

// ------------------------------------------------------------------------------------------------
// Reductions.

function reduceInfo(c: GradCtx): { axes: number[]; keepShape: number[]; identity: boolean } {
  const xs = c.shape(c.I(0));
  let axes: number[] | undefined;
  if (c.op === 'ReduceSum') axes = c.has(1) ? constIntsOrThrow(c, 1, 'ReduceSum axes') : undefined;
  else axes = attrInts(c.attrs, 'axes');
  const noop = attrInt(c.attrs, 'noop_with_empty_axes', 0) === 1;
  if (!axes || axes.length === 0) {
    if (noop) return { axes: [], keepShape: xs, identity: true };
    axes = xs.map((_, i) => i);
  }
  const set = new Set(axes.map((a) => normAxis(a, xs.length)));
  return { axes: [...set].sort((p, q) => p - q), keepShape: xs.map((d, i) => (set.has(i) ? 1 : d)), identity: false };
}
function constIntsOrThrow(c: GradCtx, i: number, what: string): number[] {
  const t = c.const(i);
  if (!t) throw new EngineError('invalid_graph', `${what} of node ${c.node.name} must be known at build time`, { node: c.node.name });
  return constInts(t, what);
}

registerGradient('ReduceSum', (c) => {
  const b = c.b;
  const { keepShape, identity } = reduceInfo(c);
  if (identity) return [c.GO(0)!, null];
  const gk = reshapeTo(b, c.GO(0)!, keepShape);
  return [b.op1('Expand', [gk, b.ints(c.shape(c.I(0)))]), null];
});

registerGradient('ReduceMean', (c) => {
  const b = c.b;
  const xs = c.shape(c.I(0));
  const { keepShape, identity } = reduceInfo(c);
  if (identity) return [c.GO(0)!];
  const n = numel(xs) / numel(keepShape);
  // Scale before expanding: the reduced tensor is the small one.
  const gk = b.mul(reshapeTo(b, c.GO(0)!, keepShape), c.scalar(1 / n));
  return [b.op1('Expand', [gk, b.ints(xs)])];
});

registerGradient('ReduceL2', (c) => {
  const b = c.b;
  const { keepShape, identity } = reduceInfo(c);
  if (identity) return [b.mul(c.GO(0)!, b.op1('Sign', [c.I(0)]))];
  // d‖x‖/dx = x/‖x‖: broadcasting the small dY/‖x‖ avoids an Expand. At ‖x‖ = 0 (a zero row) it is
  // undefined; like PyTorch's norm backward, give 0 there rather than 0·∞ = NaN, which would spread
  // through every later accumulation. The mask costs two ops on the reduced (small) tensor.
  const gk = reshapeTo(b, c.GO(0)!, keepShape);
  const yk = reshapeTo(b, c.O(0), keepShape);
  const ratio = b.op1('Where', [b.op1('Equal', [yk, c.scalar(0)]), c.scalar(0), b.div(gk, yk)]);
  return [b.mul(c.I(0), ratio)];
});

registerGradient('ReduceMax', (c) => {
  const b = c.b;
  const { axes, keepShape, identity } = reduceInfo(c);
  if (identity) return [c.GO(0)!];
  const x = c.I(0);
  const gk = reshapeTo(b, c.GO(0)!, keepShape);
  const yk = reshapeTo(b, c.O(0), keepShape);
  // Ties share the gradient equally (what PyTorch's amax does), so the sum over the maxima is preserved.
  const mask = b.cast(equalExact(c, x, yk), c.dtype(x));
  const cnt = rsum(b, mask, axes, true);
  return [b.mul(mask, b.div(gk, cnt))];
});

// ------------------------------------------------------------------------------------------------
// Shape ops.

const reshapeBack: GradRule = (c) => {
  const out: (string | null)[] = c.node.inputs.map(() => null);
  out[0] = reshapeTo(c.b, c.GO(0)!, c.shape(c.I(0)));
  return out;
};
registerGradient('Reshape', reshapeBack);
registerGradient('Flatten', reshapeBack);
registerGradient('Squeeze', reshapeBack);
registerGradient('Unsqueeze', reshapeBack);

registerGradient('Transpose', (c) => {
  const r = c.shape(c.I(0)).length;
  const perm = attrInts(c.attrs, 'perm') ?? Array.from({ length: r }, (_, i) => r - 1 - i);
  const inv = new Array(r);
  perm.forEach((p, i) => (inv[p] = i));
  return [c.b.transpose(c.GO(0)!, inv)];
});

registerGradient('Expand', (c) => [c.reduceToShape(c.GO(0)!, c.shape(c.I(0))), null]);

registerGradient('Tile', (c) => {
  const b = c.b;
  const xs = c.shape(c.I(0));
  const reps = constIntsOrThrow(c, 1, 'Tile repeats');
  // Tiled output index along an axis is rep·d + j, so view dY as [r0, d0, r1, d1, ...] and sum the r's.
  const split: number[] = [];
  xs.forEach((d, i) => split.push(reps[i], d));
  const axes = xs.map((_, i) => 2 * i).filter((a) => reps[a / 2] !== 1);
  const g = b.reshape(c.GO(0)!, split);
  return [reshapeTo(b, rsum(b, g, axes, false), xs), null];
});

registerGradient('Concat', (c) => {
  const b = c.b;
  const r = c.shape(c.O(0)).length;
  const axis = normAxis(attrInt(c.attrs, 'axis'), r);
  const sizes = c.node.inputs.map((x) => c.shape(x)[axis]);
  const parts = b.op('Split', [c.GO(0)!, b.ints(sizes)], { axis: A.i(axis) }, { outputs: sizes.length });
  return parts.map((p, i) => (c.needs(i) ? p : null));
});

registerGradient('Split', (c) => {
  const b = c.b;
  const axis = normAxis(attrInt(c.attrs, 'axis', 0), c.shape(c.I(0)).length);
  const parts = c.node.outputs.map((o, i) => c.GO(i) ?? c.zeros(c.shape(o)));
  return [parts.length === 1 ? parts[0] : b.concat(parts, axis), null];
}, { outputs: 'all' });

registerGradient('Slice', (c) => {
  const b = c.b;
  const xs = c.shape(c.I(0));
  const starts = constIntsOrThrow(c, 1, 'Slice starts');
  const ends = constIntsOrThrow(c, 2, 'Slice ends');
  const axes = c.has(3) ? constIntsOrThrow(c, 3, 'Slice axes') : undefined;
  const steps = c.has(4) ? constIntsOrThrow(c, 4, 'Slice steps') : undefined;
  const ps = sliceParams(xs, starts, ends, axes, steps);
  const out: (string | null)[] = c.node.inputs.map(() => null);
  if (ps.some((p) => p.size === 0)) {
    out[0] = c.zeros(xs);
    return out;
  }
  let g = c.GO(0)!;
  // Undo the slice axis by axis: reverse negative steps, spread strided elements with zero-padding, then
  // pad to place the block at its offset. No scatter and no index tensors.
  const padB = xs.map(() => 0), padE = xs.map(() => 0);
  ps.forEach((p, a) => {
    if (p.step === 1 && p.start === 0 && p.size === xs[a]) return;
    let lo = p.start, step = p.step;
    if (step < 0) {
      g = b.op1('Slice', [g, b.ints([-1]), b.constant(tensor('int64', [1], [-I64_MAX]), 'ints'), b.ints([a]), b.ints([-1])]);
      lo = p.start + (p.size - 1) * step;
      step = -step;
    }
    if (step > 1) {
      const s = b.shape(g);
      const un = b.reshape(g, [...s.slice(0, a + 1), 1, ...s.slice(a + 1)]);
      const pp = new Array(2 * (s.length + 1)).fill(0);
      pp[s.length + 1 + a + 1] = step - 1; // pad the end of the new axis
      const padded = b.op1('Pad', [un, b.ints(pp)]);
      const flat = b.reshape(padded, [...s.slice(0, a), s[a] * step, ...s.slice(a + 1)]);
      const keep = (p.size - 1) * step + 1;
      g = keep === s[a] * step ? flat : b.slice(flat, [0], [keep], [a]);
    }
    const span = (p.size - 1) * step + 1;
    padB[a] = lo;
    padE[a] = xs[a] - lo - span;
  });
  if (padB.some((v) => v !== 0) || padE.some((v) => v !== 0)) g = b.op1('Pad', [g, b.ints([...padB, ...padE])]);
  out[0] = g;
  return out;
});

registerGradient('Pad', (c) => {
  const b = c.b;
  const mode = attrString(c.attrs, 'mode', 'constant');
  if (mode !== 'constant') {
    throw new EngineError('unsupported_op', `no gradient rule for Pad mode=${mode} (node ${c.node.name}); only constant mode is supported`, { op: 'Pad', node: c.node.name, mode });
  }
  const xs = c.shape(c.I(0));
  const r = xs.length;
  const pads = constIntsOrThrow(c, 1, 'Pad pads');
  const axes = c.has(3) ? constIntsOrThrow(c, 3, 'Pad axes').map((a) => normAxis(a, r)) : xs.map((_, i) => i);
  const pb = new Array(r).fill(0), pe = new Array(r).fill(0);
  axes.forEach((a, i) => {
    pb[a] = pads[i];
    pe[a] = pads[i + axes.length];
  });
  const g = c.GO(0)!;
  // Positive pads: slice the interior back out. Negative pads (crops): re-pad with zeros.
  const st = pb.map((p) => Math.max(p, 0));
  const en = xs.map((d, i) => st[i] + d + Math.min(pb[i], 0) + Math.min(pe[i], 0));
  const ax = xs.map((_, i) => i);
  const gs = b.shape(g);
  let gx = st.every((s, i) => s === 0 && en[i] === gs[i]) ? g : b.slice(g, st, en, ax);
  if (pb.some((p) => p < 0) || pe.some((p) => p < 0)) {
    gx = b.op1('Pad', [gx, b.ints([...pb.map((p) => Math.max(-p, 0)), ...pe.map((p) => Math.max(-p, 0))])]);
  }
  const out: (string | null)[] = c.node.inputs.map(() => null);
  if (c.needs(0)) out[0] = gx;
  if (c.has(2) && c.needs(2)) {
    // The fill value lands on every padded element: its gradient is Σ dY − Σ dX.
    const tot = rsum(b, g, ax, false);
    const inner = rsum(b, gx, ax, false);
    out[2] = reshapeTo(b, b.sub(tot, inner), c.shape(c.I(2)));
  }
  return out;
});

registerGradient('Gather', (c) => {
  const b = c.b;
  const xs = c.shape(c.I(0));
  const r = xs.length;
  const axis = normAxis(attrInt(c.attrs, 'axis', 0), r);
  const idxName = c.I(1);
  const is = c.shape(idxName);
  const g = c.GO(0)!;
  // Scatter-add dY into zeros with ScatterND(reduction='add'): O(output) work, whereas the one-hot MatMul
  // alternative costs O(|indices|·rows·width) (49408-row token embeddings make that prohibitive).
  let idx = idxName;
  const k = c.const(1);
  if (k) {
    const v = constInts(k, 'Gather indices').map((q) => (q < 0 ? q + xs[axis] : q));
    idx = b.constant(tensor('int64', [...is, 1], v), 'gather_idx');
  } else {
    if (c.dtype(idx) !== 'int64') idx = b.cast(idx, 'int64');
    // Gather accepts negative indices; normalize them so ScatterND gets in-range rows.
    const neg = b.op1('Less', [idx, b.constant(tensor('int64', [], [0]), 'zero_i64')]);
    idx = b.op1('Where', [neg, b.add(idx, b.constant(tensor('int64', [], [xs[axis]]), 'dim_i64')), idx]);
    idx = b.reshape(idx, [...is, 1]);
  }
  const ir = is.length;
  // dY has shape X[:axis] + idx + X[axis+1:]; bring the index dims to the front for ScatterND.
  let upd = g;
  const gr = ir + r - 1;
  if (axis > 0) {
    const perm = [...Array.from({ length: ir }, (_, i) => axis + i), ...Array.from({ length: axis }, (_, i) => i), ...Array.from({ length: gr - axis - ir }, (_, i) => axis + ir + i)];
    upd = b.transpose(g, perm);
  }
  const dataShape = [xs[axis], ...xs.slice(0, axis), ...xs.slice(axis + 1)];
  // onnxruntime's CPU EP has no float16 ScatterND with reduction='add': scatter in float32 and cast back
  // (the sum of repeated rows is then also rounded once, not once per row).
  const dt = c.dtype(c.I(0));
  const sdt: DType = dt === 'float16' ? 'float32' : dt;
  if (sdt !== dt) upd = b.cast(upd, sdt);
  let gx = b.op1('ScatterND', [c.zeros(dataShape, sdt), idx, upd], { reduction: A.s('add') });
  if (sdt !== dt) gx = b.cast(gx, dt);
  if (axis > 0) {
    const perm = [...Array.from({ length: axis }, (_, i) => i + 1), 0, ...Array.from({ length: r - axis - 1 }, (_, i) => axis + 1 + i)];
    gx = b.transpose(gx, perm);
  }
  return [gx, null];
});
