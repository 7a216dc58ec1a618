// GraphBuilder: emits ONNX nodes with static shape inference and constant tracking.
// Every emitted value gets a ValueInfo immediately, so errors surface at build time with the node's
// name instead of as an opaque onnxruntime failure, and the gradient compiler can read shapes.

import { EngineError } from '../errors.ts';
import {
  A,
  type Attr,
  type DType,
  type ModelIR,
  type Node,
  type TensorData,
  type ValueInfo,
  ONNX_DTYPE_CODES,
  OPSET,
  numel,
  tensor,
} from './ir.ts';
import { SHAPE_RULES, type ShapeCtx, constInts, isSliceEndNone } from './shapes.ts';
import { foldConstant } from './fold.ts';

export interface OpOptions {
  /** Number of outputs (default 1). */
  outputs?: number;
  /** Explicit output names (overrides `outputs`). */
  outputNames?: string[];
  /** Node name; defaults to a unique name derived from the op. */
  name?: string;
  domain?: string;
}

export class GraphBuilder {
  readonly opset = OPSET;
  readonly nodes: Node[] = [];
  readonly inputs: ValueInfo[] = [];
  readonly outputs: ValueInfo[] = [];
  /** Weights and constants, in insertion order. */
  readonly initializers = new Map<string, TensorData>();
  /** Names of initializers that are constants made by the builder (never parameters). */
  readonly constantNames = new Set<string>();
  /** Static dtype/shape of every value in the graph. */
  readonly values = new Map<string, ValueInfo>();
  /** Known values: initializers, Constant nodes, and small folded integer computations. */
  readonly consts = new Map<string, TensorData>();
  /** Producer node of each value (graph inputs and initializers have none). */
  readonly producer = new Map<string, Node>();
  private readonly used = new Set<string>();
  private counter = 0;
  private scopeStack: string[] = [];

  constructor(readonly graphName = 'clipag') {}

  /** Prefix node and value names inside `fn` (purely cosmetic: names in errors and profiles). */
  scope<T>(name: string, fn: () => T): T {
    this.scopeStack.push(name);
    try {
      return fn();
    } finally {
      this.scopeStack.pop();
    }
  }

  uniq(base: string): string {
    const prefix = this.scopeStack.length ? this.scopeStack.join('/') + '/' : '';
    let name = prefix + base;
    if (!this.used.has(name)) {
      this.used.add(name);
      return name;
    }
    for (;;) {
      const candidate = `${name}_${this.counter++}`;
      if (!this.used.has(candidate)) {
        this.used.add(candidate);
        return candidate;
      }
    }
  }

  private claim(name: string, what: string): void {
    if (this.used.has(name) && this.values.has(name)) {
      throw new EngineError('invalid_graph', `${what} "${name}" is defined twice`, { name });
    }
    this.used.add(name);
  }

  info(name: string): ValueInfo {
    const v = this.values.get(name);
    if (!v) throw new EngineError('invalid_graph', `unknown value "${name}"`, { name });
    return v;
  }
  shape(name: string): number[] {
    return this.info(name).shape;
  }
  dtype(name: string): DType {
    return this.info(name).dtype;
  }
  rank(name: string): number {
    return this.info(name).shape.length;
  }

  input(name: string, dtype: DType, shape: number[]): string {
    this.claim(name, 'input');
    const vi = { name, dtype, shape: [...shape] };
    this.inputs.push(vi);
    this.values.set(name, vi);
    return name;
  }

  /** A named weight (a parameter that gradients may be taken with respect to). */
  initializer(name: string, t: TensorData): string {
    this.claim(name, 'initializer');
    this.initializers.set(name, t);
    this.values.set(name, { name, dtype: t.dtype, shape: [...t.dims] });
    this.consts.set(name, t);
    return name;
  }

  /** An anonymous constant (stored as an initializer, flagged as non-parameter). */
  constant(t: TensorData, hint = 'const'): string {
    const name = this.uniq(hint);
    this.initializers.set(name, t);
    this.constantNames.add(name);
    this.values.set(name, { name, dtype: t.dtype, shape: [...t.dims] });
    this.consts.set(name, t);
    return name;
  }

