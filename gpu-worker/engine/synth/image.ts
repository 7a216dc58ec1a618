// Host-side image I/O and simple image ops for the synthesis engine.
//
// The engine's image type is planar float32 CHW with values in [0,1]: that is the layout the ONNX step
// graph consumes (NCHW), so no transposes happen between optimizer steps. Images are written as PNG
// (fast-png, pure JS): a kept, lossless format makes bit-identical output per seed checkable. A caller
// may ask for JPEG instead (jpeg-js's encoder, ADR 0041) or WebP (libwebp in WebAssembly, ADR 0043):
// deterministic too, so the same request still writes the same bytes. Init images may also be JPEG (jpeg-js, shared/jpeg.ts; ADR 0035).
//
// Decisions:
// - Alpha is composited over white. A transparent region shows as white in viewers, and its stored RGB
//   is often garbage (black or leftover colour), so dropping alpha would start an init-image run from
//   pixels the user never saw.
// - Greyscale is replicated to R=G=B. 16-bit samples are scaled by 1/65535, 8-bit by 1/255,
//   1/2/4-bit by 1/(2^d − 1). Palette images (colour type 3 only) are expanded through the palette
//   (and its tRNS alphas); a PLTE in a grey image is ignored, as libpng ignores it.
// - The ICC profile and gamma chunks are ignored: values are taken as sRGB-encoded, as CLIP was trained.
// - JPEG init images are decoded as sRGB 8-bit, turned upright by their EXIF orientation; WebP, GIF and
//   the others are refused with advice to convert to PNG or JPEG: no decoder for them is installed.
// - Every PNG, JPEG and WebP written says, in XMP, that a trained model made it (GENERATED_IMAGE_XMP, ADR 0032).

import { decode as pngDecode, encode as pngEncode, type DecodedPng } from 'fast-png';
import jpegJs from 'jpeg-js';
import { EngineError } from '../errors.ts';
import { MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS } from '../../../shared/image-header.ts';
import { checkPngFileSync, pngChunkOf } from '../../../shared/png-check.ts';
import { isJpeg } from '../../../shared/jpeg.ts';
import { defaultOutputQuality, MAX_OUTPUT_QUALITY, MIN_OUTPUT_QUALITY, type OutputFormat } from '../../../shared/output-format.ts';
import { decodeJpeg } from './jpeg-decode.ts';
import { encodeWebpRgba } from './webp.ts';
import type { Rng } from './rng.ts';

/** Planar float32 image: data[c·H·W + y·W + x], c ∈ {R,G,B}, values in [0,1]. */
export interface PlanarImage {
  width: number;
  height: number;
  data: Float32Array; // length 3·H·W
}

export interface DecodeLimits {
  /** Largest accepted file size in bytes (default 32 MiB). */
  maxBytes?: number;
  /** Largest accepted width·height (default 16 Mpx, e.g. 4096×4096). */
  maxPixels?: number;
}

/** The shared limit: the config caps CLIPAG_MAX_UPLOAD_BYTES at it, so the API never takes a file the worker refuses for its size. */
export const DEFAULT_MAX_BYTES = MAX_IMAGE_FILE_BYTES;
export const DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS;

function checkSize(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new EngineError('invalid_input', `${what}: width and height must be positive integers; got ${width}×${height}`, { width, height });
  }
}

/** A black image of the given size. */
export function createImage(width: number, height: number): PlanarImage {
  checkSize(width, height, 'createImage');
  return { width, height, data: new Float32Array(3 * width * height) };
}

/** A solid colour; rgb values in [0,1]. */
export function solidImage(width: number, height: number, rgb: readonly [number, number, number]): PlanarImage {
  const img = createImage(width, height);
  const hw = width * height;
  for (let c = 0; c < 3; c++) {
    const v = rgb[c];
    if (!(v >= 0 && v <= 1)) throw new EngineError('invalid_input', `solid colour channel ${c} must be in [0,1]; got ${v}`, { param: 'color' });
    img.data.fill(v, c * hw, (c + 1) * hw);
  }
  return img;
}

/** Independent U[lo,hi) noise per pixel and channel, drawn in CHW order from `rng`. */
export function noiseImage(width: number, height: number, rng: Rng, lo = 0, hi = 1): PlanarImage {
  const img = createImage(width, height);
  rng.fillUniform(img.data, lo, hi);
  return img;
}

