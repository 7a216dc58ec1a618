/**
 * Per-stage deployment configuration: one typed table, no environment reads.
 * `cdk/bin/app.ts` is the only place that decides which stage is selected.
 */

import { parseConfig } from '../../shared/config.ts';
import { SPEND_LIMITS_PREFIX } from '../../shared/keys.ts';
import { closestName } from '../../shared/did-you-mean.ts';
import { ConfigError } from '../../shared/errors.ts';
import { MODEL_NAME_PATTERN } from '../../shared/names.ts';
import { shippedModelInputSize } from './paths.ts';

export type StageName = 'dev' | 'prod';

export interface StageConfig {
  readonly stage: StageName;

  // ---- storage -------------------------------------------------------------
  /** Keep old object versions (costs storage; protects job records from bad writes). */
  readonly bucketVersioning: boolean;
  /** Days after which generated images under `outputs/` are deleted. */
  readonly outputRetentionDays: number;
  /**
   * Days after which init images under `uploads/` are deleted (counted from the upload). Kept above
   * queueRetentionDays, so a job submitted soon after its upload keeps its init image however long
   * it waits; one submitted days later can still find it expired (the job then fails, saying so).
   */
  readonly uploadRetentionDays: number;
  /**
   * Days after a generation ends that the queued-job sweep deletes it, as DELETE does: images and frames
   * removed, prompts, labels, flags and the Idempotency-Key blanked, usage kept (ADR 0037). Null: kept
   * until the customer deletes it. Set it to what the stage's privacy notice promises.
   */
  readonly recordRetentionDays: number | null;
  /** Origins allowed to PUT to presigned upload URLs from a browser. */
  readonly corsAllowedOrigins: readonly string[];
  /** Lifetime of signed GET/PUT URLs handed to callers. */
  readonly signedUrlTtlSeconds: number;

  // ---- queue ---------------------------------------------------------------
  /** SQS visibility timeout; the worker heartbeats at half of it. */
  readonly visibilityTimeoutSeconds: number;
  /** How long an unclaimed job may wait in the queue. */
  readonly queueRetentionDays: number;
  /** A job attempt's wall-clock limit (the worker's CLIPAG_JOB_TIMEOUT_SEC); with the visibility timeout ≤ 43200 s. */
  readonly jobTimeoutSeconds: number;
  /** Generations one account may have queued or running at once (the API's CLIPAG_MAX_ACTIVE_JOBS, ADR 0016). */
  readonly maxActiveJobsPerAccount: number;
  /**
   * The ports a webhook URL may name (CLIPAG_WEBHOOK_PORTS of the API, the sweep and the workers alike:
   * were they to differ, events would be accepted at POST and fail at every send). ADR 0013.
   */
  readonly webhookPorts: readonly number[];

  // ---- API -----------------------------------------------------------------
  readonly apiThrottleRatePerSecond: number;
  readonly apiThrottleBurst: number;
  /**
   * Requests one account may make per minute, over a sliding window (the API's
   * CLIPAG_RATE_LIMIT_PER_MIN, counted in the Stateful stack's rate-counter table); 0 turns the limit off.
   */
  readonly rateLimitPerMinute: number;
  /** Upload URLs one account may ask for per hour (CLIPAG_UPLOADS_PER_HOUR; each may store an image for uploadRetentionDays); 0: no limit. */
  readonly uploadsPerHour: number;
  /**
   * `Prefer: wait` holds one account may start within one longest wait (lambdaTimeoutSeconds − 3 s;
   * CLIPAG_MAX_WAITS): about the API executions it can hold at once (at most twice as many, as the
   * window slides). 0: no budget.
   */
  readonly maxWaitsPerAccount: number;
  readonly lambdaMemoryMiB: number;
  readonly lambdaTimeoutSeconds: number;
  /** How often the queued-job sweep runs (re-sends the message of a job queued over 5 min and never started). */
  readonly queuedJobSweepMinutes: number;

  // ---- GPU worker ----------------------------------------------------------
  /**
   * One-GPU types the group may launch, in priority order. On demand (useSpot false) the group launches
   * the first type that has capacity (a prioritized mixed-instances policy), so an
   * InsufficientInstanceCapacity for the first falls through to the next instead of leaving tasks
   * PROVISIONING; with Spot they are all pools of one price-capacity-optimized request. Each must run
   * the image's CUDA 12 build of onnxruntime (g4dn's T4, g5's A10G, g6's L4: compute capability 7.5 to 8.9; ADR 0003).
   */
  readonly instanceTypes: readonly string[];
  /**
   * What one worker costs per hour, USD: the primary instance type's on-demand list price (g5.xlarge,
   * us-east-1: 1.006; set it for other regions). Callers see it as `usage.cost_usd` and in estimates.
   * With Spot, or on a cheaper fallback type, it is an upper bound.
   */
  readonly workerHourlyUsd: number;
  /**
   * The model a request that names none gets, and the one each worker warms before it polls
   * (ADR 0020): `toy` (in the image) until a real bundle is pushed to the store (docs/model-store.md).
   * Set here, per stage, never only on the command line: `cdk` does not keep a `-c` value, so the next
   * deploy without it would quietly put every default-model request back on the old model. Prod refuses
   * a `-c defaultModel` that differs from its entry (`selectStage`).
   */
  readonly defaultModel: string;
  /**
   * The GPU instances' AMI. Null (dev and prod as shipped): the ECS-optimized Amazon Linux 2023 GPU AMI
   * that AWS recommends at each deploy (the SSM parameter
   * `/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id`), so any deploy, an
   * API-only one included, may move the fleet to a new NVIDIA driver. An AMI id (`ami-…`, of the stage's
   * region): that image until this entry changes, moved on purpose and followed by a smoke job
   * (cdk/README.md, "Pin or roll back the GPU AMI").
   */
  readonly gpuAmiId: string | null;
  readonly useSpot: boolean;
  readonly maxInstances: number;
  /** Queue backlog (visible + in flight) one task is expected to absorb before another is added. */
  readonly jobsPerTask: number;
  /** Minutes of zero backlog before the service is scaled to zero. */
  readonly scaleInAfterIdleMinutes: number;
  readonly rootVolumeGiB: number;
  readonly taskCpuUnits: number;
  readonly taskMemoryMiB: number;
  /** Seconds ECS waits after SIGTERM before SIGKILL; the worker drains inside it. */
  readonly stopTimeoutSeconds: number;
  readonly containerInsights: boolean;
  readonly logRetentionDays: number;

