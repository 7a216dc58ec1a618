import { randomBytes } from 'node:crypto';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { NonRetryableError } from '../../errors.ts';
import { syncDir } from './durable.ts';
import { withDirLock } from './lock.ts';
import { PRIVATE_FILE_MODE, mkdirPrivate } from './private.ts';

/** The blob store's minimum (LocalBlobStore refuses a shorter HMAC key). */
const MIN_SECRET_CHARS = 32;

/** A data folder the local adapters cannot use: permanent, and the operator's to fix. */
function dataFolderError(message: string, cause?: unknown): NonRetryableError {
  return new NonRetryableError(message, { code: 'config_error', ...(cause === undefined ? {} : { cause }) });
}

/**
 * The file's trimmed content; undefined when there is none. Any other failure to read it (EACCES,
 * EISDIR, …) names the file, the data folder and CLIPAG_DATA_DIR: a bare `EACCES … open` names neither.
 */
async function readSecretFile(path: string, dataDir: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw dataFolderError(
      `cannot read the signing secret ${path} (${code ?? (error as Error).message}): the data folder ${dataDir} (CLIPAG_DATA_DIR, or serve --data) must be readable and writable by this user; fix its permissions or use another data folder`,
      error,
    );
  }
}

/** A new 0600 file next to `path` holding `secret`, fsynced: the rename or link that follows publishes it whole. */
async function stageSecret(path: string, secret: string): Promise<string> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(tmp, 'wx', PRIVATE_FILE_MODE);
  try {
    await handle.writeFile(secret);
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
  await handle.close();
  return tmp;
}

/**
 * Local mode only: when no signing secret is configured, make one once and keep it in the data
 * folder (mode 0600) so signed links stay valid across restarts. Never used in AWS mode, where
 * S3 presigns with the task's IAM credentials.
 *
 * The file appears whole or not at all: the secret is written to a temporary file (fsynced) that is
 * then hard-linked to `signing-secret`. A link, unlike a rename, fails when the name exists, so of two
 * processes starting at once exactly one publishes its secret and the other reads and uses that one.
 * (The earlier `writeFile(…, 'wx')` created the file before writing it: a crash or a full disk in
 * between left it empty, and every later start failed.)
 *
 * What is found in the file:
 *  - 32 characters or more: the secret.
 *  - nothing (empty, or only white space): it is replaced. It cannot have signed anything: the blob
 *    store refuses a key under 32 characters, so no link was ever signed with it. The replacement
 *    happens under a lock and only while the file is still empty, so processes starting together
 *    still agree on one secret.
 *  - anything else (1 to 31 characters, or NUL bytes, the mark of a write torn by a crash): refused,
 *    naming the file and saying to delete it. It is not silently replaced: it may be an operator's
 *    own secret, or a damaged one that links still in circulation were signed with, and replacing it
 *    quietly would hide that. Deleting it only invalidates signed links (they last about an hour).
 */
export async function loadOrCreateSigningSecret(dataDir: string): Promise<string> {
  const path = join(dataDir, 'signing-secret');
  const usable = (existing: string): string => {
    if (existing.length >= MIN_SECRET_CHARS && !existing.includes('\0')) return existing;
    throw dataFolderError(
      `the signing secret ${path} is damaged (${existing.includes('\0') ? 'it holds NUL bytes' : `${existing.length} characters, at least ${MIN_SECRET_CHARS} needed`}); delete it and start again (a new one is made; links signed with the old one stop working)`,
    );
  };
  for (let attempt = 0; ; attempt++) {
    const existing = await readSecretFile(path, dataDir);
    if (existing === '') {
      const replaced = await replaceEmpty(path, dataDir, usable);
      if (replaced !== undefined) return replaced;
      continue;
    }
    if (existing !== undefined) return usable(existing);
    await mkdirPrivate(dataDir);
    const secret = randomBytes(32).toString('hex');
    const tmp = await stageSecret(path, secret);
    try {
      await link(tmp, path);
      await syncDir(dataDir);
      return secret;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Another process published first: use theirs (read again above). It may have gone again (an
      // operator deleting it just then): a few tries, then the error.
      if (code === 'EEXIST' && attempt < 3) continue;
      // A filesystem without hard links: a rename of the whole file, which does not refuse an existing
      // name; the re-read above makes such a race unlikely, and the file is never torn.
      if (code === 'EPERM' || code === 'ENOTSUP' || code === 'ENOSYS' || code === 'EOPNOTSUPP') {
        await rename(tmp, path);
        await syncDir(dataDir);
        return (await readSecretFile(path, dataDir)) ?? secret;
      }
      throw error;
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }
}

/** An empty secret file, replaced whole under a lock, and only if it is still empty once the lock is held. */
async function replaceEmpty(path: string, dataDir: string, usable: (existing: string) => string): Promise<string | undefined> {
  return withDirLock(`${path}.lock`, async () => {
    const now = await readSecretFile(path, dataDir);
    // Gone meanwhile (deleted by hand): made afresh by the exclusive create, outside the lock.
    if (now === undefined) return undefined;
    if (now !== '') return usable(now);
    const secret = randomBytes(32).toString('hex');
    const tmp = await stageSecret(path, secret);
    try {
      await rename(tmp, path);
    } catch (error) {
      await unlink(tmp).catch(() => undefined);
      throw error;
    }
    await syncDir(dataDir);
    return secret;
  });
}
