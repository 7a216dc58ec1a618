// The GPU worker's composition root. In the container: `node --import tsx gpu-worker/main.ts`.
//
// The only place in the worker that reads the environment (once, through shared/config.ts) and
// constructs SDK clients. `startWorker(deps)` is the same wiring without either, so the local
// `clipag serve` runs this very worker in-process on the local adapters.

import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { storesFor } from '../shared/adapters/stores.ts';
import { parseConfig, settingWarnings, type Config } from '../shared/config.ts';
import { ConfigError } from '../shared/errors.ts';
import { BlobJobStore } from '../shared/jobstore.ts';
import { ModelStore } from '../shared/modelstore.ts';
import type { BlobStore, JobQueue, JobStore } from '../shared/ports.ts';
import type { Recipe } from './engine/synth/recipe.ts';
import { warmUp as warmUpEngine } from './engine/synth/synthesize.ts';
import { defaultSideFor } from '../shared/schemas/generation.ts';
import { endProcess } from './engine/runtime/pool.ts';
import { createModelRegistry, type ModelRegistry } from './models.ts';
import { createEngineSynthesizer, type Synthesizer } from './worker/synthesizer.ts';
import { ecsTaskProtection, type TaskProtection } from './worker/task-protection.ts';
import { policyFromStore, type OutputScreen } from '../shared/prompt-policy.ts';
import { webhookDeliveryFromConfig, webhookNotifier, type WebhookNotifier } from '../shared/webhooks.ts';
import { startPresence } from './worker/presence.ts';
import { createWorker, jsonLogger, type Logger, type QueueWorker, type WorkerConfig, type WorkerEvent } from './worker/worker.ts';

export { createWorker, type QueueWorker, type WorkerState, type WorkerEvent } from './worker/worker.ts';
export { createEngineSynthesizer, type Synthesizer } from './worker/synthesizer.ts';
export { createModelRegistry, type ModelRegistry } from './models.ts';

export interface StartWorkerDeps {
  queue: JobQueue;
  blobs: BlobStore;
  /** Default: BlobJobStore on `blobs` (job documents at jobs/<owner>/<id>.json, ADR 0002). */
  jobs?: JobStore;
  /** The process config (visibility, receive limit, models folder, device, log level). */
  config: Config;
  /** Default: a registry over `config.modelsDir` on `config.device`. Shared with the API's
   * `GET /v1/models` when the caller passes its own. */
  models?: ModelRegistry;
  /**
   * Models pushed with `clipag models push`, served after the local folders (docs/model-store.md).
   * Default: in AWS mode a store on `blobs` (the bucket's `models/` prefix); in local mode none
   * (pass `new ModelStore(blobs)` to serve the local `.data` store too). `null`: no store.
   * Ignored when `models` is passed.
   */
  modelStore?: ModelStore | null;
  /** Download cache of store models, `<dir>/<content hash>/` (default: <tmp>/clipag-models). */
  modelCacheDir?: string;
  /** Default: the engine synthesizer on `models`. */
  synthesizer?: Synthesizer;
  /** Worker-level recipe overrides (tests, CPU demos); see EngineSynthesizerOptions. `steps` here is a cap. */
  recipeOverrides?: Partial<Recipe>;
  /** Caps every job's steps (min(spec.steps, maxSteps)); default `recipeOverrides.steps`, else none. */
  maxSteps?: number;
  /** Overrides of the worker's timing knobs (e.g. progress write interval). */
  worker?: Partial<WorkerConfig>;
  /** Default: ECS task scale-in protection when the config has the agent's URI (AWS), else none. */
  protection?: TaskProtection;
  /** Default: deliveries over HTTP(S) under the config's address policy. `null`: no webhooks from here. */
  webhooks?: WebhookNotifier | null;
  /**
   * The output check (ADR 0017). Default: the output rules of the policy the API checks the owner's
   * prompts by (policyFromStore on `blobs`: the owner's document, else the deployment's, else the
   * shipped one). `null`: no output check.
   */
  outputScreen?: ((owner: string) => Promise<OutputScreen>) | null;
  /**
   * Before the first poll, load the default model (`config.defaultModel`) and compile the graphs of a
   * request that names no size or negative prompt, so no customer's first job pays the cold start.
   * Default: yes with the engine synthesizer, no with one passed in.
   */
  warmUp?: boolean;
  log?: Logger;
  onEvent?: (event: WorkerEvent) => void;
  /**
   * The worker's presence document in `blobs` (ADR 0040), by which the API tells a caller whose
   * generation waits whether a worker is up. Default: written, under a name from newWorkerId. `false`: none.
   */
  presence?: false | { workerId?: string; beatMs?: number };
}

export interface RunningWorker {
  worker: QueueWorker;
  models: ModelRegistry;
  /** Drains the worker, then closes the models it opened (not ones passed in). Idempotent. */
  stop(): Promise<void>;
}

