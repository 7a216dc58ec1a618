// Idempotency-Key claims written by a newer API (ADR 0004; the compatibility review, F2): a claim with a
// higher `v`, or this `v` with a field added, read by this version (the older Lambda during a deploy,
// or after a rollback). It names the job the caller's first request made: taking it over as corrupt
// made a second job for the retry, billed twice. Truly unreadable claims are still taken over
// (test/functions/corrupt-records.test.ts, generations.test.ts).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { canonicalJson, IdempotencyLedger, idempotencyRecordKey } from '../../functions/idempotency.ts';
import { NEWER_RECORD_RETRY_AFTER_SEC } from '../../functions/middleware/errors.ts';
import { newJobId } from '../../shared/ids.ts';
import { sha256Hex } from '../../shared/schemas/apikey.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const OWNER = 'acct_alice';
const post = (json: unknown, key: string) => h.request('/v1/generations', { json, headers: { 'Idempotency-Key': key } });
const readClaim = async (key: string) => JSON.parse(Buffer.from((await h.blobs.get(idempotencyRecordKey(OWNER, key)))!.body).toString()) as Record<string, unknown>;
const writeClaim = (key: string, claim: unknown) => h.blobs.put(idempotencyRecordKey(OWNER, key), Buffer.from(JSON.stringify(claim)));
const jobCount = async () => (await h.jobs.listByOwner(OWNER)).jobs.length;
const logged = (msg: RegExp) => h.logs.filter((l) => msg.test((l as { msg?: string }).msg ?? ''));
/** Said instead of the generic "a dependency is temporarily unavailable": the caller learns it is a deploy, not an outage. */
const NEWER_CLAIM_MESSAGE = 'the Idempotency-Key claim for this request was written by a newer version of the service; retry later';

