// Local mode's stand-in for S3 presigned URLs: GET and PUT on /blobs/<key>?expires=..&sig=..,
// HMAC-checked with the local signing secret (shared/adapters/local/signing.ts). Only the embedded
// local server mounts this; in AWS the links point at S3 itself.
//
// Mount it on the app createApp returns (`mountLocalBlobRoutes(app, …)`), so these routes share its
// request id, its one onError (every failure is the ErrorEnvelope) and its notFound.
import type { OpenAPIHono } from '@hono/zod-openapi';
import { verifyLocalSignature } from '../shared/adapters/local/signing.ts';
import { NotFoundError, PayloadTooLargeError, PreconditionFailedError, ValidationError } from '../shared/errors.ts';
import { PNG_SIGNATURE } from '../shared/image-header.ts';
import { isJpeg } from '../shared/jpeg.ts';
import type { BlobStore } from '../shared/ports.ts';
import { HttpError, methodNotAllowed } from './middleware/errors.ts';
import type { AppEnv } from './types.ts';

const forbidden = (reason: string) => new HttpError(403, 'forbidden', `signed link rejected: ${reason}`);
/** A create-only link's second PUT (S3 answers it 412 PreconditionFailed). */
const linkUsed = () => new HttpError(412, 'upload_link_used', 'this upload link was used already: each writes once, and what it wrote stays; ask POST /v1/uploads for another');

/**
 * On every `/blobs` answer. These links are served on the API's own origin, so a stored body must
 * never be read as a page: no sniffing past the stored type, and a sandbox with nothing allowed, were
 * a browser to render one as a document anyway. No cache keeps a copy: a link grants access only
 * until it expires, a DELETE of its generation removes the image, and each image is one account's
 * (a local server is cheap to ask again).
 */
const BLOB_RESPONSE_HEADERS: Readonly<Record<string, string>> = {
  'x-content-type-options': 'nosniff',
  'cache-control': 'private, no-store',
  'content-security-policy': "default-src 'none'; sandbox",
};

const isPngType = (contentType: string | undefined) => contentType !== undefined && /^image\/png\s*(;|$)/i.test(contentType);
const isJpegType = (contentType: string | undefined) => contentType !== undefined && /^image\/jpeg\s*(;|$)/i.test(contentType);
const isWebpType = (contentType: string) => /^image\/webp\s*(;|$)/i.test(contentType);

/**
 * Shown in place (inline) only for a PNG, a JPEG or a WebP, the types these links are signed for (ADR 0041, 0043);
 * anything else is a download. The name is the key's last segment, reduced to characters that need no quoting.
 */
function contentDisposition(key: string, contentType: string): string {
  const name = (key.slice(key.lastIndexOf('/') + 1).replace(/[^A-Za-z0-9._=+@-]/g, '_') || 'blob').slice(0, 100);
  return `${isPngType(contentType) || isJpegType(contentType) || isWebpType(contentType) ? 'inline' : 'attachment'}; filename="${name}"`;
}

function startsWithPngSignature(body: Uint8Array): boolean {
  return body.byteLength >= PNG_SIGNATURE.length && PNG_SIGNATURE.every((byte, i) => body[i] === byte);
}

/** The first buffer readDeclared fills; it doubles, up to the declared length, as the body comes. */
const FIRST_BODY_BUFFER_BYTES = 64 * 1024;

/**
 * Reads the body into one growing buffer; `null` as soon as it turns out longer than `declared` (the
 * rest is never buffered). One buffer, doubled as the bytes come (at most the declared length): a body
 * that trickles in byte by byte is not kept as a million small pieces (about 33 bytes of memory each),
 * and a PUT that declares 8 MiB and sends nothing holds 64 KiB, not 8 MiB. Like an S3 presigned PUT,
 * which signs the exact length, the caller has already required a Content-Length within the grant.
 */
async function readDeclared(body: ReadableStream<Uint8Array> | null, declared: number): Promise<Uint8Array | null> {
  if (!body) return new Uint8Array(0);
  let out = Buffer.alloc(Math.min(declared, FIRST_BODY_BUFFER_BYTES));
  const reader = body.getReader();
  let total = 0;
  for (;;) {
    let step: Awaited<ReturnType<typeof reader.read>>;
    try {
      step = await reader.read();
    } catch {
      // The client went away mid-upload (connection reset, aborted): its request, not the server,
      // failed. Nothing was stored.
      throw new HttpError(400, 'upload_interrupted', 'the upload was interrupted before its last byte; nothing was stored (PUT it again)');
    }
    const { done, value } = step;
    if (done) break;
    const needed = total + value.byteLength;
    if (needed > declared) {
      await reader.cancel().catch(() => undefined);
      return null;
    }
    if (needed > out.length) {
      const grown = Buffer.alloc(Math.min(declared, Math.max(needed, out.length * 2)));
      out.copy(grown, 0, 0, total);
      out = grown;
    }
    out.set(value, total);
    total = needed;
  }
  return out.subarray(0, total);
}

