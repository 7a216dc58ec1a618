import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { run } from '../../cli/keys.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { createApp } from '../../functions/app.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { LIMITS } from './helpers.ts';

let dir: string;
let blobs: LocalBlobStore;
let store: BlobApiKeyStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-keys-'));
  blobs = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
  store = new BlobApiKeyStore(blobs);
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function cli(...argv: string[]): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const code = await run(argv, store, (l) => lines.push(l));
  return { code, lines };
}

describe('clipag keys', () => {
  it('create prints the secret once, the key authenticates, list hides it, revoke turns it off', async () => {
    const created = await cli('create', '--name', 'acme', '--owner', 'acct_acme', '--json');
    expect(created.code).toBe(0);
    const { id, secret, owner } = JSON.parse(created.lines[0]) as { id: string; secret: string; owner: string };
    expect(owner).toBe('acct_acme');
    expect(secret).toMatch(/^ck_[0-9a-z]{26}_[A-Za-z0-9_-]{43}$/);

    const app = createApp({
      blobs,
      queue: new LocalJobQueue({ dir: join(dir, 'queue') }),
      jobs: new BlobJobStore(blobs),
      keys: store,
      models: async () => [{ id: 'toy' }],
      limits: LIMITS,
    });
    const call = () => app.request('/v1/models', { headers: { Authorization: `Bearer ${secret}` } });
    expect((await call()).status).toBe(200);

    const listed = await cli('list', '--json');
    expect(listed.lines.join('\n')).not.toContain(secret.slice(30));
    expect(JSON.parse(listed.lines[0])).toEqual([expect.objectContaining({ id, owner: 'acct_acme', name: 'acme', revoked_at: null })]);

    expect((await cli('revoke', id)).code).toBe(0);
    expect((await call()).status).toBe(401);
    expect((await cli('revoke', id)).code).toBe(0); // idempotent
    expect(JSON.parse((await cli('list', '--json')).lines[0])[0].revoked_at).not.toBeNull();
  });

  it('default owner is a fresh account; bad input exits non-zero without writing', async () => {
    const a = JSON.parse((await cli('create', '--name', 'x', '--json')).lines[0]);
    const b = JSON.parse((await cli('create', '--name', 'x', '--json')).lines[0]);
    expect(a.owner).toMatch(/^acct_/);
    expect(a.owner).not.toBe(b.owner);
    expect((await cli('create')).code).toBe(2);
    expect((await cli('create', '--name', 'y', '--owner', '../evil')).code).toBe(2);
    expect((await cli('revoke', 'nosuchkey')).code).toBe(1);
    expect((await cli('frobnicate')).code).toBe(2);
    expect(await store.list()).toHaveLength(2);
  });
});