  // ---- alarms --------------------------------------------------------------
  /** Alarm when a queued job (not yet running) has waited this long since its message was sent. */
  readonly alarmOldestQueuedJobSeconds: number;
  /** Alarm when at least this many messages sit in the DLQ. */
  readonly alarmDlqDepth: number;
  /**
   * E-mail subscribed to the alarm topic; required in prod, where an alarm nobody reads is no alarm.
   * From `-c alarmEmail`, then $CLIPAG_ALARM_EMAIL, then the stage's entry here (where it lasts from one
   * deploy to the next: a deploy without any removes the subscription an earlier one made).
   */
  readonly alarmEmail?: string;
  /**
   * A monthly AWS Budget, in USD, on the **whole account's** cost (not only this stage's: cost-allocation
   * tags must be activated by hand and count only from then on, so a tag filter would read $0, and never
   * notify, on a deployment where nobody did it). Credits and refunds are left out, so promotional credits
   * do not hide a runaway fleet. It notifies the alarm topic at 80 % and 100 % of actual spend and at
   * 100 % of AWS's forecast for the month (cdk/README.md, On call, "AWS spend over budget"). In an AWS
   * Organizations management account it reads the whole organization's bill. Null: no
   * budget. A whole number of dollars, 1 to 100000 (the upper bound catches a typo's extra digits).
   */
  readonly monthlyBudgetUsd: number | null;
}

/** What each stage's entry states for itself, never taken over from another stage's entry. */
type OwnValues = 'stage' | 'defaultModel' | 'alarmEmail';

/** A stage's values that another stage may start from: all but its own (the type makes the new entry state them). */
function sharedValues(from: StageConfig): Omit<StageConfig, OwnValues> {
  const { stage: _stage, defaultModel: _defaultModel, alarmEmail: _alarmEmail, ...shared } = from;
  return shared;
}

const dev: StageConfig = {
  stage: 'dev',
  bucketVersioning: false,
  outputRetentionDays: 7,
  uploadRetentionDays: 5,
  recordRetentionDays: null,
  corsAllowedOrigins: ['*'],
  signedUrlTtlSeconds: 3600,
  visibilityTimeoutSeconds: 300,
  queueRetentionDays: 4,
  jobTimeoutSeconds: 3600,
  maxActiveJobsPerAccount: 100,
  webhookPorts: [443],
  apiThrottleRatePerSecond: 10,
  apiThrottleBurst: 20,
  rateLimitPerMinute: 300,
  uploadsPerHour: 60,
  maxWaitsPerAccount: 6,
  lambdaMemoryMiB: 512,
  lambdaTimeoutSeconds: 15,
  queuedJobSweepMinutes: 2,
  instanceTypes: ['g5.xlarge', 'g4dn.xlarge'],
  workerHourlyUsd: 1.006,
  defaultModel: 'toy',
  gpuAmiId: null,
  useSpot: true,
  maxInstances: 2,
  jobsPerTask: 4,
  scaleInAfterIdleMinutes: 5,
  rootVolumeGiB: 100,
  // g5.xlarge: 4 vCPU / 16 GiB; leave headroom for the ECS agent and the OS.
  taskCpuUnits: 3584,
  taskMemoryMiB: 14336,
  stopTimeoutSeconds: 120,
  containerInsights: false,
  logRetentionDays: 14,
  alarmOldestQueuedJobSeconds: 900,
  alarmDlqDepth: 1,
  // Dev's bill is the idle floor (about $3-6 a month, cdk/README.md "What a stage costs"), a few dollars
  // of bursts (about $0.20 each on Spot) and smoke jobs: $100 is far above a normal month, and two
  // instances kept busy (at most 2 x $1.006 x 24 = $48 a day on demand, less on Spot) pass it in about
  // two days, before the month's invoice. With prod in the same account it also counts prod's cost (the
  // budget reads the whole account): set it to null there, and let prod's cover the account.
  monthlyBudgetUsd: 100,
};

