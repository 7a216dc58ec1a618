/**
 * The same contract suites against the AWS adapters, talking to stand-ins this file starts on
 * 127.0.0.1 (random free ports) and stops: s3rver for S3 and local-aws-sqs for SQS.
 *
 * s3rver does NOT enforce If-None-Match / If-Match, so conditional-write *semantics* are proven on
 * the local adapter (local.test.ts); here the S3 adapter's *request shape* is asserted instead
 * (tests marked [request shape]), plus its mapping of S3's 412/409 answers (marked [canned response]).
 */
import { markPending } from '../../../shared/pending.ts';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CreateQueueCommand, GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { S3BlobStore } from '../../../shared/adapters/aws/s3-blobstore.ts';
import { SqsJobQueue } from '../../../shared/adapters/aws/sqs-queue.ts';
import { ClipagError, NonRetryableError, PreconditionFailedError, RetryableError, ValidationError } from '../../../shared/errors.ts';
import { blobStoreContract } from './blobstore.contract.ts';
import { close, httpDownload, httpUpload, makeTempDir, silentServer, slowProxy } from './helpers.ts';
import { s3ClientConfig, SDK_SOCKET_TIMEOUTS } from '../../../shared/adapters/stores.ts';
import { jobStoreContract } from './jobstore.contract.ts';
import { queueContract } from './queue.contract.ts';
import { RESEND_AFTER_MS } from '../../../functions/queued-jobs.ts';
import { newJobId } from '../../../shared/ids.ts';
import { BlobJobStore } from '../../../shared/jobstore.ts';
import { deletePrefix } from '../../../shared/prefix.ts';
import { GenerationSpec } from '../../../shared/schemas/generation.ts';
import { newJobRecord } from '../../../shared/schemas/job.ts';

const require = createRequire(import.meta.url);
// s3rver is CommonJS without types.
const S3rver = require('s3rver') as new (options: Record<string, unknown>) => {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
};

const REGION = 'us-east-1';
let s3Endpoint = '';
let sqsEndpoint = '';
let s3rver: InstanceType<typeof S3rver>;
let sqsServer: Server;
let cleanupS3Dir: () => Promise<void>;
let counter = 0;
const unique = (label: string) => `${label}-${process.pid}-${Date.now().toString(36)}-${counter++}`;

