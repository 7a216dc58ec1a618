import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../../gpu-worker/engine/errors.ts';
import { f32ToF16, writeSafetensors } from '../../../gpu-worker/engine/io/safetensors.ts';
import type { TensorData } from '../../../gpu-worker/engine/onnx/ir.ts';
import { solidImage } from '../../../gpu-worker/engine/synth/image.ts';
import { makeTestPrior } from '../../../gpu-worker/engine/synth/make-test-prior.ts';
import {
  GaussianAccumulator, PRIOR_DIM, assemblePrior, fitComponent, choleskyInPlace, downscaleForPrior, fitPrior, kmeans, loadPrior, priorFromTensors,
  priorToTensors, sampleImage, samplePrior, samplePriorDetailed, samplePriorYielding, writePrior, type GmmPrior,
} from '../../../gpu-worker/engine/synth/prior.ts';
import { createRng } from '../../../gpu-worker/engine/synth/rng.ts';

const D = PRIOR_DIM;
const dir = mkdtempSync(join(tmpdir(), 'clipag-prior-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Samples x = μ + s⊙ε + B·η: Σ = diag(s²) + B·Bᵀ, with a few strong shared directions. */
function synthetic(n: number, seed: number, offset = 0.5) {
  const rng = createRng(seed);
  const R = 4;
  const mu = new Float64Array(D), s = new Float64Array(D), B = new Float64Array(D * R);
  for (let i = 0; i < D; i++) {
    mu[i] = offset + 0.1 * (rng.next() - 0.5);
    s[i] = 0.02 + 0.03 * rng.next();
    for (let r = 0; r < R; r++) B[i * R + r] = 0.03 * rng.normal();
  }
  const sigma = (i: number, j: number) => {
    let v = i === j ? s[i] * s[i] : 0;
    for (let r = 0; r < R; r++) v += B[i * R + r] * B[j * R + r];
    return v;
  };
  const samples: Float32Array[] = [];
  const eta = new Float64Array(R);
  for (let k = 0; k < n; k++) {
    for (let r = 0; r < R; r++) eta[r] = rng.normal();
    const x = new Float32Array(D);
    for (let i = 0; i < D; i++) {
      let v = mu[i] + s[i] * rng.normal();
      for (let r = 0; r < R; r++) v += B[i * R + r] * eta[r];
      x[i] = v;
    }
    samples.push(x);
  }
  return { mu, sigma, samples };
}

/** (L·Lᵀ)[i][j] of component k, from the prior's stored factor (float16 decoded). */
function llt(prior: GmmPrior, k: number, i: number, j: number): number {
  const L = prior.cholesky;
  const get = (r: number, c: number) => {
    const v = L[k * D * D + r * D + c];
    return prior.choleskyDType === 'float16' ? halfBits(v) : v;
  };
  let acc = 0;
  for (let c = 0; c <= Math.min(i, j); c++) acc += get(i, c) * get(j, c);
  return acc;
}
function halfBits(h: number): number {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Byte equality of typed arrays (vitest's deep equality is slow on million-element arrays). */
function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function expectModelError(fn: () => unknown, msg: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(EngineError);
    expect((e as EngineError).code).toBe('invalid_model');
    expect((e as EngineError).message).toMatch(msg);
    return;
  }
  throw new Error(`expected invalid_model ${msg}`);
}

describe('Cholesky', () => {
  it('L·Lᵀ reproduces an SPD matrix, upper triangle zeroed', () => {
    const n = 40;
    const rng = createRng(1);
    const m = new Float64Array(n * n);
    for (let i = 0; i < n * n; i++) m[i] = rng.normal();
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let v = i === j ? 1e-4 : 0;
      for (let k = 0; k < n; k++) v += m[i * n + k] * m[j * n + k];
      a[i * n + j] = v;
    }
    const L = choleskyInPlace(a.slice(), n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      if (j > i) expect(L[i * n + j]).toBe(0);
      let v = 0;
      for (let k = 0; k < n; k++) v += L[i * n + k] * L[j * n + k];
      expect(Math.abs(v - a[i * n + j])).toBeLessThan(1e-9 * (1 + Math.abs(a[i * n + j])));
    }
    const notPd = new Float64Array([1, 2, 2, 1]);
    expect(() => choleskyInPlace(notPd, 2)).toThrow(/not positive definite/);
  });
});

describe('fitPrior', () => {
  const n = 2000;
  const { mu, sigma, samples } = synthetic(n, 7);
  const prior = fitPrior([samples], { source: 'synthetic' });

  it('recovers the mean and covariance within sampling error', () => {
    let worstMean = 0;
    for (let i = 0; i < D; i++) worstMean = Math.max(worstMean, Math.abs(prior.means[i] - mu[i]) / Math.sqrt(sigma(i, i) / n));
    expect(worstMean).toBeLessThan(5.5); // in standard errors, over 768 means
    // Covariance entries on a row subset (all columns): |Σ̂ij − Σij| within 6 standard errors,
    // where var(Σ̂ij) ≈ (Σii·Σjj + Σij²)/n for Gaussian data. Σ̂ = L·Lᵀ − floor·I.
    let worst = 0;
    for (let i = 0; i < D; i += 37) for (let j = 0; j < D; j++) {
      const est = llt(prior, 0, i, j) - (i === j ? 1e-4 : 0);
      const se = Math.sqrt((sigma(i, i) * sigma(j, j) + sigma(i, j) ** 2) / n);
      worst = Math.max(worst, Math.abs(est - sigma(i, j)) / se);
    }
    expect(worst).toBeLessThan(6);
  });

  it('stores the Cholesky factor of Σ̂ + floor·I (float32 exact to rounding, float16 to half precision)', () => {
    const acc = new GaussianAccumulator();
    for (const x of samples) acc.add(x);
    const cov = acc.covariance();
    const half = assemblePrior([fitComponent(acc)], { dtype: 'float16' });
    for (let i = 0; i < D; i += 53) for (let j = 0; j <= i; j += 3) {
      const target = cov[i * D + j] + (i === j ? 1e-4 : 0);
      expect(Math.abs(llt(prior, 0, i, j) - target)).toBeLessThan(1e-6);
      expect(Math.abs(llt(half, 0, i, j) - target)).toBeLessThan(5e-5);
    }
    expect(prior.metadata).toMatchObject({ format: 'clipag-gmm-prior', version: '1', resolution: '16', layout: 'chw', floor: '0.0001', components: '1', source: 'synthetic' });
  });

  it('works with fewer samples than dimensions thanks to the floor', () => {
    const few = fitPrior([samples.slice(0, 20), samples.slice(20, 21)]);
    expect(few.components).toBe(2);
    // A single-sample group is an isotropic Gaussian of variance floor around that sample.
    for (let i = 0; i < D; i += 50) expect(llt(few, 1, i, i)).toBeCloseTo(1e-4, 9);
    expect(Array.from(few.weights)).toEqual([20 / 21, 1 / 21]);
    expect(() => fitPrior([[]])).toThrow(EngineError);
    expect(() => fitPrior([[new Float32Array(10)]])).toThrow(/expected 768/);
  });
});

describe('samplePrior', () => {
  const groups = [0.2, 0.5, 0.8].map((off, k) => synthetic(30 + 30 * k, 100 + k, off).samples);
  const prior = fitPrior(groups, { dtype: 'float16' }); // weights 30:60:90

  it('is deterministic per seed, differs across seeds, stays in [0,1]', () => {
    const a = samplePrior(prior, 50, createRng(1));
    expect(a.length).toBe(50 * D);
    expect(sameBytes(samplePrior(prior, 50, createRng(1)), a)).toBe(true);
    expect(sameBytes(samplePrior(prior, 50, createRng(2)), a)).toBe(false);
    for (const v of a) expect(v >= 0 && v <= 1).toBe(true);
    expect(() => samplePrior(prior, 0, createRng(1))).toThrow(EngineError);
  });

  it('draws components by weight and samples around their means', () => {
    const { data, components } = samplePriorDetailed(prior, 600, createRng(9));
    const counts = [0, 0, 0];
    for (const k of components) counts[k]++;
    expect(Math.abs(counts[0] / 600 - 1 / 6)).toBeLessThan(0.05);
    expect(Math.abs(counts[2] / 600 - 1 / 2)).toBeLessThan(0.06);
    for (let i = 0; i < 600; i++) {
      let m = 0;
      for (let j = 0; j < D; j++) m += data[i * D + j];
      expect(m / D).toBeCloseTo([0.2, 0.5, 0.8][components[i]], 1);
    }
    const img = sampleImage(data, 3);
    expect([img.width, img.height, img.data.length]).toEqual([16, 16, D]);
  });
});

describe('samplePriorYielding (sampling in slices that yield to the event loop)', () => {
  const toy = loadPrior(fileURLToPath(new URL('../../../models/toy/prior.safetensors', import.meta.url))); // 3 components, float16
  const hash = (a: ArrayBufferView) => createHash('sha256').update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength)).digest('hex');

  it('gives the same samples, bit for bit, as the synchronous sampler did before it existed, and leaves the rng in the same state', async () => {
    // sha256 of samplePriorDetailed(toy, 300, createRng(7)).data by the code before sampling was sliced (e3e936a).
    const BEFORE = 'f9f5eee6cb911b58a9b0d249205d06ec68f232bea027274cd457a9f613789abd';
    const rs = createRng(7), ry = createRng(7);
    const sync = samplePriorDetailed(toy, 300, rs);
    const sliced = (await samplePriorYielding(toy, 300, ry, { sliceMs: 0 }))!; // a yield after every unit of work
    expect(hash(sync.data)).toBe(BEFORE);
    expect(hash(sliced.data)).toBe(BEFORE);
    expect(Array.from(sliced.components)).toEqual(Array.from(sync.components));
    expect(new Set(sync.components).size).toBe(3);
    expect(ry.next()).toBe(rs.next());
    await expect(samplePriorYielding(toy, 0, createRng(1))).rejects.toThrow(EngineError);
  });

  it('lets a timer set during sampling fire long before sampling ends (no long stall of the thread)', async () => {
    let last = performance.now();
    let worstGap = 0;
    const tick = setInterval(() => {
      const now = performance.now();
      worstGap = Math.max(worstGap, now - last);
      last = now;
    }, 5);
    try {
      const t0 = performance.now();
      let firedAt = -1;
      let done = false;
      setTimeout(() => (firedAt = done ? Infinity : performance.now() - t0), 1);
      await samplePriorYielding(toy, 2000, createRng(1)); // ~1 s of CPU on a 2-core machine; one call blocked for all of it before
      done = true;
      const total = performance.now() - t0;
      expect(firedAt).toBeGreaterThanOrEqual(0);
      expect(firedAt).toBeLessThan(total / 4);
      expect(worstGap).toBeLessThan(150);
    } finally {
      clearInterval(tick);
    }
  });

  it('stops within a slice when its signal aborts, and returns undefined', async () => {
    const ac = new AbortController();
    expect(await samplePriorYielding(toy, 10, createRng(1), { signal: AbortSignal.abort() })).toBeUndefined();
    let abortedAt = 0;
    setTimeout(() => {
      abortedAt = performance.now();
      ac.abort();
    }, 20);
    const t0 = performance.now();
    const res = await samplePriorYielding(toy, 4000, createRng(1), { signal: ac.signal }); // ~2 s to the end
    const end = performance.now();
    expect(res).toBeUndefined();
    expect(abortedAt).toBeGreaterThan(t0);
    expect(end - abortedAt).toBeLessThan(150);
  });
});

