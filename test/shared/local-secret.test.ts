// The local signing secret (shared/adapters/local/secret.ts), from a CLI review: a crash during the
// first start could leave `signing-secret` empty (it was created, then written), after which `serve`
// and every store verb failed with "signingSecret must be at least 32 characters", naming no file.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadOrCreateSigningSecret } from '../../shared/adapters/local/secret.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-secret-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => {
  const dir = join(root, `d${n++}`);
  mkdirSync(dir);
  return dir;
};

describe('loadOrCreateSigningSecret', () => {
  it('makes the file whole (0600, no temporary left), and processes starting at once agree on one secret', async () => {
    const dir = join(root, 'not-yet-made');
    const secrets = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateSigningSecret(dir)));
    expect(new Set(secrets).size).toBe(1);
    expect(secrets[0]).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(join(dir, 'signing-secret'), 'utf8')).toBe(secrets[0]);
    if (process.platform !== 'win32') expect(statSync(join(dir, 'signing-secret')).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['signing-secret']);
    expect(await loadOrCreateSigningSecret(dir)).toBe(secrets[0]); // kept across restarts
  });

  it('replaces an empty file (it cannot have signed anything), once, whoever starts at the same time', async () => {
    for (const content of ['', '\n', '  \n']) {
      const dir = fresh();
      writeFileSync(join(dir, 'signing-secret'), content);
      const secrets = await Promise.all(Array.from({ length: 6 }, () => loadOrCreateSigningSecret(dir)));
      expect(new Set(secrets).size).toBe(1);
      expect(secrets[0]).toMatch(/^[0-9a-f]{64}$/);
      expect(readFileSync(join(dir, 'signing-secret'), 'utf8')).toBe(secrets[0]);
      expect(readdirSync(dir)).toEqual(['signing-secret']); // no temporary file or lock left
    }
  });

  it('refuses a short or torn file, naming it and saying to delete it, and leaves it as it is', async () => {
    for (const content of ['abc', 'x'.repeat(31), '\0'.repeat(64)]) {
      const dir = fresh();
      const file = join(dir, 'signing-secret');
      writeFileSync(file, content);
      const refusal = loadOrCreateSigningSecret(dir);
      await expect(refusal).rejects.toThrow(`the signing secret ${file} is damaged`);
      await expect(refusal).rejects.toThrow(/delete it and start again/);
      expect(readFileSync(file, 'utf8')).toBe(content);
    }
  });

  it('an unreadable secret names the file, the data folder and CLIPAG_DATA_DIR, not a bare errno', async () => {
    // A folder in its place: EISDIR on read. (A mode of 000 would be the natural case, but the tests may
    // run as root, whom file modes do not stop; the message is the same for every read error but ENOENT.)
    const dir = fresh();
    mkdirSync(join(dir, 'signing-secret'));
    await expect(loadOrCreateSigningSecret(dir)).rejects.toThrow(
      new RegExp(`cannot read the signing secret ${join(dir, 'signing-secret').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(EISDIR\\): the data folder .* \\(CLIPAG_DATA_DIR, or serve --data\\) must be readable and writable`),
    );
  });

  it('the store verbs open the stores on a data folder whose secret an interrupted start left empty', async () => {
    const dir = fresh();
    writeFileSync(join(dir, 'signing-secret'), '');
    const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
    await stores.blobs.put('probe', Buffer.from('x'));
    expect(stores.signingSecret).toBe(readFileSync(join(dir, 'signing-secret'), 'utf8'));
  });
});
