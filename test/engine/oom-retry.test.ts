// A step graph's load or run that runs out of memory: the engine unloads its idle leased graphs (the
// sessions that hold the memory) and tries once more; a second failure is the caller's, as before.
//
// The pool here is a stand-in around a real EnginePool: a real out-of-memory cannot be produced
// reliably on this machine (no GPU, and the host has memory to spare for the toy model), so the
// stand-in fails a step graph's load or first run with onnxruntime's out-of-memory message, and only
// while more than one step graph is loaded (the state in which freeing idle graphs can help).
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { EnginePool, type EngineHandle } from '../../gpu-worker/engine/runtime/pool.ts';
import { synthesize } from '../../gpu-worker/engine/synth/synthesize.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { rejection } from '../helpers/errors.ts';

const OOM = '[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer of size 1073741824';
const dir = makeTinyBundle('quickgelu');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A real pool whose step graphs' loads or runs fail out of memory: first while another step graph is loaded, then `times` - 1 more times. */
class CrowdedPool extends EnginePool {
  failures = 0;
  constructor(
    private readonly failing: 'load' | 'run',
    private readonly times: number,
  ) {
    super({ size: 1, sessionOptions: { intraOpThreads: 1 } });
  }
  private crowded(): boolean {
    return this.failures < this.times && (this.failures > 0 || this.loadedKeys.filter((k) => k.includes(':step:')).length > 1);
  }
  override async load(...args: Parameters<EnginePool['load']>): Promise<EngineHandle> {
    const h = await super.load(...args);
    if (!args[0].includes(':step:')) return h;
    if (this.failing === 'load' && this.crowded()) {
      this.failures++;
      await this.unload(args[0]); // a load that failed leaves no session
      throw new EngineError('runtime_failed', `the cpu device ran out of memory loading the model: ${OOM}`);
    }
    return {
      ...h,
      run: (feeds, fetches, opts) => {
        if (this.failing !== 'run' || !this.crowded()) return h.run(feeds, fetches, opts);
        this.failures++;
        // As a real run does: transferred feeds are gone once sent, whatever the run does.
        if (opts?.transfer) for (const t of Object.values(feeds)) if (t.data.buffer instanceof ArrayBuffer) structuredClone(t.data.buffer, { transfer: [t.data.buffer] });
        return Promise.reject(new EngineError('runtime_failed', `onnxruntime run failed: ${OOM}`));
      },
    };
  }
}

const request = (width: number, height: number) => ({
  prompts: [{ text: 'a red circle', weight: 1 }], width, height, seed: 1, init: { kind: 'noise' as const },
  recipe: { steps: 2, globalViews: 2, patchViews: 2, initSamples: 8, frameEvery: 0 },
});
const sizeOf = (key: string) => key.split(':step:')[1]!.split(':')[0];

async function reference(): Promise<Uint8Array> {
  const plain = await ClipEngine.open(dir, { threads: 1 });
  try {
    return (await synthesize(plain, request(32, 24))).png;
  } finally {
    await plain.close();
  }
}

describe('out of memory in a step graph', () => {
  for (const failing of ['run', 'load'] as const) {
    it(`a ${failing} that fails out of memory unloads the idle step graphs and is tried once more`, async () => {
      const pool = new CrowdedPool(failing, 1);
      const engine = await ClipEngine.open(dir, { pool });
      try {
        await synthesize(engine, request(32, 32));
        const res = await synthesize(engine, request(32, 24)); // a second step graph: the pool is "full"
        expect(pool.failures).toBe(1);
        expect(engine.leasedGraphs.map(sizeOf)).toEqual(['24x32']);
        expect(pool.loadedKeys.filter((k) => k.includes(':step:')).map(sizeOf)).toEqual(['24x32']);
        // The retried run had the step's own feeds: the image is the one a roomy engine makes.
        expect(Buffer.from(res.png).equals(Buffer.from(await reference()))).toBe(true);
      } finally {
        await engine.close();
        await pool.close();
      }
    });

    it(`a second out-of-memory ${failing} fails the synthesis as before (runtime_failed, the job's own)`, async () => {
      const pool = new CrowdedPool(failing, 3);
      const engine = await ClipEngine.open(dir, { pool });
      try {
        await synthesize(engine, request(32, 32));
        const e = await rejection(synthesize(engine, request(32, 24)));
        expect([e.code, e.message]).toEqual(['runtime_failed', expect.stringContaining('Failed to allocate memory')]);
        expect(pool.failures).toBe(2); // tried once more, not again
      } finally {
        await engine.close();
        await pool.close();
      }
    });
  }
});
