import { chmod, mkdir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';

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

/**
 * Makes an existing data folder 0700, for data folders made by older versions (0755, their files 0644):
 * with its root closed, nobody else can reach anything under it, whatever the modes of the files
 * inside, so this one chmod is enough and nothing under it is walked. Returns, in words for a warning,
 * why it was left as it is; undefined when it is private now (or already was).
 *
 * A folder with the sticky bit (`/tmp`, given as the data folder by mistake) is shared by design:
 * it is never changed, as closing it would break every other user of it.
 */
export async function makeDataFolderPrivate(dataDir: string): Promise<string | undefined> {
  const dir = resolve(dataDir);
  if (process.platform === 'win32') return undefined; // no such modes there: ACLs decide
  let info;
  try {
    info = await stat(dir);
  } catch (error) {
    return `cannot check the mode of the data folder ${dir} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`;
  }
  if (!info.isDirectory() || (info.mode & 0o077) === 0) return undefined;
  const shown = (info.mode & 0o7777).toString(8);
  if (info.mode & 0o1000) {
    return `the data folder ${dir} (mode ${shown}) is a shared folder (sticky bit): left as it is, and other users of this machine may read what was stored there before; use a folder of your own (--data DIR or CLIPAG_DATA_DIR)`;
  }
  try {
    await chmod(dir, PRIVATE_DIR_MODE);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    return `cannot make the data folder ${dir} private (chmod 700: ${code}); it stays mode ${shown}, and other users of this machine may read the prompts, images and webhook secrets in it`;
  }
  return undefined;
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
