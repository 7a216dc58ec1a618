import { createRoute, type OpenAPIHono } from '@hono/zod-openapi';
import { PayloadTooLargeError } from '../../shared/errors.ts';
import { newId } from '../../shared/ids.ts';
import { uploadKey } from '../../shared/keys.ts';
import { UploadRequest, UploadView } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { SECURITY, pick, uploadsTooMany } from './common.ts';
import type { RateGate } from '../middleware/rate-limit.ts';

const createUpload = createRoute({
  operationId: 'createUpload',
  tags: ['uploads'],
  method: 'post',
  path: '/v1/uploads',
  summary: 'A presigned PUT URL for an init image',
  description: 'PUT the file to `url` with `headers`, then pass `init: "upload:<upload_id>"` in a generation request.',
  security: SECURITY,
  request: { body: { required: true, content: { 'application/json': { schema: UploadRequest } } } },
  responses: {
    201: { description: 'Where to PUT the file', content: { 'application/json': { schema: UploadView } } },
    ...pick(400, 401, 413, 415, 503),
    429: uploadsTooMany,
  },
});

export function registerUploadRoutes(app: OpenAPIHono<AppEnv>, deps: AppDeps, ctx: { clock: () => Date; uploadGate?: RateGate }): void {
  const { limits } = deps;
  app.openapi(createUpload, async (c) => {
    const { content_type, bytes } = c.req.valid('json');
    if (bytes > limits.maxUploadBytes) {
      throw new PayloadTooLargeError(`uploads are limited to ${limits.maxUploadBytes} bytes (asked for ${bytes})`, { param: 'bytes' });
    }
    const owner = c.get('owner');
    const id = newId(ctx.clock().getTime());
    const signed = await deps.blobs.signedPutUrl(uploadKey(owner, id), {
      contentType: content_type,
      maxBytes: limits.maxUploadBytes,
      // Signed into the URL: S3 refuses a body of any other length.
      contentLength: bytes,
      expiresSec: limits.uploadUrlTtlSec ?? 900,
    });
    // Counted once the URL exists: a refused body or a failed signing spends nothing of the hour's
    // uploads (an unused URL signed here, then refused, grants nothing: it is never handed out).
    const rateLimitFields = ctx.uploadGate ? await ctx.uploadGate.check(c) : null;
    for (const [name, value] of Object.entries(rateLimitFields ?? {})) c.header(name, value, { append: true });
    return c.json(
      {
        upload_id: id,
        object: 'upload' as const,
        init: `upload:${id}`,
        method: 'PUT' as const,
        url: signed.url,
        headers: signed.headers,
        expires_at: signed.expiresAt.toISOString(),
        bytes,
        max_bytes: limits.maxUploadBytes,
      },
      201,
    );
  });
}
