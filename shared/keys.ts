import { ValidationError } from './errors.ts';
import { OWNER_ID_PATTERN, RESOURCE_ID_PATTERN } from './names.ts';
import type { BlobStore } from './ports.ts';
import { deletePrefix } from './prefix.ts';
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
 * Where a job's images live: `outputs/<owner>/<jobId>/<index>.png`, and each image's progress frames
 * beside it under `frames/<index>/` (ADR 0005).
 */
export function jobOutputsPrefix(owner: string, jobId: string): string {
  if (!OWNER_ID_PATTERN.test(owner)) throw new ValidationError(`not an owner id: ${JSON.stringify(owner)}`, 'owner');
  if (!RESOURCE_ID_PATTERN.test(jobId)) throw new ValidationError(`not a job id: ${JSON.stringify(jobId)}`, 'id');
  return `outputs/${owner}/${jobId}/`;
}

/**
 * Removes the images and frames an attempt of an ended job stored that its record does not name: a
 * job that ended `failed` or `canceled` (a time-out, a cancel, a dead letter, a sweep's expiry) after
 * an attempt had stored some, and whose record therefore names none. Without this they stayed until
 * the bucket's lifecycle rule or a DELETE removed them.
 *
 * Only such a record is acted on. One that names images (a succeeded job) is left alone, so nothing
 * it names can go; one still queued or running too (an attempt may be storing its images now); and
 * one never started (`attempts` 0) has nothing stored, so nothing is even listed. An ended record
 * never runs again, so what is removed cannot be wanted later. Idempotent; it throws what the store
 * throws, and callers log that and go on (the job's end never waits on it: the lifecycle rule stays
 * the backstop). True when it looked (and removed whatever was there).
 */
export async function removeOrphanedOutputs(blobs: BlobStore, job: Pick<JobRecord, 'owner' | 'id' | 'status' | 'attempts' | 'outputs'>): Promise<boolean> {
  if ((job.status !== 'failed' && job.status !== 'canceled') || job.outputs.length > 0 || job.attempts === 0) return false;
  await deletePrefix(blobs, jobOutputsPrefix(job.owner, job.id));
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
