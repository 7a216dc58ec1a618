// Where the time goes in the ViT-B/32 forward + pixel-gradient step (issue 2 item 8, follow-up).
// Run: node --import tsx bench/profile.ts [--views 8] [--mode fwdbwd|fwd] [--runs 3] [--variants] [--top 20]
//
// 1. Static walk of the emitted graph: op counts, FLOPs, bytes written per op type, activation
//    Transposes, materialized Expands, float64 nodes.
// 2. onnxruntime's own per-node profile (SessionOptions.profileFilePrefix, benchmarks only) of `runs`
//    steps after one warm-up: time by op type, forward vs backward (gradient nodes live under `grad/`),
//    the top nodes, and the MatMul-class kernels' achieved GFLOP/s. Also the op counts of the graph as
//    ORT optimized it (SessionOptions.optimizedModelPath), to see which fusions applied.
// 3. --variants: the same step under graphOptimizationLevel disabled/basic/extended/all and with
//    disablePrepacking, each in its own process, interleaved with a baseline.
// Prints tables, then one JSON line.

import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import { encodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import { createSession, type SessionOptions } from '../gpu-worker/engine/runtime/session.ts';
import { type PresetName } from '../gpu-worker/engine/clip/arch.ts';
import { type CaseResult, type EngineCase, caseFeeds, caseGraph } from './engine.ts';
import { graphStats, median, r1, r3, runChild } from './common.ts';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : def;
};
const VIEWS = Number(arg('views', '8'));
const MODE = arg('mode', 'fwdbwd') as 'fwd' | 'fwdbwd';
const RUNS = Number(arg('runs', '3'));
const TOP = Number(arg('top', '20'));
const PRESET = arg('preset', 'ViT-B-32') as PresetName;
const THREADS = Number(process.env.BENCH_THREADS ?? 2);

interface TraceEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; provider?: string; input_type_shape?: unknown; output_type_shape?: unknown; node_index?: string };
}

const pct = (x: number, tot: number) => `${r1((100 * x) / tot)}%`;

