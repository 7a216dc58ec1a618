// Job records a newer API or worker wrote, read and updated by this version (ADR 0002): the fields
// and values it does not know inside the record's nested objects are kept, not refused, and never
// shown. The API and the worker deploy (and roll back) apart, so each reads what the other's newer
// version wrote.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { deletedRecord, JOB_STATUSES, newJobRecord } from '../../shared/schemas/job.ts';
import { GenerationView } from '../../shared/schemas/view.ts';
import { generationView } from '../../shared/views.ts';
import { harness, type Harness } from '../functions/helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

const OWNER = 'acct_alice';

/** A succeeded job as a newer version would write it: one unknown key in each nested object, a policy category and an output action this version does not know. */
function newerRecord(id: string): Record<string, unknown> {
  const spec = GenerationSpec.parse({ prompt: 'a lighthouse', steps: 4, n: 2, model: 'toy' });
  const base = newJobRecord({ id, owner: OWNER, spec, webhook: { url: 'https://example.com/hook', secret: `whsec_${'A'.repeat(32)}` } });
  const flag = { rule: 'r1', category: 'trademark', action: 'flag', concept: 'a logo', message: 'looks like a logo', cosine: 0.31 };
  return {
    ...base,
    status: 'succeeded',
    started_at: base.created_at,
    finished_at: base.created_at,
    progress: { step: 8, total: 8, stage: 'done' },
    outputs: [
      { key: `outputs/${OWNER}/${id}/0.png`, width: 64, height: 64, clip_score: 0.3, seed: 7 },
      { key: `outputs/${OWNER}/${id}/1.png`, width: 64, height: 64, seed: 8 },
    ],
    usage: { encoder_passes: 12, worker_seconds: 3.5, gpu_seconds: 1.5 },
    error: null,
    webhook: { ...base.webhook!, events: ['succeeded'] },
    content_flags: [
      { rule: 'c1', category: 'likeness', term: 'famous', message: 'a likeness', param: 'prompt', severity: 'low' },
      { rule: 'c2', category: 'privacy', term: 'address', message: 'a private address', param: 'prompt' },
    ],
    output_checks: [
      { index: 0, withheld: false, flags: [{ ...flag, bbox: [0, 0, 8, 8] }], checked_by: 'judge-v2' },
      { index: 1, withheld: false, flags: [{ ...flag, category: 'privacy' }, { ...flag, action: 'blur' }] },
    ],
  };
}

async function putRaw(record: Record<string, unknown>): Promise<string> {
  const key = BlobJobStore.keyFor(OWNER, record.id as string);
  await h.blobs.put(key, Buffer.from(JSON.stringify(record)));
  return key;
}
const readRaw = async (key: string) => JSON.parse(Buffer.from((await h.blobs.get(key))!.body).toString()) as Record<string, any>;

