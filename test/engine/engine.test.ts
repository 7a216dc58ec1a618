// ClipEngine on a bundle: embeddings match the reference, bad bundles fail with typed errors,
// the CLI verbs embed and gradcheck work end to end.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { checkFinite, checkFiniteYielding, checkRecipeDefaults, loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { inferArch } from '../../gpu-worker/engine/clip/arch.ts';
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

  it("a bundle's weights are read into shared memory, so the engine sends graphs to its threads without a copy and holds one copy of each weight", async () => {
    const loaded = await loadBundle(dir);
    expect([...loaded.weights.values()].every((t) => t.data.buffer instanceof SharedArrayBuffer)).toBe(true);
    expect(engine.bundle.weights.size).toBe(loaded.weights.size);
    expect([...engine.bundle.weights.values()].every((t) => t.data.buffer instanceof SharedArrayBuffer)).toBe(true);
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

  it('refuses a text tower that gives a zero embedding (all-zero text_projection) or an overflowing one, naming the model and the prompt by its place, never its words', async () => {
    const spoilt = async (name: string, value: number) => {
      const d = makeTinyBundle('quickgelu', { manifest: { name } });
      const w = readSafetensors(join(d, 'weights.safetensors')).tensors;
      const t = w.get('text_projection')!;
      w.set('text_projection', { ...t, data: new Float32Array(t.data.length).fill(value) });
      await writeSafetensors(join(d, 'weights.safetensors'), w);
      return d;
    };
    for (const [name, value, code, message] of [
      ['zero-proj', 0, 'invalid_model', /model zero-proj: the text tower produces a zero embedding for text 1 of 2 /],
      ['huge-proj', 3e38, 'numerical_error', /model huge-proj: the text tower produces a non-finite embedding for text 1 of 2;/],
    ] as const) {
      const d = await spoilt(name, value);
      const e = await ClipEngine.open(d, { threads: 1 });
      try {
        const err = await e.embedText(['a red circle', 'a blue square']).catch((x) => x);
        expect(err).toBeInstanceOf(EngineError);
        expect([err.code, err.message]).toEqual([code, expect.stringMatching(message)]);
        // The message reaches the worker's log (job attempt failed): a prompt may be personal data (ADR 0021).
        expect(err.message).not.toMatch(/red circle|blue square/);
      } finally {
        await e.close();
        rmSync(d, { recursive: true, force: true });
      }
    }
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
  /** A bundle whose manifest `edit` changed. */
  const edited = (name: string, edit: (m: Record<string, unknown>) => void) =>
    variant(name, (d) => {
      const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
      edit(m);
      writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
    });
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
  it('a context length too short for start, one token and end (1 or 2) is refused by the manifest check and by inferArch', async () => {
    for (const L of [1, 2]) {
      const dir = variant(`ctx${L}`, (d) => {
        const m = JSON.parse(readFileSync(join(d, 'manifest.json'), 'utf8'));
        m.architecture.contextLength = L;
        writeFileSync(join(d, 'manifest.json'), JSON.stringify(m));
      });
      const w = readSafetensors(join(dir, 'weights.safetensors')).tensors;
      const pos = w.get('positional_embedding')!;
      w.set('positional_embedding', { ...pos, dims: [L, pos.dims[1]!], data: pos.data.slice(0, L * pos.dims[1]!) });
      await writeSafetensors(join(dir, 'weights.safetensors'), w);
      const err = await loadBundle(dir).catch((e) => e);
      expect([err.code, err.message]).toEqual(['invalid_model', expect.stringMatching(/architecture\.contextLength: must be at least 3 \(the start token, one token of text and the end token\)/)]);
      const shapes = new Map([...readSafetensors(join(dir, 'weights.safetensors')).tensors].map(([k, t]) => [k, t.dims]));
      expect(() => inferArch(shapes, { textHeads: 4 })).toThrow(new RegExp(`inferred architecture is inconsistent: contextLength is ${L}: must be at least 3`));
    }
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
    // No weight on any view: every step's loss and gradient would be 0, and each job would return its start image.
    await expect(loadBundle(withRecipe('recipe-zero-weights', { globalWeight: 0, patchWeight: 0 }))).rejects.toThrow(/recipe defaults are invalid: view_weights must put a weight > 0 on the views taken/);
    await expect(loadBundle(withRecipe('recipe-zero-on-only-kind', { patchViews: 0, globalWeight: 0 }))).rejects.toThrow(/view_weights must put a weight > 0/);
    expect(() => checkRecipeDefaults({ globalWeight: 0, patchWeight: 0 })).toThrow(/view_weights must put a weight > 0/);
    // Valid one by one, ruinous together: 1 − lr·weight_decay ≤ 0 turned every pixel black; a grad_clip
    // or eps that underflows in float32 left the start image unmoved. Each was returned as a success.
    expect(() => checkRecipeDefaults({ lr: 1e6, weightDecay: 0.01 })).toThrow(/lr × weight_decay must be below 1/);
    expect(() => checkRecipeDefaults({ lr: 100, weightDecay: 0.01 })).toThrow(/lr × weight_decay must be below 1/);
    expect(() => checkRecipeDefaults({ lr: 99, weightDecay: 0.01 })).not.toThrow();
    expect(() => checkRecipeDefaults({ gradClip: 5e-324 })).toThrow(/grad_clip must be at least 1e-30/);
    expect(() => checkRecipeDefaults({ eps: 1e-300 })).toThrow(/eps must be at least 1e-30/);
    await expect(loadBundle(withRecipe('recipe-zero-global-ok', { globalWeight: 0 }))).resolves.toBeTruthy();
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
    for (const [name, weights] of [['dot', '.'], ['dotdir', './weights.safetensors'], ['up', 'a/../weights.safetensors'], ['abs', '/etc/passwd']]) {
      const err = await loadBundle(edited(`path-${name}`, (m) => (m.weights = weights))).catch((e) => e);
      expect([err.code, err.message]).toEqual(['invalid_model', expect.stringMatching(/must be a plain relative path inside the bundle/)]);
    }
    // A checksum entry naming a file outside the bundle would hash it (and print part of the hash).
    const outside = await loadBundle(edited('path-sum', (m) => (m.sha256 = { '../../../../etc/hostname': '0'.repeat(64) }))).catch((e) => e);
    expect([outside.code, outside.message]).toEqual(['invalid_model', expect.stringMatching(/etc\/hostname.*must be a plain relative path/)]);
  });
  it('a manifest from a newer clipag (a later format_version) says to upgrade, not a schema error', async () => {
    // A newer version may also add fields this one does not know: the version is judged first.
    const newer = await loadBundle(edited('version-2', (m) => Object.assign(m, { format_version: 2, text_onnx: 'text.onnx' }))).catch((e) => e);
    expect(newer).toBeInstanceOf(EngineError);
    expect(newer.code).toBe('invalid_model');
    expect(newer.message).toMatch(/manifest\.json was made by a newer clipag \(bundle format_version 2; this version reads 1\): upgrade clipag/);
    expect(newer.message).not.toMatch(/Invalid input|Unrecognized key/);
    // A version that is no newer one (0, a string) stays a broken manifest.
    for (const [name, v] of [['version-0', 0], ['version-str', '2'], ['version-frac', 1.5]] as const) {
      const err = await loadBundle(edited(name, (m) => (m.format_version = v))).catch((e) => e);
      expect([err.code, err.message], name).toEqual(['invalid_model', expect.stringMatching(/is not a valid bundle manifest: format_version/)]);
    }
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
  it('checkFinite finds NaN and ±Inf in float32, float64 and float16 at any element, slices included; finite extremes, subnormals and -0 pass', async () => {
    const cases: [TensorData['dtype'], (n: number) => TensorData['data'], number[]][] = [
      ['float32', (n) => new Float32Array(n), [Number.NaN, Infinity, -Infinity]],
      ['float64', (n) => new Float64Array(n), [Number.NaN, Infinity, -Infinity]],
      ['float16', (n) => new Uint16Array(n), [0x7e00, 0x7c00, 0xfc00]], // NaN, +Inf, -Inf bit patterns
    ];
    const n = (1 << 22) + 10; // past one slice of checkFiniteYielding
    for (const [dtype, alloc, bads] of cases) {
      const data = alloc(n);
      const fine = dtype === 'float16' ? [0x7bff, 0xfbff, 0x0001, 0x8000] : dtype === 'float32' ? [3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -0] : [Number.MAX_VALUE, -Number.MAX_VALUE, 5e-324, -0];
      fine.forEach((v, i) => ((data as Float32Array)[i] = v));
      const weights = new Map([['w', { dtype, dims: [n], data }]]) as Map<string, TensorData>;
      checkFinite(weights, 'b');
      await checkFiniteYielding(weights, 'b');
      for (const at of [0, (1 << 22) - 1, 1 << 22, n - 1]) {
        for (const bad of bads) {
          const keep = (data as Float32Array)[at]!;
          (data as Float32Array)[at] = bad;
          const want = new RegExp(`tensor w holds a non-finite value .* at element ${at}:`);
          expect(() => checkFinite(weights, 'b'), `${dtype} ${bad} at ${at}`).toThrow(want);
          await expect(checkFiniteYielding(weights, 'b'), `${dtype} ${bad} at ${at}`).rejects.toThrow(want);
          (data as Float32Array)[at] = keep;
        }
      }
    }
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
  it('clipag gradcheck on an exact-GELU model checks in float32 by default (no float64 Erf kernel), and says why float64 is refused', async () => {
    const gelu = makeTinyBundle('gelu');
    const err = console.error;
    const errors: string[] = [];
    console.error = (...a: unknown[]) => errors.push(a.join(' '));
    try {
      const { code, out } = await capture(['gradcheck', '--model', gelu, '--json', '--directions', '2']);
      const res = JSON.parse(out);
      expect(res.dtype).toBe('float32');
      expect(res.maxRelError).toBeLessThan(2e-2);
      expect(code).toBe(0);
      const f64 = await capture(['gradcheck', '--model', gelu, '--dtype', 'float64']);
      expect(f64.code).not.toBe(0);
      expect(errors.join('\n')).toMatch(/cannot be checked in float64: it uses exact GELU.*use --dtype float32/);
    } finally {
      console.error = err;
      rmSync(gelu, { recursive: true, force: true });
    }
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
