// clipag remote webhook-secret create|show|delete against the real API (the app on the local store,
// reached through RemoteIo.fetch): what it prints, --json, exit statuses, and create's Idempotency-Key:
// a retry after a lost answer, by the client or by the printed command, gets the secret the first try
// made, never a second rotation. Only the loss of an answer is simulated (a fetch that forwards the
// request to the app and then throws, as a reset connection does).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { main } from '../../cli/main.ts';
import { remote, type RemoteIo } from '../../cli/remote.ts';
import { webhookSecretKey } from '../../shared/keys.ts';
import { accountSigningSecrets, readAccountWebhookSecret, WEBHOOK_SECRET_PATTERN } from '../../shared/webhook-secrets.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const URL_ARG = 'http://127.0.0.1:8787';

interface Seen {
  method: string;
  path: string;
  idempotencyKey: string | null;
}

/** The app as fetch; `lose(req, nth)` says which requests' answers are lost after the app has handled them. */
function viaApp(lose: (seen: Seen, nth: number) => 'answer' | 'lose' | 'hang' = () => 'answer'): { fetch: typeof fetch; seen: Seen[] } {
  const seen: Seen[] = [];
  const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => {
    const request = new Request(input, init);
    const s = { method: request.method, path: new URL(request.url).pathname, idempotencyKey: request.headers.get('Idempotency-Key') };
    seen.push(s);
    const res = await h.app.request(request);
    const fate = lose(s, seen.filter((o) => o.method === s.method).length);
    if (fate === 'lose') throw new TypeError('fetch failed', { cause: Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }) });
    if (fate === 'hang') {
      // Handled, and its answer never comes: until the attempt's own bound aborts it.
      return new Promise<Response>((_, reject) => init?.signal?.addEventListener('abort', () => reject(init.signal!.reason), { once: true }));
    }
    return res;
  }) as typeof fetch;
  return { fetch: fetchApp, seen };
}

async function cli(argv: string[], io: Partial<Pick<RemoteIo, 'fetch' | 'sleep'>> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await remote(['webhook-secret', ...argv], { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: viaApp().fetch, sleep: async () => {}, ...io });
  return { code, stdout: out.join('\n'), stderr: err.join('\n') };
}

const conn = () => ['--url', URL_ARG, '--key', h.alice];

