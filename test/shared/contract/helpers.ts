import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
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
