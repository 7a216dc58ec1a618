/**
 * POST /v1/generations runs its three checks (the spec: models and upload; the prompt policy; the
 * owner's active-job count, which first writes the request's own place) at once rather than one after
 * another (review finding 5c), and answers exactly what it answered then: the first failure in the old
 * order wins (spec, then prompts, then the limit), and nothing is claimed or written before all three
 * have passed (a place taken is given back).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { markPending } from '../../shared/pending.ts';
import { defaultPromptPolicy } from '../../shared/prompt-policy.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

const LAT = 40;
let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The harness's app with each check's read taking LAT ms, recording when each ran. */
function timedApp(maxActiveJobs = 100) {
  const spans: Record<string, { start: number; end: number }> = {};
  const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    await sleep(LAT);
    try {
      return await fn();
    } finally {
      spans[name] = { start, end: performance.now() };
    }
  };
  // The active-job check writes its marker, then lists: it starts with the write.
  const blobs = new Proxy(h.blobs, {
    get(target, prop, receiver) {
      if (prop === 'put') return (key: string, body: Uint8Array, options?: never) => (key.startsWith('pending/active/') ? timed('active marker', () => target.put(key, body, options)) : target.put(key, body, options));
      if (prop === 'listKeys') return (prefix: string, options?: never) => (prefix.startsWith('pending/active/') ? timed('active list', () => target.listKeys(prefix, options)) : target.listKeys(prefix, options));
      return Reflect.get(target, prop, receiver);
    },
  }) as BlobStore;
  const app = createApp({
    ...h.deps,
    blobs,
    models: () => timed('models', h.deps.models),
    promptPolicy: () => timed('policy', async () => defaultPromptPolicy()),
    limits: { ...LIMITS, maxActiveJobs },
  });
  const post = (json: unknown, key?: string) =>
    app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(key ? { 'Idempotency-Key': key } : {}) }, body: JSON.stringify(json) });
  return { post, spans };
}

describe('POST /v1/generations checks', () => {
  it('reads the models, the prompt policy and the active markers at once, not one after another', async () => {
    const { post, spans } = timedApp();
    const res = await post({ prompt: 'a red apple' });
    expect(res.status).toBe(202);
    const names = ['models', 'policy', 'active marker'];
    for (const name of names) expect(spans[name], name).toBeDefined();
    expect(spans['active list']!.start).toBeGreaterThanOrEqual(spans['active marker']!.end);
    // Each started before any other ended: they overlapped.
    const lastStart = Math.max(...names.map((n) => spans[n]!.start));
    const firstEnd = Math.min(...names.map((n) => spans[n]!.end));
    expect(lastStart).toBeLessThan(firstEnd);
  });

  it('answers the first failure in the old order: the spec before the prompts before the limit', async () => {
    const { post } = timedApp(1);
    await markPending(h.blobs, 'active', 'acct_alice', 'gen_01jzzzzzzzzzzzzzzzzzzzzzzz'); // the owner is at the limit of 1
    // Unknown model, a refused prompt, at the limit: the model.
    expect((await expectEnvelope(await post({ prompt: 'Mickey Mouse waving', model: 'nope' }), 400, 'validation_error')).param).toBe('model');
    // A good spec, a refused prompt, at the limit: the prompt.
    await expectEnvelope(await post({ prompt: 'Mickey Mouse waving' }), 400, 'content_policy');
    // All good but the limit: 429.
    await expectEnvelope(await post({ prompt: 'a red apple' }), 429, 'too_many_active_jobs');
    // None of them claimed a key, wrote a job or kept a place among the active jobs.
    await expectEnvelope(await post({ prompt: 'a red apple' }, 'k-1'), 429, 'too_many_active_jobs');
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    expect((await h.blobs.list('jobs/.idempotency/')).items).toEqual([]);
    expect((await h.blobs.list('pending/')).items.map((i) => i.key)).toEqual(['pending/active/acct_alice/gen_01jzzzzzzzzzzzzzzzzzzzzzzz']);
  });

  it('a place taken while another check refuses the request is given back', async () => {
    const { post } = timedApp(1);
    // The limit has room, so the place is taken; the model or the prompt refuses the request.
    await expectEnvelope(await post({ prompt: 'a red apple', model: 'nope' }), 400, 'validation_error');
    await expectEnvelope(await post({ prompt: 'Mickey Mouse waving' }, 'k-2'), 400, 'content_policy');
    expect((await h.blobs.list('pending/')).items).toEqual([]);
    expect((await h.blobs.list('jobs/.idempotency/')).items).toEqual([]);
    // The one place is free: a good request takes it.
    expect((await post({ prompt: 'a red apple' })).status).toBe(202);
  });
});
