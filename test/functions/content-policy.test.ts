// The prompt policy (ADR 0015): matching, the API's refusals and flags, and a deployment's own policy.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { ownerPolicyKey, PENDING_JOBS_PREFIX } from '../../shared/keys.ts';
import { compilePolicy, DEFAULT_PROMPT_POLICY, MAX_POLICY_BYTES, normalizeText, POLICY_RETRY_MS, policyFromStore, PROMPT_POLICY_KEY, PromptPolicyDocument } from '../../shared/prompt-policy.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';
import { rng } from '../helpers/rng.ts';

const policy = compilePolicy(PromptPolicyDocument.parse(DEFAULT_PROMPT_POLICY));
const rulesHit = (text: string) => policy.screen([{ text, param: 'prompt' }]).map((h) => `${h.action} ${h.rule}`);

describe('matching', () => {
  it('reads the prompt as the model does: HTML entities, invisible and format characters do not hide a term', () => {
    for (const text of ['pik&#97;chu on a hill', 'S&#104;rek', 'Darth V&amp;#97;der', 'p\uFEFFi\uFEFFk\uFEFFachu', 's\u200bp\u200bo\u200bn\u200bg\u200be\u200bb\u200bo\u200bb', 'spon\u00ADgebob', 'sponge\u2060bob']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
  });

  it('does not run a phrase across list or sentence punctuation, nor match a one-word term across words', () => {
    for (const text of [
      'an athlete finishing the Ironman triathlon',
      'my dog Charlie, brown and white',
      'a tribute to Toro the bull',
      'garden scene: bugs, bunny, frog',
      'a sea captain, America 1850',
      'sign that says Hello, kitty!',
      'a super man lifting a car',
    ]) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('sees a term through case, accents, punctuation, spacing and compatibility forms', () => {
    for (const text of ['Spider-Man on a roof', 'spiderman', 'SPIDER MAN!', 'a Spider‐Man poster']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    for (const text of ['PIKACHU', 'Pi\u0301kachu', 'ｐｉｋａｃｈｕ', "pikachu's tail"]) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    expect(rulesHit("McDonald's logo on a cup")).toEqual(['refuse brand-logos']);
    expect(rulesHit('McDonalds logo')).toEqual(['refuse brand-logos']);
    expect(normalizeText('  Ça   va—Mickey! ')).toBe('ca va mickey');
  });

  it('sees a term written with letters of other scripts that look like Latin ones (Cyrillic, Greek, Cherokee, Turkish ı)', () => {
    for (const text of [
      '\u0420\u0456kachu on a hill', // Cyrillic Р, і
      '\u041c\u0456\u0441k\u0435\u0443 \u041c\u043eus\u0435', // Cyrillic М, і, с, е, у, о (Cyrillic к is no k: it stays ĸ)
      '\u13A0arth V\u0430der', // Cherokee Ꭰ
      'sp\u0456d\u0435r-m\u0430n',
      'a \u13E2ikachu plush',
      '\u0455h\u0433\u0435k', // ѕ, г, е
      'p\u03b9kachu', // Greek ι
      'P\u0399KACHU', // Greek Ι
      '&#1056;ikachu', // Cyrillic Р as an entity
      'p\u0131kachu', // Turkish dotless ı
    ]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    // Text that is really in another script is read as it is: letters that only resemble Latin ones
    // in some fonts (в, д, и, п) stay themselves, so "агав" (of agaves) is not "arab".
    for (const text of [
      '\u043a\u043e\u0448\u043a\u0430 \u043d\u0430 \u043a\u0440\u044b\u0448\u0435',
      '\u043f\u043e\u043b\u0435 \u0430\u0433\u0430\u0432 \u043d\u0430 \u0437\u0430\u043a\u0430\u0442\u0435',
      '\u03b3\u03ac\u03c4\u03b1 \u03c3\u03c4\u03b7 \u03b8\u03ac\u03bb\u03b1\u03c3\u03c3\u03b1',
      '\u6771\u4eac\u30bf\u30ef\u30fc',
      'Stra\u00dfe in Berlin',
      'a mammoth in the Illinois mill', // Latin letters are never folded into each other (m is not rn, I is not l)
    ]) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it("an operator's term in another script is also found spelled with Latin look-alikes", () => {
    const cyrillic = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'cheburashka', category: 'copyright', action: 'refuse', message: 'm', terms: ['\u0447\u0435\u0431\u0443\u0440\u0430\u0448\u043a\u0430'] }] }));
    for (const text of ['\u0447\u0435\u0431\u0443\u0440\u0430\u0448\u043a\u0430', '\u0447e\u0431\u0443pa\u0448\u043aa', '\u0427\u0415\u0411\u0423\u0420\u0410\u0428\u041a\u0410']) {
      expect(cyrillic.screen([{ text, param: 'prompt' }]).map((h) => h.rule), text).toEqual(['cheburashka']);
    }
  });

  it('matches whole words only: no false alarms inside other words', () => {
    for (const text of ['a spider mango', 'iron mango', 'a race car', 'a goofy dog', 'the hulk of a ship', 'a snoopy neighbour', "luigi's pizzeria", 'a large red circle on the left', 'doctoral thesis on birds']) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('reads digits and symbols that stand for letters inside a word (leetspeak), and keeps numbers as they are', () => {
    for (const text of ['p1kachu on a hill', 'b4tman', 'pik@chu', '8atman poster', 'p!kachu', '$uperman', 'sp1derman', 'h3llo k1tty', 'he11o kitty', 't0t0r0', 'P1K4CHU', '70t0r0 plush', 'p 1 k a c h u', 'b-4-t-m-a-n']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // Only an added reading: a number without letters, or a digit that reads as no letter, stays as written.
    for (const text of ['r2d2 and c3po toys on a shelf', '2 cats sleeping on a sofa', 'a poster from 1989', 'a 4k render', 'a 3d render of a glass cube', 'an f1 car', 'a 4x4 truck', 'a $5 bill', 'a v8 engine', 'wow! a cat', 'a Volvo C30 in the snow', 'C30 concrete', 'an A380 landing', 'a pop3 mail server diagram', 'a 4 x 4 truck', 'the answer is a 4 b 2 c 1']) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('reads letters spelled out one by one, three or more, as a word', () => {
    for (const text of ['p i k a c h u', 'B A T M A N on a roof', 's p o n g e b o b', 'h e l l o k i t t y', 'a p i k a c h u plush']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    for (const text of ['the letters a b c on wooden blocks', 'x y z axes on a graph', 'a i generated art of a fox', 'I a m not sure what this is', 'grades a b c d f on a report card', 'a monogram C E O on a cufflink', 'the letters G A Y on a sign']) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('reads 1 as l where doubled and as i alone in one prompt, and the digits of other scripts as leetspeak digits', () => {
    for (const text of ['he11o k1tty backpack', 'p\u0661kachu plush', 'b\u096atman logo', 'p\u{1d7ed}kachu']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']); // ١ (Arabic-Indic 1), ४ (Devanagari 4), 𝟭 (math 1)
    }
    // Still only a reading of a digit before a letter: a number in another script stays a number.
    for (const text of ['\u0661\u0669\u0668\u0669 poster', 'a \u096a\u0966 km road', 'room 11 of the hotel']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual([]);
    }
  });

  it('reads enclosed letters that fold to no letter (negative circled and squared, regional indicators) as the letters they show', () => {
    const regional = (codes: string) => [...codes].map((c) => String.fromCodePoint(0x1f1e6 + c.charCodeAt(0) - 65)).join('');
    // A flag glued to letters stays glued to them, and a row with a pair no flag shows (AN) is letters.
    for (const text of [`${regional('BA')}tman logo`, `bat${regional('MA')}n logo`, `to${regional('TO')}ro plush`, `${regional('BATMAN')} flags`]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    for (const text of ['\u{1f17f}\u{1f178}\u{1f17a}\u{1f170}\u{1f172}\u{1f177}\u{1f184} plush', '\u{1f15f}\u{1f158}\u{1f15a}\u{1f150}\u{1f152}\u{1f157}\u{1f164} plush', '\u{1f1f5}\u{1f1ee}\u{1f1f0}\u{1f1e6}\u{1f1e8}\u{1f1ed}\u{1f1fa} plush']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']); // 🅿🅸🅺🅰🅲🅷🆄, 🅟🅘🅚🅐🅒🅗🅤, 🇵🇮🇰🇦🇨🇭🇺
    }
    // A flag is its country's code, and a row of flags is a row of codes, not one word (🇳🇦🇷🇺🇹🇴 is
    // Namibia, Russia and Tonga, not "naruto"; 🇲🇺🇸🇱🇮🇲 not "muslim"); a parking sign is a P.
    const flags = (codes: string) => [...codes].map((c) => String.fromCodePoint(0x1f1e6 + c.charCodeAt(0) - 65)).join('');
    for (const text of ['a \u{1f1ef}\u{1f1f5} flag on a pole', '\u{1f17f}\u{fe0f} parking sign at night', `flags of ${flags('NARUTO')} on a world map`, `${flags('NARUTO')} travel stickers on a suitcase`, `${flags('TOTORO')} fans`, `${flags('MUSLIM')} flags waving`, `${flags('CRIMINAL')} football fans`, `${flags('THUG')} friendship poster`, `${flags('USGBFR')} flags on a desk`, `${flags('NARUTOUS')} flags`]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual([]);
    }
    // So is a row with invisible characters between its flags (they would otherwise join the letters).
    for (const text of [`${flags('NA')}\u200b${flags('RU')}\u200b${flags('TO')} plush`, `${flags('NA')}\u200d${flags('RU')}\ufe0f${flags('TO')}`, `${flags('MU')}\u200b${flags('SL')}\u200b${flags('IM')} flags`]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual([]);
    }
    expect(rulesHit(`${flags('P')}\u200b${flags('IKACHU')} plush`)).toEqual(['refuse protected-characters']);
    // Nor does an operator's short name read in two flags ("cars": Canada, Serbia; "nike": Nicaragua, Kenya).
    const brands = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'trademark', action: 'refuse', message: 'm', terms: ['cars', 'nike', 'mars', 'seat', 'fiat', 'sega'] }] }));
    for (const codes of ['CARS', 'NIKE', 'MARS', 'SEAT', 'FIAT', 'SEGA']) {
      expect(brands.screen([{ text: `${flags(codes)} friendship match, fans in the stadium`, param: 'prompt' }]), codes).toEqual([]);
    }
  });

  it('reads ASCII letters and symbols written for another letter where the writing shows it: l among capitals, I among lower case, and | + ( between letters', () => {
    for (const text of ['PlKACHU plush toy', 'heIIo kitty backpack', 'he||o kitty backpack', 'ba+man logo', 'pika(hu plush', 'SPlDERMAN swinging']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // Ordinary words keep their reading: an l or I in ordinary case; rn and vv are read as m and w only
    // under the conditions of their own test below ("Horner Simpson family portrait" is no "homer simpson").
    for (const text of ['Illustration of a modern barn in autumn', 'a corn field, vivid colours', 'the HOTEl lobby', 'an iPhone on a desk', 'McIntosh apples in a basket', 'a savvy fox', 'C++ code on a screen', 'a word(s) puzzle', 'Horner Simpson family portrait']) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('reads a name partly spelled out (whole words, then letters one by one, or the reverse) for refusing rules', () => {
    for (const text of ['mickey m o u s e ears', 'bat m a n cape and cowl', 'pika c h u plush toy', 'h e l l o kitty backpack', 'spider m a n swinging between buildings']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // Letters beside words that spell no name stay as written.
    for (const text of ['the letters a b c on a toy block', 'vitamin b c d e supplements', 'grades a b c on a card', 'plan b c d for the trip', 'option a b or c on the form']) {
      expect(rulesHit(text), text).toEqual([]);
    }
  });

  it('reads a letter written twice as once, for a refusing rule\'s long name that doubles no letter', () => {
    for (const text of ['pikaachu plush', 'batmaan logo', 'Supermann flying over a city', 'ttotoro plush']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // Not for a name that doubles a letter itself, nor a short one, nor a flag: ordinary words stay as written.
    const policy = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [
      { id: 'names', category: 'copyright', action: 'refuse', message: 'm', terms: ['anna', 'hello kitty', 'totoro'] },
      { id: 'watch', category: 'bias', action: 'flag', message: 'm', terms: ['batman'] },
    ] }));
    const hit = (text: string) => policy.screen([{ text, param: 'prompt' }]).map((h) => `${h.action} ${h.rule}`);
    expect(hit('Ana and her sister')).toEqual([]); // "anna" doubles its n: never collapsed to
    expect(hit('helo kity backpack')).toEqual([]);
    expect(hit('batmaan logo')).toEqual([]); // a flag rule: as written only
    expect(hit('totoroo plush')).toEqual(['refuse names']);
    // Only a word that keeps six letters collapsed: ordinary short words doubling a letter stay as written.
    for (const text of ["a bowl of Mickey's mousse", 'micky mousse cake', 'Supper Mario', 'Tonny Stark', 'Nikke logo']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    // Never inside a longer word, nor in a script written without spaces (which repeats characters as grammar): there the unless phrases as written decide.
    const inside = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [
      { id: 'brands', category: 'trademark', action: 'refuse', message: 'm', terms: ['宝马'], unless: ['宝宝马桶'] },
      { id: 'chars', category: 'copyright', action: 'refuse', message: 'm', terms: ['superman'], unless: ['supermannschaft'], inside_words: true },
    ] }));
    for (const text of ['宝宝马桶', 'die Supermannschaft gewinnt']) expect(inside.screen([{ text, param: 'prompt' }]), text).toEqual([]);
  });

  it('reads a one-word name of a refusing rule with split_names split in pieces that are no common words, one of them short ("pika chu"); ordinary words side by side stay as written', () => {
    for (const text of ['pika chu plush toy', 'two pika chus in a basket', 'nar uto headband', 'po kemon cards', 'p1ka chu keychain']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // A common word among the pieces: what people write.
    for (const text of ['a super man lifting a car', 'a tribute to Toro the bull', 'a bat man counting bats in a cave', 'a poke bowl, mon to fri', 'naru to the rescue']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    // A term whose own words the span is stays the one reported ("sponge bob", not "spongebob").
    expect(policy.screen([{ text: 'Sponge Bob on a rock', param: 'prompt' }]).map((h) => h.term)).toEqual(['sponge bob']);
    const games = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [
      { id: 'games', category: 'trademark', action: 'refuse', message: 'm', terms: ['deadpool', 'minecraft', 'starbucks', 'pikachu', 'hello kitty'], split_names: true },
      { id: 'watch', category: 'bias', action: 'flag', message: 'm', terms: ['snorlax'] },
    ] }));
    const hit = (text: string) => games.screen([{ text, param: 'prompt' }]).map((h) => h.rule);
    expect(hit('pika chu')).toEqual(['games']);
    // Two longer pieces are likelier two words than syllables; a flag's term, and a term of several
    // words, are matched as written.
    for (const text of ['a dead pool of water', 'a mine craft fair', 'star bucks grazing at dawn', 'snor lax', 'hel lo kitty']) expect(hit(text), text).toEqual([]);
    // On a flagging rule the field would do nothing: the document says so rather than ignore it.
    const flagging = PromptPolicyDocument.safeParse({ version: 1, rules: [{ id: 'watch', category: 'bias', action: 'flag', message: 'm', terms: ['snorlax'], split_names: true }] });
    expect(flagging.success).toBe(false);
    expect(JSON.stringify(flagging.error?.issues)).toContain('applies to refusing rules only');
  });

  it('reads a name split in pieces only for a rule with split_names: a brand made of words is written apart', () => {
    const brands = (split_names?: boolean) =>
      compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'trademark', action: 'refuse', message: 'm', terms: ['tencent', 'tiktok', 'alibaba', 'pikachu', 'starbucks'], split_names }] }));
    const hit = (policy: ReturnType<typeof compilePolicy>, text: string) => policy.screen([{ text, param: 'prompt' }]).map((h) => h.term);
    // Without the field (and with it false), pieces are words as written.
    for (const policy of [brands(undefined), brands(false)]) {
      for (const text of ['a ten cent coin on a wooden table, macro', 'an old clock going tik tok in a quiet room', 'Ali Baba and the forty thieves', 'pika chu plush']) expect(hit(policy, text), text).toEqual([]);
      // The name run together, as its own words, or spelled out is still found.
      expect(hit(policy, 'a Tencent office')).toEqual(['tencent']);
      expect(hit(policy, 'p i k a c h u')).toEqual(['pikachu']);
    }
    // With it, every split the reading allows is the name, words or not: the operator's choice.
    const split = brands(true);
    for (const [text, term] of [['a ten cent coin', 'tencent'], ['Ten-Cent', 'tencent'], ['tik tok', 'tiktok'], ['Ali Baba', 'alibaba'], ['pika chu', 'pikachu']] as const) {
      expect(hit(split, text), text).toEqual([term]);
    }
    // A piece among the common words ("star", "ent") stays what people write.
    for (const text of ['star bucks grazing at dawn', 'tenc ent']) expect(hit(split, text), text).toEqual([]);
    // The shipped character names set it: their syllables are no words.
    expect(DEFAULT_PROMPT_POLICY.rules.find((r) => r.id === 'protected-characters')?.split_names).toBe(true);
    for (const text of ['pika chu plush toy', 'nar uto headband']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ id: 'op', category: 'bias', action: 'refuse', message: 'm', terms: ['x'], split_names: 'yes' }] }).success).toBe(false);
  });

  it('reads 6 as g or b where a digit stands before a letter, and keeps model numbers and quantities as written', () => {
    for (const text of ['6oku powering up', '6atman logo', 'spon6ebob']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    for (const text of ['iPhone 6s on a desk', 'a 6ft sunflower', 'C6H12O6 glucose molecule', 'a 6x6 medium format camera', 'Sony a6000 on a tripod', 'the 6th of June', 'vitamin b6 tablets']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    // The look-alike list reads Cyrillic б as 6; only a 6 the prompt has as written is read, so a
    // Cyrillic name with a б is still found through leetspeak in its other letters.
    const cyrillic = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'cheburashka', category: 'copyright', action: 'refuse', message: 'm', terms: ['\u0447\u0435\u0431\u0443\u0440\u0430\u0448\u043a\u0430'] }] }));
    expect(cyrillic.screen([{ text: '\u04473\u0431\u0443\u0440\u0430\u0448\u043a\u0430', param: 'prompt' }]).map((h) => h.rule)).toEqual(['cheburashka']);
  });

  it('reads ß as ss, and at the start of a word (where German writes none) as the B it looks like', () => {
    for (const text of ['\u00dfatman logo', '\u1e9eATMAN logo']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    for (const text of ['Stra\u00dfenfest in K\u00f6ln', 'Fu\u00dfballfans im Stadion', 'STRASSE in Berlin']) expect(rulesHit(text), text).toEqual([]);
    const beer = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'brands', category: 'trademark', action: 'refuse', message: 'm', terms: ['weissbier logo'] }] }));
    for (const text of ['ein Wei\u00dfbier logo', 'WEISSBIER LOGO']) expect(beer.screen([{ text, param: 'prompt' }]).map((h) => h.rule), text).toEqual(['brands']);
  });

  it('in a word that mixes Cyrillic or Greek letters with Latin ones, reads those that pass for Latin only in some fonts (к, т, н, μ) as Latin too', () => {
    // Р1каchu (Cyrillic Р, к, а), piкachu, bатman (Cyrillic а, т), pikachµ (the micro sign), pikachμ (Greek μ).
    for (const text of ['\u04201\u043a\u0430chu plush', 'pi\u043aachu', 'b\u0430\u0442man logo', 'pikach\u00b5 plush', 'pikach\u03bc']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    // Russian and Greek words keep their letters: no word mixes scripts.
    for (const text of ['\u043a\u0430\u0442\u043c\u0430\u043d', '\u043a\u043e\u0442 \u0432 4k', '\u03bc\u03c0\u03bb\u03b5 \u03c3\u03c0\u03af\u03c4\u03b9', 'a 5\u00b5m scale bar on a micrograph']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual([]);
    }
    // An operator's Cyrillic name is read so too: a Latin k in it ("чебурашkа") is still the name.
    const cyrillic = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'cheburashka', category: 'copyright', action: 'refuse', message: 'm', terms: ['\u0447\u0435\u0431\u0443\u0440\u0430\u0448\u043a\u0430'] }] }));
    for (const text of ['\u0447\u0435\u0431\u0443\u0440\u0430\u0448k\u0430', '\u0447e\u0431\u0443pa\u0448\u043aa']) {
      expect(cyrillic.screen([{ text, param: 'prompt' }]).map((h) => h.rule), text).toEqual(['cheburashka']);
    }
  });

  it("reads an operator's Cyrillic or Greek name loosely only in words that have such a letter: a Latin word is never the name", () => {
    // Read loosely, "тор" (Thor) is "top", "нео" "heo", "вата" "bata", "нато" "hato".
    const names = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'names', category: 'copyright', action: 'refuse', message: 'm', terms: ['\u0442\u043e\u0440', '\u043d\u0435\u043e', '\u0432\u0430\u0442\u0430', '\u043d\u0430\u0442\u043e'] }] }));
    const hit = (text: string) => names.screen([{ text, param: 'prompt' }]).map((h) => h.term);
    for (const text of ['a man in a top hat', 'mountain top at sunrise', 'Heo, a Korean surname, portrait', 'una bata de ba\u00f1o blanca', 'un hato de vacas en los llanos', 'TOP SECRET', 'a top hat beside a \u0441oat']) {
      expect(hit(text), text).toEqual([]);
    }
    // Written in Cyrillic, or mixing Cyrillic and Latin letters in the word (тoр, tоp: Latin o, t, p), it is the name.
    for (const text of ['\u0442\u043e\u0440 \u0441 \u043c\u043e\u043b\u043e\u0442\u043e\u043c', '\u0442o\u0440 with a hammer', 't\u043ep with a hammer', '\u0442o\u0440Hammer', '\u0442 \u043e \u0440']) {
      expect(hit(text), text).toEqual(['\u0442\u043e\u0440']);
    }
    expect(hit('H\u0435o in a long coat')).toEqual(['\u043d\u0435\u043e']);
  });

  it('reads rn as m and vv as w for a refusing rule\'s name of six letters or more, where each of the name\'s words is read so', () => {
    for (const text of ['batrnan logo', 'vvonder vvoman costume', 'rnickey rnouse ears', 'b4trnan poster', 'BATRNAN']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    // A word as written beside them completes no name; ordinary words stay as written.
    for (const text of ['Horner Simpson family portrait', 'a savvy shopper in a modern mall', 'a vvery big dog', 'a corn field at the turn of the season']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    const policy = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [
      { id: 'names', category: 'copyright', action: 'refuse', message: 'm', terms: ['bum', 'tom', 'modem', 'homer', 'wolverine'] },
      { id: 'watch', category: 'bias', action: 'flag', message: 'm', terms: ['wonderwall'] },
    ] }));
    const hit = (text: string) => policy.screen([{ text, param: 'prompt' }]).map((h) => h.rule);
    // Short names are found in ordinary words read so ("burn" is "bum"), and a flag is no reason to read them.
    for (const text of ['a burn scar', 'a torn map', 'a modern house', 'Jack Horner', 'vvonderwall']) expect(hit(text), text).toEqual([]);
    expect(hit('vvolverine claws')).toEqual(['names']);
  });

  it('reads small capitals and lower-case Cherokee as the Latin letters they stand for', () => {
    for (const text of ['\u1d18\u026a\u1d0b\u1d00\u1d04\u029c\u1d1c', '\u0299\u1d00\u1d1b\u1d0d\u1d00\u0274 poster', '\uab70arth vader', '\uabb2ikachu']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']); // ᴘɪᴋᴀᴄʜᴜ, ʙᴀᴛᴍᴀɴ, ꭰ, ꮲ
    }
    // A Cyrillic letter the list folds to a small capital (в to ʙ) is not read further: "агав" is not "arab".
    expect(rulesHit('\u043f\u043e\u043b\u0435 \u0430\u0433\u0430\u0432')).toEqual([]);
  });

  it('finds a name inside a longer word where its rule says so (inside_words, off in the shipped rules), and no short term or ordinary word inside another', () => {
    // The shipped rules leave hashtags and compounds alone: they hold names by chance.
    for (const text of ['#WelcomeToToronto', '#SuperMango', 'combatmanual', 'ulica Narutowicza', '#pineapplelogo sticker', 'superbatmanesque']) expect(rulesHit(text), text).toEqual([]);
    const doc = (inside_words: boolean | undefined, terms: string[]) =>
      compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'bias', action: 'refuse', message: 'm', terms, inside_words }] }));
    const hits = (p: ReturnType<typeof doc>, text: string) => p.screen([{ text, param: 'prompt' }]).length;
    // Without it, words are words: "heroin" is not in "heroine", "rapist" not in "therapist".
    const words = doc(undefined, ['heroin', 'rapist']);
    for (const text of ['a heroine with a sword', 'a therapist office']) expect(hits(words, text), text).toBe(0);
    expect(hits(words, 'heroin')).toBe(1);
    // With it, only a term of six letters or more is found inside a word.
    const names = doc(true, ['pikachu', 'mario', 'elsa', 'trump', 'batman', 'harry potter', 'nike logo']);
    for (const text of ['babypikachu', 'pikachufan', '#batmanfan', 'superbatmanlogo', 'iloveharrypotter', 'b4tmanfan', 'bignikelogo']) expect(hits(names, text), text).toBe(1);
    // An unless phrase of several words takes back the name as a word, and run together inside one.
    const island = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'copyright', action: 'refuse', message: 'm', terms: ['pikachu'], unless: ['pikachu island'], inside_words: true }] }));
    for (const text of ['the pikachu island ferry', 'the pikachuisland ferry']) expect(hits(island, text), text).toBe(0);
    for (const text of ['a wooden marionette', 'an Elsasser farmhouse', 'a brass trumpet']) expect(hits(names, text), text).toBe(0);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ id: 'op', category: 'bias', action: 'refuse', message: 'm', terms: ['x'], inside_words: 'yes' }] }).success).toBe(false);
  });

  it('takes back the verb in "a sponge bobs on the water", and still refuses the character in the plural', () => {
    for (const text of ['a sponge bobs on the water', 'the sponge bobs up and down in the bath', 'a cork sponge bobs along the stream']) expect(rulesHit(text), text).toEqual([]);
    for (const text of ['Sponge Bob', 'spongebob', 'two sponge bobs dancing', 'spongebobs on the water']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    // Kept on purpose (ADR 0015): "Naruto whirlpool headband" is how the character is asked for.
    expect(rulesHit('the Naruto whirlpools')).toEqual(['refuse protected-characters']);
  });

  it('leetspeak reads no version number, and an inside-word match leaves a plural to its unless phrases; an unless phrase elsewhere takes back no disguised name (from the reviews)', () => {
    const doc = (terms: string[], unless: string[], inside_words?: boolean) =>
      compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'trademark', action: 'refuse', message: 'm', terms, unless, inside_words }] }));
    const hits = (p: ReturnType<typeof doc>, text: string) => p.screen([{ text, param: 'prompt' }]).length;
    // Digits only at a word's end are a number: "model3" is not read "modele", so the unless phrase "tesla model 3" applies.
    const tesla = doc(['tesla'], ['tesla model 3']);
    expect(hits(tesla, 'a red tesla model3 on a road')).toBe(0);
    expect(hits(tesla, 'a t3sla logo')).toBe(1);
    // Decided where the reading changed a word: an unless phrase elsewhere in the prompt takes back no disguised name.
    for (const text of ['the Naruto Strait, n4ruto uzumaki fighting', 'Batman River; b4tman in a cape']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    expect(rulesHit('gymnast on the olympic rings, 0lympic rings logo')).toEqual(['refuse brand-logos']);
    expect(hits(tesla, 'a tesla model 3 and a t3sla logo')).toBe(1);
    // "minions" is the term's plural, matched as a word with its unless phrase, not again inside itself.
    const minion = doc(['minion'], ['minions of doom'], true);
    expect(hits(minion, 'minions of doom')).toBe(0);
    expect(hits(minion, 'babyminion')).toBe(1);
    // An unless phrase names a word that holds a term but is another word.
    const logo = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'trademark', action: 'refuse', message: 'm', terms: ['apple logo'], unless: ['pineapple logo'], inside_words: true }] }));
    expect(hits(logo, '#pineapplelogo sticker')).toBe(0);
    expect(hits(logo, '#bigapplelogo sticker')).toBe(1);
  });

  it('keeps the tones of a Vietnamese text\'s syllables ("gậy", a stick, is not "gay"), while a name disguised with them still folds', () => {
    for (const text of ['c\u00e2y g\u1eady tre b\u00ean b\u1edd s\u00f4ng', '\u00f4ng gi\u00e0 c\u1ea7m c\u00e2y g\u1eady', 'con g\u00e0 tr\u1ed1ng g\u00e1y bu\u1ed5i s\u00e1ng']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    expect(normalizeText('g\u1eady')).not.toBe('gay');
    // Not Vietnamese syllables, or not a Vietnamese text: accents are dropped as before.
    for (const text of ['b\u1eadtman', 'pik\u1eadchu', 'shr\u1ec5k \u1edf nh\u00e0', 'Pikachu v\u00e0 b\u1ea1n b\u00e8', 'p\u00efk\u00e1ch\u00fc', 'p\u0337\u0322i\u0334k\u0338a\u0335c\u0336h\u0337u\u0338']) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    // A syllable keeps Vietnamese's own marks only: a diaeresis beside a Vietnamese word still folds.
    expect(rulesHit('g\u1eady g\u0308a\u0308y\u0308 parade')).toEqual(['flag people-by-group']);
    // A known cost: alone, with one accent, "gáy" (to crow) still reads "gay" (a flag).
    expect(rulesHit('g\u00e1y')).toEqual(['flag people-by-group']);
  });

  it('never throws on random text', () => {
    // mulberry32: an LCG taken mod 2^31 in floating point loses its low bits, and next(2) came out 0 nearly every time.
    const random = rng(1);
    const next = (n: number) => Math.floor(random() * n);
    const pieces = ['p1k@chu', 'b a t m a n', '\u1d18\u026a', '&#97;', '\ud800', 'g\u1eady', '\u0301', '\u30d0', '-', '!', ' '];
    for (let i = 0; i < 300; i++) {
      let text = '';
      while (text.length < next(300)) text += next(2) ? pieces[next(pieces.length)] : String.fromCharCode(next(0x10000));
      expect(() => policy.screen([{ text, param: 'prompt' }]), JSON.stringify(text)).not.toThrow();
    }
  });

  it('splits words where the model\'s tokenizer does: a digit against a name, a script written without spaces against another', () => {
    for (const text of [
      'pikachu2 on a hill', 'batman1989 poster', 'spiderman2099', '3pikachu', 'Pokemon2', 'Pikachu\u306e\u306c\u3044\u3050\u308b\u307f',
      'Batman\u2122 poster', 'Pikachu\u2161', 'Pikachu\ub97c \uadf8\ub824\uc918', 'SuperMarioBros', // ™, Ⅱ, a Korean particle, CamelCase
    ]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    expect(normalizeText('pikachu2')).toBe('pikachu 2');
  });

  it('reads a name glued to a word by an apostrophe or an invisible character as the name, where CLIP splits there; joined names still read joined', () => {
    // CLIP's tokenizer: "pikachu'fan" and "pikachu\u200bfan" are the token pikachu and a word fan.
    for (const text of ["pikachu'fan", 'pikachu\u2019fan', 'pikachu\u200bfan', 'pikachu\u2060fan art', "batman'logo", "mickey'mouse", 'pika\u200bchu', "pikachu's hat"]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    }
    // A contraction's ending is not read apart: possessives keep their exceptions ("naruto strait").
    for (const text of ["don't panic", "rock'n'roll band", "O'Neill's garden", "it's a cat", 'a dog\u200bhouse', "l'amour", 'rock\u00adstar', "Naruto's straits at dusk", "the batman's river", "engineer's boots", 'a pilot\u2019s light', "the pilot's whale watching boat", "a nurse's shark tooth", "an african's grey parrot", "a king charles's spaniel"]) {
      expect(rulesHit(text), JSON.stringify(text)).toEqual([]);
    }
  });

  it('reads a name joined by punctuation inside a word, or put in brackets, as the name', () => {
    for (const text of ['spider.man on a roof', 'harry.potter', 'spider/man', 'Mickey (Mouse) waving', 'mickey&#46;mouse', 'Bat-Man of Gotham, 1939 comic', 'Super-Man', 'pika-chu', 'to-toro', 'spider_man']) {
      expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    }
    // Sentence punctuation next to a space ends a phrase (ordinary two-sentence prompts stay ordinary);
    // without a space it is punctuation inside a word, read as the name. A comma or semicolon ends a
    // phrase, spaced or not. Refusing rules also read a name across a break no sentence or list is
    // written with (ADR 0015, "2026-12-06, evasions"; the cases: test/shared/prompt-policy-evasion.test.ts):
    // the whole of "mickey. mouse" (lower case after the break), and a comma glued alone inside a name.
    for (const text of ['mickey.mouse', 'darth?vader', 'spider!man', 'darth. vader', 'darth,vader']) expect(rulesHit(text), text).toEqual(['refuse protected-characters']);
    for (const text of ['A big spider. Man screaming in fear', 'Hello! Kitty cat on a mat', 'a sponge. bob the builder', 'Mary had a little lamb. Super. Mario', 'spider: man of the year', 'hello. kitty cats on a mat']) {
      expect(rulesHit(text).filter((r) => r.startsWith('refuse')), text).toEqual([]);
    }
    for (const text of ['the end. man walking', 'my dog Charlie,brown and white', 'garden scene: bugs,bunny;frog', 'mickey; mouse', 'Darth. Vader is a name', 'a cat,dog,spider,man parade']) expect(rulesHit(text), text).toEqual([]);
  });

  it('reads a plural as its singular', () => {
    for (const text of ['two pikachus', 'spidermen on a wall', 'nike logos', 'hello kitties', 'mickey mice', 'spider men', 'spider /man']) expect(rulesHit(text).slice(0, 1), text).toEqual([expect.stringMatching(/^refuse /)]);
    for (const text of ['a group of nurses', 'doctors at work', 'CEOs', 'immigrants']) expect(rulesHit(text), text).toEqual([expect.stringMatching(/^flag people-by-/)]);
  });

  it('a span of several words must be the term\'s own words, not the same letters split elsewhere', () => {
    for (const text of ['hell okitty', 'kingc harles', 'ros stran', 'cocac ola logo', 'sonict hehedgehog']) expect(rulesHit(text), text).toEqual([]);
  });

  it("finds a term of several words with only some of them run together, as it does with all or none", () => {
    for (const text of ['cocacola logo', 'a CocaCola logo on a can', 'coca colalogo', 'coca-cola logo', 'cocacolalogo', 'sonicthe hedgehog plush', 'sonic thehedgehog']) {
      expect(rulesHit(text), text).toEqual(['refuse ' + (text.includes('sonic') ? 'protected-characters' : 'brand-logos')]);
    }
    const op = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'trademark', action: 'refuse', message: 'm', terms: ['a b c d e f'] }] }));
    for (const text of ['ab c def', 'abcdef', 'a bcd ef', 'a b c d e f']) expect(op.screen([{ text, param: 'prompt' }]), text).toHaveLength(1);
    expect(op.screen([{ text: 'a bc de f g', param: 'prompt' }])).toHaveLength(1);
    expect(op.screen([{ text: 'ab cd e fg', param: 'prompt' }])).toHaveLength(0);
  });

  it('takes a match back where a rule\'s unless phrase covers it, and only there', () => {
    for (const text of ['a nurse shark on a coral reef', 'two pilot whales', 'secretary bird hunting a snake', 'an African elephant at dusk', 'the Naruto Strait whirlpools at sunset', 'a Cavalier King Charles spaniel puppy', 'a trump card']) {
      expect(rulesHit(text), text).toEqual([]);
    }
    expect(rulesHit('a nurse feeding a nurse shark')).toEqual(['flag people-by-occupation']);
    expect(rulesHit('naruto sailing the Naruto Strait')).toEqual(['refuse protected-characters']);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ id: 'r', category: 'bias', action: 'flag', message: 'm', terms: ['x'], unless: ['x. y'] }] }).success).toBe(false);
  });

  it('keeps the marks that are part of a letter outside Latin, Greek and Cyrillic, and finds a term inside a run of a script written without spaces', () => {
    const doc = (terms: string[]) => compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'copyright', action: 'refuse', message: 'm', terms }] }));
    const japanese = doc(['\u30d0\u30c3\u30c8\u30de\u30f3']); // バットマン
    const hits = (p: ReturnType<typeof doc>, text: string) => p.screen([{ text, param: 'prompt' }]).length;
    expect(hits(japanese, '\u30d0\u30c3\u30c8\u30de\u30f3\u306e\u7d75')).toBe(1); // バットマンの絵, "a picture of Batman"
    expect(hits(japanese, '\uff8a\uff9e\uff6f\uff84\uff8f\uff9d')).toBe(1); // the same in half-width katakana
    expect(hits(japanese, '\u30cf\u30c3\u30c8\u30de\u30f3')).toBe(0); // ハットマン, "hat man": no voicing mark
    // A kana term is not read through the Latin look-alike table (which maps ノ to "/").
    const nobita = doc(['\u30ce\u30d3\u30bf']); // ノビタ
    expect(hits(nobita, '\u30d3\u30bf\u30df\u30f3\u30ab\u30e9\u30fc')).toBe(0); // ビタミンカラー, "vitamin colours"
    expect(hits(nobita, '\u30ce\u30d3\u30bf\u306e\u7d75')).toBe(1);
    // An unless phrase takes back a match inside a run too.
    const goku = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'copyright', action: 'refuse', message: 'm', terms: ['\u609f\u7a7a'], unless: ['\u5b59\u609f\u7a7a'] }] }));
    expect(hits(goku, '\u5b59\u609f\u7a7a\u5927\u95f9\u5929\u5bab')).toBe(0); // 孙悟空大闹天宫 (the Monkey King)
    expect(hits(goku, '\u609f\u7a7a\u7684\u753b')).toBe(1); // 悟空的画
    const hindi = doc(['\u0917\u093e\u0902\u0927\u0940']); // गांधी
    expect(hits(hindi, '\u0917\u093e\u0902\u0927\u0940 \u091c\u0940')).toBe(1);
    expect(hits(hindi, '\u0917\u0927\u093e')).toBe(0); // गधा, "donkey"
  });

  it('a stray mark at the start of a word, and Arabic or Hebrew vowel points, are accents: dropped', () => {
    for (const text of ['a \u0301pikachu plush', 'mickey \u0301mouse', 'spider-\u0301man', '\u064byoda']) expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
    const arabic = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ id: 'op', category: 'likeness', action: 'flag', message: 'm', terms: ['\u0645\u064f\u062d\u064e\u0645\u0651\u064e\u062f'] }] }));
    expect(arabic.screen([{ text: '\u0645\u062d\u0645\u062f', param: 'prompt' }])).toHaveLength(1); // the term pointed, the prompt not
  });

  it('look-alike letters of any script are read as Latin, never punctuation', () => {
    for (const text of ['\ua4d1ikachu', '\u15f7atman', '\u2ca3ikachu', 'b\u237atman', 'sup\u212erman', 'b\ud835\udec2tman']) expect(rulesHit(text), JSON.stringify(text)).toEqual(['refuse protected-characters']);
  });

  it('an unless phrase takes a match back only where it covers it; one equal to a term is refused', () => {
    expect(rulesHit('Donald Trump suit and tie')).toEqual(['flag public-figures']); // "trump suit" overlaps "donald trump", does not cover it
    const rule = { id: 'r', category: 'copyright', action: 'refuse', message: 'm', terms: ['pikachu'] } as const;
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, unless: ['Pikachu'] }] }).success).toBe(false);
    // A term is limited to 6 words as written, whatever the folding splits them into.
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, terms: ['r2d2 c3po'] }] }).success).toBe(true);
    expect(compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [{ ...rule, terms: ['r2d2 c3po'] }] })).screen([{ text: 'R2-D2 C-3PO', param: 'prompt' }])).toHaveLength(1);
  });

  it('puts refusals first and reports every rule a prompt meets', () => {
    // Refusals first, then in the policy's rule order (not the prompt's word order).
    expect(rulesHit('a nurse with a pikachu, in the style of greg rutkowski')).toEqual(['refuse protected-characters', 'flag living-artists', 'flag people-by-occupation']);
  });

  it('refuses a malformed policy document: duplicate ids, empty or over-long terms', () => {
    const rule = { id: 'r', category: 'copyright', action: 'flag', message: 'm', terms: ['x'] } as const;
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [rule, rule] }).success).toBe(false);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, terms: ['!!'] }] }).success).toBe(false);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, terms: ['a b c d e f g'] }] }).success).toBe(false);
    expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, action: 'allow' }] }).success).toBe(false);
    // A term across a phrase break could never match a prompt: refused when the document is read.
    for (const term of ['mr. bean', 'ac/dc logo', 'star wars: the mandalorian']) {
      expect(PromptPolicyDocument.safeParse({ version: 1, rules: [{ ...rule, terms: [term] }] }).success, term).toBe(false);
    }
  });
});

