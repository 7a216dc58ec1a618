// Stand-ins for worker tests whose subject is delivery and storage, not pixels: synthesizers that
// return on cue (races and faults need the engine's timing controlled), a worker on the real local
// adapters around them, and queues with SQS's own rules, which neither the local queue (stricter: it
// refuses old receipts, and never hands one message out twice) nor local-aws-sqs reproduces on demand.
import { randomUUID } from 'node:crypto';
import { createWorker, type Logger, type QueueWorker, type WorkerConfig, type WorkerDeps, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { SynthesisOutcome, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { PreconditionFailedError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, JobStore, ReceiveOptions, ReceivedMessage } from '../../shared/ports.ts';

const workers: QueueWorker[] = [];
/** For `afterEach`: stops every worker `start` made. */
export async function stopWorkers(): Promise<void> {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `target` with some methods replaced (a port with a fault injected). */
export function patched<T extends object>(target: T, overrides: Partial<Record<keyof T, (...args: never[]) => unknown>>): T {
  return new Proxy(target, {
    get(t, p, r) {
      if (Object.hasOwn(overrides, p)) return overrides[p as keyof T];
      const v = Reflect.get(t, p, r);
      return typeof v === 'function' ? v.bind(t) : v;
    },
  });
}

export const outcome = (stepsDone: number, aborted: boolean, images: SynthesisOutcome['images'] = []): SynthesisOutcome => ({
  images, aborted, stepsDone, totalSteps: stepsDone, encoderPasses: 7, timingsMs: { total: 0, sessionRun: 0, optimize: 0 },
});

/** One finished image of a stand-in run (its PNG bytes are only stored, never decoded). */
export const standInImage = (index: number, frames: SynthesisOutcome['images'][number]['frames'] = []): SynthesisOutcome['images'][number] => ({
  index, seed: index, png: new Uint8Array([index, 1, 2, 3]), width: 64, height: 64, clipScore: 0.25, scores: [], screenCosines: [], frames, stepsDone: 6,
});

/** Steps of `ms` each, reporting progress and honouring the abort. */
export const stepping = (steps: number, ms: number, onRun?: () => void, images: SynthesisOutcome['images'] = []): Synthesizer => ({
  async run(_job, { signal, onProgress } = {}) {
    onRun?.();
    for (let s = 1; s <= steps; s++) {
      if (signal?.aborted) return outcome(s - 1, true);
      onProgress?.({ step: s, total: steps, image: 0 });
      await sleep(ms);
    }
    return outcome(steps, false, images);
  },
});

/** A worker on the given ports with fast test settings (and `more` of its dependencies); `logs` collects what it logs. */
export function start(deps: { queue: JobQueue; jobs: JobStore; blobs: BlobStore }, synthesizer: Synthesizer, config: Partial<WorkerConfig> = {}, more: Pick<WorkerDeps, 'models'> = {}) {
  const events: WorkerEvent[] = [];
  const logs: Array<{ level: string; msg: string; fields?: Record<string, unknown> }> = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void logs.push({ level, msg, ...(fields ? { fields } : {}) });
  const log: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  const worker = createWorker({
    queue: deps.queue, jobs: deps.jobs, blobs: deps.blobs, synthesizer, log, ...more,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, pollErrorBackoffMs: 50, deadLetterSweepMs: 0, ...config },
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { worker, events, logs };
}

export const finishedOf = (events: WorkerEvent[]) => events.find((e): e is Extract<WorkerEvent, { type: 'job_finished' }> => e.type === 'job_finished');

type StoredMessage = { id: string; body: string; visibleAt: number; receiveCount: number; token: string; sentAt: Date; gone: boolean };

/**
 * SQS's receipt rules (AWS docs): every receive makes a new receipt; ChangeMessageVisibility with an
 * old one fails; DeleteMessage with an older receipt still deletes the message, even while another
 * reader holds it. With `copies: 2` every message is stored twice under one id, and each copy is
 * handed out on its own (SQS standard queues deliver at least once).
 */
export class SqsReceiptRulesQueue implements JobQueue {
  readonly deadLetter = undefined;
  readonly stored: StoredMessage[] = [];
  constructor(private readonly copies = 1, private readonly copyDelayMs = 0) {}
  async send(body: string) {
    const id = randomUUID();
    for (let i = 0; i < this.copies; i++) this.stored.push({ id, body, visibleAt: Date.now() + i * this.copyDelayMs, receiveCount: 0, token: '', sentAt: new Date(), gone: false });
    return { messageId: id };
  }
  async receive(options: ReceiveOptions = {}): Promise<ReceivedMessage[]> {
    const deadline = Date.now() + (options.waitSec ?? 0) * 1000;
    for (;;) {
      const out: ReceivedMessage[] = [];
      for (const [i, m] of this.stored.entries()) {
        if (m.gone || m.visibleAt > Date.now() || out.length >= (options.max ?? 1)) continue;
        m.receiveCount++;
        m.token = randomUUID();
        m.visibleAt = Date.now() + (options.visibilitySec ?? 30) * 1000;
        out.push({ messageId: m.id, body: m.body, receipt: `${i}|${m.token}`, receiveCount: m.receiveCount, sentAt: m.sentAt });
      }
      if (out.length > 0 || Date.now() >= deadline) return out;
      await sleep(20);
    }
  }
  private held(receipt: string): StoredMessage {
    const [i, token] = receipt.split('|');
    const m = this.stored[Number(i)];
    if (!m || m.gone || m.token !== token || m.visibleAt <= Date.now()) throw new PreconditionFailedError('ReceiptHandleIsInvalid');
    return m;
  }
  async extendVisibility(receipt: string, sec: number) {
    this.held(receipt).visibleAt = Date.now() + sec * 1000;
  }
  async ack(receipt: string) {
    const m = this.stored[Number(receipt.split('|')[0])];
    if (m) m.gone = true;
  }
  async release(receipt: string) {
    await this.extendVisibility(receipt, 0);
  }
  /** Messages not yet deleted, in flight or not. */
  get left(): number {
    return this.stored.filter((m) => !m.gone).length;
  }
}
