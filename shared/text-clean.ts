// Text cleaning done by OpenAI CLIP before BPE (simple_tokenizer.py):
//   basic_clean(text) = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
//   whitespace_clean(text) = re.sub(r'\s+', ' ', text).strip()
//   cleaned = whitespace_clean(basic_clean(text)).lower()
//
// There is no ftfy for JavaScript, so `fixText` reimplements ftfy 6.3's `fix_text` with its default
// settings. ftfy fixes one line at a time (a segment ends after each "\n") and, per line, runs these
// fixers in this order, over and over until a round changes nothing:
//   unescape_html     `&name;` (HTML5 names, and the all-caps form of an all-lowercase name that is not
//                     an entity itself: "P&EACUTE;REZ") and `&#N;` / `&#xN;` that end with ";". Off from
//                     the first line that holds a "<" on (that text may be HTML that means them literally).
//   fix_encoding      mojibake, see below.
//   fix_c1_controls   U+0080..U+009F left over → their Windows-1252 characters.
//   fix_latin_ligatures (ﬁ → fi, ﬅ → ſt, Ĳ → IJ, Ǆ → DŽ, ...), fix_character_width (fullwidth and
//   halfwidth forms → NFKC, U+3000 → space), uncurl_quotes (‘’‚‛ʼ → ', “”„‟ → "), fix_line_breaks
//   (\r\n, \r, U+2028, U+2029, U+0085 → \n), fix_surrogates (lone ones → U+FFFD),
//   remove_terminal_escapes (ESC [ digits/; letter), remove_control_chars, NFC.
//
// Mojibake: text that was UTF-8 but was decoded with a single-byte code page ("cafÃ©" for "café",
// "â€œ" for "“"). ftfy leaves a line alone unless a "badness" heuristic flags it: a search for
// juxtapositions of characters that real text in any language practically never has and mojibake has
// all the time (any C1 control; a lowercase accented letter right before a currency sign or a box-
// drawing character; "Ã" or "Â" before a symbol; ...). Accented capitals before closing quotes, ™ or »
// ("“CAFÉ”", "«OLÉ»", "CAFÉ™") are real text and pass. A flagged line is encoded back to bytes with the
// first code page in ftfy's list that can represent all of it, and those bytes must then decode as
// UTF-8 as a whole, allowing for damage ftfy knows (a 0xA0 byte that became a space, bytes already lost
// to U+FFFD, CESU-8). When no code page does, runs that look like UTF-8 mojibake inside otherwise good
// text are fixed one by one, then C1 controls in Latin-1 text are read as Windows-1252. All of it
// repeats until the line stops changing (so double mojibake is undone too).
// The heuristic's character classes and rules follow ftfy 6.3 (ftfy/badness.py, ftfy/chardata.py); the
// code pages and the UTF-8 decoding are spelled out here because Node's TextDecoder has no "sloppy"
// code pages (and Node 20 decodes windows-1252 as Latin-1). test/fixtures/text-clean/ftfy-cases.json
// holds real ftfy's output for a few hundred prompts, mojibake and random strings, which
// test/engine/text-clean-ftfy.test.ts checks this against. Not reproduced: ftfy's explanations. Can
// still differ: where Node's Unicode data (ICU: NFC, \p{L}, lowercasing) is newer than Python's.
//
// After ftfy, `pythonHtmlUnescape` reproduces Python's html.unescape (named entities through the
// `entities` package's HTML5 table with the same longest-legacy-prefix rule; numeric references
// with Python's replacement tables), and whitespace/lower() follow Python semantics
// (White_Space set for \s, str.isspace for strip; lower() with the final-sigma rule, as in JS).

import { decodeHTML, DecodingMode } from 'entities';

// ---------- Python whitespace classes ----------
/** `regex`-module \s (Unicode White_Space), as CLIP's whitespace_clean uses. */
const PY_WS = '\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
/** str.isspace(), which is also the `re` module's \s: White_Space plus U+001C..U+001F. */
const PY_ISSPACE = `${PY_WS}\\u001c-\\u001f`;

