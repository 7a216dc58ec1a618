// safetensors reader/writer: 8-byte little-endian u64 header length N, N bytes of JSON header
// ({ name: { dtype, shape, data_offsets: [begin, end] }, __metadata__?: { string: string } }), then the
// raw little-endian tensor bytes; offsets are relative to the start of that data section.
//
// BF16 has no IR dtype and ORT CPU has few bf16 kernels, so it is widened to float32 on read.
// F16 stays float16 (Uint16Array bit patterns); use f16ToF32Array to widen it.

import { closeSync, fstatSync, openSync, read, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { EngineError } from '../errors.ts';
import { allocData, bytesPerElement, numel } from '../onnx/ir.ts';
import type { DType, TensorData } from '../onnx/ir.ts';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32' | 'I64' | 'U8' | 'BOOL';

const ST_BYTES: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8, U8: 1, BOOL: 1 };
const ST_TO_DTYPE: Record<SafetensorsDType, DType> = {
  F32: 'float32', F16: 'float16', BF16: 'float32', F64: 'float64', I32: 'int32', I64: 'int64', U8: 'uint8', BOOL: 'bool',
};
const DTYPE_TO_ST: Record<DType, SafetensorsDType> = {
  float32: 'F32', float16: 'F16', float64: 'F64', int32: 'I32', int64: 'I64', uint8: 'U8', bool: 'BOOL',
};
/** Refuse absurd header sizes before allocating (the reference implementation caps headers at 100 MB). */
const MAX_HEADER = 100 << 20;
/** One fs read/write call is limited to 2^31 - 1 bytes; stay well under it. */
const IO_CHUNK = 64 << 20;

export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte offsets relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsContents {
  metadata: Record<string, string>;
  tensors: Map<string, TensorData>;
}

const invalid = (path: string, message: string, detail: Record<string, unknown> = {}): EngineError =>
  new EngineError('invalid_model', `${path}: ${message}`, { path, ...detail });

// ---------------------------------------------------------------------------------------------
// float16 / bfloat16 helpers

export { f16ToF32, f16ToF32Array, f32ToF16, f32ToF16Array } from './half.ts';

/** bfloat16 bits are the top half of a float32: widening is exact. */
export function bf16ToF32Array(bits: Uint16Array): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return new Float32Array(u.buffer);
}

// ---------------------------------------------------------------------------------------------
// Reading

/** readFully without blocking the caller's thread: each chunk is read on libuv's thread pool. */
async function readFullyAsync(fd: number, into: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const r = await new Promise<number>((res, rej) => read(fd, into, done, Math.min(into.byteLength - done, IO_CHUNK), position + done, (e, n) => (e ? rej(e) : res(n))));
    if (r === 0) throw invalid(path, `unexpected end of file at byte ${position + done}`);
    done += r;
  }
}

function readFully(fd: number, into: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < into.byteLength) {
    const r = readSync(fd, into, done, Math.min(into.byteLength - done, IO_CHUNK), position + done);
    if (r === 0) throw invalid(path, `unexpected end of file at byte ${position + done}`);
    done += r;
  }
}