const prod: StageConfig = {
  ...sharedValues(dev),
  stage: 'prod',
  // Prod's own, stated here (the type requires it): edit it when a pushed model becomes the default.
  defaultModel: 'toy',
  bucketVersioning: true,
  outputRetentionDays: 30,
  apiThrottleRatePerSecond: 50,
  apiThrottleBurst: 100,
  rateLimitPerMinute: 600,
  uploadsPerHour: 300,
  maxWaitsPerAccount: 12,
  // Waits of up to 26 s (Prefer: wait; lambdaTimeoutSeconds − 3): a 100-step job on a warm GPU takes
  // about 14 s, past dev's 12 s cap, so a prod caller gets its images from one request. Under API
  // Gateway's 30 s with a cold start's second or two to spare; maxWaitsPerAccount bounds the
  // executions one account's waits can hold.
  lambdaTimeoutSeconds: 29,
  // On-demand by default in prod: a Spot reclaim costs a customer's job a restart.
  useSpot: false,
  // In this order when g5 has no on-demand capacity in the group's AZs: g6 (L4, cheaper), then g4dn
  // (T4, slower per image). workerHourlyUsd stays g5's price: an upper bound on the others.
  instanceTypes: ['g5.xlarge', 'g6.xlarge', 'g4dn.xlarge'],
  maxInstances: 8,
  scaleInAfterIdleMinutes: 15,
  containerInsights: true,
  logRetentionDays: 90,
  alarmOldestQueuedJobSeconds: 600,
  // About 994 g5.xlarge hours at workerHourlyUsd (ADR 0014): 1.4 instances busy around the clock, a
  // sixth of the fleet at maxInstances (8 x $1.006 x 730 h = $5,875 a month), with the idle floor and
  // the scale-out tails (about $0.60 a burst, ADR 0014's addendum) well inside it. A fleet held at its
  // maximum ($193 a day) passes it in about five days, and the fleet-at-max alarm pages after 3 hours.
  // Set it to the month you expect, with margin, once the stage has customers.
  monthlyBudgetUsd: 1000,
};

export const STAGES: Readonly<Record<StageName, StageConfig>> = { dev, prod };

export function isStageName(value: string): value is StageName {
  return Object.hasOwn(STAGES, value);
}

/** Looks up and validates a stage; fails fast at synth rather than at deploy. */
export function stageConfig(name: string, overrides: Partial<StageConfig> = {}): StageConfig {
  if (!isStageName(name)) {
    throw new Error(`Unknown stage "${name}". Known stages: ${Object.keys(STAGES).join(', ')}`);
  }
  const cfg: StageConfig = { ...STAGES[name], ...overrides, stage: name };
  validate(cfg);
  return cfg;
}

/** A value the deployer passed at synth, and where it came from (`-c stage`, `$CLIPAG_STAGE`…), for the summary. */
export interface PassedValue {
  readonly value: string;
  readonly from: string;
}

/** What cdk/bin/app.ts read from the context and the environment: the stage, and the values that may override its entry. */
export interface SynthSelection {
  readonly stage: PassedValue;
  readonly alarmEmail?: PassedValue;
  readonly defaultModel?: PassedValue;
}

/**
 * The stage a synth builds, from what the deployer passed, and a summary of its effective default model
 * and alarm e-mail with where each came from: cdk/bin/app.ts prints it on stderr, so a value that went
 * back to the table's (a `-c` left out) shows in every synth's and deploy's output.
 *
 * Prod takes its default model from its entry only: a `-c defaultModel` that differs is refused,
 * because the next deploy without it would revert prod's default-model requests without a word. Dev
 * takes one for a try, and the summary says that it lasts one deploy.
 */
export function selectStage(selection: SynthSelection): { config: StageConfig; summary: string } {
  const name = selection.stage.value;
  if (!isStageName(name)) {
    throw new Error(`Unknown stage "${name}" (${selection.stage.from}). Known stages: ${Object.keys(STAGES).join(', ')}`);
  }
  const entry = STAGES[name];
  const model = selection.defaultModel;
  if (name === 'prod' && model !== undefined && model.value !== entry.defaultModel) {
    throw new Error(
      `Invalid config for stage "prod":\n  - defaultModel comes from the prod entry of cdk/lib/config.ts ("${entry.defaultModel}"), and ${model.from} asks for ${JSON.stringify(model.value)}: ` +
        `a -c value lasts one deploy, and the next deploy without it would put every request that names no model back on "${entry.defaultModel}". Set defaultModel in the prod entry instead (docs/model-store.md).`,
    );
  }
  const config = stageConfig(name, {
    ...(selection.alarmEmail ? { alarmEmail: selection.alarmEmail.value } : {}),
    ...(model ? { defaultModel: model.value } : {}),
  });
  const modelLine =
    model === undefined || model.value === entry.defaultModel
      ? `${config.defaultModel} (the ${name} entry of cdk/lib/config.ts)`
      : `${config.defaultModel} (${model.from}, for this deploy only: the next one without it goes back to the entry's "${entry.defaultModel}")`;
  const emailLine = selection.alarmEmail
    ? `${config.alarmEmail} (${selection.alarmEmail.from})`
    : config.alarmEmail !== undefined
      ? `${config.alarmEmail} (the ${name} entry of cdk/lib/config.ts)`
      : 'none: the alarm topic gets no subscriber, and one an earlier deploy made is removed (set alarmEmail in cdk/lib/config.ts, or pass -c alarmEmail or $CLIPAG_ALARM_EMAIL)';
  const summary = [`clipag: stage ${name} (${selection.stage.from})`, `  defaultModel: ${modelLine}`, `  alarmEmail:   ${emailLine}`].join('\n');
  return { config, summary };
}

/**
 * The one-GPU instance types a stage may name in `instanceTypes`, with their vCPUs and nominal memory
 * (EC2's published sizes). A type not listed here is refused: add it with its figures before using it.
 */
export const GPU_INSTANCE_TYPES: Readonly<Record<string, { readonly vcpus: number; readonly memoryMiB: number }>> = {
  'g4dn.xlarge': { vcpus: 4, memoryMiB: 16 * 1024 },
  'g4dn.2xlarge': { vcpus: 8, memoryMiB: 32 * 1024 },
  'g4dn.4xlarge': { vcpus: 16, memoryMiB: 64 * 1024 },
  'g5.xlarge': { vcpus: 4, memoryMiB: 16 * 1024 },
  'g5.2xlarge': { vcpus: 8, memoryMiB: 32 * 1024 },
  'g5.4xlarge': { vcpus: 16, memoryMiB: 64 * 1024 },
  'g6.xlarge': { vcpus: 4, memoryMiB: 16 * 1024 },
  'g6.2xlarge': { vcpus: 8, memoryMiB: 32 * 1024 },
  'g6.4xlarge': { vcpus: 16, memoryMiB: 64 * 1024 },
};

