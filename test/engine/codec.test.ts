import { expectEngineError } from '../helpers/errors.ts';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { onnx as OnnxNs } from 'onnx-proto';
import { decodeModel, encodeModel, readModelFile, writeModelFile } from '../../gpu-worker/engine/onnx/codec.ts';
import { A, tensor } from '../../gpu-worker/engine/onnx/ir.ts';
import type { ModelIR, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { createSession, runModel } from '../../gpu-worker/engine/runtime/session.ts';

const { onnx } = createRequire(import.meta.url)('onnx-proto') as { onnx: typeof OnnxNs };

const tmp = mkdtempSync(join(tmpdir(), 'clipag-codec-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));


/** y = x @ w + b with known values; x is [2,3], w [3,2]. */
function matmulAdd(): ModelIR {
  return {
    opset: 17,
    graphName: 'matmul_add',
    inputs: [{ name: 'x', dtype: 'float32', shape: [2, 3] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [2, 2] }],
    initializers: new Map([
      ['w', tensor('float32', [3, 2], [1, 2, 3, 4, 5, 6])],
      ['b', tensor('float32', [2], [0.5, -1])],
    ]),
    nodes: [
      { op: 'MatMul', name: 'mm', inputs: ['x', 'w'], outputs: ['xw'], attrs: {} },
      { op: 'Add', name: 'add', inputs: ['xw', 'b'], outputs: ['y'], attrs: {} },
    ],
  };
}
const X = tensor('float32', [2, 3], [1, 0, -1, 2, 1, 0]);
// [1,0,-1]·w = [1-5, 2-6] = [-4,-4]; [2,1,0]·w = [2+3, 4+4] = [5,8]; plus b.
const Y = [-3.5, -5, 5.5, 7];

const allDtypes: Record<string, TensorData> = {
  f32: tensor('float32', [2, 2], [1.5, -2.25, 3e-8, 1e30]),
  f64: tensor('float64', [3], [Math.PI, -1e-300, 1e300]),
  f16: tensor('float16', [2], [0x3c00, 0xc000]), // 1.0, -2.0 as bit patterns
  i64: { dtype: 'int64', dims: [3], data: new BigInt64Array([2n ** 40n + 7n, -(2n ** 62n), -1n]) },
  i32: tensor('int32', [2], [-2147483648, 2147483647]),
  bool: tensor('bool', [3], [1, 0, 1]),
  u8: tensor('uint8', [2, 1], [0, 255]),
  scalar: tensor('float32', [], [42]),
  empty: tensor('float32', [0, 3], []),
};

function everything(): ModelIR {
  return {
    opset: 17,
    extraOpsets: [{ domain: 'com.microsoft', version: 1 }],
    producer: 'codec-test',
    graphName: 'everything',
    inputs: [{ name: 'x', dtype: 'float32', shape: [1, 3] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [1, 3] }],
    initializers: new Map(Object.entries(allDtypes)),
    nodes: [
      {
        op: 'Custom',
        domain: 'com.microsoft',
        name: 'n0',
        inputs: ['x', '', 'f32'],
        outputs: ['y'],
        attrs: {
          i: A.i(-(2 ** 40)),
          f: A.f(0.25),
          is: A.ints([1, -2, 3]),
          fs: A.floats([0.5, -1.5]),
          s: A.s('héllo'),
          ss: { type: 'strings', v: ['a', '', 'ü'] },
          t: A.t(tensor('int64', [2], [3, -4])),
        },
      },
    ],
    valueInfo: [{ name: 'x2', dtype: 'float16', shape: [4, 5] }],
    metadata: { source: 'unit-test', 'with space': 'vålue' },
  };
}

describe('encodeModel / decodeModel', () => {
  it('round-trips every dtype, every attribute kind, value_info, metadata and opsets', () => {
    const m = everything();
    const back = decodeModel(encodeModel(m));
    expect(back).toEqual(m);
    // the decoded arrays are fresh, aligned copies of the right class
    expect(back.initializers.get('i64')!.data).toBeInstanceOf(BigInt64Array);
    expect(back.initializers.get('f16')!.data).toBeInstanceOf(Uint16Array);
  });

  it('writes IR version 8 and the default-domain opset from m.opset', () => {
    const p = onnx.ModelProto.decode(encodeModel({ ...matmulAdd(), opset: 13 }));
    expect(Number(p.irVersion)).toBe(8);
    const def = p.opsetImport.find((o) => !o.domain)!;
    expect(Number(def.version)).toBe(13);
  });

  it('decodes typed data fields (float_data, double_data, int64_data, int32_data)', () => {
    const t = (name: string, dataType: number, dims: number[], fields: Partial<OnnxNs.ITensorProto>): OnnxNs.ITensorProto => ({ name, dataType, dims, ...fields });
    const bytes = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: {
        name: 'typed',
        initializer: [
          t('f', 1, [2], { floatData: [1.5, -2] }),
          t('d', 11, [2], { doubleData: [Math.E, -0.1] }),
          t('l', 7, [2], { int64Data: [-5, 2 ** 40] }),
          t('i', 6, [2], { int32Data: [-7, 8] }),
          t('h', 10, [2], { int32Data: [0x3c00, 0xbc00] }),
          t('b', 9, [3], { int32Data: [1, 0, 1] }),
          t('u', 2, [2], { int32Data: [7, 200] }),
        ],
      },
    }).finish();
    const m = decodeModel(bytes);
    const get = (n: string) => Array.from(m.initializers.get(n)!.data as ArrayLike<number>);
    expect(get('f')).toEqual([1.5, -2]);
    expect(get('d')).toEqual([Math.E, -0.1]);
    expect(Array.from(m.initializers.get('l')!.data as BigInt64Array)).toEqual([-5n, 2n ** 40n]);
    expect(get('i')).toEqual([-7, 8]);
    expect(get('h')).toEqual([0x3c00, 0xbc00]);
    expect(m.initializers.get('h')!.dtype).toBe('float16');
    expect(get('b')).toEqual([1, 0, 1]);
    expect(get('u')).toEqual([7, 200]);
  });

  it('decodes symbolic and missing dims as -1, a missing shape as rankUnknown, and drops initializer inputs', () => {
    const bytes = onnx.ModelProto.encode({
      irVersion: 3,
      opsetImport: [{ domain: 'ai.onnx', version: 11 }],
      graph: {
        name: 'foreign',
        initializer: [{ name: 'w', dataType: 1, dims: [1], floatData: [2] }],
        input: [
          { name: 'x', type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'batch' }, { dimValue: 3 }, {}] } } } },
          { name: 'w', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 1 }] } } } },
        ],
        output: [{ name: 'y', type: { tensorType: { elemType: 1 } } }],
        node: [{ opType: 'Mul', input: ['x', 'w'], output: ['y'] }],
      },
    }).finish();
    const m = decodeModel(bytes);
    expect(m.opset).toBe(11);
    expect(m.inputs).toEqual([{ name: 'x', dtype: 'float32', shape: [-1, 3, -1] }]);
    expect(m.outputs).toEqual([{ name: 'y', dtype: 'float32', shape: [], rankUnknown: true }]);
    // and unknown dims/rank survive a re-encode
    expect(decodeModel(encodeModel(m)).inputs).toEqual(m.inputs);
    expect(decodeModel(encodeModel(m)).outputs).toEqual(m.outputs);
  });
});

