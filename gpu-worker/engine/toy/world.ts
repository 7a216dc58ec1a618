// The procedural captioned world the toy CLIPs and the judge are trained on (docs/toy-model.md).
// 64×64 RGB scenes with one or two flat objects on a plain, gradient or lightly textured background,
// deterministic from an Rng; captions from a small grammar with synonyms. Some (shape, colour) pairs are
// held out of CLIP training entirely so that the evaluation can test composition.

import { writeFileSync } from 'node:fs';
import { EngineError } from '../errors.ts';
import { type PlanarImage, createImage } from '../synth/image.ts';
import { Rng } from '../synth/rng.ts';

export const WORLD_SIZE = 64;
export const WORLD_VERSION = 1;

export const SHAPES = ['circle', 'square', 'triangle', 'star', 'ring', 'cross'] as const;
export const COLOURS = ['red', 'orange', 'yellow', 'green', 'cyan', 'blue', 'purple', 'white'] as const;
export const SIZES = ['small', 'large'] as const;
export const POSITIONS = ['left', 'right', 'top', 'bottom', 'centre'] as const;
export const BACKGROUNDS = ['plain', 'gradient', 'texture'] as const;
export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];
export type Size = (typeof SIZES)[number];
export type Position = (typeof POSITIONS)[number];
export type Background = (typeof BACKGROUNDS)[number];

export const COLOUR_RGB: Record<Colour, [number, number, number]> = {
  red: [0.9, 0.12, 0.1],
  orange: [1.0, 0.55, 0.05],
  yellow: [0.95, 0.92, 0.12],
  green: [0.15, 0.78, 0.2],
  cyan: [0.1, 0.85, 0.9],
  blue: [0.15, 0.3, 0.95],
  purple: [0.62, 0.2, 0.88],
  white: [0.97, 0.97, 0.97],
};

/** (shape, colour) pairs never drawn in CLIP training: one per shape, each colour at most once. */
/** Every (shape, colour) pair, shape-major: the 48 zero-shot prompts "a COLOUR SHAPE" in this order. */
export const SHAPE_COLOUR_PAIRS: ReadonlyArray<readonly [Shape, Colour]> = SHAPES.flatMap((s) => COLOURS.map((c) => [s, c] as const));

export const HELD_OUT: ReadonlyArray<readonly [Shape, Colour]> = [
  ['circle', 'purple'],
  ['square', 'orange'],
  ['triangle', 'blue'],
  ['star', 'green'],
  ['ring', 'red'],
  ['cross', 'yellow'],
];
export function isHeldOut(shape: Shape, colour: Colour): boolean {
  return HELD_OUT.some(([s, c]) => s === shape && c === colour);
}

export interface WorldObject {
  shape: Shape;
  colour: Colour;
  size: Size;
  position: Position;
}
export interface Scene {
  objects: WorldObject[];
  background: Background;
}

/** What a caption names about one object (shape and colour always; size and position optionally). */
export interface NamedObject {
  shape: Shape;
  colour: Colour;
  size?: Size;
  position?: Position;
}
export interface Caption {
  text: string;
  objects: NamedObject[];
}

// ---- sampling ------------------------------------------------------------------------------------

export interface SceneOptions {
  /** Allow the HELD_OUT pairs (the judge's world; false for CLIP training). Default false. */
  allowHeldOut?: boolean;
  /** Probability of a two-object scene (default 0.3; the judge uses 0). */
  twoObjectRate?: number;
}

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[rng.int(xs.length)];

export function sampleObject(rng: Rng, opts: SceneOptions, position?: Position): WorldObject {
  for (;;) {
    const shape = pick(rng, SHAPES);
    const colour = pick(rng, COLOURS);
    if (!opts.allowHeldOut && isHeldOut(shape, colour)) continue;
    return { shape, colour, size: pick(rng, SIZES), position: position ?? pick(rng, POSITIONS) };
  }
}

