// Tensors in SharedArrayBuffers. A graph handed to the pool's worker thread (EnginePool.load with IR) is
// structured-cloned, which copies every ArrayBuffer-backed initializer on the caller's thread: hundreds
// of MB of weights per graph at ViT-B/32 size. Shared memory crosses threads without a copy, so the
// engine moves a bundle's weights there once, and every graph built on them is cheap to send.

import { allocData, type TensorData } from '../onnx/ir.ts';

/** `t` with its data in a SharedArrayBuffer: `t` itself when it already is, otherwise a copy. */
export function inSharedMemory(t: TensorData): TensorData {
  if (t.data.buffer instanceof SharedArrayBuffer) return t;
  const data = allocData(t.dtype, t.data.length, { shared: true });
  (data as Float32Array).set(t.data as Float32Array);
  return { dtype: t.dtype, dims: t.dims, data };
}

/**
 * Replaces every tensor of `tensors` with its shared-memory copy, in place and one tensor at a time,
 * so that each old copy is garbage as soon as its replacement exists (not two copies of every weight).
 */
export function moveToSharedMemory(tensors: Map<string, TensorData>): void {
  for (const [name, t] of tensors) tensors.set(name, inSharedMemory(t));
}
