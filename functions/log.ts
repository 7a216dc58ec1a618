import type { AppLogEntry } from './types.ts';

/** The default log: warnings and errors as one JSON line each on stderr (CloudWatch in Lambda). */
export function jsonLineLog(entry: AppLogEntry): void {
  if (entry.level !== 'info') process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...entry })}\n`);
}
