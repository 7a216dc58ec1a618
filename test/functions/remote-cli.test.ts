// `clipag remote`'s retry rules and its command line, against a small stand-in HTTP server. A stand-in
// here, not the real API: the real server's Retry-After values run up to minutes (a rate limit's
// window, 30 s for too_many_active_jobs), and the AWS gateway's own answers (a 429 without the
// envelope) do not exist in local mode at all. The real server is in test/e2e/remote.test.ts. Every
// answer the stand-in gives is a GenerationView the API's own schema accepts.
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Generation } from '../../cli/api-client.ts';
import { retryAfterMs } from '../../cli/api-client.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { main } from '../../cli/main.ts';
import { outputPath, remote } from '../../cli/remote.ts';
import { encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationView } from '../../shared/schemas/view.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-remote-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const KEY = 'ck_testkey_secretsecretsecretsecret';
const PNG = encodePng(solidImage(64, 64, [0.2, 0.4, 0.6]));

interface Seen {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  at: number;
}
type Answer = { status: number; json?: unknown; body?: string | Uint8Array; headers?: Record<string, string> } | 'hang' | 'drop';
type Handler = (req: Seen, nth: number) => Answer;

/**
 * One stand-in server for the file; each test has its own path prefix (`/t/<name>`, given as --url),
 * so tests run concurrently, each with its own handler and its own record of requests.
 */
const routes = new Map<string, { handler: Handler; seen: Seen[] }>();
let base: string;
const server = createServer((req: IncomingMessage, res: ServerResponse) => {
  const m = /^\/t\/([^/]+)(\/.*)$/.exec(req.url ?? '');
  const route = m ? routes.get(m[1]!) : undefined;
  if (!m || !route) return void res.writeHead(500).end('no route');
  req.resume();
  req.on('end', () => {
    const seen: Seen = { method: req.method!, path: m[2]!.split('?')[0]!, headers: req.headers, at: Date.now() };
    route.seen.push(seen);
    const answer = route.handler(seen, route.seen.filter((s) => s.method === seen.method && s.path === seen.path).length);
    if (answer === 'drop') return void req.socket.destroy();
    if (answer === 'hang') return; // until the client goes away
    const body = answer.json !== undefined ? JSON.stringify(answer.json) : (answer.body ?? '');
    res.writeHead(answer.status, { ...(answer.json !== undefined ? { 'content-type': 'application/json' } : {}), ...answer.headers }).end(body);
  });
});
beforeAll(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function route(name: string, handler: Handler): { url: string; seen: Seen[] } {
  const seen: Seen[] = [];
  routes.set(name, { handler, seen });
  return { url: `${base}/t/${name}`, seen };
}

/** A generation as the API shows it, checked against the API's own schema. */
function view(id: string, status: Generation['status'], extra: Partial<Generation> = {}): Generation {
  const now = new Date().toISOString();
  return GenerationView.parse({
    id,
    object: 'generation',
    status,
    created_at: now,
    started_at: status === 'queued' ? null : now,
    finished_at: ['queued', 'running'].includes(status) ? null : now,
    progress: { step: status === 'succeeded' ? 100 : 0, total: 100, attempt: status === 'queued' ? 0 : 1 },
    cancel_requested: false,
    outputs: [],
    outputs_expire_at: null,
    withheld_outputs: [],
    error: null,
    usage: { encoder_passes: 0, worker_seconds: 0, cost_usd: null, hourly_usd: null },
    warnings: [],
    request: { prompt: 'a red circle', width: 64, height: 64, steps: 100, n: 1, init: 'gmm', model: 'toy', seed: 7 },
    content_flags: [],
    webhook: null,
    metadata: {},
    api_key_id: 'testkey',
    deleted_at: null,
    ...extra,
  });
}

/** A succeeded generation whose one image the stand-in serves at <url>/img/0.png. */
function succeeded(url: string, id: string): Generation {
  return view(id, 'succeeded', {
    outputs: [{ index: 0, seed: 7, url: `${url}/img/0.png?sig=abc`, expires_at: new Date(Date.now() + 3_600_000).toISOString(), width: 64, height: 64, clip_score: 0.25 }],
  });
}

const envelope = (status: number, code: string, message: string, param: string | null = null, headers: Record<string, string> = {}): Answer => ({
  status,
  json: { error: { code, message, param, request_id: `req_${code}` } },
  headers,
});
const png = (): Answer => ({ status: 200, body: PNG, headers: { 'content-type': 'image/png' } });

/** `clipag remote` as its run() wires it, minus the process: this environment, output caught. */
async function cli(argv: string[], env: Record<string, string> = {}, signal?: AbortSignal): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const out: string[] = [];
  const err: string[] = [];
  const t0 = Date.now();
  const code = await remote(argv, { env, out: (l) => out.push(l), err: (l) => err.push(l), ...(signal ? { signal } : {}) });
  return { code, stdout: out.join('\n'), stderr: err.join('\n'), ms: Date.now() - t0 };
}

