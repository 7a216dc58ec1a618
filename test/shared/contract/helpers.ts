import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verifyLocalSignature } from '../../../shared/adapters/local/signing.ts';
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
 * A minimal `/blobs/*` server doing what the local API server does with signed links: verify the
 * signature, then stream the object from the blob store (GET) or store the body (PUT, up to the
 * signed `max`). It lets the contract suite download signed URLs over real HTTP on both adapters.
 */
export async function startSignedBlobServer(
  secret: string,
  getStore: () => BlobStore,
): Promise<{ baseUrl: string; stop: () => Promise<void> }> {
  const server = createServer(async (req, res) => {
    const check = verifyLocalSignature(secret, req.method ?? 'GET', req.url ?? '/');
    if (!check.ok) {
      res.writeHead(403).end(check.reason);
      return;
    }
    const store = getStore();
    if (check.method === 'GET') {
      const object = await store.get(check.key);
      if (!object) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': object.contentType ?? 'application/octet-stream', etag: object.etag });
      res.end(Buffer.from(object.body));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (check.maxBytes !== undefined && size > check.maxBytes) return void res.writeHead(413).end();
      chunks.push(chunk as Buffer);
    }
    if (check.contentType && req.headers['content-type'] !== check.contentType) return void res.writeHead(403).end('content type');
    await store.put(check.key, Buffer.concat(chunks), { contentType: check.contentType });
    res.writeHead(200).end();
  });
  const port = await listen(server);
  return { baseUrl: `http://127.0.0.1:${port}`, stop: () => close(server) };
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
