// ClipEngine: a loaded model bundle plus compiled-graph cache on top of the worker-thread pool.
// Graphs are compiled once per (model content hash, graph kind, shape) and reused across requests.

import { EngineError } from './errors.ts';
import { type ModelBundle, loadBundle, weightLookup } from './clip/bundle.ts';
import { type TowerSource, imageEmbedGraph, textEmbedGraph } from './clip/graphs.ts';
import { type WeightLookup, castTensor } from './clip/model.ts';
import { TextTokenizer } from './clip/tokenizer.ts';
import { statSync } from 'node:fs';
import type { DType, ModelIR, TensorData } from './onnx/ir.ts';
import { DEFAULT_INLINE_LIMIT_BYTES, EnginePool, type EngineHandle, settlesWithin } from './runtime/pool.ts';
import type { Device } from './runtime/providers.ts';
import { type SessionOptions, isOutOfMemory } from './runtime/session.ts';
import { moveToSharedMemory } from './runtime/shared-memory.ts';
import type { PlanarImage } from './synth/image.ts';
import { resizeBilinear } from './synth/image.ts';
import { type GmmPrior, loadPrior } from './synth/prior.ts';
import { promptStart, shownQuoted } from '../../shared/shown-text.ts';
import { PROMPT_MAX_CHARS } from '../../shared/schemas/generation.ts';

export interface EngineOptions {
  device?: Device;
  /** Threads for each session (default: all cores). */
  threads?: number;
  /** Halves weight memory at a 5–18 % speed cost (session.disable_prepacking). */
  disablePrepacking?: boolean;
  /** Share one pool between engines (the worker process does); otherwise the engine owns one. */
  pool?: EnginePool;
  /**
   * Graphs whose weights exceed this many bytes are written to a temporary .onnx with external data
   * and loaded by path (protobuf caps an in-memory model at 2 GB). Default 1.5 GiB.
   */
  inlineGraphLimitBytes?: number;
  /**
   * How many per-size step graphs stay loaded (leaseGraph; default 8). A multi-scale run visits up to
   * six sizes (a 32 px model at 1024 px: 32 … 1024), and fewer slots than a run's stages would evict
   * the next stage's graph at every stage. The least recently used idle one is unloaded beyond this.
   */
  maxLeasedGraphs?: number;
  /**
   * A shared pool only: how long close() waits for this engine's runs and compiles in flight before it
   * fails them as `aborted` (retryable), unloads its graphs and returns (default: the pool's
   * closeTimeoutMs, 30 s unless the pool was given another). A run that never returns (a hung device)
   * would otherwise hold close() forever, and with it the model registry, which closes its engines
   * before the pool. An engine that owns its pool closes it instead, which is bounded the same way.
   */
  closeTimeoutMs?: number;
}

/** Text batches are padded to one of these sizes so a handful of graphs serve every request. */
const TEXT_BATCHES = [1, 4, 16];
/** conceptEmbeddings keeps this many texts per model: a policy's concepts (at most 500) and room to spare. */
export const CONCEPT_CACHE_SIZE = 2048;

/**
 * The bundle's tokenizer, refused when it has more tokens than the model's embedding has rows, and when
 * it would fail or hold every prompt (TextTokenizer.selfCheck: a tokenizer.json @huggingface/tokenizers
 * half-reads, or a regex of its own that backtracks on prompts up to the API's longest). The latter is
 * the model's fault, said as `invalid_model` naming the tokenizer file at load (and so at `clipag
 * models push`), where each prompt would otherwise fail as the caller's (`invalid_input`: "prompt is
 * empty") or hang the worker.
 */
function bundleTokenizer(bundle: ModelBundle): TextTokenizer {
  const tokenizer = TextTokenizer.fromFile(bundle.tokenizerPath);
  if (tokenizer.vocabSize > bundle.arch.vocabSize) {
    throw new EngineError('invalid_tokenizer', `bundle ${bundle.manifest.name}: tokenizer has ${tokenizer.vocabSize} tokens but the model's embedding has ${bundle.arch.vocabSize} rows`);
  }
  const problem = tokenizer.selfCheck({ maxChars: PROMPT_MAX_CHARS });
  if (problem !== undefined) {
    throw new EngineError('invalid_model', `bundle ${bundle.manifest.name}: tokenizer ${bundle.tokenizerPath}: ${problem}`, { file: bundle.tokenizerPath });
  }
  return tokenizer;
}

