// `clipag policy` (ADR 0018): a document is checked before it is stored; put, get and delete work on
// the deployment's policy and on one owner's; what it stores is what the API then applies. The store
// is the real local blob store.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { run } from '../../cli/policy.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { ownerPolicyKey } from '../../shared/keys.ts';
import { DEFAULT_PROMPT_POLICY, policyFromStore, PROMPT_POLICY_KEY, PromptPolicyDocument } from '../../shared/prompt-policy.ts';

let dir: string;
let blobs: LocalBlobStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-policy-'));
  blobs = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function cli(...argv: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const err = vi.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' ')));
  try {
    const code = await run(argv, blobs, (l) => lines.push(l));
    return { code, lines, stderr: errors.join('\n') };
  } finally {
    err.mockRestore();
  }
}

const licensed = { version: 1, rules: [], output_rules: [{ id: 'stars', category: 'trademark', action: 'withhold', message: 'm', concepts: ['a star'], above_prompt_by: 0 }] };

describe('clipag policy', () => {
  it("put stores a checked document as the deployment's or an owner's; the loader then applies it; get shows it; delete removes it", async () => {
    const file = join(dir, 'alice.json');
    await writeFile(file, JSON.stringify(licensed));
    const put = await cli('put', file, '--owner', 'acct_alice');
    expect(put.code, put.stderr).toBe(0);
    expect(put.lines[0]).toMatch(/^stored acct_alice's policy at config\/prompt-policies\/acct_alice\.json: 0 prompt rule\(s\), 1 output rule\(s\) over 1 concept\(s\)/);
    const policyOf = policyFromStore(blobs);
    expect((await policyOf('acct_alice')).screen([{ text: 'pikachu', param: 'prompt' }])).toEqual([]); // her list has no prompt rules
    expect((await policyOf('acct_alice')).output.concepts).toEqual(['a star']);
    expect((await policyOf('acct_bob')).screen([{ text: 'pikachu', param: 'prompt' }]).map((h) => h.rule)).toEqual(['protected-characters']);

    const got = await cli('get', '--owner', 'acct_alice');
    expect([got.code, JSON.parse(got.lines.join('\n'))]).toEqual([0, licensed]);
    const none = await cli('get');
    expect(none.code).toBe(3);
    expect(none.stderr).toMatch(/no document at config\/prompt-policy\.json; the shipped policy applies/);

    const deployment = join(dir, 'deployment.json');
    await writeFile(deployment, JSON.stringify({ version: 1, rules: [] }));
    expect((await cli('put', deployment)).code).toBe(0);
    expect(await blobs.get(PROMPT_POLICY_KEY)).not.toBeNull();

    const del = await cli('delete', '--owner', 'acct_alice');
    expect([del.code, del.lines[0]]).toEqual([0, expect.stringMatching(/acct_alice falls back to the deployment's policy/)]);
    expect(await blobs.get(ownerPolicyKey('acct_alice'))).toBeNull();
    expect((await cli('get', '--owner', 'acct_alice')).stderr).toMatch(/the deployment's policy applies/);
  });

  it('get shows a stored document that does not parse as it is, says it is not in force, and exits 1', async () => {
    await blobs.put(ownerPolicyKey('acct_alice'), Buffer.from('{garb'));
    const got = await cli('get', '--owner', 'acct_alice');
    expect([got.code, got.lines.join('\n')]).toEqual([1, '{garb']);
    expect(got.stderr).toMatch(/config\/prompt-policies\/acct_alice\.json is not a valid policy document \(not JSON.*\): an API process that read a good version keeps it; one that has none .* answers the requests it governs 503/);
  });

  it('check and put refuse a document that would not load, naming what is wrong, and store nothing', async () => {
    const cases: Array<[string, RegExp]> = [
      ['{"version": 1, "rules": [', /not JSON/],
      [JSON.stringify({ version: 2, rules: [] }), /version/],
      [JSON.stringify({ version: 1, rules: [{ id: 'r', category: 'copyright', action: 'refuse', message: 'm', terms: ['mr. bean'] }] }), /rules\.0\.terms\.0: a term must not contain/],
      [JSON.stringify({ ...licensed, output_rules: [{ ...licensed.output_rules[0], concepts: ['&nbsp;'] }] }), /output_rules\.0\.concepts\.0: a concept must contain text the model reads/],
    ];
    for (const [text, message] of cases) {
      const file = join(dir, 'bad.json');
      await writeFile(file, text);
      for (const argv of [['check', file], ['put', file], ['put', file, '--owner', 'acct_alice']]) {
        const r = await cli(...argv);
        expect(r.code, `${argv.join(' ')}: ${text}`).toBe(1);
        expect(r.stderr).toMatch(message);
      }
    }
    expect((await blobs.list('config/')).items).toEqual([]);
    const good = join(dir, 'good.json');
    await writeFile(good, JSON.stringify(licensed));
    expect((await cli('check', good)).lines[0]).toMatch(/good\.json: valid; 0 prompt rule\(s\), 1 output rule\(s\)/);
    expect((await blobs.list('config/')).items).toEqual([]); // check stores nothing
  });

  it('default prints the shipped policy (a valid document to start from); bad usage exits 2', async () => {
    const d = await cli('default');
    expect(PromptPolicyDocument.parse(JSON.parse(d.lines.join('\n')))).toEqual(PromptPolicyDocument.parse(DEFAULT_PROMPT_POLICY));
    for (const argv of [[], ['frobnicate'], ['put'], ['get', 'extra'], ['check', 'f.json', '--owner', 'acct_a'], ['get', '--owner', '../keys'], ['delete', '--owner', '']]) {
      const r = await cli(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^clipag policy: /);
    }
    expect((await cli('check', join(dir, 'missing.json'))).stderr).toMatch(/cannot read .*missing\.json: ENOENT/);
  });
});
