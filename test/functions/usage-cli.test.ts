// `clipag usage` (ADR 0019): the operator's audit of an owner's usage ledger against the job records,
// and its repair. Records are made through the API and ended as the worker ends them; that the
// records' figures are the worker's own adds is proven on the worker in test/worker/output-check.test.ts.
// The store is the real local blob store.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { run } from '../../cli/usage.ts';
import { usageKey } from '../../shared/keys.ts';
import { readSpendLimit } from '../../shared/spend-limits.ts';
import { newJobRecord, type JobRecord } from '../../shared/schemas/job.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { newJobId } from '../../shared/ids.ts';
import { MAX_KEYS_PER_DAY, readUsage, rebuildUsage, recordUsage, usageOfRecord, type JobScan } from '../../shared/usage.ts';
import { createApp } from '../../functions/app.ts';
import { harness, LIMITS, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
});
afterEach(() => h.close());

const NOW = () => new Date('2026-12-20T12:00:00Z');

/** An audit line with alice's key id as ALICE. */
const withKeyNamed = (line: string) => line.replaceAll(h.alice.split('_')[1]!, 'ALICE');

/** A ledger day of alice's generations, all created with her key (the harness's): itemised under it too. */
function aliceDay<T extends { date: string }>(day: T) {
  const { date: _date, ...figures } = day;
  return { ...day, by_api_key: { [h.alice.split('_')[1]!]: figures } };
}

async function cli(...argv: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  return cliIn({}, ...argv);
}

/** `clipag usage` with this environment (the deployment's price, say). */
async function cliIn(env: Record<string, string>, ...argv: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const err = vi.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' ')));
  try {
    const code = await run(argv, h.blobs, (l) => lines.push(l), NOW, env);
    return { code, lines, stderr: errors.join('\n') };
  } finally {
    err.mockRestore();
  }
}

/** A generation of alice's, created through the API and ended as the worker ends one; its usage added to the ledger unless `added` is false. */
async function ended(finishedAt: string, figures: { images: number; seconds: number; status?: 'succeeded' | 'withheld' | 'canceled'; hourlyUsd?: number }, added = true): Promise<JobRecord> {
  const res = await h.request('/v1/generations', { json: { prompt: 'apple', n: figures.images } });
  expect(res.status).toBe(202);
  const { id } = (await res.json()) as { id: string };
  const status = figures.status ?? 'succeeded';
  const done = await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status: status === 'withheld' ? 'failed' : status,
    attempts: 1,
    finished_at: finishedAt,
    usage: status === 'canceled' ? { encoder_passes: 0, worker_seconds: 0 } : { encoder_passes: 40 * figures.images, worker_seconds: figures.seconds },
    ...(figures.hourlyUsd !== undefined ? { hourly_usd: figures.hourlyUsd } : {}),
    outputs: status === 'succeeded' ? Array.from({ length: figures.images }, (_, i) => ({ key: `outputs/acct_alice/${id}/${i}.png`, width: 224, height: 224 })) : [],
    ...(status === 'withheld'
      ? {
          error: { code: 'content_policy', message: 'the output check withheld every image' },
          output_checks: Array.from({ length: figures.images }, (_, index) => ({ index, withheld: true, flags: [{ rule: 'r', category: 'copyright', action: 'withhold' as const, concept: 'c', message: 'm', cosine: 0.5 }] })),
        }
      : {}),
  }));
  const used = usageOfRecord(done);
  if (added && used) await recordUsage(h.blobs, 'acct_alice', id, new Date(finishedAt), used);
  return done;
}

