import { mkdir, rm, stat } from 'node:fs/promises';
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
 * Cross-process lock: `mkdir` is atomic on every local filesystem, so exactly one process
 * creates the lock directory. A lock older than `staleMs` belongs to a crashed process and is
 * broken (critical sections here are a few file operations, far shorter than that).
 */
export async function withDirLock<T>(
  lockPath: string,
  fn: () => Promise<T>,
  { staleMs = 10_000, timeoutMs = 15_000 }: { staleMs?: number; timeoutMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    try {
      await mkdir(lockPath);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        await mkdir(lockPath.slice(0, lockPath.lastIndexOf('/')), { recursive: true });
        continue;
      }
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const info = await stat(lockPath).catch(() => null);
      if (info && Date.now() - info.mtimeMs > staleMs) {
        await rm(lockPath, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new RetryableError(`timed out waiting for lock ${lockPath}`);
      await sleep(Math.min(2 + attempt * 2, 25) * (0.5 + Math.random()));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(lockPath, { recursive: true, force: true });
  }
}
