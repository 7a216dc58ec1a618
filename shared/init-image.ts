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
