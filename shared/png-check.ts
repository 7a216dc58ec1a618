// A whole PNG file checked for what decoding it needs, without decoding it: the chunk layout and
// CRCs, the palette, and the pixel data inflated (bounded by the size the header declares) to its
// exact length with a known filter byte at the start of every row, and in a palette image whose
// palette is shorter than its bit depth can index, every index unfiltered and read. Both sides run it: the API on an
// uploaded init image when a generation names it (a broken upload is a 400 then, not a failed job on a
// GPU), and the engine's decoder before it hands the file to fast-png. So what the API accepts, the
// check the worker runs accepts too.

import { crc32, createInflateRaw, deflateSync, inflateRawSync, type ZlibOptions } from 'node:zlib';
import { readPngHeader, type PngHeader } from './image-header.ts';

/** The chunks decoding reads: the header, the palette and its transparency, the pixel data, the end. */
export const PNG_DECODED_CHUNKS: ReadonlySet<string> = new Set(['IHDR', 'PLTE', 'tRNS', 'IDAT', 'IEND']);

/**
 * Inflated bytes allowed past the exact size: some encoders leave stray bytes after the rows, which
 * decoders ignore; a bomb needs many times the declared size to hurt.
 */
export const PNG_INFLATE_SLACK_BYTES = 65_536;

/** Adam7's seven passes: x and y start, x and y step. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
] as const;

/** One run of rows in the inflated stream: the whole image, or one Adam7 pass. */
export interface PngPass {
  /** Bytes per row, the filter byte included. */
  rowBytes: number;
  rows: number;
  /** Pixels per row (the row's bytes round up to whole bytes). */
  pixels: number;
  /** Where the pass's first pixel sits in the image, and the steps between its pixels. */
  x0: number;
  y0: number;
  dx: number;
  dy: number;
}

/** The rows the inflated pixel data holds, in stream order (empty Adam7 passes left out). */
export function pngPasses(header: PngHeader): PngPass[] {
  const { width, height, channels, bitDepth, interlaced } = header;
  const rowBytes = (w: number) => Math.ceil((w * channels * bitDepth) / 8) + 1;
  if (!interlaced) return [{ rowBytes: rowBytes(width), rows: height, pixels: width, x0: 0, y0: 0, dx: 1, dy: 1 }];
  const passes: PngPass[] = [];
  for (const [x0, y0, dx, dy] of ADAM7) {
    const pw = width > x0 ? Math.ceil((width - x0) / dx) : 0;
    const ph = height > y0 ? Math.ceil((height - y0) / dy) : 0;
    if (pw > 0 && ph > 0) passes.push({ rowBytes: rowBytes(pw), rows: ph, pixels: pw, x0, y0, dx, dy });
  }
  return passes;
}

/** The exact size of the inflated pixel data the header declares. */
export function pngRawBytes(header: PngHeader): number {
  return pngPasses(header).reduce((sum, p) => sum + p.rowBytes * p.rows, 0);
}

/** A file whose layout reads: its header, the chunks decoding needs (bytes and CRCs as they were), and its pixel data still deflated. */
export interface PngLayout {
  header: PngHeader;
  /** The signature and the decoded chunks, in file order: what a decoder needs of the file. */
  decodable: Uint8Array;
  /** The IDAT payloads joined: a zlib stream. */
  deflated: Uint8Array;
  /** The PLTE chunk's entries (0 when it has none, or when a grey image's PLTE is ignored). */
  paletteEntries: number;
  /** A grey or RGB image's tRNS colour key in sample units (1 or 3 values), read here: `decodable` leaves that chunk out. */
  colourKey?: number[];
}

export type PngLayoutCheck = { ok: true; layout: PngLayout } | { ok: false; reason: string; format?: string };
export type PngFileCheck =
  | { ok: true; header: PngHeader; decodable: Uint8Array; colourKey?: readonly number[] }
  | { ok: false; reason: string; format?: string };

/**
 * The most chunks a file may have (all kinds). Each costs a few µs to walk here and several more in
 * fast-png, so a file of ~700 000 empty IDAT chunks (8 MiB) held the API's event loop for seconds and
 * the worker for ~11 s. No encoder comes near the bound: libpng writes IDATs of 8 KiB by default, PNGJ
 * 32 KiB, Pillow up to 64 KiB, fast-png a single one, so a file at the 32 MiB limit
 * (MAX_IMAGE_FILE_BYTES) has at most ~4 100 chunks; an encoder that flushes every row writes one IDAT a
 * row, at most 4 096 (7 680 interlaced) for a square image of the 16 Mpx limit. 20 000 leaves room for
 * tall images written that way and for metadata; it is counted before the full read (chunkCountOver).
 */
