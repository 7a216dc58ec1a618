import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3ServiceException,
  type S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl, S3RequestPresigner } from '@aws-sdk/s3-request-presigner';
import { NonRetryableError, NotFoundError, PreconditionFailedError, RetryableError, ValidationError } from '../../errors.ts';
import { assertValidKey, assertValidPrefix } from '../../keys.ts';
import type {
  BlobMeta,
  BlobObject,
  BlobStore,
  KeyPage,
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
    const out = await this.listObjects(prefix, options);
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

  /** The same request as `list` (it costs no more here), keys only. */
  async listKeys(prefix: string, options: ListOptions = {}): Promise<KeyPage> {
    const out = await this.listObjects(prefix, options);
    const keys = (out.Contents ?? []).map((o) => o.Key!);
    const last = keys[keys.length - 1];
    return out.IsTruncated && last !== undefined ? { keys, cursor: last } : { keys };
  }

  private async listObjects(prefix: string, options: ListOptions) {
    assertValidPrefix(prefix);
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValidationError('limit must be 1..1000', 'limit');
    // The cursor is the last key returned (StartAfter), the same contract as the local adapter,
    // so callers can build cursors from keys (the JobStore does).
    // A page of at most 1000 keys (a few hundred KB of XML) is read before the call resolves: a small request.
    return this.small('S3 ListObjectsV2', (abortSignal) =>
      this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: limit, StartAfter: options.cursor }), { abortSignal }),
    );
  }

  async delete(key: string): Promise<void> {
    assertValidKey(key);
    await this.small('S3 DeleteObject', (abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal }));
  }

  /**
   * DeleteObjects, up to 1000 keys a request (its limit), one request after another. S3 answers 200 even
   * when some keys fail (AccessDenied outside the role's prefixes, InternalError, SlowDown): each is in
   * the answer's Errors, and any makes this throw (a RetryableError when every failure is transient), once
   * every batch was tried. A missing key counts as deleted, as for DeleteObject.
   */
  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const key of keys) assertValidKey(key);
    const failed: Array<{ key: string; code: string; message: string }> = [];
    let requestFailure: { error: unknown } | undefined;
    for (let start = 0; start < keys.length; start += DELETE_OBJECTS_MAX_KEYS) {
      const batch = keys.slice(start, start + DELETE_OBJECTS_MAX_KEYS);
      try {
        // Quiet: the answer lists only the keys that failed. The SDK adds the checksum S3 requires of this request.
        const out = await this.small('S3 DeleteObjects', (abortSignal) =>
          this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }), { abortSignal }),
        );
        for (const e of out.Errors ?? []) failed.push({ key: e.Key ?? '?', code: e.Code ?? 'UnknownError', message: e.Message ?? '' });
      } catch (error) {
        requestFailure ??= { error };
      }
    }
    if (requestFailure) throw requestFailure.error;
    if (failed.length > 0) {
      const shown = failed.slice(0, 3).map((f) => `${f.key} (${f.code}${f.message ? `: ${f.message}` : ''})`).join(', ');
      const message = `S3 could not delete ${failed.length} of ${keys.length} objects: ${shown}${failed.length > 3 ? ', …' : ''}`;
      if (failed.every((f) => TRANSIENT_S3_CODES.has(f.code) || f.code === 'ServiceUnavailable')) throw new RetryableError(message);
      throw new NonRetryableError(message);
    }
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

  /**
   * The same URL `getSignedUrl(client, new GetObjectCommand({ Bucket, Key }), { expiresIn })` gives, byte
   * for byte, at a tenth of its CPU: getSignedUrl runs the command's whole middleware stack and builds a
   * presigner for every link (1–2 ms each, and a view signs one per image, a frame list one per frame).
   * Here the stack runs once per store (getUrlSigning), and each link is that request with the key's
   * path, signed by one reused presigner (the SDK's own signing code).
   */
  async signedGetUrl(key: string, expiresSec: number): Promise<string> {
    assertValidKey(key);
    checkExpiry(expiresSec);
    const signing = await this.getUrlSigning();
    if (!signing) return getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: expiresSec });
    const { template, pathPrefix, presigner, signingRegion, signingService } = signing;
    const request = { ...template, headers: { ...template.headers }, query: { ...template.query }, path: pathPrefix + escapeKeyPath(key) };
    const presigned = await presigner.presign(request, { expiresIn: expiresSec, ...(signingRegion !== undefined ? { signingRegion } : {}), ...(signingService !== undefined ? { signingService } : {}) });
    return formatSignedUrl(presigned);
  }

  /** What signedGetUrl reuses; null where each link must go through getSignedUrl (see captureUrlSigning). */
  private urlSigning: Promise<UrlSigning | null> | undefined;

  private getUrlSigning(): Promise<UrlSigning | null> {
    this.urlSigning ??= this.captureUrlSigning().catch((error: unknown) => {
      this.urlSigning = undefined; // not remembered: the next link tries again (as getSignedUrl would)
      throw error;
    });
    return this.urlSigning;
  }

  /**
   * Runs a GetObject for a probe key through the client's middleware stack as getSignedUrl does, up to
   * the point where getSignedUrl signs, and keeps what it would sign with: the request (endpoint, path
   * style, query, headers) and the signing region and service the endpoint named. A GetObject's request
   * differs between keys only in its path's last part, the key, encoded as the SDK encodes it. Null (every
   * link through getSignedUrl) for what this does not reproduce: S3 Express session credentials, or a
   * request whose path does not end with the probe key.
   */
  private async captureUrlSigning(): Promise<UrlSigning | null> {
    let captured: { request: PresignRequest; context: Record<string, unknown> } | undefined;
    const stack = this.client.middlewareStack.clone();
    stack.addRelativeTo(
      ((_next: unknown, context: Record<string, unknown>) => async (args: { request: PresignRequest }) => {
        captured = { request: args.request, context };
        return { response: {}, output: { $metadata: { httpStatusCode: 200 } } };
      }) as never,
      { name: 'clipagCaptureGetRequest', relation: 'before', toMiddleware: 'awsAuthMiddleware', override: true },
    );
    const command = new GetObjectCommand({ Bucket: this.bucket, Key: URL_SIGNING_PROBE_KEY });
    await command.resolveMiddleware(stack as never, this.client.config, {})({ input: command.input });
    if (!captured || captured.context.s3ExpressIdentity) return null;
    const { request, context } = captured;
    const probePath = escapeKeyPath(URL_SIGNING_PROBE_KEY);
    if (typeof request.path !== 'string' || !request.path.endsWith(`/${probePath}`)) return null;
    // As getSignedUrl removes them: per-invocation headers that are not signed into a link.
    const headers = { ...request.headers };
    delete headers['amz-sdk-invocation-id'];
    delete headers['amz-sdk-request'];
    delete headers['x-amz-user-agent'];
    // The presigner getSignedUrl builds per link, built once: its region and service come from the
    // endpoint's first auth scheme, as there.
    const authScheme = (context.authSchemes as Array<{ name?: string; signingName?: string; signingRegion?: string; signingRegionSet?: string[] }> | undefined)?.[0];
    const region = authScheme?.name === 'sigv4a' ? authScheme.signingRegionSet?.join(',') : authScheme?.signingRegion;
    const presigner = new S3RequestPresigner({ ...this.client.config, signingName: authScheme?.signingName, region: async () => region } as never);
    return {
      template: Object.freeze({ ...request, headers, query: { ...request.query } }) as PresignRequest,
      pathPrefix: request.path.slice(0, -probePath.length),
      presigner,
      signingRegion: (context.signing_region as string | undefined) ?? region,
      signingService: context.signing_service as string | undefined,
    };
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
    if (options.createOnly) {
      // Signed, so a client that leaves it out is refused (403) rather than allowed to overwrite.
      headers['if-none-match'] = '*';
      signed.add('if-none-match');
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
        ...(options.createOnly ? { IfNoneMatch: '*' } : {}),
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

type PresignRequest = Parameters<S3RequestPresigner['presign']>[0];

interface UrlSigning {
  /** The probe's GetObject request as getSignedUrl would sign it; each link copies it. */
  template: Readonly<PresignRequest>;
  /** Its path up to the key. */
  pathPrefix: string;
  presigner: S3RequestPresigner;
  signingRegion: string | undefined;
  signingService: string | undefined;
}

/** A valid key (shared/keys.ts) whose encoding is itself. */
const URL_SIGNING_PROBE_KEY = 'k';

/** A key in a request path, as the SDK writes a greedy label: each segment URI-encoded, `!'()*` too. */
function escapeKeyPath(key: string): string {
  return key.split('/').map(escapeUri).join('/');
}

function escapeUri(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** A signed request as a URL, as getSignedUrl writes it (the SDK's formatUrl: the query sorted by name, each part URI-encoded). */
function formatSignedUrl(request: Awaited<ReturnType<S3RequestPresigner['presign']>>): string {
  const protocol = request.protocol.endsWith(':') ? request.protocol : `${request.protocol}:`;
  const host = request.port ? `${request.hostname}:${request.port}` : request.hostname;
  const path = request.path.startsWith('/') ? request.path : `/${request.path}`;
  const query = request.query ?? {};
  const parts: string[] = [];
  for (const name of Object.keys(query).sort()) {
    const value = query[name];
    const key = escapeUri(name);
    if (Array.isArray(value)) for (const v of value) parts.push(`${key}=${escapeUri(v)}`);
    else parts.push(value || typeof value === 'string' ? `${key}=${escapeUri(value)}` : key);
  }
  const auth = request.username != null || request.password != null ? `${request.username ?? ''}:${request.password ?? ''}@` : '';
  return `${protocol}//${auth}${host}${path}${parts.length ? `?${parts.join('&')}` : ''}${request.fragment ? `#${request.fragment}` : ''}`;
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

/** The most keys one DeleteObjects request may name. */
const DELETE_OBJECTS_MAX_KEYS = 1000;

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
