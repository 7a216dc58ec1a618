// clipag train-judge: train the independent judge (a small CNN with one head per attribute) on fresh
// world images, check it on more fresh images, and write models/toy-judge.
import { join } from 'node:path';
import { ATTRIBUTES, JUDGE_MIN_ACCURACY, Judge, defaultJudgeConfig, judgePasses, trainJudge, writeJudgeBundle } from '../gpu-worker/engine/toy/judge.ts';
import { REPO_ROOT, bundleOut, checkpointFile, intArg, replaceFolder, parseCliArgs, shellWord } from './common.ts';

export const summary = 'train the independent attribute judge (small CNN) used by eval-pag';
export const usage = `usage: clipag train-judge [options]

  --out DIR            judge folder (default models/toy-judge); written whole or not at all, and only when the
                       judge passes its accuracy check
  --force              replace a judge already in --out (the shipped models/toy-judge included), and let
                       --no-resume replace a checkpoint of another kind (a CLIP's)
  --checkpoint FILE    checkpoint (default .tmp/checkpoints/judge.ckpt); resumed from when it exists; a link
                       is followed (saves replace its target); one run at a time per checkpoint
  --no-resume          start from step 0
  --steps N            training steps (default 1500); a checkpoint resumes only with the steps it was
                       made with (to train longer: --no-resume --steps N)
  --batch N            batch size (default 64)
  --seed S             seed (default 7)
  --check N            fresh images for the accuracy check (default 2000)
  --threads N          onnxruntime intra-op threads (default 1)`;

/** argv without the named options (and their values). */
function withoutFlags(argv: readonly string[], tokens: ReturnType<typeof parseCliArgs>['tokens'], names: readonly string[]): string[] {
  const drop = new Set<number>();
  for (const t of tokens ?? []) {
    if (t.kind !== 'option' || !names.includes(t.name)) continue;
    drop.add(t.index);
    if (t.value !== undefined && !t.inlineValue) drop.add(t.index + 1);
  }
  return argv.filter((_, i) => !drop.has(i));
}

export async function run(argv: string[]): Promise<number> {
  const { values, tokens } = parseCliArgs({
    args: argv,
    tokens: true,
    options: {
      out: { type: 'string' }, checkpoint: { type: 'string' }, 'no-resume': { type: 'boolean' }, steps: { type: 'string' },
      batch: { type: 'string' }, seed: { type: 'string' }, check: { type: 'string' }, threads: { type: 'string' }, force: { type: 'boolean' },
    },
    strict: true,
  });
  const base = defaultJudgeConfig();
  const cfg = defaultJudgeConfig({
    steps: intArg(values.steps, 'steps', base.steps, 1, 1_000_000),
    batch: intArg(values.batch, 'batch', base.batch, 2, 1024),
    seed: intArg(values.seed, 'seed', base.seed, 0, 0xffffffff),
  });
  const threads = intArg(values.threads, 'threads', 1, 0, 256);
  // Checked before training, so that a run does not end in a refusal.
  const out = bundleOut(values.out ?? join(REPO_ROOT, 'models', 'toy-judge'), values.force ?? false);
  const nCheck = intArg(values.check, 'check', 2000, 32, 1_000_000);
  const ckpt = checkpointFile(values.checkpoint ?? join(REPO_ROOT, '.tmp', 'checkpoints', 'judge.ckpt'));
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const res = await trainJudge(cfg, { threads, checkpoint: ckpt, resume: !values['no-resume'], force: values.force ?? false, progress: true, log });
  const judge = await Judge.fromParams(cfg.arch, res.params, undefined, threads);
  const acc = await judge.accuracy(nCheck, cfg.seed + 1000);
  await judge.release();
  const line = `${ATTRIBUTES.map((a) => `${a} ${(acc[a] * 100).toFixed(2)} %`).join(', ')}, all four ${(acc.all * 100).toFixed(2)} %`;
  const ok = judgePasses(acc);
  if (!ok) {
    // A failed judge must not replace a good one (by default the shipped models/toy-judge).
    // The checkpoint's config holds --steps (the learning-rate schedule spans them), so a resume with
    // more steps is refused: training longer starts over with more steps.
    const more = Math.min(1_000_000, cfg.steps * 2);
    const again = `clipag train-judge ${[...withoutFlags(argv, tokens, ['steps', 'no-resume']), '--no-resume', '--steps', String(more)].map(shellWord).join(' ')}`;
    log(`accuracy on ${nCheck} fresh world images: ${line} — BELOW the ${JUDGE_MIN_ACCURACY * 100} % bar: no judge written to ${out} (the checkpoint ${ckpt} is kept). To train longer, start over with more steps (a checkpoint resumes only with the --steps it was made with): ${again}`);
    return 1;
  }
  await replaceFolder(out, (dir) => writeJudgeBundle(dir, cfg.arch, res.params, acc, {
    command: `clipag train-judge ${argv.join(' ')}`,
    seed: cfg.seed, steps: res.step, batch: cfg.batch, lr: cfg.lr,
    wall_time_s: Math.round(res.elapsedS),
    checked_on_fresh_images: nCheck,
    final_loss: res.lossHistory.at(-1)?.loss,
  }));
  log(`wrote ${out}: accuracy on ${nCheck} fresh world images: ${line}`);
  return 0;
}
