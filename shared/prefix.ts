import { forEachLimited } from './concurrency.ts';
import type { BlobStore, KeyPage, ListOptions } from './ports.ts';

/**
 * One page of the keys under `prefix`, as `list` would page them: through the store's `listKeys` where
 * it has one. For callers that need no metadata: the local store's `list` opens and hashes every object
 * it returns (a generation's frames, a job's outputs, the active-job markers of every POST).
 */
export async function listKeys(blobs: BlobStore, prefix: string, options: ListOptions = {}): Promise<KeyPage> {
  if (blobs.listKeys) return blobs.listKeys(prefix, options);
  const page = await blobs.list(prefix, options);
  const keys = page.items.map((item) => item.key);
  return page.cursor !== undefined ? { keys, cursor: page.cursor } : { keys };
}

/**
 * Deletes `keys`: in as few requests as the store allows (S3 DeleteObjects, 1000 keys a request), else
 * a few at once. Idempotent, as `BlobStore.delete`.
 */
export async function deleteKeys(blobs: BlobStore, keys: readonly string[]): Promise<void> {
  if (keys.length === 0) return;
  if (blobs.deleteMany) await blobs.deleteMany(keys);
  else await forEachLimited(keys, 8, (key) => blobs.delete(key));
}

/**
 * Deletes every object under `prefix`, page by page (a page being at most 1000 keys, one batch on S3);
 * returns the keys deleted. Idempotent: a rerun finishes what a failed one left.
 */
export async function deletePrefix(blobs: BlobStore, prefix: string): Promise<string[]> {
  const deleted: string[] = [];
  let cursor: string | undefined;
  do {
    const { keys, cursor: next } = await listKeys(blobs, prefix, cursor ? { cursor } : {});
    await deleteKeys(blobs, keys);
    deleted.push(...keys);
    cursor = next;
  } while (cursor);
  return deleted;
}
