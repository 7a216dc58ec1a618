// The `clipag serve` processes running on a local data folder: each keeps a record in `<data>/servers/`
// while it runs, so that one starting later can tell whether another may be creating jobs there (a job
// between its create and its send is not one a stopped server left unsent).
import { randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hostId, processIsGone } from './lock.ts';
import { PRIVATE_FILE_MODE, mkdirPrivate } from './private.ts';

/** How often a server touches its record in `<data>/servers/`, and how long one of another host untouched counts as running. */
export const SERVER_REFRESH_MS = 10_000;
const SERVER_STALE_MS = 3 * SERVER_REFRESH_MS;
/** A record of another host untouched this long is removed: its server has long ended (or hangs). */
const SERVER_FORGOTTEN_MS = 60 * 60_000;

/** What a server's record refresh reports when its data folder is gone (see `registerServer`). */
export interface RegisterServerOptions {
  /** How often the record is touched (default SERVER_REFRESH_MS; tests pass less). */
  refreshMs?: number;
  /**
   * Called once, in words, when the data folder or its `blobs` folder was removed or replaced while
   * this server ran: its API keys, job records and images went with it, so every request would get a
   * 401 with no reason given, and the worker would write into folders made afresh.
   */
  onLost?: (reason: string) => void;
}

/** The records of the servers running in this process (tests run several): each is live, whatever its pid says. */
const ownRecords = new Set<string>();

export interface ServerRecord {
  /** Whether another server may be running on the data folder now; records of servers that have ended are removed. */
  othersLive(): Promise<boolean>;
  /** Removes this server's record. Idempotent. */
  remove(): Promise<void>;
  /**
   * Writes the port this server listens on into its record: `clipag remote` sends the folder's API key
   * only to a loopback port a live record names (on a shared machine, another user's listener on a
   * loopback port would otherwise be sent the key). Best effort, as the record is.
   */
  listening(port: number): Promise<void>;
}

/**
 * Records this server in `<data>/servers/` ({pid, host}, touched every SERVER_REFRESH_MS), so that a
 * server starting later knows whether another may be creating jobs in the folder. A server killed
 * with -9 leaves its record: its pid is gone (this host, lock.ts processIsGone), or, on a host this
 * one cannot judge (another container on a shared volume), it has not been touched for SERVER_STALE_MS.
 * Best effort: a record that cannot be written is logged, and the others are then taken as running.
 * Each touch first looks at the data folder and its `blobs` folder: one removed or replaced, `onLost`
 * is told; both still there and the record gone, the record is written again.
 */
