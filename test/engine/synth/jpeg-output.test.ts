/**
 * JPEG outputs (output_format "jpeg", ADR 0041): encodeJpeg writes a baseline 4:4:4 JPEG that the
 * API's segment walk and the engine's own decoder read back close to the pixels, marked as generated in
 * an XMP APP1 segment (as PNGs are in iTXt, ADR 0032), and the same pixels and quality give the same
 * bytes, so a seed still reproduces a file.
 */
import { describe, expect, it } from 'vitest';
import { smoothPicture } from '../../helpers/picture.ts';
import { GENERATED_IMAGE_XMP, decodeImage, encodeJpeg, encodePng, type PlanarImage } from '../../../gpu-worker/engine/synth/image.ts';
import { readJpegStructure } from '../../../shared/jpeg.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';

const picture = smoothPicture;

/** The JPEG's marker segments before its first scan: [marker, payload]. */
function segments(jpeg: Uint8Array): Array<[number, Buffer]> {
  const out: Array<[number, Buffer]> = [];
  let at = 2;
  while (at + 4 <= jpeg.length) {
    const marker = jpeg[at + 1]!;
    const len = (jpeg[at + 2]! << 8) | jpeg[at + 3]!;
    out.push([marker, Buffer.from(jpeg.subarray(at + 4, at + 2 + len))]);
    if (marker === 0xda) break;
    at += 2 + len;
  }
  return out;
}

/** Mean absolute difference, in 8-bit levels. */
function meanError(a: PlanarImage, b: PlanarImage): number {
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i]! - b.data[i]!);
  return (sum / a.data.length) * 255;
}

describe('encodeJpeg', () => {
  it('writes a baseline 4:4:4 JPEG that the API walk and the engine decoder read back close to the pixels', () => {
    const img = picture(72, 40);
    const jpeg = encodeJpeg(img, 90);
    const walk = readJpegStructure(jpeg);
    expect(walk).toEqual({ ok: true, structure: { width: 72, height: 40, components: 3, progressive: false, scans: 1, orientation: 1 } });
    // SOF0 (baseline), each component sampled 1×1: no chroma subsampling.
    const sof = segments(jpeg).find(([m]) => m === 0xc0)![1];
    expect([sof[5], sof[7], sof[10], sof[13]]).toEqual([3, 0x11, 0x11, 0x11]);
    const back = decodeImage(jpeg);
    expect([back.width, back.height]).toEqual([72, 40]);
    expect(meanError(back, img)).toBeLessThan(2.5);
  });

  it('says in XMP, in an APP1 segment right after the JFIF header, that a trained model made it', () => {
    const jpeg = encodeJpeg(picture(16, 16), 75);
    const segs = segments(jpeg);
    expect(segs.slice(0, 2).map(([m]) => m)).toEqual([0xe0, 0xe1]);
    expect(segs[0]![1].subarray(0, 5).toString('latin1')).toBe('JFIF\0');
    const app1 = segs[1]![1];
    const ns = 'http://ns.adobe.com/xap/1.0/\0';
    expect(app1.subarray(0, ns.length).toString('latin1')).toBe(ns);
    expect(app1.subarray(ns.length).toString('utf8')).toBe(GENERATED_IMAGE_XMP);
    // The only XMP in the file: a second packet would be a reader's guess which one counts.
    expect(segs.filter(([m, body]) => m === 0xe1 && body.includes('xap/1.0')).length).toBe(1);
  });

  it('the same pixels and quality give the same bytes; a lower quality gives a smaller, rougher file', () => {
    const img = picture(64, 64);
    expect(Buffer.from(encodeJpeg(img, 80)).equals(Buffer.from(encodeJpeg(picture(64, 64), 80)))).toBe(true);
    const q30 = encodeJpeg(img, 30);
    const q95 = encodeJpeg(img, 95);
    expect(q30.length).toBeLessThan(q95.length);
    expect(meanError(decodeImage(q30), img)).toBeGreaterThan(meanError(decodeImage(q95), img));
    // At the default quality a smooth picture is far smaller than its PNG.
    expect(encodeJpeg(img, 90).length).toBeLessThan(encodePng(img).length);
  });

  it('a flat colour at quality 100 comes back within one 8-bit level (the colour transform\'s rounding) of the PNG\'s', () => {
    const flat: PlanarImage = { width: 16, height: 16, data: new Float32Array(3 * 256) };
    flat.data.fill(0.2, 0, 256).fill(0.4, 256, 512).fill(0.6, 512);
    const back = decodeImage(encodeJpeg(flat, 100));
    const png = decodeImage(encodePng(flat));
    for (const i of [0, 100, 256, 300, 512, 700]) expect(Math.abs(back.data[i]! - png.data[i]!) * 255).toBeLessThanOrEqual(1.001);
  });

  it('refuses a quality outside 1–100 or not whole, and NaN pixels, naming what is wrong', () => {
    const img = picture(8, 8);
    for (const q of [0, 101, 50.5, Number.NaN]) {
      expect(() => encodeJpeg(img, q)).toThrow(EngineError);
      expect(() => encodeJpeg(img, q)).toThrow(/quality must be a whole number from 1 to 100/);
    }
    const bad = picture(8, 8);
    bad.data[5] = Number.NaN;
    expect(() => encodeJpeg(bad, 90)).toThrow(/encodeJpeg: image contains NaN pixels/);
  });
});