/**
 * What ECS can place on one instance of `type`. CPU: the agent registers 1024 units per vCPU and
 * reserves none. Memory: the agent registers what the OS reports as total memory (less any
 * ECS_RESERVED_MEMORY, unset here), which is below the nominal size by the kernel's and the
 * platform's share: AWS's own example is an m4.large, 8192 MiB nominal, registering 7985 MiB (2.5 %
 * less). AWS publishes no per-type figure for the GPU AMI (whose NVIDIA driver takes more), so this
 * keeps a conservative 10 % of the nominal memory back: 14745 MiB of a 16 GiB type, 29491 of 32 GiB.
 */
export function ecsPlaceable(type: string): { cpuUnits: number; memoryMiB: number } | undefined {
  const spec = GPU_INSTANCE_TYPES[type];
  if (!spec) return undefined;
  return { cpuUnits: spec.vcpus * 1024, memoryMiB: Math.floor(spec.memoryMiB * 0.9) };
}

/** An EC2 image id: `ami-` and 8 (older) or 17 hex digits. */
export const GPU_AMI_ID_PATTERN = /^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;

/** The retention periods CloudWatch Logs accepts. */
const LOG_RETENTION_DAYS = new Set([
  1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
]);

function validate(cfg: StageConfig): void {
  const problems: string[] = [];
  const positiveInt = (key: keyof StageConfig) => {
    const v = cfg[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) problems.push(`${key} must be a positive integer`);
  };
  (
    [
      'outputRetentionDays',
      'uploadRetentionDays',
      'signedUrlTtlSeconds',
      'visibilityTimeoutSeconds',
      'queueRetentionDays',
      'jobTimeoutSeconds',
      'maxActiveJobsPerAccount',
      'apiThrottleRatePerSecond',
      'apiThrottleBurst',
      'lambdaMemoryMiB',
      'lambdaTimeoutSeconds',
      'queuedJobSweepMinutes',
      'maxInstances',
      'jobsPerTask',
      'scaleInAfterIdleMinutes',
      'rootVolumeGiB',
      'taskCpuUnits',
      'taskMemoryMiB',
      'stopTimeoutSeconds',
      'logRetentionDays',
      'alarmOldestQueuedJobSeconds',
      'alarmDlqDepth',
    ] as const
  ).forEach(positiveInt);
  if (!LOG_RETENTION_DAYS.has(cfg.logRetentionDays)) {
    problems.push(`logRetentionDays must be one of CloudWatch's values: ${[...LOG_RETENTION_DAYS].join(', ')}`);
  }
  if (cfg.instanceTypes.length === 0) problems.push('instanceTypes must name at least one type');
  // The task must fit every type the group may launch (Spot uses them all), or a task waits PROVISIONING
  // for ever while managed scaling keeps launching (and billing) GPU instances it can never use.
  for (const type of cfg.instanceTypes) {
    const placeable = ecsPlaceable(type);
    if (!placeable) {
      problems.push(`instanceTypes: unknown instance type ${JSON.stringify(type)}; known one-GPU types: ${Object.keys(GPU_INSTANCE_TYPES).join(', ')} (add it with its vCPUs and memory to GPU_INSTANCE_TYPES in cdk/lib/config.ts)`);
      continue;
    }
    if (cfg.taskCpuUnits > placeable.cpuUnits) problems.push(`taskCpuUnits must be <= ${placeable.cpuUnits} (what ECS registers for ${type}); got ${cfg.taskCpuUnits}`);
    if (cfg.taskMemoryMiB > placeable.memoryMiB) problems.push(`taskMemoryMiB must be <= ${placeable.memoryMiB} (the memory ECS can place on ${type}, nominal ${GPU_INSTANCE_TYPES[type]!.memoryMiB} MiB less the OS's share); got ${cfg.taskMemoryMiB}`);
  }
  // Lambda's own range for a function's memory.
  if (cfg.lambdaMemoryMiB < 128 || cfg.lambdaMemoryMiB > 10_240) problems.push('lambdaMemoryMiB must be in [128, 10240] (Lambda limit)');
  // It is the evaluation periods (and datapoints) of the scale-in alarm, whose period is 1 minute
  // (gpu-queue-worker.ts): CloudWatch refuses an alarm whose period × evaluation periods exceeds one day
  // when the period is under an hour, so 1440 one-minute periods at most.
  if (cfg.scaleInAfterIdleMinutes > 1440) problems.push('scaleInAfterIdleMinutes must be <= 1440 (the scale-in alarm evaluates 1-minute periods, and CloudWatch allows at most a day of them)');
  if (cfg.gpuAmiId !== null && !GPU_AMI_ID_PATTERN.test(cfg.gpuAmiId)) problems.push(`gpuAmiId must be null (the recommended ECS GPU AMI at each deploy) or an AMI id (ami- and 8 or 17 hex digits); got ${JSON.stringify(cfg.gpuAmiId)}`);
  if (!MODEL_NAME_PATTERN.test(cfg.defaultModel)) problems.push(`defaultModel is not a model name: ${JSON.stringify(cfg.defaultModel)} (lower-case letters, digits, '.', '_', '-')`);
  if (cfg.alarmEmail !== undefined && !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(cfg.alarmEmail)) problems.push(`alarmEmail is not an e-mail address: ${JSON.stringify(cfg.alarmEmail)}`);
  if (cfg.stage === 'prod' && cfg.alarmEmail === undefined) problems.push('alarmEmail is required in prod (alarmEmail in the prod entry of cdk/lib/config.ts, -c alarmEmail=ops@example.com or $CLIPAG_ALARM_EMAIL): the alarms would tell nobody');
  if (!(Number.isFinite(cfg.workerHourlyUsd) && cfg.workerHourlyUsd >= 0 && cfg.workerHourlyUsd <= 1000)) problems.push('workerHourlyUsd must be a price in [0, 1000]');
  // The ECS GPU AMI's root snapshot is 30 GiB (amazon-ecs-ami's block_device_size_gb): a smaller volume
  // fails every launch. gp3 volumes end at 16 TiB.
  if (cfg.rootVolumeGiB < 30 || cfg.rootVolumeGiB > 16_384) problems.push('rootVolumeGiB must be in [30, 16384] (the GPU AMI\'s 30 GiB root snapshot; gp3\'s 16 TiB)');
  // SQS limit; the worker heartbeat keeps long jobs leased, so no need to go near it.
  if (cfg.visibilityTimeoutSeconds > 43_200) problems.push('visibilityTimeoutSeconds must be <= 43200');
  // A received message stays hidden for at most 12 h: the run and one timeout after it must fit (ADR 0023).
  if (cfg.jobTimeoutSeconds + cfg.visibilityTimeoutSeconds > 43_200) problems.push('jobTimeoutSeconds + visibilityTimeoutSeconds must be <= 43200 (SQS hides a message for at most 12 h)');
  if (cfg.maxActiveJobsPerAccount > 1000) problems.push('maxActiveJobsPerAccount must be <= 1000');
  if (cfg.webhookPorts.length === 0 || !cfg.webhookPorts.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)) problems.push('webhookPorts must be one or more ports in 1-65535');
  // 0 is allowed (no limit), so it is not one of the positive integers above.
  for (const field of ['rateLimitPerMinute', 'uploadsPerHour', 'maxWaitsPerAccount'] as const) {
    const value = cfg[field];
    if (!(Number.isInteger(value) && value >= 0 && value <= 1_000_000)) problems.push(`${field} must be an integer in [0, 1000000] (0 turns the limit off)`);
  }
  if (cfg.monthlyBudgetUsd !== null && !(Number.isInteger(cfg.monthlyBudgetUsd) && cfg.monthlyBudgetUsd >= 1 && cfg.monthlyBudgetUsd <= 100_000)) {
    problems.push(`monthlyBudgetUsd must be null (no budget) or a whole number of USD, 1 to 100000; got ${JSON.stringify(cfg.monthlyBudgetUsd)}`);
  }
  if (cfg.queueRetentionDays > 14) problems.push('queueRetentionDays must be <= 14 (SQS limit)');
  // The sweep's invocations are dropped once the next is due (maxEventAge), which Lambda allows up to 6 h.
  if (cfg.queuedJobSweepMinutes > 360) problems.push('queuedJobSweepMinutes must be <= 360 (a sweep every 6 h at least)');
  // A job can wait queueRetentionDays before a worker reads its upload; its init image should
  // outlive that when the job follows the upload closely.
  if (cfg.recordRetentionDays !== null && !(Number.isInteger(cfg.recordRetentionDays) && cfg.recordRetentionDays >= 1 && cfg.recordRetentionDays <= 3650)) {
    problems.push('recordRetentionDays must be null (kept until deleted) or a whole number of days, 1 to 3650');
  }
  if (cfg.uploadRetentionDays <= cfg.queueRetentionDays) problems.push('uploadRetentionDays must be > queueRetentionDays, or a queued job can lose its init image');
  // API Gateway HTTP APIs cut integrations at 30 s.
  if (cfg.lambdaTimeoutSeconds > 29) problems.push('lambdaTimeoutSeconds must be <= 29 (API Gateway limit)');
  // A cancel of a queued generation waits up to 5 s on its webhook's receiver before it answers
  // (CANCEL_WEBHOOK_TIMEOUT_MS), after its own reads and writes: a shorter Lambda would be cut mid-cancel.
  if (cfg.lambdaTimeoutSeconds < 15) problems.push('lambdaTimeoutSeconds must be >= 15 (a POST may spend 10 s fetching an init image from a URL, and a cancel 5 s on a webhook receiver)');
  if (cfg.stopTimeoutSeconds < 120) problems.push('stopTimeoutSeconds must be >= 120 so a running job can drain');
  // A Spot instance is reclaimed two minutes after its interruption notice, whatever the stop timeout:
  // a longer one is never honoured there. (ECS documents a maximum of 120 s for Fargate only; for the
  // EC2 launch type it names none, so on-demand keeps no upper bound here.)
  if (cfg.useSpot && cfg.stopTimeoutSeconds > 120) problems.push('stopTimeoutSeconds must be <= 120 with useSpot (a Spot instance ends two minutes after its interruption notice)');
  // One scaling step per task count; CloudWatch step policies allow at most 20 adjustments.
  if (cfg.maxInstances > 18) problems.push('maxInstances must be <= 18 (one step-scaling adjustment per task)');
  // Presigned URLs signed with role credentials die with the session (Lambda: ~1-12 h).
  if (cfg.signedUrlTtlSeconds > 43_200) problems.push('signedUrlTtlSeconds must be <= 43200');
  // Last, what the processes themselves would say: a field the checks above have already named is not named twice.
  const named = new Set(problems.map((p) => /^\w+/.exec(p)?.[0]));
  problems.push(...processProblems(cfg).filter((p) => !named.has(/^\w+/.exec(p)?.[0])));
  if (problems.length > 0) {
    throw new Error(`Invalid config for stage "${cfg.stage}":\n  - ${problems.join('\n  - ')}`);
  }
}

