// Weight sources for `clipag models import`: one lazy list of tensors, named in the OpenAI/open_clip
// state_dict layout, from any of
//   - a PyTorch zip checkpoint: a raw state_dict, or an open_clip training checkpoint
//     {"epoch", "name", "state_dict", ..., "optimizer"} (only "state_dict" is read);
//   - open_clip/OpenAI safetensors;
//   - a Hugging Face CLIPModel (safetensors, or pytorch_model.bin), renamed to our towers.
// Each tensor is read only when the writer asks for it, so memory holds one tensor at a time.

import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { EngineError } from '../errors.ts';
import type { TensorData } from '../onnx/ir.ts';
import { openSafetensors } from '../io/safetensors.ts';
import type { Activation } from '../clip/arch.ts';
import { PyTuple, TensorRef, type PickleKey, type PickleValue } from './pickle.ts';
import { openTorchCheckpoint } from './torch.ts';

export type SourceFormat = 'torch-state-dict' | 'open_clip-checkpoint' | 'safetensors' | 'hf-clip';

export interface SourceTensor {
  /** Name in the OpenAI layout (after module. stripping and Hugging Face renaming). */
  name: string;
  /** Name(s) in the source file. */
  from: string[];
  /** Source element type: F32, F16, BF16, F64, I64, I32. */
  dtype: string;
  shape: number[];
  read(): TensorData;
}

export type HintKey = 'activation' | 'visionHeads' | 'textHeads';

export interface ArchHints {
  activation?: Activation;
  visionHeads?: number;
  textHeads?: number;
  /** Image normalization (open_clip_config.json preprocess_cfg); absent: OpenAI's. */
  mean?: [number, number, number];
  std?: [number, number, number];
  /** Where each hint came from, for the report. */
  from: Partial<Record<HintKey | 'preprocess', string>>;
  /**
   * Hints the model's own open_clip config states: a flag that contradicts one is an error rather than
   * an override (one of the two is wrong, and a wrong activation passes the gradient check).
   */
  binding?: Partial<Record<HintKey, true>>;
}

export interface WeightSource {
  path: string;
  format: SourceFormat;
  /** Hugging Face layout (renamed) in addition to the container format. */
  huggingFace: boolean;
  tensors: SourceTensor[];
  /** Source entries that were dropped on purpose (buffers such as position_ids). */
  ignored: string[];
  /** Checkpoint facts for the report: epoch, name, top-level keys, optimizer summary. */
  info: Record<string, unknown>;
  hints: ArchHints;
  close(): void;
}

export interface SourceOptions {
  /** Hugging Face config.json; default: config.json next to the weights, when present. */
  hfConfig?: string;
  /**
   * open_clip's open_clip_config.json (as its Hugging Face hub repos ship it) or a bare open_clip model
   * config (model_configs/<name>.json); default: open_clip_config.json next to the weights, when present.
   * Read for open_clip-layout weights only.
   */
  openClipConfig?: string;
}

/** Buffers and bookkeeping entries that are not weights. */
const IGNORED_OPENAI = new Set(['input_resolution', 'context_length', 'vocab_size', 'attn_mask']);

const bad = (path: string, msg: string, detail: Record<string, unknown> = {}) => new EngineError('invalid_model', `${path}: ${msg}`, { path, ...detail });

function sniffKind(path: string): 'zip' | 'safetensors' | 'unknown' {
  let head: Buffer;
  try {
    head = readFileHead(path, 9);
  } catch (e) {
    throw new EngineError('invalid_model', `cannot read ${path}: ${(e as Error).message}`, { path });
  }
  if (head[0] === 0x50 && head[1] === 0x4b) return 'zip';
  if (head.length >= 9 && head[8] === 0x7b /* '{' */) return 'safetensors';
  return 'unknown';
}

