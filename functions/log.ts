import type { AppLogEntry } from './types.ts';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/**
 * A log of one JSON line per entry (CloudWatch in Lambda), `info` on stdout, warnings and errors on
 * stderr, dropping entries below `minLevel` (the process's LOG_LEVEL, as the worker's log honours it).
 * `time` is always the log's own: an entry's field of that name cannot replace it (its `level` and
 * `msg` are the entry's by construction).
 */
export function jsonLineLogAt(minLevel: LogLevel): (entry: AppLogEntry) => void {
  return function jsonLine(entry: AppLogEntry): void {
    const stream = entry.level === 'info' ? process.stdout : entry.level === 'warn' || entry.level === 'error' ? process.stderr : undefined;
    // A level outside the type (a `debug` cast in) is dropped: the API writes no debug lines.
    if (!stream || RANK[entry.level] < RANK[minLevel]) return;
    const time = new Date().toISOString();
    stream.write(`${JSON.stringify(Object.assign({ time, ...entry }, { time }))}\n`);
  };
}

/**
 * The default log, at `info`. Where a line feeds a metric (the sweep's summary, read by a metric
 * filter) it is written with this one whatever LOG_LEVEL says.
 */
export const jsonLineLog = jsonLineLogAt('info');