export async function registerServer(
  dataDir: string,
  warn: (message: string, error: Error) => void,
  options: RegisterServerOptions = {},
): Promise<ServerRecord> {
  const dir = join(dataDir, 'servers');
  const name = `${process.pid}-${randomBytes(4).toString('hex')}.json`;
  const path = join(dir, name);
  let port: number | undefined;
  const recordText = () => JSON.stringify({ pid: process.pid, host: hostId(), ...(port !== undefined ? { port } : {}) });
  const writeRecord = async () => {
    await mkdirPrivate(dir);
    await writeFile(path, recordText(), { flag: 'wx', mode: PRIVATE_FILE_MODE });
  };
  try {
    await writeRecord();
  } catch (error) {
    warn('could not record this server in its data folder; jobs a stopped server left unsent wait for the queued-job sweep', error as Error);
    return { othersLive: async () => true, remove: async () => undefined, listening: async () => undefined };
  }
  ownRecords.add(path);
  // The folders whose loss takes the keys, records and images with it, as they are now (after the
  // API key was made, so `blobs` exists). Looked at on every refresh: `rm -rf .data/blobs` leaves the
  // record in `servers/` alone.
  const watched = [dataDir, join(dataDir, 'blobs')];
  const identities = await Promise.all(watched.map((p) => stat(p).catch(() => null)));
  let touching: Promise<void> | undefined;
  let stopped = false;
  const touch = async () => {
    for (const [i, folder] of watched.entries()) {
      const before = identities[i];
      if (!before) continue;
      const now = await stat(folder).catch(() => null);
      if (now && sameFolder(before, now)) continue;
      stopped = true;
      clearInterval(refresh);
      const named = i === 0 ? `the data folder ${dataDir}` : `the data folder's ${folder}`;
      // Not "replaced" when another folder stands there: the queue's and the blob store's writes make
      // their folders again, so a removed data folder is often back, empty, by the time this looks.
      options.onLost?.(`${named} was removed or replaced while this server ran`);
      return;
    }
    const now = new Date();
    try {
      await utimes(path, now, now);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Only the record is gone (`servers/` cleared by hand): written again. Any other fault passes.
      if ((code === 'ENOENT' || code === 'ENOTDIR') && !stopped) await writeRecord().catch(() => undefined);
    }
  };
  const refresh = setInterval(() => {
    if (touching || stopped) return;
    touching = touch().finally(() => (touching = undefined));
  }, options.refreshMs ?? SERVER_REFRESH_MS);
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
        // Written halfway: no fields, judged by its age below.
        const { pid, host } = recordFields(text);
        // This pid on this host is this process, and not the record's server (its records are in ownRecords).
        const ended = pid !== undefined && host !== undefined && (processIsGone(pid, host) || (host === hostId() && pid === process.pid));
        const untouchedMs = Date.now() - info.mtimeMs;
        if (ended || untouchedMs > SERVER_FORGOTTEN_MS) await rm(otherPath, { force: true }).catch(() => undefined);
        else if ((pid !== undefined && host === hostId()) || untouchedMs < SERVER_STALE_MS) live = true;
      }
      return live;
    },
    async listening(listeningOn: number) {
      port = listeningOn;
      if (stopped) return;
      await writeFile(path, recordText(), { mode: PRIVATE_FILE_MODE }).catch((error: Error) => warn('could not write this server\'s port into its record; clipag remote will not send this folder\'s key to it', error));
    },
    async remove() {
      stopped = true;
      clearInterval(refresh);
      // A touch in flight may be writing the record again: it ends first, then the record goes.
      await touching;
      ownRecords.delete(path);
      await rm(path, { force: true }).catch(() => undefined);
    },
  };
}

/** A server record's fields, each only when it is valid; none from a record written halfway. */
function recordFields(text: string): { pid?: number; host?: string; port?: number } {
  let record: { pid?: unknown; host?: unknown; port?: unknown } = {};
  try {
    record = JSON.parse(text) as typeof record;
  } catch {
    return {};
  }
  const positive = (v: unknown) => (Number.isSafeInteger(v) && (v as number) > 0 ? (v as number) : undefined);
  const pid = positive(record.pid);
  const port = positive(record.port);
  return { ...(pid !== undefined ? { pid } : {}), ...(typeof record.host === 'string' ? { host: record.host } : {}), ...(port !== undefined ? { port } : {}) };
}

/**
 * The loopback ports the live `clipag serve` processes of `dataDir` listen on, from their records
 * (synchronous: the CLI reads it while it parses its arguments). `unknown` when a live server's record
 * names no port (a server from before ports were recorded, or one whose port write failed): its port
 * cannot be told, so the caller cannot refuse one.
 */
export function localServerPorts(dataDir: string): { ports: Set<number>; unknown: boolean } {
  const dir = join(dataDir, 'servers');
  const ports = new Set<number>();
  let unknown = false;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return { ports, unknown };
  }
  for (const name of names) {
    if (!name.endsWith('.json')) continue;
    let text: string;
    let mtimeMs: number;
    try {
      mtimeMs = statSync(join(dir, name)).mtimeMs;
      text = readFileSync(join(dir, name), 'utf8');
    } catch {
      continue; // removed meanwhile
    }
    const { pid, host, port } = recordFields(text);
    if (pid === undefined) continue; // written halfway: no port to trust
    // As othersLive judges a record: a process on this host by its pid, one of another host by its touches.
    const live = host === hostId() ? !processIsGone(pid, host) : Date.now() - mtimeMs < SERVER_STALE_MS;
    if (!live) continue;
    if (port !== undefined) ports.add(port);
    else unknown = true; // a server from before ports were recorded
  }
  return { ports, unknown };
}

/**
 * Whether a folder is still the one seen before: its device and inode, and its birth time where the
 * filesystem keeps one (a folder made again at once may get the freed inode number on ext4 or xfs, not
 * the same birth time). A platform without birth times gives 0 or the ctime, which a folder keeps too.
 */
function sameFolder(before: Stats, now: Stats): boolean {
  return now.isDirectory() && now.dev === before.dev && now.ino === before.ino && now.birthtimeMs === before.birthtimeMs;
}
