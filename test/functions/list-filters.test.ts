/**
 * GET /v1/generations filters: a creation-time window (created_after / created_before, both
 * exclusive), metadata[KEY]=VALUE and webhook_status, alone and together, with paging; and what each
 * costs in store reads: created_before is a start position, created_after an end, the others a scan
 * bounded as `status`'s is (LIST_SCAN_LIMIT).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { LIST_ANSWER_BUDGET_BYTES } from '../../functions/routes/generations.ts';
import { newJobId } from '../../shared/ids.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const T0 = Date.parse('2026-11-01T00:00:00.000Z');
const at = (i: number) => new Date(T0 + i * 60_000); // job i made i minutes after T0

/** `count` of alice's jobs, job i at `at(i)`: metadata batch=b{i%3}, every 4th with a webhook that failed, every 4th + 1 with one delivered. */
async function jobsOfAlice(count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const now = at(i);
    const webhook = i % 4 < 2 ? { url: 'https://example.com/hook', secret: `whsec_${'a'.repeat(32)}` } : undefined;
    const job = newJobRecord({ id: newJobId(now.getTime()), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `p${i}`, model: 'toy' }), metadata: { batch: `b${i % 3}`, n: String(i) }, ...(webhook ? { webhook } : {}) });
    const ended = now.toISOString();
    const record: JobRecord = {
      ...job,
      status: i % 2 === 0 ? 'succeeded' : 'failed',
      ...(job.webhook ? { webhook: { ...job.webhook, attempts: 1, ...(i % 4 === 0 ? { given_up_at: ended } : { delivered_at: ended }) } } : {}),
    };
    await h.jobs.create(record);
    ids.push(job.id);
  }
  return ids;
}

type Page = { data: Array<{ id: string; metadata: Record<string, string>; webhook: { status: string } | null; status: string }>; next_cursor: string | null };

/** Every page of a filtered list, following next_cursor. */
async function all(query: string, limit = 5, from: string | null = null): Promise<Page[]> {
  const pages: Page[] = [];
  let cursor = from;
  do {
    const res = await h.request(`/v1/generations?${query}&limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`);
    expect(res.status, query).toBe(200);
    pages.push((await res.json()) as Page);
    cursor = pages.at(-1)!.next_cursor;
  } while (cursor && pages.length < 100);
  return pages;
}
const idsOf = (pages: Page[]) => pages.flatMap((p) => p.data.map((g) => g.id));
/** The ids of the jobs whose index passes `pred`, newest first (as lists answer). */
const expected = (ids: string[], pred: (i: number) => boolean) => ids.map((id, i) => [id, i] as const).filter(([, i]) => pred(i)).map(([id]) => id).reverse();

/** The app on a blob store that counts its GETs. */
function countingGets(): { get: (query: string) => Promise<{ body: Page; gets: number }> } {
  let gets = 0;
  const blobs = new Proxy(h.blobs, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        if (prop === 'get') gets++;
        return value.apply(target, args);
      };
    },
  }) as BlobStore;
  const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs) });
  return {
    get: async (query) => {
      gets = 0;
      const res = await app.request(`/v1/generations?${query}`, { headers: { Authorization: `Bearer ${h.alice}` } });
      expect(res.status).toBe(200);
      return { body: (await res.json()) as Page, gets };
    },
  };
}

