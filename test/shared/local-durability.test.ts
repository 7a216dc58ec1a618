// The local adapters under damage and contention: unreadable queue files are moved aside (the queue
// keeps serving), the directory lock refuses to release a lock it no longer owns and keeps a live
// holder's lock fresh, and the blob store stages big writes before taking a key's lock.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { withDirLock } from '../../shared/adapters/local/lock.ts';
import { writeFileDurable } from '../../shared/adapters/local/durable.ts';

const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));

async function waitFor<T>(what: string, probe: () => T | Promise<T>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('LocalJobQueue with unreadable message files', () => {
  it('moves zero-length, truncated and off-schema files (and a folder) to corrupt/, logs them, and keeps delivering', async () => {
    const dir = tmp('clipag-q-');
    const warnings: Record<string, unknown>[] = [];
    const q = new LocalJobQueue({ dir, log: { warn: (msg, f) => warnings.push({ msg, ...f }) } });
    const { messageId } = await q.send('{"hello":1}');
    const messages = join(dir, 'messages');
    // Sorted before the good one, so a throwing readAll would never get to it.
    writeFileSync(join(messages, '00000000000000000000000000.json'), '');
    writeFileSync(join(messages, '00000000000000000000000001.json'), '{"id":"00000000000000000000000001","bo');
    writeFileSync(join(messages, '00000000000000000000000002.json'), JSON.stringify({ id: '00000000000000000000000002', body: 42 }));
    mkdirSync(join(messages, '00000000000000000000000003.json')); // a folder under a message's name
    expect(await q.depth()).toBe(1); // depth skips them without moving anything
    const got = await q.receive({ max: 10 });
    expect(got.map((m) => m.messageId)).toEqual([messageId]);
    await q.ack(got[0].receipt);
    expect(readdirSync(messages)).toEqual([]);
    expect((await q.corruptFiles()).length).toBe(4);
    expect(warnings.filter((w) => w.msg === 'unreadable queue message moved aside')).toHaveLength(4);
    // Still serving afterwards.
    await q.send('again');
    expect((await q.receive()).map((m) => m.body)).toEqual(['again']);
  });

  it('a corrupt message file is also skipped by the dead-letter queue', async () => {
    const dir = tmp('clipag-q-');
    const q = new LocalJobQueue({ dir, log: { warn() {} } });
    await q.deadLetter!.send('dead');
    writeFileSync(join(dir, 'dlq', 'messages', '00000000000000000000000000.json'), '\u0000\u0000');
    expect((await q.deadLetter!.receive({ max: 10 })).map((m) => m.body)).toEqual(['dead']);
  });
});

describe('withDirLock', () => {
  it('a holder presumed dead does not delete the lock of the holder that broke it', async () => {
    const lock = join(tmp('clipag-lock-'), 'l');
    let releaseA!: () => void;
    const aHolding = new Promise<void>((r) => (releaseA = r));
    let aInside!: () => void;
    const aEntered = new Promise<void>((r) => (aInside = r));
    const a = withDirLock(lock, async () => {
      aInside();
      await aHolding;
    });
    await aEntered;
    // B decides A is stale (staleMs -1: every lock looks stale) and takes the lock over.
    await withDirLock(
      lock,
      async () => {
        const bToken = readFileSync(lock, 'utf8');
        releaseA();
        await a; // A's release runs while B holds the lock
        expect(existsSync(lock)).toBe(true);
        expect(readFileSync(lock, 'utf8')).toBe(bToken);
      },
      { staleMs: -1 },
    );
    expect(existsSync(lock)).toBe(false);
  });

  it('keeps a live holder\'s lock fresh, so a slow critical section is not broken as stale', async () => {
    const lock = join(tmp('clipag-lock-'), 'l');
    await withDirLock(
      lock,
      async () => {
        const first = statSync(lock).mtimeMs;
        await waitFor('the lock mtime to be refreshed', () => statSync(lock).mtimeMs > first);
      },
      { staleMs: 60 },
    );
  });
});

describe('LocalBlobStore', () => {
  it('stages the body in tmp/ before taking the key lock (slow writes never hold it)', async () => {
    const root = tmp('clipag-blobs-');
    const blobs = new LocalBlobStore({ rootDir: root, signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    const key = 'jobs/a/b.json';
    const lock = join(root, 'locks', createHash('sha256').update(key).digest('hex'));
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    const holder = withDirLock(lock, async () => {
      entered();
      await held;
    });
    await inside;
    const put = blobs.putIfAbsent(key, new Uint8Array(4 << 20).fill(7));
    // Both temp files (metadata and body) are written while another process holds the key's lock.
    await waitFor('staged temp files', () => existsSync(join(root, 'tmp')) && readdirSync(join(root, 'tmp')).length === 2);
    release();
    await holder;
    await put;
    expect((await blobs.get(key))?.size).toBe(4 << 20);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
    // A losing conditional write cleans its staged files up.
    await expect(blobs.putIfAbsent(key, new Uint8Array(10))).rejects.toThrow(/already exists/);
    expect(readdirSync(join(root, 'tmp'))).toEqual([]);
  });

  it('writeFileDurable writes the whole content and never overwrites an existing file', async () => {
    const dir = tmp('clipag-durable-');
    await writeFileDurable(join(dir, 'a'), 'hello');
    expect(readFileSync(join(dir, 'a'), 'utf8')).toBe('hello');
    await expect(writeFileDurable(join(dir, 'a'), 'x')).rejects.toMatchObject({ code: 'EEXIST' });
  });
});
