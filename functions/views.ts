import type { BlobStore } from '../shared/ports.ts';
import type { JobRecord } from '../shared/schemas/job.ts';
import type { GenerationView } from './schemas.ts';

/** The public view of a job record: outputs as signed URLs with their expiry; internals omitted. */
export async function generationView(job: JobRecord, blobs: BlobStore, ttlSec: number, now: Date): Promise<GenerationView> {
  // Signatures carry whole seconds (S3's X-Amz-Date, the local `expires`), taken at or after `now`:
  // the floored second is the earliest a link can expire, so it never dies before its expires_at.
  const expiresAt = new Date(Math.floor(now.getTime() / 1000) * 1000 + ttlSec * 1000).toISOString();
  const outputs = await Promise.all(
    job.outputs.map(async (output, index) => ({
      index,
      url: await blobs.signedGetUrl(output.key, ttlSec),
      expires_at: expiresAt,
      width: output.width,
      height: output.height,
      ...(output.clip_score !== undefined ? { clip_score: output.clip_score } : {}),
    })),
  );
  return {
    id: job.id,
    object: 'generation',
    status: job.status,
    created_at: job.created_at,
    started_at: job.started_at,
    finished_at: job.finished_at,
    progress: { step: job.progress.step, total: job.progress.total },
    cancel_requested: job.cancel_requested,
    outputs,
    error: job.error,
    usage: job.usage,
    warnings: job.warnings ?? [],
    request: job.spec,
  };
}
