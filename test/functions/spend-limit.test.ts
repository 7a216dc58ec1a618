// An account's monthly spend limit (ADR 0033): PUT/GET/DELETE /v1/spend-limit, and POST
// /v1/generations refused with 402 spend_limit_reached once this month's cost has reached it. The store
// is the real local blob store; the month's cost is what the worker's ledger adds (recordUsage).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { spendLimitKey, usageKey } from '../../shared/keys.ts';
import { putSpendLimit } from '../../shared/spend-limits.ts';
import { recordUsage } from '../../shared/usage.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const NOW = new Date('2026-12-20T08:00:00Z');
const PRICE = 3.6; // $3.60 an hour: $0.001 a worker second
const BODY = { prompt: 'a large red circle on the left', steps: 2 };

/** The app at a fixed time, with a price (or none: null). */
function appAt(now: Date, price: number | null = PRICE) {
  return createApp({ ...h.deps, clock: () => now, limits: { ...LIMITS, ...(price !== null ? { workerHourlyUsd: price } : {}) } });
}
function call(app: ReturnType<typeof createApp>, path: string, init: { method?: string; json?: unknown; key?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { Authorization: `Bearer ${init.key ?? h.alice}`, ...init.headers };
  if (init.json !== undefined) headers['Content-Type'] ??= 'application/json';
  return app.request(path, { method: init.method ?? (init.json !== undefined ? 'POST' : 'GET'), headers, ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : {}) });
}
/** alice's month so far: `seconds` worker seconds at the job's own price. */
async function spend(seconds: number, at = new Date('2026-12-05T10:00:00Z'), jobId = `job-${seconds}-${at.getTime()}`) {
  await recordUsage(h.blobs, 'acct_alice', jobId, at, { images: 1, workerSeconds: seconds, encoderPasses: 10, hourlyUsd: PRICE });
}

describe('PUT, GET and DELETE /v1/spend-limit', () => {
  it('sets a limit and shows the month against it; DELETE removes it (idempotent)', async () => {
    const app = appAt(NOW);
    await spend(4000); // $4
    const none = (await (await call(app, '/v1/spend-limit')).json()) as any;
    expect(none).toEqual({ object: 'spend_limit', monthly_usd: null, updated_at: null, operator_monthly_usd: null, month: '2026-12', spent_usd: 4, remaining_usd: null, reached: false, resets_at: null, hourly_usd: PRICE });

    const put = await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 10 } });
    expect(put.status).toBe(200);
    expect(await put.json()).toEqual({ object: 'spend_limit', monthly_usd: 10, updated_at: NOW.toISOString(), operator_monthly_usd: null, month: '2026-12', spent_usd: 4, remaining_usd: 6, reached: false, resets_at: null, hourly_usd: PRICE });
    expect(((await (await call(app, '/v1/spend-limit')).json()) as any).monthly_usd).toBe(10);
    // Another account sees its own: none.
    expect(((await (await call(app, '/v1/spend-limit', { key: h.bob })).json()) as any).monthly_usd).toBeNull();

    const del = (await (await call(app, '/v1/spend-limit', { method: 'DELETE' })).json()) as any;
    expect(del).toEqual({ object: 'spend_limit', deleted: true });
    expect(((await (await call(app, '/v1/spend-limit', { method: 'DELETE' })).json()) as any).deleted).toBe(false);
    expect(await h.blobs.head(spendLimitKey('acct_alice'))).toBeNull();
  });

  it('refuses a limit that is not a number of dollars in range, with the field named, and stores nothing', async () => {
    const app = appAt(NOW);
    for (const [json, fragment] of [
      [{ monthly_usd: -1 }, 'monthly_usd'],
      [{ monthly_usd: '10' }, 'monthly_usd'],
      [{ monthly_usd: 2e9 }, 'monthly_usd'],
      [{ monthly_usd: 0.0000001 }, 'at most 6 decimals'],
      [{ monthly_usd: 1000.0000001 }, 'at most 6 decimals'],
      [{}, 'monthly_usd is required'],
      [{ monthly_usd: 5, currency: 'eur' }, 'currency'],
    ] as const) {
      const e = await expectEnvelope(await call(app, '/v1/spend-limit', { method: 'PUT', json }), 400, 'validation_error');
      expect(e.message + (e.param ?? '')).toContain(fragment);
    }
    await expectEnvelope(await app.request('/v1/spend-limit', { method: 'PUT', headers: { Authorization: `Bearer ${h.alice}` }, body: '{"monthly_usd": 5}' }), 415, 'unsupported_media_type');
    await expectEnvelope(await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 5 }, key: 'ck_nope_nope' }), 401, 'unauthorized');
    await expectEnvelope(await call(app, '/v1/spend-limit', { method: 'POST', json: { monthly_usd: 5 } }), 405, 'method_not_allowed');
    expect(await h.blobs.head(spendLimitKey('acct_alice'))).toBeNull();
    // Six decimals are taken at any size (as floating point writes them).
    for (const monthly_usd of [0.1, 0.000001, 123456.789012, 999999999.999999, 1e9]) expect((await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd } })).status, String(monthly_usd)).toBe(200);
    await call(app, '/v1/spend-limit', { method: 'DELETE' });
    // 0 is a limit: it refuses every new generation.
    expect((await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 0 } })).status).toBe(200);
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached');
  });

  it('a deployment without a price refuses to set one (no cost could ever reach it)', async () => {
    const e = await expectEnvelope(await call(appAt(NOW, null), '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 10 } }), 400, 'validation_error');
    expect([e.param, e.message]).toEqual(['monthly_usd', 'this deployment sets no price (hourly_usd is null), so generations have no cost to hold to a limit in dollars (its operator sets one with CLIPAG_WORKER_HOURLY_USD)']);
    expect(await h.blobs.head(spendLimitKey('acct_alice'))).toBeNull();
  });
});

