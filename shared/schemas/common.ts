import { z } from '@hono/zod-openapi';

import { MODEL_NAME_PATTERN, OWNER_ID_PATTERN, RESOURCE_ID_PATTERN, SORTABLE_ID_PATTERN } from '../names.ts';

export { MODEL_NAME_PATTERN, OWNER_ID_PATTERN, RESOURCE_ID_PATTERN };

export const OwnerId = z.string().regex(OWNER_ID_PATTERN).openapi({ example: 'acct_acme' });
export const ResourceId = z.string().regex(RESOURCE_ID_PATTERN);
/**
 * An API key's id: the 26-character sortable id between `ck_` and the next `_` of its secret. Never
 * a name like `constructor` or `__proto__`, so it is safe as a key of a plain object.
 */
export const ApiKeyId = z.string().regex(SORTABLE_ID_PATTERN, 'must be an API key id: the 26 characters between `ck_` and the next `_` of the key');
export const Timestamp = z.iso.datetime({ offset: false }).openapi({ example: '2025-01-01T00:00:00.000Z' });
