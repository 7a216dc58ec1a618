// The usage ledger's once-per-job check (ADR 0019) against adds that repeat long after the first: a
// month keeps every job it counted, not only its last RECENT_JOBS_KEPT, and a rebuilt month too. The
// worker's side (a message back after its stamp failed) is in test/worker/faults.test.ts; the store is
// the real local blob store.
import { describe, expect, it } from 'vitest';
import { usageKey } from '../../shared/keys.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { RECENT_JOBS_KEPT, readUsage, rebuildUsage, recordUsage, usageOfRecord } from '../../shared/usage.ts';
import { OWNER, makeEnv } from '../worker/helpers.ts';

const MONTH = '2026-03';
const one = { images: 1, workerSeconds: 2, encoderPasses: 10 };

/** A job of OWNER that succeeded at `finishedAt` with one run's usage (what the ledger counts). */
function succeeded(finishedAt: string): JobRecord {
  const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny' });
  const job = newJobRecord({ id: newJobId(), owner: OWNER, spec, now: new Date(finishedAt) });
  return { ...job, status: 'succeeded', attempts: 1, started_at: finishedAt, finished_at: finishedAt, usage: { worker_seconds: 2, encoder_passes: 10 } };
}

const stored = async (blobs: Awaited<ReturnType<typeof makeEnv>>['blobs']) => JSON.parse(new TextDecoder().decode((await blobs.get(usageKey(OWNER, MONTH)))!.body));

describe('the usage ledger, once per job for the whole month', () => {
  it('a rebuilt month with more than RECENT_JOBS_KEPT jobs still counts a late add of its oldest job once', async () => {
    const { blobs } = await makeEnv();
    const records = Array.from({ length: RECENT_JOBS_KEPT + 20 }, (_, i) => succeeded(new Date(Date.UTC(2026, 2, 3, 0, 0, i)).toISOString()));
    const days = await rebuildUsage(blobs, OWNER, MONTH, async () => ({ records, unreadable: [] }));
    expect(days).toEqual([expect.objectContaining({ date: '2026-03-03', generations: RECENT_JOBS_KEPT + 20 })]);
    // The oldest job's worker, its message back late (its stamp never landed), adds it again.
    const oldest = records[0]!;
    await recordUsage(blobs, OWNER, oldest.id, new Date(oldest.finished_at!), one);
    expect(await readUsage(blobs, OWNER, MONTH)).toEqual(days);
    // Versions before counted_jobs still read it: their list stays within their limit.
    const doc = await stored(blobs);
    expect(doc.recent_jobs).toHaveLength(RECENT_JOBS_KEPT);
    expect(doc.counted_jobs).toHaveLength(RECENT_JOBS_KEPT + 20);
  });

  it('a month written before counted_jobs: a job in its recent_jobs counts once; the next add keeps those ids, and ids a version before adds beside it still count once', async () => {
    const { blobs } = await makeEnv();
    const before = { v: 1, days: { '2026-03-04': { generations: 2, images: 2, worker_seconds: 4, encoder_passes: 20 } }, recent_jobs: ['j0', 'j1'] };
    await blobs.put(usageKey(OWNER, MONTH), Buffer.from(JSON.stringify(before)), { contentType: 'application/json' });
    await recordUsage(blobs, OWNER, 'j1', new Date('2026-03-04T10:00:00Z'), one);
    expect(await readUsage(blobs, OWNER, MONTH)).toEqual([expect.objectContaining({ generations: 2 })]);
    await recordUsage(blobs, OWNER, 'j2', new Date('2026-03-04T10:00:00Z'), one);
    expect(await stored(blobs)).toMatchObject({ recent_jobs: ['j0', 'j1', 'j2'], counted_jobs: ['j0', 'j1', 'j2'] });
    // A version before this one adds j3 (to recent_jobs only; it keeps counted_jobs as it was).
    const doc = await stored(blobs);
    doc.recent_jobs.push('j3');
    doc.days['2026-03-04'].generations++;
    await blobs.put(usageKey(OWNER, MONTH), Buffer.from(JSON.stringify(doc)), { contentType: 'application/json' });
    await recordUsage(blobs, OWNER, 'j3', new Date('2026-03-04T10:00:00Z'), one);
    await recordUsage(blobs, OWNER, 'j4', new Date('2026-03-04T10:00:00Z'), one);
    expect(await readUsage(blobs, OWNER, MONTH)).toEqual([expect.objectContaining({ generations: 5 })]);
    expect(await stored(blobs)).toMatchObject({ counted_jobs: ['j0', 'j1', 'j2', 'j3', 'j4'] });
  });
});

describe('which ended jobs the ledger counts (usageOfRecord)', () => {
  it('a success, and a content_policy failure whose every image was withheld (the compute was spent); not a content_policy failure that withheld nothing, nor any other failure', () => {
    const ok = succeeded('2026-03-03T10:00:00Z');
    expect(usageOfRecord(ok)).toMatchObject({ day: '2026-03-03', images: 0, workerSeconds: 2 });
    const check = { index: 0, withheld: true, flags: [] };
    const allWithheld = { ...ok, status: 'failed' as const, error: { code: 'content_policy', message: 'every image withheld' }, output_checks: [check] };
    expect(usageOfRecord(allWithheld)).toMatchObject({ images: 1, workerSeconds: 2 });
    // Refused before any image was made (a worker-side prompt refusal): nothing withheld, nothing to count.
    expect(usageOfRecord({ ...allWithheld, output_checks: [] })).toBeNull();
    expect(usageOfRecord({ ...allWithheld, output_checks: [{ ...check, withheld: false }] })).toBeNull();
    expect(usageOfRecord({ ...ok, status: 'failed', error: { code: 'timeout', message: 'ran past its limit' } })).toBeNull();
    expect(usageOfRecord({ ...ok, finished_at: null })).toBeNull();
  });
});
