// A queued generation says whether a worker is there to take it (ADR 0040, the peers review's G3):
// `queue` from the workers' presence documents, fresh ones only, read at most every 15 s; absent once
// the generation runs or has ended, and left out (never a failed GET) when the fleet does not read.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { workerPresenceKey } from '../../shared/worker-presence.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const T0 = Date.parse('2026-12-07T12:00:00Z');
async function presence(id: string, state: 'starting' | 'ready' | 'busy', beatAt: number, extra: object = {}) {
  await h.blobs.put(workerPresenceKey(id), new TextEncoder().encode(JSON.stringify({ v: 1, worker_id: id, state, started_at: new Date(T0 - 600_000).toISOString(), beat_at: new Date(beatAt).toISOString(), ...extra })));
}

function app(now: () => number, extra: Record<string, unknown> = {}) {
  const a = createApp({ ...h.deps, clock: () => new Date(now()), ...extra });
  return {
    post: (path: string, body: unknown) => a.request(path, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) }),
    get: (path: string) => a.request(path, { headers: { Authorization: `Bearer ${h.alice}` } }),
  };
}

describe('queue state of a queued generation', () => {
  it('with no worker up: says none is running and that one takes a few minutes to start; the POST, GET and list all say so', async () => {
    const { post, get } = app(() => T0);
    const made = await post('/v1/generations', { prompt: 'a red circle' });
    expect(made.status).toBe(202);
    const view = (await made.json()) as { id: string; queue: unknown };
    const none = { workers_ready: 0, workers_busy: 0, workers_starting: 0, note: 'no worker is running: one is started when generations wait, which takes a few minutes (a machine boots and loads the model); the generation starts then' };
    expect(view.queue).toEqual(none);
    expect(((await (await get(`/v1/generations/${view.id}`)).json()) as { queue: unknown }).queue).toEqual(none);
    expect(((await (await get('/v1/generations')).json()) as { data: Array<{ queue: unknown }> }).data[0]!.queue).toEqual(none);
  });

  it('counts fresh workers only: free, busy and starting ones, each said in words', async () => {
    let now = T0;
    await presence('a', 'ready', T0 - 30_000);
    await presence('b', 'busy', T0 - 150_000); // within the 3 minutes (also 16 s later)
    await presence('dead', 'ready', T0 - 181_000); // a killed task's leftover
    await presence('future', 'starting', T0 + 5_000); // a worker clock a little ahead
    await h.blobs.put(workerPresenceKey('junk'), new TextEncoder().encode('{"v":1,'));
    const { post, get } = app(() => now);
    const { id, queue } = (await (await post('/v1/generations', { prompt: 'a red circle' })).json()) as { id: string; queue: unknown };
    expect(queue).toEqual({ workers_ready: 2, workers_busy: 1, workers_starting: 1, note: 'a worker is free: the generation starts within seconds' });

    // Read again only after 15 s: a poll loop of many callers lists the prefix once in that time.
    await h.blobs.delete(workerPresenceKey('a'));
    now += 10_000;
    expect(((await (await get(`/v1/generations/${id}`)).json()) as { queue: { workers_ready: number } }).queue.workers_ready).toBe(2);
    now += 6_000;
    expect(((await (await get(`/v1/generations/${id}`)).json()) as { queue: unknown }).queue).toEqual({
      workers_ready: 1,
      workers_busy: 1,
      workers_starting: 1,
      note: 'the one worker is running other generations: this one starts when one is free, or when the worker starting now is ready',
    });
  });

  it('notes for a busy fleet with none starting, and for one that is only starting', async () => {
    const { fleetNote } = await import('../../shared/worker-presence.ts');
    expect(fleetNote({ workers_ready: 2, workers_busy: 2, workers_starting: 0 })).toBe(
      'all 2 workers are running other generations: this one starts when one is free (more workers are started while generations wait, which takes a few minutes)',
    );
    expect(fleetNote({ workers_ready: 0, workers_busy: 0, workers_starting: 2 })).toBe('2 workers are starting (loading the model): the generation starts in a minute or two');
    expect(fleetNote({ workers_ready: 3, workers_busy: 1, workers_starting: 0 })).toBe('2 workers are free: the generation starts within seconds');
  });

  it('a generation that runs or has ended has no queue', async () => {
    const { post, get } = app(() => T0);
    const { id } = (await (await post('/v1/generations', { prompt: 'a red circle' })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', started_at: new Date(T0).toISOString(), attempts: 1 }));
    expect(await (await get(`/v1/generations/${id}`)).json()).not.toHaveProperty('queue');
    const canceled = await post(`/v1/generations/${id}/cancel`, {});
    expect(canceled.status).toBe(200);
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'canceled', finished_at: new Date(T0).toISOString() }));
    expect(await (await get(`/v1/generations/${id}`)).json()).not.toHaveProperty('queue');
  });

  it('a fleet that does not read leaves queue out and logs it: the generation is made and shown all the same', async () => {
    const { post, get } = app(() => T0, { fleet: () => Promise.reject(new Error('AccessDenied')) });
    const made = await post('/v1/generations', { prompt: 'a red circle' });
    expect(made.status).toBe(202);
    const { id, ...view } = (await made.json()) as { id: string };
    expect(view).not.toHaveProperty('queue');
    expect((await get(`/v1/generations/${id}`)).status).toBe(200);
    expect(h.logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: 'worker presence not read; queued views say nothing of the fleet' }));
    const estimate = await post('/v1/estimates', { prompt: 'a red circle' });
    expect([estimate.status, await estimate.json()]).not.toContainEqual(expect.objectContaining({ queue: expect.anything() }));
  });

  it('an estimate says whether a worker is there now', async () => {
    await presence('a', 'ready', T0);
    const { post } = app(() => T0);
    const res = await post('/v1/estimates', { prompt: 'a red circle' });
    expect(((await res.json()) as { queue: unknown }).queue).toEqual({ workers_ready: 1, workers_busy: 0, workers_starting: 0, note: 'a worker is free: the generation starts within seconds' });
    await expectEnvelope(await post('/v1/estimates', { prompt: '' }), 400, 'validation_error');
  });
});
