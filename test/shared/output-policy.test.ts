// The output rules of the policy document (ADR 0017): what a document may say, and how an image's
// cosines to the concepts become findings.
import { describe, expect, it } from 'vitest';
import { compileOutputScreen, compilePolicy, DEFAULT_PROMPT_POLICY, MAX_OUTPUT_CONCEPTS, PromptPolicyDocument } from '../../shared/prompt-policy.ts';

const rule = { id: 'mouse', category: 'copyright', action: 'withhold', message: 'looks like a mouse we do not own', concepts: ['Mickey Mouse'], above_prompt_by: 0 } as const;
const doc = (output_rules: unknown[]) => ({ version: 1, rules: [], output_rules });
const problems = (d: unknown) => {
  const r = PromptPolicyDocument.safeParse(d);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
};

describe('output rules in the policy document', () => {
  it('the shipped policy parses, and its output rules only flag (they are not calibrated on real weights)', () => {
    const parsed = PromptPolicyDocument.parse(DEFAULT_PROMPT_POLICY);
    expect(parsed.output_rules!.length).toBeGreaterThan(0);
    expect(parsed.output_rules!.every((r) => r.action === 'flag' && r.above_prompt_by === 0)).toBe(true);
    expect(compilePolicy(parsed).output.concepts).toContain('Mickey Mouse');
  });

  it('a document without output rules (one written before them) still parses, and checks nothing', () => {
    const policy = compilePolicy(PromptPolicyDocument.parse({ version: 1, rules: [] }));
    expect(policy.output.concepts).toEqual([]);
    expect(policy.output.judge([], 0.3)).toEqual([]);
  });

  it('refuses malformed output rules, naming the field', () => {
    expect(problems(doc([rule]))).toEqual([]);
    const { above_prompt_by: _, ...noThreshold } = rule;
    expect(problems(doc([noThreshold])).join()).toMatch(/output_rules\.0: an output rule needs min_cosine, above_prompt_by or both/);
    expect(problems(doc([rule, rule])).join()).toMatch(/output_rules\.1\.id: duplicate output rule id mouse/);
    expect(problems(doc([{ ...rule, action: 'refuse' }])).join()).toMatch(/output_rules\.0\.action/);
    expect(problems(doc([{ ...rule, concepts: [] }])).join()).toMatch(/output_rules\.0\.concepts/);
    expect(problems(doc([{ ...rule, concepts: ['  '] }])).join()).toMatch(/output_rules\.0\.concepts\.0/);
    expect(problems(doc([{ ...rule, concepts: ['x'.repeat(201)] }])).join()).toMatch(/output_rules\.0\.concepts\.0/);
    // Nothing the model would read: every job would fail on it.
    for (const c of ['&nbsp;', '\u0007', '&#32;']) expect(problems(doc([{ ...rule, concepts: [c] }])).join(), JSON.stringify(c)).toMatch(/output_rules\.0\.concepts\.0: a concept must contain text the model reads/);
    expect(problems(doc([{ ...rule, min_cosine: 1.5 }])).join()).toMatch(/output_rules\.0\.min_cosine/);
    expect(problems(doc([{ ...rule, above_prompt_by: Number.NaN }])).join()).toMatch(/output_rules\.0\.above_prompt_by/);
    expect(problems(doc([{ ...rule, extra: 1 }])).join()).toMatch(/extra/);
    const many = Array.from({ length: 3 }, (_, r) => ({ ...rule, id: `r${r}`, concepts: Array.from({ length: 200 }, (_, i) => `concept ${r} ${i}`) }));
    expect(problems(doc(many)).join()).toContain(`at most ${MAX_OUTPUT_CONCEPTS} distinct concepts`);
  });
});

describe('judging an image', () => {
  const screen = compileOutputScreen([
    { id: 'chars', category: 'copyright', action: 'flag', message: 'a character', concepts: ['Mickey Mouse', 'Pikachu'], above_prompt_by: 0 },
    { id: 'logos', category: 'trademark', action: 'withhold', message: 'a logo', concepts: ['the Nike logo', 'Pikachu'], min_cosine: 0.3 },
    { id: 'both', category: 'copyright', action: 'flag', message: 'both conditions', concepts: ['Totoro'], min_cosine: 0.25, above_prompt_by: 0.05 },
  ]);

  it('scores each distinct concept once, in document order', () => {
    expect(screen.concepts).toEqual(['Mickey Mouse', 'Pikachu', 'the Nike logo', 'Totoro']);
  });

  it('above_prompt_by: a concept matches when the image is closer to it than to the prompt, by the margin', () => {
    expect(screen.judge([0.29, 0.1, 0.1, 0.1], 0.3)).toEqual([]);
    expect(screen.judge([0.3, 0.1, 0.1, 0.1], 0.3)).toEqual([{ rule: 'chars', category: 'copyright', action: 'flag', concept: 'Mickey Mouse', message: 'a character', cosine: 0.3 }]);
  });

  it('one finding per rule, naming its best concept; withholding rules first', () => {
    const hits = screen.judge([0.31, 0.35, 0.32, 0.1], 0.3);
    expect(hits.map((h) => [h.rule, h.concept, h.cosine])).toEqual([
      ['logos', 'Pikachu', 0.35],
      ['chars', 'Pikachu', 0.35],
    ]);
  });

  it('min_cosine alone is an absolute level; with above_prompt_by both must hold', () => {
    expect(screen.judge([0, 0, 0.3, 0], 0.9).map((h) => h.rule)).toEqual(['logos']);
    expect(screen.judge([0, 0, 0.299, 0], -1).map((h) => h.rule)).toEqual(['chars']); // only relative: 0 ≥ -1
    expect(screen.judge([-2, -2, -2, 0.26], 0.2).map((h) => h.rule)).toEqual(['both']);
    expect(screen.judge([-2, -2, -2, 0.26], 0.22)).toEqual([]); // 0.26 < 0.22 + 0.05
    expect(screen.judge([-2, -2, -2, 0.24], 0.1)).toEqual([]); // under min_cosine
  });

  it('a concept the model cannot read (null) never matches; a cosine list of the wrong length is a bug, not a pass', () => {
    expect(screen.judge([null, null, null, null], -1)).toEqual([]);
    expect(screen.judge([null, 0.9, null, null], 0.1).map((h) => h.concept)).toEqual(['Pikachu', 'Pikachu']);
    expect(() => screen.judge([], 0.3)).toThrow(/0 cosines for 4 concepts/);
  });
});
