// clipag remote list: the account's generations, newest first, through GET /v1/generations and its
// filters (status, webhook delivery state, metadata labels, a creation-time window), one page or
// --all of them, with remote's connection options, retries and exit statuses. A line per generation,
// or with --json one JSON object per line (the API's view), for jq.
import { parseCliArgs as parseArgs, UsageError } from './common.ts';
import { ApiError, type Generation } from './api-client.ts';
import { command, connectionOptions, optionWords, quotedPrompt, requestFailed, session, type RemoteIo } from './remote.ts';
import { JOB_STATUSES } from '../shared/schemas/job.ts';
import { WEBHOOK_STATUSES } from '../shared/schemas/view.ts';
import { METADATA_KEY_PATTERN, METADATA_KEY_RULE, METADATA_MAX_KEYS } from '../shared/schemas/generation.ts';
import { SORTABLE_ID_PATTERN } from '../shared/names.ts';
import { ListQuery } from '../functions/schemas.ts';

/** One page, or every page with --all (each one request, rate-limited like any): generous. */
const LIST_TIMEOUT_SEC = 300;
/** A page's size with --all: the largest the API gives. */
const ALL_PAGE_SIZE = 100;

export async function list(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    tokens: true,
    options: {
      ...connectionOptions,
      status: { type: 'string' },
      'webhook-status': { type: 'string' },
      'api-key-id': { type: 'string' },
      metadata: { type: 'string', multiple: true },
      since: { type: 'string' },
      until: { type: 'string' },
      limit: { type: 'string' },
      cursor: { type: 'string' },
      all: { type: 'boolean' },
    },
  });
  if (positionals.length > 0) throw new UsageError(`list takes no argument (got ${JSON.stringify(positionals[0])}); filter with --status, --webhook-status, --api-key-id, --metadata K=V, --since or --until`);
  const query = new URLSearchParams();
  if (values.status !== undefined) {
    if (!(JOB_STATUSES as readonly string[]).includes(values.status)) throw new UsageError(`--status is one of ${JOB_STATUSES.join(', ')} (got ${JSON.stringify(values.status)})`);
    query.set('status', values.status);
  }
  if (values['webhook-status'] !== undefined) {
    if (!(WEBHOOK_STATUSES as readonly string[]).includes(values['webhook-status'])) throw new UsageError(`--webhook-status is one of ${WEBHOOK_STATUSES.join(', ')} (got ${JSON.stringify(values['webhook-status'])})`);
    query.set('webhook_status', values['webhook-status']);
  }
  const keyId = values['api-key-id'];
  if (keyId !== undefined) {
    if (!SORTABLE_ID_PATTERN.test(keyId)) throw new UsageError(`--api-key-id is an API key's id: the 26 characters between ck_ and the next _ of the key (got ${JSON.stringify(keyId.slice(0, 40))})`);
    query.set('api_key_id', keyId);
  }
  const labels = values.metadata ?? [];
  if (labels.length > METADATA_MAX_KEYS) throw new UsageError(`at most ${METADATA_MAX_KEYS} --metadata filters (a generation has at most ${METADATA_MAX_KEYS} labels)`);
  for (const label of labels) {
    const eq = label.indexOf('=');
    const key = eq < 0 ? '' : label.slice(0, eq);
    if (eq < 0 || !METADATA_KEY_PATTERN.test(key)) throw new UsageError(`--metadata takes KEY=VALUE, KEY of letters, digits, "_", "." and "-" (got ${JSON.stringify(label)}; ${METADATA_KEY_RULE})`);
    query.set(`metadata[${key}]`, label.slice(eq + 1));
  }
  for (const [flag, param] of [['since', 'created_after'], ['until', 'created_before']] as const) {
    const value = values[flag];
    if (value === undefined) continue;
    // The API checks the form (RFC 3339); a date alone is the most common slip, said here with the fix.
    if (/^\d{4}-\d{2}-\d{2}$/.test(value)) throw new UsageError(`--${flag} takes a date and time, such as ${value}T00:00:00Z`);
    // Any other form the API would refuse is refused here by the API's own rule, in the flag's name (the
    // new-user review): its message names the parameter, said as the flag.
    const checked = ListQuery.shape[param].safeParse(value);
    if (!checked.success) throw new UsageError(`${(checked.error.issues[0]?.message ?? `${param} must be an RFC 3339 date-time`).replace(param, `--${flag}`)} (got ${JSON.stringify(value.slice(0, 60))})`);
    query.set(param, value);
  }
  if (values.all && values.limit !== undefined) throw new UsageError('--limit goes without --all (--all reads every page, 100 at a time)');
  if (values.limit !== undefined) {
    if (!/^[0-9]+$/.test(values.limit) || Number(values.limit) < 1 || Number(values.limit) > 100) throw new UsageError(`--limit is a whole number from 1 to 100 (got ${JSON.stringify(values.limit)})`);
    query.set('limit', values.limit);
  }
  if (values.all) query.set('limit', String(ALL_PAGE_SIZE));
  if (values.cursor !== undefined && !SORTABLE_ID_PATTERN.test(values.cursor)) throw new UsageError('--cursor is the cursor an earlier list printed');

  const s = session(io, values, LIST_TIMEOUT_SEC);
  let cursor = values.cursor;
  let shown = 0;
  try {
    do {
      const page = new URLSearchParams(query);
      if (cursor !== undefined) page.set('cursor', cursor);
      const { data, nextCursor } = await s.client.listGenerations(page, { deadline: s.deadline });
      for (const g of data) io.out(s.json ? JSON.stringify(g) : line(g));
      shown += data.length;
      cursor = nextCursor ?? undefined;
    } while (values.all && cursor !== undefined);
  } catch (e) {
    // An API from before the filter refuses it as an unknown parameter: said so, not as a typo of ours.
    const olderApi = e instanceof ApiError && e.status === 400 && e.param === 'api_key_id' && /unknown query parameter/.test(e.detail);
    const tail = olderApi
      ? '; this API is from before the api_key_id filter: list without --api-key-id and read each line\'s api_key_id (--json)'
      : shown > 0 && cursor !== undefined
        ? `; ${shown} listed so far: ${again(cursor)} goes on from there`
        : '';
    return requestFailed(s, e, { tail });
  }
  // One page: the next one's command, on stderr (stdout stays the list).
  if (cursor !== undefined) io.err(`clipag remote: more: ${again(cursor)}`);
  else if (shown === 0 && !s.json) io.err('clipag remote: no generation matches');
  return 0;

  /** This command again from `from` (its filters, --url, --json and --timeout; a --key as KEY, never itself). */
  function again(from: string): string {
    return command([
      ...s.cli,
      'remote',
      'list',
      ...optionWords(tokens, ['cursor']),
      '--cursor',
      from,
    ]);
  }
}

/** One generation as a line: id, status, when, what was asked (model, size, steps × images), cost and the prompt's start. */
function line(g: Generation): string {
  const r = g.request;
  const prompts = Array.isArray(r.prompts) ? (r.prompts as Array<{ text?: unknown }>) : [];
  const first = typeof r.prompt === 'string' ? r.prompt : typeof prompts[0]?.text === 'string' ? prompts[0].text : '';
  const text = prompts.length > 1 ? `${first} (+${prompts.length - 1})` : first;
  const created = typeof g.created_at === 'string' ? g.created_at : '';
  const cost = g.usage.cost_usd === null ? '' : `$${g.usage.cost_usd.toFixed(4)}`;
  const deleted = g.deleted_at !== null ? ' (deleted)' : '';
  return [g.id, g.status.padEnd(9), created, `${r.model} ${r.width}x${r.height} ${r.steps} steps x${r.n}`, cost, quotedPrompt(text, 60) + deleted].filter((part) => part !== '').join('  ');
}
