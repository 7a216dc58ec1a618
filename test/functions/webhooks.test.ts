// Completion webhooks (ADR 0013): the URL policy, Standard Webhooks signatures (checked with the
// reference `standardwebhooks` library), the API surface, deliveries to a real local HTTP receiver,
// back-off and giving up, one sender among concurrent deliverers, and the sweep's retries.
import { markPending } from '../../shared/pending.ts';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { webhookReceiver, type ReceivedWebhook } from '../helpers/webhook-receiver.ts';
import { Webhook } from 'standardwebhooks';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { verifyLocalSignature } from '../../shared/adapters/local/signing.ts';
import { PENDING_JOBS_PREFIX, pendingJobKey } from '../../shared/keys.ts';
import {
  CANCEL_WEBHOOK_TIMEOUT_MS,
  COULD_NOT_CONNECT,
  DNS_TIMEOUT,
  PRIVATE_ONLY,
  checkWebhookUrl,
  deliverWebhook,
  httpWebhookSender,
  type WebhookResolver,
  isLinkLocalAddress,
  isPrivateAddress,
  newWebhookSecret,
  signWebhook,
  WEBHOOK_MAX_ATTEMPTS,
  WEBHOOK_RETRY_DELAYS_SEC,
  webhookNotifier,
  type WebhookDeliveryDeps,
} from '../../shared/webhooks.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';
import { expectEnvelope, harness, LIMITS, queueWithOutage, type Harness } from './helpers.ts';

type Received = ReceivedWebhook;
/** A webhook receiver on 127.0.0.1 that answers `hook.answer` and records every request. */
const hook = webhookReceiver();
const received = hook.received;

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
function localApp() {
  return createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true } });
}

/** Local mode, where a cancel's own attempt fails at once (its receiver down then): the sweep's retries are left. */
function appWhoseCancelAttemptFails() {
  return createApp({ ...h.deps, clock, limits: { ...LIMITS, webhookAllowPrivate: true }, webhookSend: async () => Promise.reject(new Error('connect ECONNREFUSED')) });
}

/**
 * Makes a generation with a webhook and cancels it while queued, through an app whose cancel's own
 * attempt fails (so the event is owed to the sweep, the subject of the tests that use it); its id.
 */
function creatorAndCanceller(): (key: string, url: string) => Promise<string> {
  const app = appWhoseCancelAttemptFails();
  return async (key, url) => {
    const res = await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', webhook_url: url }) });
    const { id } = (await res.json()) as { id: string };
    expect((await app.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${key}` } })).status).toBe(200);
    return id;
  };
}

async function postWithWebhook(url = hook.url): Promise<{ id: string; secret: string }> {
  const res = await localApp().request('/v1/generations', {
    method: 'POST',
    headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'apple', webhook_url: url }),
  });
  expect(res.status).toBe(202);
  const body = (await res.json()) as { id: string; webhook: { secret: string } };
  return { id: body.id, secret: body.webhook.secret };
}

function deliveryDeps(): WebhookDeliveryDeps {
  return { jobs: h.jobs, blobs: h.blobs, send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600, clock };
}

async function finish(id: string, status: 'succeeded' | 'failed' | 'canceled' = 'succeeded'): Promise<void> {
  const key = `outputs/acct_alice/${id}/0.png`;
  await h.blobs.put(key, new Uint8Array([137, 80, 78, 71]), { contentType: 'image/png' });
  await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status,
    attempts: 1,
    finished_at: clock().toISOString(),
    // As a worker ends it: a succeeded run's usage recorded (the sweep then frees its place, ADR 0033).
    ...(status === 'succeeded' ? { outputs: [{ key, width: 224, height: 224 }], usage_recorded_at: clock().toISOString() } : {}),
    ...(status === 'failed' ? { error: { code: 'runtime_failed', message: 'boom' } } : {}),
  }));
}

describe('webhook URL policy', () => {
  it('refuses private, loopback, link-local and reserved addresses in every spelling', () => {
    for (const a of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '192.0.2.7', '198.51.100.7', '203.0.113.7', '::1', '::ffff:127.0.0.1', 'fe80::1', 'fd00::1', '::a9fe:a9fe', '2002:a9fe:a9fe::', 'fec0::1', 'not-an-ip']) {
      expect(isPrivateAddress(a), a).toBe(true);
    }
    for (const a of ['8.8.8.8', '1.1.1.1', '2606:4700::1111', '::ffff:8.8.8.8']) expect(isPrivateAddress(a), a).toBe(false);
  });

  it('the IPv4-translated prefix is private; a link-local address wrapped in any IPv6 form is link-local (local mode refuses it too)', () => {
    expect(isPrivateAddress('::ffff:0:7f00:1')).toBe(true); // ::ffff:0:127.0.0.1
    for (const a of ['::ffff:169.254.169.254', '::ffff:a9fe:a9fe', '::ffff:0:a9fe:a9fe', '::a9fe:a9fe', '64:ff9b::a9fe:a9fe', '64:ff9b::169.254.169.254', '2002:a9fe:a9fe::1']) {
      expect(isLinkLocalAddress(a), a).toBe(true);
      expect(() => checkWebhookUrl(`http://[${a}]/hook`, { allowPrivate: true }), a).toThrow(/link-local/);
    }
    for (const a of ['::ffff:10.0.0.1', '64:ff9b::808:808', '2002:808:808::1', '2001:4860::8888']) expect(isLinkLocalAddress(a), a).toBe(false);
  });

  it('in AWS (no private): https only, public hosts, no credentials or fragments', () => {
    const policy = { allowPrivate: false };
    expect(checkWebhookUrl('https://hooks.example.com/clipag?x=1', policy).hostname).toBe('hooks.example.com');
    expect(checkWebhookUrl('https://8.8.8.8/h', policy).hostname).toBe('8.8.8.8');
    expect(checkWebhookUrl('https://[2001:4860:4860::8888]/h', policy).hostname).toBe('[2001:4860:4860::8888]'); // public, beside Teredo's 2001::/32
    for (const bad of [
      'http://hooks.example.com/',
      'ftp://hooks.example.com/',
      'https://user:pw@hooks.example.com/',
      'https://hooks.example.com/#frag',
      'https://localhost/',
      'https://api.localhost/',
      'https://127.0.0.1/',
      'https://169.254.169.254/latest/meta-data/',
      'https://[::1]/',
      'https://[::ffff:10.0.0.1]/',
      // A trailing dot names the same host; Teredo, local-use NAT64, the discard and documentation prefixes embed or name no receiver.
      'https://localhost./',
      'https://api.localhost./',
      'https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/',
      'https://[64:ff9b:1::a00:1]/',
      'https://[100::1]/',
      'https://[2001:db8::1]/',
      'not a url',
    ]) {
      expect(() => checkWebhookUrl(bad, policy), bad).toThrow(/webhook_url/);
    }
    // Local mode: a receiver on this machine, over http, is fine.
    expect(checkWebhookUrl('http://127.0.0.1:9000/h', { allowPrivate: true }).port).toBe('9000');
    // But never the instance metadata service, whatever the mode and spelling (clipag serve on a cloud machine).
    for (const url of ['http://169.254.169.254/latest/meta-data/', 'http://[fe80::1]/', 'http://[::ffff:169.254.169.254]/', 'http://[fd00:ec2::254]/']) {
      expect(() => checkWebhookUrl(url, { allowPrivate: true }), url).toThrow(/link-local/);
    }
  });

  it('the sender refuses a name that resolves to a private address, and connects to an allowed one', async () => {
    const port = hook.port;
    // Names answer what the test says (no DNS here); the receiver listens on 127.0.0.1.
    const answers: Record<string, string[]> = {
      'loopback.example': ['127.0.0.1'],
      'internal.example': ['10.0.0.7', '192.168.1.2'],
      'metadata.example': ['169.254.169.254'],
      'mixed.example': ['169.254.169.254', '127.0.0.1'],
      'v6.example': ['::1', 'fd00::5'],
    };
    const resolve: WebhookResolver = (hostname, _options, callback) => {
      const found = answers[hostname];
      if (!found) return callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), []);
      callback(null, found.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
    };
    // The receiver's port allowed, so that only the addresses stand between the sender and it.
    const strict = httpWebhookSender({ allowPrivate: false, ports: [port] }, { timeoutMs: 1000, resolve });
    for (const host of ['loopback.example', 'internal.example', 'metadata.example', 'mixed.example', 'v6.example']) {
      await expect(strict({ url: `https://${host}:${port}/hooks`, headers: {}, body: '{}' }), host).rejects.toMatchObject({ code: PRIVATE_ONLY });
    }
    // `localhost` is refused by name, before any lookup; http only in local mode.
    await expect(strict({ url: 'https://localhost/x', headers: {}, body: '{}' })).rejects.toThrow(/public address/);
    await expect(strict({ url: `http://127.0.0.1:1/x`, headers: {}, body: '{}' })).rejects.toThrow(/https/);
    expect(received).toHaveLength(0);
    // Local mode allows private addresses but never link-local ones: of a mixed answer, the loopback one is used.
    const local = httpWebhookSender({ allowPrivate: true }, { timeoutMs: 1000, resolve });
    expect(await local({ url: `http://mixed.example:${port}/hooks`, headers: {}, body: '{}' })).toBe(200);
    await expect(local({ url: `http://metadata.example:${port}/hooks`, headers: {}, body: '{}' })).rejects.toMatchObject({ code: PRIVATE_ONLY });
    expect(received).toHaveLength(1);
  });

  it('the sender never reaches this machine through a literal address, in any spelling', async () => {
    // The receiver listens on 127.0.0.1; with private addresses refused, nothing may arrive.
    const port = hook.port;
    const send = httpWebhookSender({ allowPrivate: false }, { timeoutMs: 1000 });
    for (const host of ['127.0.0.1', '2130706433', '0x7f000001', '0177.0.0.1', '127.1', '0', '[::1]', '[::ffff:127.0.0.1]', '[::ffff:7f00:1]', '169.254.169.254', '10.0.0.1', '[fe80::1]', '[::]']) {
      await expect(send({ url: `https://${host}:${port}/hooks`, headers: {}, body: '{}' }), host).rejects.toThrow(/public address|link-local/);
    }
    // The same receiver over a name, with private addresses allowed (local mode), is reached: the
    // refusals above are the policy, not a dead receiver.
    expect(await httpWebhookSender({ allowPrivate: true })({ url: hook.url, headers: {}, body: '{}' })).toBe(200);
    await expect(httpWebhookSender({ allowPrivate: true }, { timeoutMs: 1000 })({ url: 'http://169.254.169.254/latest', headers: {}, body: '{}' })).rejects.toThrow(/link-local/);
    expect(received).toHaveLength(1);
  });
});

