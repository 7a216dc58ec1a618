import { z } from 'zod';
import { CorruptDocumentError } from '../shared/errors.ts';
import { firstJobIdUntil, idTime, lastJobIdFrom } from '../shared/ids.ts';
import { NewerJobRecordError } from '../shared/jobstore.ts';
import { PENDING_JOBS_PREFIX, parsePendingJobKey, uploadKey } from '../shared/keys.ts';
import { OWNER_ID_PATTERN, RESOURCE_ID_PATTERN, SORTABLE_ID_PATTERN } from '../shared/names.ts';
import type { BlobStore, JobStore } from '../shared/ports.ts';
import { listKeys } from '../shared/prefix.ts';
import { outputsVerdict, recordVerdict, removeJobOutputs, type OutputsVerdict } from '../shared/retention.ts';
import { outputsExpireMs } from '../shared/views.ts';
import { isTerminal, type JobRecord } from '../shared/schemas/job.ts';
import type { AppLogEntry } from './types.ts';

/**
 * The retention passes. With CLIPAG_RECORD_RETENTION_DAYS (ADR 0037), in both modes (the AWS sweep runs
 * it too): generations deleted as DELETE deletes them, that many days after they ended. The rest is
 * local mode's stand-in for the bucket's lifecycle rules (cdk/lib/stateful-stack.ts): with
 * CLIPAG_OUTPUT_RETENTION_DAYS set it removes the images and frames of every generation whose
 * `outputs_expire_at` has passed, and with CLIPAG_UPLOAD_RETENTION_DAYS the uploads PUT that many days
 * ago. The record stays as it is, as in AWS: past `outputs_expire_at` the view lists no outputs (it
 * keeps `expired_outputs`). Run by `clipag serve`'s background sweep.
 *
 * It never reads every record per pass. Job ids sort newest first by creation (shared/ids.ts), and a
 * job's images cannot expire before its creation plus the retention (its end comes later), so each
 * owner's jobs are read once, as the moment `now - retention` passes their creation: a window of
 * `jobs/<owner>/` between the last pass's boundary and this one's. What a window shows that is not
 * due yet (a job that ended late, or has not ended) is remembered with its end (`pending`), and
 * removed when its end plus the retention passes without a second read. The end is kept, not the
 * expiry, because the retention may change between passes and `outputs_expire_at` follows it. The
 * boundaries and `pending` are kept in one small document per retention (RETENTION_STATE_KEY,
 * RECORD_RETENTION_STATE_KEY), so a restart reads none of the records again.
 */

const DAY_MS = 86_400_000;

/** Where the images' retention keeps its progress (blob key; local mode only: in AWS the bucket's lifecycle rule removes images). */
export const RETENTION_STATE_KEY = 'retention/state.json';
/** The record retention's progress (ADR 0037), kept apart: its windows trail the images' by the difference of the two retentions. */
export const RECORD_RETENTION_STATE_KEY = 'retention/records.json';
/**
 * Records read (or listed) in one pass at most: a data folder of 30 000 jobs is read through in an
 * hour or more (removals have their own bound). Re-reads of remembered jobs that have not ended take
 * at most half while the windows have records to read, so that jobs stuck unended never stop them.
 */
export const RETENTION_READS_PER_PASS = 500;
/** Generations (and uploads) removed in one pass at most: a default job's 11 files take about 25 ms to list and remove. */
export const RETENTION_REMOVALS_PER_PASS = 100;
/**
 * How often the owners are looked for again (a walk of `jobs/` and `uploads/`). Nothing can expire
 * within a day of its creation (the least retention), so an owner new since is found in time.
 */
const OWNERS_EVERY_MS = 60 * 60_000;
/**
 * The least a window spans: each is a listing of the owner's folder, and S3 itself removes expired
 * objects only at the next UTC midnight, so images going up to this much after their expiry is in keeping.
 */
