// `clipag remote` against the real local server (API, durable queue, worker, tiny engine), as
// test/e2e/local-mode.test.ts starts it: generate with --json, get -o again, an --init upload (and its
// resume with the same Idempotency-Key), a content-policy refusal, an image the output check withholds,
// a --url that is not the API's base address. One server for the file; and one API without a worker,
// whose POST with Prefer: wait is really held, for Ctrl-C during it.
import { mkdirSync, mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../cli/main.ts';
import { remote as remoteVerb } from '../../cli/remote.ts';
import { serve, type ServeHandle } from '../../cli/serve.ts';
import { createApp } from '../../functions/app.ts';
import { localDeps, startApiServer } from '../../functions/server.ts';
import { decodeImage, encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { FAST_RECIPE, freePort, strictAccount, tinyModelsDir } from '../helpers/serve.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-remote-e2e-'));
const modelsDir = tinyModelsDir(root);
const dataDir = join(root, 'data');
const work = join(root, 'work');
mkdirSync(work);
const FAST = FAST_RECIPE;


let h: ServeHandle;
/** A key of another account, whose own policy (ADR 0018) refuses "zebra" and withholds an image that looks like "a photo of a cat". */
let strictKey: string;

beforeAll(async () => {
  strictKey = await strictAccount(dataDir, [{ id: 'no-zebras', category: 'trademark', action: 'refuse', message: 'zebras are a registered mark here', terms: ['zebra'] }]);
  const port = await freePort();
  h = await serve({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(port), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' }, { recipeOverrides: FAST });
});
afterAll(async () => {
  await h?.stop();
  rmSync(root, { recursive: true, force: true });
});

/** `clipag remote …` through the verb dispatch, with this environment (the verb reads it once), its stdout and stderr caught. */
async function remote(argv: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  for (const name of ['CLIPAG_API_URL', 'CLIPAG_API_KEY', 'CLIPAG_DATA_DIR']) vi.stubEnv(name, env[name]);
  const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  const write = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s).replace(/\n$/, '')), true));
  try {
    return { code: await main(['remote', ...argv]), stdout: out.join('\n'), stderr: err.join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
    write.mockRestore();
    vi.unstubAllEnvs();
  }
}

const env = () => ({ CLIPAG_API_URL: h.url, CLIPAG_API_KEY: h.apiKey });

