// The CLI's text at its boundaries (the text review F1, F5, F7; the time review F4), against the real
// API (the app on the local store, reached through RemoteIo.fetch) where there is one to ask:
// - a prompt's length and a key's name are counted by the API's own schema (trimmed, code points);
// - a batch file that is not UTF-8 is refused, naming the line and the byte, before anything is sent
//   (the API refuses such bytes in a body); a prompt from argv with U+FFFD is refused the same way;
// - a prompt shown on a terminal is cut at a code point, its bidi controls escaped;
// - a Retry-After past any date still prints the refusal, its limit and its request id.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_RETRY_AFTER_SEC, retryAfterMs, untilText } from '../../cli/api-client.ts';
import { run as keys } from '../../cli/keys.ts';
import { quotedPrompt, remote } from '../../cli/remote.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { harness, type Harness } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-cli-text-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const CAT = '\u{1F431}';
const RLO = '\u202E';

interface Seen {
  method: string;
  path: string;
  status: number;
  body: string;
}

/**
 * `clipag remote ARGV` against the app. The first POST /v1/generations the app answers ends the run
 * (as Ctrl-C would): what matters is whether the CLI sent it and what the API said, not the wait.
 */
async function cli(argv: string[]): Promise<{ code: number; stdout: string; stderr: string; seen: Seen[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const seen: Seen[] = [];
  const stop = new AbortController();
  const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => {
    const request = new Request(input, init);
    const body = request.method === 'POST' ? await request.clone().text() : '';
    const res = await h.app.request(request);
    const path = new URL(request.url).pathname;
    seen.push({ method: request.method, path, status: res.status, body });
    if (request.method === 'POST' && path === '/v1/generations') stop.abort();
    return res;
  }) as typeof fetch;
  const code = await remote([...argv, '--url', 'http://127.0.0.1:8787', '--key', h.alice], { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: fetchApp, signal: stop.signal, sleep: async () => {} });
  return { code, stdout: out.join('\n'), stderr: err.join('\n'), seen };
}

/** What the API itself answers a POST of this prompt: 202, or 400 naming `prompt`. */
async function apiTakes(prompt: string): Promise<boolean> {
  const res = await h.request('/v1/generations', { json: { prompt, width: 64, height: 64, steps: 1 } });
  if (res.status !== 202) expect((await res.json()) as object).toMatchObject({ error: { param: 'prompt' } });
  return res.status === 202;
}

describe('clipag remote generate: the prompt counted as the API counts it (F1)', () => {
  const prompts: Record<string, string> = {
    '151 emoji (302 UTF-16 units)': CAT.repeat(151),
    '300 emoji': CAT.repeat(300),
    '301 emoji': CAT.repeat(301),
    '290 letters and 20 trailing spaces': `${'a'.repeat(290)}${' '.repeat(20)}`,
    '301 letters': 'a'.repeat(301),
    'spaces only': '   ',
  };
  it.each(Object.keys(prompts))('%s: the CLI refuses it before any request exactly when the API refuses it', async (name) => {
    const prompt = prompts[name]!;
    const takes = await apiTakes(prompt);
    const run = cli(['generate', prompt, '--size', '64', '--steps', '1', '--timeout', '5', '-o', join(dir, 'never.png')]);
    if (takes) {
      const r = await run;
      expect(r.seen.find((s) => s.path === '/v1/generations')).toMatchObject({ method: 'POST', status: 202 });
      expect(JSON.parse(r.seen.find((s) => s.path === '/v1/generations')!.body).prompt).toBe(prompt);
    } else {
      await expect(run).rejects.toThrow(prompt.trim() ? /the prompt is 301 characters; the API takes at most 300/ : /the prompt is empty/);
    }
  });

  it('--negative: the same rule, named as --negative', async () => {
    await expect(cli(['generate', 'a red circle', '--negative', CAT.repeat(301)])).rejects.toThrow(/--negative is 301 characters; the API takes at most 300/);
    const r = await cli(['generate', 'a red circle', '--negative', CAT.repeat(200), '--size', '64', '--steps', '1', '-o', join(dir, 'never.png')]);
    expect(r.seen.find((s) => s.path === '/v1/generations')?.status).toBe(202);
  });
});

