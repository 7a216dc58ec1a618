import { forEachLimited } from './concurrency.ts';
import type { BlobStore } from './ports.ts';

/**
 * Deletes every object under `prefix`, page by page: each page in one batch where the store deletes
 * many at once (S3 DeleteObjects, a page being at most 1000 keys), else a few objects at once.
 * Idempotent: a rerun finishes what a failed one left.
 */
export async function deletePrefix(blobs: BlobStore, prefix: string): Promise<void> {
  let cursor: string | undefined;
  do {
    const page = await blobs.list(prefix, cursor ? { cursor } : {});
    if (blobs.deleteMany) {
      if (page.items.length > 0) await blobs.deleteMany(page.items.map((item) => item.key));
    } else {
      await forEachLimited(page.items, 8, (item) => blobs.delete(item.key));
    }
    cursor = page.cursor;
  } while (cursor);
}
