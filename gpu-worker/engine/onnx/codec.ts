// ONNX ModelProto <-> ModelIR codec.
//
// Decoding uses onnx-proto's static protobufjs messages. Encoding also goes through onnx-proto, but
// writeModelFile moves every large initializer to a side file first, so the protobuf encoder only ever
// sees small tensors there; encodeModel (in-memory) necessarily builds one buffer and therefore refuses
// models over protobuf's 2 GB limit.
//
// Serialized tensors are little-endian; typed arrays are reinterpreted byte-for-byte, which assumes a
// little-endian host (every platform onnxruntime-node ships for).

import { closeSync, fstatSync, openSync, readSync, readFileSync } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, relative, resolve } from 'node:path';
import { createRequire } from 'node:module';
import type { onnx as OnnxNs } from 'onnx-proto';
import { EngineError, whereFrom } from '../errors.ts';
import { DTYPE_OF_ONNX_CODE, ONNX_DTYPE_CODES, allocData, bytesPerElement, numel } from './ir.ts';
import type { Attr, DType, ModelIR, Node, TensorData, TypedData, ValueInfo } from './ir.ts';

// onnx-proto is CommonJS without named-export hints that Node's ESM loader can detect reliably.
const { onnx } = createRequire(import.meta.url)('onnx-proto') as { onnx: typeof OnnxNs };

/** Protobuf (and therefore an in-memory ONNX model) cannot exceed 2^31 - 1 bytes. */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;
const IR_VERSION = 8;
const DEFAULT_EXTERNAL_THRESHOLD = 1 << 20;
const EXTERNAL_ALIGN = 16;
/** Chunk size for writing side files: fs writes of one buffer fail above 2^31 - 1 bytes. */
const WRITE_CHUNK = 64 << 20;

const DTYPE_TO_ONNX = ONNX_DTYPE_CODES;
const ONNX_TO_DTYPE = DTYPE_OF_ONNX_CODE;
const ONNX_TYPE_NAMES: Record<number, string> = {
  3: 'int8', 4: 'uint16', 5: 'int16', 8: 'string', 12: 'uint32', 13: 'uint64', 14: 'complex64',
  15: 'complex128', 16: 'bfloat16', 17: 'float8e4m3fn', 18: 'float8e4m3fnuz', 19: 'float8e5m2',
  20: 'float8e5m2fnuz', 21: 'uint4', 22: 'int4',
};

const AT = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, GRAPH: 5, FLOATS: 6, INTS: 7, STRINGS: 8, TENSORS: 9, GRAPHS: 10, SPARSE_TENSOR: 11, SPARSE_TENSORS: 12, TYPE_PROTO: 13, TYPE_PROTOS: 14 } as const;
const DATA_LOCATION_EXTERNAL = 1;

const invalid = (message: string, detail: Record<string, unknown> = {}): EngineError =>
  new EngineError('invalid_model', message, detail);

const utf8 = new TextEncoder();
const utf8d = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Encoding

function tensorBytes(t: TensorData): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function checkTensor(name: string, t: TensorData): void {
  if (!(t.dtype in DTYPE_TO_ONNX)) throw invalid(`tensor '${name}' has unknown dtype '${t.dtype}'`, { name });
  for (const d of t.dims) {
    if (!Number.isInteger(d) || d < 0) throw invalid(`tensor '${name}' has invalid dim ${d} in [${t.dims}]; dims must be non-negative integers`, { name });
  }
  const n = numel(t.dims);
  if (t.data.length !== n || t.data.BYTES_PER_ELEMENT !== bytesPerElement(t.dtype)) {
    throw invalid(
      `tensor '${name}' (${t.dtype}, dims [${t.dims}]) needs ${n} elements of ${bytesPerElement(t.dtype)} bytes but its data holds ${t.data.length} of ${t.data.BYTES_PER_ELEMENT}`,
      { name },
    );
  }
}

