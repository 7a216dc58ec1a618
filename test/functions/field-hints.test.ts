// An unknown request field is told the field this API takes (the new-user review's F3): a typo gets the
// nearest name, and a name other image APIs use gets this API's. Before, only "Unrecognized key".
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fieldHint, unknownKeysMessage } from '../../shared/schemas/field-hints.ts';
import { GenerationRequest } from '../../shared/schemas/generation.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

describe('an unknown field in a request body', () => {
  it.each([
    [{ promt: 'a red circle', prompt: 'x' }, 'promt', 'promt: Unrecognized key: "promt" (did you mean "prompt"?)'],
    [{ prompt: 'a red circle', size: '128x128' }, 'size', 'size: Unrecognized key: "size" (this API takes "width" and "height")'],
    [{ prompt: 'a red circle', num_images: 2 }, 'num_images', 'num_images: Unrecognized key: "num_images" (this API takes "n")'],
    [{ prompt: 'a red circle', negative: 'blue' }, 'negative', 'negative: Unrecognized key: "negative" (this API takes "negative_prompt")'],
    [{ prompt: 'a red circle', Steps: 3 }, 'Steps', 'Steps: Unrecognized key: "Steps" (did you mean "steps"?)'],
    [{ prompt: 'a red circle', guidance: 3 }, 'guidance', 'guidance: Unrecognized key: "guidance"'],
  ])('POST /v1/generations %j: 400 naming it, with the field to write instead', async (body, param, message) => {
    const err = await expectEnvelope(await h.request('/v1/generations', { json: body }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual([param, message]);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });

  it('an estimate and an upload grant say it the same way, each offering only its own fields', async () => {
    const est = await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'a', widht: 128 } }), 400, 'validation_error');
    expect(est.message).toBe('widht: Unrecognized key: "widht" (did you mean "width"?)');
    // An upload takes bytes and content_type: "size" is none of this object's, and no width is offered.
    const up = await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes: 10, size: 10 } }), 400, 'validation_error');
    expect(up.message).toBe('size: Unrecognized key: "size"');
    const typo = await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', byte: 10 } }), 400, 'validation_error');
    expect(typo.message).toContain('Unrecognized key: "byte" (did you mean "bytes"?)');
  });

  it('several at once: each hint with its key; a long key is cut short', () => {
    expect(unknownKeysMessage(['zzz', 'promt'], ['prompt', 'n'])).toBe('Unrecognized keys: "zzz", "promt" ("promt": did you mean "prompt"?)');
    expect(unknownKeysMessage(['x'.repeat(100)], ['prompt'])).toBe(`Unrecognized key: "${'x'.repeat(60)}…"`);
    expect(fieldHint('SIZE', ['width', 'height'])).toBe('this API takes "width" and "height"');
    expect(fieldHint('size', ['bytes'])).toBeUndefined();
    // A long key is no typo of a short name, and is not compared (its table was seconds of CPU for a
    // 64 KiB body: the diff review); many keys: the first five named, with the count of the rest.
    expect(fieldHint(`${'x'.repeat(65_000)}prompt`, ['prompt'])).toBeUndefined();
    expect(unknownKeysMessage(Array.from({ length: 7000 }, (_, i) => `q${i}`), ['prompt'])).toBe('Unrecognized keys: "q0", "q1", "q2", "q3", "q4" and 6995 more');
    // Names an object's prototype holds are no names here (the fuzz test found "constructor" a 500).
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) expect(fieldHint(name, ['bytes', 'content_type']), name).toBeUndefined();
    // The same text where the CLI checks a batch line against the request schema.
    expect(GenerationRequest.safeParse({ prompt: 'a', num_outputs: 2 }).error?.issues[0]?.message).toBe('Unrecognized key: "num_outputs" (this API takes "n")');
  });

  it('a model given as a folder (as clipag generate --model takes it) is told the name to send', async () => {
    const err = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'a', model: 'models/toy' } }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual(['model', 'model is a name from GET /v1/models (lower-case letters, digits, ., _ and -, at most 64 characters), not a folder: for the bundle in "models/toy", "toy"']);
    const upper = await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'a', model: 'Toy' } }), 400, 'validation_error');
    expect(upper.message).toBe('model is a name from GET /v1/models (lower-case letters, digits, ., _ and -, at most 64 characters)');
  });

  it.each([
    [{ prompt: 'a', seed: 1.5 }, 'seed', 'seed: must be a whole number'],
    [{ prompt: 'a', width: 100 }, 'width', 'width: must be a multiple of 32 (such as 96 or 128)'],
    [{ prompt: 'a', width: 20 }, 'width', 'width: must be at least 64'],
    [{ prompt: 'a', steps: 0 }, 'steps', 'steps: must be at least 1'],
    [{ prompts: ['a red circle'] }, 'prompts.0', 'prompts.0: each of prompts is {"text": "…", "weight": 1}; for one text alone, send "prompt": "…"'],
  ])('a number or a prompts item out of its rule %j: said in the words of the rule (zod said "expected int, received number")', async (body, param, message) => {
    const err = await expectEnvelope(await h.request('/v1/generations', { json: body }), 400, 'validation_error');
    expect([err.param, err.message]).toEqual([param, message]);
  });
});