  scalar(v: number, dtype: DType = 'float32'): string {
    return this.constant(tensor(dtype, [], [v]), 'scalar');
  }
  ints(v: number[]): string {
    return this.constant(tensor('int64', [v.length], v), 'ints');
  }

  output(name: string): string {
    this.outputs.push({ ...this.info(name) });
    return name;
  }

  /** Emit a node; returns its output names. Shapes are inferred at once. */
  op(op: string, inputs: string[], attrs: Record<string, Attr> = {}, opts: OpOptions = {}): string[] {
    const domain = opts.domain ?? '';
    const nodeName = opts.name ?? this.uniq(op);
    for (const i of inputs) {
      if (i !== '' && !this.values.has(i)) {
        throw new EngineError('invalid_graph', `node ${nodeName} (${op}) reads unknown value "${i}"`, { op, node: nodeName, input: i });
      }
    }
    const nOut = opts.outputNames?.length ?? opts.outputs ?? 1;
    const outputs = opts.outputNames ? [...opts.outputNames] : Array.from({ length: nOut }, (_, k) => this.uniq(nOut === 1 ? `${op}_out` : `${op}_out${k}`));
    for (const o of outputs) if (o !== '') this.used.add(o);
    const node: Node = { op, domain, name: nodeName, inputs: [...inputs], outputs, attrs };
    this.addNode(node);
    return outputs;
  }

  /** Single-output convenience. */
  op1(op: string, inputs: string[], attrs: Record<string, Attr> = {}, opts: OpOptions = {}): string {
    return this.op(op, inputs, attrs, opts)[0];
  }

  /** Insert an existing node (e.g. from a decoded model) and infer its outputs. */
  addNode(node: Node): void {
    if (node.domain && node.domain !== 'ai.onnx') {
      throw new EngineError(
        'unsupported_op',
        `node ${node.name} uses op ${node.domain}::${node.op}; only the default ONNX domain is supported` +
          (node.domain === 'com.microsoft' ? ' (export the model without onnxruntime graph optimizations, e.g. an unoptimized torch.onnx export)' : ''),
        { op: node.op, node: node.name, domain: node.domain },
      );
    }
    if (node.op === 'Slice') this.sliceEndsAsKernel(node);
    const rule = SHAPE_RULES[node.op];
    if (!rule) {
      throw new EngineError('unsupported_op', `op ${node.op} (node ${node.name}) is not supported by the graph builder`, { op: node.op, node: node.name });
    }
    const ctx = this.shapeCtx(node);
    let infos: { dtype: DType; shape: number[] }[];
    try {
      infos = rule(ctx);
    } catch (e) {
      if (e instanceof EngineError) throw e;
      throw new EngineError('invalid_graph', `node ${node.name} (${node.op}): ${(e as Error).message}`, { op: node.op, node: node.name });
    }
    node.outputs.forEach((o, k) => {
      if (o === '') return;
      const inf = infos[k];
      if (!inf) throw new EngineError('invalid_graph', `node ${node.name} (${node.op}) has no output #${k}`, { op: node.op, node: node.name });
      for (const d of inf.shape) {
        if (!Number.isInteger(d) || d < 0) {
          throw new EngineError('invalid_graph', `node ${node.name} (${node.op}) inferred a non-static shape [${inf.shape}] for output ${o}`, { op: node.op, node: node.name });
        }
      }
      this.values.set(o, { name: o, dtype: inf.dtype, shape: inf.shape });
      this.producer.set(o, node);
    });
    this.nodes.push(node);
    const folded = foldConstant(node, ctx);
    if (folded) folded.forEach((t, k) => t && node.outputs[k] && this.consts.set(node.outputs[k], t));
  }

