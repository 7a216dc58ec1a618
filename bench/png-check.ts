// What the PNG check costs on a file of many tiny chunks, against an ordinary image. Not a test (the
// test in test/shared/png-check.test.ts proves the walk stops at PNG_MAX_CHUNKS by counting the words
// read; this is the time that saves). Run: node --import tsx bench/png-check.ts
//
// Files: ~700 000 empty IDAT chunks in 8 MiB (before the bound: 3.5 s in the API's check, 11 s in the
// engine's decode), the same with tEXt chunks, and a 512×512 noise image as fast-png writes it (one IDAT).
// Per file and path (the API's async check, the sync check, the engine's decodeImage): the median and the
// min ms over BENCH_RUNS runs (default 7). The last line printed is one JSON object.
import { deflateSync } from 'node:zlib';
import { checkPngFile, checkPngFileSync, PNG_MAX_CHUNKS } from '../shared/png-check.ts';
import { decodeImage, encodePng, noiseImage } from '../gpu-worker/engine/synth/image.ts';
import { createRng } from '../gpu-worker/engine/synth/rng.ts';
import { pngChunk } from '../test/helpers/png.ts';
import { median, r3 } from './common.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function manyChunks(kind: 'IDAT' | 'tEXt'): Buffer {
  const ihdr = Buffer.from([0, 0, 0, 64, 0, 0, 0, 64, 8, 2, 0, 0, 0]);
  const rows = pngChunk('IDAT', deflateSync(Buffer.alloc((64 * 3 + 1) * 64)));
  const n = Math.floor((8 << 20) / 12) - 10;
  const filler = pngChunk(kind, new Uint8Array(0));
  const middle = kind === 'IDAT' ? [rows, ...Array<Buffer>(n).fill(filler)] : [...Array<Buffer>(n).fill(filler), rows];
  return Buffer.concat([SIGNATURE, pngChunk('IHDR', ihdr), ...middle, pngChunk('IEND', new Uint8Array(0))]);
}

const files: Record<string, Uint8Array> = {
  idat_chunks_8mib: manyChunks('IDAT'),
  text_chunks_8mib: manyChunks('tEXt'),
  noise_512: encodePng(noiseImage(512, 512, createRng(1))),
};
const paths: Record<string, (bytes: Uint8Array) => Promise<boolean>> = {
  api: async (bytes) => (await checkPngFile(bytes)).ok,
  sync: async (bytes) => checkPngFileSync(bytes).ok,
  engine: async (bytes) => {
    try {
      decodeImage(bytes);
      return true;
    } catch {
      return false;
    }
  },
};

const results: Record<string, Record<string, { accepted: boolean; median_ms: number; min_ms: number }>> = {};
for (const [file, bytes] of Object.entries(files)) {
  results[file] = {};
  for (const [path, run] of Object.entries(paths)) {
    const ms: number[] = [];
    let accepted = false;
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      accepted = await run(bytes);
      ms.push(performance.now() - t);
    }
    results[file]![path] = { accepted, median_ms: r3(median(ms)), min_ms: r3(Math.min(...ms)) };
    console.log(`${file.padEnd(17)} ${path.padEnd(6)} ${accepted ? 'accepted' : 'refused '}  median ${r3(median(ms))} ms  min ${r3(Math.min(...ms))} ms  (${bytes.length} bytes)`);
  }
}
console.log(JSON.stringify({ bench: 'png-check', node: process.version, runs: RUNS, max_chunks: PNG_MAX_CHUNKS, ...results }));
