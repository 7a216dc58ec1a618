import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ContainerImage } from 'aws-cdk-lib/aws-ecs';
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildClipag, type ClipagStacks } from '../../cdk/lib/clipag.ts';
import { stageConfig, type StageConfig } from '../../cdk/lib/config.ts';
import { JOB_OUTCOMES, RATE_LIMIT_NAMES } from '../../cdk/lib/dashboard.ts';
import { createApp } from '../../functions/app.ts';
import { MemoryRateCounter } from '../../shared/adapters/local/rate-counter.ts';
import { NonRetryableError, RetryableError } from '../../shared/errors.ts';
import type { JobStore } from '../../shared/ports.ts';
import { harness } from '../functions/helpers.ts';
import { createWorker, jsonLogger } from '../../gpu-worker/worker/worker.ts';
import type { SynthesisOutcome, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { compileOutputScreen } from '../../shared/prompt-policy.ts';
import type { JobRecord } from '../../shared/schemas/job.ts';
import { makeEnv, submit, waitForStatus } from '../worker/helpers.ts';
import { standInImage, stepping } from '../worker/stand-ins.ts';
import { LAMBDA_STUB, REPO_ROOT, resources, testApp } from './helpers.ts';

// Both stages on a stub image: the dashboard does not depend on the image, and staging the repo
// root (stacks.test.ts does it once) costs seconds.
const stubImage = ContainerImage.fromRegistry('public.ecr.aws/docker/library/busybox:stable');

interface Built {
  config: StageConfig;
  stacks: ClipagStacks;
  stateful: Template;
  api: Template;
  worker: Template;
}

let cleanups: Array<() => void> = [];
const built: Record<'dev' | 'prod', Built> = {} as Record<'dev' | 'prod', Built>;

beforeAll(() => {
  for (const stage of ['dev', 'prod'] as const) {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const config = stage === 'prod' ? stageConfig('prod', { alarmEmail: 'ops@example.com' }) : stageConfig('dev');
    const stacks = buildClipag(app, config, { lambdaEntry: LAMBDA_STUB, workerImage: stubImage });
    built[stage] = { config, stacks, stateful: Template.fromStack(stacks.stateful), api: Template.fromStack(stacks.api), worker: Template.fromStack(stacks.worker) };
  }
});

afterAll(() => {
  for (const c of cleanups) c();
  cleanups = [];
});

// ---- reading the dashboard body ------------------------------------------------------------------

interface Widget {
  type: 'metric' | 'text' | 'alarm';
  x: number;
  y: number;
  width: number;
  height: number;
  properties: { title?: string; markdown?: string; alarms?: string[]; metrics?: unknown[][]; annotations?: { horizontal?: Array<{ value: number }> } };
}

/**
 * The dashboard of a template with its body parsed. The body is an Fn::Join of JSON text and
 * CloudFormation tokens (Refs, GetAtts, other stacks' outputs), and every token sits inside a JSON
 * string: each is replaced by a placeholder `⟦n⟧` (`tokens[n]` is the token), which leaves valid JSON.
 */
function dashboardOf(template: Template): { logicalId: string; name: unknown; widgets: Widget[]; tokens: unknown[] } {
  const dashboards = resources(template).filter(([, r]) => r.Type === 'AWS::CloudWatch::Dashboard');
  expect(dashboards).toHaveLength(1);
  const [logicalId, dashboard] = dashboards[0]!;
  const [separator, parts] = dashboard.Properties.DashboardBody['Fn::Join'] as [string, unknown[]];
  expect(separator).toBe('');
  const tokens: unknown[] = [];
  const text = parts.map((p) => (typeof p === 'string' ? p : `⟦${tokens.push(p) - 1}⟧`)).join('');
  const body = JSON.parse(text) as { widgets: Widget[] };
  return { logicalId, name: dashboard.Properties.DashboardName, widgets: body.widgets, tokens };
}

/** What a placeholder stands for: a token of this stack, or the value another stack outputs for it. */
function resolvePlaceholder(b: Built, tokens: unknown[], value: unknown): unknown {
  const m = typeof value === 'string' ? /^⟦(\d+)⟧$/.exec(value) : null;
  if (!m) return value;
  const token = tokens[Number(m[1])] as Record<string, any>;
  const producer = (stackName: string) => ({ [b.stacks.stateful.stackName]: b.stateful, [b.stacks.api.stackName]: b.api })[stackName]!;
  // Cross-stack references: an output of the producing stack, read as a stack output or an export.
  if (token['Fn::GetStackOutput']) {
    const { StackName, OutputName } = token['Fn::GetStackOutput'];
    return (producer(StackName).toJSON() as any).Outputs[OutputName].Value;
  }
  if (token['Fn::ImportValue']) {
    for (const t of [b.stateful, b.api]) {
      const out = Object.values((t.toJSON() as any).Outputs ?? {}).find((o: any) => o.Export?.Name === token['Fn::ImportValue']) as any;
      if (out) return out.Value;
    }
  }
  return token;
}

/** Every metric line of every graph: namespace, name, dimensions (resolved), with the widget's title. */
function metricsOf(b: Built, dash: ReturnType<typeof dashboardOf>): Array<{ title: string; namespace: string; name: string; dimensions: Record<string, unknown> }> {
  const out: Array<{ title: string; namespace: string; name: string; dimensions: Record<string, unknown> }> = [];
  for (const w of dash.widgets.filter((x) => x.type === 'metric')) {
    for (const line of w.properties.metrics ?? []) {
      if (typeof line[0] !== 'string') continue; // a math expression: its inputs are lines of their own
      const [namespace, name, ...rest] = line as [string, string, ...unknown[]];
      const dims: Record<string, unknown> = {};
      for (let i = 0; i + 1 < rest.length && typeof rest[i] === 'string'; i += 2) dims[rest[i] as string] = resolvePlaceholder(b, dash.tokens, rest[i + 1]);
      out.push({ title: w.properties.title!, namespace, name, dimensions: dims });
    }
  }
  return out;
}

const logicalIdOf = (t: Template, type: string, prefix: string) => {
  const ids = resources(t).filter(([id, r]) => r.Type === type && id.startsWith(prefix)).map(([id]) => id);
  expect(ids, `${type} ${prefix}`).toHaveLength(1);
  return ids[0]!;
};

/** The metric filters of the worker stack, by metric name. */
function filtersOf(b: Built): Record<string, any> {
  const filters = resources(b.worker).filter(([, r]) => r.Type === 'AWS::Logs::MetricFilter').map(([, r]) => r.Properties);
  return Object.fromEntries(filters.map((f) => [f.MetricTransformations[0].MetricName, f]));
}

// ---- CloudWatch Logs filter patterns, as far as these filters use them ------------------------------

/**
 * Whether a JSON filter pattern (`{ $.a = "x" }`, `{ ($.a = "x") && ($.b >= 0) }`) matches one JSON log
 * line. Only what the stack's patterns use: `&&` of comparisons of top-level fields with a quoted string
 * (= and !=) or a number, `IS TRUE` / `IS FALSE` (a JSON boolean only), and a parenthesized `||` of
 * comparisons as one of the `&&` terms. A comparison on a field the line lacks is false here, `!=`
 * included (the stack's patterns never depend on it: their `!=` fields are on every line they test).
 * Anything else throws, so a new pattern cannot pass untested.
 */
function matches(pattern: string, line: Record<string, unknown>): boolean {
  const m = /^\{\s*(.*?)\s*\}$/.exec(pattern);
  if (!m) throw new Error(`not a JSON pattern: ${pattern}`);
  const unwrap = (raw: string) => raw.trim().replace(/^\((.*)\)$/, '$1').trim();
  return m[1]!.split('&&').every((raw) => {
    const term = unwrap(raw);
    return term.includes('||') ? term.split('||').some((alternative) => compare(unwrap(alternative), line)) : compare(term, line);
  });
}

function compare(term: string, line: Record<string, unknown>): boolean {
  const bool = /^\$\.([A-Za-z_][A-Za-z0-9_]*) IS (TRUE|FALSE)$/.exec(term);
  if (bool) return line[bool[1]!] === (bool[2] === 'TRUE');
  const t = /^\$\.([A-Za-z_][A-Za-z0-9_]*)\s*(=|!=|>=|<=|>|<)\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?)$/.exec(term);
  if (!t) throw new Error(`unsupported term: ${term}`);
  const [, field, op, literal] = t;
  if (!Object.hasOwn(line, field!)) return false;
  const value = line[field!];
  if (literal!.startsWith('"')) {
    const want = JSON.parse(literal!) as string;
    if (op !== '=' && op !== '!=') throw new Error(`unsupported string comparison: ${term}`);
    // A string pattern compares with a string field only.
    const equal = typeof value === 'string' && value === want;
    return op === '=' ? equal : !equal;
  }
  if (typeof value !== 'number') return false;
  const n = Number(literal);
  return { '=': value === n, '!=': value !== n, '>=': value >= n, '<=': value <= n, '>': value > n, '<': value < n }[op!]!;
}

