// Query strings at the /v1 boundary: percent-encoding that does not decode as UTF-8 is refused (it
// used to reach the routes as its literal text and match nothing), and a metadata filter's value is
// counted as a stored value is, in code points.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { malformedQueryPart } from '../../functions/middleware/limits.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

describe('percent-encoding that is not UTF-8', () => {
  it('is refused 400 on any /v1 query, naming the part, for cut escapes, Latin-1 bytes and encoded surrogates', async () => {
    for (const query of ['metadata%5Bw%5D=%E0%A4%A', 'idempotency_key=caf%E9', 'metadata[w]=%ED%A0%80', 'status=succ%eeded']) {
      const err = await expectEnvelope(await h.request(`/v1/generations?${query}`), 400, 'validation_error');
      expect(err.message).toContain('is not percent-encoded UTF-8');
      expect(err.message).toContain(query.slice(0, 20));
    }
    await expectEnvelope(await h.request('/v1/usage?month=2026-1%F0'), 400, 'validation_error');
  });

  it('well-formed escapes and + for a space reach the routes decoded (a bare % is no escape: refused too)', async () => {
    expect(malformedQueryPart('http://x/v1/generations?metadata%5Bw%5D=caf%C3%A9&status=queued')).toBeUndefined();
    expect(malformedQueryPart('http://x/v1/generations?metadata[w]=a+b#frag%E9')).toBeUndefined();
    expect(malformedQueryPart('http://x/v1/generations?metadata[w]=100%')).toBe('metadata[w]=100%');
    const created = await h.request('/v1/generations', { json: { prompt: 'a red circle', metadata: { w: 'café au lait' } } });
    expect(created.status).toBe(202);
    const id = ((await created.json()) as { id: string }).id;
    const res = await h.request('/v1/generations?metadata%5Bw%5D=caf%C3%A9+au+lait');
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: { id: string }[] }).data.map((g) => g.id)).toEqual([id]);
  });
});

describe('a metadata filter value', () => {
  it('is counted in code points, as the POST counted the value it filters on', async () => {
    const value = '\u{1F431}'.repeat(300); // 300 code points, 600 UTF-16 units: a value the POST takes
    const created = await h.request('/v1/generations', { json: { prompt: 'a red circle', metadata: { w: value } } });
    expect(created.status).toBe(202);
    const id = ((await created.json()) as { id: string }).id;
    const res = await h.request(`/v1/generations?metadata%5Bw%5D=${encodeURIComponent(value)}`);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { data: { id: string }[] }).data.map((g) => g.id)).toEqual([id]);
    await expectEnvelope(await h.request(`/v1/generations?metadata%5Bw%5D=${encodeURIComponent('\u{1F431}'.repeat(501))}`), 400, 'validation_error');
  });
});
