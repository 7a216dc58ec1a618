import type { BlobStore } from './ports.ts';
import { listKeys } from './prefix.ts';
import { jobOutputsPrefix } from './keys.ts';
import { outputFile, outputFormatOfKey } from './output-format.ts';
import { costUsd } from './run-stats.ts';
import { imageSeed } from './schemas/generation.ts';
import { claimFree, isTerminal, shownContentFlags, shownError, shownOutputFlags, shownUsage, startedEventState, startedFirstAttemptAllowed, wantsStartedEvent, type JobRecord, type JobWebhook } from './schemas/job.ts';
import type { GenerationView, STARTED_EVENT_STATUSES, WebhookStatus } from './schemas/view.ts';

/**
 * The `expires_at` of links signed from `now`. Signatures carry whole seconds (S3's X-Amz-Date, the
 * local `expires`), taken at or after `now`: the floored second is the earliest a link can expire, so
 * it never dies before its expires_at.
 */
function linkExpiry(now: Date, ttlSec: number): string {
  return new Date(Math.floor(now.getTime() / 1000) * 1000 + ttlSec * 1000).toISOString();
}

/** The image index of each of `job.outputs`: the published images in index order; a withheld one (ADR 0017) leaves a gap. */
export function publishedIndices(job: JobRecord): number[] {
  const withheld = new Set((job.output_checks ?? []).filter((c) => c.withheld).map((c) => c.index));
  const indices: number[] = [];
  for (let i = 0; indices.length < job.outputs.length; i++) if (!withheld.has(i)) indices.push(i);
  return indices;
}

/**
 * Where the worker keeps image `index`'s progress frames, beside the image:
 * `frames/<index>/<step, 4 digits>_<width>x<height>.png`. A frame has the size of its multi-scale
 * stage, which the name carries so that a listing can say it. Frames stored before had no size in
 * their name (`<step>.png`): they list with width and height null.
 */
const FRAME_KEY = /\/frames\/(\d+)\/(\d{4,})(?:_(\d+)x(\d+))?\.png$/;

/** The key of a frame (see FRAME_KEY). */
export function frameKey(owner: string, jobId: string, index: number, step: number, width: number, height: number): string {
  return `${jobOutputsPrefix(owner, jobId)}frames/${index}/${String(step).padStart(4, '0')}_${width}x${height}.png`;
}

/** The links' life: the configured one, or less where the store's signing credentials end sooner. */
async function linkLife(blobs: BlobStore, ttlSec: number): Promise<number> {
  return blobs.linkLifeSec ? blobs.linkLifeSec(ttlSec) : ttlSec;
}

/**
 * A link to a job's stored images never outlives `outputs_expire_at` (the time the view promises
 * they go): S3's lifecycle removes them at its next daily run after it, sometimes days later, and
 * until then a link signed for the full life would still download them. At least a second (the least
 * a signature takes; past the expiry the views sign none). No expiry: `ttlSec`.
 */
export function linkLifeUntilExpiry(ttlSec: number, now: Date, expireAt: string | null): number {
  if (expireAt === null) return ttlSec;
  return Math.max(1, Math.min(ttlSec, Math.floor((Date.parse(expireAt) - now.getTime()) / 1000)));
}

/**
 * The progress frames of a job's published images (the image before step 0, 10, 20, …: every
 * `frameEvery` steps of the recipe), as signed URLs, by image index and step. Frames are stored with the
 * images when the run ends, so a job still running has none yet; a withheld image's are never stored.
 */
