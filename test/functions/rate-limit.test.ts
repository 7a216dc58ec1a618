// The per-account request limit through the app (ADR 0026): the RateLimit fields, the 429, fail-open,
// and the configuration that turns it on in local mode. The DynamoDB side: test/shared/contract/dynamodb.test.ts.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { localDeps } from '../../functions/deps/local.ts';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { NonRetryableError, RetryableError } from '../../shared/errors.ts';
import type { RateCounter } from '../../shared/ports.ts';
import { expectEnvelope, harness } from './helpers.ts';

/** 20 s into a minute. */
const NOW = new Date(Date.UTC(2026, 11, 6, 12, 0, 20));

async function limited(limit: number, counter: RateCounter = new MemoryRateCounter()) {
  const h = await harness();
  let now = NOW;
  const app = createApp({ ...h.deps, rateCounter: counter, limits: { ...h.deps.limits, rateLimitPerMin: limit }, clock: () => now });
  const call = (path: string, init: RequestInit & { key?: string | null } = {}) => {
    const { key = h.alice, ...rest } = init;
    const headers = new Headers(rest.headers);
    if (key !== null) headers.set('Authorization', `Bearer ${key}`);
    return app.request(path, { ...rest, headers });
  };
  return { h, call, at: (d: Date) => (now = d) };
}

