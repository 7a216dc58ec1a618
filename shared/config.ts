import { z } from 'zod';
import { resolve } from 'node:path';
import { closestName } from './did-you-mean.ts';
import { ConfigError } from './errors.ts';
import { MAX_IMAGE_FILE_BYTES } from './image-header.ts';
import { MODEL_NAME_PATTERN } from './schemas/common.ts';

/**
 * Process configuration, parsed once by a composition root from an env-like record, typed,
 * and failing fast with every problem listed. The server, the worker and the operator verbs read no
 * other setting; the remote client (cli/remote.ts: CLIPAG_API_URL, CLIPAG_API_KEY), the entry script
 * (bin/clipag.ts) and the CDK app (cdk/bin) read their own.
 */

/** "true" or "false" in the environment; the mode gives the default. */
const flag = (fallback: boolean) => z.enum(['true', 'false']).transform((v) => v === 'true').default(fallback);
/**
 * An integer in [min, max], in decimal digits only: Number() would also take "0x1f90", "8e3" and "0b11"
 * (the command line's flags refuse them too, cli/common.ts). The message names the range.
 */
const optionalIntIn = (min: number, max: number, message = `must be an integer in [${min}, ${max}]`) =>
  z
    .string()
    .regex(/^\d{1,16}$/, message)
    .transform(Number)
    .refine((n) => n >= min && n <= max, message)
    .optional();
const intIn = (min: number, max: number, fallback: number) => optionalIntIn(min, max).transform((n) => n ?? fallback);