describe('signatures', () => {
  it('verify with the standardwebhooks reference library, and fail on any change', () => {
    const secret = newWebhookSecret();
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
    const ts = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ type: 'generation.succeeded', data: { id: 'x' } });
    const headers = { 'webhook-id': 'evt_1', 'webhook-timestamp': String(ts), 'webhook-signature': signWebhook(secret, 'evt_1', ts, body) };
    expect(new Webhook(secret).verify(body, headers)).toEqual(JSON.parse(body));
    expect(() => new Webhook(secret).verify(`${body} `, headers)).toThrow();
    expect(() => new Webhook(newWebhookSecret()).verify(body, headers)).toThrow();
    expect(() => new Webhook(secret).verify(body, { ...headers, 'webhook-id': 'evt_2' })).toThrow();
  });
});

describe('the API', () => {
  it('the OpenAPI document tells a receiver to answer non-2xx for a generation id it does not know yet (the event can beat the POST\'s answer, and its secret)', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as { components: { schemas: Record<string, { properties: Record<string, { description: string }> }> } };
    const description = doc.components.schemas.GenerationRequest!.properties.webhook_url!.description;
    expect(description).toMatch(/account webhook secret \(POST \/v1\/webhook-secret/);
    expect(description).toMatch(/before it has that response \(with `Prefer: wait`/);
    expect(description).toMatch(/generation id it does not know yet with a non-2xx status .*never a 2xx/);
    expect(description).toMatch(/https on port 443/);
  });

  it('local mode refuses a webhook to the instance metadata service at POST (400), though it allows this machine', async () => {
    const res = await localApp().request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'apple', webhook_url: 'http://169.254.169.254/latest' }),
    });
    expect((await expectEnvelope(res, 400, 'validation_error')).param).toBe('webhook_url');
  });

  it('a webhook_url on port 0 is a 400 (Node would deliver it to 80 or 443), in local mode too', async () => {
    const cases: Array<[ReturnType<typeof localApp> | typeof h.app, string]> = [
      [localApp(), 'http://127.0.0.1:0/hook'],
      [localApp(), 'http://127.0.0.1:000/hook'],
      [h.app, 'https://hooks.example.com:0/x'],
    ];
    for (const [app, url] of cases) {
      const res = await app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt: 'apple', webhook_url: url }),
      });
      const error = await expectEnvelope(res, 400, 'validation_error');
      expect(error.param).toBe('webhook_url');
      expect(error.message).toMatch(/port 0/);
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });

  it('a bad webhook_url is a 400 naming it, and nothing is written', async () => {
    for (const url of ['http://hooks.example.com/x', 'https://10.0.0.1/x', 'nope', `https://x.example/${'a'.repeat(2000)}`]) {
      const res = await h.request('/v1/generations', { json: { prompt: 'apple', webhook_url: url } });
      const error = await expectEnvelope(res, 400, 'validation_error');
      expect(error.param).toBe('webhook_url');
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    expect((await h.blobs.list(PENDING_JOBS_PREFIX)).items).toEqual([]);
  });

  it('the POST answers the signing secret once; GET and lists show the webhook without it; the spec stays clean', async () => {
    const app = localApp();
    const post = () =>
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'hook-1' },
        body: JSON.stringify({ prompt: 'apple', webhook_url: hook.url }),
      });
    const created = (await (await post()).json()) as any;
    expect(created.webhook).toEqual({ url: hook.url, status: 'pending', attempts: 0, last_error: null, secret: expect.stringMatching(/^whsec_/) });
    expect(created.request.webhook_url).toBeUndefined();
    const replay = (await (await post()).json()) as any;
    expect(replay.webhook.secret).toBe(created.webhook.secret); // a retried POST still learns it
    const got = (await (await app.request(`/v1/generations/${created.id}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect(got.webhook).toEqual({ url: hook.url, status: 'pending', attempts: 0, last_error: null });
    const list = (await (await app.request('/v1/generations', { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect(list.data[0].webhook.secret).toBeUndefined();
    // The webhook marker is written with the job; the message marker went with the send.
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items.map((i) => i.key)).toEqual([pendingJobKey('hook', 'acct_alice', created.id)]);
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}msg/`)).items).toEqual([]);
    // Jobs without a webhook say so.
    const plain = (await (await h.request('/v1/generations', { json: { prompt: 'pear' } })).json()) as any;
    expect(plain.webhook).toBeNull();
  });
});

