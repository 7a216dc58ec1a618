// Seeded, portable PRNG for the synthesis engine.
//
// Why not Math.random: a request + model + seed must give a bit-identical PNG, so every random draw
// (init sampling, augmentation parameters, noise) comes from here. The generator is xoshiro128**
// (Blackman & Vigna) on uint32 arithmetic (Math.imul and >>> only), so the sequence is identical on
// every platform and Node version. Seeding expands the user seed with splitmix32 so that nearby seeds
// (0, 1, 2…) give unrelated streams and the all-zero state can never occur.
//
// Streams: `fork(label)` derives a child generator from the *seed key* and the label, not from the
// parent's current position. So the augmentation stream does not shift when the init sampler draws more
// (or fewer) numbers, and forking the same label twice gives the same stream.
//
// normal() uses Marsaglia's polar method: it needs only Math.log and Math.sqrt. sqrt is exactly rounded
// by IEEE 754; V8's Math.log is its fdlibm port (ieee754::log), which is the same code on every
// platform, so normals are bit-identical too.

import { EngineError } from '../errors.ts';

/** splitmix32 step: a strong 32-bit mixer (murmur3 finalizer constants) over a Weyl sequence. */
function mix32(z: number): number {
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

const GOLDEN = 0x9e3779b9;

/** FNV-1a over the UTF-16 code units of a label, then mixed: a stable 32-bit label hash. */
function hashLabel(label: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return mix32(h >>> 0);
}

/** Accepted seeds: a non-negative safe integer (uint32 or up to 2^53−1) or a bigint in [0, 2^64). */
export type Seed = number | bigint;

function seedWords(seed: Seed): [number, number] {
  if (typeof seed === 'bigint') {
    if (seed < 0n || seed >= 1n << 64n) throw new EngineError('invalid_input', `seed must be in [0, 2^64); got ${seed}`, { param: 'seed' });
    return [Number(seed & 0xffffffffn) >>> 0, Number(seed >> 32n) >>> 0];
  }
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new EngineError('invalid_input', `seed must be a non-negative integer ≤ 2^53−1; got ${seed}`, { param: 'seed' });
  }
  return [seed >>> 0, Math.floor(seed / 0x100000000) >>> 0];
}

/** Expand a 4-word key into a xoshiro state with splitmix32; never all zero. */
function expandKey(key: Uint32Array, out: Uint32Array): void {
  let w = (key[0] ^ mix32(key[1] ^ GOLDEN) ^ mix32(key[2] + 0x632be5ab) ^ mix32(key[3] ^ 0x7f4a7c15)) >>> 0;
  for (let i = 0; i < 4; i++) {
    w = (w + GOLDEN) >>> 0;
    out[i] = mix32(w ^ key[i]);
  }
  if ((out[0] | out[1] | out[2] | out[3]) === 0) out[0] = GOLDEN;
}

const TWO_POW_26 = 67108864;
const TWO_POW_53_INV = 1 / 9007199254740992;
const TWO_POW_32 = 4294967296;

export class Rng {
  /** The stream's identity: forks derive from it, it never changes while drawing. */
  private readonly key: Uint32Array;
  private readonly s = new Uint32Array(4);
  private spare = 0;
  private hasSpare = false;

  /** Use `Rng.fromSeed(seed)`; the constructor takes an already-mixed 4-word key. */
  private constructor(key: Uint32Array) {
    this.key = key;
    expandKey(key, this.s);
  }

  static fromSeed(seed: Seed): Rng {
    const [lo, hi] = seedWords(seed);
    // Distinct seeds give distinct keys: (lo, hi) survive unchanged in words 0 and 1.
    return new Rng(new Uint32Array([lo, hi, mix32(lo ^ GOLDEN), mix32(hi + GOLDEN)]));
  }

  /**
   * A generator whose raw xoshiro128** state is exactly `state` (4 uint32 words, not all zero).
   * For reference-vector tests and for resuming a saved stream; forks of it derive from that state.
   */
  static fromState(state: ArrayLike<number>): Rng {
    if (state.length !== 4) throw new EngineError('invalid_input', 'xoshiro128** state needs 4 uint32 words');
    const words = Uint32Array.from(state, (x) => x >>> 0);
    if ((words[0] | words[1] | words[2] | words[3]) === 0) throw new EngineError('invalid_input', 'xoshiro128** state must not be all zero');
    const r = new Rng(words);
    r.s.set(words);
    return r;
  }

