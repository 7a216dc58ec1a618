// JPEG init images (ADR 0035): the segment walk both sides run, the strict decode, and the EXIF
// orientation a phone's photo relies on. Files are made here with jpeg-js's own encoder, then edited.
import { readFileSync } from 'node:fs';
import { encode } from 'jpeg-js';
import { describe, expect, it } from 'vitest';
import { decodeImage } from '../../gpu-worker/engine/synth/image.ts';
import { checkInitImage, checkInitImageSync, initImageContentType } from '../../shared/init-image.ts';
import { decodeJpeg } from '../../gpu-worker/engine/synth/jpeg-decode.ts';
import { MAX_JPEG_SCANS, readJpegStructure } from '../../shared/jpeg.ts';

/** RGBA of a w×h picture: a gradient, with a red block at the top left and a blue one at the top right. */
function picture(w: number, h: number): Uint8Array {
  const data = new Uint8Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      const tl = x < 8 && y < 8;
      const tr = x >= w - 8 && y < 8;
      data[i] = tl ? 250 : tr ? 5 : 100 + x;
      data[i + 1] = tl || tr ? 5 : 100 + y;
      data[i + 2] = tl ? 5 : tr ? 250 : 120;
      data[i + 3] = 255;
    }
  }
  return data;
}

const W = 48;
const H = 32;
const RGBA = picture(W, H);
const JPEG = new Uint8Array(encode({ width: W, height: H, data: RGBA }, 95).data);

/** The file with an APP1 Exif segment (orientation tag only, in II or MM byte order) after SOI. */
function withOrientation(jpeg: Uint8Array, orientation: number, little = true): Uint8Array {
  const tiff = new Uint8Array(8 + 2 + 12 + 4);
  const dv = new DataView(tiff.buffer);
  tiff.set(little ? [0x49, 0x49] : [0x4d, 0x4d], 0);
  dv.setUint16(2, 42, little);
  dv.setUint32(4, 8, little);
  dv.setUint16(8, 1, little); // one entry
  dv.setUint16(10, 0x0112, little);
  dv.setUint16(12, 3, little); // SHORT
  dv.setUint32(14, 1, little);
  dv.setUint16(18, orientation, little);
  const body = new Uint8Array([...new TextEncoder().encode('Exif'), 0, 0, ...tiff]);
  const seg = new Uint8Array([0xff, 0xe1, (body.length + 2) >> 8, (body.length + 2) & 255, ...body]);
  return new Uint8Array([...jpeg.subarray(0, 2), ...seg, ...jpeg.subarray(2)]);
}

/** The first offset of marker 0xFF`m`. */
function markerAt(jpeg: Uint8Array, m: number): number {
  for (let i = 2; i < jpeg.length - 1; i++) if (jpeg[i] === 0xff && jpeg[i + 1] === m) return i;
  throw new Error(`no marker ${m.toString(16)}`);
}

/** Which corner of a decoded RGB image holds the red block, and which the blue. */
function corners(img: { width: number; height: number; rgb: Uint8Array }): { red: string; blue: string } {
  const at = (x: number, y: number) => Array.from(img.rgb.subarray(3 * (y * img.width + x), 3 * (y * img.width + x) + 3));
  const spots: Record<string, [number, number]> = { TL: [2, 2], TR: [img.width - 3, 2], BL: [2, img.height - 3], BR: [img.width - 3, img.height - 3] };
  const find = (pred: (p: number[]) => boolean) => Object.keys(spots).find((k) => pred(at(...spots[k]!)))!;
  return { red: find(([r, g, b]) => r! > 200 && g! < 60 && b! < 60), blue: find(([r, g, b]) => b! > 200 && r! < 60 && g! < 60) };
}