export function startWorker(deps: StartWorkerDeps): RunningWorker {
  const { config } = deps;
  const log = deps.log ?? jsonLogger(config.logLevel, { component: 'worker' });
  const ownModels = !deps.models;
  const store = deps.modelStore === undefined ? (config.mode === 'aws' ? new ModelStore(deps.blobs, { onWarning: (m) => log.warn(m) }) : undefined) : (deps.modelStore ?? undefined);
  const models =
    deps.models ??
    createModelRegistry({
      modelsDir: resolve(config.modelsDir),
      device: config.device,
      disablePrepacking: config.disablePrepacking,
      maxLeasedGraphs: config.maxLeasedGraphs,
      maxOpenModels: config.maxOpenModels,
      ...(store ? { store, cacheDir: resolve(deps.modelCacheDir ?? join(tmpdir(), 'clipag-models')), cacheMaxBytes: config.modelCacheMaxBytes } : {}),
    });
  const maxSteps = deps.maxSteps ?? deps.recipeOverrides?.steps;
  const jobs = deps.jobs ?? new BlobJobStore(deps.blobs);
  const webhooks =
    deps.webhooks === undefined
      ? webhookNotifier({
          jobs,
          blobs: deps.blobs,
          ...webhookDeliveryFromConfig(config),
          clock: () => new Date(),
          log: ({ level, msg, ...fields }) => log[level](msg, fields),
        })
      : (deps.webhooks ?? undefined);
  let outputScreen = deps.outputScreen ?? undefined;
  /** The deployment's output concepts, embedded during the warm-up (the default wiring only). */
  let deploymentConcepts: (() => Promise<readonly string[]>) | undefined;
  if (deps.outputScreen === undefined) {
    // Only a document an operator must fix is an error (it pages, ADR 0023); a store blip is retried.
    const policy = policyFromStore(deps.blobs, { onProblem: (problem, kind) => (kind === 'invalid' ? log.error(problem) : log.warn(problem)) });
    outputScreen = async (owner) => (await policy(owner)).output;
    deploymentConcepts = async () => (await policy()).output.concepts;
  }
  // At the size a request gets when it names none, under the worker's step cap: the graphs of the API's
  // default request; then the output check's concepts, which its first job would embed.
  const warm =
    (deps.warmUp ?? !deps.synthesizer)
      ? async (signal: AbortSignal) => {
          const held = await models.use(config.defaultModel);
          try {
            const engine = held.engine;
            await warmUpEngine(engine, deps.recipeOverrides ?? {}, defaultSideFor(engine.imageSize), { signal, ...(maxSteps !== undefined ? { maxSteps } : {}) });
            const concepts = (await deploymentConcepts?.()) ?? [];
            if (concepts.length > 0 && !signal.aborted) await engine.conceptEmbeddings(concepts);
          } finally {
            held.done();
          }
        }
      : undefined;
  const synthesizer = deps.synthesizer ?? createEngineSynthesizer({ models, blobs: deps.blobs, recipeOverrides: deps.recipeOverrides, maxSteps });
  let presence: ReturnType<typeof startPresence> | undefined;
  const worker = createWorker({
    queue: deps.queue,
    jobs,
    blobs: deps.blobs,
    synthesizer,
    models,
    config: {
      visibilityTimeoutSec: config.visibilityTimeoutSec,
      maxReceives: config.maxReceives,
      receiveWaitSec: config.receiveWaitSec,
      jobTimeoutSec: config.jobTimeoutSec,
      ...(config.workerHourlyUsd !== undefined ? { hourlyUsd: config.workerHourlyUsd } : {}),
      retryDelaySec: config.retryDelaySec,
      device: config.device,
      // Local mode's store and queue are the data folder: its disk filling up is not this worker's to be replaced for.
      storageOnThisDisk: config.mode === 'local',
      ...(maxSteps !== undefined ? { maxSteps } : {}),
      ...deps.worker,
    },
    protection: deps.protection ?? (config.mode === 'aws' && config.ecsAgentUri ? ecsTaskProtection(config.ecsAgentUri, log) : undefined),
    ...(webhooks ? { webhooks } : {}),
    ...(outputScreen ? { outputScreen } : {}),
    ...(warm ? { warmUp: warm } : {}),
    log,
    onEvent: (event) => {
      if (event.type === 'state') presence?.state(event.state);
      // An unhealthy worker takes no more jobs: it is no longer counted, whoever stops it and when.
      if (event.type === 'unhealthy') presence?.state('stopped');
      deps.onEvent?.(event);
    },
  });
  // Once the worker exists (a worker that could not be made leaves no presence), before it starts:
  // its first state change is the presence's to write.
  presence = deps.presence === false ? undefined : startPresence({ blobs: deps.blobs, ...(deps.presence ?? {}), log });
  worker.start();
  let stopped: Promise<void> | undefined;
  return {
    worker,
    models,
    stop() {
      stopped ??= (async () => {
        await worker.stop();
        await presence?.stop();
        if (ownModels) await models.close();
      })();
      return stopped;
    },
  };
}

