import type { MiddlewareHandler } from 'hono';
import { newId } from '../../shared/ids.ts';
import type { AppEnv } from '../types.ts';

/** Incoming ids are kept only when they are short and plain (they end up in logs and headers). */
const SANE_ID = /^[A-Za-z0-9._:-]{8,128}$/;
export const REQUEST_ID_HEADER = 'X-Request-Id';

/** Accepts a sane incoming X-Request-Id or makes one, and echoes it on every response. */
export function requestId(): MiddlewareHandler<AppEnv> {
  return async function requestIdMiddleware(c, next) {
    c.set('receivedAt', Date.now());
    const incoming = c.req.header(REQUEST_ID_HEADER);
    const id = incoming && SANE_ID.test(incoming) ? incoming : `req_${newId()}`;
    c.set('requestId', id);
    c.header(REQUEST_ID_HEADER, id);
    await next();
    // Responses made by onError/notFound or by a sub-app still get it.
    if (!c.res.headers.has(REQUEST_ID_HEADER)) c.res.headers.set(REQUEST_ID_HEADER, id);
  };
}
