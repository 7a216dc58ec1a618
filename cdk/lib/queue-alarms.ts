import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

export interface QueueAlarmsProps {
  readonly queue: sqs.IQueue;
  readonly deadLetterQueue: sqs.IQueue;
  readonly oldestMessageAgeSeconds: number;
  readonly dlqDepth: number;
  readonly email?: string;
  /** The queued-job sweep: it failing sweep after sweep means lost messages stay lost. */
  readonly queuedJobSweeper?: lambda.IFunction;
}

/** Operator alarms for the job pipeline, published to one SNS topic. */
export class QueueAlarms extends Construct {
  readonly topic: sns.Topic;
  readonly dlqDepthAlarm: cloudwatch.Alarm;
  readonly oldestMessageAlarm: cloudwatch.Alarm;
  readonly queuedJobSweepAlarm: cloudwatch.Alarm | undefined;

  constructor(scope: Construct, id: string, props: QueueAlarmsProps) {
    super(scope, id);
    this.topic = new sns.Topic(this, 'Topic', { displayName: 'clipag alarms', enforceSSL: true });
    // enforceSSL writes a topic policy, and a topic policy replaces SNS's default one (which let the
    // account's own services publish): without this Allow, every alarm action fails with
    // "not authorized to perform: SNS:Publish" and nobody is told.
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CloudWatchAlarmsPublish',
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
    );
    if (props.email) this.topic.addSubscription(new subs.EmailSubscription(props.email));
    const action = new actions.SnsAction(this.topic);

    // Any message in the DLQ is a job that failed three times: a human should look.
    this.dlqDepthAlarm = new cloudwatch.Alarm(this, 'DlqDepth', {
      alarmDescription: 'Jobs are landing in the dead-letter queue (failed after 3 receives).',
      metric: props.deadLetterQueue.metricApproximateNumberOfMessagesVisible({
        period: Duration.minutes(1),
        statistic: 'Maximum',
      }),
      threshold: props.dlqDepth,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
      // An idle DLQ stops emitting metrics; that is the healthy state.
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    // Old messages mean the fleet is not keeping up or cannot start (no GPU capacity,
    // Spot unavailable, image pull failing): customers are waiting.
    this.oldestMessageAlarm = new cloudwatch.Alarm(this, 'OldestMessageAge', {
      alarmDescription: `A queued job has waited more than ${props.oldestMessageAgeSeconds}s.`,
      metric: props.queue.metricApproximateAgeOfOldestMessage({
        period: Duration.minutes(1),
        statistic: 'Maximum',
      }),
      threshold: props.oldestMessageAgeSeconds,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 3,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    // One failed sweep is retried by the next; failures for 15 minutes straight need a human.
    this.queuedJobSweepAlarm = props.queuedJobSweeper
      ? new cloudwatch.Alarm(this, 'QueuedJobSweepErrors', {
          alarmDescription: 'The queued-job sweep has failed for 15 minutes: jobs that lost their queue message are not re-sent.',
          metric: props.queuedJobSweeper.metricErrors({ period: Duration.minutes(5), statistic: 'Sum' }),
          threshold: 1,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          evaluationPeriods: 3,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        })
      : undefined;

    for (const alarm of [this.dlqDepthAlarm, this.oldestMessageAlarm, ...(this.queuedJobSweepAlarm ? [this.queuedJobSweepAlarm] : [])]) {
      alarm.addAlarmAction(action);
      alarm.addOkAction(action);
    }
  }
}
