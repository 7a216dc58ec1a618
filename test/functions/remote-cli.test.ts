// `clipag remote`'s retry rules and its command line, against a small stand-in HTTP server. A stand-in
// here, not the real API: the real server's Retry-After values run up to minutes (a rate limit's
// window, 30 s for too_many_active_jobs), and the AWS gateway's own answers (a 429 without the
// envelope) do not exist in local mode at all. The real server is in test/e2e/remote.test.ts. Every
// answer the stand-in gives is a GenerationView the API's own schema accepts.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Generation } from '../../cli/api-client.ts';
import { ClipagClient, GaveUp, retryAfterMs, WaitPastDeadline } from '../../cli/api-client.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { main } from '../../cli/main.ts';
import { checkDownloadedImage, generateCommand, invocation, outputPath, remote, shellWord, type RemoteIo } from '../../cli/remote.ts';
import { parseArgs as nodeParseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { parseCliArgs } from '../../cli/common.ts';
import { encode as fastPngEncode } from 'fast-png';
import { encodeOutput, encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { newJobId } from '../../shared/ids.ts';
import { UploadView } from '../../functions/schemas.ts';
import { GenerationView } from '../../shared/schemas/view.ts';
import { hostId } from '../../shared/adapters/local/lock.ts';
import { unprivilegedBox, unprivilegedUnavailable } from '../helpers/unprivileged.ts';
import { EstimateView } from '../../functions/schemas.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-remote-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const KEY = 'ck_testkey_secretsecretsecretsecret';
const PNG = encodePng(solidImage(64, 64, [0.2, 0.4, 0.6]));

interface Seen {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
  /** The request's body, as text. */
  body: string;
  at: number;
}
type Answer = { status: number; json?: unknown; body?: string | Uint8Array; headers?: Record<string, string> } | 'hang' | 'drop';
type Handler = (req: Seen, nth: number) => Answer;

/** An estimate as the API answers one, checked against its schema. */
const ESTIMATE = EstimateView.parse({ object: 'estimate', model: 'toy', width: 64, height: 64, steps: 100, worker_seconds: null, cost_usd: null, runs: 0, basis: null, note: 'no runs yet', hourly_usd: null });

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
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const [path, query = ''] = m[2]!.split('?');
    const seen: Seen = { method: req.method!, path: path!, query: new URLSearchParams(query), headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() };
    route.seen.push(seen);
    // The request check `remote generate --init FILE` makes before its upload: answered as the API does
    // for a request it takes (the e2e suite has the real one refuse); the tests' handlers see the rest.
    if (seen.method === 'POST' && seen.path === '/v1/estimates') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(ESTIMATE));
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
    expired_outputs: [],
    withheld_outputs: [],
    error: null,
    usage: { encoder_passes: 0, worker_seconds: 0, cost_usd: null, hourly_usd: null },
    warnings: [],
    request: { prompt: 'a red circle', width: 64, height: 64, steps: 100, n: 1, init: 'gmm', model: 'toy', seed: 7 },
    model_version: null,
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
    outputs: [{ index: 0, seed: 7, url: `${url}/img/0.png?sig=abc`, expires_at: new Date(Date.now() + 3_600_000).toISOString(), content_type: 'image/png', width: 64, height: 64, clip_score: 0.25 }],
  });
}

const envelope = (status: number, code: string, message: string, param: string | null = null, headers: Record<string, string> = {}): Answer => ({
  status,
  json: { error: { code, message, param, request_id: `req_${code}` } },
  headers,
});
const png = (): Answer => ({ status: 200, body: PNG, headers: { 'content-type': 'image/png' } });
/** GET /v1/generations?idempotency_key=K as the API answers it: the key's generations (none by default), the key said back. */
const lookedUp = (req: Seen, found: Generation[] = []): Answer => ({ status: 200, json: { object: 'list', data: found, next_cursor: null }, headers: { 'idempotency-key': req.query.get('idempotency_key') ?? '' } });

/** `clipag remote` as its run() wires it, minus the process: this environment, output caught; `io` adds a signal, a fetch or a sleep. */
async function cli(argv: string[], env: Record<string, string> = {}, io: Partial<Pick<RemoteIo, 'signal' | 'fetch' | 'sleep' | 'invokedAs'>> = {}): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const out: string[] = [];
  const err: string[] = [];
  const t0 = Date.now();
  const code = await remote(argv, { env, out: (l) => out.push(l), err: (l) => err.push(l), ...io });
  return { code, stdout: out.join('\n'), stderr: err.join('\n'), ms: Date.now() - t0 };
}

/** A retry's wait that takes no time (the waits are recorded): for the tests of retry budgets, which would otherwise take minutes. */
function instantSleep(): { sleep: NonNullable<RemoteIo['sleep']>; waits: number[] } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

