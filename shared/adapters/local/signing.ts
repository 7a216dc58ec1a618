import { createHmac, timingSafeEqual } from 'node:crypto';
import { assertValidKey } from '../../keys.ts';

/**
 * Local stand-in for S3 presigned URLs: `<baseUrl>/blobs/<key>?expires=<unix s>&sig=<hex>`
 * (PUT links add `method=PUT&max=<bytes>&ct=<content type>`, `len=<bytes>` when the grant is for
 * an exact size, as S3 signs a promised Content-Length, and `once=1` when it only creates), signed with HMAC-SHA256 over
 * every parameter that grants something, so none can be changed without breaking the signature.
 */

export interface LocalSignedGrant {
  method: 'GET' | 'PUT';
  key: string;
  expiresAtSec: number;
  maxBytes?: number;
  /** The only body size the grant accepts (S3 signs a promised Content-Length the same way). */
  exactBytes?: number;
  contentType?: string;
  /** The PUT only creates the object (SignedPutOptions.createOnly): the client sends `If-None-Match: *`. */
  createOnly?: boolean;
}

export type LocalSignatureCheck =
  | ({ ok: true } & LocalSignedGrant)
  | { ok: false; reason: 'malformed' | 'bad_signature' | 'expired' | 'wrong_method' };

function stringToSign(grant: LocalSignedGrant): string {
  // A JSON array: no field can run into the next (a content type holding "\n" and a made-up length,
  // say), whatever characters the query carries.
  // A create-only grant adds its mark at the end, so every other link signs as it did before it.
  return JSON.stringify([
    'clipag-local-v2', grant.method, grant.key, grant.expiresAtSec, grant.maxBytes ?? null, grant.contentType ?? null, grant.exactBytes ?? null,
    ...(grant.createOnly ? ['create-only'] : []),
  ]);
}

function sign(secret: string, grant: LocalSignedGrant): string {
  return createHmac('sha256', secret).update(stringToSign(grant)).digest('hex');
}

export function encodeKeyPath(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

export function buildLocalSignedUrl(baseUrl: string, secret: string, grant: LocalSignedGrant): string {
  const url = new URL(`${baseUrl.replace(/\/+$/, '')}/blobs/${encodeKeyPath(grant.key)}`);
  url.searchParams.set('expires', String(grant.expiresAtSec));
  if (grant.method === 'PUT') {
    url.searchParams.set('method', 'PUT');
    if (grant.maxBytes !== undefined) url.searchParams.set('max', String(grant.maxBytes));
    if (grant.exactBytes !== undefined) url.searchParams.set('len', String(grant.exactBytes));
    if (grant.contentType !== undefined) url.searchParams.set('ct', grant.contentType);
    if (grant.createOnly) url.searchParams.set('once', '1');
  }
  url.searchParams.set('sig', sign(secret, grant));
  return url.toString();
}

/**
 * Checks a signed local blob URL as the local server receives it. `url` may be absolute or just
 * the path and query (`/blobs/a/b.png?expires=..&sig=..`). `method` is the HTTP method used.
 */
export function verifyLocalSignature(
  secret: string,
  method: string,
  url: string | URL,
  nowMs: number = Date.now(),
): LocalSignatureCheck {
  let parsed: URL;
  try {
    parsed = typeof url === 'string' ? new URL(url, 'http://local.invalid') : url;
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  // The first `/blobs/`: an owner or job named "blobs" further on is part of the key.
  const match = /^(?:.*?)\/blobs\/(.+)$/.exec(parsed.pathname);
  const q = parsed.searchParams;
  const sig = q.get('sig');
  const expires = q.get('expires');
  if (!match || !sig || !expires || !/^\d{1,12}$/.test(expires) || !/^[0-9a-f]{64}$/.test(sig)) {
    return { ok: false, reason: 'malformed' };
  }
  let key: string;
  try {
    key = match[1].split('/').map(decodeURIComponent).join('/');
    assertValidKey(key);
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  const grantedMethod = q.get('method') === 'PUT' ? 'PUT' : 'GET';
  const max = q.get('max');
  if (max !== null && !/^\d{1,15}$/.test(max)) return { ok: false, reason: 'malformed' };
  const len = q.get('len');
  if (len !== null && !/^\d{1,15}$/.test(len)) return { ok: false, reason: 'malformed' };
  const ct = q.get('ct');
  if (ct !== null && (ct.length > 200 || /[\x00-\x1f\x7f]/.test(ct))) return { ok: false, reason: 'malformed' };
  const once = q.get('once');
  if (once !== null && once !== '1') return { ok: false, reason: 'malformed' };
  const grant: LocalSignedGrant = {
    method: grantedMethod,
    key,
    expiresAtSec: Number(expires),
    ...(grantedMethod === 'PUT' && max !== null ? { maxBytes: Number(max) } : {}),
    ...(grantedMethod === 'PUT' && len !== null ? { exactBytes: Number(len) } : {}),
    ...(grantedMethod === 'PUT' && ct !== null ? { contentType: ct } : {}),
    ...(grantedMethod === 'PUT' && once !== null ? { createOnly: true } : {}),
  };
  const expected = Buffer.from(sign(secret, grant), 'hex');
  if (!timingSafeEqual(expected, Buffer.from(sig, 'hex'))) return { ok: false, reason: 'bad_signature' };
  if (nowMs >= grant.expiresAtSec * 1000) return { ok: false, reason: 'expired' };
  const requested = method.toUpperCase() === 'HEAD' ? 'GET' : method.toUpperCase();
  if (requested !== grantedMethod) return { ok: false, reason: 'wrong_method' };
  return { ok: true, ...grant };
}
