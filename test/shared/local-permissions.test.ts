// The local data folder is the owner's only, from a security review: its folders came out 0755 and its
// files 0644 (the umask's defaults), so any user of the machine could read every prompt, image, upload
// and job record, and with a record's webhook secret (`whsec_…`) forge webhooks to its receiver. Only
// `signing-secret` and `local-api-key` were 0600.
import { spawnSync } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileDurable } from '../../shared/adapters/local/durable.ts';
import { withDirLock } from '../../shared/adapters/local/lock.ts';
import { makeDataFolderPrivate } from '../../shared/adapters/local/private.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';

// Under /tmp with mode 0755: a folder another user can reach, so only the data folder's own modes stop them.
const noModes = process.platform === 'win32' ? 'no POSIX file modes on Windows' : undefined;
// (Not made on Windows, where every case is skipped and there is no /tmp.)
const root = noModes ? '' : mkdtempSync('/tmp/clipag-perms-');
if (!noModes) chmodSync(root, 0o755);
afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

const modeOf = (path: string) => statSync(path).mode & 0o7777;

/** Every folder and file under `dir` (itself included), with its mode. */
function tree(dir: string): Array<{ path: string; dir: boolean; mode: number }> {
  const out = [{ path: dir, dir: true, mode: modeOf(dir) }];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...tree(path));
    else out.push({ path, dir: false, mode: lstatSync(path).mode & 0o7777 });
  }
  return out;
}

/** As root with the capability to switch users (a container may drop it): the one way to be another user here. */
const canRunAsNobody = process.getuid?.() === 0 && spawnSync('true', [], { uid: 65534, gid: 65534 }).error === undefined;

const stores = (dataDir: string) => localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });

// Skipped only on Windows (noModes): it has no POSIX file modes, ACLs decide there.
describe.skipIf(noModes)('what the local adapters write is the owner\'s only', () => {
  it('a fresh data folder: every folder 0700 and every file 0600, job records with webhook secrets included, whatever the umask lets through', async () => {
    expect(process.umask() & 0o077).not.toBe(0o077); // else this test could not fail
    const dataDir = join(root, 'fresh', 'data');
    const s = await stores(dataDir);
    await s.blobs.put('outputs/acct_a/job1/0.png', new Uint8Array(100_000).fill(7), { contentType: 'image/png' }); // staged outside the lock
    await s.blobs.put('uploads/acct_a/up1', new Uint8Array([1, 2, 3]), { contentType: 'image/png' });
    const made = await s.blobs.putIfAbsent('jobs/acct_a/job1.json', Buffer.from(JSON.stringify({ webhook: { secret: 'whsec_test' } })));
    await s.blobs.replaceIfMatch('jobs/acct_a/job1.json', Buffer.from('{"prompt":"a private prompt"}'), made.etag);
    await s.keys.create({ name: 'k', owner: 'acct_a' });
    await s.queue.send('{"job":"job1"}');
    const [received] = await s.queue.receive({ max: 1 });
    await s.queue.extendVisibility(received!.receipt, 60); // a rewrite of the message file
    await s.queue.send('{"job":"job2"}');
    // A damaged message is moved to corrupt/ (a folder the queue makes).
    writeFileSync(join(dataDir, 'queue', 'messages', '00000000000000000000000000.json'), 'not json');
    await s.queue.receive({ max: 10 });
    expect(readdirSync(join(dataDir, 'queue', 'corrupt'))).toHaveLength(1);

    const entries = tree(dataDir).filter((e) => !e.path.includes(`${join(dataDir, 'queue', 'corrupt')}/`)); // the damaged file is this test's own
    expect(entries.filter((e) => e.path.includes('job1.json'))).toHaveLength(2); // object and metadata: the walk saw the record
    expect(entries.filter((e) => e.dir && e.mode !== 0o700).map((e) => `${e.path} ${e.mode.toString(8)}`)).toEqual([]);
    expect(entries.filter((e) => !e.dir && e.mode !== 0o600).map((e) => `${e.path} ${e.mode.toString(8)}`)).toEqual([]);
    // The parent made on the way (mkdir -p) too.
    expect(modeOf(join(root, 'fresh'))).toBe(0o700);
  });

  it('a lock file, while it is held, is 0600 in a 0700 folder', async () => {
    const lock = join(root, 'locks-here', 'sub', 'a.lock');
    const modes = await withDirLock(lock, async () => [modeOf(lock), modeOf(join(root, 'locks-here', 'sub'))]);
    expect(modes).toEqual([0o600, 0o700]);
  });

  it('a durable write is 0600, or the mode asked for where that is stricter (never looser)', async () => {
    const dir = join(root, 'durable');
    mkdirSync(dir);
    await writeFileDurable(join(dir, 'a'), 'x');
    await writeFileDurable(join(dir, 'b'), 'x', 0o400);
    await writeFileDurable(join(dir, 'c'), 'x', 0o666);
    expect([modeOf(join(dir, 'a')), modeOf(join(dir, 'b')), modeOf(join(dir, 'c'))]).toEqual([0o600, 0o400, 0o600]);
  });
});

