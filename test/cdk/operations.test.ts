// What an operator runs the stages with (the operator review of deploying and running clipag on AWS):
// values that must not revert between deploys, the alarms and the notice that say something is wrong,
// and the stack outputs the runbook's commands read.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { ContainerImage } from 'aws-cdk-lib/aws-ecs';
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildClipag, type ClipagStacks } from '../../cdk/lib/clipag.ts';
import { contextKeyWarnings, selectStage, STAGES, stageConfig, type StageConfig } from '../../cdk/lib/config.ts';
import { BUDGET_RUNBOOK_ENTRY, budgetName, GPU_FLEET_AT_MAX_HOURS, runbookPointer } from '../../cdk/lib/queue-alarms.ts';
import { LAMBDA_STUB, REPO_ROOT, asArray, policyStatements, readCdkJson, resources, testApp } from './helpers.ts';

const stubImage = ContainerImage.fromRegistry('public.ecr.aws/docker/library/busybox:stable');

interface Built {
  config: StageConfig;
  stacks: ClipagStacks;
  api: Template;
  worker: Template;
  stateful: Template;
}

let cleanups: Array<() => void> = [];
const built = {} as Record<'dev' | 'prod', Built>;

function build(config: StageConfig): Built {
  const { app, cleanup } = testApp();
  cleanups.push(cleanup);
  const stacks = buildClipag(app, config, { lambdaEntry: LAMBDA_STUB, workerImage: stubImage });
  return { config, stacks, api: Template.fromStack(stacks.api), worker: Template.fromStack(stacks.worker), stateful: Template.fromStack(stacks.stateful) };
}

beforeAll(() => {
  built.dev = build(stageConfig('dev'));
  built.prod = build(stageConfig('prod', { alarmEmail: 'ops@example.com' }));
});

