import { z } from '@hono/zod-openapi';
import { ApiKeyId, ResourceId, Timestamp } from '../shared/schemas/common.ts';
import { SORTABLE_ID_PATTERN } from '../shared/names.ts';
import { ModelName } from '../shared/schemas/generation.ts';
import { JobError, JobStatus, JobUsage } from '../shared/schemas/job.ts';
import { IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE } from './idempotency.ts';
import { MAX_MONTHLY_USD } from '../shared/spend-limits.ts';

/**
 * Response shapes of the public API. Requests use the shared schemas directly
 * (GenerationRequest); responses are views of the shared JobRecord built from shared parts.
 */

export const ModelInfo = z
  .object({
    id: ModelName,
    description: z.string().optional(),
    default: z.boolean().optional(),
    /** Native input side of the encoder, pixels. */
    input_size: z.number().int().positive().optional(),
    /** Whether the image tower is adversarially robust (perceptually aligned gradients). */
    robust: z.boolean().optional(),
    embed_dim: z.number().int().positive().optional(),
    /** sha256 over the bundle's files: what the worker caches and verifies. */
    content_hash: z.string().optional().openapi({
      description: "The bundle's content hash (sha256 over its files' hashes): a generation's `model_version` names the bundle that made it. Absent where the API cannot read the bundle (the worker image's default model, in AWS)",
    }),
    license: z.string().optional(),
    source: z.string().optional(),
  })
  .openapi('Model');
export type ModelInfo = z.output<typeof ModelInfo>;

export const ModelList = z.object({ object: z.literal('list'), data: z.array(ModelInfo) }).openapi('ModelList');

import { MONTH_PATTERN } from '../shared/keys.ts';
import { JOB_STATUSES } from '../shared/schemas/job.ts';
import { WEBHOOK_STATUSES } from '../shared/schemas/view.ts';
import { METADATA_MAX_KEYS } from '../shared/schemas/generation.ts';

/**
 * The most generations one filtered list request reads (one GET each): the largest page (`limit`
 * 100), so no list request reads more than any other, whatever the filter matches. Each counts as one
 * request against the account's rate (ADR 0026); 200 let one request cost 202 store reads.
 */
export const LIST_SCAN_LIMIT = 100;
export { GenerationOutputView, GenerationView } from '../shared/schemas/view.ts';
import { GenerationView, QueueView } from '../shared/schemas/view.ts';

export const GenerationList = z
  .object({ object: z.literal('list'), data: z.array(GenerationView), next_cursor: z.string().nullable() })
  .openapi('GenerationList');

/** The one message for a bad `limit`, whichever check finds it (the middleware's digits-only one, or the schema's range). */
export const LIMIT_RULE = 'limit must be a whole number from 1 to 100, in decimal digits';

