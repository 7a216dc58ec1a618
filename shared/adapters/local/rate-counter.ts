import type { RateCounter } from '../../ports.ts';

/**
 * RateCounter in this process's memory: local mode runs the API in one process (`clipag serve`), so
 * its counts are the deployment's. Several API processes over one data folder would each count
 * apart (each would let the limit through). A key keeps its last two windows: counting window w
 * drops the key's windows before w − 1 (the limiter reads only the current and the previous one).
 * So no clock of its own is needed, and `expiresAtSec` (DynamoDB's TTL) is not used here: the
 * windows the callers number are the only time this adapter knows.
 */
export class MemoryRateCounter implements RateCounter {
  private readonly counts = new Map<string, Map<number, number>>();

  async get(key: string, window: number): Promise<number> {
    return this.counts.get(key)?.get(window) ?? 0;
  }

  async addBelow(key: string, window: number, ceiling: number, _expiresAtSec: number): Promise<number | null> {
    let windows = this.counts.get(key);
    if (!windows) this.counts.set(key, (windows = new Map()));
    for (const w of windows.keys()) if (w < window - 1) windows.delete(w);
    const n = windows.get(window) ?? 0;
    if (n >= ceiling) return null;
    windows.set(window, n + 1);
    return n + 1;
  }
}
