// Every response shape the API sends, checked against the OpenAPI document it publishes, with a
// JSON Schema 2020-12 validator (Ajv). A schema that no real response can satisfy (an allOf of two
// closed objects, say) fails here, as does a response with a field the document does not declare.
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { recordRunSample } from '../../shared/run-stats.ts';
import { recordUsage } from '../../shared/usage.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

async function validatorFor(app: { request: (path: string) => Response | Promise<Response> }) {
  const doc = (await (await app.request('/openapi.json')).json()) as { paths: Record<string, any> };
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema(doc, 'api');
  return (path: string, method: string, status: number, body: unknown) => {
    const content = doc.paths[path]?.[method]?.responses?.[String(status)]?.content?.['application/json'];
    expect(content, `${method.toUpperCase()} ${path} ${status} is not in the document`).toBeDefined();
    const ref = content.schema.$ref as string;
    const validate = ajv.getSchema(`api${ref}`)!;
    const ok = validate(body);
    expect(ok ? [] : validate.errors, `${method.toUpperCase()} ${path} ${status}`).toEqual([]);
  };
}

describe('responses conform to /openapi.json', () => {
  it('generations (queued and succeeded, with webhook, flags, output checks, cost), lists, estimates, usage, models, uploads and errors', async () => {
    const app = createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true, workerHourlyUsd: 1.006 } });
    const check = await validatorFor(app);
    const call = async (path: string, init: RequestInit = {}) => {
      const res = await app.request(path, { ...init, headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(init.headers ?? {}) } });
      return { status: res.status, body: await res.json() };
    };
    const created = await call('/v1/generations', {
      method: 'POST',
      body: JSON.stringify({ prompt: 'a doctor with a red circle', webhook_url: 'http://127.0.0.1:9/h', metadata: { order_id: 'A-1' } }),
      headers: { 'Idempotency-Key': 'oa-1' },
    });
    check('/v1/generations', 'post', 202, created.body);
    const id = (created.body as { id: string }).id;
    const replay = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a doctor with a red circle', webhook_url: 'http://127.0.0.1:9/h', metadata: { order_id: 'A-1' } }), headers: { 'Idempotency-Key': 'oa-1' } });
    check('/v1/generations', 'post', 200, replay.body);
    const key = `outputs/acct_alice/${id}/0.png`;
    await h.blobs.put(key, new Uint8Array([1]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({
      ...cur, status: 'succeeded', attempts: 1, started_at: cur.created_at, finished_at: new Date().toISOString(),
      outputs: [{ key, width: 224, height: 224, clip_score: 0.31 }], usage: { encoder_passes: 10, worker_seconds: 3.5 }, warnings: ['"zzz" is not in the vocabulary'],
      // The output check (ADR 0017): image 0 withheld, image 1 (the stored one) flagged.
      output_checks: [
        { index: 0, withheld: true, flags: [{ rule: 'mouse', category: 'copyright', action: 'withhold', concept: 'Mickey Mouse', message: 'm', cosine: 0.33 }] },
        { index: 1, withheld: false, flags: [{ rule: 'logo', category: 'trademark', action: 'flag', concept: 'the Nike logo', message: 'm', cosine: 0.3 }] },
      ],
    }));
    const got = await call(`/v1/generations/${id}`);
    check('/v1/generations/{id}', 'get', 200, got.body);
    expect((got.body as any).outputs.map((o: any) => [o.index, o.content_flags[0].rule])).toEqual([[1, 'logo']]);
    expect((got.body as any).withheld_outputs.map((o: any) => [o.index, o.content_flags[0].rule])).toEqual([[0, 'mouse']]);
    check('/v1/generations', 'get', 200, (await call('/v1/generations')).body);
    await h.blobs.put(`outputs/acct_alice/${id}/frames/1/0010.png`, new Uint8Array([1]), { contentType: 'image/png' }); // stored before sizes were kept
    await h.blobs.put(`outputs/acct_alice/${id}/frames/1/0020_64x64.png`, new Uint8Array([1]), { contentType: 'image/png' });
    const frames = await call(`/v1/generations/${id}/frames`);
    expect((frames.body as any).data.map((f: any) => [f.index, f.step, f.width, f.height])).toEqual([[1, 10, null, null], [1, 20, 64, 64]]);
    check('/v1/generations/{id}/frames', 'get', 200, frames.body);
    const other = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a blue square' }) });
    check('/v1/generations/{id}/cancel', 'post', 200, (await call(`/v1/generations/${(other.body as { id: string }).id}/cancel`, { method: 'POST' })).body);
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    await recordRunSample(h.blobs, { model: 'toy', width: 224, height: 224, start: 'gmm' }, { seconds: 3, loopSeconds: 2, steps: 100, n: 1, at: new Date().toISOString() });
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    check('/v1/models', 'get', 200, (await call('/v1/models')).body);
    await recordUsage(h.blobs, 'acct_alice', 'job-oa', new Date(), { images: 2, workerSeconds: 3.5, encoderPasses: 10 });
    const usage = await call('/v1/usage');
    expect((usage.body as any).total.cost_usd).toBeGreaterThan(0);
    check('/v1/usage', 'get', 200, usage.body);
    check('/v1/usage', 'get', 400, (await call('/v1/usage?month=2026-13')).body);
    check('/v1/uploads', 'post', 201, (await call('/v1/uploads', { method: 'POST', body: JSON.stringify({ content_type: 'image/png', bytes: 100 }) })).body);
    const refused = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'pikachu' }) });
    expect(refused.status).toBe(400);
    check('/v1/generations', 'post', 400, refused.body);
    check('/v1/generations/{id}', 'get', 404, (await call('/v1/generations/nope')).body);
    check('/v1/generations/{id}', 'delete', 200, (await call(`/v1/generations/${id}`, { method: 'DELETE' })).body);
    check('/v1/generations/{id}', 'delete', 409, (await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a green star' }) }).then((r) => call(`/v1/generations/${(r.body as { id: string }).id}`, { method: 'DELETE' }))).body);
  });
});

