// Static shape inference, one rule per op (opset 17 semantics).
// Rules throw plain Errors; the builder wraps them with the node's name and op.

import { type Attr, type DType, DTYPE_OF_ONNX_CODE, type Node, type TensorData, type ValueInfo } from './ir.ts';

export interface ShapeCtx {
  node: Node;
  n: number;
  has(i: number): boolean;
  info(i: number): ValueInfo;
  /** The input's value when known at build time (initializer, Constant, folded). */
  const(i: number): TensorData | undefined;
  attr: Record<string, Attr>;
}

export type OutInfo = { dtype: DType; shape: number[] };
export type ShapeRule = (c: ShapeCtx) => OutInfo[];

// ---- attribute helpers ----
export function attrInt(attrs: Record<string, Attr>, name: string, def?: number): number {
  const a = attrs[name];
  if (a === undefined) {
    if (def === undefined) throw new Error(`missing attribute ${name}`);
    return def;
  }
  if (a.type !== 'int') throw new Error(`attribute ${name} must be an int`);
  return a.v;
}
export function attrFloat(attrs: Record<string, Attr>, name: string, def?: number): number {
  const a = attrs[name];
  if (a === undefined) {
    if (def === undefined) throw new Error(`missing attribute ${name}`);
    return def;
  }
  if (a.type !== 'float' && a.type !== 'int') throw new Error(`attribute ${name} must be a float`);
  return a.v;
}
export function attrInts(attrs: Record<string, Attr>, name: string, def?: number[]): number[] | undefined {
  const a = attrs[name];
  if (a === undefined) return def;
  if (a.type !== 'ints') throw new Error(`attribute ${name} must be ints`);
  return a.v;
}
export function attrString(attrs: Record<string, Attr>, name: string, def?: string): string | undefined {
  const a = attrs[name];
  if (a === undefined) return def;
  if (a.type !== 'string') throw new Error(`attribute ${name} must be a string`);
  return a.v;
}

/** Integer values of a constant tensor (int64/int32), as numbers. */
export function constInts(t: TensorData | undefined, what: string): number[] {
  if (!t) throw new Error(`${what} must be a constant known at build time`);
  return Array.from(t.data as ArrayLike<number | bigint>, (v) => Number(v));
}

export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`axis ${axis} out of range for rank ${rank}`);
  return a;
}

export function broadcastShapes(...shapes: number[][]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let d = 1;
    for (const s of shapes) {
      const k = s.length - rank + i;
      const v = k < 0 ? 1 : s[k];
      if (v === 1) continue;
      if (d !== 1 && d !== v) throw new Error(`shapes [${shapes.map((x) => `[${x}]`).join(', ')}] do not broadcast`);
      d = v;
    }
    out.push(d);
  }
  return out;
}

const same: ShapeRule = (c) => [{ ...c.info(0), shape: [...c.info(0).shape] }];
const binary: ShapeRule = (c) => {
  const a = c.info(0), b = c.info(1);
  if (a.dtype !== b.dtype) throw new Error(`dtype mismatch ${a.dtype} vs ${b.dtype}`);
  return [{ dtype: a.dtype, shape: broadcastShapes(a.shape, b.shape) }];
};
const compare: ShapeRule = (c) => [{ dtype: 'bool', shape: broadcastShapes(c.info(0).shape, c.info(1).shape) }];
const variadic: ShapeRule = (c) => {
  const infos = c.node.inputs.map((_, i) => c.info(i));
  return [{ dtype: infos[0].dtype, shape: broadcastShapes(...infos.map((x) => x.shape)) }];
};