// ---------- single-byte code pages ----------
// WHATWG windows-1252 (= ftfy's "sloppy-windows-1252"): bytes 0x81, 0x8D, 0x8F, 0x90, 0x9D stay C1,
// every other byte outside 0x80..0x9F is Latin-1.
const CP1252_80_9F = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d, 0x8f,
  0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];
const BYTE_TO_CP1252: string[] = Array.from({ length: 256 }, (_, b) =>
  String.fromCharCode(b >= 0x80 && b <= 0x9f ? CP1252_80_9F[b - 0x80]! : b),
);

interface CodePage {
  name: string;
  /** byte → the character it decodes to */
  chars: string[];
  /** character → its byte */
  bytes: Map<string, number>;
  /** ftfy's "sloppy-" variant: undefined bytes decode as Latin-1, and byte 0x1A stands for U+FFFD. */
  sloppy: boolean;
}

function codePage(name: string, high: string, sloppy: boolean): CodePage {
  if (high.length !== 128) throw new Error(`code page ${name}: ${high.length} characters for bytes 0x80..0xFF`);
  const chars = Array.from({ length: 256 }, (_, b) => (b < 0x80 ? String.fromCharCode(b) : high[b - 0x80]!));
  // A character lost to an earlier bad decode (U+FFFD) is encoded as SUBSTITUTE; then U+001A cannot be.
  if (sloppy) chars[0x1a] = '\ufffd';
  const bytes = new Map<string, number>();
  chars.forEach((ch, b) => bytes.set(ch, b));
  return { name, chars, bytes, sloppy };
}

const LATIN1_HIGH = String.fromCharCode(...Array.from({ length: 128 }, (_, i) => 0x80 + i));
const LATIN1 = codePage('latin-1', LATIN1_HIGH, false);
const MACROMAN = codePage(
  'macroman',
  'ÄÅÇÉÑÖÜáàâäãåçéèêëíìîïñóòôöõúùûü†°¢£§•¶ß®©™´¨≠ÆØ∞±≤≥¥µ∂∑∏π∫ªºΩæø' +
    '¿¡¬√ƒ≈∆«»…\u00a0ÀÃÕŒœ–—“”‘’÷◊ÿŸ⁄€‹›ﬁﬂ‡·‚„‰ÂÊÁËÈÍÎÏÌÓÔ\uf8ffÒÚÛÙıˆ˜¯˘˙˚¸˝˛ˇ',
  false,
);
/** ftfy's order: the first code page that can encode the whole line and yields UTF-8 wins. */
const CODE_PAGES: CodePage[] = [
  LATIN1,
  codePage('sloppy-windows-1252', BYTE_TO_CP1252.slice(0x80).join(''), true),
  codePage(
    'sloppy-windows-1251',
    'ЂЃ‚ѓ„…†‡€‰Љ‹ЊЌЋЏђ‘’“”•–—\u0098™љ›њќћџ\u00a0ЎўЈ¤Ґ¦§Ё©Є«¬\u00ad®Ї°±Ііґµ¶·ё№є»јЅѕї' +
      'АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя',
    true,
  ),
  codePage(
    'sloppy-windows-1250',
    '€\u0081‚\u0083„…†‡\u0088‰Š‹ŚŤŽŹ\u0090‘’“”•–—\u0098™š›śťžź\u00a0ˇ˘Ł¤Ą¦§¨©Ş«¬\u00ad®Ż°±˛ł´µ¶·¸ąş»Ľ˝ľż' +
      'ŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙',
    true,
  ),
  codePage(
    'sloppy-windows-1253',
    '€\u0081‚ƒ„…†‡\u0088‰\u008a‹\u008c\u008d\u008e\u008f\u0090‘’“”•–—\u0098™\u009a›\u009c\u009d\u009e\u009f\u00a0΅Ά£¤¥¦§¨©ª«¬\u00ad®―°±²³΄µ¶·ΈΉΊ»Ό½ΎΏ' +
      'ΐΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡÒΣΤΥΦΧΨΩΪΫάέήίΰαβγδεζηθικλμνξοπρςστυφχψωϊϋόύώÿ',
    true,
  ),
  codePage(
    'sloppy-windows-1254',
    '€\u0081‚ƒ„…†‡ˆ‰Š‹Œ\u008d\u008e\u008f\u0090‘’“”•–—˜™š›œ\u009d\u009eŸ\u00a0¡¢£¤¥¦§¨©ª«¬\u00ad®¯°±²³´µ¶·¸¹º»¼½¾¿' +
      'ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏĞÑÒÓÔÕÖ×ØÙÚÛÜİŞßàáâãäåæçèéêëìíîïğñòóôõö÷øùúûüışÿ',
    true,
  ),
  codePage(
    'sloppy-windows-1257',
    '€\u0081‚\u0083„…†‡\u0088‰\u008a‹\u008c¨ˇ¸\u0090‘’“”•–—\u0098™\u009a›\u009c¯˛\u009f\u00a0¡¢£¤¥¦§Ø©Ŗ«¬\u00ad®Æ°±²³´µ¶·ø¹ŗ»¼½¾æ' +
      'ĄĮĀĆÄÅĘĒČÉŹĖĢĶĪĻŠŃŅÓŌÕÖ×ŲŁŚŪÜŻŽßąįāćäåęēčéźėģķīļšńņóōõö÷ųłśūüżž˙',
    true,
  ),
  codePage(
    'iso-8859-2',
    LATIN1_HIGH.slice(0, 33) +
      'Ą˘Ł¤ĽŚ§¨ŠŞŤŹ\u00adŽŻ°ą˛ł´ľśˇ¸šşťź˝žż' +
      'ŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙',
    false,
  ),
  MACROMAN,
  codePage(
    'cp437',
    'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐' +
      '└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0',
    false,
  ),
];

