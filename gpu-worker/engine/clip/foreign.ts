// Foreign image towers: a forward-only ONNX image encoder exported elsewhere (torch.onnx, HF optimum)
// becomes our image tower. Its nodes are re-emitted through the GraphBuilder with a fixed batch size, so
// shape inference runs, the exporter's Shape→Gather→Concat plumbing folds to constants, and the
// gradient compiler can append the backward pass like for our own towers.

import { hasGradientRule, isNotDifferentiable } from '../autodiff/registry.ts';
import { EngineError } from '../errors.ts';
import type { GraphBuilder } from '../onnx/builder.ts';
import type { ModelIR, Node } from '../onnx/ir.ts';
import { SHAPE_RULES } from '../onnx/shapes.ts';

export interface ForeignTowerInfo {
  inputName: string;
  outputName: string;
  resolution: number;
  embedDim: number;
}

/** The ai.onnx opsets whose node forms are those of opset 17, which the re-emitted graph declares. */
export const MIN_FOREIGN_OPSET = 13;
export const MAX_FOREIGN_OPSET = 17;

/** Check a decoded foreign image encoder and describe its input/output. */
export function inspectForeignTower(model: ModelIR, opts: { input?: string; output?: string } = {}): ForeignTowerInfo {
  const where = `foreign image tower (${model.graphName || 'unnamed graph'})`;
  // Nodes are re-emitted under opset 17 semantics. Before 13, Softmax meant something else (2-D
  // coercion, axis 1) and Squeeze/Unsqueeze/Split/Clip took attributes; from 18, reductions, Split and
  // Pad take inputs where 17 has attributes. Either would be a different model, or fail on a job.
  if (model.opset < MIN_FOREIGN_OPSET || model.opset > MAX_FOREIGN_OPSET) {
    throw new EngineError(
      'invalid_model',
      `${where}: it imports ai.onnx opset ${model.opset}; supported are opsets ${MIN_FOREIGN_OPSET}–${MAX_FOREIGN_OPSET}. Re-export it with opset_version=17 (torch.onnx.export(..., opset_version=17))`,
      { opset: model.opset },
    );
  }
  const input = opts.input ? model.inputs.find((i) => i.name === opts.input) : model.inputs.length === 1 ? model.inputs[0] : undefined;
  if (!input) {
    throw new EngineError('invalid_model', `${where}: expected one image input${opts.input ? ` named ${opts.input}` : ''}; the graph has inputs ${model.inputs.map((i) => i.name).join(', ') || '(none)'} (pick one with image_onnx.input)`);
  }
  const output = opts.output ? model.outputs.find((o) => o.name === opts.output) : model.outputs[0];
  if (!output) throw new EngineError('invalid_model', `${where}: no output ${opts.output ?? ''}; outputs are ${model.outputs.map((o) => o.name).join(', ')}`);
  const s = input.shape;
  if (input.dtype !== 'float32' || s.length !== 4 || s[1] !== 3 || s[2] !== s[3] || s[2] <= 0) {
    throw new EngineError('invalid_model', `${where}: input ${input.name} must be float32 [batch, 3, R, R] (NCHW, square); it is ${input.dtype} [${s}]`);
  }
  // Synthesis runs the tower on a batch of views (16 by default) and scoring on several images: a
  // graph exported for one image at a time (torch.onnx.export without dynamic_axes) has that batch
  // baked into its Reshape constants too, and would fail every job (or mix the views together).
  if (s[0] >= 0) throw new EngineError('invalid_model', `${where}: input ${input.name} has a fixed batch size of ${s[0]} ([${s}]), but the tower runs on batches of views; ${REEXPORT_DYNAMIC_BATCH(input.name, output.name)}`, { input: input.name, shape: s });
  const o = output.shape;
  if (o.length !== 2 || o[1] <= 0) throw new EngineError('invalid_model', `${where}: output ${output.name} must be [batch, embed_dim]; it is [${o}]`);
  const problems = listUnsupportedOps(model, { input: input.name, output: output.name });
  if (problems.length) {
    throw new EngineError('unsupported_op', `${where} uses ops the gradient compiler cannot handle: ${problems.join(', ')}. ` +
      'Export the model unoptimized with the default ONNX domain (e.g. torch.onnx.export, or optimum without --optimize)', { ops: problems });
  }
  return { inputName: input.name, outputName: output.name, resolution: s[2], embedDim: o[1] };
}