// Skipped only on Windows (noModes), as above.
describe.skipIf(noModes)('makeDataFolderPrivate (a data folder made by an older version)', () => {
  /** A data folder as older versions left it: 0755 folders, a 0644 job record holding a webhook secret. */
  function oldDataFolder(name: string): { dataDir: string; record: string } {
    const dataDir = join(root, name);
    const folder = join(dataDir, 'blobs', 'objects', 'jobs', 'local');
    mkdirSync(folder, { recursive: true, mode: 0o755 });
    for (let d = folder; d !== root; d = join(d, '..')) chmodSync(d, 0o755);
    const record = join(folder, 'job1.json');
    writeFileSync(record, '{"webhook":{"secret":"whsec_old"}}', { mode: 0o644 });
    return { dataDir, record };
  }

  it('closes clipag\'s own folders (0700) and nothing else: that alone shuts out everything under them; the data folder keeps its mode', async () => {
    const { dataDir, record } = oldDataFolder('old');
    expect(await makeDataFolderPrivate(dataDir)).toBeUndefined();
    expect(modeOf(join(dataDir, 'blobs'))).toBe(0o700);
    expect(modeOf(dataDir)).toBe(0o755); // it may be a folder of the user's that others rightly read
    expect(modeOf(record)).toBe(0o644); // not walked
    expect(await makeDataFolderPrivate(dataDir)).toBeUndefined(); // already private: nothing to say
  });

  it('any command that opens the local stores (models push, keys, usage, policy, dlq), not only serve, closes them', async () => {
    const { dataDir } = oldDataFolder('old-cli');
    await stores(dataDir);
    expect(modeOf(join(dataDir, 'blobs'))).toBe(0o700);
  });

  it('a folder of the user\'s given as the data folder (--data ., /tmp) keeps its mode and its other contents', async () => {
    const dataDir = join(root, 'sticky');
    mkdirSync(join(dataDir, 'site'), { recursive: true });
    chmodSync(dataDir, 0o1777);
    chmodSync(join(dataDir, 'site'), 0o755);
    mkdirSync(join(dataDir, 'queue'), { mode: 0o755 });
    chmodSync(join(dataDir, 'queue'), 0o755);
    expect(await makeDataFolderPrivate(dataDir)).toBeUndefined();
    expect([modeOf(dataDir), modeOf(join(dataDir, 'site')), modeOf(join(dataDir, 'queue'))]).toEqual([0o1777, 0o755, 0o700]);
  });

  // The proof that counts: another user (uid 65534) reads the old record, and cannot once clipag's folders are closed.
  // Only root allowed to switch users can run a command as another user (skipped elsewhere, e.g. a
  // container that drops CAP_SETUID); there the mode checks above stand for it. It runs here and in CI.
  it.skipIf(!canRunAsNobody)('another user of the machine can read an old data folder\'s job record before, and not after', async () => {
    const { dataDir, record } = oldDataFolder('old-other-user');
    const catAsNobody = () => spawnSync('cat', [record], { uid: 65534, gid: 65534, encoding: 'utf8' });
    const before = catAsNobody();
    expect([before.status, before.stdout]).toEqual([0, '{"webhook":{"secret":"whsec_old"}}']);
    expect(await makeDataFolderPrivate(dataDir)).toBeUndefined();
    const after = catAsNobody();
    expect(after.status).not.toBe(0);
    expect(after.stderr).toMatch(/Permission denied/);
    expect(after.stdout).toBe('');
  });
});
