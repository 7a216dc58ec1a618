// MatMul/Gemm kernel rates for the linear-layer shapes of the ViT-B/32 step vs a 2048³ MatMul, all in one
// process and interleaved round by round (so background load hits every variant alike).
// Forms: 'matmul' = MatMul(x, Wᵀ-initializer) (the forward before fusion), 'gemm+bias' = Gemm(x, Wᵀ, b)
// (what ORT's MatMulAddFusion makes of it), 'gemm transB' = Gemm(dY, W, transB=1) with W an initializer
// (the emitted input-gradient form). Run: node --import tsx bench/gemm-shapes.ts [rounds]
import { GraphBuilder } from '../gpu-worker/engine/onnx/builder.ts';
import { encodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import { A } from '../gpu-worker/engine/onnx/ir.ts';
import { createSession, type EngineSession } from '../gpu-worker/engine/runtime/session.ts';
import { BenchRng, median, r1 } from './common.ts';

const THREADS = Number(process.env.BENCH_THREADS ?? 2);
const ROUNDS = Number(process.argv[2] ?? 5);
const rnd = new BenchRng(3);
const mat = (r: number, c: number) => ({ dtype: 'float32' as const, dims: [r, c], data: rnd.fillNormal(new Float32Array(r * c), 0.02) });

type Form = 'matmul' | 'gemm+bias' | 'gemm transB';
async function make(form: Form, M: number, K: number, N: number): Promise<{ s: EngineSession; feeds: Record<string, ReturnType<typeof mat>>; flops: number }> {
  const b = new GraphBuilder('g');
  const x = b.input('x', 'float32', [M, K]);
  let y: string;
  if (form === 'matmul') y = b.matmul(x, b.initializer('w', mat(K, N)));
  else if (form === 'gemm+bias') y = b.op1('Gemm', [x, b.initializer('w', mat(K, N)), b.initializer('c', { dtype: 'float32', dims: [N], data: new Float32Array(N) })]);
  else y = b.op1('Gemm', [x, b.initializer('w', mat(N, K))], { transB: A.i(1) });
  b.output(y);
  const s = await createSession(encodeModel(b.toModel()), { intraOpThreads: THREADS });
  return { s, feeds: { x: mat(M, K) }, flops: 2 * M * K * N };
}

const cases: [string, Form, number, number, number][] = [['2048³', 'matmul', 2048, 2048, 2048]];
for (const M of [400, 1600]) {
  for (const [K, N] of [[768, 2304], [768, 3072], [3072, 768]] as const) {
    for (const f of ['matmul', 'gemm+bias', 'gemm transB'] as Form[]) cases.push([`${f} ${M}×${K}×${N}`, f, M, K, N]);
  }
}
const built = await Promise.all(cases.map(async ([n, f, M, K, N]) => ({ n, ...(await make(f, M, K, N)) })));
const rates = new Map<string, number[]>();
for (const c of built) for (let i = 0; i < 2; i++) await c.s.run(c.feeds);
for (let r = 0; r < ROUNDS; r++) {
  for (const c of built) {
    const reps = Math.max(2, Math.round(2e9 / c.flops));
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await c.s.run(c.feeds);
    const ms = (performance.now() - t0) / reps;
    rates.set(c.n, [...(rates.get(c.n) ?? []), c.flops / ms / 1e6]);
  }
}
const ref = median(rates.get('2048³')!);
console.log(`${'case'.padEnd(30)} GFLOP/s  vs 2048³`);
const out: Record<string, number> = {};
for (const c of built) {
  const g = median(rates.get(c.n)!);
  out[c.n] = r1(g);
  console.log(`${c.n.padEnd(30)} ${String(r1(g)).padStart(7)}  ${(g / ref).toFixed(2)}`);
}
for (const c of built) await c.s.release();
console.log(JSON.stringify(out));
