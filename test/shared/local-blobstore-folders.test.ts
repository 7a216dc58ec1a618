// A delete removes the folders it empties (LocalBlobStore.delete), under its own key's lock only, so
// it can remove the folder of a concurrent put to another key between that put's mkdir and rename.
// The window is a few microseconds; `rename` is wrapped here to open it deterministically.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, sep } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

const hooks = vi.hoisted(() => ({ beforeRename: undefined as undefined | ((from: string, to: string) => Promise<void>) }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const rename: typeof real.rename = async (from, to) => {
    await hooks.beforeRename?.(String(from), String(to));
    return real.rename(from, to);
  };
  return { ...real, default: { ...real, rename }, rename };
});

const { rmdir } = await import('node:fs/promises');
const { LocalBlobStore } = await import('../../shared/adapters/local/blobstore.ts');

afterEach(() => {
  hooks.beforeRename = undefined;
});

describe('LocalBlobStore put racing a delete that removes its folder', () => {
  it('makes the folder again and lands when the folder vanished between its mkdir and rename', async () => {
    const root = mkdtempSync(join(tmpdir(), 'clipag-blobs-'));
    const store = new LocalBlobStore({ rootDir: root, signingSecret: 's'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
    const removed = new Set<string>();
    hooks.beforeRename = async (_from, to) => {
      // As a delete of race/other, having just emptied the folder, would: once per target folder.
      if (to.includes(`${sep}race${sep}`) && !removed.has(dirname(to))) {
        removed.add(dirname(to));
        await rmdir(dirname(to));
      }
    };
    await expect(store.put('race/new', Buffer.from('n'))).resolves.toBeDefined();
    expect(removed.size).toBe(2); // the metadata's folder and the object's folder both vanished once
    hooks.beforeRename = undefined;
    expect(Buffer.from((await store.get('race/new'))!.body).toString()).toBe('n');
  });
});
