// JPEG init images (ADR 0035): photos come as JPEG, and converting each to PNG was the caller's chore.
// Both sides run the segment walk below: the API when a generation names an uploaded JPEG (a file cut
// short, of a kind the decoder cannot read, or too large is a 400 then, not a failed job on a GPU), and
// the engine before it decodes. Unlike a PNG's, a JPEG's compressed data is not checked by the API: a
// full decode of a 12-megapixel photo took 3.4 s and 560 MB here, too much for the API's Lambda (512 MB).
// Damage inside it fails the generation on the worker, `invalid_input`, billed nothing.
//
// The decoder (gpu-worker/engine/synth/jpeg-decode.ts; the API never loads it) is jpeg-js (pure JS, from
// pdf.js's decoder): baseline and progressive Huffman-coded JPEGs with 1, 3 or 4 components. Before it
// runs, the file's segments are walked here, cheaply, to refuse what it cannot decode (lossless,
// hierarchical, arithmetic-coded), a file cut short, more pixels than the limit, and more scans than a
// real encoder writes (each progressive scan is a pass over the whole image: thousands of tiny scans
// would hold a decoder for minutes). The walk also reads the EXIF orientation, which a phone's photo
// relies on: without it a portrait shot starts sideways.

import { MAX_IMAGE_PIXELS } from './image-header.ts';

/** Whether the bytes start as a JPEG does (SOI, then a marker). */
export function isJpeg(bytes: Uint8Array): boolean {
  return bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
}

/**
 * At most this many scans: libjpeg's progressive default writes 10 for a colour image, and
 * encoders with per-component refinement stay under 40.
 */
export const MAX_JPEG_SCANS = 64;

/** EXIF orientation 1–8 (TIFF tag 0x0112): how the stored pixels are turned to be seen upright. */
export type JpegOrientation = 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8;

export interface JpegStructure {
  width: number;
  height: number;
  components: number;
  progressive: boolean;
  scans: number;
  orientation: JpegOrientation;
}

export type JpegCheck = { ok: true; structure: JpegStructure } | { ok: false; reason: string };

/** The start-of-frame markers by what they code; jpeg-js decodes the first three. */
const SOF_DECODED = new Map([
  [0xc0, 'baseline'],
  [0xc1, 'extended'],
  [0xc2, 'progressive'],
]);
const SOF_REFUSED = new Map([
  [0xc3, 'lossless'],
  [0xc5, 'hierarchical'],
  [0xc6, 'hierarchical'],
  [0xc7, 'hierarchical'],
  [0xc9, 'arithmetic-coded'],
  [0xca, 'arithmetic-coded'],
  [0xcb, 'arithmetic-coded'],
  [0xcd, 'arithmetic-coded'],
  [0xce, 'arithmetic-coded'],
  [0xcf, 'arithmetic-coded'],
]);

/** A refusal of a damaged file, in the words every JPEG error starts with. */
export const corruptJpeg = (why: string): { ok: false; reason: string } => ({ ok: false, reason: `corrupt JPEG: ${why}` });
const corrupt = corruptJpeg;

/** The markers the decoder reads besides the frame and the scans: tables, restart interval, line count, APPn, comments. */
const KNOWN_SEGMENTS = new Set([0xc4, 0xdb, 0xdd, 0xdc, 0xfe, ...Array.from({ length: 16 }, (_, i) => 0xe0 + i)]);

/** One component of the frame: its sampling factors and quantization table. */
interface FrameComponent {
  h: number;
  v: number;
  tq: number;
}

/**
 * Whether Huffman code-length counts (16 of them) describe a code that exists: no more codes of a
 * length than the shorter ones leave room for (jpeg-js refuses the rest, "Could not recreate Huffman Table").
 */
function huffmanCodeFits(counts: Uint8Array): boolean {
  let room = 2;
  for (const n of counts) {
    if (n > room) return false;
    room = (room - n) * 2;
  }
  return true;
}

/**
 * Walks the file's segments without decoding. Refused, each with why: a frame of a kind the decoder
 * cannot read, more than one frame, not 1..maxPixels pixels, other than 1, 3 or 4 components (4 only
 * with the Adobe segment that says how to read them), a sampling factor outside 1–4; a table of another
 * precision, id or a Huffman code that cannot exist; a scan naming a component the frame lacks or a
 * table not defined before it; a marker the decoder does not know; more than MAX_JPEG_SCANS scans; a
 * first scan with less data than its blocks need (one bit each at least: a small file declaring a
 * huge image); no end-of-image marker (bytes after it, which some cameras append, are ignored). Reads
 * the EXIF orientation (1 when there is none).
 */
