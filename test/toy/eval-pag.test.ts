// A quick eval-pag on a few prompts with each bundle's default recipe and one seed (the full run's
// figures are in docs/toy-model.md). It asserts what the PAG claim predicts, measured from the images:
// the judge finds the robust model's pictures right more often than the plain twin's; the robust
// model's images carry the prompt to a second model (they score higher under the plain CLIP than the
// plain twin's images score under the robust one); and the plain twin's images carry far more
// high-frequency texture.
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { evalPag, highFrequencyEnergy, pagMarkdown, wilsonInterval, writePagOutputs } from '../../gpu-worker/engine/toy/eval-pag.ts';
import { createImage } from '../../gpu-worker/engine/synth/image.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { zeroShotUnderAttack } from '../../gpu-worker/engine/toy/robustness.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

const tmp = mkdtempSync(join(tmpdir(), 'clipag-pag-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK_PROMPTS = ['a large red circle on the left', 'a yellow star', 'a big blue square on the right', 'a large green triangle in the centre'];

describe('eval-pag (quick)', () => {
  it('the probes refuse a CLIP that is not a 64 px toy-world model, naming the way out', async () => {
    const engine = await ClipEngine.open(makeTinyBundle('quickgelu'), { threads: 1 });
    try {
      const err = await zeroShotUnderAttack(engine).catch((e) => e);
      expect(err).toBeInstanceOf(EngineError);
      expect(err.code).toBe('invalid_model');
      expect(err.message).toMatch(/toy-world CLIP.*--no-probes/);
    } finally {
      await engine.close();
    }
  });

  it('the Wilson interval matches worked values and stays inside [0, 1]', () => {
    const [lo, hi] = wilsonInterval(154, 168);
    expect(lo).toBeCloseTo(0.865, 3);
    expect(hi).toBeCloseTo(0.950, 3);
    expect(wilsonInterval(0, 10)[0]).toBe(0);
    expect(wilsonInterval(10, 10)[1]).toBe(1);
    expect(wilsonInterval(10, 10)[0]).toBeCloseTo(0.722, 3);
    expect(wilsonInterval(0, 0).every(Number.isNaN)).toBe(true);
  });

  it('high-frequency energy is 0 for a flat image and large for a checkerboard', () => {
    const flat = createImage(16, 16);
    flat.data.fill(0.5);
    expect(highFrequencyEnergy(flat)).toBe(0);
    const cb = createImage(16, 16);
    for (let i = 0; i < cb.data.length; i++) cb.data[i] = (i + Math.floor(i / 16)) % 2;
    expect(highFrequencyEnergy(cb)).toBeGreaterThan(0.1);
  });

  it('robust beats plain on the judge, on transfer and on smoothness; outputs written', async () => {
    const { report, images } = await evalPag({
      robustDir: join(REPO_ROOT, 'models', 'toy'),
      plainDir: join(REPO_ROOT, 'models', 'toy-plain'),
      judgeDir: join(REPO_ROOT, 'models', 'toy-judge'),
      prompts: QUICK_PROMPTS,
      seeds: [1],
      judgeCheckImages: 128,
      threads: 1,
      robustness: { eps: [0, 1], batches: 2, steps: 10, stepSize: 0.25 },
      morph: { eps: [4], batches: 1, steps: 20 },
    });
    report.robust.results.forEach((r, i) => {
      const p = report.plain.results[i];
      expect(p.prompt).toBe(r.prompt);
      expect(p.highFreq, r.prompt).toBeGreaterThan(r.highFreq);
    });
    expect(report.robust.allCorrect, 'judge: robust all-correct').toBeGreaterThanOrEqual(0.75);
    expect(report.robust.allCorrect).toBeGreaterThan(report.plain.allCorrect);
    // The gradient steps, not the pick of the start image, make the robust images right.
    expect(report.robust.allCorrect).toBeGreaterThan(report.robust.initAllCorrect);
    for (const r of report.robust.results) expect(r.initVerdict.shape.label).toMatch(/^[a-z]+$/);
    expect(report.plain.meanHighFreq).toBeGreaterThan(1.5 * report.robust.meanHighFreq);
    expect(report.robust.meanOtherScore).toBeGreaterThan(report.plain.meanOtherScore + 0.1);
    // PGD at ε = 1 (10 steps) costs the plain twin far more zero-shot accuracy than the robust one
    // (measured on these 64 images: see docs/toy-model.md for 256).
    const [rz, pz] = [report.robustness!.robust, report.robustness!.plain];
    expect(rz[0].accuracy).toBeGreaterThan(0.9);
    expect(pz[0].accuracy).toBeGreaterThan(0.9);
    // (white-box on the zero-shot classifier: plain 98 % → 11 %, robust 100 % → 77 %)
    expect(pz[1].accuracy).toBeLessThan(0.25);
    expect(rz[1].accuracy).toBeGreaterThan(pz[1].accuracy + 0.4);
    // The judge is a plain CNN: white-box PGD at ε = 1 flips many of its verdicts (docs/toy-model.md).
    const jz = report.robustness!.judge;
    expect(jz[0].accuracy).toBeGreaterThan(0.97);
    expect(jz[1].accuracy).toBeLessThan(jz[0].accuracy);
    // Gradient alone: the plain twin's morph convinces the plain CLIP, not the judge (the adversarial
    // signature without any recipe).
    const pm = report.morph!.plain[0];
    expect(pm.modelSeesTarget).toBeGreaterThan(0.5);
    expect(pm.modelSeesTarget - pm.judgeSeesTarget).toBeGreaterThan(0.4);
    expect(report.morph!.robust[0].modelSeesTarget).toBeGreaterThan(0.5);
    // The robust model's gradient redraws the shape so that the judge sees it far more often.
    expect(report.morph!.robust[0].judgeSeesTarget).toBeGreaterThan(pm.judgeSeesTarget + 0.2);
    expect(report.robust.perAttribute.shape!.named).toBe(QUICK_PROMPTS.length);
    const files = writePagOutputs(join(tmp, 'pag'), report, images);
    for (const f of files) expect(existsSync(f)).toBe(true);
    expect(readFileSync(files[1], 'utf8')).toMatch(/all named attributes correct/);
    expect(readFileSync(files[1], 'utf8')).toMatch(/all correct at the start/);
    expect(readFileSync(files[1], 'utf8')).toMatch(/The gradient alone/);
    expect(readFileSync(files[2]).subarray(1, 4).toString()).toBe('PNG');
  }, 300_000);
});

describe('clipag eval-pag: its outputs are checked before the run (minutes), and replaced only with --force', () => {
  it('refuses existing report files without --force, an output that is a folder, and an empty --steps; all before any model loads', async () => {
    const { run } = await import('../../cli/eval-pag.ts');
    const refusal = (argv: string[]) => run(argv).then(() => ['ran'], (e: { code?: string; message?: string }) => [e.code, e.message]);
    const dir = mkdtempSync(join(tmp, 'out-'));
    writeFileSync(join(dir, 'old.md'), 'the committed report');
    // The default prefix is the committed report: the same rule.
    expect(await refusal(['--out', join(dir, 'old'), '--no-probes'])).toEqual(['invalid_input', expect.stringMatching(/old\.md already exists; pass --force to replace it/)]);
    expect(readFileSync(join(dir, 'old.md'), 'utf8')).toBe('the committed report');
    mkdirSync(join(dir, 'dir.png'));
    expect(await refusal(['--out', join(dir, 'dir'), '--no-probes'])).toEqual(['invalid_input', expect.stringMatching(/dir\.png is a folder/)]);
    // A flag's bad value is a usage error (exit 2 with the usage), as every verb's.
    const usage = await run(['--out', join(dir, 'new'), '--steps', '']).then(() => 'ran', (e: Error) => e);
    expect(usage).toMatchObject({ name: 'UsageError', message: expect.stringMatching(/--steps must be an integer in \[1, 1000\]/) });
  });

  it('writes the three files together: a report that fails to render leaves the earlier files whole and no temporary file behind', () => {
    const dir = mkdtempSync(join(tmp, 'atomic-'));
    const prefix = join(dir, 'r');
    writeFileSync(`${prefix}.json`, 'old json');
    // A report that cannot be rendered (here: a bare object) fails before any file is replaced.
    const report = { seeds: [1] } as unknown as Parameters<typeof writePagOutputs>[1];
    expect(() => writePagOutputs(prefix, report, { robust: [], plain: [] })).toThrow();
    expect(readFileSync(`${prefix}.json`, 'utf8')).toBe('old json');
    expect(readdirSync(dir)).toEqual(['r.json']);
  });
});


// From a review of eval-pag's inputs: a CLIP whose tokenizer is not the world's was graded (its
// "red" drew blue); a bundle without a prior switched silently to noise init; a repeated seed counted
// its images twice.
describe('eval-pag refuses what it cannot grade, and records where the images start', () => {
  const MODELS = join(REPO_ROOT, 'models');
  const JUDGE = join(MODELS, 'toy-judge');
  /** A copy of models/toy, edited, its manifest's checksums kept true (as a re-export would). */
  const toyCopy = (name: string, edit: (dir: string, manifest: Record<string, any>) => void): string => {
    const d = join(tmp, name);
    cpSync(join(MODELS, 'toy'), d, { recursive: true });
    const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8')) as Record<string, any>;
    edit(d, m);
    for (const f of Object.keys(m.sha256)) m.sha256[f] = createHash('sha256').update(readFileSync(join(d, f))).digest('hex');
    writeFileSync(join(d, 'manifest.json'), JSON.stringify(m, null, 2));
    return d;
  };
  const editTokenizer = (d: string, f: (vocab: Record<string, number>) => void) => {
    const t = JSON.parse(readFileSync(join(d, 'tokenizer.json'), 'utf8'));
    f(t.model.vocab);
    writeFileSync(join(d, 'tokenizer.json'), JSON.stringify(t));
  };
  const quick = { plainDir: join(MODELS, 'toy-plain'), judgeDir: JUDGE, judgeCheckImages: 64, prompts: ['a yellow star'], seeds: [1], recipe: { steps: 1 }, robustness: false as const, morph: false as const, threads: 1 };

  it('a CLIP whose tokenizer is not the world\'s (ids swapped, a word missing) is refused, naming the bundle and the difference', async () => {
    const swapped = toyCopy('tok-swapped', (d) => editTokenizer(d, (v) => ([v.red, v.blue] = [v.blue, v.red])));
    const err = await evalPag({ ...quick, robustDir: swapped }).catch((e) => e);
    expect(err).toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/the robust model .*tok-swapped does not read the toy world's words .*tokenizer\.json: "blue" is id \d+, the world's \d+, "red" is id \d+, the world's \d+/) });
    const missing = toyCopy('tok-missing', (d) => editTokenizer(d, (v) => delete v.large));
    expect(await evalPag({ ...quick, robustDir: missing }).catch((e) => e)).toMatchObject({
      code: 'invalid_model',
      message: expect.stringMatching(/the robust model .*tok-missing does not read .*it lacks "large"/),
    });
  }, 60_000);

  it('a prompt the model cannot read whole (an unknown word) is refused before any image', async () => {
    const err = await evalPag({ ...quick, robustDir: join(MODELS, 'toy'), prompts: ['a yellow star with zorbles'] }).catch((e) => e);
    expect(err).toMatchObject({ code: 'invalid_input', message: expect.stringMatching(/the robust model .* cannot read every prompt: .*does not know the words? .*"zorbles"/) });
  }, 60_000);

  it('a robust bundle without its GMM prior is refused (not run from noise)', async () => {
    const noPrior = toyCopy('no-prior', (d, m) => {
      rmSync(join(d, 'prior.safetensors'));
      delete m.prior;
      delete m.sha256['prior.safetensors'];
    });
    expect(await evalPag({ ...quick, robustDir: noPrior }).catch((e) => e)).toMatchObject({ code: 'invalid_model', message: expect.stringMatching(/the robust model .*no-prior ships no GMM prior/) });
  }, 60_000);

  it('the report records the init (the prior and its sha256) in its JSON and its Markdown; an older report without it still renders', async () => {
    const { report, images } = await evalPag({ ...quick, robustDir: join(MODELS, 'toy') });
    const manifest = JSON.parse(readFileSync(join(MODELS, 'toy', 'manifest.json'), 'utf8'));
    expect(report.init).toEqual({ kind: 'gmm', prior: 'toy/prior.safetensors', sha256: manifest.sha256['prior.safetensors'] });
    const [json, md] = writePagOutputs(join(tmp, 'init'), report, images);
    expect(JSON.parse(readFileSync(json, 'utf8')).init.sha256).toBe(manifest.sha256['prior.safetensors']);
    expect(readFileSync(md, 'utf8').split('\n')[0]).toBe(`Both models start from the GMM prior toy/prior.safetensors (sha256 ${manifest.sha256['prior.safetensors']}).`);
    const { init: _, ...older } = report;
    expect(pagMarkdown(older).startsWith('| | robust (toy)')).toBe(true);
    expect(pagMarkdown(JSON.parse(readFileSync(join(REPO_ROOT, 'docs', 'toy-pag.json'), 'utf8')))).toMatch(/all named attributes correct/);
  }, 120_000);

  it('a repeated seed is refused: a usage error in the CLI (exit 2), before any model loads; invalid input in the API', async () => {
    const { run } = await import('../../cli/eval-pag.ts');
    const usage = await run(['--seeds', '1,2,1', '--out', join(tmp, 'dup'), '--robust', join(tmp, 'no-such-model')]).then(() => 'ran', (e: Error) => e);
    expect(usage).toMatchObject({ name: 'UsageError', message: expect.stringMatching(/--seeds must not repeat a seed; 1 is given more than once in "1,2,1"/) });
    expect(await evalPag({ ...quick, robustDir: join(MODELS, 'toy'), seeds: [3, 3] }).catch((e) => e)).toMatchObject({ code: 'invalid_input', message: expect.stringMatching(/seeds must differ; 3 is repeated/) });
  });
});
