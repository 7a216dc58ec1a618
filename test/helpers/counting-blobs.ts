import type { BlobStore } from '../../shared/ports.ts';

/** `blobs`, counting its calls by method (`calls.list`, `calls.get`, …) and keeping each call's first argument (a key or prefix). */
export function countingBlobs(blobs: BlobStore): { blobs: BlobStore; calls: Record<string, number>; args: Array<[method: string, first: unknown]> } {
  const calls: Record<string, number> = {};
  const args: Array<[string, unknown]> = [];
  const counted = new Proxy(blobs, {
    get(target, prop) {
      const value = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      return (...rest: unknown[]) => {
        calls[String(prop)] = (calls[String(prop)] ?? 0) + 1;
        args.push([String(prop), rest[0]]);
        return (value as (...a: unknown[]) => unknown).apply(target, rest);
      };
    },
  }) as BlobStore;
  return { blobs: counted, calls, args };
}
