// The local signed-link routes, mounted on the API app as `clipag serve` does: every failure is the
// ErrorEnvelope, and a signed PUT needs a Content-Length within the grant and a body of exactly that
// length (read with a cap, never buffered unbounded). From a security review: answers on the API's
// origin carried no nosniff, cache or sandbox headers, and a PUT signed for image/png stored any bytes.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mountLocalBlobRoutes } from '../../functions/local-blobs.ts';
import { PNG_SIGNATURE } from '../../shared/image-header.ts';
import { expectEnvelope, harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
  mountLocalBlobRoutes(h.app, h.blobs, 'x'.repeat(32));
});
afterEach(async () => {
  await h.close();
});

const pathOf = (url: string) => {
  const u = new URL(url);
  return `${u.pathname}${u.search}`;
};

async function grant(bytes: number): Promise<string> {
  const signed = await h.blobs.signedPutUrl('uploads/acct_alice/u1', { contentType: 'image/png', maxBytes: 1000, contentLength: bytes, expiresSec: 60 });
  return pathOf(signed.url);
}

/** `n` bytes (at least 8) that start as a PNG does: all the PUT looks at. */
function pngBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n).fill(3);
  bytes.set(PNG_SIGNATURE);
  return bytes;
}

function put(path: string, body: RequestInit['body'], headers: Record<string, string>) {
  return h.app.request(path, { method: 'PUT', body, headers: { 'content-type': 'image/png', ...headers }, ...(body instanceof ReadableStream ? { duplex: 'half' } : {}) } as RequestInit);
}

function stream(total: number): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= total) return controller.close();
      const n = Math.min(64, total - sent);
      sent += n;
      controller.enqueue(new Uint8Array(n).fill(1));
    },
  });
}

describe('signed PUT', () => {
  it('stores a body of exactly the granted length', async () => {
    const res = await put(await grant(10), pngBytes(10), { 'content-length': '10' });
    expect(res.status).toBe(200);
    expect((await h.blobs.get('uploads/acct_alice/u1'))?.size).toBe(10);
  });

  it('stores a body that comes in pieces of every size, past the first buffer, byte for byte (one buffer, grown as it comes)', async () => {
    const n = 200_000;
    const want = pngBytes(n).map((b, i) => (i < 8 ? b : (i * 31) % 251));
    const sizes = [8, 1, 70_000, 3, 1, 65_536, 1];
    let at = 0;
    let k = 0;
    const pieces = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (at >= n) return controller.close();
        const size = Math.min(sizes[k++ % sizes.length]!, n - at);
        controller.enqueue(want.slice(at, at + size));
        at += size;
      },
    });
    const signed = await h.blobs.signedPutUrl('uploads/acct_alice/u1', { contentType: 'image/png', maxBytes: n, contentLength: n, expiresSec: 60 });
    const res = await put(pathOf(signed.url), pieces, { 'content-length': String(n) });
    expect(res.status).toBe(200);
    expect(Buffer.from((await h.blobs.get('uploads/acct_alice/u1'))!.body).equals(Buffer.from(want))).toBe(true);
  });

  it('a link signed for image/png stores only bytes that start as a PNG: HTML or anything else → 400 (param "body"), nothing stored', async () => {
    const html = new TextEncoder().encode('<html><script>alert(document.cookie)</script></html>');
    const cases: Array<[string, Uint8Array]> = [
      ['html', html],
      ['seven bytes of the signature', pngBytes(10).map((b, i) => (i === 7 ? 0 : b))],
      ['zeros', new Uint8Array(10)],
    ];
    for (const [what, body] of cases) {
      const err = await expectEnvelope(await put(await grant(body.length), body, { 'content-length': String(body.length) }), 400, 'validation_error');
      expect([err.param, err.message], what).toEqual(['body', 'the body is not a PNG file (it does not start with the PNG signature); this upload URL is for image/png: convert the image to PNG or JPEG']);
      expect(await h.blobs.get('uploads/acct_alice/u1'), what).toBeNull();
    }
    // A JPEG sent to a PNG link is told which link it needs (ADR 0035).
    const jpeg = new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0, 0, 0, 0]);
    const wrongLink = await expectEnvelope(await put(await grant(jpeg.length), jpeg, { 'content-length': String(jpeg.length) }), 400, 'validation_error');
    expect(wrongLink.message).toBe('the body is not a PNG file (it does not start with the PNG signature); this upload URL is for image/png: for a JPEG, ask POST /v1/uploads for content_type image/jpeg');
    expect((await put(await grant(8), pngBytes(8), { 'content-length': '8' })).status).toBe(200); // the signature alone passes here; the generation checks the rest
  });

  it('a shorter body with a matching Content-Length → 400: the grant is for an exact size, as on S3', async () => {
    const err = await expectEnvelope(await put(await grant(10), new Uint8Array(5), { 'content-length': '5' }), 400, 'validation_error');
    expect(err.param).toBe('Content-Length');
    // Most often curl -d, which drops the file's line breaks (the new-user review): said so.
    expect(err.message).toBe('this upload URL is for exactly 10 bytes, but Content-Length is 5 (send the file as it is: curl --data-binary @FILE, not -d, which drops line breaks)');
    expect(await h.blobs.get('uploads/acct_alice/u1')).toBeNull();
  });

  it('without Content-Length → 411 envelope, nothing stored', async () => {
    const res = await put(await grant(10), stream(10), {});
    await expectEnvelope(res, 411, 'length_required');
    expect(await h.blobs.get('uploads/acct_alice/u1')).toBeNull();
  });

  it('Content-Length over the grant → 413; a body longer than the grant → 413 without reading it all', async () => {
    await expectEnvelope(await put(await grant(10), new Uint8Array(11), { 'content-length': '11' }), 413, 'payload_too_large');
    // Lies about its length: declares 10, streams far more. Reading stops past the grant.
    let pulled = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled++;
        controller.enqueue(new Uint8Array(64));
      },
    });
    await expectEnvelope(await put(await grant(10), endless, { 'content-length': '10' }), 413, 'payload_too_large');
    expect(pulled).toBeLessThan(10);
    expect(await h.blobs.get('uploads/acct_alice/u1')).toBeNull();
  });

  it('a client that goes away mid-upload gets a 400 upload_interrupted (its failure, not a server 500); nothing stored', async () => {
    let sent = 0;
    const broken = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ === 0) return controller.enqueue(new Uint8Array(4));
        controller.error(new Error('socket hang up'));
      },
    });
    await expectEnvelope(await put(await grant(10), broken, { 'content-length': '10' }), 400, 'upload_interrupted');
    expect(await h.blobs.get('uploads/acct_alice/u1')).toBeNull();
    expect(h.logs.filter((l) => (l as { level?: string }).level === 'error')).toEqual([]);
  });

  it('a body shorter than its Content-Length → 400; a malformed Content-Length → 400', async () => {
    await expectEnvelope(await put(await grant(10), stream(4), { 'content-length': '10' }), 400, 'validation_error');
    await expectEnvelope(await put(await grant(10), stream(4), { 'content-length': 'ten' }), 400, 'validation_error');
    expect(await h.blobs.get('uploads/acct_alice/u1')).toBeNull();
  });

  it('a bad signature, a wrong Content-Type, a store error and a wrong method are all envelopes', async () => {
    const path = await grant(10);
    await expectEnvelope(await put(path.replace(/sig=[0-9a-f]/, 'sig=g'), pngBytes(10), { 'content-length': '10' }), 403, 'forbidden');
    const wrongType = await expectEnvelope(await put(path, pngBytes(10), { 'content-length': '10', 'content-type': 'image/png, image/png' }), 400, 'validation_error');
    // What came is quoted: a merged header reads like the right value otherwise.
    expect(wrongType.message).toBe('Content-Type must be image/png; got "image/png, image/png"');
    await expectEnvelope(await h.app.request(path, { method: 'DELETE' }), 405, 'method_not_allowed');
    // A key used as a folder: the local blob store throws ValidationError inside the handler.
    await h.blobs.put('uploads/acct_alice/dir/x', new Uint8Array(1));
    const signed = await h.blobs.signedPutUrl('uploads/acct_alice/dir', { contentType: 'image/png', maxBytes: 10, contentLength: 8, expiresSec: 60 });
    const err = await expectEnvelope(await put(pathOf(signed.url), pngBytes(8), { 'content-length': '8' }), 400, 'validation_error');
    expect(err.message).toMatch(/key conflicts with an existing key used as a folder/);
  });
});

