// The exit-code and message conventions of the command line (a CLI review): a usage error goes to
// stderr with exit 2 and names what is wrong; what was asked for (--help) goes to stdout with exit 0.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../cli/main.ts';
import { run as keys } from '../../cli/keys.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';

async function capture(fn: () => Promise<number>): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  try {
    return { code: await fn(), stdout: out.join('\n'), stderr: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
}

describe('clipag with no verb, and --help', () => {
  it('no verb: the verb list on stderr, exit 2 (a usage error)', async () => {
    const r = await capture(() => main([]));
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^usage: clipag <verb> \[options\]/);
    expect(r.stderr).toContain('  serve ');
  });

  it.each([['--help'], ['-h'], ['help']])('%s: the verb list on stdout, exit 0', async (flag) => {
    const r = await capture(() => main([flag]));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^usage: clipag <verb> \[options\]/);
  });
});

describe('clipag models list', () => {
  it('an extra argument is a usage error: exit 2, the usage shown', async () => {
    const r = await capture(() => main(['models', 'list', 'extra']));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag models: models list takes no arguments, got "extra"\n\nusage: clipag models/);
    expect(r.stderr).not.toContain('[invalid_input]');
  });
});

describe('clipag keys create --name', () => {
  let dir: string;
  let store: BlobApiKeyStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-conv-'));
    store = new BlobApiKeyStore(new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' }));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('a name over 100 characters: said of --name (not "invalid API key"), exit 2, nothing stored', async () => {
    const r = await capture(() => keys(['create', '--name', 'n'.repeat(101)], store, () => undefined));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^clipag keys: --name must be at most 100 characters \(got 101\)\n\nusage: clipag keys/);
    expect(r.stderr).not.toMatch(/API key:/);
    expect(await store.list()).toEqual([]);
  });

  it('a name of exactly 100 characters (after trimming) is taken', async () => {
    const r = await capture(() => keys(['create', '--name', ` ${'n'.repeat(100)} `, '--json'], store, (l) => console.log(l)));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).name).toBe('n'.repeat(100));
  });
});
