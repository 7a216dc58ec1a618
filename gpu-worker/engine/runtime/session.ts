// A thin, checked wrapper over onnxruntime-node's InferenceSession (cf. transformers.js backends/onnx.js).
// Feeds are checked against the model's declared inputs before ORT sees them, because ORT's own errors
// ("Got invalid dimensions for input ...") do not say which request parameter was wrong.
//
// session.run blocks the calling thread's event loop for the whole run: servers use EnginePool (pool.ts).

import type { InferenceSession, Tensor } from 'onnxruntime-node';
import { EngineError } from '../errors.ts';
import { encodeModel } from '../onnx/codec.ts';
import { numel } from '../onnx/ir.ts';
import type { DType, ModelIR, TensorData, TypedData, ValueInfo } from '../onnx/ir.ts';
import { loadOrt } from './ort.ts';
import { executionProviders } from './providers.ts';
import type { Device } from './providers.ts';

export interface SessionOptions {
  device?: Device;
  intraOpThreads?: number;
  /** Sets session config session.disable_prepacking: about half the weight memory, 5-18 % slower. */
  disablePrepacking?: boolean;
  graphOptimizationLevel?: 'disabled' | 'basic' | 'extended' | 'all';
  /**
   * Benchmarks only: write onnxruntime's per-node profile (chrome-trace JSON) to `<prefix>_<timestamp>.json`
   * when the session is released.
   */
  profileFilePrefix?: string;
  /** Benchmarks only: save the graph as onnxruntime optimized it (to see which fusions applied). */
  optimizedModelPath?: string;
  /** ORT log severity: 0 verbose, 1 info, 2 warning, 3 error (default), 4 fatal. */
  logSeverity?: number;
  /**
   * Declared inputs to check feeds against. By default they come from the loaded model's metadata;
   * pass them when the caller knows tighter shapes (a -1 dim accepts any size).
   */
  inputInfos?: ValueInfo[];
}

export interface EngineSession {
  readonly inputNames: string[];
  readonly outputNames: string[];
  run(feeds: Record<string, TensorData>, fetches?: string[]): Promise<Record<string, TensorData>>;
  release(): Promise<void>;
}

const DTYPES: readonly DType[] = ['float32', 'float64', 'float16', 'int64', 'int32', 'bool', 'uint8'];

/** A declared input: dims are numbers, -1 for any size. */
interface InputSpec {
  name: string;
  dtype: string;
  shape: number[] | undefined;
}

export function toOrtSessionOptions(opts: SessionOptions): InferenceSession.SessionOptions {
  const o: InferenceSession.SessionOptions = {
    executionProviders: executionProviders(opts.device ?? 'cpu'),
    graphOptimizationLevel: opts.graphOptimizationLevel ?? 'all',
    logSeverityLevel: (opts.logSeverity ?? 3) as 0 | 1 | 2 | 3 | 4,
  };
  if (opts.intraOpThreads !== undefined) {
    if (!Number.isInteger(opts.intraOpThreads) || opts.intraOpThreads < 0) {
      throw new EngineError('invalid_input', `intraOpThreads must be a non-negative integer (0 = ORT default), got ${opts.intraOpThreads}`);
    }
    o.intraOpNumThreads = opts.intraOpThreads;
  }
  if (opts.logSeverity !== undefined && ![0, 1, 2, 3, 4].includes(opts.logSeverity)) {
    throw new EngineError('invalid_input', `logSeverity must be 0 (verbose) .. 4 (fatal), got ${opts.logSeverity}`);
  }
  if (opts.disablePrepacking) o.extra = { session: { disable_prepacking: '1' } };
  if (opts.profileFilePrefix) {
    o.enableProfiling = true;
    o.profileFilePrefix = opts.profileFilePrefix;
  }
  if (opts.optimizedModelPath) o.optimizedModelFilePath = opts.optimizedModelPath;
  return o;
}

export function toOrtTensor(name: string, t: TensorData): Tensor {
  const { Tensor: OrtTensor } = loadOrt();
  return new OrtTensor(t.dtype, t.data as never, t.dims);
}

