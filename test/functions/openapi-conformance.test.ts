// Every response shape the API sends, checked against the OpenAPI document it publishes, with a
// JSON Schema 2020-12 validator (Ajv). A schema that no real response can satisfy (an allOf of two
// closed objects, say) fails here, as does a response with a field the document does not declare.
import { readFile } from 'node:fs/promises';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import { API_ERROR_CODES, isListedErrorCode, JOB_ERROR_CODES, type JobErrorClass } from '../../shared/error-codes.ts';
import { ConfigError, ConflictError, NonRetryableError, PreconditionFailedError, RetryableError, TooManyRequestsError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { recordRunSample } from '../../shared/run-stats.ts';
import { recordUsage } from '../../shared/usage.ts';
import { expectEnvelope, harness, LIMITS, queueWithOutage, type Harness } from './helpers.ts';

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
    check('/v1/generations/{id}/webhook/redeliver', 'post', 409, (await call(`/v1/generations/${(other.body as { id: string }).id}/webhook/redeliver`, { method: 'POST' })).body);
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    await recordRunSample(h.blobs, { model: 'toy', width: 224, height: 224, start: 'gmm' }, { seconds: 3, loopSeconds: 2, steps: 100, n: 1, at: new Date().toISOString() });
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    // A size never run, from one size's runs: scaled (with its factor) when larger, as they are when smaller.
    const scaled = await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle', width: 448, height: 448 }) });
    expect((scaled.body as any).basis).toMatchObject({ method: 'scaled', factor: 4 });
    check('/v1/estimates', 'post', 200, scaled.body);
    const nearest = await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle', width: 160, height: 160 }) });
    expect((nearest.body as any).basis).toMatchObject({ method: 'nearest' });
    check('/v1/estimates', 'post', 200, nearest.body);
    check('/v1/models', 'get', 200, (await call('/v1/models')).body);
    const one = await call('/v1/models/toy');
    check('/v1/models/{id}', 'get', 200, one.body);
    expect(one.body).toEqual(((await call('/v1/models')).body as { data: unknown[] }).data[0]);
    const missing = await call('/v1/models/nosuch');
    check('/v1/models/{id}', 'get', 404, missing.body);
    expect(missing).toMatchObject({ status: 404, body: { error: { code: "not_found", param: "id" } } });
    // Any name the deployment does not serve is a 404, whatever its form.
    const upper = await call('/v1/models/Toy');
    check('/v1/models/{id}', 'get', 404, upper.body);
    expect(upper.status).toBe(404);
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
    // For a generated receiver (the OpenAPI review): a delivery always has a body, any 2xx is delivered,
    // and each event has an operationId to name its handler by.
    for (const [event, operationId] of [['generation.ended', 'generationEnded'], ['generation.started', 'generationStarted']] as const) {
      const post = doc.webhooks[event].post;
      expect([post.operationId, post.requestBody.required, Object.keys(post.responses)]).toEqual([operationId, true, ['2XX']]);
    }
    // The stable image link always names the image: a generated client may rely on Location.
    expect(doc.paths['/v1/generations/{id}/outputs/{index}'].get.responses['302'].headers.Location.required).toBe(true);
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


type Doc = { info: { description: string }; paths: Record<string, any>; components: { schemas: Record<string, any> } };

/**
 * Each real answer against the document's declaration for its operation and status (`default` where
 * the status is not declared): the body valid (Ajv 2020; a oneOf of components too), every header sent
 * declared, every required one sent. Returns the declaration it used and the envelope's code.
 */
async function answerChecker(app: { request: (path: string) => Response | Promise<Response> }) {
  const doc = (await (await app.request('/openapi.json')).json()) as Doc;
  const ajv = new Ajv2020({ strict: false, allErrors: true, logger: false });
  ajv.addSchema(doc, 'api');
  // The transport's own, and the ones middleware/cache.ts puts on every /v1 answer without a declaration per response.
  const everywhere = new Set(['content-type', 'content-length', 'cache-control', 'x-content-type-options', 'x-frame-options']);
  const templates = Object.keys(doc.paths).map((t) => ({ t, re: new RegExp(`^${t.replace(/\{[^}]+\}/g, '[^/]+')}$`) }));
  const check = async (method: string, path: string, res: Response) => {
    const template = templates.find(({ re }) => re.test(path.split('?')[0]!))?.t;
    const label = `${method} ${path} → ${res.status}`;
    const operation = template === undefined ? undefined : doc.paths[template][method.toLowerCase()];
    expect(operation, `${label}: no operation in the document`).toBeDefined();
    const declared = operation.responses[String(res.status)] ?? operation.responses.default;
    const body = (await res.json()) as { error?: { code: string } };
    const schema = JSON.parse(JSON.stringify(declared.content['application/json'].schema).replaceAll('"#/', '"api#/'));
    const validate = ajv.compile(schema);
    expect(validate(body) ? [] : validate.errors, `${label}: body`).toEqual([]);
    const headers = new Map(Object.entries<any>(declared.headers ?? {}).map(([name, h]) => [name.toLowerCase(), h]));
    const sent = [...res.headers.keys()].filter((name) => !everywhere.has(name));
    expect(sent.filter((name) => !headers.has(name)), `${label}: headers sent but not declared`).toEqual([]);
    expect([...headers].filter(([name, h]) => h.required && !res.headers.has(name)).map(([name]) => name), `${label}: required headers missing`).toEqual([]);
    return { declared, code: body.error?.code, operation };
  };
  return { doc, check };
}

describe('error codes: one table, in the document, in every description, in the README', () => {
  it("ErrorEnvelope's code lists the table (an extensible string: codes may be added)", async () => {
    const { doc } = await answerChecker(h.app);
    const code = doc.components.schemas.ErrorEnvelope.properties.error.properties.code;
    expect(code.type).toBe('string');
    expect(code.enum).toBeUndefined();
    expect(code['x-extensible-enum']).toEqual(API_ERROR_CODES.map((e) => e.code));
    for (const e of API_ERROR_CODES) expect(code.description).toContain(`${e.status} \`${e.code}\`: ${e.meaning}`);
    expect(code.description).toMatch(/Codes may be added/);
  });

  it('every code an operation answers is in the table at its status, and named by that response in the document', async () => {
    const rated = createApp({ ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...LIMITS, rateLimitPerMin: 3, uploadsPerHour: 1 } });
    const one = createApp({ ...h.deps, limits: { ...LIMITS, maxActiveJobs: 1 } });
    const down = createApp({ ...h.deps, queue: queueWithOutage(h.queue).queue });
    const failing = (error: Error) => createApp({ ...h.deps, models: async () => Promise.reject(error) });
    const { check } = await answerChecker(h.app);
    const seen: string[] = [];
    const call = async (app: typeof h.app, method: string, path: string, init: { key?: string | null; json?: unknown; body?: string; headers?: Record<string, string> } = {}) => {
      const headers = new Headers(init.headers);
      if (init.key !== null) headers.set('Authorization', `Bearer ${init.key ?? h.alice}`);
      if (init.json !== undefined && !headers.has('Content-Type')) headers.set('Content-Type', 'application/json');
      const res = await app.request(path, { method, headers, ...(init.json !== undefined ? { body: JSON.stringify(init.json) } : init.body !== undefined ? { body: init.body } : {}) });
      const { declared, code } = await check(method, path, res.clone());
      if (res.status >= 400) {
        seen.push(`${res.status} ${code}`);
        expect(isListedErrorCode(res.status, code!), `${method} ${path} → ${res.status} ${code}: not in API_ERROR_CODES`).toBe(true);
        expect(declared.description, `${method} ${path} → ${res.status}: its description does not name ${code}`).toContain(code);
      }
      return res;
    };
    const created = (await (await call(h.app, 'POST', '/v1/generations', { json: { prompt: 'a red circle' }, headers: { 'Idempotency-Key': 'codes-1' } })).json()) as { id: string };
    await call(h.app, 'POST', '/v1/generations', { json: { prompt: 'another' }, headers: { 'Idempotency-Key': 'codes-1' } });
    await call(h.app, 'POST', '/v1/generations', { json: { prompt: 'x', width: 33 } });
    await call(h.app, 'POST', '/v1/generations', { body: '{', headers: { 'Content-Type': 'application/json' } });
    await call(h.app, 'POST', '/v1/generations', { json: { prompt: 'pikachu' } });
    await call(h.app, 'POST', '/v1/estimates', { json: { prompt: 'apple', init: 'upload:01jabcdefabcdefabcdefabcdef' } });
    await call(h.app, 'POST', '/v1/generations', { json: { prompt: 'x'.repeat(20_000) } });
    await call(h.app, 'POST', '/v1/generations', { body: '{}', headers: { 'Content-Type': 'text/plain' } });
    await call(h.app, 'GET', '/v1/models', { key: null });
    await call(h.app, 'GET', '/v1/usage', { key: h.revoked });
    await call(h.app, 'GET', '/v1/generations/nope');
    await call(h.app, 'GET', '/v1/generations?statu=failed');
    await call(h.app, 'DELETE', `/v1/generations/${created.id}`);
    await call(h.app, 'POST', '/v1/uploads', { json: { content_type: 'image/png', bytes: 1e9 } });
    await h.jobs.update('acct_alice', created.id, (cur) => ({ ...cur, status: 'succeeded', finished_at: new Date().toISOString() }));
    await call(h.app, 'POST', `/v1/generations/${created.id}/cancel`);
    await h.blobs.put(BlobJobStore.keyFor('acct_alice', created.id), new Uint8Array([1, 2]));
    await call(h.app, 'GET', `/v1/generations/${created.id}`);
    await call(one, 'POST', '/v1/generations', { json: { prompt: 'one more' } });
    for (let i = 0; i < 4; i++) await call(rated, 'GET', '/v1/models');
    await call(down, 'POST', '/v1/generations', { json: { prompt: 'a green star' }, headers: { 'Idempotency-Key': 'codes-down' } });
    await call(failing(new RetryableError('DynamoDB throttled')), 'GET', '/v1/models');
    await call(failing(new NonRetryableError('boom')), 'GET', '/v1/models');
    expect(new Set(seen)).toEqual(
      new Set([
        '409 idempotency_key_reused', '400 validation_error', '400 invalid_json', '400 content_policy', '400 upload_not_found', '413 payload_too_large', '415 unsupported_media_type',
        '401 unauthorized', '404 not_found', '409 job_not_finished', '409 job_terminal', '409 corrupt_record', '429 too_many_active_jobs', '429 rate_limited', '503 queue_unavailable',
        '503 unavailable', '500 internal_error',
      ]),
    );
  });

  it("a 5xx with a code the table does not list is the documented one (500 internal_error; 503 unavailable if retrying helps), its detail only in the log", async () => {
    const cases = [
      [new NonRetryableError('S3 bucket "clipag-prod" does not exist: check the configured bucket name', { code: 'config_error' }), 500, 'internal_error', 'internal error'],
      [new ConfigError(['CLIPAG_BUCKET: required']), 500, 'internal_error', 'internal error'],
      [new RetryableError('DynamoDB: ProvisionedThroughputExceeded on table clipag-rate', { code: 'throttled' }), 503, 'unavailable', 'a dependency is temporarily unavailable; retry later'],
    ] as const;
    for (const [error, status, code, message] of cases) {
      h.logs.length = 0;
      const app = createApp({ ...h.deps, models: async () => Promise.reject(error) });
      const res = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}` } });
      const body = await expectEnvelope(res, status, code);
      expect(body.message, error.code).toBe(message);
      expect(h.logs, error.code).toContainEqual(expect.objectContaining({ msg: 'request failed', code: error.code, error: expect.stringContaining(error.message.split('\n')[0]!) }));
    }
  });

  it('a 4xx the table does not list never leaves either: a lost conditional write is 503 busy (no storage key), any other a 500 logged at error', async () => {
    const { check } = await answerChecker(h.app);
    const answer = async (error: Error) => {
      h.logs.length = 0;
      const app = createApp({ ...h.deps, models: () => Promise.reject(error) });
      const res = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}` } });
      await check('GET', '/v1/models', res.clone()); // declared: 503 with its Retry-After, 500 as `default`
      return res;
    };
    for (const error of [new PreconditionFailedError('object already exists: acct_x/jobs/01jabcdefabcdefabcdefabcdef.json'), new PreconditionFailedError('etag mismatch for acct_x/webhook-secret.json')]) {
      const res = await answer(error);
      expect(res.headers.get('Retry-After'), error.message).toBe('1');
      const body = await expectEnvelope(res, 503, 'busy');
      expect(JSON.stringify(body), error.message).not.toMatch(/acct_|\.json/);
      expect(body.message).toBe('the record is being updated by another request; retry');
      // The operator's line keeps the key.
      expect(h.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'request failed', status: 503, code: 'precondition_failed', error: expect.stringContaining('acct_x/') }));
    }
    for (const error of [new ConflictError('the record moved on under acct_x/jobs/y.json'), new TooManyRequestsError('slow down')]) {
      const res = await answer(error);
      expect(res.headers.get('Retry-After'), error.code).toBeNull();
      const body = await expectEnvelope(res, 500, 'internal_error');
      expect(body.message, error.code).toBe('internal error');
      expect(h.logs, error.code).toContainEqual(expect.objectContaining({ level: 'error', msg: 'request failed', status: 500, code: error.code, error: expect.stringContaining(error.message) }));
    }
    // A 4xx the table lists still answers for itself.
    await expectEnvelope(await answer(new ConflictError('generation g already succeeded', { code: 'job_terminal' })), 409, 'job_terminal');
  });

  it("the README's table of HTTP errors names the same codes at the same statuses", async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const table = readme.slice(readme.indexOf('**HTTP errors**'), readme.indexOf('**Why a generation failed**'));
    const rows = table.split('\n').filter((line) => /^\| \d{3} \|/.test(line));
    expect(rows.length).toBeGreaterThan(10);
    const inReadme = rows.flatMap((row) => {
      const [, status, codes] = row.split('|').map((cell) => cell.trim());
      return [...codes!.matchAll(/`([a-z_]+)`/g)].map((m) => `${status} ${m[1]}`);
    });
    expect(inReadme.sort()).toEqual(API_ERROR_CODES.map((e) => `${e.status} ${e.code}`).sort());
  });

  it("a store's refusal to write a job record is a 500 internal_error, not the caller's 400 validation_error; its detail is in the log", async () => {
    // A bug in a writer (here a NaN clip_score slipped into a cancel's update) meets the record's schema.
    class NaNScoreJobs extends BlobJobStore {
      override update(...[owner, id, mutate, options]: Parameters<BlobJobStore['update']>) {
        return super.update(owner, id, (cur) => {
          const next = mutate(cur);
          return next && { ...next, outputs: [{ key: `outputs/${owner}/${id}/0.png`, width: 64, height: 64, clip_score: Number.NaN }] };
        }, options);
      }
    }
    const created = (await (await h.request('/v1/generations', { json: { prompt: 'a red circle' } })).json()) as { id: string };
    const app = createApp({ ...h.deps, jobs: new NaNScoreJobs(h.blobs) });
    h.logs.length = 0;
    const res = await app.request(`/v1/generations/${created.id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } });
    const body = await expectEnvelope(res, 500, 'internal_error');
    expect([body.message, body.param]).toEqual(['internal error', null]);
    expect(h.logs).toContainEqual(expect.objectContaining({ msg: 'request failed', code: 'internal_error', error: expect.stringMatching(/^RefusedJobRecordError: the job store refused to write a job record: it does not validate: .*clip_score/s) }));
    expect((await h.jobs.get('acct_alice', created.id))!.status).toBe('queued');
  });
});

describe('job failure codes: one table, in the document and in the README', () => {
  const CLASS_HEADINGS: Record<JobErrorClass, RegExp> = { fix_request: /^Fix the request/, resubmit: /^Submit it again/, same_key: /^Repeat the POST with the same Idempotency-Key/ };

  it("JobError's code names each code once, under its class, with its meaning and advice", async () => {
    const { doc } = await answerChecker(h.app);
    const description: string = doc.components.schemas.JobError.properties.code.description;
    expect(description).toMatch(/Codes may be added: treat one you do not know like internal_error/);
    let heading: JobErrorClass | undefined;
    const seen: string[] = [];
    for (const line of description.split('\n').slice(1)) {
      const cls = (Object.keys(CLASS_HEADINGS) as JobErrorClass[]).find((c) => CLASS_HEADINGS[c].test(line));
      if (cls) {
        heading = cls;
        continue;
      }
      const codes = /^- ((?:`[a-z_]+`(?:, )?)+): /.exec(line)?.[1];
      expect(codes, line).toBeDefined();
      for (const [, code] of codes!.matchAll(/`([a-z_]+)`/g)) {
        const entry = JOB_ERROR_CODES.find((e) => e.code === code);
        expect(entry, code).toBeDefined();
        expect(heading, code).toBe(entry!.class);
        expect(line, code).toContain(`: ${entry!.meaning}. `);
        expect(line.toLowerCase(), code).toContain(`. ${entry!.advice.toLowerCase()}.`);
        seen.push(code!);
      }
    }
    expect(seen.sort()).toEqual(JOB_ERROR_CODES.map((e) => e.code).sort());
  });

  it("the README's table of why a generation failed gives each code the table's meaning and advice", async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('**Why a generation failed**'));
    const table = section.slice(0, section.indexOf('\n\n', section.indexOf('|')));
    const rows = table.split('\n').filter((line) => /^\| `/.test(line));
    const inReadme: string[] = [];
    for (const row of rows) {
      const [codes, meaning, advice] = row.split(' | ').map((cell) => cell.replace(/^\| |\s*\|$/g, '').trim());
      for (const [, code] of codes!.matchAll(/`([a-z_]+)`/g)) {
        const entry = JOB_ERROR_CODES.find((e) => e.code === code);
        expect(entry, `README names ${code}, the table does not`).toBeDefined();
        expect([meaning, advice], code).toEqual([entry!.meaning, entry!.advice]);
        inReadme.push(code!);
      }
    }
    expect(inReadme.sort()).toEqual(JOB_ERROR_CODES.map((e) => e.code).sort());
  });
});

