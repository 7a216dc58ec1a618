// The opt-in generation.started webhook event (ADR 0036) at the API and the queued-job sweep: the
// request's `webhook_events` (checked, stored only when given, echoed, part of an Idempotency-Key's
// body), the document, and the sweep's retries of a started event a worker's first attempt failed,
// which stop once the job has ended (no started event after the end event).
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Webhook } from 'standardwebhooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import type { JobStore } from '../../shared/ports.ts';
import type { JobRecord } from '../../shared/schemas/job.ts';
import { GenerationEvent } from '../../shared/schemas/view.ts';
import { deliverStartedEvent, deliverWebhook, httpWebhookSender, type WebhookDeliveryDeps, type WebhookSender } from '../../shared/webhooks.ts';
import { webhookReceiver } from '../helpers/webhook-receiver.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

const hook = webhookReceiver();

let h: Harness;
let offsetMs: number;
const clock = () => new Date(Date.now() + offsetMs);

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
  hook.reset();
});
afterEach(() => h.close());

/** The app as local mode runs it: webhooks to this machine allowed. */
const localApp = () => createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true } });

async function post(body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Response> {
  return localApp().request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

/** A generation asking for both events; its id and secret. */
async function postWithStarted(): Promise<{ id: string; secret: string }> {
  const res = await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['started', 'ended'] });
  expect(res.status).toBe(202);
  const body = (await res.json()) as { id: string; webhook: { secret: string } };
  return { id: body.id, secret: body.webhook.secret };
}

function deliveryDeps(send: WebhookSender = httpWebhookSender({ allowPrivate: true }), jobs: JobStore = h.jobs): WebhookDeliveryDeps {
  return { jobs, blobs: h.blobs, send, signedUrlTtlSec: 600, clock };
}

function sweepDeps() {
  return { blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } };
}

/** What a worker's claim writes: running, its first attempt, started now. */
async function claim(id: string): Promise<void> {
  await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: clock().toISOString() }));
}

async function finish(id: string): Promise<void> {
  await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', finished_at: clock().toISOString() }));
}

const refused: WebhookSender = async () => 503;
const record = async (id: string) => (await h.jobs.get('acct_alice', id))!;
const typesReceived = () => hook.received.map((r) => (JSON.parse(r.body) as { type: string }).type);

describe('webhook_events in the request', () => {
  it('a bad value is a 400 naming webhook_events, and nothing is made', async () => {
    const bad: unknown[] = [
      ['started', 'nope'], // an unknown name
      ['ended', 7], // not a name at all
      [], // empty
      ['ended', 'ended'], // twice
      ['started'], // without the end event
      'started', // not a list
    ];
    for (const events of bad) {
      const res = await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: events });
      const error = await expectEnvelope(res, 400, 'validation_error');
      expect(error.param, JSON.stringify(events)).toBe('webhook_events');
    }
    // Without webhook_url: nowhere to send them.
    const alone = await expectEnvelope(await post({ prompt: 'apple', webhook_events: ['started', 'ended'] }), 400, 'validation_error');
    expect(alone.param).toBe('webhook_events');
    expect(alone.message).toContain('webhook_url');
    const list = (await (await h.request('/v1/generations')).json()) as { data: unknown[] };
    expect(list.data).toEqual([]);
    // While the values it names are taken.
    expect((await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['started', 'ended'] })).status).toBe(202);
  });

  it('is stored only when given, echoes in `request`, and is part of the Idempotency-Key body', async () => {
    const withIt = await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['started', 'ended'] }, { 'Idempotency-Key': 'se-1' });
    expect(withIt.status).toBe(202);
    const created = (await withIt.json()) as { id: string; request: Record<string, unknown> };
    expect(created.request.webhook_events).toEqual(['started', 'ended']);
    expect((await record(created.id)).spec.webhook_events).toEqual(['started', 'ended']);
    const got = (await (await h.request(`/v1/generations/${created.id}`)).json()) as { request: Record<string, unknown> };
    expect(got.request.webhook_events).toEqual(['started', 'ended']);
    // The same key with another value of the field is another request.
    await expectEnvelope(await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['ended'] }, { 'Idempotency-Key': 'se-1' }), 409, 'idempotency_key_reused');
    await expectEnvelope(await post({ prompt: 'apple', webhook_url: hook.url }, { 'Idempotency-Key': 'se-1' }), 409, 'idempotency_key_reused');
    const replay = await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['started', 'ended'] }, { 'Idempotency-Key': 'se-1' });
    expect([replay.status, ((await replay.json()) as { id: string }).id]).toEqual([200, created.id]);
    // Left out, the stored spec has no such key (a worker from before it reads the record), and
    // ["ended"] alone is accepted.
    const plain = (await (await post({ prompt: 'apple', webhook_url: hook.url })).json()) as { id: string; request: Record<string, unknown> };
    expect('webhook_events' in plain.request).toBe(false);
    expect('webhook_events' in (await record(plain.id)).spec).toBe(false);
    expect((await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['ended'] })).status).toBe(202);
    expect((await post({ prompt: 'apple', webhook_url: hook.url, webhook_events: ['ended', 'started'] })).status).toBe(202);
  });

  it('/openapi.json documents the field, the event type and the generation.started webhook, and its schema agrees with the server', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    expect(doc.components.schemas.GenerationRequest.properties.webhook_events).toMatchObject({ type: 'array', items: { enum: ['started', 'ended'] }, uniqueItems: true, minItems: 1 });
    expect(doc.components.schemas.GenerationEvent.properties.type.enum).toContain('generation.started');
    const started = doc.webhooks['generation.started'].post;
    expect(started.requestBody.content['application/json'].schema.$ref).toBe('#/components/schemas/GenerationEvent');
    expect(started.parameters.find((p: { name: string }) => p.name === 'webhook-id').description).toContain('_started');
    expect(doc.webhooks['generation.ended'].post.description).toContain('webhook_events');
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validRequest = ajv.getSchema('api#/components/schemas/GenerationRequest')!;
    const base = { prompt: 'apple', webhook_url: 'https://example.com/h' };
    for (const events of [['started', 'nope'], [], ['ended', 'ended'], ['started']]) {
      expect(validRequest({ ...base, webhook_events: events }), JSON.stringify(events)).toBe(false);
    }
    expect(validRequest({ ...base, webhook_events: ['started', 'ended'] }) ? [] : validRequest.errors).toEqual([]);
  });
});