/** The job store with its listing (GET /v1/generations) failing as `fail` says, the rest as it is. */
/**
 * The JSON lines a real worker writes (its own jsonLogger at the default level, with its base field, as
 * gpu-worker/main.ts builds it) while `run` submits a job and waits for its record, and until its
 * `job finished` line, which follows the record's update.
 */
async function workerLines(
  env: Awaited<ReturnType<typeof makeEnv>>,
  parts: Pick<Parameters<typeof createWorker>[0], 'synthesizer' | 'outputScreen'>,
  run: () => Promise<void>,
): Promise<Array<Record<string, unknown>>> {
  const lines: string[] = [];
  const capture = (chunk: unknown) => (lines.push(String(chunk)), true);
  const stdout = vi.spyOn(process.stdout, 'write').mockImplementation(capture as typeof process.stdout.write);
  const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(capture as typeof process.stderr.write);
  const worker = createWorker({
    queue: env.queue, jobs: env.jobs, blobs: env.blobs, ...parts,
    config: { visibilityTimeoutSec: 30, maxReceives: 3, receiveWaitSec: 1, progressIntervalMs: 0, deadLetterSweepMs: 0 },
    warmUp: async () => undefined,
    log: jsonLogger('info', { component: 'worker' }),
  });
  try {
    worker.start();
    await run();
    const deadline = Date.now() + 10_000;
    while (!lines.some((l) => l.includes('"msg":"job finished"')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  } finally {
    await worker.stop();
    stdout.mockRestore();
    stderr.mockRestore();
  }
  return lines.flatMap((l) => l.split('\n')).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

function patchedList(jobs: JobStore, fail: () => Promise<never>): JobStore {
  return new Proxy(jobs, { get: (t, p, r) => (p === 'listByOwner' ? fail : typeof Reflect.get(t, p, r) === 'function' ? (Reflect.get(t, p, r) as Function).bind(t) : Reflect.get(t, p, r)) });
}

// ---- tests ---------------------------------------------------------------------------------------

describe('the dashboard', () => {
  it('is exactly one AWS::CloudWatch::Dashboard per stage, in the worker stack, named clipag-<stage>', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      expect(dashboardOf(b.worker).name).toBe(`clipag-${stage}`);
      b.stateful.resourceCountIs('AWS::CloudWatch::Dashboard', 0);
      b.api.resourceCountIs('AWS::CloudWatch::Dashboard', 0);
    }
  });

  it('graphs the job queue, the DLQ, the HTTP API and the API function of its own stage', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      const metrics = metricsOf(b, dashboardOf(b.worker));
      const dimension = (namespace: string, name: string, key: string) => metrics.filter((m) => m.namespace === namespace && m.name === name).map((m) => m.dimensions[key]);
      const queueName = (id: string) => ({ 'Fn::GetAtt': [id, 'QueueName'] });
      expect(dimension('AWS/SQS', 'ApproximateNumberOfMessagesVisible', 'QueueName')).toEqual(expect.arrayContaining([queueName('ClipagJobQueue'), queueName('ClipagJobDeadLetterQueue')]));
      expect(dimension('AWS/SQS', 'ApproximateNumberOfMessagesNotVisible', 'QueueName')).toContainEqual(queueName('ClipagJobQueue'));
      expect(dimension('AWS/SQS', 'ApproximateAgeOfOldestMessage', 'QueueName')).toEqual([queueName('ClipagJobQueue')]);
      const apiId = { Ref: logicalIdOf(b.api, 'AWS::ApiGatewayV2::Api', 'HttpApi') };
      for (const name of ['Count', '4xx', '5xx', 'Latency']) expect(dimension('AWS/ApiGateway', name, 'ApiId'), name).toContainEqual(apiId);
      // p50 / p90 / p99 of the gateway's latency.
      const latency = dashboardOf(b.worker).widgets.find((w) => w.properties.metrics?.some((l) => l[1] === 'Latency'))!;
      expect(latency.properties.metrics!.map((l) => (l.at(-1) as { stat: string }).stat)).toEqual(['p50', 'p90', 'p99']);
      const handler = { Ref: logicalIdOf(b.api, 'AWS::Lambda::Function', 'Handler') };
      for (const name of ['Errors', 'Throttles', 'ConcurrentExecutions']) expect(dimension('AWS/Lambda', name, 'FunctionName'), name).toContainEqual(handler);
      const sweeper = { Ref: logicalIdOf(b.api, 'AWS::Lambda::Function', 'QueuedJobSweeper') };
      for (const name of ['Invocations', 'Errors', 'Duration']) expect(dimension('AWS/Lambda', name, 'FunctionName'), name).toContainEqual(sweeper);
      // Nothing of another queue or API: every SQS/API Gateway/Lambda dimension is one of these.
      const known = [queueName('ClipagJobQueue'), queueName('ClipagJobDeadLetterQueue'), apiId, handler, sweeper].map((v) => JSON.stringify(v));
      for (const m of metrics.filter((x) => ['AWS/SQS', 'AWS/ApiGateway', 'AWS/Lambda'].includes(x.namespace))) {
        expect(known, `${m.namespace} ${m.name}`).toContain(JSON.stringify(Object.values(m.dimensions)[0]));
      }
    }
  });

  it("shows every operator alarm's state, by ARN, and no scaling alarm", () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      const dash = dashboardOf(b.worker);
      const alarmWidgets = dash.widgets.filter((w) => w.type === 'alarm');
      expect(alarmWidgets).toHaveLength(1);
      const shown = alarmWidgets[0]!.properties.alarms!.map((a) => resolvePlaceholder(b, dash.tokens, a));
      // The operator alarms are those that notify the topic; the scaling policy's two go to the policy.
      const operatorAlarms = resources(b.worker)
        .filter(([, r]) => r.Type === 'AWS::CloudWatch::Alarm' && JSON.stringify(r.Properties.AlarmActions ?? []).includes('AlarmsTopic'))
        .map(([id]) => ({ 'Fn::GetAtt': [id, 'Arn'] }));
      expect(operatorAlarms).toHaveLength(13);
      expect(shown).toHaveLength(operatorAlarms.length);
      expect(shown).toEqual(expect.arrayContaining(operatorAlarms));
      const a = b.stacks.worker.alarms;
      for (const alarm of [a.dlqDepthAlarm, a.oldestQueuedJobAlarm, a.queuedJobSweepAlarm, a.queuedJobSweepNotRunningAlarm, a.queuedJobSweepDroppedAlarm, a.api5xxAlarm!, a.apiThrottlesAlarm!, a.workerErrorAlarm, a.apiErrorAlarm, a.jobFailureRatioAlarm, a.rateLimitFailingOpenAlarm!, a.gpuIdleInstancesAlarm!, a.gpuFleetAtMaxAlarm!]) {
        expect(shown).toContainEqual(b.stacks.worker.resolve(alarm.alarmArn));
      }
    }
  });

  it('opens with notes: where the runbook is and one line per alarm, with the stage\'s thresholds', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      const [first] = dashboardOf(b.worker).widgets;
      expect(first!.type).toBe('text');
      expect(first!.y).toBe(0);
      const md = first!.properties.markdown!;
      expect(md).toMatch(new RegExp(`^# clipag ${stage}\\n`));
      expect(md).toContain('cdk/README.md, section "On call"');
      const idleMinutes = Math.max(60, b.config.scaleInAfterIdleMinutes + 30);
      for (const line of [`**DLQ depth ≥ ${b.config.alarmDlqDepth}**`, `**Oldest queued job ≥ ${b.config.alarmOldestQueuedJobSeconds} s**`, '**Queued-job sweep failing for 15 min**', `**Queued-job sweep not running for ${3 * b.config.queuedJobSweepMinutes} min**`, '**Queued-job sweep event dropped**', '**API 5xx ≥ 20 % of requests per 5 min, 2 periods in a row**', '**API Lambda throttled, 2 periods of 5 min in a row**', '**Rate limits failing open for 15 min**', '**GPU worker error line**', '**API or queued-job sweep error line**', '**Job failure share ≥ 50 % in 15 min**', `**GPU instances idle for ${idleMinutes} min**`, `**GPU fleet at its maximum (${b.config.maxInstances} instances) for 180 min**`, "**the account's AWS cost this month**", `of $${b.config.monthlyBudgetUsd}`, '**a worker task stopped abnormally**']) {
        expect(md).toContain(line);
      }
      // The runbook section it names exists, and so does each entry a line points to.
      const readme = readFileSync(path.join(REPO_ROOT, 'cdk', 'README.md'), 'utf8');
      expect(readme).toMatch(/^### On call$/m);
      const entries = [...md.matchAll(/→ runbook: \*([^*]+)\*/g)].map((m) => m[1]!);
      expect(new Set(entries).size).toBe(13);
      for (const entry of entries) expect(readme, entry).toContain(`#### ${entry}\n`);
      expect(md).toContain('rate_limited');
    }
  });

  it('titles every graph with what it shows and its unit, in rows: API, queue and jobs, GPU worker fleet', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { widgets } = dashboardOf(built[stage].worker);
      for (const w of widgets.filter((x) => x.type === 'metric')) {
        expect(w.properties.title, JSON.stringify(w.properties.metrics?.[0])).toMatch(/\([^)]*?(\bcount\b|\bms\b|\bseconds\b|%|\bmessages\b|\bjobs\b)/);
      }
      const headers = widgets.filter((w) => w.type === 'text' && w.height === 1).map((w) => w.properties.markdown);
      expect(headers).toEqual(['### API', '### Queue and jobs', '### GPU worker fleet']);
      // Rows do not overlap and stay inside the 24-unit grid.
      for (const w of widgets) expect(w.x + w.width).toBeLessThanOrEqual(24);
      const cells = new Set<string>();
      for (const w of widgets) {
        for (let x = w.x; x < w.x + w.width; x++) {
          for (let y = w.y; y < w.y + w.height; y++) {
            expect(cells.has(`${x},${y}`), `overlap at ${x},${y}`).toBe(false);
            cells.add(`${x},${y}`);
          }
        }
      }
    }
  });

  it("graphs the alarms' own metric filters: one filter per figure, none added for the same lines", () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      const metrics = metricsOf(b, dashboardOf(b.worker));
      const namespace = `Clipag/${stage}`;
      expect(metrics.filter((m) => m.namespace === namespace).map((m) => m.name)).toEqual(expect.arrayContaining(['OldestQueuedJobSeconds', 'WorkerErrorLines', 'WorkerJobsFinished']));
      const filters = resources(b.worker).filter(([, r]) => r.Type === 'AWS::Logs::MetricFilter').map(([, r]) => r.Properties);
      // The alarms' six and the dashboard's seven; no two on the same lines and metric.
      expect(filters.map((f) => f.MetricTransformations[0].MetricName).sort()).toEqual([
        'Api429Answers', 'ApiErrorLines', 'OldestQueuedJobSeconds', 'RateLimitRefusals', 'RateLimitUnavailable', 'SweepErrorLines', 'WorkerErrorLines', 'WorkerImagesWithheld', 'WorkerJobFailures', 'WorkerJobsFinished',
        'WorkerQueueWaitSeconds', 'WorkerSecondsPerImage', 'WorkerWarmUpTime',
      ]);
      // Every metric it graphs in the stage's namespace is one a filter of this stack publishes, with its dimensions.
      const published = filtersOf(b);
      for (const m of metrics.filter((x) => x.namespace.startsWith('Clipag'))) {
        const f = published[m.name];
        expect(f, m.name).toBeDefined();
        expect(f.MetricTransformations[0].MetricNamespace).toBe(namespace);
        expect(Object.keys(m.dimensions)).toEqual((f.MetricTransformations[0].Dimensions ?? []).map((d: { Key: string }) => d.Key));
      }
    }
  });

  it('adds metric filters only on JSON fields the code logs: the access log\'s status, the worker\'s job finished and warmed up lines', () => {
    const b = built.dev;
    const f = filtersOf(b);
    expect(f.Api429Answers).toMatchObject({ FilterPattern: '{ $.status = "429" }', MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'Api429Answers', MetricValue: '1' }] });
    expect(JSON.stringify(f.Api429Answers.LogGroupName)).toContain('AccessLogs'); // the API stage's access log, not the handler's
    expect(f.WorkerJobsFinished).toMatchObject({
      FilterPattern: '{ $.msg = "job finished" }',
      LogGroupName: { Ref: expect.stringMatching(/^WorkerLogs/) },
      MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'WorkerJobsFinished', MetricValue: '1', Dimensions: [{ Key: 'Outcome', Value: '$.outcome' }] }],
    });
    expect(f.WorkerWarmUpTime).toMatchObject({
      FilterPattern: '{ ($.msg = "warmed up") && ($.ms >= 0) }',
      LogGroupName: { Ref: expect.stringMatching(/^WorkerLogs/) },
      MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'WorkerWarmUpTime', MetricValue: '$.ms', Unit: 'Milliseconds' }],
    });
    // The lines they read, in the worker's source.
    const source = readFileSync(path.join(REPO_ROOT, 'gpu-worker', 'worker', 'worker.ts'), 'utf8');
    expect(source).toMatch(/log\.info\('job finished', \{[^}]*\boutcome\b/);
    expect(source).toMatch(/log\.info\('warmed up', \{ ms: /);
  });

  it("graphs one line per outcome the worker can log: JOB_OUTCOMES is the worker's JobOutcome type", () => {
    const source = readFileSync(path.join(REPO_ROOT, 'gpu-worker', 'worker', 'worker.ts'), 'utf8');
    const union = /export type JobOutcome = ([^;]+);/.exec(source)?.[1];
    expect(union).toBeDefined();
    const outcomes = [...union!.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]);
    expect([...JOB_OUTCOMES].sort()).toEqual(outcomes.sort());
    const b = built.dev;
    const graph = dashboardOf(b.worker).widgets.find((w) => w.properties.title?.startsWith('Jobs finished by outcome'))!;
    const graphed = metricsOf(b, { ...dashboardOf(b.worker), widgets: [graph] }).map((m) => m.dimensions.Outcome);
    expect(graphed).toEqual([...JOB_OUTCOMES]);
  });

  it('counts 429s from the access log as the stage writes it: status is a top-level JSON string', () => {
    const b = built.dev;
    const stage = resources(b.api).find(([, r]) => r.Type === 'AWS::ApiGatewayV2::Stage')![1];
    const format = stage.Properties.AccessLogSettings.Format as string;
    // One access-log line as API Gateway writes it: each $context variable replaced by its value.
    const line = (status: string) => JSON.parse(format.replace(/\$context\.[A-Za-z.]+/g, (v) => (v === '$context.status' ? status : 'x'))) as Record<string, unknown>;
    const pattern = filtersOf(b).Api429Answers.FilterPattern as string;
    expect(line('429').status).toBe('429');
    expect(matches(pattern, line('429'))).toBe(true);
    expect(matches(pattern, line('200'))).toBe(false);
    expect(matches(pattern, line('503'))).toBe(false);
    // The gateway's id (the app's request_id) and the Lambda invocation's (its REPORT and timeout lines) both.
    expect(JSON.parse(format)).toMatchObject({ requestId: '$context.requestId', lambdaRequestId: '$context.awsEndpointRequestId' });
  });

  it('the worker, running a job, writes the lines its filters read (through its own JSON logger)', async () => {
    const env = await makeEnv();
    let job!: JobRecord;
    const logged = await workerLines(env, { synthesizer: stepping(2, 1, undefined, [standInImage(0)]) }, async () => {
      job = await submit(env, { steps: 2 });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
    });
    const f = filtersOf(built.dev);

    const finished = logged.filter((l) => matches(f.WorkerJobsFinished.FilterPattern, l));
    expect(finished).toHaveLength(1);
    // What the job ran, so that its time per image can be told apart from another model's or size's.
    expect(finished[0]).toMatchObject({ level: 'info', msg: 'job finished', job_id: job.id, owner: job.owner, outcome: 'succeeded', model: 'tiny', width: 64, height: 64, steps: 2 });
    expect(finished[0]).not.toHaveProperty('error_code');
    // The dimension's field: one of the outcomes graphed.
    expect(JOB_OUTCOMES).toContain(finished[0]!.outcome);
    // A success is no failure by code.
    expect(logged.filter((l) => matches(f.WorkerJobFailures.FilterPattern, l))).toEqual([]);

    // How long the job waited to start, a number on its `job started` line, which also names the
    // delivery (message_id) that the lease, ack and dead-letter lines name.
    const started = logged.filter((l) => matches(f.WorkerQueueWaitSeconds.FilterPattern, l));
    expect(started).toHaveLength(1);
    expect(started[0]).toMatchObject({ msg: 'job started', job_id: job.id, owner: job.owner, message_id: expect.any(String), queuedSec: expect.any(Number) });
    expect(started[0]!.queuedSec).toBeGreaterThanOrEqual(0);
    expect(f.WorkerQueueWaitSeconds.MetricTransformations[0]).toMatchObject({ MetricValue: '$.queuedSec', Unit: 'Seconds' });
    // Every line about the job names it under one key: a Logs Insights `filter job_id = …` finds them all.
    const aboutJob = logged.filter((l) => JSON.stringify(l).includes(job.id));
    expect(aboutJob.length).toBeGreaterThanOrEqual(2);
    for (const l of aboutJob) {
      expect(l, String(l.msg)).toMatchObject({ job_id: job.id });
      expect(l, String(l.msg)).not.toHaveProperty('jobId');
    }

    // The run's GPU time per image, on the same line: one image here.
    const perImage = logged.filter((l) => matches(f.WorkerSecondsPerImage.FilterPattern, l));
    expect(perImage).toHaveLength(1);
    expect(perImage[0]).toMatchObject({ msg: 'job finished', outcome: 'succeeded', workerSeconds: expect.any(Number), secondsPerImage: perImage[0]!.workerSeconds });
    expect(f.WorkerSecondsPerImage.MetricTransformations[0]).toMatchObject({ MetricValue: '$.secondsPerImage', Unit: 'Seconds' });

    const warmed = logged.filter((l) => matches(f.WorkerWarmUpTime.FilterPattern, l));
    expect(warmed).toHaveLength(1);
    expect(warmed[0]).toMatchObject({ msg: 'warmed up', ms: expect.any(Number) });

    // And the alarms' error filter matches none of a healthy run's lines.
    expect(logged.filter((l) => matches(f.WorkerErrorLines.FilterPattern, l))).toEqual([]);
  });

  it('the worker whose output check withholds every image writes a line per withheld image (ImagesWithheld) and a failed job finished line (the failure share)', async () => {
    const env = await makeEnv();
    // Two images, both scoring above the withhold rule's concept: the job fails content_policy.
    const screen = compileOutputScreen([{ id: 'mouse', category: 'copyright', action: 'withhold', message: 'no mice', concepts: ['Mickey Mouse'], above_prompt_by: 0 }]);
    const synthesizer: Synthesizer = {
      async run(job, options = {}) {
        const images = [0, 1].map((index) => ({
          index, seed: index, png: encodePng(solidImage(8, 8, [0.5, 0.5, 0.5])), width: 8, height: 8,
          clipScore: 0.3, scores: [{ text: job.spec.prompt ?? '', weight: 1, cosine: 0.3 }],
          screenCosines: options.screenTexts ? [0.6] : [], frames: [], stepsDone: 2,
        }));
        return { images, aborted: false, stepsDone: 4, totalSteps: 4, encoderPasses: 4, timingsMs: { total: 5, sessionRun: 4, optimize: 3 } } satisfies SynthesisOutcome;
      },
    };
    const logged = await workerLines(env, { synthesizer, outputScreen: async () => screen }, async () => {
      const job = await submit(env, { n: 2 });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).error?.code).toBe('content_policy');
    });
    const f = filtersOf(built.dev);
    expect(f.WorkerImagesWithheld).toMatchObject({
      FilterPattern: '{ ($.msg = "output check matched") && ($.withheld IS TRUE) }',
      LogGroupName: { Ref: expect.stringMatching(/^WorkerLogs/) },
      MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'WorkerImagesWithheld', MetricValue: '1' }],
    });
    const withheld = logged.filter((l) => matches(f.WorkerImagesWithheld.FilterPattern, l));
    expect(withheld.map((l) => [l.msg, l.index, l.withheld])).toEqual([['output check matched', 0, true], ['output check matched', 1, true]]);
    // A flagged image (withheld false) is not counted.
    expect(matches(f.WorkerImagesWithheld.FilterPattern, { ...withheld[0]!, withheld: false })).toBe(false);
    // The job counts as failed for the failure share.
    const finished = logged.filter((l) => matches(f.WorkerJobsFinished.FilterPattern, l));
    expect(finished.map((l) => l.outcome)).toEqual(['failed']);
    // And once among the failures by code, its code at the top level of the line (the dimension's field).
    expect(f.WorkerJobFailures).toMatchObject({
      FilterPattern: '{ ($.msg = "job finished") && ($.outcome = "failed") }',
      LogGroupName: { Ref: expect.stringMatching(/^WorkerLogs/) },
      MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'WorkerJobFailures', MetricValue: '1', Dimensions: [{ Key: 'ErrorCode', Value: '$.error_code' }] }],
    });
    const failures = logged.filter((l) => matches(f.WorkerJobFailures.FilterPattern, l));
    expect(failures.map((l) => [l.error_code, (l.error as { code: string }).code])).toEqual([['content_policy', 'content_policy']]);
  });

  it('the API writes the lines the rate-limit filters read: a refusal per limit (the dimension one of RATE_LIMIT_NAMES), and a counter failure', async () => {
    const h = await harness();
    try {
      const auth = { Authorization: `Bearer ${h.alice}` };
      // Each limit refuses once: requests at 1 a minute (bob), uploads at 1 an hour, waits at 1.
      const limited = createApp({ ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...h.deps.limits, rateLimitPerMin: 1 } });
      await limited.request('/v1/models', { headers: { Authorization: `Bearer ${h.bob}` } });
      expect((await limited.request('/v1/models', { headers: { Authorization: `Bearer ${h.bob}` } })).status).toBe(429);
      const budgets = createApp({ ...h.deps, rateCounter: new MemoryRateCounter(), limits: { ...h.deps.limits, uploadsPerHour: 1, maxWaits: 1, maxWaitSec: 1 } });
      const upload = () => budgets.request('/v1/uploads', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: JSON.stringify({ content_type: 'image/png', bytes: 10 }) });
      await upload();
      expect((await upload()).status).toBe(429);
      const held = () => budgets.request('/v1/generations', { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json', Prefer: 'wait=1' }, body: JSON.stringify({ prompt: 'a red circle' }) });
      await held();
      expect((await held()).headers.get('Preference-Applied')).toBeNull();
      // A counter that does not answer.
      const broken = { get: async () => Promise.reject(new RetryableError('injected')), addBelow: async () => Promise.reject(new RetryableError('injected')) };
      await createApp({ ...h.deps, rateCounter: broken, limits: { ...h.deps.limits, rateLimitPerMin: 5 } }).request('/v1/models', { headers: auth });
    } finally {
      await h.close();
    }
    // As jsonLineLog writes them: the entry, with its time, as one JSON line.
    const lines = h.logs.map((e) => JSON.parse(JSON.stringify({ time: new Date().toISOString(), ...(e as object) })) as Record<string, unknown>);
    const f = filtersOf(built.dev);
    const refused = lines.filter((l) => matches(f.RateLimitRefusals.FilterPattern, l));
    expect(refused.map((l) => l.limit_name).sort()).toEqual([...RATE_LIMIT_NAMES].sort());
    expect(f.RateLimitRefusals.MetricTransformations[0].Dimensions).toEqual([{ Key: 'Limit', Value: '$.limit_name' }]);
    expect(lines.filter((l) => matches(f.RateLimitUnavailable.FilterPattern, l))).toHaveLength(1);
    // The names the app gives its limiters are the ones graphed.
    const app = readFileSync(path.join(REPO_ROOT, 'functions', 'app.ts'), 'utf8');
    expect([...app.matchAll(/\bgate\(deps\.limits\.\w+, [^,]+, '([a-z]+)'/g)].map((m) => m[1]).sort()).toEqual([...RATE_LIMIT_NAMES].sort());
  });

  it("the API's error lines page (ApiErrorLines), but a 503's `request failed` line, the 5xx share's, does not", async () => {
    const h = await harness();
    try {
      const auth = { Authorization: `Bearer ${h.alice}` };
      // A bug: an unexpected TypeError, answered 500. Then storage refusing for a moment, answered 503.
      const buggy = createApp({ ...h.deps, jobs: patchedList(h.deps.jobs, () => Promise.reject(new TypeError("Cannot read properties of undefined (reading 'id')"))) });
      expect((await buggy.request('/v1/generations', { headers: auth })).status).toBe(500);
      const blip = createApp({ ...h.deps, jobs: patchedList(h.deps.jobs, () => Promise.reject(new RetryableError('S3 is unavailable: SlowDown'))) });
      expect((await blip.request('/v1/generations', { headers: auth })).status).toBe(503);
      // A rate-limit counter refused for good (a missing table or grant): an error line without a status.
      const denied = { get: async () => Promise.reject(new NonRetryableError('AccessDenied')), addBelow: async () => Promise.reject(new NonRetryableError('AccessDenied')) };
      await createApp({ ...h.deps, rateCounter: denied, limits: { ...h.deps.limits, rateLimitPerMin: 5 } }).request('/v1/models', { headers: auth });
    } finally {
      await h.close();
    }
    const lines = h.logs.map((e) => JSON.parse(JSON.stringify({ time: new Date().toISOString(), ...(e as object) })) as Record<string, unknown>);
    const errors = lines.filter((l) => l.level === 'error');
    expect(errors.map((l) => [l.msg === 'request failed' ? l.status : l.event])).toEqual(expect.arrayContaining([[500], [503], ['rate_limit_unavailable']]));
    const f = filtersOf(built.dev);
    expect(JSON.stringify(f.ApiErrorLines.LogGroupName)).toContain('HandlerLogs');
    const paging = lines.filter((l) => matches(f.ApiErrorLines.FilterPattern, l));
    expect(paging.map((l) => l.status ?? l.event).sort()).toEqual([500, 'rate_limit_unavailable'].sort());
    // The sweep's group: every error line.
    expect(f.SweepErrorLines).toMatchObject({ FilterPattern: '{ $.level = "error" }', MetricTransformations: [{ MetricNamespace: 'Clipag/dev', MetricName: 'SweepErrorLines', MetricValue: '1' }] });
    expect(JSON.stringify(f.SweepErrorLines.LogGroupName)).toContain('QueuedJobSweeperLogs');
  });

  it("graphs failed jobs by error code with a search of the stage's own namespace, and each job's wait to start as p50 / p90", () => {
    for (const stage of ['dev', 'prod'] as const) {
      const { widgets } = dashboardOf(built[stage].worker);
      const byCode = widgets.find((w) => w.properties.title?.startsWith('Failed jobs by error code'))!;
      const expressions = (byCode.properties.metrics ?? []).map((l) => (l[0] as { expression?: string }).expression);
      expect(expressions).toEqual([`SEARCH('{Clipag/${stage},ErrorCode} MetricName="WorkerJobFailures"', 'Sum', 900)`]);
      const wait = widgets.find((w) => w.properties.title?.startsWith('Jobs: wait to start'))!;
      expect(wait.properties.metrics!.map((l) => [l[1], (l.at(-1) as { stat: string }).stat])).toEqual([['WorkerQueueWaitSeconds', 'p50'], ['WorkerQueueWaitSeconds', 'p90']]);
    }
  });

  it('graphs task counts from Container Insights where the stage has it, and turns nothing on where it has not', () => {
    const cluster = (b: Built) => resources(b.worker).find(([, r]) => r.Type === 'AWS::ECS::Cluster')![1].Properties.ClusterSettings;
    expect(cluster(built.dev)).toEqual([{ Name: 'containerInsights', Value: 'disabled' }]);
    expect(cluster(built.prod)).toEqual([{ Name: 'containerInsights', Value: 'enabled' }]);

    const prod = metricsOf(built.prod, dashboardOf(built.prod.worker)).filter((m) => m.namespace === 'ECS/ContainerInsights');
    expect(prod.map((m) => m.name)).toEqual(['RunningTaskCount', 'DesiredTaskCount', 'PendingTaskCount']);
    const service = logicalIdOf(built.prod.worker, 'AWS::ECS::Service', 'WorkerService');
    for (const m of prod) {
      expect(m.dimensions).toEqual({ ClusterName: { Ref: logicalIdOf(built.prod.worker, 'AWS::ECS::Cluster', 'Cluster') }, ServiceName: { 'Fn::GetAtt': [service, 'Name'] } });
    }

    const dev = dashboardOf(built.dev.worker);
    expect(metricsOf(built.dev, dev).filter((m) => m.namespace === 'ECS/ContainerInsights')).toEqual([]);
    expect(dev.widgets.some((w) => w.type === 'text' && w.properties.markdown!.includes('Container Insights, off here'))).toBe(true);
    // Both: the backlog that sets the task count, and the capacity provider's reservation.
    for (const b of [built.dev, built.prod]) {
      const metrics = metricsOf(b, dashboardOf(b.worker));
      expect(metrics.find((m) => m.name === 'CapacityProviderReservation')?.dimensions).toEqual({
        CapacityProviderName: { Ref: logicalIdOf(b.worker, 'AWS::ECS::CapacityProvider', 'GpuCapacityProvider') },
        ClusterName: { Ref: logicalIdOf(b.worker, 'AWS::ECS::Cluster', 'Cluster') },
      });
      expect(dashboardOf(b.worker).widgets.some((w) => w.properties.metrics?.some((l) => (l[0] as { expression?: string }).expression === 'FILL(visible, 0) + FILL(inFlight, 0)'))).toBe(true);
    }
  });

  it('adds nothing billable but itself and its metric filters: no alarm, topic or log group', () => {
    for (const stage of ['dev', 'prod'] as const) {
      const b = built[stage];
      const own = resources(b.worker).filter(([id]) => id.startsWith('Dashboard')).map(([, r]) => r.Type);
      expect(own.sort()).toEqual(['AWS::CloudWatch::Dashboard', ...Array(7).fill('AWS::Logs::MetricFilter')]);
      b.worker.resourceCountIs('AWS::SNS::Topic', 1);
      // The thirteen operator alarms (QueueAlarms) and the scaling policy's two.
      b.worker.resourceCountIs('AWS::CloudWatch::Alarm', 15);
      // It reads no Logs Insights queries (each view of such a widget is billed by the data it scans).
      expect(dashboardOf(b.worker).widgets.map((w) => w.type).every((t) => t === 'metric' || t === 'text' || t === 'alarm')).toBe(true);
    }
  });
});

