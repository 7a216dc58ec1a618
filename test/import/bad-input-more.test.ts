// More bad input for `clipag models import` (review of the non-HTTP boundaries, items 2, 6, 7, 8, 9):
// a record whose bytes fail the ZIP CRC-32, F16 NaN/Inf weights kept with --keep-fp16 --no-verify, -o a
// symbolic link, a Hugging Face config.json that is not an object (or whose head count is not a positive
// integer), a bad --vocab file, and two imports racing for one -o DIR. Each damaged input is made here,
// in a temp folder, from the shared reference files; each refusal is checked to come before any weight is converted where that matters,
// and to leave nothing behind.
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, deflateRawSync, gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { loadBundle } from '../../gpu-worker/engine/clip/bundle.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { importModel, type ImportOptions } from '../../gpu-worker/engine/import/import.ts';
import { ZipReader } from '../../gpu-worker/engine/import/zip.ts';
import { f32ToF16, readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { main } from '../../cli/main.ts';
import { loadReference } from '../helpers/clip.ts';
import { REPO_ROOT, referencePath } from '../helpers/reference.ts';
import { statePickle, zipStored } from './torch-writer.ts';

const work = mkdtempSync(join(tmpdir(), 'clipag-import-bad-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const vocab = referencePath('bpe_simple_vocab_16e6.txt.gz');
const quiet: Partial<ImportOptions> = { vocab, license: 'MIT (test weights)', verify: false };
let n = 0;
const outDir = (tag: string) => join(work, `${tag}-${n++}`);
const tinyWeights = () => [...loadReference('tiny-quickgelu.safetensors')] as [string, TensorData][];

/** Runs an import that must be refused; returns the error and how many tensors were converted first. */
async function refused(src: string, opts: Partial<ImportOptions>, pattern: RegExp): Promise<{ err: EngineError; converted: number }> {
  const out = opts.out ?? outDir('refused');
  let converted = 0;
  const err = await importModel(src, { ...quiet, ...opts, out, onProgress: () => void converted++ }).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(EngineError);
  expect((err as Error).message).toMatch(pattern);
  // nothing left behind: neither the bundle nor its staging folder
  if (!opts.out) expect(existsSync(out)).toBe(false);
  expect(readdirSync(work).filter((f) => f.includes('.importing-'))).toEqual([]);
  return { err: err as EngineError, converted };
}

/** A safetensors file of raw (dtype, shape, bytes) entries, for dtypes writeSafetensors has no IR type for (BF16). */
function writeRawSafetensors(path: string, entries: [string, string, number[], Uint8Array][]): void {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [name, dtype, shape, bytes] of entries) {
    header[name] = { dtype, shape, data_offsets: [off, off + bytes.byteLength] };
    off += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), ...entries.map(([, , , b]) => Buffer.from(b.buffer, b.byteOffset, b.byteLength))]));
}

const bytesOf = (t: TensorData) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);

