import { z } from '@hono/zod-openapi';
import { ApiKeyId, OwnerId, ResourceId, Timestamp } from './common.ts';
import { DEFAULT_WEBHOOK_EVENTS, GenerationSpec, MAX_IMAGES, StoredMetadata } from './generation.ts';
import { jobErrorCodeTableText } from '../error-codes.ts';
import { isValidKey } from '../keys.ts';
import { MAX_CONCEPT_CHARS, POLICY_CATEGORIES } from '../policy-constants.ts';

export const JOB_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'canceled'] as const;
export const JobStatus = z.enum(JOB_STATUSES).openapi('JobStatus');
export type JobStatus = z.infer<typeof JobStatus>;

// The status stays a closed enum in the stored record, unlike the nested objects and the flag
// categories below: every reader acts on it (the worker claims `queued`, a cancel or a delete asks
// whether it is terminal, the sweeps pick `queued`, the list filters by it), and a state this version
// does not know cannot be acted on safely, nor shown (GenerationView's status is this enum). A record
// with one reads as corrupt (ADR 0002): a new status ships in two deploys, readers first.
export const TERMINAL_STATUSES: ReadonlySet<JobStatus> = new Set(['succeeded', 'failed', 'canceled']);
export function isTerminal(status: JobStatus): boolean {
  return TERMINAL_STATUSES.has(status);
}

export const JobOutput = z
  .object({
    // A key the store would refuse to sign makes the record corrupt (409 on GET, skipped in lists),
    // rather than a 400 on every read of the job and of its owner's whole list.
    key: z.string().refine(isValidKey, { message: 'must be a valid blob key' }),
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    clip_score: z.number().finite().optional(),
  })
  // Keys a newer version adds are kept (ADR 0002), here and in every nested object of the record below.
  .loose()
  .openapi('JobOutput');

export const JobError = z
  .object({
    // An extensible string, as the envelope's code: the table says what each means, not an enum.
    code: z.string().min(1).openapi({ description: jobErrorCodeTableText() }),
    message: z.string(),
  })
  .strict()
  .openapi('JobError');

/** JobError as stored: keys a newer version adds are kept (ADR 0002); JobError is what a view shows. */
export const StoredJobError = z.object(JobError.shape).loose();

export const JobUsage = z
  .object({
    encoder_passes: z.number().int().nonnegative(),
    worker_seconds: z.number().nonnegative(),
  })
  .strict()
  .openapi('JobUsage');

/** JobUsage as stored: figures a newer worker adds are kept (ADR 0002); JobUsage is what a view shows. */
export const StoredJobUsage = z.object(JobUsage.shape).loose();

export const JobProgress = z
  .object({ step: z.number().int().nonnegative(), total: z.number().int().nonnegative() })
  .loose()
  .refine((p) => p.step <= p.total, { message: 'step must not exceed total' });

/**
 * One webhook event's delivery state (ADR 0013): attempts made, when one got a 2xx or the last allowed
 * one failed, the back-off, the claim of the attempt out, and the last error. The end event's is
 * JobWebhook's own; the started event's is `webhook.started`.
 */
const DELIVERY_STATE = {
  attempts: z.number().int().nonnegative(),
  delivered_at: Timestamp.nullable(),
  /** Set when the last allowed attempt failed; no more tries. */
  given_up_at: Timestamp.nullable(),
  /** No attempt before this (back-off after a failure). */
  next_attempt_at: Timestamp.nullable(),
  /** A deliverer holds the next attempt until then; another one keeps off. */
  claimed_until: Timestamp.nullable(),
  last_error: z.string().max(500).nullable(),
};

/**
 * The delivery state of a job's `generation.started` event (ADR 0036), kept apart from the end
 * event's (JobWebhook's own fields, which `webhook.status` and the `webhook_status` filter read).
 * Written by the first attempt; absent: none made yet. `claim` is the token of the attempt that holds
 * `claimed_until` (a claim whose reply was lost is still known as its own).
 */
export const JobWebhookStarted = z
  .object({
    ...DELIVERY_STATE,
    claim: z.string().min(1).max(100).optional(),
  })
  .loose();

