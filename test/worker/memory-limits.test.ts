// The worker's memory limits: idle step graphs per model (CLIPAG_MAX_LEASED_GRAPHS) and models open at
// once (CLIPAG_MAX_OPEN_MODELS), from the config through the model registry to the engines.
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EnginePool } from '../../gpu-worker/engine/runtime/pool.ts';
import { synthesize } from '../../gpu-worker/engine/synth/synthesize.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { parseConfig } from '../../shared/config.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { rejection } from '../helpers/errors.ts';

const a = makeTinyBundle('quickgelu');
const b = makeTinyBundle('quickgelu');
/** A bundle that cannot open: its manifest is not JSON. */
const broken = makeTinyBundle('quickgelu');
writeFileSync(join(broken, 'manifest.json'), 'not json');
afterAll(() => {
  for (const d of [a, b, broken]) rmSync(d, { recursive: true, force: true });
});

const request = (width: number, height: number) => ({
  prompts: [{ text: 'a red circle', weight: 1 }], width, height, seed: 1, init: { kind: 'noise' as const },
  recipe: { steps: 1, globalViews: 2, patchViews: 2, initSamples: 8, frameEvery: 0 },
});
/** Lets the microtasks a job's done() starts (the close of an engine it let go) run. */
const settle = () => new Promise((r) => setImmediate(r));

describe('config', () => {
  it('CLIPAG_MAX_LEASED_GRAPHS (default 8) and CLIPAG_MAX_OPEN_MODELS (default 2) are positive integers', () => {
    expect(parseConfig({})).toMatchObject({ maxLeasedGraphs: 8, maxOpenModels: 2 });
    expect(parseConfig({ CLIPAG_MAX_LEASED_GRAPHS: '1', CLIPAG_MAX_OPEN_MODELS: '5' })).toMatchObject({ maxLeasedGraphs: 1, maxOpenModels: 5 });
    for (const bad of ['0', '-1', '1.5', 'many']) {
      expect(() => parseConfig({ CLIPAG_MAX_LEASED_GRAPHS: bad })).toThrow(/CLIPAG_MAX_LEASED_GRAPHS/);
      expect(() => parseConfig({ CLIPAG_MAX_OPEN_MODELS: bad })).toThrow(/CLIPAG_MAX_OPEN_MODELS/);
    }
  });

  it('the registry refuses a limit that is not a positive integer, before opening anything', () => {
    for (const field of ['maxLeasedGraphs', 'maxOpenModels'] as const) {
      expect(() => createModelRegistry({ bundles: { a }, [field]: 0 })).toThrow(expect.objectContaining({ code: 'invalid_input', message: expect.stringContaining(field) }));
    }
  });
});

describe('the model registry', () => {
  it('passes maxLeasedGraphs to its engines: one idle step graph is kept, not eight', async () => {
    const models = createModelRegistry({ bundles: { a }, threads: 1, maxLeasedGraphs: 1 });
    try {
      for (const [w, h] of [[32, 32], [32, 24]]) {
        const held = await models.use('a');
        try {
          await synthesize(held.engine, request(w!, h!));
        } finally {
          held.done();
        }
      }
      expect((await models.engine('a')).leasedGraphs).toHaveLength(1);
    } finally {
      await models.close();
    }
  });

  it('past maxOpenModels closes the least recently used engine no job holds; a later use opens it again', async () => {
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const models = createModelRegistry({ bundles: { a, b }, pool, maxOpenModels: 1 });
    try {
      const first = await models.use('a');
      const engineA = first.engine;
      await engineA.embedText(['a red circle']);
      first.done();
      const second = await models.use('b');
      await second.engine.embedText(['a red circle']);
      // a's engine was closed (not merely idle): it refuses work, and none of its sessions is left in the pool.
      expect((await rejection(engineA.embedText(['a red circle']))).code).toBe('aborted');
      await engineA.close(); // the registry's close, already under way: waits for it
      expect(engineA.loadedGraphs).toEqual([]);
      expect(pool.loadedKeys.sort()).toEqual([...second.engine.loadedGraphs].sort());
      second.done();
      await settle();

      const again = await models.use('a');
      expect(again.engine).not.toBe(engineA);
      expect((await again.engine.embedText(['a red circle'])).unit).toHaveLength(engineA.embedDim);
      again.done();
    } finally {
      await models.close();
      await pool.close();
    }
  });

  it('a model that fails to open does not close another model\'s engine', async () => {
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const models = createModelRegistry({ bundles: { a, broken }, pool, maxOpenModels: 1 });
    try {
      const jobA = await models.use('a');
      const engineA = jobA.engine;
      await engineA.embedText(['a red circle']);
      jobA.done();
      await rejection(models.use('broken'));
      await settle();
      // still the same open engine: no warm-up paid again for a bundle that never opened
      expect((await engineA.embedText(['a red circle'])).unit).toHaveLength(engineA.embedDim);
      const again = await models.use('a');
      expect(again.engine).toBe(engineA);
      again.done();
    } finally {
      await models.close();
      await pool.close();
    }
  });

  it('an engine a job holds stays open past the limit, and closes once the job is done', async () => {
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    const models = createModelRegistry({ bundles: { a, b }, pool, maxOpenModels: 1 });
    try {
      const jobA = await models.use('a');
      const jobB = await models.use('b');
      await jobA.engine.embedText(['a red circle']); // still open: its job holds it
      jobA.done();
      await settle();
      expect((await rejection(jobA.engine.embedText(['a red circle']))).code).toBe('aborted');
      await jobB.engine.embedText(['a red circle']); // b's job holds b
      jobB.done();
    } finally {
      await models.close();
      await pool.close();
    }
  });
});
