// Every response shape the API sends, checked against the OpenAPI document it publishes, with a
// JSON Schema 2020-12 validator (Ajv). A schema that no real response can satisfy (an allOf of two
// closed objects, say) fails here, as does a response with a field the document does not declare.
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { recordRunSample } from '../../shared/run-stats.ts';
import { recordUsage } from '../../shared/usage.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

async function validatorFor(app: { request: (path: string) => Response | Promise<Response> }) {
  const doc = (await (await app.request('/openapi.json')).json()) as { paths: Record<string, any> };
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addSchema(doc, 'api');
  return (path: string, method: string, status: number, body: unknown) => {
    const content = doc.paths[path]?.[method]?.responses?.[String(status)]?.content?.['application/json'];
    expect(content, `${method.toUpperCase()} ${path} ${status} is not in the document`).toBeDefined();
    const ref = content.schema.$ref as string;
    const validate = ajv.getSchema(`api${ref}`)!;
    const ok = validate(body);
    expect(ok ? [] : validate.errors, `${method.toUpperCase()} ${path} ${status}`).toEqual([]);
  };
}

describe('responses conform to /openapi.json', () => {
  it('generations (queued and succeeded, with webhook, flags, output checks, cost), lists, estimates, usage, models, uploads and errors', async () => {
    const app = createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true, workerHourlyUsd: 1.006 } });
    const check = await validatorFor(app);
    const call = async (path: string, init: RequestInit = {}) => {
      const res = await app.request(path, { ...init, headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(init.headers ?? {}) } });
      return { status: res.status, body: await res.json() };
    };
    const created = await call('/v1/generations', {
      method: 'POST',
      body: JSON.stringify({ prompt: 'a doctor with a red circle', webhook_url: 'http://127.0.0.1:9/h', metadata: { order_id: 'A-1' } }),
      headers: { 'Idempotency-Key': 'oa-1' },
    });
    check('/v1/generations', 'post', 202, created.body);
    const id = (created.body as { id: string }).id;
    const replay = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a doctor with a red circle', webhook_url: 'http://127.0.0.1:9/h', metadata: { order_id: 'A-1' } }), headers: { 'Idempotency-Key': 'oa-1' } });
    check('/v1/generations', 'post', 200, replay.body);
    const key = `outputs/acct_alice/${id}/0.png`;
    await h.blobs.put(key, new Uint8Array([1]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({
      ...cur, status: 'succeeded', attempts: 1, started_at: cur.created_at, finished_at: new Date().toISOString(),
      outputs: [{ key, width: 224, height: 224, clip_score: 0.31 }], usage: { encoder_passes: 10, worker_seconds: 3.5 }, warnings: ['"zzz" is not in the vocabulary'],
      // The output check (ADR 0017): image 0 withheld, image 1 (the stored one) flagged.
      output_checks: [
        { index: 0, withheld: true, flags: [{ rule: 'mouse', category: 'copyright', action: 'withhold', concept: 'Mickey Mouse', message: 'm', cosine: 0.33 }] },
        { index: 1, withheld: false, flags: [{ rule: 'logo', category: 'trademark', action: 'flag', concept: 'the Nike logo', message: 'm', cosine: 0.3 }] },
      ],
    }));
    const got = await call(`/v1/generations/${id}`);
    check('/v1/generations/{id}', 'get', 200, got.body);
    expect((got.body as any).outputs.map((o: any) => [o.index, o.content_flags[0].rule])).toEqual([[1, 'logo']]);
    expect((got.body as any).withheld_outputs.map((o: any) => [o.index, o.content_flags[0].rule])).toEqual([[0, 'mouse']]);
    check('/v1/generations', 'get', 200, (await call('/v1/generations')).body);
    await h.blobs.put(`outputs/acct_alice/${id}/frames/1/0010.png`, new Uint8Array([1]), { contentType: 'image/png' }); // stored before sizes were kept
    await h.blobs.put(`outputs/acct_alice/${id}/frames/1/0020_64x64.png`, new Uint8Array([1]), { contentType: 'image/png' });
    const frames = await call(`/v1/generations/${id}/frames`);
    expect((frames.body as any).data.map((f: any) => [f.index, f.step, f.width, f.height])).toEqual([[1, 10, null, null], [1, 20, 64, 64]]);
    check('/v1/generations/{id}/frames', 'get', 200, frames.body);
    const other = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a blue square' }) });
    check('/v1/generations/{id}/cancel', 'post', 200, (await call(`/v1/generations/${(other.body as { id: string }).id}/cancel`, { method: 'POST' })).body);
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    await recordRunSample(h.blobs, { model: 'toy', width: 224, height: 224, start: 'gmm' }, { seconds: 3, loopSeconds: 2, steps: 100, n: 1, at: new Date().toISOString() });
    check('/v1/estimates', 'post', 200, (await call('/v1/estimates', { method: 'POST', body: JSON.stringify({ prompt: 'a red circle' }) })).body);
    check('/v1/models', 'get', 200, (await call('/v1/models')).body);
    await recordUsage(h.blobs, 'acct_alice', 'job-oa', new Date(), { images: 2, workerSeconds: 3.5, encoderPasses: 10 });
    const usage = await call('/v1/usage');
    expect((usage.body as any).total.cost_usd).toBeGreaterThan(0);
    check('/v1/usage', 'get', 200, usage.body);
    check('/v1/usage', 'get', 400, (await call('/v1/usage?month=2026-13')).body);
    check('/v1/uploads', 'post', 201, (await call('/v1/uploads', { method: 'POST', body: JSON.stringify({ content_type: 'image/png', bytes: 100 }) })).body);
    const refused = await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'pikachu' }) });
    expect(refused.status).toBe(400);
    check('/v1/generations', 'post', 400, refused.body);
    check('/v1/generations/{id}', 'get', 404, (await call('/v1/generations/nope')).body);
    check('/v1/generations/{id}', 'delete', 200, (await call(`/v1/generations/${id}`, { method: 'DELETE' })).body);
    check('/v1/generations/{id}', 'delete', 409, (await call('/v1/generations', { method: 'POST', body: JSON.stringify({ prompt: 'a green star' }) }).then((r) => call(`/v1/generations/${(r.body as { id: string }).id}`, { method: 'DELETE' }))).body);
  });
});

