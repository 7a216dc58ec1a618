// `clipag serve` starting and stopping, from a CLI review: a data folder it cannot write was accepted
// (500 on every POST, the worker retrying EACCES for ever), an empty signing secret stopped it with a
// message naming no file, and Ctrl-C dropped held `Prefer: wait` requests with no answer.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { serve } from '../../cli/serve.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { newJobId } from '../../shared/ids.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { FAST_RECIPE, freePort, tinyModelsDir } from '../helpers/serve.ts';
import { unprivilegedBox, unprivilegedUnavailable } from '../helpers/unprivileged.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-serve-life-'));
const modelsDir = tinyModelsDir(root);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const env = async (dataDir: string) => ({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(await freePort()), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' });
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Whether something answers on the port of `env` (a refused start must not have left a server). */
async function listening(port: string): Promise<boolean> {
  return fetch(`http://127.0.0.1:${port}/`).then(
    () => true,
    () => false,
  );
}

describe('serve refuses a data folder it cannot write, before anything starts', () => {
  it('a folder it cannot write, or a folder the adapters write in it: named, with CLIPAG_DATA_DIR', async () => {
    // In this process file modes cannot make this case when the tests run as root (root writes through any
    // mode, and a read-only mount needs privileges a test should not use): the probe's failure is injected,
    // on the folder it is asked about, as a real EACCES would come. The next test makes it for real, in a
    // child process that is not root.
    for (const bad of ['', 'queue']) {
      const dataDir = join(root, `unwritable-${bad || 'root'}`);
      mkdirSync(join(dataDir, 'queue'), { recursive: true });
      const target = join(dataDir, bad);
      const probed: string[] = [];
      const probeFolder = async (dir: string) => {
        probed.push(dir);
        if (dir === target.replace(/\/$/, '')) throw Object.assign(new Error(`EACCES: permission denied, open '${dir}/x'`), { code: 'EACCES' });
      };
      const e = await env(dataDir);
      const refused = serve(e, { recipeOverrides: FAST_RECIPE, probeFolder });
      await expect(refused).rejects.toMatchObject({ code: 'invalid_input' });
      await expect(refused).rejects.toThrow(new RegExp(`^the data folder ${escape(dataDir)} is not writable by this user${bad ? ` \\(its folder ${escape(target)} is not\\)` : ''}: EACCES creating a file there.*; pass --data DIR or set CLIPAG_DATA_DIR`));
      expect(probed[0]).toBe(dataDir); // the data folder first, then the adapters' folders that exist
      expect(probed.at(-1)).toBe(target.replace(/\/$/, ''));
      expect(await listening(e.PORT)).toBe(false);
    }
  });

  // Not injected: `clipag serve` itself, in a child process for which mode 0o555 forbids writing (as root,
  // the child runs as nobody; see test/helpers/unprivileged.ts), refused by the probe's real EACCES.
  it.skipIf(unprivilegedUnavailable)('a folder whose mode forbids writing: `clipag serve` refuses it, exit 1, nothing listening', async () => {
    const box = unprivilegedBox();
    try {
      const port = String(await freePort());
      // The package's models/ (CLIPAG_MODELS_DIR unset): this run's temporary folder, which holds the tiny
      // one, is not the child's to read, and serve checks its models folder before its data folder.
      const res = await box.clipag(['serve', '--data', box.readOnly, '--port', port], { LOG_LEVEL: 'error' }, 30_000);
      expect([res.code, res.stdout], res.stderr).toEqual([1, '']);
      expect(res.stderr).toMatch(new RegExp(`^clipag serve: the data folder ${escape(box.readOnly)} is not writable by this user: EACCES creating a file there.*; pass --data DIR or set CLIPAG_DATA_DIR`));
      expect(readdirSync(box.readOnly)).toEqual([]);
      expect(await listening(port)).toBe(false);
    } finally {
      box.remove();
    }
  });

  it('a data folder under a regular file: said in words, not a bare ENOTDIR', async () => {
    const file = join(root, 'plain-file');
    writeFileSync(file, 'x');
    await expect(serve(await env(join(file, 'data')), { recipeOverrides: FAST_RECIPE })).rejects.toThrow(
      new RegExp(`^the data folder ${escape(join(file, 'data'))} \\(--data or CLIPAG_DATA_DIR\\) cannot be used: a part of its path is a file$`),
    );
  });

  it('a damaged signing secret: the file named, and what to do', async () => {
    const dataDir = join(root, 'short-secret');
    mkdirSync(dataDir);
    writeFileSync(join(dataDir, 'signing-secret'), 'too short');
    const refused = serve(await env(dataDir), { recipeOverrides: FAST_RECIPE });
    await expect(refused).rejects.toMatchObject({ code: 'invalid_input' });
    await expect(refused).rejects.toThrow(`the signing secret ${join(dataDir, 'signing-secret')} is damaged (9 characters, at least 32 needed); delete it and start again`);
  });

  it('an empty signing secret (an interrupted first start) is replaced: serve starts', async () => {
    const dataDir = join(root, 'empty-secret');
    mkdirSync(dataDir);
    writeFileSync(join(dataDir, 'signing-secret'), '');
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE });
    try {
      expect(readFileSync(join(dataDir, 'signing-secret'), 'utf8')).toMatch(/^[0-9a-f]{64}$/);
      expect(readdirSync(dataDir).filter((f) => f.includes('probe'))).toEqual([]); // the write probes removed their files
      expect((await fetch(`${h.url}/v1/models`, { headers: { authorization: `Bearer ${h.apiKey}` } })).status).toBe(200);
    } finally {
      await h.stop();
    }
  });
});

