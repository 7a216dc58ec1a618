// Typed engine errors. Each carries a stable code and a message that says what to fix.
// The worker maps them to job failures (non-retryable) and the CLI prints them without a stack.

export type EngineErrorCode =
  | 'unsupported_op' // no gradient (or shape) rule exists for an op: the compiler cannot handle it yet
  | 'not_differentiable' // the op has no derivative w.r.t. the requested input (e.g. an integer index)
  | 'invalid_graph' // a graph is malformed: unknown value, wrong arity, bad attribute
  | 'invalid_model' // a model file (ONNX, safetensors, bundle, checkpoint) is unreadable or inconsistent
  | 'invalid_weights' // a weight is missing, extra, or misshapen
  | 'invalid_tokenizer'
  | 'invalid_input' // bad text, NaN pixels, wrong image size, bad request parameters
  | 'runtime_unavailable' // an execution provider cannot be loaded
  | 'runtime_failed' // onnxruntime rejected a run
  | 'numerical_error' // the run produced non-finite values (deterministic: retrying the same spec repeats it)
  | 'aborted';

export class EngineError extends Error {
  readonly code: EngineErrorCode;
  /** Extra machine-readable detail, e.g. { op, node } or { param }. */
  readonly detail: Record<string, unknown>;
  constructor(code: EngineErrorCode, message: string, detail: Record<string, unknown> = {}) {
    super(message);
    this.name = 'EngineError';
    this.code = code;
    this.detail = detail;
  }
}

export const isEngineError = (e: unknown): e is EngineError => e instanceof EngineError;

/**
 * Runs `fn`; an EngineError it throws is thrown again with `where` in front of its message (the file,
 * the bundle, the flag), so that a refusal says which input it is about. Other errors pass unchanged.
 */
export function whereFrom<T>(where: string, fn: () => T, detail: Record<string, unknown> = {}): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof EngineError) throw new EngineError(e.code, `${where}: ${e.message}`, { ...e.detail, ...detail });
    throw e;
  }
}
