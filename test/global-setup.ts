// One temporary folder per test run, removed at its end. Tests make many temporary stores, bundles
// and queues under os.tmpdir(); each cleaning up its own is easy to forget (they had left 78 GB
// behind on a development machine), so the run points TMPDIR at a folder of its own and removes it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const previous = process.env.TMPDIR;
  const dir = mkdtempSync(join(tmpdir(), 'clipag-test-run-'));
  // Test workers (and the processes tests spawn with process.env) inherit it; os.tmpdir() reads it on every call.
  process.env.TMPDIR = dir;
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    rmSync(dir, { recursive: true, force: true });
  };
}
