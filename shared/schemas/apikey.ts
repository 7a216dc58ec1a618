import { createHash } from 'node:crypto';
import { z } from '@hono/zod-openapi';
import { OwnerId, ResourceId, Timestamp } from './common.ts';

const apiKeyFields = {
  id: ResourceId,
  name: z.string().trim().min(1).max(100),
  owner: OwnerId,
  key_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  created_at: Timestamp,
  revoked_at: Timestamp.nullable(),
};

/**
 * An API key as stored: only the sha256 of the secret, never the secret itself. Strict: this is the
 * record a key is verified by, and a field this version does not know (an expiry, a scope, an address
 * range a newer clipag added) may restrict the key; ignoring it would grant more than was meant.
 */
export const ApiKeyRecord = z.object(apiKeyFields).strict().openapi('ApiKeyRecord');
export type ApiKeyRecord = z.output<typeof ApiKeyRecord>;

/**
 * An API key record as the operator's listing and revocation read it: fields a newer clipag added are
 * kept (a revocation writes them back), so an older `clipag keys revoke` can still kill a leaked key.
 * Never the way a key is verified (ApiKeyRecord is).
 */
export const StoredApiKeyRecord = z.object(apiKeyFields).loose();
export type StoredApiKeyRecord = z.output<typeof StoredApiKeyRecord>;

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
