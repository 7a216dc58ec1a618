// Which workers are up (ADR 0040): each worker keeps a small document at `workers/<id>.json`, written
// when its state changes and at least every WORKER_BEAT_MS, and removed when it stops. The API reads
// the fresh ones to tell a caller whose generation is queued whether a worker is there to take it, or
// the fleet is at zero and one is being started (a few minutes). Nothing here names a job or an owner:
// the documents are about the fleet, and every caller may learn its size.

import { z } from 'zod';
import { readDoc } from './documents.ts';
import type { BlobStore } from './ports.ts';
import { assertValidKey } from './keys.ts';
import { OUTPUT_FORMATS } from './output-format.ts';
import { GenerationSpec, WEBHOOK_EVENTS } from './schemas/generation.ts';

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

/**
 * What a worker reads of a stored request (its spec): the keys, and the values of the fields whose
 * values a later version may add to. A queued generation whose spec holds something no running worker
 * reads waits for an upgraded one (ADR 0030): the API says so instead of "starts within seconds".
 * Optional: a worker from before it says nothing, and is taken to read everything (as before).
 */
export const SpecReads = z
  .object({
    spec_keys: z.array(z.string().max(64)).max(200),
    values: z.record(z.string().max(64), z.array(z.string().max(64)).max(100)),
  })
  .loose();
export type SpecReads = z.infer<typeof SpecReads>;

export const WorkerPresence = z
  .object({
    v: z.literal(1),
    worker_id: z.string().min(1).max(120),
    state: z.enum(PRESENCE_STATES),
    started_at: z.string(),
    beat_at: z.string(),
    // A `reads` this version cannot read (a newer worker's, larger or otherwise shaped) is left out, the
    // worker counted as one that may read anything: never a document, and a worker, lost to it.
    reads: SpecReads.optional().catch(undefined),
  })
  .loose();
export type WorkerPresence = z.infer<typeof WorkerPresence>;

/**
 * What this version reads of a stored spec: its schema's keys, and the values of its open lists. A
 * field whose values grow (a new output format, a new webhook event) belongs here when it is added.
 */
export function specReads(): SpecReads {
  return { spec_keys: Object.keys(GenerationSpec.shape), values: { output_format: [...OUTPUT_FORMATS], webhook_events: [...WEBHOOK_EVENTS] } };
}

/** What of `spec` a worker that `reads` does not read ("output_format: \"webp\"", "guidance"); empty when it reads all of it. */
export function unreadIn(spec: Readonly<Record<string, unknown>>, reads: SpecReads): string[] {
  const unread: string[] = [];
  for (const [key, value] of Object.entries(spec)) {
    if (value === undefined) continue;
    if (!reads.spec_keys.includes(key)) {
      unread.push(key);
      continue;
    }
    const known = Object.hasOwn(reads.values, key) ? reads.values[key] : undefined;
    if (!known) continue;
    for (const v of Array.isArray(value) ? value : [value]) if (typeof v === 'string' && !known.includes(v)) unread.push(`${key}: ${JSON.stringify(v)}`);
  }
  return unread;
}

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

/** A fleet reading: the counts, and what each counted worker reads (null: a worker from before `reads`). Not shown as such. */
export interface FleetReading extends FleetView {
  readers?: Array<{ state: PresenceState; reads: SpecReads | null }>;
}

/** The counts alone, as a view shows them. */
export function fleetCounts(fleet: FleetView): FleetView {
  return { workers_ready: fleet.workers_ready, workers_busy: fleet.workers_busy, workers_starting: fleet.workers_starting };
}

/**
 * What of a queued generation's spec no counted worker reads: empty when some worker reads all of it,
 * or some may (one that does not say what it reads), or the reading has no workers or none listed.
 */
export function unreadByFleet(fleet: FleetReading, spec: Readonly<Record<string, unknown>>): string[] {
  const readers = fleet.readers ?? [];
  if (readers.length === 0 || readers.some((r) => r.reads === null)) return [];
  let least: string[] | undefined;
  for (const r of readers) {
    const unread = unreadIn(spec, r.reads!);
    if (unread.length === 0) return [];
    if (least === undefined || unread.length < least.length) least = unread;
  }
  return least ?? [];
}

/**
 * The fleet from the fresh presence documents. Freshness is the store's own write time (the listing's
 * lastModified, on the store's clock, not a worker's), so stale documents are dropped before any is
 * read, however many a crash left. A document that no longer reads (removed since the listing) is not
 * counted; any other failure fails the reading, which the caller then leaves out rather than report
 * a fleet of zero.
 */
export async function readFleet(blobs: BlobStore, now: Date): Promise<FleetReading> {
  const fresh: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await blobs.list(WORKERS_PREFIX, cursor === undefined ? {} : { cursor });
    for (const item of page.items) {
      if (item.key.endsWith('.json') && Math.abs(now.getTime() - item.lastModified.getTime()) <= WORKER_STALE_MS) fresh.push(item.key);
    }
    cursor = page.cursor;
  } while (cursor !== undefined && fresh.length < MAX_WORKERS_READ);
  const fleet: FleetReading & { readers: NonNullable<FleetReading['readers']> } = { workers_ready: 0, workers_busy: 0, workers_starting: 0, readers: [] };
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
    fleet.readers.push({ state: presence.state, reads: presence.reads ?? null });
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
  read: (now: Date) => Promise<FleetReading>,
  clock: () => Date,
  options: { ttlMs?: number; failureTtlMs?: number; timeoutMs?: number; onFailure?: (error: unknown) => void } = {},
): () => Promise<FleetReading> {
  const ttlMs = options.ttlMs ?? 15_000;
  const failureTtlMs = options.failureTtlMs ?? 5_000;
  const timeoutMs = options.timeoutMs ?? FLEET_READ_TIMEOUT_MS;
  let cached: { at: number; value: Promise<FleetReading>; failed: boolean } | undefined;
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

/** What a caller whose generation waits is told of the fleet, in words; `unread`: what of its request no worker running reads (unreadByFleet). */
export function fleetNote(fleet: FleetView, options: { scales?: boolean; unread?: readonly string[] } = {}): string {
  if (options.unread?.length && fleet.workers_ready + fleet.workers_starting > 0) {
    return `no worker running now reads this generation's request (${options.unread.slice(0, 3).join(', ')}): the service is being deployed or rolled back, and it starts once a worker of the version that made it runs`;
  }
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
