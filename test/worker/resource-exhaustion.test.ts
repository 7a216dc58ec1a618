// Local mode's queue writes each delivery (and its lock) into the data folder, so a full or read-only
// disk, or a file table out of descriptors, fails the worker's receive. That is not the queue gone:
// in local mode (storageOnThisDisk) such failures never make the worker unhealthy (`queue_unreachable` stopped `clipag serve`, API and
// all, after about 4 minutes of a full disk, and nothing came back once space was freed). The worker
// backs off, says so once (and again every few minutes, not on every poll), and takes the job once the
// receive works again. The real local adapters; the receive fails as Node's fs fails it (a full disk
// cannot be made here on demand). Time is a test clock the test moves, never a sleep.
import { afterEach, describe, expect, it } from 'vitest';
import { RetryableError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue } from '../../shared/ports.ts';
import { createWorker, type Logger, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { type Env, OWNER, makeEnv, submit, waitFor } from './helpers.ts';
import { outcome, patched, standInImage } from './stand-ins.ts';

interface Logged { level: string; msg: string; fields: Record<string, unknown> }

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

/** An error as Node's fs raises it on the queue's data folder. */
const errnoError = (code: string) => Object.assign(new Error(`${code}: write '/srv/.data/queue/tmp/1.tmp'`), { code, syscall: 'write' });

/** The real local queue, whose receive throws `fail(n)` (n counts from 1) while that returns an error. */
function failingReceive(queue: JobQueue, fail: (n: number) => Error | undefined): JobQueue {
  let n = 0;
  return patched(queue, {
    receive: async (...args: Parameters<JobQueue['receive']>) => {
      const error = fail(++n);
      if (error) throw error;
      return queue.receive(...args);
    },
  });
}

const MAX_RECEIVE_FAILURES = 3;

function start(env: Env, queue: JobQueue, clock?: { now(): number }, more: { blobs?: BlobStore; storageOnThisDisk?: boolean } = { storageOnThisDisk: true }) {
  const events: WorkerEvent[] = [];
  const logs: Logged[] = [];
  const at = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => void logs.push({ level, msg, fields });
  const log: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  const synthesizer: Synthesizer = { run: async () => outcome(6, false, [standInImage(0)]) };
  const worker = createWorker({
    queue, jobs: env.jobs, blobs: more.blobs ?? env.blobs, synthesizer, log,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 0, progressIntervalMs: 0, pollErrorBackoffMs: 5, deadLetterSweepMs: 0, maxReceiveFailures: MAX_RECEIVE_FAILURES, ...(more.storageOnThisDisk ? { storageOnThisDisk: true } : {}), ...(more.blobs ? { resultWriteRetryMs: 0 } : {}) },
    ...(clock ? { clock } : {}),
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { events, logs };
}

/** The job's end or the worker's giving up, whichever comes first. */
async function outcomeOf(env: Env, jobId: string, events: WorkerEvent[]): Promise<string> {
  return waitFor('the job to end, or the worker to be unhealthy', async () => {
    const unhealthy = events.find((e) => e.type === 'unhealthy');
    if (unhealthy) return `unhealthy: ${unhealthy.reason}`;
    const job = await env.jobs.get(OWNER, jobId);
    return job && ['succeeded', 'failed', 'canceled'].includes(job.status) ? job.status : undefined;
  }, 30_000);
}

describe('receives that fail on the server\'s disk or file table', () => {
  const FAILURES = 8; // well past maxReceiveFailures

  it.each([
    ['ENOSPC', () => errnoError('ENOSPC')],
    ['EROFS', () => errnoError('EROFS')],
    ['EMFILE, wrapped', () => new RetryableError('the queue could not be read', { cause: errnoError('EMFILE') })],
    ['ENFILE', () => errnoError('ENFILE')],
  ])('%s: past maxReceiveFailures the worker stays healthy, says so once, and runs the job once receives work', async (_name, error) => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const w = start(env, failingReceive(env.queue, (n) => (n <= FAILURES ? error() : undefined)));
    expect(await outcomeOf(env, job.id, w.events)).toBe('succeeded');
    expect(w.events.filter((e) => e.type === 'poll_error')).toHaveLength(FAILURES);
    expect(w.logs.some((l) => l.msg === 'cannot receive from the queue; giving up')).toBe(false);
    // One error line for the whole outage, not one per poll; and one when it is over.
    const said = w.logs.filter((l) => l.level === 'error' || l.level === 'warn');
    expect(said.map((l) => l.msg)).toEqual([expect.stringMatching(/^cannot receive: the server.* \((ENOSPC|EROFS|EMFILE|ENFILE)\); no jobs are taken until it is usable again, and the worker keeps trying$/)]);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'info', msg: expect.stringMatching(/^receiving again/), fields: expect.objectContaining({ failures: FAILURES }) }));
  });

  it('while it lasts, the line is said again every few minutes of the worker\'s clock', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    let offset = 0;
    // Each failed receive takes two minutes of the worker's clock: said at the 1st, 4th and 7th.
    const queue = failingReceive(env.queue, (n) => {
      if (n > FAILURES) return undefined;
      offset = (n - 1) * 120_000;
      return errnoError('ENOSPC');
    });
    const w = start(env, queue, { now: () => Date.now() + offset });
    expect(await outcomeOf(env, job.id, w.events)).toBe('succeeded');
    const lines = w.logs.filter((l) => l.msg.startsWith('cannot receive:'));
    expect(lines.map((l) => l.fields.failures)).toEqual([1, 4, 7]);
  });

  it('in AWS (no storage on this disk) they count: an SQS error over EMFILE is this task leaking descriptors, for ECS to replace it', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const w = start(env, failingReceive(env.queue, () => new RetryableError('SQS request failed', { cause: errnoError('EMFILE') })), undefined, {});
    expect(await outcomeOf(env, job.id, w.events)).toBe('unhealthy: queue_unreachable');
    expect(w.events.filter((e) => e.type === 'poll_error')).toHaveLength(MAX_RECEIVE_FAILURES);
  });

  it('they do not hide a queue that is really gone: other failures after them still count toward queue_unreachable', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    const w = start(env, failingReceive(env.queue, (n) => (n <= 4 ? errnoError('ENOSPC') : new RetryableError('SQS is unavailable: socket hang up'))));
    expect(await outcomeOf(env, job.id, w.events)).toBe('unhealthy: queue_unreachable');
    expect(w.events.filter((e) => e.type === 'poll_error')).toHaveLength(4 + MAX_RECEIVE_FAILURES);
  });
});

