// CLIPAG_RECORD_RETENTION_DAYS (ADR 0037): a generation that ended that many days ago is deleted as
// DELETE /v1/generations/{id} deletes it, by the retention pass (clipag serve's sweep; the AWS sweep
// Lambda runs the same pass). Before, prompts, labels and webhook URLs were kept until each
// generation was deleted by hand (the privacy review).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { retentionDelete } from '../../functions/generation-delete.ts';
import { RECORD_RETENTION_STATE_KEY, retentionPass } from '../../functions/local-retention.ts';
import { parseConfig } from '../../shared/config.ts';
import { jobOutputsPrefix } from '../../shared/keys.ts';
import { frameKey } from '../../shared/views.ts';
import { harness, type Harness } from './helpers.ts';

const DAY = 86_400_000;

let h: Harness;
let offsetMs: number;
const clock = () => new Date(Date.now() + offsetMs);

beforeEach(async () => {
  h = await harness();
  offsetMs = 0;
});
afterEach(() => h.close());

/** A generation made through the API (with a key and labels), then ended `daysAgo` before now with one image and a frame. */
async function ended(key: string, daysAgo: number): Promise<string> {
  // Made through the API as it was then: its id and created_at carry the time, which the pass's windows go by.
  const then = createApp({ ...h.deps, clock: () => new Date(Date.now() - daysAgo * DAY - 60_000) });
  const res = await then.request('/v1/generations', {
    method: 'POST',
    headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key },
    body: JSON.stringify({ prompt: `a red circle for ${key}`, metadata: { order: key } }),
  });
  expect(res.status).toBe(202);
  const { id } = (await res.json()) as { id: string };
  const out = `${jobOutputsPrefix('acct_alice', id)}0.png`;
  await h.blobs.put(out, new Uint8Array([137, 80, 78, 71]), { contentType: 'image/png' });
  await h.blobs.put(frameKey('acct_alice', id, 0, 0, 64, 64), new Uint8Array([1]), { contentType: 'image/png' });
  await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status: 'succeeded',
    attempts: 1,
    started_at: new Date(Date.now() - daysAgo * DAY - 5_000).toISOString(),
    finished_at: new Date(Date.now() - daysAgo * DAY).toISOString(),
    progress: { step: cur.progress.total, total: cur.progress.total },
    outputs: [{ key: out, width: 64, height: 64 }],
    usage: { encoder_passes: 100, worker_seconds: 4.5 },
  }));
  return id;
}

function pass(days: number, extra: { outputRetentionDays?: number } = {}) {
  return retentionPass({ blobs: h.blobs, jobs: h.jobs, clock, recordRetentionDays: days, deleteGeneration: retentionDelete(h.blobs, h.jobs, clock), ...extra })!;
}

