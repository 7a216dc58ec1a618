// The whole-file PNG check the API runs on an uploaded init image, against the engine's decoder (which
// runs the same check, then fast-png). What matters: a file the check accepts, the worker decodes,
// so an upload the API lets through does not fail the job later; and the common damage (a file cut
// short, a flipped bit) is refused with a reason.
import { describe, expect, it, vi } from 'vitest';
import { constants as zlibConstants, deflateRawSync, deflateSync, inflateSync } from 'node:zlib';
import { encode as pngEncode } from 'fast-png';
import { checkPngFile, checkPngFileSync, PNG_MAX_CHUNKS, pngRawBytes } from '../../shared/png-check.ts';
import { decodeImage, encodePng, noiseImage } from '../../gpu-worker/engine/synth/image.ts';
import { createRng } from '../../gpu-worker/engine/synth/rng.ts';
import { handMadePng, pngChunk } from '../helpers/png.ts';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A PNG from its IHDR fields and its pixel stream, with correct CRCs. */
function pngOf(width: number, height: number, depth: number, colourType: number, interlace: number, idat: Uint8Array, before: Array<[string, Uint8Array]> = []): Uint8Array {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([depth, colourType, 0, 0, interlace], 8);
  return Buffer.concat([SIGNATURE, pngChunk('IHDR', ihdr), ...before.map(([t, d]) => pngChunk(t, d)), pngChunk('IDAT', idat), pngChunk('IEND', new Uint8Array(0))]);
}

function engineDecodes(bytes: Uint8Array): boolean {
  try {
    decodeImage(bytes);
    return true;
  } catch {
    return false;
  }
}

async function verdicts(bytes: Uint8Array): Promise<{ api: boolean; sync: boolean; engine: boolean; reason?: string }> {
  const api = await checkPngFile(bytes);
  const sync = checkPngFileSync(bytes);
  return { api: api.ok, sync: sync.ok, engine: engineDecodes(bytes), ...(api.ok ? {} : { reason: api.reason }) };
}

// An interlaced 8-bit RGB image of 13×11: seven passes of rows, each row a filter byte (here 1, Sub) and pixels.
function interlacedRgb(): Uint8Array {
  const header = { width: 13, height: 11, bitDepth: 8, colourType: 2, channels: 3, interlaced: true };
  const rows = Buffer.alloc(pngRawBytes(header), 9);
  // Mark every row's first byte with a filter type (a row of pass p is ceil(w_p·3) + 1 bytes).
  let at = 0;
  for (const [x0, y0, dx, dy] of [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]) {
    const pw = Math.ceil((13 - x0!) / dx!);
    const ph = Math.ceil((11 - y0!) / dy!);
    for (let r = 0; r < ph; r++, at += pw * 3 + 1) rows[at] = 1;
  }
  expect(at).toBe(rows.length);
  return pngOf(13, 11, 8, 2, 1, deflateSync(rows));
}