export function sampleScene(rng: Rng, opts: SceneOptions = {}): Scene {
  const background = pick(rng, BACKGROUNDS);
  if (rng.next() < (opts.twoObjectRate ?? 0.3)) {
    const [p1, p2] = rng.next() < 0.5 ? (['left', 'right'] as const) : (['top', 'bottom'] as const);
    const a = sampleObject(rng, opts, p1);
    let b = sampleObject(rng, opts, p2);
    while (b.shape === a.shape && b.colour === a.colour) b = sampleObject(rng, opts, p2);
    return { objects: rng.next() < 0.5 ? [a, b] : [b, a], background };
  }
  return { objects: [sampleObject(rng, opts)], background };
}

// ---- rendering -----------------------------------------------------------------------------------

const CENTRES: Record<Position, [number, number]> = {
  left: [18, 32],
  right: [46, 32],
  top: [32, 18],
  bottom: [32, 46],
  centre: [32, 32],
};
const RADIUS: Record<Size, [number, number]> = { small: [5, 7], large: [11, 14] };

/** Signed distance (pixels, < 0 inside) of a shape of radius r centred at the origin; y points down. */
function sdf(shape: Shape, x: number, y: number, r: number): number {
  switch (shape) {
    case 'circle':
      return Math.hypot(x, y) - r;
    case 'square': {
      const h = r * 0.86;
      const dx = Math.abs(x) - h, dy = Math.abs(y) - h;
      return Math.hypot(Math.max(dx, 0), Math.max(dy, 0)) + Math.min(Math.max(dx, dy), 0);
    }
    case 'triangle': {
      // equilateral, pointing up (iq's sdEquilateralTriangle with y flipped), circumradius ≈ 1.15 r
      const k = Math.sqrt(3);
      const s = r * 1.15 * (k / 2); // half side
      let px = Math.abs(x) - s;
      let py = -y + s / k;
      if (px + k * py > 0) [px, py] = [(px - k * py) / 2, (-k * px - py) / 2];
      px -= Math.min(Math.max(px, -2 * s), 0);
      return -Math.hypot(px, py) * Math.sign(py);
    }
    case 'star': {
      // five points, outer radius 1.15 r, inner 0.5 r; radial distance to the polar outline
      const a = Math.atan2(x, -y);
      const seg = (2 * Math.PI) / 5;
      let t = ((a % seg) + seg) % seg;
      t = Math.abs(t - seg / 2) / (seg / 2); // 1 at a point, 0 between points
      const ro = r * 1.15, ri = r * 0.5;
      return Math.hypot(x, y) - (ri + (ro - ri) * t);
    }
    case 'ring':
      return Math.abs(Math.hypot(x, y) - r * 0.72) - r * 0.3;
    case 'cross': {
      const arm = r * 0.34;
      const box = (hx: number, hy: number) => {
        const dx = Math.abs(x) - hx, dy = Math.abs(y) - hy;
        return Math.hypot(Math.max(dx, 0), Math.max(dy, 0)) + Math.min(Math.max(dx, dy), 0);
      };
      return Math.min(box(r, arm), box(arm, r));
    }
  }
}

function backgroundColour(rng: Rng): [number, number, number] {
  const v = rng.uniform(0.12, 0.45);
  return [v + rng.uniform(-0.06, 0.06), v + rng.uniform(-0.06, 0.06), v + rng.uniform(-0.06, 0.06)];
}

