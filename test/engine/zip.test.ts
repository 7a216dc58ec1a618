// The PyTorch-checkpoint ZIP reader on cut-short ZIP64 extra fields: each ZIP64 value is read from
// inside its own extra field, and a field too short to hold it is reported as a corrupt file (an
// EngineError), never a raw DataView RangeError nor the next entry's bytes taken as a size. And on
// records whose declared size is not their real one: a DEFLATE record that inflates past it (a zip
// bomb) is stopped at the declared size, and a STORED record that declares more or fewer bytes than
// it holds is refused when the archive opens.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants, crc32, deflateRawSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { ZipReader } from '../../gpu-worker/engine/import/zip.ts';
import { expectEngineError } from '../helpers/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-zip-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A STORED zip; `zip64Extra` gives an entry a size of 0xFFFFFFFF and this ZIP64 extra field payload; `markedWithoutZip64` the size alone. */
function makeZip(file: string, entries: { name: string; data: Buffer; zip64Extra?: Buffer; markedWithoutZip64?: boolean }[]): string {
  const out: Buffer[] = [];
  const cd: Buffer[] = [];
  let off = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const crc = crc32(e.data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(e.data.length, 18);
    local.writeUInt32LE(e.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    out.push(local, name, e.data);
    const extra = e.zip64Extra ? Buffer.concat([Buffer.from([1, 0, e.zip64Extra.length & 0xff, e.zip64Extra.length >> 8]), e.zip64Extra]) : Buffer.alloc(0);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(e.data.length, 20);
    c.writeUInt32LE(e.zip64Extra || e.markedWithoutZip64 ? 0xffffffff : e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(extra.length, 30);
    c.writeUInt32LE(off, 42);
    cd.push(c, name, extra);
    off += 30 + name.length + e.data.length;
  }
  const cdBytes = Buffer.concat(cd);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cdBytes.length, 12);
  eocd.writeUInt32LE(off, 16);
  const path = join(dir, file);
  writeFileSync(path, Buffer.concat([...out, cdBytes, eocd]));
  return path;
}

const pkl = Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e]); // an empty dict
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

describe('ZIP64 extra fields', () => {
  it('reads the size from a well-formed ZIP64 extra field', () => {
    const z = ZipReader.open(makeZip('ok.pt', [{ name: 'archive/data.pkl', data: pkl, zip64Extra: u64(pkl.length) }]));
    try {
      expect(z.entries.get('archive/data.pkl')?.size).toBe(pkl.length);
    } finally {
      z.close();
    }
  });

  it('an empty ZIP64 field on the last entry is a corrupt file, not a RangeError', () => {
    const path = makeZip('empty-last.pt', [{ name: 'archive/data.pkl', data: pkl, zip64Extra: Buffer.alloc(0) }]);
    expectEngineError(() => ZipReader.open(path), 'invalid_model', path, 'not a readable zip archive', 'ZIP64 extra field of record archive/data.pkl is too short');
  });

  it('a ZIP64 field cut short before another entry does not read that entry\'s bytes', () => {
    const path = makeZip('short-first.pt', [
      { name: 'archive/data.pkl', data: pkl, zip64Extra: Buffer.alloc(4) },
      { name: 'archive/version', data: Buffer.from('3\n') },
    ]);
    expectEngineError(() => ZipReader.open(path), 'invalid_model', 'ZIP64 extra field of record archive/data.pkl is too short (4 bytes)');
  });

  it('a size marked 0xFFFFFFFF (it is in the ZIP64 field) in an entry with no ZIP64 field is a corrupt file, not a 4 GB entry', () => {
    const path = makeZip('no-zip64.pt', [{ name: 'archive/data.pkl', data: pkl, markedWithoutZip64: true }]);
    expectEngineError(() => ZipReader.open(path), 'invalid_model', path, 'not a readable zip archive', 'record archive/data.pkl says its size is in a ZIP64 extra field, and it has none');
  });
});

