import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSServiceException,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { NonRetryableError, PreconditionFailedError, RetryableError, ValidationError } from '../../errors.ts';
import type { JobQueue, ReceivedMessage, ReceiveOptions } from '../../ports.ts';
import { DEFAULT_CALL_DEADLINES, withDeadline, type CallDeadlines } from './deadline.ts';

export interface SqsJobQueueOptions {
  /** Built by the composition root; never constructed here. */
  client: SQSClient;
  queueUrl: string;
  /** The DLQ named in the main queue's redrive policy (the redrive itself is SQS configuration, e.g. CDK). */
  deadLetterQueueUrl?: string;
  /** Per-call deadlines (default DEFAULT_CALL_DEADLINES; tests shorten them). */
  deadlines?: Partial<CallDeadlines>;
}

/**
 * JobQueue on SQS: long-poll ReceiveMessage with the ApproximateReceiveCount attribute,
 * ChangeMessageVisibility for heartbeats, DeleteMessage to ack, and visibility 0 to release.
 * Dead-lettering after N receives is the queue's redrive policy, not code here.
 */
export class SqsJobQueue implements JobQueue {
  readonly deadLetter: SqsJobQueue | undefined;
  private readonly client: SQSClient;
  private readonly queueUrl: string;
  private readonly callMs: number;

  constructor(options: SqsJobQueueOptions) {
    if (!options.queueUrl) throw new ValidationError('queueUrl is required', 'queueUrl');
    const callMs = options.deadlines?.callMs ?? DEFAULT_CALL_DEADLINES.callMs;
    if (!(callMs > 0)) throw new ValidationError('deadlines.callMs must be > 0', 'deadlines');
    this.client = options.client;
    this.queueUrl = options.queueUrl;
    this.callMs = callMs;
    this.deadLetter = options.deadLetterQueueUrl
      ? new SqsJobQueue({ client: options.client, queueUrl: options.deadLetterQueueUrl, deadlines: { callMs } })
      : undefined;
  }

  async send(body: string, options: { delaySec?: number } = {}): Promise<{ messageId: string }> {
    if (typeof body !== 'string' || body.length === 0) throw new ValidationError('message body must be a non-empty string', 'body');
    // A message is a few hundred bytes (at most 256 KiB): a small request.
    const out = await withDeadline('SQS SendMessage', this.callMs, (abortSignal) =>
      call(() => this.client.send(new SendMessageCommand({ QueueUrl: this.queueUrl, MessageBody: body, DelaySeconds: options.delaySec }), { abortSignal })),
    );
    return { messageId: out.MessageId! };
  }

  async receive(options: ReceiveOptions = {}): Promise<ReceivedMessage[]> {
    const max = options.max ?? 1;
    const waitSec = options.waitSec ?? 0;
    if (!Number.isInteger(max) || max < 1 || max > 10) throw new ValidationError('max must be 1..10', 'max');
    if (!Number.isInteger(waitSec) || waitSec < 0 || waitSec > 20) throw new ValidationError('waitSec must be an integer 0..20', 'waitSec');
    // SQS holds a long poll open for `waitSec` when the queue is empty: that wait, then a small request's time.
    const out = await withDeadline('SQS ReceiveMessage', waitSec * 1000 + this.callMs, (abortSignal) =>
      call(() =>
        this.client.send(
          new ReceiveMessageCommand({
            QueueUrl: this.queueUrl,
            MaxNumberOfMessages: max,
            WaitTimeSeconds: waitSec,
            VisibilityTimeout: options.visibilitySec,
            MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
            // Deprecated spelling of the same request, still honoured by SQS; local-aws-sqs reads only this one.
            AttributeNames: ['All'],
          }),
          { abortSignal },
        ),
      ),
    );
    return (out.Messages ?? []).map((m) => ({
      messageId: m.MessageId!,
      body: m.Body ?? '',
      receipt: m.ReceiptHandle!,
      receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 1),
      sentAt: new Date(Number(m.Attributes?.SentTimestamp ?? Date.now())),
    }));
  }

  async extendVisibility(receipt: string, visibilitySec: number): Promise<void> {
    // A heartbeat that hangs must fail well inside the lease it renews, so that the worker retries it
    // in time: a quarter of the new visibility (1–20 s), not the client's one-minute limit.
    await this.changeVisibility(receipt, visibilitySec, Math.min(20_000, Math.max(1_000, visibilitySec * 250)));
  }

  async ack(receipt: string): Promise<void> {
    await withDeadline('SQS DeleteMessage', this.callMs, (abortSignal) =>
      call(() => this.client.send(new DeleteMessageCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receipt }), { abortSignal })),
    );
  }

  async release(receipt: string): Promise<void> {
    // No lease to keep alive any more: a small request's deadline, not a quarter of a 0 s visibility.
    await this.changeVisibility(receipt, 0, this.callMs);
  }

  private async changeVisibility(receipt: string, visibilitySec: number, deadlineMs: number): Promise<void> {
    await withDeadline('SQS ChangeMessageVisibility', deadlineMs, (abortSignal) =>
      call(() =>
        this.client.send(new ChangeMessageVisibilityCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receipt, VisibilityTimeout: visibilitySec }), { abortSignal }),
      ),
    );
  }
}

async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    const name = (error as { name?: string })?.name ?? '';
    if (/ReceiptHandleIsInvalid|MessageNotInflight|InvalidParameterValue/.test(name)) {
      // The delivery this receipt named is over (acked, expired and redelivered, or dead-lettered).
      throw new PreconditionFailedError(`SQS refused the receipt: ${(error as Error).message}`, { cause: error });
    }
    const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
    if (status === 429 || (status !== undefined && status >= 500) || (error as { $retryable?: unknown })?.$retryable) {
      throw new RetryableError(`SQS is unavailable: ${(error as Error).message}`, { cause: error });
    }
    if (error instanceof SQSServiceException) {
      throw new NonRetryableError(`SQS request failed (${name}): ${(error as Error).message}`, { cause: error });
    }
    throw new RetryableError(`SQS request failed: ${(error as Error)?.message ?? String(error)}`, { cause: error });
  }
}
