import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from '../types.ts';

/**
 * `Cache-Control: no-store`, `X-Content-Type-Options: nosniff` and `X-Frame-Options: DENY` on every API answer. No store: they carry signed links (bearer URLs for a caller's
 * images), a webhook's signing secret, and one caller's own jobs and usage, none of which a shared
 * cache or a browser's disk should keep. Errors too: a 404 for a job that is being created is not
 * an answer to keep either.
 */
export function noStore(): MiddlewareHandler<AppEnv> {
  return async function noStoreMiddleware(c, next) {
    await next();
    if (!c.res.headers.has('Cache-Control')) c.res.headers.set('Cache-Control', 'no-store');
    // Every answer is JSON (or empty): a browser sent here must not sniff a body into a page, and the
    // answers of this origin are never for framing.
    c.res.headers.set('X-Content-Type-Options', 'nosniff');
    c.res.headers.set('X-Frame-Options', 'DENY');
  };
}