describe('GET /v1/generations: a creation-time window', () => {
  it('created_after and created_before are exclusive bounds, and page through the window newest first', async () => {
    const ids = await jobsOfAlice(40);
    const window = await all(`created_after=${at(10).toISOString()}&created_before=${at(30).toISOString()}`, 6);
    expect(idsOf(window)).toEqual(expected(ids, (i) => i > 10 && i < 30));
    // The pages are full until the window ends, and the last one says so.
    expect(window.map((p) => p.data.length)).toEqual([6, 6, 6, 1]);
    expect(window.at(-1)!.next_cursor).toBeNull();
    expect(idsOf(await all(`created_before=${at(3).toISOString()}`))).toEqual(expected(ids, (i) => i < 3));
    expect(idsOf(await all(`created_after=${at(36).toISOString()}`))).toEqual(expected(ids, (i) => i > 36));
    // Any RFC 3339 offset is the same instant: 01:10+01:00 is 00:10Z.
    expect(idsOf(await all(`created_after=${encodeURIComponent('2026-11-01T01:10:00+01:00')}&created_before=${at(13).toISOString()}`))).toEqual(expected(ids, (i) => i > 10 && i < 13));
    // Sub-millisecond bounds: a job made at 00:12:00.000 is after 00:11:59.9999 and before 00:12:00.0001.
    expect(idsOf(await all('created_after=2026-11-01T00:11:59.9999Z&created_before=2026-11-01T00:12:00.0001Z'))).toEqual([ids[12]]);
  });

  it('created_before and created_after cost no scan: a page reads only the generations it shows', async () => {
    await jobsOfAlice(60);
    const { get } = countingGets();
    const before = await get(`created_before=${at(20).toISOString()}&limit=5`);
    expect(before.body.data.map((g) => g.metadata.n)).toEqual(['19', '18', '17', '16', '15']);
    expect(before.gets).toBe(5);
    const after = await get(`created_after=${at(57).toISOString()}&limit=20`);
    expect(after.body.data.map((g) => g.metadata.n)).toEqual(['59', '58']);
    expect(after.body.next_cursor).toBeNull();
    // Read: the two shown; the end is found in the key listing, before any document is read.
    expect(after.gets).toBe(2);
  });

  it('with a cursor, paging goes on from the older of the cursor and created_before', async () => {
    const ids = await jobsOfAlice(30);
    const bound = `created_before=${at(20).toISOString()}`;
    // A cursor newer than the bound (an earlier page of the unfiltered list) does not let newer ones in.
    expect(idsOf(await all(bound, 5, ids[25]!))).toEqual(expected(ids, (i) => i < 20));
    // A cursor older than the bound goes on after it.
    expect(idsOf(await all(bound, 5, ids[8]!))).toEqual(expected(ids, (i) => i < 8));
  });

  it('a window that is empty or backwards is refused; a date that is not RFC 3339 is refused naming the rule', async () => {
    const same = await expectEnvelope(await h.request(`/v1/generations?created_after=${at(1).toISOString()}&created_before=${at(1).toISOString()}`), 400, 'validation_error');
    expect([same.param, same.message]).toEqual(['created_after', 'created_after must be earlier than created_before (both are exclusive)']);
    // Lower-case t and z and a leap second are RFC 3339 too, but not taken: the message says so rather than "not RFC 3339".
    for (const bad of ['2026-11-01', 'yesterday', '2026-13-01T00:00:00Z', '1730419200', '2026-12-01t00:00:00z', '2016-12-31T23:59:60Z']) {
      const err = await expectEnvelope(await h.request(`/v1/generations?created_before=${bad}`), 400, 'validation_error');
      expect([err.param, err.message], bad).toEqual(['created_before', 'created_before must be an RFC 3339 date-time with an upper-case T and Z (or an offset), seconds 00 to 59, such as 2026-12-01T00:00:00Z']);
    }
  });
});

