// The API's own waits and estimates against a wall clock that is stepped (NTP) or a worker clock that
// runs ahead: a Prefer: wait is timed on the monotonic clock, and a run that started "in the future"
// has an unknown pace.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(async () => {
  vi.restoreAllMocks();
  await h.close();
});

const auth = () => ({ Authorization: `Bearer ${h.alice}` });

describe('Prefer: wait with a wall clock stepped back', () => {
  it('ends after the preferred seconds of real time, not an hour later, and the request line has a duration of 0 or more', async () => {
    const logs: Array<Record<string, unknown>> = [];
    const app = createApp({ ...h.deps, limits: { ...LIMITS, maxWaitSec: 60 }, log: (e) => logs.push(e as Record<string, unknown>) });
    const created = (await (await app.request('/v1/generations', { method: 'POST', headers: { ...auth(), 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a red circle' }) })).json()) as { id: string };
    // 100 ms into the wait (its first pause is 250 ms), the wall clock reads an hour earlier (an NTP step back).
    const realNow = Date.now.bind(Date);
    const stepBack = setTimeout(() => vi.spyOn(Date, 'now').mockImplementation(() => realNow() - 3_600_000), 100);
    const res = await app.request(`/v1/generations/${created.id}`, { headers: { ...auth(), Prefer: 'wait=1' } });
    clearTimeout(stepBack);
    expect(vi.isMockFunction(Date.now)).toBe(true); // the step happened during the wait
    expect(res.status).toBe(200);
    expect(res.headers.get('Preference-Applied')).toBe('wait=1');
    expect(((await res.json()) as { status: string }).status).toBe('queued');
    const line = logs.find((l) => l.msg === 'request' && l.method === 'GET');
    expect(line?.duration_ms as number).toBeGreaterThanOrEqual(0);
  }, 30_000);
});

describe("too_many_active_jobs' Retry-After with a worker clock ahead", () => {
  it('a run whose started_at is in the future has an unknown pace: 30 s, not the 1 s of a run about to end', async () => {
    const app = createApp({ ...h.deps, limits: { ...LIMITS, maxActiveJobs: 1 } });
    const post = () => app.request('/v1/generations', { method: 'POST', headers: { ...auth(), 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a red circle', steps: 100 }) });
    const a = (await (await post()).json()) as { id: string };
    await h.jobs.update('acct_alice', a.id, (cur) => ({
      ...cur, status: 'running', attempts: 1, started_at: new Date(Date.now() + 5_000).toISOString(),
      lease_expires_at: new Date(Date.now() + 60_000).toISOString(), progress: { ...cur.progress, step: 5 },
    }));
    const refused = await post();
    expect(refused.status).toBe(429);
    expect(refused.headers.get('Retry-After')).toBe('30');
  });
});
