// Worker policies that need no engine: the job time limit (abort, `timeout`, ack, the heartbeat
// stopping), the steps cap, permanent numerical errors, path redaction, and corrupt job documents.
// A scripted Synthesizer stands in for the engine; the queue, job store and blob store are the real
// local adapters. Time is a test clock (real time + an offset the test moves), never a sleep.
import { afterEach, describe, expect, it } from 'vitest';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { NonRetryableError, RetryableError } from '../../shared/errors.ts';
import type { JobQueue } from '../../shared/ports.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { createWorker, type Logger, type QueueWorker, type WorkerConfig, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { SynthesisJob, SynthesisOutcome, SynthesisRunOptions, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { classifyError, isMachineFailure, isUnexplainedRunFailure, jobErrorOf, redactPaths } from '../../gpu-worker/worker/errors.ts';
import { runError } from '../../gpu-worker/engine/runtime/session.ts';
import { stepsFor, toSynthRequests } from '../../gpu-worker/worker/synthesizer.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { OWNER, type Env, makeEnv, submit, waitFor, waitForStatus } from './helpers.ts';

const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

const outcome = (stepsDone: number, aborted: boolean, totalSteps = stepsDone): SynthesisOutcome => ({
  images: [], aborted, stepsDone, totalSteps, encoderPasses: 0, timingsMs: { total: 0, sessionRun: 0, optimize: 0 },
});

interface Logged { level: string; msg: string; fields?: Record<string, unknown> }

function start(env: Env, synthesizer: Synthesizer, config: Partial<WorkerConfig> = {}, clock?: { now(): number; monotonic?(): number }) {
  const events: WorkerEvent[] = [];
  const logs: Logged[] = [];
  const log: Logger = {
    debug: (msg, fields) => logs.push({ level: 'debug', msg, fields }),
    info: (msg, fields) => logs.push({ level: 'info', msg, fields }),
    warn: (msg, fields) => logs.push({ level: 'warn', msg, fields }),
    error: (msg, fields) => logs.push({ level: 'error', msg, fields }),
  };
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, ...config },
    ...(clock ? { clock } : {}),
    log,
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { worker, events, logs };
}

async function untilAborted(signal: AbortSignal | undefined): Promise<void> {
  await waitFor('the abort signal', () => signal?.aborted === true);
}

describe('job time limit', () => {
  it('at the deadline the run is aborted; the job fails with `timeout` (not retried) and the message is acked', async () => {
    const env = await makeEnv();
    let offset = 0;
    const clock = { now: () => Date.now() + offset };
    const seen: SynthesisJob[] = [];
    const synthesizer: Synthesizer = {
      async run(job, { signal, onProgress }: SynthesisRunOptions = {}) {
        seen.push(job);
        onProgress?.({ step: 1, total: 10, image: 0 });
        offset += 61_000; // a minute passes on the worker's clock
        onProgress?.({ step: 2, total: 10, image: 0 });
        await untilAborted(signal);
        return outcome(2, true, 10);
      },
    };
    const job = await submit(env, { steps: 10 });
    const w = start(env, synthesizer, { jobTimeoutSec: 60 }, clock);
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded', 'canceled']);
    expect(done.status).toBe('failed');
    expect(done.error?.code).toBe('timeout');
    expect(done.error?.message).toMatch(/60 s time limit.*after 2 of 10 steps.*not retried/);
    expect(done.attempts).toBe(1);
    expect(w.events).toContainEqual(expect.objectContaining({ type: 'abort', reason: 'timeout' }));
    await waitFor('the ack', () => w.events.some((e) => e.type === 'acked' && e.reason === 'timeout'));
    expect(w.events.some((e) => e.type === 'released')).toBe(false);
    expect(await env.queue.depth()).toBe(0);
    expect(seen).toHaveLength(1);
  });

  it('a run that throws after the timeout abort (engine `aborted`, retryable) still ends `timeout`, not a retry', async () => {
    const env = await makeEnv();
    let offset = 0;
    const synthesizer: Synthesizer = {
      async run(_job, { signal, onProgress } = {}) {
        offset += 10_000;
        onProgress?.({ step: 1, total: 6, image: 0 });
        await untilAborted(signal);
        throw new EngineError('aborted', 'the run was aborted');
      },
    };
    const job = await submit(env, { steps: 6 });
    const w = start(env, synthesizer, { jobTimeoutSec: 5 }, { now: () => Date.now() + offset });
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded', 'canceled']);
    expect(done.error?.code).toBe('timeout');
    await waitFor('the ack', () => w.events.some((e) => e.type === 'acked'));
    expect(w.events.some((e) => e.type === 'released')).toBe(false);
  });

  it('the heartbeat stops extending the lease after the deadline, even if the engine ignores the abort', async () => {
    const env = await makeEnv();
    let offset = 0;
    let w!: ReturnType<typeof start>;
    const synthesizer: Synthesizer = {
      async run(_job, { onProgress } = {}) {
        // Past the deadline and the grace (one visibility timeout) on the worker's clock; the abort is ignored.
        offset += 3_600_000;
        onProgress?.({ step: 1, total: 6, image: 0 });
        await waitFor('the lease to stop', () => w.events.some((e) => e.type === 'lease_stopped'));
        return outcome(1, true, 6);
      },
    };
    const job = await submit(env, { steps: 6 });
    w = start(env, synthesizer, { jobTimeoutSec: 60, visibilityTimeoutSec: 1 }, { now: () => Date.now() + offset });
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded', 'canceled']);
    expect(done.error?.code).toBe('timeout');
    const stoppedAt = w.events.findIndex((e) => e.type === 'lease_stopped');
    expect(w.events.slice(stoppedAt).some((e) => e.type === 'heartbeat')).toBe(false);
    expect(w.logs).toContainEqual(expect.objectContaining({ msg: 'job past its deadline; no longer extending the lease' }));
  });

  it('config: CLIPAG_JOB_TIMEOUT_SEC defaults to 3600 and is bounded', async () => {
    const { parseConfig } = await import('../../shared/config.ts');
    expect(parseConfig({}).jobTimeoutSec).toBe(3600);
    expect(parseConfig({ CLIPAG_JOB_TIMEOUT_SEC: '90' }).jobTimeoutSec).toBe(90);
    expect(() => parseConfig({ CLIPAG_JOB_TIMEOUT_SEC: '0' })).toThrow(/CLIPAG_JOB_TIMEOUT_SEC/);
    expect(() => parseConfig({ CLIPAG_JOB_TIMEOUT_SEC: String(8 * 24 * 3600) })).toThrow(/CLIPAG_JOB_TIMEOUT_SEC/);
  });
});

