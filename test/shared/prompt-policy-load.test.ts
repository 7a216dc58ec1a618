// What loading the prompt policy costs a cold start, and how its two documents are read (the latency
// review, findings 3b and 5b): the matcher's tables are built at their first use, never at import; the
// job schema does not load the policy; an owner's document and the deployment's are looked at together,
// with the owner's fallback and fail-closed rules of ADR 0015 and 0018 unchanged.
import { join } from 'node:path';
import * as esbuild from 'esbuild';
import { describe, expect, it, vi } from 'vitest';
import { ownerPolicyKey } from '../../shared/keys.ts';
import { POLICY_RETRY_MS, policyFromStore, PROMPT_POLICY_KEY, type PolicySource } from '../../shared/prompt-policy.ts';

const ROOT = join(import.meta.dirname, '..', '..');

/** Every table the matcher builds at its first use (shared/prompt-policy.ts, `lazy`). */
const TABLES = ['CHAR_KIND', 'CLIP_PIECES', 'COMMON_WORDS', 'CYRILLIC_OR_GREEK', 'LATIN_LIKE', 'LOOSE_LETTERS', 'LOOSE_LOOKALIKES', 'MARK_SCRIPTS', 'NO_SPACE_SCRIPT', 'REGION_NAMES', 'SMALL_CAPITALS'];

/** A prompt that needs every table: a special token, Japanese, Devanagari with a vowel sign, a row of flags, small capitals, a mixed-script word, a split name. */
const EVERY_TABLE = 'pika<|startoftext|>chu, バットマン, नमस्ते, 🇳🇦🇷🇺🇹🇴, ᴘɪᴋᴀᴄʜᴜ, Р1каchu, a nar uto';

describe('loading the prompt policy', () => {
  it('builds none of its tables at import (no Intl.DisplayNames, no look-alike maps); the first use builds each once', async () => {
    const Original = Intl.DisplayNames;
    const intl = Intl as unknown as { DisplayNames: typeof Intl.DisplayNames };
    let constructed = 0;
    intl.DisplayNames = class extends Original {
      constructor(...args: ConstructorParameters<typeof Intl.DisplayNames>) {
        super(...args);
        constructed++;
      }
    };
    try {
      vi.resetModules();
      const fresh = await import('../../shared/prompt-policy.ts');
      expect(constructed).toBe(0);
      expect(fresh.lazyTablesBuilt()).toEqual({});
      // Nor does a store loader, made at the API's cold start, compile the shipped policy.
      const policyOf = fresh.policyFromStore({ head: async () => null, get: async () => null });
      expect(fresh.lazyTablesBuilt()).toEqual({});
      // The first check builds them; the screen reads as it always did.
      const hits = (await policyOf('acct_bob')).screen([{ text: EVERY_TABLE, param: 'prompt' }]);
      expect(hits.map((h) => h.rule)).toEqual(['protected-characters']);
      expect(constructed).toBe(1);
      expect(fresh.lazyTablesBuilt()).toEqual(Object.fromEntries(TABLES.map((t) => [t, 1])));
      // Later uses, and other policies, reuse them.
      fresh.compilePolicy(fresh.DEFAULT_PROMPT_POLICY).screen([{ text: EVERY_TABLE, param: 'prompt' }]);
      fresh.defaultPromptPolicy().screen([{ text: `${EVERY_TABLE} 🇧🇦tman`, param: 'prompt' }]);
      expect(fresh.lookalikeLatin('🇳🇦🇷🇺 ᴛᴏᴛᴏʀᴏ')).toBe('NA RU totoro');
      expect(constructed).toBe(1);
      expect(fresh.lazyTablesBuilt()).toEqual(Object.fromEntries(TABLES.map((t) => [t, 1])));
    } finally {
      intl.DisplayNames = Original;
    }
  });

  it('the job schema (every route of the API imports it) does not load the prompt policy', async () => {
    const built = await esbuild.build({ entryPoints: [join(ROOT, 'shared/schemas/job.ts')], bundle: true, platform: 'node', format: 'esm', packages: 'external', write: false, metafile: true, logLevel: 'silent' });
    const inputs = Object.keys(built.metafile.inputs);
    expect(inputs).toContain('shared/policy-constants.ts');
    expect(inputs).not.toContain('shared/prompt-policy.ts');
  });
});