/** The words of a command printed shell-quoted (plain words and '…' quotes, as shellWord makes them). */
function words(line: string): string[] {
  const out: string[] = [];
  for (const m of line.matchAll(/(?:[^\s']+|'[^']*')+/g)) out.push(m[0].replace(/'([^']*)'/g, '$1'));
  return out;
}

/** The command a message printed between `: ` and ` gets it`, as argv for remote() (without "clipag remote"). */
function resumeArgv(stderr: string): string[] {
  const m = /: (clipag remote generate .*?) gets it/.exec(stderr);
  if (!m) throw new Error(`no resume command in: ${stderr}`);
  return words(m[1]!).slice(2);
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
    expect(res.stderr).toMatch(/POST \/t\/rate-limited\/v1\/generations: 429 rate_limited; waiting 1(\.\d)? s \(Retry-After 1\), then sending it again with the same Idempotency-Key/);
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
    expect(res.stderr).toMatch(/409 idempotency_in_progress \(its first try is still being made\); waiting 1(\.\d)? s \(Retry-After 1\)/);
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
    // With --json the refusal is on stdout too, as the API said it (review-docs F3: stdout was empty).
    const json = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'invalid.png'), '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toEqual({ error: { status: 400, code: 'validation_error', message: 'must be a multiple of 32', param: 'width', request_id: 'req_validation_error' } });
  });

  it('a 401: exit 1, saying to check the key and where it came from, never the key', async () => {
    const r = route('unauthorized', () => envelope(401, 'unauthorized', 'invalid or revoked API key', null, { 'www-authenticate': 'Bearer realm="clipag"' }));
    const res = await cli(['get', newJobId(), '--url', r.url], { CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(1);
    expect(res.stderr).toMatch(/the API refused the key from CLIPAG_API_KEY \(401 unauthorized: invalid or revoked API key \[request_id req_unauthorized\]\); check the key/);
    expect(res.stderr).not.toContain('secretsecret');
  });

  it('a Retry-After past --timeout while a generation goes on: exit 124 at once, naming the limit, when to retry, and the generation (its get command shell-quoted)', async () => {
    const id = newJobId();
    const r = route('timeout', (req) =>
      req.method === 'POST'
        ? { status: 202, json: view(id, 'running'), headers: { 'preference-applied': 'wait=1' } }
        : envelope(429, 'rate_limited', 'over 600 requests a minute', null, { 'retry-after': '30', 'ratelimit-policy': '"requests";q=600;w=60', ratelimit: '"requests";r=0;t=30' }),
    );
    const out = join(dir, 'time out.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out, '--timeout', '3', '--json']);
    expect(res.code).toBe(124);
    expect(res.ms).toBeLessThan(3000); // no use waiting out the rest of --timeout: the retry could not come before it
    expect(res.stderr).toMatch(new RegExp(`timed out: GET \\S+/v1/generations/${id}: 429 rate_limited: over 600 requests a minute \\[request_id req_rate_limited\\] \\(the limit: "requests" \\(600 per 60 s\\)\\); it asks to wait 30 s \\(until \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z\\), past --timeout 3 s`));
    // Shell-quoted: the path has a space.
    expect(res.stderr).toContain(`generation ${id} goes on: clipag remote get ${id} --url ${r.url} -o '${out}' waits for it again`);
    expect(JSON.parse(res.stdout)).toMatchObject({ id, status: 'running' }); // the last view, for a script's sake
  });

  it('the command that picks a run up is printed in the form clipag was run with (npm run clipag --, npx clipag, node bin/…), not a bare clipag that is not on PATH', async () => {
    expect(invocation({ npm_lifecycle_event: 'clipag' }, join(REPO_ROOT, 'bin', 'clipag.ts'), '/elsewhere')).toEqual(['npm', 'run', 'clipag', '--']);
    expect(invocation({ npm_lifecycle_event: 'npx' }, join(REPO_ROOT, 'node_modules', '.bin', 'clipag'), REPO_ROOT)).toEqual(['npx', 'clipag']);
    // Inherited from an npx that started something else, which started clipag's script.
    expect(invocation({ npm_lifecycle_event: 'npx' }, join(REPO_ROOT, 'bin', 'clipag.mjs'), REPO_ROOT)).toEqual(['node', join('bin', 'clipag.mjs')]);
    expect(invocation({}, join(REPO_ROOT, 'bin', 'clipag.ts'), REPO_ROOT)).toEqual(['node', '--import', 'tsx', join('bin', 'clipag.ts')]);
    expect(invocation({}, join(REPO_ROOT, 'bin', 'clipag.mjs'), '/elsewhere')).toEqual(['node', join(REPO_ROOT, 'bin', 'clipag.mjs')]);
    expect(invocation({}, '/usr/local/bin/clipag', '/elsewhere')).toEqual(['clipag']);
    expect(invocation({}, undefined, '/elsewhere')).toEqual(['npx', 'clipag']);
    const id = newJobId();
    const r = route('invoked-as', (req) => (req.method === 'POST' ? { status: 202, json: view(id, 'running') } : { status: 202, json: view(id, 'running') }));
    const out = join(dir, 'invoked.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out, '--timeout', '0'], {}, { invokedAs: ['npm', 'run', 'clipag', '--'] });
    expect(res.code).toBe(124);
    expect(res.stderr).toContain(`generation ${id} goes on: npm run clipag -- remote get ${id} --url ${r.url} -o ${out} waits for it again; npm run clipag -- remote cancel ${id} --url ${r.url} stops it`);
    // remote batch's "runs the lines not finished" too.
    writeFileSync(join(dir, 'invoked.jsonl'), '{"id": "i", "prompt": "a red circle"}\n');
    const b = await cli(['batch', join(dir, 'invoked.jsonl'), '-d', join(dir, 'invoked-out'), '--url', r.url, '--key', KEY, '--timeout', '0'], {}, { invokedAs: ['npx', 'clipag'] });
    expect(b.code, b.stderr).toBe(124);
    expect(b.stderr).toContain(`1 generation goes on; npx clipag remote batch ${join(dir, 'invoked.jsonl')} -d ${join(dir, 'invoked-out')} --url ${r.url} picks them up`);
    // The README says so, and that npx clipag works.
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    expect(readme.slice(readme.indexOf('## Command line'))).toMatch(/`npx clipag <verb>`\s+works/);
  });

  it('--cancel-after SEC sends cancel_after (ADR 0034); a generation its deadline ended says so; a bad value is refused before any request', async () => {
    const id = newJobId();
    const r = route('cancel-after', (req) =>
      req.path === '/v1/generations'
        ? { status: 202, json: view(id, 'canceled', { error: { code: 'deadline_exceeded', message: 'canceled: the generation had not ended 60 s after it was created (cancel_after)' } }) }
        : { status: 404, json: {} },
    );
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--cancel-after', '60', '-o', join(dir, 'never.png')]);
    expect(res.code).toBe(1);
    expect(JSON.parse(r.seen.find((x) => x.path === '/v1/generations')!.body)).toMatchObject({ prompt: 'a red circle', cancel_after: 60 });
    expect(res.stderr).toContain(`generation ${id} was canceled: canceled: the generation had not ended 60 s after it was created (cancel_after) [deadline_exceeded]`);
    const before = r.seen.length;
    for (const bad of ['0', '86401', '1.5', 'soon']) {
      await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--cancel-after', bad])).rejects.toThrow(/--cancel-after must be an integer in \[1, 86400\]/);
    }
    expect(r.seen.length).toBe(before);
  });

  it('--format jpeg / -o FILE.jpg asks for JPEG outputs (ADR 0041) and writes the JPEG the view names; a PNG where it names a JPEG is refused; --quality without JPEG is refused before any request', async () => {
    const id = newJobId();
    const { encode } = await import('jpeg-js');
    const jpeg = encode({ width: 8, height: 8, data: new Uint8Array(256).fill(90) }, 90).data;
    let serve: 'jpeg' | 'png' = 'jpeg';
    const r = route('jpeg-out', (req) => {
      if (req.path === '/v1/generations' || req.path === `/v1/generations/${id}`) {
        const g = succeeded(`${base}/t/jpeg-out`, id);
        return { status: req.method === 'POST' ? 202 : 200, json: { ...g, outputs: g.outputs.map((o) => ({ ...o, content_type: 'image/jpeg' })) } };
      }
      if (req.path === '/img/0.png') return serve === 'jpeg' ? { status: 200, body: jpeg, headers: { 'content-type': 'image/jpeg' } } : png();
      return { status: 404, body: '' };
    });
    const named = join(dir, 'named.out');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--format', 'jpeg', '--quality', '70', '-o', named]);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(r.seen.find((x) => x.path === '/v1/generations')!.body)).toMatchObject({ output_format: 'jpeg', output_quality: 70 });
    expect(readFileSync(named).equals(Buffer.from(jpeg))).toBe(true);
    // The extension that does not say JPEG is noted, not refused.
    expect(res.stderr).toContain(`clipag remote: note: -o ${named}: the image is written as a JPEG whatever the file's extension (.out)`);
    // -o FILE.jpg alone asks for JPEG, at the API's default quality.
    const before = r.seen.filter((x) => x.path === '/v1/generations').length;
    expect((await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'by-ext.jpg')])).code).toBe(0);
    const second = JSON.parse(r.seen.filter((x) => x.path === '/v1/generations')[before]!.body);
    expect([second.output_format, 'output_quality' in second]).toEqual(['jpeg', false]);
    // get -o with a .png name: the JPEG is written, and the extension noted.
    const got = join(dir, 'got.png');
    const get = await cli(['get', id, '--url', r.url, '--key', KEY, '-o', got]);
    expect(get.code, get.stderr).toBe(0);
    expect(readFileSync(got).equals(Buffer.from(jpeg))).toBe(true);
    expect(get.stderr).toContain(`clipag remote: note: ${got} is a JPEG whatever its extension (.png): the generation's images are JPEGs`);
    // Bytes that are not what the view says: never written as the image.
    serve = 'png';
    const wrong = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'wrong.jpg')]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/the signed URL answered \d+ bytes that are not a JPEG/);
    expect(existsSync(join(dir, 'wrong.jpg'))).toBe(false);
    // A type a newer API adds is not taken for a PNG.
    expect(() => checkDownloadedImage({ index: 0, content_type: 'image/avif' }, new Uint8Array(PNG))).toThrow(/the image is "image\/avif", which this clipag does not know: a newer clipag downloads it/);
    // A WebP (ADR 0043) is checked by its RIFF/WEBP header.
    const webpHead = Uint8Array.from(Buffer.from('RIFF\x04\x00\x00\x00WEBPVP8X', 'latin1'));
    expect(() => checkDownloadedImage({ index: 0, content_type: 'image/webp' }, webpHead)).not.toThrow();
    expect(() => checkDownloadedImage({ index: 0, content_type: 'image/webp' }, new Uint8Array(PNG))).toThrow(/bytes that are not a WebP/);
    expect(() => checkDownloadedImage({ index: 0 }, new Uint8Array(PNG))).not.toThrow(); // an API from before content_type: PNG
    // An API from before output_format refuses the key: said so, with what to do.
    const older = route('jpeg-older-api', () => envelope(400, 'validation_error', 'Unrecognized key: "output_format"', null));
    const old = await cli(['generate', 'a red circle', '--url', older.url, '--key', KEY, '-o', join(dir, 'older.jpg')]);
    expect(old.code).toBe(1);
    expect(old.stderr).toMatch(/400 validation_error: Unrecognized key: "output_format".*; this API is from before JPEG outputs: ask for a PNG \(--format png, or -o FILE\.png\)$/);
    const asked = r.seen.length;
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--quality', '70', '-o', join(dir, 'q.png')])).rejects.toThrow(/--quality applies only to JPEG or WebP/);
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--format', 'gif'])).rejects.toThrow(/--format must be png, jpeg or webp, got "gif"/);
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--format', 'jpeg', '--quality', '101'])).rejects.toThrow(/--quality must be an integer in \[1, 100\]/);
    expect(r.seen.length).toBe(asked);
  });

  it('-o FILE.webp asks for WebP outputs (ADR 0043) and writes the WebP the view names; an API from before WebP is said to be one', async () => {
    const id = newJobId();
    const webp = Buffer.from(await encodeOutput({ width: 8, height: 8, data: new Float32Array(192).fill(0.4) }, 'webp'));
    const r = route('webp-out', (req) => {
      if (req.path === '/v1/generations' || req.path === `/v1/generations/${id}`) {
        const g = succeeded(`${base}/t/webp-out`, id);
        return { status: req.method === 'POST' ? 202 : 200, json: { ...g, outputs: g.outputs.map((o) => ({ ...o, content_type: 'image/webp' })) } };
      }
      if (req.path === '/img/0.png') return { status: 200, body: webp, headers: { 'content-type': 'image/webp' } };
      return { status: 404, body: '' };
    });
    const out = join(dir, 'asked.webp');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--quality', '60', '-o', out]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).not.toMatch(/whatever/);
    expect(JSON.parse(r.seen.find((x) => x.path === '/v1/generations')!.body)).toMatchObject({ output_format: 'webp', output_quality: 60 });
    expect(readFileSync(out).equals(webp)).toBe(true);
    // An API with JPEG outputs but not WebP: its enum refuses "webp"; the CLI says what to ask for instead.
    const older = route('webp-older-api', () => envelope(400, 'validation_error', 'output_format: Invalid option: expected one of "png"|"jpeg"', 'output_format'));
    const old = await cli(['generate', 'a red circle', '--url', older.url, '--key', KEY, '--format', 'webp']);
    expect(old.code).toBe(1);
    expect(old.stderr).toMatch(/; this API is from before WebP outputs: ask for a JPEG or a PNG \(--format jpeg\|png, or -o FILE\.jpg\|FILE\.png\)$/);
  });

  it('an --init JPEG (ADR 0035) is checked here and asked for as image/jpeg; one cut short is refused before any request', async () => {
    const r = route('jpeg-init', () => envelope(429, 'rate_limited', 'over the upload limit', null, { 'retry-after': '7126' }));
    const { encode } = await import('jpeg-js');
    const jpeg = encode({ width: 8, height: 8, data: new Uint8Array(256).fill(200) }, 90).data;
    writeFileSync(join(dir, 'photo.jpg'), jpeg);
    await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', join(dir, 'photo.jpg'), '-o', join(dir, 'never.png'), '--timeout', '600']);
    const grant = r.seen.find((x) => x.path === '/v1/uploads');
    expect(JSON.parse(grant!.body)).toEqual({ content_type: 'image/jpeg', bytes: jpeg.length });
    writeFileSync(join(dir, 'cut.jpg'), jpeg.subarray(0, jpeg.length - 30));
    const before = r.seen.length;
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', join(dir, 'cut.jpg'), '-o', join(dir, 'never.png')])).rejects.toThrow(
      /--init \S*cut\.jpg cannot be an init image: corrupt JPEG: segment 0xFF[0-9A-F]{2} at byte \d+ runs past the end of the file/,
    );
    expect(r.seen.length).toBe(before);
    // A path that is not there, or a folder: said in words, not as an errno (the new-user review).
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', join(dir, 'missing.png')])).rejects.toThrow(`cannot read --init ${join(dir, 'missing.png')}: no such file`);
    await expect(cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', dir])).rejects.toThrow(`cannot read --init ${dir}: a folder, not a file`);
    expect(r.seen.length).toBe(before);
  });

  it('a Retry-After past --timeout before any generation exists (the upload quota): exit 1, not 124, naming the limit and when to retry', async () => {
    const r = route('upload-quota', () =>
      envelope(429, 'rate_limited', "over this account's limit of 1 uploads per 3600 s; retry after 7126 s", null, { 'retry-after': '7126', 'ratelimit-policy': '"requests";q=600;w=60, "uploads";q=1;w=3600', ratelimit: '"requests";r=598;t=60, "uploads";r=0;t=7126' }),
    );
    writeFileSync(join(dir, 'quota-init.png'), PNG);
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', join(dir, 'quota-init.png'), '-o', join(dir, 'never.png'), '--timeout', '600']);
    expect(res.code).toBe(1);
    expect(r.seen.map((x) => x.path)).toEqual(['/v1/estimates', '/v1/uploads']); // the request's check, then the one upload try
    expect(res.stderr).toMatch(/refused for now: POST \S+\/v1\/uploads: 429 rate_limited: over this account's limit of 1 uploads per 3600 s.* \(the limit: "uploads" \(1 per 3600 s\)\); it asks to wait 7126 s, about 119 min \(until \d{4}-[\d-]+T[\d:.]+Z\), past --timeout 600 s; retry after that; no generation was made/);
    expect(res.stderr).not.toContain('timed out');
  });

  it('a 429 past --timeout on the POST itself: exit 1 and no Idempotency-Key when it was the only try; exit 124 with the resume command when an earlier try was lost', async () => {
    const first = route('timeout-post', () => envelope(429, 'too_many_active_jobs', '100 generations are queued or running', null, { 'retry-after': '30' }));
    const refused = await cli(['generate', 'a red circle', '--url', first.url, '--key', KEY, '-o', join(dir, 'never.png'), '--timeout', '2', '--idempotency-key', 'order-1042']);
    expect(refused.code).toBe(1);
    expect(first.seen).toHaveLength(1);
    expect(refused.stderr).toMatch(/refused for now: POST \S+: 429 too_many_active_jobs: 100 generations are queued or running .*it asks to wait 30 s .*no generation was made/);
    // The first try's answer was lost (the connection dropped after the body arrived): a job may exist, whatever the 429 says now.
    const lost = route('timeout-post-lost', (_req, nth) => (nth === 1 ? 'drop' : envelope(429, 'too_many_active_jobs', '100 generations are queued or running', null, { 'retry-after': '30' })));
    const res = await cli(['generate', 'a red circle', '--url', lost.url, '--key', KEY, '-o', join(dir, 'never.png'), '--timeout', '5', '--idempotency-key', 'order-1043']);
    expect(res.code).toBe(124);
    expect(lost.seen).toHaveLength(2);
    expect(res.stderr).toContain(`the POST was sent and no answer came back, so it may have made a generation (Idempotency-Key order-1043): clipag remote generate 'a red circle' --url ${lost.url} --key KEY -o ${join(dir, 'never.png')} --timeout 5 --idempotency-key order-1043 gets it`);
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
    // --json: the refusal on stdout too (review-diff15 F1).
    const json = await cli(['cancel', id, '--url', r.url, '--key', KEY, '--json']);
    expect([json.code, JSON.parse(json.stdout)]).toEqual([1, { error: { status: 409, code: 'job_terminal', message: `generation ${id} already succeeded`, param: null, request_id: 'req_job_terminal' } }]);
  });

  it('Retry-After as seconds or as an HTTP date (an IMF-fixdate); a decimal rounded up; anything else unreadable', () => {
    expect(retryAfterMs('3')).toBe(3000);
    expect(retryAfterMs(' 0 ')).toBe(0);
    expect(retryAfterMs(new Date(Date.now() + 10_000).toUTCString(), Date.now())).toBeGreaterThan(8000);
    expect(retryAfterMs('Wed, 21 Oct 2015 07:28:00 GMT', Date.parse('2015-10-21T07:27:00Z'))).toBe(60_000);
    // Date.parse reads "1.5" and "-1" as days of 2001: a Retry-After of 0 (a tight loop) before.
    expect(retryAfterMs('1.5')).toBe(2000);
    expect([retryAfterMs(null), retryAfterMs('soon'), retryAfterMs('-1'), retryAfterMs(''), retryAfterMs('2015-10-21')]).toEqual([undefined, undefined, undefined, undefined, undefined]);
    expect([outputPath('out.png', 1, 2), outputPath('a/b', 0, 2), outputPath('x.png', 0, 1)]).toEqual(['out-1.png', 'a/b-0', 'x.png']);
    expect([shellWord('a/b-c.png'), shellWord('my image.png'), shellWord("it's"), shellWord('')]).toEqual(['a/b-c.png', "'my image.png'", "'it'\\''s'", "''"]);
  });
});

