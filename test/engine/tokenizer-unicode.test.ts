// Word-level (toy) tokenization of non-ASCII text, against Hugging Face's Rust tokenizer on the same
// tokenizer.json. Its `Whitespace` pre-tokenizer splits on Unicode word characters, so "café" is one
// word; @huggingface/tokenizers 0.2's own split is ASCII-only and made it "caf", "é". The expected ids
// below come from the Rust library (npm `tokenizers` 0.23.2) run on models/toy/tokenizer.json.
// Also: the toy's "<pad>" typed into a prompt is read as the padding token, and said so.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { TextTokenizer } from '../../gpu-worker/engine/clip/tokenizer.ts';
import { cleanClipText } from '../../shared/text-clean.ts';
import { expectEngineError } from '../helpers/errors.ts';

const toyJson = JSON.parse(readFileSync(join(REPO_ROOT, 'models', 'toy', 'tokenizer.json'), 'utf8')) as {
  model: { vocab: Record<string, number> };
  pre_tokenizer: unknown;
  added_tokens: unknown[];
};
const toy = TextTokenizer.fromJson(toyJson, { source: 'toy' });
const UNK = 1;
const PAD = 0;

/** The toy vocabulary plus words with non-ASCII letters, as a word-level bundle for another language might hold. */
const withAccents = {
  ...toyJson,
  model: { ...toyJson.model, vocab: { ...toyJson.model.vocab, café: 47, naïve: 48, straße: 49 } },
};

describe('word-level tokenization reads words with non-ASCII letters whole, as Hugging Face does', () => {
  it('a word with accented letters or marks is one token (one unknown word, named whole)', () => {
    // [prompt, ids from the Rust tokenizer]
    const cases: Array<[string, number[]]> = [
      ['a red café', [3, 32, UNK]],
      ['a red naïve circle', [3, 32, UNK, 13]],
      ['straße', [UNK]],
      ['red\u200dcircle', [UNK]], // ZWJ is a word character (Join_Control)
      ['red\u00adcircle', [32, UNK, 13]], // a soft hyphen is not
      ['a \u0301\u0301 red', [3, UNK, 32]],
      ['red²', [32, UNK]], // ² is no decimal digit
      ['a red circle 👨\u200d👩\u200d👧', [3, 32, 13, UNK, UNK, UNK, UNK, UNK]],
    ];
    for (const [prompt, ids] of cases) expect(toy.tokenize(prompt), prompt).toEqual(ids);
    expect(toy.inspect('a red café').unknownWords).toEqual(['café']);
    expect(toy.inspect('a red naïve circle').unknownWords).toEqual(['naïve']);
    expect(toy.inspect('straße').unknownWords).toEqual(['straße']);
  });

  it('a vocabulary word with non-ASCII letters gets its own id, in NFC or NFD', () => {
    const tok = TextTokenizer.fromJson(withAccents, { source: 'accents' });
    expect(tok.tokenize('a red café')).toEqual([3, 32, 47]);
    expect(tok.tokenize('a red cafe\u0301')).toEqual([3, 32, 47]); // cleaning composes it (NFC)
    expect(tok.tokenize('naïve straße')).toEqual([48, 49]);
    expect(tok.inspect('a red café').unknownWords).toEqual([]);
  });

  it('a Whitespace inside a Sequence pre-tokenizer splits the same way', () => {
    const seq = { ...withAccents, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }] } };
    expect(TextTokenizer.fromJson(seq).tokenize('a red café, naïve')).toEqual([3, 32, 47, 2, 48]);
  });

  it('ASCII prompts keep the ids the library gave them', () => {
    // The library's own pipeline on the cleaned text, Whitespace as it ships: what the toy read before.
    const lib = new Tokenizer({ ...toyJson, normalizer: null, post_processor: null }, { unk_token: '<unk>' });
    const words = [...Object.keys(toyJson.model.vocab), 'cat', 'x_y', 'a1b2', 'C3PO', "it's"];
    const seps = [' ', '  ', '\t', '\n', ',', '.', '!', '-', '_', "'", '"', '(', ')', '<', '>', '|', '/', '&', '#', '9'];
    let seed = 7;
    const next = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let i = 0; i < 500; i++) {
      let prompt = '';
      for (let k = 1 + next(8); k > 0; k--) prompt += words[next(words.length)]! + seps[next(seps.length)]!;
      const cleaned = cleanClipText(prompt);
      if (cleaned === '') continue;
      expect(toy.tokenize(prompt), JSON.stringify(prompt)).toEqual(lib.encode(cleaned, { add_special_tokens: false }).ids);
    }
    expect(toy.tokenize('a large red circle on the left')).toEqual([3, 21, 32, 13, 26, 38, 22]);
  });
});

describe('the padding token typed into a prompt', () => {
  it('is read as the padding token (any case: the prompt is lowercased first) and inspect says so', () => {
    expect(toy.tokenize('a red circle <pad>')).toEqual([3, 32, 13, PAD]);
    expect(toy.tokenize('<PAD> red')).toEqual([PAD, 32]);
    for (const t of ['a red circle <pad>', '<PAD> red', '<pad>']) {
      expect(toy.inspect(t).specialTokens, t).toEqual([{ text: '<pad>', role: 'padding token' }]);
    }
    expect(toy.inspect('a red circle').specialTokens).toBeUndefined();
    expect(toy.inspect('a red <unk>').specialTokens).toBeUndefined(); // the unknown token is named as an unknown word
  });

  it('a prompt of nothing but padding (and start) tokens is refused like "<|startoftext|>" alone', () => {
    expectEngineError(() => toy.encode('<pad>'), 'invalid_input', 'no words, only "<pad>", the padding token');
    expectEngineError(() => toy.encode('<pad> <|startoftext|> <PAD>'), 'invalid_input', 'no words', '"<pad>", the padding token', '"<|startoftext|>", the start token');
    expectEngineError(() => toy.encode('<pad> <|endoftext|> red'), 'invalid_input', 'empty before its first "<|endoftext|>"');
    expect(toy.inspect('<pad>').noWords).toBe(true);
    expect(toy.inspect('<pad> <|endoftext|> red')).toMatchObject({ nothingBeforeEnd: true });
    expect(toy.inspect('<pad> red').noWords).toBeUndefined();
    expect(Array.from(toy.encode('<pad> red', { contextLength: 5 }))).toEqual([45, PAD, 32, 46, 0]);
  });

  it('an added token that is not special is a word, not a special token', () => {
    const extra = { ...toyJson, added_tokens: [...toyJson.added_tokens, { id: 47, content: 'kitten', special: false, normalized: true }] };
    const tok = TextTokenizer.fromJson(extra);
    expect(tok.tokenize('kitten')).toEqual([47]);
    expect(tok.inspect('kitten')).toEqual({ tokens: 3, unknownWords: [], truncated: false });
    expect(Array.from(tok.encode('kitten', { contextLength: 4 }))).toEqual([45, 47, 46, 0]);
  });
});
