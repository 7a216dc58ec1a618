// Resource exhaustion in the local adapters (review-exhaustion F3, F4, F7): a write that fails for want
// of space, or a release without a free file descriptor, must not leave a lock file (every later
// writer of the key, or of the whole queue, waited out the 10 s stale rule for it) nor a partial temp
// file (holding the very space that ran out until a restart an hour later).
// Real failures where this machine allows them: a child process under `ulimit -f` (a write past the
// file size limit fails with EFBIG after the file was created, as ENOSPC does on a full disk) or
// `ulimit -n` (EMFILE), run through bash: skipped on Windows, which has neither. Only a failing rename
// is injected, through a wrapped node:fs/promises.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

const hooks = vi.hoisted(() => ({ rename: undefined as undefined | ((from: string, to: string) => void) }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const rename: typeof real.rename = async (from, to) => {
    hooks.rename?.(String(from), String(to));
    return real.rename(from, to);
  };
  return { ...real, default: { ...real, rename }, rename };
});

const { LocalJobQueue } = await import('../../shared/adapters/local/queue.ts');
const { withDirLock } = await import('../../shared/adapters/local/lock.ts');

afterEach(() => {
  hooks.rename = undefined;
});

const tmp = (prefix: string) => mkdtempSync(join(tmpdir(), prefix));
const lockModule = resolve(__dirname, '../../shared/adapters/local/lock.ts');
const queueModule = resolve(__dirname, '../../shared/adapters/local/queue.ts');

/** Runs `script` (an ES module) in a child Node under `ulimit <limit>`; what it prints last, parsed. */
async function runLimited(limit: string, script: string): Promise<Record<string, unknown>> {
  const child = spawn('bash', ['-c', `ulimit ${limit} && exec "$0" --import tsx --input-type=module -e "$1"`, process.execPath, script], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const code = await new Promise((r) => child.once('exit', r));
  const last = out.trim().split('\n').at(-1) ?? '';
  if (code !== 0 || !last.startsWith('{')) throw new Error(`child failed (exit ${code}): ${out}\n${err}`);
  return JSON.parse(last) as Record<string, unknown>;
}

describe.skipIf(process.platform === 'win32')('withDirLock when the disk or the descriptors run out', () => {
  it('a lock whose content cannot be written is removed again: the next withDirLock acquires it without waiting out the stale rule', async () => {
    const folder = tmp('clipag-lockfull-');
    const lock = join(folder, 'lock');
    // ulimit -f 0: creating the lock file succeeds, writing its first byte fails (EFBIG), as on a full disk.
    const result = await runLimited(
      '-f 0',
      `
      import { withDirLock } from ${JSON.stringify(lockModule)};
      let ran = false;
      try {
        await withDirLock(${JSON.stringify(lock)}, async () => { ran = true; });
        console.log(JSON.stringify({ ran }));
      } catch (error) {
        console.log(JSON.stringify({ ran, code: error.code }));
      }
      `,
    );
    expect(result).toEqual({ ran: false, code: 'EFBIG' });
    expect(readdirSync(folder)).toEqual([]); // no empty lock file (nor a .break file) left behind
    // staleMs of an hour: an empty lock file left behind (no pid to judge) would hold this off until the timeout.
    await expect(withDirLock(lock, async () => 'in', { staleMs: 3_600_000, timeoutMs: 5_000 })).resolves.toBe('in');
    expect(readdirSync(folder)).toEqual([]);
  }, 60_000);

  it('a release with no file descriptor left (EMFILE) still removes the lock it holds', async () => {
    const folder = tmp('clipag-lockemfile-');
    const lock = join(folder, 'lock');
    const result = await runLimited(
      '-n 256',
      `
      import { closeSync, openSync, readFileSync } from 'node:fs';
      import { withDirLock } from ${JSON.stringify(lockModule)};
      const held = [];
      let readWhileFull;
      await withDirLock(${JSON.stringify(lock)}, async () => {
        // Every descriptor this process may have, taken, as a burst of requests does.
        try {
          for (;;) held.push(openSync('/dev/null', 'r'));
        } catch (error) {
          if (error.code !== 'EMFILE') throw error;
        }
        try {
          readFileSync(${JSON.stringify(lock)});
          readWhileFull = 'ok';
        } catch (error) {
          readWhileFull = error.code;
        }
      });
      for (const fd of held) closeSync(fd);
      console.log(JSON.stringify({ readWhileFull, held: held.length > 0 }));
      `,
    );
    // Reading the lock back (how release used to tell it was still ours) fails while the descriptors are all taken.
    expect(result).toEqual({ readWhileFull: 'EMFILE', held: true });
    expect(existsSync(lock)).toBe(false);
    await expect(withDirLock(lock, async () => 'in', { staleMs: 3_600_000, timeoutMs: 5_000 })).resolves.toBe('in');
  }, 60_000);
});

describe('LocalJobQueue when a message cannot be written', () => {
  it.skipIf(process.platform === 'win32')('a send whose message write fails partway (file size limit, as a full disk) leaves no temp file', async () => {
    const dir = tmp('clipag-qfull-');
    // ulimit -f 1 (1 KiB): the queue's lock file still fits, a 200 KB message does not.
    const result = await runLimited(
      '-f 1',
      `
      import { LocalJobQueue } from ${JSON.stringify(queueModule)};
      const q = new LocalJobQueue({ dir: ${JSON.stringify(dir)} });
      try {
        await q.send('x'.repeat(200_000));
        console.log(JSON.stringify({ sent: true }));
      } catch (error) {
        console.log(JSON.stringify({ code: error.code }));
      }
      `,
    );
    expect(result).toEqual({ code: 'EFBIG' });
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
    expect(readdirSync(join(dir, 'messages'))).toEqual([]);
    expect(existsSync(join(dir, 'lock'))).toBe(false);
  }, 60_000);

  it('a send whose rename into messages/ fails rejects with that error and leaves no temp file', async () => {
    const dir = tmp('clipag-qrename-');
    const q = new LocalJobQueue({ dir, log: { warn() {} } });
    hooks.rename = (from, to) => {
      if (from.endsWith('.tmp') && to.includes(`${join(dir, 'messages')}`)) {
        throw Object.assign(new Error(`EXDEV: cross-device link not permitted, rename '${from}' -> '${to}'`), { code: 'EXDEV' });
      }
    };
    await expect(q.send('hello')).rejects.toMatchObject({ code: 'EXDEV' });
    expect(readdirSync(join(dir, 'tmp'))).toEqual([]);
    hooks.rename = undefined;
    // The queue still works, and nothing of the failed send was delivered.
    await q.send('again');
    expect((await q.receive({ max: 10 })).map((m) => m.body)).toEqual(['again']);
  });
});
