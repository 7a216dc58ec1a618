// The worker as a real process (gpu-worker/main.ts, the container's entry point) on a shared `.data`
// folder: SIGKILL mid-job → the message comes back after the visibility timeout and a second worker
// completes the job; SIGTERM mid-job → the process drains, requeues the job and its message,
// and exits 0 well inside ECS's 120 s stopTimeout.
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cudaProviderInstalled } from '../../gpu-worker/engine/runtime/providers.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { exitOnSignal, exitWhenUnhealthy, startWorker, type RunningWorker } from '../../gpu-worker/main.ts';
import { silentLogger, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import { decodeImage } from '../../gpu-worker/engine/synth/image.ts';
import { type Env, FAST_RECIPE, OWNER, makeEnv, makeModelsDir, submit, waitFor, waitForStatus } from './helpers.ts';

const modelsDir = makeModelsDir();
const children: ChildProcess[] = [];
const workers: RunningWorker[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

function spawnWorker(env: Env, extra: Record<string, string> = {}) {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'gpu-worker', 'main.ts')], {
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH,
      ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
      HOME: process.env.HOME,
      CLIPAG_MODE: 'local',
      CLIPAG_DATA_DIR: env.dataDir,
      CLIPAG_MODELS_DIR: modelsDir,
      CLIPAG_DEFAULT_MODEL: 'tiny',
      CLIPAG_VISIBILITY_TIMEOUT_SEC: String(env.config.visibilityTimeoutSec),
      CLIPAG_RECEIVE_WAIT_SEC: '1',
      LOG_LEVEL: 'info',
      ...extra,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, exited, output: () => output };
}

describe('the worker process', () => {
  it('a configuration that does not parse: exits 78 (EX_CONFIG) with a JSON error line, which the log group\'s error alarm counts', async () => {
    const env = await makeEnv();
    const proc = spawnWorker(env, { CLIPAG_VISIBILITY_TIMEOUT_SEC: 'soon' });
    expect(await proc.exited, proc.output()).toEqual({ code: 78, signal: null });
    const lines = proc.output().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toEqual([expect.objectContaining({ level: 'error', component: 'worker', msg: 'worker configuration is invalid; exiting', error: expect.stringMatching(/CLIPAG_VISIBILITY_TIMEOUT_SEC/) })]);
  });

  it('SIGKILL mid-job: the job completes after redelivery by a second worker once the visibility timeout expires', async () => {
    const env = await makeEnv({ CLIPAG_VISIBILITY_TIMEOUT_SEC: '3' });
    // The notebook's default recipe (32 + 32 views) on the tiny model: 400 steps are ~10 s of work, so the
    // window in which the job is seen running (progress is written about once a second) is wide even on a
    // fast or a loaded machine (60 steps once finished in 1.5 s, before the test saw a progress write).
    const job = await submit(env, { steps: 400, init: 'noise' });
    const first = spawnWorker(env);
    const running = await waitFor('the child to write progress', async () => {
      const rec = await env.jobs.get(OWNER, job.id);
      return rec && rec.status === 'running' && rec.progress.step >= 2 ? rec : undefined;
    }, 90_000).catch((e) => {
      throw new Error(`${(e as Error).message}\n--- child output ---\n${first.output()}`);
    });
    expect(running.attempts).toBe(1);
    first.child.kill('SIGKILL');
    const killedAt = Date.now();
    expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });

    // Nobody released it: the record still says running, and the message is invisible until the lease runs out.
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('running');
    const events: WorkerEvent[] = [];
    const second = startWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, config: { ...env.config, modelsDir },
      recipeOverrides: FAST_RECIPE, log: silentLogger, onEvent: (e) => events.push(e),
    });
    workers.push(second);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed', 'canceled'], 90_000);
    const received = events.find((e) => e.type === 'received') as Extract<WorkerEvent, { type: 'received' }>;
    expect(received.receiveCount).toBe(2);
    expect(done.status, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.attempts).toBe(2);
    expect(Date.now() - killedAt).toBeLessThan(60_000);
    const png = decodeImage((await env.blobs.get(done.outputs[0].key))!.body);
    expect([png.width, png.height]).toEqual([64, 64]);
    await waitFor('the ack', async () => (await env.queue.depth()) === 0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('SIGTERM mid-job: drains, requeues the job and its message, exits 0 quickly', async () => {
    const env = await makeEnv({ CLIPAG_VISIBILITY_TIMEOUT_SEC: '60' });
    const job = await submit(env, { steps: 500, init: 'noise' });
    const proc = spawnWorker(env);
    await waitFor('the child to write progress', async () => {
      const rec = await env.jobs.get(OWNER, job.id);
      return rec && rec.status === 'running' && rec.progress.step >= 1;
    }, 90_000).catch((e) => {
      throw new Error(`${(e as Error).message}\n--- child output ---\n${proc.output()}`);
    });
    const t0 = Date.now();
    proc.child.kill('SIGTERM');
    const exit = await proc.exited;
    const drainMs = Date.now() - t0;
    expect(exit, proc.output()).toEqual({ code: 0, signal: null });
    expect(drainMs).toBeLessThan(10_000); // ECS stopTimeout is 120 s
    expect(proc.output()).toMatch(/"msg":"drained; exiting"/);
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect([rec.status, rec.attempts]).toEqual(['queued', 1]);
    // Given back, so another worker gets it now, not after the 60 s visibility timeout, and as a
    // fresh copy: the drain did not spend one of the job's deliveries.
    const again = await env.queue.receive({ waitSec: 0 });
    expect(again.map((m) => m.receiveCount)).toEqual([1]);
  });

  // Skipped where the CUDA EP is installed: there a cuda session may load, and this test needs one that cannot.
  it.skipIf(cudaProviderInstalled())('a device that does not load (CUDA asked for on this machine): the warm-up says so, the job is never taken, and the process exits 1 so ECS replaces it', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const proc = spawnWorker(env, { CLIPAG_EXECUTION_PROVIDER: 'cuda' });
    const exit = await proc.exited;
    expect(exit, proc.output()).toEqual({ code: 1, signal: null });
    expect(proc.output()).toMatch(/"msg":"worker unhealthy; taking no more jobs".*"reason":"warm_up"/);
    expect(proc.output()).toMatch(/"msg":"worker unhealthy: exiting so that ECS replaces the task"/);
    // Its queue's job is untouched: no delivery was spent on this machine.
    expect((await env.jobs.get(OWNER, job.id))!).toMatchObject({ status: 'queued', attempts: 0 });
    expect((await env.queue.receive({ waitSec: 0 })).map((m) => m.receiveCount)).toEqual([1]);
  });
});

