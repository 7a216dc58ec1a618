import { existsSync, readFileSync, readdirSync } from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { Token } from 'aws-cdk-lib';
import { ContainerImage } from 'aws-cdk-lib/aws-ecs';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Client } from '@aws-sdk/client-s3';
import { S3BlobStore } from '../../shared/adapters/aws/s3-blobstore.ts';
import { BUNDLING, LIVE_ALIAS } from '../../cdk/lib/api-stack.ts';
import { buildClipag, type ClipagStacks } from '../../cdk/lib/clipag.ts';
import { BUCKET_PREFIXES, ENV, stageConfig, type StageConfig } from '../../cdk/lib/config.ts';
import { backlogSteps } from '../../cdk/lib/gpu-queue-worker.ts';
import { LAMBDA_ENTRY } from '../../cdk/lib/paths.ts';
import { STATEFUL_LOGICAL_IDS } from '../../cdk/lib/stateful-stack.ts';
import { LAMBDA_STUB, REPO_ROOT, asArray, policyStatements, readCdkJson, resources, testApp } from './helpers.ts';

const require = createRequire(import.meta.url);
const dev = stageConfig('dev');
/** Prod as it must be deployed: with an alarm e-mail (synth refuses it without one). */
const prodConfig = () => stageConfig('prod', { alarmEmail: 'ops@example.com' });
// Extra Apps (prod) skip the Docker asset: staging the repo root once, in beforeAll, is enough
// and costs seconds (CDK walks the tree to honour .dockerignore).
const stubImage = ContainerImage.fromRegistry('public.ecr.aws/docker/library/busybox:stable');

let cleanups: Array<() => void> = [];
let stacks: ClipagStacks;
let stateful: Template;
let api: Template;
let worker: Template;
let assemblyDir: string;

beforeAll(() => {
  const { app, cleanup } = testApp();
  cleanups.push(cleanup);
  // The real worker image asset (staged, not built: no Docker needed for synth).
  stacks = buildClipag(app, dev, { lambdaEntry: LAMBDA_STUB });
  stateful = Template.fromStack(stacks.stateful);
  api = Template.fromStack(stacks.api);
  worker = Template.fromStack(stacks.worker);
  assemblyDir = app.synth().directory;
});

afterAll(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

describe('cdk.json', () => {
  it('runs the TS app through tsx, offline-friendly', () => {
    const cdk = readCdkJson();
    expect(cdk.app).toBe('node --import tsx cdk/bin/app.ts');
    expect(cdk.notices).toBe(false);
    expect(cdk.context['cli-telemetry']).toBe(false);
  });

  it('carries every currently recommended feature flag of the installed aws-cdk-lib', () => {
    const recommended = require('aws-cdk-lib/recommended-feature-flags.json') as Record<string, unknown>;
    const ctx = readCdkJson().context;
    const missingOrDifferent = Object.entries(recommended)
      .filter(([flag, value]) => JSON.stringify(ctx[flag]) !== JSON.stringify(value))
      .map(([flag]) => flag);
    expect(missingOrDifferent).toEqual([]);
    // The one that matters most for this app: without it the ASG gets a LaunchConfiguration.
    expect(ctx['@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig']).toBe(true);
  });

  it('uses weak cross-stack references (no exports), so cdk/README.md says to deploy the stacks together and why', () => {
    expect(readCdkJson().context['@aws-cdk/core:defaultCrossStackReferences']).toBe('weak');
    for (const [, r] of [stateful, api, worker].flatMap((t) => Object.entries(t.toJSON().Outputs ?? {}))) expect(r).not.toHaveProperty('Export');
    expect(JSON.stringify(api.toJSON())).toContain('Fn::GetStackOutput');
    const readme = readFileSync(path.join(REPO_ROOT, 'cdk', 'README.md'), 'utf8');
    expect(readme).toMatch(/\*\*Always deploy the stacks together\*\* \(`--all`/);
    expect(readme).toContain('`Fn::GetStackOutput`, resolved only when the *consuming* stack is created or updated');
  });

  it('the app uses functions/lambda.ts as the real Lambda entry', () => {
    expect(path.relative(REPO_ROOT, LAMBDA_ENTRY)).toBe(path.join('functions', 'lambda.ts'));
  });
});

describe('environment-agnostic stacks', () => {
  it('deploy the API before the worker: the worker stack reads the API stack, and the API reads what the worker writes first', () => {
    expect(stacks.worker.dependencies.map((d) => d.stackName)).toContain(stacks.api.stackName);
    expect(stacks.api.dependencies.map((d) => d.stackName)).not.toContain(stacks.worker.stackName);
    // Not an order to flip: the worker stack's alarms and dashboard take the API stack's outputs, so a
    // worker-first order is a cycle. What the API writes for the worker is made safe by the two-phase
    // rule (cdk/lib/clipag.ts), not by the order.
    const readsApi = JSON.stringify(worker.toJSON()).match(/"Fn::GetStackOutput":\{"StackName":"Clipag-dev-Api"/g) ?? [];
    expect(readsApi.length).toBeGreaterThan(0);
    expect(JSON.stringify(api.toJSON())).not.toContain('"StackName":"Clipag-dev-Worker"');
  });

  it('have no concrete account or region (synth makes no AWS calls)', () => {
    for (const s of [stacks.stateful, stacks.api, stacks.worker]) {
      expect(Token.isUnresolved(s.account)).toBe(true);
      expect(Token.isUnresolved(s.region)).toBe(true);
    }
    expect([stacks.stateful, stacks.api, stacks.worker].map((s) => s.stackName)).toEqual([
      'Clipag-dev-Stateful',
      'Clipag-dev-Api',
      'Clipag-dev-Worker',
    ]);
  });
});

describe('StatefulStack', () => {
  it('pins the logical IDs of the bucket, the queue, the DLQ and the rate-counter table', () => {
    // Changing any of these makes CloudFormation REPLACE the resource: data loss for the
    // bucket, lost in-flight jobs for the queues, a restart of every rate window (and a new
    // table name) for the counters. This test must fail on such a refactor.
    expect(STATEFUL_LOGICAL_IDS).toEqual({
      bucket: 'ClipagBucket',
      queue: 'ClipagJobQueue',
      deadLetterQueue: 'ClipagJobDeadLetterQueue',
      rateCounters: 'ClipagRateCounters',
    });
    const byType = (type: string) => resources(stateful).filter(([, r]) => r.Type === type).map(([id]) => id).sort();
    expect(byType('AWS::S3::Bucket')).toEqual(['ClipagBucket']);
    expect(byType('AWS::SQS::Queue')).toEqual(['ClipagJobDeadLetterQueue', 'ClipagJobQueue']);
    // TableV2 synthesizes a GlobalTable (one replica, this region), never a classic Table.
    expect(byType('AWS::DynamoDB::GlobalTable')).toEqual(['ClipagRateCounters']);
    expect(byType('AWS::DynamoDB::Table')).toEqual([]);
  });

  it('outputs what the operator CLI needs: the bucket, the queue and the DLQ; and the rate-counter table', () => {
    stateful.hasOutput('BucketName', { Value: { Ref: 'ClipagBucket' }, Description: 'CLIPAG_BUCKET' });
    stateful.hasOutput('QueueUrl', { Value: { Ref: 'ClipagJobQueue' }, Description: 'CLIPAG_QUEUE_URL' });
    stateful.hasOutput('DeadLetterQueueUrl', { Value: { Ref: 'ClipagJobDeadLetterQueue' }, Description: 'CLIPAG_DLQ_URL' });
    stateful.hasOutput('RateTableName', { Value: { Ref: 'ClipagRateCounters' }, Description: ENV.rateTable });
  });

  it('keeps the rate counts in an on-demand table keyed by pk alone, expired by TTL on expires_at, without backups', () => {
    const table = (stateful.toJSON() as { Resources: Record<string, any> }).Resources.ClipagRateCounters;
    expect(table.Type).toBe('AWS::DynamoDB::GlobalTable');
    expect(table.Properties.KeySchema).toEqual([{ AttributeName: 'pk', KeyType: 'HASH' }]);
    expect(table.Properties.AttributeDefinitions).toEqual([{ AttributeName: 'pk', AttributeType: 'S' }]);
    expect(table.Properties.BillingMode).toBe('PAY_PER_REQUEST');
    expect(table.Properties.TimeToLiveSpecification).toEqual({ AttributeName: 'expires_at', Enabled: true });
    // Encrypted with DynamoDB's own key (SSEEnabled false means that, not "unencrypted"): no KMS key to grant.
    expect(table.Properties.SSESpecification).toEqual({ SSEEnabled: false });
    expect(table.Properties.GlobalSecondaryIndexes).toBeUndefined();
    expect(table.Properties.LocalSecondaryIndexes).toBeUndefined();
    expect(table.Properties.Replicas).toHaveLength(1);
    expect(table.Properties.Replicas[0].PointInTimeRecoverySpecification).toEqual({ PointInTimeRecoveryEnabled: false });
    // Ephemeral counts (a minute's worth): deleted with the stack, unlike the bucket and the queues.
    expect(table.DeletionPolicy).toBe('Delete');
    expect(table.UpdateReplacePolicy).toBe('Delete');
  });

  it('retains the bucket and the queues when the stack is deleted or the resource replaced', () => {
    const json = stateful.toJSON() as { Resources: Record<string, { DeletionPolicy?: string; UpdateReplacePolicy?: string }> };
    for (const id of ['ClipagBucket', 'ClipagJobQueue', 'ClipagJobDeadLetterQueue']) {
      expect(json.Resources[id]!.DeletionPolicy).toBe('Retain');
      expect(json.Resources[id]!.UpdateReplacePolicy).toBe('Retain');
    }
  });

  it('keeps the bucket private and encrypted', () => {
    stateful.hasResourceProperties('AWS::S3::Bucket', {
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
    });
  });

  it('denies every non-TLS request in the bucket policy', () => {
    stateful.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: 'ClipagBucket' },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Action: 's3:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
            Principal: { AWS: '*' },
          }),
        ]),
      },
    });
  });

  it('expires outputs and uploads by lifecycle, and allows presigned PUT from browsers', () => {
    const bucket = stateful.toJSON().Resources.ClipagBucket.Properties;
    const rules = bucket.LifecycleConfiguration.Rules as Array<{ Prefix?: string; ExpirationInDays?: number; Status: string; AbortIncompleteMultipartUpload?: unknown }>;
    const rule = (prefix: string) => rules.find((r) => r.Prefix === prefix);
    expect(rule('outputs/')).toMatchObject({ ExpirationInDays: dev.outputRetentionDays, Status: 'Enabled' });
    expect(rule('uploads/')).toMatchObject({ ExpirationInDays: dev.uploadRetentionDays, Status: 'Enabled' });
    // Job records and keys must never expire; a dead worker's presence document goes after a day (ADR 0040).
    expect(rule('workers/')).toMatchObject({ ExpirationInDays: 1, Status: 'Enabled' });
    expect(rules.filter((r) => r.ExpirationInDays !== undefined).map((r) => r.Prefix).sort()).toEqual(['outputs/', 'uploads/', 'workers/']);
    expect(rules.some((r) => r.AbortIncompleteMultipartUpload)).toBe(true);
    const cors = bucket.CorsConfiguration.CorsRules as Array<{ AllowedMethods: string[] }>;
    expect(cors.some((r) => r.AllowedMethods.includes('PUT'))).toBe(true);
  });

  it("allows a browser's PUT every header an upload grant signs (a preflight naming one the rule lacks is refused, and a signed one cannot be left out)", async () => {
    const rules = stateful.toJSON().Resources.ClipagBucket.Properties.CorsConfiguration.CorsRules as Array<{ AllowedMethods: string[]; AllowedHeaders: string[] }>;
    const put = rules.find((r) => r.AllowedMethods.includes('PUT'))!;
    const allowed = (h: string) => put.AllowedHeaders.some((a) => (a.endsWith('*') ? h.startsWith(a.slice(0, -1)) : a === h));
    // The grant POST /v1/uploads makes (functions/routes/uploads.ts), signed offline.
    const store = new S3BlobStore({ client: new S3Client({ region: 'eu-west-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' } }), bucket: 'b' });
    const grant = await store.signedPutUrl('uploads/o/u1', { contentType: 'image/png', maxBytes: 4096, contentLength: 1234, expiresSec: 60, createOnly: true });
    expect(Object.keys(grant.headers).sort()).toEqual(['content-length', 'content-type', 'if-none-match']);
    for (const h of Object.keys(grant.headers)) expect(allowed(h), h).toBe(true);
  });

  it('wires the job queue to the DLQ with maxReceiveCount 3, both SSE-encrypted, TLS only', () => {
    stateful.hasResourceProperties('AWS::SQS::Queue', {
      RedrivePolicy: {
        deadLetterTargetArn: { 'Fn::GetAtt': ['ClipagJobDeadLetterQueue', 'Arn'] },
        maxReceiveCount: 3,
      },
      VisibilityTimeout: dev.visibilityTimeoutSeconds,
      SqsManagedSseEnabled: true,
    });
    const queues = resources(stateful).filter(([, r]) => r.Type === 'AWS::SQS::Queue');
    for (const [, q] of queues) expect(q.Properties.SqsManagedSseEnabled).toBe(true);
    const queuePolicies = resources(stateful).filter(([, r]) => r.Type === 'AWS::SQS::QueuePolicy');
    expect(queuePolicies).toHaveLength(2);
    for (const [, p] of queuePolicies) {
      expect(JSON.stringify(p.Properties.PolicyDocument)).toContain('"aws:SecureTransport":"false"');
    }
  });

  it('turns versioning on in prod only', () => {
    expect(stateful.toJSON().Resources.ClipagBucket.Properties.VersioningConfiguration).toBeUndefined();
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const prod = buildClipag(app, prodConfig(), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage });
    Template.fromStack(prod.stateful).hasResourceProperties('AWS::S3::Bucket', {
      VersioningConfiguration: { Status: 'Enabled' },
    });
    // Versioned, the markers' deletes leave delete markers: a rule removes them (and their old versions) under pending/.
    const rules = Template.fromStack(prod.stateful).toJSON().Resources.ClipagBucket.Properties.LifecycleConfiguration.Rules as Array<Record<string, unknown>>;
    expect(rules.find((r) => r.Prefix === 'pending/')).toMatchObject({ Status: 'Enabled', ExpiredObjectDeleteMarker: true, NoncurrentVersionExpiration: { NoncurrentDays: 1 } });
    // Still nothing expires a current job record, key or marker.
    expect(rules.filter((r) => r.ExpirationInDays !== undefined).map((r) => r.Prefix).sort()).toEqual(['outputs/', 'uploads/', 'workers/']);
    // Each expiry, DELETE /v1/generations/{id} and withheld image leaves a delete marker under outputs/ or
    // uploads/: a rule of its own removes them (S3 refuses ExpiredObjectDeleteMarker beside ExpirationInDays),
    // and their old versions go after a day.
    for (const prefix of ['outputs/', 'uploads/', 'workers/']) {
      const own = rules.filter((r) => r.Prefix === prefix);
      expect(own.find((r) => r.ExpiredObjectDeleteMarker === true), prefix).toMatchObject({ Status: 'Enabled' });
      for (const r of own) expect(r.ExpiredObjectDeleteMarker === true && r.ExpirationInDays !== undefined, `${prefix} ${String(r.Id)}`).toBe(false);
      expect(own.find((r) => r.NoncurrentVersionExpiration !== undefined), prefix).toMatchObject({ NoncurrentVersionExpiration: { NoncurrentDays: 1 } });
    }
    // The logical IDs do not depend on the stage either.
    expect(Object.keys(Template.fromStack(prod.stateful).toJSON().Resources)).toEqual(
      expect.arrayContaining(['ClipagBucket', 'ClipagJobQueue', 'ClipagJobDeadLetterQueue', 'ClipagRateCounters']),
    );
  });
});