const httpUrl = z.url({ protocol: /^https?$/ }).transform((u) => u.replace(/\/+$/, ''));
/** A base URL links are made under: a query or fragment would swallow the path appended to it. */
const baseUrl = httpUrl.refine((u) => !/[?#]/.test(u), 'must have no query (?) or fragment (#): paths are appended to it');

const Common = {
  /**
   * Where local signed links point. Unset: `clipag serve` uses its own address (cli/serve.ts); the
   * operator verbs' local store, the default port's (shared/adapters/stores.ts).
   */
  publicBaseUrl: baseUrl.optional(),
  port: intIn(1, 65535, 8787),
  host: z.string().min(1).default('127.0.0.1'),
  visibilityTimeoutSec: intIn(1, 43_200, 60),
  maxReceives: intIn(1, 1000, 3),
  receiveWaitSec: intIn(0, 20, 20),
  signedUrlTtlSec: intIn(1, 7 * 24 * 3600, 3600),
  /** Lifetime of the presigned PUT URL POST /v1/uploads hands out (short: it grants a write). */
  uploadUrlTtlSec: intIn(60, 24 * 3600, 900),
  /**
   * Wall-clock limit of one attempt of a job in the worker. At the deadline the run is aborted and
   * the job fails with code `timeout` (not retried: the same spec on the same hardware would time
   * out again); the lease heartbeat stops extending soon after, whatever the engine does.
   */
  jobTimeoutSec: intIn(1, 7 * 24 * 3600, 3600),
  /**
   * The largest upload (an init image). At most the worker's decode limit: above it the API would take
   * an upload (202) that every worker then refuses for its size, a failed job.
   */
  maxUploadBytes: optionalIntIn(1, MAX_IMAGE_FILE_BYTES, `must be an integer in [1, ${MAX_IMAGE_FILE_BYTES}]: 32 MiB is the largest init image the worker decodes`)
    .transform((n) => n ?? 10 * 1024 * 1024),
  maxBodyBytes: intIn(1024, 10 * 1024 * 1024, 64 * 1024),
  defaultModel: z.string().regex(MODEL_NAME_PATTERN).default('toy'),
  /**
   * The input size of the default model when the API cannot read its bundle (AWS: it ships in the
   * worker image; the CDK reads it from the repo's folder). Requests naming no size get it. Unset: the
   * store's index says, else 224.
   */
  defaultModelInputSize: optionalIntIn(1, 4096),
  modelsDir: z.string().min(1).default('models'),
  /** Where the worker runs the engine: onnxruntime's CUDA EP in the GPU container, CPU elsewhere. */
  device: z.enum(['cpu', 'cuda']).default('cpu'),
  /**
   * onnxruntime's session.disable_prepacking for the worker's sessions: about half the weight memory
   * on the CPU, at a 5–18 % slower step (bench/profile.ts). For small CPU machines.
   */
  disablePrepacking: flag(false),
  /**
   * The worker's idle step graphs kept loaded per model (one per output size, view count and colour
   * mode), least recently used unloaded past it. Each holds its session's memory (GBs at ViT-B/32 size
   * on a GPU); fewer than a multi-scale run's stages recompile every stage of every job (1-2 s each).
   */
  maxLeasedGraphs: intIn(1, 64, 8),
  /**
   * Models the worker keeps open at once (each its weights and graphs: about 600 MB and more for
   * ViT-B/32); past it the least recently used one no job holds is closed, and reopened when asked for.
   */
  maxOpenModels: intIn(1, 100, 2),
  /**
   * Bytes the worker's download cache of pushed models (one folder per bundle content hash) may take
   * on disk; past it the least recently used folders no engine has open are deleted, and
   * downloaded again when a job needs one. `unlimited`: never deleted. Default 20 GiB (a F32
   * ViT-B/32 bundle is about 600 MB; the worker's root volume, 100 GiB, also holds the image and /tmp).
   */
  modelCacheMaxBytes: z
    .string()
    .regex(/^(\d+|unlimited)$/, 'must be a number of bytes (such as 21474836480 for 20 GiB) or unlimited')
    .transform((v) => (v === 'unlimited' ? Infinity : Number(v)))
    .refine((v) => v === Infinity || Number.isSafeInteger(v), 'must be at most 9007199254740991 bytes, or unlimited')
    .default(20 * 2 ** 30),
  logLevel: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  /** Generations one owner may have queued or running at once; the next POST is a 429 (ADR 0016). */
  maxActiveJobs: intIn(1, 1000, 100),
  /**
   * How long the store keeps a generation's images (the bucket's lifecycle rule; the CDK sets it;
   * in local mode `clipag serve`'s retention pass removes them, functions/local-retention.ts).
   * Views then say until when the outputs exist (`outputs_expire_at`). Unset: kept (local mode's default).
   */
  outputRetentionDays: optionalIntIn(1, 3650),
  /**
   * How long a generation is kept at all (days after it ended; ADR 0037): then it is deleted as DELETE
   * /v1/generations/{id} deletes it (images and frames removed; prompts, labels, flags, the
   * Idempotency-Key blanked; usage kept). Run by `clipag serve`'s retention pass and, in AWS, by the
   * queued-job sweep. Unset: kept until the caller deletes it.
   */
  recordRetentionDays: optionalIntIn(1, 3650),
  /** What one worker costs per hour (USD); generations then show `usage.cost_usd` and estimates a cost. Unset: no cost figures. */
  workerHourlyUsd: z
    .string()
    // Any number of decimals (AWS's own price lists write 1.0060000000; a computed price has 17).
    .regex(/^(\d{1,4}(\.\d*)?|\.\d+)$/, 'must be a decimal number of dollars in [0, 1000], such as 2.5')
    .transform(Number)
    .refine((n) => n <= 1000, 'must be a decimal number of dollars in [0, 1000], such as 2.5')
    .optional(),
  /**
   * API requests one account may make per minute (a sliding window; the next is a 429 rate_limited,
   * ADR 0026). 0: no per-account limit. Local mode counts in the server's memory; AWS mode in the
   * DynamoDB table CLIPAG_RATE_TABLE.
   */
  rateLimitPerMin: intIn(0, 1_000_000, 0),
  /**
   * Upload URLs (POST /v1/uploads) one account may ask for per hour, over a sliding window: each may
   * store an image of up to CLIPAG_MAX_UPLOAD_BYTES for days. 0: no limit. Counted where the request
   * rate is.
   */
  uploadsPerHour: intIn(0, 1_000_000, 0),
  /**
   * `Prefer: wait` holds one account may start within one CLIPAG_MAX_WAIT_SEC (a sliding window that
   * long): about the holds it can have at once (at most twice as many), each keeping an API instance
   * busy. Past it the header is not honoured (the generation at once, without Preference-Applied).
   * 0: no budget. Counted where the request rate is.
   */
  maxWaits: intIn(0, 1_000_000, 0),
  /**
   * The ports a webhook URL may name ("443,8443"), while webhookAllowPrivate is off (AWS; local mode on
   * a public address): any port would make `last_error` a port scanner of public hosts (ADR 0013).
   * Default 443 alone.
   */
  webhookPorts: z
    .string()
    .regex(/^\d{1,5}( *, *\d{1,5})*$/, 'must be ports separated by commas, such as 443,8443')
    .transform((v) => [...new Set(v.split(',').map((p) => Number(p.trim())))])
    .refine((ports) => ports.every((p) => p >= 1 && p <= 65535), 'every port must be 1-65535')
    .default([443]),
};

const LocalConfig = z.object({
  mode: z.literal('local'),
  /** Webhooks to http: and to loopback/private addresses (a receiver on this machine): by default only while CLIPAG_HOST is loopback (parseConfig). */
  webhookAllowPrivate: flag(true),
  dataDir: z.string().min(1).default('.data'),
  /** Optional here: local mode can make one and keep it in dataDir (loadOrCreateSigningSecret). */
  signingSecret: z.string().min(32, 'must be at least 32 characters').optional(),
  /**
   * A retryable job failure's message comes back after this × its receive count (s). Not at once: a
   * passing fault (a locked file, a policy document being rewritten) would use up a job's deliveries
   * within a second; 2 s gives the retries 2 s and 4 s.
   */
  retryDelaySec: intIn(0, 900, 2),
  /** The longest `Prefer: wait=N` a request may be held for until its generation ends (0: the header is ignored). */
  maxWaitSec: intIn(0, 900, 60),
  /**
   * How long `clipag serve` keeps an upload (days from its PUT), as the bucket's lifecycle rule does in
   * AWS (the CDK's uploadRetentionDays, 5); one a queued or running job names stays until that job
   * ends. Unset: kept (functions/local-retention.ts).
   */
  uploadRetentionDays: optionalIntIn(1, 3650),
  ...Common,
});

const AwsConfig = z.object({
  mode: z.literal('aws'),
  /** Never by default in AWS: a webhook must not reach the instance metadata service or the VPC. */
  webhookAllowPrivate: flag(false),
  /** As in local mode, but 0 unless set: a wait must end before the API Lambda's timeout, which the CDK knows. */
  maxWaitSec: intIn(0, 900, 0),
  region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'must be an AWS region such as eu-west-1'),
  bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name'),
  queueUrl: httpUrl,
  deadLetterQueueUrl: httpUrl.optional(),
  /** Only for S3/SQS stand-ins in tests; unset in real deployments. */
  s3Endpoint: httpUrl.optional(),
  sqsEndpoint: httpUrl.optional(),
  /**
   * How long the queue keeps a message (SQS's retention; the CDK sets it). The queued-job sweep fails
   * a job that no message can reach any more (`expired`) instead of leaving it queued for ever.
   */
  queueRetentionSec: intIn(60, 14 * 24 * 3600, 4 * 24 * 3600),
  /** Injected by the ECS agent into every task; the worker marks its task busy through it (scale-in protection). */
  ecsAgentUri: httpUrl.optional(),
  /** A retryable job failure's message comes back after this × its receive count (s), so it may land on another worker. */
  retryDelaySec: intIn(0, 900, 30),
  /** The DynamoDB table of the per-account counts (requests, uploads, holds; the CDK's StatefulStack); required when any of those limits is above 0. */
  rateTable: z.string().regex(/^[A-Za-z0-9_.-]{3,255}$/, 'must be a DynamoDB table name').optional(),
  /** Only for a DynamoDB stand-in in tests; unset in real deployments. */
  dynamodbEndpoint: httpUrl.optional(),
  ...Common,
}).refine((c) => (c.rateLimitPerMin === 0 && c.uploadsPerHour === 0 && c.maxWaits === 0) || c.rateTable !== undefined, {
  // Counting in one Lambda's memory would let every concurrent instance through at the full limit.
  path: ['rateTable'],
  message: 'is required when CLIPAG_RATE_LIMIT_PER_MIN, CLIPAG_UPLOADS_PER_HOUR or CLIPAG_MAX_WAITS is above 0 (the counts live in DynamoDB)',
}).refine((c) => c.jobTimeoutSec + c.visibilityTimeoutSec <= 43_200, {
  // SQS keeps a received message hidden for at most 12 h in all; an extend past that is refused, and
  // the worker would take the refusal for a lost lease and abort the job.
  path: ['jobTimeoutSec'],
  message: 'with CLIPAG_VISIBILITY_TIMEOUT_SEC, must not exceed 43200 s (SQS hides a received message for at most 12 h)',
});

const ConfigSchema = z.discriminatedUnion('mode', [LocalConfig, AwsConfig]);
export type Config = z.output<typeof ConfigSchema>;
export type LocalConfig = z.output<typeof LocalConfig>;
export type AwsConfig = z.output<typeof AwsConfig>;

/** Environment variable → config field. */
export const ENV_VARS = {
  CLIPAG_MODE: 'mode',
  CLIPAG_DATA_DIR: 'dataDir',
  CLIPAG_SIGNING_SECRET: 'signingSecret',
  AWS_REGION: 'region',
  CLIPAG_BUCKET: 'bucket',
  CLIPAG_QUEUE_URL: 'queueUrl',
  CLIPAG_DLQ_URL: 'deadLetterQueueUrl',
  CLIPAG_QUEUE_RETENTION_SEC: 'queueRetentionSec',
  CLIPAG_S3_ENDPOINT: 's3Endpoint',
  CLIPAG_SQS_ENDPOINT: 'sqsEndpoint',
  ECS_AGENT_URI: 'ecsAgentUri',
  CLIPAG_PUBLIC_BASE_URL: 'publicBaseUrl',
  PORT: 'port',
  CLIPAG_HOST: 'host',
  CLIPAG_VISIBILITY_TIMEOUT_SEC: 'visibilityTimeoutSec',
  CLIPAG_MAX_RECEIVES: 'maxReceives',
  CLIPAG_RECEIVE_WAIT_SEC: 'receiveWaitSec',
  CLIPAG_SIGNED_URL_TTL_SEC: 'signedUrlTtlSec',
  CLIPAG_UPLOAD_URL_TTL_SEC: 'uploadUrlTtlSec',
  CLIPAG_JOB_TIMEOUT_SEC: 'jobTimeoutSec',
  CLIPAG_RETRY_DELAY_SEC: 'retryDelaySec',
  CLIPAG_MAX_UPLOAD_BYTES: 'maxUploadBytes',
  CLIPAG_MAX_BODY_BYTES: 'maxBodyBytes',
  CLIPAG_DEFAULT_MODEL: 'defaultModel',
  CLIPAG_DEFAULT_MODEL_INPUT_SIZE: 'defaultModelInputSize',
  CLIPAG_MODELS_DIR: 'modelsDir',
  /** The name the CDK worker stack sets (cdk/lib/config.ts ENV.executionProvider). */
  CLIPAG_EXECUTION_PROVIDER: 'device',
  LOG_LEVEL: 'logLevel',
  CLIPAG_WEBHOOK_ALLOW_PRIVATE: 'webhookAllowPrivate',
  CLIPAG_WEBHOOK_PORTS: 'webhookPorts',
  CLIPAG_WORKER_HOURLY_USD: 'workerHourlyUsd',
  CLIPAG_OUTPUT_RETENTION_DAYS: 'outputRetentionDays',
  CLIPAG_UPLOAD_RETENTION_DAYS: 'uploadRetentionDays',
  CLIPAG_RECORD_RETENTION_DAYS: 'recordRetentionDays',
  CLIPAG_MAX_ACTIVE_JOBS: 'maxActiveJobs',
  CLIPAG_MAX_WAIT_SEC: 'maxWaitSec',
  CLIPAG_DISABLE_PREPACKING: 'disablePrepacking',
  CLIPAG_MAX_LEASED_GRAPHS: 'maxLeasedGraphs',
  CLIPAG_MAX_OPEN_MODELS: 'maxOpenModels',
  CLIPAG_MODEL_CACHE_MAX_BYTES: 'modelCacheMaxBytes',
  CLIPAG_RATE_LIMIT_PER_MIN: 'rateLimitPerMin',
  CLIPAG_RATE_TABLE: 'rateTable',
  CLIPAG_UPLOADS_PER_HOUR: 'uploadsPerHour',
  CLIPAG_MAX_WAITS: 'maxWaits',
  CLIPAG_DYNAMODB_ENDPOINT: 'dynamodbEndpoint',
} as const satisfies Record<string, string>;

const FIELD_TO_ENV: Record<string, string> = Object.fromEntries(Object.entries(ENV_VARS).map(([env, field]) => [field, env]));

/** Throws ConfigError listing every invalid or missing variable. Empty strings count as unset. */
export function parseConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const input: Record<string, string> = { mode: 'local' };
  for (const [name, field] of Object.entries(ENV_VARS)) {
    const value = env[name];
    if (value !== undefined && value.trim() !== '') input[field] = value.trim();
  }
  const parsed = ConfigSchema.safeParse(input);
  if (parsed.success) {
    // Local mode allows webhooks to this machine and its network only while the server itself listens
    // on loopback: one listening on a public address would let any key holder make it POST into the LAN.
    if (parsed.data.mode === 'local' && input.webhookAllowPrivate === undefined) {
      return { ...parsed.data, webhookAllowPrivate: /^(127\.\d+\.\d+\.\d+|::1|localhost)$/i.test(parsed.data.host) };
    }
    return parsed.data;
  }
  const problems = parsed.error.issues.map((issue) => {
    const field = String(issue.path[0] ?? 'mode');
    const envName = FIELD_TO_ENV[field] ?? field;
    const shown = field === 'signingSecret' ? '' : input[field] !== undefined ? ` (got ${JSON.stringify(input[field])})` : ' (not set)';
    const message = input[field] === undefined && issue.code !== 'custom' ? 'is required' : issue.message;
    return `${envName}: ${message}${shown}`;
  });
  throw new ConfigError(problems);
}

