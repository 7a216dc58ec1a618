// Quick tokenizer measurements (not a test): build, load, encode throughput.
// Usage: node --import tsx bench/tokenizer.ts [path/to/bpe_simple_vocab_16e6.txt.gz]
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildClipTokenizerJson, writeClipTokenizerJson } from '../gpu-worker/engine/clip/tokenizer-json.ts';
import { TextTokenizer } from '../gpu-worker/engine/clip/tokenizer.ts';

const vocab = process.argv[2] ?? resolve(dirname(fileURLToPath(import.meta.url)), '../../shared/data/clip-reference/bpe_simple_vocab_16e6.txt.gz');
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const dir = mkdtempSync(join(tmpdir(), 'clipag-tokbench-'));
const out = join(dir, 'tokenizer.json');

let t0 = process.hrtime.bigint();
buildClipTokenizerJson(vocab);
const buildMs = ms(t0);
t0 = process.hrtime.bigint();
writeClipTokenizerJson(vocab, out);
const buildWriteMs = ms(t0);
t0 = process.hrtime.bigint();
const tok = TextTokenizer.fromFile(out);
const loadMs = ms(t0);

const base = [
  'a photo of a cat', 'a diagram of a red circle', 'two dogs playing in the snow!',
  'an oil painting of a lighthouse at dusk, dramatic clouds, trending on artstation',
  'café 赤い円 🙂', 'a watercolor of Ångström’s laboratory with “quotes” &amp; html',
  'a minimalist logo for a coffee shop, flat vector, pastel colours',
];
// Distinct texts so the BPE word cache does not make every call a hit.
const texts = Array.from({ length: 20000 }, (_, i) => `${base[i % base.length]} number ${i} variant${i % 977}`);
t0 = process.hrtime.bigint();
for (const t of texts) tok.encode(t);
const coldMs = ms(t0);
t0 = process.hrtime.bigint();
for (const t of texts) tok.encode(t);
const warmMs = ms(t0);
t0 = process.hrtime.bigint();
for (let i = 0; i < texts.length; i += 64) tok.encodeBatch(texts.slice(i, i + 64));
const batchMs = ms(t0);

console.log(JSON.stringify({
  node: process.version,
  tokenizerJsonBytes: statSync(out).size,
  buildMs: +buildMs.toFixed(1),
  buildAndWriteMs: +buildWriteMs.toFixed(1),
  loadMs: +loadMs.toFixed(1),
  texts: texts.length,
  encodeTextsPerSecFirstPass: Math.round(texts.length / (coldMs / 1000)),
  encodeTextsPerSecSecondPass: Math.round(texts.length / (warmMs / 1000)),
  encodeBatch64TextsPerSec: Math.round(texts.length / (batchMs / 1000)),
}, null, 2));
rmSync(dir, { recursive: true, force: true });
