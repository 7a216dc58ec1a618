import { open } from 'node:fs/promises';

/**
 * Writes `data` to a new file and fsyncs it before returning, so a rename that follows publishes
 * complete contents: after a power loss the target is the old file or the new one, never a
 * zero-length or torn one (ext4/xfs may otherwise persist the rename before the data).
 */
export async function writeFileDurable(path: string, data: Uint8Array | string): Promise<void> {
  const handle = await open(path, 'wx');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsyncs a folder so a rename into it is durable. Best effort: some platforms cannot open or sync folders. */
export async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // EISDIR/EPERM/EINVAL on platforms without folder fsync: nothing more we can do.
  } finally {
    await handle?.close().catch(() => undefined);
  }
}