describe('requests conform to /openapi.json', () => {
  it('a size the document allows is one the server accepts, and one it refuses is refused by the document too', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validRequest = ajv.getSchema('api#/components/schemas/GenerationRequest')!;
    for (const width of [64, 96, 100, 1024, 1056]) {
      const body = { prompt: 'apple', width };
      const server = (await h.request('/v1/generations', { json: body })).status;
      expect([width, validRequest(body)], String(server)).toEqual([width, server === 202]);
    }
  });

  it('bodies the server refuses for a rule the schema can state are refused by the document too', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validRequest = ajv.getSchema('api#/components/schemas/GenerationRequest')!;
    const manyKeys = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v']));
    const refused = [
      {},
      { prompt: 'a', prompts: [{ text: 'b', weight: 1 }] },
      { prompts: [{ text: 'b', weight: 0 }] },
      { prompt: 'a', init: 'foo' },
      { prompt: 'a', metadata: { 'bad key': 'x' } },
      { prompt: 'a', metadata: manyKeys },
      { prompt: 'a', metadata: { ['x'.repeat(41)]: 'v' } },
      // A request's weight bound (not WeightedPrompt's, which stored specs share): stated in GenerationRequest.
      { prompts: [{ text: 'b', weight: 1 }, { text: 'c', weight: -1e300 }] },
      { prompts: [{ text: 'b', weight: 1001 }] },
    ]; // (webhook_url's `format: uri` is an annotation to a validator that does not assert formats, as here)
    for (const body of refused) {
      expect((await h.request('/v1/estimates', { json: body })).status, JSON.stringify(body)).toBe(400);
      expect(validRequest(body), JSON.stringify(body)).toBe(false);
    }
    // And the same fields, well formed, pass both.
    const fine = { prompts: [{ text: 'b', weight: 1000 }, { text: 'c', weight: -0.5 }, { text: 'd', weight: -1000 }], init: 'noise', metadata: { 'order.id': 'A-1' }, webhook_url: 'https://example.com/h' };
    expect(validRequest(fine) ? [] : validRequest.errors).toEqual([]);
  });

  it('a webhook body, as the deliverer sends it, is the document\'s GenerationEvent', async () => {
    const { deliverWebhook } = await import('../../shared/webhooks.ts');
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    expect(doc.webhooks['generation.ended'].post.requestBody.content['application/json'].schema.$ref).toBe('#/components/schemas/GenerationEvent');
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validEvent = ajv.getSchema('api#/components/schemas/GenerationEvent')!;
    const local = createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true } });
    const res = await local.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', webhook_url: 'http://127.0.0.1:9/hook' }) });
    const { id } = (await res.json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'canceled', cancel_requested: true, finished_at: new Date().toISOString() }));
    const bodies: string[] = [];
    const sent = await deliverWebhook({ jobs: h.jobs, blobs: h.blobs, signedUrlTtlSec: 600, clock: () => new Date(), send: async (r) => (bodies.push(r.body), 200) }, 'acct_alice', id);
    expect(sent).toBe('delivered');
    const event = JSON.parse(bodies[0]!);
    expect(validEvent(event) ? [] : validEvent.errors).toEqual([]);
    expect(event).toMatchObject({ type: 'generation.canceled', data: { id, status: 'canceled' } });
  });
});

