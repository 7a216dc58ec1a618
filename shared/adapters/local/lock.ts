import { randomBytes } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { type FileHandle, link, open, readdir, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { RetryableError } from '../../errors.ts';
import { PRIVATE_FILE_MODE, mkdirPrivate } from './private.ts';

/** Serializes async critical sections per key within this process. */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const current = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => current);
    this.tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Which pids `process.kill(pid, 0)` can judge: the host name plus, on Linux, this boot of the kernel
 * (`boot_id`) and the pid namespace. Two containers can share a host name (and a volume) while living
 * in different pid namespaces, where a live holder's pid would look dead to us; and a namespace's id
 * is the same number on every host (the initial namespace's), so two machines of one name sharing a
 * folder (a network mount) are told apart by their boot ids. Anything unreadable is left out, which
 * only makes ids compare equal less often (a dead holder then waits for the age rule).
 */
let hostIdCache: string | undefined;
export function hostId(): string {
  if (hostIdCache === undefined) {
    const parts = [hostname()];
    try {
      parts.push(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
      parts.push(readlinkSync('/proc/self/ns/pid')); // e.g. "pid:[4026531836]"
    } catch {
      // Not Linux (or no /proc): the host name alone.
    }
    hostIdCache = parts.join('|');
  }
  return hostIdCache;
}

interface Holder {
  /** The lock file's whole content: its identity (a fresh lock always holds a fresh random token). */
  content: string;
  mtimeMs: number;
  pid?: number;
  host?: string;
}

/** The lock at `path` as it is now, or null when there is none. Reads content and mtime through one descriptor. */
async function inspect(path: string): Promise<Holder | null> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code !== 'EISDIR') throw error;
    // Where folders cannot be opened (Windows): an older version's lock folder, judged by age.
    const st = await stat(path).catch(() => null);
    return st && { content: `<folder ${st.ino}>`, mtimeMs: st.mtimeMs };
  }
  try {
    const st = await handle.stat();
    // A lock folder left by an older version has no content: it is judged by age only.
    if (st.isDirectory()) return { content: `<folder ${st.ino}>`, mtimeMs: st.mtimeMs };
    const content = await handle.readFile('utf8');
    const holder: Holder = { content, mtimeMs: st.mtimeMs };
    try {
      const record = JSON.parse(content) as { pid?: unknown; host?: unknown };
      if (Number.isInteger(record.pid) && (record.pid as number) > 0 && typeof record.host === 'string') {
        holder.pid = record.pid as number;
        holder.host = record.host;
      }
    } catch {
      // Empty (its holder is between create and write, or crashed there) or an older version's bare
      // token: judged by age only.
    }
    return holder;
  } finally {
    await handle.close();
  }
}

/**
 * What one contender has seen of each lock file it waits on: the content and mtime it last saw there,
 * and when it first saw them, on the monotonic clock (`performance.now()`).
 */
type Sightings = Map<string, { content: string; mtimeMs: number; since: number }>;

/** How long (ms, monotonic) `holder` has been seen at `path` with neither its content nor its mtime changing. */
function unchangedForMs(sightings: Sightings, path: string, holder: Holder): number {
  const now = performance.now();
  const seen = sightings.get(path);
  if (seen && seen.content === holder.content && seen.mtimeMs === holder.mtimeMs) return now - seen.since;
  sightings.set(path, { content: holder.content, mtimeMs: holder.mtimeMs, since: now });
  return 0;
}

/**
 * Whether the holder is gone. A holder on this host (same pid namespace) whose pid no longer exists
 * crashed: broken at once instead of after `staleMs` (a SIGKILLed worker used to stall every writer
 * of the key, or the whole queue, for 10 s). A holder on this host whose pid exists is never broken
 * for its file's age: that compares the mtime with the wall clock, and a clock stepped forward (an NTP
 * step, a laptop waking from sleep) would let a second holder in beside a live one. It is broken only
 * once this contender has watched its lock go unrefreshed for `staleMs` of the monotonic clock (its
 * holder refreshes it every staleMs/3): a holder stalled that long, or a dead one whose pid now names
 * another process (pid reuse; no start time is needed for safety). EPERM means the pid exists
 * (another user's process): alive. A holder this host cannot judge (another host, or a lock without
 * a pid) is judged by its file's age, the only clock the hosts share.
 */
function isAbandoned(path: string, holder: Holder, staleMs: number, sightings: Sightings): boolean {
  if (holder.pid !== undefined && holder.host === hostId()) {
    return processIsGone(holder.pid, holder.host) || unchangedForMs(sightings, path, holder) > staleMs;
  }
  return Date.now() - holder.mtimeMs > staleMs;
}

/**
 * Whether the process `pid` of host `host` (a hostId()) has provably ended: only a pid of this host,
 * pid namespace and boot can be judged, and one that is alive, or whose number now names another
 * process, is not gone (the caller falls back to its time rule).
 */
