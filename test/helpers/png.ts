// PNG files built chunk by chunk, with correct CRCs, for tests that need a file no encoder writes
// (a bomb, a huge declared size, extra chunks).
import { crc32 } from 'node:zlib';

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
