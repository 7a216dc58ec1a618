import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import { AccessLogFormat } from 'aws-cdk-lib/aws-apigateway';
import * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { BUCKET_PREFIXES, processEnv, type StageConfig } from './config.ts';
import { grantListBucket, grantPrefix, grantRateCounting, grantSend, grantWebhookSecrets } from './grants.ts';
import { LAMBDA_ENTRY, LOCKFILE, REPO_ROOT, SWEEP_LAMBDA_ENTRY } from './paths.ts';

export interface ApiStackProps extends StackProps {
  readonly config: StageConfig;
  readonly bucket: s3.IBucket;
  readonly queue: sqs.IQueue;
  /** The per-account request counters of the rate limit (the Stateful stack's table); the handler only. */
  readonly rateCounters: dynamodb.ITableV2;
  /** Handler source; default functions/lambda.ts. Tests point it at a stub (bundling is skipped there). */
  readonly entry?: string;
  /** The queued-job sweep's source; default functions/sweep-lambda.ts. */
  readonly sweepEntry?: string;
}

/** How both functions are built: one ESM bundle for Node 22 on Graviton, the AWS SDK inside it. */
export const BUNDLING: nodejs.BundlingOptions = {
  format: nodejs.OutputFormat.ESM,
  target: 'node22',
  mainFields: ['module', 'main'],
  minify: true,
  // Stack traces map to the sources (NODE_OPTIONS=--enable-source-maps) by file, line and column; the map
  // leaves the sources' text out (1.75 MB instead of 5.07), which Node parsed at every cold start: about
  // 100 ms of the handler's init, measured on the bundle (the latency review, finding 3a).
  sourceMap: true,
  sourcesContent: false,
  // Bundle the AWS SDK too, so the Lambda runs the exact SDK version the tests ran.
  externalModules: [],
  // Some CJS dependencies call `require` at runtime; ESM output has none without this.
  banner: "import { createRequire as __clipagCreateRequire } from 'node:module'; const require = __clipagCreateRequire(import.meta.url);",
};

/**
 * The alias of both functions that their callers invoke (the HTTP API's integration, the sweep's
 * schedule), pointing at the version each deploy publishes. Earlier versions are kept, so an operator
 * rolls the API back in seconds by pointing the alias at one (`aws lambda update-alias`), without a
 * redeploy of old code, and without touching the worker. A version holds its code and its
 * configuration (environment, memory, timeout), not its role: grants are always the current deploy's.
 */
export const LIVE_ALIAS = 'live';

/** Earlier versions stay (a rollback needs them); CDK's default deletes each once its successor is published. */
const KEEP_VERSIONS: lambda.VersionOptions = { removalPolicy: RemovalPolicy.RETAIN };

/**
 * The public API: one Lambda running the Hono app behind an HTTP API. HTTP API rather than
 * REST API: about a third of the price per request, lower latency, and stage-level
 * throttling is all the product needs (per-account limits live in the app, the request counts in
 * the Stateful stack's DynamoDB table). Beside it, on a schedule, the queued-job sweep: a job whose
 * message was lost between its create and its send gets it again (ADR 0012).
 */
export class ApiStack extends Stack {
  readonly handler: nodejs.NodejsFunction;
  readonly sweeper: nodejs.NodejsFunction;
  /** What the HTTP API invokes: the handler's LIVE_ALIAS. */
  readonly handlerAlias: lambda.Alias;
  /** What the sweep's schedule invokes: the sweep's LIVE_ALIAS. */
  readonly sweeperAlias: lambda.Alias;
  /** The sweep's log group: each sweep logs one `queued-job sweep` line with its figures (the alarms read `oldestQueuedSec`). */
  readonly sweeperLogGroup: logs.LogGroup;
  /** The handler's log group: the app's lines, one per request and its warnings and errors (the dashboard links to it). */
  readonly handlerLogGroup: logs.LogGroup;
  readonly httpApi: apigw.HttpApi;
  /** The stage's JSON access log, one line per request with its `status` (the dashboard counts the 429s in it). */
  readonly accessLogGroup: logs.LogGroup;