interface ExternalRef {
  location: string;
  offset: number;
  length: number;
}

function encodeTensor(name: string, t: TensorData, external?: ExternalRef): OnnxNs.ITensorProto {
  checkTensor(name, t);
  const proto: OnnxNs.ITensorProto = { name, dataType: DTYPE_TO_ONNX[t.dtype], dims: [...t.dims] };
  if (external) {
    proto.dataLocation = DATA_LOCATION_EXTERNAL;
    proto.externalData = [
      { key: 'location', value: external.location },
      { key: 'offset', value: String(external.offset) },
      { key: 'length', value: String(external.length) },
    ];
  } else {
    proto.rawData = tensorBytes(t);
  }
  return proto;
}

function encodeAttr(name: string, a: Attr): OnnxNs.IAttributeProto {
  switch (a.type) {
    case 'int':
      return { name, type: AT.INT, i: a.v };
    case 'float':
      return { name, type: AT.FLOAT, f: a.v };
    case 'ints':
      return { name, type: AT.INTS, ints: [...a.v] };
    case 'floats':
      return { name, type: AT.FLOATS, floats: [...a.v] };
    case 'string':
      return { name, type: AT.STRING, s: utf8.encode(a.v) };
    case 'strings':
      return { name, type: AT.STRINGS, strings: a.v.map((s) => utf8.encode(s)) };
    case 'tensor':
      return { name, type: AT.TENSOR, t: encodeTensor(name, a.v) };
  }
}

function encodeValueInfo(v: ValueInfo): OnnxNs.IValueInfoProto {
  return {
    name: v.name,
    type: {
      tensorType: {
        elemType: DTYPE_TO_ONNX[v.dtype],
        // -1 (an unknown dim from a decoded foreign model) is written back as a dim with no value.
        // rankUnknown is written back as a tensor type without a shape.
        ...(v.rankUnknown ? {} : { shape: { dim: v.shape.map((d) => (d >= 0 ? { dimValue: d } : {})) } }),
      },
    },
  };
}

function encodeNode(n: Node): OnnxNs.INodeProto {
  return {
    opType: n.op,
    domain: n.domain ?? '',
    name: n.name,
    input: [...n.inputs],
    output: [...n.outputs],
    attribute: Object.entries(n.attrs).map(([k, a]) => encodeAttr(k, a)),
  };
}

function buildModelProto(m: ModelIR, externals: Map<string, ExternalRef>): OnnxNs.ModelProto {
  const opsetImport: OnnxNs.IOperatorSetIdProto[] = [{ domain: '', version: m.opset }];
  for (const o of m.extraOpsets ?? []) opsetImport.push({ domain: o.domain, version: o.version });
  const initializer: OnnxNs.ITensorProto[] = [];
  for (const [name, t] of m.initializers) initializer.push(encodeTensor(name, t, externals.get(name)));
  return onnx.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: m.producer ?? 'clipag',
    opsetImport,
    metadataProps: Object.entries(m.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: {
      name: m.graphName,
      node: m.nodes.map(encodeNode),
      initializer,
      input: m.inputs.map(encodeValueInfo),
      output: m.outputs.map(encodeValueInfo),
      valueInfo: (m.valueInfo ?? []).map(encodeValueInfo),
    },
  });
}

/** Bytes of tensor payload that would be stored inline (initializers not in `externals`, plus tensor attrs). */
function inlinePayloadBytes(m: ModelIR, externals: ReadonlySet<string>): number {
  let total = 0;
  for (const [name, t] of m.initializers) if (!externals.has(name)) total += numel(t.dims) * bytesPerElement(t.dtype);
  for (const n of m.nodes) {
    for (const a of Object.values(n.attrs)) if (a.type === 'tensor') total += numel(a.v.dims) * bytesPerElement(a.v.dtype);
  }
  return total;
}

