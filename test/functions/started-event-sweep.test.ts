// The review of ADR 0036 (this failed before its fix): the sweep's started retry is out when the run
// ends; the worker's end attempt meets the sweep's claim (held_elsewhere) and leaves the end event to
// the sweep. That sweep now sends the end event in the same pass, not a sweep period (2 min in AWS) later.
import { afterEach, beforeEach, expect, it } from 'vitest';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { createApp } from '../../functions/app.ts';
import { deliverStartedEvent, deliverWebhook, httpWebhookSender, type WebhookSender } from '../../shared/webhooks.ts';
import { webhookReceiver } from '../helpers/webhook-receiver.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

const hook = webhookReceiver();
let h: Harness;
let offsetMs = 0;
const clock = () => new Date(Date.now() + offsetMs);
beforeEach(async () => { h = await harness(); offsetMs = 0; hook.reset(); });
afterEach(() => h.close());

it('the sweep that held the started claim when the run ended sends the end event in the same pass', async () => {
  const app = createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true } });
  const res = await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['started', 'ended'] }) });
  const { id } = (await res.json()) as { id: string };
  await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: clock().toISOString() }));
  const real = httpWebhookSender({ allowPrivate: true });
  // The worker's first attempt failed.
  expect(await deliverStartedEvent({ jobs: h.jobs, blobs: h.blobs, send: async () => 503, signedUrlTtlSec: 600, clock }, 'acct_alice', id)).toBe('failed');
  offsetMs = 31_000;
  let workerEnd: string | undefined;
  const send: WebhookSender = async (request) => {
    if (request.headers['webhook-id']!.endsWith('_started')) {
      // The run ends while the sweep's retry is out; the worker's end attempt is held.
      await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', finished_at: clock().toISOString() }));
      workerEnd = await deliverWebhook({ jobs: h.jobs, blobs: h.blobs, send: real, signedUrlTtlSec: 600, clock }, 'acct_alice', id);
    }
    return real(request);
  };
  const report = await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send, signedUrlTtlSec: 600 } });
  const types = hook.received.map((r) => (JSON.parse(r.body) as { type: string }).type);
  expect(types).toEqual(['generation.started', 'generation.succeeded']);
});
