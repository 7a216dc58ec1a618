import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { localDeps, startApiServer } from '../../functions/server.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';

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
      } finally {
        await running.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
