import { ValidationError } from './errors.ts';
import { OWNER_ID_PATTERN, RESOURCE_ID_PATTERN } from './names.ts';
import { OUTPUT_IMAGE_NAME } from './output-format.ts';
import type { BlobStore } from './ports.ts';
import { deleteKeys, deletePrefix, listKeys } from './prefix.ts';
import type { JobRecord } from './schemas/job.ts';

/**
 * Blob keys: `/`-separated segments of safe characters. Rejecting `..`, empty segments, leading
 * slashes and backslashes here means a key can never escape its prefix, on S3 or on disk.
 */
const SEGMENT = /^[A-Za-z0-9_.=+@-]{1,200}$/;

/** A path inside a bundle folder: relative, `/`-separated, no empty, `.` or `..` parts, no backslash. */
export function isPlainRelativePath(path: string): boolean {
  return path.length > 0 && !path.startsWith('/') && !path.includes('\\') && path.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** Whether `key` follows the blob key rules (what `assertValidKey` checks, as a boolean). */
export function isValidKey(key: unknown): key is string {
  return (
    typeof key === 'string' &&
    key.length > 0 &&
    key.length <= 1024 &&
    key.split('/').every((segment) => SEGMENT.test(segment) && segment !== '.' && segment !== '..')
  );
}

export function assertValidKey(key: string, param = 'key'): void {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024) {
    throw new ValidationError('blob key must be 1..1024 characters', param);
  }
  if (!isValidKey(key)) throw new ValidationError(`invalid blob key: ${JSON.stringify(key)}`, param);
}

/** Prefixes may be empty or end in `/`; the non-empty part follows the key rules. */
export function assertValidPrefix(prefix: string): void {
  if (prefix === '') return;
  const trimmed = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  assertValidKey(trimmed, 'prefix');
}

/** Where an init image uploaded through `POST /v1/uploads` lives; a job's `init: "upload:<id>"` names it. */
export function uploadKey(owner: string, uploadId: string): string {
  const key = `uploads/${owner}/${uploadId}`;
  assertValidKey(key, 'upload');
  return key;
}

/**
 * Where a job's images live: `outputs/<owner>/<jobId>/<index>.png` (`.jpg` for JPEG outputs, ADR 0041; `.webp` for WebP, ADR 0043), and each image's progress frames
 * beside it under `frames/<index>/` (ADR 0005).
 */
export function jobOutputsPrefix(owner: string, jobId: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  if (!RESOURCE_ID_PATTERN.test(jobId)) throw new ValidationError(`not a job id: ${JSON.stringify(jobId)}`, 'id');
  return `outputs/${owner}/${jobId}/`;
}

/**
 * Removes the images and frames that attempts of an ended job stored and that its record does not
 * name. Without this they stayed until the bucket's lifecycle rule (or a DELETE, for what had landed
 * by then) removed them:
 * - a job that ended `failed` or `canceled` (a time-out, a cancel, a dead letter, a sweep's expiry)
 *   after an attempt had stored some: its record names none, so the whole prefix goes;
 * - a deleted job (`deleted_at`), whatever its status: the whole prefix goes. DELETE removes what is
 *   there when it runs, but an attempt superseded while it stored (its lease lapsed; another attempt
 *   ended the job) can land its writes after that, and settles them itself (ADR 0021: a delete removes
 *   the images);
 * - a succeeded job: only what it does not name goes, an image `<index>.png` (or `.jpg`, `.webp`) not in `outputs` and the
 *   frames (`frames/<index>/`) of such an index (a superseded attempt stored an index that the
 *   attempt which ended the job withheld, the owner's policy being read again per run). Its named
 *   images and their frames always stay, and so does any key of another shape (what a later version
 *   might store beside them); when a named key is not `<prefix><index>.png` (or `.jpg`, `.webp`), no frames are removed
 *   (whose they are cannot be told).
 *
 * A record still queued or running is left alone (an attempt may be storing its images now), and
 * one never started (`attempts` 0) has nothing stored, so nothing is even listed. An ended record
 * never runs again, so what is removed cannot be wanted later. Idempotent; it throws what the store
 * throws, and callers log that and go on (the job's end never waits on it: the lifecycle rule stays
 * the backstop). True when it looked (and removed whatever was there not named).
 */