/** A port nothing listens on (a closed one, just freed). */
async function closedPort(): Promise<number> {
  return new Promise((res) => {
    const s = createNetServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

/** A fetch that answers every request with this generation (and records where it went, with which Authorization). */
function fakeFetch(g: Generation, seen: string[]): typeof fetch {
  return (async (url: string | URL | Request, init?: RequestInit) => {
    seen.push(`${String(url)} ${(init?.headers as Record<string, string>).Authorization}`);
    return new Response(JSON.stringify(g), { status: 200, headers: { 'content-type': 'application/json' } });
  }) as typeof fetch;
}

describe.concurrent('clipag remote: lost answers, deadlines, budgets', () => {
  it('POST answers lost every time (the connection dropped after the body arrived): gives up, prints the command that gets the job (its Idempotency-Key), not "is the API running?"; that command replays it', async () => {
    const id = newJobId();
    let up = false;
    const r = route('lost-posts', (req) => {
      if (req.path === '/v1/generations') return up ? { status: 200, json: succeeded(`${base}/t/lost-posts`, id), headers: { 'idempotent-replayed': 'true' } } : 'drop';
      return png();
    });
    const { sleep, waits } = instantSleep();
    const out = join(dir, 'lost.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out], {}, { sleep });
    expect(res.code).toBe(1);
    const posts = r.seen.filter((s) => s.path === '/v1/generations');
    expect(posts).toHaveLength(6);
    expect(waits).toHaveLength(5);
    const key = String(posts[0]!.headers['idempotency-key']);
    expect(new Set(posts.map((p) => p.headers['idempotency-key']))).toEqual(new Set([key]));
    expect(res.stderr).toMatch(/network error \(\w+\); gave up after 6 tries; the POST was sent and no answer came back, so it may have made a generation \(Idempotency-Key clipag-remote-[0-9a-f-]+\): /);
    expect(res.stderr).toContain(`clipag remote generate 'a red circle' --url ${r.url} --key KEY -o ${out} --idempotency-key ${key} gets it`);
    expect(res.stderr).not.toContain('is the API running');
    expect(res.stderr).not.toContain('secretsecret');
    // The command as printed (KEY stands for the key): the same Idempotency-Key, so the job the lost POST made.
    up = true;
    const again = await cli(resumeArgv(res.stderr).map((w) => (w === 'KEY' ? KEY : w)));
    expect(again.code, again.stderr).toBe(0);
    expect(r.seen.filter((s) => s.path === '/v1/generations').at(-1)!.headers['idempotency-key']).toBe(key);
    expect(again.stderr).toContain(`the API replayed generation ${id}`);
  });

  it("the app's 500 internal_error on the POST, 3 times: exit 1 with the Idempotency-Key (the job may have been made before the error)", async () => {
    const r = route('internal-post', () => envelope(500, 'internal_error', 'internal error'));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'internal.png'), '--idempotency-key', 'order-9'], {}, instantSleep());
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(3);
    expect(res.stderr).toMatch(/gave up after 3 tries; the POST was sent and no answer came back, .*--idempotency-key order-9 gets it/);
  });

  it('a connection refused on this machine: two quick retries, then "is the API running … npm start"; no Idempotency-Key (the POST reached no server)', async () => {
    const port = await closedPort();
    const res = await cli(['generate', 'a red circle', '--url', `http://127.0.0.1:${port}`, '--key', KEY, '-o', join(dir, 'refused.png')]);
    expect(res.code).toBe(1);
    expect(res.ms).toBeLessThan(6000); // 0.25 + 0.5 s of waits, × at most 1.5: about 30 s before
    expect(res.stderr).toMatch(new RegExp(`network error \\(ECONNREFUSED\\); gave up after 3 tries \\(is the API running at http://127\\.0\\.0\\.1:${port}/\\? npm start runs one\\); no generation was made$`));
    expect(res.stderr).not.toContain('--idempotency-key');
  });

  it('a host DNS does not know: two quick retries, then "no such host"', async () => {
    let tries = 0;
    const fetch = (async () => {
      tries++;
      throw new TypeError('fetch failed', { cause: Object.assign(new Error('getaddrinfo ENOTFOUND api.nowhere.invalid'), { code: 'ENOTFOUND' }) });
    }) as typeof globalThis.fetch;
    const res = await cli(['get', newJobId(), '--url', 'https://api.nowhere.invalid', '--key', KEY], {}, { fetch });
    expect([res.code, tries]).toEqual([1, 3]);
    expect(res.ms).toBeLessThan(6000);
    expect(res.stderr).toMatch(/network error \(ENOTFOUND\); gave up after 3 tries \(no such host: is --url https:\/\/api\.nowhere\.invalid\/ right\?\)/);
  });

  it('a hung API: --timeout 3 ends the run in about 3 s (not 30 s more), the Prefer: wait within it; exit 124 with the command that gets the job the POST may have made', async () => {
    const r = route('hung', () => 'hang');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'hung.png'), '--timeout', '3']);
    expect(res.code).toBe(124);
    expect(res.ms).toBeGreaterThanOrEqual(2900);
    expect(res.ms).toBeLessThan(7000); // 3 s and 1 s of grace for an answer held to the deadline; 33 s before
    expect(r.seen).toHaveLength(1);
    expect(Number(/^wait=(\d+)$/.exec(String(r.seen[0]!.headers.prefer))![1])).toBeLessThanOrEqual(3);
    expect(res.stderr).toMatch(/timed out \(--timeout 3 s\): POST \S+: no answer within [\d.]+ s; the deadline passed while retrying; the POST was sent .*--idempotency-key clipag-remote-[0-9a-f-]+ gets it/);
  });

  it('a retried POST asks for no Prefer: wait past what is left of --timeout', async () => {
    const id = newJobId();
    const r = route('prefer-shrinks', (req, nth) => {
      if (req.path === '/v1/generations') return nth === 1 ? envelope(503, 'queue_unavailable', 'the job queue is unavailable', null, { 'retry-after': '2' }) : { status: 202, json: succeeded(`${base}/t/prefer-shrinks`, id) };
      return png();
    });
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'prefer.png'), '--timeout', '5']);
    expect(res.code, res.stderr).toBe(0);
    const [first, second] = r.seen.filter((s) => s.path === '/v1/generations').map((s) => Number(/^wait=(\d+)$/.exec(String(s.headers.prefer))![1]));
    expect(first).toBeLessThanOrEqual(5);
    expect(second).toBeLessThanOrEqual(first! - 2); // 2 s (and more) of the 5 were spent waiting
  });

  it('an image download that hangs is bounded by --timeout too: exit 124, and the get command that downloads it', async () => {
    const id = newJobId();
    const r = route('download-hangs', (req) => (req.path === '/v1/generations' ? { status: 202, json: succeeded(`${base}/t/download-hangs`, id), headers: { 'preference-applied': 'wait=2' } } : 'hang'));
    const out = join(dir, 'download-hangs.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out, '--timeout', '2']);
    expect(res.code).toBe(124);
    expect(res.ms).toBeLessThan(6000); // 2 s and 1 s of grace; up to 10 min before
    expect(res.stderr).toContain(`generation ${id} has ended (succeeded): clipag remote get ${id} --url ${r.url} -o ${out} downloads its images`);
    expect(existsSync(out)).toBe(false);
  });

  it('polling the API does not hold: one last read at the deadline, not an exit before it', async () => {
    const id = newJobId();
    const r = route('poll-deadline', (req) => (req.method === 'POST' ? { status: 202, json: view(id, 'queued') } : { status: 200, json: view(id, 'running') }));
    const t0 = Date.now();
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'poll-deadline.png'), '--timeout', '4']);
    expect(res.code).toBe(124);
    const gets = r.seen.filter((s) => s.method === 'GET');
    expect(gets).toHaveLength(2); // after 2 s, then at the deadline (the next gap, 3 s, would pass it); before: an exit at 2 s
    expect(gets[1]!.at - t0).toBeGreaterThanOrEqual(3900);
    expect(res.ms).toBeLessThan(8000);
    expect(res.stderr).toContain(`timed out (--timeout 4 s): generation ${id} is still running`);
  });

  it('Retry-After: 0 again and again, in real time: at least 1 s, then 2 s between tries (3 tries in 3 s; 6 before)', async () => {
    const r = route('retry-after-0', () => envelope(503, 'busy', 'busy', null, { 'retry-after': '0' }));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'ra0.png'), '--timeout', '3']);
    // A 5xx may come after the job was made (the API's 503 queue_unavailable does: its retry with the key re-queues it).
    expect(res.code).toBe(124);
    expect(res.stderr).toMatch(/timed out \(--timeout 3 s\): POST \S+: 503 busy; the deadline passed while retrying; .*--idempotency-key clipag-remote-\S+ gets it/);
    expect(r.seen.length).toBeGreaterThanOrEqual(2);
    expect(r.seen.length).toBeLessThanOrEqual(4);
    expect(r.seen[1]!.at - r.seen[0]!.at).toBeGreaterThanOrEqual(950);
  });

  it('Retry-After: 0 again and again (the client alone, its waits recorded): 1, 2, 4 … s, at most 30 s, each with up to 10 % jitter, and at most 12 tries', async () => {
    let tries = 0;
    let draw = 0;
    const waits: number[] = [];
    const busy = async () => {
      tries++;
      return new Response(JSON.stringify({ error: { code: 'busy', message: 'busy', param: null, request_id: 'r' } }), { status: 503, headers: { 'retry-after': '0', 'content-type': 'application/json' } });
    };
    const client = new ClipagClient({ url: 'http://127.0.0.1:8787', key: KEY, note: () => {}, fetch: busy as typeof fetch, sleep: async (ms) => void waits.push(ms), random: () => [0, 0.99][draw++ % 2]! });
    await expect(client.getGeneration(newJobId(), { waitSec: 0, deadline: Date.now() + 86_400_000 })).rejects.toThrow(GaveUp);
    expect(tries).toBe(12);
    const floors = [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000, 30_000];
    expect(waits).toHaveLength(floors.length);
    waits.forEach((w, i) => expect([w >= floors[i]!, w <= floors[i]! * 1.1]).toEqual([true, true]));
    expect(waits[1]).toBeGreaterThan(2000 * 1.05); // the jitter: a draw of 0.99 adds 9.9 %
  });

  it('a new generation refused too_many_active_jobs waits for room past 12 tries (until the deadline); other calls, and other refusals, still stop at 12', async () => {
    // A clock of the test's own, moved by each wait.
    let skew = 0;
    const realNow = Date.now.bind(Date);
    const clock = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + skew);
    const post = (code: string, full: number) => {
      let tries = 0;
      const fetch = async () => {
        tries++;
        if (tries <= full) return new Response(JSON.stringify({ error: { code, message: 'at the limit', param: null, request_id: 'r' } }), { status: 429, headers: { 'retry-after': '30', 'content-type': 'application/json' } });
        return new Response(JSON.stringify({ error: { code: 'internal_error', message: 'a bug', param: null, request_id: 'r' } }), { status: 500, headers: { 'content-type': 'application/json' } });
      };
      const waits: number[] = [];
      const sleep = async (ms: number) => {
        waits.push(ms);
        skew += ms;
      };
      const client = new ClipagClient({ url: 'http://127.0.0.1:8787', key: KEY, note: () => {}, fetch: fetch as typeof fetch, sleep, random: () => 0 });
      return { client, waits, tries: () => tries };
    };
    const day = () => Date.now() + 86_400_000;
    try {
      // 40 refusals (20 minutes of Retry-After), then the app's 500 (3 tries): the refusals spent none of the 12.
      const active = post('too_many_active_jobs', 40);
      await expect(active.client.createGeneration({ prompt: 'a red circle' }, { idempotencyKey: 'k', waitSec: 0, deadline: day() })).rejects.toThrow(/500 internal_error.*gave up after 43 tries/);
      expect(active.waits.slice(0, 40).every((w) => w === 30_000)).toBe(true);
      // The deadline still bounds it: 100 s hold three 30 s waits; the fourth Retry-After, past what is left, ends the call.
      const late = post('too_many_active_jobs', 1000);
      await expect(late.client.createGeneration({ prompt: 'a red circle' }, { idempotencyKey: 'k', waitSec: 0, deadline: Date.now() + 100_000 })).rejects.toThrow(WaitPastDeadline);
      expect(late.tries()).toBe(4);
      // rate_limited is the request rate: 12 tries, as before.
      const rate = post('rate_limited', 1000);
      await expect(rate.client.createGeneration({ prompt: 'a red circle' }, { idempotencyKey: 'k', waitSec: 0, deadline: day() })).rejects.toThrow(/gave up after 12 tries/);
      // Only the POST of a generation waits it out.
      const get = post('too_many_active_jobs', 1000);
      await expect(get.client.getGeneration(newJobId(), { waitSec: 0, deadline: day() })).rejects.toThrow(/gave up after 12 tries/);
    } finally {
      clock.mockRestore();
    }
  });

  it("the gateway's 502 and a 429 with Retry-After: 0 in turn: given up on, not retried until the deadline", async () => {
    let tries = 0;
    const alternate = async () =>
      ++tries % 2
        ? new Response(JSON.stringify({ message: 'Bad Gateway' }), { status: 502 })
        : new Response(JSON.stringify({ error: { code: 'rate_limited', message: 'over', param: null, request_id: 'r' } }), { status: 429, headers: { 'retry-after': '0' } });
    const client = new ClipagClient({ url: 'http://127.0.0.1:8787', key: KEY, note: () => {}, fetch: alternate as typeof fetch, sleep: async () => {} });
    await expect(client.cancelGeneration(newJobId(), { deadline: Date.now() + 86_400_000 })).rejects.toThrow(/gave up after \d+ tries/);
    expect(tries).toBeLessThanOrEqual(12);
  });

  describe('an upload link writes once (ADR 0044)', () => {
    const S3_URL = 'https://bucket.s3.us-east-1.amazonaws.com/uploads/acct_a/u1?X-Amz-Signature=SECRETSIG';
    const grant = { upload_id: 'u1', object: 'upload', init: 'upload:u1', method: 'PUT', url: S3_URL, headers: { 'content-type': 'image/png', 'content-length': String(PNG.length), 'if-none-match': '*' }, expires_at: new Date(Date.now() + 900_000).toISOString(), bytes: PNG.length, max_bytes: 1 << 20 };
    const s3Error = (status: number, code: string, message: string) => new Response(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`, { status, headers: { 'content-type': 'application/xml' } });
    const PRECONDITION = () => s3Error(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold');
    /** The grant, then each PUT answered by the next of `puts`. */
    function uploadClient(puts: Array<() => Response>): { client: ClipagClient; sent: Array<{ method: string; headers: Record<string, string> }>; notes: string[] } {
      const sent: Array<{ method: string; headers: Record<string, string> }> = [];
      const notes: string[] = [];
      const f = async (url: string | URL, init: RequestInit = {}) => {
        sent.push({ method: init.method ?? 'GET', headers: { ...(init.headers as Record<string, string>) } });
        if (String(url).endsWith('/v1/uploads')) return new Response(JSON.stringify(grant), { status: 201, headers: { 'content-type': 'application/json' } });
        const next = puts.shift();
        if (!next) throw new Error('one PUT too many');
        return next();
      };
      return { client: new ClipagClient({ url: 'http://127.0.0.1:8787', key: KEY, note: (l) => void notes.push(l), fetch: f as typeof fetch, sleep: async () => {}, random: () => 0 }), sent, notes };
    }

    it('the PUT carries the condition the grant names; a 412 after a try whose answer was lost (a 500) is that try having landed', async () => {
      const { client, sent, notes } = uploadClient([() => s3Error(500, 'InternalError', 'We encountered an internal error'), PRECONDITION]);
      expect((await client.upload(PNG, { deadline: Date.now() + 60_000 })).init).toBe('upload:u1');
      expect(sent.filter((r) => r.method === 'PUT').map((r) => r.headers['if-none-match'])).toEqual(['*', '*']);
      expect(notes.at(-1)).toBe('clipag remote: PUT https://bucket.s3.us-east-1.amazonaws.com/uploads/acct_a/u1: 412 after a try whose answer was lost: that try stored the image (the link writes once)');
    });

    it("S3's 409 while a lost try is still being stored is asked again; its 412 then ends it", async () => {
      const { client, notes } = uploadClient([() => s3Error(503, 'SlowDown', 'Please reduce your request rate'), () => s3Error(409, 'ConditionalRequestConflict', 'A conflicting conditional operation is currently in progress'), PRECONDITION]);
      expect((await client.upload(PNG, { deadline: Date.now() + 60_000 })).init).toBe('upload:u1');
      expect(notes.some((l) => l.includes('409 while a try whose answer was lost is still being stored'))).toBe(true);
    });

    it('a 412 on the first try (the link used by someone else, or before) is an error that says so, never a success', async () => {
      const { client } = uploadClient([PRECONDITION]);
      const error = await client.upload(PNG, { deadline: Date.now() + 60_000 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ status: 412 });
      expect(String(error)).toContain('412 http_412: PreconditionFailed: At least one of the pre-conditions you specified did not hold (the upload link was used already: each writes once)');
      expect(String(error)).not.toContain('SECRETSIG');
    });
  });

  it('a redirect: exit 1 at once, its Location shown without its query (a signature)', async () => {
    const r = route('redirect', () => ({ status: 307, headers: { location: 'https://other.example/v1/generations?X-Amz-Signature=SECRETSIG' } }));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'redirect.png')]);
    expect(res.code).toBe(1);
    expect(r.seen).toHaveLength(1);
    expect(res.stderr).toContain('307 http_307: redirected to https://other.example/v1/generations; give that address instead');
    expect(res.stderr).not.toContain('SECRETSIG');
  });

  it("API Gateway's answer to a path it has no route for (403 Missing Authentication Token, no envelope): exit 1, asking whether --url is the base address", async () => {
    const r = route('no-stage', () => ({ status: 403, json: { message: 'Missing Authentication Token' } }));
    const res = await cli(['get', newJobId(), '--url', r.url, '--key', KEY]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`403 http_403: Missing Authentication Token (is the URL the API's base address, with its stage path and without /v1?)`);
  });

  it('a 2xx that is not a generation (not this API): exit 1 saying so, no TypeError; the POST may have made one, so its key is printed; an upload grant that is not one, too', async () => {
    const r = route('not-api', () => ({ status: 200, json: { ok: true } }));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'not-api.png'), '--idempotency-key', 'order-11']);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/POST \S+\/v1\/generations: 200 not_a_generation: the answer is not a generation as the API's schema has it \(id: [^)]*\) \(is http:\/\/127\.0\.0\.1:\d+ a clipag API\?\); the POST was sent .*--idempotency-key order-11 gets it/);
    expect(res.stderr).not.toContain('TypeError');
    writeFileSync(join(dir, 'not-api-init.png'), PNG);
    const upload = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '--init', join(dir, 'not-api-init.png'), '-o', join(dir, 'not-api.png')]);
    expect(upload.code).toBe(1);
    expect(upload.stderr).toMatch(/POST \S+\/v1\/uploads: 200 not_an_upload: the answer is not an upload grant as the API's schema has it \(upload_id: [^)]*\) \(is http:\/\/127\.0\.0\.1:\d+ a clipag API\?\)$/);
  });

  it('-o is replaced whole (a new file renamed over it, no temporary left), not written in place', async () => {
    const id = newJobId();
    const r = route('atomic', (req) => (req.path === '/v1/generations' ? { status: 202, json: succeeded(`${base}/t/atomic`, id) } : png()));
    const folder = join(dir, 'atomic');
    mkdirSync(folder);
    const out = join(folder, 'a.png');
    writeFileSync(out, 'the earlier file');
    // A second name for the same file: a write in place would change it too; a rename leaves it be.
    linkSync(out, join(folder, 'keep.png'));
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out]);
    expect(res.code, res.stderr).toBe(0);
    expect(readFileSync(out).equals(PNG)).toBe(true);
    expect(readFileSync(join(folder, 'keep.png'), 'utf8')).toBe('the earlier file');
    expect(readdirSync(folder).sort()).toEqual(['a.png', 'keep.png']);
  });

  it('n 2 and the second image gone: exit 1, saying which file was written and the get command that downloads them again', async () => {
    const id = newJobId();
    const url = `${base}/t/partial`;
    const g = view(id, 'succeeded', {
      request: { prompt: 'a red circle', width: 64, height: 64, steps: 100, n: 2, init: 'gmm', model: 'toy', seed: 7 },
      outputs: [0, 1].map((i) => ({ index: i, seed: 7 + i, url: `${url}/img/${i}.png?sig=abc`, expires_at: new Date(Date.now() + 3_600_000).toISOString(), content_type: 'image/png', width: 64, height: 64 })),
    });
    const r = route('partial', (req) => (req.path === '/v1/generations' ? { status: 202, json: g } : req.path === '/img/0.png' ? png() : { status: 404, body: '' }));
    const out = join(dir, 'partial.png');
    const res = await cli(['generate', 'a red circle', '--n', '2', '--url', r.url, '--key', KEY, '-o', out]);
    expect(res.code).toBe(1);
    expect([existsSync(join(dir, 'partial-0.png')), existsSync(join(dir, 'partial-1.png'))]).toEqual([true, false]);
    expect(res.stderr).toContain(`generation ${id} has ended (succeeded): wrote ${join(dir, 'partial-0.png')}; clipag remote get ${id} --url ${r.url} -o ${out} downloads them all again`);
    expect(res.stderr).not.toContain('sig=abc');
  });

  it('an image whose index is past the request\'s n: an error, not the first file overwritten', async () => {
    const id = newJobId();
    const url = `${base}/t/bad-index`;
    const g = view(id, 'succeeded', { outputs: [{ index: 3, seed: 7, url: `${url}/img/0.png?sig=abc`, expires_at: new Date(Date.now() + 3_600_000).toISOString(), content_type: 'image/png', width: 64, height: 64 }] });
    const r = route('bad-index', (req) => (req.path === '/v1/generations' ? { status: 202, json: g } : png()));
    const out = join(dir, 'bad-index.png');
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/bad_output_index: image 3 of a generation of 1/);
    expect(existsSync(out)).toBe(false);
  });

  it("a queued generation's line says what the API says of the fleet (ADR 0040): a wait of minutes is a cold start; a queue it cannot read is left out", async () => {
    const id = newJobId();
    const url = `${base}/t/queue-note`;
    const cold = { workers_ready: 0, workers_busy: 0, workers_starting: 0, note: 'no worker is running: one is started when generations wait, which takes a few minutes (a machine boots and loads the model); the generation starts then' };
    const starting = { workers_ready: 0, workers_busy: 0, workers_starting: 1, note: 'a worker is starting (loading the model): the generation starts in a minute or two' };
    const r = route('queue-note', (req, nth) => {
      if (req.path === '/v1/generations') return { status: 202, json: { ...view(id, 'queued'), queue: cold }, headers: { 'preference-applied': 'wait=1' } };
      if (req.path === `/v1/generations/${id}`) return nth === 1 ? { status: 200, json: { ...view(id, 'queued'), queue: starting }, headers: { 'preference-applied': 'wait=1' } } : nth === 2 ? { status: 200, json: { ...view(id, 'queued'), queue: 5 }, headers: { 'preference-applied': 'wait=1' } } : { status: 200, json: succeeded(url, id) };
      return png();
    });
    const res = await cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', join(dir, 'queue-note.png')], {}, instantSleep());
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toContain(`created generation ${id} (queued (${cold.note}))`);
    expect(res.stderr).toContain(`${id}: queued (${starting.note})`);
    // A queue this version cannot read (a newer server's shape) is dropped, not taken for a foreign answer.
    expect(res.stderr.split('\n'), res.stderr).toContain(`clipag remote: ${id}: queued`);
  });

  it('--init URL is sent to the API as given (ADR 0038): nothing is read from disk or uploaded, and --strength goes with it', async () => {
    const id = newJobId();
    const url = `${base}/t/init-url`;
    const r = route('init-url', (req) => (req.path === '/v1/generations' ? { status: 200, json: succeeded(url, id) } : png()));
    const init = 'https://images.example.com/photos/cat.jpg?X-Amz-Signature=abc';
    const res = await cli(['generate', 'a red circle', '--init', init, '--strength', '0.3', '--url', r.url, '--key', KEY, '-o', join(dir, 'init-url.png')]);
    expect(res.code, res.stderr).toBe(0);
    expect(r.seen.filter((s) => s.path === '/v1/uploads')).toEqual([]);
    const posted = r.seen.find((s) => s.path === '/v1/generations' && s.method === 'POST');
    expect(JSON.parse(posted!.body)).toMatchObject({ prompt: 'a red circle', init, strength: 0.3 });
  });

  it('--init data: URI is sent to the API as given (ADR 0042), never read as a path', async () => {
    const id = newJobId();
    const url = `${base}/t/init-data`;
    const r = route('init-data', (req) => (req.path === '/v1/generations' ? { status: 200, json: succeeded(url, id) } : png()));
    const init = `data:image/png;base64,${Buffer.from(PNG).toString('base64')}`;
    const res = await cli(['generate', 'a red circle', '--init', init, '--strength', '0.3', '--url', r.url, '--key', KEY, '-o', join(dir, 'init-data.png')]);
    expect(res.code, res.stderr).toBe(0);
    expect(r.seen.filter((s) => s.path === '/v1/uploads')).toEqual([]);
    const posted = r.seen.find((s) => s.path === '/v1/generations' && s.method === 'POST');
    expect(JSON.parse(posted!.body)).toMatchObject({ prompt: 'a red circle', init, strength: 0.3 });
    // Checked here first, as the API would: a bad one is a usage error and nothing is sent.
    const asked = r.seen.length;
    await expect(cli(['generate', 'a red circle', '--init', 'data:image/png;base64,aGVsbG8=', '--url', r.url, '--key', KEY])).rejects.toThrow(/--init data:…: the data: URI's image cannot be an init image \(a PNG or a JPEG\)/);
    expect(r.seen.length).toBe(asked);
    // An API from before data: inits refuses the init by its older rule: the CLI says what to do instead.
    const older = route('data-older-api', () => envelope(400, 'validation_error', 'init must be "gmm", "noise", "upload:<id>" or the https URL of a PNG or a JPEG (at most 2000 characters)', 'init'));
    const old = await cli(['generate', 'a red circle', '--init', init, '--url', older.url, '--key', KEY]);
    expect(old.code).toBe(1);
    expect(old.stderr).toMatch(/; this API is from before data: URI inits: save the image to a file and give its path as --init \(it is uploaded first\)$/);
  });

  it('--init FILE whose POST answer is lost: the resume command has --init upload:ID, not the file, so running it uploads nothing and replays the job', async () => {
    const id = newJobId();
    const uploadId = newJobId();
    const url = `${base}/t/init-resume`;
    const grant = UploadView.parse({ upload_id: uploadId, object: 'upload', init: `upload:${uploadId}`, method: 'PUT', url: `${url}/put/${uploadId}?sig=abc`, headers: { 'Content-Type': 'image/png' }, expires_at: new Date(Date.now() + 900_000).toISOString(), bytes: PNG.length, max_bytes: 1 << 20 });
    let up = false;
    const r = route('init-resume', (req) => {
      if (req.path === '/v1/uploads') return { status: 201, json: grant };
      if (req.path.startsWith('/put/')) return { status: 200, body: '' };
      if (req.path === '/v1/generations') return up ? { status: 200, json: succeeded(url, id), headers: { 'idempotent-replayed': 'true' } } : 'drop';
      return png();
    });
    const init = join(dir, 'resume-init.png');
    writeFileSync(init, PNG);
    const argv = ['generate', 'a red circle', '--init', init, '--strength', '0.3', '--url', r.url, '--key', KEY, '-o', join(dir, 'resume.png'), '--idempotency-key', 'order-77'];
    const res = await cli(argv, {}, instantSleep());
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`--idempotency-key with --init ${init}: the file is uploaded again on every run`);
    expect(res.stderr).toContain(`uploaded ${init} as upload:${uploadId}`);
    const resume = resumeArgv(res.stderr);
    expect(resume).toContain(`upload:${uploadId}`);
    expect(resume).not.toContain(init);
    expect(resume.slice(-2)).toEqual(['--idempotency-key', 'order-77']);
    up = true;
    const again = await cli(resume.map((w) => (w === 'KEY' ? KEY : w)));
    expect(again.code, again.stderr).toBe(0);
    expect(r.seen.filter((s) => s.path === '/v1/uploads')).toHaveLength(1); // no second upload
    expect(new Set(r.seen.filter((s) => s.path === '/v1/generations').map((s) => s.headers['idempotency-key']))).toEqual(new Set(['order-77']));
    expect(again.stderr).toContain(`the API replayed generation ${id}`);
  });

  it('the local key file goes only to a loopback address (127.0.0.0/8, localhost, [::1]): never to a name that starts with "127."', async () => {
    const data = join(dir, 'loop-key');
    mkdirSync(join(data, 'servers'), { recursive: true });
    writeFileSync(join(data, 'local-api-key'), 'ck_local_key\n');
    // A clipag serve of this folder on port 8787, as its record says (this process stands in for it).
    writeFileSync(join(data, 'servers', 'a.json'), JSON.stringify({ pid: process.pid, host: hostId(), port: 8787 }));
    const id = newJobId();
    const seen: string[] = [];
    const fetch = fakeFetch(view(id, 'running'), seen);
    for (const url of ['http://127.attacker.example', 'http://127.0.0.1.nip.io:8787', 'http://localhost.attacker.example']) {
      await expect(cli(['get', id, '--url', url, '--timeout', '0'], { CLIPAG_DATA_DIR: data }, { fetch })).rejects.toThrow(/no API key for/);
    }
    expect(seen).toEqual([]);
    for (const url of ['http://127.0.0.2:8787', 'http://localhost:8787', 'http://[::1]:8787']) {
      const res = await cli(['get', id, '--url', url, '--timeout', '0'], { CLIPAG_DATA_DIR: data }, { fetch });
      expect(res.code, res.stderr).toBe(124); // read once (--timeout 0): still running
      expect(res.stderr).not.toContain('warning');
    }
    expect(seen.map((s) => s.split(' ').slice(1).join(' '))).toEqual(Array(3).fill('Bearer ck_local_key'));
  });

  it('the local key file goes only to a port a live clipag serve of its folder listens on (its record says): another listener on a loopback port gets nothing (review-tenancy F2)', async () => {
    const data = join(dir, 'port-key');
    mkdirSync(join(data, 'servers'), { recursive: true });
    writeFileSync(join(data, 'local-api-key'), 'ck_local_key\n');
    const id = newJobId();
    const seen: string[] = [];
    const fetch = fakeFetch(view(id, 'running'), seen);
    const get = (url: string) => cli(['get', id, '--url', url, '--timeout', '0'], { CLIPAG_DATA_DIR: data }, { fetch });
    // No server of this folder runs: the default port is someone else's listener, or nothing.
    await expect(get('http://127.0.0.1:8787')).rejects.toThrow(`no clipag serve of ${data} listens on port 8787 (--url http://127.0.0.1:8787/), so its key (${join(data, 'local-api-key')}) is not sent there: start one (npm start), or give the key with --key`);
    // One runs on 8790 (a live pid); a record of a process that has ended counts for nothing.
    writeFileSync(join(data, 'servers', 'live.json'), JSON.stringify({ pid: process.pid, host: hostId(), port: 8790 }));
    writeFileSync(join(data, 'servers', 'gone.json'), JSON.stringify({ pid: 2 ** 22 + 12345, host: hostId(), port: 8787 }));
    await expect(get('http://localhost:8787')).rejects.toThrow(/listens on port 8787 .*: it runs on port 8790; give that --url$/);
    expect(seen).toEqual([]);
    expect((await get('http://localhost:8790')).code).toBe(124);
    // --key is the caller's own choice: sent wherever --url says.
    expect((await cli(['get', id, '--url', 'http://127.0.0.1:8787', '--key', 'ck_given', '--timeout', '0'], { CLIPAG_DATA_DIR: data }, { fetch })).code).toBe(124);
    // A live server whose record names no port (a version from before ports were recorded): any port, as before.
    writeFileSync(join(data, 'servers', 'old.json'), JSON.stringify({ pid: process.pid, host: hostId() }));
    expect((await get('http://127.0.0.1:8787')).code).toBe(124);
    expect(seen.map((line) => line.split(' ').slice(1).join(' '))).toEqual(['Bearer ck_local_key', 'Bearer ck_given', 'Bearer ck_local_key']);
  });

  it('a key over plain http to another machine: a warning on stderr; none for https', async () => {
    const id = newJobId();
    const fetch = fakeFetch(view(id, 'running'), []);
    const plain = await cli(['get', id, '--url', 'http://api.example.com/prod', '--key', KEY, '--timeout', '0'], {}, { fetch });
    expect(plain.stderr).toMatch(/^clipag remote: warning: the API key goes to api\.example\.com over plain http/);
    const tls = await cli(['get', id, '--url', 'https://api.example.com/prod', '--key', KEY, '--timeout', '0'], {}, { fetch });
    expect(tls.stderr).not.toContain('warning');
  });
});

