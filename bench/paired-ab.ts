// The ViT-B/32 forward + pixel-gradient step of another checkout against this one, paired in one
// process: both graphs' sessions alternate in rounds, so each round's ratio sees the same background
// load (runs minutes apart on these shared machines differ by ±5 %, more than most graph changes).
// Run: git worktree add /tmp/base <commit> && ln -s "$PWD/node_modules" /tmp/base/node_modules
//      node --import tsx bench/paired-ab.ts --base /tmp/base [--views 8] [--rounds 21] [--threads 2]
// Prints each side's median ms/step and the median per-round ratio this/base (each round runs
// base, this, this, base), then one JSON line. The same ratio is also given in process CPU time
// (user + system, all of onnxruntime's threads): on a machine whose other tenants take the cores
// for seconds at a time, wall time mostly measures the wait, CPU time much less so.
// --kernels: both sessions also run under onnxruntime's profiler, and each side's kernel time is
// summed by op type from every node's median over the rounds (a node slowed by another tenant in a
// few rounds does not move its median): where a change's time went, on a noisy machine.

import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
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
  console.error('usage: bench/paired-ab.ts --base DIR [--views N] [--rounds N] [--threads N] [--kernels]  (DIR: another checkout with node_modules)');
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
const kernels = process.argv.includes('--kernels');
const profileDir = kernels ? mkdtempSync(join(tmpdir(), 'clipag-paired-')) : '';
const profiled = (side: string) => (kernels ? { ...options, profileFilePrefix: join(profileDir, side) } : options);
const base = { session: await createSession(baseCodec.encodeModel(baseBench.caseGraph(c)), profiled('base')), feeds: baseBench.caseFeeds(c) };
const self = { session: await createSession(encodeModel(caseGraph(c)), profiled('this')), feeds: caseFeeds(c) };
const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.floor(q * (xs.length - 1))]!;
/** One step: wall milliseconds, and CPU milliseconds (user + system, every thread of the process). */
const time = async (s: { session: EngineSession; feeds: ReturnType<typeof caseFeeds> }) => {
  const c0 = process.cpuUsage();
  const t = performance.now();
  await s.session.run(s.feeds);
  const ms = performance.now() - t;
  const c = process.cpuUsage(c0);
  return { ms, cpu: (c.user + c.system) / 1000 };
};
for (let i = 0; i < 3; i++) await time(base), await time(self); // warm-up: onnxruntime's first runs are slow

