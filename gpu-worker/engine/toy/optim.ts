// Host-side AdamW over named float32 parameters, and resumable checkpoints (safetensors: weights,
// Adam moments, step, config). Shared by the toy CLIP trainer and the judge trainer.

import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, lstatSync, openSync, readFileSync, realpathSync, renameSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { EngineError } from '../errors.ts';
import type { TensorData } from '../onnx/ir.ts';
import { readSafetensors, writeSafetensors } from '../io/safetensors.ts';
import { checkFinite } from '../clip/bundle.ts';

export type Params = Map<string, TensorData>;

export interface AdamConfig {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Global gradient-norm clip (0: off). */
  gradClip: number;
}

export interface AdamState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export function newAdamState(params: Params): AdamState {
  const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
  for (const [k, t] of params) {
    m.set(k, new Float32Array(t.data.length));
    v.set(k, new Float32Array(t.data.length));
  }
  return { step: 0, m, v };
}

/** One AdamW step with learning rate `lr` (schedule applied by the caller). Returns the pre-clip grad norm. */
export function adamStep(params: Params, grads: Map<string, Float32Array>, st: AdamState, cfg: AdamConfig, lr: number, decays: (name: string) => boolean): number {
  let sq = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Math.sqrt(sq);
  if (!Number.isFinite(norm)) throw new EngineError('runtime_failed', `gradient norm is ${norm} at step ${st.step}; training diverged`);
  const scale = cfg.gradClip > 0 && norm > cfg.gradClip ? cfg.gradClip / norm : 1;
  st.step++;
  const [b1, b2] = cfg.betas;
  const bc1 = 1 - b1 ** st.step, bc2 = 1 - b2 ** st.step;
  for (const [name, t] of params) {
    const g = grads.get(name);
    if (!g) throw new EngineError('invalid_graph', `no gradient for parameter ${name}`);
    const w = t.data as Float32Array, m = st.m.get(name)!, v = st.v.get(name)!;
    const wd = decays(name) ? cfg.weightDecay : 0;
    for (let i = 0; i < w.length; i++) {
      const gi = g[i] * scale;
      m[i] = b1 * m[i] + (1 - b1) * gi;
      v[i] = b2 * v[i] + (1 - b2) * gi * gi;
      w[i] -= lr * (m[i] / bc1 / (Math.sqrt(v[i] / bc2) + cfg.eps) + wd * w[i]);
    }
  }
  return norm;
}

/** Linear warmup then cosine decay to `floor`·lr. */
export function lrAt(step: number, total: number, base: number, warmup: number, floor = 0.1): number {
  if (step < warmup) return (base * (step + 1)) / warmup;
  const t = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return base * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * t)));
}

export const CHECKPOINT_FORMAT = 'clipag-toy-checkpoint';
/** The checkpoint layout this code writes and reads; a file without `format_version` (written before it) is version 1. */
export const CHECKPOINT_FORMAT_VERSION = 1;

export interface Checkpoint {
  kind: string;
  /** JSON-serializable training config; a resume must match it (architecture, recipe). */
  config: Record<string, unknown>;
  step: number;
  elapsedS: number;
  history: unknown[];
  params: Params;
  adam: AdamState;
}

/**
 * sha256 over every tensor (by name) and every metadata field but itself: a checkpoint damaged on disk
 * (a flipped bit that is still a finite number) is refused at load instead of training on.
 */