describe('serve on a busy port', () => {
  it('is refused before the data folder is made or written (no keys, no signing secret left behind)', async () => {
    const busy = createServer();
    await new Promise<void>((ok) => busy.listen(0, '127.0.0.1', ok));
    const port = (busy.address() as { port: number }).port;
    const dataDir = join(root, 'busy-port');
    try {
      const e = await serve({ ...(await env(dataDir)), PORT: String(port) }, { recipeOverrides: FAST_RECIPE }).catch((error: unknown) => error);
      expect(String((e as Error).message)).toMatch(new RegExp(`port ${port} on .* is in use \\(another clipag serve\\?\\); pass --port N or set PORT`));
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      await new Promise((ok) => busy.close(ok));
    }
  });
});

describe('serve --steps', () => {
  it('says the cap in the start banner', async () => {
    // The worker cannot use its device (no CUDA here), so the verb stops by itself after its banner.
    const { run } = await import('../../cli/serve.ts');
    const saved = { ...process.env };
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      Object.assign(process.env, await env(join(root, 'capped-verb')), { CLIPAG_EXECUTION_PROVIDER: 'cuda' });
      expect(await run(['--steps', '3'])).toBe(1);
      expect(err.mock.calls.map((c) => String(c[0])).join('')).toMatch(/--steps 3: every job is capped at 3 steps \(a job that asks for more gets a warning saying so\)/);
    } finally {
      err.mockRestore();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }, 60_000);
});

