// clipag generate: prompt in, PNG (or JPEG) out.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { randomInt } from 'node:crypto';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { defaultPromptPolicy, refusalMessage } from '../shared/prompt-policy.ts';
import { NEGATIVE_PROMPT_SHARE } from '../shared/schemas/generation.ts';
import { EngineError, whereFrom } from '../gpu-worker/engine/errors.ts';
import { decodeImage, DEFAULT_MAX_BYTES, encodeOutput } from '../gpu-worker/engine/synth/image.ts';
import { defaultOutputQuality, isLossyOutputFormat } from '../shared/output-format.ts';
import { type InitSpec, type SynthProgress, synthesize } from '../gpu-worker/engine/synth/synthesize.ts';
import { LIMITS, type Recipe, STYLE_CONTENT_WEIGHT, STYLE_RECIPE } from '../gpu-worker/engine/synth/recipe.ts';
import { quotedPrompt } from './remote.ts';
import { INTERRUPTED_EXIT_CODE, UsageError, WITHHELD_EXIT_CODE, intArg, modelDir, numberArg, OUTPUT_FORMAT_USAGE, outputFile, outputFormatArgs, parseCliArgs, policyFile, sizeShape, writeWhole } from './common.ts';

export const summary = 'make an image from a text prompt (no generator: CLIP-guided pixel optimization)';
export const usage = `usage: clipag generate "PROMPT" [options]

  --negative TEXT     push away from TEXT (repeatable)
  --model DIR         the model: a bundle's folder (default: models/toy, the embedded robust mini-CLIP)
  --steps N           optimization steps (${LIMITS.steps[0]}-${LIMITS.steps[1]}, default 100)
  --size WxH          output size: multiples of 8, ${LIMITS.side[0]}-${LIMITS.side[1]} a side, at most ${LIMITS.pixels} pixels
                      (default: the encoder size); one side alone (--size 64) is a square; larger sizes run
                      coarse to fine
  --seed S            uint32 seed (default: random, printed); the same seed gives the same image, byte for byte
  --init KIND         gmm | noise | PATH of a PNG or JPEG init image; default gmm when the model ships
                      a GMM prior, else noise (with a warning)
  --strength X        with an init image: 0 keeps it, 1 replaces it with noise (default 0.6)
  --content-weight C  with an init image: pull toward its content (default 0; 20 with --style)
  --style             style transfer (CLIPStyler-like): the init image is the content, the prompt the
                      style; starts from the image (strength 0), keeps its content, emphasizes patch views
  --views G,P         global and patch views per step (default: the model's recipe defaults, else 32,32)
  -o, --out FILE      output image (default out.png; out.jpg or out.webp with --format jpeg or webp), written whole or not at all
${OUTPUT_FORMAT_USAGE}
  --frames DIR        write a frame every 10 steps (into an empty or new folder)
  --policy FILE       a content policy document (config/prompt-policy.json format) instead of the shipped
                      one: its prompt rules refuse or flag before the run, its output rules after it; an
                      image its output rules withhold is not written, and the command fails (as the job would)
  --json              print a JSON summary on stdout

Exit status: 0 written, 1 bad input or a failed run, 2 bad usage (a flag's value out of its range too),
3 withheld by the output check.`;

/** The files --frames writes: frame-<step, 4 digits>.png. */
const FRAME_FILE = /^frame-\d{4,}\.png$/;

/** How much of a prompt the run's first line shows (a 1000-character prompt is not echoed whole). */
const PROMPT_SHOWN_CHARS = 100;

export { WITHHELD_EXIT_CODE };

/** --size, checked against the engine's limits before any model loads: a value out of them is a usage error (exit 2). */
function parseSize(s: string): [number, number] {
  const [w, h] = sizeShape(s);
  for (const v of [w, h]) {
    if (v < LIMITS.side[0] || v > LIMITS.side[1] || v % 8 !== 0) throw new UsageError(`--size ${s}: each side must be a multiple of 8 in [${LIMITS.side[0]}, ${LIMITS.side[1]}]`);
  }
  if (w * h > LIMITS.pixels) throw new UsageError(`--size ${s} is ${w * h} pixels; the limit is ${LIMITS.pixels}`);
  return [w, h];
}

/** --views G,P, checked before any model loads. */
function parseViews(s: string): { globalViews: number; patchViews: number } {
  const m = /^(\d+),(\d+)$/.exec(s);
  if (!m) throw new UsageError(`--views must look like 32,32, got "${s}"`);
  const [g, p] = [Number(m[1]), Number(m[2])];
  if (g > LIMITS.views[1] || p > LIMITS.views[1] || g + p < 1) throw new UsageError(`--views ${s}: each count at most ${LIMITS.views[1]}, and at least one view`);
  return { globalViews: g, patchViews: p };
}