describe('clipag usage', () => {
  it('audit agrees with a ledger the adds built; a job whose add failed is a difference that rebuild repairs', async () => {
    await ended('2026-12-05T10:00:00.000Z', { images: 2, seconds: 12.5 });
    await ended('2026-12-05T23:59:59.999Z', { images: 1, seconds: 0.001, status: 'withheld' }); // the compute was spent
    await ended('2026-12-06T00:00:00.000Z', { images: 1, seconds: 3 });
    await ended('2026-12-07T00:00:00.000Z', { images: 1, seconds: 9, status: 'canceled' }); // no run's usage: not counted
    await ended('2026-11-30T23:00:00.000Z', { images: 4, seconds: 100 }); // another month
    const audit = await cli('audit', '--owner', 'acct_alice', '--month', '2026-12');
    expect([audit.code, audit.lines.at(-1)]).toEqual([0, 'usage/acct_alice/2026-12.json agrees with 5 job record(s)']);

    await ended('2026-12-06T08:00:00.000Z', { images: 3, seconds: 7.25 }, false); // its worker logged "usage not recorded"
    const before = await readUsage(h.blobs, 'acct_alice', '2026-12');
    const differs = await cli('audit', '--owner', 'acct_alice'); // the current month by default
    expect(differs.code).toBe(3);
    expect(differs.lines.map(withKeyNamed)).toEqual([
      '2026-12-06: ledger 1 generation(s), 1 image(s), 3 worker s, 40 encoder passes [key ALICE: 1 generation(s), 1 image(s), 3 worker s, 40 encoder passes]; records 2 generation(s), 4 image(s), 10.25 worker s, 160 encoder passes [key ALICE: 2 generation(s), 4 image(s), 10.25 worker s, 160 encoder passes]',
      'usage/acct_alice/2026-12.json differs from the job records; clipag usage rebuild --owner acct_alice --month 2026-12 repairs it',
    ]);

    const rebuilt = await cli('rebuild', '--owner', 'acct_alice');
    expect([rebuilt.code, rebuilt.lines.at(-1)]).toEqual([0, 'rebuilt usage/acct_alice/2026-12.json from the job records: 2 day(s), 4 generation(s)']);
    const after = await readUsage(h.blobs, 'acct_alice', '2026-12');
    expect(after).toEqual([before[0], aliceDay({ date: '2026-12-06', generations: 2, images: 4, worker_seconds: 10.25, encoder_passes: 160 })]);
    expect((await cli('audit', '--owner', 'acct_alice')).code).toBe(0);
    // No price in this environment, and no run kept one: the cost is unknown, as GET /v1/usage says.
    expect(JSON.parse((await cli('show', '--owner', 'acct_alice', '--json')).lines[0]!)).toEqual({
      owner: 'acct_alice',
      month: '2026-12',
      hourly_usd: null,
      cost_usd: null,
      days: after.map((d) => ({ ...d, cost_usd: null })),
    });
    // The counted jobs stay deduplicated: a late repeat of an add does not count twice.
    const job = (await h.jobs.listByOwner('acct_alice')).jobs.find((j) => j.finished_at === '2026-12-06T08:00:00.000Z')!;
    await recordUsage(h.blobs, 'acct_alice', job.id, new Date(job.finished_at!), usageOfRecord(job)!);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual(after);
    // November's ledger was not touched.
    expect((await cli('audit', '--owner', 'acct_alice', '--month', '2026-11')).code).toBe(0);
  });

  it("the records' own prices: audit compares the priced part, and rebuild restores it", async () => {
    await ended('2026-12-05T10:00:00.000Z', { images: 1, seconds: 100, hourlyUsd: 3.6 });
    await ended('2026-12-05T11:00:00.000Z', { images: 1, seconds: 10 }); // run before prices were kept
    await ended('2026-12-05T12:00:00.000Z', { images: 2, seconds: 20, hourlyUsd: 7.2 });
    const day = aliceDay({ date: '2026-12-05', generations: 3, images: 4, worker_seconds: 130, encoder_passes: 160, priced_seconds: 120, priced_cost_usd: 0.14 });
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([day]);
    expect((await cli('audit', '--owner', 'acct_alice')).code).toBe(0);
    // A ledger whose seconds agree but whose priced part does not is a difference (it would bill otherwise).
    const { date: _d, ...figures } = day;
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from(JSON.stringify({ v: 1, days: { '2026-12-05': { ...figures, priced_cost_usd: 0.13 } } })));
    const differs = await cli('audit', '--owner', 'acct_alice');
    expect([differs.code, withKeyNamed(differs.lines[0]!)]).toEqual([
      3,
      '2026-12-05: ledger 3 generation(s), 4 image(s), 130 worker s, of which 120 s at their own price: $0.13, 160 encoder passes [key ALICE: 3 generation(s), 4 image(s), 130 worker s, of which 120 s at their own price: $0.14, 160 encoder passes]; records 3 generation(s), 4 image(s), 130 worker s, of which 120 s at their own price: $0.14, 160 encoder passes [key ALICE: 3 generation(s), 4 image(s), 130 worker s, of which 120 s at their own price: $0.14, 160 encoder passes]',
    ]);
    expect((await cli('rebuild', '--owner', 'acct_alice')).code).toBe(0);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([day]);
    // The per-key figures are compared as well: totals that agree do not hide a key's wrong share.
    const other = '01aaaaaaaaaaaaaaaaaaaaaaaa';
    const keyed = { ...figures, by_api_key: { [other]: { generations: 3, images: 4, worker_seconds: 130, encoder_passes: 160 } } };
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from(JSON.stringify({ v: 1, days: { '2026-12-05': keyed } })));
    expect((await cli('audit', '--owner', 'acct_alice')).code).toBe(3);
  });

  it('past MAX_KEYS_PER_DAY keys a day, audit and rebuild itemise the keys the worker did (the first to end), not the order the store lists them in', async () => {
    const keyOf = (i: number) => `${'0'.repeat(23)}${String(i).padStart(3, '0')}`;
    const ids: string[] = [];
    // Created as the API creates them (directly: 101 would pass the harness's active-job limit).
    const spec = GenerationSpec.parse({ prompt: 'apple', model: 'toy' });
    for (let i = 0; i <= MAX_KEYS_PER_DAY; i++) ids.push((await h.jobs.create(newJobRecord({ id: newJobId(Date.parse('2026-12-05T09:00:00Z') + i), owner: 'acct_alice', spec }))).id);
    // They end in their creation order (the store lists newest first), each made with its own key; the worker adds each as it ends.
    for (const [n, id] of ids.entries()) {
      const finishedAt = new Date(Date.parse('2026-12-05T10:00:00Z') + n * 1000).toISOString();
      const done = await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'succeeded', attempts: 1, finished_at: finishedAt, usage: { encoder_passes: 40, worker_seconds: 1 }, outputs: [{ key: `outputs/acct_alice/${id}/0.png`, width: 224, height: 224 }], api_key_id: keyOf(n) }));
      await recordUsage(h.blobs, 'acct_alice', id, new Date(finishedAt), usageOfRecord(done)!);
    }
    const ledger = await readUsage(h.blobs, 'acct_alice', '2026-12');
    expect(Object.keys(ledger[0]!.by_api_key!).sort()).toEqual(Array.from({ length: MAX_KEYS_PER_DAY }, (_, n) => keyOf(n))); // the last to end is not itemised
    expect((await cli('audit', '--owner', 'acct_alice')).code).toBe(0);
    expect((await cli('rebuild', '--owner', 'acct_alice')).code).toBe(0);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual(ledger);
  });

  it('a ledger that does not read (the API answers 409, adds fail) is reported by audit and replaced by rebuild', async () => {
    await ended('2026-12-05T10:00:00.000Z', { images: 2, seconds: 4 });
    await h.blobs.put(usageKey('acct_alice', '2026-12'), Buffer.from('{"v": 1, "days": {"2026-12-05": {"generations": -1'));
    expect((await h.request('/v1/usage?month=2026-12')).status).toBe(409);
    const audit = await cli('audit', '--owner', 'acct_alice', '--json');
    expect(audit.code).toBe(3);
    expect(JSON.parse(audit.lines[0]!)).toMatchObject({ agree: false, ledger: null, ledger_unreadable: expect.stringMatching(/^usage\/acct_alice\/2026-12\.json does not read: /), records: [{ date: '2026-12-05', generations: 1 }] });
    // show names the record and the way out, not the API's "contact the operator".
    const show = await cli('show', '--owner', 'acct_alice', '--month', '2026-12');
    expect(show.code).toBe(1);
    expect(show.stderr).toMatch(/the stored record usage\/acct_alice\/2026-12\.json does not read \(.+\); clipag usage rebuild --owner acct_alice --month 2026-12 makes it again/);
    expect((await cli('rebuild', '--owner', 'acct_alice')).code).toBe(0);
    const res = await h.request('/v1/usage?month=2026-12');
    expect(res.status).toBe(200);
    expect(((await res.json()) as any).total).toMatchObject({ generations: 1, images: 2, worker_seconds: 4, encoder_passes: 80 });
  });

  it('rebuild refuses while a job record does not read (it would undercount), unless told to leave it out', async () => {
    const kept = await ended('2026-12-05T10:00:00.000Z', { images: 1, seconds: 2 });
    const broken = await ended('2026-12-05T11:00:00.000Z', { images: 1, seconds: 5 });
    await h.blobs.put(`jobs/acct_alice/${broken.id}.json`, Buffer.from('{"id": "trunc'));
    const refused = await cli('rebuild', '--owner', 'acct_alice');
    expect([refused.code, refused.stderr]).toEqual([1, `clipag usage: 1 job record(s) do not read (${broken.id}); repair them, or rebuild with --skip-unreadable to leave them out`]);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([aliceDay({ date: '2026-12-05', generations: 2, images: 2, worker_seconds: 7, encoder_passes: 80 })]); // untouched
    const audit = await cli('audit', '--owner', 'acct_alice');
    expect([audit.code, audit.lines[0]]).toEqual([3, `job ${broken.id}: its record does not read; not counted`]);
    const skipped = await cli('rebuild', '--owner', 'acct_alice', '--skip-unreadable');
    expect([skipped.code, skipped.lines[0]]).toEqual([0, `job ${broken.id}: its record does not read; not counted`]);
    expect(await readUsage(h.blobs, 'acct_alice', '2026-12')).toEqual([aliceDay({ date: '2026-12-05', generations: 1, images: 1, worker_seconds: 2, encoder_passes: 40 })]);
    expect(kept.id).not.toBe(broken.id);
  });

  it("show costs the days as GET /v1/usage does: each run at the price kept with it, the rest at today's CLIPAG_WORKER_HOURLY_USD (ADR 0022)", async () => {
    // One run priced when it ended (at 3.6 $/h), one that ended while no price was set.
    await ended('2026-12-06T08:00:00.000Z', { images: 1, seconds: 14.744, hourlyUsd: 3.6 });
    await ended('2026-12-06T09:00:00.000Z', { images: 1, seconds: 20.514 });
    await ended('2026-12-07T09:00:00.000Z', { images: 1, seconds: 10 });
    for (const price of [3.6, 7.2]) {
      const api = createApp({ ...h.deps, clock: NOW, limits: { ...LIMITS, workerHourlyUsd: price } });
      const res = await api.request('/v1/usage?month=2026-12', { headers: { Authorization: `Bearer ${h.alice}` } });
      const view = (await res.json()) as { days: Array<{ date: string; cost_usd: number | null }>; total: { cost_usd: number | null } };
      expect(view.total.cost_usd, String(price)).not.toBeNull();
      const shown = JSON.parse((await cliIn({ CLIPAG_WORKER_HOURLY_USD: String(price) }, 'show', '--owner', 'acct_alice', '--month', '2026-12', '--json')).lines[0]!);
      expect(shown.hourly_usd).toBe(price);
      expect(shown.cost_usd).toBe(view.total.cost_usd);
      expect(shown.days.map((d: { date: string; cost_usd: number }) => [d.date, d.cost_usd])).toEqual(view.days.map((d) => [d.date, d.cost_usd]));
    }
    // The figures the review saw: 35.258 s, 14.744 of them priced at 3.6 $/h, the rest at today's 3.6.
    const text = await cliIn({ CLIPAG_WORKER_HOURLY_USD: '3.6' }, 'show', '--owner', 'acct_alice', '--month', '2026-12');
    expect(text.lines[0]).toMatch(/^2026-12-06: 2 generation\(s\), .*35\.258 worker s, of which 14\.744 s at their own price: \$0\.014744, .*; cost \$0\.035258$/);
    expect(text.lines[1]).toMatch(/^2026-12-07: .*; cost \$0\.01$/);
    expect(text.lines[2]).toBe('usage/acct_alice/2026-12.json: cost $0.045258 (seconds without a price of their own at CLIPAG_WORKER_HOURLY_USD 3.6), as GET /v1/usage shows it');
    // Without a price, the unpriced seconds have none: unknown, as the API's null.
    expect((await cliIn({}, 'show', '--owner', 'acct_alice', '--month', '2026-12')).lines[0]).toMatch(/; cost unknown$/);
  });

  it('bad usage is exit 2 with the reason; a missing ledger shows as none', async () => {
    for (const [argv, reason] of [
      [[], 'give an action'],
      [['bill', '--owner', 'acct_alice'], 'unknown action "bill"'],
      [['show'], 'give --owner ID'],
      [['show', '--owner', '../x'], '--owner must match'],
      [['show', '--owner', 'acct_alice', '--month', '2026-13'], '--month must be YYYY-MM, got "2026-13"'],
      [['audit', '--owner', 'acct_alice', '--skip-unreadable'], '--skip-unreadable does not apply to audit'],
      [['rebuild', '--owner', 'acct_alice', 'extra'], 'unexpected argument "extra"'],
    ] as const) {
      const r = await cli(...argv);
      expect([r.code, r.stderr], argv.join(' ')).toEqual([2, expect.stringContaining(reason)]);
    }
    expect((await cli('show', '--owner', 'acct_bob')).lines).toEqual(['usage/acct_bob/2026-12.json: no usage recorded']);
  });
});

