// The worker's half of the output check (ADR 0017): it scores every image against the policy's
// concepts, withholds (never stores) or flags the images that match, and fails a job whose every
// image is withheld. The synthesizer here returns fixed cosines so each rule's edge is exact; the
// engine's scoring is proven in test/engine/synth/screen.test.ts, and the whole path on the real
// engine in test/e2e/local-mode.test.ts. The stores and the queue are the real local adapters.
// The worker's lost-reply tests live here too: they need the same fixed synthesizer.
import { afterEach, describe, expect, it } from 'vitest';
import { createWorker, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { SynthesisOutcome, SynthesizedImage, Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { encodePng, solidImage } from '../../gpu-worker/engine/synth/image.ts';
import { compileOutputScreen, type OutputScreen, POLICY_RETRY_MS, policyFromStore, PROMPT_POLICY_KEY } from '../../shared/prompt-policy.ts';
import { generationView } from '../../shared/views.ts';
import { readUsage, usageFromRecords, usageOfRecord } from '../../shared/usage.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { lostReplyOnce } from '../helpers/lost-reply.ts';
import type { JobStore } from '../../shared/ports.ts';
import { type Env, listKeys, makeEnv, OWNER, submit, waitFor, waitForStatus } from './helpers.ts';

const workers: QueueWorker[] = [];
afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop();
});

const screen = compileOutputScreen([
  { id: 'mouse', category: 'copyright', action: 'withhold', message: 'looks like a mouse we do not own', concepts: ['Mickey Mouse'], above_prompt_by: 0 },
  { id: 'swoosh', category: 'trademark', action: 'flag', message: 'looks like a logo', concepts: ['the Nike logo'], min_cosine: 0.25 },
]);

/** n images; image i scores `clip` against its prompt and cosines[i] against [Mickey Mouse, the Nike logo]. */
function fixedSynthesizer(cosines: Array<Array<number | null>>, seen: { screenTexts?: readonly string[] } = {}): Synthesizer {
  return {
    async run(job, options = {}) {
      seen.screenTexts = options.screenTexts;
      const images: SynthesizedImage[] = cosines.map((c, index) => ({
        index, seed: index, png: encodePng(solidImage(8, 8, [index / 4, 0.5, 0.5])), width: 8, height: 8,
        clipScore: 0.3, scores: [{ text: job.spec.prompt ?? '', weight: 1, cosine: 0.3 }],
        screenCosines: options.screenTexts ? c : [],
        frames: [{ step: 0, png: encodePng(solidImage(8, 8, [0, 0, 0])) }],
        stepsDone: 6,
      }));
      return { images, aborted: false, stepsDone: 6 * images.length, totalSteps: 6 * images.length, encoderPasses: 10, timingsMs: { total: 5, sessionRun: 4, optimize: 3 } } satisfies SynthesisOutcome;
    },
  };
}

function start(env: Env, synthesizer: Synthesizer, outputScreen?: (owner: string) => Promise<OutputScreen>, jobs: JobStore = env.jobs, config: { maxReceives?: number; retryDelaySec?: number } = {}) {
  const events: WorkerEvent[] = [];
  const notified: string[] = [];
  const worker = createWorker({
    queue: env.queue, jobs, blobs: env.blobs, synthesizer,
    config: { visibilityTimeoutSec: 30, maxReceives: 2, receiveWaitSec: 1, progressIntervalMs: 0, ...config },
    webhooks: { notify: (_o, id) => void notified.push(id), drain: async () => undefined },
    ...(outputScreen ? { outputScreen } : {}),
    onEvent: (e) => events.push(e),
  });
  worker.start();
  workers.push(worker);
  return { worker, events, notified };
}

