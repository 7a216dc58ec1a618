// The GMM initialization prior shipped with the default toy bundle: one full-covariance Gaussian per
// background kind, fitted on world images (the CLIP-training distribution, held-out pairs excluded)
// downscaled to 16×16 like the authors' Tiny-ImageNet prior. Grouping by background rather than by
// shape/colour keeps the prior from handing the answer to the optimizer: its samples are blurry scenes.

import { type GmmPrior, downscaleForPrior, fitPrior, writePrior } from '../synth/prior.ts';
import { type PlanarImage } from '../synth/image.ts';
import { Rng } from '../synth/rng.ts';
import { BACKGROUNDS, WORLD_SIZE, sampleBatch } from './world.ts';

export function fitWorldPrior(samples: number, seed: number): GmmPrior {
  const rng = Rng.fromSeed(seed).fork('prior');
  const groups: Float32Array[][] = BACKGROUNDS.map(() => []);
  const per = 3 * WORLD_SIZE * WORLD_SIZE;
  for (let done = 0; done < samples; done += 64) {
    const n = Math.min(64, samples - done);
    const b = sampleBatch(rng, n);
    for (let i = 0; i < n; i++) {
      const img: PlanarImage = { width: WORLD_SIZE, height: WORLD_SIZE, data: b.pixels.subarray(i * per, (i + 1) * per) };
      groups[BACKGROUNDS.indexOf(b.scenes[i].background)].push(downscaleForPrior(img));
    }
  }
  return fitPrior(groups, { dtype: 'float16', source: `clipag toy world v1, ${samples} images, seed ${seed}, one component per background kind (${BACKGROUNDS.join(', ')})` });
}

export async function writeWorldPrior(path: string, samples: number, seed: number): Promise<GmmPrior> {
  const p = fitWorldPrior(samples, seed);
  await writePrior(path, p);
  return p;
}