describe('rebuildUsage', () => {
  it('counts a job that ended between its scan and its write, whether its add landed first (readable ledger) or failed (unreadable one)', async () => {
    for (const ledger of ['readable', 'unreadable'] as const) {
      const owner = 'acct_alice';
      const month = ledger === 'readable' ? '2026-12' : '2027-01';
      const day = `${month}-05`;
      const first = await ended(`${day}T10:00:00.000Z`, { images: 1, seconds: 1 }, ledger === 'readable');
      if (ledger === 'unreadable') await h.blobs.put(usageKey(owner, month), Buffer.from('not json'));
      let scans = 0;
      let late: JobRecord | undefined;
      const scan = async (): Promise<JobScan> => {
        scans++;
        const records = (await h.jobs.listByOwner(owner, { limit: 100 })).jobs;
        if (scans === 1) {
          // After the first scan has read the records, another job ends, and its worker adds it (or fails to).
          late = await ended(`${day}T10:00:05.000Z`, { images: 2, seconds: 3 }, false);
          const adding = recordUsage(h.blobs, owner, late.id, new Date(late.finished_at!), usageOfRecord(late)!);
          if (ledger === 'unreadable') await expect(adding, ledger).rejects.toMatchObject({ name: 'CorruptDocumentError' });
          else await adding;
        }
        return { records, unreadable: [] };
      };
      const days = await rebuildUsage(h.blobs, owner, month, scan);
      expect(days, ledger).toEqual([aliceDay({ date: day, generations: 2, images: 3, worker_seconds: 4, encoder_passes: 120 })]);
      expect(await readUsage(h.blobs, owner, month)).toEqual(days);
      // Both jobs are among the counted ids: a repeat of either add changes nothing.
      for (const job of [first, late!]) await recordUsage(h.blobs, owner, job.id, new Date(job.finished_at!), usageOfRecord(job)!);
      expect(await readUsage(h.blobs, owner, month)).toEqual(days);
    }
  });
});