export async function profileStep(opts: { preset: PresetName; views: number; mode: 'fwd' | 'fwdbwd'; runs: number; session?: SessionOptions }) {
  const c = { preset: opts.preset, views: opts.views, mode: opts.mode };
  const model = caseGraph(c);
  const stats = graphStats(model);
  const feeds = caseFeeds(c);
  const dir = mkdtempSync(join(tmpdir(), 'clipag-prof-'));
  const optPath = join(dir, 'optimized.onnx');
  const s = await createSession(encodeModel(model), { intraOpThreads: THREADS, profileFilePrefix: join(dir, 'prof'), optimizedModelPath: optPath, ...opts.session });
  await s.run(feeds);
  const wall: number[] = [];
  for (let i = 0; i < opts.runs; i++) {
    const t0 = performance.now();
    await s.run(feeds);
    wall.push(performance.now() - t0);
  }
  await s.release();
  const file = readdirSync(dir).find((f) => f.startsWith('prof') && f.endsWith('.json'));
  if (!file) throw new Error(`onnxruntime wrote no profile in ${dir}`);
  const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as TraceEvent[];
  let optimizedOps: Record<string, number> = {};
  try {
    const om = decodeModel(readFileSync(optPath));
    for (const n of om.nodes) {
      const k = (n.domain ? `${n.domain}::` : '') + n.op;
      optimizedOps[k] = (optimizedOps[k] ?? 0) + 1;
    }
  } catch (e) {
    optimizedOps = { [`(could not decode: ${(e as Error).message.slice(0, 80)})`]: 0 };
  }
  rmSync(dir, { recursive: true, force: true });

  // Keep node events of the timed runs (after the first model_run ends).
  const runsEv = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const start = runsEv.length > 1 ? runsEv[0].ts + runsEv[0].dur : 0;
  const nodes = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && e.ts >= start);
  const nRuns = Math.max(1, runsEv.length - 1);
  const byOp = new Map<string, { us: number; n: number; fwd: number; bwd: number }>();
  const byNode = new Map<string, { us: number; op: string; shapes: string }>();
  let total = 0, fwdUs = 0, bwdUs = 0;
  for (const e of nodes) {
    const op = e.args?.op_name ?? '?';
    const name = e.name.replace(/_kernel_time$/, '');
    const isBwd = name.includes('grad/');
    const o = byOp.get(op) ?? { us: 0, n: 0, fwd: 0, bwd: 0 };
    o.us += e.dur;
    o.n++;
    if (isBwd) o.bwd += e.dur;
    else o.fwd += e.dur;
    byOp.set(op, o);
    const nd = byNode.get(name) ?? { us: 0, op, shapes: JSON.stringify(e.args?.input_type_shape ?? '').replace(/"float"|"/g, '').slice(0, 120) };
    nd.us += e.dur;
    byNode.set(name, nd);
    total += e.dur;
    if (isBwd) bwdUs += e.dur;
    else fwdUs += e.dur;
  }
  const runMs = median(runsEv.slice(1).map((e) => e.dur / 1000));
  const mmOps = ['MatMul', 'FusedMatMul', 'Gemm', 'Conv', 'ConvTranspose', 'MatMulNBits', 'FusedGemm'];
  const mmUs = [...byOp].filter(([k]) => mmOps.includes(k)).reduce((a, [, v]) => a + v.us, 0) / nRuns;
  return {
    stats, optimizedOps, wall, runMs, nRuns,
    totalMsPerRun: total / nRuns / 1000, fwdMsPerRun: fwdUs / nRuns / 1000, bwdMsPerRun: bwdUs / nRuns / 1000,
    byOp: [...byOp].map(([op, v]) => ({ op, msPerRun: v.us / nRuns / 1000, nodesPerRun: v.n / nRuns, fwdMs: v.fwd / nRuns / 1000, bwdMs: v.bwd / nRuns / 1000 })).sort((a, b) => b.msPerRun - a.msPerRun),
    topNodes: [...byNode].map(([name, v]) => ({ name, op: v.op, msPerRun: v.us / nRuns / 1000, shapes: v.shapes })).sort((a, b) => b.msPerRun - a.msPerRun),
    matmulKernelMs: mmUs / 1000,
    matmulKernelGflops: stats.matmulFlops / (mmUs / 1e6) / 1e9,
  };
}

async function main(): Promise<void> {
  console.log(`profile: ${PRESET} ${VIEWS} views, ${MODE}, ${THREADS} threads, ${RUNS} profiled runs after 1 warm-up\n`);
  const p = await profileStep({ preset: PRESET, views: VIEWS, mode: MODE, runs: RUNS });
  const st = p.stats;
  console.log(`emitted graph: ${st.nodes} nodes, ${r1(st.matmulFlops / 1e9)} GFLOP in MatMul/Gemm/Conv, initializers ${r1(st.initializerBytes / 2 ** 20)} MiB`);
  console.log(`  ops: ${Object.entries(st.opCounts).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}×${v}`).join(' ')}`);
  console.log(`  FLOPs by op: ${Object.entries(st.flopsByOp).map(([k, v]) => `${k} ${r1(v / 1e9)}G`).join(', ')}`);
  console.log(`  activation Transposes: ${st.activationTransposes.count} (${r1(st.activationTransposes.elements / 1e6)} M elements moved); materialized Expands: ${st.expands.count} (${r1(st.expands.elements / 1e6)} M elements); float64 nodes: ${st.float64Nodes}`);
  const ob = Object.entries(st.outBytesByOp).sort((a, b) => b[1] - a[1]).slice(0, 10);
  console.log(`  bytes written per step by op type (top 10): ${ob.map(([k, v]) => `${k} ${r1(v / 2 ** 20)}MiB`).join(', ')}`);
  console.log(`optimized by ORT: ${Object.values(p.optimizedOps).reduce((a, b) => a + b, 0)} nodes: ${Object.entries(p.optimizedOps).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}×${v}`).join(' ')}`);
  console.log(`\nwall per run (incl. profiling overhead): ${p.wall.map(r1).join(', ')} ms; model_run median ${r1(p.runMs)} ms; sum of kernel times ${r1(p.totalMsPerRun)} ms/run`);
  console.log(`forward nodes ${r1(p.fwdMsPerRun)} ms (${pct(p.fwdMsPerRun, p.totalMsPerRun)}), gradient nodes ${r1(p.bwdMsPerRun)} ms (${pct(p.bwdMsPerRun, p.totalMsPerRun)})`);
  console.log(`MatMul-class kernels: ${r1(p.matmulKernelMs)} ms/run (${pct(p.matmulKernelMs, p.totalMsPerRun)}) → ${r1(p.matmulKernelGflops)} GFLOP/s inside those kernels\n`);
  console.log(`${'op'.padEnd(26)}${'ms/run'.padStart(9)}${'share'.padStart(8)}${'nodes'.padStart(7)}${'fwd ms'.padStart(9)}${'grad ms'.padStart(9)}`);
  for (const o of p.byOp.slice(0, 25)) {
    console.log(`${o.op.padEnd(26)}${r1(o.msPerRun).toString().padStart(9)}${pct(o.msPerRun, p.totalMsPerRun).padStart(8)}${String(Math.round(o.nodesPerRun)).padStart(7)}${r1(o.fwdMs).toString().padStart(9)}${r1(o.bwdMs).toString().padStart(9)}`);
  }
  console.log(`\ntop ${TOP} nodes (ms/run, op, input shapes):`);
  for (const n of p.topNodes.slice(0, TOP)) console.log(`  ${r1(n.msPerRun).toString().padStart(7)}  ${n.op.padEnd(18)} ${n.name.slice(0, 70).padEnd(70)} ${n.shapes}`);

  const variants: Record<string, number> = {};
  if (process.argv.includes('--variants')) {
    const engineScript = fileURLToPath(new URL('./engine.ts', import.meta.url));
    const base: Omit<EngineCase, 'session'> = { kind: 'engine', preset: PRESET, views: VIEWS, mode: MODE, warmup: 1, reps: 5 };
    const configs: [string, SessionOptions][] = [
      ['all', {}], ['extended', { graphOptimizationLevel: 'extended' }], ['basic', { graphOptimizationLevel: 'basic' }],
      ['disabled', { graphOptimizationLevel: 'disabled' }], ['all+disablePrepacking', { disablePrepacking: true }],
    ];
    console.log(`\nsession-option variants (${PRESET} v${VIEWS} ${MODE}; own process each; baseline 'all' measured first and last):`);
    const baseRuns: number[] = [];
    for (const [name, so] of [...configs, ['all (again)', {}] as [string, SessionOptions]]) {
      const r = await runChild<CaseResult>(engineScript, { ...base, session: so });
      variants[name] = r.ms;
      if (name.startsWith('all') && !name.includes('Prepacking')) baseRuns.push(r.ms);
      console.log(`  ${name.padEnd(24)} ${String(r.ms).padStart(8)} ms  spread ${r.spread}  peak RSS ${r.peakRssMb} MB  load ${r.loadMs} ms`);
    }
    const bm = median(baseRuns);
    console.log(`  relative to the mean baseline ${r1(bm)} ms: ${configs.slice(1).map(([n]) => `${n} ×${r3(variants[n] / bm)}`).join(', ')}`);
    variants.baseline_median = median(baseRuns);
  }
  console.log(JSON.stringify({
    preset: PRESET, views: VIEWS, mode: MODE, model_run_ms: r1(p.runMs), kernel_ms: r1(p.totalMsPerRun), fwd_ms: r1(p.fwdMsPerRun), grad_ms: r1(p.bwdMsPerRun),
    matmul_kernel_share: r3(p.matmulKernelMs / p.totalMsPerRun), matmul_kernel_gflops: r1(p.matmulKernelGflops),
    top_ops: Object.fromEntries(p.byOp.slice(0, 8).map((o) => [o.op, r1(o.msPerRun)])), variants,
  }));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
