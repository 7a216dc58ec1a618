import { createHash, randomBytes } from 'node:crypto';
import type { BigIntStats, Dirent } from 'node:fs';
import { type FileHandle, open, readFile, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { PreconditionFailedError, ValidationError } from '../../errors.ts';
import { forEachLimited } from '../../concurrency.ts';
import { checkExpiry, checkPutLimits } from '../signed-url-limits.ts';
import { assertValidKey, assertValidPrefix, isValidKey } from '../../keys.ts';
import type {
  BlobMeta,
  BlobObject,
  BlobStore,
  KeyPage,
  ListOptions,
  ListPage,
  PutOptions,
  SignedPut,
  SignedPutOptions,
} from '../../ports.ts';
import { KeyedMutex, withDirLock } from './lock.ts';
import { buildLocalSignedUrl } from './signing.ts';
import { removeStaleFiles, renameOver, syncDir, writeFileDurable } from './durable.ts';
import { mkdirPrivate } from './private.ts';

export interface LocalBlobStoreOptions {
  /** Everything lives under here: objects/, meta/, tmp/, locks/. */
  rootDir: string;
  /** HMAC key for signed URLs (at least 32 characters). */
  signingSecret: string;
  /** Where the local server that serves `/blobs/*` is reachable, e.g. http://127.0.0.1:8787 */
  publicBaseUrl: string;
  /** Hears about files under objects/ that are skipped by list() (default: a JSON line on stderr). */
  log?: { warn(msg: string, fields?: Record<string, unknown>): void };
}

/**
 * What a put without a content type stores: S3 fills in a default too (binary/octet-stream; s3rver
 * says application/octet-stream), so in both modes `head().contentType` is a string.
 */
export const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

const stderrLog = {
  warn(msg: string, fields: Record<string, unknown> = {}): void {
    process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'warn', component: 'local-blobstore', msg, ...fields })}\n`);
  },
};

/** Bodies larger than this are written to their temp file before the key's lock is taken. */
export const STAGE_OUTSIDE_LOCK_BYTES = 64 * 1024;

const ETAG_CACHE_MIN_BYTES = 1 << 20;

/** How many files `deleteMany` removes at once (as deletePrefix did before the batch delete). */
const LOCAL_DELETES_AT_ONCE = 8;

/**
 * A folder changed more recently than this is read again by the next listing instead of being
 * trusted from memory: folder mtimes come from a coarse clock (a kernel tick, ≤ 10 ms, on ext4, xfs,
 * btrfs and APFS; whole seconds on HFS+; 2 s on FAT), and a second change within the same tick leaves
 * the mtime as it was. Once a folder's mtime is older than any tick, every later change moves it.
 * (This takes the file server's clock to be this machine's: a data folder on a network share whose
 * server's clock runs seconds behind could keep a listing stale until the folder next changes.)
 */
export const LIST_CACHE_SETTLED_MS = 3000;
/** Listings of fewer keys are read each time: reading them costs about what checking a cached one does. */
export const LIST_CACHE_MIN_KEYS = 64;
/** Bound on the listings kept: keys plus folders, ~100 bytes each (~20 MB at most), and entries. */
const LIST_CACHE_MAX_WEIGHT = 200_000;
const LIST_CACHE_MAX_FOLDERS = 32;
/** How many folders a cached listing's check stats at once. */
const LIST_STATS_AT_ONCE = 16;

/** What identifies one state of a folder's entries (see LIST_CACHE_SETTLED_MS). */
interface FolderStamp {
  dev: bigint;
  ino: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

/** Every file under a listed folder, read at the folders' stamps. */
interface FolderTree {
  /** Each folder read (relative to objects/, the listed one included) with its stamp taken before it was read. */
  folders: Map<string, FolderStamp>;
  /** The valid keys, sorted. */
  keys: string[];
  /** Files whose names are not keys (list() warns about them once and skips them). */
  strays: string[];
}

function sameStamp(stamp: FolderStamp, now: BigIntStats): boolean {
  return now.isDirectory() && stamp.dev === now.dev && stamp.ino === now.ino && stamp.mtimeNs === now.mtimeNs && stamp.ctimeNs === now.ctimeNs;
}

function treeWeight(tree: FolderTree): number {
  return tree.keys.length + tree.strays.length + tree.folders.size;
}

/** The first index from `from` on where `pred` holds, for a `pred` false then true along `items`; `items.length` if none. */
function firstIndex(items: readonly string[], pred: (item: string) => boolean, from = 0): number {
  let lo = from;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (pred(items[mid]!)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Filesystem BlobStore. Objects are written to a temp file (fsynced; big ones outside any lock) and
 * renamed into place under the key's lock, so readers never see a torn object and a power loss
 * never leaves a zero-length one. Etags are the sha256 of the content. Every write to a key holds that
 * key's lock (in-process mutex + cross-process lock directory), so the check and the write of a
 * conditional operation are one atomic step: of many concurrent conditional writers exactly one wins.
 */
export class LocalBlobStore implements BlobStore {
  private readonly root: string;
  private readonly mutex = new KeyedMutex();
  /** head()'s etags by key, valid while the file's inode, size and mtime are unchanged. */
  private readonly etags = new Map<string, { ino: number; size: number; mtimeMs: number; etag: string }>();
  private readonly log: NonNullable<LocalBlobStoreOptions['log']>;
  /** Stray names list() already warned about: one line per name, not one per listing. */
  private readonly warnedNames = new Set<string>();
  /**
   * Listings by the folder they walk, least recently used first: a listing re-read and re-sorted every
   * folder's entries on each call, so paging a 30 000-job owner was quadratic. Checked against the
   * folders' stamps before each use, so another process's (or this one's) create or delete is never missed.
   */
  private readonly trees = new Map<string, FolderTree>();
  private treesWeight = 0;
  /** Removal of temp files left by crashed writes, started when the store opens (tests await it). */
  private readonly tmpSwept: Promise<void>;

  constructor(private readonly options: LocalBlobStoreOptions) {
    if (options.signingSecret.length < 32) throw new ValidationError('signingSecret must be at least 32 characters', 'signingSecret');
    this.root = resolve(options.rootDir);
    this.log = options.log ?? stderrLog;
    // In the background and best effort: opening the store never waits for or fails on it.
    this.tmpSwept = removeStaleFiles(join(this.root, 'tmp')).catch(() => undefined);
  }

  private objectPath(key: string): string {
    return join(this.root, 'objects', key);
  }
  private metaPath(key: string): string {
    return join(this.root, 'meta', `${key}.json`);
  }

  private withKeyLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const lockName = createHash('sha256').update(key).digest('hex');
    return this.mutex.run(key, () => withDirLock(join(this.root, 'locks', lockName), fn));
  }

  /** Writes `data` to a fresh temp file, fsynced (slow for big bodies: done outside any lock). */
  private async stage(data: Uint8Array | string): Promise<string> {
    const tmpDir = join(this.root, 'tmp');
    await mkdirPrivate(tmpDir);
    const tmp = join(tmpDir, `${randomBytes(12).toString('hex')}.tmp`);
    try {
      await writeFileDurable(tmp, data);
    } catch (error) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw error;
    }
    return tmp;
  }

  /** Renames a staged temp file into place (fast: the only part done under the key's lock). */
  private async commit(tmp: string, path: string): Promise<void> {
    try {
      try {
        await mkdirPrivate(dirname(path));
        await renameOver(tmp, path);
      } catch (error) {
        // A delete of another key in the same folder (under that key's lock, not ours) removes the
        // folder when it empties it; if that fell between our mkdir and rename, make it again once.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        await mkdirPrivate(dirname(path));
        await renameOver(tmp, path);
      }
    } catch (error) {
      await rm(tmp, { force: true }).catch(() => undefined);
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR' || code === 'EISDIR' || code === 'EEXIST' || code === 'ENOTEMPTY') {
        throw new ValidationError(`key conflicts with an existing key used as a folder: ${path}`, 'key');
      }
      throw error;
    }
    // No folder fsync here: the temp file's fsync already rules out a zero-length or torn object; a
    // folder fsync per write (it forces a journal commit) made busy job records, rewritten on every
    // progress step, lose most conditional-write races against a cancel on a loaded disk. A rename
    // lost to a power cut leaves the previous version, which readers handle. Creates, which have no
    // previous version, are synced by putIfAbsent after the lock.
  }

  /** Stages metadata and body outside the lock; `write` (under the lock) renames them into place. */
  private async prepare(key: string, body: Uint8Array, options: PutOptions) {
    const metaTmp = await this.stage(JSON.stringify({ contentType: options.contentType ?? DEFAULT_CONTENT_TYPE }));
    let bodyTmp: string;
    try {
      bodyTmp = await this.stage(body);
    } catch (error) {
      await rm(metaTmp, { force: true });
      throw error;
    }
    let used = false;
    return {
      write: async (): Promise<{ etag: string }> => {
        used = true;
        // Metadata first: a crash in between leaves stale metadata for the old body, never a body without any.
        try {
          await this.commit(metaTmp, this.metaPath(key));
        } catch (error) {
          await rm(bodyTmp, { force: true });
          throw error;
        }
        await this.commit(bodyTmp, this.objectPath(key));
        return { etag: sha256(body) };
      },
      /** Removes the temp files when `write` was not (or not fully) run. */
      discard: async (): Promise<void> => {
        if (used) return;
        await Promise.all([rm(metaTmp, { force: true }), rm(bodyTmp, { force: true })]);
      },
    };
  }

  /**
   * Writes under the key's lock, `check` first. A big body (over STAGE_OUTSIDE_LOCK_BYTES: images,
   * uploads) is staged before the lock is taken, so a slow write never holds it. A small document is
   * staged after the check: the window between a caller's read and this check (what a conditional
   * write races against) must not grow by a staging fsync, or busy job records (progress writes
   * against a cancel) would lose most races.
   */
  private async writeLocked(key: string, body: Uint8Array, options: PutOptions, check?: () => Promise<void>): Promise<{ etag: string }> {
    const early = body.byteLength > STAGE_OUTSIDE_LOCK_BYTES ? await this.prepare(key, body, options) : undefined;
    let late: Awaited<ReturnType<LocalBlobStore['prepare']>> | undefined;
    try {
      return await this.withKeyLock(key, async () => {
        await check?.();
        if (early) return early.write();
        late = await this.prepare(key, body, options);
        return late.write();
      });
    } finally {
      await early?.discard();
      await late?.discard();
    }
  }

  /**
   * The stored content type, or the default when none was given (older versions stored null) or the
   * metadata file is missing or unreadable: like S3, every object has one.
   */
  private async readContentType(key: string): Promise<string> {
    try {
      const stored: unknown = JSON.parse(await readFile(this.metaPath(key), 'utf8')).contentType;
      return typeof stored === 'string' ? stored : DEFAULT_CONTENT_TYPE;
    } catch {
      return DEFAULT_CONTENT_TYPE;
    }
  }

  private async readObject(key: string): Promise<BlobObject | null> {
    let body: Buffer;
    let modified: Date;
    try {
      [body, modified] = await Promise.all([
        readFile(this.objectPath(key)),
        stat(this.objectPath(key)).then((s) => s.mtime),
      ]);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return null;
      throw error;
    }
    const contentType = await this.readContentType(key);
    const bytes = new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    return { key, body: bytes, size: body.byteLength, etag: sha256(bytes), contentType, lastModified: modified };
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    return this.writeLocked(key, body, options);
  }

  async get(key: string): Promise<BlobObject | null> {
    assertValidKey(key);
    return this.readObject(key);
  }

  /** The object's file, open for reading; null when there is none. */
  private async openObject(key: string): Promise<FileHandle | null> {
    try {
      return await open(this.objectPath(key), 'r');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return null;
      throw error;
    }
  }

  /**
   * Metadata without holding the body: the etag (the content's sha256) is hashed from a stream of
   * the open file, and remembered per (inode, size, mtime). Every write renames a new file into
   * place, so a changed object always has a new inode. Listing the models prefix used to read every
   * byte of every model (600 MB for a ViT-B/32) into memory on each `GET /v1/models`.
   */
  async head(key: string): Promise<BlobMeta | null> {
    assertValidKey(key);
    const handle = await this.openObject(key);
    if (!handle) return null;
    try {
      const st = await handle.stat();
      if (!st.isFile()) return null;
      const cached = this.etags.get(key);
      let etag: string;
      if (cached && cached.ino === st.ino && cached.size === st.size && cached.mtimeMs === st.mtimeMs) {
        etag = cached.etag;
      } else {
        const hash = createHash('sha256');
        for await (const chunk of handle.createReadStream({ autoClose: false, start: 0 })) hash.update(chunk as Buffer);
        etag = hash.digest('hex');
        // Only big objects (model files, images) are worth remembering; job records stay cheap.
        if (st.size >= ETAG_CACHE_MIN_BYTES) this.etags.set(key, { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, etag });
      }
      return { key, size: st.size, etag, contentType: await this.readContentType(key), lastModified: st.mtime };
    } finally {
      await handle.close();
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    const page = await this.listPage(prefix, options);
    const items: BlobMeta[] = [];
    for (const key of page.keys) {
      const meta = await this.head(key);
      if (meta) items.push(meta); // deleted between the folder read and head: skip
    }
    return page.cursor !== undefined ? { items, cursor: page.cursor } : { items };
  }

  /** `list` without reading any object: a caller that reads each document anyway need not have them hashed too. */
  async listKeys(prefix: string, options: ListOptions = {}): Promise<KeyPage> {
    return this.listPage(prefix, options);
  }

  private async listPage(prefix: string, options: ListOptions): Promise<KeyPage> {
    assertValidPrefix(prefix);
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValidationError('limit must be 1..1000', 'limit');
    // Walk only the deepest folder the prefix fully names.
    const baseFolder = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const tree = (await this.cachedTree(baseFolder)) ?? (await this.readTree(baseFolder));
    for (const rel of tree.strays) {
      // A name no key can have (an editor's `x~`, a copy's `a b.json`, non-ASCII) was put there
      // by hand, not by this store: skipped, as callers skip S3 keys they do not recognise. It
      // used to make the whole listing (models, jobs, keys, the sweep) throw a 400.
      if (rel.startsWith(prefix) && !this.warnedNames.has(rel)) {
        this.warnedNames.add(rel);
        this.log.warn('file under objects/ is not a valid key; list() skips it', { file: join(this.root, 'objects', rel) });
      }
    }
    // The keys with the prefix are one run of the sorted list (the prefix may end inside a name: `p/a`
    // matches `p/a/1` and `p/ab`); the page starts at the first key after the cursor.
    const keys = tree.keys;
    const first = firstIndex(keys, (k) => k >= prefix);
    const end = firstIndex(keys, (k) => k >= prefix && !k.startsWith(prefix), first);
    const after = options.cursor;
    const start = after === undefined ? first : firstIndex(keys, (k) => k > after, first);
    const pageKeys = keys.slice(start, Math.min(start + limit, end));
    return end - start > limit ? { keys: pageKeys, cursor: pageKeys[pageKeys.length - 1] } : { keys: pageKeys };
  }

  /**
   * The listing of `baseFolder` remembered by an earlier call, when none of its folders has changed
   * since: each is stat'ed, and any difference in identity, mtime or ctime (a create, delete or rename
   * in it changes its mtime, on Linux and macOS as POSIX says) drops the entry. Undefined otherwise.
   */
  private async cachedTree(baseFolder: string): Promise<FolderTree | undefined> {
    const entry = this.trees.get(baseFolder);
    if (!entry) return undefined;
    let unchanged = true;
    await forEachLimited([...entry.folders], LIST_STATS_AT_ONCE, async ([relDir, stamp]) => {
      if (!unchanged) return;
      const now = await stat(join(this.root, 'objects', relDir), { bigint: true }).catch(() => undefined);
      if (!now || !sameStamp(stamp, now)) unchanged = false;
    });
    if (!unchanged) {
      this.forgetTree(baseFolder);
      return undefined;
    }
    // Most recently used last: eviction takes the first.
    this.trees.delete(baseFolder);
    this.trees.set(baseFolder, entry);
    return entry;
  }

  /**
   * Reads every folder under `baseFolder` (each one stat'ed BEFORE it is read, so a change during the
   * read leaves a stamp that no longer matches) into sorted keys, and remembers them when every folder's
   * mtime is older than LIST_CACHE_SETTLED_MS: a folder stamped with the clock tick a change lands in
   * can change again within that tick and keep its mtime, so a folder changed that recently is re-read.
   */
  private async readTree(baseFolder: string): Promise<FolderTree> {
    const settledBefore = BigInt(Date.now() - LIST_CACHE_SETTLED_MS) * 1_000_000n;
    const tree: FolderTree = { folders: new Map(), keys: [], strays: [] };
    let settled = true;
    const walk = async (relDir: string): Promise<void> => {
      const path = join(this.root, 'objects', relDir);
      let folder: BigIntStats;
      let entries: Dirent[];
      try {
        folder = await stat(path, { bigint: true });
        if (!folder.isDirectory()) return;
        entries = await readdir(path, { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw error;
      }
      tree.folders.set(relDir, { dev: folder.dev, ino: folder.ino, mtimeNs: folder.mtimeNs, ctimeNs: folder.ctimeNs });
      if (folder.mtimeNs >= settledBefore) settled = false;
      for (const entry of entries) {
        const rel = relDir ? `${relDir}/${entry.name}` : entry.name;
        if (entry.isDirectory()) await walk(rel);
        else if (entry.isFile()) (isValidKey(rel) ? tree.keys : tree.strays).push(rel);
      }
    };
    await walk(baseFolder);
    // Plain code-unit order equals S3's UTF-8 byte order for the ASCII keys assertValidKey allows.
    tree.keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    // A folder that is missing (nothing listed) has no stamp to check: it is read again each time, cheaply.
    if (settled && tree.folders.has(baseFolder) && tree.keys.length >= LIST_CACHE_MIN_KEYS) this.rememberTree(baseFolder, tree);
    return tree;
  }

  private rememberTree(baseFolder: string, tree: FolderTree): void {
    const weight = treeWeight(tree);
    if (weight > LIST_CACHE_MAX_WEIGHT) return;
    this.forgetTree(baseFolder);
    for (const [oldest] of this.trees) {
      if (this.treesWeight + weight <= LIST_CACHE_MAX_WEIGHT && this.trees.size < LIST_CACHE_MAX_FOLDERS) break;
      this.forgetTree(oldest);
    }
    this.trees.set(baseFolder, tree);
    this.treesWeight += weight;
  }

  private forgetTree(baseFolder: string): void {
    const entry = this.trees.get(baseFolder);
    if (!entry) return;
    this.trees.delete(baseFolder);
    this.treesWeight -= treeWeight(entry);
  }

  async delete(key: string): Promise<void> {
    assertValidKey(key);
    await this.withKeyLock(key, async () => {
      await rm(this.objectPath(key), { force: true });
      await rm(this.metaPath(key), { force: true });
      // Empty folders piled up (every job's outputs/<o>/<j>/frames/<i>/), slowed every list() walk,
      // and blocked a later key named like them (put p/q, delete p/q, put p).
      await this.removeEmptyFolders(this.objectPath(key), join(this.root, 'objects'));
      await this.removeEmptyFolders(this.metaPath(key), join(this.root, 'meta'));
    });
    this.etags.delete(key);
  }

  /**
   * `delete` of each key, a few at once, once all are valid (the port's batch delete; on S3 one request):
   * every key is tried, and the first failure is thrown after.
   */
  async deleteMany(keys: readonly string[]): Promise<void> {
    for (const key of keys) assertValidKey(key);
    let failure: { error: unknown } | undefined;
    await forEachLimited(keys, LOCAL_DELETES_AT_ONCE, async (key) => {
      try {
        await this.delete(key);
      } catch (error) {
        failure ??= { error };
      }
    });
    if (failure) throw failure.error;
  }

  /**
   * Removes `path`'s folder and its parents below `top` while they are empty. Best effort: rmdir
   * refuses a folder that is not empty, so a concurrent put's file is never lost, and a put whose
   * folder vanished between its mkdir and rename makes it again (see `commit`).
   */
  private async removeEmptyFolders(path: string, top: string): Promise<void> {
    for (let dir = dirname(path); dir.startsWith(top + sep); dir = dirname(dir)) {
      try {
        await rmdir(dir);
      } catch {
        return; // not empty (ENOTEMPTY/EEXIST), already gone, or not ours: stop here
      }
    }
  }

  async putIfAbsent(key: string, body: Uint8Array, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    const result = await this.writeLocked(key, body, options, async () => {
      if (await this.readObject(key)) throw new PreconditionFailedError(`object already exists: ${key}`);
    });
    // A create (a job record, an idempotency claim) has no previous version to fall back on, so
    // unlike a replace it is made durable before the caller answers 202: its folders, and theirs up
    // to the root (they may be new), are fsynced. Outside the lock, so no conditional race widens.
    await this.syncFoldersUp(this.metaPath(key));
    await this.syncFoldersUp(this.objectPath(key));
    return result;
  }

  /** fsyncs the folders from `path`'s own up to the store's root. */
  private async syncFoldersUp(path: string): Promise<void> {
    for (let dir = dirname(path); dir.startsWith(this.root + sep); dir = dirname(dir)) await syncDir(dir);
    await syncDir(this.root);
  }

  async replaceIfMatch(key: string, body: Uint8Array, etag: string, options: PutOptions = {}): Promise<{ etag: string }> {
    assertValidKey(key);
    return this.writeLocked(key, body, options, async () => {
      const current = await this.readObject(key);
      if (!current) throw new PreconditionFailedError(`object does not exist: ${key}`);
      if (current.etag !== etag) throw new PreconditionFailedError(`etag mismatch for ${key}`);
    });
  }

  async signedGetUrl(key: string, expiresSec: number): Promise<string> {
    assertValidKey(key);
    checkExpiry(expiresSec);
    return buildLocalSignedUrl(this.options.publicBaseUrl, this.options.signingSecret, {
      method: 'GET',
      key,
      expiresAtSec: Math.floor(Date.now() / 1000) + expiresSec,
    });
  }

  async signedPutUrl(key: string, options: SignedPutOptions): Promise<SignedPut> {
    assertValidKey(key);
    checkExpiry(options.expiresSec);
    checkPutLimits(options);
    const expiresAtSec = Math.floor(Date.now() / 1000) + options.expiresSec;
    const url = buildLocalSignedUrl(this.options.publicBaseUrl, this.options.signingSecret, {
      method: 'PUT',
      key,
      expiresAtSec,
      maxBytes: options.contentLength ?? options.maxBytes,
      ...(options.contentLength !== undefined ? { exactBytes: options.contentLength } : {}),
      contentType: options.contentType,
      ...(options.createOnly ? { createOnly: true } : {}),
    });
    return {
      url,
      method: 'PUT',
      // As S3 returns them: a promised length and a create-only condition are part of the grant and must be sent as is.
      headers: {
        'content-type': options.contentType,
        ...(options.contentLength !== undefined ? { 'content-length': String(options.contentLength) } : {}),
        ...(options.createOnly ? { 'if-none-match': '*' } : {}),
      },
      expiresAt: new Date(expiresAtSec * 1000),
      // The local server reads `max` from the verified URL and refuses larger bodies.
      enforcesMaxBytes: true,
    };
  }
}
