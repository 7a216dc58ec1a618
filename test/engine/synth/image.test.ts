import { describe, expect, it } from 'vitest';
import { crc32, deflateSync } from 'node:zlib';
import { encode as pngEncode } from 'fast-png';
import {
  createImage, cropCenter, crop, decodeImage, encodePng, noiseImage, resizeBilinear, resizeCover, solidImage, squareCropsCovering,
  type PlanarImage,
} from '../../../gpu-worker/engine/synth/image.ts';
import { createRng } from '../../../gpu-worker/engine/synth/rng.ts';
import { handMadePng } from '../../helpers/png.ts';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';

function expectCode(fn: () => unknown, code: string, msg?: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(EngineError);
    expect((e as EngineError).code).toBe(code);
    if (msg) expect((e as EngineError).message).toMatch(msg);
    return;
  }
  throw new Error('expected an EngineError');
}

const px = (img: PlanarImage, c: number, x: number, y: number) => img.data[c * img.width * img.height + y * img.width + x];

describe('PNG codec', () => {
  it('round-trips every 8-bit value exactly', () => {
    const w = 256, h = 3;
    const img = createImage(w, h);
    for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) img.data[c * w * h + y * w + x] = ((x + 85 * c + y) % 256) / 255;
    const back = decodeImage(encodePng(img));
    expect(back.width).toBe(w);
    expect(back.height).toBe(h);
    expect(Array.from(back.data)).toEqual(Array.from(img.data));
    // And the bytes are stable: encode(decode(encode(x))) === encode(x).
    expect(encodePng(back)).toEqual(encodePng(img));
  });

  it('clamps and rounds half up', () => {
    const img = createImage(4, 1);
    img.data.set([-0.5, 1.7, 0.5 / 255, 127.5 / 255]); // R channel of 4 pixels
    const back = decodeImage(encodePng(img));
    expect([0, 1, 2, 3].map((x) => Math.round(px(back, 0, x, 0) * 255))).toEqual([0, 255, 1, 128]);
    const nan = createImage(1, 1);
    nan.data[0] = NaN;
    expectCode(() => encodePng(nan), 'invalid_input', /NaN/);
  });

  it('decodes RGBA (over white), grey, grey+alpha, 16-bit, palette and 1-bit', () => {
    const rgba = decodeImage(pngEncode({ width: 2, height: 1, channels: 4, depth: 8, data: new Uint8Array([255, 0, 0, 255, 0, 0, 0, 0]) }));
    expect([px(rgba, 0, 0, 0), px(rgba, 1, 0, 0), px(rgba, 2, 0, 0)]).toEqual([1, 0, 0]);
    expect([px(rgba, 0, 1, 0), px(rgba, 1, 1, 0), px(rgba, 2, 1, 0)]).toEqual([1, 1, 1]); // transparent → white

    const grey = decodeImage(pngEncode({ width: 2, height: 1, channels: 1, depth: 8, data: new Uint8Array([0, 51]) }));
    expect([0, 1, 2].map((c) => px(grey, c, 1, 0))).toEqual([0.2, 0.2, 0.2].map(Math.fround));

    const ga = decodeImage(pngEncode({ width: 1, height: 1, channels: 2, depth: 8, data: new Uint8Array([0, 51]) }));
    expect(px(ga, 0, 0, 0)).toBeCloseTo(0.8, 6); // black at 20 % alpha over white

    const d16 = decodeImage(pngEncode({ width: 1, height: 1, channels: 3, depth: 16, data: new Uint16Array([65535, 32768, 0]) }));
    expect(px(d16, 0, 0, 0)).toBe(1);
    expect(px(d16, 1, 0, 0)).toBeCloseTo(32768 / 65535, 6);
    expect(px(d16, 2, 0, 0)).toBe(0);

    const pal = decodeImage(pngEncode({
      width: 3, height: 1, channels: 1, depth: 8, data: new Uint8Array([2, 0, 1]),
      palette: [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
    }));
    expect([0, 1, 2].map((c) => px(pal, c, 0, 0))).toEqual([0, 0, 1]);
    expect([0, 1, 2].map((c) => px(pal, c, 1, 0))).toEqual([1, 0, 0]);

    // 1-bit grey, width 10: rows are padded to 2 bytes.
    const bits = decodeImage(pngEncode({ width: 10, height: 2, channels: 1, depth: 1, data: new Uint8Array([0b10100000, 0b01000000, 0xff, 0xc0]) }));
    expect(Array.from({ length: 10 }, (_, x) => px(bits, 0, x, 0))).toEqual([1, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
    expect(Array.from({ length: 10 }, (_, x) => px(bits, 0, x, 1))).toEqual(new Array(10).fill(1));
  });

  it('refuses corrupt, truncated, non-PNG and oversized input with typed errors', () => {
    const good = encodePng(noiseImage(32, 32, createRng(1)));
    const flipped = good.slice();
    flipped[good.length - 30] ^= 0xff; // inside IDAT (CRC or zlib fails)
    expectCode(() => decodeImage(flipped), 'invalid_input', /corrupt PNG/);
    expectCode(() => decodeImage(good.subarray(0, good.length >> 1)), 'invalid_input', /corrupt PNG/);
    expectCode(() => decodeImage(good.subarray(0, 20)), 'invalid_input', /corrupt PNG/);
    expectCode(() => decodeImage(new Uint8Array([1, 2, 3])), 'invalid_input', /not a PNG/);
    // A JPEG is read (ADR 0035; test/shared/jpeg.test.ts): one cut short in its first segment is refused as such.
    expectCode(() => decodeImage(new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 0x10])), 'invalid_input', /^corrupt JPEG: segment 0xFFE0 at byte 2 runs past the end of the file$/);
    expectCode(() => decodeImage(new Uint8Array([0x52, 0x49, 0x46, 0x46, 0, 0, 0, 0, 0x57, 0x45, 0x42, 0x50, 0, 0])), 'invalid_input', /^WebP images are not supported: convert to PNG or JPEG$/);
    expectCode(() => decodeImage(good, { maxBytes: 100 }), 'invalid_input', /limit of 100 bytes/);
    expectCode(() => decodeImage(good, { maxPixels: 32 * 31 }), 'invalid_input', /32×32 = 1024 pixels, over the limit of 992/);
    // A header claiming 100000×100000 is refused from the header, before any allocation.
    const bomb = good.slice();
    new DataView(bomb.buffer).setUint32(16, 100000);
    new DataView(bomb.buffer).setUint32(20, 100000);
    expectCode(() => decodeImage(bomb), 'invalid_input', /header chunk fails its CRC check/);
    new DataView(bomb.buffer).setUint32(29, crc32(bomb.subarray(12, 29))); // a bomb with a correct CRC
    expectCode(() => decodeImage(bomb), 'invalid_input', /100000×100000 = 10000000000 pixels, over the limit/);
  });

  it('refuses a decompression bomb (pixel data inflating past its header) fast, without inflating it', () => {
    // A valid PNG that says 64×64 RGB (12 352 bytes of rows) and carries 64 MB of deflated zeros.
    const png = handMadePng(64, 64, deflateSync(Buffer.alloc(64 * 1024 * 1024)));
    expect(png.length).toBeLessThan(100_000);
    const t0 = performance.now();
    expectCode(() => decodeImage(png), 'invalid_input', /inflates to more than the 12352 bytes its 64×64 header declares/);
    expect(performance.now() - t0).toBeLessThan(2_000); // the unbounded decoder took ~20 s per MB of file
    // The same hand-made file with exactly its rows decodes (the check is not a false alarm).
    const rows = Buffer.alloc(64 * (64 * 3 + 1));
    expect(decodeImage(handMadePng(64, 64, deflateSync(rows))).width).toBe(64);
  });

  it('a bomb in an ancillary chunk (a 64 MB colour profile) is never inflated: the image decodes at once', () => {
    const rows = Buffer.alloc(64 * (64 * 3 + 1));
    rows[1] = 255; // the first pixel red
    const profile = Buffer.concat([Buffer.from('icc\0\0', 'latin1'), deflateSync(Buffer.alloc(64 * 1024 * 1024))]);
    const png = handMadePng(64, 64, deflateSync(rows), [['iCCP', profile], ['zTXt', profile]]);
    const t0 = performance.now();
    const img = decodeImage(png);
    expect(performance.now() - t0).toBeLessThan(2_000); // fast-png inflated such a profile for ~13 s per MB
    expect([img.width, px(img, 0, 0, 0), px(img, 0, 1, 0)]).toEqual([64, 1, 0]);
  });

  it('pixel data whose zlib trailer (Adler-32) is wrong still decodes, as other decoders take it', () => {
    const rows = Buffer.alloc(16 * (16 * 3 + 1), 0);
    const stream = Buffer.from(deflateSync(rows));
    stream[stream.length - 1]! ^= 0xff;
    expect(decodeImage(handMadePng(16, 16, stream)).width).toBe(16);
  });
});

