import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { deflateSync } from 'node:zlib';
import { verifyLocalSignature } from '../../shared/adapters/local/index.ts';
import { encode as pngEncode } from 'fast-png';
import { handMadePng } from '../helpers/png.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

/** A real 8×8 RGB PNG. */
const smallPng = () => pngEncode({ width: 8, height: 8, data: new Uint8Array(8 * 8 * 3).fill(128), channels: 3, depth: 8 });

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

describe('POST /v1/uploads', () => {
  it('returns a presigned PUT under uploads/<owner>/<id>, bounded by the declared size', async () => {
    const res = await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: 1234 } });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { upload_id: string; init: string; url: string; method: string; headers: Record<string, string>; expires_at: string; bytes: number; max_bytes: number };
    expect(body).toMatchObject({ method: 'PUT', headers: { 'content-type': 'image/png' }, bytes: 1234, max_bytes: 8 * 1024 * 1024, init: `upload:${body.upload_id}` });
    const check = verifyLocalSignature('x'.repeat(32), 'PUT', body.url);
    expect(check).toMatchObject({ ok: true, key: `uploads/acct_alice/${body.upload_id}`, maxBytes: 1234, contentType: 'image/png' });
    expect(Date.parse(body.expires_at)).toBeGreaterThan(Date.now());

    // Before the file exists a generation cannot use it; after, it can; another owner cannot.
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', init: body.init } }), 400, 'upload_not_found');
    await h.blobs.put(`uploads/acct_alice/${body.upload_id}`, smallPng(), { contentType: 'image/png' });
    const ok = await h.request('/v1/generations', { json: { prompt: 'a', init: body.init, strength: 0.5 } });
    expect(ok.status).toBe(202);
    await expectEnvelope(await h.request('/v1/generations', { key: h.bob, json: { prompt: 'a', init: body.init } }), 400, 'upload_not_found');
  });

  it('oversized upload → 413; bad content type or size → 400; nothing signed or written', async () => {
    const err = await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: 8 * 1024 * 1024 + 1 } }), 413, 'payload_too_large');
    expect(err.param).toBe('bytes');
    await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/gif', bytes: 10 } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: 0 } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: 10, path: '../x' } }), 400, 'validation_error');
    expect((await h.blobs.list('uploads/')).items).toEqual([]);
  });

  it('an upload that grew past the limit after signing is refused at generation time (413)', async () => {
    await h.blobs.put('uploads/acct_alice/big1', new Uint8Array(8 * 1024 * 1024 + 1));
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', init: 'upload:big1' } }), 413, 'payload_too_large');
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });

  it('an upload that cannot decode (format, header, or a damaged or cut-short body) is refused at generation time (400, with why), before anything is queued', async () => {
    const valid = smallPng();
    const huge = handMadePng(5000, 5000, new Uint8Array(0));
    const badCrc = valid.slice();
    badCrc[20] ^= 1; // the height, without fixing the header's CRC
    const flipped = valid.slice();
    flipped[valid.length - 20] ^= 1; // inside the pixel data
    const cases: Array<[string, Uint8Array, RegExp]> = [
      // A JPEG is read now (ADR 0035): one cut short inside its first segment is refused as such.
      ['jpeg', new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46, 0, 1]), /corrupt JPEG: segment 0xFFE0 at byte 2 runs past the end of the file/],
      ['gif', new TextEncoder().encode('GIF89a\x01\x00\x01\x00'), /GIF images are not supported: convert to PNG or JPEG/],
      ['text', new TextEncoder().encode('hello, this is not an image at all'), /not a PNG or JPEG file/],
      ['cut', valid.subarray(0, 20), /the file ends inside its header/],
      ['crc', badCrc, /header chunk fails its CRC check/],
      ['huge', huge, /5000×5000 = 25000000 pixels, over the limit of 16777216 pixels/],
      ['empty', new Uint8Array(0), /not a PNG or JPEG file/],
      // Past the header: the worker's own whole-file check.
      ['short', valid.subarray(0, valid.length - 20), /corrupt PNG: .*cut short/],
      ['flipped', flipped, /chunk "IDAT" fails its CRC check/],
      ['rows', handMadePng(8, 8, deflateSync(Buffer.alloc(100))), /pixel data holds 100 of the 200 bytes its 8×8 header declares/],
    ];
    for (const [id, bytes, why] of cases) {
      await h.blobs.put(`uploads/acct_alice/${id}`, bytes, { contentType: 'image/png' });
      const err = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', init: `upload:${id}`, strength: 0.5 } }), 400, 'validation_error');
      expect(err.param, id).toBe('init');
      expect(err.message, id).toMatch(why);
      expect(err.message, id).toContain(`upload ${id} cannot be an init image`);
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    expect(await h.queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
  });
  it('a JPEG init (ADR 0035): an image/jpeg upload URL, the bytes PUT through it, and a generation that uses them; its faults refused at generation time', async () => {
    const { encode } = await import('jpeg-js');
    const rgba = new Uint8Array(16 * 16 * 4).map((_, i) => (i % 4 === 3 ? 255 : 60 + (i % 97)));
    const jpeg = new Uint8Array(encode({ width: 16, height: 16, data: rgba }, 90).data);
    const { mountLocalBlobRoutes } = await import('../../functions/local-blobs.ts');
    mountLocalBlobRoutes(h.app, h.blobs, 'x'.repeat(32));
    const res = await h.request('/v1/uploads', { json: { content_type: 'image/jpeg', bytes: jpeg.length } });
    expect(res.status).toBe(201);
    const grant = (await res.json()) as { upload_id: string; init: string; url: string; headers: Record<string, string> };
    expect(grant.headers['content-type']).toBe('image/jpeg');
    // Through the signed URL: a PNG's bytes are not a JPEG, so not stored; the JPEG is.
    const wrong = smallPng();
    const wrongGrant = (await (await h.request('/v1/uploads', { json: { content_type: 'image/jpeg', bytes: wrong.length } })).json()) as { url: string };
    const refused = await h.app.request(wrongGrant.url, { method: 'PUT', headers: { 'content-type': 'image/jpeg', 'content-length': String(wrong.length), 'if-none-match': '*' }, body: wrong });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/not a JPEG file/);
    expect(grant.headers['if-none-match']).toBe('*');
    // Without the condition the answer names (S3 refuses it as a signature mismatch): refused, saying which header.
    const { 'if-none-match': _condition, ...withoutCondition } = grant.headers;
    const unconditional = await expectEnvelope(await h.app.request(grant.url, { method: 'PUT', headers: withoutCondition, body: jpeg }), 400, 'validation_error');
    expect([unconditional.param, unconditional.message]).toEqual(['If-None-Match', 'this upload link writes once: send If-None-Match: * (one of the headers the upload answer names); got none']);
    const put = await h.app.request(grant.url, { method: 'PUT', headers: { ...grant.headers, 'content-length': String(jpeg.length) }, body: jpeg });
    expect(put.status).toBe(200);
    // The link writes once (ADR 0044): another image of the same length sent through it is refused and the first stays.
    const other = jpeg.slice();
    other[other.length - 3] ^= 0xff;
    const again = await expectEnvelope(await h.app.request(grant.url, { method: 'PUT', headers: grant.headers, body: other }), 412, 'upload_link_used');
    expect(again.message).toMatch(/used already: each writes once.*POST \/v1\/uploads/);
    expect(new Uint8Array((await h.blobs.get(`uploads/acct_alice/${grant.upload_id}`))!.body)).toEqual(jpeg);
    const ok = await h.request('/v1/generations', { json: { prompt: 'a', init: grant.init, strength: 0.5 } });
    expect(ok.status).toBe(202);
    // Arithmetic coding, which the decoder cannot read: refused with what to do, nothing queued for it.
    const sof = jpeg.findIndex((b, i) => b === 0xff && jpeg[i + 1] === 0xc0);
    const arithmetic = jpeg.slice();
    arithmetic[sof + 1] = 0xc9;
    await h.blobs.put('uploads/acct_alice/arith', arithmetic, { contentType: 'image/jpeg' });
    const err = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', init: 'upload:arith', strength: 0.5 } }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual(['init', 'upload arith cannot be an init image: arithmetic-coded JPEGs are not supported: save it as a baseline or progressive JPEG, or as a PNG']);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
  });

  it('an upload checked whole once is not read again while it is unchanged; replaced, it is checked again', async () => {
    const key = 'uploads/acct_alice/again';
    await h.blobs.put(key, smallPng(), { contentType: 'image/png' });
    const gets = vi.spyOn(h.blobs, 'get');
    const body = { prompt: 'a', init: 'upload:again', strength: 0.5 };
    expect((await h.request('/v1/generations', { json: body })).status).toBe(202);
    expect((await h.request('/v1/estimates', { json: body })).status).toBe(200);
    expect(gets.mock.calls.filter(([k]) => k === key)).toHaveLength(1);
    await h.blobs.put(key, smallPng().subarray(0, smallPng().length - 20), { contentType: 'image/png' });
    const err = await expectEnvelope(await h.request('/v1/generations', { json: body }), 400, 'validation_error');
    expect(err.message).toMatch(/cut short/);
    gets.mockRestore();
  });
});