export class ClipEngine {
  private readonly handles = new Map<string, Promise<EngineHandle>>();
  /** Unique per engine in this process: see fullKey. */
  private readonly instance = ++engineInstances;
  /** leaseGraph: holders per graph, and the graphs in least-recently-used order. */
  private readonly leases = new Map<string, number>();
  private readonly leasedOrder: string[] = [];
  private readonly priors = new Map<string, GmmPrior>();
  /** conceptEmbeddings' cache, in least-recently-used order (a Map iterates in insertion order). */
  private readonly concepts = new Map<string, Float32Array | null>();
  /**
   * Bundle weights converted to a graph dtype they are not stored in (a float16 bundle's, imported with
   * --keep-fp16, in float32), by name and dtype: converted once, into shared memory, so every graph of
   * this engine holds the same copy (the pool keeps each graph's IR while it is loaded) and it crosses to
   * the pool's threads without a copy. Converted per graph, each graph kept a private copy of its tower.
   */
  private readonly converted = new Map<string, TensorData>();  /** Graph compiles (build, pool load) and runs not yet settled: close() waits for them. */
  private readonly pending = new Set<Promise<unknown>>();
  private closed = false;
  private closing?: Promise<void>;
  /** Compiles and runs callers wait for: close() fails them when it stops waiting for them. */
  private readonly waiting = new Set<(why: EngineError) => void>();
  /** Set when close() stopped waiting for work in flight. */
  private gaveUp?: EngineError;

  private constructor(
    readonly bundle: ModelBundle,
    readonly tokenizer: TextTokenizer,
    readonly pool: EnginePool,
    private readonly ownsPool: boolean,
    private readonly inlineLimit: number = DEFAULT_INLINE_LIMIT_BYTES,
    private readonly maxLeasedGraphs: number = DEFAULT_MAX_LEASED_GRAPHS,
    private readonly closeTimeoutMs: number = pool.closeTimeoutMs,
  ) {
    checkEngineOptions({ maxLeasedGraphs, closeTimeoutMs });
    // Graphs go to the pool's thread as IR, which serializes them there. Weights in shared memory
    // cross to it without a copy; otherwise every compile would copy hundreds of MB on this thread.
    moveToSharedMemory(bundle.weights);
    if (bundle.foreign) moveToSharedMemory(bundle.foreign.model.initializers);
  }

  /**
   * Checks every file a synthesis with the bundle reads, without starting a session: the manifest,
   * weights (names, shapes, finite values), the tokenizer and its fit to the embedding, and the GMM
   * prior. `models push` runs it, so a bundle that could never serve a job is not uploaded.
   */
  static async check(bundleDir: string): Promise<ModelBundle> {
    const bundle = await loadBundle(bundleDir);
    bundleTokenizer(bundle);
    if (bundle.priorPath) loadPrior(bundle.priorPath);
    return bundle;
  }

  static async open(bundleDir: string, opts: EngineOptions = {}): Promise<ClipEngine> {
    const bundle = await loadBundle(bundleDir);
    const tokenizer = bundleTokenizer(bundle);
    // Options are checked before a pool (a worker thread) is started, so a refusal leaves nothing running.
    checkEngineOptions(opts);
    if (opts.pool) return new ClipEngine(bundle, tokenizer, opts.pool, false, opts.inlineGraphLimitBytes, opts.maxLeasedGraphs, opts.closeTimeoutMs);
    const pool = new EnginePool({
      size: 1,
      sessionOptions: { device: opts.device ?? 'cpu', intraOpThreads: opts.threads, disablePrepacking: opts.disablePrepacking },
      ...(opts.closeTimeoutMs !== undefined ? { closeTimeoutMs: opts.closeTimeoutMs } : {}),
    });
    try {
      return new ClipEngine(bundle, tokenizer, pool, true, opts.inlineGraphLimitBytes, opts.maxLeasedGraphs);
    } catch (e) {
      await pool.close();
      throw e;
    }
  }

