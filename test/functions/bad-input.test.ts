import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { gzipSync } from 'node:zlib';
import { GenerationSpec, GenerationSpecView, MAX_PROMPT_WEIGHT } from '../../shared/schemas/generation.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

/** Nothing half-written: no job records and no queue messages. */
async function expectNothingWritten(): Promise<void> {
  expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  expect(await h.queue.receive({ max: 10 })).toEqual([]);
}

describe('bad generation requests → 4xx envelope, nothing written', () => {
  const cases: Array<[string, unknown, string | null]> = [
    ['unknown field', { prompt: 'apple', colour: 'red' }, 'colour'],
    ['empty prompt', { prompt: '' }, 'prompt'],
    ['blank prompt', { prompt: '   ' }, 'prompt'],
    // Prompts that the model reads as nothing (CLIP's cleaning): refused here, not failed on a GPU.
    ['a prompt that is only an entity', { prompt: '&nbsp;' }, 'prompt'],
    ['a prompt that is a double-escaped entity', { prompt: '&amp;nbsp;' }, 'prompt'],
    ['a prompt of control characters', { prompt: '\u0001\u0002' }, 'prompt'],
    ['a weighted prompt that reads as nothing', { prompts: [{ text: 'apple', weight: 1 }, { text: '\u0007 &nbsp; &#1;', weight: 0.5 }] }, 'prompts.1.text'],
    ['a negative prompt that reads as nothing', { prompt: 'apple', negative_prompt: '\ufeff' }, 'negative_prompt'],
    ['too-long prompt', { prompt: 'a'.repeat(301) }, 'prompt'],
    ['no prompt', { steps: 10 }, 'prompt'],
    ['both prompt forms', { prompt: 'a', prompts: [{ text: 'b', weight: 1 }] }, 'prompt'],
    ['width too small', { prompt: 'a', width: 32 }, 'width'],
    ['width too large', { prompt: 'a', width: 2048 }, 'width'],
    ['height not a multiple of 32', { prompt: 'a', height: 250 }, 'height'],
    ['steps 0', { prompt: 'a', steps: 0 }, 'steps'],
    ['steps too many', { prompt: 'a', steps: 501 }, 'steps'],
    ['steps not an integer', { prompt: 'a', steps: 1.5 }, 'steps'],
    ['n 0', { prompt: 'a', n: 0 }, 'n'],
    ['n 5', { prompt: 'a', n: 5 }, 'n'],
    ['negative seed', { prompt: 'a', seed: -1 }, 'seed'],
    ['bad init', { prompt: 'a', init: 'file:/etc/passwd' }, 'init'],
    ['unknown model', { prompt: 'a', model: 'sdxl' }, 'model'],
    ['strength out of range', { prompt: 'a', strength: 2 }, 'strength'],
    ['wrong type', { prompt: 42 }, 'prompt'],
    ['array body', [1, 2], null],
    ['metadata not an object', { prompt: 'a', metadata: ['x'] }, 'metadata'],
    ['metadata value not a string', { prompt: 'a', metadata: { order: 42 } }, 'metadata.order'],
    ['metadata value too long', { prompt: 'a', metadata: { note: 'x'.repeat(501) } }, 'metadata.note'],
    ['metadata key with a space', { prompt: 'a', metadata: { 'order id': '1' } }, 'metadata.order id'],
    ['a metadata key that JSON.parse keeps and a record drops', JSON.parse('{"prompt": "a", "metadata": {"__proto__": "x", "b": "c"}}'), 'metadata.__proto__'],
    ['metadata with 17 keys', { prompt: 'a', metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }, 'metadata'],
    // Weights whose sum overflowed in the engine (a failed job, or every prompt at weight 0): at most MAX_PROMPT_WEIGHT.
    ['a weight of -1e300', { prompts: [{ text: 'a red circle', weight: 1 }, { text: 'a blue square', weight: -1e300 }] }, 'prompts.1.weight'],
    ['weights of 1e308', { prompts: [{ text: 'a red circle', weight: 1e308 }, { text: 'a blue square', weight: 1e308 }] }, 'prompts.0.weight'],
    ['a weight just over the bound', { prompts: [{ text: 'a red circle', weight: MAX_PROMPT_WEIGHT + 0.5 }] }, 'prompts.0.weight'],
    ['a negative weight just over the bound', { prompts: [{ text: 'a red circle', weight: 2 }, { text: 'b', weight: -MAX_PROMPT_WEIGHT - 1 }] }, 'prompts.1.weight'],
    // Within the bound but a million times the positive weights: an infinite loss in the float32 step graph.
    ['a weight a million times the positive ones', { prompts: [{ text: 'a red circle', weight: 1e-6 }, { text: 'b', weight: -2 }] }, 'prompts.1.weight'],
    // A weight so small that the worker's sums of them round it away: its CLIP score read exactly 1 (the output check off).
    ['a weight of 5e-324', { prompts: [{ text: 'a blue square', weight: 5e-324 }] }, 'prompts.0.weight'],
    ['a weight just under the least', { prompts: [{ text: 'a blue square', weight: 1 }, { text: 'b', weight: -9.9e-7 }] }, 'prompts.1.weight'],
    // The same text (as the model reads it: lowercased, cleaned) for and against: nothing left to pull the image.
    ['prompts that cancel out', { prompts: [{ text: 'a blue square', weight: 1 }, { text: 'A  blue square', weight: -1 }] }, 'prompts'],
    // The negative prompt weighs half the positive weights together: cat 1 − 0.6 − 0.5 × 1 < 0.
    ['prompts that cancel out with the negative prompt', { prompts: [{ text: 'cat', weight: 1 }, { text: 'cat', weight: -0.6 }], negative_prompt: 'Cat' }, 'prompts'],
    ['prompts that cancel out, with a third that pushes away', { prompts: [{ text: 'x', weight: 2 }, { text: 'X', weight: -3 }, { text: 'y', weight: -1 }] }, 'prompts'],
    // Lone UTF-16 surrogates (JSON's "\ud800" escape): no text a caller wrote; the model would read U+FFFD.
    ['a lone surrogate as the prompt', { prompt: '\ud800' }, 'prompt'],
    ['a lone surrogate in a prompt', { prompt: 'a red circle \udc00' }, 'prompt'],
    ['a surrogate pair reversed in a prompt', { prompt: 'a red circle \ude00\ud83d' }, 'prompt'],
    ['a lone surrogate in a weighted prompt', { prompts: [{ text: 'apple', weight: 1 }, { text: 'pear \ud800', weight: 0.5 }] }, 'prompts.1.text'],
    ['a lone surrogate in the negative prompt', { prompt: 'apple', negative_prompt: 'blurry \udfff' }, 'negative_prompt'],
    ['a lone surrogate in a metadata value', { prompt: 'apple', metadata: { k: '\ud800' } }, 'metadata.k'],
    ['a lone surrogate in a metadata key', { prompt: 'apple', metadata: { 'k\ud800': 'v' } }, 'metadata.k\ud800'],
    ['a lone surrogate in the webhook URL', { prompt: 'apple', webhook_url: 'https://example.com/\ud800' }, 'webhook_url'],
  ];
  for (const [name, body, param] of cases) {
    it(name, async () => {
      const err = await expectEnvelope(await h.request('/v1/generations', { json: body }), 400, 'validation_error');
      if (param !== null) expect(err.param).toBe(param);
      await expectNothingWritten();
    });
  }

  it('weights up to ±MAX_PROMPT_WEIGHT are accepted; over it, the message names the bound; a stored spec from before still parses', async () => {
    const ok = await h.request('/v1/generations', { json: { prompts: [{ text: 'a red circle', weight: MAX_PROMPT_WEIGHT }, { text: 'a blue square', weight: -MAX_PROMPT_WEIGHT }] } });
    expect(ok.status).toBe(202);
    const over = await expectEnvelope(await h.request('/v1/estimates', { json: { prompts: [{ text: 'a red circle', weight: 1e300 }] } }), 400, 'validation_error');
    expect([over.param, over.message]).toEqual(['prompts.0.weight', `prompts.0.weight: weight must be between -${MAX_PROMPT_WEIGHT} and ${MAX_PROMPT_WEIGHT} (weights are relative: scale them down together)`]);
    // Request-only: what stored jobs hold (GenerationSpec) and views show keeps no such bound.
    const stored = { prompts: [{ text: 'a red circle', weight: 1 }, { text: 'a blue square', weight: -1e300 }], width: 224, height: 224, steps: 10, n: 1, init: 'gmm', model: 'toy' };
    expect(GenerationSpec.safeParse(stored).success).toBe(true);
    expect(GenerationSpecView.safeParse(stored).success).toBe(true);
  });

  it('a lone surrogate is a 400 that says why, at the estimate too; a surrogate pair (an emoji) is fine', async () => {
    const err = await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: '\ud800' } }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual(['prompt', 'prompt: must be well-formed Unicode (no lone UTF-16 surrogate such as "\\ud800")']);
    // The escape as a caller's JSON text carries it, not only JSON.stringify's.
    const raw = await h.request('/v1/generations', { method: 'POST', body: '{"prompt":"a red circle","metadata":{"k":"\\ud800"}}', headers: { 'Content-Type': 'application/json' } });
    expect((await expectEnvelope(raw, 400, 'validation_error')).param).toBe('metadata.k');
    await expectNothingWritten();
    const fine = await h.request('/v1/generations', { json: { prompt: 'a red circle \ud83d\ude00', metadata: { k: '\ud83d\ude00' } } });
    expect(fine.status).toBe(202);
  });

  it('a seed far too large names its own bound once, not the safe-integer bound zod adds beside it', async () => {
    const err = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', seed: 1e30 } }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual(['seed', expect.stringMatching(/^seed: .*4294967295/)]);
    expect(err.message).not.toMatch(/9007199254740991/);
  });

  it('malformed JSON → 400 invalid_json', async () => {
    const res = await h.request('/v1/generations', { method: 'POST', body: '{"prompt": "a",', headers: { 'Content-Type': 'application/json' } });
    await expectEnvelope(res, 400, 'invalid_json');
    await expectNothingWritten();
  });

  it('a body that is not valid UTF-8 → 400 invalid_json, not a prompt with U+FFFD in it; valid UTF-8 (emoji, CJK) passes', async () => {
    const broken = Buffer.concat([Buffer.from('{"prompt": "a red '), Buffer.from([0xff, 0xfe]), Buffer.from(' circle"}')]);
    const err = await expectEnvelope(await h.request('/v1/generations', { method: 'POST', body: broken, headers: { 'Content-Type': 'application/json' } }), 400, 'invalid_json');
    expect(err.message).toMatch(/not valid UTF-8/);
    await expectNothingWritten();
    const ok = await h.request('/v1/generations', { method: 'POST', body: Buffer.from(JSON.stringify({ prompt: 'a red circle 🔴 赤い円' })), headers: { 'Content-Type': 'application/json' } });
    expect(ok.status).toBe(202);
    expect(JSON.stringify(await ok.json())).toContain('a red circle 🔴 赤い円');
  });

  it('wrong or missing content type → 415, always the same envelope naming Content-Type', async () => {
    const bad = ['text/plain', 'application/x-www-form-urlencoded', 'application/json ; charset=utf-8', 'application/json;', 'application/jsonx', undefined, 'application/json; charset=latin1', 'application/json; charset="ISO-8859-1"', 'application/json; charset=utf-16'];
    for (const type of bad) {
      const headers: Record<string, string> = type === undefined ? {} : { 'Content-Type': type };
      const res = await h.request('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a' }), headers });
      const err = await expectEnvelope(res, 415, 'unsupported_media_type');
      expect(err.param, String(type)).toBe('Content-Type');
    }
    // What is wrong is said, with what came; a charset named twice is refused, not read by its first.
    const spaced = await expectEnvelope(await h.request('/v1/generations', { method: 'POST', body: '{"prompt":"a"}', headers: { 'Content-Type': 'application/json ; charset=utf-8' } }), 415);
    expect(spaced.message).toContain('no space before ";"');
    expect(spaced.message).toContain('got "application/json ; charset=utf-8"');
    const twice = await expectEnvelope(await h.request('/v1/generations', { method: 'POST', body: '{"prompt":"a"}', headers: { 'Content-Type': 'application/json; charset=utf-8; charset=latin1' } }), 415);
    expect(twice.message).toContain('names charset more than once');
    await expectNothingWritten();
  });

  it('a coded body (Content-Encoding other than identity) → 415 naming Content-Encoding, with Accept-Encoding: identity', async () => {
    const plain = JSON.stringify({ prompt: 'a red circle' });
    const cases: Array<[string, string, string | Uint8Array]> = [
      ['/v1/estimates', 'gzip', gzipSync(plain)],
      ['/v1/generations', 'gzip', gzipSync(plain)],
      ['/v1/estimates', 'br', plain], // declared but not applied: still not taken as it came
      ['/v1/generations', 'deflate', plain],
      ['/v1/generations', 'identity, gzip', gzipSync(plain)],
      ['/v1/uploads', 'gzip', JSON.stringify({ content_type: 'image/png', bytes: 100 })],
    ];
    for (const [path, coding, body] of cases) {
      const res = await h.request(path, { method: 'POST', body, headers: { 'Content-Type': 'application/json', 'Content-Encoding': coding } });
      expect(res.headers.get('Accept-Encoding'), coding).toBe('identity');
      const err = await expectEnvelope(res, 415, 'unsupported_media_type');
      expect([err.param, err.message], coding).toEqual(['Content-Encoding', expect.stringMatching(/^Content-Encoding (gzip|br|deflate) is not supported/)]);
    }
    await expectNothingWritten();
    for (const coding of ['identity', 'Identity', '']) {
      const res = await h.request('/v1/estimates', { method: 'POST', body: plain, headers: { 'Content-Type': 'application/json', 'Content-Encoding': coding } });
      expect(res.status, coding).toBe(200);
    }
  });

  it('JSON content types with parameters or a +json suffix are accepted', async () => {
    for (const type of ['application/json; charset=utf-8', 'APPLICATION/JSON;charset=UTF-8', 'application/vnd.api+json', 'application/json; charset="utf-8"', 'application/json; charset=utf8']) {
      const res = await h.request('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a' }), headers: { 'Content-Type': type } });
      expect(res.status, type).toBe(202);
    }
  });

  it('every answer, an error too, is marked Cache-Control: no-store (signed links, webhook secrets, one caller\'s jobs), nosniff and not for framing', async () => {
    const created = await h.request('/v1/generations', { json: { prompt: 'a' } });
    expect([created.status, created.headers.get('Cache-Control')]).toEqual([202, 'no-store']);
    // Outside /v1 too (security review F5): the health check, both documents and an unknown path's 404.
    const outside = [await h.app.request('/healthz'), await h.app.request('/openapi.json'), await h.app.request('/openapi-3.0.json'), await h.app.request('/no/such/path')];
    expect(outside.map((r) => r.status)).toEqual([200, 200, 200, 404]);
    for (const res of [created, await h.request('/v1/generations'), await h.request('/v1/generations/nope'), await h.request('/v1/models'), await h.request('/v1/generations', { key: null }), ...outside]) {
      expect(res.headers.get('Cache-Control'), res.url).toBe('no-store');
      expect(res.headers.get('X-Content-Type-Options'), res.url).toBe('nosniff');
      expect(res.headers.get('X-Frame-Options'), res.url).toBe('DENY');
    }
  });

  it('oversized body → 413', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'a', pad: 'x'.repeat(20_000) } });
    await expectEnvelope(res, 413, 'payload_too_large');
    await expectNothingWritten();
  });
});

