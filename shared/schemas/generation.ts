import { z } from '@hono/zod-openapi';
import { CLIP_END_TOKEN_TEXT, CLIP_START_TOKEN_TEXT, cleanClipText, clipReadsNothing } from '../text-clean.ts';
import { MODEL_NAME_PATTERN, RESOURCE_ID_PATTERN } from './common.ts';
import { DEFAULT_JPEG_QUALITY, DEFAULT_WEBP_QUALITY, defaultOutputQuality, isLossyOutputFormat, MAX_OUTPUT_QUALITY, MIN_OUTPUT_QUALITY, OUTPUT_FORMATS, type OutputFormat } from '../output-format.ts';
import './field-hints.ts';

export const PROMPT_MAX_CHARS = 300;
export const MIN_SIDE = 64;
export const MAX_SIDE = 1024;
export const SIDE_MULTIPLE = 32;
export const MAX_STEPS = 500;
export const MAX_IMAGES = 4;
/**
 * The largest |weight| a request may give a prompt. Weights are relative (the engine divides by the
 * positive ones' sum), so nothing is lost by the bound; at 1e300 the sum overflowed and the job failed
 * or ran with every prompt at 0. Request-only: a stored spec from before it still parses.
 */
export const MAX_PROMPT_WEIGHT = 1000;
/**
 * The most a prompt may weigh relative to the positive weights together: the step graph runs the
 * normalized weights in float32, where -1000 against 1e-300 would be an infinite loss. The engine
 * refuses past it too; the request is refused here, before it is queued.
 */
export const MAX_RELATIVE_PROMPT_WEIGHT = 1e6;
/**
 * The smallest |weight| a request may give a prompt: below it the sums the worker forms of them (its
 * CLIP score, the negative prompt's share of the positive total) round away in float64: a weight of
 * 5e-324 made the reported score exactly 1, which switched the output check off, and a negative prompt
 * beside it weighed nothing. Weights are relative: nothing is lost by scaling them up together.
 */
export const MIN_PROMPT_WEIGHT = 1e-6;
/** The longest caller deadline a request may give (`cancel_after`, seconds from the generation's creation): a day. */
export const MAX_CANCEL_AFTER_SEC = 86_400;
const CANCEL_AFTER_RULE = `cancel_after must be a whole number of seconds, 1 to ${MAX_CANCEL_AFTER_SEC}`;
/** A negative_prompt's weight, as a share of the positive weights together (the worker adds it as a prompt of this weight). */
export const NEGATIVE_PROMPT_SHARE = 0.5;

/**
 * Text a caller could have written: no lone UTF-16 surrogate (JSON's "\ud800" escape parses to one,
 * past the body's UTF-8 check). The model would read U+FFFD, and a strict client cannot encode it.
 * (String.prototype.isWellFormed, which the ES2022 lib does not type.)
 */
export function isWellFormedText(s: string): boolean {
  return !/\p{Cs}/u.test(s);
}
export const NOT_WELL_FORMED = 'must be well-formed Unicode (no lone UTF-16 surrogate such as "\\ud800")';

const PromptText = z
  .string()
  .trim()
  .min(1, 'prompt must not be empty')
  .max(PROMPT_MAX_CHARS, `prompt must be at most ${PROMPT_MAX_CHARS} characters`);

/** A request's width and height when it names none: ViT-B/32's input size. */
export const DEFAULT_SIDE = 224;

/** An output side: `multipleOf`, not a refine, so the OpenAPI document states the rule too. */
const SideValue = z
  .number()
  .int()
  .min(MIN_SIDE)
  .max(MAX_SIDE)
  .multipleOf(SIDE_MULTIPLE, {
    // The sizes on either side, as a caller asking for 100 wants to know what to ask for instead.
    error: (issue) => {
      const v = typeof issue.input === 'number' ? issue.input : NaN;
      const lower = Math.max(MIN_SIDE, Math.floor(v / SIDE_MULTIPLE) * SIDE_MULTIPLE);
      const upper = Math.min(MAX_SIDE, lower + SIDE_MULTIPLE);
      return `must be a multiple of ${SIDE_MULTIPLE}${Number.isFinite(v) && v > MIN_SIDE && v < MAX_SIDE ? ` (such as ${lower} or ${upper})` : ''}`;
    },
  });
