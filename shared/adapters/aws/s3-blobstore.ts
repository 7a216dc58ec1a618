import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3ServiceException,
  type S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { NonRetryableError, PreconditionFailedError, RetryableError, ValidationError } from '../../errors.ts';
import { assertValidKey, assertValidPrefix } from '../../keys.ts';
import type {
  BlobMeta,
  BlobObject,
  BlobStore,
  ListOptions,
  ListPage,
  PutOptions,
  SignedPut,
  SignedPutOptions,
} from '../../ports.ts';
import { checkExpiry, checkPutLimits } from '../signed-url-limits.ts';

export interface S3BlobStoreOptions {
  /** Built by the composition root (region, credentials, endpoint); never constructed here. */
  client: S3Client;
  bucket: string;
}

/**
 * BlobStore on S3. Conditional writes use S3's native conditional requests: `If-None-Match: *`
 * for putIfAbsent and `If-Match: <etag>` for replaceIfMatch; S3 answers 412 (precondition failed)
 * or 409 (a concurrent conditional write is in progress) and both become PreconditionFailedError.
 *
 * Signed PUT: a presigned PUT can only sign an *exact* Content-Length, not a range. When the caller
 * passes `contentLength` it is signed (S3 refuses any other length), giving a hard limit; otherwise
 * S3 accepts up to 5 GB and the caller must `head` the object after upload and reject oversized
 * ones (`enforcesMaxBytes: false`). A true size range needs a presigned POST policy
 * (`content-length-range`), which is a form upload rather than a PUT.
 */
export class S3BlobStore implements BlobStore {
  private readonly client: S3Client;
  private readonly bucket: string;

  constructor(options: S3BlobStoreOptions) {
    if (!options.bucket) throw new ValidationError('bucket is required', 'bucket');
    this.client = options.client;
    this.bucket = options.bucket;
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    const out = await call(() =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType })),
    );
    return { etag: requireEtag(out.ETag) };
  }

  async get(key: string): Promise<BlobObject | null> {
    assertValidKey(key);
    try {
      const out = await call(() => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key })));
      const body = await out.Body!.transformToByteArray();
      return {
        key,
        body,
        size: body.byteLength,
        etag: requireEtag(out.ETag),
        contentType: out.ContentType,
        lastModified: out.LastModified ?? new Date(0),
      };
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  async head(key: string): Promise<BlobMeta | null> {
    assertValidKey(key);
    try {
      const out = await call(() => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key })));
      return {
        key,
        size: out.ContentLength ?? 0,
        etag: requireEtag(out.ETag),
        contentType: out.ContentType,
        lastModified: out.LastModified ?? new Date(0),
      };
    } catch (error) {
      if (isNotFound(error)) return null;
      throw error;
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    assertValidPrefix(prefix);
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValidationError('limit must be 1..1000', 'limit');
    // The cursor is the last key returned (StartAfter), the same contract as the local adapter,
    // so callers can build cursors from keys (the JobStore does).
    const out = await call(() =>
      this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: limit, StartAfter: options.cursor }),
      ),
    );
    const items: BlobMeta[] = (out.Contents ?? []).map((o) => ({
      key: o.Key!,
      size: o.Size ?? 0,
      etag: requireEtag(o.ETag),
      contentType: undefined, // ListObjectsV2 does not return it
      lastModified: o.LastModified ?? new Date(0),
    }));
    const last = items[items.length - 1];
    return out.IsTruncated && last ? { items, cursor: last.key } : { items };
  }

  async delete(key: string): Promise<void> {
    assertValidKey(key);
    await call(() => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })));
  }

  async putIfAbsent(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    const out = await call(() =>
      this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType, IfNoneMatch: '*' }),
      ),
    );
    return { etag: requireEtag(out.ETag) };
  }

  async replaceIfMatch(key: string, body: Uint8Array, etag: string, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    if (!etag) throw new ValidationError('etag is required', 'etag');
    try {
      const out = await call(() =>
        this.client.send(
          new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType, IfMatch: etag }),
        ),
      );
      return { etag: requireEtag(out.ETag) };
    } catch (error) {
      // S3 answers 404 when the object is gone: for a conditional replace that is a failed precondition.
      if (isNotFound(error)) throw new PreconditionFailedError(`object does not exist: ${key}`, { cause: error });
      throw error;
    }
  }

  async signedGetUrl(key: string, expiresSec: number): Promise<string> {
    assertValidKey(key);
    checkExpiry(expiresSec);
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: expiresSec });
  }

  async signedPutUrl(key: string, options: SignedPutOptions): Promise<SignedPut> {
    assertValidKey(key);
    checkExpiry(options.expiresSec);
    checkPutLimits(options);
    const headers: Record<string, string> = { 'content-type': options.contentType };
    const signed = new Set(['content-type']);
    if (options.contentLength !== undefined) {
      headers['content-length'] = String(options.contentLength);
      signed.add('content-length');
    }
    // The signature's date is whole seconds taken during the call: the floored "now" before it is
    // the earliest the link can expire, so expiresAt never promises more than S3 will honour.
    const signedAtMs = Math.floor(Date.now() / 1000) * 1000;
    const url = await getSignedUrl(
      this.client,
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        ContentType: options.contentType,
        ...(options.contentLength !== undefined ? { ContentLength: options.contentLength } : {}),
      }),
      // Keep these as signed headers (not query parameters) so the client must send exactly them.
      { expiresIn: options.expiresSec, signableHeaders: signed, unhoistableHeaders: signed },
    );
    return {
      url,
      method: 'PUT',
      headers,
      expiresAt: new Date(signedAtMs + options.expiresSec * 1000),
      enforcesMaxBytes: options.contentLength !== undefined,
    };
  }
}

function requireEtag(etag: string | undefined): string {
  if (!etag) throw new NonRetryableError('S3 response carried no ETag');
  return etag;
}

function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function isNotFound(error: unknown): boolean {
  const name = (error as { name?: string })?.name;
  return name === 'NoSuchKey' || name === 'NotFound' || statusOf(error) === 404;
}

const TRANSIENT_S3_STATUS = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_S3_CODES = new Set(['RequestTimeout', 'RequestTimeoutException', 'SlowDown', 'Throttling', 'ThrottlingException', 'RequestThrottled', 'InternalError']);

/** Maps SDK failures to the shared error taxonomy; 404s pass through for callers to interpret. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    const status = statusOf(error);
    if (status === 412 || status === 409) {
      throw new PreconditionFailedError('conditional write failed: the object changed or already exists', { cause: error });
    }
    if (isNotFound(error)) throw error;
    // Transient, as the SDK itself classes them (it has already retried them by the time they get here):
    // 429, 500, 502, 503 and 504, a 400 RequestTimeout (the socket idled mid-upload), throttling by
    // name. Not a 501: an unsupported request stays unsupported.
    if (TRANSIENT_S3_STATUS.has(status ?? 0) || TRANSIENT_S3_CODES.has((error as { name?: string })?.name ?? '') || (error as { $retryable?: unknown })?.$retryable) {
      throw new RetryableError(`S3 is unavailable: ${(error as Error).message}`, { cause: error });
    }
    if (error instanceof S3ServiceException) {
      throw new NonRetryableError(`S3 request failed (${status ?? '?'} ${error.name}): ${error.message}`, { cause: error });
    }
    // Network errors (no HTTP status) are transient.
    throw new RetryableError(`S3 request failed: ${(error as Error)?.message ?? String(error)}`, { cause: error });
  }
}
