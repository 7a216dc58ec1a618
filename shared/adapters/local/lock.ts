import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
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
 * Cross-process lock: a lock file created with O_EXCL (`wx`), atomic on every local filesystem, so
 * exactly one process creates it; it holds the holder's random owner token. The holder refreshes
 * its mtime every `staleMs / 3` while `fn` runs, so only a lock whose holder died (no refresh for
 * `staleMs`) is broken. Breaking renames the lock away (atomic: of two breakers one wins) instead of
 * deleting it, and release removes the lock only while it still holds this holder's token, so a
 * holder that was (wrongly) presumed dead can never delete the next holder's lock.
 */
export async function withDirLock<T>(
  lockPath: string,
  fn: () => Promise<T>,
  { staleMs = 10_000, timeoutMs = 15_000 }: { staleMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const token = randomBytes(12).toString('hex');
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(lockPath, token, { flag: 'wx' });
      break;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        await mkdir(dirname(lockPath), { recursive: true });
        continue;
      }
      if (code !== 'EEXIST') throw error;
      const info = await stat(lockPath).catch(() => null);
      if (info && Date.now() - info.mtimeMs > staleMs) {
        // Its holder stopped refreshing it: crashed. Move it aside (only one breaker's rename succeeds).
        // (A lock folder left by an older version is broken the same way.)
        const grave = `${lockPath}.broken-${token}`;
        if (await rename(lockPath, grave).then(() => true, () => false)) await rm(grave, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new RetryableError(`timed out waiting for lock ${lockPath}`);
      await sleep(Math.min(2 + attempt * 2, 25) * (0.5 + Math.random()));
    }
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
    const owner = await readFile(lockPath, 'utf8').catch(() => null);
    if (owner === token) await unlink(lockPath).catch(() => undefined);
  }
}