describe('delivery', () => {
  it('an ended job is announced once, signed, with the generation and its output links', async () => {
    const { id, secret } = await postWithWebhook();
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('nothing_to_send'); // still queued
    await finish(id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('delivered');
    expect(received).toHaveLength(1);
    const [{ headers, body }] = received as [Received];
    const event = new Webhook(secret).verify(body, headers as Record<string, string>) as any;
    expect(headers['webhook-id']).toBe(`evt_${id}_succeeded`);
    expect(event.type).toBe('generation.succeeded');
    expect(event.data).toMatchObject({ id, status: 'succeeded', object: 'generation' });
    expect(event.data.webhook.secret).toBeUndefined(); // the body never carries the key
    const link = await fetchLocalSigned(event.data.outputs[0].url);
    expect([...link]).toEqual([137, 80, 78, 71]);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('nothing_to_send');
    expect(received).toHaveLength(1);
    expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String), last_error: null });
  });

  it('deleting the generation keeps only the origin of a settled webhook URL (its path and query may hold tokens); one still owed keeps it until it settles', async () => {
    const tokenUrl = `${hook.url}/T0K3N?sig=s3cr3t`;
    const origin = `${new URL(hook.url).origin}/`;
    const del = (id: string) => localApp().request(`/v1/generations/${id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${h.alice}` } });
    // Delivered, then deleted.
    const sent = await postWithWebhook(tokenUrl);
    await finish(sent.id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', sent.id)).toBe('delivered');
    const view = (await (await del(sent.id)).json()) as any;
    expect(view.webhook).toMatchObject({ url: origin, status: 'delivered', attempts: 1 });
    expect(JSON.stringify(await h.jobs.get('acct_alice', sent.id))).not.toMatch(/T0K3N|s3cr3t/);
    // Deleted while owed (its receiver failing): the URL stays for the retries, and goes once it is delivered.
    hook.answer = 500;
    const owed = await postWithWebhook(tokenUrl);
    await finish(owed.id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', owed.id)).toBe('failed');
    await del(owed.id);
    expect((await h.jobs.get('acct_alice', owed.id))!.webhook!.url).toBe(tokenUrl);
    hook.answer = 200;
    offsetMs += 3_600_000;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', owed.id)).toBe('delivered');
    expect(JSON.parse(received.at(-1)!.body).data).toMatchObject({ id: owed.id, deleted_at: expect.any(String), outputs: [] }); // it announces the deleted view
    expect((await h.jobs.get('acct_alice', owed.id))!.webhook!.url).toBe(origin);
  });

  it('a DELETE that lands while an attempt signs its links: the event carries the deleted view, not the prompt', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    const deps = deliveryDeps();
    let deleted = false;
    const blobs = new Proxy(deps.blobs, {
      get: (t, p, r) =>
        p === 'signedGetUrl'
          ? async (...args: Parameters<typeof t.signedGetUrl>) => {
              if (!deleted) {
                deleted = true;
                expect((await localApp().request(`/v1/generations/${id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
              }
              return t.signedGetUrl(...args);
            }
          : Reflect.get(t, p, r),
    });
    expect(await deliverWebhook({ ...deps, blobs }, 'acct_alice', id)).toBe('delivered');
    expect(deleted).toBe(true);
    const { data } = JSON.parse(received.at(-1)!.body);
    expect(data).toMatchObject({ id, deleted_at: expect.any(String), outputs: [] });
    expect(JSON.stringify(data)).not.toContain('"apple"'); // the prompt
  });

  it('a failed attempt backs off per the schedule; after the last one it gives up, and the view says failed', async () => {
    const { id } = await postWithWebhook();
    await finish(id, 'failed');
    hook.answer = 503;
    for (let attempt = 1; attempt <= WEBHOOK_MAX_ATTEMPTS; attempt++) {
      const result = await deliverWebhook(deliveryDeps(), 'acct_alice', id);
      expect(result).toBe(attempt < WEBHOOK_MAX_ATTEMPTS ? 'failed' : 'gave_up');
      const w = (await h.jobs.get('acct_alice', id))!.webhook!;
      expect(w.attempts).toBe(attempt);
      expect(w.last_error).toBe('HTTP 503');
      if (attempt < WEBHOOK_MAX_ATTEMPTS) {
        const wait = WEBHOOK_RETRY_DELAYS_SEC[attempt - 1]! * 1000;
        expect(Date.parse(w.next_attempt_at!) - clock().getTime()).toBeGreaterThan(wait - 5000);
        expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('not_due');
        offsetMs += wait + 1000;
      }
    }
    expect(received).toHaveLength(WEBHOOK_MAX_ATTEMPTS);
    expect(new Set(received.map((r) => r.headers['webhook-id']))).toEqual(new Set([`evt_${id}_failed`])); // one event id throughout
    const view = (await (await h.request(`/v1/generations/${id}`)).json()) as any;
    expect(view.webhook).toMatchObject({ status: 'failed', attempts: WEBHOOK_MAX_ATTEMPTS, last_error: 'HTTP 503' });
    hook.answer = 200;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('nothing_to_send');
  });

  it('a redirect is a failure (not followed), and an unreachable receiver is recorded as one', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    hook.answer = 302;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('failed');
    expect((await h.jobs.get('acct_alice', id))!.webhook!.last_error).toBe('HTTP 302');
    const dead = await postWithWebhook('http://127.0.0.1:1/nobody');
    await finish(dead.id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', dead.id)).toBe('failed');
    // One class, not the socket's text (which names the address and port).
    expect((await h.jobs.get('acct_alice', dead.id))!.webhook!.last_error).toBe(COULD_NOT_CONNECT);
    // https to the plain-http receiver (an open port, but no TLS there) reads the same as the closed
    // port: told apart, they would say which ports of a host are open and what listens there.
    const tls = await postWithWebhook(hook.url.replace(/^http:/, 'https:'));
    await finish(tls.id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', tls.id)).toBe('failed');
    expect((await h.jobs.get('acct_alice', tls.id))!.webhook!.last_error).toBe(COULD_NOT_CONNECT);
    expect(COULD_NOT_CONNECT).toMatch(/^could not connect .*certificate/); // what the receiver's owner can check
    // A URL the check refuses at send time (a rule tightened since the job was made) says why, as at the API.
    const strictDeps = { ...deliveryDeps(), send: httpWebhookSender({ allowPrivate: false }) };
    const refused = await postWithWebhook('http://127.0.0.1:1/was-allowed');
    await finish(refused.id);
    expect(await deliverWebhook(strictDeps, 'acct_alice', refused.id)).toBe('failed');
    expect((await h.jobs.get('acct_alice', refused.id))!.webhook!.last_error).toMatch(/^webhook_url must /);
  });

  it("the caller's record does not tell a name that does not resolve from one that resolves only to private addresses (no probing of internal names)", async () => {
    const errors: string[] = [];
    for (const cause of [
      Object.assign(new Error('db.corp.internal resolves only to private addresses'), { code: PRIVATE_ONLY }),
      Object.assign(new Error('getaddrinfo ENOTFOUND db.corp.internal'), { code: 'ENOTFOUND' }),
    ]) {
      const { id } = await postWithWebhook('http://db.corp.internal/hook');
      await finish(id);
      const logs: unknown[] = [];
      const deps = { ...deliveryDeps(), send: () => Promise.reject(cause), log: (entry: unknown) => void logs.push(entry) };
      expect(await deliverWebhook(deps, 'acct_alice', id)).toBe('failed');
      errors.push((await h.jobs.get('acct_alice', id))!.webhook!.last_error!);
      expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', detail: cause.message })); // the operator still sees which
    }
    expect(errors).toEqual(['db.corp.internal does not resolve to a public address', 'db.corp.internal does not resolve to a public address']);
  });

  it('a body that cannot be built (a link the store will not sign) is a failed attempt, not an endless retry', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    const broken = new Proxy(h.blobs, {
      get: (target, prop, receiver) => (prop === 'signedGetUrl' ? () => Promise.reject(new Error('cannot sign')) : Reflect.get(target, prop, receiver)),
    });
    const logged: Array<{ msg: string; detail?: unknown }> = [];
    expect(await deliverWebhook({ ...deliveryDeps(), blobs: broken, log: (e) => logged.push(e as never) }, 'acct_alice', id)).toBe('failed');
    // The caller's record blames no URL of theirs; the operator's log has the cause.
    expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 1, last_error: 'the event could not be prepared (a fault on our side); it is retried', claimed_until: null });
    expect(logged).toContainEqual(expect.objectContaining({ detail: 'cannot sign' }));
    expect(received).toEqual([]);
  });

  it('concurrent deliverers (worker and sweeps) send one request', async () => {
    const { id } = await postWithWebhook();
    await finish(id, 'canceled');
    const results = await Promise.all([1, 2, 3, 4].map(() => deliverWebhook(deliveryDeps(), 'acct_alice', id)));
    expect(results.filter((r) => r === 'delivered')).toHaveLength(1);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0]!.body).type).toBe('generation.canceled');
  });

  it('a claim that landed but whose reply was lost is still this deliverer\'s: it sends now, not after the claim lapses', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    const lossy = lostReplyOnce(h.blobs, (key, body) => key.startsWith('jobs/') && Buffer.from(body).toString().includes('"claimed_until":"'));
    const jobs = new BlobJobStore(lossy.blobs);
    expect(await deliverWebhook({ ...deliveryDeps(), jobs }, 'acct_alice', id)).toBe('delivered');
    expect([lossy.lost(), received.length]).toEqual([1, 1]);
    const record = (await h.jobs.get('acct_alice', id))!;
    expect(record.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String), claimed_until: null });
    expect(record.webhook_claim).toBeUndefined();
  });
});

describe('bounds', () => {
  it('an attempt has one deadline: a receiver that trickles its headers cannot hold it (or a drain)', async () => {
    const trickler = createServer((_req, res) => {
      const socket = res.socket!;
      socket.write('HTTP/1.1 200 OK\r\n');
      const t = setInterval(() => socket.write('X-Slow: 1\r\n'), 50); // never ends its headers
      socket.on('close', () => clearInterval(t));
    });
    await new Promise<void>((r) => trickler.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(trickler.address() as AddressInfo).port}/slow`;
      // The attempt's own deadline ended it (its message says which bound): the trickle would go on for ever.
      await expect(httpWebhookSender({ allowPrivate: true }, { timeoutMs: 400 })({ url, headers: {}, body: '{}' })).rejects.toThrow(/^no answer within 0.4 s$/);
    } finally {
      trickler.closeAllConnections();
      await new Promise<void>((r) => trickler.close(() => r()));
    }
  });

  it('a drain waits for deliveries in flight, but not beyond its cap', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    // A send that settles only when the test says: the drain's cap must end the wait while it is out.
    let release: ((status: number) => void) | undefined;
    const notifier = webhookNotifier({ ...deliveryDeps(), send: () => new Promise<number>((r) => (release = r)) });
    notifier.notify('acct_alice', id);
    await notifier.drain(200);
    expect(release).toBeDefined(); // the send started, and is still out
    expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 0, delivered_at: null });
    // Once it settles, a drain waits for it to be recorded.
    release!(204);
    await notifier.drain();
    expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String) });
  });
});

