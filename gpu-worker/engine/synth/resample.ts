// Crop + resize + translate + flip as separable resampling matrices.
// A view is Ry · img_c · Rxᵀ per channel, so the whole geometric augmentation is two MatMuls inside
// the step graph and its gradient w.r.t. the image is exact (no sampling op needs a gradient rule).

/**
 * Fill `out` (row-major [outSize, inSize]) with a 1-D resampling operator.
 * Output sample o covers source coordinates [start + o·step, start + (o+1)·step) with step = span/outSize.
 * A triangle (bilinear) filter whose support widens with the downscale factor gives antialiasing
 * (like PIL's bilinear resize). Source positions outside [0, inSize) read zeros: the zero padding that
 * DiffAugment's translation uses. `flip` mirrors the view.
 */
export function resampleMatrix(out: Float32Array | Float64Array, outSize: number, inSize: number, start: number, span: number, flip = false, offset = 0): void {
  const step = span / outSize;
  const support = Math.max(1, step); // filter radius in source pixels
  for (let o = 0; o < outSize; o++) {
    const oo = flip ? outSize - 1 - o : o;
    const center = start + (oo + 0.5) * step - 0.5; // source pixel-centre coordinate
    const lo = Math.max(0, Math.ceil(center - support));
    const hi = Math.min(inSize - 1, Math.floor(center + support));
    const row = offset + o * inSize;
    // Normalize over the whole (unclipped) filter so pixels outside the image count as zeros.
    let total = 0;
    for (let i = Math.ceil(center - support); i <= Math.floor(center + support); i++) total += Math.max(0, 1 - Math.abs(i - center) / support);
    if (total <= 0) continue;
    for (let i = lo; i <= hi; i++) {
      const w = Math.max(0, 1 - Math.abs(i - center) / support);
      if (w > 0) out[row + i] = w / total;
    }
  }
}

/** A square window of the image in source pixel coordinates. */
export interface Window {
  x: number; // left
  y: number; // top
  size: number; // side length in source pixels
  flip: boolean;
}

/**
 * Fill the view's row operator Ry [S, H] and column operator Rxᵀ [W, S] (transposed, so that
 * view = Ry · img · Rxᵀ is two plain MatMuls) at the given offsets of batched buffers.
 */
export function fillViewOperators(rows: Float32Array | Float64Array, rowsOffset: number, colsT: Float32Array | Float64Array, colsOffset: number, S: number, H: number, W: number, win: Window): void {
  resampleMatrix(rows, S, H, win.y, win.size, false, rowsOffset);
  // Build Rx [S, W] in a scratch row-major buffer, then write it transposed into [W, S].
  const rx = new Float64Array(S * W);
  resampleMatrix(rx, S, W, win.x, win.size, win.flip);
  for (let o = 0; o < S; o++) {
    const r = o * W;
    for (let i = 0; i < W; i++) {
      const v = rx[r + i];
      if (v !== 0) colsT[colsOffset + i * S + o] = v;
    }
  }
}
