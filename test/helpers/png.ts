// PNG files built chunk by chunk, with correct CRCs, for tests that need a file no encoder writes
// (a bomb, a huge declared size, extra chunks).
import { crc32 } from 'node:zlib';
import { expect } from 'vitest';

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** One chunk: length, type, data and the CRC of type + data. */
export function pngChunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  Buffer.from(data).copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** An 8-bit RGB, non-interlaced PNG from its size and an IDAT payload (so only later checks can refuse it). */
export function handMadePng(width: number, height: number, idat: Uint8Array, extra: Array<[string, Uint8Array]> = []): Uint8Array {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  return Buffer.concat([Buffer.from(SIGNATURE), pngChunk('IHDR', ihdr), ...extra.map(([type, data]) => pngChunk(type, data)), pngChunk('IDAT', idat), pngChunk('IEND', new Uint8Array(0))]);
}

/** The chunks of a PNG, each CRC checked (vitest's expect). */
export function pngChunks(png: Uint8Array): Array<{ type: string; data: Buffer }> {
  const bytes = Buffer.from(png);
  expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const chunks: Array<{ type: string; data: Buffer }> = [];
  for (let off = 8; off < bytes.length; ) {
    const length = bytes.readUInt32BE(off);
    const type = bytes.subarray(off + 4, off + 8).toString('latin1');
    const data = bytes.subarray(off + 8, off + 8 + length);
    expect(crc32(bytes.subarray(off + 4, off + 8 + length)), `${type}'s CRC`).toBe(bytes.readUInt32BE(off + 8 + length));
    chunks.push({ type, data });
    off += 12 + length;
  }
  return chunks;
}

/** The XMP packet of a PNG's iTXt chunk (uncompressed), or undefined. */
export function xmpOf(png: Uint8Array): string | undefined {
  const chunk = pngChunks(png).find((c) => c.type === 'iTXt' && c.data.subarray(0, 18).toString('latin1') === 'XML:com.adobe.xmp\0');
  if (!chunk) return undefined;
  // keyword \0, compression flag 0, method 0, language tag "" \0, translated keyword "" \0, text
  expect([...chunk.data.subarray(18, 22)]).toEqual([0, 0, 0, 0]);
  return chunk.data.subarray(22).toString('utf8');
}
