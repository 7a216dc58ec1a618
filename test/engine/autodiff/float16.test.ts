// Gradient rules on float16 values: a float32 graph with a float16 island, as a mixed-precision export
// of a foreign image tower has (fp16 inside, fp32 inputs and outputs). Each rule's float32 form is
// checked against finite differences in rules.test.ts; here the same graph built in float16 must give
// the float32 gradient to float16 precision. The constants the rules make (the seed of ones, 1/n,
// 2/√π, a Pow exponent read from the model) are where float16 goes wrong if it goes wrong.
import { describe, expect, test } from 'vitest';
import { appendGradients } from '../../../gpu-worker/engine/autodiff/gradient.ts';
import { f32ToF16 } from '../../../gpu-worker/engine/io/half.ts';
import { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { A, type DType, tensor, valueAt } from '../../../gpu-worker/engine/onnx/ir.ts';
import { runModel } from '../../../gpu-worker/engine/runtime/session.ts';

const XS = [0.25, -0.5, 1, 2, -1.5, 0.75];

/** loss = Σ w ⊙ f(x), with f built in `dt` between casts; returns dloss/dx as float32. */
async function gradient(dt: DType, f: (b: GraphBuilder, x: string, dt: DType) => string, xs = XS): Promise<number[]> {
  const b = new GraphBuilder('f16-island');
  const x = b.input('x', 'float32', [xs.length]);
  const inner = dt === 'float32' ? x : b.cast(x, dt);
  const y = f(b, inner, dt);
  const y32 = dt === 'float32' ? y : b.cast(y, 'float32');
  // A weighted sum, so every element's gradient differs (a plain sum hides a wrong shared constant less well).
  const w = b.constant(tensor('float32', [xs.length], xs.map((_, i) => 0.5 + 0.25 * i)), 'w');
  const loss = b.op1('ReduceSum', [b.mul(y32, w)], { keepdims: A.i(0) });
  const g = appendGradients(b, { loss, wrt: [x] }).get(x)!;
  b.output(b.op1('Identity', [g], {}, { outputNames: ['g'] }));
  const out = await runModel(b.toModel(), { x: tensor('float32', [xs.length], xs) });
  return Array.from(out.g!.data as Float32Array);
}

const half = (b: GraphBuilder, v: number, dt: DType) => b.constant(tensor(dt, [], [v]), 'c');
/** Values float16 cannot hold exactly (XS are all float16 numbers). */
const ROUNDED = [0.3, -1.1, 0.7, 2.2, -1.3, 0.9];

const CASES: Array<[string, (b: GraphBuilder, x: string, dt: DType) => string, number[]?]> = [
  ['Mul', (b, x) => b.mul(x, x)],
  ['Sigmoid', (b, x) => b.sigmoid(x)],
  ['Tanh', (b, x) => b.op1('Tanh', [x])],
  ['Erf', (b, x) => b.op1('Erf', [x])],
  ['ReduceMean', (b, x) => b.reduceMean(x, [0], true)],
  ['Sqrt', (b, x, dt) => b.op1('Sqrt', [b.add(b.mul(x, x), half(b, 1, dt))])],
  ['Pow 2 (constant exponent)', (b, x, dt) => b.op1('Pow', [x, half(b, 2, dt)])],
  ['Pow 3 (constant exponent)', (b, x, dt) => b.op1('Pow', [x, half(b, 3, dt)])],
  ['Softmax', (b, x) => b.op1('Softmax', [x], { axis: A.i(0) })],
  ['Div', (b, x, dt) => b.op1('Div', [half(b, 1, dt), b.add(b.mul(x, x), half(b, 0.5, dt))])],
  // Gather's gradient scatters with ScatterND(reduction='add'), which onnxruntime's CPU EP lacks in float16.
  ['Gather axis 0, repeated indices', (b, x) => b.gather(x, b.constant(tensor('int64', [6], [0, 2, 2, 5, 1, 5]), 'idx'), 0)],
  // The class-token pooling x[:, 0] of foreign towers: [2,3] → Gather(axis 1, scalar 0) → [2], as [2,1] for the weights.
  ['Gather axis 1, scalar index', (b, x) => b.reshape(b.gather(b.reshape(x, [2, 3]), b.constant(tensor('int64', [], [0]), 'idx'), 1), [2, 1])],
  ['ReduceL2 (zero-norm mask)', (b, x) => b.op1('ReduceL2', [x], { axes: A.ints([0]), keepdims: A.i(1) })],
  ['Pow, variable base and exponent (zero-base masks)', (b, x, dt) => b.op1('Pow', [b.add(b.mul(x, x), half(b, 0.5, dt)), x])],
  // Winner masks compare an input with the output (Equal). The inputs here are not float16 numbers, so the island's
  // Cast rounds them: onnxruntime's float16 Equal (Cast-wrapped) once read them unrounded, and every winner that
  // came from x got a zero gradient. Margins to the constants are ≥ 0.1, far from ties at float16 precision.
  ['Max with a constant, inputs not float16 numbers', (b, x, dt) => b.op1('Max', [x, b.constant(tensor(dt, [6], [0, 0.2, 0.8, 0, -2, 1]), 'c')]), ROUNDED],
  ['Min of three (one broadcast), inputs not float16 numbers', (b, x, dt) => b.op1('Min', [b.constant(tensor(dt, [6], [0, -1.3, 0.8, 2.5, -1, 1]), 'c'), x, half(b, 0.5, dt)]), ROUNDED],
  ['ReduceMax axis 1 (as [2,1]), inputs not float16 numbers', (b, x) => b.op1('ReduceMax', [b.reshape(x, [2, 3])], { axes: A.ints([1]), keepdims: A.i(1) }), ROUNDED],
];

describe('gradient rules through a float16 island', () => {
  test('float16 constants are encoded as half bit patterns; bit patterns pass through', () => {
    expect(tensor('float16', [], [1]).data[0]).toBe(0x3c00);
    expect(tensor('float16', [2], [0.5, -2]).data).toEqual(new Uint16Array([0x3800, 0xc000]));
    expect(tensor('float16', [1], new Uint16Array([0x4000])).data[0]).toBe(0x4000);
    expect(valueAt(tensor('float16', [1], new Uint16Array([0x4000])), 0)).toBe(2);
    expect(f32ToF16(1)).toBe(0x3c00);
  });

  test.each(CASES)('%s: the float16 gradient is the float32 one to half precision', async (_name, f, xs) => {
    const ref = await gradient('float32', f, xs);
    const got = await gradient('float16', f, xs);
    const scale = Math.max(...ref.map(Math.abs));
    expect(scale).toBeGreaterThan(0);
    for (let i = 0; i < ref.length; i++) {
      // float16 keeps 11 significant bits: a few ulps of an O(1) value, against O(1) for a wrong rule.
      expect(Math.abs(got[i]! - ref[i]!), `element ${i}: ${got[i]} vs ${ref[i]}`).toBeLessThan(2e-2 * scale);
    }
  });
});
