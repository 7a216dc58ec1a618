// `clipag models import`: turn a CLIP checkpoint (PyTorch zip, open_clip training checkpoint,
// open_clip/OpenAI safetensors, Hugging Face CLIPModel) into a model bundle (docs/model-bundle.md).
//
// Steps: check the target and the tokenizer (--tokenizer parsed, --vocab built) → open the source
// lazily → map names → infer the architecture from shapes (flags override heads/activation) → check
// every tensor against it (missing/extra/misshapen are listed) → stream the tensors one at a time into
// weights.safetensors (cast to F32, or F16 kept with keepFp16; each checked for NaN/Inf as stored) →
// tokenizer.json → manifest with sha256 → gradient check on the new bundle (float64; float32 for exact
// GELU, whose Erf has no float64 CPU kernel) → rename into place.
// Everything is written into a temporary folder next to the target and renamed at the end; any error
// removes it, so a failed import never leaves a partial bundle.

import { MODEL_NAME_PATTERN } from '../../../shared/names.ts';
import { closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, rmdirSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { EngineError } from '../errors.ts';
import { type Activation, type ClipArch, checkWeights, expectedTensors, inferArch } from '../clip/arch.ts';
import { BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, type Manifest, ManifestSchema, OPENAI_MEAN, OPENAI_STD, checkFinite, sha256File } from '../clip/bundle.ts';
import { buildClipTokenizerJson } from '../clip/tokenizer-json.ts';
import { TextTokenizer } from '../clip/tokenizer.ts';
import { makeStagingFolder, syncFolder, syncPath } from '../io/staging.ts';
import { f16ToF32Array } from '../io/half.ts';
import { gradcheck, gradcheckDType, type GradcheckResult } from '../clip/gradcheck.ts';
import { imageGradientGraph } from '../clip/graphs.ts';
import { ClipEngine } from '../engine.ts';
import { numel, type TensorData } from '../onnx/ir.ts';
import { type SourceFormat, type SourceTensor, type WeightSource, openWeightSource } from './source.ts';

export interface ImportOptions {
  /** Target bundle folder; must not exist (or be empty). */
  out: string;
  /** The CLIP BPE merges file (bpe_simple_vocab_16e6.txt.gz) to build tokenizer.json from… */
  vocab?: string;
  /** …or a ready tokenizer.json. */
  tokenizer?: string;
  activation?: Activation;
  visionHeads?: number;
  textHeads?: number;
  /** Keep F16 source tensors as F16 (default: every float tensor is stored as F32). */
  keepFp16?: boolean;
  name?: string;
  description?: string;
  license?: string;
  source?: string;
  robust?: boolean;
  /** Hugging Face config.json (default: next to the weights). */
  hfConfig?: string;
  /** open_clip's open_clip_config.json or model config (default: open_clip_config.json next to the weights). */
  openClipConfig?: string;
  /** Run the gradient check on the new bundle (default true; float64, or float32 for exact-GELU models). */
  verify?: boolean;
  onProgress?: (p: ImportProgress) => void;
  log?: (line: string) => void;
}

export interface ImportProgress {
  tensor: string;
  index: number;
  total: number;
  bytesWritten: number;
  bytesTotal: number;
}

export interface ImportResult {
  dir: string;
  manifest: Manifest;
  format: SourceFormat;
  arch: ClipArch;
  /** Where activation, heads and normalization came from: 'flag', a metadata/config hint, or a default. */
  inferred: Record<'activation' | 'visionHeads' | 'textHeads' | 'preprocess', string>;
  tensors: number;
  bytes: number;
  ignored: string[];
  info: Record<string, unknown>;
  gradcheck?: GradcheckResult;
  /** Largest resident set seen while streaming the weights (bytes). */
  peakRss: number;
}

const NAME_RE = MODEL_NAME_PATTERN;

export function defaultBundleName(src: string): string {
  const stem = basename(src).replace(/\.(safetensors|pt|pth|bin|ckpt)$/i, '');
  const n = stem.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 64);
  return n || 'imported-clip';
}

