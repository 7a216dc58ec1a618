// IEEE float16 <-> number. The IR keeps float16 tensors as their bit patterns (Uint16Array), since
// Node 20 has no Float16Array: every place that turns numbers into float16 data, or reads numbers
// out of it, goes through these.

const cvt = new DataView(new ArrayBuffer(4));

/** IEEE half bits -> number. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** number -> IEEE half bits, rounding to nearest even (via the float32 value, as numpy/torch do). */
export function f32ToF16(x: number): number {
  cvt.setFloat32(0, x);
  const b = cvt.getUint32(0);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return mant ? sign | 0x7e00 | (mant >>> 13) : sign | 0x7c00; // NaN stays NaN (quiet)
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): value / 2^-24 = full >> (14 - e).
    if (e < -10) return sign;
    const full = mant | 0x800000;
    const shift = 14 - e;
    let h = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // A carry out of the mantissa bumps the exponent, which is exactly right (up to infinity).
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/**
 * f16ToF32 of every half bit pattern, as float32 bits (65 536 entries, 256 KB, built on first use):
 * F16 is the usual dtype of OpenAI-derived checkpoints and of `--keep-fp16` bundles, and f16ToF32's
 * per-element arithmetic made a ViT-B/32 F16 import about 4× slower than a lookup. Copied as bits, so
 * a value is exactly f16ToF32's (NaNs come out as the one NaN it returns).
 */
let f32BitsOfHalf: Uint32Array | undefined;

/** IEEE half bit patterns -> float32 values (f16ToF32 of each, through the table). */
export function f16ToF32Array(bits: Uint16Array): Float32Array {
  if (!f32BitsOfHalf) {
    const values = new Float32Array(1 << 16);
    for (let h = 0; h < values.length; h++) values[h] = f16ToF32(h);
    f32BitsOfHalf = new Uint32Array(values.buffer);
  }
  const table = f32BitsOfHalf;
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = table[bits[i]]!;
  return out;
}

export function f32ToF16Array(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i]);
  return out;
}