describe('drain and lease', () => {
  /** Reports a step, then runs until aborted (a drain). */
  const hanging: Synthesizer = {
    async run(_job, { signal, onProgress } = {}) {
      onProgress?.({ step: 1, total: 6, image: 0 });
      await untilAborted(signal);
      return outcome(1, true, 6);
    },
  };

  it('drains do not spend the retry budget: after three clean stops the job still runs and succeeds', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    for (let i = 0; i < 3; i++) {
      const w = start(env, hanging);
      await waitForStatus(env, job.id, ['running']);
      await w.worker.stop();
      expect(w.events).toContainEqual(expect.objectContaining({ type: 'requeued', reason: 'drain' }));
      expect(w.events.some((e) => e.type === 'released')).toBe(false);
      expect((await env.jobs.get(OWNER, job.id))!.status).toBe('queued');
    }
    const w = start(env, { run: async () => outcome(6, false) });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts, done.error]).toEqual(['succeeded', 4, null]);
    // The fourth worker got a fresh copy, first delivery: nothing counted the drains.
    expect(w.events.find((e) => e.type === 'received')).toMatchObject({ receiveCount: 1 });
  });

  it('a duplicate message for a job another worker holds is dropped, not run a second time', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: OWNER })); // e.g. a requeue whose ack failed
    let finishA!: () => void;
    const gate = new Promise<void>((r) => (finishA = r));
    const a = start(env, { run: async () => (await gate, outcome(6, false)) });
    const running = await waitForStatus(env, job.id, ['running']);
    const b = start(env, { run: async () => { throw new Error('the duplicate must not run'); } });
    await waitFor('the duplicate dropped', () => b.events.some((e) => e.type === 'acked' && e.reason === 'duplicate_of_running'));
    finishA();
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts]).toEqual(['succeeded', 1]);
    // A's lease from its claim (the visibility timeout, 30 s, from when it took the message) is still the
    // record's: the dropped duplicate neither cleared it nor moved it back.
    const claimedLease = Date.parse(running.lease_expires_at!);
    expect(claimedLease - Date.parse(running.started_at!)).toBeGreaterThan(25_000);
    expect(claimedLease - Date.parse(running.started_at!)).toBeLessThanOrEqual(30_000);
    expect(new Date(Date.parse(done.lease_expires_at!)).toISOString()).toBe(done.lease_expires_at);
    expect(Date.parse(done.lease_expires_at!)).toBeGreaterThanOrEqual(claimedLease);
    expect(a.events.some((e) => e.type === 'abort')).toBe(false); // never lease_lost
  });

  it('the held message itself coming back is never taken for a duplicate (a failure that could not be recorded)', async () => {
    const env = await makeEnv();
    // The run fails retryably, then the write that would put the job back to queued fails once: the
    // worker cannot put the job back, and its record stays `running` under a fresh lease.
    let failQueuedWrites = 1;
    const jobs = new Proxy(env.jobs, {
      get(target, prop, receiver) {
        if (prop === 'update') {
          return (owner: string, id: string, mutate: Parameters<typeof target.update>[2], options?: Parameters<typeof target.update>[3]) =>
            target.update(owner, id, (cur) => {
              const next = mutate(cur);
              if (next && next.status === 'queued' && cur.status === 'running' && failQueuedWrites-- > 0) throw new RetryableError('injected: S3 503');
              return next;
            }, options);
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    let runs = 0;
    const job = await submit(env, { steps: 6 });
    const w = start({ ...env, jobs }, {
      async run() {
        runs++;
        if (runs === 1) throw new RetryableError('injected: GPU hiccup');
        return outcome(6, false);
      },
    }, { visibilityTimeoutSec: 2 });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, runs]).toEqual(['succeeded', 2]);
    expect(w.events.some((e) => e.type === 'acked' && e.reason === 'duplicate_of_running')).toBe(false);
    // Left to come back when its lease ran out: taken over at once, no delivery spent on a deferral.
    expect(w.events.filter((e) => e.type === 'released')).toEqual([]);
    expect(w.events.filter((e) => e.type === 'received').map((e) => (e as { receiveCount: number }).receiveCount)).toEqual([1, 2]);
  });

  it('the record lease is renewed with the heartbeat; after a crash it runs out with the message, and the redelivery takes over', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    // A worker that claimed the job by another message and died: running, its lease lapsed a moment ago.
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: new Date().toISOString(), lease_message_id: 'another-message', lease_expires_at: new Date(Date.now() - 1000).toISOString() }));
    // The new run lasts 2.5 visibility timeouts: its heartbeat must renew the record's lease.
    const leases: string[] = [];
    start(env, {
      async run() {
        for (let i = 0; i < 10; i++) {
          leases.push((await env.jobs.get(OWNER, job.id))!.lease_expires_at!);
          await new Promise((r) => setTimeout(r, 250));
        }
        return outcome(6, false);
      },
    }, { visibilityTimeoutSec: 1 });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts]).toEqual(['succeeded', 2]);
    expect(new Set(leases).size).toBeGreaterThanOrEqual(3); // set at the claim, then renewed every 0.5 s
    expect(Date.parse(leases.at(-1)!)).toBeGreaterThan(Date.parse(leases[0]) + 1000);
  });

  it('a failed heartbeat is retried well inside the visibility timeout: no redelivery, the run goes on', async () => {
    const env = await makeEnv();
    let failures = 1;
    const queue = new Proxy(env.queue, {
      get(target, prop, receiver) {
        if (prop === 'extendVisibility') {
          return async (receipt: string, sec: number) => {
            if (failures > 0) {
              failures--;
              await new Promise((r) => setTimeout(r, 300)); // a timed-out SQS call (the adapter gives up at a quarter of the visibility)
              throw new RetryableError('injected: ChangeMessageVisibility timed out');
            }
            return target.extendVisibility(receipt, sec);
          };
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    const synthesizer: Synthesizer = {
      async run(_job, { signal, onProgress } = {}) {
        for (let s = 1; s <= 25; s++) {
          if (signal?.aborted) return outcome(s - 1, true, 25);
          onProgress?.({ step: s, total: 25, image: 0 });
          await new Promise((r) => setTimeout(r, 200));
        }
        return outcome(25, false);
      },
    };
    const job = await submit(env, { steps: 6 });
    const w = start({ ...env, queue }, synthesizer, { visibilityTimeoutSec: 2 });
    await waitForStatus(env, job.id, ['running']);
    // A second consumer polls the same queue for the whole 5 s run (2.5 × the timeout).
    let stolen = 0;
    const t0 = Date.now();
    while ((await env.jobs.get(OWNER, job.id))!.status === 'running' && Date.now() - t0 < 20_000) {
      stolen += (await env.queue.receive({ waitSec: 0 })).length;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(stolen).toBe(0);
    expect(w.logs).toContainEqual(expect.objectContaining({ msg: 'heartbeat failed; retrying soon' }));
    const done = (await env.jobs.get(OWNER, job.id))!;
    expect([done.status, done.attempts]).toEqual(['succeeded', 1]);
  });
});

describe('steps cap', () => {
  it('maxSteps runs min(spec.steps, cap) steps and the progress total counts those', async () => {
    const env = await makeEnv();
    const seen: SynthesisJob[] = [];
    const synthesizer: Synthesizer = {
      async run(job, { onProgress } = {}) {
        seen.push(job);
        const total = job.spec.steps * job.spec.n;
        for (let s = 1; s <= total; s++) onProgress?.({ step: s, total, image: 0 });
        return outcome(total, false);
      },
    };
    const capped = await submit(env, { steps: 50, n: 2 });
    const under = await submit(env, { steps: 2, n: 1 });
    start(env, synthesizer, { maxSteps: 4 });
    const a = await waitForStatus(env, capped.id, ['succeeded', 'failed']);
    const b = await waitForStatus(env, under.id, ['succeeded', 'failed']);
    expect(a.status).toBe('succeeded');
    expect(a.progress).toEqual({ step: 8, total: 8 });
    expect(b.progress).toEqual({ step: 2, total: 2 });
    expect(seen.map((j) => j.spec.steps)).toEqual([4, 2]);
    // Said in the record of the job it cut short (its request still shows the steps asked for), not of the other.
    expect(a.warnings).toEqual(['steps capped at 4 by this server (asked 50)']);
    expect(a.spec.steps).toBe(50);
    expect(b.warnings ?? []).toEqual([]);
  });

  it('the engine synthesizer treats recipeOverrides.steps / maxSteps as a cap, not a replacement', () => {
    const job = (steps: number): SynthesisJob => ({ id: 'j', owner: OWNER, spec: { prompt: 'x', steps, n: 1, width: 64, height: 64, init: 'noise', model: 'tiny' } as SynthesisJob['spec'] });
    expect(toSynthRequests(job(50), { kind: 'noise' }, { steps: 6 })[0].recipe?.steps).toBe(6);
    expect(toSynthRequests(job(3), { kind: 'noise' }, { steps: 6 })[0].recipe?.steps).toBe(3);
    expect(toSynthRequests(job(50), { kind: 'noise' }, {}, 5)[0].recipe?.steps).toBe(5);
    expect(stepsFor({ steps: 9 })).toBe(9);
  });
});

describe('error classes and messages', () => {
  it('numerical_error is permanent: the job fails at once, the message is acked, no retry', async () => {
    const env = await makeEnv();
    let runs = 0;
    const synthesizer: Synthesizer = {
      async run() {
        runs++;
        throw new EngineError('numerical_error', 'loss became NaN at step 3; check /srv/clipag/models/tiny/visual.onnx');
      },
    };
    const job = await submit(env, { steps: 6 });
    const w = start(env, synthesizer);
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded']);
    expect(done.error).toEqual({ code: 'numerical_error', message: 'loss became NaN at step 3; check <path>/visual.onnx' });
    await waitFor('the ack', () => w.events.some((e) => e.type === 'acked'));
    expect(runs).toBe(1);
    expect(w.events.some((e) => e.type === 'released')).toBe(false);
    // The worker's log keeps the full path for the operator.
    expect(JSON.stringify(w.logs)).toContain('/srv/clipag/models/tiny/visual.onnx');
    expect(classifyError({ name: 'EngineError', code: 'numerical_error' })).toBe('permanent');
  });

  it('jobErrorOf redacts absolute paths (POSIX, Windows, file://) but keeps API paths and URLs', () => {
    const e = new EngineError('invalid_model', "cannot read '/home/app/.data/model-cache/ab12/visual.onnx': truncated; also C:\\models\\x\\w.bin");
    expect(jobErrorOf(e).message).toBe("cannot read '<path>/visual.onnx': truncated; also <path>/w.bin");
    expect(redactPaths('upload it with POST /v1/uploads first; see https://example.com/a/b')).toBe('upload it with POST /v1/uploads first; see https://example.com/a/b');
    expect(redactPaths('file:///etc/clipag/secret.json and 3/4 of w/h')).toBe('<path>/secret.json and 3/4 of w/h');
  });
});

describe('corrupt job documents', () => {
  it('the message is dead-lettered once (no redelivery loop) and the DLQ sweep stays quiet about it', async () => {
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    await env.blobs.put(BlobJobStore.keyFor(OWNER, job.id), Buffer.from('{"id":'));
    let runs = 0;
    const w = start(env, { run: async () => (runs++, outcome(0, false)) }, { deadLetterSweepMs: 1 });
    await waitFor('the dead letter', () => w.events.some((e) => e.type === 'dead_lettered' && e.reason === 'corrupt_record'));
    await waitFor('the main queue to drain', async () => (await env.queue.depth()) === 0);
    // Let the sweep (every loop iteration here) see the dead letter a few times.
    await waitFor('three sweeps over it', () => w.logs.filter((l) => l.msg === 'dead-letter sweep: message left as is').length >= 3);
    expect(await env.queue.deadLetter!.depth()).toBe(1);
    expect(w.events.filter((e) => e.type === 'received')).toHaveLength(1);
    expect(runs).toBe(0);
    expect(w.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('dead-letter sweep'))).toEqual([]);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'job document is corrupt; dead-lettering its message' }));
    // Each dead letter is an error line of its own: it pages even while the DLQ depth alarm is already on.
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'message dead-lettered', fields: expect.objectContaining({ reason: 'corrupt_record' }) }));
  });
});