describe('#2 ZIP records are checked against their CRC-32', () => {
  it('one bit flipped inside a tensor record of a .pt is refused, naming the record and saying the file is corrupt', async () => {
    const ref = referencePath('tiny-quickgelu-statedict.pt');
    const zip = ZipReader.open(ref);
    let record: string, at: number;
    try {
      // the largest storage record (token_embedding), as the review's repro
      const big = [...zip.entries.values()].filter((e) => e.name.includes('/data/')).sort((a, b) => b.size - a.size)[0]!;
      record = big.name;
      at = zip.dataOffset(record) + 1001;
    } finally {
      zip.close();
    }
    const bytes = Buffer.from(readFileSync(ref));
    bytes[at] ^= 0x10;
    const p = join(work, 'flipped.pt');
    writeFileSync(p, bytes);
    const { err } = await refused(p, { textHeads: 4 }, new RegExp(`record ${record.replace(/[/.]/g, '\\$&')} fails its CRC-32 check.*the file is corrupt \\(download or copy it again\\)`));
    expect(err.code).toBe('invalid_model');
    expect(err.message).toContain(p);
    // the same file, unflipped, imports
    const ok = join(work, 'unflipped.pt');
    bytes[at] ^= 0x10;
    writeFileSync(ok, bytes);
    expect((await importModel(ok, { ...quiet, out: outDir('unflipped'), textHeads: 4 })).tensors).toBe(62);
  });

  it('a checkpoint saved without CRCs (torch set_crc32_options(False) writes 0) imports: 0 is "not recorded", not a mismatch', async () => {
    const bytes = Buffer.from(readFileSync(referencePath('tiny-quickgelu-statedict.pt')));
    // Every central-directory entry's CRC-32 (offset 16) and every local header's (offset 14) set to 0.
    for (let at = 0; at + 4 <= bytes.length; at++) {
      const sig = bytes.readUInt32LE(at);
      if (sig === 0x02014b50 && at + 20 <= bytes.length) bytes.writeUInt32LE(0, at + 16);
      if (sig === 0x04034b50 && at + 18 <= bytes.length) bytes.writeUInt32LE(0, at + 14);
    }
    const p = join(work, 'no-crc.pt');
    writeFileSync(p, bytes);
    const zip = ZipReader.open(p);
    try {
      expect([...zip.entries.values()].every((e) => e.crc32 === 0)).toBe(true);
    } finally {
      zip.close();
    }
    expect((await importModel(p, { ...quiet, out: outDir('no-crc'), textHeads: 4 })).tensors).toBe(62);
  });

  it('a flipped byte in data.pkl is refused by the CRC before the pickle is decoded', async () => {
    const ref = referencePath('tiny-quickgelu-statedict.pt');
    const zip = ZipReader.open(ref);
    const pkl = 'tiny-quickgelu-statedict/data.pkl';
    const data = zip.read(pkl);
    // flip a letter of a tensor name: the pickle still decodes, only the CRC can tell
    const at = zip.dataOffset(pkl) + Buffer.from(data).indexOf('positional_embedding') + 3;
    zip.close();
    const bytes = Buffer.from(readFileSync(ref));
    bytes[at] ^= 0x20;
    const p = join(work, 'flipped-pkl.pt');
    writeFileSync(p, bytes);
    await refused(p, { textHeads: 4 }, /record tiny-quickgelu-statedict\/data\.pkl fails its CRC-32 check/);
  });

  it('a record read only in part is still checked whole (once): damage outside the tensor bytes is refused too', async () => {
    // Each storage record carries 64 spare bytes after its tensor, so every read covers only part of it.
    const tensors = tinyWeights();
    const build = (damage: boolean): string => {
      const records: [string, Uint8Array][] = [['archive/data.pkl', statePickle(tensors)]];
      tensors.forEach(([, t], i) => {
        const rec = new Uint8Array(t.data.byteLength + 64);
        rec.set(bytesOf(t));
        records.push([`archive/data/${i}`, rec]);
      });
      records.push(['archive/version', Buffer.from('3\n')]);
      const zipBytes = Buffer.from(zipStored(records));
      const p = join(work, `spare-${damage ? 'bad' : 'ok'}.pt`);
      if (damage) {
        writeFileSync(p, zipBytes);
        const z = ZipReader.open(p);
        const off = z.dataOffset('archive/data/3') + z.entry('archive/data/3').size - 10; // in the spare bytes
        z.close();
        zipBytes[off] ^= 0x01;
      }
      writeFileSync(p, zipBytes);
      return p;
    };
    const good = await importModel(build(false), { ...quiet, out: outDir('spare-ok'), textHeads: 4 });
    expect(good.tensors).toBe(62);
    // the weights are those of the tensors, not of the spare bytes
    const w = readSafetensors(join(good.dir, 'weights.safetensors')).tensors;
    for (const [k, t] of tensors) expect(Buffer.from(bytesOf(w.get(k)!)).equals(Buffer.from(bytesOf(t)))).toBe(true);
    await refused(build(true), { textHeads: 4 }, /record archive\/data\/3 fails its CRC-32 check/);
  });

  it('ZipReader: a DEFLATE record with a wrong CRC is refused, a right one reads; a partial STORED read checks the record', () => {
    const plain = Buffer.from('x'.repeat(1000) + 'tail');
    const make = (crcOf: Buffer) => {
      const deflated = deflateRawSync(plain);
      const z = Buffer.from(zipStored([['a/deflated', deflated], ['a/stored', plain]]));
      // turn the first record into a DEFLATE one: method, uncompressed size and CRC in the local and central headers
      const cd = z.readUInt32LE(z.length - 22 + 16);
      for (const [methodAt, crcAt, sizeAt] of [[8, 14, 22], [cd + 10, cd + 16, cd + 24]] as const) {
        z.writeUInt16LE(8, methodAt);
        z.writeUInt32LE(crc32(crcOf), crcAt);
        z.writeUInt32LE(plain.length, sizeAt);
      }
      const p = join(work, `deflate-${n++}.zip`);
      writeFileSync(p, z);
      return p;
    };
    const ok = ZipReader.open(make(plain));
    try {
      expect(Buffer.from(ok.read('a/deflated')).toString()).toBe(plain.toString());
      expect(Buffer.from(ok.read('a/stored', 1000, 4)).toString()).toBe('tail');
    } finally {
      ok.close();
    }
    const bad = ZipReader.open(make(Buffer.from('something else')));
    try {
      expect(() => bad.read('a/deflated')).toThrow(/record a\/deflated fails its CRC-32 check.*corrupt/);
    } finally {
      bad.close();
    }
    // a STORED record damaged before the range that is read
    const p = join(work, 'stored-partial.zip');
    const z = Buffer.from(zipStored([['a/stored', plain]]));
    z[30 + 'a/stored'.length + 5] ^= 0x01;
    writeFileSync(p, z);
    const partial = ZipReader.open(p);
    try {
      expect(() => partial.read('a/stored', 1000, 4)).toThrow(/record a\/stored fails its CRC-32 check/);
    } finally {
      partial.close();
    }
  });
});

