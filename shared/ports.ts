/**
 * The ports both sides of the system program against. Adapters: `adapters/local/` (filesystem)
 * and `adapters/aws/` (S3, SQS); one contract suite (test/shared/contract) runs against both.
 */
import type { JobRecord } from './schemas/job.ts';

// ---------------------------------------------------------------- BlobStore

export interface BlobMeta {
  key: string;
  size: number;
  /** Opaque version token; pass it back unchanged to `replaceIfMatch`. */
  etag: string;
  contentType: string | undefined;
  lastModified: Date;
}

export interface BlobObject extends BlobMeta {
  body: Uint8Array;
}

export interface PutOptions {
  contentType?: string;
}

export interface ListOptions {
  /** Returned by the previous page; listing resumes after it. */
  cursor?: string;
  /** Page size, 1..1000 (default 1000). */
  limit?: number;
}

export interface ListPage {
  /** Ascending by key. */
  items: BlobMeta[];
  /** Present when more items may follow. */
  cursor?: string;
}

/** A `list` page's keys only (`listKeys`). */
export interface KeyPage {
  /** Ascending. */
  keys: string[];
  /** Present when more keys may follow. */
  cursor?: string;
}

export interface SignedPutOptions {
  contentType: string;
  /** Upper bound on the upload size. */
  maxBytes: number;
  expiresSec: number;
  /**
   * The exact size the client promised. When given (and ≤ maxBytes) it is signed into the URL,
   * so S3 rejects a body of any other length. Without it a presigned PUT cannot bound the size
   * on S3 (only a presigned POST policy can carry a content-length-range): the caller must then
   * `head` the object after upload and reject it if it is too large. See `enforcesMaxBytes`.
   */
  contentLength?: number;
  /**
   * The URL only creates the object: a PUT while one exists at the key is refused (412) and changes
   * nothing, so a link writes once and cannot replace what it wrote (S3 signs `If-None-Match: *`,
   * which the client must send). A retried PUT whose first try landed is refused the same way.
   */
  createOnly?: boolean;
}

export interface SignedPut {
  url: string;
  method: 'PUT';
  /** Headers the client must send verbatim (they are part of the signature). */
  headers: Record<string, string>;
  expiresAt: Date;
  /** True when the store itself rejects bodies over maxBytes. */
  enforcesMaxBytes: boolean;
}

export interface BlobStore {
  put(key: string, body: Uint8Array, options?: PutOptions): Promise<{ etag: string }>;
  /** `null` when absent. */
  get(key: string): Promise<BlobObject | null>;
  /** `null` when absent. */
  head(key: string): Promise<BlobMeta | null>;
  list(prefix: string, options?: ListOptions): Promise<ListPage>;
  /**
   * The keys `list` would give, with the same limit and cursor, without their metadata: for a caller
   * that reads each object anyway (the local store reads and hashes every object it lists). A key may
   * be gone by the time it is read. Optional: without it, take the keys of `list`.
   */
  listKeys?(prefix: string, options?: ListOptions): Promise<KeyPage>;
  /** Idempotent: deleting an absent key succeeds. */
  delete(key: string): Promise<void>;
  /**
   * `delete` of each key, in as few requests as the store allows (S3: one per 1000 keys). Every key is
   * validated before any is deleted. Idempotent, as `delete`. Every key is tried: one that could not be
   * deleted makes it throw after (never a silent partial delete). Optional: without it, delete them one by one.
   */
  deleteMany?(keys: readonly string[]): Promise<void>;
  /** Conditional create. Throws PreconditionFailedError when the key exists. */
  putIfAbsent(key: string, body: Uint8Array, options?: PutOptions): Promise<{ etag: string }>;
  /** Conditional replace. Throws PreconditionFailedError when the key is absent or its etag differs. */
  replaceIfMatch(key: string, body: Uint8Array, etag: string, options?: PutOptions): Promise<{ etag: string }>;
  signedGetUrl(key: string, expiresSec: number): Promise<string>;
  /**
   * How long a link signed now can live, at most `expiresSec`: a link signed with temporary credentials
   * (an ECS task's or a Lambda's role) dies with them. A store whose signing key does not expire
   * leaves it out (the full `expiresSec`).
   */
  linkLifeSec?(expiresSec: number): Promise<number>;
  signedPutUrl(key: string, options: SignedPutOptions): Promise<SignedPut>;
}

// ---------------------------------------------------------------- JobQueue

