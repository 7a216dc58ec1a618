// Seeded random requests against every route, through the real app on the local adapters: whatever a
// caller sends (fields of the wrong type, extreme numbers, odd Unicode, unknown keys, deep nesting,
// broken JSON, oversized bodies, odd Authorization and other headers, queries and ids), the answer is never a 5xx, an error is always the one
// envelope, and a success is JSON. The seed is fixed, so a failure reproduces; the request that
// failed is in the assertion's message.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rng } from '../helpers/rng.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
let created: { id: string };
beforeAll(async () => {
  h = await harness();
  // Made first: the random POSTs may fill the account's active-job limit.
  created = (await (await h.request('/v1/generations', { json: { prompt: 'a red circle', steps: 2, width: 64, height: 64 } })).json()) as { id: string };
});
afterAll(() => h.close());

const STRINGS = [
  '', ' ', 'a', 'a red circle', 'x'.repeat(301), 'x'.repeat(5000), '\u0000', '\u202e\u200b', '🙂'.repeat(80), 'Ｐｉｋａｃｈｕ', '&amp;&#0;&#x110000;',
  'upload:', 'upload:upl0000000000000000000001', 'upload:../../etc/passwd', 'gmm', 'noise', 'toy', '../x', '%00', 'null', '1e309',
  'https://example.com/hook', 'http://169.254.169.254/latest', 'http://[::1]:80/x', 'javascript:alert(1)', 'succeeded', 'queued', '2026-13-45',
  '\ud800', 'a\nb', '__proto__', 'constructor',
];
const NUMBERS = [0, -0, 1, -1, 2, 32, 64, 224, 1024, 2048, 4096, 0.5, 1.5, -1e-300, 1e308, -1e308, 2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 2, 1e21, 3.14159];

function value(r: () => number, depth = 0): unknown {
  const k = Math.floor(r() * (depth > 3 ? 5 : 8));
  switch (k) {
    case 0:
      return STRINGS[Math.floor(r() * STRINGS.length)];
    case 1:
      return NUMBERS[Math.floor(r() * NUMBERS.length)];
    case 2:
      return r() < 0.5;
    case 3:
      return null;
    case 4:
      return Math.floor(r() * 1e6) - 5e5;
    case 5:
      return Array.from({ length: Math.floor(r() * 4) }, () => value(r, depth + 1));
    case 6: {
      const o: Record<string, unknown> = {};
      for (let i = Math.floor(r() * 4); i > 0; i--) o[STRINGS[Math.floor(r() * STRINGS.length)]! || 'k'] = value(r, depth + 1);
      return o;
    }
    default:
      return { text: STRINGS[Math.floor(r() * STRINGS.length)], weight: NUMBERS[Math.floor(r() * NUMBERS.length)] };
  }
}

const GENERATION_FIELDS = ['prompt', 'prompts', 'negative_prompt', 'width', 'height', 'steps', 'n', 'seed', 'init', 'strength', 'model', 'webhook_url', 'metadata', 'recipe', 'style', 'content_weight'];
const UPLOAD_FIELDS = ['content_type', 'bytes', 'purpose'];

/** Values a caller could mean, for requests that pass validation and reach the policy, the limits and the store. */
const PLAUSIBLE: Record<string, unknown[]> = {
  prompt: ['a red circle', 'Pikachu plush', 'p 1 k a c h u', 'a nurse at work', 'a portrait in the style of a famous painter', 'mickey m o u s e', '🅿🅸🅺🅰🅲🅷🆄', 'a cat & a dog'],
  negative_prompt: ['blurry', 'a blue square', 'Batman'],
  steps: [1, 2, 3],
  n: [1, 2, 4],
  seed: [0, 1, 4294967295],
  init: ['gmm', 'noise', 'upload:upl0000000000000000000001'],
  width: [64, 96, 128],
  height: [64, 96],
  webhook_url: ['https://example.com/hook', 'http://127.0.0.1:9/x'],
  metadata: [{ order: 'A-1' }, {}],
  model: ['toy'],
};

/** A valid-looking body with one to three fields changed, removed or added; sometimes not an object at all. */
function body(r: () => number, base: Record<string, unknown>, fields: readonly string[]): unknown {
  if (r() < 0.1) return value(r);
  const b: Record<string, unknown> = { ...base };
  if (fields === GENERATION_FIELDS && r() < 0.4) {
    for (const [field, values] of Object.entries(PLAUSIBLE)) if (r() < 0.3) b[field] = values[Math.floor(r() * values.length)];
    return b;
  }
  for (let i = 1 + Math.floor(r() * 3); i > 0; i--) {
    const roll = r();
    const field = roll < 0.8 ? fields[Math.floor(r() * fields.length)]! : STRINGS[Math.floor(r() * STRINGS.length)]! || 'extra';
    if (roll < 0.15) delete b[field];
    else b[field] = value(r);
  }
  return b;
}

