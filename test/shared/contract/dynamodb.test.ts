/**
 * The RateCounter contract against the DynamoDB adapter, talking to dynalite (npm; DynamoDB's API on
 * an in-memory store) on 127.0.0.1, plus the adapter's failure mapping and the limiter end to end
 * through the app. dynalite does not run TTL (it refuses UpdateTimeToLive): expiry is proven on the
 * memory adapter (local.test.ts) and the attribute's name in the CDK test.
 */
import { CreateTableCommand, DynamoDBClient, GetItemCommand, type DynamoDBClientConfig } from '@aws-sdk/client-dynamodb';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRequire } from 'node:module';
import { DynamoDbRateCounter } from '../../../shared/adapters/aws/dynamodb-rate-counter.ts';
import { awsRateCounter, SDK_SOCKET_TIMEOUTS } from '../../../shared/adapters/stores.ts';
import { parseConfig, type AwsConfig } from '../../../shared/config.ts';
import { NonRetryableError, RetryableError } from '../../../shared/errors.ts';
import { createApp } from '../../../functions/app.ts';
import { harness } from '../../functions/helpers.ts';
import { close, silentServer } from './helpers.ts';
import { rateCounterContract } from './ratecounter.contract.ts';

// dynalite is CommonJS without types: a factory of an http.Server.
const dynalite = createRequire(import.meta.url)('dynalite') as (options: Record<string, unknown>) => Server;

const TABLE = 'clipag-rate-counters';
let endpoint = '';
let server: Server;

const client = (extra: DynamoDBClientConfig = {}) =>
  new DynamoDBClient({ ...SDK_SOCKET_TIMEOUTS, region: 'us-east-1', endpoint, credentials: { accessKeyId: 'local', secretAccessKey: 'local' }, ...extra });

beforeAll(async () => {
  server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // The table as the CDK's StatefulStack makes it: partition key pk (S), on demand.
  await client().send(
    new CreateTableCommand({ TableName: TABLE, AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }], KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }], BillingMode: 'PAY_PER_REQUEST' }),
  );
});
afterAll(async () => {
  if (server) await close(server);
});

// A generous deadline: dynalite runs in this process, and on a loaded 2-core machine a burst of
// concurrent calls can take over the production 1 s; the deadline itself is tested below (300 ms).
rateCounterContract('DynamoDB adapter on dynalite', async () => new DynamoDbRateCounter({ client: client(), table: TABLE, callMs: 10_000 }));

describe('DynamoDB rate counter specifics', () => {
  it('stores one item per key and window, with the count and its expiry (the TTL attribute)', async () => {
    const counter = new DynamoDbRateCounter({ client: client(), table: TABLE });
    await counter.addBelow('requests/acct_item', 42, 5, 1_900_000_123.2);
    const item = (await client().send(new GetItemCommand({ TableName: TABLE, Key: { pk: { S: 'requests/acct_item#42' } } }))).Item;
    expect(item).toEqual({ pk: { S: 'requests/acct_item#42' }, n: { N: '1' }, expires_at: { N: '1900000124' } });
  });

  it('a missing table is the deployment\'s fault (NonRetryableError); a silent endpoint fails within the deadline as retryable', async () => {
    await expect(new DynamoDbRateCounter({ client: client(), table: 'no-such-table' }).addBelow('k', 1, 5, 1)).rejects.toBeInstanceOf(NonRetryableError);
    const silent = await silentServer();
    try {
      const counter = new DynamoDbRateCounter({ client: client({ endpoint: silent.endpoint, maxAttempts: 1 }), table: TABLE, callMs: 300 });
      const started = Date.now();
      await expect(counter.get('k', 1)).rejects.toBeInstanceOf(RetryableError);
      await expect(counter.addBelow('k', 1, 5, 1)).rejects.toThrow(/deadline \(300 ms\)/);
      expect(Date.now() - started).toBeLessThan(2000);
    } finally {
      await silent.close();
    }
  });

  it('the config builds it: CLIPAG_RATE_LIMIT_PER_MIN with CLIPAG_RATE_TABLE (and the stand-in endpoint); without a limit there is no counter', async () => {
    const env = { CLIPAG_MODE: 'aws', AWS_REGION: 'us-east-1', CLIPAG_BUCKET: 'bucket-x', CLIPAG_QUEUE_URL: 'http://127.0.0.1:1/q', CLIPAG_RATE_TABLE: TABLE, CLIPAG_DYNAMODB_ENDPOINT: endpoint };
    expect(awsRateCounter(parseConfig(env) as AwsConfig)).toBeUndefined();
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = 'local';
    process.env.AWS_SECRET_ACCESS_KEY = 'local';
    try {
      const counter = awsRateCounter(parseConfig({ ...env, CLIPAG_RATE_LIMIT_PER_MIN: '5' }) as AwsConfig)!;
      expect(counter).toBeInstanceOf(DynamoDbRateCounter);
      expect(await counter.addBelow('requests/acct_config', 3, 5, 1)).toBe(1);
    } finally {
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      else process.env.AWS_ACCESS_KEY_ID = saved.id;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
      else process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    }
  });

  it('through the app: 30 requests of one account at once get exactly its 10 per minute through; the rest are 429 rate_limited, and another account is untouched', async () => {
    const h = await harness();
    try {
      const app = createApp({ ...h.deps, rateCounter: new DynamoDbRateCounter({ client: client(), table: TABLE, callMs: 10_000 }), limits: { ...h.deps.limits, rateLimitPerMin: 10 } }); // 10 s: as the contract above (a loaded machine; past the deadline the limiter lets requests through)
      const get = (key: string) => app.request('/v1/models', { headers: { Authorization: `Bearer ${key}` } });
      const answers = await Promise.all(Array.from({ length: 30 }, () => get(h.alice)));
      const statuses = answers.map((r) => r.status);
      expect(statuses.filter((s) => s === 200)).toHaveLength(10);
      expect(statuses.filter((s) => s === 429)).toHaveLength(20);
      const refused = answers.find((r) => r.status === 429)!;
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('rate_limited');
      expect(Number(refused.headers.get('Retry-After'))).toBeGreaterThanOrEqual(1);
      expect(refused.headers.get('RateLimit')).toMatch(/^"requests";r=0;t=\d+$/);
      expect((await get(h.bob)).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});
