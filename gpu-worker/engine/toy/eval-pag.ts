// eval-pag: the in-repo proof of Perceptually Aligned Gradients. Each CLIP (robust and plain twin)
// synthesizes images for a fixed prompt set with the default CLIPAG recipe; the independent judge
// says whether each named attribute is really in the picture. A robust model's gradient should make the
// judge agree; a plain model's gradient should raise its own CLIP score while the judge disagrees.

import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { sha256File } from '../clip/bundle.ts';
import { ClipEngine } from '../engine.ts';
import { EngineError } from '../errors.ts';
import { type PlanarImage, encodePng } from '../synth/image.ts';
import { type Recipe } from '../synth/recipe.ts';
import { synthesize } from '../synth/synthesize.ts';
import { ATTRIBUTES, type Attribute, Judge, JUDGE_MIN_ACCURACY, judgePasses, type Verdict } from './judge.ts';
import { type NamedObject, WORLD_SIZE, isHeldOut, parseCaption, sampleBatch, worldTokenizerDifference } from './world.ts';
import { Rng } from '../synth/rng.ts';
import { DEFAULT_MORPH, DEFAULT_ROBUSTNESS, type MorphOptions, type MorphPoint, type RobustnessOptions, type RobustnessPoint, gradientMorph, judgeUnderAttack, zeroShotUnderAttack } from './robustness.ts';

/** The fixed prompt set: shape and colour always; size and position where named. Six use held-out pairs. */
export const PAG_PROMPTS: string[] = [
  'a large red circle on the left',
  'a yellow star',
  'a big blue square on the right',
  'a white cross at the bottom',
  'a cyan ring',
  'a large green triangle in the centre',
  'a small orange circle at the top',
  'a purple star on the left',
  // held-out (shape, colour) pairs, never drawn in CLIP training
  'a purple circle',
  'a large orange square',
  'a blue triangle on the left',
  'a green star',
  'a big red ring',
  'a yellow cross on the right',
];

export interface PromptResult {
  prompt: string;
  seed: number;
  heldOut: boolean;
  named: NamedObject;
  verdict: Verdict;
  correct: Partial<Record<Attribute, boolean>>;
  allCorrect: boolean;
  /** The judge on the initial image (the prior sample this model picked, before any gradient step). */
  initVerdict: Verdict;
  initAllCorrect: boolean;
  ownScore: { initial: number; final: number };
  /** Cosine of the image under the other model (robust image under the plain CLIP and vice versa). */
  otherScore: number;
  /** High-frequency energy: mean squared difference from the 3×3 box blur (adversarial texture is high). */
  highFreq: number;
  seconds: number;
}

export interface ModelReport {
  model: string;
  robust: boolean;
  perAttribute: Partial<Record<Attribute, { correct: number; named: number; accuracy: number }>>;
  allCorrect: number;
  allCorrectHeldOut: number;
  allCorrectSeen: number;
  /**
   * All named attributes correct on the initial images. The recipe picks its start by this model's own
   * score, so this is what selection alone achieves; allCorrect − initAllCorrect is the gradient's part.
   */
  initAllCorrect: number;
  meanOwnScore: { initial: number; final: number };
  /** Prompts where the model's own score rose but the judge found a named attribute wrong. */
  scoreRoseJudgeDisagreed: number;
  meanHighFreq: number;
  /**
   * Mean cosine of this model's images with their prompt under the *other* CLIP: images that carry the
   * prompt's content are recognized by a second model; adversarial features are specific to their own.
   */
  meanOtherScore: number;
  results: PromptResult[];
  seconds: number;
}

/** Where both models' images start: the GMM prior, named by where it came from and its file's sha256. */
export interface PagInit {
  kind: 'gmm';
  /** "<robust bundle name>/<file>" (the robust bundle's prior), or the priorPath given. */
  prior: string;
  sha256: string;
}

export interface PagReport {
  prompts: string[];
  seeds: number[];
  recipe: Partial<Recipe>;
  /** The start of every synthesis (absent in reports written before it was recorded: those were gmm too). */
  init?: PagInit;
  judge: { accuracy: Record<Attribute | 'all', number>; checkedOn: number };
  robust: ModelReport;
  plain: ModelReport;
  /** The adversarial signature: plain scores rise while the judge disagrees. */
  adversarialSignature: boolean;
  targets: { robustAllCorrectMin: number; plainAllCorrectMax: number; robustMet: boolean; plainMet: boolean };
  /** Zero-shot accuracy of each twin under L2 PGD (robustness.ts): how robust each really is. */
  robustness?: { attack: Omit<RobustnessOptions, 'threads'>; robust: RobustnessPoint[]; plain: RobustnessPoint[]; judge: RobustnessPoint[] };
  /** The PAG test with the gradient alone (robustness.ts gradientMorph). */
  morph?: { options: MorphOptions; robust: MorphPoint[]; plain: MorphPoint[] };
}