describe('a cancel while queued (no worker announces that end): the cancel makes the first attempt itself', () => {
  const cancel = (id: string) => localApp().request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } });

  it('the receiver gets the signed generation.canceled event before the cancel answers, with no sweep; the sweep then only drops the marker', async () => {
    const { id, secret } = await postWithWebhook();
    const res = await cancel(id);
    expect(res.status).toBe(200);
    const answer = (await res.json()) as any;
    expect(answer).toMatchObject({ id, status: 'canceled', webhook: { status: 'delivered', attempts: 1, last_error: null } });
    expect(answer.webhook.secret).toBeUndefined();
    expect(received).toHaveLength(1);
    const { body, headers } = received[0]!;
    expect(headers['webhook-id']).toBe(`evt_${id}_canceled`);
    expect(new Webhook(secret).verify(body, headers)).toMatchObject({ type: 'generation.canceled', data: { id, status: 'canceled' } });
    // The sweep sees the attempt: nothing sent again, the marker dropped.
    expect(await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } })).toMatchObject({ webhooksDelivered: 0, webhooksFailed: 0, cleared: 1 }); // its hook marker (the cancel dropped its active one)
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items).toEqual([]);
    expect(received).toHaveLength(1);
  });

  it('a receiver that never answers: the cancel still answers, once its own deadline has passed, with the failed attempt the sweep retries when due', async () => {
    let held = true;
    const requests: string[] = [];
    const silent = createServer((req, res) => {
      requests.push(String(req.headers['webhook-id']));
      req.resume();
      if (!held) res.writeHead(204).end();
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const { id } = await postWithWebhook(`http://127.0.0.1:${(silent.address() as AddressInfo).port}/never`);
      const res = await cancel(id);
      expect(res.status).toBe(200);
      // Answered while the receiver still holds the request it got (it never answers): the attempt's own deadline ended the wait.
      expect(requests).toEqual([`evt_${id}_canceled`]);
      expect(await res.json()).toMatchObject({ id, status: 'canceled', webhook: { status: 'pending', attempts: 1, last_error: `no answer within ${CANCEL_WEBHOOK_TIMEOUT_MS / 1000} s` } });
      const after = (await h.jobs.get('acct_alice', id))!.webhook!;
      expect(after).toMatchObject({ attempts: 1, delivered_at: null, given_up_at: null, claimed_until: null });
      expect(Date.parse(after.next_attempt_at!)).toBeGreaterThan(clock().getTime()); // scheduled, not due yet
      // A repeat cancel does not try again (the sweep owns the retries), nor does the sweep before the retry is due.
      expect((await cancel(id)).status).toBe(200);
      const sweepDeps = { blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } };
      expect(await sweepQueuedJobs(sweepDeps)).toMatchObject({ webhooksDelivered: 0, webhooksFailed: 0 });
      expect(requests).toHaveLength(1);
      // Once due, the sweep retries it (the same event id), and the receiver now answers.
      held = false;
      offsetMs += WEBHOOK_RETRY_DELAYS_SEC[0] * 1000 + 1000;
      expect(await sweepQueuedJobs(sweepDeps)).toMatchObject({ webhooksDelivered: 1 });
      expect(requests).toEqual([`evt_${id}_canceled`, `evt_${id}_canceled`]);
      expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 2, delivered_at: expect.any(String), last_error: null });
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('a receiver that refuses the connection, or a store that cannot record the attempt: the cancel still answers 200 canceled', async () => {
    const refused = await postWithWebhook('http://127.0.0.1:1/nobody');
    const res = await cancel(refused.id);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: 'canceled', webhook: { status: 'pending', attempts: 1, last_error: COULD_NOT_CONNECT } });

    // The attempt's claim cannot be written: logged, and the marker left for the sweep.
    const { id } = await postWithWebhook();
    const logs: Array<Record<string, unknown>> = [];
    let cancelWritten = false;
    const jobs = new Proxy(h.jobs, {
      get: (target, prop, receiver) =>
        prop === 'update'
          ? async (...a: Parameters<typeof target.update>) => {
              if (cancelWritten) throw new Error('injected: the store is down');
              cancelWritten = true;
              return target.update(...a);
            }
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, jobs, clock, limits: { ...LIMITS, webhookAllowPrivate: true }, log: (e) => logs.push(e) });
    const down = await app.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } });
    expect(down.status).toBe(200);
    expect(await down.json()).toMatchObject({ status: 'canceled', webhook: { status: 'pending', attempts: 0 } });
    expect(received).toEqual([]);
    expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', job_id: id, msg: expect.stringMatching(/webhook attempt was not recorded; the queued-job sweep sends it/) }));
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items.map((i) => i.key)).toContain(pendingJobKey('hook', 'acct_alice', id));
  });
});

