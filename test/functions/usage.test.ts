// An owner's usage, day by day (ADR 0019): the ledger the worker adds to, and GET /v1/usage. The
// worker's side is in test/worker/worker.test.ts; the store is the real local blob store.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';
import { MAX_KEYS_PER_DAY, readUsage, recordUsage } from '../../shared/usage.ts';
import { usageKey } from '../../shared/keys.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const at = (iso: string) => new Date(iso);
const used = (images: number, workerSeconds: number, encoderPasses = 100) => ({ images, workerSeconds, encoderPasses });

describe('the usage ledger', () => {
  it('adds each generation to its UTC day, one document per owner and month', async () => {
    await recordUsage(h.blobs, 'acct_alice', 'job1', at('2026-12-05T23:59:59.999Z'), used(2, 3.5));
    await recordUsage(h.blobs, 'acct_alice', 'job2', at('2026-12-05T10:00:00Z'), used(1, 0.001));
    await recordUsage(h.blobs, 'acct_alice', 'job3', at('2026-12-06T00:00:00Z'), used(4, 10));
    await recordUsage(h.blobs, 'acct_alice', 'job4', at('2027-01-01T00:00:00Z'), used(1, 1));
    await recordUsage(h.blobs, 'acct_bob', 'job5', at('2026-12-05T12:00:00Z'), used(1, 7));
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([
      { date: '2026-12-05', generations: 2, images: 3, worker_seconds: 3.501, encoder_passes: 200 },
      { date: '2026-12-06', generations: 1, images: 4, worker_seconds: 10, encoder_passes: 100 },
    ]);
    expect(await readUsage(h.blobs, 'acct_alice', '2027-01')).toHaveLength(1);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-11')).toEqual([]);
    expect((await readUsage(h.blobs, 'acct_bob', '2026-12')).map((d) => d.worker_seconds)).toEqual([7]);
  });

  it('workers finishing at the same moment all count (conditional writes)', async () => {
    await Promise.all(Array.from({ length: 12 }, (_, i) => recordUsage(h.blobs, 'acct_alice', `job-race-${i}`, at('2026-12-05T12:00:00Z'), used(1, 0.25))));
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([{ date: '2026-12-05', generations: 12, images: 12, worker_seconds: 3, encoder_passes: 1200 }]);
  });

  it('counts a job once however often it is added: a repeat, and an S3 write that landed but whose reply was lost', async () => {
    await recordUsage(h.blobs, 'acct_alice', 'job-a', at('2026-12-05T12:00:00Z'), used(1, 2));
    await recordUsage(h.blobs, 'acct_alice', 'job-a', at('2026-12-05T12:00:01Z'), used(1, 2));
    // The SDK sends a PUT again when its reply is lost; the write had landed, so the retry's condition
    // fails, and the add is read again and retried: it must find the job there.
    const lossy = lostReplyOnce(h.blobs);
    await recordUsage(lossy.blobs, 'acct_alice', 'job-b', at('2026-12-05T12:00:02Z'), used(3, 4));
    expect(lossy.lost()).toBe(1);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([{ date: '2026-12-05', generations: 2, images: 4, worker_seconds: 6, encoder_passes: 200 }]);
  });

  it('itemises at most MAX_KEYS_PER_DAY keys a day; a job of one more still counts in the totals', async () => {
    const key = (i: number) => `${'0'.repeat(23)}${String(i).padStart(3, '0')}`; // API key ids: 26 characters
    for (let i = 0; i < MAX_KEYS_PER_DAY; i++) await recordUsage(h.blobs, 'acct_alice', `j${i}`, at('2026-12-05T10:00:00Z'), { ...used(1, 1), apiKeyId: key(i) });
    const extra = 'zzzzzzzzzzzzzzzzzzzzzzzzzz';
    await recordUsage(h.blobs, 'acct_alice', 'j-extra', at('2026-12-05T10:00:00Z'), { ...used(1, 1), apiKeyId: extra });
    await recordUsage(h.blobs, 'acct_alice', 'j-again', at('2026-12-05T10:00:00Z'), { ...used(1, 1), apiKeyId: key(7) }); // a key already there still adds up
    const [day] = await readUsage(h.blobs, 'acct_alice', '2026-12');
    expect(day!.generations).toBe(MAX_KEYS_PER_DAY + 2);
    expect(Object.keys(day!.by_api_key!)).toHaveLength(MAX_KEYS_PER_DAY);
    expect(Object.hasOwn(day!.by_api_key!, extra)).toBe(false);
    expect(day!.by_api_key![key(7)]!.generations).toBe(2);
    // Asked for the key left out, the API says that day's share of it is missing, rather than nothing.
    const app = createApp({ ...h.deps, clock: () => at('2026-12-20T08:00:00Z') });
    const res = (await (await app.request(`/v1/usage?api_key_id=${extra}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect([res.days, res.incomplete_days]).toEqual([[], ['2026-12-05']]);
    const itemised = (await (await app.request(`/v1/usage?api_key_id=${key(7)}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect([itemised.total.generations, itemised.incomplete_days]).toEqual([2, []]);
  });

  it('a month a later version wrote with fields this one does not know is read, and an add keeps them', async () => {
    const later = { v: 1, days: { '2026-12-05': { generations: 1, images: 1, worker_seconds: 2, encoder_passes: 10, gpu_joules: 500 } }, recent_jobs: ['j0'], watermark: 'x' };
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from(JSON.stringify(later)));
    await recordUsage(h.blobs, 'acct_alice', 'j1', at('2026-12-05T10:00:00Z'), used(1, 3));
    const stored = JSON.parse(Buffer.from((await h.blobs.get(usageKey('acct_alice', '2026-12')))!.body).toString());
    expect(stored).toMatchObject({ watermark: 'x', days: { '2026-12-05': { generations: 2, worker_seconds: 5, gpu_joules: 500 } }, recent_jobs: ['j0', 'j1'] });
  });

  it('an unreadable month is reported, never taken for zero, and not overwritten', async () => {
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from('{"v": 1, "days": {"2026-12-05": {"generations": -1'));
    await expect(readUsage(h.blobs, 'acct_alice', '2026-12')).rejects.toBeInstanceOf(CorruptDocumentError);
    await expect(recordUsage(h.blobs, 'acct_alice', 'job7', at('2026-12-05T12:00:00Z'), used(1, 1))).rejects.toBeInstanceOf(CorruptDocumentError);
    expect(Buffer.from((await h.blobs.get(usageKey('acct_alice', '2026-12')))!.body).toString()).toMatch(/"generations": -1/);
    // A day outside its month (or no real day) is as unreadable.
    for (const date of ['2026-11-30', '2026-12-32', '2026-02-31']) {
      await h.blobs.put(usageKey('acct_bob', '2026-12'), Buffer.from(JSON.stringify({ v: 1, days: { [date]: { generations: 1, images: 1, worker_seconds: 1, encoder_passes: 1 } } })));
      await expect(readUsage(h.blobs, 'acct_bob', '2026-12'), date).rejects.toBeInstanceOf(CorruptDocumentError);
    }
    expect(() => usageKey('../x', '2026-12')).toThrow(/not an owner id/);
    expect(() => usageKey('acct_alice', '2026-13')).toThrow(/not a month/);
  });
});

describe('GET /v1/usage', () => {
  const app = (workerHourlyUsd?: number) =>
    createApp({ ...h.deps, clock: () => at('2026-12-20T08:00:00Z'), limits: { ...LIMITS, ...(workerHourlyUsd === undefined ? {} : { workerHourlyUsd }) } });
  const get = (a: ReturnType<typeof app>, query = '', key = h.alice) => a.request(`/v1/usage${query}`, { headers: { Authorization: `Bearer ${key}` } });

  it("the caller's month, day by day, with totals and the cost at the deployment's price; the current UTC month by default", async () => {
    await recordUsage(h.blobs, 'acct_alice', 'job8', at('2026-12-05T10:00:00Z'), used(2, 1800));
    await recordUsage(h.blobs, 'acct_alice', 'job9', at('2026-12-19T10:00:00Z'), used(1, 360));
    await recordUsage(h.blobs, 'acct_bob', 'job10', at('2026-12-05T10:00:00Z'), used(1, 99));
    const res = await get(app(3.6)); // 0.001 USD a second
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      object: 'usage',
      month: '2026-12',
      api_key_id: null,
      incomplete_days: [],
      days: [
        { date: '2026-12-05', generations: 1, images: 2, worker_seconds: 1800, encoder_passes: 100, cost_usd: 1.8 },
        { date: '2026-12-19', generations: 1, images: 1, worker_seconds: 360, encoder_passes: 100, cost_usd: 0.36 },
      ],
      total: { generations: 2, images: 3, worker_seconds: 2160, encoder_passes: 200, cost_usd: 2.16 },
      hourly_usd: 3.6,
    });
    // Bob sees his own; a month with nothing is empty, not an error; without a price, no cost.
    expect(((await (await get(app(), '', h.bob)).json()) as any).total).toEqual({ generations: 1, images: 1, worker_seconds: 99, encoder_passes: 100, cost_usd: null });
    // The total's cost is the sum of the days' (each rounded to a millionth of a dollar).
    for (let d = 1; d <= 3; d++) await recordUsage(h.blobs, 'acct_bob', `job-b${d}`, at(`2026-10-0${d}T10:00:00Z`), used(1, 1));
    const oct = (await (await get(app(1), '?month=2026-10', h.bob)).json()) as any;
    expect([oct.days.map((d: any) => d.cost_usd), oct.total.cost_usd]).toEqual([[0.000278, 0.000278, 0.000278], 0.000834]);
    expect(await (await get(app(), '?month=2026-11')).json()).toEqual({
      object: 'usage', month: '2026-11', api_key_id: null, incomplete_days: [], days: [], total: { generations: 0, images: 0, worker_seconds: 0, encoder_passes: 0, cost_usd: null }, hourly_usd: null,
    });
  });

  it("each generation at the price its worker kept (the day's price), the rest at today's: a price change does not rewrite the past", async () => {
    // Dec 5: two jobs at 3.6 (0.001 USD a second) and one from before prices were kept; Dec 6: one at 7.2.
    await recordUsage(h.blobs, 'acct_alice', 'p1', at('2026-12-05T10:00:00Z'), { ...used(1, 100), hourlyUsd: 3.6 });
    await recordUsage(h.blobs, 'acct_alice', 'p2', at('2026-12-05T11:00:00Z'), { ...used(1, 50.5), hourlyUsd: 3.6 });
    await recordUsage(h.blobs, 'acct_alice', 'u1', at('2026-12-05T12:00:00Z'), used(1, 10));
    await recordUsage(h.blobs, 'acct_alice', 'p3', at('2026-12-06T12:00:00Z'), { ...used(2, 20), hourlyUsd: 7.2 });
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([
      { date: '2026-12-05', generations: 3, images: 3, worker_seconds: 160.5, encoder_passes: 300, priced_seconds: 150.5, priced_cost_usd: 0.1505 },
      { date: '2026-12-06', generations: 1, images: 2, worker_seconds: 20, encoder_passes: 100, priced_seconds: 20, priced_cost_usd: 0.04 },
    ]);
    // Today the price is 36 (0.01 USD a second): only the unpriced 10 s are at it.
    const now = (await (await get(app(36))).json()) as any;
    expect(now.days.map((d: any) => d.cost_usd)).toEqual([0.1505 + 0.1, 0.04]);
    expect(now.total.cost_usd).toBe(0.2905);
    expect(now.days[0]).not.toHaveProperty('priced_seconds'); // the ledger's split is internal
    // With no price today, a day with unpriced seconds has no cost, and so has the total; a day priced throughout keeps its own.
    const none = (await (await get(app())).json()) as any;
    expect([none.days.map((d: any) => d.cost_usd), none.total.cost_usd, none.hourly_usd]).toEqual([[null, 0.04], null, null]);
  });

  it('?api_key_id= sums only the generations that key created; jobs from before keys were recorded count in the account only', async () => {
    const second = await h.keys.create({ name: 'ci', owner: 'acct_alice' });
    const first = h.alice.split('_')[1]!;
    // The API records the creating key on each generation, and the worker passes it to the ledger.
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' }, key: second.secret });
    const created = (await res.json()) as any;
    expect(created.api_key_id).toBe(second.record.id);
    expect((await h.jobs.get('acct_alice', created.id))!.api_key_id).toBe(second.record.id);
    await recordUsage(h.blobs, 'acct_alice', 'k1', at('2026-12-05T10:00:00Z'), { ...used(1, 100), apiKeyId: first, hourlyUsd: 3.6 });
    await recordUsage(h.blobs, 'acct_alice', 'k2', at('2026-12-05T11:00:00Z'), { ...used(2, 30), apiKeyId: second.record.id, hourlyUsd: 3.6 });
    await recordUsage(h.blobs, 'acct_alice', 'k3', at('2026-12-07T11:00:00Z'), { ...used(1, 10), apiKeyId: second.record.id, hourlyUsd: 3.6 });
    await recordUsage(h.blobs, 'acct_alice', 'old', at('2026-12-05T12:00:00Z'), { ...used(1, 5), hourlyUsd: 3.6 }); // no key recorded
    const whole = (await (await get(app(3.6))).json()) as any;
    expect([whole.api_key_id, whole.total]).toEqual([null, { generations: 4, images: 5, worker_seconds: 145, encoder_passes: 400, cost_usd: 0.145 }]);
    const mine = (await (await get(app(3.6), `?api_key_id=${second.record.id}`)).json()) as any;
    expect(mine).toEqual({
      object: 'usage',
      month: '2026-12',
      api_key_id: second.record.id,
      incomplete_days: [],
      days: [
        { date: '2026-12-05', generations: 1, images: 2, worker_seconds: 30, encoder_passes: 100, cost_usd: 0.03 },
        { date: '2026-12-07', generations: 1, images: 1, worker_seconds: 10, encoder_passes: 100, cost_usd: 0.01 },
      ],
      total: { generations: 2, images: 3, worker_seconds: 40, encoder_passes: 200, cost_usd: 0.04 },
      hourly_usd: 3.6,
    });
    expect(((await (await get(app(3.6), `?api_key_id=${first}`)).json()) as any).total.worker_seconds).toBe(100);
    // Another account's key (or one never used) shows nothing of theirs, not an error.
    expect(((await (await get(app(3.6), `?api_key_id=${h.bob.split('_')[1]}`)).json()) as any).days).toEqual([]);
    // Only an API key id is one: no name that a plain object answers to (constructor, __proto__, …).
    for (const bad of ['../x', 'constructor', '__proto__', 'toString', 'hasOwnProperty', first.toUpperCase()]) {
      await expectEnvelope(await get(app(), `?api_key_id=${bad}`), 400, 'validation_error');
    }
  });

  it('a malformed month is a 400 naming it; no key is a 401; an unreadable month is a 409, not a 500', async () => {
    for (const q of ['?month=2026-13', '?month=12-2026', '?month=2026-1', '?month=']) {
      const res = await get(app(), q);
      await expectEnvelope(res, 400, 'validation_error');
    }
    // A parameter given twice is named as such, as on the list (not zod's "expected string, received array").
    for (const q of ['?month=2026-12&month=2026-11', '?api_key_id=a&api_key_id=b&api_key_id=c']) {
      const err = await expectEnvelope(await get(app(), q), 400, 'validation_error');
      const name = q.slice(1, q.indexOf('='));
      expect(err.param).toBe(name);
      expect(err.message).toBe(`${name} is given ${q.split('&').length} times; give it once`);
    }
    expect((await app().request('/v1/usage')).status).toBe(401);
    expect((await app().request('/v1/usage', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } })).status).toBe(405);
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from('not json'));
    await expectEnvelope(await get(app()), 409, 'corrupt_record');
  });
});
