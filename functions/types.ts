import type { z } from '@hono/zod-openapi';
import type { ApiKeyRecord } from '../shared/schemas/apikey.ts';
import type { BlobStore, JobQueue, JobStore, RateCounter } from '../shared/ports.ts';
import type { ModelInfo } from './schemas.ts';
import type { PromptPolicy } from '../shared/prompt-policy.ts';
import type { WebhookResolver, WebhookSender } from '../shared/webhooks.ts';
import type { FleetView } from '../shared/worker-presence.ts';

/** Checks a presented bearer secret; `null` when unknown, malformed or revoked. `BlobApiKeyStore` is one. */
export interface ApiKeyVerifier {
  verify(secret: string): Promise<ApiKeyRecord | null>;
}

export interface AppLimits {
  /** Largest JSON request body, bytes (413 above). */
  maxBodyBytes: number;
  /** Largest init-image upload, bytes (413 above). */
  maxUploadBytes: number;
  /** Lifetime of signed GET URLs for outputs, seconds. */
  signedUrlTtlSec: number;
  /** Lifetime of presigned upload PUT URLs, seconds (default 900). */
  uploadUrlTtlSec?: number;
  /** Whether webhook URLs may use http: and private/loopback addresses (local mode; default false). */
  webhookAllowPrivate?: boolean;
  /** Where private addresses are refused: the ports a webhook URL may name (unset: 443 alone; ADR 0013). */
  webhookPorts?: readonly number[];
  /** One worker's price per hour (USD): `usage.cost_usd` and cost estimates. Unset: no cost figures. */
  workerHourlyUsd?: number;
  /** How long the store keeps a generation's images, days (views say `outputs_expire_at`). Unset: kept. */
  outputRetentionDays?: number;
  /** The workers' cap on steps per image (clipag serve --steps), for estimates. Unset: none. */
  maxSteps?: number;
  /** Generations one owner may have queued or running at once, 1..1000 (default 100); the next POST is a 429. */
  maxActiveJobs?: number;
  /** The longest `Prefer: wait` honoured, seconds (default 0: not honoured). */
  maxWaitSec?: number;
  /** Requests one account may make per minute, sliding window (ADR 0026); needs `rateCounter`. 0 or unset: no limit. */
  rateLimitPerMin?: number;
  /** Upload URLs (POST /v1/uploads) one account may ask for per hour, sliding window (ADR 0026); needs `rateCounter`. 0 or unset: no limit. */
  uploadsPerHour?: number;
  /**
   * `Prefer: wait` holds one account may start within one `maxWaitSec` (ADR 0026): about the holds it
   * can have at once (at most twice that). Past it the header is not honoured. 0 or unset: no budget.
   */
  maxWaits?: number;
}

export interface AppLogEntry {
  level: 'info' | 'warn' | 'error';
  msg: string;
  request_id?: string;
  [field: string]: unknown;
}

export interface AppDeps {
  blobs: BlobStore;
  queue: JobQueue;
  jobs: JobStore;
  keys: ApiKeyVerifier;
  /** Where the per-account counts live (`limits.rateLimitPerMin`, `uploadsPerHour`, `maxWaits`); unset: none of those limits. */
  rateCounter?: RateCounter;
  /**
   * The content policy an owner's requests are checked by (default: the shipped DEFAULT_PROMPT_POLICY
   * for all). `policyFromStore` reads the owner's own document, else the deployment's (ADR 0015, 0018).
   */
  promptPolicy?: (owner: string) => Promise<PromptPolicy>;
  /** The deployed models; an unknown `model` in a request is a 400. Memoize it if it is costly. */
  models: () => Promise<ModelInfo[]>;
  limits: AppLimits;
  /**
   * Sends the first attempt of the webhook a cancel while queued owes (ADR 0013). Default: over
   * HTTP(S) under `limits`' webhook policy, within CANCEL_WEBHOOK_TIMEOUT_MS. The cancel's answer
   * waits for it: one given here must bound its own attempt.
   */
  webhookSend?: WebhookSender;
  /**
   * The name lookup of an init image fetched by URL (ADR 0038), under `limits`' webhook address policy.
   * Default: the system's or c-ares, as a webhook's. Tests give names the addresses of their choosing.
   */
  initFetchResolve?: WebhookResolver;
  /** Reads the fleet a queued generation's view tells of (ADR 0040), at most every `fleetCacheMs`. Default: the workers' presence in `blobs`. */
  fleet?: (now: Date) => Promise<FleetView>;
  /**
   * How long one reading of the fleet is told again (default 15 s: each is a listing of S3, per Lambda
   * instance). `clipag serve` reads its own folder each second, so that its one worker's "busy" shows at
   * the next request, not after 15 s of "a worker is free".
   */
  fleetCacheMs?: number;
  /** Whether more workers are started while generations wait (AWS: yes, the default); the queue's note says so only then. */
  fleetScales?: boolean;
  /** Defaults to `() => new Date()`. */
  clock?: () => Date;
  /** Defaults to `jsonLineLog`: one JSON line per entry, `info` on stdout, warnings and errors on stderr. */
  log?: (entry: AppLogEntry) => void;
}

export type AppEnv = {
  Variables: {
    requestId: string;
    /**
     * performance.now() when the request arrived, set by the request-id middleware: a `Prefer: wait`
     * and the request line's duration count from it (monotonic: a wall clock can be stepped).
     */
    receivedMono: number;
    /** Set by the auth middleware on /v1/*. */
    owner: string;
    apiKeyId: string;
    /** The generation a /v1 route made or touched, for the request's log line (`job_id`). */
    jobId: string;
    /** The envelope's code of an error answer, set where the envelope is made, for the request's log line (`error_code`). */
    errorCode: string;
    /** Set while the request-log middleware is still to write this request's line, which then carries a 5xx's failure; onError writes its own otherwise. */
    requestLinePending: boolean;
  };
};

export type Infer<T extends z.ZodType> = z.output<T>;
