import { forEachLimited } from './concurrency.ts';
import { parsedJson, readDoc } from './documents.ts';
import { CorruptDocumentError, NonRetryableError, NotFoundError, PreconditionFailedError, ValidationError } from './errors.ts';
import type { BlobStore, JobMutation, JobPage, JobStore, UpdateOptions } from './ports.ts';
import { listKeys } from './prefix.ts';
import { OWNER_ID_PATTERN, RESOURCE_ID_PATTERN } from './schemas/common.ts';
import { JobRecord, waitingSince } from './schemas/job.ts';
import { newerWriterOf } from './schemas/queue.ts';

/**
 * JobStore on any BlobStore: one JSON document per job at `jobs/<owner>/<jobId>.json`.
 *
 * Every key is built from a validated owner and job id (closed charset, no `/` or `.`), so a
 * caller holding only its own owner id cannot name another owner's document. Creates are
 * conditional (putIfAbsent); updates are read–mutate–replaceIfMatch(etag) with a version bump,
 * re-reading on a lost race, so a cancel and a progress write can never overwrite each other.
 * Job ids from `newJobId` sort newest-first, so listing a prefix is already newest-first.
 */
/** How many job documents a listing reads at once. */
const LIST_READS_AT_ONCE = 16;

export interface JobStoreLogger {
  warn(msg: string, fields?: Record<string, unknown>): void;
}

export class BlobJobStore implements JobStore {
  /** `log` hears about the job documents that `listByOwner` skips: corrupt ones, and newer clipags' records. */
  constructor(
    private readonly blobs: BlobStore,
    private readonly options: { log?: JobStoreLogger } = {},
  ) {}

  static keyFor(owner: string, id: string): string {
    assertOwner(owner);
    assertJobId(id);
    return `jobs/${owner}/${id}.json`;
  }

  async create(job: JobRecord): Promise<JobRecord> {
    const record = parseRecord(job);
    if (record.version !== 1) throw new RefusedJobRecordError(`a new job record must have version 1, not ${record.version}`);
    const key = BlobJobStore.keyFor(record.owner, record.id);
    const body = encode(record);
    try {
      await this.blobs.putIfAbsent(key, body, { contentType: 'application/json' });
    } catch (error) {
      // S3 resends a PUT whose reply was lost, and the resend fails its If-None-Match when the first
      // one landed. A fresh record (a new id, its own timestamps) read back byte for byte is this one.
      const found = error instanceof PreconditionFailedError ? await this.blobs.get(key) : null;
      if (!found || !Buffer.from(found.body).equals(Buffer.from(body))) throw error;
    }
    return record;
  }

  async get(owner: string, id: string): Promise<JobRecord | null> {
    const found = await this.read(owner, id);
    return found?.record ?? null;
  }

  private async read(owner: string, id: string): Promise<{ record: JobRecord; etag: string } | null> {
    const key = BlobJobStore.keyFor(owner, id);
    const object = await this.blobs.get(key);
    if (!object) return null;
    const record = readJobRecord(object.body, key, owner, id);
    return record ? { record, etag: object.etag } : null;
  }

  async update(owner: string, id: string, mutate: JobMutation, options: UpdateOptions = {}): Promise<JobRecord> {
    const retries = options.retries ?? 5;
    const key = BlobJobStore.keyFor(owner, id);
    for (let attempt = 0; ; attempt++) {
      const current = await this.read(owner, id);
      if (!current) throw new NotFoundError(`job ${id} not found`);
      if (options.expectedVersion !== undefined && current.record.version !== options.expectedVersion) {
        throw new PreconditionFailedError(`job ${id} is at version ${current.record.version}, not ${options.expectedVersion}`);
      }
      const proposed = mutate(structuredClone(current.record));
      if (proposed === null) return current.record;
      if (proposed.id !== id || proposed.owner !== owner) throw new RefusedJobRecordError('a job update cannot change id or owner');
      const next = parseRecord({ ...proposed, version: current.record.version + 1 });
      try {
        await this.blobs.replaceIfMatch(key, encode(next), current.etag, { contentType: 'application/json' });
        return next;
      } catch (error) {
        if (!(error instanceof PreconditionFailedError) || attempt >= retries || options.expectedVersion !== undefined) throw error;
        // Lost the race: someone else wrote in between. Re-read and re-apply.
        await new Promise((r) => setTimeout(r, Math.random() * 5 * (attempt + 1)));
      }
    }
  }

