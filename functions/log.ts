import type { AppLogEntry } from './types.ts';

/**
 * The default log: one JSON line per entry (CloudWatch in Lambda), `info` on stdout, warnings and
 * errors on stderr. `time` is always the log's own: an entry's field of that name cannot replace it
 * (its `level` and `msg` are the entry's by construction).
 */
export function jsonLineLog(entry: AppLogEntry): void {
  const stream = entry.level === 'info' ? process.stdout : entry.level === 'warn' || entry.level === 'error' ? process.stderr : undefined;
  // A level outside the type (a `debug` cast in) is dropped, as before: there is no level setting here.
  if (!stream) return;
  const time = new Date().toISOString();
  stream.write(`${JSON.stringify(Object.assign({ time, ...entry }, { time }))}\n`);
}
