// clipag remote webhook-secret create|show|delete: the account's webhook signing secret (ADR 0028)
// through /v1/webhook-secret, with remote's connection options, retries and exit statuses. `create`
// sends one Idempotency-Key, the same on every retry, so that a retry after a lost answer gets the
// secret the first try made rather than rotating again; when no answer came back, the command that
// gets it is printed with that key.
import { randomUUID } from 'node:crypto';
import { parseCliArgs as parseArgs, UsageError } from './common.ts';
import type { WebhookSecret, WebhookSecretState } from './api-client.ts';
import { command, connectionOptions, IDEMPOTENCY_KEY, optionWords, requestFailed, session, TIMED_OUT_EXIT_CODE, type RemoteIo, type Session } from './remote.ts';

const SUBCOMMANDS = ['create', 'show', 'delete'] as const;
type Subcommand = (typeof SUBCOMMANDS)[number];
/** As `remote cancel`: one small request, retries included. */
const WEBHOOK_SECRET_TIMEOUT_SEC = 60;

export async function webhookSecret(argv: string[], io: RemoteIo): Promise<number> {
  const { values, positionals, tokens } = parseArgs({ args: argv, allowPositionals: true, strict: true, tokens: true, options: { ...connectionOptions, 'idempotency-key': { type: 'string' } } });
  const [given, ...extra] = positionals;
  if (given === undefined || !(SUBCOMMANDS as readonly string[]).includes(given)) {
    throw new UsageError(given === undefined ? 'give what to do: create, show or delete' : `unknown webhook-secret action "${given}" (known: create, show, delete)`);
  }
  const sub = given as Subcommand;
  if (extra.length > 0) throw new UsageError(`webhook-secret ${sub} takes no other argument (got ${JSON.stringify(extra[0])})`);
  const userKey = values['idempotency-key'];
  if (userKey !== undefined && sub !== 'create') throw new UsageError(`--idempotency-key goes with create (${sub} changes nothing a retry could repeat)`);
  const idempotencyKey = userKey ?? `clipag-remote-${randomUUID()}`;
  if (!IDEMPOTENCY_KEY.test(idempotencyKey)) throw new UsageError('--idempotency-key must be 1-255 visible ASCII characters, no spaces');
  const s = session(io, values, WEBHOOK_SECRET_TIMEOUT_SEC);
  // This create again with its key (and the user's --url, --timeout and --json; a --key as KEY, never itself).
  const again = command([
    ...s.cli,
    'remote',
    'webhook-secret',
    'create',
    ...optionWords(tokens, ['idempotency-key']),
    '--idempotency-key',
    idempotencyKey,
  ]);
  try {
    if (sub === 'create') return await create(s, idempotencyKey);
    if (sub === 'show') return await show(s);
    return await remove(s);
  } catch (e) {
    return failed(s, sub, e, again);
  }
}

async function create(s: Session, idempotencyKey: string): Promise<number> {
  const { secret, created, replayed } = await s.client.createWebhookSecret({ idempotencyKey, deadline: s.deadline });
  if (s.json) s.io.out(JSON.stringify(secret));
  else s.io.out(secret.secret);
  if (!s.json) {
    const what = replayed
      ? `the API answered again the secret an earlier request with this Idempotency-Key ${created ? 'created' : 'rotated in'} (${secret.created_at}); nothing was rotated`
      : created
        ? `created the account's webhook secret (${secret.created_at})`
        : `rotated the account's webhook secret (${secret.created_at})`;
    s.io.err(`clipag remote: ${what}`);
    s.io.err('clipag remote: store it now where your receiver reads it: the API never shows it again (show says only whether there is one)');
    for (const p of secret.previous) s.io.err(`clipag remote: the replaced secret made ${p.created_at} still signs until ${p.expires_at}: move your receiver to the new one before then`);
  }
  return 0;
}

async function show(s: Session): Promise<number> {
  const state = await s.client.webhookSecretStatus({ deadline: s.deadline });
  if (s.json) {
    s.io.out(JSON.stringify(state));
    return 0;
  }
  for (const line of stateLines(state)) s.io.out(line);
  return 0;
}

/** What show prints: whether there is one, since when, and the replaced ones still signing. */
function stateLines(state: WebhookSecretState): string[] {
  if (!state.exists) return ["no webhook secret: events are signed with each generation's own secret alone"];
  return [`webhook secret since ${state.created_at}`, ...state.previous.map((p) => `  replaced secret made ${p.created_at}: still signs until ${p.expires_at}`)];
}

async function remove(s: Session): Promise<number> {
  const { deleted } = await s.client.deleteWebhookSecret({ deadline: s.deadline });
  if (s.json) s.io.out(JSON.stringify({ object: 'webhook_secret', deleted }));
  else s.io.out(deleted ? "deleted the account's webhook secret and the replaced ones: from the next delivery attempt, events are signed with each generation's own secret alone" : 'there was no webhook secret: nothing deleted');
  return 0;
}

/** The command stopped before an answer: say why and, for a create whose POST may have made a secret, the command that gets it. */
function failed(s: Session, sub: Subcommand, e: unknown, again: string): number {
  // No answer came back to a POST that may have reached the API: it may have made a secret, which this key gets.
  const mayExist = sub === 'create' && (e as { lost?: boolean }).lost === true;
  const after =
    sub === 'create'
      ? mayExist
        ? `the POST was sent and no answer came back, so it may have made a secret; ${again} gets it, not a second rotation (within 24 hours, while no other rotation or delete comes between)`
        : 'no secret was made'
      : sub === 'delete' && (e as { lost?: boolean }).lost === true
        ? 'the delete may have been made; running it again is safe'
        : undefined;
  return requestFailed(s, e, {
    tail: after === undefined ? '' : `; ${after}`,
    timedOutExit: mayExist ? TIMED_OUT_EXIT_CODE : 1,
    advice: (error) => (error.status === 409 && error.code === 'corrupt_record' ? '; it signs nothing: webhook-secret create replaces it, delete removes it' : ''),
  });
}
