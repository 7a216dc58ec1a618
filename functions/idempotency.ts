import { z } from 'zod';
import { parsedJson, readDoc } from '../shared/documents.ts';
import { ConflictError, CorruptDocumentError, PreconditionFailedError, RetryableError } from '../shared/errors.ts';
import type { BlobStore, JobStore } from '../shared/ports.ts';
import type { JobRecord } from '../shared/schemas/job.ts';
import { jobIdTime } from '../shared/ids.ts';
import { RESOURCE_ID_PATTERN } from '../shared/names.ts';
import { sha256Hex } from '../shared/schemas/apikey.ts';
import type { AppLogEntry } from './types.ts';

/**
 * Idempotency-Key for POST /v1/generations (docs/adr/0004). The key's rule (IDEMPOTENCY_KEY_PATTERN)
 * and its hash are also those of POST /v1/webhook-secret, whose replay needs no ledger: the key is
 * kept in the secret's own document, checked and written in its one conditional write (ADR 0028).
 *
 * One small record per (owner, key) at `jobs/.idempotency/<owner>/<sha256(key)>.json`, written
 * with a conditional create *before* the job, naming the job id the request will create and the
 * hash of its canonical body. `.idempotency` can never be an owner id (no `.` allowed), so these
 * records are invisible to job listings, and they sit under `jobs/`, the prefix the API may write.
 * Of two concurrent identical requests exactly one wins the create; the other waits for the job.
 */

export const IDEMPOTENCY_KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;
/** What a key that breaks IDEMPOTENCY_KEY_PATTERN is told, as the header or as GET /v1/generations' `idempotency_key`. */
export const IDEMPOTENCY_KEY_RULE = 'must be 1..255 visible ASCII characters (no spaces)';
/** A claim whose job never appeared (its request died in between) is taken over after this long. */
const STALE_CLAIM_MS = 30_000;

/**
 * `v` 2: `body_hash` is the hash of the body as sent. A `v` 1 claim was written by an earlier version,
 * which (before HASHED_AS_SENT_SINCE_MS) hashed the body with defaults filled in: only such a claim is
 * compared with the hashes that version would have made of a body (`sameBodyHashes`). Matched against a new claim, those would make
 * a body that omits the size the same request as one that named 224×224, and replay the wrong job.
 */
// A job id the job store can look up and a time that parses: a claim without them is unreadable
// (taken over, and a lookup finds nothing), not a 400 blaming the caller or an in-progress claim for ever.
// Read loosely: a newer API (beside this one during a deploy, or the one a rollback replaced) may add a
// field or write a higher `v`. Its claim still names its job and is used as this version's own (replay,
// in progress, stale): a takeover, as of a corrupt claim, would make a second job for the caller's
// retry and bill it twice. Every version keeps these four fields and what `job_id` and `created_at`
// mean; a higher `v` may hash the body otherwise (as 2 did), so only its equal hash is conclusive (sameBody).
const IdempotencyRecord = z
  .object({
    v: z.number().int().min(1),
    body_hash: z.string(),
    job_id: z.string().regex(RESOURCE_ID_PATTERN),
    created_at: z.string().refine((s) => Number.isFinite(Date.parse(s)), 'must be a time'),
  })
  .loose();
/**
 * What a claim holds in place of its body's hash once its generation is deleted (ADR 0021): an unsalted
 * sha256 of a small body lets anyone who reads the store test guesses of the deleted prompt. A version
 * before it reads the claim as one of another body (a retry with the key is a 409 there).
 */
export const DELETED_BODY_HASH = 'deleted';
/** The `v` this version writes; a higher one was written by a newer version. */
const CLAIM_VERSION = 2;
/** A claim of a newer version than this one: all that is known of it where its fields do not read as this version's. */
const NewerClaim = z.object({ v: z.number().int().gt(CLAIM_VERSION) });
type IdempotencyRecord = z.output<typeof IdempotencyRecord>;

/**
 * When the body began to be hashed as sent (commit d0dfad4): the `v` 1 claims written from then on hashed
 * it so too, and only older ones are compared with the old hashes. (A claim that an older version
 * wrote after this moment, before its deploy, is then compared as sent: its retry without the size
 * is a 409, not a replay of the wrong job.)
 */
const HASHED_AS_SENT_SINCE_MS = Date.parse('2026-12-05T18:01:00Z');

