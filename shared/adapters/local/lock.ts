import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { RetryableError } from '../../errors.ts';

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
 * Cross-process lock: `mkdir` is atomic on every local filesystem, so exactly one process creates
 * the lock directory. The holder writes a random owner token into it and refreshes its mtime every
 * `staleMs / 3` while `fn` runs, so only a lock whose holder died (no refresh for `staleMs`) is
 * broken. Breaking renames the folder away (atomic: of two breakers one wins) instead of deleting
 * it, and release removes the folder only while it still holds this holder's token, so a holder
 * that was (wrongly) presumed dead can never delete the next holder's lock.
 */
export async function withDirLock<T>(
  lockPath: string,
  fn: () => Promise<T>,
  { staleMs = 10_000, timeoutMs = 15_000 }: { staleMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const token = randomBytes(12).toString('hex');
  const ownerFile = join(lockPath, 'owner');
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      await mkdir(lockPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        await mkdir(dirname(lockPath), { recursive: true });
        continue;
      }
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const info = await stat(lockPath).catch(() => null);
      if (info && Date.now() - info.mtimeMs > staleMs) {
        // Its holder stopped refreshing it: crashed. Move it aside (only one breaker's rename succeeds).
        const grave = `${lockPath}.broken-${token}`;
        if (await rename(lockPath, grave).then(() => true, () => false)) await rm(grave, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new RetryableError(`timed out waiting for lock ${lockPath}`);
      await sleep(Math.min(2 + attempt * 2, 25) * (0.5 + Math.random()));
      continue;
    }
    try {
      await writeFile(ownerFile, token);
    } catch (error) {
      await rm(lockPath, { recursive: true, force: true });
      throw error;
    }
    break;
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
    const owner = await readFile(ownerFile, 'utf8').catch(() => null);
    if (owner === token) await rm(lockPath, { recursive: true, force: true });
  }
}
