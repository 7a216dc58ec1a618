// Makes the project's small test prior (models/test-prior/prior.safetensors) from procedurally drawn
// images, deterministically from a seed, so tests and `clipag generate --init gmm` have a real prior
// without downloading a dataset. Run: npx tsx gpu-worker/engine/synth/make-test-prior.ts [-o FILE] [--seed S] [--images N]
//
// The images: a two-colour linear gradient background in a random direction, 1–3 shapes (discs,
// rectangles, triangles) in random colours, and mild per-pixel noise, drawn at 64×64 (the size of
// Tiny-ImageNet images, which the authors' prior was fitted on) and downscaled to 16×16 like any other
// image. One component (K=1) with float16 Cholesky keeps the file at about 1.2 MB.

import { fileURLToPath } from 'node:url';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { createImage, type PlanarImage } from './image.ts';
import { downscaleForPrior, fitPrior, writePrior, type GmmPrior } from './prior.ts';
import { createRng, type Rng } from './rng.ts';

export const TEST_PRIOR_SEED = 20230628;
export const TEST_PRIOR_IMAGES = 2000;

const randColor = (rng: Rng): [number, number, number] => [rng.next(), rng.next(), rng.next()];

/** One procedurally drawn size×size image (see the header for what it contains). */
export function drawShapesImage(rng: Rng, size = 64): PlanarImage {
  const img = createImage(size, size);
  const hw = size * size;
  const c0 = randColor(rng);
  const c1 = randColor(rng);
  const angle = rng.next() * 2 * Math.PI;
  const dx = Math.cos(angle), dy = Math.sin(angle);
  const put = (x: number, y: number, col: readonly number[], a: number) => {
    for (let c = 0; c < 3; c++) {
      const i = c * hw + y * size + x;
      img.data[i] = img.data[i] * (1 - a) + col[c] * a;
    }
  };
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      // Projection onto the gradient direction, mapped to [0,1].
      const t = Math.min(1, Math.max(0, 0.5 + ((x / (size - 1) - 0.5) * dx + (y / (size - 1) - 0.5) * dy)));
      put(x, y, [c0[0] + (c1[0] - c0[0]) * t, c0[1] + (c1[1] - c0[1]) * t, c0[2] + (c1[2] - c0[2]) * t], 1);
    }
  }
  const shapes = 1 + rng.int(3);
  for (let s = 0; s < shapes; s++) {
    const kind = rng.int(3);
    const col = randColor(rng);
    const cx = rng.next() * size, cy = rng.next() * size;
    const r = size * (0.1 + 0.3 * rng.next());
    const aspect = 0.5 + rng.next();
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const u = (x + 0.5 - cx) / r, v = (y + 0.5 - cy) / (r * aspect);
        const inside = kind === 0 ? u * u + v * v <= 1 : kind === 1 ? Math.abs(u) <= 1 && Math.abs(v) <= 1 : v <= 1 && v >= -1 && Math.abs(u) <= (1 - v) / 2;
        if (inside) put(x, y, col, 1);
      }
    }
  }
  for (let i = 0; i < img.data.length; i++) img.data[i] = Math.min(1, Math.max(0, img.data[i] + 0.02 * rng.normal()));
  return img;
}

/** Fit the test prior in memory: K=1, float16 factors, deterministic from `seed`. */
export function makeTestPrior(seed = TEST_PRIOR_SEED, images = TEST_PRIOR_IMAGES): GmmPrior {
  const rng = createRng(seed).fork('test-prior-images');
  const samples: Float32Array[] = [];
  for (let i = 0; i < images; i++) samples.push(downscaleForPrior(drawShapesImage(rng)));
  return fitPrior([samples], {
    dtype: 'float16',
    source: `procedural: ${images} gradient+shapes images (64x64 -> 16x16), seed ${seed}, gpu-worker/engine/synth/make-test-prior.ts`,
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: string) => {
    const i = args.indexOf(name);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
  };
  const out = resolve(opt('-o', 'models/test-prior/prior.safetensors'));
  const seed = Number(opt('--seed', String(TEST_PRIOR_SEED)));
  const images = Number(opt('--images', String(TEST_PRIOR_IMAGES)));
  const t0 = performance.now();
  const prior = makeTestPrior(seed, images);
  mkdirSync(dirname(out), { recursive: true });
  await writePrior(out, prior);
  console.log(`wrote ${out} (${prior.components} component, ${prior.choleskyDType}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
