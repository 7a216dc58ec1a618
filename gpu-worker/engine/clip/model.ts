// CLIP towers emitted as ONNX graphs from OpenAI/open_clip state_dict tensors.
// The math follows openai/CLIP model.py: patch conv (no bias), class token, positional embedding, ln_pre,
// pre-LN residual blocks with nn.MultiheadAttention, ln_post on the class token, and the projection.

import { f16ToF32 } from '../io/half.ts';
import { EngineError } from '../errors.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { A, allocData, type DType, type TensorData, numel } from '../onnx/ir.ts';
import type { ClipArch } from './arch.ts';

/**
 * A bundle weight by name. `dtype` is the dtype the graph wants it in: a lookup may hand the weight
 * back already converted (ClipEngine's keeps one converted copy per weight for all its graphs), or as
 * stored, and the tower converts it.
 */
export type WeightLookup = (name: string, dtype?: DType) => TensorData;

export interface TowerOptions {
  dtype: DType; // 'float32' or 'float64'
  /**
   * How weights enter the graph: 'initializer' (inference; ORT folds the weight transposes once) or
   * 'input' (training; the weights change every step without recompiling).
   */
  weightsAs?: 'initializer' | 'input';
  /** Weight value names created so far, so both towers can share a builder. */
  weightNames?: Map<string, string>;
  /**
   * The image tower's token layout: 'seq-first' [L, B, D] (the default: onnxruntime then reads the
   * attention heads in place, see TowerEmitter.scaledDotAttention) or 'batch-first' [B, L, D], the
   * text tower's. The same function either way; tests check one against the other.
   */
  imageLayout?: 'seq-first' | 'batch-first';
}

const LN_EPS = 1e-5;

/**
 * Convert a weight to the graph dtype (f16/f32 sources → f32 or f64). `shared`: the result's data is in a
 * SharedArrayBuffer (same values), so that a graph holding it crosses to the pool's threads without a copy.
 */
export function castTensor(t: TensorData, dtype: DType, opts: { shared?: boolean } = {}): TensorData {
  if (t.dtype === dtype) return t;
  const n = numel(t.dims);
  if (dtype === 'float32' || dtype === 'float64') {
    const out = allocData(dtype, n, opts) as Float32Array | Float64Array;
    if (t.dtype === 'float16') {
      const src = t.data as Uint16Array;
      for (let i = 0; i < n; i++) out[i] = f16ToF32(src[i]!);
    } else if (t.dtype === 'float32' || t.dtype === 'float64') {
      const src = t.data as Float32Array | Float64Array;
      for (let i = 0; i < n; i++) out[i] = src[i];
    } else throw new EngineError('invalid_weights', `cannot use a ${t.dtype} tensor as a float weight`);
    return { dtype, dims: [...t.dims], data: out };
  }
  throw new EngineError('invalid_graph', `unsupported tower dtype ${dtype}`);
}


class TowerEmitter {
  readonly names: Map<string, string>;
  /**
   * `seqFirst`: the residual stream's tokens are [L, B, D] (the image tower's default layout) rather
   * than [B, L, D] (the text tower's). Only the attention's head layout depends on it.
   */
  constructor(readonly b: GraphBuilder, readonly weights: WeightLookup, readonly opts: TowerOptions, readonly seqFirst = false) {
    this.names = opts.weightNames ?? new Map();
  }

  w(name: string): string {
    const known = this.names.get(name);
    if (known) return known;
    const t = castTensor(this.weights(name, this.opts.dtype), this.opts.dtype);
    const v = this.opts.weightsAs === 'input' ? this.b.input(name, t.dtype, t.dims) : this.b.initializer(name, t);
    this.names.set(name, v);
    return v;
  }

  /** x[..., in] @ W^T + b with W in torch Linear layout [out, in]. */
  linear(x: string, prefix: string, bias = true): string {
    const wt = this.b.transpose(this.w(`${prefix}.weight`), [1, 0]);
    const y = this.b.matmul(x, wt);
    return bias ? this.b.add(y, this.w(`${prefix}.bias`)) : y;
  }

  layerNorm(x: string, prefix: string): string {
    return this.b.op1('LayerNormalization', [x, this.w(`${prefix}.weight`), this.w(`${prefix}.bias`)], {
      axis: A.i(-1),
      epsilon: A.f(LN_EPS),
    });
  }

