// ECS task scale-in protection: a worker holding a job marks its task protected through the ECS
// agent's endpoint and clears it once the message is settled; an agent that fails never fails the
// job. The ECS agent cannot run here, so a small HTTP server stands in for its endpoint (it answers
// as the documented one does); the queue, job store and blob store are the real local adapters.
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../shared/config.ts';
import { createWorker, type Logger, type QueueWorker } from '../../gpu-worker/worker/worker.ts';
import { ecsTaskProtection } from '../../gpu-worker/worker/task-protection.ts';
import type { SynthesisOutcome, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { type Env, makeEnv, submit, waitFor, waitForStatus } from './helpers.ts';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A stand-in for `$ECS_AGENT_URI/task-protection/v1/state` that records every request. */
async function fakeAgent(answer: (body: Record<string, unknown>) => { status: number; body: unknown } = (b) => ({ status: 200, body: { protection: { ProtectionEnabled: b.ProtectionEnabled } } }), delayMs = 0) {
  const requests: { method: string; path: string; body: Record<string, unknown> }[] = [];
  const server = createServer(async (req: IncomingMessage, res) => {
    let text = '';
    for await (const chunk of req) text += chunk;
    const body = JSON.parse(text || '{}') as Record<string, unknown>;
    requests.push({ method: req.method ?? '', path: req.url ?? '', body });
    const a = answer(body);
    if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    res.writeHead(a.status, { 'content-type': 'application/json' }).end(JSON.stringify(a.body));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
  return { uri: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/task-id`, requests };
}

const done = (stepsDone: number): SynthesisOutcome => ({ images: [], aborted: false, stepsDone, totalSteps: stepsDone, encoderPasses: 0, timingsMs: { total: 0, sessionRun: 0, optimize: 0 } });

function start(env: Env, synthesizer: Synthesizer, protectionUri: string) {
  const logs: { msg: string; fields?: Record<string, unknown> }[] = [];
  const log: Logger = { debug: () => undefined, info: () => undefined, warn: (msg, fields) => logs.push({ msg, fields }), error: (msg, fields) => logs.push({ msg, fields }) };
  const worker: QueueWorker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, jobTimeoutSec: 3600 },
    protection: ecsTaskProtection(protectionUri, log),
    log,
  });
  worker.start();
  cleanups.push(() => worker.stop());
  return { worker, logs };
}

describe('ECS task scale-in protection', () => {
  it('the task is protected while it holds a job (for the time limit + 5 min) and unprotected once it is settled', async () => {
    const env = await makeEnv();
    const agent = await fakeAgent();
    let whileRunning: unknown[] = [];
    const synthesizer: Synthesizer = {
      async run() {
        whileRunning = agent.requests.map((r) => r.body);
        return done(6);
      },
    };
    const job = await submit(env, { steps: 6 });
    start(env, synthesizer, agent.uri);
    expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
    await waitFor('the unprotect, which follows the ack and the run statistics', () => agent.requests.length >= 2);
    expect(whileRunning).toEqual([{ ProtectionEnabled: true, ExpiresInMinutes: 65 }]);
    expect(agent.requests.map((r) => [r.method, r.path, r.body])).toEqual([
      ['PUT', '/api/task-id/task-protection/v1/state', { ProtectionEnabled: true, ExpiresInMinutes: 65 }],
      ['PUT', '/api/task-id/task-protection/v1/state', { ProtectionEnabled: false }],
    ]);
  });

  it('an agent that refuses or cannot be reached is logged; the job still runs', async () => {
    const env = await makeEnv();
    const refusing = await fakeAgent(() => ({ status: 400, body: { error: { Code: 'AccessDeniedException', Message: 'not authorized to perform: ecs:UpdateTaskProtection' } } }));
    const job = await submit(env, { steps: 6 });
    const a = start(env, { run: async () => done(6) }, refusing.uri);
    expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
    await a.worker.stop();
    expect(a.logs).toContainEqual(expect.objectContaining({ msg: 'task scale-in protection not updated', fields: expect.objectContaining({ status: 400, body: expect.stringContaining('AccessDenied') }) }));

    const job2 = await submit(env, { steps: 6 });
    const b = start(env, { run: async () => done(6) }, 'http://127.0.0.1:1/unreachable');
    expect((await waitForStatus(env, job2.id, ['succeeded', 'failed'])).status).toBe('succeeded');
    expect(b.logs).toContainEqual(expect.objectContaining({ msg: 'task scale-in protection not updated', fields: expect.objectContaining({ enabled: true }) }));
  });

  it('a message received as the worker stops goes straight back as a fresh copy, and its job is stamped with that send', async () => {
    const env = await makeEnv();
    const agent = await fakeAgent(undefined, 400);
    const job = await submit(env, { steps: 6 });
    const w = start(env, { run: async () => done(6) }, agent.uri);
    await waitFor('the protection call', () => agent.requests.length > 0);
    const before = Date.now();
    await w.worker.stop(); // lands while the protection call is in flight: the job must not start
    const rec = (await env.jobs.get(job.owner, job.id))!;
    expect([rec.status, rec.attempts]).toEqual(['queued', 0]);
    // The queued-job sweep counts the queue's retention from this stamp (ADR 0012): the copy is as new.
    expect(Date.parse(rec.enqueued_at!)).toBeGreaterThanOrEqual(before);
    const [again] = await env.queue.receive({ waitSec: 0 });
    expect([again?.receiveCount, JSON.parse(again!.body).job_id]).toEqual([1, job.id]);
  });

  it('config: ECS_AGENT_URI (injected by ECS) is read in AWS mode', () => {
    const aws = { CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-test', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q' };
    expect(parseConfig({ ...aws, ECS_AGENT_URI: 'http://169.254.170.2/api/abc/' })).toMatchObject({ ecsAgentUri: 'http://169.254.170.2/api/abc' });
    expect(parseConfig(aws)).not.toHaveProperty('ecsAgentUri');
  });
});
