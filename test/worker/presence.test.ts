// A worker's presence document (ADR 0040): written at once, on each state change and every beat,
// removed when the worker stops; a store that fails is logged once and written again at the next beat.
// The last test runs the real worker (tiny model, local queue and stores) through startWorker.
import { afterEach, describe, expect, it } from 'vitest';
import { startWorker, type RunningWorker } from '../../gpu-worker/main.ts';
import { createModelRegistry } from '../../gpu-worker/models.ts';
import { presenceStateOf, startPresence } from '../../gpu-worker/worker/presence.ts';
import type { Logger } from '../../gpu-worker/worker/worker.ts';
import { LocalBlobStore } from '../../shared/adapters/local/index.ts';
import type { BlobStore } from '../../shared/ports.ts';
import { readFleet, specReads, WORKERS_PREFIX, workerPresenceKey } from '../../shared/worker-presence.ts';
import { listKeys } from '../../shared/prefix.ts';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FAST_RECIPE, makeEnv, makeModelsDir, submit, waitFor, waitForStatus } from './helpers.ts';

function log(into: string[] = []): Logger {
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>) => void into.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
const blobsIn = () => new LocalBlobStore({ rootDir: mkdtempSync(join(tmpdir(), 'clipag-presence-')), signingSecret: 'x'.repeat(32), publicBaseUrl: 'http://127.0.0.1:1' });
const read = async (blobs: BlobStore, id: string) => {
  const object = await blobs.get(workerPresenceKey(id));
  return object ? (JSON.parse(Buffer.from(object.body).toString()) as { state: string; beat_at: string; started_at: string; worker_id: string }) : null;
};

const running: RunningWorker[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((r) => r.stop()));
});

