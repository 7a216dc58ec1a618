import { Aws, CfnOutput, Duration, Stack, type StackProps } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import type * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type { Construct } from 'constructs';
import { BUCKET_PREFIXES, processEnv, type StageConfig } from './config.ts';
import { type ApiHandlerRef, ClipagDashboard } from './dashboard.ts';
import { GpuQueueWorker } from './gpu-queue-worker.ts';
import { grantDeadLetterSweep, grantListBucket, grantPrefix, grantWebhookSecrets } from './grants.ts';
import { REPO_ROOT, WORKER_DOCKERFILE } from './paths.ts';
import { QueueAlarms, type QueuedJobSweepRef } from './queue-alarms.ts';

export interface WorkerStackProps extends StackProps {
  readonly config: StageConfig;
  readonly bucket: s3.IBucket;
  readonly queue: sqs.IQueue;
  readonly deadLetterQueue: sqs.IQueue;
  /** Defaults to the image built from gpu-worker/Dockerfile with the repository root as context. */
  readonly image?: ecs.ContainerImage;
  /** The API stack's queued-job sweep: its failures, and the wait it reports, alarm on the same topic. */
  readonly queuedJobSweep: QueuedJobSweepRef;
  /** The API stack's HTTP API, whose 5xx answers alarm on the same topic. */
  readonly httpApi?: apigw.IHttpApi;
  /** The API stack's handler and its log group: the dashboard's API row (errors, throttles, concurrency). */
  readonly apiHandler?: ApiHandlerRef;
  /** The API stage's access log group: the dashboard counts its 429 answers. */
  readonly apiAccessLogGroup?: logs.ILogGroup;
}

/**
 * Asset excludes. The repository's .dockerignore (which CDK also reads) is the full list;
 * these are the entries that must never reach the build context even if that file is lost:
 * dependencies (reinstalled inside the image), synth output (would recurse), local data,
 * git history and tests.
 */
export const WORKER_IMAGE_EXCLUDES = ['node_modules', 'cdk.out', '.data', '.git', 'test'];

/**
 * The GPU fleet: an ECS cluster on a GPU Auto Scaling group that scales from and to zero
 * with the job queue.
 *
 * Network: public subnets only, no NAT gateway. A NAT gateway costs a fixed ~$32/month per
 * AZ plus $0.045 per GB, and every scale-out from zero pulls a multi-GB CUDA image; that
 * would dominate the bill of an idle-most-of-the-time PoC. The instances get public IPs but
 * their security group allows no inbound traffic and IMDSv2 is required. A free S3 gateway
 * endpoint keeps model/output traffic on the AWS network. See docs/adr/0003.
 */
export class WorkerStack extends Stack {
  readonly vpc: ec2.Vpc;
  readonly cluster: ecs.Cluster;
  readonly autoScalingGroup: autoscaling.AutoScalingGroup;
  readonly capacityProvider: ecs.AsgCapacityProvider;
  readonly worker: GpuQueueWorker;
  readonly alarms: QueueAlarms;
  readonly dashboard: ClipagDashboard;