/** A stored spec's side (every stored spec names both; the default is for specs made before that). */
const Side = SideValue.default(DEFAULT_SIDE);
/** A request's side: when absent, the model's own input size (checkedSpec); a missing height takes the width. */
const RequestSide = SideValue.optional().openapi({
  // Stated outright: the generator does not carry zod's multipleOf into the document.
  multipleOf: SIDE_MULTIPLE,
  description: `Pixels, ${MIN_SIDE}–${MAX_SIDE}, a multiple of ${SIDE_MULTIPLE}. Default: the model's input size (GET /v1/models input_size, rounded up to a multiple of ${SIDE_MULTIPLE}); a missing height takes the width`,
});

/** The side a request that names none gets with a model of this input size: the model's own, as a valid side. */
export function defaultSideFor(inputSize: number | undefined): number {
  if (inputSize === undefined || !Number.isFinite(inputSize)) return DEFAULT_SIDE;
  return Math.min(MAX_SIDE, Math.max(MIN_SIDE, Math.ceil(inputSize / SIDE_MULTIPLE) * SIDE_MULTIPLE));
}

export const WeightedPrompt = z
  .object(
    {
    text: PromptText,
    weight: z
      .number()
      .refine((w) => Number.isFinite(w) && w !== 0, { message: 'weight must be a finite non-zero number' })
      .openapi({
        not: { const: 0 },
        description: `Non-zero: a negative weight steers away from the text; at least one prompt must weigh more than 0. Weights are relative; in a request each is ${MIN_PROMPT_WEIGHT} to ${MAX_PROMPT_WEIGHT} in magnitude and at most ${MAX_RELATIVE_PROMPT_WEIGHT} times the positive weights together, and the same text given with opposite weights must not cancel out`,
      }),
    },
    // ["a red circle"] where objects are wanted: what one looks like, and the field for a single text.
    { error: (issue) => (issue.code === 'invalid_type' && issue.expected === 'object' ? 'each of prompts is {"text": "…", "weight": 1}; for one text alone, send "prompt": "…"' : undefined) },
  )
  .strict()
  .openapi('WeightedPrompt');

const UPLOAD_INIT = new RegExp(`^upload:${RESOURCE_ID_PATTERN.source.slice(1, -1)}$`);

export const InitSpec = z
  .string()
  .refine((v) => v === 'gmm' || v === 'noise' || UPLOAD_INIT.test(v), {
    message: 'init must be "gmm", "noise" or "upload:<id>"',
  })
  .openapi({
    example: 'gmm',
    pattern: `^(gmm|noise|upload:${RESOURCE_ID_PATTERN.source.slice(1, -1)})$`,
    description:
      '"gmm" (class-conditional Gaussian prior), "noise", or "upload:<id>" (a PNG or a JPEG of at most 16 777 216 pixels, from POST /v1/uploads; when the generation is requested a PNG is checked whole, as the worker would decode it, and the segments of a JPEG are: kind, size, scans, cut short)',
  });

/** An init image named by URL in a request (ADR 0038): fetched by the API, stored as an upload. */
export const INIT_URL_PATTERN = /^https?:\/\//i;
/** Whether a request's `init` names an image by URL (ADR 0038): the API fetches it, the CLI sends it as given. */
export const isInitUrl = (init: string): boolean => INIT_URL_PATTERN.test(init);
export const INIT_URL_MAX_CHARS = 2000;
/** An init image given inline, as an RFC 2397 `data:` URI of a PNG or a JPEG in base64 (ADR 0042): decoded by the API, stored as an upload. */
export const INIT_DATA_URI_PATTERN = /^data:/i;
export const isInitDataUri = (init: string): boolean => INIT_DATA_URI_PATTERN.test(init);
/** Whether the API turns a request's init into an upload of the caller's (a URL it fetches, a data: URI it decodes). */
export const isInitToStore = (init: string): boolean => isInitUrl(init) || isInitDataUri(init);

/**
 * A request's init: what a stored spec takes, or an http(s) URL of a PNG or a JPEG, which the API
 * fetches when the generation is made and stores as an upload (the spec then names `upload:<id>`).
 */