describe('worker presence', () => {
  it('maps every worker state: starting while warming, ready while polling, busy while running, gone once draining', () => {
    expect((['idle', 'warming', 'polling', 'running', 'draining', 'stopped'] as const).map(presenceStateOf)).toEqual(['starting', 'starting', 'ready', 'busy', null, null]);
  });

  it('writes at once, on each change and at every beat, and removes the document on stop (idempotent)', async () => {
    const blobs = blobsIn();
    let now = Date.parse('2026-12-07T12:00:00Z');
    const presence = startPresence({ blobs, workerId: 'w-1', clock: () => new Date(now), beatMs: 40, log: log() });
    await waitFor('the first write', () => read(blobs, 'w-1'));
    // With what it reads of a stored request (the API tells a generation only a newer worker runs so).
    expect(await read(blobs, 'w-1')).toEqual({ v: 1, worker_id: 'w-1', state: 'starting', started_at: '2026-12-07T12:00:00.000Z', beat_at: '2026-12-07T12:00:00.000Z', reads: specReads() });
    expect(specReads().spec_keys).toEqual(expect.arrayContaining(['prompt', 'output_format', 'webhook_events', 'cancel_after']));
    presence.state('polling');
    await waitFor('ready', async () => (await read(blobs, 'w-1'))?.state === 'ready');
    now += 60_000;
    await waitFor('a beat', async () => (await read(blobs, 'w-1'))?.beat_at === '2026-12-07T12:01:00.000Z');
    presence.state('running');
    await waitFor('busy', async () => (await read(blobs, 'w-1'))?.state === 'busy');
    // Fresh by the store's write time (this machine's clock here), whatever the worker's clock says.
    expect(await readFleet(blobs, new Date())).toEqual({ workers_ready: 1, workers_busy: 1, workers_starting: 0, readers: [{ state: 'busy', reads: specReads() }] });
    await Promise.all([presence.stop(), presence.stop()]);
    expect(await read(blobs, 'w-1')).toBeNull();
    // No beat writes it again after the stop.
    await new Promise((r) => setTimeout(r, 120));
    expect((await listKeys(blobs, WORKERS_PREFIX)).keys).toEqual([]);
  });

  it('a draining worker is no longer counted, at once', async () => {
    const blobs = blobsIn();
    const presence = startPresence({ blobs, workerId: 'w-2', log: log() });
    presence.state('polling');
    await waitFor('ready', async () => (await read(blobs, 'w-2'))?.state === 'ready');
    presence.state('draining');
    await waitFor('removed', async () => (await read(blobs, 'w-2')) === null);
    await presence.stop();
  });

  it('a store that fails is logged once, never thrown, and written again at the next beat', async () => {
    const real = blobsIn();
    let failing = true;
    const blobs = new Proxy(real, {
      get(target, name, receiver) {
        if (name === 'put') return (...args: Parameters<BlobStore['put']>) => (failing ? Promise.reject(new Error('SlowDown')) : target.put(...args));
        return Reflect.get(target, name, receiver);
      },
    }) as BlobStore;
    const lines: string[] = [];
    const presence = startPresence({ blobs, workerId: 'w-3', beatMs: 30, log: log(lines) });
    await new Promise((r) => setTimeout(r, 150)); // a few failed beats
    expect(lines.filter((l) => l.startsWith('warn worker presence not written'))).toHaveLength(1);
    failing = false;
    await waitFor('written again', () => read(real, 'w-3'));
    expect(lines).toContainEqual(expect.stringMatching(/^info worker presence written again/));
    await presence.stop();
  });

  it('coalesces: changes while a write waits its turn need no write of their own; the last state lands', async () => {
    const real = blobsIn();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const puts: string[] = [];
    const blobs = new Proxy(real, {
      get(target, name, receiver) {
        if (name === 'put')
          return async (...args: Parameters<BlobStore['put']>) => {
            puts.push((JSON.parse(Buffer.from(args[1]).toString()) as { state: string }).state);
            if (puts.length === 1) await gate; // the first write is slow
            return target.put(...args);
          };
        return Reflect.get(target, name, receiver);
      },
    }) as BlobStore;
    const presence = startPresence({ blobs, workerId: 'w-5', log: log() });
    await waitFor('the first write under way', () => puts.length === 1);
    for (let i = 0; i < 50; i++) {
      presence.state('running');
      presence.state('polling');
    }
    presence.state('running');
    release();
    await waitFor('busy', async () => (await read(real, 'w-5'))?.state === 'busy');
    expect(puts).toEqual(['starting', 'busy']);
    await presence.stop();
  });

  it("stop does not wait for ever on a store that hangs: the worker's own stop is not held", async () => {
    const real = blobsIn();
    const blobs = new Proxy(real, {
      get(target, name, receiver) {
        if (name === 'put' || name === 'delete') return () => new Promise(() => undefined);
        return Reflect.get(target, name, receiver);
      },
    }) as BlobStore;
    const presence = startPresence({ blobs, workerId: 'w-6', stopWaitMs: 100, log: log() });
    const started = Date.now();
    await presence.stop();
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('the real worker: ready once it polls, busy while it runs a job, and gone after stop', async () => {
    const env = await makeEnv();
    const models = createModelRegistry({ modelsDir: makeModelsDir(), threads: 2 });
    // Every state the worker writes, in order (a read could miss a short run's "busy").
    const written: string[] = [];
    const blobs = new Proxy(env.blobs, {
      get(target, name, receiver) {
        if (name === 'put')
          return (key: string, body: Uint8Array, options?: Parameters<BlobStore['put']>[2]) => {
            if (key.startsWith(WORKERS_PREFIX)) written.push((JSON.parse(Buffer.from(body).toString()) as { state: string }).state);
            return target.put(key, body, options);
          };
        return Reflect.get(target, name, receiver);
      },
    }) as typeof env.blobs;
    const r = startWorker({ queue: env.queue, jobs: env.jobs, blobs, config: env.config, models, recipeOverrides: FAST_RECIPE, worker: { progressIntervalMs: 0 }, log: log(), presence: { workerId: 'task-1', beatMs: 60_000 } });
    running.push(r);
    try {
      await waitFor('ready', async () => (await read(env.blobs, 'task-1'))?.state === 'ready');
      const job = await submit(env, { steps: 3, model: 'tiny' });
      expect((await waitForStatus(env, job.id, ['succeeded', 'failed'])).status).toBe('succeeded');
      await waitFor('ready again', async () => (await read(env.blobs, 'task-1'))?.state === 'ready');
      expect(written).toEqual(['starting', 'ready', 'busy', 'ready']);
      await r.stop();
      expect((await listKeys(env.blobs, WORKERS_PREFIX)).keys).toEqual([]);
    } finally {
      await r.stop();
      await models.close();
    }
  });
});