const WINDOW_MIN_MS = 10 * 60_000;
/** Windows that held no job: the state is saved at most this often (a restart then lists them again). */
const SAVE_EVERY_MS = 60 * 60_000;
/** As the stores write them (jobstore.ts keyFor, keys.ts uploadKey); an owner is the next segment. */
const JOBS_PREFIX = 'jobs/';
const UPLOADS_PREFIX = 'uploads/';
/** Sorts after every character a key may hold (keys.ts SEGMENT): `<prefix><owner>/~` is past all of an owner's keys. */
const PAST_OWNER = '~';

export interface RetentionDeps {
  blobs: BlobStore;
  jobs: JobStore;
  clock: () => Date;
  log?: (entry: AppLogEntry) => void;
  /** CLIPAG_OUTPUT_RETENTION_DAYS; unset: no image is removed. */
  outputRetentionDays?: number;
  /** CLIPAG_UPLOAD_RETENTION_DAYS; unset: no upload is removed. */
  uploadRetentionDays?: number;
  /**
   * CLIPAG_RECORD_RETENTION_DAYS (ADR 0037); unset: records are kept until their caller deletes them.
   * With it, `deleteGeneration` deletes a generation that ended that many days ago, as DELETE does.
   */
  recordRetentionDays?: number;
  deleteGeneration?: (owner: string, id: string) => Promise<void>;
  /** Default RETENTION_READS_PER_PASS. */
  readsPerPass?: number;
  /** Default RETENTION_REMOVALS_PER_PASS. */
  removalsPerPass?: number;
}

export interface RetentionReport {
  /** Generations whose images and frames were removed. */
  generations: number;
  /** The files those held (images and frames). */
  files: number;
  uploads: number;
  /** Generations deleted by the record retention. */
  records: number;
  /** Job records read, and those a listing skipped as unreadable (bounded by readsPerPass, per retention). */
  read: number;
  /** Removals or reads that failed (the next pass tries again). */
  errors: number;
  /** The first failure's message. */
  error?: string;
}

export interface RetentionPass {
  /**
   * One bounded pass; it throws only what its own state cannot survive (callers log it and go on).
   * With `deadline` (ms, Date.now()'s clock) no removal starts after it, and what was done is saved.
   */
  run(opts?: { deadline?: number }): Promise<RetentionReport>;
}

const OwnerId = z.string().regex(OWNER_ID_PATTERN);
const Ms = z.number().int().nonnegative();
/** Per owner: every job made before `upTo` was read; `scan`: the window now being read, down from `from`, after `cursor`. */
const StoredOwners = z.record(OwnerId, z.object({ upTo: Ms.nullable(), scan: z.object({ from: Ms, cursor: z.string().regex(RESOURCE_ID_PATTERN) }).optional() }));
const StoredState = z.object({
  v: z.literal(1),
  owners: StoredOwners,
  /** Jobs read but not due: [owner, id, end (ms) or null while it has not ended]. */
  pending: z.array(z.tuple([OwnerId, z.string().regex(RESOURCE_ID_PATTERN), Ms.nullable()])),
});
type OwnerScan = z.output<typeof StoredOwners>[string];
type Pending = { owner: string; id: string; endedAt: number | null };

/**
 * One retention that is due some days after a generation ended, read through each owner's windows of
 * `jobs/` (see the top of this file): the images' (CLIPAG_OUTPUT_RETENTION_DAYS) or the whole
 * generation's (CLIPAG_RECORD_RETENTION_DAYS). Each keeps its own boundaries and pending jobs, in its
 * own state document.
 */
interface WindowedRetention {
  /** For the log. */
  name: string;
  stateKey: string;
  days: number;
  verdict: (job: JobRecord, days: number, nowMs: number) => OutputsVerdict;
  /**
   * Removes what is due of one generation, and counts it in the report; or, having read the record
   * again, returns what it found instead (a `wait`: not due after all, or `done`: nothing to do).
   */
  remove: (owner: string, id: string, report: RetentionReport) => Promise<void | OutputsVerdict>;
}