describe('prior files', () => {
  const base = fitPrior([synthetic(40, 3).samples, synthetic(10, 4, 0.3).samples], { source: 'unit test' });

  it('round-trips float32 and float16 through writePrior/loadPrior', async () => {
    const p32 = join(dir, 'p32.safetensors');
    await writePrior(p32, base);
    const l32 = loadPrior(p32);
    expect(l32.components).toBe(2);
    expect(l32.choleskyDType).toBe('float32');
    expect(sameBytes(l32.means, base.means)).toBe(true);
    expect(sameBytes(l32.cholesky, base.cholesky)).toBe(true);
    expect(l32.weights[0]).toBeCloseTo(0.8, 6);
    expect(l32.metadata.source).toBe('unit test');
    expect(sameBytes(samplePrior(l32, 5, createRng(4)), samplePrior(base, 5, createRng(4)))).toBe(true);

    const half = fitPrior([synthetic(40, 3).samples], { dtype: 'float16', weights: 'uniform' });
    const p16 = join(dir, 'p16.safetensors');
    await writePrior(p16, half, { source: 'half' });
    const l16 = loadPrior(p16);
    expect(l16.choleskyDType).toBe('float16');
    expect(sameBytes(l16.cholesky, half.cholesky)).toBe(true);
    expect(l16.cholesky[0]).toBe(f32ToF16(base.cholesky[0]));
  });

  // Each corruption is written as a real file and must be refused by loadPrior with invalid_model.
  const { tensors, metadata } = priorToTensors(base);
  const cases: [string, (t: Map<string, TensorData>, m: Record<string, string>) => void, RegExp][] = [
    ['wrong format', (_t, m) => { m.format = 'something-else'; }, /"format" must be "clipag-gmm-prior"/],
    ['wrong version', (_t, m) => { m.version = '2'; }, /unsupported version "2"/],
    ['wrong layout', (_t, m) => { m.layout = 'hwc'; }, /"layout" must be "chw"/],
    ['wrong resolution', (_t, m) => { m.resolution = '32'; }, /resolution 32/],
    ['bad floor', (_t, m) => { m.floor = 'abc'; }, /"floor" is not a number/],
    ['missing source', (_t, m) => { delete m.source; }, /"source" is missing/],
    ['component count mismatch', (_t, m) => { m.components = '3'; }, /3 components but "means" has 2/],
    ['missing cholesky', (t) => { t.delete('cholesky'); }, /"cholesky" is missing/],
    ['extra tensor', (t) => { t.set('covariance', { dtype: 'float32', dims: [1], data: new Float32Array(1) }); }, /unexpected tensor "covariance"/],
    ['means wrong shape', (t) => { t.set('means', { dtype: 'float32', dims: [2, 767], data: new Float32Array(2 * 767) }); }, /"means" must be \[K ≥ 1, 768\]/],
    ['means wrong dtype', (t) => { t.set('means', { dtype: 'float64', dims: [2, D], data: new Float64Array(2 * D) }); }, /"means" must be F32/],
    ['cholesky wrong shape', (t) => { t.set('cholesky', { dtype: 'float32', dims: [1, D, D], data: new Float32Array(D * D) }); }, /"cholesky" must be \[2, 768, 768\]/],
    ['NaN mean', (t) => { const m = (t.get('means')!.data as Float32Array).slice(); m[900] = NaN; t.set('means', { dtype: 'float32', dims: [2, D], data: m }); }, /"means" has a non-finite value at component 1, element 132/],
    ['0–255 means', (t) => { const m = (t.get('means')!.data as Float32Array).map((v) => v * 255); t.set('means', { dtype: 'float32', dims: [2, D], data: m }); }, /outside \[0,1\]/],
    ['NaN in cholesky', (t) => { const c = (t.get('cholesky')!.data as Float32Array).slice(); c[5 * D + 2] = NaN; t.set('cholesky', { dtype: 'float32', dims: [2, D, D], data: c }); }, /non-finite value at component 0, \[5, 2\]/],
    ['non-triangular', (t) => { const c = (t.get('cholesky')!.data as Float32Array).slice(); c[D * D + 3 * D + 10] = 0.5; t.set('cholesky', { dtype: 'float32', dims: [2, D, D], data: c }); }, /lower-triangular; component 1 has 0.5 at \[3, 10\]/],
    ['zero diagonal', (t) => { const c = (t.get('cholesky')!.data as Float32Array).slice(); c[7 * D + 7] = 0; t.set('cholesky', { dtype: 'float32', dims: [2, D, D], data: c }); }, /diagonal must be positive; component 0 has 0 at \[7, 7\]/],
    ['negative weight', (t) => { t.set('weights', { dtype: 'float32', dims: [2], data: new Float32Array([1, -1]) }); }, /"weights" must be finite and ≥ 0/],
    ['weights wrong shape', (t) => { t.set('weights', { dtype: 'float32', dims: [3], data: new Float32Array(3) }); }, /"weights" must be \[2\]/],
  ];
  it.each(cases)('refuses a file with %s', async (_name, mutate, msg) => {
    const t = new Map(tensors);
    const m = { ...metadata };
    mutate(t, m);
    const p = join(dir, `bad-${_name.replace(/\W+/g, '_')}.safetensors`);
    await writeSafetensors(p, t, m);
    expectModelError(() => loadPrior(p), msg);
  });

  it('refuses truncated, garbage and missing files', async () => {
    const good = join(dir, 'good.safetensors');
    await writePrior(good, base);
    const bytes = readFileSync(good);
    const trunc = join(dir, 'truncated.safetensors');
    writeFileSync(trunc, bytes.subarray(0, bytes.length - 1000));
    expectModelError(() => loadPrior(trunc), /invalid prior file .*truncated\.safetensors: cannot read it as safetensors: tensor '\w+' ends at /);
    const junk = join(dir, 'junk.safetensors');
    writeFileSync(junk, Buffer.from('not a safetensors file at all'));
    expectModelError(() => loadPrior(junk), /cannot read it as safetensors/);
    const nope = join(dir, 'nope.safetensors');
    expectModelError(() => loadPrior(nope), /^invalid prior file .*nope\.safetensors: cannot open it: ENOENT: no such file or directory$/);
    // Each message names the file once (the reader's own "<path>: " and Node's "open '<path>'" are dropped).
    for (const p of [trunc, junk, nope]) {
      const message = (() => {
        try {
          loadPrior(p);
        } catch (e) {
          return (e as Error).message;
        }
        return '';
      })();
      expect(message.split(p).length - 1, message).toBe(1);
    }
    // priorFromTensors without metadata at all
    expectModelError(() => priorFromTensors(new Map(tensors), undefined), /"format"/);
  });
});

