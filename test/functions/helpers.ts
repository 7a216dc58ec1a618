import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { RetryableError } from '../../shared/errors.ts';
import type { BlobStore, JobQueue, ListOptions } from '../../shared/ports.ts';
import { PENDING_JOBS_PREFIX } from '../../shared/keys.ts';
import { parseQueueMessage } from '../../shared/schemas/queue.ts';
import { createApp, type AppDeps } from '../../functions/app.ts';

export const LIMITS = { maxBodyBytes: 16 * 1024, maxUploadBytes: 8 * 1024 * 1024, signedUrlTtlSec: 600 };

export interface Harness {
  dir: string;
  app: ReturnType<typeof createApp>;
  deps: AppDeps;
  blobs: LocalBlobStore;
  queue: LocalJobQueue;
  jobs: BlobJobStore;
  keys: BlobApiKeyStore;
  /** Secrets for two owners, plus one revoked key of owner A. */
  alice: string;
  bob: string;
  revoked: string;
  logs: unknown[];
  request(path: string, init?: RequestInit & { key?: string | null; json?: unknown }): Promise<Response>;
  close(): Promise<void>;
}

/** The app on the real local adapters in a temp dir. `queue` may be swapped (e.g. a failing one). */
export async function harness(overrides: { queue?: JobQueue } = {}): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'clipag-fn-'));
  const blobs = new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' });
  const queue = new LocalJobQueue({ dir: join(dir, 'queue'), visibilitySec: 30 });
  const jobs = new BlobJobStore(blobs);
  const keys = new BlobApiKeyStore(blobs);
  const alice = (await keys.create({ name: 'alice', owner: 'acct_alice' })).secret;
  const bob = (await keys.create({ name: 'bob', owner: 'acct_bob' })).secret;
  const r = await keys.create({ name: 'old', owner: 'acct_alice' });
  await keys.revoke(r.record.id);
  const logs: unknown[] = [];
  const deps: AppDeps = {
    blobs,
    queue: overrides.queue ?? queue,
    jobs,
    keys,
    models: async () => [{ id: 'toy', default: true, input_size: 224 }],
    limits: LIMITS,
    log: (entry) => logs.push(entry),
  };
  const app = createApp(deps);
  return {
    dir,
    app,
    deps,
    blobs,
    queue,
    jobs,
    keys,
    alice,
    bob,
    revoked: r.secret,
    logs,
    request(path, init = {}) {
      const { key = alice, json, ...rest } = init;
      const headers = new Headers(rest.headers);
      if (key !== null && !headers.has('Authorization')) headers.set('Authorization', `Bearer ${key}`);
      if (json !== undefined) {
        if (!headers.has('Content-Type')) headers.set('Content-Type', 'application/json');
        rest.body = JSON.stringify(json);
        rest.method ??= 'POST';
      }
      return Promise.resolve(app.request(path, { ...rest, headers }));
    },
    close: () => rm(dir, { recursive: true, force: true, maxRetries: 3 }), // retried: a straggling write (a worker stopping) can refill a folder mid-removal
  };
}

export async function expectEnvelope(res: Response, status: number, code?: string): Promise<{ code: string; message: string; param: string | null; request_id: string }> {
  const body = (await res.json()) as { error: { code: string; message: string; param: string | null; request_id: string } };
  if (res.status !== status) throw new Error(`expected ${status}, got ${res.status}: ${JSON.stringify(body)}`);
  if (!body.error || typeof body.error.message !== 'string' || !('param' in body.error)) throw new Error(`not an envelope: ${JSON.stringify(body)}`);
  if (Object.keys(body).length !== 1 || Object.keys(body.error).sort().join() !== 'code,message,param,request_id') {
    throw new Error(`envelope has extra fields: ${JSON.stringify(body)}`);
  }
  if (body.error.request_id !== res.headers.get('X-Request-Id')) throw new Error('request_id differs from X-Request-Id');
  if (code !== undefined && body.error.code !== code) throw new Error(`expected code ${code}, got ${body.error.code}: ${body.error.message}`);
  return body.error;
}

/**
 * The real queue, with `send` failing while `outage.down` is set: an SQS outage cannot be produced on
 * demand, everything else is the real local queue.
 */
export function queueWithOutage(queue: JobQueue, down = true): { queue: JobQueue; outage: { down: boolean } } {
  const outage = { down };
  const wrapped = new Proxy(queue, {
    get: (target, prop, receiver) =>
      prop === 'send' ? (body: string) => (outage.down ? Promise.reject(new Error('sqs down')) : target.send(body)) : Reflect.get(target, prop, receiver),
  });
  return { queue: wrapped, outage };
}

/**
 * The real blob store, with listings (`list`, `listKeys`) under `prefix` refused (an S3 503 or a missing permission):
 * the best-effort removal of a job's stored images fails, everything else works.
 */
export function blobsRefusingList(blobs: BlobStore, prefix: string): BlobStore {
  return new Proxy(blobs, {
    get: (target, prop) => {
      if (prop === 'list' || prop === 'listKeys') {
        return (at: string, options?: ListOptions) => (at.startsWith(prefix) ? Promise.reject(new RetryableError(`injected: S3 503 on LIST ${at}`)) : target[prop]!(at, options));
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** Job ids of the messages waiting in `queue`, consumed (so each call sees only new ones). */
export async function drainJobIds(queue: JobQueue): Promise<string[]> {
  const ids: string[] = [];
  for (;;) {
    const batch = await queue.receive({ max: 10, waitSec: 0 });
    if (batch.length === 0) return ids;
    for (const m of batch) {
      ids.push(parseQueueMessage(m.body).job_id);
      await queue.ack(m.receipt);
    }
  }
}

/** The keys of the "message not sent yet" markers of the jobs in `blobs`. */
export async function pendingMessageMarkers(blobs: BlobStore): Promise<string[]> {
  return (await blobs.list(`${PENDING_JOBS_PREFIX}msg/`)).items.map((i) => i.key);
}
