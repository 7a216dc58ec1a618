// The local queue serves tenants fairly, as SQS fair queues do for a standard queue's MessageGroupId:
// one account's backlog of 150 jobs does not hold another account's one job behind all of it.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { harness } from '../functions/helpers.ts';

let dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  dirs = [];
});

async function freshQueue(): Promise<LocalJobQueue> {
  const dir = await mkdtemp(join(tmpdir(), 'clipag-fair-'));
  dirs.push(dir);
  return new LocalJobQueue({ dir, visibilitySec: 30 });
}

/** Receives one message and acks it (a worker running one job at a time), returning its body. */
async function runOne(queue: LocalJobQueue): Promise<string | undefined> {
  const [m] = await queue.receive({ max: 1 });
  if (!m) return undefined;
  await queue.ack(m.receipt);
  return m.body;
}

describe('local queue: fair across tenants', () => {
  it("one worker: a quiet tenant's job runs next, not after a busy tenant's backlog of 150", async () => {
    const queue = await freshQueue();
    for (let i = 0; i < 150; i++) await queue.send(`busy-${i}`, { group: 'acct_busy' });
    await queue.send('quiet-0', { group: 'acct_quiet' });
    expect(await runOne(queue)).toBe('busy-0');
    // The busy tenant has had a delivery lately; the quiet one none: its job goes first.
    expect(await runOne(queue)).toBe('quiet-0');
    // Then the backlog, in order.
    expect(await runOne(queue)).toBe('busy-1');
    expect(await runOne(queue)).toBe('busy-2');
  });

  it('two busy tenants alternate, each in its own order', async () => {
    const queue = await freshQueue();
    for (let i = 0; i < 6; i++) await queue.send(`a-${i}`, { group: 'acct_a' });
    for (let i = 0; i < 6; i++) await queue.send(`b-${i}`, { group: 'acct_b' });
    const order: string[] = [];
    for (let i = 0; i < 12; i++) order.push((await runOne(queue))!);
    expect(order).toEqual(['a-0', 'b-0', 'a-1', 'b-1', 'a-2', 'b-2', 'a-3', 'b-3', 'a-4', 'b-4', 'a-5', 'b-5']);
  });

  it('a batch receive spreads over tenants, and a tenant with a job in flight waits behind one without', async () => {
    const queue = await freshQueue();
    for (let i = 0; i < 5; i++) await queue.send(`a-${i}`, { group: 'acct_a' });
    await queue.send('b-0', { group: 'acct_b' });
    await queue.send('c-0', { group: 'acct_c' });
    expect((await queue.receive({ max: 3 })).map((m) => m.body)).toEqual(['a-0', 'b-0', 'c-0']);
  });

  it('a tenant alone gets its messages oldest first, and a delivery counts against it for five minutes only', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const queue = await freshQueue();
      await queue.send('busy-0', { group: 'acct_busy' });
      await queue.send('busy-1', { group: 'acct_busy' });
      expect(await runOne(queue)).toBe('busy-0');
      await queue.send('quiet-0', { group: 'acct_quiet' });
      // Five minutes on, the busy tenant's delivery no longer counts: oldest first again.
      vi.setSystemTime(Date.now() + 5 * 60_000 + 1);
      expect(await runOne(queue)).toBe('busy-1');
      expect(await runOne(queue)).toBe('quiet-0');
    } finally {
      vi.useRealTimers();
    }
  });

  it('messages without a tenant stay oldest first, each a tenant of its own', async () => {
    const queue = await freshQueue();
    for (let i = 0; i < 5; i++) await queue.send(`m-${i}`);
    const order: string[] = [];
    for (let i = 0; i < 5; i++) order.push((await runOne(queue))!);
    expect(order).toEqual(['m-0', 'm-1', 'm-2', 'm-3', 'm-4']);
  });
});

describe('the API sends each job for its owner', () => {
  it("a POST's message names its owner as the tenant", async () => {
    const h = await harness();
    try {
      const res = await h.request('/v1/generations', { json: { prompt: 'a red circle' } });
      expect(res.status).toBe(202);
      const [m] = await h.queue.receive({ max: 1 });
      expect(m?.group).toBe('acct_alice');
    } finally {
      await h.close();
    }
  });
});