function checkTarget(out: string): void {
  // The bundle is renamed onto `out` at the end: a link there would be replaced (or fail with ENOTDIR)
  // only after all the work. The CLI follows -o links first (cli/common.ts followLink), as --out does.
  if (lstatSync(out, { throwIfNoEntry: false })?.isSymbolicLink()) {
    throw new EngineError('invalid_input', `output ${out} is a symbolic link; pass the folder it leads to`, { path: out });
  }
  if (!existsSync(out)) return;
  if (!statSync(out).isDirectory() || readdirSync(out).length > 0) {
    throw new EngineError('invalid_input', `output ${out} already exists and is not an empty folder; choose a new -o DIR or remove it first`, { path: out });
  }
}

/** Bytes each tensor takes in the bundle. */
function outDType(t: SourceTensor, keepFp16: boolean): 'float32' | 'float16' {
  if (t.dtype === 'F16' && keepFp16) return 'float16';
  if (t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16' || t.dtype === 'F64') return 'float32';
  throw new EngineError('invalid_weights', `tensor ${t.name} has dtype ${t.dtype}; CLIP weights must be floating point`, { tensor: t.name });
}

function toOutput(t: TensorData, dtype: 'float32' | 'float16', name: string): TensorData {
  if (t.dtype === dtype) return t;
  if (dtype === 'float32') {
    if (t.dtype === 'float16') return { dtype, dims: t.dims, data: f16ToF32Array(t.data as Uint16Array) };
    if (t.dtype === 'float64') return { dtype, dims: t.dims, data: Float32Array.from(t.data as Float64Array) };
  }
  throw new EngineError('invalid_weights', `cannot store tensor ${name} (${t.dtype}) as ${dtype}`, { tensor: name });
}

/**
 * Write a safetensors file one tensor at a time: the header is computed from names, dtypes and shapes,
 * then each tensor is read from the source, converted, written and dropped.
 */
function streamSafetensors(
  path: string,
  list: { name: string; dtype: 'float32' | 'float16'; shape: number[]; read(): TensorData }[],
  metadata: Record<string, string>,
  onTensor: (i: number, name: string, bytesWritten: number) => void,
  /** Names the bundle in a non-finite-weight refusal. */
  bundleLabel: string,
): number {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of list) {
    const bytes = numel(t.shape) * (t.dtype === 'float16' ? 2 : 4);
    header[t.name] = { dtype: t.dtype === 'float16' ? 'F16' : 'F32', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const jsonBytes = Buffer.from(json, 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(jsonBytes.byteLength));
  const fd = openSync(path, 'w');
  try {
    let pos = 0;
    const write = (b: Uint8Array) => {
      const CHUNK = 64 << 20;
      for (let off = 0; off < b.byteLength; ) {
        const n = writeSync(fd, b, off, Math.min(CHUNK, b.byteLength - off), pos);
        off += n;
        pos += n;
      }
    };
    write(prefix);
    write(jsonBytes);
    const dataStart = pos;
    list.forEach((t, i) => {
      const d = t.read();
      if (d.dims.length !== t.shape.length || d.dims.some((x, j) => x !== t.shape[j]) || d.dtype !== t.dtype) {
        throw new EngineError('invalid_weights', `tensor ${t.name} read as ${d.dtype} [${d.dims}], expected ${t.dtype} [${t.shape}]`, { tensor: t.name });
      }
      // The stored dtype (F32, or F16 with keepFp16: NaN/Inf bit patterns), as loadBundle checks it.
      checkFinite(new Map([[t.name, d]]), bundleLabel);
      write(new Uint8Array(d.data.buffer, d.data.byteOffset, d.data.byteLength));
      onTensor(i, t.name, pos - dataStart);
    });
  } finally {
    closeSync(fd);
  }
  return offset;
}

export async function importModel(src: string, opts: ImportOptions): Promise<ImportResult> {
  const log = opts.log ?? (() => {});
  const out = resolve(opts.out);
  checkTarget(out);
  if (!opts.vocab && !opts.tokenizer) {
    throw new EngineError('invalid_input', 'a bundle needs a tokenizer: pass --vocab bpe_simple_vocab_16e6.txt.gz (the CLIP BPE merges file) or --tokenizer tokenizer.json');
  }
  if (opts.vocab && opts.tokenizer) throw new EngineError('invalid_input', 'pass either --vocab or --tokenizer, not both');
  for (const [flag, p] of [['vocab', opts.vocab], ['tokenizer', opts.tokenizer]] as const) {
    if (p && !existsSync(p)) throw new EngineError('invalid_input', `--${flag} ${p} does not exist`, { path: p });
  }
  // Before any weight is converted, and under the caller's own path (a bad file found later would be named by its temp copy).
  const givenTokenizer = opts.tokenizer ? TextTokenizer.fromFile(opts.tokenizer) : undefined;
  const builtJson = opts.vocab ? buildClipTokenizerJson(opts.vocab) : undefined;
  const tokenizerJson = builtJson ? JSON.stringify(builtJson) : undefined;
  const tokenizer = givenTokenizer ?? TextTokenizer.fromJson(builtJson, { source: `built from --vocab ${opts.vocab}` });
  const name = opts.name ?? defaultBundleName(src);
  if (!NAME_RE.test(name) || name.length > 64) throw new EngineError('invalid_input', `bundle name "${name}" must be 1–64 lower-case letters, digits, ., _ or -; pass --name`);

  const source: WeightSource = openWeightSource(resolve(src), { hfConfig: opts.hfConfig, openClipConfig: opts.openClipConfig });
  let tmp: string | undefined;
  try {
    // Architecture from shapes; flags > file hints > the official defaults.
    const shapes = new Map<string, number[]>();
    const dup: string[] = [];
    for (const t of source.tensors) {
      if (shapes.has(t.name)) dup.push(t.name);
      shapes.set(t.name, t.shape);
    }
    if (dup.length) throw new EngineError('invalid_weights', `${src}: tensor names collide after renaming: ${dup.slice(0, 6).join(', ')}`);
    const h = source.hints;
    const flagNames = { activation: '--activation', visionHeads: '--vision-heads', textHeads: '--text-heads' } as const;
    const pick = <K extends 'activation' | 'visionHeads' | 'textHeads'>(k: K, flag: ImportOptions[K], def: string) => {
      if (flag !== undefined && h.binding?.[k] && h[k] !== undefined && h[k] !== flag) {
        throw new EngineError(
          'invalid_input',
          `${flagNames[k]} ${flag} contradicts the model's own config: ${h.from[k]} gives ${h[k]}. Drop the flag, or pass --open-clip-config with a corrected copy of the config`,
          { flag: flagNames[k], config: h[k] },
        );
      }
      return flag !== undefined ? { v: flag, from: 'flag' } : h[k] !== undefined ? { v: h[k] as ImportOptions[K], from: h.from[k] ?? 'file' } : { v: undefined, from: def };
    };
    const act = pick('activation', opts.activation, 'default (quick_gelu, as OpenAI weights; pass --activation gelu for GELU models)');
    const vh = pick('visionHeads', opts.visionHeads, 'default (vision width // 64)');
    const th = pick('textHeads', opts.textHeads, 'default (text width // 64)');
    let arch: ClipArch;
    try {
      arch = inferArch(shapes, { activation: act.v, visionHeads: vh.v, textHeads: th.v });
      checkWeights(arch, shapes);
    } catch (e) {
      if (e instanceof EngineError) {
        throw new EngineError(e.code, `${src} (${source.format}): ${e.message}. The import accepts OpenAI/open_clip ViT CLIPs and Hugging Face CLIPModel weights; fix or re-export the checkpoint, or check that it is a CLIP`, { ...e.detail, path: src });
      }
      throw e;
    }
    const inferred = { activation: act.from, visionHeads: vh.from, textHeads: th.from, preprocess: h.from.preprocess ?? "default (OpenAI's mean and std)" };
    log(`source ${src}: ${source.format}${source.info.epoch !== undefined ? `, epoch ${source.info.epoch}` : ''}${source.info.name ? `, name ${source.info.name}` : ''}; ${source.tensors.length} tensors${source.ignored.length ? `, ignored ${source.ignored.join(', ')}` : ''}`);
    const opt = source.info.optimizer as { state_tensors?: number; state_bytes_skipped?: number } | undefined;
    if (opt) log(`optimizer state skipped without reading it: ${opt.state_tensors} tensors, ${(Number(opt.state_bytes_skipped) / 2 ** 20).toFixed(1)} MiB`);
    log(
      `architecture: ViT ${arch.visionLayers}×${arch.visionWidth} (heads ${arch.visionHeads}, patch ${arch.visionPatchSize}, ${arch.imageResolution}px), text ${arch.textLayers}×${arch.textWidth} (heads ${arch.textHeads}), embed ${arch.embedDim}, ${arch.activation}`,
    );
    log(`  activation: ${inferred.activation}; vision heads: ${inferred.visionHeads}; text heads: ${inferred.textHeads}${h.from.preprocess ? `; mean/std: ${h.from.preprocess}` : ''}`);
    // More ids than rows is refused when the bundle loads, so it is refused here, before anything is
    // written (--no-verify too); far fewer is most likely another model's file (every prompt then embeds
    // through the wrong rows), while a table padded a little is common.
    if (tokenizer.vocabSize > arch.vocabSize) {
      const which = opts.tokenizer ? `--tokenizer ${opts.tokenizer}` : `the CLIP tokenizer built from --vocab ${opts.vocab}`;
      throw new EngineError(
        'invalid_tokenizer',
        `${which} has ${tokenizer.vocabSize} token ids, but the model's token embedding (token_embedding.weight) has only ${arch.vocabSize} rows: ids past row ${arch.vocabSize - 1} have no embedding. Pass the tokenizer this model was trained with (--tokenizer tokenizer.json); nothing was written`,
        { tokenizerIds: tokenizer.vocabSize, embeddingRows: arch.vocabSize },
      );
    }
    if (givenTokenizer && givenTokenizer.vocabSize < arch.vocabSize * 0.9) {
      log(`warning: --tokenizer ${opts.tokenizer} has ${givenTokenizer.vocabSize} token ids, but the model's token embedding has ${arch.vocabSize} rows: is it the tokenizer this model was trained with?`);
    }

    mkdirSync(dirname(out), { recursive: true });
    tmp = makeStagingFolder(out, 'importing');

    // Weights, in the official state_dict order.
    const byName = new Map(source.tensors.map((t) => [t.name, t]));
    const list = expectedTensors(arch).map(([n]) => {
      const t = byName.get(n)!;
      const dtype = outDType(t, opts.keepFp16 ?? false);
      return { name: n, dtype, shape: t.shape, read: () => toOutput(t.read(), dtype, n) };
    });
    const bytesTotal = list.reduce((a, t) => a + numel(t.shape) * (t.dtype === 'float16' ? 2 : 4), 0);
    let peakRss = process.memoryUsage.rss();
    const weightsFile = 'weights.safetensors';
    const bytes = streamSafetensors(
      join(tmp, weightsFile),
      list,
      { format: 'pt', source: opts.source ?? basename(src), imported_from: source.format },
      (i, tensor, bytesWritten) => {
        peakRss = Math.max(peakRss, process.memoryUsage.rss());
        opts.onProgress?.({ tensor, index: i + 1, total: list.length, bytesWritten, bytesTotal });
      },
      `${name} (from ${basename(src)})`,
    );

    const tokFile = 'tokenizer.json';
    if (tokenizerJson !== undefined) writeFileSync(join(tmp, tokFile), tokenizerJson);
    else copyFileSync(opts.tokenizer!, join(tmp, tokFile));

    const manifest: Manifest = {
      format: BUNDLE_FORMAT,
      format_version: BUNDLE_FORMAT_VERSION,
      name,
      ...(opts.description ? { description: opts.description } : {}),
      architecture: arch,
      embed_dim: arch.embedDim,
      activation: arch.activation,
      preprocess: { image_size: arch.imageResolution, mean: h.mean ?? OPENAI_MEAN, std: h.std ?? OPENAI_STD },
      weights: weightsFile,
      sha256: { [weightsFile]: await sha256File(join(tmp, weightsFile)), [tokFile]: await sha256File(join(tmp, tokFile)) },
      tokenizer: tokFile,
      robust: opts.robust ?? false,
      license: opts.license ?? 'unspecified (set with --license)',
      source: opts.source ?? `imported from ${basename(src)}`,
      training: {
        imported_with: 'clipag models import',
        source_file: basename(src),
        source_format: source.format,
        weights_dtype: opts.keepFp16 ? 'as source (F16 kept)' : 'F32',
        inferred,
        ...pickInfo(source.info),
      },
    };
    const parsed = ManifestSchema.safeParse(manifest);
    if (!parsed.success) throw new EngineError('invalid_input', `manifest is invalid: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    writeFileSync(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');

    let gc: GradcheckResult | undefined;
    if (opts.verify !== false) {
      log(`verifying: ${gradcheckDType({ arch })} gradient check (batch 1, 2 directions)…`);
      gc = await verifyBundle(tmp);
      for (const [i, d] of gc.directions.entries()) log(`  direction ${i}: analytic ${d.analytic.toExponential(6)}  numeric ${d.numeric.toExponential(6)}  rel.err ${d.relError.toExponential(2)}`);
      log(`  ${gc.passed ? 'PASS' : 'FAIL'}: max relative error ${gc.maxRelError.toExponential(2)} (tolerance ${gc.tolerance})`);
      if (!gc.passed) throw new EngineError('invalid_model', `the imported bundle fails the gradient check (max relative error ${gc.maxRelError.toExponential(2)} > ${gc.tolerance}); nothing was written. Check --activation and the head counts`);
    }

    syncFolder(tmp); // on the disk before it has its name, as replaceFolder does
    try {
      if (existsSync(out)) rmdirSync(out); // empty when checked above, unless something filled it since
      renameSync(tmp, out);
    } catch (e) {
      // Another import (or anything else) wrote DIR while this one ran: ENOTEMPTY/EEXIST from either
      // call, or ENOTDIR when DIR became a file. Its work is kept; this import's staging folder is removed.
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') {
        throw new EngineError('invalid_input', `output ${out} was created or filled by another process (another import to the same -o DIR?) while this import ran; it was left as it is and nothing of this import was kept. Choose another -o DIR, or remove it and import again`, { path: out });
      }
      throw e;
    }
    tmp = undefined;
    syncPath(dirname(out));
    return { dir: out, manifest, format: source.format, arch, inferred, tensors: list.length, bytes, ignored: source.ignored, info: source.info, gradcheck: gc, peakRss };
  } finally {
    source.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}

function pickInfo(info: Record<string, unknown>): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const k of ['epoch', 'name', 'step', 'stripped_prefix']) if (info[k] !== undefined) o[`checkpoint_${k}`] = info[k];
  return o;
}

/**
 * The directional-derivative check of `clipag gradcheck`, batch 1, 2 directions, in its default dtype:
 * float64, or float32 (with its tolerance) for a tower holding an op with no float64 CPU kernel
 * (exact GELU's Erf, a foreign tower's Conv).
 */
export async function verifyBundle(dir: string, opts: { directions?: number; seed?: number } = {}): Promise<GradcheckResult> {
  const engine = await ClipEngine.open(dir);
  try {
    const src = engine.towerSource();
    const dtype = gradcheckDType(engine.bundle);
    // float64 graphs must skip ORT's QuickGelu fusion, which only has a float kernel.
    const handle = await engine.graph(`gradcheck:${dtype}:b1`, () => imageGradientGraph(src, 1, dtype), { graphOptimizationLevel: dtype === 'float64' ? 'basic' : 'all' });
    return await gradcheck(handle, { batch: 1, resolution: engine.imageSize, embedDim: engine.embedDim }, { dtype, directions: opts.directions ?? 2, seed: opts.seed ?? 1234 });
  } finally {
    await engine.close();
  }
}