/**
 * Whether a claim was made by this body: its hash as sent, or, for a claim an earlier version wrote, as
 * that version hashed it. `undefined`: cannot be told, for a newer version's claim of another hash (it
 * may hash the same body otherwise); neither a replay nor a reuse is certain.
 */
function sameBody(existing: IdempotencyRecord, args: { bodyHash: string; sameBodyHashes?: readonly string[] }): boolean | undefined {
  // Its generation was deleted (the DELETE marks the claim only once the record says so): the hash
  // would confirm a guess of the deleted prompt, so it went too, and any body with the key is answered
  // that (deleted) generation.
  if (existing.body_hash === DELETED_BODY_HASH) return true;
  if (existing.body_hash === args.bodyHash) return true;
  if (existing.v > CLAIM_VERSION) return undefined;
  // When the claim was made (a released claim's created_at is set to 1970 to mark it stale, which
  // would make every released claim look as old as the hashing it predates: its job id says instead).
  const legacy = existing.v === 1 && claimMadeAt(existing) < HASHED_AS_SENT_SINCE_MS;
  return legacy && (args.sameBodyHashes?.includes(existing.body_hash) ?? false);
}

function claimMadeAt(claim: IdempotencyRecord): number {
  const at = Date.parse(claim.created_at);
  if (at !== 0) return at;
  // Released (release() sets 1970 to mark a claim stale): its job id holds when it was made.
  try {
    return jobIdTime(claim.job_id);
  } catch {
    return at;
  }
}

export type Claim = { kind: 'claimed'; jobId: string } | { kind: 'replay'; job: JobRecord };

/** JSON with object keys sorted at every level, so equal values hash equal. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * What is stored of an Idempotency-Key: its sha256, never the key. The ledger's records are named by
 * it, and the account webhook secret's document keeps it for the POST that made the secret (ADR 0028).
 */
export function idempotencyKeyHash(key: string): string {
  return sha256Hex(key);
}

export function idempotencyRecordKey(owner: string, key: string): string {
  return `jobs/.idempotency/${owner}/${idempotencyKeyHash(key)}.json`;
}

export class IdempotencyLedger {
  constructor(
    private readonly blobs: BlobStore,
    private readonly jobs: JobStore,
    private readonly options: { waitMs?: number; staleMs?: number; log?: (entry: AppLogEntry) => void } = {},
  ) {}

  /**
   * Gives up the claim for `jobId` after its job could not be created, so that the retry the error
   * invites is not answered 409 until the claim goes stale. The claim is not deleted but back-dated
   * (conditionally on its etag, so a claim someone else has since taken over is left alone); the next
   * request with the key then takes it over as a stale claim, or replays the job if the failed create
   * landed after all. Best effort: when this fails too, the claim still goes stale on its own.
   */
  async release(args: { owner: string; key: string; jobId: string }): Promise<void> {
    const blobKey = idempotencyRecordKey(args.owner, args.key);
    try {
      const object = await this.blobs.get(blobKey);
      if (!object) return;
      const existing = readDoc(IdempotencyRecord, object.body, blobKey);
      if (existing.job_id !== args.jobId) return;
      const released: IdempotencyRecord = { ...existing, created_at: new Date(0).toISOString() };
      await this.blobs.replaceIfMatch(blobKey, Buffer.from(JSON.stringify(released)), object.etag, { contentType: 'application/json' });
    } catch (error) {
      this.options.log?.({ level: 'warn', msg: 'idempotency claim not released', error: error instanceof Error ? error.message : String(error) });
    }
  }

  /**
   * The key's claim as stored: null when there is none; `claim` undefined when it does not read
   * (`corrupt` says why), which protects nothing: every caller treats it as no claim, and `claim()`
   * takes it over. Except `newer` (why in its place): a claim of a higher `v` than this version's whose
   * fields do not read as this version's. It may name a job, so it is never taken over (a second job
   * for the caller's retry, billed twice); what it protects cannot be told here (newerClaim).
   */
  private async readClaim(blobKey: string): Promise<{ etag: string; claim?: IdempotencyRecord; corrupt?: CorruptDocumentError; newer?: CorruptDocumentError } | null> {
    const object = await this.blobs.get(blobKey);
    if (!object) return null;
    try {
      return { etag: object.etag, claim: readDoc(IdempotencyRecord, object.body, blobKey) };
    } catch (error) {
      if (!(error instanceof CorruptDocumentError)) throw error;
      return NewerClaim.safeParse(parsedJson(object.body)).success ? { etag: object.etag, newer: error } : { etag: object.etag, corrupt: error };
    }
  }

