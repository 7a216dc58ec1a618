// One temporary folder per test run, removed at its end. Tests make many temporary stores, bundles
// and queues under os.tmpdir(); each cleaning up its own is easy to forget (they had left 78 GB
// behind on a development machine), so the run points TMPDIR at a folder of its own and removes it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** What os.tmpdir() reads: TMPDIR on POSIX systems, TEMP then TMP on Windows. */
const TEMP_VARIABLES = ['TMPDIR', 'TEMP', 'TMP'] as const;

export default function setup(): () => void {
  const previous = TEMP_VARIABLES.map((name) => process.env[name]);
  const dir = mkdtempSync(join(tmpdir(), 'clipag-test-run-'));
  // Test workers (and the processes tests spawn with process.env) inherit them; os.tmpdir() reads them on every call.
  for (const name of TEMP_VARIABLES) process.env[name] = dir;
  return () => {
    TEMP_VARIABLES.forEach((name, i) => {
      if (previous[i] === undefined) delete process.env[name];
      else process.env[name] = previous[i];
    });
    rmSync(dir, { recursive: true, force: true });
  };
}
