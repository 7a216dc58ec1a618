// Corrupt stored documents (truncated writes, bit rot, a hand edit): every reader goes through
// readDoc, so the caller gets a clear answer instead of a permanent 500 (SyntaxError / ZodError).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readDoc } from '../../shared/documents.ts';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { JobRecord } from '../../shared/schemas/job.ts';
import { idempotencyRecordKey } from '../../functions/idempotency.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const CORRUPTIONS: [string, Uint8Array][] = [
  ['zero bytes', new Uint8Array(0)],
  ['truncated JSON', Buffer.from('{"id":"abc","owner":')],
  ['valid JSON, wrong shape', Buffer.from('{"hello":"world"}')],
  ['not UTF-8', Uint8Array.from([0xff, 0xfe, 0x7b, 0x7d])],
];

async function createJob(prompt: string): Promise<string> {
  const res = await h.request('/v1/generations', { json: { prompt, steps: 5 } });
  expect(res.status).toBe(202);
  return ((await res.json()) as { id: string }).id;
}

describe('readDoc', () => {
  it.each(CORRUPTIONS)('%s → CorruptDocumentError (non-retryable, 409 corrupt_record) naming the key', (_name, bytes) => {
    let caught: unknown;
    try {
      readDoc(JobRecord, bytes, 'jobs/a/b.json');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(CorruptDocumentError);
    const e = caught as CorruptDocumentError;
    expect([e.code, e.status, e.retryable, e.key]).toEqual(['corrupt_record', 409, false, 'jobs/a/b.json']);
    expect(e.message).not.toContain('jobs/a/b.json');
  });
});

describe('corrupt job documents', () => {
  it.each(CORRUPTIONS)('GET of a %s job → 409 corrupt_record envelope, not 500; cancel too', async (_name, bytes) => {
    const id = await createJob('a cat');
    await h.blobs.put(BlobJobStore.keyFor('acct_alice', id), bytes);
    await expectEnvelope(await h.request(`/v1/generations/${id}`), 409, 'corrupt_record');
    await expectEnvelope(await h.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { 'content-type': 'application/json' } }), 409, 'corrupt_record');
  });

  it('an output key the store cannot sign makes that record corrupt: 409 for it, skipped in the list (not a 400 for both)', async () => {
    const good = await createJob('one');
    const bad = await createJob('two');
    const key = BlobJobStore.keyFor('acct_alice', bad);
    const record = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString()) as Record<string, unknown>;
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...record, status: 'succeeded', outputs: [{ key: 'outputs/acct_alice/x y.png', width: 64, height: 64 }] })));
    const err = await expectEnvelope(await h.request(`/v1/generations/${bad}`), 409, 'corrupt_record');
    expect(err.message).not.toContain('x y.png');
    const list = await h.request('/v1/generations');
    expect(list.status).toBe(200);
    expect(((await list.json()) as { data: { id: string }[] }).data.map((j) => j.id)).toEqual([good]);
  });

  it('a field written by a newer version is not corruption: the job is served, and a cancel keeps the field', async () => {
    const id = await createJob('from the future');
    const key = BlobJobStore.keyFor('acct_alice', id);
    const record = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString()) as Record<string, unknown>;
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...record, added_later: { by: 'a newer worker' } })));
    expect((await h.request(`/v1/generations/${id}`)).status).toBe(200);
    expect((await h.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { 'content-type': 'application/json' } })).status).toBe(200);
    const after = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString()) as Record<string, unknown>;
    expect(after).toMatchObject({ status: 'canceled', added_later: { by: 'a newer worker' } });
  });

  it('a document under one owner naming another job is corrupt too (not a retryable 412)', async () => {
    const a = await createJob('one');
    const b = await createJob('two');
    const other = await h.blobs.get(BlobJobStore.keyFor('acct_alice', b));
    await h.blobs.put(BlobJobStore.keyFor('acct_alice', a), other!.body);
    await expect(h.jobs.get('acct_alice', a)).rejects.toBeInstanceOf(CorruptDocumentError);
  });

  it('listing skips a corrupt job (and logs it) instead of failing the whole page', async () => {
    const good1 = await createJob('one');
    const bad = await createJob('two');
    const good2 = await createJob('three');
    await h.blobs.put(BlobJobStore.keyFor('acct_alice', bad), Buffer.from('{"trunc'));
    const res = await h.request('/v1/generations');
    expect(res.status).toBe(200);
    const ids = ((await res.json()) as { data: { id: string }[] }).data.map((j) => j.id);
    expect(ids.sort()).toEqual([good1, good2].sort());

    const warnings: unknown[] = [];
    const store = new BlobJobStore(h.blobs, { log: { warn: (msg, fields) => warnings.push({ msg, ...fields }) } });
    const page = await store.listByOwner('acct_alice');
    expect(page.jobs.map((j) => j.id).sort()).toEqual([good1, good2].sort());
    expect(warnings).toEqual([expect.objectContaining({ key: BlobJobStore.keyFor('acct_alice', bad) })]);
  });
});

describe('corrupt API key records', () => {
  it('auth with a key whose record is corrupt → 401 (same as unknown), never 500; list() skips it', async () => {
    const created = await h.keys.create({ name: 'carol', owner: 'acct_carol' });
    const ok = await h.request('/v1/generations', { key: created.secret });
    expect(ok.status).toBe(200);
    await h.blobs.put(BlobApiKeyStore.keyFor(created.record.id), Buffer.from('not json'));
    await expectEnvelope(await h.request('/v1/generations', { key: created.secret }), 401, 'unauthorized');
    const ids = (await h.keys.list()).map((k) => k.id);
    expect(ids).not.toContain(created.record.id);
    expect(ids.length).toBeGreaterThanOrEqual(3);
  });
});

describe('corrupt idempotency claims', () => {
  it('a corrupt claim is taken over like a stale one: the request creates a job, a replay returns it', async () => {
    await h.blobs.put(idempotencyRecordKey('acct_alice', 'key-1'), new Uint8Array(0));
    const headers = { 'Idempotency-Key': 'key-1' };
    const first = await h.request('/v1/generations', { json: { prompt: 'a dog', steps: 5 }, headers });
    expect(first.status).toBe(202);
    const id = ((await first.json()) as { id: string }).id;
    const again = await h.request('/v1/generations', { json: { prompt: 'a dog', steps: 5 }, headers });
    expect(again.status).toBe(200);
    expect(((await again.json()) as { id: string }).id).toBe(id);
    expect(h.logs).toContainEqual(expect.objectContaining({ msg: 'corrupt idempotency claim taken over' }));
  });
});