describe.concurrent('clipag remote: retries', () => {
  it('a 429 rate_limited with Retry-After: 1, then the job: one retry after ≥ 1 s, with the same Idempotency-Key, and the image downloaded without the key', async () => {
    const id = newJobId();
    const r = route('rate-limited', (req, nth) => {
      if (req.path === '/v1/generations') return nth === 1 ? envelope(429, 'rate_limited', 'over 600 requests a minute', null, { 'retry-after': '1' }) : { status: 202, json: succeeded(`${base}/t/rate-limited`, id) };
      if (req.path === '/img/0.png') return png();
      return { status: 404, body: '' };
    });
    const out = join(dir, 'rate-limited.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out]);
    expect(res.code, res.stderr).toBe(0);
    const posts = r.seen.filter((s) => s.path === '/v1/generations');
    expect(posts).toHaveLength(2);
    expect(posts[1]!.at - posts[0]!.at).toBeGreaterThanOrEqual(1000);
    expect(posts[0]!.headers['idempotency-key']).toMatch(/^clipag-remote-[0-9a-f-]{36}$/);
    expect(posts[1]!.headers['idempotency-key']).toBe(posts[0]!.headers['idempotency-key']);
    expect(posts[0]!.headers.prefer).toMatch(/^wait=\d+$/);
    expect(posts[0]!.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(res.stderr).toMatch(/POST \/t\/rate-limited\/v1\/generations: 429 rate_limited; waiting 1 s \(Retry-After\), then sending it again with the same Idempotency-Key/);
    // The signed URL gets no key; the image is written.
    const image = r.seen.find((s) => s.path === '/img/0.png')!;
    expect(image.headers.authorization).toBeUndefined();
    expect(readFileSync(out).equals(PNG)).toBe(true);
    expect(res.stdout).toContain(`${id} succeeded`);
    expect(res.stdout).toMatch(/image 0: seed 7, clip score 0\.250, wrote .*rate-limited\.png/);
    expect(`${res.stdout}\n${res.stderr}`).not.toContain('secretsecret'); // never the key, nor the signature
    expect(`${res.stdout}\n${res.stderr}`).not.toContain('sig=abc');
  });

  it("the gateway's own 429 (no envelope, no Retry-After): backs off with jitter, then succeeds", async () => {
    const id = newJobId();
    const r = route('gateway', (req, nth) => {
      if (req.path === '/v1/generations') return nth === 1 ? { status: 429, json: { message: 'Too Many Requests' } } : { status: 202, json: succeeded(`${base}/t/gateway`, id) };
      return png();
    });
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'gateway.png'), '--json']);
    expect(res.code, res.stderr).toBe(0);
    const posts = r.seen.filter((s) => s.path === '/v1/generations');
    expect(posts).toHaveLength(2);
    expect(posts[1]!.at - posts[0]!.at).toBeGreaterThanOrEqual(450); // 1 s × a factor in [0.5, 1.5)
    expect(posts[1]!.headers['idempotency-key']).toBe(posts[0]!.headers['idempotency-key']);
    expect(res.stderr).toMatch(/429 "Too Many Requests" \(from the gateway, not the API\); backing off \d\.\d s \(try 2 of 6\)/);
    expect(JSON.parse(res.stdout)).toMatchObject({ id, status: 'succeeded' });
  });

  it('a dropped connection and a 409 idempotency_in_progress are retried; an image download that fails once is retried too', async () => {
    const id = newJobId();
    const r = route('dropped', (req, nth) => {
      if (req.path === '/v1/generations') return nth === 1 ? 'drop' : nth === 2 ? envelope(409, 'idempotency_in_progress', 'the first request with this key is still being made', null, { 'retry-after': '1' }) : { status: 200, json: succeeded(`${base}/t/dropped`, id), headers: { 'idempotent-replayed': 'true' } };
      return nth === 1 ? { status: 503, body: 'Slow Down' } : png();
    });
    const out = join(dir, 'dropped.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out]);
    expect(res.code, res.stderr).toBe(0);
    const keys = r.seen.filter((s) => s.path === '/v1/generations').map((s) => s.headers['idempotency-key']);
    expect(keys).toHaveLength(3);
    expect(new Set(keys).size).toBe(1);
    expect(res.stderr).toMatch(/network error \(.+\); backing off/);
    expect(res.stderr).toMatch(/409 idempotency_in_progress \(its first try is still being made\); waiting 1 s \(Retry-After\)/);
    expect(res.stderr).toContain(`the API replayed generation ${id}`);
    expect(res.stderr).toMatch(/GET .*\/img\/0\.png: 503 "Slow Down" \(from the store\); backing off/);
    expect(r.seen.filter((s) => s.path === '/img/0.png')).toHaveLength(2);
    expect(readFileSync(out).equals(PNG)).toBe(true);
  });

  it('a 400 validation_error fails at once: exit 1, its code, message, param and request_id, one request', async () => {
    const r = route('invalid', () => envelope(400, 'validation_error', 'must be a multiple of 32', 'width'));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'invalid.png')]);
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(1);
    expect(res.stderr).toMatch(/^clipag remote: POST \/t\/invalid\/v1\/generations: 400 validation_error: must be a multiple of 32 \(param width\) \[request_id req_validation_error\]$/);
  });

  it('a 401: exit 1, saying to check the key and where it came from, never the key', async () => {
    const r = route('unauthorized', () => envelope(401, 'unauthorized', 'invalid or revoked API key', null, { 'www-authenticate': 'Bearer realm="clipag"' }));
    const res = await cli(['get', newJobId(), '--url', r.url], { CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(1);
    expect(res.stderr).toMatch(/the API refused the key from CLIPAG_API_KEY \(401 unauthorized: invalid or revoked API key \[request_id req_unauthorized\]\); check the key/);
    expect(res.stderr).not.toContain('secretsecret');
  });

  it('a Retry-After past --timeout: exit 124 at once, saying it timed out and naming the generation that goes on', async () => {
    const id = newJobId();
    const r = route('timeout', (req) =>
      req.method === 'POST' ? { status: 202, json: view(id, 'running'), headers: { 'preference-applied': 'wait=1' } } : envelope(429, 'rate_limited', 'over 600 requests a minute', null, { 'retry-after': '30' }),
    );
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'timeout.png'), '--timeout', '3', '--json']);
    expect(res.code).toBe(124);
    expect(res.ms).toBeLessThan(3000); // no use waiting out the rest of --timeout: the retry could not come before it
    expect(res.stderr).toMatch(new RegExp(`timed out \\(--timeout 3 s\\): GET \\S+/v1/generations/${id}: 429 rate_limited and asks to wait 30 s \\(Retry-After\\), past --timeout`));
    expect(res.stderr).toContain(`generation ${id} goes on: clipag remote get ${id} -o ${join(dir, 'timeout.png')} waits for it again`);
    expect(JSON.parse(res.stdout)).toMatchObject({ id, status: 'running' }); // the last view, for a script's sake
  });

  it('a Retry-After past --timeout before any generation exists: exit 124, with the Idempotency-Key that gets the job if one was made', async () => {
    const r = route('timeout-post', () => envelope(429, 'too_many_active_jobs', '100 generations are queued or running', null, { 'retry-after': '30' }));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'never.png'), '--timeout', '2', '--idempotency-key', 'order-1042']);
    expect(res.code).toBe(124);
    expect(r.seen).toHaveLength(1);
    expect(res.stderr).toMatch(/timed out .*429 too_many_active_jobs and asks to wait 30 s .*no generation id came back; .*--idempotency-key order-1042 gets it/);
  });

  it('a 500 internal_error is tried 3 times, then exit 1 with its request_id', async () => {
    const r = route('internal', () => envelope(500, 'internal_error', 'internal error'));
    const res = await cli(['cancel', newJobId(), '--url', r.url, '--key', KEY]);
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(3);
    expect(res.stderr).toMatch(/500 internal_error \[request_id req_internal_error\]; gave up after 3 tries/);
  });

  it('the generation is polled while the API does not hold the request; a failure exits 1 with its code', async () => {
    const id = newJobId();
    const r = route('poll', (req, nth) =>
      req.method === 'POST' ? { status: 202, json: view(id, 'queued') } : { status: 200, json: nth < 2 ? view(id, 'running') : view(id, 'failed', { error: { code: 'numerical_error', message: 'the loss became non-finite' } }) },
    );
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'poll.png')]);
    expect(res.code).toBe(1);
    const gets = r.seen.filter((s) => s.method === 'GET');
    expect(gets).toHaveLength(2);
    expect(gets[1]!.at - gets[0]!.at).toBeGreaterThanOrEqual(2500); // a poll interval that grows: 2 s, then 3 s
    expect(res.stderr).toContain('the API answered at once (no Preference-Applied');
    expect(res.stderr).toContain(`clipag remote: generation ${id} failed: the loss became non-finite [numerical_error]`);
  });

  it('cancel: the generation after the cancel; job_terminal is exit 1, "nothing to cancel"', async () => {
    const id = newJobId();
    const r = route('cancel', (req, nth) => (nth === 1 ? { status: 200, json: view(id, 'canceled') } : envelope(409, 'job_terminal', `generation ${id} already succeeded`)));
    const done = await cli(['cancel', id, '--url', r.url, '--key', KEY]);
    expect([done.code, done.stdout]).toEqual([0, `${id} canceled`]);
    expect(r.seen[0]).toMatchObject({ method: 'POST', path: `/v1/generations/${id}/cancel` });
    const terminal = await cli(['cancel', id, '--url', r.url, '--key', KEY]);
    expect([terminal.code, terminal.stderr]).toEqual([1, `clipag remote: nothing to cancel: generation ${id} already succeeded`]);
  });

  it('Retry-After as seconds or as an HTTP date', () => {
    expect(retryAfterMs('3')).toBe(3000);
    expect(retryAfterMs(new Date(Date.now() + 10_000).toUTCString(), Date.now())).toBeGreaterThan(8000);
    expect([retryAfterMs(null), retryAfterMs('soon')]).toEqual([undefined, undefined]);
    expect([outputPath('out.png', 1, 2), outputPath('a/b', 0, 2), outputPath('x.png', 0, 1)]).toEqual(['out-1.png', 'a/b-0', 'x.png']);
  });
});

