// Worker-thread side of EnginePool: owns ORT sessions so their blocking run() never stalls the main thread.
// It also serializes the graphs it is given (GraphSource), which takes seconds at ViT-B/32 size.

import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parentPort } from 'node:worker_threads';
import { EngineError } from '../errors.ts';
import { encodeModel, writeModelFile } from '../onnx/codec.ts';
import { createSession } from './session.ts';
import type { EngineSession, SessionOptions } from './session.ts';
import { transferablesOf } from './pool-protocol.ts';
import type { GraphSource, LoadResult, ModelSource, PoolRequest, PoolResponse } from './pool-protocol.ts';

if (!parentPort) throw new Error('pool-worker.ts must run inside a worker thread started by EnginePool');
const port = parentPort;
const sessions = new Map<string, EngineSession>();

function sessionFor(key: string): EngineSession {
  const s = sessions.get(key);
  if (!s) throw new EngineError('invalid_input', `no model loaded under key '${key}'; call pool.load(key, model) first`, { key });
  return s;
}

/**
 * In-memory ONNX bytes for ordinary graphs; for very large ones (ViT-L/14-and-up towers in float32) a
 * temporary .onnx + .onnx.data pair, loaded by path and removed once loaded (or refused): a re-open
 * after an eviction or on a replacement thread writes a new one.
 */
async function openGraph(key: string, src: GraphSource, options: SessionOptions): Promise<EngineSession> {
  let bytes = 0;
  for (const t of src.model.initializers.values()) bytes += t.data.byteLength;
  if (bytes < src.inlineLimitBytes) return createSession(encodeModel(src.model), options);
  const dir = mkdtempSync(join(src.tempDir, 'clipag-graph-'));
  try {
    const path = join(dir, `${key.replace(/[^A-Za-z0-9_.-]/g, '_')}.onnx`);
    await writeModelFile(path, src.model);
    return await createSession(path, options);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function open(key: string, model: ModelSource, options: SessionOptions): Promise<EngineSession> {
  if (typeof model === 'string' || model instanceof Uint8Array) return createSession(model, options);
  return openGraph(key, model, options);
}

async function handle(msg: PoolRequest): Promise<{ value: unknown; transfer: ArrayBuffer[] }> {
  switch (msg.type) {
    case 'load': {
      const old = sessions.get(msg.key);
      const s = await open(msg.key, msg.model, msg.options);
      sessions.set(msg.key, s);
      if (old) await old.release();
      const value: LoadResult = { inputNames: s.inputNames, outputNames: s.outputNames };
      // onnxruntime parsed the bytes into its own graph and keeps no reference to them.
      if (msg.returnBytes && msg.model instanceof Uint8Array && msg.model.buffer instanceof ArrayBuffer) {
        value.bytes = msg.model;
        return { value, transfer: [msg.model.buffer] };
      }
      return { value, transfer: [] };
    }
    case 'run': {
      const out = await sessionFor(msg.key).run(msg.feeds, msg.fetches);
      // The worker keeps nothing of the outputs, so hand their memory over instead of copying it.
      return { value: out, transfer: transferablesOf(Object.values(out)) };
    }
    case 'unload': {
      const s = sessions.get(msg.key);
      sessions.delete(msg.key);
      if (s) await s.release();
      return { value: null, transfer: [] };
    }
    case 'close': {
      for (const s of sessions.values()) await s.release();
      sessions.clear();
      return { value: null, transfer: [] };
    }
    case 'exit': {
      for (const s of sessions.values()) await s.release().catch(() => undefined);
      sessions.clear();
      process.exit(0); // in a worker thread this ends the thread, not the process
    }
    case 'crash':
      throw new Error('crash requests are handled as they arrive'); // see the listener below
  }
}

port.on('message', (msg: PoolRequest) => {
  if (msg.type === 'crash') {
    // Thrown from the listener itself, so the thread dies before it takes any message queued behind this one.
    if (msg.how === 'exit') process.exit(70);
    throw new Error('engine worker crash requested (test hook)');
  }
  handle(msg).then(
    ({ value, transfer }) => {
      const res: PoolResponse = { id: msg.id, ok: true, value };
      try {
        port.postMessage(res, transfer);
      } catch {
        // Some ORT-owned buffers cannot be detached; a structured copy is still correct.
        port.postMessage(res);
      }
    },
    (e: unknown) => {
      const err =
        e instanceof EngineError
          ? { code: e.code, message: e.message, detail: e.detail }
          : { code: 'runtime_failed' as const, message: `engine worker failed: ${(e as Error)?.message ?? String(e)}`, detail: {} };
      try {
        port.postMessage({ id: msg.id, ok: false, error: err } satisfies PoolResponse);
      } catch {
        // detail held something that cannot be cloned; the code and message still reach the caller
        port.postMessage({ id: msg.id, ok: false, error: { ...err, detail: {} } } satisfies PoolResponse);
      }
    },
  );
});
