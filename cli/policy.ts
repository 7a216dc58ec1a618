// clipag policy: check a content policy document, and put, show or remove the deployment's or one
// owner's in the configured blob store (local `.data/` by default; S3 when CLIPAG_MODE=aws), as
// `clipag keys` does for keys. A document is checked before it is stored, so a typo never reaches the
// API (which would keep its last good policy, or, in a process that has none yet, refuse the requests
// the policy governs with a 503 rather than apply a weaker one; and log the problem).
import { readFileSync } from 'node:fs';
import { BlobApiKeyStore, ownerCaseTwin } from '../shared/apikeys.ts';
import { storesFor } from '../shared/adapters/stores.ts';
import { operatorConfig, storeDescription } from '../shared/config.ts';
import { OWNER_ID_PATTERN } from '../shared/names.ts';
import type { BlobStore } from '../shared/ports.ts';
import { ownerPolicyKey } from '../shared/keys.ts';
import { DEFAULT_PROMPT_POLICY, MAX_POLICY_BYTES, parsePolicyDocument, PROMPT_POLICY_KEY, type PromptPolicy, type PromptPolicyDocument } from '../shared/prompt-policy.ts';
import { refusal, parseCliArgs } from './common.ts';

export const summary = "check a content policy, or put, show or remove the deployment's or an owner's";
export const usage = `usage: clipag policy check FILE
       clipag policy put FILE [--owner ID]
       clipag policy get [--owner ID]
       clipag policy delete [--owner ID]
       clipag policy default

  check    check a document (format: shared/prompt-policy.ts); prints what it holds
  put      check it, then store it: the deployment's policy (config/prompt-policy.json), or with
           --owner that account's own (config/prompt-policies/ID.json), which replaces the
           deployment's for its requests and images
  get      print the stored document (exit 3 when there is none: the fallback applies)
  delete   remove it: the owner falls back to the deployment's policy, the deployment to the shipped one
  default  print the shipped policy, a starting point to edit

The API and the worker look at the store at most once a minute, so a change takes up to a minute.
The store comes from the environment like the server's: CLIPAG_DATA_DIR (default .data) in local
mode; CLIPAG_MODE=aws with AWS_REGION, CLIPAG_BUCKET, CLIPAG_QUEUE_URL for S3.`;

/** `get` finds no document: distinct from failure, so a script can tell. */
const NONE_EXIT_CODE = 3;

