// What the API Lambda's cold start spends importing its code. Not a test. Run: npm run bench:cold-start
//
// Each sample is a fresh Node process that times one `await import(...)` with performance.now(), so
// every sample pays the whole module graph's evaluation, as a Lambda's Init does. Targets:
// - `bundle`: functions/lambda.ts bundled as the CDK bundles it (cdk/lib/api-stack.ts BUNDLING: esbuild,
//   ESM, node22, minified, everything bundled, source map without sources' text), run with
//   NODE_OPTIONS=--enable-source-maps as deployed. What a Lambda evaluates.
// - `lambda (tsx)`: functions/lambda.ts from the sources through tsx (its transform cache warmed first):
//   the same graph, plus tsx's per-file loading.
// - `prompt-policy (tsx)`: shared/prompt-policy.ts alone (with zod, text-clean and their imports), and
//   after it, in the same process, the first use of the policy (compile the shipped policy, screen one
//   prompt): what a POST pays on its first policy check.
// - `prompt-policy own (tsx)`: the same module once the modules it imports that the rest of the API
//   loads anyway (zod, text-clean, names, keys, errors) are loaded: its own cost (with the confusables
//   JSON, which tsx loads far slower than Node or a bundle does).
// Targets are interleaved run by run (load on a shared machine drifts); per target the median, min
// and max of BENCH_RUNS (default 11) runs. CPU-bound: at the Lambda's 512 MB (≈0.29 vCPU) expect about
// 3.5× these figures. BENCH_ROOT points it at another checkout with the same layout; BENCH_BASELINE
// at a second one (the code before a change, sharing node_modules), whose targets are interleaved with
// these run by run and reported beside them with the difference of the medians.
// The last line printed is one JSON object.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';

const RUNS = Number(process.env.BENCH_RUNS ?? 11);
const ROOT = resolve(process.env.BENCH_ROOT ?? join(fileURLToPath(import.meta.url), '..', '..'));
const BASELINE = process.env.BENCH_BASELINE ? resolve(process.env.BENCH_BASELINE) : undefined;

/** What functions/deps/aws.ts's awsConfig needs to build the app (no call is made at import). */
const LAMBDA_ENV: Record<string, string> = {
  CLIPAG_MODE: 'aws',
  AWS_REGION: 'eu-west-1',
  CLIPAG_BUCKET: 'clipag-bench-bucket',
  CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/bench',
  CLIPAG_RATE_TABLE: 'bench-rate',
  CLIPAG_RATE_LIMIT_PER_MIN: '120',
  CLIPAG_UPLOADS_PER_HOUR: '60',
  CLIPAG_MAX_WAITS: '5',
  CLIPAG_MAX_WAIT_SEC: '12',
  CLIPAG_DEFAULT_MODEL: 'clipag-vit-b32',
  AWS_ACCESS_KEY_ID: 'bench',
  AWS_SECRET_ACCESS_KEY: 'bench',
};

/** The child: times the import, and for the policy its first use; prints one JSON line. */
const CHILD = `
for (const m of (process.env.COLD_START_PRELUDE ?? '').split(',').filter(Boolean)) await import(m);
const t0 = performance.now();
const m = await import(process.argv[2]);
const importMs = performance.now() - t0;
let firstUseMs;
if (process.env.COLD_START_FIRST_USE) {
  const t1 = performance.now();
  m.defaultPromptPolicy().screen([{ text: 'a watercolor lighthouse at dusk', param: 'prompt' }]);
  firstUseMs = performance.now() - t1;
}
console.log(JSON.stringify({ importMs, firstUseMs }));
`;

interface Target {
  name: string;
  root: string;
  args: string[];
  env?: Record<string, string>;
  firstUse?: boolean;
}

