// Restricted unpickler edge cases: huge APPENDS batches, cycles through the memo, deep nesting, a
// pickle that runs past the opcode budget, a data.pkl over the size limit. Each ends in a value or an
// EngineError, never a RangeError / stack overflow / heap exhaustion.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { MAX_PICKLE_OPS, describePickle, restrictedUnpickle } from '../../gpu-worker/engine/import/pickle.ts';
import { MAX_PICKLE, openTorchCheckpoint } from '../../gpu-worker/engine/import/torch.ts';
import { statePickle, zipRecords } from './torch-writer.ts';

const work = mkdtempSync(join(tmpdir(), 'clipag-pickle-edges-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const PROTO2 = [0x80, 0x02];
const STOP = 0x2e;

function pickle(ops: number[]): Uint8Array {
  return Uint8Array.from([...PROTO2, ...ops, STOP]);
}

function engineErrorOf(fn: () => unknown): EngineError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(EngineError);
    return error as EngineError;
  }
  throw new Error('expected an EngineError');
}

describe('restricted unpickler edge cases', () => {
  it('a broadcast view (stride 0) larger than its storage is refused: a 4-byte storage must not import as 1 GB', () => {
    const bomb = statePickle([['token_embedding.weight', { dtype: 'float32', dims: [4_194_304, 64], data: new Float32Array(1) }]], { strides: { 'token_embedding.weight': [0, 0] } });
    const err = engineErrorOf(() => restrictedUnpickle(bomb, 'bomb.pt'));
    expect(err.message).toMatch(/\[4194304,64\] with strides \[0,0\] has 268435456 elements over a storage of 1: a broadcast or overlapping view/);
    // A transposed view of a full storage is still fine.
    const t = statePickle([['w', { dtype: 'float32', dims: [3, 2], data: new Float32Array(6) }]], { strides: { w: [1, 3] } });
    expect(() => restrictedUnpickle(t, 't.pt')).not.toThrow();
  });

  it('APPENDS with 300k items (one MARK batch) builds the list instead of throwing RangeError', () => {
    const n = 300_000;
    const ops = [0x5d, 0x28]; // EMPTY_LIST, MARK
    for (let i = 0; i < n; i++) ops.push(0x4b, i & 0xff); // BININT1
    ops.push(0x65); // APPENDS
    const list = restrictedUnpickle(pickle(ops), 'big.pkl') as number[];
    expect(list).toHaveLength(n);
    expect(list[n - 1]).toBe((n - 1) & 0xff);
  });

  it('a list that contains itself via the memo: describePickle is an EngineError, not a stack overflow', () => {
    // EMPTY_LIST, BINPUT 0, BINGET 0, APPEND  →  l = []; l.append(l)
    const value = restrictedUnpickle(pickle([0x5d, 0x71, 0x00, 0x68, 0x00, 0x61]), 'cycle.pkl');
    const error = engineErrorOf(() => describePickle(value));
    expect(error.code).toBe('invalid_model');
    expect(error.message).toMatch(/contains itself/);
  });

  it('a dict holding itself through a value is refused too; shared (acyclic) references are fine', () => {
    // EMPTY_DICT, BINPUT 0, key 'a', BINGET 0, SETITEM  →  d = {}; d['a'] = d
    const cyclic = restrictedUnpickle(pickle([0x7d, 0x71, 0x00, 0x8c, 0x01, 0x61, 0x68, 0x00, 0x73]), 'cycle-dict.pkl');
    expect(engineErrorOf(() => describePickle(cyclic)).code).toBe('invalid_model');
    // x = []; [x, x]: the same list twice, side by side, is not a cycle.
    const shared = restrictedUnpickle(pickle([0x5d, 0x71, 0x00, 0x68, 0x00, 0x86]), 'shared.pkl');
    expect(describePickle(shared)).toEqual([[], []]);
  });

  it('lists nested 50 000 deep: describePickle is an EngineError, not a stack overflow', () => {
    const depth = 50_000;
    const ops: number[] = [];
    for (let i = 0; i < depth; i++) ops.push(0x5d); // EMPTY_LIST × depth
    for (let i = 1; i < depth; i++) ops.push(0x61); // APPEND each into the one below
    const value = restrictedUnpickle(pickle(ops), 'deep.pkl');
    expect(engineErrorOf(() => describePickle(value)).message).toMatch(/nested more than/);
  });

  it('a pickle that runs more than MAX_PICKLE_OPS opcodes is refused when it reaches the budget, naming the file', () => {
    // NONE × (budget + 1): each opcode makes a value, as a run of EMPTY_DICT does at ~200 bytes a Map
    // (NONE keeps this test's own memory small). Without the budget it decodes (and a 64 MiB run of
    // EMPTY_DICT exhausts the V8 heap: a fatal crash, not an error).
    const bytes = new Uint8Array(2 + MAX_PICKLE_OPS + 1 + 1).fill(0x4e);
    bytes.set(PROTO2, 0);
    bytes[bytes.length - 1] = STOP;
    const err = engineErrorOf(() => restrictedUnpickle(bytes, 'amp.pt (archive/data.pkl)'));
    expect(err.code).toBe('invalid_model');
    expect(err.message).toContain(`amp.pt (archive/data.pkl): refused to load: the pickle runs more than ${MAX_PICKLE_OPS} operations`);
    // A real checkpoint runs far fewer: the reference state_dict pickle decodes under the budget.
    expect(() => restrictedUnpickle(statePickle([['w', { dtype: 'float32', dims: [3, 2], data: new Float32Array(6) }]]), 'ok.pt')).not.toThrow();
  });

  it(`a data.pkl over ${MAX_PICKLE >> 20} MiB is refused before it is read (a compressed one can be small on disk)`, () => {
    // DEFLATE, declaring one byte over the limit: the refusal comes from its declared size alone.
    const path = join(work, 'big-pickle.pt');
    writeFileSync(path, zipRecords([{ name: 'archive/data.pkl', data: pickle([0x7d]), deflate: true, declaredSize: MAX_PICKLE + 1 }]));
    const err = engineErrorOf(() => openTorchCheckpoint(path));
    expect(err.code).toBe('invalid_model');
    expect(err.message).toContain(`${path}: archive/data.pkl is ${MAX_PICKLE + 1} bytes, over the 64 MiB limit`);
  });
});
