import { awsRateCounter, awsStores } from '../../shared/adapters/stores.ts';
import { parseConfig, settingWarnings, type AwsConfig } from '../../shared/config.ts';
import { ConfigError } from '../../shared/errors.ts';
import type { AppDeps } from '../types.ts';
import { policyFromStore } from '../../shared/prompt-policy.ts';
import { viewOptionsFromConfig } from '../../shared/views.ts';
import { jsonLineLogAt } from '../log.ts';
import { modelsFromBucket } from './models.ts';

/** The API's deps on S3 and SQS. SDK clients are built once per process (Lambda cold start). */
export function awsDeps(config: AwsConfig): AppDeps {
  const { blobs, queue, jobs, keys } = awsStores(config);
  return {
    blobs,
    queue,
    jobs,
    keys,
    rateCounter: awsRateCounter(config),
    log: jsonLineLogAt(config.logLevel),
    promptPolicy: policyFromStore(blobs, { onProblem: (problem, kind) => jsonLineLogAt(config.logLevel)({ level: kind === 'invalid' ? 'error' : 'warn', msg: problem }) }),
    models: modelsFromBucket(blobs, config.defaultModel, { defaultInputSize: config.defaultModelInputSize }),
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

/**
 * The Lambda config, parsed once at cold start; anything but aws mode is a config error. A name that is
 * no setting (a typo of one) is logged once, at warn, with the closest setting.
 */
export function awsConfig(env: Readonly<Record<string, string | undefined>>, warn: (line: string) => void = (line) => jsonLineLogAt('warn')({ level: 'warn', msg: line })): AwsConfig {
  const config = parseConfig(env);
  if (config.mode !== 'aws') throw new ConfigError(['CLIPAG_MODE: must be "aws" in Lambda (got "local")']);
  for (const line of settingWarnings(env)) warn(line);
  return config;
}
