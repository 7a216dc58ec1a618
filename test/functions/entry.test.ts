import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { localDeps, startApiServer } from '../../functions/server.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';

/** Writes raw bytes to the server and returns everything it answers before closing. */
function rawRequest(url: string, raw: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => socket.write(raw));
    let out = '';
    socket.on('data', (d) => (out += d.toString()));
    socket.on('end', () => resolve(out));
    socket.on('error', reject);
  });
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
});
