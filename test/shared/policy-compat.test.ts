// A policy document this version cannot read, mostly one a newer `clipag policy put` wrote (a rule field,
// a version, an enum value this one does not know; the compatibility review, F3). A process that holds
// a good version of it keeps that (ADR 0015, 0018); a fresh one (a cold Lambda, a new worker task, one
// after a rollback) holds none, and used to fall back to the weaker policy: the deployment's for an
// owner's stricter list, the shipped one for the deployment's. Now it fails closed, as a store that
// fails on a first look does: 503 in the API, a retried job in the worker, and an operator line.
import { afterEach, describe, expect, it } from 'vitest';
import { createWorker, type QueueWorker, type WorkerEvent } from '../../gpu-worker/worker/worker.ts';
import type { Synthesizer } from '../../gpu-worker/worker/synthesizer.ts';
import { createApp } from '../../functions/app.ts';
import { idempotencyRecordKey } from '../../functions/idempotency.ts';
import { ownerPolicyKey } from '../../shared/keys.ts';
import { policyFromStore, type PolicyProblemKind, PROMPT_POLICY_KEY } from '../../shared/prompt-policy.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { expectEnvelope, harness } from '../functions/helpers.ts';
import { makeEnv, submit, waitFor, waitForStatus } from '../worker/helpers.ts';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const workers: QueueWorker[] = [];
afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop();
});

const refusing = (id: string, term: string, extra: Record<string, unknown> = {}) => ({ id, category: 'bias', action: 'refuse', message: 'not for this account', terms: [term], ...extra });
const doc = (rules: unknown[], extra: Record<string, unknown> = {}) => ({ version: 1, rules, ...extra });

/** What a newer writer might add: each is unknown to this version's schema. */
const NEWER: Array<[string, unknown]> = [
  ['a rule field', doc([refusing('kids-no-war', 'battlefield', { locale: 'en' })])],
  ['a document version', { ...doc([refusing('kids-no-war', 'battlefield')]), version: 2 }],
  ['a category', doc([{ ...refusing('kids-no-war', 'battlefield'), category: 'privacy' }])],
  ['an action', doc([{ ...refusing('kids-no-war', 'battlefield'), action: 'refuse_and_report' }])],
  ['a document field', doc([refusing('kids-no-war', 'battlefield')], { extends: 'default' })],
];

