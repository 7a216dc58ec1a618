// The account's webhook signing secret (ADR 0028): POST/GET/DELETE /v1/webhook-secret through the app,
// and events delivered to a real local HTTP receiver, by the worker's deliverer and by the queued-job
// sweep, checked with the reference `standardwebhooks` library: a receiver holding the account secret
// or the job's verifies, a rotated secret signs for 24 hours more, an account without one is signed as
// before, and no other account's secret ever signs.
import { webhookReceiver, type ReceivedWebhook } from '../helpers/webhook-receiver.ts';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { Webhook } from 'standardwebhooks';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { sweepQueuedJobs } from '../../functions/queued-jobs.ts';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import { PreconditionFailedError, RetryableError } from '../../shared/errors.ts';
import { webhookSecretKey } from '../../shared/keys.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { accountSigningSecrets, MAX_PREVIOUS_SECRETS, readAccountWebhookSecret, WEBHOOK_SECRET_PATTERN } from '../../shared/webhook-secrets.ts';
import { deliverWebhook, httpWebhookSender, signWebhook, webhookNotifier, WEBHOOK_RETRY_DELAYS_SEC, type WebhookDeliveryDeps } from '../../shared/webhooks.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

type Received = ReceivedWebhook;
/** A webhook receiver on 127.0.0.1 that answers `hook.answer` and records every request. */
const hook = webhookReceiver();
const received = hook.received;

const HOUR = 3_600_000;
let h: Harness;
/** Where the API's clock stands against real time: a rotation "23 hours ago" is made with -23 h. */
let apiOffsetMs: number;
/** Where the deliverer's clock stands against real time (a retry falls due). Small: the reference library refuses a timestamp over 5 minutes off. */
let deliverOffsetMs: number;

beforeEach(async () => {
  h = await harness();
  apiOffsetMs = 0;
  deliverOffsetMs = 0;
  hook.reset();
});
afterEach(() => h.close());

/** The app as local mode runs it (webhooks to this machine allowed), on the API's clock. */
function app(extra: Partial<Parameters<typeof createApp>[0]> = {}) {
  return createApp({ ...h.deps, clock: () => new Date(Date.now() + apiOffsetMs), limits: { ...LIMITS, webhookAllowPrivate: true }, ...extra });
}

function call(path: string, init: RequestInit & { key?: string | null } = {}, on = app()) {
  const { key = h.alice, ...rest } = init;
  const headers = new Headers(rest.headers);
  if (key !== null) headers.set('Authorization', `Bearer ${key}`);
  return Promise.resolve(on.request(path, { ...rest, headers }));
}

interface Created {
  object: 'webhook_secret';
  secret: string;
  created_at: string;
  previous: Array<{ created_at: string; expires_at: string }>;
}

async function rotate(key = h.alice): Promise<{ status: number; body: Created }> {
  const res = await call('/v1/webhook-secret', { method: 'POST', key });
  return { status: res.status, body: (await res.json()) as Created };
}

async function status(key = h.alice) {
  const res = await call('/v1/webhook-secret', { key });
  expect(res.status).toBe(200);
  return (await res.json()) as { object: string; exists: boolean; created_at: string | null; previous: Array<{ created_at: string; expires_at: string }> };
}

