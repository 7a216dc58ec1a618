import { Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { S3BlobStore } from '../../shared/adapters/aws/s3-blobstore.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

type Line = Record<string, unknown>;

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

/** The log entries about one request: the ones carrying its X-Request-Id answer. */
function linesOf(logs: unknown[], res: Response): Line[] {
  const id = res.headers.get('X-Request-Id');
  expect(id).toBeTruthy();
  return (logs as Line[]).filter((l) => l.request_id === id);
}

/** The one line of a request (failing when there are none or several). */
function lineOf(logs: unknown[], res: Response): Line {
  const lines = linesOf(logs, res);
  expect(lines).toHaveLength(1);
  return lines[0]!;
}

/** A real S3 client whose every call is answered with S3's 503 SlowDown, carrying an S3 request id. */
function s3AnsweringSlowDown(): S3Client {
  return new S3Client({
    region: 'eu-west-1',
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    maxAttempts: 1,
    requestHandler: {
      handle: async () => ({
        // Shaped like @smithy/protocol-http's HttpResponse (the SDK duck-types it).
        response: {
          statusCode: 503,
          reason: 'Slow Down',
          headers: { 'content-type': 'application/xml', 'x-amz-request-id': 'TX9S3REQ0001' },
          body: Readable.from([Buffer.from('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>')]),
        },
      }),
    } as never,
  });
}

describe('one `request` line per /v1 request (review H1)', () => {
  it('a POST: its line joins the request id, the caller id, the account, the key and the job it made, and holds no secret, prompt or webhook URL', async () => {
    const webhookUrl = 'https://hooks.example.com/clipag/tok-8c1f2e';
    const res = await h.request('/v1/generations', { json: { prompt: 'a lighthouse at dusk', steps: 10, webhook_url: webhookUrl }, headers: { 'X-Request-Id': 'client-trace-0101' } });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { id: string; webhook: { secret: string } };
    const line = lineOf(h.logs, res);
    const key = (await h.keys.verify(h.alice))!;
    expect(line).toMatchObject({
      level: 'info',
      msg: 'request',
      request_id: res.headers.get('X-Request-Id'),
      client_request_id: 'client-trace-0101',
      owner: 'acct_alice',
      api_key_id: key.id,
      method: 'POST',
      route: '/v1/generations',
      status: 202,
      job_id: body.id,
    });
    expect(line.duration_ms).toEqual(expect.any(Number));
    expect(line.duration_ms as number).toBeGreaterThanOrEqual(0);
    expect(line).not.toHaveProperty('error_code');
    const text = JSON.stringify(line);
    for (const secret of [h.alice, 'lighthouse', webhookUrl, 'hooks.example.com', body.webhook.secret]) expect(text).not.toContain(secret);
  });

  it('names the route by its pattern: no id, cursor or query in it, the id under job_id', async () => {
    const made = (await (await h.request('/v1/generations', { json: { prompt: 'a fox', steps: 10 } })).json()) as { id: string };
    const cases: Array<[string, RequestInit, string, string | undefined]> = [
      [`/v1/generations/${made.id}`, {}, '/v1/generations/:id', made.id],
      [`/v1/generations/${made.id}/frames`, {}, '/v1/generations/:id/frames', made.id],
      [`/v1/generations/${made.id}/cancel`, { method: 'POST' }, '/v1/generations/:id/cancel', made.id],
      ['/v1/generations?limit=5&status=queued', {}, '/v1/generations', undefined],
      [`/v1/generations/${made.id}`, { method: 'HEAD' }, '/v1/generations/:id', made.id],
    ];
    for (const [path, init, route, jobId] of cases) {
      const res = await h.request(path, init);
      expect(res.status, path).toBeLessThan(300);
      const line = lineOf(h.logs, res);
      expect(line, path).toMatchObject({ msg: 'request', route, status: res.status, method: init.method ?? 'GET' });
      expect(line.job_id, path).toBe(jobId);
    }
  });

  it('a 4xx is one info line with its error code and no message (a policy refusal quotes the prompt)', async () => {
    const cases: Array<[Promise<Response>, number, string, Line]> = [
      [h.request('/v1/generations/7ybpsrh60w915m6j7a8zvgrg5f', { key: null }), 401, 'unauthorized', { route: '/v1/generations/:id', owner: undefined, api_key_id: undefined }],
      [h.request('/v1/generations/7ybpsrh60w915m6j7a8zvgrg5f'), 404, 'not_found', { route: '/v1/generations/:id', owner: 'acct_alice', job_id: '7ybpsrh60w915m6j7a8zvgrg5f' }],
      [h.request('/v1/generations', { json: { prompt: 'Mickey Mouse waving', steps: 10 } }), 400, 'content_policy', { route: '/v1/generations', job_id: undefined }],
      [h.request('/v1/models', { method: 'POST', json: {} }), 405, 'method_not_allowed', { route: '(unmatched)' }],
      [h.request('/v1/nothing-here'), 404, 'not_found', { route: '(unmatched)' }],
      // Refused by the body limit's own handler, not a throw: the code still reaches the line.
      [h.request('/v1/generations', { json: { prompt: 'x'.repeat(20_000) } }), 413, 'payload_too_large', { route: '/v1/generations' }],
    ];
    for (const [pending, status, code, fields] of cases) {
      const res = await pending;
      await expectEnvelope(res, status, code);
      const line = lineOf(h.logs, res);
      expect(line, code).toMatchObject({ level: 'info', msg: 'request', status, error_code: code, ...fields });
      expect(line, code).not.toHaveProperty('stack');
      expect(JSON.stringify(line), code).not.toMatch(/Mickey|nothing-here|xxxx/);
    }
  });

  it('a 500 is one error line `request failed` with the failure, the answer generic (review H2)', async () => {
    const app = createApp({
      ...h.deps,
      models: async function modelsThatBreak() {
        throw new TypeError("Cannot read properties of undefined (reading 'id')");
      },
    });
    const res = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}`, 'X-Request-Id': 'client-trace-0500' } });
    const err = await expectEnvelope(res, 500, 'internal_error');
    expect(err.message).toBe('internal error');
    const line = lineOf(h.logs, res);
    expect(line).toMatchObject({
      level: 'error',
      msg: 'request failed',
      client_request_id: 'client-trace-0500',
      owner: 'acct_alice',
      route: '/v1/models',
      status: 500,
      error_code: 'internal_error',
      error: "TypeError: Cannot read properties of undefined (reading 'id')",
    });
    expect(line.stack).toEqual(expect.stringContaining('modelsThatBreak'));
    const frames = (line.stack as string).split('\n');
    expect(frames.length).toBeLessThanOrEqual(10);
    expect(frames.every((f) => f.startsWith('at '))).toBe(true);
  });

  it("a 503 from S3 is one `request failed` line with the error's code, its cause and S3's status and request id; the answer says only to retry", async () => {
    const app = createApp({ ...h.deps, jobs: new BlobJobStore(new S3BlobStore({ client: s3AnsweringSlowDown(), bucket: 'b' })) });
    const res = await app.request('/v1/generations', { headers: { Authorization: `Bearer ${h.alice}` } });
    const err = await expectEnvelope(res, 503, 'unavailable');
    expect(err.message).toBe('a dependency is temporarily unavailable; retry later');
    const line = lineOf(h.logs, res);
    expect(line).toMatchObject({
      level: 'error',
      msg: 'request failed',
      route: '/v1/generations',
      status: 503,
      error_code: 'unavailable',
      code: 'unavailable',
      cause: expect.stringMatching(/^SlowDown: Please reduce your request rate/),
      aws_http_status: 503,
      aws_request_id: 'TX9S3REQ0001',
    });
    expect(line.stack).toEqual(expect.stringMatching(/^at /));
  });

  it('a 5xx outside /v1 (no request line there) still gets its `request failed` line, with the failure', async () => {
    const app = createApp(h.deps);
    app.get('/boom', function boomRoute() {
      throw new RangeError('index out of range');
    });
    const res = await app.request('/boom');
    await expectEnvelope(res, 500, 'internal_error');
    const line = lineOf(h.logs, res);
    expect(line).toMatchObject({ level: 'error', msg: 'request failed', path: '/boom', status: 500, error: 'RangeError: index out of range' });
    expect(line.stack).toEqual(expect.stringContaining('boomRoute'));
    // A 2xx outside /v1 (a health check) writes nothing.
    const health = await app.request('/healthz');
    expect(linesOf(h.logs, health)).toEqual([]);
  });
});

describe('the job record keeps the request id of the POST that made it (review H1(c))', () => {
  it('the created record holds the POST\'s request id, and a replay with the same key leaves it as it was', async () => {
    const init = { json: { prompt: 'a red fox', steps: 10 }, headers: { 'Idempotency-Key': 'rid-1' } };
    const first = await h.request('/v1/generations', init);
    expect(first.status).toBe(202);
    const { id } = (await first.json()) as { id: string };
    expect((await h.jobs.get('acct_alice', id))?.request_id).toBe(first.headers.get('X-Request-Id'));

    const replay = await h.request('/v1/generations', init);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('X-Request-Id')).not.toBe(first.headers.get('X-Request-Id'));
    expect(lineOf(h.logs, replay)).toMatchObject({ status: 200, job_id: id });
    expect((await h.jobs.get('acct_alice', id))?.request_id).toBe(first.headers.get('X-Request-Id'));
  });
});