describe('the record retention', () => {
  it('deletes a generation N days after it ended, as DELETE does; leaves younger and unended ones; a replay of its key answers it, deleted', async () => {
    const old = await ended('order-old@example.com', 31);
    const young = await ended('order-young', 10);
    const queued = ((await (await h.request('/v1/generations', { json: { prompt: 'still queued' } })).json()) as { id: string }).id;

    const report = await pass(30).run();
    expect(report).toMatchObject({ records: 1, errors: 0 });

    const gone = (await h.jobs.get('acct_alice', old))!;
    expect(gone.deleted_at).toEqual(expect.any(String));
    expect(gone.spec.prompt).toBe('[deleted]');
    expect(gone.metadata ?? {}).toEqual({});
    expect([gone.idempotency_key, gone.body_hash]).toEqual([null, null]);
    // Usage stays for the owner's audit, as DELETE keeps it.
    expect(gone.usage).toMatchObject({ encoder_passes: 100, worker_seconds: 4.5 });
    expect((await h.blobs.list(jobOutputsPrefix('acct_alice', old))).items).toEqual([]);
    // The key answers the deleted generation, whatever the body, as after a DELETE.
    const replay = await h.request('/v1/generations', { json: { prompt: 'anything at all' }, headers: { 'Idempotency-Key': 'order-old@example.com' } });
    expect(replay.status).toBe(200);
    expect(((await replay.json()) as { id: string; deleted_at: string | null })).toMatchObject({ id: old, deleted_at: expect.any(String) });
    // No trace of the prompt or the key left in the claim or the record.
    const claims = await h.blobs.list('jobs/.idempotency/');
    for (const c of claims.items) expect(new TextDecoder().decode((await h.blobs.get(c.key))!.body)).not.toContain('red circle for order-old');
    expect(JSON.stringify(gone)).not.toContain('order-old@example.com');

    const kept = (await h.jobs.get('acct_alice', young))!;
    expect([kept.deleted_at, kept.spec.prompt]).toEqual([undefined, 'a red circle for order-young']);
    expect((await h.blobs.list(jobOutputsPrefix('acct_alice', young))).items).toHaveLength(2);
    expect((await h.jobs.get('acct_alice', queued))!.status).toBe('queued');
    expect(await h.blobs.head(RECORD_RETENTION_STATE_KEY)).not.toBeNull();

    // 21 days on: the younger one is due; the pass knew its end, and deletes it.
    offsetMs = 21 * DAY;
    expect((await pass(30).run()).records).toBe(1);
    expect((await h.jobs.get('acct_alice', young))!.deleted_at).toEqual(expect.any(String));
    expect((await h.jobs.get('acct_alice', queued))!.deleted_at).toBeUndefined();
    // Nothing is deleted twice.
    expect((await pass(30).run()).records).toBe(0);
  });

  it('beside an output retention: the images go at their expiry, the record at its own', async () => {
    const id = await ended('both', 10);
    const both = pass(30, { outputRetentionDays: 7 });
    const first = await both.run();
    expect(first).toMatchObject({ generations: 1, records: 0 });
    expect((await h.blobs.list(jobOutputsPrefix('acct_alice', id))).items).toEqual([]);
    expect((await h.jobs.get('acct_alice', id))!.spec.prompt).toBe('a red circle for both');
    offsetMs = 21 * DAY;
    expect((await both.run()).records).toBe(1);
    expect((await h.jobs.get('acct_alice', id))!.spec.prompt).toBe('[deleted]');
  });

  it('is a setting of both modes, 1 to 3650 days; a pass without its delete is refused', () => {
    expect(parseConfig({ CLIPAG_RECORD_RETENTION_DAYS: '90' })).toMatchObject({ recordRetentionDays: 90 });
    expect(parseConfig({ CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'b-1', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q', CLIPAG_RECORD_RETENTION_DAYS: '30' })).toMatchObject({ recordRetentionDays: 30 });
    expect(() => parseConfig({ CLIPAG_RECORD_RETENTION_DAYS: '0' })).toThrow(/CLIPAG_RECORD_RETENTION_DAYS/);
    expect(() => retentionPass({ blobs: h.blobs, jobs: h.jobs, clock, recordRetentionDays: 30 })).toThrow(/needs deleteGeneration/);
  });
});

describe('the record retention, from the diff review of 2026-12-07', () => {
  it('deletes a generation whose POST was answered 503 (failed enqueue_failed) once due; one queued again since by a retry is left until it ends', async () => {
    const { queueWithOutage } = await import('./helpers.ts');
    const { queue } = queueWithOutage(h.queue);
    const then = (daysAgo: number) => createApp({ ...h.deps, queue, clock: () => new Date(Date.now() - daysAgo * DAY) });
    const refused = async (key: string, daysAgo: number) => {
      const res = await then(daysAgo).request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key },
        body: JSON.stringify({ prompt: `private words for ${key}` }),
      });
      expect(res.status).toBe(503);
      const listed = (await h.jobs.listByOwner('acct_alice')).jobs.find((j) => j.idempotency_key === key)!;
      expect([listed.status, listed.error?.code]).toEqual(['failed', 'enqueue_failed']);
      return listed.id;
    };
    const old = await refused('k-503-old', 40);
    const retried = await refused('k-503-retried', 40);
    // A retry with its key, days later, queued it again (the queue is up now).
    await h.jobs.update('acct_alice', retried, (cur) => ({ ...cur, status: 'queued', finished_at: null, error: null }));

    const report = await pass(30).run();
    expect(report).toMatchObject({ records: 1, errors: 0 });
    expect((await h.jobs.get('acct_alice', old))!.spec.prompt).toBe('[deleted]');
    expect((await h.jobs.get('acct_alice', retried))!.spec.prompt).toBe('private words for k-503-retried');
  });

  it('a record that no longer reads is left as it is, said once; the pass does not fail on it again', async () => {
    // Made 31 days ago, ended 10 days ago: read by the first pass, remembered with its end.
    const id = await ended('turns-corrupt', 31);
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, finished_at: new Date(Date.now() - 10 * DAY).toISOString() }));
    const logs: Array<Record<string, unknown>> = [];
    const mk = () => retentionPass({ blobs: h.blobs, jobs: h.jobs, clock, log: (e) => logs.push(e as Record<string, unknown>), recordRetentionDays: 30, deleteGeneration: retentionDelete(h.blobs, h.jobs, clock) })!;
    expect((await mk().run()).records).toBe(0); // read and remembered with its end
    await h.blobs.put(`jobs/acct_alice/${id}.json`, new TextEncoder().encode('{"not": "a record"'), { contentType: 'application/json' });
    offsetMs = 21 * DAY;
    const first = await mk().run();
    expect(first).toMatchObject({ records: 0, errors: 0 });
    expect(logs.filter((l) => l.msg === 'record retention: a record due for deletion does not read; left as it is').map((l) => l.job_id)).toEqual([id]);
    expect((await mk().run()).errors).toBe(0);
  });

  it('with a deadline already past (a sweep Lambda near its end), deletes nothing and keeps what it knows for the next pass', async () => {
    const id = await ended('late', 31);
    expect((await pass(30).run({ deadline: Date.now() - 1 })).records).toBe(0);
    expect((await h.jobs.get('acct_alice', id))!.deleted_at).toBeUndefined();
    expect((await pass(30).run()).records).toBe(1);
  });
});

