// Shared set-up for the worker tests: the real local adapters in a temp folder and the real engine
// on the tiny reference CLIP bundle (made from ../shared fixtures by test/helpers/bundle.ts).
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { newJobId } from '../../shared/ids.ts';
import type { BlobStore, JobQueue, JobStore } from '../../shared/ports.ts';
import { GenerationSpec, type GenerationRequestInput } from '../../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { encodeQueueMessage } from '../../shared/schemas/queue.ts';
import { localStores as localAdapters } from '../../shared/adapters/stores.ts';
import { REPO_ROOT } from '../../cli/common.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';

export const OWNER = 'acct_test';
export const PRIOR = join(REPO_ROOT, 'models', 'test-prior', 'prior.safetensors');
/** Small views and GMM samples so a step takes milliseconds on 2 CPU cores. */
export const FAST_RECIPE = { globalViews: 4, patchViews: 4, initSamples: 16, frameEvery: 2 };

/** A models folder holding one bundle, `tiny`, with the test GMM prior. */
export function makeModelsDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-models-'));
  mkdirSync(join(dir, 'tiny'));
  makeTinyBundle('quickgelu', { dir: join(dir, 'tiny'), prior: PRIOR });
  return dir;
}

export async function makeEnv(overrides: Record<string, string> = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'clipag-worker-'));
  const config = parseConfig({
    CLIPAG_MODE: 'local',
    CLIPAG_DATA_DIR: dataDir,
    CLIPAG_VISIBILITY_TIMEOUT_SEC: '30',
    CLIPAG_RECEIVE_WAIT_SEC: '1',
    CLIPAG_DEFAULT_MODEL: 'tiny',
    LOG_LEVEL: 'error',
    ...overrides,
  }) as LocalConfig;
  const adapters = await localAdapters(config);
  return { dataDir, config, ...adapters };
}

export type Env = Awaited<ReturnType<typeof makeEnv>>;

/** Creates a job as the API does for POST /v1/generations (made with `apiKeyId` when given): a queued record, then its message. */
export async function submit(env: { jobs: JobStore; queue: Pick<JobQueue, 'send'> }, input: Partial<GenerationRequestInput>, apiKeyId?: string, requestId?: string): Promise<JobRecord> {
  const spec = GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 6, seed: 7, model: 'tiny', ...input });
  const job = await env.jobs.create(newJobRecord({ id: newJobId(), owner: OWNER, spec, ...(apiKeyId !== undefined ? { apiKeyId } : {}), ...(requestId !== undefined ? { requestId } : {}) }));
  await env.queue.send(encodeQueueMessage({ v: 1, job_id: job.id, owner: job.owner }));
  return job;
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false, timeoutMs = 60_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export async function waitForStatus(env: Pick<Env, 'jobs'>, id: string, statuses: string[], timeoutMs = 60_000): Promise<JobRecord> {
  return waitFor(`job ${id} to be ${statuses.join('|')}`, async () => {
    const job = await env.jobs.get(OWNER, id);
    return job && statuses.includes(job.status) ? job : undefined;
  }, timeoutMs);
}

export async function listKeys(blobs: BlobStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await blobs.list(prefix, cursor ? { cursor } : {});
    keys.push(...page.items.map((i) => i.key));
    cursor = page.cursor;
  } while (cursor);
  return keys;
}
