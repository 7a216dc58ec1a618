// Measured run times per model, output size and kind of start (ADR 0014): the worker records each
// succeeded job's time, split into the step loops and the rest; the API turns the recent ones into time
// and cost estimates. One small JSON document per (model, size, start) at
// `stats/<model>/<width>x<height>-<start>.json`, the last RUN_STATS_KEEP runs.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { updateDocument } from './documents.ts';
import { assertValidKey } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { listKeys } from './prefix.ts';
import type { Stage } from './schedule.ts';

export const RUN_STATS_PREFIX = 'stats/';
/** Runs kept per (model, size): enough for a stable median, recent enough to follow a new GPU type. */
export const RUN_STATS_KEEP = 50;

/**
 * One run. Loose, like every level of the document: workers of two versions write the same document
 * during a deploy (and after a rollback), and a field a newer one added must neither make its samples
 * unreadable here nor be dropped by this version's rewrite.
 */
const RunSample = z
  .object({
    /** Worker seconds for the whole job (model load, init, steps, scoring, uploads). */
    seconds: z.number().finite().nonnegative(),
    /** Of those, the optimization step loops. The rest is paid per image (init, scoring) or per job. */
    loopSeconds: z.number().finite().nonnegative(),
    /** Optimization steps over all images of the job (steps × n, after any cap). */
    steps: z.number().int().positive(),
    /** Images in the job. */
    n: z.number().int().positive(),
    at: z.string(),
    /** The job it came from (its runSampleJobTag once stored), so a repeated add (an S3 write whose reply was lost) counts once; absent in samples recorded before. */
    job: z.string().min(1).max(100).optional(),
    /**
     * The step loops by stage size (a coarse-to-fine run has up to 6), over all images, compile
     * excluded: what a step costs at each size. Estimates for sizes never run fit it (estimateJob).
     * Absent in samples recorded before.
     */
    stages: z
      .array(z.object({ width: z.number().int().min(1).max(4096), height: z.number().int().min(1).max(4096), steps: z.number().int().positive(), seconds: z.number().finite().nonnegative() }).loose())
      .max(6)
      .optional(),
  })
  .loose()
  .refine((s) => s.loopSeconds <= s.seconds, { message: 'loopSeconds must not exceed seconds' })
  .refine((s) => s.stages === undefined || s.stages.reduce((t, st) => t + st.seconds, 0) <= s.seconds * 1.001, { message: 'the stages cannot take longer than the job' });
export type RunSample = z.output<typeof RunSample>;

/** The document's version this code writes; a higher one is a newer clipag's, which it leaves alone. */
const RUN_STATS_VERSION = 2;

/** The kind of start: a GMM start scores its samples (1000 encoder passes an image on the recipe), a noise or image start does not. */
export type RunStart = 'gmm' | 'noise' | 'image';

/** "a gmm start", "a noise start", "an image start": how the estimate notes name a kind of start. */
const startPhrase = (start: RunStart) => `${start === 'image' ? 'an' : 'a'} ${start} start`;

export function runStartOf(init: string): RunStart {
  return init === 'gmm' || init === 'noise' ? init : 'image';
}

export interface RunKey {
  model: string;
  width: number;
  height: number;
  start: RunStart;
}

export function runStatsKey(k: RunKey): string {
  const key = `${RUN_STATS_PREFIX}${k.model}/${k.width}x${k.height}-${k.start}.json`;
  assertValidKey(key, 'model');
  return key;
}

/**
 * A stored document as this version reads it: `entries` as stored (each kept on a rewrite, readable
 * here or not: a sample a newer worker wrote is not this version's to drop) and `samples`, those that
 * read here, in order; `rest` its other top-level fields, kept too. `newer`: a version above the one
 * this code writes, whose samples may mean something else: neither read nor rewritten. `unreadable`:
 * damaged (not JSON, no list of samples), so no statistics, and the next run starts it afresh.
 */
type StoredStats =
  | { kind: 'current'; entries: unknown[]; samples: RunSample[]; rest: Record<string, unknown> }
  | { kind: 'newer'; v: number }
  | { kind: 'unreadable' };

