import { z } from '@hono/zod-openapi';

import { MODEL_NAME_PATTERN, OWNER_ID_PATTERN, RESOURCE_ID_PATTERN } from '../names.ts';

export { MODEL_NAME_PATTERN, OWNER_ID_PATTERN, RESOURCE_ID_PATTERN };

export const OwnerId = z.string().regex(OWNER_ID_PATTERN).openapi({ example: 'acct_acme' });
export const ResourceId = z.string().regex(RESOURCE_ID_PATTERN);
export const Timestamp = z.iso.datetime({ offset: false }).openapi({ example: '2025-01-01T00:00:00.000Z' });
