// `clipag serve` and its settings, from a configuration review: a misspelt setting ignored without a
// word, CLIPAG_MODE=aws answered with a list of AWS variables, a blank CLIPAG_DATA_DIR or
// CLIPAG_PUBLIC_BASE_URL read apart from the config (a banner naming a key file that did not exist,
// links to a port nothing listened on), a CLIPAG_HOST of another machine found only after the data
// folder was written, and a default model or models folder that names nothing behind a "running" banner.
import { mkdirSync, mkdtempSync, existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { hostError, serve } from '../../cli/serve.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { FAST_RECIPE, freePort, tinyModelsDir } from '../helpers/serve.ts';
import { runMain } from '../helpers/cli.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-serve-settings-'));
const modelsDir = tinyModelsDir(root);
afterAll(() => rmSync(root, { recursive: true, force: true }));

const env = async (dataDir: string) => ({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(await freePort()), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' });
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** What `clipag serve` (the verb) writes to stderr with `vars` in the environment, until it stops by itself (no CUDA here). */
async function verbStderr(vars: Record<string, string>): Promise<{ code: number; stderr: string }> {
  const { run } = await import('../../cli/serve.ts');
  const saved = { ...process.env };
  const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    Object.assign(process.env, vars, { CLIPAG_EXECUTION_PROVIDER: 'cuda' });
    const code = await run([]);
    return { code, stderr: err.mock.calls.map((c) => String(c[0])).join('') };
  } finally {
    err.mockRestore();
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

describe('settings no process reads', () => {
  it('are said once at the start, before the banner, with the closest setting', async () => {
    const dataDir = join(root, 'typo');
    const { code, stderr } = await verbStderr({ ...(await env(dataDir)), CLIPAG_OUTPUT_RETENTON_DAYS: '7' });
    expect(code).toBe(1);
    const warning = 'clipag serve: warning: CLIPAG_OUTPUT_RETENTON_DAYS is not a clipag setting (did you mean CLIPAG_OUTPUT_RETENTION_DAYS?); ignored\n';
    expect(stderr.split(warning)).toHaveLength(2); // once
    expect(stderr.indexOf(warning)).toBeLessThan(stderr.indexOf('API and worker running'));
    expect(stderr.indexOf('API and worker running')).toBeGreaterThan(-1);
  }, 60_000);
});

describe('CLIPAG_MODE=aws exported (for the operator verbs)', () => {
  it('is said at once: serve runs the local mode only, unset CLIPAG_MODE (through the verb too); not a list of AWS variables to set', async () => {
    for (const mode of ['aws', ' aws ']) {
      const dataDir = join(root, 'aws-mode');
      const refused = serve({ ...(await env(dataDir)), CLIPAG_MODE: mode });
      await expect(refused).rejects.toMatchObject({ code: 'invalid_input', message: expect.stringMatching(/^this command runs the local mode only, and CLIPAG_MODE=aws is set in this environment \(as the operator verbs use it\): unset CLIPAG_MODE/) });
      await expect(refused).rejects.not.toThrow(/AWS_REGION|CLIPAG_BUCKET/);
      expect(existsSync(dataDir)).toBe(false);
    }
    const saved = process.env.CLIPAG_MODE;
    process.env.CLIPAG_MODE = 'aws';
    try {
      const { code, stderr } = await runMain(['serve', '--data', join(root, 'aws-mode')]);
      expect([code, stderr]).toEqual([1, expect.stringMatching(/^clipag serve: this command runs the local mode only, and CLIPAG_MODE=aws is set/)]);
    } finally {
      if (saved === undefined) delete process.env.CLIPAG_MODE;
      else process.env.CLIPAG_MODE = saved;
    }
  });
});

describe('CLIPAG_DATA_DIR as the config reads it (trimmed; blank is the default .data)', () => {
  it('the handle and the banner name the data folder in use, and the key file the banner reads exists', async () => {
    const dataDir = join(root, 'padded data');
    const h = await serve({ ...(await env(dataDir)), CLIPAG_DATA_DIR: `  ${dataDir}  ` }, { recipeOverrides: FAST_RECIPE });
    await h.stop();
    expect(h.dataDir).toBe(dataDir);

    // The verb's banner (stderr not a terminal): `data in` and the `$(cat …)` line name that folder.
    const { stderr } = await verbStderr({ ...(await env(dataDir)), CLIPAG_DATA_DIR: `  ${dataDir}  ` });
    expect(stderr).toContain(`(local mode, data in ${dataDir})`);
    expect(stderr).toContain(` CLIPAG_API_KEY=$(cat '${dataDir}/local-api-key')`);
    expect(existsSync(join(dataDir, 'local-api-key'))).toBe(true);
  }, 60_000);

  it('blank: .data in the working folder, as the config has it', async () => {
    const cwd = join(root, 'blank-data-cwd');
    mkdirSync(cwd);
    const before = process.cwd();
    process.chdir(cwd);
    try {
      const h = await serve({ ...(await env('')), CLIPAG_DATA_DIR: ' ' }, { recipeOverrides: FAST_RECIPE });
      await h.stop();
      expect(h.dataDir).toBe(join(cwd, '.data'));
      expect(existsSync(join(cwd, '.data', 'local-api-key'))).toBe(true);
    } finally {
      process.chdir(before);
    }
  }, 30_000);
});

describe('a blank CLIPAG_PUBLIC_BASE_URL', () => {
  it('is unset: signed links point at the address serve listens on, not at the config\'s default port 8787', async () => {
    const h = await serve({ ...(await env(join(root, 'blank-public-url'))), CLIPAG_PUBLIC_BASE_URL: ' ' }, { recipeOverrides: FAST_RECIPE });
    try {
      const res = await fetch(`${h.url}/v1/uploads`, {
        method: 'POST',
        headers: { authorization: `Bearer ${h.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ content_type: 'image/png', bytes: 100 }),
      });
      expect(res.status).toBe(201);
      const body = (await res.json()) as { url: string };
      expect(body.url.startsWith(`${h.url}/blobs/`)).toBe(true);
    } finally {
      await h.stop();
    }
  }, 30_000);
});

describe('a CLIPAG_HOST that is not an address of this machine', () => {
  it('is refused, naming CLIPAG_HOST, before the data folder is made', async () => {
    // A name that does not resolve (a typo of 127.0.0.1), and an address no interface has (TEST-NET-1).
    for (const host of ['127.0.0.l', '192.0.2.1']) {
      const dataDir = join(root, `host-${host}`);
      const refused = serve({ ...(await env(dataDir)), CLIPAG_HOST: host }, { recipeOverrides: FAST_RECIPE });
      // Where no name server answers (a sandbox), the name's lookup fails for now (EAI_AGAIN), and says so.
      await expect(refused).rejects.toMatchObject({
        code: 'invalid_input',
        message: expect.stringMatching(new RegExp(`^CLIPAG_HOST ${escape(host)} (is not an address of this machine \\(.*(ENOTFOUND|EAI_NONAME|EADDRNOTAVAIL)\\); set CLIPAG_HOST to one of its addresses|could not be resolved just now \\(the name server did not answer, EAI_AGAIN\\): try again)`)),
      });
      expect(existsSync(dataDir)).toBe(false);
    }
  });
});

describe("CLIPAG_HOST's lookup failing for now", () => {
  it('EAI_AGAIN (no name server answered) is said as such, not as a name that is no address here', () => {
    expect(hostError('myhost.lan', 'EAI_AGAIN').message).toMatch(/^CLIPAG_HOST myhost.lan could not be resolved just now \(the name server did not answer, EAI_AGAIN\): try again/);
    expect(hostError('myhost.lan', 'ENOTFOUND').message).toMatch(/^CLIPAG_HOST myhost.lan is not an address of this machine \(a name that does not resolve, ENOTFOUND\)/);
  });
});

describe('the default model and the models folder, checked at the start (local mode)', () => {
  it('a CLIPAG_DEFAULT_MODEL in neither the models folder nor the local store: refused, naming the models there; nothing written on a first start', async () => {
    const dataDir = join(root, 'unknown-default');
    const refused = serve({ ...(await env(dataDir)), CLIPAG_DEFAULT_MODEL: 'nosuch' }, { recipeOverrides: FAST_RECIPE });
    await expect(refused).rejects.toMatchObject({
      code: 'invalid_input',
      message: expect.stringMatching(/^CLIPAG_DEFAULT_MODEL nosuch is no model here: .*Models available: toy; set CLIPAG_DEFAULT_MODEL to one of them/),
    });
    expect(existsSync(dataDir)).toBe(false);
    // A typo gets the closest name.
    await expect(serve({ ...(await env(dataDir)), CLIPAG_DEFAULT_MODEL: 'toi' })).rejects.toThrow(/Models available: toy \(did you mean toy\?\)/);
  });

  it('a model pushed to the local store counts; one that is not is refused with the pushed models named too', async () => {
    const dataDir = join(root, 'pushed-default');
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    const bundle = makeTinyBundle('quickgelu', { dir: join(root, 'pushed-one'), prior: join(REPO_ROOT, 'models', 'test-prior', 'prior.safetensors'), manifest: { name: 'pushed-one' } });
    await stores.models.push(bundle, 'pushed-one');
    await expect(serve({ ...(await env(dataDir)), CLIPAG_DEFAULT_MODEL: 'nosuch' })).rejects.toThrow(/^CLIPAG_DEFAULT_MODEL nosuch is no model here: .*Models available: pushed-one, toy;/);
    const h = await serve({ ...(await env(dataDir)), CLIPAG_DEFAULT_MODEL: 'pushed-one' }, { recipeOverrides: FAST_RECIPE });
    await h.stop();
  }, 30_000);

  it('a CLIPAG_MODELS_DIR that does not exist, or is a file: refused, naming CLIPAG_MODELS_DIR, nothing written', async () => {
    const file = join(root, 'models-file');
    writeFileSync(file, 'x');
    const cases: [string, RegExp][] = [
      [join(root, 'no-such-models'), /does not exist; set CLIPAG_MODELS_DIR to a folder of model bundles/],
      [file, /is a file, not a folder; set CLIPAG_MODELS_DIR to a folder of model bundles/],
    ];
    for (const [dir, why] of cases) {
      const dataDir = join(root, 'bad-models-dir');
      const refused = serve({ ...(await env(dataDir)), CLIPAG_MODELS_DIR: dir }, { recipeOverrides: FAST_RECIPE });
      await expect(refused).rejects.toMatchObject({ code: 'invalid_input', message: expect.stringMatching(new RegExp(`^the models folder ${escape(resolve(dir))} \\(CLIPAG_MODELS_DIR; .*\\) ${why.source}`)) });
      expect(existsSync(dataDir)).toBe(false);
    }
    expect(readdirSync(root)).not.toContain('no-such-models');
  });
});
