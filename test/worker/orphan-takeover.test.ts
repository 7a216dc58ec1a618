// A local worker killed mid-run (kill -9), and another started at once on the same data folder: the
// local queue hands the dead holder's message out at once (it records its receivers), and the new
// worker takes the job over. The record's lease still had most of its time: without the queue saying
// the holder is gone, the delivery was taken for a second copy of a live holder's and hidden for an hour.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { makeEnv, submit, waitFor, OWNER } from './helpers.ts';
import { outcome, standInImage, start, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

const isEnded = (status: string | undefined) => status === 'succeeded' || status === 'failed' || status === 'canceled';

it('a job whose worker was killed mid-run is taken over at once by a worker started after it', async () => {
  const env = await makeEnv();
  const job = await submit(env, { steps: 2 });
  const root = resolve(__dirname, '../..');
  const script = `
    import { parseConfig } from ${JSON.stringify(root + '/shared/config.ts')};
    import { localStores } from ${JSON.stringify(root + '/shared/adapters/stores.ts')};
    import { createWorker } from ${JSON.stringify(root + '/gpu-worker/worker/worker.ts')};
    const config = parseConfig({ CLIPAG_MODE: 'local', CLIPAG_DATA_DIR: ${JSON.stringify(env.dataDir)}, CLIPAG_VISIBILITY_TIMEOUT_SEC: '30', CLIPAG_RECEIVE_WAIT_SEC: '1', CLIPAG_DEFAULT_MODEL: 'tiny', LOG_LEVEL: 'error' });
    const a = await localStores(config);
    const nop = () => {};
    const w = createWorker({ queue: a.queue, jobs: a.jobs, blobs: a.blobs, log: { debug: nop, info: nop, warn: nop, error: nop },
      synthesizer: { run: () => new Promise(() => { process.stdout.write('running\\n'); }) },
      config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 } });
    w.start();
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'], cwd: root });
  await new Promise<void>((r, j) => { child.stdout.once('data', () => r()); child.once('exit', (c) => j(new Error('child exited ' + c))); });
  const running = await env.jobs.get(OWNER, job.id);
  expect(running?.status).toBe('running');
  // Most of a visibility timeout (30 s) is left on its lease: no time rule would let a new worker in yet.
  expect(Date.parse(running!.lease_expires_at!) - Date.now()).toBeGreaterThan(30_000 / 4);
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  const w = start(env, { run: async () => outcome(2, false, [standInImage(0)]) });
  await waitFor('a receipt', () => w.events.some((e) => e.type === 'received'), 20_000);
  await waitFor('the job to end', async () => isEnded((await env.jobs.get(OWNER, job.id))?.status), 20_000);
  const after = await env.jobs.get(OWNER, job.id);
  expect([after?.status, after?.attempts]).toEqual(['succeeded', 2]);
  expect(w.logs.filter((l) => /copy/.test(l.msg))).toEqual([]);
}, 60_000);
