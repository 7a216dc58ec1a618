// Composite check: a small pre-LN transformer block (the shape of a CLIP residual block) differentiated
// w.r.t. its input and every weight at once, checked against central finite differences along random
// directions. Per-rule tests prove each rule; this proves they compose (accumulation across the residual
// paths, Split of QKV, head reshapes/transposes, masked softmax, LayerNorm statistics, parameters).

import { describe, expect, test } from 'vitest';
import { A, type DType, tensor } from '../../../gpu-worker/engine/onnx/ir.ts';
import type { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { type Var, gradCheck } from './fd.ts';

const B = 2, T = 5, D = 8, H = 2, HD = D / H, F = 16;

const weights: Var[] = [
  { name: 'ln1_g', shape: [D], lo: 0.5, hi: 1.5, init: true },
  { name: 'ln1_b', shape: [D], init: true },
  { name: 'w_qkv', shape: [D, 3 * D], lo: -0.6, hi: 0.6, init: true },
  { name: 'b_qkv', shape: [3 * D], lo: -0.2, hi: 0.2, init: true },
  { name: 'w_o', shape: [D, D], lo: -0.6, hi: 0.6, init: true },
  { name: 'b_o', shape: [D], init: true },
  { name: 'ln2_g', shape: [D], lo: 0.5, hi: 1.5, init: true },
  { name: 'ln2_b', shape: [D], init: true },
  { name: 'w_fc', shape: [D, F], lo: -0.6, hi: 0.6, init: true },
  { name: 'b_fc', shape: [F], init: true },
  { name: 'w_proj', shape: [F, D], lo: -0.4, hi: 0.4, init: true },
  { name: 'b_proj', shape: [D], init: true },
];

function block(b: GraphBuilder, v: Record<string, string>, dtype: DType, act: 'quick_gelu' | 'gelu'): string {
  const sc = (x: number) => b.scalar(x, dtype);
  const ln = (x: string, g: string, bb: string) => b.op1('LayerNormalization', [x, g, bb], { axis: A.i(-1), epsilon: A.f(1e-5) });
  const linear = (x: string, w: string, bias: string) => b.add(b.matmul(x, w), bias);

  const h = ln(v.x, v.ln1_g, v.ln1_b);
  const qkv = linear(h, v.w_qkv, v.b_qkv);
  const [q, k, vv] = b.op('Split', [qkv, b.ints([D, D, D])], { axis: A.i(-1) }, { outputs: 3 });
  const heads = (t: string) => b.transpose(b.reshape(t, [B, T, H, HD]), [0, 2, 1, 3]);
  const kt = b.transpose(b.reshape(k, [B, T, H, HD]), [0, 2, 3, 1]);
  let s = b.mul(b.matmul(heads(q), kt), sc(1 / Math.sqrt(HD)));
  // Causal mask twice over, as exported models do it: an additive mask (CLIP's text tower) and a Where.
  const add = Array.from({ length: T * T }, (_, i) => (i % T > Math.floor(i / T) ? -1e9 : 0));
  s = b.add(s, b.constant(tensor(dtype, [T, T], add), 'attn_mask'));
  const keep = b.constant(tensor('bool', [T, T], add.map((m) => (m === 0 ? 1 : 0))), 'causal');
  s = b.op1('Where', [keep, s, sc(-1e9)]);
  const p = b.op1('Softmax', [s], { axis: A.i(-1) });
  const o = b.reshape(b.transpose(b.matmul(p, heads(vv)), [0, 2, 1, 3]), [B, T, D]);
  const x1 = b.add(v.x, linear(o, v.w_o, v.b_o));

  const u = linear(ln(x1, v.ln2_g, v.ln2_b), v.w_fc, v.b_fc);
  const a = act === 'quick_gelu'
    ? b.mul(u, b.sigmoid(b.mul(u, sc(1.702))))
    : b.mul(b.mul(u, sc(0.5)), b.add(sc(1), b.op1('Erf', [b.div(u, sc(Math.SQRT2))])));
  return b.add(x1, linear(a, v.w_proj, v.b_proj));
}

describe('composite: transformer block', () => {
  test('float64, QuickGELU (x·sigmoid(1.702x)): input and all 12 weights', async () => {
    const r = await gradCheck({
      dtype: 'float64',
      vars: [{ name: 'x', shape: [B, T, D] }, ...weights],
      build: (b, v) => block(b, v, 'float64', 'quick_gelu'),
      maxElems: 0, // directional derivatives for every tensor
      directions: 4,
      // At level 'all' onnxruntime fuses x·sigmoid(1.702x) into com.microsoft.QuickGelu, which has only a
      // float32 kernel, and the fusion already runs at 'extended'; 'basic' keeps the float64 graph runnable
      // (production graphs are float32).
      optimization: 'basic',
    });
    expect(Object.keys(r.errors)).toHaveLength(13);
    // Same bound as the per-rule float64 checks (see rules.test.ts).
    expect(r.maxError, JSON.stringify(r.errors)).toBeLessThan(1e-6);
  });

  // Erf has no float64 CPU kernel, so the exact-GELU variant runs in float32. A smaller step than the
  // per-rule float32 checks balances truncation (h², the block is far from linear) against rounding
  // (eps32·Σ|y⊙R|/h with Σ|y⊙R| ≈ 40 here): h = 3e-3 puts both near 1e-3 of Σ|g_i d_i|.
  test('float32, exact GELU via Erf: input and all 12 weights', async () => {
    const r = await gradCheck({
      dtype: 'float32',
      vars: [{ name: 'x', shape: [B, T, D] }, ...weights],
      build: (b, v) => block(b, v, 'float32', 'gelu'),
      maxElems: 0,
      directions: 4,
      step: 3e-3,
    });
    expect(Object.keys(r.errors)).toHaveLength(13);
    expect(r.maxError, JSON.stringify(r.errors)).toBeLessThan(1e-3);
  });
});
