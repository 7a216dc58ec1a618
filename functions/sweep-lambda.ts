// The queued-job sweep's Lambda composition root (an EventBridge schedule invokes it): config parsed
// once at cold start, S3/SQS clients built once. The sweep itself lives in queued-jobs.ts.
import { awsStores } from '../shared/adapters/stores.ts';
import { webhookDeliveryFromConfig } from '../shared/webhooks.ts';
import { retentionDelete } from './generation-delete.ts';
import { retentionPass } from './local-retention.ts';
import { jsonLineLog } from './log.ts';
import { awsConfig } from './deps/aws.ts';
import { sweepQueuedJobs, type SweepReport } from './queued-jobs.ts';

const config = awsConfig(process.env);
/** Between the last marker started and the Lambda's end: a webhook attempt's 10 s, the report, a margin. */
const SWEEP_END_MARGIN_MS = 20_000;
const { blobs, jobs, queue } = awsStores(config);
const webhooks = webhookDeliveryFromConfig(config);
const clock = () => new Date();
/**
 * With CLIPAG_RECORD_RETENTION_DAYS (ADR 0037), each sweep also deletes the generations that ended that
 * long ago, a bounded share per run (the bucket's lifecycle rules remove images and uploads; records
 * have no rule, since DELETE's scrub is more than a removal). Its progress is in the bucket
 * (retention/records.json), so a cold start reads nothing twice.
 */
const retention =
  config.recordRetentionDays !== undefined
    ? retentionPass({ blobs, jobs, clock, log: jsonLineLog, recordRetentionDays: config.recordRetentionDays, deleteGeneration: retentionDelete(blobs, jobs, clock, jsonLineLog) })
    : undefined;

/**
 * One sweep. Markers it could not handle make the invocation fail after the whole sweep, so the
 * function's Errors metric (and its alarm) shows a sweep that keeps failing; the next run retries.
 */
export async function handler(_event?: unknown, context?: { getRemainingTimeInMillis(): number }): Promise<SweepReport> {
  // Done before the Lambda's own end: one webhook attempt (10 s) may still be out when the last
  // marker starts, and the report line must be written.
  const deadline = context ? Date.now() + context.getRemainingTimeInMillis() - SWEEP_END_MARGIN_MS : undefined;
  const report = await sweepQueuedJobs({ blobs, jobs, queue, webhooks, queueRetentionSec: config.queueRetentionSec, clock, log: jsonLineLog, ...(deadline !== undefined ? { deadline } : {}) });
  // Written by every sweep, one with nothing to report too: the oldest-queued-job alarm reads its
  // oldestQueuedSec, and a sweep without a line would look like no sweep.
  jsonLineLog({ level: 'info', msg: 'queued-job sweep', ...report });
  // The record retention after the sweep, when time is left (a pass takes seconds): a pass that fails
  // or is skipped is the next sweep's.
  let retentionErrors = 0;
  if (retention && (deadline === undefined || Date.now() < deadline)) {
    try {
      const r = await retention.run(deadline !== undefined ? { deadline } : {});
      retentionErrors = r.errors;
      if (r.records > 0 || r.errors > 0) jsonLineLog({ level: r.errors > 0 ? 'warn' : 'info', msg: 'record retention', records: r.records, read: r.read, errors: r.errors, ...(r.error !== undefined ? { error: r.error } : {}) });
    } catch (error) {
      retentionErrors = 1;
      jsonLineLog({ level: 'warn', msg: 'record retention pass failed; the next sweep runs it again', error: error instanceof Error ? error.message : String(error) });
    }
  }
  if (report.errors > 0) throw new Error(`queued-job sweep: ${report.errors} of ${report.scanned} markers not handled (see the warnings above)`);
  if (retentionErrors > 0) throw new Error('record retention: not all that was due was deleted (see the warning above); the next sweep tries again');
  return report;
}