export const RequestInitSpec = z
  .string()
  .refine((v) => v === 'gmm' || v === 'noise' || UPLOAD_INIT.test(v) || (INIT_URL_PATTERN.test(v) && v.length <= INIT_URL_MAX_CHARS && isWellFormedText(v)) || INIT_DATA_URI_PATTERN.test(v), {
    message: `init must be "gmm", "noise", "upload:<id>", the https URL of a PNG or a JPEG (at most ${INIT_URL_MAX_CHARS} characters), or such an image as a data: URI (data:image/png;base64,…)`,
  })
  .openapi({
    example: 'gmm',
    anyOf: [
      { type: 'string', pattern: `^(gmm|noise|upload:${RESOURCE_ID_PATTERN.source.slice(1, -1)})$` },
      { type: 'string', format: 'uri', pattern: '^[hH][tT][tT][pP][sS]?://', maxLength: INIT_URL_MAX_CHARS },
      { type: 'string', pattern: '^[dD][aA][tT][aA]:' },
    ],
    description:
      '"gmm" (class-conditional Gaussian prior), "noise", "upload:<id>" (a PNG or a JPEG of at most 16 777 216 pixels, from POST /v1/uploads; when the generation is requested a PNG is checked whole, as the worker would decode it, and the segments of a JPEG are: kind, size, scans, cut short), or the URL of such an image: the API fetches it once, when the generation is made (within 10 s, at most 3 redirects, no larger than an upload may be; in AWS only https on port 443 of a public address, as webhook_url), checks it as an upload, and stores it as one: the generation\'s request then shows init "upload:<id>", which DELETE /v1/uploads/{id} removes. The URL itself is not kept. An estimate checks the URL as far as it can without fetching it: its form, scheme and port, and an address written as a number (a name is not looked up). Or the image itself, as a data: URI (data:image/png;base64,… or data:image/jpeg;base64,…; standard or URL-safe base64): decoded, checked as an upload and stored as one in the same way, within the request body\'s size limit (64 KiB unless the deployment sets another), so for small images; an estimate checks it whole',
  } as object);

// A model is named as GET /v1/models lists it; `clipag generate --model` takes a folder, and its
// "models/toy" copied into a request was answered with the bare pattern (the new-user review).
export const ModelName = z.string().regex(MODEL_NAME_PATTERN, {
  error: (issue) => {
    const given = typeof issue.input === 'string' ? issue.input : '';
    const named = /[\\/]/.test(given) ? given.split(/[\\/]/).filter(Boolean).pop() : undefined;
    return `model is a name from GET /v1/models (lower-case letters, digits, ., _ and -, at most 64 characters)${named && MODEL_NAME_PATTERN.test(named) ? `, not a folder: for the bundle in ${JSON.stringify(given.slice(0, 100))}, "${named}"` : ''}`;
  },
});

/** A model_version: a content hash, whole or its first 12+ hex digits. */
export const MODEL_VERSION_PATTERN = /^[0-9a-f]{12,64}$/;

/** The webhook events a request may ask for (ADR 0036): `started` when a worker first starts the run, `ended` when it ends. */
export const WEBHOOK_EVENTS = ['started', 'ended'] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];
/** What a request that names no `webhook_events` gets: the end only, as before the field existed. */
export const DEFAULT_WEBHOOK_EVENTS: readonly WebhookEvent[] = ['ended'];

const WEBHOOK_EVENTS_DESCRIPTION =
  'Which events webhook_url receives: "ended" (generation.succeeded, generation.failed or generation.canceled, once it ends) and, asked for, "started" (generation.started, once a worker first starts it: a wait before it is the queue or the fleet scaling up from zero). Default ["ended"]; "ended" must be among them. Each event is signed and retried alike, with its own webhook-id. Only with webhook_url';

/**
 * A request's webhook_events: every refusal names the field itself (param `webhook_events`, not an
 * item's index), then the stored form's enum types it.
 */
