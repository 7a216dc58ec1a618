// A small ZIP reader over a file descriptor, enough for PyTorch zip checkpoints (torch.save's default
// format since 1.6): central directory (with ZIP64 for archives and entries over 4 GB), entries located
// by offset and read lazily, STORED entries read in place (torch writes every record STORED) and small
// DEFLATE entries inflated in memory (Python's zipfile can write those). Nothing is read eagerly except
// the central directory, so a 1.3 GB checkpoint costs a few KB to open.
//
// A truncated or corrupt archive (no end-of-central-directory record, a directory or entry that runs
// past the end of the file, bad signatures) fails with EngineError('invalid_model') saying what to do.
// So does a record whose bytes do not match the CRC-32 in the central directory (a flipped bit in a
// copy or download): each record is checked once, the first time any of its bytes are read (a read of
// the whole record checks the bytes it read; a partial read first streams the whole record through the
// CRC in IO_CHECK_CHUNK pieces, so memory stays one chunk).

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { crc32, inflateRawSync } from 'node:zlib';
import { EngineError } from '../errors.ts';

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_LOCAL = 0x04034b50;
/** One fs read call is limited to 2^31 − 1 bytes; stay well under it. */
const IO_CHUNK = 64 << 20;
/** Piece size when a record is streamed through the CRC for a partial read. */
const IO_CHECK_CHUNK = 8 << 20;
/** Compressed entries are inflated in memory; refuse big ones (torch never compresses). */
const MAX_INFLATE = 256 << 20;

export interface ZipEntry {
  name: string;
  /** 0 = STORED, 8 = DEFLATE. */
  method: number;
  compressedSize: number;
  size: number;
  /** Offset of the local file header. */
  localHeaderOffset: number;
  /** CRC-32 of the uncompressed data, from the central directory. */
  crc32: number;
}

export class ZipReader {
  readonly entries: ReadonlyMap<string, ZipEntry>;
  private fd: number | undefined;
  private readonly dataOffsets = new Map<string, number>();
  /** Records whose bytes matched their CRC-32. */
  private readonly checked = new Set<string>();

  private constructor(readonly path: string, fd: number, readonly fileSize: number, entries: Map<string, ZipEntry>) {
    this.fd = fd;
    this.entries = entries;
  }

