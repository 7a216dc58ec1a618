// POST /v1/webhook-secret with an Idempotency-Key (ADR 0028, "Idempotency-Key on the POST"): a retry
// with the key gets the secret the first request made, with its status and `Idempotent-Replayed:
// true`, and rotates nothing; another key, or none, rotates; a key whose secret has since been replaced
// or deleted is not remembered (the retry rotates, never handed a secret that stopped signing). Through
// the app on the real local store.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { webhookSecretKey } from '../../shared/keys.ts';
import { accountSigningSecrets, PREVIOUS_SECRET_GRACE_MS, readAccountWebhookSecret, SECRET_REPLAY_WINDOW_MS } from '../../shared/webhook-secrets.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
/** Where the API's clock stands against real time. */
let apiOffsetMs: number;

beforeEach(async () => {
  h = await harness();
  apiOffsetMs = 0;
});
afterEach(() => h.close());

function app(extra: Partial<Parameters<typeof createApp>[0]> = {}) {
  return createApp({ ...h.deps, clock: () => new Date(Date.now() + apiOffsetMs), limits: { ...LIMITS, webhookAllowPrivate: true }, ...extra });
}

interface Created {
  object: 'webhook_secret';
  secret: string;
  created_at: string;
  previous: Array<{ created_at: string; expires_at: string }>;
}

async function post(idempotencyKey?: string, key = h.alice, on = app()): Promise<{ status: number; replayed: string | null; body: Created }> {
  const headers = new Headers({ Authorization: `Bearer ${key}` });
  if (idempotencyKey !== undefined) headers.set('Idempotency-Key', idempotencyKey);
  const res = await on.request('/v1/webhook-secret', { method: 'POST', headers });
  return { status: res.status, replayed: res.headers.get('Idempotent-Replayed'), body: (await res.json()) as Created };
}

const signing = (owner = 'acct_alice') => accountSigningSecrets(h.blobs, owner, new Date(Date.now() + apiOffsetMs));