const RequestWebhookEvents = z
  .array(z.unknown())
  .superRefine((events, ctx) => {
    const unknown = events.filter((e) => typeof e !== 'string' || !(WEBHOOK_EVENTS as readonly string[]).includes(e));
    if (events.length === 0) ctx.addIssue({ code: 'custom', message: `webhook_events must name at least one event (${WEBHOOK_EVENTS.map((e) => `"${e}"`).join(', ')}); leave it out for ["ended"]` });
    // An invalid_value (the events this version knows): a newer version's event, not damage (newerWriterOf).
    else if (unknown.length > 0) ctx.addIssue({ code: 'invalid_value', values: [...WEBHOOK_EVENTS], input: events, message: `webhook_events has unknown event ${(JSON.stringify(unknown[0]) ?? String(unknown[0])).slice(0, 40)}: the events are ${WEBHOOK_EVENTS.map((e) => `"${e}"`).join(' and ')}` });
    else if (new Set(events).size !== events.length) ctx.addIssue({ code: 'custom', message: 'webhook_events names an event twice' });
    else if (!events.includes('ended')) ctx.addIssue({ code: 'custom', message: 'webhook_events must include "ended" (the end event is what webhook.status and redelivery are about)' });
  })
  .pipe(z.array(z.enum(WEBHOOK_EVENTS)))
  .optional()
  .openapi({
    description: WEBHOOK_EVENTS_DESCRIPTION,
    items: { type: 'string', enum: [...WEBHOOK_EVENTS] },
    minItems: 1,
    maxItems: WEBHOOK_EVENTS.length,
    uniqueItems: true,
    contains: { const: 'ended' },
    example: ['started', 'ended'],
  } as object);

const generationFields = {
  prompt: PromptText.optional(),
  prompts: z.array(WeightedPrompt).min(1).max(8).optional(),
  negative_prompt: PromptText.optional(),
  width: Side,
  height: Side,
  steps: z.number().int().min(1).max(MAX_STEPS).default(100),
  // int64: a uint32 does not fit the int32 that generators make of a format-less integer.
  seed: z
    .number()
    .int()
    .min(0)
    .max(0xffffffff)
    .optional()
    .openapi({
      format: 'int64',
      description: 'Seeds image 0; image i runs with seed + i, mod 2^32 (4294967295 + 1 wraps to 0). Without it the generation picks one, which each output\'s seed then shows',
    }),
  n: z.number().int().min(1).max(MAX_IMAGES).default(1),
  init: InitSpec.default('gmm'),
  strength: z
    .number()
    .min(0)
    .max(1)
    .optional()
    .openapi({ description: 'Noise mixed into an "upload:<id>" init image: 0 keeps the image, 1 replaces it with noise (default 0.6). Only with an upload init.' }),
  // Stored only when given: a spec without it stays readable by a worker from before it (ADR 0030).
  model_version: z
    .string()
    .regex(MODEL_VERSION_PATTERN, 'model_version must be 12 to 64 lower-case hex digits: the start of a content_hash from GET /v1/models')
    .optional()
    .openapi({
      description:
        "Run only on this bundle of the model: its content_hash from GET /v1/models, or the first 12 or more of its hex digits (a generation's model_version names the bundle that made it). A deployment that serves another bundle under the model's name refuses the request (400, param model_version), or fails the generation with invalid_model when only the worker can tell. Without it the model's current bundle runs",
      example: '091b89290466ab11bc1d34b3c1328ef2cd3c006e6ba5e0d96c6517d8ea772d78',
    }),
  // The caller's deadline (ADR 0034). Stored only when given, as model_version: a spec without it stays
  // readable by a worker from before it (ADR 0030).
  cancel_after: z
    .number({ error: CANCEL_AFTER_RULE })
    .int(CANCEL_AFTER_RULE)
    .min(1, CANCEL_AFTER_RULE)
    .max(MAX_CANCEL_AFTER_SEC, CANCEL_AFTER_RULE)
    .optional()
    .openapi({
      description: `Seconds (1–${MAX_CANCEL_AFTER_SEC}) from the generation's created_at: if it has not ended by then, it ends canceled, with error.code deadline_exceeded, and nothing is billed (as any canceled generation). A queued one is ended by the worker that receives it or by the deployment's sweep (within about 2 minutes of the deadline in AWS, 1 minute locally, with no worker running); a running one stops within a step. One whose images are being stored when the deadline passes ends succeeded, as after a late cancel. Without it a generation waits as long as the queue keeps it`,
      example: 60,
    }),
  // The webhook events asked for (ADR 0036). Stored only when given, as model_version: a spec without
  // it stays readable by a worker from before it (ADR 0030), and one with it waits for a worker that
  // sends what it asks for. An event name a newer version adds reads as a newer writer's.
  webhook_events: z.array(z.enum(WEBHOOK_EVENTS)).min(1).max(8).optional().openapi({ description: WEBHOOK_EVENTS_DESCRIPTION }),
  // The images' file format (ADR 0041, 0043). Stored only for JPEG and WebP, with the quality: a PNG
  // spec stays readable by a worker from before it (ADR 0030), and a JPEG or WebP one waits for a worker
  // that writes that format.
  output_format: z.enum(OUTPUT_FORMATS).optional().openapi({
    description: `The images' file format: "png" (lossless; the default), "jpeg" (baseline, 4:4:4, at the default quality a tenth (smooth images) to two thirds (pure noise) of the PNG's size) or "webp" (lossy VP8, 4:2:0 with sharp colour conversion, at the default quality about a fifth of the PNG's size on the embedded model's images). Whichever, the same request with the same seed makes the same bytes, and the file says in XMP that a trained model made it. Only the images: frames stay PNG. A generation's request shows it only for "jpeg" and "webp"`,
    example: 'jpeg',
  }),
  output_quality: z.number().int().min(MIN_OUTPUT_QUALITY).max(MAX_OUTPUT_QUALITY).optional().openapi({
    description: `JPEG or WebP quality, ${MIN_OUTPUT_QUALITY}–${MAX_OUTPUT_QUALITY} (libjpeg's and libwebp's scales; default ${DEFAULT_JPEG_QUALITY} for JPEG, ${DEFAULT_WEBP_QUALITY} for WebP). Only with output_format "jpeg" or "webp"`,
    example: DEFAULT_JPEG_QUALITY,
  }),
};

