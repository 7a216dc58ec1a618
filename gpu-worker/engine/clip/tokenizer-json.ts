// Builds a Hugging Face `tokenizer.json` for the OpenAI CLIP tokenizer from the official
// `bpe_simple_vocab_16e6.txt.gz` (the merges file shipped with openai/CLIP).
//
// Facts this follows (openai/CLIP simple_tokenizer.py, and the layout HF ships for
// openai/clip-vit-base-patch32):
// - byte-level alphabet: every byte b maps to a printable code point (bytesToUnicode): the
//   printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
// - vocabulary ids: [256 byte symbols in bytesToUnicode insertion order] + [the same 256 with
//   "</w>"] + [one symbol per merge, in merge order] + <|startoftext|> + <|endoftext|> = 49,408.
// - merges: lines 2 .. 48,895 of the file (line 1 is a version header); 48,894 merges.
// - words end with the suffix "</w>" (end_of_word_suffix), not a prefix space.

import { readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { EngineError } from '../errors.ts';

export const CLIP_SOT = '<|startoftext|>';
export const CLIP_EOT = '<|endoftext|>';
export const CLIP_END_OF_WORD = '</w>';
/** Official split regex (applied after lower()); each digit is its own token. */
export const CLIP_SPLIT_PATTERN =
  "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";
export const CLIP_NUM_MERGES = 48_894;
export const CLIP_VOCAB_SIZE = 49_408;

/** GPT-2/CLIP reversible byte → printable-character table, in the official insertion order. */
export function bytesToUnicode(): Array<[byte: number, ch: string]> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  return bs.map((b, i) => [b, String.fromCharCode(cs[i]!)]);
}

function readMerges(vocabGzPath: string): Array<[string, string]> {
  let text: string;
  try {
    text = gunzipSync(readFileSync(vocabGzPath)).toString('utf8');
  } catch (e) {
    throw new EngineError(
      'invalid_tokenizer',
      `cannot read CLIP BPE vocab ${vocabGzPath}: ${(e as Error).message} (expected the gzip file bpe_simple_vocab_16e6.txt.gz)`,
      { file: vocabGzPath },
    );
  }
  const lines = text.split('\n');
  // Official: merges = lines[1 : 49152 - 256 - 2 + 1]
  const raw = lines.slice(1, 1 + CLIP_NUM_MERGES);
  if (raw.length !== CLIP_NUM_MERGES) {
    throw new EngineError(
      'invalid_tokenizer',
      `CLIP BPE vocab ${vocabGzPath} has ${raw.length} merge lines, expected ${CLIP_NUM_MERGES}`,
      { file: vocabGzPath },
    );
  }
  return raw.map((line, i) => {
    const parts = line.split(' ');
    if (parts.length !== 2 || !parts[0] || !parts[1]) {
      throw new EngineError(
        'invalid_tokenizer',
        `CLIP BPE vocab ${vocabGzPath}: line ${i + 2} is not a merge "a b": ${JSON.stringify(line.slice(0, 60))}`,
        { file: vocabGzPath, line: i + 2 },
      );
    }
    return [parts[0], parts[1]];
  });
}

/** Builds the HF tokenizer.json object (same structure as openai/clip-vit-base-patch32's). */
export function buildClipTokenizerJson(vocabGzPath: string): object {
  const merges = readMerges(vocabGzPath);
  const byteSyms = bytesToUnicode().map(([, ch]) => ch);
  const symbols: string[] = [...byteSyms, ...byteSyms.map((s) => s + CLIP_END_OF_WORD)];
  for (const [a, b] of merges) symbols.push(a + b);
  symbols.push(CLIP_SOT, CLIP_EOT);
  if (symbols.length !== CLIP_VOCAB_SIZE) {
    throw new EngineError('invalid_tokenizer', `CLIP vocab from ${vocabGzPath} has ${symbols.length} symbols, expected ${CLIP_VOCAB_SIZE}`);
  }
  const vocab: Record<string, number> = {};
  symbols.forEach((s, i) => {
    if (Object.hasOwn(vocab, s)) {
      throw new EngineError('invalid_tokenizer', `CLIP vocab from ${vocabGzPath} has a duplicate symbol ${JSON.stringify(s)} (ids ${vocab[s]} and ${i})`);
    }
    vocab[s] = i;
  });
  const sotId = vocab[CLIP_SOT]!;
  const eotId = vocab[CLIP_EOT]!;
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: true,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(sotId, CLIP_SOT), special(eotId, CLIP_EOT)],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_SPLIT_PATTERN }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [CLIP_EOT, eotId],
      cls: [CLIP_SOT, sotId],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: CLIP_EOT,
      continuing_subword_prefix: '',
      end_of_word_suffix: CLIP_END_OF_WORD,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

/** Builds the tokenizer.json and writes it to outPath (compact JSON). */
export function writeClipTokenizerJson(vocabGzPath: string, outPath: string): void {
  writeFileSync(outPath, JSON.stringify(buildClipTokenizerJson(vocabGzPath)));
}

// CLI: node --import tsx gpu-worker/engine/clip/tokenizer-json.ts <bpe_simple_vocab_16e6.txt.gz> <out tokenizer.json>
if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const [src, out] = process.argv.slice(2);
  if (!src || !out) {
    console.error('usage: tokenizer-json.ts <bpe_simple_vocab_16e6.txt.gz> <out/tokenizer.json>');
    process.exit(2);
  }
  writeClipTokenizerJson(src, out);
  console.log(`wrote ${out}`);
}