describe('readJpegStructure: the segment walk the API and the worker both run', () => {
  it('reads the size, components, scans and orientation of a baseline JPEG', () => {
    expect(readJpegStructure(JPEG)).toEqual({ ok: true, structure: { width: W, height: H, components: 3, progressive: false, scans: 1, orientation: 1 } });
    expect(readJpegStructure(withOrientation(JPEG, 6))).toMatchObject({ ok: true, structure: { orientation: 6 } });
    expect(readJpegStructure(withOrientation(JPEG, 8, false))).toMatchObject({ ok: true, structure: { orientation: 8 } });
    // An orientation outside 1–8 is none.
    expect(readJpegStructure(withOrientation(JPEG, 9))).toMatchObject({ ok: true, structure: { orientation: 1 } });
  });

  it('refuses a file cut short anywhere, with where', () => {
    const sos = markerAt(JPEG, 0xda);
    expect(readJpegStructure(JPEG.subarray(0, JPEG.length - 2))).toEqual({ ok: false, reason: 'corrupt JPEG: the file is cut short (inside its image data)' });
    expect(readJpegStructure(JPEG.subarray(0, sos + 40))).toEqual({ ok: false, reason: 'corrupt JPEG: the file is cut short (inside its image data)' });
    expect(readJpegStructure(JPEG.subarray(0, sos + 5))).toMatchObject({ ok: false, reason: expect.stringMatching(/^corrupt JPEG: segment 0xFFDA at byte \d+ runs past the end of the file$/) });
    expect(readJpegStructure(JPEG.subarray(0, 4))).toMatchObject({ ok: false, reason: expect.stringMatching(/^corrupt JPEG: /) });
    expect(readJpegStructure(JPEG.subarray(0, 3))).toMatchObject({ ok: false, reason: expect.stringMatching(/cut short/) });
    // Bytes after the end-of-image marker (some cameras append them) are ignored.
    expect(readJpegStructure(new Uint8Array([...JPEG, 1, 2, 3]))).toMatchObject({ ok: true });
  });

  it('refuses the kinds jpeg-js cannot decode, too many pixels, and a 12-bit frame, each saying what to do', () => {
    const sof = markerAt(JPEG, 0xc0);
    const as = (marker: number) => {
      const b = new Uint8Array(JPEG);
      b[sof + 1] = marker;
      return b;
    };
    expect(readJpegStructure(as(0xc9))).toEqual({ ok: false, reason: 'arithmetic-coded JPEGs are not supported: save it as a baseline or progressive JPEG, or as a PNG' });
    expect(readJpegStructure(as(0xc3))).toMatchObject({ ok: false, reason: expect.stringMatching(/^lossless JPEGs are not supported/) });
    expect(readJpegStructure(as(0xc5))).toMatchObject({ ok: false, reason: expect.stringMatching(/^hierarchical JPEGs/) });
    expect(readJpegStructure(JPEG, { maxPixels: W * H - 1 })).toEqual({ ok: false, reason: `image is ${W}×${H} = ${W * H} pixels, over the limit of ${W * H - 1} pixels` });
    const twelve = new Uint8Array(JPEG);
    twelve[sof + 4] = 12;
    expect(readJpegStructure(twelve)).toMatchObject({ ok: false, reason: expect.stringMatching(/^12-bit JPEGs are not supported/) });
  });

  it('refuses, before any decoding, what the decoder can never read (the JPEG review: half of what the walk took, the decoder then refused, a third with a bare TypeError)', () => {
    const edit = (at: number, value: number) => {
      const b = new Uint8Array(JPEG);
      b[at] = value;
      return b;
    };
    const sof = markerAt(JPEG, 0xc0);
    const sos = markerAt(JPEG, 0xda);
    const dqt = markerAt(JPEG, 0xdb);
    const dht = markerAt(JPEG, 0xc4);
    const reason = (b: Uint8Array) => {
      const r = readJpegStructure(b);
      return r.ok ? 'accepted' : r.reason;
    };
    // A scan naming a component the frame does not have (SOS: length, count, then id/tables pairs).
    expect(reason(edit(sos + 5, 9))).toBe('corrupt JPEG: scan 1 names component 9, which the frame does not have');
    // Sampling factors of 0 (the SOF's first component: id, then h<<4|v).
    expect(reason(edit(sof + 11, 0x01))).toBe(`corrupt JPEG: component ${JPEG[sof + 10]} has sampling factors 0×1 (each must be 1 to 4)`);
    // A quantization table of precision 2.
    expect(reason(edit(dqt + 4, 0x20))).toMatch(/^corrupt JPEG: a quantization table at byte \d+ has precision 2 and id 0/);
    // A Huffman table whose code cannot exist: 200 codes of length 1.
    expect(reason(edit(dht + 5, 200))).toMatch(/^corrupt JPEG: a Huffman table at byte \d+ describes a code that cannot exist$/);
    // The tables missing altogether (the segment turned into a comment): named by the scan that needs them.
    expect(reason(edit(dht + 1, 0xfe))).toBe('corrupt JPEG: scan 1 uses DC Huffman table 0, not defined before it');
    // A marker the decoder does not know (arithmetic conditioning, 0xFFCC, in place of a comment).
    expect(reason(edit(dht + 1, 0xcc))).toBe(`corrupt JPEG: unknown marker 0xFFCC at byte ${dht}`);
    // A small file declaring a large image: its first scan has far less data than its blocks need.
    const tall = new Uint8Array(JPEG);
    tall[sof + 5] = 0x0f; // height 32 → 3872
    tall[sof + 6] = 0x20;
    expect(reason(tall)).toMatch(/^corrupt JPEG: scan 1 holds \d+ bytes of image data for \d+ blocks \(cut short\?\)$/);
  });

  it(`refuses more than ${MAX_JPEG_SCANS} scans before any decoding (each is a pass over the image)`, () => {
    const sos = markerAt(JPEG, 0xda);
    const eoi = JPEG.length - 2;
    const scan = JPEG.subarray(sos, eoi);
    const build = (n: number) => new Uint8Array([...JPEG.subarray(0, sos), ...Array.from({ length: n }, () => [...scan]).flat(), 0xff, 0xd9]);
    expect(readJpegStructure(build(MAX_JPEG_SCANS))).toMatchObject({ ok: true, structure: { scans: MAX_JPEG_SCANS } });
    expect(readJpegStructure(build(MAX_JPEG_SCANS + 1))).toEqual({ ok: false, reason: `the JPEG has more than ${MAX_JPEG_SCANS} scans; save it again with a common encoder, or as a PNG` });
  });

  it('is not fooled by 0xFF bytes inside the image data (stuffed 0xFF00 and restart markers)', () => {
    // jpeg-js's encoder stuffs every 0xFF of its entropy data; a picture of noise has many.
    const noise = new Uint8Array(64 * 64 * 4).map((_, i) => (i % 4 === 3 ? 255 : (i * 2654435761) >>> 24));
    const jpeg = new Uint8Array(encode({ width: 64, height: 64, data: noise }, 100).data);
    const sos = markerAt(jpeg, 0xda);
    let stuffed = 0;
    for (let i = sos; i < jpeg.length - 1; i++) if (jpeg[i] === 0xff && jpeg[i + 1] === 0) stuffed++;
    expect(stuffed).toBeGreaterThan(0);
    expect(readJpegStructure(jpeg)).toMatchObject({ ok: true, structure: { width: 64, height: 64, scans: 1 } });
  });
});