export function fromOrtTensor(name: string, t: Tensor): TensorData {
  const dtype = t.type as DType;
  if (!DTYPES.includes(dtype)) {
    throw new EngineError('runtime_failed', `output '${name}' has type ${t.type}, which clipag does not handle; cast it to one of ${DTYPES.join(', ')} in the graph`, { name });
  }
  let data = t.data as unknown as TypedData;
  // Where a global Float16Array exists ORT may hand one back; the IR keeps float16 as raw bit patterns.
  if (dtype === 'float16' && !(data instanceof Uint16Array)) {
    const v = data as unknown as ArrayBufferView & { length: number };
    data = new Uint16Array(v.buffer, v.byteOffset, v.length);
  }
  return { dtype, dims: [...t.dims], data };
}

function specsFromMetadata(session: InferenceSession): InputSpec[] {
  return session.inputMetadata.map((m) => {
    if (!m.isTensor) return { name: m.name, dtype: 'non-tensor', shape: undefined };
    return { name: m.name, dtype: m.type, shape: m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1)) };
  });
}

function checkFeeds(specs: InputSpec[], feeds: Record<string, TensorData>): void {
  const known = new Map(specs.map((s) => [s.name, s]));
  const expected = specs.map((s) => `${s.name} (${s.dtype}${s.shape ? ` [${s.shape.map((d) => (d < 0 ? '?' : d))}]` : ''})`).join(', ');
  for (const name of Object.keys(feeds)) {
    if (!known.has(name)) throw new EngineError('invalid_input', `unknown input '${name}'; the model takes ${expected}`, { input: name });
  }
  for (const s of specs) {
    const t = feeds[s.name];
    if (!t) throw new EngineError('invalid_input', `missing input '${s.name}'; the model takes ${expected}`, { input: s.name });
    if (t.dtype !== s.dtype) {
      throw new EngineError('invalid_input', `input '${s.name}' must be ${s.dtype}, got ${t.dtype}; convert it before running`, { input: s.name });
    }
    if (s.shape) {
      const ok = t.dims.length === s.shape.length && s.shape.every((d, i) => d < 0 || d === t.dims[i]);
      if (!ok) {
        throw new EngineError('invalid_input', `input '${s.name}' must have shape [${s.shape.map((d) => (d < 0 ? '?' : d))}], got [${t.dims}]`, { input: s.name, dims: t.dims });
      }
    }
    const n = numel(t.dims);
    if (t.data.length !== n) {
      throw new EngineError('invalid_input', `input '${s.name}' has dims [${t.dims}] (${n} elements) but its data holds ${t.data.length}`, { input: s.name });
    }
  }
}

/**
 * Out of memory, on the device or the host: a property of this request's size or of this model on
 * this device (it may fit another GPU, or a smaller request this one), never counted against the
 * machine (ADR 0023). onnxruntime's forms: its arena's "Failed to allocate memory for requested
 * buffer of size N", CudaCall's "CUDA failure 2: out of memory ; GPU=…", "cudaErrorMemoryAllocation",
 * cuBLAS/cuDNN's *_STATUS_ALLOC_FAILED, the C++ runtime's std::bad_alloc.
 */
const OUT_OF_MEMORY = /out of memory|cudaErrorMemoryAllocation|failed to allocate memory|_ALLOC_FAILED\b|\bbad_alloc\b/i;

/**
 * CUDA library errors that depend on the request (its shapes, the launch sizes they give a kernel),
 * not on the device: an invalid argument or launch configuration, a cuDNN/cuBLAS configuration it
 * does not support. Another job, or this one on another GPU of the same kind, would fail the same
 * way, so they are no device fault (a GPU that fails every job with one still trips the worker's
 * run-failure count, ADR 0023).
 */
const REQUEST_DEPENDENT_CUDA =
  /\binvalid (?:configuration )?argument\b|cudaErrorInvalid(?:Value|Configuration)\b|too many resources requested for launch|cudaErrorLaunchOutOfResources\b|_STATUS_(?:BAD_PARAM|NOT_SUPPORTED|INVALID_VALUE)\w*/i;

