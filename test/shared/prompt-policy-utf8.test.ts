// A policy document's bytes (the text review, F8): read strictly as UTF-8 by every reader (the API's and
// the worker's store loader, `clipag policy check|put`, `--policy`), so that a Latin-1 file is refused
// with where it stops being UTF-8, not made "valid" with its accented terms read as U+FFFD (a rule that
// never matches what it names); a UTF-8 byte-order mark is taken off, not refused as an invisible token.
// A document that does not read still fails closed (ADR 0015, 0030): the loader rejects, as before.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { run } from '../../cli/policy.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { RetryableError } from '../../shared/errors.ts';
import { parsePolicyDocument, policyFromStore, PROMPT_POLICY_KEY } from '../../shared/prompt-policy.ts';
import { decodeUtf8Strictly } from '../../shared/utf8.ts';

/** A document with one refusing rule whose term has an accent: "pokémon". */
const DOC = '{"version":1,"rules":[{"id":"pk","category":"copyright","action":"refuse","message":"no","terms":["pok\u00e9mon"]}]}';
const utf8 = (text: string) => new TextEncoder().encode(text);
/** The same document as a Latin-1 editor saves it: é is the one byte 0xE9. */
const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));
const BOM = [0xef, 0xbb, 0xbf];

let dir: string;
let blobs: LocalBlobStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-policy-utf8-'));
  blobs = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function policyCli(...argv: string[]): Promise<{ code: number; lines: string[]; stderr: string }> {
  const lines: string[] = [];
  const errors: string[] = [];
  const err = vi.spyOn(console, 'error').mockImplementation((...a) => void errors.push(a.join(' ')));
  try {
    return { code: await run(argv, blobs, (l) => lines.push(l)), lines, stderr: errors.join('\n') };
  } finally {
    err.mockRestore();
  }
}

describe('decodeUtf8Strictly', () => {
  it('gives the text of UTF-8 (a BOM and a U+FFFD its writer spelled kept); else the offset of the first byte that is not UTF-8', () => {
    expect(decodeUtf8Strictly(utf8('caf\u00e9 \u{1F431} \uFFFD'))).toEqual({ text: 'caf\u00e9 \u{1F431} \uFFFD' });
    expect(decodeUtf8Strictly(Uint8Array.from([...BOM, 0x61]))).toEqual({ text: '\uFEFFa' });
    const cases: Array<[number[], number]> = [
      [[0x63, 0x61, 0x66, 0xe9, 0x20, 0x61], 3], // Latin-1 é
      [[0xe2, 0x82, 0xac, 0xef, 0xbf, 0xbd, 0x80], 6], // € and a written U+FFFD, then a stray continuation byte
      [[0xf0, 0x9f, 0x90, 0xb1, 0xc0, 0x80], 4], // an overlong NUL after an emoji
      [[0x61, 0xed, 0xa0, 0x80], 1], // an encoded surrogate (CESU-8)
      [[0x61, 0x62, 0xe2, 0x82], 2], // cut short at the end
    ];
    for (const [bytes, offset] of cases) {
      const got = decodeUtf8Strictly(Uint8Array.from(bytes));
      expect(got, JSON.stringify(bytes)).toMatchObject({ offset });
      expect('problem' in got && got.problem).toContain(`not UTF-8 (byte ${offset}, 0x${bytes[offset]!.toString(16).toUpperCase()},`);
    }
    expect(decodeUtf8Strictly(Uint8Array.from([0xff, 0xfe, 0x7b, 0x00]))).toEqual({ problem: 'UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8', offset: 0 });
  });

  it('UTF-16 without a byte-order mark (valid UTF-8 byte for byte when mostly ASCII) is named as UTF-16; a NUL or two in UTF-8 text is not', () => {
    const text = '{"prompt":"a red circle, caf\u00e9"}\n';
    expect(decodeUtf8Strictly(Buffer.from(text, 'utf16le'))).toEqual({ problem: 'UTF-16 (little-endian, without a byte-order mark: every other byte is 0), not UTF-8', offset: 0 });
    expect(decodeUtf8Strictly(Buffer.from(text, 'utf16le').swap16())).toEqual({ problem: 'UTF-16 (big-endian, without a byte-order mark: every other byte is 0), not UTF-8', offset: 0 });
    expect(decodeUtf8Strictly(Buffer.from('a\u0000b and more text'))).toEqual({ text: 'a\u0000b and more text' });
    expect(decodeUtf8Strictly(Buffer.from('ab'))).toEqual({ text: 'ab' });
  });
});

