// Build-time constant folding of small shape computations (Shape → Gather → Concat → Reshape chains).
// Exported graphs (torch.onnx) compute reshape targets at run time; with static shapes we can know them
// at build time, which both makes shape inference possible and keeps that plumbing out of the backward pass.

import type { Node, TensorData, TypedData } from './ir.ts';
import { allocData, numel, tensor, valueAt } from './ir.ts';
import { type ShapeCtx, attrInt, broadcastShapes, constInts, normAxis, sliceParams } from './shapes.ts';

const MAX_FOLD = 1 << 16;
const RESHAPING = new Set(['Identity', 'Reshape', 'Unsqueeze', 'Squeeze', 'Flatten']);

function isIntLike(t: TensorData): boolean {
  return t.dtype === 'int64' || t.dtype === 'int32' || t.dtype === 'bool';
}
const get = valueAt;
/** Element `i` exactly: a bigint for int64 (a JS number holds only 53 bits), else as `valueAt`. */
const raw = (t: TensorData, i: number): number | bigint => (t.dtype === 'int64' ? (t.data as BigInt64Array)[i]! : valueAt(t, i));
const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;
/** A JS number as int64: truncated toward zero; past ±2^63 only the int64 bounds can have been meant. */
function numberToI64(v: number): bigint {
  return v >= 2 ** 63 ? INT64_MAX : v <= -(2 ** 63) ? INT64_MIN : BigInt(Math.trunc(v));
}
function make(like: TensorData['dtype'], dims: number[], values: (number | bigint)[]): TensorData {
  if (like === 'float16') return tensor(like, dims, values.map(Number)); // encoded as half bits
  const data: TypedData = allocData(like, values.length);
  if (data instanceof BigInt64Array) {
    // Exact int64 values (bigints) wrap like onnxruntime's two's-complement arithmetic. Values that went
    // through a JS number saturate instead: INT64_MAX (a Slice's "to the end") reads as 2^63, which
    // BigInt64Array would wrap to INT64_MIN.
    values.forEach((v, i) => (data[i] = typeof v === 'bigint' ? BigInt.asIntN(64, v) : numberToI64(v)));
  } else if (like === 'bool') {
    // Cast to bool is "non-zero" (NaN included): Uint8Array would truncate 0.5 to 0 and wrap 256 to 0.
    values.forEach((v, i) => (data[i] = typeof v === 'bigint' ? (v !== 0n ? 1 : 0) : v !== 0 ? 1 : 0));
  } else if (like === 'int32') {
    // int64 → int32 keeps the low 32 bits (the typed array wraps a number only while it is exact).
    values.forEach((v, i) => (data[i] = typeof v === 'bigint' ? Number(BigInt.asIntN(32, v)) : v));
  } else if (like === 'uint8') {
    values.forEach((v, i) => (data[i] = typeof v === 'bigint' ? Number(BigInt.asUintN(8, v)) : v));
  } else values.forEach((v, i) => ((data as Float32Array)[i] = Number(v)));
  return { dtype: like, dims, data };
}
function strides(dims: number[]): number[] {
  const s = new Array(dims.length).fill(1);
  for (let i = dims.length - 2; i >= 0; i--) s[i] = s[i + 1] * dims[i + 1];
  return s;
}
function broadcastIndex(outIdx: number, outDims: number[], inDims: number[]): number {
  const os = strides(outDims), is = strides(inDims);
  let k = 0;
  const off = outDims.length - inDims.length;
  for (let d = 0; d < outDims.length; d++) {
    const c = Math.floor(outIdx / os[d]) % outDims[d];
    const id = d - off;
    if (id >= 0 && inDims[id] !== 1) k += c * is[id];
  }
  return k;
}

/** Returns folded output values, or undefined when the node is not foldable. */
export function foldConstant(node: Node, c: ShapeCtx): (TensorData | undefined)[] | undefined {
  try {
    return foldInner(node, c);
  } catch {
    return undefined; // folding is an optimization; shape inference already validated the node
  }
}

