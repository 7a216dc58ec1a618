import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { App } from 'aws-cdk-lib';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const LAMBDA_STUB = fileURLToPath(new URL('./fixtures/lambda-stub.ts', import.meta.url));

export interface CdkJson {
  app: string;
  notices?: boolean;
  context: Record<string, unknown>;
}

export function readCdkJson(): CdkJson {
  return JSON.parse(readFileSync(path.join(REPO_ROOT, 'cdk.json'), 'utf8')) as CdkJson;
}

/**
 * `new App()` does not read cdk.json, so its context (feature flags!) is passed explicitly.
 * Each App writes into its own temp folder; call `cleanup` in afterAll.
 */
export function testApp(extraContext: Record<string, unknown> = {}): { app: App; cleanup: () => void } {
  const outdir = mkdtempSync(path.join(tmpdir(), 'clipag-cdk-'));
  const app = new App({
    outdir,
    context: {
      ...readCdkJson().context,
      // Skip esbuild: the assertions are about the templates, not the bundle.
      'aws:cdk:bundling-stacks': [],
      ...extraContext,
    },
  });
  return { app, cleanup: () => rmSync(outdir, { recursive: true, force: true }) };
}

/** Every resource of the template with its logical ID. */
export function resources(template: { toJSON(): unknown }): Array<[string, { Type: string; Properties?: any; DependsOn?: string[]; DeletionPolicy?: string; UpdateReplacePolicy?: string }]> {
  const json = template.toJSON() as { Resources: Record<string, any> };
  return Object.entries(json.Resources);
}

export interface Statement {
  Effect: 'Allow' | 'Deny';
  Action?: string | string[];
  NotAction?: string | string[];
  Resource?: unknown;
  Condition?: unknown;
}

/** All statements of all inline policies, bucket/queue/topic policies and role policies. */
export function policyStatements(template: { toJSON(): unknown }): Array<{ owner: string; type: string; statement: Statement }> {
  const out: Array<{ owner: string; type: string; statement: Statement }> = [];
  for (const [id, res] of resources(template)) {
    const docs: unknown[] = [];
    const p = res.Properties ?? {};
    if (p.PolicyDocument) docs.push(p.PolicyDocument);
    for (const pol of p.Policies ?? []) docs.push(pol.PolicyDocument);
    for (const doc of docs) {
      for (const statement of (doc as { Statement: Statement[] }).Statement) out.push({ owner: id, type: res.Type, statement });
    }
  }
  return out;
}

export const asArray = <T,>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