/**
 * Where and how the job's completion is announced (ADR 0013). `secret` signs every delivery
 * (Standard Webhooks: `whsec_` + base64 of the key). Deliveries retry with back-off until one gets a
 * 2xx or WEBHOOK_MAX_ATTEMPTS have failed.
 */
export const JobWebhook = z
  .object({
    url: z.string().url().max(2000),
    secret: z.string().regex(/^whsec_[A-Za-z0-9+/]{32}$/),
    ...DELIVERY_STATE,
    /** The `generation.started` event's own delivery state (ADR 0036); absent: none attempted. */
    started: JobWebhookStarted.optional(),
  })
  .loose()
  .openapi('JobWebhook');

/** A prompt policy finding the caller should know of (shared/prompt-policy.ts). */
export const ContentFlag = z
  .object({
    rule: z.string().min(1).max(64),
    category: z.enum(POLICY_CATEGORIES),
    term: z.string().min(1).max(100),
    message: z.string().max(300),
    param: z.string().max(40),
  })
  .strict()
  .openapi('ContentFlag');

/**
 * A content flag as stored: a category a newer policy added (or keys a newer version added) is
 * carried, not refused (ADR 0002); a view shows only the flags ContentFlag describes (shownContentFlags).
 */
export const StoredContentFlag = z.object({ ...ContentFlag.shape, category: z.string().min(1).max(64) }).loose();

export const MAX_JOB_WARNINGS = 20;
export const MAX_JOB_WARNING_CHARS = 1000;

/** An output rule an image matched (ADR 0017; shared/prompt-policy.ts OutputHit). */
export const OutputFlag = z
  .object({
    rule: z.string().min(1).max(64),
    category: z.enum(POLICY_CATEGORIES),
    action: z.enum(['withhold', 'flag']),
    concept: z.string().min(1).max(MAX_CONCEPT_CHARS),
    message: z.string().max(300),
    cosine: z.number().finite().openapi({ description: "The image's cosine to the concept (the measure of clip_score)" }),
  })
  .strict()
  .openapi('OutputFlag');

/**
 * An output flag as stored: a category or action a newer version added is carried, not refused (the
 * image's fate is `withheld`, not the action); a view shows only the flags OutputFlag describes.
 */
export const StoredOutputFlag = z.object({ ...OutputFlag.shape, category: z.string().min(1).max(64), action: z.string().min(1).max(64) }).loose();

/** The output check of one image that matched a rule: what it matched, and whether it was kept from the caller. */
export const OutputCheck = z
  .object({
    /** The image's index among the n asked for (its seed is seed + index). */
    index: z.number().int().nonnegative().max(MAX_IMAGES - 1),
    withheld: z.boolean(),
    flags: z.array(StoredOutputFlag).min(1).max(MAX_JOB_WARNINGS),
  })
  .loose();