const VALID: Array<[string, Uint8Array]> = [
  ['RGB 8-bit', encodePng(noiseImage(9, 7, createRng(1)))],
  ['RGBA 8-bit', pngEncode({ width: 3, height: 2, channels: 4, depth: 8, data: new Uint8Array(24).map((_, i) => i * 10) })],
  ['grey 1-bit, rows padded', pngEncode({ width: 10, height: 2, channels: 1, depth: 1, data: new Uint8Array([0b10100000, 0b01000000, 0xff, 0xc0]) })],
  ['palette', pngEncode({ width: 3, height: 2, channels: 1, depth: 8, data: new Uint8Array([2, 0, 1, 1, 1, 0]), palette: [[255, 0, 0], [0, 255, 0], [0, 0, 255]] })],
  ['RGB 16-bit', pngEncode({ width: 2, height: 2, channels: 3, depth: 16, data: new Uint16Array([65535, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) })],
  ['interlaced RGB', interlacedRgb()],
];

describe('the whole-file PNG check (API) agrees with the engine decoder (worker)', () => {
  it('accepts every kind of valid file the engine decodes: bit depths, palette, alpha, interlace', async () => {
    for (const [name, bytes] of VALID) expect(await verdicts(bytes), name).toEqual({ api: true, sync: true, engine: true });
  });

  it('a file cut short anywhere past its header is refused by both, with a reason', async () => {
    for (const [name, bytes] of VALID) {
      for (let cut = 33; cut < bytes.length; cut++) {
        const v = await verdicts(bytes.subarray(0, cut));
        expect(v, `${name} cut at ${cut}`).toMatchObject({ api: false, sync: false, engine: false });
        expect(v.reason, `${name} cut at ${cut}`).toMatch(/^corrupt PNG: .*(cut short|ends inside)/);
      }
    }
  });

  it('any single flipped bit: what the check accepts, the engine decodes (and the reverse)', async () => {
    let refused = 0;
    let flips = 0;
    for (const [name, bytes] of VALID) {
      // An ancillary chunk's type, data and CRC (encodePng's XMP marking) are neither decoded nor checked,
      // as libpng treats them (these flips keep its type ancillary): a flip there changes no pixel and is
      // taken by both sides alike.
      const unread = ancillaryPayloads(bytes);
      for (let i = 8; i < bytes.length; i++) {
        const read = !unread.some(([from, to]) => i >= from && i < to);
        for (const bit of [0x01, 0x80]) {
          const bad = Uint8Array.from(bytes);
          bad[i]! ^= bit;
          const v = await verdicts(bad);
          expect(v.api, `${name}: byte ${i} ^ ${bit}`).toBe(v.engine);
          expect(v.sync, `${name}: byte ${i} ^ ${bit}`).toBe(v.api);
          if (!read) continue;
          flips++;
          if (!v.api) refused++;
        }
      }
    }
    // Every other flip lands in a CRC-checked chunk or its length: all are caught.
    expect(refused).toBe(flips);
  });

  it('refuses pixel data the header does not describe, saying how', async () => {
    const cases: Array<[string, Uint8Array, RegExp]> = [
      ['too few rows', handMadePng(8, 8, deflateSync(Buffer.alloc(7 * (8 * 3 + 1)))), /holds 175 of the 200 bytes its 8×8 header declares/],
      ['a bomb', handMadePng(8, 8, deflateSync(Buffer.alloc(4 * 1024 * 1024))), /inflates to more than the 200 bytes/],
      ['an unknown row filter', handMadePng(2, 2, deflateSync(Buffer.from([0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6]))), /unknown row filter 7/],
      ['not zlib', handMadePng(2, 2, Buffer.from([0x12, 0x34, 0, 0])), /not a zlib stream/],
      ['a broken deflate stream', handMadePng(2, 2, Buffer.from([0x78, 0x9c, 0xff, 0xff, 0xff])), /does not inflate/],
      ['no IDAT', Buffer.concat([Uint8Array.from(handMadePng(2, 2, new Uint8Array(0))).subarray(0, 33), pngChunk('IEND', new Uint8Array(0))]), /no pixel data/],
      ['a palette image without a palette', pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3))), /without a palette/],
      ['a palette of 257 entries', pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3)), [['PLTE', new Uint8Array(771)]]), /257 entries \(at most 256\)/],
      // Every row there, but a stream that never ends, or ends without its checksum: decoders refuse both.
      ['a stream without its last block', handMadePng(2, 2, Buffer.concat([Buffer.from([0x78, 0x9c]), deflateRawSync(Buffer.alloc(2 * 7), { finishFlush: zlibConstants.Z_SYNC_FLUSH })])), /ends before its last block/],
      ['a stream without its checksum', handMadePng(2, 2, deflateSync(Buffer.alloc(2 * 7)).subarray(0, -4)), /no checksum after its last block/],
    ];
    for (const [name, bytes, why] of cases) {
      const v = await verdicts(bytes);
      expect(v, name).toMatchObject({ api: false, sync: false, engine: false });
      expect(v.reason, name).toMatch(why);
    }
    // IDAT chunks split by another chunk.
    const rows = deflateSync(Buffer.alloc(2 * 7));
    const split = Buffer.concat([
      Uint8Array.from(handMadePng(2, 2, new Uint8Array(0))).subarray(0, 33),
      pngChunk('IDAT', rows.subarray(0, 4)), pngChunk('tEXt', Buffer.from('a\0b')), pngChunk('IDAT', rows.subarray(4)), pngChunk('IEND', new Uint8Array(0)),
    ]);
    expect((await verdicts(split)).reason).toMatch(/IDAT chunks are not consecutive/);
  });

  it('refuses a chunk order or content the decoder refuses or reads differently: a second header, a critical chunk PNG does not define, a second palette or one after the pixels, a tRNS it refuses, an IEND with data', async () => {
    const ihdr = (w: number, h: number) => {
      const d = Buffer.alloc(13);
      d.writeUInt32BE(w, 0);
      d.writeUInt32BE(h, 4);
      d.set([8, 2, 0, 0, 0], 8);
      return d;
    };
    const rows = deflateSync(Buffer.alloc(2 * 7));
    const palette = new Uint8Array([255, 0, 0, 0, 255, 0]);
    const cases: Array<[string, Uint8Array, RegExp]> = [
      // The check read the first header; fast-png decoded with the second (the job failed in the worker: "Unsupported filter").
      ['a second IHDR', pngOf(2, 2, 8, 2, 0, rows, [['IHDR', ihdr(64, 64)]]), /more than one header/],
      ['a critical chunk PNG does not define (Apple CgBI)', pngOf(2, 2, 8, 2, 0, rows, [['CgBI', new Uint8Array(4)]]), /critical chunk "CgBI"/],
      ['two palettes', pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3)), [['PLTE', palette], ['PLTE', palette]]), /more than one palette/],
      ['a palette after the pixels', Buffer.concat([SIGNATURE, pngChunk('IHDR', Buffer.from([0, 0, 0, 2, 0, 0, 0, 2, 8, 3, 0, 0, 0])), pngChunk('IDAT', deflateSync(Buffer.alloc(2 * 3))), pngChunk('PLTE', palette), pngChunk('IEND', new Uint8Array(0))]), /palette \(PLTE chunk\) after the pixel data/],
      // Transparency the decoder refuses (each failed its job in the worker after the API took it), and an IEND with data.
      ['a tRNS before the palette', pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3)), [['tRNS', new Uint8Array([0, 128])], ['PLTE', palette]]), /transparency chunk \(tRNS\) before the palette/],
      ['a tRNS longer than the palette', pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3)), [['PLTE', palette], ['tRNS', new Uint8Array([0, 128, 7])]]), /tRNS\) of 3 entries for a palette of 2/],
      ['a tRNS in an RGBA image', pngOf(2, 2, 8, 6, 0, deflateSync(Buffer.alloc(2 * 9)), [['tRNS', new Uint8Array(6)]]), /alpha channel \(colour type 6\)/],
      ['a tRNS in a grey + alpha image', pngOf(2, 2, 8, 4, 0, deflateSync(Buffer.alloc(2 * 5)), [['tRNS', new Uint8Array(2)]]), /alpha channel \(colour type 4\)/],
      ['a grey tRNS of an odd length', pngOf(2, 2, 8, 0, 0, deflateSync(Buffer.alloc(2 * 3)), [['tRNS', new Uint8Array(3)]]), /tRNS\) of 3 bytes \(its values are 2 bytes each\)/],
      ['an IEND with data', Buffer.concat([SIGNATURE, pngChunk('IHDR', ihdr(2, 2)), pngChunk('IDAT', rows), pngChunk('IEND', new Uint8Array([1, 2, 3]))]), /IEND chunk that holds 3 bytes/],
    ];
    for (const [name, bytes, why] of cases) {
      const v = await verdicts(bytes);
      expect(v, name).toMatchObject({ api: false, sync: false, engine: false });
      expect(v.reason, name).toMatch(why);
    }
    // An ancillary chunk PNG does not define is skipped, as decoders skip it; a palette's tRNS may be shorter than the palette.
    expect(await verdicts(pngOf(2, 2, 8, 2, 0, rows, [['prVt', new Uint8Array(3)]]))).toMatchObject({ api: true, sync: true, engine: true });
    expect(await verdicts(pngOf(2, 2, 8, 3, 0, deflateSync(Buffer.alloc(2 * 3)), [['PLTE', palette], ['tRNS', new Uint8Array([0])]]))).toMatchObject({ api: true, sync: true, engine: true });
    expect(await verdicts(pngOf(2, 2, 8, 2, 0, rows, [['tRNS', new Uint8Array(6)]]))).toMatchObject({ api: true, sync: true, engine: true });
  });

  it('takes what decoders take: a wrong zlib trailer, a damaged ancillary chunk, stray bytes after the rows, a palette longer than its bit depth indexes', async () => {
    const wide = pngOf(2, 2, 4, 3, 0, deflateSync(Buffer.alloc(2 * 2)), [['PLTE', new Uint8Array(768)]]);
    expect(await verdicts(wide), '4-bit, 256 entries').toEqual({ api: true, sync: true, engine: true });
    const rows = Buffer.alloc(2 * 7);
    const trailer = Buffer.from(deflateSync(rows));
    trailer[trailer.length - 1]! ^= 0xff;
    const text = pngChunk('tEXt', Buffer.from('Comment\0hi'));
    text[text.length - 1]! ^= 0xff; // its CRC
    const withText = Buffer.concat([Uint8Array.from(handMadePng(2, 2, deflateSync(rows))).subarray(0, 33), text, Uint8Array.from(handMadePng(2, 2, deflateSync(rows))).subarray(33)]);
    const stray = handMadePng(2, 2, deflateSync(Buffer.concat([rows, Buffer.alloc(100)])));
    for (const [name, bytes] of [['trailer', handMadePng(2, 2, trailer)], ['ancillary CRC', withText], ['stray bytes', stray]] as const) {
      expect(await verdicts(bytes), name).toEqual({ api: true, sync: true, engine: true });
    }
  });
});