describe('an unhealthy machine', () => {
  const noDevice = () => new EngineError('runtime_unavailable', 'onnxruntime could not start the cuda execution provider: libcudnn.so.9: cannot open shared object file');

  it('after jobs in a row fail on the machine (its device does not load), it takes no more jobs and says so; a retry comes back after a delay', async () => {
    const env = await makeEnv();
    let runs = 0;
    const broken: Synthesizer = {
      async run() {
        runs++;
        throw noDevice();
      },
    };
    const jobs = [await submit(env, { steps: 6 }), await submit(env, { steps: 6 }), await submit(env, { steps: 6 })];
    const w = start(env, broken, { maxMachineFailures: 2, retryDelaySec: 30 });
    await waitFor('unhealthy', () => w.events.some((e) => e.type === 'unhealthy'));
    await w.worker.stop();
    expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'machine_failures' }]);
    // Two deliveries spent, not the whole queue's: the third job was never taken.
    expect(runs).toBe(2);
    expect(w.events.filter((e) => e.type === 'job_started')).toHaveLength(2);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'worker unhealthy; taking no more jobs' }));
    // The failed jobs went back to the queue (retryable), hidden for 30 s × their receive count: not
    // straight back to the same worker. Nothing is visible now but the job never taken.
    for (const job of jobs.slice(0, 2)) expect((await env.jobs.get(OWNER, job.id))!.status).toBe('queued');
    const visible = await env.queue.receive({ max: 10, waitSec: 0, visibilitySec: 30 });
    expect(visible.map((m) => JSON.parse(m.body).job_id)).toEqual([jobs[2]!.id]);
  });

  it('a job that succeeds in between resets the count: one passing device error does not make it unhealthy', async () => {
    const env = await makeEnv();
    let runs = 0;
    const flaky: Synthesizer = {
      async run() {
        runs++;
        if (runs % 2 === 1) throw noDevice();
        return outcome(6, false);
      },
    };
    for (let i = 0; i < 4; i++) await submit(env, { steps: 6 });
    const w = start(env, flaky, { maxMachineFailures: 2 });
    await waitFor('four runs', () => runs >= 4);
    await waitFor('the fourth job settled', () => w.events.filter((e) => e.type === 'job_finished').length >= 4);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('"in a row": a job that fails for its own reasons between two machine failures resets the count', async () => {
    const env = await makeEnv();
    let runs = 0;
    const mixed: Synthesizer = {
      async run() {
        runs++;
        if (runs === 2) throw new EngineError('invalid_input', 'the prompt has no token the model reads');
        throw noDevice();
      },
    };
    for (let i = 0; i < 3; i++) await submit(env, { steps: 6 });
    const w = start(env, mixed, { maxMachineFailures: 2, retryDelaySec: 30 });
    await waitFor('three jobs settled', () => w.events.filter((e) => e.type === 'job_finished').length >= 3);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('a job that fails for its own reasons (a permanent engine error) does not count against the machine', async () => {
    const env = await makeEnv();
    let runs = 0;
    const badInput: Synthesizer = {
      async run() {
        runs++;
        throw new EngineError('invalid_input', 'the prompt has no token the model reads');
      },
    };
    for (let i = 0; i < 3; i++) await submit(env, { steps: 6 });
    const w = start(env, badInput, { maxMachineFailures: 2 });
    await waitFor('three runs', () => w.events.filter((e) => e.type === 'job_finished').length >= 3);
    expect(runs).toBe(3);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('a warm-up that fails on the machine makes it unhealthy before it polls; any other warm-up failure does not', async () => {
    const env = await makeEnv();
    const events: WorkerEvent[] = [];
    const worker = createWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: { run: async () => outcome(1, false) },
      config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1 },
      warmUp: async () => {
        throw noDevice();
      },
      onEvent: (e) => events.push(e),
    });
    workers.push(worker);
    worker.start();
    await waitFor('unhealthy', () => events.some((e) => e.type === 'unhealthy'));
    await worker.stop();
    expect(events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'warm_up' }]);
    expect(events).not.toContainEqual({ type: 'state', state: 'polling' });

    const other: WorkerEvent[] = [];
    const w2 = createWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: { run: async () => outcome(1, false) },
      config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1 },
      warmUp: async () => {
        throw new Error('model store unreachable');
      },
      onEvent: (e) => other.push(e),
    });
    workers.push(w2);
    w2.start();
    await waitFor('polling', () => other.some((e) => e.type === 'state' && e.state === 'polling'));
    expect(other.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('time past the deadline spent after the engine returned (uploads, record writes) is no stuck run', async () => {
    const env = await makeEnv();
    let offset = 0;
    let ended = false;
    let w!: ReturnType<typeof start>;
    const done: Synthesizer = {
      async run() {
        offset += 3_600_000; // the run ends just at its deadline...
        ended = true;
        return outcome(6, false);
      },
    };
    // ...and its writes afterwards are slow: they wait until the heartbeat has stopped extending.
    const slowJobs = new Proxy(env.jobs, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown;
        if (prop !== 'update' || typeof value !== 'function') return typeof value === 'function' ? value.bind(target) : value;
        return async (...args: unknown[]) => {
          if (ended) await waitFor('the lease to stop', () => w.events.some((e) => e.type === 'lease_stopped'));
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    const job = await submit(env, { steps: 6 });
    w = start({ ...env, jobs: slowJobs }, done, { jobTimeoutSec: 60, visibilityTimeoutSec: 1 }, { now: () => Date.now() + offset });
    await waitFor('the job to end', () => w.events.some((e) => e.type === 'job_finished'));
    expect(w.events.some((e) => e.type === 'lease_stopped')).toBe(true);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
    expect((await env.jobs.get(OWNER, job.id))!.status).toBe('succeeded');
  });

  it('a run that ignores its abort past the deadline makes it unhealthy (its process must go)', async () => {
    const env = await makeEnv();
    let offset = 0;
    let w!: ReturnType<typeof start>;
    const stuck: Synthesizer = {
      async run(_job, { onProgress } = {}) {
        offset += 3_600_000;
        onProgress?.({ step: 1, total: 6, image: 0 });
        await waitFor('unhealthy', () => w.events.some((e) => e.type === 'unhealthy'));
        return outcome(1, true, 6);
      },
    };
    await submit(env, { steps: 6 });
    w = start(env, stuck, { jobTimeoutSec: 60, visibilityTimeoutSec: 1 }, { now: () => Date.now() + offset });
    await waitFor('unhealthy', () => w.events.some((e) => e.type === 'unhealthy'));
    expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'stuck_run' }]);
  });
});

