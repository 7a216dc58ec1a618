// clipag prior <subcommand>: GMM initialization priors (docs/prior-format.md). `fit` streams an image
// folder into a prior file (gpu-worker/engine/import/prior-fit.ts).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { readManifest, sha256File } from '../gpu-worker/engine/clip/bundle.ts';
import { EngineError } from '../gpu-worker/engine/errors.ts';
import { fitPriorFromFolder, writePriorAtomic, type PriorFitMode } from '../gpu-worker/engine/import/prior-fit.ts';
import { UsageError, intArg, outputFile, parseCliArgs } from './common.ts';

export const summary = 'fit a GMM initialization prior from an image folder';

const FIT_USAGE = `usage: clipag prior fit IMAGES -o prior.safetensors [--per-folder | --clusters K] [--fp16] [--seed S] [--source TEXT] [--force] [--json]

Streams every image under IMAGES (recursively), downscales it to 16×16 and fits Gaussians with full
covariance + 1e-4·I: one over all images (default), one per sub-folder of IMAGES (--per-folder, one
folder per class as the CLIPAG authors did with Tiny-ImageNet), or one per k-means cluster of the
16×16 images (--clusters K, seeded by --seed). Means and Cholesky factors are stored as F32, or the
factors as F16 with --fp16. Corrupt files, and files that are neither PNG nor JPEG, are skipped
with a warning and counted; a folder without usable images is an error and writes nothing. An existing -o file is
replaced only with --force. Written into a model bundle's folder (-o models/x/prior.safetensors), it becomes
that model's prior: its manifest.json names it (unless it names another).`;

export const usage = `usage: clipag prior <subcommand> [options]

subcommands:
  fit

${FIT_USAGE}`;

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'fit') {
    console.error(`clipag prior: ${sub ? `unknown subcommand "${sub}"` : 'missing subcommand'} (known: fit)\n\n${usage}`);
    return 2;
  }
  return runFit(rest);
}

async function runFit(argv: string[]): Promise<number> {
  const { values, positionals } = parseCliArgs({
    args: argv,
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o' }, 'per-folder': { type: 'boolean' }, clusters: { type: 'string' }, fp16: { type: 'boolean' },
      seed: { type: 'string' }, source: { type: 'string' }, json: { type: 'boolean' }, force: { type: 'boolean' },
    },
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError(`prior fit takes one IMAGES folder, got ${positionals.length}`);
  if (!values.out) throw new UsageError('prior fit needs -o prior.safetensors');
  if (values['per-folder'] && values.clusters !== undefined) throw new UsageError('use either --per-folder or --clusters K, not both');
  const out = outputFile(values.out, '-o');
  if (existsSync(out) && !values.force) throw new EngineError('invalid_input', `${out} already exists; choose another -o or pass --force to replace it`);
  const mode: PriorFitMode = values['per-folder'] ? { kind: 'per-folder' } : values.clusters !== undefined ? { kind: 'clusters', k: intArg(values.clusters, 'clusters', 1, 1, 10_000) } : { kind: 'single' };
  const tty = Boolean(process.stderr.isTTY) && !values.json;
  let lastPct = -1;
  let barOpen = false;
  const res = await fitPriorFromFolder(positionals[0], {
    mode,
    fp16: values.fp16,
    seed: intArg(values.seed, 'seed', 0, 0, 2 ** 32 - 1),
    onProgress: ({ done, total, file }) => {
      const pct = Math.floor((100 * done) / Math.max(1, total));
      if (tty) {
        const width = 30;
        const filled = Math.round((width * done) / Math.max(1, total));
        process.stderr.write(`\r\x1b[K[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${file}`);
        barOpen = done < total;
        if (done === total) process.stderr.write('\n');
      } else if (Math.floor(pct / 10) !== Math.floor(lastPct / 10) || done === total) {
        process.stderr.write(`images ${done}/${total}\n`);
      }
      lastPct = pct;
    },
    onWarning: (msg) => {
      if (barOpen) process.stderr.write('\n');
      barOpen = false;
      process.stderr.write(`warning: ${msg}\n`);
    },
  });
  await writePriorAtomic(out, res.prior, { source: values.source ?? `clipag prior fit ${basename(resolve(positionals[0]))}` });
  const bundleNote = await useInBundle(out);
  const summaryObj = {
    out, components: res.prior.components, groups: res.groups, files: res.files, used: res.used, skipped: res.skipped.length, small: res.small,
    cholesky: res.prior.choleskyDType,
  };
  if (values.json) console.log(JSON.stringify(summaryObj));
  else {
    console.log(`wrote ${out}: ${res.prior.components} component(s) (${res.prior.choleskyDType}) from ${res.used} images; ${res.skipped.length} of ${res.files} files skipped${res.small ? `, ${res.small} small images upsampled` : ''}`);
    for (const g of res.groups.slice(0, 20)) console.log(`  ${g.name}: ${g.count} images`);
    if (res.groups.length > 20) console.log(`  … ${res.groups.length - 20} more`);
  }
  if (bundleNote) process.stderr.write(`clipag prior fit: ${bundleNote}\n`);
  return 0;
}

/**
 * A prior written into a model bundle's folder is that model's prior: its manifest names it (and its
 * sha256, where the manifest lists checksums), or generate --init gmm and models push never used it (the
 * import review: the operator had to edit manifest.json by hand, and a push left the prior behind). A
 * manifest that names another prior is left as it is, and said so. Undefined where -o is in no bundle.
 */
async function useInBundle(out: string): Promise<string | undefined> {
  const dir = dirname(out);
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) return undefined;
  const manifest = readManifest(dir); // a bundle this version reads, or a clear error
  const name = basename(out);
  if (manifest.prior !== undefined && manifest.prior !== name) {
    return `${dir} is model bundle ${manifest.name}, whose manifest.json names the prior ${manifest.prior}: left as it is (set "prior" to "${name}" to use this one)`;
  }
  const raw = JSON.parse(readFileSync(manifestPath, 'utf8')) as Record<string, unknown>;
  raw.prior = name;
  if (raw.sha256 && typeof raw.sha256 === 'object') (raw.sha256 as Record<string, string>)[name] = await sha256File(out);
  const tmp = join(dir, `.manifest.json.tmp-${process.pid}`);
  writeFileSync(tmp, `${JSON.stringify(raw, null, 2)}\n`);
  renameSync(tmp, manifestPath);
  readManifest(dir);
  return `${dir} is model bundle ${manifest.name}: its manifest.json now names ${name} as its prior${raw.sha256 ? ' (with its sha256)' : ''}, so generate --init gmm and models push use it (its content hash, model_version, changes)`;
}
