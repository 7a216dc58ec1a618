import { expectEngineError } from '../helpers/errors.ts';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import {
  bf16ToF32Array,
  f16ToF32,
  f32ToF16,
  openSafetensors,
  readSafetensors,
  readSafetensorsAsync,
  writeSafetensors,
} from '../../gpu-worker/engine/io/safetensors.ts';
import { tensor } from '../../gpu-worker/engine/onnx/ir.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { referencePath } from '../helpers/reference.ts';

const tmp = mkdtempSync(join(tmpdir(), 'clipag-st-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));


/** Build a safetensors file by hand, so the reader is tested against the format, not our writer. */
const expectInvalid = (fn: () => unknown, message: RegExp, code = 'invalid_model'): void => void expectEngineError(fn, code, message);

function handmade(header: unknown, data: Uint8Array, opts: { declaredLen?: bigint } = {}): string {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const buf = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(buf.buffer).setBigUint64(0, opts.declaredLen ?? BigInt(json.byteLength), true);
  buf.set(json, 8);
  buf.set(data, 8 + json.byteLength);
  const p = join(tmp, `h${Math.random().toString(36).slice(2)}.safetensors`);
  writeFileSync(p, buf);
  return p;
}
const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

describe('float16 helpers', () => {
  it('f16 -> f32 -> f16 is the identity on every non-NaN bit pattern', () => {
    for (let h = 0; h < 0x10000; h++) {
      const x = f16ToF32(h);
      if (Number.isNaN(x)) {
        expect(Number.isNaN(f16ToF32(f32ToF16(x)))).toBe(true);
        continue;
      }
      expect(f32ToF16(x)).toBe(h);
    }
  });

  it('known values, including subnormals, infinities and signed zero', () => {
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0xc000)).toBe(-2);
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0x0001)).toBe(2 ** -24);
    expect(f16ToF32(0x7c00)).toBe(Infinity);
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
    expect(f32ToF16(-0)).toBe(0x8000);
    expect(f32ToF16(1e6)).toBe(0x7c00);
    expect(f32ToF16(-Infinity)).toBe(0xfc00);
    expect(f32ToF16(1e-10)).toBe(0);
  });

  it('rounds to nearest, ties to even', () => {
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie between 1 and 1+2^-10: even (1) wins
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie between 1+2^-10 and 1+2^-9: even wins
    expect(f32ToF16(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // just above the tie rounds up
    expect(f32ToF16(65519)).toBe(0x7bff); // below the max-finite/inf midpoint
    expect(f32ToF16(65520)).toBe(0x7c00); // the midpoint rounds to even: infinity
    expect(f32ToF16(2 ** -25)).toBe(0); // half the smallest subnormal: tie to even 0
    expect(f32ToF16(2 ** -25 + 2 ** -35)).toBe(1);
    expect(f32ToF16(3 * 2 ** -25)).toBe(2); // tie between subnormals 1 and 2: even
  });

  it('bf16 widening is exact', () => {
    expect(Array.from(bf16ToF32Array(new Uint16Array([0x3f80, 0xc040, 0x0000, 0x7f80])))).toEqual([1, -3, 0, Infinity]);
  });
});

