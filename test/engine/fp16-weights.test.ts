// A float16 bundle (clipag models import --keep-fp16) in float32 graphs: each weight is converted once
// per engine, into shared memory, and every graph of the engine holds that one copy. Converted per
// graph, each loaded graph kept a private float32 copy of its tower in the pool (which keeps a graph's
// IR to re-open it on a replacement thread): ~300 MB per graph at ViT-B/32 size.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imageEmbedGraph, textEmbedGraph } from '../../gpu-worker/engine/clip/graphs.ts';
import { castTensor } from '../../gpu-worker/engine/clip/model.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { f32ToF16Array } from '../../gpu-worker/engine/io/half.ts';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import type { ModelIR, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** The tiny reference bundle with its float32 weights stored as float16. */
async function float16Bundle(): Promise<string> {
  const dir = makeTinyBundle('quickgelu');
  dirs.push(dir);
  const path = join(dir, 'weights.safetensors');
  const out = new Map<string, TensorData>();
  for (const [name, t] of readSafetensors(path).tensors) {
    out.set(name, t.dtype === 'float32' ? { dtype: 'float16', dims: t.dims, data: f32ToF16Array(t.data as Float32Array) } : t);
  }
  await writeSafetensors(path, out);
  return dir;
}

describe('float16 bundle weights', () => {
  it('are converted to float32 once per engine, into shared memory: every graph holds the same copy, with the values a per-graph cast gives', async () => {
    const engine = await ClipEngine.open(await float16Bundle(), { threads: 1 });
    try {
      expect(engine.bundle.weights.get('token_embedding.weight')?.dtype).toBe('float16');
      // The graphs the engine hands its pool, as the pool keeps them.
      const built = new Map<string, ModelIR>();
      const spy = (key: string, build: () => ModelIR) => () => {
        const m = build();
        built.set(key, m);
        return m;
      };
      for (const b of [1, 4]) await engine.graph(`test-text:b${b}`, spy(`text${b}`, () => textEmbedGraph(engine.towerSource(), b)));
      await engine.graph('test-image:b1', spy('image1', () => imageEmbedGraph(engine.towerSource(), 1)));
      const [t1, t4, i1] = ['text1', 'text4', 'image1'].map((k) => built.get(k)!);

      let weights = 0;
      for (const [name, t] of t1.initializers) {
        const stored = engine.bundle.weights.get(name);
        if (!stored) continue; // a constant of the graph (the causal mask), not a weight
        weights++;
        expect(t.dtype, name).toBe('float32');
        expect(t.data.buffer, name).toBeInstanceOf(SharedArrayBuffer); // crosses to the pool's thread without a copy
        expect(t4.initializers.get(name)!.data, name).toBe(t.data); // one copy for every graph
        // the same float32 values as converting it for this graph alone
        expect(Array.from(t.data as Float32Array), name).toEqual(Array.from(castTensor(stored, 'float32').data as Float32Array));
      }
      expect(weights).toBeGreaterThan(10);
      for (const [name, t] of i1.initializers) {
        if (engine.bundle.weights.has(name)) expect(t.data.buffer, name).toBeInstanceOf(SharedArrayBuffer);
      }

      // Memory the graphs' weights take: the tower once, however many graphs are loaded.
      const distinct = new Set<ArrayBufferLike>();
      let held = 0;
      for (const m of [t1, t4, i1]) {
        for (const t of m.initializers.values()) {
          if (distinct.has(t.data.buffer)) continue;
          distinct.add(t.data.buffer);
          held += t.data.byteLength;
        }
      }
      let float32Tower = 0;
      for (const t of engine.bundle.weights.values()) float32Tower += t.dtype === 'float16' ? 2 * t.data.byteLength : t.data.byteLength;
      expect(held).toBeLessThan(1.1 * float32Tower);

      // And the embeddings still come out (the engine's own graphs, on the shared copies).
      const { unit } = await engine.embedText(['a red circle']);
      expect(unit.every(Number.isFinite)).toBe(true);
    } finally {
      await engine.close();
    }
    // Closed, the pool keeps no graph (and so none of their weights).
    expect(engine.pool.loadedKeys).toEqual([]);
  });
});