  gelu(x: string, kind: ClipArch['activation']): string {
    const b = this.b;
    const dt = this.opts.dtype;
    if (kind === 'quick_gelu') return b.mul(x, b.sigmoid(b.mul(x, b.scalar(1.702, dt))));
    // exact GELU: 0.5·x·(1 + erf(x/√2))
    const erf = b.op1('Erf', [b.mul(x, b.scalar(Math.SQRT1_2, dt))]);
    return b.mul(b.mul(x, b.scalar(0.5, dt)), b.add(erf, b.scalar(1, dt)));
  }

  /** The token axis of the residual stream. */
  get seqAxis(): number {
    return this.seqFirst ? 0 : 1;
  }

  /**
   * Splits a packed projection [·, ·, n·D] (tokens in the stream's layout) into n per-head views
   * [·, ·, H, hd]: a Split along the last axis and a Reshape (no copy) per part. The head-major
   * layout is left to scaledDotAttention's Transposes.
   */
  headsFromPacked(packed: string, n: number, heads: number): string[] {
    const b = this.b;
    const [d0, d1, nD] = b.shape(packed);
    const D = nD / n, hd = D / heads;
    const parts = b.op('Split', [packed, b.ints(new Array(n).fill(D))], { axis: A.i(-1) }, { outputs: n });
    return parts.map((p) => b.reshape(p, [d0, d1, heads, hd]));
  }

  /**
   * Scaled dot-product attention on per-head views q [·,·,H,hd] (Lq tokens), k and v (L tokens), in
   * the stream's layout → [·, ·, H·hd] in that layout. The head-major operands are Transposes that
   * onnxruntime folds into the products (FusedMatMul's transA/transB, and in the sequence-first
   * layout transBatchA/transBatchB: [L, B, H, hd] is read as B·H matrices of L rows in place); so
   * is the 1/√hd scale on the scores (alpha). Sequence first, only the context's Transpose back to
   * the stream's layout is a copy in the forward pass, and in the gradient only dQ, dK, dV's.
   */
  scaledDotAttention(q: string, k: string, v: string, mask?: string): string {
    const b = this.b;
    const [q0, q1, H, hd] = b.shape(q);
    const toHeads = this.seqFirst ? [1, 2, 0, 3] : [0, 2, 1, 3]; // → [B, H, L, hd]
    const toHeadsT = this.seqFirst ? [1, 2, 3, 0] : [0, 2, 3, 1]; // → [B, H, hd, L]
    const fromHeads = this.seqFirst ? [2, 0, 1, 3] : [0, 2, 1, 3]; // [B, H, L, hd] → the stream's layout
    const qh = b.transpose(q, toHeads), khT = b.transpose(k, toHeadsT), vh = b.transpose(v, toHeads);
    let scores = b.mul(b.matmul(qh, khT), b.scalar(1 / Math.sqrt(hd), this.opts.dtype)); // [B,H,Lq,L]
    if (mask) scores = b.add(scores, mask);
    const attn = b.op1('Softmax', [scores], { axis: A.i(-1) });
    return b.reshape(b.transpose(b.matmul(attn, vh), fromHeads), [q0, q1, H * hd]);
  }

  /** nn.MultiheadAttention on the token stream, in either layout (the official code runs it sequence first). */
  attention(x: string, prefix: string, heads: number, mask?: string): string {
    const b = this.b;
    const qkv = b.add(b.matmul(x, b.transpose(this.w(`${prefix}.in_proj_weight`), [1, 0])), this.w(`${prefix}.in_proj_bias`));
    const [q, k, v] = this.headsFromPacked(qkv, 3, heads);
    const ctx = this.scaledDotAttention(q!, k!, v!, mask);
    return b.add(b.matmul(ctx, b.transpose(this.w(`${prefix}.out_proj.weight`), [1, 0])), this.w(`${prefix}.out_proj.bias`));
  }

