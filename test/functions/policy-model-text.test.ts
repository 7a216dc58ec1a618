// The prompt policy (ADR 0015) screens the text the model reads: the model's cleaning applied once,
// as its tokenizer applies it, then folded. Cleaning twice is not a no-op (an entity the model reads as
// written is decoded by a second pass, and what the first pass made is "repaired" as mojibake), and a
// review found names the model reads whole that the screen, cleaning twice, read as other words.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLIP_END_TOKEN_TEXT, CLIP_START_TOKEN_TEXT, cleanClipText, PY_WHITESPACE_CLASS } from '../../shared/text-clean.ts';
import { compilePolicy, defaultPromptPolicy, foldCleaned, promptReading, PromptPolicyDocument, PHRASE_BREAK } from '../../shared/prompt-policy.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

const policy = defaultPromptPolicy();
const refused = (text: string) => policy.screen([{ text, param: 'prompt' }]).filter((h) => h.action === 'refuse').map((h) => h.term);

/** openai/CLIP's split of a cleaned text into pieces before BPE (gpu-worker/engine/clip/tokenizer.ts). */
const CLIP_SPLIT = new RegExp(`<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${PY_WHITESPACE_CLASS}\\p{L}\\p{N}]+`, 'giu');

/** A small seeded generator (mulberry32; the same every run): a failure names its prompt, which reproduces it. */
function random(seed: number) {
  return (n: number) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
}

/**
 * What the review's attacks are made of: entities with and without ";" (which ftfy leaves alone and the
 * model's two html.unescape passes decode), mojibake-looking runs and box drawing (which a second ftfy
 * pass "repairs"), "<" (which turns ftfy's own unescaping off for the line), the special tokens' texts.
 */
const JUNK = [
  '&#x2568', '&#x2568;', '&ouml', '&ouml;', '&amp', '&amp;', '&ampamp', '&amp;amp;', '&amp;amp;amp;', '&micro', '&micro;', '&#100;', '&#100', '&lt;', '&lt', '&gt;',
  '&eth', '&cent', '&para', '&not', '&copy', '&reg', '&#97;', '&#x61;', '&#0;', '&#xD800;',
  '╨', '╨ö', 'Ã©', 'Ã', 'Â', 'â€œ', 'â€', 'Ð¿', 'Ñ€', 'Ã¶', '¶', '═', '║', '╔', '█',
  '<', '<3 ', '<b>', '</b>', '>', CLIP_START_TOKEN_TEXT, CLIP_END_TOKEN_TEXT, '<|', '|>',
  ' ', ' ', ' ', '.', ',', ';', ':', '!', '?', '-', '2', 'é', 'ö', 'ß',
];
const WORDS = ['pikachu', 'batman', 'mickey', 'mouse', 'microsoft', 'logo', 'a', 'cat', 'amp', 'micro', 'soft', 'hello', 'kitty', 'para', 'mount'];

function adversarialPrompt(next: (n: number) => number): string {
  let text = '';
  const parts = 1 + next(12);
  for (let i = 0; i < parts; i++) text += next(3) === 0 ? WORDS[next(WORDS.length)] : JUNK[next(JUNK.length)];
  return text;
}

