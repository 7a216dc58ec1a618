import { setMaxListeners } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener, RequestError, type ServerType } from '@hono/node-server';
import { newId } from '../shared/ids.ts';
import { jsonLineLog } from './log.ts';

export { localAdapters, localDeps, localLayout, type LocalAdapters } from './deps/local.ts';

export interface RunningServer {
  server: ServerType;
  /** e.g. http://127.0.0.1:8787 (the port actually bound, also when 0 was asked for). */
  url: string;
  /**
   * Stops at once taking new connections, and ends the requests in flight: each request's signal
   * aborts, so a held `Prefer: wait` answers now with the generation as it stands; the others finish
   * as usual. Connections are closed as they fall idle; what is still open after `graceMs` (default
   * 5 s: a slow upload, a handler that ignores its signal) is cut. Calling it again waits for the same close.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** Node's limits on a request's arrival (node:http's headersTimeout, requestTimeout, and how often it checks them); Node's defaults where absent. */
export interface ServerTimeouts {
  headersMs?: number;
  requestMs?: number;
  checkEveryMs?: number;
}

/** Methods the Request constructor refuses (node-server stands in for TRACE): such a request is passed on as it came. */
const NOT_REMAKEABLE = new Set(['CONNECT', 'TRACE', 'TRACK']);

/**
 * The request, with a signal that aborts when the client goes (as the request's own does) and also
 * when the server starts closing: the app's only shutdown hook, so that functions/ needs none of its own.
 */
function followingShutdown(request: Request, shutdown: AbortSignal): { request: Request; done(): void } {
  if (NOT_REMAKEABLE.has(request.method.toUpperCase())) return { request, done: () => undefined };
  const controller = new AbortController();
  const fromClient = () => controller.abort(request.signal.reason);
  const fromShutdown = () => controller.abort(shutdown.reason);
  if (request.signal.aborted) fromClient();
  else request.signal.addEventListener('abort', fromClient, { once: true });
  if (shutdown.aborted) fromShutdown();
  else shutdown.addEventListener('abort', fromShutdown, { once: true });
  return {
    request: new Request(request, { signal: controller.signal }),
    done: () => {
      request.signal.removeEventListener('abort', fromClient);
      shutdown.removeEventListener('abort', fromShutdown);
    },
  };
}

/** The API's one error envelope, for what is answered before the app sees a request: its body and request id. */
function outsideAppError(code: string, message: string): { requestId: string; body: string } {
  const requestId = `req_${newId()}`;
  return { requestId, body: JSON.stringify({ error: { code, message, param: null, request_id: requestId } }) };
}

/**
 * What @hono/node-server answers when it cannot make a Request of what Node parsed (a Host header
 * such as "a b" or "x:99999", a backslash in the path, `OPTIONS *`, a malformed absolute-form
 * target): by default a bare 400 with no body and no request id. The envelope instead.
 */
function requestErrorResponse(error: unknown): Response {
  const bad = error instanceof RequestError;
  const { requestId, body } = bad
    ? outsideAppError('bad_request', `the request target or Host header is not valid (${error.message.toLowerCase()})`)
    : outsideAppError('internal_error', 'internal error');
  if (!bad) {
    // The app answers its own errors (onError): this is a promise from fetch that rejected all the same.
    jsonLineLog({ level: 'error', msg: 'request failed outside the app', request_id: requestId, error: error instanceof Error ? `${error.name}: ${error.message}` : String(error) });
  }
  return new Response(body, { status: bad ? 400 : 500, headers: { 'Content-Type': 'application/json', 'X-Request-Id': requestId } });
}

/**
 * Serves a fetch-style app (createApp's, or a parent app that also mounts the local `/blobs/*`
 * route) on Node. The local composition root builds the deps (`localDeps(config)`) and calls this.
 */
export function startApiServer(
  app: { fetch: (request: Request, ...rest: never[]) => Response | Promise<Response> },
  port: number,
  hostname = '127.0.0.1',
  timeouts: ServerTimeouts = {},
): Promise<RunningServer> {
  return new Promise((resolvePromise, reject) => {
    const shutdown = new AbortController();
    // Every request in flight listens to it (followingShutdown) and stops listening when it ends: many
    // at once are not a leak, and Node's warning past 10 said they were.
    setMaxListeners(0, shutdown.signal);
    const fetch = async (request: Request, env: unknown): Promise<Response> => {
      const followed = followingShutdown(request, shutdown.signal);
      try {
        return await (app.fetch as (request: Request, env: unknown) => Response | Promise<Response>)(followed.request, env);
      } finally {
        followed.done();
      }
    };
    // @hono/node-server's serve(), with the errorHandler it does not pass through.
    // The hostname stands in for a missing Host header (below): an IPv6 address in brackets, as a URL has it.
    const listener = getRequestListener(fetch, { hostname: hostname.includes(':') ? `[${hostname}]` : hostname, errorHandler: requestErrorResponse });
    const server = createServer(
      {
        // An HTTP/1.1 request without a Host header reaches the app, as an HTTP/1.0 one always did:
        // node-server puts the listening hostname in its URL. Node would otherwise answer it itself, a
        // bare 400 with no envelope and no request id (no clientError, no listener). Nothing is read
        // from the Host: signed blob links are built on the configured base URL and signed over path
        // and query only, and no check trusts it; a client can send any Host it likes anyway.
        requireHostHeader: false,
        ...(timeouts.headersMs !== undefined ? { headersTimeout: timeouts.headersMs } : {}),
        ...(timeouts.requestMs !== undefined ? { requestTimeout: timeouts.requestMs } : {}),
        ...(timeouts.checkEveryMs !== undefined ? { connectionsCheckingInterval: timeouts.checkEveryMs } : {}),
      },
      listener,
    );
    let closing: Promise<void> | undefined;
    server.once('error', reject);
    server.listen(port, hostname, () => {
      const info = server.address() as AddressInfo;
      const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
      resolvePromise({
        server,
        url: `http://${host}:${info.port}`,
        close: ({ graceMs = 5_000 } = {}) =>
          (closing ??= new Promise<void>((done, fail) => {
            // No new connections; the callback runs once every connection has closed.
            server.close((error) => {
              clearInterval(idle);
              clearTimeout(cut);
              if (error) fail(error);
              else done();
            });
            shutdown.abort(new Error('the server is shutting down'));
            // Keep-alive connections close as soon as they hold no request (server.close() closes
            // only those idle at the time it is called).
            const idle = setInterval(() => server.closeIdleConnections(), 25);
            const cut = setTimeout(() => server.closeAllConnections(), graceMs);
          })),
      });
    });
    // Requests Node refuses before the app sees them (headers over its 16 KB limit, malformed HTTP):
    // answered with the API's one error envelope and a request id too, not Node's bare status line.
    server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      if (!socket.writable || error.code === 'ECONNRESET') return socket.destroy();
      const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
      // Node's headersTimeout / requestTimeout: a client that stopped sending mid-request, not bad HTTP.
      const tooSlow = error.code === 'ERR_HTTP_REQUEST_TIMEOUT';
      const { requestId, body } = tooLarge
        ? outsideAppError('headers_too_large', 'the request headers are over the 16 KB limit')
        : tooSlow
          ? outsideAppError('request_timeout', 'the request did not arrive whole in time (its headers, or its body, stopped coming); send it again')
          : outsideAppError('bad_request', 'the request is not valid HTTP');
      const status = tooLarge ? '431 Request Header Fields Too Large' : tooSlow ? '408 Request Timeout' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`);
    });
  });
}
