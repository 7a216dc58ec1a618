// The server's own disk or file table refusing (local mode: ENOSPC, EDQUOT, EROFS, EMFILE, ENFILE,
// as Node raises them) is neither the caller's fault nor a bug: the API answers 503 `unavailable` with
// Retry-After and says what ran out (never a path), and whatever the refused request managed to write
// is completed by its retry with the same Idempotency-Key: one job, and it is sent to run.
// A full disk cannot be made here on demand: the real local blob store and queue are wrapped so that,
// from a chosen write on, every write fails as a full disk fails it, until the test frees it.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { envelopeFor } from '../../functions/middleware/errors.ts';
import { sweepQueuedJobs, RESEND_AFTER_MS } from '../../functions/queued-jobs.ts';
import { RetryableError, ValidationError } from '../../shared/errors.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import type { BlobStore, JobQueue } from '../../shared/ports.ts';
import { parseQueueMessage } from '../../shared/schemas/queue.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

/** An error as Node's fs raises it: the errno code, and a message naming the file. */
function errnoError(code: string, path: string): NodeJS.ErrnoException {
  const text: Record<string, string> = {
    ENOSPC: 'no space left on device',
    EDQUOT: 'disk quota exceeded',
    EROFS: 'read-only file system',
    EMFILE: 'too many open files',
    ENFILE: 'file table overflow',
  };
  return Object.assign(new Error(`${code}: ${text[code]}, open '${path}'`), { code, errno: -28, syscall: 'open', path });
}

const BLOB_WRITES = new Set(['put', 'putIfAbsent', 'replaceIfMatch', 'delete', 'deleteMany']);
const QUEUE_WRITES = new Set(['send', 'receive', 'ack', 'release', 'extendVisibility']);

/**
 * The data folder's disk: every write of the blob store and the queue (a delete too: the local store
 * writes a lock file first) is counted; from the `fillAt`-th on (1-based), each fails with `code`
 * until `free()`. Reads keep working, as they do on a full disk.
 */
function dataDisk(blobs: BlobStore, queue: JobQueue, dataDir: string, code = 'ENOSPC', fillAt = 1) {
  const disk = { writes: [] as string[], full: false, failed: 0, free: () => void (disk.full = false) };
  const wrap = <T extends object>(target: T, writes: Set<string>, what: string): T =>
    new Proxy(target, {
      get(t, prop) {
        const value = Reflect.get(t, prop, t) as unknown;
        if (typeof value !== 'function') return value;
        if (typeof prop !== 'string' || !writes.has(prop)) return value.bind(t);
        return async (...args: unknown[]) => {
          disk.writes.push(what === 'blobs' && typeof args[0] === 'string' ? `${what}.${prop} ${args[0].split('/').slice(0, 2).join('/')}` : `${what}.${prop}`);
          if (disk.writes.length === fillAt) disk.full = true;
          if (disk.full) {
            disk.failed++;
            throw errnoError(code, `${dataDir}/${what}/tmp/0f3a.tmp`);
          }
          return (value as (...a: unknown[]) => unknown).apply(t, args);
        };
      },
    });
  return { disk, blobs: wrap(blobs, BLOB_WRITES, 'blobs'), queue: wrap(queue, QUEUE_WRITES, 'queue') };
}

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

/** The app on the harness's real stores behind `dataDisk`, with a clock the test moves. */
function appOnDisk(code?: string, fillAt?: number) {
  const wrapped = dataDisk(h.blobs, h.queue, h.dir, code, fillAt);
  const clock = { offsetMs: 0 };
  const app = createApp({ ...h.deps, blobs: wrapped.blobs, queue: wrapped.queue, jobs: new BlobJobStore(wrapped.blobs), clock: () => new Date(Date.now() + clock.offsetMs) });
  const post = (key: string) =>
    app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': key },
      body: JSON.stringify({ prompt: 'a red circle', webhook_url: 'https://example.com/hook' }),
    });
  return { ...wrapped, clock, post };
}

async function queuedMessages(): Promise<string[]> {
  const got = await h.queue.receive({ max: 10, waitSec: 0 });
  return got.map((m) => parseQueueMessage(m.body).job_id);
}

