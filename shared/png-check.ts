// A whole PNG file checked for what decoding it needs, without decoding it: the chunk layout and
// CRCs, the palette, and the pixel data inflated (bounded by the size the header declares) to its
// exact length with a known filter byte at the start of every row. Both sides run it: the API on an
// uploaded init image when a generation names it (a broken upload is a 400 then, not a failed job on a
// GPU), and the engine's decoder before it hands the file to fast-png. So what the API accepts, the
// check the worker runs accepts too.
//
// Not checked here (the decoder still refuses them): palette indices beyond the palette, which need
// the rows unfiltered.

import { crc32, createInflateRaw, inflateRawSync, type ZlibOptions } from 'node:zlib';
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
}

/** The rows the inflated pixel data holds, in stream order (empty Adam7 passes left out). */
export function pngPasses(header: PngHeader): PngPass[] {
  const { width, height, channels, bitDepth, interlaced } = header;
  const rowBytes = (w: number) => Math.ceil((w * channels * bitDepth) / 8) + 1;
  if (!interlaced) return [{ rowBytes: rowBytes(width), rows: height }];
  const passes: PngPass[] = [];
  for (const [x0, y0, dx, dy] of ADAM7) {
    const pw = width > x0 ? Math.ceil((width - x0) / dx) : 0;
    const ph = height > y0 ? Math.ceil((height - y0) / dy) : 0;
    if (pw > 0 && ph > 0) passes.push({ rowBytes: rowBytes(pw), rows: ph });
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
}

export type PngLayoutCheck = { ok: true; layout: PngLayout } | { ok: false; reason: string; format?: string };
export type PngFileCheck = { ok: true; header: PngHeader; decodable: Uint8Array } | { ok: false; reason: string; format?: string };

/**
 * Reads the file's chunks up to IEND. Refuses: a chunk that runs past the end of the file, a decoded
 * chunk whose CRC is wrong, no IDAT, IDAT chunks that are not consecutive, no IEND, and a palette image
 * without a palette or with one longer than its bit depth can index.
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
  let ended = false;
  for (let off = 8; off < bytes.length; ) {
    if (off + 12 > bytes.length) return fail('the file ends inside a chunk header (cut short?)');
    const length = dv.getUint32(off);
    const type = String.fromCharCode(bytes[off + 4]!, bytes[off + 5]!, bytes[off + 6]!, bytes[off + 7]!);
    if (off + 12 + length > bytes.length) return fail(`chunk ${JSON.stringify(type)} runs past the end of the file (cut short?)`);
    if (PNG_DECODED_CHUNKS.has(type)) {
      if (crc32(bytes.subarray(off + 4, off + 8 + length)) !== dv.getUint32(off + 8 + length)) {
        return fail(`chunk ${JSON.stringify(type)} fails its CRC check (the file is damaged)`);
      }
      kept.push(bytes.subarray(off, off + 12 + length));
    }
    if (type === 'IDAT') {
      if (idatEnded) return fail('its IDAT chunks are not consecutive');
      idat.push(bytes.subarray(off + 8, off + 8 + length));
    } else if (idat.length > 0) idatEnded = true;
    if (type === 'PLTE') {
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
  return { ok: true, layout: { header, decodable: Buffer.concat(kept), deflated: Buffer.concat(idat) } };
}

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
 * decoders do). `feed` and `end` say why not, or null.
 */
function pixelStreamChecker(header: PngHeader) {
  const expected = pngRawBytes(header);
  const { width, height } = header;
  const passes = pngPasses(header);
  let pass = 0, row = 0, nextRow = 0, total = 0;
  return {
    feed(piece: Uint8Array): string | null {
      const end = total + piece.length;
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

/** Why the inflated pixel data does not fit the header, or `null` when it does. */
function checkInflated(header: PngHeader, inflated: Uint8Array): string | null {
  const rows = pixelStreamChecker(header);
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

/** The zlib stream's 2-byte header: deflate (method 8), a window of at most 32 KiB, its check bits right. */
function zlibHeaderProblem(deflated: Uint8Array): string | null {
  if (deflated.length < 2) return 'corrupt PNG: its pixel data is empty';
  const [cmf, flg] = [deflated[0]!, deflated[1]!];
  if ((cmf & 0x0f) !== 8 || cmf >> 4 > 7 || ((cmf << 8) | flg) % 31 !== 0) return 'corrupt PNG: its pixel data is not a zlib stream';
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
  const { header, deflated, decodable } = read.layout;
  const bad = zlibHeaderProblem(deflated);
  if (bad) return { ok: false, reason: bad };
  let info: InflateInfo;
  try {
    info = inflateRawSync(deflated.subarray(2), inflateOptions(header)) as unknown as InflateInfo;
  } catch (error) {
    return { ok: false, reason: inflateFailure(header, error) };
  }
  const why = trailerProblem(deflated, info.engine.bytesWritten) ?? checkInflated(header, info.buffer);
  return why ? { ok: false, reason: why } : { ok: true, header, decodable };
}

/**
 * The whole check, inflating as a stream off the event loop (the API, which serves other requests
 * meanwhile): at most a piece of the pixel data is held at a time, whatever size the header declares.
 */
export async function checkPngFile(bytes: Uint8Array, opts: { maxPixels?: number } = {}): Promise<PngFileCheck> {
  const read = readPngLayout(bytes, opts);
  if (!read.ok) return read;
  const { header, deflated, decodable } = read.layout;
  const bad = zlibHeaderProblem(deflated);
  if (bad) return { ok: false, reason: bad };
  const rows = pixelStreamChecker(header);
  return new Promise<PngFileCheck>((resolve) => {
    const inflate = createInflateRaw();
    let settled = false;
    const settle = (why: string | null) => {
      if (settled) return;
      settled = true;
      inflate.destroy();
      resolve(why ? { ok: false, reason: why } : { ok: true, header, decodable });
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
