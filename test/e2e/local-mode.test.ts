// End to end through the real pieces: HTTP API → durable local queue → worker → engine (tiny model)
// → blob store → signed URL download; uploads as init images; persistence across a restart.
import { markPending } from '../../shared/pending.ts';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../cli/common.ts';
import { localBaseUrl, run as serveVerb, serve, type ServeHandle } from '../../cli/serve.ts';
import { buildLocalSignedUrl, verifyLocalSignature } from '../../shared/adapters/local/signing.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { decodeImage, encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { newJobId } from '../../shared/ids.ts';
import { localBundleContentHash } from '../../shared/modelstore.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';
import { PROMPT_POLICY_KEY } from '../../shared/prompt-policy.ts';
import { ownerPolicyKey } from '../../shared/keys.ts';
import { FAST_RECIPE, freePort, tinyModelsDir } from '../helpers/serve.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-e2e-'));
const modelsDir = tinyModelsDir(root);
const FAST = FAST_RECIPE;


async function start(dataDir: string): Promise<ServeHandle> {
  const port = await freePort();
  return serve({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: String(port), CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' }, { recipeOverrides: FAST });
}

const auth = (h: ServeHandle) => ({ authorization: `Bearer ${h.apiKey}` });

async function waitFor(h: ServeHandle, id: string, until: (job: any) => boolean, timeoutMs = 90_000): Promise<any> {
  const t0 = Date.now();
  for (;;) {
    const res = await fetch(`${h.url}/v1/generations/${id}`, { headers: auth(h) });
    expect(res.status).toBe(200);
    const job = (await res.json()) as any;
    if (until(job)) return job;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting; last status ${job.status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 30_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('local mode end to end', () => {
  const dataDir = join(root, 'data');
  let h: ServeHandle;

  it('POST → 202 → poll → succeeded → signed URL serves the PNG made by the engine', async () => {
    h = await start(dataDir);
    const post = await fetch(`${h.url}/v1/generations`, {
      method: 'POST',
      headers: { ...auth(h), 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'a photo of a cat', negative_prompt: 'blurry', width: 64, height: 64, seed: 5 }),
    });
    expect(post.status).toBe(202);
    const created = (await post.json()) as any;
    expect(post.headers.get('location')).toBe(`/v1/generations/${created.id}`);
    expect(created.status).toBe('queued');
    const job = await waitFor(h, created.id, (j) => ['succeeded', 'failed', 'canceled'].includes(j.status));
    expect(job.status).toBe('succeeded');
    expect(job.usage.encoder_passes).toBeGreaterThanOrEqual(6 * 8);
    expect(job.usage.worker_seconds).toBeGreaterThan(0);
    // The bundle that made it, as GET /v1/models names the deployed one and a push would index it.
    const models = (await (await fetch(`${h.url}/v1/models`, { headers: auth(h) })).json()) as any;
    expect(job.model_version).toMatch(/^[0-9a-f]{64}$/);
    expect(job.model_version).toBe(models.data.find((m: any) => m.id === job.request.model).content_hash);
    expect(job.model_version).toBe(await localBundleContentHash(join(modelsDir, job.request.model)));
    // The worker recorded the run (just after it wrote the record): estimates for this model and size now rest on it.
    const estimate = await until(async () => {
      const res = await fetch(`${h.url}/v1/estimates`, { method: 'POST', headers: { ...auth(h), 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'a dog', width: 64, height: 64 }) });
      expect(res.status).toBe(200);
      const body = (await res.json()) as any;
      return body.runs >= 1 ? body : undefined;
    }, 'an estimate resting on the run');
    expect(estimate).toMatchObject({ model: 'toy', runs: 1, worker_seconds: { median: expect.any(Number) } });
    expect(estimate.worker_seconds.median).toBeGreaterThan(0);
    // And the owner's usage for the month (ADR 0019), as the job's record has it.
    const usage = (await (await fetch(`${h.url}/v1/usage?month=${job.finished_at.slice(0, 7)}`, { headers: auth(h) })).json()) as any;
    expect(usage.total).toMatchObject({ generations: 1, images: 1, worker_seconds: job.usage.worker_seconds, encoder_passes: job.usage.encoder_passes });
    const png = await fetch(job.outputs[0].url);
    expect(png.status).toBe(200);
    expect(png.headers.get('content-type')).toBe('image/png');
    const img = decodeImage(new Uint8Array(await png.arrayBuffer()));
    expect([img.width, img.height]).toEqual([64, 64]);
    // The progress frames the worker stored with the image (every frame_every steps, from step 0).
    const frames = (await (await fetch(`${h.url}/v1/generations/${created.id}/frames`, { headers: auth(h) })).json()) as any;
    const every = frames.data[1].step;
    expect(frames.data.map((f: any) => [f.index, f.step])).toEqual(Array.from({ length: Math.ceil(job.progress.total / every) }, (_, k) => [0, k * every]));
    const first = await fetch(frames.data[0].url);
    const frame = decodeImage(new Uint8Array(await first.arrayBuffer())); // at the size of its stage (multi-scale: smaller early on)
    expect([first.status, frame.width > 0 && frame.width <= 64]).toEqual([200, true]);
    // The listing says each frame's size, as its PNG has it.
    expect([frames.data[0].width, frames.data[0].height]).toEqual([frame.width, frame.height]);
    // A tampered link is refused.
    const bad = await fetch(job.outputs[0].url.replace(/sig=([0-9a-f])/, (_: string, c: string) => `sig=${c === '0' ? '1' : '0'}`));
    expect(bad.status).toBe(403);
  });

  it('an uploaded init image drives a generation', async () => {
    const png = encodePng(solidImage(64, 64, [0.9, 0.1, 0.1]));
    const up = await fetch(`${h.url}/v1/uploads`, { method: 'POST', headers: { ...auth(h), 'content-type': 'application/json' }, body: JSON.stringify({ content_type: 'image/png', bytes: png.length }) });
    expect(up.status).toBe(201);
    const grant = (await up.json()) as any;
    const put = await fetch(grant.url, { method: 'PUT', headers: grant.headers, body: png });
    expect(put.status).toBe(200);
    // Prefer: wait: the POST itself answers with the finished generation (no polling).
    const post = await fetch(`${h.url}/v1/generations`, {
      method: 'POST',
      headers: { ...auth(h), 'content-type': 'application/json', prefer: 'wait=60' },
      body: JSON.stringify({ prompt: 'a photo of a cat', width: 64, height: 64, seed: 1, init: `upload:${grant.upload_id}`, strength: 0.2 }),
    });
    expect(post.status).toBe(202);
    expect(post.headers.get('preference-applied')).toBe('wait=60');
    const answered = (await post.json()) as any;
    // On a machine busy enough that the run takes over a minute, the answer is the running job: poll on.
    const job = ['succeeded', 'failed'].includes(answered.status) ? answered : await waitFor(h, answered.id, (j) => ['succeeded', 'failed'].includes(j.status));
    expect(job.status).toBe('succeeded');
    const out = decodeImage(new Uint8Array(await (await fetch(job.outputs[0].url)).arrayBuffer()));
    const mean = (c: number) => out.data.subarray(c * 4096, (c + 1) * 4096).reduce((a, b) => a + b, 0) / 4096;
    expect(mean(0)).toBeGreaterThan(mean(1)); // still reddish: the init image was used
  });

  it('output_format jpeg: the worker stores a JPEG (marked as generated), the view, the stable link and include=b64 say so, and the seed makes the same bytes again', async () => {
    const made = async () => {
      const post = await fetch(`${h.url}/v1/generations`, {
        method: 'POST',
        headers: { ...auth(h), 'content-type': 'application/json', prefer: 'wait=60' },
        body: JSON.stringify({ prompt: 'a photo of a cat', width: 64, height: 64, seed: 9, output_format: 'jpeg' }),
      });
      expect(post.status).toBe(202);
      const answered = (await post.json()) as any;
      return ['succeeded', 'failed'].includes(answered.status) ? answered : await waitFor(h, answered.id, (j) => ['succeeded', 'failed'].includes(j.status));
    };
    const job = await made();
    expect(job.status).toBe('succeeded');
    // The request as stored: the format and the quality it was given by default.
    expect([job.request.output_format, job.request.output_quality]).toEqual(['jpeg', 90]);
    expect(job.outputs[0].content_type).toBe('image/jpeg');
    const res = await fetch(job.outputs[0].url);
    expect([res.status, res.headers.get('content-type'), res.headers.get('content-disposition')]).toEqual([200, 'image/jpeg', 'inline; filename="0.jpg"']);
    const bytes = new Uint8Array(await res.arrayBuffer());
    expect([bytes[0], bytes[1]]).toEqual([0xff, 0xd8]);
    expect(Buffer.from(bytes).includes('trainedAlgorithmicMedia')).toBe(true);
    const img = decodeImage(bytes);
    expect([img.width, img.height]).toEqual([64, 64]);
    // The stable link redirects to it; include=b64 carries it as b64_jpeg (no b64_png).
    const link = await fetch(`${h.url}/v1/generations/${job.id}/outputs/0`, { headers: auth(h), redirect: 'manual' });
    expect(link.status).toBe(302);
    expect(Buffer.from(await (await fetch(new URL(link.headers.get('location')!, h.url))).arrayBuffer()).equals(Buffer.from(bytes))).toBe(true);
    const inline = (await (await fetch(`${h.url}/v1/generations/${job.id}?include=b64`, { headers: auth(h) })).json()) as any;
    expect([inline.outputs[0].b64_png, Buffer.from(inline.outputs[0].b64_jpeg, 'base64').equals(Buffer.from(bytes))]).toEqual([undefined, true]);
    // Frames stay PNG.
    const frames = (await (await fetch(`${h.url}/v1/generations/${job.id}/frames`, { headers: auth(h) })).json()) as any;
    expect((await fetch(frames.data[0].url)).headers.get('content-type')).toBe('image/png');
    // The same request again (no Idempotency-Key: another generation) writes the same file.
    const again = await made();
    expect(again.id).not.toBe(job.id);
    expect(Buffer.from(await (await fetch(again.outputs[0].url)).arrayBuffer()).equals(Buffer.from(bytes))).toBe(true);
  });

  it('output_format webp (ADR 0043): the worker stores a WebP marked as generated, at the quality asked, and the view, the link and include=b64 say so', async () => {
    const post = await fetch(`${h.url}/v1/generations`, {
      method: 'POST',
      headers: { ...auth(h), 'content-type': 'application/json', prefer: 'wait=60' },
      body: JSON.stringify({ prompt: 'a photo of a cat', width: 64, height: 64, seed: 9, output_format: 'webp', output_quality: 80 }),
    });
    expect(post.status).toBe(202);
    const answered = (await post.json()) as any;
    const job = ['succeeded', 'failed'].includes(answered.status) ? answered : await waitFor(h, answered.id, (j) => ['succeeded', 'failed'].includes(j.status));
    expect(job.status).toBe('succeeded');
    expect([job.request.output_format, job.request.output_quality, job.outputs[0].content_type]).toEqual(['webp', 80, 'image/webp']);
    const res = await fetch(job.outputs[0].url);
    expect([res.status, res.headers.get('content-type'), res.headers.get('content-disposition')]).toEqual([200, 'image/webp', 'inline; filename="0.webp"']);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect([bytes.toString('latin1', 0, 4), bytes.toString('latin1', 8, 16)]).toEqual(['RIFF', 'WEBPVP8X']);
    expect(bytes.includes('trainedAlgorithmicMedia')).toBe(true);
    const inline = (await (await fetch(`${h.url}/v1/generations/${job.id}?include=b64`, { headers: auth(h) })).json()) as any;
    expect([inline.outputs[0].b64_png, Buffer.from(inline.outputs[0].b64_webp, 'base64').equals(bytes)]).toEqual([undefined, true]);
  });

  it('a webhook_url gets the signed completion event from the worker, with a working output link', async () => {
    const events: Array<{ headers: Record<string, string>; body: string }> = [];
    const receiver = createHttpServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        events.push({ headers: req.headers as Record<string, string>, body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    try {
      const hookUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/done`;
      const post = await fetch(`${h.url}/v1/generations`, {
        method: 'POST',
        headers: { ...auth(h), 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'a photo of a cat', width: 64, height: 64, seed: 2, webhook_url: hookUrl }),
      });
      expect(post.status).toBe(202);
      const created = (await post.json()) as any;
      const job = await waitFor(h, created.id, (j) => j.webhook?.status !== 'pending');
      expect(job).toMatchObject({ status: 'succeeded', webhook: { status: 'delivered', attempts: 1 } });
      expect(events).toHaveLength(1);
      const event = new Webhook(created.webhook.secret).verify(events[0]!.body, events[0]!.headers) as any;
      expect(event).toMatchObject({ type: 'generation.succeeded', data: { id: created.id, status: 'succeeded' } });
      const png = await fetch(event.data.outputs[0].url);
      expect(png.status).toBe(200);
      expect(decodeImage(new Uint8Array(await png.arrayBuffer())).width).toBe(64);
    } finally {
      await new Promise<void>((r) => receiver.close(() => r()));
    }
  });

  it('queued jobs and keys survive a restart', async () => {
    // Stop the worker first so the next job stays queued, then restart the whole server.
    const key = h.apiKey;
    const post = await fetch(`${h.url}/v1/generations`, {
      method: 'POST',
      headers: { ...auth(h), 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'two dogs playing in the snow!', width: 64, height: 64, seed: 9 }),
    });
    const id = ((await post.json()) as any).id;
    await h.stop();
    h = await start(dataDir);
    expect(h.apiKey).toBe(key);
    const job = await waitFor(h, id, (j) => ['succeeded', 'failed'].includes(j.status));
    expect(job.status).toBe('succeeded');
    const list = (await (await fetch(`${h.url}/v1/generations`, { headers: auth(h) })).json()) as any;
    expect(list.data.length).toBeGreaterThanOrEqual(3);
    await h.stop();
  });

  it('a second server on a busy port fails before its worker starts: the first keeps its jobs', async () => {
    h = await start(dataDir);
    const port = new URL(h.url).port;
    await h.stop(); // no worker of the first takes the job below
    const blocker = createServer().listen(Number(port), '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    try {
      const { LocalJobQueue } = await import('../../shared/adapters/local/queue.ts');
      const queue = new LocalJobQueue({ dir: join(dataDir, 'queue') });
      await queue.send('{"v":1,"job_id":"probe","owner":"local"}');
      await expect(serve({ CLIPAG_DATA_DIR: dataDir, CLIPAG_MODELS_DIR: modelsDir, PORT: port, CLIPAG_RECEIVE_WAIT_SEC: '1', LOG_LEVEL: 'error' }, { recipeOverrides: FAST })).rejects.toThrow(new RegExp(`port ${port} on 127\\.0\\.0\\.1 is in use \\(another clipag serve\\?\\); pass --port N or set PORT`));
      // A data folder that is a file: said so, before anything starts (on a free port: a busy one is said first).
      const file = join(dataDir, 'a-file');
      writeFileSync(file, 'x');
      await expect(serve({ CLIPAG_DATA_DIR: file, CLIPAG_MODELS_DIR: modelsDir, PORT: String(await freePort()), LOG_LEVEL: 'error' })).rejects.toThrow(/the data folder .*a-file \(--data or CLIPAG_DATA_DIR\) is a file, not a folder/);
      await new Promise((r) => setTimeout(r, 1500)); // a worker, had one started, would have polled by now
      const [m] = await queue.receive({ max: 1, waitSec: 0 });
      expect([m?.body, m?.receiveCount]).toEqual(['{"v":1,"job_id":"probe","owner":"local"}', 1]); // never received before
      await queue.ack(m!.receipt);
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  it('a job whose message was lost in a crash (created, never sent) runs after the restart, with no retry', async () => {
    // What a process that died between the job's create and its send leaves behind: the pending
    // marker and the queued record, 10 minutes old, and no message.
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    const createdAt = new Date(Date.now() - 10 * 60_000);
    const id = newJobId(createdAt.getTime());
    const spec = GenerationSpec.parse({ prompt: 'a lost message', width: 64, height: 64, seed: 4, model: 'toy' });
    await markPending(stores.blobs, 'msg', 'local', id);
    await stores.jobs.create(newJobRecord({ id, owner: 'local', spec, now: createdAt }));
    expect(await stores.queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
    h = await start(dataDir);
    const job = await waitFor(h, id, (j) => ['succeeded', 'failed'].includes(j.status));
    expect(job.status).toBe('succeeded');
    await h.stop();
    // The sweep that sent it dropped its marker.
    expect((await stores.blobs.list('pending/')).items).toEqual([]);
  });
});

describe("the output check on the real engine, under an owner's own policy", () => {
  const dataDir = join(root, 'data-output-check');
  let h: ServeHandle;
  afterAll(async () => h?.stop());

  it("the worker reads the owner's output rules from the store, scores the images on the engine, and withholds what matches", async () => {
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    // The deployment refuses cats; the local owner's own document (ADR 0018) replaces it: cats are
    // allowed, but an image that looks like one is withheld.
    const deployment = { version: 1, rules: [{ id: 'no-cats', category: 'copyright', action: 'refuse', message: 'no cats', terms: ['cat'] }] };
    await stores.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(deployment)), { contentType: 'application/json' });
    const policy = {
      version: 1,
      rules: [],
      output_rules: [
        // The prompt itself as the concept: every image is as close to it as to the prompt.
        { id: 'cat-lookalike', category: 'copyright', action: 'withhold', message: 'looks like a cat we do not own', concepts: ['a photo of a cat'], above_prompt_by: -0.0001 },
        { id: 'any-drawing', category: 'bias', action: 'flag', message: 'review before use', concepts: ['a drawing'], min_cosine: -1 },
      ],
    };
    await stores.blobs.put(ownerPolicyKey('local'), Buffer.from(JSON.stringify(policy)), { contentType: 'application/json' });
    h = await start(dataDir);
    const post = await fetch(`${h.url}/v1/generations`, {
      method: 'POST',
      headers: { ...auth(h), 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'a photo of a cat', width: 64, height: 64, seed: 8, n: 2 }),
    });
    expect(post.status).toBe(202);
    const id = ((await post.json()) as any).id;
    const job = await waitFor(h, id, (j) => ['succeeded', 'failed'].includes(j.status));
    expect(job.status).toBe('failed');
    expect(job.error.code).toBe('content_policy');
    expect(job.error.message).toContain('looks like "a photo of a cat"');
    expect(job.outputs).toEqual([]);
    expect(job.withheld_outputs.map((o: any) => [o.index, o.content_flags.map((f: any) => `${f.action} ${f.rule}`)])).toEqual([
      [0, ['withhold cat-lookalike', 'flag any-drawing']],
      [1, ['withhold cat-lookalike', 'flag any-drawing']],
    ]);
    for (const o of job.withheld_outputs) expect(Number.isFinite(o.content_flags[0].cosine)).toBe(true);
    expect((await stores.blobs.list(`outputs/local/${id}/`)).items).toEqual([]);
    expect(job.usage.encoder_passes).toBeGreaterThan(0);
  });
});

async function envelopeOf(res: Response, status: number, code: string): Promise<{ code: string; message: string; request_id: string }> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await res.json()) as { error: { code: string; message: string; request_id: string } };
  expect(body.error.code).toBe(code);
  expect(body.error.request_id).toBe(res.headers.get('x-request-id'));
  return body.error;
}

describe('local server error envelopes (over the real socket serve() listens on)', () => {
  const dataDir = join(root, 'data-errors');
  let h: ServeHandle;
  afterAll(async () => h?.stop());

  it('wrong method, unknown path and /blobs failures are all the JSON envelope', async () => {
    h = await start(dataDir);
    const put = await fetch(`${h.url}/healthz`, { method: 'PUT' });
    await envelopeOf(put, 405, 'method_not_allowed');
    expect(put.headers.get('allow')).toBe('GET, HEAD');
    await envelopeOf(await fetch(`${h.url}/nope`), 404, 'not_found');
    await envelopeOf(await fetch(`${h.url}/blobs/x?expires=1&sig=${'a'.repeat(64)}`), 403, 'forbidden');
    await envelopeOf(await fetch(`${h.url}/blobs/x`, { method: 'DELETE' }), 405, 'method_not_allowed');

    // A signed PUT streamed without Content-Length (chunked): refused before any byte is buffered.
    const up = await fetch(`${h.url}/v1/uploads`, { method: 'POST', headers: { ...auth(h), 'content-type': 'application/json' }, body: JSON.stringify({ content_type: 'image/png', bytes: 8 }) });
    const grant = (await up.json()) as { url: string; headers: Record<string, string>; upload_id: string };
    const chunked = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array(8));
        c.close();
      },
    });
    expect(grant.headers['content-length']).toBe('8'); // the promised size is part of the grant, as on S3
    const { 'content-length': _promised, ...withoutLength } = grant.headers;
    await envelopeOf(await fetch(grant.url, { method: 'PUT', headers: withoutLength, body: chunked, duplex: 'half' } as RequestInit), 411, 'length_required');

    // An error thrown by the blob store inside the /blobs handler (a key already used as a folder).
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: h.url });
    await stores.blobs.put(`uploads/local/${grant.upload_id}/child`, new Uint8Array(1));
    // PNG signature bytes, so the link's PNG check passes and the store's refusal is what answers.
    const conflict = await envelopeOf(await fetch(grant.url, { method: 'PUT', headers: grant.headers, body: new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]) }), 400, 'validation_error');
    expect(conflict.message).not.toMatch(/PNG signature/);
  });

  it('serve --steps (1..1000) and --port (1..65535) are validated before anything starts: usage errors (exit 2), naming the flag', async () => {
    await expect(serveVerb(['--steps', '0', '--data', join(root, 'never')])).rejects.toBeInstanceOf(UsageError);
    await expect(serveVerb(['--steps', 'lots', '--data', join(root, 'never')])).rejects.toThrow(/--steps must be an integer in \[1, 1000\]/);
    // Checked as --port, not passed on as PORT for the configuration to refuse ("PORT: Invalid input: expected number, received NaN").
    await expect(serveVerb(['--port', 'abc', '--data', join(root, 'never')])).rejects.toThrow(new UsageError('--port must be an integer in [1, 65535], got "abc"'));
    expect(existsSync(join(root, 'never'))).toBe(false);
  });
});

describe('where local signed links point without CLIPAG_PUBLIC_BASE_URL', () => {
  it('at the address serve listens on: an IPv6 one in brackets, a wildcard by its loopback (http://::1:8787 is no URL)', () => {
    expect(localBaseUrl('127.0.0.1', 8787)).toBe('http://127.0.0.1:8787');
    expect(localBaseUrl('localhost', 8787)).toBe('http://localhost:8787');
    expect(localBaseUrl('::1', 8793)).toBe('http://[::1]:8793');
    expect(localBaseUrl('fe80::1', 80)).toBe('http://[fe80::1]:80');
    expect(localBaseUrl('0.0.0.0', 8787)).toBe('http://127.0.0.1:8787');
    expect(localBaseUrl('::', 8787)).toBe('http://[::1]:8787');
    // A link built on it parses and its signature checks (what failed with an IPv6 host: every view of a succeeded job was a 500).
    const url = buildLocalSignedUrl(localBaseUrl('::1', 8793), 's3cret', { method: 'GET', key: 'outputs/o/j/0.png', expiresAtSec: 2_000_000_000 });
    expect(new URL(url).host).toBe('[::1]:8793');
    expect(verifyLocalSignature('s3cret', 'GET', url, 1_900_000_000_000)).toMatchObject({ ok: true, key: 'outputs/o/j/0.png' });
  });
});