/** A JSON text with something wrong in it, or an unusual but valid one. */
function rawText(r: () => number): string {
  const texts = ['{', '{"prompt": "a",}', '[]', '""', 'null', '{"prompt": "a"} trailing', '\u00ef\u00bb\u00bf{"prompt":"a"}', '{"prompt": "\\ud800"}', '{"prompt": "a", "prompt": "b"}', `${'['.repeat(2000)}${']'.repeat(2000)}`, '{"a":' + '1'.repeat(400) + '}'];
  return texts[Math.floor(r() * texts.length)]!;
}

/** Percent-encoded; a lone surrogate becomes the bytes of one (%ED%A0%80), which is no UTF-8. */
const encode = (text: string) => {
  try {
    return encodeURIComponent(text);
  } catch {
    return encodeURIComponent(text.replace(/[\ud800-\udfff]/g, '')) + '%ED%A0%80';
  }
};

function query(r: () => number, names: readonly string[]): string {
  const parts: string[] = [];
  for (let i = Math.floor(r() * 4); i > 0; i--) {
    const v = value(r);
    parts.push(`${encode(names[Math.floor(r() * names.length)]!)}=${encode(typeof v === 'string' ? v : JSON.stringify(v) ?? '')}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

interface Answer {
  route: string;
  status: number;
  code?: string;
}
/** How many answers of each route, status and error code ("ROUTE STATUS CODE" → count). */
function tally(answers: Answer[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const a of answers) {
    const key = `${a.route} ${a.status}${a.code ? ` ${a.code}` : ''}`;
    t[key] = (t[key] ?? 0) + 1;
  }
  return t;
}
/** The answers whose tally key matches. */
const count = (t: Record<string, number>, match: (key: string) => boolean) => Object.entries(t).reduce((n, [k, v]) => n + (match(k) ? v : 0), 0);

describe('random requests (seeded) never get a 5xx, and every error is the envelope', () => {
  it('POST /v1/generations, /v1/estimates and /v1/uploads with mutated bodies, broken JSON and odd headers', async () => {
    const r = rng(20261206);
    const valid = { prompt: 'a red circle', steps: 2, width: 64, height: 64 };
    const answers: Answer[] = [];
    for (let i = 0; i < 400; i++) {
      const route = ['/v1/generations', '/v1/estimates', '/v1/uploads'][i % 3]!;
      const headers: Record<string, string> = { 'Content-Type': r() < 0.9 ? 'application/json' : ['text/plain', 'application/json; charset=latin1', ''][Math.floor(r() * 3)]! };
      if (r() < 0.3) headers['Idempotency-Key'] = String(STRINGS[Math.floor(r() * STRINGS.length)]).replace(/[^\x20-\x7e]/g, '?') || 'k';
      if (r() < 0.2) headers.Prefer = ['wait=1', 'wait=abc', 'wait=-1', 'wait=99999', 'respond-async', 'wait'][Math.floor(r() * 6)]!;
      if (r() < 0.1) headers['X-Request-Id'] = ['short', 'a'.repeat(300), 'ok-request-id-123', '\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9'][Math.floor(r() * 4)]!.replace(/[^\x20-\xff]/g, '?');
      if (r() < 0.1) headers.Authorization = ['', 'Bearer', 'Bearer ', 'Basic dXNlcjpwYXNz', `Bearer ${h.bob}`, `Bearer ${h.revoked}`, `Bearer ${'x'.repeat(500)}`, 'bearer  clipag_' + 'a'.repeat(40)][Math.floor(r() * 8)]!;
      const text = r() < 0.03 ? JSON.stringify({ prompt: 'a', pad: 'x'.repeat(20_000) }) : r() < 0.1 ? rawText(r) : JSON.stringify(route === '/v1/uploads' ? body(r, { content_type: 'image/png', bytes: 1234 }, UPLOAD_FIELDS) : body(r, valid, GENERATION_FIELDS));
      const res = await h.request(route, { method: 'POST', headers, body: text, ...('Authorization' in headers ? { key: null } : {}) });
      const what = `POST ${route} ${JSON.stringify(headers)} ${text.slice(0, 300)}`;
      expect(res.status, what).toBeLessThan(500);
      if (res.status >= 400) answers.push({ route, status: res.status, code: (await expectEnvelope(res, res.status).catch((e: Error) => expect.fail(`${what}: ${e.message}`))).code });
      else {
        expect(await res.json(), what).toBeTypeOf('object');
        answers.push({ route, status: res.status });
      }
    }
    // The corpus reaches the handlers, not only the refusals in front of them (the key, the content type, the
    // body's size, its JSON): each route took some requests (202, 200, 201) and refused some in its own
    // validation; a generation and an estimate also reached the content policy and the upload store.
    const t = tally(answers);
    const json = JSON.stringify(t);
    for (const [route, ok] of [['/v1/generations', 202], ['/v1/estimates', 200], ['/v1/uploads', 201]] as const) {
      expect(t[`${route} ${ok}`], `${route}: ${json}`).toBeGreaterThan(0);
      expect(t[`${route} 400 validation_error`], `${route}: ${json}`).toBeGreaterThan(0);
    }
    for (const route of ['/v1/generations', '/v1/estimates']) {
      expect(t[`${route} 400 content_policy`], `${route}: ${json}`).toBeGreaterThan(0);
      expect(t[`${route} 400 upload_not_found`], `${route}: ${json}`).toBeGreaterThan(0);
    }
    // Answered before any handler ran: well under the whole corpus (about a fifth with this seed).
    const upFront = count(t, (k) => / (401 unauthorized|413 payload_too_large|415 unsupported_media_type|400 invalid_json)$/.test(k));
    expect(upFront, json).toBeLessThan(answers.length / 3);
    expect(count(t, (k) => / 401 /.test(k)), json).toBeLessThan(answers.length / 10);
  }, 120_000);

  it('GET, cancel and DELETE with random ids and queries', async () => {
    const r = rng(7);
    const ids = [created.id, 'nope', '../x', 'a'.repeat(300), '%2e%2e', created.id.toUpperCase(), '', ' ', '\u00e9', created.id + '/frames', '\ud800'];
    const answers: Answer[] = [];
    for (let i = 0; i < 300; i++) {
      const id = encode(ids[Math.floor(r() * ids.length)]!).replace(/%2F/g, '/');
      const roll = r();
      // The route each request was meant for (its id and query aside), for the tally below.
      const [method, path, meant] =
        roll < 0.3
          ? ['GET', `/v1/generations${query(r, ['limit', 'cursor', 'status', 'x'])}`, 'list']
          : roll < 0.45
            ? r() < 0.7
              ? ['GET', `/v1/usage${query(r, ['month', 'api_key_id', 'from', 'to', 'x'])}`, 'usage']
              : ['GET', ['/v1/models', '/healthz', '/openapi.json', '/v1', '/v1/', '/'][Math.floor(r() * 6)]! + query(r, ['x']), 'other']
            : roll < 0.6
              ? ['GET', `/v1/generations/${id}${query(r, ['x'])}`, 'get']
              : roll < 0.7
                ? ['GET', `/v1/generations/${id}/frames`, 'frames']
                : roll < 0.85
                  ? ['POST', `/v1/generations/${id}/cancel`, 'cancel']
                  : ['DELETE', `/v1/generations/${id}`, 'delete'];
      const res = await h.request(path, { method, ...(method === 'POST' ? { headers: { 'Content-Type': 'application/json' }, body: '{}' } : {}) });
      const what = `${method} ${path}`;
      expect(res.status, what).toBeLessThan(500);
      if (res.status >= 400) answers.push({ route: meant, status: res.status, code: (await expectEnvelope(res, res.status).catch((e: Error) => expect.fail(`${what}: ${e.message}`))).code });
      else answers.push({ route: meant, status: res.status });
    }
    // The corpus reaches the handlers, not only the router's and the validators' refusals: every route
    // answered at least once with a success (the created job found, listed, cancelled, deleted) and at
    // least once refused by its own validation or store (a malformed id or query, an id it does not have).
    const t = tally(answers);
    for (const route of ['list', 'usage', 'get', 'frames', 'cancel', 'delete']) {
      expect(count(t, (k) => k.startsWith(`${route} 2`)), `${route}: ${JSON.stringify(t)}`).toBeGreaterThan(0);
    }
    for (const route of ['list', 'usage']) expect(t[`${route} 400 validation_error`], `${route}: ${JSON.stringify(t)}`).toBeGreaterThan(0);
    for (const route of ['get', 'frames', 'cancel', 'delete']) expect(t[`${route} 404 not_found`], `${route}: ${JSON.stringify(t)}`).toBeGreaterThan(0);
    expect(count(t, (k) => / 401 /.test(k)), JSON.stringify(t)).toBe(0); // every request carried the key
  }, 120_000);
});
