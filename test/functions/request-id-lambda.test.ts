/**
 * In Lambda the request's id is API Gateway's own (the `$context.requestId` its access log records),
 * taken from the event through hono/aws-lambda's `handle`, as functions/lambda.ts serves the app; a
 * caller's X-Request-Id never replaces it.
 */
import { handle } from 'hono/aws-lambda';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** An HTTP API (payload 2.0) event, as API Gateway sends it. */
function event(path: string, headers: Record<string, string>, gatewayId: string) {
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: path,
    rawQueryString: '',
    headers: { host: 'api.example.com', ...headers },
    body: null,
    isBase64Encoded: false,
    requestContext: {
      accountId: '123456789012',
      apiId: 'api',
      authentication: null,
      authorizer: {},
      domainName: 'api.example.com',
      domainPrefix: 'api',
      http: { method: 'GET', path, protocol: 'HTTP/1.1', sourceIp: '203.0.113.9', userAgent: 'test' },
      requestId: gatewayId,
      routeKey: '$default',
      stage: '$default',
      time: '01/Jan/2026:00:00:00 +0000',
      timeEpoch: 1767225600000,
    },
  };
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
