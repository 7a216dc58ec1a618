// `clipag serve` with CLIPAG_OUTPUT_RETENTION_DAYS (the long-run review, findings 1 and 2): every view
// said `outputs_expire_at`, and nothing local ever removed the images. Its background sweep now does,
// once that time has passed, and leaves the generation as AWS leaves it after the bucket's lifecycle
// rule: listed with its outputs, whose links answer 404, and its frames gone. Unset, nothing goes.
// CLIPAG_UPLOAD_RETENTION_DAYS does the same for uploads, as the bucket's other rule does.
import { mkdtempSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serve } from '../../cli/serve.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { newId, newJobId } from '../../shared/ids.ts';
import { jobOutputsPrefix, pendingJobKey, uploadKey } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { frameKey } from '../../shared/views.ts';
import { FAST_RECIPE, freePort, tinyModelsDir } from '../helpers/serve.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-serve-retention-'));
const modelsDir = tinyModelsDir(root);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const DAY = 86_400_000;
const PNG = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 0]);

const env = async (dataDir: string, extra: Record<string, string> = {}) => ({
  CLIPAG_DATA_DIR: dataDir,
  CLIPAG_MODELS_DIR: modelsDir,
  PORT: String(await freePort()),
  CLIPAG_RECEIVE_WAIT_SEC: '1',
  LOG_LEVEL: 'error',
  ...extra,
});

/** A data folder holding two generations of the local account that ended with an image and a frame: 3 days ago, and an hour ago. */
async function folderWithGenerations(dataDir: string) {
  const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
  const made = async (agoMs: number) => {
    const created = Date.now() - agoMs;
    const id = newJobId(created);
    const key = `${jobOutputsPrefix('local', id)}0.png`;
    await stores.blobs.put(key, PNG, { contentType: 'image/png' });
    await stores.blobs.put(frameKey('local', id, 0, 0, 64, 64), PNG, { contentType: 'image/png' });
    const base = newJobRecord({ id, owner: 'local', spec: GenerationSpec.parse({ prompt: 'apple', width: 64, height: 64, seed: 1, model: 'toy' }), now: new Date(created) });
    await stores.jobs.create({ ...base, status: 'succeeded', attempts: 1, started_at: base.created_at, finished_at: new Date(created + 60_000).toISOString(), outputs: [{ key, width: 64, height: 64 }] });
    return id;
  };
  return { stores, old: await made(3 * DAY), recent: await made(3_600_000) };
}

async function get(url: string, apiKey: string, path: string): Promise<any> {
  const res = await fetch(`${url}${path}`, { headers: { authorization: `Bearer ${apiKey}` } });
  expect(res.status).toBe(200);
  return res.json();
}

async function until(what: string, done: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await done()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gave up waiting: ${what}`);
}

describe('serve with an output retention', () => {
  it('removes the images and frames of a generation once its outputs_expire_at has passed; the view says so as in AWS', async () => {
    const dataDir = join(root, 'kept-1-day');
    const { stores, old, recent } = await folderWithGenerations(dataDir);
    // An upload PUT 6 days ago (its file's time is what the store lists), and one PUT now.
    const oldUpload = uploadKey('local', newId(Date.now() - 6 * DAY));
    const newUpload = uploadKey('local', newId());
    for (const key of [oldUpload, newUpload]) await stores.blobs.put(key, PNG, { contentType: 'image/png' });
    const sixDaysAgo = new Date(Date.now() - 6 * DAY);
    utimesSync(join(dataDir, 'blobs', 'objects', oldUpload), sixDaysAgo, sixDaysAgo);
    const h = await serve(await env(dataDir, { CLIPAG_OUTPUT_RETENTION_DAYS: '1', CLIPAG_UPLOAD_RETENTION_DAYS: '5' }), { recipeOverrides: FAST_RECIPE });
    try {
      expect(h.retentionDays).toEqual({ outputs: 1, uploads: 5 });
      // The first sweep runs at the start: the stored images soon go.
      await until('the expired image removed', async () => (await stores.blobs.list(jobOutputsPrefix('local', old))).items.length === 0);
      // Past its outputs_expire_at the view lists no outputs and no frames (no link is signed).
      const view = await get(h.url, h.apiKey, `/v1/generations/${old}`);
      expect(Date.parse(view.outputs_expire_at)).toBeLessThan(Date.now());
      expect(view).toMatchObject({ status: 'succeeded', deleted_at: null, outputs: [] });
      expect((await get(h.url, h.apiKey, `/v1/generations/${old}/frames`)).data).toEqual([]);

      // The one that ended an hour ago keeps its images until its own outputs_expire_at.
      const kept = await get(h.url, h.apiKey, `/v1/generations/${recent}`);
      expect(Date.parse(kept.outputs_expire_at)).toBeGreaterThan(Date.now());
      expect((await fetch(kept.outputs[0].url)).status).toBe(200);
      expect((await get(h.url, h.apiKey, `/v1/generations/${recent}/frames`)).data).toHaveLength(1);

      // Uploads: the one PUT over CLIPAG_UPLOAD_RETENTION_DAYS ago is gone, the other stays.
      await until('the expired upload removed', async () => (await stores.blobs.head(oldUpload)) === null);
      expect(await stores.blobs.head(newUpload)).not.toBeNull();
    } finally {
      await h.stop();
    }
  }, 120_000);

  it('unset: nothing is removed, and the views promise nothing', async () => {
    const dataDir = join(root, 'kept-for-ever');
    const { stores, old } = await folderWithGenerations(dataDir);
    // A marker each sweep clears (settling an ended job's stored images, all of them named): once the
    // second is gone, the first sweep, and whatever followed it, is over. Dated two minutes back: the
    // sweep leaves an ended job's marker alone for its first minute (a DELETE's may be in flight).
    const marker = async (n: string) => {
      await markPending(stores.blobs, 'outputs', 'local', n);
      const past = new Date(Date.now() - 120_000);
      utimesSync(join(dataDir, 'blobs', 'objects', pendingJobKey('outputs', 'local', n)), past, past);
    };
    await marker(old);
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, sweepEveryMs: 100 });
    try {
      expect(h.retentionDays).toEqual({});
      const gone = async () => (await stores.blobs.list(pendingJobKey('outputs', 'local', old))).items.length === 0;
      await until('the first sweep', gone);
      await marker(old);
      await until('the second sweep', gone);
      const view = await get(h.url, h.apiKey, `/v1/generations/${old}`);
      expect(view.outputs_expire_at).toBeNull();
      expect((await fetch(view.outputs[0].url)).status).toBe(200);
      expect((await get(h.url, h.apiKey, `/v1/generations/${old}/frames`)).data).toHaveLength(1);
    } finally {
      await h.stop();
    }
  }, 120_000);
});
