import type { Context, MiddlewareHandler } from 'hono';
import { matchedRoutes } from 'hono/route';
import type { AppEnv, AppLogEntry } from '../types.ts';
import { failureDetail } from './errors.ts';
import { clientRequestId } from './request-id.ts';

/** The `route` of a request no route answers (a 404, or a 405 on a known path). */
export const UNMATCHED_ROUTE = '(unmatched)';

/**
 * One log line per request, written once its answer is made: a thrown error's envelope is made by
 * onError where it was thrown, inside this middleware's `next()`, so 4xx and 5xx answers are here too.
 * It joins the request's id (and the caller's own X-Request-Id) to the account, the key and the
 * generation the route made or touched. `info` and msg `request` below 500; a 5xx is the `error` line
 * `request failed` with the failure's detail, the line the API's error-line alarm and runbook key on
 * (cdk/lib/queue-alarms.ts: its `msg` and numeric `status`). Never a header's value (the key), a body
 * (prompts, the webhook URL) or the raw path (ids, cursors): the route's pattern instead.
 */
export function requestLog(log: (entry: AppLogEntry) => void): MiddlewareHandler<AppEnv> {
  return async function requestLogMiddleware(c, next) {
    c.set('requestLinePending', true);
    await next();
    c.set('requestLinePending', false);
    const status = c.res.status;
    const failed = status >= 500;
    const receivedMono = c.get('receivedMono');
    log({
      level: failed ? 'error' : 'info',
      msg: failed ? 'request failed' : 'request',
      request_id: c.get('requestId'),
      client_request_id: clientRequestId(c),
      owner: c.get('owner'),
      api_key_id: c.get('apiKeyId'),
      method: c.req.method,
      route: routePattern(c),
      status,
      ...(status >= 400 ? { error_code: c.get('errorCode') } : {}),
      job_id: c.get('jobId'),
      // Monotonic: a wall clock stepped back mid-request made it negative.
      duration_ms: receivedMono === undefined ? undefined : Math.round(performance.now() - receivedMono),
      ...(failed ? failureDetail(c.error) : {}),
    });
  };
}

/**
 * The pattern of the route that answers the request (`/v1/generations/:id`): the last matched handler
 * registered for a method, the `app.use` middleware (method ALL) aside. Matched before any handler
 * ran, so a request refused on the way in (a 401) names its route too.
 */
function routePattern(c: Context<AppEnv>): string {
  const routes = matchedRoutes(c);
  for (let i = routes.length - 1; i >= 0; i--) {
    if (routes[i]!.method !== 'ALL') return routes[i]!.path;
  }
  return UNMATCHED_ROUTE;
}
