// EnginePool under failure and the main thread under load: a graph compiles without stalling the main
// event loop (the pool's thread serializes it), a dead worker thread is replaced (only what was in
// flight on it fails, as retryable `aborted`; its sessions re-open on next use; threads that keep dying
// make the pool refuse work as runtime_unavailable), and close() gives up on a run that does not return.
import { rmSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PRESETS, type ClipArch, expectedTensors } from '../../gpu-worker/engine/clip/arch.ts';
import { textEmbedGraph } from '../../gpu-worker/engine/clip/graphs.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { encodeModel, writeModelFile } from '../../gpu-worker/engine/onnx/codec.ts';
import { numel, tensor } from '../../gpu-worker/engine/onnx/ir.ts';
import type { ModelIR, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { EnginePool } from '../../gpu-worker/engine/runtime/pool.ts';
import { makeTinyBundle, tinyManifest } from '../helpers/bundle.ts';
import { rejection } from '../helpers/errors.ts';
import { slowModel } from '../helpers/models.ts';

const pools: EnginePool[] = [];
const newPool = (...a: ConstructorParameters<typeof EnginePool>): EnginePool => {
  const p = new EnginePool(...a);
  pools.push(p);
  return p;
};
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function waitUntil(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** y = 2·x over float32 [2]. */
function doubleModel(): ModelIR {
  return {
    opset: 17,
    graphName: 'double',
    inputs: [{ name: 'x', dtype: 'float32', shape: [2] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [2] }],
    initializers: new Map([['two', tensor('float32', [], [2])]]),
    nodes: [{ op: 'Mul', name: 'mul', inputs: ['x', 'two'], outputs: ['y'], attrs: {} }],
  };
}
const X = tensor('float32', [2], [1.5, -3]);
const Y = [3, -6];

const N = 512;
const slowInput = (): TensorData => ({ dtype: 'float32', dims: [N, N], data: new Float32Array(N * N).map((_, i) => (i % 5) - 2) });

/** Loads a slow model deepened until one run takes at least `minMs` on this machine; returns its run time. */
async function loadSlow(pool: EnginePool, key: string, minMs: number) {
  for (let depth = 8; ; depth *= 2) {
    const h = await pool.load(`${key}:d${depth}`, slowModel(N, depth));
    const t0 = performance.now();
    await h.run({ x: slowInput() });
    const runMs = performance.now() - t0;
    if (runMs >= minMs || depth >= 1024) return { h, runMs };
    await pool.unload(`${key}:d${depth}`);
  }
}

describe('graph compiles off the main thread', () => {
  /**
   * A bundle whose text tower is big enough that encoding it takes a while (~100 MB of weights: the
   * token embedding alone is 49 408 rows), with a tiny image tower.
   */
  async function mediumTextBundle(): Promise<string> {
    const arch: ClipArch = { ...PRESETS.tiny, textWidth: 384, textHeads: 6, textLayers: 4 };
    const dir = makeTinyBundle('quickgelu');
    dirs.push(dir);
    const tensors = new Map<string, TensorData>();
    let seed = 12345;
    for (const [name, dims] of expectedTensors(arch)) {
      const data = new Float32Array(numel(dims));
      const isLnWeight = /ln_[a-z0-9_]+\.weight$|ln_final\.weight$/.test(name);
      if (isLnWeight) data.fill(1);
      else {
        for (let i = 0; i < data.length; i++) {
          seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
          data[i] = (seed / 2 ** 32 - 0.5) * 0.04;
        }
      }
      tensors.set(name, { dtype: 'float32', dims, data });
    }
    await writeSafetensors(join(dir, 'weights.safetensors'), tensors);
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(tinyManifest('quickgelu', { name: 'medium-text', architecture: arch, embed_dim: arch.embedDim }), null, 2));
    return dir;
  }

  it('the main event loop keeps running while a new text graph is built, encoded and loaded', async () => {
    const dir = await mediumTextBundle();
    const engine = await ClipEngine.open(dir, { threads: 1 });
    try {
      let last = performance.now();
      let maxGap = 0;
      const iv = setInterval(() => {
        const now = performance.now();
        maxGap = Math.max(maxGap, now - last);
        last = now;
      }, 5);
      const t0 = performance.now();
      await engine.embedText(['a red circle']); // compiles the batch-1 text graph
      const compileMs = performance.now() - t0;
      clearInterval(iv);
      maxGap = Math.max(maxGap, performance.now() - last);

      // What the same graph costs to serialize on this machine, on this thread: the stall a compile
      // that encoded here would cause at the least.
      const model = textEmbedGraph(engine.towerSource(), 1);
      const t1 = performance.now();
      encodeModel(model);
      const encodeMs = performance.now() - t1;

      const why = `max gap ${maxGap.toFixed(0)} ms during a ${compileMs.toFixed(0)} ms compile; encoding alone takes ${encodeMs.toFixed(0)} ms here`;
      expect(encodeMs, why).toBeGreaterThan(100); // the graph is big enough for the test to mean something
      expect(maxGap, why).toBeLessThan(encodeMs / 2);
    } finally {
      await engine.close();
    }
  });
});

describe('a dead worker thread is replaced', () => {
  it('after an uncaught error, process.exit or terminate, the next run succeeds on a new thread that re-opens the session', async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const h = await pool.load('double', doubleModel());
    expect(Array.from((await h.run({ x: X })).y.data as Float32Array)).toEqual(Y);
    let restarts = 0;
    for (const how of ['throw', 'exit', 'terminate'] as const) {
      const [before] = pool.threadIds;
      pool.crashWorkerForTest(0, how);
      await waitUntil(() => pool.restarts === restarts + 1, `the ${how} death to be seen`);
      restarts++;
      expect(pool.threadIds[0]).not.toBe(before);
      expect(pool.failure).toBeUndefined();
      // the handle from before the death still works: the new thread opens 'double' on its first run
      expect(Array.from((await h.run({ x: X })).y.data as Float32Array), how).toEqual(Y);
    }
    expect(pool.loadedKeys).toEqual(['double']);
  });

  it('only the run in flight on the dead thread fails, as aborted (retryable); a run on the other thread completes', async () => {
    const pool = newPool({ size: 2, sessionOptions: { intraOpThreads: 1 } });
    const { h } = await loadSlow(pool, 'slow', 300);
    const x0 = slowInput();
    const onFirst = h.run({ x: x0 }); // least busy first: thread 0, then thread 1
    const onSecond = h.run({ x: slowInput() });
    // Thread 1 dies on an uncaught error before it takes the run queued behind the crash.
    pool.crashWorkerForTest(1, 'throw');
    const e = await rejection(onSecond);
    expect(e.code, e.message).toBe('aborted');
    expect(e.message).toMatch(/crashed.*can be retried/);
    expect(Array.from((await onFirst).y.data.subarray(0, 5) as Float32Array)).toEqual(Array.from(x0.data.subarray(0, 5) as Float32Array));
    expect(pool.restarts).toBe(1);
    // both threads serve again, the new one after re-opening the model
    const outs = await Promise.all([1, 2].map(() => h.run({ x: slowInput() })));
    for (const o of outs) expect(Array.from(o.y.data.subarray(0, 5) as Float32Array)).toEqual([-2, -1, 0, 1, 2]);
  });

  it('re-opens every kind of source: bytes (also moved ones), a path, and a graph an engine compiled', async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const tmp = mkdtempSync(join(tmpdir(), 'clipag-healing-'));
    dirs.push(tmp);
    const path = join(tmp, 'double.onnx');
    await writeModelFile(path, doubleModel(), { externalDataThreshold: 0 });
    const moved = new Uint8Array(encodeModel(doubleModel())); // a view on a whole buffer: moved, not copied
    const handles = [
      await pool.load('bytes', encodeModel(doubleModel())),
      await pool.load('moved', moved, {}, { transfer: true }),
      await pool.load('path', path),
    ];
    expect(moved.byteLength).toBe(0);
    const engine = await ClipEngine.open(makeTinyBundle('quickgelu'), { pool });
    try {
      const before = await engine.embedText(['a red circle']);
      pool.crashWorkerForTest(0, 'throw');
      await waitUntil(() => pool.restarts === 1, 'the death to be seen');
      for (const h of handles) expect(Array.from((await h.run({ x: X })).y.data as Float32Array), h.key).toEqual(Y);
      const after = await engine.embedText(['a red circle']);
      expect(Array.from(after.unit)).toEqual(Array.from(before.unit)); // the same graph, re-encoded on the new thread
    } finally {
      await engine.close();
    }
  });

  it('threads that keep dying are not replaced past maxRestarts: the pool refuses work as runtime_unavailable, and still closes', async () => {
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 }, maxRestarts: 1, restartWindowMs: 60_000 });
    try {
      const h = await pool.load('double', doubleModel());
      pool.crashWorkerForTest(0, 'exit');
      await waitUntil(() => pool.restarts === 1, 'the first death to be seen');
      expect(Array.from((await h.run({ x: X })).y.data as Float32Array)).toEqual(Y);
      pool.crashWorkerForTest(0, 'exit');
      await waitUntil(() => pool.failure !== undefined, 'the pool to give up');
      expect(pool.restarts).toBe(1);
      for (const p of [h.run({ x: X }), Promise.resolve().then(() => pool.load('other', doubleModel()))]) {
        const e = await rejection(p);
        expect(e.code).toBe('runtime_unavailable'); // a machine failure: the GPU worker goes unhealthy on it
        expect(e.message).toMatch(/died 2 times within 60 s.*no longer replaces/);
      }
    } finally {
      await pool.close();
    }
  });
});

