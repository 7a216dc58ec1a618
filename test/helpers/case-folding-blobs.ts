// A blob store that cannot tell keys apart by case, as the local store is on a case-insensitive file
// system (macOS's APFS and Windows's NTFS by default, a Docker bind mount from a Mac): `Alice.json` and
// `alice.json` are one file. This machine's file system is case-sensitive, so the real local store
// here gets every key lower-cased. Unlike APFS it does not preserve case: a listing shows keys
// lower-cased (the ids clipag mints are lower case; an owner's id in a key record lives in the document).
import type { BlobMeta, BlobObject, BlobStore, ListOptions, ListPage, PutOptions, SignedPut, SignedPutOptions } from '../../shared/ports.ts';

export class CaseFoldingBlobStore implements BlobStore {
  constructor(private readonly inner: BlobStore) {}

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<{ etag: string }> {
    return this.inner.put(fold(key), body, options);
  }

  /** Named by the key asked for, as a file system answers for the name it was given. */
  async get(key: string): Promise<BlobObject | null> {
    const found = await this.inner.get(fold(key));
    return found && { ...found, key };
  }

  async head(key: string): Promise<BlobMeta | null> {
    const found = await this.inner.head(fold(key));
    return found && { ...found, key };
  }

  list(prefix: string, options?: ListOptions): Promise<ListPage> {
    return this.inner.list(fold(prefix), options?.cursor === undefined ? options : { ...options, cursor: fold(options.cursor) });
  }

  delete(key: string): Promise<void> {
    return this.inner.delete(fold(key));
  }

  putIfAbsent(key: string, body: Uint8Array, options?: PutOptions): Promise<{ etag: string }> {
    return this.inner.putIfAbsent(fold(key), body, options);
  }

  replaceIfMatch(key: string, body: Uint8Array, etag: string, options?: PutOptions): Promise<{ etag: string }> {
    return this.inner.replaceIfMatch(fold(key), body, etag, options);
  }

  signedGetUrl(key: string, expiresSec: number): Promise<string> {
    return this.inner.signedGetUrl(fold(key), expiresSec);
  }

  signedPutUrl(key: string, options: SignedPutOptions): Promise<SignedPut> {
    return this.inner.signedPutUrl(fold(key), options);
  }
}

function fold(key: string): string {
  return key.toLowerCase();
}