describe('the remote generate command printed to pick a run up', () => {
  const options = {
    url: { type: 'string' }, key: { type: 'string' }, timeout: { type: 'string' }, steps: { type: 'string' }, 'idempotency-key': { type: 'string' }, out: { type: 'string', short: 'o' },
  } as const;
  /** The printed command's words as a shell reads them, after "clipag remote generate". */
  const pasted = (printed: string) => execFileSync('bash', ['-c', `printf '%s\\0' ${printed}`], { encoding: 'utf8' }).split('\0').slice(0, -1).slice(3);

  it('pasted back, it parses: a flag it sets replaces the one given (not twice), and a prompt after -- stays the prompt', () => {
    const argv = ['--timeout', '60', '--steps', '5', '--', '-a red circle'];
    const { tokens } = nodeParseArgs({ args: argv, options, allowPositionals: true, strict: true, tokens: true });
    const printed = generateCommand(['clipag'], tokens, 'clipag-remote-K1', undefined, { timeout: '0' });
    const back = parseCliArgs({ args: pasted(printed), options, allowPositionals: true, strict: true });
    expect(back.values).toMatchObject({ timeout: '0', steps: '5', 'idempotency-key': 'clipag-remote-K1' });
    expect(back.positionals).toEqual(['-a red circle']);
    // Without a flag to set, the user's own is kept once.
    const again = parseCliArgs({ args: pasted(generateCommand(['clipag'], tokens, 'clipag-remote-K1', undefined)), options, allowPositionals: true, strict: true });
    expect(again.values).toMatchObject({ timeout: '60', 'idempotency-key': 'clipag-remote-K1' });
    expect(again.positionals).toEqual(['-a red circle']);
  });
});