  constructor(scope: Construct, id: string, props: WorkerStackProps) {
    super(scope, id, props);
    const { config, bucket, queue, deadLetterQueue } = props;

    this.vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24 }],
      gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
    });

    this.cluster = new ecs.Cluster(this, 'Cluster', {
      vpc: this.vpc,
      containerInsightsV2: config.containerInsights
        ? ecs.ContainerInsights.ENABLED
        : ecs.ContainerInsights.DISABLED,
    });

    const securityGroup = new ec2.SecurityGroup(this, 'InstanceSecurityGroup', {
      vpc: this.vpc,
      description: 'GPU workers: outbound only (SQS, S3, ECR, CloudWatch Logs)',
      allowAllOutbound: true,
    });

    const instanceRole = new GpuInstanceRole(this, 'InstanceRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'ECS container instance role for the GPU workers (the ECS agent only)',
    });
    if (config.useSpot) {
      // On a Spot interruption notice the agent sets its own instance to DRAINING through this call.
      // CDK's minimal instance policy lacks it (the managed ECS instance policy has it); without it
      // the drain is AccessDenied and the worker is killed with the instance, its job mid-run.
      instanceRole.addToPrincipalPolicy(
        new iam.PolicyStatement({
          actions: ['ecs:UpdateContainerInstancesState'],
          resources: [Stack.of(this).formatArn({ service: 'ecs', resource: 'container-instance', resourceName: `${this.cluster.clusterName}/*` })],
        }),
      );
    }

    // The launch template names the first type; the group's overrides list them all (below).
    const primaryType = config.instanceTypes[0];
    const userData = ec2.UserData.forLinux();
    if (config.useSpot) {
      // On a Spot interruption notice the ECS agent drains the instance, so the worker gets
      // SIGTERM (and releases its job) within the two-minute warning. CDK only adds this for
      // the legacy spotPrice setting, not for a mixed-instances policy.
      userData.addCommands('echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config');
    }
    const launchTemplate = new ec2.LaunchTemplate(this, 'LaunchTemplate', {
      machineImage: gpuMachineImage(config.gpuAmiId),
      instanceType: new ec2.InstanceType(primaryType!),
      userData,
      role: instanceRole,
      securityGroup,
      requireImdsv2: true,
      // Bridge-mode containers sit one hop behind the host: a hop limit of 1 keeps them from
      // reaching IMDS and borrowing the instance role; they use their task role instead.
      httpPutResponseHopLimit: 1,
      // The CUDA image is several GB; the default 30 GB root fills up after a few pulls.
      blockDevices: [
        {
          deviceName: '/dev/xvda',
          volume: ec2.BlockDeviceVolume.ebs(config.rootVolumeGiB, {
            volumeType: ec2.EbsDeviceVolumeType.GP3,
            encrypted: true,
            // Said, not left to the AMI's mapping: a volume kept after its instance would bill
            // (100 GiB gp3, about $8 a month) for every scale-out, for ever.
            deleteOnTermination: true,
          }),
        },
      ],
    });

    this.autoScalingGroup = new autoscaling.AutoScalingGroup(this, 'GpuAsg', {
      vpc: this.vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PUBLIC },
      // Zero instances when there is no work; the capacity provider adds them on demand.
      minCapacity: 0,
      maxCapacity: config.maxInstances,
      // Every type in `instanceTypes`, in both purchase options. On demand: the first type with
      // capacity, in the stage's order (PRIORITIZED), so an InsufficientInstanceCapacity for g5.xlarge
      // in the group's AZs launches the next type instead of leaving tasks PROVISIONING. Spot: all of
      // them as pools of one price-capacity-optimized request.
      mixedInstancesPolicy: {
        launchTemplate,
        launchTemplateOverrides: config.instanceTypes.map((t) => ({ instanceType: new ec2.InstanceType(t) })),
        instancesDistribution: config.useSpot
          ? {
              onDemandBaseCapacity: 0,
              onDemandPercentageAboveBaseCapacity: 0,
              spotAllocationStrategy: autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
            }
          : {
              onDemandBaseCapacity: 0,
              onDemandPercentageAboveBaseCapacity: 100,
              onDemandAllocationStrategy: autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
            },
      },
      // One-minute group metrics (free): instances in service, pending, desired. The idle-GPU alarm
      // reads GroupInServiceInstances and the at-maximum one GroupDesiredCapacity; without collection
      // the group publishes neither.
      groupMetrics: [autoscaling.GroupMetrics.all()],
    });

    this.capacityProvider = new ecs.AsgCapacityProvider(this, 'GpuCapacityProvider', {
      autoScalingGroup: this.autoScalingGroup,
      enableManagedScaling: true,
      targetCapacityPercent: 100,
      // ECS only terminates instances that run no task, so scale-in never kills a job.
      enableManagedTerminationProtection: true,
      maximumScalingStepSize: config.maxInstances,
      spotInstanceDraining: config.useSpot,
    });
    this.cluster.addAsgCapacityProvider(this.capacityProvider);

    const image =
      props.image ??
      ecs.ContainerImage.fromAsset(REPO_ROOT, {
        file: WORKER_DOCKERFILE,
        exclude: WORKER_IMAGE_EXCLUDES,
        // onnxruntime's CUDA EP exists for linux/x64 only; force it when deploying from ARM laptops.
        platform: Platform.LINUX_AMD64,
      });

    this.worker = new GpuQueueWorker(this, 'Worker', {
      cluster: this.cluster,
      capacityProvider: this.capacityProvider,
      image,
      queue,
      maxTasks: config.maxInstances,
      jobsPerTask: config.jobsPerTask,
      scaleInAfterIdleMinutes: config.scaleInAfterIdleMinutes,
      cpuUnits: config.taskCpuUnits,
      memoryMiB: config.taskMemoryMiB,
      stopTimeout: Duration.seconds(config.stopTimeoutSeconds),
      logRetention: config.logRetentionDays as logs.RetentionDays,
      // From the stage's entry (processEnv, which stageConfig's validation parses). The worker names its
      // region: EC2-launched containers do not get one from ECS, and SDK v3 does not ask IMDS.
      environment: processEnv(config, 'worker', { bucketName: bucket.bucketName, queueUrl: queue.queueUrl, deadLetterQueueUrl: deadLetterQueue.queueUrl, region: this.region }),
    });

    // The host writes the worker's log group alone (GpuInstanceRole, below, drops CDK's logs grant on `*`).
    this.worker.logGroup.grantWrite(instanceRole);

    // Task role, least privilege: read the job record and update it (status, progress), read init
    // images, model files and the policy, write outputs and frames (delete an earlier copy of a
    // withheld image), read-modify-write stats/ and usage/, delete pending/active/ markers, write and delete
    // pending/outputs/ markers. No keys/.
    const taskRole = this.worker.taskRole;
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.jobs, ['read', 'write']);
    // Read on outputs only so that the output links in a completion webhook are signed by a role
    // that may read them; delete so that an image the output check withholds leaves no copy from an
    // earlier attempt (ADR 0017). It may overwrite them anyway.
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.outputs, ['read', 'write', 'delete']);
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.uploads, ['read']);
    // A job that ends here frees its owner's place among active jobs: delete of those markers only.
    grantPrefix(taskRole, bucket, `${BUCKET_PREFIXES.pending}active/`, ['delete']);
    // Images stored that no record names yet are marked before the first is stored, and the marker
    // goes once the job has ended and they are named or removed (ADR 0005).
    grantPrefix(taskRole, bucket, `${BUCKET_PREFIXES.pending}outputs/`, ['write', 'delete']);
    // Run times for the API's estimates: read-modify-write of one small document per model and size.
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.stats, ['read', 'write']);
    // Each owner's daily usage (GET /v1/usage): read-modify-write of one small document per owner and month.
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.usage, ['read', 'write']);
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.models, ['read']);
    // The operator's policy document: its output rules are checked on every image (ADR 0017).
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.config, ['read']);
    // Its presence document, rewritten every minute and removed when it stops (ADR 0040).
    grantPrefix(taskRole, bucket, BUCKET_PREFIXES.workers, ['write', 'delete']);
    // A job's first webhook attempt is signed with its account's secret too (ADR 0028).
    grantWebhookSecrets(taskRole, bucket, 'sign');
    grantListBucket(taskRole, bucket);
    // Malformed messages are forwarded to the DLQ explicitly (they never parse, so waiting
    // for three receives would only delay them), and the idle worker sweeps it for jobs whose
    // last delivery died.
    grantDeadLetterSweep(taskRole, deadLetterQueue);

    this.alarms = new QueueAlarms(this, 'Alarms', {
      stage: config.stage,
      deadLetterQueue,
      oldestQueuedJobSeconds: config.alarmOldestQueuedJobSeconds,
      dlqDepth: config.alarmDlqDepth,
      email: config.alarmEmail,
      queuedJobSweep: props.queuedJobSweep,
      queuedJobSweepMinutes: config.queuedJobSweepMinutes,
      ...(props.httpApi ? { httpApi: props.httpApi } : {}),
      workerLogGroup: this.worker.logGroup,
      ...(props.apiHandler ? { apiLogGroup: props.apiHandler.logGroup, apiFunction: props.apiHandler.fn } : {}),
      workerService: { cluster: this.cluster, service: this.worker.service },
      gpuFleet: {
        autoScalingGroupName: this.autoScalingGroup.autoScalingGroupName,
        queue,
        // Past the normal tail after a burst: the idle minutes before the service scales in, then
        // about 15 minutes before managed scaling removes an empty instance (ADR 0023), with margin;
        // at least an hour, and at most the day of 5-minute periods an alarm may evaluate.
        idleMinutes: Math.min(1440, Math.max(60, config.scaleInAfterIdleMinutes + 30)),
        maxInstances: config.maxInstances,
      },
      monthlyBudgetUsd: config.monthlyBudgetUsd,
    });

    // Beside the alarms it shows, with every reference it reads already here.
    this.dashboard = new ClipagDashboard(this, 'Dashboard', {
      config,
      queue,
      deadLetterQueue,
      queuedJobSweep: props.queuedJobSweep,
      cluster: this.cluster,
      capacityProvider: this.capacityProvider,
      autoScalingGroup: this.autoScalingGroup,
      worker: this.worker,
      alarms: this.alarms,
      ...(props.httpApi ? { httpApi: props.httpApi } : {}),
      ...(props.apiHandler ? { apiHandler: props.apiHandler } : {}),
      ...(props.apiAccessLogGroup ? { apiAccessLogGroup: props.apiAccessLogGroup } : {}),
    });

    // What the runbook's commands take (cdk/README.md, "On call"): read them with
    // `aws cloudformation describe-stacks --stack-name Clipag-<stage>-Worker --query 'Stacks[0].Outputs'`.
    const out = (id: string, value: string, description: string) => new CfnOutput(this, id, { value, description });
    out('ClusterName', this.cluster.clusterName, 'ECS cluster of the GPU workers (aws ecs --cluster)');
    out('ServiceName', this.worker.service.serviceName, 'ECS service of the GPU workers (aws ecs --services)');
    out('WorkerTaskDefinitionFamily', this.worker.taskDefinition.family, "The worker task's family: its earlier revisions stay ACTIVE, to roll the fleet back to (aws ecs update-service --task-definition <family>:<revision>)");
    out('WorkerScalableTarget', `service/${this.cluster.clusterName}/${this.worker.service.serviceName}`, 'Application Auto Scaling resource id of the service (pause and resume the GPU fleet)');
    out('WorkerMaxTasks', String(config.maxInstances), 'The stage\'s maxInstances: the max capacity to resume the GPU fleet with');
    out('AutoScalingGroupName', this.autoScalingGroup.autoScalingGroupName, 'GPU Auto Scaling group (aws autoscaling describe-scaling-activities)');
    out('AlarmTopicArn', this.alarms.topic.topicArn, 'SNS topic of every alarm and task-stopped notice (subscribe a pager here)');
    out('WorkerLogGroupName', this.worker.logGroup.logGroupName, "The GPU worker's JSON log lines (aws logs tail / filter-log-events)");
    out('DashboardName', this.dashboard.dashboard.dashboardName, 'CloudWatch dashboard of the stage');
    out('DashboardUrl', `https://console.aws.amazon.com/cloudwatch/home?region=${Aws.REGION}#dashboards/dashboard/${this.dashboard.dashboard.dashboardName}`, 'The dashboard in the console');
  }
}