/** The job record: one JSON document per job in the blob store (see docs/adr/0002). */
export const JobRecord = z
  .object({
    id: ResourceId,
    owner: OwnerId,
    status: JobStatus,
    /** Starts at 1; every successful write bumps it by exactly one. */
    version: z.number().int().min(1),
    spec: GenerationSpec,
    progress: JobProgress,
    created_at: Timestamp,
    started_at: Timestamp.nullable(),
    finished_at: Timestamp.nullable(),
    outputs: z.array(JobOutput),
    error: StoredJobError.nullable(),
    usage: StoredJobUsage,
    cancel_requested: z.boolean(),
    /** How many times a worker has started this job (redeliveries included). */
    attempts: z.number().int().nonnegative(),
    idempotency_key: z.string().min(1).max(255).nullable(),
    /**
     * While `running`: the queue message the running worker holds the job by, and until when (its
     * visibility, renewed by its heartbeat). A delivery of *another* message for the job well before
     * then is a duplicate and is dropped; the held message itself coming back (released, or lapsed
     * after a crash) takes the job over.
     */
    lease_message_id: z.string().min(1).max(200).optional(),
    lease_expires_at: Timestamp.nullable().optional(),
    /**
     * Unique to one claim (a delivery of a message can be claimed once; its redelivery has the same
     * message id). A claim whose write landed but whose reply was lost finds its own token on the
     * re-read, and does not claim (and count an attempt) a second time.
     */
    lease_token: z.string().min(1).max(100).optional(),
    /** When the job's message was last sent again (by the queued-job sweep or a replay), or the job was re-queued (after `enqueue_failed`, or by a worker); absent: only at created_at. No message of the job was sent before it. */
    enqueued_at: Timestamp.optional(),
    /** When a worker last put the job back to `queued` (a retry, a drain): a wait counts from here, not from the run before it. */
    queued_at: Timestamp.optional(),
    /**
     * The content hash of the model bundle the run's images came from (as `clipag models push` indexes
     * it, and GET /v1/models shows it); absent before a run made images, where the worker could not
     * hash its bundle, or for jobs that ended before it was recorded.
     */
    model_version: z.string().regex(/^[0-9a-f]{64}$/).optional(),
    /** What the model could not read of the prompts (unknown words, truncation); absent when nothing. */
    warnings: z.array(z.string().max(MAX_JOB_WARNING_CHARS)).max(MAX_JOB_WARNINGS).optional(),
    /** What the prompt policy flagged (not refused) at the job's creation (ADR 0015); absent: nothing. */
    content_flags: z.array(StoredContentFlag).max(MAX_JOB_WARNINGS).optional(),
    /**
     * The images the output check matched (ADR 0017), by image index; absent: none matched. A
     * withheld image is not among `outputs` (nor stored): `outputs` lists the others in index order.
     */
    output_checks: z.array(OutputCheck).max(MAX_IMAGES).optional(),
    /** The completion webhook the request asked for; absent: none. */
    webhook: JobWebhook.optional(),
    /**
     * Unique to the delivery attempt that holds `webhook.claimed_until` (a top-level field: it came
     * when the webhook object was still strict, and a version of then keeps it): a claim whose reply
     * was lost is still recognised as its own.
     */
    webhook_claim: z.string().min(1).max(100).optional(),
    /**
     * When the caller deleted the generation (DELETE /v1/generations/{id}): its images and frames are
     * gone, and its prompts, labels and flags are blanked. `outputs` and `usage` stay, for the usage
     * audit; the view shows none of them.
     */
    deleted_at: Timestamp.optional(),
    /** The caller's own labels from the request (never interpreted); absent: none. */
    metadata: StoredMetadata.optional(),
    /**
     * The worker's hourly price (USD) when the run ended and wrote its usage: the job's cost stays at
     * the price of its day when the deployment's price changes later. Absent: written by a version
     * before prices were kept, or a deployment with no price; views then use today's price.
     */
    hourly_usd: z.number().finite().min(0).max(1000).optional(),
    /**
     * When the run's usage was added to its owner's ledger: a copy of the job's message that comes back
     * after its end (a lost ack, a duplicate SQS delivery) adds it again only when this is absent; the
     * ledger counts a job once in its month either way (its `counted_jobs`), so this is a shortcut.
     */
    usage_recorded_at: Timestamp.optional(),
    /** The API key that created the job (its id, not its secret), for usage per key; absent: created before keys were recorded. */
    api_key_id: ApiKeyId.optional(),
    /**
     * The id of the POST that created the job (its X-Request-Id answer; in AWS the gateway's request
     * id), so the worker's lines about the job join the API's request line. Absent: created before it
     * was recorded, or not through the API.
     */
    request_id: z.string().regex(/^[A-Za-z0-9+/=._:-]{1,128}$/).optional(),
    /** sha256 hex of the canonical request body, to tell a replay from a conflicting reuse of a key. */
    body_hash: z.string().regex(/^[0-9a-f]{64}$/).nullable(),
  })
  // Fields this version does not know are kept, not refused, at the top level and in every nested
  // object but the spec (ADR 0002): the API and the worker deploy apart (and roll back apart), and a
  // field a newer side added (warnings, lease_*, enqueued_at, a usage figure) must neither make the
  // record "corrupt" to the older side nor be dropped by its writes. The spec stays strict: a worker
  // must not run a request it does not fully understand.
  .loose()
  .openapi('JobRecord');

export type JobRecord = z.output<typeof JobRecord>;
export type JobOutput = z.output<typeof JobOutput>;
export type JobUsage = z.output<typeof JobUsage>;
export type JobError = z.output<typeof JobError>;
export type JobWebhook = z.output<typeof JobWebhook>;
export type JobWebhookStarted = z.output<typeof JobWebhookStarted>;
export type ContentFlag = z.output<typeof ContentFlag>;
export type OutputFlag = z.output<typeof OutputFlag>;
export type OutputCheck = z.output<typeof OutputCheck>;
export type StoredContentFlag = z.output<typeof StoredContentFlag>;
export type StoredOutputFlag = z.output<typeof StoredOutputFlag>;

