import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { LocalBlobStore } from '../../../shared/adapters/local/blobstore.ts';
import { LocalJobQueue } from '../../../shared/adapters/local/queue.ts';
import { buildLocalSignedUrl, verifyLocalSignature } from '../../../shared/adapters/local/signing.ts';
import { PreconditionFailedError } from '../../../shared/errors.ts';
import type { BlobStore } from '../../../shared/ports.ts';
import { blobStoreContract } from './blobstore.contract.ts';
import { httpDownload, httpUpload, makeTempDir, startSignedBlobServer } from './helpers.ts';
import { jobStoreContract } from './jobstore.contract.ts';
import { queueContract } from './queue.contract.ts';
import { rateCounterContract } from './ratecounter.contract.ts';
import { MemoryRateCounter } from '../../../shared/adapters/local/rate-counter.ts';
import { BlobJobStore } from '../../../shared/jobstore.ts';
import { ModelStore } from '../../../shared/modelstore.ts';

const SECRET = 'test-secret-0123456789abcdef0123456789abcdef';
const cleanups: Array<() => Promise<void>> = [];
let baseUrl = '';
let current: BlobStore | undefined;

beforeAll(async () => {
  const server = await startSignedBlobServer(SECRET, () => current!);
  baseUrl = server.baseUrl;
  cleanups.push(server.stop);
});
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function freshStore(): Promise<LocalBlobStore> {
  const { dir, cleanup } = await makeTempDir('blobs');
  cleanups.push(cleanup);
  const store = new LocalBlobStore({ rootDir: dir, signingSecret: SECRET, publicBaseUrl: baseUrl });
  current = store;
  return store;
}

async function freshQueue(options: { visibilitySec?: number; maxReceives?: number } = {}) {
  const { dir, cleanup } = await makeTempDir('queue');
  cleanups.push(cleanup);
  return { dir, queue: new LocalJobQueue({ dir, maxReceives: 3, ...options }) };
}

blobStoreContract('local filesystem', async () => ({ store: await freshStore(), download: httpDownload, upload: httpUpload }), {
  enforcesConditionalWrites: true,
  truncatedListing: true,
  verifiesSignatures: true,
});
queueContract('local durable queue', async () => ({ queue: (await freshQueue()).queue, maxReceives: 3 }));
jobStoreContract('on the local blob store', freshStore, { enforcesConditionalWrites: true, truncatedListing: true });
rateCounterContract('memory (local mode)', async () => new MemoryRateCounter());

describe('memory rate counter specifics', () => {
  it('keeps a key\'s last two windows: counting a window drops the ones before its previous; other keys keep theirs', async () => {
    const counter = new MemoryRateCounter();
    await counter.addBelow('k', 1, 5, 0);
    await counter.addBelow('k', 2, 5, 0);
    await counter.addBelow('other', 1, 5, 0);
    await counter.addBelow('k', 3, 5, 0);
    expect([await counter.get('k', 1), await counter.get('k', 2), await counter.get('k', 3), await counter.get('other', 1)]).toEqual([0, 1, 1, 1]);
    const windows = (counter as unknown as { counts: Map<string, Map<number, number>> }).counts.get('k')!;
    expect([...windows.keys()].sort()).toEqual([2, 3]);
  });
});

