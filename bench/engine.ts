// Gradient-engine benchmark (issue 2, item 8). Not a test. Run: npm run bench:engine
//
// Measures, on 2 intra-op threads (CPU EP, float32, graph optimization level 'all'):
//   - ms/step (median after warm-up) and process peak RSS for the image tower forward-only
//     (imageEmbedGraph) and forward + pixel gradient of Σ w·cos (imageGradientGraph), at ViT-B/32 dims
//     with random weights (8 and 32 views of 224×224) and for PRESETS.tiny;
//   - the engine's FLOP rate (MatMul/Gemm/Conv FLOPs counted by walking the emitted graph with static
//     shapes, divided by the time) against the step's own MLP products run alone, alternating with
//     the step in rounds of one process → flop_efficiency, the median of the per-round ratios (a 2048³
//     MatMul in its own process gives the separate-process figures, flop_efficiency_separate_processes
//     and flop_efficiency_v32, which load that moved between them distorts);
//   - the same ViT-B/32 8-view step in PyTorch eager (bench/torch_peer.py, Debian python3-torch, 2
//     threads, OpenBLAS-OpenMP) when it is installed → ratio_vs_torch = engine ms / torch ms.
// Each configuration runs in its own child process, so its peak RSS is its own (the figure includes the
// random weights held in JS, as the engine holds them too).
// Env: BENCH_QUICK=1 for fewer repetitions; BENCH_THREADS (default 2).
// The last line printed is one JSON object.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PRESETS, type PresetName } from '../gpu-worker/engine/clip/arch.ts';
import { OPENAI_MEAN, OPENAI_STD } from '../gpu-worker/engine/clip/bundle.ts';
import { imageEmbedGraph, imageGradientGraph } from '../gpu-worker/engine/clip/graphs.ts';
import { GraphBuilder } from '../gpu-worker/engine/onnx/builder.ts';
import { encodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import type { ModelIR, TensorData } from '../gpu-worker/engine/onnx/ir.ts';
import { createSession, type SessionOptions } from '../gpu-worker/engine/runtime/session.ts';
import { BenchRng, graphStats, median, peakRssMb, r1, r3, randomWeights, runChild, spread } from './common.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const THREADS = Number(process.env.BENCH_THREADS ?? 2);
const QUICK = process.env.BENCH_QUICK === '1';

export interface EngineCase {
  kind: 'engine';
  preset: PresetName;
  views: number;
  mode: 'fwd' | 'fwdbwd';
  warmup: number;
  reps: number;
  session?: SessionOptions;
}
interface MatmulCase {
  kind: 'matmul';
  n: number;
  warmup: number;
  reps: number;
}
/**
 * The engine's step and the reference MatMul in one process, run in alternate rounds: each round's
 * ratio of their FLOP rates sees the same background load, so the median of those ratios is the
 * efficiency figure. (Separate processes minutes apart put whatever load each one met into the ratio.)
 */
interface PairedCase {
  kind: 'paired';
  engine: Pick<EngineCase, 'preset' | 'views' | 'mode'>;
  /**
   * The reference: the step's own dominant products, a ViT's MLP without its activation, [m,k]×[k,n]
   * then ×[n,k], `layers` deep in one run (a lone product would be mostly session.run overhead).
   */
  gemm: [number, number, number];
  layers: number;
  warmup: number;
  rounds: number;
}
type Case = EngineCase | MatmulCase | PairedCase;

export interface PairedResult {
  rounds: number;
  /** Per-round efficiency: engine GFLOP/s ÷ reference GFLOP/s in the same round. */
  ratios: number[];
  ratioMedian: number;
  /** Least-disturbed runs of each: engine min-rate ÷ reference min-rate. */
  ratioOfMins: number;
  engineMs: number[];
  matmulMs: number[];
  engineFlops: number;
}

/** `layers` × (activation [m,k] × initializer [k,n] × initializer [n,k]); ORT prepacks the initializers, as it does the engine's weights. */
function mlpChainModel([m, k, n]: [number, number, number], layers: number): { model: ModelIR; feeds: Record<string, TensorData> } {
  const b = new GraphBuilder('mlp_chain');
  let y = b.input('a', 'float32', [m, k]);
  const rng = new BenchRng(5);
  for (let l = 0; l < layers; l++) {
    // Scaled so that values stay near 1 through the chain (no overflow, no denormals).
    const up = b.initializer(`up${l}`, { dtype: 'float32', dims: [k, n], data: rng.fillNormal(new Float32Array(k * n), 1 / Math.sqrt(k)) });
    const down = b.initializer(`down${l}`, { dtype: 'float32', dims: [n, k], data: rng.fillNormal(new Float32Array(n * k), 1 / Math.sqrt(n)) });
    y = b.op1('MatMul', [b.op1('MatMul', [y, up]), down]);
  }
  b.output(b.op1('Identity', [y], {}, { outputNames: ['y'] }));
  return { model: b.toModel(), feeds: { a: { dtype: 'float32', dims: [m, k], data: new BenchRng(6).fillNormal(new Float32Array(m * k), 1) } } };
}

async function runPaired(c: PairedCase): Promise<PairedResult> {
  const engineModel = caseGraph(c.engine);
  const engineFlops = graphStats(engineModel).matmulFlops;
  const engine = await createSession(encodeModel(engineModel), { intraOpThreads: THREADS });
  const mm = mlpChainModel(c.gemm, c.layers);
  const ref = await createSession(encodeModel(mm.model), { intraOpThreads: THREADS });
  const feeds = caseFeeds(c.engine);
  await timeRuns(() => engine.run(feeds), c.warmup, 0);
  await timeRuns(() => ref.run(mm.feeds), c.warmup, 0);
  const engineMs: number[] = [], matmulMs: number[] = [], ratios: number[] = [];
  const mmFlops = 2 * 2 * c.gemm[0] * c.gemm[1] * c.gemm[2] * c.layers;
  for (let i = 0; i < c.rounds; i++) {
    // A reference run on each side of the step: their mean is the round's reference rate.
    const [before] = await timeRuns(() => ref.run(mm.feeds), 0, 1);
    const [e] = await timeRuns(() => engine.run(feeds), 0, 1);
    const [after] = await timeRuns(() => ref.run(mm.feeds), 0, 1);
    const m = (before! + after!) / 2;
    engineMs.push(r1(e!));
    matmulMs.push(r1(m));
    ratios.push(r3(engineFlops / e! / (mmFlops / m)));
  }
  await engine.release();
  await ref.release();
  return {
    rounds: c.rounds, ratios, ratioMedian: r3(median(ratios)),
    ratioOfMins: r3(engineFlops / Math.min(...engineMs) / (mmFlops / Math.min(...matmulMs))),
    engineMs, matmulMs, engineFlops,
  };
}

export interface CaseResult {
  ms: number;
  runs: number[];
  spread: number;
  matmulFlops: number;
  gflops: number;
  nodes: number;
  buildMs: number;
  loadMs: number;
  peakRssMb: number;
  initializerMb: number;
  extra?: Record<string, unknown>;
}

/** The graph of a case (also used by bench/profile.ts). */
export function caseGraph(c: Pick<EngineCase, 'preset' | 'views' | 'mode'>, seed = 1234): ModelIR {
  const arch = PRESETS[c.preset];
  const src = { arch, weights: randomWeights(arch, seed), mean: OPENAI_MEAN, std: OPENAI_STD };
  return c.mode === 'fwd' ? imageEmbedGraph(src, c.views) : imageGradientGraph(src, c.views);
}

/** Seeded feeds for a case's graph. */
export function caseFeeds(c: Pick<EngineCase, 'preset' | 'views' | 'mode'>): Record<string, TensorData> {
  const arch = PRESETS[c.preset];
  const R = arch.imageResolution, E = arch.embedDim, V = c.views;
  const rng = new BenchRng(99);
  const feeds: Record<string, TensorData> = {
    pixels: { dtype: 'float32', dims: [V, 3, R, R], data: rng.fillUniform(new Float32Array(V * 3 * R * R)) },
  };
  if (c.mode === 'fwdbwd') {
    const t = rng.fillNormal(new Float32Array(V * E), 1);
    for (let v = 0; v < V; v++) {
      let n = 0;
      for (let e = 0; e < E; e++) n += t[v * E + e] ** 2;
      for (let e = 0; e < E; e++) t[v * E + e] /= Math.sqrt(n);
    }
    feeds.targets = { dtype: 'float32', dims: [V, E], data: t };
    feeds.weights = { dtype: 'float32', dims: [V], data: Float32Array.from({ length: V }, (_, i) => (i % 2 ? 5 : 1)) };
  }
  return feeds;
}

async function timeRuns(run: () => Promise<unknown>, warmup: number, reps: number): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await run();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await run();
    ts.push(performance.now() - t0);
  }
  return ts;
}

