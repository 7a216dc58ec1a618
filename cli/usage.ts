// clipag usage: an owner's monthly usage ledger (ADR 0019) for the operator: show it, audit it against
// the job records (which carry each run's own usage), and rebuild it from them when it does not read
// (the API then answers 409 and the worker's adds fail) or missed jobs whose adds failed.
import { BlobApiKeyStore, ownerCaseTwin } from '../shared/apikeys.ts';
import { storesFor } from '../shared/adapters/stores.ts';
import { operatorConfig, storeDescription, type Config } from '../shared/config.ts';
import { CorruptDocumentError, operatorMessage } from '../shared/errors.ts';
import { BlobJobStore } from '../shared/jobstore.ts';
import { MONTH_PATTERN, usageKey } from '../shared/keys.ts';
import { OWNER_ID_PATTERN } from '../shared/names.ts';
import type { BlobStore } from '../shared/ports.ts';
import { MAX_KEYS_PER_DAY, monthCostUsd, readUsage, rebuildUsage, usageFromRecords, type DayUsage, type JobScan, type UsageFigures } from '../shared/usage.ts';
import { deleteSpendLimit, effectiveSpendLimit, MAX_MONTHLY_USD, putSpendLimit, readSpendLimits } from '../shared/spend-limits.ts';
import { refusal, parseCliArgs } from './common.ts';

export const summary = "show an owner's usage ledger, audit it against the job records, rebuild it from them, or set the owner's spend limit";
export const usage = `usage: clipag usage show --owner ID [--month YYYY-MM] [--json]
       clipag usage audit --owner ID [--month YYYY-MM] [--json]
       clipag usage rebuild --owner ID [--month YYYY-MM] [--skip-unreadable]
       clipag usage limit --owner ID [--monthly-usd USD | --clear] [--json]

  show     the ledger's days and their cost, as GET /v1/usage shows them: each job at the price kept
           with it, the rest at the current CLIPAG_WORKER_HOURLY_USD (ADR 0022); unknown without one
  audit    compare the ledger with what the owner's job records show (every record is read);
           exit 0 when they agree, 3 when they differ or the ledger does not read
  rebuild  replace the ledger's month with what the records show: the repair for a ledger that does
           not read, or that missed jobs whose adds failed (the worker logged each). It refuses while
           a job record does not read, unless --skip-unreadable (those jobs are then not counted)
  limit    the monthly spend limit the operator sets for an owner (ADR 0033): once the month's cost
           reaches it, the API refuses the owner's new generations (402 spend_limit_reached). The
           account cannot raise it; its own limit (PUT /v1/spend-limit) applies too, the lower of the
           two. With neither option, shows both limits

--month defaults to the current UTC month. The store comes from the environment like the server's:
CLIPAG_DATA_DIR (default .data) in local mode; CLIPAG_MODE=aws with AWS_REGION, CLIPAG_BUCKET,
CLIPAG_QUEUE_URL for S3.`;

/** `audit` found a difference (or a ledger that does not read): distinct from failure, so a script can tell. */
const DIFFERS_EXIT_CODE = 3;

type Day = DayUsage & { date: string };