describe('the output check in the worker', () => {
  it('withholds a matching image (not stored, nor its frames; an earlier copy deleted), flags another, publishes the rest; the view keeps each image its index', async () => {
    const env = await makeEnv();
    const seen: { screenTexts?: readonly string[] } = {};
    const job = await submit(env, { n: 3 });
    // A stale copy of image 0 and its frames from an earlier attempt under another policy: they must go too.
    for (const key of ['0.png', 'frames/0/0000.png', 'frames/0/0002.png']) {
      await env.blobs.put(`outputs/${OWNER}/${job.id}/${key}`, encodePng(solidImage(8, 8, [1, 1, 1])), { contentType: 'image/png' });
    }
    const askedFor: string[] = [];
    start(env, fixedSynthesizer([[0.31, 0.1], [0.29, 0.25], [0.3 - 1e-9, 0.2499]], seen), async (owner) => (askedFor.push(owner), screen));
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(askedFor).toEqual([OWNER]); // the job owner's policy (ADR 0018)
    expect(seen.screenTexts).toEqual(['Mickey Mouse', 'the Nike logo']);
    expect(done.status).toBe('succeeded');
    expect(done.outputs.map((o) => o.key)).toEqual([`outputs/${OWNER}/${job.id}/1.png`, `outputs/${OWNER}/${job.id}/2.png`]);
    expect(done.output_checks).toEqual([
      { index: 0, withheld: true, flags: [{ rule: 'mouse', category: 'copyright', action: 'withhold', concept: 'Mickey Mouse', message: 'looks like a mouse we do not own', cosine: 0.31 }] },
      { index: 1, withheld: false, flags: [{ rule: 'swoosh', category: 'trademark', action: 'flag', concept: 'the Nike logo', message: 'looks like a logo', cosine: 0.25 }] },
    ]);
    const stored = await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`);
    expect(stored.sort()).toEqual([`outputs/${OWNER}/${job.id}/1.png`, `outputs/${OWNER}/${job.id}/2.png`, expect.stringMatching(new RegExp(`^outputs/${OWNER}/${job.id}/frames/1/0000_\\d+x\\d+\\.png$`)), expect.stringMatching(new RegExp(`^outputs/${OWNER}/${job.id}/frames/2/0000_\\d+x\\d+\\.png$`))]);

    const view = await generationView(done, env.blobs, 600, new Date());
    expect(view.outputs.map((o) => [o.index, o.content_flags?.map((f) => f.rule)])).toEqual([[1, ['swoosh']], [2, undefined]]);
    expect(view.withheld_outputs).toEqual([{ index: 0, content_flags: done.output_checks![0]!.flags }]);
    // What `clipag usage audit/rebuild` reads off the record is what the worker added: 3 images made.
    await waitFor('the usage', async () => (await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7))).length > 0);
    const month = done.finished_at!.slice(0, 7);
    expect(usageFromRecords([done], month).days).toEqual(await readUsage(env.blobs, OWNER, month));
    expect(usageOfRecord(done)).toMatchObject({ images: 3 });
  });

  it('a job whose every image is withheld fails with content_policy, says why, stores nothing, and still ends (webhook, usage)', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    const w = start(env, fixedSynthesizer([[0.5, 0.9], [0.35, null]]), async () => screen);
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(done.status).toBe('failed');
    expect(done.error).toEqual({
      code: 'content_policy',
      message: 'the output check withheld every image: image 0 looks like "Mickey Mouse" (copyright, rule mouse, cosine 0.500): looks like a mouse we do not own (and 1 more image; see withheld_outputs)',
    });
    expect(done.outputs).toEqual([]);
    expect(done.output_checks!.map((c) => [c.index, c.withheld, c.flags.map((f) => f.rule)])).toEqual([[0, true, ['mouse', 'swoosh']], [1, true, ['mouse']]]);
    expect(done.usage.encoder_passes).toBe(10);
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);
    // The compute was spent: the owner's usage counts the job and its two images (ADR 0019).
    await waitFor('the usage', async () => (await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7))).length > 0);
    expect(await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7))).toEqual([
      { date: done.finished_at!.slice(0, 10), generations: 1, images: 2, worker_seconds: done.usage.worker_seconds, encoder_passes: 10 },
    ]);
    expect(usageFromRecords([done], done.finished_at!.slice(0, 7)).days).toEqual(await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7)));
    await waitFor('the webhook notice', () => w.notified.includes(job.id));
    const view = await generationView(done, env.blobs, 600, new Date());
    expect([view.outputs, view.withheld_outputs.map((o) => o.index)]).toEqual([[], [0, 1]]);
  });

  it('a final record write that landed but whose reply was lost still ends the job here: usage counted once, webhook told', async () => {
    const env = await makeEnv();
    // The write that ends the job lands; its reply is lost once (the SDK's retry then fails its condition).
    const lossy = lostReplyOnce(env.blobs, (key, body) => key.startsWith('jobs/') && Buffer.from(body).toString().includes('"status":"succeeded"'));
    const job = await submit(env, { n: 2 });
    const w = start(env, fixedSynthesizer([[0.1, 0.1], [0.1, 0.1]]), async () => screen, new BlobJobStore(lossy.blobs));
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, lossy.lost()]).toEqual(['succeeded', 1]);
    await waitFor('the job to end here', () => w.events.some((e) => e.type === 'job_finished' && e.jobId === job.id));
    expect(w.events.find((e) => e.type === 'job_finished' && e.jobId === job.id)).toMatchObject({ outcome: 'succeeded' });
    expect(w.notified).toEqual([job.id]);
    expect(await readUsage(env.blobs, OWNER, done.finished_at!.slice(0, 7))).toEqual([
      { date: done.finished_at!.slice(0, 10), generations: 1, images: 2, worker_seconds: done.usage.worker_seconds, encoder_passes: 10 },
    ]);
  });

  it('a start claim that landed but whose reply was lost is still this delivery\'s: one attempt counted, the job runs', async () => {
    const env = await makeEnv();
    const lossy = lostReplyOnce(env.blobs, (key, body) => key.startsWith('jobs/') && Buffer.from(body).toString().includes('"status":"running"'));
    const job = await submit(env, {});
    const w = start(env, fixedSynthesizer([[0.1, 0.1]]), async () => screen, new BlobJobStore(lossy.blobs));
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect([done.status, done.attempts, lossy.lost()]).toEqual(['succeeded', 1, 1]);
    expect(w.events.filter((e) => e.type === 'job_started').map((e) => e.type === 'job_started' && e.attempt)).toEqual([1]);
  });

  it('an image is never published unchecked: a synthesizer that did not score the concepts fails the job; no screen, no check', async () => {
    const env = await makeEnv();
    const careless: Synthesizer = {
      run: async (job, options) => fixedSynthesizer([[0.9, 0.9]]).run(job, { ...options, screenTexts: undefined }),
    };
    const job = await submit(env, {});
    start(env, careless, async () => screen);
    const failed = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatchObject({ code: 'internal_error' }); // the detail is logged, not shown to the caller
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);

    // Without a screen (or with one that names no concept) every image is published as before.
    for (const outputScreen of [undefined, async () => compileOutputScreen([])]) {
      const env2 = await makeEnv();
      const seen: { screenTexts?: readonly string[] } = {};
      const ok = await submit(env2, {});
      start(env2, fixedSynthesizer([[0.9, 0.9]], seen), outputScreen);
      const done = await waitForStatus(env2, ok.id, ['succeeded', 'failed']);
      expect([done.status, done.outputs.length, done.output_checks, seen.screenTexts]).toEqual(['succeeded', 1, undefined, undefined]);
    }
  });

  it("a policy the store cannot give on a first look is a retryable error: the job waits for the operator's withholding rules, never runs under the shipped ones that only flag", async () => {
    const env = await makeEnv();
    // The operator withholds what looks like Mickey Mouse; the shipped rules would only flag it.
    const operator = { version: 1, rules: [], output_rules: [{ id: 'no-mice', category: 'copyright', action: 'withhold', message: 'no mice here', concepts: ['Mickey Mouse'], above_prompt_by: 0 }] };
    await env.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(operator)));
    let throttled = 1; // the first HEAD of the deployment's document: an S3 throttle as the worker starts
    const store = {
      async head(key: string) {
        if (key === PROMPT_POLICY_KEY && throttled-- > 0) throw new Error('SlowDown: please reduce your request rate');
        return env.blobs.head(key);
      },
      get: (key: string) => env.blobs.get(key),
    };
    const policy = policyFromStore(store, { onProblem: () => undefined });
    const runs: Array<readonly string[] | undefined> = [];
    const mouseLike: Synthesizer = {
      async run(job, options = {}) {
        runs.push(options.screenTexts);
        // The image is as close to "Mickey Mouse" as to its prompt, and to no other concept.
        return fixedSynthesizer([(options.screenTexts ?? []).map((c) => (c === 'Mickey Mouse' ? 0.3 : 0))]).run(job, options);
      },
    };
    const job = await submit(env, {});
    // The message comes back after the loader's retry delay (retryDelaySec × receive count), not a TTL.
    expect(POLICY_RETRY_MS).toBeLessThanOrEqual(1000);
    const w = start(env, mouseLike, async (owner) => (await policy(owner)).output, env.jobs, { maxReceives: 3, retryDelaySec: 1 });
    const done = await waitForStatus(env, job.id, ['succeeded', 'failed']);
    // The first attempt ran nothing and was put back (a retryable error); the second ran under the operator's rules.
    const finished = () => w.events.flatMap((e) => (e.type === 'job_finished' ? [[e.outcome, e.error?.code]] : []));
    await waitFor('the job to end', () => finished().some(([outcome]) => outcome !== 'requeued'));
    expect(finished()).toEqual([
      ['requeued', 'unavailable'],
      ['failed', 'content_policy'],
    ]);
    expect(runs).toEqual([['Mickey Mouse']]);
    expect(done.status).toBe('failed');
    expect(done.output_checks).toEqual([{ index: 0, withheld: true, flags: [expect.objectContaining({ rule: 'no-mice', action: 'withhold' })] }]);
    expect(await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).toEqual([]);
  });
});
