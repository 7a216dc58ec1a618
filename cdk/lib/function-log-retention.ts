import { CfnResource, type IAspect } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { IConstruct } from 'constructs';

/**
 * Gives every Lambda function that names no log group one with the stage's retention.
 *
 * Our own functions each get a LogGroup (api-stack.ts). The exception is what CDK adds by itself: the
 * singleton providers of its custom resources (here the VPC's restrictDefaultSecurityGroup handler) are
 * plain `AWS::Lambda::Function` L1 resources with no `LoggingConfig` and no way to pass one, so Lambda
 * would create `/aws/lambda/<name>` on first use with no expiry. This aspect adds a LogGroup beside
 * such a function and points its `LoggingConfig.LogGroup` at it. The provider's role has
 * AWSLambdaBasicExecutionRole, which may write to any log group, so no grant is needed.
 */
export class FunctionLogRetention implements IAspect {
  constructor(private readonly retention: logs.RetentionDays) {}

  visit(node: IConstruct): void {
    if (!(node instanceof CfnResource) || node.cfnResourceType !== 'AWS::Lambda::Function') return;
    if (hasLoggingConfig(node)) return;
    const scope = node.node.scope;
    if (!scope) return;
    const logGroup = new logs.LogGroup(scope, `${node.node.id}LogGroup`, { retention: this.retention });
    node.addPropertyOverride('LoggingConfig.LogGroup', logGroup.logGroupName);
  }
}

function hasLoggingConfig(fn: CfnResource): boolean {
  if (fn instanceof lambda.CfnFunction) return fn.loggingConfig !== undefined;
  // A core CfnResource (a custom-resource provider) keeps the properties it was given in the
  // protected `_cfnProperties`: should a later CDK give its providers a LoggingConfig, it is kept.
  return (fn as unknown as { _cfnProperties?: Record<string, unknown> })._cfnProperties?.LoggingConfig !== undefined;
}