describe('onnxruntime runs what we encode', () => {
  it('MatMul + Add gives the right numbers', async () => {
    const out = await runModel(matmulAdd(), { x: X });
    expect(out.y.dims).toEqual([2, 2]);
    expect(Array.from(out.y.data as Float32Array)).toEqual(Y);
  });

  it('a decoded-then-re-encoded model still runs (attrs survive: Gemm with transB and alpha)', async () => {
    const m: ModelIR = {
      opset: 17,
      graphName: 'gemm',
      inputs: [{ name: 'x', dtype: 'float32', shape: [1, 2] }],
      outputs: [{ name: 'y', dtype: 'float32', shape: [1, 2] }],
      initializers: new Map([['w', tensor('float32', [2, 2], [1, 2, 3, 4])]]),
      nodes: [{ op: 'Gemm', name: 'g', inputs: ['x', 'w'], outputs: ['y'], attrs: { transB: A.i(1), alpha: A.f(2) } }],
    };
    const out = await runModel(decodeModel(encodeModel(m)), { x: tensor('float32', [1, 2], [1, 1]) });
    // x @ w^T = [1+2, 3+4] = [3, 7], times alpha 2
    expect(Array.from(out.y.data as Float32Array)).toEqual([6, 14]);
  });
});

describe('external data', () => {
  it('writeModelFile stores big initializers 16-byte aligned in path.data; it round-trips and runs', async () => {
    const m = matmulAdd();
    // w is 24 bytes and b is 8: a 10-byte threshold moves w out and keeps b inline; add a third, odd-sized one
    m.initializers.set('pad', tensor('uint8', [13], new Array(13).fill(9)));
    m.initializers.set('w2', tensor('float32', [3, 2], [1, 1, 1, 1, 1, 1]));
    const path = join(tmp, 'ext.onnx');
    await writeModelFile(path, m, { externalDataThreshold: 10 });
    expect(existsSync(path + '.data')).toBe(true);

    const proto = onnx.ModelProto.decode(readFileSync(path));
    const inits = proto.graph?.initializer ?? [];
    const ext = inits.filter((t) => t.dataLocation === 1);
    expect(ext.map((t) => t.name).sort()).toEqual(['pad', 'w', 'w2']);
    for (const t of ext) {
      const kv = Object.fromEntries((t.externalData ?? []).map((e) => [e.key, e.value]));
      expect(kv.location).toBe('ext.onnx.data');
      expect(Number(kv.offset) % 16).toBe(0);
    }
    expect(inits.find((t) => t.name === 'b')?.dataLocation).not.toBe(1);

    // producer defaults to 'clipag' when the IR names none; the decode names the side file it read
    expect(readModelFile(path)).toEqual({ ...m, producer: 'clipag', externalFiles: [resolve(path + '.data')] });

    const s = await createSession(path);
    try {
      const out = await s.run({ x: X });
      expect(Array.from(out.y.data as Float32Array)).toEqual(Y);
    } finally {
      await s.release();
    }
  });

  it('missing data file, out-of-range offset and decoding without baseDir give invalid_model', async () => {
    const path = join(tmp, 'ext2.onnx');
    await writeModelFile(path, matmulAdd(), { externalDataThreshold: 0 });
    const bytes = readFileSync(path);
    expectEngineError(() => decodeModel(bytes), 'invalid_model', /baseDir|readModelFile/);
    const size = statSync(path + '.data').size;
    truncateSync(path + '.data', size - 4);
    expectEngineError(() => readModelFile(path), 'invalid_model', /only \d+ bytes/);
    rmSync(path + '.data');
    expectEngineError(() => readModelFile(path), 'invalid_model', /cannot be opened/);
  });

  it('refuses external locations that escape the model folder', () => {
    const bytes = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: {
        name: 'evil',
        initializer: [{ name: 'w', dataType: 1, dims: [1], dataLocation: 1, externalData: [{ key: 'location', value: '../../etc/passwd' }] }],
      },
    }).finish();
    expectEngineError(() => decodeModel(bytes, { baseDir: tmp }), 'invalid_model', /outside the model folder/);
  });
});

