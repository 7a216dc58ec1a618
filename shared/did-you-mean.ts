/** Edit distance of two short strings (a swap of two neighbours is one edit, as in --prot): for "did you mean". */
function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The longest text looked at for a near name. */
const MAX_GIVEN_CHARS = 64;

/**
 * The name of `names` closest to `given`, when it is close enough to be a typo: within one edit, two for
 * names of six characters and more; a name `given` begins (at least 3 characters of it) counts as one.
 */
export function closestName(given: string, names: readonly string[]): string | undefined {
  // A name is short; a long `given` is no typo of one, and its table would cost length × length (a
  // request body's 60 000-character key took seconds of CPU: the diff review).
  if (given.length < 2 || given.length > MAX_GIVEN_CHARS) return undefined;
  let best: { name: string; d: number } | undefined;
  for (const name of names) {
    // More than two edits apart by length alone, and no prefix: it cannot be the one.
    if (Math.abs(name.length - given.length) > 2 && !(name.startsWith(given) && given.length >= 3)) continue;
    const d = name.length > given.length && name.startsWith(given) && given.length >= 3 ? 1 : editDistance(given, name);
    if (best === undefined || d < best.d) best = { name, d };
  }
  return best && best.d <= Math.max(1, Math.min(2, Math.floor(given.length / 3))) ? best.name : undefined;
}
