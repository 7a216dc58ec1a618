// Shared helpers for bench/engine.ts, bench/synth.ts, bench/concepts.ts and bench/profile.ts: seeded random CLIP weights and bundles,
// medians, peak RSS, and a static-shape walk of a ModelIR that counts MatMul/Gemm/Conv FLOPs.

import { GraphBuilder } from '../gpu-worker/engine/onnx/builder.ts';
import { type ModelIR, type TensorData, numel } from '../gpu-worker/engine/onnx/ir.ts';
import { type ClipArch, expectedTensors } from '../gpu-worker/engine/clip/arch.ts';
import type { WeightLookup } from '../gpu-worker/engine/clip/model.ts';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, OPENAI_MEAN, OPENAI_STD, type Manifest } from '../gpu-worker/engine/clip/bundle.ts';
import { writeClipTokenizerJson } from '../gpu-worker/engine/clip/tokenizer-json.ts';
import { writeSafetensors } from '../gpu-worker/engine/io/safetensors.ts';
import { referencePath } from '../test/helpers/reference.ts';

/** xorshift32 + Box–Muller: deterministic normals, no dependencies. */
export class BenchRng {
  private s: number;
  private spare: number | undefined;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  uniform(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return (x + 0.5) / 4294967296;
  }
  normal(): number {
    if (this.spare !== undefined) {
      const v = this.spare;
      this.spare = undefined;
      return v;
    }
    const u = this.uniform(), v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  fillNormal(a: Float32Array, std: number, mean = 0): Float32Array {
    for (let i = 0; i < a.length; i++) a[i] = mean + std * this.normal();
    return a;
  }
  fillUniform(a: Float32Array, lo = 0, hi = 1): Float32Array {
    for (let i = 0; i < a.length; i++) a[i] = lo + (hi - lo) * this.uniform();
    return a;
  }
}

/** String hash → seed, so each tensor's values do not depend on generation order. */
function hashSeed(name: string, seed: number): number {
  let h = 2166136261 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** One random weight: LN weights 1, LN/linear biases 0, everything else N(0, 0.02). */
export function randomTensor(name: string, dims: number[], seed = 1234): TensorData {
  const data = new Float32Array(numel(dims));
  const isLn = /(^|\.)ln_[a-z0-9_]+\.(weight|bias)$|ln_final\.(weight|bias)$/.test(name);
  if (isLn && name.endsWith('.weight')) data.fill(1);
  else if (isLn || name.endsWith('.bias') || name.endsWith('in_proj_bias')) data.fill(0);
  else if (name === 'logit_scale') data[0] = Math.log(100);
  else new BenchRng(hashSeed(name, seed)).fillNormal(data, 0.02);
  return { dtype: 'float32', dims: [...dims], data };
}

/** A WeightLookup of random weights for an architecture (generated lazily, cached). */
export function randomWeights(arch: ClipArch, seed = 1234): WeightLookup {
  const shapes = new Map(expectedTensors(arch));
  const cache = new Map<string, TensorData>();
  return (name: string) => {
    let t = cache.get(name);
    if (!t) {
      const dims = shapes.get(name);
      if (!dims) throw new Error(`no tensor ${name} in this architecture`);
      t = randomTensor(name, dims, seed);
      cache.set(name, t);
    }
    return t;
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/** (max − min) / median: how noisy a series was. */
export function spread(xs: number[]): number {
  return (Math.max(...xs) - Math.min(...xs)) / median(xs);
}

export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024; // maxRSS is in KiB
}

export const r1 = (x: number) => Math.round(x * 10) / 10;
export const r3 = (x: number) => Math.round(x * 1000) / 1000;

export interface GraphStats {
  nodes: number;
  /** MatMul/Gemm/Conv/ConvTranspose FLOPs (2·m·n·k), the figure the FLOP rate is computed from. */
  matmulFlops: number;
  /** Per-op node counts. */
  opCounts: Record<string, number>;
  /** FLOPs by op type. */
  flopsByOp: Record<string, number>;
  /** Bytes of every op's outputs, by op type (a proxy for memory traffic). */
  outBytesByOp: Record<string, number>;
  /** Transposes whose input is not a constant, with their element counts. */
  activationTransposes: { count: number; elements: number };
  /** Expand nodes whose output is larger than their input (materialized broadcasts). */
  expands: { count: number; elements: number };
  float64Nodes: number;
  initializerBytes: number;
  /** The value info of every node output. */
  values: GraphBuilder['values'];
  consts: GraphBuilder['consts'];
}

/** Re-infer every value's static shape (the ModelIR keeps no value_info) and count FLOPs. */
export function graphStats(m: ModelIR): GraphStats {
  const b = new GraphBuilder('stats');
  for (const i of m.inputs) b.input(i.name, i.dtype, i.shape);
  let initializerBytes = 0;
  for (const [name, t] of m.initializers) {
    b.initializer(name, t);
    initializerBytes += (t.data as { byteLength: number }).byteLength;
  }
  const s: GraphStats = {
    nodes: m.nodes.length, matmulFlops: 0, opCounts: {}, flopsByOp: {}, outBytesByOp: {},
    activationTransposes: { count: 0, elements: 0 }, expands: { count: 0, elements: 0 }, float64Nodes: 0,
    initializerBytes, values: b.values, consts: b.consts,
  };
  for (const node of m.nodes) {
    b.addNode(node);
    s.opCounts[node.op] = (s.opCounts[node.op] ?? 0) + 1;
    const inf = (i: number) => b.info(node.inputs[i]);
    let f = 0;
    if (node.op === 'MatMul') {
      const a = inf(0).shape, w = inf(1).shape;
      const out = b.info(node.outputs[0]).shape;
      const k = a[a.length - 1];
      f = 2 * numel(out) * k;
      void w;
    } else if (node.op === 'Gemm') {
      const out = b.info(node.outputs[0]).shape;
      const a = inf(0).shape;
      const transA = node.attrs.transA?.type === 'int' ? node.attrs.transA.v : 0;
      f = 2 * numel(out) * (transA ? a[0] : a[1]);
    } else if (node.op === 'Conv') {
      const w = inf(1).shape; // [Cout, Cin/g, kh, kw]
      f = 2 * numel(b.info(node.outputs[0]).shape) * numel(w.slice(1));
    } else if (node.op === 'ConvTranspose') {
      const w = inf(1).shape; // [Cin, Cout/g, kh, kw]
      f = 2 * numel(inf(0).shape) * numel(w.slice(1));
    }
    if (f) {
      s.matmulFlops += f;
      s.flopsByOp[node.op] = (s.flopsByOp[node.op] ?? 0) + f;
    }
    let bytes = 0;
    for (const o of node.outputs) {
      if (!o) continue;
      const vi = b.info(o);
      bytes += numel(vi.shape) * (vi.dtype === 'float64' || vi.dtype === 'int64' ? 8 : 4);
      if (vi.dtype === 'float64') s.float64Nodes++;
    }
    s.outBytesByOp[node.op] = (s.outBytesByOp[node.op] ?? 0) + bytes;
    if (node.op === 'Transpose' && !b.consts.has(node.inputs[0])) {
      s.activationTransposes.count++;
      s.activationTransposes.elements += numel(inf(0).shape);
    }
    if (node.op === 'Expand') {
      const inN = numel(inf(0).shape), outN = numel(b.info(node.outputs[0]).shape);
      if (outN > inN) {
        s.expands.count++;
        s.expands.elements += outN;
      }
    }
  }
  return s;
}

/** Run a child `node --import tsx <script> --child <json>` and parse its last JSON line. */
export async function runChild<T>(script: string, arg: unknown, opts: { env?: Record<string, string>; echo?: boolean } = {}): Promise<T> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', script, '--child', JSON.stringify(arg)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => {
      out += d;
      if (opts.echo) process.stdout.write(d);
    });
    p.stderr.on('data', (d) => (err += d));
    p.on('close', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`child ${JSON.stringify(arg)} exited ${code}: ${err.slice(-2000)}`));
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`child ${JSON.stringify(arg)} printed no JSON: ${out.slice(-500)} ${err.slice(-1000)}`));
      }
    });
  });
}

/** A ViT-B/32 bundle with random weights (N(0, 0.02), LN 1/0, biases 0) in a temp folder. */
export async function randomBundle(arch: ClipArch, dir: string, source = 'bench'): Promise<void> {
  const tensors = new Map<string, TensorData>();
  for (const [name, dims] of expectedTensors(arch)) tensors.set(name, randomTensor(name, dims, 1234));
  await writeSafetensors(join(dir, 'weights.safetensors'), tensors, { source: 'clipag bench: random weights' });
  writeClipTokenizerJson(referencePath('bpe_simple_vocab_16e6.txt.gz'), join(dir, 'tokenizer.json'));
  const manifest: Manifest = {
    format: BUNDLE_FORMAT,
    format_version: BUNDLE_FORMAT_VERSION,
    name: 'bench-vitb32-random',
    architecture: arch,
    embed_dim: arch.embedDim,
    activation: arch.activation,
    preprocess: { image_size: arch.imageResolution, mean: OPENAI_MEAN, std: OPENAI_STD },
    weights: 'weights.safetensors',
    tokenizer: 'tokenizer.json',
    robust: false,
    license: 'random weights made by the benchmark',
    source,
  };
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
}
