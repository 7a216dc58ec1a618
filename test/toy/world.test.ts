// The procedural world: deterministic, held-out pairs never drawn for CLIP training, captions that the
// tokenizer covers and that parse back to what they name, and pixels that really show the attributes.
import { describe, expect, it } from 'vitest';
import { TextTokenizer } from '../../gpu-worker/engine/clip/tokenizer.ts';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';
import {
  COLOUR_RGB, CONTEXT_LENGTH, HELD_OUT, POSITIONS, SHAPES, WORLD_SIZE, describes, isHeldOut, parseCaption, renderScene,
  sampleBatch, sampleCaption, sampleGroupedBatch, worldTokenizerJson, worldVocabSize, type Scene,
} from '../../gpu-worker/engine/toy/world.ts';

const S = WORLD_SIZE, P = S * S;
const pixel = (d: Float32Array, x: number, y: number) => [d[y * S + x], d[P + y * S + x], d[2 * P + y * S + x]];

describe('toy world', () => {
  it('is deterministic from the seed and differs across seeds', () => {
    const a = sampleBatch(Rng.fromSeed(5), 8), b = sampleBatch(Rng.fromSeed(5), 8), c = sampleBatch(Rng.fromSeed(6), 8);
    expect(Buffer.from(a.pixels.buffer).equals(Buffer.from(b.pixels.buffer))).toBe(true);
    expect(a.captions.map((x) => x.text)).toEqual(b.captions.map((x) => x.text));
    expect(Buffer.from(a.pixels.buffer).equals(Buffer.from(c.pixels.buffer))).toBe(false);
  });

  it('never draws a held-out (shape, colour) pair for CLIP training, but does for the judge', () => {
    const train = sampleBatch(Rng.fromSeed(1), 1500);
    const objs = train.scenes.flatMap((s) => s.objects);
    expect(objs.some((o) => isHeldOut(o.shape, o.colour))).toBe(false);
    expect(train.scenes.some((s) => s.objects.length === 2)).toBe(true);
    const judge = sampleBatch(Rng.fromSeed(1), 1500, { allowHeldOut: true, twoObjectRate: 0 });
    expect(judge.scenes.every((s) => s.objects.length === 1)).toBe(true);
    expect(judge.scenes.filter((s) => isHeldOut(s.objects[0].shape, s.objects[0].colour)).length).toBeGreaterThan(50);
    expect(new Set(HELD_OUT.map(([s]) => s)).size).toBe(SHAPES.length);
  });

  it('captions describe their scene, parse back, and the word-level tokenizer covers them', () => {
    const tok = TextTokenizer.fromJson(worldTokenizerJson() as Record<string, unknown>);
    expect(tok.vocabSize).toBe(worldVocabSize());
    const w = sampleBatch(Rng.fromSeed(2), 400);
    for (let i = 0; i < w.scenes.length; i++) {
      const c = w.captions[i];
      expect(describes(c, w.scenes[i])).toBe(true);
      expect(describes({ objects: parseCaption(c.text) }, w.scenes[i])).toBe(true);
      const ids = Array.from(tok.encode(c.text, { contextLength: CONTEXT_LENGTH, truncate: false }));
      expect(ids).not.toContain(1); // <unk>
    }
    expect(parseCaption('small blue star, top')).toEqual([{ size: 'small', colour: 'blue', shape: 'star', position: 'top' }]);
    expect(parseCaption('a big red disc on the left')).toEqual([{ size: 'large', colour: 'red', shape: 'circle', position: 'left' }]);
    expect(() => parseCaption('a dog')).toThrow(/names no object/);
  });

  it('a caption with a wrong attribute does not describe the scene', () => {
    const scene: Scene = { background: 'plain', objects: [{ shape: 'star', colour: 'blue', size: 'small', position: 'top' }] };
    expect(describes({ objects: [{ shape: 'star', colour: 'blue' }] }, scene)).toBe(true);
    expect(describes({ objects: [{ shape: 'star', colour: 'red' }] }, scene)).toBe(false);
    expect(describes({ objects: [{ shape: 'star', colour: 'blue', position: 'left' }] }, scene)).toBe(false);
    expect(describes({ objects: [{ shape: 'star', colour: 'blue', size: 'large' }] }, scene)).toBe(false);
    const cap = sampleCaption(Rng.fromSeed(3), scene);
    expect(describes(cap, scene)).toBe(true);
  });

  it('hard-negative groups differ in exactly one attribute of one object', () => {
    const w = sampleGroupedBatch(Rng.fromSeed(8), 64, 4);
    expect(w.scenes.length).toBe(64);
    const varied = new Set<string>();
    const groups = [...new Set(w.group!)];
    expect(groups.length).toBeGreaterThanOrEqual(16);
    for (const g of groups) {
      const group = w.scenes.filter((_, i) => w.group![i] === g);
      expect(group.length).toBeLessThanOrEqual(4);
      const keys = (s: Scene) => s.objects.map((o) => [o.shape, o.colour, o.size, o.position]);
      const base = keys(group[0]);
      for (const s of group.slice(1)) {
        const diff = keys(s).flatMap((o, i) => o.map((v, j) => (v !== base[i][j] ? j : -1))).filter((j) => j >= 0);
        expect(diff.length).toBe(1);
        varied.add(['shape', 'colour', 'size', 'position'][diff[0]]);
        expect(s.background).toBe(group[0].background);
      }
      for (const s of group) for (const o of s.objects) expect(isHeldOut(o.shape, o.colour)).toBe(false);
    }
    expect(varied.has('shape') && varied.has('position')).toBe(true);
  });

  it('renders the object in its colour at its position', () => {
    for (const position of POSITIONS) {
      const scene: Scene = { background: 'gradient', objects: [{ shape: 'square', colour: 'red', size: 'large', position }] };
      const img = renderScene(scene, Rng.fromSeed(4));
      const [cx, cy] = { left: [18, 32], right: [46, 32], top: [32, 18], bottom: [32, 46], centre: [32, 32] }[position];
      const rgb = pixel(img.data, cx, cy);
      rgb.forEach((v, c) => expect(Math.abs(v - COLOUR_RGB.red[c])).toBeLessThan(0.06));
      // the opposite side is background (dark, low saturation)
      const [ox, oy] = [S - 1 - cx, S - 1 - cy];
      if (position !== 'centre') expect(Math.max(...pixel(img.data, ox, oy))).toBeLessThan(0.6);
    }
  });
});