describe('#6 --keep-fp16 --no-verify: F16 weights are checked for NaN/Inf too', () => {
  const f16Source = async (name: string, poison: { tensor: string; index: number; bits: number }) => {
    const m = new Map<string, TensorData>();
    for (const [k, t] of tinyWeights()) {
      const h = Uint16Array.from(t.data as Float32Array, (v) => f32ToF16(v));
      if (k === poison.tensor) h[poison.index] = poison.bits;
      m.set(k, { dtype: 'float16', dims: t.dims, data: h });
    }
    const p = join(work, name);
    await writeSafetensors(p, m);
    return p;
  };

  it('an F16 NaN (and an F16 +Inf) kept as F16 is refused, naming the tensor and element', async () => {
    const nan = await f16Source('f16-nan.safetensors', { tensor: 'visual.proj', index: 0, bits: 0x7e00 });
    const a = await refused(nan, { textHeads: 4, keepFp16: true }, /tensor visual\.proj holds a non-finite value \(NaN or ±Inf\) at element 0/);
    expect(a.err.code).toBe('invalid_weights');
    const inf = await f16Source('f16-inf.safetensors', { tensor: 'ln_final.weight', index: 7, bits: 0x7c00 });
    await refused(inf, { textHeads: 4, keepFp16: true }, /tensor ln_final\.weight holds a non-finite value .* at element 7/);
    // widened to F32 (no --keep-fp16), the same source is refused as before
    await refused(nan, { textHeads: 4 }, /tensor visual\.proj holds a non-finite value/);
  });

  it('a BF16 NaN is refused as well (BF16 is widened to F32 on read)', async () => {
    const entries: [string, string, number[], Uint8Array][] = tinyWeights().map(([k, t]) => {
      const f = t.data as Float32Array;
      const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
      const b = Uint16Array.from(u, (x) => x >>> 16);
      if (k === 'visual.conv1.weight') b[3] = 0x7fc0;
      return [k, 'BF16', t.dims, new Uint8Array(b.buffer)];
    });
    const p = join(work, 'bf16-nan.safetensors');
    writeRawSafetensors(p, entries);
    await refused(p, { textHeads: 4, keepFp16: true }, /tensor visual\.conv1\.weight holds a non-finite value .* at element 3/);
  });
});