/** A zip whose records give their method, stored bytes, declared (uncompressed) size and CRC as told. */
function rawZip(file: string, records: { name: string; stored: Buffer; method: 0 | 8; size: number; crc: number }[]): string {
  const out: Buffer[] = [];
  const cd: Buffer[] = [];
  let off = 0;
  for (const r of records) {
    const name = Buffer.from(r.name);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(r.method, 8);
    local.writeUInt32LE(r.crc >>> 0, 14);
    local.writeUInt32LE(r.stored.length, 18);
    local.writeUInt32LE(r.size, 22);
    local.writeUInt16LE(name.length, 26);
    out.push(local, name, r.stored);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(r.method, 10);
    c.writeUInt32LE(r.crc >>> 0, 16);
    c.writeUInt32LE(r.stored.length, 20);
    c.writeUInt32LE(r.size, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt32LE(off, 42);
    cd.push(c, name);
    off += 30 + name.length + r.stored.length;
  }
  const cdBytes = Buffer.concat(cd);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(records.length, 8);
  eocd.writeUInt16LE(records.length, 10);
  eocd.writeUInt32LE(cdBytes.length, 12);
  eocd.writeUInt32LE(off, 16);
  const path = join(dir, file);
  writeFileSync(path, Buffer.concat([...out, cdBytes, eocd]));
  return path;
}

/**
 * A raw DEFLATE stream of `mib` MiB of zeros, about 1 KB per MiB, built without ever holding the
 * plain bytes: one MiB deflated with a full flush ends byte-aligned in a non-final block, so copies
 * of it chain, and `03 00` (an empty final fixed-Huffman block) ends the stream.
 */
function zerosBomb(mib: number): Buffer {
  const piece = deflateRawSync(Buffer.alloc(1 << 20), { level: 9, finishFlush: constants.Z_FULL_FLUSH });
  return Buffer.concat([...Array<Buffer>(mib).fill(piece), Buffer.from([0x03, 0x00])]);
}

describe('declared sizes', () => {
  it('a DEFLATE record that declares 100 bytes and would inflate to 1 GiB is stopped at its declared size (a zip bomb)', () => {
    const bomb = zerosBomb(1024); // about 1 MB on disk
    const path = rawZip('bomb.pt', [{ name: 'archive/data.pkl', stored: bomb, method: 8, size: 100, crc: 0x12345678 }]);
    const z = ZipReader.open(path);
    try {
      // "more than the 100 bytes": inflating stopped at the cap. Uncapped, the whole gigabyte is
      // inflated first and the error reports its full length (1073741824 bytes) instead.
      const e = expectEngineError(() => z.read('archive/data.pkl'), 'invalid_model', path, 'record archive/data.pkl inflates to more than the 100 bytes the directory says');
      expect(e.message).not.toContain('1073741824');
    } finally {
      z.close();
    }
  });

  it('a DEFLATE record that inflates to exactly its declared size still reads, and one that inflates short is refused', () => {
    const plain = Buffer.from('hello, torch '.repeat(40));
    const deflated = deflateRawSync(plain);
    const path = rawZip('deflate.pt', [
      { name: 'archive/ok', stored: deflated, method: 8, size: plain.length, crc: crc32(plain) },
      { name: 'archive/short', stored: deflated, method: 8, size: plain.length + 10, crc: crc32(plain) },
    ]);
    const z = ZipReader.open(path);
    try {
      expect(Buffer.from(z.read('archive/ok')).equals(plain)).toBe(true);
      expectEngineError(() => z.read('archive/short'), 'invalid_model', path, `record archive/short inflates to ${plain.length} bytes, the directory says ${plain.length + 10}`);
    } finally {
      z.close();
    }
  });

  it('a STORED record whose declared size differs from its stored bytes is refused at open, naming the archive and the record', () => {
    // A 16-byte record that claims 8 GB: before, the importer allocated the declared size for its tensor
    // (a raw "Invalid typed array length" past 4 GiB); a claimed size that is smaller hid the rest.
    const data = Buffer.alloc(16);
    const big = rawZip('stored-big.pt', [{ name: 'archive/data/0', stored: data, method: 0, size: 0xfffffff0, crc: crc32(data) }]);
    expectEngineError(() => ZipReader.open(big), 'invalid_model', big, 'record archive/data/0 is stored uncompressed in 16 bytes but the directory says it holds 4294967280');
    const small = rawZip('stored-small.pt', [{ name: 'archive/data/1', stored: data, method: 0, size: 8, crc: crc32(data) }]);
    expectEngineError(() => ZipReader.open(small), 'invalid_model', small, 'record archive/data/1 is stored uncompressed in 16 bytes but the directory says it holds 8');
  });
});