/** PNG's row filter `type` applied to one row (one byte per pixel or less: the left neighbour is the byte before). */
function filterRow(type: number, row: Uint8Array, above: Uint8Array): Uint8Array {
  const out = new Uint8Array(row.length);
  for (let i = 0; i < row.length; i++) {
    const a = i > 0 ? row[i - 1]! : 0, b = above[i]!, c = i > 0 ? above[i - 1]! : 0;
    const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
    const predict = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][type]!;
    out[i] = (row[i]! - predict) & 0xff;
  }
  return out;
}

/**
 * A palette PNG with the given indices, packed at `depth` bits, each row under the filter `filters`
 * picks for it, interlaced or not: the check must undo every filter to read the indices.
 */
function palettePng(width: number, height: number, depth: number, entries: number, index: (x: number, y: number) => number, interlaced: boolean, filters: (row: number) => number, colourType: 0 | 3 = 3): Uint8Array {
  const passes = interlaced
    ? [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]
    : [[0, 0, 1, 1]];
  const stream: Uint8Array[] = [];
  let rowNo = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const xs = [], ys = [];
    for (let x = x0!; x < width; x += dx!) xs.push(x);
    for (let y = y0!; y < height; y += dy!) ys.push(y);
    if (xs.length === 0 || ys.length === 0) continue;
    let above = new Uint8Array(Math.ceil((xs.length * depth) / 8));
    for (const y of ys) {
      const row = new Uint8Array(above.length);
      xs.forEach((x, i) => {
        row[Math.floor((i * depth) / 8)]! |= index(x, y) << (8 - depth - ((i * depth) % 8));
      });
      const type = filters(rowNo++);
      stream.push(Uint8Array.of(type), filterRow(type, row, above));
      above = row;
    }
  }
  const plte = new Uint8Array(entries * 3).map((_, i) => (i * 37) & 0xff);
  return pngOf(width, height, depth, colourType, interlaced ? 1 : 0, deflateSync(Buffer.concat(stream)), colourType === 3 ? [['PLTE', plte]] : []);
}

