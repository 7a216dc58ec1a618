// clipag remote spend-limit show|set|delete against the real API (the app on the local store, with a
// price, reached through RemoteIo.fetch): what it prints, --json, usage errors; and remote batch stopping
// at the first line refused 402 spend_limit_reached, its lines left for a rerun (ADR 0033).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { remote } from '../../cli/remote.ts';
import { createApp } from '../../functions/app.ts';
import { spendLimitKey } from '../../shared/keys.ts';
import { readSpendLimit } from '../../shared/spend-limits.ts';
import { recordUsage } from '../../shared/usage.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
let app: ReturnType<typeof createApp>;
let work: string;
const seen: string[] = [];
beforeEach(async () => {
  h = await harness();
  app = createApp({ ...h.deps, limits: { ...LIMITS, workerHourlyUsd: 3.6 } });
  work = mkdtempSync(join(tmpdir(), 'clipag-spend-cli-'));
  seen.length = 0;
});
afterEach(async () => {
  rmSync(work, { recursive: true, force: true });
  await h.close();
});

const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => {
  const request = new Request(input, init);
  seen.push(`${request.method} ${new URL(request.url).pathname}`);
  return app.request(request);
}) as typeof fetch;

async function cli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await remote(argv, { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: fetchApp, sleep: async () => {} });
  return { code, stdout: out.join('\n'), stderr: err.join('\n') };
}
const conn = () => ['--url', 'http://127.0.0.1:8787', '--key', h.alice];
const month = () => new Date().toISOString().slice(0, 7);

describe('clipag remote spend-limit', () => {
  it('set stores it and prints the month against it; show says the same; delete removes it', async () => {
    await recordUsage(h.blobs, 'acct_alice', 'j1', new Date(), { images: 1, workerSeconds: 2500, encoderPasses: 1, hourlyUsd: 3.6 }); // $2.50
    const set = await cli(['spend-limit', 'set', '10', ...conn()]);
    expect(set.code, set.stderr).toBe(0);
    const stored = (await readSpendLimit(h.blobs, 'acct_alice'))!;
    expect(stored.monthly_usd).toBe(10);
    expect(set.stdout.split('\n')).toEqual([
      `monthly spend limit: $10 (set ${stored.updated_at})`,
      `spent in ${month()}: $2.5; remaining $7.5`,
      'not reached: new generations are made (ones in flight when it is reached still run)',
    ]);
    expect(seen).toEqual(['PUT /v1/spend-limit']);
    expect((await cli(['spend-limit', 'show', ...conn()])).stdout).toBe(set.stdout);

    await cli(['spend-limit', 'set', '2.50', ...conn()]);
    const reached = await cli(['spend-limit', 'show', ...conn()]);
    expect(reached.stdout).toMatch(/reached: new generations are refused \(402 spend_limit_reached\) until \d{4}-\d{2}-01T00:00:00.000Z/);
    const json = await cli(['spend-limit', 'show', '--json', ...conn()]);
    expect(JSON.parse(json.stdout)).toMatchObject({ object: 'spend_limit', monthly_usd: 2.5, spent_usd: 2.5, remaining_usd: 0, reached: true, hourly_usd: 3.6 });

    const del = await cli(['spend-limit', 'delete', ...conn()]);
    expect([del.code, del.stdout]).toEqual([0, "removed the account's monthly spend limit: new generations are no longer refused for cost"]);
    expect(await h.blobs.head(spendLimitKey('acct_alice'))).toBeNull();
    expect((await cli(['spend-limit', 'delete', ...conn()])).stdout).toBe('there was no spend limit: nothing removed');
    expect((await cli(['spend-limit', 'show', ...conn()])).stdout).toBe(`no spend limit; spent in ${month()}: $2.5`);
  });

  it('refuses an amount that is not dollars, or a missing one, as a usage error before any request', async () => {
    for (const [argv, message] of [
      [['set'], /takes the monthly limit in USD/],
      [['set', '$25'], /must be an amount of USD such as 25 or 12.50/],
      [['set', '-1'], /./],
      [['set', '1e3'], /must be an amount of USD/],
      [['set', '5', '6'], /takes one amount/],
      [['show', 'now'], /takes no other argument/],
      [['raise'], /unknown spend-limit action "raise"/],
    ] as const) {
      // A usage error is thrown to main, which prints it with the synopsis and exits 2.
      await expect(cli(['spend-limit', ...argv, ...conn()]), argv.join(' ')).rejects.toThrow(message);
    }
    expect(seen).toEqual([]);
  });

  it("the API's refusal (a deployment without a price) is exit 1 with its code and param", async () => {
    app = createApp(h.deps); // no price
    const res = await cli(['spend-limit', 'set', '10', ...conn()]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/400 validation_error.*sets no price/);
  });
});

describe('against an API from before operator limits (no operator_monthly_usd in its answer)', () => {
  it('show and set still read the answer', async () => {
    const older = (async (input: string | URL | Request, init?: RequestInit) => {
      const res = await app.request(new Request(input, init));
      const body = (await res.json()) as Record<string, unknown>;
      delete body.operator_monthly_usd;
      return new Response(JSON.stringify(body), { status: res.status, headers: res.headers });
    }) as typeof fetch;
    const run = async (argv: string[]) => {
      const out: string[] = [];
      const err: string[] = [];
      const code = await remote(argv, { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: older, sleep: async () => {} });
      return { code, stdout: out.join('\n'), stderr: err.join('\n') };
    };
    const set = await run(['spend-limit', 'set', '10', ...conn()]);
    expect(set.code, set.stderr).toBe(0);
    expect(set.stdout).toMatch(/^monthly spend limit: \$10 /);
    expect(set.stdout).not.toContain('operator');
    expect((await run(['spend-limit', 'show', ...conn()])).code).toBe(0);
  });
});

describe('clipag remote batch at a reached limit', () => {
  it('stops at the first 402, says why and how to go on; the rerun after a raise makes the lines', async () => {
    await cli(['spend-limit', 'set', '0', ...conn()]);
    const file = join(work, 'lines.jsonl');
    writeFileSync(file, ['a', 'b', 'c'].map((id) => JSON.stringify({ id, prompt: 'a red circle', steps: 1 })).join('\n') + '\n');
    const dir = join(work, 'out');
    seen.length = 0;
    const res = await cli(['batch', file, '-d', dir, '--parallel', '1', '--timeout', '5', ...conn()]);
    expect(res.code, res.stderr).toBe(1);
    expect(res.stderr).toContain("stopped: the account's monthly spend limit is reached (402 spend_limit_reached");
    expect(seen.filter((s) => s === 'POST /v1/generations')).toHaveLength(1);
    const statuses = readFileSync(join(dir, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).status);
    expect(statuses).toEqual(['not_started', 'not_started', 'not_started']);
    // Raised: the same command makes them (no worker here, so they stay queued: --timeout 0 reads them once).
    await cli(['spend-limit', 'set', '100', ...conn()]);
    const again = await cli(['batch', file, '-d', dir, '--parallel', '3', '--timeout', '0', ...conn()]);
    expect(again.stderr).not.toContain('spend limit');
    expect(readFileSync(join(dir, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).generation_id)).toEqual([expect.any(String), expect.any(String), expect.any(String)]);
  });
});
