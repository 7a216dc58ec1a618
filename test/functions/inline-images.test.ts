// GET /v1/generations/{id}?include=b64: the images in the answer itself (the peers review's G5: every
// result cost a second fetch, even after Prefer: wait had returned the ended generation). The bytes
// are the stored PNGs, those the links serve; past MAX_INLINE_IMAGE_BYTES together a 413 says to fetch them.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_INLINE_IMAGE_BYTES } from '../../functions/routes/generations.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const image = (i: number, bytes = 64) => Uint8Array.from({ length: bytes }, (_, k) => (k < 8 ? [137, 80, 78, 71, 13, 10, 26, 10][k]! : (k * 7 + i) % 256));

/** A generation of n images that succeeded, image `withhold` withheld; each stored image `bytes` long. */
async function succeeded(n: number, opts: { withhold?: number; bytes?: number } = {}): Promise<string> {
  const res = await h.request('/v1/generations', { json: { prompt: 'apple', n } });
  const { id } = (await res.json()) as { id: string };
  const published = [...Array(n).keys()].filter((i) => i !== opts.withhold);
  await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status: 'succeeded',
    attempts: 1,
    started_at: new Date().toISOString(),
    finished_at: new Date().toISOString(),
    outputs: published.map((i) => ({ key: `outputs/acct_alice/${id}/${i}.png`, width: 224, height: 224 })),
    ...(opts.withhold !== undefined ? { output_checks: [{ index: opts.withhold, withheld: true, flags: [{ rule: 'r1', category: 'test', action: 'withhold', concept: 'c', message: 'withheld', cosine: 0.3 }] }] } : {}),
  }));
  for (const i of published) await h.blobs.put(`outputs/acct_alice/${id}/${i}.png`, image(i, opts.bytes), { contentType: 'image/png' });
  return id;
}

type Output = { index: number; url: string; b64_png?: string };

describe('GET /v1/generations/{id}?include=b64', () => {
  it('puts each listed image in the answer, byte for byte what its url serves; a withheld one leaves its gap', async () => {
    const id = await succeeded(3, { withhold: 1 });
    const res = await h.request(`/v1/generations/${id}?include=b64`);
    expect(res.status).toBe(200);
    const { outputs } = (await res.json()) as { outputs: Output[] };
    expect(outputs.map((o) => o.index)).toEqual([0, 2]);
    for (const o of outputs) expect(Buffer.from(o.b64_png!, 'base64')).toEqual(Buffer.from(image(o.index)));
    // Without it: links only.
    const plain = (await (await h.request(`/v1/generations/${id}`)).json()) as { outputs: Output[] };
    expect(plain.outputs.every((o) => o.b64_png === undefined)).toBe(true);
  });

  it('a generation that has not ended, or was deleted, has none to put in; the parameter is checked', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const { id } = (await res.json()) as { id: string };
    const queued = await h.request(`/v1/generations/${id}?include=b64`);
    expect([queued.status, ((await queued.json()) as { outputs: unknown[] }).outputs]).toEqual([200, []]);
    const done = await succeeded(1);
    expect((await h.request(`/v1/generations/${done}`, { method: 'DELETE' })).status).toBe(200);
    expect(((await (await h.request(`/v1/generations/${done}?include=b64`)).json()) as { outputs: unknown[] }).outputs).toEqual([]);
    const bad = await expectEnvelope(await h.request(`/v1/generations/${done}?include=png`), 400, 'validation_error');
    expect([bad.param, bad.message]).toEqual(['include', 'include takes "b64" (the images in the answer, base64)']);
  });

  it('past the inline limit together: a 413 on include that says to fetch them, and nothing is read', async () => {
    const half = Math.floor(MAX_INLINE_IMAGE_BYTES / 2) + 1;
    const id = await succeeded(2, { bytes: half });
    let reads = 0;
    const get = h.blobs.get.bind(h.blobs);
    h.blobs.get = async (key) => (key.startsWith('outputs/') && reads++, get(key));
    const error = await expectEnvelope(await h.request(`/v1/generations/${id}?include=b64`), 413, 'payload_too_large');
    expect(error.param).toBe('include');
    expect(error.message).toBe(`the 2 images are ${2 * half} bytes together, over the ${MAX_INLINE_IMAGE_BYTES} an answer carries inline: fetch them by outputs[].url (or GET /v1/generations/${id}/outputs/{index}), or leave include out`);
    expect(reads).toBe(0);
  });

  it('an image removed while the answer is made is a 410 output_gone, never a view with a hole', async () => {
    const id = await succeeded(1);
    const head = h.blobs.head.bind(h.blobs);
    h.blobs.head = async (key) => {
      const meta = await head(key);
      if (key.startsWith('outputs/')) await h.blobs.delete(key);
      return meta;
    };
    const error = await expectEnvelope(await h.request(`/v1/generations/${id}?include=b64`), 410, 'output_gone');
    expect(error.message).toMatch(/^image 0 of generation \S+ is no longer stored; the same request with seed \d+ and n 1 makes it again$/);
  });
});
