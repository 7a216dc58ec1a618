// Worker-thread side of EnginePool: owns ORT sessions so their blocking run() never stalls the main thread.

import { parentPort } from 'node:worker_threads';
import { EngineError } from '../errors.ts';
import { createSession } from './session.ts';
import type { EngineSession } from './session.ts';
import { transferablesOf } from './pool-protocol.ts';
import type { LoadResult, PoolRequest, PoolResponse } from './pool-protocol.ts';

if (!parentPort) throw new Error('pool-worker.ts must run inside a worker thread started by EnginePool');
const port = parentPort;
const sessions = new Map<string, EngineSession>();

function sessionFor(key: string): EngineSession {
  const s = sessions.get(key);
  if (!s) throw new EngineError('invalid_input', `no model loaded under key '${key}'; call pool.load(key, model) first`, { key });
  return s;
}

async function handle(msg: PoolRequest): Promise<{ value: unknown; transfer: ArrayBuffer[] }> {
  switch (msg.type) {
    case 'load': {
      const old = sessions.get(msg.key);
      const s = await createSession(msg.model, msg.options);
      sessions.set(msg.key, s);
      if (old) await old.release();
      const value: LoadResult = { inputNames: s.inputNames, outputNames: s.outputNames };
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
  }
}

port.on('message', (msg: PoolRequest) => {
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
