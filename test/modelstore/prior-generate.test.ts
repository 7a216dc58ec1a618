// Issue 6, "done when": a prior is fitted from a generated image folder (`clipag prior fit`) and used
// by `clipag generate --init gmm`, both through the CLI's main().
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runMain } from '../helpers/cli.ts';
import { decodeImage, encodePng, type PlanarImage } from '../../gpu-worker/engine/synth/image.ts';
import { loadPrior } from '../../gpu-worker/engine/synth/prior.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

/** w×h image: `rgb` plus a gentle gradient whose direction and strength vary with `seed`. */
function gradientImage(w: number, h: number, rgb: readonly number[], seed: number): PlanarImage {
  const data = new Float32Array(3 * w * h);
  const gx = 0.08 * Math.cos(seed), gy = 0.08 * Math.sin(seed);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < 3; c++) {
        const v = rgb[c] + gx * (x / w - 0.5) + gy * (y / h - 0.5) + 0.01 * (((x * 7 + y * 3 + seed + c) % 5) - 2);
        data[c * w * h + y * w + x] = Math.min(1, Math.max(0, v));
      }
  return { width: w, height: h, data };
}

/** Two "classes" (one folder each, as Tiny-ImageNet's), both strongly blue: sky and navy. */
function makeImageFolder(): string {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-gmm-images-'));
  const classes = { sky: [0.25, 0.45, 0.95], navy: [0.05, 0.1, 0.6] };
  for (const [name, rgb] of Object.entries(classes)) {
    mkdirSync(join(dir, name));
    for (let i = 0; i < 6; i++) writeFileSync(join(dir, name, `${i}.png`), encodePng(gradientImage(24 + i, 20 + 2 * i, rgb, i + 1)));
  }
  return dir;
}

const runCli = (argv: string[]) => runMain(argv);

describe('prior fit → generate --init gmm', () => {
  it('fits a per-class prior from a generated PNG folder, puts it in a bundle, and generate starts from it', async () => {
    const images = makeImageFolder();
    const work = mkdtempSync(join(tmpdir(), 'clipag-gmm-run-'));
    const priorPath = join(work, 'prior.safetensors');

    const fit = await runCli(['prior', 'fit', images, '-o', priorPath, '--per-folder', '--json']);
    expect(fit.code).toBe(0);
    const prior = loadPrior(priorPath);
    expect(prior.components).toBe(2);
    expect(JSON.parse(prior.metadata.groups)).toEqual(['navy', 'sky']);

    const model = makeTinyBundle('quickgelu', { prior: priorPath, manifest: { name: 'tiny-gmm' } });
    expect(JSON.parse(readFileSync(join(model, 'manifest.json'), 'utf8')).prior).toBe('prior.safetensors');

    const out = join(work, 'out.png');
    const gen = await runCli(['generate', 'a photo of a cat', '--model', model, '--init', 'gmm', '--steps', '3', '--views', '4,4', '--seed', '7', '-o', out, '--json']);
    expect(JSON.parse(gen.stdout).content_flags).toEqual([]);
    expect(gen.code).toBe(0);
    const summary = JSON.parse(gen.stdout);
    expect(summary).toMatchObject({ output: out, model: 'tiny-gmm', prompt: 'a photo of a cat', width: 32, height: 32, seed: 7, steps: 3 });
    expect(summary.best_step).toBeGreaterThanOrEqual(0);
    expect(summary.best_step).toBeLessThanOrEqual(3);
    expect(Number.isFinite(summary.best_loss)).toBe(true);
    expect(summary.scores[0].cosine).toBeGreaterThanOrEqual(-1);
    expect(summary.scores[0].cosine).toBeLessThanOrEqual(1);
    expect(summary.initial_scores).toHaveLength(summary.scores.length);
    expect(summary.usage.encoder_backward_passes).toBeGreaterThan(0);

    expect(existsSync(out)).toBe(true);
    const png = decodeImage(readFileSync(out));
    expect([png.width, png.height]).toEqual([32, 32]);
    // The start was a sample of the blue prior, and 3 small steps cannot undo that: the image is
    // clearly blue (a noise start would average about 0.5 in every channel).
    const hw = png.width * png.height;
    const mean = (c: number) => png.data.slice(c * hw, (c + 1) * hw).reduce((a, b) => a + b, 0) / hw;
    expect(mean(2) - mean(0)).toBeGreaterThan(0.25);

    // and --init noise with the same seed gives a different, not-blue start
    const outNoise = join(work, 'noise.png');
    const noise = await runCli(['generate', 'a photo of a cat', '--model', model, '--init', 'noise', '--steps', '3', '--views', '4,4', '--seed', '7', '-o', outNoise, '--json']);
    expect(noise.code).toBe(0);
    const pn = decodeImage(readFileSync(outNoise));
    const meanN = (c: number) => pn.data.slice(c * hw, (c + 1) * hw).reduce((a, b) => a + b, 0) / hw;
    expect(Math.abs(meanN(2) - meanN(0))).toBeLessThan(0.15);
  });
});

