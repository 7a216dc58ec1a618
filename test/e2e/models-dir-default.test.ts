// The models folder with CLIPAG_MODELS_DIR unset is this package's models/ for every verb, whatever the
// working folder (a configuration review: `clipag serve` served <package>/models while `models push`
// and `models list` looked at ./models, so the push clash check was skipped outside the checkout), and
// the entry script takes a blank CLIPAG_DATA_DIR as unset, as the config does.
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { runList, runPush } from '../../cli/models.ts';
import { modelDir, REPO_ROOT } from '../../cli/common.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-models-dir-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Runs `fn` with the working folder `cwd` (a folder outside the checkout, as an installed clipag runs from). */
async function inFolder<T>(cwd: string, fn: () => Promise<T> | T): Promise<T> {
  const before = process.cwd();
  process.chdir(cwd);
  try {
    return await fn();
  } finally {
    process.chdir(before);
  }
}

describe('models push and models list outside the checkout, CLIPAG_MODELS_DIR unset', () => {
  const elsewhere = join(root, 'elsewhere');
  mkdirSync(elsewhere, { recursive: true });

  it('push: a bundle named like a folder of the package\'s models/ with other content is refused, as from the checkout', async () => {
    // models/toy-plain under the name toy: not the bundle models/toy holds.
    const bundle = join(root, 'not-toy');
    cpSync(join(REPO_ROOT, 'models', 'toy-plain'), bundle, { recursive: true });
    const manifest = JSON.parse(readFileSync(join(bundle, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(bundle, 'manifest.json'), JSON.stringify({ ...manifest, name: 'toy' }));
    const env = { CLIPAG_DATA_DIR: join(root, 'push-data') };
    await inFolder(elsewhere, async () => {
      for (const e of [env, { ...env, CLIPAG_MODELS_DIR: ' ' }]) {
        await expect(runPush([bundle, '--name', 'toy'], e)).rejects.toMatchObject({
          code: 'invalid_input',
          message: expect.stringContaining(`model "toy" is also the folder ${join(REPO_ROOT, 'models', 'toy')} in the models folder, with another bundle`),
        });
      }
    });
  });

  it('list: an empty store names the models the package\'s models/ serves', async () => {
    const out: string[] = [];
    const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
    try {
      expect(await inFolder(elsewhere, () => runList([], { CLIPAG_DATA_DIR: join(root, 'list-data') }))).toBe(0);
    } finally {
      log.mockRestore();
    }
    expect(out.join('\n')).toMatch(/; served from the models folder as well: toy, toy-plain$/);
  });

  it('a model name where --model takes a folder: the hint names the package\'s bundle, CLIPAG_MODELS_DIR blank', async () => {
    const saved = process.env.CLIPAG_MODELS_DIR;
    process.env.CLIPAG_MODELS_DIR = ' ';
    try {
      await inFolder(elsewhere, () => {
        expect(() => modelDir('toy')).toThrow(`for the model named toy, pass --model ${relative(process.cwd(), join(REPO_ROOT, 'models', 'toy'))}`);
      });
    } finally {
      if (saved === undefined) delete process.env.CLIPAG_MODELS_DIR;
      else process.env.CLIPAG_MODELS_DIR = saved;
    }
  });
});

describe('npm run clipag with a blank CLIPAG_DATA_DIR (what compose files and systemd units give)', () => {
  it('keeps the package root\'s .data, as unset does, not the caller\'s folder', async () => {
    // npm runs the script in the package root (here `pkg`) and names the caller's folder INIT_CWD.
    const pkg = join(root, 'pkg');
    const caller = join(root, 'caller');
    mkdirSync(pkg);
    mkdirSync(caller);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('CLIPAG_')) env[k] = v;
    const { stdout } = await promisify(execFile)(process.execPath, [join(REPO_ROOT, 'bin', 'clipag.mjs'), 'models', 'list', '--json'], {
      cwd: pkg,
      env: { ...env, npm_lifecycle_event: 'clipag', INIT_CWD: caller, CLIPAG_DATA_DIR: ' ' },
    });
    expect((JSON.parse(stdout) as { store: string }).store).toBe(`${join(pkg, '.data', 'blobs', 'models')}/`);
  }, 60_000);
});