export const ListQuery = z.object({
  limit: z.coerce
    .number({ error: LIMIT_RULE })
    .int({ error: LIMIT_RULE })
    .min(1, { error: LIMIT_RULE })
    .max(100, { error: LIMIT_RULE })
    .optional()
    .openapi({ param: { name: 'limit', in: 'query' }, example: 20, default: 20 }),
  // A generation id, as next_cursor gives it: anything else is a caller's bug, not an empty page.
  cursor: z
    .string()
    .regex(SORTABLE_ID_PATTERN, { error: 'cursor must be the next_cursor of an earlier page' })
    .optional()
    .openapi({ param: { name: 'cursor', in: 'query' }, description: 'The next_cursor of the previous page' }),
  status: z.enum(JOB_STATUSES).optional().openapi({
    param: { name: 'status', in: 'query' },
    example: 'failed',
    description: `Only generations in this status. A request looks at no more than ${LIST_SCAN_LIMIT} generations (the largest page), so a page may hold fewer than \`limit\`, even none, while \`next_cursor\` is set: keep paging until it is null.`,
  }),
  created_after: z.iso
    .datetime({ offset: true, error: 'created_after must be an RFC 3339 date-time with an upper-case T and Z (or an offset), seconds 00 to 59, such as 2026-12-01T00:00:00Z' })
    .optional()
    .openapi({
      param: { name: 'created_after', in: 'query' },
      example: '2026-12-01T00:00:00Z',
      description: 'Only generations created after this instant (exclusive). The list stops at the first older one: next_cursor is null from there.',
    }),
  created_before: z.iso
    .datetime({ offset: true, error: 'created_before must be an RFC 3339 date-time with an upper-case T and Z (or an offset), seconds 00 to 59, such as 2026-12-01T00:00:00Z' })
    .optional()
    .openapi({
      param: { name: 'created_before', in: 'query' },
      example: '2026-12-02T00:00:00Z',
      description: 'Only generations created before this instant (exclusive): the list starts there, so it costs no scan. With `cursor`, paging goes on from whichever of the two is older.',
    }),
  webhook_status: z.enum(WEBHOOK_STATUSES).optional().openapi({
    param: { name: 'webhook_status', in: 'query' },
    example: 'failed',
    description: `Only generations with a webhook in this delivery state (failed: every attempt failed; such a generation may be fetched with GET instead). A scan, as with \`status\`: a page may be short while \`next_cursor\` is set.`,
  }),
  metadata: z
    .record(z.string(), z.string(), { error: 'metadata is filtered as metadata[KEY]=VALUE' })
    .optional()
    .openapi({
      param: { name: 'metadata', in: 'query', style: 'deepObject', explode: true },
      example: { batch: 'spring-catalog' },
      description: `Only generations whose metadata has KEY with exactly VALUE: \`metadata[batch]=spring-catalog\` (percent-encode the brackets if your client does not). Several must all match (at most ${METADATA_MAX_KEYS}). A scan, as with \`status\`.`,
    }),
  api_key_id: ApiKeyId.optional().openapi({
    param: { name: 'api_key_id', in: 'query' },
    description: "Only the generations this API key of yours created (its id: the part of the secret between `ck_` and the next `_`; a generation's `api_key_id`): after a key leaks, what it set going, to cancel. A scan, as with `status`.",
  }),
  idempotency_key: z
    .string()
    .regex(IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE)
    .optional()
    .openapi({
      param: { name: 'idempotency_key', in: 'query' },
      example: 'order-42',
      description:
        "The generation an `Idempotency-Key` of this account made (POST /v1/generations), whatever body it was sent with: a list of that one generation (a deleted one too, as lists show it), or empty when the key made none (never used, or its request was refused or failed before the generation was written, so the same key may be sent again). 409 idempotency_in_progress while its first request is still making it. Cannot be combined with any other parameter (400); next_cursor is null. The answer carries the key back in an Idempotency-Key header: an older API that ignores this parameter answers its plain list without it.",
    }),
});

export const GenerationFrameList = z
  .object({
    object: z.literal('list'),
    data: z.array(
      z
        .object({
          index: z.number().int().nonnegative().openapi({ description: "The image's index (as in the generation's outputs)" }),
          step: z.number().int().nonnegative().openapi({ description: 'The image as it was before this optimization step' }),
          width: z.number().int().nullable().openapi({ description: "The frame's size: its multi-scale stage's (a large image starts smaller); null for frames stored before sizes were kept" }),
          height: z.number().int().nullable(),
          url: z.string().openapi({ description: 'Signed GET URL of the PNG' }),
          expires_at: Timestamp,
        })
        .openapi('GenerationFrame'),
    ),
  })
  .openapi('GenerationFrameList');

export const IdParam = z.object({ id: ResourceId.openapi({ param: { name: 'id', in: 'path' } }) });

export const UploadDeleted = z
  .object({
    object: z.literal('upload'),
    upload_id: ResourceId,
    deleted: z.boolean().openapi({ description: 'Whether there was an upload to remove (false: none by that id: never made, expired, removed before, or another account\'s)' }),
  })
  .openapi('UploadDeleted');

/** What an init image may be: a PNG, or a JPEG (ADR 0035). The worker reads the file's own signature, not this. */
export const UPLOAD_CONTENT_TYPES = ['image/png', 'image/jpeg'] as const;

export const UploadRequest = z
  .object({
    content_type: z.enum(UPLOAD_CONTENT_TYPES),
    bytes: z.number().int().min(1).openapi({ description: 'Exact size of the file to upload' }),
  })
  .strict()
  .openapi('UploadRequest');

export const UploadView = z
  .object({
    upload_id: ResourceId,
    object: z.literal('upload'),
    init: z.string().openapi({ example: 'upload:01j...', description: 'Pass this as `init` in a generation request' }),
    method: z.literal('PUT').openapi({ description: 'The method to send the file with' }),
    url: z.string().openapi({ description: 'The signed URL to PUT the file to, without the API key (it needs none). In AWS it is S3\'s: its errors are S3\'s XML, not the error envelope' }),
    headers: z.record(z.string(), z.string()).openapi({
      description:
        'Every header the PUT must carry, as given: content-type, content-length and if-none-match: * (all signed, so another type or length, or a PUT without the condition, is refused). The link writes once: a second PUT to it is refused (412) and the first upload stays, so a PUT retried after a lost answer that gets 412 had landed',
      example: { 'content-type': 'image/png', 'content-length': '10960', 'if-none-match': '*' },
    }),
    expires_at: Timestamp.openapi({ description: 'When the URL stops taking the PUT' }),
    bytes: z.number().int().openapi({ description: 'The exact length the body must have (the request\'s bytes)' }),
    max_bytes: z.number().int().openapi({ description: 'The deployment\'s largest upload (CLIPAG_MAX_UPLOAD_BYTES), not this upload\'s size' }),
  })
  .openapi('Upload');