function parseHeader(path: string, json: string, dataSize: number): { metadata: Record<string, string>; entries: Map<string, SafetensorsEntry> } {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw invalid(path, `safetensors header is not valid JSON (${(e as Error).message}); the file is corrupt or not safetensors`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid(path, 'safetensors header must be a JSON object');
  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(path, '__metadata__ must be an object of strings');
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw invalid(path, `__metadata__.${k} must be a string, got ${typeof s}`);
        metadata[k] = s;
      }
      continue;
    }
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== 'object' || e === null) throw invalid(path, `entry '${name}' must be an object with dtype, shape, data_offsets`, { tensor: name });
    if (typeof e.dtype !== 'string' || !(e.dtype in ST_BYTES)) {
      throw invalid(path, `tensor '${name}' has dtype ${JSON.stringify(e.dtype)}; supported: ${Object.keys(ST_BYTES).join(', ')}`, { tensor: name });
    }
    const dtype = e.dtype as SafetensorsDType;
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw invalid(path, `tensor '${name}' has shape ${JSON.stringify(e.shape)}; expected an array of non-negative integers`, { tensor: name });
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((o) => Number.isSafeInteger(o) && o >= 0) || off[0] > off[1]) {
      throw invalid(path, `tensor '${name}' has data_offsets ${JSON.stringify(off)}; expected [begin, end] with 0 <= begin <= end`, { tensor: name });
    }
    const [begin, end] = off as [number, number];
    if (end > dataSize) {
      throw invalid(path, `tensor '${name}' ends at data byte ${end} but the data section has only ${dataSize} bytes (truncated file?)`, { tensor: name });
    }
    const shape = e.shape as number[];
    const want = numel(shape) * ST_BYTES[dtype];
    if (end - begin !== want) {
      throw invalid(path, `tensor '${name}' (${dtype} [${shape}]) needs ${want} bytes but data_offsets span ${end - begin}`, { tensor: name });
    }
    entries.set(name, { name, dtype, shape: [...shape], begin, end });
  }
  const sorted = [...entries.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const [p, c] = [sorted[i - 1], sorted[i]];
    if (c.begin < p.end) throw invalid(path, `tensors '${p.name}' and '${c.name}' overlap (bytes ${c.begin}..${p.end})`, { tensor: c.name });
  }
  // As the reference implementation (MetadataIncompleteBuffer): the tensors account for every data byte.
  const used = sorted.at(-1)?.end ?? 0;
  if (used !== dataSize) throw invalid(path, `the tensors end at data byte ${used} but the file holds ${dataSize}: ${dataSize - used} bytes belong to no tensor (a corrupt or spliced file)`);
  return { metadata, entries };
}

/** A safetensors file opened lazily: the header is parsed up front, tensors are read one at a time. */
export class SafetensorsFile {
  readonly metadata: Record<string, string>;
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
  private fd: number | undefined;
  private readonly dataStart: number;

  private constructor(readonly path: string, fd: number, dataStart: number, parsed: ReturnType<typeof parseHeader>) {
    this.fd = fd;
    this.dataStart = dataStart;
    this.metadata = parsed.metadata;
    this.entries = parsed.entries;
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new EngineError('invalid_model', `cannot open safetensors file ${path}: ${(e as Error).message}`, { path });
    }
    try {
      const size = fstatSync(fd).size;
      if (size < 8) throw invalid(path, `file has ${size} bytes; a safetensors file starts with an 8-byte header length`);
      const lenBuf = new Uint8Array(8);
      readFully(fd, lenBuf, 0, path);
      const n = new DataView(lenBuf.buffer).getBigUint64(0, true);
      if (n > BigInt(size - 8)) throw invalid(path, `header length ${n} runs past the end of the ${size}-byte file (truncated, or not safetensors)`);
      if (n > BigInt(MAX_HEADER)) throw invalid(path, `header length ${n} exceeds the ${MAX_HEADER}-byte limit`);
      const headerBytes = new Uint8Array(Number(n));
      readFully(fd, headerBytes, 8, path);
      let json: string;
      try {
        json = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
      } catch {
        throw invalid(path, 'safetensors header is not UTF-8; the file is corrupt or not safetensors');
      }
      const dataStart = 8 + Number(n);
      return new SafetensorsFile(path, fd, dataStart, parseHeader(path, json, size - dataStart));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get names(): string[] {
    return [...this.entries.keys()];
  }

  /** Read one tensor. BF16 is widened to float32. */
  read(name: string): TensorData {
    if (this.fd === undefined) throw new EngineError('invalid_input', `${this.path} is closed; open it again to read '${name}'`);
    const e = this.entries.get(name);
    if (!e) throw new EngineError('invalid_weights', `${this.path} has no tensor '${name}'`, { path: this.path, tensor: name });
    const n = numel(e.shape);
    if (e.dtype === 'BF16') {
      const bits = new Uint16Array(n);
      readFully(this.fd, new Uint8Array(bits.buffer), this.dataStart + e.begin, this.path);
      return { dtype: 'float32', dims: [...e.shape], data: bf16ToF32Array(bits) };
    }
    const dtype = ST_TO_DTYPE[e.dtype];
    const data = allocData(dtype, n);
    // read straight into the (aligned) typed array's memory: no intermediate copy
    readFully(this.fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), this.dataStart + e.begin, this.path);
    return { dtype, dims: [...e.shape], data };
  }