  /**
   * The last image block, computed for the class token only. The tower's output reads only that
   * token, so the other tokens' attention queries, output projection and MLP in this block are dead
   * work in the forward pass and zeros in the backward: same result, ~7 % fewer FLOPs at ViT-B/32.
   */
  resblockClsOnly(x: string, prefix: string, heads: number, act: ClipArch['activation']): string {
    const b = this.b;
    return b.scope(prefix, () => {
      const D = b.shape(x)[2];
      const t = this.seqAxis;
      const ln = this.layerNorm(x, `${prefix}.ln_1`);
      const lnCls = b.slice(ln, [0], [1], [t]); // the class token
      const w = this.w(`${prefix}.attn.in_proj_weight`), bias = this.w(`${prefix}.attn.in_proj_bias`);
      // q from the class token only; k and v from every token (slices of the packed projection).
      const wq = b.transpose(b.slice(w, [0], [D], [0]), [1, 0]);
      const wkv = b.transpose(b.slice(w, [D], [3 * D], [0]), [1, 0]);
      const q = b.add(b.matmul(lnCls, wq), b.slice(bias, [0], [D], [0]));
      const kv = b.add(b.matmul(ln, wkv), b.slice(bias, [D], [3 * D], [0]));
      const [k, v] = this.headsFromPacked(kv, 2, heads);
      const [q0, q1] = b.shape(q);
      const ctx = this.scaledDotAttention(b.reshape(q, [q0, q1, heads, D / heads]), k!, v!); // one token
      const out = b.add(b.matmul(ctx, b.transpose(this.w(`${prefix}.attn.out_proj.weight`), [1, 0])), this.w(`${prefix}.attn.out_proj.bias`));
      const h = b.add(b.slice(x, [0], [1], [t]), out);
      const m = this.linear(this.gelu(this.linear(this.layerNorm(h, `${prefix}.ln_2`), `${prefix}.mlp.c_fc`), act), `${prefix}.mlp.c_proj`);
      return b.add(h, m); // one token
    });
  }

  resblock(x: string, prefix: string, heads: number, act: ClipArch['activation'], mask?: string): string {
    return this.b.scope(prefix, () => {
      const h = this.b.add(x, this.attention(this.layerNorm(x, `${prefix}.ln_1`), `${prefix}.attn`, heads, mask));
      const m = this.linear(this.gelu(this.linear(this.layerNorm(h, `${prefix}.ln_2`), `${prefix}.mlp.c_fc`), act), `${prefix}.mlp.c_proj`);
      return this.b.add(h, m);
    });
  }
}

export interface ImageTowerInput {
  /** [B, 3, R, R] pixels in [0, 1] (normalized inside the graph) or already-normalized images. */
  pixels: string;
  /** When given, the graph applies (x − mean)/std per channel first, so gradients are w.r.t. raw pixels. */
  normalize?: { mean: number[]; std: number[] };
}

/**
 * Emits `encode_image`; returns the unnormalized image features [B, embedDim].
 * The patch conv (stride = kernel, no bias) is emitted as patchify + MatMul: the same math, it has
 * float64 kernels on the CPU EP (Conv does not), and its gradient needs no ConvTranspose.
 */