describe('clipag keys create --name: counted as ApiKeyRecord counts it (F1)', () => {
  async function create(name: string): Promise<{ code: number; lines: string[] }> {
    const lines: string[] = [];
    const code = await keys(['create', '--name', name, '--json'], h.keys, (l) => lines.push(l));
    return { code, lines };
  }
  it('60 emoji (120 UTF-16 units) and 100 letters with spaces around are names; 101 emoji is not, and the count says 101', async () => {
    const emoji = await create(CAT.repeat(60));
    expect(emoji.code).toBe(0);
    expect(JSON.parse(emoji.lines[0]!).name).toBe(CAT.repeat(60));
    expect((await create(`  ${'n'.repeat(100)}  `)).code).toBe(0);
    const errors: string[] = [];
    const original = console.error;
    console.error = (...a: unknown[]) => void errors.push(a.join(' '));
    try {
      expect((await create(CAT.repeat(101))).code).toBe(2);
    } finally {
      console.error = original;
    }
    expect(errors.join('\n')).toContain('--name must be at most 100 characters (got 101)');
  });
});

describe('clipag remote generate: a prompt from argv with U+FFFD (F7)', () => {
  it('is refused before any request, saying the terminal passed text that is not UTF-8; a lone surrogate too', async () => {
    // What Node makes of argv bytes "a red caf\xe9 circle" from a Latin-1 terminal.
    for (const prompt of ['a red caf\uFFFD circle', 'a red caf\uD83D circle']) {
      await expect(cli(['generate', prompt])).rejects.toThrow(/the prompt holds U\+FFFD .*not UTF-8 \(set a UTF-8 locale/);
    }
    await expect(cli(['generate', 'a red circle', '--negative', 'caf\uFFFD'])).rejects.toThrow(/--negative holds U\+FFFD/);
  });
});

describe('clipag remote batch: a file that is not UTF-8 (F7)', () => {
  const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));

  it('is refused before any request, naming the line and the byte, every such line; the API refuses the same bytes', async () => {
    const lines = ['{"id":"ok","prompt":"a red circle","steps":1,"width":64}', '{"id":"l2","prompt":"a red caf\u00e9 circle","steps":1,"width":64}', '', '{"id":"l4","prompt":"na\u00efve","steps":1,"width":64}'];
    const file = join(dir, 'latin1.jsonl');
    const bytes = latin1(lines.join('\n'));
    writeFileSync(file, bytes);
    const run = cli(['batch', file, '-d', join(dir, 'latin1-out')]);
    await expect(run).rejects.toThrow(/latin1\.jsonl: 2 problems, nothing was sent/);
    const message = await run.catch((e: Error) => e.message);
    const l2 = bytes.indexOf(0xe9);
    const l4 = bytes.indexOf(0xef);
    expect(message).toContain(`line 2: not UTF-8 (byte ${l2} of the file, 0xE9): save the file as UTF-8`);
    expect(message).toContain(`line 4: not UTF-8 (byte ${l4} of the file, 0xEF): save the file as UTF-8`);
    expect(message).not.toContain('line 1:');
    // As the API answers the line's bytes sent as a body.
    const res = await h.app.request('/v1/generations', { method: 'POST', headers: { authorization: `Bearer ${h.alice}`, 'content-type': 'application/json' }, body: latin1(lines[1]!) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toContain('not valid UTF-8');
  });

  it('a UTF-16 file (Notepad\'s "Unicode") is one problem, said as such', async () => {
    const file = join(dir, 'utf16.jsonl');
    writeFileSync(file, Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('{"prompt":"a red circle"}\n', 'utf16le')]));
    await expect(cli(['batch', file, '-d', join(dir, 'utf16-out')])).rejects.toThrow(/utf16\.jsonl is UTF-16 \(it starts with a UTF-16 byte-order mark\), not UTF-8: save it as UTF-8/);
    // The same without its mark: valid UTF-8 byte for byte, it was read as lines of "not JSON".
    writeFileSync(file, Buffer.from('{"prompt":"a red circle"}\n{"prompt":"a blue star"}\n', 'utf16le'));
    await expect(cli(['batch', file, '-d', join(dir, 'utf16-out')])).rejects.toThrow(/utf16\.jsonl is UTF-16 \(little-endian, without a byte-order mark: every other byte is 0\), not UTF-8: save it as UTF-8/);
  });

  it('UTF-8 with a byte-order mark, CRLF and a U+FFFD its writer put there is sent as written', async () => {
    const file = join(dir, 'bom.jsonl');
    writeFileSync(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"id":"b1","prompt":"caf\u00e9 \uFFFD \u{1F431}","steps":1,"width":64}\r\n', 'utf8')]));
    const r = await cli(['batch', file, '-d', join(dir, 'bom-out')]);
    const post = r.seen.find((s) => s.path === '/v1/generations');
    expect(post?.status, r.stderr).toBe(202);
    expect(JSON.parse(post!.body).prompt).toBe('caf\u00e9 \uFFFD \u{1F431}');
  });
});

