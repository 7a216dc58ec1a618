// An uploaded init image is decoded on a thread of its own, not on the worker's main thread: a 4096²
// 16-bit PNG takes seconds and hundreds of MB to decode, and on the main thread that stalled the lease
// heartbeat, the health endpoint and stop() for as long. The thread also fits the image to the sizes
// the run will use (resizeCover at each stage's size, 0.3–0.5 s each from 4096² on the main thread),
// so what comes back is a few small float images, moved rather than copied, and the full-size pixels
// never reach the main thread (see fittedImage in image.ts).
//
// One thread per decode: it keeps nothing between jobs, and ending it (an abort, a stuck decode) is
// safe, since it runs no native call that could outlive it as an engine thread's onnxruntime run can.

import { Worker } from 'node:worker_threads';
import { EngineError, type EngineErrorCode } from '../engine/errors.ts';
import { fittedImage, type PlanarImage } from '../engine/synth/image.ts';

export interface FitSize {
  width: number;
  height: number;
}

/** What a decode thread is sent, as its one message. */
export interface InitDecodeRequest {
  bytes: Uint8Array;
  maxBytes?: number;
  fitSizes: FitSize[];
  /** Tests only: end the thread as a crash would (an uncaught error, process.exit in it), or never answer. */
  fault?: 'throw' | 'exit' | 'hang';
}

/** A decoder error, as it crosses back: an EngineError keeps its class, code and detail; any other its name, message and code. */
export type SerializedDecodeError =
  | { engine: true; code: EngineErrorCode; message: string; detail: Record<string, unknown> }
  | { engine: false; name: string; message: string; code?: string };

export type InitDecodeResponse = { ok: true; width: number; height: number; fits: PlanarImage[] } | { ok: false; error: SerializedDecodeError };

export interface InitDecodeOptions {
  /** The file size limit decodeImage applies (its default when absent). */
  maxBytes?: number;
  /** The sizes the image is fitted at (resizeCover): the only ones the returned image can be resized to. */
  fitSizes?: readonly FitSize[];
  /** Ends the decode at once (its thread is terminated); the promise rejects as `aborted`. */
  signal?: AbortSignal;
  /** Tests only: see InitDecodeRequest.fault. */
  faultForTest?: InitDecodeRequest['fault'];
}

let threadsAlive = 0;
/** Decode threads started and not yet ended (for tests: a stopped decode leaves none behind). */
export function initDecodeThreadsAlive(): number {
  return threadsAlive;
}

function startThread(): Worker {
  // As EnginePool's threads: from TypeScript sources (tsx, vitest) the thread starts on the small .mjs
  // entry that registers tsx's loader in it (see pool-worker-tsx.mjs), and inherits no execArgv.
  return import.meta.url.endsWith('.ts')
    ? new Worker(new URL('../engine/runtime/pool-worker-tsx.mjs', import.meta.url), {
        execArgv: [],
        workerData: { entry: new URL('./init-decode-thread.ts', import.meta.url).href },
      })
    : new Worker(new URL('./init-decode-thread.js', import.meta.url), { execArgv: [] });
}

function errorFrom(e: SerializedDecodeError): Error {
  if (e.engine) return new EngineError(e.code, e.message, e.detail);
  const err = new Error(e.message);
  err.name = e.name;
  if (e.code !== undefined) Object.assign(err, { code: e.code });
  return err;
}

const stopped = () => new EngineError('aborted', 'the init image decode was stopped (the run was aborted)');

/**
 * decodeImage(bytes, { maxBytes }) on a thread of its own, fitted there at `fitSizes`: the image it
 * resolves to has the source's width and height and only those fits (fittedImage). A bad image
 * rejects with decodeImage's own error (the same class, code, message and detail). A thread that
 * crashes or ends before it answers rejects as `aborted` (retryable: it says nothing about the image).
 */
export function decodeInitImage(bytes: Uint8Array, opts: InitDecodeOptions = {}): Promise<PlanarImage> {
  return new Promise((resolve, reject) => {
    const { signal } = opts;
    if (signal?.aborted) return reject(stopped());
    const worker = startThread();
    threadsAlive++;
    worker.once('exit', () => threadsAlive--);
    let settled = false;
    const settle = (finish: () => void): void => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', onAbort);
      // Done with it either way; its memory (the file, the inflated samples, the full-size image) goes with it.
      void worker.terminate();
      try {
        finish();
      } catch (e) {
        reject(e);
      }
    };
    const onAbort = (): void => settle(() => reject(stopped()));
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (res: InitDecodeResponse) => settle(() => (res.ok ? resolve(fittedImage(res.width, res.height, res.fits)) : reject(errorFrom(res.error)))));
    worker.on('error', (e) => settle(() => reject(new EngineError('aborted', `the init image decode thread crashed (${e.message}); the job can be retried`))));
    worker.on('exit', (code) => settle(() => reject(new EngineError('aborted', `the init image decode thread ended (exit code ${code}) before it answered; the job can be retried`))));
    // A copy the thread owns, moved to it: the caller's bytes may be a store's own buffer, or a view on a
    // larger one (which a structured clone would copy whole).
    const own = new Uint8Array(bytes);
    const req: InitDecodeRequest = { bytes: own, fitSizes: (opts.fitSizes ?? []).map(({ width, height }) => ({ width, height })) };
    if (opts.maxBytes !== undefined) req.maxBytes = opts.maxBytes;
    if (opts.faultForTest) req.fault = opts.faultForTest;
    try {
      worker.postMessage(req, [own.buffer]);
    } catch (e) {
      settle(() => reject(new EngineError('aborted', `cannot send the init image to its decode thread: ${(e as Error).message}`)));
    }
  });
}
