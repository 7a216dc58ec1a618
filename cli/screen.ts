// clipag screen: the output check (ADR 0017) on images at hand, with every concept's cosine, so an
// operator can see where a model puts look-alikes and innocent images before setting min_cosine or a
// margin, or switching a rule to withhold.
import { readFileSync } from 'node:fs';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { DEFAULT_MAX_BYTES, decodeImage } from '../gpu-worker/engine/synth/image.ts';
import { cosinesOver } from '../gpu-worker/engine/synth/synthesize.ts';
import { defaultPromptPolicy } from '../shared/prompt-policy.ts';
import { UsageError, modelDir, policyFile, parseCliArgs } from './common.ts';

export const summary = "score images against the content policy's output concepts (calibrate the output check)";
export const usage = `usage: clipag screen IMAGE.png... --prompt "TEXT" [--model DIR] [--policy FILE.json] [--json]

  IMAGE.png     one or more images (a generation's outputs, or look-alikes and innocent ones)
  --prompt      what the images were asked for: rules with above_prompt_by compare against it
  --model DIR   model bundle (default: models/toy); cosines depend on the model
  --policy      a policy document (config/prompt-policy.json format; default: the shipped policy)
  --json        one JSON object per image: {image, prompt_score, concepts: [{concept, cosine}], findings}

Prints, per image, the prompt's score, each concept's cosine (highest first; "unreadable" where the
model does not know a word or the concept is longer than its context: such a concept never matches),
and the rules that match, as the worker would decide them.`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    allowPositionals: true,
    options: { prompt: { type: 'string' }, model: { type: 'string' }, policy: { type: 'string' }, json: { type: 'boolean' } },
    strict: true,
  });
  if (positionals.length === 0) throw new UsageError('give at least one image: clipag screen out.png --prompt "a red apple"');
  if (values.prompt === undefined || values.prompt.trim() === '') throw new UsageError('--prompt is required: rules with above_prompt_by compare each concept with the prompt\'s score');
  const policy = values.policy === undefined ? defaultPromptPolicy() : policyFile(values.policy);
  const concepts = policy.output.concepts;
  if (concepts.length === 0) throw new EngineError('invalid_input', `${values.policy ?? 'the shipped policy'} has no output_rules: nothing to score against`);
  // Every image is decoded before the model is opened: a bad path must not cost a model load.
  const images = positionals.map((path) => {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(path);
    } catch (e) {
      throw new EngineError('invalid_input', `cannot read image ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      return { path, image: decodeImage(bytes, { maxBytes: DEFAULT_MAX_BYTES }) };
    } catch (e) {
      throw new EngineError('invalid_input', `${path}: ${(e as Error).message}`);
    }
  });

  const engine = await ClipEngine.open(modelDir(values.model));
  try {
    // The prompt as a generation reads it (cut at the context, unknown words as the unknown token), so
    // its score is the clip_score the job had; what the model misses is said, as a generation says it.
    const { unit: prompt } = await engine.embedText([values.prompt]);
    for (const w of engine.promptWarnings([values.prompt])) process.stderr.write(`warning: ${w}\n`);
    const units = await engine.conceptEmbeddings(concepts);
    for (const { path, image } of images) {
      const { cosines } = await cosinesOver(engine, image, [prompt, ...units]);
      const promptScore = cosines[0]!;
      const conceptCosines = cosines.slice(1);
      const findings = policy.output.judge(conceptCosines, promptScore);
      const rows = concepts.map((concept, i) => ({ concept, cosine: conceptCosines[i]! })).sort((a, b) => (b.cosine ?? -Infinity) - (a.cosine ?? -Infinity));
      if (values.json) {
        console.log(JSON.stringify({ image: path, model: engine.name, prompt: values.prompt, prompt_score: promptScore, concepts: rows, findings }));
        continue;
      }
      console.log(`${path}  (model ${engine.name})`);
      console.log(`  prompt   ${promptScore.toFixed(4)}  "${values.prompt}"`);
      for (const r of rows) console.log(`  concept  ${r.cosine === null ? 'unreadable' : `${r.cosine.toFixed(4)} (${signed(r.cosine - promptScore)} vs prompt)`}  "${r.concept}"`);
      if (findings.length === 0) console.log('  no rule matches');
      for (const f of findings) console.log(`  ${f.action.toUpperCase()}  rule ${f.rule} (${f.category}): "${f.concept}" ${f.cosine.toFixed(4)}: ${f.message}`);
    }
    return 0;
  } finally {
    await engine.close();
  }
}

const signed = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(4)}`;
