import { Aws, Duration } from 'aws-cdk-lib';
import type * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import type * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import type { StageConfig } from './config.ts';
import type { GpuQueueWorker } from './gpu-queue-worker.ts';
import { metricNamespace } from './metrics.ts';
import { BUDGET_ACTUAL_PERCENTS, BUDGET_FORECAST_PERCENT, BUDGET_RUNBOOK_ENTRY, JOB_FAILURE_MIN_JOBS, JOB_FAILURE_PERCENT, type QueueAlarms, type QueuedJobSweepRef } from './queue-alarms.ts';

/** The API's request handler and the log group its warn and error lines go to. */
export interface ApiHandlerRef {
  readonly fn: lambda.IFunction;
  readonly logGroup: logs.ILogGroup;
}

/**
 * The outcomes the worker's `job finished` line can carry (`JobOutcome` in gpu-worker/worker/worker.ts;
 * a test reads that type and compares). The dashboard graphs one line per value: a metric filter's
 * dimension publishes one metric per value it sees, so the set must stay this small.
 */
export const JOB_OUTCOMES = ['succeeded', 'failed', 'canceled', 'requeued', 'skipped', 'lease_lost'] as const;

/** The names of the API's per-account limits (`name` of each SlidingWindowRateLimiter in functions/app.ts). */
export const RATE_LIMIT_NAMES = ['requests', 'uploads', 'waits'] as const;

export interface ClipagDashboardProps {
  /** Stage name (the dashboard's name), thresholds and fleet shape for the titles, Container Insights on or off. */
  readonly config: StageConfig;
  readonly queue: sqs.IQueue;
  readonly deadLetterQueue: sqs.IQueue;
  /** The queued-job sweep: its invocations, errors and duration; its wait figure comes through `alarms`. */
  readonly queuedJobSweep: QueuedJobSweepRef;
  readonly cluster: ecs.ICluster;
  readonly capacityProvider: ecs.AsgCapacityProvider;
  /** The GPU instances: how many are in service (its group metrics). */
  readonly autoScalingGroup?: autoscaling.IAutoScalingGroup;
  /** The GPU service, its backlog expression (the scaling input) and its JSON log group. */
  readonly worker: GpuQueueWorker;
  /** The operator alarms: shown as states, and their metric filters graphed (not filtered twice). */
  readonly alarms: QueueAlarms;
  /** The public API's gateway metrics: requests, 4xx, 5xx, latency. */
  readonly httpApi?: apigw.IHttpApi;
  /** The API Lambda: errors, throttles, concurrency; its log group is linked from the notes. */
  readonly apiHandler?: ApiHandlerRef;
  /** The API stage's JSON access log (`status` per request): the 429s are counted from it. */
  readonly apiAccessLogGroup?: logs.ILogGroup;
}

/**
 * One CloudWatch dashboard per stage, `clipag-<stage>`: notes and alarm states on top, then a row each
 * for the API, the queue and its sweep, and the GPU fleet. It reads what the system already emits: AWS
 * metrics, the metric filters of the alarms, and seven metric filters of its own on JSON fields the
 * code really logs (each cited below), all in the stage's namespace `Clipag/<stage>`. No alarm, topic or paid feature is added here; Container
 * Insights stays as the stage config has it.
 */
export class ClipagDashboard extends Construct {
  readonly dashboard: cloudwatch.Dashboard;
  /** 429 answers in the API's access log: the stage throttle's and the app's (rate_limited, too_many_active_jobs). */
  readonly api429Filter: logs.MetricFilter | undefined;
  /** Images the output check withheld (ADR 0017), one per `output check matched` line with `withheld` true. */
  readonly imagesWithheldFilter: logs.MetricFilter;
  /** The worker's warm-up time, from its `warmed up` line. */
  readonly warmUpFilter: logs.MetricFilter;
  /** Worker seconds per image of each finished run (what the customer pays for), from its `job finished` line. */
  readonly secondsPerImageFilter: logs.MetricFilter;
  /** The API's refusals by a per-account limit (ADR 0026), one metric per limit, from its `rate_limit_refused` lines. */
  readonly rateLimitRefusalsFilter: logs.MetricFilter | undefined;
  /** How long each job waited to start, from the worker's `job started` line. */
  readonly queueWaitFilter: logs.MetricFilter;
  /** Failed jobs by their error code, one metric per code, from the worker's `job finished` lines. */
  readonly jobFailuresFilter: logs.MetricFilter;