function store() {
  const blobs = new LocalBlobStore({ rootDir: mkdtempSync(join(tmpdir(), 'clipag-policy-compat-')), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
  const put = (key: string, value: unknown) => blobs.put(key, Buffer.from(JSON.stringify(value)));
  return { blobs, put };
}

function loader(blobs: LocalBlobStore, now: () => number = () => 0) {
  const problems: Array<[string, PolicyProblemKind]> = [];
  const policyOf = policyFromStore(blobs, { ttlMs: 1000, now, onProblem: (p, kind) => void problems.push([p, kind]) });
  const refused = async (owner: string | undefined, prompt: string) => (await policyOf(owner)).screen([{ text: prompt, param: 'prompt' }]).map((hit) => hit.rule);
  return { policyOf, refused, problems };
}

describe('a policy document this version cannot read, in a process that holds no good version of it', () => {
  it.each(NEWER)("an owner's document with %s fails closed (a retryable error), not the deployment's policy; the operator is told why and what to do, once", async (_name, newer) => {
    const { blobs, put } = store();
    await put(ownerPolicyKey('acct_kids'), newer);
    const { policyOf, problems } = loader(blobs);
    await expect(policyOf('acct_kids')).rejects.toMatchObject({ code: 'unavailable', status: 503, retryable: true });
    await expect(policyOf('acct_kids')).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems).toEqual([[expect.stringMatching(/^config\/prompt-policies\/acct_kids\.json is not a valid policy for this version of clipag, and no good version of it has been read: the checks it governs fail/), 'invalid']]);
    expect(problems[0]![0]).toMatch(/newer clipag: store it again with `clipag policy put` of this version .*or upgrade/);
    expect(problems[0]![0]).not.toMatch(/keeping/);
    // Other owners are not held up: they have no document and get the deployment's (here the shipped) policy.
    expect((await policyOf('acct_bob')).screen([{ text: 'pikachu', param: 'prompt' }]).map((h) => h.rule)).toEqual(['protected-characters']);
  });

  it("the deployment's document that does not read is not replaced by the shipped default: owners without their own fail closed, an owner with a good one is served", async () => {
    const { blobs, put } = store();
    await put(PROMPT_POLICY_KEY, doc([refusing('no-circles', 'circle', { severity: 'high' })]));
    await put(ownerPolicyKey('acct_alice'), doc([refusing('no-squares', 'square')]));
    const { policyOf, refused, problems } = loader(blobs);
    await expect(policyOf()).rejects.toMatchObject({ code: 'unavailable' });
    await expect(policyOf('acct_bob')).rejects.toMatchObject({ code: 'unavailable' });
    expect(await refused('acct_alice', 'a circle on a square')).toEqual(['no-squares']);
    expect(problems.map(([p]) => p)).toEqual([expect.stringMatching(/^config\/prompt-policy\.json is not a valid policy for this version .*rather than the shipped policy in its place.*rules\.0: Unrecognized key/)]);
  });

  it('a document too large to read, with no good version held, fails closed too', async () => {
    const body = Buffer.from(JSON.stringify(doc([refusing('no-circles', 'circle')])));
    const source = { head: async () => ({ size: 100, etag: '"small"' }), get: async () => ({ body: Buffer.concat([body, Buffer.alloc(3 * 1024 * 1024, 0x20)]), etag: '"big"' }) };
    const problems: string[] = [];
    await expect(policyFromStore(source, { onProblem: (p) => void problems.push(p) })()).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems).toEqual([expect.stringMatching(/not a valid policy for this version.*over the 2097152-byte limit/)]);
  });

  it('stored again as this version writes it, the document is in force at the next look; removed, the fallback is', async () => {
    const { blobs, put } = store();
    let nowMs = 0;
    await put(ownerPolicyKey('acct_kids'), NEWER[0]![1]);
    const { policyOf, refused, problems } = loader(blobs, () => nowMs);
    await expect(policyOf('acct_kids')).rejects.toMatchObject({ code: 'unavailable' });
    await put(ownerPolicyKey('acct_kids'), doc([refusing('kids-no-war', 'battlefield')]));
    nowMs = 1000;
    expect(await refused('acct_kids', 'a battlefield at dawn')).toEqual(['kids-no-war']);
    await blobs.delete(ownerPolicyKey('acct_kids'));
    nowMs = 2000;
    expect(await refused('acct_kids', 'a battlefield at dawn')).toEqual([]);
    expect(problems).toHaveLength(1);
  });

  it('a process that holds a good version keeps it when a newer writer replaces it (unchanged), and says so', async () => {
    const { blobs, put } = store();
    let nowMs = 0;
    await put(ownerPolicyKey('acct_kids'), doc([refusing('kids-no-war', 'battlefield')]));
    const { refused, problems } = loader(blobs, () => nowMs);
    expect(await refused('acct_kids', 'a battlefield at dawn')).toEqual(['kids-no-war']);
    await put(ownerPolicyKey('acct_kids'), NEWER[0]![1]);
    nowMs = 1000;
    expect(await refused('acct_kids', 'a battlefield at dawn')).toEqual(['kids-no-war']);
    expect(problems).toEqual([[expect.stringMatching(/acct_kids\.json is not a valid policy; keeping its last good version: rules\.0: Unrecognized key/), 'invalid']]);
  });

  it("a store that fails after such a look keeps failing the checks, and does not claim to keep the deployment's policy", async () => {
    const { blobs, put } = store();
    let nowMs = 0;
    let down = false;
    await put(ownerPolicyKey('acct_kids'), NEWER[0]![1]);
    const source = { head: async (key: string) => (down ? Promise.reject(new Error('s3 is down')) : blobs.head(key)), get: (key: string) => blobs.get(key) };
    const problems: string[] = [];
    const policyOf = policyFromStore(source, { ttlMs: 1000, now: () => nowMs, onProblem: (p) => void problems.push(p) });
    await expect(policyOf('acct_kids')).rejects.toMatchObject({ code: 'unavailable' });
    down = true;
    nowMs = 1000;
    await expect(policyOf('acct_kids')).rejects.toMatchObject({ code: 'unavailable' });
    expect(problems[1]).toMatch(/acct_kids\.json could not be read; its checks still fail \(no good version of it read\): s3 is down/);
  });
});

