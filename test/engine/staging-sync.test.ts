// Flushing a staged bundle before it is swapped in (train-toy, train-judge, models import). On Windows
// fsync is FlushFileBuffers, which needs a handle opened for writing and cannot flush a folder (EPERM):
// the first folder flush failed the whole command, after the bundle had been written (portability review #4).
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { syncFolder, syncOpenFlags, syncPath } from '../../gpu-worker/engine/io/staging.ts';

describe('syncPath', () => {
  it('opens a file read-only on POSIX systems and for writing on Windows, and leaves a folder on Windows', () => {
    expect(syncOpenFlags(false, 'linux')).toBe('r');
    expect(syncOpenFlags(true, 'darwin')).toBe('r');
    expect(syncOpenFlags(false, 'win32')).toBe('r+');
    expect(syncOpenFlags(true, 'win32')).toBeUndefined();
  });

  it('flushes a staged folder and its files here; a read-only file too', () => {
    const dir = mkdtempSync(join(tmpdir(), 'clipag-sync-'));
    mkdirSync(join(dir, 'sub'));
    writeFileSync(join(dir, 'sub', 'weights.bin'), Buffer.alloc(1024, 7));
    writeFileSync(join(dir, 'manifest.json'), '{}');
    chmodSync(join(dir, 'manifest.json'), 0o444);
    expect(() => syncFolder(dir)).not.toThrow();
    expect(() => syncPath(dir, 'win32')).not.toThrow();
    // Opened for writing as on Windows: a user other than root cannot, and the file is then left unflushed, not an error.
    expect(() => syncPath(join(dir, 'manifest.json'), 'win32')).not.toThrow();
  });
});
