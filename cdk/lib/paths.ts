import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

/** Repository root, derived from this file's location (not from the environment or cwd). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const LAMBDA_ENTRY = path.join(REPO_ROOT, 'functions', 'lambda.ts');
export const SWEEP_LAMBDA_ENTRY = path.join(REPO_ROOT, 'functions', 'sweep-lambda.ts');
export const LOCKFILE = path.join(REPO_ROOT, 'package-lock.json');
export const WORKER_DOCKERFILE = 'gpu-worker/Dockerfile';

/**
 * The input size of a model bundle that ships in the worker image (the repo's `models/<name>/`), as
 * its manifest says; undefined for a model the repo does not hold (a pushed one: the API reads its
 * size from the store's index).
 */
export function shippedModelInputSize(name: string): number | undefined {
  const manifest = path.join(REPO_ROOT, 'models', name, 'manifest.json');
  if (!existsSync(manifest)) return undefined;
  // A BOM is allowed, as the API and the worker allow it.
  const size = (JSON.parse(readFileSync(manifest, 'utf8').replace(/^\uFEFF/, '')) as { preprocess?: { image_size?: unknown } }).preprocess?.image_size;
  return Number.isInteger(size) ? (size as number) : undefined;
}