describe('the same document at the API and in the worker', () => {
  it("an owner's stricter list a newer CLI wrote: POST answers 503 unavailable with Retry-After, makes no job and claims no key; not allowed under the deployment's policy", async () => {
    const h = await harness();
    try {
      await h.blobs.put(ownerPolicyKey('acct_alice'), Buffer.from(JSON.stringify(NEWER[0]![1])));
      const app = createApp({ ...h.deps, promptPolicy: policyFromStore(h.blobs, { onProblem: () => undefined }) });
      const res = await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.alice}`, 'Content-Type': 'application/json', 'Idempotency-Key': 'k1' }, body: JSON.stringify({ prompt: 'a battlefield at dawn' }) });
      expect(res.headers.get('Retry-After')).toBe('1');
      await expectEnvelope(res, 503, 'unavailable');
      expect((await h.jobs.listByOwner('acct_alice')).jobs).toEqual([]);
      expect(await h.blobs.get(idempotencyRecordKey('acct_alice', 'k1'))).toBeNull();
      // Bob has no document of his own: served as before.
      expect((await app.request('/v1/generations', { method: 'POST', headers: { Authorization: `Bearer ${h.bob}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a battlefield at dawn' }) })).status).toBe(202);
    } finally {
      await h.close();
    }
  });

  it("an operator's withholding output rules a newer CLI wrote: the worker's job is retried, never run under the shipped rules (which only flag)", async () => {
    const env = await makeEnv();
    const operator = { version: 1, rules: [], output_rules: [{ id: 'no-mice', category: 'copyright', action: 'withhold', message: 'no mice here', concepts: ['Mickey Mouse'], above_prompt_by: 0, threshold_mode: 'strict' }] };
    await env.blobs.put(PROMPT_POLICY_KEY, Buffer.from(JSON.stringify(operator)));
    const policy = policyFromStore(env.blobs, { onProblem: () => undefined });
    const runs: string[] = [];
    const synthesizer: Synthesizer = {
      async run(job) {
        runs.push(job.id);
        throw new Error('must not run');
      },
    };
    const events: WorkerEvent[] = [];
    const worker = createWorker({
      queue: env.queue, jobs: env.jobs, blobs: env.blobs, synthesizer,
      config: { visibilityTimeoutSec: 30, maxReceives: 2, receiveWaitSec: 1, progressIntervalMs: 0, retryDelaySec: 1 },
      webhooks: { notify: () => undefined, drain: async () => undefined },
      outputScreen: async (owner) => (await policy(owner)).output,
      onEvent: (e) => events.push(e),
    });
    worker.start();
    workers.push(worker);
    const job = await submit(env, {});
    const finished = () => events.flatMap((e) => (e.type === 'job_finished' ? [[e.outcome, e.error?.code]] : []));
    await waitFor('the job to be given up', () => finished().some(([outcome]) => outcome !== 'requeued'));
    expect(runs).toEqual([]);
    expect(finished()[0]).toEqual(['requeued', 'unavailable']);
    // At the receive limit it is given up (the operator fixes the document, the caller submits again); it never ran.
    expect((await waitForStatus(env, job.id, ['failed'])).error).toMatchObject({ code: 'retries_exhausted' });
  });
});
