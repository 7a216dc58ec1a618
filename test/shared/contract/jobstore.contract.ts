import { describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, PreconditionFailedError, ValidationError } from '../../../shared/errors.ts';
import { newJobId } from '../../../shared/ids.ts';
import { BlobJobStore, RefusedJobRecordError } from '../../../shared/jobstore.ts';
import type { BlobStore } from '../../../shared/ports.ts';
import { GenerationSpec, isTerminal, newJobRecord, type JobRecord } from '../../../shared/schemas/index.ts';

export interface JobStoreContractOptions {
  enforcesConditionalWrites: boolean;
  /** See BlobStoreContractOptions.truncatedListing (s3rver cannot page). */
  truncatedListing: boolean;
}

function makeJob(owner: string, nowMs = Date.now()): JobRecord {
  return newJobRecord({ id: newJobId(nowMs), owner, spec: GenerationSpec.parse({ prompt: 'a red fox', steps: 50, model: 'toy' }) });
}

export function jobStoreContract(
  name: string,
  makeBlobStore: () => Promise<BlobStore>,
  options: JobStoreContractOptions,
): void {
  describe(`JobStore contract: ${name}`, () => {
    it('create then get returns the same record, stored at jobs/<owner>/<id>.json', async () => {
      const blobs = await makeBlobStore();
      const jobs = new BlobJobStore(blobs);
      const job = makeJob('acme');
      await jobs.create(job);
      expect(await jobs.get('acme', job.id)).toEqual(job);
      expect(await blobs.head(`jobs/acme/${job.id}.json`)).not.toBeNull();
    });

    it('get of an unknown id is null; update of one is NotFound', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      expect(await jobs.get('acme', newJobId())).toBeNull();
      await expect(jobs.update('acme', newJobId(), (j) => j)).rejects.toBeInstanceOf(NotFoundError);
    });

    it('create refuses an invalid record', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      // The writer's bug, not the caller's input: a 500-class error, never a 400 ValidationError.
      await expect(jobs.create({ ...makeJob('acme'), status: 'exploded' } as never)).rejects.toBeInstanceOf(RefusedJobRecordError);
      await expect(jobs.create({ ...makeJob('acme'), version: 3 })).rejects.toBeInstanceOf(RefusedJobRecordError);
      await expect(jobs.create({ ...makeJob('acme'), status: 'exploded' } as never)).rejects.toMatchObject({ status: 500, code: 'internal_error', retryable: false });
    });

    it.runIf(options.enforcesConditionalWrites)('create is conditional: a second create of the same id fails', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = makeJob('acme');
      await jobs.create(job);
      await expect(jobs.create({ ...job, cancel_requested: true })).rejects.toBeInstanceOf(PreconditionFailedError);
      expect((await jobs.get('acme', job.id))!.cancel_requested).toBe(false);
    });

    it('update applies the mutation and bumps the version by one', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('acme'));
      const started = await jobs.update('acme', job.id, (j) => ({ ...j, status: 'running', attempts: j.attempts + 1 }));
      expect(started).toMatchObject({ status: 'running', attempts: 1, version: 2 });
      const progressed = await jobs.update('acme', job.id, (j) => ({ ...j, progress: { step: 10, total: 50 } }));
      expect(progressed.version).toBe(3);
      expect(await jobs.get('acme', job.id)).toEqual(progressed);
    });

    it('update with a stale expected version is rejected and changes nothing', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('acme'));
      await jobs.update('acme', job.id, (j) => ({ ...j, status: 'running' }));
      await expect(
        jobs.update('acme', job.id, (j) => ({ ...j, cancel_requested: true }), { expectedVersion: 1 }),
      ).rejects.toBeInstanceOf(PreconditionFailedError);
      expect(await jobs.get('acme', job.id)).toMatchObject({ version: 2, cancel_requested: false });
    });

    it('a mutation returning null writes nothing; one that throws aborts the update', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('acme'));
      expect((await jobs.update('acme', job.id, () => null)).version).toBe(1);
      await jobs.update('acme', job.id, (j) => ({ ...j, status: 'succeeded' }));
      await expect(
        jobs.update('acme', job.id, (j) => {
          if (isTerminal(j.status)) throw new ConflictError('job already finished');
          return { ...j, cancel_requested: true };
        }),
      ).rejects.toBeInstanceOf(ConflictError);
      expect(await jobs.get('acme', job.id)).toMatchObject({ version: 2, cancel_requested: false });
    });

    it('an update cannot move a job to another owner or id, nor write an invalid record', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('acme'));
      await expect(jobs.update('acme', job.id, (j) => ({ ...j, owner: 'mallory' }))).rejects.toBeInstanceOf(RefusedJobRecordError);
      await expect(jobs.update('acme', job.id, (j) => ({ ...j, progress: { step: 99, total: 50 } }))).rejects.toBeInstanceOf(
        RefusedJobRecordError,
      );
    });

    it.runIf(options.enforcesConditionalWrites)(
      'concurrent updates (a cancel racing progress writes) never overwrite each other',
      async () => {
        const jobs = new BlobJobStore(await makeBlobStore());
        const job = await jobs.create(makeJob('acme'));
        const writers = [
          ...Array.from({ length: 8 }, () =>
            jobs.update('acme', job.id, (j) => ({ ...j, usage: { ...j.usage, encoder_passes: j.usage.encoder_passes + 1 } }), {
              retries: 50,
            }),
          ),
          jobs.update('acme', job.id, (j) => ({ ...j, cancel_requested: true }), { retries: 50 }),
        ];
        await Promise.all(writers);
        const final = await jobs.get('acme', job.id);
        expect(final).toMatchObject({ version: 10, cancel_requested: true, usage: { encoder_passes: 8 } });
      },
    );

    it.runIf(options.enforcesConditionalWrites)('with retries: 0 a lost race surfaces as PreconditionFailed', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('acme'));
      const results = await Promise.allSettled(
        Array.from({ length: 6 }, () => jobs.update('acme', job.id, (j) => ({ ...j, attempts: j.attempts + 1 }), { retries: 0 })),
      );
      const failed = results.filter((r) => r.status === 'rejected');
      expect(failed.length).toBeGreaterThan(0);
      for (const r of failed) expect((r as PromiseRejectedResult).reason).toBeInstanceOf(PreconditionFailedError);
      const won = results.length - failed.length;
      expect((await jobs.get('acme', job.id))!.attempts).toBe(won);
    });

    it('owners are isolated: another owner cannot read, update or list a job', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const job = await jobs.create(makeJob('alice'));
      expect(await jobs.get('bob', job.id)).toBeNull();
      await expect(jobs.update('bob', job.id, (j) => ({ ...j, cancel_requested: true }))).rejects.toBeInstanceOf(NotFoundError);
      expect((await jobs.listByOwner('bob')).jobs).toEqual([]);
      expect((await jobs.get('alice', job.id))!.cancel_requested).toBe(false);
    });

    it('owner and job ids that could address another prefix are refused', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      for (const owner of ['../alice', 'alice/x', 'a.b', '', 'x'.repeat(65)]) {
        await expect(jobs.get(owner, newJobId()), owner).rejects.toBeInstanceOf(ValidationError);
        await expect(jobs.listByOwner(owner), owner).rejects.toBeInstanceOf(ValidationError);
      }
      for (const id of ['../bob/x', 'a/b', 'x.json', '']) {
        await expect(jobs.get('alice', id), id).rejects.toBeInstanceOf(ValidationError);
      }
      await expect(jobs.listByOwner('alice', { cursor: '../x' })).rejects.toBeInstanceOf(ValidationError);
    });

    it('listByOwner returns the owner’s jobs newest first and resumes after a cursor', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const base = Date.now();
      const created: JobRecord[] = [];
      for (let i = 0; i < 4; i++) created.push(await jobs.create(makeJob('erin', base + i * 1000)));
      const newestFirst = [...created].reverse().map((j) => j.id);
      const all = await jobs.listByOwner('erin', { limit: 100 });
      expect(all.jobs.map((j) => j.id)).toEqual(newestFirst);
      expect(all.cursor).toBeUndefined();
      const rest = await jobs.listByOwner('erin', { cursor: newestFirst[1] });
      expect(rest.jobs.map((j) => j.id)).toEqual(newestFirst.slice(2));
    });

    it.runIf(options.truncatedListing)('listByOwner pages newest first with limit and cursor', async () => {
      const jobs = new BlobJobStore(await makeBlobStore());
      const base = Date.now();
      const created: JobRecord[] = [];
      for (let i = 0; i < 5; i++) created.push(await jobs.create(makeJob('carol', base + i * 1000)));
      await jobs.create(makeJob('dave', base + 10_000));
      const newestFirst = [...created].reverse().map((j) => j.id);

      const seen: string[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 5; page++) {
        const result = await jobs.listByOwner('carol', { limit: 2, ...(cursor ? { cursor } : {}) });
        seen.push(...result.jobs.map((j) => j.id));
        for (const j of result.jobs) expect(j.owner).toBe('carol');
        cursor = result.cursor;
        if (!cursor) break;
      }
      expect(seen).toEqual(newestFirst);
    });
  });
}
