/**
 * Every PNG the engine writes says that a trained model made it: IPTC's DigitalSourceType
 * "trainedAlgorithmicMedia" in an XMP packet, in an iTXt chunk before the image data, as the XMP
 * specification places it (ADR 0032). The marking is fixed bytes: the file stays a function of the
 * pixels, and nothing of the request (prompt, seed) is inside it.
 */
import { describe, expect, it } from 'vitest';
import { GENERATED_IMAGE_XMP, decodeImage, encodePng, noiseImage, solidImage } from '../../../gpu-worker/engine/synth/image.ts';
import { createRng } from '../../../gpu-worker/engine/synth/rng.ts';
import { checkPngFileSync } from '../../../shared/png-check.ts';
import { pngChunks, xmpOf } from '../../helpers/png.ts';

describe('encodePng marks the image as generated', () => {
  it('one XMP iTXt chunk right after IHDR, naming trainedAlgorithmicMedia, in a file every reader here accepts', () => {
    const png = encodePng(noiseImage(24, 16, createRng(3)));
    const types = pngChunks(png).map((c) => c.type);
    expect(types).toEqual(['IHDR', 'iTXt', 'IDAT', 'IEND']);
    const xmp = xmpOf(png)!;
    expect(xmp).toBe(GENERATED_IMAGE_XMP);
    expect(xmp).toContain('Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"');
    expect(xmp.startsWith('<?xpacket begin="\uFEFF"')).toBe(true);
    expect(xmp.endsWith('<?xpacket end="r"?>')).toBe(true);
    // The API's own check and the engine's decoder take it, pixels unchanged.
    expect(checkPngFileSync(png).ok).toBe(true);
    const decoded = decodeImage(encodePng(solidImage(5, 3, [0.2, 0.4, 0.6])));
    expect([decoded.data[0], decoded.data[15], decoded.data[30]].map((v) => Math.round(v! * 255))).toEqual([51, 102, 153]);
  });

  it('is fixed bytes: the same pixels give the same file, and nothing else goes in', () => {
    const a = encodePng(noiseImage(8, 8, createRng(1)));
    const b = encodePng(noiseImage(8, 8, createRng(1)));
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(xmpOf(encodePng(solidImage(2, 2, [0, 0, 0])))).toBe(xmpOf(a));
  });
});
