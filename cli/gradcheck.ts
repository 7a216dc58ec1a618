// clipag gradcheck: directional-derivative check of a bundle's pixel gradient.
import { imageGradientGraph } from '../gpu-worker/engine/clip/graphs.ts';
import { gradcheck, gradcheckDType } from '../gpu-worker/engine/clip/gradcheck.ts';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { intArg, modelDir, parseCliArgs } from './common.ts';

export const summary = 'check a model\'s pixel gradient against finite differences';
export const usage = `usage: clipag gradcheck [--model DIR] [--dtype float64|float32 (default float64; float32 for foreign ONNX towers and exact-GELU models)] [--batch N] [--directions N] [--seed S] [--json]

Compiles the model's image tower with its backward pass, then compares ∇L·d with the central
difference (L(x+hd) − L(x−hd))/2h along random directions d (default 4): alternately one blended
with the gradient and one of ±1 on 64 random pixels. Prints the error per direction, relative to
|∇L·d| (or √Σ(∇L_i·d_i)², where larger); exits 1 when the largest exceeds the tolerance (1e-6 in float64, 2e-2 in float32).`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCliArgs({
    args: argv,
    options: {
      model: { type: 'string' }, dtype: { type: 'string' }, batch: { type: 'string' }, directions: { type: 'string' },
      seed: { type: 'string' }, json: { type: 'boolean' },
    },
    strict: true,
  });
  const batch = intArg(values.batch, 'batch', 1, 1, 64);
  const engine = await ClipEngine.open(modelDir(values.model));
  try {
    // Foreign ONNX towers (Conv) and exact-GELU towers (Erf) hold ops with no float64 CPU kernel: they
    // check in float32; ours otherwise in float64.
    const dtype = gradcheckDType(engine.bundle, values.dtype);
    const src = engine.towerSource();
    // float64 graphs must skip ORT's QuickGelu fusion, which only has a float kernel.
    const handle = await engine.graph(`gradcheck:${dtype}:b${batch}`, () => imageGradientGraph(src, batch, dtype), { graphOptimizationLevel: dtype === 'float64' ? 'basic' : 'all' });
    const res = await gradcheck(handle, { batch, resolution: engine.imageSize, embedDim: engine.embedDim }, {
      dtype, directions: intArg(values.directions, 'directions', 4, 1, 100), seed: intArg(values.seed, 'seed', 1234, 0, 2 ** 32 - 1),
    });
    if (values.json) console.log(JSON.stringify({ model: engine.name, ...res }));
    else {
      for (const [i, d] of res.directions.entries()) console.log(`direction ${i}: analytic ${d.analytic.toExponential(6)}  numeric ${d.numeric.toExponential(6)}  rel.err ${d.relError.toExponential(2)}`);
      console.log(`${res.passed ? 'PASS' : 'FAIL'}: max relative error ${res.maxRelError.toExponential(2)} (${dtype}, tolerance ${res.tolerance})`);
    }
    return res.passed ? 0 : 1;
  } finally {
    await engine.close();
  }
}