  /**
   * What a request meets at a newer version's claim it cannot use (its fields do not read here, or its
   * body hash may be made otherwise): 503 `unavailable`, logged for the operator. The caller retries with
   * the same key, and a version that reads the claim (the newer API once the deploy is through, or this
   * one upgraded) replays its job or refuses a reuse. Not 409 idempotency_in_progress (its first request
   * may have ended long ago) nor idempotency_key_reused (the body may be the same: a caller told so may
   * send it again under a new key, a second job).
   */
  private newerClaim(key: string, detail: string, cause?: unknown): NewerClaimError {
    this.options.log?.({
      level: 'error',
      msg: 'idempotency claim written by a newer clipag cannot be used here: its requests are answered 503 until a version that reads it serves them (finish the deploy, or upgrade)',
      key,
      detail,
    });
    return new NewerClaimError({ cause });
  }

  /** A claim older than the stale age, or released (its time set to 1970): its request made no job and never will. */
  private isStale(claim: IdempotencyRecord, nowMs: number): boolean {
    return nowMs - Date.parse(claim.created_at) > (this.options.staleMs ?? STALE_CLAIM_MS);
  }

  /**
   * Called by the claimant once its job exists, before anything sends it: whether its claim still
   * names `jobId`. A request that stalled past STALE_CLAIM_MS before its create (a slow store, a
   * paused VM; `clipag serve` has no request deadline) may have had its claim taken over by a retry
   * that made its own job; then this is false and the caller must drop its job. Otherwise the claim is
   * re-written conditionally (its created_at renewed): a takeover that read the old claim now fails
   * its own condition and re-reads, finding this job, so exactly one of the two jobs runs.
   */
  async confirm(args: { owner: string; key: string; jobId: string; now: Date }): Promise<boolean> {
    const blobKey = idempotencyRecordKey(args.owner, args.key);
    for (let attempt = 0; ; attempt++) {
      const read = await this.readClaim(blobKey);
      if (!read?.claim || read.claim.job_id !== args.jobId) return false;
      const renewed: IdempotencyRecord = { ...read.claim, created_at: args.now.toISOString() };
      try {
        await this.blobs.replaceIfMatch(blobKey, Buffer.from(JSON.stringify(renewed)), read.etag, { contentType: 'application/json' });
        return true;
      } catch (error) {
        // Someone wrote in between (a takeover, or our own re-write whose reply was lost): read again.
        if (!(error instanceof PreconditionFailedError) || attempt >= 5) throw error;
      }
    }
  }

  /**
   * Replaces the body hash of the claim that made `jobId` with DELETED_BODY_HASH, for a DELETE of that
   * generation. A claim another job has since taken over (or none) is left alone. Conditional on what
   * was read; a few lost races are read again.
   */
  async forgetBody(args: { owner: string; key: string; jobId: string }): Promise<void> {
    const blobKey = idempotencyRecordKey(args.owner, args.key);
    for (let attempt = 0; ; attempt++) {
      const read = await this.readClaim(blobKey);
      const claim = read?.claim;
      if (!read || !claim || claim.job_id !== args.jobId || claim.body_hash === DELETED_BODY_HASH) return;
      try {
        await this.blobs.replaceIfMatch(blobKey, Buffer.from(JSON.stringify({ ...claim, body_hash: DELETED_BODY_HASH })), read.etag, { contentType: 'application/json' });
        return;
      } catch (error) {
        if (!(error instanceof PreconditionFailedError) || attempt >= 5) throw error;
      }
    }
  }