describe('the README says what the commands do', () => {
  const flat = (text: string) => text.replace(/\s+/g, ' ');
  const readme = flat(readFileSync(join(REPO_ROOT, 'README.md'), 'utf8'));

  it("remote's retries: the help's own sentence, the quick retries of a refused local connection or an unknown host included", async () => {
    const { usage } = await import('../../cli/remote.ts');
    const sentence = /the gateway's own 429\/5xx and network errors back off .*? at most 12 tries a request/.exec(flat(usage))?.[0];
    expect(sentence).toContain('2 quick retries');
    expect(readme).toContain(sentence);
  });

  it('serve: a job interrupted by Ctrl-C runs again from step 0 on the next start (attempt 2), it does not resume', () => {
    expect(readme).not.toMatch(/goes back to the queue and resumes on the next start/);
    expect(readme).toContain('a running job goes back to the queue and runs again from step 0 on the next start, as attempt 2');
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
        // The command as this process was started (node bin/clipag.mjs), which a user can paste.
        const started = invocation(process.env, join(REPO_ROOT, 'bin', 'clipag.mjs'), process.cwd()).map(shellWord).join(' ');
        expect(started).toMatch(/^node \S*bin\/clipag\.mjs$/);
        expect(p.stderr()).toContain(`interrupted; generation ${id} goes on (not canceled): ${started} remote get ${id} --url ${r.url} -o ${join(dir, 'sigint.png')} waits for it again`);
      }
    });
  }

  // The POST held (Prefer: wait) when Ctrl-C comes: its job exists, its id not known yet. The stand-in
  // holds the first POST for ever and answers the second (the same Idempotency-Key) as the API answers
  // a replay; the real server's hold is in test/e2e/remote.test.ts.
  const heldPost = (id: string) => (req: Seen, nth: number): Answer =>
    req.path.endsWith('/cancel') ? { status: 200, json: view(id, 'canceled') } : req.method === 'POST' ? (nth === 1 ? 'hang' : { status: 200, json: view(id, 'queued'), headers: { 'idempotent-replayed': 'true' } }) : 'hang';

  for (const cancelOnInterrupt of [false, true]) {
    it(
      cancelOnInterrupt
        ? 'Ctrl-C during the held POST, --cancel-on-interrupt: the same POST again (same key, no Prefer: wait) gets the job, which is canceled'
        : 'Ctrl-C during the held POST: the command that gets the job (its Idempotency-Key), nothing canceled, nothing re-sent',
      async () => {
        const id = newJobId();
        const name = cancelOnInterrupt ? 'held-post-cancel' : 'held-post';
        const r = route(name, heldPost(id));
        const interrupt = new AbortController();
        const out = join(dir, `${name}.png`);
        const running = cli(['generate', 'a red circle', '--url', r.url, '--key', KEY, '-o', out, ...(cancelOnInterrupt ? ['--cancel-on-interrupt'] : [])], {}, { signal: interrupt.signal });
        await until('the held POST', () => r.seen.length > 0);
        interrupt.abort();
        const res = await running;
        expect(res.code).toBe(130);
        const posts = r.seen.filter((s) => s.path === '/v1/generations');
        const key = String(posts[0]!.headers['idempotency-key']);
        expect(posts[0]!.headers.prefer).toMatch(/^wait=\d+$/);
        const cancels = r.seen.filter((s) => s.path.endsWith('/cancel'));
        if (cancelOnInterrupt) {
          expect(posts).toHaveLength(2);
          expect(posts[1]!.headers['idempotency-key']).toBe(key);
          expect(posts[1]!.headers.prefer).toBeUndefined();
          expect(cancels.map((c) => c.path)).toEqual([`/v1/generations/${id}/cancel`]);
          expect(res.stderr).toContain(`interrupted; generation ${id} canceled (--cancel-on-interrupt)`);
        } else {
          expect(posts).toHaveLength(1);
          expect(cancels).toHaveLength(0);
          expect(res.stderr).toContain(`may have made a generation, not canceled (Idempotency-Key ${key}): clipag remote generate 'a red circle' --url ${r.url} --key KEY -o ${out} --idempotency-key ${key} gets it`);
        }
      },
    );
  }

  it('a real SIGINT during the held POST, --cancel-on-interrupt: the job is canceled, exit 130', async () => {
    const id = newJobId();
    const r = route('held-post-sigint', heldPost(id));
    const p = spawnRemote(['generate', 'a red circle', '--url', r.url, '-o', join(dir, 'held-post-sigint.png'), '--cancel-on-interrupt']);
    await until('the held POST', () => r.seen.length > 0);
    p.child.kill('SIGINT');
    expect(await p.exit).toBe(130);
    expect(r.seen.filter((s) => s.path.endsWith('/cancel')).map((s) => s.path)).toEqual([`/v1/generations/${id}/cancel`]);
    expect(p.stderr()).toContain(`interrupted; generation ${id} canceled (--cancel-on-interrupt)`);
  });
});

