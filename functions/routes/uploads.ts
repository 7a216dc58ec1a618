import { createRoute, type OpenAPIHono } from '@hono/zod-openapi';
import { ConflictError, CorruptDocumentError, PayloadTooLargeError, RetryableError } from '../../shared/errors.ts';
import { NewerJobRecordError } from '../../shared/jobstore.ts';
import { newId } from '../../shared/ids.ts';
import { parsePendingJobKey, PENDING_JOBS_PREFIX, uploadKey } from '../../shared/keys.ts';
import { listKeys } from '../../shared/prefix.ts';
import { isTerminal } from '../../shared/schemas/job.ts';
import { IdParam, UploadDeleted, UploadRequest, UploadView } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { conflict, SECURITY, pick, uploadsTooMany } from './common.ts';
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

const deleteUpload = createRoute({
  operationId: 'deleteUpload',
  tags: ['uploads'],
  method: 'delete',
  path: '/v1/uploads/{id}',
  summary: 'Delete an init image now (idempotent)',
  description:
    "Removes the uploaded file from storage at once, rather than when the deployment's upload retention would (5 days in AWS; where the bucket keeps earlier versions, AWS prod, the removed one expires a day later). Generations that used it keep their images; a new request naming it is then a 400 upload_not_found (unless its upload link, within its life, writes the id again). 409 upload_in_use while a queued or running generation of the account uses it (wait for it to end, or cancel it, first). A DELETE of a generation does not remove its init image (other generations may use it): this does.",
  security: SECURITY,
  request: { params: IdParam },
  responses: {
    200: { description: 'Removed, or there was none by that id', content: { 'application/json': { schema: UploadDeleted } } },
    ...pick(400, 401, 413, 503),
    409: conflict('upload_in_use'),
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
      // A link writes once: it cannot replace an image a generation was accepted on (ADR 0044).
      createOnly: true,
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

  /**
   * Whether a queued or running generation of `owner` names the upload: the owner's active markers
   * (at most its active-job limit), each one's record. A record that does not read is no generation
   * that can run. (A POST checking the upload at this moment may still queue one: its run then fails
   * invalid_input, the init image not there, as for an upload that expired while it waited.)
   */
  async function inUseBy(owner: string, uploadId: string): Promise<string | null> {
    let cursor: string | undefined;
    do {
      const page = await listKeys(deps.blobs, `${PENDING_JOBS_PREFIX}active/${owner}/`, cursor === undefined ? {} : { cursor });
      for (const key of page.keys) {
        const named = parsePendingJobKey(key);
        if (!named) continue;
        const job = await deps.jobs.get(owner, named.jobId).catch((error: unknown) => {
          // A newer clipag's record (ADR 0030): what this version reads of it decides, and one it cannot
          // read enough of may use the upload: the DELETE waits for a version that reads it (503, as GET).
          if (error instanceof NewerJobRecordError) {
            if (error.record !== undefined) return error.record;
            throw new RetryableError('a generation of this account was written by a newer version of the service, and may use this upload; retry later', { cause: error });
          }
          // A damaged record never runs.
          if (error instanceof CorruptDocumentError) return null;
          throw error;
        });
        if (job && !isTerminal(job.status) && job.spec.init === `upload:${uploadId}`) return job.id;
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return null;
  }

  app.openapi(deleteUpload, async (c) => {
    const { id } = c.req.valid('param');
    const owner = c.get('owner');
    const key = uploadKey(owner, id);
    const existed = (await deps.blobs.head(key)) !== null;
    if (existed) {
      const user = await inUseBy(owner, id);
      if (user !== null) throw new ConflictError(`upload ${id} is the init image of generation ${user}, which is queued or running: delete the upload once it has ended (or cancel it)`, { code: 'upload_in_use', param: 'id' });
      await deps.blobs.delete(key);
    }
    return c.json({ object: 'upload' as const, upload_id: id, deleted: existed }, 200);
  });
}