/** Render a scene into `out` (3×64×64, CHW) or a new image. Geometry jitter is drawn from `rng`. */
export function renderScene(scene: Scene, rng: Rng, out?: PlanarImage): PlanarImage {
  const S = WORLD_SIZE;
  const img = out ?? createImage(S, S);
  const d = img.data;
  const P = S * S;
  // background
  const c0 = backgroundColour(rng);
  if (scene.background === 'plain') {
    for (let c = 0; c < 3; c++) d.fill(c0[c], c * P, (c + 1) * P);
  } else if (scene.background === 'gradient') {
    const c1 = backgroundColour(rng);
    const ang = rng.uniform(0, 2 * Math.PI);
    const ux = Math.cos(ang), uy = Math.sin(ang);
    for (let y = 0; y < S; y++)
      for (let x = 0; x < S; x++) {
        const t = Math.min(1, Math.max(0, 0.5 + ((x - 31.5) * ux + (y - 31.5) * uy) / 64));
        for (let c = 0; c < 3; c++) d[c * P + y * S + x] = c0[c] * (1 - t) + c1[c] * t;
      }
  } else {
    // light texture: bilinear value noise on an 8×8 lattice plus faint stripes
    const lat = new Float32Array(9 * 9);
    for (let i = 0; i < lat.length; i++) lat[i] = rng.uniform(-0.07, 0.07);
    const freq = rng.uniform(0.2, 0.6), phase = rng.uniform(0, 6.3), ang = rng.uniform(0, Math.PI);
    const sx = Math.cos(ang), sy = Math.sin(ang);
    for (let y = 0; y < S; y++)
      for (let x = 0; x < S; x++) {
        const gx = x / 8, gy = y / 8, ix = Math.floor(gx), iy = Math.floor(gy), fx = gx - ix, fy = gy - iy;
        const n =
          lat[iy * 9 + ix] * (1 - fx) * (1 - fy) + lat[iy * 9 + ix + 1] * fx * (1 - fy) +
          lat[(iy + 1) * 9 + ix] * (1 - fx) * fy + lat[(iy + 1) * 9 + ix + 1] * fx * fy;
        const s = 0.025 * Math.sin(freq * (x * sx + y * sy) + phase);
        for (let c = 0; c < 3; c++) d[c * P + y * S + x] = c0[c] + n + s;
      }
  }
  // objects, with anti-aliased edges (coverage from the signed distance)
  for (const o of scene.objects) {
    const [cx0, cy0] = CENTRES[o.position];
    const cx = cx0 + rng.uniform(-3, 3), cy = cy0 + rng.uniform(-3, 3);
    const [rlo, rhi] = RADIUS[o.size];
    const r = rng.uniform(rlo, rhi);
    const rgb = COLOUR_RGB[o.colour].map((v) => v + rng.uniform(-0.05, 0.05));
    const x0 = Math.max(0, Math.floor(cx - r * 1.3)), x1 = Math.min(S - 1, Math.ceil(cx + r * 1.3));
    const y0 = Math.max(0, Math.floor(cy - r * 1.3)), y1 = Math.min(S - 1, Math.ceil(cy + r * 1.3));
    for (let y = y0; y <= y1; y++)
      for (let x = x0; x <= x1; x++) {
        const a = Math.min(1, Math.max(0, 0.5 - sdf(o.shape, x + 0.5 - cx, y + 0.5 - cy, r)));
        if (a <= 0) continue;
        for (let c = 0; c < 3; c++) {
          const i = c * P + y * S + x;
          d[i] = d[i] * (1 - a) + rgb[c] * a;
        }
      }
  }
  for (let i = 0; i < d.length; i++) d[i] = Math.min(1, Math.max(0, d[i]));
  return img;
}

// ---- captions ------------------------------------------------------------------------------------

export const SYNONYMS = {
  size: { small: ['small', 'little', 'tiny'], large: ['large', 'big'] } as Record<Size, string[]>,
  shape: {
    circle: ['circle', 'disc'],
    square: ['square', 'box'],
    triangle: ['triangle'],
    star: ['star'],
    ring: ['ring', 'donut'],
    cross: ['cross', 'plus'],
  } as Record<Shape, string[]>,
  colour: {
    red: ['red'], orange: ['orange'], yellow: ['yellow'], green: ['green'], cyan: ['cyan'], blue: ['blue'],
    purple: ['purple', 'violet'], white: ['white'],
  } as Record<Colour, string[]>,
  /** Prepositional phrases ("a red star on the left") and bare words ("red star, left"). */
  position: {
    left: [['on the left', 'at the left'], ['left']],
    right: [['on the right', 'at the right'], ['right']],
    top: [['at the top', 'on top'], ['top']],
    bottom: [['at the bottom', 'on the bottom'], ['bottom']],
    centre: [['in the centre', 'in the center', 'in the middle'], ['centre', 'center', 'middle']],
  } as Record<Position, [string[], string[]]>,
};
const PREFIXES = ['', '', '', 'a picture of', 'an image of', 'a photo of'];