describe('exitOnSignal', () => {
  const log = { ...silentLogger, error: () => undefined };
  it('drains then exits 0; 1 when the worker went unhealthy meanwhile; 0 at once before the worker started; a second signal exits 1', async () => {
    const run = async (opts: { started: boolean; unhealthyAfterDrain: boolean; signals?: number }) => {
      const exits: number[] = [];
      let unhealthy = false;
      let release!: () => void;
      const drained = new Promise<void>((r) => (release = r));
      const onSignal = exitOnSignal({ stop: () => (opts.started ? drained : undefined), unhealthy: () => unhealthy, exit: (code) => void exits.push(code), log });
      for (let i = 0; i < (opts.signals ?? 1); i++) onSignal('SIGTERM');
      unhealthy = opts.unhealthyAfterDrain; // the worker gave up while it drained
      release();
      await new Promise((r) => setTimeout(r, 10));
      return exits;
    };
    expect(await run({ started: true, unhealthyAfterDrain: false })).toEqual([0]);
    expect(await run({ started: true, unhealthyAfterDrain: true })).toEqual([1]);
    expect(await run({ started: false, unhealthyAfterDrain: false })).toEqual([0]);
    expect((await run({ started: true, unhealthyAfterDrain: false, signals: 2 }))[0]).toBe(1);
  });
});

describe('exitWhenUnhealthy', () => {
  const log = { ...silentLogger, error: () => undefined };
  it('drains, then exits 1 once; a drain that never ends (a stuck run) is cut at the grace', async () => {
    const exits: number[] = [];
    let stops = 0;
    const onEvent = exitWhenUnhealthy({ stop: async () => void stops++, exit: (code) => exits.push(code), log, graceMs: 5_000 });
    onEvent({ type: 'state', state: 'polling' });
    expect(exits).toEqual([]);
    onEvent({ type: 'unhealthy', reason: 'machine_failures' });
    onEvent({ type: 'unhealthy', reason: 'stuck_run' });
    await waitFor('the exit', () => exits.length > 0);
    expect([exits, stops]).toEqual([[1], 1]);

    const stuck: number[] = [];
    const t0 = Date.now();
    exitWhenUnhealthy({ stop: () => new Promise<void>(() => undefined), exit: (code) => stuck.push(code), log, graceMs: 200 })({ type: 'unhealthy', reason: 'stuck_run' });
    await waitFor('the exit', () => stuck.length > 0);
    expect(stuck).toEqual([1]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
  });
});