describe('query parameters: an operation takes the ones it declares, no others', () => {
  it('a misspelt filter is refused, naming it, where it once answered plausible wrong data', async () => {
    await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const statu = await expectEnvelope(await h.request('/v1/generations?statu=failed'), 400, 'validation_error');
    expect([statu.param, statu.message]).toEqual(['statu', 'unknown query parameter "statu": GET /v1/generations takes limit, cursor, status, created_after, created_before, webhook_status, metadata[KEY], api_key_id, idempotency_key']);
    const mnth = await expectEnvelope(await h.request('/v1/usage?mnth=2020-01'), 400, 'validation_error');
    expect([mnth.param, mnth.message]).toEqual(['mnth', 'unknown query parameter "mnth": GET /v1/usage takes month, api_key_id']);
    // HEAD as its GET; the declared ones still work.
    expect((await h.request('/v1/usage?mnth=2020-01', { method: 'HEAD' })).status).toBe(400);
    expect((await h.request('/v1/generations?status=failed&limit=5')).status).toBe(200);
    expect((await h.request('/v1/usage?month=2020-01')).status).toBe(200);
    // A path no operation has stays the router's.
    expect((await h.request('/v1/nothing?x=1')).status).toBe(404);
    expect((await h.request('/v1/models?x=1', { method: 'PUT' })).status).toBe(405);
  });

  it("every /v1 operation refuses one it does not declare, with a 400 it documents, and the document's own are taken", async () => {
    const { doc, check } = await answerChecker(h.app);
    const id = ((await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string }).id;
    let operations = 0;
    for (const [template, item] of Object.entries(doc.paths)) {
      if (!template.startsWith('/v1/')) continue;
      for (const method of Object.keys(item)) {
        const path = template.replace('{id}', id);
        // A deep object (metadata) is sent as name[KEY]=VALUE.
        const declared: string[] = (item[method].parameters ?? [])
          .filter((p: { in: string }) => p.in === 'query')
          .flatMap((p: { name: string; style?: string }) => (p.style === 'deepObject' ? [p.name, `${p.name}[k]`] : [p.name]));
        const res = await h.request(`${path}?zz_unknown=1`, { method: method.toUpperCase(), ...(method === 'post' ? { headers: { 'Content-Type': 'application/json' }, body: '{}' } : {}) });
        const label = `${method.toUpperCase()} ${template}`;
        expect(res.status, label).toBe(400);
        const { code } = await check(method.toUpperCase(), path, res.clone());
        expect(code, label).toBe('validation_error');
        expect(((await res.json()) as { error: { param: string } }).error.param, label).toBe('zz_unknown');
        expect(item[method].responses['400']?.description, label).toMatch(/query parameter/);
        // Each declared one gets past the check (its own rules may still refuse its value).
        for (const name of declared) {
          const body = (await (await h.request(`${path}?${name}=x`, { method: method.toUpperCase() })).json()) as { error?: { message: string } };
          expect(body.error?.message ?? '', `${label} ?${name}`).not.toMatch(/unknown query parameter/);
        }
        operations++;
      }
    }
    expect(operations).toBe(20);
  });
});