/** Key prefixes in the bucket; grants are scoped to these, so keep them in one place. */
export const BUCKET_PREFIXES = {
  jobs: 'jobs/',
  outputs: 'outputs/',
  uploads: 'uploads/',
  models: 'models/',
  keys: 'keys/',
  /** Work the queued-job sweep must finish: unsent messages, owed webhooks (functions/queued-jobs.ts). */
  pending: 'pending/',
  /** Recent run times per model and size, for estimates (shared/run-stats.ts). */
  stats: 'stats/',
  /** Each owner's usage per day, one document per month, for GET /v1/usage (shared/usage.ts). */
  usage: 'usage/',
  /** Each owner's monthly spend limit, set through /v1/spend-limit and read by every POST /v1/generations (shared/spend-limits.ts). */
  spendLimits: SPEND_LIMITS_PREFIX,
  /** Operator documents the API and the worker read: the content policy (shared/prompt-policy.ts). */
  config: 'config/',
  /** The record retention's progress (functions/local-retention.ts RECORD_RETENTION_STATE_KEY): owner ids and job ids only. */
  retention: 'retention/',
  /** Each worker's presence document (shared/worker-presence.ts, ADR 0040): a state and a time, no job or owner. */
  workers: 'workers/',
} as const;

/**
 * Environment variable names handed to the Lambda and the worker. They must match what
 * shared/config.ts parses (a test checks it); listed in cdk/README.md. `stage` and
 * `stopTimeout` are informational extras that shared/config does not require.
 */
