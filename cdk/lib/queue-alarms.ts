import { Aws, Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as budgets from 'aws-cdk-lib/aws-budgets';
import type * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import * as events from 'aws-cdk-lib/aws-events';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import type { StageName } from './config.ts';
import { metricNamespace } from './metrics.ts';

/** The queued-job sweep (ADR 0012): its function, and the log group its per-sweep figures go to. */
export interface QueuedJobSweepRef {
  readonly fn: lambda.IFunction;
  readonly logGroup: logs.ILogGroup;
}

/** The GPU worker service, whose tasks' abnormal stops are reported to the topic (ADR 0023, 2026-12-08). */
export interface WorkerServiceRef {
  readonly cluster: ecs.ICluster;
  readonly service: ecs.IBaseService;
}

/** The GPU instances and the queue whose backlog they serve: instances in service with nothing to do page. */
export interface GpuFleetRef {
  readonly autoScalingGroupName: string;
  readonly queue: sqs.IQueue;
  /** Minutes of instances in service with an empty backlog before it pages; longer than the normal tail after a burst. */
  readonly idleMinutes: number;
  /** The group's maximum (maxInstances): held for GPU_FLEET_AT_MAX_HOURS, it pages. */
  readonly maxInstances: number;
}

export interface QueueAlarmsProps {
  /** The stage: its metric namespace (`Clipag/<stage>`), and the name in the task-stopped notices. */
  readonly stage: StageName;
  readonly deadLetterQueue: sqs.IQueue;
  readonly oldestQueuedJobSeconds: number;
  readonly dlqDepth: number;
  readonly email?: string;
  /** The queued-job sweep: failing sweep after sweep means lost messages stay lost; its figures say how long customers wait. */
  readonly queuedJobSweep: QueuedJobSweepRef;
  /** How often the sweep's schedule runs it (queuedJobSweepMinutes): its liveness alarm counts runs per period. */
  readonly queuedJobSweepMinutes: number;
  /** The public API: 5xx answers (the app's 500s, and the gateway's own for a failing Lambda) as a share of its requests. */
  readonly httpApi?: apigw.IHttpApi;
  /** The share of requests answered 5xx, in %, that pages when it holds for two 5-minute periods (default 20). */
  readonly api5xxPercent?: number;
  /** Requests a 5-minute period needs before its 5xx share counts (default 5): one unlucky request of two does not page. */
  readonly api5xxMinRequests?: number;
  /** The API's Lambda: its throttles (the account's concurrency taken, e.g. by `Prefer: wait` holds) page. */
  readonly apiFunction?: lambda.IFunction;
  /** The worker's JSON log lines: any `error` line pages (a lost usage add, an unhealthy worker, a failure it could not record); its `job finished` lines give the failure share. */
  readonly workerLogGroup: logs.ILogGroup;
  /** The API handler's JSON log lines: a per-account limit failing open (its counter unavailable) pages once it lasts, and so does any error line but a 503's. */
  readonly apiLogGroup?: logs.ILogGroup;
  /** The worker service: a task that stops with a non-zero exit code, or never starts, is reported to the topic. */
  readonly workerService?: WorkerServiceRef;
  /** The GPU instances: in service for `idleMinutes` with an empty backlog pages, and so does the group held at its maximum. */
  readonly gpuFleet?: GpuFleetRef;
  /** A monthly AWS Budget on the account's whole cost, in USD, notifying the topic (monthlyBudgetUsd); absent or null: none. */
  readonly monthlyBudgetUsd?: number | null;
}

/** The share of finished jobs that failed, in %, that pages (JobFailureRatio), and the jobs a window needs first. */
export const JOB_FAILURE_PERCENT = 50;
export const JOB_FAILURE_MIN_JOBS = 5;

/**
 * Hours the GPU group must sit at its maximum before it pages (GpuFleetAtMax). A busy fleet at its
 * maximum is healthy to every other alarm and is where the money goes (prod: 8 x $1.006 = $8 an hour,
 * $193 a day). A burst is at the maximum only while the backlog needs every task (prod: 29 jobs or more
 * waiting or running, at jobsPerTask 4), and a warm job takes seconds to minutes, so even a batch of
 * hundreds clears well inside 3 hours; 3 hours there costs about $24 in prod ($6 in dev) before anyone is told.
 */
export const GPU_FLEET_AT_MAX_HOURS = 3;

/** The monthly budget's notifications, in % of its amount: what actual spend crossed, and what AWS forecasts for the month. */
export const BUDGET_ACTUAL_PERCENTS = [80, 100] as const;
export const BUDGET_FORECAST_PERCENT = 100;

/**
 * Where an alarm's entry is in the runbook, at the end of its description: the SNS e-mail carries the
 * description, and it is what reaches the on-call's phone. `entry` is a `####` heading of cdk/README.md's
 * "On call" section (a test checks each one exists).
 */
export function runbookPointer(entry: string): string {
  return `Runbook: cdk/README.md, On call, ${entry}.`;
}

/** The runbook entry of the monthly AWS budget's notifications. */
export const BUDGET_RUNBOOK_ENTRY = 'AWS spend over budget';

/**
 * The budget's name, unique in the account (stage and region), which its notification carries: it has
 * no description, and a budget's name may not hold ':', so the pointer is said without one. At most 100
 * characters with any region's name (14 at most today).
 */
export function budgetName(stage: StageName, region: string): string {
  return `clipag-${stage}-${region} cost ${BUDGET_NOTICES_TAG} - runbook cdk/README.md On call - ${BUDGET_RUNBOOK_ENTRY}`;
}

/**
 * The notices in the budget's name ("a80-100f100": actual 80 and 100 %, forecast 100 %). A change to a
 * budget's notifications replaces it, and CloudFormation creates the new one before it deletes the old:
 * under the same name AWS refuses it ("already exists") and the whole deploy rolls back. With the
 * notices in the name, a change to them is a new name too.
 */
export const BUDGET_NOTICES_TAG = `a${BUDGET_ACTUAL_PERCENTS.join('-')}f${BUDGET_FORECAST_PERCENT}`;

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
  /** The share of the API's requests answered 5xx, over a minimum of requests. */
  readonly api5xxAlarm: cloudwatch.Alarm | undefined;
  /** The API Lambda throttled (no concurrency left): its callers got errors. */
  readonly apiThrottlesAlarm: cloudwatch.Alarm | undefined;
  readonly workerErrorAlarm: cloudwatch.Alarm;
  /** An error line of the API handler or of the queued-job sweep (503 `request failed` lines aside). */
  readonly apiErrorAlarm: cloudwatch.Alarm;
  /** Half or more of the jobs the worker finished in 15 minutes failed (a bad default model, a policy that withholds everything). */
  readonly jobFailureRatioAlarm: cloudwatch.Alarm;
  /** GPU instances in service while the backlog stayed empty for `gpuFleet.idleMinutes`. */
  readonly gpuIdleInstancesAlarm: cloudwatch.Alarm | undefined;
  /** The GPU group at its maximum for GPU_FLEET_AT_MAX_HOURS: a busy, healthy fleet, and the bill's largest part. */
  readonly gpuFleetAtMaxAlarm: cloudwatch.Alarm | undefined;
  /** The monthly AWS Budget on the account's whole cost; it notifies the topic itself (no CloudWatch alarm). */
  readonly monthlyBudget: budgets.CfnBudget | undefined;
  /** Reports each worker task that stopped with a non-zero exit code or failed to start, straight to the topic. */
  readonly workerTaskStoppedRule: events.Rule | undefined;
  /** The namespace of the custom metrics below: `Clipag/<stage>`. */
  readonly metricNamespace: string;
  /** `OldestQueuedJobSeconds` from the sweep's `queued-job sweep` line; the dashboard graphs the same metric. */
  readonly oldestQueuedJobFilter: logs.MetricFilter;
  /** `WorkerErrorLines`, one per `"level":"error"` line of the worker; the dashboard graphs the same metric. */
  readonly workerErrorLinesFilter: logs.MetricFilter;
  /** `ApiErrorLines`, one per `"level":"error"` line of the API handler but a 503's `request failed`; absent without the API's log group. */
  readonly apiErrorLinesFilter: logs.MetricFilter | undefined;
  /** `SweepErrorLines`, one per `"level":"error"` line of the queued-job sweep. */
  readonly sweepErrorLinesFilter: logs.MetricFilter;
  /** `WorkerJobsFinished`, one per `job finished` line of the worker, by `Outcome`; the failure alarm divides two of them, the dashboard graphs all. */
  readonly jobOutcomesFilter: logs.MetricFilter;
  /** `RateLimitUnavailable`, one per `rate_limit_unavailable` line of the API (ADR 0026); the dashboard graphs it. */
  readonly rateLimitUnavailableFilter: logs.MetricFilter | undefined;
  readonly rateLimitFailingOpenAlarm: cloudwatch.Alarm | undefined;

  /** Every alarm that notifies the topic (on ALARM and on OK), for the dashboard's states. */
  get operatorAlarms(): cloudwatch.Alarm[] {
    return [
      this.dlqDepthAlarm,
      this.oldestQueuedJobAlarm,
      this.queuedJobSweepAlarm,
      this.queuedJobSweepNotRunningAlarm,
      this.queuedJobSweepDroppedAlarm,
      this.api5xxAlarm,
      this.apiThrottlesAlarm,
      this.workerErrorAlarm,
      this.apiErrorAlarm,
      this.jobFailureRatioAlarm,
      this.rateLimitFailingOpenAlarm,
      this.gpuIdleInstancesAlarm,
      this.gpuFleetAtMaxAlarm,
    ].filter((a): a is cloudwatch.Alarm => a !== undefined);
  }

  constructor(scope: Construct, id: string, props: QueueAlarmsProps) {
    super(scope, id);
    const namespace = (this.metricNamespace = metricNamespace(props.stage));
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
    // The one runbook entry of the three sweep alarms.
    const sweepEntry = 'Queued-job sweep failing, not running, or its events dropped';

    /**
     * Most alarms here: at or over its threshold for `periods` periods; no data (an idle queue or API) is
     * healthy. `entry`: its runbook entry, named at the end of the description (runbookPointer).
     */
    const atLeast = (id: string, entry: string, description: string, metric: cloudwatch.IMetric, threshold: number, periods: number) =>
      new cloudwatch.Alarm(this, id, {
        alarmDescription: `${description} ${runbookPointer(entry)}`,
        metric,
        threshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: periods,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });

    /**
     * An alarm on log lines: `<alarmId>Filter` counts, as `<namespace>/<metricName>`, the JSON lines of
     * `logGroup` whose `field` is `value`, and the alarm fires when one or more come in each of
     * `periods` 5-minute periods.
     */
    const onLines = (logGroup: logs.ILogGroup, alarmId: string, entry: string, field: string, value: string, metricName: string, description: string, periods: number) => {
      const filter = new logs.MetricFilter(this, `${alarmId}Filter`, { logGroup, filterPattern: logs.FilterPattern.stringValue(field, '=', value), metricNamespace: namespace, metricName, metricValue: '1' });
      return { filter, alarm: atLeast(alarmId, entry, description, filter.metric({ period: Duration.minutes(5), statistic: 'Sum' }), 1, periods) };
    };

    // Any message in the DLQ is a job that failed three times: a human should look.
    this.dlqDepthAlarm = atLeast(
      'DlqDepth',
      'DLQ depth',
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
      'Oldest queued job',
      `A queued job has waited more than ${props.oldestQueuedJobSeconds}s to start (the queued-job sweep's oldestQueuedSec).`,
      (this.oldestQueuedJobFilter = new logs.MetricFilter(this, 'OldestQueuedJobFilter', {
        logGroup: props.queuedJobSweep.logGroup,
        filterPattern: logs.FilterPattern.stringValue('$.msg', '=', 'queued-job sweep'),
        metricNamespace: namespace,
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
      sweepEntry,
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
      alarmDescription: `The queued-job sweep has not run for ${notRunningPeriods * props.queuedJobSweepMinutes} minutes (scheduled every ${props.queuedJobSweepMinutes} min): throttled, its events dropped, its schedule disabled or its function gone. Lost messages are not re-sent, owed webhooks not retried, and the queued-job wait alarm has no data. ${runbookPointer(sweepEntry)}`,
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
      sweepEntry,
      "Lambda dropped a scheduled queued-job sweep (AsyncEventsDropped: it waited longer than one sweep period, most likely throttled by the account's concurrency).",
      props.queuedJobSweep.fn.metric('AsyncEventsDropped', { period: Duration.minutes(5), statistic: 'Sum' }),
      1,
      1,
    );

    // Customers are getting server errors: a fifth or more of the requests of each of two 5-minute
    // periods, once a period has a few requests. A share, not a count: a PoC with a request a minute was
    // wholly down without reaching 10 errors per 5 minutes. Below the minimum the share reads 0, so one
    // failed request out of two does not page.
    const api5xxPercent = props.api5xxPercent ?? 20;
    const api5xxMinRequests = props.api5xxMinRequests ?? 5;
    const fiveMinutes = Duration.minutes(5);
    this.api5xxAlarm = props.httpApi
      ? atLeast(
          'Api5xx',
          'API 5xx share',
          `The public API answered ${api5xxPercent} % or more of its requests with 5xx in two 5-minute periods in a row (at least ${api5xxMinRequests} requests each): the app's 500s, or the gateway's own for a failing or timing-out Lambda.`,
          new cloudwatch.MathExpression({
            label: '5xx share of requests (%)',
            expression: `IF(FILL(requests, 0) >= ${api5xxMinRequests}, 100 * FILL(errors, 0) / requests, 0)`,
            usingMetrics: {
              errors: props.httpApi.metricServerError({ period: fiveMinutes, statistic: 'Sum' }),
              requests: props.httpApi.metricCount({ period: fiveMinutes, statistic: 'Sum' }),
            },
            period: fiveMinutes,
          }),
          api5xxPercent,
          2,
        )
      : undefined;

    // A throttled API invocation is an error to its caller. With `Prefer: wait` holding executions
    // (ADR 0024), the account's concurrency is the known limit: two periods in a row page.
    this.apiThrottlesAlarm = props.apiFunction
      ? atLeast(
          'ApiThrottles',
          'API Lambda throttled',
          "The API Lambda was throttled in two 5-minute periods in a row: callers got errors because the account's (or the function's) concurrency was used up.",
          props.apiFunction.metricThrottles({ period: fiveMinutes, statistic: 'Sum' }),
          1,
          2,
        )
      : undefined;

    // The worker logs at `error` only what an operator must act on: an unhealthy worker (ADR 0023),
    // a usage add that failed (the ledger misses a job until `clipag usage rebuild`), a failure it
    // could not record, a corrupt job document, a content policy that does not parse.
    const workerErrors = onLines(props.workerLogGroup, 'WorkerErrorLines', 'GPU worker error line', '$.level', 'error', 'WorkerErrorLines', 'The GPU worker logged an error line (search its log group for "level":"error").', 1);
    this.workerErrorLinesFilter = workerErrors.filter;
    this.workerErrorAlarm = workerErrors.alarm;

    // The API and the sweep log at `error` what an operator must act on too: a refused job that could be
    // neither failed nor marked (the sweep may still send it), a content policy document that does not
    // parse (ADR 0023: it pages), a rate-limit counter whose table or grant is missing, and a lone bug's
    // 500, which the 5xx share never reaches. Not a 503's `request failed` line: the store or queue
    // refusing for a moment is the 5xx share's to judge (one blip pages nobody, an outage does). Every
    // other error line counts through the `msg` test; a `request failed` line always has a `status`, so
    // the pattern never depends on how CloudWatch compares a field a line lacks.
    const errorLinePattern = (excluding503: boolean) =>
      excluding503
        ? logs.FilterPattern.all(
            logs.FilterPattern.stringValue('$.level', '=', 'error'),
            logs.FilterPattern.any(logs.FilterPattern.stringValue('$.msg', '!=', 'request failed'), logs.FilterPattern.numberValue('$.status', '!=', 503)),
          )
        : logs.FilterPattern.stringValue('$.level', '=', 'error');
    const errorLines = (id: string, logGroup: logs.ILogGroup, metricName: string, excluding503: boolean) =>
      new logs.MetricFilter(this, id, { logGroup, filterPattern: errorLinePattern(excluding503), metricNamespace: namespace, metricName, metricValue: '1' });
    this.apiErrorLinesFilter = props.apiLogGroup ? errorLines('ApiErrorLinesFilter', props.apiLogGroup, 'ApiErrorLines', true) : undefined;
    this.sweepErrorLinesFilter = errorLines('SweepErrorLinesFilter', props.queuedJobSweep.logGroup, 'SweepErrorLines', false);
    const linesPer5Min = (filter: logs.MetricFilter) => filter.metric({ period: Duration.minutes(5), statistic: 'Sum' });
    this.apiErrorAlarm = atLeast(
      'ApiErrorLines',
      'API or sweep error line',
      'The API handler or the queued-job sweep logged an error line (search both log groups for "level":"error"; a 503\'s `request failed` line is not counted).',
      new cloudwatch.MathExpression({
        label: 'error lines of the API handler and the queued-job sweep',
        expression: this.apiErrorLinesFilter ? 'FILL(api, 0) + FILL(sweep, 0)' : 'FILL(sweep, 0)',
        usingMetrics: { sweep: linesPer5Min(this.sweepErrorLinesFilter), ...(this.apiErrorLinesFilter ? { api: linesPer5Min(this.apiErrorLinesFilter) } : {}) },
        period: Duration.minutes(5),
      }),
      1,
      1,
    );

    // gpu-worker/worker/worker.ts, `finish`: log.info('job finished', { job_id, owner, outcome, ...extra }),
    // through jsonLogger (`msg` and the fields at the top level). `outcome` is one of JOB_OUTCOMES
    // (dashboard.ts), never free text, so it can be a dimension; job_id and owner never are (one metric
    // per value).
    this.jobOutcomesFilter = new logs.MetricFilter(this, 'JobOutcomesFilter', {
      logGroup: props.workerLogGroup,
      filterPattern: logs.FilterPattern.stringValue('$.msg', '=', 'job finished'),
      metricNamespace: namespace,
      metricName: 'WorkerJobsFinished',
      metricValue: '1',
      dimensions: { Outcome: '$.outcome' },
    });

    // Jobs can fail one after another at full GPU speed while every other alarm stays quiet: a default
    // model that was never pushed or is misspelled (each job fails invalid_model), a pushed model that
    // fails every run, a content policy that withholds every image (the job fails content_policy, and
    // is billed). Each is an `info` line. Half of 5 or more finished jobs in 15 minutes pages; below 5
    // the share reads 0 (one customer's bad prompt is not an incident).
    const finished = (outcome: string) => this.jobOutcomesFilter.metric({ period: Duration.minutes(15), statistic: 'Sum', dimensionsMap: { Outcome: outcome } });
    this.jobFailureRatioAlarm = atLeast(
      'JobFailureRatio',
      'Job failure share',
      `${JOB_FAILURE_PERCENT} % or more of the jobs the GPU worker finished in 15 minutes failed (at least ${JOB_FAILURE_MIN_JOBS} jobs): search its log group for "job finished" with "outcome":"failed" and read their error codes.`,
      new cloudwatch.MathExpression({
        label: 'failed share of finished jobs (%)',
        expression: `IF(FILL(failed, 0) + FILL(succeeded, 0) >= ${JOB_FAILURE_MIN_JOBS}, 100 * FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0)), 0)`,
        usingMetrics: { failed: finished('failed'), succeeded: finished('succeeded') },
        period: Duration.minutes(15),
      }),
      JOB_FAILURE_PERCENT,
      1,
    );

    // The per-account limits fail open when their DynamoDB counter does not answer (ADR 0026): requests
    // go through unlimited, and each API instance logs `rate_limit_unavailable` at most every 30 s. A
    // blip passes; 15 minutes of it (a missing table or grant never passes by itself) pages.
    const failingOpen = props.apiLogGroup
      ? onLines(
          props.apiLogGroup,
          'RateLimitFailingOpen',
          'Rate limits failing open',
          '$.event',
          'rate_limit_unavailable',
          'RateLimitUnavailable',
          'The per-account rate limits cannot reach their DynamoDB counter and let every request through (search the API log for "rate_limit_unavailable"; an error-level line means a missing table or grant).',
          3,
        )
      : undefined;
    this.rateLimitUnavailableFilter = failingOpen?.filter;
    this.rateLimitFailingOpenAlarm = failingOpen?.alarm;

    // Paid GPU instances that stay in service with nothing to do: an instance whose ECS agent never
    // registers (a bad AMI or driver) keeps its scale-in protection, and a capacity provider left in an
    // odd state after a failed deploy keeps instances too. The normal tail after a burst (the idle
    // minutes before scale-in, then about 15 minutes of managed scaling) is shorter than idleMinutes.
    // Per 5 minutes: the fewest instances in service, and the largest backlog; 1 when there were
    // instances throughout and no job at all.
    if (props.gpuFleet) {
      const fleet = props.gpuFleet;
      /** The group's metric `metricName`, its fewest in each 5 minutes. */
      const groupMinimum = (metricName: string) =>
        new cloudwatch.Metric({ namespace: 'AWS/AutoScaling', metricName, dimensionsMap: { AutoScalingGroupName: fleet.autoScalingGroupName }, period: fiveMinutes, statistic: 'Minimum' });
      const inService = groupMinimum('GroupInServiceInstances');
      this.gpuIdleInstancesAlarm = atLeast(
        'GpuIdleInstances',
        'GPU instances idle',
        `GPU instances have been in service for ${fleet.idleMinutes} minutes while the job queue was empty (nothing visible, nothing in flight): they are billed and do nothing. Check the Auto Scaling group's instances and the cluster's container instances.`,
        new cloudwatch.MathExpression({
          label: 'GPU instances in service with an empty backlog (1 = yes)',
          expression: 'IF((FILL(inService, 0) > 0) AND ((FILL(visible, 0) + FILL(inFlight, 0)) == 0), 1, 0)',
          usingMetrics: {
            inService,
            visible: fleet.queue.metricApproximateNumberOfMessagesVisible({ period: fiveMinutes, statistic: 'Maximum' }),
            inFlight: fleet.queue.metricApproximateNumberOfMessagesNotVisible({ period: fiveMinutes, statistic: 'Maximum' }),
          },
          period: fiveMinutes,
        }),
        1,
        Math.ceil(fleet.idleMinutes / 5),
      );

      // Nothing else pages on a fleet that is busy and healthy: a leaked key, a customer's loop or many
      // small accounts can keep every instance at work for days, and the first signal would be the
      // invoice (the monthly budget below lags by hours). The group's desired capacity, not its
      // instances in service: a fleet that cannot launch its last instances (the vCPU or Spot quota,
      // no capacity in the region) wants them all the same, and is as busy, or stuck; counting only
      // what is in service, a prod fleet held at 7 of 8 would cost $170 a day and never page. The
      // fewest desired in each 5 minutes at the maximum, in all but 2 of the window's periods (one
      // missing datapoint does not restart 3 hours).
      const desired = groupMinimum('GroupDesiredCapacity');
      this.gpuFleetAtMaxAlarm = atLeast(
        'GpuFleetAtMax',
        'GPU fleet at its maximum',
        `The GPU Auto Scaling group has wanted all ${fleet.maxInstances} of its instances (desired capacity at maxInstances, launched or not) for ${GPU_FLEET_AT_MAX_HOURS} hours: busy and healthy perhaps, or unable to launch them; either way it is where the money goes. Find who is submitting, and whether it is expected.`,
        desired,
        fleet.maxInstances,
        GPU_FLEET_AT_MAX_HOURS * 12,
      );
      (this.gpuFleetAtMaxAlarm.node.defaultChild as cloudwatch.CfnAlarm).datapointsToAlarm = GPU_FLEET_AT_MAX_HOURS * 12 - 2;
    }

    // A worker that dies without a JSON line pages nobody through the error-line alarm: an OOM kill at
    // the task's hard memory limit (exit 137), a native crash in the CUDA provider, an image that does
    // not pull or a task that cannot be placed on its instance (stop code TaskFailedToStart). ECS
    // restarts such a task with back-off, and until now only the DLQ or the queued-wait alarm said so,
    // many minutes later. Each such stop goes to the topic as one readable notice. A drained task exits
    // 0 (scale-in, a deploy, a Spot notice) and is not reported.
    if (props.workerService) {
      const { cluster, service } = props.workerService;
      const rule = (this.workerTaskStoppedRule = new events.Rule(this, 'WorkerTaskStopped', {
        description: `clipag ${props.stage}: a GPU worker task stopped with a non-zero exit code or failed to start`,
        eventPattern: {
          source: ['aws.ecs'],
          detailType: ['ECS Task State Change'],
          detail: {
            clusterArn: [cluster.clusterArn],
            group: [`service:${service.serviceName}`],
            lastStatus: ['STOPPED'],
            $or: [{ stopCode: ['TaskFailedToStart'] }, { containers: { exitCode: [{ 'anything-but': 0 }] } }],
          },
        },
      }));
      const field = (p: string) => events.EventField.fromPath(p);
      const message = events.RuleTargetInput.fromText(
        `clipag ${props.stage}: a GPU worker task stopped abnormally. Exit code: ${field('$.detail.containers[0].exitCode')}. ` +
          `Stop code: ${field('$.detail.stopCode')}. Reason: ${field('$.detail.stoppedReason')} ${field('$.detail.containers[0].reason')}. ` +
          `Task: ${field('$.detail.taskArn')}. ${runbookPointer('A worker task stopped abnormally')}`,
      );
      // A target of its own rather than events-targets' SnsTopic, which grants every EventBridge rule
      // (events.amazonaws.com, no condition) publish on the topic: this rule alone may.
      rule.addTarget({ bind: () => ({ arn: this.topic.topicArn, input: message }) });
      this.topic.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'WorkerTaskStoppedRulePublish',
          principals: [new iam.ServicePrincipal('events.amazonaws.com')],
          actions: ['sns:Publish'],
          resources: [this.topic.topicArn],
          conditions: { ArnEquals: { 'aws:SourceArn': rule.ruleArn } },
        }),
      );
    }

    for (const alarm of this.operatorAlarms) {
      alarm.addAlarmAction(action);
      alarm.addOkAction(action);
    }

    // The money itself, whatever spends it: a monthly AWS Budget on the account's whole cost (a filter on
    // the `stage` tag would read $0, and never notify, until someone activates it as a cost-allocation
    // tag, and would miss what carries no tag). Credits and refunds are left out, so promotional credits
    // do not hide a runaway month. AWS publishes its notifications to the topic itself, which is why
    // budgets.amazonaws.com must be allowed to (the topic's policy replaced SNS's default, above), and
    // the budget is created after that policy: AWS checks that it may publish when the budget is made.
    if (props.monthlyBudgetUsd !== undefined && props.monthlyBudgetUsd !== null) {
      const account = Stack.of(this).account;
      this.topic.addToResourcePolicy(
        new iam.PolicyStatement({
          sid: 'BudgetsPublish',
          principals: [new iam.ServicePrincipal('budgets.amazonaws.com')],
          actions: ['sns:Publish'],
          resources: [this.topic.topicArn],
          conditions: {
            StringEquals: { 'aws:SourceAccount': account },
            ArnLike: { 'aws:SourceArn': `arn:${Aws.PARTITION}:budgets::${account}:*` },
          },
        }),
      );
      const toTopic = [{ subscriptionType: 'SNS', address: this.topic.topicArn }];
      const notify = (notificationType: 'ACTUAL' | 'FORECASTED', threshold: number): budgets.CfnBudget.NotificationWithSubscribersProperty => ({
        notification: { notificationType, comparisonOperator: 'GREATER_THAN', threshold, thresholdType: 'PERCENTAGE' },
        subscribers: toTopic,
      });
      const budget = (this.monthlyBudget = new budgets.CfnBudget(this, 'MonthlyBudget', {
        budget: {
          budgetName: budgetName(props.stage, Aws.REGION),
          budgetType: 'COST',
          timeUnit: 'MONTHLY',
          budgetLimit: { amount: props.monthlyBudgetUsd, unit: 'USD' },
          costTypes: { includeCredit: false, includeRefund: false },
        },
        notificationsWithSubscribers: [...BUDGET_ACTUAL_PERCENTS.map((p) => notify('ACTUAL', p)), notify('FORECASTED', BUDGET_FORECAST_PERCENT)],
      }));
      budget.node.addDependency(this.topic);
    }
  }
}
