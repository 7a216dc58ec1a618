// GET /v1/generations?idempotency_key=K (ADR 0004): the generation an Idempotency-Key of the caller's
// account made, read from the key's claim (no scan), as a list of at most one; never another account's.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { canonicalJson, IdempotencyLedger, idempotencyRecordKey } from '../../functions/idempotency.ts';
import { sha256Hex } from '../../shared/schemas/apikey.ts';
import { GenerationRequest } from '../../shared/schemas/generation.ts';
import { newJobId } from '../../shared/ids.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

type List = { object: string; data: Array<{ id: string; status: string; deleted_at: string | null; request: { prompt?: string } }>; next_cursor: string | null };

const post = (json: unknown, key: string, as?: string) => h.request('/v1/generations', { json, headers: { 'Idempotency-Key': key }, ...(as ? { key: as } : {}) });
const lookup = (key: string, as?: string) => h.request(`/v1/generations?idempotency_key=${encodeURIComponent(key)}`, as ? { key: as } : {});

async function found(key: string, as?: string): Promise<List> {
  const res = await lookup(key, as);
  expect(res.status).toBe(200);
  // Said back, so a client can tell this answer from an older API's plain list (which ignores the parameter).
  expect(res.headers.get('Idempotency-Key')).toBe(key);
  const body = (await res.json()) as List;
  expect(body).toMatchObject({ object: 'list', next_cursor: null });
  return body;
}

