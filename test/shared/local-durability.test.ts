// The local adapters under damage and contention: unreadable queue files are moved aside (the queue
// keeps serving), the directory lock refuses to release a lock it no longer owns and keeps a live
// holder's lock fresh, and the blob store stages big writes before taking a key's lock.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RetryableError } from '../../shared/errors.ts';
import { LocalBlobStore, LocalJobQueue } from '../../shared/adapters/local/index.ts';
import { hostId, withDirLock } from '../../shared/adapters/local/lock.ts';
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

/** A pid that no process has now: a child that already exited (reuse within the test is vanishingly unlikely). */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  expect(child.status).toBe(0);
  return child.pid!;
}

const lockRecord = (pid: number) => JSON.stringify({ token: 'f'.repeat(24), pid, host: hostId() });

describe('withDirLock with abandoned locks', () => {
  it('contenders that all saw the same abandoned lock never hold it together (200 trials, start jitter)', async () => {
    // The race: B judged the lock dead, A broke it and made its own, then B's rename moved A's live
    // lock aside and both ran. Half the trials leave an old (age-stale) lock, half a dead holder's.
    const dead = deadPid();
    let worstOverlap = 0;
    for (let t = 0; t < 200; t++) {
      const lock = join(tmp('clipag-lockrace-'), 'lock');
      if (t % 2 === 0) {
        writeFileSync(lock, 'deadholder'); // an older version's bare token, one minute old
        const old = new Date(Date.now() - 60_000);
        utimesSync(lock, old, old);
      } else {
        writeFileSync(lock, lockRecord(dead)); // fresh, but its holder is gone
      }
      let inside = 0;
      let maxInside = 0;
      // Independent withDirLock calls (no in-process mutex) stand in for separate processes.
      await Promise.all(
        Array.from({ length: 4 }, async (_, i) => {
          await new Promise((r) => setTimeout(r, (i * 0.7 + Math.random()) * (t % 5)));
          await withDirLock(lock, async () => {
            inside++;
            maxInside = Math.max(maxInside, inside);
            await new Promise((r) => setTimeout(r, 5));
            inside--;
          });
        }),
      );
      worstOverlap = Math.max(worstOverlap, maxInside);
    }
    expect(worstOverlap).toBe(1);
  }, 120_000);

  it('a lock whose holder process was killed is broken at once, long before staleMs', async () => {
    const lock = join(tmp('clipag-lock-'), 'l');
    const lockModule = resolve(__dirname, '../../shared/adapters/local/lock.ts');
    const script = `
      import { withDirLock } from ${JSON.stringify(lockModule)};
      setInterval(() => {}, 1000);
      await withDirLock(${JSON.stringify(lock)}, async () => { process.stdout.write('held\\n'); await new Promise(() => {}); });
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r, j) => {
      child.stdout.once('data', () => r());
      child.once('exit', (code) => j(new Error(`child exited early (${code})`)));
    });
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    expect(existsSync(lock)).toBe(true); // the crash left its lock behind
    // staleMs of an hour: only the dead-pid rule can let this in before the timeout.
    await expect(withDirLock(lock, async () => 'in', { staleMs: 3_600_000, timeoutMs: 5_000 })).resolves.toBe('in');
  }, 30_000);

  it('a fresh lock of a live process on this host is not broken, nor one from another host', async () => {
    const lock = join(tmp('clipag-lock-'), 'l');
    writeFileSync(lock, lockRecord(process.pid));
    await expect(withDirLock(lock, async () => 'in', { timeoutMs: 200 })).rejects.toBeInstanceOf(RetryableError);
    writeFileSync(lock, JSON.stringify({ token: 'f'.repeat(24), pid: deadPid(), host: 'another-host' }));
    await expect(withDirLock(lock, async () => 'in', { timeoutMs: 200 })).rejects.toBeInstanceOf(RetryableError);
    // A machine of the same name sharing the folder (a network mount): its pid namespace has the same
    // number as ours (the initial one's), but another boot id. Its live holder must not look dead here.
    // hostId carries this boot's id where Linux gives one (a pid namespace's number alone is the same
    // on every machine).
    if (existsSync('/proc/sys/kernel/random/boot_id')) expect(hostId().split('|')).toContain(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
    const [name, , ns] = hostId().split('|');
    writeFileSync(lock, JSON.stringify({ token: 'f'.repeat(24), pid: deadPid(), host: [name, 'another-boot-id', ns].join('|') }));
    await expect(withDirLock(lock, async () => 'in', { timeoutMs: 200 })).rejects.toBeInstanceOf(RetryableError);
  });

  it('a break lock left by a breaker that died does not block breaking', async () => {
    const lock = join(tmp('clipag-lock-'), 'l');
    writeFileSync(lock, lockRecord(deadPid()));
    writeFileSync(`${lock}.break`, lockRecord(deadPid()));
    await expect(withDirLock(lock, async () => 'in', { staleMs: 3_600_000, timeoutMs: 5_000 })).resolves.toBe('in');
    expect(readdirSync(join(lock, '..'))).toEqual([]);
  });
});

describe('LocalJobQueue with a receiver that died', () => {
  it("a message held by a process that was killed is receivable at once, not after its visibility timeout; a live holder's is not", async () => {
    const dir = tmp('clipag-q-');
    const queueModule = resolve(__dirname, '../../shared/adapters/local/queue.ts');
    const queue = new LocalJobQueue({ dir, visibilitySec: 600 });
    await queue.send('{"job":"a"}');
    const script = `
      import { LocalJobQueue } from ${JSON.stringify(queueModule)};
      const [m] = await new LocalJobQueue({ dir: ${JSON.stringify(dir)}, visibilitySec: 600 }).receive({ max: 1 });
      process.stdout.write(m.body + '\\n');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r, j) => {
      child.stdout.once('data', () => r());
      child.once('exit', (code) => j(new Error(`child exited early (${code})`)));
    });
    // Held by the live child: not ours to receive (a 600 s visibility).
    expect(await queue.receive({ max: 1 })).toEqual([]);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    const [again] = await queue.receive({ max: 1 });
    expect([again?.body, again?.receiveCount, again?.previousHolderGone]).toEqual(['{"job":"a"}', 2, true]);
    // Now held by this live process: the next receive finds nothing.
    expect(await queue.receive({ max: 1 })).toEqual([]);
  }, 30_000);
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

  it('removes temp files older than an hour when the blob store or the queue opens, and keeps fresh ones', async () => {
    const root = tmp('clipag-blobs-');
    const qdir = tmp('clipag-q-');
    const hoursAgo = new Date(Date.now() - 2 * 3600_000);
    for (const dir of [join(root, 'tmp'), join(qdir, 'tmp')]) {
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'old.tmp'), 'left by a crashed write');
      utimesSync(join(dir, 'old.tmp'), hoursAgo, hoursAgo);
      writeFileSync(join(dir, 'fresh.tmp'), 'another process is staging this');
    }
    const blobs = new LocalBlobStore({ rootDir: root, signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    const queue = new LocalJobQueue({ dir: qdir });
    await (blobs as unknown as { tmpSwept: Promise<void> }).tmpSwept;
    await (queue as unknown as { tmpSwept: Promise<void> }).tmpSwept;
    expect(readdirSync(join(root, 'tmp'))).toEqual(['fresh.tmp']);
    expect(readdirSync(join(qdir, 'tmp'))).toEqual(['fresh.tmp']);
    // A store on a folder that does not exist yet opens fine.
    const none = new LocalBlobStore({ rootDir: join(root, 'nope'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    await (none as unknown as { tmpSwept: Promise<void> }).tmpSwept;
  });

  it('writeFileDurable writes the whole content and never overwrites an existing file', async () => {
    const dir = tmp('clipag-durable-');
    await writeFileDurable(join(dir, 'a'), 'hello');
    expect(readFileSync(join(dir, 'a'), 'utf8')).toBe('hello');
    await expect(writeFileDurable(join(dir, 'a'), 'x')).rejects.toMatchObject({ code: 'EEXIST' });
  });
});
