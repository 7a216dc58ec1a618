// `clipag prior fit`: the CLIPAG initialization prior from an image folder (docs/prior-format.md).
// Images are streamed (one decoded at a time), downscaled to 16×16 (downscaleForPrior), and fitted
//   - as one Gaussian over all images (default),
//   - one Gaussian per class folder (--per-folder; the authors used Tiny-ImageNet's 200 classes), or
//   - one per k-means cluster of the 16×16 vectors (--clusters K),
// each with full covariance + floor·I (1e-4) and stored as means + Cholesky factors (F32, or F16).
// Classes are fitted one after another, so memory holds one 768×768 accumulator plus the finished
// factors (K · 2.4 MB in F32), not one accumulator per class. Unreadable files (corrupt, neither PNG
// nor JPEG, not an image) are skipped with a warning and counted. No image at all is an error, and no
// file is written.

import { existsSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { EngineError } from '../errors.ts';
import { decodeImage } from '../synth/image.ts';
import {
  DEFAULT_FLOOR, GaussianAccumulator, type GmmPrior, PRIOR_DIM, PRIOR_RESOLUTION, assemblePrior, downscaleForPrior, fitComponent, kmeans, writePrior,
} from '../synth/prior.ts';
import { createRng } from '../synth/rng.ts';

export type PriorFitMode = { kind: 'single' } | { kind: 'per-folder' } | { kind: 'clusters'; k: number };

export interface PriorFitOptions {
  mode?: PriorFitMode;
  /** Store the Cholesky factors as F16 (half the size). */
  fp16?: boolean;
  /** k-means seed (default 0). */
  seed?: number;
  floor?: number;
  onProgress?: (p: { done: number; total: number; file: string }) => void;
  onWarning?: (msg: string) => void;
}

export interface PriorFitResult {
  prior: GmmPrior;
  /** Files found, images used, files skipped (with reasons). */
  files: number;
  used: number;
  skipped: { file: string; reason: string }[];
  /** Images smaller than 16 px on a side (upsampled, still used). */
  small: number;
  groups: { name: string; count: number }[];
}

const IMAGE_EXT = /\.(png|jpe?g|gif|webp|bmp|tiff?)$/i;

/** All files under `dir`, recursively, sorted, skipping hidden entries and (with a warning naming them from `root`) links, which could loop. */
function walk(dir: string, root: string, warn: (message: string) => void): string[] {
  const out: string[] = [];
  const rec = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (ent.name.startsWith('.')) continue;
      const p = join(d, ent.name);
      if (ent.isDirectory()) rec(p);
      else if (ent.isFile()) out.push(p);
      else if (ent.isSymbolicLink()) warn(`skipping ${relative(root, p)}: a symbolic link (copy the images in to use them)`);
    }
  };
  rec(dir);
  return out;
}