describe('palette indices: the check unfilters the rows and reads them as the decoder does', () => {
  const cases = [1, 2, 4, 8].flatMap((depth) => [false, true].map((interlaced) => ({ depth, interlaced, entries: Math.min(2 ** depth - 1, 200) })));

  it.each(cases)('depth $depth, interlaced $interlaced: indices below the palette pass on all sides; one index at the palette size is refused by all sides', async ({ depth, interlaced, entries }) => {
    const [w, h] = [13, 11];
    const inside = (x: number, y: number) => (x * 7 + y * 3 + x * y) % entries;
    const filters = (r: number) => r % 5;
    expect(await verdicts(palettePng(w, h, depth, entries, inside, interlaced, filters))).toEqual({ api: true, sync: true, engine: true });
    for (const [bx, by] of [[0, 0], [12, 10], [5, 6]] as const) {
      const one = (x: number, y: number) => (x === bx && y === by ? entries : inside(x, y));
      const v = await verdicts(palettePng(w, h, depth, entries, one, interlaced, filters));
      expect(v, `bad index at ${bx},${by}`).toMatchObject({ api: false, sync: false, engine: false });
      expect(v.reason).toMatch(new RegExp(`palette index ${entries} in a palette of ${entries} entries`));
    }
  });

  it('padding bits past a row\'s last pixel are not indices', async () => {
    // 1-bit, 3 pixels a row: the 5 padding bits are ones, which as indices would be 1 in a 1-entry palette.
    const rows = Buffer.from([0, 0b00011111, 0, 0b00011111]);
    const bytes = pngOf(3, 2, 1, 3, 0, deflateSync(rows), [['PLTE', new Uint8Array(3)]]);
    expect(await verdicts(bytes)).toEqual({ api: true, sync: true, engine: true });
  });

  // fast-png 8.0 reads interlaced passes as whole bytes per pixel; the check hands it such a file deinterlaced.
  it.each([1, 2, 4].flatMap((depth) => [0, 3].map((colourType) => ({ depth, colourType: colourType as 0 | 3 }))))(
    'an interlaced $depth-bit image (colour type $colourType) decodes to the same pixels as the same image not interlaced',
    ({ depth, colourType }) => {
      const [w, h] = [13, 11];
      const value = (x: number, y: number) => (x * 5 + y * 3 + x * y) % 2 ** depth;
      const plain = decodeImage(palettePng(w, h, depth, 2 ** depth, value, false, () => 0, colourType));
      const interlaced = decodeImage(palettePng(w, h, depth, 2 ** depth, value, true, (r) => r % 5, colourType));
      expect(Array.from(interlaced.data)).toEqual(Array.from(plain.data));
      expect(new Set(plain.data).size).toBeGreaterThan(1);
    },
  );
});

