import type { MiddlewareHandler } from 'hono';
import type { AppEnv } from '../types.ts';

/**
 * HEAD answers as GET without a body, Content-Length included. Hono answers a HEAD by running the GET
 * route and dropping its body, and the answer the app builds has no Content-Length (the Node adapter
 * adds one to a GET from the body it writes; a HEAD has none to count), so the length is counted
 * here, from the body the GET route made, before Hono drops it. An answer that already says its
 * length (a stored image under /blobs) is left as it is.
 */
export function headContentLength(): MiddlewareHandler<AppEnv> {
  return async function headContentLengthMiddleware(c, next) {
    await next();
    if (c.req.method !== 'HEAD' || c.res.body === null || c.res.headers.has('Content-Length')) return;
    const bytes = await c.res.arrayBuffer();
    const headers = new Headers(c.res.headers);
    headers.set('Content-Length', String(bytes.byteLength));
    c.res = new Response(null, { status: c.res.status, statusText: c.res.statusText, headers });
  };
}
