// Locates the shared CLIP reference data (../shared/data/clip-reference next to the repo root).
// Missing data is a broken checkout, not a reason to skip: this throws so tests fail loudly.

import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REFERENCE_DIR = resolve(REPO_ROOT, '..', 'shared', 'data', 'clip-reference');

/** Absolute path of a reference file; throws if the folder or the file is missing. */
export function referencePath(file: string): string {
  if (!existsSync(REFERENCE_DIR)) {
    throw new Error(
      `CLIP reference data folder not found at ${REFERENCE_DIR}. It must sit at ../shared/data/clip-reference relative to the repo root (${REPO_ROOT}).`,
    );
  }
  const p = join(REFERENCE_DIR, file);
  if (!existsSync(p)) throw new Error(`CLIP reference file '${file}' not found in ${REFERENCE_DIR}; see its README.md for the list of files.`);
  return p;
}
