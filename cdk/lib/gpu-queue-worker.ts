import { Duration, RemovalPolicy, Size, Stack } from 'aws-cdk-lib';
import * as appscaling from 'aws-cdk-lib/aws-applicationautoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { grantConsume } from './grants.ts';

export interface GpuQueueWorkerProps {
  readonly cluster: ecs.ICluster;
  /** Capacity provider over the GPU Auto Scaling group; instances follow the tasks. */
  readonly capacityProvider: ecs.AsgCapacityProvider;
  readonly image: ecs.ContainerImage;
  readonly queue: sqs.IQueue;
  readonly environment: Record<string, string>;
  /** Upper bound on tasks (one GPU each). */
  readonly maxTasks: number;
  /** Backlog one task absorbs before another is added. */
  readonly jobsPerTask: number;
  /** Minutes of empty backlog (nothing visible, nothing in flight) before scaling to zero. */
  readonly scaleInAfterIdleMinutes: number;
  readonly cpuUnits: number;
  readonly memoryMiB: number;
  readonly stopTimeout: Duration;
  readonly logRetention: logs.RetentionDays;
}

/**
 * An ECS service of one-GPU tasks that consumes an SQS queue and scales with its backlog,
 * all the way down to zero tasks (and, through the capacity provider, zero instances) and
 * back up from zero.
 *
 * Backlog = ApproximateNumberOfMessagesVisible + ApproximateNumberOfMessagesNotVisible.
 * Counting in-flight messages matters: a task that is halfway through a job holds its
 * message invisible, and scaling on visible messages alone would stop that task.
 */
export class GpuQueueWorker extends Construct {
  readonly taskDefinition: ecs.Ec2TaskDefinition;
  readonly container: ecs.ContainerDefinition;
  readonly service: ecs.Ec2Service;
  readonly taskRole: iam.IRole;
  /** The worker's JSON log lines (one per event; `level` is debug, info, warn or error). */
  readonly logGroup: logs.LogGroup;
  readonly backlog: cloudwatch.MathExpression;
  readonly scalingPolicy: appscaling.StepScalingPolicy;

