// `clipag remote` against an API one version newer than itself (the compatibility review, F9). No newer
// version exists here, so the newer server is a stand-in (the client's fetch): each answer is the real
// API's view of a generation (made by this version's app, in beforeAll) with what a newer version adds.
// The older client must read it (and keep what it does not know, for --json), take a status it does not
// know for one that has not ended, and still refuse an answer that is not the API's at all.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipagClient } from '../../cli/api-client.ts';
import { remote } from '../../cli/remote.ts';
import { EstimateView } from '../../functions/schemas.ts';
import { encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { GenerationView } from '../../shared/schemas/view.ts';
import { harness } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-remote-compat-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const KEY = 'ck_testkey_secretsecretsecretsecret';
const BASE = 'http://127.0.0.1:9/api';
const PNG = encodePng(solidImage(64, 64, [0.2, 0.4, 0.6]));

/** A queued generation as this version's API answers its POST (a real answer, checked by its schema). */
let queued: Record<string, any>;
beforeAll(async () => {
  const h = await harness();
  try {
    const res = await h.request('/v1/generations', { json: { prompt: 'a red circle', width: 64, height: 64, steps: 2 } });
    expect(res.status).toBe(202);
    queued = (await res.json()) as Record<string, any>;
    expect(GenerationView.safeParse(queued).success).toBe(true);
  } finally {
    await h.close();
  }
});

/** The real view, succeeded with one image the stand-in serves at /img/0.png. */
function succeeded(): Record<string, any> {
  const now = new Date().toISOString();
  const g = {
    ...structuredClone(queued),
    status: 'succeeded',
    started_at: now,
    finished_at: now,
    progress: { step: 2, total: 2, attempt: 1 },
    outputs: [{ index: 0, seed: 7, url: `${BASE}/img/0.png?sig=abc`, expires_at: now, content_type: 'image/png', width: 64, height: 64, clip_score: 0.25 }],
    outputs_expire_at: now,
  };
  expect(GenerationView.safeParse(g).success).toBe(true);
  return g;
}

/**
 * What a newer version adds, one thing each, and whether the API's own schema (which this client
 * checked answers with before) refuses the view for it: nested objects it closes, enums it names.
 */
const ADDITIONS: Record<string, { add: (g: Record<string, any>) => Record<string, any>; refusedByView: boolean }> = {
  'a request parameter': { add: (g) => ({ ...g, request: { ...g.request, guidance: 3 } }), refusedByView: true },
  'a usage figure': { add: (g) => ({ ...g, usage: { ...g.usage, gpu_seconds: 1.5 } }), refusedByView: true },
  'a policy category': { add: (g) => ({ ...g, content_flags: [{ rule: 'kids-privacy', category: 'privacy', term: 'home address', message: 'names a private place', param: 'prompt' }] }), refusedByView: true },
  'an output check action': {
    add: (g) => ({ ...g, outputs: g.outputs.map((o: object) => ({ ...o, format: 'png', content_flags: [{ rule: 'logo', category: 'trademark', action: 'blur', concept: 'a logo', cosine: 0.31, message: 'looks like a logo' }] })) }),
    refusedByView: true,
  },
  'a webhook state': { add: (g) => ({ ...g, webhook: { url: 'https://example.com/hook', status: 'retrying', attempts: 1, last_error: null, events: ['generation.succeeded'] } }), refusedByView: true },
  'a progress figure': { add: (g) => ({ ...g, progress: { ...g.progress, eta_sec: 12 } }), refusedByView: false },
  'a top-level field': { add: (g) => ({ ...g, priority: 'high' }), refusedByView: false },
};
/** Every addition at once. */
const newer = (g: Record<string, any>) => Object.values(ADDITIONS).reduce((acc, { add }) => add(acc), g);

interface Seen {
  method: string;
  path: string;
  headers: Headers;
}
/** The newer server: `answer` gives each API request's status and JSON; /img/ paths serve the PNG. */
function standIn(answer: (method: string, path: string, nth: number) => { status: number; json: unknown; headers?: Record<string, string> }): { fetch: typeof fetch; seen: Seen[] } {
  const seen: Seen[] = [];
  const fetchFn = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(String(input));
    const method = init?.method ?? 'GET';
    const path = url.pathname.replace(/^\/api/, '');
    seen.push({ method, path: `${path}${url.search}`, headers: new Headers(init?.headers) });
    if (path.startsWith('/img/')) return new Response(PNG, { headers: { 'content-type': 'image/png' } });
    const nth = seen.filter((s) => s.method === method && s.path.split('?')[0] === path).length;
    const a = answer(method, path, nth);
    return new Response(JSON.stringify(a.json), { status: a.status, headers: { 'content-type': 'application/json', ...a.headers } });
  }) as typeof fetch;
  return { fetch: fetchFn, seen };
}

