// A prompt that is empty before a literal "<|endoftext|>" (the model's end token: it reads nothing after
// it) is refused like an empty prompt: 400 validation_error naming the prompt, before any job is made.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  await h.close();
});

describe('POST /v1/generations with the end token first in a prompt', () => {
  const cases: Array<[unknown, string]> = [
    [{ prompt: '<|endoftext|>' }, 'prompt'],
    [{ prompt: '  <|endoftext|> a large dog' }, 'prompt'],
    [{ prompts: [{ text: 'apple', weight: 1 }, { text: '<|endoftext|>pear', weight: 0.5 }] }, 'prompts.1.text'],
    [{ prompt: 'apple', negative_prompt: '<|endoftext|> blurry' }, 'negative_prompt'],
  ];
  for (const [body, param] of cases) {
    it(`${JSON.stringify(body)} → 400 on ${param}`, async () => {
      const err = await expectEnvelope(await h.request('/v1/generations', { json: body }), 400, 'validation_error');
      expect(err.param).toBe(param);
      expect(err.message).toContain('<|endoftext|>');
      expect(err.message).toContain('empty');
      expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
      expect(await h.queue.receive({ max: 10 })).toEqual([]);
    });
  }

  it('text before it is a prompt: accepted (the worker warns that the rest is not read)', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'a red circle <|endoftext|> a blue square' } });
    expect(res.status).toBe(202);
  });
});