export interface EvalPagOptions {
  robustDir: string;
  plainDir: string;
  judgeDir: string;
  prompts?: string[];
  seeds?: number[];
  recipe?: Partial<Recipe>;
  /** GMM prior both models start from (default: the robust bundle's). */
  priorPath?: string;
  threads?: number;
  /** Fresh world images the judge is re-checked on before it may grade (default 512). */
  judgeCheckImages?: number;
  /** The robustness measurement (default DEFAULT_ROBUSTNESS); false skips it. */
  robustness?: RobustnessOptions | false;
  /** The gradient-only morph test (default DEFAULT_MORPH); false skips it. */
  morph?: MorphOptions | false;
  log?: (line: string) => void;
}

function namedAttributes(o: NamedObject): Attribute[] {
  const a: Attribute[] = ['shape', 'colour'];
  if (o.size) a.push('size');
  if (o.position) a.push('position');
  return a;
}

export async function evalPag(opts: EvalPagOptions): Promise<{ report: PagReport; images: { robust: PlanarImage[]; plain: PlanarImage[] } }> {
  const log = opts.log ?? (() => {});
  const prompts = opts.prompts ?? PAG_PROMPTS;
  const seeds = opts.seeds ?? [1];
  // A repeated seed repeats its images: counted twice, it inflates the count and narrows the interval.
  const repeated = seeds.filter((s, i) => seeds.indexOf(s) !== i);
  if (repeated.length > 0) throw new EngineError('invalid_input', `eval-pag seeds must differ; ${[...new Set(repeated)].join(', ')} ${new Set(repeated).size === 1 ? 'is' : 'are'} repeated`);
  const judge = await Judge.open(opts.judgeDir, opts.threads);
  const nCheck = opts.judgeCheckImages ?? 512;
  const acc = await judge.accuracy(nCheck, 20240601);
  if (!judgePasses(acc)) {
    await judge.release();
    throw new EngineError(
      'invalid_model',
      `the judge in ${opts.judgeDir} fails its own accuracy check on ${nCheck} fresh world images (${ATTRIBUTES.map((a) => `${a} ${(acc[a] * 100).toFixed(1)}%`).join(', ')}; every attribute needs ≥ ${JUDGE_MIN_ACCURACY * 100}%): it is no judge`,
    );
  }
  log(`judge check on ${nCheck} fresh images: ${ATTRIBUTES.map((a) => `${a} ${(acc[a] * 100).toFixed(1)}%`).join(', ')}`);
  const robust = await ClipEngine.open(opts.robustDir, { threads: opts.threads });
  const plain = await ClipEngine.open(opts.plainDir, { threads: opts.threads });
  try {
    if (robust.imageSize !== WORLD_SIZE || plain.imageSize !== WORLD_SIZE) throw new EngineError('invalid_model', `eval-pag needs ${WORLD_SIZE}px toy-world models`);
    // A swapped pair would print a report with the roles reversed under the usual labels.
    if (robust.bundle.manifest.robust !== true) throw new EngineError('invalid_input', `the robust model ${opts.robustDir} says robust: false in its manifest; swapped --robust and --plain?`);
    if (plain.bundle.manifest.robust !== false) throw new EngineError('invalid_input', `the plain model ${opts.plainDir} says robust: true in its manifest; swapped --robust and --plain?`);
    for (const [role, e] of [['robust', robust], ['plain', plain]] as const) {
      const training = e.bundle.manifest.training as { stopped_early?: unknown; steps?: unknown; planned_steps?: unknown } | undefined;
      if (training?.stopped_early === true) log(`warning: the ${role} model ${e.name} stopped early (${String(training.steps)} of ${String(training.planned_steps)} steps): it is graded as it is`);
    }
    // The world's tokenizer, id for id: a bundle that reads "red" as blue's id draws blue for "red", and
    // the judge would grade its gradient for what its tokenizer did.
    for (const [role, e, dir] of [['robust', robust, opts.robustDir], ['plain', plain, opts.plainDir]] as const) {
      let tok: unknown;
      try {
        tok = JSON.parse(readFileSync(e.bundle.tokenizerPath, 'utf8'));
      } catch (err) {
        throw new EngineError('invalid_model', `the ${role} model ${dir}: cannot read its tokenizer ${e.bundle.tokenizerPath} (${(err as Error).message})`);
      }
      const diff = worldTokenizerDifference(tok);
      if (diff) throw new EngineError('invalid_model', `the ${role} model ${dir} does not read the toy world's words as the world's tokenizer does (${e.bundle.tokenizerPath}: ${diff}); eval-pag grades models trained on the world with its tokenizer`);
      // Any prompt it would not read whole (an unknown word, past its context): its images would not be of the prompt.
      const warnings = e.promptWarnings(prompts);
      if (warnings.length > 0) throw new EngineError('invalid_input', `the ${role} model ${dir} cannot read every prompt: ${warnings.join('; ')}`);
    }
    // Both models start from the GMM prior (docs/toy-model.md): noise init would grade another recipe.
    const priorPath = opts.priorPath ?? robust.bundle.priorPath;
    if (!priorPath) {
      throw new EngineError('invalid_model', `the robust model ${opts.robustDir} ships no GMM prior (manifest "prior"); eval-pag starts both models from it (docs/toy-model.md): use a bundle trained with its prior (clipag train-toy --prior)`);
    }
    const init = { kind: 'gmm' as const, priorPath };
    const initRecord: PagInit = {
      kind: 'gmm',
      prior: opts.priorPath ?? `${robust.name}/${basename(priorPath)}`,
      sha256: await sha256File(priorPath),
    };
    log(`both models start from the GMM prior ${initRecord.prior} (sha256 ${initRecord.sha256.slice(0, 12)}…)`);
    const images = { robust: [] as PlanarImage[], plain: [] as PlanarImage[] };
    const run = async (engine: ClipEngine, other: ClipEngine, which: 'robust' | 'plain'): Promise<ModelReport> => {
      const t0 = performance.now();
      const results: PromptResult[] = [];
      for (const prompt of prompts) {
        const objs = parseCaption(prompt);
        if (objs.length !== 1) throw new EngineError('invalid_input', `eval-pag prompts name one object; "${prompt}" names ${objs.length}`);
        const named = objs[0];
        for (const seed of seeds) {
          const t1 = performance.now();
          const res = await synthesize(engine, { prompts: [{ text: prompt, weight: 1 }], width: WORLD_SIZE, height: WORLD_SIZE, seed, init, recipe: opts.recipe }, { keepInitial: true });
          for (const w of res.warnings) log(`warning: ${which} "${prompt}": ${w}`);
          images[which].push(res.image);
          const [verdict] = await judge.classify(res.image.data, 1);
          const [initVerdict] = await judge.classify(res.initialImage!.data, 1);
          const correct: Partial<Record<Attribute, boolean>> = {};
          for (const a of namedAttributes(named)) correct[a] = verdict[a].label === named[a];
          const allCorrect = Object.values(correct).every(Boolean);
          const initAllCorrect = namedAttributes(named).every((a) => initVerdict[a].label === named[a]);
          const t = (await other.embedText([prompt])).unit;
          const im = (await other.embedImages([res.image])).unit;
          let otherScore = 0;
          for (let k = 0; k < t.length; k++) otherScore += t[k] * im[k];
          const r: PromptResult = {
            prompt, seed, heldOut: isHeldOut(named.shape, named.colour), named, verdict, correct, allCorrect, initVerdict, initAllCorrect,
            ownScore: { initial: res.initialScores[0].cosine, final: res.scores[0].cosine }, otherScore, highFreq: highFrequencyEnergy(res.image), seconds: (performance.now() - t1) / 1000,
          };
          results.push(r);
          log(`${which} seed ${seed} "${prompt}": judge ${ATTRIBUTES.map((a) => verdict[a].label).join('/')} ${allCorrect ? 'OK' : 'WRONG'}; own cos ${r.ownScore.initial.toFixed(3)}→${r.ownScore.final.toFixed(3)}, other ${otherScore.toFixed(3)} (${r.seconds.toFixed(1)}s)`);
        }
      }
      const perAttribute: ModelReport['perAttribute'] = {};
      for (const a of ATTRIBUTES) {
        const rel = results.filter((r) => r.correct[a] !== undefined);
        if (rel.length) {
          const c = rel.filter((r) => r.correct[a]).length;
          perAttribute[a] = { correct: c, named: rel.length, accuracy: c / rel.length };
        }
      }
      const frac = (rs: PromptResult[]) => (rs.length ? rs.filter((r) => r.allCorrect).length / rs.length : NaN);
      const mean = (f: (r: PromptResult) => number) => results.reduce((s, r) => s + f(r), 0) / results.length;
      return {
        model: engine.name,
        robust: engine.bundle.manifest.robust,
        perAttribute,
        allCorrect: frac(results),
        allCorrectHeldOut: frac(results.filter((r) => r.heldOut)),
        allCorrectSeen: frac(results.filter((r) => !r.heldOut)),
        initAllCorrect: results.filter((r) => r.initAllCorrect).length / results.length,
        meanOwnScore: { initial: mean((r) => r.ownScore.initial), final: mean((r) => r.ownScore.final) },
        meanHighFreq: mean((r) => r.highFreq),
        meanOtherScore: mean((r) => r.otherScore),
        scoreRoseJudgeDisagreed: results.filter((r) => r.ownScore.final > r.ownScore.initial && !r.allCorrect).length / results.length,
        results,
        seconds: (performance.now() - t0) / 1000,
      };
    };
    // The two models run side by side: each engine has its own worker thread (one core each).
    const [rRep, pRep] = await Promise.all([run(robust, plain, 'robust'), run(plain, robust, 'plain')]);
    let robustness: PagReport['robustness'];
    if (opts.robustness !== false) {
      const { threads: _, ...attack } = opts.robustness ?? DEFAULT_ROBUSTNESS;
      const o = { ...attack, threads: opts.threads };
      const [r, p] = await Promise.all([zeroShotUnderAttack(robust, o), zeroShotUnderAttack(plain, o)]);
      const j = await judgeUnderAttack(judge, o);
      robustness = { attack, robust: r, plain: p, judge: j };
      log(`under L2 PGD: ${r.map((x, i) => `ε ${x.eps}: robust ${(x.accuracy * 100).toFixed(1)}% plain ${(p[i].accuracy * 100).toFixed(1)}% judge ${(j[i].accuracy * 100).toFixed(1)}%`).join('; ')}`);
    }
    let morph: PagReport['morph'];
    if (opts.morph !== false) {
      const options = opts.morph ?? DEFAULT_MORPH;
      const [r, p] = await Promise.all([gradientMorph(robust, judge, options), gradientMorph(plain, judge, options)]);
      morph = { options, robust: r, plain: p };
      log(`gradient-only morph, judge sees the target: ${r.map((x, i) => `ε ${x.eps}: robust ${(x.judgeSeesTarget * 100).toFixed(0)}% plain ${(p[i].judgeSeesTarget * 100).toFixed(0)}%`).join('; ')}`);
    }
    const targets = { robustAllCorrectMin: 0.8, plainAllCorrectMax: 0.3, robustMet: rRep.allCorrect >= 0.8, plainMet: pRep.allCorrect <= 0.3 };
    const report: PagReport = {
      prompts, seeds, recipe: opts.recipe ?? {},
      init: initRecord,
      judge: { accuracy: acc, checkedOn: nCheck },
      robust: rRep, plain: pRep,
      adversarialSignature: pRep.meanOwnScore.final > pRep.meanOwnScore.initial && pRep.scoreRoseJudgeDisagreed >= 0.5,
      targets,
      robustness,
      morph,
    };
    return { report, images };
  } finally {
    await Promise.all([robust.close(), plain.close(), judge.release()]);
  }
}

