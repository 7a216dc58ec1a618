import type { App, StackProps } from 'aws-cdk-lib';
import { Aspects, Tags } from 'aws-cdk-lib';
import type * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as logs from 'aws-cdk-lib/aws-logs';
import { ApiStack } from './api-stack.ts';
import { assertProcessesStart, type StageConfig } from './config.ts';
import { FunctionLogRetention } from './function-log-retention.ts';
import { StatefulStack } from './stateful-stack.ts';
import { WorkerStack } from './worker-stack.ts';

export interface ClipagStacks {
  readonly stateful: StatefulStack;
  readonly api: ApiStack;
  readonly worker: WorkerStack;
}

export interface ClipagOptions {
  /** Passed through to every stack (e.g. an explicit `env`); default: environment-agnostic. */
  readonly stackProps?: StackProps;
  /** Replace the worker image (tests); default builds gpu-worker/Dockerfile. */
  readonly workerImage?: ecs.ContainerImage;
  /** Replace both Lambda entries (tests); default functions/lambda.ts and functions/sweep-lambda.ts. */
  readonly lambdaEntry?: string;
}

/** Builds the three stacks of one stage. Shared by cdk/bin/app.ts and the tests. */
export function buildClipag(app: App, config: StageConfig, options: ClipagOptions = {}): ClipagStacks {
  // stageConfig has checked this already; a StageConfig built by hand has not.
  assertProcessesStart(config);
  const prefix = `Clipag-${config.stage}`;
  const base = options.stackProps ?? {};

  const stateful = new StatefulStack(app, `${prefix}-Stateful`, {
    ...base,
    description: `clipag ${config.stage}: bucket, job queue and DLQ (retained on delete), rate-limit counters`,
    terminationProtection: config.stage === 'prod',
    config,
  });
  const api = new ApiStack(app, `${prefix}-Api`, {
    ...base,
    description: `clipag ${config.stage}: HTTP API and Lambda`,
    config,
    bucket: stateful.bucket,
    queue: stateful.queue,
    rateCounters: stateful.rateCounters,
    entry: options.lambdaEntry,
    sweepEntry: options.lambdaEntry,
  });
  const worker = new WorkerStack(app, `${prefix}-Worker`, {
    ...base,
    description: `clipag ${config.stage}: GPU worker fleet on ECS, queue alarms, dashboard`,
    config,
    bucket: stateful.bucket,
    queue: stateful.queue,
    deadLetterQueue: stateful.deadLetterQueue,
    image: options.workerImage,
    queuedJobSweep: { fn: api.sweeper, logGroup: api.sweeperLogGroup },
    httpApi: api.httpApi,
    apiHandler: { fn: api.handler, logGroup: api.handlerLogGroup },
    apiAccessLogGroup: api.accessLogGroup,
  });

  // `cdk deploy --all` updates the API stack before the worker stack. Not an order left to choose: the
  // worker stack's alarms and dashboard read the API stack's functions, log groups and HTTP API, so it
  // depends on the API stack anyway (the other way round is a cycle). It puts the reader first for what
  // the worker writes and the API reads (outputs, usage, status, warnings), and the writer first for what
  // the API writes and the worker reads (the spec, queue messages). No order is safe both ways, and a
  // rollback of either side (the ECS circuit breaker, the API's alias) leaves any mix of versions running.
  // So the rule is two-phase (ADR 0002): first every reader tolerates what a newer writer adds (unknown
  // keys, versions and enum values); a later release, or a flag turned on once every worker runs the
  // reader, writes it. Meanwhile a worker handed what it cannot read yet releases it without counting a
  // delivery, and the job waits (the queued-wait alarm) rather than fails.
  worker.addStackDependency(api, "the worker stack's alarms and dashboard read the API stack; the API reads what the worker writes");

  for (const stack of [stateful, api, worker]) {
    Tags.of(stack).add('project', 'clipag');
    Tags.of(stack).add('stage', config.stage);
    // CDK's own custom-resource providers (the VPC's default-SG handler) name no log group: give them one that expires.
    Aspects.of(stack).add(new FunctionLogRetention(config.logRetentionDays as logs.RetentionDays));
  }
  return { stateful, api, worker };
}
