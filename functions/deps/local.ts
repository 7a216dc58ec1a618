import { join } from 'node:path';
import { type LocalStores, localLayout, localStores } from '../../shared/adapters/stores.ts';
import { MemoryRateCounter } from '../../shared/adapters/local/index.ts';
import type { LocalConfig } from '../../shared/config.ts';
import type { ModelInfo } from '../schemas.ts';
import type { AppDeps } from '../types.ts';
import { policyFromStore } from '../../shared/prompt-policy.ts';
import { viewOptionsFromConfig } from '../../shared/views.ts';
import { jsonLineLogAt } from '../log.ts';
import { modelsFromDir } from './models.ts';

export { localLayout };
export type LocalAdapters = LocalStores;

export const localAdapters = localStores;

/** The API's deps on the local adapters. Pass `models` to reuse the worker's registry; by default the models folder is scanned. */
export async function localDeps(
  config: LocalConfig,
  options: { adapters?: LocalAdapters; models?: () => Promise<ModelInfo[]> } = {},
): Promise<AppDeps & { adapters: LocalAdapters }> {
  const adapters = options.adapters ?? (await localAdapters(config));
  return {
    adapters,
    blobs: adapters.blobs,
    queue: adapters.queue,
    jobs: adapters.jobs,
    keys: adapters.keys,
    ...(config.rateLimitPerMin > 0 || config.uploadsPerHour > 0 || config.maxWaits > 0 ? { rateCounter: new MemoryRateCounter() } : {}),
    log: jsonLineLogAt(config.logLevel),
    promptPolicy: policyFromStore(adapters.blobs, { onProblem: (problem, kind) => jsonLineLogAt(config.logLevel)({ level: kind === 'invalid' ? 'error' : 'warn', msg: problem }) }),
    models: options.models ?? modelsFromDir(config.modelsDir, config.defaultModel, { store: adapters.blobs }),
    limits: {
      maxBodyBytes: config.maxBodyBytes,
      maxUploadBytes: config.maxUploadBytes,
      signedUrlTtlSec: config.signedUrlTtlSec,
      uploadUrlTtlSec: config.uploadUrlTtlSec,
      webhookAllowPrivate: config.webhookAllowPrivate,
      webhookPorts: config.webhookPorts,
      maxActiveJobs: config.maxActiveJobs,
      maxWaitSec: config.maxWaitSec,
      rateLimitPerMin: config.rateLimitPerMin,
      uploadsPerHour: config.uploadsPerHour,
      maxWaits: config.maxWaits,
      ...viewOptionsFromConfig(config),
    },
  };
}