/**
 * A DNS server on 127.0.0.1 (UDP) that answers A queries for the names in `answers` and never answers
 * any other query: a name whose DNS is a tarpit. Records each question as it arrives.
 */
async function dnsServer(answers: Record<string, string>): Promise<{ server: string; questions: string[]; close(): Promise<void> }> {
  const socket: UdpSocket = createSocket('udp4');
  const questions: string[] = [];
  socket.on('message', (query, peer) => {
    // The question: length-prefixed labels from byte 12, then its type and class.
    const labels: string[] = [];
    let at = 12;
    while (query[at]! > 0) {
      labels.push(query.subarray(at + 1, at + 1 + query[at]!).toString('latin1'));
      at += 1 + query[at]!;
    }
    const qtype = query.readUInt16BE(at + 1);
    const name = labels.join('.').toLowerCase();
    questions.push(`${name} ${qtype === 1 ? 'A' : qtype === 28 ? 'AAAA' : qtype}`);
    const address = answers[name];
    if (address === undefined) return; // the tarpit: no answer, ever
    const question = query.subarray(12, at + 5);
    const header = Buffer.alloc(12);
    query.copy(header, 0, 0, 2); // the query's id
    header.writeUInt16BE(0x8180, 2); // a response, recursion desired and available, no error
    header.writeUInt16BE(1, 4); // one question
    const records: Buffer[] = [];
    if (qtype === 1) {
      const record = Buffer.alloc(16);
      record.writeUInt16BE(0xc00c, 0); // the question's name
      record.writeUInt16BE(1, 2); // A
      record.writeUInt16BE(1, 4); // IN
      record.writeUInt32BE(60, 6); // TTL
      record.writeUInt16BE(4, 10);
      address.split('.').forEach((octet, i) => record.writeUInt8(Number(octet), 12 + i));
      records.push(record);
    }
    header.writeUInt16BE(records.length, 6); // AAAA: none (no data)
    socket.send(Buffer.concat([header, question, ...records]), peer.port, peer.address);
  });
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  return { server: `127.0.0.1:${socket.address().port}`, questions, close: () => new Promise<void>((r) => socket.close(() => r())) };
}

