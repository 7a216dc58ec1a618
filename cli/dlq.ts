// clipag dlq: what is in the dead-letter queue, and clearing it once triaged (cdk/README's on-call
// notes). Each dead letter names a job; the worker marks that job `failed` (`retries_exhausted`) when it
// dead-letters it, or its DLQ sweep does within a minute. So a dead letter is for an operator to read,
// never to re-run: its job has already told its caller to submit again.
import { storesFor } from '../shared/adapters/stores.ts';
import { operatorConfig } from '../shared/config.ts';
import { ClipagError, CorruptDocumentError, ValidationError } from '../shared/errors.ts';
import { NewerJobRecordError } from '../shared/jobstore.ts';
import { isTerminal, type JobRecord } from '../shared/schemas/job.ts';
import type { JobQueue, JobStore, ReceivedMessage } from '../shared/ports.ts';
import { parseQueueMessage } from '../shared/schemas/queue.ts';
import { refusal, parseCliArgs } from './common.ts';

export const summary = 'list the dead-letter queue, or purge the dead letters whose job has ended';
export const usage = `usage: clipag dlq list [--json] [--max N]
       clipag dlq purge [--yes] [--max N]

  list     each dead letter: message id, when it was first sent, deliveries, the job it names
           (owner/id) with the job's status and error code, or why the message is malformed
  purge    deletes the dead letters whose job has ended (or no longer exists), the malformed ones,
           and those whose job record is corrupt (the API answers 409 corrupt_record for it; no
           message can help), which re-arms the DLQ depth alarm. A dead letter whose job has not
           ended yet is kept: a running worker's dead-letter sweep marks that job failed (10
           letters a minute; none while the service is scaled to zero), unless a live lease holds
           the job (the dead letter was a duplicate; the holder ends the job). Without --yes it
           only says what it would delete.
  --max    look at no more than N messages (default 1000)

Messages are received and given back at once (or deleted, by purge --yes). A message a worker's
dead-letter sweep holds at that moment (for a second or so) is not seen; run it again to be sure.

The queues come from the environment like the worker's: the local queue under CLIPAG_DATA_DIR
(default .data), or CLIPAG_MODE=aws with AWS_REGION, CLIPAG_BUCKET, CLIPAG_QUEUE_URL and
CLIPAG_DLQ_URL (the stack outputs name them).`;

/** A dead letter as listed. */
export interface DeadLetterRow {
  message_id: string;
  sent_at: string;
  deliveries: number;
  owner: string | null;
  job_id: string | null;
  /** The job's status; `missing` when no record exists (deleted, or never created); null when the message is malformed. */
  job_status: string | null;
  job_error: string | null;
  /** Why the message cannot name a job (malformed), or why its record cannot be read (corrupt). */
  problem: string | null;
  /** Whether `purge` deletes it: its job has ended or is gone, or the message is malformed. */
  purgeable: boolean;
}

/** How long received messages stay hidden while the listing runs; they are given back right after. */
const HOLD_SEC = 120;

async function receiveAll(dlq: JobQueue, max: number): Promise<ReceivedMessage[]> {
  const seen: ReceivedMessage[] = [];
  const ids = new Set<string>();
  while (seen.length < max) {
    // A 1 s long poll: SQS's short poll samples only some of its servers and can answer empty early.
    const batch = await dlq.receive({ max: Math.min(10, max - seen.length), waitSec: 1, visibilitySec: HOLD_SEC });
    if (batch.length === 0) break;
    for (const m of batch) {
      if (ids.has(m.messageId)) continue;
      ids.add(m.messageId);
      seen.push(m);
    }
  }
  return seen;
}

