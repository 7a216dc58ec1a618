// ClipEngine on a bundle: embeddings match the reference, bad bundles fail with typed errors,
// the CLI verbs embed and gradcheck work end to end.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { checkRecipeDefaults, loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { DEFAULT_RECIPE } from '../../gpu-worker/engine/synth/recipe.ts';
import { validateRequest } from '../../gpu-worker/engine/synth/synthesize.ts';
import { main } from '../../cli/main.ts';
import { asNumbers, loadReference, maxRelErr } from '../helpers/clip.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { REPO_ROOT } from '../helpers/reference.ts';

const PROMPTS = ['a photo of a cat', 'a diagram of a red circle', 'two dogs playing in the snow!', 'café 赤い円 🙂'];

describe('ClipEngine', () => {
  const dir = makeTinyBundle('quickgelu');
  const ref = loadReference('tiny-quickgelu-vectors.safetensors');
  let engine: ClipEngine;
  afterAll(async () => {
    await engine?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  beforeAll(async () => {
    engine = await ClipEngine.open(dir, { threads: 1 });
  });

  it('embeds text through tokenizer + compiled graph like the official model', async () => {
    const { raw } = await engine.embedText(PROMPTS);
    expect(maxRelErr(Array.from(raw), asNumbers(ref.get('text_features')!))).toBeLessThan(1e-5);
  });

  it('embeds images (pixels in [0,1], normalized in the graph)', async () => {
    const px = ref.get('pixels')!.data as Float32Array;
    const images = [0, 1, 2, 3].map((i) => ({ width: 32, height: 32, data: px.slice(i * 3072, (i + 1) * 3072) }));
    const { raw } = await engine.embedImages(images);
    expect(maxRelErr(Array.from(raw), asNumbers(ref.get('image_features')!))).toBeLessThan(1e-5);
  });

  it('loads graphs through a file with external data above the inline limit (the >2 GB path)', async () => {
    const viaFile = await ClipEngine.open(dir, { threads: 1, inlineGraphLimitBytes: 0 });
    try {
      const { raw } = await viaFile.embedText(PROMPTS);
      expect(maxRelErr(Array.from(raw), asNumbers(ref.get('text_features')!))).toBeLessThan(1e-5);
    } finally {
      await viaFile.close();
    }
  });

  it('rejects NaN pixels, wrong sizes and empty text with typed errors', async () => {
    const bad = { width: 32, height: 32, data: new Float32Array(3072).fill(NaN) };
    await expect(engine.embedImages([bad])).rejects.toMatchObject({ code: 'invalid_input' });
    await expect(engine.embedImages([{ width: 32, height: 32, data: new Float32Array(10) }])).rejects.toMatchObject({ code: 'invalid_input' });
    await expect(engine.embedText(['   '])).rejects.toMatchObject({ code: 'invalid_input' });
  });
});

describe('bundle validation', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'clipag-badbundle-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const variant = (name: string, edit: (dir: string) => void) => {
    const dir = makeTinyBundle('quickgelu', { dir: join(tmp, name) });
    edit(dir);
    return dir;
  };
  it('missing manifest', async () => {
    const dir = variant('nomanifest', (d) => rmSync(join(d, 'manifest.json')));
    await expect(loadBundle(dir)).rejects.toThrow(/no manifest.json/);
  });
  it('manifest that does not parse', async () => {
    const dir = variant('badjson', (d) => writeFileSync(join(d, 'manifest.json'), '{"format":'));
    await expect(loadBundle(dir)).rejects.toThrow(/not valid JSON/);
  });
  it('a manifest saved with a byte-order mark loads', async () => {
    const dir = variant('bom', (d) => writeFileSync(join(d, 'manifest.json'), `\uFEFF${readFileSync(join(d, 'manifest.json'), 'utf8')}`));
    await expect(loadBundle(dir)).resolves.toMatchObject({ dir });
  });
  it('a misshapen weight names the tensor', async () => {
    const dir = variant('misshapen', (d) => {
      const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
      m.architecture.visionWidth = 128; // weights are width 64
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
    });
    const err = await loadBundle(dir).catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.code).toBe('invalid_weights');
    expect(err.message).toMatch(/visual\.conv1\.weight has shape \[64,3,8,8\], expected \[128,3,8,8\]/);
  });
  it('a layer count the weights do not hold is refused in one line; one past any real CLIP is refused by the manifest check (before a list of 200 000 000 layers is built)', async () => {
    const withLayers = (name: string, layers: number) =>
      variant(name, (d) => {
        const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
        m.architecture.visionLayers = layers;
        writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
      });
    const off = await loadBundle(withLayers('layers-off', 5)).catch((e) => e);
    expect([off.code, off.message]).toEqual(['invalid_weights', expect.stringMatching(/architecture\.visionLayers is 5, but the weights hold 2 \(visual\.transformer\.resblocks\.N\)$/)]);
    const huge = await loadBundle(withLayers('layers-huge', 200_000_000)).catch((e) => e);
    expect([huge.code, huge.message]).toEqual(['invalid_model', expect.stringMatching(/architecture\.visionLayers: Too big: expected number to be <=512/)]);
  });
  it('a bundle of another kind (the judge) is named as such, not listed field by field', async () => {
    const err = await loadBundle(join(REPO_ROOT, 'models', 'toy-judge')).catch((e) => e);
    expect([err.code, err.message]).toEqual(['invalid_model', expect.stringMatching(/is a "clipag-toy-judge" bundle, not a CLIP model bundle \("clipag-model-bundle"\)/)]);
  });
  it('a bundle file that is a looping link is named as such, not as missing', async () => {
    const dir = variant('loop', (d) => {
      rmSync(join(d, 'tokenizer.json'));
      symlinkSync('tokenizer.json', join(d, 'tokenizer.json'));
    });
    await expect(loadBundle(dir)).rejects.toThrow(/tokenizer file tokenizer\.json in .* cannot be read \(a symbolic link that loops\)/);
  });
  it('a tokenizer file that does not parse', async () => {
    const dir = variant('badtok', (d) => writeFileSync(join(d, 'tokenizer.json'), 'not json'));
    await expect(ClipEngine.open(dir)).rejects.toMatchObject({ code: 'invalid_tokenizer' });
  });
  it('recipe defaults: an unknown field or a bad value is refused naming the manifest; good ones apply under the request', async () => {
    const withRecipe = (name: string, recipe: unknown) =>
      variant(name, (d) => {
        const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
        m.recipe = recipe;
        writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
      });
    await expect(loadBundle(withRecipe('recipe-unknown', { patchView: 0 }))).rejects.toThrow(/not a valid bundle manifest: recipe: Unrecognized key.*patchView/);
    await expect(loadBundle(withRecipe('recipe-bad', { translation: 0.9 }))).rejects.toThrow(/recipe defaults are invalid: translation must be in \[0, 0.5\]/);
    const ok = await loadBundle(withRecipe('recipe-ok', { patchViews: 0, globalViews: 12 }));
    const req = { prompts: [{ text: 'x', weight: 1 }], width: 64, height: 64, seed: 1 };
    expect(validateRequest(req, 64, ok.manifest.recipe).recipe).toMatchObject({ patchViews: 0, globalViews: 12, steps: DEFAULT_RECIPE.steps });
    expect(validateRequest({ ...req, recipe: { globalViews: 3 } }, 64, ok.manifest.recipe).recipe).toMatchObject({ patchViews: 0, globalViews: 3 });
    expect(validateRequest(req, 64).recipe.patchViews).toBe(DEFAULT_RECIPE.patchViews);
    // the same checks for recipe fields given outside a manifest (eval-pag --recipe)
    expect(() => checkRecipeDefaults({ patchView: 0 })).toThrow(/recipe: .*Unrecognized key.*patchView/);
    expect(() => checkRecipeDefaults({ translation: 0.9 })).toThrow(/translation must be in \[0, 0.5\]/);
    expect(checkRecipeDefaults({ flip: true, resize: [0.9, 1.1] })).toEqual({ flip: true, resize: [0.9, 1.1] });
  });
  it('file names must be plain paths inside the bundle, and regular files (checksum keys included)', async () => {
    const edited = (name: string, edit: (m: Record<string, unknown>) => void) =>
      variant(name, (d) => {
        const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
        edit(m);
        writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
      });
    for (const [name, weights] of [['dot', '.'], ['dotdir', './weights.safetensors'], ['up', 'a/../weights.safetensors'], ['abs', '/etc/passwd']]) {
      const err = await loadBundle(edited(`path-${name}`, (m) => (m.weights = weights))).catch((e) => e);
      expect([err.code, err.message]).toEqual(['invalid_model', expect.stringMatching(/must be a plain relative path inside the bundle/)]);
    }
    // A checksum entry naming a file outside the bundle would hash it (and print part of the hash).
    const outside = await loadBundle(edited('path-sum', (m) => (m.sha256 = { '../../../../etc/hostname': '0'.repeat(64) }))).catch((e) => e);
    expect([outside.code, outside.message]).toEqual(['invalid_model', expect.stringMatching(/etc\/hostname.*must be a plain relative path/)]);
  });
  it('a folder where a file should be is refused as such, not a raw EISDIR', async () => {
    const dir = variant('folder-weights', (d) => {
      const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
      mkdirSync(join(d, 'w'));
      m.weights = 'w';
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
    });
    const err = await loadBundle(dir).catch((e) => e);
    expect([err.code, err.message]).toEqual(['invalid_model', expect.stringMatching(/weights file w .* is not a regular file/)]);
  });
  it('non-finite weights and absurd normalization statistics are refused at load, naming what is wrong', async () => {
    const nan = variant('nan-weight', () => undefined);
    const st = readSafetensors(join(nan, 'weights.safetensors'));
    (st.tensors.get('visual.conv1.weight')!.data as Float32Array)[5] = Number.NaN;
    await writeSafetensors(join(nan, 'weights.safetensors'), st.tensors);
    const err = await loadBundle(nan, { verifyChecksums: false }).catch((e) => e);
    expect([err.code, err.message]).toEqual(['invalid_weights', expect.stringMatching(/tensor visual\.conv1\.weight holds a non-finite value .* at element 5/)]);
    const std = variant('bad-std', (d) => {
      const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
      m.preprocess.std = [1e-300, 0.26, 0.27];
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
    });
    await expect(loadBundle(std)).rejects.toThrow(/preprocess\.std\.0/);
  });
  it('a corrupt checksum', async () => {
    const dir = variant('badsum', (d) => {
      const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
      m.sha256 = { 'weights.safetensors': '0'.repeat(64) };
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
    });
    await expect(loadBundle(dir)).rejects.toThrow(/sha256/);
  });
});

