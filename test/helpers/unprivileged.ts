// The real `clipag` command in a child process for which a folder's mode means what it says. Root writes
// into a folder whatever its mode, and this machine and CI run the tests as root: there the child runs as
// nobody (uid and gid 65534, spawn's uid/gid options), so a folder of mode 0o555 owned by root is one it
// cannot write. Run as another user, the child is that user: the folder is then its own, and mode 0o555
// forbids its owner writing too. (Windows has no such modes: there the checks that use this fail.)
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, realpathSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO_ROOT } from '../../cli/common.ts';

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;

/** Whether a user who is neither the owner nor in the group can enter every folder on the way to `path`, and read it when it is a file or folder itself. */
function othersReach(path: string): boolean {
  let p = realpathSync(path);
  if ((statSync(p).mode & 0o005) !== 0o005) return false;
  for (; p !== dirname(p); p = dirname(p)) if ((statSync(dirname(p)).mode & 0o001) === 0) return false;
  return true;
}

/**
 * Why the child cannot run here, or undefined: as root, uid 65534 must reach the repo, its node_modules
 * and node itself. A checkout under a folder others may not enter (root's home, mode 0o700) leaves
 * nothing to run the command as; the tests that need it are skipped there with this reason, and run
 * wherever the checkout is reachable (this machine's checkouts under /work are).
 */
export const unprivilegedUnavailable: string | undefined = (() => {
  if (!asRoot) return undefined;
  for (const needed of [REPO_ROOT, join(REPO_ROOT, 'node_modules'), process.execPath]) {
    if (!othersReach(needed)) return `uid ${NOBODY} cannot read ${needed} (a folder on its way has no x bit for others)`;
  }
  return undefined;
})();

export interface UnprivilegedBox {
  /** A folder (mode 0o555) the child cannot create anything in. */
  readOnly: string;
  /** Runs `clipag ARGV…` in the child (its own TMPDIR and HOME, CLIPAG_* only from `env`); killed after `timeoutMs`. */
  clipag(argv: string[], env?: Record<string, string>, timeoutMs?: number): Promise<{ code: number | null; stdout: string; stderr: string }>;
  remove(): void;
}

/**
 * A folder the child can reach, holding the read-only folder and a home the child owns (tsx keeps its
 * cache under TMPDIR). It goes under os.tmpdir() when nobody can reach that (the run's own temporary
 * folder is made 0o700), else under /tmp.
 */
export function unprivilegedBox(): UnprivilegedBox {
  if (unprivilegedUnavailable) throw new Error(`${unprivilegedUnavailable}: the read-only-folder checks run the command as that user`);
  const base = !asRoot || othersReach(tmpdir()) ? tmpdir() : '/tmp';
  const root = mkdtempSync(join(base, 'clipag-unprivileged-'));
  chmodSync(root, 0o755);
  const home = join(root, 'home');
  mkdirSync(home);
  if (asRoot) chownSync(home, NOBODY, NOBODY);
  const readOnly = join(root, 'read-only');
  mkdirSync(readOnly);
  chmodSync(readOnly, 0o555);
  return {
    readOnly,
    clipag: (argv, env = {}, timeoutMs = 60_000) =>
      new Promise((resolve, reject) => {
        const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CLIPAG_')));
        const child = spawn(process.execPath, [join(REPO_ROOT, 'bin', 'clipag.mjs'), ...argv], {
          cwd: home,
          env: { ...inherited, TMPDIR: home, HOME: home, ...env },
          stdio: ['ignore', 'pipe', 'pipe'],
          timeout: timeoutMs,
          ...(asRoot ? { uid: NOBODY, gid: NOBODY } : {}),
        });
        let stdout = '', stderr = '';
        child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
        child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
        child.on('error', reject);
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      }),
    remove: () => {
      chmodSync(readOnly, 0o755);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
