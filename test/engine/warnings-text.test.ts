// Prompt warnings are text a person reads (job warnings, the CLI): what they quote must show. Invisible
// characters (ZWJ, soft hyphen, a lone combining mark, U+202E) are written as \u escapes, a long prompt
// is cut at a code point (never inside an emoji's surrogate pair), and bidi overrides cannot reorder the line.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { promptStart, shownQuoted } from '../../shared/shown-text.ts';

let engine: ClipEngine;
beforeAll(async () => {
  engine = await ClipEngine.open(join(REPO_ROOT, 'models', 'toy'), { threads: 1 });
});
afterAll(() => engine?.close());

const INVISIBLE_OR_BIDI = /[\p{Cf}\p{Zl}\p{Zp}\u0080-\u009f]/u;
const first = (prompt: string) => engine.promptWarnings([prompt]).map((w) => w.replace(/; it knows only.*/, ''));

describe('warnings name invisible characters visibly', () => {
  it('an unknown invisible token is quoted as its \\u escape, not as ""', () => {
    expect(first('red\u00adcircle')).toEqual(['"red\\u00adcircle": model toy does not read "\\u00ad" (an unknown token to it); leave it out']);
    expect(first('a \u0301\u0301 red')).toEqual(['"a \\u0301\\u0301 red": model toy does not read "\\u0301\\u0301" (an unknown token to it); leave it out']);
    expect(first('\u202ered circle')).toEqual(['"\\u202ered circle": model toy does not read "\\u202e" (an unknown token to it); leave it out']);
    expect(first('red\u200dcircle')).toEqual(['"red\\u200dcircle": model toy does not know the word "red\\u200dcircle", so it cannot draw it']);
  });

  it('no warning carries an invisible or bidi control character', () => {
    for (const p of ['red\u200dcircle', 'a red circle \u2066x\u2069', '\u202eelcric der', 'a\u00a0red circle zz', 'a red\u2028circle zz', 'a red \u0085circle zz']) {
      const ws = engine.promptWarnings([p]);
      expect(ws.length, p).toBeGreaterThan(0);
      for (const w of ws) expect(w, JSON.stringify(w)).not.toMatch(INVISIBLE_OR_BIDI);
    }
  });

  it('the "<pad>" typed into a prompt is warned about', () => {
    expect(first('a red circle <PAD>')).toEqual(['"a red circle <PAD>": contains "<pad>", which model toy reads as its padding token, not as words']);
  });

  it('an output-policy concept that is only padding is not embedded (null)', async () => {
    expect(await engine.conceptEmbeddings(['<pad>', '<|startoftext|>'])).toEqual([null, null]);
  });
});

describe('a long prompt is cut at a code point', () => {
  it('an emoji at the cut is kept whole or left out, never halved', () => {
    const prompt = `a${'🐱'.repeat(100)}`;
    const ws = engine.promptWarnings([prompt]);
    expect(ws.length).toBeGreaterThan(0);
    for (const w of ws) {
      expect(w).not.toMatch(/\p{Cs}/u); // no lone surrogate
      expect(w).not.toMatch(/\\ud[89a-f]/i);
      expect(w.startsWith(`"a${'🐱'.repeat(79)}…": `)).toBe(true);
    }
  });

  it('a long unknown word (or run of signs) is quoted by its first 40 code points; at most ten are listed', () => {
    const word = 'z'.repeat(1000);
    expect(first(`a red ${word} circle`)).toEqual([`"a red ${'z'.repeat(74)}…": model toy does not know the word "${'z'.repeat(40)}…", so it cannot draw it`]);
    const signs = '#'.repeat(300);
    expect(first(`a red circle ${signs}`)).toEqual([`"a red circle ${'#'.repeat(67)}…": model toy does not read "${'#'.repeat(40)}…" (an unknown token to it); leave it out`]);
    const many = Array.from({ length: 12 }, (_, i) => `#${'!'.repeat(i + 1)}`).join(' ');
    const [w] = first(`a red circle ${many}`);
    expect(w).toMatch(/does not read ("#!+", ){10}… \(an unknown token to it\)/);
  });

  it('promptStart counts code points', () => {
    expect(promptStart('🐱'.repeat(80))).toBe('🐱'.repeat(80));
    expect(promptStart('🐱'.repeat(81))).toBe(`${'🐱'.repeat(80)}…`);
    expect(promptStart('x'.repeat(81))).toBe(`${'x'.repeat(80)}…`);
  });
});

describe('shownQuoted', () => {
  it('keeps what shows: marks on a letter, emoji sequences, ordinary escapes', () => {
    expect(shownQuoted('cafe\u0301')).toBe('"cafe\u0301"');
    expect(shownQuoted('👨\u200d👩\u200d👧 👍🏽\u200d')).toBe('"👨\u200d👩\u200d👧 👍🏽\\u200d"');
    expect(shownQuoted('a "b"\tc\u0000')).toBe(JSON.stringify('a "b"\tc\u0000'));
  });

  it('escapes what does not: format characters, odd spaces, separators, lone marks, C1 controls, unassigned', () => {
    expect(shownQuoted('a\u00a0b\u2028c')).toBe('"a\\u00a0b\\u2028c"');
    expect(shownQuoted('\u0301x \u0308')).toBe('"\\u0301x \\u0308"');
    expect(shownQuoted('\u0085\u{e0001}\u{10ffff}')).toBe('"\\u0085\\u{e0001}\\u{10ffff}"');
    expect(shownQuoted('\u200e\u200f\u061c')).toBe('"\\u200e\\u200f\\u061c"');
  });
});