describe('GET /v1/generations?idempotency_key=', () => {
  it("finds the generation the key made, whatever body it was sent with; another account's key and an unused key find none", async () => {
    const made = (await (await post({ prompt: 'a red apple', seed: 3 }, 'order-42')).json()) as { id: string };
    await post({ prompt: 'a pear' }, 'order-43');
    // The key's claim and its job are read; nothing is listed.
    const listing = vi.spyOn(h.blobs, 'list');
    expect((await found('order-42')).data.map((g) => [g.id, g.status, g.request.prompt])).toEqual([[made.id, 'queued', 'a red apple']]);
    expect(listing).not.toHaveBeenCalled();
    listing.mockRestore();
    // The key with another body is refused (409), and still names the first generation.
    await expectEnvelope(await post({ prompt: 'a green apple' }, 'order-42'), 409, 'idempotency_key_reused');
    expect((await found('order-42')).data.map((g) => g.id)).toEqual([made.id]);
    // Keys are per account: bob's order-42 made nothing, and alice's generation is never his.
    expect((await found('order-42', h.bob)).data).toEqual([]);
    expect((await found('never-used')).data).toEqual([]);
    // A key whose POST was refused before anything was claimed made none.
    await expectEnvelope(await post({ prompt: 'apple', model: 'no-such-model' }, 'refused-1'), 400, 'validation_error');
    expect((await found('refused-1')).data).toEqual([]);
    // The view is the list's own.
    const listed = (await (await h.request('/v1/generations')).json()) as List;
    expect((await found('order-42')).data[0]).toEqual(listed.data.find((g) => g.id === made.id));
  });

  it('a released claim (its create failed) and a stale one whose job never appeared find none; the next POST with the key takes it over and is found', async () => {
    const ledger = new IdempotencyLedger(h.blobs, h.jobs);
    const owner = 'acct_alice';
    const released = newJobId();
    // The claim a POST of { prompt: 'a plum' } makes (its body's hash), given up as a failed create gives it up.
    const bodyHash = sha256Hex(canonicalJson(GenerationRequest.parse({ prompt: 'a plum' })));
    expect(await ledger.claim({ owner, key: 'released', bodyHash, jobId: released, now: new Date() })).toEqual({ kind: 'claimed', jobId: released });
    await ledger.release({ owner, key: 'released', jobId: released });
    expect((await found('released')).data).toEqual([]);
    const again = await post({ prompt: 'a plum' }, 'released');
    expect(again.status).toBe(202);
    expect((await found('released')).data.map((g) => g.id)).toEqual([((await again.json()) as { id: string }).id]);

    await ledger.claim({ owner, key: 'abandoned', bodyHash: 'h2', jobId: newJobId(), now: new Date(Date.now() - 60_000) });
    expect((await found('abandoned')).data).toEqual([]);
    // An unreadable claim names nothing (a POST takes it over): none.
    await h.blobs.put(idempotencyRecordKey(owner, 'garbled'), new TextEncoder().encode('{not json'));
    expect((await found('garbled')).data).toEqual([]);
  });

  it('a live claim whose generation is not written yet: 409 idempotency_in_progress with Retry-After, as the POST answers', async () => {
    const ledger = new IdempotencyLedger(h.blobs, h.jobs);
    await ledger.claim({ owner: 'acct_alice', key: 'making', bodyHash: 'h', jobId: newJobId(), now: new Date() });
    const res = await lookup('making');
    expect(res.headers.get('Retry-After')).toBe('1');
    const err = await expectEnvelope(res, 409, 'idempotency_in_progress');
    expect(err.param).toBe('idempotency_key');
    // Bob's key of the same name is his own: nothing.
    expect((await found('making', h.bob)).data).toEqual([]);
  });

  it('a deleted generation is found as the list shows it (deleted_at, prompts blanked)', async () => {
    const made = (await (await post({ prompt: 'a secret apple' }, 'to-delete')).json()) as { id: string };
    await h.jobs.update('acct_alice', made.id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'engine_error', message: 'x' } }));
    expect((await h.request(`/v1/generations/${made.id}`, { method: 'DELETE' })).status).toBe(200);
    const [g] = (await found('to-delete')).data;
    expect(g).toMatchObject({ id: made.id, status: 'failed' });
    expect(g!.deleted_at).not.toBeNull();
    expect(g!.request.prompt).not.toContain('secret');
    const listed = (await (await h.request('/v1/generations')).json()) as List;
    expect(g).toEqual(listed.data.find((x) => x.id === made.id));
  });

  it('a key the POST would refuse is a 400 validation_error naming idempotency_key; limit, cursor and status cannot go with it', async () => {
    for (const bad of ['', 'has space', 'x'.repeat(256), 'café', 'tab\there']) {
      const err = await expectEnvelope(await lookup(bad), 400, 'validation_error');
      expect(err.param, JSON.stringify(bad)).toBe('idempotency_key');
      expect(err.message).toContain('must be 1..255 visible ASCII characters (no spaces)');
    }
    // The longest the POST takes is fine.
    expect((await found('x'.repeat(255))).data).toEqual([]);
    await expectEnvelope(await h.request('/v1/generations?idempotency_key=a&idempotency_key=b'), 400, 'validation_error');
    for (const [extra, param] of [['limit=5', 'limit'], [`cursor=${newJobId()}`, 'cursor'], ['status=queued', 'status']] as const) {
      const err = await expectEnvelope(await h.request(`/v1/generations?idempotency_key=k&${extra}`), 400, 'validation_error');
      expect(err).toMatchObject({ param, message: `${param} cannot be combined with idempotency_key (the lookup answers at most one generation)` });
    }
    // Without the key, a key-less list is as before.
    expect((await h.request('/v1/generations?limit=5&status=queued')).status).toBe(200);
    await expectEnvelope(await lookup('k', h.revoked), 401, 'unauthorized');
  });

  it('the OpenAPI document lists the parameter (with the POST header\'s pattern), its 409 and the header said back', async () => {
    const doc = (await (await h.request('/openapi.json', { key: null })).json()) as {
      paths: Record<string, Record<string, { parameters: Array<{ name: string; in: string; schema: { pattern?: string }; description?: string }>; responses: Record<string, { description: string; headers?: Record<string, unknown> }> }>>;
    };
    const get = doc.paths['/v1/generations']!.get!;
    const param = get.parameters.find((p) => p.name === 'idempotency_key');
    expect(param).toMatchObject({ in: 'query' });
    const header = doc.paths['/v1/generations']!.post!.parameters.find((p) => p.name === 'Idempotency-Key');
    expect(param!.schema.pattern).toBe(header!.schema.pattern);
    expect(param!.description).toMatch(/Cannot be combined with any other parameter/);
    expect(get.responses['409']!.description).toMatch(/idempotency_in_progress/);
    expect(get.responses['200']!.headers).toHaveProperty('Idempotency-Key');
  });
});
