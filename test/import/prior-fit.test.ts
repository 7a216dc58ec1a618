// `clipag prior fit` on a generated image folder: classes of coloured shapes (odd sizes), one corrupt
// PNG and one non-image; fitted per folder and per k-means cluster, loaded back with loadPrior.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode as jpegEncode } from 'jpeg-js';
import { describe, expect, it } from 'vitest';
import { main } from '../../cli/main.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { fitPriorFromFolder } from '../../gpu-worker/engine/import/prior-fit.ts';
import { encodePng, type PlanarImage } from '../../gpu-worker/engine/synth/image.ts';
import { loadPrior } from '../../gpu-worker/engine/synth/prior.ts';

const CLASSES = { red: [0.9, 0.1, 0.1], green: [0.1, 0.8, 0.2], blue: [0.15, 0.2, 0.95] } as const;
const PER_CLASS = { red: 5, green: 4, blue: 3 };

/** A shape (disc or square) of `rgb` on a grey background, w×h (odd sizes on purpose). */
function shapeImage(w: number, h: number, rgb: readonly number[], seed: number): PlanarImage {
  const data = new Float32Array(3 * w * h);
  const cx = w * (0.3 + 0.4 * ((seed * 37) % 10) / 10), cy = h * (0.3 + 0.4 * ((seed * 53) % 10) / 10), r = Math.min(w, h) * 0.3;
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const inside = seed % 2 ? (x - cx) ** 2 + (y - cy) ** 2 < r * r : Math.abs(x - cx) < r && Math.abs(y - cy) < r;
      for (let c = 0; c < 3; c++) data[c * w * h + y * w + x] = inside ? rgb[c] : 0.5 + 0.02 * (((x + y + seed) % 5) - 2);
    }
  return { width: w, height: h, data };
}

function makeFolder(): string {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-prior-fit-'));
  for (const [name, rgb] of Object.entries(CLASSES)) {
    mkdirSync(join(dir, name, 'nested'), { recursive: true });
    for (let i = 0; i < PER_CLASS[name as keyof typeof PER_CLASS]; i++) {
      const sub = i === 0 ? join(name, 'nested') : name; // recursion into class sub-folders
      writeFileSync(join(dir, sub, `${i}.png`), encodePng(shapeImage(19 + i, 23 - i, rgb, i + 1)));
    }
  }
  // a corrupt PNG (right signature, garbage after it) and a non-image
  writeFileSync(join(dir, 'red', 'broken.png'), Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.from('not really a png at all')]));
  writeFileSync(join(dir, 'blue', 'notes.txt'), 'hello');
  // a tiny image: used, upsampled, with a warning
  writeFileSync(join(dir, 'green', 'tiny.png'), encodePng(shapeImage(5, 7, CLASSES.green, 3)));
  // a link (it could loop): skipped, with a warning, and not counted
  symlinkSync(join(dir, 'green'), join(dir, 'green', 'loop'));
  return dir;
}