describe('decodeJpeg and the engine decoder', () => {
  it('decodes close to the source picture (quality 95), through decodeImage too', () => {
    const r = decodeJpeg(JPEG);
    if (!r.ok) throw new Error(r.reason);
    let err = 0;
    for (let i = 0; i < W * H; i++) for (let c = 0; c < 3; c++) err += Math.abs(r.image.rgb[3 * i + c]! - RGBA[4 * i + c]!);
    expect(err / (3 * W * H)).toBeLessThan(3);
    const planar = decodeImage(JPEG);
    expect([planar.width, planar.height]).toEqual([W, H]);
    // Planar [0,1]: the red channel at (1,1) and the blue at the top right.
    expect(planar.data[1 * W + 1]).toBeGreaterThan(0.9);
    expect(planar.data[2 * W * H + 1 * W + (W - 2)]).toBeGreaterThan(0.9);
  });

  it('turns each of the 8 EXIF orientations upright (where the stored top-left and top-right corners end up)', () => {
    // EXIF 2.3's orientations, as a viewer shows them: the stored top-left corner (red) and top-right corner (blue).
    const expected: Record<number, { red: string; blue: string; swap: boolean }> = {
      1: { red: 'TL', blue: 'TR', swap: false },
      2: { red: 'TR', blue: 'TL', swap: false },
      3: { red: 'BR', blue: 'BL', swap: false },
      4: { red: 'BL', blue: 'BR', swap: false },
      5: { red: 'TL', blue: 'BL', swap: true },
      6: { red: 'TR', blue: 'BR', swap: true },
      7: { red: 'BR', blue: 'TR', swap: true },
      8: { red: 'BL', blue: 'TL', swap: true },
    };
    for (const [o, want] of Object.entries(expected)) {
      const r = decodeJpeg(withOrientation(JPEG, Number(o), Number(o) % 2 === 0));
      if (!r.ok) throw new Error(r.reason);
      expect([r.image.width, r.image.height], `orientation ${o}`).toEqual(want.swap ? [H, W] : [W, H]);
      expect(corners(r.image), `orientation ${o}`).toEqual({ red: want.red, blue: want.blue });
    }
    // The engine's decoder applies it as well: a portrait photo starts upright.
    expect([decodeImage(withOrientation(JPEG, 6)).width, decodeImage(withOrientation(JPEG, 6)).height]).toEqual([H, W]);
  });

  it('a refused or broken JPEG is invalid_input from the engine, with the reason', () => {
    const sos = markerAt(JPEG, 0xda);
    expect(() => decodeImage(JPEG.subarray(0, sos + 40))).toThrow(/^corrupt JPEG: the file is cut short/);
    try {
      decodeImage(JPEG.subarray(0, sos + 40));
    } catch (e) {
      expect((e as { code: string }).code).toBe('invalid_input');
    }
    // A Huffman table that is not there: the decoder's own error, strictly (not a grey block).
    const dht = markerAt(JPEG, 0xc4);
    const noTables = new Uint8Array(JPEG);
    noTables[dht + 1] = 0xfe; // the table segment becomes a comment
    expect(decodeJpeg(noTables)).toMatchObject({ ok: false, reason: expect.stringMatching(/^corrupt JPEG: /) });
  });
});