describe('a prompt shown on a terminal (F5)', () => {
  it('quotedPrompt cuts at a code point, never inside a surrogate pair, and escapes bidi controls', () => {
    const shown = quotedPrompt(`a${CAT.repeat(70)}`, 60);
    expect(shown).toBe(JSON.stringify(`a${CAT.repeat(58)}…`));
    expect(shown).not.toMatch(/\\ud83d/);
    expect(quotedPrompt(CAT.repeat(60), 60)).toBe(JSON.stringify(CAT.repeat(60)));
    expect(quotedPrompt(`red circle ${RLO}elcric der \u2066x\u2069`, 60)).toBe('"red circle \\u202eelcric der \\u2066x\\u2069"');
    // What was escaped reads back as the prompt.
    expect(JSON.parse(quotedPrompt(`a ${RLO}b\u202Ac`, 60))).toBe(`a ${RLO}b\u202Ac`);
  });

  it('clipag remote list: an emoji prompt is cut at 60 code points, in whole emoji, and an RLO prints as \\u202e; get prints a warning\'s RLO the same way', async () => {
    const now = new Date();
    // 42 code points (82 UTF-16 units, cut before): shown whole. 72: cut to 59 and "…".
    const short = newJobRecord({ id: newJobId(now.getTime() - 2000), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `aa${CAT.repeat(40)}`, model: 'toy', width: 64, height: 64, steps: 10 }) });
    const long = newJobRecord({ id: newJobId(now.getTime() - 1000), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `aa${CAT.repeat(70)}`, model: 'toy', width: 64, height: 64, steps: 10 }) });
    const bidi = newJobRecord({ id: newJobId(now.getTime()), owner: 'acct_alice', now, spec: GenerationSpec.parse({ prompt: `red circle ${RLO}elcric der`, model: 'toy', width: 64, height: 64, steps: 10 }) });
    await h.jobs.create({ ...short, status: 'succeeded' });
    await h.jobs.create({ ...long, status: 'succeeded' });
    await h.jobs.create({ ...bidi, status: 'succeeded', warnings: [`"red circle ${RLO}elcric der": model toy does not know the word "elcric"`] });
    const r = await cli(['list']);
    expect(r.code, r.stderr).toBe(0);
    const longLine = r.stdout.split('\n').find((l) => l.startsWith(long.id))!;
    expect(longLine).toContain(JSON.stringify(`aa${CAT.repeat(57)}…`));
    expect(longLine).not.toMatch(/\\ud83d/);
    expect(r.stdout.split('\n').find((l) => l.startsWith(short.id))).toMatch(new RegExp(`  ${JSON.stringify(`aa${CAT.repeat(40)}`)}$`, 'u'));
    const bidiLine = r.stdout.split('\n').find((l) => l.startsWith(bidi.id))!;
    expect(bidiLine).toContain('"red circle \\u202eelcric der"');
    expect(r.stdout).not.toContain(RLO);
    const got = await cli(['get', bidi.id, '--timeout', '5']);
    expect(got.stderr).toContain('warning: "red circle \\u202eelcric der": model toy does not know');
    expect(got.stderr).not.toContain(RLO);
  });
});

describe('a Retry-After past any date (time review F4)', () => {
  it('retryAfterMs takes at most 2^31 s (RFC 9111); untilText never throws', () => {
    expect(retryAfterMs('9999999999999')).toBe(MAX_RETRY_AFTER_SEC * 1000);
    expect(retryAfterMs('9'.repeat(400))).toBe(MAX_RETRY_AFTER_SEC * 1000);
    expect(retryAfterMs('7126')).toBe(7_126_000);
    expect(untilText(Date.parse('2026-12-01T00:00:00Z'))).toBe('2026-12-01T00:00:00.000Z');
    expect(untilText(Date.now() + 9999999999999 * 1000)).toBe('a time past any date');
  });

  it('clipag remote list against a server that asks for 9999999999999 s: the refusal, its limit and its request id, exit 1', async () => {
    const server = createServer((_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '9999999999999', 'ratelimit-policy': '"requests";q=600;w=60', ratelimit: '"requests";r=0;t=60' });
      res.end(JSON.stringify({ error: { code: 'rate_limited', message: 'over the limit', param: null, request_id: 'req_x' } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
      const err: string[] = [];
      const code = await remote(['list', '--url', url, '--key', 'ck_x_y', '--timeout', '5'], { env: {}, out: () => {}, err: (l) => err.push(l) });
      expect(code).toBe(1);
      expect(err.join('\n')).toMatch(
        /^clipag remote: refused for now: GET \S*\/v1\/generations: 429 rate_limited: over the limit \[request_id req_x\] \(the limit: "requests" \(600 per 60 s\)\); it asks to wait 2147483648 s, about 596523\.2 h \(until \d{4}-\d\d-\d\dT[\d:.]+Z\), past --timeout 5 s/,
      );
      expect(err.join('\n')).not.toContain('Invalid time value');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
