import { z } from '@hono/zod-openapi';

/** Owner ids and job ids become path segments of blob keys, so their charset is closed:
 * no `/`, no `.`, nothing that could climb out of `jobs/<owner>/`. */
export const OWNER_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export const RESOURCE_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * A model name: lower-case letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most
 * 64 characters. The one definition: request schemas, config, the model store, the registry and the
 * models folder scan all use it (a name is also a folder and a blob-key segment, hence the charset).
 */
export const MODEL_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export const OwnerId = z.string().regex(OWNER_ID_PATTERN).openapi({ example: 'acct_acme' });
export const ResourceId = z.string().regex(RESOURCE_ID_PATTERN);
export const Timestamp = z.iso.datetime({ offset: false }).openapi({ example: '2025-01-01T00:00:00.000Z' });
