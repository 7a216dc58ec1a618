// Messages between EnginePool (main thread) and pool-worker (worker thread).

import type { EngineErrorCode } from '../errors.ts';
import type { TensorData } from '../onnx/ir.ts';
import type { SessionOptions } from './session.ts';

export type PoolRequest =
  | { id: number; type: 'load'; key: string; model: Uint8Array | string; options: SessionOptions }
  | { id: number; type: 'run'; key: string; feeds: Record<string, TensorData>; fetches?: string[] }
  | { id: number; type: 'unload'; key: string }
  | { id: number; type: 'close' };

export interface SerializedError {
  code: EngineErrorCode;
  message: string;
  detail: Record<string, unknown>;
}

export type PoolResponse =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: SerializedError };

export interface LoadResult {
  inputNames: string[];
  outputNames: string[];
}

/** Distinct transferable buffers behind some tensors (a buffer may back several views; listing it twice throws). */
export function transferablesOf(tensors: Iterable<TensorData>): ArrayBuffer[] {
  const seen = new Set<ArrayBuffer>();
  for (const t of tensors) {
    const b = t.data.buffer;
    // SharedArrayBuffers are shared, not transferred; zero-length buffers gain nothing.
    if (b instanceof ArrayBuffer && b.byteLength > 0) seen.add(b);
  }
  return [...seen];
}