function article(next: string): string {
  return /^[aeiou]/.test(next) ? 'an' : 'a';
}

function phrase(rng: Rng, o: NamedObject, bare: boolean): string {
  const words: string[] = [];
  if (o.size) words.push(pick(rng, SYNONYMS.size[o.size]));
  words.push(pick(rng, SYNONYMS.colour[o.colour]), pick(rng, SYNONYMS.shape[o.shape]));
  let s = words.join(' ');
  if (!bare) s = `${article(s)} ${s}`;
  if (o.position) s += bare ? `, ${pick(rng, SYNONYMS.position[o.position][1])}` : ` ${pick(rng, SYNONYMS.position[o.position][0])}`;
  return s;
}

/** Render named objects as text (one of the grammar's forms). */
export function captionText(rng: Rng, objects: NamedObject[]): string {
  if (objects.length === 1) {
    const bare = rng.next() < 0.3;
    const core = phrase(rng, objects[0], bare);
    const prefix = bare ? '' : pick(rng, PREFIXES);
    return prefix ? `${prefix} ${core}` : core;
  }
  const prefix = pick(rng, PREFIXES);
  const core = objects.map((o) => phrase(rng, o, false)).join(' and ');
  return prefix ? `${prefix} ${core}` : core;
}

/** A caption for a scene: shape and colour always, size with p 0.6, position with p 0.6 (both objects alike). */
export function sampleCaption(rng: Rng, scene: Scene): Caption {
  const namePos = rng.next() < 0.6;
  const objects: NamedObject[] = scene.objects.map((o) => {
    const n: NamedObject = { shape: o.shape, colour: o.colour };
    if (rng.next() < 0.6) n.size = o.size;
    if (namePos) n.position = o.position;
    return n;
  });
  return { text: captionText(rng, objects), objects };
}

function matches(n: NamedObject, o: WorldObject): boolean {
  return n.shape === o.shape && n.colour === o.colour && (!n.size || n.size === o.size) && (!n.position || n.position === o.position);
}

/** Whether a caption is a true description of a scene (same object count, every named attribute right). */
export function describes(caption: Pick<Caption, 'objects'>, scene: Scene): boolean {
  const c = caption.objects, s = scene.objects;
  if (c.length !== s.length) return false;
  if (c.length === 1) return matches(c[0], s[0]);
  return (matches(c[0], s[0]) && matches(c[1], s[1])) || (matches(c[0], s[1]) && matches(c[1], s[0]));
}

/** Parse text of the grammar back to named objects (used by eval-pag to know what a prompt names). */
export function parseCaption(text: string): NamedObject[] {
  const words = text.toLowerCase().replace(/,/g, ' , ').split(/\s+/).filter(Boolean);
  const lookup = <K extends string>(table: Record<K, string[]>, w: string): K | undefined =>
    (Object.keys(table) as K[]).find((k) => table[k].includes(w));
  const objects: NamedObject[] = [];
  let cur: Partial<NamedObject> = {};
  const flush = () => {
    if (cur.shape && cur.colour) objects.push(cur as NamedObject);
    else if (cur.shape || cur.colour || cur.size) throw new EngineError('invalid_input', `"${text}" does not name both a colour and a shape for every object`);
    cur = {};
  };
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w === 'and') {
      flush();
      continue;
    }
    const size = lookup(SYNONYMS.size, w);
    const colour = lookup(SYNONYMS.colour, w);
    const shape = lookup(SYNONYMS.shape, w);
    if (size) cur.size = size;
    else if (colour) cur.colour = colour;
    else if (shape) cur.shape = shape;
    else {
      for (const p of POSITIONS) {
        const [pp, bare] = SYNONYMS.position[p];
        if (bare.includes(w)) cur.position = p;
      }
      // prepositional phrases end with one of the bare words (left, right, top, bottom, centre/center/middle)
    }
  }
  flush();
  if (objects.length === 0) throw new EngineError('invalid_input', `"${text}" names no object of the toy world`);
  return objects;
}