beforeAll(async () => {
  const { dir, cleanup } = await makeTempDir('s3rver');
  cleanupS3Dir = cleanup;
  s3rver = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir });
  const address = await s3rver.run();
  s3Endpoint = `http://127.0.0.1:${address.port}`;
  sqsServer = await createSqsServer({ port: 0, hostname: '127.0.0.1', emulateQueueCreationLifecycle: false });
  sqsEndpoint = `http://127.0.0.1:${(sqsServer.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await s3rver?.close();
  if (sqsServer) await close(sqsServer);
  await cleanupS3Dir?.();
});

function s3Client(extra: Partial<ConstructorParameters<typeof S3Client>[0]> = {}): S3Client {
  return new S3Client({
    region: REGION,
    endpoint: s3Endpoint,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    forcePathStyle: true,
    // Without these the SDK sends aws-chunked bodies with trailing checksums that s3rver stores verbatim.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...extra,
  });
}

function sqsClient(extra: Partial<ConstructorParameters<typeof SQSClient>[0]> = {}): SQSClient {
  return new SQSClient({ region: REGION, endpoint: sqsEndpoint, credentials: { accessKeyId: 'x', secretAccessKey: 'x' }, ...extra });
}

/** A fresh bucket per test: isolation without deleting anything. */
async function freshS3Store(client = s3Client()): Promise<S3BlobStore> {
  const bucket = unique('b').toLowerCase().slice(0, 63);
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return new S3BlobStore({ client, bucket });
}

const MAX_RECEIVES = 3;

/** Fresh queues per test (PurgeQueue takes 60 s on local-aws-sqs), with a redrive policy to a fresh DLQ. */
async function freshSqsQueue(): Promise<SqsJobQueue> {
  const client = sqsClient();
  const dlq = await client.send(new CreateQueueCommand({ QueueName: unique('dlq') }));
  const dlqArn = (
    await client.send(new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl, AttributeNames: ['QueueArn'] }))
  ).Attributes!.QueueArn!;
  const main = await client.send(
    new CreateQueueCommand({
      QueueName: unique('jobs'),
      Attributes: {
        VisibilityTimeout: '30',
        RedrivePolicy: JSON.stringify({ maxReceiveCount: MAX_RECEIVES, deadLetterTargetArn: dlqArn }),
      },
    }),
  );
  return new SqsJobQueue({ client, queueUrl: main.QueueUrl!, deadLetterQueueUrl: dlq.QueueUrl! });
}

blobStoreContract('S3 adapter on s3rver', async () => ({ store: await freshS3Store(), download: httpDownload, upload: httpUpload }), {
  enforcesConditionalWrites: false,
  truncatedListing: false,
  verifiesSignatures: false,
});
queueContract('SQS adapter on local-aws-sqs', async () => ({ queue: await freshSqsQueue(), maxReceives: MAX_RECEIVES }));
jobStoreContract('on the S3 adapter (s3rver)', () => freshS3Store(), { enforcesConditionalWrites: false, truncatedListing: false });

describe('S3 adapter specifics', () => {
  /** Captures the headers of every request the client sends, after signing. */
  function capturingClient() {
    const client = s3Client();
    const sent: Array<{ method: string; path: string; headers: Record<string, string> }> = [];
    client.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { method: string; path: string; headers: Record<string, string> };
        sent.push({ method: request.method, path: request.path, headers: { ...request.headers } });
        return next(args);
      },
      { step: 'finalizeRequest', priority: 'low', name: 'captureHeaders' },
    );
    return { client, sent };
  }

  it('[request shape] putIfAbsent sends If-None-Match: *', async () => {
    const { client, sent } = capturingClient();
    const store = await freshS3Store(client);
    await store.putIfAbsent('jobs/o/j.json', Buffer.from('{}'));
    const put = sent.find((r) => r.method === 'PUT' && r.path.endsWith('/jobs/o/j.json'));
    expect(put?.headers['if-none-match']).toBe('*');
    expect(put?.headers['if-match']).toBeUndefined();
  });

  it('[request shape] replaceIfMatch sends If-Match with the etag it was given', async () => {
    const { client, sent } = capturingClient();
    const store = await freshS3Store(client);
    const { etag } = await store.put('jobs/o/j.json', Buffer.from('{"a":1}'));
    expect(etag).toMatch(/^"[0-9a-f]{32}"$/);
    await store.replaceIfMatch('jobs/o/j.json', Buffer.from('{"a":2}'), etag);
    const puts = sent.filter((r) => r.method === 'PUT' && r.path.endsWith('/jobs/o/j.json'));
    expect(puts).toHaveLength(2);
    expect(puts[0]!.headers['if-match']).toBeUndefined();
    expect(puts[1]!.headers['if-match']).toBe(etag);
  });

  it('[request shape] a put without a content type is stored as application/octet-stream (the SDK sends it), so head always has one', async () => {
    // What the local adapter should match (review finding 9): real S3 stores the header the SDK sends,
    // and falls back to binary/octet-stream only when a request carries none.
    const { client, sent } = capturingClient();
    const store = await freshS3Store(client);
    await store.put('a/b.bin', Buffer.from('x'));
    expect(sent.find((r) => r.method === 'PUT' && r.path.endsWith('/a/b.bin'))?.headers['content-type']).toBe('application/octet-stream');
    expect((await store.head('a/b.bin'))?.contentType).toBe('application/octet-stream');
  });

  /** S3 answers a lost conditional write with 412 (or 409 when racing another conditional write).
   * s3rver never produces these, so the client is given a canned HTTP response. */
  function clientAnswering(status: number, code: string) {
    return s3Client({
      requestHandler: {
        handle: async () => ({
          // Shaped like @smithy/protocol-http's HttpResponse (the SDK duck-types it).
          response: {
            statusCode: status,
            reason: code,
            headers: { 'content-type': 'application/xml' },
            body: Readable.from([Buffer.from(`<?xml version="1.0"?><Error><Code>${code}</Code><Message>m</Message></Error>`)]),
          },
        }),
      } as never,
      maxAttempts: 1,
    });
  }

  it('[canned response] a 412 PreconditionFailed from S3 becomes PreconditionFailedError', async () => {
    const store = new S3BlobStore({ client: clientAnswering(412, 'PreconditionFailed'), bucket: 'b' });
    await expect(store.putIfAbsent('k', Buffer.from('x'))).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.replaceIfMatch('k', Buffer.from('x'), '"e"')).rejects.toBeInstanceOf(PreconditionFailedError);
  });

  it('[no answer] a visibility extend that hangs fails within a quarter of the new visibility (1 s at least), so the heartbeat retries in time', async () => {
    const hanging = { send: (_cmd: unknown, opts?: { abortSignal?: AbortSignal }) => new Promise((_, reject) => opts?.abortSignal?.addEventListener('abort', () => reject(Object.assign(new Error('Request aborted'), { name: 'AbortError' })))) };
    const queue = new SqsJobQueue({ client: hanging as never, queueUrl: 'https://sqs.test/q' });
    await expect(queue.extendVisibility('receipt', 8)).rejects.toBeInstanceOf(RetryableError);
  }, 10_000);

  it('[canned response] a 409 ConditionalRequestConflict from S3 becomes PreconditionFailedError', async () => {
    const store = new S3BlobStore({ client: clientAnswering(409, 'ConditionalRequestConflict'), bucket: 'b' });
    await expect(store.putIfAbsent('k', Buffer.from('x'))).rejects.toBeInstanceOf(PreconditionFailedError);
  });

  it('[canned response] S3\'s transient answers (503 SlowDown, 502, 504, 400 RequestTimeout) become RetryableError; a 403 or 501 does not', async () => {
    for (const [status, code] of [[503, 'SlowDown'], [502, 'BadGateway'], [504, 'GatewayTimeout'], [400, 'RequestTimeout']] as const) {
      const store = new S3BlobStore({ client: clientAnswering(status, code), bucket: 'b' });
      await expect(store.put('k', Buffer.from('x')), `${status} ${code}`).rejects.toBeInstanceOf(RetryableError);
    }
    for (const [status, code] of [[403, 'AccessDenied'], [501, 'NotImplemented']] as const) {
      const store = new S3BlobStore({ client: clientAnswering(status, code), bucket: 'b' });
      await expect(store.put('k', Buffer.from('x')), `${status} ${code}`).rejects.toBeInstanceOf(NonRetryableError);
    }
  });

  it('a bucket that does not exist is a configuration error naming the bucket (NonRetryableError config_error), never an absent object', async () => {
    const bucket = unique('never-created').toLowerCase().slice(0, 63);
    const store = new S3BlobStore({ client: s3Client({ maxAttempts: 1 }), bucket });
    const configError = (what: string) => async (call: Promise<unknown>) => {
      const error = await call.then(() => undefined, (e: unknown) => e);
      expect(error, what).toBeInstanceOf(NonRetryableError);
      expect((error as NonRetryableError).code, what).toBe('config_error');
      expect((error as Error).message, what).toContain(bucket);
    };
    // get read it as "no such object": every API key then failed as 401, every job as 404.
    await configError('get')(store.get('jobs/o/j.json'));
    await configError('JobStore.get')(new BlobJobStore(store).get('acct_x', newJobId()));
    await configError('list')(store.list('jobs/o/'));
    await configError('put')(store.put('jobs/o/j.json', Buffer.from('{}')));
    await configError('putIfAbsent')(store.putIfAbsent('jobs/o/j.json', Buffer.from('{}')));
    await configError('delete')(store.delete('jobs/o/j.json'));
    // Not a lost conditional write (412), which callers answer by re-reading.
    await configError('replaceIfMatch')(store.replaceIfMatch('jobs/o/j.json', Buffer.from('{}'), '"e"'));
    // A HEAD's 404 has no body, so S3 cannot say which is missing: it stays "absent" (see head()).
    expect(await store.head('jobs/o/j.json')).toBeNull();
  });

  it('[canned response] a 404 that is not a missing object\'s answer, from list, put or delete, is a NonRetryableError, not a raw SDK error; NoSuchKey and a bare 404 HEAD still read as absent', async () => {
    // S3 sends no such 404 to these calls for a bucket that exists, and s3rver cannot be made to: a canned answer.
    for (const code of ['NoSuchKey', 'NoSuchUpload']) {
      const store = new S3BlobStore({ client: clientAnswering(404, code), bucket: 'b' });
      for (const [what, call] of [
        ['list', () => store.list('jobs/')],
        ['put', () => store.put('k', Buffer.from('x'))],
        ['delete', () => store.delete('k')],
      ] as const) {
        const error = await call().then(() => undefined, (e: unknown) => e);
        expect(error, `${what} ${code}`).toBeInstanceOf(NonRetryableError);
      }
    }
    const missing = new S3BlobStore({ client: clientAnswering(404, 'NoSuchKey'), bucket: 'b' });
    expect(await missing.get('k')).toBeNull();
    expect(await missing.head('k')).toBeNull();
    await expect(missing.replaceIfMatch('k', Buffer.from('x'), '"e"')).rejects.toBeInstanceOf(PreconditionFailedError);
    // Any other 404 on a GET is not "absent" either.
    await expect(new S3BlobStore({ client: clientAnswering(404, 'NoSuchUpload'), bucket: 'b' }).get('k')).rejects.toBeInstanceOf(NonRetryableError);
  });

  it('a signed PUT with a declared size signs Content-Length, so the limit is enforced by S3', async () => {
    const store = await freshS3Store();
    const signed = await store.signedPutUrl('uploads/sized.png', {
      contentType: 'image/png',
      maxBytes: 100,
      contentLength: 5,
      expiresSec: 60,
    });
    expect(signed.enforcesMaxBytes).toBe(true);
    expect(new URL(signed.url).searchParams.get('X-Amz-SignedHeaders')).toContain('content-length');
    expect(signed.headers).toEqual({ 'content-type': 'image/png', 'content-length': '5' });
    expect((await httpUpload(signed.url, { 'content-type': 'image/png' }, Buffer.from('12345'))).status).toBe(200);
    expect((await store.head('uploads/sized.png'))!.size).toBe(5);
  });

  it('a signed PUT from the client AWS mode builds (real S3: no endpoint) carries no checksum of an empty body, which S3 would hold the upload to', async () => {
    const client = new S3Client({ ...s3ClientConfig({ region: REGION }), credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } });
    const store = new S3BlobStore({ client, bucket: 'clipag-bucket' });
    const signed = await store.signedPutUrl('uploads/o/u1', { contentType: 'image/png', maxBytes: 4096, contentLength: 1234, expiresSec: 60 });
    const params = [...new URL(signed.url).searchParams.keys()].map((k) => k.toLowerCase());
    expect(params.filter((k) => k.includes('checksum'))).toEqual([]);
    expect(new URL(signed.url).host).toBe(`clipag-bucket.s3.${REGION}.amazonaws.com`);
    // What the SDK's default would sign (the regression this guards against).
    const defaults = new S3BlobStore({ client: new S3Client({ region: REGION, credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } }), bucket: 'clipag-bucket' });
    const unsafe = await defaults.signedPutUrl('uploads/o/u1', { contentType: 'image/png', maxBytes: 4096, contentLength: 1234, expiresSec: 60 });
    expect([...new URL(unsafe.url).searchParams.keys()].some((k) => k.toLowerCase().includes('checksum'))).toBe(true);
  });

  it('links last no longer than the temporary credentials that sign them: expiring ones are refreshed first, and a link is capped (and says so) by what the fresh ones cover', async () => {
    // Role credentials as ECS and Lambda hand them out: with an expiration. The first set has 10 minutes left.
    const lefts = [600, 7200, 900];
    const calls: Array<{ forceRefresh?: boolean } | undefined> = [];
    const credentials = async (options?: { forceRefresh?: boolean }) => {
      calls.push(options);
      const left = lefts[Math.min(calls.length - 1, lefts.length - 1)]!;
      return { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER', expiration: new Date(Date.now() + left * 1000) };
    };
    const store = await freshS3Store(s3Client({ credentials }));
    // An hour's link on a set with 10 minutes left: refreshed (2 h), the hour kept.
    expect(await store.linkLifeSec(3600)).toBe(3600);
    expect(calls.some((o) => o?.forceRefresh === true)).toBe(true);
    const url = new URL(await store.signedGetUrl('k', 3600));
    expect(url.searchParams.get('X-Amz-Expires')).toBe('3600');
    // Where a refresh also has only 15 minutes left, links are capped below what it covers; a PUT's expiresAt says so.
    calls.length = 0;
    lefts.splice(0, lefts.length, 900);
    const short = await freshS3Store(s3Client({ credentials }));
    const capped = await short.linkLifeSec(3600);
    expect(capped).toBeGreaterThan(780);
    expect(capped).toBeLessThanOrEqual(840);
    const put = await short.signedPutUrl('up', { contentType: 'image/png', maxBytes: 100, contentLength: 10, expiresSec: 3600 });
    expect(put.expiresAt.getTime() - Date.now()).toBeLessThanOrEqual(841_000);
    expect(Number(new URL(put.url).searchParams.get('X-Amz-Expires'))).toBeLessThanOrEqual(840);
    // A set a refresh returned that still cannot cover the link is not refreshed again on every view.
    const forcedBefore = calls.filter((o) => o?.forceRefresh === true).length;
    for (let i = 0; i < 5; i++) await short.linkLifeSec(3600);
    expect(calls.filter((o) => o?.forceRefresh === true).length).toBe(forcedBefore);
  });

  it('a create-only signed PUT signs If-None-Match and names it among the headers to send (which S3 then enforces; s3rver ignores it, so the refusals are tested on the local store)', async () => {
    const store = await freshS3Store();
    const signed = await store.signedPutUrl('uploads/once.png', { contentType: 'image/png', maxBytes: 100, contentLength: 5, expiresSec: 60, createOnly: true });
    expect(new URL(signed.url).searchParams.get('X-Amz-SignedHeaders')!.split(';')).toEqual(expect.arrayContaining(['content-length', 'content-type', 'if-none-match']));
    expect(signed.headers['if-none-match']).toBe('*');
    const plain = await store.signedPutUrl('uploads/twice.png', { contentType: 'image/png', maxBytes: 100, contentLength: 5, expiresSec: 60 });
    expect(new URL(plain.url).searchParams.get('X-Amz-SignedHeaders')).not.toContain('if-none-match');
  });

  it('a signed PUT without a declared size cannot bound the size (enforcesMaxBytes is false)', async () => {
    const store = await freshS3Store();
    const signed = await store.signedPutUrl('uploads/unsized.png', { contentType: 'image/png', maxBytes: 4, expiresSec: 60 });
    expect(signed.enforcesMaxBytes).toBe(false);
    expect(new URL(signed.url).searchParams.get('X-Amz-SignedHeaders')).not.toContain('content-length');
  });

  it('[request shape] list sends MaxKeys and StartAfter, and a truncated page yields the last key as cursor', async () => {
    // s3rver answers 500 to any truncated listing (DES continuation token vs OpenSSL 3), so the
    // paging request is asserted here and the truncated answer is a canned ListObjectsV2 response.
    const { client, sent } = capturingClient();
    const store = await freshS3Store(client);
    await store.list('jobs/o/', { limit: 2, cursor: 'jobs/o/a.json' });
    const listing = sent.find((r) => r.method === 'GET' && r.path.endsWith('/'))!;
    expect(listing).toBeDefined();

    const canned = s3Client({
      requestHandler: {
        handle: async (request: { query: Record<string, string> }) => {
          expect(request.query).toMatchObject({ 'list-type': '2', 'max-keys': '2', 'start-after': 'jobs/o/a.json', prefix: 'jobs/o/' });
          const xml = `<?xml version="1.0"?><ListBucketResult><Name>b</Name><Prefix>jobs/o/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
            <Contents><Key>jobs/o/b.json</Key><ETag>"e1"</ETag><Size>3</Size><LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents>
            <Contents><Key>jobs/o/c.json</Key><ETag>"e2"</ETag><Size>4</Size><LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents>
            <NextContinuationToken>opaque</NextContinuationToken></ListBucketResult>`;
          return { response: { statusCode: 200, headers: { 'content-type': 'application/xml' }, body: Readable.from([Buffer.from(xml)]) } };
        },
      } as never,
      maxAttempts: 1,
    });
    const page = await new S3BlobStore({ client: canned, bucket: 'b' }).list('jobs/o/', { limit: 2, cursor: 'jobs/o/a.json' });
    expect(page.items.map((i) => [i.key, i.etag, i.size])).toEqual([
      ['jobs/o/b.json', '"e1"', 3],
      ['jobs/o/c.json', '"e2"', 4],
    ]);
    expect(page.cursor).toBe('jobs/o/c.json');
  });

  it('[request shape] deleteMany sends one DeleteObjects (quiet, with the checksum S3 requires) per 1000 keys, and deletePrefix one per listed page', async () => {
    const { client, sent } = capturingClient();
    const store = await freshS3Store(client);
    // Keys in no folder: s3rver deletes a DeleteObjects' keys at once, and two that empty a folder together
    // race on removing it (a 500 the SDK retries). Real S3 has no folders.
    const keys = Array.from({ length: 12 }, (_, i) => `frame-${i}.png`);
    for (const key of keys) await store.put(key, Buffer.from('x'));
    await store.put('other', Buffer.from('x'));
    sent.length = 0;
    await deletePrefix(store, 'frame-');
    expect(sent.map((r) => r.method)).toEqual(['GET', 'POST']); // one LIST, one DeleteObjects: not 12 DELETEs
    expect(Object.keys(sent[1]!.headers).some((h) => /^(content-md5|x-amz-checksum-)/i.test(h))).toBe(true);
    expect((await store.list('')).items.map((i) => i.key)).toEqual(['other']);

    // Over 1000 keys: batches of 1000, every key named once.
    const bodies: string[] = [];
    const canned = s3Client({
      requestHandler: {
        handle: async (request: { method: string; query: Record<string, string | null>; body: string | Uint8Array }) => {
          expect(request.method).toBe('POST');
          expect(Object.keys(request.query)).toContain('delete');
          bodies.push(Buffer.from(request.body).toString('utf8'));
          const xml = '<?xml version="1.0"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>';
          return { response: { statusCode: 200, headers: { 'content-type': 'application/xml' }, body: Readable.from([Buffer.from(xml)]) } };
        },
      } as never,
      maxAttempts: 1,
    });
    const many = Array.from({ length: 2345 }, (_, i) => `outputs/o/j/${i}.png`);
    await new S3BlobStore({ client: canned, bucket: 'b' }).deleteMany(many);
    const named = bodies.map((b) => [...b.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1]));
    expect(named.map((n) => n.length)).toEqual([1000, 1000, 345]);
    expect(named.flat()).toEqual(many);
    expect(bodies.every((b) => b.includes('<Quiet>true</Quiet>'))).toBe(true);
  });

  it('[canned response] a DeleteObjects answered 200 with per-key Errors throws (never a silent partial delete): RetryableError when all are transient, NonRetryableError otherwise; the other batches are still sent', async () => {
    function answering(errors: Array<[string, string]>) {
      let requests = 0;
      const client = s3Client({
        requestHandler: {
          handle: async () => {
            // Only the first batch fails some keys.
            const failed = requests++ === 0 ? errors.map(([key, code]) => `<Error><Key>${key}</Key><Code>${code}</Code><Message>m ${code}</Message></Error>`).join('') : '';
            const xml = `<?xml version="1.0"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${failed}</DeleteResult>`;
            return { response: { statusCode: 200, headers: { 'content-type': 'application/xml' }, body: Readable.from([Buffer.from(xml)]) } };
          },
        } as never,
        maxAttempts: 1,
      });
      return { store: new S3BlobStore({ client, bucket: 'b' }), requests: () => requests };
    }
    const keys = Array.from({ length: 1500 }, (_, i) => `outputs/o/j/${i}.png`);
    const denied = answering([['outputs/o/j/3.png', 'AccessDenied'], ['outputs/o/j/4.png', 'InternalError']]);
    const error = await denied.store.deleteMany(keys).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(NonRetryableError);
    expect((error as Error).message).toContain('2 of 1500');
    expect((error as Error).message).toContain('outputs/o/j/3.png (AccessDenied');
    expect(denied.requests()).toBe(2);
    const busy = answering([['outputs/o/j/7.png', 'SlowDown'], ['outputs/o/j/8.png', 'InternalError']]);
    await expect(busy.store.deleteMany(keys)).rejects.toBeInstanceOf(RetryableError);
    // Through deletePrefix, as DELETE /v1/generations/{id} calls it: the failure reaches the caller.
    const listing = s3Client({
      requestHandler: {
        handle: async (request: { method: string }) => {
          const xml =
            request.method === 'GET'
              ? '<?xml version="1.0"?><ListBucketResult><Name>b</Name><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated><Contents><Key>outputs/o/j/0.png</Key><ETag>"e"</ETag><Size>1</Size><LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents></ListBucketResult>'
              : '<?xml version="1.0"?><DeleteResult><Error><Key>outputs/o/j/0.png</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error></DeleteResult>';
          return { response: { statusCode: 200, headers: { 'content-type': 'application/xml' }, body: Readable.from([Buffer.from(xml)]) } };
        },
      } as never,
      maxAttempts: 1,
    });
    await expect(deletePrefix(new S3BlobStore({ client: listing, bucket: 'b' }), 'outputs/o/j/')).rejects.toBeInstanceOf(NonRetryableError);
  });
});

describe('SQS adapter: error mapping', () => {
  /**
   * A client whose every request gets this SQS (AWS JSON protocol) error. local-aws-sqs never sends
   * throttling, limit or most InvalidParameterValue answers, and the real service cannot be reached
   * here: canned HTTP responses, shaped as SQS sends them. `sent` counts the requests that went out.
   */
  function sqsAnswering(status: number, code: string, message = 'm') {
    const sent: unknown[] = [];
    const client = new SQSClient({
      region: REGION,
      credentials: { accessKeyId: 'x', secretAccessKey: 'x' },
      maxAttempts: 1,
      requestHandler: {
        handle: async (request: unknown) => {
          sent.push(request);
          return {
            response: {
              statusCode: status,
              headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-query-error': `${code};Sender` },
              body: Readable.from([Buffer.from(JSON.stringify({ __type: `com.amazonaws.sqs#${code}`, message }))]),
            },
          };
        },
      } as never,
    });
    return { queue: new SqsJobQueue({ client, queueUrl: 'https://sqs.us-east-1.amazonaws.com/000000000000/jobs' }), sent };
  }

  async function errorOf(call: Promise<unknown>): Promise<unknown> {
    return call.then(() => undefined, (e: unknown) => e);
  }

  it('[canned response] throttling and limit answers (RequestThrottled, KmsThrottled, OverLimit, ThrottlingException) are RetryableError on every call, not a permanent refusal', async () => {
    for (const [status, code] of [[400, 'RequestThrottled'], [403, 'RequestThrottled'], [400, 'KmsThrottled'], [403, 'OverLimit'], [400, 'ThrottlingException']] as const) {
      const { queue } = sqsAnswering(status, code);
      for (const [what, call] of [
        ['receive', () => queue.receive({ max: 1 })],
        ['send', () => queue.send('{"v":1}')],
        ['ack', () => queue.ack('receipt')],
        ['extendVisibility', () => queue.extendVisibility('receipt', 30)],
      ] as const) {
        const error = await errorOf(call());
        expect(error, `${status} ${code} ${what}`).toBeInstanceOf(RetryableError);
      }
    }
    // A refusal that lasts stays permanent.
    expect(await errorOf(sqsAnswering(400, 'QueueDoesNotExist').queue.receive())).toBeInstanceOf(NonRetryableError);
  });

  it('[canned response] InvalidParameterValue is PreconditionFailedError only when a receipt call is told the delivery is over; any other is NonRetryableError', async () => {
    const receiptGone = [
      'Value AQEBx for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.',
      'The receipt handle has expired.',
    ];
    for (const message of receiptGone) {
      const { queue } = sqsAnswering(400, 'InvalidParameterValue', message);
      expect(await errorOf(queue.extendVisibility('receipt', 30)), `extend: ${message}`).toBeInstanceOf(PreconditionFailedError);
      expect(await errorOf(queue.ack('receipt')), `ack: ${message}`).toBeInstanceOf(PreconditionFailedError);
      expect(await errorOf(queue.release('receipt')), `release: ${message}`).toBeInstanceOf(PreconditionFailedError);
    }
    expect(await errorOf(sqsAnswering(400, 'MessageNotInflight').queue.extendVisibility('receipt', 30))).toBeInstanceOf(PreconditionFailedError);
    expect(await errorOf(sqsAnswering(400, 'ReceiptHandleIsInvalid').queue.ack('receipt'))).toBeInstanceOf(PreconditionFailedError);

    // Not about the receipt: a lease past SQS's 12-hour total is no lost lease (the heartbeat must not
    // abort the run as if another worker held the job), and a send is not the API caller's 412.
    const totalCap = sqsAnswering(400, 'InvalidParameterValue', 'Value 900 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]');
    expect(await errorOf(totalCap.queue.extendVisibility('receipt', 900))).toBeInstanceOf(NonRetryableError);
    const badParameter = sqsAnswering(400, 'InvalidParameterValue', 'Value 0 for parameter DelaySeconds is invalid. Reason: queue is FIFO.');
    for (const [what, call] of [
      ['send', () => badParameter.queue.send('{"v":1}', { delaySec: 0 })],
      ['receive', () => badParameter.queue.receive()],
    ] as const) {
      const error = await errorOf(call());
      expect(error, what).toBeInstanceOf(NonRetryableError);
    }
  });

  it('a delay or visibility outside SQS\'s range is the caller\'s ValidationError before any request, as on the local queue', async () => {
    const { queue, sent } = sqsAnswering(400, 'InvalidParameterValue', 'Value 901 for parameter DelaySeconds is invalid.');
    for (const [what, call] of [
      ['send delaySec 901', () => queue.send('{"v":1}', { delaySec: 901 })],
      ['send delaySec 1.5', () => queue.send('{"v":1}', { delaySec: 1.5 })],
      ['receive visibilitySec -1', () => queue.receive({ visibilitySec: -1 })],
      ['extendVisibility 43201', () => queue.extendVisibility('receipt', 43_201)],
    ] as const) {
      const error = await errorOf(call());
      expect(error, what).toBeInstanceOf(ValidationError);
    }
    expect(sent).toHaveLength(0);
  });

  it('[canned response] nothing the SQS adapter throws is a raw SDK error', async () => {
    const { queue } = sqsAnswering(400, 'UnsupportedOperation');
    for (const call of [() => queue.send('{"v":1}'), () => queue.receive(), () => queue.ack('r'), () => queue.release('r')]) {
      expect(await errorOf(call())).toBeInstanceOf(ClipagError);
    }
  });
});

