// EnginePool under failure and the main thread under load: a graph compiles without stalling the main
// event loop (the pool's thread serializes it), a dead worker thread is replaced (only what was in
// flight on it fails, as retryable `aborted`; its sessions re-open on next use; threads that keep dying
// make the pool refuse work as runtime_unavailable), and close() gives up on a run that does not return.
import { spawn } from 'node:child_process';
import { readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
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
  it('gives up on a run that does not return within closeTimeoutMs: the run fails as aborted, and the busy thread ends once its run returns', async () => {
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

  it('a closed pool whose threads all ended is not kept for busyThreads (nothing grows with pools opened and closed)', async () => {
    const before = EnginePool.trackedPools;
    for (let i = 0; i < 3; i++) await new EnginePool({ size: 1 }).close();
    expect(EnginePool.trackedPools).toBe(before);
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

/** The bytes of every file in the folders under `dir`. */
function bytesUnder(dir: string): number {
  let n = 0;
  for (const d of readdirSync(dir)) for (const f of readdirSync(join(dir, d))) n += statSync(join(dir, d, f)).size;
  return n;
}

/** A graph with `count` [n, n] weights (4·n² bytes each): loaded through a temporary file when over the inline limit. */
function manyWeights(n: number, count: number): ModelIR {
  const initializers = new Map<string, TensorData>();
  const nodes = [];
  for (let i = 0; i < count; i++) {
    initializers.set(`w${i}`, { dtype: 'float32', dims: [n, n], data: new Float32Array(new SharedArrayBuffer(4 * n * n)).fill(1 / n) });
    nodes.push({ op: 'MatMul', name: `mm${i}`, inputs: [i === 0 ? 'x' : `h${i}`, `w${i}`], outputs: [i === count - 1 ? 'y' : `h${i + 1}`], attrs: {} });
  }
  return { opset: 17, graphName: 'many', inputs: [{ name: 'x', dtype: 'float32', shape: [1, n] }], outputs: [{ name: 'y', dtype: 'float32', shape: [1, n] }], initializers, nodes };
}

describe("a large graph's temporary file", () => {
  // 128 MiB in 32 weights: the worker writes it in many steps, between which it takes messages.
  const big = manyWeights(1024, 32);

  for (const how of ['close', 'crash'] as const) {
    it(`is removed when its thread ends while writing it (${how})`, async () => {
      const tempDir = mkdtempSync(join(tmpdir(), 'clipag-healing-tmp-'));
      dirs.push(tempDir);
      const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 }, closeTimeoutMs: 0 });
      const loading = pool.load('big', big, {}, { inlineLimitBytes: 0, tempDir });
      loading.catch(() => undefined);
      await waitUntil(() => bytesUnder(tempDir) > 0, 'the worker to write the file', 60_000);
      if (how === 'close') await pool.close();
      else pool.crashWorkerForTest(0, 'exit');
      const e = await rejection(loading);
      expect(e.code, e.message).toBe('aborted');
      // The thread has ended (the replacement, after a crash, is not the one that wrote)...
      await waitUntil(() => (how === 'close' ? pool.runningThreads === 0 : pool.restarts === 1), 'the writing thread to end');
      // ...and nothing of its file is left: the pool made the folder, and removes it once the thread ended.
      await waitUntil(() => readdirSync(tempDir).length === 0, `the temporary folder to go (left: ${readdirSync(tempDir).join(', ')})`, 5_000);
      if (how === 'crash') {
        // The pool still loads large graphs through a temporary file, and leaves nothing either.
        const h = await pool.load('big2', manyWeights(256, 2), {}, { inlineLimitBytes: 0, tempDir });
        expect((await h.run({ x: { dtype: 'float32', dims: [1, 256], data: new Float32Array(256).fill(1) } })).y.data.length).toBe(256);
        await waitUntil(() => readdirSync(tempDir).length === 0, 'the temporary folder of a load that succeeded to go', 5_000);
      }
    });
  }
});

interface ChildEnd {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
  why: string;
  /** ms from the child's line (printed as it starts to end) to its exit. */
  endMs: number;
  result: { run?: string; runningThreads?: number; busyThreads?: number; runMs?: number };
}

/** Runs pool-exit-child.ts: a run of at least `minRunMs` given up on by close(), then the end `how`. */
async function childEnd(minRunMs: number, how: string): Promise<ChildEnd> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./pool-exit-child.ts', import.meta.url)), String(minRunMs), how], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let lineAt = 0;
  child.stdout.on('data', (d) => {
    out += d;
    if (!lineAt && out.includes('\n')) lineAt = performance.now();
  });
  child.stderr.on('data', (d) => (err += d));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  const endMs = performance.now() - lineAt;
  const why = `code ${code}, signal ${signal}; ${endMs.toFixed(0)} ms after its line; stdout ${out.trim()}; stderr ${err.trim().slice(-500)}`;
  return { code, signal, out, err, why, endMs, result: JSON.parse(out.trim().split('\n').at(-1) ?? '{}') };
}

describe('EnginePool.close and the end of the process', () => {
  it('a process whose pool gave up on a run inside onnxruntime ends by itself, cleanly (exit code 0, not an abort)', async () => {
    const { code, signal, err, why, result } = await childEnd(600, 'natural');
    // close() gave up on the run (it returned while the thread was still inside onnxruntime)...
    expect(result.run, why).toBe('aborted');
    expect(result.runningThreads, why).toBe(1);
    // ...and the process still ended cleanly once the thread returned and took its exit request.
    expect(signal, why).toBeNull();
    expect(code, why).toBe(0);
    expect(err, why).not.toMatch(/terminate called/);
  });

  // process.exit() joins every worker thread: with one inside onnxruntime it waits for the call, then
  // aborts ("terminate called after throwing an instance of 'Napi::Error'", exit code 134). bin/clipag.ts
  // and gpu-worker/main.ts end through endProcess instead.
  it('endProcess waits for such a run to return within its grace, then exits with the code asked, cleanly', async () => {
    const { code, signal, err, why, result } = await childEnd(600, 'end:60000');
    expect(result.run, why).toBe('aborted');
    expect(result.busyThreads, why).toBe(1); // the run was still inside onnxruntime when endProcess was called
    expect(signal, why).toBeNull();
    expect(code, why).toBe(3);
    expect(err, why).not.toMatch(/terminate called|engine thread/);
  });

  it('endProcess past its grace (a run that does not return) says why and ends the process at once, without waiting for the call or aborting', async () => {
    const { signal, err, why, result, endMs } = await childEnd(2_000, 'end:100');
    expect(result.run, why).toBe('aborted');
    expect(result.busyThreads, why).toBe(1);
    expect(err, why).toMatch(/1 engine thread\(s\) still inside a native call.*SIGKILL.*code 3/);
    expect(err, why).not.toMatch(/terminate called/);
    expect(signal, why).toBe('SIGKILL');
    // It did not wait for the run (at least 2 s, of which 0.1 s had passed when the line was printed).
    expect(endMs, why).toBeLessThan(Math.max(1_000, (result.runMs ?? 0) / 2));
  });
});

describe('ClipEngine.close on a shared pool, bounded', () => {
  it('stops waiting for a run that does not return after closeTimeoutMs: the run fails as aborted, the graphs are unloaded', async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    expect(pool.closeTimeoutMs).toBe(30_000); // the engine's default bound
    const engine = await ClipEngine.open(makeTinyBundle('quickgelu'), { pool, closeTimeoutMs: 100 });
    await engine.embedText(['a red circle']);
    // A slow graph of this engine, deepened until one run takes a while.
    let depth = 16;
    let h = await engine.graph(`slow:${depth}`, () => slowModel(N, depth));
    let runMs = 0;
    for (;;) {
      const t0 = performance.now();
      await h.run({ x: slowInput() });
      runMs = performance.now() - t0;
      if (runMs >= 1_500 || depth >= 1024) break;
      depth *= 2;
      const d = depth;
      h = await engine.graph(`slow:${d}`, () => slowModel(N, d));
    }
    const running = h.run({ x: slowInput() });
    await new Promise((r) => setTimeout(r, 50)); // inside onnxruntime
    const t0 = performance.now();
    await engine.close();
    const closeMs = performance.now() - t0;
    const e = await rejection(running);
    expect(e.code, e.message).toBe('aborted');
    expect(e.message).toMatch(/engine is closed.*waiting 100 ms/);
    expect(closeMs, `close took ${closeMs.toFixed(0)} ms; one run takes ${runMs.toFixed(0)} ms`).toBeLessThan(runMs / 2);
    expect(engine.loadedGraphs).toEqual([]);
    expect(pool.loadedKeys).toEqual([]); // unloaded: each session is released once the run on it returns
    // The pool serves on: the thread takes the next work once the run has returned.
    const other = await pool.load('double', doubleModel());
    expect(Array.from((await other.run({ x: X })).y.data as Float32Array)).toEqual(Y);
  });

  it('refuses a closeTimeoutMs that is not a non-negative number', async () => {
    await expect(ClipEngine.open(makeTinyBundle('quickgelu'), { closeTimeoutMs: -1 })).rejects.toMatchObject({ code: 'invalid_input', message: expect.stringMatching(/closeTimeoutMs/) });
  });
});