export const PNG_MAX_CHUNKS = 20_000;

/**
 * Reads the file's chunks up to IEND. Refuses: more than PNG_MAX_CHUNKS chunks, a chunk that runs past
 * the end of the file, a decoded chunk whose CRC is wrong, a second IHDR, a critical chunk PNG does not
 * define, a second PLTE or one after IDAT, a tRNS the decoder refuses (before the palette or longer
 * than it, in an image with alpha, or of an odd length), an IEND with data, no IDAT, IDAT chunks that
 * are not consecutive, no IEND, and a palette image without a palette or with more than 256 entries.
 * A PLTE in a grey image (colour type 0 or 4) is ignored, as libpng ignores it: PNG forbids it there,
 * and decoding through it turned grey pixels into palette colours.
 */
export function readPngLayout(bytes: Uint8Array, opts: { maxPixels?: number } = {}): PngLayoutCheck {
  const headerCheck = readPngHeader(bytes, opts);
  if (!headerCheck.ok) return headerCheck;
  const header = headerCheck.header;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const kept: Uint8Array[] = [bytes.subarray(0, 8)];
  const idat: Uint8Array[] = [];
  let idatEnded = false;
  let palette = 0;
  let colourKey: number[] | undefined;
  let ended = false;
  let firstIdat = -1; // where the IDAT goes in `kept`
  let firstIdatChunk: Uint8Array | undefined;
  if (chunkCountOver(bytes, dv, PNG_MAX_CHUNKS)) {
    return { ok: false, reason: `unsupported PNG: more than ${PNG_MAX_CHUNKS} chunks (encoders write a few, their pixel data in pieces of 8–64 KiB; save the image again with any image editor)` };
  }
  for (let off = 8; off < bytes.length; ) {
    if (off + 12 > bytes.length) return fail('the file ends inside a chunk header (cut short?)');
    const length = dv.getUint32(off);
    const type = String.fromCharCode(bytes[off + 4]!, bytes[off + 5]!, bytes[off + 6]!, bytes[off + 7]!);
    if (off + 12 + length > bytes.length) return fail(`chunk ${JSON.stringify(type)} runs past the end of the file (cut short?)`);
    // Colour types 0 and 4 have no colour bit (2): a PLTE there is skipped like an unknown ancillary chunk.
    const paletteIgnored = type === 'PLTE' && (header.colourType & 2) === 0;
    // The header was read from the first chunk: another IHDR would be the one a decoder uses (its
    // size never checked). A chunk whose name starts with a capital is critical: one a decoder does
    // not know cannot be skipped (PNG spec 5.4), and Apple's CgBI files are no PNG a decoder reads.
    if (type === 'IHDR' && off !== 8) return fail('more than one header (IHDR chunk)');
    if (/^[A-Z]/.test(type) && !CRITICAL_CHUNKS.has(type)) return fail(`a critical chunk ${JSON.stringify(type)} that PNG does not define (not a standard PNG)`);
    if (type === 'PLTE' && !paletteIgnored && (palette > 0 || idat.length > 0)) return fail(palette > 0 ? 'more than one palette (PLTE chunk)' : 'a palette (PLTE chunk) after the pixel data');
    // What the decoder refuses of a transparency chunk, and an IEND with data.
    if (type === 'tRNS') {
      if (header.colourType === 4 || header.colourType === 6) return fail(`a transparency chunk (tRNS) in an image with an alpha channel (colour type ${header.colourType})`);
      if (header.colourType === 3 && length > palette) return fail(palette === 0 ? 'a transparency chunk (tRNS) before the palette (PLTE chunk)' : `a transparency chunk (tRNS) of ${length} entries for a palette of ${palette}`);
      // Grey and RGB: a colour key of 2-byte samples (grey: 1, RGB: 3; as before, a shorter one keys
      // nothing and the first values of a longer one are the key). It is read here and not handed to
      // fast-png, which refuses more values than the image has pixels: a valid 1×1 or 2×1 RGB image
      // with its 3-value key failed as "corrupt".
      if (header.colourType === 0 || header.colourType === 2) {
        if (length % 2 !== 0) return fail(`a transparency chunk (tRNS) of ${length} bytes (its values are 2 bytes each)`);
        const values = header.colourType === 0 ? 1 : 3;
        colourKey = length >= 2 * values ? Array.from({ length: values }, (_, i) => dv.getUint16(off + 8 + 2 * i)) : undefined;
      }
    }
    if (type === 'IEND' && length !== 0) return fail(`an IEND chunk that holds ${length} bytes (it holds none)`);
    if (PNG_DECODED_CHUNKS.has(type) && !paletteIgnored) {
      if (crc32(bytes.subarray(off + 4, off + 8 + length)) !== dv.getUint32(off + 8 + length)) {
        return fail(`chunk ${JSON.stringify(type)} fails its CRC check (the file is damaged)`);
      }
      if (type === 'IDAT') {
        if (idat.length === 0) [firstIdat, firstIdatChunk] = [kept.length, bytes.subarray(off, off + 12 + length)];
      } else if (!(type === 'tRNS' && header.colourType !== 3)) kept.push(bytes.subarray(off, off + 12 + length));
    }
    if (type === 'IDAT') {
      if (idatEnded) return fail('its IDAT chunks are not consecutive');
      idat.push(bytes.subarray(off + 8, off + 8 + length));
    } else if (idat.length > 0) idatEnded = true;
    if (type === 'PLTE' && !paletteIgnored) {
      if (length % 3 !== 0 || length === 0) return fail(`a palette of ${length} bytes (not a whole number of RGB entries)`);
      palette = length / 3;
    }
    off += 12 + length;
    if (type === 'IEND') {
      ended = true;
      break;
    }
  }
  if (!ended) return fail('no IEND chunk (the file is cut short)');
  if (idat.length === 0) return fail('no pixel data (IDAT chunk)');
  if (header.colourType === 3) {
    if (palette === 0) return fail('a palette image without a palette (PLTE chunk)');
    // More entries than the bit depth can index is allowed in practice (libpng and fast-png read it).
    if (palette > 256) return fail(`a palette of ${palette} entries (at most 256)`);
  }
  // The pixel data handed on as one IDAT: fast-png takes several µs per chunk (20 000 small ones took
  // it over a second), and a single chunk stays byte for byte as it was.
  const deflated = Buffer.concat(idat);
  kept.splice(firstIdat, 0, idat.length === 1 ? firstIdatChunk! : pngChunkOf('IDAT', deflated));
  return { ok: true, layout: { header, decodable: Buffer.concat(kept), deflated, paletteEntries: palette, ...(colourKey ? { colourKey } : {}) } };
}

