// The local dead-letter queue keeps a letter 14 days, as the AWS one does (the long-run review, finding
// 5): kept for ever, every settled letter was received and released again by the worker's dead-letter
// sweep each minute, until someone ran `clipag dlq purge`. The 14 days count from the letter's move to
// the dead-letter queue (review 9, #2): the local job queue keeps messages for ever, so counted from the
// first send, a job queued over 14 days lost its letter before the dead-letter sweep could fail it.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

  it('a letter moved from the queue counts from its move, not its first send; one in flight is kept until its lease ends', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    await queue.send('{"v":1,"job_id":"j2","owner":"acct_a"}');
    const sent = Date.now();
    vi.setSystemTime(sent + 3 * DAY_MS);
    const [first] = await queue.receive({ max: 1, visibilitySec: 0 });
    expect(first).toBeDefined();
    expect(await queue.receive({ max: 1 })).toEqual([]); // its one receive spent: moved to the dead-letter queue
    const dlq = queue.deadLetter!;
    expect(await dlq.depth()).toBe(1);

    // 14 days from the send have passed, not from the move: still there, and it reports its first send.
    vi.setSystemTime(sent + 15 * DAY_MS);
    const [letter] = await dlq.receive({ max: 1 });
    expect(letter?.sentAt.getTime()).toBe(sent);
    await dlq.release(letter!.receipt);

    vi.setSystemTime(sent + 3 * DAY_MS + 14 * DAY_MS - 60_000);
    const [held] = await dlq.receive({ max: 1, visibilitySec: 300 });
    expect(held).toBeDefined();
    vi.setSystemTime(Date.now() + 120_000); // past 14 days from the move, while held
    expect(await dlq.receive({ max: 1 })).toEqual([]); // in flight: neither delivered nor dropped
    expect(await dlq.depth()).toBe(1);
    await dlq.release(held!.receipt); // the holder still finds it
    expect(await dlq.receive({ max: 1 })).toEqual([]);
    expect(await dlq.depth()).toBe(0);
  });

  it('a job queued 15 days, then redriven, reaches the dead-letter sweep (review 9, #2)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    await queue.send('{"v":1,"job_id":"j4","owner":"acct_a"}');
    vi.setSystemTime(Date.now() + 15 * DAY_MS); // serve stopped two weeks with the job queued
    expect(await queue.receive({ max: 1, visibilitySec: 0 })).toHaveLength(1); // the worker dies during it
    expect(await queue.receive({ max: 1 })).toEqual([]); // redriven
    const [letter] = await queue.deadLetter!.receive({ max: 1 }); // the worker's dead-letter sweep
    expect(letter?.body).toContain('j4');
  });

  it('the letter file counts from the move in its `sentAt`, as an older clipag reads it (rollback)', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    const dir = join(root, `q${n - 1}`);
    const { messageId } = await queue.send('{"v":1,"job_id":"j5","owner":"acct_a"}');
    const sent = Date.now();
    vi.setSystemTime(sent + 20 * DAY_MS);
    await queue.receive({ max: 1, visibilitySec: 0 });
    await queue.receive({ max: 1 });
    const stored = JSON.parse(readFileSync(join(dir, 'dlq', 'messages', `${messageId}.json`), 'utf8'));
    expect(stored).toMatchObject({ sentAt: sent + 20 * DAY_MS, firstSentAt: sent });
  });

  it('a letter written before this change (no firstSentAt, sentAt its first send) is kept 14 days from when this version first meets it', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const queue = freshQueue();
    const dlqMessages = join(root, `q${n - 1}`, 'dlq', 'messages');
    mkdirSync(dlqMessages, { recursive: true });
    const id = '0'.repeat(25) + '1';
    const firstSent = Date.now() - 20 * DAY_MS; // queued 20 days ago, dead-lettered by the older version just now
    writeFileSync(join(dlqMessages, `${id}.json`), JSON.stringify({ id, body: '{"v":1,"job_id":"j6","owner":"acct_a"}', sentAt: firstSent, visibleAt: Date.now(), receiveCount: 0, deliveryToken: null }));
    const dlq = queue.deadLetter!;
    expect(await dlq.depth()).toBe(1);
    const [letter] = await dlq.receive({ max: 1 });
    expect(letter?.body).toContain('j6');
    expect(letter?.sentAt.getTime()).toBe(firstSent);
    await dlq.release(letter!.receipt);

    vi.setSystemTime(Date.now() + 14 * DAY_MS - 60_000);
    expect(await dlq.receive({ max: 1 })).toHaveLength(1);
    vi.setSystemTime(Date.now() + 120_000);
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