/** Encode a whole model to one in-memory ONNX ModelProto (IR version 8). */
export function encodeModel(m: ModelIR): Uint8Array {
  const payload = inlinePayloadBytes(m, new Set());
  if (payload > PROTOBUF_LIMIT) {
    throw invalid(
      `model '${m.graphName}' holds ${payload} bytes of tensor data, over the 2 GB protobuf limit of an in-memory ONNX model; ` +
        'write it with writeModelFile(path, model), which stores large initializers as external data, and load it from that path',
      { bytes: payload },
    );
  }
  return onnx.ModelProto.encode(buildModelProto(m, new Map())).finish();
}

async function writeChunked(fh: import('node:fs/promises').FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let off = 0; off < bytes.byteLength; off += WRITE_CHUNK) {
    const chunk = bytes.subarray(off, Math.min(off + WRITE_CHUNK, bytes.byteLength));
    let done = 0;
    while (done < chunk.byteLength) {
      const { bytesWritten } = await fh.write(chunk, done, chunk.byteLength - done, position + off + done);
      done += bytesWritten;
    }
  }
}

/**
 * Write `path` (the ModelProto) and `path + '.data'` (initializers larger than the threshold, each
 * 16-byte aligned). The side file is always (re)written, possibly empty, so a stale one never survives.
 * Load the result with readModelFile(path) or hand `path` to the runtime.
 */
