// Reading bytes that must be UTF-8 (policy documents, batch files): strictly, saying where they are not.

const UTF8_FATAL = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const UTF8_LOSSY = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * Bytes as UTF-8 text, never with U+FFFD in place of a broken byte (the text would not be what its
 * writer wrote); or what is wrong, naming the first byte that is not UTF-8 (`offset`, from 0). A
 * byte-order mark is kept, for the caller to take off.
 */
export function decodeUtf8Strictly(bytes: Uint8Array): { text: string } | { problem: string; offset: number } {
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff)) {
    return { problem: 'UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8', offset: 0 };
  }
  // Mostly-ASCII UTF-16 without a mark is valid UTF-8 byte for byte ("a" is 61 00): decoded, it would
  // read as text with a NUL after every character, and fail later as something else (not JSON, no rule).
  const utf16 = utf16WithoutMark(bytes);
  if (utf16) return { problem: `UTF-16 (${utf16}, without a byte-order mark: every other byte is 0), not UTF-8`, offset: 0 };
  try {
    return { text: UTF8_FATAL.decode(bytes) };
  } catch {
    // Where, below.
  }
  // Before its first replacement a lossy decoding is exact: each code point stands for its own UTF-8
  // bytes. A U+FFFD the bytes themselves spell (EF BF BD) is the writer's, not a replacement.
  let offset = 0;
  for (const ch of UTF8_LOSSY.decode(bytes)) {
    if (ch === '\uFFFD' && !(bytes[offset] === 0xef && bytes[offset + 1] === 0xbf && bytes[offset + 2] === 0xbd)) break;
    offset += Buffer.byteLength(ch, 'utf8');
  }
  const byte = bytes[offset];
  return { problem: `not UTF-8 (byte ${offset}${byte === undefined ? '' : `, 0x${byte.toString(16).toUpperCase().padStart(2, '0')},`} is not part of a UTF-8 character)`, offset };
}

/**
 * Which UTF-16 `bytes` look like when they carry no byte-order mark: NULs on one parity only, in at
 * least a third of that parity's places among the first 4 KiB, as text that is mostly Latin script gives.
 * Text written as UTF-8 has next to no NULs (U+0000 is valid, but no editor writes it); a binary file
 * would have them on both parities.
 */
function utf16WithoutMark(bytes: Uint8Array): 'little-endian' | 'big-endian' | undefined {
  const n = Math.min(bytes.length, 4096) & ~1;
  if (n < 4) return undefined;
  let even = 0;
  let odd = 0;
  for (let i = 0; i < n; i += 2) {
    if (bytes[i] === 0) even++;
    if (bytes[i + 1] === 0) odd++;
  }
  const pairs = n / 2;
  if (odd * 3 >= pairs && even === 0) return 'little-endian';
  if (even * 3 >= pairs && odd === 0) return 'big-endian';
  return undefined;
}