function checkpointDigest(tensors: ReadonlyMap<string, { data: TensorData['data'] }>, meta: Readonly<Record<string, string>>): string {
  const hash = createHash('sha256');
  for (const name of [...tensors.keys()].sort()) {
    const data = tensors.get(name)!.data as ArrayBufferView;
    hash.update(`${name}\0`).update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  for (const key of Object.keys(meta).sort()) if (key !== 'sha256') hash.update(`${key}\0${meta[key]}\0`);
  return hash.digest('hex');
}

/** Write atomically (temp file + rename): an interrupted write leaves the previous checkpoint intact. */
export async function saveCheckpoint(path: string, ck: Checkpoint): Promise<void> {
  const tensors = new Map<string, TensorData>();
  for (const [k, t] of ck.params) tensors.set(`w/${k}`, t);
  for (const [k, a] of ck.adam.m) tensors.set(`m/${k}`, { dtype: 'float32', dims: [a.length], data: a });
  for (const [k, a] of ck.adam.v) tensors.set(`v/${k}`, { dtype: 'float32', dims: [a.length], data: a });
  // A name of its own per write: two runs on one checkpoint (refused by the lock, but a lock can be
  // taken over from a run that died) never rename each other's file away.
  const tmp = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.partial`;
  const meta: Record<string, string> = {
    format: CHECKPOINT_FORMAT,
    format_version: String(CHECKPOINT_FORMAT_VERSION),
    kind: ck.kind,
    config: JSON.stringify(ck.config),
    step: String(ck.step),
    adam_step: String(ck.adam.step),
    elapsed_s: String(ck.elapsedS),
    history: JSON.stringify(ck.history),
  };
  try {
    await writeSafetensors(tmp, tensors, { ...meta, sha256: checkpointDigest(tensors, meta) });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * A checkpoint path with a symbolic link followed to the file it leads to: a resume reads the target
 * and every save replaces the target, never the link. A link that leads nowhere (dangling, or a loop)
 * is refused: training would start from step 0 and write a file over the link.
 */
export function resolveCheckpointPath(path: string): string {
  const abs = resolve(path);
  let link = false;
  try {
    link = lstatSync(abs, { throwIfNoEntry: false })?.isSymbolicLink() ?? false;
  } catch {
    // ENOTDIR, EACCES on the way: not a link; reading or writing the file says what is wrong
  }
  if (!link) return abs;
  try {
    return realpathSync(abs);
  } catch (e) {
    throw new EngineError('invalid_input', `checkpoint ${abs} is a symbolic link that leads nowhere (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); point it at a checkpoint, or remove it`, { path: abs });
  }
}

/** This process's own mark in its locks: a lock with its pid but another mark is from a run before a restart (a container's pids repeat). */
const PROCESS_MARK = randomBytes(8).toString('hex');

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Takes `PATH.lock` for one training run: a second run on the same checkpoint (same process or another)
 * is refused while the first is alive, instead of the two overwriting each other's saves. A lock left by
 * a run that died (SIGKILL, a crash) on this host is taken over. Returns the release function.
 */
export function lockCheckpoint(path: string): () => void {
  const lock = `${path}.lock`;
  const mine = JSON.stringify({ pid: process.pid, host: hostname(), mark: PROCESS_MARK });
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new EngineError('invalid_input', `another run is using the checkpoint ${path} (it holds ${lock}); wait for it, or give this run another --checkpoint`, { path, lock });
        throw new EngineError('invalid_input', `cannot lock the checkpoint ${path} (${lock}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { path, lock });
      }
      let holder: { pid?: unknown; host?: unknown; mark?: unknown } = {};
      try {
        holder = JSON.parse(readFileSync(lock, 'utf8')) as typeof holder;
      } catch {
        // unreadable or half-written: treated as held by a live run on another host (said below)
      }
      const pid = typeof holder.pid === 'number' && Number.isSafeInteger(holder.pid) && holder.pid > 0 ? holder.pid : undefined;
      const here = holder.host === hostname();
      const alive = pid !== undefined && (pid === process.pid ? holder.mark === PROCESS_MARK : processAlive(pid));
      if (pid === undefined || !here || alive) {
        throw new EngineError(
          'invalid_input',
          `another run is using the checkpoint ${path} (${pid !== undefined ? `process ${pid}${here ? '' : ` on ${String(holder.host)}`}` : 'an unreadable lock'} holds ${lock}); wait for it, or give this run another --checkpoint (delete ${lock} only if no run is using it)`,
          { path, lock, pid },
        );
      }
      rmSync(lock, { force: true }); // left by a run that died: taken over
      continue;
    }
    try {
      writeSync(fd, mine);
    } finally {
      closeSync(fd);
    }
    return () => {
      try {
        if (readFileSync(lock, 'utf8') === mine) rmSync(lock, { force: true });
      } catch {
        // already gone
      }
    };
  }
}

/** Runs `train` with the checkpoint's link followed and its lock held (no checkpoint: no lock). */
export async function withCheckpoint<T>(path: string | undefined, train: (checkpoint: string | undefined) => Promise<T>): Promise<T> {
  if (path === undefined) return train(undefined);
  const checkpoint = resolveCheckpointPath(path);
  const release = lockCheckpoint(checkpoint);
  try {
    return await train(checkpoint);
  } finally {
    release();
  }
}

/**
 * A fresh run (--no-resume) writes its checkpoint over `path`: only a clipag checkpoint may be
 * there, never some other file a mistyped --checkpoint names; and only one of this run's `kind`
 * (a judge checkpoint is not replaced by a CLIP run) unless `force`.
 */
