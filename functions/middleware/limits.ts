import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { PayloadTooLargeError } from '../../shared/errors.ts';
import { LIMIT_RULE } from '../schemas.ts';
import type { AppEnv } from '../types.ts';
import { HttpError, errorResponse } from './errors.ts';

/** Node's error for a request whose client went away before its body ended ("aborted", ECONNRESET). */
const isAbortedBody = (error: unknown): boolean =>
  error instanceof Error && ((error as NodeJS.ErrnoException).code === 'ECONNRESET' || error.message === 'aborted');

/**
 * Refuses bodies over `maxBytes` (declared or streamed) with a 413 envelope. A body with no length is
 * read whole here, before the route: a client that goes away before its end is a 400 (logged as a
 * refusal, as any cut-off body the route reads), not a 500 `request failed` line anyone could write.
 */
export function bodySizeLimit(maxBytes: number): MiddlewareHandler<AppEnv> {
  const limit = bodyLimit({
    maxSize: maxBytes,
    onError: (c) =>
      errorResponse(
        c as never,
        new PayloadTooLargeError(
          // A generation's body is small but for an inline init image (ADR 0042): say where a large one goes.
          `request body exceeds ${maxBytes} bytes${/^\/v1\/(generations|estimates)$/.test(c.req.path) ? '; if it holds an inline init image (a data: URI), send that image by POST /v1/uploads (then "init": "upload:<id>") or as an https URL' : ''}`,
        ),
      ),
  });
  return async function bodySizeLimitMiddleware(c, next) {
    let reachedRoute = false;
    try {
      return await limit(c, async () => {
        reachedRoute = true;
        await next();
      });
    } catch (error) {
      if (!reachedRoute && isAbortedBody(error)) throw new HttpError(400, 'invalid_json', 'the request body ended before it was whole (the connection closed)');
      throw error;
    }
  };
}

/**
 * The whole header, parameters included, as the route's body validator (@hono/zod-openapi) accepts
 * it: a header this lets through but the validator refused would get the validator's own 415,
 * without the `param` the envelope names.
 */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

const JSON_CONTENT_TYPE = /^application\/(?:[a-z.-]+\+)?json(?:;\s*[a-zA-Z0-9-]+=[^;]+)*$/i;

/**
 * Bodies of `method` (POST by default; PUT on /v1/spend-limit) must be JSON: 415 envelope otherwise
 * (also when the header is missing). Only the method that takes a body on the path: any other one
 * there is the router's 405, whatever it carries.
 */
export function requireJson(method: 'POST' | 'PUT' = 'POST'): MiddlewareHandler<AppEnv> {
  return async function requireJsonMiddleware(c, next) {
    if (c.req.method === method) {
      const contentType = c.req.header('Content-Type') ?? '';
      if (!JSON_CONTENT_TYPE.test(contentType)) {
        // Said with what came: "application/json ; charset=utf-8" and "application/json;" look right and are not read as JSON here.
        const came = contentType === '' ? 'none was sent' : `got ${JSON.stringify(contentType.slice(0, 80))}`;
        throw new HttpError(415, 'unsupported_media_type', `Content-Type must be application/json, optionally with parameters written as "; name=value" (no space before ";", no empty parameter, no ";" inside a value); ${came}`, 'Content-Type');
      }
      // A body declared in another charset would be read as UTF-8 anyway: say so, rather than read "é" in Latin-1 as a broken byte.
      const charsets = [...contentType.matchAll(/;\s*charset=("?)([^";]*)\1/gi)];
      if (charsets.length > 1) throw new HttpError(415, 'unsupported_media_type', 'Content-Type names charset more than once: name it once (utf-8)', 'Content-Type');
      const charset = charsets[0]?.[2];
      if (charset !== undefined && !/^utf-?8$/i.test(charset.trim())) {
        throw new HttpError(415, 'unsupported_media_type', `JSON must be UTF-8 (RFC 8259); the body is declared as charset=${charset.slice(0, 40)}`, 'Content-Type');
      }
      // A coded body (gzip, br, …) is not decoded here: reading it as JSON would answer "not valid UTF-8",
      // and one declared but sent plain would be taken as it came. RFC 9110 §15.5.16: 415, naming the coding.
      const codings = (c.req.header('Content-Encoding') ?? '')
        .split(',')
        .map((coding) => coding.trim().toLowerCase())
        .filter((coding) => coding !== '' && coding !== 'identity');
      if (codings.length > 0) {
        throw new HttpError(415, 'unsupported_media_type', `Content-Encoding ${codings[0]!.slice(0, 40)} is not supported: send the body uncompressed (identity)`, 'Content-Encoding');
      }
      // JSON is UTF-8 (RFC 8259). A decoder would replace broken bytes with U+FFFD, and a prompt would
      // run on text its caller never wrote. (Hono keeps the bytes: the route still reads the body.)
      try {
        UTF8.decode(await c.req.arrayBuffer());
      } catch {
        throw new HttpError(400, 'invalid_json', 'the body is not valid UTF-8 (JSON must be)');
      }
    }
    await next();
  };
}

