import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { localDeps, startApiServer } from '../../functions/server.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { harness } from './helpers.ts';

/** Writes raw bytes to the server and returns everything it answers before closing. */
function rawRequest(url: string, raw: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname.replace(/^\[(.*)\]$/, '$1'), () => socket.write(raw));
    let out = '';
    socket.on('data', (d) => (out += d.toString()));
    socket.on('end', () => resolve(out));
    socket.on('error', reject);
  });
}

/** A raw HTTP/1.1 answer: status, headers (lower-cased names) and body (Content-Length or chunked). */
function parseRaw(raw: string): { status: number; headers: Record<string, string>; body: string } {
  const split = raw.indexOf('\r\n\r\n');
  const [statusLine, ...lines] = raw.slice(0, split).split('\r\n');
  const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  let body = raw.slice(split + 4);
  if (headers['transfer-encoding'] === 'chunked') {
    let out = '';
    for (let at = 0; ; ) {
      const eol = body.indexOf('\r\n', at);
      const size = parseInt(body.slice(at, eol), 16);
      if (!size) break;
      out += body.slice(eol + 2, eol + 2 + size);
      at = eol + 2 + size + 2;
    }
    body = out;
  }
  return { status: Number(statusLine!.split(' ')[1]), headers, body };
}

describe('entry points', () => {
  it.each(['functions/lambda.ts', 'functions/sweep-lambda.ts'])('the Lambda bundle of %s never pulls in the engine or onnxruntime', async (entry) => {
    const result = await build({
      entryPoints: [entry],
      bundle: true,
      platform: 'node',
      format: 'esm',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs).toContain(entry === 'functions/lambda.ts' ? 'functions/app.ts' : 'functions/queued-jobs.ts');
    expect(inputs.filter((p) => p.includes('onnxruntime') || p.startsWith('gpu-worker/'))).toEqual([]);
  });

  it('localDeps + startApiServer serve the app over real HTTP, data under the data dir', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'clipag-srv-'));
    try {
      const config = parseConfig({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: join(dataDir, 'no-models') }) as LocalConfig;
      const deps = await localDeps(config, { models: async () => [{ id: 'toy', default: true }] });
      const { secret } = await deps.adapters.keys.create({ name: 't', owner: 'acct_t' });
      const running = await startApiServer(createApp(deps), 0);
      try {
        const post = await fetch(`${running.url}/v1/generations`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ prompt: 'a lighthouse at dusk' }),
        });
        expect(post.status).toBe(202);
        const { id } = (await post.json()) as { id: string };
        const get = await fetch(`${running.url}${post.headers.get('Location')}`, { headers: { Authorization: `Bearer ${secret}` } });
        expect(await get.json()).toMatchObject({ id, status: 'queued' });
        expect(get.headers.get('X-Request-Id')).toMatch(/^req_/);
        const [msg] = await deps.adapters.queue.receive({ max: 1 });
        expect(JSON.parse(msg.body)).toEqual({ v: 1, job_id: id, owner: 'acct_t' });
        // What Node refuses before the app sees it still gets the envelope and a request id.
        const huge = await fetch(`${running.url}/v1/generations`, { headers: { Authorization: `Bearer ${secret}`, 'X-Padding': 'x'.repeat(20_000) } });
        expect(huge.status).toBe(431);
        expect(huge.headers.get('X-Request-Id')).toMatch(/^req_/);
        expect(await huge.json()).toMatchObject({ error: { code: 'headers_too_large', request_id: huge.headers.get('X-Request-Id') } });
        const garbled = await rawRequest(running.url, 'NOT HTTP AT ALL\r\n\r\n');
        expect(garbled).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
        expect(garbled).toMatch(/"code":"bad_request"/);
      } finally {
        await running.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('many requests in flight at once raise no MaxListenersExceededWarning (each listens to the shutdown signal until it ends)', async () => {
    const h = await harness();
    const running = await startApiServer(h.app, 0);
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const made = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
      // Held answers (the job stays queued): 15 requests in flight together.
      const held = Array.from({ length: 15 }, () => fetch(`${running.url}/v1/generations/${made.id}`, { headers: { Authorization: `Bearer ${h.alice}`, Prefer: 'wait=1' } }));
      expect((await Promise.all(held)).map((r) => r.status)).toEqual(Array(15).fill(200));
      await new Promise((r) => setImmediate(r));
      expect(warnings).not.toContain('MaxListenersExceededWarning');
    } finally {
      process.off('warning', onWarning);
      await running.close();
      await h.close();
    }
  });

  it("a client that stops sending mid-headers gets a 408 request_timeout envelope, not a 400 calling it bad HTTP", async () => {
    const h = await harness();
    const running = await startApiServer(h.app, 0, '127.0.0.1', { headersMs: 300, requestMs: 600, checkEveryMs: 50 });
    try {
      const port = new URL(running.url).port;
      const answer = await rawRequest(running.url, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `);
      expect(answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
      expect(answer).toMatch(/"code":"request_timeout"/);
      expect(answer).toMatch(/X-Request-Id: req_/);
    } finally {
      await running.close();
      await h.close();
    }
  });

  it('a request Node parses but no URL can be made of (bad Host, backslash, OPTIONS *, bad absolute form) → 400 envelope with X-Request-Id', async () => {
    const h = await harness();
    const running = await startApiServer(h.app, 0);
    try {
      const port = new URL(running.url).port;
      const requests = [
        `GET /healthz HTTP/1.1\r\nHost: a b\r\n`,
        `GET /healthz HTTP/1.1\r\nHost: x:99999\r\n`,
        `GET /healthz HTTP/1.1\r\nHost: x/y\r\n`,
        `GET /healthz HTTP/1.1\r\nHost: [::1\r\n`,
        `GET /v1\\models HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`,
        `OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`,
        `GET http://[bad/v1/models HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n`,
      ];
      for (const request of requests) {
        const res = parseRaw(await rawRequest(running.url, `${request}Authorization: Bearer ${h.alice}\r\nConnection: close\r\n\r\n`));
        const what = request.split('\r\n').slice(0, 2).join(' | ');
        expect(res.status, what).toBe(400);
        expect(res.headers['content-type'], what).toMatch(/^application\/json/);
        expect(res.headers['x-request-id'], what).toMatch(/^req_/);
        expect(JSON.parse(res.body), what).toEqual({ error: { code: 'bad_request', message: expect.stringMatching(/^the request target or Host header is not valid/), param: null, request_id: res.headers['x-request-id'] } });
      }
      // And a well-formed request on the same server is the app's, as before.
      const ok = parseRaw(await rawRequest(running.url, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`));
      expect(ok.status).toBe(200);
    } finally {
      await running.close();
      await h.close();
    }
  });

  it.each(['127.0.0.1', '::1'])('an HTTP/1.1 request with no Host header is the app\'s, as an HTTP/1.0 one is: not Node\'s bare 400 without a request id (listening on %s)', async (address) => {
    const h = await harness();
    // The listening address stands in for the Host in the request's URL: an IPv6 one too. (No IPv6 here: nothing to check.)
    const running = await startApiServer(h.app, 0, address).catch((error: NodeJS.ErrnoException) => {
      if (address === '::1' && ['EADDRNOTAVAIL', 'EAFNOSUPPORT'].includes(error.code ?? '')) return undefined;
      throw error;
    });
    if (!running) return void (await h.close());
    try {
      for (const version of ['1.1', '1.0']) {
        const noHost = parseRaw(await rawRequest(running.url, `GET /healthz HTTP/${version}\r\nConnection: close\r\n\r\n`));
        expect([noHost.status, noHost.body, noHost.headers['x-request-id']], version).toEqual([200, '{"status":"ok"}', expect.stringMatching(/^req_/)]);
        const missing = parseRaw(await rawRequest(running.url, `GET /v1/nope HTTP/${version}\r\nAuthorization: Bearer ${h.alice}\r\nConnection: close\r\n\r\n`));
        expect([missing.status, missing.headers['content-type']], version).toEqual([404, expect.stringMatching(/^application\/json/)]);
        expect(JSON.parse(missing.body), version).toEqual({ error: { code: 'not_found', message: expect.any(String), param: null, request_id: missing.headers['x-request-id'] } });
      }
    } finally {
      await running.close();
      await h.close();
    }
  });
});
