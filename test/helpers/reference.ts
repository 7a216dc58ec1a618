// Resolves files of the read-only reference fixtures in <repo root>/../shared/data/clip-reference/.

import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const REFERENCE_DIR = resolve(repoRoot, '..', 'shared', 'data', 'clip-reference');

/** Absolute path of a reference fixture; throws naming the path if it is missing. */
export function referencePath(file: string): string {
  const p = resolve(REFERENCE_DIR, file);
  if (!existsSync(p)) {
    throw new Error(`reference fixture missing: ${p} (expected the shared clip-reference folder next to the repo)`);
  }
  return p;
}
