// Local mode's retention pass (the long-run review, findings 1 and 2): with CLIPAG_OUTPUT_RETENTION_DAYS
// set, every view promised `outputs_expire_at`, and no local code removed anything. The pass removes
// the images and frames of a generation once that time has passed, leaving the record (and its view)
// as S3's lifecycle rule leaves it in AWS; with CLIPAG_UPLOAD_RETENTION_DAYS it removes old uploads.
// It reads each record once as `now - retention` passes its creation, not every record every minute.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { mountLocalBlobRoutes } from '../../functions/local-blobs.ts';
import { retentionPass, RETENTION_STATE_KEY, type RetentionDeps } from '../../functions/local-retention.ts';
import { startQueuedJobSweeps, type SweepDeps } from '../../functions/queued-jobs.ts';
import type { AppLogEntry } from '../../functions/types.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { newId, newJobId } from '../../shared/ids.ts';
import { jobOutputsPrefix, uploadKey } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import type { BlobStore, JobStore } from '../../shared/ports.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { deletedRecord, newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { frameKey, outputsExpireAt } from '../../shared/views.ts';
import { httpWebhookSender } from '../../shared/webhooks.ts';
import { harness, type Harness } from './helpers.ts';

const DAY = 86_400_000;
const MIN = 60_000;

let h: Harness;
/** The pass's clock runs this far ahead of the real one (records are stamped from the real one). */
let offsetMs: number;
const T0 = Date.now();
const clock = () => new Date(Date.now() + offsetMs);

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
});
afterEach(() => h.close());

const png = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 1, 2, 3]);

/** A job made at `createdMs`: ended at `finishedMs` with one image and two frames, or still `status` (no images). */
async function job(owner: string, createdMs: number, finishedMs: number | null, extra: Partial<JobRecord> = {}): Promise<JobRecord> {
  const id = newJobId(createdMs);
  const base = newJobRecord({ id, owner, spec: GenerationSpec.parse({ prompt: 'apple', width: 64, height: 64, seed: 1, model: 'toy' }), now: new Date(createdMs) });
  if (finishedMs === null) return h.jobs.create({ ...base, status: 'running', attempts: 1, started_at: new Date(createdMs).toISOString(), ...extra });
  const key = `${jobOutputsPrefix(owner, id)}0.png`;
  await h.blobs.put(key, png, { contentType: 'image/png' });
  for (const step of [0, 10]) await h.blobs.put(frameKey(owner, id, 0, step, 64, 64), png, { contentType: 'image/png' });
  return h.jobs.create({
    ...base,
    status: 'succeeded',
    attempts: 1,
    started_at: new Date(createdMs).toISOString(),
    finished_at: new Date(finishedMs).toISOString(),
    outputs: [{ key, width: 64, height: 64 }],
    ...extra,
  });
}

const stored = async (j: Pick<JobRecord, 'owner' | 'id'>) => (await h.blobs.list(jobOutputsPrefix(j.owner, j.id))).items.length;

/** A JobStore that counts the records it hands out (get and each listed page). */
function counting(jobs: JobStore): { jobs: JobStore; reads: { n: number } } {
  const reads = { n: 0 };
  return {
    reads,
    jobs: {
      create: (j) => jobs.create(j),
      update: (o, i, m, opts) => jobs.update(o, i, m, opts),
      get: async (o, i) => {
        reads.n++;
        return jobs.get(o, i);
      },
      listByOwner: async (o, opts) => {
        const page = await jobs.listByOwner(o, opts);
        reads.n += page.jobs.length;
        return page;
      },
    },
  };
}

function pass(overrides: Partial<RetentionDeps> = {}) {
  const p = retentionPass({ blobs: h.blobs, jobs: h.jobs, clock, ...('uploadRetentionDays' in overrides ? {} : { outputRetentionDays: 7 }), ...overrides });
  if (!p) throw new Error('expected a retention pass');
  return p;
}

