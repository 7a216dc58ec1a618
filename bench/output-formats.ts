// Output format benchmark (ADR 0041, 0043). Not a test. Run: npm run bench:output-formats
//
// Makes images with the embedded default model (models/toy: "a large red circle on the left", seed 1,
// 40 steps; 64², 256² and 512², the larger ones coarse to fine), then encodes each as the worker would:
// a PNG (encodePng), JPEGs at quality 75, 90 (the default) and 95 (encodeJpeg), and WebPs at the same
// qualities (encodeWebp). Prints each size, its ratio to the PNG, the mean absolute error of the file
// decoded back (in levels of 255) and the median encode time of 5. A uniform-noise image of the same sizes is the worst case for a lossy coder. The
// last line is one JSON object.
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { decodeImage, encodeJpeg, encodePng, encodeWebp, noiseImage, type PlanarImage } from '../gpu-worker/engine/synth/image.ts';
import { decodeWebpRgba } from '../gpu-worker/engine/synth/webp.ts';
import { createRng } from '../gpu-worker/engine/synth/rng.ts';
import { synthesize } from '../gpu-worker/engine/synth/synthesize.ts';
import { median, r1 } from './common.ts';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const SIDES = [64, 256, 512];
const QUALITIES = [75, 90, 95];
const REPEATS = 5;

async function timed<T>(f: () => T | Promise<T>): Promise<{ value: T; ms: number }> {
  const ms: number[] = [];
  let value!: T;
  for (let k = 0; k < REPEATS; k++) {
    const t = performance.now();
    value = await f();
    ms.push(performance.now() - t);
  }
  return { value, ms: median(ms) };
}

/** A WebP read back by libwebp, as a planar image in [0,1]. */
async function webpBack(webp: Uint8Array): Promise<PlanarImage> {
  const { width, height, rgba } = await decodeWebpRgba(webp);
  const data = new Float32Array(3 * width * height);
  for (let c = 0; c < 3; c++) for (let i = 0; i < width * height; i++) data[c * width * height + i] = rgba[i * 4 + c]! / 255;
  return { width, height, data };
}

function meanError(a: PlanarImage, b: PlanarImage): number {
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i]! - b.data[i]!);
  return (sum / a.data.length) * 255;
}

const rows: Array<Record<string, number | string>> = [];
async function measure(kind: string, img: PlanarImage): Promise<void> {
  const png = await timed(() => encodePng(img));
  for (const format of ['jpeg', 'webp'] as const) {
    for (const quality of QUALITIES) {
      const file = await timed(() => (format === 'jpeg' ? encodeJpeg(img, quality) : encodeWebp(img, quality)));
      const back = format === 'jpeg' ? decodeImage(file.value) : await webpBack(file.value);
      const row = {
        image: kind, side: img.width, format, quality, png_bytes: png.value.length, bytes: file.value.length,
        ratio: Number((file.value.length / png.value.length).toFixed(3)), mean_abs_error_255: Number(meanError(back, img).toFixed(2)),
        png_encode_ms: r1(png.ms), encode_ms: r1(file.ms),
      };
      rows.push(row);
      console.log(`${kind} ${img.width}²: PNG ${row.png_bytes} B (${row.png_encode_ms} ms); ${format.toUpperCase()} q${quality} ${row.bytes} B = ${(row.ratio * 100).toFixed(0)} % (${row.encode_ms} ms), mean error ${row.mean_abs_error_255}/255`);
    }
  }
}

const engine = await ClipEngine.open(join(REPO, 'models/toy'));
try {
  for (const side of SIDES) {
    const res = await synthesize(engine, { prompts: [{ text: 'a large red circle on the left', weight: 1 }], width: side, height: side, seed: 1, init: { kind: 'gmm' }, recipe: { steps: 40 } });
    await measure('toy', res.image);
    await measure('noise', noiseImage(side, side, createRng(side)));
  }
} finally {
  await engine.close();
}
console.log(JSON.stringify({ bench: 'output-formats', repeats: REPEATS, rows }));
