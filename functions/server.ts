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
  close(): Promise<void>;
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
): Promise<RunningServer> {
  return new Promise((resolvePromise, reject) => {
    // @hono/node-server's serve(), with the errorHandler it does not pass through.
    const listener = getRequestListener(app.fetch as (request: Request) => Response | Promise<Response>, { hostname, errorHandler: requestErrorResponse });
    const server = createServer(listener);
    server.once('error', reject);
    server.listen(port, hostname, () => {
      const info = server.address() as AddressInfo;
      const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
      resolvePromise({
        server,
        url: `http://${host}:${info.port}`,
        close: () =>
          new Promise<void>((done, fail) => {
            server.close((error) => (error ? fail(error) : done()));
            server.closeAllConnections();
          }),
      });
    });
    // Requests Node refuses before the app sees them (headers over its 16 KB limit, malformed HTTP):
    // answered with the API's one error envelope and a request id too, not Node's bare status line.
    server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      if (!socket.writable || error.code === 'ECONNRESET') return socket.destroy();
      const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
      const { requestId, body } = tooLarge
        ? outsideAppError('headers_too_large', 'the request headers are over the 16 KB limit')
        : outsideAppError('bad_request', 'the request is not valid HTTP');
      const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`);
    });
  });
}
