// The thread side of decodeInitImage (init-decode.ts): decodes one init image, fits it to the sizes it
// was asked for, answers once, and is ended by its caller.

import { parentPort } from 'node:worker_threads';
import { EngineError } from '../engine/errors.ts';
import { decodeImage, resizeCover } from '../engine/synth/image.ts';
import type { InitDecodeRequest, InitDecodeResponse } from './init-decode.ts';

if (!parentPort) throw new Error('init-decode-thread.ts must run inside a worker thread started by decodeInitImage');
const port = parentPort;

function answer(req: InitDecodeRequest): { res: InitDecodeResponse; transfer: ArrayBuffer[] } {
  try {
    const image = decodeImage(req.bytes, { maxBytes: req.maxBytes });
    const fits = req.fitSizes.map((s) => resizeCover(image, s.width, s.height));
    return { res: { ok: true, width: image.width, height: image.height, fits }, transfer: fits.map((f) => f.data.buffer as ArrayBuffer) };
  } catch (e) {
    if (e instanceof EngineError) return { res: { ok: false, error: { engine: true, code: e.code, message: e.message, detail: e.detail } }, transfer: [] };
    const err = e instanceof Error ? e : new Error(String(e));
    const code = (err as { code?: unknown }).code;
    return { res: { ok: false, error: { engine: false, name: err.name, message: err.message, ...(typeof code === 'string' ? { code } : {}) } }, transfer: [] };
  }
}

port.once('message', (req: InitDecodeRequest) => {
  if (req.fault === 'throw') throw new Error('init decode thread crash requested (test hook)');
  if (req.fault === 'exit') process.exit(70); // in a worker thread this ends the thread, not the process
  if (req.fault === 'hang') for (;;);
  const { res, transfer } = answer(req);
  try {
    port.postMessage(res, transfer);
  } catch {
    // An error's detail that cannot be cloned: its code and message still reach the caller.
    if (!res.ok && res.error.engine) port.postMessage({ ok: false, error: { ...res.error, detail: {} } } satisfies InitDecodeResponse);
    else throw new Error('init decode thread could not send its answer');
  }
});
