// The coarse-to-fine schedule of a synthesis run: which sizes it optimizes at, and for how many steps.
// Pure, so that the engine runs it and the API prices a job by the same stages (ADR 0014).

/** One stage of the coarse-to-fine schedule. */
export interface Stage {
  width: number;
  height: number;
  steps: number;
}

/**
 * Default multi-scale schedule: when the output is larger than the encoder input, start with the long
 * side at the encoder size and double up to the output, spending 40 % of the steps on the first stage
 * and splitting the rest evenly, the last stage at least 2 steps. Sizes are rounded to multiples of 8.
 * A single stage otherwise.
 */
export function defaultSchedule(width: number, height: number, steps: number, encoderSize: number): Stage[] {
  const long = Math.max(width, height);
  if (long <= encoderSize || steps < 2) return [{ width, height, steps }];
  const sizes: { width: number; height: number }[] = [];
  let f = encoderSize / long;
  while (f < 1) {
    // Sides are multiples of 8 and at least 16 (validateRequest's bounds): a 1024×64 output on a
    // 64 px model would otherwise start at 64×8 and be refused with a message about a field the
    // caller never sent.
    sizes.push({ width: Math.max(16, Math.round((width * f) / 8) * 8), height: Math.max(16, Math.round((height * f) / 8) * 8) });
    f *= 2;
  }
  sizes.push({ width, height });
  // The image a step scores is the one before its update (the notebook's best-image rule), so the
  // final stage's last update is never seen, and a final stage of one step returns the previous
  // stage's image upsampled: its step, the costliest of the run, spent for nothing. Every stage
  // before the last carries its updates on. So the final stage gets at least 2 steps and the others
  // at least 1: with fewer steps than that takes, fewer stages (an evenly spaced subset, always
  // ending at the output size).
  const n = Math.min(sizes.length, steps - 1);
  const kept = n === sizes.length ? sizes : Array.from({ length: n }, (_, k) => sizes[n === 1 ? sizes.length - 1 : Math.round((k * (sizes.length - 1)) / (n - 1))]!);
  if (n === 1) return [{ width, height, steps }];
  const later = n - 1;
  const first = Math.min(Math.max(1, Math.round(steps * 0.4)), steps - later - 1);
  const rest = steps - first;
  const stages = kept.map((s, i) => ({ ...s, steps: i === 0 ? first : Math.floor(rest / later) + (i - 1 < rest % later ? 1 : 0) }));
  // rest >= later + 1, so some stage has a step to spare when the last has one.
  const last = stages[stages.length - 1]!;
  if (last.steps < 2) {
    const donor = stages.slice(1, -1).find((s) => s.steps > 1) ?? stages[0]!;
    donor.steps--;
    last.steps++;
  }
  return stages;
}