  get name(): string {
    return this.bundle.manifest.name;
  }
  get imageSize(): number {
    return this.bundle.arch.imageResolution;
  }
  get embedDim(): number {
    return this.bundle.arch.embedDim;
  }

  towerSource(): TowerSource {
    const { arch, manifest } = this.bundle;
    return { arch, weights: this.weights, mean: manifest.preprocess.mean, std: manifest.preprocess.std, foreign: this.bundle.foreign };
  }

  /** The bundle's weights, in the dtype a graph asks for (see `converted`). */
  private readonly weights: WeightLookup = (name: string, dtype?: DType): TensorData => {
    const t = weightLookup(this.bundle)(name);
    if (dtype === undefined || t.dtype === dtype) return t;
    const key = `${dtype}:${name}`;
    let c = this.converted.get(key);
    if (!c) {
      // The same values castTensor gives any graph, once.
      c = castTensor(t, dtype, { shared: true });
      if (!this.closed) this.converted.set(key, c);
    }
    return c;
  };

  /** A compiled graph, built and loaded on first use. `key` must identify the graph's shape. */
  graph(key: string, build: () => ModelIR, sessionOptions: SessionOptions = {}): Promise<EngineHandle> {
    if (this.closed) return Promise.reject(closedError());
    const full = this.fullKey(key);
    let h = this.handles.get(full);
    if (!h) {
      const compiling = Promise.resolve().then(async () => {
        // Only the IR is built on this thread (tens of ms at ViT-B/32 size): the pool's thread encodes
        // it (1-2 s there), or writes it to a temporary file when it is too large to load from memory.
        const model = build();
        // close() may have come while the graph was built: then nothing is loaded.
        if (this.closed) throw closedError();
        const loaded = await this.pool.load(full, model, sessionOptions, { inlineLimitBytes: this.inlineLimit });
        // ...or while the pool loaded it: then it is unloaded here, since close() had no key to unload yet.
        if (this.closed) {
          await this.pool.unload(full).catch(() => undefined);
          throw closedError();
        }
        return this.guarded(loaded);
      });
      // A compile close() gave up waiting for (its load queued behind a run that does not return) still
      // unloads what it loaded when it ends; its callers do not wait for that.
      const loading = this.abandonable(compiling);
      h = loading;
      this.track(loading);
      this.handles.set(full, loading);
      loading.catch(() => {
        if (this.handles.get(full) === loading) this.handles.delete(full);
      });
    }
    return h;
  }

  /** `p`, or the reason close() stopped waiting for work in flight if that comes first. */
  private abandonable<T>(p: Promise<T>): Promise<T> {
    if (this.gaveUp) return Promise.reject(this.gaveUp);
    return new Promise<T>((resolve, reject) => {
      this.waiting.add(reject);
      p.then(
        (v) => {
          this.waiting.delete(reject);
          resolve(v);
        },
        (e: unknown) => {
          this.waiting.delete(reject);
          reject(e);
        },
      );
    });
  }

  /** close() stops waiting: every compile and run still in flight fails with `why`. */
  private giveUp(why: EngineError): void {
    this.gaveUp = why;
    for (const reject of this.waiting) reject(why);
    this.waiting.clear();
  }

  /** Remembers `p` until it settles, so close() can wait for it. */
  private track(p: Promise<unknown>): void {
    this.pending.add(p);
    const done = (): void => void this.pending.delete(p);
    p.then(done, done);
  }

  /**
   * `h` with runs refused once the engine is closed, and a run that fails because the engine was
   * closed under it (its session unloaded, its pool closed) reported as `aborted` (retryable: the
   * engine went away, the request is fine) rather than as the pool's error for a missing session.
   */
  private guarded(h: EngineHandle): EngineHandle {
    return {
      key: h.key,
      inputNames: h.inputNames,
      outputNames: h.outputNames,
      run: (feeds, fetches, opts) => {
        if (this.closed) return Promise.reject(closedError());
        const running = this.abandonable(h.run(feeds, fetches, opts)).catch((e: unknown) => {
          throw this.closed ? closedError(e) : e;
        });
        this.track(running);
        return running;
      },
    };
  }