describe('the screen reads the text the model reads, cleaned once', () => {
  it("refuses the review's four prompts that the model reads as a refused name (HTML entities, mojibake), one cleaning away from it", () => {
    // The model reads "pikachu╨ö" (the token pikachu, then junk) and "&microsoft logo"; cleaned
    // twice, they read "pikachuд" and "µsoft logo", which matched nothing.
    for (const [text, term] of [
      ['pikachu&#x2568&ouml', 'pikachu'],
      ['<3 pikachu&#x2568;&ouml;', 'pikachu'],
      ['&ampampmicrosoft logo', 'microsoft logo'],
      ['<3 &amp;amp;microsoft logo', 'microsoft logo'],
    ]) {
      expect(refused(text), text).toEqual([term]);
    }
    expect(cleanClipText('&ampampmicrosoft logo')).toBe('&microsoft logo');
    expect(promptReading('&ampampmicrosoft logo')).toEqual([['microsoft', 'logo']]);
    expect(promptReading('pikachu&#x2568&ouml').flat()).toContain('pikachu');
    // What the model reads as another word is not the name: three entities decode to "µsoft".
    expect(cleanClipText('&lt;3 &amp;amp;amp;microsoft logo')).toBe('<3 µsoft logo');
    expect(refused('&lt;3 &amp;amp;amp;microsoft logo')).toEqual([]);
  });

  it('matches, for random prompts of entities, mojibake runs, box drawing and "<", exactly the folded phrases of the text the model reads', () => {
    const next = random(20261206);
    for (let i = 0; i < 3000; i++) {
      const text = adversarialPrompt(next);
      // Phrases end at a comma or a semicolon, and at sentence punctuation next to a space (ADR 0015);
      // each is folded once, never cleaned again.
      const expected = cleanClipText(text).split(PHRASE_BREAK).map((phrase) => foldCleaned(phrase).split(' ').filter(Boolean));
      expect(promptReading(text), JSON.stringify(text)).toEqual(expected);
    }
  });

  it('refuses a random prompt wherever the model reads a refused name as a word of its own', () => {
    // One rule a name, so that another name in the junk ("hello kitty") does not answer for it.
    const names = compilePolicy(
      PromptPolicyDocument.parse({
        version: 1,
        rules: ['pikachu', 'batman'].map((name) => ({ id: name, category: 'copyright', action: 'refuse', message: 'm', terms: [name] })),
      }),
    );
    const next = random(4242);
    let named = 0;
    for (let i = 0; i < 3000; i++) {
      const name = ['pikachu', 'batman'][next(2)]!;
      // Junk on either side of the name; the name is kept whole as written.
      const text = `${adversarialPrompt(next)}${next(2) ? ' ' : ''}${name}${next(2) ? ' ' : ''}${adversarialPrompt(next)}`;
      const pieces: string[] = cleanClipText(text).match(CLIP_SPLIT) ?? [];
      if (!pieces.includes(name)) continue; // glued to letters ("öbatman"), the model reads another word
      named++;
      expect(names.screen([{ text, param: 'prompt' }]).map((h) => h.rule), JSON.stringify(text)).toContain(name);
    }
    expect(named).toBeGreaterThan(1000);
  });

  it("reads CLIP's start and end tokens typed between words as the tokens they are, not as a word", () => {
    for (const [text, term] of [
      ['mickey <|startoftext|> mouse', 'mickey mouse'],
      ['pika<|startoftext|>chu plush', 'pikachu'],
      ['pika <|STARTOFTEXT|> chu', 'pikachu'],
      ['mickey<|endoftext|>mouse', 'mickey mouse'],
    ]) {
      expect(refused(text), text).toEqual([term]);
    }
    // Where the tokenizer reads the text as punctuation and a word (after punctuation), so does the screen.
    expect(promptReading('pika!<|startoftext|>chu')).toEqual([['pika', 'startoftext', 'chu']]);
    expect(refused('pika!<|startoftext|>chu')).toEqual([]);
  });
});

describe('through the API', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await harness();
  });
  afterEach(() => h.close());

  it("refuses the review's four prompts with 400 content_policy, as it refuses the names written plainly", async () => {
    for (const prompt of ['pikachu&#x2568&ouml', '<3 pikachu&#x2568;&ouml;', '&ampampmicrosoft logo', '<3 &amp;amp;microsoft logo', 'pika<|startoftext|>chu', 'mickey.mouse', 'cocacola logo']) {
      const error = await expectEnvelope(await h.request('/v1/generations', { json: { prompt, steps: 1 } }), 400, 'content_policy');
      expect(error.param, prompt).toBe('prompt');
    }
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
  });
});
