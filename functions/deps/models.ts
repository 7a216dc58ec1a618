import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { isOtherBundleKind, localBundleContentHash, type ModelIndex, ModelStore, NewerModelIndexError, readManifestText } from '../../shared/modelstore.ts';
import type { BlobStore } from '../../shared/ports.ts';
import type { ModelInfo } from '../schemas.ts';
import { MODEL_NAME_PATTERN } from '../../shared/schemas/common.ts';

const MODEL_NAME = MODEL_NAME_PATTERN;

/**
 * One entry of `GET /v1/models`: what is really deployed. The fields beyond the `Model` schema's
 * (robust, embed_dim, content_hash, license, source) come from the bundle's manifest, or from the
 * store index for pushed models; a model the API cannot read (the default one shipped in the worker
 * image, in AWS mode) is listed by name only.
 */
export type DeployedModel = ModelInfo & {
  robust?: boolean;
  embed_dim?: number;
  /** sha256 over the bundle's file hashes (docs/model-store.md); what workers cache by. */
  content_hash?: string;
  license?: string;
  source?: string;
};

/** Caches a model lister for `ttlMs`, so a POST does not re-list on every request. */
export function memoizeModels<T extends ModelInfo>(list: () => Promise<T[]>, ttlMs = 60_000): () => Promise<T[]> {
  let cached: { at: number; value: Promise<T[]> } | undefined;
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at > ttlMs) {
      const value = list();
      cached = { at: now, value };
      value.catch(() => {
        if (cached?.value === value) cached = undefined; // do not cache a failure
      });
    }
    return cached.value;
  };
}

function mark(entries: Iterable<DeployedModel>, defaultModel: string): DeployedModel[] {
  const byId = new Map<string, DeployedModel>();
  for (const e of entries) if (!byId.has(e.id)) byId.set(e.id, e);
  return [...byId.values()]
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map(({ default: _d, ...e }) => ({ ...e, ...(e.id === defaultModel ? { default: true } : {}) }));
}

export function fromIndex(index: ModelIndex): DeployedModel {
  const s = index.summary;
  return {
    id: index.name,
    ...(s.description ? { description: s.description } : {}),
    robust: s.robust,
    embed_dim: s.embed_dim,
    input_size: s.input_size,
    content_hash: index.content_hash,
    ...(s.license ? { license: s.license } : {}),
    ...(s.source ? { source: s.source } : {}),
  };
}

/**
 * The models pushed to a store. One whose index a newer clipag wrote (a higher format_version) is
 * listed by name only, as the image's default model is: it is there, and a newer worker serves it; a
 * request naming it must not be refused as naming an unknown model. Unreadable indexes are not listed.
 */
async function pushedModels(blobs: BlobStore): Promise<DeployedModel[]> {
  const newer: DeployedModel[] = [];
  const read = await new ModelStore(blobs).list({ onSkipped: (name, error) => error instanceof NewerModelIndexError && newer.push({ id: name }) });
  return [...read.map(fromIndex), ...newer];
}

/**
 * A local bundle folder's entry from its manifest.json (by name only when the manifest is unreadable:
 * the worker reports that), with the content hash its generations record as `model_version`.
 */
async function fromManifest(name: string, dir: string): Promise<DeployedModel> {
  // A folder the store would refuse (a file it names is missing) lists no hash; the worker says why.
  const contentHash = await localBundleContentHash(dir).catch(() => undefined);
  try {
    // readManifestText: a byte-order mark an editor saved is no reason to list the model by name only (the engine loads it).
    const m = JSON.parse(readManifestText(join(dir, 'manifest.json'))) as Record<string, unknown>;
    const pre = (m.preprocess ?? {}) as { image_size?: unknown };
    return {
      id: name,
      ...(typeof m.description === 'string' && m.description ? { description: m.description } : {}),
      ...(typeof m.robust === 'boolean' ? { robust: m.robust } : {}),
      ...(Number.isInteger(m.embed_dim) ? { embed_dim: m.embed_dim as number } : {}),
      ...(Number.isInteger(pre.image_size) ? { input_size: pre.image_size as number } : {}),
      ...(contentHash !== undefined ? { content_hash: contentHash } : {}),
      ...(typeof m.license === 'string' ? { license: m.license } : {}),
      ...(typeof m.source === 'string' ? { source: m.source } : {}),
    };
  } catch {
    return { id: name };
  }
}

/**
 * Local mode: the `<modelsDir>/<name>/manifest.json` bundles (the worker's registry reads the same
 * folders), plus the models pushed to `store` when one is given (folders win on a name clash, as in
 * the worker's registry).
 */
export function modelsFromDir(modelsDir: string, defaultModel: string, options: { store?: BlobStore } = {}): () => Promise<DeployedModel[]> {
  return memoizeModels(async () => {
    const local = existsSync(modelsDir)
      ? await Promise.all(
          readdirSync(modelsDir, { withFileTypes: true })
            .filter((e) => e.isDirectory() && MODEL_NAME.test(e.name) && existsSync(join(modelsDir, e.name, 'manifest.json')) && !isOtherBundleKind(join(modelsDir, e.name)))
            .map((e) => fromManifest(e.name, join(modelsDir, e.name))),
        )
      : [];
    const pushed = options.store ? await pushedModels(options.store) : [];
    return mark([...local, ...pushed], defaultModel);
  });
}

/**
 * AWS mode: the models pushed to the bucket's store (`models/<name>/bundle.json`, written last by
 * `clipag models push`, so half-pushed models are not listed), plus the default model, which ships
 * in the worker image and is listed by name (with its input size when the deployment gives it). A
 * model pushed under the default's name too is listed as the image's: the worker serves its own
 * folder over a pushed bundle of the same name (and warns), so the pushed index's content_hash would
 * name a bundle no generation runs on, and a request pinned to it would fail at the worker.
 */
export function modelsFromBucket(blobs: BlobStore, defaultModel: string, options: { defaultInputSize?: number | undefined } = {}): () => Promise<DeployedModel[]> {
  return memoizeModels(async () => {
    const pushed = await pushedModels(blobs);
    // The image's default model: its input size as the CDK read it from the repo, so that a request
    // naming no size gets the size the worker warms (ADR 0020).
    const shipped: DeployedModel = { id: defaultModel, ...(options.defaultInputSize !== undefined ? { input_size: options.defaultInputSize } : {}) };
    return mark([shipped, ...pushed], defaultModel);
  });
}
