// Staging folders: a bundle is written next to its destination under a hidden name, then renamed
// into place, so that a reader never sees half of one. Used by `models import` and the training verbs.
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
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
 * (Ctrl-C during a synchronous write) cannot clean up after itself.
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
    rmSync(join(dirname(out), name), { recursive: true, force: true });
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
