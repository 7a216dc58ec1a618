import { createRoute, z, type OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { ConflictError, CorruptDocumentError, GoneError, NotFoundError, operatorMessage, PayloadTooLargeError, PreconditionFailedError, RetryableError, SpendLimitReachedError, TooManyRequestsError, ValidationError } from '../../shared/errors.ts';
import { newId, newJobId } from '../../shared/ids.ts';
import { checkInitDataUri, checkInitImage, type InitImageType } from '../../shared/init-image.ts';
import { parsePendingJobKey, PENDING_JOBS_PREFIX, pendingJobKey, uploadKey } from '../../shared/keys.ts';
import { outputFormatOfKey } from '../../shared/output-format.ts';
import type { ContentFlag, JobRecord } from '../../shared/schemas/job.ts';
import { defaultPromptPolicy, refusalMessage } from '../../shared/prompt-policy.ts';
import { DEFAULT_SIDE, defaultSideFor, GenerationRequest, isInitDataUri, isInitToStore, isInitUrl, type GenerationSpec, isModelVersion, modelVersionMismatch, type ParsedGenerationRequest, storedOutputFormat } from '../../shared/schemas/generation.ts';
import { canceledRecord, isTerminal, newJobRecord, pastCancelDeadline } from '../../shared/schemas/job.ts';
import { sha256Hex } from '../../shared/schemas/apikey.ts';
import { failRefusedJob, markMessageRefused, messageMarker, resendIfMessageUnproven, sendJobMessage } from '../queued-jobs.ts';
import { clearPending, markPending, settleStoredOutputs } from '../../shared/pending.ts';
import { requeueable } from '../../shared/retention.ts';
import { canonicalJson, type Claim, IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE, type IdempotencyLedger, NewerClaimError } from '../idempotency.ts';
import { deleteEndedGeneration } from '../generation-delete.ts';
import { fetchInitImage } from '../init-url.ts';
import { listFilter } from '../list-filter.ts';
import { validationHook } from '../middleware/errors.ts';
import { newerWriterOf } from '../../shared/schemas/queue.ts';
import { NewerJobRecordError } from '../../shared/jobstore.ts';
import { EstimateView, GenerationFrameList, GenerationList, GenerationView, IdParam, LIST_SCAN_LIMIT, ListQuery } from '../schemas.ts';
import { costUsd, estimateJob, runStartOf } from '../../shared/run-stats.ts';
import { defaultSchedule } from '../../shared/schedule.ts';
import { effectiveSpendLimit, nextMonthStart, readSpendLimits, spentThisMonthUsd } from '../../shared/spend-limits.ts';
import type { JobMutation } from '../../shared/ports.ts';
import { listKeys } from '../../shared/prefix.ts';
import type { AppDeps, AppEnv, AppLogEntry } from '../types.ts';
import { generationFrames, generationView, outputLink, publishedIndices, viewOptionsFromConfig } from '../../shared/views.ts';
import { cachedFleet, fleetCounts, fleetNote, readFleet, unreadByFleet } from '../../shared/worker-presence.ts';
import { CANCEL_WEBHOOK_TIMEOUT_MS, checkOutboundUrl, checkWebhookUrl, deliverWebhook, freshWebhookState, httpWebhookSender, newWebhookSecret, WEBHOOK_MAX_ATTEMPTS, webhookOwed, type WebhookDeliveryDeps } from '../../shared/webhooks.ts';
import type { ApiErrorCodeName } from '../../shared/error-codes.ts';
import { conflict, preferredWaitSec, promptBadRequest, SECURITY, pick } from './common.ts';
import type { RateGate } from '../middleware/rate-limit.ts';

/** How many passed upload checks a process remembers. */
const CHECKED_UPLOADS_KEPT = 1000;

/** Generations one owner may have queued or running at once, unless the deployment says otherwise. */
export const DEFAULT_MAX_ACTIVE_JOBS = 100;

/**
 * Over the active-job limit but among its oldest markers (a burst racing at the limit), a request
 * counts again this many times, pausing 100 ms, then 200, then 400, for the others to take theirs away.
 */
const ACTIVE_RECOUNTS = 3;
/** too_many_active_jobs' Retry-After: at most this many of the owner's active generations are read to estimate it. */
const RETRY_AFTER_READS = 8;
/** ... when none of them is running with progress to extrapolate from (queued, just started, or unreadable). */
const RETRY_AFTER_QUEUED_SEC = 30;
/** ... and never longer than this: an extrapolation from a few early steps can be far off. */
const RETRY_AFTER_MAX_SEC = 120;
const ACTIVE_RECOUNT_PAUSE_MS = 100;

/** Tries of the write that fails a job whose send or create failed, and the pause before the second (growing). */
const MARK_FAILED_TRIES = 3;
const MARK_FAILED_PAUSE_MS = 100;

/** A cancel must win against progress writes; the store re-reads and re-applies it on every lost race. */
const CANCEL_RETRIES = 30;

/** RFC 7240 `Prefer`; only `wait=N` is acted on (other preferences are ignored, as the RFC asks). */
const Prefer = z.string().optional().openapi({
  param: { name: 'Prefer', in: 'header' },
  example: 'wait=10',
  description:
    'wait=N (RFC 7240): hold the response up to N seconds for the generation to end, so a short job answers with its outputs without polling. The deployment caps N (the Preference-Applied response header says what was applied); the body is the generation as it stands when the wait ends. Each account has a budget of holds started within one longest wait (ADR 0026): past it the wait is not honoured, the generation comes back at once without Preference-Applied, and the caller polls (never a 429 for it).',
});
const preferenceApplied = { 'Preference-Applied': { description: 'wait=N when a Prefer: wait was honoured, with the N applied', schema: { type: 'string' as const } } };

const jobHeaders = z.object({
  Prefer,
  'Idempotency-Key': z.string().regex(IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE).optional().openapi({
    param: { name: 'Idempotency-Key', in: 'header' },
    description:
      "Same key and body → the same job (200); same key, other body → 409, except once its generation is deleted: its body is forgotten with its prompt, and any body with the key gets that (deleted) generation. A key belongs to the account (shared by all its API keys) and is kept as long as its generation's record. GET /v1/generations?idempotency_key= finds the generation it made.",
  }),
});

const createGeneration = createRoute({
  operationId: 'createGeneration',
  tags: ['generations'],
  method: 'post',
  path: '/v1/generations',
  summary: 'Queue a text-to-image generation',
  security: SECURITY,
  request: {
    headers: jobHeaders,
    body: { required: true, content: { 'application/json': { schema: GenerationRequest } } },
  },
  responses: {
    202: {
      description: 'Queued; poll the Location (with Prefer: wait, the generation as it stands when the wait ends: possibly finished)',
      headers: { Location: { required: true, schema: { type: 'string' } }, ...preferenceApplied },
      content: { 'application/json': { schema: GenerationView } },
    },
    200: {
      description: 'Idempotent replay: the job an earlier request with this key made',
      headers: {
        Location: { required: true, schema: { type: 'string' } },
        'Idempotent-Replayed': { required: true, description: 'Always "true" on a replay', schema: { type: 'string', enum: ['true'] } },
        ...preferenceApplied,
      },
      content: { 'application/json': { schema: GenerationView } },
    },
    ...pick(400, 401, 402, 413, 415, 429, 503),
    400: promptBadRequest,
    409: {
      ...conflict('idempotency_key_reused', 'idempotency_in_progress'),
      headers: { 'Retry-After': { description: 'On idempotency_in_progress: seconds to wait before retrying with the same key and body', schema: { type: 'integer', minimum: 0 } } },
    },
  },
});

const createEstimate = createRoute({
  operationId: 'createEstimate',
  tags: ['generations'],
  method: 'post',
  path: '/v1/estimates',
  summary: 'What a generation would take: worker seconds and cost, measured on recent runs',
  description: 'The same body as POST /v1/generations; nothing is queued or charged.',
  security: SECURITY,
  request: { body: { required: true, content: { 'application/json': { schema: GenerationRequest } } } },
  responses: {
    200: { description: 'The estimate', content: { 'application/json': { schema: EstimateView } } },
    ...pick(400, 401, 413, 415, 503),
    400: promptBadRequest,
  },
});

/**
 * The 404 for an id this caller has no generation under. `param: "id"` tells it from the 404 for a
 * path the API has no route for (`param: null`), without reading the message.
 */
function unknownGeneration(id: string): NotFoundError {
  return new NotFoundError(`no generation ${id}`, { param: 'id' });
}

/** A route on one of the caller's generations: its id in the path, answered with one JSON body or the same errors. */
function generationRoute<M extends 'get' | 'post' | 'delete', P extends string, S extends z.ZodType>(
  method: M,
  path: P,
  doc: { operationId: string; summary: string; description?: string; ok: string; conflicts?: ApiErrorCodeName[] },
  schema: S,
) {
  return createRoute({
    operationId: doc.operationId,
    tags: ['generations'],
    method,
    path,
    summary: doc.summary,
    ...(doc.description ? { description: doc.description } : {}),
    security: SECURITY,
    request: { params: IdParam },
    responses: {
      200: { description: doc.ok, content: { 'application/json': { schema } } },
      // 413: the body limit guards every /v1 route, these included (they take no body).
      ...pick(400, 401, 404, 409, 413, 503),
      ...(doc.conflicts ? { 409: conflict(...doc.conflicts) } : {}),
    },
  });
}

/**
 * The PNG bytes one answer carries inline (include=b64), together: their base64 (a third more) and the
 * rest of the view stay under Lambda's 6 MB response limit.
 */
export const MAX_INLINE_IMAGE_BYTES = 4 * 1024 * 1024;
/**
 * The most one list page's generations take, each JSON-escaped as Lambda carries the body (5 MiB: under
 * Lambda's 6 MB response limit, with room for the envelope and headers). A page that would pass it ends
 * early, with next_cursor set, as a filtered page may.
 */
export const LIST_ANSWER_BUDGET_BYTES = 5 * 1024 * 1024;

const getGeneration = createRoute({
  operationId: 'getGeneration',
  tags: ['generations'],
  method: 'get',
  path: '/v1/generations/{id}',
  summary: 'A generation: status, progress, signed output URLs, usage',
  security: SECURITY,
  description: `With include=b64, each listed image comes in the answer too (outputs[].b64_png, base64; b64_jpeg for JPEG outputs, b64_webp for WebP), so one GET with Prefer: wait has the images: at most ${MAX_INLINE_IMAGE_BYTES} bytes of images together (a 413 payload_too_large past it: fetch them by url). Without it, only links.`,
  request: {
    params: IdParam,
    headers: z.object({ Prefer }),
    query: z.object({
      include: z.enum(['b64'], { error: 'include takes "b64" (the images in the answer, base64)' }).optional().openapi({ description: 'b64: each listed image inline as outputs[].b64_png (a JPEG: b64_jpeg, a WebP: b64_webp)' }),
    }),
  },
  responses: {
    200: { description: 'The generation', headers: preferenceApplied, content: { 'application/json': { schema: GenerationView } } },
    ...pick(400, 401, 404, 409, 410, 413, 503),
  },
});

const listFrames = generationRoute(
  'get',
  '/v1/generations/{id}/frames',
  {
    operationId: 'listGenerationFrames',
    summary: "A generation's progress frames: each published image every 10 steps (the recipe's frame_every), as signed URLs",
    description: 'Stored with the images when the run ends: empty while it is queued or running, and for a withheld image. A frame has the size of its optimization stage (a large image starts smaller). They expire with the outputs.',
    ok: 'The frames, by image index and step',
  },
  GenerationFrameList,
);

/** An image's index in a path: digits only, as the view's `index` (no sign, exponent or leading zero). */
const OutputIndexParam = IdParam.extend({
  index: z
    .string()
    .regex(/^(?:0|[1-9]\d{0,5})$/, 'must be an image index: 0, 1, … (a whole number, as the generation\'s outputs[].index)')
    .transform(Number)
    .openapi({ param: { name: 'index', in: 'path' }, type: 'integer', minimum: 0, maximum: 999_999 }),
});

const getOutput = createRoute({
  operationId: 'getGenerationOutput',
  tags: ['generations'],
  method: 'get',
  path: '/v1/generations/{id}/outputs/{index}',
  summary: "One image of a generation, by a link that does not expire: a redirect to a freshly signed URL of the image",
  description:
    "A stable address for an image, to keep where the view's `outputs[].url` (signed, valid for an hour by default) would go stale: each request is authenticated and answered 302 with a newly signed URL, never valid past the outputs' expiry. HTTP clients drop the Authorization header when a redirect leaves the API's origin, as they should: the signed URL needs none (S3 refuses a request that carries both). 409 job_not_finished while the generation is queued or running; 404 (param index) for an index it did not make, or an image the output check withheld; 410 output_gone once the generation was deleted or its outputs expired (the message names the image's seed, which makes it again). A client that follows redirects gets the image's bytes (its Content-Type), not JSON: read the answer as a blob (openapi-fetch: `parseAs: \"blob\"`), or ask with redirects off and read Location.",
  security: SECURITY,
  request: { params: OutputIndexParam },
  responses: {
    302: {
      description: 'The image is at Location, a signed URL that works until Link-Expires-At (as the view\'s outputs[].expires_at)',
      headers: {
        Location: { required: true, description: 'The signed URL of the image (PNG, or JPEG or WebP for output_format "jpeg" or "webp")', schema: { type: 'string' as const, format: 'uri' } },
        'Link-Expires-At': { description: 'When the signed URL stops working (RFC 3339)', schema: { type: 'string' as const, format: 'date-time' } },
        'Cache-Control': { description: '`private, no-store`: the next request signs a new URL', schema: { type: 'string' as const } },
      },
    },
    ...pick(400, 401, 404),
    409: conflict('job_not_finished'),
    ...pick(410, 413, 503),
  },
});

const deleteGeneration = generationRoute(
  'delete',
  '/v1/generations/{id}',
  {
    operationId: 'deleteGeneration',
    summary: "Delete a finished generation's images and frames, and blank its prompts and labels (idempotent)",
    description:
      'For a generation that has ended (cancel a queued or running one first). Its images and frames are removed from storage; its prompts, metadata, content flags and warnings are blanked in the record, which stays (with its usage) so the generation still shows in lists, with `deleted_at`; the Idempotency-Key and the hash of the body are dropped from it (a retry with the key still answers this generation, whatever its body). Not removed: an init image it used (an upload of its own, removed by the upload retention of the deployment, or at once by DELETE /v1/uploads/{id}). Where the deployment keeps earlier versions of stored objects (AWS prod: versioning), they expire 30 days later (images 1 day): the removal is complete then. 409 job_not_finished while it is queued or running.',
    ok: 'The generation as it now stands',
    conflicts: ['job_not_finished'],
  },
  GenerationView,
);

const listGenerations = createRoute({
  operationId: 'listGenerations',
  tags: ['generations'],
  method: 'get',
  path: '/v1/generations',
  summary: "The caller's generations, newest first; or the one an Idempotency-Key made",
  description: `One request reads at most ${LIST_SCAN_LIMIT} generations, the largest page: \`limit\` of them, or with \`status\`, \`webhook_status\`, \`api_key_id\` or \`metadata[KEY]\` up to ${LIST_SCAN_LIMIT} looked at to find \`limit\` that match (keep paging while \`next_cursor\` is set). \`created_before\` and \`created_after\` bound the list itself (ids sort by creation time), so they cost no scan; with the others they narrow it. A page also ends early, \`next_cursor\` set, once its generations pass about 5 MiB (only labels and prompts near their limits come close). Every list request counts as one request against the account's rate limit, whatever its size (ADR 0026).`,
  security: SECURITY,
  request: { query: ListQuery },
  responses: {
    200: {
      description: 'A page of generations; with idempotency_key, the one the key made, or none',
      headers: { 'Idempotency-Key': { description: 'With idempotency_key: the key looked up (an API that predates the parameter answers its plain list without it)', schema: { type: 'string' } } },
      content: { 'application/json': { schema: GenerationList } },
    },
    ...pick(400, 401, 503),
    409: {
      ...conflict('idempotency_in_progress'),
      headers: { 'Retry-After': { description: 'On idempotency_in_progress: seconds to wait before asking again', schema: { type: 'integer', minimum: 0 } } },
    },
  },
});

const redeliverWebhook = generationRoute(
  'post',
  '/v1/generations/{id}/webhook/redeliver',
  {
    operationId: 'redeliverWebhook',
    summary: "Send an ended generation's webhook event again, now",
    description: `For a receiver that was down: the same event (the same \`webhook-id\`, so a receiver that processed it already may drop it), signed afresh, sent once before the answer (within ${CANCEL_WEBHOOK_TIMEOUT_MS / 1000} s). Its outcome is in the answer's \`webhook\` (delivered, or pending with \`last_error\` and retries to come). A delivered or given-up event is sent with a fresh retry schedule (${WEBHOOK_MAX_ATTEMPTS} attempts over about 9 hours); a pending one is tried now instead of at its next retry, within its schedule; one being sent at this moment is left to that attempt.`,
    ok: 'The generation after the attempt',
    conflicts: ['job_not_finished', 'no_webhook'],
  },
  GenerationView,
);

const cancelGeneration = generationRoute(
  'post',
  '/v1/generations/{id}/cancel',
  {
    operationId: 'cancelGeneration',
    summary: 'Cancel a generation (idempotent)',
    description: 'A queued job is canceled at once; a running one gets cancel_requested, and its worker stops it within about a second (its progress interval) and a step; it ends canceled and is not billed, even when its last step came first. A cancel that comes while its images are being stored is too late: it ends succeeded, and is billed as one. 409 for succeeded or failed jobs.',
    ok: 'The generation after the cancel',
    conflicts: ['job_terminal'],
  },
  GenerationView,
);

export function registerGenerationRoutes(
  app: OpenAPIHono<AppEnv>,
  deps: AppDeps,
  ctx: { clock: () => Date; ledger: IdempotencyLedger; log: (entry: AppLogEntry) => void; waitGate?: RateGate; uploadGate?: RateGate },
): void {
  const { blobs, jobs, queue, limits } = deps;
  const viewOptions = viewOptionsFromConfig(limits); // the worker price and output retention the views show
  const readFleetCached = cachedFleet(deps.fleet ?? ((now) => readFleet(blobs, now)), ctx.clock, {
    ...(deps.fleetCacheMs !== undefined ? { ttlMs: deps.fleetCacheMs } : {}),
    onFailure: (error) => ctx.log({ level: 'warn', msg: 'worker presence not read; queued views and estimates say nothing of the fleet', error: String(error) }),
  });
  /** The fleet as a queued view and an estimate show it (ADR 0040); null where it does not read: a hint is not worth a failed answer. */
  // A queued generation's own: whether any worker running reads its request (a deploy or a rollback).
  const queueState = (spec?: Readonly<Record<string, unknown>>) =>
    readFleetCached().then((f) => ({ ...fleetCounts(f), note: fleetNote(f, { scales: deps.fleetScales ?? true, ...(spec ? { unread: unreadByFleet(f, spec) } : {}) }) }), () => null);
  /** A queued generation's view says whether a worker is there to take it. */
  const withQueue = async (job: JobRecord, shown: Promise<z.output<typeof GenerationView>>): Promise<z.output<typeof GenerationView>> => {
    if (job.status !== 'queued') return shown;
    const [v, queue] = await Promise.all([shown, queueState(job.spec)]);
    return queue ? { ...v, queue } : v;
  };
  const view = (job: JobRecord) => withQueue(job, generationView(job, blobs, limits.signedUrlTtlSec, ctx.clock(), viewOptions));
  /** What the POST answers: the caller that asked for a webhook gets its signing secret here. */
  const createdView = (job: JobRecord) => withQueue(job, generationView(job, blobs, limits.signedUrlTtlSec, ctx.clock(), { ...viewOptions, webhookSecret: true }));
  const webhookPolicy = { allowPrivate: limits.webhookAllowPrivate ?? false, ...(limits.webhookPorts ? { ports: limits.webhookPorts } : {}) };
  const promptPolicy = deps.promptPolicy ?? (async () => defaultPromptPolicy());
  /**
   * The first attempt of the event a cancel while queued owes: no worker announces that end (the
   * message it gets later finds the job ended). The same bookkeeping as the worker's and the sweep's
   * (deliverWebhook), its deadline CANCEL_WEBHOOK_TIMEOUT_MS (ADR 0013, "a cancel's own attempt").
   */
  const cancelDelivery: WebhookDeliveryDeps = {
    jobs,
    blobs,
    send: deps.webhookSend ?? httpWebhookSender(webhookPolicy, { timeoutMs: CANCEL_WEBHOOK_TIMEOUT_MS }),
    signedUrlTtlSec: limits.signedUrlTtlSec,
    view: viewOptions,
    clock: ctx.clock,
    log: ctx.log,
  };

  /**
   * The prompt policy (ADR 0015) on the prompts that pull the image (a negative prompt, or a negative
   * weight, steers away from its text). A refusal is a 400 `content_policy`; flags go with the job.
   */
  async function screenedPrompts(owner: string, request: ParsedGenerationRequest): Promise<ContentFlag[]> {
    const prompts =
      request.prompt !== undefined
        ? [{ text: request.prompt, param: 'prompt' }]
        : (request.prompts ?? []).flatMap((p, i) => (p.weight > 0 ? [{ text: p.text, param: `prompts.${i}.text` }] : []));
    const hits = (await promptPolicy(owner)).screen(prompts);
    const refusal = hits.find((hit) => hit.action === 'refuse');
    if (refusal) {
      throw new ValidationError(refusalMessage(refusal), refusal.param, { code: 'content_policy' });
    }
    return hits.map(({ rule, category, term, message, param }) => ({ rule, category, term, message, param }));
  }

  /**
   * Takes one of the owner's places among its active (queued or running) generations (ADR 0016) for
   * the job `jobId` this request would make: its `pending/active` marker is written first, and only
   * then are the owner's markers counted. A request is let through only by a count, made after its
   * own marker was written, that finds at most the limit (its own included). Of any requests let
   * through, the last to count saw the markers of all the others (each was written before its own
   * request counted), so no more than the limit are ever let through, however many race.
   *
   * Over the limit, the markers are ranked oldest first (job ids sort newest first, so an older one's
   * key is greater): with `max` or more older than its own, the request is refused at once; otherwise
   * (a burst, each seeing the others' markers) it looks again a few times while the others, ranked
   * after it, take theirs away. So of a burst at an empty account the oldest `max` get through, not
   * none. A refused request takes its marker away; the place is the caller's to give back on any later
   * failure before its job is made (`givePlaceBack`).
   */
  async function takeActivePlace(owner: string, jobId: string): Promise<void> {
    const max = limits.maxActiveJobs ?? DEFAULT_MAX_ACTIVE_JOBS;
    const mine = pendingJobKey('active', owner, jobId);
    let others = 0;
    let theirs: string[] = [];
    try {
      await markPending(blobs, 'active', owner, jobId);
      for (let look = 0; ; look++) {
        // One page: the limit is at most 1000 (shared/config.ts), a page's size; an owner with more
        // markers than a page is over any limit.
        const page = await listKeys(blobs, `${PENDING_JOBS_PREFIX}active/${owner}/`);
        const keys = page.keys;
        if (page.cursor === undefined && !keys.includes(mine)) {
          // Written, yet not listed: the count cannot be trusted to include this request.
          throw new RetryableError('the active generations could not be counted; retry', { code: 'unavailable' });
        }
        theirs = keys.filter((key) => key !== mine);
        others = theirs.length;
        if (page.cursor === undefined && others < max) return;
        const older = keys.filter((key) => key > mine).length;
        if (older >= max || page.cursor !== undefined || look >= ACTIVE_RECOUNTS) break;
        await new Promise((r) => setTimeout(r, ACTIVE_RECOUNT_PAUSE_MS * 2 ** look));
      }
    } catch (error) {
      await givePlaceBack(owner, jobId);
      throw error;
    }
    try {
      await blobs.delete(mine);
    } catch (error) {
      // The 429 stands: the marker holds a place until the queued-job sweep drops it (no job has it).
      ctx.log({ level: 'warn', msg: "a refused request's active-job marker could not be removed: it counts against its owner until the queued-job sweep drops it", job_id: jobId, owner, error: operatorMessage(error) });
    }
    // `others` may count requests being refused at this moment too (each counts with its marker
    // written): the message names the limit, which is what was reached, not a count that may be inflated.
    throw new TooManyRequestsError(`at most ${max} generations may be queued or running at once, and that many are (or are being made). Retry when some have finished.`, {
      code: 'too_many_active_jobs',
      retryAfterSec: await soonestEndSec(owner, theirs),
    });
  }

  /**
   * When a place is likely to come free, for a 429's Retry-After: the soonest end among the owner's
   * oldest active generations (the ones most likely running), each running one's remaining time
   * extrapolated from its own progress so far. Queued ones only (or none readable): 30 s. Bounded
   * reads, however many are active; a read that fails counts as unknown.
   */
  async function soonestEndSec(owner: string, markerKeys: readonly string[]): Promise<number> {
    const now = ctx.clock().getTime();
    // Job ids sort newest first: the greatest keys are the oldest markers.
    const oldest = [...markerKeys].sort().reverse().slice(0, RETRY_AFTER_READS);
    const ends = await Promise.all(
      oldest.map(async (key) => {
        const named = parsePendingJobKey(key);
        const job = named ? await jobs.get(owner, named.jobId).catch(() => null) : null;
        // started_at is the first attempt's, and a later attempt counts its steps from 0 again: only a
        // first attempt's pace is known.
        if (!job || job.status !== 'running' || job.started_at === null || job.attempts !== 1 || job.progress.step <= 0) return Infinity;
        // A lease that lapsed: its worker has stopped renewing it (died), so its pace says nothing now.
        if (typeof job.lease_expires_at === 'string' && Date.parse(job.lease_expires_at) < now) return Infinity;
        if (job.progress.step >= job.progress.total) return 0; // every step done: its images are being stored
        // A start in the future is a worker clock ahead of this one: its pace is unknown (it read as
        // no time at all, a run about to end: Retry-After 1 while it had most of its steps to go).
        if (Date.parse(job.started_at) > now) return Infinity;
        const elapsedSec = (now - Date.parse(job.started_at)) / 1000;
        return (elapsedSec * (job.progress.total - job.progress.step)) / job.progress.step;
      }),
    );
    const soonest = Math.min(...ends);
    return Number.isFinite(soonest) ? Math.min(RETRY_AFTER_MAX_SEC, Math.max(1, Math.ceil(soonest))) : RETRY_AFTER_QUEUED_SEC;
  }

  /**
   * The owner's monthly spend limit (ADR 0033): refused once this month's cost, as GET /v1/usage
   * totals it, has reached it. Nothing to compare where no cost is known (no price), and an owner
   * without a limit costs one read of a document that is not there. A limit or a month that does not
   * read is a 409 corrupt_record (the limit is never taken for none, the month never for zero).
   */
  async function checkSpendLimit(owner: string, now: Date): Promise<void> {
    const limit = effectiveSpendLimit(await readSpendLimits(blobs, owner));
    if (limit === null) return;
    const spent = await spentThisMonthUsd(blobs, owner, now, limits.workerHourlyUsd);
    if (spent === null || spent < limit.monthly_usd) return;
    throw new SpendLimitReachedError(
      limit.setter === 'account'
        ? `this month's cost, $${spent}, has reached the account's monthly spend limit of $${limit.monthly_usd}: new generations are refused until ${nextMonthStart(now)} (the next UTC month), unless the limit is raised or removed (PUT or DELETE /v1/spend-limit)`
        : `this month's cost, $${spent}, has reached the monthly limit of $${limit.monthly_usd} the operator set for this account: new generations are refused until ${nextMonthStart(now)} (the next UTC month), unless the operator raises it`,
    );
  }

  /** The place `takeActivePlace` took for a job this request will not make (best effort, as every marker removal). */
  const givePlaceBack = (owner: string, jobId: string) => clearPending(blobs, 'active', owner, jobId);

  /**
   * The request as a job spec: the deployment's default model filled in when it names none, the
   * model, the webhook URL and the upload checked. (The prompts are screened apart: not on a replay.)
   */
  async function checkedSpec(owner: string, request: ParsedGenerationRequest): Promise<GenerationSpec> {
    const models = await deps.models();
    const model = request.model ?? models.find((m) => m.default)?.id;
    if (model === undefined) throw new ValidationError('this deployment has no default model: name one in "model" (GET /v1/models lists them)', 'model');
    const { webhook_url: webhookUrl, metadata: _labels, width: askedWidth, height: askedHeight, ...fields } = request;
    if (webhookUrl !== undefined) checkWebhookUrl(webhookUrl, webhookPolicy);
    const info = models.find((m) => m.id === model);
    if (!info) throw new ValidationError(`unknown model "${model}" (available: ${models.map((m) => m.id).join(', ') || 'none'})`, 'model');
    // No size named: the model's own (a 64 px model's image is not upscaled to 224 and billed for it);
    // a width alone makes a square.
    const width = askedWidth ?? askedHeight ?? defaultSideFor(info.input_size);
    const spec: GenerationSpec = storedOutputFormat({ ...fields, width, height: askedHeight ?? width, model });
    // Where the API reads the bundle's hash; else (the image's default model in AWS) the worker checks it.
    if (spec.model_version !== undefined && info.content_hash !== undefined && !isModelVersion(info.content_hash, spec.model_version)) {
      throw new ValidationError(modelVersionMismatch(model, info.content_hash, spec.model_version), 'model_version');
    }
    if (spec.init.startsWith('upload:')) await checkUpload(owner, spec.init.slice('upload:'.length));
    // A URL's form and address now; the image itself only once the generation is to be made (initStored).
    else if (isInitUrl(spec.init)) checkOutboundUrl(spec.init, webhookPolicy, 'init');
    // An inline image is here already: checked whole now, as an upload is, so an estimate says too.
    else if (isInitDataUri(spec.init)) await initDataImage(spec.init);
    return spec;
  }

  /**
   * A data: URI init's image, checked as an upload is (ADR 0042); a 400 on `init` saying why not. A POST
   * asks twice (its checks, then the store): the last image checked is kept, so a PNG is inflated once.
   */
  async function initDataImage(raw: string): Promise<{ bytes: Uint8Array; contentType: InitImageType }> {
    if (lastDataImage?.raw === raw) return lastDataImage.image;
    const image = await checkInitDataUri(raw, limits.maxUploadBytes);
    if (!image.ok) throw new ValidationError(`init: ${image.reason}`, 'init');
    lastDataImage = { raw, image };
    return image;
  }
  let lastDataImage: { raw: string; image: { bytes: Uint8Array; contentType: InitImageType } } | undefined;

  /**
   * The spec with its URL init fetched (ADR 0038), or its data: URI decoded (ADR 0042), and stored as
   * an upload of the owner's, counted among the account's uploads. Run once per generation made: a
   * replay answers with its job and fetches nothing.
   */
  async function initStored(c: Context<AppEnv>, owner: string, spec: GenerationSpec): Promise<GenerationSpec> {
    if (!isInitToStore(spec.init)) return spec;
    // An account this instance already refused (until its Retry-After) is not fetched for.
    ctx.uploadGate?.refuseIfKnownOver(c);
    const image = isInitDataUri(spec.init)
      ? await initDataImage(spec.init)
      : await fetchInitImage(spec.init, { policy: webhookPolicy, maxBytes: limits.maxUploadBytes, ...(deps.initFetchResolve ? { resolve: deps.initFetchResolve } : {}) });
    // Counted once there is an image to store (it is kept for days, as an upload: ADR 0026); a URL that
    // gives none spends nothing, as a refused upload body does not.
    const rateLimitFields = ctx.uploadGate ? await ctx.uploadGate.check(c) : null;
    for (const [name, value] of Object.entries(rateLimitFields ?? {})) c.header(name, value, { append: true });
    const uploadId = newId(ctx.clock().getTime());
    const key = uploadKey(owner, uploadId);
    await blobs.put(key, image.bytes, { contentType: image.contentType });
    return { ...spec, init: `upload:${uploadId}` };
  }

  /**
   * The upload exists, fits the limit and is a PNG the worker can decode: another format, too many
   * pixels, a damaged or cut-short file (the worker's own check: chunk CRCs, the palette, the pixel
   * data inflated to the header's size) is refused now with the reason, not queued to fail on a GPU.
   * A JPEG gets the worker's segment walk (kind, size, scans, cut short); its compressed data is
   * decoded only on the worker (shared/jpeg.ts says why).
   */
  async function checkUpload(owner: string, uploadId: string): Promise<void> {
    const key = uploadKey(owner, uploadId);
    // The size first, so an object over the limit is never read into memory (a signed PUT fixes
    // the length, so it cannot grow between the two reads).
    const meta = await blobs.head(key);
    if (!meta) throw uploadNotFound(uploadId);
    if (meta.size > limits.maxUploadBytes) {
      throw new PayloadTooLargeError(`the uploaded image is ${meta.size} bytes, over the ${limits.maxUploadBytes}-byte limit`, { param: 'init' });
    }
    // An upload named again (n runs of one init, an estimate then the POST) is not inflated again.
    if (checkedUploads.get(key) === meta.etag) return;
    const object = await blobs.get(key);
    if (!object) throw uploadNotFound(uploadId);
    const check = await checkInitImage(object.body);
    if (!check.ok) throw new ValidationError(`upload ${uploadId} cannot be an init image: ${check.reason}`, 'init');
    checkedUploads.delete(key);
    checkedUploads.set(key, object.etag);
    if (checkedUploads.size > CHECKED_UPLOADS_KEPT) checkedUploads.delete(checkedUploads.keys().next().value!);
  }
  /**
   * An upload that does not exist (never PUT, expired, deleted, or another account's: keys are per
   * owner) has its own code, apart from validation_error for one that is there but is not a usable
   * image: a client uploads the file again on this one only, never a file the API refused.
   */
  function uploadNotFound(uploadId: string): ValidationError {
    return new ValidationError(`no upload ${uploadId}: upload the image first (POST /v1/uploads)`, 'init', { code: 'upload_not_found' });
  }
  /** Uploads whose whole-file check passed, by key, with the etag checked: this process's, oldest first. */
  const checkedUploads = new Map<string, string>();

  /**
   * Marks a queued, never-started job `failed` with code `enqueue_failed`, which a retry with the same
   * Idempotency-Key re-queues. The write is tried a few times (the store often blips with the queue):
   * - `failed`: the job is failed (by this or an earlier try whose reply was lost), or it was never
   *   created; nothing will send it;
   * - `taken`: the record shows the send landed after all (a worker has taken the job, or it has
   *   ended: a reply lost or late past the SDK's deadline), so the job is the caller's and no failure;
   * - `unrecorded`: every write failed; the record may still say queued, with its `pending/msg` marker,
   *   which the sweep would send.
   */
  async function markEnqueueFailed(owner: string, id: string, message = 'the job could not be queued; submit it again'): Promise<'failed' | 'taken' | 'unrecorded'> {
    const now = ctx.clock().toISOString();
    for (let attempt = 0; attempt < MARK_FAILED_TRIES; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, MARK_FAILED_PAUSE_MS * attempt));
      let outcome: 'failed' | 'taken' = 'taken';
      try {
        await jobs.update(owner, id, (cur) => {
          if (cur.status === 'failed' && cur.error?.code === 'enqueue_failed') {
            outcome = 'failed'; // an earlier try landed though its reply was lost
            return null;
          }
          outcome = cur.status === 'queued' && cur.attempts === 0 ? 'failed' : 'taken';
          return outcome === 'failed' ? { ...cur, status: 'failed', finished_at: now, error: { code: 'enqueue_failed', message } } : null;
        });
      } catch (error) {
        // No record: the create never landed, so nothing can run and nothing holds the place its marker took.
        if (error instanceof NotFoundError) outcome = 'failed';
        else continue;
      }
      // Failed: it no longer counts against its owner (a retry that re-queues it marks it again).
      if (outcome === 'failed') await clearPending(blobs, 'active', owner, id);
      return outcome;
    }
    // Every try threw, but one that wrote may have lost its reply (and the later ones their reads): one
    // last read, so a job already failed is answered as failed (a 503), not as one the sweep will send.
    const last = await jobs.get(owner, id).catch(() => undefined);
    if (last === null || (last?.status === 'failed' && last.error?.code === 'enqueue_failed')) {
      await clearPending(blobs, 'active', owner, id);
      return 'failed';
    }
    if (last !== undefined && !(last.status === 'queued' && last.attempts === 0)) return 'taken';
    return 'unrecorded';
  }

  /**
   * Makes sure a job its caller is told failed (a 503, or a claim another request took over) never
   * runs: failed `enqueue_failed`, or, when the record cannot be written, its `pending/msg` marker
   * rewritten as a refusal that the sweep and a replay honour by failing it (ADR 0012). False only when
   * both writes failed: then a create that landed despite its error could still be sent by the sweep.
   */
  async function refuseJob(owner: string, id: string, message?: string): Promise<'failed' | 'taken' | 'unrecorded'> {
    const outcome = await markEnqueueFailed(owner, id, message);
    if (outcome !== 'unrecorded') return outcome;
    try {
      await markMessageRefused(blobs, owner, id);
      // It will not run unless a retry re-queues it (which marks its place again): its place is freed,
      // so the retry the 503 invited is not refused for the limit this job itself fills. Best effort.
      await clearPending(blobs, 'active', owner, id);
      return 'failed';
    } catch (error) {
      ctx.log({ level: 'error', msg: 'a refused job could be neither failed nor marked refused: if its create landed, the sweep may still send it', job_id: id, owner, error: operatorMessage(error) });
      return 'unrecorded';
    }
  }

  /**
   * The markers of a job about to be queued: its message not yet sent (ADR 0012), its place among its
   * owner's active jobs (ADR 0016; already there when `takeActivePlace` took it for this job) and, with
   * a webhook, the event it owes (ADR 0013).
   */
  const markQueuedJob = (owner: string, id: string, withWebhook: boolean, { placeTaken = false } = {}) =>
    Promise.all([
      markPending(blobs, 'msg', owner, id),
      ...(placeTaken ? [] : [markPending(blobs, 'active', owner, id)]),
      ...(withWebhook ? [markPending(blobs, 'hook', owner, id)] : []),
    ]);

  /**
   * After the create, whether the Idempotency-Key's claim still names this request's job (ADR 0004):
   * the ledger re-writes it conditionally, so a stale-claim takeover either came first (false) or can no
   * longer happen. When that cannot be told (the store fails) the job is refused and the claim released,
   * as for a failed create: the caller is told 503, and nothing sends the job behind its back.
   */
  async function claimStillOurs(owner: string, key: string, jobId: string): Promise<boolean> {
    try {
      return await ctx.ledger.confirm({ owner, key, jobId, now: ctx.clock() });
    } catch (error) {
      await refuseJob(owner, jobId);
      await ctx.ledger.release({ owner, key, jobId });
      throw error;
    }
  }

  const queuedJobDeps = { blobs, jobs, queue, clock: ctx.clock, ...(deps.log ? { log: deps.log } : {}) };

  /**
   * Sends the queue message. If that fails the caller is told 503 only once the job is recorded failed
   * (so nothing sends it behind the caller's back); when even that write fails, the job stays queued
   * with its `pending/msg` marker, which the sweep sends within about 7 minutes, and the caller is told
   * 202: the job will run (ADR 0012).
   */
  async function enqueue(job: JobRecord): Promise<void> {
    try {
      await sendJobMessage(queue, job);
    } catch (cause) {
      const outcome = await markEnqueueFailed(job.owner, job.id);
      if (outcome === 'failed') {
        throw new RetryableError('the job queue is unavailable; retry (with the same Idempotency-Key)', { code: 'queue_unavailable', cause });
      }
      if (outcome === 'unrecorded') {
        // The marker stays: it is what makes the sweep send the message.
        ctx.log({ level: 'warn', msg: 'job message send failed and the job could not be failed: answered as made; the queued-job sweep sends it', job_id: job.id, owner: job.owner, error: operatorMessage(cause) });
        return;
      }
      // A send whose reply was lost may have landed, and a worker may already run (and bill) the job:
      // then it is answered as made, with its id and webhook secret, never a 503 the caller would retry.
      ctx.log({ level: 'warn', msg: 'job message send failed, but a worker has taken the job: answered as made', job_id: job.id, owner: job.owner, error: operatorMessage(cause) });
    }
    // Sent: the marker's work is done. Without this delete every job waiting over 5 minutes in a
    // backlog would be sent again by the sweep.
    await clearPending(blobs, 'msg', job.owner, job.id);
  }

  /**
   * With `Prefer: wait=N`, the job as it stands once it has ended or N seconds have passed (capped by
   * the deployment, and said in Preference-Applied); otherwise the job as given. The record is read
   * every 250 ms at first, then every second (ADR 0024).
   */
  async function heldUntilEnded(c: Context<AppEnv>, job: JobRecord): Promise<JobRecord> {
    const waitSec = preferredWaitSec(c.req.header('Prefer'), limits.maxWaitSec ?? 0);
    if (waitSec === null) return job;
    // Each wait holds an API instance: the account's holds are counted over one longest wait (a job
    // already ended, or a wait of 0, holds nothing), and past its budget the preference is not honoured
    // (no Preference-Applied; the caller polls). An unavailable counter holds, as the request limit
    // lets requests through.
    if (waitSec > 0 && !isTerminal(job.status) && ctx.waitGate && (await ctx.waitGate.decide(c))?.allowed === false) return job;
    // Counted from the request's arrival, so the whole request fits the deployment's cap (which the
    // CDK sets under the Lambda's timeout); no read starts in the last 250 ms of it. On the monotonic
    // clock: a wall clock stepped back by NTP held the wait that much longer (into a gateway timeout).
    const until = (c.get('receivedMono') ?? performance.now()) + waitSec * 1000;
    const signal = c.req.raw.signal;
    let latest = job;
    // The signal aborts when the caller goes, and when the server shuts down (the local server's
    // adapter): the pause ends at once, and the wait answers with the generation as it is now.
    for (let pause = 250; !isTerminal(latest.status) && until - performance.now() > 250 && !signal?.aborted; pause = Math.min(1000, pause * 2)) {
      await pauseUnlessAborted(Math.min(pause, Math.max(0, until - performance.now() - 250)), signal);
      let again: JobRecord | null;
      try {
        again = await jobs.get(latest.owner, latest.id);
      } catch (error) {
        // A record that no longer reads is answered as a plain GET would (409 corrupt_record); a
        // store that is down ends the wait with what was read last.
        if (error instanceof CorruptDocumentError) throw error;
        break;
      }
      if (!again) break;
      latest = await endedAtDeadline(again, { webhook: false });
    }
    c.header('Preference-Applied', `wait=${waitSec}`);
    return latest;
  }

  /**
   * What follows a queued generation's end as canceled (a caller's cancel, or its cancel_after
   * deadline, ADR 0034): its place among the owner's active ones is given back, images an earlier
   * attempt stored are removed, and its webhook's first attempt is made. Returns the record as it
   * then stands.
   */
  async function settleQueuedCancel(owner: string, id: string, canceled: JobRecord, opts: { webhook?: boolean } = {}): Promise<JobRecord> {
    let job = canceled;
    // Canceled while queued: it no longer counts against its owner (a running one is the worker's to end).
    await clearPending(blobs, 'active', owner, id);
    // Queued again after an attempt that stored images (put back after a storage fault on its
    // record): no record will name them. Best effort: the cancel stands, and the queued-job sweep
    // retries from the marker the worker left. (Never started: nothing stored, nothing to look at.)
    if (job.attempts > 0) {
      await settleStoredOutputs(blobs, job).catch((error) =>
        ctx.log({ level: 'warn', msg: 'stored images of a canceled generation were not removed; the queued-job sweep retries', job_id: id, owner, error: operatorMessage(error) }),
      );
    }
    // Its event's first attempt, now rather than at the next sweep (up to 2 minutes in AWS). Awaited
    // before the answer, never left running behind it: a Lambda is frozen once it has answered, and
    // an attempt frozen mid-way would hold its claim and record nothing. The sender's deadline bounds
    // the wait; a failure is recorded with its retry time, which the sweep keeps to. (A webhook
    // already tried, by a cancel before this one or a worker, is the sweep's: a repeat stays quick.)
    if (opts.webhook !== false && job.webhook?.attempts === 0 && webhookOwed(job)) {
      const recorded = await deliverWebhook(cancelDelivery, owner, id).then(
        () => true,
        (error: unknown) => {
          // The cancel stands either way; the marker brings the sweep to the event.
          ctx.log({ level: 'warn', msg: "a canceled generation's webhook attempt was not recorded; the queued-job sweep sends it", job_id: id, owner, error: operatorMessage(error) });
          return false;
        },
      );
      // The answer shows the attempt's outcome (delivered, or failed with its error); a read that
      // fails leaves the record the cancel wrote.
      if (recorded) job = (await jobs.get(owner, id).catch(() => null)) ?? job;
    }
    return job;
  }

  /**
   * A queued generation past its caller's deadline (cancel_after, ADR 0034) ends canceled when it is
   * read, as the worker that receives it or the next sweep would end it: a GET then shows how it
   * ended rather than `queued`. Conditional (a worker that claimed it meanwhile ends it within a step);
   * a write that fails leaves it to them, and the read answers with the record as it was. The webhook's
   * first attempt (up to CANCEL_WEBHOOK_TIMEOUT_MS) only with `webhook`: a plain GET has the time, a
   * held wait, a list or an image link does not (a wait near its cap would run past the Lambda's end);
   * the sweep sends it then, from the marker its POST left.
   */
  async function endedAtDeadline(job: JobRecord, opts: { webhook: boolean }): Promise<JobRecord> {
    const now = ctx.clock();
    if (job.status !== 'queued' || !pastCancelDeadline(job, now.getTime())) return job;
    let ended = false;
    let updated: JobRecord;
    try {
      updated = await jobs.update(job.owner, job.id, (cur) => {
        ended = cur.status === 'queued' && pastCancelDeadline(cur, now.getTime());
        return ended ? canceledRecord(cur, now.toISOString(), now.getTime()) : null;
      });
    } catch (error) {
      if (error instanceof CorruptDocumentError) throw error;
      ctx.log({ level: 'warn', msg: 'a queued generation past its cancel_after was not ended on read; its worker or the sweep ends it', job_id: job.id, owner: job.owner, error: operatorMessage(error) });
      return job;
    }
    if (!ended) return updated;
    // The end stands: what follows it is best effort here, and the sweep finishes what fails.
    return settleQueuedCancel(job.owner, job.id, updated, { webhook: opts.webhook }).catch((error: unknown) => {
      ctx.log({ level: 'warn', msg: 'a generation ended at its cancel_after on read; its place or webhook is left to the sweep', job_id: job.id, owner: job.owner, error: operatorMessage(error) });
      return updated;
    });
  }

  /**
   * A caller's change to one of its generations: a versioned read-modify-write, so a concurrent
   * progress write makes it re-read and re-apply. Another owner's id is a 404; a job so busy that every
   * try lost its race is a 503 `busy` (nothing was written; the caller can simply retry).
   */
  /** Why a generation's webhook cannot be sent again, or null. */
  function redeliveryRefusal(job: JobRecord): { code: ApiErrorCodeName; message: string } | null {
    if (job.webhook === undefined) return { code: 'no_webhook', message: `generation ${job.id} asked for no webhook` };
    if (job.deleted_at !== undefined) return { code: 'no_webhook', message: `generation ${job.id} is deleted: its event is not sent again` };
    if (job.error?.code === 'enqueue_failed') return { code: 'no_webhook', message: `generation ${job.id} was refused (its POST was answered 503): no event is owed; send the POST again with the same Idempotency-Key` };
    if (!isTerminal(job.status)) return { code: 'job_not_finished', message: `generation ${job.id} is ${job.status}: its event is sent when it ends` };
    return null;
  }

  async function callerUpdate(owner: string, id: string, action: 'cancel' | 'delete' | 'redeliver', mutate: JobMutation): Promise<JobRecord> {
    try {
      return await jobs.update(owner, id, mutate, { retries: CANCEL_RETRIES });
    } catch (error) {
      if (error instanceof NotFoundError) throw unknownGeneration(id);
      if (error instanceof PreconditionFailedError) throw new RetryableError(`the generation is being updated; retry the ${action}`, { code: 'busy', cause: error });
      throw error;
    }
  }

  /**
   * The create route's validation hook (ADR 0030, the compatibility review's F1). A body this version
   * refuses only for what a newer one added (a field, an enum value), under an Idempotency-Key whose
   * generation this version cannot read either (a newer API stored it, then the API was rolled back), is
   * the retry of that request: a 400 would tell the caller the request is wrong though its generation
   * exists and is billed when a newer worker runs it, and a caller who "fixes" it under a new key makes a
   * second one. Such a retry gets 503 with Retry-After instead, and a version that reads the body answers
   * it. A key whose generation reads here was made with a body this version reads, so this body is
   * another (a typo of a field, say): the usual 400 (validationHook), as is every other refusal.
   */
  async function refusedBody(result: { success: false; target: string; data?: unknown; error: { issues: ReadonlyArray<unknown> } }, c: Context<AppEnv>): Promise<never> {
    const key = c.req.header('Idempotency-Key');
    const newer = key !== undefined && IDEMPOTENCY_KEY_PATTERN.test(key) && result.target === 'json' ? newerWriterOf(GenerationRequest, result.data) : null;
    if (newer && key !== undefined) {
      try {
        // A newer claim is a 503 of its own (NewerClaimError); one whose job is not written yet a 409.
        await ctx.ledger.madeBy({ owner: c.get('owner'), key, now: ctx.clock() });
      } catch (error) {
        if (!(error instanceof NewerJobRecordError)) throw error;
        const id = /([^/]+)\.json$/.exec(error.key)?.[1];
        throw new NewerClaimError({
          message: `this Idempotency-Key already made generation ${id ?? '(unnamed)'}, with request fields this version of the service does not read (${newer.unknown.slice(0, 3).join(', ')}): the service is being deployed or rolled back; retry later with the same key and body`,
          cause: error,
        });
      }
    }
    validationHook(result as Parameters<typeof validationHook>[0]);
    throw new ValidationError(`invalid ${result.target}`); // not reached: validationHook throws for a failed result
  }

  app.openapi(createGeneration, async (c) => {
    try {
      const request = c.req.valid('json');
      const owner = c.get('owner');
      const idempotencyKey = c.req.header('Idempotency-Key');
      const now = ctx.clock();
      // The body as sent (no default model filled in), so a retry replays its job even if the
      // deployment's default model changed in between.
      const bodyHash = sha256Hex(canonicalJson(request));
      // Earlier versions filled defaults in before hashing: model "toy" (before the deployment default
      // existed) and a 224×224 size (before the model's own size was the default). A retry across such
      // an upgrade is still the same request, and gets the job it made then.
      const legacySize = { ...request, width: request.width ?? DEFAULT_SIDE, height: request.height ?? DEFAULT_SIDE };
      const variants = [legacySize, ...(request.model === undefined ? [{ ...request, model: 'toy' }, { ...legacySize, model: 'toy' }] : [])];
      const sameBodyHashes = [...new Set(variants.map((v) => sha256Hex(canonicalJson(v))))].filter((h) => h !== bodyHash);
      let jobId = newJobId(now.getTime());
      // The model, the upload and the webhook URL are checked, the prompts screened and a place among
      // the owner's active jobs taken before anything is claimed or made; a refused request gives its
      // place back and so leaves nothing (the caller may fix it, or wait, and retry with the same key),
      // as does any later failure before the job is made, and a replay (it makes no job). A retry of a
      // request whose job exists is answered with that job, whatever the checks say now (its upload
      // expired, its model withdrawn, the policy or the count changed); a key used with another body
      // is a 409 first.
      let spec: GenerationSpec;
      let contentFlags: ContentFlag[];
      for (let pass = 0; ; pass++) {
        try {
          // The four are independent (the models and the upload; the prompt policy; the owner's spend
          // limit and month; the owner's active markers), so they run at once: a POST waits on the
          // slowest, not on their sum. Each is waited for, and the first failure in the order they ran in
          // one after another (the spec, the prompts, the spend limit, the active limit) is the answer. The only write is this request's place among the active
          // jobs, given back when any check fails; the other markers, the claim and the create all come
          // after (ADR 0012, 0016).
          const [checked, screened, spend, limit] = await Promise.allSettled([checkedSpec(owner, request), screenedPrompts(owner, request), checkSpendLimit(owner, now), takeActivePlace(owner, jobId)]);
          if (limit.status === 'fulfilled' && (checked.status === 'rejected' || screened.status === 'rejected' || spend.status === 'rejected')) await givePlaceBack(owner, jobId);
          if (checked.status === 'rejected') throw checked.reason;
          if (screened.status === 'rejected') throw screened.reason;
          if (spend.status === 'rejected') throw spend.reason;
          if (limit.status === 'rejected') throw limit.reason;
          spec = checked.value;
          contentFlags = screened.value;
          break;
        } catch (error) {
          const atLimit = error instanceof TooManyRequestsError && error.code === 'too_many_active_jobs';
          let earlier = idempotencyKey === undefined ? null : await ctx.ledger.existingJob({ owner, key: idempotencyKey, bodyHash, sameBodyHashes, waitForJob: atLimit });
          if (earlier?.status === 'queued' && earlier.attempts === 0 && (await messageMarker(blobs, owner, earlier.id))?.state === 'refused') {
            // Its POST answered 503 and could only mark it refused (ADR 0012): it fails now, as the
            // claim's replay below does, and is never answered as queued (nothing would run it). At the
            // limit, the place it held is free now: the checks run once more, and on success the
            // replay below re-queues it, as the retry the 503 invited asks.
            earlier = await failRefusedJob(queuedJobDeps, earlier);
            if (atLimit && pass === 0 && requeueable(earlier)) continue;
          }
          // A job that failed to enqueue is not replayed from here: its retry would queue it again, which
          // is a new job as far as the policy and the limit are concerned.
          if (!earlier || requeueable(earlier)) throw error;
          // As in the replay below: long queued and never started, its message may have been lost (this
          // path runs at the active-job limit, just when an owner's jobs wait).
          const job = await resendIfMessageUnproven(queuedJobDeps, earlier);
          c.set('jobId', job.id);
          c.header('Location', `/v1/generations/${job.id}`);
          c.header('Idempotent-Replayed', 'true');
          return c.json(await createdView(await heldUntilEnded(c, job)), 200);
        }
      }
      if (idempotencyKey !== undefined) {
        let claim: Claim;
        try {
          claim = await ctx.ledger.claim({ owner, key: idempotencyKey, bodyHash, sameBodyHashes, jobId, now });
        } catch (error) {
          await givePlaceBack(owner, jobId);
          throw error;
        }
        if (claim.kind === 'replay') {
          let job = claim.job;
          c.set('jobId', job.id);
          try {
            if (job.status === 'queued' && job.attempts === 0) {
              // Its POST answered 503 and could only mark it refused: failed now, it is re-queued below,
              // as the retry the 503 invited asks.
              const marker = await messageMarker(blobs, owner, job.id);
              if (marker?.state === 'refused') job = await failRefusedJob(queuedJobDeps, job);
            }
            if (requeueable(job) && pastCancelDeadline(job, now.getTime())) {
              // Its cancel_after passed while it waited for this retry (ADR 0034): it ends canceled now,
              // and this answer says so, rather than `queued` for a job no worker would run.
              job = await jobs.update(owner, job.id, (cur) => (requeueable(cur) && pastCancelDeadline(cur, now.getTime()) ? canceledRecord(cur, now.toISOString(), now.getTime()) : null));
            } else if (requeueable(job)) {
              // The earlier attempt got a 503: a retry with the same key re-queues the same job. Of
              // concurrent retries only the one whose write made the transition sends the message.
              // The sweep drops the markers of a failed job: they go back before the job is queued again,
              // and its webhook is owed afresh (the job's end is still to come).
              await markQueuedJob(owner, job.id, job.webhook !== undefined);
              let requeued = false;
              job = await jobs.update(owner, job.id, (cur) => {
                requeued = requeueable(cur);
                // enqueued_at restarts the clock of the re-send after a lost message.
                return requeued
                  ? { ...cur, status: 'queued', finished_at: null, error: null, enqueued_at: now.toISOString(), ...(cur.webhook ? { webhook: freshWebhookState(cur.webhook) } : {}) }
                  : null;
              });
              if (requeued) {
                // Again after the transition: a sweep that read the job while it was still failed may
                // have removed the markers written before it.
                await markQueuedJob(owner, job.id, job.webhook !== undefined);
                await enqueue(job);
              }
            } else {
              // Queued for long and never started: its message may have been lost. The queued-job sweep
              // finds such jobs too; a replay need not wait for it. By the sweep's rule: only with its
              // `pending/msg` marker (a job merely waiting in a backlog has none).
              job = await resendIfMessageUnproven(queuedJobDeps, job);
            }
          } finally {
            // This request makes no job of its own. Its place goes back only now: a re-queue above has
            // marked its job's place first, so no count in between finds room that is not there.
            await givePlaceBack(owner, jobId);
          }
          c.header('Location', `/v1/generations/${job.id}`);
          c.header('Idempotent-Replayed', 'true');
          return c.json(await createdView(await heldUntilEnded(c, job)), 200);
        }
        jobId = claim.jobId;
      }
      try {
        spec = await initStored(c, owner, spec);
      } catch (error) {
        // Nothing was made: the place goes back and the key is free for a retry (a fixed URL, say).
        await givePlaceBack(owner, jobId);
        if (idempotencyKey !== undefined) await ctx.ledger.release({ owner, key: idempotencyKey, jobId });
        throw error;
      }
      let job: JobRecord;
      try {
        // The markers first: a process that dies after the create but before the send leaves them for
        // the queued-job sweep, which then sends the message; a webhook is owed from the start.
        // The URL as it will be called (canonical: "https:host/x" and a backslash form are stored as the
        // URL the sender requests), checked above.
        const webhook = request.webhook_url === undefined ? undefined : { url: checkWebhookUrl(request.webhook_url, webhookPolicy).href, secret: newWebhookSecret() };
        // From its first marker on, the job may exist (a create that failed may have landed): a
        // failure's line names it, beside the refusal logged under it.
        c.set('jobId', jobId);
        await markQueuedJob(owner, jobId, webhook !== undefined, { placeTaken: true });
        job = await jobs.create(
          newJobRecord({ id: jobId, owner, spec, now, idempotencyKey: idempotencyKey ?? null, bodyHash, contentFlags, ...(webhook ? { webhook } : {}), ...(request.metadata ? { metadata: request.metadata } : {}), apiKeyId: c.get('apiKeyId'), requestId: c.get('requestId'), ...(limits.maxSteps !== undefined ? { maxSteps: limits.maxSteps } : {}) }),
        );
      } catch (error) {
        // The create may have landed before the error (a timeout): such a job is refused (failed
        // `enqueue_failed`, or its marker rewritten as a refusal), so the sweep never sends it to run
        // behind the caller's back (the caller gets a 503 and may submit again); a retry with the same
        // key re-queues it. With a key, its claim is released otherwise, so that the retry is not a 409.
        await refuseJob(owner, jobId);
        if (idempotencyKey !== undefined) await ctx.ledger.release({ owner, key: idempotencyKey, jobId });
        // An image this request fetched from a URL goes with it, unless the create landed after all:
        // that job names it, and a retry with the same key re-queues it. Best effort.
        if (isInitToStore(request.init) && spec.init.startsWith('upload:') && (await jobs.get(owner, jobId).catch(() => undefined)) === null) {
          await blobs.delete(uploadKey(owner, spec.init.slice('upload:'.length))).catch(() => undefined);
        }
        throw error;
      }
      if (idempotencyKey !== undefined && !(await claimStillOurs(owner, idempotencyKey, jobId))) {
        // This request stalled past the claim's stale age and a retry took the key over (ADR 0004): one
        // key, one job. Ours is refused before anything sends it, and the retry's job is the answer.
        await refuseJob(owner, jobId, 'superseded: a retry with the same Idempotency-Key made the generation');
        const theirs = await ctx.ledger.existingJob({ owner, key: idempotencyKey, bodyHash, sameBodyHashes, waitForJob: true });
        if (!theirs) throw new ConflictError('a request with this Idempotency-Key is still being processed; retry shortly', { code: 'idempotency_in_progress', param: 'Idempotency-Key' });
        c.set('jobId', theirs.id);
        c.header('Location', `/v1/generations/${theirs.id}`);
        c.header('Idempotent-Replayed', 'true');
        return c.json(await createdView(await heldUntilEnded(c, theirs)), 200);
      }
      // Its cancel_after may have passed while this request fetched its init image (ADR 0038, 0034): it
      // ends canceled now, as a read would end it, and is never sent to a worker.
      job = await endedAtDeadline(job, { webhook: true });
      if (job.status === 'queued') await enqueue(job);
      c.header('Location', `/v1/generations/${job.id}`);
      return c.json(await createdView(await heldUntilEnded(c, job)), 202);
    } catch (error) {
      // The replay's re-queue or re-send, or the create's read-back, lost every race for the record:
      // nothing was decided, and the same request (same Idempotency-Key) may simply be retried.
      if (error instanceof PreconditionFailedError) throw new RetryableError('the generation is being updated; retry the request', { code: 'busy', cause: error });
      throw error;
    }
  }, (result, c) => (result.success ? undefined : refusedBody(result, c)));

  app.openapi(createEstimate, async (c) => {
    const request = c.req.valid('json');
    await screenedPrompts(c.get('owner'), request);
    const spec = await checkedSpec(c.get('owner'), request);
    // As the worker will run it: a deployment's step cap (clipag serve --steps) applies.
    const stepsPerImage = Math.min(spec.steps, limits.maxSteps ?? Infinity);
    const steps = stepsPerImage * spec.n;
    // The stages the worker will run (a coarse-to-fine run on a model smaller than the image): a step's cost depends on its size.
    // A model that does not state its input size is priced as one stage at the full size: an upper bound.
    const inputSize = (await deps.models()).find((m) => m.id === spec.model)?.input_size ?? Math.max(spec.width, spec.height);
    const schedule = defaultSchedule(spec.width, spec.height, stepsPerImage, inputSize);
    const { seconds, basis, note } = await estimateJob(blobs, { model: spec.model, width: spec.width, height: spec.height, start: runStartOf(spec.init) }, { n: spec.n, schedule });
    const hourly = limits.workerHourlyUsd;
    const queue = await queueState();
    return c.json(
      {
        object: 'estimate' as const,
        model: spec.model,
        width: spec.width,
        height: spec.height,
        steps,
        worker_seconds: seconds ? { median: seconds.median, p90: seconds.p90 } : null,
        cost_usd: seconds && hourly !== undefined ? { median: costUsd(seconds.median, hourly), p90: seconds.p90 === null ? null : costUsd(seconds.p90, hourly) } : null,
        runs: seconds?.runs ?? 0,
        basis,
        note,
        hourly_usd: hourly ?? null,
        ...(queue ? { queue } : {}),
      },
      200,
    );
  });

  app.openapi(listGenerations, async (c) => {
    const query = c.req.valid('query');
    const { limit = 20, idempotency_key: key } = query;
    const owner = c.get('owner');
    const raw = c.req.query();
    if (key !== undefined) {
      // The lookup (ADR 0004): the key's claim read directly, no scan. At most one generation, so no page to ask for.
      const other = Object.keys(raw).find((p) => p !== 'idempotency_key');
      if (other) throw new ValidationError(`${other.slice(0, 60)} cannot be combined with idempotency_key (the lookup answers at most one generation)`, other.slice(0, 60));
      const job = await ctx.ledger.madeBy({ owner, key, now: ctx.clock() });
      if (job) c.set('jobId', job.id);
      c.header('Idempotency-Key', key);
      return c.json({ object: 'list' as const, data: job ? [await view(job)] : [], next_cursor: null }, 200);
    }
    // Read pages until `limit` are shown, LIST_SCAN_LIMIT were read, or the list ends (at created_after,
    // if given). The cursor is the last generation read, so the next request goes on from exactly
    // there. A page counts as read in full, the documents skipped as corrupt included: they cost their
    // GET too. Without a selective filter every job read is shown, so a page reads no more than `limit`.
    const filter = listFilter(query, raw);
    const shown: JobRecord[] = [];
    let after = filter.startAfter;
    let more = true;
    let scanned = 0;
    while (more && shown.length < limit && scanned < LIST_SCAN_LIMIT) {
      const size = Math.min(filter.selective ? 100 : limit - shown.length, LIST_SCAN_LIMIT - scanned);
      const page = await jobs.listByOwner(owner, { limit: size, ...(after !== undefined ? { cursor: after } : {}), ...(filter.endBefore !== undefined ? { endBefore: filter.endBefore } : {}) });
      scanned += size;
      more = page.cursor !== undefined;
      let whole = true;
      for (const [i, job] of page.jobs.entries()) {
        after = job.id;
        if (filter.matches(job)) shown.push(job);
        if (shown.length === limit) {
          more = more || i < page.jobs.length - 1;
          whole = i === page.jobs.length - 1;
          break;
        }
      }
      // A page read to its end goes on after its last document, a corrupt one skipped included.
      if (whole && page.cursor !== undefined) after = page.cursor;
    }
    // As GET answers each: a queued one past its cancel_after has ended (ADR 0034). Its status may
    // no longer match a status filter: the list shows what was read against it, now as it stands.
    const views = await Promise.all(shown.map(async (job) => view(await endedAtDeadline(job, { webhook: false }))));
    // A page fits one answer: Lambda refuses a response over 6 MB (API Gateway then answers a bare 500),
    // and it carries the body JSON-escaped once more, which doubles a label full of control characters.
    // Past LIST_ANSWER_BUDGET_BYTES the page ends early, and next_cursor goes on from its last generation.
    let bytes = 0;
    let fits = 0;
    for (const v of views) {
      bytes += Buffer.byteLength(JSON.stringify(JSON.stringify(v)));
      if (fits > 0 && bytes > LIST_ANSWER_BUDGET_BYTES) break;
      fits++;
    }
    const data = views.slice(0, fits);
    const nextCursor = fits < views.length ? data[fits - 1]!.id : more ? (after ?? null) : null;
    return c.json({ object: 'list' as const, data, next_cursor: nextCursor }, 200);
  });

  app.openapi(getGeneration, async (c) => {
    const { id } = c.req.valid('param');
    c.set('jobId', id);
    let job = await jobs.get(c.get('owner'), id);
    if (!job) throw unknownGeneration(id);
    // A held wait makes no webhook attempt of its own (see endedAtDeadline).
    job = await heldUntilEnded(c, await endedAtDeadline(job, { webhook: preferredWaitSec(c.req.header('Prefer'), limits.maxWaitSec ?? 0) === null }));
    const shown = await view(job);
    // A HEAD reads the images too: it answers as the GET would, Content-Length included.
    if (c.req.valid('query').include === 'b64') return c.json(await withInlineImages(job, shown), 200);
    return c.json(shown, 200);
  });

  /**
   * The view with each image it lists inline (include=b64): read from the store, whose object is the
   * one its url signs. Sizes first, so images over MAX_INLINE_IMAGE_BYTES together are never read.
   */
  async function withInlineImages(job: JobRecord, shown: z.output<typeof GenerationView>): Promise<z.output<typeof GenerationView>> {
    if (shown.outputs.length === 0) return shown;
    const keys = new Map(publishedIndices(job).map((index, k) => [index, job.outputs[k]!.key]));
    const sizes = await Promise.all(shown.outputs.map(async (o) => (await blobs.head(keys.get(o.index)!))?.size ?? 0));
    const total = sizes.reduce((a, b) => a + b, 0);
    if (total > MAX_INLINE_IMAGE_BYTES) {
      throw new PayloadTooLargeError(`the ${shown.outputs.length} images are ${total} bytes together, over the ${MAX_INLINE_IMAGE_BYTES} an answer carries inline: fetch them by outputs[].url (or GET /v1/generations/${job.id}/outputs/{index}), or leave include out`, { param: 'include' });
    }
    const outputs = await Promise.all(
      shown.outputs.map(async (o) => {
        const object = await blobs.get(keys.get(o.index)!);
        // Gone since the view was made (a DELETE in between): its link would find nothing either.
        if (!object) throw new GoneError(`image ${o.index} of generation ${job.id} is no longer stored; the same request with seed ${o.seed} and n 1 makes it again`, { code: 'output_gone', param: 'include' });
        return { ...o, [`b64_${outputFormatOfKey(keys.get(o.index)!)}`]: Buffer.from(object.body).toString('base64') };
      }),
    );
    return { ...shown, outputs };
  }

  app.openapi(listFrames, async (c) => {
    const { id } = c.req.valid('param');
    c.set('jobId', id);
    const job = await jobs.get(c.get('owner'), id);
    if (!job) throw unknownGeneration(id);
    return c.json({ object: 'list' as const, data: await generationFrames(job, blobs, limits.signedUrlTtlSec, ctx.clock(), viewOptions) }, 200);
  });

  app.openapi(getOutput, async (c) => {
    const { id, index } = c.req.valid('param');
    c.set('jobId', id);
    const found = await jobs.get(c.get('owner'), id);
    if (!found) throw unknownGeneration(id);
    // As GET answers it: a queued one past its cancel_after has ended (ADR 0034).
    const job = await endedAtDeadline(found, { webhook: false });
    const link = await outputLink(job, index, blobs, limits.signedUrlTtlSec, ctx.clock(), viewOptions);
    switch (link.kind) {
      case 'link':
        c.header('Cache-Control', 'private, no-store');
        c.header('Link-Expires-At', link.expires_at);
        return c.redirect(link.url, 302);
      case 'not_ended':
        throw new ConflictError(`generation ${id} is ${link.status}: its images are stored when it ends`, { code: 'job_not_finished' });
      case 'withheld':
        throw new NotFoundError(`image ${index} of generation ${id} was withheld by the output check (withheld_outputs); it has no file`, { param: 'index' });
      case 'no_such_image':
        throw new NotFoundError(
          link.made === 0
            ? `generation ${id} ${job.status} and made no images`
            : `generation ${id} has no image ${index}: it made ${link.made} (index 0${link.made > 1 ? `-${link.made - 1}` : ''})`,
          { param: 'index' },
        );
      case 'deleted':
        throw new GoneError(`image ${index} of generation ${id} was deleted at ${link.deleted_at}; the same request with seed ${link.seed} and n 1 makes it again`, { code: 'output_gone', param: 'index' });
      case 'expired':
        throw new GoneError(`image ${index} of generation ${id} expired at ${link.expired_at}; the same request with seed ${link.seed} and n 1 makes it again`, { code: 'output_gone', param: 'index' });
    }
  });

  app.openapi(deleteGeneration, async (c) => {
    const { id } = c.req.valid('param');
    c.set('jobId', id);
    const owner = c.get('owner');
    const job = await deleteEndedGeneration({ blobs, jobs, ledger: ctx.ledger, update: (o, i, mutate) => callerUpdate(o, i, 'delete', mutate) }, owner, id, ctx.clock().toISOString());
    return c.json(await view(job), 200);
  });

  app.openapi(redeliverWebhook, async (c) => {
    const { id } = c.req.valid('param');
    c.set('jobId', id);
    const owner = c.get('owner');
    const found = await jobs.get(owner, id);
    if (!found) throw unknownGeneration(id);
    const refusal = redeliveryRefusal(found);
    if (refusal) throw new ConflictError(refusal.message, { code: refusal.code });
    // The marker first: if this attempt fails, or the process dies before it is recorded, the
    // queued-job sweep finds the event owed and keeps to its retry schedule.
    await markPending(blobs, 'hook', owner, id);
    const job = await callerUpdate(owner, id, 'redeliver', (cur) => {
      const again = redeliveryRefusal(cur);
      if (again) throw new ConflictError(again.message, { code: again.code });
      const w = cur.webhook!;
      // (One being sent at this moment keeps its claim: deliverWebhook leaves it to that attempt.)
      if (w.delivered_at !== null || w.given_up_at !== null) return { ...cur, webhook: freshWebhookState(w) };
      return w.next_attempt_at === null ? null : { ...cur, webhook: { ...w, next_attempt_at: null } };
    });
    const attempted = await deliverWebhook(cancelDelivery, owner, id).then(
      () => true,
      (error: unknown) => {
        ctx.log({ level: 'warn', msg: 'a webhook redelivery was not recorded; the queued-job sweep sends it', job_id: id, owner, error: operatorMessage(error) });
        return false;
      },
    );
    return c.json(await view((attempted ? await jobs.get(owner, id).catch(() => null) : null) ?? job), 200);
  });

  app.openapi(cancelGeneration, async (c) => {
    const { id } = c.req.valid('param');
    c.set('jobId', id);
    const owner = c.get('owner');
    const now = ctx.clock().toISOString();
    let job = await callerUpdate(owner, id, 'cancel', (cur) => {
      switch (cur.status) {
        case 'canceled':
          return null;
        case 'succeeded':
        case 'failed':
          throw new ConflictError(`generation ${id} already ${cur.status}`, { code: 'job_terminal' });
        case 'queued':
          return { ...cur, status: 'canceled', cancel_requested: true, finished_at: now };
        case 'running':
          return cur.cancel_requested ? null : { ...cur, cancel_requested: true };
      }
    });
    if (job.status === 'canceled') job = await settleQueuedCancel(owner, id, job);
    return c.json(await view(job), 200);
  });
}

/** Waits `ms`, or less if `signal` aborts first. */
function pauseUnlessAborted(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const end = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', end);
      resolve();
    };
    const timer = setTimeout(end, ms);
    signal?.addEventListener('abort', end, { once: true });
  });
}