export const ENV = {
  mode: 'CLIPAG_MODE',
  stage: 'CLIPAG_STAGE',
  bucket: 'CLIPAG_BUCKET',
  queueUrl: 'CLIPAG_QUEUE_URL',
  dlqUrl: 'CLIPAG_DLQ_URL',
  /** The sweep: how long the queue keeps a message (queueRetentionDays), to fail jobs no message can reach. */
  queueRetention: 'CLIPAG_QUEUE_RETENTION_SEC',
  visibilityTimeout: 'CLIPAG_VISIBILITY_TIMEOUT_SEC',
  maxReceiveCount: 'CLIPAG_MAX_RECEIVES',
  signedUrlTtl: 'CLIPAG_SIGNED_URL_TTL_SEC',
  stopTimeout: 'CLIPAG_STOP_TIMEOUT_SEC',
  executionProvider: 'CLIPAG_EXECUTION_PROVIDER',
  /**
   * Wall-clock limit of one job attempt (shared/config.ts jobTimeoutSec; default 3600 when unset): the worker's; the
   * Lambdas get it too, as every process's parser checks it with the visibility timeout (at most 43200 s together).
   */
  jobTimeout: 'CLIPAG_JOB_TIMEOUT_SEC',
  /** API: generations one account may have queued or running (jobs beyond get 429). */
  maxActiveJobs: 'CLIPAG_MAX_ACTIVE_JOBS',
  /** API, sweep and workers: the ports a webhook URL may name (webhookPorts). */
  webhookPorts: 'CLIPAG_WEBHOOK_PORTS',
  /** API: the longest `Prefer: wait` honoured (a few seconds under the Lambda's timeout). */
  maxWaitSec: 'CLIPAG_MAX_WAIT_SEC',
  /** One worker's price per hour: `usage.cost_usd` of generations and the cost in estimates. */
  workerHourlyUsd: 'CLIPAG_WORKER_HOURLY_USD',
  /** How long the bucket keeps outputs (outputRetentionDays): views say until when their links work. */
  outputRetention: 'CLIPAG_OUTPUT_RETENTION_DAYS',
  /** The sweep's: how long after its end a generation is deleted (recordRetentionDays; unset: kept). */
  recordRetention: 'CLIPAG_RECORD_RETENTION_DAYS',
  /** The model of a request that names none; the one the worker warms. */
  defaultModel: 'CLIPAG_DEFAULT_MODEL',
  /** Its input size when it ships in the worker image (the API cannot read the image). */
  defaultModelInputSize: 'CLIPAG_DEFAULT_MODEL_INPUT_SIZE',
  /** API: the DynamoDB table that holds the per-account request counts of the rate limit. */
  rateTable: 'CLIPAG_RATE_TABLE',
  /** API: requests per account per minute over a sliding window (rateLimitPerMinute; 0: no limit). */
  rateLimitPerMin: 'CLIPAG_RATE_LIMIT_PER_MIN',
  /** API: upload URLs per account per hour (uploadsPerHour; 0: no limit). */
  uploadsPerHour: 'CLIPAG_UPLOADS_PER_HOUR',
  /** API: Prefer: wait holds one account may start within one longest wait (maxWaitsPerAccount; 0: no budget). */
  maxWaits: 'CLIPAG_MAX_WAITS',
  region: 'AWS_REGION',
} as const;

/** SQS redrive: after this many receives a message goes to the DLQ. */
export const MAX_RECEIVE_COUNT = 3;

// ---- the processes' environments ------------------------------------------------

/** A variable name the CDK sets (ENV's values). */
type EnvName = (typeof ENV)[keyof typeof ENV];

/** The deployed resources each process's environment names: CloudFormation references at synth, stand-ins in `validate`. */
export interface ProcessRefs {
  readonly api: { readonly bucketName: string; readonly queueUrl: string; readonly rateTableName: string };
  readonly sweep: { readonly bucketName: string; readonly queueUrl: string };
  /** The worker also names its region: EC2-launched containers do not get one from ECS, and SDK v3 does not ask IMDS. */
  readonly worker: { readonly bucketName: string; readonly queueUrl: string; readonly deadLetterQueueUrl: string; readonly region: string };
}