/** Each query parameter given at most once: `?month=a&month=b` read as an array got zod's "expected string, received array". */
function refuseRepeatedQuery(c: Parameters<MiddlewareHandler<AppEnv>>[0]): void {
  for (const [name, values] of Object.entries(c.req.queries())) {
    if (values.length > 1) throw new HttpError(400, 'validation_error', `${name} is given ${values.length} times; give it once`, name);
  }
}

/** A GET's query as a caller means it: each parameter once (for the GETs under /v1 that read a query). */
export function singleQueryParams(): MiddlewareHandler<AppEnv> {
  return async function singleQueryParamsMiddleware(c, next) {
    if (c.req.method === 'GET' || c.req.method === 'HEAD') refuseRepeatedQuery(c);
    await next();
  };
}

/**
 * The list's query as a caller means it: each parameter once (`?limit=2&limit=5` read as an array was
 * refused as "not a whole number"), and `limit` in plain decimal digits (zod's coercion read "0x3",
 * "3e0" and " 3" as 3). The schema's own checks follow.
 */
export function strictListQuery(): MiddlewareHandler<AppEnv> {
  return async function strictListQueryMiddleware(c, next) {
    if (c.req.method === 'GET' || c.req.method === 'HEAD') {
      refuseRepeatedQuery(c);
      const limit = c.req.query('limit');
      if (limit !== undefined && !/^[0-9]+$/.test(limit)) throw new HttpError(400, 'validation_error', LIMIT_RULE, 'limit');
    }
    await next();
  };
}

/**
 * An operation as the query check knows it: its method, its path template (`{id}` for a segment), and
 * the query parameters it declares; a deep-object one (`deepObject`) is sent as `name[KEY]=VALUE`.
 */
export interface QueryDeclaration {
  method: string;
  path: string;
  query: readonly string[];
  deepObject?: readonly string[];
}

/**
 * Every operation it guards refuses a query parameter it does not declare: 400 validation_error naming
 * it. Ignored, a misspelt filter (`?statu=failed`, `?mnth=2020-01`) answered plausible wrong data: every
 * generation, this month's usage. An operation without a query refuses any, so that none is taken for
 * meaning something. The declarations are read at the first request, once every route is registered;
 * a path no operation has is left to the router (404, 405).
 */
export function declaredQueryOnly(declarations: () => Iterable<QueryDeclaration>): MiddlewareHandler<AppEnv> {
  let operations: Array<{ method: string; pattern: RegExp; label: string; query: ReadonlySet<string>; deep: ReadonlySet<string> }> | undefined;
  return async function declaredQueryOnlyMiddleware(c, next) {
    operations ??= [...declarations()].map((d) => ({
      method: d.method.toUpperCase(),
      pattern: new RegExp(`^${d.path.split(/\{[^}]+\}/).map(escapeRegExp).join('[^/]+')}$`),
      label: `${d.method.toUpperCase()} ${d.path}`,
      // A deep object's bare name is taken too: its schema refuses it, saying how it is sent.
      query: new Set(d.query),
      deep: new Set(d.deepObject ?? []),
    }));
    // A query Hono cannot decode reaches the routes as its literal text (`caf%E9` matched nothing and
    // answered an empty page): refused here, naming the part.
    const malformed = malformedQueryPart(c.req.url);
    if (malformed !== undefined) {
      throw new HttpError(400, 'validation_error', `query part "${malformed.slice(0, 60)}" is not percent-encoded UTF-8 (encode each byte of the UTF-8 text as %XX; a lone surrogate has no UTF-8)`, malformed.split('=')[0]!.slice(0, 60));
    }
    // HEAD is answered by the GET route.
    const method = c.req.method === 'HEAD' ? 'GET' : c.req.method;
    const operation = operations.find((o) => o.method === method && o.pattern.test(c.req.path));
    if (operation) {
      const declared = (name: string) => operation.query.has(name) || operation.deep.has(/^([^[\]]+)\[[^[\]]*\]$/.exec(name)?.[1] ?? '');
      const unknown = Object.keys(c.req.queries()).find((name) => !declared(name));
      if (unknown !== undefined) {
        const names = [...operation.query].map((name) => (operation.deep.has(name) ? `${name}[KEY]` : name));
        const takes = names.length > 0 ? `takes ${names.join(', ')}` : 'takes no query parameters';
        throw new HttpError(400, 'validation_error', `unknown query parameter "${unknown.slice(0, 40)}": ${operation.label} ${takes}`, unknown);
      }
    }
    await next();
  };
}

/** The first `name=value` part of the URL's query whose percent-encoding does not decode as UTF-8, if any. */
export function malformedQueryPart(url: string): string | undefined {
  const q = url.indexOf('?');
  if (q < 0) return undefined;
  const hash = url.indexOf('#', q);
  for (const part of url.slice(q + 1, hash < 0 ? undefined : hash).split('&')) {
    if (!part.includes('%')) continue;
    try {
      decodeURIComponent(part.replace(/\+/g, ' '));
    } catch {
      return part;
    }
  }
  return undefined;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
