import { z } from '@hono/zod-openapi';
import { ResourceId, Timestamp } from './common.ts';
import { GenerationSpecView, METADATA_KEY_RULES, StoredMetadata } from './generation.ts';
import { ContentFlag, JobError, JobStatus, JobUsage, OutputFlag } from './job.ts';

// The public view of a job: what GET /v1/generations/{id} answers and what a webhook carries.

export const WEBHOOK_STATUSES = ['pending', 'delivered', 'failed'] as const;
export type WebhookStatus = (typeof WEBHOOK_STATUSES)[number];

/** The started event's delivery as a view shows it (ADR 0036). */
export const STARTED_EVENT_STATUSES = ['pending', 'delivered', 'failed', 'skipped'] as const;

export const GenerationWebhookView = z
  .object({
    url: z.string(),
    status: z.enum(WEBHOOK_STATUSES).openapi({ description: 'pending until an attempt is answered with a 2xx (a GET made from inside your handler still reads pending); failed: every attempt failed (7 over about 9 hours)' }),
    attempts: z.number().int().nonnegative(),
    last_error: z.string().nullable(),
    secret: z.string().optional().openapi({ description: 'The signing secret (Standard Webhooks). Only in the response to the POST that made the generation, and in its idempotent replays.' }),
    started: z
      .object({
        status: z.enum(STARTED_EVENT_STATUSES).openapi({
          description: 'pending: owed (a worker started the generation) or still to come; delivered: an attempt was answered with a 2xx; failed: every attempt failed; skipped: it will not be sent (the generation ended without starting, or before an attempt went: the end event says when it started)',
        }),
        attempts: z.number().int().nonnegative(),
        last_error: z.string().nullable(),
      })
      .optional()
      .openapi({ description: 'Only where webhook_events asked for "started": the generation.started event\'s own delivery state (ADR 0036); status above is the end event\'s' }),
  })
  .openapi('GenerationWebhook');


// Not JobUsage.extend: its OpenAPI form is allOf of two closed objects, which no usage can satisfy.
export const GenerationUsageView = z
  .object({
    ...JobUsage.shape,
    cost_usd: z.number().nullable().openapi({
      description: 'worker_seconds at hourly_usd (compute at list price, not an invoice); null where no price applies',
    }),
    hourly_usd: z.number().nullable().openapi({
      description: "The hourly worker price the generation is costed at: the deployment's price when its run ended and wrote its usage (it succeeded, or the output check withheld every image), which a later price change does not alter; otherwise today's price (other generations have no usage to cost, or were run by a version that kept no price); null where no price applies",
    }),
  })
  .strict()
  .openapi('GenerationUsage');

export const GenerationOutputView = z
  .object({
    index: z.number().int().nonnegative().openapi({ description: 'Which of the n images this is; a withheld image leaves a gap' }),
    seed: z.number().int().nonnegative().max(0xffffffff).openapi({
      format: 'int64',
      description: 'The seed this image ran with (the request\'s seed + index, mod 2^32, or one the job chose when the request gave none): the same request with this seed and n 1 makes this image again, byte for byte, on the same deployment while its model and worker kind stay the same (another GPU type, a model pushed again under the same name (model_version then differs), or CLIPAG_DISABLE_PREPACKING may change its last bits)',
    }),
    url: z.string().openapi({ description: 'Signed GET URL of the image (its format: content_type)' }),
    expires_at: Timestamp,
    // A string, not an enum: a format a later version adds must not fail a generated client's parse.
    content_type: z.string().openapi({ description: 'The image\'s format: "image/png", or "image/jpeg" or "image/webp" where the request asked for output_format "jpeg" or "webp"', example: 'image/png' }),
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    clip_score: z.number().optional().openapi({
      description: "The model's text–image alignment: the weighted mean cosine to the positive prompts, over square windows that together cover the whole image",
    }),
    content_flags: z.array(OutputFlag).optional().openapi({
      description: 'What the output check found in this image (copyright or trademark look-alikes); absent when nothing. Review before use.',
    }),
    b64_png: z.string().optional().openapi({
      format: 'byte',
      description: 'A PNG image itself, base64: only on GET /v1/generations/{id}?include=b64 (the same bytes as url)',
    }),
    b64_jpeg: z.string().optional().openapi({
      format: 'byte',
      description: 'A JPEG image itself (output_format "jpeg"), base64: only on GET /v1/generations/{id}?include=b64 (the same bytes as url)',
    }),
    b64_webp: z.string().optional().openapi({
      format: 'byte',
      description: 'A WebP image itself (output_format "webp"), base64: only on GET /v1/generations/{id}?include=b64 (the same bytes as url)',
    }),
  })
  .openapi('GenerationOutput');

/** An image whose storage expired (past `outputs_expire_at`): what made it, no link (ADR 0021 addendum). */
export const ExpiredOutputView = z
  .object({
    index: z.number().int().nonnegative(),
    seed: GenerationOutputView.shape.seed,
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    clip_score: z.number().optional(),
  })
  .openapi('ExpiredOutput');

export const WithheldOutputView = z
  .object({
    index: z.number().int().nonnegative(),
    content_flags: z.array(OutputFlag).openapi({ description: 'Why the image was kept back: the rules it matched' }),
  })
  .openapi('WithheldOutput');