/** The processes the CDK starts: the API Lambda, the queued-job sweep Lambda, a GPU worker task. */
export type ProcessRole = keyof ProcessRefs;

const ROLE_NAMES: Readonly<Record<ProcessRole, string>> = {
  api: 'the API Lambda',
  sweep: 'the queued-job sweep Lambda',
  worker: 'the GPU worker task',
};

/**
 * The environment of one process, from the stage's entry and the resources it names: the one place each
 * role's variables are chosen. The stacks set exactly this, and `validate` runs the processes' own parser
 * (shared/config.ts) on it, so that synth refuses what a process would refuse at every start.
 */
export function processEnv<R extends ProcessRole>(config: StageConfig, role: R, refs: ProcessRefs[R]): Record<string, string> {
  if (role === 'worker') {
    const r = refs as ProcessRefs['worker'];
    return {
      [ENV.mode]: 'aws',
      [ENV.stage]: config.stage,
      [ENV.bucket]: r.bucketName,
      [ENV.queueUrl]: r.queueUrl,
      [ENV.dlqUrl]: r.deadLetterQueueUrl,
      [ENV.visibilityTimeout]: String(config.visibilityTimeoutSeconds),
      [ENV.maxReceiveCount]: String(MAX_RECEIVE_COUNT),
      [ENV.jobTimeout]: String(config.jobTimeoutSeconds),
      [ENV.stopTimeout]: String(config.stopTimeoutSeconds),
      [ENV.executionProvider]: 'cuda',
      [ENV.workerHourlyUsd]: String(config.workerHourlyUsd),
      [ENV.defaultModel]: config.defaultModel,
      [ENV.outputRetention]: String(config.outputRetentionDays),
      // The links in the completion webhooks the worker sends live as long as the API's.
      [ENV.signedUrlTtl]: String(config.signedUrlTtlSeconds),
      [ENV.webhookPorts]: config.webhookPorts.join(','),
      [ENV.region]: r.region,
    };
  }
  const inputSize = shippedModelInputSize(config.defaultModel);
  const lambda = {
    [ENV.mode]: 'aws',
    [ENV.stage]: config.stage,
    [ENV.bucket]: refs.bucketName,
    [ENV.queueUrl]: refs.queueUrl,
    [ENV.visibilityTimeout]: String(config.visibilityTimeoutSeconds),
    // Not used by either function, but their parser checks it with the visibility timeout (at most 12 h
    // together, as SQS allows): unset, it would check its default 3600 s instead of the stage's limit.
    [ENV.jobTimeout]: String(config.jobTimeoutSeconds),
    [ENV.queueRetention]: String(config.queueRetentionDays * 24 * 3600),
    [ENV.maxActiveJobs]: String(config.maxActiveJobsPerAccount),
    [ENV.webhookPorts]: config.webhookPorts.join(','),
    // Prefer: wait holds a request open: it must answer before the Lambda (and API Gateway's 30 s) cut it.
    [ENV.maxWaitSec]: String(Math.max(0, config.lambdaTimeoutSeconds - 3)),
    [ENV.signedUrlTtl]: String(config.signedUrlTtlSeconds),
    [ENV.workerHourlyUsd]: String(config.workerHourlyUsd),
    [ENV.defaultModel]: config.defaultModel,
    ...(inputSize !== undefined ? { [ENV.defaultModelInputSize]: String(inputSize) } : {}),
    [ENV.outputRetention]: String(config.outputRetentionDays),
    NODE_OPTIONS: '--enable-source-maps',
    // AWS_REGION is set by the Lambda runtime itself (reserved name).
  };
  if (role === 'sweep') return { ...lambda, ...(config.recordRetentionDays !== null ? { [ENV.recordRetention]: String(config.recordRetentionDays) } : {}) };
  // The rate limit is the handler's alone: the sweep serves no requests and may not touch the table.
  const r = refs as ProcessRefs['api'];
  return {
    ...lambda,
    [ENV.rateTable]: r.rateTableName,
    [ENV.rateLimitPerMin]: String(config.rateLimitPerMinute),
    [ENV.uploadsPerHour]: String(config.uploadsPerHour),
    [ENV.maxWaits]: String(config.maxWaitsPerAccount),
  };
}

/** Where each variable's value comes from, as a refusal names it: the stage entry's field, or what else sets it. */
const ENV_SOURCE: Readonly<Record<EnvName, string>> = {
  [ENV.mode]: 'the mode (processEnv in cdk/lib/config.ts)',
  [ENV.stage]: 'stage',
  [ENV.bucket]: "the Stateful stack's bucket (processEnv in cdk/lib/config.ts)",
  [ENV.queueUrl]: "the Stateful stack's queue (processEnv in cdk/lib/config.ts)",
  [ENV.dlqUrl]: "the Stateful stack's dead-letter queue (processEnv in cdk/lib/config.ts)",
  [ENV.queueRetention]: 'queueRetentionDays',
  [ENV.visibilityTimeout]: 'visibilityTimeoutSeconds',
  [ENV.maxReceiveCount]: 'MAX_RECEIVE_COUNT (cdk/lib/config.ts)',
  [ENV.signedUrlTtl]: 'signedUrlTtlSeconds',
  [ENV.stopTimeout]: 'stopTimeoutSeconds',
  [ENV.executionProvider]: 'the execution provider (processEnv in cdk/lib/config.ts)',
  [ENV.jobTimeout]: 'jobTimeoutSeconds',
  [ENV.maxActiveJobs]: 'maxActiveJobsPerAccount',
  [ENV.webhookPorts]: 'webhookPorts',
  [ENV.maxWaitSec]: 'lambdaTimeoutSeconds (less 3 s)',
  [ENV.workerHourlyUsd]: 'workerHourlyUsd',
  [ENV.outputRetention]: 'outputRetentionDays',
  [ENV.recordRetention]: 'recordRetentionDays',
  [ENV.defaultModel]: 'defaultModel',
  [ENV.defaultModelInputSize]: "defaultModel (the image_size of its bundle's models/<name>/manifest.json)",
  [ENV.rateTable]: "the Stateful stack's rate-counter table (processEnv in cdk/lib/config.ts)",
  [ENV.rateLimitPerMin]: 'rateLimitPerMinute',
  [ENV.uploadsPerHour]: 'uploadsPerHour',
  [ENV.maxWaits]: 'maxWaitsPerAccount',
  [ENV.region]: 'the region (processEnv in cdk/lib/config.ts)',
};