describe('reading the shared reference files', () => {
  it('tiny-quickgelu-vectors.safetensors: metadata and known values of F32, I32 and F64 tensors', () => {
    const { metadata, tensors } = readSafetensors(referencePath('tiny-quickgelu-vectors.safetensors'));
    expect(metadata.activation).toBe('quickgelu');
    expect(tensors.size).toBe(14);
    const pixels = tensors.get('pixels')!;
    expect(pixels.dtype).toBe('float32');
    expect(pixels.dims).toEqual([4, 3, 32, 32]);
    expect(pixels.data[0]).toBeCloseTo(0.6146950721740723, 7);
    const tokens = tensors.get('text_tokens')!;
    expect(tokens.dtype).toBe('int32');
    expect(tokens.dims).toEqual([4, 77]);
    expect(Array.from(tokens.data.subarray(0, 4) as Int32Array)).toEqual([49406, 320, 1125, 539]);
    let sum = 0;
    for (const v of tokens.data as Int32Array) sum += v;
    expect(sum).toBe(534178);
    const g64 = tensors.get('grad_pixels_f64')!;
    expect(g64.dtype).toBe('float64');
    expect(g64.data[0]).toBe(-0.0016463105840733062);
    const scale = tensors.get('logit_scale_exp')!;
    expect(scale.dims).toEqual([]);
    expect(scale.data[0]).toBeCloseTo(14.285714149475098, 6);
  });

  it('tiny-quickgelu.safetensors: 62 weights; lazy reads equal eager reads', () => {
    const path = referencePath('tiny-quickgelu.safetensors');
    const all = readSafetensors(path);
    expect(all.tensors.size).toBe(62);
    expect(all.metadata.activation).toBe('quickgelu');
    expect(all.tensors.get('positional_embedding')!.dims).toEqual([77, 64]);
    expect(all.tensors.get('logit_scale')!.data[0]).toBeCloseTo(2.6592600345611572, 6);

    const lazy = openSafetensors(path);
    try {
      expect(lazy.names).toEqual([...all.tensors.keys()]);
      expect(lazy.entries.get('text_projection')).toMatchObject({ dtype: 'F32', shape: [64, 32], begin: 19712, end: 27904 });
      expect(lazy.read('text_projection')).toEqual(all.tensors.get('text_projection'));
      expectInvalid(() => lazy.read('nope'), /no tensor 'nope'/, 'invalid_weights');
    } finally {
      lazy.close();
    }
    expectInvalid(() => lazy.read('text_projection'), /closed/, 'invalid_input');
  });

  it('referencePath throws loudly for a missing file', () => {
    expect(() => referencePath('no-such-file.bin')).toThrow(/not found/);
  });
});

describe('writeSafetensors', () => {
  it('round-trips every dtype with metadata; data section is 8-byte aligned and packed', async () => {
    const tensors = new Map<string, TensorData>([
      ['f32', tensor('float32', [2, 2], [1.5, -2, 3, 4])],
      ['f16', { dtype: 'float16', dims: [3], data: new Uint16Array([0x3c00, 0xc000, 0x7c00]) }],
      ['f64', tensor('float64', [1], [Math.PI])],
      ['i32', tensor('int32', [2], [-1, 2147483647])],
      ['i64', { dtype: 'int64', dims: [2], data: new BigInt64Array([-(2n ** 50n), 3n]) }],
      ['u8', tensor('uint8', [3], [0, 128, 255])],
      ['bool', tensor('bool', [2], [1, 0])],
      ['scalar', tensor('float32', [], [7])],
      ['empty', tensor('float32', [0, 4], [])],
    ]);
    const p = join(tmp, 'all.safetensors');
    await writeSafetensors(p, tensors, { source: 'test', note: 'ünïcode' });
    const back = readSafetensors(p);
    expect(back.metadata).toEqual({ source: 'test', note: 'ünïcode' });
    expect(back.tensors).toEqual(tensors);

    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    expect(header.f16).toEqual({ dtype: 'F16', shape: [3], data_offsets: [16, 22] });
    expect(header.bool.dtype).toBe('BOOL');
    expect(statSync(p).size).toBe(8 + n + 16 + 6 + 8 + 8 + 16 + 3 + 2 + 4);
  });

  it('refuses tensors whose data does not match their dims', async () => {
    await expect(writeSafetensors(join(tmp, 'bad.safetensors'), { x: { dtype: 'float32', dims: [3], data: new Float32Array(2) } })).rejects.toMatchObject({
      code: 'invalid_input',
    });
  });
});