/** The fleet, as a generation that waits is told of it (ADR 0040; shared/worker-presence.ts). */
export const QueueView = z
  .object({
    workers_ready: z.number().int().nonnegative().openapi({ description: 'Workers taking generations now (free or running one)' }),
    workers_busy: z.number().int().nonnegative().openapi({ description: 'Of workers_ready, those running a generation now' }),
    workers_starting: z.number().int().nonnegative().openapi({ description: 'Workers started and loading their model: ready within a minute or two' }),
    note: z.string().openapi({ description: 'What that means for the wait, in words: a free worker starts it within seconds; with none running, one is started, which takes a few minutes' }),
  })
  .openapi('QueueState', {
    description: "Only while a generation is queued (and in an estimate), where the API could read the fleet: whether a worker is there to take it, counted from the workers' presence documents written in the last 3 minutes, read at most every 15 s (ADR 0040). It does not say how many generations wait ahead (the queue is shared fairly among accounts)",
  });
export type QueueView = z.output<typeof QueueView>;

export const GenerationView = z
  .object({
    id: ResourceId,
    object: z.literal('generation'),
    status: JobStatus,
    created_at: Timestamp,
    started_at: Timestamp.nullable(),
    finished_at: Timestamp.nullable(),
    progress: z.object({
      step: z.number().int(),
      total: z.number().int(),
      attempt: z.number().int().nonnegative().openapi({
        description: 'Which run of the generation the progress is of: 0 before the first starts, 1 for the first. A run the deployment retries (a worker stopped, a storage fault) starts again from step 0 with the next attempt.',
      }),
    }),
    cancel_requested: z.boolean(),
    // Described on the component: an .openapi() here would rewrite QueueState's own description.
    queue: QueueView.optional(),
    outputs: z.array(GenerationOutputView),
    outputs_expire_at: Timestamp.nullable().openapi({
      description: "When the deployment's storage removes the images and frames (the job's end plus its retention); their links stop working then, so download what you keep: no link is signed to outlive it, and past it the generation lists no outputs and no frames (this time says why; `expired_outputs` keeps each image's seed). Null while none are stored, or where the deployment keeps them.",
    }),
    expired_outputs: z.array(ExpiredOutputView).openapi({
      description: 'Past `outputs_expire_at`: the images the storage removed, by index, with the seed that makes each again (no link). Empty before, and for a deleted generation.',
    }),
    withheld_outputs: z.array(WithheldOutputView).openapi({
      description: 'Images the output check kept back (ADR 0017): not stored, no URL. Usage still counts them. Empty when none.',
    }),
    // Nullable here, not in the components: a union keeps JobError and GenerationWebhook themselves
    // non-null (`.nullable()` on a registered schema made the component nullable for every use).
    error: z.union([JobError, z.null()]).openapi({ description: 'Why it failed: set when status is failed. A canceled generation has none, unless its cancel_after deadline ended it: code deadline_exceeded (ADR 0034)' }),
    usage: GenerationUsageView,
    warnings: z.array(z.string()).openapi({
      description: 'What the model could not read of the prompts: words outside its vocabulary, or a prompt cut at its context length. Empty when it read them all.',
    }),
    request: GenerationSpecView,
    model_version: z.string().nullable().openapi({
      description:
        "The content hash (sha256) of the model bundle that made the images: GET /v1/models shows each model's `content_hash`. The same request and seed make the same image on the same model_version (see `seed`); a model pushed again under its name has another. Null until a run made images, or where the deployment could not hash its bundle.",
      example: '091b89290466ab11bc1d34b3c1328ef2cd3c006e6ba5e0d96c6517d8ea772d78',
    }),
    content_flags: z.array(ContentFlag).openapi({
      description: 'What the prompt policy flagged: copyright, trademark, likeness or bias risks the caller should review before use. Empty when none.',
    }),
    webhook: z.union([GenerationWebhookView, z.null()]).openapi({ description: 'Its webhook_url and the delivery state; null without one' }),
    // Documented with the request's bounds: no stored job holds more (see METADATA_KEY_RULES).
    metadata: StoredMetadata.openapi({ ...METADATA_KEY_RULES, description: 'Your labels from the request (GenerationMetadata\'s bounds); {} when none' }),
    api_key_id: z.string().nullable().openapi({ description: 'The id of your API key that created the generation (GET /v1/usage?api_key_id= sums its usage); null for one created before keys were recorded' }),
    deleted_at: Timestamp.nullable().openapi({
      description: 'When you deleted the generation: its images and frames are gone, and its prompts, labels and flags blanked. Usage stays.',
    }),
  })
  .openapi('Generation', {
    description:
      'A text-to-image generation as it stands. `status` says where it is: `error` is set once it failed (or, with code deadline_exceeded, once its cancel_after deadline canceled it), `finished_at` once it ended (succeeded, failed or canceled)',
  });
export type GenerationView = z.output<typeof GenerationView>;


/**
 * The body of a webhook event: a completion (ADR 0013), or the start a request asked for with
 * webhook_events (ADR 0036); what happened, when, and the generation as it then stood.
 */
export const GenerationEvent = z
  .object({
    type: z.enum(['generation.started', 'generation.succeeded', 'generation.failed', 'generation.canceled']).openapi({
      description: 'generation.started (only with webhook_events ["started", "ended"]): a worker has started the generation, once (not again for a run the deployment retries); the others: it ended so',
    }),
    timestamp: Timestamp.openapi({ description: 'When the generation ended; for generation.started, when a worker first started it (its started_at)' }),
    // Described here, not on `data`: an .openapi() on the registered GenerationView rewrites the Generation component's own description.
    data: GenerationView,
  })
  .strict()
  .openapi('GenerationEvent', {
    description: 'What happened (the generation started, or ended), when, and in `data` the generation as it stood when this attempt was sent: its `webhook` says the end event\'s delivery state before this attempt (pending, with the attempts made so far)',
  });
export type GenerationEvent = z.output<typeof GenerationEvent>;
