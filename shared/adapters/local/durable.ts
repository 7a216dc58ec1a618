import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { RetryableError } from '../../errors.ts';
import { privateFileMode } from './private.ts';

/**
 * Writes `data` to a new file and fsyncs it before returning, so a rename that follows publishes
 * complete contents: after a power loss the target is the old file or the new one, never a
 * zero-length or torn one (ext4/xfs may otherwise persist the rename before the data). The file is
 * the owner's only (0600, or `mode` where that is stricter): the rename keeps the mode, and what is
 * written here is job records, images, uploads and queue messages.
 */
export async function writeFileDurable(path: string, data: Uint8Array | string, mode?: number): Promise<void> {
  const handle = await open(path, 'wx', privateFileMode(mode));
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsyncs a folder so a rename into it is durable. Best effort: some platforms cannot open or sync folders. */
export async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // EISDIR/EPERM/EINVAL on platforms without folder fsync: nothing more we can do.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** How old a staged temp file must be before a store that opens removes it as a crash leftover. */
export const STALE_TEMP_MS = 60 * 60 * 1000;

/**
 * Removes files in `dir` older than `maxAgeMs`: temp files staged by a write that crashed before
 * its rename (as big as the body) were never removed. Only old ones: another process may be
 * staging a write right now, and no write stages for an hour. Best effort, never throws: a store
 * must open whatever state its temp folder is in.
 */
export async function removeStaleFiles(dir: string, maxAgeMs = STALE_TEMP_MS): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const cutoff = Date.now() - maxAgeMs;
  for (const name of names) {
    try {
      const path = join(dir, name);
      const st = await stat(path);
      if (st.isFile() && st.mtimeMs < cutoff) await rm(path, { force: true });
    } catch {
      // Removed by another process meanwhile, or not ours to remove: leave it.
    }
  }
}

/** How long a rename over a file another reader holds open is tried again on Windows (see renameOver). */
const RENAME_RETRY_MS = [10, 20, 40, 80, 160, 320, 640] as const;
const IN_USE = new Set(['EPERM', 'EACCES', 'EBUSY']);

/**
 * Renames `from` over `to`, replacing it. On Windows a rename over a file that any process has open
 * (a reader of the same record: a GET, a Prefer: wait, the worker) fails with EPERM/EACCES/EBUSY
 * for as long as the handle is open, where POSIX systems replace it under the reader. There it is
 * tried again for about 1.3 s, as graceful-fs does, and then fails as RetryableError (a 503 with
 * Retry-After, not a 500). Elsewhere those codes are real permission problems, thrown at once.
 */
export async function renameOver(
  from: string,
  to: string,
  options: { platform?: NodeJS.Platform; renameFile?: (from: string, to: string) => Promise<void>; sleep?: (ms: number) => Promise<void> } = {},
): Promise<void> {
  const platform = options.platform ?? process.platform;
  const renameFile = options.renameFile ?? rename;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  for (let attempt = 0; ; attempt++) {
    try {
      await renameFile(from, to);
      return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? '';
      if (platform !== 'win32' || !IN_USE.has(code)) throw error;
      // Windows says EPERM for a rename over a folder too: that is no reader, and no retry helps.
      if (attempt === 0 && (await stat(to).then((st) => st.isDirectory(), () => false))) {
        throw Object.assign(new Error(`EISDIR: illegal operation on a directory, rename '${from}' -> '${to}'`), { code: 'EISDIR', cause: error });
      }
      if (attempt >= RENAME_RETRY_MS.length) {
        throw new RetryableError(`the file is in use by another reader (${code}); retry`, { cause: error });
      }
      await sleep(RENAME_RETRY_MS[attempt]!);
    }
  }
}
