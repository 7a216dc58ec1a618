// PyTorch zip checkpoints (torch.save's default format since torch 1.6), read without Python:
// a ZIP archive whose `<prefix>/data.pkl` is a pickle of the object graph and whose `<prefix>/data/<key>`
// records hold raw little-endian storage bytes. data.pkl goes through the restricted unpickler
// (pickle.ts), which returns tensors as lazy references; readTensor() then reads exactly one tensor's
// bytes from its record. Nothing else (optimizer moments, EMA copies) is ever read.

import { EngineError } from '../errors.ts';
import { allocData, type TensorData } from '../onnx/ir.ts';
import { bf16ToF32Array } from '../io/safetensors.ts';
import { ELEMENT_BYTES, type PickleValue, type TensorRef, type UnpickleStats, restrictedUnpickle } from './pickle.ts';
import { ZipReader } from './zip.ts';
import { closeSync, openSync, readSync } from 'node:fs';
import { basename } from 'node:path';

/**
 * data.pkl of a weights file is small, since the tensors live in other records: 9 KB for the tiny
 * reference state_dict, about 100 KB for ViT-B/32, under 1 MB for an open_clip training checkpoint with
 * its optimizer state. Bigger ones are refused before they are read (the unpickler's opcode budget,
 * MAX_PICKLE_OPS, bounds what a smaller one can build).
 */
export const MAX_PICKLE = 64 << 20;

export interface TorchCheckpoint {
  path: string;
  /** The folder of data.pkl inside the archive ("archive", or the file stem for torch ≤ 1.x). */
  prefix: string;
  root: PickleValue;
  stats: UnpickleStats;
  /** Read one tensor's data (C-order). F16 stays float16 bits; BF16 is widened to float32. */
  readTensor(t: TensorRef): TensorData;
  close(): void;
}

function sniff(path: string): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const b = new Uint8Array(8);
    const n = readSync(fd, b, 0, 8, 0);
    return b.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

export function openTorchCheckpoint(path: string): TorchCheckpoint {
  let head: Uint8Array;
  try {
    head = sniff(path);
  } catch (e) {
    throw new EngineError('invalid_model', `cannot open ${path}: ${(e as Error).message}`, { path });
  }
  if (head[0] === 0x80 && head.length > 1 && head[1] <= 5) {
    throw new EngineError('invalid_model', `${path} is a legacy (pre-1.6, non-zip) torch.save file, which is not supported: re-save it with a current torch (torch.save(torch.load(p, weights_only=True), p2)) or convert it to safetensors`, { path });
  }
  if (!(head[0] === 0x50 && head[1] === 0x4b)) {
    throw new EngineError('invalid_model', `${path} is neither a PyTorch zip checkpoint nor safetensors (unknown file signature)`, { path });
  }
  const zip = ZipReader.open(path);
  try {
    const pkls = zip.names.filter((n) => n === 'data.pkl' || n.endsWith('/data.pkl')).sort((a, b) => a.length - b.length);
    if (pkls.length === 0) throw new EngineError('invalid_model', `${path} is a zip archive but has no data.pkl record: it is not a torch.save checkpoint`, { path });
    const pkl = pkls[0];
    const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length).replace(/\/$/, '');
    const at = (n: string) => (prefix ? `${prefix}/${n}` : n);
    const bo = zip.entries.get(at('byteorder'));
    if (bo) {
      const order = new TextDecoder().decode(zip.read(at('byteorder'))).trim();
      if (order !== 'little') throw new EngineError('invalid_model', `${path} was saved on a ${order}-endian machine; re-save it on a little-endian one`, { path });
    }
    const pe = zip.entry(pkl);
    if (pe.size > MAX_PICKLE) {
      throw new EngineError('invalid_model', `${path}: ${pkl} is ${pe.size} bytes, over the ${MAX_PICKLE >> 20} MiB limit; a weights file's pickle is far smaller (under 1 MB): is the whole model pickled, not its state_dict?`, { path, limit: MAX_PICKLE });
    }
    // torch.jit.save writes constants.pkl and the model's code/ next to data.pkl; known before a byte
    // of the pickle is decoded.
    if (zip.entries.has(at('constants.pkl')) || zip.names.some((n) => n.startsWith(at('code/')))) throw torchScriptError(path);
    const stats: UnpickleStats = { reduces: 0, globals: [] };
    let root: PickleValue;
    try {
      root = restrictedUnpickle(zip.read(pkl), `${path} (${pkl})`, stats);
    } catch (e) {
      if (e instanceof EngineError && e.detail.torchScript === true) throw torchScriptError(path);
      throw e;
    }
    return {
      path,
      prefix,
      root,
      stats,
      readTensor: (t) => readTensor(zip, at(`data/${t.storage.key}`), t, path),
      close: () => zip.close(),
    };
  } catch (e) {
    zip.close();
    throw e;
  }
}