/**
 * What a failed device shows in onnxruntime's messages. CudaCall formats every CUDA, cuBLAS, cuDNN,
 * cuRAND, cuFFT and NCCL error as "<LIB> failure <code>: <text> ; GPU=<n> ; hostname=… ; file=… ;
 * line=… ; expr=…" (cuda_call.cc); other paths name the runtime's error (cudaError…) or the
 * library's status (CUBLAS_STATUS_…, CUDNN_STATUS_…). The phrases are the CUDA runtime's own texts of
 * the sticky and hardware errors (700 illegal memory access, 214 uncorrectable ECC, 719 unspecified
 * launch failure, 710 device-side assert, 999 unknown error via its "failure" form, …) and the
 * driver's Xid reports. Matched on these forms, case and all, never on a bare "cuda": onnxruntime's
 * messages carry source paths such as `core/providers/cuda/…` whatever went wrong.
 */
const DEVICE_FAULT = new RegExp(
  [
    String.raw`\b(?:CUDA|CUBLAS|CUDNN|CURAND|CUFFT|NCCL) failure -?\d+`,
    String.raw`\bcudaError[A-Z]\w*`,
    String.raw`\bCU(?:BLAS|DNN)_STATUS_[A-Z]\w*`,
    String.raw`\bCUDA error\b`,
    'illegal memory access',
    'illegal address',
    'illegal instruction',
    'misaligned address',
    'unspecified launch failure',
    'uncorrectable ECC',
    String.raw`\bECC error`,
    String.raw`\bXid\b`,
    'fallen off the bus',
    'no CUDA-capable device',
    String.raw`CUDA-capable device\(s\) (?:is|are)(?:/are)? busy or unavailable`,
    'CUDA driver version is insufficient',
    'device-side assert',
    'hardware stack error',
    'launch timed out',
    'no kernel image is available',
  ].join('|'),
);

/** The message shows the device (or host) out of memory: the request's or the model's size, not the machine. */
export function isOutOfMemory(message: string): boolean {
  return OUT_OF_MEMORY.test(message);
}

/**
 * The message shows a faulty or unusable GPU (a sticky CUDA error, an ECC/Xid fault, a driver or
 * library failure), not a property of the request: out of memory and request-dependent CUDA errors
 * (invalid arguments, unsupported configurations) are not. A process whose CUDA context saw a
 * sticky error fails every later call, so the machine, not the job, is at fault.
 */
export function isDeviceFault(message: string): boolean {
  return DEVICE_FAULT.test(message) && !OUT_OF_MEMORY.test(message) && !REQUEST_DEPENDENT_CUDA.test(message);
}

/**
 * An execution provider that could not be registered or whose libraries did not load: onnxruntime's
 * "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open
 * shared object file", "CUDA Provider not available", onnxruntime-node's "executionProviders[0] is
 * unsupported: 'cuda'", a CUDA/cuDNN library that is missing.
 */
const PROVIDER_LOAD_FAILURE =
  /failed to load library|cannot open shared object file|error while loading shared libraries|LoadLibrary(?:Ex)?\w* failed|provider not available|executionProviders\[\d+\] is unsupported|\blib(?:cuda|cudart|cublas\w*|cudnn\w*|cufft|curand|nvrtc|nvinfer\w*|onnxruntime_providers_\w+)\.so[\w.]*: /i;

/**
 * What a failed InferenceSession.create means for the worker: a device that cannot start, a model
 * too large for it, or a model onnxruntime refuses. Only a device fault or a provider that does not
 * load is `runtime_unavailable` (a machine failure, ADR 0023): a model whose kernels refuse it at
 * initialization also names a provider's source path ("Exception during initialization:
 * …/core/providers/cpu/…", "…/core/providers/cuda/…"), and taking that for the machine's fault would
 * make every worker that loads the model restart.
 */
