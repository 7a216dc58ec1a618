// The engine's half of the output check (ADR 0017): the final image is also scored against the
// policy's concepts, in the same pass as its prompts. The real toy bundle, whose word-level
// vocabulary makes some concepts unreadable.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../../cli/common.ts';
import { ClipEngine, CONCEPT_CACHE_SIZE } from '../../../gpu-worker/engine/engine.ts';
import { resizeCover, squareCropsCovering } from '../../../gpu-worker/engine/synth/image.ts';
import { synthesize, type SynthRequest } from '../../../gpu-worker/engine/synth/synthesize.ts';

let engine: ClipEngine;
beforeAll(async () => {
  engine = await ClipEngine.open(join(REPO_ROOT, 'models', 'toy'), { threads: 2 });
});
afterAll(() => engine?.close());

const request = (extra: Partial<SynthRequest> = {}): SynthRequest => ({
  prompts: [{ text: 'a large red circle on the left', weight: 1 }],
  width: 64,
  height: 64,
  seed: 3,
  init: { kind: 'gmm' },
  recipe: { steps: 12, globalViews: 4, patchViews: 4, initSamples: 16, frameEvery: 0 },
  ...extra,
});

const dot = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + v * b[i]!, 0);

describe('scoring the final image against screen texts', () => {
  it('gives each text the cosine its prompts get, null for one the model cannot read; the image and the passes are unchanged', async () => {
    const plain = await synthesize(engine, request());
    const screenTexts = ['a large red circle on the left', 'a small blue square', 'Mickey Mouse', 'a small blue square'];
    const screened = await synthesize(engine, request({ screenTexts }));
    expect(Buffer.from(screened.png).equals(Buffer.from(plain.png))).toBe(true);
    expect(screened.usage.encoderPasses).toBe(plain.usage.encoderPasses);
    expect(plain.screenCosines).toEqual([]);

    const [same, square, mickey, again] = screened.screenCosines;
    expect(same).toBeCloseTo(screened.scores[0]!.cosine, 6);
    expect(mickey).toBeNull(); // "mickey" and "mouse" are not toy words
    expect(again).toBe(square);
    // What a separate embedding of the image and the text gives (the windows that cover it).
    const windows = squareCropsCovering(screened.image);
    const { unit: text } = await engine.embedText(['a small blue square']);
    let sum = 0;
    for (const w of windows) sum += dot(await engine.embedPixels(resizeCover(w, engine.imageSize, engine.imageSize).data, 1, 1), text);
    expect(square).toBeCloseTo(sum / windows.length, 5);
    expect(square!).toBeLessThan(same!); // a red circle drawn, not a blue square
  });

  it('embeds a concept once per model (cached by text), null cached too', async () => {
    const [a, b] = await engine.conceptEmbeddings(['a green star', 'Pikachu']);
    const [a2, b2] = await engine.conceptEmbeddings(['a green star', 'Pikachu']);
    expect(a).toBeInstanceOf(Float32Array);
    expect(a2).toBe(a);
    expect([b, b2]).toEqual([null, null]);
    expect(Math.hypot(...a!)).toBeCloseTo(1, 5);
  });

  it('a text the model cannot read whole is null: unknown words, nothing left after cleaning, longer than its context', async () => {
    const long = Array.from({ length: 30 }, () => 'red').join(' '); // 32 tokens; the toy context is 24
    expect(engine.tokenizer.inspect(long, engine.bundle.arch.contextLength).truncated).toBe(true);
    expect(await engine.conceptEmbeddings(['&nbsp;', '\u0007', long, 'a red circle pikachu'])).toEqual([null, null, null, null]);
    // In a request such texts are scored as null, not a failed run.
    const res = await synthesize(engine, request({ screenTexts: ['&nbsp;', 'a red circle'], recipe: { steps: 1, globalViews: 2, patchViews: 2, initSamples: 4, frameEvery: 0 } }));
    expect(res.screenCosines[0]).toBeNull();
    expect(res.screenCosines[1]).toBeTypeOf('number');
  });

  it('keeps the most recently used concepts: past CONCEPT_CACHE_SIZE the least recently used is embedded again', async () => {
    const words = ['red', 'blue', 'green', 'white', 'cyan', 'orange', 'purple', 'yellow', 'violet', 'small', 'large', 'tiny', 'big', 'little'];
    const shapes = ['circle', 'square', 'star', 'ring', 'cross', 'triangle', 'disc', 'donut', 'box', 'plus'];
    const fill: string[] = [];
    for (const art of ['a', 'the']) for (const a of words) for (const b of words) for (const c of shapes) fill.push(`${art} ${a} ${b} ${c}`);
    expect(fill.length).toBeGreaterThanOrEqual(CONCEPT_CACHE_SIZE);
    const [first] = await engine.conceptEmbeddings(['the red circle at the top']);
    const [second] = await engine.conceptEmbeddings(['the blue square at the top']);
    await engine.conceptEmbeddings(['the red circle at the top']); // used again: now the more recent
    await engine.conceptEmbeddings(fill.slice(0, CONCEPT_CACHE_SIZE - 1)); // one over the cap with both
    const [first2] = await engine.conceptEmbeddings(['the red circle at the top']);
    const [second2] = await engine.conceptEmbeddings(['the blue square at the top']);
    expect(first2).toBe(first);
    expect(second2).not.toBe(second); // the least recently used went; embedded again, the same vector
    expect(Array.from(second2!)).toEqual(Array.from(second!));
  });

  it('refuses malformed screen texts before any work', async () => {
    for (const screenTexts of [[''], ['x'.repeat(1001)], [3 as unknown as string], 'a star' as unknown as string[], Array.from({ length: 501 }, () => 'a star')]) {
      await expect(synthesize(engine, request({ screenTexts }))).rejects.toMatchObject({ code: 'invalid_input', detail: { param: 'screenTexts' } });
    }
  });
});
