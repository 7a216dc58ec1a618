// The engine's text tokenizer: prompt → [sot, ...ids, eot] zero-padded to the context length,
// as OpenAI CLIP's `clip.tokenize` does. Loads any Hugging Face `tokenizer.json`:
// - the CLIP byte-level BPE (see tokenizer-json.ts), reproducing the official ids exactly;
// - a WordLevel (or other) tokenizer.json, e.g. the project's toy models.
//
// Division of labour with @huggingface/tokenizers 0.2 (pure JS):
// - The library does the vocabulary and the BPE merges (its BPE model honours
//   `end_of_word_suffix: "</w>"`), and the whole pipeline for non-CLIP tokenizers.
// - Done here in TS, because the library cannot reproduce the official CLIP pipeline:
//   * text cleaning (ftfy's fix_text reimplemented, html.unescape ×2, Python whitespace/lower), see shared/text-clean.ts (shared: the prompt policy reads prompts the same way);
//     the library has no ftfy/HTML step, and its NFC/\s+/Lowercase normalizer differs from
//     Python's at the edges (JS \s includes U+FEFF), so for tokenizers whose normalizer only does
//     those steps we drop it: the cleaning here subsumes it.
//   * for byte-level BPE: the official regex split and the special-token rule. In openai/CLIP a
//     literal "<|endoftext|>" in the prompt becomes the special id only where the split regex
//     matches it as a whole token (e.g. not in "!<|endoftext|>", where "!<|" is one punctuation
//     run), whereas the library's added-token splitter matches it anywhere. Python's regex is
//     also case-insensitive and uses Unicode White_Space for \s. So we split with the official
//     regex, map pieces to bytes (bytes_to_unicode) and call the library's BPE model per piece.
//   * the `Whitespace` pre-tokenizer (`\w+|[^\w\s]+`) is ASCII-only in the library (a JS regex
//     without the `u` flag), so "café" became "caf", "é"; Hugging Face's (Rust `regex`) \w and \s
//     are Unicode's. We hand the library the same split spelt out in Unicode classes.
//   * `WordLevel` is not a model type in tokenizers.js 0.2; a vocab-only model falls back to its
//     "Legacy" model (token → id lookup), whose unknown-token id comes from the tokenizer config,
//     so we pass `unk_token` from the model section.
//   * adding sot/eot, truncation and padding (done here so every tokenizer behaves alike).

import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { EngineError } from '../errors.ts';
import { cleanClipText, PY_WHITESPACE_CLASS } from '../../../shared/text-clean.ts';
import { bytesToUnicode, CLIP_EOT, CLIP_SOT } from './tokenizer-json.ts';

export const DEFAULT_CONTEXT_LENGTH = 77;

export interface EncodeOptions {
  /** Output length, sot and eot included. Default 77. */
  contextLength?: number;
  /** Default true: keep sot + first (contextLength-2) tokens + eot. False: throw if too long. */
  truncate?: boolean;
  /**
   * Default false: an empty or whitespace-only prompt is an error, and so is one with nothing before
   * a literal end token ("<|endoftext|> a cat": the model reads no further). True: encode it as
   * openai/CLIP does (used to compare against the reference vectors).
   */
  allowEmpty?: boolean;
}

export interface TextTokenizerOptions {
  /** Name of the start token among the added tokens. Default "<|startoftext|>". */
  sotToken?: string;
  /** Name of the end token among the added tokens. Default "<|endoftext|>". */
  eotToken?: string;
  /** Where the JSON came from, used in error messages. */
  source?: string;
}

