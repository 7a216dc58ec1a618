// The file formats a generation's images are stored in (ADR 0041): one module, read by the API (the
// request's rules, the view's content_type), the worker (the key and type it stores) and the engine
// (the encoder's quality bounds). No imports: the engine reads it too.

/** What a request may ask for; PNG when it names none. */
export const OUTPUT_FORMATS = ['png', 'jpeg'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** The JPEG qualities a request may ask for (libjpeg's scale: 100 the finest). */
export const MIN_OUTPUT_QUALITY = 1;
export const MAX_OUTPUT_QUALITY = 100;
/**
 * A JPEG's quality when the request names none: where a generated image (fine detail throughout) loses
 * little (a mean error of 1–5 levels of 255) at 4:4:4, and is a tenth to a third of its PNG's size on the
 * embedded model's images (ADR 0041).
 */
export const DEFAULT_JPEG_QUALITY = 90;

const FILE = {
  png: { extension: 'png', contentType: 'image/png' },
  jpeg: { extension: 'jpg', contentType: 'image/jpeg' },
} as const satisfies Record<OutputFormat, { extension: string; contentType: string }>;

/** The stored file's name ending (no dot) and its Content-Type. */
export const outputFile = (format: OutputFormat): { extension: 'png' | 'jpg'; contentType: 'image/png' | 'image/jpeg' } => FILE[format];

/** The format a stored image's key says (`<index>.jpg`: JPEG); PNG otherwise, as every key before JPEG outputs. */
export const outputFormatOfKey = (key: string): OutputFormat => (/\.jpg$/i.test(key) ? 'jpeg' : 'png');

/** An image's name within its job's prefix: `<index>.png` or `<index>.jpg`; the index when `name` is one. */
export const OUTPUT_IMAGE_NAME = /^(\d+)\.(?:png|jpg)$/;
