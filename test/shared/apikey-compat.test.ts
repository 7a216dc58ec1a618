// An API key record a newer clipag wrote (the operator's local CLI and the API deploy apart): an older
// `clipag keys list` / `revoke` still sees it and can revoke it, keeping what it does not know, while
// verify refuses it (a field it does not know may restrict the key).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run as keysCli } from '../../cli/keys.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { CorruptDocumentError } from '../../shared/errors.ts';
import { makeTempDir } from './contract/helpers.ts';

let blobs: LocalBlobStore;
let cleanup: () => Promise<void>;
let warnings: { msg: string; fields?: Record<string, unknown> }[];
let keys: BlobApiKeyStore;
beforeEach(async () => {
  const tmp = await makeTempDir('apikey-compat');
  cleanup = tmp.cleanup;
  blobs = new LocalBlobStore({ rootDir: tmp.dir, signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
  warnings = [];
  keys = new BlobApiKeyStore(blobs, { log: { warn: (msg, fields) => warnings.push({ msg, fields }) } });
});
afterEach(async () => {
  await cleanup();
});

const NEWER_FIELDS = { expires_at: '2030-01-01T00:00:00.000Z', scopes: ['generations:read'] };

/** A key created here, then rewritten as a newer clipag would store it (two fields this version does not know). */
async function newerKey(): Promise<{ id: string; secret: string; key: string }> {
  const { secret, record } = await keys.create({ name: 'ci', owner: 'acct_acme' });
  const key = BlobApiKeyStore.keyFor(record.id);
  const doc = JSON.parse(Buffer.from((await blobs.get(key))!.body).toString()) as Record<string, unknown>;
  await blobs.put(key, Buffer.from(JSON.stringify({ ...doc, ...NEWER_FIELDS })));
  return { id: record.id, secret, key };
}
const readRaw = async (key: string) => JSON.parse(Buffer.from((await blobs.get(key))!.body).toString()) as Record<string, unknown>;

describe('an API key record a newer clipag wrote', () => {
  it('is refused by verify (fail-closed), with a warning that says why', async () => {
    const { secret, key } = await newerKey();
    expect(await keys.verify(secret)).toBeNull();
    expect(warnings).toEqual([{ msg: expect.stringMatching(/fields this version does not know.*newer clipag.*upgraded/), fields: { key, fields: ['expires_at', 'scopes'] } }]);
  });

  it('is listed, and revoked: revoked_at set, the fields it does not know kept; verify still refuses it', async () => {
    const { id, secret, key } = await newerKey();
    const listed = await keys.list();
    expect(listed.map((r) => r.id)).toEqual([id]);
    expect(listed[0]).toMatchObject(NEWER_FIELDS);

    const revoked = await keys.revoke(id, new Date('2026-03-01T00:00:00Z'));
    expect(revoked).toMatchObject({ id, revoked_at: '2026-03-01T00:00:00.000Z', ...NEWER_FIELDS });
    expect(await readRaw(key)).toMatchObject({ id, owner: 'acct_acme', name: 'ci', revoked_at: '2026-03-01T00:00:00.000Z', ...NEWER_FIELDS });
    // Idempotent: the first revocation time stays.
    expect((await keys.revoke(id, new Date('2026-04-01T00:00:00Z'))).revoked_at).toBe('2026-03-01T00:00:00.000Z');
    expect(await keys.verify(secret)).toBeNull();
  });

  it('clipag keys list and revoke work on it; list --json prints the fields this version knows, never the hash', async () => {
    const { id, key } = await newerKey();
    const lines: string[] = [];
    expect(await keysCli(['list', '--json'], keys, (l) => lines.push(l))).toBe(0);
    expect(JSON.parse(lines[0]!)).toEqual([{ id, name: 'ci', owner: 'acct_acme', created_at: expect.any(String), revoked_at: null }]);
    expect(await keysCli(['revoke', id], keys, (l) => lines.push(l))).toBe(0);
    expect(lines[1]).toMatch(new RegExp(`^revoked ${id} `));
    expect((await readRaw(key)).revoked_at).not.toBeNull();
  });

  it('a record that is corrupt (not merely newer) is still refused by all three, named as corrupt', async () => {
    const { id, secret, key } = await newerKey();
    await blobs.put(key, Buffer.from(JSON.stringify({ ...(await readRaw(key)), key_sha256: 'not a hash' })));
    expect(await keys.verify(secret)).toBeNull();
    expect(warnings[0]!.msg).toMatch(/^corrupt API key record/);
    expect(await keys.list()).toEqual([]);
    await expect(keys.revoke(id)).rejects.toBeInstanceOf(CorruptDocumentError);
  });
});
