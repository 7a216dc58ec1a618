// clipag models <subcommand>: model bundle management. Subcommands live in SUBCOMMANDS; `import`
// turns a CLIP checkpoint into a bundle (gpu-worker/engine/import, docs/import.md); `push` and `list`
// work on the model store (shared/modelstore.ts, docs/model-store.md).
import { existsSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { localLayout, storesFor } from '../shared/adapters/stores.ts';
import { operatorConfig, type Config } from '../shared/config.ts';
import { isClipagError } from '../shared/errors.ts';
import { ModelStore, type PushProgress, readManifestText } from '../shared/modelstore.ts';
import type { BlobStore } from '../shared/ports.ts';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { ActivationSchema } from '../gpu-worker/engine/clip/arch.ts';
import { readManifest } from '../gpu-worker/engine/clip/bundle.ts';
import { scanModelsDir } from '../gpu-worker/models.ts';
import { importModel, type ImportProgress } from '../gpu-worker/engine/import/import.ts';
import { UsageError, cliModelsDir, followLink, intArg, parseCliArgs } from './common.ts';

export const summary = 'manage model bundles (import a CLIP checkpoint, push to and list the model store)';

const IMPORT_USAGE = `usage: clipag models import SRC -o DIR (--vocab bpe_simple_vocab_16e6.txt.gz | --tokenizer tokenizer.json)
       [--activation quick_gelu|gelu] [--vision-heads N] [--text-heads N] [--keep-fp16]
       [--name NAME] [--license TEXT] [--source TEXT] [--description TEXT] [--robust]
       [--hf-config config.json] [--open-clip-config open_clip_config.json] [--no-verify] [--json]

SRC is a PyTorch zip checkpoint (.pt/.bin: a state_dict, or an open_clip training checkpoint whose
"state_dict" is taken and whose optimizer state is skipped), open_clip/OpenAI safetensors, or a Hugging
Face CLIPModel (safetensors or pytorch_model.bin; config.json next to it gives heads and activation).
Pickles are read by a restricted unpickler: only tensor-storage globals are accepted. TorchScript files
(what OpenAI's clip.load downloads) are refused with the Python line that exports their state_dict.

The architecture is inferred from the tensor shapes. An open_clip_config.json next to open_clip weights
(or --open-clip-config) gives the activation (quick_gelu), the heads and the normalization, and a flag
that contradicts it is an error. Otherwise heads default to width // 64 (the official rule) and the
activation to QuickGELU; override with the flags. Weights are stored as F32 unless
--keep-fp16. The bundle is written into a temporary folder next to DIR, verified with a float64
gradient check (batch 1, 2 directions), and renamed into place; on any error nothing is left behind.
DIR must not exist or be an empty folder; a symbolic link DIR is followed to the folder it leads to.`;

const PUSH_USAGE = `usage: clipag models push DIR [--name NAME] [--force] [--json]

Uploads the bundle folder DIR to the model store as model NAME (default: the manifest's name, which
NAME must equal): manifest.json and every file it names, each checked against manifest.json's sha256
when present, then models/NAME/bundle.json with every file's sha256 and size and the bundle's content
hash, written last so a half-pushed model is never listed. The bundle is fully loaded and checked
first. Pushing the same bundle again changes nothing; a different bundle under an existing NAME is
refused unless --force. The store is the configured blob store: the local data folder
(CLIPAG_DATA_DIR, default .data) or, with CLIPAG_MODE=aws, the bucket CLIPAG_BUCKET (see
shared/config.ts; AWS credentials from the usual chain).

NAME must not be a folder of the models folder (CLIPAG_MODELS_DIR; default: this package's models/,
whatever the working folder, which clipag serve serves and the worker image copies) holding another
bundle: workers serve that folder before the store's model, while the API lists the pushed one. Such a
push is refused unless --force; pushing that very bundle is fine.`;

const LIST_USAGE = `usage: clipag models list [--json]

Lists the models pushed to the configured store (see push): name, robust flag, embedding size, input
size, size on disk and content hash.`;

const SUBCOMMANDS: Record<string, { usage: string; run(argv: string[]): Promise<number> }> = {
  import: { usage: IMPORT_USAGE, run: runImport },
  push: { usage: PUSH_USAGE, run: (argv) => runPush(argv) },
  list: { usage: LIST_USAGE, run: (argv) => runList(argv) },
};

export const usage = `usage: clipag models <subcommand> [options]

subcommands:
${Object.keys(SUBCOMMANDS).map((s) => `  ${s}`).join('\n')}

${IMPORT_USAGE}

${PUSH_USAGE}

${LIST_USAGE}`;

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
  const { values, positionals } = parseCliArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o' }, vocab: { type: 'string' }, tokenizer: { type: 'string' },
      activation: { type: 'string' }, 'vision-heads': { type: 'string' }, 'text-heads': { type: 'string' },
      'keep-fp16': { type: 'boolean' }, name: { type: 'string' }, license: { type: 'string' }, source: { type: 'string' },
      description: { type: 'string' }, robust: { type: 'boolean' }, 'hf-config': { type: 'string' }, 'open-clip-config': { type: 'string' }, 'no-verify': { type: 'boolean' },
      json: { type: 'boolean' },
    },
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError(`models import takes one SRC file, got ${positionals.length}`);
  if (!values.out) throw new UsageError('models import needs -o DIR (the new bundle folder)');
  // The source first: a missing file is the first thing to fix, before the tokenizer flags.
  if (!existsSync(positionals[0]!)) throw new EngineError('invalid_input', `models import: SRC ${resolve(positionals[0]!)} does not exist`);
  const srcProblem = importSourceProblem(resolve(positionals[0]!));
  if (srcProblem) throw new EngineError('invalid_input', `models import: ${srcProblem}`);
  let activation;
  if (values.activation !== undefined) {
    const a = ActivationSchema.safeParse(values.activation);
    if (!a.success) throw new UsageError(`--activation must be quick_gelu or gelu, got "${values.activation}"`);
    activation = a.data;
  }
  const heads = (v: string | undefined, name: string) => (v === undefined ? undefined : intArg(v, name, 1, 1, 1024));
  const log = (line: string) => (values.json ? process.stderr : process.stdout).write(`${line}\n`);
  const res = await importModel(positionals[0], {
    out: followLink(values.out, '-o'), // importModel refuses a link: the bundle would be renamed onto it
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
    openClipConfig: values['open-clip-config'],
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

// ------------------------------------------------------------------------------------ the store

/** The model store of the configured blob store: `<dataDir>/blobs` locally, the bucket in AWS mode. */
export async function configuredStore(env: Readonly<Record<string, string | undefined>> = process.env): Promise<{ store: ModelStore; where: string }> {
  const config: Config = operatorConfig(env, (line) => process.stderr.write(`clipag: warning: ${line}\n`));
  const { blobs } = await storesFor(config);
  const where = config.mode === 'aws' ? `s3://${config.bucket}/models/` : `${resolve(localLayout(config.dataDir).blobsDir, 'models')}/`;
  return { store: new ModelStore(blobs, { onWarning: (m) => process.stderr.write(`warning: ${m}\n`) }), where };
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

/** Store errors are ClipagErrors; the verb dispatcher prints EngineErrors without a stack, so convert. */
function asEngineError(e: unknown): never {
  if (isClipagError(e) && !(e instanceof EngineError)) {
    // the name or the user's choice is at fault (invalid_input), or the bundle/store content (invalid_model)
    const code = ['conflict', 'invalid_name', 'not_found'].includes(e.code) ? 'invalid_input' : 'invalid_model';
    throw new EngineError(code, e.message, { store_code: e.code });
  }
  throw e;
}

export async function runPush(argv: string[], env: Readonly<Record<string, string | undefined>> = process.env): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    allowPositionals: true,
    options: { name: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError(`models push takes one bundle folder, got ${positionals.length}`);
  // Another kind of bundle (the judge's) is named as such, as generate --model names it, before the
  // store's check of the files a CLIP bundle's manifest names (and before the store is opened).
  const manifest = existsSync(join(positionals[0]!, 'manifest.json')) ? readManifest(resolve(positionals[0]!)) : undefined;
  const log = (line: string) => (values.json ? process.stderr : process.stdout).write(`${line}\n`);
  const target = values.name ?? manifest?.name;
  if (target !== undefined) checkModelsFolderClash(target, positionals[0]!, env, Boolean(values.force), log);
  const { store, where } = await configuredStore(env);
  const tty = Boolean(process.stderr.isTTY) && !values.json;
  const onProgress = (p: PushProgress) => {
    if (p.phase === 'hash') log(`sha256 ${p.sha256}  ${p.file} (${mib(p.size!)} MiB)`);
    else if (p.phase === 'upload' || p.phase === 'skip') {
      const text = `${p.phase === 'skip' ? 'present ' : 'uploaded'} ${p.index}/${p.total}  ${mib(p.bytesDone)}/${mib(p.bytesTotal)} MiB  ${p.file}`;
      if (tty) process.stderr.write(`\r\x1b[K${text}${p.index === p.total ? '\n' : ''}`);
      else log(text);
    } else log('index bundle.json written: the model is listed now');
  };
  log(`checking bundle ${resolve(positionals[0])}`);
  const res = await store
    .push(positionals[0], values.name, {
      force: values.force,
      validate: async (dir) => {
        // manifest schema, files, declared checksums, tensor names, shapes and values, tokenizer, prior
        await ClipEngine.check(dir);
      },
      onProgress,
    })
    .catch(asEngineError);
  const verb = { pushed: 'pushed to', replaced: 'replaced (--force) in', unchanged: 'unchanged: the same bundle is already in', reuploaded: 'the same bundle, every file uploaded again to' }[res.status];
  if (values.json) {
    console.log(JSON.stringify({ name: res.name, status: res.status, store: where, content_hash: res.contentHash, total_bytes: res.totalBytes, uploaded_bytes: res.uploadedBytes, files: res.files, removed: res.removed }));
  } else {
    log(`${res.name}: ${verb} ${where}${res.name}/  content hash ${res.contentHash}  (${res.files.length} files, ${mib(res.totalBytes)} MiB, ${mib(res.uploadedBytes)} MiB uploaded)`);
    if (res.removed.length) log(`removed stale objects: ${res.removed.join(', ')}`);
  }
  return 0;
}

/**
 * A model pushed under the name of a folder in the models folder is shadowed wherever that folder is
 * served: the worker image copies models/, and a worker serves a local folder before a store model
 * of the same name (docs/model-store.md), while the API (AWS mode) lists the pushed bundle. Refused
 * unless --force, when the folder holds another bundle; the same bundle (that folder itself, or a
 * copy with the same manifest, whose sha256 pin the files) is the documented import-then-push flow.
 */
function checkModelsFolderClash(name: string, dir: string, env: Readonly<Record<string, string | undefined>>, force: boolean, log: (line: string) => void): void {
  // The folder clipag serve serves, from whatever folder this runs in (unset: the package's models/).
  const modelsDir = cliModelsDir(env);
  const local = scanModelsDir(modelsDir)[name];
  if (local === undefined) return;
  const same = (() => {
    try {
      return realpathSync(local) === realpathSync(dir) || readManifestText(join(local, 'manifest.json')) === readManifestText(join(dir, 'manifest.json'));
    } catch {
      return false; // unreadable: not known to be the same bundle
    }
  })();
  const served = `Workers that have the folder (the worker image copies ${modelsDir}) serve it before the store's model of that name, while GET /v1/models in AWS mode describes the pushed bundle`;
  if (same) {
    log(`note: ${local} holds this same bundle. ${served}: after changing the folder, rebuild the worker image too`);
    return;
  }
  if (!force) {
    throw new EngineError(
      'invalid_input',
      `model "${name}" is also the folder ${local} in the models folder, with another bundle. ${served}: customers would be told about one model and get the other. ` +
        `Push under another --name, or update or remove ${local} and rebuild the worker image; pass --force to push anyway`,
      { model: name, folder: local },
    );
  }
  log(`warning: pushing "${name}" although ${local} holds another bundle (--force). ${served}, until the folder is updated or removed and the image rebuilt`);
}

export async function runList(argv: string[], env: Readonly<Record<string, string | undefined>> = process.env): Promise<number> {
  const { values, positionals } = parseCliArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' } }, strict: true });
  // A wrong command line is a usage error (exit 2, the usage printed by main), as in every verb.
  if (positionals.length) throw new UsageError(`models list takes no arguments, got "${positionals[0]}"`);
  const { store, where } = await configuredStore(env);
  const models = await store.list().catch(asEngineError);
  if (values.json) {
    console.log(JSON.stringify({ store: where, models: models.map((m) => ({ name: m.name, content_hash: m.content_hash, total_bytes: m.total_bytes, pushed_at: m.pushed_at, files: m.files.length, ...m.summary })) }));
    return 0;
  }
  if (!models.length) {
    // The folders under CLIPAG_MODELS_DIR are served too (clipag serve, the worker image): say so, or
    // "no models" reads as if the API had none.
    const local = Object.keys(scanModelsDir(cliModelsDir(env)));
    console.log(`no models pushed to ${where} (push one with clipag models push DIR --name NAME)${local.length ? `; served from the models folder as well: ${local.join(', ')}` : ''}`);
    return 0;
  }
  const rows = models.map((m) => [m.name, m.summary.robust ? 'robust' : '-', String(m.summary.embed_dim), `${m.summary.input_size}px`, `${mib(m.total_bytes)} MiB`, m.content_hash.slice(0, 16), m.pushed_at]);
  const head = ['NAME', 'ROBUST', 'EMBED', 'INPUT', 'SIZE', 'CONTENT HASH', 'PUSHED'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  console.log(`${where}\n${fmt(head)}\n${rows.map(fmt).join('\n')}`);
  return 0;
}

/** What a sharded checkpoint (its shards or its index) is told. */
const SAVE_UNSHARDED = 'clipag reads one weights file; save it unsharded first (transformers: model.save_pretrained(DIR, max_shard_size="20GB"))';

/** Weights files a downloaded model's folder holds, in the order they are offered (the import review). */
const WEIGHTS_FILE = /^(open_clip_model\.safetensors|open_clip_pytorch_model\.bin|model\.safetensors|pytorch_model\.bin|.+\.(pt|pth|bin|safetensors))$/;

/**
 * What is wrong with SRC before it is read, said with the fix: a folder (a Hugging Face or open_clip
 * download, or a bundle), or a sharded checkpoint's index. Undefined for a file to read.
 */
export function importSourceProblem(src: string): string | undefined {
  if (statSync(src).isDirectory()) {
    if (existsSync(join(src, 'manifest.json'))) return `${src} is a folder holding manifest.json: a model bundle already (push it with clipag models push ${src}, or generate with --model ${src})`;
    const entries = readdirSync(src);
    const weights = entries.filter((f) => WEIGHTS_FILE.test(f) && !/\.index\.json$/.test(f)).sort((a, b) => Number(/^(open_clip|model\.)/.test(b)) - Number(/^(open_clip|model\.)/.test(a)));
    const shards = entries.filter((f) => /-\d{5}-of-\d{5}\.(safetensors|bin)$/.test(f));
    if (shards.length > 0) return `${src} holds a sharded checkpoint (${shards.slice(0, 2).join(', ')}, …): ${SAVE_UNSHARDED}`;
    return `${src} is a folder: give its weights file${weights.length ? ` (${weights.slice(0, 3).map((f) => join(src, f)).join(', ')}${weights.length > 3 ? ', …' : ''})` : ' (model.safetensors, open_clip_pytorch_model.bin, a .pt …)'}; a config.json beside it is read too`;
  }
  if (/\.index\.json$/.test(src)) return `${src} is a sharded checkpoint's index: ${SAVE_UNSHARDED}`;
  return undefined;
}
