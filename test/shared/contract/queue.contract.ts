import { describe, expect, it } from 'vitest';
import type { JobQueue } from '../../../shared/ports.ts';

export interface QueueHarness {
  /** A fresh, empty queue whose dead-letter queue takes messages after `maxReceives` receives. */
  queue: JobQueue;
  maxReceives: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Receives one message, polling for up to `waitSec` (single-message long polls wake on arrival on both adapters). */
async function receiveOne(queue: JobQueue, waitSec: number, visibilitySec: number) {
  const got = await queue.receive({ max: 1, waitSec, visibilitySec });
  return got[0];
}

export function queueContract(name: string, makeHarness: () => Promise<QueueHarness>): void {
  describe(`JobQueue contract: ${name}`, () => {
    it('send then receive delivers the body with receiveCount 1', async () => {
      const { queue } = await makeHarness();
      const { messageId } = await queue.send('{"v":1,"job_id":"j1","owner":"o1"}');
      const msg = await receiveOne(queue, 2, 30);
      expect(msg).toBeDefined();
      expect(msg!.messageId).toBe(messageId);
      expect(msg!.body).toBe('{"v":1,"job_id":"j1","owner":"o1"}');
      expect(msg!.receiveCount).toBe(1);
      expect(msg!.receipt).toEqual(expect.any(String));
      expect(msg!.sentAt.getTime()).toBeGreaterThan(Date.now() - 60_000);
    });

    it("a message sent for a tenant (group) comes back naming it; one sent without comes back without", async () => {
      const { queue } = await makeHarness();
      await queue.send('for-acme', { group: 'acct_acme' });
      const msg = await receiveOne(queue, 2, 30);
      expect([msg?.body, msg?.group]).toEqual(['for-acme', 'acct_acme']);
      await queue.send('no-tenant');
      const plain = await receiveOne(queue, 2, 30);
      expect(plain?.body).toBe('no-tenant');
      expect(plain && 'group' in plain).toBe(false);
    });

    it('a group SQS would refuse (empty, a space, non-ASCII, over 128) is refused before it is sent', async () => {
      const { queue } = await makeHarness();
      for (const group of ['', 'a b', 'caf\u00e9', 'x'.repeat(129)]) {
        await expect(queue.send('x', { group })).rejects.toMatchObject({ param: 'group' });
      }
      expect(await queue.receive({ max: 10, waitSec: 0 })).toEqual([]);
    });

    it('an empty queue returns nothing after the wait', async () => {
      const { queue } = await makeHarness();
      const started = Date.now();
      expect(await queue.receive({ max: 1, waitSec: 1 })).toEqual([]);
      expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    });

    it('a long poll wakes when a message arrives', async () => {
      const { queue } = await makeHarness();
      const started = Date.now();
      const pending = queue.receive({ max: 1, waitSec: 10, visibilitySec: 30 });
      await sleep(300);
      await queue.send('late');
      const got = await pending;
      expect(got.map((m) => m.body)).toEqual(['late']);
      expect(Date.now() - started).toBeLessThan(5_000);
    });

    it('a received message is hidden, then redelivered with receiveCount incremented after the visibility timeout', async () => {
      const { queue } = await makeHarness();
      await queue.send('redeliver-me');
      const first = await receiveOne(queue, 2, 1);
      expect(first!.receiveCount).toBe(1);
      expect(await queue.receive({ max: 1, waitSec: 0 })).toEqual([]);
      const second = await receiveOne(queue, 5, 30);
      expect(second).toBeDefined();
      expect(second!.messageId).toBe(first!.messageId);
      expect(second!.receiveCount).toBe(2);
    });

    it('extendVisibility keeps a message hidden past its original timeout', async () => {
      const { queue } = await makeHarness();
      await queue.send('heartbeat');
      const msg = await receiveOne(queue, 2, 1);
      await queue.extendVisibility(msg!.receipt, 30);
      await sleep(2_000);
      expect(await queue.receive({ max: 1, waitSec: 0 })).toEqual([]);
    });

    it('ack removes the message for good', async () => {
      const { queue } = await makeHarness();
      await queue.send('done');
      const msg = await receiveOne(queue, 2, 1);
      await queue.ack(msg!.receipt);
      await sleep(1_500);
      expect(await queue.receive({ max: 1, waitSec: 1 })).toEqual([]);
    });

    it('release makes the message visible again at once', async () => {
      const { queue } = await makeHarness();
      await queue.send('again');
      const msg = await receiveOne(queue, 2, 60);
      await queue.release(msg!.receipt);
      const again = await receiveOne(queue, 2, 60);
      expect(again?.messageId).toBe(msg!.messageId);
      // SQS gives 2; local-aws-sqs also counts the ChangeMessageVisibility(0) as a receive (3).
      expect(again!.receiveCount).toBeGreaterThanOrEqual(2);
    });

    it('receive returns up to max messages, each once', async () => {
      const { queue } = await makeHarness();
      for (let i = 0; i < 5; i++) await queue.send(`m${i}`);
      const bodies = new Set<string>();
      for (let round = 0; round < 10 && bodies.size < 5; round++) {
        const got = await queue.receive({ max: 3, waitSec: 0, visibilitySec: 60 });
        expect(got.length).toBeLessThanOrEqual(3);
        for (const m of got) {
          expect(bodies.has(m.body)).toBe(false);
          bodies.add(m.body);
        }
      }
      expect([...bodies].sort()).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    });

    it('after maxReceives unacked receives a message goes to the dead-letter queue', async () => {
      const { queue, maxReceives } = await makeHarness();
      expect(queue.deadLetter).toBeDefined();
      await queue.send('poison');
      for (let i = 1; i <= maxReceives; i++) {
        const msg = await receiveOne(queue, 5, 1);
        expect(msg?.body).toBe('poison');
        expect(msg!.receiveCount).toBe(i);
      }
      await sleep(1_200);
      expect(await queue.receive({ max: 1, waitSec: 2, visibilitySec: 1 })).toEqual([]);
      const dead = await queue.deadLetter!.receive({ max: 1, waitSec: 5, visibilitySec: 30 });
      expect(dead.map((m) => m.body)).toEqual(['poison']);
    }, 30_000);
  });
}
