// Warm-up: a worker loads its default model and compiles the graphs a job uses before it polls, so no
// customer's first job pays (and is billed for) the cold start. The real engine on the tiny model, the
// real local queue and stores.
import { afterEach, describe, expect, it } from 'vitest';
import { startWorker, type RunningWorker } from '../../gpu-worker/main.ts';
import { defaultSideFor } from '../../shared/schemas/generation.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { synthesize, warmUp } from '../../gpu-worker/engine/synth/synthesize.ts';
import { createWorker, type Logger, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { PROMPT_POLICY_KEY } from '../../shared/prompt-policy.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { FAST_RECIPE, makeEnv, makeModelsDir, PRIOR, submit, waitFor, waitForStatus } from './helpers.ts';

const running: RunningWorker[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
});

describe('warm-up', () => {
  it("compiles every graph a one-prompt job of its size uses, every coarse-to-fine stage included: the first job compiles nothing", async () => {
    const engine = await ClipEngine.open(makeTinyBundle('quickgelu', { prior: PRIOR }), { threads: 2 });
    try {
      expect(engine.loadedGraphs).toEqual([]);
      await warmUp(engine, FAST_RECIPE);
      const warmed = [...engine.loadedGraphs].sort();
      expect(warmed.length).toBeGreaterThanOrEqual(3); // text, gradient, image graphs
      await synthesize(engine, { prompts: [{ text: 'a red apple', weight: 1 }], width: engine.imageSize, height: engine.imageSize, seed: 3, init: { kind: 'gmm' }, recipe: { ...FAST_RECIPE, steps: 3 } });
      expect([...engine.loadedGraphs].sort()).toEqual(warmed);
      // Another size has its own gradient graphs; warmed for it, a job of that size compiles none either.
      await warmUp(engine, FAST_RECIPE, 96);
      const warmed96 = [...engine.loadedGraphs].sort();
      expect(warmed96.length).toBeGreaterThan(warmed.length);
      await synthesize(engine, { prompts: [{ text: 'a red apple', weight: 1 }], width: 96, height: 96, seed: 3, init: { kind: 'gmm' }, recipe: { ...FAST_RECIPE, steps: 12 } });
      expect([...engine.loadedGraphs].sort()).toEqual(warmed96);
      // A negative prompt takes a second prompt slot: that gradient graph is compiled on first use.
      await synthesize(engine, { prompts: [{ text: 'a red apple', weight: 1 }, { text: 'blurry', weight: -0.5 }], width: engine.imageSize, height: engine.imageSize, seed: 3, init: { kind: 'gmm' }, recipe: { ...FAST_RECIPE, steps: 1 } });
      expect(engine.loadedGraphs.length).toBeGreaterThan(warmed.length);
    } finally {
      await engine.close();
    }
  });

  it('the worker warms its default model before it polls; its first job compiles nothing', async () => {
    const env = await makeEnv();
    const models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 2 });
    const events: WorkerEvent[] = [];
    const r = startWorker({ queue: env.queue, jobs: env.jobs, blobs: env.blobs, config: env.config, models, recipeOverrides: FAST_RECIPE, worker: { progressIntervalMs: 0 }, log: silentLog(), onEvent: (e) => events.push(e) });
    running.push(r);
    try {
      const states = () => events.filter((e): e is Extract<WorkerEvent, { type: 'state' }> => e.type === 'state').map((e) => e.state);
      await waitFor('the first poll', () => states().includes('polling'));
      expect(states().slice(0, 2)).toEqual(['warming', 'polling']);
      // Warmed before any job: the default model is open with its graphs compiled.
      const engine = await models.engine('tiny');
      const warmed = [...engine.loadedGraphs].sort();
      expect(warmed.length).toBeGreaterThanOrEqual(3);
      // A request that names no size, as the API fills it in: the model's own size as a valid side
      // (64×64 for this 32 px model: coarse to fine).
      const side = defaultSideFor(engine.imageSize);
      const job = await submit(env, { steps: 6, width: side, height: side });
      const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
      expect([done.status, done.spec.width]).toEqual(['succeeded', 64]);
      expect([...engine.loadedGraphs].sort()).toEqual(warmed); // the first job compiled nothing
    } finally {
      await r.stop();
      await models.close();
    }
  });

  it('a warm-up that fails (the default model cannot load) is logged, and the worker serves jobs all the same', async () => {
    const env = await makeEnv({ CLIPAG_DEFAULT_MODEL: 'no-such-model' });
    const models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 2 });
    const logs: string[] = [];
    const r = startWorker({ queue: env.queue, jobs: env.jobs, blobs: env.blobs, config: env.config, models, recipeOverrides: FAST_RECIPE, worker: { progressIntervalMs: 0 }, log: silentLog(logs) });
    running.push(r);
    try {
      const job = await submit(env, { steps: 2, model: 'tiny' });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
      // An unknown default model: no cold start to pay, its requests refused until it exists (a config review).
      expect(logs).toContainEqual(expect.stringMatching(/^warn warm-up failed: the default model does not exist; requests that name no model are refused until it does/));
      expect(logs).not.toContainEqual(expect.stringMatching(/pays the cold start/));
    } finally {
      await r.stop();
      await models.close();
    }
  });
});

