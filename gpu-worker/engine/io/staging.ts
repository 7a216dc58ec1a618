// Staging folders: a bundle is written next to its destination under a hidden name, then renamed
// into place, so that a reader never sees half of one. Used by `models import` and the training verbs.
import { chmodSync, closeSync, existsSync, fsyncSync, mkdtempSync, openSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** A new `.<DIR>.<tag>-<pid>-XXXXXX` folder beside `out`, mode 0755 (mkdtemp makes 0700; the worker's own user reads models). */
export function makeStagingFolder(out: string, tag: string): string {
  removeAbandonedStaging(out, tag);
  const dir = mkdtempSync(join(dirname(out), `.${basename(out)}.${tag}-${process.pid}-`));
  chmodSync(dir, 0o755);
  return dir;
}

/**
 * Removes `.<DIR>.<tag>-<pid>-*` folders beside `out` whose process is gone: a run killed mid-write
 * (Ctrl-C during a synchronous write) cannot clean up after itself. One killed between the two
 * renames of a swap (`replaceFolder`) left `out` missing and the previous folder at `….old`: that
 * one is put back, not removed.
 */
export function removeAbandonedStaging(out: string, tag: string): void {
  const prefix = `.${basename(out)}.${tag}-`;
  let names: string[];
  try {
    names = readdirSync(dirname(out));
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1]);
    if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) continue; // another run is writing
    const path = join(dirname(out), name);
    if (name.endsWith('.old') && !existsSync(out)) {
      renameSync(path, out);
      continue;
    }
    rmSync(path, { recursive: true, force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // alive, another user's
  }
}

/**
 * Flushes a folder's files, and the folder itself, to the disk: what a rename then swaps into place
 * is there after a power cut, not an empty file under the new name.
 */
export function syncFolder(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) syncFolder(path);
    else if (entry.isFile()) syncPath(path);
  }
  syncPath(dir);
}

/** How syncPath opens a file or folder to flush it on `platform`; undefined where a folder cannot be flushed. */
export function syncOpenFlags(folder: boolean, platform: NodeJS.Platform): 'r' | 'r+' | undefined {
  if (platform !== 'win32') return 'r';
  return folder ? undefined : 'r+';
}

/**
 * fsync of one file or folder (a folder's entry list: a rename in it is then durable). Windows flushes
 * a file only through a handle opened for writing, and cannot flush a folder at all (EPERM): there a
 * file is opened r+ and a folder is left, as NTFS makes a rename durable by itself.
 */
export function syncPath(path: string, platform: NodeJS.Platform = process.platform): void {
  const folder = statSync(path).isDirectory();
  const flags = syncOpenFlags(folder, platform);
  if (flags === undefined) return;
  let fd: number;
  try {
    fd = openSync(path, flags);
  } catch (error) {
    // A read-only file on Windows (its attribute copied with it) cannot be opened for writing, so it
    // cannot be flushed there: left, as a folder is. Elsewhere an open that fails is a real problem.
    if (flags === 'r+' && ['EPERM', 'EACCES'].includes((error as NodeJS.ErrnoException).code ?? '')) return;
    throw error;
  }
  try {
    fsyncSync(fd);
  } catch (error) {
    // Some file systems cannot flush a folder either (EINVAL); its files were flushed all the same.
    if (!(folder && ['EINVAL', 'EISDIR', 'EPERM', 'EBADF'].includes((error as NodeJS.ErrnoException).code ?? ''))) throw error;
  } finally {
    closeSync(fd);
  }
}