async function runCase(c: EngineCase | MatmulCase): Promise<CaseResult> {
  const t0 = performance.now();
  let model: ModelIR;
  let feeds: Record<string, TensorData>;
  if (c.kind === 'matmul') {
    const b = new GraphBuilder('matmul');
    const a = b.input('a', 'float32', [c.n, c.n]);
    const x = b.input('b', 'float32', [c.n, c.n]);
    const w = b.initializer('w', { dtype: 'float32', dims: [c.n, c.n], data: new BenchRng(5).fillNormal(new Float32Array(c.n * c.n), 1) });
    b.output(b.op1('MatMul', [a, x], {}, { outputNames: ['act_x_act'] }));
    b.output(b.op1('MatMul', [a, w], {}, { outputNames: ['act_x_weight'] }));
    model = b.toModel();
    const rng = new BenchRng(6);
    feeds = {
      a: { dtype: 'float32', dims: [c.n, c.n], data: rng.fillNormal(new Float32Array(c.n * c.n), 1) },
      b: { dtype: 'float32', dims: [c.n, c.n], data: rng.fillNormal(new Float32Array(c.n * c.n), 1) },
    };
  } else {
    model = caseGraph(c);
    feeds = caseFeeds(c);
  }
  const stats = graphStats(model);
  const bytes = encodeModel(model);
  const buildMs = performance.now() - t0;
  const t1 = performance.now();
  const s = c.kind === 'engine' ? await createSession(bytes, { intraOpThreads: THREADS, ...c.session }) : { release: async () => {}, run: async () => ({}) };
  const loadMs = performance.now() - t1;
  let runs: number[];
  let flops = stats.matmulFlops;
  const extra: Record<string, unknown> = {};
  if (c.kind === 'matmul') {
    // Each product in its own session: activation × activation, and activation × initializer (which ORT
    // prepacks, as it does the engine's weights).
    const one = 2 * c.n ** 3;
    const only = (out: string) => {
      const m2 = { ...model, outputs: model.outputs.filter((o) => o.name === out), nodes: model.nodes.filter((n) => n.outputs[0] === out) };
      if (out === 'act_x_act') m2.initializers = new Map();
      else m2.inputs = m2.inputs.filter((i) => i.name === 'a');
      return m2;
    };
    const timeOne = async (out: string) => {
      const s2 = await createSession(encodeModel(only(out)), { intraOpThreads: THREADS });
      const f2 = out === 'act_x_act' ? feeds : { a: feeds.a };
      const r = await timeRuns(() => s2.run(f2), c.warmup, c.reps);
      await s2.release();
      return r;
    };
    const rAct = await timeOne('act_x_act');
    const rW = await timeOne('act_x_weight');
    extra.act_x_act_gflops = r1(one / median(rAct) / 1e6);
    extra.act_x_weight_gflops = r1(one / median(rW) / 1e6);
    runs = median(rAct) <= median(rW) ? rAct : rW; // the faster of the two is the reference rate
    flops = one;
  } else {
    runs = await timeRuns(() => s.run(feeds), c.warmup, c.reps);
  }
  await s.release();
  const ms = median(runs);
  return {
    ms: r1(ms), runs: runs.map(r1), spread: r3(spread(runs)), matmulFlops: flops, gflops: r1(flops / ms / 1e6), nodes: stats.nodes,
    buildMs: Math.round(buildMs), loadMs: Math.round(loadMs), peakRssMb: Math.round(peakRssMb()),
    initializerMb: r1(stats.initializerBytes / 2 ** 20), extra,
  };
}