// The compatibility review's F2: the sweep is rolled back with the API (ADR 0030), and the older version
// meets records a newer one wrote. Each used to be passed by (the window) or forgotten (a re-read, the
// remove's own re-read), and no pass after the roll-forward came back to it: never deleted.
describe('the record retention across a rollback (records a newer clipag wrote)', () => {
  const stored = (id: string) => `jobs/acct_alice/${id}.json`;
  /** The record as a newer clipag would have it (a spec field this version does not know), or back as it was. */
  async function newer(id: string, on: boolean): Promise<void> {
    const raw = JSON.parse(new TextDecoder().decode((await h.blobs.get(stored(id)))!.body)) as { spec: Record<string, unknown> };
    if (on) raw.spec.guidance = 3;
    else delete raw.spec.guidance;
    await h.blobs.put(stored(id), new TextEncoder().encode(JSON.stringify(raw)), { contentType: 'application/json' });
  }
  const logs: Array<Record<string, unknown>> = [];
  const mk = () => retentionPass({ blobs: h.blobs, jobs: h.jobs, clock, log: (e) => logs.push(e as Record<string, unknown>), recordRetentionDays: 30, deleteGeneration: retentionDelete(h.blobs, h.jobs, clock) })!;

  it('one due when the window first reads it, unreadable then: kept, and deleted by the first pass that reads it', async () => {
    const id = await ended('newer-in-window', 31);
    await newer(id, true);
    expect(await mk().run()).toMatchObject({ records: 0, errors: 0 });
    expect((await h.jobs.get('acct_alice', id).catch(() => null))).toBeNull(); // still unreadable here (a newer record's GET is 503)
    await newer(id, false); // the roll-forward
    expect((await mk().run()).records).toBe(1);
    expect((await h.jobs.get('acct_alice', id))!.deleted_at).toEqual(expect.any(String));
  });

  it('one remembered with its end, unreadable when it comes due: kept (said so), and deleted once it reads', async () => {
    const id = await ended('newer-when-due', 31);
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, finished_at: new Date(Date.now() - 10 * DAY).toISOString() }));
    expect((await mk().run()).records).toBe(0); // remembered with its end
    await newer(id, true);
    offsetMs = 21 * DAY;
    expect(await mk().run()).toMatchObject({ records: 0, errors: 0 });
    expect(logs.filter((l) => l.msg === 'record retention: a record due for deletion was written by a newer clipag; kept, and judged again once this service reads it').map((l) => l.job_id)).toEqual([id]);
    expect(await mk().run()).toMatchObject({ records: 0, errors: 0 });
    await newer(id, false);
    expect((await mk().run()).records).toBe(1);
  });

  it('one remembered unended, unreadable when read again: kept, and judged once it reads and has ended', async () => {
    // Made 31 days ago and still queued: the window reads it and remembers it, not ended.
    const then = createApp({ ...h.deps, clock: () => new Date(Date.now() - 31 * DAY) });
    const made = await then.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'queued, then a newer worker ends it' }) });
    const queued = ((await made.json()) as { id: string }).id;
    expect((await mk().run()).records).toBe(0);
    await newer(queued, true);
    expect(await mk().run()).toMatchObject({ records: 0, errors: 0 });
    await newer(queued, false);
    await h.jobs.update('acct_alice', queued, (cur) => ({ ...cur, status: 'failed', attempts: 1, finished_at: new Date(Date.now() - 31 * DAY).toISOString(), error: { code: 'timeout', message: 'ran out of time' } }));
    expect((await mk().run()).records).toBe(1);
    expect((await h.jobs.get('acct_alice', queued))!.deleted_at).toEqual(expect.any(String));
  });
});
