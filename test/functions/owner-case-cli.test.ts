// `clipag policy` and `clipag usage` refuse an --owner that differs only in case from an account with
// keys (portability review #5): in a local data folder on a case-insensitive file system (macOS,
// Windows, a bind mount from a Mac) `alice` names Alice's files, so a put would replace her policy, a
// delete remove it, a rebuild replace her ledger. The store is the real local one behind a case-folding
// wrapper that makes this machine's file system behave as those do.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { run as policy } from '../../cli/policy.ts';
import { run as usage } from '../../cli/usage.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { newJobId } from '../../shared/ids.ts';
import { ownerPolicyKey, usageKey } from '../../shared/keys.ts';
import { recordUsage } from '../../shared/usage.ts';
import { CaseFoldingBlobStore } from '../helpers/case-folding-blobs.ts';

let dir: string;
let blobs: CaseFoldingBlobStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-owner-case-'));
  blobs = new CaseFoldingBlobStore(new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' }));
  await new BlobApiKeyStore(blobs).create({ name: 'alice', owner: 'Alice' });
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const NOW = new Date('2026-12-20T12:00:00Z');

type Cli = (argv: string[], out: (line: string) => void) => Promise<number>;

async function cli(command: Cli, ...argv: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const err = vi.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' ')));
  try {
    const code = await command(argv, (l) => lines.push(l));
    return { code, lines, stderr: errors.join('\n') };
  } finally {
    err.mockRestore();
  }
}
const policyCli = (...argv: string[]) => cli((a, out) => policy(a, blobs, out), ...argv);
const usageCli = (...argv: string[]) => cli((a, out) => usage(a, blobs, out, () => NOW, {}), ...argv);

async function policyFile(name: string, concept: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, JSON.stringify({ version: 1, rules: [], output_rules: [{ id: 'r', category: 'trademark', action: 'withhold', message: 'm', concepts: [concept], above_prompt_by: 0 }] }));
  return file;
}

const stored = async (key: string) => {
  const found = await blobs.get(key);
  return found && Buffer.from(found.body).toString('utf8');
};

describe('an --owner that differs from an account only in case', () => {
  it('policy put and delete are refused naming the account, and its policy stays as it was', async () => {
    const put = await policyCli('put', await policyFile('hers.json', 'a star'), '--owner', 'Alice');
    expect(put.code, put.stderr).toBe(0);
    const hers = await stored(ownerPolicyKey('Alice'));
    expect(hers).toContain('a star');

    const replace = await policyCli('put', await policyFile('other.json', 'a moon'), '--owner', 'alice');
    expect(replace.code).toBe(1);
    expect(replace.stderr).toMatch(/--owner "alice" differs from the existing owner "Alice" only in case: use "Alice".*would replace Alice's policy\); nothing changed/);
    expect(replace.lines).toEqual([]);
    expect(await stored(ownerPolicyKey('Alice'))).toBe(hers);

    const remove = await policyCli('delete', '--owner', 'alice');
    expect(remove.code).toBe(1);
    expect(remove.stderr).toMatch(/--owner "alice" differs from the existing owner "Alice" only in case.*would remove Alice's policy\); nothing changed/);
    expect(await stored(ownerPolicyKey('Alice'))).toBe(hers);

    // Reading is refused too: it would show Alice's policy as alice's.
    const shown = await policyCli('get', '--owner', 'alice');
    expect(shown.code).toBe(1);
    expect(shown.stderr).toMatch(/--owner "alice" differs from the existing owner "Alice" only in case.*would show Alice's policy\)$/m);
    expect(shown.lines).toEqual([]);
    expect((await policyCli('get', '--owner', 'Alice')).lines.join('')).toContain('a star');
  });

  it('an owner with no key and no such twin is still allowed, as is the account itself', async () => {
    expect((await policyCli('put', await policyFile('new.json', 'a moon'), '--owner', 'acct_new')).code).toBe(0);
    expect(await stored(ownerPolicyKey('acct_new'))).toContain('a moon');
    expect((await policyCli('delete', '--owner', 'acct_new')).code).toBe(0);
    expect((await policyCli('delete', '--owner', 'Alice')).code).toBe(0);
    expect((await usageCli('show', '--owner', 'acct_new')).code).toBe(0);
    expect((await usageCli('show', '--owner', 'Alice')).code).toBe(0);
  });

  it("usage show, audit and rebuild are refused naming the account; its ledger stays as it was", async () => {
    await recordUsage(blobs, 'Alice', newJobId(), NOW, { images: 1, workerSeconds: 10, encoderPasses: 40 });
    const ledger = await stored(usageKey('Alice', '2026-12'));
    expect(ledger).toContain('"2026-12-20"');
    for (const action of ['show', 'audit'] as const) {
      const refused = await usageCli(action, '--owner', 'alice');
      expect([refused.code, refused.lines]).toEqual([1, []]);
      expect(refused.stderr).toMatch(/--owner "alice" differs from the existing owner "Alice" only in case: use "Alice".*would read Alice's ledger\)/);
    }
    const rebuild = await usageCli('rebuild', '--owner', 'alice');
    expect([rebuild.code, rebuild.lines]).toEqual([1, []]);
    expect(rebuild.stderr).toMatch(/differs from the existing owner "Alice" only in case.*would replace Alice's ledger\); nothing changed/);
    expect(await stored(usageKey('Alice', '2026-12'))).toBe(ledger);
  });
});

describe('a case-twin pair made before key creation refused twins (each its own account on S3 and Linux)', () => {
  it('both owners keep being served by policy and usage; a third spelling is still refused', async () => {
    const plain = new LocalBlobStore({ rootDir: join(dir, 'plain'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    const keys = new BlobApiKeyStore(plain);
    await keys.create({ name: 'alice', owner: 'Alice' });
    // The older version's second key, for `alice`: a record as create writes it, under its owner.
    const made = await keys.create({ name: 'other', owner: 'acct_tmp' });
    const [record] = (await keys.list()).filter((k) => k.owner === 'acct_tmp');
    const key = (await plain.list('keys/')).items.map((i) => i.key).find((k) => k.includes(record!.id))!;
    const body = JSON.parse(Buffer.from((await plain.get(key))!.body).toString('utf8')) as Record<string, unknown>;
    await plain.put(key, Buffer.from(JSON.stringify({ ...body, owner: 'alice' })));
    expect(made.secret).toBeTruthy();
    expect((await keys.list()).map((k) => k.owner).sort()).toEqual(['Alice', 'alice']);

    const on = (argv: string[]) => cli((a, out) => policy(a, plain, out), ...argv);
    for (const owner of ['alice', 'Alice']) {
      const put = await on(['put', await policyFile(`${owner}.json`, 'a moon'), '--owner', owner]);
      expect(put.code, put.stderr).toBe(0);
      const shown = await cli((a, out) => usage(a, plain, out, () => NOW, {}), 'show', '--owner', owner);
      expect(shown.code, shown.stderr).toBe(0);
    }
    const third = await on(['put', await policyFile('third.json', 'a moon'), '--owner', 'ALICE']);
    expect(third.code).toBe(1);
    expect(third.stderr).toMatch(/--owner "ALICE" differs from the existing owner "(Alice|alice)" only in case/);
  });
});