describe('palette indices in the streaming check (the API), whatever the inflate pieces', () => {
  it('finds a bad index in the last row when that row spans two inflate pieces (16 KiB)', async () => {
    // 299 wide, 8-bit: rows of 300 bytes; 110 rows = 33 000 bytes, so the piece boundary at 32 768
    // falls inside the last row (it starts at 32 700). Its last pixel is index 7 in a palette of 3.
    const [w, h] = [299, 110];
    const bytes = palettePng(w, h, 8, 3, (x, y) => (x === w - 1 && y === h - 1 ? 7 : (x + y) % 3), false, (r) => r % 5);
    const api = await checkPngFile(bytes);
    expect(api.ok).toBe(false);
    expect(api.ok ? '' : api.reason).toMatch(/palette index 7 in a palette of 3 entries/);
    expect(checkPngFileSync(bytes).ok).toBe(false);
  });
});

/** Every pixel of a decoded image as [r, g, b], rounded to 1e-4. */
function pixelsOf(bytes: Uint8Array): number[][] {
  const img = decodeImage(bytes);
  const hw = img.width * img.height;
  return Array.from({ length: hw }, (_, i) => [0, 1, 2].map((c) => Math.round(img.data[c * hw + i]! * 1e4) / 1e4));
}

describe('a PLTE in a grey image (colour types 0 and 4) is ignored, as libpng ignores it', () => {
  // PNG forbids a palette there. The check took such files and the engine read them through the
  // palette: grey became the palette's colours, or the job failed on "palette index out of range".
  const red256 = new Uint8Array(768).map((_, i) => (i % 3 === 0 ? 255 : 0));
  const grey = 128 / 255;

  it('grey 8-bit with a 256-entry red palette: accepted by all sides and decoded as its grey pixels', async () => {
    const bytes = pngOf(3, 2, 8, 0, 0, deflateSync(Buffer.from([0, 128, 128, 128, 0, 128, 128, 128])), [['PLTE', red256]]);
    expect(await verdicts(bytes)).toEqual({ api: true, sync: true, engine: true });
    const g = Math.round(grey * 1e4) / 1e4;
    expect(pixelsOf(bytes)).toEqual(Array(6).fill([g, g, g]));
  });

  it('grey 16-bit with a 2-entry palette, and grey + alpha with a palette: the API and the engine agree, and the pixels are grey', async () => {
    const g16 = Math.round((0x8080 / 65535) * 1e4) / 1e4;
    const grey16 = pngOf(2, 1, 16, 0, 0, deflateSync(Buffer.from([0, 0x80, 0x80, 0x80, 0x80])), [['PLTE', new Uint8Array([255, 0, 0, 0, 255, 0])]]);
    expect(await verdicts(grey16)).toEqual({ api: true, sync: true, engine: true });
    expect(pixelsOf(grey16)).toEqual([[g16, g16, g16], [g16, g16, g16]]);
    // Grey + alpha, opaque: two palettes, one of them not a whole number of entries, after the pixels: all ignored.
    const greyAlpha = Buffer.concat([
      SIGNATURE, pngChunk('IHDR', Buffer.from([0, 0, 0, 2, 0, 0, 0, 1, 8, 4, 0, 0, 0])), pngChunk('PLTE', red256),
      pngChunk('IDAT', deflateSync(Buffer.from([0, 128, 255, 128, 255]))), pngChunk('PLTE', new Uint8Array(4)), pngChunk('IEND', new Uint8Array(0)),
    ]);
    expect(await verdicts(greyAlpha)).toEqual({ api: true, sync: true, engine: true });
    const g = Math.round(grey * 1e4) / 1e4;
    expect(pixelsOf(greyAlpha)).toEqual([[g, g, g], [g, g, g]]);
  });

  it('an interlaced 2-bit grey image with a palette decodes as the same image without one', async () => {
    const value = (x: number, y: number) => (x * 5 + y * 3 + x * y) % 4;
    const plain = palettePng(13, 11, 2, 4, value, true, (r) => r % 5, 0);
    // The same file with a 4-entry palette after IHDR (33 bytes: the signature and IHDR).
    const withPalette = Buffer.concat([plain.subarray(0, 33), pngChunk('PLTE', red256.subarray(0, 12)), plain.subarray(33)]);
    expect(await verdicts(withPalette)).toEqual({ api: true, sync: true, engine: true });
    expect(pixelsOf(withPalette)).toEqual(pixelsOf(plain));
  });

  it('a palette image (colour type 3) still reads through its palette', () => {
    const bytes = pngOf(1, 1, 8, 3, 0, deflateSync(Buffer.from([0, 1])), [['PLTE', new Uint8Array([0, 0, 0, 0, 0, 255])]]);
    expect(pixelsOf(bytes)).toEqual([[0, 0, 1]]);
  });
});

