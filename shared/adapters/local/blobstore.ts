import { createHash, randomBytes } from 'node:crypto';
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
    assertValidPrefix(prefix);
    const limit = options.limit ?? 1000;
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValidationError('limit must be 1..1000', 'limit');
    // Walk only the deepest folder the prefix fully names.
    const baseFolder = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
    const keys: string[] = [];
    const walk = async (relDir: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(join(this.root, 'objects', relDir), { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') return;
        throw error;
      }
      for (const entry of entries) {
        const rel = relDir ? `${relDir}/${entry.name}` : entry.name;
        if (entry.isDirectory()) await walk(rel);
        else if (entry.isFile() && rel.startsWith(prefix)) {
          // A name no key can have (an editor's `x~`, a copy's `a b.json`, non-ASCII) was put there
          // by hand, not by this store: skipped, as callers skip S3 keys they do not recognise. It
          // used to make the whole listing (models, jobs, keys, the sweep) throw a 400.
          if (isValidKey(rel)) keys.push(rel);
          else if (!this.warnedNames.has(rel)) {
            this.warnedNames.add(rel);
            this.log.warn('file under objects/ is not a valid key; list() skips it', { file: join(this.root, 'objects', rel) });
          }
        }
      }
    };
    await walk(baseFolder);
    // Plain code-unit order equals S3's UTF-8 byte order for the ASCII keys assertValidKey allows.
    keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const after = options.cursor;
    const remaining = after === undefined ? keys : keys.filter((k) => k > after);
    const pageKeys = remaining.slice(0, limit);
    const items: BlobMeta[] = [];
    for (const key of pageKeys) {
      const meta = await this.head(key);
      if (meta) items.push(meta); // deleted between readdir and head: skip
    }
    return remaining.length > limit ? { items, cursor: pageKeys[pageKeys.length - 1] } : { items };
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
    });
    return {
      url,
      method: 'PUT',
      // As S3 returns them: a promised length is part of the grant and must be sent as is.
      headers: { 'content-type': options.contentType, ...(options.contentLength !== undefined ? { 'content-length': String(options.contentLength) } : {}) },
      expiresAt: new Date(expiresAtSec * 1000),
      // The local server reads `max` from the verified URL and refuses larger bodies.
      enforcesMaxBytes: true,
    };
  }
}
