import { expectEngineError } from '../helpers/errors.ts';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { buildClipTokenizerJson, writeClipTokenizerJson } from '../../gpu-worker/engine/clip/tokenizer-json.ts';
import { TextTokenizer } from '../../gpu-worker/engine/clip/tokenizer.ts';
import { cleanClipText } from '../../shared/text-clean.ts';
import { referencePath } from '../helpers/reference.ts';

interface VectorEntry {
  id: number;
  category: string;
  text: string;
  cleaned: string;
  ids: number[];
  context77: number[];
  exceeds_context: boolean;
}
interface Vectors {
  sot_token: number;
  eot_token: number;
  context_length: number;
  entries: VectorEntry[];
}

const vectors: Vectors = JSON.parse(readFileSync(referencePath('tokenizer-vectors.json'), 'utf8'));
const vocabGz = referencePath('bpe_simple_vocab_16e6.txt.gz');

let dir: string;
let tokPath: string;
let tok: TextTokenizer;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'clipag-tok-'));
  tokPath = join(dir, 'tokenizer.json');
  writeClipTokenizerJson(vocabGz, tokPath);
  tok = TextTokenizer.fromFile(tokPath);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));


describe('CLIP tokenizer.json builder', () => {
  it('has the official vocab layout, merges and specials', () => {
    const j = buildClipTokenizerJson(vocabGz) as any;
    expect(j.model.type).toBe('BPE');
    expect(j.model.end_of_word_suffix).toBe('</w>');
    expect(j.model.merges).toHaveLength(48_894);
    expect(j.model.merges[0]).toBe('i n');
    const vocab: Record<string, number> = j.model.vocab;
    expect(Object.keys(vocab)).toHaveLength(49_408);
    // bytes_to_unicode order: printable bytes first ('!' = 0x21), then the remapped ones from U+0100.
    expect(vocab['!']).toBe(0);
    expect(vocab['~']).toBe(93);
    expect(vocab['\u0100']).toBe(188); // byte 0x00
    expect(vocab['Ġ']).toBe(220); // byte 0x20 (space)
    expect(vocab['!</w>']).toBe(256);
    expect(vocab['in']).toBe(512);
    expect(vocab['<|startoftext|>']).toBe(49_406);
    expect(vocab['<|endoftext|>']).toBe(49_407);
    expect(j.added_tokens.map((t: any) => [t.id, t.content, t.special])).toEqual([
      [49_406, '<|startoftext|>', true],
      [49_407, '<|endoftext|>', true],
    ]);
    expect(j.pre_tokenizer.pretokenizers.map((p: any) => p.type)).toEqual(['Split', 'ByteLevel']);
    expect(j.normalizer.normalizers.map((n: any) => n.type)).toEqual(['NFC', 'Replace', 'Lowercase']);
  });

  it('rejects a file that is not the gzip vocab', () => {
    const p = join(dir, 'not-gz.txt.gz');
    writeFileSync(p, 'hello');
    expectEngineError(() => buildClipTokenizerJson(p), 'invalid_tokenizer', p);
  });

  it('loads with the official ids and vocab size', () => {
    expect(tok.mode).toBe('clip-bpe');
    expect(tok.sotId).toBe(vectors.sot_token);
    expect(tok.eotId).toBe(vectors.eot_token);
    expect(tok.vocabSize).toBe(49_408);
  });
});

describe('reference vectors (official clip.tokenize with real ftfy)', () => {
  expect(vectors.entries).toHaveLength(154);
  const name = (e: VectorEntry) => `#${e.id} ${e.category} ${JSON.stringify(e.text).slice(0, 50)}`;
  const cases = vectors.entries.map((e) => [name(e), e] as const);

  it.each(cases)('%s', (_n, e) => {
    expect(cleanClipText(e.text)).toBe(e.cleaned);
    const untruncated = tok.encode(e.text, { contextLength: e.ids.length, truncate: false, allowEmpty: true });
    expect(Array.from(untruncated)).toEqual(e.ids);
    const c77 = tok.encode(e.text, { allowEmpty: true });
    expect(c77).toBeInstanceOf(Int32Array);
    expect(Array.from(c77)).toEqual(e.context77);
    if (e.exceeds_context) {
      expectEngineError(() => tok.encode(e.text, { truncate: false }), 'invalid_input', `${e.ids.length} tokens`, '77');
    }
  });

  it('encodeBatch packs rows and finds the eot (argmax) position', () => {
    const sample = vectors.entries.filter((e) => e.cleaned.length > 0).slice(0, 40);
    const { ids, eotIndex, batchSize, contextLength } = tok.encodeBatch(sample.map((e) => e.text));
    expect([batchSize, contextLength, ids.length]).toEqual([sample.length, 77, sample.length * 77]);
    sample.forEach((e, b) => {
      const row = Array.from(ids.subarray(b * 77, (b + 1) * 77));
      expect(row).toEqual(e.context77);
      // official pooling: text.argmax(-1) = first position with the largest id (eot is the largest)
      expect(eotIndex[b]).toBe(row.indexOf(Math.max(...row)));
    });
  });
});

