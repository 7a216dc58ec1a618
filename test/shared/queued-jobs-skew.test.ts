// Review suspicion 3 (the F5 family): the queued-job sweep expires a job no message can reach,
// judging a running job's lease (its worker's wall-clock stamp) against the sweep's own clock. A sweep
// whose clock runs ahead of a live worker's must not expire the run; a lease that lapsed long ago
// (its worker died) still lets the job expire.
import { describe, expect, it } from 'vitest';
import { EXPIRY_MARGIN_MS, unreachable } from '../../functions/queued-jobs.ts';

const DAY_SEC = 86_400;
const VIS_MS = 300_000; // the CDK's visibility timeout
const now = new Date('2026-12-06T12:00:00.000Z');
const ago = (ms: number) => new Date(now.getTime() - ms).toISOString();
/** Sent just over the retention and its margin ago: no message of it can be left, unless a worker still holds one. */
const oldJob = { created_at: ago(DAY_SEC * 1000 + EXPIRY_MARGIN_MS + 120_000) };

describe('unreachable, for a job running on a lease', () => {
  it('a live lease read by a sweep whose clock is a whole visibility timeout ahead (the worker keeps half of one on it): not unreachable', () => {
    // On the worker's clock the lease has vis/2 left; on the sweep's it lapsed vis/2 ago.
    expect(unreachable({ ...oldJob, status: 'running', lease_expires_at: ago(VIS_MS / 2) }, now, DAY_SEC)).toBe(false);
  });

  it('a lease that lapsed over the margin ago (its worker died): unreachable; a queued job and one without a lease as before', () => {
    expect(unreachable({ ...oldJob, status: 'running', lease_expires_at: ago(EXPIRY_MARGIN_MS + 1000) }, now, DAY_SEC)).toBe(true);
    expect(unreachable({ ...oldJob, status: 'running' }, now, DAY_SEC)).toBe(true);
    expect(unreachable({ ...oldJob, status: 'queued' }, now, DAY_SEC)).toBe(true);
    expect(unreachable({ ...oldJob, status: 'running', lease_expires_at: new Date(now.getTime() + VIS_MS).toISOString() }, now, DAY_SEC)).toBe(false);
  });
});
