// What each API route waits on in storage round trips. Not a test. Run: npm run bench:api
//
// The app on the local adapters, composed as in AWS mode (the prompt policy and the models read from
// the bucket, the rate limits on), with every BlobStore (S3), JobQueue (SQS) and RateCounter (DynamoDB)
// call counted and delayed by a fixed LAT ms (BENCH_LAT, default 20: an in-region S3 call; the latency
// review's probes used the same). A batch call (deleteMany: S3 DeleteObjects) is one call. So a route's
// wall time ≈ its sequential chain of calls × LAT, plus CPU. Per route: the calls one request makes,
// the most in flight at once, and the median and min wall ms over BENCH_RUNS runs (default 7).
// Then the CPU of signing one S3 GET link (S3BlobStore.signedGetUrl against the SDK's getSignedUrl;
// no network). The last line printed is one JSON object.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createApp, type AppDeps } from '../functions/app.ts';
import { modelsFromBucket } from '../functions/deps/models.ts';
import { S3BlobStore } from '../shared/adapters/aws/s3-blobstore.ts';
import { LocalBlobStore, LocalJobQueue, MemoryRateCounter } from '../shared/adapters/local/index.ts';
import { s3ClientConfig } from '../shared/adapters/stores.ts';
import { BlobApiKeyStore } from '../shared/apikeys.ts';
import { newJobId } from '../shared/ids.ts';
import { BlobJobStore } from '../shared/jobstore.ts';
import { policyFromStore } from '../shared/prompt-policy.ts';
import { GenerationSpec } from '../shared/schemas/generation.ts';
import { newJobRecord, type JobRecord } from '../shared/schemas/job.ts';
import { frameKey } from '../shared/views.ts';

const LAT = Number(process.env.BENCH_LAT ?? 20);
const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const OWNER = 'acct_alice';

const IO: Record<string, ReadonlySet<string>> = {
  S3: new Set(['put', 'get', 'head', 'list', 'delete', 'deleteMany', 'putIfAbsent', 'replaceIfMatch']),
  SQS: new Set(['send', 'receive', 'ack', 'release', 'extendVisibility']),
  DDB: new Set(['get', 'addBelow']),
};

