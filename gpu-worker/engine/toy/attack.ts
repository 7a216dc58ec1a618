// One PGD update on a batch of images, shared by the CLIP trainer (TeCoA), the judge's adversarial
// fine-tune and the robustness measurement: ascend the loss gradient, project onto the ε-ball around
// the clean pixels, and keep pixels in [0, 1].

export type AttackNorm = 'l2' | 'linf';

/**
 * In place on `x` ([batch, n] flattened). L2: a step of `alpha` along each image's normalized gradient,
 * then projection onto the L2 ball of radius `eps`. L∞: a signed step of `alpha`, then clipping to the box.
 */
export function pgdUpdate(x: Float32Array, clean: Float32Array, grad: Float32Array, batch: number, norm: AttackNorm, eps: number, alpha: number): void {
  const n = clean.length / batch;
  for (let i = 0; i < batch; i++) {
    const o = i * n;
    if (norm === 'l2') {
      let g2 = 0;
      for (let k = 0; k < n; k++) g2 += grad[o + k] ** 2;
      const gs = alpha / Math.max(Math.sqrt(g2), 1e-12);
      let d2 = 0;
      for (let k = 0; k < n; k++) {
        let v = x[o + k] + gs * grad[o + k];
        v = v < 0 ? 0 : v > 1 ? 1 : v;
        x[o + k] = v;
        d2 += (v - clean[o + k]) ** 2;
      }
      const d = Math.sqrt(d2);
      if (d > eps) {
        const f = eps / d;
        for (let k = 0; k < n; k++) x[o + k] = clean[o + k] + (x[o + k] - clean[o + k]) * f;
      }
    } else {
      for (let k = 0; k < n; k++) {
        const g = grad[o + k];
        let v = x[o + k] + alpha * (g > 0 ? 1 : g < 0 ? -1 : 0);
        v = Math.min(clean[o + k] + eps, Math.max(clean[o + k] - eps, v));
        x[o + k] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
    }
  }
}