describe('per-call deadlines: a hung call fails in time as RetryableError; a transfer that keeps moving is not cut off', () => {
  // Deadlines shortened for the test (the defaults: 5 s per request, bodies at 256 KiB/s); the SDK
  // clients carry the production socket limits (shared/adapters/stores.ts), which alone would hold
  // each of these calls for a minute or more.
  const CALL_MS = 300;

  /** How long `call` took, and what it threw. */
  async function timed(call: () => Promise<unknown>): Promise<{ ms: number; error: unknown }> {
    const t0 = Date.now();
    const error = await call().then(() => undefined, (e: unknown) => e);
    return { ms: Date.now() - t0, error };
  }

  function expectDeadline(result: { ms: number; error: unknown }, deadlineMs: number, what: string) {
    expect(result.error, what).toBeInstanceOf(RetryableError);
    expect((result.error as Error).message, what).toMatch(/did not finish within its deadline/);
    expect(result.ms, what).toBeGreaterThanOrEqual(deadlineMs - 20);
    expect(result.ms, what).toBeLessThan(deadlineMs + 1500);
  }

  it('[no answer] every SQS call fails within its deadline; a receive gets its long poll on top, and a real long poll on an empty queue is not cut short', async () => {
    const silent = await silentServer();
    try {
      const queue = new SqsJobQueue({ client: sqsClient({ ...SDK_SOCKET_TIMEOUTS, endpoint: silent.endpoint }), queueUrl: `${silent.endpoint}/000000000000/jobs`, deadlines: { callMs: CALL_MS } });
      const calls: Array<[string, () => Promise<unknown>, number]> = [
        ['send', () => queue.send('{}'), CALL_MS],
        ['ack', () => queue.ack('receipt'), CALL_MS],
        ['release', () => queue.release('receipt'), CALL_MS],
        ['extendVisibility (a quarter of 4 s)', () => queue.extendVisibility('receipt', 4), 1000],
        ['receive (a 1 s long poll)', () => queue.receive({ waitSec: 1 }), 1000 + CALL_MS],
      ];
      const results = await Promise.all(calls.map(([, call]) => timed(call)));
      calls.forEach(([what, , deadlineMs], i) => expectDeadline(results[i]!, deadlineMs, what));
    } finally {
      await silent.close();
    }
    const queueUrl = (await sqsClient().send(new CreateQueueCommand({ QueueName: unique('poll') }))).QueueUrl!;
    const queue = new SqsJobQueue({ client: sqsClient(SDK_SOCKET_TIMEOUTS), queueUrl, deadlines: { callMs: CALL_MS } });
    const poll = await timed(async () => expect(await queue.receive({ waitSec: 2 })).toEqual([]));
    expect(poll.error).toBeUndefined();
    expect(poll.ms).toBeGreaterThanOrEqual(1900);
  }, 20_000);

  it('[no answer] every S3 call fails within its deadline; a PUT\'s grows with its body', async () => {
    const silent = await silentServer();
    try {
      const store = new S3BlobStore({ client: s3Client({ ...SDK_SOCKET_TIMEOUTS, endpoint: silent.endpoint, maxAttempts: 1 }), bucket: 'b', deadlines: { callMs: CALL_MS, minBytesPerSec: 1024 * 1024 } });
      const small = Buffer.from('{}');
      const large = new Uint8Array(1024 * 1024); // 1 s at the slowest rate taken for a live upload
      const calls: Array<[string, () => Promise<unknown>, number]> = [
        ['get', () => store.get('jobs/o/j.json'), CALL_MS],
        ['head', () => store.head('jobs/o/j.json'), CALL_MS],
        ['list', () => store.list('jobs/o/'), CALL_MS],
        ['delete', () => store.delete('jobs/o/j.json'), CALL_MS],
        ['put', () => store.put('jobs/o/j.json', small), CALL_MS + 1],
        ['putIfAbsent', () => store.putIfAbsent('jobs/o/j.json', small), CALL_MS + 1],
        ['replaceIfMatch', () => store.replaceIfMatch('jobs/o/j.json', small, '"e"'), CALL_MS + 1],
        ['put of 1 MiB', () => store.put('models/m/big.onnx', large), CALL_MS + 1000],
      ];
      const results = await Promise.all(calls.map(([, call]) => timed(call)));
      calls.forEach(([what, , deadlineMs], i) => expectDeadline(results[i]!, deadlineMs, what));
    } finally {
      await silent.close();
    }
  }, 20_000);

  it('[slow body] a GET whose body keeps arriving is read whole long past a request\'s deadline; one that stalls fails within its size\'s allowance', async () => {
    const bucket = unique('slow').toLowerCase().slice(0, 63);
    await s3Client().send(new CreateBucketCommand({ Bucket: bucket }));
    const object = new Uint8Array(1024 * 1024).map((_, i) => i % 251);
    await new S3BlobStore({ client: s3Client(), bucket }).put('models/m/big.onnx', object);
    const deadlines = { callMs: CALL_MS, minBytesPerSec: 512 * 1024 }; // the body's allowance: 300 ms + 2 s
    const through = (endpoint: string) => new S3BlobStore({ client: s3Client({ ...SDK_SOCKET_TIMEOUTS, endpoint, maxAttempts: 1 }), bucket, deadlines });

    // About 1.3 MB/s: the whole object takes about 0.8 s, well past the 300 ms a request gets.
    const slow = await slowProxy(s3Endpoint, { chunkBytes: 64 * 1024, everyMs: 50 });
    try {
      let got: Uint8Array | undefined;
      const read = await timed(async () => (got = (await through(slow.endpoint).get('models/m/big.onnx'))!.body));
      expect(read.error).toBeUndefined();
      expect(read.ms).toBeGreaterThan(CALL_MS * 2);
      expect(Buffer.compare(got!, object)).toBe(0); // whole, byte for byte
    } finally {
      await slow.close();
    }

    // The headers and a quarter of the body, then nothing on a connection that stays open.
    const stalled = await slowProxy(s3Endpoint, { chunkBytes: 64 * 1024, everyMs: 10, stopAfterBytes: 256 * 1024 });
    try {
      expectDeadline(await timed(() => through(stalled.endpoint).get('models/m/big.onnx')), CALL_MS + 2000, 'a stalled body');
    } finally {
      await stalled.close();
    }
  }, 20_000);
});

