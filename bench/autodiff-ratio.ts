// (forward + backward) / forward time for a MatMul-heavy graph: 8×50 tokens through 2 pre-LN transformer
// blocks of width 768 (12 heads, MLP 3072, QuickGELU), float32, 2 intra-op threads, CPU EP.
// The backward is the input gradient (what CLIPAG needs) and, separately, input + all parameter gradients
// (what training needs). Also compares the two Gather-gradient strategies on a CLIP-sized token embedding.
// Run: node --import tsx bench/autodiff-ratio.ts  (last line is JSON)

import { GraphBuilder } from '../gpu-worker/engine/onnx/builder.ts';
import { encodeModel } from '../gpu-worker/engine/onnx/codec.ts';
import { A, type TensorData, numel, tensor } from '../gpu-worker/engine/onnx/ir.ts';
import { createSession } from '../gpu-worker/engine/runtime/session.ts';
import { appendGradients } from '../gpu-worker/engine/autodiff/gradient.ts';

const B = 8, T = 50, D = 768, H = 12, HD = D / H, F = 3072, LAYERS = 2;
const THREADS = 2;

let seed = 42;
const rnd = () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed / 4294967296 - 0.5;
};
const randT = (dims: number[], scale: number): TensorData => {
  const d = new Float32Array(numel(dims));
  for (let i = 0; i < d.length; i++) d[i] = rnd() * 2 * scale;
  return { dtype: 'float32', dims, data: d };
};

function buildModel(mode: 'forward' | 'input' | 'all') {
  seed = 42;
  const b = new GraphBuilder('bench');
  let x = b.input('x', 'float32', [B, T, D]);
  const params: string[] = [];
  const P = (name: string, dims: number[], scale: number) => {
    params.push(b.initializer(name, randT(dims, scale)));
    return name;
  };
  const sc = (v: number) => b.scalar(v);
  for (let l = 0; l < LAYERS; l++) {
    const p = `l${l}.`;
    const ln = (t: string, n: string) => b.op1('LayerNormalization', [t, P(p + n + '.g', [D], 1), P(p + n + '.b', [D], 0.1)], { axis: A.i(-1) });
    const lin = (t: string, n: string, i: number, o: number) => b.add(b.matmul(t, P(p + n + '.w', [i, o], 1 / Math.sqrt(i))), P(p + n + '.b', [o], 0.02));
    const qkv = lin(ln(x, 'ln1'), 'qkv', D, 3 * D);
    const [q, k, v] = b.op('Split', [qkv, b.ints([D, D, D])], { axis: A.i(-1) }, { outputs: 3 });
    const heads = (t: string, perm: number[]) => b.transpose(b.reshape(t, [B, T, H, HD]), perm);
    const s = b.mul(b.matmul(heads(q, [0, 2, 1, 3]), heads(k, [0, 2, 3, 1])), sc(1 / Math.sqrt(HD)));
    const pr = b.op1('Softmax', [s], { axis: A.i(-1) });
    const o = b.reshape(b.transpose(b.matmul(pr, heads(v, [0, 2, 1, 3])), [0, 2, 1, 3]), [B, T, D]);
    x = b.add(x, lin(o, 'out', D, D));
    const u = lin(ln(x, 'ln2'), 'fc', D, F);
    const a = b.mul(u, b.sigmoid(b.mul(u, sc(1.702))));
    x = b.add(x, lin(a, 'proj', F, D));
  }
  const loss = b.op1('ReduceSum', [b.mul(x, b.constant(randT([B, T, D], 1), 'R'))], { keepdims: A.i(0) });
  b.output(loss);
  if (mode !== 'forward') {
    const wrt = mode === 'input' ? ['x'] : ['x', ...params];
    const g = appendGradients(b, { loss, wrt });
    for (const w of wrt) b.output(g.get(w)!);
  }
  return { model: b.toModel(), nodes: b.nodes.length };
}