/**
 * CLIPAG_* names that are not settings of the server, the worker or the operator verbs, yet are ours:
 * the README's shell variables, the remote client's, the CDK app's and CI's. Not warned about.
 */
const OTHER_CLIPAG_NAMES = new Set(['CLIPAG', 'CLIPAG_KEY', 'CLIPAG_API_URL', 'CLIPAG_API_KEY', 'CLIPAG_STAGE', 'CLIPAG_ALARM_EMAIL', 'CLIPAG_STOP_TIMEOUT_SEC', 'CLIPAG_NODE22_VERSION']);

/** Settings that only AWS mode reads: set while the mode is local, they point at a deployment this process will not use. */
const AWS_ONLY_NAMES = ['CLIPAG_BUCKET', 'CLIPAG_QUEUE_URL', 'CLIPAG_DLQ_URL', 'CLIPAG_RATE_TABLE', 'CLIPAG_QUEUE_RETENTION_SEC'] as const;

/**
 * What the environment sets that no setting reads, in words, one line each: a CLIPAG_* name that is no
 * setting (with the closest one: `CLIPAG_OUTPUT_RETENTON_DAYS=7` would otherwise keep images for ever,
 * without a word), and, in local mode, the AWS-only settings, ignored. Composition roots log them once
 * at start; parseConfig itself ignores unknown names, as a process's environment holds many.
 */
