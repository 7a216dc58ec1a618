// An uploaded init image is decoded (and fitted to the run's stage sizes) on a thread of its own
// (gpu-worker/worker/init-decode.ts): the worker's main thread keeps turning meanwhile, the job's images
// are the ones the in-thread decode gave, a bad image fails the job with the decoder's own error, and a
// thread that crashes, ends or hangs never holds the job or stop().
import { encode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_IMAGE_FILE_BYTES } from '../../shared/image-header.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { decodeImage, encodePng, fittedImage, resizeBilinear, resizeCover, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { synthesize } from '../../gpu-worker/engine/synth/synthesize.ts';
import { createModelRegistry, type ModelRegistry } from '../../gpu-worker/models.ts';
import { classifyError, jobErrorOf } from '../../gpu-worker/worker/errors.ts';
import { decodeInitImage, initDecodeThreadsAlive } from '../../gpu-worker/worker/init-decode.ts';
import { createEngineSynthesizer, initFitSizes, resolveInit, toSynthRequests, type SynthesisJob } from '../../gpu-worker/worker/synthesizer.ts';
import { handMadePng, pngChunk } from '../helpers/png.ts';
import { FAST_RECIPE, makeModelsDir, waitFor } from './helpers.ts';

/** A store holding one upload, handing out a fresh copy on every get (as S3 and the local store do). */
const storeWith = (body: Uint8Array) => ({ get: async () => ({ body: body.slice() }) }) as unknown as BlobStore;
const jobWith = (input: Record<string, unknown>): SynthesisJob => ({
  id: 'job_init', owner: 'acct_init',
  spec: GenerationSpec.parse({ prompt: 'a red square', model: 'tiny', width: 64, height: 64, steps: 4, seed: 3, init: 'upload:u1', strength: 0.5, ...input }),
});

/** A side×side 16-bit RGBA PNG in flat blocks (small on disk, all its pixels to decode). */
function bigPng(side: number): Uint8Array {
  const data = new Uint16Array(side * side * 4);
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      const p = (y * side + x) * 4;
      data.set([(x >> 5) * 2048, (y >> 5) * 2048, ((x + y) >> 6) * 1024, y < side / 2 ? 65535 : 40000], p);
    }
  }
  return encode({ width: side, height: side, data, depth: 16, channels: 4 });
}

/** A small non-square image with detail everywhere (gradients, noise-like texture, partial alpha). */
function detailedPng(width: number, height: number): Uint8Array {
  const data = new Uint16Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = (y * width + x) * 4;
      data.set([(x * 655) % 65536, (y * 1310) % 65536, ((x * 7919 + y * 104729) * 2654435761) % 65536, 30000 + ((x * y) % 35535)], p);
    }
  }
  return encode({ width, height, data, depth: 16, channels: 4 });
}

/** What the in-thread decode threw for `bytes`. */
function inThreadError(bytes: Uint8Array): EngineError {
  try {
    decodeImage(bytes, { maxBytes: MAX_IMAGE_FILE_BYTES });
  } catch (e) {
    return e as EngineError;
  }
  throw new Error('expected the in-thread decode to fail');
}

