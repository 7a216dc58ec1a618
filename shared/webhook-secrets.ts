// Per-account webhook signing secrets (ADR 0028). One small document per owner,
// `webhook-secrets/<owner>.json`, written by the API (POST and DELETE /v1/webhook-secret) and read by
// whoever delivers a webhook (the worker's first attempt, the queued-job sweep's retries) at each
// attempt. It is stored as is, not hashed: it has to sign. A receiver holds it before any job exists,
// so an event that arrives before its POST has answered still verifies (the race of ADR 0013).
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { readDoc, updateDocument } from './documents.ts';
import { CorruptDocumentError } from './errors.ts';
import { webhookSecretKey } from './keys.ts';
import type { BlobStore } from './ports.ts';

/** How long a replaced account secret still signs, so that receivers can move to the new one. */
export const PREVIOUS_SECRET_GRACE_MS = 24 * 3600_000;
/**
 * Replaced secrets still inside their grace kept at most: each one is one more signature on every
 * event. Past this, the oldest stops signing before its 24 h are up (ADR 0028).
 */
export const MAX_PREVIOUS_SECRETS = 3;

/** `whsec_` and the base64 of 24 bytes: the one format of per-job and per-account secrets (Standard Webhooks). */
export const WEBHOOK_SECRET_PATTERN = /^whsec_[A-Za-z0-9+/]{32}$/;