/** The sweep Lambda's environment, on the stand-ins. */
function sweepLambdaEnv(bucket: string, queueUrl: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    CLIPAG_MODE: 'aws',
    AWS_REGION: REGION,
    CLIPAG_BUCKET: bucket,
    CLIPAG_QUEUE_URL: queueUrl,
    CLIPAG_S3_ENDPOINT: s3Endpoint,
    CLIPAG_SQS_ENDPOINT: sqsEndpoint,
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    ...extra,
  };
}

describe('the queued-job sweep Lambda (functions/sweep-lambda.ts) on s3rver and local-aws-sqs', () => {
  it('sends the message of a job whose create landed but whose send was lost, once, and drops its marker', async () => {
    const bucket = unique('sweep').toLowerCase().slice(0, 63);
    await s3Client().send(new CreateBucketCommand({ Bucket: bucket }));
    const queueUrl = (await sqsClient().send(new CreateQueueCommand({ QueueName: unique('sweep') }))).QueueUrl!;
    const blobs = new S3BlobStore({ client: s3Client(), bucket });
    const queue = new SqsJobQueue({ client: sqsClient(), queueUrl });
    const jobs = new BlobJobStore(blobs);
    const createdAt = new Date(Date.now() - RESEND_AFTER_MS - 60_000);
    const id = newJobId(createdAt.getTime());
    await markPending(blobs, 'msg', 'acct_s', id);
    await jobs.create(newJobRecord({ id, owner: 'acct_s', spec: GenerationSpec.parse({ prompt: 'lost', model: 'toy' }), now: createdAt }));

    const env = sweepLambdaEnv(bucket, queueUrl);
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    try {
      const { handler } = await import('../../../functions/sweep-lambda.ts');
      expect(await handler()).toMatchObject({ scanned: 1, resent: 1, cleared: 1, errors: 0 });
      expect(await handler()).toMatchObject({ scanned: 0, resent: 0 }); // sent: the marker is gone
      // The line each sweep logs carries the wait the CDK's metric filter turns into the
      // oldest-queued-job alarm ({ $.msg = "queued-job sweep" }, value $.oldestQueuedSec).
      await markPending(blobs, 'active', 'acct_s', id);
      const lines: string[] = [];
      const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (lines.push(String(chunk)), true));
      try {
        expect(await handler()).toMatchObject({ scanned: 1, kept: 1 });
      } finally {
        write.mockRestore();
      }
      const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'queued-job sweep');
      expect(line).toMatchObject({ level: 'info', oldestQueuedSec: expect.any(Number) });
      // The Lambda's remaining time bounds the sweep: with less than its end margin left, no marker is
      // started (each is deferred to the next sweep) and the report still comes back.
      expect(await handler({}, { getRemainingTimeInMillis: () => 5_000 })).toMatchObject({ scanned: 1, kept: 1, deferred: 1 });
      expect(line!.oldestQueuedSec).toBeLessThan(60); // counted from the re-send, not the create 6 minutes ago
      const [message, ...rest] = await queue.receive({ max: 10, waitSec: 0 });
      expect(rest).toEqual([]);
      expect(JSON.parse(message!.body)).toEqual({ v: 1, job_id: id, owner: 'acct_s' });
      await queue.ack(message!.receipt);
      expect((await blobs.list('pending/msg/')).items).toEqual([]);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('with CLIPAG_RECORD_RETENTION_DAYS (ADR 0037) deletes a generation that ended that long ago, as DELETE does, and keeps its progress in the bucket', async () => {
    const bucket = unique('retain').toLowerCase().slice(0, 63);
    await s3Client().send(new CreateBucketCommand({ Bucket: bucket }));
    const queueUrl = (await sqsClient().send(new CreateQueueCommand({ QueueName: unique('retain') }))).QueueUrl!;
    const blobs = new S3BlobStore({ client: s3Client(), bucket });
    const jobs = new BlobJobStore(blobs);
    const DAY = 86_400_000;
    const made = async (daysAgo: number) => {
      const at = Date.now() - daysAgo * DAY;
      const id = newJobId(at - 60_000);
      const base = newJobRecord({ id, owner: 'acct_r', spec: GenerationSpec.parse({ prompt: 'a private prompt', model: 'toy' }), now: new Date(at - 60_000) });
      const key = `outputs/acct_r/${id}/0.png`;
      await blobs.put(key, new Uint8Array([1, 2, 3]), { contentType: 'image/png' });
      await jobs.create({ ...base, status: 'succeeded', attempts: 1, started_at: new Date(at - 5_000).toISOString(), finished_at: new Date(at).toISOString(), outputs: [{ key, width: 64, height: 64 }] });
      return id;
    };
    // One record only: s3rver fails a listing that is cut short (its continuation token uses a cipher
    // Node's OpenSSL 3 refuses), and the pass lists `jobs/` one key at a time to find the owners. The
    // younger ones the pass leaves are test/functions/record-retention.test.ts's.
    const old = await made(31);
    const env = sweepLambdaEnv(bucket, queueUrl, { CLIPAG_RECORD_RETENTION_DAYS: '30' });
    const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, env);
    vi.resetModules(); // the Lambda reads its settings at import
    const lines: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (lines.push(String(chunk)), true));
    try {
      const { handler } = await import('../../../functions/sweep-lambda.ts');
      await handler();
      const gone = (await jobs.get('acct_r', old))!;
      expect([gone.spec.prompt, typeof gone.deleted_at]).toEqual(['[deleted]', 'string']);
      expect((await blobs.list(`outputs/acct_r/${old}/`)).items).toEqual([]);
      expect(await blobs.head('retention/records.json')).not.toBeNull();
      expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'record retention')).toMatchObject({ level: 'info', records: 1, errors: 0 });
    } finally {
      write.mockRestore();
      vi.resetModules();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
