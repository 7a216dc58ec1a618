// The worker's presence document (ADR 0040, shared/worker-presence.ts): written when the worker's
// state changes and every WORKER_BEAT_MS while it stays, removed when the worker stops. A write that
// fails is logged (once per run of failures) and tried again at the next beat: the presence is a hint
// to callers, never a reason to stop taking jobs.

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { BlobStore } from '../../shared/ports.ts';
import { WORKER_BEAT_MS, specReads, workerPresenceKey, type PresenceState, type WorkerPresence } from '../../shared/worker-presence.ts';
import type { Logger, WorkerState } from './worker.ts';

export interface Presence {
  /** The worker's state changed. */
  state(state: WorkerState): void;
  /** Stops the beat and removes the document (after any write in flight). Idempotent. */
  stop(): Promise<void>;
}

/** The fleet's word for a worker state; null: no longer taking jobs (its document goes). */
export function presenceStateOf(state: WorkerState): PresenceState | null {
  switch (state) {
    case 'idle':
    case 'warming':
      return 'starting';
    case 'polling':
      return 'ready';
    case 'running':
      return 'busy';
    case 'draining':
    case 'stopped':
      return null;
  }
}

/** A name for this process's document: the host (an ECS task's own), the pid and a random tail. */
export function newWorkerId(): string {
  const host = hostname().replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 60) || 'worker';
  return `${host}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** How long `stop()` waits for the document's removal: a store that hangs must not hold the worker's stop. */
export const PRESENCE_STOP_WAIT_MS = 5_000;

export function startPresence(opts: { blobs: BlobStore; workerId?: string; clock?: () => Date; beatMs?: number; stopWaitMs?: number; log: Logger }): Presence {
  const clock = opts.clock ?? (() => new Date());
  const workerId = opts.workerId ?? newWorkerId();
  const key = workerPresenceKey(workerId);
  const startedAt = clock().toISOString();
  // What this worker reads of a stored request: the API tells a generation only a newer worker runs so.
  const reads = specReads();
  let current: PresenceState | null = 'starting';
  let failing = false;
  let stopped: Promise<void> | undefined;
  // One write at a time, in order: a removal never lands before a write queued ahead of it.
  let chain: Promise<void> = Promise.resolve();
  // A write waiting its turn writes the state as it is then: changes in between need no write of their own.
  let writeWaiting = false;
  // Whether the last step that landed was a removal: the beat then has nothing to do.
  let removed = false;
  const enqueue = (step: () => Promise<void>, what: string) => {
    chain = chain.then(step).then(
      () => {
        if (failing) opts.log.info('worker presence written again', { key });
        failing = false;
      },
      (error: unknown) => {
        if (!failing) opts.log.warn(`worker presence not ${what}`, { key, error: String(error) });
        failing = true;
      },
    );
  };
  const write = () => {
    if (writeWaiting) return;
    writeWaiting = true;
    enqueue(async () => {
      writeWaiting = false;
      if (current === null || stopped) return;
      removed = false;
      const doc: WorkerPresence = { v: 1, worker_id: workerId, state: current, started_at: startedAt, beat_at: clock().toISOString(), reads };
      await opts.blobs.put(key, new TextEncoder().encode(JSON.stringify(doc)), { contentType: 'application/json' });
    }, 'written; tried again at the next beat');
  };
  // A removal that fails is tried again at the next beat while the process lives; until then (and for
  // good, if it ends first) the API stops counting the document 3 minutes after its last write.
  const remove = () =>
    enqueue(async () => {
      await opts.blobs.delete(key);
      removed = true;
    }, 'removed; the API stops counting it 3 minutes after its last write');
  write();
  const beat = setInterval(() => (current !== null ? write() : removed ? undefined : remove()), opts.beatMs ?? WORKER_BEAT_MS);
  beat.unref();
  return {
    state(state) {
      const next = presenceStateOf(state);
      if (next === current || stopped) return;
      current = next;
      if (next === null) remove();
      else write();
    },
    stop() {
      stopped ??= (async () => {
        clearInterval(beat);
        current = null;
        remove();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([chain, new Promise<void>((resolve) => (timer = setTimeout(resolve, opts.stopWaitMs ?? PRESENCE_STOP_WAIT_MS)))]);
        clearTimeout(timer);
      })();
      return stopped;
    },
  };
}