describe('local blob store specifics', () => {
  it('etags are the sha256 of the content', async () => {
    const store = await freshStore();
    const { etag } = await store.put('e/x', Buffer.from('abc'));
    expect(etag).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('two store instances on the same folder (two processes) still let exactly one conditional writer win', async () => {
    const { dir, cleanup } = await makeTempDir('blobs-shared');
    cleanups.push(cleanup);
    const a = new LocalBlobStore({ rootDir: dir, signingSecret: SECRET, publicBaseUrl: baseUrl });
    const b = new LocalBlobStore({ rootDir: dir, signingSecret: SECRET, publicBaseUrl: baseUrl });
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).putIfAbsent('race/two.json', Buffer.from(String(i)))),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
  });

  it('a stale lock left by a crashed process is broken', async () => {
    const store = await freshStore();
    const { etag } = await store.put('stale/x', Buffer.from('1'));
    // Simulate a crash mid-write: the lock folder stays behind with an old mtime.
    const root = (store as unknown as { root: string }).root;
    const { createHash } = await import('node:crypto');
    const lock = join(root, 'locks', createHash('sha256').update('stale/x').digest('hex'));
    await mkdir(lock, { recursive: true });
    const { utimes } = await import('node:fs/promises');
    await utimes(lock, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
    await expect(store.replaceIfMatch('stale/x', Buffer.from('2'), etag)).resolves.toBeDefined();
    expect(Buffer.from((await store.get('stale/x'))!.body).toString()).toBe('2');
    const { stat } = await import('node:fs/promises');
    await expect(stat(lock)).rejects.toMatchObject({ code: 'ENOENT' }); // the broken lock went with the write
  });

  it('head of a big object streams its hash and remembers it; any write (new inode) changes it', async () => {
    const store = await freshStore();
    const a = new Uint8Array(3 * 2 ** 20).fill(1);
    const b = new Uint8Array(3 * 2 ** 20).fill(2); // same size: only the content differs
    const first = await store.put('models/m/w.bin', a);
    expect((await store.head('models/m/w.bin'))!.etag).toBe(first.etag);
    const second = await store.replaceIfMatch('models/m/w.bin', b, first.etag);
    expect(second.etag).not.toBe(first.etag);
    expect((await store.head('models/m/w.bin'))!.etag).toBe(second.etag);
    expect((await store.list('models/'))!.items.map((i) => i.etag)).toEqual([second.etag]);
    await store.delete('models/m/w.bin');
    expect(await store.head('models/m/w.bin')).toBeNull();
  });

  it('a put without a content type reads back a default content type, as S3 gives one', async () => {
    const store = await freshStore();
    await store.put('ct/none', Buffer.from('x'));
    await store.putIfAbsent('ct/none2', Buffer.from('x'));
    expect((await store.head('ct/none'))!.contentType).toBe('application/octet-stream');
    expect((await store.get('ct/none2'))!.contentType).toBe('application/octet-stream');
    expect((await store.list('ct/')).items.map((i) => i.contentType)).toEqual(['application/octet-stream', 'application/octet-stream']);
  });

  it('list skips files under objects/ whose names are not keys (warning once per name); model, job and key listings keep working', async () => {
    const { dir, cleanup } = await makeTempDir('blobs-stray');
    cleanups.push(cleanup);
    const warnings: Array<Record<string, unknown>> = [];
    const store = new LocalBlobStore({
      rootDir: dir,
      signingSecret: SECRET,
      publicBaseUrl: baseUrl,
      log: { warn: (msg, fields) => warnings.push({ msg, ...fields }) },
    });
    await store.put('models/m/bundle.json', Buffer.from('{}'));
    await store.put('jobs/acct1/keep.json', Buffer.from('{}'));
    // What an editor or a file manager leaves beside a file someone opened by hand.
    await writeFile(join(dir, 'objects/models/m/bundle.json~'), '{}');
    await writeFile(join(dir, 'objects/jobs/acct1/keep copy.json'), '{}');
    await writeFile(join(dir, 'objects/jobs/acct1/#x#'), '{}');
    expect((await store.list('models/')).items.map((i) => i.key)).toEqual(['models/m/bundle.json']);
    expect((await store.list('jobs/acct1/')).items.map((i) => i.key)).toEqual(['jobs/acct1/keep.json']);
    await store.list('jobs/');
    expect(warnings.map((w) => w.msg)).toEqual(Array(3).fill('file under objects/ is not a valid key; list() skips it'));
    // The callers the stray files used to break with a 400.
    await expect(new ModelStore(store).list()).resolves.toBeInstanceOf(Array);
    await expect(new BlobJobStore(store).listByOwner('acct1')).resolves.toMatchObject({ jobs: expect.any(Array) });
  });

  it('delete removes the folders it empties, so a later key of a folder\'s name can be put', async () => {
    const store = await freshStore();
    const root = (store as unknown as { root: string }).root;
    await store.put('p/q/r', Buffer.from('1'));
    await store.put('m.json/n', Buffer.from('1'));
    await store.put('keep/x', Buffer.from('1'));
    await store.delete('p/q/r');
    await store.delete('m.json/n');
    await expect(store.put('p/q', Buffer.from('2'))).resolves.toBeDefined(); // objects/p/q/ is gone
    await expect(store.put('m', Buffer.from('3'))).resolves.toBeDefined(); // meta/m.json/ is gone
    expect(await readdir(join(root, 'objects', 'keep'))).toEqual(['x']); // a folder still in use stays
    await store.delete('p/q');
    await store.delete('m');
    await store.delete('keep/x');
    expect(await readdir(join(root, 'objects'))).toEqual([]);
    expect(await readdir(join(root, 'meta'))).toEqual([]);
  });

  it('an oversized signed upload is refused by the local server', async () => {
    const store = await freshStore();
    const signed = await store.signedPutUrl('uploads/big.png', { contentType: 'image/png', maxBytes: 10, expiresSec: 60 });
    expect(signed.enforcesMaxBytes).toBe(true);
    const res = await httpUpload(signed.url, signed.headers, new Uint8Array(11));
    expect(res.status).toBe(413);
    expect(await store.head('uploads/big.png')).toBeNull();
  });
});

describe('verifyLocalSignature', () => {
  const grant = { method: 'GET' as const, key: 'jobs/acme/out.png', expiresAtSec: Math.floor(Date.now() / 1000) + 60 };
  const url = buildLocalSignedUrl('http://127.0.0.1:1/', SECRET, grant);

  it('accepts a fresh, untampered link (absolute or path-only)', () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:1\/blobs\/jobs\/acme\/out\.png\?expires=\d+&sig=[0-9a-f]{64}$/);
    expect(verifyLocalSignature(SECRET, 'GET', url)).toMatchObject({ ok: true, key: 'jobs/acme/out.png', method: 'GET' });
    const u = new URL(url);
    expect(verifyLocalSignature(SECRET, 'GET', u.pathname + u.search).ok).toBe(true);
  });

  it('rejects an expired link', () => {
    expect(verifyLocalSignature(SECRET, 'GET', url, (grant.expiresAtSec + 1) * 1000)).toEqual({ ok: false, reason: 'expired' });
  });

  it('rejects tampering with the key, the expiry, the signature, the method or the secret', () => {
    expect(verifyLocalSignature(SECRET, 'GET', url.replace('out.png', 'other.png'))).toMatchObject({ reason: 'bad_signature' });
    expect(verifyLocalSignature(SECRET, 'GET', url.replace(/expires=\d+/, `expires=${grant.expiresAtSec + 3600}`))).toMatchObject({
      reason: 'bad_signature',
    });
    const sig = new URL(url).searchParams.get('sig')!;
    const flipped = sig.slice(0, -1) + (sig.endsWith('0') ? '1' : '0');
    expect(verifyLocalSignature(SECRET, 'GET', url.replace(sig, flipped))).toMatchObject({ reason: 'bad_signature' });
    expect(verifyLocalSignature('another-secret-0123456789abcdef0123456789', 'GET', url)).toMatchObject({ reason: 'bad_signature' });
    expect(verifyLocalSignature(SECRET, 'PUT', url)).toMatchObject({ reason: 'wrong_method' });
    // Turning a GET link into a PUT grant changes the signed string.
    expect(verifyLocalSignature(SECRET, 'PUT', `${url}&method=PUT`)).toMatchObject({ reason: 'bad_signature' });
  });

  it('rejects a PUT link whose size limit or content type was changed', () => {
    const put = buildLocalSignedUrl('http://h', SECRET, { ...grant, method: 'PUT', maxBytes: 100, contentType: 'image/png' });
    expect(verifyLocalSignature(SECRET, 'PUT', put)).toMatchObject({ ok: true, maxBytes: 100, contentType: 'image/png' });
    expect(verifyLocalSignature(SECRET, 'PUT', put.replace('max=100', 'max=100000'))).toMatchObject({ reason: 'bad_signature' });
    expect(verifyLocalSignature(SECRET, 'PUT', put.replace('image%2Fpng', 'text%2Fhtml'))).toMatchObject({ reason: 'bad_signature' });
    // Fields cannot run into each other: an exact-size grant's length cannot be moved into the content type.
    const exact = buildLocalSignedUrl('http://h', SECRET, { ...grant, method: 'PUT', maxBytes: 100, exactBytes: 5, contentType: 'image/png' });
    expect(verifyLocalSignature(SECRET, 'PUT', exact)).toMatchObject({ ok: true, exactBytes: 5 });
    const smuggled = exact.replace('&len=5', '').replace('ct=image%2Fpng', 'ct=image%2Fpng%0Alen%3D5');
    expect(verifyLocalSignature(SECRET, 'PUT', smuggled)).toMatchObject({ ok: false, reason: 'malformed' });
    expect(verifyLocalSignature(SECRET, 'PUT', exact.replace('&len=5', ''))).toMatchObject({ reason: 'bad_signature' });
  });

  it('an owner or job named "blobs" is part of the key, not the route', () => {
    const named = buildLocalSignedUrl('http://127.0.0.1:1', SECRET, { ...grant, key: 'outputs/blobs/job1/0.png' });
    expect(verifyLocalSignature(SECRET, 'GET', named)).toMatchObject({ ok: true, key: 'outputs/blobs/job1/0.png' });
  });

  it('rejects malformed links', () => {
    for (const bad of ['/blobs/x', '/other/x?expires=1&sig=' + 'a'.repeat(64), '/blobs/..%2Fx?expires=1&sig=' + 'a'.repeat(64)]) {
      expect(verifyLocalSignature(SECRET, 'GET', bad)).toMatchObject({ ok: false, reason: 'malformed' });
    }
  });

  it('an expired link is refused over HTTP by the reference server', async () => {
    const store = await freshStore();
    await store.put('x/y.png', Buffer.from('x'));
    const expired = buildLocalSignedUrl(baseUrl, SECRET, { method: 'GET', key: 'x/y.png', expiresAtSec: Math.floor(Date.now() / 1000) - 1 });
    expect((await httpDownload(expired)).status).toBe(403);
  });
});