  /**
   * The job an earlier request with this key and body made, without claiming anything; `null` when
   * there is none (no claim, or a claim whose job was never written; an unreadable one too, a newer
   * version's included: the refusal it is asked for stands, and a refusal makes no job). The key used
   * with another body is the ConflictError (409) that `claim` would give.
   */
  async existingJob(args: { owner: string; key: string; bodyHash: string; sameBodyHashes?: readonly string[]; waitForJob?: boolean }): Promise<JobRecord | null> {
    const existing = (await this.readClaim(idempotencyRecordKey(args.owner, args.key)))?.claim;
    if (!existing) return null;
    const same = sameBody(existing, args);
    if (same === undefined) return null; // a newer version's claim of another hash: not told, the refusal stands
    if (!same) throw keyReused();
    // With `waitForJob` (a refusal the first request itself may cause: its active-job marker counts
    // before its job is written), a claim whose job is not written yet is waited for, as a claim does,
    // rather than refuse its twin. Otherwise the refusal stands.
    const deadline = Date.now() + (this.options.waitMs ?? 3000);
    for (let attempt = 0; ; attempt++) {
      const job = await this.jobs.get(args.owner, existing.job_id);
      if (job) return job;
      if (!args.waitForJob) return null;
      // Abandoned (its request died before the create): nothing to replay; the refusal stands.
      if (this.isStale(existing, Date.now())) return null;
      if (Date.now() >= deadline) throw inProgress(undefined, Date.parse(existing.created_at), this.options.staleMs);
      await new Promise((r) => setTimeout(r, Math.min(25 * (attempt + 1), 200)));
    }
  }

  /**
   * The job the key's claim names, for GET /v1/generations?idempotency_key= (whatever body made it):
   * one read of the claim, one of the job, never another owner's (the claim's path and the job's are
   * the owner's). `null` when the key made none a POST would replay: no claim, an unreadable one, or
   * one whose job was never written and that the next POST takes over (stale, or released after a
   * failed create). A newer version's claim that does not read here is a 503, as the POST answers. A
   * live claim whose job is not written yet is 409 idempotency_in_progress, as the POST answers: the job
   * is a moment away, and "none" would invite a second request with the key.
   */
  async madeBy(args: { owner: string; key: string; now: Date }): Promise<JobRecord | null> {
    const read = await this.readClaim(idempotencyRecordKey(args.owner, args.key));
    // "None" would invite a new POST with the key; the claim may name a job.
    if (read?.newer) throw this.newerClaim(read.newer.key, read.newer.detail, read.newer);
    const existing = read?.claim;
    if (!existing) return null;
    const job = await this.jobs.get(args.owner, existing.job_id);
    if (job) return job;
    if (this.isStale(existing, args.now.getTime())) return null;
    throw inProgress('idempotency_key');
  }

  /**
   * Claims `key` for a new job `jobId`, or returns the job an earlier request with the same key
   * and body made. Same key with another body → ConflictError (409).
   */
  async claim(args: {
    owner: string;
    key: string;
    bodyHash: string;
    /** Other hashes of the same body: how earlier versions hashed it (a claim outlives a deploy); compared with their (`v` 1) claims only. */
    sameBodyHashes?: readonly string[];
    jobId: string;
    now: Date;
  }): Promise<Claim> {
    const blobKey = idempotencyRecordKey(args.owner, args.key);
    const fresh: IdempotencyRecord = { v: CLAIM_VERSION, body_hash: args.bodyHash, job_id: args.jobId, created_at: args.now.toISOString() };
    const encoded = Buffer.from(JSON.stringify(fresh));
    const deadline = Date.now() + (this.options.waitMs ?? 3000);
    /** The live claim last read: a 409 at the deadline says how long until it goes stale. */
    let claimedAtMs: number | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.blobs.putIfAbsent(blobKey, encoded, { contentType: 'application/json' });
        return { kind: 'claimed', jobId: args.jobId };
      } catch (error) {
        if (!(error instanceof PreconditionFailedError)) throw error;
      }
      const read = await this.readClaim(blobKey);
      if (!read) {
        // Vanished in between: claim again, after the same wait as any other round. A store that keeps
        // refusing the write yet shows no claim would otherwise be asked again at once, past the deadline.
        await nextClaimRound(attempt, deadline);
        continue;
      }
      const existing = read.claim;
      let takeOver = false;
      if (read.newer) throw this.newerClaim(read.newer.key, read.newer.detail, read.newer);
      if (!existing) {
        // An unreadable claim names no job and no body we could compare or replay, so it protects
        // nothing: treat it like a stale claim and take it over. The alternative, a 409 forever, would
        // burn the key.
        this.options.log?.({ level: 'warn', msg: 'corrupt idempotency claim taken over', key: read.corrupt?.key, detail: read.corrupt?.detail });
        takeOver = true;
      } else {
        // Our own claim: a write that landed but whose reply was lost, and whose resend failed its
        // condition (S3 resends such a PUT). The job id is this request's own, so no one else's claim names it.
        if (existing.job_id === args.jobId) return { kind: 'claimed', jobId: args.jobId };
        const same = sameBody(existing, args);
        const job = await this.jobs.get(args.owner, existing.job_id);
        const untold = () => this.newerClaim(blobKey, `v ${existing.v}, whose body hash may be made otherwise, and this body's differs`);
        if (job) {
          if (same === undefined) throw untold();
          if (!same) throw keyReused();
          return { kind: 'replay', job };
        }
        // No job under the claim. A stale one (its request died before its create, or it was released
        // after a failure) made nothing: the key is free for any body, as GET ?idempotency_key= says; a
        // request of it still alive finds the takeover at its confirm(). A live one is a request still
        // being made: the same body waits for it, another is a reuse (a newer version's claim of another
        // hash cannot be told either way).
        takeOver = this.isStale(existing, args.now.getTime());
        if (!takeOver && same === undefined) throw untold();
        if (!takeOver && !same) throw keyReused();
        claimedAtMs = Date.parse(existing.created_at);
      }
      if (takeOver) {
        // Conditionally: of two requests racing for it exactly one wins; the other reads again.
        try {
          await this.blobs.replaceIfMatch(blobKey, encoded, read.etag, { contentType: 'application/json' });
          return { kind: 'claimed', jobId: args.jobId };
        } catch (error) {
          if (!(error instanceof PreconditionFailedError)) throw error;
        }
      }
      await nextClaimRound(attempt, deadline, claimedAtMs, this.options.staleMs);
    }
  }
}