/** The bytes of `text` in a code page, as a string of char codes 0..255; null if a character has no byte. */
function encodeIn(page: CodePage, text: string): string | null {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const b = page.bytes.get(text[i]!);
    if (b === undefined) return null;
    out += String.fromCharCode(b);
  }
  return out;
}

// ---------- UTF-8 (with the damage ftfy repairs) ----------
const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();
const latin1String = (bytes: Uint8Array) => String.fromCharCode(...bytes);

/** Java's two-byte NUL, and a UTF-16 surrogate pair encoded as two 3-byte sequences (CESU-8). */
const JAVA_NUL = /\xc0\x80/g;
const CESU8_PAIR = /\xed([\xa0-\xaf])([\x80-\xbf])\xed([\xb0-\xbf])([\x80-\xbf])/g;

/** Strict UTF-8 (plus ftfy's "utf-8-variants": CESU-8 pairs, 0xC0 0x80 for NUL) of a byte string; null if invalid. */
function decodeUtf8(bin: string): string | null {
  if (bin.includes('\xc0') || bin.includes('\xed')) {
    bin = bin.replace(JAVA_NUL, '\x00').replace(CESU8_PAIR, (_m, h1: string, h2: string, l1: string, l2: string) => {
      const hi = 0xd800 + ((h1.charCodeAt(0) & 0x0f) << 6) + (h2.charCodeAt(0) & 0x3f);
      const lo = 0xdc00 + ((l1.charCodeAt(0) & 0x0f) << 6) + (l2.charCodeAt(0) & 0x3f);
      return latin1String(utf8Encoder.encode(String.fromCharCode(hi, lo)));
    });
  }
  try {
    return UTF8_STRICT.decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  } catch {
    return null;
  }
}