describe('the start banner and the API key (a security review: the key landed in systemd, docker and CI logs)', () => {
  /** What `run` writes to stderr, with stderr a terminal or not, until it stops by itself (no CUDA here). */
  async function banner(dataDir: string, tty: boolean): Promise<string> {
    const { run } = await import('../../cli/serve.ts');
    const saved = { ...process.env };
    const savedTty = Object.getOwnPropertyDescriptor(process.stderr, 'isTTY');
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    Object.defineProperty(process.stderr, 'isTTY', { value: tty, configurable: true });
    try {
      Object.assign(process.env, await env(dataDir), { CLIPAG_EXECUTION_PROVIDER: 'cuda' });
      expect(await run([])).toBe(1);
      return err.mock.calls.map((c) => String(c[0])).join('');
    } finally {
      err.mockRestore();
      if (savedTty) Object.defineProperty(process.stderr, 'isTTY', savedTty);
      else delete (process.stderr as { isTTY?: boolean }).isTTY;
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }

  it('not a terminal: no key, but a line that reads it from the key file, quoted for the shell; a terminal: the key', async () => {
    const dataDir = join(root, "banner's data");
    const logged = await banner(dataDir, false);
    const key = readFileSync(join(dataDir, 'local-api-key'), 'utf8').trim();
    expect(key).toMatch(/^ck_/);
    expect(logged).not.toContain(key);
    const line = /^ {2}(export CLIPAG_API_URL=\S+ CLIPAG_API_KEY=.*?) {5}# as the README's examples and clipag remote use them$/m.exec(logged)?.[1];
    expect(line).toBe(`export CLIPAG_API_URL=${/running at (\S+)/.exec(logged)?.[1]} CLIPAG_API_KEY=$(cat '${join(root, "banner'\\''s data")}/local-api-key')`);
    // Pasted into a shell, it sets the key.
    expect(execFileSync('bash', ['-c', `${line}; printf %s "$CLIPAG_API_KEY"`], { encoding: 'utf8' })).toBe(key);

    expect(await banner(dataDir, true)).toContain(` CLIPAG_API_KEY=${key} `);
  }, 90_000);
});

describe('the data folder is the owner\'s only (a security review: others could read prompts and webhook secrets)', () => {
  it('a new one: the folder and what serve writes at its start are 0700 and 0600', async () => {
    const dataDir = join(root, 'private-new');
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE });
    try {
      const made = join(dataDir, 'blobs', 'objects', 'keys');
      expect([dataDir, join(dataDir, 'blobs'), made].map((p) => (statSync(p).mode & 0o777).toString(8))).toEqual(['700', '700', '700']);
      const files = [join(dataDir, 'signing-secret'), join(dataDir, 'local-api-key'), ...readdirSync(made).map((f) => join(made, f))];
      expect(files.length).toBeGreaterThan(2);
      expect(files.map((p) => (statSync(p).mode & 0o777).toString(8))).toEqual(files.map(() => '600'));
    } finally {
      await h.stop();
    }
  });

  it('one an older version made (0755, a 0644 record in it): its own folders are closed at the start, the data folder keeps its mode', async () => {
    const dataDir = join(root, 'private-old');
    mkdirSync(join(dataDir, 'blobs', 'objects', 'jobs'), { recursive: true });
    chmodSync(dataDir, 0o755);
    chmodSync(join(dataDir, 'blobs'), 0o755);
    writeFileSync(join(dataDir, 'blobs', 'objects', 'jobs', 'old.json'), '{}', { mode: 0o644 });
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE });
    await h.stop();
    expect([statSync(dataDir).mode & 0o777, statSync(join(dataDir, 'blobs')).mode & 0o777]).toEqual([0o755, 0o700]);
  });

  it('a folder of the user\'s (sticky, like /tmp) keeps its mode: serve starts, closes only its own folders, and warns of nothing', async () => {
    const dataDir = join(root, 'private-sticky');
    mkdirSync(dataDir);
    chmodSync(dataDir, 0o1777);
    const err = vi.spyOn(process.stderr, 'write');
    try {
      for (let start = 0; start < 2; start++) {
        const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE });
        await h.stop();
      }
      const warnings = err.mock.calls.map((c) => String(c[0])).filter((line) => line.includes('private'));
      expect(warnings).toEqual([]);
      expect(statSync(dataDir).mode & 0o7777).toBe(0o1777);
      expect(statSync(join(dataDir, 'blobs')).mode & 0o777).toBe(0o700);
    } finally {
      err.mockRestore();
    }
  });
});

describe('serve and an unhealthy worker', () => {
  it('a worker that cannot use its device says so through the handle, and the verb stops with exit 1 rather than queue jobs nothing runs', async () => {
    // No CUDA provider on this machine: the warm-up cannot open a session, which makes the worker unhealthy (ADR 0023).
    const dataDir = join(root, 'unhealthy');
    const h = await serve({ ...(await env(dataDir)), CLIPAG_EXECUTION_PROVIDER: 'cuda' }, { recipeOverrides: FAST_RECIPE });
    try {
      expect(await h.unhealthy).toBe('warm_up');
    } finally {
      await h.stop();
    }
    const { run } = await import('../../cli/serve.ts');
    const saved = { ...process.env };
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      Object.assign(process.env, await env(join(root, 'unhealthy-verb')), { CLIPAG_EXECUTION_PROVIDER: 'cuda' });
      const code = await run([]);
      expect(code).toBe(1);
      expect(err.mock.calls.map((c) => String(c[0])).join('')).toMatch(/the worker is unhealthy \(warm_up; .*\) and takes no more jobs: stopping/);
    } finally {
      err.mockRestore();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }, 60_000);
});

