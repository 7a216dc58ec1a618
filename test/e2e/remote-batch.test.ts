// `clipag remote batch` against the real local server (API, durable queue, worker, tiny engine): a file
// of requests run to its end, images and results.jsonl; the same command again makes nothing twice (a
// lost image is downloaded again from the same generation, an init file is not uploaded again);
// --retry-failed makes a failed line again; bad lines are refused before any request; --timeout with
// generations going on (an API without a worker) says how to resume, and the resume finds them.
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { remote } from '../../cli/remote.ts';
import { costText } from '../../cli/remote-batch.ts';
import { REPO_ROOT, UsageError } from '../../cli/common.ts';
import { serve, type ServeHandle } from '../../cli/serve.ts';
import { createApp } from '../../functions/app.ts';
import { localDeps, startApiServer } from '../../functions/server.ts';
import { decodeImage, encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { FAST_RECIPE, freePort, strictAccount, tinyModelsDir } from '../helpers/serve.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-batch-e2e-'));
const modelsDir = tinyModelsDir(root);
const dataDir = join(root, 'data');
const work = join(root, 'work');
mkdirSync(work);

let h: ServeHandle;
/** A key of an account whose own policy withholds every image of "a photo of a cat" (ADR 0018): its generations fail. */
let strictKey: string;

