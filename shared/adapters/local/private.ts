import { chmod, mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

/**
 * Modes of everything the local adapters write under a data folder. Job records there hold prompts,
 * labels and webhook signing secrets (`whsec_…`), the blob store holds every image and upload and the
 * keys' hashes: none of it is for the other users of the machine. With the default umask (022) the
 * folders used to come out 0755 and the files 0644.
 */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/** The mode to create a file with: 0600, or `requested` where that is stricter (it never adds a bit 0600 lacks). */
export function privateFileMode(requested?: number): number {
  return requested === undefined ? PRIVATE_FILE_MODE : requested & PRIVATE_FILE_MODE;
}

/** `mkdir -p` whose new folders, parents included, are the owner's only (0700). */
export function mkdirPrivate(dir: string): Promise<string | undefined> {
  return mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
}

/** The folders clipag makes in a data folder, which hold everything but its two 0600 secret files. */
const OWN_FOLDERS = ['blobs', 'queue', 'model-cache'];

/**
 * Makes clipag's own folders in an existing data folder 0700, for data folders made by older versions
 * (0755 folders, 0644 files): with those folders closed, nobody else can reach anything under them,
 * whatever the modes of the files inside, so nothing is walked. The data folder itself is left as it
 * is: it may be a folder of the user's (`--data .`, a project folder, /opt) that others rightly read;
 * the only files clipag keeps directly in it (signing-secret, local-api-key) are 0600. A new data folder
 * is made 0700 by whoever creates it. Returns, in words for a warning, why a folder was left open;
 * undefined when all are private now (or already were).
 */
export async function makeDataFolderPrivate(dataDir: string): Promise<string | undefined> {
  if (process.platform === 'win32') return undefined; // no such modes there: ACLs decide
  const problems: string[] = [];
  for (const name of OWN_FOLDERS) {
    const dir = join(resolve(dataDir), name);
    let info;
    try {
      info = await stat(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // made 0700 when first needed
      problems.push(`${dir} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      continue;
    }
    if (!info.isDirectory() || (info.mode & 0o077) === 0) continue;
    try {
      await chmod(dir, PRIVATE_DIR_MODE);
    } catch (error) {
      problems.push(`${dir} (mode ${(info.mode & 0o7777).toString(8)}; chmod 700: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
  }
  if (problems.length === 0) return undefined;
  return `cannot make the data folder's own folders private: ${problems.join('; ')}; other users of this machine may read the prompts, images and webhook secrets in them`;
}

/** Data folders already warned about, in this process: said once, whichever command opens them. */
const warnedNotPrivate = new Set<string>();

/** makeDataFolderPrivate, with why it could not said through `warn` once per folder and process. */
export async function closeDataFolder(dataDir: string, warn: (message: string) => void): Promise<void> {
  const notPrivate = await makeDataFolderPrivate(dataDir);
  const dir = resolve(dataDir);
  if (notPrivate && !warnedNotPrivate.has(dir)) {
    warnedNotPrivate.add(dir);
    warn(notPrivate);
  }
}
