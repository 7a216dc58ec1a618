// shared/text-clean.ts against real ftfy 6.3.1 and OpenAI CLIP's cleaning, on the cases in
// test/fixtures/text-clean/ftfy-cases.json (made once by make.py next to it, which needs ftfy; the test
// does not). Every case must match, both `fixText` ↔ ftfy.fix_text and `cleanClipText` ↔ CLIP's
// whitespace_clean(basic_clean(text)).lower(). A case that is known to differ is listed in KNOWN_DIFFERENCES
// with its reason; the test fails on any other mismatch, and on a listed one that no longer differs.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanClipText, fixText, looksLikeMojibake } from '../../shared/text-clean.ts';
import { REPO_ROOT } from '../helpers/reference.ts';

interface Case {
  set: 'realistic' | 'mojibake' | 'random';
  text: string;
  fixed: string;
  cleaned: string;
}
const fixture: { ftfy: string; cases: Case[] } = JSON.parse(
  readFileSync(join(REPO_ROOT, 'test', 'fixtures', 'text-clean', 'ftfy-cases.json'), 'utf8'),
);

/** Texts (as in the fixture) whose result is known to differ from ftfy's, with why. None at present. */
const KNOWN_DIFFERENCES: Record<string, string> = {};

function mismatches(set: Case['set']): string[] {
  const out: string[] = [];
  for (const c of fixture.cases.filter((x) => x.set === set)) {
    const fixed = fixText(c.text);
    const cleaned = cleanClipText(c.text);
    if (fixed !== c.fixed || cleaned !== c.cleaned) {
      out.push(`${JSON.stringify(c.text)}: ftfy ${JSON.stringify(c.fixed)} → ${JSON.stringify(c.cleaned)}; here ${JSON.stringify(fixed)} → ${JSON.stringify(cleaned)}`);
    }
  }
  return out;
}
const known = (set: Case['set']) =>
  fixture.cases.filter((c) => c.set === set && c.text in KNOWN_DIFFERENCES).map((c) => JSON.stringify(c.text));

describe(`text cleaning = ftfy ${fixture.ftfy} + OpenAI CLIP (test/fixtures/text-clean/ftfy-cases.json)`, () => {
  it('the fixture has its three sets, with the review cases in them', () => {
    const count = (set: Case['set']) => fixture.cases.filter((c) => c.set === set).length;
    expect(count('realistic')).toBeGreaterThan(100);
    expect(count('mojibake')).toBeGreaterThan(50);
    expect(count('random')).toBeGreaterThan(100);
    const texts = new Set(fixture.cases.map((c) => c.text));
    for (const t of ['a neon sign reading \u201cCAF\u00c9\u201d', 'CAF\u00c9\u2122 logo', '\u00abOL\u00c9\u00bb', '\u00c9T\u00c9\u2014summer', '\u201eGru\u00df\u201c', 'CAF\u00c9\u00a0!', 'caf\u00c3\u00a9', '\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d']) {
      expect(texts.has(t), t).toBe(true);
    }
  });

  for (const set of ['realistic', 'mojibake', 'random'] as const) {
    it(`${set}: every case reads as ftfy and CLIP read it`, () => {
      const bad = mismatches(set);
      const unexpected = bad.filter((m) => !known(set).some((k) => m.startsWith(k + ':')));
      expect(unexpected, `${unexpected.length} mismatches:\n${unexpected.join('\n')}`).toEqual([]);
      // A listed difference that went away must leave the list.
      const gone = known(set).filter((k) => !bad.some((m) => m.startsWith(k + ':')));
      expect(gone, 'listed in KNOWN_DIFFERENCES but now the same as ftfy').toEqual([]);
    });
  }
});

describe('mojibake repair only where ftfy repairs', () => {
  it('accented capitals before quotes and symbols are words, not mojibake', () => {
    expect(cleanClipText('a neon sign reading \u201cCAF\u00c9\u201d')).toBe('a neon sign reading "caf\u00e9"');
    expect(cleanClipText('CAF\u00c9\u2122 logo')).toBe('caf\u00e9\u2122 logo');
    expect(cleanClipText('\u00abOL\u00c9\u00bb')).toBe('\u00abol\u00e9\u00bb');
    expect(cleanClipText('\u00c9T\u00c9\u2014summer')).toBe('\u00e9t\u00e9\u2014summer');
    expect(cleanClipText('\u201eGru\u00df\u201c')).toBe('"gru\u00df"');
    expect(cleanClipText('CAF\u00c9\u00a0!')).toBe('caf\u00e9 !');
    expect(looksLikeMojibake('CAF\u00c9\u2122')).toBe(false);
  });

  it('common mojibake is still undone, including double mojibake and a lost 0xA0', () => {
    expect(looksLikeMojibake('caf\u00c3\u00a9')).toBe(true);
    expect(cleanClipText('caf\u00c3\u00a9')).toBe('caf\u00e9');
    expect(cleanClipText('\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d')).toBe('"quoted"');
    expect(cleanClipText('caf\u00c3\u0192\u00c2\u00a9')).toBe('caf\u00e9');
    expect(cleanClipText('voil\u00c3 le travail')).toBe('voil\u00e0 le travail');
    // good text and mojibake on one line: the mojibake run alone is fixed
    expect(fixText('caf\u00e9 and caf\u00c3\u00a9 \u2014 \u00e2\u20ac\u0153ok\u00e2\u20ac\x9d')).toBe('caf\u00e9 and caf\u00e9 \u2014 "ok"');
  });

  it('works line by line', () => {
    expect(fixText('caf\u00c3\u00a9\nCAF\u00c9\u2122')).toBe('caf\u00e9\nCAF\u00c9\u2122');
  });
});