function foldInner(node: Node, c: ShapeCtx): (TensorData | undefined)[] | undefined {
  const op = node.op;
  if (op === 'Shape') {
    const s = c.info(0).shape;
    const r = s.length;
    let start = attrInt(c.attr, 'start', 0), end = attrInt(c.attr, 'end', r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    const dims = s.slice(Math.max(0, start), Math.min(r, end));
    return [make('int64', [dims.length], dims)];
  }
  if (op === 'Size') return [make('int64', [], [numel(c.info(0).shape)])];
  if (op === 'Constant') {
    const a = c.attr.value ?? c.attr.value_int ?? c.attr.value_ints ?? c.attr.value_float ?? c.attr.value_floats;
    if (!a) return undefined;
    if (a.type === 'tensor') return [a.v];
    if (a.type === 'int') return [make('int64', [], [a.v])];
    if (a.type === 'ints') return [make('int64', [a.v.length], a.v)];
    if (a.type === 'float') return [make('float32', [], [a.v])];
    if (a.type === 'floats') return [make('float32', [a.v.length], a.v)];
    return undefined;
  }
  const ins: TensorData[] = [];
  for (let i = 0; i < node.inputs.length; i++) {
    if (!c.has(i)) continue;
    const t = c.const(i);
    if (!t) return undefined;
    ins[i] = t;
  }
  const x = ins[0];
  if (op === 'ConstantOfShape') {
    const shape = constInts(x, 'shape');
    const n = numel(shape);
    if (n > MAX_FOLD) return undefined;
    const v = c.attr.value;
    const dtype = v?.type === 'tensor' ? v.v.dtype : 'float32';
    const fill = v?.type === 'tensor' ? raw(v.v, 0) : 0;
    return [make(dtype, shape, new Array(n).fill(fill))];
  }
  if (!x) return undefined;
  // Only fold integer plumbing (and tiny float scalars feeding it): never fold real float compute. Every input
  // counts, not only the first: Mul(scalar, weight) or Where(cond, weight, 0) with a large float initializer
  // once folded the whole weight element by element in JS (a second and 9 MB per [768, 3072] weight).
  for (const t of ins) if (t && (numel(t.dims) > MAX_FOLD || (!isIntLike(t) && numel(t.dims) > 16))) return undefined;
  // Nor a result larger than the plumbing it stands for (Gather with many indices, a broadcast).
  if (numel(shapeOf(node, c)) > MAX_FOLD) return undefined;
  if (RESHAPING.has(op)) {
    const outShape = shapeOf(node, c);
    return [{ dtype: x.dtype, dims: outShape, data: x.data }];
  }
  if (op === 'Cast') {
    const to = shapeOf(node, c, 'dtype') as unknown as TensorData['dtype'];
    return [make(to, [...x.dims], Array.from({ length: numel(x.dims) }, (_, i) => raw(x, i)))];
  }
  if (op === 'Gather') {
    const axis = normAxis(attrInt(c.attr, 'axis', 0), x.dims.length);
    const idx = ins[1];
    const outDims = [...x.dims.slice(0, axis), ...idx.dims, ...x.dims.slice(axis + 1)];
    const inner = numel(x.dims.slice(axis + 1));
    const outer = numel(x.dims.slice(0, axis));
    const vals: (number | bigint)[] = [];
    for (let o = 0; o < outer; o++)
      for (let j = 0; j < numel(idx.dims); j++) {
        let k = get(idx, j);
        if (k < 0) k += x.dims[axis];
        for (let q = 0; q < inner; q++) vals.push(raw(x, (o * x.dims[axis] + k) * inner + q));
      }
    return [make(x.dtype, outDims, vals)];
  }
  if (op === 'Concat') {
    if (ins.some((t) => t.dims.length !== 1)) return undefined;
    const vals = ins.flatMap((t) => Array.from({ length: numel(t.dims) }, (_, i) => raw(t, i)));
    return [make(x.dtype, [vals.length], vals)];
  }
  if (op === 'Slice') {
    if (x.dims.length !== 1) return undefined;
    const [p] = sliceParams(x.dims, constInts(ins[1], ''), constInts(ins[2], ''), ins[3] ? constInts(ins[3], '') : undefined, ins[4] ? constInts(ins[4], '') : undefined);
    const vals: (number | bigint)[] = [];
    for (let k = 0, i = p.start; k < p.size; k++, i += p.step) vals.push(raw(x, i));
    return [make(x.dtype, [vals.length], vals)];
  }
  if (op === 'Range') {
    const s = get(ins[0], 0), l = get(ins[1], 0), d = get(ins[2], 0);
    const n = Math.max(0, Math.ceil((l - s) / d));
    return [make(x.dtype, [n], Array.from({ length: n }, (_, i) => s + i * d))];
  }
  const BIN: Record<string, (a: number, b: number) => number> = {
    Add: (a, b) => a + b,
    Sub: (a, b) => a - b,
    // int32 products can pass 2^53, where a JS number is no longer exact: multiply modulo 2^32.
    Mul: (a, b) => (x.dtype === 'int32' ? Math.imul(a, b) : a * b),
    Div: (a, b) => (isIntLike(x) ? Math.trunc(a / b) : a / b),
    Equal: (a, b) => (a === b ? 1 : 0),
    Less: (a, b) => (a < b ? 1 : 0),
    Greater: (a, b) => (a > b ? 1 : 0),
    Max: (a, b) => Math.max(a, b),
    Min: (a, b) => Math.min(a, b),
  };
  // int64 in exact bigint arithmetic; make() wraps the result to 64 bits as onnxruntime does (INT64_MAX + 1
  // is INT64_MIN). A division by zero throws, and the node is then simply not folded.
  const BIN64: Record<string, (a: bigint, b: bigint) => bigint | number> = {
    Add: (a, b) => a + b,
    Sub: (a, b) => a - b,
    Mul: (a, b) => a * b,
    Div: (a, b) => a / b,
    Equal: (a, b) => (a === b ? 1 : 0),
    Less: (a, b) => (a < b ? 1 : 0),
    Greater: (a, b) => (a > b ? 1 : 0),
    Max: (a, b) => (a > b ? a : b),
    Min: (a, b) => (a < b ? a : b),
  };
  const f = BIN[op];
  if (f && ins.length === 2) {
    const y = ins[1];
    const dims = broadcastShapes(x.dims, y.dims);
    const f64 = x.dtype === 'int64' && y.dtype === 'int64' ? BIN64[op]! : undefined;
    const vals = Array.from({ length: numel(dims) }, (_, i) => {
      const xi = broadcastIndex(i, dims, x.dims), yi = broadcastIndex(i, dims, y.dims);
      return f64 ? f64(raw(x, xi) as bigint, raw(y, yi) as bigint) : f(get(x, xi), get(y, yi));
    });
    return [make(op === 'Equal' || op === 'Less' || op === 'Greater' ? 'bool' : x.dtype, dims, vals)];
  }
  if (op === 'Where') {
    const [cond, a, b] = ins;
    const dims = broadcastShapes(cond.dims, a.dims, b.dims);
    const vals = Array.from({ length: numel(dims) }, (_, i) =>
      get(cond, broadcastIndex(i, dims, cond.dims)) ? raw(a, broadcastIndex(i, dims, a.dims)) : raw(b, broadcastIndex(i, dims, b.dims)),
    );
    return [make(a.dtype, dims, vals)];
  }
  if (op === 'Expand') {
    const dims = shapeOf(node, c);
    if (numel(dims) > MAX_FOLD) return undefined;
    const vals = Array.from({ length: numel(dims) }, (_, i) => raw(x, broadcastIndex(i, dims, x.dims)));
    return [make(x.dtype, dims, vals)];
  }
  if (op === 'Neg') return [make(x.dtype, [...x.dims], Array.from({ length: numel(x.dims) }, (_, i) => -raw(x, i)))];
  return undefined;
}

// The output info of this node was recorded by the builder before folding; re-derive it from the rule.
import { SHAPE_RULES } from './shapes.ts';
function shapeOf(node: Node, c: ShapeCtx): number[];
function shapeOf(node: Node, c: ShapeCtx, what: 'dtype'): string;
function shapeOf(node: Node, c: ShapeCtx, what?: 'dtype'): number[] | string {
  const r = SHAPE_RULES[node.op](c)[0];
  return what === 'dtype' ? r.dtype : r.shape;
}
