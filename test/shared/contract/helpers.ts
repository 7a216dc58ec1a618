import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OpenAPIHono } from '@hono/zod-openapi';
import { mountLocalBlobRoutes } from '../../../functions/local-blobs.ts';
import { onError } from '../../../functions/middleware/errors.ts';
import { requestId } from '../../../functions/middleware/request-id.ts';
import { startApiServer } from '../../../functions/server.ts';
import type { AppEnv } from '../../../functions/types.ts';
import type { BlobStore } from '../../../shared/ports.ts';

export async function makeTempDir(label: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `clipag-${label}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export function listen(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port));
  });
}

export function close(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.closeAllConnections?.();
    server.close(() => resolve());
  });
}

/**
 * The local server's real `/blobs/*` routes (`mountLocalBlobRoutes`, with the app's request id and
 * error envelope) on a real port, over whichever store `getStore()` returns, so the contract suite
 * downloads and uploads signed URLs over HTTP exactly as local mode serves them.
 */
export async function startSignedBlobServer(
  secret: string,
  getStore: () => BlobStore,
): Promise<{ baseUrl: string; stop: () => Promise<void> }> {
  const delegating = new Proxy({} as BlobStore, {
    get: (_target, prop: keyof BlobStore) => (...args: unknown[]) => (getStore()[prop] as (...a: unknown[]) => unknown)(...args),
  });
  const app = new OpenAPIHono<AppEnv>();
  app.use('*', requestId());
  app.onError(onError(() => undefined));
  mountLocalBlobRoutes(app, delegating, secret);
  const server = await startApiServer(app, 0);
  return { baseUrl: server.url, stop: server.close };
}

export async function httpDownload(url: string): Promise<{ status: number; body: Uint8Array }> {
  const res = await fetch(url);
  return { status: res.status, body: new Uint8Array(await res.arrayBuffer()) };
}

export async function httpUpload(url: string, headers: Record<string, string>, body: Uint8Array): Promise<{ status: number }> {
  const res = await fetch(url, { method: 'PUT', headers, body });
  await res.arrayBuffer();
  return { status: res.status };
}

/** A TCP server on 127.0.0.1 and how to stop it, its connections included. */
export interface TcpStandIn {
  endpoint: string;
  close(): Promise<void>;
}

async function tcpStandIn(onConnection: (socket: Socket, track: (s: Socket) => void) => void): Promise<TcpStandIn> {
  const sockets = new Set<Socket>();
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined); // a stand-in's socket torn down by the client is expected
    socket.on('close', () => sockets.delete(socket));
  };
  const server = createTcpServer((socket) => {
    track(socket);
    onConnection(socket, track);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A server that accepts connections, reads what comes, and never answers: a hung S3 or SQS endpoint. */
export function silentServer(): Promise<TcpStandIn> {
  return tcpStandIn((socket) => socket.resume());
}

/**
 * A TCP proxy to `target` whose answers reach the client `chunkBytes` every `everyMs` (a slow link),
 * and, past `stopAfterBytes`, not at all while the connection stays open (a transfer that stalls).
 */
export function slowProxy(target: string, options: { chunkBytes: number; everyMs: number; stopAfterBytes?: number }): Promise<TcpStandIn> {
  const { hostname, port } = new URL(target);
  return tcpStandIn((client, track) => {
    const upstream = connect(Number(port), hostname);
    track(upstream);
    client.pipe(upstream);
    const waiting: Buffer[] = [];
    let forwarded = 0;
    upstream.on('data', (data: Buffer) => waiting.push(data));
    const timer = setInterval(() => {
      let budget = Math.min(options.chunkBytes, (options.stopAfterBytes ?? Infinity) - forwarded);
      while (budget > 0 && waiting.length > 0) {
        const head = waiting[0]!;
        const part = head.subarray(0, budget);
        client.write(part);
        forwarded += part.length;
        budget -= part.length;
        if (part.length === head.length) waiting.shift();
        else waiting[0] = head.subarray(part.length);
      }
    }, options.everyMs);
    client.on('close', () => {
      clearInterval(timer);
      upstream.destroy();
    });
  });
}
