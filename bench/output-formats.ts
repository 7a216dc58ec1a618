// Output format benchmark (ADR 0041). Not a test. Run: npm run bench:output-formats
//
// Makes images with the embedded default model (models/toy: "a large red circle on the left", seed 1,
// 40 steps; 64², 256² and 512², the larger ones coarse to fine), then encodes each as the worker would:
// a PNG (encodePng) and JPEGs at quality 75, 90 (the default) and 95 (encodeJpeg). Prints each size, its
// ratio to the PNG, the mean absolute error of the JPEG decoded back (in levels of 255) and the median
// encode time of 5. A uniform-noise image of the same sizes is the worst case for a lossy coder. The
// last line is one JSON object.
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { decodeImage, encodeJpeg, encodePng, noiseImage, type PlanarImage } from '../gpu-worker/engine/synth/image.ts';
import { createRng } from '../gpu-worker/engine/synth/rng.ts';
import { synthesize } from '../gpu-worker/engine/synth/synthesize.ts';
import { median, r1 } from './common.ts';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const SIDES = [64, 256, 512];
const QUALITIES = [75, 90, 95];
const REPEATS = 5;

function timed<T>(f: () => T): { value: T; ms: number } {
  const ms: number[] = [];
  let value!: T;
  for (let k = 0; k < REPEATS; k++) {
    const t = performance.now();
    value = f();
    ms.push(performance.now() - t);
  }
  return { value, ms: median(ms) };
}

function meanError(a: PlanarImage, b: PlanarImage): number {
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i]! - b.data[i]!);
  return (sum / a.data.length) * 255;
}

const rows: Array<Record<string, number | string>> = [];
function measure(kind: string, img: PlanarImage): void {
  const png = timed(() => encodePng(img));
  for (const quality of QUALITIES) {
    const jpeg = timed(() => encodeJpeg(img, quality));
    const row = {
      image: kind, side: img.width, quality, png_bytes: png.value.length, jpeg_bytes: jpeg.value.length,
      ratio: Number((jpeg.value.length / png.value.length).toFixed(3)), mean_abs_error_255: Number(meanError(decodeImage(jpeg.value), img).toFixed(2)),
      png_encode_ms: r1(png.ms), jpeg_encode_ms: r1(jpeg.ms),
    };
    rows.push(row);
    console.log(`${kind} ${img.width}²: PNG ${row.png_bytes} B (${row.png_encode_ms} ms); JPEG q${quality} ${row.jpeg_bytes} B = ${(row.ratio * 100).toFixed(0)} % (${row.jpeg_encode_ms} ms), mean error ${row.mean_abs_error_255}/255`);
  }
}

const engine = await ClipEngine.open(join(REPO, 'models/toy'));
try {
  for (const side of SIDES) {
    const res = await synthesize(engine, { prompts: [{ text: 'a large red circle on the left', weight: 1 }], width: side, height: side, seed: 1, init: { kind: 'gmm' }, recipe: { steps: 40 } });
    measure('toy', res.image);
    measure('noise', noiseImage(side, side, createRng(side)));
  }
} finally {
  await engine.close();
}
console.log(JSON.stringify({ bench: 'output-formats', repeats: REPEATS, rows }));