  /**
   * A graph held for a stretch of runs (a synthesis stage). Graphs loaded this way are per output
   * size, so they are kept in a least-recently-used list: beyond `maxLeasedGraphs` the oldest one no
   * lease holds is unloaded. Without this every new request size kept its compiled session (tens of
   * MB for the toy model, hundreds for ViT-B/32) for the life of the worker.
   */
  async leaseGraph(key: string, build: () => ModelIR, sessionOptions: SessionOptions = {}): Promise<{ handle: EngineHandle; release(): void }> {
    const full = this.fullKey(key);
    this.leases.set(full, (this.leases.get(full) ?? 0) + 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const n = (this.leases.get(full) ?? 1) - 1;
      if (n > 0) this.leases.set(full, n);
      else this.leases.delete(full);
      void this.evictIdleGraphs();
    };
    let handle: EngineHandle;
    try {
      handle = await this.graph(key, build, sessionOptions).catch(async (error: unknown) => {
        // Out of memory: the idle step graphs' sessions may hold what this load needs. Once.
        if (!outOfMemory(error) || (await this.unloadIdleGraphs()) === 0) throw error;
        return this.graph(key, build, sessionOptions);
      });
    } catch (error) {
      release();
      throw error;
    }
    const at = this.leasedOrder.indexOf(full);
    if (at >= 0) this.leasedOrder.splice(at, 1);
    this.leasedOrder.push(full);
    await this.evictIdleGraphs();
    return { handle: this.freeingOnOutOfMemory(handle), release };
  }

  /**
   * `h`, whose run, when it fails out of memory while idle leased graphs are loaded, unloads them and
   * runs once more (a second failure is the caller's). Feeds sent with `transfer` are detached once
   * sent, so a retry needs a copy: only the lease's first run keeps one, since a session grows its
   * memory at its first run (onnxruntime's arena) and later runs of the same shapes reuse it. A later
   * run that fails out of memory still frees the idle graphs, so the job's retry finds the memory.
   */
  private freeingOnOutOfMemory(h: EngineHandle): EngineHandle {
    let first = true;
    return {
      key: h.key,
      inputNames: h.inputNames,
      outputNames: h.outputNames,
      run: async (feeds, fetches, opts) => {
        const spare = first && opts?.transfer && this.idleLeasedGraphs().length > 0 ? copyFeeds(feeds) : undefined;
        first = false;
        try {
          return await h.run(feeds, fetches, opts);
        } catch (error) {
          if (!outOfMemory(error) || (await this.unloadIdleGraphs()) === 0) throw error;
          const again = opts?.transfer ? spare : feeds;
          if (!again) throw error;
          return h.run(again, fetches, opts);
        }
      },
    };
  }

  /** Leased graphs no lease holds, least recently used first. */
  private idleLeasedGraphs(): string[] {
    return this.leasedOrder.filter((k) => !this.leases.has(k));
  }

  /**
   * Unloads every leased graph no lease holds (a stage's own graph stays), for a load or run that ran
   * out of memory: each idle step graph keeps its session's memory (its activation arena: about 175 MB
   * on the toy model at 64 views, GBs at ViT-B/32 size), which is what the failed call needed.
   * Returns how many it unloaded.
   */
  private async unloadIdleGraphs(): Promise<number> {
    if (this.closed) return 0;
    const idle = this.idleLeasedGraphs();
    for (const k of idle) {
      this.leasedOrder.splice(this.leasedOrder.indexOf(k), 1);
      this.handles.delete(k);
    }
    await Promise.all(idle.map((k) => this.pool.unload(k).catch(() => undefined)));
    return idle.length;
  }

  private async evictIdleGraphs(): Promise<void> {
    while (this.leasedOrder.length > this.maxLeasedGraphs && !this.closed) {
      const victim = this.leasedOrder.find((k) => !this.leases.has(k));
      if (victim === undefined) return; // all in use
      this.leasedOrder.splice(this.leasedOrder.indexOf(victim), 1);
      this.handles.delete(victim);
      await this.pool.unload(victim).catch(() => undefined);
    }
  }

  /** Graphs loaded through leaseGraph, least recently used first. */
  get leasedGraphs(): readonly string[] {
    return this.leasedOrder;
  }

