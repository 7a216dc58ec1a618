import { ValidationError } from '../shared/errors.ts';
import { firstJobIdUntil, lastJobIdFrom } from '../shared/ids.ts';
import { METADATA_KEY_PATTERN, METADATA_KEY_RULE, METADATA_MAX_KEY_CHARS, METADATA_MAX_KEYS, METADATA_MAX_VALUE_CHARS } from '../shared/schemas/generation.ts';
import type { JobRecord, JobStatus } from '../shared/schemas/job.ts';
import type { WebhookStatus } from '../shared/schemas/view.ts';
import { webhookStatus } from '../shared/views.ts';

/** The list query's filters, as the schema parsed them (`metadata` is read from the raw query: `metadata[KEY]=VALUE`). */
export interface ListFilterQuery {
  cursor?: string | undefined;
  status?: JobStatus | undefined;
  created_after?: string | undefined;
  created_before?: string | undefined;
  webhook_status?: WebhookStatus | undefined;
  api_key_id?: string | undefined;
}

/**
 * What GET /v1/generations reads: where its scan starts, where it stops, and which of the
 * generations it reads it shows. Job ids sort newest first by creation time (shared/ids.ts), so
 * `created_before` is a start position and `created_after` an end; the others are a scan.
 */
export interface ListFilter {
  /** The listing starts after this id (the cursor, or the last id a job made at `created_before` can have, whichever is older). */
  startAfter?: string;
  /** The listing ends before this id: the first a job made at `created_after` or earlier can have. */
  endBefore?: string;
  /** Whether a job read is shown. */
  matches(job: JobRecord): boolean;
  /** Whether `matches` may refuse a job, so that a page is read as a scan of up to LIST_SCAN_LIMIT. */
  selective: boolean;
}

/** `metadata[KEY]` in a raw query (Hono gives the names decoded, `%5B` as `[`). */
const METADATA_PARAM = /^metadata\[(.*)\]$/s;

export function listFilter(query: ListFilterQuery, raw: Record<string, string>): ListFilter {
  const metadata: Array<[string, string]> = [];
  for (const [name, value] of Object.entries(raw)) {
    const m = METADATA_PARAM.exec(name);
    if (!m) continue;
    const key = m[1]!;
    if (key.length === 0 || key.length > METADATA_MAX_KEY_CHARS || !METADATA_KEY_PATTERN.test(key)) {
      throw new ValidationError(`${name.slice(0, 60)}: ${METADATA_KEY_RULE}, 1 to ${METADATA_MAX_KEY_CHARS} of them`, 'metadata');
    }
    // Counted in code points, as the request's schema counts a stored value.
    if ([...value].length > METADATA_MAX_VALUE_CHARS) throw new ValidationError(`${name}: a metadata value is at most ${METADATA_MAX_VALUE_CHARS} characters, so none is longer`, 'metadata');
    metadata.push([key, value]);
  }
  if (metadata.length > METADATA_MAX_KEYS) throw new ValidationError(`at most ${METADATA_MAX_KEYS} metadata filters (a generation has at most ${METADATA_MAX_KEYS} keys)`, 'metadata');

  // created_at has whole milliseconds: after 12:00:00.0004 is from 12:00:00.001 on, before 12:00:00.0004 up to 12:00:00.000.
  const after = query.created_after === undefined ? undefined : instantMs(query.created_after, 'floor');
  const before = query.created_before === undefined ? undefined : instantMs(query.created_before, 'ceil');
  if (after !== undefined && before !== undefined && after >= before) {
    throw new ValidationError('created_after must be earlier than created_before (both are exclusive)', 'created_after');
  }
  // A later id is an older job: the listing goes on from the older of the two positions.
  const fromBefore = before === undefined ? undefined : lastJobIdFrom(before);
  const startAfter = [query.cursor, fromBefore].filter((id): id is string => id !== undefined).sort().at(-1);

  const { status, webhook_status: hook, api_key_id: apiKeyId } = query;
  return {
    // The bounds are positions in id order: a job's id and its created_at are one clock reading (the
    // POST makes both from it); created_at is compared too, so that a job whose two differ is shown by
    // the one its view states.
    ...(startAfter !== undefined ? { startAfter } : {}),
    ...(after !== undefined ? { endBefore: firstJobIdUntil(after) } : {}),
    matches: (job) =>
      (before === undefined || Date.parse(job.created_at) < before) &&
      (after === undefined || Date.parse(job.created_at) > after) &&
      (status === undefined || job.status === status) &&
      (hook === undefined || (job.webhook !== undefined && webhookStatus(job.webhook) === hook)) &&
      (apiKeyId === undefined || job.api_key_id === apiKeyId) &&
      metadata.every(([k, v]) => Object.hasOwn(job.metadata ?? {}, k) && job.metadata![k] === v),
    selective: status !== undefined || hook !== undefined || apiKeyId !== undefined || metadata.length > 0,
  };
}

/**
 * An RFC 3339 date-time (as the schema checked it) in whole milliseconds since the epoch, the digits
 * past the millisecond rounded as asked: Date.parse drops them, which would let `created_before`
 * 12:00:00.0004 exclude a job made at 12:00:00.000.
 */
export function instantMs(text: string, round: 'floor' | 'ceil'): number {
  const fraction = /\.(\d+)/.exec(text)?.[1] ?? '';
  const ms = Date.parse(text.replace(/\.\d+/, fraction ? `.${fraction.slice(0, 3).padEnd(3, '0')}` : ''));
  return round === 'ceil' && /[1-9]/.test(fraction.slice(3)) ? ms + 1 : ms;
}
