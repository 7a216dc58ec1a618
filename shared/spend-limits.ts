// An account's monthly spend limit (ADR 0033). One small document per owner,
// `spend-limits/<owner>.json`, written by the account itself (PUT and DELETE /v1/spend-limit), and one
// the operator may set for it (`config/spend-limits/<owner>.json`, `clipag usage limit`), both read by
// the API before each new generation: once the month's cost, as GET /v1/usage shows it, has reached the
// lower of the two, a new generation is refused (402 spend_limit_reached) until that limit is raised or
// removed, or the next UTC month begins. Generations already queued or running still run.
import { z } from 'zod';
import { parsedJson, readDoc } from './documents.ts';
import { CorruptDocumentError, NewerDocumentError } from './errors.ts';
import { newerWriterOf } from './schemas/queue.ts';
import { operatorSpendLimitKey, spendLimitKey } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { monthCostUsd, readUsage } from './usage.ts';

/** The largest limit taken: a billion dollars a month is no limit, and keeps the sums exact in micro-dollars. */
export const MAX_MONTHLY_USD = 1_000_000_000;

const SpendLimitDoc = z
  .object({
    v: z.literal(1),
    monthly_usd: z.number().finite().nonnegative().max(MAX_MONTHLY_USD),
    updated_at: z.iso.datetime({ offset: false }),
  })
  // A field a later version adds is read past, not a corrupt document.
  .loose();
export type SpendLimit = z.output<typeof SpendLimitDoc>;

/**
 * Whose limit: the account's own (`spend-limits/<owner>.json`, set through the API), or the one the
 * operator set for it (`config/spend-limits/<owner>.json`, `clipag usage limit`), which the account
 * cannot change. The lower of the two applies.
 */
export type SpendLimitSetter = 'account' | 'operator';
const keyOf = (setter: SpendLimitSetter, owner: string) => (setter === 'account' ? spendLimitKey(owner) : operatorSpendLimitKey(owner));

/** The owner's limit (the account's own by default); null when none is set. Throws CorruptDocumentError for a document that does not read. */
export async function readSpendLimit(blobs: BlobStore, owner: string, setter: SpendLimitSetter = 'account'): Promise<SpendLimit | null> {
  const key = keyOf(setter, owner);
  const found = await blobs.get(key);
  if (!found) return null;
  try {
    return readDoc(SpendLimitDoc, found.body, key);
  } catch (error) {
    // A newer clipag's limit (a later `v`; the compatibility review's F4): the POST it guards is answered
    // 503 until a version that reads it serves it, never "corrupt, contact the operator".
    const newer = error instanceof CorruptDocumentError && !(error instanceof NewerDocumentError) ? newerWriterOf(SpendLimitDoc, parsedJson(found.body)) : null;
    if (newer) throw new NewerDocumentError(key, `written by a newer clipag (this version does not know ${newer.unknown.slice(0, 5).join(', ')})`, "the account's spend limit was written by a newer version of the service; retry later", { cause: error });
    throw error;
  }
}


/** Sets (or replaces) the owner's limit; the last write wins, as for any setting. */
export async function putSpendLimit(blobs: BlobStore, owner: string, monthlyUsd: number, now: Date, setter: SpendLimitSetter = 'account'): Promise<SpendLimit> {
  const doc: SpendLimit = SpendLimitDoc.parse({ v: 1, monthly_usd: monthlyUsd, updated_at: now.toISOString() });
  await blobs.put(keyOf(setter, owner), new TextEncoder().encode(JSON.stringify(doc)), { contentType: 'application/json' });
  return doc;
}

/** Removes the owner's limit; true when there was one (a document that does not read counts as one). */
export async function deleteSpendLimit(blobs: BlobStore, owner: string, setter: SpendLimitSetter = 'account'): Promise<boolean> {
  const key = keyOf(setter, owner);
  const existed = (await blobs.head(key)) !== null;
  await blobs.delete(key);
  return existed;
}

/** Both limits of an owner, read at once. */
export async function readSpendLimits(blobs: BlobStore, owner: string): Promise<{ account: SpendLimit | null; operator: SpendLimit | null }> {
  const [account, operator] = await Promise.all([readSpendLimit(blobs, owner, 'account'), readSpendLimit(blobs, owner, 'operator')]);
  return { account, operator };
}

/** The limit that applies: the lower of the two set, with whose it is; null when neither is set. */
export function effectiveSpendLimit(limits: { account: SpendLimit | null; operator: SpendLimit | null }): { monthly_usd: number; setter: SpendLimitSetter } | null {
  const { account, operator } = limits;
  // At a tie, the operator's: the account raising its own would not let it through.
  if (operator !== null && (account === null || operator.monthly_usd <= account.monthly_usd)) return { monthly_usd: operator.monthly_usd, setter: 'operator' };
  return account !== null ? { monthly_usd: account.monthly_usd, setter: 'account' } : null;
}

/** The UTC month of `now`, `YYYY-MM`. */
export const monthOf = (now: Date): string => now.toISOString().slice(0, 7);

/** When the UTC month after `now`'s begins (an ISO instant): when a reached limit stops applying. */
export function nextMonthStart(now: Date): string {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString();
}

/**
 * What the owner has spent in `now`'s UTC month, as GET /v1/usage totals it (each day's generations at
 * the price their runs ended with, the rest at `hourlyUsd`); null where no price makes it dollars.
 * Throws CorruptDocumentError for a month that does not read (never taken for zero).
 */
export async function spentThisMonthUsd(blobs: BlobStore, owner: string, now: Date, hourlyUsd: number | undefined): Promise<number | null> {
  const days = await readUsage(blobs, owner, monthOf(now));
  return monthCostUsd(days, hourlyUsd).total;
}

/** The limits as the API shows them: the figures of the month, and whether a new generation is refused. */
export interface SpendLimitStatus {
  /** The account's own limit; null: it set none. */
  monthly_usd: number | null;
  updated_at: string | null;
  /** The limit the operator set for the account; null: none. The lower of the two applies. */
  operator_monthly_usd: number | null;
  month: string;
  spent_usd: number | null;
  /** What is left of the limit that applies. */
  remaining_usd: number | null;
  /** Whether new generations are refused now: a limit is set, and the month's cost is known and has reached the lower one. */
  reached: boolean;
  /** When a reached limit stops applying (the next UTC month); null when not reached. */
  resets_at: string | null;
}

export function spendLimitStatus(limits: { account: SpendLimit | null; operator: SpendLimit | null }, spentUsd: number | null, now: Date): SpendLimitStatus {
  const applies = effectiveSpendLimit(limits);
  const reached = applies !== null && spentUsd !== null && spentUsd >= applies.monthly_usd;
  return {
    monthly_usd: limits.account?.monthly_usd ?? null,
    updated_at: limits.account?.updated_at ?? null,
    operator_monthly_usd: limits.operator?.monthly_usd ?? null,
    month: monthOf(now),
    spent_usd: spentUsd,
    remaining_usd: applies !== null && spentUsd !== null ? Math.max(0, Math.round((applies.monthly_usd - spentUsd) * 1e6) / 1e6) : null,
    reached,
    resets_at: reached ? nextMonthStart(now) : null,
  };
}
