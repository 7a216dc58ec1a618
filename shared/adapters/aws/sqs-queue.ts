import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSServiceException,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { NonRetryableError, PreconditionFailedError, RetryableError, ValidationError } from '../../errors.ts';
import type { JobQueue, ReceivedMessage, ReceiveOptions, SendOptions } from '../../ports.ts';
import { checkQueueGroup } from '../../schemas/queue.ts';
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

  async send(body: string, options: SendOptions = {}): Promise<{ messageId: string }> {
    if (typeof body !== 'string' || body.length === 0) throw new ValidationError('message body must be a non-empty string', 'body');
    // Checked here, as the local queue does, so that a bad value is the caller's 400 on both adapters;
    // what SQS still refuses as a parameter after these checks is not a caller's mistake (see call()).
    if (options.delaySec !== undefined && !(Number.isInteger(options.delaySec) && options.delaySec >= 0 && options.delaySec <= 900)) {
      throw new ValidationError('delaySec must be an integer 0..900', 'delaySec');
    }
    if (options.group !== undefined) checkQueueGroup(options.group);
    // A message is a few hundred bytes (at most 256 KiB): a small request.
    const out = await withDeadline('SQS SendMessage', this.callMs, (abortSignal) =>
      call('send', () => this.client.send(new SendMessageCommand({ QueueUrl: this.queueUrl, MessageBody: body, DelaySeconds: options.delaySec, MessageGroupId: options.group }), { abortSignal })),
    );
    return { messageId: out.MessageId! };
  }

  async receive(options: ReceiveOptions = {}): Promise<ReceivedMessage[]> {
    const max = options.max ?? 1;
    const waitSec = options.waitSec ?? 0;
    if (!Number.isInteger(max) || max < 1 || max > 10) throw new ValidationError('max must be 1..10', 'max');
    if (!Number.isInteger(waitSec) || waitSec < 0 || waitSec > 20) throw new ValidationError('waitSec must be an integer 0..20', 'waitSec');
    if (options.visibilitySec !== undefined) checkVisibility(options.visibilitySec);
    // SQS holds a long poll open for `waitSec` when the queue is empty: that wait, then a small request's time.
    const out = await withDeadline('SQS ReceiveMessage', waitSec * 1000 + this.callMs, (abortSignal) =>
      call('receive', () =>
        this.client.send(
          new ReceiveMessageCommand({
            QueueUrl: this.queueUrl,
            MaxNumberOfMessages: max,
            WaitTimeSeconds: waitSec,
            VisibilityTimeout: options.visibilitySec,
            MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp', 'MessageGroupId'],
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
      ...(m.Attributes?.MessageGroupId ? { group: m.Attributes.MessageGroupId } : {}),
    }));
  }

  async extendVisibility(receipt: string, visibilitySec: number): Promise<void> {
    checkVisibility(visibilitySec);
    // A heartbeat that hangs must fail well inside the lease it renews, so that the worker retries it
    // in time: a quarter of the new visibility (1–20 s), not the client's one-minute limit.
    await this.changeVisibility(receipt, visibilitySec, Math.min(20_000, Math.max(1_000, visibilitySec * 250)));
  }

  async ack(receipt: string): Promise<void> {
    await withDeadline('SQS DeleteMessage', this.callMs, (abortSignal) =>
      call('receipt', () => this.client.send(new DeleteMessageCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receipt }), { abortSignal })),
    );
  }

  async release(receipt: string): Promise<void> {
    // No lease to keep alive any more: a small request's deadline, not a quarter of a 0 s visibility.
    await this.changeVisibility(receipt, 0, this.callMs);
  }

  private async changeVisibility(receipt: string, visibilitySec: number, deadlineMs: number): Promise<void> {
    await withDeadline('SQS ChangeMessageVisibility', deadlineMs, (abortSignal) =>
      call('receipt', () =>
        this.client.send(new ChangeMessageVisibilityCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receipt, VisibilityTimeout: visibilitySec }), { abortSignal }),
      ),
    );
  }
}

/** The same bounds as the local queue's (SQS's own: 0 to 12 hours), so both adapters refuse alike. */
function checkVisibility(sec: number): void {
  if (!(Number.isInteger(sec) && sec >= 0 && sec <= 43_200)) throw new ValidationError('visibility must be an integer 0..43200 s', 'visibilitySec');
}

/**
 * SQS's throttling and limit answers. SQS models them as client faults (400/403, no `$retryable`),
 * yet each passes on its own: RequestThrottled (the API's request rate), KmsThrottled (the queue's
 * KMS key), OverLimit (120,000 messages in flight: it eases as they are acked), ThrottlingException
 * (the JSON protocol's generic throttle). The SDK has retried them already; what is left is still
 * "later", not "never": a worker that read one as permanent went unhealthy on a single receive, and
 * the API answered 500 instead of 503.
 * (Smithy's isThrottlingError, in @smithy/core/retry, knows neither KmsThrottled nor OverLimit.)
 */
const THROTTLING = /Throttl|OverLimit|RequestLimitExceeded|TooManyRequests/;

/**
 * What an InvalidParameterValue says when it is about the receipt: the delivery it names is over
 * ("The receipt handle has expired", "Value … for parameter ReceiptHandle is invalid. Reason: Message
 * does not exist or is not available for visibility timeout change", "… is not in flight").
 */
const RECEIPT_REFUSED = /receipt ?handle|not available for visibility timeout change|not in ?flight/i;

/** `receipt`: the call names a delivery by its receipt (ack, extend, release). */
async function call<T>(operation: 'send' | 'receive' | 'receipt', fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    const name = (error as { name?: string })?.name ?? '';
    const message = (error as Error)?.message ?? String(error);
    if (
      operation === 'receipt' &&
      // By substring, as before: a query-protocol code can come namespaced (AWS.SimpleQueueService.…).
      (/ReceiptHandleIsInvalid|MessageNotInflight/.test(name) || (/InvalidParameterValue/.test(name) && RECEIPT_REFUSED.test(message)))
    ) {
      // The delivery this receipt named is over (acked, expired and redelivered, or dead-lettered).
      throw new PreconditionFailedError(`SQS refused the receipt: ${message}`, { cause: error });
    }
    const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
    if (
      status === 429 ||
      (status !== undefined && status >= 500) ||
      THROTTLING.test(name) ||
      (error as { $retryable?: unknown })?.$retryable
    ) {
      throw new RetryableError(`SQS is unavailable: ${message}`, { cause: error });
    }
    if (error instanceof SQSServiceException) {
      // Any other InvalidParameterValue (a DelaySeconds or VisibilityTimeout SQS will not take, such as
      // a lease past its 12-hour total from the receive) lands here: the inputs a caller controls were
      // checked before the call (ValidationError), so what SQS still refuses is ours to fix, not a lost lease.
      throw new NonRetryableError(`SQS request failed (${name}): ${message}`, { cause: error });
    }
    throw new RetryableError(`SQS request failed: ${message}`, { cause: error });
  }
}