describe('ApiStack', () => {
  it('bundles both functions with source maps that leave the sources out, and Node reads the maps', () => {
    // Errors in the logs must still map to file:line, but a map carrying every source's text (5 MB, of
    // which 3.3 MB text) cost about 100 ms of each cold start to load.
    expect(BUNDLING).toMatchObject({ sourceMap: true, sourcesContent: false, minify: true, format: 'esm' });
    expect(BUNDLING.sourceMapMode ?? 'default').toBe('default'); // a separate .map file beside index.mjs, not inline
    const functions = resources(api).filter(([, r]) => r.Type === 'AWS::Lambda::Function' && r.Properties.Runtime === 'nodejs22.x');
    expect(functions.length).toBe(2); // the handler and the queued-job sweep, both bundled with BUNDLING
    for (const [id, fn] of functions) expect(fn.Properties.Environment.Variables.NODE_OPTIONS, id).toBe('--enable-source-maps');
  });

  it('runs the handler on Node 22 with the aws-mode environment', () => {
    api.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'nodejs22.x',
      Handler: 'index.handler',
      Environment: {
        Variables: Match.objectLike({
          [ENV.mode]: 'aws',
          [ENV.stage]: 'dev',
          [ENV.bucket]: Match.anyValue(),
          [ENV.queueUrl]: Match.anyValue(),
          [ENV.visibilityTimeout]: String(dev.visibilityTimeoutSeconds),
          [ENV.signedUrlTtl]: String(dev.signedUrlTtlSeconds),
          [ENV.workerHourlyUsd]: String(dev.workerHourlyUsd),
          [ENV.outputRetention]: String(dev.outputRetentionDays),
          [ENV.defaultModel]: dev.defaultModel,
          [ENV.maxActiveJobs]: String(dev.maxActiveJobsPerAccount),
          [ENV.maxWaitSec]: String(dev.lambdaTimeoutSeconds - 3), // Prefer: wait answers before the Lambda times out
          // toy ships in the image: the API cannot read it, so the CDK passes its input size (models/toy/manifest.json).
          [ENV.defaultModelInputSize]: '64',
          [ENV.rateTable]: Match.anyValue(),
          [ENV.rateLimitPerMin]: String(dev.rateLimitPerMinute),
          [ENV.uploadsPerHour]: String(dev.uploadsPerHour),
          [ENV.maxWaits]: String(dev.maxWaitsPerAccount),
        }),
      },
    });
    // Lambda reserves AWS_REGION and fails the deployment if a template sets it.
    const fn = resources(api).find(([, r]) => r.Type === 'AWS::Lambda::Function' && r.Properties.Runtime === 'nodejs22.x')!;
    expect(fn[1].Properties.Environment.Variables.AWS_REGION).toBeUndefined();
  });

  it('names the rate-counter table to the handler: the Stateful stack\'s table, and the stage\'s limit', () => {
    const [, handler] = resources(api).find(([id, r]) => id.startsWith('Handler') && r.Type === 'AWS::Lambda::Function')!;
    const vars = handler.Properties.Environment.Variables;
    expect(JSON.stringify(vars[ENV.rateTable])).toContain('ClipagRateCounters'); // a reference to the table's name, not a literal
    expect(vars[ENV.rateLimitPerMin]).toBe('300');
  });

  it('runs the queued-job sweep on a schedule, with the same environment (but the rate limit) and no retries of its own', () => {
    const fns = resources(api).filter(([, r]) => r.Type === 'AWS::Lambda::Function' && r.Properties.Runtime === 'nodejs22.x');
    expect(fns.map(([id]) => id.replace(/[0-9A-F]{8}$/, '')).sort()).toEqual(['Handler', 'QueuedJobSweeper']);
    const [sweeperId, sweeper] = fns.find(([id]) => id.startsWith('QueuedJobSweeper'))!;
    const [, handler] = fns.find(([id]) => id.startsWith('Handler'))!;
    // The sweep serves no requests: it neither counts them nor may touch the table.
    const { [ENV.rateTable]: _table, [ENV.rateLimitPerMin]: _limit, [ENV.uploadsPerHour]: _uploads, [ENV.maxWaits]: _waits, ...handlerVarsButRate } = handler.Properties.Environment.Variables;
    expect([_table, _limit, _uploads, _waits].every((v) => v !== undefined)).toBe(true);
    expect(sweeper.Properties.Environment).toEqual({ Variables: handlerVarsButRate });
    // The sweep fails jobs no message can reach: it must know the queue's own retention.
    const queues = resources(stateful).filter(([, r]) => r.Type === 'AWS::SQS::Queue').map(([, r]) => r.Properties.MessageRetentionPeriod);
    expect(queues).toContain(dev.queueRetentionDays * 86_400);
    expect(sweeper.Properties.Environment.Variables[ENV.queueRetention]).toBe(String(dev.queueRetentionDays * 86_400));
    expect(sweeper.Properties.Timeout).toBe(120);
    // Lambda's own async retries are off too: the next scheduled sweep is the retry. Lambda keeps these
    // per qualifier, and the schedule invokes the alias: its own settings are the ones that apply.
    const [aliasId] = resources(api).find(([, r]) => r.Type === 'AWS::Lambda::Alias' && r.Properties.FunctionName.Ref === sweeperId)!;
    const invokeConfigs = resources(api).filter(([, r]) => r.Type === 'AWS::Lambda::EventInvokeConfig' && r.Properties.FunctionName.Ref === sweeperId).map(([, r]) => r.Properties);
    expect(invokeConfigs).toEqual([
      { FunctionName: { Ref: sweeperId }, Qualifier: '$LATEST', MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: dev.queuedJobSweepMinutes * 60 },
      { FunctionName: { Ref: sweeperId }, Qualifier: { 'Fn::Select': [7, { 'Fn::Split': [':', { Ref: aliasId }] }] }, MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: dev.queuedJobSweepMinutes * 60 },
    ]);
    const rules = resources(api).filter(([, r]) => r.Type === 'AWS::Events::Rule');
    expect(rules).toHaveLength(1);
    const rule = rules[0]![1].Properties;
    expect(rule.ScheduleExpression).toBe(`rate(${dev.queuedJobSweepMinutes} minutes)`);
    expect(rule.Targets).toEqual([expect.objectContaining({ Arn: { Ref: aliasId }, RetryPolicy: { MaximumRetryAttempts: 0 } })]);
    api.hasResourceProperties('AWS::Lambda::Permission', { Action: 'lambda:InvokeFunction', Principal: 'events.amazonaws.com', FunctionName: { Ref: aliasId } });
  });

  it('throttles the API stage from the config', () => {
    api.resourceCountIs('AWS::ApiGatewayV2::Api', 1);
    api.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: '$default',
      AutoDeploy: true,
      DefaultRouteSettings: {
        ThrottlingRateLimit: dev.apiThrottleRatePerSecond,
        ThrottlingBurstLimit: dev.apiThrottleBurst,
      },
      AccessLogSettings: Match.objectLike({ DestinationArn: Match.anyValue() }),
    });
  });
});

