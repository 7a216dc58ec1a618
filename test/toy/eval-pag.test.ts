// A quick eval-pag on a few prompts with a short recipe: the robust model's images satisfy the judge
// more often than the plain twin's (the full run's figures are in docs/toy-model.md).
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../cli/common.ts';
import { ATTRIBUTES } from '../../gpu-worker/engine/toy/judge.ts';
import { evalPag, writePagOutputs } from '../../gpu-worker/engine/toy/eval-pag.ts';

const tmp = mkdtempSync(join(tmpdir(), 'clipag-pag-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK_PROMPTS = ['a large red circle on the left', 'a big blue square on the right', 'a large green triangle in the centre'];

describe('eval-pag (quick)', () => {
  it('robust beats plain on a few prompts', async () => {
    const { report, images } = await evalPag({
      robustDir: join(REPO_ROOT, 'models', 'toy'),
      plainDir: join(REPO_ROOT, 'models', 'toy-plain'),
      judgeDir: join(REPO_ROOT, 'models', 'toy-judge'),
      prompts: QUICK_PROMPTS,
      recipe: { steps: 40, globalViews: 8, patchViews: 8, initSamples: 64 },
      judgeCheckImages: 128,
      threads: 1,
    });
    const correct = (m: typeof report.robust) => m.results.reduce((s, r) => s + Object.values(r.correct).filter(Boolean).length, 0);
    expect(correct(report.robust)).toBeGreaterThan(correct(report.plain));
    expect(report.robust.allCorrect).toBeGreaterThan(report.plain.allCorrect);
    for (const a of ['shape', 'colour'] as const) expect(report.robust.perAttribute[a]!.named).toBe(QUICK_PROMPTS.length);
    expect(Object.keys(report.robust.perAttribute).every((a) => (ATTRIBUTES as string[]).includes(a))).toBe(true);
    const files = writePagOutputs(join(tmp, 'pag'), report, images);
    for (const f of files) expect(existsSync(f)).toBe(true);
    expect(readFileSync(files[1], 'utf8')).toMatch(/all named attributes correct/);
    expect(readFileSync(files[2]).subarray(1, 4).toString()).toBe('PNG');
  }, 300_000);
});
