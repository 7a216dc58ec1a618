// Owner ids that differ only in case would share files in a local data folder on a case-insensitive
// file system (macOS, Windows): a new key for such an owner is refused (tenant-isolation review, U1).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { ValidationError } from '../../shared/errors.ts';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('API keys: owners apart by more than case', () => {
  it('refuses a key for acct_Alice while acct_alice has one, naming the existing owner; the same owner again is fine', async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipag-owner-case-'));
    const keys = new BlobApiKeyStore(new LocalBlobStore({ rootDir: dir, signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' }));
    await keys.create({ name: 'a', owner: 'acct_alice' });
    const err = await keys.create({ name: 'b', owner: 'acct_Alice' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect(err).toMatchObject({ param: 'owner' });
    expect((err as Error).message).toContain('differs from the existing owner "acct_alice" only in case');
    await expect(keys.create({ name: 'c', owner: 'acct_alice' })).resolves.toMatchObject({ record: { owner: 'acct_alice' } });
    await expect(keys.create({ name: 'd', owner: 'acct_bob' })).resolves.toMatchObject({ record: { owner: 'acct_bob' } });
    expect((await keys.list()).map((k) => k.owner).sort()).toEqual(['acct_alice', 'acct_alice', 'acct_bob']);
  });
});
