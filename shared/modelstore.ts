/**
 * The model store: model bundles (docs/model-bundle.md) kept in any BlobStore, so the API can list
 * them and every worker can download them (docs/model-store.md).
 *
 * Layout, one folder per model name, and in it one folder per bundle content (the CDK grants the
 * worker read on `models/`):
 *
 *   models/<name>/<content hash>/manifest.json   the bundle's manifest, byte for byte
 *   models/<name>/<content hash>/<file>          every file the manifest names (weights, tokenizer, prior, image_onnx)
 *   models/<name>/bundle.json                    the index: each file's sha256 and size, the bundle's content
 *                                                hash and a summary of the manifest; written LAST
 *
 * A model is "deployed" exactly when its index exists: `push` uploads the files first and the index
 * last, so a half-pushed model (interrupted upload) is never listed and never downloaded. The
 * content hash is `sha256` over the lines `<sha256>  <path>\n` of all files sorted by path (the
 * `sha256sum` format), so it changes when any file's bytes or name change, and workers key their
 * download cache by it.
 *
 * Files live under their bundle's content hash, so two pushes of different bundles under one name
 * never write the same object (the conditional index write picks the winner), and a replaced
 * bundle's files stay intact until the new index is in place. Index format 1 (files directly under
 * `models/<name>/`) is still read; a push rewrites such a model in format 2.
 *
 * Nothing here knows the engine: the caller (CLI) passes `validate` to check a bundle fully before
 * it is uploaded; the store itself checks names, paths, sizes and checksums.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { ClipagError, PreconditionFailedError } from './errors.ts';
import { assertValidKey, isPlainRelativePath } from './keys.ts';
import type { BlobStore } from './ports.ts';
import { deleteKeys, deletePrefix, listKeys } from './prefix.ts';
import { MODEL_NAME_PATTERN } from './schemas/common.ts';
import { decodeUtf8Strictly } from './utf8.ts';

export const MODEL_STORE_PREFIX = 'models/';
export const MODEL_INDEX_FILE = 'bundle.json';
export const MODEL_INDEX_FORMAT = 'clipag-model-store-index';
/** The `format` of a CLIP bundle's manifest.json (docs/model-bundle.md). */
export const CLIP_BUNDLE_FORMAT = 'clipag-model-bundle';

/**
 * Whether a `<name>/manifest.json` folder holds another kind of bundle: its manifest reads and names
 * another `format` (the toy judge's, say). Such a folder is no model a request may name, and is not
 * listed. A manifest that does not read still counts as a model folder, so that the worker can say
 * what is wrong with it.
 */
/** A manifest's text; an editor's byte-order mark is not an error (the engine and the store read it alike). */
export function readManifestText(path: string): string {
  return readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
}

export function isOtherBundleKind(dir: string): boolean {
  try {
    const format = (JSON.parse(readManifestText(join(dir, 'manifest.json'))) as { format?: unknown } | null)?.format;
    return typeof format === 'string' && format !== CLIP_BUNDLE_FORMAT;
  } catch {
    return false;
  }
}
/** Kept as an alias of MODEL_NAME_PATTERN (shared/schemas/common.ts) for existing importers. */
export const MODEL_NAME_RE = MODEL_NAME_PATTERN;
const SHA256_RE = /^[0-9a-f]{64}$/;

export type ModelStoreErrorCode = 'invalid_name' | 'invalid_bundle' | 'checksum_mismatch' | 'conflict' | 'not_found' | 'invalid_index' | 'newer_format';

/** A model store failure; `code` says which, the message says what to do. Never retryable. */
export class ModelStoreError extends ClipagError {
  readonly status: number;
  readonly retryable = false;
  constructor(code: ModelStoreErrorCode, message: string, options: { cause?: unknown } = {}) {
    super(code, message, options);
    // newer_format: the deployment cannot read its own store, which is no request's fault.
    this.status = code === 'conflict' ? 409 : code === 'not_found' ? 404 : code === 'newer_format' ? 500 : 400;
  }
}

/** The newest index format this version reads (and the one it writes). */
export const MODEL_INDEX_FORMAT_VERSION = 2;