describe('the document, finding by finding', () => {
  it("Generation has its own description (not the webhook attempt's), and says what its status implies", async () => {
    const { doc } = await answerChecker(h.app);
    const generation = doc.components.schemas.Generation;
    expect(generation.description ?? '').not.toMatch(/attempt/);
    expect(generation.description).toMatch(/`error` is set once it failed/);
    expect(doc.components.schemas.GenerationEvent.properties.data).toEqual({ $ref: '#/components/schemas/Generation' });
    expect(doc.components.schemas.GenerationEvent.description).toMatch(/as it stood when this attempt was sent/);
  });

  it('JobError and GenerationWebhook are objects; a generation\'s error and webhook are nullable where it uses them', async () => {
    const { doc } = await answerChecker(h.app);
    const schemas = doc.components.schemas;
    expect([schemas.JobError.type, schemas.GenerationWebhook.type]).toEqual(['object', 'object']);
    expect(schemas.Generation.properties.error.anyOf).toEqual([{ $ref: '#/components/schemas/JobError' }, { type: 'null' }]);
    expect(schemas.Generation.properties.webhook.anyOf).toEqual([{ $ref: '#/components/schemas/GenerationWebhook' }, { type: 'null' }]);
  });

  it('seeds are int64 (a uint32 overflows the int32 of a format-less integer); the output seed wraps mod 2^32, within its maximum', async () => {
    const { doc, check } = await answerChecker(h.app);
    const schemas = doc.components.schemas;
    for (const seed of [schemas.GenerationRequest.properties.seed, schemas.GenerationSpec.properties.seed, schemas.GenerationOutput.properties.seed]) {
      expect(seed).toMatchObject({ type: 'integer', format: 'int64', minimum: 0, maximum: 4294967295 });
      expect(seed.description).toMatch(/mod 2\^32/);
    }
    const created = await h.request('/v1/generations', { json: { prompt: 'apple', seed: 4294967295, n: 2 } });
    expect(created.status).toBe(202);
    const { id } = (await created.json()) as { id: string };
    const keys = [0, 1].map((i) => `outputs/acct_alice/${id}/${i}.png`);
    for (const key of keys) await h.blobs.put(key, new Uint8Array([1]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', finished_at: new Date().toISOString(), outputs: keys.map((key) => ({ key, width: 224, height: 224 })) }));
    const got = await h.request(`/v1/generations/${id}`);
    const body = (await got.clone().json()) as { outputs: Array<{ index: number; seed: number }> };
    expect(body.outputs.map((o) => [o.index, o.seed])).toEqual([[0, 4294967295], [1, 0]]);
    await check('GET', `/v1/generations/${id}`, got);
  });

  it("a 413 is declared as it is sent: RateLimit fields when the operation refused a size (uploads' bytes), the gateway's GatewayError too", async () => {
    const rated = createApp({ ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...LIMITS, rateLimitPerMin: 100 } });
    const { doc, check } = await answerChecker(rated);
    const uploads = await rated.request('/v1/uploads', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ content_type: 'image/png', bytes: 1e9 }) });
    expect([uploads.status, uploads.headers.get('RateLimit')]).toEqual([413, expect.stringMatching(/^"requests";r=99;t=\d+$/)]);
    await check('POST', '/v1/uploads', uploads);
    // The body limit's 413 comes before the key is read: none there, and none required.
    const body = await rated.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'x'.repeat(20_000) }) });
    expect([body.status, body.headers.get('RateLimit')]).toEqual([413, null]);
    await check('POST', '/v1/generations', body);
    const declared = doc.paths['/v1/uploads'].post.responses['413'];
    expect(declared.content['application/json'].schema.oneOf).toContainEqual({ $ref: '#/components/schemas/GatewayError' });
  });
});

describe('who may load what from a browser', () => {
  it('/openapi.json is open to every origin (public, no credentials); the API itself sends no CORS headers', async () => {
    const doc = await h.app.request('/openapi.json', { headers: { Origin: 'https://editor.example' } });
    expect(doc.status).toBe(200);
    expect(doc.headers.get('access-control-allow-origin')).toBe('*');
    const models = await h.request('/v1/models', { headers: { Origin: 'https://app.example' } });
    expect(models.status).toBe(200);
    expect(models.headers.get('access-control-allow-origin')).toBeNull();
  });
});
