import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';

/** The queued-job sweep (ADR 0012): its function, and the log group its per-sweep figures go to. */
export interface QueuedJobSweepRef {
  readonly fn: lambda.IFunction;
  readonly logGroup: logs.ILogGroup;
}

export interface QueueAlarmsProps {
  readonly deadLetterQueue: sqs.IQueue;
  readonly oldestQueuedJobSeconds: number;
  readonly dlqDepth: number;
  readonly email?: string;
  /** The queued-job sweep: failing sweep after sweep means lost messages stay lost; its figures say how long customers wait. */
  readonly queuedJobSweep: QueuedJobSweepRef;
  /** How often the sweep's schedule runs it (queuedJobSweepMinutes): its liveness alarm counts runs per period. */
  readonly queuedJobSweepMinutes: number;
  /** The public API: 5xx answers (the app's 500s, and the gateway's own for a failing Lambda). */
  readonly httpApi?: apigw.IHttpApi;
  /** 5xx answers in each of two 5-minute periods that page (default 10). */
  readonly api5xxPerFiveMinutes?: number;
  /** The worker's JSON log lines: any `error` line pages (a lost usage add, an unhealthy worker, a failure it could not record). */
  readonly workerLogGroup?: logs.ILogGroup;
  /** The API handler's JSON log lines: a per-account limit failing open (its counter unavailable) pages once it lasts. */
  readonly apiLogGroup?: logs.ILogGroup;
}

/** Operator alarms for the job pipeline, published to one SNS topic. */
export class QueueAlarms extends Construct {
  readonly topic: sns.Topic;
  readonly dlqDepthAlarm: cloudwatch.Alarm;
  readonly oldestQueuedJobAlarm: cloudwatch.Alarm;
  readonly queuedJobSweepAlarm: cloudwatch.Alarm;
  /** No sweep ran for three periods of its schedule (throttled, dropped, a disabled rule, a deleted function). */
  readonly queuedJobSweepNotRunningAlarm: cloudwatch.Alarm;
  /** Lambda dropped a scheduled sweep's event (it waited past maxEventAge, e.g. throttled): the sweep is being starved. */
  readonly queuedJobSweepDroppedAlarm: cloudwatch.Alarm;
  readonly api5xxAlarm: cloudwatch.Alarm | undefined;
  readonly workerErrorAlarm: cloudwatch.Alarm | undefined;
  /** `OldestQueuedJobSeconds` from the sweep's `queued-job sweep` line; the dashboard graphs the same metric. */
  readonly oldestQueuedJobFilter: logs.MetricFilter;
  /** `WorkerErrorLines`, one per `"level":"error"` line of the worker; the dashboard graphs the same metric. */
  readonly workerErrorLinesFilter: logs.MetricFilter | undefined;
  /** `RateLimitUnavailable`, one per `rate_limit_unavailable` line of the API (ADR 0026); the dashboard graphs it. */
  readonly rateLimitUnavailableFilter: logs.MetricFilter | undefined;
  readonly rateLimitFailingOpenAlarm: cloudwatch.Alarm | undefined;

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

    /** Most alarms here: at or over its threshold for `periods` periods; no data (an idle queue or API) is healthy. */
    const atLeast = (id: string, description: string, metric: cloudwatch.IMetric, threshold: number, periods: number) =>
      new cloudwatch.Alarm(this, id, {
        alarmDescription: description,
        metric,
        threshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: periods,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });

    /**
     * An alarm on log lines: `<alarmId>Filter` counts, as `Clipag/<metricName>`, the JSON lines of
     * `logGroup` whose `field` is `value`, and the alarm fires when one or more come in each of
     * `periods` 5-minute periods.
     */
    const onLines = (logGroup: logs.ILogGroup, alarmId: string, field: string, value: string, metricName: string, description: string, periods: number) => {
      const filter = new logs.MetricFilter(this, `${alarmId}Filter`, { logGroup, filterPattern: logs.FilterPattern.stringValue(field, '=', value), metricNamespace: 'Clipag', metricName, metricValue: '1' });
      return { filter, alarm: atLeast(alarmId, description, filter.metric({ period: Duration.minutes(5), statistic: 'Sum' }), 1, periods) };
    };