describe('unload against loads and runs in flight', () => {
  it('a run waiting for its key to re-open on a replacement thread is not failed by an unload issued meanwhile', async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const h = await pool.load('slow', slowModel(256, 64));
    pool.crashWorkerForTest(0, 'throw');
    await waitUntil(() => pool.restarts === 1, 'the death to be seen');
    const x = slowInput256();
    const run = h.run({ x }); // re-opens 'slow' on the new thread first
    const unloaded = pool.unload('slow');
    // The run completes (it was issued before the unload); it does not find its session disposed.
    const out = await run.catch((err: EngineError) => err);
    expect(out instanceof EngineError ? `${out.code}: ${out.message}` : 'ok').toBe('ok');
    expect(Array.from((out as Record<string, TensorData>).y.data.subarray(0, 5) as Float32Array)).toEqual(Array.from(x.data.subarray(0, 5) as Float32Array));
    await unloaded;
    expect(pool.loadedKeys).toEqual([]);
    const after = await rejection(h.run({ x: slowInput256() }));
    expect(after.code).toBe('invalid_input'); // unloaded: a use after it is the caller's mistake
  });

  it('a run issued just before an unload completes on the session (the unload waits for it)', async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const h = await pool.load('slow', slowModel(256, 64));
    const x = slowInput256();
    const run = h.run({ x });
    const unloaded = pool.unload('slow');
    const out = await run.catch((err: EngineError) => err);
    expect(out instanceof EngineError ? `${out.code}: ${out.message}` : 'ok').toBe('ok');
    await unloaded;
  });

  it("load, unload while it loads, load again: the unload removes only the first load's session", async () => {
    const pool = newPool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const thread = (pool as unknown as { workers: Array<{ worker: { postMessage: (m: { type: string }, t?: unknown) => void } }> }).workers[0]!.worker;
    const sent: string[] = [];
    const post = thread.postMessage.bind(thread);
    thread.postMessage = (m, t) => {
      sent.push(m.type);
      return post(m, t as never);
    };
    const first = pool.load('k', doubleModel());
    const unloaded = pool.unload('k');
    const second = pool.load('k', doubleModel());
    const h = await second;
    await unloaded;
    await first;
    expect(pool.loadedKeys).toEqual(['k']);
    expect(sent).toEqual(['load', 'load', 'unload']);
    // The second load's session is there: the run goes straight to it, without opening the key again.
    expect(Array.from((await h.run({ x: X })).y.data as Float32Array)).toEqual(Y);
    expect(sent).toEqual(['load', 'load', 'unload', 'run']);
  });
});

function slowInput256(): TensorData {
  return { dtype: 'float32', dims: [256, 256], data: new Float32Array(256 * 256).map((_, i) => (i % 7) - 3) };
}
