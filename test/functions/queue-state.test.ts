// A queued generation says whether a worker is there to take it (ADR 0040, the peers review's G3):
// `queue` from the workers' presence documents, fresh ones only, read at most every 15 s; absent once
// the generation runs or has ended, and left out (never a failed GET) when the fleet does not read.
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { specReads, type SpecReads, workerPresenceKey } from '../../shared/worker-presence.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const T0 = Date.parse('2026-12-07T12:00:00Z');
/** A worker's document as written at `writtenAt`: freshness is the store's write time (its file's mtime here), not the worker's clock. */
async function presence(id: string, state: 'starting' | 'ready' | 'busy', writtenAt: number, beatAt = writtenAt, reads?: SpecReads) {
  await h.blobs.put(workerPresenceKey(id), new TextEncoder().encode(JSON.stringify({ v: 1, worker_id: id, state, started_at: new Date(T0 - 600_000).toISOString(), beat_at: new Date(beatAt).toISOString(), ...(reads ? { reads } : {}) })));
  await utimes(join(h.dir, 'blobs', 'objects', workerPresenceKey(id)), new Date(writtenAt), new Date(writtenAt));
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
    await presence('future', 'starting', T0 + 5_000); // a store clock a little ahead of the API's
    await presence('skewed', 'ready', T0 - 600_000, T0 + 3_600_000); // its worker's clock an hour ahead: the write time decides
    await h.blobs.put(workerPresenceKey('junk'), new TextEncoder().encode('{"v":1,'));
    await utimes(join(h.dir, 'blobs', 'objects', workerPresenceKey('junk')), new Date(T0), new Date(T0)); // fresh: read, and skipped as damaged
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

  it('with fleetCacheMs (clipag serve: 1 s), a worker that turned busy shows at the next second, not after 15 s of "a worker is free" (review-docs F4)', async () => {
    const { LOCAL_FLEET_CACHE_MS } = await import('../../cli/serve.ts');
    let now = T0;
    await presence('w', 'ready', T0 - 1_000);
    const { post } = app(() => now, { fleetCacheMs: LOCAL_FLEET_CACHE_MS });
    expect(((await (await post('/v1/generations', { prompt: 'a red circle' })).json()) as { queue: { workers_busy: number } }).queue.workers_busy).toBe(0);
    await presence('w', 'busy', T0);
    now += 1_100;
    expect(((await (await post('/v1/generations', { prompt: 'a blue square' })).json()) as { queue: { workers_busy: number; note: string } }).queue).toMatchObject({ workers_busy: 1, note: expect.stringMatching(/^the one worker is running other generations/) });
  });

  it('notes for a busy fleet with none starting, and for one that is only starting', async () => {
    const { fleetNote } = await import('../../shared/worker-presence.ts');
    expect(fleetNote({ workers_ready: 2, workers_busy: 2, workers_starting: 0 })).toBe(
      "all 2 workers are running other generations: this one starts when one is free (while generations wait, more workers are started up to the deployment's maximum, which takes a few minutes)",
    );
    expect(fleetNote({ workers_ready: 0, workers_busy: 0, workers_starting: 2 })).toBe('2 workers are starting (loading the model): the generation starts in a minute or two');
    expect(fleetNote({ workers_ready: 3, workers_busy: 1, workers_starting: 0 })).toBe('2 workers are free: the generation starts within seconds');
    // clipag serve's one worker: nothing is started for the queue, and none running means it stopped.
    expect(fleetNote({ workers_ready: 1, workers_busy: 1, workers_starting: 0 }, { scales: false })).toBe('the one worker is running other generations: this one starts when one is free');
    expect(fleetNote({ workers_ready: 0, workers_busy: 0, workers_starting: 0 }, { scales: false })).toBe("no worker is running: this server's worker has stopped or is unhealthy (its log says why); the generation starts when one runs again");
  });

  // The compatibility review's F3: during a deploy or a rollback, a generation only a newer worker reads
  // was told "a worker is free: starts within seconds" while every worker running put it back.
  it("a generation no running worker reads (a field, or a value, of a newer version) is told so, not 'starts within seconds'", async () => {
    const older: SpecReads = { ...specReads(), values: { ...specReads().values, output_format: ['png', 'jpeg'] } };
    await presence('old-1', 'ready', T0 - 10_000, T0 - 10_000, older);
    await presence('old-2', 'busy', T0 - 10_000, T0 - 10_000, older);
    const { post, get } = app(() => T0);
    const webp = (await (await post('/v1/generations', { prompt: 'a red circle', output_format: 'webp' })).json()) as { id: string; queue: unknown };
    const told = { workers_ready: 2, workers_busy: 1, workers_starting: 0, note: 'no worker running now reads this generation\'s request (output_format: "webp"): the service is being deployed or rolled back, and it starts once a worker of the version that made it runs' };
    expect(webp.queue).toEqual(told);
    expect(((await (await get(`/v1/generations/${webp.id}`)).json()) as { queue: unknown }).queue).toEqual(told);
    // One those workers read is told as before.
    const png = (await (await post('/v1/generations', { prompt: 'a red circle' })).json()) as { queue: { note: string } };
    expect(png.queue.note).toBe('a worker is free: the generation starts within seconds');
  });

  it('a worker that reads it, or one from before workers said what they read, counts as one that may: the note is as before', async () => {
    const older: SpecReads = { ...specReads(), values: { ...specReads().values, output_format: ['png', 'jpeg'] } };
    await presence('old', 'ready', T0 - 10_000, T0 - 10_000, older);
    await presence('silent', 'ready', T0 - 10_000); // no `reads`: from before the field
    const { post } = app(() => T0);
    const webp = (await (await post('/v1/generations', { prompt: 'a red circle', output_format: 'webp' })).json()) as { queue: { note: string } };
    expect(webp.queue.note).toBe('2 workers are free: the generation starts within seconds');
  });

  it("a newer worker's `reads` this version cannot parse leaves the worker counted, as one that may read anything", async () => {
    await presence('newer', 'ready', T0 - 10_000, T0 - 10_000, { spec_keys: Array.from({ length: 300 }, (_, i) => `k${i}`), values: {} } as SpecReads);
    const { post } = app(() => T0);
    const webp = (await (await post('/v1/generations', { prompt: 'a red circle', output_format: 'webp' })).json()) as { queue: { workers_ready: number; note: string } };
    expect(webp.queue).toMatchObject({ workers_ready: 1, note: 'a worker is free: the generation starts within seconds' });
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

  it('a fleet that does not read leaves queue out and logs it once (not per GET): the generation is made and shown all the same', async () => {
    let reads = 0;
    const { post, get } = app(() => T0, { fleet: () => (reads++, Promise.reject(new Error('AccessDenied'))) });
    const made = await post('/v1/generations', { prompt: 'a red circle' });
    expect(made.status).toBe(202);
    const { id, ...view } = (await made.json()) as { id: string };
    expect(view).not.toHaveProperty('queue');
    for (let i = 0; i < 5; i++) expect(await (await get(`/v1/generations/${id}`)).json()).not.toHaveProperty('queue');
    expect(reads).toBe(1); // a failure is remembered for 5 s
    expect(h.logs.filter((l) => (l as { msg?: string }).msg === 'worker presence not read; queued views and estimates say nothing of the fleet')).toHaveLength(1);
    const estimate = await post('/v1/estimates', { prompt: 'a red circle' });
    expect(estimate.status).toBe(200);
    expect(await estimate.json()).not.toHaveProperty('queue');
  });

  it("a newer worker's document (a later format or state) fails the reading: queue is left out, never a fleet of zero", async () => {
    await presence('old', 'ready', T0);
    for (const doc of [{ v: 2, worker_id: 'new', state: 'ready' }, { v: 1, worker_id: 'new', state: 'paused', started_at: 'x', beat_at: 'x' }]) {
      await h.blobs.put(workerPresenceKey('new'), new TextEncoder().encode(JSON.stringify(doc)));
      await utimes(join(h.dir, 'blobs', 'objects', workerPresenceKey('new')), new Date(T0), new Date(T0));
      const { post } = app(() => T0);
      expect(await (await post('/v1/generations', { prompt: 'a red circle' })).json()).not.toHaveProperty('queue');
    }
  });

  it('a reading that does not answer is given up within half a second: the GET is not held', async () => {
    const { post } = app(() => T0, { fleet: () => new Promise(() => undefined) });
    const started = Date.now();
    const made = await post('/v1/generations', { prompt: 'a red circle' });
    expect(made.status).toBe(202);
    expect(await made.json()).not.toHaveProperty('queue');
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('a document that does not read fails the reading (queue left out), rather than count its worker as none', async () => {
    await presence('a', 'ready', Date.now());
    const get = h.blobs.get.bind(h.blobs);
    h.blobs.get = async (key) => (key.startsWith('workers/') ? Promise.reject(new Error('SlowDown')) : get(key));
    const { post } = app(() => Date.now());
    expect(await (await post('/v1/generations', { prompt: 'a red circle' })).json()).not.toHaveProperty('queue');
  });

  it('stale documents are dropped by their write time before any is read: a crash\'s leftovers never crowd out the fleet', async () => {
    for (let i = 0; i < 60; i++) await presence(`a-dead-${String(i).padStart(2, '0')}`, 'ready', T0 - 3_600_000);
    await presence('z-live', 'ready', T0);
    let reads = 0;
    const get = h.blobs.get.bind(h.blobs);
    h.blobs.get = async (key) => (key.startsWith('workers/') && reads++, get(key));
    const { post } = app(() => T0);
    expect(((await (await post('/v1/generations', { prompt: 'a red circle' })).json()) as { queue: { workers_ready: number } }).queue.workers_ready).toBe(1);
    expect(reads).toBe(1);
    // And clipag serve's start removes those a day old (the bucket's lifecycle rule does in AWS).
    const { removeStalePresence } = await import('../../shared/worker-presence.ts');
    expect(await removeStalePresence(h.blobs, new Date(T0 + 86_400_000 - 1_000))).toBe(60);
  });

  it('an estimate says whether a worker is there now', async () => {
    await presence('a', 'ready', T0);
    const { post } = app(() => T0);
    const res = await post('/v1/estimates', { prompt: 'a red circle' });
    expect(((await res.json()) as { queue: unknown }).queue).toEqual({ workers_ready: 1, workers_busy: 0, workers_starting: 0, note: 'a worker is free: the generation starts within seconds' });
    await expectEnvelope(await post('/v1/estimates', { prompt: '' }), 400, 'validation_error');
  });
});