export async function generationFrames(
  job: JobRecord,
  blobs: BlobStore,
  ttlSec: number,
  now: Date,
  options: Pick<ViewOptions, 'outputRetentionDays'> = {},
): Promise<Array<{ index: number; step: number; width: number | null; height: number | null; url: string; expires_at: string }>> {
  const published = new Set(publishedIndices(job));
  if (published.size === 0 || job.deleted_at !== undefined) return [];
  // Past the outputs' expiry the frames are gone (or going: S3's lifecycle lags), as the view says.
  const expireAt = outputsExpireAt(job, options.outputRetentionDays);
  if (expireAt !== null && Date.parse(expireAt) <= now.getTime()) return [];
  ttlSec = linkLifeUntilExpiry(await linkLife(blobs, ttlSec), now, expireAt);
  const expiresAt = linkExpiry(now, ttlSec);
  const found: Array<{ index: number; step: number; width: number | null; height: number | null; key: string }> = [];
  let cursor: string | undefined;
  do {
    const page = await listKeys(blobs, `${jobOutputsPrefix(job.owner, job.id)}frames/`, cursor === undefined ? {} : { cursor });
    for (const key of page.keys) {
      const m = FRAME_KEY.exec(key);
      if (m && published.has(Number(m[1]))) {
        found.push({ index: Number(m[1]), step: Number(m[2]), width: m[3] ? Number(m[3]) : null, height: m[4] ? Number(m[4]) : null, key });
      }
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  found.sort((a, b) => a.index - b.index || a.step - b.step);
  return Promise.all(found.map(async (f) => ({ index: f.index, step: f.step, width: f.width, height: f.height, url: await blobs.signedGetUrl(f.key, ttlSec), expires_at: expiresAt })));
}

/** The deployment's figures a view shows: its worker price and how long it keeps outputs. */
export interface ViewOptions {
  workerHourlyUsd?: number;
  outputRetentionDays?: number;
}

/** The view's figures from a process's config (the API's, the sweep's, the worker's for its webhooks). */
export function viewOptionsFromConfig(config: { workerHourlyUsd?: number | undefined; outputRetentionDays?: number | undefined }): ViewOptions {
  return {
    ...(config.workerHourlyUsd !== undefined ? { workerHourlyUsd: config.workerHourlyUsd } : {}),
    ...(config.outputRetentionDays !== undefined ? { outputRetentionDays: config.outputRetentionDays } : {}),
  };
}

/**
 * When a finished job's stored images (and frames) expire under the bucket's lifecycle rule (in local
 * mode, `clipag serve`'s retention pass: functions/local-retention.ts): its end plus the retention (S3
 * removes them at the next UTC midnight after that, the local pass within minutes, so they may outlive
 * it a little, never the reverse). Null while nothing is stored, or when the deployment keeps outputs.
 * Past it the record is as it was (its outputs stay for the usage audit), but the view lists no outputs
 * and no frames, with this time (now past) saying why.
 */
export function outputsExpireAt(job: JobRecord, outputRetentionDays: number | undefined): string | null {
  if (outputRetentionDays === undefined || job.finished_at === null || job.outputs.length === 0) return null;
  return new Date(outputsExpireMs(Date.parse(job.finished_at), outputRetentionDays)).toISOString();
}

/** When the images of a job that ended at `endedAt` (ms) expire under a retention of `days`: `outputs_expire_at`, in ms. */
export function outputsExpireMs(endedAt: number, days: number): number {
  return endedAt + days * 86_400_000;
}

/**
 * The public view of a job record: outputs as signed URLs with their expiry; internals omitted. The
 * API answers with it, and a webhook carries it. The webhook's secret only with `webhookSecret`.
 */
export async function generationView(
  job: JobRecord,
  blobs: BlobStore,
  ttlSec: number,
  now: Date,
  options: ViewOptions & { webhookSecret?: boolean } = {},
): Promise<GenerationView> {
  const outputsExpire = outputsExpireAt(job, options.outputRetentionDays);
  // Past it the images are gone, or going (S3's lifecycle runs daily, sometimes days late): none is
  // listed, so no link to them is signed (the frames list is empty too); outputs_expire_at says why.
  const expired = outputsExpire !== null && Date.parse(outputsExpire) <= now.getTime();
  if (job.outputs.length > 0 && job.deleted_at === undefined && !expired) ttlSec = linkLifeUntilExpiry(await linkLife(blobs, ttlSec), now, outputsExpire);
  const expiresAt = linkExpiry(now, ttlSec);
  const checks = new Map((job.output_checks ?? []).map((c) => [c.index, c]));
  const indices = publishedIndices(job);
  const deleted = job.deleted_at !== undefined;
  const outputs = await Promise.all(
    (deleted || expired ? [] : job.outputs).map(async (output, k) => {
      const stored = checks.get(indices[k]!)?.flags;
      const flags = stored && shownOutputFlags(stored);
      return {
        index: indices[k]!,
        seed: imageSeed(job.id, job.spec, indices[k]!),
        url: await blobs.signedGetUrl(output.key, ttlSec),
        expires_at: expiresAt,
        content_type: outputFile(outputFormatOfKey(output.key)).contentType,
        width: output.width,
        height: output.height,
        ...(output.clip_score !== undefined ? { clip_score: output.clip_score } : {}),
        ...(flags?.length ? { content_flags: flags } : {}),
      };
    }),
  );
  // A deleted generation's findings are blanked (deletedRecord): which images were withheld still shows, not why.
  const withheld = (job.output_checks ?? []).filter((c) => c.withheld).map((c) => ({ index: c.index, content_flags: deleted ? [] : shownOutputFlags(c.flags) }));
  const w = job.webhook;
  // The price of the run's day where the worker kept it; today's otherwise.
  const hourly = job.hourly_usd ?? options.workerHourlyUsd;
  return {
    id: job.id,
    object: 'generation',
    status: job.status,
    created_at: job.created_at,
    started_at: job.started_at,
    finished_at: job.finished_at,
    progress: { step: job.progress.step, total: job.progress.total, attempt: job.attempts },
    cancel_requested: job.cancel_requested,
    outputs,
    outputs_expire_at: deleted ? null : outputsExpire,
    // What made each image that is gone, so that it can be made again (its seed), without a link.
    expired_outputs: expired && !deleted
      ? job.outputs.map((output, k) => ({
          index: indices[k]!,
          seed: imageSeed(job.id, job.spec, indices[k]!),
          width: output.width,
          height: output.height,
          ...(output.clip_score !== undefined ? { clip_score: output.clip_score } : {}),
        }))
      : [],
    withheld_outputs: withheld,
    error: shownError(job.error),
    usage: { ...shownUsage(job.usage), cost_usd: hourly === undefined ? null : costUsd(job.usage.worker_seconds, hourly), hourly_usd: hourly ?? null },
    warnings: job.warnings ?? [],
    model_version: job.model_version ?? null,
    request: job.spec,
    content_flags: shownContentFlags(job.content_flags ?? []),
    metadata: job.metadata ?? {},
    api_key_id: job.api_key_id ?? null,
    deleted_at: job.deleted_at ?? null,
    webhook: w
      ? {
          url: w.url,
          status: webhookStatus(w),
          attempts: w.attempts,
          last_error: w.last_error,
          ...(options.webhookSecret ? { secret: w.secret } : {}),
          ...(wantsStartedEvent(job) ? { started: startedEventView(job, now) } : {}),
        }
      : null,
  };
}

/**
 * The started event's delivery (ADR 0036), by the sender's own rules (shared/webhooks.ts) at `now`:
 * pending while it may still go (the job runs; an attempt is out; or, the job ended, its worker's first
 * attempt is still allowed because the end event has not been tried), skipped once nothing will send it.
 */
function startedEventView(job: JobRecord, now: Date): { status: (typeof STARTED_EVENT_STATUSES)[number]; attempts: number; last_error: string | null } {
  const w = job.webhook!;
  const state = startedEventState(w);
  const shown = (status: (typeof STARTED_EVENT_STATUSES)[number]) => ({ status, attempts: state.attempts, last_error: state.last_error });
  if (state.delivered_at !== null) return shown('delivered');
  if (state.given_up_at !== null) return shown('failed');
  if (!isTerminal(job.status)) return shown('pending');
  // An attempt out, or the worker's first attempt still allowed (the end event not tried yet).
  return shown(!claimFree(state, now) || startedFirstAttemptAllowed(job, now) ? 'pending' : 'skipped');
}

/** A webhook's delivery state as the view shows it and the list filters on it. */
export function webhookStatus(w: JobWebhook): WebhookStatus {
  return w.delivered_at !== null ? 'delivered' : w.given_up_at !== null ? 'failed' : 'pending';
}

/**
 * Where image `index` of a job stands, for its stable link (GET /v1/generations/{id}/outputs/{index}):
 * a freshly signed URL, or why there is none. The same rules as the view's `outputs`: none while the
 * job runs, none for a withheld image, none once deleted or past `outputs_expire_at`, and a link that
 * never outlives that expiry.
 */
export type OutputLink =
  | { kind: 'link'; url: string; expires_at: string }
  | { kind: 'not_ended'; status: JobRecord['status'] }
  | { kind: 'no_such_image'; made: number }
  | { kind: 'withheld' }
  | { kind: 'deleted'; seed: number; deleted_at: string }
  | { kind: 'expired'; seed: number; expired_at: string };

export async function outputLink(
  job: JobRecord,
  index: number,
  blobs: BlobStore,
  ttlSec: number,
  now: Date,
  options: Pick<ViewOptions, 'outputRetentionDays'> = {},
): Promise<OutputLink> {
  if (job.status === 'queued' || job.status === 'running') return { kind: 'not_ended', status: job.status };
  if ((job.output_checks ?? []).some((c) => c.withheld && c.index === index)) return { kind: 'withheld' };
  const k = publishedIndices(job).indexOf(index);
  if (k < 0) return { kind: 'no_such_image', made: job.outputs.length + (job.output_checks ?? []).filter((c) => c.withheld).length };
  const seed = imageSeed(job.id, job.spec, index);
  if (job.deleted_at !== undefined) return { kind: 'deleted', seed, deleted_at: job.deleted_at };
  const expireAt = outputsExpireAt(job, options.outputRetentionDays);
  if (expireAt !== null && Date.parse(expireAt) <= now.getTime()) return { kind: 'expired', seed, expired_at: expireAt };
  const life = linkLifeUntilExpiry(await linkLife(blobs, ttlSec), now, expireAt);
  return { kind: 'link', url: await blobs.signedGetUrl(job.outputs[k]!.key, life), expires_at: linkExpiry(now, life) };
}
