// A restricted unpickler: a pickle VM that understands only what a PyTorch weights file needs and
// never calls anything. It is the TypeScript counterpart of torch.load(..., weights_only=True), tighter.
//
// Opcodes (pickle protocol 2, as torch.save writes, plus four protocol-4 framing/string opcodes that
// newer writers emit): PROTO, FRAME, STOP, MARK, NONE, NEWTRUE, NEWFALSE, BININT, BININT1, BININT2,
// LONG1, BINFLOAT, BINUNICODE, SHORT_BINUNICODE, EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3,
// EMPTY_LIST, APPEND, APPENDS, EMPTY_DICT, SETITEM, SETITEMS, BINPUT, LONG_BINPUT, MEMOIZE, BINGET,
// LONG_BINGET, GLOBAL, STACK_GLOBAL, REDUCE, BUILD, BINPERSID. Any other opcode is refused.
//
// Globals (the allow-list, checked the moment a GLOBAL is read, before any REDUCE):
//   collections.OrderedDict          → an (ordered) Map; calling it with () makes an empty one
//   torch._utils._rebuild_tensor_v2  → a lazy TensorRef (storage, offset, size, stride); no data read
//   torch._utils._rebuild_parameter  → the TensorRef inside the Parameter
//   torch.{Float,Half,BFloat16,Double,Long,Int}Storage → storage dtype markers for BINPERSID
// Anything else (os.system, builtins.eval, numpy.core.multiarray._reconstruct, …) is refused with an
// EngineError naming the global; nothing from the file is ever executed or imported.
//
// Values: None → null, bool, int → number (bigint beyond 2^53), float → number, str → string,
// list → Array, tuple → PyTuple, dict/OrderedDict → Map (keys: str, int, …), tensor → TensorRef.
// BUILD on a dict (the `_metadata` attribute of a state_dict's OrderedDict) is accepted and ignored.
// A pickle may run at most MAX_PICKLE_OPS opcodes (a bound on the memory it can make the VM build).

import { EngineError } from '../errors.ts';

export type TorchDType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32';

/** The storage classes on the allow-list, with their element types. */
export const STORAGE_TYPES: Readonly<Record<string, TorchDType>> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
};

export const ELEMENT_BYTES: Readonly<Record<TorchDType, number>> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4 };

/** The allow-list of `module.name` globals, for documentation and error messages. */
export const ALLOWED_GLOBALS: readonly string[] = [
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  ...Object.keys(STORAGE_TYPES).map((s) => `torch.${s}`),
];

export class PyTuple {
  constructor(readonly items: PickleValue[]) {}
}

/** A storage record of the archive (`<prefix>/data/<key>`), not read. */
export interface StorageRef {
  kind: 'storage';
  key: string;
  dtype: TorchDType;
  /** Elements in the storage. */
  numel: number;
  location: string;
}

/** A tensor as a view of a storage; the data stays on disk until someone reads it. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    /** In elements. */
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
  get dtype(): TorchDType {
    return this.storage.dtype;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  /** C-contiguous (row-major, no gaps): readable as one byte range. */
  get contiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expect) return false;
      expect *= this.shape[i];
    }
    return true;
  }
}

export type PickleKey = string | number | bigint | boolean | null | PyTuple;
export type PickleValue = PickleKey | PickleValue[] | Map<PickleKey, PickleValue> | TensorRef | StorageRef | GlobalMarker;

class GlobalMarker {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

export interface UnpickleStats {
  /** REDUCE opcodes evaluated (only allow-listed callables can get that far). */
  reduces: number;
  globals: string[];
}

/**
 * Opcodes one pickle may run. Each opcode makes at most one new value (a one-byte EMPTY_DICT makes a
 * ~200-byte Map), so this bounds the memory a hostile data.pkl can build to a few hundred MB, where a
 * run of EMPTY_DICT otherwise grows about 200× its size (a 64 MiB pickle exhausts the V8 heap: a crash,
 * not an error). A weights file's pickle runs far fewer: about 36 opcodes per tensor of a state_dict
 * and 120 per parameter of a training checkpoint with AdamW state (the reference fixtures), so about
 * 11 000 for OpenAI ViT-B/32's state_dict and 120 000 for an open_clip ViT-bigG checkpoint with its
 * optimizer state.
 */
export const MAX_PICKLE_OPS = 2_000_000;

const refuse = (source: string, msg: string, detail: Record<string, unknown> = {}) =>
  new EngineError('invalid_model', `${source}: ${msg}`, { path: source, ...detail });

/**
 * Decode a pickle with the allow-list above. `source` names the file in errors.
 * Throws EngineError('invalid_model') for any refused global or opcode, or a malformed stream.
 */
export function restrictedUnpickle(bytes: Uint8Array, source: string, stats: UnpickleStats = { reduces: 0, globals: [] }): PickleValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder('utf-8', { fatal: true });
  let pos = 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();