export async function writeModelFile(path: string, m: ModelIR, opts: { externalDataThreshold?: number } = {}): Promise<void> {
  const threshold = opts.externalDataThreshold ?? DEFAULT_EXTERNAL_THRESHOLD;
  const dataPath = path + '.data';
  const location = basename(dataPath);
  const externals = new Map<string, ExternalRef>();
  const fh = await open(dataPath, 'w');
  try {
    let offset = 0;
    for (const [name, t] of m.initializers) {
      checkTensor(name, t);
      if (t.data.byteLength <= threshold) continue;
      offset = Math.ceil(offset / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
      await writeChunked(fh, tensorBytes(t), offset);
      externals.set(name, { location, offset, length: t.data.byteLength });
      offset += t.data.byteLength;
    }
  } finally {
    await fh.close();
  }
  const payload = inlinePayloadBytes(m, new Set(externals.keys()));
  if (payload > PROTOBUF_LIMIT) {
    throw invalid(
      `model '${m.graphName}' keeps ${payload} bytes of tensors inline (initializers under ${threshold} bytes and tensor attributes), over the 2 GB protobuf limit; lower externalDataThreshold`,
      { bytes: payload },
    );
  }
  await writeFile(path, onnx.ModelProto.encode(buildModelProto(m, externals)).finish());
}

// ---------------------------------------------------------------------------------------------
// Decoding

type LongLike = number | { low: number; high: number; unsigned?: boolean; toNumber?: () => number };

function toBigInt(v: LongLike): bigint {
  if (typeof v === 'number') return BigInt(v);
  const bits = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  return v.unsigned ? bits : BigInt.asIntN(64, bits);
}

function toNumber(v: LongLike | null | undefined, what: string): number {
  if (v === null || v === undefined) return 0;
  const b = toBigInt(v);
  if (b > BigInt(Number.MAX_SAFE_INTEGER) || b < BigInt(Number.MIN_SAFE_INTEGER)) throw invalid(`${what} ${b} is too large`);
  return Number(b);
}

function dtypeOf(elemType: number, what: string): DType {
  const d = ONNX_TO_DTYPE.get(elemType);
  if (!d) {
    const nm = ONNX_TYPE_NAMES[elemType] ?? (elemType === 0 ? 'undefined' : `#${elemType}`);
    throw invalid(`${what} has element type ${nm}, which clipag does not support (supported: ${Object.keys(DTYPE_TO_ONNX).join(', ')})`, { elemType });
  }
  return d;
}

/** Copy bytes into a fresh, aligned typed array (protobuf slices are not aligned for multi-byte types). */
function fromBytes(dtype: DType, n: number, bytes: Uint8Array): TypedData {
  const data = allocData(dtype, n);
  new Uint8Array(data.buffer).set(bytes);
  return data;
}

interface DecodeCtx {
  baseDir?: string;
  /** Open side files and their sizes, so each is opened once per decode. */
  files: Map<string, { fd: number; size: number }>;
}

function readExternal(name: string, t: OnnxNs.ITensorProto, nbytes: number, ctx: DecodeCtx): Uint8Array {
  const kv = new Map((t.externalData ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  const location = kv.get('location');
  if (!location) throw invalid(`initializer '${name}' is stored externally but has no 'location' entry`, { name });
  if (ctx.baseDir === undefined) {
    throw invalid(`initializer '${name}' is stored in external file '${location}'; decode with { baseDir } or use readModelFile(path)`, { name, location });
  }
  const base = resolve(ctx.baseDir);
  const full = resolve(base, location);
  const rel = relative(base, full);
  if (isAbsolute(location) || rel.startsWith('..') || isAbsolute(rel)) {
    throw invalid(`initializer '${name}' points to external file '${location}' outside the model folder ${base}; external data must live next to the model`, { name, location });
  }
  const parseIntKey = (key: string): number | undefined => {
    const s = kv.get(key);
    if (s === undefined) return undefined;
    if (!/^\d+$/.test(s)) throw invalid(`initializer '${name}' has external ${key} '${s}', which is not a non-negative integer`, { name });
    return Number(s);
  };
  const offset = parseIntKey('offset') ?? 0;
  const length = parseIntKey('length') ?? nbytes;
  if (length !== nbytes) {
    throw invalid(`initializer '${name}' declares external length ${length} bytes but its dtype and dims need ${nbytes}`, { name });
  }
  let f = ctx.files.get(full);
  if (!f) {
    let fd: number;
    try {
      fd = openSync(full, 'r');
    } catch (e) {
      throw invalid(`initializer '${name}' needs external data file ${full}, which cannot be opened (${(e as Error).message}); copy the '.data' file next to the model`, { name, location });
    }
    f = { fd, size: fstatSync(fd).size };
    ctx.files.set(full, f);
  }
  if (offset + length > f.size) {
    throw invalid(`initializer '${name}' reads bytes ${offset}..${offset + length} of ${full}, but that file has only ${f.size} bytes (truncated or mismatched data file)`, { name, location });
  }
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const r = readSync(f.fd, out, done, Math.min(length - done, WRITE_CHUNK), offset + done);
    if (r === 0) throw invalid(`unexpected end of ${full} while reading initializer '${name}'`, { name });
    done += r;
  }
  return out;
}

function decodeTensor(t: OnnxNs.ITensorProto, ctx: DecodeCtx, what: string): TensorData {
  const name = t.name || what;
  const dtype = dtypeOf(t.dataType ?? 0, `tensor '${name}'`);
  const dims = (t.dims ?? []).map((d) => toNumber(d as LongLike, `tensor '${name}' dim`));
  for (const d of dims) if (d < 0) throw invalid(`tensor '${name}' has negative dim ${d}`, { name });
  const n = numel(dims);
  const nbytes = n * bytesPerElement(dtype);
  if (t.segment) throw invalid(`tensor '${name}' is segmented, which is not supported`, { name });

  if (t.dataLocation === DATA_LOCATION_EXTERNAL) {
    return { dtype, dims, data: fromBytes(dtype, n, readExternal(name, t, nbytes, ctx)) };
  }
  const raw = t.rawData;
  if (raw && raw.byteLength > 0) {
    if (raw.byteLength !== nbytes) {
      throw invalid(`tensor '${name}' (${dtype}, dims [${dims}]) needs ${nbytes} bytes but raw_data has ${raw.byteLength}`, { name });
    }
    return { dtype, dims, data: fromBytes(dtype, n, raw) };
  }
  // Typed fields: ONNX stores float16/bool/uint8/int32 in int32_data (float16 as its bit pattern).
  const data = allocData(dtype, n);
  let src: ArrayLike<unknown>;
  let field: string;
  switch (dtype) {
    case 'float32':
      src = t.floatData ?? [];
      field = 'float_data';
      break;
    case 'float64':
      src = t.doubleData ?? [];
      field = 'double_data';
      break;
    case 'int64':
      src = t.int64Data ?? [];
      field = 'int64_data';
      break;
    default:
      src = t.int32Data ?? [];
      field = 'int32_data';
  }
  if (src.length !== n) {
    throw invalid(`tensor '${name}' (${dtype}, dims [${dims}]) needs ${n} values but ${field} has ${src.length} (and there is no raw_data)`, { name });
  }
  if (data instanceof BigInt64Array) {
    for (let i = 0; i < n; i++) data[i] = toBigInt(src[i] as LongLike);
  } else {
    for (let i = 0; i < n; i++) (data as Float32Array)[i] = src[i] as number;
  }
  return { dtype, dims, data };
}

function inferAttrType(a: OnnxNs.IAttributeProto): number {
  if (a.type) return a.type;
  // Very old models omit the type tag; infer it from the one field that is set.
  if (a.t) return AT.TENSOR;
  if (a.g) return AT.GRAPH;
  if (a.floats?.length) return AT.FLOATS;
  if (a.ints?.length) return AT.INTS;
  if (a.strings?.length) return AT.STRINGS;
  if (a.s?.length) return AT.STRING;
  if (a.f) return AT.FLOAT;
  return AT.INT;
}

function decodeAttr(a: OnnxNs.IAttributeProto, node: string, ctx: DecodeCtx): Attr {
  const type = inferAttrType(a);
  switch (type) {
    case AT.INT:
      return { type: 'int', v: toNumber(a.i as LongLike, `attribute '${a.name}' of node '${node}'`) };
    case AT.FLOAT:
      return { type: 'float', v: a.f ?? 0 };
    case AT.INTS:
      return { type: 'ints', v: (a.ints ?? []).map((x) => toNumber(x as LongLike, `attribute '${a.name}' of node '${node}'`)) };
    case AT.FLOATS:
      return { type: 'floats', v: [...(a.floats ?? [])] };
    case AT.STRING:
      return { type: 'string', v: utf8d.decode(a.s ?? new Uint8Array()) };
    case AT.STRINGS:
      return { type: 'strings', v: (a.strings ?? []).map((s) => utf8d.decode(s)) };
    case AT.TENSOR:
      if (!a.t) throw invalid(`attribute '${a.name}' of node '${node}' is a tensor attribute without a tensor`, { node });
      return { type: 'tensor', v: decodeTensor(a.t, ctx, `${node}.${a.name}`) };
    default:
      throw invalid(
        `attribute '${a.name}' of node '${node}' has kind ${type} (graph, sparse tensor, tensor list or type proto), which clipag cannot represent; ` +
          'control-flow ops (If/Loop/Scan) and sparse attributes are not supported — export the model without them',
        { node, attr: a.name, kind: type },
      );
  }
}

/**
 * Decoded shapes use -1 for a dim that is symbolic (dim_param) or missing. ValueInfo.shape is documented
 * as static for graphs we build; -1 only appears in foreign models read from disk.
 */
function decodeValueInfo(v: OnnxNs.IValueInfoProto, role: string): ValueInfo {
  const tt = v.type?.tensorType;
  if (!tt) throw invalid(`${role} '${v.name}' is not a tensor (sequence/map/optional values are not supported)`, { name: v.name });
  const dtype = dtypeOf(tt.elemType ?? 0, `${role} '${v.name}'`);
  if (!tt.shape) return { name: v.name ?? '', dtype, shape: [], rankUnknown: true };
  const shape = (tt.shape.dim ?? []).map((d) => {
    // dim_value and dim_param are a oneof: an unset dim_value decodes as null, never as 0.
    const val = d.dimValue as LongLike | null | undefined;
    if (val === null || val === undefined) return -1;
    return toNumber(val, `${role} '${v.name}' dim`);
  });
  return { name: v.name ?? '', dtype, shape };
}

/** Decode an ONNX ModelProto. External data is resolved relative to `opts.baseDir`. */
export function decodeModel(bytes: Uint8Array, opts: { baseDir?: string } = {}): ModelIR {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength === 0) throw invalid('ONNX model bytes are empty; pass the contents of a .onnx file');
  let proto: OnnxNs.ModelProto;
  try {
    proto = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw invalid(`not a valid ONNX model (protobuf decode failed: ${(e as Error).message}); the file is truncated or not ONNX`);
  }
  const g = proto.graph;
  if (!g) throw invalid('ONNX model has no graph; the file is truncated or not an ONNX model');
  let opset: number | undefined;
  const extraOpsets: { domain: string; version: number }[] = [];
  for (const o of proto.opsetImport ?? []) {
    const version = toNumber(o.version as LongLike, 'opset version');
    if (!o.domain || o.domain === 'ai.onnx') opset = version;
    else extraOpsets.push({ domain: o.domain, version });
  }
  if (opset === undefined) throw invalid('ONNX model imports no ai.onnx opset; re-export it with a default-domain opset_import');
  if ((g.sparseInitializer ?? []).length > 0) throw invalid('ONNX model has sparse initializers, which are not supported; densify them before export');

  const ctx: DecodeCtx = { baseDir: opts.baseDir, files: new Map() };
  try {
    const initializers = new Map<string, TensorData>();
    for (const t of g.initializer ?? []) {
      if (!t.name) throw invalid('ONNX model has an initializer without a name');
      initializers.set(t.name, decodeTensor(t, ctx, t.name));
    }
    const nodes: Node[] = (g.node ?? []).map((n, i) => {
      const name = n.name || `${n.opType}_${i}`;
      const attrs: Record<string, Attr> = {};
      for (const a of n.attribute ?? []) attrs[a.name ?? ''] = decodeAttr(a, name, ctx);
      const node: Node = { op: n.opType ?? '', name: n.name ?? '', inputs: [...(n.input ?? [])], outputs: [...(n.output ?? [])], attrs };
      if (n.domain) node.domain = n.domain;
      return node;
    });
    const m: ModelIR = {
      opset,
      graphName: g.name ?? '',
      // Models before IR version 4 list every initializer as a graph input too; those are constants here.
      inputs: (g.input ?? []).filter((v) => !initializers.has(v.name ?? '')).map((v) => decodeValueInfo(v, 'input')),
      outputs: (g.output ?? []).map((v) => decodeValueInfo(v, 'output')),
      initializers,
      nodes,
    };
    if (extraOpsets.length) m.extraOpsets = extraOpsets;
    if (proto.producerName) m.producer = proto.producerName;
    if (g.valueInfo && g.valueInfo.length) m.valueInfo = g.valueInfo.map((v) => decodeValueInfo(v, 'value_info'));
    if ((proto.metadataProps ?? []).length) {
      m.metadata = Object.fromEntries(proto.metadataProps.map((p) => [p.key ?? '', p.value ?? '']));
    }
    if (ctx.files.size > 0) m.externalFiles = [...ctx.files.keys()].sort();
    return m;
  } finally {
    for (const f of ctx.files.values()) closeSync(f.fd);
  }
}

/** Read a model written by writeModelFile (or any ONNX file); external data is resolved next to it. */
export function readModelFile(path: string): ModelIR {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw invalid(`cannot read ONNX model ${path}: ${(e as Error).message}`, { path });
  }
  return whereFrom(path, () => decodeModel(bytes, { baseDir: dirname(resolve(path)) }), { path });
}
