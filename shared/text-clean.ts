// Text cleaning done by OpenAI CLIP before BPE (simple_tokenizer.py):
//   basic_clean(text) = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
//   whitespace_clean(text) = re.sub(r'\s+', ' ', text).strip()
//   cleaned = whitespace_clean(basic_clean(text)).lower()
//
// There is no ftfy for JavaScript, so `fixText` implements the subset of ftfy 6.3 `fix_text`
// (default config) that changes what CLIP tokenizes for realistic prompts, in ftfy's order:
//  1. unescape_html ("auto": skipped when the text contains "<"): `&name;` / `&#N;` entities that
//     end with ";". Matters for triple-escaped text (CLIP unescapes twice more afterwards).
//  2. remove_terminal_escapes: ANSI "ESC [ digits/; letter" sequences are deleted.
//  3. fix_encoding, reduced to its core: UTF-8 that was decoded as Latin-1 / Windows-1252
//     ("cafÃ©", "â€œ") is re-decoded when a lead char + continuation chars form a valid UTF-8
//     sequence; repeated to undo double mojibake. ftfy gates this with a "badness" heuristic
//     over the whole text; we apply it per UTF-8 sequence, which is the same for mojibake and
//     leaves ordinary accented text alone (a Latin-1 letter followed by a letter is never a
//     valid sequence). Not done: restore_byte_a0, replace_lossy_sequences, other codecs
//     (MacRoman, cp437, ...).
//  4. fix_c1_controls: leftover U+0080..U+009F become their Windows-1252 characters.
//  5. fix_latin_ligatures: ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ, Ĳ ĳ ŉ, Ǆ..ǌ, Ǳ..ǳ → their letters (NFKC of each).
//  6. fix_character_width: fullwidth/halfwidth forms U+FF01..U+FFEF → NFKC; U+3000 → space.
//  7. uncurl_quotes: U+2018..U+201B and U+02BC → ', U+201C..U+201F → ".
//  8. fix_line_breaks: \r\n, \r, U+2028, U+2029, U+0085 → \n.
//  9. fix_surrogates: lone UTF-16 surrogates → U+FFFD.
// 10. remove_control_chars: U+0000..08, 0B, 0E..1F, 7F, U+206A..206F, U+FEFF, U+FFF9..FFFC removed.
// 11. NFC normalization.
// Why these: they are the ftfy steps whose effect survives CLIP's later unescape / whitespace
// collapse / lower(); the reference vectors exercise 3, 4, 5, 6, 7, 8, 11 (entries 92, 93,
// 123–127 differ from the uncleaned text). Not done: ftfy's uppercase-entity variants
// (&EACUTE;), the full badness heuristic, and explanation output.
//
// After ftfy, `pythonHtmlUnescape` reproduces Python's html.unescape (named entities through the
// `entities` package's HTML5 table with the same longest-legacy-prefix rule; numeric references
// with Python's replacement tables), and whitespace/lower() follow Python semantics
// (White_Space set for \s, str.isspace for strip; lower() with the final-sigma rule, as in JS).

import { decodeHTML, DecodingMode } from 'entities';

// ---------- Windows-1252 ----------
// WHATWG windows-1252 (= ftfy's "sloppy-windows-1252"): bytes 0x81, 0x8D, 0x8F, 0x90, 0x9D stay C1,
// every other byte outside 0x80..0x9F is Latin-1. Spelled out because Node 20's
// TextDecoder('windows-1252') does not decode 0x80..0x9F correctly.
const CP1252_80_9F = [
  0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d, 0x8f,
  0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d, 0x17e, 0x178,
];
const BYTE_TO_CP1252: string[] = Array.from({ length: 256 }, (_, b) =>
  String.fromCharCode(b >= 0x80 && b <= 0x9f ? CP1252_80_9F[b - 0x80]! : b),
);
/** char → byte, for chars that are the Latin-1 or Windows-1252 decoding of a byte. */
const CHAR_TO_BYTE = new Map<string, number>();
for (let b = 0; b < 256; b++) {
  CHAR_TO_BYTE.set(String.fromCharCode(b), b); // latin-1
  CHAR_TO_BYTE.set(BYTE_TO_CP1252[b]!, b); // windows-1252
}
const CONT_CHARS = (() => {
  let s = '';
  for (let b = 0x80; b <= 0xbf; b++) {
    s += String.fromCharCode(b);
    if (BYTE_TO_CP1252[b]!.charCodeAt(0) !== b) s += BYTE_TO_CP1252[b]!;
  }
  return s;
})();
const escClass = (s: string) => s.replace(/[\\\]\[^-]/g, (c) => '\\' + c);
const C = `[${escClass(CONT_CHARS)}]`;
const MOJIBAKE_SEQ = new RegExp(`[\\u00c2-\\u00df]${C}|[\\u00e0-\\u00ef]${C}{2}|[\\u00f0-\\u00f4]${C}{3}`, 'gu');
const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true });

function fixMojibake(text: string): string {
  for (let round = 0; round < 4; round++) {
    const next = text.replace(MOJIBAKE_SEQ, (seq) => {
      const bytes = Uint8Array.from(Array.from(seq, (ch) => CHAR_TO_BYTE.get(ch)!));
      try {
        return UTF8_STRICT.decode(bytes);
      } catch {
        return seq; // overlong / surrogate / out-of-range: not mojibake
      }
    });
    if (next === text) return text;
    text = next;
  }
  return text;
}

// ---------- ftfy subset ----------
const LIGATURE_RE = /[\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]/g;
const WIDTH_RE = /[\uff01-\uffef\u3000]/g;
const CONTROL_RE = /[\u0000-\u0008\u000b\u000e-\u001f\u007f\u206a-\u206f\ufeff\ufff9-\ufffc]/g;
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

export function fixText(text: string): string {
  if (!text.includes('<')) {
    // ftfy only replaces complete `&name;` entities (no legacy prefixes) and `&#...;`.
    text = text.replace(/&#?[0-9A-Za-z]{1,24};/g, (m) =>
      m[1] === '#' ? pythonHtmlUnescape(m) : decodeHTML(m, DecodingMode.Strict),
    );
  }
  text = text.replace(/\u001b\[((?:\d|;)*)([a-zA-Z])/g, '');
  text = fixMojibake(text);
  text = text.replace(/[\u0080-\u009f]/g, (c) => BYTE_TO_CP1252[c.charCodeAt(0)]!);
  text = text.replace(LIGATURE_RE, (c) => c.normalize('NFKC'));
  text = text.replace(WIDTH_RE, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
  text = text.replace(/[\u02bc\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
  text = text.replace(/\r\n/g, '\n').replace(/[\r\u2028\u2029\u0085]/g, '\n');
  text = text.replace(LONE_SURROGATE_RE, '\ufffd');
  text = text.replace(CONTROL_RE, '');
  return text.normalize('NFC');
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
/** `regex`-module \s (Unicode White_Space). */
const PY_WS = '\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
/** str.isspace() also covers U+001C..U+001F. */
const PY_STRIP = `${PY_WS}\\u001c-\\u001f`;
const WS_RUN_RE = new RegExp(`[${PY_WS}]+`, 'g');
const STRIP_RE = new RegExp(`^[${PY_STRIP}]+|[${PY_STRIP}]+$`, 'g');
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
