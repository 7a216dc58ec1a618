// POST /v1/generations/{id}/webhook/redeliver: an ended generation's event sent again, now, to a real
// receiver on this machine; what it does to the delivery state, and when it is refused.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Webhook } from 'standardwebhooks';
import { createApp } from '../../functions/app.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import { WEBHOOK_RETRY_DELAYS_SEC } from '../../shared/webhooks.ts';
import { webhookReceiver } from '../helpers/webhook-receiver.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';
import { remote } from '../../cli/remote.ts';

const hook = webhookReceiver();

let h: Harness;
beforeEach(async () => {
  h = await harness();
  hook.reset();
});
afterEach(() => h.close());

/** Local mode: webhooks to this machine allowed. */
const app = () => createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true } });

type View = { id: string; status: string; webhook: { status: string; attempts: number; last_error: string | null; secret?: string } | null };

async function call(method: string, path: string, body?: unknown, key = h.alice): Promise<Response> {
  return app().request(path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
}

/** A generation with a webhook to the receiver, ended as `status`, its delivery state as `webhook` says; its id and secret. */
async function ended(status: 'succeeded' | 'failed' | 'canceled', webhook: Record<string, unknown>): Promise<{ id: string; secret: string }> {
  const res = await call('POST', '/v1/generations', { prompt: 'apple', webhook_url: hook.url });
  expect(res.status).toBe(202);
  const made = (await res.json()) as { id: string; webhook: { secret: string } };
  await h.jobs.update('acct_alice', made.id, (cur) => ({
    ...cur,
    status,
    attempts: 1,
    finished_at: new Date().toISOString(),
    ...(status === 'failed' ? { error: { code: 'runtime_failed', message: 'boom' } } : {}),
    webhook: { ...cur.webhook!, ...webhook },
  }));
  return { id: made.id, secret: made.webhook.secret };
}

const redeliver = (id: string, key = h.alice) => call('POST', `/v1/generations/${id}/webhook/redeliver`, undefined, key);
const givenUp = () => ({ attempts: 7, given_up_at: new Date(Date.now() - 60_000).toISOString(), last_error: 'HTTP 502' });

describe('POST /v1/generations/{id}/webhook/redeliver', () => {
  it('an event that was given up is sent again, the same event signed afresh, and the answer shows it delivered', async () => {
    const { id, secret } = await ended('succeeded', givenUp());
    const res = await redeliver(id);
    expect(res.status).toBe(200);
    const view = (await res.json()) as View;
    expect(view.webhook).toEqual({ url: hook.url, status: 'delivered', attempts: 1, last_error: null });
    expect(hook.received).toHaveLength(1);
    const got = hook.received[0]!;
    expect(got.headers['webhook-id']).toBe(`evt_${id}_succeeded`);
    const event = new Webhook(secret).verify(got.body, got.headers) as { type: string; data: { id: string } };
    expect([event.type, event.data.id]).toEqual(['generation.succeeded', id]);
  });

  it('a delivered event is sent again; so is a failed or canceled generation\'s', async () => {
    for (const status of ['succeeded', 'failed', 'canceled'] as const) {
      hook.reset();
      const { id } = await ended(status, { attempts: 1, delivered_at: new Date().toISOString() });
      const view = (await (await redeliver(id)).json()) as View;
      expect([view.webhook?.status, view.webhook?.attempts], status).toEqual(['delivered', 1]);
      expect(JSON.parse(hook.received[0]!.body).type, status).toBe(`generation.${status}`);
    }
  });

  it('a receiver still down: the answer says so, and the event is owed again on a fresh schedule, its marker there for the sweep', async () => {
    const { id } = await ended('succeeded', givenUp());
    hook.answer = 503;
    const before = Date.now();
    const view = (await (await redeliver(id)).json()) as View;
    expect(view.webhook).toMatchObject({ status: 'pending', attempts: 1, last_error: 'HTTP 503' });
    const record = (await h.jobs.get('acct_alice', id))!;
    expect(record.webhook!.given_up_at).toBeNull();
    expect(Date.parse(record.webhook!.next_attempt_at!)).toBeGreaterThanOrEqual(before + WEBHOOK_RETRY_DELAYS_SEC[0] * 1000);
    expect(await h.blobs.head(pendingJobKey('hook', 'acct_alice', id))).not.toBeNull();
  });

  it('a pending event waiting for its next retry is tried now, within its schedule', async () => {
    const { id } = await ended('succeeded', { attempts: 3, next_attempt_at: new Date(Date.now() + 3_600_000).toISOString(), last_error: 'HTTP 500' });
    const view = (await (await redeliver(id)).json()) as View;
    expect(view.webhook).toMatchObject({ status: 'delivered', attempts: 4, last_error: null });
    expect(hook.received).toHaveLength(1);
  });

  it('an event being sent at this moment is left to that attempt: nothing more is sent', async () => {
    const { id } = await ended('succeeded', { attempts: 1, claimed_until: new Date(Date.now() + 60_000).toISOString(), next_attempt_at: null });
    const res = await redeliver(id);
    expect(res.status).toBe(200);
    expect(((await res.json()) as View).webhook).toMatchObject({ status: 'pending', attempts: 1 });
    expect(hook.received).toHaveLength(0);
  });

  it('refused with a 409 saying why: no webhook, not ended yet, deleted, or refused at its POST; 404 for an id that is not the caller\'s', async () => {
    const plain = (await (await call('POST', '/v1/generations', { prompt: 'apple' })).json()) as { id: string };
    await h.jobs.update('acct_alice', plain.id, (cur) => ({ ...cur, status: 'succeeded', finished_at: new Date().toISOString() }));
    expect((await expectEnvelope(await redeliver(plain.id), 409, 'no_webhook')).message).toMatch(/asked for no webhook/);

    const queued = (await (await call('POST', '/v1/generations', { prompt: 'apple', webhook_url: hook.url })).json()) as { id: string };
    expect((await expectEnvelope(await redeliver(queued.id), 409, 'job_not_finished')).message).toMatch(/is queued: its event is sent when it ends/);

    const { id: gone } = await ended('succeeded', { attempts: 1, delivered_at: new Date().toISOString() });
    expect((await call('DELETE', `/v1/generations/${gone}`)).status).toBe(200);
    expect((await expectEnvelope(await redeliver(gone), 409, 'no_webhook')).message).toMatch(/is deleted/);

    const { id: refused } = await ended('failed', {});
    await h.jobs.update('acct_alice', refused, (cur) => ({ ...cur, error: { code: 'enqueue_failed', message: 'the queue was down' } }));
    expect((await expectEnvelope(await redeliver(refused), 409, 'no_webhook')).message).toMatch(/answered 503/);

    const { id } = await ended('succeeded', givenUp());
    await expectEnvelope(await redeliver(id, h.bob), 404, 'not_found');
    expect(hook.received).toHaveLength(0);
  });
});

describe('clipag remote redeliver', () => {
  async function cli(id: string): Promise<{ code: number; out: string; err: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const app0 = app();
    const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => app0.request(new Request(input, init))) as typeof fetch;
    const code = await remote(['redeliver', id, '--url', 'http://127.0.0.1:8787', '--key', h.alice], { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: fetchApp, sleep: async () => {} });
    return { code, out: out.join('\n'), err: err.join('\n') };
  }

  it('exit 0 when the event was delivered, 1 with the error when not, 1 with the reason when refused', async () => {
    const { id } = await ended('succeeded', givenUp());
    expect(await cli(id)).toEqual({ code: 0, out: `${id} webhook delivered`, err: '' });
    hook.answer = 500;
    expect(await cli(id)).toMatchObject({ code: 1, out: `${id} webhook pending (HTTP 500): retried on its schedule` });
    const plain = (await (await call('POST', '/v1/generations', { prompt: 'apple' })).json()) as { id: string };
    const refused = await cli(plain.id);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/409 no_webhook: generation \S+ asked for no webhook/);
  });
});