describe('a zlib stream that asks for a preset dictionary (FDICT)', () => {
  it.each([0, 1, 2, 3, 4, 5, 6, 7])('CINFO %i with FDICT set and a right FCHECK: refused by the API, the sync check and the engine, saying why', async (cinfo) => {
    const good = deflateSync(Buffer.alloc(2 * 7));
    const cmf = (cinfo << 4) | 8;
    let flg = 0x20;
    flg |= (31 - ((cmf * 256 + flg) % 31)) % 31; // FCHECK: CMF·256 + FLG a multiple of 31
    expect((cmf * 256 + flg) % 31).toBe(0);
    // As a zlib writer lays it out: the header, the 4-byte dictionary id, then the deflate data.
    const stream = Buffer.concat([Buffer.from([cmf, flg, 0, 0, 0, 1]), good.subarray(2)]);
    const v = await verdicts(handMadePng(2, 2, stream));
    expect(v).toMatchObject({ api: false, sync: false, engine: false });
    expect(v.reason).toBe('corrupt PNG: its pixel data needs a preset zlib dictionary (PNG does not allow one)');
    let message = '';
    try {
      decodeImage(handMadePng(2, 2, stream));
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toBe(v.reason);
  });
});

describe('the number of chunks is bounded (a file of many tiny chunks is refused at once)', () => {
  const ihdr = Buffer.from([0, 0, 0, 64, 0, 0, 0, 64, 8, 2, 0, 0, 0]);
  const rows = deflateSync(Buffer.alloc((64 * 3 + 1) * 64));

  /** A file of IHDR, the pixel data and `fillers` empty `kind` chunks (after the pixel data for IDAT, before it for tEXt), then IEND. */
  const manyChunks = (kind: string, fillers: number) => {
    const filler = pngChunk(kind, new Uint8Array(0));
    const middle = kind === 'IDAT' ? [pngChunk('IDAT', rows), ...Array<Buffer>(fillers).fill(filler)] : [...Array<Buffer>(fillers).fill(filler), pngChunk('IDAT', rows)];
    return Buffer.concat([SIGNATURE, pngChunk('IHDR', ihdr), ...middle, pngChunk('IEND', new Uint8Array(0))]);
  };
  /**
   * The verdict of `f`, and how many 32-bit words it read through a DataView while it ran: every chunk's
   * length (and a decoded chunk's CRC) is read that way, so this counts the chunks walked, without a clock.
   */
  const wordsRead = async <T>(f: () => T | Promise<T>): Promise<[T, number]> => {
    const spy = vi.spyOn(DataView.prototype, 'getUint32');
    try {
      const r = await f();
      return [r, spy.mock.calls.length];
    } finally {
      spy.mockRestore();
    }
  };
  const engineVerdict = (bytes: Uint8Array) => {
    try {
      decodeImage(bytes);
      return 'decoded';
    } catch (e) {
      return (e as Error).message;
    }
  };

  it('~700 000 empty IDAT (or tEXt) chunks in 8 MiB: refused by the API, the sync check and the engine, reading no more of the file than of one a chunk over the bound', async () => {
    // Before the bound such a file took 3.5 s (API) and 11 s (engine): every chunk was read, and fast-png
    // read every chunk again. Now the walk stops at the bound: the 8 MiB file costs what a file of
    // PNG_MAX_CHUNKS + 1 chunks costs, whatever follows.
    const n = Math.floor((8 << 20) / 12) - 10;
    const why = `unsupported PNG: more than ${PNG_MAX_CHUNKS} chunks`;
    for (const kind of ['IDAT', 'tEXt']) {
      const big = manyChunks(kind, n);
      const justOver = manyChunks(kind, PNG_MAX_CHUNKS + 1 - 3); // with IHDR, the pixel data and IEND
      expect(big.length, kind).toBeGreaterThan(8 << 19);
      const reads: Record<string, [number, number]> = {};
      for (const [path, run] of [
        ['api', async (bytes: Uint8Array) => { const v = await checkPngFile(bytes); return v.ok ? '' : v.reason; }],
        ['sync', (bytes: Uint8Array) => { const v = checkPngFileSync(bytes); return v.ok ? '' : v.reason; }],
        ['engine', engineVerdict],
      ] as const) {
        const [bigVerdict, bigReads] = await wordsRead(() => run(big));
        const [overVerdict, overReads] = await wordsRead(() => run(justOver));
        expect(bigVerdict, `${kind} ${path}`).toContain(why);
        expect(overVerdict, `${kind} ${path}`).toContain(why);
        reads[path] = [bigReads, overReads];
      }
      for (const [path, [bigReads, overReads]] of Object.entries(reads)) {
        // The counter sees the walk (a word per chunk up to the bound), and the walk ends there.
        expect(overReads, `${kind} ${path}`).toBeGreaterThanOrEqual(PNG_MAX_CHUNKS);
        expect(overReads, `${kind} ${path}`).toBeLessThan(2 * PNG_MAX_CHUNKS);
        expect(bigReads, `${kind} ${path}: ${n + 3} chunks`).toBe(overReads);
      }
    }
  });

  it('a real image split into many small IDATs (as a streaming encoder writes them) is not refused, and decodes as the unsplit file', async () => {
    const plain = encodePng(noiseImage(64, 64, createRng(3)));
    const read = checkPngFileSync(plain);
    expect(read.ok).toBe(true);
    const stream = deflateSync(Buffer.from(pngRaw(plain)));
    // 1-byte pieces: as many chunks as the stream has bytes, under the bound.
    const pieces = Array.from({ length: stream.length }, (_, i) => pngChunk('IDAT', stream.subarray(i, i + 1)));
    expect(pieces.length).toBeGreaterThan(10_000);
    expect(pieces.length + 2).toBeLessThanOrEqual(PNG_MAX_CHUNKS);
    const split = Buffer.concat([SIGNATURE, pngChunk('IHDR', Buffer.from(plain.subarray(16, 29))), ...pieces, pngChunk('IEND', new Uint8Array(0))]);
    expect(await verdicts(split)).toEqual({ api: true, sync: true, engine: true });
    expect(Array.from(decodeImage(split).data)).toEqual(Array.from(decodeImage(plain).data));
    // fast-png is handed one IDAT (it takes several µs per chunk): the pieces joined, with their CRC.
    const handed = checkPngFileSync(split);
    expect(handed.ok && chunkTypes(handed.decodable)).toEqual(['IHDR', 'IDAT', 'IEND']);
    // A file of one IDAT is handed on byte for byte, less its ancillary chunk (the XMP marking), which is not decoded.
    const [from, to] = ancillaryPayloads(plain)[0]!;
    const unmarked = Buffer.concat([plain.subarray(0, from - 4), plain.subarray(to)]);
    expect(read.ok && Buffer.from(read.decodable).equals(unmarked)).toBe(true);
  });

  it('exactly the bound is taken; one chunk more is refused', async () => {
    const file = (chunks: number) => Buffer.concat([SIGNATURE, pngChunk('IHDR', ihdr), pngChunk('IDAT', rows), ...Array<Buffer>(chunks - 3).fill(pngChunk('IDAT', new Uint8Array(0))), pngChunk('IEND', new Uint8Array(0))]);
    expect(await verdicts(file(PNG_MAX_CHUNKS))).toEqual({ api: true, sync: true, engine: true });
    expect(await verdicts(file(PNG_MAX_CHUNKS + 1))).toMatchObject({ api: false, sync: false, engine: false, reason: expect.stringContaining(`more than ${PNG_MAX_CHUNKS} chunks`) });
  });
});

/** [start of type, end of CRC) of each ancillary chunk (type's first letter lower case) of a PNG file. */
function ancillaryPayloads(png: Uint8Array): Array<[number, number]> {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const found: Array<[number, number]> = [];
  for (let off = 8; off < png.length; off += 12 + dv.getUint32(off)) {
    if (png[off + 4]! & 0x20) found.push([off + 4, off + 12 + dv.getUint32(off)]);
  }
  return found;
}

/** The chunk types of a PNG file, in order. */
function chunkTypes(png: Uint8Array): string[] {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const types: string[] = [];
  for (let off = 8; off < png.length; off += 12 + dv.getUint32(off)) types.push(String.fromCharCode(...png.subarray(off + 4, off + 8)));
  return types;
}

/** The inflated pixel stream of an 8-bit PNG with one IDAT (encodePng's). */
function pngRaw(png: Uint8Array): Uint8Array {
  const dv = new DataView(png.buffer, png.byteOffset, png.byteLength);
  for (let off = 8; off < png.length; off += 12 + dv.getUint32(off)) {
    if (String.fromCharCode(...png.subarray(off + 4, off + 8)) === 'IDAT') return inflateSync(png.subarray(off + 8, off + 8 + dv.getUint32(off)));
  }
  throw new Error('no IDAT');
}

describe('a grey or RGB colour key (tRNS) in an image of one or two pixels', () => {
  // fast-png refuses more key values than the image has pixels, so a valid 1×1 or 2×1 RGB image with
  // its 3-value key was refused as "corrupt". The key is composited over white, as elsewhere.
  const key8 = new Uint8Array([0, 10, 0, 20, 0, 30]);
  const key16 = new Uint8Array([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);

  it.each([
    { name: 'RGB 8-bit 1×1', w: 1, depth: 8, interlace: 0, rows: [0, 10, 20, 30], key: key8, want: [[1, 1, 1]] },
    { name: 'RGB 8-bit 1×1, interlaced', w: 1, depth: 8, interlace: 1, rows: [0, 10, 20, 30], key: key8, want: [[1, 1, 1]] },
    { name: 'RGB 8-bit 2×1, one pixel keyed', w: 2, depth: 8, interlace: 0, rows: [0, 10, 20, 30, 255, 0, 0], key: key8, want: [[1, 1, 1], [1, 0, 0]] },
    { name: 'RGB 16-bit 1×1', w: 1, depth: 16, interlace: 0, rows: [0, ...key16], key: key16, want: [[1, 1, 1]] },
    { name: 'RGB 16-bit 2×1', w: 2, depth: 16, interlace: 0, rows: [0, ...key16, ...key16], key: key16, want: [[1, 1, 1], [1, 1, 1]] },
  ])('$name: accepted by all sides, the keyed pixels white', async ({ w, depth, interlace, rows, key, want }) => {
    const bytes = pngOf(w, 1, depth, 2, interlace, deflateSync(Buffer.from(rows)), [['tRNS', key]]);
    expect(await verdicts(bytes)).toEqual({ api: true, sync: true, engine: true });
    expect(pixelsOf(bytes)).toEqual(want);
  });

  it('grey 1×1 with its key, and with a key it does not match', async () => {
    const keyed = pngOf(1, 1, 8, 0, 0, deflateSync(Buffer.from([0, 7])), [['tRNS', new Uint8Array([0, 7])]]);
    expect(await verdicts(keyed)).toEqual({ api: true, sync: true, engine: true });
    expect(pixelsOf(keyed)).toEqual([[1, 1, 1]]);
    const other = pngOf(1, 1, 8, 0, 0, deflateSync(Buffer.from([0, 0])), [['tRNS', new Uint8Array([0, 7])]]);
    expect(pixelsOf(other)).toEqual([[0, 0, 0]]);
  });
});