describe('a POST /v1/generations on a full disk', () => {
  it('is 503 unavailable with Retry-After, saying the disk is full (no path); its retry after space is freed is 202 with exactly one job', async () => {
    const { disk, post } = appOnDisk('ENOSPC');
    const refused = await post('full-1');
    const error = await expectEnvelope(refused, 503, 'unavailable');
    expect(error.message).toBe("the server's disk is full (ENOSPC); retry later");
    expect(refused.headers.get('Retry-After')).toBe('30');
    expect(disk.failed).toBeGreaterThan(0);
    // The operator's line keeps the errno's own words, path and all.
    expect(JSON.stringify(h.logs)).toContain('ENOSPC: no space left on device');

    disk.free();
    const again = await post('full-1');
    expect(again.status, await again.clone().text()).toBe(202);
    const id = ((await again.json()) as { id: string }).id;
    expect((await h.jobs.listByOwner('acct_alice')).jobs.map((j) => j.id)).toEqual([id]);
    expect(await queuedMessages()).toEqual([id]);
  });

  it.each([
    ['EDQUOT', "the server's disk quota is used up (EDQUOT); retry later", '30'],
    ['EROFS', "the server's data folder is on a read-only file system (EROFS); retry later", '30'],
    ['EMFILE', 'the server has too many open files (EMFILE); retry later', '5'],
    ['ENFILE', "the server's system has too many open files (ENFILE); retry later", '5'],
  ])('%s: 503 unavailable naming it, with its Retry-After', async (code, message, retryAfter) => {
    const { post } = appOnDisk(code);
    const refused = await post(`k-${code}`);
    expect((await expectEnvelope(refused, 503, 'unavailable')).message).toBe(message);
    expect(refused.headers.get('Retry-After')).toBe(retryAfter);
  });

  it('whichever write the disk fills at, the answer is 503 unavailable or the job, and the retry with the same key completes it: one job, and its message sent', async () => {
    // The writes of one such POST, in order, on a disk with room.
    const probe = appOnDisk('ENOSPC', Infinity);
    expect((await probe.post('count')).status).toBe(202);
    const writes = probe.disk.writes.length;
    expect(writes).toBeGreaterThanOrEqual(6); // markers, the claim, the job, its confirm, the message, a marker's removal
    await h.close();

    const seen: string[] = [];
    for (let fillAt = 1; fillAt <= writes; fillAt++) {
      h = await harness();
      const { disk, clock, post } = appOnDisk('ENOSPC', fillAt);
      const first = await post('fills');
      const filledAt = disk.writes[fillAt - 1];
      if (first.status !== 202) {
        const error = await expectEnvelope(first, 503, 'unavailable');
        expect([filledAt, error.message]).toEqual([filledAt, "the server's disk is full (ENOSPC); retry later"]);
        expect(first.headers.get('Retry-After')).toBe('30');
      }
      seen.push(`${filledAt}: ${first.status}`);

      // Space is freed; the caller retries as Retry-After says (a claim the full disk kept from being
      // released has gone stale by then).
      disk.free();
      clock.offsetMs += 31_000;
      const again = await post('fills');
      // A job answered 202 is replayed (200); a refused one is made, or re-queued, now (202 or 200).
      const retried = first.status === 202 ? [200] : [200, 202];
      expect([filledAt, retried.includes(again.status)]).toEqual([filledAt, true]);
      const id = ((await again.json()) as { id: string }).id;
      const jobs = (await h.jobs.listByOwner('acct_alice')).jobs;
      expect([filledAt, jobs.map((j) => `${j.id} ${j.status}`)]).toEqual([filledAt, [`${id} queued`]]);

      // A message the full disk kept from being sent is the queued-job sweep's (its marker stays).
      clock.offsetMs += RESEND_AFTER_MS + 60_000;
      await sweepQueuedJobs({ blobs: h.blobs, jobs: h.jobs, queue: h.queue, clock: () => new Date(Date.now() + clock.offsetMs), webhooks: { send: async () => 200, signedUrlTtlSec: 60 } });
      const sent = await queuedMessages();
      expect([filledAt, sent.length > 0 && sent.every((m) => m === id)]).toEqual([filledAt, true]);
      await h.close();
    }
    h = await harness(); // for afterEach
    // Every write was reached, and at least one fill ended in a 503 (the first write's, at least).
    expect(seen).toHaveLength(writes);
    expect(seen.some((s) => s.endsWith(': 503'))).toBe(true);
  });
});

describe('envelopeFor: the server resource errors', () => {
  const enospc = () => errnoError('ENOSPC', '/srv/clipag/.data/blobs/tmp/1.tmp');

  it('is found as the cause of an error that wraps it (the queue send the API wraps as queue_unavailable)', () => {
    const wrapped = new RetryableError('the job queue is unavailable; retry (with the same Idempotency-Key)', { code: 'queue_unavailable', cause: enospc() });
    expect(envelopeFor(wrapped, 'req_1')).toEqual({
      status: 503,
      body: { error: { code: 'unavailable', message: "the server's disk is full (ENOSPC); retry later", param: null, request_id: 'req_1' } },
    });
    expect(envelopeFor(new Error('outer', { cause: new Error('middle', { cause: errnoError('EMFILE', '/x/y') }) }), 'r').body.error.code).toBe('unavailable');
  });

  it('a 4xx that merely carries one as its cause answers for itself; an error without a code stays 500', () => {
    expect(envelopeFor(new ValidationError('bad key', 'key', { cause: enospc() }), 'r').status).toBe(400);
    expect(envelopeFor(new Error('a bug'), 'r')).toMatchObject({ status: 500, body: { error: { code: 'internal_error', message: 'internal error' } } });
    expect(envelopeFor(Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' }), 'r').status).toBe(500);
  });
});