  async listByOwner(owner: string, options: { limit?: number; cursor?: string; endBefore?: string } = {}): Promise<JobPage> {
    assertOwner(owner);
    const limit = options.limit ?? 20;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new ValidationError('limit must be 1..100', 'limit');
    if (options.cursor !== undefined) assertJobId(options.cursor, 'cursor');
    if (options.endBefore !== undefined) assertJobId(options.endBefore, 'endBefore');
    const prefix = `jobs/${owner}/`;
    const listOptions = { limit, ...(options.cursor !== undefined ? { cursor: BlobJobStore.keyFor(owner, options.cursor) } : {}) };
    // Keys only: each document is read (get) below, and a store's list may read each one too (the local
    // store hashes every object it lists for its etag), which made a page cost two reads per job.
    const listed = await listKeys(this.blobs, prefix, listOptions);
    // Keys list in order: the end cuts the page before any of its documents is read.
    const end = options.endBefore === undefined ? undefined : BlobJobStore.keyFor(owner, options.endBefore);
    const kept = end === undefined ? listed.keys : listed.keys.filter((key) => key < end);
    const page = kept.length < listed.keys.length ? { keys: kept } : listed;
    // The page's records are read a few at once (one after another, a 100-job page waited on 100
    // round trips), each into its slot: the page keeps its key order, newest first.
    const ids = page.keys.map((key) => key.slice(prefix.length, -'.json'.length)).filter((id) => RESOURCE_ID_PATTERN.test(id)); // others are not job documents
    const read: Array<JobRecord | CorruptDocumentError | null> = new Array(ids.length).fill(null);
    try {
      await forEachLimited(
        ids.map((id, index) => ({ id, index })),
        LIST_READS_AT_ONCE,
        async ({ id, index }) => {
          try {
            read[index] = await this.get(owner, id);
          } catch (error) {
            // One unreadable document must not hide the owner's other jobs: skip it, tell the operator.
            // A newer clipag's record is skipped too: a page's items are the documented view, which
            // this version cannot make of a record it only partly reads (its GET answers 503); it is
            // listed again once a version that reads it serves the list.
            if (!(error instanceof CorruptDocumentError)) throw error;
            read[index] = error;
          }
        },
      );
    } finally {
      for (const entry of read) {
        if (entry instanceof NewerJobRecordError) this.options.log?.warn('skipping a job record written by a newer clipag in a listing', { key: entry.key, unknown: entry.unknown.slice(0, 10) });
        else if (entry instanceof CorruptDocumentError) this.options.log?.warn('skipping a corrupt job document in a listing', { key: entry.key, detail: entry.detail });
      }
    }
    const jobs = read.filter((entry): entry is JobRecord => entry !== null && !(entry instanceof CorruptDocumentError));
    const newer = ids.filter((_, index) => read[index] instanceof NewerJobRecordError);
    // The cursor given out is the last job id, so it stays meaningful to the caller and cannot name a key.
    const last = page.keys[page.keys.length - 1];
    return { jobs, ...(page.cursor && last ? { cursor: last.slice(prefix.length, -'.json'.length) } : {}), ...(newer.length > 0 ? { newer } : {}) };
  }
}

// ------------------------------------------------------------------ newer writers (ADR 0030)

/**
 * What this version makes out of a job record a newer clipag wrote, read as stored (each field only
 * when it has the type this version knows): enough to decide with (has the job ended, since when has it
 * waited, is its lease live), never to run it or to show it.
 */
export interface NewerJobSeen {
  /** A status this version may not know (an unknown status is a newer writer's too). */
  status: string;
  created_at?: string;
  enqueued_at?: string;
  queued_at?: string;
  lease_expires_at?: string;
  cancel_requested?: boolean;
}

