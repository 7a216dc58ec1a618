import { forEachLimited } from './concurrency.ts';
import type { BlobStore } from './ports.ts';

/** Deletes every object under `prefix`, page by page, a few at once. Idempotent: a rerun finishes what a failed one left. */
export async function deletePrefix(blobs: BlobStore, prefix: string): Promise<void> {
  let cursor: string | undefined;
  do {
    const page = await blobs.list(prefix, cursor ? { cursor } : {});
    await forEachLimited(page.items, 8, (item) => blobs.delete(item.key));
    cursor = page.cursor;
  } while (cursor);
}
