// Options shared by the verbs.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EngineError } from '../gpu-worker/engine/errors.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The embedded default model bundle (trained by the project, shipped in the repo). */
export const DEFAULT_MODEL_DIR = join(REPO_ROOT, 'models', 'toy');

export function modelDir(arg: string | undefined): string {
  const dir = resolve(arg ?? DEFAULT_MODEL_DIR);
  if (!existsSync(dir)) throw new EngineError('invalid_model', `model bundle ${dir} does not exist${arg ? '' : ' (the default model ships in models/toy)'}; pass --model DIR`);
  return dir;
}

export function intArg(value: string | undefined, name: string, def: number, min: number, max: number): number {
  if (value === undefined) return def;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new EngineError('invalid_input', `--${name} must be an integer in [${min}, ${max}], got "${value}"`);
  return n;
}