function reduceShape(shape: number[], axes: number[] | undefined, keepdims: boolean, noopWithEmpty = false): number[] {
  const r = shape.length;
  if (!axes || axes.length === 0) {
    if (noopWithEmpty) return [...shape];
    return keepdims ? shape.map(() => 1) : [];
  }
  const set = new Set(axes.map((a) => normAxis(a, r)));
  const out: number[] = [];
  shape.forEach((d, i) => {
    if (set.has(i)) {
      if (keepdims) out.push(1);
    } else out.push(d);
  });
  return out;
}
/** Axes of a reduce node: opset-13 ReduceSum takes them as input #1, the others (opset 17) as an attribute. */
export function reduceAxes(c: ShapeCtx): number[] | undefined {
  // The other opset's form would be read here and ignored by ORT or the gradient rule: refused, named.
  if (c.node.op === 'ReduceSum') {
    if (c.attr.axes !== undefined) throw new Error('ReduceSum takes its axes as input #1 at opset 13–17, not as an "axes" attribute');
    return c.has(1) ? constInts(c.const(1), 'ReduceSum axes') : undefined;
  }
  if (c.has(1)) throw new Error(`${c.node.op} takes its axes as an "axes" attribute at opset 13–17, not as input #1`);
  if (c.attr.noop_with_empty_axes !== undefined) throw new Error(`${c.node.op} has no "noop_with_empty_axes" attribute at opset 13–17`);
  return attrInts(c.attr, 'axes');
}
const reduce: ShapeRule = (c) => {
  const x = c.info(0);
  const keep = attrInt(c.attr, 'keepdims', 1) === 1;
  const noop = attrInt(c.attr, 'noop_with_empty_axes', 0) === 1;
  return [{ dtype: x.dtype, shape: reduceShape(x.shape, reduceAxes(c), keep, noop) }];
};

function matmulShape(a: number[], b: number[]): number[] {
  if (a.length === 0 || b.length === 0) throw new Error('MatMul of a scalar');
  const a2 = a.length === 1 ? [1, a[0]] : a;
  const b2 = b.length === 1 ? [b[0], 1] : b;
  const k1 = a2[a2.length - 1], k2 = b2[b2.length - 2];
  if (k1 !== k2) throw new Error(`MatMul inner dims differ: [${a}] x [${b}]`);
  const batch = broadcastShapes(a2.slice(0, -2), b2.slice(0, -2));
  const out = [...batch, a2[a2.length - 2], b2[b2.length - 1]];
  if (a.length === 1) out.splice(out.length - 2, 1);
  if (b.length === 1) out.splice(out.length - 1, 1);
  return out;
}

function convOutDim(inp: number, k: number, stride: number, dil: number, padBegin: number, padEnd: number): number {
  return Math.floor((inp + padBegin + padEnd - dil * (k - 1) - 1) / stride) + 1;
}

function reshapeTarget(inShape: number[], target: number[], allowzero: boolean): number[] {
  const out = target.map((d, i) => (d === 0 && !allowzero ? inShape[i] : d));
  const total = inShape.reduce((p, d) => p * d, 1);
  const neg = out.filter((d) => d === -1).length;
  if (neg > 1) throw new Error('Reshape target has more than one -1');
  if (neg === 1) {
    const known = out.reduce((p, d) => (d === -1 ? p : p * d), 1);
    if (known === 0 || total % known !== 0) throw new Error(`cannot reshape [${inShape}] to [${target}]`);
    out[out.indexOf(-1)] = total / known;
  }
  if (out.reduce((p, d) => p * d, 1) !== total) throw new Error(`cannot reshape [${inShape}] to [${target}]`);
  return out;
}

/**
 * Whether a Slice end means "to the end" in onnxruntime's kernel: INT32_MAX or INT64_MAX (numpy's None),
 * whatever the ends' dtype. INT64_MAX arrives as the number 2^63 (ints are read as JS numbers).
 */
export function isSliceEndNone(e: number): boolean {
  return e === 2147483647 || e >= 2 ** 63;
}