export function readJpegStructure(bytes: Uint8Array, opts: { maxPixels?: number } = {}): JpegCheck {
  const maxPixels = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  if (!isJpeg(bytes)) return { ok: false, reason: 'not a JPEG file' };
  let at = 2;
  let frame: Omit<JpegStructure, 'scans' | 'orientation'> | undefined;
  const frameComponents = new Map<number, FrameComponent>();
  let hMax = 1;
  let vMax = 1;
  const quantTables = new Set<number>();
  const huffmanTables = new Set<string>(); // "dc0", "ac1", …
  let adobe = false;
  let scans = 0;
  let orientation: JpegOrientation = 1;
  for (;;) {
    // Fill bytes (0xFF runs) may precede a marker.
    if (at >= bytes.length) return corrupt('the file is cut short (no end-of-image marker)');
    if (bytes[at] !== 0xff) return corrupt(`expected a marker at byte ${at}`);
    while (at < bytes.length && bytes[at] === 0xff) at++;
    if (at >= bytes.length) return corrupt('the file is cut short (no end-of-image marker)');
    const marker = bytes[at++]!;
    const where = `at byte ${at - 2}`;
    if (marker === 0xd9) break; // EOI
    if (marker === 0xd8 || marker === 0x00 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) return corrupt(`unexpected marker 0xFF${hex(marker)} ${where}`);
    const refused = SOF_REFUSED.get(marker);
    if (refused) return { ok: false, reason: `${refused} JPEGs are not supported: save it as a baseline or progressive JPEG, or as a PNG` };
    if (!SOF_DECODED.has(marker) && marker !== 0xda && !KNOWN_SEGMENTS.has(marker)) return corrupt(`unknown marker 0xFF${hex(marker)} ${where}`);
    if (at + 2 > bytes.length) return corrupt('the file is cut short (inside a segment header)');
    const length = (bytes[at]! << 8) | bytes[at + 1]!;
    if (length < 2 || at + length > bytes.length) return corrupt(`segment 0xFF${hex(marker)} ${where} runs past the end of the file`);
    const body = bytes.subarray(at + 2, at + length);
    at += length;
    if (SOF_DECODED.has(marker)) {
      if (frame) return { ok: false, reason: 'JPEGs of more than one frame are not supported: save it as a baseline or progressive JPEG, or as a PNG' };
      if (body.length < 6) return corrupt('a frame header is too short');
      const precision = body[0]!;
      const height = (body[1]! << 8) | body[2]!;
      const width = (body[3]! << 8) | body[4]!;
      const components = body[5]!;
      if (precision !== 8) return { ok: false, reason: `${precision}-bit JPEGs are not supported: save it as an 8-bit JPEG, or as a PNG` };
      // A height of 0 is announced later (DNL); the decoder does not read it.
      if (width < 1 || height < 1) return corrupt(`image size ${width}×${height}`);
      if (width * height > maxPixels) return { ok: false, reason: `image is ${width}×${height} = ${width * height} pixels, over the limit of ${maxPixels} pixels` };
      if (components !== 1 && components !== 3 && components !== 4) return { ok: false, reason: `JPEGs of ${components} colour components are not supported (1, 3 or 4): save it as an RGB JPEG, or as a PNG` };
      if (body.length < 6 + 3 * components) return corrupt('a frame header is too short for its components');
      for (let i = 0; i < components; i++) {
        const [id, hv, tq] = [body[6 + 3 * i]!, body[7 + 3 * i]!, body[8 + 3 * i]!];
        const [h, v] = [hv >> 4, hv & 15];
        if (h < 1 || h > 4 || v < 1 || v > 4) return corrupt(`component ${id} has sampling factors ${h}×${v} (each must be 1 to 4)`);
        if (tq > 3) return corrupt(`component ${id} names quantization table ${tq} (0 to 3)`);
        if (frameComponents.has(id)) return corrupt(`the frame names component ${id} twice`);
        frameComponents.set(id, { h, v, tq });
        hMax = Math.max(hMax, h);
        vMax = Math.max(vMax, v);
      }
      frame = { width, height, components, progressive: marker === 0xc2 };
      continue;
    }
    if (marker === 0xdb) {
      // DQT: one or more tables, each a precision/id byte and 64 values of 1 or 2 bytes.
      for (let i = 0; i < body.length; ) {
        const [pq, tq] = [body[i]! >> 4, body[i]! & 15];
        if (pq > 1 || tq > 3) return corrupt(`a quantization table ${where} has precision ${pq} and id ${tq} (0 or 1, and 0 to 3)`);
        i += 1 + 64 * (pq + 1);
        if (i > body.length) return corrupt(`a quantization table ${where} is cut short`);
        quantTables.add(tq);
      }
    } else if (marker === 0xc4) {
      // DHT: one or more tables, each a class/id byte, 16 code-length counts and their values.
      for (let i = 0; i < body.length; ) {
        if (i + 17 > body.length) return corrupt(`a Huffman table ${where} is cut short`);
        const [tc, th] = [body[i]! >> 4, body[i]! & 15];
        if (tc > 1 || th > 3) return corrupt(`a Huffman table ${where} has class ${tc} and id ${th} (0 or 1, and 0 to 3)`);
        const counts = body.subarray(i + 1, i + 17);
        const values = counts.reduce((a, b) => a + b, 0);
        if (!huffmanCodeFits(counts)) return corrupt(`a Huffman table ${where} describes a code that cannot exist`);
        i += 17 + values;
        if (i > body.length) return corrupt(`a Huffman table ${where} is cut short`);
        huffmanTables.add(`${tc === 0 ? 'dc' : 'ac'}${th}`);
      }
    } else if (marker === 0xee && body.length >= 6 && String.fromCharCode(...body.subarray(0, 5)) === 'Adobe' && body[5] === 0) {
      adobe = true;
    } else if (marker === 0xe1 && orientation === 1) {
      orientation = exifOrientation(body) ?? 1;
    } else if (marker === 0xda) {
      // Start of scan: the entropy-coded data runs to the next marker that is not a stuffed 0xFF00 or a restart.
      if (!frame) return corrupt('a scan before the frame header');
      if (++scans > MAX_JPEG_SCANS) return { ok: false, reason: `the JPEG has more than ${MAX_JPEG_SCANS} scans; save it again with a common encoder, or as a PNG` };
      const ns = body[0] ?? 0;
      if (ns < 1 || ns > 4 || body.length < 1 + 2 * ns + 3) return corrupt(`scan ${scans} has a header of the wrong length`);
      const [ss, se, ah] = [body[1 + 2 * ns]!, body[2 + 2 * ns]!, body[3 + 2 * ns]! >> 4];
      let blocks = 0;
      for (let i = 0; i < ns; i++) {
        const [id, tables] = [body[1 + 2 * i]!, body[2 + 2 * i]!];
        const c = frameComponents.get(id);
        if (!c) return corrupt(`scan ${scans} names component ${id}, which the frame does not have`);
        if (ss === 0 && ah === 0 && !huffmanTables.has(`dc${tables >> 4}`)) return corrupt(`scan ${scans} uses DC Huffman table ${tables >> 4}, not defined before it`);
        if (se > 0 && !huffmanTables.has(`ac${tables & 15}`)) return corrupt(`scan ${scans} uses AC Huffman table ${tables & 15}, not defined before it`);
        blocks += Math.ceil(Math.ceil((frame.width * c.h) / hMax) / 8) * Math.ceil(Math.ceil((frame.height * c.v) / vMax) / 8);
      }
      const dataStart = at;
      while (at + 1 < bytes.length && !(bytes[at] === 0xff && bytes[at + 1] !== 0x00 && !(bytes[at + 1]! >= 0xd0 && bytes[at + 1]! <= 0xd7))) at++;
      if (at + 1 >= bytes.length) return corrupt('the file is cut short (inside its image data)');
      // A first DC pass codes each block in one bit at least: less data than that is a file cut short,
      // or a small file that declares a huge image (seconds and hundreds of MB of decoding, for nothing).
      if (ss === 0 && ah === 0 && (at - dataStart) * 8 < blocks) return corrupt(`scan ${scans} holds ${at - dataStart} bytes of image data for ${blocks} blocks (cut short?)`);
    }
  }
  if (!frame) return corrupt('no frame header');
  if (scans === 0) return corrupt('no image data (no scan)');
  for (const [id, c] of frameComponents) if (!quantTables.has(c.tq)) return corrupt(`component ${id} uses quantization table ${c.tq}, which the file does not define`);
  if (frame.components === 4 && !adobe) return { ok: false, reason: 'four-component (CMYK) JPEGs without an Adobe segment are not supported: save it as an RGB JPEG, or as a PNG' };
  return { ok: true, structure: { ...frame, scans, orientation } };
}