/** Through the verb dispatch (usage errors exit 2 with the usage), with this environment; the stand-in counts requests. */
async function viaMain(argv: string[], env: Record<string, string | undefined>): Promise<{ code: number; stderr: string }> {
  const err: string[] = [];
  for (const name of ['CLIPAG_API_URL', 'CLIPAG_API_KEY', 'CLIPAG_DATA_DIR', 'CLIPAG', 'CLIPAG_KEY']) vi.stubEnv(name, env[name]);
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

describe("clipag remote: argument errors exit 2 with the action's usage (not every action's), before any request", () => {
  const empty = join(dir, 'no-data');
  mkdirSync(empty, { recursive: true });
  const cases: Array<[string, string[], Record<string, string | undefined>, RegExp]> = [
    ['a missing prompt', ['generate'], {}, /give exactly one prompt/],
    ['two prompts', ['generate', 'a', 'b'], {}, /give exactly one prompt/],
    ['a --size that is no size', ['generate', 'a red circle', '--size', 'big'], {}, /--size must look like 128x96 \(or 128 for a square\), got "big"/],
    ['a one-side --size is a square, and the API rule applies to it', ['generate', 'a red circle', '--size', '100'], {}, /--size 100: the API takes sides of 64-1024 px, multiples of 32/],
    ['a negative --timeout meets its own range rule (the shared parser)', ['get', 'abc', '--timeout', '-5'], {}, /--timeout must be a number of seconds in \[0, 86400\], got "-5"/],
    ['-o=x.png (the shared parser)', ['generate', 'a red circle', '-o=x.png'], {}, /-o=x\.png: a short option takes its value after a space/],
    ['a flag given twice (the shared parser)', ['generate', 'a red circle', '--steps', '3', '--steps', '4'], {}, /--steps given twice \(3, 4\)/],
    ['batch -d=out (the shared parser)', ['batch', join(dir, 'unused.jsonl'), '-d=out'], {}, /-d=out: a short option takes its value after a space/],
    ['a --size the API does not take', ['generate', 'a red circle', '--size', '100x64'], {}, /--size 100x64: the API takes sides of 64-1024 px, multiples of 32/],
    ['-o in a folder that does not exist', ['generate', 'a red circle', '-o', join(dir, 'nowhere', 'x.png')], {}, /-o .*x\.png: the folder .*nowhere does not exist/],
    ['-o that is a folder', ['generate', 'a red circle', '-o', dir], {}, /is a folder; give a file name/],
    ['get -o in a folder that does not exist', ['get', 'abc', '-o', join(dir, 'nowhere', 'x.png')], {}, /the folder .*nowhere does not exist/],
    ['--strength without an init image', ['generate', 'a red circle', '--strength', '0.5'], {}, /--strength needs an init image/],
    ['a --model-version that is no content hash start', ['generate', 'a red circle', '--model-version', 'latest'], {}, /--model-version must be 12 to 64 lower-case hex digits/],
    ['a --model-version of 11 digits', ['generate', 'a red circle', '--model-version', '27443256b13'], {}, /--model-version must be 12 to 64 lower-case hex digits/],
    ['an --init file that is neither a PNG nor a JPEG', ['generate', 'a red circle', '--init', join(dir, 'notes.txt')], {}, /--init .*notes\.txt cannot be an init image: unreadable image: not a PNG or JPEG file/],
    ['--steps out of range', ['generate', 'a red circle', '--steps', '0'], {}, /--steps must be an integer in \[1, 500\], got "0"/],
    ['a bad --timeout', ['get', 'abc', '--timeout', 'soon'], {}, /--timeout must be a number of seconds/],
    ['an unknown action', ['lsit'], {}, /unknown action "lsit" \(known: generate, get, cancel, batch, webhook-secret, spend-limit, redeliver, list\)/],
    ['no action', [], {}, /give an action: generate, get, cancel, batch, webhook-secret, spend-limit, redeliver or list/],
    ['an unknown flag', ['cancel', 'abc', '--force'], {}, /unknown option --force/],
    ['a misspelt flag is named with the real one', ['generate', 'a red circle', '--stepz', '5'], {}, /unknown option --stepz \(did you mean --steps\?\)/],
    ['batch --parallel 0', ['batch', join(dir, 'unused.jsonl'), '--parallel', '0'], {}, /--parallel must be an integer in \[1, 16\], got "0"/],
  ];
  for (const [what, argv, env, message] of cases) {
    it(what, async () => {
      writeFileSync(join(dir, 'notes.txt'), 'not an image');
      const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
      const res = await viaMain(argv, { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY, ...env });
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr).toMatch(message);
      // The action's synopsis (all five for no action or an unknown one), then where the rest is: not
      // the whole usage, whose 90-odd lines would scroll the message away.
      const action = ['generate', 'get', 'cancel', 'batch', 'webhook-secret', 'spend-limit', 'redeliver', 'list'].includes(argv[0] ?? '') ? argv[0]! : undefined;
      const synopses = { generate: 'usage: clipag remote generate "PROMPT" [--negative T]', get: 'clipag remote get ID [-o out.png]', cancel: 'clipag remote cancel ID [--timeout SEC]', batch: 'clipag remote batch FILE.jsonl [-d DIR]', 'webhook-secret': 'clipag remote webhook-secret create|show|delete', 'spend-limit': 'clipag remote spend-limit show|set USD|delete', redeliver: 'clipag remote redeliver ID', list: 'clipag remote list [--status S]' };
      for (const [a, synopsis] of Object.entries(synopses)) {
        if (action === undefined || a === action) expect(res.stderr).toContain(action === undefined ? synopsis.replace(/^usage: /, '') : synopsis.replace(/^(usage: )?/, 'usage: '));
        else expect(res.stderr).not.toContain(synopsis.replace(/^usage: /, ''));
      }
      expect(res.stderr).not.toContain('Retries:');
      expect(res.stderr.trimEnd().split('\n').length).toBeLessThanOrEqual(12);
      expect(res.stderr.trimEnd().split('\n').at(-1)).toBe('(clipag remote --help shows the usage)');
      expect(r.seen).toEqual([]);
    });
  }

  // Not the command line's shape: the message, and one line that says where the usage is; the whole
  // usage (85 lines) after it would push the message off the screen.
  const brief = (stderr: string) => {
    expect(stderr).not.toContain('usage: clipag remote');
    expect(stderr.trimEnd().split('\n').at(-1)).toBe('(clipag remote --help shows the usage)');
  };

  it('no key for a local URL: exit 2 (as the help and README say), the message and a one-line hint, not the usage', async () => {
    const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
    for (const argv of [['generate', 'a red circle'], ['get', 'abc'], ['cancel', 'abc'], ['batch', join(dir, 'unused.jsonl')]]) {
      writeFileSync(join(dir, 'unused.jsonl'), '{"prompt": "a red circle"}\n');
      const res = await viaMain(argv, { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: undefined, CLIPAG_DATA_DIR: empty });
      expect(res.code, argv.join(' ')).toBe(2);
      expect(res.stderr).toMatch(/^clipag remote: no API key for http:\/\/127\.0\.0\.1:\d+ \(CLIPAG_API_URL\): pass --key KEY or set CLIPAG_API_KEY .*clipag keys create.*; for a local server, `npm start` writes one to .*no-data\/local-api-key/);
      expect(res.stderr.split('\n')).toHaveLength(2);
      brief(res.stderr);
    }
    expect(r.seen).toEqual([]);
    // The help and the README say so.
    const { usage } = await import('../../cli/remote.ts');
    expect(usage).toMatch(/2 bad usage \(a --url fetch\s+will not use, too\), or no API key/);
    expect(readFileSync(join(REPO_ROOT, 'README.md'), 'utf8')).toMatch(/2 bad usage \(.*\) or no API key/);
  });

  it('a damaged PNG as init_file or --init: a usage error found before anything is sent (no upload of the hour\'s spent)', async () => {
    const r = route('damaged-init', () => ({ status: 500, body: 'no request was to be made' }));
    const damaged = join(dir, 'damaged-init.png');
    writeFileSync(damaged, PNG.subarray(0, PNG.length - 20)); // cut short: the signature is fine, the file is not
    const file = join(dir, 'damaged-init.jsonl');
    writeFileSync(file, Array.from({ length: 5 }, (_, i) => JSON.stringify({ id: `l${i}`, prompt: 'a red circle', init_file: 'damaged-init.png' })).join('\n'));
    const res = await viaMain(['batch', file, '-d', join(dir, 'damaged-init-out')], { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/damaged-init\.jsonl: 5 problems, nothing was sent:\n  line 1: "init_file" damaged-init\.png cannot be an init image: corrupt PNG/);
    const one = await viaMain(['generate', 'a red circle', '--init', damaged, '-o', join(dir, 'never-damaged.png')], { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY });
    expect(one.code).toBe(2);
    expect(one.stderr).toContain(`--init ${damaged} cannot be an init image: corrupt PNG`);
    expect(r.seen).toEqual([]);
  });

  it('batch: an init upload the API refuses as an image (validation_error) is not uploaded again for the next lines; one it no longer has (upload_not_found) is, once', async () => {
    const grants: string[] = [];
    const handler = (notFound: boolean) => (req: Seen) => {
      if (req.method === 'GET' && req.path === '/v1/generations') return lookedUp(req);
      if (req.path === '/v1/uploads') {
        const uploadId = newJobId();
        grants.push(uploadId);
        return { status: 201, json: UploadView.parse({ upload_id: uploadId, object: 'upload', init: `upload:${uploadId}`, method: 'PUT', url: `${base}/t/${notFound ? 'gone' : 'refused'}-init/put/${uploadId}?sig=abc`, headers: { 'Content-Type': 'image/png' }, expires_at: new Date(Date.now() + 900_000).toISOString(), bytes: PNG.length, max_bytes: 1 << 20 }) };
      }
      if (req.path.startsWith('/put/')) return { status: 200, body: '' };
      const error = notFound
        ? { code: 'upload_not_found', message: 'no upload: upload the image first (POST /v1/uploads)', param: 'init', request_id: 'req_1' }
        : { code: 'validation_error', message: 'upload cannot be an init image: not usable', param: 'init', request_id: 'req_1' };
      return { status: 400, json: { error } };
    };
    writeFileSync(join(dir, 'shared-init.png'), PNG);
    const lines = Array.from({ length: 3 }, (_, i) => JSON.stringify({ id: `l${i}`, prompt: 'a red circle', init_file: 'shared-init.png' })).join('\n');
    const refusedFile = join(dir, 'refused-init.jsonl');
    writeFileSync(refusedFile, lines);
    const refused = route('refused-init', handler(false));
    const res = await cli(['batch', refusedFile, '--parallel', '1', '-d', join(dir, 'refused-init-out'), '--url', refused.url, '--key', KEY]);
    expect(res.code).toBe(1);
    expect(refused.seen.filter((s) => s.path === '/v1/uploads')).toHaveLength(1); // one upload for the file, not one per line and try
    grants.length = 0;
    const goneFile = join(dir, 'gone-init.jsonl');
    writeFileSync(goneFile, lines.split('\n')[0]!);
    const gone = route('gone-init', handler(true));
    await cli(['batch', goneFile, '-d', join(dir, 'gone-init-out'), '--url', gone.url, '--key', KEY]);
    expect(gone.seen.filter((s) => s.path === '/v1/uploads')).toHaveLength(2); // uploaded again once
  });

  it('batch: an init file over 10 MiB is for the deployment to judge (its grant\'s max_bytes), and a 413 for it is asked once, not once per line', async () => {
    // Noise does not compress: a valid PNG of about 11.5 MiB, which a deployment may take (up to 32 MiB).
    const side = 1960;
    const noise = new Uint8Array(side * side * 3);
    for (let i = 0, x = 1; i < noise.length; i++) noise[i] = (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) >>> 24;
    expect(noise.length).toBeGreaterThan(10 * 1024 * 1024);
    const big = fastPngEncode({ width: side, height: side, data: noise, channels: 3, depth: 8 });
    expect(big.length).toBeGreaterThan(10 * 1024 * 1024);
    writeFileSync(join(dir, 'big-init.png'), big);
    const r = route('big-init', (req) =>
      req.method === 'GET' && req.path === '/v1/generations'
        ? lookedUp(req)
        : req.path === '/v1/uploads'
        ? { status: 413, json: { error: { code: 'payload_too_large', message: 'uploads are limited to 10485760 bytes', param: 'bytes', request_id: 'req_1' } } }
        : { status: 500, body: 'not to be asked' },
    );
    const file = join(dir, 'big-init.jsonl');
    writeFileSync(file, Array.from({ length: 3 }, (_, i) => JSON.stringify({ id: `b${i}`, prompt: 'a red circle', init_file: 'big-init.png' })).join('\n'));
    const res = await cli(['batch', file, '--parallel', '1', '-d', join(dir, 'big-init-out'), '--url', r.url, '--key', KEY]);
    expect(res.code).toBe(1);
    expect(r.seen.filter((s) => s.path === '/v1/uploads')).toHaveLength(1);
    const results = readFileSync(join(dir, 'big-init-out', 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { status: string; error: { code: string } });
    expect(results.map((x) => [x.status, x.error.code])).toEqual(Array.from({ length: 3 }, () => ['refused', 'payload_too_large']));
  });

  it('batch without a journal: a line whose key the lookup names gets that generation with its upload (no upload grant, no new generation); one it finds nothing for is uploaded, and a 409 then says what happened', async () => {
    writeFileSync(join(dir, 'lookup-init.png'), PNG);
    const file = join(dir, 'lookup.jsonl');
    writeFileSync(file, ['found', 'raced'].map((id) => JSON.stringify({ id, prompt: 'a red circle', init_file: 'lookup-init.png' })).join('\n'));
    const url = `${base}/t/lookup`;
    const earlier = { ...succeeded(url, newJobId()), request: { ...view('x', 'succeeded').request, init: 'upload:made-by-an-earlier-run' } };
    const r = route('lookup', (req, nth) => {
      // In line order (--parallel 1): the first line's key made `earlier`; the second's made nothing it can name.
      if (req.method === 'GET' && req.path === '/v1/generations') return lookedUp(req, nth === 1 ? [earlier] : []);
      if (req.path === '/v1/uploads') {
        const uploadId = newJobId();
        return { status: 201, json: UploadView.parse({ upload_id: uploadId, object: 'upload', init: `upload:${uploadId}`, method: 'PUT', url: `${url}/put/${uploadId}?sig=abc`, headers: { 'Content-Type': 'image/png' }, expires_at: new Date(Date.now() + 900_000).toISOString(), bytes: PNG.length, max_bytes: 1 << 20 }) };
      }
      if (req.path.startsWith('/put/')) return { status: 200, body: '' };
      if (req.path === '/img/0.png') return png();
      if (req.method === 'POST' && req.path === '/v1/generations') {
        return (JSON.parse(req.body) as { init: string }).init === earlier.request.init
          ? { status: 200, json: earlier, headers: { 'idempotent-replayed': 'true' } }
          : envelope(409, 'idempotency_key_reused', 'this Idempotency-Key was already used with a different request body', 'Idempotency-Key');
      }
      return { status: 500, body: `not to be asked: ${req.method} ${req.path}` };
    });
    const out = join(dir, 'lookup-out');
    const res = await cli(['batch', file, '--parallel', '1', '-d', out, '--url', r.url, '--key', KEY]);
    expect(res.code, res.stderr).toBe(1);
    const lookups = r.seen.filter((s) => s.method === 'GET' && s.path === '/v1/generations');
    const posts = r.seen.filter((s) => s.method === 'POST' && s.path === '/v1/generations');
    expect(lookups.map((s) => [...s.query.keys()])).toEqual([['idempotency_key'], ['idempotency_key']]);
    // Each lookup is of the key its POST then sends.
    expect(lookups.map((s) => s.query.get('idempotency_key'))).toEqual(posts.map((s) => s.headers['idempotency-key']));
    // The found line: sent with the earlier run's upload, no grant for it; one grant in all, the other line's.
    expect(JSON.parse(posts[0]!.body)).toMatchObject({ init: 'upload:made-by-an-earlier-run' });
    expect(r.seen.filter((s) => s.path === '/v1/uploads')).toHaveLength(1);
    const results = readFileSync(join(out, 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { id: string; status: string; generation_id: string | null; error: { code: string; message: string } | null });
    expect(results[0]).toMatchObject({ id: 'found', status: 'succeeded', generation_id: earlier.id });
    expect(existsSync(join(out, 'found.png'))).toBe(true);
    expect(results[1]).toMatchObject({ id: 'raced', status: 'refused', generation_id: null, error: { code: 'idempotency_key_reused' } });
    expect(results[1]!.error!.message).toContain(`an earlier run sent this line (key ${posts[1]!.headers['idempotency-key']}) with another upload of its init_file`);
    expect(results[1]!.error!.message).toContain("the API did not name that run's generation");
    expect(results[1]!.error!.message).toMatch(/--retry-failed makes this line again \(a new generation\)/);
    // The found upload is the line's in the journal: a run after this one asks the API nothing about it.
    expect(readFileSync(join(out, 'journal.jsonl'), 'utf8')).toContain('"upload":"upload:made-by-an-earlier-run"');
  });

  it('batch against an API older than the lookup (its plain list, no key said back): read as nothing found, the line uploaded and sent as before', async () => {
    writeFileSync(join(dir, 'old-api-init.png'), PNG);
    const file = join(dir, 'old-api.jsonl');
    writeFileSync(file, JSON.stringify({ id: 'o', prompt: 'a red circle', init_file: 'old-api-init.png' }));
    const url = `${base}/t/old-api`;
    const someone = { ...succeeded(url, newJobId()), request: { ...view('x', 'succeeded').request, init: 'upload:another-generations' } };
    const made = succeeded(url, newJobId());
    const r = route('old-api', (req) => {
      if (req.method === 'GET' && req.path === '/v1/generations') return { status: 200, json: { object: 'list', data: [someone], next_cursor: null } };
      if (req.path === '/v1/uploads') return { status: 201, json: UploadView.parse({ upload_id: 'upl1', object: 'upload', init: 'upload:upl1', method: 'PUT', url: `${url}/put/upl1?sig=abc`, headers: { 'Content-Type': 'image/png' }, expires_at: new Date(Date.now() + 900_000).toISOString(), bytes: PNG.length, max_bytes: 1 << 20 }) };
      if (req.path.startsWith('/put/')) return { status: 200, body: '' };
      if (req.path === '/img/0.png') return png();
      if (req.method === 'POST' && req.path === '/v1/generations') return { status: 202, json: made };
      return { status: 500, body: 'not to be asked' };
    });
    const res = await cli(['batch', file, '-d', join(dir, 'old-api-out'), '--url', r.url, '--key', KEY]);
    expect(res.code, res.stderr).toBe(0);
    const post = r.seen.find((s) => s.method === 'POST' && s.path === '/v1/generations')!;
    expect(JSON.parse(post.body)).toMatchObject({ init: 'upload:upl1' });
  });

  it('batch: an image the API gave no score keeps its place in clip_scores (null), so each score stays with its file', async () => {
    const file = join(dir, 'unscored.jsonl');
    writeFileSync(file, JSON.stringify({ id: 'u', prompt: 'a red circle', n: 2 }));
    const url = `${base}/t/unscored`;
    const expires = new Date(Date.now() + 3_600_000).toISOString();
    const made = view(newJobId(), 'succeeded', {
      outputs: [
        { index: 0, seed: 7, url: `${url}/img/0.png?sig=a`, expires_at: expires, content_type: 'image/png', width: 64, height: 64 },
        { index: 1, seed: 8, url: `${url}/img/1.png?sig=b`, expires_at: expires, content_type: 'image/png', width: 64, height: 64, clip_score: 0.3 },
      ],
    });
    const r = route('unscored', (req) => {
      if (req.method === 'GET' && req.path === '/v1/generations') return { status: 200, json: { object: 'list', data: [], next_cursor: null } };
      if (req.path.startsWith('/img/')) return png();
      if (req.method === 'POST' && req.path === '/v1/generations') return { status: 202, json: made };
      return { status: 500, body: 'not to be asked' };
    });
    const res = await cli(['batch', file, '-d', join(dir, 'unscored-out'), '--url', r.url, '--key', KEY]);
    expect(res.code, res.stderr).toBe(0);
    const [line] = readFileSync(join(dir, 'unscored-out', 'results.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { files: string[]; seeds: number[]; clip_scores: (number | null)[] });
    expect(line).toMatchObject({ files: ['u-0.png', 'u-1.png'], seeds: [7, 8], clip_scores: [null, 0.3] });
  });

  it('a batch file with bad lines: exit 2, its problems and "nothing was sent", then a one-line hint, not the usage', async () => {
    const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
    const bad = join(dir, 'bad-lines.jsonl');
    writeFileSync(bad, ['{"prompt": "a red circle"}', 'not json', '{"prompt": "x", "steps": 0}'].join('\n'));
    const res = await viaMain(['batch', bad, '-d', join(dir, 'bad-lines-out')], { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/bad-lines\.jsonl: 2 problems, nothing was sent:\n  line 2: not JSON.*\n  line 3: steps:/);
    brief(res.stderr);
    expect(r.seen).toEqual([]);
  });

  // The real command in a child process for which mode 0o555 forbids writing (as root, the child runs as
  // nobody; see test/helpers/unprivileged.ts): refused before any request, as a missing -o folder is.
  it.skipIf(unprivilegedUnavailable)('-o in a folder that is not writable', async () => {
    const box = unprivilegedBox();
    try {
      const r = route('unwritable-o', () => ({ status: 500, body: 'no request was to be made' }));
      const res = await box.clipag(['remote', 'generate', 'a red circle', '-o', join(box.readOnly, 'x.png')], { CLIPAG_API_URL: r.url, CLIPAG_API_KEY: KEY });
      expect([res.code, r.seen]).toEqual([2, []]);
      expect(res.stderr).toContain(`-o ${join(box.readOnly, 'x.png')}: the folder ${box.readOnly} is not writable`);
      expect(readdirSync(box.readOnly)).toEqual([]);
    } finally {
      box.remove();
    }
  });

  it('a URL with a user name and password (--url or CLIPAG_API_URL): exit 2 at once, no request, the password never printed', async () => {
    const r = route('never', () => ({ status: 500, body: 'no request was to be made' }));
    const withCredentials = r.url.replace('http://', 'http://u:hunter2@');
    for (const [argv, env] of [
      [['get', newJobId(), '--url', withCredentials], { CLIPAG_API_KEY: KEY }],
      [['get', newJobId()], { CLIPAG_API_KEY: KEY, CLIPAG_API_URL: withCredentials }],
    ] as const) {
      const res = await viaMain([...argv], env);
      expect(res.code).toBe(2);
      expect(res.stderr).toMatch(/a user name or password in the URL is not how the API takes a key/);
      expect(res.stderr).not.toContain('hunter2');
    }
    expect(r.seen).toEqual([]);
  });

  it('a --url on a port fetch will not use: exit 2 at once (6 tries and 30 s before)', async () => {
    const t0 = Date.now();
    const res = await viaMain(['generate', 'a red circle', '--url', 'http://127.0.0.1:1', '-o', join(dir, 'bad-port.png')], { CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/--url http:\/\/127\.0\.0\.1:1\/: POST \/v1\/generations: fetch will not send it \(bad port\)/);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('get -o with n 2: a folder where one of its files goes is refused after the first read, not after the wait', async () => {
    const id = newJobId();
    const r = route('get-n2', (_req, nth) => (nth === 1 ? { status: 200, json: view(id, 'running', { request: { prompt: 'p', width: 64, height: 64, steps: 100, n: 2, init: 'gmm', model: 'toy', seed: 7 } }), headers: { 'preference-applied': 'wait=1' } } : 'hang'));
    mkdirSync(join(dir, 'g2-1.png'), { recursive: true });
    const res = await viaMain(['get', id, '--url', r.url, '-o', join(dir, 'g2.png'), '--timeout', '60'], { CLIPAG_API_KEY: KEY });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/g2-1\.png is a folder; give a file name/);
    expect(r.seen).toHaveLength(1);
  });

  it("a local key file is not sent to a remote --url: no key, exit 2, and the message does not point at the file", async () => {
    const data = join(dir, 'with-key');
    mkdirSync(data, { recursive: true });
    writeFileSync(join(data, 'local-api-key'), 'ck_local_key\n');
    const res = await viaMain(['get', 'abc', '--url', 'https://api.example.com/prod'], { CLIPAG_DATA_DIR: data });
    expect(res.code).toBe(2);
    expect(res.stderr).toMatch(/no API key for https:\/\/api\.example\.com \(--url\): pass --key KEY or set CLIPAG_API_KEY \(a deployment's operator issues keys with `clipag keys create`\)\n/);
  });

  it('the variables earlier READMEs exported for curl (CLIPAG, CLIPAG_KEY) are named when no key is found, with what the CLI reads', async () => {
    const res = await viaMain(['get', 'abc', '--url', 'https://api.example.com/prod'], { CLIPAG_DATA_DIR: join(dir, 'none'), CLIPAG: 'http://127.0.0.1:9', CLIPAG_KEY: 'ck_old_name' });
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("issues keys with `clipag keys create`); CLIPAG and CLIPAG_KEY are set, but this CLI reads CLIPAG_API_URL and CLIPAG_API_KEY\n");
    expect(res.stderr).not.toContain('ck_old_name');
  });
});

describe('clipag remote generate --model-version', () => {
  const HASH = '27443256b132e02554c7fdad7d64702ad56fe1c3f6db0a0cdaba3ad4500a020b';

  it('sends the pin as model_version, and prints the start of the bundle that made the images', async () => {
    const id = newJobId();
    const r = route('model-version', (req) => {
      if (req.path === '/v1/generations') return { status: 202, json: view(id, 'succeeded', { ...succeeded(`${base}/t/model-version`, id), model_version: HASH }) };
      return png();
    });
    const res = await cli(['generate', 'a red circle', '--model-version', HASH.slice(0, 12), '--url', r.url, '--key', KEY, '-o', join(dir, 'model-version.png')]);
    expect(res.code, res.stderr).toBe(0);
    const post = r.seen.find((s) => s.path === '/v1/generations')!;
    expect(JSON.parse(post.body).model_version).toBe(HASH.slice(0, 12));
    expect(res.stdout).toContain(`${id} succeeded (model toy ${HASH.slice(0, 12)}, 64x64`);
  });
});