// What a view shows of the stored objects: the fields and values this version documents
// (shared/schemas/view.ts), never a key or a value a newer version added to the record.

const isKnownCategory = (category: string): category is ContentFlag['category'] => (POLICY_CATEGORIES as readonly string[]).includes(category);
const OUTPUT_ACTIONS: readonly string[] = OutputFlag.shape.action.options;

/** The usage figures JobUsage documents. */
export function shownUsage(usage: JobRecord['usage']): JobUsage {
  return { encoder_passes: usage.encoder_passes, worker_seconds: usage.worker_seconds };
}

/** The error as JobError documents it. */
export function shownError(error: JobRecord['error']): JobError | null {
  return error === null ? null : { code: error.code, message: error.message };
}

/**
 * The content flags of a category this version documents, with their documented fields. A flag of a
 * category a newer version added is left out: this version's view (and its clients) know no such value.
 */
export function shownContentFlags(flags: readonly StoredContentFlag[]): ContentFlag[] {
  return flags.flatMap((f) => (isKnownCategory(f.category) ? [{ rule: f.rule, category: f.category, term: f.term, message: f.message, param: f.param }] : []));
}

/** The output flags of a category and action this version documents, with their documented fields (as shownContentFlags). */
export function shownOutputFlags(flags: readonly StoredOutputFlag[]): OutputFlag[] {
  return flags.flatMap((f) =>
    isKnownCategory(f.category) && OUTPUT_ACTIONS.includes(f.action)
      ? [{ rule: f.rule, category: f.category, action: f.action as OutputFlag['action'], concept: f.concept, message: f.message, cosine: f.cosine }]
      : [],
  );
}

/** What a deleted generation's record keeps of its prompts. */
/**
 * Since when a queued job has waited to start (ms since the epoch): its last send, or a worker putting
 * it back (a retry, a drain) after a run. One rule for the worker's `queuedSec` and the sweep's
 * `oldestQueuedSec`, which the dashboard shows side by side.
 */
export function waitingSince(job: JobRecord): number {
  return Math.max(Date.parse(job.enqueued_at ?? job.created_at), job.queued_at ? Date.parse(job.queued_at) : 0);
}

/**
 * When the caller's deadline passes (ms since the epoch): `created_at` plus the request's
 * `cancel_after` (ADR 0034); undefined without one.
 */
export function cancelDeadline(job: Pick<JobRecord, 'spec' | 'created_at'>): number | undefined {
  const after = job.spec.cancel_after;
  if (after === undefined) return undefined;
  const created = Date.parse(job.created_at);
  return Number.isFinite(created) ? created + after * 1000 : undefined;
}

/** Whether a job that has not ended is past its caller's deadline at `nowMs`: it is then treated as if its caller had asked to cancel it. */
export function pastCancelDeadline(job: Pick<JobRecord, 'spec' | 'created_at'>, nowMs: number): boolean {
  const deadline = cancelDeadline(job);
  return deadline !== undefined && nowMs >= deadline;
}

/** The code a canceled generation's `error` carries when its `cancel_after` ended it (a caller's cancel carries none). */
export const DEADLINE_EXCEEDED = 'deadline_exceeded';

/** Why a generation its deadline ended was canceled (its view's `error`). */
export function deadlineExceededError(job: Pick<JobRecord, 'spec'>): JobError {
  return { code: DEADLINE_EXCEEDED, message: `canceled: the generation had not ended ${job.spec.cancel_after} s after it was created (cancel_after)` };
}

/**
 * Whether a job is to be ended `canceled` at `nowMs`: its caller asked to (cancel_requested), or its
 * deadline passed (ADR 0034). Whoever ends a job on a cancel request ends it on this.
 */
export function cancelDue(job: Pick<JobRecord, 'spec' | 'created_at' | 'cancel_requested'>, nowMs: number): boolean {
  return job.cancel_requested || pastCancelDeadline(job, nowMs);
}