/**
 * An index a newer clipag wrote, in a format_version this version does not know (its files may be laid
 * out or described otherwise): not corrupt, and no re-push fixes it; the deployment is behind the CLI
 * that pushed it. `contentHash` is the bundle content it names, when it names one as this version does.
 */
export class NewerModelIndexError extends ModelStoreError {
  constructor(
    where: string,
    readonly formatVersion: number,
    readonly contentHash: string | undefined,
  ) {
    super('newer_format', `${where} was written by a newer clipag (index format_version ${formatVersion}; this version reads 1 to ${MODEL_INDEX_FORMAT_VERSION}): upgrade the workers and the API (and this clipag CLI) to the version that pushed it`);
  }
}

// The index, its file entries and its summary keep fields this version does not know (a newer clipag
// may describe more of a bundle): they are read as before and listed. A change in how the files are
// stored or checked is no such field: it takes a new format_version, which this version refuses.
export const ModelIndexFileSchema = z
  .object({ path: z.string().min(1), sha256: z.string().regex(SHA256_RE), size: z.number().int().nonnegative() })
  .loose();
export type ModelIndexFile = z.infer<typeof ModelIndexFileSchema>;

export const ModelIndexSchema = z
  .object({
    format: z.literal(MODEL_INDEX_FORMAT),
    /** 1: files at models/<name>/<path>; 2: at models/<name>/<content_hash>/<path>. */
    format_version: z.union([z.literal(1), z.literal(MODEL_INDEX_FORMAT_VERSION)]),
    name: z.string().regex(MODEL_NAME_RE),
    /** sha256 over `<sha256>  <path>\n` of every file, sorted by path. */
    content_hash: z.string().regex(SHA256_RE),
    /** Sorted by path; includes manifest.json. */
    files: z.array(ModelIndexFileSchema).min(1),
    total_bytes: z.number().int().nonnegative(),
    pushed_at: z.string(),
    /** A summary of the manifest, so listing needs one GET per model. */
    summary: z
      .object({
        description: z.string().optional(),
        robust: z.boolean(),
        embed_dim: z.number().int().positive(),
        input_size: z.number().int().positive(),
        license: z.string().optional(),
        source: z.string().optional(),
      })
      .loose(),
  })
  .loose();
export type ModelIndex = z.infer<typeof ModelIndexSchema>;

export function assertModelName(name: string): void {
  if (typeof name !== 'string' || !MODEL_NAME_RE.test(name)) {
    throw new ModelStoreError('invalid_name', `model name ${JSON.stringify(name)} is not valid: use 1-64 lower-case letters, digits, ".", "_" or "-", starting with a letter or digit (e.g. clipag-vitb32)`);
  }
}

export const modelKey = (name: string, path: string): string => `${MODEL_STORE_PREFIX}${name}/${path}`;
export const modelIndexKey = (name: string): string => modelKey(name, MODEL_INDEX_FILE);
/** Where a file of an indexed bundle is stored (format 2: under the content hash; format 1: flat). */
export const modelFileKey = (index: Pick<ModelIndex, 'name' | 'content_hash' | 'format_version'>, path: string): string =>
  index.format_version === 1 ? modelKey(index.name, path) : modelKey(index.name, `${index.content_hash}/${path}`);
/** The folder of one bundle content of a model (format 2). */
const bundlePrefix = (name: string, contentHash: string): string => modelKey(name, `${contentHash}/`);

/** The content hash of a file list (order does not matter). */
export function bundleContentHash(files: readonly Pick<ModelIndexFile, 'path' | 'sha256'>[]): string {
  const lines = [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)).map((f) => `${f.sha256}  ${f.path}\n`);
  return createHash('sha256').update(lines.join('')).digest('hex');
}

export const sha256Bytes = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256');
  await new Promise<void>((res, rej) => {
    createReadStream(path).on('data', (c) => h.update(c)).on('end', () => res()).on('error', rej);
  });
  return h.digest('hex');
}

