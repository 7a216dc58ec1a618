// clipag serve (npm start): the embedded local mode. The API and the GPU worker in one process, on the
// local adapters (filesystem blobs, durable on-disk queue) under .data/, with the default model.
// This is a composition root: it reads config once and wires functions/ and gpu-worker/ together.
import { existsSync, readFileSync, writeFileSync, mkdirSync, statSync } from 'node:fs';
import { createServer, isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { parseConfig, settingWarnings, type LocalConfig } from '../shared/config.ts';
import { closestName } from '../shared/did-you-mean.ts';
import { localLayout } from '../shared/adapters/stores.ts';
import { ConfigError, NonRetryableError } from '../shared/errors.ts';
import { dataFolderWriteProblem } from '../shared/adapters/local/probe.ts';
import { PRIVATE_DIR_MODE, closeDataFolder } from '../shared/adapters/local/private.ts';
import type { LocalJobQueue } from '../shared/adapters/local/queue.ts';
import { registerServer, SERVER_REFRESH_MS, type ServerRecord } from '../shared/adapters/local/servers.ts';
import { createApp } from '../functions/app.ts';
import { jsonLineLog, jsonLineLogAt } from '../functions/log.ts';
import { mountLocalBlobRoutes } from '../functions/local-blobs.ts';
import { RESEND_AFTER_MS, sendMessagesLeftUnsent, startQueuedJobSweeps, type QueuedJobDeps } from '../functions/queued-jobs.ts';
import { retentionPass } from '../functions/local-retention.ts';
import { removeStalePresence } from '../shared/worker-presence.ts';
import { retentionDelete } from '../functions/generation-delete.ts';
import { webhookDeliveryFromConfig } from '../shared/webhooks.ts';
import { localDeps, startApiServer } from '../functions/server.ts';
import { startWorker } from '../gpu-worker/main.ts';
import type { UnhealthyReason } from '../gpu-worker/worker/worker.ts';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { loadOrt } from '../gpu-worker/engine/runtime/ort.ts';
import { scanModelsDir } from '../gpu-worker/models.ts';
import { intArg, parseCliArgs, shellWord, withPackageModelsDir } from './common.ts';
import { ModelStore, ModelStoreError } from '../shared/modelstore.ts';

export const summary = 'run the API and the worker locally (no AWS account), with the embedded model';
/** How long a reading of the workers' presence is reused locally (AWS: 15 s, a listing of S3 each). */
export const LOCAL_FLEET_CACHE_MS = 1000;
export const usage = `usage: clipag serve [--port N] [--data DIR] [--steps N]

Starts the HTTP API and the queue worker in one process on the local adapters. Jobs, outputs and
keys persist under .data/ across restarts; queued jobs survive a restart. Prints a working curl
example with a local API key (made on first start, kept in .data/local-api-key).
Images and frames are kept for ever unless CLIPAG_OUTPUT_RETENTION_DAYS is set (then removed once
a generation's outputs_expire_at has passed), uploads unless CLIPAG_UPLOAD_RETENTION_DAYS is set, and
generations (their prompts and labels) until deleted, unless CLIPAG_RECORD_RETENTION_DAYS is set.

  --port N     listen port, 1-65535 (default $PORT or 8787)
  --data DIR   data folder (default $CLIPAG_DATA_DIR or .data)
  --steps N    cap the optimization steps of every job, 1-1000 (CPU demos); default: as requested

Exit status: 0 stopped (Ctrl-C or SIGTERM, after draining the worker); 1 it could not start (the port
in use, a data folder it cannot use, a bad setting in the environment), its worker became unhealthy
(a device or queue it cannot use: it stops rather than queue jobs nothing runs), or its data folder was
removed while it ran (its keys and jobs went with it); 2 bad usage (a flag's value
out of its range too).`;

export interface ServeHandle {
  url: string;
  apiKey: string;
  /** The data folder, absolute: CLIPAG_DATA_DIR as the config reads it (unset or blank: .data). */
  dataDir: string;
  stop(): Promise<void>;
  /**
   * Resolves with the reason when the worker becomes unhealthy (its device or queue cannot run jobs,
   * ADR 0023): it takes no more jobs, so the server should stop rather than queue jobs nothing runs.
   */
  unhealthy: Promise<UnhealthyReason>;
  /**
   * Resolves, in words, when the data folder (or its `blobs` folder) was removed or replaced while the
   * server ran: the API keys, jobs and images went with it, so every request would answer 401 and the
   * worker would write into folders made afresh. The server should stop and say so.
   */
  dataFolderLost: Promise<string>;
  /** What the server removes after how many days (CLIPAG_OUTPUT_RETENTION_DAYS, CLIPAG_UPLOAD_RETENTION_DAYS, CLIPAG_RECORD_RETENTION_DAYS); unset: kept. */
  retentionDays: { outputs?: number; uploads?: number; records?: number };
}

/** Starts everything; used by the verb and by the end-to-end tests. */
export async function serve(
  env: Readonly<Record<string, string | undefined>>,
  opts: {
    recipeOverrides?: Record<string, number>;
    maxSteps?: number;
    quiet?: boolean;
    sweepEveryMs?: number;
    /** How long a stop waits for the requests in flight before it cuts their connections (default 5 s). */
    shutdownGraceMs?: number;
    /** Tests only: the data folder's write probe (the default creates and removes a file; see probe.ts). */
    probeFolder?: (dir: string) => Promise<void>;
    /** Tests only: how often the server's record is touched, and the data folder looked at (default SERVER_REFRESH_MS). */
    serverRefreshMs?: number;
  } = {},
): Promise<ServeHandle> {
  // Jobs queued before this moment were queued by another process (sendJobsLeftUnsent).
  const startedAt = new Date();
  // Before the parse: a shell that exported CLIPAG_MODE=aws for the operator verbs (cdk/README) was
  // told to set AWS_REGION, CLIPAG_BUCKET and CLIPAG_QUEUE_URL, which would only lead to this refusal.
  if ((env.CLIPAG_MODE ?? '').trim() === 'aws') {
    throw new EngineError('invalid_input', 'this command runs the local mode only, and CLIPAG_MODE=aws is set in this environment (as the operator verbs use it): unset CLIPAG_MODE for it (unset CLIPAG_MODE, or env -u CLIPAG_MODE npm start). In AWS the API runs on Lambda and the worker on ECS (see cdk/README.md)');
  }
  // What the environment sets, as the config reads it: a blank value is no value. Serve's own defaults
  // (the package's models folder, its own address for signed links) then apply to a blank one too.
  const given = setValues(env);
  let config;
  try {
    // The local queue is a folder: short long-polls cost nothing and let Ctrl-C drain quickly.
    config = parseConfig({ CLIPAG_RECEIVE_WAIT_SEC: '2', ...withPackageModelsDir(given) });
  } catch (e) {
    if (e instanceof ConfigError) throw new EngineError('invalid_input', e.message);
    throw e;
  }
  if (config.mode !== 'local') throw new EngineError('invalid_input', 'clipag serve runs the local mode; in AWS the API runs on Lambda and the worker on ECS (see cdk/README.md)');
  // The engine's runtime, before anything starts: on a platform onnxruntime-node has no build for (an
  // Intel Mac) the worker would fail its warm-up behind a "running" banner, the reason in a log line.
  loadOrt();
  const local: LocalConfig = {
    ...config,
    dataDir: resolve(config.dataDir),
    modelsDir: resolve(config.modelsDir),
    // Signed links point at this server unless a public URL is configured.
    publicBaseUrl: config.publicBaseUrl ?? localBaseUrl(config.host, config.port),
  };
  // The models, before anything is written: a default model that names nothing behind a "running"
  // banner refused every request that names no model, its curl example included.
  const folderModels = modelsFolder(local.modelsDir);
  const defaultInFolder = Object.hasOwn(folderModels, local.defaultModel);
  // No store yet (a first start): nothing was pushed.
  if (!defaultInFolder && !existsSync(localLayout(local.dataDir).blobsDir)) throw unknownDefaultModel(local, Object.keys(folderModels), []);
  // A busy port, or a CLIPAG_HOST this machine has no address for, is refused before the data folder
  // is made or written (its keys, its signing secret).
  if (await portInUse(local.port, local.host)) throw portInUseError(local.port, local.host);
  await usableDataFolder(local.dataDir, opts.probeFolder);
  const deps = await localDeps(local).catch((error: unknown) => {
    // The signing secret unreadable or damaged (shared/adapters/local/secret.ts): its message names
    // the file and what to do; said in this verb's format.
    if (error instanceof NonRetryableError && error.code === 'config_error') throw new EngineError('invalid_input', error.message);
    throw error;
  });
  const { blobs, queue, jobs, keys, signingSecret } = deps.adapters;
  if (!defaultInFolder) await defaultModelPushed(local, new ModelStore(blobs), Object.keys(folderModels));
  const apiKey = await localApiKey(local.dataDir, keys);
  const log = jsonLineLogAt(local.logLevel);
  // Before the port opens: a server starting beside this one sees it before this one's API takes a job.
  let markLost!: (reason: string) => void;
  const dataFolderLost = new Promise<string>((resolveLost) => (markLost = resolveLost));
  const servers = await registerServer(local.dataDir, (msg, error) => log({ level: 'warn', msg, error: error.message }), {
    refreshMs: opts.serverRefreshMs,
    onLost: (reason) => {
      log({ level: 'error', msg: `${reason}: its API keys, jobs and images went with it; stopping` });
      markLost(reason);
    },
  });
  // The signed-link routes go on the API app itself: one request id, one onError, one notFound, so
  // every error (a 405, an unknown path, a failure under /blobs) is the ErrorEnvelope.
  // Estimates count the steps the worker will run.
  // The fleet read each second (ADR 0040): a local folder, and one worker whose state changes by the job.
  const app = createApp({ ...deps, fleetCacheMs: LOCAL_FLEET_CACHE_MS, fleetScales: false, ...(opts.maxSteps === undefined ? {} : { limits: { ...deps.limits, maxSteps: opts.maxSteps } }) });
  mountLocalBlobRoutes(app, blobs, signingSecret);
  // The port first: a second `clipag serve` on a busy port fails before its worker takes a job.
  const server = await startApiServer(app, local.port, local.host).catch(async (error: NodeJS.ErrnoException) => {
    await servers.remove();
    if (error.code === 'EADDRINUSE') throw portInUseError(local.port, local.host);
    if (HOST_ERRORS.has(error.code ?? '')) throw hostError(local.host, error.code!);
    throw error;
  });
  // The port in this server's record: clipag remote sends this folder's key only to a port a live record names.
  await servers.listening(local.port);
  // What the bucket's lifecycle rule does in AWS: a presence document a killed `clipag serve` left is
  // removed a day after its last write (the API stopped counting it after 3 minutes). Best effort.
  await removeStalePresence(blobs, new Date()).catch((error: Error) => log({ level: 'warn', msg: 'stale worker presence not removed', error: error.message }));
  // Before the worker starts, so that it finds their messages at once.
  const leftUnsent = await sendJobsLeftUnsent({ blobs, jobs, queue, clock: () => new Date(), log }, startedAt, queue, servers);
  // Models: the repo's models/ folders, plus bundles pushed to the local store (clipag models push).
  let markUnhealthy!: (reason: UnhealthyReason) => void;
  const unhealthy = new Promise<UnhealthyReason>((resolveUnhealthy) => (markUnhealthy = resolveUnhealthy));
  let worker: ReturnType<typeof startWorker>;
  try {
    worker = startWorker({
      queue, blobs, jobs, config: local, recipeOverrides: opts.recipeOverrides, maxSteps: opts.maxSteps, modelStore: new ModelStore(blobs), modelCacheDir: join(local.dataDir, 'model-cache'),
      onEvent: (event) => {
        if (event.type === 'unhealthy') markUnhealthy(event.reason);
      },
    });
  } catch (error) {
    // Nothing started is left behind: a later server must not take this one's record for a live server.
    await leftUnsent.stop();
    await server.close({ graceMs: 0 }).catch(() => undefined);
    await servers.remove();
    throw error;
  }
  // A job whose message was lost (a crash between its create and its send) gets it again once it has
  // waited RESEND_AFTER_MS (it may only be slow), and its failed completion webhooks are retried.
  // Those a stopped server left unsent were sent above. With CLIPAG_OUTPUT_RETENTION_DAYS (which every
  // view's `outputs_expire_at` announces) or CLIPAG_UPLOAD_RETENTION_DAYS, each sweep also removes what
  // has expired, as the bucket's lifecycle rules do in AWS; with CLIPAG_RECORD_RETENTION_DAYS it deletes
  // the generations that ended that long ago, as the AWS sweep does (ADR 0037).
  const clock = () => new Date();
  const retention = retentionPass({
    blobs,
    jobs,
    clock,
    log,
    ...(local.outputRetentionDays !== undefined ? { outputRetentionDays: local.outputRetentionDays } : {}),
    ...(local.uploadRetentionDays !== undefined ? { uploadRetentionDays: local.uploadRetentionDays } : {}),
    ...(local.recordRetentionDays !== undefined ? { recordRetentionDays: local.recordRetentionDays, deleteGeneration: retentionDelete(blobs, jobs, clock, log) } : {}),
  });
  const sweeps = startQueuedJobSweeps(
    {
      blobs,
      jobs,
      queue,
      webhooks: webhookDeliveryFromConfig(local),
      clock,
      log,
    },
    opts.sweepEveryMs ?? 60_000,
    retention ? { retention } : {},
  );
  let stopping: Promise<void> | undefined;
  return {
    url: server.url,
    apiKey,
    dataDir: local.dataDir,
    unhealthy,
    dataFolderLost,
    retentionDays: {
      ...(local.outputRetentionDays !== undefined ? { outputs: local.outputRetentionDays } : {}),
      ...(local.uploadRetentionDays !== undefined ? { uploads: local.uploadRetentionDays } : {}),
      ...(local.recordRetentionDays !== undefined ? { records: local.recordRetentionDays } : {}),
    },
    stop: () =>
      (stopping ??= (async () => {
        // The API at once, beside the worker's drain: it takes no new connection, and the requests in
        // flight are answered (a held `Prefer: wait` with the generation as it is now) before their
        // connections close; only what is still open after the grace period is cut.
        const results = await Promise.allSettled([
          server.close({ graceMs: opts.shutdownGraceMs ?? 5_000 }),
          (async () => {
            await leftUnsent.stop();
            await sweeps.stop();
            await worker.stop();
            await servers.remove();
          })(),
        ]);
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
      })()),
  };
}

/** `env` without its unset and blank values: what parseConfig takes as set. */
function setValues(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1].trim() !== ''));
}