export function mountLocalBlobRoutes(app: OpenAPIHono<AppEnv>, blobs: BlobStore, signingSecret: string): void {
  // Before the routes, so it also sees the error envelopes onError makes of what they throw.
  app.use('/blobs/*', async function protectiveBlobHeaders(c, next) {
    await next();
    for (const [name, value] of Object.entries(BLOB_RESPONSE_HEADERS)) c.res.headers.set(name, value);
  });

  app.get('/blobs/*', async function serveSignedBlob(c) {
    const check = verifyLocalSignature(signingSecret, 'GET', c.req.url);
    if (!check.ok) throw forbidden(check.reason);
    const obj = await blobs.get(check.key);
    if (!obj) throw new NotFoundError('no such object');
    const contentType = obj.contentType ?? 'application/octet-stream';
    return new Response(obj.body, {
      status: 200,
      headers: {
        'content-type': contentType,
        'content-length': String(obj.body.length),
        'content-disposition': contentDisposition(check.key, contentType),
        etag: `"${obj.etag}"`,
        'x-request-id': c.get('requestId'),
      },
    });
  });

  app.put('/blobs/*', async function storeSignedUpload(c) {
    const check = verifyLocalSignature(signingSecret, 'PUT', c.req.url);
    if (!check.ok) throw forbidden(check.reason);
    if (check.contentType && c.req.header('content-type') !== check.contentType) {
      // What came, quoted (cut short): a client that merged its own header with the one the upload
      // answer named sends "image/png, image/png", which reads like the right value otherwise.
      const got = c.req.header('content-type');
      throw new ValidationError(`Content-Type must be ${check.contentType}; got ${got === undefined ? 'none' : JSON.stringify(got.slice(0, 100))}`, 'Content-Type');
    }
    if (check.createOnly) {
      // S3 refuses a PUT without the header this link signs (403): say which one it is.
      const got = c.req.header('if-none-match');
      if (got?.trim() !== '*') throw new ValidationError(`this upload link writes once: send If-None-Match: * (one of the headers the upload answer names); got ${got === undefined ? 'none' : JSON.stringify(got.slice(0, 100))}`, 'If-None-Match');
      // Before the body is read; the write below decides for a PUT that races this one.
      if ((await blobs.head(check.key)) !== null) throw linkUsed();
    }
    const header = c.req.header('content-length');
    if (header === undefined) throw new HttpError(411, 'length_required', 'Content-Length is required (the upload URL grants a fixed number of bytes)');
    if (!/^\d{1,15}$/.test(header)) throw new ValidationError('Content-Length must be a non-negative integer', 'Content-Length');
    const declared = Number(header);
    const max = check.maxBytes ?? Infinity;
    if (declared > max) throw new PayloadTooLargeError(`upload is limited to ${check.maxBytes} bytes`);
    if (check.exactBytes !== undefined && declared !== check.exactBytes) {
      // S3 refuses this too (the promised Content-Length is signed); say why instead of "forbidden".
      throw new ValidationError(`this upload URL is for exactly ${check.exactBytes} bytes, but Content-Length is ${declared}${declared < check.exactBytes ? ' (send the file as it is: curl --data-binary @FILE, not -d, which drops line breaks)' : ''}`, 'Content-Length');
    }
    // Read no more than was declared (which the grant's limit bounds, above).
    const body = await readDeclared(c.req.raw.body, declared);
    if (body === null) {
      // Past its own Content-Length; past the grant's limit too when it declared all of it.
      if (declared === max) throw new PayloadTooLargeError(`upload is limited to ${check.maxBytes} bytes`);
      throw new ValidationError(`the body is longer than its Content-Length (${declared})`, 'Content-Length');
    }
    if (body.byteLength !== declared) {
      throw new ValidationError(`the body is ${body.byteLength} bytes but Content-Length says ${declared}`, 'Content-Length');
    }
    // A link signed for a PNG stores only a PNG, one for a JPEG only a JPEG: other bytes (HTML, say)
    // are never kept under this origin. The generation that uses the upload still checks the whole file.
    if (isPngType(check.contentType) && !startsWithPngSignature(body)) {
      const advice = isJpeg(body) ? 'for a JPEG, ask POST /v1/uploads for content_type image/jpeg' : 'convert the image to PNG or JPEG';
      throw new ValidationError(`the body is not a PNG file (it does not start with the PNG signature); this upload URL is for image/png: ${advice}`, 'body');
    }
    if (isJpegType(check.contentType) && !isJpeg(body)) {
      const advice = startsWithPngSignature(body) ? 'for a PNG, ask POST /v1/uploads for content_type image/png' : 'convert the image to PNG or JPEG';
      throw new ValidationError(`the body is not a JPEG file (it does not start with the JPEG start-of-image marker); this upload URL is for image/jpeg: ${advice}`, 'body');
    }
    const contentType = check.contentType ?? c.req.header('content-type') ?? 'application/octet-stream';
    const { etag } = check.createOnly
      ? await blobs.putIfAbsent(check.key, body, { contentType }).catch((e: unknown) => {
          throw e instanceof PreconditionFailedError ? linkUsed() : e;
        })
      : await blobs.put(check.key, body, { contentType });
    return new Response(null, { status: 200, headers: { etag: `"${etag}"`, 'x-request-id': c.get('requestId') } });
  });

  app.all('/blobs/*', () => {
    throw methodNotAllowed(['GET', 'PUT']);
  });
}
