import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { BUCKET_PREFIXES, MAX_RECEIVE_COUNT, type StageConfig } from './config.ts';

export interface StatefulStackProps extends StackProps {
  readonly config: StageConfig;
}

/**
 * Logical IDs of the stateful resources, fixed by hand. A construct-tree refactor would
 * otherwise change the generated IDs and make CloudFormation replace the bucket (data
 * loss) or the queues (in-flight jobs lost). The rate-counter table holds only a minute of
 * counts, but a replacement would still change its name under the API stack that reads it. The
 * tests pin these exact values.
 */
export const STATEFUL_LOGICAL_IDS = {
  bucket: 'ClipagBucket',
  queue: 'ClipagJobQueue',
  deadLetterQueue: 'ClipagJobDeadLetterQueue',
  rateCounters: 'ClipagRateCounters',
} as const;

/**
 * Everything that holds data: the bucket (jobs, outputs, uploads, models, API keys), the
 * job queue with its DLQ, and the API's per-account request counters. Kept apart from the
 * compute stacks so those can be destroyed and redeployed freely.
 */
export class StatefulStack extends Stack {
  readonly bucket: s3.Bucket;
  readonly queue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
  /** The API's sliding-window request counts per account (CLIPAG_RATE_TABLE). */
  readonly rateCounters: dynamodb.TableV2;