const counter = { calls: 0, byOp: {} as Record<string, number>, inFlight: 0, maxInFlight: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `target` with each I/O call counted and delayed by LAT; the call itself runs on the target (a batch is one call). */
function delayed<T extends object>(service: keyof typeof IO, target: T): T {
  return new Proxy(target, {
    get(t, prop) {
      const value = Reflect.get(t, prop, t) as unknown;
      if (typeof value !== 'function' || typeof prop !== 'string') return value;
      const fn = value as (...args: unknown[]) => unknown;
      if (!IO[service]!.has(prop)) return fn.bind(t);
      return async (...args: unknown[]) => {
        counter.calls++;
        counter.byOp[`${service}.${prop}`] = (counter.byOp[`${service}.${prop}`] ?? 0) + 1;
        counter.inFlight++;
        counter.maxInFlight = Math.max(counter.maxInFlight, counter.inFlight);
        try {
          await sleep(LAT);
          return await fn.apply(t, args);
        } finally {
          counter.inFlight--;
        }
      };
    },
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const r1 = (x: number) => Math.round(x * 10) / 10;

interface Row {
  route: string;
  status: number;
  calls: number;
  byOp: Record<string, number>;
  maxInFlight: number;
  medianMs: number;
  minMs: number;
  chain: number;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'clipag-bench-api-'));
  try {
    const raw = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
    // S3BlobStore has linkLifeSec (credentials, memoized: no I/O once warm); so does this stand-in.
    (raw as unknown as { linkLifeSec(s: number): Promise<number> }).linkLifeSec = async (s: number) => s;
    const blobs = delayed('S3', raw);
    const queue = delayed('SQS', new LocalJobQueue({ dir: join(dir, 'queue'), visibilitySec: 30 }));
    const rateCounter = delayed('DDB', new MemoryRateCounter());
    const jobs = new BlobJobStore(blobs);
    const rawJobs = new BlobJobStore(raw);
    const alice = await new BlobApiKeyStore(raw).create({ name: 'alice', owner: OWNER });

    /** A fresh composition: its prompt-policy and models memos are cold, as on a new instance. */
    const compose = () =>
      createApp({
        blobs,
        queue,
        jobs,
        keys: new BlobApiKeyStore(blobs),
        rateCounter,
        promptPolicy: policyFromStore(blobs),
        models: modelsFromBucket(blobs, 'toy', { defaultInputSize: 224 }),
        limits: { maxBodyBytes: 16 * 1024, maxUploadBytes: 8 * 1024 * 1024, signedUrlTtlSec: 3600, uploadUrlTtlSec: 900, maxActiveJobs: 1000, maxWaitSec: 12, rateLimitPerMin: 1_000_000, uploadsPerHour: 1_000_000, maxWaits: 1000, workerHourlyUsd: 1.2 },
        log: () => {},
      } as AppDeps);
    const app = compose();
    const request = (a: ReturnType<typeof createApp>, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
      a.request(path, {
        method,
        headers: { Authorization: `Bearer ${alice.secret}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}), ...headers },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });

    // 100 succeeded jobs with 4 images each (written without the delay), as the review's probe seeded.
    const base = Date.now() - 10_000_000;
    const spec = GenerationSpec.parse({ prompt: 'a lighthouse', steps: 100, n: 4, model: 'toy' });
    const finished = (id: string, at: number): JobRecord => ({
      ...newJobRecord({ id, owner: OWNER, spec, now: new Date(at) }),
      status: 'succeeded',
      attempts: 1,
      finished_at: new Date(at + 1000).toISOString(),
      outputs: [0, 1, 2, 3].map((i) => ({ key: `outputs/${OWNER}/${id}/${i}.png`, width: 224, height: 224 })),
    });
    let seeded = 0;
    const seedFinished = async (withFiles: boolean) => {
      const at = base + seeded++ * 1000;
      const id = newJobId(at);
      await rawJobs.create(finished(id, at));
      if (withFiles) {
        for (let i = 0; i < 4; i++) {
          await raw.put(`outputs/${OWNER}/${id}/${i}.png`, new Uint8Array(10));
          for (let step = 0; step <= 100; step += 10) await raw.put(frameKey(OWNER, id, i, step, 224, 224), new Uint8Array(10));
        }
      }
      return id;
    };
    for (let i = 0; i < 99; i++) await seedFinished(false);
    const viewed = await seedFinished(true);

    const rows: Row[] = [];
    async function measure(route: string, run: (i: number) => Response | Promise<Response>, before?: (i: number) => Promise<void>): Promise<void> {
      const wall: number[] = [];
      let last: Pick<Row, 'status' | 'calls' | 'byOp' | 'maxInFlight'> | undefined;
      for (let i = 0; i < RUNS; i++) {
        await before?.(i);
        counter.calls = 0;
        counter.byOp = {};
        counter.maxInFlight = 0;
        const t0 = performance.now();
        const res = await run(i);
        await res.arrayBuffer();
        wall.push(performance.now() - t0);
        last = { status: res.status, calls: counter.calls, byOp: { ...counter.byOp }, maxInFlight: counter.maxInFlight };
      }
      const medianMs = median(wall);
      rows.push({ route, ...last!, medianMs: r1(medianMs), minMs: r1(Math.min(...wall)), chain: LAT > 0 ? r1(medianMs / LAT) : 0 });
    }

    const genBody = (seed: number) => ({ prompt: 'a watercolor lighthouse at dusk', steps: 20, seed });
    let seed = 0;
    await request(app, 'GET', '/v1/models'); // warm the memos and the rate counter's window
    await request(app, 'POST', '/v1/generations', genBody(seed++));

    await measure('GET /v1/models (warm)', () => request(app, 'GET', '/v1/models'));
    let cold = app;
    await measure('POST /v1/generations (new instance: policy and models read)', () => request(cold, 'POST', '/v1/generations', genBody(seed++)), async () => {
      cold = compose();
    });
    await measure('POST /v1/generations (warm, no key)', () => request(app, 'POST', '/v1/generations', genBody(seed++)));
    await measure('POST /v1/generations (Idempotency-Key, new)', (i) => request(app, 'POST', '/v1/generations', genBody(seed++), { 'Idempotency-Key': `bench-${i}` }));
    await measure('POST /v1/generations (Idempotency-Key, replay)', (i) => request(app, 'POST', '/v1/generations', genBody(100_000 + i), { 'Idempotency-Key': `bench-replay-${i}` }), async (i) => {
      await request(app, 'POST', '/v1/generations', genBody(100_000 + i), { 'Idempotency-Key': `bench-replay-${i}` });
    });
    await measure('GET /v1/generations/{id} (succeeded, 4 images)', () => request(app, 'GET', `/v1/generations/${viewed}`));
    await measure('GET /v1/generations/{id}/frames (44 frames)', () => request(app, 'GET', `/v1/generations/${viewed}/frames`));
    // The queued jobs the POSTs above made are newest: list past them to the 100 finished ones.
    await measure('GET /v1/generations?limit=20', () => request(app, 'GET', '/v1/generations?limit=20'));
    await measure('GET /v1/generations?limit=100', () => request(app, 'GET', '/v1/generations?limit=100'));
    await measure('GET /v1/generations?status=canceled (no match: scans all)', () => request(app, 'GET', '/v1/generations?status=canceled'));
    let victim = '';
    await measure('DELETE /v1/generations/{id} (4 images + 44 frames)', () => request(app, 'DELETE', `/v1/generations/${victim}`), async () => {
      victim = await seedFinished(true);
    });

    // Signing CPU per S3 GET link, network-free (no request is sent), on the client the deployment builds.
    const s3 = new S3Client({ ...s3ClientConfig({ region: 'eu-west-1' }), credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret', sessionToken: 'token' } });
    const store = new S3BlobStore({ client: s3, bucket: 'clipag-bench-bucket' });
    const cpuPerLink = async (fn: (i: number) => Promise<unknown>, n = 400) => {
      for (let i = 0; i < 40; i++) await fn(i);
      const c = process.cpuUsage();
      for (let i = 0; i < n; i++) await fn(i);
      const used = process.cpuUsage(c);
      return Math.round(((used.user + used.system) / 1000 / n) * 1000) / 1000;
    };
    const key = (i: number) => `outputs/${OWNER}/gen_x/${i % 4}.png`;
    const signing = {
      getSignedUrlMs: await cpuPerLink((i) => getSignedUrl(s3, new GetObjectCommand({ Bucket: 'clipag-bench-bucket', Key: key(i) }), { expiresIn: 3600 })),
      signedGetUrlMs: await cpuPerLink((i) => store.signedGetUrl(key(i), 3600)),
    };

    console.log(`LAT=${LAT} ms per storage/queue/counter call, ${RUNS} runs per route (median / min wall ms; chain = median ÷ LAT)`);
    console.log(`${'route'.padEnd(62)} ${'status'.padStart(6)} ${'calls'.padStart(5)} ${'par'.padStart(4)} ${'median'.padStart(8)} ${'min'.padStart(8)} ${'chain'.padStart(6)}`);
    for (const r of rows) {
      console.log(`${r.route.padEnd(62)} ${String(r.status).padStart(6)} ${String(r.calls).padStart(5)} ${String(r.maxInFlight).padStart(4)} ${r.medianMs.toFixed(1).padStart(8)} ${r.minMs.toFixed(1).padStart(8)} ${r.chain.toFixed(1).padStart(6)}`);
    }
    console.log(`signing one S3 GET link, CPU ms: getSignedUrl ${signing.getSignedUrlMs}, S3BlobStore.signedGetUrl ${signing.signedGetUrlMs}`);
    console.log(JSON.stringify({ bench: 'api-requests', latMs: LAT, runs: RUNS, node: process.version, routes: rows, signing }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