/** The advice for a tower exported for a fixed batch size. */
export const REEXPORT_DYNAMIC_BATCH = (input: string, output?: string) =>
  `re-export it with a dynamic batch axis: torch.onnx.export(..., input_names=['${input}']${output ? `, output_names=['${output}']` : ''}, dynamic_axes={'${input}': {0: 'batch'}${output ? `, '${output}': {0: 'batch'}` : ''}})`;

/**
 * Ops with no shape rule, ops of other domains (onnxruntime's fused com.microsoft ops), and float ops
 * with neither a gradient rule nor a not-differentiable mark. Integer shape plumbing is fine without
 * gradient rules: activity analysis skips it. Given the image input and the output, only the nodes on
 * a path between them need a gradient rule: one that builds a constant (a mask from Trilu, say) is
 * never differentiated.
 */
export function listUnsupportedOps(model: ModelIR, path?: { input: string; output: string }): string[] {
  const onPath = path ? nodesBetween(model, path.input, path.output) : undefined;
  const out = new Set<string>();
  for (const n of model.nodes) {
    if (n.domain && n.domain !== 'ai.onnx') out.add(`${n.domain}::${n.op} (fused by onnxruntime; not supported)`);
    else if (!SHAPE_RULES[n.op]) out.add(n.op);
    else if ((!onPath || onPath.has(n)) && !hasGradientRule(n.op) && !isNotDifferentiable(n.op) && !SHAPE_ONLY.has(n.op)) out.add(`${n.op} (no gradient rule)`);
  }
  return [...out].sort();
}

/** The nodes that read `input` (through any chain) and that `output` depends on. */
function nodesBetween(model: ModelIR, input: string, output: string): Set<ModelIR['nodes'][number]> {
  const fromInput = new Set<string>([input]);
  const reached = new Set<ModelIR['nodes'][number]>();
  for (const n of model.nodes) {
    // Nodes are in topological order in a valid model.
    if (n.inputs.some((i) => fromInput.has(i))) {
      reached.add(n);
      for (const o of n.outputs) if (o) fromInput.add(o);
    }
  }
  const needed = new Set<string>([output]);
  const between = new Set<ModelIR['nodes'][number]>();
  for (let i = model.nodes.length - 1; i >= 0; i--) {
    const n = model.nodes[i]!;
    if (!n.outputs.some((o) => needed.has(o))) continue;
    for (const x of n.inputs) if (x) needed.add(x);
    if (reached.has(n)) between.add(n);
  }
  return between;
}

/** Ops that only move integers or build constants in exported graphs. */
const SHAPE_ONLY = new Set(['Shape', 'Size', 'Constant', 'ConstantOfShape', 'Range', 'Equal', 'Less', 'Greater', 'Not', 'ArgMax', 'OneHot']);

/**
 * Emit the foreign graph into `b`, reading `pixels` (already normalized the way the tower expects) as
 * its image input, with every value name prefixed. Returns the output features [B, E].
 */
export function emitForeignTower(b: GraphBuilder, model: ModelIR, info: ForeignTowerInfo, pixels: string, prefix = 'foreign/'): string {
  const [B, C, H, W] = b.shape(pixels);
  if (b.dtype(pixels) !== 'float32') throw new EngineError('invalid_input', 'foreign image towers run in float32');
  if (C !== 3 || H !== info.resolution || W !== info.resolution) {
    throw new EngineError('invalid_input', `the foreign tower takes [B, 3, ${info.resolution}, ${info.resolution}] images; got [${b.shape(pixels)}]`);
  }
  void B;
  const rename = new Map<string, string>([[info.inputName, pixels]]);
  const name = (v: string) => (v === '' ? '' : rename.get(v) ?? prefix + v);
  for (const [k, t] of model.initializers) {
    if (k === info.inputName) continue;
    rename.set(k, b.initializer(prefix + k, t));
  }
  for (const n of model.nodes) {
    const node: Node = { ...n, name: prefix + (n.name || `${n.op}_${b.nodes.length}`), inputs: n.inputs.map(name), outputs: n.outputs.map(name), attrs: { ...n.attrs } };
    b.addNode(node);
  }
  const out = name(info.outputName);
  if (!b.values.has(out)) throw new EngineError('invalid_model', `foreign tower output ${info.outputName} is not produced by any node`);
  return out;
}