describe('name lookups (c-ares, bounded and cancelled: not the threadpool\'s getaddrinfo)', () => {
  let dns: Awaited<ReturnType<typeof dnsServer>>;
  beforeEach(async () => {
    dns = await dnsServer({ 'victim.example': '127.0.0.1' });
  });
  afterEach(() => dns.close());

  it('a name whose DNS never answers fails within the lookup\'s bound, and the record says it was DNS', async () => {
    // AWS's policy, whose names always go to c-ares; the attempt's own deadline (10 s) is far off.
    const send = httpWebhookSender({ allowPrivate: false }, { dns: { servers: [dns.server], timeoutMs: 300 } });
    await expect(send({ url: 'https://x.tarpit.example/hook', headers: {}, body: '{}' })).rejects.toMatchObject({ code: DNS_TIMEOUT });
    // Both families were asked of the test's server (not the system's resolver).
    expect(dns.questions).toEqual(expect.arrayContaining(['x.tarpit.example A', 'x.tarpit.example AAAA']));
    const { id } = await postWithWebhook('https://x.tarpit.example/hook');
    await finish(id);
    expect(await deliverWebhook({ ...deliveryDeps(), send }, 'acct_alice', id)).toBe('failed');
    expect((await h.jobs.get('acct_alice', id))!.webhook!.last_error).toBe('x.tarpit.example does not resolve to a public address: no answer from its DNS servers within 0.3 s');
  });

  it('names whose DNS never answers do not hold up another owner\'s webhook in the same sweep: it is delivered while theirs are still pending', async () => {
    const port = hook.port;
    const early = (await h.keys.create({ name: 'early', owner: 'acct_aaaa' })).secret;
    const createAndCancel = creatorAndCanceller();
    // More tarpit names than getaddrinfo's two threadpool slots, in the sweep's first wave (8 at once).
    const tarpits: string[] = [];
    for (let i = 0; i < 8; i++) tarpits.push(await createAndCancel(early, `http://t${i}.tarpit.example:${port}/hook`));
    const victim = await createAndCancel(h.alice, `http://victim.example:${port}/hooks`);
    offsetMs += WEBHOOK_RETRY_DELAYS_SEC[0] * 1000 + 1000; // the cancels' failed attempts are due again
    // Names through the test's DNS server (local mode's policy, so that the victim's 127.0.0.1 is allowed).
    const http = httpWebhookSender({ allowPrivate: true }, { dns: { servers: [dns.server], timeoutMs: 2000 } });
    const events: string[] = [];
    let pending = 0;
    const send = async (r: { url: string; headers: Record<string, string>; body: string }) => {
      const who = r.url.includes('tarpit') ? 'tarpit' : 'victim';
      pending++;
      try {
        return await http(r);
      } finally {
        pending--;
        events.push(`${who} settled, ${pending} still out`);
      }
    };
    const report = await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send, signedUrlTtlSec: 600 } });
    expect(report).toMatchObject({ webhooksDelivered: 1, webhooksFailed: 8 });
    expect((await h.jobs.get('acct_alice', victim))!.webhook).toMatchObject({ attempts: 2, delivered_at: expect.any(String), last_error: null });
    expect(received.map((r) => r.headers['webhook-id'])).toEqual([`evt_${victim}_canceled`]);
    // The victim's attempt ended first, while the tarpits' lookups were still out.
    expect(events[0]).toMatch(/^victim settled, [1-7] still out$/);
    for (const id of tarpits) {
      expect((await h.jobs.get('acct_aaaa', id))!.webhook!.last_error).toMatch(/^t\d\.tarpit\.example does not resolve to a public address: no answer from its DNS servers within 2 s$/);
    }
  });

  it('local mode keeps the system resolver where no DNS servers are named (localhost and the hosts file are what c-ares never reads)', async () => {
    const port = hook.port;
    expect(await httpWebhookSender({ allowPrivate: true }, { timeoutMs: 2000 })({ url: `http://localhost:${port}/hooks`, headers: {}, body: '{}' })).toBe(200);
    expect(received).toHaveLength(1);
  });
});

