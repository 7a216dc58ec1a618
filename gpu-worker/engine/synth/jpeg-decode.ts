// The engine's JPEG decoder (ADR 0035): jpeg-js, after the segment walk of shared/jpeg.ts, strict, and
// turned upright by the EXIF orientation. Here, not in shared/, so that the API's bundle, which only
// walks the segments, does not carry the decoder.

import jpegDecode from './vendor/jpeg-js-decoder.cjs';
import { MAX_IMAGE_PIXELS } from '../../../shared/image-header.ts';
import { corruptJpeg as corrupt, readJpegStructure, type JpegOrientation } from '../../../shared/jpeg.ts';

/** A decoded JPEG: 8-bit RGB, interleaved, turned upright by its EXIF orientation. */
export interface DecodedJpeg {
  width: number;
  height: number;
  /** R, G, B per pixel, row by row: 3·width·height bytes. */
  rgb: Uint8Array;
  /** The orientation that was applied (1: none). */
  orientation: JpegOrientation;
}

export type JpegDecode = { ok: true; image: DecodedJpeg } | { ok: false; reason: string };

/**
 * Decodes a whole JPEG (after readJpegStructure's checks) strictly: a damaged scan is an error, not a
 * grey block (jpeg-js's tolerant mode, off here). Memory is bounded by the pixel limit.
 */
export function decodeJpeg(bytes: Uint8Array, opts: { maxPixels?: number } = {}): JpegDecode {
  const maxPixels = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  const structure = readJpegStructure(bytes, { maxPixels });
  if (!structure.ok) return structure;
  const { width, height, orientation } = structure.structure;
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    decoded = jpegDecode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      tolerantDecoding: false,
      maxResolutionInMP: Math.ceil(maxPixels / 1e6),
      // What jpeg-js counts: 4 bytes a coefficient (256 bytes an 8×8 block) per component at its
      // sampling, its lines and the output. 28 bytes a pixel lets a 4:4:4 or CMYK file at the pixel
      // limit through (the JPEG review: at 16 bytes one of 4096×3136 4:4:4 was refused as corrupt).
      maxMemoryUsageInMB: Math.max(64, Math.ceil((maxPixels * 28) / 2 ** 20)),
    });
  } catch (e) {
    // The decoder's own refusals are plain Errors; a TypeError or RangeError is it tripping over data it
    // did not expect, whose text ("Cannot read properties of undefined") would tell the caller nothing.
    const own = e instanceof Error && !(e instanceof TypeError) && !(e instanceof RangeError) && e.message.trim();
    return corrupt(own ? own.replace(/\.$/, '') : 'the decoder could not read its image data');
  }
  if (decoded.width !== width || decoded.height !== height || decoded.data.length !== 3 * width * height) {
    return corrupt(`the decoder read ${decoded.width}×${decoded.height} where the frame header says ${width}×${height}`);
  }
  return { ok: true, image: oriented({ width, height, rgb: decoded.data, orientation }) };
}

/**
 * The stored pixels turned as EXIF orientation `o` says (TIFF 6.0 / EXIF 2.3): 2 mirror, 3 turn 180°,
 * 4 flip, 5 transpose, 6 turn 90° clockwise, 7 transverse, 8 turn 90° anticlockwise.
 */
export function oriented(img: DecodedJpeg): DecodedJpeg {
  const o = img.orientation;
  if (o === 1) return img;
  const { width: w, height: h, rgb } = img;
  const swap = o >= 5;
  const W = swap ? h : w;
  const H = swap ? w : h;
  const out = new Uint8Array(rgb.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      // Where the upright pixel (x, y) sits in the stored image.
      let sx: number, sy: number;
      switch (o) {
        case 2: [sx, sy] = [w - 1 - x, y]; break;
        case 3: [sx, sy] = [w - 1 - x, h - 1 - y]; break;
        case 4: [sx, sy] = [x, h - 1 - y]; break;
        case 5: [sx, sy] = [y, x]; break;
        case 6: [sx, sy] = [y, h - 1 - x]; break;
        case 7: [sx, sy] = [w - 1 - y, h - 1 - x]; break;
        default: [sx, sy] = [w - 1 - y, x]; break; // 8
      }
      const s = 3 * (sy * w + sx);
      const d = 3 * (y * W + x);
      out[d] = rgb[s]!;
      out[d + 1] = rgb[s + 1]!;
      out[d + 2] = rgb[s + 2]!;
    }
  }
  return { width: W, height: H, rgb: out, orientation: o };
}
