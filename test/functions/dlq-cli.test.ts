// clipag dlq on the real local queue and job store: what a dead letter names, and a purge that keeps
// the dead letters whose job has not ended yet.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run, type DeadLetterRow } from '../../cli/dlq.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { newJobId } from '../../shared/ids.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobRecord } from '../../shared/schemas/job.ts';

let dir: string;
let queue: LocalJobQueue;
let jobs: BlobJobStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-dlq-'));
  queue = new LocalJobQueue({ dir: join(dir, 'queue'), visibilitySec: 30 });
  jobs = new BlobJobStore(new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' }));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function cli(...argv: string[]): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const code = await run(argv, { deadLetter: queue.deadLetter!, jobs }, (l) => lines.push(l));
  return { code, lines };
}

/** Dead letters for: a job the worker marked failed, one not ended yet, one deleted, and a malformed body. */
async function fill(): Promise<{ failed: string; waiting: string; gone: string }> {
  const spec = GenerationSpec.parse({ prompt: 'apple', model: 'toy' });
  const [failed, waiting, gone] = [1, 2, 3].map((i) => newJobId(Date.now() + i)) as [string, string, string];
  await jobs.create(newJobRecord({ id: failed, owner: 'acct_a', spec }));
  await jobs.update('acct_a', failed, (cur) => ({ ...cur, status: 'failed', attempts: 3, finished_at: new Date().toISOString(), error: { code: 'retries_exhausted', message: 'gave up' } }));
  await jobs.create(newJobRecord({ id: waiting, owner: 'acct_a', spec }));
  for (const id of [failed, waiting, gone]) await queue.deadLetter!.send(JSON.stringify({ v: 1, job_id: id, owner: 'acct_a' }));
  await queue.deadLetter!.send('{"not":"a job message"}');
  return { failed, waiting, gone };
}

const remaining = async () => {
  const got = await queue.deadLetter!.receive({ max: 10, waitSec: 0 });
  for (const m of got) await queue.deadLetter!.release(m.receipt);
  return got.length;
};

describe('clipag dlq', () => {
  it('list names each dead letter\'s job and its state, and gives every message back', async () => {
    const { failed, waiting, gone } = await fill();
    const { code, lines } = await cli('list', '--json');
    expect(code).toBe(0);
    const { data, truncated } = JSON.parse(lines[0]!) as { data: DeadLetterRow[]; truncated: boolean };
    expect(truncated).toBe(false);
    const byJob = Object.fromEntries(data.map((r) => [r.job_id ?? 'malformed', r]));
    expect(byJob[failed]).toMatchObject({ owner: 'acct_a', job_status: 'failed', job_error: 'retries_exhausted', purgeable: true, problem: null, deliveries: 1 });
    expect(byJob[waiting]).toMatchObject({ job_status: 'queued', job_error: null, purgeable: false });
    expect(byJob[gone]).toMatchObject({ job_status: 'missing', purgeable: true });
    expect(byJob.malformed).toMatchObject({ owner: null, job_status: null, purgeable: true, problem: expect.stringMatching(/^malformed message/) });
    expect(await remaining()).toBe(4); // listing deletes nothing and hides nothing

    const text = await cli('list');
    expect(text.lines).toHaveLength(4);
    expect(text.lines.find((l) => l.includes(failed))).toMatch(/acct_a\/\S+ failed \(retries_exhausted\)/);
  });

  it("a job record a newer clipag wrote is named so, not as corrupt, and its dead letter is kept by a purge", async () => {
    const id = newJobId(Date.now());
    await jobs.create(newJobRecord({ id, owner: 'acct_a', spec: GenerationSpec.parse({ prompt: 'apple', model: 'toy' }) }));
    const key = BlobJobStore.keyFor('acct_a', id);
    const blobs = (jobs as unknown as { blobs: LocalBlobStore }).blobs;
    const record = JSON.parse(Buffer.from((await blobs.get(key))!.body).toString()) as { spec: Record<string, unknown> };
    record.spec.guidance = 3; // a request parameter this version does not know
    await blobs.put(key, Buffer.from(JSON.stringify(record)));
    await queue.deadLetter!.send(JSON.stringify({ v: 1, job_id: id, owner: 'acct_a' }));
    const { data } = JSON.parse((await cli('list', '--json')).lines[0]!) as { data: DeadLetterRow[] };
    expect(data[0]).toMatchObject({ job_id: id, purgeable: false, problem: expect.stringMatching(/^job record written by a newer clipag \(it has spec\.guidance\)/) });
    expect((await cli('purge', '--yes')).lines).toEqual(['deleted 0 of 1 dead letters (1 kept: their job has not ended yet)']);
  });

  it('purge says what it would delete; with --yes it deletes the ended, gone and malformed ones and keeps the job still waiting', async () => {
    const { waiting } = await fill();
    expect((await cli('purge')).lines).toEqual(['would delete 3 of 4 dead letters (1 kept: their job has not ended yet). Run with --yes to delete.']);
    expect(await remaining()).toBe(4);
    expect((await cli('purge', '--yes')).lines).toEqual(['deleted 3 of 4 dead letters (1 kept: their job has not ended yet)']);
    const left = await queue.deadLetter!.receive({ max: 10, waitSec: 0 });
    expect(left.map((m) => JSON.parse(m.body).job_id)).toEqual([waiting]);
    await queue.deadLetter!.release(left[0]!.receipt);
    expect((await cli('list')).lines).toHaveLength(1);
  });

  it('an empty queue, --max, and bad arguments', async () => {
    expect((await cli('list')).lines).toEqual(['the dead-letter queue is empty']);
    await fill();
    const capped = await cli('list', '--max', '2');
    expect(capped.lines).toHaveLength(3);
    expect(capped.lines[2]).toMatch(/stopped at --max 2/);
    expect(await remaining()).toBe(4);
    for (const argv of [[], ['redrive'], ['list', '--yes'], ['purge', '--json'], ['list', '--max', '0'], ['list', 'extra']]) {
      expect((await cli(...argv)).code, argv.join(' ')).toBe(2);
    }
  });
});
