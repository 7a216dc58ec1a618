// Foreign ONNX image towers (torch.onnx.export of an OpenAI-layout ViT, made by
// test/fixtures/foreign/make_foreign_onnx.py): import, forward parity with PyTorch, gradient check,
// and the refusals (unsupported ops listed by name, onnxruntime-fused ops refused with advice).
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { emitForeignTower, inspectForeignTower } from '../../gpu-worker/engine/clip/foreign.ts';
import { GraphBuilder } from '../../gpu-worker/engine/onnx/builder.ts';
import { encodeModel, readModelFile, writeModelFile } from '../../gpu-worker/engine/onnx/codec.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { LocalBlobStore } from '../../shared/adapters/local/blobstore.ts';
import { ModelStore } from '../../shared/modelstore.ts';
import { loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import type { ModelIR, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { runModel } from '../../gpu-worker/engine/runtime/session.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { main } from '../../cli/main.ts';
import { makeTinyBundle, tinyManifest } from '../helpers/bundle.ts';
import { maxRelErr } from '../helpers/clip.ts';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { REPO_ROOT } from '../../cli/common.ts';

const FIX = join(REPO_ROOT, 'test', 'fixtures', 'foreign');

describe.each(['quick', 'erf'])('torch.onnx export (%s GELU)', (variant) => {
  const model = readModelFile(join(FIX, `vision-${variant}.onnx`));
  const expected = JSON.parse(readFileSync(join(FIX, `vision-${variant}.expected.json`), 'utf8'));

  it('re-emitted with a fixed batch, it matches PyTorch within 1e-5', async () => {
    const info = inspectForeignTower(model);
    expect(info).toMatchObject({ inputName: 'image', resolution: 32, embedDim: 32 });
    const b = new GraphBuilder('foreign');
    const x = b.input('x', 'float32', expected.input_shape);
    b.output(emitForeignTower(b, model, info, x));
    // The exporter's runtime shape plumbing (Shape→Gather→Concat→Reshape) folded to constants.
    const reshape = b.nodes.filter((n) => n.op === 'Reshape');
    expect(reshape.length).toBeGreaterThan(0);
    expect(reshape.every((n) => b.consts.has(n.inputs[1]))).toBe(true);
    const out = await runModel(b.toModel(), { x: { dtype: 'float32', dims: expected.input_shape, data: Float32Array.from(expected.input) } });
    expect(maxRelErr(Array.from(Object.values(out)[0].data as Float32Array), expected.output)).toBeLessThan(1e-5);
  });
});

describe('a bundle with a foreign image tower', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-foreign-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('passes clipag gradcheck (float32)', async () => {
    // Text tower: the tiny reference CLIP's text weights; image tower: the torch export (same 32-d space
    // by shape only, which is all the gradient check needs).
    const src = makeTinyBundle('quickgelu');
    const all = readSafetensors(join(src, 'weights.safetensors')).tensors;
    const text = new Map([...all].filter(([k]) => !k.startsWith('visual.')));
    await writeSafetensors(join(dir, 'weights.safetensors'), text);
    copyFileSync(join(src, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    copyFileSync(join(FIX, 'vision-quick.onnx'), join(dir, 'vision.onnx'));
    writeFileSync(join(dir, 'manifest.json'), JSON.stringify({ ...tinyManifest('quickgelu'), name: 'foreign-test', image_onnx: { file: 'vision.onnx' } }));
    rmSync(src, { recursive: true, force: true });
    const lines: string[] = [];
    const log = console.log;
    console.log = (...a: unknown[]) => lines.push(a.join(' '));
    let code: number;
    try {
      code = await main(['gradcheck', '--model', dir, '--json', '--directions', '6']);
    } finally {
      console.log = log;
    }
    const res = JSON.parse(lines.join('\n'));
    expect(res.dtype).toBe('float32');
    expect(res.maxRelError).toBeLessThan(2e-2);
    expect(code).toBe(0);
  });
});

describe('refusals', () => {
  const model = readModelFile(join(FIX, 'vision-quick.onnx'));
  it('lists every op without a rule by name', () => {
    const bad = { ...model, nodes: model.nodes.map((n) => (n.op === 'Sigmoid' ? { ...n, op: 'HardSwish' } : n.op === 'Softmax' ? { ...n, op: 'Hardmax' } : n)) };
    const err = (() => {
      try {
        inspectForeignTower(bad);
      } catch (e) {
        return e as EngineError;
      }
    })();
    expect(err).toBeInstanceOf(EngineError);
    expect(err!.code).toBe('unsupported_op');
    expect(err!.message).toMatch(/Hardmax/);
    expect(err!.message).toMatch(/HardSwish/);
  });
  it('an op without a gradient rule is refused on the path from the image to the output, and accepted where it only builds a constant', () => {
    const add = model.nodes.find((n) => n.op === 'Add' && n.inputs.some((i) => model.initializers.has(i)))!;
    const bias = add.inputs.find((i) => model.initializers.has(i))!;
    // Cos of a weight feeds the path, but no gradient flows through it: it is computed once.
    const offPath: ModelIR = {
      ...model,
      nodes: [{ name: 'cos_of_bias', op: 'Cos', inputs: [bias], outputs: ['cos_bias'], attrs: {} }, ...model.nodes.map((n) => (n === add ? { ...n, inputs: n.inputs.map((i) => (i === bias ? 'cos_bias' : i)) } : n))],
    };
    expect(() => inspectForeignTower(offPath)).not.toThrow();
    const onPath: ModelIR = { ...model, nodes: model.nodes.map((n) => (n.op === 'Sigmoid' ? { ...n, op: 'Cos' } : n)) };
    expect(() => inspectForeignTower(onPath)).toThrow(/Cos \(no gradient rule\)/);
  });
  it('refuses onnxruntime-fused com.microsoft ops with export advice', () => {
    const fused = { ...model, nodes: model.nodes.map((n) => (n.op === 'LayerNormalization' ? { ...n, domain: 'com.microsoft', op: 'SkipLayerNormalization' } : n)) };
    expect(() => inspectForeignTower(fused)).toThrow(/com\.microsoft::SkipLayerNormalization.*unoptimized/s);
  });
  it('refuses opsets whose node forms are not opset 17\'s (before 13, from 18), with re-export advice', () => {
    expect(model.opset).toBe(17);
    for (const opset of [11, 12, 18, 21]) {
      expect(() => inspectForeignTower({ ...model, opset }), `opset ${opset}`).toThrow(new RegExp(`opset ${opset}; supported are opsets 13–17\\. Re-export it with opset_version=17`));
    }
    for (const opset of [13, 17]) expect(() => inspectForeignTower({ ...model, opset })).not.toThrow();
  });
  it('refuses a non-image input', () => {
    const odd = { ...model, inputs: [{ name: 'image', dtype: 'float32' as const, shape: [-1, 77] }] };
    expect(() => inspectForeignTower(odd)).toThrow(/\[batch, 3, R, R\]/);
  });
});

describe('a bundle is checked whole at load (and so at models push), not on its first job', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-foreign-bad-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  /** A foreign-tower bundle whose vision.onnx (and text weights) a test may spoil. */
  async function bundle(name: string, spoil: { model?: (m: ModelIR) => ModelIR; weights?: (w: Map<string, TensorData>) => void; onnxBytes?: Uint8Array }): Promise<string> {
    const out = join(dir, name);
    const src = makeTinyBundle('quickgelu');
    const text = new Map([...readSafetensors(join(src, 'weights.safetensors')).tensors].filter(([k]) => !k.startsWith('visual.')));
    spoil.weights?.(text);
    (await import('node:fs')).mkdirSync(out);
    await writeSafetensors(join(out, 'weights.safetensors'), text);
    copyFileSync(join(src, 'tokenizer.json'), join(out, 'tokenizer.json'));
    const model = readModelFile(join(FIX, 'vision-quick.onnx'));
    writeFileSync(join(out, 'vision.onnx'), spoil.onnxBytes ?? encodeModel(spoil.model ? spoil.model(model) : model));
    writeFileSync(join(out, 'manifest.json'), JSON.stringify({ ...tinyManifest('quickgelu'), name, image_onnx: { file: 'vision.onnx' } }));
    rmSync(src, { recursive: true, force: true });
    return out;
  }

  it('a sound foreign bundle loads', async () => {
    await expect(loadBundle(await bundle('sound', {}))).resolves.toMatchObject({ manifest: { name: 'sound' } });
  });

  it('refuses a NaN in the tower, a node reading a value nothing defines, and ONNX bytes that do not decode, naming the file', async () => {
    const nan = await bundle('nan', {
      model: (m) => {
        const [name, t] = [...m.initializers].find(([, t]) => t.dtype === 'float32' && t.data.length > 4)!;
        const data = Float32Array.from(t.data as Float32Array);
        data[3] = Number.NaN;
        m.initializers.set(name, { ...t, data });
        return m;
      },
    });
    await expect(loadBundle(nan)).rejects.toThrow(/bundle nan \(vision\.onnx\): tensor .* holds a non-finite value/);
    const dangling = await bundle('dangling', { model: (m) => ({ ...m, nodes: m.nodes.map((n, i) => (i === 3 ? { ...n, inputs: ['does_not_exist', ...n.inputs.slice(1)] } : n)) }) });
    await expect(loadBundle(dangling)).rejects.toThrow(/bundle dangling: vision\.onnx: .*does_not_exist/);
    const garbage = await bundle('garbage', { onnxBytes: new Uint8Array([0x0e, 0xff, 0xff, 0x01, 0x02, 0x03]) });
    await expect(loadBundle(garbage)).rejects.toThrow(/vision\.onnx: /);
  });

  it('a tower whose weights sit in a .data file beside it must name that file in sha256; then models push uploads it and a worker serves the bundle from the store', async () => {
    const out = await bundle('external', {});
    await writeModelFile(join(out, 'vision.onnx'), readModelFile(join(FIX, 'vision-quick.onnx')), { externalDataThreshold: 1024 });
    expect(readdirSync(out).sort()).toEqual(['manifest.json', 'tokenizer.json', 'vision.onnx', 'vision.onnx.data', 'weights.safetensors']);
    await expect(loadBundle(out)).rejects.toThrow(/bundle external: vision\.onnx keeps initializers in vision\.onnx\.data, which manifest\.json does not name: add it to "sha256"/);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    const digest = createHash('sha256').update(readFileSync(join(out, 'vision.onnx.data'))).digest('hex');
    writeFileSync(join(out, 'manifest.json'), JSON.stringify({ ...manifest, sha256: { 'vision.onnx.data': digest } }));
    await expect(loadBundle(out)).resolves.toMatchObject({ manifest: { name: 'external' } });
    // Pushed to a store and fetched by a worker's registry into its cache: the data file travels too.
    const blobs = new LocalBlobStore({ rootDir: mkdtempSync(join(dir, 'store-')), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    const pushed = await new ModelStore(blobs).push(out, 'external', { validate: async (d) => void (await loadBundle(d)) });
    expect(pushed.files.map((f) => f.path)).toContain('vision.onnx.data');
    const reg = createModelRegistry({ store: new ModelStore(blobs), cacheDir: mkdtempSync(join(dir, 'cache-')), threads: 1 });
    try {
      await reg.refresh();
      await expect(loadBundle(await reg.locate('external'))).resolves.toMatchObject({ manifest: { name: 'external' } });
    } finally {
      await reg.close();
    }
  });

  it('refuses a tower exported for a fixed batch of 1 (torch.onnx.export without dynamic_axes), with re-export advice', async () => {
    // The input says so: refused by inspectForeignTower.
    const fixedInput = await bundle('fixed-input', { model: (m) => ({ ...m, inputs: m.inputs.map((i) => ({ ...i, shape: [1, ...i.shape.slice(1)] })) }) });
    await expect(loadBundle(fixedInput)).rejects.toThrow(/bundle fixed-input: vision\.onnx: .*input image has a fixed batch size of 1 .*dynamic_axes=\{'image': \{0: 'batch'\}/);
    // The input claims a dynamic batch, but a Reshape holds the export's batch of 1: the load check at batch 2 finds it.
    const fixedReshape = await bundle('fixed-reshape', {
      model: (m) => {
        const r = m.nodes.find((n) => n.op === 'Reshape')!;
        const inits = new Map(m.initializers);
        // The exporter's runtime shape plumbing folds to constants; one baked-in shape with batch 1:
        // the first Reshape of the fixture at batch 1, taken from a batch-1 build.
        const b = new GraphBuilder('probe');
        emitForeignTower(b, m, inspectForeignTower(m), b.input('x', 'float32', [1, 3, 32, 32]));
        const emitted = b.nodes.find((n) => n.op === 'Reshape')!;
        const target = b.shape(emitted.outputs[0]!);
        inits.set('baked_shape', { dtype: 'int64', dims: [target.length], data: BigInt64Array.from(target.map(BigInt)) });
        return { ...m, initializers: inits, nodes: m.nodes.map((n) => (n === r ? { ...n, inputs: [n.inputs[0]!, 'baked_shape'] } : n)) };
      },
    });
    const err = await loadBundle(fixedReshape).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toMatch(/invalid_graph|invalid_model/);
    expect((err as EngineError).message).toMatch(/bundle fixed-reshape: vision\.onnx: the tower builds for one image but not for a batch of 2 .*re-export it with a dynamic batch axis/);
  });

  it('refuses integer weights and weights of another architecture, naming the bundle and the file', async () => {
    const ints = await bundle('ints', { weights: (w) => w.set('text_projection', { ...w.get('text_projection')!, dtype: 'int32', data: new Int32Array(w.get('text_projection')!.data.length) }) });
    await expect(loadBundle(ints)).rejects.toThrow(/bundle ints: weights\.safetensors: tensor text_projection is int32; weights are float32, float16 or float64/);
    const missing = await bundle('missing', { weights: (w) => w.delete('text_projection') });
    await expect(loadBundle(missing)).rejects.toThrow(/bundle missing: weights\.safetensors: weights do not match the architecture: .*text_projection/);
  });
});