  /**
   * read(name) without blocking this thread on the disk (hundreds of MB for a CLIP tower). `shared`:
   * the tensor's memory is a SharedArrayBuffer (BF16 is widened into one too).
   */
  async readAsync(name: string, opts: { shared?: boolean } = {}): Promise<TensorData> {
    if (this.fd === undefined) throw new EngineError('invalid_input', `${this.path} is closed; open it again to read '${name}'`);
    const e = this.entries.get(name);
    if (!e) throw new EngineError('invalid_weights', `${this.path} has no tensor '${name}'`, { path: this.path, tensor: name });
    const n = numel(e.shape);
    const alloc = (dtype: DType, count: number) => allocData(dtype, count, opts);
    if (e.dtype === 'BF16') {
      const bits = new Uint16Array(n);
      await readFullyAsync(this.fd, new Uint8Array(bits.buffer), this.dataStart + e.begin, this.path);
      const wide = bf16ToF32Array(bits);
      const data = alloc('float32', n) as Float32Array;
      data.set(wide);
      return { dtype: 'float32', dims: [...e.shape], data };
    }
    const dtype = ST_TO_DTYPE[e.dtype];
    const data = alloc(dtype, n);
    await readFullyAsync(this.fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), this.dataStart + e.begin, this.path);
    return { dtype, dims: [...e.shape], data };
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Open lazily: header now, tensors on demand via file.read(name). Call close() when done. */
export function openSafetensors(path: string): SafetensorsFile {
  return SafetensorsFile.open(path);
}

/** Read a whole safetensors file (or only `opts.names`). */
export function readSafetensors(path: string, opts: { names?: string[] } = {}): SafetensorsContents {
  const f = SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, TensorData>();
    for (const name of opts.names ?? f.names) tensors.set(name, f.read(name));
    return { metadata: { ...f.metadata }, tensors };
  } finally {
    f.close();
  }
}

/** readSafetensors without blocking this thread on the disk; `shared` puts every tensor in a SharedArrayBuffer. */
export async function readSafetensorsAsync(path: string, opts: { shared?: boolean } = {}): Promise<SafetensorsContents> {
  const f = SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, TensorData>();
    for (const name of f.names) tensors.set(name, await f.readAsync(name, opts));
    return { metadata: { ...f.metadata }, tensors };
  } finally {
    f.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Write tensors (packed back to back in the given order) and string metadata. Data is written in chunks,
 * so files above 2 GB work.
 */
export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, TensorData> | Record<string, TensorData>,
  metadata: Record<string, string> = {},
): Promise<void> {
  const list: [string, TensorData][] =
    tensors instanceof Map ? [...(tensors as ReadonlyMap<string, TensorData>).entries()] : Object.entries(tensors as Record<string, TensorData>);
  const header: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new EngineError('invalid_input', `safetensors metadata '${k}' must be a string, got ${typeof v}`);
  }
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of list) {
    if (name === '__metadata__') throw new EngineError('invalid_input', "a tensor cannot be named '__metadata__'");
    const n = numel(t.dims);
    if (!t.dims.every((d) => Number.isInteger(d) && d >= 0) || t.data.length !== n || t.data.BYTES_PER_ELEMENT !== bytesPerElement(t.dtype)) {
      throw new EngineError('invalid_input', `tensor '${name}' (${t.dtype} [${t.dims}]) has ${t.data.length} elements of ${t.data.BYTES_PER_ELEMENT} bytes; expected ${n} of ${bytesPerElement(t.dtype)}`, { tensor: name });
    }
    header[name] = { dtype: DTYPE_TO_ST[t.dtype], shape: t.dims, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  // pad with spaces so the data section starts 8-byte aligned (what the reference writer does)
  const jsonBytes0 = new TextEncoder().encode(json);
  json += ' '.repeat((8 - (jsonBytes0.byteLength % 8)) % 8);
  const jsonBytes = new TextEncoder().encode(json);
  const prefix = new Uint8Array(8 + jsonBytes.byteLength);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(jsonBytes.byteLength), true);
  prefix.set(jsonBytes, 8);

  const fh = await open(path, 'w');
  try {
    let pos = 0;
    const write = async (bytes: Uint8Array): Promise<void> => {
      for (let off = 0; off < bytes.byteLength; ) {
        const len = Math.min(IO_CHUNK, bytes.byteLength - off);
        const { bytesWritten } = await fh.write(bytes, off, len, pos);
        off += bytesWritten;
        pos += bytesWritten;
      }
    };
    await write(prefix);
    for (const [, t] of list) await write(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } finally {
    await fh.close();
  }
}
