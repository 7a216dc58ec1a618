/**
 * In Lambda the request's id is API Gateway's own (the `$context.requestId` its access log records),
 * taken from the event through hono/aws-lambda's `handle`, as functions/lambda.ts serves the app; a
 * caller's X-Request-Id never replaces it. And what Lambda adds to local mode: an event is answered as
 * local mode answers the same request (a GET's or HEAD's body dropped), with the envelope and
 * X-Request-Id on every error, a non-Error thrown included.
 */
import { handle } from 'hono/aws-lambda';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { lambdaHandler } from '../../functions/lambda.ts';
import { harness, type Harness } from './helpers.ts';

// functions/lambda.ts builds its app at import, from the Lambda's environment: an aws-mode one whose
// endpoints answer nothing (no request here reaches them), set above the imports and put back after.
const savedEnv = vi.hoisted(() => {
  const env: Record<string, string> = {
    CLIPAG_MODE: 'aws',
    AWS_REGION: 'us-east-1',
    CLIPAG_BUCKET: 'clipag-lambda-test',
    CLIPAG_QUEUE_URL: 'http://127.0.0.1:9/000000000000/jobs',
    CLIPAG_S3_ENDPOINT: 'http://127.0.0.1:9',
    CLIPAG_SQS_ENDPOINT: 'http://127.0.0.1:9',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
  };
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  return saved;
});
afterAll(() => {
  for (const [k, v] of Object.entries(savedEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

interface EventOptions {
  method?: string;
  body?: string | null;
}

/** An HTTP API (payload 2.0) event, as API Gateway sends it. */
function event(path: string, headers: Record<string, string>, gatewayId: string, { method = 'GET', body = null }: EventOptions = {}) {
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: path,
    rawQueryString: '',
    headers: { host: 'api.example.com', ...headers },
    body,
    isBase64Encoded: false,
    requestContext: {
      accountId: '123456789012',
      apiId: 'api',
      authentication: null,
      authorizer: {},
      domainName: 'api.example.com',
      domainPrefix: 'api',
      http: { method, path, protocol: 'HTTP/1.1', sourceIp: '203.0.113.9', userAgent: 'test' },
      requestId: gatewayId,
      routeKey: '$default',
      stage: '$default',
      time: '01/Jan/2026:00:00:00 +0000',
      timeEpoch: 1767225600000,
    },
  };
}

/** A REST API (payload 1.0) event, as API Gateway sends it. */
function eventV1(path: string, headers: Record<string, string>, gatewayId: string, { method = 'GET', body = null }: EventOptions = {}) {
  const allHeaders = { host: 'api.example.com', ...headers };
  return {
    resource: '/{proxy+}',
    path,
    httpMethod: method,
    headers: allHeaders,
    multiValueHeaders: Object.fromEntries(Object.entries(allHeaders).map(([k, v]) => [k, [v]])),
    queryStringParameters: null,
    multiValueQueryStringParameters: null,
    pathParameters: { proxy: path.slice(1) },
    stageVariables: null,
    body,
    isBase64Encoded: false,
    requestContext: {
      accountId: '123456789012',
      apiId: 'api',
      domainName: 'api.example.com',
      httpMethod: method,
      identity: { sourceIp: '203.0.113.9', userAgent: 'test' },
      path: `/prod${path}`,
      protocol: 'HTTP/1.1',
      requestId: gatewayId,
      requestTimeEpoch: 1767225600000,
      resourcePath: '/{proxy+}',
      stage: 'prod',
    },
  };
}

const FORMATS = [
  ['2.0', event],
  ['1.0', eventV1],
] as const;

type LambdaResult = { statusCode: number; headers?: Record<string, unknown>; multiValueHeaders?: Record<string, unknown[]>; body: string };

/** A response header, from `headers` (payload 2.0) or `multiValueHeaders` (1.0). */
function header(result: LambdaResult, name: string): unknown {
  return result.headers?.[name] ?? result.multiValueHeaders?.[name]?.[0];
}

describe('request id in Lambda', () => {
  it("is API Gateway's id for the request, in the header, the error envelope and the 5xx log line", async () => {
    const handler = handle(createApp({ ...h.deps, models: async () => { throw new Error('boom'); } }));
    const notFound = await handler(event('/v1/nope', { authorization: `Bearer ${h.alice}`, 'x-request-id': 'req_someone_elses_request' }, 'JKJaXmPLvHcESHA='));
    expect(notFound.statusCode).toBe(404);
    expect(notFound.headers?.['x-request-id']).toBe('JKJaXmPLvHcESHA=');
    expect(JSON.parse(notFound.body).error.request_id).toBe('JKJaXmPLvHcESHA=');

    const failed = await handler(event('/v1/models', { authorization: `Bearer ${h.alice}`, 'x-request-id': 'client-trace-0004' }, 'Kx9bYnQLvHcEJbg='));
    expect(failed.statusCode).toBe(500);
    expect(JSON.parse(failed.body).error.request_id).toBe('Kx9bYnQLvHcEJbg=');
    expect(h.logs).toContainEqual(expect.objectContaining({ msg: 'request failed', request_id: 'Kx9bYnQLvHcEJbg=', owner: 'acct_alice', client_request_id: 'client-trace-0004' }));
  });

  it('an id in the event that is not one of the gateway\'s shape is not used: the app makes its own', async () => {
    const handler = handle(createApp(h.deps));
    const res = await handler(event('/healthz', {}, 'bad id\twith spaces'));
    expect(res.headers?.['x-request-id']).toMatch(/^req_[0-9a-z]{26}$/);
  });
});

describe('a GET or HEAD with a body, in Lambda', () => {
  it.each(FORMATS)('payload %s: answered as local mode answers it, the body dropped; a POST keeps its body', async (_format, make) => {
    const handler = lambdaHandler(createApp(h.deps));
    const auth = { authorization: `Bearer ${h.alice}`, 'content-type': 'application/json' };
    // What clients that always send `{}`, or `curl -X GET -d`, send; an HTTP API passes it through.
    const models = (await handler(make('/v1/models', auth, 'Mq3bYnQLvHcEJbg=', { body: '{"x":1}' }) as never)) as LambdaResult;
    expect([models.statusCode, JSON.parse(models.body).data.map((m: { id: string }) => m.id)]).toEqual([200, ['toy']]);
    expect(header(models, 'x-request-id')).toBe('Mq3bYnQLvHcEJbg=');
    const health = (await handler(make('/healthz', {}, 'Nq3bYnQLvHcEJbg=', { body: '{}' }) as never)) as LambdaResult;
    expect([health.statusCode, health.body]).toEqual([200, '{"status":"ok"}']);
    const head = (await handler(make('/v1/models', auth, 'Pq3bYnQLvHcEJbg=', { method: 'HEAD', body: '{}' }) as never)) as LambdaResult;
    expect([head.statusCode, head.body, header(head, 'x-request-id')]).toEqual([200, '', 'Pq3bYnQLvHcEJbg=']);
    // Local mode never sees a GET's body: the operations that refuse one see none here either.
    const secret = (await handler(make('/v1/webhook-secret', auth, 'Qq3bYnQLvHcEJbg=', { body: '{"secret":"mine"}' }) as never)) as LambdaResult;
    expect([secret.statusCode, JSON.parse(secret.body).exists]).toEqual([200, false]);
    const estimate = (await handler(make('/v1/estimates', auth, 'Rq3bYnQLvHcEJbg=', { method: 'POST', body: '{"prompt":"apple"}' }) as never)) as LambdaResult;
    expect(estimate.statusCode).toBe(200);
    const refused = (await handler(make('/v1/webhook-secret', auth, 'Sq3bYnQLvHcEJbg=', { method: 'DELETE', body: '{"x":1}' }) as never)) as LambdaResult;
    expect([refused.statusCode, JSON.parse(refused.body).error.code]).toEqual([400, 'validation_error']);
  });

  it.each(FORMATS)("payload %s: functions/lambda.ts's own handler answers its errors with the envelope and X-Request-Id", async (_format, make) => {
    const { handler } = await import('../../functions/lambda.ts');
    // No key: refused before anything reaches the (unreachable) stores.
    const res = (await handler(make('/v1/models', { 'content-type': 'application/json' }, 'Tq3bYnQLvHcEJbg=', { body: '{"x":1}' }) as never, {} as never)) as LambdaResult;
    expect(res.statusCode).toBe(401);
    expect(header(res, 'content-type')).toBe('application/json');
    expect(header(res, 'x-request-id')).toBe('Tq3bYnQLvHcEJbg=');
    expect(JSON.parse(res.body)).toEqual({ error: { code: 'unauthorized', message: expect.any(String), param: null, request_id: 'Tq3bYnQLvHcEJbg=' } });
  });
});

describe('a non-Error thrown, in Lambda', () => {
  it.each(FORMATS)('payload %s: by a route, a 500 internal_error envelope as for any bug, on its one log line', async (_format, make) => {
    const handler = lambdaHandler(createApp({ ...h.deps, models: () => Promise.reject('models bucket unreadable') }));
    const res = (await handler(make('/v1/models', { authorization: `Bearer ${h.alice}` }, 'Uq3bYnQLvHcEJbg=') as never)) as LambdaResult;
    expect(res.statusCode).toBe(500);
    expect(JSON.parse(res.body)).toEqual({ error: { code: 'internal_error', message: 'internal error', param: null, request_id: 'Uq3bYnQLvHcEJbg=' } });
    expect(header(res, 'x-request-id')).toBe('Uq3bYnQLvHcEJbg=');
    // Made where an Error's 500 is: the /v1 middleware around the route still does its part.
    expect(header(res, 'cache-control')).toBe('no-store');
    const failed = h.logs.filter((l) => (l as { msg?: string }).msg === 'request failed');
    expect(failed).toEqual([expect.objectContaining({ level: 'error', request_id: 'Uq3bYnQLvHcEJbg=', route: '/v1/models', status: 500, cause: 'models bucket unreadable' })]);
  });

  it('by a middleware outside the route (the key check), or one with no prototype: the envelope, logged once', async () => {
    for (const thrown of [{ reason: 'key store down' }, Object.create(null) as object]) {
      h.logs.length = 0;
      const keys = { verify: () => Promise.reject(thrown) };
      const handler = lambdaHandler(createApp({ ...h.deps, keys }));
      const res = (await handler(event('/v1/usage', { authorization: `Bearer ${h.alice}` }, 'Vq3bYnQLvHcEJbg=') as never)) as LambdaResult;
      expect([res.statusCode, JSON.parse(res.body).error.code, header(res, 'x-request-id')]).toEqual([500, 'internal_error', 'Vq3bYnQLvHcEJbg=']);
      const failed = h.logs.filter((l) => (l as { msg?: string }).msg === 'request failed');
      expect(failed).toEqual([expect.objectContaining({ level: 'error', request_id: 'Vq3bYnQLvHcEJbg=', status: 500, error: expect.stringMatching(/^Error: a non-Error was thrown: \[object /) })]);
    }
  });
});

describe('what hono/aws-lambda cannot make a Request of, in Lambda', () => {
  it("payload 2.0: cookies past Latin-1 (which the app never reads) are dropped, not a bare 400: the app answers, with the gateway's id", async () => {
    const handler = lambdaHandler(createApp(h.deps));
    for (const cookies of [['a=日本'], ['a=Ā', 'b=é'], ['session=ok']]) {
      const res = (await handler({ ...event('/v1/models', { authorization: `Bearer ${h.alice}` }, 'Wq3bYnQLvHcEJbg='), cookies } as never)) as LambdaResult;
      expect([res.statusCode, header(res, 'x-request-id'), JSON.parse(res.body).data.map((m: { id: string }) => m.id)], cookies.join('; ')).toEqual([200, 'Wq3bYnQLvHcEJbg=', ['toy']]);
    }
  });

  it.each(FORMATS)('payload %s: TRACE, CONNECT and TRACK are answered by the app as local mode answers them: 405 with Allow on a path it serves, else 404', async (_format, make) => {
    const handler = lambdaHandler(createApp(h.deps));
    for (const method of ['TRACE', 'CONNECT', 'TRACK', 'trace']) {
      const res = (await handler(make('/v1/models', { authorization: `Bearer ${h.alice}` }, 'Xq3bYnQLvHcEJbg=', { method, body: 'echo me' }) as never)) as LambdaResult;
      expect([res.statusCode, header(res, 'allow'), header(res, 'x-request-id'), header(res, 'content-type')], method).toEqual([405, 'GET, HEAD', 'Xq3bYnQLvHcEJbg=', 'application/json']);
      expect(JSON.parse(res.body), method).toEqual({ error: { code: 'method_not_allowed', message: 'method not allowed; use GET, HEAD', param: null, request_id: 'Xq3bYnQLvHcEJbg=' } });
    }
    const unknown = (await handler(make('/v1/nope', { authorization: `Bearer ${h.alice}` }, 'Yq3bYnQLvHcEJbg=', { method: 'TRACE' }) as never)) as LambdaResult;
    expect([unknown.statusCode, JSON.parse(unknown.body).error.code, header(unknown, 'x-request-id')]).toEqual([404, 'not_found', 'Yq3bYnQLvHcEJbg=']);
    // The app ran: its request line names the method as sent.
    expect(h.logs).toContainEqual(expect.objectContaining({ request_id: 'Xq3bYnQLvHcEJbg=', method: 'TRACE', status: 405 }));
  });

  it.each(FORMATS)('payload %s: a non-ASCII Idempotency-Key is refused as in local mode (400 validation_error, Idempotency-Key), not stored percent-encoded', async (_format, make) => {
    const handler = lambdaHandler(createApp(h.deps));
    const headers = { authorization: `Bearer ${h.alice}`, 'content-type': 'application/json' };
    const body = JSON.stringify({ prompt: 'apple' });
    for (const key of ['café', 'ключ', 'key-😀']) {
      const res = (await handler(make('/v1/generations', { ...headers, 'idempotency-key': key }, 'Zq3bYnQLvHcEJbg=', { method: 'POST', body }) as never)) as LambdaResult;
      expect([res.statusCode, header(res, 'x-request-id')], key).toEqual([400, 'Zq3bYnQLvHcEJbg=']);
      expect(JSON.parse(res.body).error, key).toEqual({ code: 'validation_error', message: 'Idempotency-Key: must be 1..255 visible ASCII characters (no spaces)', param: 'Idempotency-Key', request_id: 'Zq3bYnQLvHcEJbg=' });
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    // The same header name as a REST API may spell it; and an ASCII key (a percent sign included) is the app's as before.
    const spelt = (await handler(make('/v1/generations', { ...headers, 'Idempotency-Key': 'café' }, 'ar3bYnQLvHcEJbg=', { method: 'POST', body }) as never)) as LambdaResult;
    expect([spelt.statusCode, JSON.parse(spelt.body).error?.param]).toEqual([400, 'Idempotency-Key']);
    const plain = (await handler(make('/v1/generations', { ...headers, 'idempotency-key': 'caf%C3%A9' }, 'br3bYnQLvHcEJbg=', { method: 'POST', body }) as never)) as LambdaResult;
    expect(plain.statusCode).toBe(202);
    const listed = (await (await h.request('/v1/generations?idempotency_key=caf%25C3%25A9')).json()) as { data: Array<{ id: string }> };
    expect(listed.data.map((g) => g.id)).toEqual([JSON.parse(plain.body).id]);
  });

  it.each(FORMATS)("payload %s: anything else `handle` answers itself (no X-Request-Id) becomes the app's 400 bad_request envelope, with the gateway's id", async (_format, make) => {
    const handler = lambdaHandler(createApp(h.deps));
    // A header value with a line break: no gateway sends one; it stands for whatever else the adapter cannot read.
    const res = (await handler(make('/v1/models', { authorization: `Bearer ${h.alice}`, 'x-note': 'a\nb' }, 'cr3bYnQLvHcEJbg=') as never)) as LambdaResult;
    expect([res.statusCode, header(res, 'content-type'), header(res, 'x-request-id')]).toEqual([400, 'application/json', 'cr3bYnQLvHcEJbg=']);
    expect(JSON.parse(res.body)).toEqual({ error: { code: 'bad_request', message: expect.stringMatching(/^the request could not be read/), param: null, request_id: 'cr3bYnQLvHcEJbg=' } });
    // Without an id of the gateway's shape, the app's own kind.
    const noId = (await handler(make('/v1/models', { 'x-note': 'a\nb' }, 'not a gateway id') as never)) as LambdaResult;
    expect([noId.statusCode, header(noId, 'x-request-id')]).toEqual([400, expect.stringMatching(/^req_[0-9a-z]{26}$/)]);
    expect(JSON.parse(noId.body).error.request_id).toBe(header(noId, 'x-request-id'));
  });
});
