// Evasions of a refused name (ADR 0015, "2026-12-06, evasions"): punctuation between its words, a
// letter glued to its edge, leetspeak; each refused, with the shipped policy and with an operator's. And
// the ordinary prompts that look like them, which must still pass: every reading that catches a disguise
// is added to the prompt as written, never in place of it, and those added for punctuation and glued
// letters are matched against refusing rules only.
import { describe, expect, it } from 'vitest';
import { compilePolicy, DEFAULT_PROMPT_POLICY, PromptPolicyDocument, type PromptPolicy } from '../../shared/prompt-policy.ts';

const shipped = compilePolicy(PromptPolicyDocument.parse(DEFAULT_PROMPT_POLICY));

/** An operator's policy: names refused, an ordinary word flagged, and terms that only a wrong reading of digits would find. */
const operator = compilePolicy(
  PromptPolicyDocument.parse({
    version: 1,
    rules: [
      { id: 'names', category: 'copyright', action: 'refuse', message: 'a character', terms: ['batman', 'mickey mouse', 'superman', 'c3po'] },
      // Found only if a lone digit were read as a letter ("3 circles" as "e circles") or a letter inside a
      // word were set apart ("Zürich market" as "z ü rich market").
      { id: 'misreadings', category: 'copyright', action: 'refuse', message: 'a misreading', terms: ['e circles', 'e red circles', 'a grid', 'grid of s stars', 'rz unit', 'rich market'] },
      { id: 'rich', category: 'bias', action: 'flag', message: 'a group', terms: ['rich people', 'mouse mickey'] },
    ],
  }),
);

/** The same names in a rule that also finds them inside longer words (`inside_words`). */
const insideWords = compilePolicy(
  PromptPolicyDocument.parse({
    version: 1,
    rules: [{ id: 'names', category: 'copyright', action: 'refuse', message: 'a character', terms: ['batman', 'mickey mouse'], inside_words: true }],
  }),
);

const screen = (policy: PromptPolicy, text: string) => policy.screen([{ text, param: 'prompt' }]).map((h) => `${h.action} ${h.term}`);

/** Prompts refused, with the term each is read as (the same in the shipped policy and the operator's). */
const REFUSED: Array<{ kind: string; text: string; term: string }> = [
  // Punctuation between a name's words.
  ...[
    'mickey. mouse',
    'Mickey. mouse',
    'mickey! mouse',
    'mickey? mouse',
    'mickey . mouse',
    'mickey .mouse',
    'mickey... mouse',
    'mickey. mouse.',
    'mickey. mice',
    'm1ckey. m0use',
    'mickey,mouse',
    'mickey;mouse',
    'a cute mickey,mouse plush',
    'm1ckey,m0use',
    'mickey-mouse',
    'mickey_mouse',
    'mickey\u2026mouse',
    'mickey \u2026 mouse',
  ].map((text) => ({ kind: 'punctuation', text, term: 'mickey mouse' })),
  // Diacritics and combining marks: on the name's letters, or a letter glued to its edge (which the
  // model reads as a piece of its own: "ö", "batman").
  ...[
    '\u00f6batman',
    'o\u0308batman',
    '\u00d6batman poster',
    'b\u00e1tman',
    'ba\u0301tman',
    'b\u0308atman',
    'batm\u00e4n',
    'batman\u00f8',
    '\u00e9batman',
    '\u00f8batman',
    '\u00f6-batman',
    '\u00f6b4tman',
    '\u0430batman', // Cyrillic а glued
  ].map((text) => ({ kind: 'diacritics', text, term: 'batman' })),
  { kind: 'diacritics', text: '\u00f6mickey mouse', term: 'mickey mouse' },
  // Digits and symbols for letters.
  ...['b4tm4n', 'b@tman', '8atman'].map((text) => ({ kind: 'leet', text, term: 'batman' })),
  ...['$uperman', 'sup3rm4n'].map((text) => ({ kind: 'leet', text, term: 'superman' })),
  { kind: 'leet', text: 'm1ckey m0use', term: 'mickey mouse' },
];

/** Ordinary prompts, some of them shaped like the disguises above: no rule hits them, shipped or the operator's. */
const PASS = [
  '3 red circles',
  '3 circles',
  'a 4x4 grid of 5 stars',
  '4 grid',
  'top-left corner',
  "rock'n'roll poster",
  'caf\u00e9 on the left',
  '\u00fcber cool robot',
  '\u00dcber cool robot',
  'R2 unit',
  '1980s batmobile-style car',
  'batsman playing cricket',
  'mouse and mickey',
  'cr\u00e8me br\u00fbl\u00e9e on a plate',
  '\u00c9mile and Zo\u00eb at the beach',
  'Z\u00fcrich people at a market',
  'a Z\u00fcrich market at dawn',
  'A big spider. Man screaming in fear',
  'Hello! Kitty cat on a mat',
  'hello. kitty cats sleeping on a sofa',
  'a sponge. bob the builder',
  'spider: man of the year',
  'garden scene: bugs,bunny;frog',
  'garden scene: bugs, bunny, frog',
  'a cat,dog,mouse,mickey parade',
  'mickey, mouse',
  'Mickey. Mouse',
  'a photo of mickey. mouse ears',
];

describe('evasions of a refused name', () => {
  it.each(REFUSED)('$kind: "$text" is refused as "$term" (shipped policy and an operator\'s)', ({ text, term }) => {
    expect(screen(shipped, text)).toEqual([`refuse ${term}`]);
    expect(screen(operator, text)).toEqual([`refuse ${term}`]);
  });

  it.each(PASS)('"%s" passes (no rule hits it, shipped or an operator\'s)', (text) => {
    expect(screen(shipped, text)).toEqual([]);
    expect(screen(operator, text)).toEqual([]);
  });

  it('reads digits as letters only as an added reading of a word that mixes them: the prompt as written is still matched', () => {
    // "c3po" is a term as written; its leetspeak reading ("cepo") replaces nothing.
    expect(screen(operator, 'a c3po toy')).toEqual(['refuse c3po']);
    expect(screen(operator, 'a C3PO toy')).toEqual(['refuse c3po']);
  });

  it('reads the added joinings and glued letters against refusing rules only: a flag term is found as written, never through them', () => {
    // "rich" after a glued "ü" and "mouse mickey" across a sentence break are the operator's flag terms.
    expect(screen(operator, 'z\u00fcrich people')).toEqual([]);
    expect(screen(operator, '\u00fcrich people')).toEqual([]);
    expect(screen(operator, 'mouse. mickey')).toEqual([]);
    expect(screen(operator, 'mouse,mickey')).toEqual([]);
    expect(screen(operator, 'rich people')).toEqual(['flag rich people']);
    expect(screen(operator, 'mouse mickey')).toEqual(['flag mouse mickey']);
  });

  it('leaves a name inside a compound word to the rule: found with inside_words, not without, glued letter or not', () => {
    for (const text of ['batmanfan', '\u00f6batmanfan', '#batmanfan art']) {
      expect(screen(shipped, text), text).toEqual([]);
      expect(screen(insideWords, text), text).toEqual(['refuse batman']);
    }
    expect(screen(insideWords, '1980s batmobile-style car')).toEqual([]);
  });
});
