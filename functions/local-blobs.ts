// Local mode's stand-in for S3 presigned URLs: GET and PUT on /blobs/<key>?expires=..&sig=..,
// HMAC-checked with the local signing secret (shared/adapters/local/signing.ts). Only the embedded
// local server mounts this; in AWS the links point at S3 itself.
import { Hono } from 'hono';
import { verifyLocalSignature } from '../shared/adapters/local/signing.ts';
import type { BlobStore } from '../shared/ports.ts';
import { newId } from '../shared/ids.ts';

function envelope(status: number, code: string, message: string, requestId: string) {
  return new Response(JSON.stringify({ error: { code, message, param: null, request_id: requestId } }), {
    status,
    headers: { 'content-type': 'application/json', 'x-request-id': requestId },
  });
}

export function localBlobRoutes(blobs: BlobStore, signingSecret: string): Hono {
  const app = new Hono();
  app.get('/blobs/*', async function serveSignedBlob(c) {
    const rid = c.req.header('x-request-id') ?? `req_${newId()}`;
    const check = verifyLocalSignature(signingSecret, 'GET', c.req.url);
    if (!check.ok) return envelope(403, 'forbidden', `signed link rejected: ${check.reason}`, rid);
    const obj = await blobs.get(check.key);
    if (!obj) return envelope(404, 'not_found', 'no such object', rid);
    return new Response(obj.body, {
      status: 200,
      headers: { 'content-type': obj.contentType ?? 'application/octet-stream', 'content-length': String(obj.body.length), etag: `"${obj.etag}"`, 'x-request-id': rid },
    });
  });
  app.put('/blobs/*', async function storeSignedUpload(c) {
    const rid = c.req.header('x-request-id') ?? `req_${newId()}`;
    const check = verifyLocalSignature(signingSecret, 'PUT', c.req.url);
    if (!check.ok) return envelope(403, 'forbidden', `signed link rejected: ${check.reason}`, rid);
    if (check.contentType && c.req.header('content-type') !== check.contentType) {
      return envelope(400, 'invalid_request', `Content-Type must be ${check.contentType}`, rid);
    }
    const declared = Number(c.req.header('content-length') ?? NaN);
    if (check.maxBytes !== undefined && declared > check.maxBytes) return envelope(413, 'payload_too_large', `upload is limited to ${check.maxBytes} bytes`, rid);
    const body = new Uint8Array(await c.req.arrayBuffer());
    if (check.maxBytes !== undefined && body.length > check.maxBytes) return envelope(413, 'payload_too_large', `upload is limited to ${check.maxBytes} bytes`, rid);
    const { etag } = await blobs.put(check.key, body, { contentType: check.contentType ?? c.req.header('content-type') ?? 'application/octet-stream' });
    return new Response(null, { status: 200, headers: { etag: `"${etag}"`, 'x-request-id': rid } });
  });
  return app;
}