/**
 * `cur` ended `canceled` at `finishedAt`. When no cancel was asked for and its deadline passed by
 * `nowMs`, it says so: `cancel_requested` (the deadline is a cancel the caller asked for in advance) and
 * `error` deadline_exceeded. A caller's cancel keeps `error` null, as before.
 */
export function canceledRecord(cur: JobRecord, finishedAt: string, nowMs: number): JobRecord {
  const byDeadline = !cur.cancel_requested && pastCancelDeadline(cur, nowMs);
  return { ...cur, status: 'canceled', finished_at: finishedAt, ...(byDeadline ? { cancel_requested: true, error: deadlineExceededError(cur) } : {}) };
}

export const DELETED_TEXT = '[deleted]';

/**
 * The record of a deleted generation: what the caller wrote (prompts, labels) and what was read from
 * it (flags, warnings, the output check's findings) blanked; its outputs and usage kept for the owner's
 * usage audit (ADR 0019), which counts withheld images from `output_checks`.
 */
export function deletedRecord(job: JobRecord, at: string): JobRecord {
  const { metadata: _labels, content_flags: _flags, warnings: _warnings, webhook, output_checks: checks, ...rest } = job;
  const spec = {
    ...job.spec,
    ...(job.spec.prompt !== undefined ? { prompt: DELETED_TEXT } : {}),
    ...(job.spec.prompts !== undefined ? { prompts: job.spec.prompts.map((p) => ({ ...p, text: DELETED_TEXT })) } : {}),
    ...(job.spec.negative_prompt !== undefined ? { negative_prompt: DELETED_TEXT } : {}),
  };
  // An error's message may quote the prompt (an engine error naming the text it could not embed, a
  // retry's last message): its code stays, its words go with the prompt.
  const error = rest.error ? { code: rest.error.code, message: DELETED_ERROR_MESSAGE } : rest.error;
  return {
    ...rest,
    error,
    // The body's unsalted hash would confirm a guess of the prompt, and nothing reads it once the
    // record is written (replays read the claim, whose own hash the DELETE replaces). The key stays
    // until the DELETE has replaced that claim's hash, which it finds by the key; the DELETE then drops it.
    body_hash: null,
    ...(webhook ? { webhook: webhookOfDeleted(webhook) } : {}),
    ...(checks ? { output_checks: checks.map(deletedOutputCheck) } : {}),
    spec,
    deleted_at: job.deleted_at ?? at,
  };
}

/**
 * A deleted generation's output check of one image: which image, whether it was withheld (the usage
 * audit counts it) and the codes of the rules it matched stay; what they found in it (the concept it
 * looked like, and how closely) goes with the image, as a flag on the prompt goes with the prompt. The
 * record keeps its shape (an older API or worker reads it), the views show none of it.
 */
function deletedOutputCheck(check: OutputCheck): OutputCheck {
  // Only the fields this version knows to be bookkeeping stay: a key a newer version added to a flag
  // may say more of what was found in the image, which goes with it.
  return { ...check, flags: check.flags.map((flag) => ({ rule: flag.rule, category: flag.category, action: flag.action, concept: DELETED_TEXT, message: DELETED_TEXT, cosine: 0 })) };
}

/** A deleted generation's error message: the code says what happened. */
export const DELETED_ERROR_MESSAGE = 'removed with the generation (its code says what happened)';

/**
 * A deleted generation's webhook once its delivery has settled (delivered, or given up): the URL
 * keeps only its origin. Its path and query may hold the caller's tokens, and nothing will be sent
 * to it again. One still owed keeps its URL until it settles (the deliverer applies this then).
 */
export function webhookOfDeleted(webhook: JobWebhook): JobWebhook {
  if (webhook.delivered_at === null && webhook.given_up_at === null) return webhook;
  return { ...webhook, url: `${new URL(webhook.url).origin}/` };
}

