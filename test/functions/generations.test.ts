import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encode as pngEncode } from 'fast-png';
import { verifyLocalSignature } from '../../shared/adapters/local/index.ts';
import { parseQueueMessage } from '../../shared/schemas/queue.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { createApp } from '../../functions/app.ts';
import { preferredWaitSec } from '../../functions/routes/common.ts';
import { PreconditionFailedError, RetryableError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { jobOutputsPrefix, uploadKey } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import { usageOfRecord } from '../../shared/usage.ts';
import { blobsRefusingList, expectEnvelope, harness, queueWithOutage, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

async function post(json: unknown, headers: Record<string, string> = {}, key?: string) {
  return h.request('/v1/generations', { json, headers, ...(key ? { key } : {}) });
}

async function queued(): Promise<string[]> {
  const msgs = await h.queue.receive({ max: 10, waitSec: 0 });
  return msgs.map((m) => parseQueueMessage(m.body).job_id);
}

describe('POST → GET → list → cancel', () => {
  it('a job the worker has not finished shows warnings: [] (the field is always there)', async () => {
    const res = await post({ prompt: 'apple' });
    expect(((await res.json()) as { warnings: unknown }).warnings).toEqual([]);
  });

  it('queues a job: 202, Location, record written, small message sent', async () => {
    const res = await post({ prompt: 'a red apple', steps: 20, seed: 7 });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { id: string; status: string; progress: { step: number; total: number } };
    expect(body.status).toBe('queued');
    expect(body.progress).toEqual({ step: 0, total: 20, attempt: 0 });
    expect(res.headers.get('Location')).toBe(`/v1/generations/${body.id}`);
    const record = await h.jobs.get('acct_alice', body.id);
    expect(record).toMatchObject({ status: 'queued', owner: 'acct_alice', version: 1, spec: { prompt: 'a red apple', steps: 20, seed: 7, width: 224 } });
    const msgs = await h.queue.receive({ max: 10 });
    expect(msgs).toHaveLength(1);
    expect(JSON.parse(msgs[0].body)).toEqual({ v: 1, job_id: body.id, owner: 'acct_alice' });

    const got = await h.request(`/v1/generations/${body.id}`);
    expect(got.status).toBe(200);
    expect(await got.json()).toMatchObject({ id: body.id, status: 'queued', outputs: [], usage: { encoder_passes: 0, worker_seconds: 0 } });
  });

  it('lists only the caller\'s jobs, newest first, with a working cursor', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await post({ prompt: `p${i}` });
      ids.push(((await res.json()) as { id: string }).id);
      await new Promise((r) => setTimeout(r, 3)); // ids order by millisecond
    }
    await post({ prompt: 'bob' }, {}, h.bob);
    const page1 = (await (await h.request('/v1/generations?limit=2')).json()) as { data: { id: string }[]; next_cursor: string | null };
    expect(page1.data.map((j) => j.id)).toEqual([ids[2], ids[1]]);
    expect(page1.next_cursor).toBe(ids[1]);
    const page2 = (await (await h.request(`/v1/generations?limit=2&cursor=${page1.next_cursor}`)).json()) as typeof page1;
    expect(page2.data.map((j) => j.id)).toEqual([ids[0]]);
    expect(page2.next_cursor).toBeNull();
    await expectEnvelope(await h.request('/v1/generations?limit=0'), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/generations?limit=101'), 400, 'validation_error');
    await expectEnvelope(await h.request('/v1/generations?cursor=../x'), 400, 'validation_error');
    // A cursor no page gave (a typo, a stale format) is the caller's bug, not an empty page.
    expect((await expectEnvelope(await h.request('/v1/generations?cursor=garbage'), 400, 'validation_error')).message).toMatch(/cursor must be the next_cursor of an earlier page/);
    expect((await expectEnvelope(await h.request('/v1/generations?limit=abc'), 400, 'validation_error')).message).toMatch(/limit must be a whole number from 1 to 100/);
    // One message, whichever check finds the limit bad (digits only, or the range), and said once ("limit: limit must …" before).
    for (const bad of ['abc', '0', '101', '0x3']) {
      const err = await expectEnvelope(await h.request(`/v1/generations?limit=${bad}`), 400, 'validation_error');
      expect([err.param, err.message], bad).toEqual(['limit', 'limit must be a whole number from 1 to 100, in decimal digits']);
    }
    expect((await expectEnvelope(await h.request('/v1/generations?cursor=garbage'), 400, 'validation_error')).message).toBe('cursor must be the next_cursor of an earlier page');
    // Read as written: a parameter given twice says so, and limit takes decimal digits only.
    const twice = await expectEnvelope(await h.request('/v1/generations?limit=2&limit=5'), 400, 'validation_error');
    expect([twice.param, twice.message]).toEqual(['limit', 'limit is given 2 times; give it once']);
    for (const odd of ['0x3', '3e0', '%203', '3.0', '-1']) {
      const err = await expectEnvelope(await h.request(`/v1/generations?limit=${odd}`), 400, 'validation_error');
      expect([err.param, err.message], odd).toEqual(['limit', expect.stringMatching(/limit must be a whole number from 1 to 100/)]);
    }
    expect((await h.request('/v1/generations?limit=003')).status).toBe(200);
  });

  it('?status= lists only generations in that status, newest first, paging on through pages that scan and find few', async () => {
    // 250 of alice's, oldest first: every tenth failed, the oldest canceled; one of bob's failed.
    const t0 = Date.now() - 1_000_000;
    const statusOf = (i: number) => (i === 0 ? 'canceled' : i % 10 === 0 ? 'failed' : 'succeeded');
    const ids: string[] = [];
    for (let i = 0; i < 250; i++) {
      const job = newJobRecord({ id: newJobId(t0 + i * 10), owner: 'acct_alice', spec: GenerationSpec.parse({ prompt: `p${i}`, model: 'toy' }) });
      await h.jobs.create({ ...job, status: statusOf(i) as JobRecord['status'] });
      ids.push(job.id);
    }
    await h.jobs.create({ ...newJobRecord({ id: newJobId(t0 + 5), owner: 'acct_bob', spec: GenerationSpec.parse({ prompt: 'bob', model: 'toy' }) }), status: 'failed' });
    type Page = { data: { id: string; status: string }[]; next_cursor: string | null };
    const all = async (status: string, limit: number) => {
      const pages: Page[] = [];
      let cursor: string | null = null;
      do {
        const res = await h.request(`/v1/generations?status=${status}&limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`);
        expect(res.status).toBe(200);
        pages.push((await res.json()) as Page);
        cursor = pages.at(-1)!.next_cursor;
      } while (cursor && pages.length < 50);
      return pages;
    };
    const failed = await all('failed', 7);
    const newestFirst = (pred: (i: number) => boolean) => ids.map((id, i) => [id, i] as const).filter(([, i]) => pred(i)).map(([id]) => id).reverse();
    expect(failed.flatMap((p) => p.data.map((j) => j.id))).toEqual(newestFirst((i) => statusOf(i) === 'failed'));
    expect(failed.flatMap((p) => p.data.map((j) => j.status))).toEqual(Array(24).fill('failed'));
    expect(failed[0]!.data).toHaveLength(7);
    // The oldest is the only canceled one: the first two requests read 100 each and find none, and say to go on.
    const canceled = await all('canceled', 20);
    expect(canceled.map((p) => p.data.map((j) => j.id))).toEqual([[], [], [ids[0]]]);
    expect(canceled[0]!.next_cursor).not.toBeNull();
    expect((await all('running', 20)).flatMap((p) => p.data)).toEqual([]);
    await expectEnvelope(await h.request('/v1/generations?status=done'), 400, 'validation_error');
  });

  it('succeeded job: outputs carry signed URLs with their expiry, and usage', async () => {
    const { id } = (await (await post({ prompt: 'apple', n: 2 })).json()) as { id: string };
    // Simulate the worker through the JobStore.
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', started_at: new Date().toISOString(), attempts: 1 }));
    await h.jobs.update('acct_alice', id, (cur) => ({
      ...cur,
      status: 'succeeded',
      finished_at: new Date().toISOString(),
      progress: { step: cur.progress.total, total: cur.progress.total },
      outputs: [0, 1].map((i) => ({ key: `outputs/acct_alice/${id}/${i}.png`, width: 224, height: 224, clip_score: 0.31 })),
      usage: { encoder_passes: 6400, worker_seconds: 12.5 },
      warnings: ['"apple": model toy does not know the word "apple", so it cannot draw it'],
    }));
    const before = Date.now();
    const body = (await (await h.request(`/v1/generations/${id}`)).json()) as {
      status: string;
      outputs: { index: number; url: string; expires_at: string }[];
      usage: unknown;
      progress: unknown;
      warnings: string[];
    };
    expect(body.status).toBe('succeeded');
    expect(body.warnings).toEqual(['"apple": model toy does not know the word "apple", so it cannot draw it']);
    expect(body.usage).toEqual({ encoder_passes: 6400, worker_seconds: 12.5, cost_usd: null, hourly_usd: null }); // no price in this deployment
    expect(body.progress).toEqual({ step: 200, total: 200, attempt: 1 }); // steps over all n = 2 images, of the first run
    expect(body.outputs).toHaveLength(2);
    for (const [i, out] of body.outputs.entries()) {
      expect(out.index).toBe(i);
      const check = verifyLocalSignature('x'.repeat(32), 'GET', out.url);
      expect(check).toMatchObject({ ok: true, key: `outputs/acct_alice/${id}/${i}.png` });
      const expires = Date.parse(out.expires_at);
      expect(expires).toBeGreaterThanOrEqual(before + 599_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 601_000);
    }
    // A succeeded job cannot be canceled.
    await expectEnvelope(await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' }), 409, 'job_terminal');
    // Where the deployment keeps outputs for a while only (the bucket's lifecycle), the view says until when.
    expect(((await (await h.request(`/v1/generations/${id}`)).json()) as any).outputs_expire_at).toBeNull();
    const finished = (await h.jobs.get('acct_alice', id))!.finished_at!;
    const kept30 = createApp({ ...h.deps, limits: { ...h.deps.limits, outputRetentionDays: 30 } });
    const view = (await (await kept30.request(`/v1/generations/${id}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect(Date.parse(view.outputs_expire_at) - Date.parse(finished)).toBe(30 * 86_400_000);
    const queued = (await (await post({ prompt: 'pear' })).json()) as any;
    expect(queued.outputs_expire_at).toBeNull(); // nothing stored yet
    // A store whose signing credentials end in 2 minutes (linkLifeSec): links signed for that, and said.
    const lives: number[] = [];
    const shortLived = new Proxy(h.blobs, {
      get: (target, prop, receiver) => (prop === 'linkLifeSec' ? async (sec: number) => (lives.push(sec), Math.min(sec, 120)) : Reflect.get(target, prop, receiver)),
    });
    const capped = createApp({ ...h.deps, blobs: shortLived });
    const t0 = Date.now();
    const short = (await (await capped.request(`/v1/generations/${id}`, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    expect(lives).toEqual([600]);
    for (const out of short.outputs) {
      expect(Date.parse(out.expires_at)).toBeLessThanOrEqual(Date.now() + 121_000);
      expect(Date.parse(out.expires_at)).toBeGreaterThanOrEqual(t0 + 119_000);
      expect(verifyLocalSignature('x'.repeat(32), 'GET', out.url)).toMatchObject({ ok: true });
      expect(Number(new URL(out.url).searchParams.get('expires')) * 1000).toBeLessThanOrEqual(Date.now() + 121_000);
    }
  });
});

describe('a POST whose record write keeps losing its races', () => {
  it('answers 503 busy (retry the same request), not an undocumented 412', async () => {
    const { queue, outage } = queueWithOutage(h.queue);
    let contend = false;
    const blobs = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'replaceIfMatch'
          ? (key: string, ...rest: [Uint8Array, string]) =>
              contend && key.startsWith('jobs/acct_alice/') ? Promise.reject(new PreconditionFailedError('another writer')) : target.replaceIfMatch(key, ...rest)
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs), queue });
    const post = () => app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'k1' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect((await post()).status).toBe(503); // the queue is down: enqueue_failed, to be re-queued by the retry
    outage.down = false;
    contend = true; // the retry's re-queue loses every race for the record
    const err = await expectEnvelope(await post(), 503, 'busy');
    expect(err.message).toMatch(/retry the request/);
    contend = false;
    expect((await post()).status).toBe(200); // the same retry, once the record is quiet, re-queues the job
    expect((await h.queue.receive({ max: 10, waitSec: 0 })).length).toBe(1);
  });

  it('a create that landed but answered an error leaves a job that never runs behind the caller\'s back, with or without a key', async () => {
    const blobs = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'putIfAbsent'
          ? async (key: string, ...rest: [Uint8Array]) => {
              const written = await target.putIfAbsent(key, ...rest);
              if (key.startsWith('jobs/acct_alice/')) throw new RetryableError('S3 request failed: socket hang up (the PUT landed)');
              return written;
            }
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs) });
    const res = await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect(res.status).toBe(503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } }); // the sweep will not send it
    expect((await h.blobs.list('pending/active/')).items).toEqual([]);
  });

  it('a create that never landed leaves no place taken: failed POSTs do not use up the active-job limit', async () => {
    let down = true;
    const blobs = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'putIfAbsent'
          ? (key: string, ...rest: [Uint8Array]) => (down && key.startsWith('jobs/acct_alice/') ? Promise.reject(new RetryableError('S3 is unavailable')) : target.putIfAbsent(key, ...rest))
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs), limits: { ...h.deps.limits, maxActiveJobs: 2 } });
    const post = (key: string) => app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key }, body: JSON.stringify({ prompt: 'apple' }) });
    expect((await post('a')).status).toBe(503);
    expect((await post('b')).status).toBe(503);
    expect((await h.blobs.list('pending/active/')).items).toEqual([]);
    down = false;
    expect((await post('c')).status).toBe(202);
  });
});

describe('Prefer: wait', () => {
  const waitingApp = () => createApp({ ...h.deps, limits: { ...h.deps.limits, maxWaitSec: 3 } });
  const call = (app: ReturnType<typeof createApp>, path: string, init: { method?: string; body?: unknown; prefer?: string } = {}) =>
    app.request(path, {
      method: init.method ?? 'GET',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', ...(init.prefer ? { Prefer: init.prefer } : {}) },
      ...(init.body ? { body: JSON.stringify(init.body) } : {}),
    });
  const finishSoon = (id: string, ms: number) =>
    setTimeout(() => void h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(), progress: { step: cur.progress.total, total: cur.progress.total } })), ms);

  it('POST and GET hold the response until the generation ends (within the wait), and say what they applied', async () => {
    const app = waitingApp();
    const t0 = Date.now();
    const created = call(app, '/v1/generations', { method: 'POST', body: { prompt: 'apple' }, prefer: 'respond-async, wait=3' });
    // The job exists once the POST has written it: finish it shortly after.
    const id = await (async () => {
      for (;;) {
        const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
        if (job) return job.id;
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    finishSoon(id, 300);
    const res = await created;
    expect(res.status).toBe(202);
    expect(res.headers.get('Preference-Applied')).toBe('wait=3');
    expect(((await res.json()) as { status: string }).status).toBe('succeeded');
    expect(Date.now() - t0).toBeLessThan(2500);
    const got = await call(app, `/v1/generations/${id}`, { prefer: 'wait=3' });
    expect(((await got.json()) as { status: string }).status).toBe('succeeded'); // already ended: at once
  });

  it('a generation that does not end within the wait is answered as it stands; the wait is capped; other preferences and no header change nothing', async () => {
    const app = waitingApp();
    const { id } = (await (await call(app, '/v1/generations', { method: 'POST', body: { prompt: 'apple' } })).json()) as { id: string };
    const t0 = Date.now();
    const res = await call(app, `/v1/generations/${id}`, { prefer: 'wait=1' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(700); // the wait ends 250 ms before its second is up
    expect(Date.now() - t0).toBeLessThan(1100); // counted from the request's arrival
    expect(res.headers.get('Preference-Applied')).toBe('wait=1');
    expect(((await res.json()) as { status: string }).status).toBe('queued');
    // Still queued: other preferences, a bad wait and no header answer at once.
    for (const prefer of ['respond-async', 'wait=soon', undefined]) {
      const t1 = Date.now();
      const plain = await call(app, `/v1/generations/${id}`, prefer ? { prefer } : {});
      expect(Date.now() - t1, String(prefer)).toBeLessThan(600); // no wait: well under the second a wait would take
      expect(plain.headers.get('Preference-Applied'), String(prefer)).toBeNull();
    }
    finishSoon(id, 200);
    const capped = await call(app, `/v1/generations/${id}`, { prefer: 'wait=600' });
    expect(capped.headers.get('Preference-Applied')).toBe('wait=3');
    expect(((await capped.json()) as { status: string }).status).toBe('succeeded');
    // A deployment that allows no wait (the default) ignores it.
    const none = await call(h.app, `/v1/generations/${id}`, { prefer: 'wait=3' });
    expect(none.headers.get('Preference-Applied')).toBeNull();
  });

  it('a record that stops reading during the wait is a 409 corrupt_record, as a plain GET answers, without Preference-Applied', async () => {
    const app = waitingApp();
    const { id } = (await (await call(app, '/v1/generations', { method: 'POST', body: { prompt: 'apple' } })).json()) as { id: string };
    setTimeout(() => void h.blobs.put(`jobs/acct_alice/${id}.json`, new TextEncoder().encode('{"not": "a job"')), 300);
    const res = await call(app, `/v1/generations/${id}`, { prefer: 'wait=3' });
    expect(res.status).toBe(409);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('corrupt_record');
    expect(res.headers.get('Preference-Applied')).toBeNull();
  });

  it('parses Prefer as RFC 7240 lists it: wait among other preferences, quoted, capped; commas inside quotes are not separators', () => {
    expect(preferredWaitSec('wait=5', 10)).toBe(5);
    expect(preferredWaitSec('respond-async, wait=5', 10)).toBe(5);
    expect(preferredWaitSec('WAIT = "7"; foo', 10)).toBe(7);
    expect(preferredWaitSec('wait=9999999999', 10)).toBe(10);
    expect(preferredWaitSec('foo="a,wait=5"', 10)).toBeNull();
    expect(preferredWaitSec('wait="5', 10)).toBeNull();
    expect(preferredWaitSec('wait=-1, wait=soon', 10)).toBeNull();
    expect(preferredWaitSec('wait=5', 0)).toBeNull(); // the deployment allows none
    expect(preferredWaitSec(undefined, 10)).toBeNull();
  });
});

describe('cancel', () => {
  it('queued → canceled at once; idempotent', async () => {
    const { id } = (await (await post({ prompt: 'apple' })).json()) as { id: string };
    const first = await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' });
    expect(first.status).toBe(200);
    expect(await first.json()).toMatchObject({ id, status: 'canceled', cancel_requested: true });
    const version = (await h.jobs.get('acct_alice', id))!.version;
    const again = await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' });
    expect(again.status).toBe(200);
    expect(await again.json()).toMatchObject({ id, status: 'canceled' });
    expect((await h.jobs.get('acct_alice', id))!.version).toBe(version); // nothing rewritten
  });

  it('running → cancel_requested; a racing progress write is not lost', async () => {
    const { id } = (await (await post({ prompt: 'apple', steps: 50 })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', started_at: new Date().toISOString() }));
    // Cancel and 20 progress writes race; both kinds of change must survive.
    const progress = Array.from({ length: 20 }, (_, i) =>
      h.jobs.update('acct_alice', id, (cur) => ({ ...cur, progress: { step: Math.max(cur.progress.step, i + 1), total: 50 } }), { retries: 50 }),
    );
    const [res] = await Promise.all([h.request(`/v1/generations/${id}/cancel`, { method: 'POST' }), ...progress]);
    expect(res.status).toBe(200);
    const record = (await h.jobs.get('acct_alice', id))!;
    expect(record.status).toBe('running');
    expect(record.cancel_requested).toBe(true);
    expect(record.progress.step).toBe(20);
    expect(record.version).toBe(1 + 1 + 20 + 1);
  });

  it('a queued job that an earlier attempt stored images for (put back after a storage fault) keeps none of them once canceled; a removal that fails still cancels, and is logged', async () => {
    const stored = async (id: string) => {
      await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, attempts: 1, started_at: new Date().toISOString() }));
      for (const key of ['0.png', 'frames/0/0000_64x64.png']) await h.blobs.put(`${jobOutputsPrefix('acct_alice', id)}${key}`, new Uint8Array([1, 2, 3]));
    };
    const outputsOf = async (id: string) => (await h.blobs.list(jobOutputsPrefix('acct_alice', id))).items.map((i) => i.key);
    const { id } = (await (await post({ prompt: 'apple' })).json()) as { id: string };
    await stored(id);
    const res = await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ id, status: 'canceled', outputs: [] });
    expect(await outputsOf(id)).toEqual([]);

    // Storage refuses the listing: the cancel stands, and the lifecycle rule is left to remove them.
    const { id: other } = (await (await post({ prompt: 'pear' })).json()) as { id: string };
    await stored(other);
    const logs: unknown[] = [];
    const app = createApp({ ...h.deps, blobs: blobsRefusingList(h.blobs, 'outputs/'), log: (entry) => logs.push(entry) });
    const canceled = await app.request(`/v1/generations/${other}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${h.alice}` } });
    expect(canceled.status).toBe(200);
    expect((await h.jobs.get('acct_alice', other))!.status).toBe('canceled');
    expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/stored images of a canceled generation were not removed/), job_id: other, error: expect.stringMatching(/injected: S3 503 on LIST/) }));
    expect(await outputsOf(other)).toHaveLength(2);
  });

  it('failed job → 409; unknown and foreign ids → 404', async () => {
    const { id } = (await (await post({ prompt: 'apple' })).json()) as { id: string };
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'failed', error: { code: 'x', message: 'y' } }));
    await expectEnvelope(await h.request(`/v1/generations/${id}/cancel`, { method: 'POST' }), 409, 'job_terminal');
    await expectEnvelope(await h.request(`/v1/generations/${id}/cancel`, { method: 'POST', key: h.bob }), 404, 'not_found');
    await expectEnvelope(await h.request(`/v1/generations/nosuchjob/cancel`, { method: 'POST' }), 404, 'not_found');
    expect((await h.jobs.get('acct_alice', id))!.status).toBe('failed');
  });

  it('a 404 for an id carries param "id"; one for a path the API has no route for carries null (told apart without reading the message)', async () => {
    const { id } = (await (await post({ prompt: 'apple' })).json()) as { id: string };
    const asBob = { key: h.bob };
    for (const [path, init] of [
      [`/v1/generations/${id}`, asBob],
      [`/v1/generations/${id}/frames`, asBob],
      [`/v1/generations/${id}/cancel`, { method: 'POST', ...asBob }],
      [`/v1/generations/${id}/webhook/redeliver`, { method: 'POST', ...asBob }],
      [`/v1/generations/${id}`, { method: 'DELETE', ...asBob }],
    ] as const) {
      expect((await expectEnvelope(await h.request(path, init), 404, 'not_found')).param, path).toBe('id');
    }
    expect((await expectEnvelope(await h.request('/v1/nope'), 404, 'not_found')).param).toBeNull();
    expect((await expectEnvelope(await h.request(`/v1/generations/${id}/nope`), 404, 'not_found')).param).toBeNull();
  });

  it('the root and a trailing slash: the 404 says where the API is, or the path without the slash (the new-user review)', async () => {
    expect((await expectEnvelope(await h.request('/'), 404, 'not_found')).message).toBe('no route for GET /: the API is under /v1 (GET /v1/models, POST /v1/generations …); GET /openapi.json describes it');
    expect((await expectEnvelope(await h.request('/v1/generations/'), 404, 'not_found')).message).toBe('no route for GET /v1/generations/: without the trailing slash, /v1/generations');
    expect((await expectEnvelope(await h.request('/v1/nope/'), 404, 'not_found')).message).toBe('no route for GET /v1/nope/');
  });
});

describe('another owner', () => {
  it("GET of another owner's job is 404, not 403, and it is absent from their list", async () => {
    const { id } = (await (await post({ prompt: 'secret' })).json()) as { id: string };
    const err = await expectEnvelope(await h.request(`/v1/generations/${id}`, { key: h.bob }), 404, 'not_found');
    expect(err.message).not.toContain('acct_alice');
    const list = (await (await h.request('/v1/generations', { key: h.bob })).json()) as { data: unknown[] };
    expect(list.data).toEqual([]);
  });
});

describe('DELETE /v1/generations/{id}', () => {
  it("removes a finished generation's images and frames and blanks what the caller wrote; the record and its usage stay; idempotent", async () => {
    const created = (await (await post({ prompts: [{ text: 'a red apple', weight: 1 }, { text: 'a pear', weight: 0.5 }], negative_prompt: 'blurry', n: 2, metadata: { order: 'A-7' } })).json()) as { id: string };
    const id = created.id;
    await expectEnvelope(await h.request(`/v1/generations/${id}`, { method: 'DELETE' }), 409, 'job_not_finished'); // queued: cancel first
    const keys = [0, 1].map((i) => `outputs/acct_alice/${id}/${i}.png`);
    for (const key of [...keys, `outputs/acct_alice/${id}/frames/0/0000.png`]) await h.blobs.put(key, new Uint8Array([1]), { contentType: 'image/png' });
    await h.blobs.put(`outputs/acct_alice/other-job/0.png`, new Uint8Array([2]), { contentType: 'image/png' });
    await h.jobs.update('acct_alice', id, (cur) => ({
      ...cur, status: 'succeeded', attempts: 1, finished_at: new Date().toISOString(),
      outputs: keys.map((key) => ({ key, width: 224, height: 224 })), usage: { encoder_passes: 80, worker_seconds: 4 },
      warnings: ['"pear": not known'], content_flags: [{ rule: 'r', category: 'bias', term: 'apple', message: 'm', param: 'prompts.0.text' }],
    }));
    const res = await h.request(`/v1/generations/${id}`, { method: 'DELETE' });
    expect(res.status).toBe(200);
    const view = (await res.json()) as any;
    expect(view).toMatchObject({ status: 'succeeded', outputs: [], outputs_expire_at: null, warnings: [], content_flags: [], metadata: {}, deleted_at: expect.any(String) });
    expect(view.request).toMatchObject({ prompts: [{ text: '[deleted]', weight: 1 }, { text: '[deleted]', weight: 0.5 }], negative_prompt: '[deleted]', n: 2 });
    expect(view.usage).toMatchObject({ encoder_passes: 80, worker_seconds: 4 });
    expect(JSON.stringify(await h.jobs.get('acct_alice', id))).not.toMatch(/apple|pear|blurry|A-7/);
    expect((await h.blobs.list(`outputs/acct_alice/${id}/`)).items).toEqual([]);
    expect(await h.blobs.get('outputs/acct_alice/other-job/0.png')).not.toBeNull(); // only its own
    expect(((await (await h.request(`/v1/generations/${id}/frames`)).json()) as any).data).toEqual([]);
    // Still in the list, as deleted; a second DELETE answers the same; the record keeps what the usage audit reads.
    expect(((await (await h.request('/v1/generations')).json()) as any).data.find((g: any) => g.id === id).deleted_at).toBe(view.deleted_at);
    const again = await h.request(`/v1/generations/${id}`, { method: 'DELETE' });
    expect([again.status, ((await again.json()) as any).deleted_at]).toEqual([200, view.deleted_at]);
    expect(usageOfRecord((await h.jobs.get('acct_alice', id))!)).toMatchObject({ images: 2, workerSeconds: 4 });
    // Another owner's id is a 404; so is an unknown one.
    await expectEnvelope(await h.request(`/v1/generations/${id}`, { method: 'DELETE', key: h.bob }), 404, 'not_found');
  });
});

describe('DELETE and the output check', () => {
  it("blanks the output check's findings (what a withheld or flagged image looked like) as it blanks the prompt's flags; which images were withheld, and the usage, stay", async () => {
    const created = (await (await post({ prompt: 'a teacher in a red square', n: 2 })).json()) as { id: string };
    const key = `outputs/acct_alice/${created.id}/1.png`;
    await h.blobs.put(key, new Uint8Array([1]), { contentType: 'image/png' });
    const mouse = { rule: 'mouse', category: 'copyright', action: 'withhold', concept: 'Mickey Mouse', message: 'looks like a mouse', cosine: 0.41 } as const;
    const swoosh = { rule: 'swoosh', category: 'trademark', action: 'flag', concept: 'the Nike logo', message: 'looks like a logo', cosine: 0.27 } as const;
    // What the worker writes when the output check withholds image 0 and flags image 1.
    await h.jobs.update('acct_alice', created.id, (cur) => ({
      ...cur, status: 'succeeded', started_at: cur.created_at, finished_at: new Date().toISOString(), attempts: 1,
      outputs: [{ key, width: 224, height: 224, clip_score: 0.3 }], usage: { encoder_passes: 10, worker_seconds: 2 },
      output_checks: [{ index: 0, withheld: true, flags: [mouse] }, { index: 1, withheld: false, flags: [swoosh] }],
    }));
    const before = (await (await h.request(`/v1/generations/${created.id}`)).json()) as any;
    expect(before.withheld_outputs).toEqual([{ index: 0, content_flags: [mouse] }]);
    expect(before.outputs[0].content_flags).toEqual([swoosh]);
    const res = await h.request(`/v1/generations/${created.id}`, { method: 'DELETE' });
    expect(res.status).toBe(200);
    const view = (await res.json()) as any;
    expect([view.outputs, view.content_flags, view.withheld_outputs]).toEqual([[], [], [{ index: 0, content_flags: [] }]]);
    expect(JSON.stringify(await (await h.request(`/v1/generations/${created.id}`)).json())).not.toMatch(/Mickey|Nike|0\.41|0\.27|looks like/);
    const record = (await h.jobs.get('acct_alice', created.id))!;
    expect(JSON.stringify(record)).not.toMatch(/Mickey|Nike|0\.41|0\.27|looks like/);
    // The codes stay: which image, withheld or not, by which rule; the usage audit still counts both images.
    expect(record.output_checks!.map((c) => [c.index, c.withheld, c.flags.map((f) => `${f.action} ${f.rule} ${f.category}`)])).toEqual([
      [0, true, ['withhold mouse copyright']],
      [1, false, ['flag swoosh trademark']],
    ]);
    expect(usageOfRecord(record)).toMatchObject({ images: 2, workerSeconds: 2 });
  });
});

describe('DELETE and a failed generation', () => {
  it('an error message that quotes the prompt goes with the prompt; its code stays', async () => {
    const created = (await (await post({ prompt: 'portrait of Jane Q. Citizen, 12 Elm Street' })).json()) as { id: string };
    // What the worker stores for an engine error that names the text it could not embed.
    await h.jobs.update('acct_alice', created.id, (cur) => ({
      ...cur,
      status: 'failed',
      attempts: 1,
      finished_at: new Date().toISOString(),
      error: { code: 'numerical_error', message: 'model toy: the text tower produces a non-finite embedding for "portrait of Jane Q. Citizen, 12 Elm Street"' },
    }));
    expect((await h.request(`/v1/generations/${created.id}`, { method: 'DELETE' })).status).toBe(200);
    const after = JSON.stringify(await (await h.request(`/v1/generations/${created.id}`)).json());
    expect(after).not.toContain('Jane');
    expect(JSON.parse(after).error).toEqual({ code: 'numerical_error', message: expect.stringMatching(/removed with the generation/) });
    expect(JSON.stringify(await h.jobs.get('acct_alice', created.id))).not.toContain('Jane');
  });
});

describe('metadata', () => {
  it("the caller's labels come back as given in the POST, GET and list; {} without any; they are part of the request an Idempotency-Key names", async () => {
    const labels = { order_id: 'A-1042', 'batch.name': 'spring catalog, page 3', empty: '' };
    const created = await post({ prompt: 'apple', metadata: labels }, { 'Idempotency-Key': 'labelled' });
    expect(created.status).toBe(202);
    const body = (await created.json()) as { id: string; metadata: unknown; request: Record<string, unknown> };
    expect(body.metadata).toEqual(labels);
    expect(body.request).not.toHaveProperty('metadata'); // not part of what the worker runs
    expect(((await (await h.request(`/v1/generations/${body.id}`)).json()) as any).metadata).toEqual(labels);
    expect(((await (await h.request('/v1/generations')).json()) as any).data[0].metadata).toEqual(labels);
    expect(((await (await post({ prompt: 'pear' })).json()) as any).metadata).toEqual({});
    await expectEnvelope(await post({ prompt: 'apple', metadata: { ...labels, order_id: 'A-1043' } }, { 'Idempotency-Key': 'labelled' }), 409, 'idempotency_key_reused');
    const replay = await post({ prompt: 'apple', metadata: labels }, { 'Idempotency-Key': 'labelled' });
    expect([replay.status, ((await replay.json()) as any).id]).toEqual([200, body.id]);
  });
});

describe('Idempotency-Key', () => {
  it('same key + same body → same job (200, replayed); one record, one message', async () => {
    const headers = { 'Idempotency-Key': 'order-42' };
    const a = await post({ prompt: 'apple', steps: 10 }, headers);
    expect(a.status).toBe(202);
    const idA = ((await a.json()) as { id: string }).id;
    // Key order and defaults do not change the canonical body.
    const b = await post({ steps: 10, prompt: 'apple', n: 1 }, headers);
    expect(b.status).toBe(200);
    expect(b.headers.get('Idempotent-Replayed')).toBe('true');
    expect(((await b.json()) as { id: string }).id).toBe(idA);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
    expect(await queued()).toEqual([idA]);
  });

  it('a twin of a request still writing its job, at the active-job limit (its own marker counts), gets that job, not a 429', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let held = false;
    // The first request's job-record write is slow (an S3 PUT); everything else is the real store.
    const blobs = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'putIfAbsent'
          ? async (key: string, ...rest: unknown[]) => {
              if (/^jobs\/acct_alice\/[0-9a-z]{26}\.json$/.test(key) && !held) {
                held = true;
                await gate;
              }
              return (target.putIfAbsent as (...a: unknown[]) => Promise<unknown>).call(target, key, ...rest);
            }
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, blobs, jobs: new BlobJobStore(blobs), limits: { ...h.deps.limits, maxActiveJobs: 1 } });
    const send = () => app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'twin' }, body: JSON.stringify({ prompt: 'a red fox' }) });
    const first = send();
    while (!held) await new Promise((r) => setTimeout(r, 5));
    const twin = send();
    await new Promise((r) => setTimeout(r, 300));
    release();
    const [a, b] = await Promise.all([first, twin]);
    expect(a.status).toBe(202);
    expect(b.status).toBe(200);
    expect(((await b.json()) as { id: string }).id).toBe(((await a.json()) as { id: string }).id);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
  });

  it('same key + different body → 409, nothing written', async () => {
    const headers = { 'Idempotency-Key': 'order-43' };
    const a = await post({ prompt: 'apple' }, headers);
    const idA = ((await a.json()) as { id: string }).id;
    await expectEnvelope(await post({ prompt: 'pear' }, headers), 409, 'idempotency_key_reused');
    expect((await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.id)).toEqual([idA]);
    expect(await queued()).toEqual([idA]);
  });

  it('a retry is answered with its job after its upload expired or its model was withdrawn; a new request is refused', async () => {
    const upload = uploadKey('acct_alice', 'upl0000000000000000000001');
    await h.blobs.put(upload, pngEncode({ width: 4, height: 4, data: new Uint8Array(48), channels: 3, depth: 8 }), { contentType: 'image/png' });
    const body = { prompt: 'apple', init: 'upload:upl0000000000000000000001' };
    const first = await post(body, { 'Idempotency-Key': 'with-upload' });
    expect(first.status).toBe(202);
    const { id } = (await first.json()) as { id: string };
    await h.blobs.delete(upload); // the uploads lifecycle rule expired it
    const retry = await post(body, { 'Idempotency-Key': 'with-upload' });
    expect([retry.status, ((await retry.json()) as { id: string }).id]).toEqual([200, id]);
    await expectEnvelope(await post(body, { 'Idempotency-Key': 'new-key' }), 400, 'upload_not_found');

    const withdrawn = createApp({ ...h.deps, models: async () => [{ id: 'other', default: true, input_size: 224 }] });
    const call = (json: unknown, key: string) =>
      withdrawn.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key }, body: JSON.stringify(json) });
    const named = { prompt: 'pear', model: 'toy' };
    const second = (await (await post(named, { 'Idempotency-Key': 'named-model' })).json()) as { id: string };
    const again = await call(named, 'named-model');
    expect([again.status, ((await again.json()) as { id: string }).id]).toEqual([200, second.id]);
    await expectEnvelope(await call(named, 'another'), 400, 'validation_error');
    // The key with another body is a 409 before any of those checks: the caller's bug, not the request's.
    await expectEnvelope(await call({ prompt: 'plum', model: 'toy' }, 'named-model'), 409, 'idempotency_key_reused');
    await expectEnvelope(await post({ prompt: 'plum', init: 'upload:upl0000000000000000000001' }, { 'Idempotency-Key': 'with-upload' }), 409, 'idempotency_key_reused');
  });

  it('a claim written before the default model existed (hashed with model "toy") still replays, not 409', async () => {
    const { canonicalJson, idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const { sha256Hex } = await import('../../shared/schemas/apikey.ts');
    const first = (await (await post({ prompt: 'apple' }, { 'Idempotency-Key': 'pre-upgrade' })).json()) as { id: string };
    // Rewrite the claim as the earlier version stored it: the hash of the spec with model filled in.
    const key = idempotencyRecordKey('acct_alice', 'pre-upgrade');
    const claim = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString());
    const legacy = sha256Hex(canonicalJson({ prompt: 'apple', width: 224, height: 224, steps: 100, n: 1, init: 'gmm', model: 'toy' }));
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...claim, v: 1, body_hash: legacy, created_at: '2026-12-01T00:00:00.000Z' })));
    const retry = await post({ prompt: 'apple' }, { 'Idempotency-Key': 'pre-upgrade' });
    expect(retry.status).toBe(200);
    expect(((await retry.json()) as { id: string }).id).toBe(first.id);
    await expectEnvelope(await post({ prompt: 'pear' }, { 'Idempotency-Key': 'pre-upgrade' }), 409, 'idempotency_key_reused');
    // Hashed with the old 224×224 default size (and the model named): still the same request.
    const named = (await (await post({ prompt: 'plum', model: 'toy' }, { 'Idempotency-Key': 'pre-size' })).json()) as { id: string };
    const sizeKey = idempotencyRecordKey('acct_alice', 'pre-size');
    const sized = JSON.parse(Buffer.from((await h.blobs.get(sizeKey))!.body).toString());
    await h.blobs.put(sizeKey, Buffer.from(JSON.stringify({ ...sized, v: 1, created_at: '2026-12-01T00:00:00.000Z', body_hash: sha256Hex(canonicalJson({ prompt: 'plum', model: 'toy', width: 224, height: 224, steps: 100, n: 1, init: 'gmm' })) })));
    const sizedRetry = await post({ prompt: 'plum', model: 'toy' }, { 'Idempotency-Key': 'pre-size' });
    expect([sizedRetry.status, ((await sizedRetry.json()) as { id: string }).id]).toEqual([200, named.id]);
  });

  it('a v1 claim released after a failed create (created_at set to 1970) made nothing: the key is free again, for any body (as GET ?idempotency_key= says)', async () => {
    const { canonicalJson, idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const { sha256Hex } = await import('../../shared/schemas/apikey.ts');
    const small = createApp({ ...h.deps, models: async () => [{ id: 'toy', default: true, input_size: 64 }] });
    const send = (json: Record<string, unknown>) =>
      small.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'released-v1' }, body: JSON.stringify(json) });
    // A 224×224 request's claim, as a v1 version wrote it after the change and released when its create failed.
    const key = idempotencyRecordKey('acct_alice', 'released-v1');
    const jobId = newJobId(Date.parse('2026-12-05T20:00:00Z'));
    await h.blobs.put(key, Buffer.from(JSON.stringify({ v: 1, body_hash: sha256Hex(canonicalJson({ prompt: 'fox', width: 224, height: 224, steps: 100, n: 1, init: 'gmm' })), job_id: jobId, created_at: new Date(0).toISOString() })));
    // The same prompt without a size is a 64×64 request here: another request than the released one's,
    // but the released claim made no job, so the key is taken over (it was a 409 for ever, while the
    // lookup said the key had made nothing).
    const lookup = await small.request('/v1/generations?idempotency_key=released-v1', { headers: { Authorization: `Bearer ${h.alice}` } });
    expect(((await lookup.json()) as { data: unknown[] }).data).toEqual([]);
    const res = await send({ prompt: 'fox' });
    expect(res.status).toBe(202);
    expect(((await res.json()) as { request: { width: number } }).request.width).toBe(64);
    expect(((await (await small.request('/v1/generations?idempotency_key=released-v1', { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as { data: unknown[] }).data).toHaveLength(1);
  });

  it('a claim still being made (no job yet, not stale) with another body is a reuse (409), not a takeover', async () => {
    const { canonicalJson, idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const { sha256Hex } = await import('../../shared/schemas/apikey.ts');
    const key = idempotencyRecordKey('acct_alice', 'in-flight');
    await h.blobs.put(key, Buffer.from(JSON.stringify({ v: 2, body_hash: sha256Hex(canonicalJson({ prompt: 'elsewhere' })), job_id: newJobId(Date.now()), created_at: new Date().toISOString() })));
    await expectEnvelope(await post({ prompt: 'apple' }, { 'Idempotency-Key': 'in-flight' }), 409, 'idempotency_key_reused');
  });

  it('a claim whose job id or time does not read is unreadable: taken over by the next POST, and the lookup finds nothing (not a 400 or an in-progress 409 for ever)', async () => {
    const { idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    for (const [name, odd] of [['odd-id', { job_id: '../x', created_at: new Date().toISOString() }], ['odd-time', { job_id: newJobId(Date.now()), created_at: 'yesterday' }]] as const) {
      await h.blobs.put(idempotencyRecordKey('acct_alice', name), Buffer.from(JSON.stringify({ v: 2, body_hash: 'x'.repeat(64), ...odd })));
      const lookup = await h.app.request(`/v1/generations?idempotency_key=${name}`, { headers: { Authorization: `Bearer ${h.alice}` } });
      expect([name, lookup.status]).toEqual([name, 200]);
      expect(((await lookup.json()) as { data: unknown[] }).data).toEqual([]);
      expect([name, (await post({ prompt: 'apple' }, { 'Idempotency-Key': name })).status]).toEqual([name, 202]);
    }
  });

  it('a claim this version wrote is matched by the body as sent only: a body that leaves out the size or the model another named is another request (409)', async () => {
    const small = createApp({ ...h.deps, models: async () => [{ id: 'toy', default: true, input_size: 64 }, { id: 'tiny', input_size: 32 }] });
    const send = (json: Record<string, unknown>, key: string) =>
      small.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key }, body: JSON.stringify(json) });
    // 224×224 named, then the size left out (a 64×64 job on this deployment): not the same request.
    const big = await send({ prompt: 'a blue square', width: 224, height: 224 }, 'k224');
    expect([big.status, ((await big.json()) as any).request]).toEqual([202, expect.objectContaining({ width: 224, height: 224 })]);
    await expectEnvelope(await send({ prompt: 'a blue square' }, 'k224'), 409, 'idempotency_key_reused');
    // The model named, then left out: not the same request either (the default may change).
    expect((await send({ prompt: 'a red star', model: 'toy' }, 'kmodel')).status).toBe(202);
    await expectEnvelope(await send({ prompt: 'a red star' }, 'kmodel'), 409, 'idempotency_key_reused');
    // The same body again replays.
    const again = await send({ prompt: 'a blue square', width: 224, height: 224 }, 'k224');
    expect(again.status).toBe(200);
    // A claim the version before this one wrote (v 1, after the body was first hashed as sent) is compared as sent too.
    const { idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const key = idempotencyRecordKey('acct_alice', 'k224');
    const claim = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString());
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...claim, v: 1, created_at: '2026-12-05T20:00:00.000Z' })));
    await expectEnvelope(await send({ prompt: 'a blue square' }, 'k224'), 409, 'idempotency_key_reused');
  });

  it('a request whose key another request with the same body still holds (no job yet) is a 409 idempotency_in_progress with Retry-After', async () => {
    const { idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const first = (await (await post({ prompt: 'fig' }, { 'Idempotency-Key': 'held' })).json()) as { id: string };
    // The claim as a request still creating its job leaves it: it names a job not written yet.
    const key = idempotencyRecordKey('acct_alice', 'held');
    const claim = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString());
    await h.blobs.put(key, Buffer.from(JSON.stringify({ ...claim, job_id: first.id.replace(/.$/, (c) => (c === '0' ? '1' : '0')), created_at: new Date().toISOString() })));
    const res = await post({ prompt: 'fig' }, { 'Idempotency-Key': 'held' });
    await expectEnvelope(res, 409, 'idempotency_in_progress');
    expect(res.headers.get('Retry-After')).toBe('1');
  });

  it('a claim 12 s old with no job (its request most likely died: a killed server) says to retry once it goes stale, not every second; a stale one is taken over', async () => {
    const { idempotencyRecordKey } = await import('../../functions/idempotency.ts');
    const first = (await (await post({ prompt: 'fig' }, { 'Idempotency-Key': 'orphan' })).json()) as { id: string };
    const key = idempotencyRecordKey('acct_alice', 'orphan');
    const claim = JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString());
    const orphaned = (ageMs: number) => h.blobs.put(key, Buffer.from(JSON.stringify({ ...claim, job_id: first.id.replace(/.$/, (c) => (c === '0' ? '1' : '0')), created_at: new Date(Date.now() - ageMs).toISOString() })));
    await orphaned(12_000);
    const res = await post({ prompt: 'fig' }, { 'Idempotency-Key': 'orphan' });
    await expectEnvelope(res, 409, 'idempotency_in_progress');
    // 30 s stale age, 12 s old, and the request's own wait (about 3 s) on top: 15 to 18 s left.
    expect(Number(res.headers.get('Retry-After'))).toBeGreaterThanOrEqual(13);
    expect(Number(res.headers.get('Retry-After'))).toBeLessThanOrEqual(18);
    await orphaned(31_000);
    expect((await post({ prompt: 'fig' }, { 'Idempotency-Key': 'orphan' })).status).toBe(202);
  });

  it("a request naming no size gets the model's own input size; a width alone makes a square", async () => {
    const sized = (json: Record<string, unknown>) => post({ prompt: 'apple', ...json }).then(async (r) => ((await r.json()) as any).request);
    // The harness's model says input_size 224; a 64 px model gets 64 (below: models with other sizes).
    expect(await sized({})).toMatchObject({ width: 224, height: 224 });
    expect(await sized({ width: 128 })).toMatchObject({ width: 128, height: 128 });
    expect(await sized({ height: 96 })).toMatchObject({ width: 96, height: 96 });
    expect(await sized({ width: 128, height: 64 })).toMatchObject({ width: 128, height: 64 });
    const small = createApp({ ...h.deps, models: async () => [{ id: 'toy', default: true, input_size: 64 }, { id: 'tiny', input_size: 32 }] });
    const ask = async (json: Record<string, unknown>) =>
      ((await (await small.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', ...json }) })).json()) as any).request;
    expect(await ask({})).toMatchObject({ width: 64, height: 64 });
    expect(await ask({ model: 'tiny' })).toMatchObject({ width: 64, height: 64 }); // 32 px: the smallest side allowed
    await expectEnvelope(await small.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple', width: 100 }) }), 400, 'validation_error');
  });

  it('a replay of a job queued for over 5 minutes and never started sends its message again, once per 5 minutes', async () => {
    let offsetMs = 0;
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, clock: () => new Date(Date.now() + offsetMs) });
    const send = () => postApple(app, 'lost-message');
    const { id } = (await (await send()).json()) as { id: string };
    // The message is lost: the process died between create and send, so its message marker stays.
    for (const m of await h.queue.receive({ max: 10, waitSec: 0 })) await h.queue.ack(m.receipt);
    await markPending(h.blobs, 'msg', 'acct_alice', id);
    expect((await send()).status).toBe(200);
    expect(await queued()).toEqual([]); // fresh: no re-send
    offsetMs = 6 * 60_000;
    const [r1, r2] = await Promise.all([send(), send()]);
    expect([r1.status, r2.status]).toEqual([200, 200]);
    expect(await queued()).toEqual([id]); // one re-send for the two concurrent replays
    expect((await h.jobs.get('acct_alice', id))!.enqueued_at).toBeTruthy();
    offsetMs = 8 * 60_000; // 2 minutes after the re-send: not yet
    await send();
    expect(await queued()).toEqual([]);
  });

  it('a failed re-send leaves the job queued (it may only be waiting) and the next replay tries again', async () => {
    let offsetMs = 0;
    const { queue: flaky, outage } = queueWithOutage(h.queue, false);
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, queue: flaky, clock: () => new Date(Date.now() + offsetMs) });
    const { id } = (await (await postApple(app, 'resend-fails')).json()) as { id: string };
    for (const m of await h.queue.receive({ max: 10, waitSec: 0 })) await h.queue.ack(m.receipt);
    await markPending(h.blobs, 'msg', 'acct_alice', id); // lost as above: the send was never proven
    offsetMs = 6 * 60_000;
    outage.down = true;
    const r = await postApple(app, 'resend-fails');
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({ id, status: 'queued', error: null });
    expect((await h.jobs.get('acct_alice', id))!.enqueued_at).toBeUndefined(); // stamp put back
    outage.down = false;
    await postApple(app, 'resend-fails');
    expect(await queued()).toEqual([id]);
  });

  it('a replay of a job waiting in a backlog (its send proven: no message marker) sends nothing, however long it waits', async () => {
    let offsetMs = 0;
    const app = createApp({ ...h.deps, clock: () => new Date(Date.now() + offsetMs) });
    const { id } = (await (await postApple(app, 'backlog')).json()) as { id: string };
    expect((await h.blobs.list('pending/msg/')).items).toEqual([]);
    // Its one message waits in the queue; the client re-POSTs every 6 minutes for half an hour.
    for (let minutes = 6; minutes <= 30; minutes += 6) {
      offsetMs = minutes * 60_000;
      const replay = await postApple(app, 'backlog');
      expect(replay.status).toBe(200);
    }
    expect(await queued()).toEqual([id]); // still the one message: no duplicate per replay
  });

  it('keys are per owner: the same key from another owner makes its own job', async () => {
    const headers = { 'Idempotency-Key': 'shared-key' };
    const a = (await (await post({ prompt: 'apple' }, headers)).json()) as { id: string };
    const b = await post({ prompt: 'pear' }, headers, h.bob);
    expect(b.status).toBe(202);
    expect(((await b.json()) as { id: string }).id).not.toBe(a.id);
  });

  it('two concurrent identical requests give one job', async () => {
    const headers = { 'Idempotency-Key': 'race-1' };
    const responses = await Promise.all(Array.from({ length: 5 }, () => post({ prompt: 'apple' }, headers)));
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 200, 200, 202]);
    const ids = new Set(await Promise.all(responses.map(async (r) => ((await r.json()) as { id: string }).id)));
    expect(ids.size).toBe(1);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
    expect(await queued()).toHaveLength(1);
  });

  it('rejects an unprintable or over-long key', async () => {
    await expectEnvelope(await post({ prompt: 'a' }, { 'Idempotency-Key': 'x'.repeat(256) }), 400, 'validation_error');
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(0);
  });
});

/** One POST /v1/generations of `{"prompt":"apple"}` with Idempotency-Key `key`, through `app`. */
function postApple(app: { request: (path: string, init: RequestInit) => Response | Promise<Response> }, key: string) {
  return Promise.resolve(
    app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key },
      body: JSON.stringify({ prompt: 'apple' }),
    }),
  );
}

/** The app with a queue whose `send` fails while `outage.down` is set. */
async function appWithFlakyQueue(key: string) {
  const { queue: flaky, outage } = queueWithOutage(h.queue);
  const { createApp } = await import('../../functions/app.ts');
  const app = createApp({ ...h.deps, queue: flaky });
  return { outage, send: () => postApple(app, key) };
}

describe('queue failure', () => {
  it('a failed send marks the job failed and answers 503; a retry with the same key re-queues it', async () => {
    const { outage, send } = await appWithFlakyQueue('k1');
    const res = await send();
    const err = await expectEnvelope(res, 503, 'queue_unavailable');
    expect(err.message).not.toContain('sqs down');
    expect(res.headers.get('Retry-After')).toBe('1');
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } }); // never "queued" without a message
    outage.down = false;
    const retry = await send();
    expect(retry.status).toBe(200);
    expect(await retry.json()).toMatchObject({ id: job.id, status: 'queued', error: null });
    expect(await queued()).toEqual([job.id]);
  });

  it('a send that landed though it answered an error (a worker has already taken the job): 202 with the job and its webhook secret, never a 503 for a job that runs and is billed', async () => {
    // The worker's claim is the record's transition to running with attempt 1 (as gpu-worker does it),
    // made here inside the send, as a reply that comes back late past the SDK's deadline allows.
    const late = new Proxy(h.queue, {
      get: (target, prop, receiver) =>
        prop === 'send'
          ? async (body: string) => {
              await target.send(body);
              const { job_id: id } = parseQueueMessage(body);
              await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: new Date().toISOString() }));
              throw new RetryableError('injected: the SendMessage reply ran past its deadline; the message had landed');
            }
          : Reflect.get(target, prop, receiver),
    });
    const app = createApp({ ...h.deps, queue: late });
    const res = await app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'apple', webhook_url: 'https://hooks.example.com/clipag' }),
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { id: string; webhook: { secret: string } };
    expect(body.webhook.secret).toMatch(/^whsec_/);
    const job = await h.jobs.get('acct_alice', body.id);
    expect(job).toMatchObject({ status: 'running', error: null });
    // Its message marker is done with (the sweep must not send it again); its place among the owner's active jobs stays.
    const markers = (await h.blobs.list('pending/')).items.map((i) => i.key);
    expect(markers.filter((k) => k.includes(body.id)).map((k) => k.split('/')[1]).sort()).toEqual(['active', 'hook']);
  });

  it('a job whose send failed and that the caller then deleted stays ended: a retry with the same key answers it, queuing nothing', async () => {
    const { outage, send } = await appWithFlakyQueue('k-del');
    expect((await send()).status).toBe(503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect((await h.request(`/v1/generations/${job!.id}`, { method: 'DELETE' })).status).toBe(200);
    outage.down = false;
    const retry = await send();
    expect(retry.status).toBe(200);
    expect(await retry.json()).toMatchObject({ id: job!.id, status: 'failed', deleted_at: expect.any(String) });
    expect(await queued()).toEqual([]);
    expect((await h.jobs.get('acct_alice', job!.id))!.status).toBe('failed');
  });

  it('concurrent retries of a job whose send failed re-queue it once: one message, not one per retry', async () => {
    const { outage, send } = await appWithFlakyQueue('k2');
    expect((await send()).status).toBe(503);
    outage.down = false;
    const retries = await Promise.all([send(), send(), send(), send()]);
    expect(retries.map((r) => r.status)).toEqual([200, 200, 200, 200]);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job.status).toBe('queued');
    expect(await queued()).toEqual([job.id]);
  });
});

/** A job store whose `update` fails while `down.updates` is set (the store blipping with the queue). */
function jobsWithFailingUpdates() {
  const down = { updates: true };
  const jobs = new Proxy(h.jobs, {
    get: (target, prop, receiver) =>
      prop === 'update'
        ? (...args: Parameters<typeof target.update>) => (down.updates ? Promise.reject(new RetryableError('injected: S3 timeout')) : target.update(...args))
        : Reflect.get(target, prop, receiver),
  });
  return { jobs, down };
}

/** The queued-job sweep, run `aheadMs` from now. */
async function sweepAt(aheadMs: number) {
  const { sweepQueuedJobs } = await import('../../functions/queued-jobs.ts');
  const { httpWebhookSender } = await import('../../shared/webhooks.ts');
  return sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date(Date.now() + aheadMs), webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 } });
}

describe('a failure that cannot be recorded (the queue or the create fails, and so does the write that fails the job)', () => {
  it('a failed send: 202 for a job that will run (the sweep sends it), never a 503 for a job that runs behind the caller\'s back', async () => {
    const { queue, outage } = queueWithOutage(h.queue);
    const { jobs, down } = jobsWithFailingUpdates();
    const app = createApp({ ...h.deps, queue, jobs });
    const res = await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    expect(await h.jobs.get('acct_alice', id)).toMatchObject({ status: 'queued', attempts: 0 });
    outage.down = false;
    down.updates = false;
    expect(await sweepAt(6 * 60_000)).toMatchObject({ resent: 1, errors: 0 });
    expect(await queued()).toEqual([id]);
    expect((await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.id)).toEqual([id]);
  });

  /** Updates that fail while `down.updates` is set, and a first create that lands but answers an error (a timeout after the write). */
  function jobsWhoseFirstCreateLandsAndThrows() {
    const { jobs: failing, down } = jobsWithFailingUpdates();
    let failCreate = true;
    const jobs = new Proxy(failing, {
      get: (target, prop, receiver) =>
        prop === 'create'
          ? async (job: JobRecord) => {
              if (!failCreate) return target.create(job);
              failCreate = false;
              await target.create(job);
              throw new RetryableError('injected: the create timed out (it landed)', { code: 'store_unavailable' });
            }
          : Reflect.get(target, prop, receiver),
    });
    return { jobs, down };
  }

  it('a create that landed despite its error: 503, and the sweep fails the job enqueue_failed instead of sending it; the retry with the key re-queues it', async () => {
    const { jobs, down } = jobsWhoseFirstCreateLandsAndThrows();
    const app = createApp({ ...h.deps, jobs });
    const send = () => postApple(app, 'k-refused');
    await expectEnvelope(await send(), 503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'queued', attempts: 0 }); // the record could not be failed
    down.updates = false;
    await sweepAt(6 * 60_000);
    expect(await h.jobs.get('acct_alice', job!.id)).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect(await queued()).toEqual([]); // nothing ran behind the 503
    expect((await h.blobs.list('pending/')).items.map((i) => i.key).filter((k) => !k.startsWith('pending/hook/'))).toEqual([]);
    const retry = await send();
    expect(retry.status).toBe(200);
    expect(await retry.json()).toMatchObject({ id: job!.id, status: 'queued' });
    expect(await queued()).toEqual([job!.id]);
  });

  it('the same, retried with the key before any sweep: the retry re-queues the job at once, one job, one message', async () => {
    const { jobs, down } = jobsWhoseFirstCreateLandsAndThrows();
    const app = createApp({ ...h.deps, jobs });
    await expectEnvelope(await postApple(app, 'k-refused-2'), 503);
    down.updates = false;
    const retry = await postApple(app, 'k-refused-2');
    expect(retry.status).toBe(200);
    const { id } = (await retry.json()) as { id: string };
    expect(await queued()).toEqual([id]);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
    expect(await sweepAt(6 * 60_000)).toMatchObject({ resent: 0 }); // its marker was cleared by the send
  });
});

describe('one Idempotency-Key, one job', () => {
  it('a request that stalls past the stale-claim age while a retry takes its key over answers the retry\'s job, and its own never runs', async () => {
    const { waitFor } = await import('../worker/helpers.ts');
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let stalled = false;
    // The first request stalls after its claim, before its create (a slow store, a paused VM).
    const slow = new Proxy(h.blobs, {
      get: (target, prop, receiver) =>
        prop === 'put'
          ? async (key: string, ...rest: [Uint8Array]) => {
              if (key.startsWith('pending/msg/') && !stalled) {
                stalled = true;
                await gate;
              }
              return target.put(key, ...rest);
            }
          : Reflect.get(target, prop, receiver),
    });
    const first = createApp({ ...h.deps, blobs: slow, jobs: new BlobJobStore(slow) });
    const retryApp = createApp({ ...h.deps, clock: () => new Date(Date.now() + 31_000) }); // the retry, 31 s later
    const r1 = postApple(first, 'k-stall');
    await waitFor('the first request past its claim', () => stalled, 5000);
    const r2 = await postApple(retryApp, 'k-stall');
    expect(r2.status).toBe(202);
    const theirs = (await r2.json()) as { id: string };
    release();
    const late = await r1;
    expect(late.status).toBe(200);
    expect(late.headers.get('Idempotent-Replayed')).toBe('true');
    expect(((await late.json()) as { id: string }).id).toBe(theirs.id);
    expect(await queued()).toEqual([theirs.id]);
    const records = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(records.filter((j) => j.status === 'queued').map((j) => j.id)).toEqual([theirs.id]);
    expect(records.find((j) => j.id !== theirs.id)).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    expect(await sweepAt(6 * 60_000)).toMatchObject({ resent: 0, errors: 0 }); // the sweep sends nothing later either
  });
});

describe('job store failure on create', () => {
  /** The app with a job store whose next `create` fails; `landed` makes it write the record first (a timeout after success). */
  async function withFailingCreate(landed: boolean) {
    let failNext = true;
    const jobs = new Proxy(h.jobs, {
      get(target, prop, receiver) {
        if (prop === 'create') {
          return async (job: Parameters<typeof target.create>[0]) => {
            if (!failNext) return target.create(job);
            failNext = false;
            if (landed) await target.create(job);
            const { RetryableError } = await import('../../shared/errors.ts');
            throw new RetryableError('store timed out', { code: 'store_unavailable' });
          };
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, jobs });
    return () => postApple(app, 'k3');
  }

  it('503, and the retry it invites goes through at once (not 409 while the claim goes stale)', async () => {
    const send = await withFailingCreate(false);
    await expectEnvelope(await send(), 503);
    const t0 = Date.now();
    const retry = await send();
    expect(retry.status).toBe(202);
    expect(Date.now() - t0).toBeLessThan(2000); // the ledger's in-progress wait is 3 s
    const { id } = (await retry.json()) as { id: string };
    expect((await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.id)).toEqual([id]);
    expect(await queued()).toEqual([id]);
  });

  it('a create that landed before its error is re-queued by the retry: one job, one message', async () => {
    const send = await withFailingCreate(true);
    await expectEnvelope(await send(), 503);
    const [job] = (await h.jobs.listByOwner('acct_alice')).jobs;
    expect(job).toMatchObject({ status: 'failed', error: { code: 'enqueue_failed' } });
    const retry = await send();
    expect(retry.status).toBe(200);
    expect(await retry.json()).toMatchObject({ id: job.id, status: 'queued' });
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toHaveLength(1);
    expect(await queued()).toEqual([job.id]);
  });
});

describe('default model', () => {
  it("a request without model gets the deployment's default, stored in the job and shown in the view", async () => {
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, models: async () => [{ id: 'clipag-vitb32', default: true }, { id: 'toy' }] });
    const res = await app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'a photo of a cat' }),
    });
    expect(res.status).toBe(202);
    const body = (await res.json()) as { id: string; request: { model: string } };
    expect(body.request.model).toBe('clipag-vitb32');
    expect((await h.jobs.get('acct_alice', body.id))?.spec.model).toBe('clipag-vitb32');
  });

  it('400 on model when the deployment marks no default, and nothing is queued', async () => {
    const { createApp } = await import('../../functions/app.ts');
    const app = createApp({ ...h.deps, models: async () => [{ id: 'toy' }] });
    const res = await app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'a photo of a cat' }),
    });
    const err = await expectEnvelope(res, 400, 'validation_error');
    expect(err.param).toBe('model');
    expect(await queued()).toEqual([]);
  });
});
