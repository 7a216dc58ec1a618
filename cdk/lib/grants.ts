import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { WEBHOOK_SECRETS_PREFIX } from '../../shared/keys.ts';

/**
 * Explicit, prefix-scoped grants. The L2 `bucket.grantReadWrite` helpers emit wildcard
 * actions (`s3:GetObject*`, `s3:List*`, `s3:DeleteObject*`, ...) over the whole bucket;
 * these name each action and each prefix so a role can touch only what it needs.
 */
export type S3Access = 'read' | 'write' | 'delete';

export function grantPrefix(
  grantee: iam.IGrantable,
  bucket: s3.IBucket,
  prefix: string,
  access: readonly S3Access[],
): void {
  if (!prefix.endsWith('/')) throw new Error(`prefix must end in "/": ${prefix}`);
  const objectActions: string[] = [];
  // GetObject also covers HeadObject; conditional writes (If-Match/If-None-Match) need only PutObject.
  if (access.includes('read')) objectActions.push('s3:GetObject');
  if (access.includes('write')) objectActions.push('s3:PutObject');
  if (access.includes('delete')) objectActions.push('s3:DeleteObject');
  if (objectActions.length > 0) {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: objectActions,
        resources: [bucket.arnForObjects(`${prefix}*`)],
      }),
    );
  }
}

/**
 * The accounts' webhook signing secrets (ADR 0028), `webhook-secrets/<owner>.json`, stored as they are
 * (they sign). `manage`: the API creates, rotates and deletes them (POST and DELETE
 * /v1/webhook-secret; its GET reads). `sign`: whoever delivers webhooks (the worker's first attempt,
 * the queued-job sweep's retries) reads them at each attempt. No other role may read them.
 */
export function grantWebhookSecrets(grantee: iam.IGrantable, bucket: s3.IBucket, use: 'manage' | 'sign'): void {
  grantPrefix(grantee, bucket, WEBHOOK_SECRETS_PREFIX, use === 'manage' ? ['read', 'write', 'delete'] : ['read']);
}

/**
 * Unconditional s3:ListBucket on the bucket. Without it S3 answers 403, not 404, for a key that does
 * not exist, and the code reads "not found" as an answer: an unknown API key (401), an upload not yet
 * made or expired (400), an unknown job id (404). A prefix condition does not help: a GET carries no
 * s3:prefix, so the check fails and S3 says 403 again. Listing reveals key names only, not contents.
 */
export function grantListBucket(grantee: iam.IGrantable, bucket: s3.IBucket): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['s3:ListBucket'],
      resources: [bucket.bucketArn],
    }),
  );
}

/**
 * The rate limit's read and counter update on the table itself: `table.grantReadWriteData` would add
 * queries, scans, batch and transactional writes, deletes and the index ARNs, none of which a
 * counter needs.
 */
export function grantRateCounting(grantee: iam.IGrantable, table: dynamodb.ITableV2): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['dynamodb:GetItem', 'dynamodb:UpdateItem'],
      resources: [table.tableArn],
    }),
  );
}

/** Only SendMessage (plus the attribute read the SDK may do); no receive or delete. */
export function grantSend(grantee: iam.IGrantable, queue: sqs.IQueue): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['sqs:GetQueueAttributes', 'sqs:SendMessage'],
      resources: [queue.queueArn],
    }),
  );
}

/**
 * What the worker needs on the dead-letter queue: send (malformed messages go there at once) and,
 * for the sweep that marks jobs whose last delivery died, receive and release (ChangeMessageVisibility
 * 0). No delete: swept messages stay for the depth alarm.
 */
export function grantDeadLetterSweep(grantee: iam.IGrantable, queue: sqs.IQueue): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ['sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage', 'sqs:SendMessage'],
      resources: [queue.queueArn],
    }),
  );
}

/**
 * What a lease-based consumer needs: receive, heartbeat (ChangeMessageVisibility), ack, and send,
 * because a drain gives its message back as a fresh copy (a release would spend a delivery).
 */
export function grantConsume(grantee: iam.IGrantable, queue: sqs.IQueue): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: [
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
        'sqs:ReceiveMessage',
        'sqs:SendMessage',
      ],
      resources: [queue.queueArn],
    }),
  );
}
