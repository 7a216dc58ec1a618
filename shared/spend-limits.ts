// An account's monthly spend limit (ADR 0033). One small document per owner,
// `spend-limits/<owner>.json`, written by the account itself (PUT and DELETE /v1/spend-limit) and read
// by the API before each new generation: once the month's cost, as GET /v1/usage shows it, has reached
// the limit, a new generation is refused (402 spend_limit_reached) until the limit is raised or removed,
// or the next UTC month begins. Generations already queued or running still run.
import { z } from 'zod';
import { readDoc } from './documents.ts';
import { spendLimitKey } from './keys.ts';
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

/** The owner's limit; null when it set none. Throws CorruptDocumentError for a document that does not read. */
export async function readSpendLimit(blobs: BlobStore, owner: string): Promise<SpendLimit | null> {
  const key = spendLimitKey(owner);
  const found = await blobs.get(key);
  return found ? readDoc(SpendLimitDoc, found.body, key) : null;
}

/** Sets (or replaces) the owner's limit; the last write wins, as for any setting. */
export async function putSpendLimit(blobs: BlobStore, owner: string, monthlyUsd: number, now: Date): Promise<SpendLimit> {
  const doc: SpendLimit = { v: 1, monthly_usd: monthlyUsd, updated_at: now.toISOString() };
  await blobs.put(spendLimitKey(owner), new TextEncoder().encode(JSON.stringify(doc)), { contentType: 'application/json' });
  return doc;
}

/** Removes the owner's limit; true when there was one (a document that does not read counts as one). */
export async function deleteSpendLimit(blobs: BlobStore, owner: string): Promise<boolean> {
  const key = spendLimitKey(owner);
  const existed = (await blobs.head(key)) !== null;
  await blobs.delete(key);
  return existed;
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

/** The limit as the API shows it: the figures of the month, and whether a new generation is refused. */
export interface SpendLimitStatus {
  monthly_usd: number | null;
  updated_at: string | null;
  month: string;
  spent_usd: number | null;
  remaining_usd: number | null;
  /** Whether new generations are refused now: the limit is set, and the month's cost is known and has reached it. */
  reached: boolean;
  /** When a reached limit stops applying (the next UTC month); null when not reached. */
  resets_at: string | null;
}

export function spendLimitStatus(limit: SpendLimit | null, spentUsd: number | null, now: Date): SpendLimitStatus {
  const reached = limit !== null && spentUsd !== null && spentUsd >= limit.monthly_usd;
  return {
    monthly_usd: limit?.monthly_usd ?? null,
    updated_at: limit?.updated_at ?? null,
    month: monthOf(now),
    spent_usd: spentUsd,
    remaining_usd: limit !== null && spentUsd !== null ? Math.max(0, Math.round((limit.monthly_usd - spentUsd) * 1e6) / 1e6) : null,
    reached,
    resets_at: reached ? nextMonthStart(now) : null,
  };
}
