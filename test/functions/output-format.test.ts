// output_format and output_quality (ADR 0041, 0043): checked at the API, stored only for JPEG and WebP (a PNG spec
// stays readable by a worker from before the field, ADR 0030), part of the Idempotency-Key's body, and
// the view's content_type and inline field follow the stored image's kind.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const post = (json: Record<string, unknown>, headers: Record<string, string> = {}) => h.request('/v1/generations', { json, headers });
type Created = { id: string; request: Record<string, unknown> };

describe('output_format and output_quality', () => {
  it('jpeg is stored with its quality (90 when none is given) and echoed; png, the default, stores neither field', async () => {
    const jpeg = (await (await post({ prompt: 'apple', output_format: 'jpeg' })).json()) as Created;
    expect([jpeg.request.output_format, jpeg.request.output_quality]).toEqual(['jpeg', 90]);
    expect((await h.jobs.get('acct_alice', jpeg.id))!.spec).toMatchObject({ output_format: 'jpeg', output_quality: 90 });
    const q = (await (await post({ prompt: 'apple', output_format: 'jpeg', output_quality: 55 })).json()) as Created;
    expect(q.request.output_quality).toBe(55);
    // WebP (ADR 0043) likewise: its quality stored, 90 when none is given.
    const webp = (await (await post({ prompt: 'apple', output_format: 'webp' })).json()) as Created;
    expect([webp.request.output_format, webp.request.output_quality]).toEqual(['webp', 90]);
    expect((await h.jobs.get('acct_alice', webp.id))!.spec).toMatchObject({ output_format: 'webp', output_quality: 90 });
    const wq = (await (await post({ prompt: 'apple', output_format: 'webp', output_quality: 40 })).json()) as Created;
    expect(wq.request.output_quality).toBe(40);
    for (const body of [{ prompt: 'apple', output_format: 'png' }, { prompt: 'apple' }]) {
      const res = await post(body);
      expect(res.status).toBe(202);
      const created = (await res.json()) as Created;
      expect(['output_format' in created.request, 'output_quality' in created.request]).toEqual([false, false]);
      const spec = (await h.jobs.get('acct_alice', created.id))!.spec;
      expect(['output_format' in spec, 'output_quality' in spec]).toEqual([false, false]);
    }
  });

  it('refuses a quality without jpeg, out of 1–100 or not whole, and an unknown format, naming the field; nothing is queued', async () => {
    const cases: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ output_quality: 80 }, 'output_quality', /^output_quality applies only to output_format "jpeg" or "webp" \(a PNG is lossless\)$/],
      [{ output_format: 'png', output_quality: 80 }, 'output_quality', /applies only to output_format "jpeg" or "webp"/],
      [{ output_format: 'webp', output_quality: 0 }, 'output_quality', /./],
      [{ output_format: 'jpeg', output_quality: 0 }, 'output_quality', /./],
      [{ output_format: 'jpeg', output_quality: 101 }, 'output_quality', /./],
      [{ output_format: 'jpeg', output_quality: 50.5 }, 'output_quality', /./],
      [{ output_format: 'gif' }, 'output_format', /png|jpeg|webp/],
      [{ output_format: 'JPEG' }, 'output_format', /png|jpeg|webp/],
    ];
    for (const [extra, param, message] of cases) {
      const error = await expectEnvelope(await post({ prompt: 'apple', ...extra }), 400, 'validation_error');
      expect([error.param, message.test(error.message)]).toEqual([param, true]);
    }
    expect(((await (await h.request('/v1/generations')).json()) as { data: unknown[] }).data).toEqual([]);
  });

  it('is part of the Idempotency-Key body: the same key with another format or quality is another request', async () => {
    const first = await post({ prompt: 'apple', output_format: 'jpeg' }, { 'Idempotency-Key': 'of-1' });
    expect(first.status).toBe(202);
    await expectEnvelope(await post({ prompt: 'apple' }, { 'Idempotency-Key': 'of-1' }), 409, 'idempotency_key_reused');
    await expectEnvelope(await post({ prompt: 'apple', output_format: 'jpeg', output_quality: 70 }, { 'Idempotency-Key': 'of-1' }), 409, 'idempotency_key_reused');
    const replay = await post({ prompt: 'apple', output_format: 'jpeg' }, { 'Idempotency-Key': 'of-1' });
    expect([replay.status, ((await replay.json()) as Created).id]).toEqual([200, ((await first.json()) as Created).id]);
  });

  it('an estimate takes the fields and checks them as the POST does', async () => {
    expect((await h.request('/v1/estimates', { json: { prompt: 'apple', output_format: 'jpeg', output_quality: 60 } })).status).toBe(200);
    const error = await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple', output_quality: 60 } }), 400, 'validation_error');
    expect(error.param).toBe('output_quality');
  });

  it("the view names each stored image's type from its key, and include=b64 puts a JPEG in b64_jpeg, a WebP in b64_webp, a PNG in b64_png", async () => {
    const created = (await (await post({ prompt: 'apple', n: 3, output_format: 'jpeg' })).json()) as Created;
    const prefix = `outputs/acct_alice/${created.id}/`;
    const jpeg = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]);
    const png = Uint8Array.from([137, 80, 78, 71, 13, 10, 26, 10, 9]);
    const webp = Uint8Array.from(Buffer.from('RIFF\x04\x00\x00\x00WEBP', 'latin1'));
    // Images 1 and 2 another type: a record an older worker wrote (or a later format) is shown as what its key says.
    await h.blobs.put(`${prefix}0.jpg`, jpeg, { contentType: 'image/jpeg' });
    await h.blobs.put(`${prefix}1.png`, png, { contentType: 'image/png' });
    await h.blobs.put(`${prefix}2.webp`, webp, { contentType: 'image/webp' });
    await h.jobs.update('acct_alice', created.id, (cur) => ({
      ...cur, status: 'succeeded', attempts: 1, started_at: new Date().toISOString(), finished_at: new Date().toISOString(),
      outputs: [{ key: `${prefix}0.jpg`, width: 64, height: 64 }, { key: `${prefix}1.png`, width: 64, height: 64 }, { key: `${prefix}2.webp`, width: 64, height: 64 }],
    }));
    const view = (await (await h.request(`/v1/generations/${created.id}`)).json()) as { outputs: Array<Record<string, unknown>> };
    expect(view.outputs.map((o) => o.content_type)).toEqual(['image/jpeg', 'image/png', 'image/webp']);
    const inline = (await (await h.request(`/v1/generations/${created.id}?include=b64`)).json()) as { outputs: Array<Record<string, string | undefined>> };
    expect(inline.outputs.map((o) => [o.b64_jpeg, o.b64_png, o.b64_webp])).toEqual([
      [Buffer.from(jpeg).toString('base64'), undefined, undefined],
      [undefined, Buffer.from(png).toString('base64'), undefined],
      [undefined, undefined, Buffer.from(webp).toString('base64')],
    ]);
  });
});