describe('signed GET', () => {
  it('missing object → 404 envelope; success carries the request id', async () => {
    const url = await h.blobs.signedGetUrl('outputs/acct_alice/none.png', 60);
    await expectEnvelope(await h.app.request(pathOf(url)), 404, 'not_found');
    await h.blobs.put('outputs/acct_alice/a.png', new Uint8Array([1, 2, 3]), { contentType: 'image/png' });
    const ok = await h.app.request(pathOf(await h.blobs.signedGetUrl('outputs/acct_alice/a.png', 60)));
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-request-id')).toMatch(/^req_/);
    expect(new Uint8Array(await ok.arrayBuffer())).toEqual(new Uint8Array([1, 2, 3]));
  });

  it('answers, images and errors alike, carry nosniff, no-store and a sandbox with nothing allowed; a PNG is inline under its name, anything else a download', async () => {
    const protective = { 'x-content-type-options': 'nosniff', 'cache-control': 'private, no-store', 'content-security-policy': "default-src 'none'; sandbox" };
    const headersOf = (res: Response, names: string[]) => Object.fromEntries(names.map((n) => [n, res.headers.get(n)]));
    const names = [...Object.keys(protective), 'content-type', 'content-disposition'];
    await h.blobs.put('outputs/acct_alice/j1/0.png', pngBytes(8), { contentType: 'image/png' });
    await h.blobs.put('outputs/acct_alice/j1/page', new TextEncoder().encode('<html></html>'), { contentType: 'text/html' });
    const png = await h.app.request(pathOf(await h.blobs.signedGetUrl('outputs/acct_alice/j1/0.png', 60)));
    expect([png.status, headersOf(png, names)]).toEqual([200, { ...protective, 'content-type': 'image/png', 'content-disposition': 'inline; filename="0.png"' }]);
    const page = await h.app.request(pathOf(await h.blobs.signedGetUrl('outputs/acct_alice/j1/page', 60)));
    expect([page.status, headersOf(page, names)]).toEqual([200, { ...protective, 'content-type': 'text/html', 'content-disposition': 'attachment; filename="page"' }]);
    const missing = await h.app.request(pathOf(await h.blobs.signedGetUrl('outputs/acct_alice/j1/none.png', 60)));
    expect(headersOf(missing, Object.keys(protective))).toEqual(protective);
    await expectEnvelope(missing, 404, 'not_found');
    const stored = await put(await grant(8), pngBytes(8), { 'content-length': '8' });
    expect([stored.status, headersOf(stored, Object.keys(protective))]).toEqual([200, protective]);
  });
});