export function processIsGone(pid: number, host: string): boolean {
  if (host !== hostId() || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Moves `path` aside if it still is the lock `expected` described, and deletes it. Renaming is not
 * conditional, so a lock that changed in between (its presumed-dead holder released it after all and
 * a new holder took it) is put back with link(), which cannot overwrite a lock taken meanwhile.
 * False when it could not be moved (not ours to move, say): the caller waits instead of spinning.
 */
async function removeIfSame(path: string, expected: Holder, token: string): Promise<boolean> {
  const grave = `${path}.broken-${token}`;
  try {
    await rename(path, grave);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT'; // gone already: try again now
  }
  const moved = await inspect(grave).catch(() => null);
  if (moved && moved.content !== expected.content) await link(grave, path).catch(() => undefined);
  await rm(grave, { recursive: true, force: true });
  return true;
}

/**
 * A lock file this process created, kept open while it is held: on a local file system an inode
 * cannot be freed, nor its number reused, while a descriptor of it is open, so a path that stats to
 * the same device and inode is still this very file (on a network mount, see stillOurs). Deciding that needs only a stat(), no new descriptor: the check used to
 * read the file back, and under EMFILE (too many open files) that read failed and left a live lock
 * behind for the next writer of the key to wait out (staleMs).
 */
interface OwnFile {
  handle: FileHandle;
  dev: bigint;
  ino: bigint;
}

/**
 * Tries to create `path` exclusively with `content`; null when it exists. The file is written whole under
 * a name of its own first, then linked into place (link fails when `path` exists, as `wx` does): a
 * process killed between creating the lock and writing it (a kill -9, an OOM) left an empty lock, with
 * no pid to judge, and every later writer of the key (the queue has one lock) waited out staleMs for it
 * (5 of 72 kills in a crash test; the first POST after the restart took 6.6 s). A create whose write
 * fails (ENOSPC, EFBIG) removes the file it made before rethrowing. A process killed before its link
 * leaves only its `.new-` file, which no lock reads; the next process to lock in that folder removes it
 * (removeAbandonedStaged).
 */
async function create(path: string, content: string): Promise<OwnFile | null> {
  const dir = dirname(path);
  if (!sweptDirs.has(dir)) {
    sweptDirs.add(dir);
    await removeAbandonedStaged(dir);
  }
  const staged = `${path}.new-${process.pid}-${randomBytes(6).toString('hex')}`;
  for (;;) {
    let handle: FileHandle;
    try {
      handle = await open(staged, 'wx', PRIVATE_FILE_MODE);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw error;
      await mkdirPrivate(dirname(path));
      continue;
    }
    try {
      const st = await handle.stat({ bigint: true });
      await handle.writeFile(content);
      try {
        await link(staged, path);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        await handle.close().catch(() => undefined);
        await unlink(staged).catch(() => undefined);
        if (code === 'EEXIST') return null;
        // Any other refusal: most likely a file system without hard links (FAT or exFAT, which Windows
        // reports as EISDIR, others as EPERM or ENOTSUP; some network mounts), where the lock is created
        // in place, as before; a real fault (EACCES, ENOSPC) fails there too, with its own error.
        return createInPlace(path, content);
      }
      // The descriptor stays open on the one inode `path` now names (see OwnFile).
      await unlink(staged).catch(() => undefined);
      return { handle, dev: st.dev, ino: st.ino };
    } catch (error) {
      await handle.close().catch(() => undefined);
      await unlink(staged).catch(() => undefined);
      throw error;
    }
  }
}

/** A staged lock file's name: `<lock>.new-<pid>-<12 hex>`. */
const STAGED_NAME = /\.new-\d+-[0-9a-f]{12}$/;
/** A staged file this old was left by a process killed before its link: a create links within milliseconds. */
export const ABANDONED_STAGED_MS = 60_000;
/** Folders of locks whose abandoned staged files this process has removed (once each: only a killed process leaves them). */
const sweptDirs = new Set<string>();

/**
 * Removes the staged files (`.new-`) a killed process left in a folder of locks: nothing reads them, but
 * a crash loop would fill the folder with them. Once per folder per process, at its first lock, so a
 * restart after a kill cleans up after it; only those older than ABANDONED_STAGED_MS (a live create's
 * is milliseconds old, another process's included). Best effort: a folder that does not list is left.
 */
async function removeAbandonedStaged(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const before = Date.now() - ABANDONED_STAGED_MS;
  await Promise.all(
    names
      .filter((name) => STAGED_NAME.test(name))
      .map(async (name) => {
        const path = join(dir, name);
        const st = await stat(path).catch(() => null);
        if (st && st.mtimeMs < before) await unlink(path).catch(() => undefined);
      }),
  );
}

/** `create` where hard links cannot be made: open `wx` and write (a kill in between leaves an empty lock, judged by its age). */
async function createInPlace(path: string, content: string): Promise<OwnFile | null> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'wx', PRIVATE_FILE_MODE);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return null;
    throw error;
  }
  let own: OwnFile | undefined;
  try {
    const st = await handle.stat({ bigint: true });
    own = { handle, dev: st.dev, ino: st.ino };
    await handle.writeFile(content);
    return own;
  } catch (error) {
    if (own) await release(path, own);
    else await handle.close().catch(() => undefined);
    throw error;
  }
}

