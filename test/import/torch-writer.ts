// Test helper: writes a minimal torch.save-style zip checkpoint (pickle protocol 2, STORED records) of
// an OrderedDict of tensors, with the opcodes and globals torch uses. It lets the tests make
// checkpoints with a missing or an extra tensor from the reference weights.
import { writeFileSync } from 'node:fs';
import { crc32, deflateRawSync } from 'node:zlib';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';

class PickleWriter {
  private parts: number[] = [];
  op(...b: number[]) { this.parts.push(...b); return this; }
  str(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.op(0x58, ...u32(b.length), ...b);
    return this;
  }
  int(n: number) {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    return this.op(0x4a, ...i32(n));
  }
  global(module: string, name: string) { return this.op(0x63, ...Buffer.from(`${module}\n${name}\n`, 'latin1')); }
  tuple(items: number[]) {
    this.op(0x28);
    for (const x of items) this.int(x);
    return this.op(0x74);
  }
  bytes() { return Uint8Array.from(this.parts); }
}
const u32 = (n: number) => [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255];
const i32 = (n: number) => u32(n >>> 0);

const STORAGE: Record<string, string> = { float32: 'FloatStorage', float16: 'HalfStorage', float64: 'DoubleStorage' };

/**
 * Pickle of OrderedDict(name → tensor), each tensor its own storage (key = index) of `t.data.length`
 * elements. `strides` overrides a tensor's (C-order by default), to make views a checkpoint should not hold.
 */
export function statePickle(tensors: [string, TensorData][], options: { strides?: Record<string, number[]> } = {}): Uint8Array {
  const p = new PickleWriter();
  p.op(0x80, 2).global('collections', 'OrderedDict').op(0x29, 0x52).op(0x28);
  tensors.forEach(([name, t], i) => {
    const strides = options.strides?.[name] ?? t.dims.map((_, d) => t.dims.slice(d + 1).reduce((a, b) => a * b, 1));
    p.str(name).global('torch._utils', '_rebuild_tensor_v2').op(0x28);
    p.op(0x28).str('storage').global('torch', STORAGE[t.dtype]).str(String(i)).str('cpu').int(t.data.length).op(0x74, 0x51);
    p.int(0).tuple(t.dims).tuple(strides).op(0x89).global('collections', 'OrderedDict').op(0x29, 0x52).op(0x74, 0x52);
  });
  return p.op(0x75, 0x2e).bytes();
}

/**
 * A zip archive whose records may be DEFLATE-compressed (`deflate`) and may declare another size
 * than their data has (`declaredSize`: the directory lies, as in a corrupt or hostile file).
 */
export function zipRecords(records: { name: string; data: Uint8Array; deflate?: boolean; declaredSize?: number }[]): Uint8Array {
  const chunks: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const r of records) {
    const n = Buffer.from(r.name, 'utf8');
    const crc = crc32(r.data);
    const stored = r.deflate ? deflateRawSync(r.data) : Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    const method = r.deflate ? 8 : 0;
    const size = r.declaredSize ?? r.data.length;
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4); local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14); local.writeUInt32LE(stored.length, 18); local.writeUInt32LE(size, 22); local.writeUInt16LE(n.length, 26);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0); cd.writeUInt16LE(20, 4); cd.writeUInt16LE(20, 6); cd.writeUInt16LE(method, 10);
    cd.writeUInt32LE(crc, 16); cd.writeUInt32LE(stored.length, 20); cd.writeUInt32LE(size, 24); cd.writeUInt16LE(n.length, 28); cd.writeUInt32LE(offset, 42);
    chunks.push(local, n, stored);
    central.push(cd, n);
    offset += 30 + n.length + stored.length;
  }
  const cdBuf = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0); eocd.writeUInt16LE(records.length, 8); eocd.writeUInt16LE(records.length, 10);
  eocd.writeUInt32LE(cdBuf.length, 12); eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...chunks, cdBuf, eocd]);
}

/** A STORED zip archive of the given records. */
export function zipStored(records: [string, Uint8Array][]): Uint8Array {
  const chunks: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of records) {
    const n = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0); local.writeUInt16LE(20, 4); local.writeUInt16LE(0, 8);
    local.writeUInt32LE(crc, 14); local.writeUInt32LE(data.length, 18); local.writeUInt32LE(data.length, 22); local.writeUInt16LE(n.length, 26);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(0x02014b50, 0); cd.writeUInt16LE(20, 4); cd.writeUInt16LE(20, 6);
    cd.writeUInt32LE(crc, 16); cd.writeUInt32LE(data.length, 20); cd.writeUInt32LE(data.length, 24); cd.writeUInt16LE(n.length, 28); cd.writeUInt32LE(offset, 42);
    chunks.push(local, n, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    central.push(cd, n);
    offset += 30 + n.length + data.length;
  }
  const cdBuf = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0); eocd.writeUInt16LE(records.length, 8); eocd.writeUInt16LE(records.length, 10);
  eocd.writeUInt32LE(cdBuf.length, 12); eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...chunks, cdBuf, eocd]);
}

/** torch.save(OrderedDict) of these tensors, as `<stem>/data.pkl` + `<stem>/data/<i>` + `<stem>/version`. */
export function writeTorchStateDict(path: string, tensors: [string, TensorData][], stem = 'archive'): void {
  const records: [string, Uint8Array][] = [[`${stem}/data.pkl`, statePickle(tensors)]];
  tensors.forEach(([, t], i) => records.push([`${stem}/data/${i}`, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)]));
  records.push([`${stem}/version`, Buffer.from('3\n')]);
  writeFileSync(path, zipStored(records));
}