/** Whether the bundle `contentHash` is the one `modelVersion` (a content hash or its start) names. */
export const isModelVersion = (contentHash: string, modelVersion: string): boolean => contentHash.startsWith(modelVersion);

/** Why a pinned model_version is refused where `model` is the bundle `contentHash` (the API's 400 and the worker's invalid_model alike). */
export const modelVersionMismatch = (model: string, contentHash: string, modelVersion: string): string =>
  `model "${model}" is bundle ${contentHash} here, not model_version ${modelVersion}: that bundle is not deployed (GET /v1/models shows content_hash)`;

function checkGeneration(req: { prompt?: unknown; prompts?: { weight: number }[] }, ctx: z.RefinementCtx): void {
  const has = [req.prompt !== undefined, req.prompts !== undefined].filter(Boolean).length;
  if (has !== 1) {
    ctx.addIssue({ code: 'custom', path: ['prompt'], message: 'give exactly one of "prompt" or "prompts"' });
  }
  if (req.prompts && req.prompts.every((p) => p.weight <= 0)) {
    ctx.addIssue({ code: 'custom', path: ['prompts'], message: 'at least one prompt weight must be positive' });
  }
}

/** The engine's prompt slots: the prompts and the negative prompt together. */
export const MAX_PROMPTS_WITH_NEGATIVE = 8;