  const need = (n: number) => {
    if (pos + n > bytes.length) throw refuse(source, `pickle data ends early (at byte ${pos} of ${bytes.length}); the checkpoint is truncated or corrupt`);
  };
  const u8 = () => { need(1); return bytes[pos++]; };
  const u16 = () => { need(2); const v = view.getUint16(pos, true); pos += 2; return v; };
  const u32 = () => { need(4); const v = view.getUint32(pos, true); pos += 4; return v; };
  const i32 = () => { need(4); const v = view.getInt32(pos, true); pos += 4; return v; };
  const str = (n: number) => {
    need(n);
    try {
      return dec.decode(bytes.subarray(pos, (pos += n)));
    } catch {
      throw refuse(source, `pickle string at byte ${pos - n} is not valid UTF-8`);
    }
  };
  const line = () => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) throw refuse(source, 'pickle GLOBAL has no terminating newline');
    const s = new TextDecoder('latin1').decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const pop = (): unknown => {
    if (stack.length === 0) throw refuse(source, `malformed pickle: stack underflow at byte ${pos}`);
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) throw refuse(source, `malformed pickle: empty stack at byte ${pos}`);
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = metastack.pop();
    if (!prev) throw refuse(source, `malformed pickle: no MARK at byte ${pos}`);
    stack = prev;
    return items;
  };
  const global = (module: string, name: string): GlobalMarker => {
    const q = `${module}.${name}`;
    stats.globals.push(q);
    // TorchScript archives (torch.jit.save; OpenAI's official CLIP files) pickle their compiled
    // classes under `__torch__.`: not a hostile file, a whole model. The caller (torch.ts) turns this
    // into the export advice for its path.
    if (module === '__torch__' || module.startsWith('__torch__.')) {
      throw refuse(
        source,
        `refused to load: the pickle asks for the TorchScript class "${module} ${name}": this is a TorchScript (torch.jit) archive, a compiled model, not a weights file. Export its weights with torch.jit.load(path, map_location='cpu').state_dict() and torch.save, and import that file`,
        { global: q, module, name, torchScript: true },
      );
    }
    if (!ALLOWED_GLOBALS.includes(q)) {
      throw refuse(
        source,
        `refused to load: the pickle asks for the Python global "${module} ${name}" (${q}), which is not on the allow-list of tensor-storage globals (${ALLOWED_GLOBALS.join(', ')}). ` +
          'A weights file never needs it; the file may be malicious, so do not open it with torch.load. If you trust it, re-save only the state_dict (torch.save(model.state_dict(), path)) or convert it to safetensors.',
        { global: q, module, name },
      );
    }
    return new GlobalMarker(module, name);
  };
  const asKey = (k: unknown): PickleKey => {
    if (k === null || typeof k === 'string' || typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k instanceof PyTuple) return k;
    throw refuse(source, 'malformed pickle: a dict key is not a string, number, bool, None or tuple');
  };
  const setItem = (d: unknown, k: unknown, v: unknown) => {
    if (!(d instanceof Map)) throw refuse(source, 'malformed pickle: SETITEM(S) on something that is not a dict');
    d.set(asKey(k), v);
  };
  const ints = (t: unknown, what: string): number[] => {
    if (!(t instanceof PyTuple) || !t.items.every((x) => typeof x === 'number' && Number.isInteger(x) && x >= 0)) {
      throw refuse(source, `tensor ${what} must be a tuple of non-negative ints`);
    }
    return t.items as number[];
  };
  const reduce = (fn: unknown, args: unknown): unknown => {
    if (!(fn instanceof GlobalMarker)) throw refuse(source, 'malformed pickle: REDUCE of something that is not a global');
    if (!(args instanceof PyTuple)) throw refuse(source, 'malformed pickle: REDUCE arguments are not a tuple');
    stats.reduces++;
    const a = args.items;
    switch (fn.qualified) {
      case 'collections.OrderedDict':
        if (a.length !== 0) throw refuse(source, 'collections.OrderedDict(...) with arguments is not supported (expected an empty OrderedDict filled by SETITEMS)');
        return new Map();
      case 'torch._utils._rebuild_tensor_v2': {
        const [storage, offset, size, stride] = a;
        if (a.length < 6 || a.length > 7 || !isStorage(storage) || typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0) {
          throw refuse(source, '_rebuild_tensor_v2 expects (storage, offset, size, stride, requires_grad, hooks[, metadata])');
        }
        const shape = ints(size, 'size');
        const strides = ints(stride, 'stride');
        if (shape.length !== strides.length) throw refuse(source, `tensor size [${shape}] and stride [${strides}] differ in rank`);
        const t = new TensorRef(storage, offset, [...shape], [...strides]);
        // The largest element index must lie inside the storage.
        const last = t.numel === 0 ? -1 : offset + shape.reduce((acc, d, i) => acc + (d - 1) * strides[i], 0);
        if (last >= storage.numel) throw refuse(source, `a tensor view [${shape}] at offset ${offset} runs past its storage of ${storage.numel} elements`);
        // More elements than its storage holds means a broadcast (stride 0) or overlapping view: a
        // 1 KB file could then expand into gigabytes on import. Saved weights never are such views.
        if (t.numel > storage.numel) throw refuse(source, `a tensor view [${shape}] with strides [${strides}] has ${t.numel} elements over a storage of ${storage.numel}: a broadcast or overlapping view, not a saved weight`);
        return t;
      }
      case 'torch._utils._rebuild_parameter': {
        const [data] = a;
        if (!(data instanceof TensorRef)) throw refuse(source, '_rebuild_parameter expects a tensor');
        return data;
      }
      default:
        throw refuse(source, `the global ${fn.qualified} cannot be called`, { global: fn.qualified });
    }
  };

  for (let ops = 1; ; ops++) {
    if (ops > MAX_PICKLE_OPS) {
      throw refuse(
        source,
        `refused to load: the pickle runs more than ${MAX_PICKLE_OPS} operations (stopped at byte ${pos} of ${bytes.length}); a weights file's pickle runs far fewer, so this is not a plain state_dict (or it is built to exhaust memory)`,
        { maxOps: MAX_PICKLE_OPS },
      );
    }
    const op = u8();
    switch (op) {
      case 0x80: { // PROTO
        const v = u8();
        if (v > 5) throw refuse(source, `pickle protocol ${v} is not supported`);
        break;
      }
      case 0x95: need(8); pos += 8; break; // FRAME (length is advisory)
      case 0x2e: { // STOP
        const v = pop();
        return v as PickleValue;
      }
      case 0x28: metastack.push(stack); stack = []; break; // MARK
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: stack.push(i32()); break; // BININT
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x8a: { // LONG1
        const n = u8();
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[pos + i]);
        if (n > 0 && bytes[pos + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        pos += n;
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: { need(8); stack.push(view.getFloat64(pos, false)); pos += 8; break; } // BINFLOAT (big-endian)
      case 0x58: stack.push(str(u32())); break; // BINUNICODE
      case 0x8c: stack.push(str(u8())); break; // SHORT_BINUNICODE
      case 0x29: stack.push(new PyTuple([])); break; // EMPTY_TUPLE
      case 0x74: { const items = popMark(); stack.push(new PyTuple(items as PickleValue[])); break; } // TUPLE (pop first: popMark swaps `stack`)
      case 0x85: stack.push(new PyTuple([pop() as PickleValue])); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); stack.push(new PyTuple([a, b] as PickleValue[])); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push(new PyTuple([a, b, c] as PickleValue[])); break; } // TUPLE3
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x61: { const v = pop(); const l = top(); if (!Array.isArray(l)) throw refuse(source, 'malformed pickle: APPEND to a non-list'); l.push(v); break; } // APPEND
      case 0x65: { // APPENDS
        const items = popMark();
        const l = top();
        if (!Array.isArray(l)) throw refuse(source, 'malformed pickle: APPENDS to a non-list');
        // One push per item: push(...items) spreads into call arguments and throws RangeError past ~100k.
        for (const item of items) l.push(item);
        break;
      }
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x73: { const v = pop(); const k = pop(); setItem(top(), k, v); break; } // SETITEM
      case 0x75: { // SETITEMS
        const items = popMark();
        if (items.length % 2) throw refuse(source, 'malformed pickle: SETITEMS with an odd number of items');
        const d = top();
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i], items[i + 1]);
        break;
      }
      case 0x71: memo.set(u8(), top()); break; // BINPUT
      case 0x72: memo.set(u32(), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x68: case 0x6a: { // BINGET, LONG_BINGET
        const idx = op === 0x68 ? u8() : u32();
        if (!memo.has(idx)) throw refuse(source, `malformed pickle: memo slot ${idx} is empty`);
        stack.push(memo.get(idx));
        break;
      }
      case 0x63: { const module = line(); const name = line(); stack.push(global(module, name)); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw refuse(source, 'malformed pickle: STACK_GLOBAL needs two strings');
        stack.push(global(module, name));
        break;
      }
      case 0x52: { const args = pop(); const fn = pop(); stack.push(reduce(fn, args)); break; } // REDUCE
      case 0x62: { // BUILD
        pop(); // state
        const obj = top();
        if (!(obj instanceof Map)) throw refuse(source, 'BUILD (setting object state) is only accepted on dicts (a state_dict\'s _metadata)');
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        stack.push(persistentLoad(pid, source));
        break;
      }
      default:
        throw refuse(
          source,
          `refused to load: pickle opcode 0x${op.toString(16).padStart(2, '0')} ('${String.fromCharCode(op)}') at byte ${pos - 1} is not one a weights file uses; the file is corrupt or not a plain PyTorch weights checkpoint`,
          { opcode: op },
        );
    }
  }
}