/**
 * A job record this version refuses only because a newer clipag wrote it (newerWriterOf: keys or enum
 * values it does not know, everything it does know there and valid; the record names the job it is
 * stored as). A CorruptDocumentError, so a reader that only tells good from bad refuses it as before;
 * a reader that can leave it for a version that reads it catches this first (ADR 0030): the API answers
 * 503 (a newer API reads it), the worker puts its message back for a newer worker, the queued-job sweep
 * keeps its markers and expires it by its stored times, a listing skips it with its own log line.
 */
export class NewerJobRecordError extends CorruptDocumentError {
  /** What this version does not know, by path: `spec.guidance`, `status: "paused"`. */
  readonly unknown: readonly string[];
  readonly seen: NewerJobSeen;
  /**
   * The record without the keys this version does not know; undefined when a value it does not know
   * remains. For deciding (is it held, by which attempt), never for running, showing or writing: what
   * this version does not know may change what the rest means.
   */
  readonly record: JobRecord | undefined;
  /** Since when (ms since the epoch) the job has waited to start, as `waitingSince` counts it; undefined when the record does not say. */
  readonly waitingSince: number | undefined;
  constructor(key: string, unknown: readonly string[], seen: NewerJobSeen, record: JobRecord | undefined) {
    super(key, `written by a newer clipag (this version does not know ${unknown.slice(0, 10).join(', ')})`);
    // The public message: the API answers it 503 (retry), never "contact the operator".
    this.message = 'the stored record for this resource was written by a newer version of the service; retry later';
    this.unknown = unknown;
    this.seen = seen;
    this.record = record;
    this.waitingSince = record ? waitingSince(record) : rawWaitingSince(seen);
  }
}

/**
 * A stored job record as this version reads it, the one way every reader does: the record; a
 * NewerJobRecordError for one a newer clipag wrote; a CorruptDocumentError for damage (unreadable,
 * off-schema, or naming another job than the one it is stored as); null for the owner's job whose id
 * differs from `id` only in case (see namesCaseVariant): `id` names no job.
 */
export function readJobRecord(body: Uint8Array, key: string, owner: string, id: string): JobRecord | null {
  let record: JobRecord;
  try {
    record = readDoc(JobRecord, body, key);
  } catch (error) {
    if (!(error instanceof CorruptDocumentError)) throw error;
    const newer = newerRecordError(body, key, owner, id);
    if (newer) throw newer;
    if (namesCaseVariant(parsedJson(body), owner, id)) return null;
    throw error;
  }
  if (namesCaseVariant(record, owner, id)) return null;
  if (record.owner !== owner || record.id !== id) {
    // A document under someone's prefix must describe that owner's job; anything else is corruption.
    throw new CorruptDocumentError(key, `names ${record.owner}/${record.id}`);
  }
  return record;
}

/**
 * The document is the owner's job whose id differs from the requested `id` only in case. Job ids are
 * minted lower case, but the routes take upper case too; on a case-insensitive file system (macOS and
 * Windows by default, a bind mount from a Mac) the key of an upper-cased id opens the real job's file,
 * where on Linux and S3 it holds nothing. So the variant names no job (404 everywhere), neither damage
 * (409 corrupt_record: "contact the operator") nor the job itself. Another owner, or another id, stays corruption.
 */
function namesCaseVariant(doc: unknown, owner: string, id: string): boolean {
  if (!isPlainRecord(doc) || doc.owner !== owner || typeof doc.id !== 'string') return false;
  return doc.id !== id && doc.id.toLowerCase() === id.toLowerCase();
}

/** The NewerJobRecordError for a record readDoc refused, or undefined when it is damage. */
function newerRecordError(body: Uint8Array, key: string, owner: string, id: string): NewerJobRecordError | undefined {
  const raw = parsedJson(body);
  if (raw === undefined) return undefined;
  const newer = newerWriterOf(JobRecord, raw);
  if (!newer || !isPlainRecord(raw) || raw.owner !== owner || raw.id !== id || typeof raw.status !== 'string') return undefined;
  const text = (v: unknown) => (typeof v === 'string' ? v : undefined);
  const seen: NewerJobSeen = {
    status: raw.status,
    ...optional('created_at', text(raw.created_at)),
    ...optional('enqueued_at', text(raw.enqueued_at)),
    ...optional('queued_at', text(raw.queued_at)),
    ...optional('lease_expires_at', text(raw.lease_expires_at)),
    ...optional('cancel_requested', typeof raw.cancel_requested === 'boolean' ? raw.cancel_requested : undefined),
  };
  return new NewerJobRecordError(key, newer.unknown, seen, newer.data);
}