function readFileHead(path: string, n: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(n);
    const got = readSync(fd, b, 0, n, 0);
    return b.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

export function openWeightSource(path: string, opts: SourceOptions = {}): WeightSource {
  if (!existsSync(path)) throw new EngineError('invalid_input', `weights file ${path} does not exist`, { path });
  const kind = sniffKind(path);
  let raw: { format: SourceFormat; tensors: SourceTensor[]; info: Record<string, unknown>; metadata: Record<string, string>; close(): void };
  if (kind === 'safetensors') raw = safetensorsSource(path);
  else if (kind === 'zip' || path.endsWith('.pt') || path.endsWith('.bin') || path.endsWith('.pth')) raw = torchSource(path);
  else throw bad(path, 'is neither safetensors nor a PyTorch zip checkpoint (.pt/.bin); convert it to one of those');
  try {
    let tensors = raw.tensors;
    const ignored: string[] = [];
    // open_clip's rule (factory.py load_state_dict): when the first key starts with "module", drop 7 characters from every key.
    if (tensors.length && tensors[0].name.startsWith('module')) {
      const notPrefixed = tensors.filter((t) => !t.name.startsWith('module.'));
      if (notPrefixed.length) throw bad(path, `the first key starts with "module" but ${notPrefixed.length} keys do not start with "module." (e.g. ${notPrefixed[0].name}); cannot strip the DataParallel prefix`);
      tensors = tensors.map((t) => ({ ...t, name: t.name.slice(7) }));
      raw.info.stripped_prefix = 'module.';
    }
    const huggingFace = tensors.some((t) => t.name.startsWith('text_model.') || t.name.startsWith('vision_model.'));
    let hints: ArchHints;
    if (huggingFace) {
      const mapped = mapHuggingFace(tensors, path);
      tensors = mapped.tensors;
      ignored.push(...mapped.ignored);
      hints = hfHints(path, opts.hfConfig);
    } else {
      hints = metadataHints(raw.metadata);
      // The model's own config, where there is one, over the metadata hints.
      const oc = openClipHints(path, opts.openClipConfig);
      if (oc) hints = { ...hints, ...oc, from: { ...hints.from, ...oc.from } };
    }
    if (huggingFace && opts.openClipConfig) {
      throw new EngineError('invalid_input', `--open-clip-config applies to open_clip/OpenAI-layout weights, and ${path} is a Hugging Face CLIPModel (its config.json gives heads and activation; see --hf-config)`, { path });
    }
    const kept: SourceTensor[] = [];
    for (const t of tensors) {
      if (IGNORED_OPENAI.has(t.name)) ignored.push(t.from.join('+'));
      else kept.push(t);
    }
    return { path, format: huggingFace ? 'hf-clip' : raw.format, huggingFace, tensors: kept, ignored, info: raw.info, hints, close: raw.close };
  } catch (e) {
    raw.close();
    throw e;
  }
}

// ------------------------------------------------------------------------------------------------
// Containers

function safetensorsSource(path: string) {
  const f = openSafetensors(path);
  const tensors: SourceTensor[] = [...f.entries.values()].map((e) => ({ name: e.name, from: [e.name], dtype: e.dtype, shape: [...e.shape], read: () => f.read(e.name) }));
  return { format: 'safetensors' as const, tensors, info: {}, metadata: { ...f.metadata }, close: () => f.close() };
}

const get = (m: Map<PickleKey, PickleValue>, k: string) => m.get(k);

function torchSource(path: string) {
  const ckpt = openTorchCheckpoint(path);
  try {
    const root = ckpt.root;
    if (!(root instanceof Map)) throw bad(path, `the checkpoint holds a ${describe(root)}, not a dict; expected a state_dict or an open_clip training checkpoint`);
    const info: Record<string, unknown> = { top_level_keys: [...root.keys()].map(String) };
    let sd: Map<PickleKey, PickleValue>;
    let format: SourceFormat;
    const inner = get(root, 'state_dict');
    if (inner !== undefined) {
      if (!(inner instanceof Map)) throw bad(path, `"state_dict" is a ${describe(inner)}, not a dict`);
      sd = inner;
      format = 'open_clip-checkpoint';
      for (const k of ['epoch', 'name', 'step']) {
        const v = get(root, k);
        if (typeof v === 'number' || typeof v === 'string') info[k] = v;
      }
      const opt = get(root, 'optimizer');
      if (opt instanceof Map) info.optimizer = summarizeOptimizer(opt);
    } else {
      sd = root;
      format = 'torch-state-dict';
    }
    const tensors: SourceTensor[] = [];
    const notTensors: string[] = [];
    for (const [k, v] of sd) {
      if (typeof k !== 'string') throw bad(path, `state_dict key ${String(k)} is not a string`);
      if (!(v instanceof TensorRef)) {
        notTensors.push(`${k} (${describe(v)})`);
        continue;
      }
      tensors.push({ name: k, from: [k], dtype: v.dtype, shape: [...v.shape], read: () => ckpt.readTensor(v) });
    }
    if (notTensors.length) {
      const hint = format === 'torch-state-dict' ? ` (top-level keys: ${info.top_level_keys && (info.top_level_keys as string[]).slice(0, 8).join(', ')}; is this a training checkpoint without a "state_dict" entry?)` : '';
      throw bad(path, `the state_dict holds ${notTensors.length} entries that are not tensors: ${notTensors.slice(0, 6).join(', ')}${hint}`);
    }
    if (tensors.length === 0) throw bad(path, 'the state_dict holds no tensors');
    info.unpickle = { reduces: ckpt.stats.reduces, globals: [...new Set(ckpt.stats.globals)] };
    return { format, tensors, info, metadata: {} as Record<string, string>, close: () => ckpt.close() };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

function describe(v: PickleValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (v instanceof TensorRef) return 'tensor';
  if (v instanceof Map) return 'dict';
  if (v instanceof PyTuple) return 'tuple';
  if (Array.isArray(v)) return 'list';
  return typeof v;
}

/** { state: int → {...}, param_groups: [...] } → counts only (no tensor is read). */
export function summarizeOptimizer(opt: Map<PickleKey, PickleValue>): Record<string, unknown> {
  const state = opt.get('state');
  const groups = opt.get('param_groups');
  let stateTensors = 0;
  let stateBytes = 0;
  if (state instanceof Map) {
    for (const v of state.values()) {
      if (!(v instanceof Map)) continue;
      for (const t of v.values()) if (t instanceof TensorRef) { stateTensors++; stateBytes += t.numel * (t.dtype === 'F16' || t.dtype === 'BF16' ? 2 : t.dtype === 'F64' || t.dtype === 'I64' ? 8 : 4); }
    }
  }
  return {
    state_entries: state instanceof Map ? state.size : 0,
    state_tensors: stateTensors,
    state_bytes_skipped: stateBytes,
    param_groups: Array.isArray(groups) ? groups.length : 0,
  };
}

// ------------------------------------------------------------------------------------------------
// Hints (heads, activation) that shapes cannot give

/** Optional hints in safetensors __metadata__: activation, vision_heads, config (OpenAI build_model keys). */
function metadataHints(meta: Record<string, string>): ArchHints {
  const hints: ArchHints = { from: {} };
  if (meta.activation === 'quick_gelu' || meta.activation === 'gelu') {
    hints.activation = meta.activation;
    hints.from.activation = 'safetensors __metadata__.activation';
  }
  const vh = Number(meta.vision_heads);
  if (Number.isInteger(vh) && vh > 0) {
    hints.visionHeads = vh;
    hints.from.visionHeads = 'safetensors __metadata__.vision_heads';
  }
  if (meta.config) {
    try {
      const c = JSON.parse(meta.config) as Record<string, unknown>;
      const th = c.transformer_heads;
      if (typeof th === 'number' && Number.isInteger(th) && th > 0) {
        hints.textHeads = th;
        hints.from.textHeads = 'safetensors __metadata__.config.transformer_heads';
      }
    } catch {
      /* not JSON: no hint */
    }
  }
  return hints;
}

/** Hugging Face config.json: hidden_act and num_attention_heads of text_config / vision_config. */
function hfHints(weightsPath: string, configPath: string | undefined): ArchHints {
  const path = configPath ?? join(dirname(weightsPath), 'config.json');
  const hints: ArchHints = { from: {} };
  if (!existsSync(path)) {
    if (configPath) throw new EngineError('invalid_input', `Hugging Face config ${configPath} does not exist`, { path: configPath });
    return hints;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new EngineError('invalid_input', `${path} is not valid JSON: ${(e as Error).message}`, { path });
  }
  const notConfig = (what: string, v: unknown) =>
    new EngineError('invalid_input', `${path}: ${what} is ${describeJson(v)}, not a Hugging Face CLIPModel config object; pass the model's config.json with --hf-config`, { path });
  if (!isJsonObject(parsed)) throw notConfig('the file', parsed);
  const cfg: Record<string, Record<string, unknown> | undefined> = {};
  for (const k of ['text_config', 'vision_config'] as const) {
    const c = parsed[k];
    if (c !== undefined && !isJsonObject(c)) throw notConfig(k, c);
    cfg[k] = c;
  }
  // transformers' CLIPTextConfig / CLIPVisionConfig default hidden_act is "quick_gelu".
  const act = (c: Record<string, unknown> | undefined) => (c?.hidden_act as string | undefined) ?? 'quick_gelu';
  const ta = act(cfg.text_config);
  const va = act(cfg.vision_config);
  const norm = (a: string): Activation => {
    if (a === 'quick_gelu') return 'quick_gelu';
    if (a === 'gelu') return 'gelu';
    throw new EngineError('invalid_model', `${path}: hidden_act "${a}" is not supported (quick_gelu or gelu)`, { path });
  };
  if (norm(ta) !== norm(va)) throw new EngineError('invalid_model', `${path}: the text tower uses ${ta} and the vision tower ${va}; a bundle has one activation`, { path });
  hints.activation = norm(ta);
  const actGiven = cfg.text_config?.hidden_act !== undefined || cfg.vision_config?.hidden_act !== undefined;
  hints.from.activation = actGiven ? `${path} hidden_act` : `${path} (no hidden_act: transformers' default quick_gelu)`;
  // What transformers builds from this file where it names no head count: CLIPTextConfig's default 8,
  // CLIPVisionConfig's 12 (the import review: width / 64 made another model of the same files).
  const HF_DEFAULT_HEADS = { text_config: 8, vision_config: 12 } as const;
  const heads = (k: 'text_config' | 'vision_config') => {
    const h = cfg[k]?.num_attention_heads;
    if (h === undefined) return HF_DEFAULT_HEADS[k];
    if (typeof h !== 'number' || !Number.isSafeInteger(h) || h <= 0) {
      throw new EngineError('invalid_input', `${path}: ${k}.num_attention_heads must be a positive integer, got ${JSON.stringify(h)}; fix the file (or pass --hf-config with a corrected copy)`, { path });
    }
    return h;
  };
  hints.textHeads = heads('text_config');
  hints.visionHeads = heads('vision_config');
  const headsFrom = (k: 'text_config' | 'vision_config') =>
    cfg[k]?.num_attention_heads !== undefined ? `${path} ${k}.num_attention_heads` : `${path} (no ${k}.num_attention_heads: transformers' default ${HF_DEFAULT_HEADS[k]})`;
  hints.from.textHeads = headsFrom('text_config');
  hints.from.visionHeads = headsFrom('vision_config');
  return hints;
}

/**
 * open_clip's config, as open_clip builds the model from it (open_clip/model.py): `quick_gelu` true is
 * QuickGELU and absent or false is exact GELU; text heads are `text_cfg.heads` (open_clip's default 8);
 * vision heads are `vision_cfg.width / head_width` (default head width 64). The hub file wraps it as
 * `model_cfg` and adds `preprocess_cfg` (mean, std), which the bundle's preprocessing takes. Undefined
 * when there is no such file.
 */
function openClipHints(weightsPath: string, configPath: string | undefined): ArchHints | undefined {
  const path = configPath ?? join(dirname(weightsPath), 'open_clip_config.json');
  if (!existsSync(path)) {
    if (configPath) throw new EngineError('invalid_input', `open_clip config ${configPath} does not exist`, { path: configPath });
    return undefined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8').replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new EngineError('invalid_input', `${path} is not valid JSON: ${(e as Error).message}`, { path });
  }
  const invalid = (what: string) =>
    new EngineError('invalid_input', `${path}: ${what}; it is not an open_clip model config (open_clip_config.json from the model's hub repo, or open_clip's model_configs/<model>.json). Fix it, or pass --open-clip-config with the right file`, { path });
  if (!isJsonObject(parsed)) throw invalid(`the file is ${describeJson(parsed)}`);
  const cfg = parsed.model_cfg ?? parsed;
  if (!isJsonObject(cfg)) throw invalid(`model_cfg is ${describeJson(cfg)}`);
  if (!isJsonObject(cfg.vision_cfg) && !isJsonObject(cfg.text_cfg)) throw invalid('it has neither vision_cfg nor text_cfg');
  const where = parsed.model_cfg !== undefined ? `${path} model_cfg` : path;
  const hints: ArchHints = { from: {}, binding: {} };

  const qg = cfg.quick_gelu;
  if (qg !== undefined && typeof qg !== 'boolean') throw invalid(`quick_gelu is ${describeJson(qg)}, not true or false`);
  hints.activation = qg === true ? 'quick_gelu' : 'gelu';
  hints.from.activation = qg === undefined ? `${where} (no quick_gelu: open_clip runs exact GELU)` : `${where}.quick_gelu = ${qg}`;
  hints.binding!.activation = true;

  const positiveInt = (v: unknown, field: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw invalid(`${field} is ${describeJson(v)}, not a positive integer`);
    return v;
  };
  if (isJsonObject(cfg.text_cfg)) {
    const given = cfg.text_cfg.heads;
    hints.textHeads = given === undefined ? 8 : positiveInt(given, 'text_cfg.heads');
    hints.from.textHeads = given === undefined ? `${where} (no text_cfg.heads: open_clip's default 8)` : `${where}.text_cfg.heads`;
    hints.binding!.textHeads = true;
  }
  if (isJsonObject(cfg.vision_cfg) && cfg.vision_cfg.width !== undefined) {
    const width = positiveInt(cfg.vision_cfg.width, 'vision_cfg.width');
    const headWidth = cfg.vision_cfg.head_width === undefined ? 64 : positiveInt(cfg.vision_cfg.head_width, 'vision_cfg.head_width');
    if (width % headWidth !== 0) throw invalid(`vision_cfg.width ${width} is not a multiple of head_width ${headWidth}`);
    hints.visionHeads = width / headWidth;
    hints.from.visionHeads = `${where}.vision_cfg (width ${width} / head_width ${headWidth})`;
    hints.binding!.visionHeads = true;
  }

  const pre = parsed.preprocess_cfg;
  if (pre !== undefined) {
    if (!isJsonObject(pre)) throw invalid(`preprocess_cfg is ${describeJson(pre)}`);
    const triple = (v: unknown, field: string): [number, number, number] | undefined => {
      if (v === undefined) return undefined;
      if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) throw invalid(`preprocess_cfg.${field} is ${describeJson(v)}, not three numbers`);
      return v as [number, number, number];
    };
    const mean = triple(pre.mean, 'mean');
    const std = triple(pre.std, 'std');
    if (mean) hints.mean = mean;
    if (std) hints.std = std;
    if (mean || std) hints.from.preprocess = `${path} preprocess_cfg`;
  }
  return hints;
}

const isJsonObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function describeJson(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `a ${typeof v} (${JSON.stringify(v).slice(0, 40)})`;
}

// ------------------------------------------------------------------------------------------------
// Hugging Face CLIPModel → OpenAI layout (the inverse of transformers' convert_clip_original_pytorch_to_hf.py)

const HF_BLOCK: [RegExp, string][] = [
  [/^self_attn\.out_proj\.(weight|bias)$/, 'attn.out_proj.$1'],
  [/^layer_norm1\.(weight|bias)$/, 'ln_1.$1'],
  [/^layer_norm2\.(weight|bias)$/, 'ln_2.$1'],
  [/^mlp\.fc1\.(weight|bias)$/, 'mlp.c_fc.$1'],
  [/^mlp\.fc2\.(weight|bias)$/, 'mlp.c_proj.$1'],
];

const HF_FLAT: Record<string, string> = {
  'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
  'text_model.embeddings.position_embedding.weight': 'positional_embedding',
  'text_model.final_layer_norm.weight': 'ln_final.weight',
  'text_model.final_layer_norm.bias': 'ln_final.bias',
  'vision_model.embeddings.class_embedding': 'visual.class_embedding',
  'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
  'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
  'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight', // sic: HF's spelling
  'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
  'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
  'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
  logit_scale: 'logit_scale',
};
/** HF stores these as nn.Linear weights [E, W]; OpenAI keeps the matrix [W, E]. */
const HF_TRANSPOSED: Record<string, string> = {
  'visual_projection.weight': 'visual.proj',
  'text_projection.weight': 'text_projection',
};
const HF_IGNORED = /^(text_model|vision_model)\.embeddings\.position_ids$/;

export function mapHuggingFace(tensors: SourceTensor[], path: string): { tensors: SourceTensor[]; ignored: string[] } {
  const out: SourceTensor[] = [];
  const ignored: string[] = [];
  const qkv = new Map<string, Partial<Record<'q' | 'k' | 'v', SourceTensor>>>();
  for (const t of tensors) {
    if (HF_IGNORED.test(t.name)) {
      ignored.push(t.name);
      continue;
    }
    if (t.name in HF_FLAT) {
      out.push({ ...t, name: HF_FLAT[t.name] });
      continue;
    }
    if (t.name in HF_TRANSPOSED) {
      if (t.shape.length !== 2) throw bad(path, `${t.name} has shape [${t.shape}], expected a matrix`);
      const src = t;
      out.push({ ...t, name: HF_TRANSPOSED[t.name], shape: [t.shape[1], t.shape[0]], read: () => transpose2d(src.read()) });
      continue;
    }
    const m = /^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$/.exec(t.name);
    if (m) {
      const prefix = `${m[1] === 'text_model' ? '' : 'visual.'}transformer.resblocks.${m[2]}`;
      const rest = m[3];
      const p = /^self_attn\.([qkv])_proj\.(weight|bias)$/.exec(rest);
      if (p) {
        const key = `${prefix}.attn.in_proj_${p[2]}`;
        const slot = qkv.get(key) ?? {};
        slot[p[1] as 'q' | 'k' | 'v'] = t;
        qkv.set(key, slot);
        if (!out.some((o) => o.name === key)) out.push({ name: key, from: [], dtype: t.dtype, shape: [], read: () => { throw new Error('unreachable'); } });
        continue;
      }
      const rule = HF_BLOCK.find(([re]) => re.test(rest));
      if (rule) {
        out.push({ ...t, name: `${prefix}.${rest.replace(rule[0], rule[1])}` });
        continue;
      }
    }
    out.push(t); // unknown: kept under its own name, so the architecture check lists it as extra
  }
  // Replace the in_proj entries reserved above (kept in first-seen order) by the concatenation of
  // q, k and v (torch's in_proj rows are q, k, v in that order).
  for (let i = 0; i < out.length; i++) {
    const slot = qkv.get(out[i].name);
    if (!slot) continue;
    const parts = (['q', 'k', 'v'] as const).map((k) => slot[k]);
    const missing = (['q', 'k', 'v'] as const).filter((_, j) => !parts[j]);
    if (missing.length) throw new EngineError('invalid_weights', `${path}: ${out[i].name} needs q_proj, k_proj and v_proj; ${missing.map((m) => `${m}_proj`).join(', ')} missing`, { tensor: out[i].name });
    const [q, k, v] = parts as SourceTensor[];
    for (const x of [k, v]) {
      if (x.dtype !== q.dtype || x.shape.join() !== q.shape.join()) throw bad(path, `${x.name} [${x.shape}] does not match ${q.name} [${q.shape}]`);
    }
    out[i] = {
      name: out[i].name,
      from: [q.name, k.name, v.name],
      dtype: q.dtype,
      shape: [3 * q.shape[0], ...q.shape.slice(1)],
      read: () => concat0([q.read(), k.read(), v.read()]),
    };
  }
  return { tensors: out, ignored };
}

function transpose2d(t: TensorData): TensorData {
  const [r, c] = t.dims;
  const src = t.data as Float32Array;
  const out = new (src.constructor as new (n: number) => Float32Array)(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = src[i * c + j];
  return { dtype: t.dtype, dims: [c, r], data: out };
}

function concat0(ts: TensorData[]): TensorData {
  const n = ts.reduce((a, t) => a + t.data.length, 0);
  const out = new (ts[0].data.constructor as new (n: number) => Float32Array)(n);
  let off = 0;
  for (const t of ts) {
    out.set(t.data as Float32Array, off);
    off += t.data.length;
  }
  return { dtype: ts[0].dtype, dims: [ts.reduce((a, t) => a + t.dims[0], 0), ...ts[0].dims.slice(1)], data: out };
}
