// clipag remote spend-limit show|set USD|delete: the account's monthly spend limit (ADR 0033) through
// /v1/spend-limit, with remote's connection options, retries and exit statuses. Every request is safe to
// send again (a PUT sets the same value; a DELETE of nothing is no error), so a lost answer is retried.
import { parseCliArgs as parseArgs, UsageError } from './common.ts';
import type { SpendLimit } from './api-client.ts';
import { connectionOptions, requestFailed, session, type RemoteIo } from './remote.ts';

const SUBCOMMANDS = ['show', 'set', 'delete'] as const;
type Subcommand = (typeof SUBCOMMANDS)[number];
/** As `remote cancel`: one small request, retries included. */
const SPEND_LIMIT_TIMEOUT_SEC = 60;

export async function spendLimit(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, strict: true, options: { ...connectionOptions } });
  const [given, ...args] = positionals;
  if (given === undefined || !(SUBCOMMANDS as readonly string[]).includes(given)) {
    throw new UsageError(given === undefined ? 'give what to do: show, set USD or delete' : `unknown spend-limit action "${given}" (known: show, set, delete)`);
  }
  const sub = given as Subcommand;
  let usd: number | undefined;
  if (sub === 'set') {
    if (args.length !== 1) throw new UsageError(args.length === 0 ? 'spend-limit set takes the monthly limit in USD (e.g. 25 or 12.50)' : `spend-limit set takes one amount (got ${args.length})`);
    // Dollars as written: digits with an optional decimal part (no sign, no exponent, no "$").
    if (!/^\d+(\.\d+)?$/.test(args[0]!)) throw new UsageError(`the limit must be an amount of USD such as 25 or 12.50 (got ${JSON.stringify(args[0])})`);
    usd = Number(args[0]);
  } else if (args.length > 0) {
    throw new UsageError(`spend-limit ${sub} takes no other argument (got ${JSON.stringify(args[0])})`);
  }
  const s = session(io, values, SPEND_LIMIT_TIMEOUT_SEC);
  try {
    if (sub === 'delete') {
      const { deleted } = await s.client.deleteSpendLimit({ deadline: s.deadline });
      if (s.json) s.io.out(JSON.stringify({ object: 'spend_limit', deleted }));
      else s.io.out(deleted ? "removed the account's monthly spend limit: new generations are no longer refused for cost" : 'there was no spend limit: nothing removed');
      return 0;
    }
    const limit = sub === 'set' ? await s.client.setSpendLimit(usd!, { deadline: s.deadline }) : await s.client.spendLimit({ deadline: s.deadline });
    if (s.json) s.io.out(JSON.stringify(limit));
    else for (const line of limitLines(limit)) s.io.out(line);
    return 0;
  } catch (e) {
    return requestFailed(s, e, {
      advice: (error) =>
        error.status === 409 && error.code === 'corrupt_record'
          ? sub === 'set'
            ? "; this month's usage, or the limit the operator set for this account, does not read (nothing was set): the operator repairs it"
            : "; your stored limit, the one the operator set for this account, or this month's usage does not read: spend-limit set replaces yours (delete removes it); the operator repairs theirs and the month (clipag usage limit, clipag usage rebuild)"
          : '',
    });
  }
}

const usd = (n: number | null) => (n === null ? 'unknown (the deployment sets no price)' : `$${n}`);

/** What show and set print: the limit, the month against it, and whether new generations are refused. */
function limitLines(l: SpendLimit): string[] {
  // A limit the operator set for the account (an older API does not say: undefined).
  const operator = typeof l.operator_monthly_usd === 'number' ? `the operator's limit for this account: $${l.operator_monthly_usd} (the lower applies)` : undefined;
  if (l.monthly_usd === null && operator === undefined) return [`no spend limit; spent in ${l.month}: ${usd(l.spent_usd)}`];
  return [
    l.monthly_usd === null ? 'no monthly spend limit of your own' : `monthly spend limit: $${l.monthly_usd} (set ${l.updated_at})`,
    ...(operator ? [operator] : []),
    `spent in ${l.month}: ${usd(l.spent_usd)}${l.remaining_usd !== null ? `; remaining $${l.remaining_usd}` : ''}`,
    l.reached
      ? `reached: new generations are refused (402 spend_limit_reached) until ${l.resets_at}, unless the limit that applies is raised or removed`
      : l.spent_usd === null
        ? 'not enforced: with no price, no generation has a cost'
        : 'not reached: new generations are made (ones in flight when it is reached still run)',
  ];
}

