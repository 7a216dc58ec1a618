// The queued-job sweep's Lambda composition root (an EventBridge schedule invokes it): config parsed
// once at cold start, S3/SQS clients built once. The sweep itself lives in queued-jobs.ts.
import { awsStores } from '../shared/adapters/stores.ts';
import { webhookDeliveryFromConfig } from '../shared/webhooks.ts';
import { jsonLineLog } from './log.ts';
import { awsConfig } from './deps/aws.ts';
import { sweepQueuedJobs, type SweepReport } from './queued-jobs.ts';

const config = awsConfig(process.env);
/** Between the last marker started and the Lambda's end: a webhook attempt's 10 s, the report, a margin. */
const SWEEP_END_MARGIN_MS = 20_000;
const { blobs, jobs, queue } = awsStores(config);
const webhooks = webhookDeliveryFromConfig(config);

/**
 * One sweep. Markers it could not handle make the invocation fail after the whole sweep, so the
 * function's Errors metric (and its alarm) shows a sweep that keeps failing; the next run retries.
 */
export async function handler(_event?: unknown, context?: { getRemainingTimeInMillis(): number }): Promise<SweepReport> {
  // Done before the Lambda's own end: one webhook attempt (10 s) may still be out when the last
  // marker starts, and the report line must be written.
  const deadline = context ? Date.now() + context.getRemainingTimeInMillis() - SWEEP_END_MARGIN_MS : undefined;
  const report = await sweepQueuedJobs({ blobs, jobs, queue, webhooks, queueRetentionSec: config.queueRetentionSec, clock: () => new Date(), log: jsonLineLog, ...(deadline !== undefined ? { deadline } : {}) });
  // Written by every sweep, one with nothing to report too: the oldest-queued-job alarm reads its
  // oldestQueuedSec, and a sweep without a line would look like no sweep.
  jsonLineLog({ level: 'info', msg: 'queued-job sweep', ...report });
  if (report.errors > 0) throw new Error(`queued-job sweep: ${report.errors} of ${report.scanned} markers not handled (see the warnings above)`);
  return report;
}