// ---- batches -------------------------------------------------------------------------------------

export interface WorldBatch {
  /** [n, 3, 64, 64] pixels in [0, 1]. */
  pixels: Float32Array;
  scenes: Scene[];
  captions: Caption[];
  /** sampleGroupedBatch: the hard-negative group of each scene. */
  group?: number[];
}

/** n scenes with one caption each; deterministic from rng. */
export function sampleBatch(rng: Rng, n: number, opts: SceneOptions = {}): WorldBatch {
  const S = WORLD_SIZE;
  const pixels = new Float32Array(n * 3 * S * S);
  const scenes: Scene[] = [];
  const captions: Caption[] = [];
  for (let i = 0; i < n; i++) {
    const scene = sampleScene(rng, opts);
    const img = { width: S, height: S, data: pixels.subarray(i * 3 * S * S, (i + 1) * 3 * S * S) } as PlanarImage;
    renderScene(scene, rng, img);
    scenes.push(scene);
    captions.push(sampleCaption(rng, scene));
  }
  return { pixels, scenes, captions };
}

/** Which attribute varies inside a hard-negative group, and how often. */
export const GROUP_ATTRIBUTES: ReadonlyArray<readonly ['shape' | 'position' | 'size' | 'colour', number]> = [
  ['shape', 0.5],
  ['position', 0.25],
  ['size', 0.15],
  ['colour', 0.1],
];

/**
 * A batch of n scenes in groups of `groupSize` that differ in one attribute of one object only (same
 * other attributes and background kind; fresh geometry jitter). Random batches let colour alone separate
 * almost every caption pair, so a contrastive model can ignore shape and position for a long time;
 * inside a group only the varied attribute tells the captions apart (hard negatives). The attribute is
 * drawn per group from GROUP_ATTRIBUTES; two-object scenes always vary a shape.
 */
export function sampleGroupedBatch(rng: Rng, n: number, groupSize: number, opts: SceneOptions = {}): WorldBatch {
  const S = WORLD_SIZE;
  const pixels = new Float32Array(n * 3 * S * S);
  const scenes: Scene[] = [];
  const captions: Caption[] = [];
  const group: number[] = [];
  let g = 0;
  const shuffle = <T>(xs: T[]): T[] => {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [xs[i], xs[j]] = [xs[j], xs[i]];
    }
    return xs;
  };
  while (scenes.length < n) {
    const base = sampleScene(rng, opts);
    const k = rng.int(base.objects.length);
    const o = base.objects[k];
    const other = base.objects[1 - k];
    let attr = GROUP_ATTRIBUTES[rng.categorical(GROUP_ATTRIBUTES.map(([, w]) => w))][0];
    if (other) attr = 'shape';
    const ok = (x: WorldObject) => (opts.allowHeldOut || !isHeldOut(x.shape, x.colour)) && !(other && other.shape === x.shape && other.colour === x.colour);
    let variants: WorldObject[];
    if (attr === 'shape') variants = SHAPES.map((shape) => ({ ...o, shape }));
    else if (attr === 'colour') variants = COLOURS.map((colour) => ({ ...o, colour }));
    else if (attr === 'size') variants = SIZES.map((size) => ({ ...o, size }));
    else variants = POSITIONS.map((position) => ({ ...o, position }));
    const rest = shuffle(variants.filter((v) => ok(v) && v[attr] !== o[attr]));
    for (const v of [o, ...rest].slice(0, Math.min(groupSize, n - scenes.length))) {
      const scene: Scene = { objects: base.objects.map((x, i) => (i === k ? v : x)), background: base.background };
      const i = scenes.length;
      renderScene(scene, rng, { width: S, height: S, data: pixels.subarray(i * 3 * S * S, (i + 1) * 3 * S * S) } as PlanarImage);
      scenes.push(scene);
      captions.push(sampleCaption(rng, scene));
      group.push(g);
    }
    g++;
  }
  return { pixels, scenes, captions, group };
}

