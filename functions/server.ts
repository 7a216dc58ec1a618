import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';

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
  });
}