afterAll(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

const readme = () => readFileSync(path.join(REPO_ROOT, 'cdk', 'README.md'), 'utf8');
const resource = (t: Template, id: string) => (t.toJSON() as { Resources: Record<string, { Type: string; Properties: any }> }).Resources[id]!;
const topicRef = { Ref: 'AlarmsTopic3A2DFEBA' };

/** The queries of a math alarm, by id: the expression and each metric it reads. */
function queriesOf(alarm: { Properties: any }): Record<string, any> {
  return Object.fromEntries((alarm.Properties.Metrics as Array<{ Id: string }>).map((q) => [q.Id, q]));
}

describe('the default model and the alarm e-mail do not revert on a deploy without -c (H2)', () => {
  const stage = (value: string) => ({ value, from: '-c stage' });

  it('prod takes its default model from its entry in cdk/lib/config.ts: a -c defaultModel that differs fails the synth', () => {
    expect(STAGES.prod.defaultModel).toBe('toy');
    const email = { value: 'ops@example.com', from: '-c alarmEmail' };
    expect(() => selectStage({ stage: stage('prod'), alarmEmail: email, defaultModel: { value: 'clipag-vitb32', from: '-c defaultModel' } })).toThrow(
      /defaultModel comes from the prod entry of cdk\/lib\/config\.ts \("toy"\), and -c defaultModel asks for "clipag-vitb32"/,
    );
    // The same value as the entry is no change, and is taken.
    expect(selectStage({ stage: stage('prod'), alarmEmail: email, defaultModel: { value: 'toy', from: '-c defaultModel' } }).config.defaultModel).toBe('toy');
    // Prod without an alarm e-mail still fails.
    expect(() => selectStage({ stage: stage('prod') })).toThrow(/alarmEmail is required in prod/);
    expect(() => selectStage({ stage: { value: 'staging', from: '$CLIPAG_STAGE' } })).toThrow(/Unknown stage "staging" \(\$CLIPAG_STAGE\)/);
  });

  it('says, at every synth, which default model and alarm e-mail the stage gets and where each came from', () => {
    const prod = selectStage({ stage: stage('prod'), alarmEmail: { value: 'ops@example.com', from: '$CLIPAG_ALARM_EMAIL' } });
    expect(prod.summary).toBe(
      ['clipag: stage prod (-c stage)', '  defaultModel: toy (the prod entry of cdk/lib/config.ts)', '  alarmEmail:   ops@example.com ($CLIPAG_ALARM_EMAIL)'].join('\n'),
    );
    // Dev: a -c model lasts one deploy, and a missing e-mail removes the subscription: both are said.
    const dev = selectStage({ stage: { value: 'dev', from: 'the default' }, defaultModel: { value: 'clipag-vitb32', from: '-c defaultModel' } });
    expect(dev.config.defaultModel).toBe('clipag-vitb32');
    expect(dev.summary).toContain('defaultModel: clipag-vitb32 (-c defaultModel, for this deploy only: the next one without it goes back to the entry\'s "toy")');
    expect(dev.summary).toContain('alarmEmail:   none: the alarm topic gets no subscriber, and one an earlier deploy made is removed');
  });

  it('cdk/bin/app.ts prints the summary on stderr and refuses prod\'s -c defaultModel (the real entry point, as `cdk synth` runs it)', () => {
    const outdir = mkdtempSync(path.join(tmpdir(), 'clipag-app-'));
    cleanups.push(() => rmSync(outdir, { recursive: true, force: true }));
    // `cdk` hands the app its context in CDK_CONTEXT_JSON and its output folder in CDK_OUTDIR.
    const run = (context: Record<string, unknown>, env: Record<string, string> = {}) => {
      const { CLIPAG_STAGE: _s, CLIPAG_ALARM_EMAIL: _e, ...rest } = process.env;
      return spawnSync(process.execPath, ['--import', 'tsx', 'cdk/bin/app.ts'], {
        cwd: REPO_ROOT,
        encoding: 'utf8',
        env: { ...rest, ...env, CDK_OUTDIR: outdir, CDK_CONTEXT_JSON: JSON.stringify({ 'aws:cdk:bundling-stacks': [], ...context }) },
      });
    };
    const refused = run({ stage: 'prod', alarmEmail: 'ops@example.com', defaultModel: 'clipag-vitb32' });
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain('defaultModel comes from the prod entry of cdk/lib/config.ts ("toy"), and -c defaultModel asks for "clipag-vitb32"');
    const synthesized = run({}, { CLIPAG_STAGE: 'prod', CLIPAG_ALARM_EMAIL: 'ops@example.com' });
    expect(synthesized.status, synthesized.stderr).toBe(0);
    expect(synthesized.stderr).toContain(['clipag: stage prod ($CLIPAG_STAGE)', '  defaultModel: toy (the prod entry of cdk/lib/config.ts)', '  alarmEmail:   ops@example.com ($CLIPAG_ALARM_EMAIL)'].join('\n'));
    const template = JSON.parse(readFileSync(path.join(outdir, 'Clipag-prod-Worker.template.json'), 'utf8')) as { Resources: Record<string, { Type: string; Properties: any }> };
    const td = Object.values(template.Resources).find((r) => r.Type === 'AWS::ECS::TaskDefinition')!;
    expect(td.Properties.ContainerDefinitions[0].Environment).toContainEqual({ Name: 'CLIPAG_DEFAULT_MODEL', Value: 'toy' });
  });
});

describe('a mistyped context key is said at synth, with the key it meant (-c stgae=prod would synth dev)', () => {
  it('warns of each plain key the app does not read, with a did-you-mean for a near one; never of its own keys, cdk.json\'s or the CDK\'s', () => {
    expect(contextKeyWarnings(['stgae', 'Stage', 'alarm_email', 'alarmemail', 'defaultmodel', 'default-model', 'defualtModel', 'model'])).toEqual([
      'clipag: warning: context key "stgae" is not one this app reads (did you mean stage? -c stage=…); ignored',
      'clipag: warning: context key "Stage" is not one this app reads (did you mean stage? -c stage=…); ignored',
      'clipag: warning: context key "alarm_email" is not one this app reads (did you mean alarmEmail? -c alarmEmail=…); ignored',
      'clipag: warning: context key "alarmemail" is not one this app reads (did you mean alarmEmail? -c alarmEmail=…); ignored',
      'clipag: warning: context key "defaultmodel" is not one this app reads (did you mean defaultModel? -c defaultModel=…); ignored',
      'clipag: warning: context key "default-model" is not one this app reads (did you mean defaultModel? -c defaultModel=…); ignored',
      'clipag: warning: context key "defualtModel" is not one this app reads (did you mean defaultModel? -c defaultModel=…); ignored',
      'clipag: warning: context key "model" is not one this app reads (it reads stage, alarmEmail and defaultModel); ignored',
    ]);
    // The app's own keys; every key of cdk.json (feature flags carry '@' and ':', cli-telemetry is the CLI's);
    // what the CDK CLI adds (aws:cdk:*, `cdk acknowledge`'s list) and its lookups' cache (cdk.context.json).
    const quiet = ['stage', 'alarmEmail', 'defaultModel', ...Object.keys(readCdkJson().context), 'aws:cdk:bundling-stacks', 'aws:cdk:enable-path-metadata', 'acknowledged-issue-numbers', 'availability-zones:account=123456789012:region=eu-west-1'];
    expect(contextKeyWarnings(quiet)).toEqual([]);
  });

  it('cdk/bin/app.ts prints them on stderr once, before the summary or a refusal (the real entry point)', () => {
    const outdir = mkdtempSync(path.join(tmpdir(), 'clipag-app-'));
    cleanups.push(() => rmSync(outdir, { recursive: true, force: true }));
    const { CLIPAG_STAGE: _s, CLIPAG_ALARM_EMAIL: _e, ...rest } = process.env;
    // `-c alarmemail=…` for prod: the key goes unread, so prod is refused for want of an alarm e-mail, and the warning says why.
    const result = spawnSync(process.execPath, ['--import', 'tsx', 'cdk/bin/app.ts'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      env: { ...rest, CDK_OUTDIR: outdir, CDK_CONTEXT_JSON: JSON.stringify({ ...readCdkJson().context, 'aws:cdk:bundling-stacks': [], stage: 'prod', alarmemail: 'ops@example.com' }) },
    });
    expect(result.status).not.toBe(0);
    const warning = 'clipag: warning: context key "alarmemail" is not one this app reads (did you mean alarmEmail? -c alarmEmail=…); ignored';
    expect(result.stderr.split(warning)).toHaveLength(2); // once
    expect(result.stderr.indexOf(warning)).toBeLessThan(result.stderr.indexOf('alarmEmail is required in prod'));
    expect(result.stderr).not.toMatch(/context key "(cli-telemetry|stage|@aws-cdk[^"]*)"/);
  });
});