// The import review: a prior fitted into a bundle's folder was used by nothing until manifest.json was
// edited by hand (generate said "ships no GMM prior … fit one", which the operator had just done).
describe('prior fit -o BUNDLE/prior.safetensors', () => {
  it("makes it the bundle's prior: the manifest names it (with its sha256 where it lists them), and generate --init gmm starts from it", async () => {
    const images = makeImageFolder();
    const model = makeTinyBundle('quickgelu', { manifest: { name: 'tiny-fit-into' } });
    const raw = JSON.parse(readFileSync(join(model, 'manifest.json'), 'utf8')) as { prior?: string; sha256?: Record<string, string> };
    expect(raw.prior).toBeUndefined();
    const fit = await runCli(['prior', 'fit', images, '-o', join(model, 'prior.safetensors'), '--per-folder']);
    expect(fit.code, fit.stderr).toBe(0);
    expect(fit.stderr).toContain(`clipag prior fit: ${model} is model bundle tiny-fit-into: its manifest.json now names prior.safetensors as its prior`);
    const after = JSON.parse(readFileSync(join(model, 'manifest.json'), 'utf8')) as { prior?: string; sha256?: Record<string, string> };
    expect(after.prior).toBe('prior.safetensors');
    if (raw.sha256) expect(after.sha256?.['prior.safetensors']).toMatch(/^[0-9a-f]{64}$/);
    const gen = await runCli(['generate', 'a photo of a cat', '--model', model, '--init', 'gmm', '--steps', '2', '--views', '4,4', '--seed', '7', '-o', join(model, '..', 'fit-into.png'), '--json']);
    expect(gen.code, gen.stderr).toBe(0);
    expect(gen.stderr).not.toContain('ships no GMM prior');
    // A manifest naming another prior is left alone, and said so.
    const other = makeTinyBundle('quickgelu', { manifest: { name: 'tiny-other-prior' }, prior: join(model, 'prior.safetensors') });
    const again = await runCli(['prior', 'fit', images, '-o', join(other, 'second.safetensors')]);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('whose manifest.json names the prior prior.safetensors: left as it is (set "prior" to "second.safetensors" to use this one)');
    expect((JSON.parse(readFileSync(join(other, 'manifest.json'), 'utf8')) as { prior: string }).prior).toBe('prior.safetensors');
  });
});

describe('generate checks its flags and output before any work', () => {
  const runCliErr = (argv: string[]) => runMain(argv);

  it.each([
    [['-o', '/nonexistent-clipag/dir/x.png'], /folder \/nonexistent-clipag\/dir does not exist/],
    [['-o', tmpdir()], /is a folder; give a file name/],
    [['--strength', '0.5'], /--strength needs an init image/],
    [['--init', 'noise', '--content-weight', '3'], /--content-weight needs an init image/],
    [['--seed', '0x10'], /--seed must be an integer .* got "0x10"/],
    [['--seed', ''], /--seed must be an integer .* got ""/],
    [['--init', 'some.png', '--strength', '0x0'], /--strength must be a number in \[0, 1\], got "0x0"/],
    [['--init', 'some.png', '--content-weight', 'Infinity'], /--content-weight must be a number .* got "Infinity"/],
  ])('%j → a clear error, exit ≠ 0, before the model is opened', async (args, message) => {
    // A model path that does not exist: reaching the model would give another error.
    const { code, stderr } = await runCliErr(['generate', 'a red circle', '--model', '/nonexistent-clipag/model', ...args]);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(message);
    expect(stderr).not.toMatch(/model bundle/);
  });

  it.each([
    [['--lr', '0x10'], /--lr must be a positive number, got "0x10"/],
    [['--eps', 'Infinity'], /--eps must be a positive number, got "Infinity"/],
    [['--attack-ramp', '0b1'], /--attack-ramp must be a number in \[0, 1\), got "0b1"/],
    [['--lr', ' '], /--lr must be a positive number, got " "/],
  ])('train-toy %j → a clear error before any training', async (args, message) => {
    const { code, stderr } = await runCliErr(['train-toy', '--variant', 'plain', ...args, '--out', join(tmpdir(), 'clipag-never-written')]);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(message);
    expect(existsSync(join(tmpdir(), 'clipag-never-written'))).toBe(false);
  });

  it('a prompt the content policy refuses stops before the model is opened, as in the API', async () => {
    const { code, stderr } = await runCliErr(['generate', 'Pikachu on a hill', '--model', '/nonexistent-clipag/model']);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/refused by the content policy \(copyright, rule protected-characters\): "pikachu"/);
    expect(stderr).not.toMatch(/model bundle/);
  });

  it('--frames naming an existing file is refused with the path, not a raw EEXIST', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'clipag-frames-')), 'taken');
    writeFileSync(file, 'x');
    const { code, stderr } = await runCliErr(['generate', 'a red circle', '--model', '/nonexistent-clipag/model', '--frames', file, '-o', join(tmpdir(), 'x.png')]);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/--frames .*taken: cannot make the folder \(EEXIST\)/);
  });

  it('a --frames folder this run made is removed again when the run fails before a frame (a model that does not open); one that was there stays', async () => {
    const root = mkdtempSync(join(tmpdir(), 'clipag-frames-'));
    const made = await runCliErr(['generate', 'a red circle', '--model', '/nonexistent-clipag/model', '--frames', join(root, 'new', 'frames'), '-o', join(root, 'x.png')]);
    expect(made.code).not.toBe(0);
    expect(readdirSync(root)).toEqual([]);
    mkdirSync(join(root, 'kept'));
    await runCliErr(['generate', 'a red circle', '--model', '/nonexistent-clipag/model', '--frames', join(root, 'kept', 'frames'), '-o', join(root, 'x.png')]);
    expect(readdirSync(root)).toEqual(['kept']);
    expect(readdirSync(join(root, 'kept'))).toEqual([]);
  });
});