/**
 * Whether the file has more than `max` chunks up to IEND, from their lengths alone: a walk of a few
 * µs per thousand chunks, done before the full read (a CRC and more per chunk), so such a file is
 * refused in about a millisecond.
 */
function chunkCountOver(bytes: Uint8Array, dv: DataView, max: number): boolean {
  let n = 0;
  for (let off = 8; off + 12 <= bytes.length; off += 12 + dv.getUint32(off)) {
    if (++n > max) return true;
    if (bytes[off + 4] === 0x49 && bytes[off + 5] === 0x45 && bytes[off + 6] === 0x4e && bytes[off + 7] === 0x44) break; // IEND
  }
  return false;
}

/** One chunk: length, type, data and the CRC of type and data. */
export function pngChunkOf(type: string, data: Uint8Array): Buffer {
  const c = Buffer.alloc(12 + data.length);
  c.writeUInt32BE(data.length, 0);
  c.write(type, 4, 'latin1');
  c.set(data, 8);
  c.writeUInt32BE(crc32(c.subarray(4, 8 + data.length)), 8 + data.length);
  return c;
}

/** The chunks PNG defines as critical: every other chunk whose name starts with a capital is refused. */
const CRITICAL_CHUNKS: ReadonlySet<string> = new Set(['IHDR', 'PLTE', 'IDAT', 'IEND']);

function fail(what: string): { ok: false; reason: string } {
  return { ok: false, reason: `corrupt PNG: ${what}` };
}

/**
 * Raw inflate past the 2-byte zlib header, as decoders do it: a stream whose Adler-32 trailer is wrong
 * still decodes (its presence is checked, not its value). A stream that never reaches its last block
 * is refused (fast-png refuses it too). `info` reports how much of the input the stream took.
 */
