// clipag remote list against the real API (the app on the local store, reached through RemoteIo.fetch):
// its filters as the API reads them, one page with the next page's command, --all, --json lines, and
// usage errors before any request.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { remote } from '../../cli/remote.ts';
import { UsageError } from '../../cli/common.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const T0 = Date.parse('2026-11-01T00:00:00.000Z');

/** `count` of alice's jobs, job i made i minutes after T0: even ones succeeded, odd failed; labels batch=b{i%2}. */
async function jobs(count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const now = new Date(T0 + i * 60_000);
    const job = newJobRecord({ id: newJobId(now.getTime()), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `prompt ${i}`, model: 'toy', width: 64, height: 64, steps: 10 }), metadata: { batch: `b${i % 2}` } });
    await h.jobs.create({ ...job, status: (i % 2 === 0 ? 'succeeded' : 'failed') as JobRecord['status'] });
    ids.push(job.id);
  }
  return ids;
}

/** Runs `clipag remote list ...` against the app; every request's query is kept. */
async function list(...argv: string[]): Promise<{ code: number; stdout: string[]; stderr: string; queries: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const queries: string[] = [];
  const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => {
    const request = new Request(input, init);
    queries.push(decodeURIComponent(new URL(request.url).search));
    return h.app.request(request);
  }) as typeof fetch;
  const code = await remote(['list', '--url', 'http://127.0.0.1:8787', '--key', h.alice, ...argv], { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: fetchApp, sleep: async () => {} });
  return { code, stdout: out, stderr: err.join('\n'), queries };
}

describe('clipag remote list', () => {
  it('one page, newest first, a line each; the next page is the printed command, which goes on from there', async () => {
    const ids = await jobs(5);
    const first = await list('--limit', '2');
    expect(first.code).toBe(0);
    expect(first.stdout.map((l) => l.split('  ')[0])).toEqual([ids[4], ids[3]]);
    expect(first.stdout[0]).toMatch(new RegExp(`^${ids[4]}  succeeded  2026-11-01T00:04:00.000Z  toy 64x64 10 steps x1  "prompt 4"$`));
    const more = /more: (.*)$/.exec(first.stderr)?.[1];
    expect(more).toContain(`--cursor ${ids[3]}`);
    expect(more).toContain('--key KEY'); // never the key itself
    const args = more!.split(' ').slice(3).map((a) => (a === 'KEY' ? h.alice : a));
    const second = await list(...args.filter((a, i, all) => !(a === '--url' || all[i - 1] === '--url' || a === '--key' || all[i - 1] === '--key')));
    expect(second.stdout.map((l) => l.split('  ')[0])).toEqual([ids[2], ids[1]]);
  });

  it('filters reach the API as its query; --all reads every page; --json prints the API view, a line each', async () => {
    const ids = await jobs(7);
    const got = await list('--status', 'succeeded', '--metadata', 'batch=b0', '--since', '2026-11-01T00:01:00Z', '--all', '--json');
    expect(got.code).toBe(0);
    expect(got.queries).toEqual(['?status=succeeded&metadata[batch]=b0&created_after=2026-11-01T00:01:00Z&limit=100']);
    const shown = got.stdout.map((l) => JSON.parse(l) as { id: string; status: string; metadata: Record<string, string> });
    expect(shown.map((g) => g.id)).toEqual([ids[6], ids[4], ids[2]]);
    expect(shown.every((g) => g.status === 'succeeded' && g.metadata.batch === 'b0')).toBe(true);
    const until = await list('--until', '2026-11-01T00:02:00Z', '--webhook-status', 'failed');
    expect([until.code, until.stdout, until.stderr]).toEqual([0, [], 'clipag remote: no generation matches']);
    // --api-key-id: what one key made (these were made with none recorded, so none matches).
    const keyId = '01jabcdefabcdefabcdefabcde';
    const byKey = await list('--api-key-id', keyId);
    expect([byKey.code, byKey.queries, byKey.stderr]).toEqual([0, [`?api_key_id=${keyId}`], 'clipag remote: no generation matches']);
    // An API from before the filter refuses it as an unknown query parameter: the CLI says so.
    const err: string[] = [];
    const olderApi = (async () =>
      new Response(JSON.stringify({ error: { code: 'validation_error', message: 'unknown query parameter "api_key_id": GET /v1/generations takes limit, cursor, status', param: 'api_key_id', request_id: 'req_1' } }), {
        status: 400,
        headers: { 'content-type': 'application/json' },
      })) as typeof fetch;
    const code = await remote(['list', '--url', 'http://127.0.0.1:8787', '--key', h.alice, '--api-key-id', keyId], { env: {}, out: () => undefined, err: (l) => err.push(l), fetch: olderApi, sleep: async () => {} });
    expect(code).toBe(1);
    expect(err.join('\n')).toMatch(/; this API is from before the api_key_id filter: list without --api-key-id and read each line's api_key_id \(--json\)$/);
  });

  it('--all follows next_cursor to the end, 100 a page', async () => {
    const ids = await jobs(103);
    const got = await list('--all');
    expect(got.stdout.map((l) => l.split('  ')[0])).toEqual([...ids].reverse());
    expect(got.queries).toHaveLength(2);
    expect(got.stderr).toBe('');
  });

  it('a bad flag is a usage error before any request; what the API refuses is exit 1 with its message', async () => {
    for (const [args, message] of [
      [['--status', 'done'], /--status is one of queued, running, succeeded, failed, canceled/],
      [['--webhook-status', 'given_up'], /--webhook-status is one of pending, delivered, failed/],
      [['--metadata', 'batch'], /--metadata takes KEY=VALUE/],
      [['--metadata', 'a b=1'], /--metadata takes KEY=VALUE/],
      [['--since', '2026-12-01'], /--since takes a date and time, such as 2026-12-01T00:00:00Z/],
      // Any other form the API would refuse, in the flag's name (it named created_after, exit 1).
      [['--since', 'yesterday'], /--since must be an RFC 3339 date-time with an upper-case T and Z \(or an offset\), seconds 00 to 59, such as 2026-12-01T00:00:00Z \(got "yesterday"\)/],
      [['--until', '2026-12-01t10:00:00z'], /--until must be an RFC 3339 date-time with an upper-case T and Z/],
      [['--limit', '0'], /--limit is a whole number from 1 to 100/],
      [['--limit', '5', '--all'], /--limit goes without --all/],
      [['--cursor', 'nope'], /--cursor is the cursor an earlier list printed/],
      [['--api-key-id', 'ck_live_abc'], /--api-key-id is an API key's id: the 26 characters between ck_ and the next _/],
      [['extra'], /list takes no argument/],
    ] as const) {
      await expect(list(...args), args.join(' ')).rejects.toThrow(UsageError);
      await expect(list(...args), args.join(' ')).rejects.toThrow(message);
    }
    const refused = await list('--metadata', `batch=${'x'.repeat(2000)}`);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/400 validation_error: /);
  });
});