export async function fitPriorFromFolder(dir: string, opts: PriorFitOptions = {}): Promise<PriorFitResult> {
  const mode = opts.mode ?? { kind: 'single' };
  const floor = opts.floor ?? DEFAULT_FLOOR;
  const warn = opts.onWarning ?? (() => {});
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new EngineError('invalid_input', `image folder ${dir} does not exist or is not a folder`, { path: dir });

  // Groups of files: one per class folder, or everything together.
  let groups: { name: string; files: string[] }[];
  const skipped: { file: string; reason: string }[] = [];
  if (mode.kind === 'per-folder') {
    groups = [];
    for (const ent of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (ent.name.startsWith('.')) continue;
      const p = join(dir, ent.name);
      if (ent.isDirectory()) groups.push({ name: ent.name, files: walk(p, dir, warn) });
      else if (ent.isSymbolicLink()) warn(`skipping ${ent.name}: a symbolic link (copy the images in to use them)`);
      else if (ent.isFile()) {
        skipped.push({ file: ent.name, reason: 'not inside a class folder (--per-folder uses one sub-folder per class)' });
        warn(`skipping ${ent.name}: not inside a class folder (--per-folder uses one sub-folder per class)`);
      }
    }
  } else {
    groups = [{ name: 'all', files: walk(dir, dir, warn) }];
  }
  const files = groups.reduce((a, g) => a + g.files.length, 0) + skipped.length;
  const total = groups.reduce((a, g) => a + g.files.length, 0);
  let done = 0;
  let small = 0;

  /** Decode + downscale one file, or count it as skipped. */
  const load = (file: string): Float32Array | undefined => {
    done++;
    const rel = relative(dir, file);
    opts.onProgress?.({ done, total, file: rel });
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      skipped.push({ file: rel, reason: (e as Error).message });
      warn(`skipping ${rel}: ${(e as Error).message}`);
      return undefined;
    }
    try {
      const img = decodeImage(bytes);
      if (img.width < PRIOR_RESOLUTION || img.height < PRIOR_RESOLUTION) {
        small++;
        warn(`${rel} is ${img.width}×${img.height}, smaller than ${PRIOR_RESOLUTION}×${PRIOR_RESOLUTION}: upsampled`);
      }
      return downscaleForPrior(img);
    } catch (e) {
      const reason = e instanceof EngineError ? e.message : `unreadable (${(e as Error).message})`;
      const what = IMAGE_EXT.test(file) ? reason : `not an image (${reason})`;
      skipped.push({ file: rel, reason: what });
      warn(`skipping ${rel}: ${what}`);
      return undefined;
    }
  };

  const fitted: { name: string; prior: GmmPrior; count: number }[] = [];
  const fitOne = (name: string, acc: GaussianAccumulator) => {
    const comp = fitComponent(acc, floor);
    // A one-component prior per group: clamps the mean and converts the factor (F16) right away,
    // so the float64 factor is dropped before the next group.
    fitted.push({ name, prior: assemblePrior([comp], { floor, dtype: opts.fp16 ? 'float16' : 'float32' }), count: comp.count });
  };

  if (mode.kind === 'clusters') {
    const vecs: Float32Array[] = [];
    for (const f of groups[0].files) {
      const v = load(f);
      if (v) vecs.push(v);
    }
    if (vecs.length === 0) throw noImages(dir, files, skipped);
    if (vecs.length < mode.k) throw new EngineError('invalid_input', `cannot make ${mode.k} clusters from ${vecs.length} usable images; lower --clusters`, { param: 'clusters' });
    const km = kmeans(vecs, mode.k, createRng(opts.seed ?? 0));
    for (let k = 0; k < mode.k; k++) {
      const acc = new GaussianAccumulator(PRIOR_DIM);
      for (let i = 0; i < vecs.length; i++) if (km.assignments[i] === k) acc.add(vecs[i]);
      if (acc.count > 0) fitOne(`cluster-${k}`, acc);
    }
  } else {
    for (const g of groups) {
      const acc = new GaussianAccumulator(PRIOR_DIM);
      for (const f of g.files) {
        const v = load(f);
        if (v) acc.add(v);
      }
      if (acc.count === 0) {
        if (mode.kind === 'per-folder') warn(`class folder ${g.name} has no usable images: no component for it`);
        continue;
      }
      fitOne(g.name, acc);
    }
    if (fitted.length === 0) throw noImages(dir, files, skipped);
  }

  const prior = merge(fitted.map((f) => f.prior), fitted.map((f) => f.count));
  const used = fitted.reduce((a, f) => a + f.count, 0);
  prior.metadata.images = String(used);
  prior.metadata.mode = mode.kind === 'clusters' ? `kmeans-${mode.k}` : mode.kind;
  prior.metadata.groups = JSON.stringify(fitted.map((f) => f.name));
  return { prior, files, used, skipped, small, groups: fitted.map((f) => ({ name: f.name, count: f.count })) };
}

function noImages(dir: string, files: number, skipped: { file: string; reason: string }[]): EngineError {
  const why = files === 0 ? 'it holds no files' : `all ${files} files were skipped (e.g. ${skipped[0]?.file}: ${skipped[0]?.reason})`;
  return new EngineError('invalid_input', `no usable images in ${dir}: ${why}. Put PNG or JPEG images in it (one sub-folder per class with --per-folder); no prior was written`, { path: dir });
}

/** Concatenate one-component priors; weights proportional to image counts. */
function merge(parts: GmmPrior[], counts: number[]): GmmPrior {
  const K = parts.length;
  const D = PRIOR_DIM;
  const half = parts[0].choleskyDType === 'float16';
  const means = new Float32Array(K * D);
  const chol = half ? new Uint16Array(K * D * D) : new Float32Array(K * D * D);
  parts.forEach((p, k) => {
    means.set(p.means, k * D);
    chol.set(p.cholesky as Float32Array & Uint16Array, k * D * D);
  });
  const total = counts.reduce((a, b) => a + b, 0);
  return {
    ...parts[0],
    components: K,
    means,
    cholesky: chol,
    weights: Float64Array.from(counts, (c) => c / total),
    metadata: { ...parts[0].metadata, components: String(K) },
  };
}

/** Write the prior atomically (temp file next to the target, then rename). */
export async function writePriorAtomic(path: string, prior: GmmPrior, meta: Record<string, string> = {}): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  try {
    await writePrior(tmp, prior, meta);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}