describe('kmeans', () => {
  it('separates well-apart clusters, deterministically', () => {
    const rng = createRng(5);
    const pts: Float32Array[] = [];
    const truth: number[] = [];
    for (let i = 0; i < 90; i++) {
      const k = i % 3;
      truth.push(k);
      const x = new Float32Array(8);
      for (let j = 0; j < 8; j++) x[j] = k * 10 + rng.normal();
      pts.push(x);
    }
    const a = kmeans(pts, 3, createRng(1));
    const b = kmeans(pts, 3, createRng(1));
    expect(a.assignments).toEqual(b.assignments);
    // Same partition as the truth, up to relabelling.
    const map = new Map<number, number>();
    for (let i = 0; i < 90; i++) {
      if (!map.has(truth[i])) map.set(truth[i], a.assignments[i]);
      expect(a.assignments[i]).toBe(map.get(truth[i]));
    }
    expect(new Set(map.values()).size).toBe(3);
    expect(() => kmeans(pts.slice(0, 2), 3, createRng(1))).toThrow(/cannot make 3 clusters from 2/);
  });
});

describe('the shipped test prior (models/test-prior)', () => {
  const path = fileURLToPath(new URL('../../../models/test-prior/prior.safetensors', import.meta.url));

  it('loads, is small, and samples', () => {
    expect(readFileSync(path).length).toBeLessThan(2 * 1024 * 1024);
    const prior = loadPrior(path);
    expect(prior.components).toBe(1);
    expect(prior.choleskyDType).toBe('float16');
    expect(prior.metadata.source).toMatch(/make-test-prior\.ts/);
    const s = samplePrior(prior, 1000, createRng(0));
    expect(s.length).toBe(1000 * D);
    // Samples vary (not a constant image) and are valid pixels.
    let min = 1, max = 0;
    for (const v of s) { min = Math.min(min, v); max = Math.max(max, v); }
    expect(max - min).toBeGreaterThan(0.5);
  });

  it('is reproduced byte for byte by make-test-prior.ts', async () => {
    const out = join(dir, 'regen.safetensors');
    await writePrior(out, makeTestPrior());
    const h = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
    expect(h(out)).toBe(h(path));
  });

  it('downscaleForPrior makes a 768-value CHW vector from any image size', () => {
    const v = downscaleForPrior(solidImage(37, 91, [1, 0.5, 0]));
    expect(v.length).toBe(D);
    expect(v[0]).toBeCloseTo(1, 6);
    expect(v[256]).toBeCloseTo(0.5, 6);
    expect(v[512]).toBeCloseTo(0, 6);
  });
});