/** A generation of `key`'s with a webhook to the receiver, ended (canceled); its own secret. */
async function endedJob(key = h.alice, owner = 'acct_alice'): Promise<{ id: string; secret: string }> {
  const res = await call('/v1/generations', { method: 'POST', key, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', webhook_url: hook.url }) });
  expect(res.status).toBe(202);
  const body = (await res.json()) as { id: string; webhook: { secret: string } };
  await h.jobs.update(owner, body.id, (cur) => ({ ...cur, status: 'canceled', cancel_requested: true, finished_at: new Date().toISOString() }));
  return { id: body.id, secret: body.webhook.secret };
}

function deliveryDeps(blobs: BlobStore = h.blobs, log?: WebhookDeliveryDeps['log']): WebhookDeliveryDeps {
  return { jobs: h.jobs, blobs, send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600, clock: () => new Date(Date.now() + deliverOffsetMs), ...(log ? { log } : {}) };
}

/** Whether a receiver holding `secret` accepts the event (the reference library: signatures and timestamp). */
function verifies(secret: string, event: Received): boolean {
  try {
    new Webhook(secret).verify(event.body, event.headers);
    return true;
  } catch {
    return false;
  }
}

const signatures = (event: Received) => event.headers['webhook-signature']!.split(' ');

describe('POST, GET and DELETE /v1/webhook-secret', () => {
  it('creates (201), shows without the secret, rotates (200, the old one listed until 24 h on), deletes (idempotent)', async () => {
    expect(await status()).toEqual({ object: 'webhook_secret', exists: false, created_at: null, previous: [] });
    apiOffsetMs = -2 * HOUR;
    const first = await rotate();
    expect(first.status).toBe(201);
    expect(first.body).toEqual({ object: 'webhook_secret', secret: expect.stringMatching(WEBHOOK_SECRET_PATTERN), created_at: expect.any(String), previous: [] });
    expect(Date.parse(first.body.created_at)).toBeLessThan(Date.now() - HOUR); // the API's clock, not the machine's
    const shown = await status();
    expect(shown).toEqual({ object: 'webhook_secret', exists: true, created_at: first.body.created_at, previous: [] });
    expect(JSON.stringify(shown)).not.toContain(first.body.secret.slice('whsec_'.length));

    apiOffsetMs = -HOUR;
    const second = await rotate();
    expect(second.status).toBe(200);
    expect(second.body.secret).not.toBe(first.body.secret);
    const expires = new Date(Date.parse(second.body.created_at) + 24 * HOUR).toISOString();
    expect(second.body.previous).toEqual([{ created_at: first.body.created_at, expires_at: expires }]);
    expect(await status()).toEqual({ object: 'webhook_secret', exists: true, created_at: second.body.created_at, previous: [{ created_at: first.body.created_at, expires_at: expires }] });
    // Stored as is (it must sign), under the owner's own key.
    expect((await readAccountWebhookSecret(h.blobs, 'acct_alice'))?.secret).toBe(second.body.secret);
    // Past its 24 hours the replaced one is no longer listed.
    apiOffsetMs = 24 * HOUR;
    expect((await status()).previous).toEqual([]);

    const deleted = await call('/v1/webhook-secret', { method: 'DELETE' });
    expect([deleted.status, await deleted.json()]).toEqual([200, { object: 'webhook_secret', deleted: true }]);
    expect(await h.blobs.get(webhookSecretKey('acct_alice'))).toBeNull();
    expect((await status()).exists).toBe(false);
    const again = await call('/v1/webhook-secret', { method: 'DELETE' });
    expect([again.status, await again.json()]).toEqual([200, { object: 'webhook_secret', deleted: false }]);
    // A new one after the delete is a create, with nothing before it.
    const fresh = await rotate();
    expect([fresh.status, fresh.body.previous]).toEqual([201, []]);
    // The secrets never reach the log.
    expect(JSON.stringify(h.logs)).not.toMatch(/whsec_/);
  });

  it("each account has its own: one account's create, rotate or delete never touches another's", async () => {
    const alice = await rotate(h.alice);
    expect((await status(h.bob)).exists).toBe(false);
    const bob = await rotate(h.bob);
    expect(bob.status).toBe(201); // bob's first, whatever alice has
    expect((await call('/v1/webhook-secret', { method: 'DELETE', key: h.bob })).status).toBe(200);
    expect(await status(h.alice)).toMatchObject({ exists: true, created_at: alice.body.created_at });
    expect(await accountSigningSecrets(h.blobs, 'acct_alice', new Date())).toEqual([alice.body.secret]);
    expect(await accountSigningSecrets(h.blobs, 'acct_bob', new Date())).toEqual([]);
  });

  it('rotations at once lose no secret: every one answered signs (the latest, the others as replaced ones); exactly one was a create', async () => {
    const answers = await Promise.all(Array.from({ length: MAX_PREVIOUS_SECRETS + 1 }, () => rotate()));
    expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 201]);
    const signing = await accountSigningSecrets(h.blobs, 'acct_alice', new Date());
    expect([...signing].sort()).toEqual(answers.map((a) => a.body.secret).sort());
  });

  it('a fourth rotation within 24 hours ends the oldest replaced secret early (each one is a signature on every event)', async () => {
    const made = [];
    for (let i = 0; i < MAX_PREVIOUS_SECRETS + 2; i++) made.push((await rotate()).body.secret);
    const signing = await accountSigningSecrets(h.blobs, 'acct_alice', new Date());
    expect(signing).toEqual(made.slice(-(MAX_PREVIOUS_SECRETS + 1)).reverse());
    expect(signing).not.toContain(made[0]);
  });

  it('answers conform to /openapi.json, and the operations are documented with their errors', async () => {
    const on = app();
    const doc = (await (await on.request('/openapi.json')).json()) as any;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const check = async (method: string, res: Response) => {
      const content = doc.paths['/v1/webhook-secret'][method].responses[String(res.status)]?.content?.['application/json'];
      expect(content, `${method} ${res.status} is documented`).toBeDefined();
      const schema = ajv.getSchema(`api${content.schema.$ref}`)!;
      const body = await res.json();
      expect(schema(body) ? [] : schema.errors, `${method} ${res.status}`).toEqual([]);
    };
    await check('get', await call('/v1/webhook-secret', {}, on));
    await check('post', await call('/v1/webhook-secret', { method: 'POST' }, on));
    await check('post', await call('/v1/webhook-secret', { method: 'POST' }, on));
    await check('get', await call('/v1/webhook-secret', {}, on));
    await check('delete', await call('/v1/webhook-secret', { method: 'DELETE' }, on));
    await check('post', await call('/v1/webhook-secret', { method: 'POST', body: '{"secret":"mine"}' }, on));
    await check('get', await call('/v1/webhook-secret', { key: 'ck_nope' }, on));
    await h.blobs.put(webhookSecretKey('acct_alice'), new TextEncoder().encode('{"secret":'));
    await check('get', await call('/v1/webhook-secret', {}, on));
    expect(Object.keys(doc.paths['/v1/webhook-secret']).sort()).toEqual(['delete', 'get', 'post']);
    expect(doc.paths['/v1/webhook-secret'].post.requestBody).toBeUndefined();
    for (const method of ['get', 'post', 'delete']) {
      const op = doc.paths['/v1/webhook-secret'][method];
      expect([op.tags, op.security], method).toEqual([['webhooks'], [{ bearerAuth: [] }]]);
      expect(Object.keys(op.responses), method).toEqual(expect.arrayContaining(['400', '401', '429', '503', 'default']));
    }
    // The webhook itself says which secrets sign it.
    expect(doc.webhooks['generation.ended'].post.description).toContain('POST /v1/webhook-secret');
  });

  it('is rate-limited like every /v1 route', async () => {
    const on = app({ rateCounter: new MemoryRateCounter(), limits: { ...LIMITS, webhookAllowPrivate: true, rateLimitPerMin: 2 } });
    expect((await call('/v1/webhook-secret', { method: 'POST' }, on)).status).toBe(201);
    const shown = await call('/v1/webhook-secret', {}, on);
    expect([shown.status, shown.headers.get('RateLimit-Policy')]).toEqual([200, '"requests";q=2;w=60']);
    const refused = await call('/v1/webhook-secret', { method: 'DELETE' }, on);
    await expectEnvelope(refused, 429, 'rate_limited');
    expect(refused.headers.get('Retry-After')).toMatch(/^\d+$/);
    expect((await readAccountWebhookSecret(h.blobs, 'acct_alice')) !== null).toBe(true); // the refused DELETE did nothing
  });
});