async function describeMessage(jobs: JobStore, m: ReceivedMessage): Promise<DeadLetterRow> {
  const row: DeadLetterRow = {
    message_id: m.messageId,
    sent_at: m.sentAt.toISOString(),
    deliveries: m.receiveCount,
    owner: null,
    job_id: null,
    job_status: null,
    job_error: null,
    problem: null,
    purgeable: true,
  };
  let msg;
  try {
    msg = parseQueueMessage(m.body);
  } catch (error) {
    row.problem = `malformed message: ${(error as Error).message}`;
    return row;
  }
  row.owner = msg.owner;
  row.job_id = msg.job_id;
  try {
    const job = await jobs.get(msg.owner, msg.job_id);
    row.job_status = job ? job.status : 'missing';
    row.job_error = job?.error?.code ?? null;
    row.purgeable = !job || isTerminal(job.status);
  } catch (error) {
    if (!(error instanceof CorruptDocumentError)) throw error;
    // A newer clipag's record (ADR 0030) is not damage: a newer version reads it, and its message is
    // better sent again than purged. A damaged one: the API answers 409 corrupt_record; nothing a
    // message could do.
    row.problem =
      error instanceof NewerJobRecordError
        ? `job record written by a newer clipag (it has ${error.unknown.slice(0, 3).join(', ')}): this version cannot read it; use the clipag of the deployment`
        : `corrupt job record: ${error.message}`;
    // Kept unless it has ended, as a readable job's is.
    if (error instanceof NewerJobRecordError) row.purgeable = isTerminal(error.seen.status as JobRecord['status']);
  }
  return row;
}

export interface DlqDeps {
  deadLetter: JobQueue;
  jobs: JobStore;
}

async function openDeps(): Promise<DlqDeps> {
  const stores = await storesFor(operatorConfig(process.env, (line) => process.stderr.write(`clipag: warning: ${line}\n`)));
  if (!stores.queue.deadLetter) throw new ValidationError('no dead-letter queue is configured: set CLIPAG_DLQ_URL (the output DeadLetterQueueUrl of the Stateful stack)', 'CLIPAG_DLQ_URL');
  return { deadLetter: stores.queue.deadLetter, jobs: stores.jobs };
}

export async function run(argv: string[], deps?: DlqDeps, out: (line: string) => void = console.log): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    options: { json: { type: 'boolean' }, yes: { type: 'boolean' }, max: { type: 'string' } },
    allowPositionals: true,
    strict: true,
  });
  const fail = refusal('dlq', usage);
  const [action, ...rest] = positionals;
  if (action !== 'list' && action !== 'purge') return fail(action ? `unknown action "${action}"` : 'give an action');
  if (rest.length > 0) return fail(`unexpected argument "${rest[0]}"`);
  if (action === 'list' && values.yes) return fail('--yes goes with purge');
  if (action === 'purge' && values.json) return fail('--json goes with list');
  const max = values.max === undefined ? 1000 : Number(values.max);
  if (!Number.isInteger(max) || max < 1 || max > 100_000) return fail('--max must be an integer of 1..100000');

  let d: DlqDeps;
  try {
    d = deps ?? (await openDeps());
  } catch (error) {
    if (error instanceof ClipagError) {
      console.error(`clipag dlq: ${error.message}`);
      return 1;
    }
    throw error;
  }
  const messages = await receiveAll(d.deadLetter, max);
  const settled = new Set<string>();
  try {
    const rows: DeadLetterRow[] = [];
    for (const m of messages) rows.push(await describeMessage(d.jobs, m));
    if (action === 'list') {
      if (values.json) out(JSON.stringify({ object: 'list', data: rows, truncated: messages.length >= max }));
      else {
        if (rows.length === 0) out('the dead-letter queue is empty');
        for (const r of rows) {
          const job = r.job_id ? `${r.owner}/${r.job_id} ${r.job_status}${r.job_error ? ` (${r.job_error})` : ''}` : '-';
          out(`${r.message_id}  sent ${r.sent_at}  deliveries ${r.deliveries}  ${job}${r.problem ? `  ${r.problem}` : ''}`);
        }
        if (messages.length >= max) out(`(stopped at --max ${max}; more may be waiting)`);
      }
      return 0;
    }
    const purgeable = rows.filter((r) => r.purgeable);
    const kept = rows.length - purgeable.length;
    if (!values.yes) {
      out(`would delete ${purgeable.length} of ${rows.length} dead letters (${kept} kept: their job has not ended yet). Run with --yes to delete.`);
      return 0;
    }
    for (const m of messages) {
      if (!purgeable.some((r) => r.message_id === m.messageId)) continue;
      await d.deadLetter.ack(m.receipt);
      settled.add(m.messageId);
    }
    out(`deleted ${settled.size} of ${rows.length} dead letters (${kept} kept: their job has not ended yet)`);
    return 0;
  } finally {
    // Everything not deleted goes back at once, visible to the DLQ depth alarm and the worker's sweep.
    await Promise.all(messages.filter((m) => !settled.has(m.messageId)).map((m) => d.deadLetter.release(m.receipt).catch(() => undefined)));
  }
}