function progressPrinter(tty: boolean) {
  return (p: SynthProgress) => {
    const eta = Math.round(p.etaMs / 1000);
    const text = `step ${p.step}/${p.totalSteps}${p.stages > 1 ? ` (stage ${p.stage}/${p.stages})` : ''}  loss ${p.loss.toFixed(4)}  best ${p.bestLoss.toFixed(4)}  ETA ${eta}s`;
    if (tty) {
      const width = 24;
      const filled = Math.round((p.step / p.totalSteps) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}   `);
      if (p.step === p.totalSteps) process.stderr.write('\n');
    } else if (p.step === p.totalSteps || p.step % 10 === 0) {
      process.stderr.write(`${text}\n`);
    }
  };
}

/** One file under two names (a link, a hard link, a linked folder in the path)? */
function sameFile(a: string, b: string): boolean {
  const [x, y] = [statSync(a, { throwIfNoEntry: false }), statSync(b, { throwIfNoEntry: false })];
  return x !== undefined && y !== undefined && x.dev === y.dev && x.ino === y.ino;
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    allowPositionals: true,
    options: {
      negative: { type: 'string', multiple: true }, model: { type: 'string' }, steps: { type: 'string' }, size: { type: 'string' },
      seed: { type: 'string' }, init: { type: 'string' }, strength: { type: 'string' }, 'content-weight': { type: 'string' },
      views: { type: 'string' }, style: { type: 'boolean' }, out: { type: 'string', short: 'o' }, frames: { type: 'string' }, json: { type: 'boolean' },
      format: { type: 'string' }, quality: { type: 'string' },
      policy: { type: 'string' },
    },
    strict: true,
  });
  // The example is one the default (toy) model can draw: a first try should not meet an undrawable prompt.
  if (positionals.length !== 1) throw new UsageError('give exactly one prompt, in quotes: clipag generate "a large red circle on the left"');
  // A usage error, as a missing prompt is (and as remote generate says it).
  if (!positionals[0]!.trim()) throw new UsageError('the prompt is empty');
  if ((values.negative ?? []).some((text) => !text.trim())) throw new UsageError('--negative is empty; give the text to steer away from');
  // Before anything echoes it: a prompt too long to run is refused, not printed twice first. A usage
  // error (exit 2), as every other argument out of its range is.
  for (const text of [positionals[0]!, ...(values.negative ?? [])]) {
    if (text.length > LIMITS.promptChars) throw new UsageError(`a prompt is ${text.length} characters; the limit is ${LIMITS.promptChars}`);
  }
  // The same prompt policy as the API (ADR 0015): refusals stop here, flags are printed.
  const policy = values.policy === undefined ? defaultPromptPolicy() : policyFile(values.policy);
  const policyHits = policy.screen([{ text: positionals[0]!, param: 'prompt' }]);
  const refusal = policyHits.find((hit) => hit.action === 'refuse');
  if (refusal) {
    // Tagged with the API's code for it (remote prints the same); with --json, the refusal on stdout as well.
    const message = refusalMessage(refusal);
    if (values.json) console.log(JSON.stringify({ output: null, prompt: positionals[0], error: { code: 'content_policy', message, rule: refusal.rule, category: refusal.category } }));
    console.error(`clipag generate: ${message} [content_policy]`);
    return 1;
  }
  // Everything that can be checked before the run is: a bad flag must not cost a whole synthesis.
  const fileFormat = outputFormatArgs(values.format, values.quality, values.out);
  const out = outputFile(values.out ?? fileFormat.defaultOut, '-o');
  // Said before the run, beside the prompt's warnings (and in --json's warnings).
  const cliWarnings: string[] = [];
  if (fileFormat.warning) cliWarnings.push(fileFormat.warning);
  const imageInit = values.init !== undefined && values.init !== 'gmm' && values.init !== 'noise';
  if (imageInit && sameFile(values.init!, out)) throw new EngineError('invalid_input', `-o ${out} is the --init image: the output would replace it; choose another -o`);
  if (!imageInit && values.strength !== undefined) throw new UsageError('--strength needs an init image (--init PATH.png); gmm and noise starts have nothing to keep');
  if (!imageInit && values['content-weight'] !== undefined) throw new UsageError('--content-weight needs an init image (--init PATH.png) to pull toward');
  if (values.style && !imageInit) throw new UsageError('--style needs an init image: --init content.png');
  const strengthArg = numberArg(values.strength, 'strength', undefined, 0, 1);
  const contentWeightArg = numberArg(values['content-weight'], 'content-weight', undefined, 0, 1e6);
  const seed = values.seed === undefined ? randomInt(2 ** 32) : intArg(values.seed, 'seed', 0, 0, 2 ** 32 - 1);
  const steps = intArg(values.steps, 'steps', 100, LIMITS.steps[0], LIMITS.steps[1]);
  const askedSize = values.size === undefined ? undefined : parseSize(values.size);
  const views = values.views === undefined ? undefined : parseViews(values.views);
  // The engine takes 8 prompts in all: the prompt and up to 7 negatives.
  if ((values.negative?.length ?? 0) > 7) throw new UsageError(`--negative: at most 7 (the model takes 8 prompts in all), got ${values.negative!.length}`);
  if (values.frames === '') throw new UsageError('--frames needs a folder');
  // Read now, after the flags: a missing file must not wait for the model to load.
  let initBytes: Uint8Array | undefined;
  if (imageInit) {
    try {
      initBytes = readFileSync(values.init!);
    } catch (e) {
      const hint = (e as NodeJS.ErrnoException).code === 'ENOENT' ? ' (--init takes gmm, noise or a PNG or JPEG file)' : '';
      throw new EngineError('invalid_input', `cannot read init image ${values.init}: ${(e as Error).message}${hint}`);
    }
  }

  // Made now, so that a folder that cannot be made is refused before the run; a folder this run made
  // is removed again if the run fails before writing into it (a bad model, a bad init image).
  let madeFrames: string | undefined;
  if (values.frames) {
    try {
      madeFrames = mkdirSync(values.frames, { recursive: true });
    } catch (e) {
      throw new EngineError('invalid_input', `--frames ${values.frames}: cannot make the folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    // An earlier run's frames would be left between this run's (whose steps differ), read as one
    // progression of two prompts.
    const earlier = readdirSync(values.frames, { withFileTypes: true }).filter((e) => e.isFile() && FRAME_FILE.test(e.name)).map((e) => e.name);
    if (earlier.length > 0) {
      throw new EngineError('invalid_input', `--frames ${values.frames} holds ${earlier.length} frame${earlier.length === 1 ? '' : 's'} of an earlier run (${earlier[0]}…): give an empty or new folder, or remove them`);
    }
  }
  const removeMadeFrames = () => {
    if (madeFrames === undefined) return;
    // Only what this run made, and only while empty: from the innermost folder up to the first it made.
    for (let dir = resolve(values.frames!); ; dir = dirname(dir)) {
      try {
        rmdirSync(dir);
      } catch {
        return;
      }
      if (dir === resolve(madeFrames)) return;
    }
  };
  let engine: ClipEngine;
  try {
    engine = await ClipEngine.open(modelDir(values.model));
  } catch (e) {
    removeMadeFrames();
    throw e;
  }
  try {
    const [width, height] = askedSize ?? [engine.imageSize, engine.imageSize];
    let init: InitSpec = { kind: 'gmm' };
    const initArg = values.init ?? (engine.bundle.priorPath ? 'gmm' : 'noise');
    // Said as the API says it (gpu-worker/worker/synthesizer.ts): gmm is the default start, and this model cannot give it.
    if (values.init === undefined && !engine.bundle.priorPath) cliWarnings.push(`model ${engine.name} ships no GMM prior: the image started from noise (init "gmm" needs one; see clipag prior fit)`);
    if (initArg === 'noise') init = { kind: 'noise' };
    else if (initArg !== 'gmm') {
      const bytes = initBytes!;
      const strength = strengthArg ?? (values.style ? 0 : 0.6);
      init = { kind: 'image', image: whereFrom(`--init ${initArg}`, () => decodeImage(bytes, { maxBytes: DEFAULT_MAX_BYTES })), strength };
    }
    let recipe: Partial<Recipe> = { ...(values.style ? STYLE_RECIPE : {}), steps };
    if (views) recipe = { ...recipe, ...views };
    const prompts = [{ text: positionals[0], weight: 1 }, ...(values.negative ?? []).map((text) => ({ text, weight: -NEGATIVE_PROMPT_SHARE }))];
    if (!values.json) {
      // Quoted: a prompt's control characters (a terminal's escape sequences, bidi overrides) are shown, not run.
      process.stderr.write(`clipag: ${quotedPrompt(positionals[0]!, PROMPT_SHOWN_CHARS)} ${width}x${height} with ${engine.name}, seed ${seed}\n`);
      // Before the run: a prompt the model cannot read is worth knowing before waiting for it.
      for (const w of [...cliWarnings, ...engine.promptWarnings(prompts.map((p) => p.text))]) process.stderr.write(`warning: ${w}\n`);
      for (const hit of policyHits) process.stderr.write(`content policy (${hit.category}): "${hit.term}" ${hit.message}\n`);
    }
    // The output rules too (ADR 0017): the shipped ones only flag; one that withholds keeps the file unwritten.
    const outputScreen = policy.output;
    const framesWritten: string[] = [];
    // Ctrl-C stops the run at the next step and cleans up after it (the frames it wrote, the folder it
    // made), so the same command can run again; a second Ctrl-C ends the process at once.
    const interrupt = new AbortController();
    const onSigint = () => {
      process.off('SIGINT', onSigint);
      interrupt.abort();
    };
    process.on('SIGINT', onSigint);
    const res = await synthesize(
      engine,
      { prompts, width, height, seed, init, recipe, contentWeight: contentWeightArg ?? (values.style ? STYLE_CONTENT_WEIGHT : undefined), screenTexts: outputScreen.concepts },
      {
        onProgress: progressPrinter(Boolean(process.stderr.isTTY) && !values.json),
        onFrame: values.frames
          ? (f) => {
              const path = join(values.frames!, `frame-${String(f.step).padStart(4, '0')}.png`);
              try {
                // Whole or not at all, as the image: a full disk would leave a truncated frame behind a "frame skipped".
                writeWhole(path, f.png);
                framesWritten.push(path);
              } catch (e) {
                // A frame is a by-product: the run and its image go on without it.
                process.stderr.write(`warning: --frames: cannot write ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); frame skipped\n`);
              }
            }
          : undefined,
        signal: interrupt.signal,
      },
    ).finally(() => process.off('SIGINT', onSigint));
    if (res.aborted) {
      for (const path of framesWritten) rmSync(path, { force: true });
      removeMadeFrames();
      const earlier = existsSync(out) ? ' (the file already there, from before, is left as it was)' : '';
      const message = `interrupted after ${res.stepsDone} steps; ${out} was not written${earlier}${framesWritten.length ? `, and the ${framesWritten.length} frames it wrote were removed` : ''}`;
      if (values.json) console.log(JSON.stringify({ output: null, prompt: positionals[0], error: { code: 'interrupted', message } }));
      process.stderr.write(`clipag generate: ${message}\n`);
      return INTERRUPTED_EXIT_CODE;
    }
    const outputFlags = outputScreen.judge(res.screenCosines, res.scores[0]!.cosine);
    const withheld = outputFlags.find((f) => f.action === 'withhold');
    if (withheld) {
      // As the worker does: neither the image nor its frames are kept (nor the folder this run made for them).
      for (const path of framesWritten) rmSync(path, { force: true });
      removeMadeFrames();
    } else {
      const existed = existsSync(out);
      try {
        // Whole or not at all: a failed write (a full disk, Ctrl-C) leaves the file that was there.
        // The PNG only for a PNG (res.png is encoded when read: a JPEG or WebP never encodes one).
        writeWhole(out, await encodeOutput(res.image, fileFormat.format, fileFormat.quality, fileFormat.format === 'png' ? res.png : undefined));
      } catch (e) {
        const kept = existed ? 'the file that was there is as it was' : 'nothing was written';
        throw new EngineError('runtime_failed', `cannot write ${out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; ${kept}`);
      }
    }
    const summaryJson = {
      output: withheld ? null : out, output_format: fileFormat.format,
      ...(isLossyOutputFormat(fileFormat.format) ? { output_quality: fileFormat.quality ?? defaultOutputQuality(fileFormat.format) } : {}),
      withheld: Boolean(withheld), model: engine.name, robust: engine.bundle.manifest.robust, prompt: positionals[0], negative: values.negative ?? [],
      width, height, seed, steps: res.stepsDone, best_step: res.bestStep, best_loss: res.bestLoss,
      scores: res.scores, initial_scores: res.initialScores, warnings: [...cliWarnings, ...res.warnings],
      content_flags: policyHits.map(({ rule, category, term, message }) => ({ rule, category, term, message })),
      output_flags: outputFlags,
      usage: { encoder_passes: res.usage.encoderPasses, encoder_backward_passes: res.usage.encoderBackwardPasses, timings_ms: res.usage.timingsMs },
    };
    if (!values.json) for (const f of outputFlags) process.stderr.write(`output check (${f.category}, ${f.action}): looks like "${f.concept}" (cosine ${f.cosine.toFixed(3)}, prompt ${res.scores[0]!.cosine.toFixed(3)}): ${f.message}\n`);
    if (values.json) console.log(JSON.stringify(summaryJson));
    if (withheld) {
      // A file already at that path (an earlier run's) is the user's: left as it is, and said so.
      const earlier = existsSync(out) ? ' (the file already there, from before, is left as it was)' : '';
      process.stderr.write(`clipag generate: the output check withheld the image (rule ${withheld.rule}); ${out} was not written${earlier}\n`);
      return WITHHELD_EXIT_CODE;
    }
    if (!values.json) process.stderr.write(`wrote ${/[\x00-\x1f\x7f]/.test(out) ? JSON.stringify(out) : out} (clip score ${res.scores[0].cosine.toFixed(3)}, ${(res.usage.timingsMs.total / 1000).toFixed(1)} s)\n`);
    return 0;
  } catch (e) {
    removeMadeFrames();
    throw e;
  } finally {
    await engine.close();
  }
}
