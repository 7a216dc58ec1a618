import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { verifyLocalSignature } from '../../shared/adapters/local/index.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

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
    await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', init: body.init } }), 400, 'validation_error');
    await h.blobs.put(`uploads/acct_alice/${body.upload_id}`, new Uint8Array(1234), { contentType: 'image/png' });
    const ok = await h.request('/v1/generations', { json: { prompt: 'a', init: body.init, strength: 0.5 } });
    expect(ok.status).toBe(202);
    await expectEnvelope(await h.request('/v1/generations', { key: h.bob, json: { prompt: 'a', init: body.init } }), 400, 'validation_error');
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
});

describe('GET /v1/models and /healthz', () => {
  it('lists deps.models()', async () => {
    const res = await h.request('/v1/models');
    expect(await res.json()).toEqual({ object: 'list', data: [{ id: 'toy', default: true, input_size: 224 }] });
    expect(await (await h.request('/healthz', { key: null })).json()).toEqual({ status: 'ok' });
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
      ['/healthz', '/v1/estimates', '/v1/generations', '/v1/generations/{id}', '/v1/generations/{id}/cancel', '/v1/generations/{id}/frames', '/v1/models', '/v1/uploads', '/v1/usage'].sort(),
    );
    expect(Object.keys(doc.paths['/v1/generations']).sort()).toEqual(['get', 'post']);
    expect(doc.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.paths['/v1/generations'].post.security).toEqual([{ bearerAuth: [] }]);
    expect(doc.paths['/healthz'].get.security).toBeUndefined();
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
      ['Location', 'Idempotent-Replayed'], ['Location'], ['Retry-After'], ['Retry-After'],
    ]);
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (path === '/healthz') continue;
      for (const op of Object.values(ops)) {
        expect(op.responses['401'], `${path} documents 401`).toBeDefined();
        // Every /v1 route reads the key store (and most the job store), so every one can answer 503.
        expect(op.responses['503'], `${path} documents 503`).toBeDefined();
      }
    }
    // A request without model gets the deployment's default, so the schema must not claim one.
    expect(doc.components.schemas.GenerationRequest.required ?? []).not.toContain('model');
    expect(JSON.stringify(doc.components.schemas.GenerationRequest.properties!.model)).not.toContain('"default"');
    const idem = (doc.paths['/v1/generations'].post as unknown as { parameters: { name: string; schema: { pattern?: string } }[] }).parameters.find((p) => p.name === 'Idempotency-Key');
    expect(idem?.schema.pattern).toBeDefined();
  });
});