  static open(path: string): ZipReader {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new EngineError('invalid_model', `cannot open ${path}: ${(e as Error).message}`, { path });
    }
    try {
      const size = fstatSync(fd).size;
      return new ZipReader(path, fd, size, readCentralDirectory(fd, size, path));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get names(): string[] {
    return [...this.entries.keys()];
  }

  /** Absolute file offset of an entry's data (after its local header). */
  dataOffset(name: string): number {
    const known = this.dataOffsets.get(name);
    if (known !== undefined) return known;
    const e = this.entry(name);
    const h = new Uint8Array(30);
    this.readAt(h, e.localHeaderOffset);
    const v = new DataView(h.buffer);
    if (v.getUint32(0, true) !== SIG_LOCAL) throw corrupt(this.path, `entry ${name} has no local header at byte ${e.localHeaderOffset}`);
    const off = e.localHeaderOffset + 30 + v.getUint16(26, true) + v.getUint16(28, true);
    if (off + e.compressedSize > this.fileSize) {
      throw corrupt(this.path, `entry ${name} needs bytes up to ${off + e.compressedSize} but the file has ${this.fileSize} (truncated download?)`);
    }
    this.dataOffsets.set(name, off);
    return off;
  }

  entry(name: string): ZipEntry {
    const e = this.entries.get(name);
    if (!e) throw new EngineError('invalid_model', `${this.path}: the archive has no record ${name}`, { path: this.path, entry: name });
    return e;
  }

  /**
   * Read `length` bytes of an entry's (uncompressed) data starting at `start`, into `into` if given.
   * STORED entries are read in place; DEFLATE entries are inflated whole (small records only). The
   * record's CRC-32 is checked the first time it is read (see the file comment).
   */
  read(name: string, start = 0, length?: number, into?: Uint8Array): Uint8Array {
    const e = this.entry(name);
    const len = length ?? e.size - start;
    if (start < 0 || len < 0 || start + len > e.size) {
      throw corrupt(this.path, `record ${name} has ${e.size} bytes; a read of [${start}, ${start + len}) runs past its end`);
    }
    const out = into ?? new Uint8Array(len);
    if (out.byteLength < len) throw new EngineError('invalid_input', `read buffer too small for ${len} bytes`);
    if (e.method === 0) {
      const whole = start === 0 && len === e.size;
      if (!whole) this.checkStored(e);
      this.readAt(out.subarray(0, len), this.dataOffset(name) + start);
      if (whole && !this.checked.has(name)) this.checkCrc(e, crc32(out.subarray(0, len)));
      return out;
    }
    if (e.method === 8) {
      if (e.size > MAX_INFLATE || e.compressedSize > MAX_INFLATE) {
        throw new EngineError('invalid_model', `${this.path}: record ${name} is compressed and ${e.size} bytes large; re-save the checkpoint with torch.save (which stores records uncompressed)`, { path: this.path });
      }
      const raw = new Uint8Array(e.compressedSize);
      this.readAt(raw, this.dataOffset(name));
      let full: Uint8Array;
      try {
        // Capped at the declared size: a record that says 100 bytes and inflates to gigabytes (a zip
        // bomb, or a corrupt directory) stops after size + 1 bytes instead of filling memory first.
        full = inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw corrupt(this.path, `record ${name} inflates to more than the ${e.size} bytes the directory says`);
        throw corrupt(this.path, `record ${name} does not inflate (${(err as Error).message})`);
      }
      if (full.byteLength !== e.size) throw corrupt(this.path, `record ${name} inflates to ${full.byteLength} bytes, the directory says ${e.size}`);
      this.checkCrc(e, crc32(full));
      out.set(full.subarray(start, start + len));
      return out;
    }
    throw new EngineError('invalid_model', `${this.path}: record ${name} uses ZIP compression method ${e.method}; only STORED and DEFLATE are supported (re-save with torch.save)`, { path: this.path, method: e.method });
  }

  /** Streams a STORED record through the CRC once, before a read of part of it. */
  private checkStored(e: ZipEntry): void {
    if (this.checked.has(e.name)) return;
    if (!this.crcRecorded(e)) {
      this.checked.add(e.name);
      return;
    }
    const off = this.dataOffset(e.name);
    const buf = new Uint8Array(Math.min(IO_CHECK_CHUNK, e.size));
    let crc = 0;
    for (let done = 0; done < e.size; ) {
      const piece = buf.subarray(0, Math.min(buf.byteLength, e.size - done));
      this.readAt(piece, off + done);
      crc = crc32(piece, crc);
      done += piece.byteLength;
    }
    this.checkCrc(e, crc);
  }

  /**
   * A CRC of 0 on a record with bytes is "not recorded": torch.save with
   * `torch.serialization.set_crc32_options(False)` writes that, and torch.load reads such files. (A
   * record whose bytes really sum to 0 is one in four billion, and is read unchecked too.)
   */
  private crcRecorded(e: ZipEntry): boolean {
    return e.crc32 !== 0 || e.size === 0;
  }

  private checkCrc(e: ZipEntry, got: number): void {
    if (got !== e.crc32 && this.crcRecorded(e)) {
      throw new EngineError(
        'invalid_model',
        `${this.path}: record ${e.name} fails its CRC-32 check (the archive says ${hex32(e.crc32)}, its ${e.size} bytes give ${hex32(got)}): the file is corrupt (download or copy it again)`,
        { path: this.path, entry: e.name },
      );
    }
    this.checked.add(e.name);
  }

  private readAt(into: Uint8Array, position: number): void {
    if (this.fd === undefined) throw new EngineError('invalid_input', `${this.path} is closed`);
    readFullyAt(this.fd, into, position, this.path);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

const hex32 = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

function corrupt(path: string, msg: string): EngineError {
  return new EngineError('invalid_model', `${path} is not a readable zip archive: ${msg}; the file is truncated or corrupt (download or copy it again)`, { path });
}

function readFullyAt(fd: number, into: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < into.byteLength) {
    const r = readSync(fd, into, done, Math.min(into.byteLength - done, IO_CHUNK), position + done);
    if (r === 0) throw corrupt(path, `unexpected end of file at byte ${position + done}`);
    done += r;
  }
}

function u64(v: DataView, off: number, path: string): number {
  const n = v.getBigUint64(off, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(path, `a ZIP64 size or offset (${n}) is out of range`);
  return Number(n);
}

function readCentralDirectory(fd: number, size: number, path: string): Map<string, ZipEntry> {
  if (size < 22) throw corrupt(path, `the file has only ${size} bytes`);
  // The end-of-central-directory record sits in the last 22 + 65535 (max comment) bytes.
  const tailLen = Math.min(size, 22 + 0xffff);
  const tail = new Uint8Array(tailLen);
  readFullyAt(fd, tail, size - tailLen, path);
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === SIG_EOCD && i + 22 + tv.getUint16(i + 20, true) <= tailLen) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw corrupt(path, 'no end-of-central-directory record');
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  const eocdAbs = size - tailLen + eocd;
  // ZIP64: a locator sits right before the EOCD when any field overflowed.
  if (eocdAbs >= 20) {
    const loc = new Uint8Array(20);
    readFullyAt(fd, loc, eocdAbs - 20, path);
    const lv = new DataView(loc.buffer);
    if (lv.getUint32(0, true) === SIG_ZIP64_LOCATOR) {
      const recOff = u64(lv, 8, path);
      if (recOff + 56 > size) throw corrupt(path, 'the ZIP64 end record lies past the end of the file');
      const rec = new Uint8Array(56);
      readFullyAt(fd, rec, recOff, path);
      const rv = new DataView(rec.buffer);
      if (rv.getUint32(0, true) !== SIG_ZIP64_EOCD) throw corrupt(path, 'bad ZIP64 end-of-central-directory signature');
      count = u64(rv, 32, path);
      cdSize = u64(rv, 40, path);
      cdOffset = u64(rv, 48, path);
    }
  }
  if (cdOffset + cdSize > size) throw corrupt(path, `the central directory (bytes ${cdOffset}..${cdOffset + cdSize}) lies past the end of the ${size}-byte file`);
  if (cdSize > 512 << 20) throw corrupt(path, `central directory of ${cdSize} bytes is implausibly large`);
  const cd = new Uint8Array(cdSize);
  readFullyAt(fd, cd, cdOffset, path);
  const v = new DataView(cd.buffer);
  const entries = new Map<string, ZipEntry>();
  const dec = new TextDecoder('utf-8');
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdSize || v.getUint32(p, true) !== SIG_CENTRAL) throw corrupt(path, `central directory entry ${i} is malformed`);
    const method = v.getUint16(p + 10, true);
    const crc = v.getUint32(p + 16, true);
    let compressedSize = v.getUint32(p + 20, true);
    let usize = v.getUint32(p + 24, true);
    const nameLen = v.getUint16(p + 28, true);
    const extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true);
    let localHeaderOffset = v.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen + commentLen > cdSize) throw corrupt(path, `central directory entry ${i} runs past the directory`);
    const name = dec.decode(cd.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extended information: the fields that were 0xFFFFFFFF, in this order.
    let x = p + 46 + nameLen;
    const xEnd = x + extraLen;
    const marked = [usize === 0xffffffff && 'size', compressedSize === 0xffffffff && 'compressed size', localHeaderOffset === 0xffffffff && 'local header offset'].filter(Boolean);
    let zip64 = false;
    while (x + 4 <= xEnd) {
      const id = v.getUint16(x, true);
      const len = v.getUint16(x + 2, true);
      if (id === 0x0001) {
        zip64 = true;
        // Each value is read from inside this field (and this entry's extra data): a field cut short
        // would read past the directory (a RangeError) or take the next entry's bytes as a size.
        const fieldEnd = Math.min(x + 4 + len, xEnd);
        let q = x + 4;
        const next = (what: string): number => {
          if (q + 8 > fieldEnd) throw corrupt(path, `the ZIP64 extra field of record ${name} is too short (${len} bytes) to hold its ${what}`);
          const n = u64(v, q, path);
          q += 8;
          return n;
        };
        if (usize === 0xffffffff) usize = next('size');
        if (compressedSize === 0xffffffff) compressedSize = next('compressed size');
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = next('local header offset');
      }
      x += 4 + len;
    }
    // 0xFFFFFFFF says "the value is in the ZIP64 field": still there, the entry had none to give it.
    if (marked.length > 0 && !zip64) throw corrupt(path, `record ${name} says its ${marked.join(', ')} is in a ZIP64 extra field, and it has none`);
    // A STORED record's bytes are its data: a directory that declares another size would have a reader
    // allocate (and trust) bytes the record does not hold, or read the next records' bytes as its own.
    if (method === 0 && usize !== compressedSize) {
      throw corrupt(path, `record ${name} is stored uncompressed in ${compressedSize} bytes but the directory says it holds ${usize}`);
    }
    if (localHeaderOffset + 30 + compressedSize > size) {
      throw corrupt(path, `record ${name} (${compressedSize} bytes at ${localHeaderOffset}) runs past the end of the ${size}-byte file`);
    }
    entries.set(name, { name, method, compressedSize, size: usize, localHeaderOffset, crc32: crc });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}
