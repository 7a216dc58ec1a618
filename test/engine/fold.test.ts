// Build-time constant folding (gpu-worker/engine/onnx/fold.ts) must give what onnxruntime computes for the
// same node: a folded value is read at build time (a Dropout's training_mode, a Reshape target, a Slice's
// ends), so a difference changes the graph's meaning, not only a number.
import { describe, expect, test } from 'vitest';
import { GraphBuilder } from '../../gpu-worker/engine/onnx/builder.ts';
import { A, type TensorData, tensor } from '../../gpu-worker/engine/onnx/ir.ts';
import { runModel } from '../../gpu-worker/engine/runtime/session.ts';

const I64_MAX = 9223372036854775807n;
const I64_MIN = -9223372036854775808n;

const show = (t: TensorData) => Array.from(t.data as ArrayLike<number | bigint>, (v) => String(v));

describe('constant folding agrees with onnxruntime', () => {
  test('casts to bool, int64 wrap-around, and int64 values past 2^53', async () => {
    const b = new GraphBuilder('fold');
    const c = (t: TensorData) => b.op1('Constant', [], { value: A.t(t) });
    const f32 = (v: number[]) => c(tensor('float32', [v.length], v));
    const i64 = (v: bigint[]) => c(tensor('int64', [v.length], v));
    const i32 = (v: number[]) => c(tensor('int32', [v.length], v));
    const big = 2n ** 60n + 1n; // not a JS number exactly
    const cases: Record<string, string> = {
      // Cast to bool is "non-zero": 0.5 and 256 are true (a Uint8Array store made them 0), NaN is true.
      cast_f32_bool: b.cast(f32([0.5, 0, -0.25, 256, NaN, -0]), 'bool'),
      cast_i64_bool: b.cast(i64([256n, 0n, -1n, 2n ** 40n]), 'bool'),
      cast_i32_bool: b.cast(i32([512, 0, -7]), 'bool'),
      // int64 arithmetic wraps (two's complement), as onnxruntime's kernels do.
      add_overflow: b.op1('Add', [i64([I64_MAX, I64_MAX, 5n]), i64([1n, I64_MAX, -7n])]),
      sub_overflow: b.op1('Sub', [i64([I64_MIN, 0n]), i64([1n, I64_MIN])]),
      mul_overflow: b.op1('Mul', [i64([2n ** 62n, 3n, big]), i64([4n, -5n, 3n])]),
      neg_min: b.neg(i64([I64_MIN, 5n])),
      div_neg: b.op1('Div', [i64([-7n, 7n, big]), i64([2n, -2n, 1n])]),
      max_big: b.op1('Max', [i64([big, -big]), i64([big - 1n, -big + 1n])]),
      less_big: b.op1('Less', [i64([big - 1n, big]), i64([big, big])]),
      // Values past 2^53 pass through the plumbing ops exactly.
      concat_big: b.concat([i64([big]), i64([-big, I64_MAX])], 0),
      gather_big: b.gather(i64([1n, big, 3n]), b.constant(tensor('int64', [2], [1, 1]), 'idx'), 0),
      cast_i64_i32: b.cast(i64([2n ** 32n + 5n, big, -1n]), 'int32'),
      // int32 products wrap modulo 2^32 (a JS number product is inexact past 2^53).
      mul_i32: b.op1('Mul', [i32([2147483647, 65537, -3]), i32([2147483647, 65537, 5])]),
      // ends INT64_MAX / INT32_MAX with a negative step: onnxruntime's "to the end" (index 0 included).
      slice_i64max_neg: b.op1('Slice', [i64([10n, 11n, 12n, 13n, 14n, 15n, 16n]), b.ints([1]), i64([I64_MAX]), b.ints([0]), b.ints([-3])]),
      slice_i32max_neg: b.op1('Slice', [i64([10n, 11n, 12n, 13n, 14n]), b.ints([3]), i64([2147483647n]), b.ints([0]), b.ints([-1])]),
      slice_i64max_pos: b.op1('Slice', [i64([10n, 11n, 12n, 13n, 14n]), b.ints([1]), i64([I64_MAX]), b.ints([0]), b.ints([2])]),
    };
    const folded: Record<string, string[]> = {};
    for (const [k, v] of Object.entries(cases)) {
      const t = b.consts.get(v);
      expect(t, `${k} is folded`).toBeDefined();
      folded[k] = show(t!);
      b.output(b.op1('Identity', [v], {}, { outputNames: [k] }));
    }
    const out = await runModel(b.toModel(), {}, { graphOptimizationLevel: 'disabled' });
    for (const k of Object.keys(cases)) {
      expect(folded[k], k).toEqual(show(out[k]!));
      expect(b.shape(cases[k]!), `${k} static shape`).toEqual(out[k]!.dims);
    }
    // Spot checks against the values themselves (not only onnxruntime's).
    expect(folded.cast_f32_bool).toEqual(['1', '0', '1', '1', '1', '0']);
    expect(folded.add_overflow).toEqual([String(I64_MIN), '-2', '-2']);
    expect(folded.slice_i64max_neg).toEqual(['11']);
    expect(folded.slice_i32max_neg).toEqual(['13', '12', '11', '10']);
  });

  test('a Dropout whose training_mode is Cast(0.5 → bool) is training mode, so not passed through', async () => {
    const { appendGradients } = await import('../../gpu-worker/engine/autodiff/gradient.ts');
    const b = new GraphBuilder('drop');
    const x = b.input('x', 'float64', [3]);
    const mode = b.cast(b.op1('Constant', [], { value: A.t(tensor('float32', [], [0.5])) }), 'bool');
    const y = b.op1('Dropout', [x, b.constant(tensor('float64', [], [0.5]), 'ratio'), mode], {}, { name: 'drop' });
    expect(() => appendGradients(b, { loss: b.reduceSum(y, [0], false), wrt: [x] })).toThrow(/training mode/);
  });
});
