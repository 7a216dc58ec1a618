import { S3Client } from '@aws-sdk/client-s3';
import { SQSClient } from '@aws-sdk/client-sqs';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { S3BlobStore, SqsJobQueue } from '../../shared/adapters/aws/index.ts';
import type { AwsConfig } from '../../shared/config.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { AppDeps } from '../types.ts';
import { modelsFromBucket } from './models.ts';

/** The API's deps on S3 and SQS. SDK clients are built here, once per process (Lambda cold start). */
export function awsDeps(config: AwsConfig): AppDeps {
  const s3 = new S3Client({
    region: config.region,
    ...(config.s3Endpoint ? { endpoint: config.s3Endpoint, forcePathStyle: true } : {}),
  });
  const sqs = new SQSClient({ region: config.region, ...(config.sqsEndpoint ? { endpoint: config.sqsEndpoint } : {}) });
  const blobs = new S3BlobStore({ client: s3, bucket: config.bucket });
  const queue = new SqsJobQueue({
    client: sqs,
    queueUrl: config.queueUrl,
    ...(config.deadLetterQueueUrl ? { deadLetterQueueUrl: config.deadLetterQueueUrl } : {}),
  });
  return {
    blobs,
    queue,
    jobs: new BlobJobStore(blobs),
    keys: new BlobApiKeyStore(blobs),
    models: modelsFromBucket(blobs, config.defaultModel),
    limits: {
      maxBodyBytes: config.maxBodyBytes,
      maxUploadBytes: config.maxUploadBytes,
      signedUrlTtlSec: config.signedUrlTtlSec,
    },
  };
}
