// Run statistics (ADR 0014) are one document per (model, size, start) that every worker rewrites: an
// older worker (a rolling deploy, a rollback) must neither lose what a newer one wrote nor find its
// samples unreadable. The real local blob store.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../shared/adapters/local/blobstore.ts';
import { readRunSamples, recordRunSample, RUN_STATS_KEEP, runSampleJobTag, runStatsKey, type RunKey } from '../../shared/run-stats.ts';

let blobs: LocalBlobStore;
beforeEach(() => {
  blobs = new LocalBlobStore({ rootDir: mkdtempSync(join(tmpdir(), 'clipag-runstats-')), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
});

const k: RunKey = { model: 'tiny', width: 64, height: 64, start: 'gmm' };
const sample = (i: number) => ({ seconds: 10 + i, loopSeconds: 8, steps: 100, n: 1, at: new Date(Date.UTC(2026, 0, 1, 0, i)).toISOString(), job: `job${i}` });
/** A sample as this version stores it: its job as a tag. */
const storedSample = (i: number) => ({ ...sample(i), job: runSampleJobTag(`job${i}`) });
const stored = async () => JSON.parse(Buffer.from((await blobs.get(runStatsKey(k)))!.body).toString());
const put = (doc: unknown) => blobs.put(runStatsKey(k), Buffer.from(JSON.stringify(doc)));

describe('run statistics a newer worker wrote', () => {
  it('samples with a field this version does not know are read, and kept with it when this version adds one', async () => {
    for (let i = 0; i < 40; i++) await recordRunSample(blobs, k, sample(i));
    const doc = await stored();
    doc.samples.push({ ...sample(40), gpu: 'L4', stages: [{ width: 64, height: 64, steps: 100, seconds: 7, compile: 0.5 }] });
    await put(doc);
    const read = await readRunSamples(blobs, k);
    expect(read).toHaveLength(41);
    expect(read[40]).toMatchObject({ job: 'job40', gpu: 'L4' });

    expect(await recordRunSample(blobs, k, sample(41))).toBe('recorded');
    const after = await stored();
    expect(after.samples).toHaveLength(42);
    expect(after.samples[40]).toEqual({ ...sample(40), gpu: 'L4', stages: [{ width: 64, height: 64, steps: 100, seconds: 7, compile: 0.5 }] });
    expect(after.samples[41]).toEqual(storedSample(41));
  });

  it('a top-level field a newer version added is kept by this version\'s write', async () => {
    await put({ v: 2, samples: [sample(0)], fleet: { gpu: 'L4' } });
    await recordRunSample(blobs, k, sample(1));
    expect(await stored()).toEqual({ v: 2, samples: [sample(0), storedSample(1)], fleet: { gpu: 'L4' } });
  });

  it('a document of a higher version is left untouched (the write is skipped, and says so) and gives no figures here', async () => {
    const newer = Buffer.from(JSON.stringify({ v: 3, samples: [{ ...sample(0), seconds_ms: 10_000 }] }));
    await blobs.put(runStatsKey(k), newer);
    const { etag } = (await blobs.get(runStatsKey(k)))!;
    expect(await recordRunSample(blobs, k, sample(1))).toBe('newer_document');
    const after = (await blobs.get(runStatsKey(k)))!;
    expect(after.etag).toBe(etag);
    expect(Buffer.from(after.body).equals(newer)).toBe(true);
    expect(await readRunSamples(blobs, k)).toEqual([]);
  });

  it('one sample that does not read costs only itself; it stays stored (it may be a newer writer\'s) and ages out like the others', async () => {
    await put({ v: 2, samples: [sample(0), { seconds: 'eleven' }, sample(2)] });
    expect((await readRunSamples(blobs, k)).map((s) => s.job)).toEqual(['job0', 'job2']);
    await recordRunSample(blobs, k, sample(3));
    expect((await stored()).samples).toEqual([sample(0), { seconds: 'eleven' }, sample(2), storedSample(3)]);
    for (let i = 4; i < 4 + RUN_STATS_KEEP; i++) await recordRunSample(blobs, k, sample(i));
    expect((await stored()).samples).toHaveLength(RUN_STATS_KEEP);
    expect((await stored()).samples.some((s: { seconds: unknown }) => s.seconds === 'eleven')).toBe(false);
  });

  it('damage is still no statistics, and the next run starts the document afresh; a lower or odd version is damage', async () => {
    for (const doc of ['{"v": 2, "samples": [', JSON.stringify({ v: 1, samples: [sample(0)] }), JSON.stringify({ v: '3', samples: [sample(0)] }), JSON.stringify({ v: 2, samples: {} })]) {
      await blobs.put(runStatsKey(k), Buffer.from(doc));
      expect(await readRunSamples(blobs, k)).toEqual([]);
      expect(await recordRunSample(blobs, k, sample(5))).toBe('recorded');
      expect(await stored()).toEqual({ v: 2, samples: [storedSample(5)] });
    }
  });

  it('a sample recorded already (by job) is not added twice', async () => {
    await recordRunSample(blobs, k, sample(0));
    expect(await recordRunSample(blobs, k, sample(0))).toBe('duplicate');
    expect((await stored()).samples).toHaveLength(1);
  });
});
