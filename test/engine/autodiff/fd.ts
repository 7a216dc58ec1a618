// Finite-difference harness for gradient rules.
//
// A check builds the same small graph twice:
//  - G: the graph with loss = Σ_k Σ(out_k ⊙ R_k) for fixed random R_k, plus appendGradients -> analytic grads;
//  - F: the forward graph only, with every checked variable as a graph input, evaluated at x ± h·d.
// The FD loss Σ out ⊙ R is summed here in float64, so the only rounding in FD comes from the op itself.
// Small tensors are checked element by element; larger ones along several random directions.

import { GraphBuilder } from '../../../gpu-worker/engine/onnx/builder.ts';
import { encodeModel } from '../../../gpu-worker/engine/onnx/codec.ts';
import { A, type DType, type TensorData, numel, tensor } from '../../../gpu-worker/engine/onnx/ir.ts';
import { createSession } from '../../../gpu-worker/engine/runtime/session.ts';
import { appendGradients } from '../../../gpu-worker/engine/autodiff/gradient.ts';

import { type Rng, rng } from '../../helpers/rng.ts';
export { type Rng, rng };
export const uniform = (r: Rng, n: number, lo = -1, hi = 1) => Array.from({ length: n }, () => lo + (hi - lo) * r());
export function normal(r: Rng, n: number): number[] {
  return Array.from({ length: n }, () => {
    const u = Math.max(r(), 1e-12), v = r();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  });
}

export interface Var {
  name: string;
  shape: number[];
  /** Values; default uniform(-1, 1), or `lo..hi`. */
  data?: number[];
  lo?: number;
  hi?: number;
  /** Make it a named initializer (parameter) in G instead of a graph input. */
  init?: boolean;
}

export interface BuildCtx {
  /** Random constant tensor of the check's dtype (same values in G and F). */
  rand(shape: number[], lo?: number, hi?: number): string;
  dtype: DType;
  r: Rng;
}

export interface CheckSpec {
  dtype: 'float32' | 'float64';
  vars: Var[];
  /** Builds the op under test; returns its float output(s). */
  build(b: GraphBuilder, v: Record<string, string>, c: BuildCtx): string | string[];
  /** Only these vars are wrt (default: all). The rest are fed but not differentiated. */
  wrt?: string[];
  /** Central-difference step (default 1e-6 for float64, 1e-2 for float32). */
  step?: number;
  /** Per-element checks up to this many elements; random directions above (default 48). */
  maxElems?: number;
  directions?: number;
  seed?: number;
  /** onnxruntime graph optimization level for both sessions (default: the runtime's default). */
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
}

export interface CheckResult {
  /** Worst error per wrt var, normalized (see below). */
  errors: Record<string, number>;
  maxError: number;
  grads: Record<string, Float64Array>;
  /** Loss from G (graph, rounded in dtype) and from F's outputs (summed in float64) at the base point. */
  lossGraph: number;
  lossHere: number;
}

function toNumbers(t: TensorData): Float64Array {
  return Float64Array.from(t.data as ArrayLike<number>);
}

/**
 * Runs the check. Error per element (or direction) is |fd − an| / scale, where scale is
 * max(max|an|, max|fd|) over the var for element checks, and Σ|g_i·d_i| (the magnitude of the terms that
 * make up the directional derivative) for direction checks. A zero analytic gradient against a non-zero
 * FD derivative therefore gives an error of 1.
 */
