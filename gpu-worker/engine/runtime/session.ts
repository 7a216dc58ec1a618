// A thin, checked wrapper over onnxruntime-node's InferenceSession (cf. transformers.js backends/onnx.js).
// Feeds are checked against the model's declared inputs before ORT sees them, because ORT's own errors
// ("Got invalid dimensions for input ...") do not say which request parameter was wrong.
//
// session.run blocks the calling thread's event loop for the whole run: servers use EnginePool (pool.ts).

import ort from 'onnxruntime-node';
import { EngineError } from '../errors.ts';
import { encodeModel } from '../onnx/codec.ts';
import { numel } from '../onnx/ir.ts';
import type { DType, ModelIR, TensorData, TypedData, ValueInfo } from '../onnx/ir.ts';
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

export function toOrtSessionOptions(opts: SessionOptions): ort.InferenceSession.SessionOptions {
  const o: ort.InferenceSession.SessionOptions = {
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

export function toOrtTensor(name: string, t: TensorData): ort.Tensor {
  return new ort.Tensor(t.dtype, t.data as never, t.dims);
}

export function fromOrtTensor(name: string, t: ort.Tensor): TensorData {
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

function specsFromMetadata(session: ort.InferenceSession): InputSpec[] {
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

/** What a failed InferenceSession.create means for the worker: a device that cannot start, a model too large for it, or a model onnxruntime refuses. */
export function loadError(e: unknown, opts: SessionOptions): EngineError {
  if (e instanceof EngineError) return e;
  const msg = (e as Error)?.message ?? String(e);
  // Out of memory while loading: a property of this model on this device (it may fit another GPU),
  // not a device that cannot start. Retryable, and never counted against the machine (ADR 0023).
  if (/out of memory|cudaErrorMemoryAllocation|failed to allocate memory/i.test(msg)) {
    return new EngineError('runtime_failed', `the ${opts.device ?? 'cpu'} device ran out of memory loading the model: ${msg}`, { device: opts.device });
  }
  if (/provider|cuda|cudnn|libcu/i.test(msg)) {
    return new EngineError('runtime_unavailable', `onnxruntime could not start the ${opts.device ?? 'cpu'} execution provider: ${msg}`, { device: opts.device });
  }
  return new EngineError('invalid_model', `onnxruntime refused the model: ${msg}`);
}

class OrtEngineSession implements EngineSession {
  readonly inputNames: string[];
  readonly outputNames: string[];
  private released = false;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly specs: InputSpec[],
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
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(name, t);
    let out: ort.InferenceSession.ReturnType;
    try {
      out = await this.session.run(ortFeeds, wanted);
    } catch (e) {
      throw new EngineError('runtime_failed', `onnxruntime run failed: ${(e as Error)?.message ?? String(e)}`);
    }
    const result: Record<string, TensorData> = {};
    for (const name of wanted) result[name] = fromOrtTensor(name, out[name] as ort.Tensor);
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
  let session: ort.InferenceSession;
  try {
    const o = toOrtSessionOptions(opts);
    session = typeof model === 'string' ? await ort.InferenceSession.create(model, o) : await ort.InferenceSession.create(model, o);
  } catch (e) {
    throw loadError(e, opts);
  }
  const specs = opts.inputInfos
    ? opts.inputInfos.map((v) => ({ name: v.name, dtype: v.dtype, shape: v.rankUnknown ? undefined : v.shape }))
    : specsFromMetadata(session);
  return new OrtEngineSession(session, specs);
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
