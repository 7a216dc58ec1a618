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
import { NonRetryableError, NotFoundError, PreconditionFailedError, RetryableError, ValidationError } from '../../errors.ts';
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
import { DEFAULT_CALL_DEADLINES, Deadline, transferDeadlineMs, withDeadline, type CallDeadlines } from './deadline.ts';

export interface S3BlobStoreOptions {
  /** Built by the composition root (region, credentials, endpoint); never constructed here. */
  client: S3Client;
  bucket: string;
  /** Per-call deadlines (default DEFAULT_CALL_DEADLINES; tests shorten them). */
  deadlines?: Partial<CallDeadlines>;
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
 *
 * Every call runs under a deadline (./deadline.ts): a small request's for head, delete and a list
 * page; a put's grows with its body; a get's first covers the response headers, then its body in
 * proportion to the size they announce, so a large download that keeps arriving is never cut off.
 */
/** A link is promised this much less than its signing credentials have left (clock skew, the time to use it). */
const LINK_CREDENTIAL_MARGIN_SEC = 60;

export class S3BlobStore implements BlobStore {
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly deadlines: CallDeadlines;

  constructor(options: S3BlobStoreOptions) {
    if (!options.bucket) throw new ValidationError('bucket is required', 'bucket');
    const deadlines = { ...DEFAULT_CALL_DEADLINES, ...options.deadlines };
    if (!(deadlines.callMs > 0) || !(deadlines.minBytesPerSec > 0)) throw new ValidationError('deadlines.callMs and deadlines.minBytesPerSec must be > 0', 'deadlines');
    this.client = options.client;
    this.bucket = options.bucket;
    this.deadlines = deadlines;
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    const out = await this.upload(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType }), body);
    return { etag: requireEtag(out.ETag) };
  }

  async get(key: string): Promise<BlobObject | null> {
    assertValidKey(key);
    // The headers within a small request's time; the body then gets its own allowance from the size
    // they announce (S3 always sends Content-Length for an object). Without one, only the client's
    // 60 s silence limit bounds the body.
    const deadline = new Deadline('S3 GetObject', this.deadlines.callMs);
    try {
      const out = await call(this.bucket, () => this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: deadline.signal }), ABSENT_IS_AN_ANSWER);
      if (out.ContentLength === undefined) deadline.clear();
      else deadline.rearm(transferDeadlineMs(this.deadlines, out.ContentLength));
      // A body cut off mid-way (a reset, the deadline) is as transient as a request that failed.
      const body = await call(this.bucket, () => out.Body!.transformToByteArray());
      return {
        key,
        body,
        size: body.byteLength,
        etag: requireEtag(out.ETag),
        contentType: out.ContentType,
        lastModified: out.LastModified ?? new Date(0),
      };
    } catch (error) {
      if (error instanceof ObjectAbsent) return null;
      throw deadline.errorFor(error);
    } finally {
      deadline.clear();
    }
  }

  async head(key: string): Promise<BlobMeta | null> {
    assertValidKey(key);
    try {
      // A HEAD's answer has no body, so S3's 404 for a missing bucket (NoSuchBucket) reaches the SDK
      // as a bare NotFound, the same as a missing key's: it cannot be told apart here and reads as
      // "absent". get, list and put (whose 404s carry the code) surface the misconfiguration.
      const out = await this.small('S3 HeadObject', (abortSignal) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal }), ABSENT_IS_AN_ANSWER);
      return {
        key,
        size: out.ContentLength ?? 0,
        etag: requireEtag(out.ETag),
        contentType: out.ContentType,
        lastModified: out.LastModified ?? new Date(0),
      };
    } catch (error) {
      if (error instanceof ObjectAbsent) return null;
      throw error;
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    assertValidPrefix(prefix);
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValidationError('limit must be 1..1000', 'limit');
    // The cursor is the last key returned (StartAfter), the same contract as the local adapter,
    // so callers can build cursors from keys (the JobStore does).
    // A page of at most 1000 keys (a few hundred KB of XML) is read before the call resolves: a small request.
    const out = await this.small('S3 ListObjectsV2', (abortSignal) =>
      this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: limit, StartAfter: options.cursor }), { abortSignal }),
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
    await this.small('S3 DeleteObject', (abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal }));
  }

  async putIfAbsent(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    const out = await this.upload(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType, IfNoneMatch: '*' }), body);
    return { etag: requireEtag(out.ETag) };
  }

  async replaceIfMatch(key: string, body: Uint8Array, etag: string, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    if (!etag) throw new ValidationError('etag is required', 'etag');
    try {
      const out = await this.upload(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: options.contentType, IfMatch: etag }), body, ABSENT_IS_AN_ANSWER);
      return { etag: requireEtag(out.ETag) };
    } catch (error) {
      // S3 answers 404 NoSuchKey when the object is gone: for a conditional replace that is a failed
      // precondition. (A missing bucket is not: call() has made that a NonRetryableError.)
      if (error instanceof ObjectAbsent) throw new PreconditionFailedError(`object does not exist: ${key}`, { cause: error });
      throw error;
    }
  }

  /**
   * The SDK keeps temporary credentials until 5 minutes before they expire, and a link signed with them
   * stops working when they do: credentials that would not outlive a link of `expiresSec` (and a margin)
   * are refreshed first, and the life returned is what the ones that sign cover, at most `expiresSec`.
   */
  async linkLifeSec(expiresSec: number): Promise<number> {
    const provider = this.client.config.credentials as (options?: { forceRefresh?: boolean }) => Promise<{ expiration?: Date }>;
    const covers = (c: { expiration?: Date }) => (c.expiration === undefined ? Infinity : Math.floor((c.expiration.getTime() - Date.now()) / 1000) - LINK_CREDENTIAL_MARGIN_SEC);
    let credentials = await provider();
    // Refreshed once per set: a set that a refresh returned and that still does not cover the link
    // (role credentials live shorter than a 12-hour link) is not refreshed again on every view.
    if (covers(credentials) < expiresSec && credentials.expiration?.getTime() !== this.refreshedUntil) {
      credentials = await provider({ forceRefresh: true });
      this.refreshedUntil = credentials.expiration?.getTime();
    }
    return Math.max(1, Math.min(expiresSec, covers(credentials)));
  }

  /** The expiry of the credentials the last forced refresh returned. */
  private refreshedUntil: number | undefined;

  async signedGetUrl(key: string, expiresSec: number): Promise<string> {
    assertValidKey(key);
    checkExpiry(expiresSec);
    return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: expiresSec });
  }

  async signedPutUrl(key: string, options: SignedPutOptions): Promise<SignedPut> {
    assertValidKey(key);
    checkExpiry(options.expiresSec);
    checkPutLimits(options);
    // No longer than the signing credentials last (see linkLifeSec).
    const expiresSec = await this.linkLifeSec(options.expiresSec);
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
      { expiresIn: expiresSec, signableHeaders: signed, unhoistableHeaders: signed },
    );
    return {
      url,
      method: 'PUT',
      headers,
      expiresAt: new Date(signedAtMs + expiresSec * 1000),
      enforcesMaxBytes: options.contentLength !== undefined,
    };
  }

  /** A request with no body to speak of either way, under a small request's deadline. */
  private small<T>(what: string, send: (abortSignal: AbortSignal) => Promise<T>, absent?: typeof ABSENT_IS_AN_ANSWER): Promise<T> {
    return withDeadline(what, this.deadlines.callMs, (abortSignal) => call(this.bucket, () => send(abortSignal), absent));
  }

  /**
   * A PUT of `body`: its deadline grows with the body, so a large upload that keeps moving is not cut
   * off. The client's `requestTimeout` (60 s from the start of a request to its response headers, the
   * upload included) is raised to the same deadline: it cut off every upload longer than a minute.
   */
  private upload(command: PutObjectCommand, body: Uint8Array, absent?: typeof ABSENT_IS_AN_ANSWER) {
    const deadlineMs = transferDeadlineMs(this.deadlines, body.byteLength);
    return withDeadline('S3 PutObject', deadlineMs, (abortSignal) => call(this.bucket, () => this.client.send(command, { abortSignal, requestTimeout: deadlineMs }), absent));
  }
}