/** A fresh signing secret: `whsec_` and 24 random bytes in base64 (Standard Webhooks). */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(24).toString('base64')}`;
}

const Secret = z.string().regex(WEBHOOK_SECRET_PATTERN);
const Instant = z.iso.datetime({ offset: false });

/**
 * How long a POST's Idempotency-Key answers the secret it made again (ADR 0028), while that secret is
 * still the current one: a retry after a lost answer comes within seconds; a longer window would only
 * show the secret again to whoever kept the key.
 */
export const SECRET_REPLAY_WINDOW_MS = 24 * 3600_000;

const AccountWebhookSecretDoc = z.object({
  secret: Secret,
  created_at: Instant,
  /** Secrets this one replaced, newest first, each signing until its `expires_at`. */
  previous: z.array(z.object({ secret: Secret, created_at: Instant, expires_at: Instant })).max(MAX_PREVIOUS_SECRETS),
  /**
   * The POST that made `secret`, when it came with an Idempotency-Key: its key's sha256 (never the
   * key) and whether it created the secret (201) or rotated it (200), so that a retry with the key is
   * answered as that POST was. Kept for the current secret only: a rotation drops it with the secret.
   * Optional, and stripped by a reader that predates it: such a reader reads and rotates as before.
   */
  idempotency: z.object({ key_sha256: z.string().regex(/^[0-9a-f]{64}$/), created: z.boolean() }).optional(),
});
export type AccountWebhookSecret = z.output<typeof AccountWebhookSecretDoc>;

/** The owner's secret document; null when it has none. Throws CorruptDocumentError for one that does not read. */
export async function readAccountWebhookSecret(blobs: BlobStore, owner: string): Promise<AccountWebhookSecret | null> {
  const key = webhookSecretKey(owner);
  const found = await blobs.get(key);
  return found ? readDoc(AccountWebhookSecretDoc, found.body, key) : null;
}

/** Replaced secrets whose grace has not run out at `now`. */
function stillSigning(previous: AccountWebhookSecret['previous'], now: Date): AccountWebhookSecret['previous'] {
  return previous.filter((p) => Date.parse(p.expires_at) > now.getTime());
}

/**
 * Creates the owner's secret, or rotates it: a new secret signs from now on, and the one it replaces
 * keeps signing for PREVIOUS_SECRET_GRACE_MS (as do earlier ones still inside their own). A
 * document that does not read is replaced, as if there were none: its secret never signed (see
 * accountSigningSecrets), and this is how its owner mends it. Conditional on what was read, so of
 * two rotations at once neither secret is lost: the later one keeps the other as a previous one.
 *
 * With `idempotencyKeySha256` (a POST's Idempotency-Key, hashed): when the current secret was made
 * with that key within SECRET_REPLAY_WINDOW_MS, nothing is written and it is answered again
 * (`replayed`, with the `created` it was answered with). The check and the write are one conditional
 * write, so of two requests with one key at once exactly one rotates and the other replays its
 * secret. A key whose secret is no longer the current one (rotated since by another request, deleted,
 * or past the window) is not remembered: the request rotates as a new one, so a retry is never handed
 * a secret that has stopped signing or will within a day (ADR 0028). A write of this call's that
 * landed but whose reply was lost is found on the re-read and answered as made, key or no key, rather
 * than rotating twice.
 */
export async function rotateAccountWebhookSecret(
  blobs: BlobStore,
  owner: string,
  now: Date,
  options: { idempotencyKeySha256?: string } = {},
): Promise<{ created: boolean; replayed: boolean; doc: AccountWebhookSecret }> {
  const key = webhookSecretKey(owner);
  const keySha256 = options.idempotencyKeySha256;
  let result: { created: boolean; replayed: boolean; doc: AccountWebhookSecret } | undefined;
  // The secrets this call wrote, and whether each was a create: one found on a re-read is this call's
  // own write whose reply was lost (S3 resends the PUT, and the resend fails its own condition).
  const written = new Map<string, boolean>();
  await updateDocument(blobs, key, (bytes) => {
    let current: AccountWebhookSecret | null = null;
    if (bytes !== null) {
      try {
        current = readDoc(AccountWebhookSecretDoc, bytes, key);
      } catch (error) {
        if (!(error instanceof CorruptDocumentError)) throw error;
      }
    }
    if (current && written.has(current.secret)) {
      result = { created: written.get(current.secret)!, replayed: false, doc: current };
      return null;
    }
    if (keySha256 !== undefined && current?.idempotency?.key_sha256 === keySha256 && now.getTime() - Date.parse(current.created_at) < SECRET_REPLAY_WINDOW_MS) {
      result = { created: current.idempotency.created, replayed: true, doc: current };
      return null;
    }
    const replaced = current ? [{ secret: current.secret, created_at: current.created_at, expires_at: new Date(now.getTime() + PREVIOUS_SECRET_GRACE_MS).toISOString() }] : [];
    const doc: AccountWebhookSecret = {
      secret: newWebhookSecret(),
      created_at: now.toISOString(),
      previous: [...replaced, ...stillSigning(current?.previous ?? [], now)].slice(0, MAX_PREVIOUS_SECRETS),
      ...(keySha256 !== undefined ? { idempotency: { key_sha256: keySha256, created: current === null } } : {}),
    };
    result = { created: current === null, replayed: false, doc };
    written.set(doc.secret, current === null);
    return new TextEncoder().encode(JSON.stringify(doc));
  });
  return result!;
}

/** Removes the owner's secret and every replaced one at once; true when there was one. */
export async function deleteAccountWebhookSecret(blobs: BlobStore, owner: string): Promise<boolean> {
  const key = webhookSecretKey(owner);
  const existed = (await blobs.head(key)) !== null;
  await blobs.delete(key);
  return existed;
}

/**
 * The account secrets that sign an event of `owner`'s at `now`: the current one, then the replaced
 * ones still inside their grace, newest first. None when the owner has no secret. Read at each
 * attempt, so a rotation or a delete applies to the next one, retries included. Throws what the
 * store throws, and CorruptDocumentError for a document that does not read.
 */
export async function accountSigningSecrets(blobs: BlobStore, owner: string, now: Date): Promise<string[]> {
  const doc = await readAccountWebhookSecret(blobs, owner);
  return doc ? [doc.secret, ...stillSigning(doc.previous, now).map((p) => p.secret)] : [];
}
