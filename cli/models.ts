// clipag models <subcommand>: model bundle management. Subcommands live in SUBCOMMANDS; `import`
// turns a CLIP checkpoint into a bundle (gpu-worker/engine/import, docs/import.md).
import { parseArgs } from 'node:util';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { ActivationSchema } from '../gpu-worker/engine/clip/arch.ts';
import { importModel, type ImportProgress } from '../gpu-worker/engine/import/import.ts';
import { intArg } from './common.ts';

export const summary = 'manage model bundles (import a CLIP checkpoint)';

const IMPORT_USAGE = `usage: clipag models import SRC -o DIR (--vocab bpe_simple_vocab_16e6.txt.gz | --tokenizer tokenizer.json)
       [--activation quick_gelu|gelu] [--vision-heads N] [--text-heads N] [--keep-fp16]
       [--name NAME] [--license TEXT] [--source TEXT] [--description TEXT] [--robust]
       [--hf-config config.json] [--no-verify] [--json]

SRC is a PyTorch zip checkpoint (.pt/.bin: a state_dict, or an open_clip training checkpoint whose
"state_dict" is taken and whose optimizer state is skipped), open_clip/OpenAI safetensors, or a Hugging
Face CLIPModel (safetensors or pytorch_model.bin; config.json next to it gives heads and activation).
Pickles are read by a restricted unpickler: only tensor-storage globals are accepted.

The architecture is inferred from the tensor shapes. Heads default to width // 64 (the official rule)
and the activation to QuickGELU; override with the flags. Weights are stored as F32 unless
--keep-fp16. The bundle is written into a temporary folder next to DIR, verified with a float64
gradient check (batch 1, 2 directions), and renamed into place; on any error nothing is left behind.`;

const SUBCOMMANDS: Record<string, { usage: string; run(argv: string[]): Promise<number> }> = {
  import: { usage: IMPORT_USAGE, run: runImport },
};

export const usage = `usage: clipag models <subcommand> [options]

subcommands:
${Object.keys(SUBCOMMANDS).map((s) => `  ${s}`).join('\n')}

${IMPORT_USAGE}`;

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const cmd = sub ? SUBCOMMANDS[sub] : undefined;
  if (!cmd) {
    console.error(`clipag models: ${sub ? `unknown subcommand "${sub}"` : 'missing subcommand'} (known: ${Object.keys(SUBCOMMANDS).join(', ')})\n\n${usage}`);
    return 2;
  }
  return cmd.run(rest);
}

function progressPrinter(tty: boolean) {
  let lastPrinted = -1;
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  return (p: ImportProgress) => {
    const text = `tensor ${p.index}/${p.total}  ${mib(p.bytesWritten)}/${mib(p.bytesTotal)} MiB  ${p.tensor}`;
    if (tty) {
      const width = 30;
      const filled = Math.round((width * p.bytesWritten) / Math.max(1, p.bytesTotal));
      process.stderr.write(`\r\x1b[K[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}`);
      if (p.index === p.total) process.stderr.write('\n');
      return;
    }
    // Plain lines: about every 10 % of the bytes, and the last tensor.
    const decile = Math.floor((10 * p.bytesWritten) / Math.max(1, p.bytesTotal));
    if (decile !== lastPrinted || p.index === p.total) {
      lastPrinted = decile;
      process.stderr.write(`${text}\n`);
    }
  };
}

async function runImport(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o' }, vocab: { type: 'string' }, tokenizer: { type: 'string' },
      activation: { type: 'string' }, 'vision-heads': { type: 'string' }, 'text-heads': { type: 'string' },
      'keep-fp16': { type: 'boolean' }, name: { type: 'string' }, license: { type: 'string' }, source: { type: 'string' },
      description: { type: 'string' }, robust: { type: 'boolean' }, 'hf-config': { type: 'string' }, 'no-verify': { type: 'boolean' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  if (positionals.length !== 1) throw new EngineError('invalid_input', `models import takes one SRC file, got ${positionals.length}\n\n${IMPORT_USAGE}`);
  if (!values.out) throw new EngineError('invalid_input', 'models import needs -o DIR (the new bundle folder)');
  let activation;
  if (values.activation !== undefined) {
    const a = ActivationSchema.safeParse(values.activation);
    if (!a.success) throw new EngineError('invalid_input', `--activation must be quick_gelu or gelu, got "${values.activation}"`);
    activation = a.data;
  }
  const heads = (v: string | undefined, name: string) => (v === undefined ? undefined : intArg(v, name, 1, 1, 1024));
  const log = (line: string) => (values.json ? process.stderr : process.stdout).write(`${line}\n`);
  const res = await importModel(positionals[0], {
    out: values.out,
    vocab: values.vocab,
    tokenizer: values.tokenizer,
    activation,
    visionHeads: heads(values['vision-heads'], 'vision-heads'),
    textHeads: heads(values['text-heads'], 'text-heads'),
    keepFp16: values['keep-fp16'],
    name: values.name,
    license: values.license,
    source: values.source,
    description: values.description,
    robust: values.robust,
    hfConfig: values['hf-config'],
    verify: !values['no-verify'],
    onProgress: progressPrinter(Boolean(process.stderr.isTTY) && !values.json),
    log,
  });
  const summaryObj = {
    dir: res.dir, name: res.manifest.name, format: res.format, architecture: res.arch, inferred: res.inferred, tensors: res.tensors, bytes: res.bytes,
    ignored: res.ignored, gradcheck: res.gradcheck ? { passed: res.gradcheck.passed, maxRelError: res.gradcheck.maxRelError } : 'skipped',
    peak_rss_mib: Math.round(res.peakRss / 2 ** 20),
  };
  if (values.json) console.log(JSON.stringify(summaryObj));
  else console.log(`wrote ${res.dir} (${res.manifest.name}: ${res.tensors} tensors, ${(res.bytes / 2 ** 20).toFixed(1)} MiB)${res.gradcheck ? '' : '; gradient check skipped (--no-verify)'}`);
  return 0;
}
