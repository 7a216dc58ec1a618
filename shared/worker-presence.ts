// Which workers are up (ADR 0040): each worker keeps a small document at `workers/<id>.json`, written
// when its state changes and at least every WORKER_BEAT_MS, and removed when it stops. The API reads
// the fresh ones to tell a caller whose generation is queued whether a worker is there to take it, or
// the fleet is at zero and one is being started (a few minutes). Nothing here names a job or an owner:
// the documents are about the fleet, and every caller may learn its size.

import { z } from 'zod';
import { readDoc } from './documents.ts';
import type { BlobStore } from './ports.ts';
import { assertValidKey } from './keys.ts';

export const WORKERS_PREFIX = 'workers/';
/** How often a worker rewrites its document while its state stays the same. */
export const WORKER_BEAT_MS = 60_000;
/** A document older than this is a worker that died without removing it (a killed task): not counted. */
export const WORKER_STALE_MS = 3 * WORKER_BEAT_MS;
/** At most this many fresh documents are read (a larger fleet is counted at this size). */
export const MAX_WORKERS_READ = 200;
/** A reading that takes longer than this is given up: a hint must not hold a GET or a POST. */
export const FLEET_READ_TIMEOUT_MS = 500;

/** What the fleet counts: `ready` takes jobs now (polling or running one), `starting` is loading its model. */
export const PRESENCE_STATES = ['starting', 'ready', 'busy'] as const;
export type PresenceState = (typeof PRESENCE_STATES)[number];

export const WorkerPresence = z
  .object({
    v: z.literal(1),
    worker_id: z.string().min(1).max(120),
    state: z.enum(PRESENCE_STATES),
    started_at: z.string(),
    beat_at: z.string(),
  })
  .loose();
export type WorkerPresence = z.infer<typeof WorkerPresence>;

export function workerPresenceKey(workerId: string): string {
  const key = `${WORKERS_PREFIX}${workerId}.json`;
  assertValidKey(key, 'worker id');
  return key;
}

/** The fleet as the API shows it to a caller whose generation waits. */
export interface FleetView {
  /** Workers taking jobs (idle and polling, or running one). */
  workers_ready: number;
  /** Of those, running a job now. */
  workers_busy: number;
  /** Workers started and loading their model: they take jobs within a minute or so. */
  workers_starting: number;
}

/**
 * The fleet from the fresh presence documents. Freshness is the store's own write time (the listing's
 * lastModified, on the store's clock, not a worker's), so stale documents are dropped before any is
 * read, however many a crash left. A document that no longer reads (removed since the listing) is not
 * counted; any other failure fails the reading, which the caller then leaves out rather than report
 * a fleet of zero.
 */
export async function readFleet(blobs: BlobStore, now: Date): Promise<FleetView> {
  const fresh: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await blobs.list(WORKERS_PREFIX, cursor === undefined ? {} : { cursor });
    for (const item of page.items) {
      if (item.key.endsWith('.json') && Math.abs(now.getTime() - item.lastModified.getTime()) <= WORKER_STALE_MS) fresh.push(item.key);
    }
    cursor = page.cursor;
  } while (cursor !== undefined && fresh.length < MAX_WORKERS_READ);
  const fleet: FleetView = { workers_ready: 0, workers_busy: 0, workers_starting: 0 };
  const documents = await Promise.all(fresh.slice(0, MAX_WORKERS_READ).map((key) => blobs.get(key)));
  for (const object of documents) {
    if (!object) continue;
    let presence: WorkerPresence;
    try {
      presence = readDoc(WorkerPresence, object.body, object.key);
    } catch (error) {
      // A newer worker's document (a later format, a state this version does not know) is a worker all
      // the same: counted as none, a live fleet would read as a cold start. The reading fails instead.
      if (isNewerPresence(object.body, object.key)) throw new Error(`worker presence ${object.key} is of a newer version: this API cannot count it`, { cause: error });
      continue; // damaged: no worker this version can know of
    }
    if (presence.state === 'starting') fleet.workers_starting++;
    else {
      fleet.workers_ready++;
      if (presence.state === 'busy') fleet.workers_busy++;
    }
  }
  return fleet;
}

/** Just the version and state of a presence document, to tell a newer one from a damaged one. */
const PresenceVersion = z.object({ v: z.number(), state: z.unknown() }).loose();