/**
 * OpenAI's official CLIP files (what clip.load downloads, e.g. ViT-B-32.pt) are TorchScript archives:
 * a compiled model whose code clipag does not run. Their state_dict has OpenAI's key names (plus
 * input_resolution, context_length and vocab_size, which the import skips), so the exported file
 * imports as it is.
 */
function torchScriptError(path: string): EngineError {
  const file = basename(path).replace(/'/g, '');
  const out = `${file.replace(/\.(pt|pth|bin)$/i, '')}-state-dict.pt`;
  return new EngineError(
    'invalid_model',
    `${path} is a TorchScript (torch.jit) archive, as OpenAI's clip.load downloads: a compiled model with its code, which clipag does not run. ` +
      `Export its weights once with Python (in its folder), then import that file: python -c "import torch; torch.save(torch.jit.load('${file}', map_location='cpu').state_dict(), '${out}')"`,
    { path, torchScript: true },
  );
}

function readTensor(zip: ZipReader, record: string, t: TensorRef, path: string): TensorData {
  const es = ELEMENT_BYTES[t.dtype];
  const entry = zip.entries.get(record);
  if (!entry) throw new EngineError('invalid_model', `${path}: storage record ${record} is missing (truncated or corrupt checkpoint)`, { path, record });
  if (entry.size < t.storage.numel * es) {
    throw new EngineError('invalid_model', `${path}: storage record ${record} has ${entry.size} bytes, its tensor needs ${t.storage.numel * es}`, { path, record });
  }
  const n = t.numel;
  const raw = allocData(t.dtype === 'F32' || t.dtype === 'BF16' ? 'float32' : t.dtype === 'F16' ? 'float16' : t.dtype === 'F64' ? 'float64' : t.dtype === 'I64' ? 'int64' : 'int32', t.dtype === 'BF16' ? 0 : n);
  const dims = [...t.shape];
  const target = t.dtype === 'BF16' ? new Uint16Array(n) : raw;
  const bytes = new Uint8Array(target.buffer, target.byteOffset, target.byteLength);
  if (t.contiguous) {
    if (n > 0) zip.read(record, t.offset * es, n * es, bytes);
  } else {
    // A strided view (rare in state_dicts): read the storage span it covers, then gather in C order.
    const maxIdx = t.offset + t.shape.reduce((acc, d, i) => acc + (d - 1) * t.stride[i], 0);
    const span = new Uint8Array((maxIdx - t.offset + 1) * es);
    zip.read(record, t.offset * es, span.byteLength, span);
    const idx = new Array(dims.length).fill(0);
    for (let i = 0; i < n; i++) {
      let src = 0;
      for (let d = 0; d < dims.length; d++) src += idx[d] * t.stride[d];
      bytes.set(span.subarray(src * es, (src + 1) * es), i * es);
      for (let d = dims.length - 1; d >= 0; d--) {
        if (++idx[d] < dims[d]) break;
        idx[d] = 0;
      }
    }
  }
  if (t.dtype === 'BF16') return { dtype: 'float32', dims, data: bf16ToF32Array(target as Uint16Array) };
  return { dtype: raw instanceof Uint16Array ? 'float16' : t.dtype === 'F32' ? 'float32' : t.dtype === 'F64' ? 'float64' : t.dtype === 'I64' ? 'int64' : 'int32', dims, data: raw };
}
