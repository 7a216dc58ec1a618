// The one place that turns a parsed Config into adapters: local (filesystem blobs, on-disk queue
// under the data folder) or AWS (S3, SQS). Every composition root (Lambda, the worker's main, the
// local server, the operator CLI) calls this, so the layout and the client settings cannot drift.
import { join, resolve } from 'node:path';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { BlobApiKeyStore } from '../apikeys.ts';
import type { AwsConfig, Config, LocalConfig } from '../config.ts';
import { BlobJobStore } from '../jobstore.ts';
import { ModelStore } from '../modelstore.ts';
import type { BlobStore, JobQueue, RateCounter } from '../ports.ts';
import { DynamoDbRateCounter, S3BlobStore, SqsJobQueue } from './aws/index.ts';
import { LocalBlobStore, LocalJobQueue, loadOrCreateSigningSecret } from './local/index.ts';
import { closeDataFolder } from './local/private.ts';

/** Corrupt documents skipped by listings / refused by key checks: one JSON line on stderr. */
const storeLog = {
  warn(msg: string, fields: Record<string, unknown> = {}): void {
    process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'warn', component: 'store', msg, ...fields })}\n`);
  },
};

export interface Stores {
  blobs: BlobStore;
  queue: JobQueue;
  jobs: BlobJobStore;
  keys: BlobApiKeyStore;
  models: ModelStore;
}

export interface LocalStores extends Stores {
  blobs: LocalBlobStore;
  queue: LocalJobQueue;
  /** HMAC secret of the signed `/blobs/*` links; the local server verifies with it. */
  signingSecret: string;
}

/** Where local mode keeps things under the data folder. */
export function localLayout(dataDir: string): { blobsDir: string; queueDir: string; modelCacheDir: string } {
  const root = resolve(dataDir);
  return { blobsDir: join(root, 'blobs'), queueDir: join(root, 'queue'), modelCacheDir: join(root, 'model-cache') };
}

export async function localStores(config: LocalConfig): Promise<LocalStores> {
  const signingSecret = config.signingSecret ?? (await loadOrCreateSigningSecret(resolve(config.dataDir)));
  // Every command that opens the local stores (models push, keys, usage, policy, dlq), not only serve,
  // closes a data folder an older version left readable by others (and says so, once, when it cannot).
  await closeDataFolder(config.dataDir, (message) => storeLog.warn(message));
  const layout = localLayout(config.dataDir);
  const blobs = new LocalBlobStore({ rootDir: layout.blobsDir, signingSecret, publicBaseUrl: config.publicBaseUrl ?? 'http://127.0.0.1:8787' });
  const queue = new LocalJobQueue({ dir: layout.queueDir, visibilitySec: config.visibilityTimeoutSec, maxReceives: config.maxReceives });
  return { blobs, queue, jobs: new BlobJobStore(blobs, { log: storeLog }), keys: new BlobApiKeyStore(blobs, { log: storeLog }), models: new ModelStore(blobs), signingSecret };
}

/**
 * Socket timeouts for the SDK clients, which have none by default, so that a connection that never
 * opens or a request that goes silent fails and is retried instead of hanging a worker that holds a
 * job (its heartbeat would keep the job leased for ever): 5 s to connect; 60 s from a request's start
 * to its response headers (`requestTimeout`: in this SDK a limit on the request, a PUT's upload
 * included, cleared when the headers arrive; a PUT raises it to its own deadline); and 60 s of
 * silence on the socket (`socketTimeout`, which also covers a body being read). Each adapter call
 * also has its own, mostly much shorter, deadline (aws/deadline.ts). All are above SQS's 20 s long
 * poll, and none caps a long download that keeps receiving.
 */
export const SDK_SOCKET_TIMEOUTS = { requestHandler: { connectionTimeout: 5_000, requestTimeout: 60_000, socketTimeout: 60_000, throwOnRequestTimeout: true } };

/**
 * The S3 client's settings. Request checksums only where an operation requires one, on real S3 too:
 * by default the SDK signs a CRC32 of the (empty) body into every presigned PUT URL
 * (`x-amz-checksum-crc32=AAAAAA==`), and S3 refuses the customer's upload through that link for its
 * checksum. Responses are still validated against S3's checksums, except on the stand-ins (s3rver),
 * which also store the checksum framing of streamed uploads unless checksums are only sent when required.
 */
export function s3ClientConfig(config: Pick<AwsConfig, 'region' | 's3Endpoint'>): S3ClientConfig {
  return {
    ...SDK_SOCKET_TIMEOUTS,
    region: config.region,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    ...(config.s3Endpoint ? { endpoint: config.s3Endpoint, forcePathStyle: true, responseChecksumValidation: 'WHEN_REQUIRED' as const } : {}),
  };
}

/** S3 and SQS adapters; the SDK clients are constructed here, once per process. */
export function awsStores(config: AwsConfig): Stores {
  const s3 = new S3Client(s3ClientConfig(config));
  const sqs = new SQSClient({ ...SDK_SOCKET_TIMEOUTS, region: config.region, ...(config.sqsEndpoint ? { endpoint: config.sqsEndpoint } : {}) });
  const blobs = new S3BlobStore({ client: s3, bucket: config.bucket });
  const queue = new SqsJobQueue({ client: sqs, queueUrl: config.queueUrl, ...(config.deadLetterQueueUrl ? { deadLetterQueueUrl: config.deadLetterQueueUrl } : {}) });
  return { blobs, queue, jobs: new BlobJobStore(blobs, { log: storeLog }), keys: new BlobApiKeyStore(blobs, { log: storeLog }), models: new ModelStore(blobs) };
}

/**
 * The API's per-account counts of requests, uploads and waits (ADR 0026): the DynamoDB table in AWS
 * mode, undefined when all three limits are off. Two SDK attempts at most: a request waits on this, and the limiter fails open.
 */
export function awsRateCounter(config: AwsConfig): RateCounter | undefined {
  if ((config.rateLimitPerMin === 0 && config.uploadsPerHour === 0 && config.maxWaits === 0) || config.rateTable === undefined) return undefined;
  const client = new DynamoDBClient({
    ...SDK_SOCKET_TIMEOUTS,
    maxAttempts: 2,
    region: config.region,
    ...(config.dynamodbEndpoint ? { endpoint: config.dynamodbEndpoint } : {}),
  });
  return new DynamoDbRateCounter({ client, table: config.rateTable });
}

export async function storesFor(config: Config): Promise<Stores> {
  return config.mode === 'aws' ? awsStores(config) : localStores(config);
}
