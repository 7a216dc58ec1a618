// The synthesizer port's spec → engine mapping and the model registry (real bundles, real engine).
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { createModelRegistry, scanModelsDir } from '../../gpu-worker/models.ts';
import { NEGATIVE_PROMPT_WEIGHT, clipScore, createEngineSynthesizer, toSynthRequests } from '../../gpu-worker/worker/synthesizer.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { imageSeed } from '../../shared/schemas/generation.ts';
import { classifyError, jobErrorOf } from '../../gpu-worker/worker/errors.ts';
import { NonRetryableError, PreconditionFailedError, RetryableError, ValidationError } from '../../shared/errors.ts';
import { makeModelsDir } from './helpers.ts';

/** A registry serving the tiny reference CLIP, without a prior, as model "bare"; closed and removed after `run`. */
async function withBareModel(options: { disablePrepacking?: boolean }, run: (models: ReturnType<typeof createModelRegistry>) => Promise<void>): Promise<void> {
  const dir = makeTinyBundle('quickgelu');
  const models = createModelRegistry({ bundles: { bare: dir }, threads: 1, ...options });
  try {
    await run(models);
  } finally {
    await models.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const spec = (input: Record<string, unknown>) => GenerationSpec.parse({ prompt: 'a cat', model: 'toy', ...input });

describe('toSynthRequests', () => {
  it('n requests with seeds seed+i, the negative prompt at −0.5, steps from the spec over the recipe overrides', () => {
    const reqs = toSynthRequests({ id: 'job1', owner: 'o', spec: spec({ n: 3, seed: 0xffffffff, negative_prompt: 'blurry', steps: 9, width: 96, height: 64 }) }, { kind: 'noise' }, { globalViews: 4, steps: 100 });
    expect(reqs.map((r) => r.seed)).toEqual([0xffffffff, 0, 1]);
    expect(reqs[0].prompts).toEqual([{ text: 'a cat', weight: 1 }, { text: 'blurry', weight: NEGATIVE_PROMPT_WEIGHT }]);
    expect(reqs[0].recipe).toEqual({ globalViews: 4, steps: 9 });
    expect([reqs[0].width, reqs[0].height]).toEqual([96, 64]);
  });

  it('the negative prompt pulls −0.5 of the positives however they are scaled (the engine divides by their total)', () => {
    const weights = (prompts: { text: string; weight: number }[]) =>
      toSynthRequests({ id: 'j', owner: 'o', spec: spec({ prompt: undefined, prompts, negative_prompt: 'blurry' }) }, { kind: 'noise' })[0].prompts.map((p) => p.weight);
    const one = weights([{ text: 'a', weight: 1 }]);
    const ten = weights([{ text: 'a', weight: 10 }]);
    const mixed = weights([{ text: 'a', weight: 3 }, { text: 'b', weight: 1 }, { text: 'c', weight: -1 }]);
    // what the engine uses: each weight over the positive total
    expect(one.at(-1)! / 1).toBeCloseTo(NEGATIVE_PROMPT_WEIGHT, 12);
    expect(ten.at(-1)! / 10).toBeCloseTo(NEGATIVE_PROMPT_WEIGHT, 12);
    expect(mixed.at(-1)! / 4).toBeCloseTo(NEGATIVE_PROMPT_WEIGHT, 12);
    expect(mixed.slice(0, 3)).toEqual([3, 1, -1]); // the caller's own weights pass through
  });

  it('weighted prompts pass through; a missing seed is derived from the job id (same job, same seed)', () => {
    const s = spec({ prompt: undefined, prompts: [{ text: 'a', weight: 2 }, { text: 'b', weight: -1 }] });
    const a = toSynthRequests({ id: 'job-a', owner: 'o', spec: s }, { kind: 'gmm' });
    expect(a[0].prompts).toEqual([{ text: 'a', weight: 2 }, { text: 'b', weight: -1 }]);
    expect(imageSeed('job-a', s, 0)).toBe(a[0].seed);
    expect(imageSeed('job-b', s, 0)).not.toBe(a[0].seed);
    expect(Number.isInteger(a[0].seed) && a[0].seed >= 0 && a[0].seed <= 0xffffffff).toBe(true);
    // FNV-1a of the id, as every earlier version derived it: a redelivered old job redoes its image.
    expect(imageSeed('job-a', s, 0)).toBe(0xdfc1eb26);
    // Image i runs with seed + i, wrapping at 2³².
    const n3 = toSynthRequests({ id: 'job-c', owner: 'o', spec: { ...s, n: 3, seed: 0xfffffffe } }, { kind: 'gmm' });
    expect(n3.map((r) => r.seed)).toEqual([0xfffffffe, 0xffffffff, 0]);
  });

  it('clip_score is the weighted mean cosine over positive prompts', () => {
    expect(clipScore([{ text: 'a', weight: 3, cosine: 0.3 }, { text: 'b', weight: 1, cosine: 0.1 }, { text: 'n', weight: -0.5, cosine: 0.9 }])).toBeCloseTo(0.25, 12);
  });
});

describe('the engine synthesizer', () => {
  it('a model shipped without a GMM prior starts the default "gmm" request from noise, and the job says so', async () => {
    await withBareModel({}, async (models) => {
      const synth = createEngineSynthesizer({ models, blobs: undefined as never, recipeOverrides: { globalViews: 2, patchViews: 0, frameEvery: 0 } });
      const out = await synth.run({ id: 'job1', owner: 'acct_a', spec: GenerationSpec.parse({ prompt: 'a cat', model: 'bare', width: 64, height: 64, steps: 2 }) });
      expect(out.images).toHaveLength(1);
      expect(out.warnings).toContainEqual(expect.stringMatching(/^model bare ships no GMM prior: the image started from noise/));
    });
  });
});

describe('the model registry without weight prepacking', () => {
  it('opens and runs a model with session.disable_prepacking (CLIPAG_DISABLE_PREPACKING)', async () => {
    await withBareModel({ disablePrepacking: true }, async (models) => {
      const engine = await models.engine('bare');
      const { unit } = await engine.embedText(['a red circle']);
      expect(unit.length).toBeGreaterThan(0);
      // The setting reaches the pool every session opens from (runtime.test.ts: it maps to session.disable_prepacking = 1).
      expect(engine.pool.options.disablePrepacking).toBe(true);
    });
    await withBareModel({}, async (models) => expect((await models.engine('bare')).pool.options.disablePrepacking).toBeUndefined());
  });
});

describe('retry classes', () => {
  it('engine request/bundle errors are permanent; runtime errors, storage hiccups and lost races retry', () => {
    expect(classifyError(new EngineError('invalid_input', 'x'))).toBe('permanent');
    expect(classifyError(new EngineError('invalid_model', 'x'))).toBe('permanent');
    expect(classifyError(new EngineError('runtime_failed', 'x'))).toBe('retryable');
    expect(classifyError(new RetryableError('x'))).toBe('retryable');
    expect(classifyError(new PreconditionFailedError('x'))).toBe('retryable');
    expect(classifyError(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe('retryable');
    expect(classifyError(new ValidationError('x'))).toBe('permanent');
    expect(classifyError(new TypeError('bug'))).toBe('permanent');
  });
  it('job errors keep engine and 4xx messages, never internal ones', () => {
    expect(jobErrorOf(new EngineError('invalid_input', 'bad png'))).toEqual({ code: 'invalid_input', message: 'bad png' });
    expect(jobErrorOf(new NonRetryableError('secret path /x'))).toEqual({ code: 'internal_error', message: 'internal error while running the job' });
    expect(jobErrorOf(new Error('stack-y'))).toEqual({ code: 'internal_error', message: 'internal error while running the job' });
  });
});

describe('model registry', () => {
  it('finds models/<name>/manifest.json folders, opens each engine once, refuses unknown names', async () => {
    const dir = makeModelsDir();
    mkdirSync(join(dir, 'not-a-model'));
    writeFileSync(join(dir, 'README.md'), 'x');
    // Another kind of bundle (the toy judge's manifest) is no model; a manifest that does not read still is one (the worker says what is wrong).
    mkdirSync(join(dir, 'a-judge'));
    writeFileSync(join(dir, 'a-judge', 'manifest.json'), JSON.stringify({ format: 'clipag-toy-judge', format_version: 1 }));
    mkdirSync(join(dir, 'broken'));
    writeFileSync(join(dir, 'broken', 'manifest.json'), '{ not json');
    expect(Object.keys(scanModelsDir(dir))).toEqual(['broken', 'tiny']);
    rmSync(join(dir, 'broken'), { recursive: true });
    const reg = createModelRegistry({ modelsDir: dir, threads: 1 });
    try {
      expect(reg.list().map((m) => m.name)).toEqual(['tiny']);
      const [a, b] = await Promise.all([reg.engine('tiny'), reg.engine('tiny')]);
      expect(a).toBe(b);
      expect(await reg.engine('tiny')).toBe(a);
      await expect(reg.engine('nope')).rejects.toMatchObject({ code: 'invalid_model' });
      expect(() => reg.resolve('nope')).toThrow(/available: tiny/);
    } finally {
      await reg.close();
      await reg.close();
    }
    await expect(reg.engine('tiny')).rejects.toBeInstanceOf(EngineError);
    expect(scanModelsDir(join(mkdtempSync(join(tmpdir(), 'x-')), 'missing'))).toEqual({});
  });
});
