// Config values that must reach the code that uses them, and the one model-name pattern.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { MODEL_NAME_PATTERN } from '../../shared/schemas/common.ts';
import { ModelName } from '../../shared/schemas/generation.ts';
import { MODEL_NAME_RE } from '../../shared/modelstore.ts';
import { localDeps } from '../../functions/deps/local.ts';
import { createApp } from '../../functions/app.ts';

describe('CLIPAG_UPLOAD_URL_TTL_SEC', () => {
  it('defaults to 900 s, is bounded, and sets the lifetime of the upload URL POST /v1/uploads hands out', async () => {
    expect(parseConfig({}).uploadUrlTtlSec).toBe(900);
    expect(() => parseConfig({ CLIPAG_UPLOAD_URL_TTL_SEC: '5' })).toThrow(/CLIPAG_UPLOAD_URL_TTL_SEC/);
    const dataDir = mkdtempSync(join(tmpdir(), 'clipag-cfg-'));
    const config = parseConfig({ CLIPAG_DATA_DIR: dataDir, CLIPAG_UPLOAD_URL_TTL_SEC: '120' }) as LocalConfig;
    const deps = await localDeps(config, { models: async () => [{ id: 'toy', default: true, input_size: 224 }] });
    expect(deps.limits.uploadUrlTtlSec).toBe(120);
    const { secret } = await deps.adapters.keys.create({ name: 't', owner: 'acct_t' });
    const before = Date.now();
    const res = await createApp(deps).request('/v1/uploads', {
      method: 'POST',
      headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ content_type: 'image/png', bytes: 100 }),
    });
    expect(res.status).toBe(201);
    const lifetimeSec = (Date.parse(((await res.json()) as { expires_at: string }).expires_at) - before) / 1000;
    expect(lifetimeSec).toBeGreaterThan(100);
    expect(lifetimeSec).toBeLessThanOrEqual(121);
  });
});

describe('CLIPAG_OUTPUT_RETENTION_DAYS and CLIPAG_WORKER_HOURLY_USD', () => {
  it('reach the API\'s views and the webhooks\' bodies; unset, neither figure is shown', async () => {
    const { webhookDeliveryFromConfig } = await import('../../shared/webhooks.ts');
    expect(() => parseConfig({ CLIPAG_OUTPUT_RETENTION_DAYS: '0' })).toThrow(/CLIPAG_OUTPUT_RETENTION_DAYS/);
    const config = parseConfig({ CLIPAG_DATA_DIR: mkdtempSync(join(tmpdir(), 'clipag-cfg-')), CLIPAG_OUTPUT_RETENTION_DAYS: '30', CLIPAG_WORKER_HOURLY_USD: '1.5' }) as LocalConfig;
    const deps = await localDeps(config, { models: async () => [{ id: 'toy', default: true, input_size: 224 }] });
    expect([deps.limits.outputRetentionDays, deps.limits.workerHourlyUsd]).toEqual([30, 1.5]);
    expect(webhookDeliveryFromConfig(config).view).toEqual({ workerHourlyUsd: 1.5, outputRetentionDays: 30 });
    expect(webhookDeliveryFromConfig(parseConfig({})).view).toEqual({});
  });
});

describe('MODEL_NAME_PATTERN', () => {
  it('is the one pattern behind the request schema, the config and the model store', () => {
    for (const name of ['toy', 'vit-b-32.laion2b_s34b', 'a'.repeat(64)]) {
      expect(MODEL_NAME_PATTERN.test(name)).toBe(true);
      expect(ModelName.safeParse(name).success).toBe(true);
    }
    for (const name of ['', 'Toy', '-x', '.x', 'a'.repeat(65), 'a/b', 'a b']) {
      expect(MODEL_NAME_PATTERN.test(name)).toBe(false);
      expect(ModelName.safeParse(name).success).toBe(false);
      expect(() => parseConfig({ CLIPAG_DEFAULT_MODEL: name || '_x' })).toThrow(/CLIPAG_DEFAULT_MODEL/);
    }
    expect(MODEL_NAME_RE).toBe(MODEL_NAME_PATTERN);
  });
});
