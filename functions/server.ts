import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import { newId } from '../shared/ids.ts';

export { localAdapters, localDeps, localLayout, type LocalAdapters } from './deps/local.ts';

export interface RunningServer {
  server: ServerType;
  /** e.g. http://127.0.0.1:8787 (the port actually bound, also when 0 was asked for). */
  url: string;
  close(): Promise<void>;
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
    const server = serve({ fetch: app.fetch as (request: Request) => Response | Promise<Response>, port, hostname }, (info: AddressInfo) => {
      const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
      resolvePromise({
        server,
        url: `http://${host}:${info.port}`,
        close: () =>
          new Promise<void>((done, fail) => {
            server.close((error) => (error ? fail(error) : done()));
            (server as { closeAllConnections?: () => void }).closeAllConnections?.();
          }),
      });
    });
    server.once('error', reject);
    // Requests Node refuses before the app sees them (headers over its 16 KB limit, malformed HTTP):
    // answered with the API's one error envelope and a request id too, not Node's bare status line.
    server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      if (!socket.writable || error.code === 'ECONNRESET') return socket.destroy();
      const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
      const requestId = `req_${newId()}`;
      const body = JSON.stringify({
        error: {
          code: tooLarge ? 'headers_too_large' : 'bad_request',
          message: tooLarge ? 'the request headers are over the 16 KB limit' : 'the request is not valid HTTP',
          param: null,
          request_id: requestId,
        },
      });
      const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`);
    });
  });
}
