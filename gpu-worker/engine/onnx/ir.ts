// The in-memory graph IR shared by the builder, the gradient compiler, the ONNX codec and the runtime.
// Every value carries a static dtype and shape: graphs are compiled per (model, view count, resolution),
// so static shapes let the gradient compiler emit constant reduction axes instead of runtime shape plumbing.

import { f16ToF32, f32ToF16 } from '../io/half.ts';

export type DType = 'float32' | 'float64' | 'float16' | 'int64' | 'int32' | 'bool' | 'uint8';

export type TypedData =
  | Float32Array
  | Float64Array
  | Uint16Array // float16 bit patterns
  | BigInt64Array
  | Int32Array
  | Uint8Array; // bool and uint8

/** A dense tensor, row-major, little-endian when serialized. */
export interface TensorData {
  dtype: DType;
  dims: number[];
  data: TypedData;
}

/** ONNX attribute values; the tag keeps int vs float explicit (ONNX distinguishes them). */
export type Attr =
  | { type: 'int'; v: number }
  | { type: 'float'; v: number }
  | { type: 'ints'; v: number[] }
  | { type: 'floats'; v: number[] }
  | { type: 'string'; v: string }
  | { type: 'strings'; v: string[] }
  | { type: 'tensor'; v: TensorData };

export const A = {
  i: (v: number): Attr => ({ type: 'int', v }),
  f: (v: number): Attr => ({ type: 'float', v }),
  ints: (v: number[]): Attr => ({ type: 'ints', v }),
  floats: (v: number[]): Attr => ({ type: 'floats', v }),
  s: (v: string): Attr => ({ type: 'string', v }),
  t: (v: TensorData): Attr => ({ type: 'tensor', v }),
};

export interface Node {
  op: string;
  /** '' (or undefined) is the default ai.onnx domain. */
  domain?: string;
  name: string;
  inputs: string[]; // '' marks an omitted optional input
  outputs: string[];
  attrs: Record<string, Attr>;
}

export interface ValueInfo {
  name: string;
  dtype: DType;
  /** Static shape; every dim is a non-negative integer. */
  shape: number[];
  /**
   * Only on values decoded from foreign ONNX files: the file declares no shape at all (unknown rank),
   * and `shape` is then []. Graphs we build never set it.
   */
  rankUnknown?: boolean;
}

/** A whole model: what the codec reads/writes and the runtime loads. */
export interface ModelIR {
  /** ai.onnx opset version of the default domain. */
  opset: number;
  /** Other (domain, version) imports, e.g. com.microsoft for foreign models (refused by the compiler). */
  extraOpsets?: { domain: string; version: number }[];
  producer?: string;
  graphName: string;
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  initializers: Map<string, TensorData>;
  nodes: Node[];
  /** Optional shape/type annotations of intermediate values (ONNX value_info). */
  valueInfo?: ValueInfo[];
  metadata?: Record<string, string>;
  /**
   * Set by decoding only: the files the initializers' external data was read from, as absolute paths
   * (what has to travel with the model file).
   */
  externalFiles?: string[];
}

export const OPSET = 17;

/** ONNX TensorProto.DataType codes of the dtypes the engine handles. */
export const ONNX_DTYPE_CODES: Readonly<Record<DType, number>> = {
  float32: 1,
  uint8: 2,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
};
export const DTYPE_OF_ONNX_CODE: ReadonlyMap<number, DType> = new Map(Object.entries(ONNX_DTYPE_CODES).map(([k, v]) => [v, k as DType]));

export function numel(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

export function bytesPerElement(dtype: DType): number {
  switch (dtype) {
    case 'float64':
    case 'int64':
      return 8;
    case 'float32':
    case 'int32':
      return 4;
    case 'float16':
      return 2;
    case 'bool':
    case 'uint8':
      return 1;
  }
}

/**
 * A zeroed typed array of `n` elements of `dtype`. `shared`: its memory is a SharedArrayBuffer, which
 * crosses to the engine's pool threads without a copy (weights; see runtime/shared-memory.ts).
 */
export function allocData(dtype: DType, n: number, opts: { shared?: boolean } = {}): TypedData {
  const b = opts.shared ? new SharedArrayBuffer(n * bytesPerElement(dtype)) : undefined;
  switch (dtype) {
    case 'float32':
      return b ? new Float32Array(b) : new Float32Array(n);
    case 'float64':
      return b ? new Float64Array(b) : new Float64Array(n);
    case 'float16':
      return b ? new Uint16Array(b) : new Uint16Array(n);
    case 'int64':
      return b ? new BigInt64Array(b) : new BigInt64Array(n);
    case 'int32':
      return b ? new Int32Array(b) : new Int32Array(n);
    case 'bool':
    case 'uint8':
      return b ? new Uint8Array(b) : new Uint8Array(n);
  }
}

export function tensor(dtype: DType, dims: number[], values: ArrayLike<number> | ArrayLike<bigint> | TypedData): TensorData {
  const n = numel(dims);
  const data = allocData(dtype, n);
  if ((values as ArrayLike<unknown>).length !== n) {
    throw new Error(`tensor(${dtype}, [${dims}]): expected ${n} values, got ${(values as ArrayLike<unknown>).length}`);
  }
  if (data instanceof BigInt64Array) {
    for (let i = 0; i < n; i++) data[i] = BigInt((values as ArrayLike<number | bigint>)[i] as number);
  } else if (dtype === 'float16' && !(values instanceof Uint16Array)) {
    // Numbers become half bit patterns; a Uint16Array is taken as bit patterns already (the decoder's).
    for (let i = 0; i < n; i++) data[i] = f32ToF16(Number((values as ArrayLike<number | bigint>)[i]));
  } else {
    for (let i = 0; i < n; i++) (data as Float32Array)[i] = Number((values as ArrayLike<number | bigint>)[i]);
  }
  return { dtype, dims: [...dims], data };
}

/** Element `i` of a tensor as a number (a float16 element decoded from its bits). */
export function valueAt(t: TensorData, i: number): number {
  const v = (t.data as ArrayLike<number | bigint>)[i]!;
  return t.dtype === 'float16' ? f16ToF32(Number(v)) : Number(v);
}

export const isFloat = (d: DType): boolean => d === 'float32' || d === 'float64' || d === 'float16';
