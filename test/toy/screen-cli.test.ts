// `clipag screen` and the output check in `clipag generate` (ADR 0017), through the CLI's main() on
// the shipped toy model: `generate --policy` flags or withholds by an operator's document; an operator's rule about stars catches the star the model drew and lets its
// circle through, with the cosines to calibrate by; bad input is refused before the model is opened.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { runMain } from '../helpers/cli.ts';
import { WITHHELD_EXIT_CODE } from '../../cli/generate.ts';
import { defaultPromptPolicy } from '../../shared/prompt-policy.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';

const runCli = (argv: string[]) => runMain(argv);

const dir = mkdtempSync(join(tmpdir(), 'clipag-screen-'));
const policyPath = join(dir, 'policy.json');
const stars = { id: 'stars', category: 'trademark', action: 'withhold', message: "stars are a client's mark", concepts: ['a star', 'a blue star', 'Mickey Mouse'], above_prompt_by: -0.05 };
writeFileSync(policyPath, JSON.stringify({ version: 1, rules: [], output_rules: [stars] }));
const VIEWS_SEED = ['--views', '8,8', '--seed', '1'];
const GEN = ['--steps', '30', ...VIEWS_SEED];

let circle: any;
/** For the circle's `generate`: the texts it embedded as concepts, what the model made of them, and what it handed the shipped policy's output screen (a cosine per concept, the prompt's score). */
const circleScreen: { embedded: unknown[][]; embeddings: unknown[]; judged: unknown[][] } = { embedded: [], embeddings: [], judged: [] };
beforeAll(async () => {
  // The shipped policy is compiled once per process (defaultPromptPolicy): the screen generate runs is this one.
  const judge = vi.spyOn(defaultPromptPolicy().output, 'judge');
  const embed = vi.spyOn(ClipEngine.prototype, 'conceptEmbeddings');
  try {
    const r = await runCli(['generate', 'a large red circle on the left', ...GEN, '-o', join(dir, 'circle.png'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    circle = JSON.parse(r.stdout);
    circleScreen.embedded = embed.mock.calls.map((call) => [...call]);
    circleScreen.embeddings = await Promise.all(embed.mock.results.map((x) => x.value));
    circleScreen.judged = judge.mock.calls.map((call) => [...call]);
  } finally {
    judge.mockRestore();
    embed.mockRestore();
  }
  const s = await runCli(['generate', 'a small blue star at the top', ...GEN, '-o', join(dir, 'star.png'), '--json']);
  expect(s.code, s.stderr).toBe(0);
}, 120_000);

describe('clipag generate --policy', () => {
  const prompt = 'a small green ring at the bottom';
  const policyWith = (action: string, extra: object = {}) => {
    const file = join(dir, `policy-${action}.json`);
    const rule = { id: 'rings', category: 'trademark', action, message: "rings are a client's mark", concepts: [prompt], above_prompt_by: -0.001 };
    writeFileSync(file, JSON.stringify({ version: 1, rules: [], output_rules: [rule], ...extra }));
    return file;
  };

  it('a flag rule: the image is written, and the finding reported', async () => {
    const out = join(dir, 'ring-flag.png');
    const frames = join(dir, 'ring-flag-frames');
    const r = await runCli(['generate', prompt, ...VIEWS_SEED, '--steps', '12', '-o', out, '--frames', frames, '--policy', policyWith('flag'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary).toMatchObject({ output: out, withheld: false });
    expect(summary.output_flags.map((f: any) => [f.action, f.rule, f.concept])).toEqual([['flag', 'rings', prompt]]);
    expect(summary.output_flags[0].cosine).toBeCloseTo(summary.scores[0].cosine, 5); // the concept is the prompt
    expect(existsSync(out)).toBe(true);
    expect(readdirSync(frames).length).toBeGreaterThan(0); // the same settings write frames (the withhold case deletes them)
  });

  it('a withhold rule: neither the image nor its frames are written, and the exit status says why (3)', async () => {
    const out = join(dir, 'ring-withheld.png');
    const frames = join(dir, 'ring-frames');
    const r = await runCli(['generate', prompt, ...VIEWS_SEED, '--steps', '12', '-o', out, '--frames', frames, '--policy', policyWith('withhold'), '--json']);
    expect(r.code).toBe(WITHHELD_EXIT_CODE);
    expect(JSON.parse(r.stdout)).toMatchObject({ output: null, withheld: true, output_flags: [{ action: 'withhold', rule: 'rings' }] });
    expect(r.stderr).toMatch(/the output check withheld the image \(rule rings\); .*ring-withheld\.png was not written/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(frames)).toBe(false); // the folder this run made for them goes too
    // A folder that was there before is the user's: emptied of this run's frames, kept.
    mkdirSync(frames);
    const kept = await runCli(['generate', prompt, ...VIEWS_SEED, '--steps', '12', '-o', out, '--frames', frames, '--policy', policyWith('withhold')]);
    expect(kept.code).toBe(WITHHELD_EXIT_CODE);
    expect(readdirSync(frames)).toEqual([]);
    // A file already at the path is the user's: left as it was, and the message says so.
    writeFileSync(out, 'EARLIER');
    const again = await runCli(['generate', prompt, ...VIEWS_SEED, '--steps', '2', '-o', out, '--policy', policyWith('withhold')]);
    expect(again.code).toBe(WITHHELD_EXIT_CODE);
    expect(again.stderr).toMatch(/was not written \(the file already there, from before, is left as it was\)/);
    expect(readFileSync(out, 'utf8')).toBe('EARLIER');
  });

  it("the file's prompt rules apply before the model is opened", async () => {
    const file = policyWith('flag', { rules: [{ id: 'no-rings', category: 'trademark', action: 'refuse', message: 'no rings here', terms: ['green ring'] }] });
    const r = await runCli(['generate', prompt, '--model', '/nonexistent-clipag/model', '--policy', file]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/refused by the content policy \(trademark, rule no-rings\): "green ring" no rings here/);
    const bad = await runCli(['generate', prompt, '--policy', join(dir, 'nope.json')]);
    expect(bad.stderr).toMatch(/cannot read --policy .*ENOENT/);
  });
});

describe('clipag screen', () => {
  it('generate runs the shipped output rules: the toy model cannot read their concepts, so nothing is flagged', () => {
    const shipped = defaultPromptPolicy().output.concepts;
    expect(shipped.length).toBeGreaterThan(0);
    // The shipped concepts embedded by the model, once: none of them a text the toy model can read.
    expect(circleScreen.embedded).toEqual([[shipped]]);
    expect(circleScreen.embeddings).toEqual([shipped.map(() => null)]);
    // Judged once by the shipped rules: a null cosine for every concept, and the image's own clip score.
    expect(circleScreen.judged).toEqual([[shipped.map(() => null), circle.scores[0].cosine]]);
    expect(circle.output_flags).toEqual([]);
  });

  it("scores each image against the policy's concepts and decides as the worker would", async () => {
    // Each image with the prompt it was made from: "closer to the concept than to the prompt".
    const screen = async (image: string, prompt: string) => {
      const r = await runCli(['screen', join(dir, image), '--prompt', prompt, '--policy', policyPath, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout);
    };
    const c = await screen('circle.png', 'a large red circle on the left');
    const s = await screen('star.png', 'a small blue star at the top');
    expect(c.model).toBe('toy');
    expect(c.concepts.map((x: any) => x.concept).sort()).toEqual(['Mickey Mouse', 'a blue star', 'a star']);
    expect(c.concepts.find((x: any) => x.concept === 'Mickey Mouse').cosine).toBeNull();
    expect(c.prompt_score).toBeCloseTo(circle.scores[0].cosine, 3); // the score generate reported (of the image before 8-bit PNG)
    expect(c.findings).toEqual([]);
    // Several images in one call: one JSON line each, in order.
    const both = await runCli(['screen', join(dir, 'circle.png'), join(dir, 'star.png'), '--prompt', 'a large red circle on the left', '--policy', policyPath, '--json']);
    expect(both.stdout.split('\n').map((l) => JSON.parse(l).image)).toEqual([join(dir, 'circle.png'), join(dir, 'star.png')]);
    expect(s.findings.map((f: any) => [f.action, f.rule, f.concept])).toEqual([['withhold', 'stars', 'a blue star']]);
    // Sorted highest first, unreadable last.
    const cos = s.concepts.map((x: any) => x.cosine);
    expect(cos.slice(0, 2)).toEqual([...cos.slice(0, 2)].sort((a: number, b: number) => b - a));
    expect(cos[2]).toBeNull();

    const text = await runCli(['screen', join(dir, 'star.png'), '--prompt', 'a small blue star at the top', '--policy', policyPath]);
    expect(text.stdout).toMatch(/WITHHOLD {2}rule stars \(trademark\): "a blue star"/);
    expect(text.stdout).toMatch(/concept {2}unreadable {2}"Mickey Mouse"/);
  });

  it.each([
    [['--prompt', 'a star'], /give at least one image/],
    [['IMG'], /--prompt is required/],
    [['/nonexistent-clipag/x.png', '--prompt', 'a star'], /cannot read image \/nonexistent-clipag\/x\.png: ENOENT/],
    [['IMG', '--prompt', 'a star', '--policy', '/nonexistent-clipag/p.json'], /cannot read --policy .*ENOENT/],
    [['IMG', '--prompt', 'a star', '--policy', 'BROKEN'], /is not a valid policy document: not JSON/],
    [['IMG', '--prompt', 'a star', '--policy', 'INVALID'], /not a valid policy document: output_rules\.0: an output rule needs min_cosine, above_prompt_by or both/],
    [['IMG', '--prompt', 'a star', '--policy', 'EMPTY'], /has no output_rules/],
    [['IMG', '--prompt', 'a star', '--model', '/nonexistent-clipag/model'], /model/],
  ])('%j → a clear error, exit ≠ 0', async (args, message) => {
    const files: Record<string, string> = { IMG: join(dir, 'star.png'), BROKEN: join(dir, 'broken.json'), INVALID: join(dir, 'invalid.json'), EMPTY: join(dir, 'empty.json') };
    writeFileSync(files.BROKEN!, '{"version": 1,');
    writeFileSync(files.INVALID!, JSON.stringify({ version: 1, rules: [], output_rules: [{ ...stars, above_prompt_by: undefined }] }));
    writeFileSync(files.EMPTY!, JSON.stringify({ version: 1, rules: [] }));
    const r = await runCli(['screen', ...args.map((a) => files[a] ?? a)]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
  });

  it('a prompt the model cannot read whole is scored as a generation scores it, with the same warning', async () => {
    const r = await runCli(['screen', join(dir, 'star.png'), '--prompt', 'a small blue star at the top by Pikachu', '--policy', policyPath, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/does not know the words "by", "pikachu"/);
    expect(Number.isFinite(JSON.parse(r.stdout).prompt_score)).toBe(true);
  });

  it('a file that is not a PNG is named in the error', async () => {
    const notPng = join(dir, 'notes.txt');
    writeFileSync(notPng, 'hello');
    const r = await runCli(['screen', join(dir, 'star.png'), notPng, '--prompt', 'a star', '--policy', policyPath]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`${notPng}: `);
  });
});
