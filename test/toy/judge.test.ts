// The judge: the shipped one is accurate on fresh world images; a short training lowers its loss;
// eval-pag refuses a judge that fails its own accuracy check; a corrupt judge file is refused.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';
import { ATTRIBUTES, JUDGE_ARCH, Judge, defaultJudgeConfig, initJudgeParams, trainJudge, writeJudgeBundle } from '../../gpu-worker/engine/toy/judge.ts';
import { evalPag } from '../../gpu-worker/engine/toy/eval-pag.ts';
import { f32ToF16Array } from '../../gpu-worker/engine/io/half.ts';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { REPO_ROOT } from '../../cli/common.ts';

const JUDGE_DIR = join(REPO_ROOT, 'models', 'toy-judge');
const tmp = mkdtempSync(join(tmpdir(), 'clipag-judge-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('toy judge', () => {
  it('the shipped judge classifies fresh world images at ≥ 97 % per attribute', async () => {
    const judge = await Judge.open(JUDGE_DIR, 1);
    try {
      const acc = await judge.accuracy(320, 777);
      for (const a of ATTRIBUTES) expect(acc[a], a).toBeGreaterThanOrEqual(0.97);
      expect(judge.manifest.accuracy.all).toBeGreaterThanOrEqual(0.9);
    } finally {
      await judge.release();
    }
  });

  it('a short training run lowers the cross-entropy', async () => {
    const r = await trainJudge(defaultJudgeConfig({ steps: 40, batch: 16, warmup: 5 }), { threads: 1 });
    const h = r.lossHistory;
    expect(h.length).toBe(4);
    expect(h[h.length - 1].loss).toBeLessThan(h[0].loss);
  });

  it('eval-pag refuses a judge that fails its accuracy check', async () => {
    const bad = join(tmp, 'bad-judge');
    await writeJudgeBundle(bad, JUDGE_ARCH, initJudgeParams(JUDGE_ARCH, Rng.fromSeed(1)), { shape: 1, colour: 1, size: 1, position: 1, all: 1 }, {});
    await expect(
      evalPag({ robustDir: join(REPO_ROOT, 'models', 'toy'), plainDir: join(REPO_ROOT, 'models', 'toy-plain'), judgeDir: bad, judgeCheckImages: 64, prompts: ['a red circle'] }),
    ).rejects.toThrow(/fails its own accuracy check.*it is no judge/);
  });

  it('eval-pag refuses a swapped pair (the robust model must say robust: true, the plain one false)', async () => {
    await expect(
      evalPag({ robustDir: join(REPO_ROOT, 'models', 'toy-plain'), plainDir: join(REPO_ROOT, 'models', 'toy'), judgeDir: JUDGE_DIR, judgeCheckImages: 64, prompts: ['a red circle'] }),
    ).rejects.toThrow(/toy-plain says robust: false.*swapped --robust and --plain/);
  });

  it('a corrupt judge weights file is refused with a clear error', async () => {
    const dir = join(tmp, 'corrupt');
    cpSync(JUDGE_DIR, dir, { recursive: true });
    const w = join(dir, 'weights.safetensors');
    const bytes = readFileSync(w);
    bytes[bytes.length - 10] ^= 0xff;
    writeFileSync(w, bytes);
    await expect(Judge.open(dir, 1)).rejects.toThrow(/do not match the manifest's sha256/);
    // manifests missing what the loader reads: clear errors naming the field, not a TypeError
    const manifest = JSON.parse(readFileSync(join(JUDGE_DIR, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    const { weights: _w, ...noWeights } = manifest;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(noWeights));
    await expect(Judge.open(dir, 1)).rejects.toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/manifest\.json: weights: /) });
    const { architecture: _a, ...noArch } = manifest;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(noArch));
    await expect(Judge.open(dir, 1)).rejects.toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/manifest\.json: architecture: /) });
    writeFileSync(join(dir, 'manifest.json'), 'null');
    await expect(Judge.open(dir, 1)).rejects.toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/is not a .* v1 manifest/) });
    rmSync(join(dir, 'manifest.json'));
    await expect(Judge.open(dir, 1)).rejects.toThrow(/no judge manifest.json/);
  });

  it('judge weights that are not float32 (re-saved as float16) are refused on open, naming the file', async () => {
    const dir = join(tmp, 'f16');
    cpSync(JUDGE_DIR, dir, { recursive: true });
    const w = join(dir, 'weights.safetensors');
    const st = readSafetensors(w);
    await writeSafetensors(w, new Map([...st.tensors].map(([k, t]) => [k, { dtype: 'float16' as const, dims: t.dims, data: f32ToF16Array(t.data as Float32Array) }])));
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
    delete manifest.sha256;
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
    await expect(Judge.open(dir, 1)).rejects.toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/judge weights .*f16\/weights\.safetensors: conv0\.weight is float16, .*; the judge needs float32 weights/) });
  });
});
