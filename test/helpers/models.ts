// Small ONNX graphs the runtime tests share.
import type { ModelIR } from '../../gpu-worker/engine/onnx/ir.ts';

/**
 * A chain of `depth` [n,n] MatMuls by the identity: slow enough to block a thread for a while, and
 * the output equals the input, so the numbers stay checkable.
 */
export function slowModel(n: number, depth: number): ModelIR {
  const eye = new Float32Array(n * n);
  for (let i = 0; i < n; i++) eye[i * n + i] = 1;
  const nodes = [];
  for (let i = 0; i < depth; i++) {
    nodes.push({ op: 'MatMul', name: `mm${i}`, inputs: [i === 0 ? 'x' : `h${i}`, 'w'], outputs: [i === depth - 1 ? 'y' : `h${i + 1}`], attrs: {} });
  }
  return {
    opset: 17,
    graphName: 'slow',
    inputs: [{ name: 'x', dtype: 'float32', shape: [n, n] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [n, n] }],
    initializers: new Map([['w', { dtype: 'float32', dims: [n, n], data: eye }]]),
    nodes,
  };
}
