// A job record a newer clipag wrote (a spec key or an enum value this version does not know), met by
// this version's API and queued-job sweep: during a deploy, or after a rollback of the API through its
// alias (ADR 0030). Neither may take it for damage: the API answers 503 (retry: a version that reads it
// will answer), not 409 corrupt_record ("contact the operator"); the sweep keeps the job's markers, and
// keeps its promise to every waiting job from the record's stored times: the waiting-customer figure
// counts it, and past the queue's retention it is expired (its older workers keep sending its message
// back for a newer worker, so the queue alone would never end it). Real damage is answered as before.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sweepQueuedJobs, type SweepDeps } from '../../functions/queued-jobs.ts';
import { NEWER_RECORD_RETRY_AFTER_SEC } from '../../functions/middleware/errors.ts';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { BlobJobStore, NewerJobRecordError } from '../../shared/jobstore.ts';
import { pendingJobKey, type PendingKind } from '../../shared/keys.ts';
import { markPending } from '../../shared/pending.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

const OWNER = 'acct_alice';
const DAY = 86_400;

let h: Harness;
let offsetMs: number;
const clock = () => new Date(Date.now() + offsetMs);
const logs: Array<Record<string, unknown>> = [];

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
  logs.length = 0;
});
afterEach(() => h.close());

async function createJob(prompt: string, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await h.request('/v1/generations', { json: { prompt, steps: 5, ...extra } });
  expect(res.status).toBe(202);
  return ((await res.json()) as { id: string }).id;
}

const keyOf = (id: string) => BlobJobStore.keyFor(OWNER, id);
const readRaw = async (id: string) => JSON.parse(Buffer.from((await h.blobs.get(keyOf(id)))!.body).toString()) as Record<string, any>;

/** The stored record rewritten as a newer clipag would write it (`patch` edits the raw JSON); its bytes. */
async function rewrite(id: string, patch: (rec: Record<string, any>) => void): Promise<Buffer> {
  const rec = await readRaw(id);
  patch(rec);
  const bytes = Buffer.from(JSON.stringify(rec));
  await h.blobs.put(keyOf(id), bytes);
  return bytes;
}
const storedBytes = async (id: string) => Buffer.from((await h.blobs.get(keyOf(id)))!.body);

describe('the job store', () => {
  it('tells a newer writer (an unknown spec key, an unknown status) from damage, and says what it could read', async () => {
    const id = await createJob('a lighthouse');
    await rewrite(id, (r) => void (r.spec.guidance = 3));
    const error = await h.jobs.get(OWNER, id).then(() => undefined, (e: unknown) => e);
    // Still a CorruptDocumentError to a reader that only tells good from bad (the spec stays strict: ADR 0030).
    expect(error).toBeInstanceOf(CorruptDocumentError);
    expect(error).toBeInstanceOf(NewerJobRecordError);
    const newer = error as NewerJobRecordError;
    expect(newer.unknown).toEqual(['spec.guidance']);
    expect(newer.seen).toMatchObject({ status: 'queued', created_at: expect.any(String) });
    expect(newer.record).toMatchObject({ id, status: 'queued', attempts: 0 });
    expect(newer.waitingSince).toBe(Date.parse(newer.seen.created_at!));

    await rewrite(id, (r) => void (r.status = 'paused'));
    const paused = (await h.jobs.get(OWNER, id).then(() => undefined, (e: unknown) => e)) as NewerJobRecordError;
    expect(paused).toBeInstanceOf(NewerJobRecordError);
    expect(paused.seen.status).toBe('paused');
    expect(paused.record).toBeUndefined();

    // Damage: a known field of the wrong type beside the unknown key; a record naming another job.
    await rewrite(id, (r) => Object.assign(r, { status: 'queued', spec: { ...r.spec, steps: 'five' } }));
    const damaged = await h.jobs.get(OWNER, id).then(() => undefined, (e: unknown) => e);
    expect(damaged).toBeInstanceOf(CorruptDocumentError);
    expect(damaged).not.toBeInstanceOf(NewerJobRecordError);
    const other = await createJob('a harbour');
    await rewrite(other, (r) => Object.assign(r, { id, spec: { ...r.spec, guidance: 3 } }));
    expect(await h.jobs.get(OWNER, other).then(() => undefined, (e: unknown) => e)).not.toBeInstanceOf(NewerJobRecordError);
  });

  it("a listing skips it with its own log line (not the corrupt one), and lists the owner's other jobs", async () => {
    const before = await createJob('one');
    const newer = await createJob('two');
    const after = await createJob('three');
    await rewrite(newer, (r) => void (r.spec.guidance = 3));
    const warnings: Array<Record<string, unknown>> = [];
    const store = new BlobJobStore(h.blobs, { log: { warn: (msg, fields) => void warnings.push({ msg, ...fields }) } });
    expect((await store.listByOwner(OWNER)).jobs.map((j) => j.id).sort()).toEqual([before, after].sort());
    expect(warnings).toEqual([{ msg: 'skipping a job record written by a newer clipag in a listing', key: keyOf(newer), unknown: ['spec.guidance'] }]);
  });
});

