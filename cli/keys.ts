// clipag keys: issue, list and revoke API keys in the configured blob store
// (local `.data/` by default; S3 when CLIPAG_MODE=aws). Keys are stored hashed; the secret is printed once.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { storesFor } from '../shared/adapters/stores.ts';
import { BlobApiKeyStore } from '../shared/apikeys.ts';
import { operatorConfig, storeDescription } from '../shared/config.ts';
import { ClipagError, operatorMessage } from '../shared/errors.ts';
import { newId } from '../shared/ids.ts';
import { OWNER_ID_PATTERN } from '../shared/schemas/common.ts';
import { ApiKeyRecord } from '../shared/schemas/apikey.ts';
import type { BlobStore } from '../shared/ports.ts';
import { refusal, parseCliArgs } from './common.ts';

const NAME_MAX = ApiKeyRecord.shape.name.maxLength ?? 100;

export const summary = 'create, list or revoke API keys (stored hashed; the secret is shown once)';
export const usage = `usage: clipag keys create --name NAME [--owner ID] [--json]
       clipag keys list [--json]
       clipag keys revoke KEY_ID

  create   issue a key; prints the secret ONCE (only its sha256 is stored) and the key id
  --name   a label for the key (e.g. the customer: acme)
  --owner  the account whose jobs the key addresses ([A-Za-z0-9_-]{1,64});
           default: a new account id. Give an existing owner to add or rotate a key.
  list     key id, owner, name, created, revoked (never secrets)
  revoke   revoke a key by id; requests with it get 401 from then on (idempotent)

The store comes from the environment like the server's: CLIPAG_DATA_DIR (default .data) in
local mode; CLIPAG_MODE=aws with AWS_REGION, CLIPAG_BUCKET, CLIPAG_QUEUE_URL for S3.`;

/** Where the keys live, and that place in words; tests pass their own store. */
export async function openKeyStore(env: Readonly<Record<string, string | undefined>> = process.env): Promise<{ keys: BlobApiKeyStore; where: string }> {
  const config = operatorConfig(env, (line) => process.stderr.write(`clipag: warning: ${line}\n`));
  // A folder made now serves nobody yet: a server run with another --data (or CLIPAG_DATA_DIR) would
  // answer this key 401 (the new-user review), so the output says so where the key's store is named.
  const fresh = config.mode === 'local' && !existsSync(resolve(config.dataDir));
  const where = `${storeDescription(config)}${fresh ? ' (new: no clipag serve has used it; a server started with another --data or CLIPAG_DATA_DIR does not accept keys made here)' : ''}`;
  return { keys: (await storesFor(config)).keys, where };
}

export async function run(argv: string[], store?: BlobApiKeyStore, out: (line: string) => void = console.log): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    options: { name: { type: 'string' }, owner: { type: 'string' }, json: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  const [action, ...rest] = positionals;
  const fail = refusal('keys', usage);
  if (action !== 'create' && action !== 'list' && action !== 'revoke') return fail(action ? `unknown action "${action}"` : 'give an action');
  try {
    if (action === 'create') {
      if (rest.length > 0) return fail(`unexpected argument "${rest[0]}"`);
      if (!values.name?.trim()) return fail('--name is required');
      // The stored record's own rule (ApiKeyRecord: trimmed, counted in code points), checked here so that
      // the flag is named: the store's own refusal reads as a problem with a key.
      if (!ApiKeyRecord.shape.name.safeParse(values.name).success) return fail(`--name must be at most ${NAME_MAX} characters (got ${[...values.name.trim()].length})`);
      const owner = values.owner ?? `acct_${newId()}`;
      if (!OWNER_ID_PATTERN.test(owner)) return fail('--owner must match [A-Za-z0-9_-]{1,64}');
      const { keys, where } = store ? { keys: store, where: undefined } : await openKeyStore();
      const { secret, record } = await keys.create({ name: values.name.trim(), owner });
      if (values.json) out(JSON.stringify({ id: record.id, owner: record.owner, name: record.name, secret, ...(where !== undefined ? { store: where } : {}) }));
      else {
        out(`key id:  ${record.id}`);
        out(`owner:   ${record.owner}`);
        out(`name:    ${record.name}`);
        // Which deployment will accept it: a key made in the wrong store is a 401 for the customer.
        if (where !== undefined) out(`store:   ${where}`);
        out(`secret:  ${secret}`);
        out('');
        out('This secret is shown once and cannot be recovered (only its sha256 is stored). Use it as:');
        out(`  Authorization: Bearer ${secret}`);
      }
      return 0;
    }
    if (action === 'list') {
      const keys = store ?? (await openKeyStore()).keys;
      const records = await keys.list();
      // The fields this version knows, never the hash: a field a newer clipag added to a record is not
      // known to be fit to print.
      if (values.json) out(JSON.stringify(records.map((r) => ({ id: r.id, name: r.name, owner: r.owner, created_at: r.created_at, revoked_at: r.revoked_at }))));
      else if (records.length === 0) out('no keys (create one with: clipag keys create --name NAME)');
      else {
        out(['KEY ID'.padEnd(26), 'OWNER'.padEnd(32), 'NAME'.padEnd(20), 'CREATED'.padEnd(24), 'REVOKED'].join('  '));
        for (const r of records) {
          out([r.id.padEnd(26), r.owner.padEnd(32), r.name.padEnd(20), r.created_at.padEnd(24), r.revoked_at ?? '-'].join('  '));
        }
      }
      return 0;
    }
    if (rest.length !== 1) return fail('revoke takes exactly one KEY_ID');
    const keys = store ?? (await openKeyStore()).keys;
    const record = await keys.revoke(rest[0]);
    out(`revoked ${record.id} (owner ${record.owner}, name ${record.name}) at ${record.revoked_at}`);
    return 0;
  } catch (error) {
    if (error instanceof ClipagError) {
      console.error(`clipag keys: ${operatorMessage(error)} [${error.code}]`);
      return 1;
    }
    throw error;
  }
}