/**
 * The GPU hosts' AMI. Without a pinned id: the ECS-optimized Amazon Linux 2023 GPU AMI (NVIDIA driver and
 * container toolkit; Amazon Linux 2 left support on 2026-06-30), an SSM parameter resolved at each deploy,
 * so synth needs no AWS call and every deploy takes the image AWS recommends that day. With one
 * (`gpuAmiId` in the stage's entry): that image, until the entry changes (cdk/README.md, "Pin or roll
 * back the GPU AMI"). An id needs no lookup either; it names an image of the stage's region.
 */
export function gpuMachineImage(gpuAmiId: string | null): ec2.IMachineImage {
  if (gpuAmiId === null) return ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU);
  return { getImage: () => ({ imageId: gpuAmiId, osType: ec2.OperatingSystemType.LINUX, userData: ec2.UserData.forLinux() }) };
}

/**
 * The ECS container-instance role of the GPU hosts. `Cluster.addAsgCapacityProvider` adds CDK's minimal
 * ECS instance policy to it, whose statement on `*` also allows `logs:CreateLogStream` and
 * `logs:PutLogEvents` (CDK keeps them for a CloudWatch agent a user may install). None runs here, and the
 * worker's awslogs driver needs them on its own log group at most (the ECS-optimized AMI's agent has it
 * write with the task execution role, which CDK grants on that group). A host allowed every log group
 * could write `"level":"error"` lines into the API's or the sweep's log group, forging pages or burying
 * real ones. So the logs actions of a statement on `*` are dropped here, and the worker stack grants
 * them on the worker's log group alone (`logGroup.grantWrite`).
 */
class GpuInstanceRole extends iam.Role {
  override addToPrincipalPolicy(statement: iam.PolicyStatement): iam.AddToPrincipalPolicyResult {
    const isLogs = (action: string) => action.startsWith('logs:');
    const plain = statement.effect === iam.Effect.ALLOW && statement.notActions.length === 0 && statement.notResources.length === 0 && statement.principals.length === 0;
    if (!plain || !statement.resources.includes('*') || !statement.actions.some(isLogs)) return super.addToPrincipalPolicy(statement);
    const rest = statement.actions.filter((action) => !isLogs(action));
    // A statement of logs actions alone on `*`: replaced whole by the scoped grant.
    if (rest.length === 0) return { statementAdded: true };
    return super.addToPrincipalPolicy(
      new iam.PolicyStatement({ ...(statement.sid ? { sid: statement.sid } : {}), actions: rest, resources: statement.resources, conditions: statement.conditions }),
    );
  }
}