describe('GET /v1/generations: metadata and webhook_status', () => {
  it('metadata[KEY]=VALUE shows the generations with exactly that label; several must all match; brackets may come percent-encoded', async () => {
    const ids = await jobsOfAlice(30);
    expect(idsOf(await all('metadata[batch]=b1'))).toEqual(expected(ids, (i) => i % 3 === 1));
    expect(idsOf(await all('metadata%5Bbatch%5D=b2&metadata%5Bn%5D=14'))).toEqual([ids[14]]);
    expect(idsOf(await all('metadata[batch]=b2&metadata[n]=13'))).toEqual([]);
    // Exact, not a prefix or a case-folded match; a key no generation has matches none.
    expect(idsOf(await all('metadata[batch]=b'))).toEqual([]);
    expect(idsOf(await all('metadata[batch]=B1'))).toEqual([]);
    expect(idsOf(await all('metadata[order]=b1'))).toEqual([]);
    // An empty value matches an empty label only (none here), not a missing one.
    expect(idsOf(await all('metadata[order]='))).toEqual([]);
  });

  it('webhook_status picks by delivery state; generations without a webhook have none to match', async () => {
    const ids = await jobsOfAlice(24);
    const failed = await all('webhook_status=failed');
    expect(idsOf(failed)).toEqual(expected(ids, (i) => i % 4 === 0));
    expect(failed.flatMap((p) => p.data.map((g) => g.webhook?.status))).toEqual(Array(6).fill('failed'));
    expect(idsOf(await all('webhook_status=delivered'))).toEqual(expected(ids, (i) => i % 4 === 1));
    expect(idsOf(await all('webhook_status=pending'))).toEqual([]);
    await expectEnvelope(await h.request('/v1/generations?webhook_status=given_up'), 400, 'validation_error');
  });

  it('api_key_id shows what one key of the account made (after a leak: what to cancel); another key\'s id, or none recorded, matches none', async () => {
    const created = await h.keys.create({ name: 'ci', owner: 'acct_alice' });
    const leaked = { id: created.record.id, secret: created.secret };
    const made = async (key: string) => {
      const res = await h.app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple' }) });
      expect(res.status).toBe(202);
      return ((await res.json()) as { id: string; api_key_id: string }).id;
    };
    const byLeaked = [await made(leaked.secret), await made(h.alice), await made(leaked.secret)];
    const pages = await all(`api_key_id=${leaked.id}`);
    expect(idsOf(pages)).toEqual([byLeaked[2], byLeaked[0]]);
    expect(pages.flatMap((p) => p.data.map((g) => (g as unknown as { api_key_id: string }).api_key_id))).toEqual([leaked.id, leaked.id]);
    // With status too: the queued ones, to cancel.
    expect(idsOf(await all(`api_key_id=${leaked.id}&status=queued`))).toEqual([byLeaked[2], byLeaked[0]]);
    expect(idsOf(await all(`api_key_id=${newJobId()}`))).toEqual([]);
    const bad = await expectEnvelope(await h.request('/v1/generations?api_key_id=ck_live'), 400, 'validation_error');
    expect(bad.param).toBe('api_key_id');
  });

  it('every filter at once: the generations that pass all of them', async () => {
    const ids = await jobsOfAlice(60);
    const query = `status=succeeded&webhook_status=failed&metadata[batch]=b0&created_after=${at(5).toISOString()}&created_before=${at(55).toISOString()}`;
    expect(idsOf(await all(query, 2))).toEqual(expected(ids, (i) => i % 2 === 0 && i % 4 === 0 && i % 3 === 0 && i > 5 && i < 55));
    expect(idsOf(await all(query, 2))).toEqual([ids[48], ids[36], ids[24], ids[12]]);
  });

  it('a bad metadata filter is refused, saying how one is written; none is taken with idempotency_key', async () => {
    const bare = await expectEnvelope(await h.request('/v1/generations?metadata=batch'), 400, 'validation_error');
    expect(bare.message).toMatch(/metadata\[KEY\]=VALUE/);
    for (const key of ['', 'a b', 'ä', 'x'.repeat(41)]) {
      const err = await expectEnvelope(await h.request(`/v1/generations?metadata[${encodeURIComponent(key)}]=1`), 400, 'validation_error');
      expect([err.param, err.message], key).toEqual(['metadata', expect.stringMatching(/metadata keys are letters, digits/)]);
    }
    const long = await expectEnvelope(await h.request(`/v1/generations?metadata[batch]=${'v'.repeat(501)}`), 400, 'validation_error');
    expect(long.message).toMatch(/at most 500 characters/);
    const many = Array.from({ length: 17 }, (_, i) => `metadata[k${i}]=v`).join('&');
    expect((await expectEnvelope(await h.request(`/v1/generations?${many}`), 400, 'validation_error')).message).toMatch(/at most 16 metadata filters/);
    // A nested bracket is not a metadata key: the parameter is unknown.
    const nested = await expectEnvelope(await h.request('/v1/generations?metadata[a][b]=1'), 400, 'validation_error');
    expect(nested.message).toMatch(/unknown query parameter/);
    for (const other of ['metadata[batch]=b1', `created_after=${at(1).toISOString()}`, 'webhook_status=failed']) {
      const err = await expectEnvelope(await h.request(`/v1/generations?idempotency_key=k1&${other}`), 400, 'validation_error');
      expect(err.message, other).toMatch(/cannot be combined with idempotency_key/);
    }
  });

  it("another account's generations never match", async () => {
    await jobsOfAlice(6);
    const res = await h.request('/v1/generations?metadata[batch]=b0', { key: h.bob });
    expect(((await res.json()) as Page).data).toEqual([]);
  });
});

describe('GET /v1/generations: a page fits one answer', () => {
  it("ends a page early once its generations pass LIST_ANSWER_BUDGET_BYTES as Lambda escapes them, and next_cursor goes on from its last one (review-lambda 1)", async () => {
    // 100 generations with the largest labels, all control characters: each is 6 bytes in JSON and 7
    // once Lambda escapes the body again, so a full page is about 5.6 MB (over Lambda's 6 MB with the rest).
    const labels = Object.fromEntries(Array.from({ length: 16 }, (_, k) => [`k${k}`, '\u0001'.repeat(500)]));
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      const now = at(i);
      const job = newJobRecord({ id: newJobId(now.getTime()), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `p${i}`, model: 'toy' }), metadata: labels });
      await h.jobs.create(job);
      ids.push(job.id);
    }
    const first = await h.request('/v1/generations?limit=100');
    expect(first.status).toBe(200);
    const text = await first.text();
    const page = JSON.parse(text) as Page;
    expect(page.data.length).toBeGreaterThan(0);
    expect(page.data.length).toBeLessThan(100);
    // The page as Lambda carries it stays under the budget, with room to spare for the envelope.
    expect(Buffer.byteLength(JSON.stringify(text))).toBeLessThanOrEqual(LIST_ANSWER_BUDGET_BYTES + 64 * 1024);
    expect(page.next_cursor).toBe(page.data.at(-1)!.id);
    // Paging on gives the rest, in order, none twice or missed.
    const rest = await all('', 100, page.next_cursor);
    expect([...idsOf([page]), ...idsOf(rest)]).toEqual([...ids].reverse());
  });
});