function parseDoc(body: Uint8Array): StoredStats {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    return { kind: 'unreadable' };
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return { kind: 'unreadable' };
  const { v, samples: entries, ...rest } = doc as Record<string, unknown>;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > RUN_STATS_VERSION) return { kind: 'newer', v };
  if (v !== RUN_STATS_VERSION || !Array.isArray(entries)) return { kind: 'unreadable' };
  const samples = entries.flatMap((entry) => {
    const parsed = RunSample.safeParse(entry);
    return parsed.success ? [parsed.data] : [];
  });
  return { kind: 'current', entries, samples: samples.slice(-RUN_STATS_KEEP), rest };
}

/** The recorded runs of one (model, size, start), oldest first; none when nothing was recorded or the document is unreadable (or a newer clipag's). */
export async function readRunSamples(blobs: BlobStore, k: RunKey): Promise<RunSample[]> {
  const found = await blobs.get(runStatsKey(k));
  if (!found) return [];
  const stored = parseDoc(found.body);
  return stored.kind === 'current' ? stored.samples : [];
}

/**
 * What `recordRunSample` did: `recorded`; `duplicate` (this job's run is there already); `newer_document`
 * (a newer clipag's document, left untouched: its writer records the runs, and this version's write
 * would undo its format; the caller says so, once).
 */
export type RecordOutcome = 'recorded' | 'duplicate' | 'newer_document';

/**
 * What a sample keeps of its job: a tag made from its id, enough to count a repeated add once. The
 * document is every account's (no id or owner in it, as the README says): a plain id would tie a
 * generation, deleted or not, to its size and time there.
 */
export function runSampleJobTag(jobId: string): string {
  return `h${createHash('sha256').update(`clipag-run-sample:${jobId}`).digest('hex').slice(0, 32)}`;
}

/** Appends one run (a conditional read-modify-write: updateDocument), once per `sample.job` (stored as its runSampleJobTag). */
export async function recordRunSample(blobs: BlobStore, k: RunKey, sample: RunSample): Promise<RecordOutcome> {
  const parsed = RunSample.parse(sample);
  const checked = parsed.job === undefined ? parsed : { ...parsed, job: runSampleJobTag(parsed.job) };
  let outcome: RecordOutcome = 'recorded';
  await updateDocument(blobs, runStatsKey(k), (current) => {
    const stored = current ? parseDoc(current) : ({ kind: 'unreadable' } as const);
    outcome = 'recorded';
    if (stored.kind === 'newer') {
      outcome = 'newer_document';
      return null;
    }
    const had = stored.kind === 'current' ? stored : { entries: [], samples: [], rest: {} };
    // By its tag, or by its plain id in a sample a version before the tags wrote (a repeat across the upgrade).
    if (checked.job !== undefined && had.samples.some((s) => s.job === checked.job || s.job === parsed.job)) {
      outcome = 'duplicate';
      return null; // recorded already
    }
    const samples = [...had.entries, checked].slice(-RUN_STATS_KEEP);
    return Buffer.from(JSON.stringify({ ...had.rest, v: RUN_STATS_VERSION, samples }));
  });
  return outcome;
}

const STATS_NAME = /^(\d{1,5})x(\d{1,5})-(gmm|noise|image)\.json$/;
/**
 * Sizes read for an estimate at a size never run: the nearest 8, and 8 more at a time (at most 24)
 * while none of those read timed its stages (older samples): a bound on the reads per request.
 */
const ESTIMATE_SIZES_BATCH = 8;
const ESTIMATE_SIZES_MAX = 24;
/**
 * How far past measured sizes an estimate goes, in pixels: a fit is not extended past 4× the largest
 * stage (or, fitted over whole runs, the largest size) ever run, nor a single size's runs scaled to a
 * size 4× larger or smaller. Beyond that, no figure: ADR 0014's rule against invented ones.
 */
export const ESTIMATE_REACH = 4;

interface SizedSamples {
  width: number;
  height: number;
  samples: RunSample[];
}

