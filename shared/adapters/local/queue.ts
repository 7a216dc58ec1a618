import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { readFile, readdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { PreconditionFailedError, ValidationError } from '../../errors.ts';
import { newId } from '../../ids.ts';
import type { JobQueue, ReceivedMessage, ReceiveOptions, SendOptions } from '../../ports.ts';
import { checkQueueGroup } from '../../schemas/queue.ts';
import { removeStaleFiles, renameOver, syncDir, writeFileDurable } from './durable.ts';
import { hostId, KeyedMutex, processIsGone, withDirLock } from './lock.ts';
import { mkdirPrivate } from './private.ts';

export interface LocalJobQueueOptions {
  /** The queue's folder; messages live in `<dir>/messages`, dead letters in `<dir>/dlq`. */
  dir: string;
  /** Default visibility timeout for received messages (default 30). */
  visibilitySec?: number;
  /** A message received this many times without an ack goes to the dead-letter queue instead
   * of being delivered again (default 3, like the SQS redrive policy). `Infinity`: never. */
  maxReceives?: number;
  /** Whether to keep a dead-letter queue (default true). */
  deadLetter?: boolean;
  /**
   * How long a message is kept from its send (SQS's MessageRetentionPeriod); then a receive that meets
   * it drops it. Default: for ever (local queued jobs wait for a worker however long it takes). The
   * dead-letter queue keeps its letters DEAD_LETTER_RETENTION_SEC from their move there.
   */
  retentionSec?: number;
  /** How often a long poll re-reads the disk, for messages sent by another process (default 200 ms). */
  pollIntervalMs?: number;
  /** Hears about unreadable message files moved to `<dir>/corrupt` (default: a JSON line on stderr). */
  log?: { warn(msg: string, fields?: Record<string, unknown>): void };
}

const StoredMessage = z
  .object({
    id: z.string().regex(/^[0-9a-z]{26}$/),
    body: z.string().min(1),
    /** When it came to this queue (a dead letter: when it was moved here); its retention counts from it. */
    sentAt: z.number().finite(),
    /**
     * When it was first sent, kept through a dead-letter move as SQS keeps a message's SentTimestamp:
     * what a receive reports. Every file this version writes has it; one without was written before
     * dead letters counted from their move (its `sentAt` may be the first send), see `stampLegacy`.
     */
    firstSentAt: z.number().finite().optional(),
    visibleAt: z.number().finite(),
    receiveCount: z.number().int().min(0),
    /** Changes on every delivery; a receipt names the delivery it came from. */
    deliveryToken: z.string().regex(/^[0-9a-f]{24}$/).nullable(),
    /** The process that received it last (pid and lock.ts hostId): one that has ended holds it no longer. */
    holder: z.object({ pid: z.number().int().positive(), host: z.string().max(1000) }).optional(),
    /** The tenant it was sent for (SendOptions.group); absent: its own. */
    group: z.string().regex(/^[\x21-\x7e]{1,128}$/).optional(),
  })
  // Loose from here on: a message file a newer clipag wrote, with a field this one does not know, is
  // delivered, not moved aside as damaged (ADR 0030). (A version before `group` still moves such a file aside.)
  .loose();
type StoredMessage = z.output<typeof StoredMessage>;

const stderrLog = {
  warn(msg: string, fields: Record<string, unknown> = {}): void {
    process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'warn', component: 'local-queue', msg, ...fields })}\n`);
  },
};

const MAX_BODY_BYTES = 256 * 1024;

/**
 * How long the dead-letter queue keeps a letter: 14 days, as the AWS one does (cdk/lib/stateful-stack.ts,
 * the longest SQS allows). Kept for ever, a settled letter was received and released again by every
 * dead-letter sweep, a minute apart, until someone ran `clipag dlq purge`. Counted from the letter's
 * move to the dead-letter queue, not from its first send as SQS counts it: the local job queue keeps
 * messages for ever (the AWS one 4 days), so a job queued over 14 days before it was dead-lettered lost
 * its letter before the worker's dead-letter sweep, the only thing that fails it locally, could see it.
 */
export const DEAD_LETTER_RETENTION_SEC = 14 * 24 * 3600;

/**
 * Fair delivery across tenants (SendOptions.group), as SQS fair queues do: a receive looks this many
 * visible messages past the oldest (twice an owner's default active-job limit) for one of a tenant
 * that has fewer messages in flight and fewer delivered lately, so that one tenant's backlog does not
 * hold another's job behind all of it. Without groups it reads no further than before.
 */
const FAIR_LOOKAHEAD = 200;
/** How long a delivery counts against its tenant's share (SQS: a tenant stays noisy up to 5 minutes). */
const FAIR_WINDOW_MS = 5 * 60_000;

/** Long-poll waiters per queue folder in this process, woken when a message becomes visible. */
const waiters = new Map<string, Set<() => void>>();
function notify(dir: string): void {
  for (const wake of waiters.get(dir) ?? []) wake();
}

const mutex = new KeyedMutex();

/**
 * A durable queue on disk, one JSON file per message, with SQS semantics: visibility timeouts,
 * redelivery with an incremented receive count, dead-letter after `maxReceives`, and long polling.
 * All state (including in-flight visibility deadlines) is on disk, so a new instance on the same
 * folder, after a crash or restart, sees every message and gets in-flight ones back when their
 * timeout passes. Stricter than SQS in one way: a receipt from an earlier delivery is refused
 * (PreconditionFailedError), so a worker whose lease expired cannot ack another worker's delivery.
 */
export class LocalJobQueue implements JobQueue {
  readonly deadLetter: LocalJobQueue | undefined;
  private readonly dir: string;
  private readonly visibilitySec: number;
  private readonly maxReceives: number;
  private readonly retentionMs: number;
  private readonly pollIntervalMs: number;
  private readonly log: NonNullable<LocalJobQueueOptions['log']>;
  /** Removal of temp files left by crashed writes, started when the queue opens (tests await it). */
  private readonly tmpSwept: Promise<void>;
  /** When this instance delivered each tenant's messages within FAIR_WINDOW_MS (oldest first). */
  private readonly deliveredAt = new Map<string, number[]>();
  /**
   * Message files this instance parsed, by id, with the identity of the file they came from (inode,
   * size, change time): a receive that looks ahead past a busy tenant's backlog stats those files
   * instead of reading and parsing each again (every write is a new file renamed into place).
   */
  private readonly parsedFiles = new Map<string, { ino: number; size: number; ctimeMs: number; message: StoredMessage }>();

  constructor(options: LocalJobQueueOptions) {
    this.dir = resolve(options.dir);
    this.log = options.log ?? stderrLog;
    // In the background and best effort: opening the queue never waits for or fails on it.
    this.tmpSwept = removeStaleFiles(join(this.dir, 'tmp')).catch(() => undefined);
    this.visibilitySec = options.visibilitySec ?? 30;
    this.maxReceives = options.maxReceives ?? 3;
    const retentionSec = options.retentionSec ?? Infinity;
    if (!(retentionSec === Infinity || (Number.isFinite(retentionSec) && retentionSec > 0))) {
      throw new ValidationError('retentionSec must be a positive number of seconds or Infinity', 'retentionSec');
    }
    this.retentionMs = retentionSec * 1000;
    this.pollIntervalMs = options.pollIntervalMs ?? 200;
    checkVisibility(this.visibilitySec);
    if (!(this.maxReceives === Infinity || (Number.isInteger(this.maxReceives) && this.maxReceives >= 1))) {
      throw new ValidationError('maxReceives must be a positive integer or Infinity', 'maxReceives');
    }
    this.deadLetter =
      options.deadLetter === false
        ? undefined
        : new LocalJobQueue({
            dir: join(this.dir, 'dlq'),
            visibilitySec: this.visibilitySec,
            maxReceives: Infinity,
            deadLetter: false,
            retentionSec: DEAD_LETTER_RETENTION_SEC,
            pollIntervalMs: this.pollIntervalMs,
            log: this.log,
          });
  }

  private get messagesDir(): string {
    return join(this.dir, 'messages');
  }
  private messagePath(id: string): string {
    return join(this.messagesDir, `${id}.json`);
  }

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    return mutex.run(this.dir, () => withDirLock(join(this.dir, 'lock'), fn));
  }

  private get corruptDir(): string {
    return join(this.dir, 'corrupt');
  }

  private async write(message: StoredMessage): Promise<void> {
    const tmpDir = join(this.dir, 'tmp');
    await mkdirPrivate(tmpDir);
    await mkdirPrivate(this.messagesDir);
    const tmp = join(tmpDir, `${randomBytes(12).toString('hex')}.tmp`);
    try {
      // fsync before the rename: a power loss leaves the old message or the new one, never an empty file.
      await writeFileDurable(tmp, JSON.stringify(message));
      await renameOver(tmp, this.messagePath(message.id));
    } catch (error) {
      // A partial temp file holds the very space a full disk ran out of, and the sweep of old temp
      // files runs only when a queue opens: removed now, best effort, so the caller sees the write's error.
      await rm(tmp, { force: true }).catch(() => undefined);
      throw error;
    }
    await syncDir(this.messagesDir);
  }

  /**
   * The stored message, or null when there is none. An unreadable file (zero bytes after a crash,
   * truncated, hand-edited, off-schema) is moved to `<dir>/corrupt/` and logged when `quarantine`
   * (callers holding the queue lock), else skipped: one bad file must never stop the queue.
   */
  private async read(id: string, quarantine = true): Promise<StoredMessage | null> {
    const path = this.messagePath(id);
    let text: string;
    let problem: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      // A folder (or other non-file) under a message's name is unreadable like a damaged file: moved aside.
      if (code !== 'EISDIR') throw error;
      text = '';
      problem = 'a folder, not a file';
    }
    try {
      if (problem !== undefined) throw new Error(problem);
      const parsed = StoredMessage.safeParse(JSON.parse(text));
      if (parsed.success && parsed.data.id === id) return parsed.data;
      problem = parsed.success ? `names message ${parsed.data.id}` : (parsed.error.issues[0]?.message ?? 'invalid');
    } catch (error) {
      problem ??= text.length === 0 ? 'empty file' : `not JSON: ${(error as Error).message}`;
    }
    if (quarantine) {
      const target = join(this.corruptDir, `${id}.${randomBytes(4).toString('hex')}.json`);
      try {
        await mkdirPrivate(this.corruptDir);
        await rename(path, target);
        this.log.warn('unreadable queue message moved aside', { file: path, movedTo: target, problem });
      } catch (error) {
        this.log.warn('unreadable queue message skipped (could not move it aside)', { file: path, problem, error: String(error) });
      }
    }
    return null;
  }

  /**
   * The bodies of every message this queue holds, waiting or in flight, and of its dead letters:
   * what a process starting on the folder checks a job's message against (an SQS queue cannot be
   * listed, so the JobQueue port has no such call). Read without the lock: each file is whole.
   */
  async bodies(): Promise<string[]> {
    const now = Date.now();
    const own = (await this.readAll(false)).filter((m) => !this.expired(m, now)).map((m) => m.body);
    return this.deadLetter ? [...own, ...(await this.deadLetter.bodies())] : own;
  }

  /** Ids of the stored messages, oldest first (ids are time-sortable): one readdir, no file read. */
  private async messageIds(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.messagesDir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    return names
      .filter((name) => name.endsWith('.json'))
      .map((name) => name.slice(0, -5))
      .sort();
  }

  private async readAll(quarantine = true): Promise<StoredMessage[]> {
    const messages: StoredMessage[] = [];
    for (const id of await this.messageIds()) {
      const message = await this.read(id, quarantine);
      if (message) messages.push(message);
    }
    return messages;
  }

  /** `read`, from parsedFiles when the file is the one parsed before. */
  private async readKnown(id: string): Promise<StoredMessage | null> {
    // Sync: a stat is a few microseconds, and a look-ahead makes up to FAIR_LOOKAHEAD of them in a row.
    const st = statSync(this.messagePath(id), { throwIfNoEntry: false });
    const known = this.parsedFiles.get(id);
    if (st && known && known.ino === st.ino && known.size === st.size && known.ctimeMs === st.ctimeMs) return known.message;
    const message = await this.read(id);
    if (message && st) {
      // Kept only if the file parsed is still the one stat saw (a write may have replaced it between).
      const after = statSync(this.messagePath(id), { throwIfNoEntry: false });
      if (after && after.ino === st.ino && after.ctimeMs === st.ctimeMs) this.parsedFiles.set(id, { ino: st.ino, size: st.size, ctimeMs: st.ctimeMs, message });
    } else this.parsedFiles.delete(id);
    return message;
  }

  /**
   * Used by the dead-letter move: keeps the original id, body and first send time; `sentAt` is the
   * move, so the retention counts from it here, and in an older clipag that reads the letter too.
   */
  private async adopt(message: StoredMessage): Promise<void> {
    const now = Date.now();
    await this.locked(() =>
      this.write({ ...message, sentAt: now, firstSentAt: message.firstSentAt ?? message.sentAt, visibleAt: now, receiveCount: 0, deliveryToken: null }),
    );
    notify(this.dir);
  }

  /**
   * A message file written before dead letters counted from their move has no `firstSentAt`, and its
   * `sentAt` may be its first send, weeks before the move: under a retention its clock starts now, when
   * this version first meets it, so it is never dropped early (at most 14 days after an upgrade).
   */
  private async stampLegacy(message: StoredMessage, now: number): Promise<StoredMessage> {
    if (message.firstSentAt !== undefined || this.retentionMs === Infinity) return message;
    const stamped = { ...message, sentAt: now, firstSentAt: message.sentAt };
    try {
      await this.write(stamped);
    } catch {
      // Unstamped, it is kept (`expired` never drops one) and stamped by a later receive.
      return message;
    } finally {
      this.parsedFiles.delete(message.id);
    }
    return stamped;
  }

  async send(body: string, options: SendOptions = {}): Promise<{ messageId: string }> {
    if (typeof body !== 'string' || body.length === 0) throw new ValidationError('message body must be a non-empty string', 'body');
    if (Buffer.byteLength(body) > MAX_BODY_BYTES) throw new ValidationError('message body exceeds 256 KiB', 'body');
    const delaySec = options.delaySec ?? 0;
    if (!Number.isInteger(delaySec) || delaySec < 0 || delaySec > 900) throw new ValidationError('delaySec must be 0..900', 'delaySec');
    if (options.group !== undefined) checkQueueGroup(options.group);
    const now = Date.now();
    const message: StoredMessage = {
      id: newId(now), body, sentAt: now, firstSentAt: now, visibleAt: now + delaySec * 1000, receiveCount: 0, deliveryToken: null,
      ...(options.group !== undefined ? { group: options.group } : {}),
    };
    await this.locked(() => this.write(message));
    if (delaySec === 0) notify(this.dir);
    return { messageId: message.id };
  }

  async receive(options: ReceiveOptions = {}): Promise<ReceivedMessage[]> {
    const max = options.max ?? 1;
    const waitSec = options.waitSec ?? 0;
    const visibilitySec = options.visibilitySec ?? this.visibilitySec;
    if (!Number.isInteger(max) || max < 1 || max > 10) throw new ValidationError('max must be 1..10', 'max');
    if (!(waitSec >= 0 && waitSec <= 20)) throw new ValidationError('waitSec must be 0..20', 'waitSec');
    checkVisibility(visibilitySec);
    const deadline = Date.now() + waitSec * 1000;
    for (;;) {
      const { received, nextVisibleAt } = await this.tryReceive(max, visibilitySec);
      const now = Date.now();
      if (received.length > 0 || now >= deadline) return received;
      const sleepMs = Math.max(1, Math.min(deadline - now, this.pollIntervalMs, (nextVisibleAt ?? Infinity) - now));
      await this.waitForWake(sleepMs);
    }
  }

  /** Each tenant's deliveries by this instance within FAIR_WINDOW_MS, by tenant key (`g:<group>`). */
  private recentDeliveries(now: number): Map<string, number> {
    const counts = new Map<string, number>();
    for (const [group, times] of this.deliveredAt) {
      while (times.length > 0 && times[0]! <= now - FAIR_WINDOW_MS) times.shift();
      if (times.length === 0) this.deliveredAt.delete(group);
      else counts.set(`g:${group}`, times.length);
    }
    return counts;
  }

  private noteDelivery(group: string, now: number): void {
    const times = this.deliveredAt.get(group);
    if (times) times.push(now);
    else this.deliveredAt.set(group, [now]);
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise((resolveWait) => {
      let set = waiters.get(this.dir);
      if (!set) waiters.set(this.dir, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        resolveWait();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  /**
   * Delivers up to `max` visible messages, oldest first among tenants alike (FAIR_LOOKAHEAD). Reads
   * message files in id order only until it has `max` from tenants with nothing in flight or delivered
   * lately (each message without a group is a tenant of its own): it used to read and parse every
   * file under the queue-wide lock (5000 queued: 2.4 s per receive, and every send waited behind it).
   * The files read are the in-flight and delayed ones ahead of the first visible ones, plus `max`, or
   * up to FAIR_LOOKAHEAD more while a busy tenant's messages are ahead. `nextVisibleAt` (when to poll
   * again) is only used when nothing was delivered, and then every file was read.
   */
  private async tryReceive(max: number, visibilitySec: number) {
    const deadLettered: StoredMessage[] = [];
    const result = await this.locked(async () => {
      const now = Date.now();
      const received: ReceivedMessage[] = [];
      let nextVisibleAt: number | undefined;
      const load = this.recentDeliveries(now);
      const candidates: Array<{ message: StoredMessage; orphaned: boolean; tenant: string }> = [];
      const idleTenants = new Set<string>();
      const ids = await this.messageIds();
      const listed = new Set(ids);
      for (const id of this.parsedFiles.keys()) if (!listed.has(id)) this.parsedFiles.delete(id);
      for (const id of ids) {
        if (idleTenants.size >= max || candidates.length >= max + FAIR_LOOKAHEAD) break;
        const known = await this.readKnown(id);
        if (!known) continue;
        const message = await this.stampLegacy(known, now);
        if (this.expired(message, now)) {
          // Past its retention: gone, as SQS drops it (the oldest ids come first, so these are met first).
          await rm(this.messagePath(message.id), { force: true });
          this.parsedFiles.delete(message.id);
          continue;
        }
        const tenant = message.group !== undefined ? `g:${message.group}` : `m:${message.id}`;
        // In flight with a process that has died (a crash, a kill -9): its lease is void now, not at
        // the visibility timeout, so the job does not sit "running" for a minute after a restart.
        const orphaned = message.visibleAt > now && message.holder !== undefined && processIsGone(message.holder.pid, message.holder.host);
        if (message.visibleAt > now && !orphaned) {
          if (message.deliveryToken !== null) load.set(tenant, (load.get(tenant) ?? 0) + 1); // in flight, not just delayed
          nextVisibleAt = Math.min(nextVisibleAt ?? Infinity, message.visibleAt);
          continue;
        }
        if (message.receiveCount >= this.maxReceives && this.deadLetter) {
          deadLettered.push(message);
          continue;
        }
        candidates.push({ message, orphaned, tenant });
        if ((load.get(tenant) ?? 0) === 0) idleTenants.add(tenant);
      }
      // The least busy tenant first, the oldest message among equals; each pick counts against its tenant.
      while (received.length < max && candidates.length > 0) {
        let best = 0;
        for (let i = 1; i < candidates.length; i++) {
          if ((load.get(candidates[i].tenant) ?? 0) < (load.get(candidates[best].tenant) ?? 0)) best = i;
        }
        const [{ message, orphaned, tenant }] = candidates.splice(best, 1);
        load.set(tenant, (load.get(tenant) ?? 0) + 1);
        const delivered: StoredMessage = {
          ...message,
          receiveCount: message.receiveCount + 1,
          visibleAt: now + visibilitySec * 1000,
          deliveryToken: randomBytes(12).toString('hex'),
          holder: { pid: process.pid, host: hostId() },
        };
        await this.write(delivered);
        if (delivered.group !== undefined) this.noteDelivery(delivered.group, now);
        received.push({
          messageId: delivered.id,
          body: delivered.body,
          receipt: `${delivered.id}.${delivered.deliveryToken}`,
          receiveCount: delivered.receiveCount,
          sentAt: new Date(delivered.firstSentAt ?? delivered.sentAt),
          ...(orphaned ? { previousHolderGone: true as const } : {}),
          ...(delivered.group !== undefined ? { group: delivered.group } : {}),
        });
      }
      return { received, nextVisibleAt };
    });
    // Copy to the DLQ before removing here: a crash in between duplicates a dead letter, never loses one.
    for (const message of deadLettered) {
      await this.deadLetter!.adopt(message);
      await this.locked(async () => {
        const current = await this.read(message.id);
        if (current && current.deliveryToken === message.deliveryToken) await rm(this.messagePath(message.id), { force: true });
      });
    }
    return result;
  }

  /** Runs `fn` on the stored message of a live receipt; refuses receipts of earlier deliveries. */
  private async withDelivery(receipt: string, fn: (message: StoredMessage) => Promise<void>): Promise<void> {
    const match = /^([0-9a-z]{26})\.([0-9a-f]{24})$/.exec(receipt);
    if (!match) throw new ValidationError('malformed receipt', 'receipt');
    const [, id, token] = match;
    await this.locked(async () => {
      const message = await this.read(id);
      if (!message) throw new PreconditionFailedError('message no longer exists (already acked or dead-lettered)');
      if (message.deliveryToken !== token) throw new PreconditionFailedError('receipt is from an earlier delivery');
      await fn(message);
    });
  }

  async extendVisibility(receipt: string, visibilitySec: number): Promise<void> {
    checkVisibility(visibilitySec);
    await this.withDelivery(receipt, (message) => this.write({ ...message, visibleAt: Date.now() + visibilitySec * 1000 }));
  }

  async ack(receipt: string): Promise<void> {
    await this.withDelivery(receipt, (message) => rm(this.messagePath(message.id), { force: true }));
  }

  async release(receipt: string): Promise<void> {
    await this.withDelivery(receipt, (message) => this.write({ ...message, visibleAt: Date.now() }));
    notify(this.dir);
  }

  /** Messages currently stored (visible, delayed or in flight); for tests and operators. */
  async depth(): Promise<number> {
    const now = Date.now();
    return (await this.readAll(false)).filter((m) => !this.expired(m, now)).length; // unlocked: skips unreadable files, moves nothing
  }

  /**
   * Past its retention (counted from its coming to this queue). One in flight is not, until its
   * holder's lease ends: its ack or release must still find it. Nor is one written before dead letters
   * counted from their move, until a receive has stamped it (`stampLegacy`).
   */
  private expired(message: StoredMessage, now: number): boolean {
    const inFlight = message.visibleAt > now && message.deliveryToken !== null;
    return now - message.sentAt >= this.retentionMs && !inFlight && message.firstSentAt !== undefined;
  }

  /** Files moved to `<dir>/corrupt` so far (operators inspect or delete them). */
  async corruptFiles(): Promise<string[]> {
    return readdir(this.corruptDir).catch(() => []);
  }
}

function checkVisibility(sec: number): void {
  if (!(Number.isFinite(sec) && sec >= 0 && sec <= 43_200)) throw new ValidationError('visibility must be 0..43200 s', 'visibilitySec');
}