export interface EncodedBatch {
  /** B × contextLength, row-major, zero-padded. */
  ids: Int32Array;
  /** Per row, the first position that holds eotId (what CLIP's `argmax` pooling picks). */
  eotIndex: Int32Array;
  batchSize: number;
  contextLength: number;
}

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Official CLIP split (after lower()); `regex` module semantics: IGNORECASE, White_Space \s. */
const CLIP_SPLIT_RE = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${PY_WHITESPACE_CLASS}\\p{L}\\p{N}]+`,
  'giu',
);
const BYTE_SYMBOL: string[] = (() => {
  const t = new Array<string>(256);
  for (const [b, ch] of bytesToUnicode()) t[b] = ch;
  return t;
})();
const utf8 = new TextEncoder();

/** Normalizer steps already done (in their Python form) by cleanClipText. */
function normalizerIsSubsumed(n: unknown): boolean {
  if (n === null || n === undefined) return true;
  if (!isObj(n)) return false;
  switch (n.type) {
    case 'NFC':
    case 'Lowercase':
      return true;
    case 'Replace': {
      const p = n.pattern;
      return isObj(p) && (p.Regex === '\\s+' || p.String === ' ') && n.content === ' ';
    }
    case 'Strip':
      return true;
    case 'Sequence':
      return Array.isArray(n.normalizers) && n.normalizers.every(normalizerIsSubsumed);
    default:
      return false;
  }
}

/**
 * Hugging Face's `Whitespace` pre-tokenizer, `\w+|[^\w\s]+` in the Rust `regex` crate, where \w is
 * UTS #18's word class (Alphabetic, marks, decimal digits, connector punctuation, ZWJ/ZWNJ) and \s
 * is White_Space. Written as a `Split` (which is what `Whitespace` is in the Rust library) so that
 * @huggingface/tokenizers, whose own `Whitespace` uses ASCII \w and JS \s, splits like the reference.
 */
const UNICODE_WORD_CLASS = '\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}';
const UNICODE_WHITESPACE_SPLIT = {
  type: 'Split',
  pattern: { Regex: `[${UNICODE_WORD_CLASS}]+|[^${UNICODE_WORD_CLASS}\\p{White_Space}]+` },
  behavior: 'Removed',
  invert: true,
};

/** The pre-tokenizer config with every `Whitespace` in it replaced by its Unicode equivalent. */
function withUnicodeWhitespace(pre: unknown): unknown {
  if (!isObj(pre)) return pre;
  if (pre.type === 'Whitespace') return UNICODE_WHITESPACE_SPLIT;
  if (pre.type === 'Sequence' && Array.isArray(pre.pretokenizers)) return { ...pre, pretokenizers: pre.pretokenizers.map(withUnicodeWhitespace) };
  return pre;
}

function hasByteLevel(pre: unknown): boolean {
  if (!isObj(pre)) return false;
  if (pre.type === 'ByteLevel') return true;
  if (pre.type === 'Sequence' && Array.isArray(pre.pretokenizers)) return pre.pretokenizers.some(hasByteLevel);
  return false;
}

/**
 * Where a normalizer or pre-tokenizer config holds a `pattern` that is neither `{"Regex": string}` nor
 * `{"String": string}`: @huggingface/tokenizers only warns of one ("Unknown pattern type") and builds
 * a step that does nothing (a Replace) or drops the whole text (a Split). JSON paths, e.g. "pre_tokenizer.pattern".
 */
function unreadPatterns(config: unknown, at: string): string[] {
  if (Array.isArray(config)) return config.flatMap((c, i) => unreadPatterns(c, `${at}[${i}]`));
  if (!isObj(config)) return [];
  const here = 'pattern' in config && !(isObj(config.pattern) && (typeof config.pattern.Regex === 'string' || typeof config.pattern.String === 'string')) ? [`${at}.pattern`] : [];
  return [...here, ...Object.entries(config).flatMap(([k, v]) => (k === 'pattern' ? [] : unreadPatterns(v, `${at}.${k}`)))];
}

/** The `pattern.Regex` sources of a normalizer or pre-tokenizer config: regexes the tokenizer.json brings, run by JS's backtracking engine. */
function regexSources(config: unknown): string[] {
  if (Array.isArray(config)) return config.flatMap(regexSources);
  if (!isObj(config)) return [];
  const here = isObj(config.pattern) && typeof config.pattern.Regex === 'string' ? [config.pattern.Regex] : [];
  return [...here, ...Object.entries(config).flatMap(([k, v]) => (k === 'pattern' ? [] : regexSources(v)))];
}

/** How many words of its vocabulary selfCheck reads back. */
const SELF_CHECK_WORDS = 8;

/**
 * Up to SELF_CHECK_WORDS words of a vocabulary as a prompt would spell them (a BPE's end-of-word
 * "</w>" and a sentencepiece "▁" taken off), letters only and as text cleaning leaves them (lower
 * case): lower-case ASCII words of three letters or more first, in the vocabulary's order (it stops
 * at enough of those: CLIP's 49 408 tokens are not all read), then shorter or accented ones (a
 * normalizer may strip an accent the vocabulary keeps).
 */
function plainVocabularyWords(vocab: Json, skip: (token: string) => boolean): string[] {
  const best = new Set<string>();
  const others = new Set<string>();
  for (const token of Object.keys(vocab)) {
    if (skip(token)) continue;
    const word = token.replace(/<\/w>$/, '').replace(/^\u2581/, '');
    if (/^[a-z]{3,}$/.test(word)) best.add(word);
    else if (others.size < SELF_CHECK_WORDS && /^\p{L}+$/u.test(word) && cleanClipText(word) === word) others.add(word);
    if (best.size >= SELF_CHECK_WORDS) break;
  }
  return [...best, ...others].slice(0, SELF_CHECK_WORDS);
}

export interface SelfCheckOptions {
  /** The longest prompt the tokenizer is given (characters): the timed probes go up to it. */
  maxChars: number;
  /** How long one probe may take to tokenize (ms; default SELF_CHECK_BUDGET_MS). */
  budgetMs?: number;
}

/**
 * How long one timed probe may take. A sane tokenizer takes well under 1 ms for a 300-character prompt
 * (the toy's and CLIP's: ~0.05–0.3 ms); this leaves room for a loaded machine, and a probe over it is
 * timed once more before it counts (a GC pause or a descheduled thread does not repeat).
 */
export const SELF_CHECK_BUDGET_MS = 100;
/** Probe lengths (characters) for a tokenizer.json with regexes of its own: small steps first (see selfCheck). */
const RAMP_STEP = 2;
const RAMP_SMALL_UP_TO = 64;
const RAMP_GROWTH = 1.5;

export interface PromptInspection {
  /** Tokens with start and end, before any truncation. */
  tokens: number;
  /** Words the vocabulary maps to its unknown token, in order, once each. */
  unknownWords: string[];
  /** Whether the prompt is longer than the context length (the model reads only its start). */
  truncated: boolean;
  /**
   * The end token's text ("<|endoftext|>") when the prompt holds it where the tokenizer reads it as
   * that token (as openai/CLIP does): the model pools its features at the first end token, so it
   * ignores everything after it.
   */
  endTokenText?: string;
  /** Likewise the start token's text ("<|startoftext|>"): read as the start token, not as words. */
  startTokenText?: string;
  /**
   * True when the prompt holds the end token with nothing before it but start tokens: the model reads
   * it as an empty prompt (encode refuses it as it refuses an empty one). Absent otherwise.
   */
  nothingBeforeEnd?: true;
  /**
   * The tokenizer's other special tokens (its added tokens but the start, end and unknown ones, e.g.
   * the toy models' "<pad>") where the prompt holds their texts: read as those tokens, not as words.
   */
  specialTokens?: SpecialTokenText[];
  /**
   * True when the prompt holds nothing but start and other special tokens (and no end token): the
   * model reads no word of it, and encode refuses it. Absent otherwise.
   */
  noWords?: true;
}

export interface SpecialTokenText {
  text: string;
  /** "padding token" for the tokenizer's padding token, else "special token". */
  role: 'padding token' | 'special token';
}

export class TextTokenizer {
  readonly sotId: number;
  readonly eotId: number;
  readonly vocabSize: number;
  /** The start and end tokens' texts (their names among the added tokens). */
  readonly sotText: string;
  readonly eotText: string;
  /** 'clip-bpe': byte-level BPE following openai/CLIP exactly; 'generic': the tokenizer.json pipeline. */
  readonly mode: 'clip-bpe' | 'generic';
  private readonly hf: Tokenizer;
  private readonly special = new Map<string, number>();
  private readonly source: string;
  /** The id unknown words map to (word-level vocabularies with an unk_token); undefined for byte-level BPE, which has none. */
  private readonly unkId: number | undefined;
  /** A word-level vocabulary's words (no added tokens), sorted; undefined for BPE, whose pieces are no words. */
  private readonly words: readonly string[] | undefined;
  /** Added tokens other than the start, end and unknown ones, by id: no words, so a prompt of only these reads nothing. */
  private readonly otherSpecial = new Map<number, SpecialTokenText>();
  /** The model's vocabulary (token → id) and its unknown token: selfCheck reads words of it back. */
  private readonly vocab: Json;
  private readonly unkToken: string | undefined;
  /** JSON paths of patterns the library does not read (unreadPatterns), in what it is given. */
  private readonly unread: readonly string[];
  /** The regexes the tokenizer.json brings that tokenize() runs (generic mode's normalizer and pre-tokenizer). */
  private readonly ownRegexes: readonly string[];

  private constructor(json: Json, opts: TextTokenizerOptions) {
    const src = opts.source ?? '<tokenizer json>';
    this.source = src;
    const bad = (what: string): never => {
      throw new EngineError('invalid_tokenizer', `tokenizer ${src}: ${what}`, { file: src });
    };
    const model = json.model;
    if (!isObj(model)) bad('no "model" object (not a Hugging Face tokenizer.json?)');
    const m = model as Json;
    if (!isObj(m.vocab)) bad(`model.vocab must be an object of token → id (model type ${String(m.type)})`);
    if (m.type !== undefined && m.type !== 'BPE' && m.type !== 'WordLevel') {
      bad(`model type ${JSON.stringify(m.type)} is not supported (BPE or WordLevel)`);
    }
    if (m.type === 'BPE' && !Array.isArray(m.merges)) bad('BPE model has no "merges" array');
    const added = json.added_tokens;
    if (!Array.isArray(added)) bad('no "added_tokens" array (the start/end tokens must be added tokens)');

    const sotName = opts.sotToken ?? CLIP_SOT;
    const eotName = opts.eotToken ?? CLIP_EOT;
    for (const t of added as unknown[]) {
      if (!isObj(t) || typeof t.content !== 'string' || !Number.isInteger(t.id) || (t.id as number) < 0) {
        bad(`malformed added token ${JSON.stringify(t)}`);
      }
      const tok = t as { content: string; id: number };
      this.special.set(tok.content, tok.id);
    }
    const sot = this.special.get(sotName);
    const eot = this.special.get(eotName);
    const missing = [sot === undefined ? sotName : null, eot === undefined ? eotName : null].filter(Boolean);
    if (missing.length) bad(`missing special token(s) ${missing.map((x) => JSON.stringify(x)).join(', ')} in added_tokens`);
    this.sotId = sot!;
    this.eotId = eot!;
    this.sotText = sotName;
    this.eotText = eotName;
    // The text tower pools at the first end token: were it the start token's id (or a word's), every
    // prompt would pool at position 0 (or at that word) and embed alike, ignoring what it says.
    if (sot === eot) bad(`the start token ${JSON.stringify(sotName)} and the end token ${JSON.stringify(eotName)} share id ${sot}; they must have ids of their own (the model pools its text features at the end token)`);

    let maxId = -1;
    for (const [tok, id] of Object.entries(m.vocab as Json)) {
      if (!Number.isInteger(id) || (id as number) < 0) bad(`vocab entry ${JSON.stringify(tok)} has a bad id ${JSON.stringify(id)}`);
      if ((id === sot && tok !== sotName) || (id === eot && tok !== eotName)) {
        bad(`vocab entry ${JSON.stringify(tok)} has id ${id}, the id of the ${id === sot ? `start token ${JSON.stringify(sotName)}` : `end token ${JSON.stringify(eotName)}`}; a word must have an id of its own (the model pools its text features at the end token)`);
      }
      maxId = Math.max(maxId, id as number);
    }
    for (const id of this.special.values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    this.mode = m.type === 'BPE' && hasByteLevel(json.pre_tokenizer) ? 'clip-bpe' : 'generic';
    const hfJson: Json = {
      ...json,
      normalizer: normalizerIsSubsumed(json.normalizer) ? null : json.normalizer,
      pre_tokenizer: withUnicodeWhitespace(json.pre_tokenizer ?? null),
      post_processor: null, // sot/eot are added here
      decoder: json.decoder ?? null,
    };
    const hfConfig: Json = typeof m.unk_token === 'string' ? { unk_token: m.unk_token } : {};
    const unk = typeof m.unk_token === 'string' ? ((m.vocab as Json)[m.unk_token] ?? this.special.get(m.unk_token)) : undefined;
    this.unkId = this.mode === 'generic' && Number.isInteger(unk) ? (unk as number) : undefined;
    const padToken = isObj(json.padding) && typeof json.padding.pad_token === 'string' ? json.padding.pad_token : undefined;
    for (const t of added as Array<{ content: string; id: number; special?: unknown }>) {
      const { content: text, id } = t;
      // An added token that is not special (special: false) is an extra word of the vocabulary.
      if (t.special !== true || id === this.sotId || id === this.eotId || text === m.unk_token) continue;
      // Without a padding section the name tells (the toy models' "<pad>", BERT's "[PAD]").
      const role = text === padToken || /^(<pad>|\[pad\])$/i.test(text) ? 'padding token' : 'special token';
      this.otherSpecial.set(id, { text, role });
    }
    this.words = m.type === 'WordLevel' ? Object.keys(m.vocab as Json).filter((w) => !this.special.has(w) && w !== m.unk_token).sort() : undefined;
    this.vocab = m.vocab as Json;
    this.unkToken = typeof m.unk_token === 'string' ? m.unk_token : undefined;
    // What tokenize() hands the library of the tokenizer.json's own (its normalizer unless subsumed, its
    // pre-tokenizer as written: a `Whitespace` becomes this file's Split, no regex of the file's). Clip-bpe
    // mode reads neither (tokenizeClip splits with CLIP_SPLIT_RE).
    const given = this.mode === 'generic' ? { normalizer: hfJson.normalizer, pre_tokenizer: json.pre_tokenizer } : {};
    this.unread = Object.entries(given).flatMap(([at, config]) => unreadPatterns(config, at));
    this.ownRegexes = Object.values(given).flatMap(regexSources);
    try {
      this.hf = new Tokenizer(hfJson, hfConfig);
    } catch (e) {
      bad(`rejected by @huggingface/tokenizers: ${(e as Error).message}`);
    }
  }

  static fromJson(obj: unknown, opts: TextTokenizerOptions = {}): TextTokenizer {
    if (!isObj(obj)) {
      throw new EngineError('invalid_tokenizer', `tokenizer ${opts.source ?? '<tokenizer json>'}: not a JSON object`);
    }
    return new TextTokenizer(obj, opts);
  }

  static fromFile(path: string, opts: Omit<TextTokenizerOptions, 'source'> = {}): TextTokenizer {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new EngineError('invalid_tokenizer', `tokenizer ${path}: cannot read file: ${(e as Error).message}`, { file: path });
    }
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch (e) {
      throw new EngineError('invalid_tokenizer', `tokenizer ${path}: not valid JSON: ${(e as Error).message}`, { file: path });
    }
    return TextTokenizer.fromJson(obj, { ...opts, source: path });
  }

  /** Text token ids (no sot/eot, no truncation) for a prompt. Empty prompt → []. */
  tokenize(text: string): number[] {
    if (typeof text !== 'string') {
      throw new EngineError('invalid_input', `prompt must be a string, got ${text === null ? 'null' : typeof text}`);
    }
    const cleaned = cleanClipText(text);
    if (cleaned.length === 0) return [];
    return this.mode === 'clip-bpe' ? this.tokenizeClip(cleaned) : this.tokenizeGeneric(cleaned);
  }

  private tokenizeClip(cleaned: string): number[] {
    const ids: number[] = [];
    const model = this.hf.model as unknown as (tokens: string[]) => string[];
    for (const piece of cleaned.match(CLIP_SPLIT_RE) ?? []) {
      const sp = this.special.get(piece);
      if (sp !== undefined) {
        ids.push(sp);
        continue;
      }
      let sym = '';
      for (const b of utf8.encode(piece)) sym += BYTE_SYMBOL[b];
      for (const t of model([sym])) {
        const id = this.hf.token_to_id(t);
        if (id === undefined) {
          throw new EngineError('invalid_tokenizer', `tokenizer ${this.source}: BPE produced ${JSON.stringify(t)}, which is not in the vocab`);
        }
        ids.push(id);
      }
    }
    return ids;
  }

  private tokenizeGeneric(cleaned: string): number[] {
    const enc: { ids: Array<number | undefined>; tokens: string[] } = this.hf.encode(cleaned, { add_special_tokens: false });
    return enc.ids.map((id: number | undefined, i: number): number => {
      if (id === undefined || id === null || !Number.isInteger(id)) {
        throw new EngineError(
          'invalid_input',
          `word ${JSON.stringify(enc.tokens[i])} is not in the vocabulary of ${this.source}, which has no unk_token`,
        );
      }
      return id;
    });
  }

  /**
   * What would make every prompt fail, or hold the thread, said for the operator: undefined when there is
   * nothing. Run when a bundle is loaded (ClipEngine.check, which `clipag models push` runs, and
   * ClipEngine.open): a tokenizer.json that @huggingface/tokenizers half-reads builds without an error,
   * and then reads every prompt as empty (the caller would be told to fix the prompt), or backtracks for
   * minutes on a prompt, on the worker's main thread. Three checks, each cheap:
   * - a pattern the library does not read (unreadPatterns);
   * - its own words: plain words of the vocabulary, tokenized one by one, must come out as tokens, and
   *   most of them as known ones (not the unknown token);
   * - time: probe strings of the kind that make a backtracking regex blow up (a run of one character,
   *   of a word and a space, ended or not by a character that breaks it), each within `budgetMs`. For a
   *   tokenizer.json with regexes of its own (`ownRegexes`) the probes grow in small steps up to
   *   `maxChars`, with each regex's own letters among the run characters, so an exponential regex is
   *   caught at a length where it still takes about the budget (a step multiplies an exponential's time
   *   by its base squared: ×4 for (a+)+), never run at a length where it would take minutes. Without
   *   such regexes the pipeline is this file's and the library's own (fixed, linear code): one round at
   *   `maxChars` only.
   * Limits: a probe is a handful of strings, not a proof. A regex that blows up only on characters or
   * shapes the probes do not make (a run of "q" where the regex names no "q"; an alternation of two
   * characters) passes, as does one that is slow only past `maxChars`; and nothing here interrupts an
   * encode that is already running, so the budget bounds the check, not a prompt.
   */
  selfCheck(opts: SelfCheckOptions): string | undefined {
    if (this.unread.length > 0) {
      return `${this.unread.map((p) => JSON.stringify(p)).join(', ')} ${this.unread.length === 1 ? 'is' : 'are'} neither {"Regex": …} nor {"String": …}: @huggingface/tokenizers ignores ${this.unread.length === 1 ? 'it' : 'them'}, so the tokenizer would not do what its tokenizer.json says`;
    }
    const read = plainVocabularyWords(this.vocab, (t) => this.special.has(t) || t === this.unkToken).map((w) => ({ word: w, ids: this.tokenize(w) }));
    const known = read.filter(({ ids }) => ids.length > 0 && ids.some((id) => id !== this.unkId && !this.otherSpecial.has(id)));
    if (read.length > 0 && known.length * 2 < read.length) {
      const shown = read.slice(0, 4).map(({ word, ids }) => `${JSON.stringify(word)} → ${ids.length === 0 ? 'no tokens' : 'the unknown token'}`);
      return `it reads ${known.length} of ${read.length} words of its own vocabulary (${shown.join(', ')}${read.length > 4 ? ', …' : ''}): every prompt would fail as empty or unknown; its normalizer or pre-tokenizer is not one @huggingface/tokenizers reads as intended`;
    }
    return this.timeProbes(opts);
  }

  private timeProbes({ maxChars, budgetMs = SELF_CHECK_BUDGET_MS }: SelfCheckOptions): string | undefined {
    const own = this.ownRegexes.length > 0;
    // The letters and digits a regex names literally (its "a" in (a|aa)+$), up to 6, besides the usual runs.
    const named = own ? [...new Set(this.ownRegexes.join('').toLowerCase().replace(/\\[pPu]\{[^}]*\}|\\./g, '').match(/[\p{L}\p{N}]/gu) ?? [])].slice(0, 6) : [];
    const units = [...new Set(['a', '1', '.', 'é', 'a ', ...named])];
    const lengths: number[] = [];
    if (own) {
      for (let n = RAMP_STEP; n <= Math.min(RAMP_SMALL_UP_TO, maxChars); n += RAMP_STEP) lengths.push(n);
      for (let n = Math.round(RAMP_SMALL_UP_TO * RAMP_GROWTH); n < maxChars; n = Math.round(n * RAMP_GROWTH)) lengths.push(n);
    }
    if (lengths.at(-1) !== maxChars) lengths.push(maxChars);
    for (const n of lengths) {
      for (const unit of units) {
        for (const end of ['', '!']) {
          const count = Math.max(1, Math.floor((n - end.length) / unit.length));
          const probe = unit.repeat(count) + end;
          const took = (): number => {
            const start = performance.now();
            try {
              this.tokenize(probe);
            } catch {
              // A probe's words the vocabulary lacks (no unk_token) are no fault here: only the time counts.
            }
            return performance.now() - start;
          };
          const first = took();
          const ms = first > budgetMs ? Math.min(first, took()) : first;
          if (ms > budgetMs) {
            const shown = `${JSON.stringify(unit)} × ${count}${end ? ` then ${JSON.stringify(end)}` : ''} (${probe.length} characters)`;
            return `tokenizing ${shown} took ${Math.round(ms)} ms, over the ${budgetMs} ms allowed: ${own ? `a regex of its normalizer or pre-tokenizer (${this.ownRegexes.map((r) => JSON.stringify(r)).join(', ')}) backtracks, and a longer prompt like it would hold the worker far longer` : 'the tokenizer is too slow to serve prompts'}`;
          }
        }
      }
    }
    return undefined;
  }

  /**
   * Every word a word-level vocabulary knows, when it has at most `limit` (a small model's whole
   * language, worth telling a caller whose prompt it cannot read); undefined for a larger or a BPE one.
   */
  knownWords(limit: number): readonly string[] | undefined {
    return this.words && this.words.length <= limit ? this.words : undefined;
  }

  /**
   * What the model will actually read of a prompt: the words its vocabulary does not know (they
   * become the unknown token, so the model cannot see them) and whether the prompt is cut at the
   * context length. For telling a caller, not for encoding: encode() does the same silently.
   */
  inspect(text: string, contextLength = DEFAULT_CONTEXT_LENGTH): PromptInspection {
    const cleaned = cleanClipText(text);
    const ids = cleaned.length === 0 ? [] : this.tokenize(text);
    const unknownWords: string[] = [];
    // Only the tokens the model reads: past the context length the prompt is cut, and a word there is
    // not read at all, known or not (the truncation is reported apart).
    const read = ids.slice(0, Math.max(0, contextLength - 2));
    if (this.unkId !== undefined && read.includes(this.unkId)) {
      const enc: { ids: Array<number | undefined>; tokens: string[] } = this.hf.encode(cleaned, { add_special_tokens: false });
      for (let i = 0; i < Math.min(enc.ids.length, read.length); i++) {
        if (enc.ids[i] === this.unkId && !unknownWords.includes(enc.tokens[i])) unknownWords.push(enc.tokens[i]);
      }
    }
    const specialTokens = [...new Set(ids)].flatMap((id) => this.otherSpecial.get(id) ?? []);
    return {
      tokens: ids.length + 2,
      unknownWords,
      truncated: ids.length + 2 > contextLength,
      ...(ids.includes(this.eotId) ? { endTokenText: this.eotText } : {}),
      ...(ids.includes(this.sotId) ? { startTokenText: this.sotText } : {}),
      ...(ids.includes(this.eotId) && this.readsNothing(ids) ? { nothingBeforeEnd: true as const } : {}),
      ...(specialTokens.length > 0 ? { specialTokens } : {}),
      ...(ids.length > 0 && !ids.includes(this.eotId) && this.readsNothing(ids) ? { noWords: true as const } : {}),
    };
  }

  /**
   * Whether token ids (without the added start/end) hold nothing but start tokens and other special
   * tokens such as "<pad>" (before the first end token, if any): no word for the model to read.
   */
  private readsNothing(ids: readonly number[]): boolean {
    for (const id of ids) {
      if (id === this.eotId) return true;
      if (id !== this.sotId && !this.otherSpecial.has(id)) return false;
    }
    return true;
  }

  /** The special tokens among ids, named with their roles, once each: '"<|startoftext|>", the start token'. */
  private specialsIn(ids: readonly number[]): string {
    return [...new Set(ids)]
      .map((id) => (id === this.sotId ? `${JSON.stringify(this.sotText)}, the start token` : `${JSON.stringify(this.otherSpecial.get(id)!.text)}, the ${this.otherSpecial.get(id)!.role}`))
      .join(' and ');
  }

  /** [sot, ...ids, eot] zero-padded to contextLength (default 77). */
  encode(text: string, opts: EncodeOptions = {}): Int32Array {
    const out = new Int32Array(this.checkContext(opts));
    this.encodeInto(text, opts, out, 0);
    return out;
  }

  encodeBatch(texts: readonly string[], opts: EncodeOptions = {}): EncodedBatch {
    if (!Array.isArray(texts) || texts.length === 0) {
      throw new EngineError('invalid_input', 'encodeBatch needs a non-empty array of prompts');
    }
    const ctx = this.checkContext(opts);
    const ids = new Int32Array(texts.length * ctx);
    const eotIndex = new Int32Array(texts.length);
    texts.forEach((t, b) => {
      const row = ids.subarray(b * ctx, (b + 1) * ctx);
      try {
        this.encodeInto(t, opts, row, b);
      } catch (e) {
        if (e instanceof EngineError) {
          throw new EngineError(e.code, `prompt ${b}: ${e.message}`, { ...e.detail, index: b });
        }
        throw e;
      }
      eotIndex[b] = row.indexOf(this.eotId);
    });
    return { ids, eotIndex, batchSize: texts.length, contextLength: ctx };
  }

  private checkContext(opts: EncodeOptions): number {
    const ctx = opts.contextLength ?? DEFAULT_CONTEXT_LENGTH;
    if (!Number.isInteger(ctx) || ctx < 2) {
      throw new EngineError('invalid_input', `contextLength must be an integer >= 2, got ${ctx}`);
    }
    return ctx;
  }

  private encodeInto(text: string, opts: EncodeOptions, out: Int32Array, _row: number): void {
    const ctx = out.length;
    const ids = this.tokenize(text);
    if (!opts.allowEmpty && this.readsNothing(ids)) {
      throw new EngineError(
        'invalid_input',
        ids.length === 0
          ? 'prompt is empty (or only whitespace/control characters after cleaning)'
          : ids.includes(this.eotId)
            ? `prompt is empty before its first ${JSON.stringify(this.eotText)}, the end token, where the model stops reading`
            : `prompt has no words, only ${this.specialsIn(ids)}`,
      );
    }
    const total = ids.length + 2;
    if (total > ctx) {
      if (opts.truncate === false) {
        throw new EngineError(
          'invalid_input',
          `prompt has ${total} tokens (start/end included), more than the context length ${ctx}; shorten it or allow truncation`,
          { tokens: total, contextLength: ctx },
        );
      }
      // openai/CLIP: tokens[:ctx], then the last one becomes eot.
      out[0] = this.sotId;
      for (let i = 1; i < ctx - 1; i++) out[i] = ids[i - 1]!;
      out[ctx - 1] = this.eotId;
      return;
    }
    out[0] = this.sotId;
    for (let i = 0; i < ids.length; i++) out[i + 1] = ids[i]!;
    out[ids.length + 1] = this.eotId;
  }
}