describe('the API', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await harness();
  });
  afterEach(() => h.close());

  it('refuses a protected character with 400 content_policy naming the prompt, and writes nothing', async () => {
    const error = await expectEnvelope(await h.request('/v1/generations', { json: { prompt: 'Mickey Mouse waving', steps: 10 }, headers: { 'Idempotency-Key': 'p-1' } }), 400, 'content_policy');
    expect(error.param).toBe('prompt');
    expect(error.message).toMatch(/copyright.*"mickey mouse"/);
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    expect((await h.blobs.list(PENDING_JOBS_PREFIX)).items).toEqual([]);
    expect(await h.queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
    // The key was not spent: the same key with an allowed body makes a job.
    expect((await h.request('/v1/generations', { json: { prompt: 'a red circle' }, headers: { 'Idempotency-Key': 'p-1' } })).status).toBe(202);
  });

  it('checks every positive prompt, names the one refused, and lets what steers away pass', async () => {
    const error = await expectEnvelope(
      await h.request('/v1/generations', { json: { prompts: [{ text: 'a red circle', weight: 1 }, { text: 'the Nike logo', weight: 0.5 }] } }),
      400,
      'content_policy',
    );
    expect(error.param).toBe('prompts.1.text');
    expect((await h.request('/v1/generations', { json: { prompt: 'a red circle', negative_prompt: 'mickey mouse' } })).status).toBe(202);
    expect((await h.request('/v1/generations', { json: { prompts: [{ text: 'a red circle', weight: 1 }, { text: 'pikachu', weight: -0.5 }] } })).status).toBe(202);
    await expectEnvelope(await h.request('/v1/estimates', { json: { prompt: 'batman' } }), 400, 'content_policy');
  });

  it('flags what it does not refuse: the job carries the flags, and every view shows them', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'a portrait of a doctor, in the style of Greg Rutkowski' } });
    expect(res.status).toBe(202);
    const created = (await res.json()) as any;
    const expected = [
      { rule: 'living-artists', category: 'copyright', term: 'greg rutkowski', param: 'prompt', message: expect.stringContaining('living artist') },
      { rule: 'people-by-occupation', category: 'bias', term: 'doctor', param: 'prompt', message: expect.stringContaining('gender') },
    ];
    expect(created.content_flags).toEqual(expected);
    expect(((await (await h.request(`/v1/generations/${created.id}`)).json()) as any).content_flags).toEqual(expected);
    const clean = (await (await h.request('/v1/generations', { json: { prompt: 'a red circle' } })).json()) as any;
    expect(clean.content_flags).toEqual([]);
  });

  it('a retry of a request whose job exists is answered with that job, even after the policy has come to refuse it', async () => {
    const own = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    const post = (app: ReturnType<typeof createApp>) =>
      app.request('/v1/generations', {
        method: 'POST',
        headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'before-the-rule' },
        body: JSON.stringify({ prompt: 'a red circle' }),
      });
    const first = await post(h.app);
    expect(first.status).toBe(202);
    const { id } = (await first.json()) as { id: string };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(own)));
    const strict = createApp({ ...h.deps, promptPolicy: policyFromStore(h.blobs) });
    const retry = await post(strict);
    expect(retry.status).toBe(200);
    expect(((await retry.json()) as { id: string }).id).toBe(id);
    // A new request is refused, and a new key with the refused body is not spent.
    await expectEnvelope(
      await strict.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'k2' }, body: JSON.stringify({ prompt: 'a blue circle' }) }),
      400,
      'content_policy',
    );
    expect((await strict.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'k2' }, body: JSON.stringify({ prompt: 'a blue square' }) })).status).toBe(202);
  });

  it('a store that fails keeps the last good policy (no 5xx) and says so; one look serves concurrent requests; an oversized document is not read', async () => {
    let nowMs = 0;
    let heads = 0;
    let failing = false;
    const problems: string[] = [];
    const store = {
      head: async (key: string) => {
        heads++;
        if (failing) throw new Error('s3 is down');
        return h.blobs.head(key);
      },
      get: (key: string) => h.blobs.get(key),
    };
    const kinds: string[] = [];
    const policyNow = policyFromStore(store, { ttlMs: 1000, now: () => nowMs, onProblem: (p, kind) => void (problems.push(p), kinds.push(kind)) });
    const own = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(own)));
    await Promise.all(Array.from({ length: 10 }, () => policyNow()));
    expect(heads).toBe(1);
    failing = true;
    nowMs = 2000;
    const during = await policyNow();
    expect(during.screen([{ text: 'a circle', param: 'prompt' }])).toHaveLength(1); // still the operator's
    expect(problems).toEqual([expect.stringContaining('could not be read; keeping its last good version: s3 is down')]);
    expect(await policyNow()).toBe(during); // and not looked at again before ttlMs
    expect(heads).toBe(2);
    failing = false;
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify({ ...own, pad: 'x'.repeat(MAX_POLICY_BYTES) })));
    nowMs = 4000;
    expect((await policyNow()).screen([{ text: 'a circle', param: 'prompt' }])).toHaveLength(1);
    expect(problems[1]).toMatch(/over the 2097152-byte limit/);
    // A store that failed is retried by itself (logged as a warning); a document too large needs an operator (an error, which pages).
    expect(kinds).toEqual(['unreadable', 'invalid']);
  });

  it('a document that grew past the cap between the HEAD and the GET is not parsed, nor replaced by the default (no good version is held: fail closed)', async () => {
    const problems: string[] = [];
    const own = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    const body = Buffer.from(JSON.stringify({ ...own, pad: 'x'.repeat(MAX_POLICY_BYTES) }));
    const store = { head: async () => ({ size: 100, etag: '"small"' }), get: async () => ({ body, etag: '"big"' }) };
    const policyNow = policyFromStore(store, { onProblem: (p) => problems.push(p) });
    await expect(policyNow()).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems).toEqual([expect.stringMatching(/not a valid policy.*over the 2097152-byte limit/)]);
  });

  it('a download that fails once is tried again at the next look (the new document is not skipped); a first one fails the check, not for a whole TTL', async () => {
    let nowMs = 0;
    let failGet = true;
    const store = {
      head: (key: string) => h.blobs.head(key),
      get: async (key: string) => {
        if (failGet) {
          failGet = false;
          throw new Error('connection reset');
        }
        return h.blobs.get(key);
      },
    };
    const policyNow = policyFromStore(store, { ttlMs: 60_000, now: () => nowMs });
    const own = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(own)));
    // Nothing read yet: not the default in its place (the document may be stricter), but a retryable error.
    await expect(policyNow()).rejects.toMatchObject({ code: 'unavailable', retryable: true });
    nowMs = POLICY_RETRY_MS;
    expect((await policyNow()).screen([{ text: 'a circle', param: 'prompt' }])).toHaveLength(1);
    // A later download that fails keeps that version, and the new one is read at the next look.
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify({ ...own, rules: [{ ...own.rules[0], terms: ['square'] }] })));
    failGet = true;
    nowMs += 60_000;
    expect((await policyNow()).screen([{ text: 'a circle', param: 'prompt' }])).toHaveLength(1);
    nowMs += 60_000;
    expect((await policyNow()).screen([{ text: 'a square', param: 'prompt' }])).toHaveLength(1);
  });

  it("a deployment's own policy in its store replaces the default; a broken one keeps the last good policy and says so", async () => {
    let nowMs = 0;
    const problems: string[] = [];
    const app = createApp({ ...h.deps, promptPolicy: policyFromStore(h.blobs, { ttlMs: 1000, now: () => nowMs, onProblem: (p: string) => problems.push(p) }) });
    const post = async (prompt: string) =>
      app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt }) });
    expect((await post('a red circle')).status).toBe(202);
    expect((await post('pikachu')).status).toBe(400);
    const own = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(own)));
    expect((await post('a red circle')).status).toBe(202); // cached for ttlMs
    nowMs = 2000;
    await expectEnvelope(await post('a red circle'), 400, 'content_policy');
    expect((await post('pikachu')).status).toBe(202); // replaced, not merged
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from('{"version": 1, "rules": [{"id": "x"'));
    nowMs = 4000;
    await expectEnvelope(await post('a red circle'), 400, 'content_policy'); // still the last good one
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/config\/prompt-policy\.json is not a valid policy/);
    await h.blobs.delete(PROMPT_POLICY_KEY);
    nowMs = 6000;
    expect((await post('a red circle')).status).toBe(202); // back to the default
    expect((await post('pikachu')).status).toBe(400);
  });

  it("an owner's own policy replaces the deployment's for that owner only; removed, the owner falls back to the deployment's (ADR 0018)", async () => {
    let nowMs = 0;
    const problems: string[] = [];
    const app = createApp({ ...h.deps, promptPolicy: policyFromStore(h.blobs, { ttlMs: 1000, now: () => nowMs, onProblem: (p: string) => problems.push(p) }) });
    const post = async (key: string, prompt: string) =>
      app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt }) });
    const flagged = async (key: string, prompt: string) => {
      const res = await post(key, prompt);
      expect(res.status, prompt).toBe(202);
      return ((await res.json()) as { content_flags: Array<{ rule: string }> }).content_flags.map((f) => f.rule);
    };
    // The deployment flags squares; alice holds the rights to Pikachu, and her own list flags nothing else.
    const deployment = { version: 1, rules: [{ id: 'squares', category: 'bias', action: 'flag', message: 'squares are sensitive here', terms: ['square'] }] };
    const alices = { version: 1, rules: [{ id: 'licensed-only', category: 'copyright', action: 'flag', message: 'licensed to acct_alice', terms: ['pikachu'] }] };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(deployment)));
    await h.blobs.put(ownerPolicyKey('acct_alice'), Buffer.from(JSON.stringify(alices)));
    expect(await flagged(h.alice, 'pikachu on a blue square')).toEqual(['licensed-only']);
    expect(await flagged(h.bob, 'pikachu on a blue square')).toEqual(['squares']); // the deployment's: pikachu is fine there too
    // Bob gets no own document; a broken one for alice keeps her last good one, and says so.
    await h.blobs.put(ownerPolicyKey('acct_alice'), Buffer.from('{"version": 1'));
    nowMs = 2000;
    expect(await flagged(h.alice, 'pikachu')).toEqual(['licensed-only']);
    expect(problems).toEqual([expect.stringMatching(/^config\/prompt-policies\/acct_alice\.json is not a valid policy; keeping its last good version: not JSON/)]);
    await h.blobs.delete(ownerPolicyKey('acct_alice'));
    nowMs = 4000;
    expect(await flagged(h.alice, 'pikachu on a blue square')).toEqual(['squares']);
    // With neither document, the shipped policy: pikachu is refused again, for both.
    await h.blobs.delete(PROMPT_POLICY_KEY);
    nowMs = 6000;
    for (const key of [h.alice, h.bob]) await expectEnvelope(await post(key, 'pikachu'), 400, 'content_policy');
  });

  it('an owner with a document keeps its last good policy however many other owners come by; those without one are dropped first', async () => {
    let nowMs = 0;
    let down = false;
    const heads = new Map<string, number>();
    const docs = new Map([[ownerPolicyKey('acct_alice'), Buffer.from(JSON.stringify({ version: 1, rules: [{ id: 'no-apples', category: 'bias', action: 'refuse', message: 'm', terms: ['apple'] }] }))]]);
    const store = {
      async head(key: string) {
        heads.set(key, (heads.get(key) ?? 0) + 1);
        if (down) throw new Error('store down');
        const body = docs.get(key);
        return body ? { size: body.byteLength, etag: 'e1' } : null;
      },
      async get(key: string) {
        const body = docs.get(key);
        return body ? { body, etag: 'e1' } : null;
      },
    };
    const policyOf = policyFromStore(store, { ttlMs: 60_000, now: () => nowMs, onProblem: () => undefined });
    const refusesApples = async (owner: string) => (await policyOf(owner)).screen([{ text: 'an apple', param: 'prompt' }]).length > 0;
    expect(await refusesApples('acct_alice')).toBe(true);
    for (let i = 0; i <= 10_000; i++) await policyOf(`acct_${i}`);
    expect(heads.get(ownerPolicyKey('acct_0'))).toBe(1);
    await policyOf('acct_0'); // dropped (the oldest without a document): looked up again
    expect(heads.get(ownerPolicyKey('acct_0'))).toBe(2);
    await policyOf('acct_10000'); // kept: no new look within the minute
    expect(heads.get(ownerPolicyKey('acct_10000'))).toBe(1);
    // Alice's loader was never dropped: with the store down she keeps her stricter list.
    down = true;
    nowMs = 120_000;
    expect(await refusesApples('acct_alice')).toBe(true);
    // An owner never looked up cannot be checked while the store is down: a retryable error, not the deployment's list.
    await expect(refusesApples('acct_bob')).rejects.toMatchObject({ code: 'unavailable' });
    down = false;
    nowMs += POLICY_RETRY_MS;
    expect(await refusesApples('acct_bob')).toBe(false);
  });

  it("a store that fails on a loader's first look fails closed: 503 unavailable with Retry-After, not the weaker policy, and is looked at again within seconds, not a TTL", async () => {
    let nowMs = 0;
    const heads: string[] = [];
    let fails = (_key: string) => true; // an S3 throttle as the API starts
    const problems: string[] = [];
    const store = {
      async head(key: string) {
        heads.push(key);
        if (fails(key)) throw new Error('SlowDown: please reduce your request rate');
        return h.blobs.head(key);
      },
      get: (key: string) => h.blobs.get(key),
    };
    const deployment = { version: 1, rules: [{ id: 'no-circles', category: 'trademark', action: 'refuse', message: 'circles are ours', terms: ['circle'] }] };
    const alices = { version: 1, rules: [{ id: 'no-squares', category: 'trademark', action: 'refuse', message: 'squares are hers', terms: ['square'] }] };
    await h.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(deployment)));
    await h.blobs.put(ownerPolicyKey('acct_alice'), Buffer.from(JSON.stringify(alices)));
    const app = createApp({ ...h.deps, promptPolicy: policyFromStore(store, { now: () => nowMs, onProblem: (p: string) => problems.push(p) }) });
    const post = (key: string, prompt: string, path = '/v1/generations') =>
      app.request(path, { method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', 'Idempotency-Key': `k-${prompt.replaceAll(' ', '-')}` }, body: JSON.stringify({ prompt }) });
    const unavailable = async (res: Response) => {
      expect(res.headers.get('Retry-After')).toBe('1');
      await expectEnvelope(res, 503, 'unavailable');
    };
    // Alice's own document cannot be read: not the deployment's list in its place (it lets squares through).
    await unavailable(await post(h.alice, 'a blue square'));
    // Bob has none of his own (a 404 is no error), but the deployment's cannot be read: not the shipped list (it lets circles through).
    fails = (key) => key === PROMPT_POLICY_KEY;
    await unavailable(await post(h.bob, 'a red circle'));
    await unavailable(await post(h.bob, 'a red circle', '/v1/estimates'));
    // Nothing was written, the keys are not spent, and each failure was said once, without "keeping" a policy there was none of.
    expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
    expect((await h.jobs.listByOwner('acct_bob')).jobs).toEqual([]);
    expect(problems).toEqual([
      expect.stringMatching(/^config\/prompt-policies\/acct_alice\.json could not be read, and no earlier look has: .*SlowDown/),
      expect.stringMatching(/^config\/prompt-policy\.json could not be read, and no earlier look has: .*SlowDown/),
    ]);
    // Within the retry delay a request fails at once, without a look of its own.
    const looks = heads.length;
    await unavailable(await post(h.bob, 'a red circle'));
    expect(heads.length).toBe(looks);
    // The store is back: a second later (not a TTL later), each is held to its own document.
    fails = () => false;
    nowMs = POLICY_RETRY_MS;
    await expectEnvelope(await post(h.alice, 'a blue square'), 400, 'content_policy');
    await expectEnvelope(await post(h.bob, 'a red circle'), 400, 'content_policy');
    expect((await post(h.bob, 'a blue square')).status).toBe(202);
    // Once read, a later failure keeps what was read (as before), and says what it keeps.
    fails = () => true;
    nowMs += 60_000;
    await expectEnvelope(await post(h.alice, 'a green square'), 400, 'content_policy');
    await expectEnvelope(await post(h.bob, 'a green circle'), 400, 'content_policy');
    expect(problems.slice(2)).toEqual([
      expect.stringMatching(/acct_alice\.json could not be read; keeping its last good version: SlowDown/),
      expect.stringMatching(/acct_bob\.json could not be read; keeping the deployment's policy: SlowDown/),
      expect.stringMatching(/^config\/prompt-policy\.json could not be read; keeping its last good version: SlowDown/),
    ]);
  });

  it('a document that is not there is no error: a store that fails after a look found none keeps the fallback, and says which', async () => {
    let nowMs = 0;
    let failing = false;
    const problems: string[] = [];
    const store = {
      async head(key: string) {
        if (failing) throw new Error('s3 is down');
        return h.blobs.head(key);
      },
      get: (key: string) => h.blobs.get(key),
    };
    const policyOf = policyFromStore(store, { now: () => nowMs, onProblem: (p: string) => problems.push(p) });
    expect((await policyOf('acct_bob')).screen([{ text: 'pikachu', param: 'prompt' }]).map((hit) => hit.rule)).toEqual(['protected-characters']);
    failing = true;
    nowMs = 60_000;
    expect((await policyOf('acct_bob')).screen([{ text: 'pikachu', param: 'prompt' }]).map((hit) => hit.rule)).toEqual(['protected-characters']);
    expect(problems).toEqual([
      "config/prompt-policies/acct_bob.json could not be read; keeping the deployment's policy: s3 is down",
      'config/prompt-policy.json could not be read; keeping the shipped policy: s3 is down',
    ]);
  });

  it("an owner's first document that is broken fails closed (it may be stricter), not the deployment's policy in its place", async () => {
    const problems: string[] = [];
    const policyOf = policyFromStore(h.blobs, { onProblem: (p: string) => problems.push(p) });
    await h.blobs.put(ownerPolicyKey('acct_bob'), Buffer.from(JSON.stringify({ version: 1, rules: [], output_rules: [{ id: 'x', category: 'copyright', action: 'flag', message: 'm', concepts: ['a'] }] })));
    await expect(policyOf('acct_bob')).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems[0]).toMatch(/prompt-policies\/acct_bob\.json is not a valid policy for this version of clipag, and no good version of it has been read: .*output_rules\.0: an output rule needs/);
    expect(() => ownerPolicyKey('../keys/x')).toThrow(/not an owner id/);
    // Not a way in: an owner that is not an id gets the deployment's policy (here the shipped one).
    expect((await policyOf('../keys/x')).screen([{ text: 'pikachu', param: 'prompt' }]).map((h) => h.rule)).toEqual(['protected-characters']);
  });
});
