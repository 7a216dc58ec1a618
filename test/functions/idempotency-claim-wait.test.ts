// The wait of an Idempotency-Key claim (functions/idempotency.ts claim()) when the store refuses the
// claim's write yet shows no claim: a store that keeps doing it (S3 maps a 409
// ConditionalRequestConflict to a lost condition) ends in the caller's 409 idempotency_in_progress
// once the claim's wait is over, its rounds spaced as any other wait's, never a request held until the
// Lambda's own time runs out (which the gateway answers without an envelope).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { IdempotencyLedger, idempotencyRecordKey } from '../../functions/idempotency.ts';
import { PreconditionFailedError } from '../../shared/errors.ts';
import { newJobId } from '../../shared/ids.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const OWNER = 'acct_alice';

/**
 * The real store, except that under the idempotency claims a put if absent always loses its condition
 * and a read finds nothing; `puts` counts those puts. Each answer comes after a turn of the event loop,
 * as a real store's does, so a loop that never waits still lets the test's own timeout fire.
 */
function vanishingClaims(blobs: BlobStore): { blobs: BlobStore; puts: { count: number } } {
  const puts = { count: 0 };
  const isClaim = (key: string) => key.startsWith('jobs/.idempotency/');
  const wrapped = new Proxy(blobs, {
    get: (target, prop) => {
      if (prop === 'putIfAbsent') {
        return async (key: string, ...rest: unknown[]) => {
          if (!isClaim(key)) return (target.putIfAbsent as (...a: unknown[]) => Promise<unknown>)(key, ...rest);
          puts.count++;
          await new Promise((r) => setImmediate(r));
          throw new PreconditionFailedError(`object already exists: ${key}`);
        };
      }
      if (prop === 'get') {
        return async (key: string) => {
          if (!isClaim(key)) return target.get(key);
          await new Promise((r) => setImmediate(r));
          return null;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  return { blobs: wrapped, puts };
}

describe('a claim whose write is refused while no claim is there', () => {
  it('ends in 409 idempotency_in_progress once its wait is over, a pause between rounds', { timeout: 20_000 }, async () => {
    const { blobs, puts } = vanishingClaims(h.blobs);
    const waitMs = 100;
    const ledger = new IdempotencyLedger(blobs, h.jobs, { waitMs });
    await expect(ledger.claim({ owner: OWNER, key: 'order-1', bodyHash: 'a'.repeat(64), jobId: newJobId(), now: new Date() })).rejects.toMatchObject({
      status: 409,
      code: 'idempotency_in_progress',
      param: 'Idempotency-Key',
    });
    // Rounds at least 25 ms apart (25, 50, 75 ms, …): within 100 ms, four at most, however fast the
    // store answers (a slower one makes fewer). Without the pause it was thousands.
    expect(puts.count).toBeGreaterThanOrEqual(1);
    expect(puts.count).toBeLessThanOrEqual(5);
  });

  it('POST /v1/generations: 409 idempotency_in_progress with Retry-After, and no job made', { timeout: 30_000 }, async () => {
    const { blobs } = vanishingClaims(h.blobs);
    const app = createApp({ ...h.deps, blobs });
    const res = await app.request('/v1/generations', {
      method: 'POST',
      headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'order-2' },
      body: JSON.stringify({ prompt: 'apple' }),
    });
    expect(res.headers.get('Retry-After')).toBe('1');
    const error = await expectEnvelope(res, 409, 'idempotency_in_progress');
    expect(error.param).toBe('Idempotency-Key');
    expect((await h.jobs.listByOwner(OWNER)).jobs).toEqual([]);
    expect(await h.blobs.get(idempotencyRecordKey(OWNER, 'order-2'))).toBeNull();
  });
});