describe('the API, one version older than the writer', () => {
  it('GET, cancel, delete and webhook redelivery answer 503 unavailable with a Retry-After, never 409 corrupt_record; the record is left as written', async () => {
    const id = await createJob('apple');
    const bytes = await rewrite(id, (r) => void (r.spec.guidance = 3));
    const calls: Array<[string, RequestInit & { json?: unknown }]> = [
      [`/v1/generations/${id}`, {}],
      [`/v1/generations/${id}/cancel`, { method: 'POST', headers: { 'content-type': 'application/json' } }],
      [`/v1/generations/${id}`, { method: 'DELETE' }],
      [`/v1/generations/${id}/webhook/redeliver`, { method: 'POST', headers: { 'content-type': 'application/json' } }],
    ];
    for (const [path, init] of calls) {
      const res = await h.request(path, init);
      expect(res.headers.get('retry-after'), `${init.method ?? 'GET'} ${path}`).toBe(String(NEWER_RECORD_RETRY_AFTER_SEC));
      const error = await expectEnvelope(res, 503, 'unavailable');
      expect(error.message).toMatch(/written by a newer version of the service; retry later/);
    }
    expect((await storedBytes(id)).equals(bytes)).toBe(true);
  });

  it('a retried POST whose Idempotency-Key names such a job answers 503 too (retry with the same key), and makes no second job', async () => {
    const post = () => h.request('/v1/generations', { json: { prompt: 'apple', steps: 5 }, headers: { 'Idempotency-Key': 'k-newer' } });
    const first = await post();
    expect(first.status).toBe(202);
    const { id } = (await first.json()) as { id: string };
    await rewrite(id, (r) => void (r.spec.guidance = 3));
    await expectEnvelope(await post(), 503, 'unavailable');
    const keys = (await h.blobs.list(`jobs/${OWNER}/`)).items.map((i) => i.key);
    expect(keys).toEqual([keyOf(id)]);
  });

  it('the list leaves it out (its view cannot be made here) and shows the rest; real damage is still 409 corrupt_record', async () => {
    const shown = await createJob('one');
    const newer = await createJob('two');
    await rewrite(newer, (r) => void (r.spec.guidance = 3));
    const list = await h.request('/v1/generations');
    expect(list.status).toBe(200);
    expect(((await list.json()) as { data: { id: string }[] }).data.map((j) => j.id)).toEqual([shown]);

    await rewrite(newer, (r) => void (r.spec.steps = 'five'));
    await expectEnvelope(await h.request(`/v1/generations/${newer}`), 409, 'corrupt_record');
  });
});