describe('an Idempotency-Key claim a newer API wrote', () => {
  it.each([
    ['a higher v', (c: Record<string, unknown>) => ({ ...c, v: 3 })],
    ['this v with a field added', (c: Record<string, unknown>) => ({ ...c, request_id: 'req-1' })],
    ['a higher v with a field added', (c: Record<string, unknown>) => ({ ...c, v: 7, hash_alg: 'sha3' })],
  ])('%s: the retry replays its job (200, Idempotent-Replayed), one job and one message, nothing taken over', async (_name, newer) => {
    const first = await post({ prompt: 'a red circle', steps: 2 }, 'order-1');
    expect(first.status).toBe(202);
    const { id } = (await first.json()) as { id: string };
    await writeClaim('order-1', newer(await readClaim('order-1')));
    const retry = await post({ prompt: 'a red circle', steps: 2 }, 'order-1');
    expect([retry.status, retry.headers.get('Idempotent-Replayed'), ((await retry.json()) as { id: string }).id]).toEqual([200, 'true', id]);
    expect(await jobCount()).toBe(1);
    expect(await h.queue.depth()).toBe(1);
    expect(logged(/taken over/)).toEqual([]);
    // The lookup finds it, and another body with the key is still the caller's reuse.
    const found = (await (await h.request('/v1/generations?idempotency_key=order-1')).json()) as { data: Array<{ id: string }> };
    expect(found.data.map((g) => g.id)).toEqual([id]);
  });

  it('this v with a field added and another body is a reuse (409), as its own claim would be', async () => {
    expect((await post({ prompt: 'apple' }, 'order-2')).status).toBe(202);
    await writeClaim('order-2', { ...(await readClaim('order-2')), request_id: 'req-2' });
    await expectEnvelope(await post({ prompt: 'pear' }, 'order-2'), 409, 'idempotency_key_reused');
    expect(await jobCount()).toBe(1);
  });

  it('a higher v whose body hash differs cannot be told a reuse (it may hash the same body otherwise): 503 with Retry-After, no second job, an error line', async () => {
    expect((await post({ prompt: 'apple' }, 'order-3')).status).toBe(202);
    await writeClaim('order-3', { ...(await readClaim('order-3')), v: 3, body_hash: sha256Hex('hashed as v 3 hashes') });
    const before = await readClaim('order-3');
    const res = await post({ prompt: 'apple' }, 'order-3');
    // The same wait as a job record a newer version wrote: the same deploy in progress.
    expect(res.headers.get('Retry-After')).toBe(String(NEWER_RECORD_RETRY_AFTER_SEC));
    expect((await expectEnvelope(res, 503, 'unavailable')).message).toBe(NEWER_CLAIM_MESSAGE);
    expect(await jobCount()).toBe(1);
    expect(await readClaim('order-3')).toEqual(before);
    expect(logged(/idempotency claim written by a newer clipag/)).toEqual([expect.objectContaining({ level: 'error', key: idempotencyRecordKey(OWNER, 'order-3') })]);
  });

  it('a higher v whose fields do not read here is never taken over: POST and lookup answer 503 (Retry-After), the claim stays, no job is made', async () => {
    // What a v 4 might write: the job id moved into an object, the time as a number.
    const claim = { v: 4, job: { id: newJobId(), owner: OWNER }, body: { sha256: 'x'.repeat(64) }, created_ms: Date.now() };
    await writeClaim('order-4', claim);
    const res = await post({ prompt: 'apple' }, 'order-4');
    expect(res.headers.get('Retry-After')).toBe(String(NEWER_RECORD_RETRY_AFTER_SEC));
    expect((await expectEnvelope(res, 503, 'unavailable')).message).toBe(NEWER_CLAIM_MESSAGE);
    // "None" would invite a new POST with the key.
    const lookup = await h.request('/v1/generations?idempotency_key=order-4');
    expect(lookup.headers.get('Retry-After')).toBe(String(NEWER_RECORD_RETRY_AFTER_SEC));
    expect((await expectEnvelope(lookup, 503, 'unavailable')).message).toBe(NEWER_CLAIM_MESSAGE);
    expect(await readClaim('order-4')).toEqual(claim);
    expect(await jobCount()).toBe(0);
    expect(await h.queue.depth()).toBe(0);
    expect(logged(/taken over/)).toEqual([]);
    expect(logged(/idempotency claim written by a newer clipag/)).toContainEqual(expect.objectContaining({ level: 'error', detail: expect.stringContaining('does not match its schema') }));
    // A newer v with a valid job id but a time this version cannot read is not a takeover either.
    await writeClaim('order-5', { v: 3, body_hash: 'x'.repeat(64), job_id: newJobId(), created_at: 1_700_000_000 });
    await expectEnvelope(await post({ prompt: 'apple' }, 'order-5'), 503, 'unavailable');
    expect(await jobCount()).toBe(0);
  });

  it('a newer claim still being made (no job yet) waits as its own would (409 in progress); a stale one made nothing and is taken over', async () => {
    const ledger = new IdempotencyLedger(h.blobs, h.jobs, { waitMs: 0 });
    const bodyHash = sha256Hex(canonicalJson({ prompt: 'fig' }));
    await writeClaim('live', { v: 3, body_hash: bodyHash, job_id: newJobId(), created_at: new Date().toISOString(), shard: 2 });
    await expect(ledger.claim({ owner: OWNER, key: 'live', bodyHash, jobId: newJobId(), now: new Date() })).rejects.toMatchObject({ code: 'idempotency_in_progress', status: 409 });
    // Another hash on a live newer claim: neither a wait nor a reuse can be told.
    await expect(ledger.claim({ owner: OWNER, key: 'live', bodyHash: 'other', jobId: newJobId(), now: new Date() })).rejects.toMatchObject({ code: 'unavailable', status: 503 });
    await writeClaim('stale', { v: 3, body_hash: bodyHash, job_id: newJobId(), created_at: new Date(Date.now() - 3_600_000).toISOString(), shard: 2 });
    const mine = newJobId();
    expect(await ledger.claim({ owner: OWNER, key: 'stale', bodyHash, jobId: mine, now: new Date() })).toEqual({ kind: 'claimed', jobId: mine });
    expect(await readClaim('stale')).toMatchObject({ v: 2, job_id: mine });
  });

  it("a release or confirm of this version's own claim keeps a field a newer version added to it", async () => {
    const ledger = new IdempotencyLedger(h.blobs, h.jobs);
    const jobId = newJobId();
    await ledger.claim({ owner: OWNER, key: 'kept', bodyHash: 'h', jobId, now: new Date() });
    await writeClaim('kept', { ...(await readClaim('kept')), request_id: 'req-9' });
    expect(await ledger.confirm({ owner: OWNER, key: 'kept', jobId, now: new Date() })).toBe(true);
    await ledger.release({ owner: OWNER, key: 'kept', jobId });
    expect(await readClaim('kept')).toMatchObject({ request_id: 'req-9', job_id: jobId, created_at: new Date(0).toISOString() });
  });

  it.each([
    ['not JSON', Buffer.from('{"v": 3, "job_id"')],
    ['JSON without a version or job', Buffer.from('{"hello":"world"}')],
    ['this v without a job id', Buffer.from(JSON.stringify({ v: 2, body_hash: 'x', created_at: new Date().toISOString() }))],
    ['a version that is no number', Buffer.from(JSON.stringify({ v: '3', body_hash: 'x', job_id: 'abc', created_at: new Date().toISOString() }))],
  ])('a claim that is unreadable for sure (%s) is still taken over: 202, and a replay finds it', async (_name, bytes) => {
    await h.blobs.put(idempotencyRecordKey(OWNER, 'junk'), bytes);
    const first = await post({ prompt: 'a dog' }, 'junk');
    expect(first.status).toBe(202);
    const again = await post({ prompt: 'a dog' }, 'junk');
    expect([again.status, ((await again.json()) as { id: string }).id]).toEqual([200, ((await first.json()) as { id: string }).id]);
    expect(logged(/corrupt idempotency claim taken over/)).toHaveLength(1);
  });
});