export interface ReceivedMessage {
  messageId: string;
  /** Raw body; parse it with `parseQueueMessage` (a malformed body must not crash a consumer). */
  body: string;
  /** Handle for ack/extend/release of *this* delivery. */
  receipt: string;
  /** 1 on first delivery; incremented on every redelivery. */
  receiveCount: number;
  sentAt: Date;
  /**
   * The queue knows that the delivery before this one was held by a process that has ended (the local
   * queue, which records its receivers): whatever lease that delivery took is void now, though its
   * time has not run out. SQS cannot tell, and never sets it.
   */
  previousHolderGone?: true;
  /** The tenant it was sent for (`SendOptions.group`); absent when it was sent without one. */
  group?: string;
}

export interface SendOptions {
  /** Seconds before it can be received, 0..900 (default 0). */
  delaySec?: number;
  /**
   * The tenant it is sent for (the job's owner): the queue serves tenants fairly, so one tenant's
   * backlog does not hold the others' messages back (SQS fair queues: the MessageGroupId of a
   * standard queue). 1..128 printable ASCII characters.
   */
  group?: string;
}

export interface ReceiveOptions {
  /** 1..10 (default 1). */
  max?: number;
  /** Long-poll wait, 0..20 s (default 0). Returns as soon as a message is available. */
  waitSec?: number;
  /** How long received messages stay hidden from other consumers (default: the queue's). */
  visibilitySec?: number;
}

export interface JobQueue {
  send(body: string, options?: SendOptions): Promise<{ messageId: string }>;
  receive(options?: ReceiveOptions): Promise<ReceivedMessage[]>;
  /** Keep the message hidden for `visibilitySec` more seconds from now (a heartbeat). */
  extendVisibility(receipt: string, visibilitySec: number): Promise<void>;
  /** Done with it: delete the message. */
  ack(receipt: string): Promise<void>;
  /** Give it back now: visible again immediately (receiveCount is kept). */
  release(receipt: string): Promise<void>;
  /** The dead-letter queue messages land in after too many receives, for inspection and redrive. */
  readonly deadLetter: JobQueue | undefined;
}

// ---------------------------------------------------------------- JobStore

export interface UpdateOptions {
  /** How many times to re-read and re-apply `mutate` after losing a write race (default 5). */
  retries?: number;
  /** Fail with PreconditionFailedError (no retry) unless the stored version is exactly this. */
  expectedVersion?: number;
}

/**
 * Receives the current record and returns the next one (the store sets `version`), or `null`
 * to leave the record unchanged. May be called several times when writes race; keep it pure.
 * May throw (e.g. ConflictError for a terminal job) to abort the update.
 */
export type JobMutation = (current: Readonly<JobRecord>) => JobRecord | null;

export interface JobPage {
  /** Newest first. */
  jobs: JobRecord[];
  cursor?: string;
  /**
   * The ids of the page's records a newer clipag wrote, which `jobs` leaves out (this version cannot
   * make their view): a reader that must come back to each (the retention) remembers them. Absent when none.
   */
  newer?: string[];
}

export interface JobStore {
  /** Conditional create: PreconditionFailedError if a job with this owner/id exists. */
  create(job: JobRecord): Promise<JobRecord>;
  /** `null` when absent, including when the id belongs to another owner. */
  get(owner: string, id: string): Promise<JobRecord | null>;
  /** Optimistically versioned read-modify-write. NotFoundError when absent. */
  update(owner: string, id: string, mutate: JobMutation, options?: UpdateOptions): Promise<JobRecord>;
  /** `endBefore`: a job id; the page ends before it (and the list with it: no cursor once it is reached). */
  listByOwner(owner: string, options?: { limit?: number; cursor?: string; endBefore?: string }): Promise<JobPage>;
}

// ---------------------------------------------------------------- RateCounter

/**
 * Counts per key and numbered time window, for the API's per-account limits
 * (shared/rate-limit.ts holds the sliding-window arithmetic; adapters only count). Entries are
 * ephemeral: a store may drop one once its `expiresAtSec` has passed.
 */
export interface RateCounter {
  /** The count of `key` in `window`; 0 when there is none. */
  get(key: string, window: number): Promise<number>;
  /**
   * Adds one to `key`'s count in `window` unless that count is already `ceiling` or more, atomically
   * (concurrent callers never push it past `ceiling`). Returns the new count, or `null` when nothing
   * was added.
   */
  addBelow(key: string, window: number, ceiling: number, expiresAtSec: number): Promise<number | null>;
}