describe('POST /v1/webhook-secret with an Idempotency-Key', () => {
  it('a retry with the key answers the same secret and status, marked replayed, and rotates nothing', async () => {
    const first = await post('create-1');
    expect([first.status, first.replayed]).toEqual([201, null]);
    const stored = await h.blobs.get(webhookSecretKey('acct_alice'));
    const retry = await post('create-1');
    expect([retry.status, retry.replayed]).toEqual([201, 'true']);
    expect(retry.body).toEqual(first.body);
    // Nothing was written: the same document, and one secret signs.
    expect((await h.blobs.get(webhookSecretKey('acct_alice')))?.etag).toBe(stored?.etag);
    expect(await signing()).toEqual([first.body.secret]);

    // Another key rotates (200), and a retry of that one replays its 200 with the replaced one listed.
    const rotated = await post('rotate-1');
    expect([rotated.status, rotated.replayed]).toEqual([200, null]);
    expect(rotated.body.secret).not.toBe(first.body.secret);
    expect(rotated.body.previous).toEqual([{ created_at: first.body.created_at, expires_at: expect.any(String) }]);
    const again = await post('rotate-1');
    expect([again.status, again.replayed, again.body]).toEqual([200, 'true', rotated.body]);
    expect(await signing()).toEqual([rotated.body.secret, first.body.secret]);

    // No key rotates as before, every time.
    const plain = [await post(), await post()];
    expect(plain.map((p) => [p.status, p.replayed])).toEqual([[200, null], [200, null]]);
    expect(new Set([rotated.body.secret, ...plain.map((p) => p.body.secret)]).size).toBe(3);
  });

  it('the key is stored as its hash, never as sent; and the secret is the only thing the replay shows again', async () => {
    const key = 'my-very-own-key-4f1c';
    await post(key);
    const text = new TextDecoder().decode((await h.blobs.get(webhookSecretKey('acct_alice')))!.body);
    expect(text).not.toContain(key);
    const status = (await (await app().request('/v1/webhook-secret', { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as Record<string, unknown>;
    expect(Object.keys(status).sort()).toEqual(['created_at', 'exists', 'object', 'previous']);
  });

  it("a key is the account's: another account's request with it gets its own secret", async () => {
    const alice = await post('shared-key');
    const bob = await post('shared-key', h.bob);
    expect([bob.status, bob.replayed]).toEqual([201, null]);
    expect(bob.body.secret).not.toBe(alice.body.secret);
    expect(await signing('acct_bob')).toEqual([bob.body.secret]);
    expect(await signing('acct_alice')).toEqual([alice.body.secret]);
  });

  it('a key whose secret another request has since replaced rotates again: never answered a secret that is no longer current', async () => {
    const first = await post('lost-answer');
    const other = await post('someone-else');
    const retry = await post('lost-answer');
    expect([retry.status, retry.replayed]).toEqual([200, null]);
    expect([first.body.secret, other.body.secret]).not.toContain(retry.body.secret);
    expect((await signing())[0]).toBe(retry.body.secret);
    // The key now names the secret it made: its next retry replays that one.
    const retried = await post('lost-answer');
    expect([retried.status, retried.replayed, retried.body.secret]).toEqual([200, 'true', retry.body.secret]);
  });

  it('a key whose secret was deleted creates a new one (201), not replayed', async () => {
    const first = await post('before-delete');
    expect((await app().request('/v1/webhook-secret', { method: 'DELETE', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
    const retry = await post('before-delete');
    expect([retry.status, retry.replayed, retry.body.previous]).toEqual([201, null, []]);
    expect(retry.body.secret).not.toBe(first.body.secret);
    expect(await signing()).toEqual([retry.body.secret]);
  });

  it('past the 24-hour window the key is not remembered: the retry rotates', async () => {
    expect(SECRET_REPLAY_WINDOW_MS).toBe(PREVIOUS_SECRET_GRACE_MS);
    const first = await post('old-key');
    apiOffsetMs = SECRET_REPLAY_WINDOW_MS - 60_000;
    expect((await post('old-key')).replayed).toBe('true');
    apiOffsetMs = SECRET_REPLAY_WINDOW_MS + 60_000;
    const late = await post('old-key');
    expect([late.status, late.replayed]).toEqual([200, null]);
    expect(late.body.secret).not.toBe(first.body.secret);
  });

  it('requests with one key at once make one secret: one answered as made, the others replayed, all the same secret', async () => {
    const answers = await Promise.all(Array.from({ length: 5 }, () => post('at-once')));
    expect(new Set(answers.map((a) => a.body.secret)).size).toBe(1);
    expect(answers.map((a) => a.status)).toEqual([201, 201, 201, 201, 201]);
    expect(answers.filter((a) => a.replayed === null)).toHaveLength(1);
    expect(await signing()).toEqual([answers[0]!.body.secret]);
  });

  it("a write whose reply was lost (S3 resends it; the resend fails its own condition) is this request's own: answered as made, never rotated twice", async () => {
    for (const idempotencyKey of [undefined, 'lossy']) {
      await h.blobs.delete(webhookSecretKey('acct_alice'));
      for (const method of ['putIfAbsent', 'replaceIfMatch'] as const) {
        const lossy = lostReplyOnce(h.blobs, (key) => key === webhookSecretKey('acct_alice'), method);
        const before = await readAccountWebhookSecret(h.blobs, 'acct_alice');
        const answer = await post(idempotencyKey === undefined ? undefined : `${idempotencyKey}-${method}`, h.alice, app({ blobs: lossy.blobs }));
        expect(lossy.lost(), `${method} ${idempotencyKey}`).toBe(1);
        expect([answer.status, answer.replayed], `${method} ${idempotencyKey}`).toEqual([method === 'putIfAbsent' ? 201 : 200, null]);
        // One rotation: the answered secret is the current one, and the one before it the only replaced one.
        expect(await signing(), `${method} ${idempotencyKey}`).toEqual(before ? [answer.body.secret, before.secret] : [answer.body.secret]);
      }
    }
  });

  it('a key that breaks the rule (as for generations) is a 400 naming the header, and nothing is made', async () => {
    for (const bad of ['has space', 'x'.repeat(256), 'caf\u00e9']) {
      const headers = new Headers({ Authorization: `Bearer ${h.alice}` });
      headers.set('Idempotency-Key', bad);
      const err = await expectEnvelope(await app().request('/v1/webhook-secret', { method: 'POST', headers }), 400, 'validation_error');
      expect(err.param?.toLowerCase()).toBe('idempotency-key');
      expect(err.message).toContain('must be 1..255 visible ASCII characters (no spaces)');
    }
    expect(await readAccountWebhookSecret(h.blobs, 'acct_alice')).toBeNull();
  });

  it("keys of POST /v1/generations are apart: one used for a generation makes a secret here (no 409), and the reverse", async () => {
    const on = app();
    const gen = await on.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'both' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect(gen.status).toBe(202);
    const made = await post('both', h.alice, on);
    expect([made.status, made.replayed]).toEqual([201, null]);
    const genAgain = await on.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'both' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect([genAgain.status, genAgain.headers.get('Idempotent-Replayed')]).toEqual([200, 'true']);
  });

  it('the document declares the header, its rule and the replay header on 201 and 200', async () => {
    const doc = (await (await app().request('/openapi.json')).json()) as any;
    const op = doc.paths['/v1/webhook-secret'].post;
    const param = op.parameters.find((p: { name: string }) => p.name === 'Idempotency-Key');
    expect(param).toMatchObject({ in: 'header', required: false, schema: { type: 'string', pattern: '^[\\x21-\\x7e]{1,255}$' } });
    expect(param.description).toMatch(/replaced by another request's rotation, or deleted/);
    for (const status of ['200', '201']) expect(op.responses[status].headers['Idempotent-Replayed'], status).toMatchObject({ schema: { enum: ['true'] } });
    // GET and DELETE take no key: they change nothing a retry could repeat.
    for (const method of ['get', 'delete']) expect((doc.paths['/v1/webhook-secret'][method].parameters ?? []).map((p: { name: string }) => p.name), method).not.toContain('Idempotency-Key');
  });
});