function inflateOptions(header: PngHeader): ZlibOptions & { info: true } {
  return { maxOutputLength: pngRawBytes(header) + PNG_INFLATE_SLACK_BYTES + 1, info: true };
}
type InflateInfo = { buffer: Buffer; engine: { bytesWritten: number } };
const NO_CHECKSUM = 'corrupt PNG: its compressed pixel data has no checksum after its last block (cut short?)';

/**
 * Reads inflated pixel data as it comes, in pieces of any size: each row must start with a filter
 * type PNG defines (0–4), and the total must be the header's size (a little more is ignored, as
 * decoders do). A palette image whose palette is shorter than its bit depth can index also has its
 * rows unfiltered, one row held at a time, and every index read: one past the palette is refused, as
 * the decoder refuses it. `feed` and `end` say why not, or null.
 */
function pixelStreamChecker(header: PngHeader, paletteEntries: number) {
  const expected = pngRawBytes(header);
  const { width, height } = header;
  const passes = pngPasses(header);
  const indices = header.colourType === 3 && paletteEntries < 2 ** header.bitDepth ? paletteIndexChecker(header, paletteEntries, passes) : null;
  let pass = 0, row = 0, nextRow = 0, total = 0;
  return {
    feed(piece: Uint8Array): string | null {
      const end = total + piece.length;
      // Before the filter-byte walk below, whose pass count runs past the last pass once the last
      // row's filter byte is seen: that row's pixels may still be in later pieces.
      if (indices) {
        const why = indices.feed(piece.subarray(0, Math.max(0, Math.min(piece.length, expected - total))));
        if (why) return why;
      }
      while (pass < passes.length && nextRow < end) {
        const filter = piece[nextRow - total]!;
        if (filter > 4) return `corrupt PNG: unknown row filter ${filter} (the file is damaged)`;
        nextRow += passes[pass]!.rowBytes;
        if (++row === passes[pass]!.rows) [pass, row] = [pass + 1, 0];
      }
      total = end;
      if (total > expected + PNG_INFLATE_SLACK_BYTES) return `corrupt PNG: its pixel data inflates to more than the ${expected} bytes its ${width}×${height} header declares`;
      return null;
    },
    end(): string | null {
      return total < expected ? `corrupt PNG: its pixel data holds ${total} of the ${expected} bytes its ${width}×${height} header declares (cut short?)` : null;
    },
  };
}

/**
 * The palette part of the stream check: rows are gathered whole, unfiltered against the row above (a
 * pass starts from a row of zeros; a palette pixel is one byte or less, so the filters' left neighbour
 * is the byte before), and their indices read at the bit depth, padding bits left out. Bytes past the
 * declared size never reach it.
 */
function paletteIndexChecker(header: PngHeader, paletteEntries: number, passes: PngPass[]) {
  const depth = header.bitDepth;
  const widest = Math.max(...passes.map((p) => p.rowBytes)) - 1;
  let cur = new Uint8Array(widest), prev = new Uint8Array(widest);
  let pass = 0, row = 0, filled = -1; // -1: the filter byte is next
  let filter = 0;
  return {
    feed(piece: Uint8Array): string | null {
      let i = 0;
      while (i < piece.length && pass < passes.length) {
        const n = passes[pass]!.rowBytes - 1;
        if (filled < 0) {
          filter = piece[i++]!;
          filled = 0;
          if (filter > 4) return null; // the filter-byte check names it
          continue;
        }
        const take = Math.min(n - filled, piece.length - i);
        cur.set(piece.subarray(i, i + take), filled);
        filled += take;
        i += take;
        if (filled < n) break;
        unfilterRow(filter, cur, prev, n);
        const bad = firstIndexBeyond(cur, passes[pass]!.pixels, depth, paletteEntries);
        if (bad !== null) return `corrupt PNG: palette index ${bad} in a palette of ${paletteEntries} entries (the file is damaged)`;
        [cur, prev] = [prev, cur];
        filled = -1;
        if (++row === passes[pass]!.rows) {
          [pass, row] = [pass + 1, 0];
          prev.fill(0);
        }
      }
      return null;
    },
  };
}

