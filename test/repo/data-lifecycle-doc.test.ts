/**
 * docs/data-lifecycle.md tells a data-protection officer how long each kind of customer data is kept.
 * Its figures are held here to the code: the stage entries (cdk/lib/config.ts), the rules and queues the
 * Stateful stack synthesizes, and the processes' own constants. A figure changed in the code without the
 * document (or in the document alone), a table row added without its figures, a bucket prefix the
 * document does not name, or a source file that no longer exists fails here.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { describe, expect, it } from 'vitest';
import { BUCKET_PREFIXES, ENV, STAGES, type StageName } from '../../cdk/lib/config.ts';
import { STATEFUL_LOGICAL_IDS, StatefulStack } from '../../cdk/lib/stateful-stack.ts';
import { DELETED_BODY_HASH } from '../../functions/idempotency.ts';
import { parseConfig } from '../../shared/config.ts';
import { DEAD_LETTER_RETENTION_SEC } from '../../shared/adapters/local/queue.ts';
import { WEBHOOK_SECRETS_PREFIX } from '../../shared/keys.ts';
import { RUN_STATS_KEEP } from '../../shared/run-stats.ts';
import { DELETED_TEXT } from '../../shared/schemas/job.ts';
import { RECENT_JOBS_KEPT } from '../../shared/usage.ts';
import { linkLifeUntilExpiry } from '../../shared/views.ts';
import { MAX_PREVIOUS_SECRETS, PREVIOUS_SECRET_GRACE_MS } from '../../shared/webhook-secrets.ts';
import { REPO_ROOT } from '../helpers/reference.ts';

const DOC = 'docs/data-lifecycle.md';
const doc = readFileSync(join(REPO_ROOT, DOC), 'utf8');
const DAY_SEC = 86_400;

// ---- the document's table -----------------------------------------------------------

const HEADER = ['Data', 'Where', 'Holds', 'Kept', 'Read by (AWS roles)', 'DELETE and retention', 'Source'];
const cellsOf = (line: string) => line.split('|').slice(1, -1).map((cell) => cell.trim());

function table(): Map<string, Record<string, string>> {
  const lines = doc.split('\n');
  const at = lines.findIndex((line) => line.startsWith('|') && cellsOf(line).join('|') === HEADER.join('|'));
  if (at < 0) throw new Error(`${DOC}: no table with the columns ${HEADER.join(', ')}`);
  const rows = new Map<string, Record<string, string>>();
  for (const line of lines.slice(at + 2)) {
    if (!line.startsWith('|')) break;
    const cells = cellsOf(line);
    expect(cells, `${DOC}: a row of ${HEADER.length} cells: ${line.slice(0, 60)}`).toHaveLength(HEADER.length);
    rows.set(cells[0]!, Object.fromEntries(HEADER.map((name, i) => [name, cells[i]!])));
  }
  return rows;
}

/** Text outside `code spans` (which hold paths, routes and names, whose digits are no figures). */
const prose = (text: string) => text.replace(/`[^`]*`/g, '`…`');
/** Every number a cell states, in order, outside code spans (not the digits of a word: sha256, 5xx). */
const numbersIn = (text: string) => [...prose(text).matchAll(/(?<![\w.])\d+(?:\.\d+)?(?!\w)/g)].map((m) => Number(m[0]));
/** A figure as the document states it: once when both stages share it, else dev's then prod's. */
const perStage = (dev: number, prod: number) => (dev === prod ? [dev] : [dev, prod]);

// ---- the code's figures ---------------------------------------------------------------

interface LifecycleRule {
  Id: string;
  Prefix?: string;
  ExpirationInDays?: number;
  NoncurrentVersionExpiration?: { NoncurrentDays: number };
  AbortIncompleteMultipartUpload?: { DaysAfterInitiation: number };
}

/** What the Stateful stack synthesizes for a stage: its bucket's rules and versioning, its queues' retention. */
function stateful(stage: StageName) {
  const stack = new StatefulStack(new App(), `Stateful-${stage}`, { config: STAGES[stage] });
  const resources = Template.fromStack(stack).toJSON().Resources as Record<string, { Type: string; Properties: Record<string, any> }>;
  const bucket = resources[STATEFUL_LOGICAL_IDS.bucket]!.Properties;
  const rules = new Map<string, LifecycleRule>((bucket.LifecycleConfiguration.Rules as LifecycleRule[]).map((r) => [r.Id, r]));
  const rule = (id: string) => {
    const found = rules.get(id);
    if (!found) throw new Error(`${stage}: no lifecycle rule ${id}`);
    return found;
  };
  const retentionDays = (id: string) => (resources[id]!.Properties.MessageRetentionPeriod as number) / DAY_SEC;
  return {
    rules,
    rule,
    versioned: bucket.VersioningConfiguration?.Status === 'Enabled',
    queueDays: retentionDays(STATEFUL_LOGICAL_IDS.queue),
    deadLetterDays: retentionDays(STATEFUL_LOGICAL_IDS.deadLetterQueue),
  };
}

const dev = stateful('dev');
const prod = stateful('prod');
const d = STAGES.dev;
const p = STAGES.prod;
const noncurrent = (id: string) => prod.rule(id).NoncurrentVersionExpiration!.NoncurrentDays;
const outputDays = perStage(dev.rule('expire-outputs').ExpirationInDays!, prod.rule('expire-outputs').ExpirationInDays!);
const uploadDays = perStage(dev.rule('expire-uploads').ExpirationInDays!, prod.rule('expire-uploads').ExpirationInDays!);
const logDays = perStage(d.logRetentionDays, p.logRetentionDays);
const graceHours = PREVIOUS_SECRET_GRACE_MS / 3_600_000;
const localDeadLetterDays = DEAD_LETTER_RETENTION_SEC / DAY_SEC;
const aws = parseConfig({ CLIPAG_MODE: 'aws', AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-test', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q' });
const local = parseConfig({});

/** The figures each row's Kept cell states, in the order it states them. */
const KEPT: Record<string, number[]> = {
  'Job record': [noncurrent('expire-noncurrent')],
  'Idempotency claim': [noncurrent('expire-noncurrent')],
  'Output images and frames': [...outputDays, noncurrent('expire-outputs')],
  'Init images': [...uploadDays, noncurrent('expire-uploads')],
  'Usage ledger': [],
  'Run statistics': [RUN_STATS_KEEP],
  'Spend limits': [noncurrent('expire-noncurrent')],
  'Account webhook secret': [graceHours, noncurrent('expire-noncurrent')],
  'API keys': [],
  'Work markers': [noncurrent('pending-markers')],
  'Content policies and models': [],
  'Job queue': perStage(dev.queueDays, prod.queueDays),
  'Dead-letter queue': [...perStage(dev.deadLetterDays, prod.deadLetterDays), localDeadLetterDays],
  'Rate counters': [],
  'App logs': logDays,
  'Access log': logDays,
  'Record retention progress': [],
  'Worker presence': [dev.rule('expire-worker-presence').ExpirationInDays!],
  'Local-only files': [],
};

/** The number a sentence of the notes states, found by the words around it. */
function stated(pattern: RegExp): number {
  const m = pattern.exec(prose(doc).replace(/\s+/g, ' '));
  if (!m) throw new Error(`${DOC} no longer says ${pattern}`);
  return Number(m[1]);
}

describe(DOC, () => {
  const rows = table();

  it('states each row’s retention figures as the code has them', () => {
    expect([...rows.keys()].sort()).toEqual(Object.keys(KEPT).sort());
    for (const [data, figures] of Object.entries(KEPT)) {
      expect(numbersIn(rows.get(data)!.Kept), `${data}: Kept`).toEqual(figures);
    }
  });

  it('says per stage what the stage entries and the synthesized stacks say', () => {
    const kept = (data: string) => prose(rows.get(data)!.Kept);
    // The stage each figure belongs to is named beside it where the stages differ.
    if (outputDays.length === 2) expect(kept('Output images and frames')).toContain(`dev ${outputDays[0]} days, prod ${outputDays[1]} days`);
    if (logDays.length === 2) for (const data of ['App logs', 'Access log']) expect(kept(data)).toContain(`dev ${logDays[0]} days, prod ${logDays[1]} days`);
    // One figure for both stages: the document says so.
    if (uploadDays.length === 1) expect(kept('Init images')).toContain(`${uploadDays[0]} days after the PUT (dev and prod)`);
    expect(dev.queueDays).toBe(d.queueRetentionDays);
    if (dev.queueDays === prod.queueDays) expect(kept('Job queue')).toContain(`at most ${dev.queueDays} days (dev and prod)`);
    expect(kept('Dead-letter queue')).toContain(`${dev.deadLetterDays} days, counted by SQS`);
    expect(kept('Dead-letter queue')).toContain(`Local: ${localDeadLetterDays} days from the move`);
    // The record retention (ADR 0037): the document says no stage sets one; a stage that does makes it say so.
    expect([d.recordRetentionDays, p.recordRetentionDays]).toEqual([null, null]);
    expect(kept('Job record')).toContain('dev and prod set no record retention');
    // The stage entries are what the rules were built from.
    expect(dev.rule('expire-outputs').ExpirationInDays).toBe(d.outputRetentionDays);
    expect(prod.rule('expire-outputs').ExpirationInDays).toBe(p.outputRetentionDays);
    expect(prod.rule('expire-uploads').ExpirationInDays).toBe(p.uploadRetentionDays);
  });

  it('says which stage keeps earlier versions, and for how long', () => {
    expect([d.bucketVersioning, dev.versioned]).toEqual([false, false]);
    expect([p.bucketVersioning, prod.versioned]).toEqual([true, true]);
    expect(prose(doc)).toContain('(`…`: prod on, dev off)');
    // Dev has no rule about earlier versions at all.
    expect([...dev.rules.values()].filter((r) => r.NoncurrentVersionExpiration)).toEqual([]);
    expect(stated(/keeps the old version: (\d+) days in general \(rule `…`\)/)).toBe(noncurrent('expire-noncurrent'));
    const short = stated(/, (\d+) day under `…`, `…` and `…`/);
    for (const id of ['expire-outputs', 'expire-uploads', 'pending-markers']) expect(noncurrent(id), id).toBe(short);
    expect(prose(doc)).toMatch(new RegExp(`prompts included, stays ${noncurrent('expire-noncurrent')} days,\\s+and the images ${noncurrent('expire-outputs')} day\\b`));
    expect(stated(/multipart uploads are aborted after (\d+) day/)).toBe(dev.rule('abort-incomplete-multipart').AbortIncompleteMultipartUpload!.DaysAfterInitiation);
    // No rule expires current job records, claims, usage, keys or statistics: the document says "for ever".
    // (workers/ holds no customer data: a dead worker's presence document goes after a day.)
    for (const stage of [dev, prod]) {
      const expiring = [...stage.rules.values()].filter((r) => r.ExpirationInDays !== undefined).map((r) => r.Prefix);
      expect(expiring.sort()).toEqual([BUCKET_PREFIXES.outputs, BUCKET_PREFIXES.uploads, BUCKET_PREFIXES.workers].sort());
    }
  });

  it("states the links' lifetimes as the code has them", () => {
    expect(d.signedUrlTtlSeconds).toBe(p.signedUrlTtlSeconds);
    expect(local.signedUrlTtlSec).toBe(d.signedUrlTtlSeconds);
    expect(stated(/Image and frame links live (\d+) s \(dev and prod; the same default locally/)).toBe(d.signedUrlTtlSeconds);
    // The CDK does not set the upload link's life: the processes' default holds in AWS too.
    expect(Object.values(ENV)).not.toContain('CLIPAG_UPLOAD_URL_TTL_SEC');
    expect(aws.uploadUrlTtlSec).toBe(local.uploadUrlTtlSec);
    expect(stated(/Upload PUT links live (\d+) s/)).toBe(aws.uploadUrlTtlSec);
    // A link signed an hour before the outputs expire lives that hour, not the full life.
    const expireAt = '2027-01-10T01:00:00Z';
    expect(linkLifeUntilExpiry(d.signedUrlTtlSeconds * 2, new Date('2027-01-10T00:00:00Z'), expireAt)).toBe(3600);
    expect(prose(doc).replace(/\s+/g, ' ')).toContain('No link is signed to outlive `…`, and past it the view lists no outputs and no frames');
  });

  it('states the counts of kept items as the code has them', () => {
    expect(numbersIn(rows.get('Usage ledger')!.Holds)).toEqual([RECENT_JOBS_KEPT]);
    expect(numbersIn(rows.get('Run statistics')!.Holds)).toEqual([RUN_STATS_KEEP]);
    expect(numbersIn(rows.get('Account webhook secret')!.Holds)).toEqual([MAX_PREVIOUS_SECRETS]);
  });

  it('states no figure of time that the code does not have', () => {
    const allowed: Record<string, Set<number>> = {
      day: new Set([...Object.values(KEPT).flat(), d.outputRetentionDays, p.outputRetentionDays, d.uploadRetentionDays, p.uploadRetentionDays, dev.rule('abort-incomplete-multipart').AbortIncompleteMultipartUpload!.DaysAfterInitiation]),
      hour: new Set([graceHours]),
      s: new Set([d.signedUrlTtlSeconds, p.signedUrlTtlSeconds, aws.uploadUrlTtlSec]),
    };
    const found = [...prose(doc).matchAll(/(\d+(?:\.\d+)?)\s*(days?|hours?|s|seconds?|minutes?)\b/g)];
    expect(found.length).toBeGreaterThan(20);
    for (const [text, value, unit] of found) {
      const kind = unit!.startsWith('day') ? 'day' : unit!.startsWith('hour') ? 'hour' : unit!.startsWith('minute') ? 'minute' : 's';
      expect(allowed[kind]?.has(Number(value)), `${DOC} says "${text}", a figure the code does not have`).toBe(true);
    }
  });

  it('names every bucket prefix, and what a DELETE leaves', () => {
    for (const prefix of [...Object.values(BUCKET_PREFIXES), WEBHOOK_SECRETS_PREFIX]) {
      expect(doc, prefix).toContain(`\`${prefix}`);
    }
    expect(doc).toContain(`\`${DELETED_BODY_HASH}\``);
    expect(doc).toContain(`\`${DELETED_TEXT}\``);
    for (const id of Object.values(STATEFUL_LOGICAL_IDS).filter((id) => id !== STATEFUL_LOGICAL_IDS.bucket)) expect(doc).toContain(`\`${id}\``);
  });

  it('cites source files that exist', () => {
    const cited = [...rows.values()].flatMap((row) => [...row.Source!.matchAll(/`([^`]+\.(?:ts|md))`|\b(README\.md)\b/g)].map((m) => m[1] ?? m[2]!));
    expect(cited.length).toBeGreaterThan(rows.size);
    for (const file of new Set(cited)) expect(existsSync(join(REPO_ROOT, file)), file).toBe(true);
  });
});