describe('the queued-job sweep, one version older than the writer', () => {
  function sweepDeps(): SweepDeps {
    return { blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock, log: (e) => void logs.push(e), webhooks: { send: async () => 200, signedUrlTtlSec: 600 } };
  }
  const hasMarker = async (kind: PendingKind, id: string) => {
    const key = pendingJobKey(kind, OWNER, id);
    return (await h.blobs.list(key)).items.some((i) => i.key === key);
  };

  /** A queued job a newer API wrote, with every marker a job can have while it waits. */
  async function newerQueuedJob(patch: (rec: Record<string, any>) => void = (r) => void (r.spec.guidance = 3)): Promise<{ id: string; bytes: Buffer }> {
    const id = await createJob('apple');
    for (const kind of ['msg', 'active', 'hook', 'outputs'] as const) await markPending(h.blobs, kind, OWNER, id);
    return { id, bytes: await rewrite(id, patch) };
  }

  it('keeps its markers and counts its wait in oldestQueuedSec (the waiting-customer alarm), sending nothing and writing nothing', async () => {
    const { id, bytes } = await newerQueuedJob();
    offsetMs = 2 * 3600_000; // two hours on: long queued (the sweep would re-send an ordinary job's message)
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY });
    for (const kind of ['msg', 'active', 'hook', 'outputs'] as const) expect(await hasMarker(kind, id), kind).toBe(true);
    expect(report).toMatchObject({ scanned: 4, kept: 4, cleared: 0, resent: 0, expired: 0, errors: 0 });
    expect(report.oldestQueuedSec).toBeGreaterThanOrEqual(2 * 3600);
    expect(report.oldestQueuedSec).toBeLessThan(2 * 3600 + 600);
    expect((await storedBytes(id)).equals(bytes)).toBe(true);
    expect((await h.queue.receive({ max: 10, waitSec: 0 })).length).toBe(1); // only the POST's own message
    expect(logs).toContainEqual(expect.objectContaining({ level: 'warn', msg: expect.stringMatching(/written by a newer clipag; its markers kept/), job_id: id, unknown: ['spec.guidance'] }));
  });

  it('one left running on a lease that lapsed (its newer worker died) counts in oldestQueuedSec from the lapse; a live lease does not', async () => {
    const t0 = Date.now();
    const { id } = await newerQueuedJob((r) => {
      r.spec.guidance = 3;
      Object.assign(r, { status: 'running', attempts: 1, started_at: new Date(t0).toISOString(), lease_message_id: 'm1', lease_expires_at: new Date(t0 + 60_000).toISOString(), lease_token: 'x' });
    });
    offsetMs = 30_000; // the lease still runs: a worker holds it
    expect((await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY })).oldestQueuedSec).toBe(0);
    offsetMs = 6 * 3600_000; // six hours on
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY });
    expect(report.oldestQueuedSec).toBeGreaterThanOrEqual(6 * 3600 - 60 - 5);
    expect(report.oldestQueuedSec).toBeLessThan(6 * 3600);
    expect(await hasMarker('active', id)).toBe(true);
  });

  it("past the queue's retention it is expired like any job no message can reach, keeping what it does not know", async () => {
    const { id } = await newerQueuedJob();
    offsetMs = (DAY + 2 * 3600) * 1000;
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY });
    expect(report).toMatchObject({ expired: 1, errors: 0 });
    const raw = await readRaw(id);
    expect(raw).toMatchObject({ status: 'failed', version: 2, finished_at: expect.any(String), error: { code: 'expired', message: 'not run within 1 day(s) (how long the queue keeps a job); submit it again' } });
    expect(raw.spec.guidance).toBe(3);
    // Its place is freed; the rest (its webhook, its images) are left for a version that reads the record.
    expect(await hasMarker('active', id)).toBe(false);
    expect(await hasMarker('hook', id)).toBe(true);
  });

  it('a status this version does not know is neither counted nor expired (it cannot tell whether the job waits); its markers stay', async () => {
    const { id, bytes } = await newerQueuedJob((r) => void (r.status = 'paused'));
    offsetMs = (DAY + 2 * 3600) * 1000;
    const report = await sweepQueuedJobs({ ...sweepDeps(), queueRetentionSec: DAY });
    expect(report).toMatchObject({ expired: 0, errors: 0, oldestQueuedSec: 0, cleared: 0 });
    for (const kind of ['msg', 'active', 'hook', 'outputs'] as const) expect(await hasMarker(kind, id), kind).toBe(true);
    expect((await storedBytes(id)).equals(bytes)).toBe(true);
  });

  it('an ended one has its active-job marker removed, as any ended job', async () => {
    const { id } = await newerQueuedJob((r) => Object.assign(r, { status: 'succeeded', finished_at: new Date().toISOString(), spec: { ...r.spec, guidance: 3 } }));
    await sweepQueuedJobs(sweepDeps());
    expect(await hasMarker('active', id)).toBe(false);
    expect(await hasMarker('msg', id)).toBe(false);
    expect(await hasMarker('hook', id)).toBe(true);
  });
});