/** The real command, a process of its own, so that Ctrl-C is a real SIGINT. */
function spawnRemote(argv: string[]): { child: ChildProcess; stderr: () => string; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'clipag.mjs'), 'remote', ...argv], { env: { ...process.env, CLIPAG_API_KEY: KEY }, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  return { child, stderr: () => err, exit: new Promise((r) => child.on('exit', (code) => r(code))) };
}

async function until(what: string, probe: () => boolean, ms = 30_000): Promise<void> {
  for (const t0 = Date.now(); !probe(); await new Promise((r) => setTimeout(r, 50))) if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
}

describe.concurrent('clipag remote: Ctrl-C while waiting', () => {
  for (const cancelOnInterrupt of [false, true]) {
    it(cancelOnInterrupt ? 'with --cancel-on-interrupt: the generation is canceled, exit 130' : 'says how to resume (the id), exits 130, and cancels nothing', async () => {
      const id = newJobId();
      const name = cancelOnInterrupt ? 'sigint-cancel' : 'sigint';
      const r = route(name, (req) => (req.path.endsWith('/cancel') ? { status: 200, json: view(id, 'canceled') } : req.method === 'POST' ? { status: 202, json: view(id, 'queued') } : 'hang'));
      const p = spawnRemote(['generate', 'a red circle', '--url', r.url, '-o', join(dir, `${name}.png`), ...(cancelOnInterrupt ? ['--cancel-on-interrupt'] : [])]);
      await until('the held GET', () => r.seen.some((s) => s.method === 'GET'));
      p.child.kill('SIGINT');
      expect(await p.exit).toBe(130);
      const cancels = r.seen.filter((s) => s.path.endsWith('/cancel'));
      if (cancelOnInterrupt) {
        expect(cancels).toHaveLength(1);
        expect(p.stderr()).toContain(`interrupted; generation ${id} canceled (--cancel-on-interrupt)`);
      } else {
        expect(cancels).toHaveLength(0);
        expect(p.stderr()).toContain(`interrupted; generation ${id} goes on (not canceled): clipag remote get ${id} -o ${join(dir, 'sigint.png')} waits for it again`);
      }
    });
  }
});

