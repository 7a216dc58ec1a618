// The first bytes of an image file: its format and, for a PNG, its size and pixel layout, checked
// before anything is allocated. The whole-file check both sides run (png-check.ts) starts here.

import { crc32 } from 'node:zlib';

export const PNG_SIGNATURE: readonly number[] = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** The signature and the IHDR chunk (length, type, 13 data bytes, CRC): all `readPngHeader` needs. */
export const PNG_HEADER_BYTES = 33;
/** The most pixels an init image may have (4096 × 4096): decoding holds 12 float32 bytes per pixel. */
export const MAX_IMAGE_PIXELS = 4096 * 4096;
/**
 * The largest init image file the worker decodes (32 MiB). One limit for both sides: the config
 * refuses a CLIPAG_MAX_UPLOAD_BYTES above it, so an upload the API takes is never one the worker
 * refuses for its size (the API and the worker may be configured apart; a constant cannot drift).
 */
export const MAX_IMAGE_FILE_BYTES = 32 * 1024 * 1024;
/** Channels per PNG colour type (grey, RGB, palette, grey + alpha, RGBA). */
export const PNG_CHANNELS: Readonly<Record<number, number>> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
/** The bit depths each colour type allows (PNG spec, table 11.1). */
const PNG_DEPTHS: Readonly<Record<number, readonly number[]>> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colourType: number;
  /** Samples per pixel for the colour type. */
  channels: number;
  interlaced: boolean;
}

/** A refusal says why in words a caller can act on; `format` names a recognised other format. */
export type PngHeaderCheck = { ok: true; header: PngHeader } | { ok: false; reason: string; format?: string };

/** Formats people upload, recognised so a refusal can name them ("convert to PNG or JPEG"); JPEG is read (shared/jpeg.ts). */
export function sniffImageFormat(b: Uint8Array): string | null {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'JPEG';
  if (b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46 && b[8] === 0x57 && b[9] === 0x45 && b[10] === 0x42 && b[11] === 0x50) return 'WebP';
  if (b.length >= 4 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x38) return 'GIF';
  if (b.length >= 2 && b[0] === 0x42 && b[1] === 0x4d) return 'BMP';
  if (b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49 && b[2] === 0x2a) || (b[0] === 0x4d && b[1] === 0x4d && b[3] === 0x2a))) return 'TIFF';
  if (b.length >= 12 && b[4] === 0x66 && b[5] === 0x74 && b[6] === 0x79 && b[7] === 0x70) return 'HEIF/AVIF';
  return null;
}

/**
 * Reads and checks a PNG's header from the file's first `PNG_HEADER_BYTES` bytes (more may be passed):
 * the signature, an IHDR chunk of 13 bytes with a correct CRC, a size of 1..`maxPixels` pixels, and a
 * colour type, bit depth, compression, filter and interlace method the PNG spec defines.
 */
export function readPngHeader(bytes: Uint8Array, opts: { maxPixels?: number } = {}): PngHeaderCheck {
  const maxPixels = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  const isPng = bytes.length >= 8 && PNG_SIGNATURE.every((v, i) => bytes[i] === v);
  if (!isPng) {
    const format = sniffImageFormat(bytes);
    if (format) return { ok: false, format, reason: `${format} images are not supported: convert to PNG or JPEG` };
    return { ok: false, reason: 'unreadable image: not a PNG or JPEG file (convert it to PNG or JPEG)' };
  }
  if (bytes.length < PNG_HEADER_BYTES) return { ok: false, reason: 'corrupt PNG: the file ends inside its header' };
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = String.fromCharCode(bytes[12]!, bytes[13]!, bytes[14]!, bytes[15]!);
  if (type !== 'IHDR' || dv.getUint32(8) !== 13) return { ok: false, reason: 'corrupt PNG: missing IHDR header' };
  if (crc32(bytes.subarray(12, 29)) !== dv.getUint32(29)) return { ok: false, reason: 'corrupt PNG: the header chunk fails its CRC check' };
  const width = dv.getUint32(16);
  const height = dv.getUint32(20);
  if (width < 1 || height < 1) return { ok: false, reason: `corrupt PNG: image size ${width}×${height}` };
  if (width * height > maxPixels) return { ok: false, reason: `image is ${width}×${height} = ${width * height} pixels, over the limit of ${maxPixels} pixels` };
  const [bitDepth, colourType, compression, filter, interlace] = [bytes[24]!, bytes[25]!, bytes[26]!, bytes[27]!, bytes[28]!];
  const channels = PNG_CHANNELS[colourType];
  if (channels === undefined || !PNG_DEPTHS[colourType]!.includes(bitDepth)) {
    return { ok: false, reason: `corrupt PNG: colour type ${colourType} with bit depth ${bitDepth}` };
  }
  if (compression !== 0 || filter !== 0 || interlace > 1) {
    return { ok: false, reason: `corrupt PNG: unknown compression (${compression}), filter (${filter}) or interlace (${interlace}) method` };
  }
  return { ok: true, header: { width, height, bitDepth, colourType, channels, interlaced: interlace === 1 } };
}