/** Request-only checks: stored specs from before them must still parse. */
function checkRequestOnly(
  req: { init: string; strength?: number; output_format?: string; output_quality?: number; prompt?: string; prompts?: { text: string; weight: number }[]; negative_prompt?: string; webhook_events?: readonly string[]; webhook_url?: string },
  ctx: z.RefinementCtx,
): void {
  // The model reads a prompt after CLIP's cleaning (entities unescaped twice, control characters
  // dropped): one that cleans to nothing ("&nbsp;", "\u0001") would be queued and only fail on a GPU.
  const texts: Array<[string, Array<string | number>]> = [
    ...(req.prompt !== undefined ? [[req.prompt, ['prompt']] as [string, Array<string | number>]] : []),
    ...(req.prompts ?? []).map((p, i) => [p.text, ['prompts', i, 'text']] as [string, Array<string | number>]),
    ...(req.negative_prompt !== undefined ? [[req.negative_prompt, ['negative_prompt']] as [string, Array<string | number>]] : []),
  ];
  for (const [text, path] of texts) {
    if (!isWellFormedText(text)) {
      ctx.addIssue({ code: 'custom', path, message: NOT_WELL_FORMED });
      continue;
    }
    const cleaned = cleanClipText(text);
    if (cleaned === '') ctx.addIssue({ code: 'custom', path, message: 'is empty once read as the model reads it (HTML entities, control characters and whitespace removed)' });
    // "<|endoftext|> a cat": the model reads its end token first and nothing after it.
    else if (clipReadsNothing(text)) ctx.addIssue({ code: 'custom', path, message: cleaned.includes(CLIP_END_TOKEN_TEXT) ? `is empty once read as the model reads it: nothing comes before "${CLIP_END_TOKEN_TEXT}", its end token, after which it reads nothing` : `is empty once read as the model reads it: it holds only "${CLIP_START_TOKEN_TEXT}", the model's start token` });
  }
  const positiveSum = (req.prompts ?? []).reduce((sum, p) => (p.weight > 0 ? sum + p.weight : sum), 0);
  (req.prompts ?? []).forEach((p, i) => {
    if (Math.abs(p.weight) > MAX_PROMPT_WEIGHT) {
      ctx.addIssue({ code: 'custom', path: ['prompts', i, 'weight'], message: `weight must be between -${MAX_PROMPT_WEIGHT} and ${MAX_PROMPT_WEIGHT} (weights are relative: scale them down together)` });
    } else if (Math.abs(p.weight) < MIN_PROMPT_WEIGHT) {
      ctx.addIssue({ code: 'custom', path: ['prompts', i, 'weight'], message: `weight must be at least ${MIN_PROMPT_WEIGHT} in magnitude (weights are relative: scale them up together)` });
    } else if (positiveSum > 0 && !(Math.abs(p.weight) / positiveSum <= MAX_RELATIVE_PROMPT_WEIGHT)) {
      ctx.addIssue({ code: 'custom', path: ['prompts', i, 'weight'], message: `weight is more than ${MAX_RELATIVE_PROMPT_WEIGHT} times the positive weights together; give the prompts weights of comparable size` });
    }
  });
  // The same text given with opposite weights cancels out as the model reads it (CLIP lowercases and
  // cleans it first): a run that moves nothing, billed as a success. Refused when no text is left
  // weighing more than 0 once each text's weights are added together.
  if (req.prompts && req.prompts.every((p) => Number.isFinite(p.weight))) {
    const net = new Map<string, number>();
    const add = (text: string, weight: number) => {
      const read = cleanClipText(text).toLowerCase();
      net.set(read, (net.get(read) ?? 0) + weight);
    };
    for (const p of req.prompts) add(p.text, p.weight);
    if (req.negative_prompt !== undefined) add(req.negative_prompt, -NEGATIVE_PROMPT_SHARE * positiveSum);
    if (req.prompts.some((p) => p.weight > 0) && [...net.values()].every((w) => w <= 0)) {
      ctx.addIssue({ code: 'custom', path: ['prompts'], message: 'the prompts cancel out: the same text is given with opposite weights, and once each text\'s weights are added together none weighs more than 0' });
    }
  }
  if (req.prompts && req.negative_prompt !== undefined && req.prompts.length + 1 > MAX_PROMPTS_WITH_NEGATIVE) {
    ctx.addIssue({ code: 'custom', path: ['negative_prompt'], message: `with negative_prompt at most ${MAX_PROMPTS_WITH_NEGATIVE - 1} prompts fit (the model takes ${MAX_PROMPTS_WITH_NEGATIVE} in all); or give it as a prompt with a negative weight` });
  }
  if (req.webhook_events !== undefined && req.webhook_url === undefined) {
    ctx.addIssue({ code: 'custom', path: ['webhook_events'], message: 'webhook_events needs webhook_url: the events go there' });
  }
  if (req.output_quality !== undefined && !isLossyOutputFormat(req.output_format)) {
    // Accepting it would silently ignore it: a PNG is lossless.
    ctx.addIssue({ code: 'custom', path: ['output_quality'], message: 'output_quality applies only to output_format "jpeg" or "webp" (a PNG is lossless)' });
  }
  if (req.strength !== undefined && !req.init.startsWith('upload:') && !isInitToStore(req.init)) {
    // Accepting it would silently ignore it: "gmm" and "noise" starts have nothing to keep.
    ctx.addIssue({ code: 'custom', path: ['strength'], message: 'strength applies only to an init image ("upload:<id>", a URL or a data: URI)' });
  }
}

export const METADATA_MAX_KEYS = 16;
export const METADATA_MAX_KEY_CHARS = 40;
export const METADATA_MAX_VALUE_CHARS = 500;
export const METADATA_KEY_PATTERN = /^[A-Za-z0-9_.-]+$/;
export const METADATA_KEY_RULE = 'metadata keys are letters, digits, "_", "." and "-"';

