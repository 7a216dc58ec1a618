// The accounts' webhook signing secrets (ADR 0028) under webhook-secrets/: the API may create, rotate
// and delete them, the worker and the queued-job sweep may read them (they sign with them), and no
// other role may touch them.
import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { ContainerImage } from 'aws-cdk-lib/aws-ecs';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildClipag } from '../../cdk/lib/clipag.ts';
import { stageConfig } from '../../cdk/lib/config.ts';
import { grantWebhookSecrets } from '../../cdk/lib/grants.ts';
import { WEBHOOK_SECRETS_PREFIX, webhookSecretKey } from '../../shared/keys.ts';
import { LAMBDA_STUB, asArray, policyStatements, testApp } from './helpers.ts';

const cleanups: Array<() => void> = [];
afterAll(() => {
  for (const c of cleanups) c();
});

/** The actions each policy (by its logical id) allows on objects under webhook-secrets/, sorted. */
function secretGrants(t: Template): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const { owner, statement } of policyStatements(t)) {
    if (statement.Effect !== 'Allow') continue;
    if (!asArray(statement.Resource).some((r) => JSON.stringify(r).includes(`/${WEBHOOK_SECRETS_PREFIX}*`))) continue;
    out[owner] = [...(out[owner] ?? []), ...asArray(statement.Action)].sort();
  }
  return out;
}

describe('webhook-secrets/ grants', () => {
  it('the blob key the API writes and the deliverers read is under the prefix the grants name', () => {
    expect(webhookSecretKey('acct_alice')).toBe(`${WEBHOOK_SECRETS_PREFIX}acct_alice.json`);
    expect(WEBHOOK_SECRETS_PREFIX).toBe('webhook-secrets/');
  });

  it('grantWebhookSecrets: manage is get, put and delete on webhook-secrets/* alone; sign is get alone', () => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const stack = new Stack(app, 'GrantsOnly');
    const bucket = new s3.Bucket(stack, 'Data');
    const lambda = () => new iam.ServicePrincipal('lambda.amazonaws.com');
    grantWebhookSecrets(new iam.Role(stack, 'Api', { assumedBy: lambda() }), bucket, 'manage');
    grantWebhookSecrets(new iam.Role(stack, 'Deliverer', { assumedBy: lambda() }), bucket, 'sign');
    const t = Template.fromStack(stack);
    const grants = secretGrants(t);
    expect(Object.keys(grants).map((id) => id.replace(/[0-9A-F]{8}$/, '')).sort()).toEqual(['ApiDefaultPolicy', 'DelivererDefaultPolicy']);
    const of = (prefix: string) => Object.entries(grants).find(([id]) => id.startsWith(prefix))![1];
    expect(of('ApiDefaultPolicy')).toEqual(['s3:DeleteObject', 's3:GetObject', 's3:PutObject']);
    expect(of('DelivererDefaultPolicy')).toEqual(['s3:GetObject']);
    // On the prefix's objects only: never the bucket, never another prefix.
    for (const { statement } of policyStatements(t)) {
      expect(asArray(statement.Resource).map((r) => JSON.stringify(r))).toEqual([expect.stringContaining(`"/${WEBHOOK_SECRETS_PREFIX}*"`)]);
    }
  });
});

describe('the deployed stacks', () => {
  let api: Template;
  let worker: Template;
  let stateful: Template;
  beforeAll(() => {
    const { app, cleanup } = testApp();
    cleanups.push(cleanup);
    const stacks = buildClipag(app, stageConfig('dev'), { lambdaEntry: LAMBDA_STUB, workerImage: ContainerImage.fromRegistry('public.ecr.aws/docker/library/busybox:stable') });
    api = Template.fromStack(stacks.api);
    worker = Template.fromStack(stacks.worker);
    stateful = Template.fromStack(stacks.stateful);
  });

  it('the API handler manages the secrets; the sweep and the worker task read them; no other role has any action on them', () => {
    const byRole = (grants: Record<string, string[]>) => Object.fromEntries(Object.entries(grants).map(([id, actions]) => [id.replace(/[0-9A-F]{8}$/, ''), actions]));
    expect(byRole(secretGrants(api))).toEqual({
      HandlerServiceRoleDefaultPolicy: ['s3:DeleteObject', 's3:GetObject', 's3:PutObject'],
      QueuedJobSweeperServiceRoleDefaultPolicy: ['s3:GetObject'],
    });
    expect(byRole(secretGrants(worker))).toEqual({ WorkerTaskDefinitionTaskRoleDefaultPolicy: ['s3:GetObject'] });
    expect(secretGrants(stateful)).toEqual({});
  });
});
