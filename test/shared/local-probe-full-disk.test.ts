// The data folder's write probe on a full disk (a review of resource exhaustion, F8): it created an
// empty file, which a full disk still allows (an inode, no data block), so `clipag serve` started and
// then stopped on its first real write with a bare `clipag: ENOSPC: no space left on device, write`.
// A full disk cannot be made here without mounting one (root): the probe file's handle refuses its
// writes as a full disk does, ENOSPC, and every other file is written for real.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';

/** What the probe file's handle refuses now: its writes, its fsync, or nothing. */
const refuse: { write?: string; sync?: string } = {};

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const failing = (code: string) => async () => {
    throw Object.assign(new Error(`${code}: refused, write`), { code });
  };
  const open = async (...args: Parameters<typeof real.open>): Promise<FileHandle> => {
    const handle = await real.open(...args);
    if (!String(args[0]).includes('.clipag-write-probe-')) return handle;
    return new Proxy(handle, {
      get(target, prop) {
        if (refuse.write && ['write', 'writeFile', 'writev', 'appendFile'].includes(prop as string)) return failing(refuse.write);
        if (refuse.sync && ['sync', 'datasync'].includes(prop as string)) return failing(refuse.sync);
        const value = Reflect.get(target, prop, target) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  };
  return { ...real, open, default: { ...real, open } };
});

const { dataFolderWriteProblem, probeWritableFolder } = await import('../../shared/adapters/local/probe.ts');
const { serve } = await import('../../cli/serve.ts');
const { FAST_RECIPE, freePort, tinyModelsDir } = await import('../helpers/serve.ts');

const root = mkdtempSync(join(tmpdir(), 'clipag-probe-full-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(() => {
  delete refuse.write;
  delete refuse.sync;
});
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('the data folder write probe', () => {
  it('writes: a folder whose disk refuses the bytes is refused, and the probe file is removed', async () => {
    const dir = join(root, 'full');
    mkdirSync(dir);
    refuse.write = 'ENOSPC';
    await expect(probeWritableFolder(dir)).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(readdirSync(dir)).toEqual([]);
    expect(await dataFolderWriteProblem(dir)).toBe(
      `the data folder ${dir} is on a full disk: ENOSPC writing a file there; free some space there, or pass --data DIR or set CLIPAG_DATA_DIR to a folder this user can write on another disk`,
    );
  });

  it('fsyncs: a write refused only at the fsync is refused too', async () => {
    const dir = join(root, 'quota');
    mkdirSync(join(dir, 'queue'), { recursive: true });
    refuse.sync = 'EDQUOT';
    expect(await dataFolderWriteProblem(dir)).toMatch(new RegExp(`^the data folder ${escape(dir)} is over this user's disk quota: EDQUOT writing a file there; free some space there`));
    refuse.sync = 'EIO';
    expect(await dataFolderWriteProblem(dir)).toMatch(new RegExp(`^the data folder ${escape(dir)} is not writable by this user: EIO writing a file there; pass --data DIR`));
    expect(readdirSync(dir)).toEqual(['queue']);
  });

  it('a folder it can write passes, and keeps no probe file', async () => {
    const dir = join(root, 'fine');
    mkdirSync(dir);
    expect(await dataFolderWriteProblem(dir)).toBeUndefined();
    expect(readdirSync(dir)).toEqual([]);
  });

  it('`clipag serve` on a full disk is refused before anything starts, with the folder and the disk named', async () => {
    const modelsDir = tinyModelsDir(root);
    const dataDir = join(root, 'serve-full');
    refuse.write = 'ENOSPC';
    const port = await freePort();
    const refused = serve({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(port), LOG_LEVEL: 'error' }, { recipeOverrides: FAST_RECIPE });
    await expect(refused).rejects.toMatchObject({ code: 'invalid_input' });
    await expect(refused).rejects.toThrow(`the data folder ${dataDir} is on a full disk: ENOSPC writing a file there; free some space there`);
    expect(existsSync(join(dataDir, 'signing-secret'))).toBe(false); // refused before its first real write
    await expect(fetch(`http://127.0.0.1:${port}/`)).rejects.toThrow(); // nothing listening
  }, 60_000);
});
