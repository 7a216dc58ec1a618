// What a request with a field this API does not take is told: the nearest field (a typo), or the one this
// API names what other image APIs call otherwise ("size", "num_images"). Installed once as zod's error
// text for unknown keys, so every strict request schema (the API's bodies, the CLI's batch lines) says it.
import { z } from '@hono/zod-openapi';
import { closestName } from '../did-you-mean.ts';

/** Names other image APIs use, and what this one takes instead (only those of the object in question are offered). */
const OTHER_NAMES: ReadonlyMap<string, readonly string[]> = new Map(Object.entries({
  size: ['width', 'height'],
  resolution: ['width', 'height'],
  dimensions: ['width', 'height'],
  num_images: ['n'],
  num_outputs: ['n'],
  count: ['n'],
  batch_size: ['n'],
  samples: ['n'],
  num_inference_steps: ['steps'],
  format: ['output_format'],
  image_format: ['output_format'],
  response_format: ['output_format'],
  quality: ['output_quality'],
  negative: ['negative_prompt'],
  text: ['prompt'],
  init_image: ['init'],
  image: ['init'],
  callback_url: ['webhook_url'],
  webhook: ['webhook_url'],
}));

/** `did you mean "prompt"?`, or `this API takes "width" and "height"`; undefined when nothing is near. */
export function fieldHint(given: string, known: readonly string[]): string | undefined {
  // A Map: a key such as "constructor" must find nothing (an object's prototype would answer it).
  const other = OTHER_NAMES.get(given.toLowerCase())?.filter((name) => known.includes(name));
  if (other?.length) return `this API takes ${other.map((n) => `"${n}"`).join(' and ')}`;
  const near = closestName(given, known) ?? closestName(given.toLowerCase(), known);
  return near === undefined ? undefined : `did you mean "${near}"?`;
}

/** The unknown keys a message names, at most. */
const MAX_KEYS_NAMED = 5;

/** zod's text for an `unrecognized_keys` issue, with a hint for each key that has one. */
export function unknownKeysMessage(allKeys: readonly string[], known: readonly string[]): string {
  // A body may hold thousands of keys: the message names the first few (and hints for those only).
  const keys = allKeys.slice(0, MAX_KEYS_NAMED);
  const quoted = keys.map((k) => JSON.stringify(k.length > 60 ? `${k.slice(0, 60)}…` : k));
  const hints = keys.map((k) => fieldHint(k, known));
  const more = allKeys.length - keys.length;
  const base = `Unrecognized key${allKeys.length === 1 ? '' : 's'}: ${quoted.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
  if (!hints.some(Boolean)) return base;
  if (keys.length === 1) return `${base} (${hints[0]})`;
  return `${base} (${keys.map((_, i) => (hints[i] ? `${quoted[i]}: ${hints[i]}` : '')).filter(Boolean).join('; ')})`;
}

/**
 * A number's rule in the words the hand-written messages use ("must be a whole number", "must be at
 * least 64"), where zod says "Invalid input: expected int, received number" (which reads as a
 * contradiction in JSON, where every number is a number) or "Too small: expected number to be >=64".
 * From a finalized issue (no input): the API's validation hook words its 400s with it.
 */
export function numberRuleMessage(issue: { code: string; origin?: unknown; expected?: unknown; minimum?: unknown; maximum?: unknown; inclusive?: unknown }): string | undefined {
  const bound = (v: unknown) => (typeof v === 'number' || typeof v === 'bigint' ? String(v) : undefined);
  // expected "int" is a number that is not a whole one (a string would expect "number").
  if (issue.code === 'invalid_type' && issue.expected === 'int') return 'must be a whole number';
  if (issue.code === 'too_small' && issue.origin === 'number' && bound(issue.minimum) !== undefined) return issue.inclusive === false ? `must be greater than ${bound(issue.minimum)}` : `must be at least ${bound(issue.minimum)}`;
  if (issue.code === 'too_big' && issue.origin === 'number' && bound(issue.maximum) !== undefined) return issue.inclusive === false ? `must be less than ${bound(issue.maximum)}` : `must be at most ${bound(issue.maximum)}`;
  return undefined;
}

z.config({
  customError: (issue) => {
    // A hint must never turn a 400 into a 500: zod's own words then.
    try {
      if (issue.code !== 'unrecognized_keys') return undefined;
      const shape = (issue as { inst?: { shape?: unknown } }).inst?.shape;
      if (!shape || typeof shape !== 'object') return undefined;
      return unknownKeysMessage(issue.keys, Object.keys(shape));
    } catch {
      return undefined;
    }
  },
});