describe('stage isolation (both stages in one account and region)', () => {
  /** True when a dimension value is a reference to a resource of the stage's own stacks, not a literal. */
  const stageScoped = (value: unknown) => typeof value === 'object' && value !== null && /"(Fn::GetAtt|Fn::GetStackOutput)"|"Ref":"(?!AWS::)/.test(JSON.stringify(value));

  /**
   * Every metric a stage's worker stack publishes or reads whose identity is literal text (namespace, name,
   * dimension names and literal values): those of its metric filters, alarms (single and math) and
   * dashboard. A metric with a dimension that references one of the stage's resources (a queue, a
   * function, a cluster) is the stage's by construction and left out.
   */
  function literalMetrics(b: Built): Set<string> {
    const out = new Set<string>();
    const add = (namespace: string, name: string, dimensions: Array<[string, unknown]>) => {
      if (dimensions.some(([, v]) => stageScoped(v))) return;
      out.add(`${namespace} | ${name} | ${JSON.stringify(dimensions.map(([k, v]) => [k, v]).sort())}`);
    };
    for (const [, r] of resources(b.worker)) {
      if (r.Type === 'AWS::Logs::MetricFilter') {
        const t = r.Properties.MetricTransformations[0];
        // A filter's dimension takes its value from each line: the identity is the key.
        add(t.MetricNamespace, t.MetricName, (t.Dimensions ?? []).map((d: { Key: string }) => [d.Key, '(from the line)']));
      }
      if (r.Type === 'AWS::CloudWatch::Alarm') {
        const p = r.Properties;
        const dims = (list: Array<{ Name: string; Value: unknown }> | undefined) => (list ?? []).map((d) => [d.Name, d.Value] as [string, unknown]);
        if (p.MetricName) add(p.Namespace, p.MetricName, dims(p.Dimensions));
        for (const q of p.Metrics ?? []) if (q.MetricStat) add(q.MetricStat.Metric.Namespace, q.MetricStat.Metric.MetricName, dims(q.MetricStat.Metric.Dimensions));
      }
    }
    for (const m of metricsOf(b, dashboardOf(b.worker))) add(m.namespace, m.name, Object.entries(m.dimensions));
    return out;
  }

  it('no metric of dev is a metric of prod: every custom metric is in its stage\'s namespace, Clipag/<stage>', () => {
    const dev = literalMetrics(built.dev);
    const prod = literalMetrics(built.prod);
    // The check sees the custom metrics: the alarms' and the dashboard's filters, the outcomes the failure share reads.
    for (const [stage, set] of [['dev', dev], ['prod', prod]] as const) {
      expect([...set].filter((m) => m.startsWith('Clipag')).length, stage).toBeGreaterThanOrEqual(9);
      expect(set, stage).toContain(`Clipag/${stage} | WorkerErrorLines | []`);
      expect(set, stage).toContain(`Clipag/${stage} | WorkerJobsFinished | [["Outcome","failed"]]`);
      for (const m of set) expect(m, stage).toMatch(new RegExp(`^Clipag/${stage} \\| `));
    }
    expect([...dev].filter((m) => prod.has(m))).toEqual([]);
  });
});
