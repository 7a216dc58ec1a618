// What a DELETE leaves that could give a deleted prompt away (the privacy review of 2026-12-07): the
// record's copy of the Idempotency-Key and of the body's hash, and the key's claim's hash. An unsalted
// sha256 of a small body confirms a guess of the prompt to anyone who reads the store. And a document
// that does not parse is logged without the text V8 quotes from it.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { canonicalJson, idempotencyRecordKey } from '../../functions/idempotency.ts';
import { readDoc } from '../../shared/documents.ts';
import { CorruptDocumentError, PreconditionFailedError } from '../../shared/errors.ts';
import { createApp } from '../../functions/app.ts';
import { sha256Hex } from '../../shared/schemas/apikey.ts';
import { GenerationRequest } from '../../shared/schemas/generation.ts';
import { z } from 'zod';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** Every stored file's text, under the harness's blob folder. */
function storedText(dir: string): string {
  let all = '';
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    all += statSync(path).isDirectory() ? storedText(path) : `${readFileSync(path, 'latin1')}\n`;
  }
  return all;
}

const BODY = { prompt: 'John Doe at the clinic', seed: 7 };
const KEY = 'order-jdoe@example.com-42';

async function finished(key = KEY, body: Record<string, unknown> = BODY): Promise<string> {
  const res = await h.request('/v1/generations', { json: body, headers: { 'Idempotency-Key': key } });
  expect(res.status).toBe(202);
  const { id } = (await res.json()) as { id: string };
  await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), progress: { step: cur.progress.total, total: cur.progress.total } }));
  return id;
}

describe('DELETE /v1/generations/{id} leaves nothing that confirms the prompt', () => {
  it('the record keeps neither the Idempotency-Key nor the body hash, and the claim no hash; the key replays the deleted generation', async () => {
    const id = await finished();
    const bodyHash = sha256Hex(canonicalJson(GenerationRequest.parse(BODY)));
    expect(storedText(h.dir)).toContain(bodyHash); // there before the DELETE: the test looks in the right place
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);

    const stored = storedText(h.dir);
    expect(stored).not.toContain(bodyHash);
    expect(stored).not.toContain(KEY);
    expect(stored).not.toContain('John Doe');
    const record = (await h.jobs.get('acct_alice', id))!;
    expect([record.idempotency_key, record.body_hash]).toEqual([null, null]);
    expect(JSON.parse(Buffer.from((await h.blobs.get(idempotencyRecordKey('acct_alice', KEY)))!.body).toString())).toMatchObject({ job_id: id, body_hash: 'deleted' });

    // The key still names its (deleted) generation: a retry with it, whatever its body, is that one, never a second.
    for (const body of [BODY, { prompt: 'a guess', seed: 7 }]) {
      const again = await h.request('/v1/generations', { json: body, headers: { 'Idempotency-Key': KEY } });
      expect(again.status).toBe(200);
      expect(again.headers.get('Idempotent-Replayed')).toBe('true');
      expect(((await again.json()) as { id: string; prompt: string }).id).toBe(id);
    }
    const found = (await (await h.request(`/v1/generations?idempotency_key=${encodeURIComponent(KEY)}`)).json()) as { data: Array<{ id: string }> };
    expect(found.data.map((g) => g.id)).toEqual([id]);
    // A DELETE again changes nothing and still answers the generation.
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
  });

  it("another generation's claim is left as it is, and one still running keeps its claim (the DELETE is refused)", async () => {
    const kept = await finished('kept-key', { prompt: 'a red circle' });
    const gone = await finished();
    const running = await (await h.request('/v1/generations', { json: { prompt: 'a blue star' }, headers: { 'Idempotency-Key': 'running-key' } })).json() as { id: string };
    await h.request(`/v1/generations/${gone}`, { method: 'DELETE' });
    await expectEnvelope(await h.request(`/v1/generations/${running.id}`, { method: 'DELETE' }), 409, 'job_not_finished');
    for (const [key, body] of [['kept-key', { prompt: 'a red circle' }], ['running-key', { prompt: 'a blue star' }]] as const) {
      const claim = JSON.parse(Buffer.from((await h.blobs.get(idempotencyRecordKey('acct_alice', key)))!.body).toString());
      expect(claim.body_hash).toBe(sha256Hex(canonicalJson(GenerationRequest.parse(body))));
      // Reused with another body: still the 409 it always was.
      await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'something else' }, headers: { 'Idempotency-Key': key } }), 409, 'idempotency_key_reused');
    }
    expect((await h.jobs.get('acct_alice', kept))!.idempotency_key).toBe('kept-key');
  });
});

describe('a DELETE that does not delete leaves the claim as it was', () => {
  it("a record write that loses every race (503 busy): the claim keeps its hash, so the key with another body is still a 409", async () => {
    const id = await finished();
    const busy = createApp({
      ...h.deps,
      jobs: new Proxy(h.jobs, {
        get: (target, prop, receiver) =>
          prop === 'update' ? async () => Promise.reject(new PreconditionFailedError('lost the race')) : Reflect.get(target, prop, receiver),
      }),
    });
    await expectEnvelope(await busy.request(`/v1/generations/${id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${h.alice}` } }), 503, 'busy');
    const claim = JSON.parse(Buffer.from((await h.blobs.get(idempotencyRecordKey('acct_alice', KEY)))!.body).toString());
    expect(claim.body_hash).toBe(sha256Hex(canonicalJson(GenerationRequest.parse(BODY))));
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'another body' }, headers: { 'Idempotency-Key': KEY } }), 409, 'idempotency_key_reused');
    // The DELETE again, with a store that answers: done, and the key now answers the deleted generation.
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
    expect((await h.request('/v1/generations', { json: { prompt: 'another body' }, headers: { 'Idempotency-Key': KEY } })).status).toBe(200);
  });

  it('a record an earlier version deleted (key and hash kept) is scrubbed by a DELETE again', async () => {
    const id = await finished();
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, deleted_at: new Date().toISOString(), spec: { ...cur.spec, prompt: '[deleted]' } }));
    expect((await h.jobs.get('acct_alice', id))!.idempotency_key).toBe(KEY);
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
    const record = (await h.jobs.get('acct_alice', id))!;
    expect([record.idempotency_key, record.body_hash]).toEqual([null, null]);
    expect(JSON.parse(Buffer.from((await h.blobs.get(idempotencyRecordKey('acct_alice', KEY)))!.body).toString()).body_hash).toBe('deleted');
  });
});

describe('a document that does not parse', () => {
  it("is reported by where it broke, never with the text V8's message quotes from it", () => {
    const bytes = Buffer.from('{"prompt":"John Doe HIV test","x":bogus}');
    let error: unknown;
    try {
      readDoc(z.object({}), bytes, 'jobs/acct_alice/x.json');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(CorruptDocumentError);
    const { detail } = error as CorruptDocumentError;
    expect(detail).toMatch(/^not UTF-8 JSON: not valid JSON/);
    expect(detail).not.toMatch(/HIV|test|bogus|John/);
    expect(() => readDoc(z.object({}), Buffer.from([0x7b, 0xff]), 'k')).toThrow(CorruptDocumentError);
  });
});