describe('job failures (M2)', () => {
  it('alarm when half or more of 5+ jobs finished in 15 minutes failed, from the outcomes the worker logs', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { worker } = built[stage];
      const alarm = resource(worker, 'AlarmsJobFailureRatio9B454D2E');
      expect(alarm.Properties).toMatchObject({ Threshold: 50, ComparisonOperator: 'GreaterThanOrEqualToThreshold', EvaluationPeriods: 1, TreatMissingData: 'notBreaching', AlarmActions: [topicRef], OKActions: [topicRef] });
      const q = queriesOf(alarm);
      expect(q.expr_1.Expression).toBe('IF(FILL(failed, 0) + FILL(succeeded, 0) >= 5, 100 * FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0)), 0)');
      for (const outcome of ['failed', 'succeeded']) {
        expect(q[outcome].MetricStat).toEqual({ Metric: { Namespace: `Clipag/${stage}`, MetricName: 'WorkerJobsFinished', Dimensions: [{ Name: 'Outcome', Value: outcome }] }, Period: 900, Stat: 'Sum' });
      }
      // The metric it divides is published by this stack's filter on the worker's log.
      expect(resource(worker, 'AlarmsJobOutcomesFilter88ED1501').Properties.MetricTransformations).toEqual([
        { MetricNamespace: `Clipag/${stage}`, MetricName: 'WorkerJobsFinished', MetricValue: '1', Dimensions: [{ Key: 'Outcome', Value: '$.outcome' }] },
      ]);
    }
  });
});