/** The pass, or undefined when no retention is set (local mode keeps everything, as before). */
export function retentionPass(deps: RetentionDeps): RetentionPass | undefined {
  if (deps.outputRetentionDays === undefined && deps.uploadRetentionDays === undefined && deps.recordRetentionDays === undefined) return undefined;
  if (deps.recordRetentionDays !== undefined && !deps.deleteGeneration) throw new Error('retentionPass: a record retention needs deleteGeneration');
  const readsPerPass = deps.readsPerPass ?? RETENTION_READS_PER_PASS;
  const removalsPerPass = deps.removalsPerPass ?? RETENTION_REMOVALS_PER_PASS;
  let jobOwners: string[] = [];
  let uploadOwners: string[] = [];
  let ownersAt = -Infinity;
  const windowed: Array<(now: number, report: RetentionReport, failed: (error: unknown) => void) => Promise<void>> = [];
  if (deps.outputRetentionDays !== undefined) {
    windowed.push(
      windowedRetention({
        name: 'outputs',
        stateKey: RETENTION_STATE_KEY,
        days: deps.outputRetentionDays,
        verdict: outputsVerdict,
        remove: async (owner, id, report) => {
          const removed = await removeJobOutputs(deps.blobs, owner, id);
          if (removed.length > 0) {
            report.generations++;
            report.files += removed.length;
          }
        },
      }),
    );
  }
  if (deps.recordRetentionDays !== undefined) {
    const deleteGeneration = deps.deleteGeneration!;
    windowed.push(
      windowedRetention({
        name: 'records',
        stateKey: RECORD_RETENTION_STATE_KEY,
        days: deps.recordRetentionDays,
        verdict: recordVerdict,
        remove: async (owner, id, report) => {
          // Read again first: a job whose POST was answered 503 may have been queued again by a retry
          // with its key since it was judged due (and end later), or its caller may have deleted it.
          let fresh: JobRecord | null;
          try {
            fresh = await deps.jobs.get(owner, id);
          } catch (error) {
            // A newer clipag's (a rollback): not this version's to delete; judged again once it reads
            // (remembered as not ended, so each pass reads it again). Damaged: said once, then forgotten
            // (else every pass, and in AWS every sweep, would fail on it).
            if (error instanceof NewerJobRecordError) {
              deps.log?.({ level: 'warn', msg: 'record retention: a record due for deletion was written by a newer clipag; kept, and judged again once this service reads it', job_id: id, owner });
              return { kind: 'wait', endedAt: null };
            }
            if (!(error instanceof CorruptDocumentError)) throw error;
            deps.log?.({ level: 'warn', msg: 'record retention: a record due for deletion does not read; left as it is', job_id: id, owner, error: error.message });
            return { kind: 'done' };
          }
          const verdict = recordVerdict(fresh, deps.recordRetentionDays!, deps.clock().getTime());
          if (verdict.kind !== 'remove') return verdict;
          await deleteGeneration(owner, id);
          report.records++;
        },
      }),
    );
  }

  function windowedRetention(policy: WindowedRetention) {
    let loaded = false;
    const owners = new Map<string, OwnerScan>();
    const pending = new Map<string, Pending>();
    let savedAt = -Infinity;
    const { days } = policy;
    async function load(): Promise<void> {
      const stored = await deps.blobs.get(policy.stateKey);
      if (!stored) return;
      let parsed;
      try {
        parsed = StoredState.safeParse(JSON.parse(new TextDecoder().decode(stored.body)));
      } catch {
        parsed = undefined;
      }
      if (!parsed?.success) {
        // Damaged or hand-edited: every job is read once more, which is all it costs.
        deps.log?.({ level: 'warn', msg: `retention (${policy.name}): ${policy.stateKey} is unreadable; every record is read again, a few hundred per minute` });
        return;
      }
      for (const [owner, scan] of Object.entries(parsed.data.owners)) owners.set(owner, scan);
      for (const [owner, id, endedAt] of parsed.data.pending) pending.set(`${owner}/${id}`, { owner, id, endedAt });
    }

    async function save(): Promise<void> {
      const state: z.input<typeof StoredState> = {
        v: 1,
        owners: Object.fromEntries(owners),
        pending: [...pending.values()].map((p) => [p.owner, p.id, p.endedAt]),
      };
      await deps.blobs.put(policy.stateKey, new TextEncoder().encode(JSON.stringify(state)), { contentType: 'application/json' });
    }

    /**
     * Removes the images whose expiry has passed: the remembered jobs' first (no read needed once a job
     * has ended), then each owner's window of jobs whose creation `now - retention` has passed since the
     * last window, then more of the remembered jobs that have not ended, with what the windows left.
     */
    async function expire(now: number, report: RetentionReport, failed: (error: unknown) => void): Promise<void> {
      let mustSave = false;
      let boundaryMoved = false;
      let removals = 0;
      /** Remembers a job with its end (null: not ended), or forgets it (undefined). */
      const remember = (owner: string, id: string, endedAt: number | null | undefined) => {
        const key = `${owner}/${id}`;
        const before = pending.get(key);
        if (endedAt === undefined) {
          if (before) {
            pending.delete(key);
            mustSave = true;
          }
        } else if (before?.endedAt !== endedAt) {
          pending.set(key, { owner, id, endedAt });
          mustSave = true;
        }
      };
      /** This pass's share of removals is used up, or its time (a Lambda's end): the next pass goes on. */
      const spent = () => removals >= removalsPerPass || (deadline !== undefined && Date.now() >= deadline);
      const act = async (owner: string, id: string, verdict: OutputsVerdict): Promise<void> => {
        if (verdict.kind !== 'remove') return remember(owner, id, verdict.kind === 'wait' ? verdict.endedAt : undefined);
        // Due beyond this pass's share of removals, or its removal failed: the next pass removes it, unread.
        if (spent()) return remember(owner, id, verdict.endedAt);
        removals++;
        try {
          const instead = await policy.remove(owner, id, report);
          // The remover read the record again and found it not due after all (a job re-queued since): remembered as it now stands.
          remember(owner, id, instead && instead.kind === 'wait' ? instead.endedAt : undefined);
        } catch (error) {
          failed(error);
          // To the back: a removal that keeps failing (a file it may not delete) must not take the first
          // of every pass's removals.
          pending.delete(`${owner}/${id}`);
          remember(owner, id, verdict.endedAt);
        }
      };
      /** Remembered jobs read again in this pass. */
      const reread = new Set<string>();
      /**
       * Reads remembered jobs that have not ended, up to `budget` reads in all, oldest read first: each
       * one read goes to the back of `pending`, so the next pass reads the ones this one did not reach.
       */
      const rereadUnended = async (budget: number): Promise<void> => {
        for (const p of [...pending.values()]) {
          if (report.read >= budget || spent()) return;
          const key = `${p.owner}/${p.id}`;
          if (p.endedAt !== null || reread.has(key) || pending.get(key) !== p) continue;
          reread.add(key);
          report.read++;
          pending.delete(key);
          pending.set(key, p);
          let job: JobRecord | null;
          try {
            job = await deps.jobs.get(p.owner, p.id);
          } catch (error) {
            // A newer clipag's record (a rollback): kept, to be judged once it reads. A damaged one: nothing
            // any version can judge, forgotten.
            if (error instanceof NewerJobRecordError) remember(p.owner, p.id, null);
            else if (error instanceof CorruptDocumentError) remember(p.owner, p.id, undefined);
            else failed(error);
            continue;
          }
          await act(p.owner, p.id, job === null ? { kind: 'done' } : policy.verdict(job, days, now));
        }
      };

      for (const p of [...pending.values()]) {
        if (spent()) break;
        if (p.endedAt !== null && outputsExpireMs(p.endedAt, days) <= now) await act(p.owner, p.id, { kind: 'remove', endedAt: p.endedAt });
      }
      await rereadUnended(Math.ceil(readsPerPass / 2));

      const target = now - days * DAY_MS;
      for (const owner of jobOwners) {
        let scan = owners.get(owner) ?? { upTo: null };
        if (!scan.scan) {
          if (scan.upTo !== null && target - scan.upTo < WINDOW_MIN_MS) continue;
          scan = { ...scan, scan: { from: target, cursor: lastJobIdFrom(target) } };
          owners.set(owner, scan);
        }
        const window = scan.scan!;
        while (report.read < readsPerPass && !spent()) {
          const limit = Math.min(100, readsPerPass - report.read);
          let page;
          try {
            page = await deps.jobs.listByOwner(owner, {
              limit,
              cursor: window.cursor,
              ...(scan.upTo !== null ? { endBefore: firstJobIdUntil(scan.upTo - 1) } : {}),
            });
          } catch (error) {
            failed(error);
            break;
          }
          // listByOwner skips (and logs) the records this version cannot read; they count all the same (a
          // window of them, after a rollback, was listed page after page in one pass). A page with a cursor
          // listed all `limit` keys it asked for; the last page of a window is counted by what it returned.
          report.read += page.cursor !== undefined ? limit : page.jobs.length;
          if (page.jobs.length > 0) mustSave = true; // what was read is not read again after a restart
          for (const job of page.jobs) await act(owner, job.id, policy.verdict(job, days, now));
          // What a newer clipag wrote (a rollback) is not passed by: kept as not ended, so that each pass
          // reads it again until a version that reads it judges it (the window's boundary moves past it).
          for (const id of page.newer ?? []) remember(owner, id, null);
          boundaryMoved = true;
          if (page.cursor === undefined) {
            // The window is read: every job made before its top has been seen. An owner's first one is
            // saved at once (it may have taken many passes).
            if (scan.upTo === null) mustSave = true;
            scan = { upTo: window.from };
            owners.set(owner, scan);
            break;
          }
          window.cursor = page.cursor;
        }
      }
      await rereadUnended(readsPerPass);

      if (mustSave || (boundaryMoved && now - savedAt >= SAVE_EVERY_MS)) {
        try {
          await save();
          savedAt = now;
        } catch (error) {
          failed(error);
        }
      }
    }

    return async (now: number, report: RetentionReport, failed: (error: unknown) => void): Promise<void> => {
      if (!loaded) {
        await load();
        loaded = true;
      }
      await expire(now, report, failed);
    };
  }

  /** The current pass's deadline (RetentionPass.run). */
  let deadline: number | undefined;
  return {
    async run(opts = {}) {
      deadline = opts.deadline;
      const report: RetentionReport = { generations: 0, files: 0, uploads: 0, records: 0, read: 0, errors: 0 };
      const failed = (error: unknown) => {
        report.errors++;
        report.error ??= error instanceof Error ? error.message : String(error);
      };
      const now = deps.clock().getTime();
      if (now - ownersAt >= OWNERS_EVERY_MS) {
        try {
          [jobOwners, uploadOwners] = await Promise.all([
            windowed.length === 0 ? [] : ownersUnder(deps.blobs, JOBS_PREFIX),
            deps.uploadRetentionDays === undefined ? [] : ownersUnder(deps.blobs, UPLOADS_PREFIX),
          ]);
          ownersAt = now;
        } catch (error) {
          // The owners found before are gone through; the next pass looks again.
          failed(error);
        }
      }
      // Each retention reads up to readsPerPass records of its own: the records' windows trail the
      // images' by the difference of the two retentions.
      for (const expire of windowed) {
        const before = report.read;
        report.read = 0;
        await expire(now, report, failed);
        report.read += before;
      }

      if (deps.uploadRetentionDays !== undefined) {
        const cutoff = now - deps.uploadRetentionDays * DAY_MS;
        /** Read once per pass, and only when an upload is due. */
        let inUse: Promise<Set<string> | null> | undefined;
        for (const owner of uploadOwners) {
          if (report.uploads >= removalsPerPass) break;
          try {
            await expireUploads(deps, owner, cutoff, removalsPerPass, report, () => (inUse ??= uploadsInUse(deps)));
          } catch (error) {
            failed(error);
          }
        }
      }
      return report;
    },
  };
}

