// F16 → F32 widening by table (io/half.ts f16ToF32Array: imports and --keep-fp16 bundles) against the
// per-element arithmetic (f16ToF32), on all 65 536 half bit patterns: ±0, subnormals, normals, ±Inf and
// every NaN payload. Compared as float32 bits, so a changed zero sign or NaN pattern counts as a difference.
import { describe, expect, it } from 'vitest';
import { f16ToF32, f16ToF32Array } from '../../gpu-worker/engine/io/half.ts';

const ALL = Uint16Array.from({ length: 1 << 16 }, (_, h) => h);

describe('F16 → F32 by table', () => {
  it('is bit-identical to f16ToF32 on every half bit pattern', () => {
    const table = new Uint32Array(f16ToF32Array(ALL).buffer);
    const arithmetic = new Uint32Array(Float32Array.from(ALL, (h) => f16ToF32(h)).buffer);
    const differ = [...ALL].filter((h) => table[h] !== arithmetic[h]);
    expect(differ).toEqual([]);
  });

  it('gives f16ToF32\'s value for each pattern: NaN for every NaN payload, signed zeros and infinities, exact subnormals', () => {
    const out = f16ToF32Array(ALL);
    for (let h = 0; h < ALL.length; h++) {
      // Object.is: NaN equals NaN (f16ToF32 drops payloads), +0 and -0 differ.
      if (!Object.is(out[h], Math.fround(f16ToF32(h)))) throw new Error(`0x${h.toString(16)}: ${out[h]} vs ${f16ToF32(h)}`);
    }
    expect(Object.is(out[0x8000], -0)).toBe(true);
    expect(out[0x7c00]).toBe(Infinity);
    expect(out[0xfc00]).toBe(-Infinity);
    expect(Number.isNaN(out[0x7c01]) && Number.isNaN(out[0xfe00]) && Number.isNaN(out[0x7fff])).toBe(true);
    expect(out[0x0001]).toBe(2 ** -24); // smallest subnormal
    expect(out[0x03ff]).toBe(1023 * 2 ** -24); // largest subnormal
    expect(out[0x7bff]).toBe(65504); // largest normal
  });

  it('keeps the input order and length (a subarray of a bigger array too)', () => {
    const backing = Uint16Array.from([0x3c00, 0xc000, 0x3800, 0x0000, 0x7c00]);
    expect([...f16ToF32Array(backing.subarray(1, 4))]).toEqual([-2, 0.5, 0]);
    expect(f16ToF32Array(new Uint16Array(0))).toHaveLength(0);
  });
});
