/**
 * A required field the request leaves out is said to be required, in the API's words, not in zod's
 * JavaScript ones ("expected number, received undefined": JSON has no undefined). A field that is
 * there with the wrong type (null included) keeps zod's wording, which names what was received.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

describe('a missing required field', () => {
  it.each([
    ['/v1/uploads', { content_type: 'image/png' }, 'bytes', 'bytes is required (number)'],
    // A literal: zod names only the value it wanted, never that the field is missing.
    ['/v1/uploads', {}, 'content_type', 'content_type is required (one of "image/png", "image/jpeg"); bytes is required (number)'],
    ['/v1/generations', { prompts: [{ text: 'a red circle' }] }, 'prompts.0.weight', 'prompts.0.weight is required (number)'],
    ['/v1/estimates', { prompts: [{ weight: 1 }] }, 'prompts.0.text', 'prompts.0.text is required (string)'],
  ])('POST %s %j → 400 validation_error, "… is required"', async (path, json, param, message) => {
    const error = await expectEnvelope(await h.request(path, { json }), 400, 'validation_error');
    expect(error.param).toBe(param);
    expect(error.message).toBe(message);
    expect(error.message).not.toMatch(/undefined/);
  });

  it('a field that is there, wrongly typed (null too), is not called missing', async () => {
    for (const bytes of [null, '12']) {
      const error = await expectEnvelope(await h.request('/v1/uploads', { json: { content_type: 'image/png', bytes } }), 400, 'validation_error');
      expect(error.param).toBe('bytes');
      expect(error.message).toMatch(new RegExp(`^bytes: .*received ${bytes === null ? 'null' : 'string'}$`));
    }
  });
});
