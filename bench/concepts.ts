// Output-check benchmark (ADR 0017). Not a test. Run: npm run bench:concepts
//
// What the output check costs on a ViT-B/32-sized model (random weights, CLIP's BPE tokenizer, so every
// shipped concept is readable), on BENCH_THREADS (default 2) CPU threads:
//   - embedding the shipped policy's concepts: in a worker's first job (after its prompt compiled the
//     batch-1 text graph the concepts also use), uncached (median of 3: a new policy version naming new
//     concepts), and as a cache hit (every later job);
//   - the final scoring of one 224×224 image against its prompt alone and against the prompt plus all the
//     concepts (median of 7 each): the check adds dot products, no encoder pass.
// The last line printed is one JSON object.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PRESETS } from '../gpu-worker/engine/clip/arch.ts';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { noiseImage } from '../gpu-worker/engine/synth/image.ts';
import { cosinesOver } from '../gpu-worker/engine/synth/synthesize.ts';
import { Rng } from '../gpu-worker/engine/synth/rng.ts';
import { defaultPromptPolicy } from '../shared/prompt-policy.ts';
import { median, r1, r3, randomBundle } from './common.ts';

const THREADS = Number(process.env.BENCH_THREADS ?? 2);

async function timed<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const v = await f();
  return [performance.now() - t, v];
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'clipag-bench-concepts-'));
  try {
    await randomBundle(PRESETS['ViT-B-32'], dir, 'bench/concepts.ts');
    const concepts = defaultPromptPolicy().output.concepts;
    const engine = await ClipEngine.open(dir, { threads: THREADS });
    try {
      // As in a job: its prompt is embedded first (compiling the batch-1 text graph), then the concepts.
      const [promptMs] = await timed(() => engine.embedText(['a red apple on a wooden table']));
      const [coldMs, units] = await timed(() => engine.conceptEmbeddings(concepts));
      const readable = units.filter((u) => u !== null).length;
      const uncached: number[] = [];
      for (let i = 0; i < 3; i++) {
        const fresh = concepts.map((c) => `${c} ${i}`); // not in the cache: embedded as a new policy's would be
        uncached.push((await timed(() => engine.conceptEmbeddings(fresh)))[0]);
      }
      const hit: number[] = [];
      for (let i = 0; i < 5; i++) hit.push((await timed(() => engine.conceptEmbeddings(concepts)))[0]);

      const R = engine.imageSize;
      const image = noiseImage(R, R, Rng.fromSeed(1));
      const [prompt] = await engine.conceptEmbeddings(['a red apple on a wooden table']);
      await cosinesOver(engine, image, [prompt!]); // compile the b1 image graph
      const alone: number[] = [];
      const withConcepts: number[] = [];
      for (let i = 0; i < 7; i++) {
        alone.push((await timed(() => cosinesOver(engine, image, [prompt!])))[0]);
        withConcepts.push((await timed(() => cosinesOver(engine, image, [prompt!, ...units])))[0]);
      }
      const result = {
        model: 'ViT-B-32 (random weights)',
        threads: THREADS,
        concepts: concepts.length,
        readable,
        prompt_first_embed_ms: r1(promptMs),
        embed_first_job_ms: r1(coldMs),
        embed_uncached_ms: r1(median(uncached)),
        embed_cached_ms: r3(median(hit)),
        score_prompt_only_ms: r1(median(alone)),
        score_with_concepts_ms: r1(median(withConcepts)),
        score_overhead_ratio: r3(median(withConcepts) / median(alone)),
      };
      console.log(`${concepts.length} concepts (${readable} readable) on ${result.model}, ${THREADS} threads:`);
      console.log(`  a job's prompt, first embedded (text graph compile): ${result.prompt_first_embed_ms} ms`);
      console.log(`  the concepts: first job ${result.embed_first_job_ms} ms, uncached ${result.embed_uncached_ms} ms, cached ${result.embed_cached_ms} ms`);
      console.log(`  final scoring of one 224×224 image: prompt only ${result.score_prompt_only_ms} ms, with the concepts ${result.score_with_concepts_ms} ms (×${result.score_overhead_ratio})`);
      console.log(JSON.stringify(result));
    } finally {
      await engine.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
