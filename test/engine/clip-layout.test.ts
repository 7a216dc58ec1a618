// The image tower runs its tokens sequence first ([L, B, D]) so that onnxruntime reads the attention
// heads in place (FusedMatMul's transBatch flags) instead of copying them into a head-major layout.
// The parity fixtures have one vision head, which cannot tell heads and images apart: here a tower
// with several heads and images is checked against the batch-first layout (the text tower's, which
// the fixtures check with four heads), and the optimized graph is checked for the copies it keeps.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { type ClipArch, PRESETS, expectedTensors } from '../../gpu-worker/engine/clip/arch.ts';
import { OPENAI_MEAN, OPENAI_STD } from '../../gpu-worker/engine/clip/bundle.ts';
import { cosineRows, imageGradientGraph } from '../../gpu-worker/engine/clip/graphs.ts';
import { buildImageTower } from '../../gpu-worker/engine/clip/model.ts';
import { appendGradients } from '../../gpu-worker/engine/autodiff/gradient.ts';
import { GraphBuilder } from '../../gpu-worker/engine/onnx/builder.ts';
import { decodeModel, encodeModel } from '../../gpu-worker/engine/onnx/codec.ts';
import type { DType, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { createSession, runModel } from '../../gpu-worker/engine/runtime/session.ts';
import { maxRelErr } from '../helpers/clip.ts';
import { rng } from '../helpers/rng.ts';

// Three blocks (two full ones and the class-token-only last one), four heads of 16.
const ARCH: ClipArch = { ...PRESETS.tiny, visionLayers: 3, visionHeads: 4 };
const BATCH = 3;

function filled(dtype: DType, dims: number[], value: () => number): TensorData {
  const n = dims.reduce((a, d) => a * d, 1);
  const data = dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = value();
  return { dtype, dims, data };
}

function randomWeights(arch: ClipArch, dtype: DType): (name: string) => TensorData {
  const r = rng(7);
  const ws = new Map<string, TensorData>();
  for (const [name, dims] of expectedTensors(arch)) {
    const lnScale = name.includes('.ln_') && name.endsWith('.weight') ? 1 : 0;
    ws.set(name, filled(dtype, dims, () => lnScale + 0.2 * (r() - 0.5)));
  }
  return (name) => ws.get(name)!;
}

function inputs(dtype: DType): { pixels: TensorData; targets: TensorData } {
  const r = rng(11);
  const R = ARCH.imageResolution, E = ARCH.embedDim;
  return { pixels: filled(dtype, [BATCH, 3, R, R], r), targets: filled(dtype, [BATCH, E], () => r() - 0.5) };
}

describe('image tower token layout', () => {
  test('sequence first computes what batch first does: features and pixel gradient (float64, 4 heads, 3 images)', async () => {
    const dtype = 'float64';
    const weights = randomWeights(ARCH, dtype);
    const feeds = inputs(dtype);
    const run = async (imageLayout: 'seq-first' | 'batch-first') => {
      const b = new GraphBuilder(`layout_${imageLayout}`);
      const px = b.input('pixels', dtype, feeds.pixels.dims);
      const targets = b.input('targets', dtype, feeds.targets.dims);
      const f = buildImageTower(b, ARCH, weights, { pixels: px, normalize: { mean: OPENAI_MEAN, std: OPENAI_STD } }, { dtype, imageLayout });
      const loss = b.reduceSum(cosineRows(b, f, targets), [0], false);
      const grad = appendGradients(b, { loss, wrt: [px] }).get(px)!;
      b.output(b.op1('Identity', [f], {}, { outputNames: ['features'] }));
      b.output(b.op1('Identity', [grad], {}, { outputNames: ['grad'] }));
      // float64: 'basic' keeps the forward out of onnxruntime's float32-only fusions (ADR 0001).
      return runModel(b.toModel(), feeds, { graphOptimizationLevel: 'basic' });
    };
    const seq = await run('seq-first'), bat = await run('batch-first');
    const num = (t: TensorData) => Array.from(t.data as Float64Array);
    expect(maxRelErr(num(seq.features), num(bat.features))).toBeLessThan(1e-12);
    expect(maxRelErr(num(seq.grad), num(bat.grad))).toBeLessThan(1e-12);
    // The images differ, so a layout that mixed them up would not agree by accident.
    const E = ARCH.embedDim;
    expect(maxRelErr(num(seq.features).slice(0, E), num(seq.features).slice(E, 2 * E))).toBeGreaterThan(1e-3);
  });

  test('onnxruntime folds every head-layout Transpose into the attention products (float32, level all)', async () => {
    const src = { arch: ARCH, weights: randomWeights(ARCH, 'float32'), mean: OPENAI_MEAN, std: OPENAI_STD };
    const dir = mkdtempSync(join(tmpdir(), 'clipag-layout-'));
    try {
      const path = join(dir, 'optimized.onnx');
      const s = await createSession(encodeModel(imageGradientGraph(src, BATCH)), { graphOptimizationLevel: 'all', optimizedModelPath: path });
      await s.release();
      const nodes = decodeModel(readFileSync(path)).nodes;
      const producer = new Map(nodes.flatMap((n) => n.outputs.map((o) => [o, n] as const)));
      const products = nodes.filter((n) => n.op === 'MatMul' || n.op === 'FusedMatMul');
      // Scores, context and their gradients: six products per full block, read straight from the
      // [L, B, H, hd] projections.
      expect(products.filter((n) => n.op === 'FusedMatMul' && n.attrs.transBatchA?.type === 'int' && (n.attrs.transBatchA.v || (n.attrs.transBatchB?.type === 'int' && n.attrs.transBatchB.v))).length).toBeGreaterThanOrEqual(6 * (ARCH.visionLayers - 1));
      for (const m of products) {
        for (const i of m.inputs) expect(producer.get(i)?.op, `${m.name} reads a Transpose`).not.toBe('Transpose');
      }
      // What is left to copy: the patchify and its gradient, and per block the context back to the
      // token layout (forward) and dQ, dK, dV (gradient).
      const transposes = nodes.filter((n) => n.op === 'Transpose');
      expect(transposes.length).toBeLessThanOrEqual(2 + 4 * ARCH.visionLayers);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
