// Messages between EnginePool (main thread) and pool-worker (worker thread).

import type { EngineErrorCode } from '../errors.ts';
import type { ModelIR, TensorData } from '../onnx/ir.ts';
import type { SessionOptions } from './session.ts';

/**
 * A graph the worker thread serializes itself. Encoding a ViT-B/32 graph takes 1–2 s; done on the
 * caller's thread it stalls everything else there (the HTTP API of `clipag serve`). Weights held in
 * SharedArrayBuffers cross to the worker without a copy (see shared-memory.ts).
 */
export interface GraphSource {
  kind: 'graph';
  model: ModelIR;
}

/** ONNX bytes, a path (for models with external data), or a graph the worker serializes. */
export type ModelSource = Uint8Array | string | GraphSource;

export type PoolRequest =
  | {
      id: number;
      type: 'load';
      key: string;
      /**
       * Which load of the key this is (the pool numbers them): a thread keeps the newest one it opened,
       * and an unload removes only the one it names, so an unload still on its way cannot remove the
       * session of a load of the same key issued after it.
       */
      gen: number;
      model: ModelSource;
      /**
       * A graph only: an empty folder the pool made for this load. The worker writes the graph there as
       * a temporary .onnx + .onnx.data and loads it by path (protobuf caps an in-memory model at 2 GB);
       * without it the graph is encoded in memory. The pool removes the folder once the load is answered
       * or the thread has ended, whichever comes first, so a thread that ends mid-write leaves nothing.
       */
      dir?: string;
      options: SessionOptions;
      /** The bytes were moved here: hand them back once the session is open, so the pool can re-open the key on a replacement thread. */
      returnBytes?: boolean;
    }
  | { id: number; type: 'run'; key: string; feeds: Record<string, TensorData>; fetches?: string[] }
  /** Release the key's session if it is still the one load `gen` opened (after the runs in flight on it). */
  | { id: number; type: 'unload'; key: string; gen: number }
  | { id: number; type: 'close' }
  /**
   * Release every session and end the thread. Sent by close() to a thread it gave up waiting for: it
   * acts once that thread's native call returns, if ever (terminating the thread instead would abort
   * the whole process when the call returns). Until then the thread keeps the process alive: a process
   * that exits while a worker thread is inside onnxruntime aborts when the call returns.
   */
  | { id: number; type: 'exit' }
  /** Tests only: end this thread as a crash would (an uncaught error, or process.exit inside it). Never answered. */
  | { id: number; type: 'crash'; how: 'throw' | 'exit' };

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
  /** The model bytes, when the load asked for them back (returnBytes). */
  bytes?: Uint8Array;
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