describe('bad input gets a clear error, never a 500', () => {
  it('another method: 405 naming the allowed ones; another path under it: 404', async () => {
    for (const method of ['PUT', 'PATCH']) {
      const res = await call('/v1/webhook-secret', { method });
      const err = await expectEnvelope(res, 405, 'method_not_allowed');
      expect(res.headers.get('Allow')).toBe('GET, POST, DELETE, HEAD');
      expect(err.message).toBe('method not allowed; use GET, POST, DELETE, HEAD');
    }
    await expectEnvelope(await call('/v1/webhook-secret/current'), 404, 'not_found');
    const head = await call('/v1/webhook-secret', { method: 'HEAD' });
    expect([head.status, (await head.arrayBuffer()).byteLength]).toEqual([200, 0]);
  });

  it('a body where none is taken: 400 saying so, and nothing changes (a secret of the caller\'s choosing is never stored)', async () => {
    const chosen = 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
    for (const body of [JSON.stringify({ secret: chosen }), '{}', 'rotate']) {
      const err = await expectEnvelope(await call('/v1/webhook-secret', { method: 'POST', body, headers: { 'Content-Type': 'application/json' } }), 400, 'validation_error');
      expect(err.message).toBe('POST /v1/webhook-secret takes no request body; send none');
    }
    expect((await status()).exists).toBe(false);
    // Whitespace alone is no body; nor is an empty one with a JSON content type.
    expect((await call('/v1/webhook-secret', { method: 'POST', body: ' \r\n' })).status).toBe(201);
    expect((await call('/v1/webhook-secret', { method: 'POST', body: '', headers: { 'Content-Type': 'application/json' } })).status).toBe(200);
    const kept = await readAccountWebhookSecret(h.blobs, 'acct_alice');
    const err = await expectEnvelope(await call('/v1/webhook-secret', { method: 'DELETE', body: '{"confirm":true}' }), 400, 'validation_error');
    expect(err.message).toBe('DELETE /v1/webhook-secret takes no request body; send none');
    expect(await readAccountWebhookSecret(h.blobs, 'acct_alice')).toEqual(kept);
    // Over the body limit: 413, as on every /v1 route.
    await expectEnvelope(await call('/v1/webhook-secret', { method: 'POST', body: 'x'.repeat(LIMITS.maxBodyBytes + 1) }), 413, 'payload_too_large');
  });

  it('no key, or a revoked one: 401 with the challenge; nothing written', async () => {
    for (const key of [null, h.revoked, 'ck_not_a_key']) {
      const res = await call('/v1/webhook-secret', { method: 'POST', key });
      await expectEnvelope(res, 401, 'unauthorized');
      expect(res.headers.get('WWW-Authenticate')).toBe('Bearer realm="clipag"');
    }
    expect((await h.blobs.list('webhook-secrets/')).items).toEqual([]);
  });

  it('a stored secret that does not read: GET is 409 corrupt_record; POST replaces it (201); DELETE removes it', async () => {
    await h.blobs.put(webhookSecretKey('acct_alice'), new TextEncoder().encode('{"secret":"whsec_short","created_at":"x","previous":[]}'));
    await expectEnvelope(await call('/v1/webhook-secret'), 409, 'corrupt_record');
    const replaced = await rotate();
    expect([replaced.status, replaced.body.previous]).toEqual([201, []]);
    expect((await status()).exists).toBe(true);
    await h.blobs.put(webhookSecretKey('acct_alice'), new TextEncoder().encode('not json'));
    const gone = await call('/v1/webhook-secret', { method: 'DELETE' });
    expect([gone.status, await gone.json()]).toEqual([200, { object: 'webhook_secret', deleted: true }]);
    expect((await status()).exists).toBe(false);
  });

  it('a store that fails: 503 with Retry-After, not a 500', async () => {
    const failing = new Proxy(h.blobs, {
      get: (target, prop) => {
        if (prop === 'get' || prop === 'head') return (key: string) => (key.startsWith('webhook-secrets/') ? Promise.reject(new RetryableError('injected: S3 503')) : (target as any)[prop](key));
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    const on = app({ blobs: failing });
    for (const method of ['GET', 'POST', 'DELETE']) {
      const res = await call('/v1/webhook-secret', { method }, on);
      await expectEnvelope(res, 503, 'unavailable');
      expect(res.headers.get('Retry-After'), method).toBe('1');
    }
  });

  it('a rotation that loses every conditional write to others: 503 busy with Retry-After, saying so; nothing of it stored', async () => {
    const contended = new Proxy(h.blobs, {
      get: (target, prop) => {
        if (prop === 'putIfAbsent' || prop === 'replaceIfMatch') {
          return (key: string, ...rest: unknown[]) => (key.startsWith('webhook-secrets/') ? Promise.reject(new PreconditionFailedError(`etag mismatch for ${key}`)) : (target as any)[prop](key, ...rest));
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    const on = app({ blobs: contended });
    // A create (a put if absent), then a rotation (a replace if it matches).
    for (const had of [false, true]) {
      const before = await readAccountWebhookSecret(h.blobs, 'acct_alice');
      const res = await call('/v1/webhook-secret', { method: 'POST', headers: { 'Idempotency-Key': `contended-${had}` } }, on);
      expect(res.headers.get('Retry-After'), `had ${had}`).toBe('1');
      const error = await expectEnvelope(res, 503, 'busy');
      expect(error.message).toBe('the webhook secret is being rotated by other requests; retry');
      expect(await readAccountWebhookSecret(h.blobs, 'acct_alice')).toEqual(before);
      if (!had) expect((await rotate()).status).toBe(201);
    }
  });
});

describe('delivery with an account secret', () => {
  it('the event verifies with the account secret and with the job secret (two signatures); with neither it does not', async () => {
    const account = (await rotate()).body.secret;
    const job = await endedJob();
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', job.id)).toBe('delivered');
    const [event] = received as [Received];
    expect(signatures(event)).toHaveLength(2);
    expect(verifies(account, event)).toBe(true);
    expect(verifies(job.secret, event)).toBe(true);
    expect(verifies((await rotate(h.bob)).body.secret, event)).toBe(false);
    // The reference library's own verify, whole: the event it returns is the body sent.
    expect(new Webhook(account).verify(event.body, event.headers)).toMatchObject({ type: 'generation.canceled', data: { id: job.id } });
  });

  it('a receiver that holds only the account secret verifies an event whose job it has never heard of (the race of Prefer: wait)', async () => {
    const account = (await rotate()).body.secret;
    // The POST's answer never reaches the caller here: only its id is needed to end the job.
    const job = await endedJob();
    await deliverWebhook(deliveryDeps(), 'acct_alice', job.id);
    const [event] = received as [Received];
    expect(JSON.parse(event.body).data.id).toBe(job.id);
    expect(verifies(account, event)).toBe(true);
  });

  it('within 24 hours of a rotation the old and the new secret both verify; after, only the new one', async () => {
    apiOffsetMs = -48 * HOUR;
    const a = (await rotate()).body.secret;
    apiOffsetMs = -25 * HOUR;
    const b = (await rotate()).body.secret; // a stopped signing 1 hour ago
    const first = await endedJob();
    await deliverWebhook(deliveryDeps(), 'acct_alice', first.id);
    expect([verifies(a, received[0]!), verifies(b, received[0]!), verifies(first.secret, received[0]!)]).toEqual([false, true, true]);
    expect(signatures(received[0]!)).toHaveLength(2);

    apiOffsetMs = -23 * HOUR;
    const c = (await rotate()).body.secret; // b signs for 1 hour more
    const second = await endedJob();
    await deliverWebhook(deliveryDeps(), 'acct_alice', second.id);
    expect([verifies(a, received[1]!), verifies(b, received[1]!), verifies(c, received[1]!), verifies(second.secret, received[1]!)]).toEqual([false, true, true, true]);
    expect(signatures(received[1]!)).toHaveLength(3);
  });

  it('the secrets are read at each attempt: a rotation applies to a retry, and a delete leaves the job secret alone', async () => {
    const a = (await rotate()).body.secret;
    const job = await endedJob();
    hook.answer = 500;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', job.id)).toBe('failed');
    const b = (await rotate()).body.secret;
    deliverOffsetMs = WEBHOOK_RETRY_DELAYS_SEC[0] * 1000 + 1000;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', job.id)).toBe('failed');
    expect((await call('/v1/webhook-secret', { method: 'DELETE' })).status).toBe(200);
    hook.answer = 200;
    deliverOffsetMs += WEBHOOK_RETRY_DELAYS_SEC[1] * 1000 + 1000;
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', job.id)).toBe('delivered');
    const seen = received.map((e) => [verifies(a, e), verifies(b, e), verifies(job.secret, e)]);
    expect(seen).toEqual([
      [true, false, true], // before the rotation
      [true, true, true], // after it: the new one, and the old one for its 24 hours
      [false, false, true], // after the delete: the job's own alone
    ]);
    expect(received.map((e) => e.headers['webhook-id'])).toEqual(Array(3).fill(`evt_${job.id}_canceled`));
  });

  it('an account without a secret is signed exactly as before: one signature, the job secret\'s', async () => {
    const job = await endedJob();
    expect(await deliverWebhook(deliveryDeps(), 'acct_alice', job.id)).toBe('delivered');
    const [event] = received as [Received];
    expect(event.headers['webhook-signature']).toBe(signWebhook(job.secret, event.headers['webhook-id']!, Number(event.headers['webhook-timestamp']), event.body));
    expect(verifies(job.secret, event)).toBe(true);
  });

  it("another account's secret never signs: bob's secret on alice's event, or alice's on bob's", async () => {
    const bobs = (await rotate(h.bob)).body.secret;
    const alicesJob = await endedJob(h.alice, 'acct_alice');
    await deliverWebhook(deliveryDeps(), 'acct_alice', alicesJob.id);
    expect(signatures(received[0]!)).toHaveLength(1);
    expect([verifies(bobs, received[0]!), verifies(alicesJob.secret, received[0]!)]).toEqual([false, true]);
    const alices = (await rotate(h.alice)).body.secret;
    const bobsJob = await endedJob(h.bob, 'acct_bob');
    await deliverWebhook(deliveryDeps(), 'acct_bob', bobsJob.id);
    expect([verifies(alices, received[1]!), verifies(bobs, received[1]!), verifies(bobsJob.secret, received[1]!)]).toEqual([false, true, true]);
  });

  it('by both deliverers: the worker\'s notifier and the queued-job sweep', async () => {
    const account = (await rotate()).body.secret;
    const byWorker = await endedJob();
    const notifier = webhookNotifier(deliveryDeps());
    notifier.notify('acct_alice', byWorker.id);
    await notifier.drain();
    const bySweep = await endedJob();
    const report = await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date(), webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } });
    expect(report.webhooksDelivered).toBe(1); // the worker's was delivered already
    const byId = new Map(received.map((e) => [JSON.parse(e.body).data.id as string, e]));
    expect([...byId.keys()].sort()).toEqual([byWorker.id, bySweep.id].sort());
    for (const [job, event] of [[byWorker, byId.get(byWorker.id)!], [bySweep, byId.get(bySweep.id)!]] as const) {
      expect([verifies(account, event), verifies(job.secret, event)]).toEqual([true, true]);
    }
  });

  it("a stored secret that does not read signs nothing: the job's secret alone, and the operator's log says why", async () => {
    await h.blobs.put(webhookSecretKey('acct_alice'), new TextEncoder().encode('{"oops":'));
    const job = await endedJob();
    const logs: Array<Record<string, unknown>> = [];
    expect(await deliverWebhook(deliveryDeps(h.blobs, (e) => logs.push(e)), 'acct_alice', job.id)).toBe('delivered');
    expect(signatures(received[0]!)).toHaveLength(1);
    expect(verifies(job.secret, received[0]!)).toBe(true);
    expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: "webhook: the owner's webhook secret does not read; signed with the job's secret alone", owner: 'acct_alice', key: webhookSecretKey('acct_alice') }));
  });

  it('a store that cannot say whether there is a secret fails the attempt before anything is sent (retried), never sends it unsigned by a secret its receiver may need', async () => {
    await rotate();
    const job = await endedJob();
    const failing = new Proxy(h.blobs, {
      get: (target, prop) => {
        if (prop === 'get') return (key: string) => (key.startsWith('webhook-secrets/') ? Promise.reject(new RetryableError('injected: S3 503')) : target.get(key));
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    expect(await deliverWebhook(deliveryDeps(failing), 'acct_alice', job.id)).toBe('failed');
    expect(received).toEqual([]);
    expect((await h.jobs.get('acct_alice', job.id))!.webhook).toMatchObject({ attempts: 1, last_error: 'the event could not be prepared (a fault on our side); it is retried', next_attempt_at: expect.any(String) });
  });
});