describe('the sweep retries a started event', () => {
  it("a worker's failed first attempt is retried when due, signed with its own webhook-id; the end event's state is untouched", async () => {
    const { id, secret } = await postWithStarted();
    await claim(id);
    expect(await deliverStartedEvent(deliveryDeps(refused), 'acct_alice', id)).toBe('failed'); // the worker's attempt
    const failed = await record(id);
    expect(failed.webhook!.started).toMatchObject({ attempts: 1, delivered_at: null, last_error: 'HTTP 503', next_attempt_at: expect.any(String) });
    expect(failed.webhook).toMatchObject({ attempts: 0, delivered_at: null, last_error: null });
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ webhooksDelivered: 0, webhooksFailed: 0 }); // not due yet
    expect(hook.received).toHaveLength(0);
    offsetMs = 31_000;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ webhooksDelivered: 1, webhooksFailed: 0 });
    expect(hook.received).toHaveLength(1);
    const [{ headers, body }] = hook.received as [{ headers: Record<string, string>; body: string }];
    expect(headers['webhook-id']).toBe(`evt_${id}_started`);
    const event = GenerationEvent.parse(new Webhook(secret).verify(body, headers));
    expect(event).toMatchObject({ type: 'generation.started', timestamp: failed.started_at, data: { id, status: 'running', webhook: { status: 'pending', attempts: 0 } } });
    const after = await record(id);
    expect(after.webhook!.started).toMatchObject({ attempts: 2, delivered_at: expect.any(String), last_error: null, claimed_until: null });
    expect(after.webhook).toMatchObject({ attempts: 0, delivered_at: null, claimed_until: null });
    // Delivered: no more started events; the hook marker stays for the end event.
    offsetMs = 200_000;
    await sweepQueuedJobs(sweepDeps());
    expect(hook.received).toHaveLength(1);
    await finish(id);
    await sweepQueuedJobs(sweepDeps());
    expect(typesReceived()).toEqual(['generation.started', 'generation.succeeded']);
    expect(hook.received[1]!.headers['webhook-id']).toBe(`evt_${id}_succeeded`);
    expect(new Webhook(secret).verify(hook.received[1]!.body, hook.received[1]!.headers)).toBeTruthy();
  });

  it('a job that ended before the retry was due gets its end event only: no started event after it', async () => {
    const { id } = await postWithStarted();
    await claim(id);
    expect(await deliverStartedEvent(deliveryDeps(refused), 'acct_alice', id)).toBe('failed');
    await finish(id);
    offsetMs = 31_000;
    const report = await sweepQueuedJobs(sweepDeps());
    expect(report).toMatchObject({ webhooksDelivered: 1 });
    expect(typesReceived()).toEqual(['generation.succeeded']);
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', id)).toBe('nothing_to_send');
    offsetMs = 10_000_000;
    await sweepQueuedJobs(sweepDeps());
    expect(typesReceived()).toEqual(['generation.succeeded']);
    expect((await record(id)).webhook!.started).toMatchObject({ attempts: 1, delivered_at: null });
  });

  it('a job that ends while its started attempt is out: that attempt goes first, and the end event is held until it is recorded', async () => {
    const { id } = await postWithStarted();
    await claim(id);
    const real = httpWebhookSender({ allowPrivate: true });
    let endTriedMeanwhile: string | undefined;
    // The run ends while the started attempt is on its way; an end attempt made then is held.
    const send: WebhookSender = async (request) => {
      if (request.headers['webhook-id']!.endsWith('_started')) {
        await finish(id);
        endTriedMeanwhile = await deliverWebhook(deliveryDeps(), 'acct_alice', id);
      }
      return real(request);
    };
    expect(await deliverStartedEvent(deliveryDeps(send), 'acct_alice', id)).toBe('delivered');
    expect(endTriedMeanwhile).toBe('held_elsewhere');
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('delivered');
    expect(typesReceived()).toEqual(['generation.started', 'generation.succeeded']);
    const rec: JobRecord = await record(id);
    expect(rec.webhook!.started).toMatchObject({ attempts: 1, delivered_at: expect.any(String), claimed_until: null });
    expect(rec.webhook!.started!.claim).toBeUndefined();
    expect(rec.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String) });
    expect(rec.webhook_claim).toBeUndefined();
  });

  it("the worker's first attempt of a run that has already ended still goes, before the end event; not once the end event was tried", async () => {
    const fast = await postWithStarted();
    await claim(fast.id);
    await finish(fast.id); // a run of a few steps ends before its first started attempt is claimed
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', fast.id)).toBe('nothing_to_send'); // a retry: stale
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', fast.id, { first: true })).toBe('delivered');
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', fast.id)).toBe('delivered');
    expect(typesReceived()).toEqual(['generation.started', 'generation.succeeded']);
    hook.reset();
    const late = await postWithStarted();
    await claim(late.id);
    await finish(late.id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', late.id)).toBe('delivered');
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', late.id, { first: true })).toBe('nothing_to_send');
    expect(typesReceived()).toEqual(['generation.succeeded']);
  });

  it('the end event waits for a started attempt held elsewhere (so it never overtakes it), then goes', async () => {
    const { id } = await postWithStarted();
    await claim(id);
    await h.jobs.update('acct_alice', id, (cur) => ({
      ...cur,
      webhook: { ...cur.webhook!, started: { attempts: 0, delivered_at: null, given_up_at: null, next_attempt_at: null, claimed_until: new Date(clock().getTime() + 60_000).toISOString(), last_error: null, claim: 'another' } },
    }));
    await finish(id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('held_elsewhere');
    expect(hook.received).toHaveLength(0);
    offsetMs = 61_000; // its claim lapsed (that deliverer died)
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('delivered');
    expect(typesReceived()).toEqual(['generation.succeeded']);
  });

  it("the view shows the started event's own delivery: pending, then failed attempts, delivered, or skipped once the job ended without it", async () => {
    const started = async (id: string) => ((await (await localApp().request(`/v1/generations/${id}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as { webhook: { status: string; started?: unknown } }).webhook;
    const a = await postWithStarted();
    expect((await started(a.id)).started).toEqual({ status: 'pending', attempts: 0, last_error: null });
    await claim(a.id);
    expect(await deliverStartedEvent(deliveryDeps(refused), 'acct_alice', a.id)).toBe('failed');
    expect((await started(a.id)).started).toEqual({ status: 'pending', attempts: 1, last_error: 'HTTP 503' });
    offsetMs = 31_000;
    await sweepQueuedJobs(sweepDeps());
    expect(await started(a.id)).toMatchObject({ status: 'pending', started: { status: 'delivered', attempts: 2, last_error: null } });
    // Ended after one failed attempt: no started event will follow the end event.
    offsetMs = 0;
    const b = await postWithStarted();
    await claim(b.id);
    expect(await deliverStartedEvent(deliveryDeps(refused), 'acct_alice', b.id)).toBe('failed');
    await finish(b.id);
    expect((await started(b.id)).started).toEqual({ status: 'skipped', attempts: 1, last_error: 'HTTP 503' });
    // A run so short it ended before its worker's first attempt: that attempt may still go (before the
    // end event), so pending; once the end event has been tried, nothing sends it.
    const d = await postWithStarted();
    await claim(d.id);
    await finish(d.id);
    expect((await started(d.id)).started).toEqual({ status: 'pending', attempts: 0, last_error: null });
    await h.jobs.update('acct_alice', d.id, (cur) => ({ ...cur, webhook: { ...cur.webhook!, attempts: 1, last_error: 'HTTP 503' } }));
    expect((await started(d.id)).started).toEqual({ status: 'skipped', attempts: 0, last_error: null });
    // Canceled while queued: never started, so never sent.
    const c = await postWithStarted();
    expect((await localApp().request(`/v1/generations/${c.id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
    expect((await started(c.id)).started).toEqual({ status: 'skipped', attempts: 0, last_error: null });
    // A generation that asked for the end event only shows no started state.
    const plain = (await (await post({ prompt: 'apple', webhook_url: hook.url })).json()) as { webhook: Record<string, unknown> };
    expect(plain.webhook).not.toHaveProperty('started');
  });

  it('a job that did not ask for it, or has not started, owes no started event', async () => {
    const plain = (await (await post({ prompt: 'apple', webhook_url: hook.url })).json()) as { id: string };
    await claim(plain.id);
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', plain.id)).toBe('nothing_to_send');
    const { id } = await postWithStarted();
    expect(await deliverStartedEvent(deliveryDeps(), 'acct_alice', id)).toBe('nothing_to_send'); // still queued
    await sweepQueuedJobs(sweepDeps());
    expect(hook.received).toHaveLength(0);
  });
});