// Byte 0xA0 (a UTF-8 continuation byte, and NO-BREAK SPACE in Latin-1) that some program turned into
// a plain space, inside sequences that then decode to likely characters: "Â " → U+00A0, "Ã " → à,
// Greek Π, Cyrillic Р, ..., and 3- and 4-byte sequences with one such space (ftfy's restore_byte_a0).
const SPACE_FOR_A0_SRC =
  '[\\xc2\\xc3\\xc5\\xce\\xd0\\xd9] |[\\xe2\\xe3] [\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf]|[\\xe0-\\xe3][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf] |' +
  '\\xf0 [\\x80-\\xbf]{2}|\\xf0[\\x80-\\xbf] [\\x80-\\xbf]|\\xf0[\\x80-\\xbf]{2} ';
const HAS_SPACE_FOR_A0 = new RegExp(SPACE_FOR_A0_SRC);
const SPACE_FOR_A0 = new RegExp(SPACE_FOR_A0_SRC, 'g');
/** "Ã " is "à " (the space kept as a word break) unless Portuguese "às"/"àquele" or a double space follow. */
const A_GRAVE_WORD = /\xc3 (?! |quele|quela|quilo|s )/g;
function restoreByteA0(bin: string): string {
  if (!HAS_SPACE_FOR_A0.test(bin)) return bin;
  return bin.replace(A_GRAVE_WORD, '\xc3\xa0 ').replace(SPACE_FOR_A0, (m) => m.replace(/ /g, '\xa0'));
}

// UTF-8 sequences some of whose bytes were already lost (0x1A = a U+FFFD of a sloppy code page, or at
// most one "?") decode as a single U+FFFD instead of failing the whole line (ftfy's replace_lossy_sequences).
const LOST_BYTES = new RegExp(
  [
    '[\\xc2-\\xdf]\\x1a',
    '[\\xc2\\xc3]\\?',
    '\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]',
    '\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]',
    '[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]',
    '[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]',
    '\\x1a',
  ].join('|'),
  'g',
);

// ---------- the badness heuristic ----------
// Classes of the few hundred characters that UTF-8 mojibake is made of (in a regex character class).
const MOJI = {
  /** C1 controls: nothing uses them any more except mojibake. */
  c1: '\\u0080-\\u009f',
  /** Used in all sorts of text: only a clue in the Arabic-mojibake rule. */
  common: '\\u00a0\\u00ad·´–—―…’',
  /** Almost only ever seen in mojibake. */
  bad: '¦¤¨¬¯¸ƒˆˇ˘˛˜†‡‰⌐◊\\ufffdªº',
  law: '¶§',
  currency: '¢£¥₧€',
  startPunct: '¡«¿©΄΅‘‚“„•‹\\uf8ff',
  endPunct: '®»˝”›™',
  numeric: '²³¹±¼½¾×µ÷⁄∂∆∏∑√∞∩∫≈≠≡≤≥№',
  /** Letters that make emoticon faces, so they are allowed next to odd symbols. */
  kaomoji: 'Ò-ÖÙ-Üò-öø-üŐŌŪŲ°',
  upperAccented: 'À-ÑØÜÝĂĀĄĆČĎĐĘĚĒĖĞĢİĪĶĹĽŁĻŃŇŅŒŘŚŞŠŢŤŮŰŸŹŻŽҐ',
  lowerAccented: 'ßà-ñăąāćčďđęěēėğģįīķĺľłļœŕśşšťüźżžґﬁﬂ',
  upperCommon: 'ÞΑ-ΩΆΈΉΊΌΎΏΪΫЁ-Я',
  lowerCommon: 'α-ωάέήίΰа-џ',
  box: '│┌┐┘├┤┬┼═-╬▀▄█▌▐░▒▓',
};
type MojiClass = keyof typeof MOJI;
/** One character of any of the named classes (and any extra characters). */
const oneOf = (names: MojiClass[], extra = '') => `[${names.map((n) => MOJI[n]).join('')}${extra}]`;
const LETTERISH: MojiClass[] = ['lowerAccented', 'upperAccented'];

