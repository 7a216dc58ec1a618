// The Lambda composition root: config parsed once at cold start, S3/SQS clients built once,
// the app built once. Everything else lives in createApp. `handle` passes the event's requestContext
// in the app's env: the request-id middleware takes API Gateway's request id from it.
import { Hono } from 'hono';
import { handle } from 'hono/aws-lambda';
import { createApp } from './app.ts';
import { awsConfig, awsDeps } from './deps/aws.ts';
import { errorResponse, HttpError } from './middleware/errors.ts';
import { REQUEST_ID_HEADER, requestId } from './middleware/request-id.ts';
import { jsonLineLog } from './log.ts';
import type { AppEnv } from './types.ts';

type LambdaHandler = ReturnType<typeof handle>;
type LambdaResult = Awaited<ReturnType<LambdaHandler>>;
/** The fields of an API Gateway event (payload 2.0, 1.0) or an ALB's that this file reads or rewrites. */
interface EventFields {
  httpMethod?: unknown;
  requestContext?: { http?: { method?: unknown } } & Record<string, unknown>;
  headers?: Record<string, string | undefined> | null;
  multiValueHeaders?: Record<string, string[] | undefined> | null;
  cookies?: unknown;
  body?: unknown;
}

/**
 * Methods the Request constructor refuses (as functions/server.ts's NOT_REMAKEABLE): `handle` cannot
 * make a Request of them. Local mode answers TRACE through the app (405 method_not_allowed with Allow
 * on a path the app serves, else 404), a GET standing in that reads as TRACE; Lambda answers all three so.
 */
const NOT_REMAKEABLE = new Set(['CONNECT', 'TRACE', 'TRACK']);

/** What hono/aws-lambda percent-encodes in a header value (its sanitizeHeaderValue): anything past ASCII. */
const NON_ASCII = /[^\x00-\x7f]/;
/**
 * An Idempotency-Key value the key's own rule (visible ASCII, IDEMPOTENCY_KEY_PATTERN) refuses and
 * that hono passes on unchanged: one DEL, put in place of a key past ASCII (see `asHonoReadsIt`).
 */
const REFUSED_KEY = '\x7f';

/**
 * hono/aws-lambda's `handle`, with what it gets wrong for this API put right, so that an event is
 * answered as local mode answers the same request, with the envelope and X-Request-Id:
 * - a GET's or HEAD's body dropped, as local mode's @hono/node-server drops it: `handle` would make a
 *   Request of it, which throws. An HTTP API passes such a body through.
 * - payload 2.0's `cookies` dropped: `handle` joins them into a Cookie header without the
 *   percent-encoding it gives every other header, so one past Latin-1 (`a=日本`) makes the Headers
 *   throw. The app reads no cookie (keys are bearer tokens), so none is passed on.
 * - a non-ASCII Idempotency-Key refused, as local mode refuses it (400 validation_error naming
 *   Idempotency-Key), where `handle` would percent-encode it into a key the rule accepts (`café` →
 *   `caf%C3%A9`) and store the job under that.
 * - TRACE, CONNECT and TRACK answered by the app (NOT_REMAKEABLE).
 * Whatever else `handle` still cannot make a Request of, it answers itself (a bare `400 Invalid
 * request`, or 500) without the app: that answer has no X-Request-Id, and is replaced by the app's
 * 400 bad_request envelope, with the request id the app would have given it (`refusedOutsideApp`).
 */
export function lambdaHandler(app: Hono<any, any, any>): LambdaHandler {
  const serve = handle(app);
  return (async (event: Parameters<LambdaHandler>[0], context: Parameters<LambdaHandler>[1]) => {
    const fields = event as unknown as EventFields;
    const method = methodOf(fields)?.toUpperCase();
    const readable = asHonoReadsIt(fields, method) as unknown as typeof event;
    const result = method !== undefined && NOT_REMAKEABLE.has(method) ? await handle(standingIn(app, method))(readable, context) : await serve(readable, context);
    return hasRequestId(result) ? result : refusedOutsideApp(fields, result);
  }) as LambdaHandler;
}

/** The event's method: payload 2.0 names it in requestContext.http, 1.0 (and an ALB) in httpMethod. */
function methodOf(event: EventFields): string | undefined {
  const method = event.requestContext?.http?.method ?? event.httpMethod;
  return typeof method === 'string' ? method : undefined;
}