/**
 * Labels as stored and shown: loose bounds only, so that a later version that allows more (keys,
 * longer values) does not make its records unreadable to an older one (the request checks the limits).
 */
export const StoredMetadata = z.record(z.string().max(1000), z.string().max(100_000));

/**
 * The key rules in JSON Schema terms (a variable: the metadata type has no propertyNames field). The
 * request's, and the response's too: POST /v1/generations is the only writer of a record's metadata,
 * and has checked these bounds since metadata was added, so no stored job holds more (the response's
 * parse stays StoredMetadata's, loose, for records a later version writes).
 */
export const METADATA_KEY_RULES = {
  maxProperties: METADATA_MAX_KEYS,
  propertyNames: { pattern: METADATA_KEY_PATTERN.source, minLength: 1, maxLength: METADATA_MAX_KEY_CHARS },
  additionalProperties: { type: 'string', maxLength: METADATA_MAX_VALUE_CHARS },
} as object;

/** The caller's own labels for a generation (its ids, a batch name): stored and returned as given, never read by clipag. */
export const GenerationMetadata = z
  .preprocess(
    (v, ctx) => {
      // An own "__proto__" key survives JSON.parse, but a record's parse drops it unseen: refuse it
      // rather than answer labels other than those sent.
      if (v !== null && typeof v === 'object' && Object.prototype.hasOwnProperty.call(v, '__proto__')) {
        ctx.issues.push({ code: 'custom', message: 'metadata key "__proto__" is reserved', path: ['__proto__'], input: v });
      }
      return v;
    },
    z.record(
      z.string().min(1).max(METADATA_MAX_KEY_CHARS).regex(METADATA_KEY_PATTERN, METADATA_KEY_RULE),
      z.string().max(METADATA_MAX_VALUE_CHARS).refine(isWellFormedText, NOT_WELL_FORMED),
    ),
  )
  .refine((m) => Object.keys(m).length <= METADATA_MAX_KEYS, { message: `at most ${METADATA_MAX_KEYS} metadata keys` })
  .openapi('GenerationMetadata', {
    ...METADATA_KEY_RULES,
    description: `Your own labels (at most ${METADATA_MAX_KEYS} keys of up to ${METADATA_MAX_KEY_CHARS} characters [A-Za-z0-9_.-], string values of up to ${METADATA_MAX_VALUE_CHARS} characters of well-formed Unicode): returned with the generation, in lists and in webhooks, never interpreted`,
    example: { order_id: 'A-1042', batch: 'spring-catalog' },
  });

/**
 * What a caller sends. Without `model` the deployment's default model is used (the one
 * `GET /v1/models` marks `default: true`); the API fills it in before the job is stored.
 */
export const GenerationRequest = z
  .object({
    ...generationFields,
    width: RequestSide,
    height: RequestSide,
    model: ModelName.optional().openapi({ description: "The model's id from GET /v1/models; default: the one marked default there" }),
    init: RequestInitSpec.default('gmm'),
    metadata: GenerationMetadata.optional(),
    webhook_events: RequestWebhookEvents,
    webhook_url: z
      .string()
      .max(2000)
      // The URL parser would read a lone surrogate as U+FFFD: the stored URL and the one called would differ.
      .refine(isWellFormedText, `webhook_url ${NOT_WELL_FORMED}`)
      .optional()
      .openapi({
        format: 'uri',
        description:
          'Called with a signed POST (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature) when the generation succeeds, fails or is canceled (and, with webhook_events ["started", "ended"], when a worker first starts it). The body is the generation, outputs with signed URLs. In AWS: https on port 443 (unless the deployment allows others) of a public address; local mode on a loopback address also allows http, any port and this machine. No credentials, no #fragment. The event is signed with the account webhook secret (POST /v1/webhook-secret; recommended: the receiver holds it in advance) and always with the secret of the generation itself (`webhook.secret` in the POST response). A receiver that verifies with the per-generation secret may get the event before it has that response (with `Prefer: wait`, or when a lost response is retried): it should answer an event for a generation id it does not know yet with a non-2xx status (503, say), never a 2xx. It is retried (30 s, 2 min, …), and by then it has the secret; a 2xx counts as delivered, and the event is not sent again.',
        example: 'https://example.com/hooks/clipag',
      }),
  })
  .strict()
  .superRefine((req, ctx) => {
    checkGeneration(req, ctx);
    checkRequestOnly(req, ctx);
  })
  .openapi('GenerationRequest', {
    // Exactly one of prompt and prompts (checkGeneration).
    oneOf: [{ required: ['prompt'] }, { required: ['prompts'] }],
    // The request's own bound on a weight (checkRequestOnly): not on WeightedPrompt, which stored specs share.
    allOf: [{ properties: { prompts: { items: { properties: { weight: { minimum: -MAX_PROMPT_WEIGHT, maximum: MAX_PROMPT_WEIGHT } } } } } }],
    description: `Exactly one of prompt and prompts. Each prompts[].weight is at most ${MAX_PROMPT_WEIGHT} in magnitude (-${MAX_PROMPT_WEIGHT}…${MAX_PROMPT_WEIGHT}, not 0). Also checked, beyond what the schema says: every text (prompt, negative_prompt, prompts[].text, metadata values, webhook_url) must be well-formed Unicode (no lone UTF-16 surrogate); a prompt must not be empty once read as the model reads it (HTML entities, control characters and whitespace removed); with negative_prompt at most ${MAX_PROMPTS_WITH_NEGATIVE - 1} prompts; strength only with an init image ("upload:<id>", a URL or a data: URI); webhook_url https on port 443 (or a port the deployment allows) of a public address in AWS, never port 0`,
  });

