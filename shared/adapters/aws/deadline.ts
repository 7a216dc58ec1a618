// Per-call deadlines of the S3 and SQS adapters. The SDK clients' own limits (shared/adapters/stores.ts)
// are per socket: 5 s to connect, 60 s to the response headers, 60 s of silence. A call that hangs
// still held its caller that long (a worker holding a job, an API request with a 15 s Lambda limit),
// and a body that trickles in a byte at a time had no limit at all. Each call now also runs under an
// abort signal of its own; when it fires, the call fails as a RetryableError, so callers retry it as
// they retry any transient storage or queue failure.
import { RetryableError } from '../../errors.ts';

export interface CallDeadlines {
  /**
   * A small request: an SQS send, delete or visibility change, an S3 head, delete or list page, and
   * the wait for an object's response headers. Default 5 s. S3's guidance for requests under 512 KB,
   * whose median latency is tens of milliseconds, is to retry one still unanswered after 2 s; 5 s
   * leaves room for a new connection and one quick retry inside the SDK, is far below the API
   * Lambda's 15 s (a hung call answers 503, not a gateway time-out), and lets a worker's finished run
   * try its writes about ten times in its 60 s of in-place retries. An SQS long poll gets its wait on
   * top (SQS answers a receive once `WaitTimeSeconds` have passed, or sooner).
   */
  callMs: number;
  /**
   * The slowest transfer taken for a live one, in bytes per second: a body going up or down gets
   * `callMs` plus its size at this rate, so a large object that keeps moving is never cut off by a
   * deadline meant for a small request. Default 256 KiB/s (2 Mbit/s): an in-region transfer runs at
   * tens of MB/s, and an operator pushing a model from home still gets a 600 MB file through.
   */
  minBytesPerSec: number;
}

export const DEFAULT_CALL_DEADLINES: CallDeadlines = { callMs: 5_000, minBytesPerSec: 256 * 1024 };

/** The deadline of a call that moves `bytes` of body (one way): its start, plus the body at the slowest live rate. */
export function transferDeadlineMs(deadlines: CallDeadlines, bytes: number): number {
  return deadlines.callMs + Math.ceil((Math.max(0, bytes) / deadlines.minBytesPerSec) * 1000);
}

/**
 * An abort signal that fires `ms` after it is set, re-armable: a GetObject's response headers get one
 * allowance, then its body gets another in proportion to its size (the SDK's abort listener stays on
 * the request until the body has been read, so the same signal ends a stalled body).
 */
export class Deadline {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  /** The allowance that ran out, once the signal has fired. */
  private exceededMs: number | undefined;

  constructor(
    /** What the call is, for the error: `S3 GetObject`. */
    private readonly what: string,
    ms: number,
  ) {
    this.rearm(ms);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** From now, `ms` more (replacing what was left). */
  rearm(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.exceededMs = ms;
      this.controller.abort(new Error(`${this.what} deadline of ${ms} ms`));
    }, ms);
  }

  /** No deadline any more (the call is over). */
  clear(): void {
    clearTimeout(this.timer);
  }

  /**
   * What a failed call throws: a RetryableError saying the deadline ran out when it did (whatever the
   * SDK made of the abort), else `error` as it is.
   */
  errorFor(error: unknown): unknown {
    if (this.exceededMs === undefined) return error;
    return new RetryableError(`${this.what} did not finish within its deadline (${this.exceededMs} ms); retry`, { cause: error });
  }
}

/** Runs `call` under one deadline of `ms` (see Deadline). */
export async function withDeadline<T>(what: string, ms: number, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const deadline = new Deadline(what, ms);
  try {
    return await call(deadline.signal);
  } catch (error) {
    throw deadline.errorFor(error);
  } finally {
    deadline.clear();
  }
}