describe('POST /v1/generations against the limit', () => {
  it('makes generations below the limit, refuses them (402) once the month has reached it, and again after a raise', async () => {
    const app = appAt(NOW);
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 5 } });
    await spend(4999); // $4.999
    expect((await call(app, '/v1/generations', { json: BODY })).status).toBe(202);
    await spend(1, new Date('2026-12-19T10:00:00Z')); // $5.000: reached
    const before = (await h.blobs.list('jobs/')).items.length;
    const e = await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached');
    expect(e.message).toContain('$5');
    expect(e.message).toContain('2027-01-01T00:00:00.000Z');
    // Nothing was made, and the refused request's active place was given back.
    expect((await h.blobs.list('jobs/')).items.length).toBe(before);
    expect((await h.blobs.list('pending/active/acct_alice/')).items).toHaveLength(1);
    const status = (await (await call(app, '/v1/spend-limit')).json()) as any;
    expect(status).toMatchObject({ spent_usd: 5, remaining_usd: 0, reached: true, resets_at: '2027-01-01T00:00:00.000Z' });
    // Another account is not held by alice's limit.
    expect((await call(app, '/v1/generations', { json: BODY, key: h.bob })).status).toBe(202);
    // Raised: made again.
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 5.5 } });
    expect((await call(app, '/v1/generations', { json: BODY })).status).toBe(202);
  });

  it('the next UTC month starts from nothing', async () => {
    await call(appAt(NOW), '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 1 } });
    await spend(2000, new Date('2026-12-31T23:59:59Z'));
    await expectEnvelope(await call(appAt(new Date('2026-12-31T23:59:59.500Z')), '/v1/generations', { json: BODY }), 402, 'spend_limit_reached');
    expect((await call(appAt(new Date('2027-01-01T00:00:00Z')), '/v1/generations', { json: BODY })).status).toBe(202);
  });

  it('a retry with the Idempotency-Key of a generation made before the limit was reached is answered that generation', async () => {
    const app = appAt(NOW);
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 1 } });
    const first = await call(app, '/v1/generations', { json: BODY, headers: { 'Idempotency-Key': 'k-1' } });
    expect(first.status).toBe(202);
    await spend(1000);
    const again = await call(app, '/v1/generations', { json: BODY, headers: { 'Idempotency-Key': 'k-1' } });
    expect(again.status).toBe(200);
    expect(((await again.json()) as any).id).toBe(((await first.json()) as any).id);
    // A new key is a new generation: refused.
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY, headers: { 'Idempotency-Key': 'k-2' } }), 402, 'spend_limit_reached');
  });

  it('where no cost is known (the price was removed) the limit refuses nothing, and GET says why', async () => {
    await call(appAt(NOW), '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 1 } });
    const unpriced = appAt(NOW, null);
    expect((await call(unpriced, '/v1/generations', { json: BODY })).status).toBe(202);
    expect((await (await call(unpriced, '/v1/spend-limit')).json()) as any).toMatchObject({ monthly_usd: 1, spent_usd: null, reached: false, hourly_usd: null });
  });

  it("a limit the operator set for the account: the lower of the two applies, the account can neither raise nor remove it", async () => {
    const app = appAt(NOW);
    await putSpendLimit(h.blobs, 'acct_alice', 3, NOW, 'operator');
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 10 } });
    await spend(2000); // $2
    expect((await call(app, '/v1/generations', { json: BODY })).status).toBe(202);
    expect(await (await call(app, '/v1/spend-limit')).json()).toMatchObject({ monthly_usd: 10, operator_monthly_usd: 3, spent_usd: 2, remaining_usd: 1, reached: false });
    await spend(1000, new Date('2026-12-06T10:00:00Z')); // $3: the operator's limit reached, the account's not
    const e = await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached');
    expect(e.message).toContain('the monthly limit of $3 the operator set for this account');
    expect(await (await call(app, '/v1/spend-limit')).json()).toMatchObject({ reached: true, remaining_usd: 0 });
    // The account's DELETE removes its own; the operator's stays and still refuses.
    expect(((await (await call(app, '/v1/spend-limit', { method: 'DELETE' })).json()) as any).deleted).toBe(true);
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached');
    // An account limit lower than the operator's is the one that applies, and its message says so.
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 1 } });
    expect((await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached')).message).toContain("the account's monthly spend limit of $1");
    // At a tie the operator's is named: raising the account's own would not help.
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 3 } });
    expect((await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 402, 'spend_limit_reached')).message).toContain('the operator set for this account');
    // Bob is held by neither.
    expect((await call(app, '/v1/generations', { json: BODY, key: h.bob })).status).toBe(202);
  });

  it('a limit or a month that does not read is a 409 corrupt_record, never taken for none or for zero', async () => {
    const app = appAt(NOW);
    await h.blobs.put(spendLimitKey('acct_alice'), Buffer.from('{"v":1,"monthly_usd":-5'));
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 409, 'corrupt_record');
    await expectEnvelope(await call(app, '/v1/spend-limit'), 409, 'corrupt_record');
    // The account mends it itself: PUT replaces it.
    expect((await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 50 } })).status).toBe(200);
    expect((await call(app, '/v1/generations', { json: BODY })).status).toBe(202);
    // A month that does not read, with a limit set: refused rather than counted as nothing spent.
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from('not json'));
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 409, 'corrupt_record');
    // Without a limit the month is not read by a POST at all.
    await call(app, '/v1/spend-limit', { method: 'DELETE' });
    expect((await call(app, '/v1/generations', { json: BODY })).status).toBe(202);
  });
});