function isStorage(x: unknown): x is StorageRef {
  return typeof x === 'object' && x !== null && (x as StorageRef).kind === 'storage';
}

/** torch.save's persistent id: ('storage', <StorageClass>, key, location, numel). */
function persistentLoad(pid: unknown, source: string): StorageRef {
  if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') {
    throw refuse(source, 'unsupported persistent id: expected (\'storage\', StorageClass, key, location, numel) as torch.save writes');
  }
  const [, cls, key, location, numel] = pid.items;
  if (!(cls instanceof GlobalMarker) || cls.module !== 'torch' || !(cls.name in STORAGE_TYPES)) {
    throw refuse(source, `persistent id names ${cls instanceof GlobalMarker ? cls.qualified : 'something'} instead of a torch storage class`);
  }
  if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(key)) throw refuse(source, `storage key ${String(key)} is not a plain record name`);
  if (typeof numel !== 'number' || !Number.isInteger(numel) || numel < 0) throw refuse(source, `storage ${key} has an invalid element count`);
  return { kind: 'storage', key, dtype: STORAGE_TYPES[cls.name]!, numel, location: typeof location === 'string' ? location : String(location) };
}

/** describePickle refuses deeper nesting (a weights file nests a few levels; this keeps the stack safe). */
export const MAX_DESCRIBE_DEPTH = 1000;