export async function removeOrphanedOutputs(
  blobs: BlobStore,
  job: Pick<JobRecord, 'owner' | 'id' | 'status' | 'attempts' | 'outputs'> & Partial<Pick<JobRecord, 'deleted_at'>>,
): Promise<boolean> {
  // Literal statuses, not isTerminal: schemas/job.ts imports this module.
  const ended = job.status === 'succeeded' || job.status === 'failed' || job.status === 'canceled';
  if (!ended || job.attempts === 0) return false;
  const prefix = jobOutputsPrefix(job.owner, job.id);
  if (job.deleted_at !== undefined || job.outputs.length === 0) {
    // Deleted, or ended naming nothing (a failed or canceled job; a succeeded one names at least one image).
    await deletePrefix(blobs, prefix);
    return true;
  }
  const named = new Set(job.outputs.map((o) => o.key));
  const namedIndices = new Set<string>();
  let framesKnown = true;
  for (const key of named) {
    const index = key.startsWith(prefix) ? OUTPUT_IMAGE_NAME.exec(key.slice(prefix.length))?.[1] : undefined;
    if (index === undefined) framesKnown = false;
    else namedIndices.add(index);
  }
  const unnamed = (key: string): boolean => {
    if (named.has(key) || !key.startsWith(prefix)) return false;
    const rest = key.slice(prefix.length);
    if (OUTPUT_IMAGE_NAME.test(rest)) return true;
    const frameOf = /^frames\/(\d+)\//.exec(rest)?.[1];
    return frameOf !== undefined && framesKnown && !namedIndices.has(frameOf);
  };
  // Listed in full, then deleted (a job holds a few hundred keys at most).
  const doomed: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await listKeys(blobs, prefix, cursor ? { cursor } : {});
    for (const key of page.keys) if (unnamed(key)) doomed.push(key);
    cursor = page.cursor;
  } while (cursor);
  await deleteKeys(blobs, doomed);
  return true;
}

/**
 * Markers of work the queued-job sweep (functions/queued-jobs.ts) must finish if nobody else does:
 * - `pending/msg/<owner>/<jobId>`: the job's queue message is not yet proven sent. Written before the
 *   job record and deleted after the send, so a process that dies in between leaves it behind;
 * - `pending/hook/<owner>/<jobId>`: the job owes its caller a completion webhook. Written with the
 *   record and deleted once the webhook is delivered or given up;
 * - `pending/active/<owner>/<jobId>`: the job is queued or running, and counts against its owner's
 *   limit of active jobs. Written with the record and deleted when the job ends (ADR 0016);
 * - `pending/outputs/<owner>/<jobId>`: an attempt of the job may have stored images that no record
 *   names yet. Written by the worker before its first image write, and deleted once the job has ended
 *   and its images are either named by the record (succeeded) or removed (settleStoredOutputs,
 *   shared/pending.ts). A removal that failed, or a worker that died between storing and ending, leaves
 *   it behind: the sweep then removes what no record names (ADR 0005).
 */
export const PENDING_JOBS_PREFIX = 'pending/';
export const PENDING_KINDS = ['msg', 'hook', 'active', 'outputs'] as const;
export type PendingKind = (typeof PENDING_KINDS)[number];

export function pendingJobKey(kind: PendingKind, owner: string, jobId: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError('invalid owner id', 'owner');
  if (!RESOURCE_ID_PATTERN.test(jobId)) throw new ValidationError('invalid job id', 'id');
  return `${PENDING_JOBS_PREFIX}${kind}/${owner}/${jobId}`;
}

/**
 * Where one owner's content policy lives (ADR 0018): it replaces the deployment's
 * (`config/prompt-policy.json`) for that owner's jobs.
 */
export function ownerPolicyKey(owner: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  return `config/prompt-policies/${owner}.json`;
}

/**
 * Where one owner's webhook signing secret lives (ADR 0028): written by the API (POST and DELETE
 * /v1/webhook-secret), read by whoever delivers a webhook (the worker, the queued-job sweep).
 */
export const WEBHOOK_SECRETS_PREFIX = 'webhook-secrets/';

export function webhookSecretKey(owner: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  return `${WEBHOOK_SECRETS_PREFIX}${owner}.json`;
}

/**
 * Where one owner's monthly spend limit lives (ADR 0033): written by the API (PUT and DELETE
 * /v1/spend-limit), read by it before each new generation.
 */
export const SPEND_LIMITS_PREFIX = 'spend-limits/';

export function spendLimitKey(owner: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  return `${SPEND_LIMITS_PREFIX}${owner}.json`;
}

/**
 * Where the operator's monthly spend limit for one owner lives (ADR 0033): under `config/`, which the
 * operator writes (`clipag usage limit`) and the API only reads, so the account cannot raise it.
 */
export function operatorSpendLimitKey(owner: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  return `config/spend-limits/${owner}.json`;
}

/** A UTC month, `YYYY-MM`. */
export const MONTH_PATTERN = /^\d{4}-(0[1-9]|1[0-2])$/;

/** Where one owner's usage for one UTC month lives (ADR 0019). */
export function usageKey(owner: string, month: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  if (!MONTH_PATTERN.test(month)) throw new ValidationError(`not a month (YYYY-MM): ${JSON.stringify(month)}`, 'month');
  return `usage/${owner}/${month}.json`;
}

/** What a marker key names; `null` for anything else under the prefix. */
export function parsePendingJobKey(key: string): { kind: PendingKind; owner: string; jobId: string } | null {
  if (!key.startsWith(PENDING_JOBS_PREFIX)) return null;
  const parts = key.slice(PENDING_JOBS_PREFIX.length).split('/');
  if (parts.length !== 3) return null;
  const [kind, owner, jobId] = parts as [PendingKind, string, string];
  if (!(PENDING_KINDS as readonly string[]).includes(kind)) return null;
  return OWNER_ID_PATTERN.test(owner) && RESOURCE_ID_PATTERN.test(jobId) ? { kind, owner, jobId } : null;
}
