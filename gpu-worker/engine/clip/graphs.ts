// The CLIP graphs the engine compiles: text embedding, image embedding, and image embedding with its
// pixel gradient (forward + backward in one graph). Synthesis builds its step graph on the same towers.

import { appendGradients } from '../autodiff/gradient.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type DType, type ModelIR } from '../onnx/ir.ts';
import type { ClipArch } from './arch.ts';
import { type WeightLookup, buildImageTower, buildTextTower } from './model.ts';

export interface TowerSource {
  arch: ClipArch;
  weights: WeightLookup;
  mean: number[];
  std: number[];
}

export function textEmbedGraph(src: TowerSource, batch: number): ModelIR {
  const b = new GraphBuilder('text_embed');
  const tokens = b.input('tokens', 'int64', [batch, src.arch.contextLength]);
  const eot = b.input('eot_index', 'int64', [batch]);
  const f = buildTextTower(b, src.arch, src.weights, { tokens, eotFlatIndex: eot }, { dtype: 'float32' });
  b.output(b.op1('Identity', [f], {}, { outputNames: ['text_features'] }));
  return b.toModel();
}

export function imageEmbedGraph(src: TowerSource, batch: number, dtype: DType = 'float32'): ModelIR {
  const b = new GraphBuilder('image_embed');
  const R = src.arch.imageResolution;
  const px = b.input('pixels', dtype, [batch, 3, R, R]);
  const f = buildImageTower(b, src.arch, src.weights, { pixels: px, normalize: { mean: src.mean, std: src.std } }, { dtype });
  b.output(b.op1('Identity', [f], {}, { outputNames: ['image_features'] }));
  return b.toModel();
}

/** L2-normalize rows of [B, E] (x / ‖x‖). */
export function l2normalize(b: GraphBuilder, x: string): string {
  const n = b.op1('ReduceL2', [x], { axes: A.ints([-1]), keepdims: A.i(1) });
  return b.div(x, n);
}

/** Row-wise cosine of [B, E] features against [B, E] unit targets. */
export function cosineRows(b: GraphBuilder, feats: string, unitTargets: string): string {
  return b.reduceSum(b.mul(l2normalize(b, feats), unitTargets), [-1], false);
}

/**
 * pixels [B,3,R,R] in [0,1], targets [B,E] unit text embeddings →
 * outputs `cosine` [B] and `grad_pixels` = ∂(Σ_b weight_b · cosine_b)/∂pixels.
 */
export function imageGradientGraph(src: TowerSource, batch: number, dtype: DType = 'float32'): ModelIR {
  const b = new GraphBuilder('image_grad');
  const R = src.arch.imageResolution;
  const px = b.input('pixels', dtype, [batch, 3, R, R]);
  const targets = b.input('targets', dtype, [batch, src.arch.embedDim]);
  const weights = b.input('weights', dtype, [batch]);
  const f = buildImageTower(b, src.arch, src.weights, { pixels: px, normalize: { mean: src.mean, std: src.std } }, { dtype });
  const cos = b.op1('Identity', [cosineRows(b, f, targets)], {}, { outputNames: ['cosine'] });
  const objective = b.reduceSum(b.mul(cos, weights), [0], false);
  const grads = appendGradients(b, { loss: objective, wrt: [px] });
  b.output(cos);
  b.output(b.op1('Identity', [grads.get(px)!], {}, { outputNames: ['grad_pixels'] }));
  return b.toModel();
}