/** Each rule is a short sequence that flags a line as mojibake wherever it occurs. */
const BADNESS_RULES = [
  oneOf(['c1']),
  // next to a "bad" character, anything from the mojibake classes
  oneOf(['bad', ...LETTERISH, 'box', 'startPunct', 'endPunct', 'currency', 'numeric', 'law']) + oneOf(['bad']),
  oneOf(['bad']) + oneOf([...LETTERISH, 'box', 'startPunct', 'endPunct', 'currency', 'numeric', 'law']),
  '[a-zA-Z]' + oneOf(['lowerCommon', 'upperCommon']) + oneOf(['bad']),
  // accented capitals after lowercase / symbols; accented lowercase after symbols
  oneOf(['lowerAccented', 'lowerCommon', 'box', 'endPunct', 'currency', 'numeric']) + oneOf(['upperAccented']),
  oneOf(['box', 'endPunct', 'currency', 'numeric']) + oneOf(['lowerAccented']),
  // currency signs right after letters or closing symbols
  oneOf(['lowerAccented', 'box', 'endPunct']) + oneOf(['currency']),
  `[${PY_ISSPACE}]` + oneOf(['upperAccented']) + oneOf(['currency']),
  oneOf(['upperAccented', 'box']) + oneOf(['numeric', 'law']),
  // opening punctuation in the wrong place
  oneOf([...LETTERISH, 'box', 'currency', 'endPunct']) + oneOf(['startPunct']) + oneOf(['numeric']),
  oneOf([...LETTERISH, 'currency', 'numeric', 'box', 'law']) + oneOf(['endPunct']) + oneOf(['startPunct']),
  oneOf(['currency', 'numeric', 'box']) + oneOf(['startPunct']),
  '[a-z]' + oneOf(['upperAccented']) + oneOf(['startPunct', 'currency']),
  // box drawing where it cannot be a drawing
  oneOf(['box']) + oneOf(['kaomoji']),
  oneOf([...LETTERISH, 'currency', 'numeric', 'startPunct', 'endPunct', 'law']) + oneOf(['box']),
  oneOf(['box']) + oneOf(['endPunct']),
  // punctuation between an accented letter and a word character (Python's \w: letters, numbers, _)
  oneOf(LETTERISH) + oneOf(['startPunct', 'endPunct']) + '[\\p{L}\\p{N}_]',
  // œ not followed by a plain Latin letter; a degree sign after an accented capital
  '[Œœ][^A-Za-z]',
  oneOf(['upperAccented']) + '°',
  // common 2-character Windows-1252 mojibake the rules above miss
  '[ÂÃÎÐ]' + oneOf(['startPunct', 'endPunct'], '€œŠš¢£Ÿž\\u00a0\\u00ad®©°·»–—´'),
  '×[²³]',
  // Arabic read as Windows-1252: two pairs in a row, since "common" characters are involved
  ('[ØÙ]' + oneOf(['common', 'currency', 'bad', 'numeric', 'startPunct'], 'ŸŠ®°µ»')).repeat(2),
  // 3-byte South Asian scripts read as Windows-1252
  'à[²µ¹¼½¾]',
  // MacRoman mojibake
  '√[±∂†≠®™´≤≥¥µø]',
  '≈[°¢]',
  '‚Ä[ìîïòôúùû†°¢π]',
  '‚[âó][àä°ê]',
  // Windows-1251 mojibake: of U+2000..U+203F, of Latin-1 / Cyrillic (needs 3 characters), and on top of
  // Latin-1 mojibake of Windows-1252 punctuation (with a Latin letter or space after)
  'вЂ',
  '[ВГРС]' + oneOf(['c1', 'bad', 'startPunct', 'endPunct', 'currency'], '°µ') + '[ВГРС]',
  'ГўВЂВ[^\\n][A-Za-z ]',
  // "à", "á" and U+00A0 in Windows-1252 mojibake; "Ã"/"Â" before a space
  'Ã[\\u00a0¡]',
  `[a-z][${PY_ISSPACE}]?[ÃÂ] `,
  '^[ÃÂ] ',
  // "Â" before the character it was meant to be followed by, in ordinary punctuation
  oneOf(['endPunct'], 'a-z.,?!') + 'Â' + oneOf(['startPunct', 'endPunct'], ' '),
  // Windows-1253 (Greek) mojibake of U+2000..U+203F and of Latin-1 / Greek
  'β€[™\\u00a0Ά\\u00ad®°]',
  '[ΒΓΞΟ]' + oneOf(['c1', 'bad', 'startPunct', 'endPunct', 'currency'], '°') + '[ΒΓΞΟ]',
  // Windows-1257 mojibake of U+2000..U+203F
  'ā€',
];
const BADNESS = new RegExp(BADNESS_RULES.join('|'), 'u');

