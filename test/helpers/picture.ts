// A smooth test picture with some detail: what a lossy coder (JPEG, WebP) is for; noise would defeat any.
import type { PlanarImage } from '../../gpu-worker/engine/synth/image.ts';

/** Planar RGB in [0,1]: per-channel phase-shifted sine × cosine waves around mid-grey. */
export function smoothPicture(width: number, height: number): PlanarImage {
  const data = new Float32Array(3 * width * height);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) data[c * width * height + y * width + x] = 0.5 + 0.35 * Math.sin((x + 2 * c) / 5) * Math.cos((y - c) / 7);
    }
  }
  return { width, height, data };
}