export const Health = z.object({ status: z.literal('ok') }).openapi('Health');

const SecondsRange = z.object({
  median: z.number().nonnegative(),
  p90: z.number().nonnegative().nullable().openapi({ description: 'The 90th percentile of the runs it rests on; null below 5 runs, where it would show little or none of their spread' }),
});

export const EstimateView = z
  .object({
    object: z.literal('estimate'),
    model: ModelName,
    width: z.number().int(),
    height: z.number().int(),
    steps: z.number().int().openapi({ description: "Optimization steps over all images: steps (after the deployment's cap, if any) × n" }),
    worker_seconds: SecondsRange.nullable().openapi({
      description:
        "Median and 90th percentile, from the recent runs of this model, size and kind of start (gmm, noise, an image) on this deployment; from runs at other sizes when none of this one (see basis); null when nothing recorded here supports a figure (see note): before the first run of this model and start, or when this size is far from every size run",
    }),
    cost_usd: SecondsRange.nullable().openapi({ description: "worker_seconds at the deployment's hourly worker price; null without a price or without runs" }),
    runs: z.number().int().nonnegative().openapi({ description: 'How many recorded runs the figures rest on (at most 50, the latest)' }),
    basis: z
      .object({
        method: z.enum(['fit', 'scaled', 'nearest']).openapi({
          description:
            "fit: a step's cost fitted against its size from the timed stages of runs at other sizes (a coarse-to-fine run times several), summed over the stages this job will run; where no runs timed stages at two sizes, against the output size of whole runs at two sizes or more. scaled: one size run, within 4× in pixels and smaller than this one: its figures times the ratio of the pixels (factor), as a rule high, since much of the cost grows more slowly than the pixels. nearest: one size run, within 4× in pixels and larger than this one: its figures as they are",
        }),
        width: z.number().int().openapi({ description: 'The nearest size the figures rest on' }),
        height: z.number().int(),
        sizes: z.array(z.object({ width: z.number().int(), height: z.number().int() })).openapi({ description: 'Every size whose runs the figures rest on' }),
        factor: z.number().positive().optional().openapi({ description: "With method scaled only: this size's pixels ÷ the basis size's, what its figures were multiplied by (4 decimals)" }),
      })
      .nullable()
      .openapi({
        description:
          'When no run of this size was recorded: how the figures were reached from runs of the same model and start at other sizes. A guide, not a measurement. null: runs of this very size (or no figures)',
      }),
    note: z.string().nullable().openapi({ description: 'Why there are no figures, when worker_seconds is null' }),
    hourly_usd: z.number().nullable(),
    queue: QueueView.optional().openapi({ description: 'Where the API could read the fleet: whether a worker is there to take a generation made now, or one would be started first (ADR 0040). The figures above are run time only, not that wait' }),
  })
  .openapi('Estimate');

const UsageFigures = {
  generations: z.number().int().nonnegative().openapi({ description: 'Generations whose run ended with its usage written: succeeded, or failed because the output check withheld every image' }),
  images: z.number().int().nonnegative().openapi({ description: 'Images made, withheld ones included (the compute was spent)' }),
  worker_seconds: z.number().nonnegative(),
  encoder_passes: z.number().int().nonnegative(),
  cost_usd: z.number().nullable().openapi({
    description:
      "Compute at list price, not an invoice: each generation at the deployment's hourly worker price when its run ended (its usage.hourly_usd), or at hourly_usd for one whose record kept no price; null where no price applies",
  }),
};

export const UsageQuery = z.object({
  month: z
    .string()
    .regex(MONTH_PATTERN, { message: 'month must be YYYY-MM (e.g. 2026-12)' })
    .optional()
    .openapi({ param: { name: 'month', in: 'query' }, example: '2026-12', description: 'A UTC month; default: the current one' }),
  api_key_id: ApiKeyId.optional().openapi({
    param: { name: 'api_key_id', in: 'query' },
    description: "Only the generations this API key of yours created (its id: the part of the secret between `ck_` and the next `_`). Generations created before keys were recorded count in the account's figures only.",
  }),
});