async function timeIt(mode: 'forward' | 'input' | 'all', reps: number) {
  const { model, nodes } = buildModel(mode);
  const s = await createSession(encodeModel(model), { intraOpThreads: THREADS });
  seed = 7;
  const feeds = { x: randT([B, T, D], 1) };
  for (let i = 0; i < 3; i++) await s.run(feeds);
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await s.run(feeds);
    ts.push(performance.now() - t0);
  }
  await s.release();
  ts.sort((p, q) => p - q);
  return { ms: ts[Math.floor(ts.length / 2)], nodes };
}

// Gather gradient: ScatterND(reduction=add) into zeros vs. a one-hot MatMul, for a [49408, 512] token
// embedding gathered by [8, 77] ids (the CLIP text tower's first op).
async function gatherStrategies(reps: number) {
  const V = 49408, E = 512, N = 8 * 77;
  const out: Record<string, number> = {};
  for (const how of ['scatternd', 'onehot'] as const) {
    const b = new GraphBuilder('gather');
    const ids = b.input('ids', 'int64', [N]);
    const g = b.input('g', 'float32', [N, E]);
    let r: string;
    if (how === 'scatternd') {
      const z = b.op1('ConstantOfShape', [b.ints([V, E])], { value: A.t(tensor('float32', [1], [0])) });
      r = b.op1('ScatterND', [z, b.reshape(ids, [N, 1]), g], { reduction: A.s('add') });
    } else {
      const oh = b.op1('OneHot', [ids, b.constant(tensor('int64', [], [V])), b.constant(tensor('float32', [2], [0, 1]))], { axis: A.i(-1) });
      r = b.op1('Gemm', [oh, g], { transA: A.i(1) });
    }
    b.output(r);
    const s = await createSession(encodeModel(b.toModel()), { intraOpThreads: THREADS });
    const idv = new BigInt64Array(N);
    for (let i = 0; i < N; i++) idv[i] = BigInt((i * 7919) % V);
    const feeds = { ids: { dtype: 'int64' as const, dims: [N], data: idv }, g: randT([N, E], 1) };
    await s.run(feeds);
    const ts: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      await s.run(feeds);
      ts.push(performance.now() - t0);
    }
    await s.release();
    ts.sort((p, q) => p - q);
    out[how] = ts[Math.floor(ts.length / 2)];
  }
  return out;
}

const reps = Number(process.env.REPS ?? 10);
const fwd = await timeIt('forward', reps);
const inp = await timeIt('input', reps);
const all = await timeIt('all', reps);
const gather = await gatherStrategies(5);
console.log(`forward            ${fwd.ms.toFixed(1)} ms  (${fwd.nodes} nodes)`);
console.log(`fwd + d/dx         ${inp.ms.toFixed(1)} ms  (${inp.nodes} nodes)  ratio ${(inp.ms / fwd.ms).toFixed(2)}`);
console.log(`fwd + d/dx, d/dθ   ${all.ms.toFixed(1)} ms  (${all.nodes} nodes)  ratio ${(all.ms / fwd.ms).toFixed(2)}`);
console.log(`gather grad [49408x512] by 616 ids: scatternd ${gather.scatternd.toFixed(1)} ms, onehot ${gather.onehot.toFixed(1)} ms`);
console.log(JSON.stringify({
  shape: `${B}x${T}x${D}`, layers: LAYERS, threads: THREADS, dtype: 'float32',
  forward_ms: +fwd.ms.toFixed(2), fwd_bwd_input_ms: +inp.ms.toFixed(2), fwd_bwd_all_ms: +all.ms.toFixed(2),
  ratio_input: +(inp.ms / fwd.ms).toFixed(3), ratio_all: +(all.ms / fwd.ms).toFixed(3),
  gather_scatternd_ms: +gather.scatternd.toFixed(2), gather_onehot_ms: +gather.onehot.toFixed(2),
}));
