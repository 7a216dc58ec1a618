import type { Context, MiddlewareHandler } from 'hono';
import { newId } from '../../shared/ids.ts';
import type { AppEnv } from '../types.ts';

export const REQUEST_ID_HEADER = 'X-Request-Id';

/** A caller's own X-Request-Id is logged only when it is short and plain (it ends up in log lines). */
const SANE_CLIENT_ID = /^[A-Za-z0-9._:-]{8,128}$/;
/** API Gateway's request ids are short base64 (e.g. `JKJaXmPLvHcESHA=`); anything else is not taken from the event. */
const GATEWAY_ID = /^[A-Za-z0-9+/=._:-]{1,128}$/;

/**
 * Gives the request its id and echoes it on every response: in Lambda, API Gateway's own id for the
 * request (what its access log records as `$context.requestId`, so an error's request_id finds the
 * caller's IP and the gateway's status), else a new one. Never the caller's X-Request-Id: a caller
 * could then make its failures carry another request's id. The caller's id is only logged beside it
 * (`clientRequestId`).
 */
export function requestId(): MiddlewareHandler<AppEnv> {
  return async function requestIdMiddleware(c, next) {
    c.set('receivedMono', performance.now());
    const id = gatewayRequestId(c.env) ?? `req_${newId()}`;
    c.set('requestId', id);
    c.header(REQUEST_ID_HEADER, id);
    await next();
    // Responses made by onError/notFound or by a sub-app still get it.
    if (!c.res.headers.has(REQUEST_ID_HEADER)) c.res.headers.set(REQUEST_ID_HEADER, id);
  };
}

/**
 * API Gateway's id for this request: hono/aws-lambda's `handle` (functions/lambda.ts) passes the
 * event's `requestContext` in the app's env. Undefined elsewhere (the local server's env has none).
 */
function gatewayRequestId(env: unknown): string | undefined {
  const id = (env as { requestContext?: { requestId?: unknown } } | undefined)?.requestContext?.requestId;
  return typeof id === 'string' && GATEWAY_ID.test(id) ? id : undefined;
}

/** The caller's own X-Request-Id when sane, for log lines (`client_request_id`); never the request's id. */
export function clientRequestId(c: Context<AppEnv>): string | undefined {
  const incoming = c.req.header(REQUEST_ID_HEADER);
  return incoming !== undefined && SANE_CLIENT_ID.test(incoming) ? incoming : undefined;
}