describe('inspect on byte-level BPE', () => {
  it('has no unknown words (every byte has a token); only truncation is reported', () => {
    expect(tok.inspect('zzqx blorf 赤い円 🙂', 77)).toMatchObject({ unknownWords: [], truncated: false });
    expect(tok.inspect(Array(80).fill('red').join(' '), 77)).toEqual({ tokens: 82, unknownWords: [], truncated: true });
  });
});

describe('errors and options', () => {
  it('empty or whitespace-only prompts are invalid_input by default', () => {
    for (const t of ['', '   ', '\n\t \n', '\u0000\u0007']) expectEngineError(() => tok.encode(t), 'invalid_input', 'empty');
    expectEngineError(() => tok.encodeBatch(['a cat', ' ']), 'invalid_input', 'prompt 1');
    expect(Array.from(tok.encode('  ', { allowEmpty: true }).slice(0, 3))).toEqual([49_406, 49_407, 0]);
  });

  it('truncate:false overflow says how many tokens; exact fit is accepted', () => {
    const fit = Array(75).fill('cat').join(' '); // 75 + 2 = 77
    expect(tok.encode(fit, { truncate: false })[76]).toBe(49_407);
    const over = Array(100).fill('cat').join(' ');
    const e = expectEngineError(() => tok.encode(over, { truncate: false }), 'invalid_input', '102 tokens', 'context length 77');
    expect(e.detail).toMatchObject({ tokens: 102, contextLength: 77 });
    const t = tok.encode(over);
    expect(t[0]).toBe(49_406);
    expect(t[76]).toBe(49_407);
    expect(new Set(Array.from(t.slice(1, 76))).size).toBe(1); // 75 × "cat</w>"
  });

  it('other context lengths and bad ones', () => {
    expect(Array.from(tok.encode('a photo of a cat', { contextLength: 4 }))).toEqual([49_406, 320, 1125, 49_407]);
    expectEngineError(() => tok.encode('cat', { contextLength: 1 }), 'invalid_input', 'contextLength');
    expectEngineError(() => tok.encode(42 as unknown as string), 'invalid_input', 'string');
  });

  it('a file that is not JSON → invalid_tokenizer naming the file', () => {
    const p = join(dir, 'garbage.json');
    writeFileSync(p, '\u0000\u0001 not json {');
    expectEngineError(() => TextTokenizer.fromFile(p), 'invalid_tokenizer', p, 'not valid JSON');
    expectEngineError(() => TextTokenizer.fromFile(join(dir, 'missing.json')), 'invalid_tokenizer', 'missing.json', 'cannot read');
    const arr = join(dir, 'array.json');
    writeFileSync(arr, '[1,2,3]');
    expectEngineError(() => TextTokenizer.fromFile(arr), 'invalid_tokenizer', arr);
  });

  it('a tokenizer.json without the special tokens → invalid_tokenizer saying which', () => {
    const j = JSON.parse(readFileSync(tokPath, 'utf8'));
    j.added_tokens = j.added_tokens.filter((t: any) => t.content !== '<|endoftext|>');
    const p = join(dir, 'no-eot.json');
    writeFileSync(p, JSON.stringify(j));
    expectEngineError(() => TextTokenizer.fromFile(p), 'invalid_tokenizer', p, '<|endoftext|>');
    delete j.model;
    expectEngineError(() => TextTokenizer.fromJson(j, { source: 'x.json' }), 'invalid_tokenizer', 'x.json', 'model');
  });
});