/** Through the verb dispatch (usage errors exit 2 with the usage), with this environment; the stand-in counts requests. */
async function viaMain(argv: string[], env: Record<string, string | undefined>): Promise<{ code: number; stderr: string }> {
  const err: string[] = [];
  for (const name of ['CLIPAG_API_URL', 'CLIPAG_API_KEY', 'CLIPAG_DATA_DIR']) vi.stubEnv(name, env[name]);
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  const write = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
  try {
    return { code: await main(['remote', ...argv]), stderr: err.join('\n') };
  } finally {
    error.mockRestore();
    write.mockRestore();
    vi.unstubAllEnvs();
  }
}

describe('clipag remote: argument errors exit 2 with the usage, before any request', () => {
  const empty = join(dir, 'no-data');
  mkdirSync(empty, { recursive: true });
  const cases: Array<[string, string[], Record<string, string | undefined>, RegExp]> = [
    ['a missing prompt', ['generate'], {}, /give exactly one prompt/],
    ['two prompts', ['generate', 'a', 'b'], {}, /give exactly one prompt/],
    ['a --size that is no size', ['generate', 'a red circle', '--size', 'big'], {}, /--size must look like 128x96, got "big"/],
    ['a --size the API does not take', ['generate', 'a red circle', '--size', '100x64'], {}, /--size 100x64: the API takes sides of 64-1024 px, multiples of 32/],
    ['-o in a folder that does not exist', ['generate', 'a red circle', '-o', join(dir, 'nowhere', 'x.png')], {}, /-o .*x\.png: the folder .*nowhere does not exist/],
    ['-o that is a folder', ['generate', 'a red circle', '-o', dir], {}, /is a folder; give a file name/],
    ['get -o in a folder that does not exist', ['get', 'abc', '-o', join(dir, 'nowhere', 'x.png')], {}, /the folder .*nowhere does not exist/],
    ['--strength without an init image', ['generate', 'a red circle', '--strength', '0.5'], {}, /--strength needs an init image/],
    ['an --init file that is not a PNG', ['generate', 'a red circle', '--init', join(dir, 'notes.txt')], {}, /--init .*notes\.txt is not a PNG/],
    ['--steps out of range', ['generate', 'a red circle', '--steps', '0'], {}, /--steps must be an integer in \[1, 500\], got "0"/],
    ['a bad --timeout', ['get', 'abc', '--timeout', 'soon'], {}, /--timeout must be a number of seconds/],
    ['an unknown action', ['list'], {}, /unknown action "list" \(known: generate, get, cancel\)/],
    ['no action', [], {}, /give an action: generate, get or cancel/],
    ['an unknown flag', ['cancel', 'abc', '--force'], {}, /Unknown option '--force'/],
    [
      'no key for a local URL',
      ['generate', 'a red circle'],
      { CLIPAG_API_KEY: undefined, CLIPAG_DATA_DIR: empty },
      /no API key for http:\/\/127\.0\.0\.1:\d+ \(CLIPAG_API_URL\): pass --key KEY or set CLIPAG_API_KEY .*clipag keys create.*; for a local server, `npm start` writes one to .*no-data\/local-api-key/,
    ],
  ];
  for (const [what, argv, env, message] of cases) {
    it(what, async () => {
      writeFileSync(join(dir, 'notes.txt'), 'not an image');
      const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
      const res = await viaMain(argv, { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY, ...env });
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr).toMatch(message);
      expect(res.stderr).toContain('usage: clipag remote generate "PROMPT" [options]');
      expect(r.seen).toEqual([]);
    });
  }

  // Root may write anywhere: the folder's mode stops only other users.
  it.skipIf(process.getuid?.() === 0)('-o in a folder that is not writable', async () => {
    const locked = join(dir, 'locked');
    mkdirSync(locked, { recursive: true });
    chmodSync(locked, 0o500);
    try {
      const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
      const res = await viaMain(['generate', 'a red circle', '-o', join(locked, 'x.png')], { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY });
      expect([res.code, r.seen]).toEqual([2, []]);
      expect(res.stderr).toMatch(/the folder .*locked is not writable/);
    } finally {
      chmodSync(locked, 0o700);
    }
  });

  it("a local key file is not sent to a remote --url: no key, exit 2, and the message does not point at the file", async () => {
    const data = join(dir, 'with-key');
    mkdirSync(data, { recursive: true });
    writeFileSync(join(data, 'local-api-key'), 'ck_local_key\n');
    const res = await viaMain(['get', 'abc', '--url', 'https://api.example.com/prod'], { CLIPAG_DATA_DIR: data });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/no API key for https:\/\/api\.example\.com \(--url\): pass --key KEY or set CLIPAG_API_KEY \(a deployment's operator issues keys with `clipag keys create`\)\n/);
  });
});
