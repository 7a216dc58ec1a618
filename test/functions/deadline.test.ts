// The caller's deadline (cancel_after, ADR 0034) at the API and in the queued-job sweep: the field's
// rules, where it shows, and the sweep that ends a queued job past it while no worker runs.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { GenerationEvent } from '../../shared/schemas/view.ts';
import type { WebhookRequest } from '../../shared/webhooks.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
/** The API's and the sweep's clock: the machine's, moved on by `offsetMs`. */
let offsetMs: number;
const clock = () => new Date(Date.now() + offsetMs);
let app: ReturnType<typeof createApp>;

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
  // Local mode's webhook policy (a receiver on this machine allowed); the sweep below sends nothing over the network.
  app = createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true } });
});
afterEach(() => h.close());

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  app.request(path, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
const get = (path: string) => app.request(path, { headers: { Authorization: `Bearer ${h.alice}` } });

describe('cancel_after in a request', () => {
  it('is a whole number of seconds, 1 to 86400: anything else is a 400 naming cancel_after, on POST /v1/generations and /v1/estimates, nothing queued', async () => {
    for (const bad of [0, -1, 1.5, '60', 86_401, null, true]) {
      for (const path of ['/v1/generations', '/v1/estimates']) {
        const err = await expectEnvelope(await post(path, { prompt: 'apple', cancel_after: bad }), 400, 'validation_error');
        expect(err.param, `${path} ${JSON.stringify(bad)}`).toBe('cancel_after');
        expect(err.message).toBe('cancel_after must be a whole number of seconds, 1 to 86400');
      }
    }
    expect(await h.queue.depth()).toBe(0);
  });

  it('is stored in the spec and echoed in the request when given (1 and 86400 included), and absent when not', async () => {
    for (const seconds of [1, 60, 86_400]) {
      const res = await post('/v1/generations', { prompt: 'apple', cancel_after: seconds });
      expect(res.status).toBe(202);
      const body = (await res.json()) as any;
      expect([body.status, body.request.cancel_after, body.error]).toEqual(['queued', seconds, null]);
      expect((await h.jobs.get('acct_alice', body.id))!.spec.cancel_after).toBe(seconds);
      expect(((await (await get(`/v1/generations/${body.id}`)).json()) as any).request.cancel_after).toBe(seconds);
    }
    const plain = (await (await post('/v1/generations', { prompt: 'apple' })).json()) as any;
    expect('cancel_after' in plain.request).toBe(false);
    // A worker from before cancel_after reads this spec (ADR 0030).
    expect('cancel_after' in (await h.jobs.get('acct_alice', plain.id))!.spec).toBe(false);
  });

  it('is part of the body an Idempotency-Key names', async () => {
    const first = await post('/v1/generations', { prompt: 'apple', cancel_after: 60 }, { 'Idempotency-Key': 'dl-1' });
    expect(first.status).toBe(202);
    const again = await post('/v1/generations', { prompt: 'apple', cancel_after: 60 }, { 'Idempotency-Key': 'dl-1' });
    expect([again.status, again.headers.get('Idempotent-Replayed')]).toEqual([200, 'true']);
    await expectEnvelope(await post('/v1/generations', { prompt: 'apple', cancel_after: 30 }, { 'Idempotency-Key': 'dl-1' }), 409, 'idempotency_key_reused');
    await expectEnvelope(await post('/v1/generations', { prompt: 'apple' }, { 'Idempotency-Key': 'dl-1' }), 409, 'idempotency_key_reused');
  });

  it('an estimate takes it and is the same without it', async () => {
    const with_ = await post('/v1/estimates', { prompt: 'apple', width: 128, n: 2, cancel_after: 15 });
    const without = await post('/v1/estimates', { prompt: 'apple', width: 128, n: 2 });
    expect([with_.status, without.status]).toEqual([200, 200]);
    expect(await with_.json()).toEqual(await without.json());
    expect(await h.queue.depth()).toBe(0);
  });

  it('/openapi.json states it: an optional integer of 1 to 86400 in GenerationRequest, shown in the view\'s request', async () => {
    const doc = (await (await app.request('/openapi.json')).json()) as any;
    const field = doc.components.schemas.GenerationRequest.properties.cancel_after;
    expect(field).toMatchObject({ type: 'integer', minimum: 1, maximum: 86_400 });
    expect(field.description).toMatch(/deadline_exceeded/);
    expect(doc.components.schemas.GenerationRequest.required ?? []).not.toContain('cancel_after');
    expect(doc.components.schemas.GenerationSpec.properties.cancel_after).toMatchObject({ type: 'integer', minimum: 1, maximum: 86_400 });
    expect(doc.components.schemas.Generation.properties.error.description).toMatch(/deadline_exceeded/);
  });
});

describe('the queued-job sweep and cancel_after', () => {
  /** The sweep as local serve runs it, its webhook attempts collected in `sent` (answered 200). */
  function sweeper() {
    const sent: WebhookRequest[] = [];
    const sweep = () =>
      sweepQueuedJobs({
        blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock,
        webhooks: {
          send: async (request) => {
            sent.push(request);
            return 200;
          },
          signedUrlTtlSec: 600,
        },
      });
    return { sent, sweep };
  }
  const make = async (body: Record<string, unknown>) => {
    const res = await post('/v1/generations', { prompt: 'apple', webhook_url: 'http://127.0.0.1:9/hooks', ...body });
    expect(res.status).toBe(202);
    return ((await res.json()) as { id: string }).id;
  };
  const activeMarkers = async () => (await h.blobs.list('pending/active/')).items.map((i) => i.key);

  it('ends a queued job past its deadline canceled (deadline_exceeded, usage 0), frees its place and sends its event once; one before its deadline, or without one, stays queued', async () => {
    const { sent, sweep } = sweeper();
    const late = await make({ cancel_after: 60 });
    const later = await make({ cancel_after: 600 });
    const none = await make({});

    offsetMs = 30_000; // before any deadline: nothing changes
    await sweep();
    for (const id of [late, later, none]) expect((await h.jobs.get('acct_alice', id))!.status).toBe('queued');
    expect(sent).toEqual([]);

    offsetMs = 61_000; // past the first one's 60 s
    await sweep();
    const ended = (await h.jobs.get('acct_alice', late))!;
    expect([ended.status, ended.cancel_requested, ended.error]).toEqual(['canceled', true, { code: 'deadline_exceeded', message: 'canceled: the generation had not ended 60 s after it was created (cancel_after)' }]);
    expect(Date.parse(ended.finished_at!)).toBeGreaterThanOrEqual(Date.parse(ended.created_at) + 60_000);
    expect((await h.jobs.get('acct_alice', later))!.status).toBe('queued');
    expect((await h.jobs.get('acct_alice', none))!.status).toBe('queued');
    expect((await activeMarkers()).some((k) => k.endsWith(late))).toBe(false);
    expect((await activeMarkers()).filter((k) => k.endsWith(later) || k.endsWith(none))).toHaveLength(2);
    const events = sent.map((r) => GenerationEvent.parse(JSON.parse(r.body)));
    expect(events.map((e) => [e.type, e.data.id])).toEqual([['generation.canceled', late]]);
    expect(events[0]!.data).toMatchObject({ status: 'canceled', error: { code: 'deadline_exceeded' }, outputs: [], usage: { encoder_passes: 0, worker_seconds: 0 }, request: { cancel_after: 60 } });

    // As GET shows it.
    const view = (await (await get(`/v1/generations/${late}`)).json()) as any;
    expect([view.status, view.error.code, view.usage.worker_seconds, view.webhook.status]).toEqual(['canceled', 'deadline_exceeded', 0, 'delivered']);

    // A later sweep sends nothing again, and a cancel of it is the no-op a cancel of a canceled generation is.
    await sweep();
    expect(sent).toHaveLength(1);
    const cancel = await app.request(`/v1/generations/${late}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } });
    expect(cancel.status).toBe(200);
    expect(((await cancel.json()) as any).error.code).toBe('deadline_exceeded');

    // Days later: the one without a deadline is still queued (local mode keeps it), the other ended.
    offsetMs = 3 * 86_400_000;
    await sweep();
    expect((await h.jobs.get('acct_alice', none))!.status).toBe('queued');
    expect((await h.jobs.get('acct_alice', later))!.status).toBe('canceled');
    expect(sent.map((r) => (JSON.parse(r.body) as { data: { id: string } }).data.id)).toEqual([late, later]);
  });

  it("a job its caller canceled before the deadline keeps the caller's cancel: no error", async () => {
    const { sweep } = sweeper();
    const id = await make({ cancel_after: 60 });
    expect((await app.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
    offsetMs = 61_000;
    await sweep();
    const job = (await h.jobs.get('acct_alice', id))!;
    expect([job.status, job.error]).toEqual(['canceled', null]);
  });
});

describe('a GET of a queued generation past its cancel_after', () => {
  /** An app whose webhook attempts are collected in `sent` (answered 200). */
  function appSending() {
    const sent: WebhookRequest[] = [];
    const a = createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true, maxWaitSec: 10 }, webhookSend: async (request) => (sent.push(request), 200) });
    const read = (path: string, headers: Record<string, string> = {}) => a.request(path, { headers: { Authorization: `Bearer ${h.alice}`, ...headers } });
    return { sent, read };
  }
  const make = async (cancelAfter: number) => {
    const res = await post('/v1/generations', { prompt: 'apple', cancel_after: cancelAfter, webhook_url: 'http://127.0.0.1:9/hooks' });
    return ((await res.json()) as { id: string }).id;
  };

  it('ends it as the sweep would (deadline_exceeded, its place freed, its event sent once), with no worker and no sweep', async () => {
    const { sent, read } = appSending();
    const id = await make(60);
    const early = await make(600);
    offsetMs = 61_000;
    const view = (await (await read(`/v1/generations/${id}`)).json()) as any;
    expect([view.status, view.error?.code, view.usage.worker_seconds, view.webhook.status]).toEqual(['canceled', 'deadline_exceeded', 0, 'delivered']);
    expect((await h.jobs.get('acct_alice', id))!.status).toBe('canceled');
    expect((await h.blobs.list('pending/active/')).items.map((i) => i.key).some((k) => k.endsWith(id))).toBe(false);
    expect(sent.map((r) => JSON.parse(r.body).type)).toEqual(['generation.canceled']);
    // Read again: nothing more is sent. One before its deadline is left queued.
    await read(`/v1/generations/${id}`);
    expect(sent).toHaveLength(1);
    expect(((await (await read(`/v1/generations/${early}`)).json()) as any).status).toBe('queued');
  });

  it('a Prefer: wait over the deadline answers as soon as it passes, canceled', async () => {
    const { read } = appSending();
    const id = await make(60);
    setTimeout(() => (offsetMs = 61_000), 400);
    const started = performance.now();
    const res = await read(`/v1/generations/${id}`, { Prefer: 'wait=8' });
    const view = (await res.json()) as any;
    expect([view.status, view.error?.code]).toEqual(['canceled', 'deadline_exceeded']);
    expect(performance.now() - started).toBeLessThan(5_000);
  });
});

describe('cancel_after everywhere a generation is read (the diff review of 2026-12-07)', () => {
  const auth = () => ({ Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' });

  it('its image link and the list answer it as GET does: canceled, not "queued"', async () => {
    const res = await post('/v1/generations', { prompt: 'apple', cancel_after: 60 });
    const { id } = (await res.json()) as { id: string };
    offsetMs = 61_000;
    const list = (await (await app.request('/v1/generations', { headers: auth() })).json()) as any;
    expect([list.data[0].status, list.data[0].error?.code]).toEqual(['canceled', 'deadline_exceeded']);
    const out = await app.request(`/v1/generations/${id}/outputs/0`, { headers: auth() });
    expect(out.status).toBe(404);
    expect(((await out.json()) as any).error.message).toBe(`generation ${id} canceled and made no images`);
  });

  it('a held wait that reaches the deadline answers within its cap: the webhook attempt is left to the sweep', async () => {
    // A receiver that takes the request and never answers.
    const { createServer } = await import('node:http');
    const server = createServer(() => {});
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.address() as { port: number }).port;
      const capped = createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true, maxWaitSec: 3 } });
      const started = performance.now();
      const res = await capped.request('/v1/generations', {
        method: 'POST',
        headers: { ...auth(), Prefer: 'wait=3' },
        body: JSON.stringify({ prompt: 'apple', cancel_after: 2, webhook_url: `http://127.0.0.1:${port}/hook` }),
      });
      const view = (await res.json()) as any;
      expect([view.status, view.error?.code, view.webhook.status]).toEqual(['canceled', 'deadline_exceeded', 'pending']);
      expect(performance.now() - started).toBeLessThan(3_600);
      // Its place is free already; its event is owed to the sweep (the marker its POST left).
      expect((await h.blobs.list('pending/active/')).items).toEqual([]);
      expect((await h.blobs.list('pending/hook/')).items.map((i) => i.key.endsWith(view.id))).toEqual([true]);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('the retry a 503 invited, past the deadline, answers the generation canceled, not queued', async () => {
    const { queueWithOutage } = await import('./helpers.ts');
    const { queue, outage } = queueWithOutage(h.queue);
    const down = createApp({ ...h.deps, queue, clock });
    const send = () => down.request('/v1/generations', { method: 'POST', headers: { ...auth(), 'Idempotency-Key': 'k-dl' }, body: JSON.stringify({ prompt: 'apple', cancel_after: 30 }) });
    expect((await send()).status).toBe(503);
    outage.down = false;
    offsetMs = 40_000;
    const retry = await send();
    const body = (await retry.json()) as any;
    expect([retry.status, body.status, body.error?.code]).toEqual([200, 'canceled', 'deadline_exceeded']);
    expect(await h.queue.depth()).toBe(0);
  });
});
