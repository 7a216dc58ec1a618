/**
 * WebP outputs (output_format "webp", ADR 0043): encodeWebp writes a lossy WebP in the extended file
 * format (VP8X with the XMP flag, the VP8 image, an `XMP ` chunk marking it as generated, as PNGs and
 * JPEGs are marked, ADR 0032), which libwebp's own decoder reads back close to the pixels; the same
 * pixels and quality give the same bytes, so a seed still reproduces a file.
 */
import { describe, expect, it } from 'vitest';
import { smoothPicture } from '../../helpers/picture.ts';
import { decodeWebpRgba } from '../../../gpu-worker/engine/synth/webp.ts';
import { GENERATED_IMAGE_XMP, encodeOutput, encodePng, encodeWebp } from '../../../gpu-worker/engine/synth/image.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';

const picture = smoothPicture;

/** The RIFF chunks after "WEBP": [fourcc, payload]. */
function chunks(webp: Uint8Array): Array<[string, Buffer]> {
  const b = Buffer.from(webp);
  const out: Array<[string, Buffer]> = [];
  for (let at = 12; at + 8 <= b.length; ) {
    const size = b.readUInt32LE(at + 4);
    out.push([b.toString('latin1', at, at + 4), b.subarray(at + 8, at + 8 + size)]);
    at += 8 + size + (size & 1);
  }
  return out;
}

describe('encodeWebp', () => {
  it('writes an extended WebP: RIFF sized to the file, VP8X (XMP flag, canvas size), the VP8 image, then the XMP packet', async () => {
    const webp = Buffer.from(await encodeWebp(picture(96, 64), 90));
    expect([webp.toString('latin1', 0, 4), webp.readUInt32LE(4) + 8, webp.toString('latin1', 8, 12)]).toEqual(['RIFF', webp.length, 'WEBP']);
    const found = chunks(webp);
    expect(found.map(([fourcc]) => fourcc)).toEqual(['VP8X', 'VP8 ', 'XMP ']);
    const vp8x = found[0]![1];
    expect([vp8x[0], vp8x.readUIntLE(4, 3) + 1, vp8x.readUIntLE(7, 3) + 1]).toEqual([0x04, 96, 64]);
    expect(found[2]![1].toString('utf8')).toBe(GENERATED_IMAGE_XMP);
  });

  it("decodes, with libwebp's own decoder, to the picture's size and close to its pixels; a higher quality is closer and larger", async () => {
    const img = picture(64, 48);
    const errors: number[] = [];
    const sizes: number[] = [];
    for (const quality of [30, 90]) {
      const webp = await encodeWebp(img, quality);
      const back = await decodeWebpRgba(webp);
      expect([back.width, back.height]).toEqual([64, 48]);
      let sum = 0;
      for (let c = 0; c < 3; c++) for (let i = 0; i < 64 * 48; i++) sum += Math.abs(back.rgba[i * 4 + c]! - Math.floor(img.data[c * 64 * 48 + i]! * 255 + 0.5));
      errors.push(sum / (3 * 64 * 48));
      sizes.push(webp.length);
    }
    expect(errors[1]).toBeLessThan(3);
    expect(errors[1]).toBeLessThan(errors[0]!);
    expect(sizes[1]).toBeGreaterThan(sizes[0]!);
    // Smaller than the lossless PNG of the same pixels: what the format is asked for.
    expect(sizes[1]).toBeLessThan(encodePng(img).length);
  });

  it('gives the same bytes for the same pixels and quality, and encodeOutput picks it for "webp" at 90 by default', async () => {
    const img = picture(64, 64);
    const a = await encodeWebp(img, 90);
    expect(Buffer.from(await encodeWebp(img, 90)).equals(Buffer.from(a))).toBe(true);
    expect(Buffer.from(await encodeOutput(img, 'webp')).equals(Buffer.from(a))).toBe(true);
    expect(Buffer.from(await encodeOutput(img, 'webp', 50)).equals(Buffer.from(a))).toBe(false);
  });

  it('refuses a quality outside 1–100 or not whole, and an image with NaN pixels, as invalid_input', async () => {
    for (const quality of [0, 101, 50.5, Number.NaN]) {
      await expect(encodeWebp(picture(8, 8), quality)).rejects.toSatisfy((e: unknown) => e instanceof EngineError && e.code === 'invalid_input' && /quality must be a whole number from 1 to 100/.test(e.message));
    }
    // Past WebP's own 16383-pixel side: said as invalid_input, not libwebp's bare failure.
    await expect(encodeWebp({ width: 16384, height: 1, data: new Float32Array(3 * 16384) }, 90)).rejects.toSatisfy((e: unknown) => e instanceof EngineError && e.code === 'invalid_input' && /at most 16383 pixels a side/.test(e.message));
    const bad = picture(8, 8);
    bad.data[5] = Number.NaN;
    await expect(encodeWebp(bad, 90)).rejects.toSatisfy((e: unknown) => e instanceof EngineError && e.code === 'invalid_input' && /NaN/.test(e.message));
  });
});
