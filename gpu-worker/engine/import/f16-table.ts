// F16 → F32 widening for `models import` by table lookup: one float32 bit pattern per half bit
// pattern (65 536 entries, 256 KB, built once from f16ToF32). F16 is the usual dtype of OpenAI-derived
// checkpoints, and f16ToF32's per-element arithmetic (2 ** (e - 15)) made a ViT-B/32 F16 import about
// 4× slower than one with --keep-fp16 (docs/import.md). The entries are copied as bits, so the result is
// bit-identical to f16ToF32Array's (NaNs come out as the one NaN f16ToF32 returns, as they do there).

import { f16ToF32 } from '../io/half.ts';

let table: Uint32Array | undefined;

function f32BitsOfF16(): Uint32Array {
  if (!table) {
    const values = new Float32Array(1 << 16);
    for (let h = 0; h < values.length; h++) values[h] = f16ToF32(h);
    table = new Uint32Array(values.buffer);
  }
  return table;
}

/** IEEE half bit patterns → float32 values, as f16ToF32Array, through the table. */
export function f16ToF32ArrayByTable(bits: Uint16Array): Float32Array {
  const t = f32BitsOfF16();
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = t[bits[i]];
  return out;
}