describe('clipag remote webhook-secret', () => {
  it('create prints the secret once with a warning to store it; show says since when and the replaced ones; delete confirms', async () => {
    const api = viaApp();
    const created = await cli(['create', ...conn()], { fetch: api.fetch });
    expect(created.code, created.stderr).toBe(0);
    const stored = await readAccountWebhookSecret(h.blobs, 'acct_alice');
    expect(created.stdout).toBe(stored!.secret);
    expect(created.stdout).toMatch(WEBHOOK_SECRET_PATTERN);
    expect(created.stderr).toContain(`created the account's webhook secret (${stored!.created_at})`);
    expect(created.stderr).toContain('store it now where your receiver reads it: the API never shows it again');
    expect(api.seen).toEqual([{ method: 'POST', path: '/v1/webhook-secret', idempotencyKey: expect.stringMatching(/^clipag-remote-[0-9a-f-]{36}$/) }]);

    const shown = await cli(['show', ...conn()]);
    expect([shown.code, shown.stdout]).toEqual([0, `webhook secret since ${stored!.created_at}`]);
    expect(shown.stdout + shown.stderr).not.toMatch(/whsec_/);

    const rotated = await cli(['create', ...conn()]);
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).not.toBe(created.stdout);
    const now = (await readAccountWebhookSecret(h.blobs, 'acct_alice'))!;
    expect(rotated.stderr).toContain(`rotated the account's webhook secret (${now.created_at})`);
    expect(rotated.stderr).toContain(`the replaced secret made ${stored!.created_at} still signs until ${now.previous[0]!.expires_at}`);
    const both = await cli(['show', ...conn()]);
    expect(both.stdout.split('\n')).toEqual([`webhook secret since ${now.created_at}`, `  replaced secret made ${stored!.created_at}: still signs until ${now.previous[0]!.expires_at}`]);

    const deleted = await cli(['delete', ...conn()]);
    expect([deleted.code, deleted.stdout]).toEqual([0, expect.stringMatching(/^deleted the account's webhook secret and the replaced ones/)]);
    expect(await h.blobs.get(webhookSecretKey('acct_alice'))).toBeNull();
    const none = await cli(['delete', ...conn()]);
    expect([none.code, none.stdout]).toEqual([0, 'there was no webhook secret: nothing deleted']);
    const empty = await cli(['show', ...conn()]);
    expect([empty.code, empty.stdout]).toEqual([0, "no webhook secret: events are signed with each generation's own secret alone"]);
  });

  it('--json prints the API\'s answer, and nothing else on stdout', async () => {
    const created = await cli(['create', '--json', ...conn()]);
    const stored = (await readAccountWebhookSecret(h.blobs, 'acct_alice'))!;
    expect([created.code, JSON.parse(created.stdout)]).toEqual([0, { object: 'webhook_secret', secret: stored.secret, created_at: stored.created_at, previous: [] }]);
    const shown = await cli(['show', '--json', ...conn()]);
    expect(JSON.parse(shown.stdout)).toEqual({ object: 'webhook_secret', exists: true, created_at: stored.created_at, previous: [] });
    const deleted = await cli(['delete', '--json', ...conn()]);
    expect(JSON.parse(deleted.stdout)).toEqual({ object: 'webhook_secret', deleted: true });
  });

  it("a create whose answer is lost is retried with the same key and gets the secret the first try made: one secret, not two", async () => {
    const api = viaApp((s, nth) => (s.method === 'POST' && nth === 1 ? 'lose' : 'answer'));
    const res = await cli(['create', ...conn()], { fetch: api.fetch });
    expect(res.code, res.stderr).toBe(0);
    expect(api.seen).toHaveLength(2);
    expect(api.seen[1]!.idempotencyKey).toBe(api.seen[0]!.idempotencyKey);
    expect(await accountSigningSecrets(h.blobs, 'acct_alice', new Date())).toEqual([res.stdout]);
    expect(res.stderr).toContain('the API answered again the secret an earlier request with this Idempotency-Key created');
    expect(res.stderr).toContain('nothing was rotated');
  });

  it('a create whose every answer is lost: exit 1 with the command (its key) that gets the secret; run, it gets that one and rotates nothing', async () => {
    // A secret before: the lost POST rotates it, and the printed command must not rotate again.
    const before = await cli(['create', ...conn()]);
    const api = viaApp((s) => (s.method === 'POST' ? 'lose' : 'answer'));
    const res = await cli(['create', ...conn()], { fetch: api.fetch });
    expect(res.code).toBe(1);
    const key = api.seen[0]!.idempotencyKey!;
    expect(new Set(api.seen.map((s) => s.idempotencyKey))).toEqual(new Set([key]));
    const m = /so it may have made a secret; (clipag remote webhook-secret create .*) gets it, not a second rotation/.exec(res.stderr);
    expect(m, res.stderr).not.toBeNull();
    const printed = m![1]!.split(' ');
    expect(printed).toEqual(['clipag', 'remote', 'webhook-secret', 'create', '--url', URL_ARG, '--key', 'KEY', '--idempotency-key', key]);
    expect(res.stderr).not.toContain(h.alice);
    const made = (await readAccountWebhookSecret(h.blobs, 'acct_alice'))!;
    expect(made.secret).not.toBe(before.stdout);

    const again = await cli([...printed.slice(3).map((w) => (w === 'KEY' ? h.alice : w))]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe(made.secret);
    expect(again.stderr).toContain('the API answered again the secret an earlier request with this Idempotency-Key rotated in');
    expect(await accountSigningSecrets(h.blobs, 'acct_alice', new Date())).toEqual([made.secret, before.stdout]);
  });

  it('--timeout passing while a create\'s answer never comes: exit 124 and the command that gets it', async () => {
    const api = viaApp((s) => (s.method === 'POST' ? 'hang' : 'answer'));
    const res = await cli(['create', '--timeout', '1', ...conn()], { fetch: api.fetch });
    expect(res.code, res.stderr).toBe(124);
    expect(res.stderr).toMatch(/timed out \(--timeout 1 s\).*it may have made a secret; clipag remote webhook-secret create --timeout 1 --url \S+ --key KEY --idempotency-key clipag-remote-/);
  });

  it('refusals: a bad key is exit 1 saying so (no secret made); a stored secret that does not read is exit 1 saying how to mend it', async () => {
    const refused = await cli(['create', '--url', URL_ARG, '--key', 'ck_nope_nope']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/the API refused the key from --key \(401 unauthorized: .*\); check the key.*; no secret was made$/);
    expect(await readAccountWebhookSecret(h.blobs, 'acct_alice')).toBeNull();
    await h.blobs.put(webhookSecretKey('acct_alice'), new TextEncoder().encode('not json'));
    const corrupt = await cli(['show', ...conn()]);
    expect(corrupt.code).toBe(1);
    expect(corrupt.stderr).toMatch(/409 corrupt_record: .*; it signs nothing: webhook-secret create replaces it, delete removes it$/);
  });

  it('--idempotency-key K: the same K twice gets one secret (the second answered again)', async () => {
    const first = await cli(['create', '--idempotency-key', 'rotate-2026-01', ...conn()]);
    const second = await cli(['create', '--idempotency-key', 'rotate-2026-01', ...conn()]);
    expect([first.code, second.code]).toEqual([0, 0]);
    expect(second.stdout).toBe(first.stdout);
    expect(await accountSigningSecrets(h.blobs, 'acct_alice', new Date())).toEqual([first.stdout]);
  });
});

describe('clipag remote webhook-secret: argument errors exit 2 before any request', () => {
  async function viaMain(argv: string[]): Promise<{ code: number; stderr: string }> {
    const err: string[] = [];
    vi.stubEnv('CLIPAG_API_URL', 'http://127.0.0.1:9');
    vi.stubEnv('CLIPAG_API_KEY', 'ck_testkey_secretsecretsecretsecret');
    const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
    try {
      return { code: await main(['remote', 'webhook-secret', ...argv]), stderr: err.join('\n') };
    } finally {
      error.mockRestore();
      vi.unstubAllEnvs();
    }
  }
  const cases: Array<[string[], RegExp]> = [
    [[], /give what to do: create, show or delete/],
    [['rotate'], /unknown webhook-secret action "rotate" \(known: create, show, delete\)/],
    [['show', 'now'], /webhook-secret show takes no other argument \(got "now"\)/],
    [['delete', '--idempotency-key', 'k'], /--idempotency-key goes with create/],
    [['create', '--idempotency-key', 'has space'], /--idempotency-key must be 1-255 visible ASCII characters, no spaces/],
    [['create', '--force'], /unknown option --force/],
  ];
  for (const [argv, message] of cases) {
    it(argv.join(' ') || '(nothing)', async () => {
      const res = await viaMain(argv);
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr).toMatch(message);
      expect(res.stderr).toContain('usage: clipag remote webhook-secret create|show|delete');
    });
  }
});

describe('the help and the README say it', () => {
  it('the usage has the action; the README names the commands in the account webhook secret section', async () => {
    const { usage } = await import('../../cli/remote.ts');
    expect(usage).toContain('clipag remote webhook-secret create|show|delete');
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8').replace(/\s+/g, ' ');
    const section = readme.slice(readme.indexOf('**An account webhook secret**'), readme.indexOf('Every 4xx/5xx has one body shape'));
    expect(section).toContain('`clipag remote webhook-secret create`');
    expect(section).toContain('`Idempotency-Key`');
  });
});