export async function run(argv: string[], blobs?: BlobStore, out: (line: string) => void = console.log): Promise<number> {
  const { values, positionals } = parseCliArgs({ args: argv, options: { owner: { type: 'string' } }, allowPositionals: true, strict: true });
  const [action, ...rest] = positionals;
  const fail = refusal('policy', usage);
  const arity: Record<string, number> = { check: 1, put: 1, get: 0, delete: 0, default: 0 };
  if (action === undefined || !(action in arity)) return fail(action ? `unknown action "${action}"` : 'give an action');
  if (rest.length !== arity[action]) return fail(arity[action] ? `${action} takes one FILE` : `unexpected argument "${rest[0]}"`);
  if (values.owner !== undefined && (action === 'check' || action === 'default')) return fail(`--owner does not apply to ${action}`);
  if (values.owner !== undefined && !OWNER_ID_PATTERN.test(values.owner)) return fail('--owner must match [A-Za-z0-9_-]{1,64}');
  const key = values.owner === undefined ? PROMPT_POLICY_KEY : ownerPolicyKey(values.owner);
  const whose = values.owner === undefined ? "the deployment's policy" : `${values.owner}'s policy`;

  if (action === 'default') {
    out(JSON.stringify(DEFAULT_PROMPT_POLICY, null, 2));
    return 0;
  }
  if (action === 'check' || action === 'put') {
    let body: Uint8Array;
    try {
      body = readFileSync(rest[0]!);
    } catch (e) {
      return fail(`cannot read ${rest[0]}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 1);
    }
    const parsed = parsePolicyDocument(body);
    if ('problem' in parsed) return fail(`${rest[0]} is not a valid policy document: ${parsed.problem}`, 1);
    if (action === 'check') {
      out(`${rest[0]}: valid; ${describe(parsed, body)}`);
      return 0;
    }
    let where: string | undefined;
    try {
      let store = blobs;
      if (!store) {
        const config = operatorConfig(process.env, (line) => process.stderr.write(`clipag: warning: ${line}\n`));
        store = (await storesFor(config)).blobs;
        where = storeDescription(config);
      }
      const twin = values.owner === undefined ? undefined : await caseTwinRefusal(store, values.owner, 'replace');
      if (twin !== undefined) return fail(twin, 1);
      // Stored without an editor's byte-order mark: a clipag from before it was read refuses such a
      // document, and an API or worker of that version would then fail closed (503s) on a good policy.
      const stored = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? body.subarray(3) : body;
      await store.put(key, stored, { contentType: 'application/json' });
    } catch (e) {
      return fail(`could not store ${key}: ${e instanceof Error ? e.message : String(e)}`, 1);
    }
    out(`stored ${whose} at ${key}${where !== undefined ? ` in ${where}` : ''}: ${describe(parsed, body)}; in force within a minute`);
    return 0;
  }
  try {
    const store = blobs ?? (await storesFor(operatorConfig(process.env, (line) => process.stderr.write(`clipag: warning: ${line}\n`)))).blobs;
    if (action === 'get') {
      const twin = values.owner === undefined ? undefined : await caseTwinRefusal(store, values.owner, 'show');
      if (twin !== undefined) return fail(twin, 1);
      const found = await store.get(key);
      if (!found) {
        console.error(`clipag policy: no document at ${key}; ${values.owner === undefined ? 'the shipped policy applies (clipag policy default)' : "the deployment's policy applies"}`);
        return NONE_EXIT_CODE;
      }
      out(Buffer.from(found.body).toString('utf8'));
      // Shown as stored, so that it can be mended; but a document that does not parse is not in force.
      const parsed = parsePolicyDocument(found.body);
      if ('problem' in parsed) {
        console.error(`clipag policy: ${key} is not a valid policy document (${parsed.problem}): an API process that read a good version keeps it; one that has none (a fresh start) answers the requests it governs 503 rather than apply a weaker policy; both log an error. Replace it with clipag policy put`);
        return 1;
      }
      return 0;
    }
    const twin = values.owner === undefined ? undefined : await caseTwinRefusal(store, values.owner, 'remove');
    if (twin !== undefined) return fail(twin, 1);
    await store.delete(key);
    out(`removed ${key} (if it was there); ${values.owner === undefined ? 'the shipped policy applies' : `${values.owner} falls back to the deployment's policy`} within a minute`);
    return 0;
  } catch (e) {
    return fail(`store: ${e instanceof Error ? e.message : String(e)}`, 1);
  }
}

/**
 * Why `--owner` is refused when it differs only in case from the owner of an existing key (acct_alice
 * while acct_Alice has keys); undefined when it does not. In a local data folder on a case-insensitive
 * file system (macOS and Windows by default, a bind mount from a Mac) both name the same policy file.
 * An owner with no key and no such twin stays allowed: a policy may be set before the first key.
 */
async function caseTwinRefusal(store: BlobStore, owner: string, act: 'replace' | 'remove' | 'show'): Promise<string | undefined> {
  const twin = await ownerCaseTwin(new BlobApiKeyStore(store), owner);
  if (twin === undefined) return undefined;
  return `--owner "${owner}" differs from the existing owner "${twin}" only in case: use "${twin}", or another id (in a local data folder on a case-insensitive file system, as on macOS and Windows, both name the same file, so this would ${act} ${twin}'s policy)${act === 'show' ? '' : '; nothing changed'}`;
}

function describe({ policy, document }: { policy: PromptPolicy; document: PromptPolicyDocument }, body: Uint8Array): string {
  return `${document.rules.length} prompt rule(s), ${document.output_rules?.length ?? 0} output rule(s) over ${policy.output.concepts.length} concept(s), ${body.byteLength} of ${MAX_POLICY_BYTES} bytes`;
}
