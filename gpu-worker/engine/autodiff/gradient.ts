// Reverse-mode autodiff over a GraphBuilder: appends the backward pass as ordinary ONNX nodes so that
// forward and backward run in one onnxruntime session.run (onnxruntime-node has no training API).

import { EngineError } from '../errors.ts';
import { A, type DType, type Node, isFloat, numel, tensor } from '../onnx/ir.ts';
import type { GraphBuilder } from '../onnx/builder.ts';
import { type GradCtx, getGradientRule, isNotDifferentiable, reduceToShape, ruleReadsOutput } from './registry.ts';

export interface GradientOptions {
  /** Any float tensor; its gradient is seeded with `seed` (default: ones, i.e. the gradient of its sum). */
  loss: string;
  /** Graph inputs and/or initializers to differentiate with respect to. */
  wrt: string[];
  /** Optional value of loss's shape and dtype used as d(out)/d(loss) (a vector-Jacobian product). */
  seed?: string;
}

function fill(b: GraphBuilder, shape: number[], dtype: DType, v: number, hint: string): string {
  if (numel(shape) <= 1) return b.constant(tensor(dtype, shape, [v]), hint);
  // A one-element value expanded at run time: no large constant in the model file.
  return b.op1('ConstantOfShape', [b.ints(shape)], { value: A.t(tensor(dtype, [1], [v])) });
}

/**
 * Appends the backward pass of `loss` w.r.t. each name in `wrt` into `b`.
 * Returns wrt name -> name of its gradient value (same shape and dtype as the wrt value).
 */
export function appendGradients(b: GraphBuilder, opts: GradientOptions): Map<string, string> {
  const { loss, wrt } = opts;
  const lossInfo = b.info(loss);
  if (!isFloat(lossInfo.dtype)) {
    throw new EngineError('not_differentiable', `loss "${loss}" has dtype ${lossInfo.dtype}; it must be a float tensor`, { loss });
  }
  const inputNames = new Set(b.inputs.map((v) => v.name));
  for (const w of wrt) {
    const vi = b.values.get(w);
    if (!vi) throw new EngineError('invalid_graph', `wrt "${w}" is not a value of the graph`, { wrt: w });
    if (!inputNames.has(w) && !(b.initializers.has(w) && !b.constantNames.has(w))) {
      throw new EngineError('invalid_graph', `wrt "${w}" must be a graph input or a named initializer (parameter)`, { wrt: w });
    }
    if (!isFloat(vi.dtype)) {
      throw new EngineError('not_differentiable', `wrt "${w}" has dtype ${vi.dtype}; only float values have gradients`, { wrt: w });
    }
  }
  if (opts.seed !== undefined) {
    const s = b.info(opts.seed);
    if (s.dtype !== lossInfo.dtype || s.shape.length !== lossInfo.shape.length || s.shape.some((d, i) => d !== lossInfo.shape[i])) {
      throw new EngineError('invalid_graph', `seed "${opts.seed}" is ${s.dtype}[${s.shape}] but loss "${loss}" is ${lossInfo.dtype}[${lossInfo.shape}]`, { seed: opts.seed });
    }
  }

  // Only the forward nodes that exist now; the backward pass appends to b.nodes as it goes.
  const fwd: Node[] = b.nodes.slice();
  const isFloatValue = (n: string) => n !== '' && isFloat(b.dtype(n));

  // ---- activity analysis ----
  // Forward: values that depend on a wrt through float values. Integer/bool values (shape plumbing,
  // indices, masks) never carry a gradient, which cuts Shape → Gather → Reshape chains off at once.
  // Builder constants and folded plumbing have no path from a wrt, so they stay inactive too.
  const varied = new Set<string>(wrt);
  for (const n of fwd) {
    if (n.inputs.some((i) => varied.has(i))) for (const o of n.outputs) if (isFloatValue(o)) varied.add(o);
  }
  // Backward: values the loss depends on (through varied values only).
  const useful = new Set<string>();
  if (varied.has(loss)) useful.add(loss);
  for (let k = fwd.length - 1; k >= 0; k--) {
    const n = fwd[k];
    if (n.outputs.some((o) => useful.has(o))) for (const i of n.inputs) if (varied.has(i)) useful.add(i);
  }
  const active = (v: string) => useful.has(v); // useful ⊆ varied by construction

  // ---- backward sweep ----
  const contribs = new Map<string, string[]>();
  const addContrib = (v: string, g: string) => {
    const l = contribs.get(v);
    if (l) l.push(g);
    else contribs.set(v, [g]);
  };
  /** Accumulated gradient of v (Add for two contributions, one Sum for more), or null. */
  const gradOf = (v: string): string | null => {
    const l = contribs.get(v);
    if (!l || l.length === 0) return null;
    if (l.length === 1) return l[0];
    const s = l.length === 2 ? b.add(l[0], l[1]) : b.op1('Sum', l);
    contribs.set(v, [s]);
    return s;
  };

  if (active(loss)) addContrib(loss, opts.seed ?? fill(b, lossInfo.shape, lossInfo.dtype, 1, 'grad_seed'));

  for (let k = fwd.length - 1; k >= 0; k--) {
    const node = fwd[k];
    if (!node.outputs.some((o) => active(o))) continue;
    const needs = node.inputs.map((i) => active(i));
    if (!needs.some(Boolean)) continue;
    const gos = node.outputs.map((o) => (active(o) ? gradOf(o) : null));
    if (gos.every((g) => g === null)) continue; // every consumer returned "no gradient": contributes zero
    if (isNotDifferentiable(node.op)) {
      const i = needs.indexOf(true);
      throw new EngineError(
        'not_differentiable',
        `op ${node.op} (node ${node.name}) is not differentiable, but its input "${node.inputs[i]}" lies on a path from a wrt to the loss "${loss}"`,
        { op: node.op, node: node.name, input: node.inputs[i] },
      );
    }
    const rule = getGradientRule(node.op);
    if (!rule) {
      throw new EngineError(
        'unsupported_op',
        `no gradient rule for op ${node.op} (node ${node.name}); it lies on a path from a wrt to the loss "${loss}"`,
        { op: node.op, node: node.name },
      );
    }
    // A gradient into an output the rule does not read would be dropped without a word.
    const unread = gos.findIndex((g, k) => g !== null && k > 0 && !ruleReadsOutput(node.op, k));
    if (unread > 0) {
      throw new EngineError(
        'not_differentiable',
        `op ${node.op} (node ${node.name}): its output #${unread} "${node.outputs[unread]}" lies on a path to the loss "${loss}", and the gradient rule reads only its other outputs`,
        { op: node.op, node: node.name, output: node.outputs[unread] },
      );
    }
    const ctx = makeCtx(b, node, gos, needs, active);
    const gis = b.scope(`grad/${node.name}`, () => rule(ctx));
    node.inputs.forEach((inp, i) => {
      if (!needs[i]) return;
      const g = gis[i];
      if (g === null || g === undefined) return;
      const want = b.info(inp), got = b.info(g);
      if (got.dtype !== want.dtype || got.shape.length !== want.shape.length || got.shape.some((d, j) => d !== want.shape[j])) {
        throw new EngineError(
          'invalid_graph',
          `gradient rule for ${node.op} (node ${node.name}) produced ${got.dtype}[${got.shape}] for input "${inp}" of ${want.dtype}[${want.shape}]`,
          { op: node.op, node: node.name, input: inp },
        );
      }
      addContrib(inp, g);
    });
  }

  const result = new Map<string, string>();
  for (const w of wrt) {
    const g = gradOf(w);
    // The loss does not depend on this wrt (or only through paths with zero derivative): its gradient is zero.
    result.set(w, g ?? fill(b, b.shape(w), b.dtype(w), 0, `grad_zero_${w}`));
  }
  return result;
}