/** Parses an index document; ModelStoreError('invalid_index') names the problem. */
export function parseModelIndex(bytes: Uint8Array, where: string): ModelIndex {
  // Strictly: a lossy decoding would turn a damaged byte into U+FFFD and serve the index as if whole.
  const decoded = decodeUtf8Strictly(bytes);
  if ('problem' in decoded) {
    throw new ModelStoreError('invalid_index', `${where} is ${decoded.problem}; re-push the model with clipag models push DIR --name NAME --force`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(decoded.text);
  } catch (e) {
    throw new ModelStoreError('invalid_index', `${where} is not valid JSON (${(e as Error).message}); re-push the model with clipag models push DIR --name NAME --force`);
  }
  const newer = newerFormat(raw);
  if (newer !== undefined) {
    const hash = (raw as { content_hash?: unknown }).content_hash;
    throw new NewerModelIndexError(where, newer, typeof hash === 'string' && SHA256_RE.test(hash) ? hash : undefined);
  }
  const parsed = ModelIndexSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ModelStoreError('invalid_index', `${where} is not a valid model index: ${issues}; re-push the model with --force`);
  }
  const index = parsed.data;
  const want = bundleContentHash(index.files);
  if (want !== index.content_hash) {
    throw new ModelStoreError('invalid_index', `${where}: content_hash ${index.content_hash.slice(0, 12)}… does not match its file list (${want.slice(0, 12)}…); re-push the model with --force`);
  }
  for (const f of index.files) checkBundlePath(f.path, where);
  return index;
}

/** The format_version of an index of this store's format that is newer than this version reads. */
function newerFormat(raw: unknown): number | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const { format, format_version: version } = raw as { format?: unknown; format_version?: unknown };
  return format === MODEL_INDEX_FORMAT && Number.isInteger(version) && (version as number) > MODEL_INDEX_FORMAT_VERSION ? (version as number) : undefined;
}

function checkBundlePath(path: string, where: string): void {
  if (!isPlainRelativePath(path) || path === MODEL_INDEX_FILE) {
    throw new ModelStoreError('invalid_bundle', `${where}: file "${path}" must be a plain relative path inside the bundle (and not ${MODEL_INDEX_FILE})`);
  }
  try {
    assertValidKey(modelKey('x', path));
  } catch {
    throw new ModelStoreError('invalid_bundle', `${where}: file name "${path}" cannot be a store key; rename it to letters, digits and . _ = + @ - (and update manifest.json)`);
  }
}

interface LocalBundle {
  dir: string;
  manifestName: string;
  /** Paths relative to dir, sorted, including manifest.json. */
  paths: string[];
  declaredSha256: Record<string, string>;
  summary: ModelIndex['summary'];
}

/**
 * The files of a local bundle folder: manifest.json plus every file it names. Only the fields the
 * store needs are read here; the full manifest check is the caller's `validate` (the engine's loadBundle).
 */
