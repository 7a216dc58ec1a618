// The file formats a generation's images are stored in (ADR 0041, 0043): one module, read by the API (the
// request's rules, the view's content_type), the worker (the key and type it stores) and the engine
// (the encoder's quality bounds). No imports: the engine reads it too.

/** What a request may ask for; PNG when it names none. */
export const OUTPUT_FORMATS = ['png', 'jpeg', 'webp'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** The formats whose images are lossy, and so take a quality (a PNG is lossless). */
export const LOSSY_OUTPUT_FORMATS = ['jpeg', 'webp'] as const satisfies readonly OutputFormat[];
export type LossyOutputFormat = (typeof LOSSY_OUTPUT_FORMATS)[number];
export const isLossyOutputFormat = (format: string | undefined): format is LossyOutputFormat => (LOSSY_OUTPUT_FORMATS as readonly (string | undefined)[]).includes(format);

/** The JPEG and WebP qualities a request may ask for (libjpeg's and libwebp's scales: 100 the finest). */
export const MIN_OUTPUT_QUALITY = 1;
export const MAX_OUTPUT_QUALITY = 100;
/**
 * A JPEG's quality when the request names none: where a generated image (fine detail throughout) loses
 * little (a mean error of 1–5 levels of 255) at 4:4:4, and is a tenth to a third of its PNG's size on the
 * embedded model's images (ADR 0041).
 */
export const DEFAULT_JPEG_QUALITY = 90;
/**
 * A WebP's quality when the request names none: at 90 a lossy WebP of the embedded model's images is
 * about a fifth of its PNG's size (ADR 0043).
 */
export const DEFAULT_WEBP_QUALITY = 90;
/** The quality a lossy format gets when the request names none. */
export const defaultOutputQuality = (format: LossyOutputFormat): number => (format === 'jpeg' ? DEFAULT_JPEG_QUALITY : DEFAULT_WEBP_QUALITY);

const FILE = {
  png: { extension: 'png', contentType: 'image/png' },
  jpeg: { extension: 'jpg', contentType: 'image/jpeg' },
  webp: { extension: 'webp', contentType: 'image/webp' },
} as const satisfies Record<OutputFormat, { extension: string; contentType: string }>;

/** The stored file's name ending (no dot) and its Content-Type. */
export const outputFile = <F extends OutputFormat>(format: F): (typeof FILE)[F] => FILE[format];

/** The format a stored image's key says (`<index>.jpg`: JPEG, `<index>.webp`: WebP); PNG otherwise, as every key before JPEG outputs. */
export const outputFormatOfKey = (key: string): OutputFormat => (/\.jpg$/i.test(key) ? 'jpeg' : /\.webp$/i.test(key) ? 'webp' : 'png');

/** The format a Content-Type names, if one of ours. */
export const outputFormatOfContentType = (contentType: string | undefined): OutputFormat | undefined =>
  OUTPUT_FORMATS.find((f) => FILE[f].contentType === contentType);

/** An image's name within its job's prefix: `<index>.png`, `<index>.jpg` or `<index>.webp`; the index when `name` is one. */
export const OUTPUT_IMAGE_NAME = /^(\d+)\.(?:png|jpg|webp)$/;