describe('ports (AWS: 443 only, or the operator\'s list), and odd URLs: a 400 naming webhook_url, never a 500', () => {
  it('in AWS a webhook URL names port 443 (or none); any other is a 400 at POST, which says which ports are allowed; local mode allows any', async () => {
    const aws = { allowPrivate: false };
    expect(checkWebhookUrl('https://hooks.example.com/x', aws).port).toBe('');
    expect(checkWebhookUrl('https://hooks.example.com:443/x', aws).href).toBe('https://hooks.example.com/x');
    for (const url of ['https://hooks.example.com:8443/x', 'https://hooks.example.com:22/', 'https://8.8.8.8:6379/', 'https://[2606:4700::1111]:80/']) {
      expect(() => checkWebhookUrl(url, aws), url).toThrow(/^webhook_url's port \d+ is not allowed here: webhooks go to port 443 only/);
    }
    // The operator's list (CLIPAG_WEBHOOK_PORTS).
    expect(checkWebhookUrl('https://hooks.example.com:8443/x', { allowPrivate: false, ports: [443, 8443] }).port).toBe('8443');
    expect(() => checkWebhookUrl('https://hooks.example.com/x', { allowPrivate: false, ports: [8443] })).toThrow(/port 443 is not allowed here: webhooks go to port 8443 only$/);
    expect(checkWebhookUrl('http://127.0.0.1:9000/h', { allowPrivate: true }).port).toBe('9000');
    // At the API, before anything is written; the sender refuses it too (a job made before the rule).
    const res = await h.request('/v1/generations', { json: { prompt: 'apple', webhook_url: 'https://hooks.example.com:8443/x' } });
    const error = await expectEnvelope(res, 400, 'validation_error');
    expect(error).toMatchObject({ param: 'webhook_url', message: expect.stringMatching(/port 8443 is not allowed here: webhooks go to port 443 only/) });
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    await expect(httpWebhookSender(aws)({ url: 'https://hooks.example.com:8443/x', headers: {}, body: '{}' })).rejects.toThrow(/port 8443 is not allowed/);
    // The operator's list reaches the API's check (CLIPAG_WEBHOOK_PORTS → limits.webhookPorts).
    const listed = createApp({ ...h.deps, limits: { ...h.deps.limits, webhookPorts: [443, 8443] } });
    const made = await listed.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'apple', webhook_url: 'https://hooks.example.com:8443/x' }),
    });
    expect(made.status).toBe(202);
  });

  it('odd spellings: each is a 400 with a message that says what is wrong, or accepted (canonical href)', async () => {
    const cases: Array<[string, RegExp | 'accepted']> = [
      ['https://hooks.example.com/#', /must not have a #fragment/],
      ['https://hooks.example.com/x#frag', /must not have a #fragment/],
      ['https://@hooks.example.com/', /must not carry credentials/],
      ['https://:@hooks.example.com/', /must not carry credentials/],
      ['https:@hooks.example.com/', /must not carry credentials/],
      ['https://hooks.example.com:65536/', /has port 65536; a port is 1-65535/],
      ['https://[2606:4700::1111]:99999/', /has port 99999; a port is 1-65535/],
      ['https://hooks.example.com:123456789012345678901234567890/', /a port is 1-65535/],
      ['https://hooks.example.com:abc/', /is not a valid absolute URL/],
      ['not a url', /is not a valid absolute URL/],
      ['', /is not a valid absolute URL/],
      ['javascript:alert(1)', /must use https/],
      [`https://x.example/${'é'.repeat(1000)}`, /characters once encoded .*at most 2000/],
      ['https:hooks.example.com/no-slashes', 'accepted'],
      ['https:\\\\hooks.example.com\\back\\slashes', 'accepted'],
      ['https://hooks.example.com/path/@not-credentials?q=a@b', 'accepted'],
    ];
    for (const [url, want] of cases) {
      const res = await h.request('/v1/generations', { json: { prompt: 'apple', webhook_url: url } });
      if (want === 'accepted') {
        expect(res.status, url).toBe(202);
        continue;
      }
      const error = await expectEnvelope(res, 400, 'validation_error');
      expect(error.param, url).toBe('webhook_url');
      expect(error.message, url).toMatch(want);
    }
    // The record keeps what an attempt calls: the canonical form, not the spelling typed.
    const stored = (await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.webhook?.url).sort();
    expect(stored).toEqual(['https://hooks.example.com/back/slashes', 'https://hooks.example.com/no-slashes', 'https://hooks.example.com/path/@not-credentials?q=a@b']);
    // What an attempt calls: the canonical form.
    expect(checkWebhookUrl('https:hooks.example.com/no-slashes', { allowPrivate: false }).href).toBe('https://hooks.example.com/no-slashes');
    expect(checkWebhookUrl('https:\\\\hooks.example.com\\back\\slashes', { allowPrivate: false }).href).toBe('https://hooks.example.com/back/slashes');
    expect(checkWebhookUrl(' https://HOOKS.example.com:443/a b ', { allowPrivate: false }).href).toBe('https://hooks.example.com/a%20b');
  });
});