describe('auth', () => {
  const attempts: Array<[string, Record<string, string>]> = [
    ['missing', {}],
    ['not bearer', { Authorization: 'Basic dXNlcjpwYXNz' }],
    ['empty bearer', { Authorization: 'Bearer ' }],
    ['malformed key', { Authorization: 'Bearer hunter2' }],
    ['well-formed unknown key', { Authorization: `Bearer ck_${'0'.repeat(26)}_${'A'.repeat(43)}` }],
  ];
  for (const [name, headers] of attempts) {
    it(`${name} → 401 with WWW-Authenticate`, async () => {
      const res = await h.request('/v1/generations', { key: null, json: { prompt: 'a' }, headers });
      await expectEnvelope(res, 401, 'unauthorized');
      expect(res.headers.get('WWW-Authenticate')).toMatch(/^Bearer/);
      await expectNothingWritten();
    });
  }

  it('the scheme is case-insensitive, with any number of spaces before the key (RFC 9110 §11.1)', async () => {
    for (const header of [`bearer ${h.alice}`, `BEARER ${h.alice}`, `Bearer   ${h.alice}`]) {
      expect((await h.request('/v1/models', { key: null, headers: { Authorization: header } })).status, header).toBe(200);
    }
  });

  it('a right key id with a wrong secret → 401', async () => {
    const tampered = h.alice.slice(0, -1) + (h.alice.endsWith('A') ? 'B' : 'A');
    await expectEnvelope(await h.request('/v1/models', { key: tampered }), 401, 'unauthorized');
  });

  it('revoked key → 401; the live key of the same owner still works', async () => {
    await expectEnvelope(await h.request('/v1/models', { key: h.revoked }), 401, 'unauthorized');
    expect((await h.request('/v1/models')).status).toBe(200);
  });

  it('keys are stored hashed: no secret in the blob store', async () => {
    const page = await h.blobs.list('keys/');
    expect(page.items).toHaveLength(3);
    for (const item of page.items) {
      const text = Buffer.from((await h.blobs.get(item.key))!.body).toString('utf8');
      for (const secret of [h.alice, h.bob, h.revoked]) expect(text).not.toContain(secret.slice(3 + 27));
      expect(JSON.parse(text).key_sha256).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('healthz and openapi.json need no key; everything under /v1 does', async () => {
    expect((await h.request('/healthz', { key: null })).status).toBe(200);
    expect((await h.request('/openapi.json', { key: null })).status).toBe(200);
    for (const path of ['/v1/models', '/v1/generations', '/v1/generations/abc']) {
      await expectEnvelope(await h.request(path, { key: null }), 401, 'unauthorized');
    }
  });
});

describe('routing', () => {
  it("every operation the document lists is in the app's route table, with its method (a wrong method is a 405, not a 404)", async () => {
    const { ROUTES } = await import('../../functions/app.ts');
    const doc = (await (await h.request('/openapi.json')).json()) as { paths: Record<string, Record<string, unknown>> };
    for (const [template, item] of Object.entries(doc.paths)) {
      const path = template.replace('{id}', 'abc').replace('{index}', '0');
      const route = ROUTES.find((r) => r.pattern.test(path));
      expect(route, template).toBeDefined();
      for (const method of Object.keys(item)) expect(route!.methods, `${method} ${template}`).toContain(method.toUpperCase());
    }
    await expectEnvelope(await h.request('/v1/generations/abc/webhook/redeliver', { method: 'GET' }), 405, 'method_not_allowed');
    await expectEnvelope(await h.request('/v1/generations/abc/outputs/0', { method: 'DELETE' }), 405, 'method_not_allowed');
  });

  it('unknown route → 404 envelope; wrong method → 405 with Allow', async () => {
    await expectEnvelope(await h.request('/nope', { key: null }), 404, 'not_found');
    await expectEnvelope(await h.request('/v1/nope'), 404, 'not_found');
    const res = await h.request('/v1/generations', { method: 'DELETE' });
    expect(res.headers.get('Allow')).toBe('GET, POST, HEAD');
    // The message names the methods Allow names, HEAD included.
    expect((await expectEnvelope(res, 405, 'method_not_allowed')).message).toBe('method not allowed; use GET, POST, HEAD');
    const health = await h.request('/healthz', { method: 'OPTIONS', key: null });
    expect(health.headers.get('Allow')).toBe('GET, HEAD');
    expect((await expectEnvelope(health, 405, 'method_not_allowed')).message).toBe('method not allowed; use GET, HEAD');
    // HEAD is answered where GET is: Allow names it.
    const head = await h.request('/v1/generations', { method: 'HEAD' });
    expect(head.status).toBe(200);
    const cancel = await h.request('/v1/generations/abc/cancel');
    await expectEnvelope(cancel, 405, 'method_not_allowed');
    expect(cancel.headers.get('Allow')).toBe('POST');
    // A body of any type on a method the path does not take is still that 405, not a 415.
    for (const path of ['/v1/generations', '/v1/uploads', '/v1/estimates']) {
      for (const method of ['PUT', 'PATCH']) {
        await expectEnvelope(await h.request(path, { method, body: 'x' }), 405, 'method_not_allowed');
      }
    }
    await expectEnvelope(await h.request('/v1/generations', { method: 'POST', body: 'x' }), 415, 'unsupported_media_type');
  });

  it('a malformed job id → 400, not a 500', async () => {
    await expectEnvelope(await h.request('/v1/generations/has.dot'), 400, 'validation_error');
    await expectEnvelope(await h.request(`/v1/generations/${'a'.repeat(65)}`), 400, 'validation_error');
  });
});

describe('request id', () => {
  it("is on every response, success or error, and is the API's own, never the caller's", async () => {
    const responses = [
      await h.request('/healthz', { key: null }),
      await h.request('/v1/models'),
      await h.request('/v1/models', { key: null }),
      await h.request('/v1/nope'),
      await h.request('/v1/generations', { json: { prompt: '' } }),
      await h.request('/v1/generations', { json: { prompt: 'ok' } }),
      await h.request('/openapi.json'),
    ];
    const ids = responses.map((r) => r.headers.get('X-Request-Id'));
    for (const id of ids) expect(id).toMatch(/^req_[0-9a-z]{26}$/);
    expect(new Set(ids).size).toBe(ids.length);

    // A caller's id, sane or not, never becomes the request's (it could name another request).
    const sent = await h.request('/v1/models', { headers: { 'X-Request-Id': 'client-trace-0001' } });
    expect(sent.headers.get('X-Request-Id')).toMatch(/^req_[0-9a-z]{26}$/);
    const notFound = await h.request('/v1/nope', { headers: { 'X-Request-Id': 'req_someone_elses_request' } });
    const err = await expectEnvelope(notFound, 404);
    expect(err.request_id).toMatch(/^req_[0-9a-z]{26}$/);
    expect(notFound.headers.get('X-Request-Id')).toBe(err.request_id);
    const insane = await h.request('/v1/models', { headers: { 'X-Request-Id': 'bad id\twith spaces' } });
    expect(insane.headers.get('X-Request-Id')).toMatch(/^req_/);
  });

  it("an unexpected failure is a 500 envelope that leaks nothing, and is logged with the request id, the account and the caller's own id", async () => {
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, models: async () => { throw new Error('secret internals /etc/x'); } });
    const res = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}`, 'X-Request-Id': 'client-trace-0003' } });
    const err = await expectEnvelope(res, 500, 'internal_error');
    expect(err.message).toBe('internal error');
    expect(h.logs).toContainEqual(expect.objectContaining({ level: 'error', msg: 'request failed', request_id: err.request_id, owner: 'acct_alice', client_request_id: 'client-trace-0003' }));
    // A caller's id that is not short and plain is left out of the log line.
    const odd = await app.request('/v1/models', { headers: { Authorization: `Bearer ${h.alice}`, 'X-Request-Id': 'x'.repeat(200) } });
    const oddErr = await expectEnvelope(odd, 500, 'internal_error');
    const line = h.logs.find((l) => (l as { request_id?: string }).request_id === oddErr.request_id) as Record<string, unknown>;
    expect(line).toMatchObject({ owner: 'acct_alice' });
    expect(line.client_request_id).toBeUndefined();
  });
});