function makeCtx(b: GraphBuilder, node: Node, gos: (string | null)[], needs: boolean[], active: (v: string) => boolean): GradCtx {
  const firstFloatOut = node.outputs.find((o) => o !== '' && isFloat(b.dtype(o)));
  const fdt: DType = firstFloatOut ? b.dtype(firstFloatOut) : 'float32';
  const ctx: GradCtx = {
    node,
    op: node.op,
    b,
    attrs: node.attrs,
    I: (i) => node.inputs[i] ?? '',
    O: (i) => node.outputs[i] ?? '',
    GO: (i) => gos[i] ?? null,
    needs: (i) => needs[i] ?? false,
    isActive: (v) => v !== '' && active(v),
    nIn: node.inputs.length,
    has: (i) => i < node.inputs.length && node.inputs[i] !== '',
    shape: (n) => b.shape(n),
    dtype: (n) => b.dtype(n),
    const: (i) => (node.inputs[i] ? b.consts.get(node.inputs[i]) : undefined),
    reduceToShape: (g, shape) => reduceToShape(b, g, shape),
    scalar: (v, dtype = fdt) => b.constant(tensor(dtype, [], [v]), 'scalar'),
    zeros: (shape, dtype = fdt) => fill(b, shape, dtype, 0, 'zeros'),
    notDiff: (i, why) => {
      throw new EngineError('not_differentiable', `op ${node.op} (node ${node.name}), input #${i} "${node.inputs[i]}": ${why}`, {
        op: node.op, node: node.name, input: node.inputs[i],
      });
    },
  };
  return ctx;
}