export function buildImageTower(b: GraphBuilder, arch: ClipArch, weights: WeightLookup, input: ImageTowerInput, opts: TowerOptions): string {
  const seqFirst = (opts.imageLayout ?? 'seq-first') === 'seq-first';
  const e = new TowerEmitter(b, weights, opts, seqFirst);
  const dt = opts.dtype;
  const [B, C, H, W] = b.shape(input.pixels);
  const R = arch.imageResolution, p = arch.visionPatchSize, g = R / p, D = arch.visionWidth;
  if (C !== 3 || H !== R || W !== R) {
    throw new EngineError('invalid_input', `the image tower takes [B, 3, ${R}, ${R}] images; got [${b.shape(input.pixels)}]`);
  }
  return b.scope('visual', () => {
    let x = input.pixels;
    if (input.normalize) {
      const mean = b.constant({ dtype: dt, dims: [1, 3, 1, 1], data: dt === 'float64' ? Float64Array.from(input.normalize.mean) : Float32Array.from(input.normalize.mean) }, 'mean');
      const invStd = b.constant({ dtype: dt, dims: [1, 3, 1, 1], data: (dt === 'float64' ? Float64Array : Float32Array).from(input.normalize.std.map((s) => 1 / s)) }, 'inv_std');
      x = b.mul(b.sub(x, mean), invStd);
    }
    // [B,3,g,p,g,p] → [g,g,B,3,p,p] → [g·g, B, 3·p·p] sequence first (batch first: [B,g,g,3,p,p] → [B, g·g, 3·p·p]).
    const patches = seqFirst
      ? b.reshape(b.transpose(b.reshape(x, [B, 3, g, p, g, p]), [2, 4, 0, 1, 3, 5]), [g * g, B, 3 * p * p])
      : b.reshape(b.transpose(b.reshape(x, [B, 3, g, p, g, p]), [0, 2, 4, 1, 3, 5]), [B, g * g, 3 * p * p]);
    const convW = b.reshape(e.w('visual.conv1.weight'), [D, 3 * p * p]);
    let tokens = b.matmul(patches, b.transpose(convW, [1, 0]));
    const cls = b.op1('Expand', [b.reshape(e.w('visual.class_embedding'), [1, 1, D]), b.ints(seqFirst ? [1, B, D] : [B, 1, D])]);
    tokens = b.concat([cls, tokens], e.seqAxis);
    const pos = e.w('visual.positional_embedding'); // [L, D]
    tokens = b.add(tokens, seqFirst ? b.reshape(pos, [g * g + 1, 1, D]) : pos);
    tokens = e.layerNorm(tokens, 'visual.ln_pre');
    const last = arch.visionLayers - 1;
    for (let i = 0; i < last; i++) tokens = e.resblock(tokens, `visual.transformer.resblocks.${i}`, arch.visionHeads, arch.activation);
    const clsOut = b.reshape(e.resblockClsOnly(tokens, `visual.transformer.resblocks.${last}`, arch.visionHeads, arch.activation), [B, D]);
    return b.matmul(e.layerNorm(clsOut, 'visual.ln_post'), e.w('visual.proj'));
  });
}

export interface TextTowerInput {
  /** [B, contextLength] int64 token ids. */
  tokens: string;
  /** [B] int64: the flat index b·contextLength + position of the end-of-text token (argmax of the ids). */
  eotFlatIndex: string;
}

/** Emits `encode_text`; returns unnormalized text features [B, embedDim]. */
export function buildTextTower(b: GraphBuilder, arch: ClipArch, weights: WeightLookup, input: TextTowerInput, opts: TowerOptions): string {
  const e = new TowerEmitter(b, weights, opts);
  const dt = opts.dtype;
  const [B, L] = b.shape(input.tokens);
  if (L !== arch.contextLength) throw new EngineError('invalid_input', `text tokens must be [B, ${arch.contextLength}]; got [${b.shape(input.tokens)}]`);
  const D = arch.textWidth;
  return b.scope('text', () => {
    let x = b.gather(e.w('token_embedding.weight'), input.tokens, 0); // [B, L, D]
    x = b.add(x, e.w('positional_embedding'));
    // Causal additive mask: −inf above the diagonal (exp(−inf) = 0 exactly, as in the official code).
    const mask = new (dt === 'float64' ? Float64Array : Float32Array)(L * L);
    for (let i = 0; i < L; i++) for (let j = i + 1; j < L; j++) mask[i * L + j] = -Infinity;
    const maskName = b.constant({ dtype: dt, dims: [L, L], data: mask }, 'causal_mask');
    for (let i = 0; i < arch.textLayers; i++) x = e.resblock(x, `transformer.resblocks.${i}`, arch.textHeads, arch.activation, maskName);
    // Pool before ln_final: LayerNorm is per token, so this equals the official ln_final-then-pool.
    const pooled = b.gather(b.reshape(x, [B * L, D]), input.eotFlatIndex, 0); // [B, D]
    return b.matmul(e.layerNorm(pooled, 'ln_final'), e.w('text_projection'));
  });
}

/** Host-side: flat EOT indices for a batch of token rows (the official pools at argmax of the ids). */
export function eotFlatIndices(tokens: Int32Array | BigInt64Array, batch: number, contextLength: number): BigInt64Array {
  const out = new BigInt64Array(batch);
  for (let r = 0; r < batch; r++) {
    let best = 0;
    let bestVal = -Infinity;
    for (let c = 0; c < contextLength; c++) {
      const v = Number(tokens[r * contextLength + c]);
      if (v > bestVal) {
        bestVal = v;
        best = c;
      }
    }
    out[r] = BigInt(r * contextLength + best);
  }
  return out;
}