export function readLocalBundle(dirIn: string): LocalBundle {
  const dir = resolve(dirIn);
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ModelStoreError('invalid_bundle', `${dir} is not a folder: pass a model bundle folder (make one with clipag models import SRC -o DIR)`);
  if (!existsSync(manifestPath)) throw new ModelStoreError('invalid_bundle', `no manifest.json in ${dir}: a model bundle is a folder with manifest.json, weights and tokenizer (see docs/model-bundle.md; make one with clipag models import)`);
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(readManifestText(manifestPath)) as Record<string, unknown>;
  } catch (e) {
    throw new ModelStoreError('invalid_bundle', `${manifestPath} is not valid JSON: ${(e as Error).message}`);
  }
  const str = (v: unknown) => (typeof v === 'string' && v.length > 0 ? v : undefined);
  const named = new Set<string>(['manifest.json']);
  const need = (field: string, v: unknown) => {
    const s = str(v);
    if (!s) throw new ModelStoreError('invalid_bundle', `${manifestPath}: "${field}" must name a file inside the bundle`);
    named.add(s);
  };
  need('weights', m.weights);
  need('tokenizer', m.tokenizer);
  if (m.prior !== undefined) need('prior', m.prior);
  const onnx = m.image_onnx as { file?: unknown } | undefined;
  if (onnx !== undefined) need('image_onnx.file', onnx?.file);
  const declared: Record<string, string> = {};
  if (m.sha256 !== undefined) {
    if (typeof m.sha256 !== 'object' || m.sha256 === null) throw new ModelStoreError('invalid_bundle', `${manifestPath}: "sha256" must map file names to hex digests`);
    for (const [f, h] of Object.entries(m.sha256 as Record<string, unknown>)) {
      if (typeof h !== 'string' || !SHA256_RE.test(h)) throw new ModelStoreError('invalid_bundle', `${manifestPath}: sha256["${f}"] must be 64 lower-case hex digits`);
      declared[f] = h;
      named.add(f);
    }
  }
  const arch = (m.architecture ?? {}) as Record<string, unknown>;
  const pre = (m.preprocess ?? {}) as Record<string, unknown>;
  const embed = m.embed_dim ?? arch.embedDim;
  const size = pre.image_size ?? arch.imageResolution;
  if (typeof m.robust !== 'boolean' || !Number.isInteger(embed) || !Number.isInteger(size) || typeof m.name !== 'string') {
    throw new ModelStoreError('invalid_bundle', `${manifestPath} lacks name, robust, embed_dim or preprocess.image_size: it is not a bundle manifest (docs/model-bundle.md)`);
  }
  const paths = [...named].sort();
  for (const p of paths) {
    checkBundlePath(p, manifestPath);
    const full = join(dir, p);
    if (!existsSync(full) || !statSync(full).isFile()) throw new ModelStoreError('invalid_bundle', `bundle ${dir}: file ${p} named by manifest.json is missing; re-create the bundle (clipag models import) or fix manifest.json`);
  }
  return {
    dir,
    manifestName: m.name,
    paths,
    declaredSha256: declared,
    summary: {
      ...(str(m.description) ? { description: m.description as string } : {}),
      robust: m.robust,
      embed_dim: embed as number,
      input_size: size as number,
      ...(str(m.license) ? { license: m.license as string } : {}),
      ...(str(m.source) ? { source: m.source as string } : {}),
    },
  };
}

/** Hashes of local bundle folders, by folder, with the (path, size, mtime) of the files they were taken from. */
const localHashes = new Map<string, { stamp: string; hash: Promise<string> }>();

/**
 * The content hash a local bundle folder would have once pushed (bundleContentHash over manifest.json
 * and every file it names): what a generation records as its `model_version`, so a folder model and
 * its pushed copy name the same bundle alike. Kept per folder while no file's size or mtime changes,
 * so listing models every minute does not read the weights again.
 */
export function localBundleContentHash(dir: string): Promise<string> {
  let local: LocalBundle;
  let stamp: string;
  try {
    local = readLocalBundle(dir);
    const bundle = local;
    stamp = JSON.stringify(bundle.paths.map((p) => {
      const st = statSync(join(bundle.dir, p));
      return [p, st.size, st.mtimeMs];
    }));
  } catch (e) {
    return Promise.reject(e);
  }
  const hit = localHashes.get(local.dir);
  if (hit && hit.stamp === stamp) return hit.hash;
  const hash = Promise.all(local.paths.map(async (path) => ({ path, sha256: await sha256OfFile(join(local.dir, path)) }))).then(bundleContentHash);
  localHashes.set(local.dir, { stamp, hash });
  hash.catch(() => {
    if (localHashes.get(local.dir)?.hash === hash) localHashes.delete(local.dir); // a failed read is not kept
  });
  return hash;
}

export interface PushProgress {
  phase: 'hash' | 'upload' | 'skip' | 'index';
  /** The file (bundle-relative), absent for 'index'. */
  file?: string;
  /** 1-based index of the file, and the file count. */
  index: number;
  total: number;
  size?: number;
  sha256?: string;
  /** Bytes uploaded so far over all files, and in total. */
  bytesDone: number;
  bytesTotal: number;
}

export interface PushOptions {
  /** Replace a different bundle already stored under this name. */
  force?: boolean;
  /** Full bundle check before anything is uploaded (the CLI passes the engine's loadBundle). */
  validate?: (dir: string) => Promise<void> | void;
  onProgress?: (p: PushProgress) => void;
  /** Clock for `pushed_at` (tests). */
  now?: () => Date;
}

