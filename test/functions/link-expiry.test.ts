// A link to a generation's images never outlives its `outputs_expire_at` (the privacy review of
// 2026-12-07): S3's lifecycle removes the objects at its next daily run after that time, sometimes days
// later, and a link signed then for the full hour still downloaded them. Past it the generation lists
// no outputs and no frames, as in local mode once the retention pass has run.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { remote } from '../../cli/remote.ts';
import { createApp } from '../../functions/app.ts';
import { verifyLocalSignature } from '../../shared/adapters/local/index.ts';
import { frameKey, linkLifeUntilExpiry } from '../../shared/views.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const DAY = 86_400_000;

async function succeededDaysAgo(days: number, now: number): Promise<string> {
  const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
  const { id } = (await res.json()) as { id: string };
  await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status: 'succeeded',
    attempts: 1,
    started_at: new Date(now - days * DAY - 5_000).toISOString(),
    finished_at: new Date(now - days * DAY).toISOString(),
    progress: { step: cur.progress.total, total: cur.progress.total },
    outputs: [{ key: `outputs/acct_alice/${id}/0.png`, width: 224, height: 224 }],
  }));
  await h.blobs.put(`outputs/acct_alice/${id}/0.png`, new Uint8Array([1]));
  await h.blobs.put(frameKey('acct_alice', id, 0, 0, 224, 224), new Uint8Array([1]));
  return id;
}

describe('links against outputs_expire_at (a 30-day retention)', () => {
  it('well before it: the full life; within the hour before it: until it; past it: one second, and no frames', async () => {
    const now = Date.now();
    const app = createApp({ ...h.deps, clock: () => new Date(now), limits: { ...h.deps.limits, outputRetentionDays: 30 } });
    const get = async (path: string) => (await (await app.request(path, { headers: { Authorization: `Bearer ${h.alice}` } })).json()) as any;
    const valid = (url: string, at: number) => verifyLocalSignature('x'.repeat(32), 'GET', url, at).ok;

    const fresh = await succeededDaysAgo(1, now);
    const view = await get(`/v1/generations/${fresh}`);
    // (Expiry times are said in whole seconds.)
    expect(Date.parse(view.outputs[0].expires_at) - now).toBeGreaterThan(599_000);
    expect(Date.parse(view.outputs[0].expires_at) - now).toBeLessThanOrEqual(600_000);
    expect((await get(`/v1/generations/${fresh}/frames`)).data).toHaveLength(1);

    // Ends 5 minutes from now (the links live 10): its links end with it.
    const ending = await succeededDaysAgo(30 - 5 / 1440, now);
    const soon = await get(`/v1/generations/${ending}`);
    expect(Date.parse(soon.outputs[0].expires_at)).toBeLessThanOrEqual(Date.parse(soon.outputs_expire_at));
    expect(Date.parse(soon.outputs[0].expires_at)).toBeGreaterThan(Date.parse(soon.outputs_expire_at) - 2_000);
    const frames = (await get(`/v1/generations/${ending}/frames`)).data;
    expect(Date.parse(frames[0].expires_at)).toBeLessThanOrEqual(Date.parse(soon.outputs_expire_at));

    expect(valid(view.outputs[0].url, now + 1_500)).toBe(true);

    // Expired (S3 not yet round to removing its objects): no output listed, so no link signed; no frames.
    const expired = await succeededDaysAgo(31, now);
    const past = await get(`/v1/generations/${expired}`);
    expect(Date.parse(past.outputs_expire_at)).toBeLessThan(now);
    expect(past).toMatchObject({ status: 'succeeded', outputs: [] });
    // What made the image stays, without a link: its seed makes it again.
    expect(past.expired_outputs).toEqual([{ index: 0, seed: expect.any(Number), width: 224, height: 224 }]);
    expect(view.expired_outputs).toEqual([]);
    expect(JSON.stringify(past)).not.toContain('sig=');
    expect((await get(`/v1/generations/${expired}/frames`)).data).toEqual([]);
    // Its record is as it was: the usage audit still counts its images.
    expect((await h.jobs.get('acct_alice', expired))!.outputs).toHaveLength(1);
  });

  it('clipag remote get of an expired generation says its images expired (exit 1), and writes nothing', async () => {
    const now = Date.now();
    const app = createApp({ ...h.deps, limits: { ...h.deps.limits, outputRetentionDays: 30 } });
    const expired = await succeededDaysAgo(31, now);
    const err: string[] = [];
    const out = join(h.dir, 'expired.png');
    const fetchApp = (async (input: string | URL | Request, init?: RequestInit) => app.request(new Request(input, init))) as typeof fetch;
    const code = await remote(['get', expired, '-o', out, '--url', 'http://127.0.0.1:8787', '--key', h.alice], { env: {}, out: () => {}, err: (l) => err.push(l), fetch: fetchApp, sleep: async () => {} });
    expect(code).toBe(1);
    expect(err.join('\n')).toMatch(new RegExp(`generation ${expired} has no images to download \\(its images expired at \\S+; their seeds make them again: image 0 seed \\d+\\)`));
    expect(existsSync(out)).toBe(false);
  });

  it('linkLifeUntilExpiry: no expiry keeps the life; at least a second; never past the expiry', () => {
    const now = new Date('2026-12-07T10:00:00Z');
    expect(linkLifeUntilExpiry(600, now, null)).toBe(600);
    expect(linkLifeUntilExpiry(600, now, '2026-12-08T10:00:00Z')).toBe(600);
    expect(linkLifeUntilExpiry(600, now, '2026-12-07T10:02:00.900Z')).toBe(120);
    expect(linkLifeUntilExpiry(600, now, '2026-12-07T10:00:00Z')).toBe(1);
    expect(linkLifeUntilExpiry(600, now, '2026-11-07T10:00:00Z')).toBe(1);
  });
});