describe('#7 -o a symbolic link', () => {
  it('the CLI follows a link to an empty folder, before any work, and writes the bundle there', async () => {
    const target = join(work, 'link-target');
    mkdirSync(target);
    const link = join(work, 'link-out');
    symlinkSync('link-target', link);
    const errs: string[] = [];
    const orig = { log: console.log, error: console.error };
    console.log = () => {};
    console.error = (s: string) => errs.push(s);
    let code: number;
    try {
      code = await main(['models', 'import', referencePath('tiny-quickgelu.safetensors'), '-o', link, '--vocab', vocab, '--text-heads', '4', '--no-verify', '--json']);
    } finally {
      console.log = orig.log;
      console.error = orig.error;
    }
    expect(errs).toEqual([]);
    expect(code).toBe(0);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readlinkSync(link)).toBe('link-target');
    expect((await loadBundle(target)).manifest.name).toBe('tiny-quickgelu');
  });

  it('a dangling link is refused by the CLI up front; the engine refuses a link before converting anything', async () => {
    const dangling = join(work, 'link-dangling');
    symlinkSync('no-such-folder', dangling);
    const errs: string[] = [];
    const orig = console.error;
    console.error = (s: string) => errs.push(s);
    try {
      expect(await main(['models', 'import', referencePath('tiny-quickgelu.safetensors'), '-o', dangling, '--vocab', vocab, '--text-heads', '4', '--no-verify'])).toBe(1);
    } finally {
      console.error = orig;
    }
    expect(errs.join('\n')).toMatch(/-o .*link-dangling is a symbolic link that leads nowhere/);
    // importModel itself (the API the CLI calls) refuses a link instead of failing at the end with ENOTDIR
    const target = join(work, 'link-target-2');
    mkdirSync(target);
    const link = join(work, 'link-out-2');
    symlinkSync(target, link);
    const { err, converted } = await refused(referencePath('tiny-quickgelu.safetensors'), { out: link, textHeads: 4 }, /output .*link-out-2 is a symbolic link/);
    expect(err.code).toBe('invalid_input');
    expect(converted).toBe(0);
    expect(readdirSync(target)).toEqual([]);
  });
});

describe('#8 Hugging Face config.json', () => {
  // One HF-named tensor is enough: the config is read when the source is opened, before the architecture.
  const hfDir = async (config: string) => {
    const dir = mkdtempSync(join(work, 'hfcfg-'));
    await writeSafetensors(join(dir, 'model.safetensors'), new Map([['text_model.final_layer_norm.weight', { dtype: 'float32', dims: [4], data: new Float32Array(4) } as TensorData]]));
    writeFileSync(join(dir, 'config.json'), config);
    return dir;
  };

  it('valid JSON that is not an object (null, an array, a number, a string) is refused naming the file', async () => {
    for (const cfg of ['null', '[]', '5', '"clip"', '{"text_config": null, "vision_config": []}']) {
      const dir = await hfDir(cfg);
      const { err, converted } = await refused(join(dir, 'model.safetensors'), {}, /config\.json: .*not a Hugging Face CLIPModel config/);
      expect(err.code).toBe('invalid_input');
      expect(err.message).toContain(join(dir, 'config.json'));
      expect(converted).toBe(0);
    }
  });

  it('num_attention_heads is accepted only as a positive integer, and a bad one is named', async () => {
    for (const h of [0, -1, 2.5, '"4"', 1e300]) {
      const dir = await hfDir(`{"text_config": {"num_attention_heads": ${h}}, "vision_config": {"num_attention_heads": 1}}`);
      const { err } = await refused(join(dir, 'model.safetensors'), {}, /config\.json: text_config\.num_attention_heads must be a positive integer/);
      expect(err.code).toBe('invalid_input');
    }
    const dir = await hfDir('{"text_config": {"num_attention_heads": 4}, "vision_config": {"num_attention_heads": "x"}}');
    await refused(join(dir, 'model.safetensors'), {}, /vision_config\.num_attention_heads must be a positive integer, got "x"/);
  });
});

