import { PayloadTooLargeError, ValidationError } from '../errors.ts';
import type { SignedPutOptions } from '../ports.ts';

/** S3 SigV4 presigned URLs live at most 7 days; both adapters hold to the same bound. */
export const MAX_SIGNED_EXPIRY_SEC = 7 * 24 * 3600;

export function checkExpiry(expiresSec: number): void {
  if (!Number.isInteger(expiresSec) || expiresSec < 1 || expiresSec > MAX_SIGNED_EXPIRY_SEC) {
    throw new ValidationError(`expiresSec must be an integer in 1..${MAX_SIGNED_EXPIRY_SEC}`, 'expiresSec');
  }
}

export function checkPutLimits(options: SignedPutOptions): void {
  if (!Number.isInteger(options.maxBytes) || options.maxBytes < 1) throw new ValidationError('maxBytes must be a positive integer', 'maxBytes');
  if (!/^[\w.+-]+\/[\w.+-]+$/.test(options.contentType)) throw new ValidationError('invalid content type', 'contentType');
  if (options.contentLength !== undefined) {
    if (!Number.isInteger(options.contentLength) || options.contentLength < 0) {
      throw new ValidationError('contentLength must be a non-negative integer', 'contentLength');
    }
    if (options.contentLength > options.maxBytes) {
      throw new PayloadTooLargeError(`upload of ${options.contentLength} bytes exceeds the ${options.maxBytes}-byte limit`, { param: 'contentLength' });
    }
  }
}
