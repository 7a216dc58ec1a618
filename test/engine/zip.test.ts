// The PyTorch-checkpoint ZIP reader on cut-short ZIP64 extra fields: each ZIP64 value is read from
// inside its own extra field, and a field too short to hold it is reported as a corrupt file (an
// EngineError), never a raw DataView RangeError nor the next entry's bytes taken as a size.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
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
