import { z } from '@hono/zod-openapi';
import { ValidationError } from '../errors.ts';
import { OwnerId, ResourceId } from './common.ts';

/** The queue message stays tiny: the spec lives in the job record, so a message can never
 * disagree with the record and never hits the 256 KiB SQS limit. */
export const QueueMessage = z
  .object({ v: z.literal(1), job_id: ResourceId, owner: OwnerId })
  .strict()
  .openapi('QueueMessage');
export type QueueMessage = z.output<typeof QueueMessage>;

/** SQS's rule for a MessageGroupId (1..128 printable ASCII), held by both queue adapters alike. */
const QUEUE_GROUP_PATTERN = /^[\x21-\x7e]{1,128}$/;

export function checkQueueGroup(group: string): void {
  if (typeof group !== 'string' || !QUEUE_GROUP_PATTERN.test(group)) throw new ValidationError('group must be 1..128 printable ASCII characters, no spaces', 'group');
}

export function encodeQueueMessage(message: QueueMessage): string {
  return JSON.stringify(QueueMessage.parse(message));
}

/**
 * A queue message this version refuses only because a newer clipag wrote it (a higher `v`, or fields
 * it does not know), whose job this version can still name. The API deploys before the workers, and a
 * worker rollback can leave older workers for long: such a message is put back for a worker that knows
 * it, never dead-lettered as malformed. A ValidationError, so any caller that only tells good from bad
 * still refuses it.
 */
export class NewerQueueMessageError extends ValidationError {
  readonly job: { job_id: string; owner: string };
  /** What this version does not know, by path: `priority`, `v: 2`. */
  readonly unknown: readonly string[];
  constructor(job: { job_id: string; owner: string }, unknown: readonly string[]) {
    super(`queue message written by a newer clipag (this version does not know ${unknown.join(', ')})`, 'body');
    this.job = job;
    this.unknown = unknown;
  }
}

/** Parses a raw queue body; throws ValidationError (never a SyntaxError) on anything malformed,
 * so a worker can route poison messages to its dead-letter path instead of crashing. A message from
 * a newer writer throws its subclass NewerQueueMessageError. */
export function parseQueueMessage(body: string): QueueMessage {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new ValidationError('queue message is not JSON', 'body');
  }
  const parsed = QueueMessage.safeParse(json);
  if (parsed.success) return parsed.data;
  const newer = newerWriterOf(QueueMessage, json);
  // The job's ids as this version reads them: a newer writer that renamed or dropped them wrote a
  // message this version cannot even put back to the right job, which is garbage to it.
  const ids = newer ? QueueJobIds.safeParse(json) : undefined;
  if (newer && ids?.success) throw new NewerQueueMessageError(ids.data, newer.unknown);
  throw new ValidationError(`malformed queue message: ${parsed.error.message}`, 'body');
}

const QueueJobIds = z.object({ job_id: ResourceId, owner: OwnerId });

// ------------------------------------------------------------------ newer writers

/** The part of a zod issue the newer-writer check reads (structural: any zod 4 schema's issues fit). */
interface SchemaIssue {
  readonly code: string;
  readonly path: ReadonlyArray<PropertyKey>;
  readonly keys?: readonly string[];
  readonly values?: readonly unknown[];
}

/** The part of a zod schema `newerWriterOf` needs. */
export interface CheckedSchema<T> {
  safeParse(value: unknown): { success: true; data: T } | { success: false; error: { issues: readonly SchemaIssue[] } };
}

/** Rounds of stripping unknown keys: a key inside an unknown key's sibling object shows after its parent's. */
const MAX_STRIP_ROUNDS = 8;

/**
 * Whether `value`, which `schema` refuses, looks written by a newer clipag rather than damaged: every
 * problem is a key this version does not know (anywhere: strict objects), a string this version's enum
 * does not list, or a version number above the ones it knows, and everything else it knows is there and
 * valid (once the unknown keys are set aside it parses, refinements included, or only such values
 * remain). Null for anything else (a wrong type, a missing field, a bound broken): that is damage, or a
 * change no version rule allows, and stays refused as before.
 *
 * `unknown` names what was not understood (`spec.guidance`, `status: "paused"`, `v: 2`); `data` is the
 * value parsed without the unknown keys, or undefined when an unknown value remains (a field this
 * version cannot type). Either way it is for deciding what to do with the data (is its job over?),
 * never for running it: what this version does not understand may change what it means.
 */
export function newerWriterOf<T>(schema: CheckedSchema<T>, value: unknown): { unknown: string[]; data: T | undefined } | null {
  let current: unknown;
  try {
    current = structuredClone(value);
  } catch {
    return null;
  }
  const unknown: string[] = [];
  for (let round = 0; round < MAX_STRIP_ROUNDS; round++) {
    const parsed = schema.safeParse(current);
    if (parsed.success) return unknown.length > 0 ? { unknown, data: parsed.data } : null;
    const keyIssues = parsed.error.issues.filter((issue) => issue.code === 'unrecognized_keys');
    if (keyIssues.length === 0) {
      const values = parsed.error.issues.map((issue) => unknownValue(issue, current));
      if (values.some((v) => v === null)) return null;
      return { unknown: [...unknown, ...(values as string[])], data: undefined };
    }
    for (const issue of keyIssues) {
      const holder = valueAt(current, issue.path);
      if (!isRecord(holder) || !issue.keys?.length) return null;
      for (const key of issue.keys) {
        delete holder[key];
        unknown.push(pathText([...issue.path, key]));
      }
    }
  }
  return null;
}

/** The issue as "a value this version does not know", or null when it is anything else. */
function unknownValue(issue: SchemaIssue, root: unknown): string | null {
  if (issue.code !== 'invalid_value' || !issue.values?.length) return null;
  const got = valueAt(root, issue.path);
  // An enum value added later (a status, a category): a string where strings are expected.
  if (typeof got === 'string' && issue.values.every((v) => typeof v === 'string')) return `${pathText(issue.path)}: ${JSON.stringify(got).slice(0, 60)}`;
  // A list of them (webhook_events), refused whole: its strings that are not among the values.
  if (Array.isArray(got) && got.length > 0 && got.every((v) => typeof v === 'string') && issue.values.every((v) => typeof v === 'string')) {
    const added = got.filter((v) => !issue.values!.includes(v));
    if (added.length > 0) return `${pathText(issue.path)}: ${JSON.stringify(added).slice(0, 60)}`;
  }
  // A version above every one this version knows; a lower or odd one is damage.
  const known = issue.values.filter((v): v is number => typeof v === 'number');
  if (typeof got === 'number' && Number.isSafeInteger(got) && known.length === issue.values.length && got > Math.max(...known)) return `${pathText(issue.path)}: ${got}`;
  return null;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function valueAt(root: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let at = root;
  for (const step of path) {
    if (typeof at !== 'object' || at === null) return undefined;
    at = (at as Record<PropertyKey, unknown>)[step];
  }
  return at;
}

const pathText = (path: ReadonlyArray<PropertyKey>) => path.map(String).join('.') || '(top level)';