describe('a warm-up that does not end', () => {
  const hanging = (seen: { signal?: AbortSignal }) => (signal: AbortSignal) => {
    seen.signal = signal;
    return new Promise<void>(() => undefined); // a model download that never answers
  };
  const done = async () => ({ images: [], aborted: false, stepsDone: 1, totalSteps: 1, encoderPasses: 0, timingsMs: { total: 0, sessionRun: 0, optimize: 0 } });

  it('stop() ends it at once (its signal aborts) and the worker stops', async () => {
    const env = await makeEnv();
    const seen: { signal?: AbortSignal } = {};
    const states: string[] = [];
    const worker = createWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: { run: done },
      config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1 },
      warmUp: hanging(seen), log: silentLog(), onEvent: (e) => e.type === 'state' && states.push(e.state),
    });
    worker.start();
    await waitFor('warming', () => worker.state === 'warming');
    const t0 = Date.now();
    await worker.stop();
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(seen.signal?.aborted).toBe(true);
    expect(states).toEqual(['warming', 'draining', 'stopped']);
  });

  it('past its limit the worker polls without it, and serves jobs', async () => {
    const env = await makeEnv();
    const seen: { signal?: AbortSignal } = {};
    const logs: string[] = [];
    const worker = createWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: { run: done },
      config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, warmUpTimeoutMs: 200 },
      warmUp: hanging(seen), log: silentLog(logs),
    });
    worker.start();
    try {
      const job = await submit(env, { steps: 1 });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
      expect(logs).toContainEqual(expect.stringMatching(/^warn warm-up took longer than its limit; polling without it \{"limitMs":200\}/));
      expect(seen.signal?.aborted).toBe(true);
    } finally {
      await worker.stop();
    }
  });
});

describe('what the warm-up covers besides the graphs', () => {
  it("a worker's step cap: only the stages a capped job runs are compiled", async () => {
    const engine = await ClipEngine.open(makeTinyBundle('quickgelu', { prior: PRIOR }), { threads: 2 });
    try {
      await warmUp(engine, FAST_RECIPE, 224, { maxSteps: 1 });
      const steps = engine.loadedGraphs.filter((k) => k.includes(':step:'));
      expect(steps).toHaveLength(1); // one step runs the last stage only
      expect(steps[0]).toContain(':step:224x224:');
    } finally {
      await engine.close();
    }
  });

  it("the output check's concepts are embedded during the warm-up: the first job embeds its prompt only", async () => {
    const env = await makeEnv();
    const policy = { version: 1, rules: [], output_rules: [{ id: 'r', category: 'copyright', action: 'flag', message: 'm', concepts: ['a green star', 'a blue ring'], above_prompt_by: 0.5 }] };
    await env.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(policy)));
    const models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 2 });
    const engine = await models.engine('tiny');
    const embedded: string[] = [];
    const embedText = engine.embedText.bind(engine);
    engine.embedText = async (texts) => (embedded.push(...texts), embedText(texts));
    const r = startWorker({ queue: env.queue, jobs: env.jobs, blobs: env.blobs, config: env.config, models, recipeOverrides: FAST_RECIPE, worker: { progressIntervalMs: 0 }, log: silentLog() });
    running.push(r);
    try {
      await waitFor('the first poll', () => r.worker.state === 'polling');
      expect(embedded).toEqual(expect.arrayContaining(['a green star', 'a blue ring']));
      embedded.length = 0;
      const job = await submit(env, { prompt: 'a photo of a cat', steps: 2, width: undefined, height: undefined });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
      expect(embedded).toEqual(['a photo of a cat']);
    } finally {
      await r.stop();
      await models.close();
    }
  });
});

function silentLog(into: string[] = []): Logger {
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void into.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
