import { randomBytes } from 'node:crypto';
import { open, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { PRIVATE_FILE_MODE } from './private.ts';

/**
 * The folders under a data folder that the local adapters write into: the folder itself (signing
 * secret, local API key), the blob store's (LocalBlobStore: objects/, meta/, tmp/, locks/), the
 * queue's (LocalJobQueue: its lock file, messages/, tmp/, dlq/) and the model cache. Only those that
 * exist can be probed; the others are made by the adapters in a folder that was probed.
 */
export function localWriteFolders(dataDir: string): string[] {
  const root = resolve(dataDir);
  const blobs = join(root, 'blobs');
  const queue = join(root, 'queue');
  return [
    root,
    blobs,
    ...['objects', 'meta', 'tmp', 'locks'].map((d) => join(blobs, d)),
    queue,
    ...['messages', 'tmp', 'dlq'].map((d) => join(queue, d)),
    join(root, 'model-cache'),
  ];
}

/**
 * Creates, writes, fsyncs and removes a small file in `dir`: the one test of writability that holds
 * everywhere (access(2) with W_OK says yes to root on a read-only bind mount, to a folder on a
 * read-only filesystem on some platforms, and knows nothing of ACLs on others). The bytes are what a
 * full disk refuses: an empty file is only an inode, which a full disk still gives. Throws what the
 * create, the write or the fsync threw, with `step` set to which it was; the file is removed either way.
 */
export async function probeWritableFolder(dir: string): Promise<void> {
  const probe = join(dir, `.clipag-write-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(probe, 'wx', PRIVATE_FILE_MODE);
  try {
    await handle.writeFile('clipag write probe\n');
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => undefined);
    await unlink(probe).catch(() => undefined);
    throw Object.assign(error as Error, { step: 'writing' });
  }
  await handle.close();
  await unlink(probe);
}

/** What a probe's error code says about the disk, rather than about this user's rights. */
const DISK_PROBLEMS: Record<string, { what: string; remedy: string }> = {
  ENOSPC: { what: 'is on a full disk', remedy: 'free some space there' },
  EDQUOT: { what: "is over this user's disk quota", remedy: 'free some space there' },
  EROFS: { what: 'is on a read-only filesystem', remedy: 'mount it read-write' },
};

/**
 * Probes every existing folder of `localWriteFolders(dataDir)` (with `probe`, which tests replace)
 * and returns what is wrong and what to do, in words naming the folder, or undefined when all can be
 * written.
 */
export async function dataFolderWriteProblem(dataDir: string, probe: (dir: string) => Promise<void> = probeWritableFolder): Promise<string | undefined> {
  const moveIt = 'pass --data DIR or set CLIPAG_DATA_DIR to a folder this user can write';
  for (const dir of localWriteFolders(dataDir)) {
    const info = await stat(dir).catch(() => undefined);
    if (dir !== resolve(dataDir) && !info?.isDirectory()) continue;
    try {
      await probe(dir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      const step = (error as { step?: string }).step ?? 'creating';
      const disk = Object.hasOwn(DISK_PROBLEMS, code) ? DISK_PROBLEMS[code] : undefined;
      if (disk) {
        const where = dir === resolve(dataDir) ? '' : ` (its folder ${dir})`;
        return `the data folder ${resolve(dataDir)}${where} ${disk.what}: ${code} ${step} a file there; ${disk.remedy}, or ${moveIt} on another disk`;
      }
      const uid = process.getuid?.();
      const owner = info && uid !== undefined && info.uid !== uid ? `; it belongs to uid ${info.uid}, this process runs as uid ${uid}` : '';
      const where = dir === resolve(dataDir) ? '' : ` (its folder ${dir} is not)`;
      return `the data folder ${resolve(dataDir)} is not writable by this user${where}: ${code} ${step} a file there${owner}; ${moveIt}, or fix its permissions`;
    }
  }
  return undefined;
}