  constructor(scope: Construct, id: string, props: StatefulStackProps) {
    super(scope, id, props);
    const { config } = props;

    this.bucket = new s3.Bucket(this, 'Bucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      // S3-managed keys: presigned URLs keep working without per-caller KMS grants.
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      versioned: config.bucketVersioning,
      // Job records and API keys live here: never delete with the stack.
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [
        {
          id: 'expire-outputs',
          prefix: BUCKET_PREFIXES.outputs,
          expiration: Duration.days(config.outputRetentionDays),
          noncurrentVersionExpiration: config.bucketVersioning ? Duration.days(1) : undefined,
        },
        {
          id: 'expire-uploads',
          prefix: BUCKET_PREFIXES.uploads,
          expiration: Duration.days(config.uploadRetentionDays),
          noncurrentVersionExpiration: config.bucketVersioning ? Duration.days(1) : undefined,
        },
        {
          // A worker killed without its stop (a lost instance) leaves its presence document; the API
          // ignores it after 3 minutes, and this removes it (ADR 0040).
          id: 'expire-worker-presence',
          prefix: BUCKET_PREFIXES.workers,
          expiration: Duration.days(1),
          noncurrentVersionExpiration: config.bucketVersioning ? Duration.days(1) : undefined,
        },
        {
          // Abandoned presigned multipart uploads otherwise accrue storage invisibly.
          id: 'abort-incomplete-multipart',
          abortIncompleteMultipartUploadAfter: Duration.days(1),
        },
        ...(config.bucketVersioning
          ? [
              { id: 'expire-noncurrent', noncurrentVersionExpiration: Duration.days(30) },
              // Every job writes and deletes two to four markers. In a versioned bucket each delete leaves
              // a delete marker, which stays for ever once its old version has expired (no rule here
              // expires current versions), and every list of pending/ (each POST's active-job count,
              // each sweep) must step over them. Their old versions go after a day, then the markers.
              { id: 'pending-markers', prefix: BUCKET_PREFIXES.pending, noncurrentVersionExpiration: Duration.days(1), expiredObjectDeleteMarker: true },
              // The same for outputs/ and uploads/: each expiry above, each DELETE /v1/generations/{id} and
              // each withheld image leaves a delete marker, and every list of a job's outputs/ prefix steps
              // over them. The expire-* rules already drop the old versions after a day; S3 refuses
              // ExpiredObjectDeleteMarker beside an expiration in days in one rule, hence rules of their own.
              { id: 'outputs-markers', prefix: BUCKET_PREFIXES.outputs, expiredObjectDeleteMarker: true },
              { id: 'uploads-markers', prefix: BUCKET_PREFIXES.uploads, expiredObjectDeleteMarker: true },
              { id: 'worker-presence-markers', prefix: BUCKET_PREFIXES.workers, expiredObjectDeleteMarker: true },
            ]
          : []),
      ],
      // Browsers PUT init images straight to S3 with a presigned URL and GET outputs.
      cors: [
        {
          allowedMethods: [s3.HttpMethods.PUT, s3.HttpMethods.GET, s3.HttpMethods.HEAD],
          allowedOrigins: [...config.corsAllowedOrigins],
          // Every header an upload grant signs (its answer's `headers`): a browser's preflight names them,
          // and a signed one cannot be left out. if-none-match: the link writes once (ADR 0044).
          allowedHeaders: ['content-type', 'content-length', 'content-md5', 'if-none-match', 'x-amz-*'],
          exposedHeaders: ['ETag'],
          maxAge: 3000,
        },
      ],
    });
    (this.bucket.node.defaultChild as s3.CfnBucket).overrideLogicalId(STATEFUL_LOGICAL_IDS.bucket);

    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // Longest SQS allows, so an operator has two weeks to inspect failures.
      retentionPeriod: Duration.days(14),
      removalPolicy: RemovalPolicy.RETAIN,
    });
    (this.deadLetterQueue.node.defaultChild as sqs.CfnQueue).overrideLogicalId(
      STATEFUL_LOGICAL_IDS.deadLetterQueue,
    );

    this.queue = new sqs.Queue(this, 'JobQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      visibilityTimeout: Duration.seconds(config.visibilityTimeoutSeconds),
      retentionPeriod: Duration.days(config.queueRetentionDays),
      // Long polling by default: fewer empty receives, lower cost.
      receiveMessageWaitTime: Duration.seconds(20),
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: MAX_RECEIVE_COUNT },
      removalPolicy: RemovalPolicy.RETAIN,
    });
    (this.queue.node.defaultChild as sqs.CfnQueue).overrideLogicalId(STATEFUL_LOGICAL_IDS.queue);

    // TableV2 (AWS::DynamoDB::GlobalTable), CDK's current recommendation: moving from Table later would replace it.
    this.rateCounters = new dynamodb.TableV2(this, 'RateCounters', {
      // The API's own key per account and window; no sort key.
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      // Traffic follows API requests, spiky and mostly idle: no capacity to size or pay for while idle.
      billing: dynamodb.Billing.onDemand(),
      // Epoch seconds the API sets on each item: DynamoDB drops past windows by itself, at no cost.
      timeToLiveAttribute: 'expires_at',
      // An AWS-owned key (the default, said here): no KMS key to grant the API or pay for per request.
      encryption: dynamodb.TableEncryptionV2.dynamoOwnedKey(),
      // The counts are ephemeral: losing them loses at most a minute of counting, so no backups and
      // no retention. Deleting the stack (or replacing the table) just restarts every window.
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: false },
      removalPolicy: RemovalPolicy.DESTROY,
    });
    (this.rateCounters.node.defaultChild as dynamodb.CfnGlobalTable).overrideLogicalId(STATEFUL_LOGICAL_IDS.rateCounters);

    // What the operator CLI (`clipag keys`, `usage`, `policy`, `dlq`) needs in its environment.
    new CfnOutput(this, 'BucketName', { value: this.bucket.bucketName, description: 'CLIPAG_BUCKET' });
    new CfnOutput(this, 'QueueUrl', { value: this.queue.queueUrl, description: 'CLIPAG_QUEUE_URL' });
    new CfnOutput(this, 'DeadLetterQueueUrl', { value: this.deadLetterQueue.queueUrl, description: 'CLIPAG_DLQ_URL' });
    // Not one the CLI needs: the API Lambda's table, named for an operator who looks at an account's counts.
    new CfnOutput(this, 'RateTableName', { value: this.rateCounters.tableName, description: 'CLIPAG_RATE_TABLE' });
  }
}