function isNewerPresence(bytes: Uint8Array, key: string): boolean {
  let seen: z.infer<typeof PresenceVersion>;
  try {
    seen = readDoc(PresenceVersion, bytes, key);
  } catch {
    return false;
  }
  return seen.v > 1 || (seen.v === 1 && typeof seen.state === 'string' && !(PRESENCE_STATES as readonly string[]).includes(seen.state));
}

/**
 * One fleet reading (`read`, readFleet on a store) per `ttlMs`: a poll loop of many callers lists the
 * prefix once in that time. Each reading has FLEET_READ_TIMEOUT_MS; one that failed or took too long
 * is told to `onFailure` once and remembered for `failureTtlMs`, so a store that fails is not asked
 * again on every GET.
 */
export function cachedFleet(
  read: (now: Date) => Promise<FleetView>,
  clock: () => Date,
  options: { ttlMs?: number; failureTtlMs?: number; timeoutMs?: number; onFailure?: (error: unknown) => void } = {},
): () => Promise<FleetView> {
  const ttlMs = options.ttlMs ?? 15_000;
  const failureTtlMs = options.failureTtlMs ?? 5_000;
  const timeoutMs = options.timeoutMs ?? FLEET_READ_TIMEOUT_MS;
  let cached: { at: number; value: Promise<FleetView>; failed: boolean } | undefined;
  return () => {
    const now = clock();
    const age = cached ? now.getTime() - cached.at : Infinity;
    if (!cached || age < 0 || age > (cached.failed ? failureTtlMs : ttlMs)) {
      let timer: NodeJS.Timeout | undefined;
      const value = Promise.race([
        read(now),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the workers' presence was not read within ${timeoutMs} ms`)), timeoutMs);
          timer.unref?.();
        }),
      ]).finally(() => clearTimeout(timer));
      const entry = { at: now.getTime(), value, failed: false };
      cached = entry;
      value.catch((error: unknown) => {
        entry.failed = true;
        options.onFailure?.(error);
      });
    }
    return cached.value;
  };
}

/**
 * Removes presence documents older than `olderThanMs` (default a day): what the bucket's lifecycle rule
 * does in AWS, for a local data folder, where a `clipag serve` killed without its stop leaves its own.
 */
export async function removeStalePresence(blobs: BlobStore, now: Date, olderThanMs = 86_400_000): Promise<number> {
  let removed = 0;
  let cursor: string | undefined;
  do {
    const page = await blobs.list(WORKERS_PREFIX, cursor === undefined ? {} : { cursor });
    for (const item of page.items) {
      if (now.getTime() - item.lastModified.getTime() > olderThanMs) {
        await blobs.delete(item.key);
        removed++;
      }
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  return removed;
}

/** What a caller whose generation waits is told of the fleet, in words. */
export function fleetNote(fleet: FleetView, options: { scales?: boolean } = {}): string {
  // A fleet that does not scale (clipag serve: its one worker, in its own process) is told as it is.
  const scales = options.scales ?? true;
  const free = fleet.workers_ready - fleet.workers_busy;
  if (free > 0) return `${free === 1 ? 'a worker is' : `${free} workers are`} free: the generation starts within seconds`;
  if (fleet.workers_ready > 0) {
    const all = fleet.workers_ready === 1 ? 'the one worker is' : `all ${fleet.workers_ready} workers are`;
    return `${all} running other generations: this one starts when one is free${fleet.workers_starting > 0 ? `, or when the ${fleet.workers_starting === 1 ? 'worker' : `${fleet.workers_starting} workers`} starting now ${fleet.workers_starting === 1 ? 'is' : 'are'} ready` : scales ? ' (while generations wait, more workers are started up to the deployment\'s maximum, which takes a few minutes)' : ''}`;
  }
  if (fleet.workers_starting > 0) return `${fleet.workers_starting === 1 ? 'a worker is' : `${fleet.workers_starting} workers are`} starting (loading the model): the generation starts in a minute or two`;
  if (!scales) return "no worker is running: this server's worker has stopped or is unhealthy (its log says why); the generation starts when one runs again";
  return 'no worker is running: one is started when generations wait, which takes a few minutes (a machine boots and loads the model); the generation starts then';
}
