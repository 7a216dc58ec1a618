// The types of jpeg-js-decoder.cjs (jpeg-js 0.4.4's decode, as its index.d.ts has them for useTArray).
declare function decode(
  jpegData: Uint8Array,
  opts: {
    useTArray: true;
    colorTransform?: boolean;
    formatAsRGBA?: boolean;
    tolerantDecoding?: boolean;
    maxResolutionInMP?: number;
    maxMemoryUsageInMB?: number;
  },
): { width: number; height: number; data: Uint8Array; comments?: string[] };
export = decode;
