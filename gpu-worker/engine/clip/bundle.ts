// Model bundles: a folder with manifest.json, a safetensors weights file and a tokenizer.json.
// The format is documented in docs/model-bundle.md. Loading validates everything up front so a bad
// bundle fails with a message naming the file and the problem, never deep inside a session run.

import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import { isPlainRelativePath } from '../../../shared/keys.ts';
import { MODEL_NAME_PATTERN } from '../../../shared/names.ts';
import { EngineError, whereFrom } from '../errors.ts';
import type { ModelIR, TensorData } from '../onnx/ir.ts';
import { readModelFile } from '../onnx/codec.ts';
import { type ForeignTowerInfo, REEXPORT_DYNAMIC_BATCH, emitForeignTower, inspectForeignTower } from './foreign.ts';
import { GraphBuilder } from '../onnx/builder.ts';
import { readSafetensorsAsync } from '../io/safetensors.ts';
import { ClipArchSchema, type ClipArch, checkWeights } from './arch.ts';
import { DEFAULT_RECIPE, type Recipe, validateRecipe } from '../synth/recipe.ts';
import { CLIP_BUNDLE_FORMAT, readManifestText } from '../../../shared/modelstore.ts';

/**
 * Recipe fields a bundle may set as its own defaults (a request's fields still win). A model trained
 * on small images of one world needs other views than the 224 px notebook recipe: for example, crops
 * of a 64 px scene would cut away what "on the left" means. Checked again by validateRecipe on load.
 */
const num = z.number().finite();
export const RecipeDefaultsSchema = z
  .object({
    steps: num, lr: num, betas: z.tuple([num, num]), eps: num, weightDecay: num, gradClip: num,
    globalViews: num, patchViews: num, globalWeight: num, patchWeight: num, resize: z.tuple([num, num]),
    translation: num, patchFraction: num, flip: z.boolean(), color: z.boolean(), colorOnImage: z.boolean(), cutout: num, noiseStd: num,
    thresholdPercentile: num, frameEvery: num, initSamples: num,
  })
  .partial()
  .strict();

const meanValue = z.number().min(-10).max(10);
const stdValue = z.number().min(1e-3).max(10);

/** A file named by a manifest: a plain relative path inside the bundle (shared with the model store). */
export const isBundleFilePath = isPlainRelativePath;

export const BUNDLE_FORMAT = CLIP_BUNDLE_FORMAT;
export const BUNDLE_FORMAT_VERSION = 1;

export const ManifestSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    format_version: z.literal(BUNDLE_FORMAT_VERSION),
    name: z.string().regex(MODEL_NAME_PATTERN, 'lower-case letters, digits, ., _ and -, starting with a letter or digit, at most 64 characters'),
    description: z.string().optional(),
    architecture: ClipArchSchema,
    embed_dim: z.number().int().positive(),
    activation: z.enum(['quick_gelu', 'gelu']),
    preprocess: z
      .object({
        image_size: z.number().int().positive(),
        // Per-channel statistics of [0, 1] pixels: anything far outside these bounds is a broken
        // manifest whose images would only fail later, as a "numerical error" at step 0.
        mean: z.tuple([meanValue, meanValue, meanValue]),
        std: z.tuple([stdValue, stdValue, stdValue]),
      })
      .strict(),
    weights: z.string().min(1),
    /** Optional: sha256 of each file, checked on load when present. */
    sha256: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)).optional(),
    tokenizer: z.string().min(1),
    /**
     * Optional: a forward-only ONNX image encoder (exported elsewhere) used as the image tower; its input
     * is the normalized image [B,3,R,R] and its output the features [B,E]. The weights file then holds
     * the text tower only.
     */
    image_onnx: z.object({ file: z.string().min(1), input: z.string().optional(), output: z.string().optional() }).strict().optional(),
    /** Optional GMM initialization prior (docs/prior-format.md). */
    prior: z.string().min(1).optional(),
    robust: z.boolean(),
    license: z.string().min(1),
    source: z.string().min(1),
    /** Free-form provenance: training command, seed, steps, time, metrics. */
    training: z.record(z.string(), z.unknown()).optional(),
    /** Optional: this model's synthesis recipe defaults (RecipeDefaultsSchema). */
    recipe: RecipeDefaultsSchema.optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    if (m.embed_dim !== m.architecture.embedDim) ctx.addIssue({ code: 'custom', path: ['embed_dim'], message: 'must equal architecture.embedDim' });
    if (m.activation !== m.architecture.activation) ctx.addIssue({ code: 'custom', path: ['activation'], message: 'must equal architecture.activation' });
    if (m.preprocess.image_size !== m.architecture.imageResolution) ctx.addIssue({ code: 'custom', path: ['preprocess', 'image_size'], message: 'must equal architecture.imageResolution' });
    for (const f of [m.weights, m.tokenizer, m.prior, m.image_onnx?.file, ...Object.keys(m.sha256 ?? {})].filter(Boolean) as string[]) {
      if (!isBundleFilePath(f)) ctx.addIssue({ code: 'custom', message: `file ${JSON.stringify(f)} must be a plain relative path inside the bundle` });
    }
  });