export interface PushResult {
  name: string;
  contentHash: string;
  files: ModelIndexFile[];
  totalBytes: number;
  /**
   * pushed: new name; replaced: --force over a different bundle; unchanged: the same bundle was
   * there; reuploaded: the same bundle, every file uploaded again (--force, or an index in format 1).
   */
  status: 'pushed' | 'replaced' | 'unchanged' | 'reuploaded';
  uploadedBytes: number;
  /** Stale objects of a replaced bundle that were removed. */
  removed: string[];
}

export interface ModelStoreOptions {
  /**
   * Called for indexes that are skipped by list() because they are unreadable. The worker's model
   * registry reports through it too (a pushed model that a local folder shadows).
   */
  onWarning?: (message: string) => void;
}

export class ModelStore {
  constructor(
    readonly blobs: BlobStore,
    private readonly options: ModelStoreOptions = {},
  ) {}

  /** The warning sink given at construction (the worker passes its log's warn), if any. */
  get onWarning(): ((message: string) => void) | undefined {
    return this.options.onWarning;
  }

  /** The index of `name`, or null when no complete push of it exists. */
  async describe(name: string): Promise<ModelIndex | null> {
    assertModelName(name);
    const obj = await this.blobs.get(modelIndexKey(name));
    if (!obj) return null;
    const index = parseModelIndex(obj.body, modelIndexKey(name));
    if (index.name !== name) throw new ModelStoreError('invalid_index', `${modelIndexKey(name)} names model "${index.name}"; re-push it with --force`);
    return index;
  }

