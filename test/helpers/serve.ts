// What the end-to-end suites share: a tiny default model in a temp folder, a recipe that runs it in
// seconds, and a free port for `serve()`.
import { join } from 'node:path';
import { createServer } from 'node:net';
import { REPO_ROOT } from '../../cli/common.ts';
import { makeTinyBundle } from './bundle.ts';

/** A recipe the tiny model runs in a few hundred milliseconds (pass as `serve(…, { recipeOverrides })`). */
export const FAST_RECIPE = { steps: 6, globalViews: 4, patchViews: 4, initSamples: 32, frameEvery: 2 };

/** A models folder under `root` whose `toy` is the tiny quick-GELU bundle with the test prior. */
export function tinyModelsDir(root: string): string {
  const modelsDir = join(root, 'models');
  makeTinyBundle('quickgelu', { dir: join(modelsDir, 'toy'), prior: join(REPO_ROOT, 'models', 'test-prior', 'prior.safetensors'), manifest: { name: 'toy' } });
  return modelsDir;
}

/** A port free on 127.0.0.1 just now. */
export function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}