describe("a job whose images cannot be stored on the server's full disk", () => {
  /** The real local store, whose first `failures` image writes fail as a full disk fails them. */
  function fullForImages(blobs: BlobStore, failures: number): BlobStore {
    let n = 0;
    return patched(blobs, {
      put: async (...args: Parameters<BlobStore['put']>) => {
        if (args[0].endsWith('.png') && ++n <= failures) throw errnoError('ENOSPC');
        return blobs.put(...args);
      },
    });
  }

  it('local mode (storage on this disk): not a machine failure; both jobs are retried and succeed once space is free', async () => {
    const env = await makeEnv();
    const jobs = [await submit(env, { steps: 6 }), await submit(env, { steps: 6 })];
    const w = start(env, env.queue, undefined, { blobs: fullForImages(env.blobs, 2), storageOnThisDisk: true });
    for (const job of jobs) expect(await outcomeOf(env, job.id, w.events)).toBe('succeeded');
    expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([]);
    expect(w.logs.filter((l) => l.msg.startsWith("job attempt failed: the server's disk is full (ENOSPC)"))).toHaveLength(2);
  });

  it('in AWS (the task\'s own disk) the same failures are the machine\'s: the worker is unhealthy, for ECS to replace it', async () => {
    const env = await makeEnv();
    const jobs = [await submit(env, { steps: 6 }), await submit(env, { steps: 6 })];
    const w = start(env, env.queue, undefined, { blobs: fullForImages(env.blobs, 2) });
    expect(await outcomeOf(env, jobs[1]!.id, w.events)).toBe('unhealthy: machine_failures');
  });
});