describe('a worker task that stops abnormally (M3)', () => {
  /**
   * EventBridge's matching, as far as this rule's pattern uses it: literal values, `anything-but` a
   * number, nested objects, arrays in the event (any element), and `$or`.
   */
  function eventMatches(pattern: Record<string, unknown>, event: unknown): boolean {
    return Object.entries(pattern).every(([key, want]) => {
      if (key === '$or') return (want as Array<Record<string, unknown>>).some((alt) => eventMatches(alt, event));
      const got = (event as Record<string, unknown> | undefined)?.[key];
      const candidates = Array.isArray(got) ? got : [got];
      if (Array.isArray(want)) {
        return candidates.some((value) =>
          want.some((w) => {
            if (typeof w === 'object' && w !== null && 'anything-but' in w) return value !== undefined && value !== (w as { 'anything-but': unknown })['anything-but'];
            if (typeof w === 'object') throw new Error(`unsupported matcher ${JSON.stringify(w)}`);
            return value === w;
          }),
        );
      }
      return candidates.some((value) => typeof value === 'object' && value !== null && eventMatches(want as Record<string, unknown>, value));
    });
  }

  it('sends each stop with a non-zero exit code, or a task that never started, to the alarm topic as a readable notice; not a drained stop', () => {
    const { worker } = built.prod;
    const rule = resource(worker, 'AlarmsWorkerTaskStopped09EC3212');
    expect(rule.Type).toBe('AWS::Events::Rule');
    const pattern = rule.Properties.EventPattern;
    expect(pattern.detail.clusterArn).toEqual([{ 'Fn::GetAtt': ['ClusterEB0386A7', 'Arn'] }]);
    expect(pattern.detail.group).toEqual([{ 'Fn::Join': ['', ['service:', { 'Fn::GetAtt': ['WorkerService3F60922A', 'Name'] }]] }]);
    // The pattern with this stage's cluster and service as ECS names them in its events.
    const resolved = JSON.parse(JSON.stringify(pattern).replace(JSON.stringify(pattern.detail.clusterArn[0]), '"arn:cluster/prod"').replace(JSON.stringify(pattern.detail.group[0]), '"service:worker"'));
    const event = (detail: Record<string, unknown>) => ({ source: 'aws.ecs', 'detail-type': 'ECS Task State Change', detail: { clusterArn: 'arn:cluster/prod', group: 'service:worker', lastStatus: 'STOPPED', ...detail } });
    const oom = event({ stopCode: 'EssentialContainerExited', containers: [{ exitCode: 137, reason: 'OutOfMemoryError: Container killed due to memory usage' }] });
    const unpulled = event({ stopCode: 'TaskFailedToStart', stoppedReason: 'CannotPullContainerError: pull image manifest has been retried 5 time(s)', containers: [{ lastStatus: 'STOPPED' }] });
    const configError = event({ stopCode: 'EssentialContainerExited', containers: [{ exitCode: 78 }] });
    const drained = event({ stopCode: 'ServiceSchedulerInitiated', containers: [{ exitCode: 0 }] });
    const running = event({ lastStatus: 'RUNNING', containers: [{ exitCode: 137 }] });
    const otherService = { ...oom, detail: { ...oom.detail, group: 'service:other' } };
    const otherCluster = { ...oom, detail: { ...oom.detail, clusterArn: 'arn:cluster/dev' } };
    expect([oom, unpulled, configError].map((e) => eventMatches(resolved, e))).toEqual([true, true, true]);
    expect([drained, running, otherService, otherCluster].map((e) => eventMatches(resolved, e))).toEqual([false, false, false, false]);

    // Straight to the topic, with what happened in the text.
    expect(rule.Properties.Targets).toHaveLength(1);
    const target = rule.Properties.Targets[0];
    expect(target.Arn).toEqual(topicRef);
    expect(Object.values(target.InputTransformer.InputPathsMap).sort()).toEqual(['$.detail.containers[0].exitCode', '$.detail.containers[0].reason', '$.detail.stopCode', '$.detail.stoppedReason', '$.detail.taskArn']);
    expect(target.InputTransformer.InputTemplate).toMatch(/^"clipag prod: a GPU worker task stopped abnormally\. Exit code: <[^>]+>\. Stop code: <[^>]+>\./);
    expect(target.InputTransformer.InputTemplate).toContain('A worker task stopped abnormally');
    expect(readme()).toContain('#### A worker task stopped abnormally\n');
  });
});

describe('stack outputs the runbook reads (M4)', () => {
  it('the worker stack outputs its cluster, service, scalable target, group, topic, log group and dashboard; the API stack its log groups and functions', () => {
    const { worker, api } = built.dev;
    const outputs = (t: Template) => (t.toJSON() as { Outputs: Record<string, { Value: unknown }> }).Outputs;
    const w = outputs(worker);
    expect(w.ClusterName!.Value).toEqual({ Ref: 'ClusterEB0386A7' });
    expect(w.ServiceName!.Value).toEqual({ 'Fn::GetAtt': ['WorkerService3F60922A', 'Name'] });
    expect(w.AutoScalingGroupName!.Value).toEqual({ Ref: 'GpuAsgASG4AAF2DD0' });
    expect(Object.keys(w)).toEqual(expect.arrayContaining(['WorkerScalableTarget', 'WorkerMaxTasks'])); // their values: the pause test below
    expect(w.AlarmTopicArn!.Value).toEqual(topicRef);
    expect(w.WorkerLogGroupName!.Value).toEqual({ Ref: 'WorkerLogs4B5B6506' });
    expect(w.DashboardName!.Value).toEqual({ Ref: 'Dashboard7A714131' });
    expect(JSON.stringify(w.DashboardUrl!.Value)).toContain('#dashboards/dashboard/');
    const a = outputs(api);
    expect(JSON.stringify(a.HandlerLogGroupName!.Value)).toMatch(/"Ref":"HandlerLogs/);
    expect(JSON.stringify(a.AccessLogGroupName!.Value)).toMatch(/"Ref":"AccessLogs/);
    expect(JSON.stringify(a.HandlerFunctionName!.Value)).toMatch(/"Ref":"Handler[0-9A-F]{8}"/);
    expect(JSON.stringify(a.QueuedJobSweepFunctionName!.Value)).toMatch(/"Ref":"QueuedJobSweeper[0-9A-F]{8}"/);
    expect(JSON.stringify(a.QueuedJobSweepLogGroupName!.Value)).toMatch(/"Ref":"QueuedJobSweeperLogs/);
  });

  it('every output the runbook reads (`out <Stack> <Output>`) exists, and every alarm has its runbook entry', () => {
    const text = readme();
    const used = [...text.matchAll(/\bout (Stateful|Api|Worker) ([A-Za-z]+)/g)].map((m) => [m[1] as 'Stateful' | 'Api' | 'Worker', m[2]!] as const);
    expect(used.length).toBeGreaterThanOrEqual(12);
    const b = built.prod;
    const templates = { Stateful: b.stateful, Api: b.api, Worker: b.worker };
    for (const [stack, output] of used) expect(Object.keys((templates[stack].toJSON() as { Outputs: object }).Outputs), `${stack} ${output}`).toContain(output);
    for (const entry of ['DLQ depth', 'Oldest queued job', 'Queued-job sweep failing, not running, or its events dropped', 'API 5xx share', 'API Lambda throttled', 'Rate limits failing open', 'GPU worker error line', 'API or sweep error line', 'Job failure share', 'GPU instances idle', 'A worker task stopped abnormally', 'Pause GPU spending', 'Check that alarms reach someone', 'Rotate or revoke a customer\'s API key', 'Pin or roll back the GPU AMI', 'GPU fleet at its maximum', BUDGET_RUNBOOK_ENTRY]) {
      expect(text, entry).toContain(`#### ${entry}\n`);
    }
  });

  it('each alarm\'s e-mail (its AlarmDescription) ends with where its runbook entry is, as the task-stopped notice does (review-ops 6)', () => {
    const text = readme();
    const sweep = 'Queued-job sweep failing, not running, or its events dropped';
    const expected: Record<string, string> = {
      DlqDepth: 'DLQ depth',
      OldestQueuedJob: 'Oldest queued job',
      QueuedJobSweepErrors: sweep,
      QueuedJobSweepNotRunning: sweep,
      QueuedJobSweepEventsDropped: sweep,
      Api5xx: 'API 5xx share',
      ApiThrottles: 'API Lambda throttled',
      WorkerErrorLines: 'GPU worker error line',
      ApiErrorLines: 'API or sweep error line',
      JobFailureRatio: 'Job failure share',
      RateLimitFailingOpen: 'Rate limits failing open',
      GpuIdleInstances: 'GPU instances idle',
      GpuFleetAtMax: 'GPU fleet at its maximum',
    };
    for (const stage of ['dev', 'prod'] as const) {
      const { worker, stacks } = built[stage];
      // Every alarm that notifies the topic: the thirteen of QueueAlarms (the scaling policy's two do not).
      const alarms = resources(worker).filter(([, r]) => r.Type === 'AWS::CloudWatch::Alarm' && JSON.stringify(r.Properties.AlarmActions ?? []).includes('AlarmsTopic'));
      expect(alarms.map(([id]) => id.replace(/^Alarms/, '').replace(/[0-9A-F]{8}$/, '')).sort()).toEqual(Object.keys(expected).sort());
      expect(stacks.worker.alarms.operatorAlarms).toHaveLength(13);
      for (const [id, alarm] of alarms) {
        const entry = expected[id.replace(/^Alarms/, '').replace(/[0-9A-F]{8}$/, '')]!;
        const description = alarm.Properties.AlarmDescription as string;
        expect(description, id).toMatch(/\. Runbook: cdk\/README\.md, On call, [^.]+\.$/);
        expect(description.endsWith(` ${runbookPointer(entry)}`), `${id}: ${description}`).toBe(true);
        expect(text, entry).toContain(`#### ${entry}\n`);
        // CloudWatch's limit on a description.
        expect(description.length, id).toBeLessThanOrEqual(1024);
      }
    }
    // The notice says it the same way.
    const rule = resource(built.prod.worker, 'AlarmsWorkerTaskStopped09EC3212');
    expect(rule.Properties.Targets[0].InputTransformer.InputTemplate).toContain(runbookPointer('A worker task stopped abnormally'));
  });
});

describe('pausing GPU spending (M5)', () => {
  it('the runbook caps the scalable target at 0 (a desired count alone is undone by the step policy), with the stack output that names it', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { worker, config } = built[stage];
      const outputs = (worker.toJSON() as { Outputs: Record<string, { Value: unknown }> }).Outputs;
      const target = resources(worker).find(([, r]) => r.Type === 'AWS::ApplicationAutoScaling::ScalableTarget')![1];
      // The output is the very resource id the scalable target registers, and the max to resume with.
      expect(outputs.WorkerScalableTarget!.Value).toEqual(target.Properties.ResourceId);
      expect(outputs.WorkerMaxTasks!.Value).toBe(String(target.Properties.MaxCapacity));
      expect(target.Properties.MaxCapacity).toBe(config.maxInstances);
    }
    const text = readme();
    const section = text.slice(text.indexOf('#### Pause GPU spending'), text.indexOf('\n### ', text.indexOf('#### Pause GPU spending')));
    expect(section).toMatch(/register-scalable-target --service-namespace ecs --scalable-dimension ecs:service:DesiredCount \\\n\s+--resource-id "\$TARGET" --min-capacity 0 --max-capacity 0\n/);
    expect(section).toMatch(/--resource-id "\$TARGET" --min-capacity 0 --max-capacity "\$\(out Worker WorkerMaxTasks\)"/);
    expect(text).toContain('TARGET=$(out Worker WorkerScalableTarget)');
    // The old advice, which the step policy undid within a minute, is gone.
    expect(text).not.toMatch(/scale the service to 0 \(`desiredCount`/);
  });
});

describe('paid GPU instances with nothing to do (M7)', () => {
  it('collects the group\'s one-minute metrics, and alarms when instances stay in service for an hour while the backlog is 0', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { worker, config } = built[stage];
      expect(resource(worker, 'GpuAsgASG4AAF2DD0').Properties.MetricsCollection).toEqual([{ Granularity: '1Minute' }]);
      const alarm = resource(worker, 'AlarmsGpuIdleInstances146A8D9F');
      const minutes = Math.max(60, config.scaleInAfterIdleMinutes + 30);
      expect(alarm.Properties).toMatchObject({ Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', EvaluationPeriods: minutes / 5, TreatMissingData: 'notBreaching', AlarmActions: [topicRef], OKActions: [topicRef] });
      const q = queriesOf(alarm);
      expect(q.expr_1.Expression).toBe('IF((FILL(inService, 0) > 0) AND ((FILL(visible, 0) + FILL(inFlight, 0)) == 0), 1, 0)');
      expect(q.inService.MetricStat).toEqual({ Metric: { Namespace: 'AWS/AutoScaling', MetricName: 'GroupInServiceInstances', Dimensions: [{ Name: 'AutoScalingGroupName', Value: { Ref: 'GpuAsgASG4AAF2DD0' } }] }, Period: 300, Stat: 'Minimum' });
      expect(q.visible.MetricStat).toMatchObject({ Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible' }, Period: 300, Stat: 'Maximum' });
      expect(q.inFlight.MetricStat).toMatchObject({ Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesNotVisible' }, Period: 300, Stat: 'Maximum' });
      for (const id of ['visible', 'inFlight']) expect(JSON.stringify(q[id].MetricStat.Metric.Dimensions)).toContain('ClipagJobQueueQueueName');
    }
    // A stage that waits longer before scaling in gets a longer window: the normal tail never pages.
    const slow = build(stageConfig('dev', { scaleInAfterIdleMinutes: 60 }));
    expect(resource(slow.worker, 'AlarmsGpuIdleInstances146A8D9F').Properties.EvaluationPeriods).toBe(18);
  });
});

describe('what pages on spend (review-ops 2)', () => {
  const budgetOf = (t: Template) => resources(t).filter(([, r]) => r.Type === 'AWS::Budgets::Budget');

  it('alarms when the GPU group has sat at its maximum for 3 hours: a busy, healthy fleet is where the money goes', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { worker, config } = built[stage];
      // Its logical ID, pinned: a new one would replace the alarm (and lose its history).
      const alarm = resource(worker, 'AlarmsGpuFleetAtMaxDF00CD0C');
      expect(alarm.Type).toBe('AWS::CloudWatch::Alarm');
      expect(alarm.Properties).toMatchObject({
        Namespace: 'AWS/AutoScaling',
        // Desired, not in service: a fleet that cannot launch its last instances wants them all the same.
        MetricName: 'GroupDesiredCapacity',
        Dimensions: [{ Name: 'AutoScalingGroupName', Value: { Ref: 'GpuAsgASG4AAF2DD0' } }],
        // The fewest desired in each 5 minutes, at the maximum in all but 2 periods of the window.
        Statistic: 'Minimum',
        Period: 300,
        Threshold: config.maxInstances,
        ComparisonOperator: 'GreaterThanOrEqualToThreshold',
        EvaluationPeriods: (GPU_FLEET_AT_MAX_HOURS * 60) / 5,
        DatapointsToAlarm: (GPU_FLEET_AT_MAX_HOURS * 60) / 5 - 2,
        TreatMissingData: 'notBreaching',
        AlarmActions: [topicRef],
        OKActions: [topicRef],
      });
      expect(GPU_FLEET_AT_MAX_HOURS).toBe(3);
      // Within CloudWatch's one day of sub-hour periods.
      expect(alarm.Properties.EvaluationPeriods * alarm.Properties.Period).toBeLessThanOrEqual(86_400);
      expect(alarm.Properties.AlarmDescription).toContain(`wanted all ${config.maxInstances} of its instances`);
    }
    expect(resource(built.prod.worker, 'AlarmsGpuFleetAtMaxDF00CD0C').Properties.Threshold).toBe(8);
  });

  it("adds a monthly AWS Budget on the account's whole cost, credits left out, with actual and forecast notices to the alarm topic", () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { worker, config } = built[stage];
      const budgets = budgetOf(worker);
      expect(budgets.map(([id]) => id)).toEqual(['AlarmsMonthlyBudgetB1B5DE74']);
      const [, budget] = budgets[0]!;
      expect(config.monthlyBudgetUsd).toBe(stage === 'prod' ? 1000 : 100);
      expect(budget.Properties.Budget).toEqual({
        // The notices in the name (a80-100f100): a change to them is a new budget, not a clash with the old name.
        BudgetName: { 'Fn::Join': ['', [`clipag-${stage}-`, { Ref: 'AWS::Region' }, ` cost a80-100f100 - runbook cdk/README.md On call - ${BUDGET_RUNBOOK_ENTRY}`]] },
        BudgetType: 'COST',
        TimeUnit: 'MONTHLY',
        BudgetLimit: { Amount: config.monthlyBudgetUsd, Unit: 'USD' },
        // No CostFilters: the whole account (a tag filter reads $0 until the tag is activated by hand).
        CostTypes: { IncludeCredit: false, IncludeRefund: false },
      });
      const notices = (budget.Properties.NotificationsWithSubscribers as Array<{ Notification: Record<string, unknown>; Subscribers: unknown[] }>);
      expect(notices.map((n) => [n.Notification.NotificationType, n.Notification.Threshold, n.Notification.ThresholdType, n.Notification.ComparisonOperator])).toEqual([
        ['ACTUAL', 80, 'PERCENTAGE', 'GREATER_THAN'],
        ['ACTUAL', 100, 'PERCENTAGE', 'GREATER_THAN'],
        ['FORECASTED', 100, 'PERCENTAGE', 'GREATER_THAN'],
      ]);
      for (const n of notices) expect(n.Subscribers).toEqual([{ SubscriptionType: 'SNS', Address: topicRef }]);
      // Created after the topic's policy lets AWS Budgets publish (AWS checks it when the budget is made).
      expect(budget.DependsOn).toEqual(expect.arrayContaining(['AlarmsTopicPolicyED3A875E']));
    }
    // Its name says where the runbook entry is, within a budget name's 100 characters and without ':'
    // (which a budget name may not hold), for the longest region names.
    const text = readme();
    expect(text).toContain(`#### ${BUDGET_RUNBOOK_ENTRY}\n`);
    for (const region of ['ap-southeast-2', 'ap-northeast-3', 'us-gov-west-1']) {
      const name = budgetName('prod', region);
      expect(name.length, name).toBeLessThanOrEqual(100);
      expect(name).not.toMatch(/[:\\]/);
    }
  });

  it('lets AWS Budgets publish to the alarm topic, for this account\'s budgets only, and only where a budget exists', () => {
    const budgetStatements = (t: Template) =>
      policyStatements(t).filter(({ type, statement }) => type === 'AWS::SNS::TopicPolicy' && JSON.stringify((statement as { Principal?: unknown }).Principal ?? '').includes('budgets.amazonaws.com'));
    const [one, ...rest] = budgetStatements(built.prod.worker);
    expect(rest).toEqual([]);
    expect(one!.statement).toMatchObject({
      Effect: 'Allow',
      Action: 'sns:Publish',
      Resource: topicRef,
      Condition: {
        StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
        ArnLike: { 'aws:SourceArn': { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':budgets::', { Ref: 'AWS::AccountId' }, ':*']] } },
      },
    });
    // monthlyBudgetUsd null: no budget, and the topic lets AWS Budgets in no more.
    const none = build(stageConfig('dev', { monthlyBudgetUsd: null }));
    expect(budgetOf(none.worker)).toEqual([]);
    expect(budgetStatements(none.worker)).toEqual([]);
    expect(none.stacks.worker.alarms.monthlyBudget).toBeUndefined();
  });

  it('takes a whole number of dollars from 1 to 100000, or null; anything else fails the synth', () => {
    for (const ok of [null, 1, 250, 100_000]) expect(stageConfig('dev', { monthlyBudgetUsd: ok }).monthlyBudgetUsd).toBe(ok);
    for (const bad of [0, -5, 12.5, 100_001, Number.NaN]) {
      expect(() => stageConfig('dev', { monthlyBudgetUsd: bad }), String(bad)).toThrow(/monthlyBudgetUsd must be null \(no budget\) or a whole number of USD, 1 to 100000/);
    }
    // Prod states its own amount, not dev's.
    expect([STAGES.dev.monthlyBudgetUsd, STAGES.prod.monthlyBudgetUsd]).toEqual([100, 1000]);
  });
});

describe('Lambda concurrency is a stated deploy requirement (review-ops 3)', () => {
  it("names the account's concurrency quota, the figure prod needs from its config, and how to check and raise it", () => {
    const text = readme();
    const deploy = text.slice(text.indexOf('## Deploy\n'), text.indexOf('\n```bash\nnpx cdk bootstrap'));
    expect(deploy).toContain('**Lambda concurrency** is a requirement too');
    expect(deploy).toContain('*Concurrent executions*');
    const prod = STAGES.prod;
    const dev = STAGES.dev;
    // Per waiting account: its wait budget, twice that while the window slides; the other requests: the stage's burst; the sweep: 1.
    expect(deploy).toContain(`**${prod.apiThrottleBurst} + ${2 * prod.maxWaitsPerAccount} × (accounts waiting at the same time) + 1**`);
    expect(deploy).toContain(`${prod.apiThrottleBurst + 5 * 2 * prod.maxWaitsPerAccount + 1} with five such accounts`);
    expect(deploy).toContain(`${prod.apiThrottleRatePerSecond} a second × ${prod.lambdaTimeoutSeconds} s = ${(prod.apiThrottleRatePerSecond * prod.lambdaTimeoutSeconds).toLocaleString('en-US')}`);
    expect(deploy).toContain(`about ${dev.apiThrottleBurst} + ${2 * dev.maxWaitsPerAccount} × accounts + 1`);
    expect(deploy).toContain(`(prod ${prod.maxWaitsPerAccount},\n  dev ${dev.maxWaitsPerAccount})`);
    expect(deploy).toContain('aws lambda get-account-settings');
    expect(deploy).toContain('aws service-quotas request-service-quota-increase --service-code lambda --quota-code L-B99A9384');
    // Not reserved (a reservation fails the deploy on an account at 10, and caps the function): the runbook says so.
    expect(deploy).toContain('Neither function reserves concurrency.');
    for (const [, fn] of resources(built.prod.api).filter(([, r]) => r.Type === 'AWS::Lambda::Function')) expect(fn.Properties.ReservedConcurrentExecutions).toBeUndefined();
  });
});

describe('the API alarms (L4)', () => {
  it('page on the share of requests answered 5xx (20 % of 5 or more, twice in a row), and on the API Lambda\'s throttles', () => {
    const { worker } = built.dev;
    const api5xx = resource(worker, 'AlarmsApi5xxFE885FB1');
    expect(api5xx.Properties).toMatchObject({ Threshold: 20, ComparisonOperator: 'GreaterThanOrEqualToThreshold', EvaluationPeriods: 2, TreatMissingData: 'notBreaching', AlarmActions: [topicRef] });
    expect(api5xx.Properties.MetricName).toBeUndefined();
    const q = queriesOf(api5xx);
    expect(q.expr_1.Expression).toBe('IF(FILL(requests, 0) >= 5, 100 * FILL(errors, 0) / requests, 0)');
    expect(q.errors.MetricStat).toMatchObject({ Metric: { Namespace: 'AWS/ApiGateway', MetricName: '5xx' }, Period: 300, Stat: 'Sum' });
    expect(q.requests.MetricStat).toMatchObject({ Metric: { Namespace: 'AWS/ApiGateway', MetricName: 'Count' }, Period: 300, Stat: 'Sum' });
    for (const id of ['errors', 'requests']) expect(JSON.stringify(q[id].MetricStat.Metric.Dimensions)).toContain('HttpApi');
    const throttles = resource(worker, 'AlarmsApiThrottles0E721B72');
    expect(throttles.Properties).toMatchObject({ Namespace: 'AWS/Lambda', MetricName: 'Throttles', Statistic: 'Sum', Period: 300, Threshold: 1, EvaluationPeriods: 2, AlarmActions: [topicRef], OKActions: [topicRef] });
    expect(JSON.stringify(throttles.Properties.Dimensions)).toMatch(/Handler[0-9A-F]{8}/);
    expect(JSON.stringify(throttles.Properties.Dimensions)).not.toContain('QueuedJobSweeper');
  });
});

describe('the runbook\'s bucket table says who may touch each prefix, as the grants do (review-ops 4)', () => {
  type Role = 'api' | 'sweep' | 'worker';
  const ROLE_OF_POLICY: Record<string, Role> = {
    HandlerServiceRoleDefaultPolicy: 'api',
    QueuedJobSweeperServiceRoleDefaultPolicy: 'sweep',
    WorkerTaskDefinitionTaskRoleDefaultPolicy: 'worker',
  };

  /** Every object grant on the bucket: role → prefix → actions (Get, Put, Delete). */
  function objectGrants(templates: Template[]): Map<Role, Map<string, Set<string>>> {
    const out = new Map<Role, Map<string, Set<string>>>();
    for (const t of templates) {
      for (const { owner, statement } of policyStatements(t)) {
        if (statement.Effect !== 'Allow') continue;
        const actions = asArray(statement.Action).filter((a) => /^s3:(Get|Put|Delete)Object$/.test(a));
        if (actions.length === 0) continue;
        const role = Object.entries(ROLE_OF_POLICY).find(([prefix]) => owner.startsWith(prefix))?.[1];
        // A role with object access that the table has no column for fails here.
        expect(role, `${owner} has S3 object grants but no column in the table`).toBeDefined();
        for (const r of asArray(statement.Resource)) {
          const prefix = JSON.stringify(r).match(/"\/([a-z-]+\/(?:[a-z-]+\/)*)\*"/)?.[1];
          expect(prefix, `${owner}: ${JSON.stringify(r)}`).toBeDefined();
          const byPrefix = out.get(role!) ?? new Map<string, Set<string>>();
          const set = byPrefix.get(prefix!) ?? new Set<string>();
          for (const a of actions) set.add(a.replace(/^s3:/, '').replace(/Object$/, ''));
          byPrefix.set(prefix!, set);
          out.set(role!, byPrefix);
        }
      }
    }
    return out;
  }

  /** The table's rows: the prefixes of the first column, and the actions each role's cell names. */
  function tableRows(text: string): Array<{ prefixes: string[]; cells: Record<Role, Set<string>> }> {
    const section = text.slice(text.indexOf('## Bucket layout and who may touch it'), text.indexOf('\n## ', text.indexOf('## Bucket layout and who may touch it') + 1));
    const lines = section.split('\n').filter((l) => l.startsWith('| `'));
    expect(section).toContain('| Prefix | API Lambda | Sweep Lambda | Worker task role | Lifecycle |');
    return lines.map((line) => {
      const cells = line.split('|').slice(1, -1).map((c) => c.trim());
      expect(cells, line).toHaveLength(5);
      const prefixes = [...cells[0]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!.replace(/<[a-z]+>\/$/, ''));
      const actions = (cell: string) => new Set([...cell.matchAll(/\b(Get|Put|Delete)\b/g)].map((m) => m[1]!));
      return { prefixes, cells: { api: actions(cells[1]!), sweep: actions(cells[2]!), worker: actions(cells[3]!) } };
    });
  }

  it('every prefix granted to the API, the sweep or the worker has a row, and each row names exactly the actions granted', () => {
    // Prod as shipped, and with a record retention (the sweep's retention/ grant exists only then).
    const withRetention = build(stageConfig('prod', { alarmEmail: 'ops@example.com', recordRetentionDays: 90 }));
    const templates = [built.prod, withRetention].flatMap((b) => [b.stateful, b.api, b.worker]);
    const grants = objectGrants(templates);
    expect([...grants.keys()].sort()).toEqual(['api', 'sweep', 'worker']);
    const rows = tableRows(readme());
    // A grant covers a row when the row's prefix lies under the granted one (pending/ covers pending/msg/), or the other way round.
    const covers = (granted: string, documented: string) => documented.startsWith(granted) || granted.startsWith(documented);
    const missing: string[] = [];
    for (const [role, byPrefix] of grants) {
      for (const prefix of byPrefix.keys()) {
        if (!rows.some((row) => row.prefixes.some((p) => covers(prefix, p)))) missing.push(`${role}: ${prefix}`);
      }
    }
    expect(missing, 'prefixes granted but missing from cdk/README.md\'s bucket table').toEqual([]);
    for (const row of rows) {
      for (const role of ['api', 'sweep', 'worker'] as const) {
        const want = new Set<string>();
        for (const [prefix, actions] of grants.get(role) ?? []) {
          if (row.prefixes.some((p) => covers(prefix, p))) for (const a of actions) want.add(a);
        }
        expect([...row.cells[role]].sort(), `${row.prefixes.join(', ')}: ${role}`).toEqual([...want].sort());
      }
    }
  });

  it('has the rows the review found missing (spend-limits/, webhook-secrets/, workers/) and the API\'s Delete on uploads/, all of them granted', () => {
    const grants = objectGrants([built.prod.api, built.prod.worker]);
    expect([...grants.get('api')!.keys()]).toEqual(expect.arrayContaining(['spend-limits/', 'webhook-secrets/', 'workers/']));
    expect([...grants.get('api')!.get('uploads/')!].sort()).toEqual(['Delete', 'Get', 'Put']);
    const rows = tableRows(readme());
    for (const prefix of ['spend-limits/', 'webhook-secrets/', 'workers/']) expect(rows.some((r) => r.prefixes.includes(prefix)), prefix).toBe(true);
    expect([...rows.find((r) => r.prefixes.includes('uploads/'))!.cells.api].sort()).toEqual(['Delete', 'Get', 'Put']);
  });
});

describe('runbook entries an operator needs (review-ops 5 and 7)', () => {
  it('says that a deploy after a destroy makes a new, empty bucket, and how to get the old one back', () => {
    const text = readme();
    expect(text).toContain('**Deploying again after a destroy starts on a new, empty bucket.**');
    expect(text).toContain('`cdk import Clipag-<stage>-Stateful`');
    expect(text).toMatch(/aws s3 sync s3:\/\/<old bucket>\/keys\/ s3:\/\/<new bucket>\/keys\//);
    // The bucket's name is generated, which is why a new stack makes a new bucket.
    expect(resource(built.prod.stateful, 'ClipagBucket').Properties.BucketName).toBeUndefined();
  });

  it('rotates and revokes a key with the commands and flags `clipag keys` has', () => {
    const text = readme();
    const section = text.slice(text.indexOf("#### Rotate or revoke a customer's API key"), text.indexOf('\nDestroying:', text.indexOf("#### Rotate or revoke a customer's API key")));
    const usage = readFileSync(path.join(REPO_ROOT, 'cli', 'keys.ts'), 'utf8');
    const commands = [...section.matchAll(/^clipag keys ([a-z]+)([^#\n]*)/gm)];
    expect(commands.map((m) => m[1])).toEqual(['list', 'create', 'revoke']);
    for (const m of commands) {
      expect(usage, m[1]).toContain(`clipag keys ${m[1]}`);
      for (const flag of m[2]!.match(/--[a-z-]+/g) ?? []) expect(usage, flag).toContain(`${flag} `);
    }
    expect(section).toContain('`--owner`');
    expect(section).toMatch(/takes effect at once/);
  });

  it('shows how to check the alarm subscription and test the alarm path, and that a worker deploy waits for running jobs', () => {
    const text = readme();
    expect(text).toContain('aws sns list-subscriptions-by-topic --topic-arn "$(out Worker AlarmTopicArn)"');
    expect(text).toContain('PendingConfirmation');
    expect(text).toContain('aws cloudwatch set-alarm-state --alarm-name "$ALARM" --state-value ALARM');
    // The alarm the test sets exists under the name prefix the command uses (CloudFormation names it <stack>-<logical id>-…).
    expect(Object.keys((built.prod.worker.toJSON() as { Resources: object }).Resources).some((id) => id.startsWith('AlarmsDlqDepth'))).toBe(true);
    expect(text).toContain('**A worker deploy waits for running jobs.**');
    for (const stage of ['dev', 'prod'] as const) expect(built[stage].config.jobTimeoutSeconds / 60 + 5).toBe(65);
    expect(text).toContain('`jobTimeoutSeconds` + 5 minutes (65 minutes in both');
  });
});
