export { S3BlobStore, type S3BlobStoreOptions } from './s3-blobstore.ts';
export { SqsJobQueue, type SqsJobQueueOptions } from './sqs-queue.ts';
export { DynamoDbRateCounter, type DynamoDbRateCounterOptions } from './dynamodb-rate-counter.ts';
