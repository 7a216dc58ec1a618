import { ConditionalCheckFailedException, DynamoDBServiceException, GetItemCommand, UpdateItemCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { NonRetryableError, RetryableError, ValidationError } from '../../errors.ts';
import type { RateCounter } from '../../ports.ts';
import { withDeadline } from './deadline.ts';

export interface DynamoDbRateCounterOptions {
  /** Built by the composition root; never constructed here. */
  client: DynamoDBClient;
  /** Partition key `pk` (string); TTL on `expires_at` (the CDK's StatefulStack makes it so). */
  table: string;
  /**
   * Per-call deadline, ms (default 1000). Every API request waits on this call: a store that is slow
   * must cost a request little (the limiter then fails open), not the 5 s a storage call may take.
   */
  callMs?: number;
}

/**
 * RateCounter on a DynamoDB table, one item per key and window: `pk` = `<key>#<window>`, the count in
 * `n`. The conditional ADD is atomic on DynamoDB's side, so API Lambdas racing on one account never
 * push a count past its ceiling, and a refused add writes nothing (it is still billed one write).
 */
export class DynamoDbRateCounter implements RateCounter {
  private readonly client: DynamoDBClient;
  private readonly table: string;
  private readonly callMs: number;

  constructor(options: DynamoDbRateCounterOptions) {
    if (!options.table) throw new ValidationError('table is required', 'table');
    this.client = options.client;
    this.table = options.table;
    this.callMs = options.callMs ?? 1000;
    if (!(this.callMs > 0)) throw new ValidationError('callMs must be > 0', 'callMs');
  }

  /**
   * A strongly consistent read: the limiter reads a window just after it ended and keeps the count,
   * so an eventually consistent one could miss its last adds for good (one read per account per
   * window: its double price is nothing).
   */
  async get(key: string, window: number): Promise<number> {
    const out = await withDeadline('DynamoDB GetItem', this.callMs, (abortSignal) =>
      call(() => this.client.send(new GetItemCommand({ TableName: this.table, Key: { pk: { S: `${key}#${window}` } }, ProjectionExpression: 'n', ConsistentRead: true }), { abortSignal })),
    );
    const n = out.Item?.n?.N;
    return n === undefined ? 0 : Number(n);
  }

  async addBelow(key: string, window: number, ceiling: number, expiresAtSec: number): Promise<number | null> {
    if (ceiling <= 0) return null;
    try {
      const out = await withDeadline('DynamoDB UpdateItem', this.callMs, (abortSignal) =>
        call(() =>
          this.client.send(
            new UpdateItemCommand({
              TableName: this.table,
              Key: { pk: { S: `${key}#${window}` } },
              UpdateExpression: 'ADD n :one SET expires_at = :expires',
              ConditionExpression: 'attribute_not_exists(n) OR n < :ceiling',
              ExpressionAttributeValues: { ':one': { N: '1' }, ':ceiling': { N: String(ceiling) }, ':expires': { N: String(Math.ceil(expiresAtSec)) } },
              ReturnValues: 'UPDATED_NEW',
            }),
            { abortSignal },
          ),
        ),
      );
      return Number(out.Attributes?.n?.N);
    } catch (error) {
      if (error instanceof AtCeiling) return null;
      throw error;
    }
  }
}

/** The conditional add found the count at its ceiling: an answer, not a failure. */
class AtCeiling extends Error {}

async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    if (error instanceof ConditionalCheckFailedException || (error as { name?: string })?.name === 'ConditionalCheckFailedException') throw new AtCeiling();
    const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
    const name = (error as { name?: string })?.name ?? '';
    if (status === 429 || (status !== undefined && status >= 500) || (error as { $retryable?: unknown })?.$retryable || /Throughput|Throttl|RequestLimitExceeded/.test(name)) {
      throw new RetryableError(`DynamoDB is unavailable: ${(error as Error).message}`, { cause: error });
    }
    if (error instanceof DynamoDBServiceException) throw new NonRetryableError(`DynamoDB request failed (${name}): ${(error as Error).message}`, { cause: error });
    throw new RetryableError(`DynamoDB request failed: ${(error as Error)?.message ?? String(error)}`, { cause: error });
  }
}
