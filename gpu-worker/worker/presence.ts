// The worker's presence document (ADR 0040, shared/worker-presence.ts): written when the worker's
// state changes and every WORKER_BEAT_MS while it stays, removed when the worker stops. A write that
// fails is logged (once per run of failures) and tried again at the next beat: the presence is a hint
// to callers, never a reason to stop taking jobs.

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { BlobStore } from '../../shared/ports.ts';
import { WORKER_BEAT_MS, workerPresenceKey, type PresenceState, type WorkerPresence } from '../../shared/worker-presence.ts';
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

export function startPresence(opts: { blobs: BlobStore; workerId?: string; clock?: () => Date; beatMs?: number; log: Logger }): Presence {
  const clock = opts.clock ?? (() => new Date());
  const workerId = opts.workerId ?? newWorkerId();
  const key = workerPresenceKey(workerId);
  const startedAt = clock().toISOString();
  let current: PresenceState | null = 'starting';
  let failing = false;
  let stopped: Promise<void> | undefined;
  // One write at a time, in order: a removal never lands before a write queued ahead of it.
  let chain: Promise<void> = Promise.resolve();
  const enqueue = (step: () => Promise<void>) => {
    chain = chain.then(step).then(
      () => {
        if (failing) opts.log.info('worker presence written again', { key });
        failing = false;
      },
      (error: unknown) => {
        if (!failing) opts.log.warn('worker presence not written; tried again at the next beat', { key, error: String(error) });
        failing = true;
      },
    );
  };
  const write = () =>
    enqueue(async () => {
      if (current === null || stopped) return;
      const doc: WorkerPresence = { v: 1, worker_id: workerId, state: current, started_at: startedAt, beat_at: clock().toISOString() };
      await opts.blobs.put(key, new TextEncoder().encode(JSON.stringify(doc)), { contentType: 'application/json' });
    });
  const remove = () => enqueue(() => opts.blobs.delete(key));
  write();
  const beat = setInterval(write, opts.beatMs ?? WORKER_BEAT_MS);
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
        remove();
        await chain;
      })();
      return stopped;
    },
  };
}
