// `clipag models import` on every fixture format (../shared/data/clip-reference, README "PyTorch
// checkpoint files"), plus the refusals: malicious pickle, truncated zip, missing/extra tensors, a shape
// that fits no architecture, and no partial bundle left behind in each failure case.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { importModel, type ImportOptions } from '../../gpu-worker/engine/import/import.ts';
import { PyTuple, TensorRef, restrictedUnpickle, type UnpickleStats } from '../../gpu-worker/engine/import/pickle.ts';
import { openTorchCheckpoint } from '../../gpu-worker/engine/import/torch.ts';
import { ZipReader } from '../../gpu-worker/engine/import/zip.ts';
import { f16ToF32, f32ToF16, readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { main } from '../../cli/main.ts';
import { asNumbers, loadReference, logits, maxRelErr } from '../helpers/clip.ts';
import { referencePath } from '../helpers/reference.ts';
import { writeTorchStateDict } from './torch-writer.ts';

const PROMPTS = ['a photo of a cat', 'a diagram of a red circle', 'two dogs playing in the snow!', 'café 赤い円 🙂'];
const work = mkdtempSync(join(tmpdir(), 'clipag-import-test-'));
const vocab = referencePath('bpe_simple_vocab_16e6.txt.gz');
const measured: Record<string, Record<string, number>> = {};
afterAll(() => console.log('max relative errors (max|a − ref| / max|ref|):\n' + JSON.stringify(measured, null, 1)));

let n = 0;
const outDir = (tag: string) => join(work, `${tag}-${n++}`);
const quiet: Partial<ImportOptions> = { vocab, license: 'MIT (test weights)' };

/** Features of a bundle through the public engine (tokenizer + graphs), vs a vectors file. */
async function compare(dir: string, vectorsFile: string) {
  const ref = loadReference(vectorsFile);
  const engine = await ClipEngine.open(dir);
  try {
    const px = ref.get('pixels') ?? undefined;
    const R = 32;
    // fp16 vectors carry `image` (normalized) only; undo the normalization to get pixels when needed.
    const pixels = px ? (px.data as Float32Array) : unnormalize(ref.get('image')!.data as Float32Array);
    const images = [0, 1, 2, 3].map((i) => ({ width: R, height: R, data: pixels.slice(i * 3 * R * R, (i + 1) * 3 * R * R) }));
    const img = (await engine.embedImages(images)).raw;
    const txt = (await engine.embedText(PROMPTS)).raw;
    const w = (await loadBundle(dir)).weights.get('logit_scale')!;
    const ls = Math.exp(w.dtype === 'float16' ? f16ToF32((w.data as Uint16Array)[0]) : (w.data as Float32Array)[0]);
    return {
      image_features: maxRelErr(img, asNumbers(ref.get('image_features')!)),
      text_features: maxRelErr(txt, asNumbers(ref.get('text_features')!)),
      logits_per_image: maxRelErr(logits(img, txt, 4, 32, ls), asNumbers(ref.get('logits_per_image')!)),
    };
  } finally {
    await engine.close();
  }
}

function unnormalize(image: Float32Array): Float32Array {
  const mean = [0.48145466, 0.4578275, 0.40821073], std = [0.26862954, 0.26130258, 0.27577711];
  const hw = 32 * 32;
  return image.map((v, i) => v * std[Math.floor(i / hw) % 3] + mean[Math.floor(i / hw) % 3]);
}

/** Nothing from a failed import is left next to the target: neither the bundle nor its temp folder. */
function expectNoLeftovers(out: string) {
  expect(existsSync(out)).toBe(false);
  expect(readdirSync(work).filter((f) => f.includes('.importing-'))).toEqual([]);
}

async function expectRefused(src: string, opts: Partial<ImportOptions>, pattern: RegExp): Promise<EngineError> {
  const out = outDir('refused');
  const err = await importModel(src, { ...quiet, ...opts, out }).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(EngineError);
  expect((err as Error).message).toMatch(pattern);
  expectNoLeftovers(out);
  return err as EngineError;
}

const tinyWeights = () => [...loadReference('tiny-quickgelu.safetensors')] as [string, TensorData][];

describe('models import: fixture formats', () => {
  it('open_clip/OpenAI safetensors (tiny-quickgelu) → embeddings within 1e-5; gradient check passes', async () => {
    const res = await importModel(referencePath('tiny-quickgelu.safetensors'), { ...quiet, out: outDir('st'), textHeads: 4 });
    expect(res.format).toBe('safetensors');
    expect(res.arch).toMatchObject({ visionHeads: 1, textHeads: 4, visionPatchSize: 8, imageResolution: 32, embedDim: 32, activation: 'quick_gelu' });
    expect(res.gradcheck?.passed).toBe(true);
    expect(res.gradcheck?.directions).toHaveLength(2);
    const m = (measured['tiny-quickgelu.safetensors'] = await compare(res.dir, 'tiny-quickgelu-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
    expect(m.logits_per_image).toBeLessThan(1e-5);
    // manifest checksums are checked on load
    const manifest = JSON.parse(readFileSync(join(res.dir, 'manifest.json'), 'utf8'));
    expect(Object.keys(manifest.sha256).sort()).toEqual(['tokenizer.json', 'weights.safetensors']);
  });

  it('the bundle folder is readable by other users (0755, not mkdtemp 0700); an abandoned temp folder of a dead import is removed', async () => {
    const out = outDir('mode');
    // What an import killed mid-write leaves (pid 2^22 + 1 is above Linux's pid_max default: not running),
    // and one of a live import (this process), which must stay.
    const dead = join(dirname(out), `.${basename(out)}.importing-4194305-abcdef`);
    const live = join(dirname(out), `.${basename(out)}.importing-${process.pid}-ghijkl`);
    mkdirSync(dead);
    mkdirSync(live);
    const res = await importModel(referencePath('tiny-quickgelu.safetensors'), { ...quiet, out, textHeads: 4, verify: false });
    expect(statSync(res.dir).mode & 0o777).toBe(0o755);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(live)).toBe(true);
    rmSync(live, { recursive: true });
  });

  it('tiny-gelu.safetensors with --activation gelu → gelu vectors within 1e-5', async () => {
    // Verified: exact GELU's Erf has no float64 CPU kernel, so the check runs in float32.
    const res = await importModel(referencePath('tiny-gelu.safetensors'), { ...quiet, out: outDir('gelu'), activation: 'gelu', textHeads: 4 });
    expect(res.gradcheck).toMatchObject({ dtype: 'float32', passed: true, tolerance: 2e-2 });
    expect(res.arch.activation).toBe('gelu');
    expect(res.inferred.activation).toBe('flag');
    const m = (measured['tiny-gelu.safetensors --activation gelu'] = await compare(res.dir, 'tiny-gelu-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
    expect(m.logits_per_image).toBeLessThan(1e-5);
  });

  it('tiny-quickgelu-statedict.pt: same keys/shapes/F32, bit-identical bytes, then 1e-5', async () => {
    const st = loadReference('tiny-quickgelu.safetensors');
    const ck = openTorchCheckpoint(referencePath('tiny-quickgelu-statedict.pt'));
    try {
      expect(ck.prefix).toBe('tiny-quickgelu-statedict');
      const sd = ck.root as Map<string, TensorRef>;
      expect([...sd.keys()]).toEqual([...st.keys()]);
      for (const [k, ref] of sd) {
        expect(ref.dtype).toBe('F32');
        expect(ref.shape).toEqual(st.get(k)!.dims);
        const a = ck.readTensor(ref);
        expect(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(st.get(k)!.data.buffer, st.get(k)!.data.byteOffset, st.get(k)!.data.byteLength))).toBe(true);
      }
      expect([...new Set(ck.stats.globals)].sort()).toEqual(['collections.OrderedDict', 'torch.FloatStorage', 'torch._utils._rebuild_tensor_v2']);
    } finally {
      ck.close();
    }
    const res = await importModel(referencePath('tiny-quickgelu-statedict.pt'), { ...quiet, out: outDir('sd'), textHeads: 4 });
    expect(res.format).toBe('torch-state-dict');
    expect(res.gradcheck?.passed).toBe(true);
    const bundleWeights = readSafetensors(join(res.dir, 'weights.safetensors')).tensors;
    for (const [k, t] of st) expect(Buffer.compare(Buffer.from(bundleWeights.get(k)!.data.buffer), Buffer.from(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength)))).toBe(0);
    const m = (measured['tiny-quickgelu-statedict.pt'] = await compare(res.dir, 'tiny-quickgelu-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
    expect(m.logits_per_image).toBeLessThan(1e-5);
  });

  it('tiny-openclip-checkpoint.pt: epoch/name/optimizer structure parse; module. stripped; fp16 weights', async () => {
    const ck = openTorchCheckpoint(referencePath('tiny-openclip-checkpoint.pt'));
    try {
      const root = ck.root as Map<string, unknown>;
      expect([...root.keys()]).toEqual(['epoch', 'name', 'state_dict', 'optimizer']);
      expect(root.get('epoch')).toBe(3);
      expect(root.get('name')).toBe('tiny-robust');
      const sd = root.get('state_dict') as Map<string, TensorRef>;
      expect(sd.size).toBe(62);
      expect([...sd.keys()].every((k) => k.startsWith('module.'))).toBe(true);
      expect([...sd.values()].every((t) => t.dtype === 'F16')).toBe(true);
      const opt = root.get('optimizer') as Map<string, unknown>;
      const state = opt.get('state') as Map<number, Map<string, unknown>>;
      expect([...state.keys()]).toEqual(Array.from({ length: 61 }, (_, i) => i)); // int keys; 61 has no state
      const s0 = state.get(0)!;
      expect([...s0.keys()]).toEqual(['step', 'exp_avg', 'exp_avg_sq']);
      const step = s0.get('step') as TensorRef;
      expect(step.shape).toEqual([]);
      expect(step.dtype).toBe('F32');
      expect((ck.readTensor(step).data as Float32Array)[0]).toBe(1); // a 0-d tensor reads as one value
      const groups = opt.get('param_groups') as Map<string, unknown>[];
      expect(groups).toHaveLength(2);
      expect(groups.map((g) => g.get('weight_decay'))).toEqual([0, 0.2]);
      expect(groups[0].get('lr')).toBe(5e-4); // BINFLOAT
      expect((groups[0].get('betas') as PyTuple).items).toEqual([0.9, 0.98]);
      expect(groups[0].get('eps')).toBe(1e-6);
      expect(groups[0].get('amsgrad')).toBe(false);
      expect(groups[0].get('foreach')).toBe(null);
      expect(groups[0].get('params')).toEqual(Array.from({ length: 40 }, (_, i) => i));
      expect(groups[1].get('params')).toEqual(Array.from({ length: 22 }, (_, i) => 40 + i));
    } finally {
      ck.close();
    }
    const res = await importModel(referencePath('tiny-openclip-checkpoint.pt'), { ...quiet, out: outDir('ck'), textHeads: 4 });
    expect(res.format).toBe('open_clip-checkpoint');
    expect(res.info).toMatchObject({ epoch: 3, name: 'tiny-robust', stripped_prefix: 'module.', optimizer: { state_entries: 61, param_groups: 2 } });
    // weights == float32(float16(w)) for the tiny weights
    const bw = readSafetensors(join(res.dir, 'weights.safetensors')).tensors;
    for (const [k, t] of loadReference('tiny-quickgelu.safetensors')) {
      const got = bw.get(k)!;
      expect(got.dtype).toBe('float32');
      const want = Float32Array.from(t.data as Float32Array, (v) => f16ToF32(f32ToF16(v)));
      expect(Buffer.from(got.data.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    }
    const m = (measured['tiny-openclip-checkpoint.pt vs fp16 vectors'] = await compare(res.dir, 'tiny-openclip-fp16-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
    expect(m.logits_per_image).toBeLessThan(1e-5);
    const f = (measured['tiny-openclip-checkpoint.pt vs fp32 vectors'] = await compare(res.dir, 'tiny-quickgelu-vectors.safetensors'));
    expect(f.image_features).toBeLessThan(2e-3);
    expect(f.text_features).toBeLessThan(2e-3);
    expect(f.logits_per_image).toBeLessThan(5e-3);
    for (const v of [f.image_features, f.text_features, f.logits_per_image]) expect(v).toBeGreaterThan(1e-5); // fp16 rounding really applied
  });

  it('--keep-fp16 keeps F16 weights in the bundle, same embeddings', async () => {
    const res = await importModel(referencePath('tiny-openclip-checkpoint.pt'), { ...quiet, out: outDir('ck16'), textHeads: 4, keepFp16: true, verify: false });
    const bw = readSafetensors(join(res.dir, 'weights.safetensors')).tensors;
    expect([...bw.values()].every((t) => t.dtype === 'float16')).toBe(true);
    expect(res.bytes).toBe(13539588 / 2);
    const m = (measured['tiny-openclip-checkpoint.pt --keep-fp16 vs fp16 vectors'] = await compare(res.dir, 'tiny-openclip-fp16-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
  });

  it('Hugging Face CLIPModel safetensors (renamed in this test, q/k/v split, projections transposed) → 1e-5', async () => {
    const hf = new Map<string, TensorData>();
    const put = (name: string, t: TensorData) => hf.set(name, t);
    const sliceRows = (t: TensorData, part: number) => {
      const rows = t.dims[0] / 3;
      const per = t.data.length / 3;
      return { dtype: t.dtype, dims: [rows, ...t.dims.slice(1)], data: (t.data as Float32Array).slice(part * per, (part + 1) * per) } as TensorData;
    };
    const transpose = (t: TensorData): TensorData => {
      const [r, c] = t.dims;
      const s = t.data as Float32Array;
      const o = new Float32Array(r * c);
      for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) o[j * r + i] = s[i * c + j];
      return { dtype: 'float32', dims: [c, r], data: o };
    };
    const flat: Record<string, string> = {
      token_embedding: 'text_model.embeddings.token_embedding', positional_embedding: 'text_model.embeddings.position_embedding.weight',
      ln_final: 'text_model.final_layer_norm', 'visual.class_embedding': 'vision_model.embeddings.class_embedding',
      'visual.conv1': 'vision_model.embeddings.patch_embedding', 'visual.positional_embedding': 'vision_model.embeddings.position_embedding.weight',
      'visual.ln_pre': 'vision_model.pre_layrnorm', 'visual.ln_post': 'vision_model.post_layernorm', logit_scale: 'logit_scale',
    };
    for (const [k, t] of tinyWeights()) {
      if (k === 'visual.proj') { put('visual_projection.weight', transpose(t)); continue; }
      if (k === 'text_projection') { put('text_projection.weight', transpose(t)); continue; }
      const m = /^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$/.exec(k);
      if (m) {
        const base = `${m[1] ? 'vision_model' : 'text_model'}.encoder.layers.${m[2]}`;
        const rest = m[3];
        const ip = /^attn\.in_proj_(weight|bias)$/.exec(rest);
        if (ip) {
          ['q', 'k', 'v'].forEach((x, i) => put(`${base}.self_attn.${x}_proj.${ip[1]}`, sliceRows(t, i)));
          continue;
        }
        put(`${base}.${rest.replace('attn.out_proj', 'self_attn.out_proj').replace('ln_1', 'layer_norm1').replace('ln_2', 'layer_norm2').replace('mlp.c_fc', 'mlp.fc1').replace('mlp.c_proj', 'mlp.fc2')}`, t);
        continue;
      }
      const key = Object.keys(flat).find((f) => k === f || k.startsWith(`${f}.`));
      if (!key) throw new Error(`no HF name for ${k}`);
      put(k === key ? flat[key] : `${flat[key]}${k.slice(key.length)}`, t);
    }
    put('text_model.embeddings.position_ids', { dtype: 'int64', dims: [1, 77], data: BigInt64Array.from({ length: 77 }, (_, i) => BigInt(i)) });
    put('vision_model.embeddings.position_ids', { dtype: 'int64', dims: [1, 17], data: BigInt64Array.from({ length: 17 }, (_, i) => BigInt(i)) });
    const dir = mkdtempSync(join(work, 'hf-'));
    await writeSafetensors(join(dir, 'model.safetensors'), hf, { format: 'pt' });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({
      architectures: ['CLIPModel'], projection_dim: 32,
      text_config: { hidden_act: 'quick_gelu', hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 2 },
      vision_config: { hidden_act: 'quick_gelu', hidden_size: 64, num_attention_heads: 1, num_hidden_layers: 2, patch_size: 8, image_size: 32 },
    }));
    const res = await importModel(join(dir, 'model.safetensors'), { ...quiet, out: outDir('hf') });
    expect(res.format).toBe('hf-clip');
    expect(res.ignored.sort()).toEqual(['text_model.embeddings.position_ids', 'vision_model.embeddings.position_ids']);
    expect(res.arch).toMatchObject({ textHeads: 4, visionHeads: 1, activation: 'quick_gelu' });
    expect(res.inferred.textHeads).toMatch(/config\.json text_config\.num_attention_heads/);
    expect(res.gradcheck?.passed).toBe(true);
    // the renamed weights come back bit-identical
    const bw = readSafetensors(join(res.dir, 'weights.safetensors')).tensors;
    for (const [k, t] of tinyWeights()) expect(Buffer.from(bw.get(k)!.data.buffer).equals(Buffer.from((t.data as Float32Array).slice().buffer))).toBe(true);
    const m = (measured['Hugging Face CLIPModel safetensors (generated)'] = await compare(res.dir, 'tiny-quickgelu-vectors.safetensors'));
    expect(m.image_features).toBeLessThan(1e-5);
    expect(m.text_features).toBeLessThan(1e-5);
    expect(m.logits_per_image).toBeLessThan(1e-5);

    // The import review: a config.json without num_attention_heads (or hidden_act) is the model
    // transformers builds from it, with CLIPTextConfig's 8 heads (the vision tower's 12 does not divide
    // this tiny width, so it is given here), not width // 64; and the report says where each came from.
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ architectures: ['CLIPModel'], projection_dim: 32, text_config: { hidden_size: 64 }, vision_config: { hidden_size: 64, num_attention_heads: 1 } }));
    const defaults = await importModel(join(dir, 'model.safetensors'), { ...quiet, out: outDir('hf-defaults') });
    expect(defaults.arch).toMatchObject({ textHeads: 8, visionHeads: 1, activation: 'quick_gelu' });
    expect(defaults.inferred.textHeads).toMatch(/config\.json \(no text_config\.num_attention_heads: transformers' default 8\)/);
    expect(defaults.inferred.activation).toMatch(/config\.json \(no hidden_act: transformers' default quick_gelu\)/);
  });

  it('the CLI verb writes a bundle and prints a JSON summary', async () => {
    const out = outDir('cli');
    const logs: string[] = [];
    const orig = console.log;
    console.log = (s: string) => logs.push(s);
    try {
      const code = await main(['models', 'import', referencePath('tiny-quickgelu-statedict.pt'), '-o', out, '--vocab', vocab, '--text-heads', '4', '--name', 'tiny-cli', '--json']);
      expect(code).toBe(0);
    } finally {
      console.log = orig;
    }
    const s = JSON.parse(logs.at(-1)!);
    expect(s).toMatchObject({ name: 'tiny-cli', format: 'torch-state-dict', tensors: 62, gradcheck: { passed: true } });
    expect((await loadBundle(out)).manifest.name).toBe('tiny-cli');
  });
});

describe('models import: refusals leave nothing behind', () => {
  it('a tokenizer.json that does not parse is refused under its own path, before any weight is converted', async () => {
    const bad = join(work, 'bad-tokenizer.json');
    writeFileSync(bad, '{ not json');
    let converted = 0;
    const err = await expectRefused(referencePath('tiny-quickgelu.safetensors'), { vocab: undefined, tokenizer: bad, textHeads: 4, onProgress: () => void converted++ }, /tokenizer .*bad-tokenizer\.json: not valid JSON/);
    expect(err.code).toBe('invalid_tokenizer');
    expect(converted).toBe(0);
  });

  it('malicious.pt is refused by the allow-list, naming os system, before any REDUCE', async () => {
    const src = referencePath('malicious.pt');
    // the container is fine: the reader gets as far as data.pkl
    const zip = ZipReader.open(src);
    const pkl = zip.read('malicious/data.pkl');
    zip.close();
    expect(pkl.length).toBe(86);
    const stats: UnpickleStats = { reduces: 0, globals: [] };
    let err: unknown;
    try {
      restrictedUnpickle(pkl, 'malicious.pt', stats);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).detail.global).toBe('os.system');
    expect(stats).toEqual({ reduces: 0, globals: ['os.system'] });
    const e2 = await expectRefused(src, {}, /os system.*not on the allow-list/);
    expect(e2.message).toContain('malicious/data.pkl');
  });

  it('a truncated zip', async () => {
    const bytes = readFileSync(referencePath('tiny-quickgelu-statedict.pt'));
    const p = join(work, 'truncated.pt');
    writeFileSync(p, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    await expectRefused(p, { textHeads: 4 }, /truncated or corrupt/);
    // cut inside the central directory too
    writeFileSync(p, bytes.subarray(0, bytes.length - 30));
    await expectRefused(p, { textHeads: 4 }, /not a readable zip archive/);
  });

  it('a checkpoint with a missing tensor, and one with an extra tensor', async () => {
    const missing = join(work, 'missing.pt');
    writeTorchStateDict(missing, tinyWeights().filter(([k]) => k !== 'visual.ln_post.bias'));
    await expectRefused(missing, { textHeads: 4 }, /missing visual\.ln_post\.bias \[64\]/);
    const extra = join(work, 'extra.pt');
    writeTorchStateDict(extra, [...tinyWeights(), ['visual.head.weight', { dtype: 'float32', dims: [2, 2], data: new Float32Array(4) }]]);
    await expectRefused(extra, { textHeads: 4 }, /unexpected tensor visual\.head\.weight/);
    // the hand-written checkpoint itself is fine when complete
    const ok = join(work, 'ok.pt');
    writeTorchStateDict(ok, tinyWeights());
    const res = await importModel(ok, { ...quiet, out: outDir('ok'), textHeads: 4, verify: false });
    expect(res.tensors).toBe(62);
  });

  it('a shape that fits no architecture', async () => {
    const w = new Map(tinyWeights());
    w.set('visual.positional_embedding', { dtype: 'float32', dims: [18, 64], data: new Float32Array(18 * 64) });
    const p = join(work, 'badshape.safetensors');
    await writeSafetensors(p, w);
    await expectRefused(p, { textHeads: 4 }, /not grid²\+1/);
    const w2 = new Map(tinyWeights());
    w2.set('transformer.resblocks.1.mlp.c_fc.weight', { dtype: 'float32', dims: [128, 64], data: new Float32Array(128 * 64) });
    const p2 = join(work, 'badshape2.safetensors');
    await writeSafetensors(p2, w2);
    await expectRefused(p2, { textHeads: 4 }, /transformer\.resblocks\.1\.mlp\.c_fc\.weight has shape \[128,64\], expected \[256,64\]/);
  });

  it('no tokenizer, an occupied target, and a non-checkpoint file', async () => {
    await expectRefused(referencePath('tiny-quickgelu.safetensors'), { vocab: undefined }, /--vocab/);
    copyFileSync(referencePath('LICENSE-CLIP.txt'), join(work, 'x.txt'));
    await expect(importModel(referencePath('tiny-quickgelu.safetensors'), { ...quiet, out: work })).rejects.toThrow(/already exists/);
    await expectRefused(join(work, 'x.txt'), {}, /neither safetensors nor a PyTorch zip checkpoint/);
  });
});
