// The `clipag serve` processes running on a local data folder: each keeps a record in `<data>/servers/`
// while it runs, so that one starting later can tell whether another may be creating jobs there (a job
// between its create and its send is not one a stopped server left unsent).
import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hostId, processIsGone } from './lock.ts';
import { PRIVATE_FILE_MODE, mkdirPrivate } from './private.ts';

/** How often a server touches its record in `<data>/servers/`, and how long one of another host untouched counts as running. */
export const SERVER_REFRESH_MS = 10_000;
const SERVER_STALE_MS = 3 * SERVER_REFRESH_MS;
/** A record of another host untouched this long is removed: its server has long ended (or hangs). */
const SERVER_FORGOTTEN_MS = 60 * 60_000;

/** The records of the servers running in this process (tests run several): each is live, whatever its pid says. */
const ownRecords = new Set<string>();

export interface ServerRecord {
  /** Whether another server may be running on the data folder now; records of servers that have ended are removed. */
  othersLive(): Promise<boolean>;
  /** Removes this server's record. Idempotent. */
  remove(): Promise<void>;
}

/**
 * Records this server in `<data>/servers/` ({pid, host}, touched every SERVER_REFRESH_MS), so that a
 * server starting later knows whether another may be creating jobs in the folder. A server killed
 * with -9 leaves its record: its pid is gone (this host, lock.ts processIsGone), or, on a host this
 * one cannot judge (another container on a shared volume), it has not been touched for SERVER_STALE_MS.
 * Best effort: a record that cannot be written is logged, and the others are then taken as running.
 */
export async function registerServer(dataDir: string, warn: (message: string, error: Error) => void): Promise<ServerRecord> {
  const dir = join(dataDir, 'servers');
  const name = `${process.pid}-${randomBytes(4).toString('hex')}.json`;
  const path = join(dir, name);
  try {
    await mkdirPrivate(dir);
    await writeFile(path, JSON.stringify({ pid: process.pid, host: hostId() }), { flag: 'wx', mode: PRIVATE_FILE_MODE });
  } catch (error) {
    warn('could not record this server in its data folder; jobs a stopped server left unsent wait for the queued-job sweep', error as Error);
    return { othersLive: async () => true, remove: async () => undefined };
  }
  ownRecords.add(path);
  const refresh = setInterval(() => {
    const now = new Date();
    utimes(path, now, now).catch(() => undefined);
  }, SERVER_REFRESH_MS);
  refresh.unref();
  return {
    async othersLive() {
      let live = false;
      for (const other of await readdir(dir)) {
        const otherPath = join(dir, other);
        if (other === name || !other.endsWith('.json')) continue;
        if (ownRecords.has(otherPath)) {
          live = true;
          continue;
        }
        const [text, info] = await Promise.all([readFile(otherPath, 'utf8').catch(() => null), stat(otherPath).catch(() => null)]);
        if (text === null || !info) continue; // removed meanwhile: that server has stopped
        let holder: { pid?: unknown; host?: unknown } = {};
        try {
          holder = JSON.parse(text) as typeof holder;
        } catch {
          // Written halfway: judged by its age below.
        }
        const pid = Number.isSafeInteger(holder.pid) && (holder.pid as number) > 0 ? (holder.pid as number) : undefined;
        const host = typeof holder.host === 'string' ? holder.host : undefined;
        // This pid on this host is this process, and not the record's server (its records are in ownRecords).
        const ended = pid !== undefined && host !== undefined && (processIsGone(pid, host) || (host === hostId() && pid === process.pid));
        const untouchedMs = Date.now() - info.mtimeMs;
        if (ended || untouchedMs > SERVER_FORGOTTEN_MS) await rm(otherPath, { force: true }).catch(() => undefined);
        else if ((pid !== undefined && host === hostId()) || untouchedMs < SERVER_STALE_MS) live = true;
      }
      return live;
    },
    async remove() {
      clearInterval(refresh);
      ownRecords.delete(path);
      await rm(path, { force: true }).catch(() => undefined);
    },
  };
}