export function settingWarnings(env: Readonly<Record<string, string | undefined>>, platform: NodeJS.Platform = process.platform): string[] {
  const known = Object.keys(ENV_VARS);
  const warnings: string[] = [];
  // Windows' environment is case-insensitive: `clipag_mode` there is read as CLIPAG_MODE, so it is no
  // misspelling (elsewhere it is a different name, and ignored).
  const isKnown = (name: string) => name in ENV_VARS || OTHER_CLIPAG_NAMES.has(name);
  for (const name of Object.keys(env).sort()) {
    if (env[name] === undefined || !/^CLIPAG_/i.test(name) || isKnown(name) || (platform === 'win32' && isKnown(name.toUpperCase()))) continue;
    const near = closestName(name.toUpperCase(), known);
    warnings.push(`${name} is not a clipag setting${near ? ` (did you mean ${near}?)` : ''}; ignored`);
  }
  const setAws = localMode(env) ? AWS_ONLY_NAMES.filter((name) => (env[name] ?? '').trim() !== '') : [];
  if (setAws.length > 0) warnings.push(`${setAws.join(', ')} ${setAws.length === 1 ? 'is' : 'are'} set, but CLIPAG_MODE is not aws: the local store is used and ${setAws.length === 1 ? 'it is' : 'they are'} ignored`);
  return warnings;
}

