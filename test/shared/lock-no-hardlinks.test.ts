/**
 * A data folder on a file system without hard links (FAT or exFAT, which Windows reports as EISDIR;
 * EPERM or ENOTSUP elsewhere): a lock is created in place, as before the link() create, and still
 * excludes. Mocked: no such file system can be mounted here.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { withDirLock } from '../../shared/adapters/local/lock.ts';

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...real,
    link: vi.fn(async () => {
      throw Object.assign(new Error('EISDIR: illegal operation on a directory, link'), { code: 'EISDIR' });
    }),
  };
});

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('withDirLock where hard links cannot be made', () => {
  it('takes the lock in place; lockers still exclude each other, and nothing is left behind', async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-lock-nolink-'));
    const lockPath = join(dir, 'lock');
    let inside = 0;
    let most = 0;
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        withDirLock(lockPath, async () => {
          inside++;
          most = Math.max(most, inside);
          await new Promise((r) => setTimeout(r, 5));
          inside--;
          return i;
        }),
      ),
    );
    expect(results).toEqual([0, 1, 2, 3, 4, 5]);
    expect(most).toBe(1);
    expect(await readdir(dir)).toEqual([]);
  });
});