export async function run(
  argv: string[],
  blobs?: BlobStore,
  out: (line: string) => void = console.log,
  now: () => Date = () => new Date(),
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    options: { owner: { type: 'string' }, month: { type: 'string' }, json: { type: 'boolean' }, 'skip-unreadable': { type: 'boolean' }, 'monthly-usd': { type: 'string' }, clear: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  const fail = refusal('usage', usage);
  const [action, ...rest] = positionals;
  if (action !== 'show' && action !== 'audit' && action !== 'rebuild' && action !== 'limit') return fail(action ? `unknown action "${action}"` : 'give an action');
  if ((values['monthly-usd'] !== undefined || values.clear) && action !== 'limit') return fail(`--${values.clear ? 'clear' : 'monthly-usd'} goes with limit`);
  if (values['monthly-usd'] !== undefined && values.clear) return fail('give --monthly-usd or --clear, not both');
  if (action === 'limit' && values.month !== undefined) return fail('--month does not apply to limit (a limit is monthly: it applies to every month)');
  // Dollars as written: digits with an optional decimal part, at most six (micro-dollars).
  if (values['monthly-usd'] !== undefined && (!/^\d{1,10}(\.\d{1,6})?$/.test(values['monthly-usd']) || Number(values['monthly-usd']) > MAX_MONTHLY_USD)) {
    return fail(`--monthly-usd must be an amount of USD from 0 to ${MAX_MONTHLY_USD} with at most 6 decimals, such as 250 or 99.50 (got "${values['monthly-usd']}")`);
  }
  if (rest.length > 0) return fail(`unexpected argument "${rest[0]}"`);
  if (values.owner === undefined) return fail('give --owner ID');
  if (!OWNER_ID_PATTERN.test(values.owner)) return fail('--owner must match [A-Za-z0-9_-]{1,64}');
  if (values.month !== undefined && !MONTH_PATTERN.test(values.month)) return fail(`--month must be YYYY-MM, got "${values.month}"`);
  if (values.json && action === 'rebuild') return fail('--json does not apply to rebuild');
  if (values['skip-unreadable'] && action !== 'rebuild') return fail(`--skip-unreadable does not apply to ${action}`);
  const owner = values.owner;
  const month = values.month ?? now().toISOString().slice(0, 7);
  const key = usageKey(owner, month);

  try {
    // The store and the price from the environment, as the API reads them.
    const config: Config = operatorConfig(env, (line) => process.stderr.write(`clipag: warning: ${line}\n`));
    const store = blobs ?? (await storesFor(config)).blobs;
    // In a local data folder on a case-insensitive file system (macOS and Windows by default, a bind
    // mount from a Mac) acct_alice and an existing acct_Alice name the same ledger and job folder.
    const twin = await ownerCaseTwin(new BlobApiKeyStore(store), owner);
    if (twin !== undefined) {
      return fail(`--owner "${owner}" differs from the existing owner "${twin}" only in case: use "${twin}", or another id (in a local data folder on a case-insensitive file system, as on macOS and Windows, both name the same files, so this would ${action === 'rebuild' ? 'replace' : 'read'} ${twin}'s ledger)${action === 'rebuild' ? '; nothing changed' : ''}`, 1);
    }
    if (action === 'limit') {
      const usd = values['monthly-usd'];
      // A typo sets a limit on an account that does not exist, and the real one stays unlimited: said.
      if (usd !== undefined && !(await new BlobApiKeyStore(store).list()).some((k) => k.owner === owner)) {
        process.stderr.write(`clipag usage: warning: no API key names owner ${owner} (yet): check the id (clipag keys list)\n`);
      }
      if (usd !== undefined) await putSpendLimit(store, owner, Number(usd), now(), 'operator');
      const removed = values.clear ? await deleteSpendLimit(store, owner, 'operator') : undefined;
      const limits = await readSpendLimits(store, owner);
      const applies = effectiveSpendLimit(limits);
      if (values.json) out(JSON.stringify({ owner, operator_monthly_usd: limits.operator?.monthly_usd ?? null, account_monthly_usd: limits.account?.monthly_usd ?? null, applies: applies?.monthly_usd ?? null, ...(removed !== undefined ? { removed } : {}) }));
      else {
        if (usd !== undefined) out(`set the operator's monthly spend limit of ${owner} to $${Number(usd)} (${storeDescription(config)})`);
        if (removed !== undefined) out(removed ? `removed the operator's monthly spend limit of ${owner}` : `${owner} had no operator's spend limit: nothing removed`);
        out(`${owner}: operator's limit ${limits.operator ? `$${limits.operator.monthly_usd}` : 'none'}; the account's own ${limits.account ? `$${limits.account.monthly_usd}` : 'none'}; ${applies ? `$${applies.monthly_usd} a month applies (the API refuses new generations once the month's cost reaches it; only where it has a price)` : 'no limit applies'}`);
      }
      return 0;
    }
    if (action === 'show') {
      const days = await readUsage(store, owner, month);
      // The cost as GET /v1/usage computes it (one function): at the price kept with each job, the rest at today's.
      const price = config.workerHourlyUsd;
      const cost = monthCostUsd(days, price);
      if (values.json) out(JSON.stringify({ owner, month, hourly_usd: price ?? null, cost_usd: cost.total, days: days.map((d, i) => ({ ...d, cost_usd: cost.days[i] ?? null })) }));
      else if (days.length === 0) out(`${key}: no usage recorded`);
      else {
        for (const [i, d] of days.entries()) out(`${formatDay(d)}; cost ${usd(cost.days[i] ?? null)}`);
        out(`${key}: cost ${usd(cost.total)} (${price !== undefined ? `seconds without a price of their own at CLIPAG_WORKER_HOURLY_USD ${price}` : 'CLIPAG_WORKER_HOURLY_USD is not set: seconds without a price of their own have none'}), as GET /v1/usage shows it`);
      }
      return 0;
    }
    if (action === 'audit') {
      let ledger: Day[] | null = null;
      let problem: string | null = null;
      try {
        ledger = await readUsage(store, owner, month);
      } catch (error) {
        if (!(error instanceof CorruptDocumentError)) throw error;
        problem = `${key} does not read: ${error.detail}`;
      }
      const seen = await scanJobs(store, owner);
      const records = usageFromRecords(seen.records, month).days;
      const differences = ledger === null ? [] : compare(ledger, records);
      const agree = ledger !== null && differences.length === 0;
      if (values.json) {
        out(JSON.stringify({ owner, month, agree, ledger_unreadable: problem, unreadable_records: seen.unreadable, ledger, records, differences }));
      } else {
        if (problem) out(problem);
        for (const id of seen.unreadable) out(`job ${id}: its record does not read; not counted`);
        for (const d of differences) out(`${d.date}: ledger ${d.ledger ? formatFigures(d.ledger) : 'nothing'}; records ${d.records ? formatFigures(d.records) : 'nothing'}`);
        out(agree ? `${key} agrees with ${seen.records.length} job record(s)` : `${key} differs from the job records; clipag usage rebuild --owner ${owner} --month ${month} repairs it`);
      }
      return agree ? 0 : DIFFERS_EXIT_CODE;
    }
    let unreadable: string[] = [];
    const days = await rebuildUsage(store, owner, month, async () => {
      const seen = await scanJobs(store, owner);
      unreadable = seen.unreadable;
      if (unreadable.length > 0 && !values['skip-unreadable']) throw new UnreadableRecords(unreadable);
      return seen;
    });
    for (const id of unreadable) out(`job ${id}: its record does not read; not counted`);
    for (const d of days) out(formatDay(d));
    out(`rebuilt ${key} from the job records: ${days.length} day(s), ${days.reduce((a, d) => a + d.generations, 0)} generation(s)`);
    return 0;
  } catch (error) {
    if (error instanceof UnreadableRecords) {
      return fail(`${error.ids.length} job record(s) do not read (${error.ids.slice(0, 5).join(', ')}${error.ids.length > 5 ? ', …' : ''}); repair them, or rebuild with --skip-unreadable to leave them out`, 1);
    }
    if (error instanceof CorruptDocumentError) return fail(`${operatorMessage(error)}; clipag usage rebuild --owner ${owner} --month ${month} makes it again from the job records`, 1);
    return fail(`store: ${operatorMessage(error)}`, 1);
  }
}

class UnreadableRecords extends Error {
  constructor(readonly ids: string[]) {
    super('unreadable job records');
  }
}

/** Every job record of the owner, page by page; the ones that do not read are named, not fatal. */
async function scanJobs(blobs: BlobStore, owner: string): Promise<JobScan> {
  const unreadable: string[] = [];
  const jobs = new BlobJobStore(blobs, {
    log: { warn: (_msg, fields) => void unreadable.push(String(fields?.key).replace(/^jobs\/[^/]+\//, '').replace(/\.json$/, '')) },
  });
  const records: JobScan['records'] = [];
  let cursor: string | undefined;
  do {
    const page = await jobs.listByOwner(owner, { limit: 100, ...(cursor !== undefined ? { cursor } : {}) });
    records.push(...page.jobs);
    cursor = page.cursor;
  } while (cursor !== undefined);
  return { records, unreadable };
}

type Figures = Omit<Day, 'date'>;

function compare(ledger: Day[], records: Day[]): Array<{ date: string; ledger: Figures | null; records: Figures | null }> {
  const byDate = (days: Day[]) => new Map(days.map(({ date, ...f }) => [date, f]));
  const l = byDate(ledger);
  const r = byDate(records);
  const dates = [...new Set([...l.keys(), ...r.keys()])].sort();
  return dates
    .filter((date) => !sameFigures(l.get(date), r.get(date)))
    .map((date) => ({ date, ledger: l.get(date) ?? null, records: r.get(date) ?? null }));
}

function sameFigures(a: Figures | undefined, b: Figures | undefined): boolean {
  if (!a || !b) return a === b;
  const ka = a.by_api_key ?? {};
  const kb = b.by_api_key ?? {};
  // Past MAX_KEYS_PER_DAY keys a day, which keys are itemised follows the order concurrent adds
  // landed in: then only the keys both sides itemise are compared.
  const capped = Object.keys(ka).length >= MAX_KEYS_PER_DAY || Object.keys(kb).length >= MAX_KEYS_PER_DAY;
  const keys = capped ? Object.keys(ka).filter((k) => Object.hasOwn(kb, k)) : [...new Set([...Object.keys(ka), ...Object.keys(kb)])];
  const of = (m: Record<string, UsageFigures>, k: string) => (Object.hasOwn(m, k) ? m[k] : undefined);
  return sameTotals(a, b) && keys.every((k) => {
    const [x, y] = [of(ka, k), of(kb, k)];
    return x && y ? sameTotals(x, y) : x === y;
  });
}

function sameTotals(a: UsageFigures, b: UsageFigures): boolean {
  const ms = (s: number | undefined) => Math.round((s ?? 0) * 1000);
  const micro = (usd: number | undefined) => Math.round((usd ?? 0) * 1e6);
  return (
    a.generations === b.generations &&
    a.images === b.images &&
    a.encoder_passes === b.encoder_passes &&
    ms(a.worker_seconds) === ms(b.worker_seconds) &&
    ms(a.priced_seconds) === ms(b.priced_seconds) &&
    micro(a.priced_cost_usd) === micro(b.priced_cost_usd)
  );
}

function formatFigures(f: UsageFigures & { by_api_key?: Record<string, UsageFigures> | undefined }): string {
  const priced = f.priced_seconds !== undefined ? `, of which ${f.priced_seconds} s at their own price: $${f.priced_cost_usd}` : '';
  const keys = Object.entries(f.by_api_key ?? {}).map(([key, k]) => ` [key ${key}: ${formatFigures(k)}]`);
  return `${f.generations} generation(s), ${f.images} image(s), ${f.worker_seconds} worker s${priced}, ${f.encoder_passes} encoder passes${keys.join('')}`;
}

/** A cost as shown: dollars, or unknown (some seconds have no price, and none is set). */
function usd(cost: number | null): string {
  return cost === null ? 'unknown' : `$${cost}`;
}

function formatDay(d: Day): string {
  return `${d.date}: ${formatFigures(d)}`;
}