// What onnxruntime says when a run fails on a GPU (CudaCall's format, cuda_call.cc; the arena's OOM).
const ORT_RUN = "Non-zero status code returned while running Conv node. Name:'/visual/conv1/Conv' Status Message: ";
const CUDA_FILE = (file: string, expr: string) => ` ; GPU=0 ; hostname=ip-10-0-1-23 ; file=/onnxruntime_src/onnxruntime/core/providers/cuda/${file} ; line=129 ; expr=${expr}; `;
const STICKY_CUDA = `${ORT_RUN}CUDA failure 700: an illegal memory access was encountered${CUDA_FILE('cuda_call.cc', 'cudaStreamSynchronize(stream)')}`;
const CUDNN_INTERNAL = `${ORT_RUN}CUDNN failure 4000: CUDNN_STATUS_INTERNAL_ERROR${CUDA_FILE('nn/conv.cc', 'cudnnConvolutionForward(...)')}`;
const ARENA_OOM = `${ORT_RUN}/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested buffer of size 8589934592`;
const CUDA_OOM = `${ORT_RUN}CUDA failure 2: out of memory${CUDA_FILE('cuda_allocator.cc', 'cudaMalloc((void**)&p, size)')}`;
/** A run error in no form the classifier knows (a kernel's own message, under a CUDA source path). */
const UNEXPLAINED = `${ORT_RUN}/onnxruntime_src/onnxruntime/core/providers/cuda/nn/conv.cc:262 Status onnxruntime::cuda::Conv<T, NHWC>::UpdateState(...) const [with T = float; bool NHWC = false] conv kernel reported a failure`;