/**
 * The stored form of a request's output fields (ADR 0041, 0043): nothing for PNG (a spec without them
 * stays readable by a worker from before JPEG outputs), the format and its quality for JPEG and WebP.
 */
export function storedOutputFormat<T extends { output_format?: OutputFormat; output_quality?: number }>(spec: T): T {
  const { output_format: format, output_quality: quality, ...rest } = spec;
  return (isLossyOutputFormat(format) ? { ...rest, output_format: format, output_quality: quality ?? defaultOutputQuality(format) } : rest) as T;
}

/** What a job stores and the worker runs: a request with every default filled in, the model included. */
export const GenerationSpec = z.object({ ...generationFields, model: ModelName }).strict().superRefine(checkGeneration);

/**
 * A generation's request as its view shows it (GET, lists, webhooks): the stored spec, whose every
 * default was filled in when it was made, so the fields the worker ran are always there. No defaults
 * here: a generated client must not take 224 (a stored spec's fallback) for the size it would get.
 */
export const GenerationSpecView = z
  .object({
    ...generationFields,
    width: SideValue.openapi({ multipleOf: SIDE_MULTIPLE }),
    height: SideValue.openapi({ multipleOf: SIDE_MULTIPLE }),
    steps: z.number().int().min(1).max(MAX_STEPS),
    n: z.number().int().min(1).max(MAX_IMAGES),
    init: InitSpec,
    model: ModelName,
  })
  .strict()
  .openapi('GenerationSpec', { description: 'The request as run: every default filled in when the generation was made (a deleted generation shows its texts as "[deleted]")' });

export type GenerationRequestInput = z.input<typeof GenerationRequest>;
/** The request after parsing: defaults filled in except `model`. */
export type ParsedGenerationRequest = z.output<typeof GenerationRequest>;
/** The normalized spec (every default filled in); this is what the job record stores. */
export type GenerationSpec = z.output<typeof GenerationSpec>;
export type WeightedPrompt = z.output<typeof WeightedPrompt>;

/**
 * The seed image `index` of a job runs with: the spec's seed + index (mod 2³²). A job without a seed
 * still gets a fixed one (FNV-1a of its id), so a redelivery redoes the same image and the view can
 * tell the caller which seed reproduces it.
 */
export function imageSeed(jobId: string, spec: Pick<GenerationSpec, 'seed'>, index: number): number {
  let base = spec.seed;
  if (base === undefined) {
    let h = 0x811c9dc5;
    for (let i = 0; i < jobId.length; i++) {
      h ^= jobId.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    base = h >>> 0;
  }
  return (base + index) >>> 0;
}

/** The prompts as one weighted list, whichever form the request used. */
export function weightedPrompts(spec: GenerationSpec): WeightedPrompt[] {
  return spec.prompts ?? [{ text: spec.prompt as string, weight: 1 }];
}