  /** Every graph this engine has compiled and holds (embedding and gradient ones alike), by key. */
  get loadedGraphs(): readonly string[] {
    return [...this.handles.keys()];
  }

  /**
   * Pool keys are this engine's own: two engines of one bundle content (a re-push that changed only
   * the prior or the tokenizer) must not share sessions, or closing the old one would unload the new
   * one's.
   */
  private fullKey(key: string): string {
    return `${this.bundle.contentHash.slice(0, 16)}#${this.instance}:${key}`;
  }

  /**
   * The GMM prior at `path`, parsed once per engine (the worker reuses it across jobs instead of
   * re-reading and re-validating a multi-MB file on the main thread for every job).
   */
  prior(path: string): GmmPrior {
    let mtime: number;
    try {
      mtime = statSync(path).mtimeMs;
    } catch {
      throw new EngineError('invalid_model', `GMM prior file ${path} cannot be read; fit one with clipag prior fit or use init "noise"`);
    }
    const key = `${path}:${mtime}`;
    let p = this.priors.get(key);
    if (!p) {
      p = loadPrior(path);
      this.priors.set(key, p);
    }
    return p;
  }

  /**
   * What this model cannot read of the prompts, in words a caller can act on: words outside its
   * vocabulary (they become the unknown token), prompts cut at its context length, and the special
   * tokens' texts typed into a prompt (after "<|endoftext|>" it reads nothing). Encoding does all of it
   * silently, as CLIP does, so this is how a user learns why "a cat" draws nothing cat-like.
   */
  promptWarnings(texts: readonly string[]): string[] {
    // The first ten, each cut like a prompt: a 1 000-letter "word" (no spaces) is one word to the tokenizer.
    const shownList = (words: string[]): string =>
      words.slice(0, 10).map((w) => shownQuoted(promptStart(w, SHOWN_WORD_CODE_POINTS))).join(', ') + (words.length > 10 ? ', …' : '');
    const L = this.bundle.arch.contextLength;
    const warnings: string[] = [];
    let vocabularyTold = false;
    for (const full of texts) {
      const r = this.tokenizer.inspect(full, L);
      // A long prompt is named by its start, not echoed whole in every warning.
      const text = shownQuoted(promptStart(full));
      // Punctuation is no word to draw: said apart ("." is read as an unknown token, left out it is not).
      const signs = r.unknownWords.filter((w) => !/[\p{L}\p{N}]/u.test(w));
      const unknown = r.unknownWords.filter((w) => /[\p{L}\p{N}]/u.test(w));
      if (unknown.length > 0) {
        const words = shownList(unknown);
        // A small model's whole vocabulary (the toy's 40-odd words) tells the caller what it can draw instead; once per call.
        const known: readonly string[] | undefined = vocabularyTold ? undefined : this.tokenizer.knownWords(SMALL_VOCABULARY_WORDS);
        vocabularyTold ||= known !== undefined;
        const instead = known ? `; it knows only: ${known.filter((w) => /[\p{L}\p{N}]/u.test(w)).join(' ')}` : '';
        warnings.push(`${text}: model ${this.name} does not know ${unknown.length === 1 ? 'the word' : 'the words'} ${words}, so it cannot draw ${unknown.length === 1 ? 'it' : 'them'}${instead}`);
      }
      if (signs.length > 0) {
        warnings.push(`${text}: model ${this.name} does not read ${shownList(signs)} (an unknown token to it); leave ${signs.length === 1 ? 'it' : 'them'} out`);
      }
      if (r.truncated) warnings.push(`${text}: ${r.tokens} tokens, more than model ${this.name}'s context of ${L}; it reads only the first ${L - 2}`);
      // Typed into a prompt, the special tokens' texts are read as those tokens (as openai/CLIP does).
      if (r.endTokenText) warnings.push(`${text}: contains ${JSON.stringify(r.endTokenText)}, which model ${this.name} reads as its end token: it ignores everything after it`);
      if (r.startTokenText) warnings.push(`${text}: contains ${JSON.stringify(r.startTokenText)}, which model ${this.name} reads as its start token, not as words`);
      // As the start token: "<pad>" typed is read as the padding token, and a prompt of nothing else is refused (encode).
      for (const s of r.specialTokens ?? []) warnings.push(`${text}: contains ${JSON.stringify(s.text)}, which model ${this.name} reads as its ${s.role}, not as words`);
    }
    return warnings;
  }

