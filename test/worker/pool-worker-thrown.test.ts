// An engine worker thread's answer when something other than an EngineError is thrown under a
// request: runtime_failed, with words that say what was thrown. A plain object once read "engine
// worker failed: [object Object]", and that text reached the job's retries_exhausted message.
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import type { PoolResponse } from '../../gpu-worker/engine/runtime/pool-protocol.ts';

const worker = new Worker(new URL('../../gpu-worker/engine/runtime/pool-worker-tsx.mjs', import.meta.url), {
  execArgv: [],
  workerData: { entry: new URL('./fixtures/pool-worker-throwing.ts', import.meta.url).href },
});
afterAll(() => worker.terminate());

let nextId = 1;
/** The thread's answer to a run on `key`. */
function run(key: string): Promise<PoolResponse> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const onMessage = (res: PoolResponse) => {
      if (res.id !== id) return;
      worker.off('message', onMessage);
      resolve(res);
    };
    worker.on('message', onMessage);
    worker.once('error', reject);
    worker.postMessage({ id, type: 'run', key, feeds: {} });
  });
}

describe('an engine worker thread that catches a thrown non-Error', () => {
  it('answers runtime_failed naming what was thrown, never "[object Object]"', async () => {
    const cases: Array<[string, string]> = [
      ['throw:object', 'engine worker failed: a thrown Object {"reason":"injected","errno":7}'],
      ['throw:cyclic', 'engine worker failed: a thrown Object'],
      ['throw:null-prototype', 'engine worker failed: a thrown object {"a":1}'],
      ['throw:number', 'engine worker failed: a thrown number (42)'],
      ['throw:null', 'engine worker failed: a thrown null'],
      ['throw:string', 'engine worker failed: a thrown string'],
      ['throw:error', 'engine worker failed: an Error of its own'],
    ];
    for (const [key, message] of cases) {
      expect(await run(key), key).toEqual({ id: expect.any(Number), ok: false, error: { code: 'runtime_failed', message, detail: {} } });
    }
  });

  it('still answers an EngineError as itself', async () => {
    expect(await run('no-such-key')).toMatchObject({ ok: false, error: { code: 'invalid_input', message: expect.stringMatching(/^no model loaded under key 'no-such-key'/) } });
  });
});
