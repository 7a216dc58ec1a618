import { join } from 'node:path';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { LocalBlobStore, LocalJobQueue, loadOrCreateSigningSecret } from '../../shared/adapters/local/index.ts';
import type { LocalConfig } from '../../shared/config.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { ModelInfo } from '../schemas.ts';
import type { AppDeps } from '../types.ts';
import { modelsFromDir } from './models.ts';

/** Where local mode keeps things under the data folder (the serve command and `clipag keys` agree on this). */
export function localLayout(dataDir: string): { blobsDir: string; queueDir: string } {
  return { blobsDir: join(dataDir, 'blobs'), queueDir: join(dataDir, 'queue') };
}

export interface LocalAdapters {
  blobs: LocalBlobStore;
  queue: LocalJobQueue;
  jobs: BlobJobStore;
  keys: BlobApiKeyStore;
  /** HMAC secret of the signed `/blobs/*` links; the local server verifies with it. */
  signingSecret: string;
}

export async function localAdapters(config: LocalConfig): Promise<LocalAdapters> {
  const signingSecret = config.signingSecret ?? (await loadOrCreateSigningSecret(config.dataDir));
  const layout = localLayout(config.dataDir);
  const blobs = new LocalBlobStore({ rootDir: layout.blobsDir, signingSecret, publicBaseUrl: config.publicBaseUrl });
  const queue = new LocalJobQueue({ dir: layout.queueDir, visibilitySec: config.visibilityTimeoutSec, maxReceives: config.maxReceives });
  return { blobs, queue, jobs: new BlobJobStore(blobs), keys: new BlobApiKeyStore(blobs), signingSecret };
}

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
    models: options.models ?? modelsFromDir(config.modelsDir, config.defaultModel, { store: adapters.blobs }),
    limits: {
      maxBodyBytes: config.maxBodyBytes,
      maxUploadBytes: config.maxUploadBytes,
      signedUrlTtlSec: config.signedUrlTtlSec,
    },
  };
}
