import { forEachLimited } from './concurrency.ts';
import { readDoc } from './documents.ts';
import { CorruptDocumentError, NotFoundError, PreconditionFailedError, ValidationError } from './errors.ts';
import type { BlobStore, JobMutation, JobPage, JobStore, UpdateOptions } from './ports.ts';
import { OWNER_ID_PATTERN, RESOURCE_ID_PATTERN } from './schemas/common.ts';
import { JobRecord } from './schemas/job.ts';

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
  /** `log` hears about corrupt job documents that `listByOwner` skips. */
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
    if (record.version !== 1) throw new ValidationError('a new job record must have version 1', 'version');
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
    // Unreadable or off-schema → CorruptDocumentError (non-retryable; the API answers 409 corrupt_record).
    const record = readDoc(JobRecord, object.body, key);
    if (record.owner !== owner || record.id !== id) {
      // A document under someone's prefix must describe that owner's job; anything else is corruption.
      throw new CorruptDocumentError(key, `names ${record.owner}/${record.id}`);
    }
    return { record, etag: object.etag };
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
      if (proposed.id !== id || proposed.owner !== owner) throw new ValidationError('a job update cannot change id or owner', 'id');
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
    const listed = await this.blobs.list(`jobs/${owner}/`, {
      limit,
      ...(options.cursor !== undefined ? { cursor: BlobJobStore.keyFor(owner, options.cursor) } : {}),
    });
    // Keys list in order: the end cuts the page before any of its documents is read.
    const end = options.endBefore === undefined ? undefined : BlobJobStore.keyFor(owner, options.endBefore);
    const kept = end === undefined ? listed.items : listed.items.filter((item) => item.key < end);
    const page = kept.length < listed.items.length ? { items: kept } : listed;
    // The page's records are read a few at once (one after another, a 100-job page waited on 100
    // round trips), each into its slot: the page keeps its key order, newest first.
    const ids = page.items.map((item) => item.key.slice(`jobs/${owner}/`.length, -'.json'.length)).filter((id) => RESOURCE_ID_PATTERN.test(id)); // others are not job documents
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
            if (!(error instanceof CorruptDocumentError)) throw error;
            read[index] = error;
          }
        },
      );
    } finally {
      for (const entry of read) {
        if (entry instanceof CorruptDocumentError) this.options.log?.warn('skipping a corrupt job document in a listing', { key: entry.key, detail: entry.detail });
      }
    }
    const jobs = read.filter((entry): entry is JobRecord => entry !== null && !(entry instanceof CorruptDocumentError));
    // The cursor given out is the last job id, so it stays meaningful to the caller and cannot name a key.
    const last = page.items[page.items.length - 1];
    return page.cursor && last ? { jobs, cursor: last.key.slice(`jobs/${owner}/`.length, -'.json'.length) } : { jobs };
  }
}

function assertOwner(owner: string): void {
  if (typeof owner !== 'string' || !OWNER_ID_PATTERN.test(owner)) throw new ValidationError('invalid owner id', 'owner');
}

function assertJobId(id: string, param = 'id'): void {
  if (typeof id !== 'string' || !RESOURCE_ID_PATTERN.test(id)) throw new ValidationError('invalid job id', param);
}

function parseRecord(job: unknown): JobRecord {
  const parsed = JobRecord.safeParse(job);
  if (!parsed.success) throw new ValidationError(`invalid job record: ${parsed.error.message}`, 'job');
  return parsed.data;
}

function encode(record: JobRecord): Uint8Array {
  return Buffer.from(JSON.stringify(record));
}
