import { forEachLimited } from './concurrency.ts';
import type { BlobStore } from './ports.ts';

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
    const page = await blobs.list(prefix, cursor ? { cursor } : {});
    const keys = page.items.map((item) => item.key);
    await deleteKeys(blobs, keys);
    deleted.push(...keys);
    cursor = page.cursor;
  } while (cursor);
  return deleted;
}
