// WebP output (ADR 0043): libwebp's encoder, built to WebAssembly by Squoosh and packaged as
// @jsquash/webp. WebAssembly runs the same instructions on every host, so the same image and quality
// give the same bytes on any machine (as fast-png and jpeg-js do), and nothing native is installed.
//
// The module is compiled once per thread, on first use (about 30 ms), from the package's SIMD build:
// Node 20 and 22 both run WebAssembly SIMD, and one fixed build keeps the bytes the same everywhere
// (the package's own init picks a build by feature detection).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import webpEncoderFactory from '@jsquash/webp/codec/enc/webp_enc_simd.js';

/** The encoder options libwebp's WebPConfig takes (the package's codec/enc/webp_enc.d.ts). */
type EncodeOptions = Record<
  | 'quality' | 'target_size' | 'target_PSNR' | 'method' | 'sns_strength' | 'filter_strength' | 'filter_sharpness' | 'filter_type'
  | 'partitions' | 'segments' | 'pass' | 'show_compressed' | 'preprocessing' | 'autofilter' | 'partition_limit' | 'alpha_compression'
  | 'alpha_filtering' | 'alpha_quality' | 'lossless' | 'exact' | 'image_hint' | 'emulate_jpeg_size' | 'thread_level' | 'low_memory'
  | 'near_lossless' | 'use_delta_palette' | 'use_sharp_yuv',
  number
>;
interface WebPModule {
  encode(data: Uint8Array, width: number, height: number, options: EncodeOptions): Uint8Array | null;
}
/** What of WebAssembly this module uses (the project's TypeScript libraries declare no WebAssembly values). */
interface Wasm {
  compile(bytes: Uint8Array): Promise<object>;
  Instance: new (module: object, imports: object) => { exports: object };
}
const wasmApi = (globalThis as unknown as { WebAssembly: Wasm }).WebAssembly;

/** The package's own defaults (libwebp's WebPConfig), which encodeWebpRgba's choices override. */
const LIBWEBP_DEFAULTS: EncodeOptions = {
  quality: 75, target_size: 0, target_PSNR: 0, method: 4, sns_strength: 50, filter_strength: 60, filter_sharpness: 0,
  filter_type: 1, partitions: 0, segments: 4, pass: 1, show_compressed: 0, preprocessing: 0, autofilter: 0,
  partition_limit: 0, alpha_compression: 1, alpha_filtering: 1, alpha_quality: 100, lossless: 0, exact: 0,
  image_hint: 0, emulate_jpeg_size: 0, thread_level: 0, low_memory: 0, near_lossless: 100, use_delta_palette: 0, use_sharp_yuv: 0,
};

/** An Emscripten codec of the package, instantiated from its .wasm file (the factory would otherwise fetch it by URL). */
function loadCodec<M>(factory: unknown, wasmFile: string): Promise<M> {
  return (async () => {
    const wasm = await wasmApi.compile(readFileSync(createRequire(import.meta.url).resolve(wasmFile)));
    return (factory as (options: object) => Promise<M>)({
      noInitialRun: true,
      instantiateWasm: (imports: object, done: (instance: { exports: object }) => void) => {
        const instance = new wasmApi.Instance(wasm, imports);
        done(instance);
        return instance.exports;
      },
    });
  })();
}

let encoder: Promise<WebPModule> | undefined;
function loadEncoder(): Promise<WebPModule> {
  encoder ??= loadCodec<WebPModule>(webpEncoderFactory, '@jsquash/webp/codec/enc/webp_enc_simd.wasm');
  encoder.catch(() => {
    encoder = undefined; // a failed load is tried again by the next image, not remembered
  });
  return encoder;
}

/**
 * A lossy WebP (VP8, 4:2:0) of interleaved 8-bit RGBA pixels at `quality` (0–100, libwebp's scale), in
 * the simple file format (RIFF, WEBP, one VP8 chunk). `use_sharp_yuv`: libwebp's slower RGB→YUV
 * conversion, which keeps the colour edges of fine detail sharper under 4:2:0.
 */
export async function encodeWebpRgba(rgba: Uint8Array, width: number, height: number, quality: number): Promise<Uint8Array> {
  const module = await loadEncoder();
  const out = module.encode(rgba, width, height, { ...LIBWEBP_DEFAULTS, quality, use_sharp_yuv: 1 });
  if (!out) throw new Error(`encodeWebp: libwebp could not encode a ${width}×${height} image`);
  // A copy: the encoder's array may be a view of its own memory, which the next image reuses.
  return new Uint8Array(out);
}

interface WebPDecoderModule {
  decode(data: Uint8Array): { width: number; height: number; data: Uint8ClampedArray } | null;
}
let decoder: Promise<WebPDecoderModule> | undefined;

/**
 * libwebp's decoder (the package's other module): a WebP as interleaved 8-bit RGBA. Not on any request's
 * path (init images are PNG or JPEG): the tests and the output-format benchmark read outputs back with it.
 */
export async function decodeWebpRgba(webp: Uint8Array): Promise<{ width: number; height: number; rgba: Uint8ClampedArray }> {
  decoder ??= (async () => loadCodec<WebPDecoderModule>((await import('@jsquash/webp/codec/dec/webp_dec.js')).default, '@jsquash/webp/codec/dec/webp_dec.wasm'))();
  const image = (await decoder).decode(webp);
  if (!image) throw new Error('decodeWebpRgba: libwebp could not decode the file');
  return { width: image.width, height: image.height, rgba: new Uint8ClampedArray(image.data) };
}