describe('rolling back without a redeploy: the API by its alias, the worker by a kept revision', () => {
  const fnId = (name: string) => resources(api).find(([id, r]) => id.startsWith(name) && r.Type === 'AWS::Lambda::Function')![0];
  /** The function's LIVE_ALIAS, and the version it points at. */
  const liveOf = (functionId: string) => {
    const [aliasId, alias] = resources(api).find(([, r]) => r.Type === 'AWS::Lambda::Alias' && r.Properties.FunctionName.Ref === functionId)!;
    const versionId = alias.Properties.FunctionVersion['Fn::GetAtt'][0] as string;
    return { aliasId, alias, versionId, version: (api.toJSON() as { Resources: Record<string, any> }).Resources[versionId] };
  };

  it('the HTTP API and the sweep schedule invoke each function through its live alias, never the function itself', () => {
    for (const name of ['Handler', 'QueuedJobSweeper']) {
      const { alias } = liveOf(fnId(name));
      expect(alias.Properties.Name).toBe(LIVE_ALIAS);
    }
    const handlerAlias = liveOf(fnId('Handler')).aliasId;
    const integrations = resources(api).filter(([, r]) => r.Type === 'AWS::ApiGatewayV2::Integration').map(([, r]) => r.Properties.IntegrationUri);
    expect(integrations).toEqual([{ Ref: handlerAlias }]);
    // Each caller may invoke the alias alone: pointing it at another version moves all of them.
    const invokers = resources(api).filter(([, r]) => r.Type === 'AWS::Lambda::Permission').map(([, r]) => [r.Properties.Principal, r.Properties.FunctionName]);
    expect(invokers).toEqual([
      ['events.amazonaws.com', { Ref: liveOf(fnId('QueuedJobSweeper')).aliasId }],
      ['apigateway.amazonaws.com', { Ref: handlerAlias }],
    ]);
    expect(JSON.stringify(api.toJSON().Outputs.LiveAliasName)).toContain(`"Value":"${LIVE_ALIAS}"`);
  });

  it("each deploy publishes a version of each function and keeps the ones before (CDK's default deletes them, and with them the rollback)", () => {
    for (const name of ['Handler', 'QueuedJobSweeper']) {
      const { version } = liveOf(fnId(name));
      expect(version).toMatchObject({ Type: 'AWS::Lambda::Version', Properties: { FunctionName: { Ref: fnId(name) } }, DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
    }
  });

  it("the API's alarms read the function's own metrics (FunctionName alone: every version and alias), so a rollback moves no alarm", () => {
    const throttles = resources(worker).find(([id, r]) => id.startsWith('AlarmsApiThrottles') && r.Type === 'AWS::CloudWatch::Alarm')![1];
    expect(throttles.Properties.Dimensions.map((d: { Name: string }) => d.Name)).toEqual(['FunctionName']);
  });

  it('the worker: its task revisions stay ACTIVE to roll back to, as the breaker cannot while the fleet is at zero tasks', () => {
    const [tdId, td] = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')!;
    expect([td.DeletionPolicy, td.UpdateReplacePolicy]).toEqual(['Retain', 'Retain']);
    const service = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::Service')![1].Properties;
    expect(service.TaskDefinition).toEqual({ Ref: tdId });
    expect(service.DeploymentConfiguration.DeploymentCircuitBreaker).toEqual({ Enable: true, Rollback: true });
    // What the breaker cannot cover: a deploy at zero tasks starts none.
    expect(service.DesiredCount).toBe(0);
    expect((worker.toJSON() as { Outputs: Record<string, { Value: unknown }> }).Outputs.WorkerTaskDefinitionFamily!.Value).toBe(td.Properties.Family);
  });
});

describe('WorkerStack', () => {
  it('uses a public-subnet VPC without NAT gateways, with an S3 gateway endpoint', () => {
    worker.resourceCountIs('AWS::EC2::NatGateway', 0);
    worker.resourceCountIs('AWS::EC2::VPCEndpoint', 1);
    worker.hasResourceProperties('AWS::EC2::VPCEndpoint', { VpcEndpointType: 'Gateway' });
    // No inbound rule on the instances' security group.
    const sgs = resources(worker).filter(([id, r]) => r.Type === 'AWS::EC2::SecurityGroup' && id.startsWith('InstanceSecurityGroup'));
    expect(sgs).toHaveLength(1);
    expect(sgs[0]![1].Properties.SecurityGroupIngress).toBeUndefined();
    worker.resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
  });

  it('runs a GPU Auto Scaling group from a launch template (never a LaunchConfiguration), min 0', () => {
    worker.resourceCountIs('AWS::AutoScaling::LaunchConfiguration', 0);
    worker.resourceCountIs('AWS::EC2::LaunchTemplate', 1);
    worker.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MinSize: '0',
      MaxSize: String(dev.maxInstances),
      NewInstancesProtectedFromScaleIn: true,
    });
    // No DesiredCapacity: a fixed value would reset the group on every deploy.
    const asg = resources(worker).find(([, r]) => r.Type === 'AWS::AutoScaling::AutoScalingGroup')![1];
    expect(asg.Properties.DesiredCapacity).toBeUndefined();
    const lt = resources(worker).find(([, r]) => r.Type === 'AWS::EC2::LaunchTemplate')![1].Properties.LaunchTemplateData;
    expect(lt.InstanceType).toBe('g5.xlarge');
    expect(lt.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
    // The root volume goes with its instance, whatever the AMI's mapping says: one kept would bill for every scale-out.
    expect(lt.BlockDeviceMappings).toEqual([{ DeviceName: '/dev/xvda', Ebs: { DeleteOnTermination: true, Encrypted: true, VolumeSize: dev.rootVolumeGiB, VolumeType: 'gp3' } }]);
    // The GPU ECS AMI is an SSM parameter resolved at deploy time, not a synth-time lookup.
    const params = (worker.toJSON() as { Parameters: Record<string, { Default?: string }> }).Parameters;
    const amiParam = Object.entries(params).find(([id]) => id === lt.ImageId.Ref)?.[1];
    // Amazon Linux 2023: Amazon Linux 2 left support on 2026-06-30.
    expect(amiParam?.Default).toBe('/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id');
  });

  it('pins the GPU AMI when the stage names one (no SSM parameter, so no deploy moves the driver); unpinned by default (review-ops 1)', () => {
    // As shipped, both stages take the recommended AMI at each deploy (the test above).
    expect([dev.gpuAmiId, prodConfig().gpuAmiId]).toEqual([null, null]);
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const pinned = Template.fromStack(buildClipag(app, stageConfig('prod', { alarmEmail: 'ops@example.com', gpuAmiId: 'ami-0123456789abcdef0' }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    const lt = resources(pinned).find(([, r]) => r.Type === 'AWS::EC2::LaunchTemplate')!;
    expect(lt[0]).toBe('LaunchTemplate04EC5460');
    expect(lt[1].Properties.LaunchTemplateData.ImageId).toBe('ami-0123456789abcdef0');
    const params = (pinned.toJSON() as { Parameters?: Record<string, { Type: string; Default?: string }> }).Parameters ?? {};
    // No image parameter (the CDK's own bootstrap-version parameter stays).
    expect(Object.values(params).filter((p) => p.Type.includes('AWS::EC2::Image::Id') || (p.Default ?? '').startsWith('/aws/service/'))).toEqual([]);
    expect(JSON.stringify(pinned.toJSON())).not.toContain('optimized-ami');
    // The same launch template otherwise.
    expect(lt[1].Properties.LaunchTemplateData.MetadataOptions).toMatchObject({ HttpTokens: 'required', HttpPutResponseHopLimit: 1 });
    expect(stageConfig('dev', { gpuAmiId: 'ami-12345678' }).gpuAmiId).toBe('ami-12345678');
    for (const bad of ['ami-xyz', 'AMI-0123456789abcdef0', '/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id', '', 'ami-0123456789abcdef']) {
      expect(() => stageConfig('prod', { alarmEmail: 'ops@example.com', gpuAmiId: bad }), bad).toThrow(/gpuAmiId must be null \(the recommended ECS GPU AMI at each deploy\) or an AMI id/);
    }
  });

  it("lets the GPU hosts write the worker's log group alone, not every log group; the ECS agent keeps what it needs (review-ops 9)", () => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const prod = Template.fromStack(buildClipag(app, prodConfig(), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    for (const t of [worker, prod]) {
      const statements = policyStatements(t).filter(({ owner }) => owner.startsWith('InstanceRoleDefaultPolicy')).map(({ statement }) => statement);
      const logs = statements.filter((st) => asArray(st.Action).some((a) => a.startsWith('logs:')));
      expect(logs).toHaveLength(1);
      expect(logs[0]).toMatchObject({ Effect: 'Allow', Action: ['logs:CreateLogStream', 'logs:PutLogEvents'], Resource: { 'Fn::GetAtt': [expect.stringMatching(/^WorkerLogs[0-9A-F]{8}$/), 'Arn'] } });
      for (const st of statements) {
        if (asArray(st.Resource).includes('*')) expect(asArray(st.Action).filter((a) => a.startsWith('logs:')), JSON.stringify(st)).toEqual([]);
      }
      // The agent's own: register with this cluster, poll, pull from ECR.
      const actions = statements.flatMap((st) => asArray(st.Action));
      expect(actions).toEqual(expect.arrayContaining(['ecs:RegisterContainerInstance', 'ecs:DeregisterContainerInstance', 'ecs:Submit*', 'ecs:Poll', 'ecs:StartTelemetrySession', 'ecs:DiscoverPollEndpoint', 'ecr:GetAuthorizationToken']));
      const onAny = statements.find((st) => asArray(st.Action).includes('ecs:DiscoverPollEndpoint'))!;
      expect([asArray(onAny.Action).sort(), onAny.Resource]).toEqual([['ecr:GetAuthorizationToken', 'ecs:DiscoverPollEndpoint'], '*']);
      // The task's own log driver writes with the execution role, on the same log group (CDK's grant).
      const execution = policyStatements(t).filter(({ owner }) => /^WorkerTaskDefinitionExecutionRoleDefaultPolicy/.test(owner)).map(({ statement }) => statement);
      expect(execution.find((st) => asArray(st.Action).includes('logs:PutLogEvents'))?.Resource).toEqual({ 'Fn::GetAtt': [expect.stringMatching(/^WorkerLogs[0-9A-F]{8}$/), 'Arn'] });
    }
    // The role and its policy keep their logical IDs.
    expect(Object.keys(worker.toJSON().Resources).filter((id) => /^InstanceRole/.test(id)).sort()).toEqual([expect.stringMatching(/^InstanceRole[0-9A-F]{8}$/), expect.stringMatching(/^InstanceRoleDefaultPolicy[0-9A-F]{8}$/)].sort());
  });

  it('uses Spot with the configured types in dev; in prod on-demand, the first of its types in order that has capacity', () => {
    worker.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MixedInstancesPolicy: {
        InstancesDistribution: { OnDemandPercentageAboveBaseCapacity: 0 },
        LaunchTemplate: {
          LaunchTemplateSpecification: Match.objectLike({ LaunchTemplateId: Match.anyValue() }),
          Overrides: dev.instanceTypes.map((t) => ({ InstanceType: t })),
        },
      },
    });
    expect(JSON.stringify(worker.toJSON())).toContain('ECS_ENABLE_SPOT_INSTANCE_DRAINING=true');

    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const prod = Template.fromStack(buildClipag(app, prodConfig(), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    prod.resourceCountIs('AWS::AutoScaling::LaunchConfiguration', 0);
    // A prioritized on-demand mixed-instances policy: an InsufficientInstanceCapacity for g5.xlarge in
    // the group's AZs launches g6.xlarge, then g4dn.xlarge, instead of leaving tasks PROVISIONING.
    const prodConfigured = prodConfig();
    expect(prodConfigured.instanceTypes).toEqual(['g5.xlarge', 'g6.xlarge', 'g4dn.xlarge']);
    prod.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', {
      MinSize: '0',
      LaunchTemplate: Match.absent(),
      MixedInstancesPolicy: {
        InstancesDistribution: { OnDemandBaseCapacity: 0, OnDemandPercentageAboveBaseCapacity: 100, OnDemandAllocationStrategy: 'prioritized' },
        LaunchTemplate: {
          LaunchTemplateSpecification: Match.objectLike({ LaunchTemplateId: Match.anyValue() }),
          Overrides: prodConfigured.instanceTypes.map((t) => ({ InstanceType: t })),
        },
      },
    });
    // The order is the stage's: another order in the config is another order in the template.
    const { app: app2, cleanup: cleanup2 } = testApp();
    cleanups.push(cleanup2);
    const reordered = Template.fromStack(buildClipag(app2, stageConfig('prod', { alarmEmail: 'ops@example.com', instanceTypes: ['g6.xlarge', 'g5.xlarge'] }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    reordered.hasResourceProperties('AWS::AutoScaling::AutoScalingGroup', { MixedInstancesPolicy: { LaunchTemplate: Match.objectLike({ Overrides: [{ InstanceType: 'g6.xlarge' }, { InstanceType: 'g5.xlarge' }] }) } });
    // The logical IDs of the group and its launch template do not change with the purchase option.
    for (const t of [worker, prod]) {
      expect(resources(t).filter(([, r]) => r.Type === 'AWS::AutoScaling::AutoScalingGroup').map(([id]) => id)).toEqual(['GpuAsgASG4AAF2DD0']);
      expect(resources(t).filter(([, r]) => r.Type === 'AWS::EC2::LaunchTemplate').map(([id]) => id)).toEqual(['LaunchTemplate04EC5460']);
    }
    expect(JSON.stringify(prod.toJSON())).not.toContain('ECS_ENABLE_SPOT_INSTANCE_DRAINING');
  });

  it('registers the group as a managed-scaling capacity provider of the cluster', () => {
    worker.hasResourceProperties('AWS::ECS::CapacityProvider', {
      AutoScalingGroupProvider: {
        ManagedScaling: { Status: 'ENABLED', TargetCapacity: 100 },
        ManagedTerminationProtection: 'ENABLED',
      },
    });
    worker.hasResourceProperties('AWS::ECS::ClusterCapacityProviderAssociations', {
      CapacityProviders: Match.arrayWith([{ Ref: Match.stringLikeRegexp('^GpuCapacityProvider') }]),
    });
  });

  it('defines a one-GPU EC2 task with a long stop timeout and logs', () => {
    worker.hasResourceProperties('AWS::ECS::TaskDefinition', {
      RequiresCompatibilities: ['EC2'],
      NetworkMode: 'bridge',
      ContainerDefinitions: [
        Match.objectLike({
          ResourceRequirements: [{ Type: 'GPU', Value: '1' }],
          StopTimeout: dev.stopTimeoutSeconds,
          // Non-blocking: a stalled CloudWatch Logs must not block the worker's stdout (and its heartbeats).
          LogConfiguration: Match.objectLike({ LogDriver: 'awslogs', Options: Match.objectLike({ mode: 'non-blocking', 'max-buffer-size': '8388608b' }) }),
          Environment: Match.arrayWith([
            { Name: ENV.mode, Value: 'aws' },
            { Name: ENV.queueUrl, Value: Match.anyValue() },
            { Name: ENV.dlqUrl, Value: Match.anyValue() },
          ]),
        }),
      ],
    });
    const td = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')![1];
    expect(td.Properties.ContainerDefinitions[0].StopTimeout).toBeGreaterThanOrEqual(120);
    const names = (td.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string }>).map((e) => e.Name).sort();
    expect(names).toEqual(
      [ENV.mode, ENV.stage, ENV.bucket, ENV.queueUrl, ENV.dlqUrl, ENV.visibilityTimeout, ENV.maxReceiveCount, ENV.jobTimeout, ENV.stopTimeout, ENV.executionProvider, ENV.workerHourlyUsd, ENV.outputRetention, ENV.signedUrlTtl, ENV.webhookPorts, ENV.region, ENV.defaultModel].sort(),
    );
    // The model the API defaults to is the one the worker warms (ADR 0020).
    const env = td.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string; Value: unknown }>;
    expect(env.find((e) => e.Name === ENV.defaultModel)?.Value).toBe('toy');
    // The webhook ports the API accepts at POST are the ones the sweep and the workers send to (ADR 0013).
    const lambdaPorts = resources(api)
      .filter(([id, r]) => r.Type === 'AWS::Lambda::Function' && (id.startsWith('Handler') || id.startsWith('QueuedJobSweeper')))
      .map(([, r]) => r.Properties.Environment.Variables[ENV.webhookPorts]);
    expect([...lambdaPorts, env.find((e) => e.Name === ENV.webhookPorts)?.Value]).toEqual(['443', '443', '443']);
  });

  it('takes the default model from the stage config, and refuses a name no model can have', () => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const built = buildClipag(app, stageConfig('dev', { defaultModel: 'clipag-vitb32' }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage });
    const td = resources(Template.fromStack(built.worker)).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')![1];
    expect(td.Properties.ContainerDefinitions[0].Environment).toContainEqual({ Name: ENV.defaultModel, Value: 'clipag-vitb32' });
    Template.fromStack(built.api).hasResourceProperties('AWS::Lambda::Function', { Environment: { Variables: Match.objectLike({ [ENV.defaultModel]: 'clipag-vitb32' }) } });
    // Not in the repo (a pushed model): no size from the CDK; the API reads it from the store's index.
    const fn = resources(Template.fromStack(built.api)).find(([id, r]) => id.startsWith('Handler') && r.Type === 'AWS::Lambda::Function')![1];
    expect(fn.Properties.Environment.Variables[ENV.defaultModelInputSize]).toBeUndefined();
    expect(() => stageConfig('dev', { defaultModel: '../ViT B/32' })).toThrow(/defaultModel is not a model name/);
  });

  it('creates the service at desiredCount 0 on the capacity provider, after the cluster association', () => {
    const [, service] = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::Service')!;
    expect(service.Properties.DesiredCount).toBe(0);
    expect(service.Properties.CapacityProviderStrategy).toEqual([
      expect.objectContaining({ CapacityProvider: { Ref: expect.stringMatching(/^GpuCapacityProvider/) } }),
    ]);
    const [assocId] = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::ClusterCapacityProviderAssociations')!;
    expect(service.DependsOn).toEqual(expect.arrayContaining([assocId]));
  });

  it('scales the task count from 0 on the backlog (visible + in flight) and back to 0', () => {
    worker.hasResourceProperties('AWS::ApplicationAutoScaling::ScalableTarget', {
      MinCapacity: 0,
      MaxCapacity: dev.maxInstances,
      ScalableDimension: 'ecs:service:DesiredCount',
    });
    const policies = resources(worker).filter(([, r]) => r.Type === 'AWS::ApplicationAutoScaling::ScalingPolicy');
    const alarms = resources(worker).filter(([, r]) => r.Type === 'AWS::CloudWatch::Alarm');
    const alarmFor = (policyId: string) => alarms.find(([, a]) => JSON.stringify(a.Properties.AlarmActions) === JSON.stringify([{ Ref: policyId }]))?.[1];

    const scaleIn = policies.find(([, p]) => p.Properties.StepScalingPolicyConfiguration.StepAdjustments.some((s: any) => s.ScalingAdjustment === 0));
    const scaleOut = policies.find(([, p]) => p.Properties.StepScalingPolicyConfiguration.StepAdjustments.every((s: any) => s.ScalingAdjustment >= 1));
    expect(scaleIn, 'a scale-to-zero policy').toBeDefined();
    expect(scaleOut, 'a scale-out policy').toBeDefined();
    for (const [, p] of [scaleIn!, scaleOut!]) {
      expect(p.Properties.StepScalingPolicyConfiguration.AdjustmentType).toBe('ExactCapacity');
    }

    const inAlarm = alarmFor(scaleIn![0])!;
    const outAlarm = alarmFor(scaleOut![0])!;
    for (const alarm of [inAlarm, outAlarm]) {
      const metrics = alarm.Properties.Metrics as Array<{ Expression?: string; MetricStat?: { Metric: { MetricName: string; Dimensions: unknown } } }>;
      const expr = metrics.find((m) => m.Expression)!.Expression!;
      const names = metrics.filter((m) => m.MetricStat).map((m) => m.MetricStat!.Metric.MetricName).sort();
      expect(names).toEqual(['ApproximateNumberOfMessagesNotVisible', 'ApproximateNumberOfMessagesVisible']);
      expect(expr).toMatch(/\+/);
      // Both metrics are of the job queue, not the DLQ.
      for (const m of metrics.filter((x) => x.MetricStat)) {
        const dim = JSON.stringify(m.MetricStat!.Metric.Dimensions);
        expect(dim).toContain('ClipagJobQueue');
        expect(dim).not.toContain('DeadLetter');
      }
    }
    // Scale in: backlog <= 0 for the idle window; an idle queue that stopped emitting counts as empty.
    expect(inAlarm.Properties).toMatchObject({
      ComparisonOperator: 'LessThanOrEqualToThreshold',
      Threshold: 0,
      TreatMissingData: 'breaching',
      EvaluationPeriods: dev.scaleInAfterIdleMinutes,
    });
    // Scale out from zero: a single job is enough, and missing data never launches GPUs.
    expect(outAlarm.Properties).toMatchObject({
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      Threshold: 1,
      TreatMissingData: 'notBreaching',
      EvaluationPeriods: 1,
    });
    // Step intervals are relative to the threshold (1): backlog 1..jobsPerTask -> 1 task.
    expect(scaleOut![1].Properties.StepScalingPolicyConfiguration.StepAdjustments[0]).toEqual({
      MetricIntervalLowerBound: 0,
      MetricIntervalUpperBound: dev.jobsPerTask,
      ScalingAdjustment: 1,
    });
    const adjustments = (scaleOut![1].Properties.StepScalingPolicyConfiguration.StepAdjustments as Array<{ ScalingAdjustment: number }>).map((s) => s.ScalingAdjustment);
    expect(Math.max(...adjustments)).toBe(dev.maxInstances);
  });

  it('maps backlog to exact task counts', () => {
    expect(backlogSteps(3, 4)).toEqual([
      { upper: 0, change: 0 },
      { lower: 1, change: 1 },
      { lower: 5, change: 2 },
      { lower: 9, change: 3 },
    ]);
  });

  it('lets CloudWatch publish to the alarm topic: its topic policy replaces the SNS default, so a deny-only policy would silence every alarm', () => {
    const policies = resources(worker).filter(([, r]) => r.Type === 'AWS::SNS::TopicPolicy').map(([, r]) => r.Properties);
    expect(policies).toHaveLength(1);
    const statements = policies[0].PolicyDocument.Statement as Array<Record<string, any>>;
    const allow = statements.filter((st) => st.Effect === 'Allow');
    expect(allow).toEqual([
      expect.objectContaining({ Action: 'sns:Publish', Principal: { Service: 'cloudwatch.amazonaws.com' }, Resource: { Ref: expect.stringMatching(/^AlarmsTopic/) }, Condition: { StringEquals: { 'aws:SourceAccount': expect.anything() } } }),
      // EventBridge may publish for the task-stopped rule alone, not for any rule of any account.
      expect.objectContaining({ Action: 'sns:Publish', Principal: { Service: 'events.amazonaws.com' }, Resource: { Ref: expect.stringMatching(/^AlarmsTopic/) }, Condition: { ArnEquals: { 'aws:SourceArn': { 'Fn::GetAtt': ['AlarmsWorkerTaskStopped09EC3212', 'Arn'] } } } }),
      // AWS Budgets publishes the monthly budget's notices itself (review-ops 2): this account's budgets only.
      expect.objectContaining({
        Action: 'sns:Publish',
        Principal: { Service: 'budgets.amazonaws.com' },
        Resource: { Ref: expect.stringMatching(/^AlarmsTopic/) },
        Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } }, ArnLike: { 'aws:SourceArn': expect.objectContaining({ 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':budgets::', { Ref: 'AWS::AccountId' }, ':*']] }) } },
      }),
    ]);
    // The TLS-only deny stays.
    expect(statements).toContainEqual(expect.objectContaining({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } }));
  });

  it('drains a Spot-interrupted instance: its agent may set it DRAINING, and the service stops old tasks without waiting for replacements', () => {
    const instanceActions = (t: Template) =>
      policyStatements(t)
        .filter(({ owner }) => owner.startsWith('InstanceRoleDefaultPolicy'))
        .flatMap(({ statement }) => asArray(statement.Action));
    expect(instanceActions(worker)).toContain('ecs:UpdateContainerInstancesState');
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const prod = Template.fromStack(buildClipag(app, prodConfig(), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    expect(instanceActions(prod)).not.toContain('ecs:UpdateContainerInstancesState'); // on-demand: no Spot notice
    for (const t of [worker, prod]) {
      t.hasResourceProperties('AWS::ECS::Service', { DeploymentConfiguration: Match.objectLike({ MinimumHealthyPercent: 0, MaximumPercent: 200 }) });
    }
  });

  it('alarms on DLQ depth >= 1 and on how long a queued job has waited to start, to SNS', () => {
    worker.resourceCountIs('AWS::SNS::Topic', 1);
    const alarms = resources(worker).filter(([, r]) => r.Type === 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
    const dlq = alarms.find((a) => a.MetricName === 'ApproximateNumberOfMessagesVisible' && JSON.stringify(a.Dimensions).includes('ClipagJobDeadLetterQueue'));
    expect(dlq).toMatchObject({ Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', TreatMissingData: 'notBreaching' });
    expect(dlq.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    // How long a queued job has waited to start, from the sweep's log line (not the queue's
    // oldest-message age, which counts messages in flight: a long run is no waiting customer).
    expect(alarms.find((a) => a.MetricName === 'ApproximateAgeOfOldestMessage')).toBeUndefined();
    const age = alarms.find((a) => a.MetricName === 'OldestQueuedJobSeconds');
    expect(age).toMatchObject({ Namespace: 'Clipag/dev', Threshold: dev.alarmOldestQueuedJobSeconds, Statistic: 'Maximum', EvaluationPeriods: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', TreatMissingData: 'notBreaching' });
    expect(age.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    // The queued-job sweep failing for 15 minutes (3 × 5 min) means lost messages stay lost.
    const sweep = alarms.find((a) => a.MetricName === 'Errors' && a.Namespace === 'AWS/Lambda');
    expect(sweep).toMatchObject({ Threshold: 1, EvaluationPeriods: 3, Period: 300, Statistic: 'Sum', TreatMissingData: 'notBreaching' });
    expect(JSON.stringify(sweep.Dimensions)).toContain('QueuedJobSweeper');
    expect(sweep.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    // The public API's 5xx answers as a share of its requests (operations.test.ts has the details).
    const api5xx = alarms.find((a) => JSON.stringify(a.Metrics ?? []).includes('"MetricName":"5xx"'));
    expect(api5xx).toMatchObject({ Threshold: 20, EvaluationPeriods: 2, TreatMissingData: 'notBreaching' });
    expect(JSON.stringify(api5xx.Metrics)).toContain('HttpApi');
    expect(api5xx.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    // Any error line of the worker, the API handler (a 503's aside) and the sweep, through metric filters
    // on their log groups; the worker's job outcomes (the failure share's). (The dashboard's own filters,
    // beside these six, are tested in dashboard.test.ts.)
    const filters = resources(worker).filter(([id, r]) => r.Type === 'AWS::Logs::MetricFilter' && id.startsWith('Alarms')).map(([, r]) => r.Properties);
    expect(filters).toHaveLength(6);
    // The per-account limits failing open (their counter unavailable) for 15 minutes pages (ADR 0026).
    const unavailable = filters.find((f) => f.MetricTransformations[0].MetricName === 'RateLimitUnavailable');
    expect(unavailable).toMatchObject({ FilterPattern: '{ $.event = "rate_limit_unavailable" }' });
    expect(JSON.stringify(unavailable.LogGroupName)).toContain('HandlerLogs'); // the API stack's handler log, imported
    const failingOpen = alarms.find((a) => a.MetricName === 'RateLimitUnavailable');
    expect(failingOpen).toMatchObject({ Namespace: 'Clipag/dev', Threshold: 1, EvaluationPeriods: 3, Period: 300, Statistic: 'Sum', TreatMissingData: 'notBreaching' });
    expect(failingOpen.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    const errorLines = filters.find((f) => f.MetricTransformations[0].MetricName === 'WorkerErrorLines');
    expect(errorLines).toMatchObject({ FilterPattern: '{ $.level = "error" }', LogGroupName: { Ref: expect.stringMatching(/^WorkerLogs/) } });
    expect(errorLines.MetricTransformations).toEqual([{ MetricNamespace: 'Clipag/dev', MetricName: 'WorkerErrorLines', MetricValue: '1' }]);
    const waits = filters.find((f) => f.MetricTransformations[0].MetricName === 'OldestQueuedJobSeconds');
    expect(waits).toMatchObject({ FilterPattern: '{ $.msg = "queued-job sweep" }' });
    expect(JSON.stringify(waits.LogGroupName)).toContain('QueuedJobSweeperLogs'); // the API stack's, imported
    expect(waits.MetricTransformations).toEqual([{ MetricNamespace: 'Clipag/dev', MetricName: 'OldestQueuedJobSeconds', MetricValue: '$.oldestQueuedSec', Unit: 'Seconds' }]);
    const errors = alarms.find((a) => a.MetricName === 'WorkerErrorLines');
    expect(errors).toMatchObject({ Namespace: 'Clipag/dev', Threshold: 1, Statistic: 'Sum', TreatMissingData: 'notBreaching' });
    expect(errors.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    // The API handler's and the sweep's error lines page too, through one alarm on their sum, to the same topic.
    const apiLines = filters.find((f) => f.MetricTransformations[0].MetricName === 'ApiErrorLines');
    expect(apiLines).toMatchObject({ FilterPattern: '{ ($.level = "error") && (($.msg != "request failed") || ($.status != 503)) }' });
    expect(JSON.stringify(apiLines.LogGroupName)).toContain('HandlerLogs');
    expect(apiLines.MetricTransformations).toEqual([{ MetricNamespace: 'Clipag/dev', MetricName: 'ApiErrorLines', MetricValue: '1' }]);
    const sweepLines = filters.find((f) => f.MetricTransformations[0].MetricName === 'SweepErrorLines');
    expect(sweepLines).toMatchObject({ FilterPattern: '{ $.level = "error" }' });
    expect(JSON.stringify(sweepLines.LogGroupName)).toContain('QueuedJobSweeperLogs');
    const apiErrors = alarms.filter((a) => /"MetricName":"(ApiErrorLines|SweepErrorLines)"/.test(JSON.stringify(a.Metrics ?? [])));
    expect(apiErrors).toHaveLength(1);
    expect(apiErrors[0]).toMatchObject({ Threshold: 1, EvaluationPeriods: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', TreatMissingData: 'notBreaching' });
    const reads = (apiErrors[0].Metrics as Array<{ Expression?: string; MetricStat?: { Metric: { Namespace: string; MetricName: string }; Stat: string; Period: number } }>);
    expect(reads.find((q) => q.Expression)!.Expression).toBe('FILL(api, 0) + FILL(sweep, 0)');
    expect(reads.filter((q) => q.MetricStat).map((q) => [q.MetricStat!.Metric.Namespace, q.MetricStat!.Metric.MetricName, q.MetricStat!.Stat, q.MetricStat!.Period]).sort()).toEqual([
      ['Clipag/dev', 'ApiErrorLines', 'Sum', 300],
      ['Clipag/dev', 'SweepErrorLines', 'Sum', 300],
    ]);
    expect(apiErrors[0].AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    expect(apiErrors[0].OKActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
  });

  it('alarms when the queued-job sweep stops running (no invocation in 3 sweep periods, missing data breaching) or Lambda drops its events', () => {
    const alarms = resources(worker).filter(([, r]) => r.Type === 'AWS::CloudWatch::Alarm');
    const sweepAlarm = (metricName: string) => {
      const found = alarms.filter(([, a]) => a.Properties.MetricName === metricName && a.Properties.Namespace === 'AWS/Lambda' && JSON.stringify(a.Properties.Dimensions).includes('QueuedJobSweeper'));
      expect(found, metricName).toHaveLength(1);
      return found[0]!;
    };
    // A throttled or dropped invocation, or a disabled schedule, records neither Invocations nor Errors.
    const [notRunningId, notRunning] = sweepAlarm('Invocations');
    expect(notRunning.Properties).toMatchObject({
      Statistic: 'Sum',
      Threshold: 1,
      ComparisonOperator: 'LessThanThreshold',
      Period: dev.queuedJobSweepMinutes * 60,
      EvaluationPeriods: 3,
      TreatMissingData: 'breaching',
    });
    const [droppedId, dropped] = sweepAlarm('AsyncEventsDropped');
    expect(dropped.Properties).toMatchObject({ Statistic: 'Sum', Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', EvaluationPeriods: 1 });
    for (const a of [notRunning, dropped]) {
      expect(a.Properties.AlarmActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
      expect(a.Properties.OKActions).toEqual([{ Ref: expect.stringMatching(/^AlarmsTopic/) }]);
    }
    expect([notRunningId, droppedId]).toEqual([expect.stringMatching(/^AlarmsQueuedJobSweepNotRunning/), expect.stringMatching(/^AlarmsQueuedJobSweepEventsDropped/)]);
    // The existing alarms keep their logical IDs, and so do the spend alarm and the budget (review-ops 2).
    expect(alarms.map(([id]) => id)).toEqual(expect.arrayContaining(['AlarmsQueuedJobSweepErrors4353CE89', 'AlarmsOldestQueuedJob57F197CD', 'AlarmsGpuFleetAtMaxDF00CD0C']));
    expect(Object.keys(worker.toJSON().Resources)).toContain('AlarmsMonthlyBudgetB1B5DE74');
    // The window follows the stage's sweep period, and stays within CloudWatch's one day for sub-hour periods.
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const slow = Template.fromStack(buildClipag(app, stageConfig('dev', { queuedJobSweepMinutes: 10 }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    slow.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'Invocations', Period: 600, EvaluationPeriods: 3, TreatMissingData: 'breaching' });
    // The comment that promised this alarm now points at it.
    const source = readFileSync(path.join(REPO_ROOT, 'cdk', 'lib', 'queue-alarms.ts'), 'utf8');
    expect(source).toContain('QueuedJobSweepNotRunning');
  });

  it("gives every Lambda function a log group with the stage's retention, CDK's own custom-resource provider included", () => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const prod = prodConfig();
    for (const [built, retention] of [[stacks, dev.logRetentionDays], [buildClipag(app, prod, { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }), prod.logRetentionDays]] as const) {
      let providers = 0;
      for (const stack of [built.stateful, built.api, built.worker]) {
        const json = Template.fromStack(stack).toJSON() as { Resources: Record<string, { Type: string; Properties: any }> };
        for (const [id, fn] of Object.entries(json.Resources).filter(([, r]) => r.Type === 'AWS::Lambda::Function')) {
          if (id.startsWith('CustomVpcRestrictDefaultSG')) providers++;
          const ref = fn.Properties.LoggingConfig?.LogGroup?.Ref as string | undefined;
          expect(ref, `${stack.stackName} ${id}`).toBeDefined();
          expect(json.Resources[ref!]).toMatchObject({ Type: 'AWS::Logs::LogGroup', Properties: { RetentionInDays: retention } });
        }
      }
      // The VPC's restrictDefaultSecurityGroup provider is there (the flag is on), and it is covered.
      expect(providers).toBe(1);
    }
    // Its logical ID did not change.
    expect(Object.keys(worker.toJSON().Resources)).toContain('CustomVpcRestrictDefaultSGCustomResourceProviderHandlerDC833E5E');
  });

  it('stages the worker image from the repo root with gpu-worker/Dockerfile, for linux/amd64', () => {
    const assets = JSON.parse(readFileSync(path.join(assemblyDir, `${stacks.worker.artifactId}.assets.json`), 'utf8')) as {
      dockerImages: Record<string, { source: { directory: string; dockerFile?: string; platform?: string } }>;
    };
    const images = Object.values(assets.dockerImages);
    expect(images).toHaveLength(1);
    const { source } = images[0]!;
    expect(source.dockerFile).toBe('gpu-worker/Dockerfile');
    expect(source.platform).toBe('linux/amd64');
    const staged = path.join(assemblyDir, source.directory);
    const top = readdirSync(staged);
    expect(top).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'gpu-worker']));
    expect(existsSync(path.join(staged, 'gpu-worker', 'Dockerfile'))).toBe(true);
    for (const excluded of ['node_modules', 'cdk.out', '.data', '.git', 'test', 'functions', 'cdk']) {
      expect(top, `${excluded} must not be in the build context`).not.toContain(excluded);
    }
  });
});

describe('IAM least privilege (every policy document of every stack)', () => {
  const DATA_SERVICES = /^(s3|sqs|dynamodb):/;

  it('has no Allow statement with a "*" or "service:*" action, and no wildcard action on S3/SQS/DynamoDB', () => {
    const offenders: string[] = [];
    let scanned = 0;
    for (const t of [stateful, api, worker]) {
      for (const { owner, statement } of policyStatements(t)) {
        if (statement.Effect !== 'Allow') continue;
        scanned++;
        if (statement.NotAction) offenders.push(`${owner}: NotAction`);
        for (const action of asArray(statement.Action)) {
          if (action === '*' || /^[a-z0-9-]+:\*$/i.test(action)) offenders.push(`${owner}: ${action}`);
          if (DATA_SERVICES.test(action) && action.includes('*')) offenders.push(`${owner}: ${action}`);
          if (DATA_SERVICES.test(action) && asArray(statement.Resource).includes('*')) offenders.push(`${owner}: ${action} on *`);
        }
      }
    }
    expect(scanned).toBeGreaterThan(5); // the scan really saw the policies
    expect(offenders).toEqual([]);
  });

  /** S3 actions granted to the role whose policy has `ownerPrefix`, as "action prefix" strings. */
  function s3Grants(t: Template, ownerPrefix: string): string[] {
    const out: string[] = [];
    for (const { owner, statement } of policyStatements(t)) {
      if (!owner.startsWith(ownerPrefix) || statement.Effect !== 'Allow') continue;
      for (const action of asArray(statement.Action).filter((a) => a.startsWith('s3:'))) {
        if (action === 's3:ListBucket') {
          // Unconditional on purpose (grantListBucket): S3 says 404 for a missing key only then.
          expect(statement.Condition, `${owner}: s3:ListBucket must not be prefix-conditioned`).toBeUndefined();
          out.push(`${action} WHOLE-BUCKET`);
          continue;
        }
        for (const r of asArray(statement.Resource)) {
          const suffix = JSON.stringify(r).match(/"\/([a-z-]+(?:\/[a-z-]+)*\/\*)"/)?.[1];
          out.push(`${action} ${suffix ?? 'WHOLE-BUCKET'}`);
        }
      }
    }
    return out.sort();
  }

  it('gives the Lambda exactly its prefixes: no deletes but of its pending markers, of outputs (DELETE /v1/generations/{id}), of uploads (DELETE /v1/uploads/{id}) and of the account-set settings (webhook secret, spend limit), no writes to keys/ or outputs/', () => {
    expect(s3Grants(api, 'HandlerServiceRoleDefaultPolicy')).toEqual(
      [
        's3:GetObject jobs/*',
        's3:PutObject jobs/*',
        's3:PutObject pending/*',
        's3:DeleteObject pending/*',
        's3:GetObject keys/*',
        's3:GetObject uploads/*',
        's3:PutObject uploads/*',
        's3:DeleteObject uploads/*',
        's3:GetObject outputs/*',
        's3:DeleteObject outputs/*',
        's3:GetObject models/*',
        's3:GetObject stats/*',
        's3:GetObject usage/*',
        's3:GetObject spend-limits/*',
        's3:PutObject spend-limits/*',
        's3:DeleteObject spend-limits/*',
        's3:GetObject config/*',
        's3:GetObject workers/*',
        's3:GetObject webhook-secrets/*',
        's3:PutObject webhook-secrets/*',
        's3:DeleteObject webhook-secrets/*',
        's3:ListBucket WHOLE-BUCKET',
      ].sort(),
    );
    const lambdaSqs = policyStatements(api)
      .filter(({ owner }) => owner.startsWith('HandlerServiceRoleDefaultPolicy'))
      .flatMap(({ statement }) => asArray(statement.Action))
      .filter((a) => a.startsWith('sqs:'));
    expect(lambdaSqs.sort()).toEqual(['sqs:GetQueueAttributes', 'sqs:SendMessage']);
  });

  it('gives the Lambda exactly GetItem and UpdateItem on the rate-counter table (no index, no other action); nobody else any DynamoDB action', () => {
    const dynamo = (t: Template) =>
      policyStatements(t)
        .filter(({ statement }) => statement.Effect === 'Allow' && asArray(statement.Action).some((a) => a.startsWith('dynamodb:')))
        .map(({ owner, statement }) => ({ owner, actions: asArray(statement.Action).sort(), resources: asArray(statement.Resource).map((r) => JSON.stringify(r)) }));
    const inApi = dynamo(api);
    expect(inApi).toHaveLength(1);
    expect(inApi[0]!.owner).toMatch(/^HandlerServiceRoleDefaultPolicy/);
    expect(inApi[0]!.actions).toEqual(['dynamodb:GetItem', 'dynamodb:UpdateItem']);
    expect(inApi[0]!.resources).toHaveLength(1);
    expect(inApi[0]!.resources[0]).toContain('ClipagRateCountersArn'); // the table's own ARN (a stack output of it)
    expect(inApi[0]!.resources[0]).not.toContain('/index/');
    // The sweeper, the worker and the stateful stack's own policies: none.
    expect(inApi.filter(({ owner }) => owner.startsWith('QueuedJobSweeper'))).toEqual([]);
    expect(dynamo(worker)).toEqual([]);
    expect(dynamo(stateful)).toEqual([]);
  });

  it('gives the queued-job sweeper records, the pending markers (delete, and put back when a job was re-queued meanwhile), the images of a job it expires (delete) and send; nothing else', () => {
    expect(s3Grants(api, 'QueuedJobSweeperServiceRoleDefaultPolicy')).toEqual(
      ['s3:GetObject jobs/*', 's3:PutObject jobs/*', 's3:PutObject pending/*', 's3:DeleteObject pending/*', 's3:GetObject outputs/*', 's3:DeleteObject outputs/*', 's3:GetObject webhook-secrets/*', 's3:ListBucket WHOLE-BUCKET'].sort(),
    );
    const sqs = policyStatements(api)
      .filter(({ owner }) => owner.startsWith('QueuedJobSweeperServiceRoleDefaultPolicy'))
      .flatMap(({ statement }) => asArray(statement.Action))
      .filter((a) => a.startsWith('sqs:'));
    expect(sqs.sort()).toEqual(['sqs:GetQueueAttributes', 'sqs:SendMessage']);
  });

  it("prod's API holds a Prefer: wait up to 26 s (a warm 100-step job takes about 14 s; ADR 0024's addendum), dev's 12 s; both under API Gateway's 30 s", () => {
    const { app: app4, cleanup: cleanup4 } = testApp();
    cleanups.push(cleanup4);
    const prodApi = Template.fromStack(buildClipag(app4, prodConfig(), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).api);
    const handler = (t: Template) => Object.entries(t.findResources('AWS::Lambda::Function')).find(([id]) => id.startsWith('Handler'))![1] as { Properties: { Timeout: number; Environment: { Variables: Record<string, string> } } };
    expect([handler(prodApi).Properties.Timeout, handler(prodApi).Properties.Environment.Variables[ENV.maxWaitSec]]).toEqual([29, '26']);
    expect([handler(api).Properties.Timeout, handler(api).Properties.Environment.Variables[ENV.maxWaitSec]]).toEqual([15, '12']);
  });

  it('with a record retention (ADR 0037): the sweeper gets its days and its progress document (retention/), nothing more; the handler neither', () => {
    const { app: app3, cleanup: cleanup3 } = testApp();
    cleanups.push(cleanup3);
    const withRetention = Template.fromStack(buildClipag(app3, stageConfig('dev', { recordRetentionDays: 90 }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).api);
    expect(s3Grants(withRetention, 'QueuedJobSweeperServiceRoleDefaultPolicy')).toEqual(
      ['s3:GetObject jobs/*', 's3:PutObject jobs/*', 's3:PutObject pending/*', 's3:DeleteObject pending/*', 's3:GetObject outputs/*', 's3:DeleteObject outputs/*', 's3:GetObject webhook-secrets/*', 's3:GetObject retention/*', 's3:PutObject retention/*', 's3:ListBucket WHOLE-BUCKET'].sort(),
    );
    const fns = Object.entries(withRetention.findResources('AWS::Lambda::Function')) as Array<[string, { Properties: { Environment: { Variables: Record<string, string> } } }]>;
    const env = (name: string) => fns.find(([id]) => id.startsWith(name))![1].Properties.Environment.Variables;
    expect(env('QueuedJobSweeper')[ENV.recordRetention]).toBe('90');
    expect(env('Handler')[ENV.recordRetention]).toBeUndefined();
    // The default (dev and prod): kept until the customer deletes it, and no grant for it.
    expect([dev.recordRetentionDays, prodConfig().recordRetentionDays]).toEqual([null, null]);
    expect(JSON.stringify(api.toJSON())).not.toContain(ENV.recordRetention);
    for (const bad of [0, 1.5, 3651]) expect(() => stageConfig('dev', { recordRetentionDays: bad })).toThrow(/recordRetentionDays must be null/);
  });

  it('gives the worker task role its prefixes and queue consumption only; it cannot read API keys', () => {
    const grants = s3Grants(worker, 'WorkerTaskDefinitionTaskRoleDefaultPolicy');
    expect(grants).toEqual(
      [
        's3:GetObject jobs/*',
        's3:PutObject jobs/*',
        's3:GetObject outputs/*',
        's3:PutObject outputs/*',
        's3:DeleteObject outputs/*',
        's3:GetObject uploads/*',
        's3:GetObject models/*',
        's3:GetObject config/*',
        's3:GetObject stats/*',
        's3:PutObject stats/*',
        's3:GetObject usage/*',
        's3:PutObject usage/*',
        's3:DeleteObject pending/active/*',
        's3:PutObject pending/outputs/*',
        's3:DeleteObject pending/outputs/*',
        's3:PutObject workers/*',
        's3:DeleteObject workers/*',
        's3:GetObject webhook-secrets/*',
        's3:ListBucket WHOLE-BUCKET',
      ].sort(),
    );
    expect(grants.some((g) => g.includes(BUCKET_PREFIXES.keys))).toBe(false);
    const sqsByResource = policyStatements(worker)
      .filter(({ owner }) => owner.startsWith('WorkerTaskDefinitionTaskRoleDefaultPolicy'))
      .filter(({ statement }) => asArray(statement.Action).some((a) => a.startsWith('sqs:')))
      .map(({ statement }) => ({ actions: asArray(statement.Action).sort(), resource: JSON.stringify(statement.Resource) }));
    const onQueue = sqsByResource.find((s) => s.resource.includes('ClipagJobQueueArn'));
    const onDlq = sqsByResource.find((s) => s.resource.includes('ClipagJobDeadLetterQueueArn'));
    // SendMessage on the job queue: a drain gives its message back as a fresh copy.
    expect(onQueue?.actions).toEqual(['sqs:ChangeMessageVisibility', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage', 'sqs:SendMessage']);
    // Receive and release on the DLQ: the dead-letter sweep reads it; no delete (the alarm counts it).
    expect(onDlq?.actions).toEqual(['sqs:ChangeMessageVisibility', 'sqs:GetQueueAttributes', 'sqs:ReceiveMessage', 'sqs:SendMessage']);
    expect(sqsByResource).toHaveLength(2);
    // Scale-in protection of its own task while it holds a job: only tasks of this cluster.
    const ecsStatements = policyStatements(worker)
      .filter(({ owner }) => owner.startsWith('WorkerTaskDefinitionTaskRoleDefaultPolicy'))
      .filter(({ statement }) => asArray(statement.Action).some((a) => a.startsWith('ecs:')));
    expect(ecsStatements).toHaveLength(1);
    expect(asArray(ecsStatements[0].statement.Action).sort()).toEqual(['ecs:GetTaskProtection', 'ecs:UpdateTaskProtection']);
    expect(JSON.stringify(ecsStatements[0].statement.Resource)).toMatch(/:task\/".*\{"Ref":"Cluster[A-Za-z0-9]*"\}.*"\/\*"/);
  });
});

describe('environment contract with shared/config.ts', () => {
  it('sets only variables that the processes\' config parser reads (plus two informational ones)', async () => {
    const { ENV_VARS } = (await import('../../shared/config.ts')) as { ENV_VARS: Record<string, string> };
    const informational = new Set<string>([ENV.stage, ENV.stopTimeout]);
    // The handler's: a superset of the sweeper's (it alone has the rate limits' four: the table and three limits).
    const fn = resources(api).find(([id, r]) => id.startsWith('Handler') && r.Type === 'AWS::Lambda::Function')![1];
    const td = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')![1];
    const lambdaNames = Object.keys(fn.Properties.Environment.Variables).filter((n) => n !== 'NODE_OPTIONS');
    const workerNames = (td.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string }>).map((e) => e.Name);
    const unknown = [...lambdaNames, ...workerNames].filter((n) => !informational.has(n) && !(n in ENV_VARS));
    expect(unknown).toEqual([]);
  });
});

describe('every process starts with the environment the CDK gives it (its own parser, shared/config.ts)', () => {
  /** Stand-ins for the references, by name: any other variable must be a literal the stage table gave. */
  const REFERENCE_STAND_INS: Record<string, string> = {
    [ENV.bucket]: 'clipag-dev-bucket-abc123',
    [ENV.queueUrl]: 'https://sqs.eu-west-1.amazonaws.com/123456789012/clipag-jobs',
    [ENV.dlqUrl]: 'https://sqs.eu-west-1.amazonaws.com/123456789012/clipag-dlq',
    [ENV.rateTable]: 'Clipag-dev-Stateful-ClipagRateCounters-ABC',
    [ENV.region]: 'eu-west-1',
  };
  const literal = (name: string, value: unknown): string => {
    if (typeof value === 'string') return value;
    expect(REFERENCE_STAND_INS[name], `${name} is a reference (${JSON.stringify(value)}), not a value from the stage table`).toBeDefined();
    return REFERENCE_STAND_INS[name]!;
  };
  /** Each process's environment as synthesized: the two functions' (with the AWS_REGION the Lambda runtime adds) and the worker task's. */
  function synthesizedEnvs(built: ClipagStacks): Record<'api' | 'sweep' | 'worker', Record<string, string>> {
    const apiResources = resources(Template.fromStack(built.api));
    const fnEnv = (prefix: string) => {
      const [, fn] = apiResources.find(([id, r]) => id.startsWith(prefix) && r.Type === 'AWS::Lambda::Function')!;
      const vars = fn.Properties.Environment.Variables as Record<string, unknown>;
      expect(vars[ENV.region], 'Lambda reserves AWS_REGION').toBeUndefined();
      return { ...Object.fromEntries(Object.entries(vars).map(([k, v]) => [k, literal(k, v)])), [ENV.region]: 'eu-west-1' };
    };
    const [, td] = resources(Template.fromStack(built.worker)).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')!;
    const workerVars = td.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string; Value: unknown }>;
    return { api: fnEnv('Handler'), sweep: fnEnv('QueuedJobSweeper'), worker: Object.fromEntries(workerVars.map((e) => [e.Name, literal(e.Name, e.Value)])) };
  }
  /** Parses each as its composition root does at start (functions/lambda.ts and sweep-lambda.ts: awsConfig; gpu-worker/main.ts: parseConfig), and checks what the stage asked for arrived. */
  async function expectEveryProcessStarts(built: ClipagStacks, cfg: StageConfig): Promise<void> {
    const { awsConfig } = await import('../../functions/deps/aws.ts');
    const { parseConfig, settingWarnings } = await import('../../shared/config.ts');
    const envs = synthesizedEnvs(built);
    for (const [role, env] of Object.entries(envs)) {
      const warnings: string[] = [];
      let config;
      try {
        config = role === 'worker' ? parseConfig(env) : awsConfig(env, (line) => warnings.push(line));
      } catch (error) {
        throw new Error(`${role} would refuse its synthesized environment: ${(error as Error).message}`);
      }
      expect(warnings, role).toEqual([]);
      expect(settingWarnings(env), role).toEqual([]);
      expect(config, role).toMatchObject({
        mode: 'aws',
        visibilityTimeoutSec: cfg.visibilityTimeoutSeconds,
        // The 12-hour rule (job timeout + visibility timeout) is checked against the stage's own job timeout in every process.
        jobTimeoutSec: cfg.jobTimeoutSeconds,
        outputRetentionDays: cfg.outputRetentionDays,
        signedUrlTtlSec: cfg.signedUrlTtlSeconds,
        workerHourlyUsd: cfg.workerHourlyUsd,
        webhookPorts: [...new Set(cfg.webhookPorts)],
        defaultModel: cfg.defaultModel,
      });
      if (role !== 'worker') expect(config, role).toMatchObject({ queueRetentionSec: cfg.queueRetentionDays * 86_400, maxActiveJobs: cfg.maxActiveJobsPerAccount, maxWaitSec: cfg.lambdaTimeoutSeconds - 3 });
      if (role === 'api') expect(config, role).toMatchObject({ rateLimitPerMin: cfg.rateLimitPerMinute, uploadsPerHour: cfg.uploadsPerHour, maxWaits: cfg.maxWaitsPerAccount });
    }
  }
  const build = (cfg: StageConfig): ClipagStacks => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    return buildClipag(app, cfg, { lambdaEntry: LAMBDA_STUB, workerImage: stubImage });
  };

  it('dev and prod as shipped', async () => {
    await expectEveryProcessStarts(stacks, dev);
    await expectEveryProcessStarts(build(prodConfig()), prodConfig());
  });

  it('the upper bounds of the stage table: ten years of outputs, a 40000 s visibility timeout with a 3000 s job timeout, the widest limits', async () => {
    const high = stageConfig('dev', {
      outputRetentionDays: 3650,
      visibilityTimeoutSeconds: 40_000,
      jobTimeoutSeconds: 3_000,
      signedUrlTtlSeconds: 43_200,
      maxActiveJobsPerAccount: 1000,
      rateLimitPerMinute: 1_000_000,
      uploadsPerHour: 1_000_000,
      maxWaitsPerAccount: 1_000_000,
      lambdaTimeoutSeconds: 29,
      queueRetentionDays: 14,
      uploadRetentionDays: 3650,
      webhookPorts: [1, 443, 65535],
      workerHourlyUsd: 1000,
    });
    await expectEveryProcessStarts(build(high), high);
  });

  it('the lower bounds: one day of outputs, a 43199 s visibility timeout with a 1 s job timeout, no limits, a free worker', async () => {
    const low = stageConfig('dev', {
      outputRetentionDays: 1,
      visibilityTimeoutSeconds: 43_199,
      jobTimeoutSeconds: 1,
      signedUrlTtlSeconds: 1,
      maxActiveJobsPerAccount: 1,
      rateLimitPerMinute: 0,
      uploadsPerHour: 0,
      maxWaitsPerAccount: 0,
      lambdaTimeoutSeconds: 15,
      queueRetentionDays: 1,
      uploadRetentionDays: 2,
      workerHourlyUsd: 0,
    });
    await expectEveryProcessStarts(build(low), low);
  });

  it('synth refuses what a process would refuse at start, naming the stage field and the processes (never a deploy that succeeds, then fails every start)', () => {
    for (const days of [3651, 3653]) {
      // 3653 is CloudWatch's ten-year option: a plausible value to copy, which the processes cap at 3650.
      expect(() => stageConfig('dev', { outputRetentionDays: days }), String(days)).toThrow(
        /outputRetentionDays: the API Lambda, the queued-job sweep Lambda and the GPU worker task would refuse to start with it, after a deploy that succeeds \(CLIPAG_OUTPUT_RETENTION_DAYS: /,
      );
    }
    // A price the table's own check takes (in [0, 1000]) but the processes do not (decimal digits only: String(1e-7) is "1e-7").
    expect(() => stageConfig('dev', { workerHourlyUsd: 1e-7 })).toThrow(/workerHourlyUsd: the API Lambda, the queued-job sweep Lambda and the GPU worker task would refuse to start with it.*CLIPAG_WORKER_HOURLY_USD/);
    // One past 12 hours: said once, by the table's own check (the processes' parser says the same of CLIPAG_JOB_TIMEOUT_SEC).
    let message = '';
    try {
      stageConfig('dev', { visibilityTimeoutSeconds: 43_199, jobTimeoutSeconds: 2 });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/jobTimeoutSeconds \+ visibilityTimeoutSeconds must be <= 43200/);
    expect(message.split('\n').filter((line) => line.startsWith('  - '))).toHaveLength(1);
    // A StageConfig made by hand, past stageConfig: buildClipag checks it before building anything.
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    expect(() => buildClipag(app, { ...dev, outputRetentionDays: 5000 }, { lambdaEntry: LAMBDA_STUB, workerImage: stubImage })).toThrow(/outputRetentionDays: .*CLIPAG_OUTPUT_RETENTION_DAYS/);
  });
});

describe('stage config', () => {
  it('defaults to g5.xlarge and fails fast on unknown stages or bad values', () => {
    expect(dev.instanceTypes[0]).toBe('g5.xlarge');
    expect(prodConfig().useSpot).toBe(false);
    // Prod alarms must reach someone; an address must be one.
    expect(() => stageConfig('prod')).toThrow(/alarmEmail is required in prod/);
    expect(() => stageConfig('dev', { alarmEmail: 'ops at example' })).toThrow(/alarmEmail is not an e-mail address/);
    expect(() => stageConfig('staging')).toThrow(/Unknown stage "staging"/);
    expect(() => stageConfig('dev', { stopTimeoutSeconds: 30 })).toThrow(/stopTimeoutSeconds/);
    expect(() => stageConfig('dev', { lambdaTimeoutSeconds: 60 })).toThrow(/lambdaTimeoutSeconds/);
    expect(() => stageConfig('dev', { lambdaTimeoutSeconds: 6 })).toThrow(/lambdaTimeoutSeconds must be >= 15/);
    // A POST may spend 10 s fetching an init image from a URL (ADR 0038): a 10-14 s Lambda would be killed mid-request.
    expect(() => stageConfig('dev', { lambdaTimeoutSeconds: 14 })).toThrow(/lambdaTimeoutSeconds must be >= 15 \(a POST may spend 10 s fetching an init image/);
    expect(() => stageConfig('dev', { logRetentionDays: 10 })).toThrow(/logRetentionDays/);
    expect(() => stageConfig('dev', { uploadRetentionDays: 4 })).toThrow(/uploadRetentionDays must be > queueRetentionDays/);
    expect(() => stageConfig('dev', { maxInstances: 0 })).toThrow(/maxInstances/);
    expect(() => stageConfig('dev', { jobTimeoutSeconds: 43_000 })).toThrow(/jobTimeoutSeconds \+ visibilityTimeoutSeconds must be <= 43200/);
    expect(() => stageConfig('dev', { queuedJobSweepMinutes: 361 })).toThrow(/queuedJobSweepMinutes must be <= 360/);
    expect(() => stageConfig('dev', { maxActiveJobsPerAccount: 5000 })).toThrow(/maxActiveJobsPerAccount/);
  });

  it('bounds lambdaMemoryMiB to Lambda\'s 128-10240, scaleInAfterIdleMinutes to a day of 1-minute periods, and a Spot stop timeout to the two-minute notice', () => {
    for (const ok of [128, 10_240]) expect(stageConfig('dev', { lambdaMemoryMiB: ok }).lambdaMemoryMiB).toBe(ok);
    for (const bad of [64, 127, 10_241, 16_384]) expect(() => stageConfig('dev', { lambdaMemoryMiB: bad }), String(bad)).toThrow(/lambdaMemoryMiB must be in \[128, 10240\]/);
    // The scale-in alarm: one evaluation period (and datapoint) per idle minute, each of 60 s.
    expect(stageConfig('dev', { scaleInAfterIdleMinutes: 1440 }).scaleInAfterIdleMinutes).toBe(1440);
    expect(() => stageConfig('dev', { scaleInAfterIdleMinutes: 1441 })).toThrow(/scaleInAfterIdleMinutes must be <= 1440/);
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const longest = Template.fromStack(buildClipag(app, stageConfig('dev', { scaleInAfterIdleMinutes: 1440 }), { lambdaEntry: LAMBDA_STUB, workerImage: stubImage }).worker);
    const scaleIn = resources(longest).find(([id, r]) => r.Type === 'AWS::CloudWatch::Alarm' && /LowerAlarm/.test(id))![1].Properties;
    // Where the bound comes from: period × evaluation periods at most 86400 s for a period under an hour.
    expect(scaleIn.EvaluationPeriods * scaleIn.Metrics.find((m: { MetricStat?: { Period: number } }) => m.MetricStat)!.MetricStat.Period).toBe(86_400);
    // Spot: the instance is gone two minutes after the notice, so a longer stop timeout is never honoured.
    expect(dev.useSpot).toBe(true);
    expect(() => stageConfig('dev', { stopTimeoutSeconds: 121 })).toThrow(/stopTimeoutSeconds must be <= 120 with useSpot/);
    expect(stageConfig('dev', { stopTimeoutSeconds: 120 }).stopTimeoutSeconds).toBe(120);
    expect(stageConfig('prod', { alarmEmail: 'ops@example.com', stopTimeoutSeconds: 300 }).stopTimeoutSeconds).toBe(300); // on-demand: no notice
  });

  it('bounds rootVolumeGiB below by the GPU AMI\'s 30 GiB root snapshot (a smaller volume fails every launch) and above by gp3\'s 16 TiB', () => {
    for (const ok of [30, 16_384]) expect(stageConfig('dev', { rootVolumeGiB: ok }).rootVolumeGiB).toBe(ok);
    for (const bad of [8, 29, 16_385]) expect(() => stageConfig('dev', { rootVolumeGiB: bad }), String(bad)).toThrow(/rootVolumeGiB must be in \[30, 16384\]/);
  });

  it('fits the task on every instance type it may run on, from a table of one-GPU types, and refuses a type it does not know', () => {
    // Today's shape fits g5.xlarge and g4dn.xlarge (4 vCPU, 16 GiB).
    expect(dev.taskCpuUnits).toBeLessThanOrEqual(4096);
    expect(() => stageConfig('dev', { instanceTypes: ['g4dn.xlarge', 'g4dn.2xlarge', 'g5.xlarge', 'g5.2xlarge', 'g6.xlarge', 'g6.2xlarge'] })).not.toThrow();
    // The nominal 16 GiB cannot be placed: ECS registers less than the instance's memory.
    expect(() => stageConfig('dev', { taskMemoryMiB: 16_384 })).toThrow(/taskMemoryMiB must be <= \d+ \(the memory ECS can place on g5\.xlarge/);
    expect(() => stageConfig('dev', { taskCpuUnits: 4097 })).toThrow(/taskCpuUnits must be <= 4096 \(what ECS registers for g5\.xlarge\)/);
    // Larger types allow larger tasks, but every type in the list must fit it (Spot may launch any).
    const big = { taskCpuUnits: 7168, taskMemoryMiB: 28_672 };
    expect(stageConfig('prod', { alarmEmail: 'ops@example.com', instanceTypes: ['g5.2xlarge', 'g6.2xlarge'], ...big }).taskMemoryMiB).toBe(28_672);
    expect(() => stageConfig('dev', { instanceTypes: ['g5.2xlarge', 'g4dn.xlarge'], ...big })).toThrow(/taskCpuUnits must be <= 4096 \(what ECS registers for g4dn\.xlarge\)[\s\S]*taskMemoryMiB must be <= \d+ \(the memory ECS can place on g4dn\.xlarge/);
    // A type with no figures is refused by name, with the known ones listed.
    expect(() => stageConfig('dev', { instanceTypes: ['p5.48xlarge'] })).toThrow(/unknown instance type "p5\.48xlarge"; known one-GPU types: .*g5\.xlarge/);
  });

  it('limits each account to 300 requests a minute in dev, 600 in prod; 0 turns it off, and nothing but an integer in [0, 1000000] passes', () => {
    expect(dev.rateLimitPerMinute).toBe(300);
    expect(prodConfig().rateLimitPerMinute).toBe(600);
    expect(stageConfig('dev', { rateLimitPerMinute: 0 }).rateLimitPerMinute).toBe(0);
    expect(stageConfig('dev', { rateLimitPerMinute: 1_000_000 }).rateLimitPerMinute).toBe(1_000_000);
    for (const bad of [-1, 1.5, 1_000_001, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => stageConfig('dev', { rateLimitPerMinute: bad }), String(bad)).toThrow(/rateLimitPerMinute must be an integer in \[0, 1000000\]/);
    }
    expect(() => stageConfig('dev', { rateLimitPerMinute: '300' as unknown as number })).toThrow(/rateLimitPerMinute/);
    // Uploads per hour and holds per longest wait: the same rule.
    expect([dev.uploadsPerHour, prodConfig().uploadsPerHour, dev.maxWaitsPerAccount, prodConfig().maxWaitsPerAccount]).toEqual([60, 300, 6, 12]);
    expect(() => stageConfig('dev', { uploadsPerHour: -1 })).toThrow(/uploadsPerHour must be an integer in \[0, 1000000\]/);
    expect(() => stageConfig('dev', { maxWaitsPerAccount: 2.5 })).toThrow(/maxWaitsPerAccount must be an integer in \[0, 1000000\]/);
  });

  it('passes the job time limit to the workers and the active-job and rate limits to the API (the processes\' own parser reads them)', async () => {
    const { parseConfig } = await import('../../shared/config.ts');
    const td = resources(worker).find(([, r]) => r.Type === 'AWS::ECS::TaskDefinition')![1];
    const env = Object.fromEntries((td.Properties.ContainerDefinitions[0].Environment as Array<{ Name: string; Value: unknown }>).map((e) => [e.Name, e.Value]));
    expect(env[ENV.jobTimeout]).toBe(String(dev.jobTimeoutSeconds));
    const fn = resources(api).find(([id, r]) => id.startsWith('Handler') && r.Type === 'AWS::Lambda::Function')![1];
    expect(fn.Properties.Environment.Variables[ENV.maxActiveJobs]).toBe(String(dev.maxActiveJobsPerAccount));
    const parsed = parseConfig({
      CLIPAG_MODE: 'local',
      [ENV.jobTimeout]: env[ENV.jobTimeout] as string,
      [ENV.maxActiveJobs]: fn.Properties.Environment.Variables[ENV.maxActiveJobs],
      [ENV.rateLimitPerMin]: fn.Properties.Environment.Variables[ENV.rateLimitPerMin],
      [ENV.uploadsPerHour]: fn.Properties.Environment.Variables[ENV.uploadsPerHour],
      [ENV.maxWaits]: fn.Properties.Environment.Variables[ENV.maxWaits],
    });
    expect(parsed).toMatchObject({
      jobTimeoutSec: dev.jobTimeoutSeconds,
      maxActiveJobs: dev.maxActiveJobsPerAccount,
      rateLimitPerMin: dev.rateLimitPerMinute,
      uploadsPerHour: dev.uploadsPerHour,
      maxWaits: dev.maxWaitsPerAccount,
    });
  });
});