describe('serve and a data folder removed while it runs (a resource review: every request got 401 with no reason)', () => {
  it('says so through the handle, naming the folder', async () => {
    const dataDir = join(root, 'removed');
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, serverRefreshMs: 100 });
    try {
      rmSync(dataDir, { recursive: true, force: true });
      expect(await h.dataFolderLost).toBe(`the data folder ${dataDir} was removed or replaced while this server ran`);
    } finally {
      await h.stop();
    }
  }, 30_000);

  it('emptied (rm -rf data/*): named by its blobs folder', async () => {
    const dataDir = join(root, 'emptied');
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, serverRefreshMs: 100 });
    try {
      for (const name of readdirSync(dataDir)) rmSync(join(dataDir, name), { recursive: true, force: true });
      expect(await h.dataFolderLost).toBe(`the data folder's ${join(dataDir, 'blobs')} was removed or replaced while this server ran`);
    } finally {
      await h.stop();
    }
  }, 30_000);

  it('the verb stops with exit 1, saying what was lost and what to do', async () => {
    const { run } = await import('../../cli/serve.ts');
    const saved = { ...process.env };
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const dataDir = join(root, 'removed-verb');
    try {
      Object.assign(process.env, await env(dataDir));
      const code = run([]);
      // The banner is written once the server runs: then its folder goes.
      await vi.waitFor(() => expect(err.mock.calls.map((c) => String(c[0])).join('')).toMatch(/API and worker running/), { timeout: 20_000 });
      rmSync(dataDir, { recursive: true, force: true });
      expect(await code).toBe(1);
      expect(err.mock.calls.map((c) => String(c[0])).join('')).toContain(
        `clipag: the data folder ${dataDir} was removed or replaced while this server ran; its API keys, jobs and images went with it (start clipag serve again to make a new one): stopping`,
      );
    } finally {
      err.mockRestore();
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  }, 60_000);
});

describe('serve stopping', () => {
  it('a held Prefer: wait is answered with the generation as it is, promptly, not dropped', async () => {
    const dataDir = join(root, 'held');
    const h = await serve(await env(dataDir), { recipeOverrides: FAST_RECIPE, shutdownGraceMs: 20_000 });
    // A queued job with no message (none is sent and the sweep re-sends only after minutes): it stays
    // queued, so a wait on it holds until the server stops.
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    const id = newJobId(Date.now());
    await stores.jobs.create(newJobRecord({ id, owner: 'local', spec: GenerationSpec.parse({ prompt: 'held', width: 64, height: 64, seed: 1, model: 'toy' }), now: new Date() }));
    const t0 = Date.now();
    const held = fetch(`${h.url}/v1/generations/${id}`, { headers: { authorization: `Bearer ${h.apiKey}`, prefer: 'wait=30' } });
    // The wait is holding, in its third pause (of 1 s, from about 0.8 s after the request, after pauses
    // of 0.25 s and 0.5 s and a read after each): it ends at the stop, not at the end of the pause.
    await new Promise((r) => setTimeout(r, 1200));
    const t1 = Date.now();
    const stopped = h.stop();
    const res = await held;
    expect(Date.now() - t1).toBeLessThan(400); // the pause it was in had most of a second to run
    expect(res.status).toBe(200);
    expect(res.headers.get('preference-applied')).toBe('wait=30');
    expect(await res.json()).toMatchObject({ id, status: 'queued' });
    await stopped;
    expect(Date.now() - t0).toBeLessThan(10_000); // neither the 30 s wait nor the 20 s grace period
    await expect(fetch(`${h.url}/v1/models`)).rejects.toThrow(); // it has stopped listening
  });
});
