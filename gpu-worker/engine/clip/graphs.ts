// The CLIP graphs the engine compiles: text embedding, image embedding, and image embedding with its
// pixel gradient (forward + backward in one graph). Synthesis builds its step graph on the same towers.

import { appendGradients } from '../autodiff/gradient.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, type DType, type ModelIR } from '../onnx/ir.ts';
import type { ClipArch } from './arch.ts';
import { EngineError } from '../errors.ts';
import { type ForeignTowerInfo, emitForeignTower } from './foreign.ts';
import { type WeightLookup, buildImageTower, buildTextTower } from './model.ts';

export interface TowerSource {
  arch: ClipArch;
  weights: WeightLookup;
  mean: number[];
  std: number[];
  /** A foreign ONNX image encoder that replaces our image tower (its input is the normalized image). */
  foreign?: { model: ModelIR; info: ForeignTowerInfo };
}

/** Image features [B, E] of raw pixels in [0,1]: our tower, or the bundle's foreign ONNX tower. */
export function imageFeatures(b: GraphBuilder, src: TowerSource, pixels: string, dtype: DType): string {
  if (!src.foreign) return buildImageTower(b, src.arch, src.weights, { pixels, normalize: { mean: src.mean, std: src.std } }, { dtype });
  const mean = b.constant({ dtype: 'float32', dims: [1, 3, 1, 1], data: Float32Array.from(src.mean) }, 'mean');
  const invStd = b.constant({ dtype: 'float32', dims: [1, 3, 1, 1], data: Float32Array.from(src.std.map((x) => 1 / x)) }, 'inv_std');
  if (dtype !== 'float32') throw new EngineError('invalid_input', 'foreign image towers run in float32 (use --dtype float32)');
  return emitForeignTower(b, src.foreign.model, src.foreign.info, b.mul(b.sub(pixels, mean), invStd));
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
  const f = imageFeatures(b, src, px, dtype);
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
  const f = imageFeatures(b, src, px, dtype);
  const cos = b.op1('Identity', [cosineRows(b, f, targets)], {}, { outputNames: ['cosine'] });
  const objective = b.reduceSum(b.mul(cos, weights), [0], false);
  const grads = appendGradients(b, { loss: objective, wrt: [px] });
  b.output(cos);
  b.output(b.op1('Identity', [grads.get(px)!], {}, { outputNames: ['grad_pixels'] }));
  return b.toModel();
}
