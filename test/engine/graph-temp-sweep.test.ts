// A large graph's temporary folder (a graph of 1.5 GiB or more is written to a file to load) carries
// its process's pid and nonce: one that a SIGKILLed process left (nothing else removes it) is swept when
// the next process starts a pool, or first loads a large graph into that folder; a live process's stays.
// The nonce tells a restarted container's pid 1 from the pid 1 that was killed before it.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { ModelIR, TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { EnginePool, PROCESS_NONCE, processMayBeAlive, sweepStaleGraphDirs, tempOwnerMayBeAlive } from '../../gpu-worker/engine/runtime/pool.ts';

/** A pid no process has (Linux pids end at 2^22). */
const DEAD_PID = 999_999_999;
/** A nonce this process did not draw. */
const OTHER_NONCE = PROCESS_NONCE === '0badc0de' ? '0badf00d' : '0badc0de';

const pools: EnginePool[] = [];
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'clipag-graph-sweep-'));
  dirs.push(d);
  return d;
};

/** `names` as folders under `parent`, each with a file in it (a graph being written). */
function folders(parent: string, names: string[]): void {
  for (const n of names) {
    mkdirSync(join(parent, n));
    writeFileSync(join(parent, n, 'graph.onnx.data'), Buffer.alloc(4096, 1));
  }
}

/** A graph of one [n, n] weight. */
function oneWeight(n: number): ModelIR {
  const initializers = new Map<string, TensorData>([['w', { dtype: 'float32', dims: [n, n], data: new Float32Array(n * n).fill(1 / n) }]]);
  return {
    opset: 17,
    graphName: 'one',
    inputs: [{ name: 'x', dtype: 'float32', shape: [1, n] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [1, n] }],
    initializers,
    nodes: [{ op: 'MatMul', name: 'mm', inputs: ['x', 'w'], outputs: ['y'], attrs: {} }],
  };
}

describe('large-graph temporary folders', () => {
  it('processMayBeAlive: false only for a pid no process has', () => {
    expect(processMayBeAlive(process.pid)).toBe(true);
    expect(processMayBeAlive(DEAD_PID)).toBe(false);
    // not a pid the OS can be asked about: never taken for dead
    for (const odd of [0, -1, 1.5, 2 ** 40, Number.NaN]) expect(processMayBeAlive(odd)).toBe(true);
  });

  it('tempOwnerMayBeAlive: our pid counts as alive only with our nonce (same pid, other nonce: a predecessor that died)', () => {
    expect(PROCESS_NONCE).toMatch(/^[0-9a-f]{8}$/);
    expect(tempOwnerMayBeAlive(process.pid, PROCESS_NONCE)).toBe(true);
    expect(tempOwnerMayBeAlive(process.pid, OTHER_NONCE)).toBe(false);
    expect(tempOwnerMayBeAlive(process.ppid, OTHER_NONCE)).toBe(true); // another live process: its nonce is not ours to know
    expect(tempOwnerMayBeAlive(DEAD_PID, PROCESS_NONCE)).toBe(false);
  });

  it('a pool start sweeps os.tmpdir() of dead processes\' folders, and only those', () => {
    const parent = tmp();
    const dead = `clipag-graph-${DEAD_PID}-${OTHER_NONCE}-Ab12Cd`;
    // a process that had this pid before (a container restarted with the same pid 1) and was killed
    const predecessor = `clipag-graph-${process.pid}-${OTHER_NONCE}-Ef56Gh`;
    const live = `clipag-graph-${process.pid}-${PROCESS_NONCE}-Xy34Zw`;
    // older versions' names (no pid, or no nonce) and names of other shapes are not the pool's to judge
    const others = [
      'clipag-graph-Qr56St',
      `clipag-graph-${DEAD_PID}-Ab12Cd`,
      `clipag-graph-${DEAD_PID}-${OTHER_NONCE}-toolongname`,
      `clipag-graph-${DEAD_PID}-NOTHEX00-Ab12Cd`,
      `clipag-healing-tmp-${DEAD_PID}-${OTHER_NONCE}-Ab12Cd`,
    ];
    folders(parent, [dead, predecessor, live, ...others]);
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = parent; // os.tmpdir() reads it on every call
    try {
      pools.push(new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } }));
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
    }
    expect(readdirSync(parent).sort()).toEqual([live, ...others].sort());
  });

  it('a large-graph load names its folder with this pid and nonce, and first sweeps the folder it was given', async () => {
    const parent = tmp();
    const dead = `clipag-graph-${DEAD_PID}-${PROCESS_NONCE}-Ab12Cd`;
    const predecessor = `clipag-graph-${process.pid}-${OTHER_NONCE}-Ef56Gh`;
    const live = `clipag-graph-${process.pid}-${PROCESS_NONCE}-Xy34Zw`;
    folders(parent, [dead, predecessor, live]);
    const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 } });
    pools.push(pool);
    expect(existsSync(join(parent, dead))).toBe(true); // not os.tmpdir(): left until a load goes there
    expect(existsSync(join(parent, predecessor))).toBe(true);
    // Over the inline limit (0 here): the pool makes the load's folder before the call returns.
    const loading = pool.load('big', oneWeight(16), {}, { inlineLimitBytes: 0, tempDir: parent });
    const made = readdirSync(parent).filter((n) => n !== live);
    expect(made).toEqual([expect.stringMatching(new RegExp(`^clipag-graph-${process.pid}-${PROCESS_NONCE}-[A-Za-z0-9]{6}$`))]);
    const h = await loading;
    expect((await h.run({ x: { dtype: 'float32', dims: [1, 16], data: new Float32Array(16).fill(1) } })).y.data.length).toBe(16);
    // the load removed its own folder once answered; the live process's stays
    expect(readdirSync(parent)).toEqual([live]);
  });

  it('sweepStaleGraphDirs: a folder that does not exist is nothing to sweep', () => {
    expect(sweepStaleGraphDirs(join(tmpdir(), `clipag-no-such-folder-${process.pid}`))).toEqual([]);
  });
});