describe('#9 a bad --vocab is refused before any weight is converted', () => {
  it('not gzip, and gzip without the CLIP merges', async () => {
    const png = join(work, 'not-a-vocab.png');
    writeFileSync(png, Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'));
    const a = await refused(referencePath('tiny-quickgelu.safetensors'), { vocab: png, textHeads: 4 }, /cannot read CLIP BPE vocab .*not-a-vocab\.png/);
    expect(a.err.code).toBe('invalid_tokenizer');
    expect(a.converted).toBe(0);
    const gz = join(work, 'short-vocab.txt.gz');
    writeFileSync(gz, gzipSync('#version: 0.2\na b\n'));
    const b = await refused(referencePath('tiny-quickgelu.safetensors'), { vocab: gz, textHeads: 4 }, /short-vocab\.txt\.gz has \d+ merge lines, expected 48894/);
    expect(b.converted).toBe(0);
  });
});

describe('a tokenizer far smaller than the model\'s vocabulary', () => {
  it('is imported with a warning that names both sizes (most likely another model\'s file)', async () => {
    const lines: string[] = [];
    const res = await importModel(referencePath('tiny-quickgelu.safetensors'), {
      ...quiet, vocab: undefined, tokenizer: join(REPO_ROOT, 'models', 'toy', 'tokenizer.json'), out: join(work, 'toy-tokenizer'), textHeads: 4, log: (l: string) => lines.push(l),
    });
    expect(res.tensors).toBe(62);
    expect(lines).toContainEqual(expect.stringMatching(/^warning: --tokenizer .*toy\/tokenizer\.json has \d+ token ids, but the model's token embedding has 49408 rows/));
    // The tokenizer the model was trained with: no warning.
    const quietLines: string[] = [];
    await importModel(referencePath('tiny-quickgelu.safetensors'), { ...quiet, out: join(work, 'own-tokenizer'), textHeads: 4, log: (l: string) => quietLines.push(l) });
    expect(quietLines.filter((l) => l.startsWith('warning'))).toEqual([]);
  });
});

describe('two imports to the same -o DIR at once', () => {
  it('the one that finishes second gets a clear error (not a raw ENOTEMPTY), and the first one\'s bundle is left as it is', async () => {
    const out = join(work, 'race-out');
    // The other import's rename, landing while this one converts tensors (after its own check of DIR).
    const other = () => {
      if (existsSync(out)) return;
      mkdirSync(out);
      writeFileSync(join(out, 'manifest.json'), '{"from":"the other import"}');
    };
    const err = await importModel(referencePath('tiny-quickgelu.safetensors'), { ...quiet, out, textHeads: 4, onProgress: other }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toBe('invalid_input');
    expect((err as Error).message).toContain(`output ${out} was created or filled by another process (another import to the same -o DIR?) while this import ran`);
    expect(readFileSync(join(out, 'manifest.json'), 'utf8')).toBe('{"from":"the other import"}');
    expect(readdirSync(work).filter((f) => f.includes('.importing-'))).toEqual([]);
  });
});

// The import review: the downloaded model's folder given as SRC (the most natural first command) was
// answered "cannot read …: EISDIR", and a sharded checkpoint's index "not safetensors".
describe('SRC that is a folder, or a sharded checkpoint', () => {
  const refusedByCli = async (src: string): Promise<string> => {
    const errs: string[] = [];
    const orig = console.error;
    console.error = (s: string) => errs.push(s);
    try {
      expect(await main(['models', 'import', src, '-o', join(work, `never-${errs.length}-${Math.random()}`), '--vocab', vocab])).toBe(1);
    } finally {
      console.error = orig;
    }
    return errs.join('\n');
  };

  it('a download folder names the weights files in it; a bundle folder says it is one and how to use it', async () => {
    const hub = join(work, 'hub-download');
    mkdirSync(hub);
    for (const f of ['config.json', 'model.safetensors', 'pytorch_model.bin', 'README.md']) writeFileSync(join(hub, f), '{}');
    expect(await refusedByCli(hub)).toContain(`models import: ${hub} is a folder: give its weights file (${join(hub, 'model.safetensors')}, ${join(hub, 'pytorch_model.bin')}); a config.json beside it is read too [invalid_input]`);
    const bundle = join(work, 'a-bundle');
    mkdirSync(bundle);
    writeFileSync(join(bundle, 'manifest.json'), '{}');
    expect(await refusedByCli(bundle)).toContain(`${bundle} is a folder holding manifest.json: a model bundle already (push it with clipag models push ${bundle}, or generate with --model ${bundle})`);
  });

  it('a sharded checkpoint, its folder or its index, is told to be saved unsharded', async () => {
    const sharded = join(work, 'sharded');
    mkdirSync(sharded);
    for (const f of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']) writeFileSync(join(sharded, f), '{}');
    expect(await refusedByCli(sharded)).toMatch(/holds a sharded checkpoint \(model-00001-of-00002\.safetensors, model-00002-of-00002\.safetensors, …\): clipag reads one weights file; save it unsharded first/);
    expect(await refusedByCli(join(sharded, 'model.safetensors.index.json'))).toMatch(/model\.safetensors\.index\.json is a sharded checkpoint's index: clipag reads one weights file/);
  });
});
