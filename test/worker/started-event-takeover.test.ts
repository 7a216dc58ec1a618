// The review of ADR 0036 (this failed before its fix): a worker died DURING its started attempt (its
// claim written, no attempt recorded). The run that takes over finds the claim lapsed with no attempt
// and makes that first attempt itself; before, it counted the dead claim as held, and a short run ended
// before the sweep could retry, so the started event was never sent.
import { afterEach, beforeEach, expect, it } from 'vitest';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { createWorker, silentLogger, type QueueWorker } from '../../gpu-worker/worker/worker.ts';
import { newJobId } from '../../shared/ids.ts';
import { markPending } from '../../shared/pending.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { httpWebhookSender, newWebhookSecret, webhookNotifier } from '../../shared/webhooks.ts';
import { webhookReceiver } from '../helpers/webhook-receiver.ts';
import { makeEnv, OWNER, waitFor, waitForStatus } from './helpers.ts';
import { sleep, standInImage, stepping } from './stand-ins.ts';

const hook = webhookReceiver();
beforeEach(() => hook.reset());
const workers: QueueWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});
const realSend = httpWebhookSender({ allowPrivate: true });

it('takeover after a worker died mid started-attempt (claim lapsed, attempts 0): the started event still goes', async () => {
  const env = await makeEnv();
  const lapsed = new Date(Date.now() - 120_000).toISOString();
  const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny', webhook_events: ['started', 'ended'] });
  const job = await env.jobs.create(newJobRecord({ id: newJobId(), owner: OWNER, spec, webhook: { url: hook.url, secret: newWebhookSecret() } }));
  await markPending(env.blobs, 'hook', OWNER, job.id);
  await markPending(env.blobs, 'active', OWNER, job.id);
  await env.jobs.update(OWNER, job.id, (cur) => ({
    ...cur, status: 'running', attempts: 1, started_at: lapsed, lease_message_id: 'gone', lease_expires_at: lapsed, lease_token: 'dead',
    webhook: { ...cur.webhook!, started: { attempts: 0, delivered_at: null, given_up_at: null, next_attempt_at: null, claimed_until: new Date(Date.now() - 60_000).toISOString(), last_error: null, claim: 'dead-claim' } },
  }));
  await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }));
  const webhooks = webhookNotifier({ jobs: env.jobs, blobs: env.blobs, signedUrlTtlSec: 600, clock: () => new Date(), send: realSend });
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer: stepping(6, 5, undefined, [standInImage(0)]), webhooks, log: silentLogger,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0 },
  });
  worker.start();
  workers.push(worker);
  await waitForStatus(env, job.id, ['succeeded'], 30_000);
  await waitFor('the end event', () => hook.received.length >= 1);
  await sleep(300);
  // The sweep, later: the job has ended, so it sends no started event either.
  await sweepQueuedJobs({ blobs: env.blobs, jobs: env.jobs, queue: env.queue, clock: () => new Date(Date.now() + 3_600_000), webhooks: { send: realSend, signedUrlTtlSec: 600 } });
  const ids = hook.received.map((r) => r.headers['webhook-id']);
  expect(ids).toEqual([`evt_${job.id}_started`, `evt_${job.id}_succeeded`]);
});