describe('prior fit', () => {
  const dir = makeFolder();
  const outs = mkdtempSync(join(tmpdir(), 'clipag-prior-out-'));

  it('--per-folder: one component per class, weights by image count, corrupt/non-image files counted', async () => {
    const warnings: string[] = [];
    const res = await fitPriorFromFolder(dir, { mode: { kind: 'per-folder' }, onWarning: (w) => warnings.push(w) });
    expect(res.groups).toEqual([{ name: 'blue', count: 3 }, { name: 'green', count: 5 }, { name: 'red', count: 5 }]);
    expect(res.files).toBe(15);
    expect(res.used).toBe(13);
    expect(res.skipped.map((s) => s.file).sort()).toEqual([join('blue', 'notes.txt'), join('red', 'broken.png')]);
    expect(res.small).toBe(1);
    expect(warnings.some((w) => w.includes('broken.png'))).toBe(true);
    expect(warnings.some((w) => w.includes('notes.txt') && w.includes('not an image'))).toBe(true);
    expect(warnings).toContain(`skipping ${join('green', 'loop')}: a symbolic link (copy the images in to use them)`);

    const out = join(outs, 'perfolder.safetensors');
    const code = await main(['prior', 'fit', dir, '-o', out, '--per-folder', '--json']);
    expect(code).toBe(0);
    const prior = loadPrior(out);
    expect(prior.components).toBe(3);
    expect(prior.choleskyDType).toBe('float32');
    expect(Array.from(prior.weights)).toEqual([3 / 13, 5 / 13, 5 / 13].map((w) => expect.closeTo(w, 6)));
    expect(JSON.parse(prior.metadata.groups)).toEqual(['blue', 'green', 'red']);
    // the red component's mean is red where the shapes are: mean R > mean B over the image
    const D = 768, hw = 256;
    const mean = (k: number, c: number) => prior.means.slice(k * D + c * hw, k * D + (c + 1) * hw).reduce((a, b) => a + b, 0) / hw;
    expect(mean(2, 0)).toBeGreaterThan(mean(2, 2));
    expect(mean(0, 2)).toBeGreaterThan(mean(0, 0));
  });

  it('--clusters 2 (+ --fp16): two k-means components whose weights sum to 1', async () => {
    const res = await fitPriorFromFolder(dir, { mode: { kind: 'clusters', k: 2 }, fp16: true, seed: 7 });
    expect(res.prior.components).toBe(2);
    expect(res.skipped).toHaveLength(2);
    expect(res.groups.reduce((a, g) => a + g.count, 0)).toBe(13);
    const out = join(outs, 'clusters.safetensors');
    expect(await main(['prior', 'fit', dir, '-o', out, '--clusters', '2', '--fp16', '--seed', '7', '--json'])).toBe(0);
    const prior = loadPrior(out);
    expect(prior.components).toBe(2);
    expect(prior.choleskyDType).toBe('float16');
    expect(prior.weights[0] + prior.weights[1]).toBeCloseTo(1, 12);
    expect(Array.from(prior.weights).sort()).toEqual(res.groups.map((g) => g.count / 13).sort().map((w) => expect.closeTo(w, 6)));
  });

  it("reads JPEG files as they come (Tiny-ImageNet's .JPEG, ADR 0035): none skipped, one component per class", async () => {
    const jpegDir = mkdtempSync(join(tmpdir(), 'clipag-prior-jpeg-'));
    for (const [name, rgb] of Object.entries(CLASSES)) {
      mkdirSync(join(jpegDir, name));
      for (let i = 0; i < 2; i++) {
        const img = shapeImage(24, 20, rgb, i + 1);
        const hw = img.width * img.height;
        const rgba = new Uint8Array(4 * hw);
        for (let k = 0; k < hw; k++) for (let c = 0; c < 4; c++) rgba[4 * k + c] = c === 3 ? 255 : Math.round(255 * img.data[c * hw + k]!);
        writeFileSync(join(jpegDir, name, `${i}.JPEG`), jpegEncode({ width: img.width, height: img.height, data: rgba }, 90).data);
      }
    }
    const res = await fitPriorFromFolder(jpegDir, { mode: { kind: 'per-folder' } });
    expect(res.skipped).toEqual([]);
    expect(res.groups).toEqual([{ name: 'blue', count: 2 }, { name: 'green', count: 2 }, { name: 'red', count: 2 }]);
  });

  it('an empty folder (or one with no usable image) is an error and writes no file', async () => {
    const empty = mkdtempSync(join(tmpdir(), 'clipag-prior-empty-'));
    await expect(fitPriorFromFolder(empty)).rejects.toThrow(EngineError);
    await expect(fitPriorFromFolder(empty)).rejects.toThrow(/no usable images.*holds no files/);
    const out = join(outs, 'empty.safetensors');
    expect(await main(['prior', 'fit', empty, '-o', out])).toBe(1);
    expect(existsSync(out)).toBe(false);
    writeFileSync(join(empty, 'readme.txt'), 'no images here');
    await expect(fitPriorFromFolder(empty)).rejects.toThrow(/all 1 files were skipped/);
    expect(await main(['prior', 'fit', empty, '-o', out])).toBe(1);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(outs).filter((f) => f.includes('empty.safetensors'))).toEqual([]); // no temp file either
  });
});