describe('the init image decode thread', () => {
  it("the main thread's event loop keeps turning while a large init image decodes", async () => {
    const bytes = bigPng(1024); // 1–2 s of decoding on this machine
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    try {
      const init = await resolveInit(jobWith({}), storeWith(bytes), { fitSizes: [{ width: 64, height: 64 }] });
      // Decoded on this thread, the whole decode ran inside the call with no turn of the loop: 0 ticks.
      expect(ticks).toBeGreaterThanOrEqual(5);
      expect(init).toMatchObject({ kind: 'image', image: { width: 1024, height: 1024 } });
    } finally {
      clearInterval(timer);
    }
  });

  it('a JPEG init (ADR 0035) decodes on the thread as in it: the same fits bit for bit, turned upright by its EXIF orientation', async () => {
    const { encode } = await import('jpeg-js');
    const rgba = new Uint8Array(60 * 40 * 4).map((_, i) => (i % 4 === 3 ? 255 : (i * 37) % 251));
    const jpeg = new Uint8Array(encode({ width: 60, height: 40, data: rgba }, 90).data);
    // Orientation 6 (a phone held upright): an APP1 Exif segment after SOI; the picture is 40 wide once turned.
    const exif = [0x45, 0x78, 0x69, 0x66, 0, 0, 0x49, 0x49, 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
    const turned = new Uint8Array([0xff, 0xd8, 0xff, 0xe1, 0, exif.length + 2, ...exif, ...jpeg.subarray(2)]);
    const sizes = [{ width: 32, height: 48 }];
    const image = await decodeInitImage(turned, { fitSizes: sizes });
    expect([image.width, image.height]).toEqual([40, 60]);
    const source = decodeImage(turned);
    expect(Buffer.from(resizeCover(image, 32, 48).data.buffer).equals(Buffer.from(resizeCover(source, 32, 48).data.buffer))).toBe(true);
  });

  it('the fits that come back are bit for bit the resizeCover of the in-thread decode, and the only sizes the image takes', async () => {
    const bytes = detailedPng(100, 50);
    const sizes = [{ width: 24, height: 16 }, { width: 64, height: 40 }, { width: 96, height: 64 }];
    const image = await decodeInitImage(bytes, { fitSizes: sizes });
    const source = decodeImage(bytes);
    expect([image.width, image.height]).toEqual([100, 50]);
    for (const s of sizes) {
      const fit = resizeCover(image, s.width, s.height);
      expect(Buffer.from(fit.data.buffer).equals(Buffer.from(resizeCover(source, s.width, s.height).data.buffer))).toBe(true);
      fit.data.fill(0); // a copy each time: the engine writes into what resizeCover returns
      expect(resizeCover(image, s.width, s.height).data.some((v) => v !== 0)).toBe(true);
    }
    expect(() => resizeCover(image, 32, 32)).toThrow(/holds antialiased fits at 24x16, 64x40, 96x64 only, not at 32×32/);
    expect(() => resizeCover(image, 24, 16, { antialias: false })).toThrow(/not at 24×16 without antialias/);
    expect(() => resizeBilinear(image, 24, 16)).toThrow(/data has 0 values/); // no pixels to read any other way
    expect(() => fittedImage(4, 4, [{ width: 2, height: 2, data: new Float32Array(3) }])).toThrow(/data has 3 values/);
  });

  describe('a bad init image fails as the in-thread decode failed: the same class, code, message and detail, never retried', () => {
    const png = encodePng(solidImage(8, 8, [1, 0, 0]));
    const badCrc = png.slice();
    badCrc[29] ^= 0xff; // inside IHDR's CRC
    const cases: Array<[string, Uint8Array]> = [
      ['a JPEG', new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0])],
      ['text', new TextEncoder().encode('not an image at all')],
      ['a bad CRC', badCrc],
      ['a cut file', png.subarray(0, png.length - 20)],
      ['a pixel bomb header', handMadePng(5000, 5000, new Uint8Array(10))],
      ['corrupt pixel data', handMadePng(8, 8, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]))],
      ['a file over the size limit', Buffer.concat([png.subarray(0, png.length - 12), pngChunk('zzPd', new Uint8Array(MAX_IMAGE_FILE_BYTES)), png.subarray(png.length - 12)])],
    ];
    it.each(cases)('%s', async (_, bytes) => {
      const before = inThreadError(bytes);
      expect(before).toBeInstanceOf(EngineError);
      const after = await resolveInit(jobWith({}), storeWith(bytes), { fitSizes: [{ width: 64, height: 64 }] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(after).toBeInstanceOf(EngineError);
      const e = after as EngineError;
      expect({ code: e.code, message: e.message, detail: e.detail }).toEqual({ code: before.code, message: before.message, detail: before.detail });
      expect(classifyError(e)).toBe('permanent');
      expect(jobErrorOf(e)).toEqual(jobErrorOf(before));
    });
  });

  it('a thread that crashes or exits before it answers fails the decode as retryable, and is gone', async () => {
    const bytes = encodePng(solidImage(8, 8, [0, 1, 0]));
    for (const fault of ['throw', 'exit'] as const) {
      const e = await decodeInitImage(bytes, { faultForTest: fault }).then(() => undefined, (err: unknown) => err as EngineError);
      expect(e).toBeInstanceOf(EngineError);
      expect(e!.code).toBe('aborted');
      expect(e!.message).toMatch(fault === 'throw' ? /decode thread crashed \(init decode thread crash requested/ : /decode thread ended \(exit code 70\) before it answered/);
      expect(classifyError(e)).toBe('retryable');
    }
    await waitFor('the threads to end', () => initDecodeThreadsAlive() === 0);
  });

  it('a stuck decode is ended by the abort (a stop, a cancel, the time limit): the promise rejects and the thread is terminated', async () => {
    const ac = new AbortController();
    const decoding = decodeInitImage(encodePng(solidImage(8, 8, [0, 0, 1])), { faultForTest: 'hang', signal: ac.signal });
    const outcome = decoding.then(() => 'resolved', (e: EngineError) => e.code);
    expect(initDecodeThreadsAlive()).toBe(1);
    // Let the thread start and enter its endless loop first.
    await new Promise((r) => setTimeout(r, 200));
    ac.abort('drain');
    expect(await outcome).toBe('aborted');
    await waitFor('the stuck thread to be terminated', () => initDecodeThreadsAlive() === 0);
    // Aborted already: no thread is started at all.
    await expect(decodeInitImage(new Uint8Array(8), { signal: ac.signal })).rejects.toMatchObject({ code: 'aborted' });
    expect(initDecodeThreadsAlive()).toBe(0);
  });
});