describe('requests conform to /openapi.json', () => {
  it('a size the document allows is one the server accepts, and one it refuses is refused by the document too', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validRequest = ajv.getSchema('api#/components/schemas/GenerationRequest')!;
    for (const width of [64, 96, 100, 1024, 1056]) {
      const body = { prompt: 'apple', width };
      const server = (await h.request('/v1/generations', { json: body })).status;
      expect([width, validRequest(body)], String(server)).toEqual([width, server === 202]);
    }
  });

  it('bodies the server refuses for a rule the schema can state are refused by the document too', async () => {
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validRequest = ajv.getSchema('api#/components/schemas/GenerationRequest')!;
    const manyKeys = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v']));
    const refused = [
      {},
      { prompt: 'a', prompts: [{ text: 'b', weight: 1 }] },
      { prompts: [{ text: 'b', weight: 0 }] },
      { prompt: 'a', init: 'foo' },
      { prompt: 'a', metadata: { 'bad key': 'x' } },
      { prompt: 'a', metadata: manyKeys },
      { prompt: 'a', metadata: { ['x'.repeat(41)]: 'v' } },
      // A request's weight bound (not WeightedPrompt's, which stored specs share): stated in GenerationRequest.
      { prompts: [{ text: 'b', weight: 1 }, { text: 'c', weight: -1e300 }] },
      { prompts: [{ text: 'b', weight: 1001 }] },
    ]; // (webhook_url's `format: uri` is an annotation to a validator that does not assert formats, as here)
    for (const body of refused) {
      expect((await h.request('/v1/estimates', { json: body })).status, JSON.stringify(body)).toBe(400);
      expect(validRequest(body), JSON.stringify(body)).toBe(false);
    }
    // And the same fields, well formed, pass both.
    const fine = { prompts: [{ text: 'b', weight: 1000 }, { text: 'c', weight: -0.5 }, { text: 'd', weight: -1000 }], init: 'noise', metadata: { 'order.id': 'A-1' }, webhook_url: 'https://example.com/h' };
    expect(validRequest(fine) ? [] : validRequest.errors).toEqual([]);
  });

  it('a webhook body, as the deliverer sends it, is the document\'s GenerationEvent', async () => {
    const { deliverWebhook } = await import('../../shared/webhooks.ts');
    const doc = (await (await h.app.request('/openapi.json')).json()) as any;
    expect(doc.webhooks['generation.ended'].post.requestBody.content['application/json'].schema.$ref).toBe('#/components/schemas/GenerationEvent');
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addSchema(doc, 'api');
    const validEvent = ajv.getSchema('api#/components/schemas/GenerationEvent')!;
    const local = createApp({ ...h.deps, limits: { ...LIMITS, webhookAllowPrivate: true } });
    const res = await local.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', webhook_url: 'http://127.0.0.1:9/hook' }) });
    const { id } = (await res.json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'canceled', cancel_requested: true, finished_at: new Date().toISOString() }));
    const bodies: string[] = [];
    const sent = await deliverWebhook({ jobs: h.jobs, blobs: h.blobs, signedUrlTtlSec: 600, clock: () => new Date(), send: async (r) => (bodies.push(r.body), 200) }, 'acct_alice', id);
    expect(sent).toBe('delivered');
    const event = JSON.parse(bodies[0]!);
    expect(validEvent(event) ? [] : validEvent.errors).toEqual([]);
    expect(event).toMatchObject({ type: 'generation.canceled', data: { id, status: 'canceled' } });
  });
});