describe('GET /v1/models and /healthz', () => {
  it('lists deps.models()', async () => {
    const res = await h.request('/v1/models');
    expect(await res.json()).toEqual({ object: 'list', data: [{ id: 'toy', default: true, input_size: 224 }] });
    expect(await (await h.request('/healthz', { key: null })).json()).toEqual({ status: 'ok' });
  });
});

describe('an init upload that is not there', () => {
  it('is 400 upload_not_found (param "init"), apart from validation_error for one that is no usable image: missing, or another account\'s; at the estimate too; nothing written', async () => {
    await h.blobs.put('uploads/acct_bob/bobs', smallPng(), { contentType: 'image/png' });
    for (const id of ['nosuchupload', 'bobs']) {
      for (const path of ['/v1/generations', '/v1/estimates']) {
        const err = await expectEnvelope(await h.request(path, { json: { prompt: 'a', init: `upload:${id}`, strength: 0.5 } }), 400, 'upload_not_found');
        expect([err.param, err.message]).toEqual(['init', `no upload ${id}: upload the image first (POST /v1/uploads)`]);
      }
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    const doc = (await (await h.request('/openapi.json', { key: null })).json()) as { paths: Record<string, Record<string, { responses: Record<string, { description: string }> }>> };
    for (const op of [doc.paths['/v1/generations']!.post!, doc.paths['/v1/estimates']!.post!]) expect(op.responses['400']!.description).toMatch(/upload_not_found \(`param` "init"\)/);
    expect(doc.paths['/v1/uploads']!.post!.responses['400']!.description).not.toMatch(/upload_not_found/);
  });
});

describe('GET /openapi.json', () => {
  it('is OpenAPI 3.1 with every path, bearer security and the error envelope', async () => {
    const res = await h.request('/openapi.json', { key: null });
    expect(res.headers.get('content-type')).toMatch(/application\/json/);
    const doc = (await res.json()) as {
      openapi: string;
      paths: Record<string, Record<string, { security?: unknown; responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }>; requestBody?: { content: Record<string, { schema: { $ref?: string } }> } }>>;
      components: { schemas: Record<string, { properties?: Record<string, unknown>; required?: string[] }>; securitySchemes: Record<string, unknown> };
    };
    expect(doc.openapi).toMatch(/^3\.1\./);
    expect(Object.keys(doc.paths).sort()).toEqual(
      ['/healthz', '/v1/estimates', '/v1/generations', '/v1/generations/{id}', '/v1/generations/{id}/cancel', '/v1/generations/{id}/frames', '/v1/generations/{id}/outputs/{index}', '/v1/generations/{id}/webhook/redeliver', '/v1/models', '/v1/models/{id}', '/v1/uploads', '/v1/uploads/{id}', '/v1/spend-limit', '/v1/usage', '/v1/webhook-secret'].sort(),
    );
    expect(Object.keys(doc.paths['/v1/generations']).sort()).toEqual(['get', 'post']);
    expect(doc.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.paths['/v1/generations'].post.security).toEqual([{ bearerAuth: [] }]);
    const uploads = doc.paths['/v1/uploads'].post.responses as Record<string, { description: string }>;
    expect(uploads['429']!.description).toMatch(/^rate_limited: over the account's upload URLs per hour, or its requests per minute/);
    expect(uploads['429']!.description).not.toMatch(/too_many_active_jobs/);
    expect(doc.paths['/healthz'].get.security).toEqual([]); // stated: no key
    // A body of {prompt} alone must type-check in generated clients: request fields carry no `default` (some generators make those required); it is said in words.
    const requestFields = doc.components.schemas.GenerationRequest.properties as Record<string, { default?: unknown; description?: string }>;
    expect(Object.values(requestFields).filter((f) => f.default !== undefined)).toEqual([]);
    expect(requestFields.steps!.description).toMatch(/Default: 100$/);
    // Request body and errors come from the shared schemas.
    expect(doc.paths['/v1/generations'].post.requestBody!.content['application/json'].schema.$ref).toBe('#/components/schemas/GenerationRequest');
    expect(doc.paths['/v1/generations'].post.responses['409'].content!['application/json'].schema.$ref).toBe('#/components/schemas/ErrorEnvelope');
    expect(Object.keys(doc.components.schemas.GenerationRequest.properties!)).toEqual(
      expect.arrayContaining(['prompt', 'prompts', 'negative_prompt', 'width', 'height', 'steps', 'seed', 'n', 'init', 'strength', 'model', 'webhook_url']),
    );
    expect(doc.components.schemas.ErrorEnvelope.properties).toHaveProperty('error');
    // The headers a client's retry logic needs are in the document, so generated SDKs keep them.
    const post = doc.paths['/v1/generations'].post.responses as Record<string, { headers?: Record<string, unknown> }>;
    expect([Object.keys(post['200']!.headers!), Object.keys(post['202']!.headers!), Object.keys(post['429']!.headers!), Object.keys(post['503']!.headers!)]).toEqual([
      ['X-Request-Id', 'Location', 'Idempotent-Replayed', 'Preference-Applied', 'RateLimit-Policy', 'RateLimit'],
      ['X-Request-Id', 'Location', 'Preference-Applied', 'RateLimit-Policy', 'RateLimit'],
      ['X-Request-Id', 'Retry-After', 'RateLimit-Policy', 'RateLimit'],
      ['X-Request-Id', 'Retry-After', 'RateLimit-Policy', 'RateLimit'],
    ]);
    // Every /v1 route may be refused by the per-account limit (ADR 0026); the routes that never read a key may not.
    const models = doc.paths['/v1/models'].get.responses as Record<string, { description: string; headers?: Record<string, unknown> }>;
    expect(models['429']!.description).toMatch(/^rate_limited/);
    expect(Object.keys(models['429']!.headers!)).toEqual(['X-Request-Id', 'Retry-After', 'RateLimit-Policy', 'RateLimit']);
    expect(Object.keys(models['401']!.headers!)).not.toContain('RateLimit');
    expect((doc.paths['/healthz'].get.responses as Record<string, { description: string }>)['429']!.description).not.toMatch(/rate_limited/);
    const operationIds: string[] = [];
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops) as Array<[string, any]>) {
        // Stable SDK method names: every operation has its own id and a tag.
        operationIds.push(op.operationId);
        expect(op.tags, `${method} ${path} tags`).toHaveLength(1);
        // Any route can fail unexpectedly (500 internal_error); every response carries the request id.
        expect(op.responses.default, `${method} ${path} documents its unexpected errors`).toBeDefined();
        // ...but a GatewayError (AWS's own 429, 503, 500) comes without one.
        for (const [status, response] of Object.entries<any>(op.responses)) {
          const gateway = Boolean(response.content?.['application/json']?.schema?.oneOf) || status === '413'; // the gateway's own 413 too
          expect(response.headers?.['X-Request-Id'], `${method} ${path} ${status}`).toMatchObject({ required: !gateway });
        }
        expect(op.responses['429'], `${method} ${path}: the gateway's throttle stands before every route`).toBeDefined();
        if (path === '/healthz') continue;
        expect(op.responses['401'].headers['WWW-Authenticate'], `${path} documents 401 with its challenge`).toBeDefined();
        // Every /v1 route reads the key store (and most the job store), so every one can answer 503;
        // in AWS the gateway's throttle can answer any of them 429, without the envelope.
        expect(op.responses['503'], `${path} documents 503`).toBeDefined();
        expect(op.responses['429'].content['application/json'].schema.oneOf.map((s: any) => s.$ref), `${path} documents 429`).toEqual(['#/components/schemas/ErrorEnvelope', '#/components/schemas/GatewayError']);
      }
    }
    expect(operationIds.every((id) => typeof id === 'string' && /^[a-z][A-Za-z]+$/.test(id))).toBe(true);
    expect(new Set(operationIds).size).toBe(operationIds.length);
    expect(operationIds).toHaveLength(21);
    // A request without model gets the deployment's default, so the schema must not claim one.
    expect(doc.components.schemas.GenerationRequest.required ?? []).not.toContain('model');
    expect(JSON.stringify(doc.components.schemas.GenerationRequest.properties!.model)).not.toContain('"default"');
    const idem = (doc.paths['/v1/generations'].post as unknown as { parameters: { name: string; schema: { pattern?: string } }[] }).parameters.find((p) => p.name === 'Idempotency-Key');
    expect(idem?.schema.pattern).toBeDefined();
  });
});
