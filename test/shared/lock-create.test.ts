/**
 * A lock is linked into place written whole: a process killed between creating the lock file and
 * writing its holder (a kill -9, an OOM) left an empty lock, with no pid to judge, and every later
 * writer of the key waited out its staleness (crash review, 2026-12-07: 5 of 72 kills; the first POST
 * after the restart took 6.6 s instead of 0.5 s).
 */
import { mkdir, mkdtemp, open, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ABANDONED_STAGED_MS, withDirLock } from '../../shared/adapters/local/lock.ts';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('withDirLock creating its lock', () => {
  it('a creator stopped between its create and its write holds nobody back', async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-lock-'));
    const lockPath = join(dir, 'locks', 'k');
    // The creator that "dies" mid-create: its first write of a lock never returns.
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { writeFile: (...a: unknown[]) => Promise<void> };
    await probe.close();
    const real = proto.writeFile;
    proto.writeFile = function stalled() {
      proto.writeFile = real;
      return new Promise<void>(() => undefined);
    };
    try {
      void withDirLock(lockPath, async () => 'never');
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      proto.writeFile = real;
    }
    const t0 = performance.now();
    expect(await withDirLock(lockPath, async () => 'taken', { staleMs: 10_000, timeoutMs: 3_000 })).toBe('taken');
    expect(performance.now() - t0).toBeLessThan(1_000);
    // Released: only the stalled creator's staged file is left, which no lock reads.
    expect((await readdir(join(dir, 'locks'))).filter((name) => !name.startsWith('k.new-'))).toEqual([]);
  });

  it("the first lock in a folder removes the staged files killed processes left there, not a live create's", async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-lock-'));
    const locks = join(dir, 'locks');
    await mkdir(locks);
    const old = new Date(Date.now() - ABANDONED_STAGED_MS - 5_000);
    for (const name of ['k.new-4242-0123456789ab', 'other.new-7-abcdefabcdef']) {
      await writeFile(join(locks, name), '{"token":"t","pid":4242}');
      await utimes(join(locks, name), old, old);
    }
    await writeFile(join(locks, 'k.new-99-fedcba987654'), ''); // another process's create, this instant
    await writeFile(join(locks, 'notes.new-x'), ''); // not a staged name
    await utimes(join(locks, 'notes.new-x'), old, old);
    expect(await withDirLock(join(locks, 'k'), async () => 'taken')).toBe('taken');
    expect((await readdir(locks)).sort()).toEqual(['k.new-99-fedcba987654', 'notes.new-x']);
  });

  it('two lockers of one key still exclude each other', async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-lock-'));
    const lockPath = join(dir, 'lock');
    let inside = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 8 }, () =>
        withDirLock(lockPath, async () => {
          inside++;
          most = Math.max(most, inside);
          await new Promise((r) => setTimeout(r, 5));
          inside--;
        }),
      ),
    );
    expect(most).toBe(1);
    expect(await readdir(dir)).toEqual([]);
  });
});
