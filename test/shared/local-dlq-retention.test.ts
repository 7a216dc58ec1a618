// The local dead-letter queue keeps a letter 14 days from its send, as the AWS one does (the long-run
// review, finding 5): kept for ever, every settled letter was received and released again by the
// worker's dead-letter sweep each minute, until someone ran `clipag dlq purge`.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { DEAD_LETTER_RETENTION_SEC, LocalJobQueue } from '../../shared/adapters/local/queue.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-dlq-retention-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
afterEach(() => vi.useRealTimers());

let n = 0;
const freshQueue = () => new LocalJobQueue({ dir: join(root, `q${n++}`), visibilitySec: 30, maxReceives: 1 });
const DAY_MS = 86_400_000;

describe('local dead-letter retention', () => {
  it('is the 14 days of the AWS dead-letter queue (cdk/lib/stateful-stack.ts)', () => {
    expect(DEAD_LETTER_RETENTION_SEC).toBe(14 * 24 * 3600);
  });

  it('a letter is received until 14 days after its send, then gone: not delivered, not counted, its file removed', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    const dlq = queue.deadLetter!;
    await dlq.send('{"v":1,"job_id":"j1","owner":"acct_a"}');

    vi.setSystemTime(Date.now() + 13 * DAY_MS);
    const [letter] = await dlq.receive({ max: 1 });
    expect(letter?.body).toContain('j1');
    await dlq.release(letter!.receipt); // as the worker's dead-letter sweep leaves it

    vi.setSystemTime(Date.now() + DAY_MS);
    expect(await dlq.depth()).toBe(0);
    expect(await dlq.bodies()).toEqual([]);
    expect(await dlq.receive({ max: 10 })).toEqual([]);
    expect(readdirSync(join(root, `q${n - 1}`, 'dlq', 'messages'))).toEqual([]);
  });

  it('a letter moved from the queue counts from its first send (as SQS counts a standard queue\'s); one in flight is kept until its lease ends', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    await queue.send('{"v":1,"job_id":"j2","owner":"acct_a"}');
    vi.setSystemTime(Date.now() + 3 * DAY_MS);
    const [first] = await queue.receive({ max: 1, visibilitySec: 0 });
    expect(first).toBeDefined();
    expect(await queue.receive({ max: 1 })).toEqual([]); // its one receive spent: moved to the dead-letter queue
    const dlq = queue.deadLetter!;
    expect(await dlq.depth()).toBe(1);

    vi.setSystemTime(Date.now() + 11 * DAY_MS - 60_000);
    const [held] = await dlq.receive({ max: 1, visibilitySec: 300 });
    expect(held).toBeDefined();
    vi.setSystemTime(Date.now() + 120_000); // past 14 days from the send, while held
    expect(await dlq.receive({ max: 1 })).toEqual([]); // in flight: neither delivered nor dropped
    expect(await dlq.depth()).toBe(1);
    await dlq.release(held!.receipt); // the holder still finds it
    expect(await dlq.receive({ max: 1 })).toEqual([]);
    expect(await dlq.depth()).toBe(0);
  });

  it('the job queue itself keeps its messages for ever (a local queued job waits for a worker)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    await queue.send('{"v":1,"job_id":"j3","owner":"acct_a"}');
    vi.setSystemTime(Date.now() + 400 * DAY_MS);
    expect((await queue.receive({ max: 1 }))[0]?.body).toContain('j3');
  });
});