describe('clipag remote against the local server', () => {
  it('generate writes PNGs of the --size asked (n 2: out-0, out-1), --json prints the succeeded view; get -o downloads them again with the key npm start keeps', async () => {
    const out = join(work, 'cat.png');
    const made = await remote(['generate', 'a photo of a cat', '--size', '96x64', '--seed', '7', '--n', '2', '-o', out, '--json'], env());
    expect(made.code, made.stderr).toBe(0);
    const view = JSON.parse(made.stdout);
    expect(view).toMatchObject({ object: 'generation', status: 'succeeded', request: { width: 96, height: 64, n: 2, seed: 7 } });
    expect(view.outputs.map((o: { index: number; seed: number }) => [o.index, o.seed])).toEqual([
      [0, 7],
      [1, 8],
    ]);
    for (const i of [0, 1]) {
      const img = decodeImage(new Uint8Array(readFileSync(join(work, `cat-${i}.png`))));
      expect([img.width, img.height]).toEqual([96, 64]);
    }
    expect(existsSync(out)).toBe(false);

    // No --key and no CLIPAG_API_KEY: a local --url reads the key npm start keeps in CLIPAG_DATA_DIR.
    const again = join(work, 'again.png');
    const got = await remote(['get', view.id, '-o', again, '--url', h.url], { CLIPAG_DATA_DIR: dataDir });
    expect(got.code, got.stderr).toBe(0);
    // The bundle that made them, by the start of its content hash (the local toy folder's).
    expect(view.model_version).toMatch(/^[0-9a-f]{64}$/);
    expect(got.stdout).toContain(`${view.id} succeeded (model toy ${view.model_version.slice(0, 12)}, 96x64, 100 steps, n 2)`);
    expect(got.stdout).toMatch(/image 0: seed 7, clip score -?\d\.\d{3}, wrote .*again-0\.png/);
    expect(got.stdout).toMatch(/image 1: seed 8, clip score -?\d\.\d{3}, wrote .*again-1\.png/);
    for (const i of [0, 1]) expect(readFileSync(join(work, `again-${i}.png`)).equals(readFileSync(join(work, `cat-${i}.png`)))).toBe(true);
  });

  it('--init PATH.png is uploaded (POST /v1/uploads, PUT to the signed URL) and drives the generation', async () => {
    const init = join(work, 'red.png');
    writeFileSync(init, encodePng(solidImage(64, 64, [0.9, 0.1, 0.1])));
    const out = join(work, 'from-init.png');
    const made = await remote(['generate', 'a photo of a cat', '--size', '64x64', '--seed', '1', '--init', init, '--strength', '0.2', '-o', out, '--json'], env());
    expect(made.code, made.stderr).toBe(0);
    const view = JSON.parse(made.stdout);
    expect(view.status).toBe('succeeded');
    expect(view.request).toMatchObject({ init: expect.stringMatching(/^upload:/), strength: 0.2 });
    const img = decodeImage(new Uint8Array(readFileSync(out)));
    const mean = (c: number) => img.data.subarray(c * 4096, (c + 1) * 4096).reduce((a, b) => a + b, 0) / 4096;
    expect(mean(0)).toBeGreaterThan(mean(1)); // still reddish: the uploaded image was the start
  });

  it('a prompt the content policy refuses: exit 1, as clipag generate, with the code, the param and the message; nothing written', async () => {
    const out = join(work, 'zebra.png');
    const refused = await remote(['generate', 'a zebra on a hill', '-o', out], { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/clipag remote: POST \/v1\/generations: 400 content_policy: .*zebras are a registered mark here.* \(param prompt\) \[request_id \S+\]/);
    expect(existsSync(out)).toBe(false);
  });

  it('with --init PATH.png, a refused prompt is caught before the upload (POST /v1/estimates): exit 1, no upload spent', async () => {
    const init = join(work, 'zebra-init.png');
    writeFileSync(init, encodePng(solidImage(64, 64, [0.2, 0.2, 0.2])));
    const refused = await remote(['generate', 'a zebra on a hill', '--init', init, '--strength', '0.5', '-o', join(work, 'zebra2.png')], { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/POST \/v1\/estimates: 400 content_policy: .*zebras are a registered mark here/);
    expect(refused.stderr).not.toMatch(/uploading|uploaded/);
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    expect((await stores.blobs.list('uploads/acct_strict/')).items).toEqual([]);
  });

  it('every image withheld by the output check: exit 3, as clipag generate, and no file', async () => {
    const { WITHHELD_EXIT_CODE: generateWithheld } = await import('../../cli/generate.ts');
    const out = join(work, 'withheld.png');
    const withheld = await remote(['generate', 'a photo of a cat', '--size', '64x64', '-o', out], { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey });
    expect(withheld.code).toBe(generateWithheld);
    expect(withheld.stdout).toMatch(/ failed \(model toy [0-9a-f]{12}, 64x64/);
    expect(withheld.stdout).toContain('image 0: withheld by the output check (cat-lookalike)');
    expect(withheld.stderr).toMatch(/the output check withheld every image: .*looks like "a photo of a cat".*; nothing was written/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('clipag remote against the local server: resuming', () => {
  it('--init PATH.png with --idempotency-key: the upload:ID is printed, and the command again with --init upload:ID replays the generation (no second upload, no 409)', async () => {
    const init = join(work, 'blue.png');
    writeFileSync(init, encodePng(solidImage(64, 64, [0.1, 0.1, 0.9])));
    const key = `e2e-init-${Date.now()}`;
    const first = await remote(['generate', 'a photo of a cat', '--size', '64x64', '--init', init, '--idempotency-key', key, '-o', join(work, 'init-k1.png'), '--json'], env());
    expect(first.code, first.stderr).toBe(0);
    const made = JSON.parse(first.stdout);
    const upload = /uploaded \S+ as (upload:\S+) /.exec(first.stderr)?.[1];
    expect(upload).toBe(made.request.init);
    const again = await remote(['generate', 'a photo of a cat', '--size', '64x64', '--init', upload!, '--idempotency-key', key, '-o', join(work, 'init-k2.png'), '--json'], env());
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).id).toBe(made.id);
    expect(again.stderr).not.toContain('uploading');
    expect(readFileSync(join(work, 'init-k2.png')).equals(readFileSync(join(work, 'init-k1.png')))).toBe(true);
    // The first command as it was, the file again: a new upload, so another request under that key. Said, with the way out.
    const file = await remote(['generate', 'a photo of a cat', '--size', '64x64', '--init', init, '--idempotency-key', key, '-o', join(work, 'init-k3.png')], env());
    expect(file.code).toBe(1);
    expect(file.stderr).toContain(`--idempotency-key with --init ${init}: the file is uploaded again on every run`);
    expect(file.stderr).toMatch(/409 idempotency_key_reused: .*; this run uploaded --init \S+ again \(as upload:\S+\), .*give that run's upload:ID as --init/);
  });

  it('a --url that is not the base address (…/v1): the 404 says the route does not exist, with the server\'s message, not "no generation"', async () => {
    const made = await remote(['generate', 'a photo of a cat', '--size', '64x64', '-o', join(work, 'route.png'), '--json'], env());
    expect(made.code, made.stderr).toBe(0);
    const id = JSON.parse(made.stdout).id;
    const res = await remote(['get', id, '--url', `${h.url}/v1`], { CLIPAG_API_KEY: h.apiKey });
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(new RegExp(`404 not_found: no route for GET /v1/v1/generations/${id} .*; is --url http://127\\.0\\.0\\.1:\\d+/v1 the API's base address \\(with its stage path, without /v1\\)\\?`));
    expect(res.stderr).not.toContain('no generation');
  });
});

/** `clipag remote` itself (not through main), so that a test can interrupt it with a signal, as its SIGINT handler does. */
async function interruptible(argv: string[], envVars: Record<string, string>, signal: AbortSignal): Promise<{ code: number; stderr: string }> {
  const err: string[] = [];
  const code = await remoteVerb(argv, { env: envVars, out: () => {}, err: (l) => err.push(l), signal });
  return { code, stderr: err.join('\n') };
}

describe('clipag remote: Ctrl-C while the real API holds the POST (an API with no worker: the job stays queued, the POST held)', () => {
  let api: { url: string; close(): Promise<void> };
  let key: string;
  beforeAll(async () => {
    const data = join(root, 'held-data');
    const deps = await localDeps({ ...(parseConfig({ CLIPAG_DATA_DIR: data, CLIPAG_MODELS_DIR: modelsDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    key = (await deps.adapters.keys.create({ name: 'held', owner: 'acct_held' })).secret;
    api = await startApiServer(createApp({ ...deps, log: () => {} }), 0);
  });
  afterAll(async () => {
    await api?.close();
  });

  /** The account's generations, newest first, as the API lists them. */
  async function listed(): Promise<Array<{ id: string; status: string; cancel_requested: boolean }>> {
    const res = await fetch(`${api.url}/v1/generations`, { headers: { Authorization: `Bearer ${key}` } });
    return ((await res.json()) as { data: Array<{ id: string; status: string; cancel_requested: boolean }> }).data;
  }

  async function interruptedWhileHeld(extra: string[]): Promise<{ code: number; stderr: string; id: string }> {
    const before = new Set((await listed()).map((g) => g.id));
    const interrupt = new AbortController();
    // --timeout 8: the POST asks to be held 8 s (the server's hold ends then, after the test has moved on).
    const running = interruptible(['generate', 'a photo of a cat', '--size', '64x64', '--url', api.url, '-o', join(work, 'held.png'), '--timeout', '8', ...extra], { CLIPAG_API_KEY: key }, interrupt.signal);
    // The job exists once the POST is being held: listed while the POST has not answered.
    let id: string | undefined;
    for (const t0 = Date.now(); id === undefined; await new Promise((r) => setTimeout(r, 50))) {
      if (Date.now() - t0 > 6000) throw new Error('no job listed while the POST was held');
      id = (await listed()).find((g) => !before.has(g.id))?.id;
    }
    interrupt.abort();
    const res = await running;
    return { ...res, id };
  }

  it('with --cancel-on-interrupt: the same POST again gets the job (a replay), which is canceled; no second job', async () => {
    const before = (await listed()).length;
    const res = await interruptedWhileHeld(['--cancel-on-interrupt']);
    expect(res.code, res.stderr).toBe(130);
    expect(res.stderr).toContain(`interrupted; generation ${res.id} canceled (--cancel-on-interrupt)`);
    const after = await listed();
    expect(after).toHaveLength(before + 1);
    expect(after.find((g) => g.id === res.id)!.status).toBe('canceled');
  });

  it('without it: the job goes on, and the command printed (its Idempotency-Key) gets that job, not a second one', async () => {
    const before = (await listed()).length;
    const res = await interruptedWhileHeld([]);
    expect(res.code).toBe(130);
    expect(res.stderr).toMatch(/interrupted; the POST was sent and no answer came back, so it may have made a generation, not canceled \(Idempotency-Key clipag-remote-\S+\): clipag remote generate .* --idempotency-key clipag-remote-\S+ gets it, never a second one/);
    expect((await listed()).find((g) => g.id === res.id)!.status).toBe('queued');
    // The printed command, read once (its --timeout swapped for 0: a flag may be given once): a replay of the held job.
    const printed = /: clipag remote (generate .*?) gets it/.exec(res.stderr)![1]!;
    const argv = [...printed.matchAll(/(?:[^\s']+|'[^']*')+/g)].map((m) => m[0].replace(/'([^']*)'/g, '$1'));
    const at = argv.indexOf('--timeout');
    if (at >= 0) argv.splice(at, 2);
    const again = await interruptible([...argv, '--timeout', '0'], { CLIPAG_API_KEY: key }, new AbortController().signal);
    expect(again.code, again.stderr).toBe(124); // still queued: it goes on
    // Queued, with what the API says of the fleet (ADR 0040): this API runs no worker.
    expect(again.stderr).toContain(`the API replayed generation ${res.id} (queued (no worker is running: `);
    expect(await listed()).toHaveLength(before + 1);
  });
});