describe('what the document says beyond the bodies', () => {
  it("POST /v1/generations' 409 declares the Retry-After that idempotency_in_progress carries", async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const conflict = doc.paths['/v1/generations'].post.responses['409'];
    expect(conflict.description).toContain('idempotency_in_progress');
    expect(conflict.headers['Retry-After']).toMatchObject({ schema: { type: 'integer', minimum: 0 } });
    // (generations.test.ts checks the server sends it: Retry-After 1.)
  });

  it("a generation's metadata is documented with the request's bounds: POST /v1/generations is its only writer", async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const request = doc.components.schemas.GenerationMetadata;
    const response = doc.components.schemas.Generation.properties.metadata;
    for (const rule of ['maxProperties', 'propertyNames', 'additionalProperties'] as const) expect(response[rule], rule).toEqual(request[rule]);
    expect(response).toMatchObject({ maxProperties: 16, additionalProperties: { type: 'string', maxLength: 500 }, propertyNames: { maxLength: 40 } });
    // And what the API accepts, it answers within those bounds (the longest labels it takes).
    const check = await validatorFor(h.app);
    const labels = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${String(i).padStart(39, '0')}`, 'v'.repeat(500)]));
    const res = await h.request('/v1/generations', { json: { prompt: 'apple', metadata: labels } });
    const body = (await res.json()) as { metadata: unknown };
    expect([res.status, body.metadata]).toEqual([202, labels]);
    check('/v1/generations', 'post', 202, body);
  });
});

describe('HEAD answers as GET without a body, Content-Length included', () => {
  const paths = ['/healthz', '/openapi.json', '/v1/models', '/v1/generations', '/v1/usage'];
  const auth = () => ({ Authorization: `Bearer ${h.alice}` });

  it('through the app (as the Lambda adapter calls it)', async () => {
    for (const path of paths) {
      const get = await h.app.request(path, { headers: auth() });
      const bytes = (await get.arrayBuffer()).byteLength;
      const head = await h.app.request(path, { method: 'HEAD', headers: auth() });
      expect([head.status, head.headers.get('Content-Length'), head.headers.get('Content-Type')], path).toEqual([get.status, String(bytes), get.headers.get('Content-Type')]);
      expect((await head.arrayBuffer()).byteLength, path).toBe(0);
      expect(head.headers.get('X-Request-Id'), path).toMatch(/^req_/);
    }
    // An error's HEAD too: its envelope's length.
    const missing = await h.app.request('/v1/generations/nope', { method: 'HEAD', headers: auth() });
    const missingGet = await h.app.request('/v1/generations/nope', { headers: auth() });
    expect([missing.status, missing.headers.get('Content-Length')]).toEqual([missingGet.status, String((await missingGet.arrayBuffer()).byteLength)]);
  });

  it("through hono's Lambda adapter (AWS): the result it hands API Gateway carries the GET's length", async () => {
    const { handle } = await import('hono/aws-lambda');
    const handler = handle(h.app) as unknown as (event: unknown, context: unknown) => Promise<{ statusCode: number; body: string; headers: Record<string, string>; isBase64Encoded: boolean }>;
    const event = (method: string, path: string) => ({
      version: '2.0',
      routeKey: '$default',
      rawPath: path,
      rawQueryString: '',
      headers: { host: 'api.example.com', authorization: `Bearer ${h.alice}` },
      requestContext: { http: { method, path, protocol: 'HTTP/1.1', sourceIp: '192.0.2.1', userAgent: 'test' }, domainName: 'api.example.com', requestId: 'r', stage: '$default' },
      isBase64Encoded: false,
    });
    for (const path of paths) {
      const get = await handler(event('GET', path), {});
      const head = await handler(event('HEAD', path), {});
      expect([head.statusCode, head.body], path).toEqual([get.statusCode, '']);
      expect(head.headers['content-length'], path).toBe(String(Buffer.byteLength(get.body)));
    }
  });

  it('through the Node server (local mode), as GET sends it', async () => {
    const { startApiServer } = await import('../../functions/server.ts');
    const { request } = await import('node:http');
    const server = await startApiServer(h.app, 0);
    try {
      const headers = (method: string, path: string) =>
        new Promise<Record<string, unknown>>((resolve, reject) => {
          const req = request(`${server.url}${path}`, { method, headers: auth() }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.headers));
          });
          req.on('error', reject);
          req.end();
        });
      for (const path of paths) {
        const [get, head] = [await headers('GET', path), await headers('HEAD', path)];
        expect(get['content-length'], path).toMatch(/^\d+$/);
        expect(head['content-length'], path).toBe(get['content-length']);
      }
    } finally {
      await server.close();
    }
  });
});