/** Normalized Slice parameters per axis (clamped like ONNX; INT_MAX ends read as onnxruntime reads them). */
export function sliceParams(shape: number[], starts: number[], ends: number[], axes?: number[], steps?: number[]) {
  const r = shape.length;
  const ax = axes ?? starts.map((_, i) => i);
  const st = steps ?? starts.map(() => 1);
  const res = shape.map((d) => ({ start: 0, end: d, step: 1, size: d }));
  ax.forEach((a0, i) => {
    const a = normAxis(a0, r);
    const d = shape[a];
    const step = st[i];
    if (step === 0) throw new Error('Slice step 0');
    let s = starts[i], e = ends[i];
    if (s < 0) s += d;
    // onnxruntime reads an end of INT32_MAX or INT64_MAX as "to the end" (numpy's None): -1 for a negative
    // step, not the last element (GraphBuilder rewrites such ends so that ONNX shape inference agrees).
    if (isSliceEndNone(e)) e = step < 0 ? -1 : d;
    else if (e < 0) e += d;
    if (step > 0) {
      s = Math.min(Math.max(s, 0), d);
      e = Math.min(Math.max(e, 0), d);
    } else {
      s = Math.min(Math.max(s, 0), d - 1);
      e = Math.min(Math.max(e, -1), d - 1);
    }
    const size = step > 0 ? Math.max(0, Math.ceil((e - s) / step)) : Math.max(0, Math.ceil((s - e) / -step));
    res[a] = { start: s, end: e, step, size };
  });
  return res;
}