describe('the sweep', () => {
  function sweepDeps() {
    return { blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } };
  }

  it('retries the failed first attempt of a job canceled while queued when it is due (not before), then drops the marker', async () => {
    const { id } = await postWithWebhook();
    const marker = pendingJobKey('hook', 'acct_alice', id);
    // Still queued: the marker waits.
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ kept: 2, webhooksDelivered: 0 }); // and its active-job marker
    hook.answer = 500;
    // The cancel made the first attempt itself; it failed.
    expect((await localApp().request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
    expect((await h.jobs.get('acct_alice', id))!.webhook).toMatchObject({ attempts: 1, last_error: 'HTTP 500', delivered_at: null });
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ kept: 1, webhooksFailed: 0 }); // not due yet (its active marker cleared)
    hook.answer = 200;
    offsetMs += WEBHOOK_RETRY_DELAYS_SEC[0] * 1000 + 1000;
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ cleared: 1, webhooksDelivered: 1 });
    expect((await h.blobs.list(PENDING_JOBS_PREFIX)).items.map((i) => i.key)).not.toContain(marker);
    expect(received.map((r) => JSON.parse(r.body).type)).toEqual(['generation.canceled', 'generation.canceled']);
  });

  it('lost messages go before webhooks, and webhook attempts stop at the sweep\'s budget', async () => {
    const order: string[] = [];
    for (let i = 0; i < 3; i++) {
      const { id } = await postWithWebhook();
      await finish(id, 'canceled');
    }
    const lost = await postWithWebhook();
    await h.jobs.update('acct_alice', lost.id, (cur) => ({ ...cur, created_at: new Date(Date.now() - 10 * 60_000).toISOString() }));
    await markPending(h.blobs, 'msg', 'acct_alice', lost.id);
    const queue = new Proxy(h.queue, {
      get: (target, prop, receiver) => (prop === 'send' ? (b: string) => (order.push('resend'), target.send(b)) : Reflect.get(target, prop, receiver)),
    });
    const slow = async () => {
      order.push('hook');
      await new Promise((r) => setTimeout(r, 100));
      return 500;
    };
    const report = await sweepQueuedJobs({ ...sweepDeps(), queue, webhooks: { send: slow, signedUrlTtlSec: 600 } });
    expect(order[0]).toBe('resend');
    expect(report).toMatchObject({ resent: 1, webhooksFailed: 3 });
    // No budget left: no attempt starts, the markers wait for the next sweep.
    offsetMs += 3600_000;
    order.length = 0;
    const none = await sweepQueuedJobs({ ...sweepDeps(), queue, webhooks: { send: slow, signedUrlTtlSec: 600 }, webhookBudgetMs: 0 });
    expect(order).toEqual([]);
    expect(none).toMatchObject({ webhooksFailed: 0 });
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items).toHaveLength(4);
  });

  it('owed webhooks are taken owner by owner: one owner\'s many to a receiver that never answers do not use up the sweep\'s budget before another owner\'s turn', async () => {
    // An owner whose id sorts first owes 40 webhooks to a tarpit (each attempt waits out its time);
    // alice owes one to a receiver that answers.
    const early = (await h.keys.create({ name: 'early', owner: 'acct_aaaa' })).secret;
    const createAndCancel = creatorAndCanceller();
    for (let i = 0; i < 40; i++) await createAndCancel(early, 'https://tarpit.example/hook');
    const victim = await createAndCancel(h.alice, 'https://victim.example/hook');
    offsetMs += WEBHOOK_RETRY_DELAYS_SEC[0] * 1000 + 1000; // the cancels' failed attempts are due again
    const tried: string[] = [];
    const send = async (r: { url: string }) => {
      tried.push(r.url);
      if (r.url.includes('tarpit')) {
        await new Promise((res) => setTimeout(res, 100));
        throw new Error('no answer in time');
      }
      return 200;
    };
    // Budget for about one round of attempts: in key order all of it went to the tarpit's first eight.
    const report = await sweepQueuedJobs({ ...sweepDeps(), webhooks: { send, signedUrlTtlSec: 600 }, webhookBudgetMs: 150 });
    expect((await h.jobs.get('acct_alice', victim))!.webhook).toMatchObject({ attempts: 2, delivered_at: expect.any(String) });
    expect(report.webhooksDelivered).toBe(1);
    // The victim's was in the first wave of attempts (the sweep runs 8 at once), not after the early owner's forty.
    expect(tried.indexOf('https://victim.example/hook')).toBeGreaterThanOrEqual(0);
    expect(tried.indexOf('https://victim.example/hook')).toBeLessThan(8);
  });

  it('an owed webhook behind its owner\'s newer queued jobs (whose webhooks are not owed yet) is tried: those are skipped unread', async () => {
    const owed = await postWithWebhook();
    await finish(owed.id, 'canceled');
    // Newer jobs of the same owner, still queued: their ids sort first, each with its hook marker.
    for (let i = 0; i < 30; i++) await postWithWebhook();
    let reads = 0;
    const jobs = new Proxy(h.jobs, {
      get: (target, prop, receiver) =>
        prop === 'get'
          ? async (...a: Parameters<typeof target.get>) => {
              reads++;
              await new Promise((r) => setTimeout(r, 20));
              return target.get(...a);
            }
          : Reflect.get(target, prop, receiver),
    });
    const tried: string[] = [];
    const send = async (r: { headers: Record<string, string> }) => (tried.push(r.headers['webhook-id']!), 200);
    // A budget of a few reads: before, it went on the thirty queued jobs' hook markers.
    const report = await sweepQueuedJobs({ ...sweepDeps(), jobs, webhooks: { send, signedUrlTtlSec: 600 }, webhookBudgetMs: 100 });
    expect(report.webhooksDelivered).toBe(1);
    expect((await h.jobs.get('acct_alice', owed.id))!.webhook).toMatchObject({ attempts: 1, delivered_at: expect.any(String) });
    expect(tried).toHaveLength(1);
    // The queued jobs' hook markers are kept, unread in the webhook pass (their active markers were read once).
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items).toHaveLength(30);
    expect(reads).toBeLessThan(45);
  });

  it('past its deadline the sweep starts no marker (lost messages included): they are kept for the next, counted deferred, and the report is returned', async () => {
    const lost = await postWithWebhook();
    await h.jobs.update('acct_alice', lost.id, (cur) => ({ ...cur, created_at: new Date(Date.now() - 10 * 60_000).toISOString() }));
    await markPending(h.blobs, 'msg', 'acct_alice', lost.id);
    const ended = await postWithWebhook();
    await finish(ended.id, 'canceled');
    const send = async () => 200;
    const report = await sweepQueuedJobs({ ...sweepDeps(), webhooks: { send, signedUrlTtlSec: 600 }, deadline: Date.now() - 1 });
    expect(report).toMatchObject({ resent: 0, cleared: 0, webhooksDelivered: 0 });
    expect(report.deferred).toBe(report.scanned);
    expect(report.deferred).toBeGreaterThan(0);
    // The next sweep, in time, does the work.
    expect(await sweepQueuedJobs({ ...sweepDeps(), webhooks: { send, signedUrlTtlSec: 600 } })).toMatchObject({ resent: 1, webhooksDelivered: 1, deferred: 0 });
  });

  it('a 503 is not announced; the retry that queues the job again owes its webhook afresh, and its end is announced', async () => {
    const { queue: flaky, outage } = queueWithOutage(h.queue);
    const app = createApp({ ...h.deps, queue: flaky, clock, limits: { ...LIMITS, webhookAllowPrivate: true } });
    const post = () =>
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'hook-503' },
        body: JSON.stringify({ prompt: 'apple', webhook_url: hook.url }),
      });
    expect((await post()).status).toBe(503);
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ webhooksDelivered: 0 });
    expect(received).toEqual([]); // the caller already knows (503), and never got the secret
    outage.down = false;
    const retry = (await (await post()).json()) as any;
    expect(retry).toMatchObject({ status: 'queued', webhook: { status: 'pending', attempts: 0, secret: expect.stringMatching(/^whsec_/) } });
    expect((await h.blobs.list(`${PENDING_JOBS_PREFIX}hook/`)).items.map((i) => i.key)).toEqual([pendingJobKey('hook', 'acct_alice', retry.id)]);
    await finish(retry.id);
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ webhooksDelivered: 1, cleared: 2 }); // its hook and active markers
    expect(received.map((r) => JSON.parse(r.body).type)).toEqual(['generation.succeeded']);
    expect(new Webhook(retry.webhook.secret).verify(received[0]!.body, received[0]!.headers as Record<string, string>)).toBeTruthy();
  });

  it('a running job keeps its webhook marker; a job the worker already announced loses it', async () => {
    const { id } = await postWithWebhook();
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1 }));
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ kept: 2, cleared: 0 }); // hook and active
    await finish(id);
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', id)).toBe('delivered'); // the worker's attempt
    expect(await sweepQueuedJobs(sweepDeps())).toMatchObject({ cleared: 2, webhooksDelivered: 0 }); // hook and active
    expect(received).toHaveLength(1);
  });
});

/** Reads what a local-mode signed URL grants, after the local server's own signature check. */
async function fetchLocalSigned(url: string): Promise<Uint8Array> {
  const check = verifyLocalSignature('x'.repeat(32), 'GET', url);
  expect(check).toMatchObject({ ok: true });
  return (await h.blobs.get((check as { key: string }).key))!.body;
}

describe('one deliverer per attempt (a mutation review: a claim that lapsed at once survived before)', () => {
  it('two deliverers that find the same event due at once send it once (the claim holds while the first attempt is out)', async () => {
    const { id } = await postWithWebhook();
    await finish(id);
    let sends = 0;
    const releases: Array<(status: number) => void> = [];
    const slow: WebhookDeliveryDeps = { ...deliveryDeps(), send: () => (sends++, new Promise<number>((r) => releases.push(r))) };
    const first = deliverWebhook(slow, 'acct_alice', id);
    await new Promise((r) => setTimeout(r, 100)); // the first has claimed and is sending
    const second = deliverWebhook(slow, 'acct_alice', id);
    await new Promise((r) => setTimeout(r, 100));
    for (const release of releases) release(204);
    expect([await first, await second]).toEqual(['delivered', 'held_elsewhere']);
    expect(sends).toBe(1);
  });
});