// Each round runs base, this, this, base: whichever session runs first in a pair gains a few per cent
// (measured: 3–4 % at 8 views, as large as the changes this tool is for), so every round holds both
// orders and its ratio is (this₁ + this₂) / (base₁ + base₂). The order effect is reported too.
const baseMs: number[] = [], selfMs: number[] = [], ratios: number[] = [], firstGain: number[] = [], cpuRatios: number[] = [];
// Every single run, for the low quantiles: interference only ever adds time, so each side's fastest
// runs are the ones least disturbed by the machine's other tenants.
const baseRuns: number[] = [], selfRuns: number[] = [];
for (let r = 0; r < rounds; r++) {
  const tb1 = await time(base), ts1 = await time(self), ts2 = await time(self), tb2 = await time(base);
  const [b1, s1, s2, b2] = [tb1.ms, ts1.ms, ts2.ms, tb2.ms];
  baseMs.push((b1 + b2) / 2), selfMs.push((s1 + s2) / 2), ratios.push((s1 + s2) / (b1 + b2));
  baseRuns.push(b1, b2), selfRuns.push(s1, s2);
  cpuRatios.push((ts1.cpu + ts2.cpu) / (tb1.cpu + tb2.cpu));
  // How much faster a session runs first in its pair than second: base led in the first pair, this in the second.
  firstGain.push(Math.sqrt((b1 / b2) * (s2 / s1)));
  console.log(`round ${r + 1}/${rounds}: base ${b1.toFixed(1)} / ${b2.toFixed(1)} ms, this ${s1.toFixed(1)} / ${s2.toFixed(1)} ms, ratio ${((s1 + s2) / (b1 + b2)).toFixed(3)} (CPU time ${cpuRatios[r]!.toFixed(3)})`);
}
const out = {
  views, rounds, threads,
  base_ms: +median(baseMs).toFixed(1),
  this_ms: +median(selfMs).toFixed(1),
  ratio_this_over_base: r3(median(ratios)),
  ratio_min: r3(Math.min(...ratios)),
  ratio_max: r3(Math.max(...ratios)),
  rounds_faster: ratios.filter((x) => x < 1).length,
  // The fastest run and the fastest quarter of runs of each side (least disturbed), this/base.
  min_ratio: r3(Math.min(...selfRuns) / Math.min(...baseRuns)),
  p25_ratio: r3(quantile(selfRuns, 0.25) / quantile(baseRuns, 0.25)),
  cpu_ratio_this_over_base: r3(median(cpuRatios)),
  cpu_rounds_faster: cpuRatios.filter((x) => x < 1).length,
  // Below 1: the session that runs first in a pair is faster (the ratio above cancels it).
  order_effect: r3(median(firstGain)),
};
console.log(`median: base ${out.base_ms} ms, this ${out.this_ms} ms, this/base ${out.ratio_this_over_base} (rounds ${out.ratio_min}–${out.ratio_max}, ${out.rounds_faster}/${rounds} faster); CPU time this/base ${out.cpu_ratio_this_over_base} (${out.cpu_rounds_faster}/${rounds} faster); fastest runs this/base ${out.min_ratio}, 25th percentiles ${out.p25_ratio}; order effect ${out.order_effect}`);

/** Per op type: the sum over its nodes of each node's median kernel ms over the timed runs. */
function kernelMs(side: string): Map<string, number> {
  const file = readdirSync(profileDir).find((f) => f.startsWith(side) && f.endsWith('.json'));
  if (!file) throw new Error(`onnxruntime wrote no profile for ${side} in ${profileDir}`);
  const events = JSON.parse(readFileSync(join(profileDir, file), 'utf8')) as { cat: string; name: string; ts: number; dur: number; args?: { op_name?: string } }[];
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const start = runs[3]!.ts; // after the three warm-up runs
  const perNode = new Map<string, { op: string; ms: number[] }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time') || e.ts < start) continue;
    const n = perNode.get(e.name) ?? { op: e.args?.op_name ?? '?', ms: [] };
    n.ms.push(e.dur / 1000);
    perNode.set(e.name, n);
  }
  const byOp = new Map<string, number>();
  for (const { op, ms } of perNode.values()) byOp.set(op, (byOp.get(op) ?? 0) + median(ms));
  return byOp;
}
let kernelTotals: { base_kernel_ms: number; this_kernel_ms: number } | undefined;
if (kernels) {
  await base.session.release(), await self.session.release(); // writes the profiles
  const kb = kernelMs('base'), ks = kernelMs('this');
  rmSync(profileDir, { recursive: true, force: true });
  const total = (m: Map<string, number>) => [...m.values()].reduce((a, v) => a + v, 0);
  kernelTotals = { base_kernel_ms: +total(kb).toFixed(1), this_kernel_ms: +total(ks).toFixed(1) };
  console.log(`kernel ms per step (sum of per-node medians): base ${kernelTotals.base_kernel_ms}, this ${kernelTotals.this_kernel_ms}, this/base ${r3(total(ks) / total(kb))}`);
  const ops = [...new Set([...kb.keys(), ...ks.keys()])].sort((a, b) => Math.max(kb.get(b) ?? 0, ks.get(b) ?? 0) - Math.max(kb.get(a) ?? 0, ks.get(a) ?? 0));
  for (const op of ops.slice(0, 16)) console.log(`  ${op.padEnd(22)} base ${(kb.get(op) ?? 0).toFixed(1).padStart(8)}  this ${(ks.get(op) ?? 0).toFixed(1).padStart(8)}`);
}
console.log(JSON.stringify({ ...out, ...kernelTotals }));