describe('a policy document that is not UTF-8', () => {
  it('is refused, naming the byte; the same document in UTF-8 refuses "pokémon" (and a Latin-1 one no longer makes "pok mon" its term)', () => {
    const bad = parsePolicyDocument(latin1(DOC));
    expect(bad).toEqual({ problem: `not UTF-8 (byte ${DOC.indexOf('\u00e9')}, 0xE9, is not part of a UTF-8 character): save it as UTF-8` });
    const good = parsePolicyDocument(utf8(DOC));
    if ('problem' in good) throw new Error(good.problem);
    expect(good.policy.screen([{ text: 'a pok\u00e9mon', param: 'prompt' }]).map((h) => h.rule)).toEqual(['pk']);
  });

  it('clipag policy check: exit 1, the file and the byte named; nothing said "valid"', async () => {
    const file = join(dir, 'latin1.json');
    await writeFile(file, latin1(DOC));
    const r = await policyCli('check', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file} is not a valid policy document: not UTF-8 (byte ${DOC.indexOf('\u00e9')}, 0xE9,`);
    expect(r.lines.join('\n')).not.toContain('valid');
  });

  it('in the store, with no good version read before: the loader still fails closed (RetryableError), its problem saying "not UTF-8"', async () => {
    await blobs.put(PROMPT_POLICY_KEY, latin1(DOC), { contentType: 'application/json' });
    const problems: string[] = [];
    const policyOf = policyFromStore(blobs, { onProblem: (p) => problems.push(p) });
    await expect(policyOf()).rejects.toBeInstanceOf(RetryableError);
    expect(problems.join('\n')).toContain(`${PROMPT_POLICY_KEY} is not a valid policy`);
    expect(problems.join('\n')).toContain('not UTF-8 (byte');
  });
});

describe('a policy document with a UTF-8 byte-order mark (Windows editors)', () => {
  it('reads as the same document without it: check says valid, and its rule refuses what it names', async () => {
    const parsed = parsePolicyDocument(Uint8Array.from([...BOM, ...utf8(DOC)]));
    if ('problem' in parsed) throw new Error(parsed.problem);
    expect(parsed.policy.screen([{ text: 'a POK\u00c9MON', param: 'prompt' }]).map((h) => h.rule)).toEqual(['pk']);
    const file = join(dir, 'bom.json');
    await writeFile(file, Uint8Array.from([...BOM, ...utf8(DOC)]));
    const r = await policyCli('check', file);
    expect(r.code, r.stderr).toBe(0);
    expect(r.lines.join('\n')).toMatch(/bom\.json: valid; 1 prompt rule/);
  });

  it('put stores it without the mark: a clipag from before the mark was read would refuse the document and fail closed', async () => {
    const file = join(dir, 'bom.json');
    await writeFile(file, Uint8Array.from([...BOM, ...utf8(DOC)]));
    const r = await policyCli('put', file);
    expect(r.code, r.stderr).toBe(0);
    const stored = (await blobs.get(PROMPT_POLICY_KEY))!.body;
    expect(Buffer.from(stored).equals(Buffer.from(utf8(DOC)))).toBe(true);
  });

  it('a BOM not at the start is still no JSON', () => {
    expect(parsePolicyDocument(utf8(` \uFEFF${DOC}`))).toMatchObject({ problem: expect.stringMatching(/^not JSON/) });
  });
});