export const SHAPE_RULES: Record<string, ShapeRule> = {
  // elementwise unary
  Identity: same, Neg: same, Sqrt: same, Exp: same, Log: same, Reciprocal: same, Tanh: same, Sigmoid: same,
  Erf: same, Relu: same, Abs: same, Sign: same, Floor: same, Ceil: same, Sin: same, Cos: same, Softplus: same,
  LeakyRelu: same, Elu: same, HardSigmoid: same, Round: same,
  IsNaN: (c) => [{ dtype: 'bool', shape: [...c.info(0).shape] }],
  Not: same,
  Clip: same,
  Dropout: (c) => [same(c)[0], { dtype: 'bool', shape: [...c.info(0).shape] }],
  Softmax: same, LogSoftmax: same,
  Cast: (c) => [{ dtype: dtypeOfCode(attrInt(c.attr, 'to')), shape: [...c.info(0).shape] }],
  // broadcasting binary
  Add: binary, Sub: binary, Mul: binary, Div: binary,
  Pow: (c) => [{ dtype: c.info(0).dtype, shape: broadcastShapes(c.info(0).shape, c.info(1).shape) }],
  Equal: compare, Less: compare, Greater: compare, LessOrEqual: compare, GreaterOrEqual: compare,
  And: compare, Or: compare,
  Max: variadic, Min: variadic, Sum: variadic, Mean: variadic,
  Where: (c) => {
    if (c.info(1).dtype !== c.info(2).dtype) throw new Error('Where branches differ in dtype');
    return [{ dtype: c.info(1).dtype, shape: broadcastShapes(c.info(0).shape, c.info(1).shape, c.info(2).shape) }];
  },
  MatMul: (c) => [{ dtype: c.info(0).dtype, shape: matmulShape(c.info(0).shape, c.info(1).shape) }],
  Gemm: (c) => {
    const a = c.info(0).shape, b = c.info(1).shape;
    if (a.length !== 2 || b.length !== 2) throw new Error('Gemm needs 2-D A and B');
    const ta = attrInt(c.attr, 'transA', 0), tb = attrInt(c.attr, 'transB', 0);
    const [m, k1] = ta ? [a[1], a[0]] : a;
    const [k2, n] = tb ? [b[1], b[0]] : b;
    if (k1 !== k2) throw new Error(`Gemm inner dims differ: ${k1} vs ${k2}`);
    if (c.has(2)) broadcastShapes(c.info(2).shape, [m, n]);
    return [{ dtype: c.info(0).dtype, shape: [m, n] }];
  },
  Conv: (c) => {
    const x = c.info(0).shape, w = c.info(1).shape;
    const sp = x.length - 2;
    if (sp < 1) throw new Error('Conv needs N,C,spatial...');
    const autoPad = attrString(c.attr, 'auto_pad', 'NOTSET');
    if (autoPad !== 'NOTSET' && autoPad !== 'VALID') throw new Error(`Conv auto_pad=${autoPad} is not supported; use explicit pads`);
    const group = attrInt(c.attr, 'group', 1);
    if (x[1] !== w[1] * group) throw new Error(`Conv channels: input ${x[1]} vs weight ${w[1]}×group ${group}`);
    if (w[0] % group !== 0) throw new Error(`Conv output channels ${w[0]} are not a multiple of group ${group}`);
    const k = attrInts(c.attr, 'kernel_shape') ?? w.slice(2);
    const strides = attrInts(c.attr, 'strides') ?? k.map(() => 1);
    const dil = attrInts(c.attr, 'dilations') ?? k.map(() => 1);
    const pads = attrInts(c.attr, 'pads') ?? new Array(2 * sp).fill(0);
    const out = [x[0], w[0]];
    for (let i = 0; i < sp; i++) out.push(convOutDim(x[2 + i], k[i], strides[i], dil[i], pads[i], pads[i + sp]));
    return [{ dtype: c.info(0).dtype, shape: out }];
  },
  ConvTranspose: (c) => {
    const x = c.info(0).shape, w = c.info(1).shape;
    const sp = x.length - 2;
    const group = attrInt(c.attr, 'group', 1);
    const k = attrInts(c.attr, 'kernel_shape') ?? w.slice(2);
    const strides = attrInts(c.attr, 'strides') ?? k.map(() => 1);
    const dil = attrInts(c.attr, 'dilations') ?? k.map(() => 1);
    const pads = attrInts(c.attr, 'pads') ?? new Array(2 * sp).fill(0);
    const outPad = attrInts(c.attr, 'output_padding') ?? k.map(() => 0);
    const outShape = attrInts(c.attr, 'output_shape');
    const out = [x[0], w[1] * group];
    for (let i = 0; i < sp; i++) {
      out.push(outShape ? outShape[outShape.length - sp + i] : strides[i] * (x[2 + i] - 1) + outPad[i] + ((k[i] - 1) * dil[i] + 1) - pads[i] - pads[i + sp]);
    }
    return [{ dtype: c.info(0).dtype, shape: out }];
  },
  LayerNormalization: (c) => {
    const x = c.info(0);
    const axis = normAxis(attrInt(c.attr, 'axis', -1), x.shape.length);
    const stat = x.shape.map((d, i) => (i < axis ? d : 1));
    // Mean/InvStdDev have type U (float32 with the default stash_type=1), whatever the input type:
    // onnxruntime implements float64 LayerNormalization only with float32 statistics.
    const statType: DType = attrInt(c.attr, 'stash_type', 1) === 1 ? 'float32' : x.dtype;
    return [{ dtype: x.dtype, shape: [...x.shape] }, { dtype: statType, shape: stat }, { dtype: statType, shape: stat }];
  },
  ReduceSum: reduce, ReduceMean: reduce, ReduceL2: reduce, ReduceMax: reduce, ReduceMin: reduce, ReduceSumSquare: reduce,
  ReduceProd: reduce, ReduceLogSumExp: reduce,
  Reshape: (c) => {
    const target = constInts(c.const(1), 'Reshape shape');
    return [{ dtype: c.info(0).dtype, shape: reshapeTarget(c.info(0).shape, target, attrInt(c.attr, 'allowzero', 0) === 1) }];
  },
  Flatten: (c) => {
    const s = c.info(0).shape;
    const axis = attrInt(c.attr, 'axis', 1);
    const a = axis < 0 ? axis + s.length : axis;
    const p = (xs: number[]) => xs.reduce((q, d) => q * d, 1);
    return [{ dtype: c.info(0).dtype, shape: [p(s.slice(0, a)), p(s.slice(a))] }];
  },
  Transpose: (c) => {
    const s = c.info(0).shape;
    const perm = attrInts(c.attr, 'perm') ?? s.map((_, i) => s.length - 1 - i);
    if (perm.length !== s.length) throw new Error(`Transpose perm [${perm}] does not match rank ${s.length}`);
    return [{ dtype: c.info(0).dtype, shape: perm.map((p) => s[p]) }];
  },
  Squeeze: (c) => {
    const s = c.info(0).shape;
    const axes = c.has(1) ? constInts(c.const(1), 'Squeeze axes').map((a) => normAxis(a, s.length)) : s.flatMap((d, i) => (d === 1 ? [i] : []));
    for (const a of axes) if (s[a] !== 1) throw new Error(`Squeeze axis ${a} has size ${s[a]}`);
    return [{ dtype: c.info(0).dtype, shape: s.filter((_, i) => !axes.includes(i)) }];
  },
  Unsqueeze: (c) => {
    const s = c.info(0).shape;
    const axesRaw = constInts(c.const(1), 'Unsqueeze axes');
    const r = s.length + axesRaw.length;
    const axes = axesRaw.map((a) => normAxis(a, r)).sort((a, b) => a - b);
    const out: number[] = [];
    let k = 0;
    for (let i = 0; i < r; i++) out.push(axes.includes(i) ? 1 : s[k++]);
    return [{ dtype: c.info(0).dtype, shape: out }];
  },
  Expand: (c) => [{ dtype: c.info(0).dtype, shape: broadcastShapes(c.info(0).shape, constInts(c.const(1), 'Expand shape')) }],
  Concat: (c) => {
    const infos = c.node.inputs.map((_, i) => c.info(i));
    const r = infos[0].shape.length;
    const axis = normAxis(attrInt(c.attr, 'axis'), r);
    const out = [...infos[0].shape];
    out[axis] = 0;
    for (const inf of infos) {
      if (inf.shape.length !== r) throw new Error('Concat inputs differ in rank');
      inf.shape.forEach((d, i) => {
        if (i !== axis && d !== infos[0].shape[i]) throw new Error(`Concat inputs differ on axis ${i}`);
      });
      out[axis] += inf.shape[axis];
    }
    return [{ dtype: infos[0].dtype, shape: out }];
  },
  Split: (c) => {
    const s = c.info(0).shape;
    const axis = normAxis(attrInt(c.attr, 'axis', 0), s.length);
    const nOut = c.node.outputs.length;
    let sizes: number[];
    if (c.has(1)) sizes = constInts(c.const(1), 'Split sizes');
    else {
      if (s[axis] % nOut !== 0) throw new Error(`Split of ${s[axis]} into ${nOut} equal parts`);
      sizes = new Array(nOut).fill(s[axis] / nOut);
    }
    if (sizes.length !== nOut || sizes.reduce((p, d) => p + d, 0) !== s[axis]) throw new Error(`Split sizes [${sizes}] do not add up to ${s[axis]}`);
    return sizes.map((d) => {
      const o = [...s];
      o[axis] = d;
      return { dtype: c.info(0).dtype, shape: o };
    });
  },
  Slice: (c) => {
    const s = c.info(0).shape;
    const starts = constInts(c.const(1), 'Slice starts');
    const ends = constInts(c.const(2), 'Slice ends');
    const axes = c.has(3) ? constInts(c.const(3), 'Slice axes') : undefined;
    const steps = c.has(4) ? constInts(c.const(4), 'Slice steps') : undefined;
    return [{ dtype: c.info(0).dtype, shape: sliceParams(s, starts, ends, axes, steps).map((p) => p.size) }];
  },
  Gather: (c) => {
    const s = c.info(0).shape;
    const axis = normAxis(attrInt(c.attr, 'axis', 0), s.length);
    const idx = c.info(1).shape;
    return [{ dtype: c.info(0).dtype, shape: [...s.slice(0, axis), ...idx, ...s.slice(axis + 1)] }];
  },
  GatherElements: (c) => [{ dtype: c.info(0).dtype, shape: [...c.info(1).shape] }],
  ScatterND: same,
  ScatterElements: same,
  Pad: (c) => {
    const s = c.info(0).shape;
    const pads = constInts(c.const(1), 'Pad pads');
    // Pad's axes input came with opset 18: at opset 17 onnxruntime refuses such a model at load.
    if (c.has(3)) throw new Error('Pad takes no "axes" input at opset 13–17 (it came with opset 18); give pads for every axis');
    const axes = s.map((_, i) => i);
    if (pads.length !== 2 * s.length) throw new Error(`Pad pads has ${pads.length} values; a rank-${s.length} input needs ${2 * s.length}`);
    const out = [...s];
    axes.forEach((a, i) => (out[a] = s[a] + pads[i] + pads[i + axes.length]));
    return [{ dtype: c.info(0).dtype, shape: out }];
  },
  Tile: (c) => {
    const reps = constInts(c.const(1), 'Tile repeats');
    return [{ dtype: c.info(0).dtype, shape: c.info(0).shape.map((d, i) => d * reps[i]) }];
  },
  Shape: (c) => {
    const r = c.info(0).shape.length;
    let start = attrInt(c.attr, 'start', 0), end = attrInt(c.attr, 'end', r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = Math.min(Math.max(start, 0), r);
    end = Math.min(Math.max(end, 0), r);
    return [{ dtype: 'int64', shape: [Math.max(0, end - start)] }];
  },
  Size: () => [{ dtype: 'int64', shape: [] }],
  Constant: (c) => {
    const a = c.attr.value;
    if (a?.type === 'tensor') return [{ dtype: a.v.dtype, shape: [...a.v.dims] }];
    if (c.attr.value_float) return [{ dtype: 'float32', shape: [] }];
    if (c.attr.value_int) return [{ dtype: 'int64', shape: [] }];
    if (c.attr.value_floats?.type === 'floats') return [{ dtype: 'float32', shape: [c.attr.value_floats.v.length] }];
    if (c.attr.value_ints?.type === 'ints') return [{ dtype: 'int64', shape: [c.attr.value_ints.v.length] }];
    throw new Error('Constant without a supported value attribute');
  },
  ConstantOfShape: (c) => {
    const shape = constInts(c.const(0), 'ConstantOfShape shape');
    const v = c.attr.value;
    return [{ dtype: v?.type === 'tensor' ? v.v.dtype : 'float32', shape }];
  },
  Range: (c) => {
    const [s] = constInts(c.const(0), 'Range start');
    const [l] = constInts(c.const(1), 'Range limit');
    const [d] = constInts(c.const(2), 'Range delta');
    return [{ dtype: c.info(0).dtype, shape: [Math.max(0, Math.ceil((l - s) / d))] }];
  },
  Trilu: same,
  ArgMax: (c) => {
    const s = c.info(0).shape;
    const axis = normAxis(attrInt(c.attr, 'axis', 0), s.length);
    const keep = attrInt(c.attr, 'keepdims', 1) === 1;
    return [{ dtype: 'int64', shape: reduceShape(s, [axis], keep) }];
  },
  OneHot: (c) => {
    const [depth] = constInts(c.const(1), 'OneHot depth');
    const s = c.info(0).shape;
    const axis = attrInt(c.attr, 'axis', -1);
    const r = s.length + 1;
    const a = axis < 0 ? axis + r : axis;
    const out = [...s];
    out.splice(a, 0, depth);
    return [{ dtype: c.info(2).dtype, shape: out }];
  },
};

function dtypeOfCode(code: number): DType {
  const d = DTYPE_OF_ONNX_CODE.get(code);
  if (!d) throw new Error(`unsupported Cast target type ${code}`);
  return d;
}