/** A store of policy documents whose every call takes `latencyMs`; counts the calls in flight. */
function slowStore(docs: Map<string, object>, latencyMs = 30) {
  const heads: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const failing = new Set<string>();
  const call = async <T>(key: string, answer: () => T): Promise<T> => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, latencyMs));
      if (failing.has(key)) throw new Error('SlowDown');
      return answer();
    } finally {
      inFlight--;
    }
  };
  const body = (key: string) => Buffer.from(JSON.stringify(docs.get(key)));
  const store: PolicySource = {
    head: (key) => {
      heads.push(key);
      return call(key, () => (docs.has(key) ? { size: body(key).byteLength, etag: `"${key}"` } : null));
    },
    get: (key) => call(key, () => (docs.has(key) ? { body: body(key), etag: `"${key}"` } : null)),
  };
  return { store, heads, failing, maxInFlight: () => maxInFlight };
}

const refusing = (id: string, term: string) => ({ version: 1, rules: [{ id, category: 'trademark', action: 'refuse', message: 'm', terms: [term] }] });
const rulesFor = async (policy: Promise<{ screen: (p: Array<{ text: string; param: string }>) => Array<{ rule: string }> }>, text: string) =>
  (await policy).screen([{ text, param: 'prompt' }]).map((h) => h.rule);

describe("an owner's policy and the deployment's, read together", () => {
  it("an owner without a document: the deployment's is looked at alongside, one round trip instead of two, and is the one in force", async () => {
    const s = slowStore(new Map([[PROMPT_POLICY_KEY, refusing('no-circles', 'circle')]]));
    const policyOf = policyFromStore(s.store);
    expect(await rulesFor(policyOf('acct_bob'), 'a red circle')).toEqual(['no-circles']);
    // HEAD ‖ HEAD, then the deployment's GET: two round trips, not three.
    expect(s.heads).toEqual([ownerPolicyKey('acct_bob'), PROMPT_POLICY_KEY]);
    expect(s.maxInFlight()).toBe(2);
  });

  it("an owner with a document is held to it: the deployment's read alongside is dropped, and its failure fails nothing", async () => {
    const s = slowStore(new Map([[PROMPT_POLICY_KEY, refusing('no-circles', 'circle')], [ownerPolicyKey('acct_alice'), refusing('no-squares', 'square')]]));
    s.failing.add(PROMPT_POLICY_KEY);
    const problems: string[] = [];
    const policyOf = policyFromStore(s.store, { onProblem: (p) => problems.push(p) });
    expect(await rulesFor(policyOf('acct_alice'), 'a red circle on a square')).toEqual(['no-squares']);
    // The deployment's could not be read; owners without a document fail closed until it can (ADR 0015).
    await expect(policyOf('acct_bob')).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems).toEqual([expect.stringMatching(/^config\/prompt-policy\.json could not be read, and no earlier look has/)]);
  });

  it("an owner whose document cannot be told fails closed, whatever the deployment's says; once it is read, its next look does not ask the deployment's", async () => {
    let nowMs = 0;
    const docs = new Map<string, object>([[PROMPT_POLICY_KEY, refusing('no-circles', 'circle')], [ownerPolicyKey('acct_alice'), refusing('no-squares', 'square')]]);
    const s = slowStore(docs, 5);
    s.failing.add(ownerPolicyKey('acct_alice'));
    const policyOf = policyFromStore(s.store, { now: () => nowMs, onProblem: () => undefined });
    await expect(policyOf('acct_alice')).rejects.toMatchObject({ code: 'unavailable' });
    s.failing.clear();
    nowMs = POLICY_RETRY_MS;
    expect(await rulesFor(policyOf('acct_alice'), 'a red circle on a square')).toEqual(['no-squares']);
    s.heads.length = 0;
    nowMs += 60_000;
    expect(await rulesFor(policyOf('acct_alice'), 'a red circle on a square')).toEqual(['no-squares']);
    expect(s.heads).toEqual([ownerPolicyKey('acct_alice')]);
    // Her document removed, she falls back to the deployment's, as before.
    docs.delete(ownerPolicyKey('acct_alice'));
    nowMs += 60_000;
    expect(await rulesFor(policyOf('acct_alice'), 'a red circle on a square')).toEqual(['no-circles']);
  });
});