  /**
   * Every completely pushed model (sorted by name). Unreadable indexes (a newer clipag's among them)
   * are skipped with a warning, and told to `onSkipped`: the model is there, this version cannot read it.
   */
  async list(options: { onSkipped?: (name: string, error: ModelStoreError) => void } = {}): Promise<ModelIndex[]> {
    const names: string[] = [];
    let cursor: string | undefined;
    do {
      // Keys only: the local store's list hashes every object it returns, every pushed weight file included
      // (about 1 s per 300 MB on the first GET /v1/models after a start).
      const page = await listKeys(this.blobs, MODEL_STORE_PREFIX, cursor === undefined ? {} : { cursor });
      for (const key of page.keys) {
        const m = /^models\/([^/]+)\/bundle\.json$/.exec(key);
        if (m && MODEL_NAME_RE.test(m[1])) names.push(m[1]);
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    const out: ModelIndex[] = [];
    for (const name of names.sort()) {
      try {
        const index = await this.describe(name);
        if (index) out.push(index);
      } catch (e) {
        if (!(e instanceof ModelStoreError)) throw e;
        this.options.onWarning?.(`model ${name} skipped: ${e.message}`);
        options.onSkipped?.(name, e);
      }
    }
    return out;
  }

  /** One stored file of an indexed bundle, or null when absent. */
  async getFile(index: ModelIndex, path: string): Promise<Uint8Array | null> {
    assertModelName(index.name);
    const obj = await this.blobs.get(modelFileKey(index, path));
    return obj ? obj.body : null;
  }

  /**
   * Uploads the bundle folder `dir` as model `name` (default: the manifest's name, which `name` must
   * equal). Files first, into the folder of the bundle's content hash (each checked against
   * manifest.json's sha256 when it declares one, and by size after upload), the index last. The same
   * bundle again only checks what is stored (`force` uploads every file again: the repair for a
   * damaged object); a different bundle under an existing name needs `force`. The old bundle stays
   * served until the new index is written, then its files are removed.
   */
  async push(dir: string, name: string | undefined, options: PushOptions = {}): Promise<PushResult> {
    const local = readLocalBundle(dir);
    const target = name ?? local.manifestName;
    assertModelName(target);
    if (local.manifestName !== target) {
      throw new ModelStoreError('invalid_bundle', `bundle ${local.dir} is named "${local.manifestName}" in its manifest.json but was pushed as "${target}"; push with --name ${local.manifestName}, or set "name" in manifest.json (or re-import with --name ${target})`);
    }
    if (options.validate) await options.validate(local.dir);

    // 1. hash every local file (and hold them to the manifest's declared checksums)
    const files: ModelIndexFile[] = [];
    const total = local.paths.length;
    const bytesTotal = local.paths.reduce((a, p) => a + statSync(join(local.dir, p)).size, 0);
    for (const [i, path] of local.paths.entries()) {
      const full = join(local.dir, path);
      const sha256 = await sha256OfFile(full);
      const size = statSync(full).size;
      const want = local.declaredSha256[path];
      if (want && want !== sha256) {
        throw new ModelStoreError('checksum_mismatch', `bundle ${local.dir}: ${path} has sha256 ${sha256}, manifest.json says ${want}: the file is corrupt or was replaced; re-create the bundle (clipag models import) or fix manifest.json. Nothing was uploaded.`);
      }
      files.push({ path, sha256, size });
      options.onProgress?.({ phase: 'hash', file: path, index: i + 1, total, size, sha256, bytesDone: 0, bytesTotal });
    }
    const contentHash = bundleContentHash(files);
    const index: ModelIndex = {
      format: MODEL_INDEX_FORMAT,
      format_version: MODEL_INDEX_FORMAT_VERSION,
      name: target,
      content_hash: contentHash,
      files,
      total_bytes: bytesTotal,
      pushed_at: (options.now?.() ?? new Date()).toISOString(),
      summary: local.summary,
    };

    // 2. what is there already?
    let existing: ModelIndex | null = null;
    let existingEtag: string | undefined;
    try {
      const obj = await this.blobs.get(modelIndexKey(target));
      if (obj) {
        existingEtag = obj.etag;
        existing = await this.describe(target);
      }
    } catch (e) {
      if (!(e instanceof ModelStoreError) || !options.force) {
        // A newer clipag's index is not broken: replacing it would take the model back to this version's format.
        if (e instanceof NewerModelIndexError) throw new ModelStoreError('conflict', `${e.message}; to replace it in this version's format anyway, push again with --force`, { cause: e });
        if (e instanceof ModelStoreError) throw new ModelStoreError('conflict', `${e.message} (to overwrite the broken entry, push again with --force)`, { cause: e });
        throw e;
      }
    }
    const sameBundle = existing?.content_hash === contentHash && existing.format_version === MODEL_INDEX_FORMAT_VERSION;
    if (existing && existing.content_hash !== contentHash && !options.force) {
      throw new ModelStoreError('conflict', `model "${target}" already exists in the store with a different bundle (content hash ${existing.content_hash.slice(0, 12)}…, pushed ${existing.pushed_at}; yours is ${contentHash.slice(0, 12)}…). Push under another --name, or pass --force to replace it (workers pick up the new bundle within a minute).`);
    }

    // Files this push put into the store: removed again if it fails before an index names them (a full
    // disk, a network error), so a push given up leaves nothing behind. A file is named here before its
    // put, since a put that fails partway may still leave part of it.
    const uploaded: string[] = [];
    let bytesDone = 0;
    let uploadedBytes = 0;
    try {
      // 3. upload into this content's own folder. The same bundle again: files already stored with
      //    the right size are kept, unless --force asks to upload everything (a damaged object).
      for (const [i, f] of files.entries()) {
        const key = modelFileKey(index, f.path);
        if (sameBundle && !options.force) {
          const head = await this.blobs.head(key);
          if (head && head.size === f.size) {
            bytesDone += f.size;
            options.onProgress?.({ phase: 'skip', file: f.path, index: i + 1, total, size: f.size, sha256: f.sha256, bytesDone, bytesTotal });
            continue;
          }
        }
        const body = await readFile(join(local.dir, f.path));
        const sha256 = sha256Bytes(body);
        if (sha256 !== f.sha256 || body.byteLength !== f.size) {
          throw new ModelStoreError('checksum_mismatch', `bundle ${local.dir}: ${f.path} changed while it was being pushed (sha256 ${f.sha256.slice(0, 12)}… then ${sha256.slice(0, 12)}…); nothing was listed, push again when the folder is stable`);
        }
        uploaded.push(key);
        await this.blobs.put(key, body, { contentType: contentTypeOf(f.path) });
        const head = await this.blobs.head(key);
        if (!head || head.size !== f.size) {
          throw new ModelStoreError('checksum_mismatch', `upload of ${key} stored ${head ? `${head.size} bytes` : 'nothing'} instead of ${f.size} bytes; the model was not listed, push again`);
        }
        bytesDone += f.size;
        uploadedBytes += f.size;
        options.onProgress?.({ phase: 'upload', file: f.path, index: i + 1, total, size: f.size, sha256: f.sha256, bytesDone, bytesTotal });
      }

      // 4. the index, last, conditionally: a concurrent push of another bundle either wins before us
      //    (we get a conflict and our files are removed) or after us (it gets the conflict).
      const body = Buffer.from(`${JSON.stringify(index, null, 2)}\n`);
      if (!sameBundle) {
        try {
          if (existingEtag === undefined) await this.blobs.putIfAbsent(modelIndexKey(target), body, { contentType: 'application/json' });
          else await this.blobs.replaceIfMatch(modelIndexKey(target), body, existingEtag, { contentType: 'application/json' });
        } catch (e) {
          if (!(e instanceof PreconditionFailedError)) throw e;
          const now = await this.describe(target).catch(() => null);
          if (now?.content_hash !== contentHash) {
            await deletePrefix(this.blobs, bundlePrefix(target, contentHash)); // no index names them
            throw new ModelStoreError('conflict', `model "${target}" was pushed by someone else meanwhile with a different bundle; nothing of yours is listed. Check clipag models list, then push again with --force if yours should win`);
          }
        }
        options.onProgress?.({ phase: 'index', index: total, total, bytesDone, bytesTotal });
      }
    } catch (e) {
      // The conflict above removed the folder itself already. The same bundle again (a --force repair of
      // a damaged file) writes over the files the live index names: never removed. Otherwise only when
      // the index, read now, names another bundle or none: another push of this bundle may have listed
      // it meanwhile, and an index that cannot be read is no proof that nothing names them. (Two pushes
      // of one new bundle at once, one failing before the other lists it, can still remove files the
      // other then lists: a --force push repairs that.)
      if (uploaded.length > 0 && !sameBundle && !(e instanceof ModelStoreError && e.code === 'conflict')) {
        const listed = await this.describe(target).then(
          (index) => ({ hash: index?.content_hash }),
          () => undefined,
        );
        if (listed !== undefined && listed.hash !== contentHash && e instanceof Error) {
          const removed = await deleteKeys(this.blobs, uploaded).then(() => true, () => false);
          e.message += removed
            ? `; nothing was listed, and the ${uploaded.length} file(s) this push uploaded were removed`
            : `; nothing was listed, and the files this push uploaded under ${bundlePrefix(target, contentHash)} could not all be removed (push again, or remove them)`;
        }
      }
      throw e;
    }

    // 5. the replaced bundle's files (format 2: its folder; format 1: the flat files), now that no
    //    new reader can be sent to them. Folders of other contents are left alone: they may belong
    //    to a push still in progress.
    const removed: string[] = [];
    if (existing && !sameBundle) {
      if (existing.format_version === 1) {
        const present = await Promise.all(existing.files.map(async (f) => {
          const key = modelFileKey(existing, f.path);
          return (await this.blobs.head(key)) ? key : undefined;
        }));
        const keys = present.filter((key): key is string => key !== undefined);
        await deleteKeys(this.blobs, keys);
        removed.push(...keys);
      } else if (existing.content_hash !== contentHash) {
        removed.push(...(await deletePrefix(this.blobs, bundlePrefix(target, existing.content_hash))));
      }
    }
    const status: PushResult['status'] = !existing
      ? 'pushed'
      : existing.content_hash !== contentHash
        ? 'replaced'
        : sameBundle && !options.force
          ? 'unchanged'
          : 'reuploaded';
    return { name: target, contentHash, files, totalBytes: bytesTotal, status, uploadedBytes, removed };
  }

}

function contentTypeOf(path: string): string {
  if (path.endsWith('.json')) return 'application/json';
  return 'application/octet-stream';
}