export type Manifest = z.infer<typeof ManifestSchema>;

export const OPENAI_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const OPENAI_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

export interface ModelBundle {
  dir: string;
  manifest: Manifest;
  arch: ClipArch;
  weights: Map<string, TensorData>;
  tokenizerPath: string;
  priorPath?: string;
  /** The foreign image tower, when the manifest names one. */
  foreign?: { model: ModelIR; info: ForeignTowerInfo };
  /** sha256 of manifest.json + weights: identifies compiled graphs in caches. */
  contentHash: string;
}

function issueText(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/**
 * Recipe fields given outside a manifest (for example on a command line), checked as a manifest's
 * recipe defaults are: known fields only, and values in range once merged over the notebook defaults.
 */
export function checkRecipeDefaults(raw: unknown): Partial<Recipe> {
  const parsed = RecipeDefaultsSchema.safeParse(raw);
  if (!parsed.success) throw new EngineError('invalid_input', `recipe: ${issueText(parsed.error)}`);
  validateRecipe({ ...DEFAULT_RECIPE, ...parsed.data } as Recipe);
  return parsed.data as Partial<Recipe>;
}

export function readManifest(dir: string): Manifest {
  const path = join(dir, 'manifest.json');
  if (!existsSync(path)) throw new EngineError('invalid_model', `no manifest.json in ${dir}: a model bundle is a folder with manifest.json, weights and tokenizer (see docs/model-bundle.md)`, { path });
  let raw: unknown;
  try {
    raw = JSON.parse(readManifestText(path));
  } catch (e) {
    throw new EngineError('invalid_model', `${path} is not valid JSON: ${(e as Error).message}`, { path });
  }
  // Another kind of bundle (the judge's) is named as such, before a list of every field it lacks.
  const format = (raw as { format?: unknown } | null)?.format;
  if (typeof format === 'string' && format !== BUNDLE_FORMAT) {
    throw new EngineError('invalid_model', `${path} is a "${format}" bundle, not a CLIP model bundle ("${BUNDLE_FORMAT}"): pass a CLIP model folder (models/toy, or one made with clipag models import)`, { path });
  }
  // A later format_version is not a corrupt manifest: a newer clipag made it (its fields may mean
  // something else), and only upgrading this one helps, as the model store says for its index.
  const version = (raw as { format_version?: unknown } | null)?.format_version;
  if (format === BUNDLE_FORMAT && typeof version === 'number' && Number.isInteger(version) && version > BUNDLE_FORMAT_VERSION) {
    throw new EngineError(
      'invalid_model',
      `${path} was made by a newer clipag (bundle format_version ${version}; this version reads ${BUNDLE_FORMAT_VERSION}): upgrade clipag (the CLI, the workers and the API) to read it`,
      { path, formatVersion: version },
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw new EngineError('invalid_model', `${path} is not a valid bundle manifest: ${issueText(parsed.error)}`, { path });
  if (parsed.data.recipe) {
    try {
      validateRecipe({ ...DEFAULT_RECIPE, ...parsed.data.recipe } as Recipe);
    } catch (e) {
      throw new EngineError('invalid_model', `${path}: recipe defaults are invalid: ${(e as Error).message}`, { path });
    }
  }
  return parsed.data;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => {
    createReadStream(path).on('data', (c) => h.update(c)).on('end', () => res()).on('error', rej);
  });
  return h.digest('hex');
}

export async function loadBundle(dirIn: string, opts: { verifyChecksums?: boolean } = {}): Promise<ModelBundle> {
  const dir = resolve(dirIn);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new EngineError('invalid_model', `model bundle folder ${dir} does not exist`, { path: dir });
  const manifest = readManifest(dir);
  const file = (f: string, what: string) => {
    const p = join(dir, f);
    let st;
    try {
      st = statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // A link that loops, or a path through a file, is not "missing": say what it is.
      if (code === 'ENOENT') throw new EngineError('invalid_model', `bundle ${manifest.name}: ${what} file ${f} is missing from ${dir}`, { path: p });
      throw new EngineError('invalid_model', `bundle ${manifest.name}: ${what} file ${f} in ${dir} cannot be read (${code === 'ELOOP' ? 'a symbolic link that loops' : code ?? (e as Error).message})`, { path: p });
    }
    if (!st.isFile()) throw new EngineError('invalid_model', `bundle ${manifest.name}: ${what} file ${f} in ${dir} is not a regular file`, { path: p });
    return p;
  };
  const weightsPath = file(manifest.weights, 'weights');
  const tokenizerPath = file(manifest.tokenizer, 'tokenizer');
  const priorPath = manifest.prior ? file(manifest.prior, 'prior') : undefined;
  if (opts.verifyChecksums !== false && manifest.sha256) {
    for (const [f, want] of Object.entries(manifest.sha256)) {
      const got = await sha256File(file(f, 'checksummed'));
      if (got !== want) throw new EngineError('invalid_model', `bundle ${manifest.name}: ${f} has sha256 ${got.slice(0, 12)}…, manifest says ${want.slice(0, 12)}… (file corrupt or replaced)`, { path: f });
    }
  }
  // Read off this thread (a server answers requests meanwhile), into shared memory: the engine sends
  // graphs built on these weights to its pool's threads, which then needs no copy of them.
  const st = await readSafetensorsAsync(weightsPath, { shared: true });
  const weights = st.tensors;
  const arch = manifest.architecture;
  let foreign: ModelBundle['foreign'];
  if (manifest.image_onnx) {
    const onnxFile = manifest.image_onnx.file;
    const model = readModelFile(file(onnxFile, 'image_onnx'));
    const where = `bundle ${manifest.name}: ${onnxFile}`;
    // Weights kept beside the graph (vision.onnx.data) travel with the bundle only when the manifest
    // names them: models push uploads the files it names, and a worker would find none otherwise.
    for (const external of model.externalFiles ?? []) {
      const named = relative(dir, external).split(sep).join('/');
      if (!manifest.sha256?.[named]) {
        throw new EngineError('invalid_model', `${where} keeps initializers in ${named}, which manifest.json does not name: add it to "sha256" (its digest, from sha256sum) so that its checksum is checked and clipag models push uploads it`, { path: named });
      }
    }
    const info = whereFrom(where, () => inspectForeignTower(model, manifest.image_onnx));
    if (info.embedDim !== arch.embedDim || info.resolution !== arch.imageResolution) {
      throw new EngineError('invalid_model', `bundle ${manifest.name}: the foreign image tower outputs ${info.embedDim}-d features at ${info.resolution} px, but the architecture says embedDim ${arch.embedDim} at ${arch.imageResolution} px`);
    }
    // At load (and at models push), not on a customer's first job: its weights are finite, and its
    // graph builds (no node reads a value nothing defines, nodes in order, no name defined twice) at
    // batch 1 (one image) and at a batch of several (synthesis views): a graph whose Reshape constants
    // hold the export's batch of 1 fails to build at 2, or keeps the images apart no more.
    checkFinite(model.initializers, `${manifest.name} (${onnxFile})`);
    whereFrom(where, () => {
      for (const batch of [1, 2]) {
        const b = new GraphBuilder('foreign_check');
        let out: string;
        try {
          out = emitForeignTower(b, model, info, b.input('pixels', 'float32', [batch, 3, info.resolution, info.resolution]));
        } catch (e) {
          if (batch === 1 || !(e instanceof EngineError)) throw e;
          throw new EngineError(e.code, `the tower builds for one image but not for a batch of 2 (${e.message}): it was likely exported for a fixed batch of 1; ${REEXPORT_DYNAMIC_BATCH(info.inputName, info.outputName)}`, e.detail);
        }
        const shape = b.shape(out);
        if (shape.length !== 2 || shape[0] !== batch || shape[1] !== info.embedDim) {
          throw new EngineError('invalid_model', `for a batch of ${batch} images the tower outputs [${shape}], not [${batch}, ${info.embedDim}]: it mixes the images of a batch (exported for a fixed batch size?); ${REEXPORT_DYNAMIC_BATCH(info.inputName, info.outputName)}`);
        }
        b.output(out);
      }
    });
    foreign = { model, info };
  }
  whereFrom(`bundle ${manifest.name}: ${manifest.weights}`, () => {
    for (const [name, t] of weights) {
      if (!FLOAT_WEIGHT_DTYPES.has(t.dtype)) throw new EngineError('invalid_weights', `tensor ${name} is ${t.dtype}; weights are float32, float16 or float64`, { tensor: name });
    }
    checkWeights(arch, new Map([...weights].map(([k, t]) => [k, t.dims])), { textOnly: Boolean(foreign) });
  });
  await checkFiniteYielding(weights, manifest.name);
  const h = createHash('sha256');
  h.update(readFileSync(join(dir, 'manifest.json')));
  h.update(manifest.sha256?.[manifest.weights] ?? (await sha256File(weightsPath)));
  if (foreign) h.update(await sha256File(join(dir, manifest.image_onnx!.file)));
  return { dir, manifest, arch, weights, tokenizerPath, priorPath, foreign, contentHash: h.digest('hex') };
}

const FLOAT_WEIGHT_DTYPES = new Set(['float32', 'float16', 'float64']);

/**
 * Refuses weights holding NaN or ±Inf (a diverged training run, a bad conversion). Without this
 * check every synthesis with the model fails at step 0 with a numerical error that blames the seed.
 * One pass over the data's exponent bits (all ones: Inf or NaN), each dtype's loop over its own
 * integer view: 0.1-0.4 s for ViT-B/32's 88M floats (a loop over the union of typed arrays with
 * Number.isFinite took 1.8 s).
 */
export function checkFinite(weights: Map<string, TensorData>, bundleName: string): void {
  for (const [name, t] of weights) {
    const bad = nonFiniteAt(t, 0, t.data.length);
    if (bad >= 0) throw nonFinite(bundleName, name, bad);
  }
}

/** checkFinite in slices, letting the thread's other work run between them (a server loading a model answers requests meanwhile). */
export async function checkFiniteYielding(weights: Map<string, TensorData>, bundleName: string): Promise<void> {
  const SLICE = 1 << 22;
  for (const [name, t] of weights) {
    for (let from = 0; from < t.data.length; from += SLICE) {
      const bad = nonFiniteAt(t, from, Math.min(t.data.length, from + SLICE));
      if (bad >= 0) throw nonFinite(bundleName, name, bad);
      await new Promise<void>((res) => setImmediate(res));
    }
  }
}

const nonFinite = (bundleName: string, name: string, at: number) =>
  new EngineError('invalid_weights', `bundle ${bundleName}: tensor ${name} holds a non-finite value (NaN or ±Inf) at element ${at}: the weights are corrupt or came from a diverged run`, { tensor: name });

/** The first element in [from, to) of `t` that is NaN or ±Inf, or -1 (other dtypes have none). */
function nonFiniteAt(t: TensorData, from: number, to: number): number {
  const d = t.data;
  // float64: the exponent is in the high word, the second of each pair (little-endian).
  if (t.dtype === 'float32') return firstAllOnesExponent(new Uint32Array(d.buffer, d.byteOffset, d.length), 0x7f800000, 1, 0, from, to);
  if (t.dtype === 'float64') return firstAllOnesExponent(new Uint32Array(d.buffer, d.byteOffset, 2 * d.length), 0x7ff00000, 2, 1, from, to);
  if (t.dtype === 'float16') return firstAllOnesExponent(d as Uint16Array, 0x7c00, 1, 0, from, to);
  return -1;
}

/** The first element in [from, to) (of `stride` words, its exponent in word `word`) whose exponent bits `mask` are all ones, or -1. */
function firstAllOnesExponent(words: Uint32Array | Uint16Array, mask: number, stride: number, word: number, from: number, to: number): number {
  for (let i = from * stride + word; i < to * stride; i += stride) if ((words[i]! & mask) === mask) return (i - word) / stride;
  return -1;
}

/** A lookup that names the bundle when a weight is missing (checkWeights normally catches this first). */
export function weightLookup(bundle: Pick<ModelBundle, 'weights' | 'manifest'>) {
  return (name: string): TensorData => {
    const t = bundle.weights.get(name);
    if (!t) throw new EngineError('invalid_weights', `bundle ${bundle.manifest.name} has no tensor ${name}`, { tensor: name });
    return t;
  };
}