  /** Unit-normalized text embeddings [n, E] and the raw features. */
  async embedText(texts: readonly string[]): Promise<{ unit: Float32Array; raw: Float32Array }> {
    if (texts.length === 0) throw new EngineError('invalid_input', 'embedText needs at least one text');
    const L = this.bundle.arch.contextLength;
    const E = this.embedDim;
    const raw = new Float32Array(texts.length * E);
    const maxBatch = TEXT_BATCHES[TEXT_BATCHES.length - 1];
    for (let start = 0; start < texts.length; start += maxBatch) {
      const chunk = texts.slice(start, start + maxBatch);
      const batch = TEXT_BATCHES.find((b) => b >= chunk.length)!;
      const enc = this.tokenizer.encodeBatch(chunk, { contextLength: L });
      const tokens = new BigInt64Array(batch * L);
      const eot = new BigInt64Array(batch);
      for (let r = 0; r < batch; r++) {
        const src = r < chunk.length ? r : 0; // pad with copies of the first row
        for (let c = 0; c < L; c++) tokens[r * L + c] = BigInt(enc.ids[src * L + c]);
        eot[r] = BigInt(r * L + enc.eotIndex[src]);
      }
      const h = await this.graph(`text:b${batch}`, () => textEmbedGraph(this.towerSource(), batch));
      const out = await h.run({ tokens: { dtype: 'int64', dims: [batch, L], data: tokens }, eot_index: { dtype: 'int64', dims: [batch], data: eot } });
      raw.set((out.text_features.data as Float32Array).subarray(0, chunk.length * E), start * E);
    }
    this.checkTextFeatures(texts, raw);
    return { unit: normalizeRows(raw, E), raw };
  }

  /**
   * Refuses text features that have no direction: a zero (or vanishing) vector, say from an all-zero
   * text_projection, would normalize to a zero "unit" target, and every synthesis would optimize
   * nothing (its gradient is 0) and still report success; a non-finite one would fail at step 0
   * blaming the seed. Both come from the model's weights, not from the prompt.
   */
  private checkTextFeatures(texts: readonly string[], raw: Float32Array): void {
    const E = this.embedDim;
    for (let r = 0; r < texts.length; r++) {
      let s = 0;
      for (let k = 0; k < E; k++) s += raw[r * E + k]! ** 2;
      // By its place, never its words: this message goes to the worker's log, which outlives a
      // generation's DELETE, and a prompt may be personal data (ADR 0021). The fault is the weights'.
      const which = `text ${r + 1} of ${texts.length}`;
      if (!Number.isFinite(s)) {
        throw new EngineError('numerical_error', `model ${this.name}: the text tower produces a non-finite embedding for ${which}; its weights overflow (check the bundle's text weights, or re-import it)`, { model: this.name });
      }
      if (Math.sqrt(s) < MIN_TEXT_FEATURE_NORM) {
        throw new EngineError('invalid_model', `model ${this.name}: the text tower produces a zero embedding for ${which} (norm ${Math.sqrt(s).toExponential(1)}), so no prompt can steer an image; its text weights are broken (an all-zero text_projection?): re-export or re-import the model`, { model: this.name });
      }
    }
  }