/**
 * A plain-JS view of a decoded pickle, for printing and tests (tensors summarized). A value that
 * contains itself (possible through the memo: BINPUT, then BINGET and APPEND into the same list) or
 * nests deeper than MAX_DESCRIBE_DEPTH is an EngineError('invalid_model'), never a stack overflow.
 */
export function describePickle(v: PickleValue, depth = 0, ancestors: Set<object> = new Set()): unknown {
  if (v instanceof TensorRef) return `tensor ${v.dtype} [${v.shape}]`;
  if (typeof v === 'bigint') return v.toString();
  if (!(v instanceof PyTuple || Array.isArray(v) || v instanceof Map)) return v;
  if (ancestors.has(v)) throw new EngineError('invalid_model', 'malformed pickle: a container contains itself (a cycle through the memo); not a weights file');
  if (depth >= MAX_DESCRIBE_DEPTH) throw new EngineError('invalid_model', `malformed pickle: containers nested more than ${MAX_DESCRIBE_DEPTH} deep; not a weights file`);
  ancestors.add(v);
  try {
    const d = (x: PickleValue) => describePickle(x, depth + 1, ancestors);
    if (v instanceof PyTuple) return v.items.map(d);
    if (Array.isArray(v)) return v.map(d);
    return Object.fromEntries([...v].map(([k, x]) => [String(k instanceof PyTuple ? k.items.join(',') : k), d(x)]));
  } finally {
    ancestors.delete(v);
  }
}