// ---- tokenizer -----------------------------------------------------------------------------------

export const SOT = '<|startoftext|>';
export const EOT = '<|endoftext|>';
export const CONTEXT_LENGTH = 24;

/** Every word the grammar can produce, sorted (the word-level vocabulary). */
export function worldWords(): string[] {
  const w = new Set<string>([',', 'and', 'a', 'an']);
  const addAll = (s: string) => s.split(/\s+/).filter(Boolean).forEach((x) => w.add(x));
  PREFIXES.forEach(addAll);
  for (const t of [SYNONYMS.size, SYNONYMS.shape, SYNONYMS.colour]) for (const l of Object.values(t) as string[][]) l.forEach(addAll);
  for (const [pp, bare] of Object.values(SYNONYMS.position)) [...pp, ...bare].forEach(addAll);
  return [...w].sort();
}

/** A Hugging Face WordLevel tokenizer.json for the world's grammar. Id 0 is padding, 1 unknown. */
export function worldTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<pad>': 0, '<unk>': 1 };
  let id = 2;
  for (const word of worldWords()) vocab[word] = id++;
  const sot = id++, eot = id++;
  vocab[SOT] = sot;
  vocab[EOT] = eot;
  const added = (content: string, i: number) => ({ id: i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [added('<pad>', 0), added('<unk>', 1), added(SOT, sot), added(EOT, eot)],
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  };
}

/**
 * How a tokenizer.json (parsed) differs from the world's, in words ("\"red\" is id 30, the world's 7;
 * no \"large\""), or undefined when it is the world's. A model that reads the world's words with other
 * ids (or without some) cannot be graded on the world's prompts.
 */
export function worldTokenizerDifference(json: unknown): string | undefined {
  const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (!isObj(json)) return 'it is not a JSON object';
  const world = worldTokenizerJson();
  const diffs: string[] = [];
  const want = (world.model as { vocab: Record<string, number> }).vocab;
  const have = isObj(json.model) && isObj(json.model.vocab) ? json.model.vocab : undefined;
  if (!have) diffs.push('it has no model.vocab');
  else {
    const wrongId = Object.keys(want).filter((w) => Object.hasOwn(have, w) && have[w] !== want[w]);
    const missing = Object.keys(want).filter((w) => !Object.hasOwn(have, w));
    const extra = Object.keys(have).filter((w) => !Object.hasOwn(want, w));
    const list = (ws: string[], f: (w: string) => string) => ws.slice(0, 6).map(f).join(', ') + (ws.length > 6 ? `, and ${ws.length - 6} more` : '');
    if (wrongId.length) diffs.push(list(wrongId, (w) => `${JSON.stringify(w)} is id ${JSON.stringify(have[w])}, the world's ${want[w]}`));
    if (missing.length) diffs.push(`it lacks ${list(missing, (w) => JSON.stringify(w))}`);
    if (extra.length) diffs.push(`it has words the world does not: ${list(extra, (w) => JSON.stringify(w))}`);
  }
  const canonical = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (isObj(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
  for (const key of Object.keys({ ...world, ...json })) {
    if (key === 'model') {
      const { vocab: _w, ...wm } = world.model as Record<string, unknown>;
      const { vocab: _h, ...hm } = isObj(json.model) ? json.model : {};
      if (canonical(wm) !== canonical(hm)) diffs.push(`its model settings differ (${canonical(hm)} vs the world's ${canonical(wm)})`);
    } else if (canonical(json[key]) !== canonical(world[key])) diffs.push(`its ${key} differs from the world's`);
  }
  return diffs.length ? diffs.join('; ') : undefined;
}

export function writeWorldTokenizer(path: string): void {
  writeFileSync(path, JSON.stringify(worldTokenizerJson(), null, 1));
}

/** The vocabulary size the text tower needs for the world tokenizer. */
export function worldVocabSize(): number {
  return worldWords().length + 4;
}