/** The run statistics of this model and start at other sizes, the nearest by pixel count first (see ESTIMATE_SIZES_BATCH). */
async function readNearbySizes(blobs: BlobStore, k: RunKey): Promise<SizedSamples[]> {
  const prefix = `${RUN_STATS_PREFIX}${k.model}/`;
  const sizes: Array<{ width: number; height: number }> = [];
  let cursor: string | undefined;
  do {
    const page = await listKeys(blobs, prefix, cursor === undefined ? {} : { cursor });
    for (const key of page.keys) {
      const m = STATS_NAME.exec(key.slice(prefix.length));
      if (m && m[3] === k.start && !(Number(m[1]) === k.width && Number(m[2]) === k.height)) sizes.push({ width: Number(m[1]), height: Number(m[2]) });
    }
    cursor = page.cursor;
  } while (cursor !== undefined);
  sizes.sort((a, b) => pixelDistance(a, k) - pixelDistance(b, k) || b.width * b.height - a.width * a.height);
  const read: SizedSamples[] = [];
  for (let i = 0; i < Math.min(sizes.length, ESTIMATE_SIZES_MAX); i += ESTIMATE_SIZES_BATCH) {
    const batch = await Promise.all(sizes.slice(i, i + ESTIMATE_SIZES_BATCH).map(async (size) => ({ ...size, samples: await readRunSamples(blobs, { ...k, ...size }) })));
    read.push(...batch.filter((r) => r.samples.length > 0));
    if (read.some((r) => r.samples.some((s) => s.stages !== undefined))) break;
  }
  return read;
}

/** How far apart two pixel counts are, as a ratio either way (log scale). */
const pixelRatioDistance = (a: number, b: number) => Math.abs(Math.log(a / b));
const pixelDistance = (a: { width: number; height: number }, b: { width: number; height: number }) => pixelRatioDistance(a.width * a.height, b.width * b.height);

function quantile(sorted: readonly number[], q: number): number {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (i - lo);
}