describe('corrupt input', () => {
  it('garbage, truncated and empty bytes give invalid_model', () => {
    const good = encodeModel(matmulAdd());
    expectEngineError(() => decodeModel(new Uint8Array(0)), 'invalid_model', /empty/);
    expectEngineError(() => decodeModel(good.subarray(0, good.length - 7)), 'invalid_model', /truncated|not ONNX|not a valid/);
    const garbage = new Uint8Array(256);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 131 + 17) & 0xff;
    expectEngineError(() => decodeModel(garbage), 'invalid_model', /ONNX/);
    expectEngineError(() => decodeModel(new TextEncoder().encode('{"not": "onnx"}')), 'invalid_model', /ONNX/);
  });

  it('raw_data length that does not match dims gives invalid_model naming the tensor', () => {
    const bytes = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: { name: 'bad', initializer: [{ name: 'w', dataType: 1, dims: [2, 3], rawData: new Uint8Array(20) }] },
    }).finish();
    expectEngineError(() => decodeModel(bytes), 'invalid_model', /'w'.*needs 24 bytes.*20/);
  });

  it('unsupported element types and graph attributes are refused with a reason', () => {
    const withType = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: { name: 'bf', initializer: [{ name: 'w', dataType: 16, dims: [1], rawData: new Uint8Array(2) }] },
    }).finish();
    expectEngineError(() => decodeModel(withType), 'invalid_model', /bfloat16/);
    const withGraph = onnx.ModelProto.encode({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }],
      graph: { name: 'if', node: [{ opType: 'If', name: 'if0', input: ['c'], output: ['y'], attribute: [{ name: 'then_branch', type: 5, g: { name: 't' } }] }] },
    }).finish();
    expectEngineError(() => decodeModel(withGraph), 'invalid_model', /If\/Loop\/Scan/);
  });

  it('encodeModel refuses a model over 2 GB and points to writeModelFile', () => {
    const m = matmulAdd();
    // declared size is what counts; the data array itself is never serialized because the check comes first
    m.initializers.set('huge', { dtype: 'float32', dims: [2 ** 29 + 1], data: new Float32Array(1) });
    expectEngineError(() => encodeModel(m), 'invalid_model', /writeModelFile/);
  });

  it('encodeModel refuses a tensor whose data does not match its dims', () => {
    const m = matmulAdd();
    m.initializers.set('w', { dtype: 'float32', dims: [3, 2], data: new Float32Array(5) });
    expectEngineError(() => encodeModel(m), 'invalid_model', /'w'.*6 elements.*5/);
  });
});

it('readModelFile on a missing path gives invalid_model', () => {
  expectEngineError(() => readModelFile(join(tmp, 'nope.onnx')), 'invalid_model', /cannot read/);
  writeFileSync(join(tmp, 'junk.onnx'), 'junk');
  expectEngineError(() => readModelFile(join(tmp, 'junk.onnx')), 'invalid_model', /ONNX/);
});