/** Whether `path` still names `own`; false when it is gone or is another file (a breaker replaced it). */
async function stillOurs(path: string, own: OwnFile): Promise<boolean> {
  // Our own file first, through the descriptor held: unlinked (a breaker removed it) it has no links
  // left. On a network mount another host's unlink frees the inode on the server, whose number the
  // breaker's new lock may then get (ext4 reuses it at once), and the held descriptor reads ESTALE:
  // either way it is not ours, whatever the path's numbers say.
  try {
    if ((await own.handle.stat({ bigint: true })).nlink === 0n) return false;
  } catch {
    return false;
  }
  // stat() needs no descriptor; only a failure other than "not there" is tried again, briefly, so
  // that a passing error does not leave a lock that is ours to the age rule.
  for (let attempt = 0; ; attempt++) {
    try {
      const st = await stat(path, { bigint: true });
      return st.dev === own.dev && st.ino === own.ino;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || attempt >= 2) return false;
      await sleep(10 * (attempt + 1));
    }
  }
}

/**
 * Removes `path` if it still is `own`, and closes `own`. The descriptor is closed before the unlink:
 * on Windows a file deleted while open stays in the way of a new create until it is closed.
 */
async function release(path: string, own: OwnFile): Promise<void> {
  const ours = await stillOurs(path, own);
  await own.handle.close().catch(() => undefined);
  if (ours) await unlink(path).catch(() => undefined);
}

/** How old a break lock (held for a few file operations) must be before another breaker removes it. */
const BREAK_STALE_MIN_MS = 2_000;

/**
 * Breaks the abandoned lock at `lockPath`. Only the holder of `<lockPath>.break` (created with `wx`)
 * may remove the lock, and it re-reads the lock under it: a breaker that judged the lock from a
 * stale look can no longer remove a fresh lock another breaker made meanwhile (two contenders that
 * both saw the dead lock used to both end up holding it). Nobody but a breaker removes an abandoned
 * lock, so the lock cannot change between that re-read and the rename; `removeIfSame` covers a
 * holder that was only presumed dead by age. Returns false when another breaker is at work or the
 * lock could not be moved (the caller then waits), true when taking the lock may be tried again now.
 */
async function breakLock(lockPath: string, record: string, token: string, staleMs: number, sightings: Sightings): Promise<boolean> {
  const breakPath = `${lockPath}.break`;
  const breakOwn = await create(breakPath, record);
  if (!breakOwn) {
    const breaker = await inspect(breakPath);
    // A breaker that died mid-break (rare: it holds it for a few operations) must not block forever.
    // Two contenders removing the same dead break lock at once could both end up breaking; that
    // needs a crash inside that short window and still only matters if the lock changes under them,
    // which removeIfSame then repairs.
    if (breaker && isAbandoned(breakPath, breaker, Math.max(staleMs, BREAK_STALE_MIN_MS), sightings)) await removeIfSame(breakPath, breaker, token);
    return false;
  }
  try {
    const holder = await inspect(lockPath);
    if (holder && isAbandoned(lockPath, holder, staleMs, sightings)) return await removeIfSame(lockPath, holder, token);
    return true;
  } finally {
    await release(breakPath, breakOwn);
  }
}

/**
 * Cross-process lock: a lock file created with O_EXCL (`wx`), atomic on every local filesystem, so
 * exactly one process creates it; it records the holder's random token, pid and host. The holder
 * refreshes its mtime every `staleMs / 3` while `fn` runs, so a lock is broken only when its holder
 * is gone: a dead pid on this host (at once) or no refresh for `staleMs` (see `isAbandoned`). Breaking is
 * serialized by a break lock (see `breakLock`), and release removes the lock only while its path
 * still names the file this holder created (kept open while held, see `OwnFile`), so a holder that
 * was (wrongly) presumed dead can never delete the next holder's lock.
 */
export async function withDirLock<T>(
  lockPath: string,
  fn: () => Promise<T>,
  { staleMs = 10_000, timeoutMs = 15_000 }: { staleMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const token = randomBytes(12).toString('hex');
  const record = JSON.stringify({ token, pid: process.pid, host: hostId() });
  // The wait is measured on the monotonic clock: a wall clock stepped back must not stretch it.
  const deadline = performance.now() + timeoutMs;
  const sightings: Sightings = new Map();
  let own: OwnFile | null;
  for (let attempt = 0; ; attempt++) {
    own = await create(lockPath, record);
    if (own) break;
    const holder = await inspect(lockPath);
    if (!holder) continue; // released meanwhile
    if (isAbandoned(lockPath, holder, staleMs, sightings) && (await breakLock(lockPath, record, token, staleMs, sightings))) continue;
    if (performance.now() > deadline) throw new RetryableError(`timed out waiting for lock ${lockPath}`);
    await sleep(Math.min(2 + attempt * 2, 25) * (0.5 + Math.random()));
  }
  const refresh = setInterval(() => {
    const now = new Date();
    utimes(lockPath, now, now).catch(() => undefined);
  }, Math.max(1, Math.floor(staleMs / 3)));
  refresh.unref();
  try {
    return await fn();
  } finally {
    clearInterval(refresh);
    await release(lockPath, own);
  }
}