  constructor(scope: Construct, id: string, props: ApiStackProps) {
    super(scope, id, props);
    const { config, bucket, queue, rateCounters } = props;

    const logGroup = (this.handlerLogGroup = new logs.LogGroup(this, 'HandlerLogs', {
      retention: config.logRetentionDays as logs.RetentionDays,
    }));

    // Each function's environment from the stage's entry (processEnv, which stageConfig's validation parses).
    const shared = { bucketName: bucket.bucketName, queueUrl: queue.queueUrl };

    this.handler = new nodejs.NodejsFunction(this, 'Handler', {
      entry: props.entry ?? LAMBDA_ENTRY,
      handler: 'handler',
      projectRoot: REPO_ROOT,
      depsLockFilePath: LOCKFILE,
      runtime: lambda.Runtime.NODEJS_22_X,
      // Pure JS bundle, no native modules: Graviton is cheaper per ms.
      architecture: lambda.Architecture.ARM_64,
      memorySize: config.lambdaMemoryMiB,
      timeout: Duration.seconds(config.lambdaTimeoutSeconds),
      logGroup,
      tracing: lambda.Tracing.DISABLED,
      bundling: BUNDLING,
      currentVersionOptions: KEEP_VERSIONS,
      // The rate limit is the handler's alone: the sweep serves no requests and may not touch the table.
      environment: processEnv(config, 'api', { ...shared, rateTableName: rateCounters.tableName }),
    });
    this.handlerAlias = new lambda.Alias(this, 'HandlerLive', { aliasName: LIVE_ALIAS, version: this.handler.currentVersion });

    // Least privilege, per prefix. The API creates and updates job records (cancel,
    // idempotency), marks a new job's message pending until it is sent, reads API keys, signs PUT
    // URLs for uploads and GET URLs for outputs. It deletes only its own pending markers, the outputs
    // of a generation its owner deletes, an upload its owner deletes, and the account's own settings
    // (spend limit, webhook secret); it never writes keys (the `clipag keys` CLI does that).
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.jobs, ['read', 'write']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.pending, ['write', 'delete']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.keys, ['read']);
    // Delete: DELETE /v1/uploads/{id} removes an init image at once (an erasure need not wait for the lifecycle).
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.uploads, ['read', 'write', 'delete']);
    // Delete: DELETE /v1/generations/{id} removes the caller's images and frames.
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.outputs, ['read', 'delete']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.models, ['read']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.stats, ['read']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.usage, ['read']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.spendLimits, ['read', 'write', 'delete']);
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.config, ['read']);
    // The workers' presence, which a queued generation's view tells of (ADR 0040).
    grantPrefix(this.handler, bucket, BUCKET_PREFIXES.workers, ['read']);
    // POST, GET and DELETE /v1/webhook-secret (ADR 0028).
    grantWebhookSecrets(this.handler, bucket, 'manage');
    grantListBucket(this.handler, bucket);
    grantSend(this.handler, queue);
    grantRateCounting(this.handler, rateCounters);

    const sweeperLogs = (this.sweeperLogGroup = new logs.LogGroup(this, 'QueuedJobSweeperLogs', {
      retention: config.logRetentionDays as logs.RetentionDays,
    }));
    this.sweeper = new nodejs.NodejsFunction(this, 'QueuedJobSweeper', {
      description: 'Re-sends lost queue messages and retries completion webhooks',
      entry: props.sweepEntry ?? SWEEP_LAMBDA_ENTRY,
      handler: 'handler',
      projectRoot: REPO_ROOT,
      depsLockFilePath: LOCKFILE,
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: lambda.Architecture.ARM_64,
      memorySize: 256,
      // A sweep reads one record per pending job; a backlog of thousands takes tens of seconds.
      timeout: Duration.minutes(2),
      // EventBridge invokes asynchronously, and Lambda would retry a failed sweep twice on its own:
      // the next scheduled sweep is the retry. For the same reason an invocation that waited (the
      // account's concurrency taken by API calls held by Prefer: wait) is dropped once the next is due,
      // not kept for up to 6 hours.
      retryAttempts: 0,
      maxEventAge: Duration.minutes(config.queuedJobSweepMinutes),
      logGroup: sweeperLogs,
      bundling: BUNDLING,
      currentVersionOptions: KEEP_VERSIONS,
      environment: processEnv(config, 'sweep', shared),
    });
    // Lambda keeps the settings of asynchronous invocation per qualifier: the function's own above hold
    // only for an unqualified invoke, so the alias the schedule invokes states them again.
    this.sweeperAlias = new lambda.Alias(this, 'QueuedJobSweeperLive', {
      aliasName: LIVE_ALIAS,
      version: this.sweeper.currentVersion,
      retryAttempts: 0,
      maxEventAge: Duration.minutes(config.queuedJobSweepMinutes),
    });
    // The sweep reads and updates job records (the re-send stamp, webhook attempts), drops markers
    // whose work is done, sends messages, and signs output links for the webhooks it retries. It
    // writes a marker back when the job was re-queued between its read and the delete (ADR 0012).
    // Delete on outputs/: a job it expires loses the images an earlier attempt stored (ADR 0005).
    grantPrefix(this.sweeper, bucket, BUCKET_PREFIXES.jobs, ['read', 'write']);
    grantPrefix(this.sweeper, bucket, BUCKET_PREFIXES.pending, ['write', 'delete']);
    grantPrefix(this.sweeper, bucket, BUCKET_PREFIXES.outputs, ['read', 'delete']);
    // The record retention (ADR 0037), when the stage sets one: its progress document. Deleting a
    // generation writes jobs/ (its record and Idempotency-Key claim) and removes outputs/, granted above.
    if (config.recordRetentionDays !== null) grantPrefix(this.sweeper, bucket, BUCKET_PREFIXES.retention, ['read', 'write']);
    // The webhooks it retries are signed with their account's secret too (ADR 0028).
    grantWebhookSecrets(this.sweeper, bucket, 'sign');
    grantListBucket(this.sweeper, bucket);
    grantSend(this.sweeper, queue);
    new events.Rule(this, 'QueuedJobSweepSchedule', {
      description: 'Runs the queued-job sweep',
      schedule: events.Schedule.rate(Duration.minutes(config.queuedJobSweepMinutes)),
      // No retries: the next scheduled sweep is the retry, and sweeps are idempotent.
      targets: [new targets.LambdaFunction(this.sweeperAlias, { retryAttempts: 0 })],
    });

    this.httpApi = new apigw.HttpApi(this, 'HttpApi', {
      description: `clipag public API (${config.stage})`,
      defaultIntegration: new HttpLambdaIntegration('HandlerIntegration', this.handlerAlias),
      // The stage is declared below so throttling and access logs can be set on it.
      createDefaultStage: false,
    });

    const accessLogs = (this.accessLogGroup = new logs.LogGroup(this, 'AccessLogs', {
      retention: config.logRetentionDays as logs.RetentionDays,
    }));
    new apigw.HttpStage(this, 'DefaultStage', {
      httpApi: this.httpApi,
      stageName: '$default',
      autoDeploy: true,
      throttle: { rateLimit: config.apiThrottleRatePerSecond, burstLimit: config.apiThrottleBurst },
      accessLogSettings: {
        destination: new apigw.LogGroupLogDestination(accessLogs),
        // JSON with HTTP-API context variables. $context.requestId is the id the gateway gives the
        // request and passes to the Lambda as requestContext.requestId; the app uses it as its own
        // request id (X-Request-Id, error.request_id, its log lines), so an app error joins to this line
        // (caller IP, status). Requests the gateway answers itself never reach the app.
        format: AccessLogFormat.custom(
          JSON.stringify({
            requestId: '$context.requestId',
            ip: '$context.identity.sourceIp',
            time: '$context.requestTime',
            method: '$context.httpMethod',
            path: '$context.path',
            status: '$context.status',
            bytes: '$context.responseLength',
            latencyMs: '$context.responseLatency',
            integrationError: '$context.integrationErrorMessage',
            // The Lambda invocation's own request id: what its REPORT and "Task timed out" lines carry,
            // so a request the function never answered joins to them.
            lambdaRequestId: '$context.awsEndpointRequestId',
          }),
        ),
      },
    });

    new CfnOutput(this, 'ApiUrl', { value: this.httpApi.apiEndpoint });
    // What the runbook's commands take (cdk/README.md, "On call").
    new CfnOutput(this, 'HandlerLogGroupName', { value: logGroup.logGroupName, description: "The API handler's warn and error lines" });
    new CfnOutput(this, 'AccessLogGroupName', { value: accessLogs.logGroupName, description: "The API stage's access log (status, integrationError per request)" });
    new CfnOutput(this, 'HandlerFunctionName', { value: this.handler.functionName, description: 'The API Lambda' });
    new CfnOutput(this, 'QueuedJobSweepFunctionName', { value: this.sweeper.functionName, description: 'The queued-job sweep Lambda' });
    new CfnOutput(this, 'QueuedJobSweepLogGroupName', { value: sweeperLogs.logGroupName, description: "The queued-job sweep's lines" });
    new CfnOutput(this, 'LiveAliasName', { value: LIVE_ALIAS, description: 'The alias of both functions the HTTP API and the sweep schedule invoke (roll back: aws lambda update-alias --function-version)' });
  }
}
