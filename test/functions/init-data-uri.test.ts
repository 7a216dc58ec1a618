// `init: "data:image/png;base64,…"` (ADR 0042): the API decodes the image, checks it as an upload and
// stores it as one, as it does an image it fetches by URL (ADR 0038). Driven through app.request on the
// harness's real local adapters.
import { readFileSync } from 'node:fs';
import { encode as pngEncode } from 'fast-png';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { checkInitDataUriSync, decodeInitDataUri } from '../../shared/init-image.ts';
import { PENDING_JOBS_PREFIX, uploadKey } from '../../shared/keys.ts';
import { listKeys } from '../../shared/prefix.ts';
import { GenerationRequest } from '../../shared/schemas/generation.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

const PNG = pngEncode({ width: 8, height: 8, data: new Uint8Array(8 * 8 * 3).map((_, i) => (i * 37) % 256), channels: 3, depth: 8 });
const JPEG = readFileSync(new URL('../fixtures/jpeg/progressive.jpg', import.meta.url));
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const pngUri = `data:image/png;base64,${b64(PNG)}`;

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const post = (path: string, body: unknown, headers: Record<string, string> = {}, app = h.app) =>
  app.request(path, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
const uploads = async () => (await listKeys(h.blobs, 'uploads/')).keys;
const activePlaces = async () => (await listKeys(h.blobs, `${PENDING_JOBS_PREFIX}active/acct_alice/`)).keys.length;

describe('init as a data: URI', () => {
  it('decodes the image, stores it as an upload of the caller, and the job names that upload, not the data', async () => {
    const res = await post('/v1/generations', { prompt: 'a red circle', init: pngUri, strength: 0.4 });
    expect(res.status).toBe(202);
    const view = (await res.json()) as { id: string; request: { init: string; strength: number } };
    expect(view.request.init).toMatch(/^upload:[0-9a-z]{26}$/);
    expect(view.request.strength).toBe(0.4);
    const stored = await h.blobs.get(uploadKey('acct_alice', view.request.init.slice('upload:'.length)));
    expect(stored?.contentType).toBe('image/png');
    expect(Buffer.from(stored!.body).equals(Buffer.from(PNG))).toBe(true);
    // The base64 is kept nowhere in the record: the worker reads the upload.
    const record = await h.jobs.get('acct_alice', view.id);
    expect(record?.spec.init).toBe(view.request.init);
    expect(JSON.stringify(record)).not.toContain(b64(PNG).slice(0, 40));
    const [message] = await h.queue.receive({ waitSec: 0 });
    expect(JSON.parse(message!.body)).toMatchObject({ job_id: view.id, owner: 'acct_alice' });
  });

  it('takes a JPEG, wrapped base64 lines, URL-safe base64 and upper-case spellings; the bytes decide the type', async () => {
    const wrapped = b64(JPEG).replace(/.{76}/g, '$&\r\n');
    const urlSafe = b64(PNG).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    for (const [init, type, bytes] of [
      [`data:image/jpeg;base64,${wrapped}`, 'image/jpeg', JPEG],
      [`DATA:IMAGE/PNG;BASE64,${urlSafe}`, 'image/png', PNG],
      // A mislabelled file (a JPEG said to be a PNG) is read as what it is, as a browser would.
      [`data:image/png;base64,${b64(JPEG)}`, 'image/jpeg', JPEG],
      [`data:image/jpg;name=photo.jpg;base64,${b64(JPEG)}`, 'image/jpeg', JPEG],
    ] as const) {
      const res = await post('/v1/generations', { prompt: 'a red circle', init });
      expect(res.status, init.slice(0, 40)).toBe(202);
      const { request } = (await res.json()) as { request: { init: string } };
      const stored = await h.blobs.get(uploadKey('acct_alice', request.init.slice('upload:'.length)));
      expect(stored?.contentType).toBe(type);
      expect(Buffer.from(stored!.body).equals(Buffer.from(bytes))).toBe(true);
    }
  });

  it('a data: URI that is not an image is a 400 on init that says why, quotes none of its data, and leaves nothing behind', async () => {
    const key = { 'Idempotency-Key': 'k-data-uri-1' };
    const cutShort = `data:image/png;base64,${b64(PNG.subarray(0, PNG.length - 20))}`;
    const cases: Array<[string, RegExp]> = [
      ['data:image/png;base64', /needs a comma before its data/],
      [`data:,${b64(PNG)}`, /no media type \(which means text\/plain\)/],
      [`data:text/plain;base64,${b64(PNG)}`, /media type "text\/plain"; an init image is data:image\/png;base64/],
      [`data:image/png,${b64(PNG)}`, /must be base64 \(data:image\/png;base64,…\)/],
      ['data:image/png;base64,', /has no data after its comma/],
      ['data:image/png;base64,iVBOR%0A', /is not base64/],
      ['data:image/png;base64,iVBORw0KG', /is not base64/],
      [`data:image/png;base64,${b64(new TextEncoder().encode('<!doctype html><p>not an image'))}`, /^init: the data: URI's image cannot be an init image \(a PNG or a JPEG\): /],
      [cutShort, /^init: the data: URI's image cannot be an init image \(a PNG or a JPEG\): /],
    ];
    for (const [init, message] of cases) {
      const err = await expectEnvelope(await post('/v1/generations', { prompt: 'a red circle', init }, key), 400, 'validation_error');
      expect(err.param, init.slice(0, 40)).toBe('init');
      expect(err.message, init.slice(0, 40)).toMatch(message);
      expect(err.message).not.toContain('iVBORw0KGgo');
    }
    expect(await uploads()).toEqual([]);
    expect(await activePlaces()).toBe(0);
    expect(await h.jobs.listByOwner('acct_alice')).toMatchObject({ jobs: [] });
    // The same key with a good image: made (the refusals held no claim on it), and its retry replays.
    const made = await post('/v1/generations', { prompt: 'a red circle', init: pngUri }, key);
    expect(made.status).toBe(202);
    const replay = await post('/v1/generations', { prompt: 'a red circle', init: pngUri }, key);
    expect(replay.status).toBe(200);
    expect(replay.headers.get('Idempotent-Replayed')).toBe('true');
    expect(((await replay.json()) as { id: string }).id).toBe(((await made.json()) as { id: string }).id);
    expect(await uploads()).toHaveLength(1);
  });

  it('an estimate checks the image whole and stores nothing', async () => {
    const fine = await post('/v1/estimates', { prompt: 'a red circle', init: pngUri, strength: 0.5 });
    expect(fine.status).toBe(200);
    const bad = await expectEnvelope(await post('/v1/estimates', { prompt: 'a red circle', init: `data:image/png;base64,${b64(PNG.subarray(0, 30))}` }), 400, 'validation_error');
    expect(bad.param).toBe('init');
    expect(await uploads()).toEqual([]);
  });

  it('an image past the body limit is a 413 before anything is decoded; past the upload limit, a 400 that says so', async () => {
    const big = `data:image/png;base64,${'A'.repeat(LIMITS.maxBodyBytes)}`;
    const tooBig = await expectEnvelope(await post('/v1/generations', { prompt: 'a red circle', init: big }), 413, 'payload_too_large');
    expect(tooBig.message).toMatch(/if it holds an inline init image \(a data: URI\), send that image by POST \/v1\/uploads \(then "init": "upload:<id>"\) or as an https URL/);
    const app = createApp({ ...h.deps, limits: { ...h.deps.limits, maxUploadBytes: 64 } });
    const over = await expectEnvelope(await post('/v1/generations', { prompt: 'a red circle', init: pngUri }, {}, app), 400, 'validation_error');
    expect(over.message).toBe(`init: the data: URI's image is ${PNG.length} bytes, over the 64-byte limit of an upload`);
    expect(await uploads()).toEqual([]);
  });

  it('takes the spellings clients write: percent-encoded data (encodeURIComponent), image/x-png, any whitespace', async () => {
    for (const init of [
      `data:image/png;base64,${encodeURIComponent(b64(PNG))}`,
      `data:image/x-png;base64,${b64(PNG)}`,
      `data:image/png;base64,${b64(PNG).replace(/(.{10})/g, '$1\u00a0\f')}`,
    ]) {
      expect(decodeInitDataUri(init, 1 << 20), init.slice(0, 30)).toEqual({ ok: true, bytes: new Uint8Array(PNG) });
    }
    // A "%" that encodes no base64 character (or none at all) is no base64: said so, whatever the byte.
    for (const odd of ['iVBOR%zz', 'iVBORw0K%FF', 'iVBORw0K%2C', 'iVBORw0K%00']) {
      expect(decodeInitDataUri(`data:image/png;base64,${odd}`, 1 << 20), odd).toMatchObject({ ok: false, reason: expect.stringContaining('is not base64') });
    }
    // A form decoder's "+" turned into spaces: the image check fails, and the reason says what may have happened.
    const spaced = checkInitDataUriSync(`data:image/png;base64,${b64(PNG).replace(/\+/g, ' ')}`, 1 << 20);
    expect(b64(PNG)).toContain('+');
    expect(spaced).toMatchObject({ ok: false, reason: expect.stringContaining('spaces in its data were dropped: if a form decoder turned its "+" into spaces, send it percent-encoded (%2B)') });
    // Also where dropping them leaves a length no base64 has (4k + 1): the base64 check says it then.
    const data = 'iVBO+w0KAA'; // 10 characters: 9 once its space goes
    expect(decodeInitDataUri(`data:image/png;base64,${data.replace('+', ' ')}`, 1 << 20)).toMatchObject({ ok: false, reason: expect.stringMatching(/is not base64 .*spaces in its data were dropped/) });
  });

  it('strength goes with a data: URI init (the schema), and the decoder counts bytes before it decodes', () => {
    expect(GenerationRequest.safeParse({ prompt: 'a', init: pngUri, strength: 0.2 }).success).toBe(true);
    expect(GenerationRequest.safeParse({ prompt: 'a', init: 'gmm', strength: 0.2 }).success).toBe(false);
    expect(decodeInitDataUri(pngUri, PNG.length)).toEqual({ ok: true, bytes: new Uint8Array(PNG) });
    expect(decodeInitDataUri(pngUri, PNG.length - 1)).toMatchObject({ ok: false, reason: expect.stringContaining(`${PNG.length} bytes, over the ${PNG.length - 1}-byte limit`) });
  });
});
