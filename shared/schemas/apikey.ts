import { createHash } from 'node:crypto';
import { z } from '@hono/zod-openapi';
import { OwnerId, ResourceId, Timestamp } from './common.ts';

/** An API key as stored: only the sha256 of the secret, never the secret itself. */
export const ApiKeyRecord = z
  .object({
    id: ResourceId,
    name: z.string().trim().min(1).max(100),
    owner: OwnerId,
    key_sha256: z.string().regex(/^[0-9a-f]{64}$/),
    created_at: Timestamp,
    revoked_at: Timestamp.nullable(),
  })
  .strict()
  .openapi('ApiKeyRecord');
export type ApiKeyRecord = z.output<typeof ApiKeyRecord>;

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