/**
 * The owners with keys under `prefix` (`jobs/`, `uploads/`): one listing of one key per owner, each
 * starting past the last owner's keys. Segments that are no owner id (`jobs/.idempotency/`) are skipped.
 */
async function ownersUnder(blobs: BlobStore, prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await listKeys(blobs, prefix, { limit: 1, ...(cursor !== undefined ? { cursor } : {}) });
    const key = page.keys[0];
    if (key === undefined) return found;
    const segment = key.slice(prefix.length).split('/')[0]!;
    if (OWNER_ID_PATTERN.test(segment) && key.length > prefix.length + segment.length) found.push(segment);
    if (page.cursor === undefined) return found;
    cursor = `${prefix}${segment}/${PAST_OWNER}`;
  }
}

/**
 * Removes `owner`'s uploads PUT over the retention ago (S3's rule counts from the object's creation),
 * oldest first, up to the pass's share. Upload ids sort oldest first by when their URL was made, and the
 * PUT comes after: the first upload made after `cutoff` ends the walk. One a queued or running job names
 * is kept until that job has ended: a local queue keeps jobs for ever (the AWS queue drops them before
 * their upload expires), and a server stopped for a week would otherwise fail its queued jobs at restart.
 */
async function expireUploads(
  deps: RetentionDeps,
  owner: string,
  cutoff: number,
  removalsPerPass: number,
  report: RetentionReport,
  inUse: () => Promise<Set<string> | null>,
): Promise<void> {
  const prefix = `${UPLOADS_PREFIX}${owner}/`;
  let cursor: string | undefined;
  while (report.uploads < removalsPerPass) {
    // One at a time: a listing reads (hashes) each object it returns, and uploads are up to CLIPAG_MAX_UPLOAD_BYTES.
    const page = await deps.blobs.list(prefix, { limit: 1, ...(cursor !== undefined ? { cursor } : {}) });
    const item = page.items[0];
    if (!item) return;
    const id = item.key.slice(prefix.length);
    if (SORTABLE_ID_PATTERN.test(id) && idTime(id) > cutoff) return;
    if (item.lastModified.getTime() <= cutoff) {
      const kept = await inUse();
      // A job whose record this version cannot read may name any of them: none goes this time.
      if (kept === null) return;
      if (!kept.has(item.key)) {
        await deps.blobs.delete(item.key);
        report.uploads++;
      }
    }
    if (page.cursor === undefined) return;
    cursor = item.key;
  }
}

/** The uploads that queued or running jobs name (their `pending/active/` markers list them); null when one cannot be read. */
async function uploadsInUse(deps: RetentionDeps): Promise<Set<string> | null> {
  const named = new Set<string>();
  let cursor: string | undefined;
  do {
    const page = await listKeys(deps.blobs, `${PENDING_JOBS_PREFIX}active/`, cursor !== undefined ? { cursor } : {});
    for (const marker of page.keys) {
      const job = parsePendingJobKey(marker);
      if (!job || job.kind !== 'active') continue;
      let record: JobRecord | null | undefined;
      try {
        record = await deps.jobs.get(job.owner, job.jobId);
      } catch (error) {
        // A damaged record never runs; a newer clipag's is judged by what this version reads of it.
        if (error instanceof NewerJobRecordError) record = error.record;
        else if (error instanceof CorruptDocumentError) continue;
        else throw error;
        if (record === undefined) return null;
      }
      if (!record || isTerminal(record.status) || !record.spec.init.startsWith('upload:')) continue;
      try {
        named.add(uploadKey(record.owner, record.spec.init.slice('upload:'.length)));
      } catch {
        // Not an upload id this version accepts: it names no stored upload.
      }
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  return named;
}
