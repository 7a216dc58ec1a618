// CLIP's special tokens typed into a prompt. As in openai/CLIP, "<|endoftext|>" in a prompt is read as
// the end token, where the text tower pools its features: the model ignores everything after it. The
// engine warns about it, and a prompt with nothing before it is refused like an empty prompt (by the
// tokenizer, and by the request schema so that the API answers 400 before a job is queued).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { TextTokenizer } from '../../gpu-worker/engine/clip/tokenizer.ts';
import { GenerationRequest } from '../../shared/schemas/index.ts';
import { clipReadsNothing } from '../../shared/text-clean.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { expectEngineError } from '../helpers/errors.ts';

let engine: ClipEngine;
let tok: TextTokenizer;
beforeAll(async () => {
  engine = await ClipEngine.open(makeTinyBundle('quickgelu'), { threads: 1 });
  tok = engine.tokenizer;
});
afterAll(() => engine?.close());

const EMPTY_BEFORE_END = 'prompt is empty before its first "<|endoftext|>"';

describe('a literal end token in a prompt', () => {
  it('is read as the end token where the split takes it whole, as openai/CLIP does (not inside a punctuation run)', () => {
    const ids = tok.tokenize('a cat <|endoftext|> and a dog');
    expect(ids).toContain(tok.eotId);
    expect(tok.inspect('a cat <|endoftext|> and a dog')).toMatchObject({ endTokenText: '<|endoftext|>' });
    expect(tok.tokenize('a cat !<|endoftext|>')).not.toContain(tok.eotId);
    expect(tok.inspect('a cat !<|endoftext|>').endTokenText).toBeUndefined();
    // The row pools at its first end token: after it nothing counts.
    const batch = tok.encodeBatch(['a cat <|endoftext|> and a dog', 'a cat']);
    expect(batch.eotIndex[0]).toBe(batch.eotIndex[1]);
  });

  it('the model gives the prompt the embedding of what comes before it, and a warning says so', async () => {
    const { unit } = await engine.embedText(['a photo of a cat', 'a photo of a cat <|endoftext|> and a large dog']);
    const E = engine.embedDim;
    expect(Array.from(unit.subarray(E, 2 * E))).toEqual(Array.from(unit.subarray(0, E)));
    const warnings = engine.promptWarnings(['a photo of a cat <|endoftext|> and a large dog', 'a photo of a cat']);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('"<|endoftext|>"');
    expect(warnings[0]).toContain('ignores everything after it');
    expect(engine.promptWarnings(['a photo of a cat !<|endoftext|>'])).toEqual([]);
  });

  it('the start token text gets a warning too (read as the start token, not as words)', () => {
    const [w, ...rest] = engine.promptWarnings(['<|startoftext|>hello']);
    expect(rest).toEqual([]);
    expect(w).toContain('"<|startoftext|>"');
    expect(w).toContain('start token');
  });

  it('with nothing before it the prompt is empty: refused like an empty one, unless allowEmpty (CLIP reference behaviour)', async () => {
    for (const t of ['<|endoftext|>', '  <|endoftext|> a large dog', '<|ENDOFTEXT|>a dog', '&nbsp;<|endoftext|>x', '<|startoftext|> <|endoftext|> a dog']) {
      expectEngineError(() => tok.encode(t), 'invalid_input', EMPTY_BEFORE_END);
      expect(tok.inspect(t).nothingBeforeEnd, t).toBe(true);
    }
    expectEngineError(() => tok.encode('<|startoftext|>'), 'invalid_input', 'no words');
    expectEngineError(() => tok.encode(''), 'invalid_input', 'prompt is empty (or only whitespace');
    expect(Array.from(tok.encode('<|endoftext|>', { allowEmpty: true }).slice(0, 4))).toEqual([tok.sotId, tok.eotId, tok.eotId, 0]);
    await expect(engine.embedText(['a cat', '<|endoftext|> a dog'])).rejects.toMatchObject({ code: 'invalid_input' });
    // An output-policy concept that reads as nothing is not embedded (null), as for other unreadable ones.
    expect(await engine.conceptEmbeddings(['<|endoftext|> a red circle'])).toEqual([null]);
    // Something before it, even punctuation, is read.
    for (const t of ['a <|endoftext|>', '!<|endoftext|>', 'x<|endoftext|>']) {
      expect(() => tok.encode(t), t).not.toThrow();
      expect(tok.inspect(t).nothingBeforeEnd, t).toBeUndefined();
    }
  });
});

describe('the request schema refuses a prompt the model reads as empty', () => {
  const issues = (input: unknown) => {
    const r = GenerationRequest.safeParse(input);
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };

  it('nothing before the end token, in any prompt slot, with a message that says why', () => {
    expect(issues({ prompt: '<|endoftext|> a large dog' })).toEqual([
      'prompt: is empty once read as the model reads it: nothing comes before "<|endoftext|>", its end token, after which it reads nothing',
    ]);
    expect(issues({ prompts: [{ text: 'apple', weight: 1 }, { text: '<|endoftext|>', weight: 0.5 }] })[0]).toMatch(/^prompts\.1\.text: .*"<\|endoftext\|>"/);
    expect(issues({ prompt: 'apple', negative_prompt: ' <|endoftext|>blurry' })[0]).toMatch(/^negative_prompt: /);
    expect(issues({ prompt: '<|startoftext|>' })[0]).toMatch(/^prompt: .*only "<\|startoftext\|>"/);
    expect(issues({ prompt: '&nbsp;' })).toEqual(['prompt: is empty once read as the model reads it (HTML entities, control characters and whitespace removed)']);
  });

  it('text before the end token is a prompt (the engine warns about the rest)', () => {
    for (const t of ['a cat <|endoftext|> a dog', '!<|endoftext|>', 'a cat']) {
      expect(issues({ prompt: t }), t).toEqual([]);
      expect(clipReadsNothing(t), t).toBe(false);
    }
    expect(clipReadsNothing('<|startoftext|><|endoftext|>a cat')).toBe(true);
  });
});