/**
 * Between two rounds of a claim: 409 idempotency_in_progress once its wait is over, else a pause a
 * little longer each round.
 */
async function nextClaimRound(attempt: number, deadline: number, claimedAtMs?: number, staleMs?: number): Promise<void> {
  if (Date.now() >= deadline) throw inProgress(undefined, claimedAtMs, staleMs);
  await new Promise((r) => setTimeout(r, Math.min(25 * (attempt + 1), 200)));
}

/**
 * An Idempotency-Key claim a newer clipag wrote that this version cannot use (or a retry whose body only
 * a newer version reads, of a key that made a generation: `message` says so): answered as a job record
 * a newer version wrote is (middleware/errors.ts), 503 `unavailable` with its own message and the same
 * Retry-After, since the cause is the same deploy in progress.
 */
export class NewerClaimError extends RetryableError {
  constructor(options: { cause?: unknown; message?: string } = {}) {
    const { message, ...rest } = options;
    super(message ?? 'the Idempotency-Key claim for this request was written by a newer version of the service; retry later', rest);
  }
}

/** How young a claim still counts as a request in flight, its job a moment away (Retry-After: 1). */
const IN_FLIGHT_CLAIM_MS = 5_000;

/**
 * 409 idempotency_in_progress, with the seconds a retry should wait: 1 while the claim is young (its
 * request is being made, and its job a moment away), else until the claim goes stale and the key can be
 * taken over (its request most likely died: a server killed mid-request made retries answer 409 with
 * Retry-After: 1, thirty times over).
 */
export class IdempotencyInProgressError extends ConflictError {
  readonly retryAfterSec: number;
  constructor(param: string, retryAfterSec: number) {
    super('a request with this Idempotency-Key is still being processed; retry shortly', { code: 'idempotency_in_progress', param });
    this.retryAfterSec = retryAfterSec;
  }
}

/** `claimedAtMs`: the live claim's time, when one was read. */
function inProgress(param = 'Idempotency-Key', claimedAtMs?: number, staleMs = STALE_CLAIM_MS): IdempotencyInProgressError {
  const age = claimedAtMs === undefined ? 0 : Date.now() - claimedAtMs;
  const wait = age < IN_FLIGHT_CLAIM_MS ? 1 : Math.min(Math.ceil(staleMs / 1000), Math.max(1, Math.ceil((staleMs - age) / 1000)));
  return new IdempotencyInProgressError(param, Number.isFinite(wait) ? wait : 1);
}

function keyReused(): ConflictError {
  return new ConflictError('this Idempotency-Key was already used with a different request body', { code: 'idempotency_key_reused', param: 'Idempotency-Key' });
}