describe('CLI', () => {
  const dir = makeTinyBundle('quickgelu');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const capture = async (argv: string[]) => {
    const lines: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => lines.push(a.join(' '));
    try {
      const code = await main(argv);
      return { code, out: lines.join('\n') };
    } finally {
      console.log = log;
    }
  };
  it('clipag embed --text --json prints the unit embedding', async () => {
    const { code, out } = await capture(['embed', '--model', dir, '--text', 'a photo of a cat', '--json', '--raw']);
    expect(code).toBe(0);
    const res = JSON.parse(out);
    expect(res.dim).toBe(32);
    expect(maxRelErr(res.embedding, asNumbers(ref().get('text_features')!).slice(0, 32))).toBeLessThan(1e-5);
  });
  it('clipag gradcheck passes in float64 on the tiny model', async () => {
    const { code, out } = await capture(['gradcheck', '--model', dir, '--json', '--directions', '2']);
    const res = JSON.parse(out);
    expect(res.maxRelError).toBeLessThan(1e-6);
    expect(code).toBe(0);
  });
  it('clipag embed with neither --text nor --image is a usage error', async () => {
    const err = console.error;
    console.error = () => {};
    try {
      expect((await capture(['embed', '--model', dir])).code).toBe(2); // as an unknown flag: the command line is wrong
    } finally {
      console.error = err;
    }
  });
});

function ref() {
  return loadReference('tiny-quickgelu-vectors.safetensors');
}