export function loadError(e: unknown, opts: SessionOptions): EngineError {
  if (e instanceof EngineError) return e;
  const msg = (e as Error)?.message ?? String(e);
  // Out of memory while loading: a property of this model on this device (it may fit another GPU),
  // not a device that cannot start. Retryable, and never counted against the machine (ADR 0023).
  if (isOutOfMemory(msg)) {
    return new EngineError('runtime_failed', `the ${opts.device ?? 'cpu'} device ran out of memory loading the model: ${msg}`, { device: opts.device });
  }
  if (isDeviceFault(msg) || PROVIDER_LOAD_FAILURE.test(msg)) {
    return new EngineError('runtime_unavailable', `onnxruntime could not start the ${opts.device ?? 'cpu'} execution provider: ${msg}`, { device: opts.device });
  }
  // A CUDA library that refused this model's configuration (CUDNN_STATUS_NOT_SUPPORTED, an invalid
  // launch argument): the model's on this kind of GPU, perhaps not on another. Retryable, not the machine's.
  if (DEVICE_FAULT.test(msg)) {
    return new EngineError('runtime_failed', `a CUDA library on the ${opts.device ?? 'cpu'} device refused the model: ${msg}`, { device: opts.device });
  }
  return new EngineError('invalid_model', `onnxruntime refused the model: ${msg}`);
}

/**
 * What a failed session.run means for the worker. A device fault is `runtime_unavailable`, as a
 * device that cannot start: the machine is at fault (a retry elsewhere, and a mark against this
 * worker's health, ADR 0023). Anything else (out of memory, shapes onnxruntime rejects) is
 * `runtime_failed`: retryable, and the job's own.
 */
export function runError(e: unknown, device: Device = 'cpu'): EngineError {
  if (e instanceof EngineError) return e;
  const msg = (e as Error)?.message ?? String(e);
  if (isDeviceFault(msg)) return new EngineError('runtime_unavailable', `onnxruntime run failed: the ${device} device failed: ${msg}`, { device, deviceFault: true });
  return new EngineError('runtime_failed', `onnxruntime run failed: ${msg}`);
}

class OrtEngineSession implements EngineSession {
  readonly inputNames: string[];
  readonly outputNames: string[];
  private released = false;

  constructor(
    private readonly session: InferenceSession,
    private readonly specs: InputSpec[],
    private readonly device: Device,
  ) {
    this.inputNames = [...session.inputNames];
    this.outputNames = [...session.outputNames];
  }

  async run(feeds: Record<string, TensorData>, fetches?: string[]): Promise<Record<string, TensorData>> {
    if (this.released) throw new EngineError('invalid_input', 'this session was released; create a new one');
    checkFeeds(this.specs, feeds);
    const wanted = fetches ?? this.outputNames;
    for (const f of wanted) {
      if (!this.outputNames.includes(f)) {
        throw new EngineError('invalid_input', `unknown output '${f}'; the model produces ${this.outputNames.join(', ')}`, { output: f });
      }
    }
    const ortFeeds: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(name, t);
    let out: InferenceSession.ReturnType;
    try {
      out = await this.session.run(ortFeeds, wanted);
    } catch (e) {
      throw runError(e, this.device);
    }
    const result: Record<string, TensorData> = {};
    for (const name of wanted) result[name] = fromOrtTensor(name, out[name] as Tensor);
    return result;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.session.release();
  }
}

/** Load a model (ONNX bytes, or a path — use a path for models with external data). */
export async function createSession(model: Uint8Array | string, opts: SessionOptions = {}): Promise<EngineSession> {
  let session: InferenceSession;
  try {
    const o = toOrtSessionOptions(opts);
    const { InferenceSession: OrtInferenceSession } = loadOrt();
    session = typeof model === 'string' ? await OrtInferenceSession.create(model, o) : await OrtInferenceSession.create(model, o);
  } catch (e) {
    throw loadError(e, opts);
  }
  const specs = opts.inputInfos
    ? opts.inputInfos.map((v) => ({ name: v.name, dtype: v.dtype, shape: v.rankUnknown ? undefined : v.shape }))
    : specsFromMetadata(session);
  return new OrtEngineSession(session, specs, opts.device ?? 'cpu');
}

/** Encode, load, run once and release: for tests and one-off evaluations. */
export async function runModel(
  model: ModelIR,
  feeds: Record<string, TensorData>,
  opts: SessionOptions & { fetches?: string[] } = {},
): Promise<Record<string, TensorData>> {
  const session = await createSession(encodeModel(model), { inputInfos: model.inputs, ...opts });
  try {
    return await session.run(feeds, opts.fetches);
  } finally {
    await session.release();
  }
}
