// Git for Windows installs with core.autocrlf=true, which checks text files out with CRLF. A bundle's
// manifest pins the sha256 of its tokenizer.json, so such a checkout's embedded model refused to load
// (every job failed invalid_model) and its model_version changed; fixtures are compared byte for byte,
// and bash reads a script's "\r" as part of a command. .gitattributes keeps every file as committed.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/reference.ts';

const run = promisify(execFile);
const git = async (args: string[], cwd = REPO_ROOT) => (await run('git', args, { cwd, maxBuffer: 16 * 1024 * 1024 })).stdout;

/** `git ls-files --eol` rows: the worktree's line endings and the attributes that decide them. */
async function eolRows(cwd: string): Promise<Array<{ worktree: string; attr: string; path: string }>> {
  return (await git(['-c', 'core.autocrlf=true', 'ls-files', '--eol'], cwd))
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [info, path] = line.split('\t');
      const [, worktree, ...attr] = info!.trim().split(/\s+/);
      return { worktree: worktree!, attr: attr.join(' '), path: path! };
    });
}

describe('line endings on checkout', () => {
  it('bundles and fixtures are never converted; every other text file is checked out with LF, whatever core.autocrlf says', async () => {
    const rows = await eolRows(REPO_ROOT);
    expect(rows.length).toBeGreaterThan(100);
    const wrong = rows.filter(({ attr, path }) =>
      /^(models|test\/fixtures)\//.test(path) ? attr !== 'attr/-text' : !/^attr\/(text=auto eol=lf|-text)$/.test(attr),
    );
    expect(wrong.map((r) => `${r.path}: ${r.attr}`)).toEqual([]);
  });

  it('a clone made with core.autocrlf=true has every file as committed, and the embedded bundles match their manifests', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clipag-crlf-'));
    await git(['-c', 'core.autocrlf=true', 'clone', '-q', REPO_ROOT, dir]);
    const rows = await eolRows(dir);
    expect(rows.filter((r) => r.worktree.includes('crlf')).map((r) => r.path)).toEqual([]);
    for (const model of ['toy', 'toy-plain', 'toy-judge']) {
      const manifest = JSON.parse(readFileSync(join(dir, 'models', model, 'manifest.json'), 'utf8')) as { sha256: Record<string, string> };
      for (const [file, sha] of Object.entries(manifest.sha256)) {
        expect(createHash('sha256').update(readFileSync(join(dir, 'models', model, file))).digest('hex'), `${model}/${file}`).toBe(sha);
      }
    }
  });
});