/** Stand-ins for the references, of the shape the parser checks (a bucket name, queue URLs, a table name, a region). */
const PLACEHOLDER_REGION = 'us-east-1';
const PLACEHOLDER_REFS: ProcessRefs = {
  api: { bucketName: 'clipag-placeholder-bucket', queueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/clipag-jobs', rateTableName: 'clipag-rate-counters' },
  sweep: { bucketName: 'clipag-placeholder-bucket', queueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/clipag-jobs' },
  worker: {
    bucketName: 'clipag-placeholder-bucket',
    queueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/clipag-jobs',
    deadLetterQueueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/clipag-jobs-dlq',
    region: PLACEHOLDER_REGION,
  },
};

const listed = (items: readonly string[]): string => (items.length <= 1 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`);

/**
 * What the processes' own parser (shared/config.ts, as each composition root runs it at start) says of
 * each role's environment, stand-ins for the references: one line per problem, led by the stage field
 * it comes from and naming the processes that would refuse it. A deploy with such a value succeeds, and
 * then every cold start of the API fails (5xx) and every worker exits 78 in a restart loop.
 */
function processProblems(cfg: StageConfig): string[] {
  const found = new Map<string, { source: string; roles: string[] }>();
  const note = (issue: string, source: string, role: ProcessRole) => {
    const entry = found.get(issue) ?? { source, roles: [] };
    entry.roles.push(ROLE_NAMES[role]);
    found.set(issue, entry);
  };
  for (const role of ['api', 'sweep', 'worker'] as const) {
    let env: Record<string, string>;
    try {
      env = processEnv(cfg, role, PLACEHOLDER_REFS[role]);
    } catch (error) {
      note(`cannot build the environment: ${(error as Error).message}`, 'processEnv', role);
      continue;
    }
    // The Lambda runtime sets AWS_REGION itself.
    const atStart = role === 'worker' ? env : { ...env, [ENV.region]: PLACEHOLDER_REGION };
    let issues: readonly string[];
    try {
      const parsed = parseConfig(atStart);
      issues = parsed.mode === 'aws' ? [] : [`${ENV.mode}: must be "aws" (got "${parsed.mode}")`];
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      issues = error.problems;
    }
    for (const issue of issues) {
      const name = /^([A-Z][A-Z0-9_]*):/.exec(issue)?.[1];
      note(issue, (name !== undefined && (ENV_SOURCE as Record<string, string>)[name]) || (name ?? 'the environment'), role);
    }
  }
  return [...found].map(([issue, { source, roles }]) => `${source}: ${listed(roles)} would refuse to start with it, after a deploy that succeeds (${issue})`);
}

/**
 * Throws, as `stageConfig` does, when a process would refuse its environment: for a StageConfig that did
 * not come through `stageConfig` (buildClipag runs it before building anything).
 */
export function assertProcessesStart(cfg: StageConfig): void {
  const problems = processProblems(cfg);
  if (problems.length > 0) throw new Error(`Invalid config for stage "${cfg.stage}":\n  - ${problems.join('\n  - ')}`);
}

// ---- context keys ------------------------------------------------------------------

/** The context keys cdk/bin/app.ts reads (`-c stage=prod` and so on). */
export const CONTEXT_KEYS = ['stage', 'alarmEmail', 'defaultModel'] as const;

/**
 * Plain context keys (no ':' or '@') that are not this app's yet belong there: cdk.json's own, and what
 * the CDK CLI writes (`cdk acknowledge`).
 */
const OTHER_PLAIN_CONTEXT_KEYS = new Set(['cli-telemetry', 'acknowledged-issue-numbers']);

/** The context key a mistyped one most likely meant: case, '-' and '_' aside (shared/did-you-mean.ts). */
function closestContextKey(given: string): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');
  const near = closestName(norm(given), CONTEXT_KEYS.map(norm));
  return CONTEXT_KEYS.find((key) => norm(key) === near);
}

/**
 * One warning per context key that this app does not read and that looks like a user's own (no ':' or
 * '@', which the CDK's feature flags and lookups carry): most likely a typo of `stage`, `alarmEmail` or
 * `defaultModel`, which would otherwise deploy the default stage or the entry's values without a word.
 * cdk/bin/app.ts prints them on stderr, once per synth.
 */
export function contextKeyWarnings(keys: Iterable<string>): string[] {
  const known = new Set<string>(CONTEXT_KEYS);
  const warnings: string[] = [];
  for (const key of keys) {
    if (/[:@]/.test(key) || known.has(key) || OTHER_PLAIN_CONTEXT_KEYS.has(key)) continue;
    const guess = closestContextKey(key);
    warnings.push(
      `clipag: warning: context key ${JSON.stringify(key)} is not one this app reads` +
        (guess !== undefined ? ` (did you mean ${guess}? -c ${guess}=…)` : ` (it reads ${listed(CONTEXT_KEYS.map(String))})`) +
        '; ignored',
    );
  }
  return warnings;
}