/** Whether the text holds a character sequence that is far likelier mojibake than intended. */
export function looksLikeMojibake(text: string): boolean {
  return BADNESS.test(text);
}

// Runs that look like UTF-8 read through a code page (a lead character + continuation characters),
// for lines that contain good text as well as mojibake. The classes come from the code pages ftfy
// considers here (Latin-1 and its sloppy Windows pages): which characters bytes 0xC2..0xDF (2-byte
// leads), 0xE0..0xEF (3-byte leads), 0xF0/0xF3 (4-byte leads) and 0x80..0xBF (continuations) become.
// A space may stand for 0xA0. A run must not follow a continuation character (that would fix the tail
// of a garble); here common punctuation such as “ ” – … does not count as one.
const CLUE_PAGES = CODE_PAGES.slice(0, 7);
function charsOfBytes(bytes: number[], except = ''): string {
  const set = new Set<string>();
  for (const page of CLUE_PAGES) for (const b of bytes) set.add(page.chars[b]!);
  for (const ch of except) set.delete(ch);
  return [...set].map((ch) => '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0')).join('');
}
const range = (lo: number, hi: number) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
const LEAD2 = charsOfBytes(range(0xc2, 0xdf));
const LEAD3 = charsOfBytes(range(0xe0, 0xef));
const LEAD4 = charsOfBytes([0xf0, 0xf3]);
const CONT = charsOfBytes(range(0x80, 0xbf)) + ' ';
const CONT_STRICT = charsOfBytes(range(0x80, 0xbf), '–—―‘’‚“”„•…');
const UTF8_RUN_SRC = `(?<![${CONT_STRICT}])(?:[${LEAD2}][${CONT}]|[${LEAD3}][${CONT}]{2}|[${LEAD4}][${CONT}]{3})+`;
const HAS_UTF8_RUN = new RegExp(UTF8_RUN_SRC);
const UTF8_RUN = new RegExp(UTF8_RUN_SRC, 'g');

// ---------- fix_encoding ----------
const NON_ASCII = /[^\x00-\x7f]/;
const C1_RE = /[\u0080-\u009f]/g;
const fixC1Controls = (text: string) => text.replace(C1_RE, (c) => BYTE_TO_CP1252[c.charCodeAt(0)]!);

/** One round of ftfy's fix_encoding; returns the text unchanged when there is nothing (more) to do. */
function fixEncodingOnce(text: string): string {
  if (!NON_ASCII.test(text) || !looksLikeMojibake(text)) return text;
  // UTF-8 read through a single-byte code page: the whole line must re-encode and then decode.
  for (const page of CODE_PAGES) {
    let bin = encodeIn(page, text);
    if (bin === null) continue;
    // MacRoman is left out: there an en dash before a space looks like 0xD0 0x20.
    if (page !== MACROMAN) bin = restoreByteA0(bin);
    if (page.sloppy) bin = bin.replace(LOST_BYTES, '\xef\xbf\xbd');
    const decoded = decodeUtf8(bin);
    if (decoded !== null) return decoded;
  }
  // Mojibake embedded in good text: fix each run that is itself flagged.
  if (HAS_UTF8_RUN.test(text)) {
    const fixed = text.replace(UTF8_RUN, (run) => (run.length < text.length && looksLikeMojibake(run) ? fixEncoding(run) : run));
    if (fixed !== text) return fixed;
  }
  // Otherwise C1 controls are Windows-1252 read as Latin-1 (ftfy tries the strict codec on Latin-1
  // text first, then this sloppy form: the result is the same).
  return fixC1Controls(text);
}

