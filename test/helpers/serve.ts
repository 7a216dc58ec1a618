// What the end-to-end suites share: a tiny default model in a temp folder, a recipe that runs it in
// seconds, and a free port for `serve()`.
import { join } from 'node:path';
import { createServer } from 'node:net';
import { REPO_ROOT } from '../../cli/common.ts';
import { localStores } from '../../shared/adapters/stores.ts';
import { parseConfig, type LocalConfig } from '../../shared/config.ts';
import { ownerPolicyKey } from '../../shared/keys.ts';
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

/**
 * An account `acct_strict` in the local store at `dataDir`, with its own content policy (ADR 0018): an
 * output rule that withholds every image of "a photo of a cat" (the prompt itself as the concept: each
 * such image is as close to it as to the prompt), and the refusing `rules` given. Returns its key.
 */
export async function strictAccount(dataDir: string, rules: unknown[] = []): Promise<string> {
  const stores = await localStores({ ...(parseConfig({ CLIPAG_DATA_DIR: dataDir }) as LocalConfig), publicBaseUrl: 'http://127.0.0.1:1' });
  const key = (await stores.keys.create({ name: 'strict', owner: 'acct_strict' })).secret;
  const policy = {
    version: 1,
    rules,
    output_rules: [{ id: 'cat-lookalike', category: 'copyright', action: 'withhold', message: 'looks like a cat we do not own', concepts: ['a photo of a cat'], above_prompt_by: -0.0001 }],
  };
  await stores.blobs.put(ownerPolicyKey('acct_strict'), Buffer.from(JSON.stringify(policy)), { contentType: 'application/json' });
  return key;
}