beforeAll(async () => {
  strictKey = await strictAccount(dataDir);
  const port = await freePort();
  h = await serve({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(port), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' }, { recipeOverrides: FAST_RECIPE });
});
afterAll(async () => {
  await h?.stop();
  rmSync(root, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string[];
  stderr: string;
}

async function batch(args: string[], env: Record<string, string>, signal?: AbortSignal): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await remote(['batch', ...args], { env, out: (l) => out.push(l), err: (l) => err.push(l), ...(signal ? { signal } : {}) });
  return { code, stdout: out, stderr: err.join('\n') };
}

const env = () => ({ CLIPAG_API_URL: h.url, CLIPAG_API_KEY: h.apiKey });

function results(dir: string): Array<Record<string, unknown> & { id: string; status: string; generation_id: string | null; files: string[] }> {
  return readFileSync(join(dir, 'results.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

/** The account's generations, as the API lists them. */
async function listed(url: string, key: string): Promise<string[]> {
  const res = await fetch(`${url}/v1/generations?limit=100`, { headers: { Authorization: `Bearer ${key}` } });
  return ((await res.json()) as { data: Array<{ id: string }> }).data.map((g) => g.id);
}

function jsonl(path: string, lines: unknown[]): string {
  writeFileSync(path, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
  return path;
}

describe('clipag remote batch against the local server', () => {
  it('runs every line (ids, n 2, an init_file, a refused prompt), writes the images and results.jsonl in order; run again, it makes nothing twice', async () => {
    const init = join(work, 'red.png');
    writeFileSync(init, encodePng(solidImage(64, 64, [0.9, 0.1, 0.1])));
    const file = jsonl(join(work, 'first.jsonl'), [
      { id: 'circle', prompt: 'a large red circle on the left', width: 96, height: 64, seed: 3, metadata: { batch: 'spring' } },
      { prompt: 'a small blue star, top', n: 2, width: 64, height: 64 },
      { id: 'mickey', prompt: 'mickey mouse waving' },
      { id: 'from-red', prompt: 'a photo of a cat', init_file: 'red.png', strength: 0.2, width: 64, height: 64, seed: 1 },
    ]);
    const dir = join(work, 'first');
    const before = (await listed(h.url, h.apiKey)).length;
    const run = await batch([file, '--parallel', '3'], env());
    // The refused line makes the run exit 1; the others are there.
    expect(run.code, run.stderr).toBe(1);
    const r = results(dir);
    expect(r.map((x) => [x.id, x.status])).toEqual([
      ['circle', 'succeeded'],
      ['line-2', 'succeeded'],
      ['mickey', 'refused'],
      ['from-red', 'succeeded'],
    ]);
    expect(r[0]).toMatchObject({ line: 1, files: ['circle.png'], seeds: [3], withheld: [], error: null });
    expect(r[1]!.files).toEqual(['line-2-0.png', 'line-2-1.png']);
    expect(r[2]).toMatchObject({ generation_id: null, error: { code: 'content_policy' } });
    expect(String((r[2]!.error as { message: string }).message)).toMatch(/mickey/i);
    const circle = decodeImage(new Uint8Array(readFileSync(join(dir, 'circle.png'))));
    expect([circle.width, circle.height]).toEqual([96, 64]);
    for (const f of ['line-2-0.png', 'line-2-1.png', 'from-red.png']) expect(decodeImage(new Uint8Array(readFileSync(join(dir, f)))).width).toBe(64);
    // The init file was the start: the image is still reddish.
    const red = decodeImage(new Uint8Array(readFileSync(join(dir, 'from-red.png'))));
    const mean = (c: number) => red.data.subarray(c * 4096, (c + 1) * 4096).reduce((a, b) => a + b, 0) / 4096;
    expect(mean(0)).toBeGreaterThan(mean(1));
    // Each line printed as it ended; a summary on stderr.
    expect(run.stdout.find((l) => l.startsWith('circle succeeded'))).toMatch(new RegExp(`^circle succeeded ${r[0]!.generation_id} wrote .*circle\\.png$`));
    expect(run.stderr).toMatch(/4 lines: 3 succeeded, 1 refused; results in .*results\.jsonl/);
    const made = await listed(h.url, h.apiKey);
    expect(made.length - before).toBe(3);
    // The API has the line's labels.
    const g = await (await fetch(`${h.url}/v1/generations/${r[0]!.generation_id}`, { headers: { Authorization: `Bearer ${h.apiKey}` } })).json();
    expect((g as { metadata: unknown }).metadata).toEqual({ batch: 'spring' });

    // Again: the succeeded lines are kept as they are; nothing new is made.
    const circleBytes = readFileSync(join(dir, 'circle.png'));
    const again = await batch([file], env());
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('(3 kept from an earlier run)');
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    expect(results(dir).map((x) => x.generation_id)).toEqual(r.map((x) => x.generation_id));

    // A lost image: its line's generation is asked for again (the same Idempotency-Key: a replay) and
    // downloaded again; the init file is not uploaded again (a second upload would be another request: 409).
    rmSync(join(dir, 'circle.png'));
    rmSync(join(dir, 'from-red.png'));
    const uploadsBefore = (await uploads(h.apiKey)).length;
    const third = await batch([file, '--json'], env());
    expect(third.code).toBe(1);
    expect(third.stderr).toContain('(1 kept from an earlier run)');
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    expect((await uploads(h.apiKey)).length).toBe(uploadsBefore);
    expect(readFileSync(join(dir, 'circle.png')).equals(circleBytes)).toBe(true);
    const printed = third.stdout.map((l) => JSON.parse(l) as { id: string; generation_id: string });
    expect(printed.find((x) => x.id === 'from-red')?.generation_id).toBe(r[3]!.generation_id);

    // Another --batch-key: every line made again.
    const fresh = await batch([file, '--batch-key', 'second', '-d', join(work, 'first-b')], env());
    expect(fresh.code).toBe(1);
    const r2 = results(join(work, 'first-b'));
    for (const i of [0, 1, 3]) expect(r2[i]!.generation_id).not.toBe(r[i]!.generation_id);
  });

  it('one upload for an init file that several lines name; a run into a folder another run holds is refused', async () => {
    writeFileSync(join(work, 'shared-init.png'), encodePng(solidImage(64, 64, [0.2, 0.6, 0.2])));
    const file = jsonl(
      join(work, 'shared.jsonl'),
      Array.from({ length: 4 }, (_, i) => ({ id: `s${i}`, prompt: `a green square ${i}`, init_file: 'shared-init.png', width: 64, height: 64 })),
    );
    const e = env();
    const before = (await uploads(h.apiKey)).length;
    const run = await batch([file], e);
    expect(run.code, `${run.stderr}\n${run.stdout.join('\n')}`).toBe(0);
    expect((await uploads(h.apiKey)).length - before).toBe(1);
    // Another run's lock on the folder (a live pid: this process's parent stands in).
    writeFileSync(join(work, 'shared', '.lock'), String(process.ppid));
    await expect(batch([file], e)).rejects.toThrow(/another run \(pid \d+\) is using .*shared/);
    // A lock whose run died is taken over; the lines are kept, nothing is uploaded again.
    writeFileSync(join(work, 'shared', '.lock'), '999999999');
    const again = await batch([file], e);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain('(4 kept from an earlier run)');
    expect((await uploads(h.apiKey)).length - before).toBe(1);
  });

  it('the folder (its journal) gone, or another -d: a line with an init_file gets the generation the first run made by looking its key up: no upload, never a second one', async () => {
    writeFileSync(join(work, 'lost-init.png'), encodePng(solidImage(64, 64, [0.1, 0.3, 0.8])));
    const file = jsonl(join(work, 'lost.jsonl'), [
      { id: 'a', prompt: 'a blue square', width: 64, height: 64, seed: 4 },
      { id: 'd', prompt: '  a blue circle ', init_file: 'lost-init.png', strength: 0.3, width: 64, height: 64, metadata: { run: 'one' } },
      { id: 'e', prompt: 'a blue circle', init_file: 'lost-init.png', width: 64, height: 64 },
    ]);
    const dir = join(work, 'lost');
    const first = await batch([file], env());
    expect(first.code, first.stderr).toBe(0);
    const r1 = results(dir);
    const made = await listed(h.url, h.apiKey);
    const uploadsBefore = (await uploads(h.apiKey)).length;

    rmSync(dir, { recursive: true });
    const again = await batch([file], env());
    expect(again.code, `${again.stderr}\n${again.stdout.join('\n')}`).toBe(0);
    expect(results(dir).map((x) => [x.id, x.status, x.generation_id])).toEqual(r1.map((x) => [x.id, 'succeeded', x.generation_id]));
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    // No upload at all: each line's key named its generation, and so the upload it was made with (journaled now).
    expect((await uploads(h.apiKey)).length).toBe(uploadsBefore);
    rmSync(join(dir, 'd.png'));
    const third = await batch([file], env());
    expect(third.code).toBe(0);
    expect((await uploads(h.apiKey)).length).toBe(uploadsBefore);
    expect(await listed(h.url, h.apiKey)).toEqual(made);

    // Another -d: the same generations, no upload either.
    const other = await batch([file, '-d', join(work, 'lost-other')], env());
    expect(other.code, other.stderr).toBe(0);
    expect(results(join(work, 'lost-other')).map((x) => x.generation_id)).toEqual(r1.map((x) => x.generation_id));
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    expect((await uploads(h.apiKey)).length).toBe(uploadsBefore);
  });

  // The pipeline review's F1: a file another line has written since (id-less lines renumbered by a line
  // added above them) was kept as this line's image, "wrote" printed, exit 0.
  it("a rerun keeps a line's file only while it holds the bytes the line's run wrote; one another line has written since is downloaded again", async () => {
    const a = jsonl(join(work, 'shift-a.jsonl'), [{ prompt: 'a red circle', seed: 1 }, { prompt: 'a green square', seed: 2 }]);
    const dir = join(work, 'shift');
    expect((await batch([a, '-d', dir], env())).code).toBe(0);
    const first = results(dir);
    expect(first.map((r) => (r.files_sha256 as string[]).length)).toEqual([1, 1]);
    // One line added on top: every id-less line is renamed, and its files written over.
    const b = jsonl(join(work, 'shift-b.jsonl'), [{ prompt: 'a blue star', seed: 3 }, { prompt: 'a red circle', seed: 1 }, { prompt: 'a green square', seed: 2 }]);
    expect((await batch([b, '-d', dir], env())).code).toBe(0);
    const made = await listed(h.url, h.apiKey);
    const again = await batch([a, '-d', dir], env());
    expect(again.code).toBe(0);
    // Each file holds its own generation's image again (downloaded again: that generation, no new one).
    for (const r of results(dir)) {
      const res = await fetch(`${h.url}/v1/generations/${r.generation_id}/outputs/0`, { headers: { Authorization: `Bearer ${h.apiKey}` } });
      const want = new Uint8Array(await res.arrayBuffer());
      expect(createHash('sha256').update(readFileSync(join(dir, r.files[0]!))).digest('hex'), r.id).toBe(createHash('sha256').update(want).digest('hex'));
    }
    expect(results(dir).map((r) => r.generation_id)).toEqual(first.map((r) => r.generation_id));
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    expect(again.stdout.every((l) => l.includes(' wrote '))).toBe(true);
    // And run once more, nothing has changed: kept, said so.
    const kept = await batch([a, '-d', dir], env());
    expect(kept.stdout.map((l) => l.split(' ')[3])).toEqual(['kept', 'kept']);
  });

  it('a line whose generation was deleted and whose journal is gone: the lookup finds it, says it was deleted, and makes nothing (no upload, no generation)', async () => {
    writeFileSync(join(work, 'gone-init.png'), encodePng(solidImage(64, 64, [0.8, 0.8, 0.1])));
    const file = jsonl(join(work, 'deleted.jsonl'), [{ id: 'g', prompt: 'a yellow square', init_file: 'gone-init.png', width: 64, height: 64 }]);
    const dir = join(work, 'deleted');
    const auth = { Authorization: `Bearer ${h.apiKey}` };
    expect((await batch([file], env())).code).toBe(0);
    const [first] = results(dir);
    expect((await fetch(`${h.url}/v1/generations/${first!.generation_id}`, { method: 'DELETE', headers: auth })).status).toBe(200);
    rmSync(dir, { recursive: true });
    const made = await listed(h.url, h.apiKey);
    const uploadsBefore = (await uploads(h.apiKey)).length;
    const again = await batch([file], env());
    expect(again.code).toBe(1);
    const [r] = results(dir);
    // As with the journal: the line's generation, whose images are gone.
    expect(r).toMatchObject({ status: 'error', generation_id: first!.generation_id, error: { code: 'no_images' } });
    expect((r!.error as { message: string }).message).toMatch(/has no images to download \(deleted at /);
    expect(await listed(h.url, h.apiKey)).toEqual(made);
    expect((await uploads(h.apiKey)).length).toBe(uploadsBefore);
    // The pipeline review's F3: the message says how to make it again, and --retry-failed does (it looped before).
    expect((r!.error as { message: string }).message).toMatch(/; --retry-failed makes this line again \(a new generation\)$/);
    const retried = await batch([file, '--retry-failed'], env());
    expect(retried.code, retried.stderr).toBe(0);
    const [made2] = results(dir);
    expect(made2).toMatchObject({ status: 'succeeded', attempt: 2 });
    expect(made2!.generation_id).not.toBe(first!.generation_id);
    // And with the journal (its record: error no_images), the same.
    expect((await fetch(`${h.url}/v1/generations/${made2!.generation_id}`, { method: 'DELETE', headers: auth })).status).toBe(200);
    rmSync(join(dir, 'g.png'));
    expect((await batch([file], env())).code).toBe(1);
    const third = await batch([file, '--retry-failed'], env());
    expect(third.code, third.stderr).toBe(0);
    expect(results(dir)[0]).toMatchObject({ status: 'succeeded', attempt: 3 });
  });

  it('--retry-failed without a journal: the lookup passes the failed attempt (no guess, no upload) and makes the next; without the flag the same failed generation', async () => {
    writeFileSync(join(work, 'cat-init.png'), encodePng(solidImage(64, 64, [0.5, 0.4, 0.3])));
    const file = jsonl(join(work, 'cat-retry.jsonl'), [{ id: 'c', prompt: 'a photo of a cat', init_file: 'cat-init.png', strength: 0.3, width: 64, height: 64 }]);
    const dir = join(work, 'cat-retry');
    const strict = { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey };
    expect((await batch([file], strict)).code).toBe(3); // every image withheld: exit 3
    const [r1] = results(dir);
    expect(r1).toMatchObject({ status: 'failed', attempt: 1 });
    const uploadsBefore = (await uploads(strictKey)).length;
    const made = await listed(h.url, strictKey);

    rmSync(dir, { recursive: true });
    expect((await batch([file], strict)).code).toBe(3); // every image withheld: exit 3
    expect(results(dir)[0]).toMatchObject({ status: 'failed', attempt: 1, generation_id: r1!.generation_id });
    expect(await listed(h.url, strictKey)).toEqual(made);

    rmSync(dir, { recursive: true });
    const retried = await batch([file, '--retry-failed'], strict);
    expect(retried.code, retried.stderr).toBe(3);
    const [r2] = results(dir);
    expect(r2).toMatchObject({ status: 'failed', attempt: 2 });
    expect(r2!.generation_id).not.toBe(r1!.generation_id);
    // One generation more, sent with the first attempt's upload: no upload.
    expect((await listed(h.url, strictKey)).filter((id) => !made.includes(id))).toEqual([r2!.generation_id]);
    expect((await uploads(strictKey)).length).toBe(uploadsBefore);
  });

  it('an upload the journal kept that the API no longer has (AWS removes uploads after 5 days) is made again, once, for a line with no generation yet', async () => {
    const png = encodePng(solidImage(64, 64, [0.7, 0.3, 0.1]));
    writeFileSync(join(work, 'old-init.png'), png);
    const file = jsonl(join(work, 'expired.jsonl'), [{ id: 'e', prompt: 'a photo of a cat', init_file: 'old-init.png', width: 64, height: 64 }]);
    // What an earlier run left: the file's upload, since removed by the store.
    mkdirSync(join(work, 'expired'), { recursive: true });
    const sha = createHash('sha256').update(png).digest('hex');
    writeFileSync(join(work, 'expired', 'journal.jsonl'), `${JSON.stringify({ stem: `upload-${sha}`, upload: 'upload:removed-by-the-lifecycle-rule' })}\n`);
    const before = (await uploads(h.apiKey)).length;
    const run = await batch([file], env());
    expect(run.code, `${run.stderr}\n${run.stdout.join('\n')}`).toBe(0);
    expect((await uploads(h.apiKey)).length - before).toBe(1);
  });

  it('a line whose generation failed stays failed when run again (the same generation); --retry-failed makes it again', async () => {
    const file = jsonl(join(work, 'failing.jsonl'), [{ id: 'cat', prompt: 'a photo of a cat', width: 64, height: 64 }]);
    const strict = { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey };
    const first = await batch([file], strict);
    // Every image withheld by the output check: exit 3, as `remote generate` exits for it, not 1.
    expect(first.code).toBe(3);
    expect(first.stderr).toContain('1 lines: 1 failed (1 with images withheld)');
    const [r1] = results(join(work, 'failing'));
    expect(r1).toMatchObject({ status: 'failed', withheld: [0], error: { code: 'content_policy' }, attempt: 1 });
    const again = await batch([file], strict);
    expect(again.code).toBe(3);
    expect(results(join(work, 'failing'))[0]!.generation_id).toBe(r1!.generation_id);
    const retried = await batch([file, '--retry-failed'], strict);
    expect(retried.code).toBe(3);
    const [r3] = results(join(work, 'failing'));
    expect(r3).toMatchObject({ status: 'failed', attempt: 2 });
    expect(r3!.generation_id).not.toBe(r1!.generation_id);
  });

  it('a line withheld whole beside a line that failed otherwise: exit 1 (the failure decides)', async () => {
    const file = jsonl(join(work, 'mixed.jsonl'), [
      { id: 'cat', prompt: 'a photo of a cat', width: 64, height: 64 },
      { id: 'nomodel', prompt: 'a red circle', width: 64, height: 64, model: 'no-such-model' },
    ]);
    const run = await batch([file], { CLIPAG_API_URL: h.url, CLIPAG_API_KEY: strictKey });
    expect(run.code, run.stderr).toBe(1);
    expect(results(join(work, 'mixed')).map((r) => [r.id, r.status])).toEqual([['cat', 'failed'], ['nomodel', 'refused']]);
  });

  // The pipeline review's F5, F7, F9: nothing listening (the API restarting) is a stop the same command
  // goes on from: exit 75, not the 1 of a refused line; --json reports every line, the ones not begun too;
  // a line pasted twice (the same request, the same seed, no id) is said before anything is sent.
  it('nothing listening: exit 75 (EX_TEMPFAIL), every line on --json stdout; a seeded line pasted twice is warned of', async () => {
    const port = await freePort();
    const file = jsonl(join(work, 'down.jsonl'), [
      { prompt: 'a red circle', seed: 5 },
      { prompt: 'a blue square' },
      { prompt: 'a red circle', seed: 5 },
      { prompt: 'a blue square' },
    ]);
    const run = await batch([file, '--json', '--parallel', '1'], { CLIPAG_API_URL: `http://127.0.0.1:${port}`, CLIPAG_API_KEY: 'ck_any_key' });
    expect(run.code, run.stderr).toBe(75);
    expect(run.stderr).toContain('clipag remote batch: warning: lines 1, 3 are the same request with the same seed (no "id"): each is made and billed, the same image each time; drop the copies, or give each an "id" if that is what you want');
    expect(run.stderr).not.toContain('lines 2, 4');
    expect(run.stderr).toMatch(/stopped: .*connection refused: is the API running at http:\/\/127\.0\.0\.1:\d+\/\? \(the same command again goes on\)/);
    expect(run.stdout.map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(['line-1', 'line-2', 'line-3', 'line-4']);
  });

  it("the summary's cost says how much of it is for lines kept from an earlier run (paid then)", () => {
    const line = (status: 'succeeded' | 'failed', cost_usd: number | null, kept?: boolean) => ({ status, cost_usd, ...(kept ? { kept } : {}) });
    expect(costText([line('succeeded', 0.5, true), line('succeeded', 0.25), line('failed', 0.125)])).toBe('; cost $0.8750 (of it $0.5000 for lines kept from earlier runs)');
    expect(costText([line('succeeded', 0.5), line('succeeded', null)])).toBe('; cost $0.5000 (1 priced)');
    expect(costText([line('succeeded', null)])).toBe('');
  });

  // The review of the exit-75 change: an error a person must fix (a folder where the image goes) exited
  // 75 ("run it again"), and a pipeline retrying on 75 looped for ever.
  it('a line that could not be kept for a reason a person must fix (a folder at its image path): error, not retryable, exit 1', async () => {
    const file = jsonl(join(work, 'blocked.jsonl'), [{ id: 'b', prompt: 'a red circle', seed: 9 }]);
    const dir = join(work, 'blocked');
    mkdirSync(join(dir, 'b.png'), { recursive: true });
    const run = await batch([file], env());
    expect(run.code, run.stderr).toBe(1);
    const [r] = results(dir);
    expect(r).toMatchObject({ status: 'error', error: { retryable: false } });
    rmSync(join(dir, 'b.png'), { recursive: true });
    expect((await batch([file], env())).code).toBe(0);
  });

  it('bad lines: every problem named by its line number, nothing sent (exit 2 through the CLI)', async () => {
    const file = join(work, 'bad.jsonl');
    // The default folder for bad.jsonl, holding a line's own output name.
    mkdirSync(join(work, 'bad'), { recursive: true });
    writeFileSync(join(work, 'bad', 'own.png'), encodePng(solidImage(64, 64, [0.5, 0.5, 0.5])));
    writeFileSync(
      file,
      '\uFEFF' +
      [
        JSON.stringify({ prompt: 'a red circle' }),
        '{"prompt": "a red circle"', // cut short
        JSON.stringify({ prompt: 'a blue star', steps: 0 }),
        JSON.stringify({ id: 'a b', prompt: 'x' }),
        JSON.stringify({ id: 'twice', prompt: 'x' }),
        JSON.stringify({ id: 'twice', prompt: 'y' }),
        JSON.stringify({ prompt: 'x', init_file: 'missing.png' }),
        JSON.stringify({ prompt: 'x', init: 'gmm', init_file: 'red.png' }),
        JSON.stringify({ id: 'pair', prompt: 'x', n: 2 }),
        JSON.stringify({ id: 'pair-1', prompt: 'x' }),
        '[1, 2]',
        JSON.stringify({ id: 'nul', prompt: 'x' }),
        JSON.stringify({ id: 'own', prompt: 'x', init_file: 'bad/own.png' }),
        // Inline images (ADR 0042) get the API's check too, not only the schema's "data:".
        JSON.stringify({ id: 'inline-text', prompt: 'x', init: 'data:text/plain;base64,aGVsbG8=' }),
        JSON.stringify({ id: 'inline-junk', prompt: 'x', init: 'data:image/png;base64,@@@@' }),
        JSON.stringify({ id: 'inline-ok', prompt: 'x', init: `data:image/png;base64,${Buffer.from(encodePng(solidImage(8, 8, [0.2, 0.4, 0.6]))).toString('base64')}` }),
      ].join('\n'),
    );
    // Nothing listens there: a request would fail otherwise than with these problems.
    const run = batch([file], { CLIPAG_API_URL: 'http://127.0.0.1:1', CLIPAG_API_KEY: 'ck_x_y' });
    await expect(run).rejects.toThrow(UsageError);
    const message = await run.catch((e: Error) => e.message);
    for (const want of [
      'line 2: not JSON',
      'line 3: steps:',
      'line 4: "id" must be 1-64 of',
      'line 6: "id" twice is line 5\'s too',
      'line 7: cannot read "init_file" missing.png: ENOENT',
      'line 8: give "init" or "init_file", not both',
      "line 10: its image pair-1.png is also line 9's",
      'line 11: not a JSON object',
      'line 12: "id" nul is a device name on Windows',
      "line 13: \"init_file\" bad/own.png is line 13's output in",
      'line 14: init: a data: URI with media type "text/plain"',
      "line 15: init: the data: URI's data is not base64",
    ]) {
      expect(message).toContain(want);
    }
    // Line 1 (after a byte-order mark) is fine.
    expect(message).toMatch(/13 problems, nothing was sent/);
    expect(message).not.toContain('line 1:');
    expect(message).not.toContain('line 16:');
  });
});

describe('clipag remote batch: --timeout while the generations go on (an API with no worker: the jobs stay queued)', () => {
  let api: { url: string; close(): Promise<void> };
  let key: string;
  beforeAll(async () => {
    const deps = await localDeps({ ...(parseConfig({ CLIPAG_DATA_DIR: join(root, 'queued-data'), CLIPAG_MODELS_DIR: modelsDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    key = (await deps.adapters.keys.create({ name: 'queued', owner: 'acct_queued' })).secret;
    api = await startApiServer(createApp({ ...deps, log: () => {} }), 0);
  });
  afterAll(async () => {
    await api?.close();
  });

  it('exit 124, each line timed_out with its generation, the command to resume printed; the resume finds the same generations', async () => {
    const file = jsonl(join(work, 'queued.jsonl'), [
      { id: 'a', prompt: 'a red circle' },
      { id: 'b', prompt: 'a blue square' },
    ]);
    const e = { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key };
    const run = await batch([file, '--timeout', '2'], e);
    expect(run.code, `${run.stderr}\n${run.stdout.join('\n')}`).toBe(124);
    const r = results(join(work, 'queued'));
    expect(r.map((x) => x.status)).toEqual(['timed_out', 'timed_out']);
    expect(r.every((x) => typeof x.generation_id === 'string')).toBe(true);
    expect(run.stderr).toMatch(/2 generations go on; clipag remote batch \S+queued\.jsonl -d \S+queued picks them up and runs the lines not finished \(no line is made twice\)/);
    const again = await batch([file, '--timeout', '1'], e);
    expect(again.code).toBe(124);
    expect(results(join(work, 'queued')).map((x) => x.generation_id)).toEqual(r.map((x) => x.generation_id));
    expect((await listed(api.url, key)).sort()).toEqual(r.map((x) => x.generation_id).sort());
  });

  it('a line with webhook_url keeps its signing secret (the POST\'s answer only) in the journal and results.jsonl (not --json\'s stdout), files 0600; a run without the journal learns it again', async () => {
    const file = jsonl(join(work, 'hooks.jsonl'), [
      { id: 'hooked', prompt: 'a red circle', webhook_url: 'http://127.0.0.1:9/hook' },
      { id: 'plain', prompt: 'a blue square' },
    ]);
    const dir = join(work, 'hooks');
    const e = { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key };
    const run = await batch([file, '--timeout', '3', '--json'], e);
    expect(run.code, run.stderr).toBe(124);
    const [hooked, plain] = results(dir);
    expect(hooked).toMatchObject({ id: 'hooked', status: 'timed_out', webhook_secret: expect.stringMatching(/^whsec_[A-Za-z0-9+/]{32}$/) });
    expect(plain).toMatchObject({ id: 'plain', webhook_secret: null });
    const secret = hooked!.webhook_secret as string;
    // Not on stdout, --json included (a pipeline's captured stdout is a log: the pipeline review's F6).
    expect(run.stdout.map((l) => JSON.parse(l) as { id: string; webhook_secret?: unknown }).find((l) => l.id === 'hooked')).toMatchObject({ status: 'timed_out' });
    expect(run.stdout.join('\n')).not.toContain('whsec_');
    expect(run.stderr).not.toContain('whsec_');
    expect(readFileSync(join(dir, 'journal.jsonl'), 'utf8')).toContain(secret);
    // Only the owner may read the files that hold it (the images' folder may be shared).
    const mode = (name: string) => statSync(join(dir, name)).mode & 0o777;
    expect([mode('journal.jsonl'), mode('results.jsonl')]).toEqual([0o600, 0o600]);

    // Again, without --json: the human lines never print it; a journal an older version left 0644 is closed.
    chmodSync(join(dir, 'journal.jsonl'), 0o644);
    const again = await batch([file, '--timeout', '1'], e);
    expect(again.code).toBe(124);
    expect(`${again.stdout.join('\n')}\n${again.stderr}`).not.toContain('whsec_');
    expect(results(dir)[0]!.webhook_secret).toBe(secret);
    expect([mode('journal.jsonl'), mode('results.jsonl')]).toEqual([0o600, 0o600]);

    // The journal gone: the line's POST again (its key) is answered with the same generation and secret.
    rmSync(dir, { recursive: true });
    expect((await batch([file, '--timeout', '2'], e)).code).toBe(124);
    expect(results(dir).map((r) => [r.generation_id, r.webhook_secret])).toEqual([[hooked!.generation_id, secret], [plain!.generation_id, null]]);
  });

  it('--retry-failed makes a canceled line again once: a third run finds the retry going on and makes no other', async () => {
    const file = jsonl(join(work, 'retry-once.jsonl'), [{ id: 'r', prompt: 'a red circle' }]);
    const e = { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key };
    const first = await batch([file, '--timeout', '1'], e);
    expect(first.code).toBe(124);
    const g1 = results(join(work, 'retry-once'))[0]!.generation_id!;
    await fetch(`${api.url}/v1/generations/${g1}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${key}` } });
    const second = await batch([file, '--timeout', '1'], e);
    expect(results(join(work, 'retry-once'))[0]).toMatchObject({ status: 'canceled', generation_id: g1 });
    expect(second.code).toBe(1);
    const retried = await batch([file, '--retry-failed', '--timeout', '1'], e);
    expect(retried.code).toBe(124);
    const g2 = results(join(work, 'retry-once'))[0]!.generation_id!;
    expect(g2).not.toBe(g1);
    // The retry is still queued: the same command with --retry-failed picks it up, it makes no third.
    const third = await batch([file, '--retry-failed', '--timeout', '1'], e);
    expect(third.code).toBe(124);
    expect(results(join(work, 'retry-once'))[0]).toMatchObject({ generation_id: g2, attempt: 2 });
    // And without the journal: the lookup finds attempt 1 canceled and attempt 2 going on; no third.
    rmSync(join(work, 'retry-once'), { recursive: true });
    const fourth = await batch([file, '--retry-failed', '--timeout', '1'], e);
    expect(fourth.code).toBe(124);
    expect(results(join(work, 'retry-once'))[0]).toMatchObject({ generation_id: g2, attempt: 2 });
    const before = await listed(api.url, key);
    const mine = before.filter((id) => id === g1 || id === g2);
    expect(mine.sort()).toEqual([g1, g2].sort());
    // Without --retry-failed and without the journal, attempt 1's key names the canceled generation: nothing made.
    rmSync(join(work, 'retry-once'), { recursive: true });
    expect((await batch([file, '--timeout', '1'], e)).code).toBe(1);
    expect(results(join(work, 'retry-once'))[0]).toMatchObject({ status: 'canceled', generation_id: g1, attempt: 1 });
    expect(await listed(api.url, key)).toEqual(before);
  });

  it('a key the API refuses stops the run at the first line (not once a line), with the hint; exit 1', async () => {
    const file = jsonl(join(work, 'badkey.jsonl'), Array.from({ length: 12 }, (_, i) => ({ prompt: `a red circle ${i}` })));
    const run = await batch([file, '--parallel', '1'], { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: 'ck_nosuch_key' });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/stopped: the API refused the key from CLIPAG_API_KEY \(401 /);
    expect(results(join(work, 'badkey')).map((r) => r.status)).toEqual(Array(12).fill('not_started'));
    // Without --json the lines not begun are counted in the summary, not printed one by one (a 500-line
    // file printed 500): only the one the key was refused on.
    expect(run.stdout).toEqual(['line-1 not_started']);
  });

  it('Ctrl-C: exit 130, the lines in flight interrupted (they go on), the rest not started', async () => {
    const file = jsonl(
      join(work, 'interrupted.jsonl'),
      Array.from({ length: 6 }, (_, i) => ({ id: `i${i}`, prompt: `a red circle ${i}` })),
    );
    const ac = new AbortController();
    const before = (await listed(api.url, key)).length;
    const run = batch([file, '--parallel', '2'], { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key }, ac.signal);
    // Both in flight have their generation and the run knows it (its journal says submitted: a job the API
    // lists may still be a POST whose answer the run has not read), then Ctrl-C. Waited for as long as it
    // takes (the test's own timeout bounds it): on a loaded machine the CLI's start alone took 5 s.
    const submitted = () => {
      const journal = join(work, 'interrupted', 'journal.jsonl');
      if (!existsSync(journal)) return 0;
      return new Set(readFileSync(journal, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { stem: string; status?: string }).filter((r) => r.status === 'submitted').map((r) => r.stem)).size;
    };
    while (submitted() < 2) await new Promise((r) => setTimeout(r, 50));
    expect((await listed(api.url, key)).length).toBe(before + 2);
    ac.abort();
    const done = await run;
    expect(done.code).toBe(130);
    const statuses = results(join(work, 'interrupted')).map((x) => x.status);
    expect(statuses.filter((s) => s === 'interrupted')).toHaveLength(2);
    expect(statuses.filter((s) => s === 'not_started')).toHaveLength(4);
  });

  // The pipeline review's F8: a pipeline the webhooks drive submits and leaves.
  it('--submit-only: each line ends once its POST is answered (submitted, exit 0); the same command without it finds the same generations', async () => {
    const file = jsonl(join(work, 'submit.jsonl'), [{ id: 's1', prompt: 'a red circle' }, { id: 's2', prompt: 'a blue square' }]);
    const e = { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key };
    const before = (await listed(api.url, key)).length;
    const run = await batch([file, '--submit-only'], e);
    expect(run.code, run.stderr).toBe(0);
    const made = results(join(work, 'submit'));
    expect(made.map((r) => [r.id, r.status])).toEqual([['s1', 'submitted'], ['s2', 'submitted']]);
    expect(made.every((r) => typeof r.generation_id === 'string')).toBe(true);
    expect(run.stderr).toMatch(/2 generations go on; .* waits for them and downloads their images \(no line is made twice\)/);
    expect((await listed(api.url, key)).length).toBe(before + 2);
    // Collected later (here: still queued, so it times out), the same generations, nothing new.
    const collect = await batch([file, '--timeout', '1'], e);
    expect(collect.code).toBe(124);
    expect(results(join(work, 'submit')).map((r) => r.generation_id)).toEqual(made.map((r) => r.generation_id));
    expect((await listed(api.url, key)).length).toBe(before + 2);
  });

  // The pipeline review's F4: a SIGTERM (a scheduler's timeout, docker stop) killed the run at once: no
  // results.jsonl, its lock left; in a container (pid 1) the signal was ignored and the lock held pid 1,
  // which no later run there could take over.
  it('SIGTERM: stops as Ctrl-C does (results.jsonl written, the folder unlocked), exit 143', async () => {
    const file = jsonl(join(work, 'term.jsonl'), Array.from({ length: 4 }, (_, i) => ({ id: `t${i}`, prompt: `a blue square ${i}` })));
    const dir = join(work, 'term');
    const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'clipag.mjs'), 'remote', 'batch', file, '--parallel', '1'], {
      env: { ...process.env, CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key },
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const journal = join(dir, 'journal.jsonl');
    while (!(existsSync(journal) && readFileSync(journal, 'utf8').includes('"submitted"'))) await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGTERM');
    expect(await exited).toBe(143);
    expect(results(dir).map((r) => r.status)).toEqual(['interrupted', 'not_started', 'not_started', 'not_started']);
    expect(existsSync(join(dir, '.lock'))).toBe(false);
  }, 60_000);

  it("a lock naming this process's own pid (a container's pid 1, killed) is taken over; one of another host is refused, naming it", async () => {
    const file = jsonl(join(work, 'pid1.jsonl'), [{ id: 'p', prompt: 'a red circle' }]);
    const dir = join(work, 'pid1');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, '.lock'), `${process.pid} ${hostname()}`);
    const run = await batch([file, '--timeout', '1'], { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key });
    expect(run.code, run.stderr).toBe(124);
    writeFileSync(join(dir, '.lock'), `1 build-host-7`);
    await expect(batch([file, '--timeout', '1'], { CLIPAG_API_URL: api.url, CLIPAG_API_KEY: key })).rejects.toThrow(`another run (pid 1 on build-host-7) is using ${dir}; wait for it, or give this one another -d (if no such run is going on, remove ${join(dir, '.lock')})`);
  });
});

/** The account's uploads in the local store. */
async function uploads(apiKey: string): Promise<string[]> {
  const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
  const owner = (await stores.keys.verify(apiKey))?.owner;
  return (await stores.blobs.list(`uploads/${owner}/`)).items.map((i) => i.key);
}