  /**
   * onnxruntime's Slice kernel reads an end of INT32_MAX or INT64_MAX with a negative step as "to index 0
   * included" (numpy's None), but ONNX shape inference, which onnxruntime runs when it loads the model,
   * clamps it to the last index (an empty slice): a graph whose later shapes follow the kernel is then
   * refused. Such an end is replaced by −INT_MAX of the ends' dtype, which both read as "to index 0".
   * (A positive step reads INT_MAX the same way in both, so those ends stay.)
   */
  private sliceEndsAsKernel(node: Node): void {
    const ends = node.inputs[2] ? this.consts.get(node.inputs[2]) : undefined;
    const steps = node.inputs[4] ? this.consts.get(node.inputs[4]) : undefined;
    if (!ends || !steps || (ends.dtype !== 'int64' && ends.dtype !== 'int32')) return;
    const e = constInts(ends, 'Slice ends'), st = constInts(steps, 'Slice steps');
    const fix = e.map((v, i) => isSliceEndNone(v) && (st[i] ?? 1) < 0);
    if (!fix.some(Boolean)) return;
    const data = ends.data.slice() as BigInt64Array | Int32Array;
    fix.forEach((f, i) => {
      if (!f) return;
      if (data instanceof BigInt64Array) data[i] = -9223372036854775807n;
      else data[i] = -2147483647;
    });
    node.inputs = [...node.inputs];
    node.inputs[2] = this.constant({ dtype: ends.dtype, dims: [...ends.dims], data }, 'slice_ends');
  }

  private shapeCtx(node: Node): ShapeCtx {
    const self = this;
    return {
      node,
      n: node.inputs.length,
      has: (i: number) => i < node.inputs.length && node.inputs[i] !== '',
      info(i: number) {
        const name = node.inputs[i];
        if (name === undefined || name === '') throw new Error(`missing input #${i}`);
        return self.info(name);
      },
      const(i: number) {
        const name = node.inputs[i];
        if (name === undefined || name === '') return undefined;
        return self.consts.get(name);
      },
      attr: node.attrs,
    };
  }

  // ---- convenience emitters (forward model code reads better with these) ----
  add(a: string, b: string) { return this.op1('Add', [a, b]); }
  sub(a: string, b: string) { return this.op1('Sub', [a, b]); }
  mul(a: string, b: string) { return this.op1('Mul', [a, b]); }
  div(a: string, b: string) { return this.op1('Div', [a, b]); }
  matmul(a: string, b: string) { return this.op1('MatMul', [a, b]); }
  neg(a: string) { return this.op1('Neg', [a]); }
  sigmoid(a: string) { return this.op1('Sigmoid', [a]); }
  reshape(x: string, shape: number[]) { return this.op1('Reshape', [x, this.ints(shape)]); }
  transpose(x: string, perm: number[]) { return this.op1('Transpose', [x], { perm: A.ints(perm) }); }
  concat(xs: string[], axis: number) { return this.op1('Concat', xs, { axis: A.i(axis) }); }
  reduceSum(x: string, axes: number[], keepdims = true) {
    return this.op1('ReduceSum', [x, this.ints(axes)], { keepdims: A.i(keepdims ? 1 : 0) });
  }
  reduceMean(x: string, axes: number[], keepdims = true) {
    return this.op1('ReduceMean', [x], { axes: A.ints(axes), keepdims: A.i(keepdims ? 1 : 0) });
  }
  slice(x: string, starts: number[], ends: number[], axes: number[], steps?: number[]) {
    const ins = [x, this.ints(starts), this.ints(ends), this.ints(axes)];
    if (steps) ins.push(this.ints(steps));
    return this.op1('Slice', ins);
  }
  gather(x: string, indices: string, axis = 0) { return this.op1('Gather', [x, indices], { axis: A.i(axis) }); }
  cast(x: string, to: DType) { return this.op1('Cast', [x], { to: A.i(onnxDTypeCode(to)) }); }

  /** Export as a ModelIR (the codec serializes it). */
  toModel(metadata?: Record<string, string>): ModelIR {
    if (this.outputs.length === 0) throw new EngineError('invalid_graph', 'graph has no outputs');
    return {
      opset: this.opset,
      producer: 'clipag',
      graphName: this.graphName,
      inputs: this.inputs.map((v) => ({ ...v })),
      outputs: this.outputs.map((v) => ({ ...v })),
      initializers: new Map(this.initializers),
      nodes: [...this.nodes],
      metadata,
    };
  }
}

export function onnxDTypeCode(d: DType): number {
  return ONNX_DTYPE_CODES[d];
}

export { numel };
