// clipag eval-pag: the in-repo proof of Perceptually Aligned Gradients (robust vs plain toy CLIP,
// graded by the independent judge).
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { PAG_OUTPUT_SUFFIXES, PAG_PROMPTS, evalPag, pagMarkdown, writePagOutputs } from '../gpu-worker/engine/toy/eval-pag.ts';
import { checkRecipeDefaults } from '../gpu-worker/engine/clip/bundle.ts';
import { type Recipe } from '../gpu-worker/engine/synth/recipe.ts';
import { REPO_ROOT, UsageError, intArg, outputFile, parseCliArgs } from './common.ts';

function parseRecipeArg(text: string | undefined): Partial<Recipe> {
  if (text === undefined) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new UsageError(`--recipe must be a JSON object, e.g. '{"flip":true}'; got ${JSON.stringify(text)}`);
  }
  return checkRecipeDefaults(raw);
}

export const summary = 'measure PAG: images from the robust and plain toy CLIPs, graded by the judge';
export const usage = `usage: clipag eval-pag [options]

  --robust DIR     robust bundle (default models/toy); it must ship the GMM prior both models start from,
                   and both bundles must carry the toy world's tokenizer
  --plain DIR      plain twin (default models/toy-plain)
  --judge DIR      judge (default models/toy-judge); refused unless it passes its accuracy check
  --prompts N      use the first N prompts of the fixed set (default all ${PAG_PROMPTS.length})
  --seeds LIST     comma-separated seeds, each once (default 1,2,3)
  --steps N        synthesis steps (default: the recipe's 100)
  --views G,P      global and patch views (default: each bundle's recipe defaults)
  --recipe JSON    other recipe fields for both models, e.g. '{"flip":true,"cutout":0}' (checked like a
                   bundle's recipe defaults; --steps and --views win)
  --out PREFIX     writes PREFIX.json, PREFIX.md and PREFIX.png (default docs/toy-pag, the report the
                   README shows); existing files are replaced only with --force
  --force          replace existing PREFIX.json, PREFIX.md and PREFIX.png
  --no-probes      skip the robustness and gradient-only probes (about a minute; they ignore the
                   recipe and the seeds, so recipe screens can leave them out)
  --threads N      onnxruntime threads (default 1)`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCliArgs({
    args: argv,
    options: {
      robust: { type: 'string' }, plain: { type: 'string' }, judge: { type: 'string' }, prompts: { type: 'string' },
      seeds: { type: 'string' }, steps: { type: 'string' }, views: { type: 'string' }, recipe: { type: 'string' }, out: { type: 'string' }, threads: { type: 'string' },
      'no-probes': { type: 'boolean' }, force: { type: 'boolean' },
    },
    strict: true,
  });
  const nPrompts = intArg(values.prompts, 'prompts', PAG_PROMPTS.length, 1, PAG_PROMPTS.length);
  const seeds = (values.seeds ?? '1,2,3').split(',').map((s) => intArg(s, 'seeds', 1, 0, 0xffffffff));
  // A seed given twice draws the same images twice: counted twice, they inflate the count and the interval.
  const repeated = [...new Set(seeds.filter((s, i) => seeds.indexOf(s) !== i))];
  if (repeated.length > 0) throw new UsageError(`--seeds must not repeat a seed; ${repeated.join(', ')} ${repeated.length === 1 ? 'is' : 'are'} given more than once in "${values.seeds}"`);
  const recipe: Partial<Recipe> = parseRecipeArg(values.recipe);
  if (values.steps !== undefined) recipe.steps = intArg(values.steps, 'steps', 100, 1, 1000);
  if (values.views !== undefined) {
    const m = /^(\d+),(\d+)$/.exec(values.views);
    if (!m) throw new UsageError(`--views must look like 32,32, got "${values.views}"`);
    recipe.globalViews = Number(m[1]);
    recipe.patchViews = Number(m[2]);
  }
  const prefix = resolve(values.out ?? join(REPO_ROOT, 'docs', 'toy-pag'));
  mkdirSync(dirname(prefix), { recursive: true });
  // Checked before the run (minutes): a report is not lost to a path that cannot be written, and the
  // committed one (the default prefix) is not replaced by a quick screen by accident.
  const outputs = PAG_OUTPUT_SUFFIXES.map((suffix) => outputFile(`${prefix}${suffix}`, '--out'));
  const existing = outputs.filter((f) => existsSync(f));
  if (existing.length > 0 && !values.force) {
    throw new EngineError('invalid_input', `--out ${prefix}: ${existing.join(', ')} already ${existing.length === 1 ? 'exists' : 'exist'}; pass --force to replace ${existing.length === 1 ? 'it' : 'them'}, or another --out`);
  }
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const { report, images } = await evalPag({
    robustDir: resolve(values.robust ?? join(REPO_ROOT, 'models', 'toy')),
    plainDir: resolve(values.plain ?? join(REPO_ROOT, 'models', 'toy-plain')),
    judgeDir: resolve(values.judge ?? join(REPO_ROOT, 'models', 'toy-judge')),
    prompts: PAG_PROMPTS.slice(0, nPrompts),
    seeds,
    recipe,
    threads: intArg(values.threads, 'threads', 1, 0, 256),
    ...(values['no-probes'] ? { robustness: false as const, morph: false as const } : {}),
    log,
  });
  const files = writePagOutputs(prefix, report, images, outputs);
  process.stdout.write(pagMarkdown(report));
  log(`robust all-correct ${(report.robust.allCorrect * 100).toFixed(0)} % (target ≥ 80 %: ${report.targets.robustMet ? 'met' : 'MISSED'}), plain ${(report.plain.allCorrect * 100).toFixed(0)} % (target ≤ 30 %: ${report.targets.plainMet ? 'met' : 'MISSED'}); wrote ${files.join(', ')}`);
  return 0;
}