async function cli(argv: string[], fetchFn: typeof fetch): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await remote([...argv, '--url', BASE, '--key', KEY], { env: {}, out: (l) => out.push(l), err: (l) => err.push(l), fetch: fetchFn });
  return { code, stdout: out.join('\n'), stderr: err.join('\n') };
}

const client = (fetchFn: typeof fetch, notes: string[] = []) => new ClipagClient({ url: BASE, key: KEY, note: (l) => notes.push(l), fetch: fetchFn });
const soon = () => ({ deadline: Date.now() + 30_000 });

describe.concurrent('clipag remote against a newer API', () => {
  it.each(Object.keys(ADDITIONS))('reads a generation with %s, and keeps it in the answer', async (what) => {
    const { add, refusedByView } = ADDITIONS[what]!;
    const answer = add(succeeded());
    expect(GenerationView.safeParse(answer).success).toBe(!refusedByView);
    const server = standIn(() => ({ status: 200, json: answer }));
    const { generation } = await client(server.fetch).getGeneration(answer.id, { ...soon(), waitSec: 0 });
    expect(generation).toEqual(answer);
  });

  it('generate: the POST a newer API answered is read (not "lost"): the image written, exit 0, the answer in --json whole, a new category shown as it is', async () => {
    const answer = newer(succeeded());
    const server = standIn((method, path) => (method === 'POST' && path === '/v1/generations' ? { status: 202, json: answer } : { status: 404, json: { error: { code: 'not_found', message: 'no route', param: null, request_id: 'r' } } }));
    const out = join(dir, 'newer.png');
    const res = await cli(['generate', 'a red circle', '-o', out, '--json'], server.fetch);
    expect(res.code, res.stderr).toBe(0);
    expect(readFileSync(out).equals(PNG)).toBe(true);
    expect(JSON.parse(res.stdout)).toEqual(answer);
    expect(res.stderr).not.toMatch(/a clipag API|idempotency-key/i);
    expect(server.seen.filter((s) => s.method === 'POST')).toHaveLength(1);
    const text = await cli(['generate', 'a red circle', '-o', join(dir, 'newer-text.png')], server.fetch);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toContain('content policy (privacy): "home address" names a private place');
    expect(text.stderr).toContain('output check (trademark, blur) on image 0: looks like "a logo" (cosine 0.310): looks like a logo');
  });

  it('a 404 is told apart by its param, not its wording: param "id" is a wrong id; null with the route wording is a wrong URL', async () => {
    const notFound = (message: string, param: string | null) => standIn(() => ({ status: 404, json: { error: { code: 'not_found', message, param, request_id: 'r' } } }));
    const byParam = await cli(['get', queued.id, '-o', join(dir, 'x.png')], notFound('generation not found', 'id').fetch);
    expect(byParam.code).toBe(1);
    expect(byParam.stderr).toContain(`clipag remote: no generation ${queued.id} for this key's account (404 not_found: generation not found [request_id r]); check the id`);
    // A server from before the param: its wording still says which.
    const byText = await cli(['get', queued.id, '-o', join(dir, 'x.png')], notFound(`no generation ${queued.id}`, null).fetch);
    expect(byText.stderr).toContain('check the id');
    const route = await cli(['get', queued.id, '-o', join(dir, 'x.png')], notFound(`no route for GET /v1/generations/${queued.id}`, null).fetch);
    expect(route.code).toBe(1);
    expect(route.stderr).toMatch(/the API's base address/);
    expect(route.stderr).not.toContain('check the id');
  });

  it('a status this version does not know is said once, shown as it is, and not taken for an end: the run reads on until the generation ends', async () => {
    const paused = { ...newer(queued), status: 'paused', started_at: queued.created_at };
    expect(GenerationView.safeParse(paused).success).toBe(false);
    // Held reads (Preference-Applied), as the API answers a GET with Prefer: wait: paused twice, then succeeded.
    const server = standIn((_m, _p, nth) => ({ status: 200, json: nth <= 2 ? paused : newer(succeeded()), headers: { 'preference-applied': 'wait=1' } }));
    const res = await cli(['get', queued.id, '-o', join(dir, 'paused.png')], server.fetch);
    expect(res.code, res.stderr).toBe(0);
    expect(server.seen.filter((s) => s.method === 'GET' && s.path.startsWith('/v1/'))).toHaveLength(3);
    const said = res.stderr.split('\n').filter((l) => l.includes('a status this clipag does not know'));
    expect(said).toEqual([`clipag remote: generation ${queued.id} is "paused", a status this clipag does not know (the API is newer than it): not taken for an end, it is waited on until the generation succeeds, fails or is canceled`]);
    expect(res.stdout).toContain(`${queued.id} succeeded`);
  });

  it('a status this version does not know until --timeout: exit 124, the generation shown "still paused", not failed and not "not a clipag API"', async () => {
    const paused = { ...queued, status: 'paused' };
    const server = standIn(() => ({ status: 200, json: paused, headers: { 'preference-applied': 'wait=1' } }));
    const res = await cli(['get', queued.id, '--timeout', '1'], server.fetch);
    expect(res.code, res.stderr).toBe(124);
    expect(res.stderr).toContain(`generation ${queued.id} is still paused`);
    expect(res.stderr).not.toContain('a clipag API');
  });

  it('the Idempotency-Key lookup finds a generation a newer API shows', async () => {
    const answer = newer(succeeded());
    const server = standIn(() => ({ status: 200, json: { object: 'list', data: [answer], next_cursor: null, has_more: false }, headers: { 'idempotency-key': 'order-7' } }));
    expect(await client(server.fetch).generationByKey('order-7', soon())).toEqual(answer);
  });

  it("an estimate with a basis method this version does not know passes (its figures are not read)", async () => {
    const estimate = { object: 'estimate', model: 'toy', width: 64, height: 64, steps: 2, worker_seconds: { median: 1, p90: null }, cost_usd: null, runs: 3, basis: { method: 'extrapolated', width: 32, height: 32, sizes: [{ width: 32, height: 32 }] }, note: null, hourly_usd: null };
    expect(EstimateView.safeParse(estimate).success).toBe(false);
    const server = standIn(() => ({ status: 200, json: estimate }));
    expect(await client(server.fetch).estimate({ prompt: 'a red circle' }, soon())).toEqual(estimate);
  });
});

describe.concurrent('clipag remote: what is not the API is still refused', () => {
  const notOne: Record<string, (g: Record<string, any>) => unknown> = {
    'another object': (g) => ({ ...g, object: 'job' }),
    'a status that is not text': (g) => ({ ...g, status: 3 }),
    'no outputs': ({ outputs: _outputs, ...g }) => g,
    'an output without its URL': (g) => ({ ...g, outputs: [{ index: 0, seed: 7 }] }),
    'a list': () => [succeeded()],
  };
  it.each(Object.keys(notOne))('%s: a POST answered so is refused as not a generation, and said lost (its key printed)', async (what) => {
    const server = standIn(() => ({ status: 202, json: notOne[what]!(newer(succeeded())) }));
    const res = await cli(['generate', 'a red circle', '-o', join(dir, 'not-one.png'), '--idempotency-key', 'order-11'], server.fetch);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/POST \/api\/v1\/generations: 202 not_a_generation: the answer is not a generation .*\(is http:\/\/127\.0\.0\.1:9 a clipag API\?\); the POST was sent .*--idempotency-key order-11 gets it/);
    expect(res.stderr).not.toContain('TypeError');
  });

  it('a generation in a list that is not one: the lookup refuses the list', async () => {
    const server = standIn(() => ({ status: 200, json: { object: 'list', data: [{ id: 'x', object: 'generation' }], next_cursor: null }, headers: { 'idempotency-key': 'k' } }));
    await expect(client(server.fetch).generationByKey('k', soon())).rejects.toMatchObject({ name: 'ApiError', code: 'not_a_list' });
  });
});