describe('a GPU that breaks after startup', () => {
  const ended = (w: { events: WorkerEvent[] }) => w.events.some((e) => e.type === 'unhealthy' || e.type === 'dead_lettered');

  it('a sticky CUDA error in every run: the worker goes unhealthy after two jobs, and no queued job is dead-lettered', async () => {
    const env = await makeEnv();
    let runs = 0;
    // What session.ts makes of onnxruntime's error; and the same message as a plain runtime_failed,
    // as an engine thread's wrapped error (or the review's repro) carries it.
    for (const thrown of [() => runError(new Error(STICKY_CUDA), 'cuda'), () => new EngineError('runtime_failed', `onnxruntime run failed: ${CUDNN_INTERNAL}`)]) {
      runs = 0;
      const broken: Synthesizer = {
        async run() {
          runs++;
          throw thrown();
        },
      };
      const queued = [];
      for (let i = 0; i < 4; i++) queued.push(await submit(env, { steps: 6 }));
      const w = start(env, broken, { maxMachineFailures: 2, retryDelaySec: 0 });
      await waitFor('unhealthy (or a dead letter)', () => ended(w), 20_000);
      await w.worker.stop();
      expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'machine_failures' }]);
      expect(runs).toBe(2);
      expect(w.events.some((e) => e.type === 'dead_lettered')).toBe(false);
      // Every job is still queued, with its deliveries left for a working GPU.
      for (const job of queued) expect((await env.jobs.get(OWNER, job.id))!.status).toBe('queued');
      expect(await env.queue.deadLetter!.receive({ max: 10, waitSec: 0, visibilitySec: 1 })).toEqual([]);
      // Drain the queue for the next round.
      await waitFor('the queue drained', async () => {
        const ms = await env.queue.receive({ max: 10, waitSec: 0, visibilitySec: 30 });
        await Promise.all(ms.map((m) => env.queue.ack(m.receipt)));
        return ms.length === 0;
      });
    }
  });

  it('unexplained run failures on two different jobs in a row make it unhealthy too (a device fault in an unknown form)', async () => {
    const env = await makeEnv();
    const broken: Synthesizer = {
      async run() {
        throw new EngineError('runtime_failed', `onnxruntime run failed: ${UNEXPLAINED}`);
      },
    };
    const queued = [];
    for (let i = 0; i < 4; i++) queued.push(await submit(env, { steps: 6 }));
    // A retry comes back later (AWS's default is 30 s): the next run is another job's. (With no delay
    // the same job may come straight back and spend its deliveries first: one job, not the machine.)
    const w = start(env, broken, { maxMachineFailures: 2, retryDelaySec: 30, device: 'cuda' });
    await waitFor('unhealthy (or a dead letter)', () => ended(w), 20_000);
    await w.worker.stop();
    expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'run_failures' }]);
    expect(w.events.filter((e) => e.type === 'job_started')).toHaveLength(2);
    for (const job of queued) expect((await env.jobs.get(OWNER, job.id))!.status).toBe('queued');

    // On the CPU the same failures are the jobs' (or the model's): no sticky device state to blame.
    const cpu = await makeEnv();
    for (let i = 0; i < 2; i++) await submit(cpu, { steps: 6 });
    const w2 = start(cpu, broken, { maxMachineFailures: 2, retryDelaySec: 0 });
    await waitFor('two dead letters', () => w2.events.filter((e) => e.type === 'dead_lettered').length >= 2, 20_000);
    expect(w2.events.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('out of memory in every run is the jobs\' own: retried to their limit, then failed out_of_memory (not dead-lettered), the machine stays healthy', async () => {
    const env = await makeEnv();
    let runs = 0;
    const tooBig: Synthesizer = {
      async run() {
        runs++;
        throw runError(new Error(runs % 2 ? ARENA_OOM : CUDA_OOM), 'cuda');
      },
    };
    const queued = [await submit(env, { steps: 6 }), await submit(env, { steps: 6 }), await submit(env, { steps: 6 })];
    const w = start(env, tooBig, { maxMachineFailures: 2, retryDelaySec: 0, device: 'cuda' });
    for (const job of queued) {
      // The same request would not fit again: the caller is told to make it smaller, not to submit it again.
      const failed = await waitForStatus(env, job.id, ['failed'], 20_000);
      expect(failed.error).toMatchObject({ code: 'out_of_memory', message: expect.stringMatching(/^the run did not fit in the worker's memory on its last of 3 attempts \(onnxruntime run failed: .*(out of memory|Failed to allocate memory)/) });
      expect(failed.error!.message).toMatch(/ask for a smaller size$/);
      // Paths in onnxruntime's text are redacted, as in any engine message a job shows.
      expect(failed.error!.message).not.toMatch(/\/onnxruntime_src\//);
    }
    expect(runs).toBe(9);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
    // Failed as a timeout is, for its size: acked, not parked in the DLQ (each dead letter pages).
    expect(w.events.some((e) => e.type === 'dead_lettered')).toBe(false);
    await waitFor('the messages acked', async () => (await env.queue.depth()) === 0);
    expect(await env.queue.deadLetter!.depth()).toBe(0);
  });

  it('one job that always fails with a generic runtime_failed does not make a healthy machine unhealthy, redelivered or among successes', async () => {
    const env = await makeEnv();
    const bad = new Set<string>();
    const someBad: Synthesizer = {
      async run(job) {
        if (bad.has(job.id)) throw new EngineError('runtime_failed', `onnxruntime run failed: ${UNEXPLAINED}`);
        return outcome(6, false);
      },
    };
    // Alone in the queue: its three deliveries come to this worker back to back.
    const first = await submit(env, { steps: 6 });
    bad.add(first.id);
    const w = start(env, someBad, { maxMachineFailures: 2, retryDelaySec: 0, device: 'cuda' });
    expect((await waitForStatus(env, first.id, ['failed'], 20_000)).error?.code).toBe('retries_exhausted');
    // Then among jobs that succeed.
    const ok1 = await submit(env, { steps: 6 });
    await waitForStatus(env, ok1.id, ['succeeded'], 20_000);
    const second = await submit(env, { steps: 6 });
    bad.add(second.id);
    const ok2 = await submit(env, { steps: 6 });
    await waitForStatus(env, ok2.id, ['succeeded'], 20_000);
    expect((await waitForStatus(env, second.id, ['failed'], 20_000)).error?.code).toBe('retries_exhausted');
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
  });

  it('on a GPU, a warm-up whose run fails makes it unhealthy; on the CPU, or out of memory, it is only logged', async () => {
    const env = await makeEnv();
    const cases = [
      { device: 'cuda' as const, error: new EngineError('runtime_failed', `onnxruntime run failed: ${UNEXPLAINED}`), unhealthy: true },
      { device: 'cpu' as const, error: new EngineError('runtime_failed', `onnxruntime run failed: ${UNEXPLAINED}`), unhealthy: false },
      { device: 'cuda' as const, error: runError(new Error(ARENA_OOM), 'cuda'), unhealthy: false },
      // A device fault is the machine's whatever the device setting says.
      { device: 'cpu' as const, error: new EngineError('runtime_failed', `engine worker failed: ${STICKY_CUDA}`), unhealthy: true },
    ];
    for (const c of cases) {
      const events: WorkerEvent[] = [];
      const worker = createWorker({
        queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: { run: async () => outcome(1, false) },
        config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 0, device: c.device },
        warmUp: async () => {
          throw c.error;
        },
        onEvent: (e) => events.push(e),
      });
      workers.push(worker);
      worker.start();
      await waitFor('unhealthy or polling', () => events.some((e) => e.type === 'unhealthy' || (e.type === 'state' && e.state === 'polling')));
      await worker.stop();
      expect([c.device, c.error.message, events.filter((e) => e.type === 'unhealthy')]).toEqual([c.device, c.error.message, c.unhealthy ? [{ type: 'unhealthy', reason: 'warm_up' }] : []]);
    }
  });

  it('classifies: device faults are machine failures; out of memory and unexplained run errors are not', () => {
    expect(isMachineFailure(runError(new Error(STICKY_CUDA), 'cuda'))).toBe(true);
    expect(isMachineFailure(new EngineError('runtime_failed', `engine worker failed: ${CUDNN_INTERNAL}`))).toBe(true);
    for (const oom of [ARENA_OOM, CUDA_OOM]) {
      const e = runError(new Error(oom), 'cuda');
      expect([e.code, isMachineFailure(e), isUnexplainedRunFailure(e), classifyError(e)]).toEqual(['runtime_failed', false, false, 'retryable']);
    }
    const unexplained = runError(new Error(UNEXPLAINED), 'cuda');
    expect([unexplained.code, isMachineFailure(unexplained), isUnexplainedRunFailure(unexplained)]).toEqual(['runtime_failed', false, true]);
    expect(classifyError(runError(new Error(STICKY_CUDA), 'cuda'))).toBe('retryable');
  });
});

describe('a queue the worker cannot read', () => {
  /** The local queue, but `receive` runs `fail` first (it throws, or returns to receive for real). */
  const failingReceive = <Q extends JobQueue>(queue: Q, fail: () => void): Q =>
    new Proxy(queue, {
      get(target, prop) {
        const value = Reflect.get(target, prop) as unknown;
        if (prop === 'receive') {
          return async (...args: Parameters<JobQueue['receive']>) => {
            fail();
            return target.receive(...args);
          };
        }
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });

  it('a receive the queue refuses for good (AccessDenied) is an error line and makes it unhealthy at once', async () => {
    const env = await makeEnv();
    const denied = failingReceive(env.queue, () => {
      throw new NonRetryableError('SQS request failed (AccessDenied): User is not authorized to perform: sqs:receivemessage');
    });
    const w = start({ ...env, queue: denied }, { run: async () => outcome(6, false) });
    await waitFor('unhealthy (or a third receive)', () => w.events.some((e) => e.type === 'unhealthy') || w.events.filter((e) => e.type === 'poll_error').length >= 3, 20_000);
    expect(w.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'queue_unreachable' }]);
    expect(w.events.filter((e) => e.type === 'poll_error')).toHaveLength(1);
    expect(w.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'cannot receive from the queue; giving up' }));
    await w.worker.stop();
    expect(w.worker.state).toBe('stopped');
  });

  it('transient receive errors that recover leave it healthy; ones that never stop make it unhealthy after maxReceiveFailures', async () => {
    const env = await makeEnv();
    let calls = 0;
    const flaky = failingReceive(env.queue, () => {
      if (++calls <= 4) throw new RetryableError('SQS is unavailable: socket hang up');
    });
    const job = await submit(env, { steps: 6 });
    const w = start({ ...env, queue: flaky }, { run: async () => outcome(6, false) }, { maxReceiveFailures: 5 });
    await waitForStatus(env, job.id, ['succeeded'], 20_000);
    expect(w.events.filter((e) => e.type === 'poll_error')).toHaveLength(4);
    expect(w.events.some((e) => e.type === 'unhealthy')).toBe(false);
    expect(w.logs.filter((l) => l.level === 'error')).toEqual([]);
    await w.worker.stop();

    const down = failingReceive(env.queue, () => {
      throw new RetryableError('SQS is unavailable: socket hang up');
    });
    const w2 = start({ ...env, queue: down }, { run: async () => outcome(6, false) }, { maxReceiveFailures: 3, pollErrorBackoffMs: 10 });
    await waitFor('unhealthy (or a fifth receive)', () => w2.events.some((e) => e.type === 'unhealthy') || w2.events.filter((e) => e.type === 'poll_error').length >= 5, 20_000);
    expect(w2.events.filter((e) => e.type === 'unhealthy')).toEqual([{ type: 'unhealthy', reason: 'queue_unreachable' }]);
    expect(w2.events.filter((e) => e.type === 'poll_error')).toHaveLength(3);
  });
});

