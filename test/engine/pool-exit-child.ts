// Run by pool-healing.test.ts in a child process: a pool closed with a short bound while a run is inside
// onnxruntime, then the process ends as argv[3] says: 'natural' leaves it to end by itself (its event
// loop empties; it must exit with code 0: a thread let go of there made Node wait at exit for the
// native call and then abort, 134), 'exit' calls process.exit(3), 'end:MS' calls endProcess(3) with a
// grace of MS.
import { EnginePool, endProcess } from '../../gpu-worker/engine/runtime/pool.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';
import { slowModel } from '../helpers/models.ts';

const N = 512;
const minRunMs = Number(process.argv[2] ?? 600);
const x = (): TensorData => ({ dtype: 'float32', dims: [N, N], data: new Float32Array(N * N).fill(1) });
const pool = new EnginePool({ size: 1, sessionOptions: { intraOpThreads: 1 }, closeTimeoutMs: 100 });
// A run long enough to be inside onnxruntime when the process would end, short enough for a test.
let depth = 16;
let h = await pool.load(`slow:${depth}`, slowModel(N, depth));
let runMs = 0;
for (;;) {
  const t0 = performance.now();
  await h.run({ x: x() });
  runMs = Math.round(performance.now() - t0);
  if (runMs >= minRunMs || depth >= 1024) break;
  await pool.unload(`slow:${depth}`);
  depth *= 2;
  h = await pool.load(`slow:${depth}`, slowModel(N, depth));
}
const running = h.run({ x: x() }).then(
  () => 'completed',
  (e: { code?: string }) => e.code,
);
await new Promise((r) => setTimeout(r, 50)); // the run is inside onnxruntime now
const t0 = performance.now();
await pool.close();
const closeMs = Math.round(performance.now() - t0);
const how = process.argv[3] ?? 'natural';
// Measured from the start of the timed run, so the parent can compare the end with the run's length.
console.log(JSON.stringify({ run: await running, closeMs, runningThreads: pool.runningThreads, busyThreads: EnginePool.busyThreads, depth, runMs, how, endingAtMs: Math.round(performance.now() - t0) }));
if (how === 'exit') process.exit(3);
else if (how.startsWith('end:')) await endProcess(3, { graceMs: Number(how.slice(4)), warn: (m) => console.error(m) });
// 'natural': no process.exit(); the process ends once the busy thread has taken its exit request.