/**
 * The bundles of the models folder (the worker's own scan), refusing a CLIPAG_MODELS_DIR that is not
 * a folder: the server would start with no model of its own, each request that names none refused.
 */
function modelsFolder(modelsDir: string): Record<string, string> {
  const named = `the models folder ${modelsDir} (CLIPAG_MODELS_DIR; unset: this package's models/)`;
  const cannot = (error: unknown) =>
    new EngineError('invalid_input', `${named} cannot be used (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); set CLIPAG_MODELS_DIR to a folder of model bundles this user can read`);
  let info;
  try {
    info = statSync(modelsDir, { throwIfNoEntry: false });
  } catch (error) {
    throw cannot(error);
  }
  if (info === undefined) throw new EngineError('invalid_input', `${named} does not exist; set CLIPAG_MODELS_DIR to a folder of model bundles (one <name>/manifest.json each)`);
  if (!info.isDirectory()) throw new EngineError('invalid_input', `${named} is a file, not a folder; set CLIPAG_MODELS_DIR to a folder of model bundles (one <name>/manifest.json each)`);
  try {
    return scanModelsDir(modelsDir);
  } catch (error) {
    throw cannot(error); // a folder this user may not list
  }
}

/** Refuses a default model the local store has no index of (read only: the index, never the bundle). */
async function defaultModelPushed(config: LocalConfig, store: ModelStore, inFolder: string[]): Promise<void> {
  try {
    if (await store.describe(config.defaultModel)) return;
  } catch (error) {
    // Pushed, in a form this version cannot read (a newer clipag's index): the worker says so when asked for it.
    if (error instanceof ModelStoreError) return;
    throw error;
  }
  const pushed = await store.list().then(
    (models) => models.map((m) => m.name),
    () => [],
  );
  throw unknownDefaultModel(config, inFolder, pushed);
}

