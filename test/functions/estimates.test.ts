// Cost figures (ADR 0014): usage.cost_usd at the deployment's worker price, and POST /v1/estimates from
// the run times the worker records per model and size.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { estimateSeconds, readRunSamples, recordRunSample, RUN_STATS_KEEP, runStatsKey } from '../../shared/run-stats.ts';
import { expectEnvelope, harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const priced = () => createApp({ ...h.deps, limits: { ...LIMITS, workerHourlyUsd: 3.6 } }); // 0.001 USD per second
const auth = () => ({ Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' });
const sample = (seconds: number, steps: number) => ({ seconds, steps, at: new Date().toISOString() });

describe('POST /v1/estimates', () => {
  it('before any run: no figures (null), never invented ones; nothing is queued or stored', async () => {
    const res = await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 50, n: 2 }) });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ object: 'estimate', model: 'toy', width: 224, height: 224, steps: 100, worker_seconds: null, cost_usd: null, runs: 0, hourly_usd: 3.6 });
    expect(await h.queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });

  it('from recorded runs: median and 90th percentile of seconds per step, times the steps; cost at the price', async () => {
    // Seconds per step 0.1, 0.2, 0.3, 0.4, 1.0 (a cold start): median 0.3, p90 0.76.
    for (const [s, n] of [[10, 100], [20, 100], [30, 100], [40, 100], [100, 100]] as const) await recordRunSample(h.blobs, 'toy', 224, 224, sample(s, n));
    await recordRunSample(h.blobs, 'toy', 448, 448, sample(999, 1)); // another size: not mixed in
    const res = await priced().request('/v1/estimates', { method: 'POST', headers: auth(), body: JSON.stringify({ prompt: 'apple', steps: 50 }) });
    expect(await res.json()).toMatchObject({ steps: 50, worker_seconds: { median: 15, p90: 38 }, cost_usd: { median: 0.015, p90: 0.038 }, runs: 5 });
    // Without a price: seconds, no cost.
    const unpriced = await h.request('/v1/estimates', { json: { prompt: 'apple', steps: 50 } });
    expect(await unpriced.json()).toMatchObject({ worker_seconds: { median: 15 }, cost_usd: null, hourly_usd: null });
  });

  it('is validated like a generation: 400 for a bad body or unknown model, 415 without JSON, 401 without a key', async () => {
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple', steps: 0 } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple', model: 'nope' } }), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/estimates', { method: 'POST', body: 'prompt=apple', headers: { 'Content-Type': 'text/plain' } }), 415);
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'apple' }, key: null }), 401);
    await expectEnvelope(await h.request('/v1/estimates', { method: 'GET' }), 405);
  });

  it('an unreadable statistics document gives no figures (not a 500), and the next run starts it afresh', async () => {
    await h.blobs.put(runStatsKey('toy', 224, 224), Buffer.from('{"v": 1, "samples": [{"seconds": -1'));
    const res = await h.request('/v1/estimates', { json: { prompt: 'apple' } });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ worker_seconds: null, runs: 0 });
    await recordRunSample(h.blobs, 'toy', 224, 224, sample(5, 10));
    expect(await readRunSamples(h.blobs, 'toy', 224, 224)).toHaveLength(1);
  });
});

describe('run statistics', () => {
  it('keep the latest runs, and concurrent records all land (conditional writes)', async () => {
    await Promise.all(Array.from({ length: 12 }, (_, i) => recordRunSample(h.blobs, 'toy', 64, 64, sample(i + 1, 1))));
    expect((await readRunSamples(h.blobs, 'toy', 64, 64)).map((s) => s.seconds).sort((a, b) => a - b)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    for (let i = 0; i < RUN_STATS_KEEP; i++) await recordRunSample(h.blobs, 'toy', 64, 64, sample(100 + i, 1));
    const kept = await readRunSamples(h.blobs, 'toy', 64, 64);
    expect(kept).toHaveLength(RUN_STATS_KEEP);
    expect(kept[0]!.seconds).toBe(100); // the oldest went
  });

  it('refuse nonsense samples and estimate nothing from nothing', async () => {
    await expect(recordRunSample(h.blobs, 'toy', 64, 64, sample(-1, 1))).rejects.toThrow();
    await expect(recordRunSample(h.blobs, 'toy', 64, 64, sample(1, 0))).rejects.toThrow();
    expect(estimateSeconds([], 100)).toBeNull();
  });
});

describe('usage.cost_usd', () => {
  it('is worker_seconds at the price, and null where the deployment sets none', async () => {
    const { id } = (await (await h.request('/v1/generations', { json: { prompt: 'apple' } })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), usage: { encoder_passes: 1600, worker_seconds: 12.5 } }));
    const unpriced = (await (await h.request(`/v1/generations/${id}`)).json()) as any;
    expect(unpriced.usage).toEqual({ encoder_passes: 1600, worker_seconds: 12.5, cost_usd: null });
    const got = (await (await priced().request(`/v1/generations/${id}`, { headers: auth() })).json()) as any;
    expect(got.usage).toEqual({ encoder_passes: 1600, worker_seconds: 12.5, cost_usd: 0.0125 });
  });
});
