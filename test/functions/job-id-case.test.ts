// A generation id upper-cased names no generation (portability review #6). Ids are minted lower case;
// on Linux and S3 the upper-cased id's key holds nothing (404), but in a local data folder on a
// case-insensitive file system (macOS, Windows, a bind mount from a Mac) it opens the real job's file,
// whose id then differs from the one asked for. That is answered 404 as well, not 409 corrupt_record
// with an error line; a document naming another job stays corrupt. The store is the real local one
// behind a case-folding wrapper that makes this machine's file system behave as those do.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { BlobApiKeyStore } from '../../shared/apikeys.ts';
import { BlobJobStore } from '../../shared/jobstore.ts';
import { CaseFoldingBlobStore } from '../helpers/case-folding-blobs.ts';
import { expectEnvelope, LIMITS } from './helpers.ts';

let dir: string;
let blobs: CaseFoldingBlobStore;
let jobs: BlobJobStore;
let logs: unknown[];
let request: (path: string, init?: RequestInit) => Promise<Response>;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipag-id-case-'));
  blobs = new CaseFoldingBlobStore(new LocalBlobStore({ rootDir: join(dir, 'blobs'), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:8787' }));
  jobs = new BlobJobStore(blobs);
  const keys = new BlobApiKeyStore(blobs);
  const secret = (await keys.create({ name: 'alice', owner: 'acct_alice' })).secret;
  logs = [];
  const app = createApp({
    blobs,
    queue: new LocalJobQueue({ dir: join(dir, 'queue'), visibilitySec: 30 }),
    jobs,
    keys,
    models: async () => [{ id: 'toy', default: true, input_size: 224 }],
    limits: LIMITS,
    log: (entry) => logs.push(entry),
  });
  request = async (path, init = {}) => {
    const headers = new Headers(init.headers);
    headers.set('Authorization', `Bearer ${secret}`);
    return app.request(path, { ...init, headers });
  };
});
afterEach(() => rm(dir, { recursive: true, force: true, maxRetries: 3 }));

async function createJob(): Promise<string> {
  const res = await request('/v1/generations', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'a cat', steps: 5 }) });
  expect(res.status).toBe(202);
  return ((await res.json()) as { id: string }).id;
}

const cancel = (id: string) => request(`/v1/generations/${id}/cancel`, { method: 'POST', headers: { 'Content-Type': 'application/json' } });
const corruptLines = () => logs.filter((entry) => /corrupt/i.test(JSON.stringify(entry)));

describe('a generation id in another case', () => {
  it('GET, cancel and DELETE answer 404, log nothing as corrupt, and leave the job alone', async () => {
    const id = await createJob();
    const upper = id.toUpperCase();
    expect(upper).not.toBe(id);
    await expectEnvelope(await request(`/v1/generations/${upper}`), 404, 'not_found');
    await expectEnvelope(await cancel(upper), 404, 'not_found');
    await expectEnvelope(await request(`/v1/generations/${upper}`, { method: 'DELETE' }), 404, 'not_found');
    expect(corruptLines()).toEqual([]);
    const job = await request(`/v1/generations/${id}`);
    expect([job.status, ((await job.json()) as { status: string }).status]).toEqual([200, 'queued']);
  });

  it("a newer clipag's record in another case is not found either (not 503)", async () => {
    const id = await createJob();
    const key = BlobJobStore.keyFor('acct_alice', id);
    const record = JSON.parse(Buffer.from((await blobs.get(key))!.body).toString()) as { spec: Record<string, unknown> };
    await blobs.put(key, Buffer.from(JSON.stringify({ ...record, spec: { ...record.spec, guidance: 2 } })));
    expect((await request(`/v1/generations/${id}`)).status).toBe(503); // the id itself: a newer writer's, as before
    await expectEnvelope(await request(`/v1/generations/${id.toUpperCase()}`), 404, 'not_found');
  });

  it('a document naming another job is still corrupt', async () => {
    const id = await createJob();
    const other = await createJob();
    await blobs.put(BlobJobStore.keyFor('acct_alice', other), (await blobs.get(BlobJobStore.keyFor('acct_alice', id)))!.body);
    await expectEnvelope(await request(`/v1/generations/${other}`), 409, 'corrupt_record');
    await expectEnvelope(await request(`/v1/generations/${other.toUpperCase()}`), 409, 'corrupt_record');
  });
});