  constructor(scope: Construct, id: string, props: ClipagDashboardProps) {
    super(scope, id);
    const { config, queue, deadLetterQueue, queuedJobSweep, worker, alarms } = props;
    const NAMESPACE = metricNamespace(config.stage);
    const minute = Duration.minutes(1);
    const fiveMinutes = Duration.minutes(5);

    // ---- metric filters (free; their metrics are custom metrics, see cdk/README.md) -----------------

    // The access log's format (api-stack.ts) writes `"status":"$context.status"`: a JSON string, so the
    // pattern compares strings. The gateway logs the requests its stage throttle refuses as well, so the
    // count holds both kinds of 429.
    this.api429Filter = props.apiAccessLogGroup
      ? new logs.MetricFilter(this, 'Api429Filter', {
          logGroup: props.apiAccessLogGroup,
          filterPattern: logs.FilterPattern.stringValue('$.status', '=', '429'),
          metricNamespace: NAMESPACE,
          metricName: 'Api429Answers',
          metricValue: '1',
        })
      : undefined;

    // The jobs finished by outcome are the alarms' filter (JobOutcomesFilter): its failure share pages.

    // gpu-worker/worker/worker.ts, the output check: log.info('output check matched', { job_id, owner, index,
    // withheld, rules }) for each image a rule matched, `withheld` a boolean. Customers are billed for
    // withheld images (README, usage), and a policy that withholds everything fails each job (the
    // failure alarm's content_policy); this graphs how many images the check keeps back.
    this.imagesWithheldFilter = new logs.MetricFilter(this, 'ImagesWithheldFilter', {
      logGroup: worker.logGroup,
      filterPattern: logs.FilterPattern.all(logs.FilterPattern.stringValue('$.msg', '=', 'output check matched'), logs.FilterPattern.booleanValue('$.withheld', true)),
      metricNamespace: NAMESPACE,
      metricName: 'WorkerImagesWithheld',
      metricValue: '1',
    });

    /** A number the worker logs on its `msg` line, published as it is; a line without it as a number publishes nothing. */
    const workerFigure = (id: string, msg: string, field: string, metricName: string, unit: cloudwatch.Unit) =>
      new logs.MetricFilter(this, id, {
        logGroup: worker.logGroup,
        filterPattern: logs.FilterPattern.all(logs.FilterPattern.stringValue('$.msg', '=', msg), logs.FilterPattern.numberValue(`$.${field}`, '>=', 0)),
        metricNamespace: NAMESPACE,
        metricName,
        metricValue: `$.${field}`,
        unit,
      });

    // gpu-worker/worker/worker.ts, the warm-up before the first poll (ADR 0020):
    // log.info('warmed up', { ms: clock.now() - t0 }). Every task start pays it before it takes a job, so
    // it is part of the wait of a job that scaled the fleet out. The number test keeps a line without
    // a numeric `ms` from publishing anything.
    this.warmUpFilter = workerFigure('WarmUpFilter', 'warmed up', 'ms', 'WorkerWarmUpTime', cloudwatch.Unit.MILLISECONDS);

    // The same `job finished` line of a run the worker finished itself carries `secondsPerImage` (its
    // worker seconds over the images it made, withheld ones included): the GPU time a customer pays per
    // image, which the MISSION says customers judge a PoC by. The number test keeps the other outcomes'
    // lines (no such field) from publishing.
    this.secondsPerImageFilter = workerFigure('SecondsPerImageFilter', 'job finished', 'secondsPerImage', 'WorkerSecondsPerImage', cloudwatch.Unit.SECONDS);

    // The worker's `job started` line carries `queuedSec`: how long that job waited to start, from its
    // last send or from a worker putting it back (as the sweep counts oldestQueuedSec). The sweep's
    // figure is the longest wait of the jobs still queued, sampled once a sweep; this one is every
    // job's, so its percentiles say what customers typically wait.
    this.queueWaitFilter = workerFigure('QueueWaitFilter', 'job started', 'queuedSec', 'WorkerQueueWaitSeconds', cloudwatch.Unit.SECONDS);

    // The `job finished` line of a failed job carries its code at the top level, `error_code`: the
    // engine's and the worker's own codes (invalid_model, numerical_error, timeout, content_policy,
    // retries_exhausted, internal_error…), a small set fixed by the code, never free text, so it can
    // be a dimension. What the failure share alarm pages on, split by why.
    this.jobFailuresFilter = new logs.MetricFilter(this, 'JobFailuresFilter', {
      logGroup: worker.logGroup,
      filterPattern: logs.FilterPattern.all(logs.FilterPattern.stringValue('$.msg', '=', 'job finished'), logs.FilterPattern.stringValue('$.outcome', '=', 'failed')),
      metricNamespace: NAMESPACE,
      metricName: 'WorkerJobFailures',
      metricValue: '1',
      dimensions: { ErrorCode: '$.error_code' },
    });

    // functions/middleware/rate-limit.ts, RateGate.decide: one `rate_limit_refused` line (level warn, through
    // jsonLineLog) per refusal the counter decided, i.e. once per account and Retry-After on an instance,
    // with `limit_name` one of the app's three limits (requests, uploads, waits): a small, fixed set, so a
    // dimension. It counts accounts being held back, not refused requests (the access log's 429s do).
    this.rateLimitRefusalsFilter = props.apiHandler
      ? new logs.MetricFilter(this, 'RateLimitRefusalsFilter', {
          logGroup: props.apiHandler.logGroup,
          filterPattern: logs.FilterPattern.stringValue('$.event', '=', 'rate_limit_refused'),
          metricNamespace: NAMESPACE,
          metricName: 'RateLimitRefusals',
          metricValue: '1',
          dimensions: { Limit: '$.limit_name' },
        })
      : undefined;

    // ---- widgets --------------------------------------------------------------------------------------

    const graph = (title: string, left: cloudwatch.IMetric[], more: Partial<cloudwatch.GraphWidgetProps> = {}) =>
      new cloudwatch.GraphWidget({ title, left, width: 8, height: 6, ...more });
    const header = (markdown: string) => new cloudwatch.TextWidget({ markdown, width: 24, height: 1 });
    const operatorAlarms = alarms.operatorAlarms;

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      // Dashboard names are unique per account and region: one per stage.
      dashboardName: `clipag-${config.stage}`,
      defaultInterval: Duration.hours(6),
    });

    this.dashboard.addWidgets(new cloudwatch.TextWidget({ markdown: this.notes(props), width: 24, height: 12 }));
    this.dashboard.addWidgets(
      new cloudwatch.AlarmStatusWidget({
        title: 'Alarms (state now; each notifies the SNS topic of the worker stack on ALARM and on OK)',
        alarms: operatorAlarms,
        width: 24,
        height: 4,
      }),
    );

    // API row.
    const api: cloudwatch.IWidget[] = [];
    if (props.httpApi) {
      const httpApi = props.httpApi;
      api.push(
        graph('API requests, 4xx and 5xx answers (count per minute, at the gateway)', [
          httpApi.metricCount({ period: minute, statistic: 'Sum', label: 'requests' }),
          httpApi.metricClientError({ period: minute, statistic: 'Sum', label: '4xx (429s included)' }),
          httpApi.metricServerError({ period: minute, statistic: 'Sum', label: '5xx' }),
        ], { width: 6 }),
        graph('API latency p50 / p90 / p99 (ms, request to answer at the gateway; Prefer: wait holds requests up to its limit)', [
          httpApi.metricLatency({ period: minute, statistic: 'p50', label: 'p50' }),
          httpApi.metricLatency({ period: minute, statistic: 'p90', label: 'p90' }),
          httpApi.metricLatency({ period: minute, statistic: 'p99', label: 'p99' }),
        ], { width: 6, leftYAxis: { label: 'ms', showUnits: false, min: 0 } }),
      );
    }
    if (this.api429Filter) {
      api.push(
        graph('API 429 answers (count per minute; stage throttle + app rate_limited + too_many_active_jobs, from the access log)', [
          this.api429Filter.metric({ period: minute, statistic: 'Sum', label: '429 answers' }),
        ], { width: 6 }),
      );
    }
    if (props.apiHandler) {
      const fn = props.apiHandler.fn;
      api.push(
        graph('API Lambda: errors and throttles (count per minute, left), concurrent executions (max, right)', [
          fn.metricErrors({ period: minute, statistic: 'Sum', label: 'errors' }),
          fn.metricThrottles({ period: minute, statistic: 'Sum', label: 'throttles' }),
        ], { width: 6, right: [fn.metric('ConcurrentExecutions', { period: minute, statistic: 'Maximum', label: 'concurrent executions' })] }),
      );
    }
    if (this.rateLimitRefusalsFilter) {
      const refusals = this.rateLimitRefusalsFilter;
      api.push(
        graph('Per-account limits (count per 5 min): accounts held back, by limit, and counter failures (requests then let through unlimited)', [
          ...RATE_LIMIT_NAMES.map((limit) => refusals.metric({ period: fiveMinutes, statistic: 'Sum', dimensionsMap: { Limit: limit }, label: `held back: ${limit}` })),
          ...(alarms.rateLimitUnavailableFilter ? [alarms.rateLimitUnavailableFilter.metric({ period: fiveMinutes, statistic: 'Sum', label: 'counter unavailable (fail open)' })] : []),
        ], { width: 6 }),
      );
    }
    if (api.length > 0) this.dashboard.addWidgets(header('### API'), ...api);

    // Queue and jobs row.
    const dlqAnnotation = alarms.dlqDepthAlarm.toAnnotation();
    const waitAnnotation = alarms.oldestQueuedJobAlarm.toAnnotation();
    this.dashboard.addWidgets(
      header('### Queue and jobs'),
      graph('Job queue: visible and in-flight messages (count, max per minute)', [
        queue.metricApproximateNumberOfMessagesVisible({ period: minute, statistic: 'Maximum', label: 'visible (waiting)' }),
        queue.metricApproximateNumberOfMessagesNotVisible({ period: minute, statistic: 'Maximum', label: 'in flight (running or held)' }),
      ]),
      graph('Job queue: age of the oldest message (seconds; in-flight messages count, so a long run shows here too)', [
        queue.metricApproximateAgeOfOldestMessage({ period: minute, statistic: 'Maximum', label: 'oldest message age' }),
      ], { leftYAxis: { label: 'seconds', showUnits: false, min: 0 } }),
      graph(`Queued jobs: longest wait to start (seconds, the sweep's oldestQueuedSec; alarm at ${config.alarmOldestQueuedJobSeconds})`, [
        alarms.oldestQueuedJobFilter.metric({ period: fiveMinutes, statistic: 'Maximum', label: 'longest queued wait' }),
      ], { leftAnnotations: [waitAnnotation], leftYAxis: { label: 'seconds', showUnits: false, min: 0 } }),
      graph('Jobs: wait to start, p50 / p90 per 15 min (seconds; each job\'s queuedSec on the worker\'s "job started" line)', [
        this.queueWaitFilter.metric({ period: Duration.minutes(15), statistic: 'p50', label: 'p50' }),
        this.queueWaitFilter.metric({ period: Duration.minutes(15), statistic: 'p90', label: 'p90' }),
      ], { leftYAxis: { label: 'seconds', showUnits: false, min: 0 } }),
      graph(`Dead-letter queue depth (messages; alarm at ${config.alarmDlqDepth}, clipag dlq list)`, [
        deadLetterQueue.metricApproximateNumberOfMessagesVisible({ period: minute, statistic: 'Maximum', label: 'dead letters' }),
      ], { leftAnnotations: [dlqAnnotation], leftYAxis: { min: 0 } }),
      graph(`Queued-job sweep: runs, failed runs and dropped events (count per 5 min; one run every ${config.queuedJobSweepMinutes} min)`, [
        queuedJobSweep.fn.metricInvocations({ period: fiveMinutes, statistic: 'Sum', label: 'runs' }),
        queuedJobSweep.fn.metricErrors({ period: fiveMinutes, statistic: 'Sum', label: 'failed runs' }),
        queuedJobSweep.fn.metric('AsyncEventsDropped', { period: fiveMinutes, statistic: 'Sum', label: 'dropped events (never ran)' }),
      ]),
      graph('Queued-job sweep: duration (ms, longest run per 5 min)', [
        queuedJobSweep.fn.metricDuration({ period: fiveMinutes, statistic: 'Maximum', label: 'longest run' }),
      ], { leftYAxis: { label: 'ms', showUnits: false, min: 0 } }),
    );

    // Worker fleet row.
    const serviceDimensions = { ClusterName: props.cluster.clusterName, ServiceName: worker.service.serviceName };
    const insights = (metricName: string, label: string) =>
      new cloudwatch.Metric({ namespace: 'ECS/ContainerInsights', metricName, dimensionsMap: serviceDimensions, period: minute, statistic: 'Maximum', label });
    const tasks = config.containerInsights
      ? graph('GPU worker tasks: running, desired and pending (count; Container Insights)', [
          insights('RunningTaskCount', 'running'),
          insights('DesiredTaskCount', 'desired'),
          insights('PendingTaskCount', 'pending (waiting for an instance)'),
        ])
      : // Without Container Insights ECS publishes no task count; turning it on is a paid choice of the
        // stage config, not the dashboard's.
        new cloudwatch.TextWidget({
          width: 8,
          height: 6,
          markdown: [
            '**GPU worker tasks: running / desired (count)**',
            '',
            `Not published in this stage: task counts come from Container Insights, off here (\`containerInsights\` in cdk/lib/config.ts; a paid feature).`,
            '',
            'The desired count follows the backlog beside this note; the capacity-provider reservation says whether instances are being added.',
            `\`aws ecs describe-services --cluster ${props.cluster.clusterName} --services ${worker.service.serviceName}\` shows both counts.`,
          ].join('\n'),
        });
    this.dashboard.addWidgets(
      header('### GPU worker fleet'),
      tasks,
      graph(`Backlog that sets the task count (jobs: visible + in flight, max per minute; one task per ${config.jobsPerTask} jobs, at most ${config.maxInstances})`, [
        worker.backlog.with({ label: 'backlog' }),
      ], { leftYAxis: { min: 0 } }),
      graph(`GPU capacity provider reservation (%; above 100: instances are being added, below: some stand idle)${props.autoScalingGroup ? ', and GPU instances in service (count, right)' : ''}`, [
        new cloudwatch.Metric({
          namespace: 'AWS/ECS/ManagedScaling',
          metricName: 'CapacityProviderReservation',
          dimensionsMap: { CapacityProviderName: props.capacityProvider.capacityProviderName, ClusterName: props.cluster.clusterName },
          period: minute,
          statistic: 'Maximum',
          label: 'reservation',
        }),
      ], {
        leftYAxis: { label: '%', showUnits: false, min: 0 },
        ...(props.autoScalingGroup
          ? {
              right: [
                new cloudwatch.Metric({
                  namespace: 'AWS/AutoScaling',
                  metricName: 'GroupInServiceInstances',
                  dimensionsMap: { AutoScalingGroupName: props.autoScalingGroup.autoScalingGroupName },
                  period: minute,
                  statistic: 'Maximum',
                  label: 'instances in service',
                }),
              ],
              rightYAxis: { min: 0 },
            }
          : {}),
      }),
      // The API's and the sweep's error lines are not graphed: their alarm's state is shown above, and
      // two more lines would take the dashboard past the 50 metrics of CloudWatch's free dashboards.
      graph('GPU worker error lines (count per 5 min; "level":"error", the alarm fires at 1)', [
        alarms.workerErrorLinesFilter.metric({ period: fiveMinutes, statistic: 'Sum', label: 'error lines' }),
      ]),
      graph('Jobs finished by outcome (count per 5 min, the worker\'s "job finished" line; only succeeded, failed and canceled end a job)', JOB_OUTCOMES.map((outcome) =>
        alarms.jobOutcomesFilter.metric({ period: fiveMinutes, statistic: 'Sum', dimensionsMap: { Outcome: outcome }, label: outcome }),
      ), { stacked: true }),
      graph(`Failed share of finished jobs (%, per 15 min; the alarm pages at ${JOB_FAILURE_PERCENT} % of ${JOB_FAILURE_MIN_JOBS} or more jobs), and images the output check withheld (count per 15 min, right)`, [
        alarms.jobFailureRatioAlarm.metric,
      ], {
        leftAnnotations: [alarms.jobFailureRatioAlarm.toAnnotation()],
        leftYAxis: { label: '%', showUnits: false, min: 0, max: 100 },
        right: [this.imagesWithheldFilter.metric({ period: Duration.minutes(15), statistic: 'Sum', label: 'images withheld' })],
      }),
      // A search, not one line per code: the codes are fixed by the code but many, and only those seen
      // have data. Its namespace is the stage's, so dev's failures never show on prod's dashboard.
      graph('Failed jobs by error code (count per 15 min; the worker\'s "job finished" lines with "outcome":"failed", by error_code)', [
        new cloudwatch.SearchExpression({ expression: `SEARCH('{${NAMESPACE},ErrorCode} MetricName="WorkerJobFailures"', 'Sum', 900)`, period: Duration.minutes(15) }),
      ], { stacked: true }),
      graph(`GPU time per image, p50 / p90 per hour (seconds; × the stage's $${config.workerHourlyUsd}/h is an image's compute cost)`, [
        this.secondsPerImageFilter.metric({ period: Duration.hours(1), statistic: 'p50', label: 'p50' }),
        this.secondsPerImageFilter.metric({ period: Duration.hours(1), statistic: 'p90', label: 'p90' }),
      ], { leftYAxis: { label: 's', showUnits: false, min: 0 } }),
      graph('GPU worker warm-up before its first job (ms, per task start: max and average per 5 min)', [
        this.warmUpFilter.metric({ period: fiveMinutes, statistic: 'Maximum', label: 'max' }),
        this.warmUpFilter.metric({ period: fiveMinutes, statistic: 'Average', label: 'average' }),
      ], { leftYAxis: { label: 'ms', showUnits: false, min: 0 } }),
    );
  }

  /** The text at the top: where the runbook is, what each alarm means, where the logs are. */
  private notes(props: ClipagDashboardProps): string {
    const { config, alarms, worker } = props;
    // Thresholds and windows as the alarms have them, so the notes cannot drift from queue-alarms.ts.
    const cfn = (alarm: cloudwatch.Alarm) => alarm.node.defaultChild as cloudwatch.CfnAlarm;
    const thresholdOf = (alarm: cloudwatch.Alarm) => cfn(alarm).threshold;
    // A math alarm has no period of its own: its queries' (all alike here) are the period.
    const periodMinutes = (alarm: cloudwatch.Alarm) => {
      const queries = (cfn(alarm).metrics ?? []) as cloudwatch.CfnAlarm.MetricDataQueryProperty[];
      const query = queries.find((q) => q.period !== undefined || (q.metricStat as cloudwatch.CfnAlarm.MetricStatProperty | undefined)?.period !== undefined);
      const seconds = cfn(alarm).period ?? query?.period ?? (query?.metricStat as cloudwatch.CfnAlarm.MetricStatProperty | undefined)?.period ?? 60;
      return (seconds as number) / 60;
    };
    const periodsOf = (alarm: cloudwatch.Alarm) => cfn(alarm).evaluationPeriods ?? 1;
    const windowMinutes = (alarm: cloudwatch.Alarm) => periodsOf(alarm) * periodMinutes(alarm);
    const logLink = (name: string) => `https://console.aws.amazon.com/cloudwatch/home?region=${Aws.REGION}#logsV2:log-groups/log-group/${name}`;
    const logLinks = [
      `[GPU worker](${logLink(worker.logGroup.logGroupName)})`,
      ...(props.apiHandler ? [`[API handler](${logLink(props.apiHandler.logGroup.logGroupName)})`] : []),
      ...(props.apiAccessLogGroup ? [`[API access log](${logLink(props.apiAccessLogGroup.logGroupName)})`] : []),
      `[queued-job sweep](${logLink(props.queuedJobSweep.logGroup.logGroupName)})`,
    ];
    // Each line ends with the runbook entry (cdk/README.md, "On call") that says what to look at first.
    const see = (entry: string) => ` → runbook: *${entry}*.`;
    const alarmLines = [
      `- **DLQ depth ≥ ${thresholdOf(alarms.dlqDepthAlarm)}**: a job failed all its deliveries (the worker has marked it failed), or a message did not parse. Stays in ALARM while anything is in the DLQ: triage with \`clipag dlq list\`, then \`clipag dlq purge --yes\` re-arms it.` + see('DLQ depth'),
      `- **Oldest queued job ≥ ${thresholdOf(alarms.oldestQueuedJobAlarm)} s**: a job has waited that long to start (the sweep's figure; running jobs do not count): the fleet is not keeping up or cannot start (GPU quota, Spot, image pull).` + see('Oldest queued job'),
      `- **Queued-job sweep failing for ${windowMinutes(alarms.queuedJobSweepAlarm)} min**: lost messages are not re-sent, owed webhooks not retried, and the queued wait is not measured.` + see('Queued-job sweep failing, not running, or its events dropped'),
      `- **Queued-job sweep not running for ${windowMinutes(alarms.queuedJobSweepNotRunningAlarm)} min**: no invocation at all (throttled, events dropped, schedule disabled): the same losses, and the oldest-queued-job alarm has no data.` + see('Queued-job sweep failing, not running, or its events dropped'),
      `- **Queued-job sweep event dropped**: Lambda dropped a scheduled sweep that waited a whole period (\`AsyncEventsDropped\`; most likely the account's concurrency is taken).` + see('Queued-job sweep failing, not running, or its events dropped'),
      ...(alarms.api5xxAlarm ? [`- **API 5xx ≥ ${thresholdOf(alarms.api5xxAlarm)} % of requests per ${periodMinutes(alarms.api5xxAlarm)} min, ${periodsOf(alarms.api5xxAlarm)} periods in a row**: customers get server errors (the app's 500s, or the gateway's for a failing or timing-out Lambda).` + see('API 5xx share')] : []),
      ...(alarms.apiThrottlesAlarm ? [`- **API Lambda throttled, ${periodsOf(alarms.apiThrottlesAlarm)} periods of ${periodMinutes(alarms.apiThrottlesAlarm)} min in a row**: no concurrency left for the API (\`Prefer: wait\` holds take it).` + see('API Lambda throttled')] : []),
      ...(alarms.rateLimitFailingOpenAlarm ? [`- **Rate limits failing open for ${windowMinutes(alarms.rateLimitFailingOpenAlarm)} min**: the API cannot reach its DynamoDB counter and lets every request through unlimited; an error-level \`rate_limit_unavailable\` line in the API log means a missing table or grant.` + see('Rate limits failing open')] : []),
      '- **GPU worker error line**: the worker logged something an operator must act on; search its log group for `"level":"error"` (`worker unhealthy`, `message dead-lettered`, `usage not recorded`, `job attempt failed` with an internal_error…).' + see('GPU worker error line'),
      '- **API or queued-job sweep error line**: the API handler or the sweep logged something an operator must act on (a content policy that does not parse, a refused job that could not be settled, a lone 500: a bug; a 503\'s line is the 5xx share\'s); search both log groups for `"level":"error"`.' + see('API or sweep error line'),
      `- **Job failure share ≥ ${thresholdOf(alarms.jobFailureRatioAlarm)} % in ${windowMinutes(alarms.jobFailureRatioAlarm)} min** (of ${JOB_FAILURE_MIN_JOBS} or more finished jobs): a default model that is not in the store, a model that fails every run, a policy that withholds everything.` + see('Job failure share'),
      ...(alarms.gpuIdleInstancesAlarm ? [`- **GPU instances idle for ${windowMinutes(alarms.gpuIdleInstancesAlarm)} min**: instances in service while the queue was empty: billed for nothing.` + see('GPU instances idle')] : []),
      ...(alarms.gpuFleetAtMaxAlarm ? [`- **GPU fleet at its maximum (${thresholdOf(alarms.gpuFleetAtMaxAlarm)} instances) for ${windowMinutes(alarms.gpuFleetAtMaxAlarm)} min**: wanted (launched or not): busy and healthy perhaps, or short of capacity, and where the money goes; who is submitting, and is it expected?` + see('GPU fleet at its maximum')] : []),
      ...(alarms.monthlyBudget ? [`- Not an alarm, a notice on the same topic from AWS Budgets: **the account's AWS cost this month** over ${BUDGET_ACTUAL_PERCENTS.join(' % or ')} % of $${config.monthlyBudgetUsd}, or forecast over ${BUDGET_FORECAST_PERCENT} % (the whole account's cost, credits left out; updated a few times a day).` + see(BUDGET_RUNBOOK_ENTRY)] : []),
      ...(alarms.workerTaskStoppedRule ? ['- Not an alarm, a notice on the same topic: **a worker task stopped abnormally** (non-zero exit code, or it never started).' + see('A worker task stopped abnormally')] : []),
    ];
    return [
      `# clipag ${config.stage}`,
      'Runbook: **cdk/README.md, section "On call"** (dead letters, unhealthy workers, the operator CLI). Logs: ' + logLinks.join(' · ') + '.',
      '',
      'Alarms (shown below; all notify the SNS topic of the worker stack):',
      ...alarmLines,
      '',
      '429s: the stage throttle and the app\'s own (`rate_limited`, `too_many_active_jobs`) are counted together. Not here: GPU utilization (no agent publishes it).',
    ].join('\n');
  }
}
