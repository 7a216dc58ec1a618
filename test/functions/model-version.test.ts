// A request may pin the model's bundle (model_version): the API refuses a version it can see is not
// deployed, before anything is queued; where it cannot see the bundle, the worker checks.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { parseQueueMessage } from '../../shared/schemas/queue.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

const HASH = '27443256b132e02554c7fdad7d64702ad56fe1c3f6db0a0cdaba3ad4500a020b';
let h: Harness;
let app: ReturnType<typeof createApp>;

beforeEach(async () => {
  h = await harness();
  app = createApp({
    ...h.deps,
    models: async () => [
      { id: 'toy', default: true, input_size: 64, content_hash: HASH },
      // The worker image's default model in AWS: the API cannot read its bundle.
      { id: 'shipped', input_size: 64 },
    ],
  });
});
afterEach(async () => {
  await h.close();
});

const post = (body: unknown) =>
  app.request('/v1/generations', { method: 'POST', headers: { authorization: `Bearer ${h.alice}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

async function queuedSpecs(): Promise<string[]> {
  const msgs = await h.queue.receive({ max: 10, waitSec: 0 });
  return msgs.map((m) => parseQueueMessage(m.body).job_id);
}

describe('model_version on POST /v1/generations', () => {
  it('a whole content hash or its first 12 digits runs, stored in the spec and shown in the request', async () => {
    for (const pin of [HASH, HASH.slice(0, 12)]) {
      const res = await post({ prompt: 'a red circle', model_version: pin });
      expect(res.status).toBe(202);
      const body = (await res.json()) as any;
      expect(body.request.model_version).toBe(pin);
      expect(body.model_version).toBeNull(); // no run made images yet
      const stored = await h.jobs.get('acct_alice', body.id);
      expect(stored?.spec.model_version).toBe(pin);
    }
  });

  it('without it the spec has none (a worker from before model_version reads it)', async () => {
    const res = await post({ prompt: 'a red circle' });
    expect(res.status).toBe(202);
    const body = (await res.json()) as any;
    expect('model_version' in body.request).toBe(false);
    expect('model_version' in (await h.jobs.get('acct_alice', body.id))!.spec).toBe(false);
  });

  it('another bundle than the one deployed: 400 on model_version, naming both, nothing queued', async () => {
    const other = `0${HASH.slice(1)}`;
    const err = await expectEnvelope(await post({ prompt: 'a red circle', model_version: other }), 400);
    expect(err.param).toBe('model_version');
    expect(err.message).toContain(`model "toy" is bundle ${HASH} here, not model_version ${other}`);
    expect(await queuedSpecs()).toEqual([]);
  });

  it('is 12 to 64 lower-case hex digits', async () => {
    for (const bad of [HASH.slice(0, 11), HASH.toUpperCase(), `${HASH}0`, 'not-a-hash-at-all', 42]) {
      const err = await expectEnvelope(await post({ prompt: 'a red circle', model_version: bad }), 400);
      expect(err.param).toBe('model_version');
    }
    expect(await queuedSpecs()).toEqual([]);
  });

  it('a model whose bundle the API cannot read is queued with the pin, for the worker to check', async () => {
    const res = await post({ prompt: 'a red circle', model: 'shipped', model_version: HASH.slice(0, 16) });
    expect(res.status).toBe(202);
    const body = (await res.json()) as any;
    expect(await queuedSpecs()).toEqual([body.id]);
  });
});