/** PNG's five row filters undone in place, for one byte per pixel or less (the left neighbour is the byte before). */
function unfilterRow(filter: number, cur: Uint8Array, prev: Uint8Array, n: number): void {
  switch (filter) {
    case 1:
      for (let i = 1; i < n; i++) cur[i] = (cur[i]! + cur[i - 1]!) & 0xff;
      break;
    case 2:
      for (let i = 0; i < n; i++) cur[i] = (cur[i]! + prev[i]!) & 0xff;
      break;
    case 3:
      for (let i = 0; i < n; i++) cur[i] = (cur[i]! + (((i > 0 ? cur[i - 1]! : 0) + prev[i]!) >> 1)) & 0xff;
      break;
    case 4:
      for (let i = 0; i < n; i++) {
        const a = i > 0 ? cur[i - 1]! : 0, b = prev[i]!, c = i > 0 ? prev[i - 1]! : 0;
        const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        cur[i] = (cur[i]! + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c)) & 0xff;
      }
      break;
  }
}

/** Sample `i` of a row of one-sample pixels packed big-endian at `depth` bits (1, 2, 4 or 8). */
function sampleAt(row: Uint8Array, i: number, depth: number): number {
  const bit = i * depth;
  return (row[bit >> 3]! >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
}

/** The first of a row's `pixels` indices that is not below `entries`, or null. */
function firstIndexBeyond(row: Uint8Array, pixels: number, depth: number, entries: number): number | null {
  for (let p = 0; p < pixels; p++) {
    const index = sampleAt(row, p, depth);
    if (index >= entries) return index;
  }
  return null;
}

/** Why the inflated pixel data does not fit the header, or `null` when it does. */
function checkInflated(header: PngHeader, paletteEntries: number, inflated: Uint8Array): string | null {
  const rows = pixelStreamChecker(header, paletteEntries);
  return rows.feed(inflated) ?? rows.end();
}

function inflateFailure(header: PngHeader, e: unknown): string {
  const code = (e as { code?: string }).code;
  if (code === 'ERR_BUFFER_TOO_LARGE') {
    return `corrupt PNG: its pixel data inflates to more than the ${pngRawBytes(header)} bytes its ${header.width}×${header.height} header declares`;
  }
  if (code === 'Z_BUF_ERROR') return 'corrupt PNG: its compressed pixel data ends before its last block (cut short?)';
  return `corrupt PNG: its pixel data does not inflate (${(e as Error).message})`;
}

/**
 * The zlib stream's 2-byte header: deflate (method 8), a window of at most 32 KiB, its check bits
 * right, and no preset dictionary (FDICT, bit 5 of FLG): PNG does not allow one, and the check's raw
 * inflate from byte 2 would not see it while fast-png fails on it (with an empty reason, after the
 * API had taken the file).
 */
function zlibHeaderProblem(deflated: Uint8Array): string | null {
  if (deflated.length < 2) return 'corrupt PNG: its pixel data is empty';
  const [cmf, flg] = [deflated[0]!, deflated[1]!];
  if ((cmf & 0x0f) !== 8 || cmf >> 4 > 7 || ((cmf << 8) | flg) % 31 !== 0) return 'corrupt PNG: its pixel data is not a zlib stream';
  if (flg & 0x20) return 'corrupt PNG: its pixel data needs a preset zlib dictionary (PNG does not allow one)';
  return null;
}

/** The 4-byte Adler-32 after the stream's last block (past the 2-byte zlib header), given how much of the stream inflate took. */
function trailerProblem(deflated: Uint8Array, consumed: number): string | null {
  return deflated.length - 2 - consumed < 4 ? NO_CHECKSUM : null;
}

/** The whole check, synchronously (the engine's decoder). On success, `decodable` is what to decode. */
export function checkPngFileSync(bytes: Uint8Array, opts: { maxPixels?: number } = {}): PngFileCheck {
  const read = readPngLayout(bytes, opts);
  if (!read.ok) return read;
  const { header, deflated, decodable, paletteEntries, colourKey } = read.layout;
  const key = colourKey ? { colourKey } : {};
  const bad = zlibHeaderProblem(deflated);
  if (bad) return { ok: false, reason: bad };
  let info: InflateInfo;
  try {
    info = inflateRawSync(deflated.subarray(2), inflateOptions(header)) as unknown as InflateInfo;
  } catch (error) {
    return { ok: false, reason: inflateFailure(header, error) };
  }
  const why = trailerProblem(deflated, info.engine.bytesWritten) ?? checkInflated(header, paletteEntries, info.buffer);
  if (why) return { ok: false, reason: why };
  // fast-png (8.0) reads an interlaced pass's rows as whole bytes per pixel, so it misreads every
  // interlaced image of 1, 2 or 4 bits (grey or palette): it fails on a filter byte that is really
  // pixels, or decodes garbage. Such a file is handed on deinterlaced, which fast-png reads right.
  if (header.interlaced && header.bitDepth < 8) return { ok: true, header, decodable: deinterlacedSubByte(header, decodable, info.buffer), ...key };
  return { ok: true, header, decodable, ...key };
}

/**
 * The same image without interlacing: each Adam7 pass's rows unfiltered, their pixels put in place in
 * rows of the image's own bit depth (filter 0), and the file rebuilt with IHDR's interlace byte 0 and one
 * IDAT. For 1, 2 and 4 bits a pixel is one sample (grey or palette index), and a filter's left
 * neighbour is the byte before.
 */
function deinterlacedSubByte(header: PngHeader, decodable: Uint8Array, inflated: Uint8Array): Uint8Array {
  const { width, height, bitDepth: depth } = header;
  const outRowBytes = Math.ceil((width * depth) / 8) + 1;
  const out = new Uint8Array(outRowBytes * height); // filter bytes stay 0
  let at = 0;
  for (const pass of pngPasses(header)) {
    const { x0, y0, dx, dy } = pass;
    const n = pass.rowBytes - 1;
    let prev = new Uint8Array(n), cur = new Uint8Array(n);
    for (let r = 0; r < pass.rows; r++) {
      const filter = inflated[at]!;
      cur.set(inflated.subarray(at + 1, at + 1 + n));
      at += pass.rowBytes;
      unfilterRow(filter, cur, prev, n);
      const y = y0 + r * dy;
      for (let i = 0; i < pass.pixels; i++) {
        const bit = (x0 + i * dx) * depth;
        out[y * outRowBytes + 1 + (bit >> 3)]! |= sampleAt(cur, i, depth) << (8 - depth - (bit & 7));
      }
      [prev, cur] = [cur, prev];
    }
  }
  const dv = new DataView(decodable.buffer, decodable.byteOffset, decodable.byteLength);
  const chunk = pngChunkOf;
  const parts: Uint8Array[] = [decodable.subarray(0, 8)];
  let idatWritten = false;
  for (let off = 8; off < decodable.length; ) {
    const length = dv.getUint32(off);
    const type = String.fromCharCode(...decodable.subarray(off + 4, off + 8));
    const data = decodable.subarray(off + 8, off + 8 + length);
    if (type === 'IHDR') {
      const ihdr = Uint8Array.from(data);
      ihdr[12] = 0;
      parts.push(chunk('IHDR', ihdr));
    } else if (type === 'IDAT') {
      // Stored, not compressed: fast-png inflates it at once, and the size is bounded by the header's.
      if (!idatWritten) parts.push(chunk('IDAT', deflateSync(out, { level: 0 })));
      idatWritten = true;
    } else parts.push(decodable.subarray(off, off + 12 + length));
    off += 12 + length;
  }
  return Buffer.concat(parts);
}

/**
 * The whole check, inflating as a stream off the event loop (the API, which serves other requests
 * meanwhile): at most a piece of the pixel data is held at a time, whatever size the header declares.
 */
export async function checkPngFile(bytes: Uint8Array, opts: { maxPixels?: number } = {}): Promise<PngFileCheck> {
  const read = readPngLayout(bytes, opts);
  if (!read.ok) return read;
  const { header, deflated, decodable, paletteEntries, colourKey } = read.layout;
  const bad = zlibHeaderProblem(deflated);
  if (bad) return { ok: false, reason: bad };
  const rows = pixelStreamChecker(header, paletteEntries);
  return new Promise<PngFileCheck>((resolve) => {
    const inflate = createInflateRaw();
    let settled = false;
    const settle = (why: string | null) => {
      if (settled) return;
      settled = true;
      inflate.destroy();
      resolve(why ? { ok: false, reason: why } : { ok: true, header, decodable, ...(colourKey ? { colourKey } : {}) });
    };
    inflate.on('data', (piece: Buffer) => {
      const why = rows.feed(piece);
      if (why) settle(why);
    });
    inflate.on('error', (e) => settle(inflateFailure(header, e)));
    inflate.on('end', () => settle(trailerProblem(deflated, inflate.bytesWritten) ?? rows.end()));
    inflate.end(deflated.subarray(2));
  });
}