function requireEtag(etag: string | undefined): string {
  if (!etag) throw new NonRetryableError('S3 response carried no ETag');
  return etag;
}

function statusOf(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

/**
 * The object is not there: NoSuchKey (GET, a conditional PUT) or NotFound (a HEAD's bodiless 404).
 * Not any 404: S3 answers a missing bucket with 404 NoSuchBucket, and reading that as "absent" made
 * a misconfigured bucket look like missing API keys (401) and missing jobs (404).
 */
function isNotFound(error: unknown): boolean {
  const name = (error as { name?: string })?.name;
  return name === 'NoSuchKey' || name === 'NotFound';
}

/** Passed by the calls that give "the object is not there" a meaning (get, head, replaceIfMatch). */
const ABSENT_IS_AN_ANSWER = 'absent-is-an-answer' as const;

/** What call() throws for a missing object where the caller asked for it: a ClipagError the caller turns into its answer. */
class ObjectAbsent extends NotFoundError {}

const TRANSIENT_S3_STATUS = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_S3_CODES = new Set(['RequestTimeout', 'RequestTimeoutException', 'SlowDown', 'Throttling', 'ThrottlingException', 'RequestThrottled', 'InternalError']);

/**
 * Maps SDK failures to the shared error taxonomy: no raw SDK error leaves the adapter. A missing
 * object becomes ObjectAbsent only where the caller passed ABSENT_IS_AN_ANSWER; anywhere else (list,
 * put, delete) a 404 is unexpected and, like any other refusal, a NonRetryableError.
 */
async function call<T>(bucket: string, fn: () => Promise<T>, absent?: typeof ABSENT_IS_AN_ANSWER): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    const status = statusOf(error);
    if (status === 412 || status === 409) {
      throw new PreconditionFailedError('conditional write failed: the object changed or already exists', { cause: error });
    }
    if ((error as { name?: string })?.name === 'NoSuchBucket') {
      // Configuration, not data: the bucket the deployment names does not exist (a typo, the wrong
      // account or region, a deleted stack). Retrying cannot help; it must page, not read as "absent".
      throw new NonRetryableError(`S3 bucket "${bucket}" does not exist: check the configured bucket name, account and region`, { code: 'config_error', cause: error });
    }
    if (absent && isNotFound(error)) throw new ObjectAbsent(`no such object in bucket ${bucket}`, { cause: error });
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