  /**
   * An independent child stream named by `label`. It depends only on this stream's seed key and the
   * label (not on how many numbers were drawn), so `rng.fork('aug')` is stable whatever else draws.
   */
  fork(label: string): Rng {
    const h = hashLabel(label);
    const k = this.key;
    return new Rng(
      new Uint32Array([
        mix32(k[0] ^ h),
        mix32((k[1] + h) >>> 0) ^ 0x5bd1e995,
        mix32(k[2] ^ mix32(h + GOLDEN)),
        mix32((k[3] ^ 0xa54ff53a) + h) ^ k[0],
      ].map((x) => x >>> 0)),
    );
  }

  /** Next uniform uint32 (xoshiro128**). */
  nextU32(): number {
    const s = this.s;
    const s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    // result = rotl(s1 * 5, 7) * 9
    const t5 = Math.imul(s1, 5);
    const result = Math.imul((t5 << 7) | (t5 >>> 25), 9) >>> 0;
    const t = s1 << 9;
    let n2 = s2 ^ s0;
    let n3 = s3 ^ s1;
    const n1 = s1 ^ n2;
    const n0 = s0 ^ n3;
    n2 ^= t;
    n3 = (n3 << 11) | (n3 >>> 21);
    s[0] = n0; s[1] = n1; s[2] = n2; s[3] = n3;
    return result;
  }

  /** Uniform float64 in [0, 1) with 53 random bits (two uint32 draws). */
  next(): number {
    const a = this.nextU32() >>> 5; // 27 bits
    const b = this.nextU32() >>> 6; // 26 bits
    return (a * TWO_POW_26 + b) * TWO_POW_53_INV;
  }

  /** Uniform float64 in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Uniform integer in [0, n) without modulo bias; n in [1, 2^32]. */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_POW_32) {
      throw new EngineError('invalid_input', `Rng.int(n) needs an integer n in [1, 2^32]; got ${n}`, { param: 'n' });
    }
    if (n === TWO_POW_32) return this.nextU32();
    // Reject the top partial bucket so every residue is equally likely.
    const limit = TWO_POW_32 - (TWO_POW_32 % n);
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % n;
    }
  }

  /** Standard normal N(0, 1) (Marsaglia polar; the second value of each pair is cached). */
  normal(): number {
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    let u: number, v: number, q: number;
    do {
      u = 2 * this.next() - 1;
      v = 2 * this.next() - 1;
      q = u * u + v * v;
    } while (q >= 1 || q === 0);
    const f = Math.sqrt((-2 * Math.log(q)) / q);
    this.spare = v * f;
    this.hasSpare = true;
    return u * f;
  }

  /** Fill with N(mean, std²) draws, in index order. */
  fillNormal(out: Float32Array | Float64Array, mean = 0, std = 1): typeof out {
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.normal();
    return out;
  }

  /** Fill with U[lo, hi) draws, in index order. */
  fillUniform(out: Float32Array | Float64Array, lo = 0, hi = 1): typeof out {
    for (let i = 0; i < out.length; i++) out[i] = lo + (hi - lo) * this.next();
    return out;
  }

  /** Index drawn with probability proportional to weights[i] (non-negative, positive sum). */
  categorical(weights: ArrayLike<number>): number {
    let total = 0;
    for (let i = 0; i < weights.length; i++) total += weights[i];
    if (!(total > 0) || !Number.isFinite(total)) {
      throw new EngineError('invalid_input', 'categorical weights must be finite, non-negative and not all zero', { param: 'weights' });
    }
    const r = this.next() * total;
    let acc = 0;
    for (let i = 0; i < weights.length; i++) {
      acc += weights[i];
      if (r < acc) return i;
    }
    // Rounding can leave r ≥ the last partial sum: fall back to the last positive weight.
    for (let i = weights.length - 1; i >= 0; i--) if (weights[i] > 0) return i;
    return weights.length - 1;
  }

  /** In-place Fisher–Yates shuffle. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }
}

/** Shorthand for `Rng.fromSeed(seed)`. */
export function createRng(seed: Seed): Rng {
  return Rng.fromSeed(seed);
}