describe('resizing and cropping', () => {
  it('keeps a constant image constant (down, up, non-square)', () => {
    const img = solidImage(37, 23, [0.25, 0.5, 0.75]);
    for (const [w, h] of [[10, 7], [224, 224], [50, 11], [37, 23]]) {
      const r = resizeBilinear(img, w, h);
      let dev = 0;
      for (let c = 0; c < 3; c++) for (let i = 0; i < w * h; i++) dev = Math.max(dev, Math.abs(r.data[c * w * h + i] - [0.25, 0.5, 0.75][c]));
      expect(dev).toBeLessThan(1e-6);
    }
  });

  it('antialiases: a downsampled checkerboard averages to grey', () => {
    const n = 64;
    const img = createImage(n, n);
    for (let c = 0; c < 3; c++) for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) img.data[c * n * n + y * n + x] = (x + y) % 2;
    const aa = resizeBilinear(img, 8, 8);
    for (const v of aa.data) expect(v).toBeCloseTo(0.5, 2);
    // Without antialiasing the 2-tap filter samples only neighbouring pairs, so at a non-integer
    // factor (64→7) the output aliases into a visible pattern instead of flat grey.
    const plain = resizeBilinear(img, 7, 7, { antialias: false });
    const spread = Math.max(...plain.data) - Math.min(...plain.data);
    expect(spread).toBeGreaterThan(0.2);
  });

  it('upsample 16→224 interpolates smoothly between pixel centres', () => {
    // A horizontal ramp: value = x/15 at source pixel x.
    const s = createImage(16, 16);
    for (let c = 0; c < 3; c++) for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) s.data[c * 256 + y * 16 + x] = x / 15;
    const u = resizeBilinear(s, 224, 224);
    // Output pixel o samples source coordinate (o+0.5)/14 − 0.5; inside the ramp it is linear.
    for (const o of [7, 20, 50, 111, 150, 216]) {
      const sx = (o + 0.5) / 14 - 0.5;
      expect(px(u, 1, o, 100)).toBeCloseTo(sx / 15, 5);
    }
    // Monotone, no overshoot, edges clamp to the edge pixels.
    for (let o = 1; o < 224; o++) expect(px(u, 0, o, 5)).toBeGreaterThanOrEqual(px(u, 0, o - 1, 5) - 1e-7);
    expect(px(u, 0, 0, 0)).toBeCloseTo(0, 6);
    expect(px(u, 0, 223, 0)).toBeCloseTo(1, 6);
  });

  it('crops', () => {
    const img = createImage(5, 4);
    for (let i = 0; i < img.data.length; i++) img.data[i] = i;
    const c = cropCenter(img, 3, 2);
    expect(c.width).toBe(3);
    expect(Array.from(c.data.subarray(0, 6))).toEqual([6, 7, 8, 11, 12, 13]);
    expect(Array.from(crop(img, 4, 3, 1, 1).data)).toEqual([19, 39, 59]);
    expectCode(() => crop(img, 4, 3, 2, 1), 'invalid_input', /outside/);
    expectCode(() => cropCenter(img, 6, 1), 'invalid_input');
    const cov = resizeCover(solidImage(40, 20, [1, 0, 0]), 16, 16);
    expect([cov.width, cov.height]).toEqual([16, 16]);
  });

  it('resizeCover of an extreme aspect ratio crops before it scales: a 1×8192 image costs a 224² output, not GBs', () => {
    const tall = createImage(1, 8192);
    for (let r = 0; r < 8192; r++) for (let c = 0; c < 3; c++) tall.data[c * 8192 + r] = r / 8191;
    const rss0 = process.memoryUsage().rss;
    const out = resizeCover(tall, 224, 224);
    expect(process.memoryUsage().rss - rss0).toBeLessThan(200 * 2 ** 20); // scaling the whole column first took 5 GB
    expect([out.width, out.height]).toEqual([224, 224]);
    // the centre of the column: values around 0.5, one source pixel spread over the output
    for (const v of out.data) expect(Math.abs(v - 0.5)).toBeLessThan(0.001);
    // an ordinary cover (landscape into a square) still shows the centre, unchanged in range
    const wide = createImage(300, 100);
    for (let x = 0; x < 300; x++) for (let y = 0; y < 100; y++) for (let c = 0; c < 3; c++) wide.data[c * 30000 + y * 300 + x] = x / 299;
    const sq = resizeCover(wide, 224, 224);
    const mid = sq.data[112 * 224 + 112];
    expect(Math.abs(mid - 0.5)).toBeLessThan(0.01);
    expect(sq.data[112 * 224] / (1 / 3)).toBeGreaterThan(0.95); // the left edge shows column ~100 of 300
  });

  it('squareCropsCovering: ceil(long/short) squares flush with both ends, every pixel in one of them', () => {
    const img = createImage(100, 30);
    for (let i = 0; i < img.data.length; i++) img.data[i] = i;
    const windows = squareCropsCovering(img);
    expect(windows).toHaveLength(4);
    expect(windows.every((w) => w.width === 30 && w.height === 30)).toBe(true);
    // Which source columns each window holds: from its first pixel's value.
    const starts = windows.map((w) => w.data[0]!);
    expect(starts[0]).toBe(0);
    expect(starts[3]).toBe(70); // flush with the right end
    const covered = new Set(starts.flatMap((x0) => Array.from({ length: 30 }, (_, dx) => x0 + dx)));
    expect(covered.size).toBe(100);
    // Tall images the same way; a square image is its own one window.
    expect(squareCropsCovering(createImage(20, 50)).map((w) => [w.width, w.height])).toEqual([[20, 20], [20, 20], [20, 20]]);
    const square = createImage(8, 8);
    expect(squareCropsCovering(square)).toEqual([square]);
  });

  it('resizeCover stays centred when it crops first: a symmetric source gives a symmetric output', () => {
    // 1×10 column, bright in rows 4 and 5: symmetric about its middle. Covering 16×16 scales it ×16
    // and keeps ~1 source row; an off-centre window (7 rows cut: 3 above, 4 below) shifted it.
    for (const n of [10, 11, 8192]) {
      const col = createImage(1, n);
      const mid = (n - 1) / 2;
      for (let r = 0; r < n; r++) for (let c = 0; c < 3; c++) col.data[c * n + r] = Math.abs(r - mid) < 1 ? 1 : 0;
      const out = resizeCover(col, 16, 16);
      for (let y = 0; y < 8; y++) expect(out.data[y * 16], `n=${n} row ${y}`).toBeCloseTo(out.data[(15 - y) * 16], 5);
    }
  });

  it('noise is deterministic per seed and in range; bad colours are refused', () => {
    const a = noiseImage(8, 8, createRng(3));
    expect(a.data).toEqual(noiseImage(8, 8, createRng(3)).data);
    expect(a.data).not.toEqual(noiseImage(8, 8, createRng(4)).data);
    for (const v of a.data) expect(v >= 0 && v <= 1).toBe(true);
    expectCode(() => solidImage(2, 2, [1.5, 0, 0]), 'invalid_input');
    expectCode(() => createImage(0, 3), 'invalid_input');
  });
});