describe('reading hand-made files', () => {
  it('BF16 is widened to float32; F16 stays float16 bits; I64 and U8 read', () => {
    const bf = new Uint16Array([0x3f80, 0xbf00]); // 1, -0.5
    const h = new Uint16Array([0x3c00]);
    const l = new BigInt64Array([-5n]);
    const u = new Uint8Array([9, 8]);
    const data = new Uint8Array(4 + 2 + 2 + 8 + 2);
    data.set(bytesOf(bf), 0);
    data.set(bytesOf(h), 4);
    data.set(bytesOf(l), 8);
    data.set(u, 16);
    const p = handmade(
      {
        bf: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] },
        h: { dtype: 'F16', shape: [1], data_offsets: [4, 6] },
        l: { dtype: 'I64', shape: [1], data_offsets: [8, 16] },
        u: { dtype: 'U8', shape: [2, 1], data_offsets: [16, 18] },
      },
      data,
    );
    const { tensors, metadata } = readSafetensors(p);
    expect(metadata).toEqual({});
    expect(tensors.get('bf')).toEqual({ dtype: 'float32', dims: [2], data: new Float32Array([1, -0.5]) });
    expect(tensors.get('h')).toEqual({ dtype: 'float16', dims: [1], data: new Uint16Array([0x3c00]) });
    expect(tensors.get('l')!.data).toEqual(new BigInt64Array([-5n]));
    expect(tensors.get('u')!.dims).toEqual([2, 1]);
  });

  it('readSafetensorsAsync reads what readSafetensors reads, every dtype (BF16 widened); shared: each tensor in its own SharedArrayBuffer', async () => {
    const data = new Uint8Array(18);
    data.set(bytesOf(new Uint16Array([0x3f80, 0xbf00])), 0);
    data.set(bytesOf(new Uint16Array([0x3c00])), 4);
    data.set(bytesOf(new BigInt64Array([-5n])), 8);
    data.set([9, 8], 16);
    const p = handmade(
      {
        bf: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] },
        h: { dtype: 'F16', shape: [1], data_offsets: [4, 6] },
        l: { dtype: 'I64', shape: [1], data_offsets: [8, 16] },
        u: { dtype: 'U8', shape: [2, 1], data_offsets: [16, 18] },
        __metadata__: { format: 'pt' },
      },
      data,
    );
    for (const path of [p, referencePath('tiny-quickgelu.safetensors')]) {
      const sync = readSafetensors(path);
      for (const shared of [false, true]) {
        const got = await readSafetensorsAsync(path, { shared });
        expect(got.metadata).toEqual(sync.metadata);
        expect([...got.tensors.keys()]).toEqual([...sync.tensors.keys()]);
        for (const [name, t] of sync.tensors) {
          const a = got.tensors.get(name)!;
          expect([a.dtype, a.dims, a.data.constructor]).toEqual([t.dtype, t.dims, t.data.constructor]);
          expect(Array.from(a.data as ArrayLike<unknown>)).toEqual(Array.from(t.data as ArrayLike<unknown>));
          expect(a.data.buffer instanceof SharedArrayBuffer, name).toBe(shared);
        }
      }
    }
    // A file cut short is refused as the sync reader refuses it.
    const whole = readFileSync(referencePath('tiny-quickgelu.safetensors'));
    const cut = join(tmp, 'cut-async.safetensors');
    writeFileSync(cut, whole.subarray(0, whole.length - 100));
    await expect(readSafetensorsAsync(cut)).rejects.toMatchObject({ code: 'invalid_model' });
  });

  it('corrupt files give invalid_model saying what is wrong', () => {
    const f4 = bytesOf(new Float32Array([1, 2, 3, 4]));
    const tooShort = join(tmp, 'short.safetensors');
    writeFileSync(tooShort, new Uint8Array([1, 2, 3]));
    expectInvalid(() => readSafetensors(tooShort), /8-byte header length/);
    expectInvalid(() => readSafetensors(handmade({}, f4, { declaredLen: 10n ** 12n })), /runs past the end/);
    expectInvalid(() => readSafetensors(handmade('{"a": [1, 2', f4)), /not valid JSON/);
    expectInvalid(() => readSafetensors(handmade('[1,2]', f4)), /JSON object/);
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 32] } }, f4)), /only 16 bytes/);
    expectInvalid(
      () =>
        readSafetensors(
          handmade({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, f4),
        ),
      /overlap/,
    );
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, f4)), /needs 12 bytes.*span 16/);
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'C64', shape: [2], data_offsets: [0, 16] } }, f4)), /dtype "C64"/);
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 16] } }, f4)), /shape/);
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'F32', shape: [4], data_offsets: [8, 0] } }, f4)), /data_offsets/);
    expectInvalid(() => readSafetensors(handmade({ __metadata__: { k: 1 } }, f4)), /__metadata__\.k must be a string/);
    expectInvalid(() => readSafetensors(join(tmp, 'missing.safetensors')), /cannot open/);
    // Bytes no tensor accounts for (the reference implementation's MetadataIncompleteBuffer).
    expectInvalid(() => readSafetensors(handmade({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, f4)), /end at data byte 8 but the file holds 16: 8 bytes belong to no tensor/);
  });

  it('a truncated copy of a real file is refused', () => {
    const src = readFileSync(referencePath('tiny-quickgelu-vectors.safetensors'));
    const p = join(tmp, 'trunc.safetensors');
    writeFileSync(p, src.subarray(0, src.byteLength - 100));
    expectInvalid(() => readSafetensors(p), /data section has only/);
  });
});