/** A fresh `queued` record for a validated spec. */
export function newJobRecord(args: {
  id: string;
  owner: string;
  spec: GenerationSpec;
  now?: Date;
  idempotencyKey?: string | null;
  bodyHash?: string | null;
  webhook?: { url: string; secret: string };
  contentFlags?: z.input<typeof ContentFlag>[];
  metadata?: Record<string, string>;
  apiKeyId?: string;
  requestId?: string;
  /** The deployment's cap on steps per image (`clipag serve --steps`), which the worker runs under: progress.total counts it from the start. */
  maxSteps?: number;
}): JobRecord {
  return JobRecord.parse({
    id: args.id,
    owner: args.owner,
    status: 'queued',
    version: 1,
    spec: args.spec,
    // The worker counts steps over all n images, under the deployment's cap: the total it will show, from the first view.
    progress: { step: 0, total: Math.min(args.spec.steps, args.maxSteps ?? Infinity) * args.spec.n },
    created_at: (args.now ?? new Date()).toISOString(),
    started_at: null,
    finished_at: null,
    outputs: [],
    error: null,
    usage: { encoder_passes: 0, worker_seconds: 0 },
    cancel_requested: false,
    attempts: 0,
    idempotency_key: args.idempotencyKey ?? null,
    body_hash: args.bodyHash ?? null,
    ...(args.contentFlags?.length ? { content_flags: args.contentFlags.slice(0, MAX_JOB_WARNINGS) } : {}),
    ...(args.metadata && Object.keys(args.metadata).length > 0 ? { metadata: args.metadata } : {}),
    ...(args.apiKeyId !== undefined ? { api_key_id: args.apiKeyId } : {}),
    ...(args.requestId !== undefined ? { request_id: args.requestId } : {}),
    ...(args.webhook
      ? { webhook: { ...args.webhook, attempts: 0, delivered_at: null, given_up_at: null, next_attempt_at: null, claimed_until: null, last_error: null } }
      : {}),
  });
}

/** Whether the job asked for its `generation.started` event (ADR 0036): a webhook, and `started` among its webhook_events. */
export function wantsStartedEvent(job: JobRecord): boolean {
  return job.webhook !== undefined && (job.spec.webhook_events ?? DEFAULT_WEBHOOK_EVENTS).includes('started');
}

const NO_STARTED_ATTEMPT: JobWebhookStarted = { attempts: 0, delivered_at: null, given_up_at: null, next_attempt_at: null, claimed_until: null, last_error: null };

/** The started event's delivery state (as new where no attempt was made yet). */
export function startedEventState(webhook: JobWebhook): JobWebhookStarted {
  return webhook.started ?? NO_STARTED_ATTEMPT;
}

/**
 * Whether the job owes its caller a `generation.started` event (ADR 0036): asked for, a worker has
 * started it, and it was neither delivered nor given up. Once the job has ended it is owed no more:
 * the end event says all it would (its `started_at` included), and a started event after it would
 * be stale.
 */
export function startedEventOwed(job: JobRecord): boolean {
  if (!wantsStartedEvent(job) || job.started_at === null || isTerminal(job.status)) return false;
  const state = startedEventState(job.webhook!);
  return state.delivered_at === null && state.given_up_at === null;
}

/** Whether an attempt of the end event has been made, or is out. */
export function endAttempted(w: JobWebhook): boolean {
  return w.attempts > 0 || w.claimed_until !== null || w.delivered_at !== null || w.given_up_at !== null;
}

/**
 * Whether the worker's first attempt of the started event (`first`, deliverStartedEvent) may go: no
 * attempt of it was made or is out, and none of the end event either. Unlike a retry, it may go when
 * the run has ended meanwhile (a run of seconds ends before its first attempt is claimed): the end
 * event, not claimed yet, then waits for it (endDue), so it still goes first.
 */
export function startedFirstAttemptAllowed(job: JobRecord, now: Date): boolean {
  if (!wantsStartedEvent(job) || job.started_at === null || job.error?.code === 'enqueue_failed') return false;
  const state = startedEventState(job.webhook!);
  return state.attempts === 0 && claimFree(state, now) && state.delivered_at === null && state.given_up_at === null && !endAttempted(job.webhook!);
}

/**
 * No deliverer holds the started event: never claimed, or the claim lapsed with no attempt recorded (its
 * worker died during it). The run that takes over then makes that first attempt (the review of ADR 0036:
 * it had counted a dead claim as held, and a short run ended before the sweep could retry it).
 */
export function claimFree(state: JobWebhookStarted, now: Date): boolean {
  return state.claimed_until === null || Date.parse(state.claimed_until) <= now.getTime();
}