/** Mean squared difference between an image and its 3×3 box blur (edges clamped), over all channels. */
export function highFrequencyEnergy(img: PlanarImage): number {
  const { width: W, height: H, data } = img;
  let s = 0;
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        let m = 0;
        for (let dy = -1; dy <= 1; dy++)
          for (let dx = -1; dx <= 1; dx++) {
            const yy = Math.min(H - 1, Math.max(0, y + dy)), xx = Math.min(W - 1, Math.max(0, x + dx));
            m += data[c * W * H + yy * W + xx];
          }
        s += (data[c * W * H + y * W + x] - m / 9) ** 2;
      }
  return s / (3 * W * H);
}

/**
 * A PNG grid: one row per prompt; the robust model's images (one per seed) on the left, a wider gap,
 * then the plain twin's. Images are in (prompt, seed) order; each is scaled up `scale`×.
 */
export function pagGrid(images: { robust: PlanarImage[]; plain: PlanarImage[] }, seedsPerPrompt = 1, scale = 2, gap = 4): Uint8Array {
  const rows = Math.ceil(images.robust.length / seedsPerPrompt);
  const S = WORLD_SIZE * scale, k = seedsPerPrompt;
  const W = 2 * k * S + (2 * k + 2) * gap + 2 * gap, H = rows * S + (rows + 1) * gap;
  const data = new Float32Array(3 * W * H).fill(1);
  const put = (img: PlanarImage, x0: number, y0: number) => {
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < S; y++)
        for (let x = 0; x < S; x++) {
          const sx = Math.floor(x / scale), sy = Math.floor(y / scale);
          data[c * W * H + (y0 + y) * W + x0 + x] = img.data[c * img.width * img.height + sy * img.width + sx];
        }
  };
  images.robust.forEach((img, i) => {
    const r = Math.floor(i / k), j = i % k;
    put(img, gap + j * (S + gap), gap + r * (S + gap));
    put(images.plain[i], gap + k * (S + gap) + 2 * gap + j * (S + gap), gap + r * (S + gap));
  });
  return encodePng({ width: W, height: H, data });
}

