// The check an init image gets before it is sent or queued, by its own signature: a JPEG's segment walk
// (shared/jpeg.ts), or a PNG's whole-file check (shared/png-check.ts). The API runs it on an upload a
// generation names; the CLI runs it on a file before it spends an upload on it.

import { isJpeg, readJpegStructure } from './jpeg.ts';
import { checkPngFile, checkPngFileSync } from './png-check.ts';

export type InitImageType = 'image/png' | 'image/jpeg';
export type InitImageCheck = { ok: true; contentType: InitImageType } | { ok: false; reason: string };

/** The upload's content type for these bytes: a JPEG's, or else a PNG's (whose check says what else it is). */
export function initImageContentType(bytes: Uint8Array): InitImageType {
  return isJpeg(bytes) ? 'image/jpeg' : 'image/png';
}

/** Whether the bytes can be an init image, and of which type; the reason in words when not. */
export async function checkInitImage(bytes: Uint8Array, opts: { maxPixels?: number } = {}): Promise<InitImageCheck> {
  if (isJpeg(bytes)) return jpegCheck(bytes, opts);
  const png = await checkPngFile(bytes, opts);
  return png.ok ? { ok: true, contentType: 'image/png' } : { ok: false, reason: png.reason };
}

/** checkInitImage, on this thread at once (the PNG's inflate is synchronous). */
export function checkInitImageSync(bytes: Uint8Array, opts: { maxPixels?: number } = {}): InitImageCheck {
  if (isJpeg(bytes)) return jpegCheck(bytes, opts);
  const png = checkPngFileSync(bytes, opts);
  return png.ok ? { ok: true, contentType: 'image/png' } : { ok: false, reason: png.reason };
}

function jpegCheck(bytes: Uint8Array, opts: { maxPixels?: number }): InitImageCheck {
  const r = readJpegStructure(bytes, opts);
  return r.ok ? { ok: true, contentType: 'image/jpeg' } : { ok: false, reason: r.reason };
}

/** The media types a data: URI may declare; the bytes' own signature decides which it is. */
const DATA_URI_IMAGE_TYPES = new Set(['image/png', 'image/x-png', 'image/jpeg', 'image/jpg', 'image/pjpeg']);
/** Standard or URL-safe base64, padded or not (a length of 4k + 1 is never base64). */
const BASE64_BODY = /^[A-Za-z0-9+/\-_]*={0,2}$/;

/** Spaces are dropped as line wrapping is, but a space is also what a form decoder makes of "+": said where the data then fails. */
const SPACES_DROPPED = ' (spaces in its data were dropped: if a form decoder turned its "+" into spaces, send it percent-encoded (%2B) or as JSON)';

export type InitDataUri = { ok: true; bytes: Uint8Array; spacesDropped?: true } | { ok: false; reason: string };

/**
 * The bytes of `data:image/png;base64,…` (or image/jpeg), or the reason they cannot be had: another
 * media type, no `;base64`, characters outside base64, or more than `maxBytes` decoded. Whether the
 * bytes are an image the worker can read is checkInitImage's to say. Nothing of the URI's data is
 * quoted back (it may be 60 KB of base64).
 */
export function decodeInitDataUri(raw: string, maxBytes: number): InitDataUri {
  const comma = raw.indexOf(',');
  if (comma < 0) return { ok: false, reason: 'a data: URI needs a comma before its data (data:image/png;base64,…)' };
  const params = raw.slice('data:'.length, comma).split(';').map((p) => p.trim().toLowerCase());
  const mediaType = params[0] ?? '';
  if (!DATA_URI_IMAGE_TYPES.has(mediaType)) {
    const said = mediaType === '' ? 'no media type (which means text/plain)' : `media type "${mediaType.slice(0, 60)}"`;
    return { ok: false, reason: `a data: URI with ${said}; an init image is data:image/png;base64,… or data:image/jpeg;base64,…` };
  }
  if (params[params.length - 1] !== 'base64') return { ok: false, reason: `a data: URI's image must be base64 (data:${mediaType};base64,…)` };
  // RFC 2397's data is URL-encoded where it must be (encodeURIComponent writes "+" as %2B, "/" as %2F,
  // "=" as %3D): each %XX is read as the byte it encodes (a byte outside base64, or a "%" that encodes
  // none, fails the base64 check below). Whitespace is allowed inside (RFC 2045 wraps base64 lines), and dropped.
  const data = raw.slice(comma + 1).replace(/%([0-9A-Fa-f]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  const body = data.replace(/\s+/g, '');
  if (body === '') return { ok: false, reason: 'the data: URI has no data after its comma' };
  if (!BASE64_BODY.test(body) || body.replace(/=+$/, '').length % 4 === 1) {
    return { ok: false, reason: `the data: URI's data is not base64 (A-Z, a-z, 0-9, "+" and "/", or "-" and "_", then at most two "=")${/ /.test(data) ? SPACES_DROPPED : ''}` };
  }
  const decodedBytes = Math.floor((body.replace(/=+$/, '').length * 3) / 4);
  if (decodedBytes > maxBytes) return { ok: false, reason: `the data: URI's image is ${decodedBytes} bytes, over the ${maxBytes}-byte limit of an upload` };
  return { ok: true, bytes: new Uint8Array(Buffer.from(body, 'base64')), ...(/ /.test(data) ? { spacesDropped: true as const } : {}) };
}

export type InitDataImage = { ok: true; bytes: Uint8Array; contentType: InitImageType } | { ok: false; reason: string };

const dataImageCheck = (decoded: InitDataUri, check: (bytes: Uint8Array) => InitImageCheck): InitDataImage => {
  if (!decoded.ok) return decoded;
  const image = check(decoded.bytes);
  if (image.ok) return { ok: true, bytes: decoded.bytes, contentType: image.contentType };
  const spaces = decoded.spacesDropped ? SPACES_DROPPED : '';
  return { ok: false, reason: `the data: URI's image cannot be an init image (a PNG or a JPEG): ${image.reason}${spaces}` };
};

/** A data: URI init's image, decoded and checked as an upload is (the API's check; ADR 0042). */
export async function checkInitDataUri(raw: string, maxBytes: number): Promise<InitDataImage> {
  const decoded = decodeInitDataUri(raw, maxBytes);
  if (!decoded.ok) return decoded;
  const image = await checkInitImage(decoded.bytes);
  return dataImageCheck(decoded, () => image);
}

/** checkInitDataUri, on this thread at once: the CLI's check of a batch line or a --init before anything is sent. */
export function checkInitDataUriSync(raw: string, maxBytes: number): InitDataImage {
  return dataImageCheck(decodeInitDataUri(raw, maxBytes), (bytes) => checkInitImageSync(bytes));
}