function sample(t: Target, child: string): { importMs: number; firstUseMs?: number } {
  const r = spawnSync(process.execPath, [...t.args.slice(0, -1), child, t.args.at(-1)!], {
    cwd: t.root,
    encoding: 'utf8',
    env: { ...process.env, ...LAMBDA_ENV, ...t.env, ...(t.firstUse ? { COLD_START_FIRST_USE: '1' } : {}) },
  });
  if (r.status !== 0) throw new Error(`${t.name}: exit ${r.status}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const median = s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return { median: +median.toFixed(1), min: +s[0]!.toFixed(1), max: +s.at(-1)!.toFixed(1), n: s.length };
};

/** Bundles `root`'s functions/lambda.ts into `outdir` as the CDK does; its size in bytes. */
async function bundleLambda(root: string, outdir: string): Promise<{ file: string; bytes: number }> {
  const file = join(outdir, 'index.mjs');
  const built = await esbuild.build({
    entryPoints: [join(root, 'functions/lambda.ts')],
    bundle: true,
    platform: 'node',
    target: 'node22',
    format: 'esm',
    mainFields: ['module', 'main'],
    minify: true,
    sourcemap: true,
    sourcesContent: false,
    banner: { js: "import { createRequire as __clipagCreateRequire } from 'node:module'; const require = __clipagCreateRequire(import.meta.url);" },
    outfile: file,
    metafile: true,
    logLevel: 'warning',
  });
  return { file, bytes: Object.values(built.metafile.outputs).find((o) => o.entryPoint)!.bytes };
}

/** The targets of one checkout, their names prefixed with `prefix`. */
function targetsOf(root: string, bundleFile: string, prefix: string): Target[] {
  const policy = pathToFileURL(join(root, 'shared/prompt-policy.ts')).href;
  // The modules prompt-policy imports that the rest of the API loads anyway.
  const prelude = [import.meta.resolve('zod'), ...['text-clean', 'names', 'keys', 'errors'].map((m) => pathToFileURL(join(root, `shared/${m}.ts`)).href)].join(',');
  return [
    { name: `${prefix}bundle`, root, args: [pathToFileURL(bundleFile).href], env: { NODE_OPTIONS: '--enable-source-maps' } },
    { name: `${prefix}lambda (tsx)`, root, args: ['--import', 'tsx', pathToFileURL(join(root, 'functions/lambda.ts')).href] },
    { name: `${prefix}prompt-policy (tsx)`, root, args: ['--import', 'tsx', policy], firstUse: true },
    { name: `${prefix}prompt-policy own (tsx)`, root, args: ['--import', 'tsx', policy], env: { COLD_START_PRELUDE: prelude } },
  ];
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-cold-start-'));
  try {
    const child = join(dir, 'child.mjs');
    writeFileSync(child, CHILD);
    const bundle = await bundleLambda(ROOT, join(dir, 'bundle'));
    const targets = targetsOf(ROOT, bundle.file, '');
    const result: Record<string, unknown> = { root: ROOT, node: process.version, runs: RUNS, bundleBytes: bundle.bytes };
    if (BASELINE) {
      const base = await bundleLambda(BASELINE, join(dir, 'baseline'));
      targets.push(...targetsOf(BASELINE, base.file, 'baseline '));
      Object.assign(result, { baseline: BASELINE, baselineBundleBytes: base.bytes });
    }
    // Warm tsx's transform cache and check every target runs.
    for (const t of targets) sample(t, child);
    const imports = new Map<string, number[]>(targets.map((t) => [t.name, []]));
    const firstUses = new Map<string, number[]>();
    for (let run = 0; run < RUNS; run++) {
      for (const t of targets) {
        const s = sample(t, child);
        imports.get(t.name)!.push(s.importMs);
        if (s.firstUseMs !== undefined) firstUses.set(t.name, [...(firstUses.get(t.name) ?? []), s.firstUseMs]);
      }
    }
    console.log(`root ${ROOT}${BASELINE ? `, baseline ${BASELINE}` : ''}; node ${process.version}; ${RUNS} fresh processes per target; bundle ${bundle.bytes} B`);
    const line = (what: string, s: ReturnType<typeof stats>) =>
      console.log(`${what.padEnd(48)} median ${String(s.median).padStart(7)} ms  min ${String(s.min).padStart(7)}  max ${String(s.max).padStart(7)}`);
    for (const [name, xs] of imports) {
      const s = stats(xs);
      line(`import ${name}`, s);
      result[name] = s;
    }
    for (const [name, xs] of firstUses) {
      const s = stats(xs);
      line(`${name}: first use (compile shipped + 1 screen)`, s);
      result[`${name} first use`] = s;
    }
    if (BASELINE) {
      const diff: Record<string, number> = {};
      for (const t of targetsOf(ROOT, '', '')) {
        diff[t.name] = +((result[t.name] as { median: number }).median - (result[`baseline ${t.name}`] as { median: number }).median).toFixed(1);
      }
      diff['prompt-policy first use'] = +((result['prompt-policy (tsx) first use'] as { median: number }).median - (result['baseline prompt-policy (tsx) first use'] as { median: number }).median).toFixed(1);
      console.log(`median minus baseline's median, ms: ${JSON.stringify(diff)}`);
      result.diffMedianMs = diff;
    }
    console.log(JSON.stringify(result));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
