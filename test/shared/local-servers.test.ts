// The server registry in a local data folder (shared/adapters/local/servers.ts): its record's refresh
// notices a data folder removed or replaced while the server runs, and writes back a record removed alone.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { registerServer } from '../../shared/adapters/local/servers.ts';

const root = mkdtempSync(join(tmpdir(), 'clipag-servers-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A data folder as serve leaves it once started: its blobs folder exists. */
function dataFolder(name: string): string {
  const dir = join(root, name);
  mkdirSync(join(dir, 'blobs'), { recursive: true });
  return dir;
}

const noWarn = (message: string, error: Error) => {
  throw new Error(`unexpected warning: ${message}: ${error.message}`);
};

/** Registers with a fast refresh and a promise of what onLost is told. */
async function registered(dataDir: string) {
  let told!: (reason: string) => void;
  const lost = new Promise<string>((r) => (told = r));
  const onLost = vi.fn((reason: string) => told(reason));
  const record = await registerServer(dataDir, noWarn, { refreshMs: 20, onLost });
  return { record, lost, onLost };
}

describe('a server record notices its data folder gone', () => {
  it('removed: told once, naming the folder', async () => {
    const dataDir = dataFolder('removed');
    const { record, lost, onLost } = await registered(dataDir);
    rmSync(dataDir, { recursive: true, force: true });
    expect(await lost).toBe(`the data folder ${dataDir} was removed or replaced while this server ran`);
    await new Promise((r) => setTimeout(r, 100)); // more refreshes would have come by now
    expect(onLost).toHaveBeenCalledTimes(1);
    expect(existsSync(dataDir)).toBe(false); // nothing made again in its place
    await record.remove();
  });

  it('replaced by another folder of the same name (moved aside, made again)', async () => {
    const dataDir = dataFolder('replaced');
    const { record, lost } = await registered(dataDir);
    renameSync(dataDir, `${dataDir}.old`);
    mkdirSync(join(dataDir, 'blobs'), { recursive: true });
    expect(await lost).toBe(`the data folder ${dataDir} was removed or replaced while this server ran`);
    await record.remove();
  });

  it('emptied: its blobs folder named', async () => {
    const dataDir = dataFolder('emptied');
    const { record, lost } = await registered(dataDir);
    for (const name of readdirSync(dataDir)) rmSync(join(dataDir, name), { recursive: true, force: true });
    expect(await lost).toBe(`the data folder's ${join(dataDir, 'blobs')} was removed or replaced while this server ran`);
    await record.remove();
  });

  it('only its blobs folder removed (the record in servers/ untouched): told', async () => {
    const dataDir = dataFolder('blobs-only');
    const { record, lost } = await registered(dataDir);
    rmSync(join(dataDir, 'blobs'), { recursive: true, force: true });
    expect(await lost).toBe(`the data folder's ${join(dataDir, 'blobs')} was removed or replaced while this server ran`);
    await record.remove();
  });

  it('made again at once, with the freed inode number: told (its birth time differs)', async () => {
    const dataDir = dataFolder('made-again');
    const before = statSync(dataDir);
    const { record, lost } = await registered(dataDir);
    // In one synchronous stretch: no refresh can look in between.
    rmSync(dataDir, { recursive: true, force: true });
    mkdirSync(join(dataDir, 'blobs'), { recursive: true });
    const after = statSync(dataDir);
    // On ext4 and xfs the number usually comes back; where it does not, the case is the plain replacement above.
    if (after.ino === before.ino) expect(after.birthtimeMs).not.toBe(before.birthtimeMs);
    expect(await lost).toBe(`the data folder ${dataDir} was removed or replaced while this server ran`);
    await record.remove();
  });

  it('only the servers folder cleared: the record is written again, nothing is lost', async () => {
    const dataDir = dataFolder('records-cleared');
    const { record, onLost } = await registered(dataDir);
    const servers = join(dataDir, 'servers');
    const [name] = readdirSync(servers);
    rmSync(servers, { recursive: true, force: true });
    await vi.waitFor(() => expect(existsSync(join(servers, name!))).toBe(true), { timeout: 5_000 });
    expect(onLost).not.toHaveBeenCalled();
    await record.remove();
    expect(readdirSync(servers)).toEqual([]);
    await new Promise((r) => setTimeout(r, 100)); // a refresh after remove() would write it again
    expect(readdirSync(servers)).toEqual([]);
  });
});
