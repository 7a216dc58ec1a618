// Which workers are up (ADR 0040): each worker keeps a small document at `workers/<id>.json`, written
// when its state changes and at least every WORKER_BEAT_MS, and removed when it stops. The API reads
// the fresh ones to tell a caller whose generation is queued whether a worker is there to take it, or
// the fleet is at zero and one is being started (a few minutes). Nothing here names a job or an owner:
// the documents are about the fleet, and every caller may learn its size.

import { z } from 'zod';
import type { BlobStore } from './ports.ts';
import { assertValidKey } from './keys.ts';
import { listKeys } from './prefix.ts';

export const WORKERS_PREFIX = 'workers/';
/** How often a worker rewrites its document while its state stays the same. */
export const WORKER_BEAT_MS = 60_000;
/** A document older than this is a worker that died without removing it (a killed task): not counted. */
export const WORKER_STALE_MS = 3 * WORKER_BEAT_MS;
/** At most this many documents are read (a fleet larger than this is reported at this size, "or more"). */
export const MAX_WORKERS_READ = 50;

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
 * The fleet from the fresh presence documents (beat within WORKER_STALE_MS of `now`). A document that
 * does not read is not counted; the listing's own failure is the caller's to handle.
 */
export async function readFleet(blobs: BlobStore, now: Date): Promise<FleetView> {
  const fleet: FleetView = { workers_ready: 0, workers_busy: 0, workers_starting: 0 };
  const page = await listKeys(blobs, WORKERS_PREFIX, { limit: MAX_WORKERS_READ });
  const documents = await Promise.all(page.keys.filter((key) => key.endsWith('.json')).map((key) => blobs.get(key).catch(() => null)));
  for (const object of documents) {
    if (!object) continue;
    let presence: WorkerPresence;
    try {
      presence = WorkerPresence.parse(JSON.parse(Buffer.from(object.body).toString('utf8')));
    } catch {
      continue;
    }
    const beat = Date.parse(presence.beat_at);
    // A worker's clock may run a little ahead of the API's: a beat "from the future" is fresh.
    if (!Number.isFinite(beat) || now.getTime() - beat > WORKER_STALE_MS) continue;
    if (presence.state === 'starting') fleet.workers_starting++;
    else {
      fleet.workers_ready++;
      if (presence.state === 'busy') fleet.workers_busy++;
    }
  }
  return fleet;
}

/** Keeps one fleet reading per `ttlMs` (a poll loop of many callers lists the prefix once in that time). */
export function cachedFleet(blobs: BlobStore, clock: () => Date, ttlMs = 15_000): () => Promise<FleetView> {
  let cached: { at: number; value: Promise<FleetView> } | undefined;
  return () => {
    const now = clock();
    if (!cached || now.getTime() - cached.at > ttlMs || now.getTime() < cached.at) {
      const value = readFleet(blobs, now);
      cached = { at: now.getTime(), value };
      value.catch(() => {
        if (cached?.value === value) cached = undefined;
      });
    }
    return cached.value;
  };
}

/** What a caller whose generation waits is told of the fleet, in words. */
export function fleetNote(fleet: FleetView): string {
  const free = fleet.workers_ready - fleet.workers_busy;
  if (free > 0) return `${free === 1 ? 'a worker is' : `${free} workers are`} free: the generation starts within seconds`;
  if (fleet.workers_ready > 0) {
    const all = fleet.workers_ready === 1 ? 'the one worker is' : `all ${fleet.workers_ready} workers are`;
    return `${all} running other generations: this one starts when one is free${fleet.workers_starting > 0 ? `, or when the ${fleet.workers_starting === 1 ? 'worker' : `${fleet.workers_starting} workers`} starting now ${fleet.workers_starting === 1 ? 'is' : 'are'} ready` : ' (more workers are started while generations wait, which takes a few minutes)'}`;
  }
  if (fleet.workers_starting > 0) return `${fleet.workers_starting === 1 ? 'a worker is' : `${fleet.workers_starting} workers are`} starting (loading the model): the generation starts in a minute or two`;
  return 'no worker is running: one is started when generations wait, which takes a few minutes (a machine boots and loads the model); the generation starts then';
}