function unknownDefaultModel(config: LocalConfig, inFolder: string[], pushed: string[]): EngineError {
  const available = [...new Set([...inFolder, ...pushed])].sort();
  const near = closestName(config.defaultModel, available);
  return new EngineError(
    'invalid_input',
    `CLIPAG_DEFAULT_MODEL ${config.defaultModel} is no model here: neither a bundle of the models folder ${config.modelsDir} (CLIPAG_MODELS_DIR) nor a model pushed to the local store, ` +
      `so every request that names no model would be refused. Models available: ${available.length ? available.join(', ') : '(none)'}${near ? ` (did you mean ${near}?)` : ''}; ` +
      `set CLIPAG_DEFAULT_MODEL to one of them, or push the bundle first (clipag models push DIR --name ${config.defaultModel})`,
    { param: 'CLIPAG_DEFAULT_MODEL' },
  );
}

function portInUseError(port: number, host: string): EngineError {
  return new EngineError('invalid_input', `port ${port} on ${host} is in use (another clipag serve?); pass --port N or set PORT`);
}

/** A listen's failures that say the host is not this machine's: a name that does not resolve, an address no interface has. */
const HOST_ERRORS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EADDRNOTAVAIL']);

export function hostError(host: string, code: string): EngineError {
  // EAI_AGAIN is the resolver failing for now (no DNS server answered), not a verdict on the name: said so.
  if (code === 'EAI_AGAIN') {
    return new EngineError('invalid_input', `CLIPAG_HOST ${host} could not be resolved just now (the name server did not answer, ${code}): try again, or set CLIPAG_HOST to an address (127.0.0.1, the default, for this machine only; 0.0.0.0 for every interface)`);
  }
  const why = code === 'EADDRNOTAVAIL' ? 'no interface of this machine has that address' : 'a name that does not resolve';
  return new EngineError('invalid_input', `CLIPAG_HOST ${host} is not an address of this machine (${why}, ${code}); set CLIPAG_HOST to one of its addresses: 127.0.0.1 (the default) for this machine only, 0.0.0.0 for every interface`);
}