/** highFrequencyEnergy of real world images (mean over 256 fresh scenes), for scale in the table. */
const WORLD_HF = (() => {
  const w = sampleBatch(Rng.fromSeed(99), 256);
  const per = 3 * WORLD_SIZE * WORLD_SIZE;
  let s = 0;
  for (let i = 0; i < 256; i++) s += highFrequencyEnergy({ width: WORLD_SIZE, height: WORLD_SIZE, data: w.pixels.subarray(i * per, (i + 1) * per) });
  return s / 256;
})();

/**
 * Wilson score interval (95 %) for k successes in n trials: the all-correct figures are rates on a few
 * dozen images, and a target is judged met or missed on them.
 */
export function wilsonInterval(k: number, n: number, z = 1.96): [number, number] {
  if (n <= 0) return [NaN, NaN];
  const p = k / n, z2 = z * z, denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

const pct1 = (x: number) => `${(x * 100).toFixed(1)} %`;
const pct = (x: number) => (Number.isNaN(x) ? '–' : `${(x * 100).toFixed(0)} %`);

/** The report as a Markdown table (docs/toy-model.md quotes it). */
export function pagMarkdown(r: PagReport): string {
  const lines: string[] = [];
  if (r.init) lines.push(`Both models start from the GMM prior ${r.init.prior} (sha256 ${r.init.sha256}).`, '');
  lines.push(`| | robust (${r.robust.model}) | plain (${r.plain.model}) |`, '|---|---|---|');
  for (const a of ATTRIBUTES) {
    const x = r.robust.perAttribute[a], y = r.plain.perAttribute[a];
    if (x && y) lines.push(`| ${a} correct (named in ${x.named}) | ${pct(x.accuracy)} | ${pct(y.accuracy)} |`);
  }
  lines.push(`| **all named attributes correct** | **${pct(r.robust.allCorrect)}** | **${pct(r.plain.allCorrect)}** |`);
  const interval = (m: ModelReport) => {
    const n = m.results.length, k = m.results.filter((x) => x.allCorrect).length;
    const [lo, hi] = wilsonInterval(k, n);
    return `${k} of ${n}; ${(lo * 100).toFixed(0)}–${(hi * 100).toFixed(0)} %`;
  };
  lines.push(`| all correct: count; 95 % interval (Wilson) | ${interval(r.robust)} | ${interval(r.plain)} |`);
  lines.push(`| all correct at the start (the prior sample the model's score picked; no gradient step yet) | ${pct(r.robust.initAllCorrect)} | ${pct(r.plain.initAllCorrect)} |`);
  lines.push(`| all correct, seen pairs | ${pct(r.robust.allCorrectSeen)} | ${pct(r.plain.allCorrectSeen)} |`);
  lines.push(`| all correct, held-out pairs | ${pct(r.robust.allCorrectHeldOut)} | ${pct(r.plain.allCorrectHeldOut)} |`);
  lines.push(`| own CLIP cosine, init → final (mean) | ${r.robust.meanOwnScore.initial.toFixed(3)} → ${r.robust.meanOwnScore.final.toFixed(3)} | ${r.plain.meanOwnScore.initial.toFixed(3)} → ${r.plain.meanOwnScore.final.toFixed(3)} |`);
  lines.push(`| cosine under the other CLIP (mean; transfer) | ${r.robust.meanOtherScore.toFixed(3)} | ${r.plain.meanOtherScore.toFixed(3)} |`);
  lines.push(`| high-frequency energy ×10³ (mean; world images ≈ ${(WORLD_HF * 1e3).toFixed(2)}) | ${(r.robust.meanHighFreq * 1e3).toFixed(2)} | ${(r.plain.meanHighFreq * 1e3).toFixed(2)} |`);
  lines.push(`| own score rose, judge disagreed | ${pct(r.robust.scoreRoseJudgeDisagreed)} | ${pct(r.plain.scoreRoseJudgeDisagreed)} |`);
  if (r.robustness) {
    const { attack, robust, plain, judge } = r.robustness;
    lines.push(
      '',
      `Accuracy on ${attack.batches * 32} fresh world images after L2 PGD of ${attack.steps} steps (${attack.stepSize}·ε each); ε in [0,1] pixel units over the 3×64×64 values (ε 1 is RMS 0.009 per value, about 2.3/255). CLIPs: zero-shot shape+colour among 48 prompts, white-box on the zero-shot cross-entropy. Judge: all four heads, white-box on its cross-entropy.`,
      '',
      `| ε | ${robust.map((x) => x.eps).join(' | ')} |`,
      `|---|${robust.map(() => '---').join('|')}|`,
      `| robust CLIP | ${robust.map((x) => pct1(x.accuracy)).join(' | ')} |`,
      `| plain CLIP | ${plain.map((x) => pct1(x.accuracy)).join(' | ')} |`,
      `| judge | ${judge.map((x) => pct1(x.accuracy)).join(' | ')} |`,
    );
  }
  if (r.morph) {
    const { options, robust, plain } = r.morph;
    lines.push(
      '',
      `The gradient alone (no views, no augmentation): ${options.batches * 32} world images, each pushed by ${options.steps} L2 PGD steps toward the prompt "a COLOUR SHAPE" of the same colour and another shape (zero-shot cross-entropy). Share where the judge sees the new shape (colour kept) / where the model itself ranks it first:`,
      '',
      `| ε | ${robust.map((x) => x.eps).join(' | ')} |`,
      `|---|${robust.map(() => '---').join('|')}|`,
      `| robust CLIP | ${robust.map((x) => `${pct(x.judgeSeesTarget)} / ${pct(x.modelSeesTarget)}`).join(' | ')} |`,
      `| plain CLIP | ${plain.map((x) => `${pct(x.judgeSeesTarget)} / ${pct(x.modelSeesTarget)}`).join(' | ')} |`,
    );
  }
  lines.push('', '| prompt | seed | held out | robust: judge says | plain: judge says |', '|---|---|---|---|---|');
  r.robust.results.forEach((x, i) => {
    const y = r.plain.results[i];
    const say = (p: PromptResult) => `${ATTRIBUTES.filter((a) => p.correct[a] !== undefined).map((a) => p.verdict[a].label).join(' ')} ${p.allCorrect ? '✓' : '✗'}`;
    lines.push(`| ${x.prompt} | ${x.seed} | ${x.heldOut ? 'yes' : ''} | ${say(x)} | ${say(y)} |`);
  });
  return lines.join('\n') + '\n';
}

/** What `writePagOutputs(prefix, …)` writes: the report, its markdown and the image grid. */
export const PAG_OUTPUT_SUFFIXES = ['.json', '.md', '.png'] as const;

/**
 * Writes the three files: all rendered before any is written, each written to a temporary name and
 * renamed over its file at the end. A report that fails to render, or a write that fails, leaves
 * the previous files whole; only a rename failing between the first and the last (a disk error)
 * could leave a mix.
 */
export function writePagOutputs(
  prefix: string,
  report: PagReport,
  images: { robust: PlanarImage[]; plain: PlanarImage[] },
  /** Where each goes, as the CLI checked them (a link followed to its file); default PREFIX.json, .md, .png. */
  files: readonly string[] = PAG_OUTPUT_SUFFIXES.map((suffix) => `${prefix}${suffix}`),
): string[] {
  const contents: Array<string | Uint8Array> = [JSON.stringify(report, null, 2) + '\n', pagMarkdown(report), pagGrid(images, report.seeds.length)];
  const staged = files.map((f) => `${f}.${process.pid}.tmp`);
  try {
    staged.forEach((tmp, i) => writeFileSync(tmp, contents[i]!));
    staged.forEach((tmp, i) => renameSync(tmp, files[i]!));
  } finally {
    for (const tmp of staged) rmSync(tmp, { force: true });
  }
  return [...files];
}