describe('spend limit edges (a mutation review)', () => {
  it('a month that ran past its limit (jobs already running when it was reached) shows remaining_usd 0, never negative', async () => {
    const app = appAt(NOW);
    await call(app, '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 5 } });
    await recordUsage(h.blobs, 'acct_alice', 'j1', new Date('2026-12-05T10:00:00Z'), { images: 1, workerSeconds: 6000, encoderPasses: 1, hourlyUsd: PRICE }); // $6
    expect(await (await call(app, '/v1/spend-limit')).json()).toMatchObject({ spent_usd: 6, remaining_usd: 0, reached: true });
  });

  it('a limit of 0 refuses nothing where no cost is known (the price was removed)', async () => {
    await call(appAt(NOW), '/v1/spend-limit', { method: 'PUT', json: { monthly_usd: 0 } });
    expect((await call(appAt(NOW, null), '/v1/generations', { json: BODY })).status).toBe(202);
  });
});

// The compatibility review's F4: a limit a newer clipag wrote (a later `v`) read by this version (a
// rollback, or an operator's newer CLI) was "corrupt, contact the operator" on every POST of the account.
describe('a spend limit a newer clipag wrote', () => {
  it('answers the POST and GET it guards 503 unavailable with the newer-version Retry-After, never corrupt_record; damage stays a 409', async () => {
    const app = appAt(NOW);
    await h.blobs.put(spendLimitKey('acct_alice'), new TextEncoder().encode(JSON.stringify({ v: 2, monthly_usd: 10, updated_at: '2026-12-01T00:00:00.000Z', per_model: { toy: 5 } })));
    for (const res of [await call(app, '/v1/generations', { json: BODY }), await call(app, '/v1/spend-limit')]) {
      const err = await expectEnvelope(res, 503, 'unavailable');
      expect(err.message).toBe("the account's spend limit was written by a newer version of the service; retry later");
      expect(res.headers.get('Retry-After')).toBe('30');
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    await h.blobs.put(spendLimitKey('acct_alice'), new TextEncoder().encode(JSON.stringify({ v: 1, monthly_usd: 'ten' })));
    await expectEnvelope(await call(app, '/v1/generations', { json: BODY }), 409, 'corrupt_record');
  });
});
