// On Windows a rename over a file another reader holds open fails (EPERM/EACCES/EBUSY) for as long as
// the handle is open; POSIX systems replace the file under the reader. The local store and queue rewrite
// records that the API and worker read concurrently, so there the rename is tried again briefly and
// then fails as retryable (a 503), never a 500 (portability review #3). Windows is simulated: the
// platform and the rename are passed in; a real rename does the work on this machine.
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RetryableError } from '../../shared/errors.ts';
import { renameOver } from '../../shared/adapters/local/durable.ts';

const inUse = (code: string) => Object.assign(new Error(`${code}: operation not permitted, rename`), { code });

function files() {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-rename-'));
  const from = join(dir, 'new.tmp');
  const to = join(dir, 'record.json');
  writeFileSync(from, 'new');
  writeFileSync(to, 'old');
  return { from, to };
}

/** A rename that fails with `code` for its first `failures` calls, then renames. */
function renameFailing(code: string, failures: number) {
  const calls = { n: 0 };
  return {
    calls,
    renameFile: async (from: string, to: string) => {
      if (++calls.n <= failures) throw inUse(code);
      await rename(from, to);
    },
  };
}

const noSleep = async () => undefined;

describe('renameOver', () => {
  it.each(['EPERM', 'EACCES', 'EBUSY'])('on Windows, %s while a reader holds the file is tried again until the rename goes through', async (code) => {
    const { from, to } = files();
    const r = renameFailing(code, 3);
    await renameOver(from, to, { platform: 'win32', renameFile: r.renameFile, sleep: noSleep });
    expect(r.calls.n).toBe(4);
    expect(readFileSync(to, 'utf8')).toBe('new');
  });

  it('on Windows, a file that stays in use fails as retryable after a bounded number of tries, the old file as it was', async () => {
    const { from, to } = files();
    const r = renameFailing('EPERM', Infinity);
    const error = await renameOver(from, to, { platform: 'win32', renameFile: r.renameFile, sleep: noSleep }).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(RetryableError);
    expect((error as Error).message).toBe('the file is in use by another reader (EPERM); retry');
    expect(r.calls.n).toBe(8);
    expect(readFileSync(to, 'utf8')).toBe('old');
  });

  it('on Windows, EPERM over a folder (as Windows says it) is EISDIR at once, which the store answers as a key conflict, not a retry', async () => {
    const { from, to } = files();
    const folder = `${to}.d`;
    mkdirSync(folder);
    const r = renameFailing('EPERM', Infinity);
    await expect(renameOver(from, folder, { platform: 'win32', renameFile: r.renameFile, sleep: noSleep })).rejects.toMatchObject({ code: 'EISDIR' });
    expect(r.calls.n).toBe(1);
  });

  it('elsewhere EPERM is a real permission problem: thrown at once; and any other error is thrown at once everywhere', async () => {
    const { from, to } = files();
    const linux = renameFailing('EPERM', 1);
    await expect(renameOver(from, to, { platform: 'linux', renameFile: linux.renameFile, sleep: noSleep })).rejects.toMatchObject({ code: 'EPERM' });
    expect(linux.calls.n).toBe(1);
    const win = renameFailing('ENOSPC', 1);
    await expect(renameOver(from, to, { platform: 'win32', renameFile: win.renameFile, sleep: noSleep })).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(win.calls.n).toBe(1);
    await renameOver(from, to);
    expect(readFileSync(to, 'utf8')).toBe('new');
  });
});
