// `clipag generate`'s first line shows the prompt (the text review, F5): cut at a code point (before, at
// a UTF-16 offset, an emoji's high surrogate was left alone and shown as a literal "\ud83d"), and a
// bidi override in it escaped, not sent raw to the terminal, where it reorders the rest of the line.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runMain } from '../helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-generate-text-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const runCli = (argv: string[]) => runMain(argv);

const CAT = '\u{1F431}';

describe('clipag generate: the prompt it shows', () => {
  it('a long emoji prompt is cut after whole emoji; an RLO in it prints as \\u202e', async () => {
    const long = await runCli(['generate', `a${CAT.repeat(120)}`, '--steps', '1', '--size', '64x64', '--seed', '1', '-o', join(dir, 'long.png')]);
    expect(long.code, long.stderr).toBe(0);
    const first = /^clipag: (".*") 64x64 with toy, seed 1$/m.exec(long.stderr);
    expect(first, long.stderr).not.toBeNull();
    expect(JSON.parse(first![1]!)).toBe(`a${CAT.repeat(98)}…`);
    expect(long.stderr).not.toMatch(/\\ud83d/);

    const bidi = await runCli(['generate', 'a red circle \u202Eelcric', '--steps', '1', '--size', '64x64', '--seed', '1', '-o', join(dir, 'bidi.png')]);
    expect(bidi.code, bidi.stderr).toBe(0);
    expect(bidi.stderr).toContain('clipag: "a red circle \\u202eelcric" 64x64 with toy, seed 1');
    // Nor raw in the engine's warnings (which quote the prompt: the engine escapes them itself).
    expect(bidi.stderr).not.toContain('\u202E');
  });
});