  constructor(scope: Construct, id: string, props: GpuQueueWorkerProps) {
    super(scope, id);

    // Bridge networking: tasks use the instance's public address in the public subnet.
    // (awsvpc on EC2 gives a task its own ENI without a public IP, which would need a NAT.)
    this.taskDefinition = new ecs.Ec2TaskDefinition(this, 'TaskDefinition', {
      networkMode: ecs.NetworkMode.BRIDGE,
    });
    this.taskRole = this.taskDefinition.taskRole;
    // Each deploy that changes the task registers a new revision, and CloudFormation then deregisters the
    // one before; ECS moves no service back to a deregistered (INACTIVE) revision. Kept ACTIVE (they cost
    // nothing), the fleet rolls back in seconds with `aws ecs update-service --task-definition
    // <family>:<revision>`: the breaker below cannot, while the service is at zero tasks (nothing starts
    // during the deploy, so a broken image shows only once work arrives). Retained on the stack's
    // deletion too (CloudFormation's validation asks for both policies): the last revision outlives a
    // destroyed stack, ACTIVE and free, until deregistered by hand.
    this.taskDefinition.applyRemovalPolicy(RemovalPolicy.RETAIN);

    const logGroup = new logs.LogGroup(this, 'Logs', { retention: props.logRetention });
    this.logGroup = logGroup;
    this.container = this.taskDefinition.addContainer('worker', {
      image: props.image,
      gpuCount: 1,
      cpu: props.cpuUnits,
      memoryLimitMiB: props.memoryMiB,
      environment: props.environment,
      // ECS sends SIGTERM, waits this long, then SIGKILLs: the worker drains inside it.
      stopTimeout: props.stopTimeout,
      // Non-blocking: a CloudWatch Logs that stalls fills this buffer (then drops lines) instead of
      // blocking the process's stdout writes, and with them its heartbeats and progress writes.
      logging: ecs.LogDrivers.awsLogs({ streamPrefix: 'worker', logGroup, mode: ecs.AwsLogDriverMode.NON_BLOCKING, maxBufferSize: Size.mebibytes(8) }),
    });

    this.service = new ecs.Ec2Service(this, 'Service', {
      cluster: props.cluster,
      taskDefinition: this.taskDefinition,
      // Autoscaling owns the count. CloudFormation only re-applies this when the template
      // value changes, so later deploys do not reset a scaled-out service.
      desiredCount: 0,
      capacityProviderStrategies: [{ capacityProvider: props.capacityProvider.capacityProviderName, weight: 1 }],
      // Old tasks may stop before their replacements run. A busy task is kept by its task
      // protection, and an idle one stopping (SIGTERM) gives nothing back that matters. With 100 %,
      // a Spot-draining instance's task waits for a replacement (a new GPU instance and a
      // multi-GB pull, far past the two-minute notice), and a deploy at maxInstances waits for
      // capacity the group cannot add.
      minHealthyPercent: 0,
      maxHealthyPercent: 200,
      // Rolls back a deploy whose new tasks fail to start, but only tasks that run during it: at zero
      // tasks (the idle fleet) the deploy completes with none started. A broken image then shows with
      // the first job (the task-stopped notice, the failure-share and queued-wait alarms) and is rolled
      // back by hand to a kept revision (above).
      circuitBreaker: { enable: true, rollback: true },
    });
    // The service must not be created before the cluster's capacity-provider association,
    // or the first deployment fails with "capacity provider not associated".
    this.service.node.addDependency(props.cluster);

    grantConsume(this.taskRole, props.queue);
    // Scale-in sets exact task counts, so a shrinking backlog may stop any task: a worker holding
    // a job protects its own task through the ECS agent (gpu-worker/worker/task-protection.ts).
    this.taskRole.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['ecs:GetTaskProtection', 'ecs:UpdateTaskProtection'],
        resources: [Stack.of(this).formatArn({ service: 'ecs', resource: 'task', resourceName: `${props.cluster.clusterName}/*` })],
      }),
    );

    const period = Duration.minutes(1);
    this.backlog = new cloudwatch.MathExpression({
      label: 'Backlog (visible + in flight)',
      expression: 'FILL(visible, 0) + FILL(inFlight, 0)',
      usingMetrics: {
        visible: props.queue.metricApproximateNumberOfMessagesVisible({ period, statistic: 'Maximum' }),
        inFlight: props.queue.metricApproximateNumberOfMessagesNotVisible({ period, statistic: 'Maximum' }),
      },
      period,
    });

    const scalable = this.service.autoScaleTaskCount({ minCapacity: 0, maxCapacity: props.maxTasks });
    scalable.scaleOnMetric('BacklogScaling', {
      metric: this.backlog,
      adjustmentType: appscaling.AdjustmentType.EXACT_CAPACITY,
      scalingSteps: backlogSteps(props.maxTasks, props.jobsPerTask),
      evaluationPeriods: 1,
      metricAggregationType: appscaling.MetricAggregationType.MAXIMUM,
      cooldown: Duration.minutes(1),
    });

    // ScalableTaskCount.scaleOnMetric returns nothing; the policy is found in the tree so
    // its two alarms can be tuned below.
    const policy = scalable.node.findAll().find((c) => c instanceof appscaling.StepScalingPolicy);
    if (!(policy instanceof appscaling.StepScalingPolicy)) throw new Error('backlog step scaling policy not found');
    this.scalingPolicy = policy;
    const { lowerAlarm, upperAlarm } = policy;
    if (!lowerAlarm || !upperAlarm) throw new Error('backlog scaling needs both a scale-in and a scale-out alarm');
    // SQS stops publishing metrics for a queue that has been idle for hours. Missing data
    // therefore means "no backlog": it must keep the scale-in alarm firing and must never
    // trigger scale-out.
    const scaleIn = lowerAlarm.node.defaultChild as cloudwatch.CfnAlarm;
    scaleIn.treatMissingData = cloudwatch.TreatMissingData.BREACHING;
    // Scale in only after a sustained empty backlog, so a burst gap does not cold-start GPUs.
    scaleIn.evaluationPeriods = props.scaleInAfterIdleMinutes;
    scaleIn.datapointsToAlarm = props.scaleInAfterIdleMinutes;
    (upperAlarm.node.defaultChild as cloudwatch.CfnAlarm).treatMissingData =
      cloudwatch.TreatMissingData.NOT_BREACHING;
  }
}

/**
 * Exact task counts by backlog: 0 for an empty backlog, then one more task per
 * `jobsPerTask` jobs, capped at `maxTasks`. Exported for tests.
 */
export function backlogSteps(maxTasks: number, jobsPerTask: number): appscaling.ScalingInterval[] {
  const steps: appscaling.ScalingInterval[] = [{ upper: 0, change: 0 }];
  for (let tasks = 1; tasks <= maxTasks; tasks++) {
    steps.push({ lower: (tasks - 1) * jobsPerTask + 1, change: tasks });
  }
  return steps;
}
