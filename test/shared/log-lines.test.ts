// The API process's JSON lines (functions/log.ts, jsonLineLog: the API handler, the queued-job sweep,
// `clipag serve`) and the webhook delivery's: info lines are written, to stdout, and a field cannot
// replace a line's time; the local sweep's summary reaches the log; a delivered webhook says so, without
// its URL or secret. The real local stores in a temp folder; the webhook sender is the port's stand-in
// (a receiver that answers a status), as delivering to a real host is not the subject here.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { jsonLineLog } from '../../functions/log.ts';
import { startQueuedJobSweeps } from '../../functions/queued-jobs.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { newJobId } from '../../shared/ids.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { PENDING_JOBS_PREFIX } from '../../shared/keys.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { newWebhookSecret } from '../../shared/webhook-secrets.ts';
import { deliverWebhook, type WebhookSender } from '../../shared/webhooks.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function stores() {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-log-lines-'));
  dirs.push(dir);
  const blobs = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
  return { blobs, jobs: new BlobJobStore(blobs), queue: new LocalJobQueue({ dir: join(dir, 'queue'), visibilitySec: 30 }) };
}

/** What `run` writes to stdout and stderr, one parsed JSON object per line. */
async function captured(run: () => unknown): Promise<{ stdout: Array<Record<string, unknown>>; stderr: Array<Record<string, unknown>> }> {
  const out: string[] = [];
  const err: string[] = [];
  const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
  const stderr = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (err.push(String(chunk)), true));
  try {
    await run();
  } finally {
    stdout.mockRestore();
    stderr.mockRestore();
  }
  const parse = (chunks: string[]) => chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { stdout: parse(out), stderr: parse(err) };
}

describe('jsonLineLog', () => {
  it('writes an info line, to stdout; warnings and errors to stderr', async () => {
    const { stdout, stderr } = await captured(() => {
      jsonLineLog({ level: 'info', msg: 'queued-job sweep', resent: 1 });
      jsonLineLog({ level: 'warn', msg: 'careful' });
      jsonLineLog({ level: 'error', msg: 'broken' });
    });
    expect(stdout).toEqual([{ time: expect.any(String), level: 'info', msg: 'queued-job sweep', resent: 1 }]);
    expect(stderr.map((l) => [l.level, l.msg])).toEqual([['warn', 'careful'], ['error', 'broken']]);
  });

  it("never lets an entry's field replace the line's time", async () => {
    const { stderr } = await captured(() => jsonLineLog({ level: 'error', msg: 'broken', time: 'long ago' }));
    expect(stderr).toHaveLength(1);
    expect(stderr[0]!.time).not.toBe('long ago');
    expect(Date.parse(stderr[0]!.time as string)).not.toBeNaN();
    expect(Object.keys(stderr[0]!).slice(0, 3)).toEqual(['time', 'level', 'msg']);
  });

  it("carries the local sweep's summary (`clipag serve`) to stdout", async () => {
    const s = stores();
    // A key under pending/ that no code writes: the sweep reports it (foreign), and so logs its summary.
    await s.blobs.put(`${PENDING_JOBS_PREFIX}stray/extra/parts`, new Uint8Array(0));
    const { stdout } = await captured(async () => {
      const sweeps = startQueuedJobSweeps({ ...s, webhooks: { send: async () => 204, signedUrlTtlSec: 600 }, clock: () => new Date(), log: jsonLineLog }, 60_000);
      await sweeps.stop(); // waits for the sweep it started at once
    });
    expect(stdout.filter((l) => l.msg === 'queued-job sweep')).toEqual([expect.objectContaining({ level: 'info', foreign: 1, scanned: 1 })]);
  });
});

describe('LOG_LEVEL', () => {
  it('quiets the API as it quiets the worker: at error, a /v1 request writes no line; at info, one', async () => {
    const { parseConfig } = await import('../../shared/config.ts');
    const { localDeps } = await import('../../functions/deps/local.ts');
    const { createApp } = await import('../../functions/app.ts');
    for (const [level, lines] of [['error', 0], ['info', 1]] as const) {
      const dataDir = mkdtempSync(join(tmpdir(), 'clipag-log-level-'));
      dirs.push(dataDir);
      const config = { ...(parseConfig({ CLIPAG_DATA_DIR: dataDir, LOG_LEVEL: level }) as import('../../shared/config.ts').LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' };
      const app = createApp(await localDeps(config));
      const { stdout } = await captured(() => app.request('/v1/models'));
      expect(stdout.filter((l) => l.msg === 'request'), level).toHaveLength(lines); // a 401: no key sent
    }
  });
});

describe('a webhook delivery', () => {
  async function endedJobWithWebhook(s: ReturnType<typeof stores>, url: string, secret: string) {
    const spec = GenerationSpec.parse({ prompt: 'a red circle', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny' });
    const job = await s.jobs.create(newJobRecord({ id: newJobId(), owner: 'acct_hook', spec, webhook: { url, secret } }));
    return s.jobs.update(job.owner, job.id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString() }));
  }

  it('that a receiver accepts logs one `webhook delivered` info line: job, owner, event id, attempts, HTTP status, time; never the URL or a secret', async () => {
    const s = stores();
    const url = 'https://hooks.example.com/clipag?token=CALLER-TOKEN-123';
    const secret = newWebhookSecret();
    const job = await endedJobWithWebhook(s, url, secret);
    const logs: Array<Record<string, unknown>> = [];
    const accepting: WebhookSender = async () => 204;
    const result = await deliverWebhook({ jobs: s.jobs, blobs: s.blobs, send: accepting, signedUrlTtlSec: 600, clock: () => new Date(), log: (e) => logs.push(e) }, job.owner, job.id);
    expect(result).toBe('delivered');
    const delivered = logs.filter((l) => l.msg === 'webhook delivered');
    expect(delivered).toEqual([{ level: 'info', msg: 'webhook delivered', job_id: job.id, owner: 'acct_hook', event_id: `evt_${job.id}_succeeded`, attempts: 1, http_status: 204, ms: expect.any(Number) }]);
    expect(delivered[0]!.ms).toBeGreaterThanOrEqual(0);
    const text = JSON.stringify(logs);
    for (const secretPart of ['hooks.example.com', 'CALLER-TOKEN-123', secret]) expect(text).not.toContain(secretPart);
  });

  it('that a receiver refuses logs no `webhook delivered` line', async () => {
    const s = stores();
    const job = await endedJobWithWebhook(s, 'https://hooks.example.com/clipag', newWebhookSecret());
    const logs: Array<Record<string, unknown>> = [];
    const result = await deliverWebhook({ jobs: s.jobs, blobs: s.blobs, send: async () => 500, signedUrlTtlSec: 600, clock: () => new Date(), log: (e) => logs.push(e) }, job.owner, job.id);
    expect(result).toBe('failed');
    expect(logs.map((l) => l.msg)).toEqual(['webhook: attempt failed; will retry']);
  });
});