/** ftfy's fix_encoding: mojibake undone until nothing changes. */
function fixEncoding(text: string): string {
  for (let round = 0; round < 16; round++) {
    const next = fixEncodingOnce(text);
    if (next === text) break;
    text = next;
  }
  return text;
}

// ---------- the other fixers ----------
const HTML_ENTITY_RE = /&#?[0-9A-Za-z]{1,24};/g;
/** ftfy's unescape_html for one `&...;`. */
function unescapeEntity(m: string): string {
  if (m[1] === '#') {
    // A numeric reference counts only when html.unescape consumes it to the ";" ("&#12a;" stays).
    const u = pythonHtmlUnescape(m);
    return u.includes(';') ? m : u;
  }
  const named = decodeHTML(m, DecodingMode.Strict);
  if (named !== m) return named;
  // The all-caps form of an all-lowercase entity name, when that form means nothing else to HTML.
  const lower = m.toLowerCase();
  if (m === lower.toUpperCase() && m !== lower && pythonHtmlUnescape(m) === m) {
    const ch = decodeHTML(lower, DecodingMode.Strict);
    if (ch !== lower) return ch.toUpperCase();
  }
  return m;
}

/** ftfy's fix_latin_ligatures (not NFKC: ﬅ is "ſt"). */
const LIGATURES: Record<string, string> = {
  Ĳ: 'IJ', ĳ: 'ij', ŉ: 'ʼn', Ǳ: 'DZ', ǲ: 'Dz', ǳ: 'dz', Ǆ: 'DŽ', ǅ: 'Dž', ǆ: 'dž', Ǉ: 'LJ', ǈ: 'Lj', ǉ: 'lj',
  Ǌ: 'NJ', ǋ: 'Nj', ǌ: 'nj', ﬀ: 'ff', ﬁ: 'fi', ﬂ: 'fl', ﬃ: 'ffi', ﬄ: 'ffl', ﬅ: 'ſt', ﬆ: 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'g');