describe('the engine synthesizer with an init upload', () => {
  let models: ModelRegistry;
  beforeAll(async () => {
    models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 1 });
    await models.engine('tiny');
  });
  afterAll(async () => models?.close());
  const recipeOverrides = { ...FAST_RECIPE, frameEvery: 1 };

  it('makes byte-identical images (and frames and scores) to the in-thread decode, through a multi-stage run of two images', async () => {
    const bytes = detailedPng(100, 50);
    const job = jobWith({ width: 96, height: 64, n: 2, steps: 5 });
    const out = await createEngineSynthesizer({ models, blobs: storeWith(bytes), recipeOverrides }).run(job);
    expect(out.images).toHaveLength(2);
    expect(out.stages!.length).toBeGreaterThan(1); // the init image was fitted at several sizes

    // The earlier path: decodeImage on this thread, the full-size image handed to the engine.
    const held = await models.use('tiny');
    try {
      const init = { kind: 'image' as const, image: decodeImage(bytes, { maxBytes: MAX_IMAGE_FILE_BYTES }), strength: 0.5 };
      const requests = toSynthRequests(job, init, recipeOverrides);
      expect(initFitSizes(requests[0]!, held.engine)).toEqual([{ width: 32, height: 24 }, { width: 64, height: 40 }, { width: 96, height: 64 }]);
      for (let i = 0; i < requests.length; i++) {
        const res = await synthesize(held.engine, requests[i]!);
        expect(Buffer.from(out.images[i]!.png).equals(Buffer.from(res.png)), `image ${i}`).toBe(true);
        expect(out.images[i]!.frames.map((f) => Buffer.from(f.png).toString('base64'))).toEqual(res.frames.map((f) => Buffer.from(f.png).toString('base64')));
        expect(out.images[i]!.scores).toEqual(res.scores);
      }
    } finally {
      held.done();
    }
  });

  it('a bad upload fails the run with the decoder error, and an abort during the decode ends the run as aborted', async () => {
    const synth = (bytes: Uint8Array) => createEngineSynthesizer({ models, blobs: storeWith(bytes), recipeOverrides });
    await expect(synth(new TextEncoder().encode('GIF89a')).run(jobWith({}))).rejects.toMatchObject({ code: 'invalid_input', message: inThreadError(new TextEncoder().encode('GIF89a')).message });

    const ac = new AbortController();
    const running = synth(bigPng(1024)).run(jobWith({}), { signal: ac.signal });
    await waitFor('the decode thread', () => initDecodeThreadsAlive() > 0, 60_000, 5);
    ac.abort('drain');
    const out = await running;
    expect(out).toMatchObject({ aborted: true, images: [], stepsDone: 0 });
    await waitFor('the decode thread to end', () => initDecodeThreadsAlive() === 0);
  });
});