/** `waitingSince` of a record that does not parse here, from its stored times. */
function rawWaitingSince(seen: NewerJobSeen): number | undefined {
  const at = (v: string | undefined) => (v === undefined ? Number.NaN : Date.parse(v));
  const since = Math.max(at(seen.enqueued_at ?? seen.created_at), seen.queued_at === undefined ? 0 : at(seen.queued_at));
  return Number.isFinite(since) ? since : undefined;
}

/**
 * Ends a job whose record a newer clipag wrote, as this version ends one (the queued-job sweep's
 * expiry): `end` sees what could be read and returns the fields to set, or null to leave the record
 * as it is. Only those fields change, and `version` goes up; every other key, known here or not, is
 * written back as it was read (ADR 0030: an update carries what it does not know through). Conditional
 * on what was read, re-reading on a lost race. Returns what was set; null when `end` left it, or when
 * the record is gone, reads here now, or is no newer writer's any more (the caller's usual path sees to it).
 */
export async function endNewerJobRecord(
  blobs: BlobStore,
  owner: string,
  id: string,
  end: (seen: NewerJobSeen, record: JobRecord | undefined) => JobEnding | null,
): Promise<JobEnding | null> {
  const key = BlobJobStore.keyFor(owner, id);
  for (let attempt = 0; ; attempt++) {
    const object = await blobs.get(key);
    if (!object) return null;
    const newer = newerRecordError(object.body, key, owner, id);
    if (!newer) return null;
    const ending = end(newer.seen, newer.record);
    if (!ending) return null;
    const raw = JSON.parse(Buffer.from(object.body).toString('utf8')) as Record<string, unknown>;
    const version = typeof raw.version === 'number' && Number.isSafeInteger(raw.version) ? raw.version + 1 : raw.version;
    const next = { ...raw, ...ending, version };
    try {
      await blobs.replaceIfMatch(key, Buffer.from(JSON.stringify(next)), object.etag, { contentType: 'application/json' });
      return ending;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError) || attempt >= 5) throw error;
      await new Promise((r) => setTimeout(r, Math.random() * 5 * (attempt + 1)));
    }
  }
}

/**
 * A job record the store will not write: it breaks the record's schema (a NaN score, a field past its
 * bound), or a create or update breaks the store's rules. Every writer builds its record from input
 * already checked, so this is the writer's bug, never the caller's input: a 500 `internal_error` from
 * the API (its answer says only "internal error") and a permanent `internal_error` for a job in the
 * worker. The message, with zod's issues, is for the log.
 */
export class RefusedJobRecordError extends NonRetryableError {
  constructor(why: string) {
    super(`the job store refused to write a job record: ${why}`);
  }
}

/** The fields an ending sets (those every version knows). */
export type JobEnding = Pick<JobRecord, 'status' | 'finished_at'> & Partial<Pick<JobRecord, 'error'>>;

const isPlainRecord = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
const optional = <K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } => (value === undefined ? {} : ({ [key]: value } as { [P in K]: V }));

function assertOwner(owner: string): void {
  if (typeof owner !== 'string' || !OWNER_ID_PATTERN.test(owner)) throw new ValidationError('invalid owner id', 'owner');
}

function assertJobId(id: string, param = 'id'): void {
  if (typeof id !== 'string' || !RESOURCE_ID_PATTERN.test(id)) throw new ValidationError('invalid job id', param);
}

function parseRecord(job: unknown): JobRecord {
  const parsed = JobRecord.safeParse(job);
  if (!parsed.success) throw new RefusedJobRecordError(`it does not validate: ${parsed.error.message}`);
  return parsed.data;
}

function encode(record: JobRecord): Uint8Array {
  return Buffer.from(JSON.stringify(record));
}