/** The event as `handle` can make a Request of it and as local mode would read it (see lambdaHandler). */
function asHonoReadsIt(event: EventFields, method: string | undefined): EventFields {
  let out: EventFields = event;
  const bodiless = method === 'GET' || method === 'HEAD' || (method !== undefined && NOT_REMAKEABLE.has(method));
  if (bodiless && out.body) out = { ...out, body: null };
  if (out.cookies !== undefined) {
    const { cookies: _dropped, ...rest } = out;
    out = rest;
  }
  if (method !== undefined && NOT_REMAKEABLE.has(method)) {
    // A GET stands in (as @hono/node-server's does for TRACE); standingIn makes the app read the method.
    out = out.requestContext?.http ? { ...out, requestContext: { ...out.requestContext, http: { ...out.requestContext.http, method: 'GET' } } } : { ...out, httpMethod: 'GET' };
  }
  const keyed = (name: string) => name.toLowerCase() === 'idempotency-key';
  if (out.headers && Object.entries(out.headers).some(([name, value]) => keyed(name) && typeof value === 'string' && NON_ASCII.test(value))) {
    out = { ...out, headers: Object.fromEntries(Object.entries(out.headers).map(([name, value]) => [name, keyed(name) && typeof value === 'string' && NON_ASCII.test(value) ? REFUSED_KEY : value])) };
  }
  if (out.multiValueHeaders && Object.entries(out.multiValueHeaders).some(([name, values]) => keyed(name) && Array.isArray(values) && values.some((v) => NON_ASCII.test(v)))) {
    out = {
      ...out,
      multiValueHeaders: Object.fromEntries(Object.entries(out.multiValueHeaders).map(([name, values]) => [name, keyed(name) && Array.isArray(values) ? values.map((v) => (NON_ASCII.test(v) ? REFUSED_KEY : v)) : values])),
    };
  }
  return out;
}

/** The app, given a Request whose method reads as `method` (one the Request constructor refuses) where the event had it. */
function standingIn(app: Hono<any, any, any>, method: string): Hono<any, any, any> {
  const fetch = (request: Request, env: unknown, executionContext: unknown) => {
    Object.defineProperty(request, 'method', { get: () => method });
    return (app.fetch as (request: Request, env: unknown, executionContext: unknown) => Response | Promise<Response>)(request, env, executionContext);
  };
  // `handle` uses nothing of the app but its fetch.
  return { fetch } as unknown as Hono<any, any, any>;
}

function hasRequestId(result: LambdaResult): boolean {
  const name = REQUEST_ID_HEADER.toLowerCase();
  return 'multiValueHeaders' in result && result.multiValueHeaders ? result.multiValueHeaders[name] !== undefined : (result as { headers?: Record<string, unknown> }).headers?.[name] !== undefined;
}

/**
 * The app's own answer to a request it never saw: its request-id middleware (API Gateway's id where
 * the event has one of its shape, else a new one) and its 400 bad_request envelope, made by the
 * app's error handler, in the result shape `handle` chose for the event.
 */
const outsideApp = new Hono<AppEnv>();
outsideApp.use('*', requestId());
outsideApp.all('*', (c) => errorResponse(c, new HttpError(400, 'bad_request', 'the request could not be read (its method, headers or body)')));

async function refusedOutsideApp(event: EventFields, result: LambdaResult): Promise<LambdaResult> {
  const response = await outsideApp.fetch(new Request('http://lambda.invalid/'), { requestContext: event.requestContext });
  const headers = Object.fromEntries(response.headers);
  const requestIdValue = response.headers.get(REQUEST_ID_HEADER);
  // `handle` logged its error (console.error), without the request's id: this line joins the two.
  jsonLineLog({ level: 'warn', msg: 'request refused before the app', request_id: requestIdValue ?? undefined, method: methodOf(event), status: response.status, adapter_status: result.statusCode });
  const shape = 'multiValueHeaders' in result && result.multiValueHeaders ? { multiValueHeaders: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, [v]])) } : { headers };
  return { statusCode: response.status, body: await response.text(), isBase64Encoded: false, ...shape } as LambdaResult;
}

export const handler = lambdaHandler(createApp(awsDeps(awsConfig(process.env))));
