import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';

/**
 * Explicit, prefix-scoped grants. The L2 `bucket.grantReadWrite` helpers emit wildcard
 * actions (`s3:GetObject*`, `s3:List*`, `s3:DeleteObject*`, ...) over the whole bucket;
 * these name each action and each prefix so a role can touch only what it needs.
 */
export type S3Access = 'read' | 'write' | 'list';

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
  if (objectActions.length > 0) {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: objectActions,
        resources: [bucket.arnForObjects(`${prefix}*`)],
      }),
    );
  }
  if (access.includes('list')) {
    grantee.grantPrincipal.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${prefix}*`] } },
      }),
    );
  }
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

/** What a lease-based consumer needs: receive, heartbeat (ChangeMessageVisibility), ack. */
export function grantConsume(grantee: iam.IGrantable, queue: sqs.IQueue): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: [
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
        'sqs:ReceiveMessage',
      ],
      resources: [queue.queueArn],
    }),
  );
}
