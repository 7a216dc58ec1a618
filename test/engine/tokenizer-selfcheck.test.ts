/**
 * A bundle whose tokenizer.json @huggingface/tokenizers half-reads, or whose own regex backtracks, is
 * refused when the bundle is loaded (ClipEngine.check, which `clipag models push` runs; ClipEngine.open),
 * as the model's fault (invalid_model, naming the tokenizer file), not served to fail every prompt as the
 * caller's (invalid_input "prompt is empty") or to hold the worker's thread. The embedded models, the
 * CLIP BPE and a tokenizer with a harmless regex of its own pass.
 */
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { buildClipTokenizerJson } from '../../gpu-worker/engine/clip/tokenizer-json.ts';
import { TextTokenizer } from '../../gpu-worker/engine/clip/tokenizer.ts';
import { PROMPT_MAX_CHARS } from '../../shared/schemas/generation.ts';
import { rejection } from '../helpers/errors.ts';
import { referencePath } from '../helpers/reference.ts';

const TOY = new URL('../../models/toy', import.meta.url).pathname;
const toyTokenizer = JSON.parse(readFileSync(join(TOY, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** models/toy with its tokenizer.json's pre-tokenizer replaced (and the manifest's checksum of it made to match). */
function toyWithPreTokenizer(preTokenizer: unknown): { dir: string; tokenizerPath: string } {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-selfcheck-'));
  dirs.push(dir);
  cpSync(TOY, dir, { recursive: true });
  const text = JSON.stringify({ ...toyTokenizer, pre_tokenizer: preTokenizer });
  const tokenizerPath = join(dir, 'tokenizer.json');
  writeFileSync(tokenizerPath, text);
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
  manifest.sha256['tokenizer.json'] = createHash('sha256').update(text).digest('hex');
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  return { dir, tokenizerPath };
}

/** A Split (match mode) that reads words as the toy's Whitespace does, plus a backtracking alternative tried first. */
const split = (regex: string) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Removed', invert: true });
const WORDS = '\\p{L}+|[^\\p{L}\\s]+';

describe('ClipEngine.check refuses a tokenizer.json the library half-reads, as invalid_model naming the tokenizer', () => {
  it('a Split whose pattern is neither {Regex} nor {String} (the library splits nothing: every prompt "empty")', async () => {
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined); // the library's "Unknown pattern type"
    try {
      const { dir, tokenizerPath } = toyWithPreTokenizer({ type: 'Split', pattern: {}, behavior: 'Removed', invert: true });
      for (const load of [() => ClipEngine.check(dir), () => ClipEngine.open(dir)]) {
        const e = await rejection(load());
        expect(e.code).toBe('invalid_model');
        expect(e.message).toContain(`tokenizer ${tokenizerPath}: "pre_tokenizer.pattern" is neither {"Regex": …} nor {"String": …}`);
        expect(e.detail).toEqual({ file: tokenizerPath });
      }
      // One inside a Sequence is found too (here a pattern that spells Regex in lower case).
      const nested = toyWithPreTokenizer({ type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'Split', pattern: { regex: '\\s+' }, behavior: 'Removed' }] });
      expect((await rejection(ClipEngine.check(nested.dir))).message).toContain('"pre_tokenizer.pretokenizers[1].pattern" is neither');
    } finally {
      warn.mockRestore();
    }
  });

  it('a pipeline that reads none of the vocabulary\'s own words (every prompt would fail as empty)', async () => {
    // What the library reads, but keeps only the a-runs at the end of the text: "and", "big", … read as nothing.
    const { dir, tokenizerPath } = toyWithPreTokenizer(split('(a|aa)+$'));
    const e = await rejection(ClipEngine.check(dir));
    expect(e.code).toBe('invalid_model');
    expect(e.message).toMatch(new RegExp(`^bundle toy: tokenizer ${tokenizerPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: it reads 0 of 8 words of its own vocabulary \\("and" → no tokens`));
  });

  it.each([
    ['(?:a|aa)+$', 'Fibonacci-exponential'],
    ['(?:a+)+$', 'exponential'],
  ])('a regex of its own that backtracks (%s, %s) is refused in bounded time, before any prompt could hold the worker', async (bad) => {
    const { dir } = toyWithPreTokenizer(split(`${bad}|${WORDS}`));
    // It reads its own words (the probe of its vocabulary passes): only the timing catches it.
    expect(TextTokenizer.fromFile(join(dir, 'tokenizer.json')).tokenize('a big red circle').length).toBe(4);
    const start = performance.now();
    const e = await rejection(ClipEngine.check(dir));
    expect(e.code).toBe('invalid_model');
    expect(e.message).toMatch(/: tokenizing "a" × \d+ (then "!" )?\(\d+ characters\) took \d+ ms, over the 100 ms allowed: a regex of its normalizer or pre-tokenizer .* backtracks/);
    // Caught at a length of a few dozen characters; the API's longest prompt (300 of them) would take longer than the universe has.
    expect(Number(/\((\d+) characters\)/.exec(e.message)![1])).toBeLessThan(64);
    expect(performance.now() - start).toBeLessThan(15_000);
  });
});

describe('what reads its words and stays fast passes', () => {
  it('the embedded models, and a tokenizer with a harmless regex of its own', async () => {
    for (const dir of ['toy', 'toy-plain'].map((m) => new URL(`../../models/${m}`, import.meta.url).pathname)) {
      await expect(ClipEngine.check(dir)).resolves.toBeDefined();
    }
    const { dir } = toyWithPreTokenizer(split(WORDS));
    await expect(ClipEngine.check(dir)).resolves.toBeDefined();
    const engine = await ClipEngine.open(dir);
    try {
      expect(engine.tokenizer.tokenize('a big red circle')).toEqual(TextTokenizer.fromFile(join(TOY, 'tokenizer.json')).tokenize('a big red circle'));
    } finally {
      await engine.close();
    }
  });

  it("CLIP's byte-level BPE (which reads none of the tokenizer.json's regexes: this file splits)", () => {
    const tokenizer = TextTokenizer.fromJson(buildClipTokenizerJson(referencePath('bpe_simple_vocab_16e6.txt.gz')));
    expect(tokenizer.selfCheck({ maxChars: PROMPT_MAX_CHARS })).toBeUndefined();
  });
});