/**
 * Whether something listens on the port now (a quick listen and close). A host this machine has no
 * address for is refused here, before the data folder is made; any other failure is left to the real listen.
 */
function portInUse(port: number, host: string): Promise<boolean> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', (error: NodeJS.ErrnoException) => {
      if (HOST_ERRORS.has(error.code ?? '')) reject(hostError(host, error.code!));
      else resolvePort(error.code === 'EADDRINUSE');
    });
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolvePort(false)));
  });
}

/**
 * Refuses, before anything starts, a data folder this process cannot use: a file, a path through a
 * file, one it cannot make, or one it (or a folder the local adapters write in it) cannot write. A
 * folder made by another user (an earlier `sudo npm start`) used to pass: the server said it was
 * running, then answered 500 to every POST while the worker retried EACCES for ever.
 */
async function usableDataFolder(dataDir: string, probe?: (dir: string) => Promise<void>): Promise<void> {
  const named = `the data folder ${dataDir} (--data or CLIPAG_DATA_DIR)`;
  const cannot = (error: unknown) => (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  const throughFile = () => new EngineError('invalid_input', `${named} cannot be used: a part of its path is a file`);
  let info;
  try {
    info = statSync(dataDir, { throwIfNoEntry: false });
  } catch (error) {
    if (cannot(error) === 'ENOTDIR') throw throughFile();
    throw new EngineError('invalid_input', `${named} cannot be used: ${cannot(error)}`);
  }
  if (info?.isDirectory() === false) throw new EngineError('invalid_input', `${named} is a file, not a folder`);
  try {
    mkdirSync(dataDir, { recursive: true, mode: PRIVATE_DIR_MODE });
  } catch (error) {
    // Node 22's statSync answers a path through a file as absent (Node 20 threw ENOTDIR): the mkdir meets it.
    if (cannot(error) === 'ENOTDIR') throw throughFile();
    throw new EngineError('invalid_input', `${named} cannot be made (${cannot(error)}); pass --data DIR or set CLIPAG_DATA_DIR to a folder this user can write`);
  }
  const problem = await dataFolderWriteProblem(dataDir, probe);
  if (problem) throw new EngineError('invalid_input', problem);
  // The adapters make every folder 0700 and every file 0600, but a data folder made by an older
  // version holds 0755 folders and 0644 files (job records with prompts and webhook secrets): its
  // root made 0700 closes all of them at once, so nothing under it needs a walk. Not a reason to
  // refuse to start: said once per folder, and the server runs.
  await closeDataFolder(dataDir, (message) => jsonLineLog({ level: 'warn', msg: message }));
}

/** The jobs that have a message in the local queue (waiting, in flight or dead-lettered), as `owner/jobId`. */
async function jobsWithMessages(queue: LocalJobQueue): Promise<Set<string>> {
  const named = new Set<string>();
  for (const body of await queue.bodies()) {
    try {
      const message = JSON.parse(body) as { job_id?: unknown; owner?: unknown };
      if (typeof message.job_id === 'string' && typeof message.owner === 'string') named.add(`${message.owner}/${message.job_id}`);
    } catch {
      // Not a job message: names no job.
    }
  }
  return named;
}

/**
 * Sends the messages of the jobs a stopped server left unsent (a kill -9 between a job's create and
 * its send: sendMessagesLeftUnsent) at this start, not after the sweep's RESEND_AFTER_MS. Only with no
 * other server running on the data folder: another's job may be between its create and its send. While
 * one may be, it looks again every SERVER_REFRESH_MS (a killed server's record on a host this one
 * cannot judge ages out), until the sweep's own rule has taken over. Failures are logged: the sweep
 * sends those jobs later.
 */
async function sendJobsLeftUnsent(deps: QueuedJobDeps, startedAt: Date, queue: LocalJobQueue, servers: ServerRecord): Promise<{ stop(): Promise<void> }> {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  /** A later look in progress: stop() waits for it, so nothing is sent once the server has stopped. */
  let looking: Promise<unknown> | undefined;
  const attempt = async (): Promise<boolean> => {
    try {
      if (await servers.othersLive()) return false;
      let inQueue: Promise<Set<string>> | undefined;
      const { sent, failed } = await sendMessagesLeftUnsent(deps, {
        before: startedAt,
        hasMessage: async (job) => (await (inQueue ??= jobsWithMessages(queue))).has(`${job.owner}/${job.id}`),
      });
      if (sent > 0 || failed > 0) deps.log?.({ level: 'info', msg: 'sent the messages of queued jobs a stopped server left unsent', sent, failed });
    } catch (error) {
      deps.log?.({ level: 'warn', msg: 'could not look for jobs a stopped server left unsent; the queued-job sweep sends them later', error: (error as Error).message });
    }
    return true;
  };
  if (!(await attempt())) {
    deps.log?.({ level: 'info', msg: 'another clipag serve may be running on this data folder: the jobs a stopped one left unsent are sent once it is alone (or by the queued-job sweep)' });
    const retry = () => {
      timer = undefined;
      if (stopped || Date.now() - startedAt.getTime() > RESEND_AFTER_MS) return;
      looking = attempt().then((done) => {
        looking = undefined;
        if (!done && !stopped) timer = setTimeout(retry, SERVER_REFRESH_MS).unref();
      });
    };
    timer = setTimeout(retry, SERVER_REFRESH_MS).unref();
  }
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await looking;
    },
  };
}

