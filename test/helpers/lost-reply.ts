// A blob store whose conditional write (replaceIfMatch, or putIfAbsent) lands but answers as if it had
// not, once, for the writes `which` picks: what S3 does when a PUT's reply is lost and the SDK sends it
// again (the resend fails its If-Match / If-None-Match). S3 cannot be made to lose a reply here, so
// this wraps the real local store.
import { PreconditionFailedError } from '../../shared/errors.ts';
import type { BlobStore } from '../../shared/ports.ts';

export function lostReplyOnce(
  blobs: BlobStore,
  which: (key: string, body: Uint8Array) => boolean = () => true,
  method: 'replaceIfMatch' | 'putIfAbsent' = 'replaceIfMatch',
): { blobs: BlobStore; lost: () => number } {
  let lost = 0;
  const wrapped = new Proxy(blobs, {
    get(target, prop, receiver) {
      if (prop !== method) return Reflect.get(target, prop, receiver);
      return async (...args: [string, Uint8Array, ...unknown[]]) => {
        const written = await (target[method] as (...a: unknown[]) => Promise<{ etag: string }>).apply(target, args);
        if (lost === 0 && which(args[0], args[1])) {
          lost++;
          throw new PreconditionFailedError('At least one of the pre-conditions you specified did not hold');
        }
        return written;
      };
    },
  });
  return { blobs: wrapped, lost: () => lost };
}