describe('a cancel and the time limit', () => {
  it('a job its caller asked to cancel that then reaches the time limit ends canceled, not failed with the timeout\'s advice', async () => {
    const env = await makeEnv();
    let offset = 0;
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const synthesizer: Synthesizer = {
      async run(_job, { signal, onProgress } = {}) {
        started();
        // No progress report sees the cancel before the limit: the engine is between reports.
        await waitFor('the cancel request', async () => (await env.jobs.get(OWNER, job.id))?.cancel_requested === true);
        offset += 61_000;
        onProgress?.({ step: 2, total: 10, image: 0 });
        await untilAborted(signal);
        return outcome(2, true, 10);
      },
    };
    const job = await submit(env, { steps: 10 });
    const w = start(env, synthesizer, { jobTimeoutSec: 60, progressIntervalMs: 60_000 }, { now: () => Date.now() + offset });
    await running;
    await env.jobs.update(OWNER, job.id, (cur) => ({ ...cur, cancel_requested: true })); // what POST /cancel does to a running job
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded', 'canceled']);
    expect(done.status).toBe('canceled');
    expect(done.error).toBeNull();
    expect(w.events).toContainEqual(expect.objectContaining({ type: 'abort', reason: 'timeout' }));
    await waitFor('the ack', () => w.events.some((e) => e.type === 'acked'));
    expect(await env.queue.depth()).toBe(0);
  });
});