/** Copy of an image (the data buffer is not shared). */
export function cloneImage(img: PlanarImage): PlanarImage {
  return { width: img.width, height: img.height, data: img.data.slice() };
}

function checkImage(img: PlanarImage, what: string): void {
  checkSize(img.width, img.height, what);
  if (img.data.length !== 3 * img.width * img.height) {
    throw new EngineError('invalid_input', `${what}: data has ${img.data.length} values, expected 3·${img.height}·${img.width}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// PNG

/**
 * The XMP packet every PNG the engine writes carries: IPTC's DigitalSourceType "trainedAlgorithmicMedia"
 * (made by a trained model), the machine-readable marking of generated images that the EU AI Act's
 * Article 50(2) asks for and that exiftool, Adobe's tools and the IPTC-aware platforms read. Fixed bytes:
 * no time, prompt, seed or model, so the same request still writes the same file, and nothing a caller
 * sent travels inside an image they may share.
 */
export const GENERATED_IMAGE_XMP =
  '<?xpacket begin="\uFEFF" id="W5M0MpCehiHzreSzNTczkc9d"?>' +
  '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' +
  '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"' +
  ' Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia" xmp:CreatorTool="clipag"/>' +
  '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>';

/**
 * The iTXt chunk holding it, as the XMP specification puts XMP in a PNG: keyword "XML:com.adobe.xmp",
 * uncompressed, no language tag or translated keyword, the packet in UTF-8; before the image data.
 */
const GENERATED_IMAGE_CHUNK = pngChunkOf(
  'iTXt',
  Buffer.concat([Buffer.from('XML:com.adobe.xmp', 'latin1'), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(GENERATED_IMAGE_XMP, 'utf8')]),
);

/** The end of the IHDR chunk, which fast-png writes first: signature (8) + length, type, 13 data bytes, CRC. */
const IHDR_END = 8 + 12 + 13;

/**
 * The image as interleaved 8-bit samples, `channels` a pixel (a 4th, alpha, is opaque). Values are
 * clamped to [0,1] and rounded half up (v·255 + 0.5, floored); a NaN pixel is refused.
 */
function quantized(img: PlanarImage, what: string, channels: 3 | 4): Uint8Array {
  checkImage(img, what);
  const { width, height, data } = img;
  const hw = width * height;
  const out = new Uint8Array(channels * hw);
  if (channels === 4) for (let i = 0; i < hw; i++) out[i * 4 + 3] = 255;
  for (let c = 0; c < 3; c++) {
    const base = c * hw;
    for (let i = 0; i < hw; i++) {
      const v = data[base + i];
      if (v !== v) throw new EngineError('invalid_input', `${what}: image contains NaN pixels`, { channel: c, index: i });
      out[i * channels + c] = Math.floor(Math.min(1, Math.max(0, v)) * 255 + 0.5);
    }
  }
  return out;
}

/**
 * 8-bit RGB PNG, marked as generated (GENERATED_IMAGE_XMP). Values are clamped to [0,1] and rounded half
 * up (v·255 + 0.5, floored).
 */
export function encodePng(img: PlanarImage): Uint8Array {
  const { width, height } = img;
  const png = pngEncode({ width, height, data: quantized(img, 'encodePng', 3), channels: 3, depth: 8 });
  if (Buffer.from(png.subarray(12, 16)).toString('latin1') !== 'IHDR') throw new Error('encodePng: the encoder did not write IHDR first');
  const marked = new Uint8Array(png.length + GENERATED_IMAGE_CHUNK.length);
  marked.set(png.subarray(0, IHDR_END), 0);
  marked.set(GENERATED_IMAGE_CHUNK, IHDR_END);
  marked.set(png.subarray(IHDR_END), IHDR_END + GENERATED_IMAGE_CHUNK.length);
  return marked;
}

// ---------------------------------------------------------------------------------------------------
// JPEG output

/**
 * The APP1 segment holding GENERATED_IMAGE_XMP, as the XMP specification (part 3, 1.1.3) puts XMP in a
 * JPEG: marker FFE1, a length that counts itself, the namespace "http://ns.adobe.com/xap/1.0/" and a NUL,
 * then the packet in UTF-8.
 */
const GENERATED_IMAGE_APP1 = (() => {
  const body = Buffer.concat([Buffer.from('http://ns.adobe.com/xap/1.0/\0', 'latin1'), Buffer.from(GENERATED_IMAGE_XMP, 'utf8')]);
  const segment = Buffer.alloc(4 + body.length);
  segment.writeUInt16BE(0xffe1, 0);
  segment.writeUInt16BE(2 + body.length, 2);
  body.copy(segment, 4);
  return new Uint8Array(segment);
})();

/**
 * Baseline JPEG of the image at `quality` (1–100), 4:4:4 (no chroma subsampling: the engine's images are
 * fine detail throughout, where 4:2:0 smears colour edges), marked as generated (GENERATED_IMAGE_XMP) in
 * an APP1 segment after the JFIF header. The samples are rounded as encodePng rounds them, so a PNG and
 * a JPEG of one run start from the same 8-bit image; the encoder is deterministic (same image and
 * quality, same bytes).
 */
export function encodeJpeg(img: PlanarImage, quality: number): Uint8Array {
  if (!Number.isInteger(quality) || quality < MIN_OUTPUT_QUALITY || quality > MAX_OUTPUT_QUALITY) {
    throw new EngineError('invalid_input', `encodeJpeg: quality must be a whole number from ${MIN_OUTPUT_QUALITY} to ${MAX_OUTPUT_QUALITY}; got ${quality}`, { quality });
  }
  const { width, height } = img;
  const jpeg = new Uint8Array(jpegJs.encode({ width, height, data: quantized(img, 'encodeJpeg', 4) }, quality).data);
  // SOI, then the JFIF APP0 jpeg-js writes first: the XMP goes right after it, as JFIF asks.
  if (jpeg[0] !== 0xff || jpeg[1] !== 0xd8 || jpeg[2] !== 0xff || jpeg[3] !== 0xe0) throw new Error('encodeJpeg: the encoder did not write SOI and APP0 first');
  const app0End = 4 + ((jpeg[4]! << 8) | jpeg[5]!);
  const marked = new Uint8Array(jpeg.length + GENERATED_IMAGE_APP1.length);
  marked.set(jpeg.subarray(0, app0End), 0);
  marked.set(GENERATED_IMAGE_APP1, app0End);
  marked.set(jpeg.subarray(app0End), app0End + GENERATED_IMAGE_APP1.length);
  return marked;
}

// ---------------------------------------------------------------------------------------------------
// WebP output

/** A RIFF chunk: four-character code, little-endian size, payload, a pad byte when the size is odd. */
function riffChunk(fourcc: string, payload: Uint8Array): Buffer {
  const chunk = Buffer.alloc(8 + payload.length + (payload.length & 1));
  chunk.write(fourcc, 0, 'latin1');
  chunk.writeUInt32LE(payload.length, 4);
  chunk.set(payload, 8);
  return chunk;
}

/** The `XMP ` chunk holding GENERATED_IMAGE_XMP, as the WebP container specification puts XMP. */
const GENERATED_IMAGE_WEBP_XMP = riffChunk('XMP ', Buffer.from(GENERATED_IMAGE_XMP, 'utf8'));
/** The largest side a WebP holds (VP8's 14-bit width and height). */
export const WEBP_MAX_SIDE = 16383;
/** VP8X's flag for "an XMP chunk follows the image" (the container specification's X bit). */
const VP8X_XMP_FLAG = 0x04;

/**
 * Lossy WebP of the image at `quality` (1–100, libwebp's scale; 4:2:0 with libwebp's sharp RGB→YUV),
 * marked as generated (GENERATED_IMAGE_XMP) in the extended file format: VP8X (canvas size, XMP flag),
 * the encoder's VP8 chunk, then an `XMP ` chunk. The samples are rounded as encodePng rounds them; the
 * encoder is WebAssembly, so the same image and quality give the same bytes on every host.
 */
export async function encodeWebp(img: PlanarImage, quality: number): Promise<Uint8Array> {
  if (!Number.isInteger(quality) || quality < MIN_OUTPUT_QUALITY || quality > MAX_OUTPUT_QUALITY) {
    throw new EngineError('invalid_input', `encodeWebp: quality must be a whole number from ${MIN_OUTPUT_QUALITY} to ${MAX_OUTPUT_QUALITY}; got ${quality}`, { quality });
  }
  const { width, height } = img;
  // WebP's own bound (14-bit sizes in the VP8 header); the API's and the CLI's sizes are far below it.
  if (width > WEBP_MAX_SIDE || height > WEBP_MAX_SIDE) {
    throw new EngineError('invalid_input', `encodeWebp: a WebP is at most ${WEBP_MAX_SIDE} pixels a side; got ${width}×${height} (ask for PNG or JPEG)`, { width, height });
  }
  const simple = Buffer.from(await encodeWebpRgba(quantized(img, 'encodeWebp', 4), width, height, quality));
  // RIFF, its size, WEBP, then the one VP8 chunk of the simple format: moved whole behind a VP8X.
  if (simple.toString('latin1', 0, 4) !== 'RIFF' || simple.toString('latin1', 8, 16) !== 'WEBPVP8 ') throw new Error('encodeWebp: the encoder did not write a simple lossy WebP');
  const vp8 = simple.subarray(12, 12 + 8 + simple.readUInt32LE(16) + (simple.readUInt32LE(16) & 1));
  const vp8x = Buffer.alloc(10);
  vp8x[0] = VP8X_XMP_FLAG;
  vp8x.writeUIntLE(width - 1, 4, 3);
  vp8x.writeUIntLE(height - 1, 7, 3);
  const body = Buffer.concat([Buffer.from('WEBP', 'latin1'), riffChunk('VP8X', vp8x), vp8, GENERATED_IMAGE_WEBP_XMP]);
  const header = Buffer.alloc(8);
  header.write('RIFF', 0, 'latin1');
  header.writeUInt32LE(body.length, 4);
  return new Uint8Array(Buffer.concat([header, body]));
}

/**
 * The image as a file of `format` (ADR 0041, 0043): a lossy one at `quality` (its default when none),
 * a PNG as encodePng writes it (`png`, when the caller has those bytes already).
 */
export async function encodeOutput(img: PlanarImage, format: OutputFormat, quality?: number, png?: Uint8Array): Promise<Uint8Array> {
  if (format === 'png') return png ?? encodePng(img);
  const q = quality ?? defaultOutputQuality(format);
  return format === 'jpeg' ? encodeJpeg(img, q) : encodeWebp(img, q);
}

/**
 * Decode a PNG or a JPEG into a planar RGB image in [0,1]. Refuses, with `invalid_input`: other formats
 * (WebP etc.: "convert to PNG or JPEG"), files over `maxBytes`, images over `maxPixels` (checked from the header before
 * any pixel memory is allocated), and corrupt data (bad signature, CRC, zlib stream or chunk layout).
 */
export function decodeImage(bytes: Uint8Array, limits: DecodeLimits = {}): PlanarImage {
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES;
  const maxPixels = limits.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (bytes.length > maxBytes) {
    throw new EngineError('invalid_input', `image file is ${bytes.length} bytes, over the limit of ${maxBytes} bytes`, { limit: maxBytes, size: bytes.length });
  }
  if (isJpeg(bytes)) return decodeJpegImage(bytes, maxPixels);
  // The shared check (the API runs it on uploads) reads the layout and inflates the pixel data first,
  // bounded by the header's size: fast-png inflates without bound (a few MB of deflated zeros behind a
  // 64×64 header took GBs and minutes), also in ancillary chunks (an iCCP profile, zTXt text), which
  // `decodable` leaves out.
  const check = checkPngFileSync(bytes, { maxPixels });
  if (!check.ok) throw new EngineError('invalid_input', check.reason, check.format ? { format: check.format } : { limit: maxPixels });
  const { width, height, colourType } = check.header;
  const decodable = check.decodable;
  let png: DecodedPng;
  try {
    png = pngDecode(decodable, { checkCrc: true });
  } catch (e) {
    throw new EngineError('invalid_input', `corrupt PNG: ${decoderReason(e)}`);
  }
  if (png.width !== width || png.height !== height) throw new EngineError('invalid_input', 'corrupt PNG: inconsistent header');
  try {
    return toPlanar(png, colourType, check.colourKey);
  } catch (e) {
    if (e instanceof EngineError) throw e;
    throw new EngineError('invalid_input', `corrupt PNG: ${decoderReason(e)}`);
  }
}

/** A JPEG (shared/jpeg.ts: its segments checked, then decoded strictly, turned upright by its EXIF orientation) as a planar image. */
function decodeJpegImage(bytes: Uint8Array, maxPixels: number): PlanarImage {
  const r = decodeJpeg(bytes, { maxPixels });
  if (!r.ok) throw new EngineError('invalid_input', r.reason, { format: 'JPEG' });
  const { width, height, rgb } = r.image;
  const hw = width * height;
  const data = new Float32Array(3 * hw);
  for (let i = 0; i < hw; i++) {
    data[i] = rgb[3 * i]! / 255;
    data[hw + i] = rgb[3 * i + 1]! / 255;
    data[2 * hw + i] = rgb[3 * i + 2]! / 255;
  }
  return { width, height, data };
}

/**
 * Why the decoder failed, in words: fast-png wraps an inflate error as "Error while decompressing the
 * data:" with the reason only in its cause, and an error may carry no message at all; a job's error
 * must never end at a colon or be empty.
 */
function decoderReason(e: unknown): string {
  const own = e instanceof Error ? e.message.trim().replace(/:$/, '') : '';
  const cause = e instanceof Error && e.cause instanceof Error ? e.cause.message.trim() : '';
  return [own, cause].filter(Boolean).join(': ') || 'the decoder could not read it (a damaged file, or a feature the decoder does not support)';
}

/** Unpack 1/2/4-bit samples (rows padded to whole bytes) into one value per sample. */
function unpackBits(data: ArrayLike<number>, width: number, height: number, channels: number, depth: number): Uint8Array {
  const perRow = width * channels;
  const rowBytes = Math.ceil((perRow * depth) / 8);
  if (data.length < rowBytes * height) throw new Error(`pixel data too short (${data.length} < ${rowBytes * height} bytes)`);
  const out = new Uint8Array(perRow * height);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < perRow; i++) {
      const bit = i * depth;
      const byte = data[y * rowBytes + (bit >> 3)];
      out[y * perRow + i] = (byte >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

/**
 * `colourType` is the file's (IHDR): only type 3 is a palette image. A grey image may carry a PLTE
 * (PNG forbids it, libpng ignores it): read through it, its grey pixels became palette colours or
 * failed as out-of-range indices, after the API had taken the file. `colourKey` is the tRNS colour
 * key of a grey or RGB image (from the shared check, which leaves that chunk out of what fast-png
 * reads: fast-png refuses a 3-value RGB key in an image of one or two pixels, a valid file).
 */
function toPlanar(png: DecodedPng, colourType: number, colourKey: readonly number[] | undefined): PlanarImage {
  const { width, height, depth } = png;
  const hw = width * height;
  const img = createImage(width, height);
  const out = img.data;
  const isPalette = colourType === 3;
  let samples: ArrayLike<number> = png.data;
  if (depth < 8) samples = unpackBits(png.data, width, height, png.channels, depth);
  const need = hw * png.channels;
  if (samples.length < need) throw new Error(`pixel data too short (${samples.length} < ${need} samples)`);

  if (isPalette) {
    const pal = png.palette ?? [];
    for (let i = 0; i < hw; i++) {
      const entry = pal[samples[i]];
      if (!entry) throw new Error(`palette index ${samples[i]} out of range (${pal.length} entries)`);
      const a = entry.length > 3 ? entry[3] / 255 : 1;
      for (let c = 0; c < 3; c++) out[c * hw + i] = (entry[c] / 255) * a + (1 - a);
    }
    return img;
  }

  const maxV = (1 << depth) - 1; // 1, 3, 15, 255, 65535
  const scale = 1 / maxV;
  const ch = png.channels;
  // tRNS for grey/RGB names one colour (in sample units) that is fully transparent.
  const key = colourKey && colourKey.length > 0 ? colourKey : undefined;
  for (let i = 0; i < hw; i++) {
    const p = i * ch;
    let r: number, g: number, b: number, a = 1;
    if (ch === 1 || ch === 2) {
      r = g = b = samples[p] * scale;
      if (ch === 2) a = samples[p + 1] * scale;
      else if (key && samples[p] === key[0]) a = 0;
    } else if (ch === 3 || ch === 4) {
      r = samples[p] * scale;
      g = samples[p + 1] * scale;
      b = samples[p + 2] * scale;
      if (ch === 4) a = samples[p + 3] * scale;
      else if (key && key.length >= 3 && samples[p] === key[0] && samples[p + 1] === key[1] && samples[p + 2] === key[2]) a = 0;
    } else {
      throw new EngineError('invalid_input', `unsupported PNG: ${ch} channels`);
    }
    if (a < 1) {
      // Composite over white (see the header comment for why).
      r = r * a + (1 - a);
      g = g * a + (1 - a);
      b = b * a + (1 - a);
    }
    out[i] = r;
    out[hw + i] = g;
    out[2 * hw + i] = b;
  }
  return img;
}

// ---------------------------------------------------------------------------------------------------
// Resampling

/** Sparse 1-D resampling operator: for output o, taps bounds[o]..bounds[o]+counts[o]-1 with weights. */
interface Taps {
  start: Int32Array;
  count: Int32Array;
  stride: number;
  weights: Float64Array; // [out, stride]
}

/**
 * PIL-style triangle-filter taps (ImagingResample's precompute_coeffs with the bilinear filter).
 * With antialias, the filter support widens by the downscale factor so every source pixel contributes
 * (a box-like average), which is what keeps a downsampled checkerboard grey instead of aliasing. Taps
 * that fall outside the image are dropped and the rest renormalized (edge pixels are not darkened).
 */
function computeTaps(inSize: number, outSize: number, antialias: boolean): Taps {
  const scale = inSize / outSize;
  const filterScale = antialias ? Math.max(scale, 1) : 1;
  const support = 1 * filterScale; // bilinear support is 1
  const stride = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * stride);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    let n = xmax - xmin;
    if (n > stride) n = stride;
    let total = 0;
    for (let k = 0; k < n; k++) {
      const t = Math.abs((k + xmin - center + 0.5) / filterScale);
      const w = t < 1 ? 1 - t : 0;
      weights[o * stride + k] = w;
      total += w;
    }
    if (total > 0) for (let k = 0; k < n; k++) weights[o * stride + k] /= total;
    start[o] = xmin;
    count[o] = n;
  }
  return { start, count, stride, weights };
}

export interface ResizeOptions {
  /** Widen the filter when downsampling (PIL behaviour). Default true. */
  antialias?: boolean;
}

/** Bilinear resize, separable (horizontal then vertical), accumulating in float64. */
export function resizeBilinear(img: PlanarImage, width: number, height: number, opts: ResizeOptions = {}): PlanarImage {
  checkImage(img, 'resizeBilinear');
  checkSize(width, height, 'resizeBilinear');
  const antialias = opts.antialias ?? true;
  const { width: W, height: H, data } = img;
  if (W === width && H === height) return cloneImage(img);
  const tx = computeTaps(W, width, antialias);
  const ty = computeTaps(H, height, antialias);
  const out = createImage(width, height);
  const tmp = new Float64Array(H * width);
  for (let c = 0; c < 3; c++) {
    const src = c * W * H;
    for (let y = 0; y < H; y++) {
      const row = src + y * W;
      for (let o = 0; o < width; o++) {
        const s = tx.start[o], n = tx.count[o], wb = o * tx.stride;
        let acc = 0;
        for (let k = 0; k < n; k++) acc += tx.weights[wb + k] * data[row + s + k];
        tmp[y * width + o] = acc;
      }
    }
    const dst = c * width * height;
    for (let o = 0; o < height; o++) {
      const s = ty.start[o], n = ty.count[o], wb = o * ty.stride;
      for (let x = 0; x < width; x++) {
        let acc = 0;
        for (let k = 0; k < n; k++) acc += ty.weights[wb + k] * tmp[(s + k) * width + x];
        out.data[dst + o * width + x] = acc;
      }
    }
  }
  return out;
}

/** A rectangular window copy; the window must lie inside the image. */
export function crop(img: PlanarImage, x: number, y: number, width: number, height: number): PlanarImage {
  checkImage(img, 'crop');
  checkSize(width, height, 'crop');
  if (!Number.isInteger(x) || !Number.isInteger(y) || x < 0 || y < 0 || x + width > img.width || y + height > img.height) {
    throw new EngineError('invalid_input', `crop window ${width}×${height}+${x}+${y} is outside the ${img.width}×${img.height} image`);
  }
  const out = createImage(width, height);
  const { width: W, height: H } = img;
  for (let c = 0; c < 3; c++) {
    for (let r = 0; r < height; r++) {
      const s = c * W * H + (y + r) * W + x;
      out.data.set(img.data.subarray(s, s + width), c * width * height + r * width);
    }
  }
  return out;
}

/** Centre crop (offsets rounded down, like torchvision's CenterCrop rounding for even differences). */
export function cropCenter(img: PlanarImage, width: number, height: number): PlanarImage {
  checkImage(img, 'cropCenter');
  if (width > img.width || height > img.height) {
    throw new EngineError('invalid_input', `cannot centre-crop ${width}×${height} from a ${img.width}×${img.height} image`);
  }
  return crop(img, Math.floor((img.width - width) / 2), Math.floor((img.height - height) / 2), width, height);
}

/**
 * Square windows, side = the short side, evenly spaced along the long side so that together they
 * cover every pixel: ceil(long / short) of them, first and last flush with the ends. A square image
 * is its own one window.
 */
export function squareCropsCovering(img: PlanarImage): PlanarImage[] {
  checkImage(img, 'squareCropsCovering');
  const side = Math.min(img.width, img.height);
  const long = Math.max(img.width, img.height);
  const n = Math.ceil(long / side);
  if (n === 1) return [img];
  return Array.from({ length: n }, (_, i) => {
    const offset = Math.round((i * (long - side)) / (n - 1));
    return img.width >= img.height ? crop(img, offset, 0, side, side) : crop(img, 0, offset, side, side);
  });
}

/**
 * Resize so the image covers width×height (short side scaled, aspect kept), then centre-crop: the CLIP
 * preprocessing shape (Resize(short side) + CenterCrop), used to fit init images to the run size.
 */
export function resizeCover(img: PlanarImage, width: number, height: number, opts: ResizeOptions = {}): PlanarImage {
  checkSize(width, height, 'resizeCover');
  const fits = coverFits.get(img);
  if (fits) {
    const fit = fits.get(`${width}x${height}`);
    // Only the default filter was fitted: anything else would be other pixels than the caller asked for.
    if (!fit || opts.antialias === false) {
      const asked = `${width}×${height}${opts.antialias === false ? ' without antialias' : ''}`;
      throw new Error(`resizeCover: this ${img.width}×${img.height} image holds antialiased fits at ${[...fits.keys()].join(', ') || 'no size'} only, not at ${asked}`);
    }
    return cloneImage(fit); // a copy, as a resize is: callers write into it
  }
  checkImage(img, 'resizeCover');
  const s = Math.max(width / img.width, height / img.height);
  let src = img;
  if (s > 1) {
    // Upscaling: crop the source to the window the output shows first (plus a pixel each side for
    // the bilinear support). Scaling the whole image first would turn a legal 1×8192 PNG into
    // 224×1.8M floats (GBs) before the crop threw most of it away.
    // The window's margin on each side must be equal (the same parity as n), or the crop shifts
    // the picture by half a source pixel, which is many output pixels at a large scale.
    const window = (n: number, want: number) => {
      const w = Math.min(n, Math.ceil(want / s) + 2);
      return (n - w) % 2 === 0 ? w : Math.min(n, w + 1);
    };
    const ww = window(img.width, width);
    const wh = window(img.height, height);
    if (ww < img.width || wh < img.height) src = crop(img, Math.floor((img.width - ww) / 2), Math.floor((img.height - wh) / 2), ww, wh);
  }
  const rw = Math.max(width, Math.round(src.width * s));
  const rh = Math.max(height, Math.round(src.height * s));
  return cropCenter(resizeBilinear(src, rw, rh, opts), width, height);
}

// ---------------------------------------------------------------------------------------------------
// Fitted images

/**
 * The resizeCover fits of each image fittedImage made, by `${width}x${height}`. An init image of up to
 * 16 Mpx is 200 MB as float: the GPU worker decodes it on a thread of its own and keeps only its fits
 * at the sizes a run asks for (gpu-worker/worker/init-decode.ts). That is enough because every use
 * the engine makes of an init image is a resizeCover to a stage's size.
 */
const coverFits = new WeakMap<PlanarImage, ReadonlyMap<string, PlanarImage>>();

/**
 * A width×height image known only by its resizeCover fits (each made as resizeCover(source, w, h)
 * with the default filter): resizeCover returns a copy of the fit of the size it is asked, bit for bit
 * what it would have computed from the source. Its data is empty, so any other use of it fails.
 */
export function fittedImage(width: number, height: number, fits: readonly PlanarImage[]): PlanarImage {
  checkSize(width, height, 'fittedImage');
  for (const f of fits) checkImage(f, 'fittedImage');
  const img: PlanarImage = { width, height, data: new Float32Array(0) };
  coverFits.set(img, new Map(fits.map((f) => [`${f.width}x${f.height}`, f])));
  return img;
}