    // Any message in the DLQ is a job that failed three times: a human should look.
    this.dlqDepthAlarm = atLeast(
      'DlqDepth',
      'Jobs are landing in the dead-letter queue (failed after 3 receives).',
      props.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(1), statistic: 'Maximum' }),
      props.dlqDepth,
      1,
    );

    // A job waiting long to start means the fleet is not keeping up or cannot start (no GPU capacity,
    // Spot unavailable, image pull failing): customers are waiting. The figure is the sweep's, from the
    // job records: the queue's ApproximateAgeOfOldestMessage also counts messages in flight, so one
    // long run (and the wait before it) tripped it while nobody waited. The sweep runs every few
    // minutes and logs 0 when nothing waits, so no data here means no sweep, not no wait: a sweep that
    // stops running (or whose events are dropped) has its own alarms below (QueuedJobSweepNotRunning,
    // QueuedJobSweepEventsDropped), so this one reading OK on missing data never hides a stopped sweep.
    this.oldestQueuedJobAlarm = atLeast(
      'OldestQueuedJob',
      `A queued job has waited more than ${props.oldestQueuedJobSeconds}s to start (the queued-job sweep's oldestQueuedSec).`,
      (this.oldestQueuedJobFilter = new logs.MetricFilter(this, 'OldestQueuedJobFilter', {
        logGroup: props.queuedJobSweep.logGroup,
        filterPattern: logs.FilterPattern.stringValue('$.msg', '=', 'queued-job sweep'),
        metricNamespace: 'Clipag',
        metricName: 'OldestQueuedJobSeconds',
        metricValue: '$.oldestQueuedSec',
        unit: cloudwatch.Unit.SECONDS,
      })).metric({ period: Duration.minutes(5), statistic: 'Maximum' }),
      props.oldestQueuedJobSeconds,
      // One reading is enough: a job's wait only grows until it starts, so it cannot flap.
      1,
    );

    // One failed sweep is retried by the next; failures for 15 minutes straight need a human.
    this.queuedJobSweepAlarm = atLeast(
      'QueuedJobSweepErrors',
      'The queued-job sweep has failed for 15 minutes: jobs that lost their queue message are not re-sent, and the queued-job wait is not measured.',
      props.queuedJobSweep.fn.metricErrors({ period: Duration.minutes(5), statistic: 'Sum' }),
      1,
      3,
    );

    // The errors alarm above only sees sweeps that ran. Lambda records neither Invocations nor Errors
    // for a throttled async invocation, an event older than maxEventAge (the sweep period) is dropped,
    // and a disabled or deleted schedule invokes nothing: all silent, while lost messages stay lost,
    // owed webhooks are never retried and OldestQueuedJob loses its data and reads OK. So: no run in
    // three sweep periods in a row pages, and missing data (no invocation at all) is breaching.
    const sweepPeriod = Duration.minutes(props.queuedJobSweepMinutes);
    const notRunningPeriods = 3;
    this.queuedJobSweepNotRunningAlarm = new cloudwatch.Alarm(this, 'QueuedJobSweepNotRunning', {
      alarmDescription: `The queued-job sweep has not run for ${notRunningPeriods * props.queuedJobSweepMinutes} minutes (scheduled every ${props.queuedJobSweepMinutes} min): throttled, its events dropped, its schedule disabled or its function gone. Lost messages are not re-sent, owed webhooks not retried, and the queued-job wait alarm has no data.`,
      metric: props.queuedJobSweep.fn.metricInvocations({ period: sweepPeriod, statistic: 'Sum' }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      evaluationPeriods: notRunningPeriods,
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    });

    // An event dropped for its age means the sweep waited a whole period for concurrency (the API's
    // Prefer: wait calls can take the account's): one is worth a look before the runs stop altogether.
    this.queuedJobSweepDroppedAlarm = atLeast(
      'QueuedJobSweepEventsDropped',
      "Lambda dropped a scheduled queued-job sweep (AsyncEventsDropped: it waited longer than one sweep period, most likely throttled by the account's concurrency).",
      props.queuedJobSweep.fn.metric('AsyncEventsDropped', { period: Duration.minutes(5), statistic: 'Sum' }),
      1,
      1,
    );

    // Customers are getting server errors: 10 or more in each of two 5-minute periods, so one
    // unlucky request does not page but an outage does within 10 minutes.
    this.api5xxAlarm = props.httpApi
      ? atLeast(
          'Api5xx',
          "The public API answered 5xx repeatedly (the app's 500s, or the gateway's own for a failing or timing-out Lambda).",
          props.httpApi.metricServerError({ period: Duration.minutes(5), statistic: 'Sum' }),
          props.api5xxPerFiveMinutes ?? 10,
          2,
        )
      : undefined;

    // The worker logs at `error` only what an operator must act on: an unhealthy worker (ADR 0023),
    // a usage add that failed (the ledger misses a job until `clipag usage rebuild`), a failure it
    // could not record, a corrupt job document, a content policy that does not parse.
    const workerErrors = props.workerLogGroup
      ? onLines(props.workerLogGroup, 'WorkerErrorLines', '$.level', 'error', 'WorkerErrorLines', 'The GPU worker logged an error line (search its log group for "level":"error").', 1)
      : undefined;
    this.workerErrorLinesFilter = workerErrors?.filter;
    this.workerErrorAlarm = workerErrors?.alarm;

    // The per-account limits fail open when their DynamoDB counter does not answer (ADR 0026): requests
    // go through unlimited, and each API instance logs `rate_limit_unavailable` at most every 30 s. A
    // blip passes; 15 minutes of it (a missing table or grant never passes by itself) pages.
    const failingOpen = props.apiLogGroup
      ? onLines(
          props.apiLogGroup,
          'RateLimitFailingOpen',
          '$.event',
          'rate_limit_unavailable',
          'RateLimitUnavailable',
          'The per-account rate limits cannot reach their DynamoDB counter and let every request through (search the API log for "rate_limit_unavailable"; an error-level line means a missing table or grant).',
          3,
        )
      : undefined;
    this.rateLimitUnavailableFilter = failingOpen?.filter;
    this.rateLimitFailingOpenAlarm = failingOpen?.alarm;

    const alarms = [this.dlqDepthAlarm, this.oldestQueuedJobAlarm, this.queuedJobSweepAlarm, this.queuedJobSweepNotRunningAlarm, this.queuedJobSweepDroppedAlarm, this.api5xxAlarm, this.workerErrorAlarm, this.rateLimitFailingOpenAlarm];
    for (const alarm of alarms.filter((a): a is cloudwatch.Alarm => a !== undefined)) {
      alarm.addAlarmAction(action);
      alarm.addOkAction(action);
    }
  }
}
