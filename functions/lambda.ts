// The Lambda composition root: config parsed once at cold start, S3/SQS clients built once,
// the app built once. Everything else lives in createApp. `handle` passes the event's requestContext
// in the app's env: the request-id middleware takes API Gateway's request id from it.
import type { Hono } from 'hono';
import { handle } from 'hono/aws-lambda';
import { createApp } from './app.ts';
import { awsConfig, awsDeps } from './deps/aws.ts';

/**
 * hono/aws-lambda's `handle`, with the body of a GET or HEAD event dropped first, as local mode's
 * @hono/node-server drops it: `handle` would make a Request of it, which throws, and answer a bare
 * `400 text/plain` with no envelope and no X-Request-Id. An HTTP API passes such a body through.
 */
export function lambdaHandler(app: Hono<any, any, any>): ReturnType<typeof handle> {
  const serve = handle(app);
  return (event, context) => serve(isRead(event) && event.body ? { ...event, body: null } : event, context);
}

/** Whether the event is a GET or a HEAD: payload 2.0 names its method in requestContext.http, 1.0 (and an ALB) in httpMethod. */
function isRead(event: { requestContext?: unknown; httpMethod?: unknown }): boolean {
  const method = (event.requestContext as { http?: { method?: unknown } } | undefined)?.http?.method ?? event.httpMethod;
  return typeof method === 'string' && ['GET', 'HEAD'].includes(method.toUpperCase());
}

export const handler = lambdaHandler(createApp(awsDeps(awsConfig(process.env))));
