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
 * Creates and removes a file in `dir`: the one test of writability that holds everywhere (access(2)
 * with W_OK says yes to root on a read-only bind mount, to a folder on a read-only filesystem on
 * some platforms, and knows nothing of ACLs on others). Throws what the create threw.
 */
export async function probeWritableFolder(dir: string): Promise<void> {
  const probe = join(dir, `.clipag-write-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(probe, 'wx', PRIVATE_FILE_MODE);
  await handle.close();
  await unlink(probe);
}

/**
 * Probes every existing folder of `localWriteFolders(dataDir)` (with `probe`, which tests replace)
 * and returns what is wrong, in words naming the folder, or undefined when all can be written.
 */
export async function dataFolderWriteProblem(dataDir: string, probe: (dir: string) => Promise<void> = probeWritableFolder): Promise<string | undefined> {
  for (const dir of localWriteFolders(dataDir)) {
    const info = await stat(dir).catch(() => undefined);
    if (dir !== resolve(dataDir) && !info?.isDirectory()) continue;
    try {
      await probe(dir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      const uid = process.getuid?.();
      const owner = info && uid !== undefined && info.uid !== uid ? `; it belongs to uid ${info.uid}, this process runs as uid ${uid}` : '';
      const where = dir === resolve(dataDir) ? '' : ` (its folder ${dir} is not)`;
      return `the data folder ${resolve(dataDir)} is not writable by this user${where}: ${code} creating a file there${owner}`;
    }
  }
  return undefined;
}