export function assertCheckpointReplaceable(path: string, kind?: string, force = false): void {
  if (!existsSync(path)) return;
  let meta: Record<string, string> | undefined;
  try {
    meta = readSafetensors(path).metadata;
  } catch {
    meta = undefined;
  }
  if (meta?.format !== CHECKPOINT_FORMAT) {
    throw new EngineError('invalid_input', `${path} exists and is not a ${CHECKPOINT_FORMAT} file: a fresh run would overwrite it; choose another --checkpoint`, { path });
  }
  if (kind !== undefined && meta.kind !== kind && !force) {
    throw new EngineError('invalid_input', `${path} holds a "${meta.kind}" checkpoint, not "${kind}": a fresh run would overwrite it; choose another --checkpoint, or pass --force to replace it`, { path, kind: meta.kind });
  }
}

/** JSON with object keys sorted: a record read back from a file may list its keys in another order. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (x !== null && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
}

/** "arch.visionLayers: 3 vs 2": an object field by the keys that differ, not whole. */
function describeDifference(key: string, was: unknown, now: unknown): string {
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (isObject(was) && isObject(now)) {
    const keys = Object.keys({ ...was, ...now }).filter((k) => canonical(was[k]) !== canonical(now[k]));
    return keys.map((k) => describeDifference(`${key}.${k}`, was[k], now[k])).join('; ');
  }
  return `${key}: ${JSON.stringify(was)} in the checkpoint vs ${JSON.stringify(now)} now`;
}

/**
 * Load a checkpoint and check it belongs to this run: same kind and same config (architecture and
 * recipe). A mismatch is an error naming the differing fields, never a silent partial load.
 */