/**
 * The container's answer to its worker giving up (`unhealthy`: the device cannot run jobs, a run
 * ignores its abort, the poll loop died): drain what can be drained within `graceMs`, then exit
 * non-zero, so ECS replaces the task instead of keeping a live process that takes no jobs, or
 * fails every job it takes.
 */
export function exitWhenUnhealthy(opts: { stop: () => Promise<void>; exit: (code: number) => void; log: Logger; graceMs?: number }): (event: WorkerEvent) => void {
  let exiting = false;
  return (event) => {
    if (event.type !== 'unhealthy' || exiting) return;
    exiting = true;
    const graceMs = opts.graceMs ?? 20_000;
    opts.log.error('worker unhealthy: exiting so that ECS replaces the task', { reason: event.reason, graceMs });
    let timer: NodeJS.Timeout | undefined;
    // A stuck run never lets stop() resolve: its message comes back when its lease lapses.
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    void Promise.race([opts.stop().catch(() => undefined), grace]).then(() => {
      clearTimeout(timer);
      opts.exit(1);
    });
  };
}

/**
 * The container's answer to SIGTERM/SIGINT: drain, then exit 0 (1 when the worker had gone unhealthy
 * meanwhile: a stop during that drain must not hide it from ECS). Before the worker started there is
 * nothing to drain (`stop` gives undefined); a second signal exits at once.
 */
export function exitOnSignal(opts: { stop: () => Promise<void> | undefined; unhealthy: () => boolean; exit: (code: number) => void; log: Logger }): (signal: NodeJS.Signals) => void {
  let signals = 0;
  return (signal) => {
    signals++;
    if (signals > 1) {
      opts.log.warn('second signal: exiting without waiting for the drain', { signal });
      return opts.exit(1);
    }
    const t0 = Date.now();
    const draining = opts.stop();
    if (!draining) {
      opts.log.info('signal received before the worker started: exiting', { signal });
      return opts.exit(0);
    }
    opts.log.info('signal received: draining', { signal });
    draining.then(
      () => {
        opts.log.info('drained; exiting', { drainMs: Date.now() - t0 });
        opts.exit(opts.unhealthy() ? 1 : 0);
      },
      (error) => {
        opts.log.error('drain failed', { error: String(error) });
        opts.exit(1);
      },
    );
  };
}

/** What the process says before (or without) its configured logger: at `error`, as JSON lines. */
const startupLog = jsonLogger('error', { component: 'worker' });

/** Container entry point: config → adapters → worker; SIGTERM/SIGINT drain, then exit 0; an unhealthy worker exits 1. */
export async function main(env: Readonly<Record<string, string | undefined>> = process.env): Promise<void> {
  let config: Config;
  try {
    config = parseConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) {
      // A JSON error line, as every other: the log group's error alarm pages on it (a task that
      // cannot start restarts in a loop, and no job would say so until one waited too long).
      startupLog.error('worker configuration is invalid; exiting', { error: error.message, exit_code: 78 });
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }
  const log = jsonLogger(config.logLevel, { component: 'worker' });
  for (const line of settingWarnings(env)) log.warn(line);
  let running: RunningWorker | undefined;
  let unhealthy = false;

  // Signals first: a stop while the stores load has nothing to drain, and one after the worker
  // started must drain it, however early it comes.
  // endProcess, not process.exit: a run the drain gave up on (a hung GPU) would make process.exit wait
  // for it and then abort.
  const exit = (code: number) => void endProcess(code, { warn: (m) => log.error(m) });
  const onSignal = exitOnSignal({ stop: () => running?.stop(), unhealthy: () => unhealthy, exit, log });
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  const { blobs, queue, jobs, models: modelStore } = await storesFor(config);
  const onUnhealthy = exitWhenUnhealthy({ stop: () => running?.stop() ?? Promise.resolve(), exit, log });
  const onEvent = (event: WorkerEvent) => {
    if (event.type === 'unhealthy') unhealthy = true;
    onUnhealthy(event);
  };
  running = startWorker({ blobs, queue, jobs, modelStore: config.mode === 'aws' ? modelStore : undefined, config, log, onEvent });
  // Show the store's models in the start line; a store that cannot be listed now is not fatal
  // (each job looks its model up again).
  await running.models.refresh().catch((error) => log.warn('model store not listed', { error: String(error) }));
  log.info('worker running', { mode: config.mode, device: config.device, models: running.models.list().map((m) => `${m.name}${m.source === 'store' ? ` (store ${m.contentHash!.slice(0, 12)})` : ''}`) });
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((error) => {
    startupLog.error('worker failed to start; exiting', { error: error instanceof Error ? (error.stack ?? error.message) : String(error), exit_code: 1 });
    process.exit(1);
  });
}
