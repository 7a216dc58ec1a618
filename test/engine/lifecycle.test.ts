// ClipEngine's life cycle: close() against compiles and runs in flight on a shared pool, a second
// close(), a refused open, and the temporary folder of a large graph whose write fails.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import type { ModelIR } from '../../gpu-worker/engine/onnx/ir.ts';
import { EnginePool } from '../../gpu-worker/engine/runtime/pool.ts';
import { synthesize } from '../../gpu-worker/engine/synth/synthesize.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { rejection } from '../helpers/errors.ts';

const dir = makeTinyBundle('quickgelu');
const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
afterAll(async () => {
  await pool.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('ClipEngine.close on a shared pool', () => {
  it('waits for a graph compile in flight: what it loaded is unloaded, and the call is refused as aborted', async () => {
    const engine = await ClipEngine.open(dir, { pool });
    const embedding = engine.embedText(['a red circle']);
    await engine.close();
    expect((await rejection(embedding)).code).toBe('aborted');
    expect(engine.loadedGraphs).toEqual([]);
    expect(pool.loadedKeys).toEqual([]); // nothing of the engine is left in the shared pool
    await expect(engine.embedText(['a red circle'])).rejects.toMatchObject({ code: 'aborted' });
  });

  it('a synthesis closed under it fails as aborted (retryable), not as a missing session (permanent), and leaves no session', async () => {
    const engine = await ClipEngine.open(dir, { pool });
    let closing: Promise<void> | undefined;
    const run = synthesize(
      engine,
      { prompts: [{ text: 'a red circle', weight: 1 }], width: 32, height: 32, seed: 1, init: { kind: 'noise' }, recipe: { steps: 6, globalViews: 2, patchViews: 2, frameEvery: 0 } },
      { onProgress: (p) => void (p.step === 1 && (closing = engine.close())) },
    );
    const e = await rejection(run);
    expect(e.code, e.message).toBe('aborted');
    expect(closing).toBeDefined();
    await closing;
    expect(pool.loadedKeys).toEqual([]);
    expect(engine.leasedGraphs).toEqual([]);
  });

  it('a second close() is the first one: it resolves only once the engine has released everything', async () => {
    for (const shared of [true, false]) {
      const engine = await ClipEngine.open(dir, { threads: 1, pool: shared ? pool : undefined });
      await engine.embedText(['a red circle']);
      const log: string[] = [];
      const first = engine.close();
      const second = engine.close();
      expect(second).toBe(first);
      await Promise.all([first.then(() => log.push('first')), second.then(() => log.push('second'))]);
      expect(log).toEqual(['first', 'second']);
      if (shared) expect(pool.loadedKeys).toEqual([]);
      await expect(engine.close()).resolves.toBeUndefined();
    }
  });
});

describe('ClipEngine.open', () => {
  it('a refused option starts no pool (no worker thread is left behind)', async () => {
    const before = EnginePool.openPools;
    for (let i = 0; i < 2; i++) {
      await expect(ClipEngine.open(dir, { threads: 1, maxLeasedGraphs: 0 })).rejects.toMatchObject({ code: 'invalid_input', message: expect.stringMatching(/maxLeasedGraphs/) });
      await expect(ClipEngine.open(dir, { threads: 1, inlineGraphLimitBytes: Number.NaN })).rejects.toMatchObject({ code: 'invalid_input' });
    }
    expect(EnginePool.openPools).toBe(before);
    // and a good open still works and is counted until closed
    const engine = await ClipEngine.open(dir, { threads: 1 });
    expect(EnginePool.openPools).toBe(before + 1);
    await engine.close();
    expect(EnginePool.openPools).toBe(before);
  });
});

describe('large graphs through a temporary file', () => {
  it('a failed write of the .onnx removes its temporary folder', async () => {
    const previous = process.env.TMPDIR;
    const tmp = mkdtempSync(join(tmpdir(), 'clipag-lifecycle-'));
    const engine = await ClipEngine.open(dir, { pool, inlineGraphLimitBytes: 0 });
    try {
      process.env.TMPDIR = tmp; // os.tmpdir() reads it on every call
      // A weight whose data does not match its dims: writeModelFile fails after it has created the folder
      // and opened the side file, as a full disk would.
      const broken = (): ModelIR => ({
        opset: 17,
        graphName: 'broken',
        inputs: [{ name: 'x', dtype: 'float32', shape: [2] }],
        outputs: [{ name: 'y', dtype: 'float32', shape: [2] }],
        initializers: new Map([['w', { dtype: 'float32', dims: [2], data: new Float32Array(3) }]]),
        nodes: [{ op: 'Mul', name: 'mul', inputs: ['x', 'w'], outputs: ['y'], attrs: {} }],
      });
      for (let i = 0; i < 2; i++) await expect(engine.graph('broken', broken)).rejects.toBeInstanceOf(EngineError);
      expect(readdirSync(tmp)).toEqual([]);
      // the path still works, and leaves nothing either
      await engine.embedText(['a red circle']);
      expect(readdirSync(tmp)).toEqual([]);
    } finally {
      if (previous === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = previous;
      await engine.close();
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
