// Test helpers around the reference CLIP fixtures: load weights, run towers, compare like the README says.

import { readSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { referencePath } from './reference.ts';

export function loadReference(file: string): Map<string, TensorData> {
  return readSafetensors(referencePath(file)).tensors;
}

/** max|a − ref| / max|ref| over the whole tensor (the fixture README's comparison). */
export function maxRelErr(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (a.length !== ref.length) throw new Error(`length ${a.length} vs ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - ref[i]));
    den = Math.max(den, Math.abs(ref[i]));
  }
  return num / den;
}

export function toInt64(t: TensorData): TensorData {
  const src = t.data as Int32Array;
  return { dtype: 'int64', dims: [...t.dims], data: BigInt64Array.from(src, (v) => BigInt(v)) };
}

export function asNumbers(t: TensorData): number[] {
  return Array.from(t.data as Float32Array);
}

/** exp(scale)·cos(img_i, txt_j) for i, j. */
export function logits(img: ArrayLike<number>, txt: ArrayLike<number>, n: number, d: number, scaleExp: number): number[] {
  const norm = (v: ArrayLike<number>, r: number) => {
    let s = 0;
    for (let k = 0; k < d; k++) s += v[r * d + k] ** 2;
    return Math.sqrt(s);
  };
  const out: number[] = [];
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let k = 0; k < d; k++) dot += img[i * d + k] * txt[j * d + k];
      out.push((scaleExp * dot) / (norm(img, i) * norm(txt, j)));
    }
  return out;
}