/** Local mode keeps one API key for the owner "local" so the printed curl keeps working across restarts. */
async function localApiKey(dataDir: string, keys: { create(a: { name: string; owner: string }): Promise<{ secret: string }>; verify(s: string): Promise<unknown> }): Promise<string> {
  const file = join(dataDir, 'local-api-key');
  if (existsSync(file)) {
    const secret = readFileSync(file, 'utf8').trim();
    if (await keys.verify(secret)) return secret;
  }
  const { secret } = await keys.create({ name: 'local', owner: 'local' });
  writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  return secret;
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCliArgs({ args: argv, options: { port: { type: 'string' }, data: { type: 'string' }, steps: { type: 'string' } }, strict: true });
  // The flags checked here, named as given (a bad --port is not reported as the PORT it would become).
  const port = values.port === undefined ? undefined : intArg(values.port, 'port', 0, 1, 65_535);
  // A cap (min with each job's steps), validated before anything starts.
  const maxSteps = values.steps === undefined ? undefined : intArg(values.steps, 'steps', 0, 1, 1000);
  const env = { ...process.env, ...(port !== undefined ? { PORT: String(port) } : {}), ...(values.data ? { CLIPAG_DATA_DIR: values.data } : {}) };
  // Settings no process reads (a misspelt name keeps its default without a word), said once, first.
  for (const line of settingWarnings(env)) process.stderr.write(`clipag serve: warning: ${line}\n`);
  const handle = await serve(env, { maxSteps });
  const dataDir = handle.dataDir;
  // The key itself only to a person at a terminal: under systemd, docker or CI, stderr is a log that
  // others read and keep. There the line says where the key is (the file is the owner's only).
  const key = process.stderr.isTTY ? handle.apiKey : `$(cat ${shellWord(join(dataDir, 'local-api-key'))})`;
  process.stderr.write(
    [
      `clipag: API and worker running at ${handle.url} (local mode, data in ${dataDir})`,
      // The cap is said here, and in the record of each job it cuts short (a warning): not a silent change.
      ...(maxSteps !== undefined ? [`clipag: --steps ${maxSteps}: every job is capped at ${maxSteps} step${maxSteps === 1 ? '' : 's'} (a job that asks for more gets a warning saying so)`] : []),
      ...retentionLines(handle.retentionDays),
      '',
      'Try it:',
      `  export CLIPAG_API_URL=${handle.url} CLIPAG_API_KEY=${key}     # as the README's examples and clipag remote use them`,
      `  curl -s -X POST $CLIPAG_API_URL/v1/generations -H "Authorization: Bearer $CLIPAG_API_KEY" -H 'Content-Type: application/json' \\`,
      `       -d '{"prompt": "a large red circle on the left", "seed": 1}'`,
      `  curl -s $CLIPAG_API_URL/v1/generations/<id> -H "Authorization: Bearer $CLIPAG_API_KEY" -H 'Prefer: wait=30'   # answers when it has ended (or after 30 s)`,
      `  curl -s -o out.png "<outputs[0].url from the response>"`,
      '',
      'Ctrl-C drains the worker and stops.',
      '',
    ].join('\n'),
  );
  return await new Promise<number>((resolveStop) => {
    const onSignal = () => {
      process.stderr.write('clipag: stopping (draining the worker)…\n');
      handle.stop().then(() => resolveStop(0), () => resolveStop(0));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const stopBecause = (message: string) => {
      process.stderr.write(`clipag: ${message}: stopping\n`);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      handle.stop().then(() => resolveStop(1), () => resolveStop(1));
    };
    // A worker that takes no more jobs (ADR 0023) would leave the API queueing jobs nothing runs.
    void handle.unhealthy.then((reason) => stopBecause(`the worker is unhealthy (${reason}; its log line says why) and takes no more jobs`));
    // Going on would answer every request 401 with no reason given (its keys are gone).
    void handle.dataFolderLost.then((reason) => stopBecause(`${reason}; its API keys, jobs and images went with it (start clipag serve again to make a new one)`));
  });
}

/** What the server removes, and when: said at its start when a retention is set. */
function retentionLines(retention: ServeHandle['retentionDays']): string[] {
  const days = (n: number) => `${n} day${n === 1 ? '' : 's'}`;
  return [
    ...(retention.outputs !== undefined ? [`clipag: images and frames are removed ${days(retention.outputs)} after their generation ends (CLIPAG_OUTPUT_RETENTION_DAYS)`] : []),
    ...(retention.uploads !== undefined ? [`clipag: uploads are removed ${days(retention.uploads)} after their PUT, unless a queued or running job names them (CLIPAG_UPLOAD_RETENTION_DAYS)`] : []),
    ...(retention.records !== undefined ? [`clipag: generations are deleted ${days(retention.records)} after they end, as DELETE deletes them: images gone, prompts and labels blanked (CLIPAG_RECORD_RETENTION_DAYS)`] : []),
  ];
}

/**
 * Where this server's signed links point when no CLIPAG_PUBLIC_BASE_URL is set: the address it
 * listens on, an IPv6 one in brackets (`http://[::1]:8787`; `http://::1:8787` is no URL). A wildcard
 * address (0.0.0.0, ::) is where it listens, not an address to visit: its loopback stands in, which
 * reaches it from this machine; callers elsewhere need CLIPAG_PUBLIC_BASE_URL.
 */
export function localBaseUrl(host: string, port: number): string {
  const visit = host === '0.0.0.0' ? '127.0.0.1' : host === '::' || host === '::0' ? '::1' : host;
  return `http://${isIP(visit) === 6 ? `[${visit}]` : visit}:${port}`;
}

