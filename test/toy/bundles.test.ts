// The shipped toy bundles are ordinary model bundles: they load, are small, say how they were trained,
// ship a GMM prior with the default, and corrupt or missing files give clear errors.
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR, REPO_ROOT } from '../../cli/common.ts';
import { loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import { loadPrior } from '../../gpu-worker/engine/synth/prior.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { zeroShotAccuracy } from '../../gpu-worker/engine/toy/zero-shot.ts';
import { TOY_RECIPE } from '../../gpu-worker/engine/toy/clip-train.ts';

const tmp = mkdtempSync(join(tmpdir(), 'clipag-toy-bundle-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('shipped toy bundles', () => {
  it('models/toy is the default, robust, with a 16×16 GMM prior; models/toy-plain is its plain twin', async () => {
    expect(DEFAULT_MODEL_DIR).toBe(join(REPO_ROOT, 'models', 'toy'));
    const r = await loadBundle(join(REPO_ROOT, 'models', 'toy'));
    const p = await loadBundle(join(REPO_ROOT, 'models', 'toy-plain'));
    expect(r.manifest.robust).toBe(true);
    expect(p.manifest.robust).toBe(false);
    expect(p.arch).toEqual(r.arch);
    expect(r.priorPath).toBeDefined();
    expect(loadPrior(r.priorPath!).resolution).toBe(16);
    for (const m of [r.manifest, p.manifest]) {
      const t = m.training as Record<string, unknown>;
      expect(String(t.command)).toMatch(/^clipag train-toy /);
      expect(t.seed).toBeTypeOf('number');
      expect(t.steps).toBeTypeOf('number');
      expect(t.wall_time_s).toBeTypeOf('number');
      expect(t.final).toBeTypeOf('object');
    }
    expect((r.manifest.training as Record<string, unknown>).attack).toMatchObject({ norm: 'l2' });
    expect((p.manifest.training as Record<string, unknown>).attack).toBeNull();
  });

  it('the twins were trained with the same recipe but for the attack', async () => {
    const [r, p] = await Promise.all(['toy', 'toy-plain'].map((n) => loadBundle(join(REPO_ROOT, 'models', n))));
    const shared = ['seed', 'steps', 'planned_steps', 'batch', 'lr', 'batches', 'two_object_rate', 'caption_heads_weight'];
    const pick = (t: unknown) => Object.fromEntries(shared.map((k) => [k, (t as Record<string, unknown>)[k]]));
    expect(pick(r.manifest.training)).toEqual(pick(p.manifest.training));
    expect(r.arch).toEqual(p.arch);
    expect(r.manifest.recipe).toEqual(p.manifest.recipe);
    // The recipe every published eval-pag figure was measured with (the clip of 1.0 included: ADR 0025).
    expect(r.manifest.recipe).toEqual(TOY_RECIPE);
  });

  it("each twin's recorded zero-shot accuracy is what its shipped weights score now", async () => {
    for (const name of ['toy', 'toy-plain']) {
      const engine = await ClipEngine.open(join(REPO_ROOT, 'models', name), { threads: 1 });
      try {
        const recorded = ((engine.bundle.manifest.training as Record<string, unknown>).final as Record<string, unknown>).zero_shot as Record<string, number>;
        const now = (await zeroShotAccuracy(engine)) as unknown as Record<string, number>;
        // Every recorded figure, none dropped or renamed on either side; then each compared from the record.
        expect(Object.keys(recorded).length, name).toBeGreaterThan(0);
        expect(Object.keys(now).sort(), name).toEqual(Object.keys(recorded).sort());
        for (const [k, want] of Object.entries(recorded)) expect(now[k], `${name} ${k}`).toBeCloseTo(want, 6);
      } finally {
        await engine.close();
      }
    }
  });

  it("the default model names the words of a prompt it cannot read (its vocabulary is the world's grammar)", async () => {
    const engine = await ClipEngine.open(join(REPO_ROOT, 'models', 'toy'), { threads: 1 });
    try {
      expect(engine.promptWarnings(['a large red circle on the left', 'small blue star, top'])).toEqual([]);
      // Its whole (small) vocabulary is told once, so the caller learns what it can draw instead.
      const known = 'a an and at big blue bottom box center centre circle cross cyan disc donut green image in large left little middle of on orange photo picture plus purple red right ring small square star the tiny top triangle violet white yellow';
      expect(engine.promptWarnings(['a purple cat on a sofa', 'a dog'])).toEqual([
        `"a purple cat on a sofa": model toy does not know the words "cat", "sofa", so it cannot draw them; it knows only: ${known}`,
        '"a dog": model toy does not know the word "dog", so it cannot draw it',
      ]);
      // Punctuation is no word it cannot draw, and a long prompt is named by its start.
      expect(engine.promptWarnings(['a red circle.'])).toEqual(['"a red circle.": model toy does not read "." (an unknown token to it); leave it out']);
      const long = `a red circle ${'very '.repeat(30)}nice`;
      // Only the words it reads: "nice" comes past its context length (cut, and told apart), so it is not named.
      const warned = engine.promptWarnings([long]);
      expect(warned[0]).toMatch(new RegExp(`^"${long.slice(0, 80)}…": model toy does not know the word "very", so`));
      expect(warned.join('\n')).not.toMatch(/"nice"/);
    } finally {
      await engine.close();
    }
  });

  it('each bundle is ≤ 10 MB', () => {
    for (const name of ['toy', 'toy-plain', 'toy-judge']) {
      const dir = join(REPO_ROOT, 'models', name);
      const bytes = readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
      expect(bytes, name).toBeLessThanOrEqual(10 * 1024 * 1024);
    }
  });

  it('a corrupt or missing weights file is a clear error', async () => {
    const dir = join(tmp, 'toy');
    cpSync(join(REPO_ROOT, 'models', 'toy'), dir, { recursive: true });
    const w = join(dir, 'weights.safetensors');
    const bytes = readFileSync(w);
    bytes[bytes.length - 3] ^= 0x55;
    writeFileSync(w, bytes);
    await expect(loadBundle(dir)).rejects.toThrow(/weights.safetensors has sha256 .* \(file corrupt or replaced\)/);
    rmSync(w);
    await expect(loadBundle(dir)).rejects.toThrow(/weights file weights.safetensors is missing/);
  });
});