  /**
   * Unit text embeddings [E] of texts asked about job after job (the output policy's concepts),
   * cached by text, the least recently used dropped past CONCEPT_CACHE_SIZE. null for a text the
   * model cannot read whole: a word outside its vocabulary (its embedding would rest on the unknown
   * token), nothing left after cleaning (or before a literal "<|endoftext|>"), or more tokens than its
   * context (the end would be cut off unseen). A check against such an embedding would mean nothing.
   */
  async conceptEmbeddings(texts: readonly string[]): Promise<Array<Float32Array | null>> {
    const L = this.bundle.arch.contextLength;
    const E = this.embedDim;
    // Values are taken from the cache before any await, so a concurrent call cannot evict them from under this one.
    const found = new Map<string, Float32Array | null>();
    for (const t of texts) if (this.concepts.has(t)) found.set(t, this.concepts.get(t)!);
    const missing = [...new Set(texts.filter((t) => !found.has(t)))];
    const readable: string[] = [];
    for (const t of missing) {
      const r = this.tokenizer.inspect(t, L);
      if (r.unknownWords.length === 0 && !r.truncated && r.tokens > 2 && !r.nothingBeforeEnd && !r.noWords) readable.push(t);
      else found.set(t, null);
    }
    // One at a time, through the batch-1 text graph every prompt compiles anyway: a larger batch would
    // compile a graph of its own first (about 5 s at ViT-B/32 size on 2 CPU threads: bench:concepts).
    for (const t of readable) found.set(t, (await this.embedText([t])).unit.slice(0, E));
    for (const [t, v] of found) {
      this.concepts.delete(t); // most recently used goes last
      this.concepts.set(t, v);
    }
    for (const key of this.concepts.keys()) {
      if (this.concepts.size <= CONCEPT_CACHE_SIZE) break;
      this.concepts.delete(key);
    }
    return texts.map((t) => found.get(t)!);
  }

  /** Embeds images (resized to the encoder size with antialiasing). */
  async embedImages(images: PlanarImage[]): Promise<{ unit: Float32Array; raw: Float32Array }> {
    const R = this.imageSize;
    const E = this.embedDim;
    const raw = new Float32Array(images.length * E);
    const B = 16;
    for (let start = 0; start < images.length; start += B) {
      const chunk = images.slice(start, start + B);
      const batch = chunk.length === 1 ? 1 : B;
      const px = new Float32Array(batch * 3 * R * R);
      chunk.forEach((img, i) => {
        checkImage(img);
        const r = img.width === R && img.height === R ? img : resizeBilinear(img, R, R);
        px.set(r.data, i * 3 * R * R);
      });
      const h = await this.graph(`image:b${batch}`, () => imageEmbedGraph(this.towerSource(), batch));
      const out = await h.run({ pixels: { dtype: 'float32', dims: [batch, 3, R, R], data: px } }, undefined, { transfer: true });
      raw.set((out.image_features.data as Float32Array).subarray(0, chunk.length * E), start * E);
    }
    return { unit: normalizeRows(raw, E), raw };
  }

  /** Run a batch of encoder-size pixel tensors [n,3,R,R] through the image embed graph (n ≤ batch). */
  async embedPixels(pixels: Float32Array, n: number, batch: number): Promise<Float32Array> {
    const R = this.imageSize;
    const h = await this.graph(`image:b${batch}`, () => imageEmbedGraph(this.towerSource(), batch));
    const px = pixels.length === batch * 3 * R * R ? pixels : (() => {
      const p = new Float32Array(batch * 3 * R * R);
      p.set(pixels.subarray(0, n * 3 * R * R));
      return p;
    })();
    const out = await h.run({ pixels: { dtype: 'float32', dims: [batch, 3, R, R], data: px } });
    return normalizeRows((out.image_features.data as Float32Array).slice(0, n * this.embedDim), this.embedDim);
  }

  /**
   * Releases this engine's sessions: the whole pool when the engine owns it, otherwise its own graphs
   * in the shared pool (a registry closing a superseded engine must get its memory back). Idempotent.
   * On a shared pool it waits for its runs and compiles in flight up to closeTimeoutMs: past that they
   * fail as `aborted`, and its graphs are unloaded anyway (each once the runs already on its thread
   * have returned, if ever; close() does not wait for that).
   */
  close(): Promise<void> {
    // Every call gets the one close, so a second caller does not go on before anything is released.
    this.closing ??= (async () => {
      this.closed = true; // before any await: graph() and runs are refused from here on
      const deadline = performance.now() + this.closeTimeoutMs;
      // An owned pool is closed first: its close waits for the runs and loads in flight, but only so
      // long, so that a run that never returns (a hung device) cannot hold this close forever.
      if (this.ownsPool) await this.pool.close();
      // Compiles in flight load nothing more once they see `closed` (a load already sent is unloaded by
      // the compile itself), and runs in flight finish before their sessions are released under them.
      const drain = async (): Promise<void> => {
        while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
      };
      // (After an owned pool's close nothing of it is left running: what is pending settles at once.)
      if (this.ownsPool) await drain();
      else if (!(await settlesWithin(drain(), deadline - performance.now()))) {
        this.giveUp(new EngineError('aborted', `the engine closed after waiting ${this.closeTimeoutMs} ms for its work in flight (a run that does not return: a hung device or native call)`));
      }
      const keys = [...this.handles.keys()];
      this.handles.clear();
      this.leasedOrder.length = 0;
      this.converted.clear();
      if (this.ownsPool) return;
      const unloads = Promise.all(keys.map((k) => this.pool.unload(k).catch(() => undefined)));
      await settlesWithin(unloads, deadline - performance.now());
    })();
    return this.closing;
  }
}