describe('WordLevel tokenizer.json through the same class', () => {
  const wordLevel = {
    version: '1.0',
    added_tokens: [
      { id: 0, content: '[PAD]', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false },
      { id: 5, content: '<sot>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false },
      { id: 6, content: '<eot>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false },
    ],
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'WhitespaceSplit' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab: { '[PAD]': 0, '[UNK]': 1, a: 2, red: 3, circle: 4, '<sot>': 5, '<eot>': 6 }, unk_token: '[UNK]' },
  };

  it('uses configurable special names and maps words, unknown → unk', () => {
    const wl = TextTokenizer.fromJson(wordLevel, { sotToken: '<sot>', eotToken: '<eot>' });
    expect(wl.mode).toBe('generic');
    expect([wl.sotId, wl.eotId, wl.vocabSize]).toEqual([5, 6, 7]);
    expect(Array.from(wl.encode('A  Red\tcircle', { contextLength: 8 }))).toEqual([5, 2, 3, 4, 6, 0, 0, 0]);
    expect(Array.from(wl.encode('a blue circle', { contextLength: 6 }))).toEqual([5, 2, 1, 4, 6, 0]);
    const b = wl.encodeBatch(['a', 'red circle a a'], { contextLength: 5 });
    expect(Array.from(b.ids)).toEqual([5, 2, 6, 0, 0, 5, 3, 4, 2, 6]);
    expect(Array.from(b.eotIndex)).toEqual([2, 4]);
    expectEngineError(() => wl.encode('a a a a a', { contextLength: 5, truncate: false }), 'invalid_input', '7 tokens');
  });

  it('inspect names the words the vocabulary does not know (once each, in order) and flags truncation', () => {
    const wl = TextTokenizer.fromJson(wordLevel, { sotToken: '<sot>', eotToken: '<eot>' });
    expect(wl.inspect('a Blue circle, a blue square', 8)).toEqual({ tokens: 8, unknownWords: ['blue', 'circle,', 'square'], truncated: false });
    expect(wl.inspect('a red circle', 8)).toEqual({ tokens: 5, unknownWords: [], truncated: false });
    expect(wl.inspect('a a a a a a a', 8)).toEqual({ tokens: 9, unknownWords: [], truncated: true });
    expect(wl.inspect('', 8)).toEqual({ tokens: 2, unknownWords: [], truncated: false });
    // A word past the cut is not read at all: it is not named as unknown (the truncation is reported).
    expect(wl.inspect('a red circle a a a square', 8)).toEqual({ tokens: 9, unknownWords: [], truncated: true });
    expect(wl.inspect('a red blue a a a square', 8)).toEqual({ tokens: 9, unknownWords: ['blue'], truncated: true });
  });

  it('default CLIP special names are required unless configured', () => {
    expectEngineError(() => TextTokenizer.fromJson(wordLevel, { source: 'toy.json' }), 'invalid_tokenizer', 'toy.json', '<|startoftext|>', '<|endoftext|>');
  });

  it('refuses start and end tokens that share an id, and a word with either id (every prompt would embed alike)', () => {
    const opts = { sotToken: '<sot>', eotToken: '<eot>', source: 'same.json' };
    const same = { ...wordLevel, added_tokens: wordLevel.added_tokens.map((t) => (t.content === '<sot>' ? { ...t, id: 6 } : t)) };
    expectEngineError(() => TextTokenizer.fromJson(same, opts), 'invalid_tokenizer', 'same.json', 'share id 6');
    const wordIsEot = { ...wordLevel, model: { ...wordLevel.model, vocab: { ...wordLevel.model.vocab, circle: 6 } } };
    expectEngineError(() => TextTokenizer.fromJson(wordIsEot, opts), 'invalid_tokenizer', '"circle" has id 6', 'end token');
    const wordIsSot = { ...wordLevel, model: { ...wordLevel.model, vocab: { ...wordLevel.model.vocab, red: 5 } } };
    expectEngineError(() => TextTokenizer.fromJson(wordIsSot, opts), 'invalid_tokenizer', '"red" has id 5', 'start token');
    // The specials' own vocab entries (as in Hugging Face CLIP files) are fine.
    expect(TextTokenizer.fromJson(wordLevel, opts).vocabSize).toBe(7);
  });

  it('without unk_token an unknown word is invalid_input', () => {
    const noUnk = { ...wordLevel, model: { ...wordLevel.model, unk_token: undefined } };
    const wl = TextTokenizer.fromJson(noUnk, { sotToken: '<sot>', eotToken: '<eot>' });
    expectEngineError(() => wl.encode('a green circle'), 'invalid_input', 'green');
  });
});