describe('clipag usage limit (the operator spend limit of ADR 0033)', () => {
  it('sets, shows and clears the operator limit of an owner; the API then applies the lower of it and the account own', async () => {
    const set = await cli('limit', '--owner', 'acct_alice', '--monthly-usd', '2.50');
    expect(set.code, set.stderr).toBe(0);
    expect(set.lines[0]).toMatch(/^set the operator's monthly spend limit of acct_alice to \$2.5 \(the local data folder /);
    expect(set.lines[1]).toBe("acct_alice: operator's limit $2.5; the account's own none; $2.5 a month applies (the API refuses new generations once the month's cost reaches it; only where it has a price)");
    expect(await readSpendLimit(h.blobs, 'acct_alice', 'operator')).toMatchObject({ monthly_usd: 2.5 });
    expect(await readSpendLimit(h.blobs, 'acct_alice')).toBeNull(); // the account's own is apart

    // The API refuses alice once her month reaches it (at the deployment's price), and says whose it is.
    const priced = createApp({ ...h.deps, clock: NOW, limits: { ...LIMITS, workerHourlyUsd: 3.6 } });
    await recordUsage(h.blobs, 'acct_alice', 'j-limit', NOW(), { images: 1, workerSeconds: 2500, encoderPasses: 1, hourlyUsd: 3.6 });
    const refused = await priced.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'apple' }) });
    expect(refused.status).toBe(402);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain('the operator set for this account');

    const json = await cli('limit', '--owner', 'acct_alice', '--json');
    expect(JSON.parse(json.lines[0]!)).toEqual({ owner: 'acct_alice', operator_monthly_usd: 2.5, account_monthly_usd: null, applies: 2.5 });
    const cleared = await cli('limit', '--owner', 'acct_alice', '--clear');
    expect(cleared.lines).toEqual(["removed the operator's monthly spend limit of acct_alice", "acct_alice: operator's limit none; the account's own none; no limit applies"]);
    expect((await cli('limit', '--owner', 'acct_alice', '--clear')).lines[0]).toBe("acct_alice had no operator's spend limit: nothing removed");
  });

  it('warns when no API key names the owner (a typo would leave the real account unlimited), and sets it all the same', async () => {
    const written: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: unknown) => (written.push(String(chunk)), true));
    try {
      expect((await cli('limit', '--owner', 'acct_alcie', '--monthly-usd', '5')).code).toBe(0);
      expect((await cli('limit', '--owner', 'acct_alice', '--monthly-usd', '5')).code).toBe(0);
    } finally {
      spy.mockRestore();
    }
    expect(written.filter((l) => l.includes('no API key names owner'))).toEqual(['clipag usage: warning: no API key names owner acct_alcie (yet): check the id (clipag keys list)\n']);
    expect(await readSpendLimit(h.blobs, 'acct_alcie', 'operator')).toMatchObject({ monthly_usd: 5 });
  });

  it('refuses what is not an amount, or options that do not go together, before touching the store (exit 2)', async () => {
    for (const [argv, message] of [
      [['limit', '--owner', 'acct_alice', '--monthly-usd', '$5'], /--monthly-usd must be an amount of USD/],
      [['limit', '--owner', 'acct_alice', '--monthly-usd', '1.0000001'], /at most 6 decimals/],
      [['limit', '--owner', 'acct_alice', '--monthly-usd', '5', '--clear'], /not both/],
      [['limit', '--owner', 'acct_alice', '--month', '2026-12'], /--month does not apply to limit/],
      [['show', '--owner', 'acct_alice', '--monthly-usd', '5'], /--monthly-usd goes with limit/],
      [['limit', '--monthly-usd', '5'], /give --owner ID/],
    ] as const) {
      const res = await cli(...argv);
      expect(res.code, argv.join(' ')).toBe(2);
      expect(res.stderr, argv.join(' ')).toMatch(message);
    }
    expect(await readSpendLimit(h.blobs, 'acct_alice', 'operator')).toBeNull();
  });
});
