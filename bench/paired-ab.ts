// The ViT-B/32 forward + pixel-gradient step of another checkout against this one, paired in one
// process: both graphs' sessions alternate in rounds, so each round's ratio sees the same background
// load (runs minutes apart on these shared machines differ by ±5 %, more than most graph changes).
// Run: git worktree add /tmp/base <commit> && ln -s "$PWD/node_modules" /tmp/base/node_modules
//      node --import tsx bench/paired-ab.ts --base /tmp/base [--views 8] [--rounds 21] [--threads 2]
// Prints each side's median ms/step and the median per-round ratio this/base (each round runs
// base, this, this, base), then one JSON line.

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { caseFeeds, caseGraph, type EngineCase } from './engine.ts';
import { encodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import { createSession, type EngineSession } from '../gpu-worker/engine/runtime/session.ts';
import { median, r3 } from './common.ts';

const arg = (name: string, def?: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const baseDir = arg('base');
if (!baseDir) {
  console.error('usage: bench/paired-ab.ts --base DIR [--views N] [--rounds N] [--threads N]  (DIR: another checkout with node_modules)');
  process.exit(2);
}
const views = Number(arg('views', '8'));
const rounds = Number(arg('rounds', '21'));
const threads = Number(arg('threads', '2'));
if (![views, rounds, threads].every((n) => Number.isInteger(n) && n > 0)) {
  console.error('--views, --rounds and --threads take positive integers');
  process.exit(2);
}

const at = (path: string) => import(pathToFileURL(resolve(baseDir, path)).href);
const baseBench = await at('bench/engine.ts');
const baseCodec = await at('gpu-worker/engine/onnx/codec.ts');
const c: Pick<EngineCase, 'preset' | 'views' | 'mode'> = { preset: 'ViT-B-32', views, mode: 'fwdbwd' };
const options = { intraOpThreads: threads, graphOptimizationLevel: 'all' as const };
const base = { session: await createSession(baseCodec.encodeModel(baseBench.caseGraph(c)), options), feeds: baseBench.caseFeeds(c) };
const self = { session: await createSession(encodeModel(caseGraph(c)), options), feeds: caseFeeds(c) };
const time = async (s: { session: EngineSession; feeds: ReturnType<typeof caseFeeds> }) => {
  const t = performance.now();
  await s.session.run(s.feeds);
  return performance.now() - t;
};
for (let i = 0; i < 3; i++) await time(base), await time(self); // warm-up: onnxruntime's first runs are slow

// Each round runs base, this, this, base: whichever session runs first in a pair gains a few per cent
// (measured: 3–4 % at 8 views, as large as the changes this tool is for), so every round holds both
// orders and its ratio is (this₁ + this₂) / (base₁ + base₂). The order effect is reported too.
const baseMs: number[] = [], selfMs: number[] = [], ratios: number[] = [], firstGain: number[] = [];
for (let r = 0; r < rounds; r++) {
  const b1 = await time(base), s1 = await time(self), s2 = await time(self), b2 = await time(base);
  baseMs.push((b1 + b2) / 2), selfMs.push((s1 + s2) / 2), ratios.push((s1 + s2) / (b1 + b2));
  // How much faster a session runs first in its pair than second: base led in the first pair, this in the second.
  firstGain.push(Math.sqrt((b1 / b2) * (s2 / s1)));
  console.log(`round ${r + 1}/${rounds}: base ${b1.toFixed(1)} / ${b2.toFixed(1)} ms, this ${s1.toFixed(1)} / ${s2.toFixed(1)} ms, ratio ${((s1 + s2) / (b1 + b2)).toFixed(3)}`);
}
const out = {
  views, rounds, threads,
  base_ms: +median(baseMs).toFixed(1),
  this_ms: +median(selfMs).toFixed(1),
  ratio_this_over_base: r3(median(ratios)),
  ratio_min: r3(Math.min(...ratios)),
  ratio_max: r3(Math.max(...ratios)),
  // Below 1: the session that runs first in a pair is faster (the ratio above cancels it).
  order_effect: r3(median(firstGain)),
};
console.log(`median: base ${out.base_ms} ms, this ${out.this_ms} ms, this/base ${out.ratio_this_over_base} (rounds ${out.ratio_min}–${out.ratio_max}); order effect ${out.order_effect}`);
console.log(JSON.stringify(out));