describe('files from another encoder (libjpeg-turbo; test/fixtures/jpeg/README.md)', () => {
  const fixture = (name: string) => new Uint8Array(readFileSync(new URL(`../fixtures/jpeg/${name}`, import.meta.url)));
  /** A binary PPM (P6) or PGM (P5) as RGB. */
  function pnm(name: string): { width: number; height: number; rgb: Uint8Array } {
    const b = fixture(name);
    const m = /^(P[56])\s+(\d+)\s+(\d+)\s+255\s/.exec(Buffer.from(b.subarray(0, 32)).toString('latin1'))!;
    const [width, height, grey] = [Number(m[2]), Number(m[3]), m[1] === 'P5'];
    const px = b.subarray(m[0].length);
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0; i < width * height; i++) for (let c = 0; c < 3; c++) rgb[3 * i + c] = grey ? px[i]! : px[3 * i + c]!;
    return { width, height, rgb };
  }

  it.each([
    ['progressive', { components: 3, progressive: true, scans: 10 }],
    ['grey', { components: 1, progressive: false, scans: 1 }],
    ['restart', { components: 3, progressive: false, scans: 1 }],
    // A restart interval (2) that does not divide a one-component scan's blocks: the published jpeg-js
    // read past the scan's last block and refused both (the vendored decoder's one fix).
    ['grey-restart', { components: 1, progressive: false, scans: 1 }],
    ['progressive-restart', { components: 3, progressive: true, scans: 10 }],
  ])('%s: decoded within 2 of libjpeg-turbo (djpeg -nosmooth) at every sample', (name, structure) => {
    const bytes = fixture(`${name}.jpg`);
    expect(readJpegStructure(bytes)).toEqual({ ok: true, structure: { width: 32, height: 24, orientation: 1, ...structure } });
    const r = decodeJpeg(bytes);
    if (!r.ok) throw new Error(r.reason);
    const ref = pnm(`${name}.djpeg.pnm`);
    expect([r.image.width, r.image.height]).toEqual([ref.width, ref.height]);
    const worst = r.image.rgb.reduce((m, v, i) => Math.max(m, Math.abs(v - ref.rgb[i]!)), 0);
    expect(worst).toBeLessThanOrEqual(2);
  });

  it('a CMYK JPEG with its Adobe segment (transform 0, inverted CMYK, as Pillow writes it) decodes within 2 of Pillow\'s own RGB conversion', () => {
    const bytes = fixture('cmyk.jpg');
    expect(readJpegStructure(bytes)).toMatchObject({ ok: true, structure: { width: 16, height: 12, components: 4 } });
    const r = decodeJpeg(bytes);
    if (!r.ok) throw new Error(r.reason);
    const ref = pnm('cmyk.pil.pnm');
    expect([r.image.width, r.image.height]).toEqual([ref.width, ref.height]);
    const worst = r.image.rgb.reduce((m, v, i) => Math.max(m, Math.abs(v - ref.rgb[i]!)), 0);
    expect(worst).toBeLessThanOrEqual(2);
  });

  it('arithmetic coding, as libjpeg-turbo writes it, is refused with what to do', () => {
    expect(readJpegStructure(fixture('arithmetic.jpg'))).toEqual({ ok: false, reason: 'arithmetic-coded JPEGs are not supported: save it as a baseline or progressive JPEG, or as a PNG' });
  });
});

describe('checkInitImage: what the API and the CLI run on an init file', () => {
  it('takes a PNG or a JPEG, naming its type; refuses other formats with what to convert to', async () => {
    const png = (await import('../../gpu-worker/engine/synth/image.ts')).encodePng({ width: 2, height: 2, data: new Float32Array(12).fill(0.5) });
    expect(await checkInitImage(png)).toEqual({ ok: true, contentType: 'image/png' });
    expect(await checkInitImage(JPEG)).toEqual({ ok: true, contentType: 'image/jpeg' });
    expect(checkInitImageSync(JPEG)).toEqual({ ok: true, contentType: 'image/jpeg' });
    expect(initImageContentType(JPEG)).toBe('image/jpeg');
    expect(initImageContentType(png)).toBe('image/png');
    const webp = new Uint8Array([0x52, 0x49, 0x46, 0x46, 0, 0, 0, 0, 0x57, 0x45, 0x42, 0x50, 0, 0, 0, 0]);
    expect(await checkInitImage(webp)).toEqual({ ok: false, reason: 'WebP images are not supported: convert to PNG or JPEG' });
    expect(await checkInitImage(JPEG.subarray(0, 100))).toMatchObject({ ok: false, reason: expect.stringMatching(/^corrupt JPEG/) });
  });
});