export const UsageView = z
  .object({
    object: z.literal('usage'),
    month: z.string(),
    api_key_id: z.string().nullable().openapi({ description: 'The API key the figures are limited to; null: the whole account' }),
    incomplete_days: z.array(z.string()).openapi({
      description: 'With api_key_id: days whose figures itemise 100 of your keys (the most a day holds) and not this one. It may have been used there too, beyond the 100, so its share of those days is unknown. Otherwise []',
    }),
    days: z.array(z.object({ date: z.string().openapi({ example: '2026-12-05' }), ...UsageFigures }).openapi('UsageDay')).openapi({ description: 'Days with usage, ascending (UTC, by when each generation ended)' }),
    total: z.object(UsageFigures).openapi('UsageTotal'),
    hourly_usd: z.number().nullable().openapi({ description: "The deployment's hourly worker price today; null where it sets none" }),
  })
  .openapi('Usage');

/** PUT /v1/spend-limit's body (ADR 0033). */
export const SpendLimitBody = z
  .object({
    monthly_usd: z
      .number()
      .finite()
      .nonnegative()
      .max(MAX_MONTHLY_USD)
      // Micro-dollars, as the usage figures keep them: a finer limit could never be told apart from its rounding.
      .refine((n) => Math.abs(Math.round(n * 1e6) - n * 1e6) < 1e-3, { message: 'monthly_usd has at most 6 decimals (micro-dollars, as the usage figures)' })
      .openapi({ example: 25, description: `The most this account spends a UTC month, in USD (0 to ${MAX_MONTHLY_USD}; 0 refuses every new generation)` }),
  })
  .strict()
  .openapi('SpendLimitRequest');

export const SpendLimitView = z
  .object({
    object: z.literal('spend_limit'),
    monthly_usd: z.number().nullable().openapi({ description: "The account's own limit; null: it set none" }),
    updated_at: Timestamp.nullable().openapi({ description: 'When it was last set; null without one' }),
    operator_monthly_usd: z.number().nullable().openapi({ description: "A limit the operator set for the account (the account cannot change it); null: none. The lower of the two applies" }),
    month: z.string().openapi({ example: '2026-12', description: 'The UTC month the figures are of (the current one)' }),
    spent_usd: z.number().nullable().openapi({ description: "This month's cost so far, as GET /v1/usage totals it (generations that ended; queued and running ones are not in it yet); null where the deployment sets no price" }),
    remaining_usd: z.number().nullable().openapi({ description: 'What is left of the limit that applies, the lower of the two (never below 0); null without a limit or a cost' }),
    reached: z.boolean().openapi({ description: 'Whether new generations are refused now (402 spend_limit_reached): spent_usd has reached the lower of monthly_usd and operator_monthly_usd. Generations already queued or running still run, so the month can end above the limit by their cost' }),
    resets_at: Timestamp.nullable().openapi({ description: 'When a reached limit stops refusing: the start of the next UTC month; null when not reached' }),
    hourly_usd: z.number().nullable().openapi({ description: "The deployment's hourly worker price today; null where it sets none: then no cost is known and the limit refuses nothing" }),
  })
  .openapi('SpendLimit');

export const SpendLimitDeleted = z
  .object({
    object: z.literal('spend_limit'),
    deleted: z.boolean().openapi({ description: 'Whether there was a limit to remove (false: there was none; nothing changed)' }),
  })
  .openapi('SpendLimitDeleted');

/** A replaced account webhook secret that still signs (ADR 0028): when it was made and when it stops. Never the secret. */
const WebhookSecretPrevious = z
  .object({
    created_at: Timestamp,
    expires_at: Timestamp.openapi({ description: 'When it stops signing: 24 hours after the rotation that replaced it' }),
  })
  .openapi('WebhookSecretPrevious');

const previousSecrets = z.array(WebhookSecretPrevious).openapi({
  description: 'Secrets a rotation replaced that still sign every event beside the current one, newest first (at most 3: a fourth rotation within 24 hours ends the oldest one early)',
});

export const WebhookSecretStatus = z
  .object({
    object: z.literal('webhook_secret'),
    exists: z.boolean().openapi({ description: 'Whether the account has a webhook secret: if so, it signs every event of every generation of the account' }),
    created_at: Timestamp.nullable().openapi({ description: 'When the current secret was made; null without one' }),
    previous: previousSecrets,
  })
  .openapi('WebhookSecretStatus');

export const WebhookSecretCreated = z
  .object({
    object: z.literal('webhook_secret'),
    secret: z.string().openapi({ example: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', description: 'The signing secret (Standard Webhooks). Shown only in this answer: keep it where your receiver reads it' }),
    created_at: Timestamp,
    previous: previousSecrets,
  })
  .openapi('WebhookSecret');

export const WebhookSecretDeleted = z
  .object({
    object: z.literal('webhook_secret'),
    deleted: z.boolean().openapi({ description: 'Whether there was a secret to delete (false: there was none; nothing changed)' }),
  })
  .openapi('WebhookSecretDeleted');
