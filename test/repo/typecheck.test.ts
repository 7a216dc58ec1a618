// vitest strips types without checking them, so a type error (a port's contract changed under a
// caller, a test passing the wrong dependencies) would pass CI. The whole project is checked here,
// with the repository's own tsconfig.json, as `npm run typecheck` does.
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/reference.ts';

const run = promisify(execFile);

describe('the TypeScript sources', () => {
  it('type-check without errors (tsc --noEmit)', async () => {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    const result = await run(process.execPath, [tsc, '--noEmit', '--pretty', 'false'], { cwd: REPO_ROOT, timeout: 300_000, maxBuffer: 16 * 1024 * 1024 }).then(
      () => ({ code: 0, errors: '' }),
      (error: { code?: number; stdout?: string }) => ({ code: error.code ?? -1, errors: error.stdout ?? String(error) }),
    );
    expect(result.errors).toBe('');
    expect(result.code).toBe(0);
  }, 300_000);
});