describe('output retention', () => {
  it('removes the images and frames of a generation whose outputs_expire_at has passed; its view then says what AWS says', async () => {
    const expired = await job('acct_alice', T0 - 10 * DAY, T0 - 9 * DAY);
    const fresh = await job('acct_alice', T0 - 5 * DAY, T0 - 5 * DAY + MIN);
    const bobs = await job('acct_bob', T0 - 10 * DAY, T0 - 10 * DAY + MIN);

    const report = await pass().run();
    expect(report).toMatchObject({ generations: 2, files: 6, errors: 0 });
    expect([await stored(expired), await stored(bobs), await stored(fresh)]).toEqual([0, 0, 3]);
    // The record is left as it was (S3's lifecycle rule does not touch it either).
    expect(await h.jobs.get('acct_alice', expired.id)).toEqual(expired);

    // The view: no outputs and no frames listed (no link signed), outputs_expire_at (past) says why;
    // as in AWS, where the view signs nothing past that time however late the lifecycle rule runs.
    const app = createApp({ ...h.deps, limits: { ...h.deps.limits, outputRetentionDays: 7 } });
    mountLocalBlobRoutes(app, h.blobs, 'x'.repeat(32));
    const auth = { Authorization: `Bearer ${h.alice}` };
    const view = (await (await app.request(`/v1/generations/${expired.id}`, { headers: auth })).json()) as any;
    expect(view).toMatchObject({ status: 'succeeded', deleted_at: null, outputs_expire_at: new Date(T0 - 2 * DAY).toISOString() });
    expect(view.outputs).toEqual([]);
    expect(((await (await app.request(`/v1/generations/${expired.id}/frames`, { headers: auth })).json()) as any).data).toEqual([]);
    const kept = (await (await app.request(`/v1/generations/${fresh.id}`, { headers: auth })).json()) as any;
    expect((await app.request(kept.outputs[0].url)).status).toBe(200);
  });

  it('removes the others once their own expiry passes: one made later, one that ended late, one still running', async () => {
    const madeLater = await job('acct_alice', T0 - 5 * DAY, T0 - 5 * DAY + MIN); // expires T0 + 2 d
    const endedLate = await job('acct_alice', T0 - 10 * DAY, T0 - DAY); // expires T0 + 6 d
    const running = await job('acct_alice', T0 - 10 * DAY, null);
    const p = pass();
    expect(await p.run()).toMatchObject({ generations: 0, errors: 0 });

    offsetMs = 2 * DAY + MIN;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect([await stored(madeLater), await stored(endedLate)]).toEqual([0, 3]);

    // The running one ends now, with images: they stay its 7 days.
    const key = `${jobOutputsPrefix('acct_alice', running.id)}0.png`;
    await h.blobs.put(key, png, { contentType: 'image/png' });
    const endedAt = new Date(Date.now() + offsetMs).toISOString();
    await h.jobs.update('acct_alice', running.id, (cur) => ({ ...cur, status: 'succeeded', finished_at: endedAt, outputs: [{ key, width: 64, height: 64 }] }));
    expect(await p.run()).toMatchObject({ generations: 0 });

    offsetMs = 6 * DAY + MIN;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect([await stored(endedLate), await stored(running)]).toEqual([0, 1]);
    offsetMs = 2 * DAY + 7 * DAY + 2 * MIN;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect(await stored(running)).toBe(0);
  });

  it('leaves alone a deleted generation, one that ended without images, and one that may be queued again', async () => {
    const deleted = await job('acct_alice', T0 - 10 * DAY, T0 - 9 * DAY);
    await h.jobs.update('acct_alice', deleted.id, (cur) => deletedRecord(cur, new Date(T0 - 8 * DAY).toISOString()));
    const failed = await job('acct_alice', T0 - 10 * DAY, null);
    await h.jobs.update('acct_alice', failed.id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date(T0 - 9 * DAY).toISOString(), error: { code: 'timeout', message: 't' } }));
    const refused = await job('acct_alice', T0 - 10 * DAY, null);
    await h.jobs.update('acct_alice', refused.id, (cur) => ({ ...cur, status: 'failed', attempts: 0, finished_at: new Date(T0 - 9 * DAY).toISOString(), error: { code: 'enqueue_failed', message: 'x' } }));
    const p = pass();
    expect(await p.run()).toMatchObject({ generations: 0, errors: 0 });

    // Queued again by its caller's retry (it keeps its old id), then run: its images expire 7 days on.
    const key = `${jobOutputsPrefix('acct_alice', refused.id)}0.png`;
    await h.blobs.put(key, png, { contentType: 'image/png' });
    const endedAt = new Date(Date.now() + offsetMs).toISOString();
    await h.jobs.update('acct_alice', refused.id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, error: null, finished_at: endedAt, outputs: [{ key, width: 64, height: 64 }] }));
    expect(await p.run()).toMatchObject({ generations: 0 });
    expect(await stored(refused)).toBe(1);
    offsetMs = 7 * DAY + MIN;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect(await stored(refused)).toBe(0);
  });

  it('unset, no pass exists: local mode keeps everything, as before', () => {
    expect(retentionPass({ blobs: h.blobs, jobs: h.jobs, clock })).toBeUndefined();
  });

  it('CLIPAG_UPLOAD_RETENTION_DAYS is a whole number of days, 1-3650, as CLIPAG_OUTPUT_RETENTION_DAYS; unset by default', () => {
    expect((parseConfig({}) as LocalConfig).uploadRetentionDays).toBeUndefined();
    expect((parseConfig({ CLIPAG_UPLOAD_RETENTION_DAYS: '5' }) as LocalConfig).uploadRetentionDays).toBe(5);
    for (const bad of ['0', '1.5', 'five', '3651']) expect(() => parseConfig({ CLIPAG_UPLOAD_RETENTION_DAYS: bad })).toThrow(/CLIPAG_UPLOAD_RETENTION_DAYS/);
  });

  it('reads each record once: bounded per pass, then only the jobs whose creation the boundary passes, and none again after a restart', async () => {
    for (let i = 0; i < 120; i++) await job('acct_alice', T0 - 10 * DAY + i * MIN, null, { status: 'failed', finished_at: new Date(T0 - 9 * DAY).toISOString(), error: { code: 'timeout', message: 't' } });
    const recent = await job('acct_alice', T0 - 7 * DAY + 30 * MIN, T0 - 7 * DAY + 31 * MIN);
    const { jobs, reads } = counting(h.jobs);
    const p = pass({ jobs, readsPerPass: 50 });
    const perPass: number[] = [];
    for (let i = 0; i < 4; i++) {
      reads.n = 0;
      await p.run();
      perPass.push(reads.n);
    }
    expect(perPass).toEqual([50, 50, 20, 0]);
    expect((await h.blobs.get(RETENTION_STATE_KEY)) !== null).toBe(true);

    // The boundary passes `recent`'s creation: it alone is read (and its images go).
    offsetMs = 32 * MIN;
    reads.n = 0;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect(reads.n).toBe(1);
    expect(await stored(recent)).toBe(0);

    // A restart (a new pass on the same folder) reads nothing it has read before.
    const again = counting(h.jobs);
    reads.n = 0;
    await pass({ jobs: again.jobs }).run();
    expect(again.reads.n).toBe(0);
  });

  it('a change of CLIPAG_OUTPUT_RETENTION_DAYS between passes moves each removal to the outputs_expire_at the view now shows, both ways (review 9, #1)', async () => {
    // Ended 50 min short of 7 days after it was made: a 7-day pass remembers it, not yet due.
    const raised = await job('acct_alice', T0 - 7 * DAY - 10 * MIN, T0 - 7 * DAY + 50 * MIN);
    // Ended 20 days after it was made (queued while serve was stopped): a 30-day pass remembers it.
    const lowered = await job('acct_bob', T0 - 40 * DAY, T0 - 20 * DAY);
    expect(await pass({ outputRetentionDays: 30 }).run()).toMatchObject({ generations: 0 });

    // Restarted with 7 days: `lowered`'s images (outputs_expire_at 13 days ago now) go at the first
    // pass, not 10 days on; `raised` is read and remembered.
    expect(Date.parse(outputsExpireAt(lowered, 7)!)).toBeLessThan(T0);
    expect(await pass({ outputRetentionDays: 7 }).run()).toMatchObject({ generations: 1 });
    expect([await stored(raised), await stored(lowered)]).toEqual([3, 0]);

    // Restarted with 30 days, after its 7-day expiry: `raised` stays until its view's new outputs_expire_at.
    const at30 = Date.parse(outputsExpireAt(raised, 30)!);
    const p30 = pass({ outputRetentionDays: 30 });
    offsetMs = 2 * 60 * MIN;
    await p30.run();
    offsetMs = at30 - T0 - MIN;
    await p30.run();
    expect(await stored(raised)).toBe(3);
    offsetMs = at30 - T0 + MIN;
    expect(await p30.run()).toMatchObject({ generations: 1 });
    expect(await stored(raised)).toBe(0);
  });

  it('remembered jobs that never end do not starve the window scan (review 9, #5)', async () => {
    // 60 jobs stuck running (a dead-lettered job no sweep failed, a newer version's record): each pass reads them again.
    for (let i = 0; i < 60; i++) await job('acct_alice', T0 - 10 * DAY + i * MIN, null);
    const recent = await job('acct_alice', T0 - 7 * DAY + 30 * MIN, T0 - 7 * DAY + 31 * MIN);
    const p = pass({ readsPerPass: 50 });
    await p.run();
    await p.run();
    // The boundary passes `recent`'s creation: the window holding it is read although 60 stuck jobs wait for a re-read.
    offsetMs = 32 * MIN;
    expect(await p.run()).toMatchObject({ generations: 1 });
    expect(await stored(recent)).toBe(0);
  });

  it('remembered jobs that have not ended are read again in turn, not always the same first ones (review 9, #5)', async () => {
    const running: JobRecord[] = [];
    for (let i = 0; i < 60; i++) running.push(await job('acct_alice', T0 - 10 * DAY + i * MIN, null));
    const p = pass({ readsPerPass: 20 });
    for (let i = 0; i < 6; i++) await p.run(); // the window is read through: all 60 are remembered
    // The ten made first (read last, so last in line) end, long enough ago that their images are due.
    const ended = running.slice(0, 10);
    for (const j of ended) {
      const key = `${jobOutputsPrefix('acct_alice', j.id)}0.png`;
      await h.blobs.put(key, png, { contentType: 'image/png' });
      await h.jobs.update('acct_alice', j.id, (cur) => ({ ...cur, status: 'succeeded', finished_at: new Date(T0 - 9 * DAY).toISOString(), outputs: [{ key, width: 64, height: 64 }] }));
    }
    // 20 reads a pass over 60 remembered jobs: every one is read within three passes.
    for (let i = 0; i < 3; i++) await p.run();
    expect(await Promise.all(ended.map(stored))).toEqual(ended.map(() => 0));
  });

  it('records a listing skips as unreadable count toward the pass\'s reads: a window of them is listed a page per pass, not all at once (review 9, #5)', async () => {
    // A window of 250 documents this version cannot read (after a rollback: a newer clipag's; here: damaged).
    for (let i = 0; i < 250; i++) await h.blobs.put(`jobs/acct_alice/${newJobId(T0 - 10 * DAY + i * MIN)}.json`, new TextEncoder().encode('{"not": "a job"'), { contentType: 'application/json' });
    const oldest = await job('acct_alice', T0 - 11 * DAY, T0 - 11 * DAY + MIN);
    const listed = { n: 0 };
    const blobs = new Proxy(h.blobs, {
      get(target, prop, receiver) {
        if (prop === 'listKeys') {
          return async (prefix: string, options: Parameters<NonNullable<BlobStore['listKeys']>>[1]) => {
            const page = await target.listKeys(prefix, options);
            if (prefix.startsWith('jobs/acct_')) listed.n += page.keys.length; // an owner's records, not the hourly walk over owners
            return page;
          };
        }
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    const p = pass({ blobs, jobs: new BlobJobStore(blobs), readsPerPass: 50 });
    const perPass: number[] = [];
    for (let i = 0; i < 6; i++) {
      listed.n = 0;
      await p.run();
      perPass.push(listed.n);
    }
    expect(perPass).toEqual([50, 50, 50, 50, 50, 1]);
    expect(await stored(oldest)).toBe(0);
  });

  it('a failed removal is counted, never thrown, and done by a later pass', async () => {
    const expired = await job('acct_alice', T0 - 10 * DAY, T0 - 9 * DAY);
    const outage = { down: true };
    const blobs = new Proxy(h.blobs, {
      get(target, prop, receiver) {
        if ((prop === 'delete' || prop === 'deleteMany') && outage.down) return async () => Promise.reject(new Error('disk on fire'));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    const p = pass({ blobs });
    expect(await p.run()).toMatchObject({ generations: 0, errors: 1, error: 'disk on fire' });
    expect(await stored(expired)).toBe(3);
    outage.down = false;
    expect(await p.run()).toMatchObject({ generations: 1, errors: 0 });
    expect(await stored(expired)).toBe(0);
  });
});

describe('a removal that keeps failing', () => {
  it('goes to the back of the remembered jobs: it does not take the first of every pass\'s removals', async () => {
    // One removal a pass. The newest expired job (the first any listing gives) cannot lose its files
    // (a file it may not delete).
    const other = await job('acct_alice', T0 - 10 * DAY, T0 - 9 * DAY);
    const stuck = await job('acct_alice', T0 - 10 * DAY + MIN, T0 - 9 * DAY);
    const stuckPrefix = jobOutputsPrefix('acct_alice', stuck.id);
    const blobs = new Proxy(h.blobs, {
      get(target, prop, receiver) {
        if (prop === 'delete') return async (key: string) => (key.startsWith(stuckPrefix) ? Promise.reject(new Error('permission denied')) : target.delete(key));
        if (prop === 'deleteMany') return async (keys: string[]) => (keys.some((k) => k.startsWith(stuckPrefix)) ? Promise.reject(new Error('permission denied')) : target.deleteMany(keys));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    }) as BlobStore;
    const p = pass({ blobs, removalsPerPass: 1 });
    const reports = [await p.run(), await p.run(), await p.run()];
    expect(await stored(other)).toBe(0);
    expect(await stored(stuck)).toBe(3);
    expect(reports.reduce((n, r) => n + r.generations, 0)).toBe(1);
  });
});

describe('upload retention', () => {
  async function upload(madeMs: number): Promise<string> {
    const key = uploadKey('acct_alice', newId(madeMs));
    await h.blobs.put(key, png, { contentType: 'image/png' });
    return key;
  }
  const exists = async (key: string) => (await h.blobs.head(key)) !== null;

  it('removes uploads PUT over CLIPAG_UPLOAD_RETENTION_DAYS ago, but not one a queued or running job names until it ends', async () => {
    const old = await upload(T0);
    const named = await upload(T0);
    const later = await upload(T0 + 2 * DAY); // made (and so PUT) after the cutoff below
    const waiting = newJobRecord({ id: newJobId(), owner: 'acct_alice', spec: GenerationSpec.parse({ prompt: 'apple', width: 64, height: 64, model: 'toy', init: `upload:${named.split('/').pop()}` }) });
    await markPending(h.blobs, 'active', 'acct_alice', waiting.id);
    await h.jobs.create(waiting);

    const p = pass({ uploadRetentionDays: 5 });
    offsetMs = 4 * DAY;
    expect(await p.run()).toMatchObject({ uploads: 0 });
    offsetMs = 5 * DAY + MIN;
    expect(await p.run()).toMatchObject({ uploads: 1, errors: 0 });
    expect([await exists(old), await exists(named), await exists(later)]).toEqual([false, true, true]);

    await h.jobs.update('acct_alice', waiting.id, (cur) => ({ ...cur, status: 'canceled', finished_at: new Date().toISOString() }));
    expect(await p.run()).toMatchObject({ uploads: 1 });
    expect([await exists(named), await exists(later)]).toEqual([false, true]);
  });

  it('keeps every upload when only the output retention is set', async () => {
    const old = await upload(T0);
    offsetMs = 400 * DAY;
    await pass().run();
    expect(await exists(old)).toBe(true);
  });
});

describe('in the background sweep', () => {
  const sweepDeps = (logs: AppLogEntry[]): SweepDeps => ({
    blobs: h.blobs,
    jobs: h.jobs,
    queue: h.queue,
    clock,
    log: (e) => logs.push(e),
    webhooks: { send: httpWebhookSender({ allowPrivate: true }), signedUrlTtlSec: 600 },
  });

  it('logs one line for a pass that removed something, none for one that did not, and a failing pass never stops the sweeps', async () => {
    const logs: AppLogEntry[] = [];
    const results = [
      () => Promise.resolve({ generations: 2, files: 6, uploads: 0, records: 0, read: 3, errors: 0 }),
      () => Promise.resolve({ generations: 0, files: 0, uploads: 0, records: 0, read: 0, errors: 0 }),
      // Generations the record retention deleted are said too (ADR 0037).
      () => Promise.resolve({ generations: 0, files: 0, uploads: 0, records: 3, read: 3, errors: 0 }),
      () => Promise.reject(new Error('state folder gone')),
    ];
    let runs = 0;
    const retention = { run: () => results[Math.min(runs++, results.length - 1)]!() };
    const timer = startQueuedJobSweeps(sweepDeps(logs), 5, { retention });
    try {
      for (let i = 0; i < 2000 && runs < 6; i++) await new Promise((r) => setTimeout(r, 5));
    } finally {
      await timer.stop();
    }
    expect(runs).toBeGreaterThanOrEqual(6); // the failures did not stop the timer
    const lines = logs.filter((l) => String(l.msg).startsWith('local retention'));
    expect(lines[0]).toMatchObject({ level: 'info', msg: 'local retention: removed what has expired', generations: 2, files: 6 });
    expect(lines[1]).toMatchObject({ level: 'info', msg: 'local retention: removed what has expired', records: 3 });
    expect(lines.slice(2).every((l) => l.msg === 'local retention pass failed; the next one runs on time' && l.error === 'state folder gone')).toBe(true);
    expect(lines.length).toBe(2 + (runs - 3));
  });
});