describe('durations on a clock that never steps', () => {
  /** A worker whose wall clock jumps by `jumpMs` mid-run, while its monotonic clock runs on (an NTP step, a VM resume). */
  async function runWithWallJump(jumpMs: number, config: Partial<WorkerConfig> = {}, afterJumpMs = 0) {
    const { standInImage, outcome: imagesOutcome } = await import('./stand-ins.ts');
    const env = await makeEnv();
    const job = await submit(env, { steps: 6 });
    let offset = 0;
    const synthesizer: Synthesizer = {
      async run(_job, { onProgress } = {}) {
        onProgress?.({ step: 1, total: 6, image: 0 });
        await new Promise((r) => setTimeout(r, 100));
        offset = jumpMs;
        onProgress?.({ step: 3, total: 6, image: 0 });
        // The run goes on past the jump, across heartbeats.
        await new Promise((r) => setTimeout(r, afterJumpMs));
        onProgress?.({ step: 6, total: 6, image: 0 });
        return imagesOutcome(6, false, [standInImage(0)]);
      },
    };
    const w = start(env, synthesizer, config, { now: () => Date.now() + offset, monotonic: () => performance.now() });
    const done = await waitForStatus(env, job.id, ['failed', 'succeeded', 'canceled']);
    return Object.assign(done, { events: w.events });
  }

  it('a wall clock stepped back 5 s mid-run: the job succeeds, billed for the time it ran (never a negative worker_seconds)', async () => {
    const done = await runWithWallJump(-5_000);
    expect(done.status).toBe('succeeded');
    expect(done.usage!.worker_seconds).toBeGreaterThanOrEqual(0.1);
    expect(done.usage!.worker_seconds).toBeLessThan(5);
  });

  it('a wall clock stepped 30 min forward mid-run: billed for the time it ran, not the jump; not a timeout', async () => {
    // Heartbeats every second; the run goes on 2.5 s after the jump: the lease keeps being extended.
    const done = await runWithWallJump(30 * 60_000, { jobTimeoutSec: 60, visibilityTimeoutSec: 2 }, 2500);
    expect(done.status).toBe('succeeded');
    expect(done.usage!.worker_seconds).toBeLessThan(5);
    expect(done.events.filter((e) => e.type === 'lease_stopped' || e.type === 'unhealthy')).toEqual([]);
  });
});