const WIDTH_RE = /[\uff01-\uffef\u3000]/g;
const CONTROL_RE = /[\u0000-\u0008\u000b\u000e-\u001f\u007f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
/** ANSI "ESC [ digits/; letter"; Python's \d is any decimal digit. */
const TERMINAL_ESCAPE_RE = /\u001b\[(?:\p{Nd}|;)*[a-zA-Z]/gu;

/** ftfy's fixers, in its order, on one line, until a round changes nothing. */
function fixSegment(text: string, unescapeHtml: boolean): string {
  for (let round = 0; round < 16; round++) {
    const before = text;
    if (unescapeHtml) text = text.replace(HTML_ENTITY_RE, unescapeEntity);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = text.replace(LIGATURE_RE, (c) => LIGATURES[c]!);
    text = text.replace(WIDTH_RE, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
    text = text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
    text = text.replace(/\r\n/g, '\n').replace(/[\r\u2028\u2029\u0085]/g, '\n');
    text = text.replace(LONE_SURROGATE_RE, '\ufffd');
    text = text.replace(TERMINAL_ESCAPE_RE, '');
    text = text.replace(CONTROL_RE, '');
    text = text.normalize('NFC');
    if (text === before) break;
  }
  return text;
}

/** ftfy's limit on one segment when a line is longer. */
const MAX_SEGMENT = 1_000_000;

/** ftfy.fix_text with its default settings. */
export function fixText(text: string): string {
  let out = '';
  let unescapeHtml = true;
  for (let pos = 0; pos < text.length; ) {
    const lineEnd = text.indexOf('\n', pos) + 1 || text.length;
    const end = Math.min(lineEnd, pos + MAX_SEGMENT);
    const segment = text.slice(pos, end);
    // "auto": from the first line with a "<" on, the text may be HTML, whose entities are left alone.
    if (segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
    pos = end;
  }
  return out;
}

// ---------- Python html.unescape ----------
const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g;

function isInvalidCodepoint(n: number): boolean {
  return (
    (n >= 0x1 && n <= 0x8) ||
    n === 0xb ||
    (n >= 0xe && n <= 0x1f) ||
    (n >= 0x7f && n <= 0x9f) ||
    (n >= 0xfdd0 && n <= 0xfdef) ||
    (n & 0xfffe) === 0xfffe // U+xxFFFE / U+xxFFFF in every plane
  );
}

function numericRef(body: string): string {
  const hex = body[1] === 'x' || body[1] === 'X';
  const digits = body.slice(hex ? 2 : 1).replace(/;$/, '');
  const stripped = digits.replace(/^0+/, '') || '0';
  // Anything longer than 7 significant digits is beyond U+10FFFF in both bases.
  const num = stripped.length > 7 ? Infinity : parseInt(stripped, hex ? 16 : 10);
  if (num === 0) return '\ufffd';
  if (num === 0x0d) return '\r';
  if (num >= 0x80 && num <= 0x9f) return BYTE_TO_CP1252[num]!;
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return '\ufffd';
  if (isInvalidCodepoint(num)) return '';
  return String.fromCodePoint(num);
}

/** Python's html.unescape (HTML5 named and numeric character references). */
export function pythonHtmlUnescape(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(CHARREF_RE, (m, body: string) =>
    body[0] === '#' ? numericRef(body) : decodeHTML(m, DecodingMode.Legacy),
  );
}

// ---------- whitespace / case (Python semantics) ----------
const WS_RUN_RE = new RegExp(`[${PY_WS}]+`, 'g');
const STRIP_RE = new RegExp(`^[${PY_ISSPACE}]+|[${PY_ISSPACE}]+$`, 'g');
export const PY_WHITESPACE_CLASS = PY_WS;

const pyStrip = (s: string) => s.replace(STRIP_RE, '');
/** Python str.lower() = full Unicode lowercasing incl. the Final_Sigma rule, as toLowerCase(). */
const pyLower = (s: string) => s.toLowerCase();

/** The exact string CLIP regex-splits and BPE-encodes. */
export function cleanClipText(text: string): string {
  let t = fixText(text);
  t = pyStrip(pythonHtmlUnescape(pythonHtmlUnescape(t)));
  t = pyStrip(t.replace(WS_RUN_RE, ' '));
  return pyLower(t);
}

// ---------- special tokens typed into a prompt ----------
/** CLIP's end token. Typed into a prompt it is read as that token, and the model reads nothing after it. */
export const CLIP_END_TOKEN_TEXT = '<|endoftext|>';
/** CLIP's start token; typed into a prompt it is read as that token, not as words. */
export const CLIP_START_TOKEN_TEXT = '<|startoftext|>';

/**
 * Whether CLIP reads nothing of a prompt: it cleans to nothing, or nothing but start tokens comes
 * before its first end token ("<|endoftext|> a cat"). Where such a text sits right at the start of the
 * cleaned prompt (spaces aside) CLIP's split always takes it as the special token, so no tokenizer is
 * needed to tell. The engine's tokenizer refuses these prompts as it refuses empty ones.
 */
export function clipReadsNothing(text: string): boolean {
  const cleaned = cleanClipText(text);
  const end = cleaned.indexOf(CLIP_END_TOKEN_TEXT);
  const before = end < 0 ? cleaned : cleaned.slice(0, end);
  return pyStrip(before.split(CLIP_START_TOKEN_TEXT).join('')) === '';
}
