// The toy CLIPs' zero-shot accuracy on fresh world images: the final metric of every train-toy run,
// recorded in the bundle manifest. Its shape+colour part is the 48-prompt classifier that the
// robustness probe (robustness.ts) attacks.

import { type ClipEngine } from '../engine.ts';
import { Rng } from '../synth/rng.ts';
import { nearestText } from './clip-train.ts';
import { POSITIONS, SHAPE_COLOUR_PAIRS, SIZES, SYNONYMS, WORLD_SIZE, isHeldOut, sampleBatch } from './world.ts';

/** The zero-shot classifier's prompts, "a COLOUR SHAPE", one per entry of SHAPE_COLOUR_PAIRS and in its order. */
export const ZERO_SHOT_PROMPTS: readonly string[] = SHAPE_COLOUR_PAIRS.map(([s, c]) => `a ${c} ${s}`);

export interface ZeroShotAccuracy {
  /** shape + colour right among the 48 prompts, on seen and on held-out pairs */
  seen: number;
  heldOut: number;
  shape: number;
  colour: number;
  position: number;
  size: number;
  images: number;
}

/**
 * Zero-shot accuracy on 512 fresh single-object images (held-out pairs included): shape + colour among
 * the 48 prompts "a COLOUR SHAPE" (seen and held-out pairs apart, and each attribute alone); position
 * among the five "a COLOUR SHAPE on the left/…" prompts and size among "a small/large COLOUR SHAPE",
 * with the true colour and shape.
 */
export async function zeroShotAccuracy(engine: ClipEngine): Promise<ZeroShotAccuracy> {
  const pairs = SHAPE_COLOUR_PAIRS;
  const texts = [
    ...ZERO_SHOT_PROMPTS,
    ...pairs.flatMap(([s, c]) => POSITIONS.map((p) => `a ${c} ${s} ${SYNONYMS.position[p][0][0]}`)),
    ...pairs.flatMap(([s, c]) => SIZES.map((z) => `a ${z} ${c} ${s}`)),
  ];
  const t = (await engine.embedText(texts)).unit;
  const n = 512, E = engine.embedDim, per = 3 * WORLD_SIZE * WORLD_SIZE;
  const w = sampleBatch(Rng.fromSeed(424242), n, { allowHeldOut: true, twoObjectRate: 0 });
  const imgs = Array.from({ length: n }, (_, i) => ({ width: WORLD_SIZE, height: WORLD_SIZE, data: w.pixels.subarray(i * per, (i + 1) * per) }));
  const u = (await engine.embedImages(imgs)).unit;
  const argmax = (i: number, candidates: number[]) => nearestText(u, i, t, E, candidates);
  let seen = 0, seenN = 0, held = 0, heldN = 0, shape = 0, colour = 0, position = 0, size = 0;
  for (let i = 0; i < n; i++) {
    const o = w.scenes[i].objects[0];
    const best = argmax(i, pairs.map((_, p) => p));
    const ok = pairs[best][0] === o.shape && pairs[best][1] === o.colour;
    if (pairs[best][0] === o.shape) shape++;
    if (pairs[best][1] === o.colour) colour++;
    if (isHeldOut(o.shape, o.colour)) [held, heldN] = [held + (ok ? 1 : 0), heldN + 1];
    else [seen, seenN] = [seen + (ok ? 1 : 0), seenN + 1];
    const pair = pairs.findIndex(([s, c]) => s === o.shape && c === o.colour);
    const posBase = pairs.length + pair * POSITIONS.length;
    if (argmax(i, POSITIONS.map((_, k) => posBase + k)) === posBase + POSITIONS.indexOf(o.position)) position++;
    const sizeBase = pairs.length * (1 + POSITIONS.length) + pair * SIZES.length;
    if (argmax(i, SIZES.map((_, k) => sizeBase + k)) === sizeBase + SIZES.indexOf(o.size)) size++;
  }
  return { seen: seen / seenN, heldOut: held / Math.max(1, heldN), shape: shape / n, colour: colour / n, position: position / n, size: size / n, images: n };
}
