// Review F2: the local cross-process lock (withDirLock) must not let a second holder in beside a live
// one when the wall clock steps (an NTP step, a laptop waking from sleep). A holder whose process is
// alive on this host is never broken for its lock file's age (mtime against the wall clock); only a
// lock this contender has watched go unrefreshed for staleMs, on the monotonic clock, is broken.
// The wall clock is stepped by replacing Date.now (the lock's own timing must not read it).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RetryableError } from '../../shared/errors.ts';
import { hostId, withDirLock } from '../../shared/adapters/local/lock.ts';

const realNow = Date.now;
const children: ChildProcess[] = [];
afterEach(() => {
  Date.now = realNow;
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

const lockPath = () => join(mkdtempSync(join(tmpdir(), 'clipag-lockclock-')), 'lock');

/** Another live process on this host (it only waits), as a lock holder's pid. */
async function liveProcess(): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000); process.stdout.write("up\\n")'], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((r, j) => {
    child.stdout!.once('data', () => r());
    child.once('exit', (code) => j(new Error(`child exited early (${code})`)));
  });
  return child.pid!;
}

describe('withDirLock and a stepped wall clock', () => {
  it('a live holder in this process is not broken when the wall clock steps 30 s forward before its next refresh', async () => {
    const lock = lockPath();
    let inside = 0;
    let mostInside = 0;
    let releaseFirst!: () => void;
    let firstEntered!: () => void;
    const entered = new Promise<void>((r) => (firstEntered = r));
    const first = withDirLock(lock, async () => {
      inside++;
      mostInside = Math.max(mostInside, inside);
      firstEntered();
      await new Promise<void>((r) => (releaseFirst = r));
      inside--;
    });
    await entered;
    Date.now = () => realNow() + 30_000; // staleMs is 10 s; the holder refreshes every 3.3 s
    const second = withDirLock(lock, async () => {
      inside++;
      mostInside = Math.max(mostInside, inside);
      inside--;
    }, { timeoutMs: 1000 });
    await expect(second).rejects.toBeInstanceOf(RetryableError);
    releaseFirst();
    await first;
    expect(mostInside).toBe(1);
  });

  it('a lock of a live process on this host is not broken for its file\'s age (its mtime a minute behind the wall clock)', async () => {
    const lock = lockPath();
    writeFileSync(lock, JSON.stringify({ token: 'f'.repeat(24), pid: await liveProcess(), host: hostId() }));
    const old = new Date(realNow() - 60_000);
    utimesSync(lock, old, old);
    await expect(withDirLock(lock, async () => 'in', { staleMs: 10_000, timeoutMs: 500 })).rejects.toBeInstanceOf(RetryableError);
  });

  it('a lock of a live process on this host that is never refreshed (a stalled holder, or a dead one whose pid was reused) is broken once watched for staleMs', async () => {
    const lock = lockPath();
    writeFileSync(lock, JSON.stringify({ token: 'f'.repeat(24), pid: await liveProcess(), host: hostId() }));
    await expect(withDirLock(lock, async () => 'in', { staleMs: 200, timeoutMs: 10_000 })).resolves.toBe('in');
  });

  it('the wait for a lock is measured on the monotonic clock: a wall clock stepped back an hour does not stretch it', async () => {
    const lock = lockPath();
    let releaseFirst!: () => void;
    let firstEntered!: () => void;
    const entered = new Promise<void>((r) => (firstEntered = r));
    const first = withDirLock(lock, async () => {
      firstEntered();
      await new Promise<void>((r) => (releaseFirst = r));
    });
    await entered;
    // The step lands just after the contender reads the clock for the first time.
    let reads = 0;
    Date.now = () => realNow() - (reads++ > 0 ? 3_600_000 : 0);
    const second = withDirLock(lock, async () => 'in', { timeoutMs: 300 });
    await expect(second).rejects.toBeInstanceOf(RetryableError);
    Date.now = realNow;
    releaseFirst();
    await first;
  }, 10_000);
});