export function loadCheckpoint(path: string, kind: string, config: Record<string, unknown>): Checkpoint {
  if (!existsSync(path)) throw new EngineError('invalid_model', `checkpoint ${path} does not exist`, { path });
  let st;
  try {
    st = readSafetensors(path);
  } catch (e) {
    throw new EngineError('invalid_model', `checkpoint ${path} is unreadable (${(e as Error).message}); delete it to start over`, { path });
  }
  const meta = st.metadata ?? {};
  if (meta.format !== CHECKPOINT_FORMAT) throw new EngineError('invalid_model', `${path} is not a ${CHECKPOINT_FORMAT} file`, { path });
  // Written before format_version existed: version 1.
  const version = meta.format_version ?? '1';
  if (version !== String(CHECKPOINT_FORMAT_VERSION)) {
    throw new EngineError('invalid_model', `checkpoint ${path} is ${CHECKPOINT_FORMAT} version ${JSON.stringify(version)}; this clipag reads version ${CHECKPOINT_FORMAT_VERSION} (made by another clipag?); use another --checkpoint or start fresh with --no-resume`, { path, format_version: version });
  }
  if (meta.kind !== kind) throw new EngineError('invalid_model', `checkpoint ${path} is a "${meta.kind}" checkpoint, not "${kind}"`, { path });
  let saved: Record<string, unknown>;
  try {
    saved = JSON.parse(meta.config ?? '{}') as Record<string, unknown>;
  } catch {
    throw new EngineError('invalid_model', `checkpoint ${path} has an unreadable config record; delete it to start over`, { path });
  }
  if (saved === null || typeof saved !== 'object' || Array.isArray(saved)) throw new EngineError('invalid_model', `checkpoint ${path} has a config record that is not an object; delete it to start over`, { path });
  const diffs = Object.keys({ ...saved, ...config }).filter((k) => canonical(saved[k]) !== canonical(config[k]));
  if (diffs.length) {
    throw new EngineError(
      'invalid_model',
      `checkpoint ${path} was made with a different ${diffs.join(', ')} (${diffs.map((k) => describeDifference(k, saved[k], config[k])).join('; ')}); use another --checkpoint or start fresh with --no-resume`,
      { path, fields: diffs },
    );
  }
  const params: Params = new Map();
  const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
  for (const [name, t] of st.tensors) {
    const [pfx, rest] = [name.slice(0, 2), name.slice(2)];
    if (t.dtype !== 'float32') throw new EngineError('invalid_model', `checkpoint tensor ${name} is ${t.dtype}, expected float32`, { path });
    if (pfx === 'w/') params.set(rest, { dtype: 'float32', dims: [...t.dims], data: new Float32Array(t.data as Float32Array) });
    else if (pfx === 'm/') m.set(rest, new Float32Array(t.data as Float32Array));
    else if (pfx === 'v/') v.set(rest, new Float32Array(t.data as Float32Array));
    else throw new EngineError('invalid_model', `checkpoint ${path} holds a tensor ${JSON.stringify(name)} that is not a weight (w/), nor an Adam moment (m/, v/); delete it to start over`, { path });
  }
  for (const [k, t] of params) {
    if (!m.has(k) || !v.has(k)) throw new EngineError('invalid_model', `checkpoint ${path} lacks Adam moments for ${k}`, { path });
    // A moment shorter than its weight reads past its end (NaN) in the first step; a longer one is not this weight's.
    const n = t.data.length;
    for (const [which, a] of [['m', m.get(k)!], ['v', v.get(k)!]] as const) {
      if (a.length !== n) throw new EngineError('invalid_model', `checkpoint ${path}: the Adam moment ${which}/${k} has ${a.length} values, but the weight has ${n}; delete it to start over`, { path, param: k });
    }
  }
  for (const k of new Set([...m.keys(), ...v.keys()])) {
    if (!params.has(k)) throw new EngineError('invalid_model', `checkpoint ${path} holds Adam moments for ${k}, which has no weight; delete it to start over`, { path, param: k });
  }
  // A NaN in the weights or moments would train on into a NaN bundle written over --out.
  try {
    checkFinite(new Map([...st.tensors].map(([k, t]) => [k, t])), `checkpoint ${path}`);
  } catch (e) {
    throw new EngineError('invalid_model', `${(e as Error).message.replace(/^bundle /, '')}; delete it to start over`, { path });
  }
  // Checkpoints written before the checksum carry none; every later one must match its own.
  if (meta.sha256 !== undefined && meta.sha256 !== checkpointDigest(st.tensors, meta)) {
    throw new EngineError('invalid_model', `checkpoint ${path} is damaged (its checksum does not match its contents); delete it to start over`, { path });
  }
  const step = Number(meta.step);
  if (!Number.isInteger(step) || step < 0) throw new EngineError('invalid_model', `checkpoint ${path} has a bad step "${meta.step}"`, { path });
  let history: unknown;
  try {
    history = JSON.parse(meta.history ?? '[]');
  } catch {
    history = undefined;
  }
  // Checked field by field: a checkpoint without a checksum (an older one, or edited) is not vouched for.
  if (!Array.isArray(history)) throw new EngineError('invalid_model', `checkpoint ${path} has an unreadable history record; delete it to start over`, { path });
  const adamStep = Number(meta.adam_step ?? step);
  if (!Number.isInteger(adamStep) || adamStep < 0) throw new EngineError('invalid_model', `checkpoint ${path} has a bad adam_step "${meta.adam_step}"; delete it to start over`, { path });
  const elapsedS = Number(meta.elapsed_s ?? 0);
  if (!Number.isFinite(elapsedS) || elapsedS < 0) throw new EngineError('invalid_model', `checkpoint ${path} has a bad elapsed_s "${meta.elapsed_s}"; delete it to start over`, { path });
  return {
    kind,
    config: saved,
    step,
    elapsedS,
    history,
    params,
    adam: { step: adamStep, m, v },
  };
}

/** Check a set of parameters has exactly the expected names and shapes. */
export function checkParamShapes(params: Params, expected: [string, number[]][], what: string): void {
  const problems: string[] = [];
  const names = new Set(expected.map(([n]) => n));
  for (const [n, s] of expected) {
    const t = params.get(n);
    if (!t) problems.push(`missing ${n}`);
    else if (t.dims.length !== s.length || t.dims.some((d, i) => d !== s[i])) problems.push(`${n} is [${t.dims}], expected [${s}]`);
  }
  for (const n of params.keys()) if (!names.has(n)) problems.push(`unexpected ${n}`);
  if (problems.length) throw new EngineError('invalid_model', `${what} does not match the architecture: ${problems.slice(0, 8).join('; ')}`, { problems });
}

/** A one-line progress bar on a TTY, plain lines every `every` steps otherwise. */
export function progressPrinter(total: number, label: string, stream: NodeJS.WriteStream = process.stderr, every = 25) {
  const tty = Boolean(stream.isTTY);
  return (step: number, info: string, force = false) => {
    if (tty) {
      const w = 30, f = Math.round((w * step) / total);
      stream.write(`\r${label} [${'#'.repeat(f)}${'.'.repeat(w - f)}] ${step}/${total} ${info}   `);
      if (step === total) stream.write('\n');
    } else if (force || step % every === 0 || step === total) {
      stream.write(`${label} ${step}/${total} ${info}\n`);
    }
  };
}
