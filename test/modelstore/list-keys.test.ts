/**
 * Listing the pushed models reads their indexes only: the local store's `list` opened and hashed every
 * object it returned, every pushed weight file included (about 1 s per 300 MB on the first
 * GET /v1/models after a start). Through `listKeys`, no weight file is opened.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import { ModelStore } from '../../shared/modelstore.ts';
import { makeTinyBundle } from '../helpers/bundle.ts';
import { countingBlobs } from '../helpers/counting-blobs.ts';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tmp = (name: string) => {
  const d = mkdtempSync(join(tmpdir(), `clipag-${name}-`));
  dirs.push(d);
  return d;
};

describe('ModelStore.list', () => {
  it('finds the indexes by key, opening no pushed file but the indexes', async () => {
    const blobs = new LocalBlobStore({ rootDir: tmp('models-blobs'), signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    await new ModelStore(blobs).push(makeTinyBundle('quickgelu', { dir: join(tmp('tiny'), 'b'), manifest: { name: 'tiny-a' } }), 'tiny-a');
    const { blobs: counting, calls, args } = countingBlobs(blobs);
    expect((await new ModelStore(counting).list()).map((m) => m.name)).toEqual(['tiny-a']);
    expect(calls.list).toBeUndefined();
    const read = args.filter(([method]) => method === 'get' || method === 'head').map(([, key]) => String(key));
    expect(read.length).toBeGreaterThan(0);
    expect(read.every((key) => key.endsWith('/bundle.json'))).toBe(true);
  });
});