export interface RunEstimate {
  /** Worker seconds for the job, median and 90th percentile (see estimateSeconds); p90 null below P90_MIN_RUNS runs. */
  median: number;
  p90: number | null;
  /** How many recorded runs it rests on. */
  runs: number;
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** Runs a 90th percentile needs before it says anything: with one run it is the median, with a few it hides the spread. */
export const P90_MIN_RUNS = 5;

/**
 * The time a run spent stepping: its timed stages when it has them, which leave out compiling a size's
 * step graph (a one-off per worker, so part of the per-image cost), else its whole step loops.
 */
const stepSeconds = (s: RunSample) => (s.stages ? s.stages.reduce((t, st) => t + st.seconds, 0) : s.loopSeconds);

/** Two step counts whose runs' difference measures a step's cost: at least 2× apart (nearer, it measures noise). */
const STEP_SPAN = 2;
/**
 * How far past the longest stage its runs timed a stage line is trusted: a slope measured over stages
 * of 1-12 steps and stretched to 200 came out as low as 0.34× the truth with runs ±20 % apart in speed
 * (review probe). Past it a stage costs its steps at the runs' per-step cost as they ran (first steps
 * included): high, as a budget check would rather have it.
 */
const STAGE_LINE_REACH = 4;

/**
 * What a stage of k steps costs an image at one stage size, from the runs that timed that size: a
 * fixed part (a stage's first step runs a freshly leased graph and sets up its buffers, so a 2-step
 * run's steps cost far more each than a 500-step run's at the same size) plus a cost per step, and
 * how far each run came above that line. The cost per step is the median of the slopes between runs
 * at least STEP_SPAN× apart in steps (one slow run moves it little), the fixed part the median of what
 * the runs spent beside their steps. Where the runs cannot show both (one step count, or no growth
 * measured), a stage costs its steps at the runs' median per step, as they ran.
 */
function stageLine(runs: ReadonlyArray<{ steps: number; seconds: number }>): { cost: (k: number, q: number) => number } {
  const median = (xs: number[]) => quantile(xs.sort((a, b) => a - b), 0.5);
  const asRan = runs.map((r) => r.seconds / r.steps).filter(Number.isFinite).sort((a, b) => a - b);
  const longest = Math.max(...runs.map((r) => r.steps));
  const slopes: number[] = [];
  for (let i = 0; i < runs.length; i++) {
    for (let j = i + 1; j < runs.length; j++) {
      const [a, b] = runs[i]!.steps < runs[j]!.steps ? [runs[i]!, runs[j]!] : [runs[j]!, runs[i]!];
      if (b.steps >= STEP_SPAN * a.steps) slopes.push((b.seconds - a.seconds) / (b.steps - a.steps));
    }
  }
  slopes.sort((a, b) => a - b);
  /** The line at the q-quantile of the slopes (its fixed part fitted to it), and how far each run came above it. */
  const lineAt = (q: number) => {
    let perStep = slopes.length > 0 ? quantile(slopes, q) : 0;
    let fixed = perStep > 0 ? median(runs.map((r) => r.seconds - perStep * r.steps)) : 0;
    if (!(perStep > 0 && fixed >= 0)) {
      perStep = median(runs.map((r) => r.seconds / r.steps));
      fixed = 0;
    }
    const line = (k: number) => fixed + perStep * k;
    const ratios = runs.map((r) => r.seconds / line(r.steps)).filter(Number.isFinite).sort((a, b) => a - b);
    return (k: number) => line(k) * (ratios.length > 0 ? quantile(ratios, q) : 1);
  };
  return {
    // The median from the median slope; a higher quantile from that quantile of the slopes as well as of
    // the runs' spread: the slope's own uncertainty grows with how far it is stretched.
    cost: (k, q) => (k <= STAGE_LINE_REACH * longest || asRan.length === 0 ? lineAt(q)(k) : quantile(asRan, q) * k),
  };
}

/**
 * What each stage of `schedule` (steps per image) costs an image, at quantile q, from the timed stages
 * of runs at the job's own size: each size's stageLine at the job's steps there, times the q-quantile
 * of how far the runs came above it. Runs of the job's own steps alone give the quantile over them,
 * as a per-step average always did. A size no run timed (short runs skip stages) is interpolated by its
 * pixels between the sizes timed on either side, or held at the nearest one past them (every run
 * times its output size, the largest).
 */
function stageCosts(timed: readonly RunSample[], schedule: readonly Stage[], q: number): number[] {
  const bySize = new Map<string, { px: number; runs: Array<{ steps: number; seconds: number }> }>();
  for (const s of timed) {
    for (const st of s.stages!) {
      const key = `${st.width}x${st.height}`;
      const run = { steps: st.steps / s.n, seconds: st.seconds / s.n };
      const size = bySize.get(key);
      if (size) size.runs.push(run);
      else bySize.set(key, { px: st.width * st.height, runs: [run] });
    }
  }
  const lines = [...bySize].map(([key, size]) => ({ key, px: size.px, ...stageLine(size.runs) })).sort((a, b) => a.px - b.px);
  const costAt = (line: (typeof lines)[number], k: number) => line.cost(k, q);
  return schedule.map((st) => {
    if (!(st.steps > 0)) return 0;
    const own = lines.find((l) => l.key === `${st.width}x${st.height}`);
    if (own) return costAt(own, st.steps);
    const px = st.width * st.height;
    const above = lines.findIndex((l) => l.px >= px);
    if (above === -1) return costAt(lines[lines.length - 1]!, st.steps);
    if (above === 0) return costAt(lines[0]!, st.steps);
    const lo = lines[above - 1]!;
    const hi = lines[above]!;
    return costAt(lo, st.steps) + ((costAt(hi, st.steps) - costAt(lo, st.steps)) * (px - lo.px)) / (hi.px - lo.px);
  });
}

/**
 * A job's worker seconds from recorded runs of the same model, size and start: the per-image part
 * (init, scoring, uploads, and a cold worker's model load) times n, plus the step loops. Each part's
 * median (90th percentile) over the runs. `null` with no recorded run: no figure is better than an
 * invented one.
 *
 * With `schedule` (the job's stages, steps per image) and runs that timed their stages, the step loops
 * are priced stage by stage: what each of the job's stages costs an image (stageCosts), times n. A
 * run's cost per step depends on its steps: a run of a few steps skips the small stages and runs every
 * step at the full size, and each stage's first step costs extra, so an average over whole runs priced
 * a 500-step job at 1024² from shorter runs 3× high. Runs that timed no stages (recorded before) are
 * then left out; without any timed run, or without `schedule`, a step costs the runs' step loops over
 * their steps, whatever its stage.
 */
export function estimateSeconds(samples: readonly RunSample[], job: { steps: number; n: number; schedule?: readonly Stage[] }): RunEstimate | null {
  if (samples.length === 0) return null;
  const sorted = (xs: number[]) => xs.sort((a, b) => a - b);
  const { schedule } = job;
  const timed = schedule ? samples.filter((s) => s.stages !== undefined && s.stages.length > 0) : [];
  const basis = timed.length > 0 ? timed : samples;
  const perImage = sorted(basis.map((s) => (s.seconds - stepSeconds(s)) / s.n));
  const perStep = sorted(basis.map((s) => stepSeconds(s) / s.steps));
  const stepsAt = (q: number) =>
    schedule && timed.length > 0
      ? stageCosts(timed, schedule, q).reduce((t, cost) => t + cost, 0) * job.n
      : quantile(perStep, q) * job.steps * job.n;
  const at = (q: number) => quantile(perImage, q) * job.n + stepsAt(q);
  return { median: round3(at(0.5)), p90: basis.length >= P90_MIN_RUNS ? round3(at(0.9)) : null, runs: basis.length };
}

/** y ≈ a + b·x by least squares with a, b ≥ 0 (a cost never falls as the size grows, nor goes below zero). */
export function fitNonNegativeLine(points: ReadonlyArray<{ x: number; y: number }>): { a: number; b: number } {
  const n = points.length;
  const mx = points.reduce((t, p) => t + p.x, 0) / n;
  const my = points.reduce((t, p) => t + p.y, 0) / n;
  const sxx = points.reduce((t, p) => t + (p.x - mx) ** 2, 0);
  const sxy = points.reduce((t, p) => t + (p.x - mx) * (p.y - my), 0);
  const b = sxx > 0 ? sxy / sxx : 0;
  const a = my - b * mx;
  if (b >= 0 && a >= 0) return { a, b };
  if (b < 0) return { a: Math.max(0, my), b: 0 }; // no growth measured: a flat cost
  const sx2 = points.reduce((t, p) => t + p.x * p.x, 0); // a < 0: through the origin
  return { a: 0, b: sx2 > 0 ? Math.max(0, points.reduce((t, p) => t + p.x * p.y, 0) / sx2) : 0 };
}

/** The median of y per distinct x. */
function groupMedians(points: ReadonlyArray<{ x: number; y: number }>): Array<{ x: number; median: number }> {
  const by = new Map<number, number[]>();
  for (const p of points) {
    const ys = by.get(p.x);
    if (ys) ys.push(p.y);
    else by.set(p.x, [p.y]);
  }
  return [...by.entries()].map(([x, ys]) => ({ x, median: quantile(ys.sort((a, b) => a - b), 0.5) }));
}

/** A fit needs two sizes at least 1.5× apart in pixels; nearer ones measure noise, not growth. */
const spansSizes = (xs: readonly number[]) => xs.length >= 2 && Math.max(...xs) >= 1.5 * Math.min(...xs);

interface TimedRun {
  /** Output pixels of the run. */
  px: number;
  sample: RunSample;
}

const stagePointsOf = (runs: readonly TimedRun[]) => runs.flatMap((r) => r.sample.stages!.map((st) => ({ x: st.width * st.height, y: st.seconds / st.steps })));

/**
 * The median cost model of timed runs: a step's cost by its stage's pixels (a + b·px), an image's
 * fixed cost by its output pixels (fitted where two sizes were run, else the nearest size's median).
 * undefined when the runs do not time two sizes far enough apart.
 */
function costModel(runs: readonly TimedRun[]): { predict: (schedule: readonly Stage[], px: number, n: number) => number } | undefined {
  const stageGroups = groupMedians(stagePointsOf(runs));
  if (!spansSizes(stageGroups.map((g) => g.x))) return undefined;
  const stepLine = fitNonNegativeLine(stageGroups.map((g) => ({ x: g.x, y: g.median })));
  const imageGroups = groupMedians(runs.map((r) => ({ x: r.px, y: (r.sample.seconds - stepSeconds(r.sample)) / r.sample.n })));
  const imageLine = spansSizes(imageGroups.map((g) => g.x)) ? fitNonNegativeLine(imageGroups.map((g) => ({ x: g.x, y: g.median }))) : undefined;
  // Below the smallest size measured, each line is held at its value there: most of an image's cost is
  // fixed (the prior's samples run at the model's input size, the model's load), and a line fitted to
  // larger sizes and forced through the origin would price a small image at nearly nothing.
  const smallestImage = Math.min(...imageGroups.map((g) => g.x));
  const smallestStage = Math.min(...stageGroups.map((g) => g.x));
  const perImage = (px: number) =>
    imageLine ? imageLine.a + imageLine.b * Math.max(px, smallestImage) : [...imageGroups].sort((a, b) => pixelRatioDistance(a.x, px) - pixelRatioDistance(b.x, px))[0]!.median;
  const perStep = (px: number) => stepLine.a + stepLine.b * Math.max(px, smallestStage);
  return {
    /** Seconds for n images, each running `schedule` (steps per image) at `px` output pixels. */
    predict: (schedule, px, n) => (perImage(px) + schedule.reduce((t, st) => t + st.steps * perStep(st.width * st.height), 0)) * n,
  };
}

export interface JobEstimate {
  seconds: RunEstimate | null;
  /**
   * null: runs of this very size. Otherwise how the figures were reached from other sizes; `factor`
   * only with method "scaled": what the basis size's figures were multiplied by.
   */
  basis: { method: 'fit' | 'scaled' | 'nearest'; width: number; height: number; sizes: Array<{ width: number; height: number }>; factor?: number } | null;
  /** Why there are no figures, when there are none. */
  note: string | null;
}

/**
 * A fitted cost model's figures for a job: the median its prediction, the 90th percentile that times
 * how far the timed runs came above what a model fitted without each predicts for it (a per-size 90th
 * percentile would rest on one run at most sizes, and a run's own group would absorb it). The latest
 * runs only: a bound on the work per request.
 */
function fittedSeconds(runs: readonly TimedRun[], schedule: readonly Stage[], px: number, n: number): RunEstimate {
  const median = costModel(runs)!.predict(schedule, px, n);
  const recent = [...runs].sort((x, y) => (x.sample.at < y.sample.at ? -1 : x.sample.at > y.sample.at ? 1 : 0)).slice(-RUN_STATS_KEEP);
  const ratios = recent
    .map((run) => {
      const without = costModel(runs.filter((t) => t !== run));
      return without ? run.sample.seconds / without.predict(run.sample.stages!.map((st) => ({ ...st, steps: st.steps / run.sample.n })), run.px, run.sample.n) : Number.NaN;
    })
    .filter((x) => Number.isFinite(x))
    .sort((x, y) => x - y);
  return { median: round3(median), p90: ratios.length >= P90_MIN_RUNS ? round3(median * Math.max(1, quantile(ratios, 0.9))) : null, runs: runs.length };
}

/**
 * A job's worker seconds (median, 90th percentile) before it runs, from this deployment's runs of the
 * same model and start (ADR 0014):
 * - runs of this very size: their per-image part and, stage by stage where they timed their stages,
 *   their per-step part (estimateSeconds; basis null);
 * - else, where runs at other sizes timed their stages at two sizes or more: a step's cost fitted as
 *   a + b × its stage's pixels, summed over the stages this job will run (`schedule`, per image), and
 *   the per-image part fitted as c + d × output pixels (basis.method "fit");
 * - else, where runs were recorded at two output sizes or more (older runs that timed no stages, or
 *   runs whose stages were all of one size): the same fit with each whole run as one stage at its
 *   output size, and this job as one stage at its own (basis.method "fit");
 * - else the runs of the nearest size, when it is within ESTIMATE_REACH in pixels: for a larger size
 *   their figures times the ratio of the pixels (basis.method "scaled", basis.factor), for a smaller
 *   one as they are (basis.method "nearest"; a fit holds its parts at the smallest size measured too);
 * - else no figures, and a note that says why.
 */
export async function estimateJob(blobs: BlobStore, k: RunKey, job: { n: number; schedule: readonly Stage[] }): Promise<JobEstimate> {
  const steps = job.schedule.reduce((t, st) => t + st.steps, 0);
  const own = await readRunSamples(blobs, k);
  if (own.length > 0) return { seconds: estimateSeconds(own, { steps, n: job.n, schedule: job.schedule }), basis: null, note: null };
  const nearby = await readNearbySizes(blobs, k);
  const size = { width: k.width, height: k.height };
  const px = k.width * k.height;
  if (nearby.length === 0) return { seconds: null, basis: null, note: `no run of model ${k.model} with ${startPhrase(k.start)} was recorded on this deployment yet` };
  const sizesOf = (rs: readonly SizedSamples[]) => rs.map((r) => ({ width: r.width, height: r.height }));

  const timedRuns = nearby.flatMap((r) => r.samples.filter((s) => s.stages !== undefined).map((sample) => ({ px: r.width * r.height, sample })));
  const stageGroups = groupMedians(stagePointsOf(timedRuns));
  const largestStage = Math.max(...job.schedule.map((st) => st.width * st.height));
  const canFit = spansSizes(stageGroups.map((g) => g.x));
  const largestTimed = Math.max(0, ...stageGroups.map((g) => g.x));
  if (canFit && largestStage <= ESTIMATE_REACH * largestTimed) {
    const timed = nearby.filter((r) => r.samples.some((s) => s.stages !== undefined));
    return { seconds: fittedSeconds(timedRuns, job.schedule, px, job.n), basis: { method: 'fit', width: timed[0]!.width, height: timed[0]!.height, sizes: sizesOf(timed) }, note: null };
  }
  // Without stages timed at two sizes, runs at two output sizes still show how the cost grows: each
  // whole run is one point, its step loops (compile excluded where timed) per step at its output size.
  const outputSizes = nearby.map((r) => r.width * r.height);
  const largestRun = Math.max(...outputSizes);
  const canFitRuns = spansSizes(outputSizes);
  if (canFitRuns && px <= ESTIMATE_REACH * largestRun) {
    const wholeRuns = nearby.flatMap((r) =>
      r.samples.map((s) => ({ px: r.width * r.height, sample: { ...s, stages: [{ width: r.width, height: r.height, steps: s.steps, seconds: stepSeconds(s) }] } })),
    );
    return { seconds: fittedSeconds(wholeRuns, [{ ...size, steps }], px, job.n), basis: { method: 'fit', width: nearby[0]!.width, height: nearby[0]!.height, sizes: sizesOf(nearby) }, note: null };
  }
  const nearest = nearby[0]!;
  if (pixelDistance(nearest, size) <= Math.log(ESTIMATE_REACH)) {
    const basis = { width: nearest.width, height: nearest.height, sizes: [{ width: nearest.width, height: nearest.height }] };
    const asRun = estimateSeconds(nearest.samples, { steps, n: job.n })!;
    const factor = px / (nearest.width * nearest.height);
    if (factor <= 1) return { seconds: asRun, basis: { method: 'nearest', ...basis }, note: null };
    // One size's runs show nothing of how the cost grows, so every part of it is taken to grow with the
    // pixels: as a rule high (a step at 1024 px cost 7× one at 128 px, for 64× the pixels, and much of
    // an image's part is fixed), where the figures as they were ran 2–5.6× low (ADR 0014). Steps and n
    // are already counted, per step and per image.
    const scale = (x: number) => round3(x * factor);
    return { seconds: { median: scale(asRun.median), p90: asRun.p90 === null ? null : scale(asRun.p90), runs: asRun.runs }, basis: { method: 'scaled', ...basis, factor: Math.round(factor * 1e4) / 1e4 }, note: null };
  }
  const why = canFit
    ? `the largest stage timed here is ${largestTimed} pixels, and this job's largest is more than ${ESTIMATE_REACH}× that; the nearest size run, ${nearest.width}×${nearest.height}, is more than ${ESTIMATE_REACH}× away too`
    : canFitRuns
      ? `the nearest is ${nearest.width}×${nearest.height}, more than ${ESTIMATE_REACH}× away in pixels, and a cost fitted over the sizes run is not stretched that far`
      : `the nearest is ${nearest.width}×${nearest.height}, more than ${ESTIMATE_REACH}× away in pixels, and the runs recorded do not time two sizes, which would show how the cost grows`;
  return {
    seconds: null,
    basis: null,
    note: `no run of model ${k.model} with ${startPhrase(k.start)} near ${k.width}×${k.height} was recorded on this deployment yet (${why}): one run at this size, or at a size nearer it, gives figures`,
  };
}

/** Worker seconds at the deployment's hourly price, in US dollars (6 decimals). */
export function costUsd(seconds: number, hourlyUsd: number): number {
  return Math.round(((seconds * hourlyUsd) / 3600) * 1e6) / 1e6;
}