describe('per-account request limit', () => {
  it('every answer carries the RateLimit fields; over the limit a 429 rate_limited with Retry-After, whatever the route', async () => {
    const { h, call } = await limited(3);
    try {
      const seen = [];
      for (const path of ['/v1/models', '/v1/generations', '/v1/usage']) {
        const res = await call(path);
        expect(res.status).toBe(200);
        seen.push(res.headers.get('RateLimit'));
        expect(res.headers.get('RateLimit-Policy')).toBe('"requests";q=3;w=60');
      }
      // t: the minute's end while requests are left; with none left, when the next one fits (as a 429's Retry-After).
      expect(seen).toEqual(['"requests";r=2;t=40', '"requests";r=1;t=40', '"requests";r=0;t=60']);
      // A POST and an unknown id are requests too: refused before they reach the route.
      const refused = await call('/v1/generations', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a red circle' }) });
      const error = await expectEnvelope(refused, 429, 'rate_limited');
      expect(error.message).toMatch(/limit of 3 requests per 60 s; retry after 60 s/);
      // 20 s into the next minute: 3 × (1 − 20/60) + 0 + 1 ≤ 3.
      expect(refused.headers.get('Retry-After')).toBe('60');
      expect(refused.headers.get('RateLimit')).toBe('"requests";r=0;t=60');
      expect(refused.headers.get('RateLimit-Policy')).toBe('"requests";q=3;w=60');
      expect(await h.queue.depth()).toBe(0); // nothing was queued
    } finally {
      await h.close();
    }
  });

  it('accounts count apart; a request without a valid key is a 401 that counts for no one', async () => {
    const { h, call } = await limited(1);
    try {
      expect((await call('/v1/models')).status).toBe(200);
      expect((await call('/v1/models')).status).toBe(429);
      const anonymous = await call('/v1/models', { key: null });
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get('RateLimit')).toBeNull();
      expect((await call('/v1/models', { key: h.revoked })).status).toBe(401);
      const bob = await call('/v1/models', { key: h.bob });
      expect(bob.status).toBe(200);
      expect(bob.headers.get('RateLimit')).toBe('"requests";r=0;t=100');
    } finally {
      await h.close();
    }
  });

  it('the window slides: the next minute lets through what the old count leaves room for', async () => {
    const { h, call, at } = await limited(4);
    try {
      for (let i = 0; i < 4; i++) expect((await call('/v1/models')).status).toBe(200);
      at(new Date(NOW.getTime() + 70_000)); // 30 s into the next minute: half of the 4 still count
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await call('/v1/models')).status);
      expect(statuses).toEqual([200, 200, 429]);
    } finally {
      await h.close();
    }
  });

  it('when the counts cannot be read the request goes through without the fields; the counter is left alone for a while, and that is logged once', async () => {
    let calls = 0;
    const broken: RateCounter = {
      get: async () => (calls++, Promise.reject(new RetryableError('DynamoDB is unavailable: 503'))),
      addBelow: async () => (calls++, Promise.reject(new RetryableError('DynamoDB is unavailable: 503'))),
    };
    const { h, call } = await limited(1, broken);
    try {
      for (let i = 0; i < 3; i++) {
        const res = await call('/v1/models');
        expect(res.status).toBe(200);
        expect(res.headers.get('RateLimit')).toBeNull();
      }
      expect(calls).toBe(1); // the first request's read; the next two did not wait on a failing store
      const warnings = h.logs.filter((l) => (l as { msg: string }).msg.startsWith('rate limit:'));
      expect(warnings).toEqual([expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/unlimited for 30 s/), error: 'DynamoDB is unavailable: 503' })]);
    } finally {
      await h.close();
    }
  });

  it('a failure that will not pass by itself (a missing table or grant) is logged as an error', async () => {
    const missing: RateCounter = {
      get: async () => Promise.reject(new NonRetryableError('DynamoDB request failed (ResourceNotFoundException): Requested resource not found')),
      addBelow: async () => Promise.reject(new NonRetryableError('unreachable')),
    };
    const { h, call } = await limited(1, missing);
    try {
      expect((await call('/v1/models')).status).toBe(200);
      expect(h.logs).toContainEqual(expect.objectContaining({ level: 'error', error: expect.stringMatching(/ResourceNotFoundException/) }));
    } finally {
      await h.close();
    }
  });

  it('the operator sees which account went over its limit, once per refusal period, not once per refused request', async () => {
    const { h, call } = await limited(1);
    try {
      await call('/v1/models');
      for (let i = 0; i < 5; i++) expect((await call('/v1/models')).status).toBe(429);
      const over = h.logs.filter((l) => (l as { msg: string }).msg === 'rate limit: an account is over its limit');
      expect(over).toEqual([expect.objectContaining({ level: 'warn', owner: 'acct_alice', limit_name: 'requests', limit: 1, window_sec: 60, retry_after_sec: 100 })]);
    } finally {
      await h.close();
    }
  });

  it('no counter or a limit of 0: no limit and no fields', async () => {
    const h = await harness();
    try {
      for (const deps of [{ ...h.deps, limits: { ...h.deps.limits, rateLimitPerMin: 1 } }, { ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...h.deps.limits, rateLimitPerMin: 0 } }]) {
        const app = createApp(deps);
        for (let i = 0; i < 3; i++) {
          const res = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}` } });
          expect(res.status).toBe(200);
          expect(res.headers.get('RateLimit-Policy')).toBeNull();
        }
      }
    } finally {
      await h.close();
    }
  });

  it('upload URLs have their own hourly limit, counted once the request is valid; its answers carry both policies', async () => {
    const h = await harness();
    try {
      const app = createApp({ ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...h.deps.limits, rateLimitPerMin: 100, uploadsPerHour: 2 }, clock: () => NOW });
      const upload = (body: unknown) =>
        app.request('/v1/uploads', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      expect((await upload({ content_type: 'image/png', bytes: 'many' })).status).toBe(400); // spends no upload
      expect((await upload({ content_type: 'image/png', bytes: 1e9 })).status).toBe(413); // nor does one over the size limit
      const ok = [await upload({ content_type: 'image/png', bytes: 100 }), await upload({ content_type: 'image/png', bytes: 100 })];
      expect(ok.map((r) => r.status)).toEqual([201, 201]);
      expect(ok[1]!.headers.get('RateLimit-Policy')).toBe('"uploads";q=2;w=3600, "requests";q=100;w=60');
      expect(ok[1]!.headers.get('RateLimit')).toBe('"uploads";r=0;t=5380, "requests";r=96;t=40'); // 3580 s to the hour's end, then half an hour for 1 of 2 to age out
      const refused = await upload({ content_type: 'image/png', bytes: 100 });
      const error = await expectEnvelope(refused, 429, 'rate_limited');
      expect(error.message).toMatch(/limit of 2 uploads per 3600 s/);
      expect(Number(refused.headers.get('Retry-After'))).toBeGreaterThan(3000);
      expect(refused.headers.get('RateLimit')).toMatch(/^"uploads";r=0;t=\d+, "requests";r=95;t=40$/);
      // Other requests go on.
      expect((await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(200);
      expect(parseConfig({ CLIPAG_UPLOADS_PER_HOUR: '50' }).uploadsPerHour).toBe(50);
    } finally {
      await h.close();
    }
  });

  it('Prefer: wait has a budget per account, counted over one longest wait: past it the request is answered at once, without Preference-Applied; an ended job or wait=0 costs none', async () => {
    const h = await harness();
    try {
      // The record reads a request makes: a held one re-reads its job while it waits, one answered at once does not.
      let reads = 0;
      const jobs = new Proxy(h.jobs, { get: (t, p, r) => (p === 'get' ? (...a: Parameters<typeof t.get>) => (reads++, t.get(...a)) : Reflect.get(t, p, r)) });
      // One instant for the limiter: the budget's window (maxWaitSec, 1 s here) never slides in this test.
      const app = createApp({ ...h.deps, jobs, rateCounter: new MemoryRateCounter(), limits: { ...h.deps.limits, maxWaitSec: 1, maxWaits: 1 }, clock: () => NOW });
      const post = async (key: string, prefer?: string) => {
        const before = reads;
        const headers: Record<string, string> = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', ...(prefer ? { Prefer: prefer } : {}) };
        const res = await app.request('/v1/generations', { method: 'POST', headers, body: JSON.stringify({ prompt: 'a red circle' }) });
        return { res, reads: reads - before };
      };
      const plain = await post(h.alice);
      const zero = await post(h.alice, 'wait=0'); // holds nothing: not counted
      expect(zero.res.headers.get('Preference-Applied')).toBe('wait=0');
      const held = await post(h.alice, 'wait=1');
      expect(held.res.status).toBe(202);
      expect(held.res.headers.get('Preference-Applied')).toBe('wait=1');
      expect(held.reads).toBeGreaterThan(plain.reads); // no worker here: it re-read the job until the wait ran out
      const over = await post(h.alice, 'wait=1');
      expect(over.res.status).toBe(202);
      expect(over.res.headers.get('Preference-Applied')).toBeNull();
      expect(over.reads).toBe(plain.reads); // answered as a POST without Prefer is
      expect(h.logs).toContainEqual(expect.objectContaining({ msg: 'rate limit: an account has used its budget of waits (Prefer: wait not honoured)', limit_name: 'waits', owner: 'acct_alice' }));
      // An ended job is answered at once anyway: its wait is honoured without spending the budget.
      const id = ((await over.res.json()) as { id: string }).id;
      expect((await app.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' } })).status).toBe(200);
      const ended = await app.request(`/v1/generations/${id}`, { headers: { Authorization: `Bearer ${h.alice}`, Prefer: 'wait=1' } });
      expect(ended.headers.get('Preference-Applied')).toBe('wait=1');
      // Another account has its own budget.
      expect((await post(h.bob, 'wait=1')).res.headers.get('Preference-Applied')).toBe('wait=1');
      expect(parseConfig({ CLIPAG_MAX_WAITS: '12' }).maxWaits).toBe(12);
    } finally {
      await h.close();
    }
  });

  it('the limits on one counter share its failure: a request that passes two of them waits out one failed call, and it is logged once', async () => {
    let calls = 0;
    const broken: RateCounter = {
      get: async () => (calls++, Promise.reject(new RetryableError('DynamoDB is unavailable: 503'))),
      addBelow: async () => (calls++, Promise.reject(new RetryableError('DynamoDB is unavailable: 503'))),
    };
    const h = await harness();
    try {
      const app = createApp({ ...h.deps, rateCounter: broken, limits: { ...h.deps.limits, rateLimitPerMin: 10, uploadsPerHour: 10 } });
      const res = await app.request('/v1/uploads', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ content_type: 'image/png', bytes: 100 }) });
      expect(res.status).toBe(201);
      expect(calls).toBe(1);
      expect(h.logs.filter((l) => (l as { msg: string }).msg.startsWith('rate limit: the counts are unavailable'))).toHaveLength(1);
    } finally {
      await h.close();
    }
  });

  it('CLIPAG_RATE_LIMIT_PER_MIN turns it on in local mode (counted in the server\'s memory); unset it is off', async () => {
    expect(parseConfig({}).rateLimitPerMin).toBe(0);
    expect(() => parseConfig({ CLIPAG_RATE_LIMIT_PER_MIN: '-1' })).toThrow(/CLIPAG_RATE_LIMIT_PER_MIN/);
    expect(() => parseConfig({ CLIPAG_RATE_LIMIT_PER_MIN: '2.5' })).toThrow(/CLIPAG_RATE_LIMIT_PER_MIN/);
    const aws = { CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'bucket-x', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q' };
    expect(() => parseConfig({ ...aws, CLIPAG_RATE_LIMIT_PER_MIN: '600' })).toThrow(/CLIPAG_RATE_TABLE: is required when CLIPAG_RATE_LIMIT_PER_MIN, CLIPAG_UPLOADS_PER_HOUR or CLIPAG_MAX_WAITS is above 0/);
    expect(parseConfig({ ...aws, CLIPAG_RATE_LIMIT_PER_MIN: '600', CLIPAG_RATE_TABLE: 'clipag-rate' })).toMatchObject({ rateLimitPerMin: 600, rateTable: 'clipag-rate' });
    const config = parseConfig({ CLIPAG_DATA_DIR: mkdtempSync(join(tmpdir(), 'clipag-rate-')), CLIPAG_RATE_LIMIT_PER_MIN: '2' }) as LocalConfig;
    const deps = await localDeps(config, { models: async () => [{ id: 'toy', default: true, input_size: 224 }] });
    const { secret } = await deps.adapters.keys.create({ name: 't', owner: 'acct_t' });
    const app = createApp(deps);
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await app.request('/v1/models', { headers: { Authorization: `Bearer ${secret}` } })).status);
    expect(statuses).toEqual([200, 200, 429]);
  });
});