describe('release (a mutation review: a release that no longer checked the job survived before)', () => {
  it("a request that gives up its claim after a takeover leaves the taker's claim alone (no second takeover, no second job)", async () => {
    const ledger = new IdempotencyLedger(h.blobs, h.jobs, { staleMs: 30_000, waitMs: 200 });
    const t0 = new Date('2026-12-20T08:00:00Z');
    const first = newJobId(t0.getTime());
    expect(await ledger.claim({ owner: 'acct_alice', key: 'k', bodyHash: 'h', jobId: first, now: t0 })).toEqual({ kind: 'claimed', jobId: first });
    // The first request stalls past the stale age; a retry takes the key over.
    const t1 = new Date(t0.getTime() + 31_000);
    const second = newJobId(t1.getTime());
    expect(await ledger.claim({ owner: 'acct_alice', key: 'k', bodyHash: 'h', jobId: second, now: t1 })).toEqual({ kind: 'claimed', jobId: second });
    const before = (await h.blobs.get(idempotencyRecordKey('acct_alice', 'k')))!.body;
    // The stalled first request's create fails, and it releases what it believes is its claim.
    await ledger.release({ owner: 'acct_alice', key: 'k', jobId: first });
    expect(Buffer.from((await h.blobs.get(idempotencyRecordKey('acct_alice', 'k')))!.body).toString()).toBe(Buffer.from(before).toString());
  });
});

// The compatibility review's F1: a POST a newer API took (its answer lost), retried with its key once the
// API is rolled back to this version, which does not read a field of the body. The body is refused
// before the route runs, so the key was never looked at: a 400 told the caller the request was wrong,
// though its generation exists and runs (billed) on a newer worker.
describe("a retry whose body only a newer version reads, of a key that made a generation", () => {
  /** The job as the newer API stored it: its spec holds what this version does not read. */
  async function storedByANewerApi(id: string, spec: Record<string, unknown>): Promise<void> {
    const key = `jobs/${OWNER}/${id}.json`;
    const raw = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString()) as { spec: Record<string, unknown> };
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...raw, spec: { ...raw.spec, ...spec } })), { contentType: 'application/json' });
  }

  it.each([
    ['a field this version does not know', { prompt: 'a red circle', guidance: 3 }, { guidance: 3 }, 'guidance'],
    ['an output format it does not know', { prompt: 'a red circle', output_format: 'avif' }, { output_format: 'avif' }, 'output_format: "avif"'],
    ['a webhook event it does not know', { prompt: 'a red circle', webhook_url: 'https://hooks.example.com/x', webhook_events: ['ended', 'progress'] }, { webhook_events: ['ended', 'progress'] }, 'webhook_events: ["progress"]'],
  ])('%s: 503 unavailable with the newer-version Retry-After, naming the generation and the field; nothing made', async (_name, newerBody, newerSpec, named) => {
    // What the newer API made for it: a generation whose stored request holds the same newer field.
    const first = await post({ prompt: 'a red circle' }, 'order-9');
    const { id } = (await first.json()) as { id: string };
    await storedByANewerApi(id, newerSpec);
    const retry = await post(newerBody, 'order-9');
    const err = await expectEnvelope(retry, 503, 'unavailable');
    expect(retry.headers.get('Retry-After')).toBe(String(NEWER_RECORD_RETRY_AFTER_SEC));
    expect(err.message).toBe(`this Idempotency-Key already made generation ${id}, with request fields this version of the service does not read (${named}): the service is being deployed or rolled back; retry later with the same key and body`);
    // One job document (the listing leaves a newer one out): nothing made.
    expect((await h.blobs.list(`jobs/${OWNER}/`)).items.map((i) => i.key)).toEqual([`jobs/${OWNER}/${id}.json`]);
  });

  it('without a key, with a key that made nothing, with one whose generation reads here (a typo, not a newer body: the diff review), or for a body wrong in itself: the usual 400', async () => {
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', guidance: 3 } }), 400, 'validation_error');
    await expectEnvelope(await post({ prompt: 'a', guidance: 3 }, 'never-used'), 400, 'validation_error');
    expect((await post({ prompt: 'a red circle' }, 'order-10')).status).toBe(202);
    // The key's generation is this version's own: a mistyped field under it is the caller's mistake, said as one.
    const typo = await expectEnvelope(await post({ prompt: 'a red circle', promt: 'x' }, 'order-10'), 400, 'validation_error');
    expect([typo.param, typo.message]).toEqual(['promt', 'promt: Unrecognized key: "promt" (did you mean "prompt"?)']);
    await expectEnvelope(await post({ prompt: 'a red circle', output_format: 'gif' }, 'order-10'), 400, 'validation_error');
    // A wrong value of a known field is no newer version's: 400, whatever the key made.
    const wrong = await expectEnvelope(await post({ prompt: 'a red circle', steps: -1 }, 'order-10'), 400, 'validation_error');
    expect(wrong.param).toBe('steps');
    // An unknown event without the key is still refused with its own words.
    const events = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', webhook_url: 'https://hooks.example.com/x', webhook_events: ['ended', 'progress'] } }), 400, 'validation_error');
    expect([events.param, events.message]).toEqual(['webhook_events', 'webhook_events has unknown event "progress": the events are "started" and "ended"']);
    expect(await jobCount()).toBe(1);
  });
});
