import type { RateCounter } from '../../ports.ts';

/**
 * RateCounter in this process's memory: local mode runs the API in one process (`clipag serve`), so
 * its counts are the deployment's. Several API processes over one data folder would each count
 * apart (each would let the limit through). Expired entries are dropped as new ones are added.
 */
export class MemoryRateCounter implements RateCounter {
  private readonly counts = new Map<string, { n: number; expiresAtSec: number }>();
  private nextPruneSec = 0;

  constructor(private readonly nowSec: () => number = () => Date.now() / 1000) {}

  async get(key: string, window: number): Promise<number> {
    const entry = this.counts.get(`${key}#${window}`);
    return entry && entry.expiresAtSec > this.nowSec() ? entry.n : 0;
  }

  async addBelow(key: string, window: number, ceiling: number, expiresAtSec: number): Promise<number | null> {
    const now = this.nowSec();
    if (now >= this.nextPruneSec) {
      for (const [k, entry] of this.counts) if (entry.expiresAtSec <= now) this.counts.delete(k);
      this.nextPruneSec = now + 60;
    }
    const id = `${key}#${window}`;
    const entry = this.counts.get(id);
    const n = entry && entry.expiresAtSec > now ? entry.n : 0;
    if (n >= ceiling) return null;
    this.counts.set(id, { n: n + 1, expiresAtSec });
    return n + 1;
  }
}
