// Builds model bundles from the shared reference fixtures into a temp folder (the fixtures are read
// from ../shared, never copied into the repo).
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PRESETS, type ClipArch } from '../../gpu-worker/engine/clip/arch.ts';
import { BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, OPENAI_MEAN, OPENAI_STD, type Manifest } from '../../gpu-worker/engine/clip/bundle.ts';
import { writeClipTokenizerJson } from '../../gpu-worker/engine/clip/tokenizer-json.ts';
import { referencePath } from './reference.ts';

let tokenizerCache: string | undefined;
function tokenizerJson(): string {
  if (!tokenizerCache) {
    const dir = mkdtempSync(join(tmpdir(), 'clipag-tok-'));
    tokenizerCache = join(dir, 'tokenizer.json');
    writeClipTokenizerJson(referencePath('bpe_simple_vocab_16e6.txt.gz'), tokenizerCache);
  }
  return tokenizerCache;
}

export function tinyManifest(variant: 'quickgelu' | 'gelu', extra: Partial<Manifest> = {}): Manifest {
  const architecture: ClipArch = variant === 'gelu' ? { ...PRESETS.tiny, activation: 'gelu' } : { ...PRESETS.tiny };
  return {
    format: BUNDLE_FORMAT,
    format_version: BUNDLE_FORMAT_VERSION,
    name: `tiny-${variant}`,
    architecture,
    embed_dim: architecture.embedDim,
    activation: architecture.activation,
    preprocess: { image_size: architecture.imageResolution, mean: OPENAI_MEAN, std: OPENAI_STD },
    weights: 'weights.safetensors',
    tokenizer: 'tokenizer.json',
    robust: false,
    license: 'MIT (OpenAI CLIP code); random weights',
    source: '../shared/data/clip-reference (official CLIP code, random init)',
    ...extra,
  };
}

/** A bundle of the tiny random-weight reference CLIP. */
export function makeTinyBundle(variant: 'quickgelu' | 'gelu' = 'quickgelu', opts: { dir?: string; prior?: string; manifest?: Partial<Manifest> } = {}): string {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), `clipag-bundle-${variant}-`));
  mkdirSync(dir, { recursive: true });
  copyFileSync(referencePath(`tiny-${variant}.safetensors`), join(dir, 'weights.safetensors'));
  copyFileSync(tokenizerJson(), join(dir, 'tokenizer.json'));
  const extra: Partial<Manifest> = { ...opts.manifest };
  if (opts.prior) {
    copyFileSync(opts.prior, join(dir, 'prior.safetensors'));
    extra.prior = 'prior.safetensors';
  }
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(tinyManifest(variant, extra), null, 2));
  return dir;
}
