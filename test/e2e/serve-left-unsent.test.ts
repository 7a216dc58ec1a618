// `clipag serve` restarted after a kill -9 (a review of resource exhaustion, F5): jobs whose record was
// written but whose message was never sent stayed `queued` for about 5 minutes after the restart, until
// the sweep's rule for a lost message sent them, while replays answered `200 queued`. The start sends
// them now, unless another server on the data folder may be about to send them itself.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serve } from '../../cli/serve.ts';
import { sendJobMessage } from '../../functions/queued-jobs.ts';
import { hostId } from '../../shared/adapters/local/lock.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { newJobId } from '../../shared/ids.ts';
import { pendingJobKey } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { FAST_RECIPE, freePort, tinyModelsDir } from '../helpers/serve.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-serve-unsent-'));
const modelsDir = tinyModelsDir(root);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const env = async (dataDir: string) => ({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(await freePort()), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' });

/**
 * What a server killed mid-burst leaves in `dataDir`, written through the real stores as the API writes
 * them (its markers, then its record), 10 s before now: `unsent`, a job whose message was never sent,
 * and `sent`, one whose message was sent but whose marker was not yet removed.
 */
async function leftByAKilledServer(dataDir: string): Promise<{ unsent: string; sent: string; stores: Awaited<ReturnType<typeof localStores>> }> {
  const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
  const createdAt = new Date(Date.now() - 10_000);
  const ids: string[] = [];
  for (const prompt of ['left unsent', 'sent before the kill']) {
    const id = newJobId(createdAt.getTime());
    await markPending(stores.blobs, 'msg', 'local', id);
    await markPending(stores.blobs, 'active', 'local', id);
    await stores.jobs.create(newJobRecord({ id, owner: 'local', spec: GenerationSpec.parse({ prompt, width: 64, height: 64, seed: 1, model: 'toy' }), now: createdAt }));
    ids.push(id);
  }
  const [unsent, sent] = ids as [string, string];
  await sendJobMessage(stores.queue, { id: sent, owner: 'local' });
  return { unsent, sent, stores };
}

async function waitedFor(url: string, apiKey: string, id: string): Promise<{ status: string }> {
  const res = await fetch(`${url}/v1/generations/${id}`, { headers: { authorization: `Bearer ${apiKey}`, prefer: 'wait=60' } });
  expect(res.status).toBe(200);
  return (await res.json()) as { status: string };
}

/** A process that stands for another server: alive until killed. */
function otherProcess(): ChildProcess {
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
}

/** Writes a server record for `pid` in `dataDir`, as a server with that pid on this host keeps one. */
function serverRecord(dataDir: string, pid: number): string {
  mkdirSync(join(dataDir, 'servers'), { recursive: true });
  const path = join(dataDir, 'servers', `${pid}-0000abcd.json`);
  writeFileSync(path, JSON.stringify({ pid, host: hostId() }));
  return path;
}

describe('serve after a kill -9', () => {
  it('sends the message of a job left unsent at its start, and not that of a job that has one', async () => {
    const dataDir = join(root, 'restarted');
    const { unsent, sent, stores } = await leftByAKilledServer(dataDir);
    // The killed server's record: its pid is gone now.
    const killed = otherProcess();
    await new Promise((r) => killed.once('spawn', r));
    killed.kill('SIGKILL');
    await new Promise((r) => killed.once('exit', r));
    const record = serverRecord(dataDir, killed.pid!);

    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, sweepEveryMs: 3_600_000 });
    try {
      // Sent at the start (the marker goes once its message is sent), not left to the sweep.
      expect((await stores.blobs.list(pendingJobKey('msg', 'local', unsent))).items).toEqual([]);
      expect(existsSync(record)).toBe(false); // a stopped server's record is removed
      expect(await waitedFor(h.url, h.apiKey, unsent)).toMatchObject({ status: 'succeeded' });
      expect(await waitedFor(h.url, h.apiKey, sent)).toMatchObject({ status: 'succeeded' });
      // Its message was found in the queue: it was not sent again (a re-send stamps enqueued_at).
      expect((await stores.jobs.get('local', sent))?.enqueued_at).toBeUndefined();
      expect((await stores.jobs.get('local', unsent))?.enqueued_at).toBeDefined();
    } finally {
      await h.stop();
    }
    expect(readdirSync(join(dataDir, 'servers'))).toEqual([]); // its own record removed at its stop
  }, 120_000);

  it('sends nothing at its start while another server runs on the folder (its job may be between create and send)', async () => {
    const dataDir = join(root, 'shared');
    const { unsent, sent, stores } = await leftByAKilledServer(dataDir);
    const other = otherProcess();
    await new Promise((r) => other.once('spawn', r));
    const record = serverRecord(dataDir, other.pid!);
    try {
      const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, sweepEveryMs: 3_600_000 });
      try {
        expect((await stores.blobs.list(pendingJobKey('msg', 'local', unsent))).items.map((i) => i.key)).toEqual([pendingJobKey('msg', 'local', unsent)]);
        expect((await stores.jobs.get('local', unsent))?.enqueued_at).toBeUndefined();
        expect(existsSync(record)).toBe(true);
        // The job that has its message runs as ever.
        expect(await waitedFor(h.url, h.apiKey, sent)).toMatchObject({ status: 'succeeded' });
        expect(await stores.jobs.get('local', unsent)).toMatchObject({ status: 'queued', attempts: 0 });
      } finally {
        await h.stop();
      }
    } finally {
      other.kill('SIGKILL');
    }
  }, 120_000);
});