export async function gradCheck(spec: CheckSpec): Promise<CheckResult> {
  const { dtype } = spec;
  const seed = spec.seed ?? 1234;
  const r0 = rng(seed);
  const values = new Map<string, number[]>();
  for (const v of spec.vars) values.set(v.name, v.data ?? uniform(r0, numel(v.shape), v.lo ?? -1, v.hi ?? 1));
  const wrt = spec.wrt ?? spec.vars.map((v) => v.name);

  const build = (allInputs: boolean) => {
    const b = new GraphBuilder('fd');
    const names: Record<string, string> = {};
    for (const v of spec.vars) {
      const t = tensor(dtype, v.shape, values.get(v.name)!);
      names[v.name] = v.init && !allInputs ? b.initializer(v.name, t) : b.input(v.name, dtype, v.shape);
    }
    const r = rng(seed + 7);
    const c: BuildCtx = { dtype, r, rand: (shape, lo = -1, hi = 1) => b.constant(tensor(dtype, shape, uniform(r, numel(shape), lo, hi)), 'rand') };
    const o = spec.build(b, names, c);
    const outs = Array.isArray(o) ? o : [o];
    const rr = rng(seed + 99);
    const Rs = outs.map((x) => uniform(rr, numel(b.shape(x))));
    return { b, names, outs, Rs };
  };

  // ---- G: analytic gradients ----
  const g = build(false);
  const gb = g.b;
  const terms = g.outs.map((o, k) => {
    const R = gb.constant(tensor(dtype, gb.shape(o), g.Rs[k]), 'R');
    const p = gb.mul(o, R);
    return gb.op1('ReduceSum', [p], { keepdims: A.i(0) }); // no axes: reduce over everything
  });
  const loss = terms.length === 1 ? terms[0] : gb.op1('Sum', terms);
  const grads = appendGradients(gb, { loss, wrt: wrt.map((w) => g.names[w]) });
  gb.output(gb.op1('Identity', [loss], {}, { outputNames: ['loss_out'] }));
  for (const w of wrt) gb.output(gb.op1('Identity', [grads.get(g.names[w])!], {}, { outputNames: [`grad_${w}`] }));
  const feedsFor = (vals: Map<string, number[]>, inputs: string[]) => {
    const f: Record<string, TensorData> = {};
    for (const v of spec.vars) if (inputs.includes(v.name)) f[v.name] = tensor(dtype, v.shape, vals.get(v.name)!);
    return f;
  };
  const gs = await createSession(encodeModel(gb.toModel()), { intraOpThreads: 1, graphOptimizationLevel: spec.optimization });
  const gOut = await gs.run(feedsFor(values, gb.inputs.map((i) => i.name)));
  await gs.release();
  const an: Record<string, Float64Array> = {};
  for (const w of wrt) an[w] = toNumbers(gOut[`grad_${w}`]);

  // ---- F: forward at perturbed points ----
  const f = build(true);
  f.outs.forEach((o) => f.b.output(o));
  const fs = await createSession(encodeModel(f.b.toModel()), { intraOpThreads: 1, graphOptimizationLevel: spec.optimization });
  const lossAt = async (vals: Map<string, number[]>) => {
    const out = await fs.run(feedsFor(vals, spec.vars.map((v) => v.name)), f.outs);
    let s = 0;
    f.outs.forEach((o, k) => {
      const y = out[o].data as ArrayLike<number>;
      const R = f.Rs[k];
      for (let i = 0; i < R.length; i++) s += y[i] * R[i];
    });
    return s;
  };
  const lossHere = await lossAt(values);
  const h = spec.step ?? (dtype === 'float64' ? 1e-6 : 1e-2);
  const maxElems = spec.maxElems ?? 48;
  const rd = rng(seed + 3);
  const errors: Record<string, number> = {};
  try {
    for (const w of wrt) {
      const base = values.get(w)!;
      const n = base.length;
      const ga = an[w];
      const fdAlong = async (d: number[]) => {
        const plus = new Map(values), minus = new Map(values);
        plus.set(w, base.map((x, i) => x + h * d[i]));
        minus.set(w, base.map((x, i) => x - h * d[i]));
        return ((await lossAt(plus)) - (await lossAt(minus))) / (2 * h);
      };
      let worst = 0;
      if (n <= maxElems) {
        const fd: number[] = [];
        for (let i = 0; i < n; i++) {
          const e = new Array(n).fill(0);
          e[i] = 1;
          fd.push(await fdAlong(e));
        }
        let scale = 1e-300;
        for (let i = 0; i < n; i++) scale = Math.max(scale, Math.abs(ga[i]), Math.abs(fd[i]));
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(fd[i] - ga[i]) / scale);
      } else {
        for (let k = 0; k < (spec.directions ?? 6); k++) {
          const d = normal(rd, n);
          const fd = await fdAlong(d);
          let dot = 0, mag = 1e-300;
          for (let i = 0; i < n; i++) {
            dot += ga[i] * d[i];
            mag += Math.abs(ga[i] * d[i]);
          }
          mag = Math.max(mag, Math.abs(fd));
          worst = Math.max(worst, Math.abs(fd - dot) / mag);
        }
      }
      errors[w] = worst;
    }
  } finally {
    await fs.release();
  }
  const lossGraph = Number((gOut.loss_out.data as ArrayLike<number>)[0]);
  return { errors, maxError: Math.max(0, ...Object.values(errors)), grads: an, lossGraph, lossHere };
}