describe('local queue specifics', () => {
  it('survives a restart: a new instance on the same folder sees queued messages, and in-flight ones come back after their timeout', async () => {
    const { dir, queue } = await freshQueue();
    await queue.send('queued-before-restart');
    await queue.send('in-flight-at-crash');
    const [inFlight] = await queue.receive({ max: 1, visibilitySec: 2 });
    expect(inFlight!.body).toBe('queued-before-restart');

    const restarted = new LocalJobQueue({ dir, maxReceives: 3 });
    const [waiting] = await restarted.receive({ max: 1, visibilitySec: 60 });
    expect(waiting!.body).toBe('in-flight-at-crash');
    expect(await restarted.receive({ max: 1 })).toEqual([]); // the other one is still leased
    const [back] = await restarted.receive({ max: 1, waitSec: 5, visibilitySec: 60 });
    expect(back).toMatchObject({ body: 'queued-before-restart', receiveCount: 2 });
  });

  it('refuses receipts from an earlier delivery, so an expired lease cannot ack the new holder’s message', async () => {
    const { queue } = await freshQueue();
    await queue.send('lease');
    const [first] = await queue.receive({ max: 1, visibilitySec: 1 });
    const [second] = await queue.receive({ max: 1, waitSec: 3, visibilitySec: 60 });
    expect(second!.receiveCount).toBe(2);
    await expect(queue.ack(first!.receipt)).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(queue.extendVisibility(first!.receipt, 60)).rejects.toBeInstanceOf(PreconditionFailedError);
    await queue.ack(second!.receipt);
    await expect(queue.ack(second!.receipt)).rejects.toBeInstanceOf(PreconditionFailedError);
    expect(await queue.depth()).toBe(0);
  });

  it('a long poll also wakes for a message sent by another instance on the same folder', async () => {
    const { dir, queue } = await freshQueue();
    const other = new LocalJobQueue({ dir });
    const pending = queue.receive({ max: 1, waitSec: 5 });
    setTimeout(() => void other.send('from-elsewhere'), 200);
    expect((await pending).map((m) => m.body)).toEqual(['from-elsewhere']);
  });

  it('dead letters persist on disk and a configurable maxReceives applies', async () => {
    const { dir, queue } = await freshQueue({ maxReceives: 1 });
    await queue.send('once');
    await queue.receive({ max: 1, visibilitySec: 0 });
    expect(await queue.receive({ max: 1 })).toEqual([]);
    const reopened = new LocalJobQueue({ dir, maxReceives: 1 });
    expect(await reopened.deadLetter!.depth()).toBe(1);
    const [dead] = await reopened.deadLetter!.receive({ max: 1 });
    expect(dead).toMatchObject({ body: 'once', receiveCount: 1 });
  });

  it('delayed messages stay hidden until their delay passes', async () => {
    const { queue } = await freshQueue();
    await queue.send('later', { delaySec: 1 });
    expect(await queue.receive({ max: 1 })).toEqual([]);
    const [msg] = await queue.receive({ max: 1, waitSec: 3 });
    expect(msg!.body).toBe('later');
  });

  it('a receive reads only the files it needs, oldest first: 5000 queued with 3 in flight ahead', async () => {
    const { dir, queue } = await freshQueue();
    const messages = join(dir, 'messages');
    await mkdir(messages, { recursive: true });
    const now = Date.now();
    const id = (i: number) => String(i).padStart(26, '0');
    for (let i = 0; i < 5000; i += 250) {
      await Promise.all(
        Array.from({ length: 250 }, (_, j) => {
          const n = i + j;
          const inFlight = n < 3;
          return writeFile(
            join(messages, `${id(n)}.json`),
            JSON.stringify({
              id: id(n),
              body: `m${n}`,
              sentAt: now,
              visibleAt: inFlight ? now + 600_000 : now - 1,
              receiveCount: inFlight ? 1 : 0,
              deliveryToken: inFlight ? 'a'.repeat(24) : null,
            }),
          );
        }),
      );
    }
    const read = vi.spyOn(queue as unknown as { read: (id: string) => Promise<unknown> }, 'read');
    expect((await queue.receive({ max: 1 })).map((m) => m.body)).toEqual(['m3']);
    expect(read.mock.calls.length).toBeLessThanOrEqual(4); // it read and parsed all 5000
    read.mockClear();
    expect((await queue.receive({ max: 10 })).map((m) => m.body)).toEqual(Array.from({ length: 10 }, (_, i) => `m${i + 4}`));
    expect(read.mock.calls.length).toBeLessThanOrEqual(14);
  }, 60_000);

  it('ignores foreign files in its folder', async () => {
    const { dir, queue } = await freshQueue();
    await mkdir(join(dir, 'messages'), { recursive: true });
    await writeFile(join(dir, 'messages', 'README'), 'not a message');
    await queue.send('real');
    expect((await queue.receive({ max: 10 })).map((m) => m.body)).toEqual(['real']);
  });
});