describe('a job record a newer version wrote', () => {
  it('reads, and an update by this version keeps every nested key and value it does not know', async () => {
    const id = '0000000000000000000000newer';
    const before = newerRecord(id);
    const key = await putRaw(before);
    const job = await h.jobs.get(OWNER, id);
    expect(job?.usage).toMatchObject({ gpu_seconds: 1.5 });

    const updated = await h.jobs.update(OWNER, id, (r) => ({ ...r, webhook: { ...r.webhook!, attempts: 1 } }));
    expect(updated.version).toBe(2);
    const raw = await readRaw(key);
    expect(raw).toEqual({ ...before, version: 2, webhook: { ...(before.webhook as object), attempts: 1 } });
    expect(raw.usage.gpu_seconds).toBe(1.5);
    expect(raw.outputs[0].seed).toBe(7);
    expect(raw.webhook.events).toEqual(['succeeded']);
    expect(raw.progress.stage).toBe('done');
    expect(raw.content_flags[1].category).toBe('privacy');
    expect(raw.output_checks[0]).toMatchObject({ checked_by: 'judge-v2', flags: [{ bbox: [0, 0, 8, 8] }] });
    expect(raw.output_checks[1].flags.map((f: { category: string; action: string }) => [f.category, f.action])).toEqual([['privacy', 'flag'], ['trademark', 'blur']]);
  });

  it('an error with a key this version does not know reads and is kept too', async () => {
    const id = '0000000000000000000000error';
    const key = await putRaw({ ...newerRecord(id), status: 'failed', outputs: [], output_checks: undefined, error: { code: 'timeout', message: 'ran too long', retry_after: 30 } });
    await h.jobs.update(OWNER, id, (r) => ({ ...r, attempts: r.attempts + 1 }));
    expect((await readRaw(key)).error).toEqual({ code: 'timeout', message: 'ran too long', retry_after: 30 });
  });

  it('the API serves it with only what its view documents: no unknown key, no unknown category or action', async () => {
    const id = '0000000000000000000000views';
    await putRaw(newerRecord(id));
    const res = await h.request(`/v1/generations/${id}`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, any>;
    // The documented shape, its enums included (GenerationView's nested objects are strict).
    expect(GenerationView.safeParse(body).success).toBe(true);
    expect(Object.keys(body.usage).sort()).toEqual(['cost_usd', 'encoder_passes', 'hourly_usd', 'worker_seconds']);
    expect(body.progress).toEqual({ step: 8, total: 8, attempt: 0 });
    expect(body.content_flags).toEqual([{ rule: 'c1', category: 'likeness', term: 'famous', message: 'a likeness', param: 'prompt' }]);
    expect(body.outputs.map((o: Record<string, unknown>) => Object.keys(o).sort())).toEqual([
      ['clip_score', 'content_flags', 'content_type', 'expires_at', 'height', 'index', 'seed', 'url', 'width'],
      ['content_type', 'expires_at', 'height', 'index', 'seed', 'url', 'width'], // its only flags are of a category and an action this version does not know
    ]);
    expect(body.outputs[0].content_flags).toEqual([{ rule: 'r1', category: 'trademark', action: 'flag', concept: 'a logo', message: 'looks like a logo', cosine: 0.31 }]);
    expect(Object.keys(body.webhook).sort()).toEqual(['attempts', 'last_error', 'status', 'url']);

    const list = (await (await h.request('/v1/generations')).json()) as { data: { id: string }[] };
    expect(list.data.map((j) => j.id)).toContain(id);
  });

  it('the API cancels a queued one and keeps what it does not know', async () => {
    const id = '00000000000000000000cancel';
    const { webhook: _w, output_checks: _c, ...record } = newerRecord(id);
    const key = await putRaw({ ...record, status: 'queued', started_at: null, finished_at: null, outputs: [], progress: { step: 0, total: 8, stage: 'waiting' } });
    const res = await h.request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    const raw = await readRaw(key);
    expect(raw).toMatchObject({ status: 'canceled', usage: { gpu_seconds: 1.5 }, progress: { stage: 'waiting' } });
    expect(raw.content_flags.map((f: { category: string }) => f.category)).toEqual(['likeness', 'privacy']);
  });

  it('a view of an error shows its code and message only', async () => {
    const id = '000000000000000000000verr2';
    await putRaw({ ...newerRecord(id), status: 'failed', outputs: [], output_checks: undefined, error: { code: 'timeout', message: 'ran too long', retry_after: 30 } });
    const view = await generationView((await h.jobs.get(OWNER, id))!, h.blobs, 60, new Date());
    expect(view.error).toEqual({ code: 'timeout', message: 'ran too long' });
  });

  it('deleting it blanks the output check findings whole: a key a newer version added to a flag goes with the image', async () => {
    const id = '0000000000000000000delete0';
    await putRaw(newerRecord(id));
    const deleted = deletedRecord((await h.jobs.get(OWNER, id))!, new Date().toISOString());
    expect(deleted.output_checks![0]!.flags).toEqual([{ rule: 'r1', category: 'trademark', action: 'flag', concept: '[deleted]', message: '[deleted]', cosine: 0 }]);
    expect(deleted.usage).toMatchObject({ gpu_seconds: 1.5 }); // kept for the usage audit, as the known figures are
  });
});

describe('what stays closed in the job record (ADR 0002)', () => {
  // An unknown status cannot be acted on (claim, cancel, delete, sweep, list filter) nor shown (the
  // view's status is this enum): a new status ships in two deploys, every reader first. If this list
  // changes, read ADR 0002's paragraph on the job record before deploying the writer of the new value.
  it('the statuses are the five this version acts on, and a record with another one reads as corrupt', async () => {
    expect(JOB_STATUSES).toEqual(['queued', 'running', 'succeeded', 'failed', 'canceled']);
    const id = '000000000000000000000paused';
    await putRaw({ ...newerRecord(id), status: 'paused' });
    await expect(h.jobs.get(OWNER, id)).rejects.toBeInstanceOf(CorruptDocumentError);
  });

  it('the spec stays strict: a worker must not run a request with a parameter it does not know', async () => {
    const id = '00000000000000000000specxx';
    const record = newerRecord(id);
    await putRaw({ ...record, spec: { ...(record.spec as object), guidance: 3 } });
    await expect(h.jobs.get(OWNER, id)).rejects.toBeInstanceOf(CorruptDocumentError);
  });
});
