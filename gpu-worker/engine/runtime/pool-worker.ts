// Worker-thread side of EnginePool: owns ORT sessions so their blocking run() never stalls the main thread.
// It also serializes the graphs it is given (GraphSource), which takes seconds at ViT-B/32 size.

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

/** A key's session: the load (generation) that opened it, and its runs not yet finished. */
interface Open {
  session: EngineSession;
  gen: number;
  runs: Set<Promise<unknown>>;
}
const sessions = new Map<string, Open>();

function sessionFor(key: string): Open {
  const s = sessions.get(key);
  if (!s) throw new EngineError('invalid_input', `no model loaded under key '${key}'; call pool.load(key, model) first`, { key });
  return s;
}

/**
 * Releases a session once the runs already started on it have finished. A run's native call begins a
 * turn after session.run is called, so an unload taken in between would otherwise dispose the session
 * under it ("Session already disposed").
 */
async function retire(o: Open): Promise<void> {
  while (o.runs.size > 0) await Promise.allSettled([...o.runs]);
  await o.session.release();
}

/**
 * In-memory ONNX bytes for ordinary graphs; for very large ones (ViT-L/14-and-up towers in float32) a
 * temporary .onnx + .onnx.data pair in `dir`, loaded by path. The pool made `dir` and removes it once
 * this load is answered or this thread has ended: a re-open after an eviction or on a replacement
 * thread writes a new one.
 */
async function openGraph(key: string, src: GraphSource, options: SessionOptions, dir: string | undefined): Promise<EngineSession> {
  if (dir === undefined) return createSession(encodeModel(src.model), options);
  const path = join(dir, `${key.replace(/[^A-Za-z0-9_.-]/g, '_')}.onnx`);
  await writeModelFile(path, src.model);
  return createSession(path, options);
}

function open(key: string, model: ModelSource, options: SessionOptions, dir: string | undefined): Promise<EngineSession> {
  if (typeof model === 'string' || model instanceof Uint8Array) return createSession(model, options);
  return openGraph(key, model, options, dir);
}

async function handle(msg: PoolRequest): Promise<{ value: unknown; transfer: ArrayBuffer[] }> {
  switch (msg.type) {
    case 'load': {
      const s = await open(msg.key, msg.model, msg.options, msg.dir);
      const cur = sessions.get(msg.key);
      if (cur && cur.gen > msg.gen) {
        // A later load of the key opened first: this one was unloaded before it finished, so its session is not kept.
        await s.release();
      } else {
        sessions.set(msg.key, { session: s, gen: msg.gen, runs: new Set() });
        if (cur) await retire(cur);
      }
      const value: LoadResult = { inputNames: s.inputNames, outputNames: s.outputNames };
      // onnxruntime parsed the bytes into its own graph and keeps no reference to them.
      if (msg.returnBytes && msg.model instanceof Uint8Array && msg.model.buffer instanceof ArrayBuffer) {
        value.bytes = msg.model;
        return { value, transfer: [msg.model.buffer] };
      }
      return { value, transfer: [] };
    }
    case 'run': {
      const o = sessionFor(msg.key);
      const running = o.session.run(msg.feeds, msg.fetches);
      o.runs.add(running);
      const out = await running.finally(() => o.runs.delete(running));
      // The worker keeps nothing of the outputs, so hand their memory over instead of copying it.
      return { value: out, transfer: transferablesOf(Object.values(out)) };
    }
    case 'unload': {
      // Only the session of the load it was issued for: a later load of the key keeps its own.
      const o = sessions.get(msg.key);
      if (o && o.gen === msg.gen) {
        sessions.delete(msg.key);
        await retire(o);
      }
      return { value: null, transfer: [] };
    }
    case 'close': {
      const all = [...sessions.values()];
      sessions.clear();
      for (const o of all) await retire(o);
      return { value: null, transfer: [] };
    }
    case 'exit': {
      for (const o of sessions.values()) await o.session.release().catch(() => undefined);
      sessions.clear();
      process.exit(0); // in a worker thread this ends the thread, not the process
    }
    case 'crash':
      throw new Error('crash requests are handled as they arrive'); // see the listener below
  }
}

/** How many characters of a thrown non-Error's JSON a message quotes. */
const THROWN_JSON_CHARS = 200;

/**
 * What was thrown, in words: an Error's message (or any object's string `message`), a string as it
 * is, anything else by its type and its JSON as far as it serializes, never String()'s "[object
 * Object]". The text can reach a failed job's message (runtime_failed, then retries_exhausted's "last error").
 */
function thrownText(e: unknown): string {
  const message = (e as { message?: unknown } | null | undefined)?.message;
  if (typeof message === 'string') return message;
  if (typeof e === 'string') return e;
  if (e === null || e === undefined) return `a thrown ${String(e)}`;
  if (typeof e !== 'object' && typeof e !== 'function') return `a thrown ${typeof e} (${String(e)})`;
  const name = (e as { constructor?: { name?: unknown } }).constructor?.name;
  const type = `a thrown ${typeof name === 'string' && name !== '' ? name : 'object'}`;
  let json: string | undefined;
  try {
    json = JSON.stringify(e);
  } catch {
    // A cycle or a BigInt inside: the type alone.
  }
  if (json === undefined) return type;
  return `${type} ${json.length > THROWN_JSON_CHARS ? `${json.slice(0, THROWN_JSON_CHARS)}…` : json}`;
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
          : { code: 'runtime_failed' as const, message: `engine worker failed: ${thrownText(e)}`, detail: {} };
      try {
        port.postMessage({ id: msg.id, ok: false, error: err } satisfies PoolResponse);
      } catch {
        // detail held something that cannot be cloned; the code and message still reach the caller
        port.postMessage({ id: msg.id, ok: false, error: { ...err, detail: {} } } satisfies PoolResponse);
      }
    },
  );
});