describe('EnginePool.close', () => {
  it('gives up on a run that does not return within closeTimeoutMs: the run fails as aborted and the threads are let go', async () => {
    const before = EnginePool.openPools;
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 }, closeTimeoutMs: 100 });
    const { h, runMs } = await loadSlow(pool, 'slow', 1_500);
    const running = h.run({ x: slowInput() });
    await new Promise((r) => setTimeout(r, 50)); // the run is inside onnxruntime, which nothing interrupts
    const t0 = performance.now();
    await pool.close();
    const closeMs = performance.now() - t0;
    const e = await rejection(running);
    expect(e.code, e.message).toBe('aborted');
    expect(e.message).toMatch(/closed after waiting 100 ms/);
    // Without the bound close() waits for the whole run.
    expect(closeMs, `close took ${closeMs.toFixed(0)} ms; one run takes ${runMs.toFixed(0)} ms`).toBeLessThan(runMs / 2);
    expect(EnginePool.openPools).toBe(before);
    await expect(h.run({ x: slowInput() })).rejects.toMatchObject({ code: 'aborted' });
    // The thread it let go of ends by itself once onnxruntime returns (this process must not exit before:
    // a thread stopped inside a native call aborts the process).
    expect(pool.runningThreads).toBe(1);
    await waitUntil(() => pool.runningThreads === 0, 'the busy thread to end', 60_000);
  });

  it('within the bound it still drains: a run in flight completes', async () => {
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 }, closeTimeoutMs: 60_000 });
    const { h } = await loadSlow(pool, 'slow', 200);
    const x = slowInput();
    const running = h.run({ x });
    await pool.close();
    expect(Array.from((await running).y.data.subarray(0, 5) as Float32Array)).toEqual(Array.from(x.data.subarray(0, 5) as Float32Array));
  });

  it('refuses options that are not non-negative numbers', () => {
    expect(() => new EnginePool({ closeTimeoutMs: -1 })).toThrow(/closeTimeoutMs/);
    expect(() => new EnginePool({ maxRestarts: 1.5 })).toThrow(/maxRestarts/);
    expect(() => new EnginePool({ restartWindowMs: Number.NaN })).toThrow(/restartWindowMs/);
  });
});