function hex(b: number): string {
  return b.toString(16).toUpperCase().padStart(2, '0');
}

/** The orientation tag of an APP1 Exif segment's first IFD; undefined when absent or unreadable. */
function exifOrientation(app1: Uint8Array): JpegOrientation | undefined {
  // "Exif\0\0", then a TIFF header: II (little-endian) or MM, 42, the first IFD's offset.
  if (app1.length < 14 || String.fromCharCode(...app1.subarray(0, 4)) !== 'Exif' || app1[4] !== 0 || app1[5] !== 0) return undefined;
  const tiff = app1.subarray(6);
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!little && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return undefined;
  const dv = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  if (dv.getUint16(2, little) !== 42) return undefined;
  const ifd = dv.getUint32(4, little);
  if (ifd + 2 > tiff.length) return undefined;
  const entries = dv.getUint16(ifd, little);
  for (let i = 0; i < entries; i++) {
    const e = ifd + 2 + 12 * i;
    if (e + 12 > tiff.length) return undefined;
    // Tag 0x0112, type SHORT (3), one value, stored in the entry itself.
    if (dv.getUint16(e, little) === 0x0112) {
      if (dv.getUint16(e + 2, little) !== 3) return undefined;
      const v = dv.getUint16(e + 8, little);
      return v >= 1 && v <= 8 ? (v as JpegOrientation) : undefined;
    }
  }
  return undefined;
}