/** Whether `env` selects local mode (unset or blank CLIPAG_MODE is local). */
function localMode(env: Readonly<Record<string, string | undefined>>): boolean {
  return (env.CLIPAG_MODE ?? '').trim() === '' || env.CLIPAG_MODE!.trim() === 'local';
}

/**
 * The configuration an operator verb (keys, policy, usage, models, dlq) works on. A verb that writes
 * where the deployment will never read (a key made in the local data folder while the shell names a
 * bucket and a queue) hands out a secret that is refused in production: AWS-only settings without
 * CLIPAG_MODE=aws are refused here, not ignored. Other warnings go to `warn`.
 */
export function operatorConfig(env: Readonly<Record<string, string | undefined>>, warn: (line: string) => void): Config {
  const config = parseConfig(env);
  const setAws = AWS_ONLY_NAMES.filter((name) => (env[name] ?? '').trim() !== '');
  if (config.mode === 'local' && setAws.length > 0) {
    throw new ConfigError([`CLIPAG_MODE: is not aws, yet ${setAws.join(', ')} ${setAws.length === 1 ? 'is' : 'are'} set: set CLIPAG_MODE=aws to work on that deployment, or unset ${setAws.length === 1 ? 'it' : 'them'} to work on the local data folder`]);
  }
  for (const line of settingWarnings(env)) warn(line);
  return config;
}

/** Where an operator verb's writes go, for its output: `s3://bucket` or the local data folder. */
export function storeDescription(config: Config): string {
  return config.mode === 'aws' ? `s3://${config.bucket}` : `the local data folder ${resolve(config.dataDir)}`;
}