// ---------------------------------------------------------------------------------------------
// PyTorch peer

export function torchEnv(): Record<string, string> | undefined {
  if (!existsSync('/usr/bin/python3')) return undefined;
  const dirs = ['/usr/lib/x86_64-linux-gnu/openblas-openmp', '/usr/lib/aarch64-linux-gnu/openblas-openmp'].filter(existsSync);
  const env: Record<string, string> = { OMP_NUM_THREADS: String(THREADS) };
  if (dirs.length) env.LD_LIBRARY_PATH = [...dirs, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
  return env;
}

export interface TorchResult {
  available: boolean;
  reason?: string;
  ms?: number;
  fwd_ms?: number;
  runs?: number[];
  spread?: number;
  torch?: string;
  blas?: string;
  threads?: number;
}

export async function runTorch(views: number, reps: number): Promise<TorchResult> {
  const env = torchEnv();
  if (!env) return { available: false, reason: '/usr/bin/python3 not found' };
  return new Promise((resolve) => {
    const p = spawn('/usr/bin/python3', [join(HERE, 'torch_peer.py'), '--views', String(views), '--reps', String(reps), '--threads', String(THREADS)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', (e) => resolve({ available: false, reason: e.message }));
    p.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      try {
        const j = JSON.parse(last) as TorchResult;
        resolve(j.available === false ? j : { ...j, available: true });
      } catch {
        resolve({ available: false, reason: `torch peer exited ${code}: ${(err || out).trim().split('\n').slice(-3).join(' | ')}` });
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------

function row(cells: (string | number)[], widths: number[]): string {
  return cells.map((c, i) => String(c).padStart(widths[i])).join('  ');
}

async function main(): Promise<void> {
  const childIdx = process.argv.indexOf('--child');
  if (childIdx >= 0) {
    const c = JSON.parse(process.argv[childIdx + 1]) as Case;
    console.log(JSON.stringify(c.kind === 'paired' ? await runPaired(c) : await runCase(c)));
    return;
  }
  const q = (n: number) => (QUICK ? Math.max(3, Math.ceil(n / 2)) : n);
  const self = fileURLToPath(import.meta.url);
  const cases: [string, Case][] = [
    ['matmul 2048³', { kind: 'matmul', n: 2048, warmup: 2, reps: q(9) }],
    ['ViT-B/32 v8 fwd', { kind: 'engine', preset: 'ViT-B-32', views: 8, mode: 'fwd', warmup: 2, reps: q(7) }],
    ['ViT-B/32 v8 fwd+grad', { kind: 'engine', preset: 'ViT-B-32', views: 8, mode: 'fwdbwd', warmup: 2, reps: q(7) }],
    ['ViT-B/32 v32 fwd', { kind: 'engine', preset: 'ViT-B-32', views: 32, mode: 'fwd', warmup: 1, reps: q(5) }],
    ['ViT-B/32 v32 fwd+grad', { kind: 'engine', preset: 'ViT-B-32', views: 32, mode: 'fwdbwd', warmup: 1, reps: q(5) }],
    ['matmul 2048³ (again)', { kind: 'matmul', n: 2048, warmup: 2, reps: q(9) }],
    ['tiny v8 fwd', { kind: 'engine', preset: 'tiny', views: 8, mode: 'fwd', warmup: 5, reps: q(41) }],
    ['tiny v8 fwd+grad', { kind: 'engine', preset: 'tiny', views: 8, mode: 'fwdbwd', warmup: 5, reps: q(41) }],
    ['tiny v32 fwd', { kind: 'engine', preset: 'tiny', views: 32, mode: 'fwd', warmup: 5, reps: q(41) }],
    ['tiny v32 fwd+grad', { kind: 'engine', preset: 'tiny', views: 32, mode: 'fwdbwd', warmup: 5, reps: q(41) }],
  ];
  console.log(`clipag engine benchmark — CPU EP, float32, ${THREADS} intra-op threads, graph optimization 'all', node ${process.version}`);
  console.log('(medians after warm-up; spread = (max−min)/median over the timed runs; each row is its own process)\n');
  const W = [22, 10, 8, 9, 8, 9, 8, 9, 9];
  console.log(row(['case', 'ms/step', 'spread', 'GFLOP', 'GFLOP/s', 'peakRSS', 'nodes', 'build ms', 'load ms'], W));
  const res = new Map<string, CaseResult>();
  for (const [name, c] of cases as Array<[string, EngineCase | MatmulCase]>) {
    const r = await runChild<CaseResult>(self, c);
    res.set(name, r);
    console.log(row([name, r.ms, r.spread, r1(r.matmulFlops / 1e9), r.gflops, `${r.peakRssMb}MB`, r.nodes, r.buildMs, r.loadMs], W));
    if (name === 'ViT-B/32 v8 fwd+grad') {
      // The peer runs right after the engine's 8-view step, so both see similar background load.
      const t = await runTorch(8, q(7));
      res.set('torch', { ms: t.ms ?? NaN } as CaseResult);
      torch = t;
      if (t.available) {
        console.log(row(['torch eager v8 fwd+grad', r1(t.ms!), t.spread ?? '', r1(r.matmulFlops / 1e9), r1(r.matmulFlops / t.ms! / 1e6), '', '', '', ''], W));
        console.log(row(['torch eager v8 fwd', r1(t.fwd_ms!), '', '', '', '', '', '', ''], W));
      } else console.log(`  torch peer: not available (${t.reason}) → null`);
      // Bracket the peer: the engine's step again, and the ratio uses the mean of the two engine medians.
      const again = await runChild<CaseResult>(self, c);
      res.set('ViT-B/32 v8 fwd+grad (again)', again);
      console.log(row(['ViT-B/32 v8 fwd+grad', again.ms, again.spread, r1(again.matmulFlops / 1e9), again.gflops, `${again.peakRssMb}MB`, again.nodes, again.buildMs, again.loadMs], W));
    }
  }
  // Background load on this shared machine moves every figure: the reference MatMul is measured twice
  // (first and mid-run) and the engine's 8-view step twice (around the torch peer); means are used.
  const mm0 = res.get('matmul 2048³')!, mm1 = res.get('matmul 2048³ (again)')!;
  const mm = { ...mm0, gflops: r1((mm0.gflops + mm1.gflops) / 2) };
  const v8a = res.get('ViT-B/32 v8 fwd+grad')!, v8b = res.get('ViT-B/32 v8 fwd+grad (again)')!;
  const v8ms = r1((v8a.ms + v8b.ms) / 2);
  const v8 = { ...v8a, ms: v8ms, gflops: r1(v8a.matmulFlops / v8ms / 1e6) };
  const v8f = res.get('ViT-B/32 v8 fwd')!;
  const v32 = res.get('ViT-B/32 v32 fwd+grad')!;
  const v32f = res.get('ViT-B/32 v32 fwd')!;
  const tiny = res.get('tiny v8 fwd+grad')!;
  console.log(`\nmatmul reference: run 1 act×act ${mm0.extra?.act_x_act_gflops} / act×initializer ${mm0.extra?.act_x_weight_gflops} GFLOP/s; run 2 ${mm1.extra?.act_x_act_gflops} / ${mm1.extra?.act_x_weight_gflops} GFLOP/s → mean of the faster forms ${mm.gflops} GFLOP/s used`);
  console.log(`engine v8 fwd+grad: ${v8a.ms} ms before the torch peer, ${v8b.ms} ms after → ${v8ms} ms used`);
  console.log(`fwd+grad / fwd: ViT-B/32 v8 ${r3(v8.ms / v8f.ms)}, v32 ${r3(v32.ms / v32f.ms)}; per view (v32 fwd+grad) ${r1(v32.ms / 32)} ms`);
  if (torch?.available) console.log(`torch: ${torch.torch}, BLAS ${torch.blas}, ${torch.threads} threads; torch fwd+grad / fwd ${r3(torch.ms! / torch.fwd_ms!)}`);
  // The efficiency figure: the 8-view step against the reference in alternate rounds of one process.
  const paired = await runChild<PairedResult>(self, { kind: 'paired', engine: { preset: 'ViT-B-32', views: 8, mode: 'fwdbwd' }, gemm: [400, 768, 3072], layers: 12, warmup: 2, rounds: q(9) } satisfies PairedCase);
  console.log(`paired rounds (ViT-B/32 v8 fwd+grad between runs of its own MLP products, 12 × (400×768 · 768×3072 · 3072×768), one process): step ms [${paired.engineMs.join(', ')}], reference ms [${paired.matmulMs.join(', ')}]`);
  console.log(`  efficiency per round [${paired.ratios.join(', ')}] → median ${paired.ratioMedian}; least-disturbed runs of each ${paired.ratioOfMins}; separate processes (above) ${r3(v8.gflops / mm.gflops)}`);
  const eff = paired.ratioMedian;
  const line = {
    vitb32_v8_ms: v8.ms,
    vitb32_v8_fwd_ms: v8f.ms,
    vitb32_v32_ms: v32.ms,
    vitb32_v32_fwd_ms: v32f.ms,
    tiny_ms: tiny.ms,
    tiny_fwd_ms: res.get('tiny v8 fwd')!.ms,
    torch_vitb32_v8_ms: torch?.available ? r1(torch.ms!) : null,
    ratio_vs_torch: torch?.available ? r3(v8.ms / torch.ms!) : null,
    flop_efficiency: r3(eff),
    flop_efficiency_of_mins: paired.ratioOfMins,
    flop_efficiency_separate_processes: r3(v8.gflops / mm.gflops),
    flop_efficiency_v32: r3(v32.gflops / mm.gflops),
    matmul_gflops: mm.gflops,
    engine_gflops: v8.gflops,
    peak_rss_mb: Math.max(...[...res.values()].map((r) => r.peakRssMb ?? 0).filter(Number.isFinite)),
    vitb32_v8_peak_rss_mb: v8.peakRssMb,
    vitb32_v32_peak_rss_mb: v32.peakRssMb,
    threads: THREADS,
  };
  console.log(`targets: ratio_vs_torch ≤ 0.5 → ${line.ratio_vs_torch ?? 'n/a'}; flop_efficiency ≥ 0.85 → ${line.flop_efficiency}`);
  console.log(JSON.stringify(line));
}

let torch: TorchResult | undefined;

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