/** A word-level vocabulary this small is listed whole in an unknown-word warning. */
const SMALL_VOCABULARY_WORDS = 200;
/** How much of one unknown word a warning quotes, in code points (the prompt itself is cut at 80). */
const SHOWN_WORD_CODE_POINTS = 40;

/** A load's or run's failure for want of device (or host) memory. */
function outOfMemory(error: unknown): boolean {
  return error instanceof EngineError && error.code === 'runtime_failed' && isOutOfMemory(error.message);
}

/** Copies of `feeds`' data, for a run again after the originals were transferred away. */
function copyFeeds(feeds: Record<string, TensorData>): Record<string, TensorData> {
  return Object.fromEntries(Object.entries(feeds).map(([name, t]) => [name, { ...t, dims: [...t.dims], data: t.data.slice() }]));
}

function closedError(cause?: unknown): EngineError {
  const why = cause instanceof Error ? ` (${cause.message})` : '';
  return new EngineError('aborted', `engine is closed; open the model again${why}`);
}

/** The options the engine refuses, checked before anything (a pool's worker thread) is started. */
function checkEngineOptions(opts: Pick<EngineOptions, 'maxLeasedGraphs' | 'inlineGraphLimitBytes' | 'closeTimeoutMs'>): void {
  const { maxLeasedGraphs, inlineGraphLimitBytes, closeTimeoutMs } = opts;
  if (closeTimeoutMs !== undefined && !(typeof closeTimeoutMs === 'number' && Number.isFinite(closeTimeoutMs) && closeTimeoutMs >= 0)) {
    throw new EngineError('invalid_input', `closeTimeoutMs must be a non-negative number, got ${closeTimeoutMs}`);
  }
  if (maxLeasedGraphs !== undefined && !(Number.isInteger(maxLeasedGraphs) && maxLeasedGraphs >= 1)) {
    throw new EngineError('invalid_input', `maxLeasedGraphs must be a positive integer, got ${maxLeasedGraphs}`);
  }
  if (inlineGraphLimitBytes !== undefined && !(typeof inlineGraphLimitBytes === 'number' && inlineGraphLimitBytes >= 0)) {
    throw new EngineError('invalid_input', `inlineGraphLimitBytes must be a non-negative number, got ${inlineGraphLimitBytes}`);
  }
}

const DEFAULT_MAX_LEASED_GRAPHS = 8;
/** Text features shorter than this have no usable direction (real CLIP features have norms of order 1–10). */
const MIN_TEXT_FEATURE_NORM = 1e-12;
let engineInstances = 0;

export function normalizeRows(x: Float32Array, d: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < x.length / d; r++) {
    let s = 0;
    for (let k = 0; k < d; k++) s += x[r * d + k] ** 2;
    const inv = 1 / Math.sqrt(Math.max(s, 1e-30));
    for (let k = 0; k < d; k++) out[r * d + k] = x[r * d + k] * inv;
  }
  return out;
}

export function checkImage(img: PlanarImage): void {
  if (!Number.isInteger(img.width) || !Number.isInteger(img.height) || img.width < 1 || img.height < 1 || img.data.length !== 3 * img.width * img.height) {
    throw new EngineError('invalid_input', `image must be 3×H×W planar data; got ${img.width}×${img.height} with ${img.data.length} values`);
  }
  for (let i = 0; i < img.data.length; i++) {
    const v = img.data[i];
    if (!Number.isFinite(v)) throw new EngineError('invalid_input', `image has a non-finite pixel value (${v}) at index ${i}; pixels must be finite numbers in [0, 1]`);
  }
}

export type { TensorData };
