// Training on the gradient engine: a short run shows the contrastive loss falling, a PGD step raises
// it, checkpoints resume exactly, and checkpoints from another architecture or corrupt files are refused.
import { existsSync, lstatSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from '../../gpu-worker/engine/synth/rng.ts';
import {
  AUX_HEADS, TOY_ARCH, ToyClipTrainer, attackRamp, defaultToyConfig, encodeWorldBatch, initAuxParams, initClipParams, nearestText, trainToyClip, worldTokenizer,
} from '../../gpu-worker/engine/toy/clip-train.ts';
import { sampleBatch } from '../../gpu-worker/engine/toy/world.ts';
import { defaultJudgeConfig, trainJudge } from '../../gpu-worker/engine/toy/judge.ts';
import { saveCheckpoint } from '../../gpu-worker/engine/toy/optim.ts';
import type { TensorData } from '../../gpu-worker/engine/onnx/ir.ts';

// A small arch so the test runs in seconds on 2 cores.
const ARCH = { ...TOY_ARCH, visionWidth: 32, visionHeads: 1, visionLayers: 1, textWidth: 32, textHeads: 1, textLayers: 1, embedDim: 32 };
const dir = mkdtempSync(join(tmpdir(), 'clipag-toy-train-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('toy CLIP training', () => {
  it('a short plain run lowers the contrastive loss', async () => {
    // Pure InfoNCE (no caption heads) on random batches: colour alone separates most captions, so the
    // contrastive loss falls within a few dozen steps.
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 16, steps: 60, warmup: 5, lr: 3e-3, seed: 3, shapeGroup: 1, auxWeight: 0 });
    const losses: number[] = [];
    const res2 = await trainToyClip(cfg, { threads: 1, onStep: (e) => losses.push(e.loss) });
    expect(res2.step).toBe(60);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const first = mean(losses.slice(0, 10)), last = mean(losses.slice(-10));
    expect(last).toBeLessThan(first - 0.4);
    expect(res2.params.get('logit_scale')!.data[0]).toBeGreaterThan(0);
  });

  it('the caption-attribute targets are what each one-object caption names (and true of its scene)', () => {
    const world = sampleBatch(Rng.fromSeed(21), 64, { twoObjectRate: 0.4 });
    const enc = encodeWorldBatch(world, worldTokenizer(), ARCH, true);
    let named = 0, twoObject = 0;
    for (const [h, labels] of AUX_HEADS) {
      const t = enc.feeds[`aux_target.${h}`];
      expect(t.dims).toEqual([64, labels.length]);
      const d = t.data as Float32Array;
      world.captions.forEach((c, i) => {
        const row = Array.from(d.subarray(i * labels.length, (i + 1) * labels.length));
        // c.objects is what the grammar chose to name when it wrote the text; the targets come from parsing the text
        const v = c.objects.length === 1 ? c.objects[0][h] : undefined;
        if (v === undefined) expect(row.every((x) => x === 0), `${c.text} / ${h}`).toBe(true);
        else {
          expect(row.reduce((a, b) => a + b, 0)).toBe(1);
          expect(row[(labels as readonly string[]).indexOf(v)], `${c.text} / ${h}`).toBe(1);
          expect(world.scenes[i].objects[0][h]).toBe(v);
          named++;
        }
        if (c.objects.length === 2) twoObject++;
      });
    }
    expect(named).toBeGreaterThan(64);
    expect(twoObject).toBeGreaterThan(0);
    expect(encodeWorldBatch(world, worldTokenizer(), ARCH).feeds['aux_target.shape']).toBeUndefined();
  });

  it('the training graph with the caption heads matches finite differences (float32, random directions)', async () => {
    const B = 8, auxWeight = 3;
    const trainer = await ToyClipTrainer.create(ARCH, B, 1, auxWeight);
    try {
      const rng = Rng.fromSeed(5);
      const params = initClipParams(ARCH, rng.fork('init'));
      initAuxParams(ARCH, rng.fork('aux'), params);
      const enc = encodeWorldBatch(sampleBatch(Rng.fromSeed(8), B), worldTokenizer(), ARCH, true);
      const { grads } = await trainer.lossAndParamGrads(params, enc.feeds);
      for (const group of ['aux.', 'visual.transformer', 'transformer.', 'visual.conv1']) {
        const names = [...params.keys()].filter((n) => n.startsWith(group));
        expect(names.length, group).toBeGreaterThan(0);
        const dir = new Map(names.map((n) => [n, Float32Array.from({ length: params.get(n)!.data.length }, () => rng.normal())]));
        let norm = 0;
        for (const d of dir.values()) for (const x of d) norm += x * x;
        norm = Math.sqrt(norm);
        let analytic = 0;
        for (const [n, d] of dir) {
          const g = grads.get(n)!;
          for (let k = 0; k < d.length; k++) analytic += (g[k] * d[k]) / norm;
        }
        const at = async (h: number) => {
          const p = new Map(params);
          for (const [n, d] of dir) {
            const base = params.get(n)!.data as Float32Array;
            p.set(n, { ...params.get(n)!, data: Float32Array.from(base, (v, k) => v + (h * d[k]) / norm) });
          }
          return (await trainer.lossAndParamGrads(p, enc.feeds)).loss;
        };
        const h = 1e-2;
        const fd = ((await at(h)) - (await at(-h))) / (2 * h);
        expect(Math.abs(fd - analytic), `${group}: fd ${fd} vs analytic ${analytic}`).toBeLessThan(1e-3 + 1e-2 * Math.abs(analytic));
      }
    } finally {
      await trainer.release();
    }
  });

  it('a PGD step raises the loss, stays in the eps-ball and in [0, 1]', async () => {
    const trainer = await ToyClipTrainer.create(ARCH, 8, 1);
    try {
      const params = initClipParams(ARCH, Rng.fromSeed(1));
      const enc = encodeWorldBatch(sampleBatch(Rng.fromSeed(9), 8), worldTokenizer(), ARCH);
      const eps = 1.0;
      const lossAt = async (pixels: Float32Array) => (await trainer.lossAndPixelGrad(params, { ...enc.feeds, pixels: { ...enc.feeds.pixels, data: pixels } })).loss;
      const r = await trainer.pgd(params, enc.feeds, { norm: 'l2', eps, steps: 1, stepSize: 1, rampFraction: 0 });
      expect(await lossAt(r.pixels)).toBeGreaterThan(r.lossBefore + 1e-3);
      const clean = enc.feeds.pixels.data as Float32Array, n = clean.length / 8;
      for (let i = 0; i < 8; i++) {
        let d2 = 0;
        for (let k = i * n; k < (i + 1) * n; k++) {
          expect(r.pixels[k]).toBeGreaterThanOrEqual(0);
          expect(r.pixels[k]).toBeLessThanOrEqual(1);
          d2 += (r.pixels[k] - clean[k]) ** 2;
        }
        expect(Math.sqrt(d2)).toBeLessThanOrEqual(eps + 1e-4);
      }
      const inf = await trainer.pgd(params, enc.feeds, { norm: 'linf', eps: 4 / 255, steps: 2, stepSize: 0.5, rampFraction: 0 });
      expect(await lossAt(inf.pixels)).toBeGreaterThan(inf.lossBefore);
    } finally {
      await trainer.release();
    }
  });

  it('the attack starts at startFraction and ramps in; before it the robust run is the plain twin, step for step', async () => {
    const atk = { norm: 'l2' as const, eps: 1, steps: 1, stepSize: 1, rampFraction: 0.1, startFraction: 0.4 };
    expect(attackRamp({ attack: atk, steps: 100 }, 0)).toBe(0);
    expect(attackRamp({ attack: atk, steps: 100 }, 39)).toBe(0);
    expect(attackRamp({ attack: atk, steps: 100 }, 40)).toBeCloseTo(0.1);
    expect(attackRamp({ attack: atk, steps: 100 }, 44)).toBeCloseTo(0.5);
    expect(attackRamp({ attack: atk, steps: 100 }, 49)).toBe(1);
    expect(attackRamp({ attack: { ...atk, startFraction: undefined }, steps: 100 }, 0)).toBeCloseTo(0.1);
    const base = { arch: ARCH, batch: 8, steps: 8, warmup: 2, seed: 6 };
    const robust = defaultToyConfig(true, { ...base, attack: { ...atk, startFraction: 0.5 } });
    const plain = defaultToyConfig(false, base);
    const [r, p] = await Promise.all([trainToyClip(robust, { threads: 1, maxStepsThisRun: 4 }), trainToyClip(plain, { threads: 1, maxStepsThisRun: 4 })]);
    for (const [k, t] of p.params) expect(Array.from(r.params.get(k)!.data as Float32Array), k).toEqual(Array.from(t.data as Float32Array));
    // the attack runs from step 4 on (0-based): the clean loss is measured there and not before
    const attacked: number[] = [];
    await trainToyClip(robust, { threads: 1, maxStepsThisRun: 6, onStep: (e) => e.cleanLoss !== undefined && attacked.push(e.step) });
    expect(attacked).toEqual([5, 6]);
  });

  it('an interrupted robust run resumes from its checkpoint to the same weights', async () => {
    const cfg = defaultToyConfig(true, { arch: ARCH, batch: 8, steps: 6, warmup: 2, seed: 4 });
    const straight = await trainToyClip(cfg, { threads: 1 });
    const ck = join(dir, 'resume.ckpt');
    const part = await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 3 });
    expect(part.finished).toBe(false);
    const rest = await trainToyClip(cfg, { threads: 1, checkpoint: ck });
    expect(rest.resumedFrom).toBe(3);
    expect(rest.step).toBe(6);
    for (const [k, t] of straight.params) expect(Array.from(rest.params.get(k)!.data as Float32Array)).toEqual(Array.from(t.data as Float32Array));
  });

  it('refuses a checkpoint from another architecture or a corrupt one, with a clear error', async () => {
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 2, warmup: 1 });
    const ck = join(dir, 'arch.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck });
    const other = { ...cfg, arch: { ...ARCH, visionLayers: 2 } };
    await expect(trainToyClip(other, { threads: 1, checkpoint: ck })).rejects.toThrow(/different arch \(arch\.visionLayers: 1 in the checkpoint vs 2 now\)/);
    await expect(trainToyClip({ ...cfg, robust: true }, { threads: 1, checkpoint: ck })).rejects.toThrow(/different robust/);
    // a NaN in a saved weight: refused at load, before anything trains on or writes a bundle
    const st = readSafetensors(ck);
    const name = [...st.tensors.keys()].find((k) => k.startsWith('w/'))!;
    (st.tensors.get(name)!.data as Float32Array)[0] = Number.NaN;
    await writeSafetensors(ck, st.tensors, st.metadata);
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/checkpoint .*arch\.ckpt: tensor w\/.* holds a non-finite value.*delete it to start over/);
    const bytes = readFileSync(ck);
    writeFileSync(ck, bytes.subarray(0, bytes.length >> 1));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/checkpoint .* is unreadable/);
  });

  it('refuses a checkpoint damaged on disk in a way that still reads as finite numbers (its checksum)', async () => {
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 2, warmup: 1 });
    const ck = join(dir, 'flip.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 1 });
    expect(readSafetensors(ck).metadata?.sha256).toMatch(/^[0-9a-f]{64}$/);
    // One bit of the last byte: a float32's top byte (sign and exponent), so the value stays finite
    // but changes, as a bad disk block would change it.
    const bytes = readFileSync(ck);
    bytes[bytes.length - 1]! ^= 0x01;
    writeFileSync(ck, bytes);
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/checkpoint .*flip\.ckpt is damaged \(its checksum does not match its contents\); delete it to start over/);
  });
});

describe('checkpoint files (from the CLI review)', () => {
  it('a fresh run (no resume) writes its checkpoint only over a checkpoint, never over another file', async () => {
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 1, warmup: 1 });
    const precious = join(dir, 'precious.png');
    writeFileSync(precious, 'not a checkpoint');
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: precious, resume: false })).rejects.toThrow(/precious\.png exists and is not a clipag-toy-checkpoint file: a fresh run would overwrite it/);
    expect(readFileSync(precious, 'utf8')).toBe('not a checkpoint');
    // An old checkpoint is fair game.
    const ck = join(dir, 'fresh.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, resume: false })).resolves.toMatchObject({ step: 1 });
  });

  it('a checkpoint without a checksum (older, or edited) is checked field by field', async () => {
    const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 2, warmup: 1 });
    const ck = join(dir, 'legacy.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 1 });
    const edit = async (meta: Record<string, string>) => {
      const st = readSafetensors(ck);
      const { sha256: _, ...rest } = st.metadata ?? {};
      await writeSafetensors(ck, st.tensors, { ...rest, ...meta });
    };
    await edit({});
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 0 })).resolves.toMatchObject({ resumedFrom: 1 }); // a legacy file still resumes
    // Its config's keys in another order (an edited file) are the same config.
    const config = JSON.parse(readSafetensors(ck).metadata!.config!) as Record<string, unknown>;
    const reversed = (o: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(o).reverse().map(([k, v]) => [k, v !== null && typeof v === 'object' && !Array.isArray(v) ? reversed(v as Record<string, unknown>) : v]));
    await edit({ config: JSON.stringify(reversed(config)) });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 0 })).resolves.toMatchObject({ resumedFrom: 1 });
    await edit({ history: '{"x":1}' });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/unreadable history record/);
    await edit({ history: '[]', adam_step: 'abc' });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/bad adam_step "abc"/);
    await edit({ adam_step: '1', elapsed_s: 'soon' });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/bad elapsed_s "soon"/);
    await edit({ elapsed_s: '3', step: '99999999' });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/at step 99999999, past the 2 planned/);
  });
});

describe('nearestText (zero-shot choice)', () => {
  it('picks the text with the largest cosine, among all or among the candidates given', () => {
    const E = 2;
    const texts = new Float32Array([1, 0, 0, 1, Math.SQRT1_2, Math.SQRT1_2]);
    const images = new Float32Array([0.9, 0.1, 0.1, 0.9]);
    expect(nearestText(images, 0, texts, E)).toBe(0);
    expect(nearestText(images, 1, texts, E)).toBe(1);
    expect(nearestText(images, 0, texts, E, [1, 2])).toBe(2);
    expect(nearestText(images, 1, texts, E, [0])).toBe(0);
  });
});

describe('checkpoint files (from a review of bad input and interruption)', () => {
  const cfg = defaultToyConfig(false, { arch: ARCH, batch: 8, steps: 2, warmup: 1 });
  const stepOf = (path: string) => readSafetensors(path).metadata?.step;

  it('a link to a checkpoint resumes from its target and saves into it, keeping the link', async () => {
    const target = join(dir, 'linked-target.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: target, maxStepsThisRun: 1 });
    const link = join(dir, 'link.ckpt');
    symlinkSync(target, link);
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: link })).resolves.toMatchObject({ resumedFrom: 1, step: 2 });
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(stepOf(target)).toBe('2');
  });

  it('a link that leads nowhere (dangling, a loop) is refused, and left as it was', async () => {
    const dangling = join(dir, 'dangling.ckpt');
    symlinkSync(join(dir, 'no-such.ckpt'), dangling);
    const loop = join(dir, 'loop-a.ckpt');
    symlinkSync(join(dir, 'loop-b.ckpt'), loop);
    symlinkSync(loop, join(dir, 'loop-b.ckpt'));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: dangling })).rejects.toThrow(/checkpoint .*dangling\.ckpt is a symbolic link that leads nowhere \(ENOENT\)/);
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: loop, resume: false })).rejects.toThrow(/loop-a\.ckpt is a symbolic link that leads nowhere \(ELOOP\)/);
    expect(lstatSync(dangling).isSymbolicLink()).toBe(true);
    expect(lstatSync(loop).isSymbolicLink()).toBe(true);
    expect(existsSync(join(dir, 'no-such.ckpt'))).toBe(false);
  });

  it('a second run on a checkpoint in use is refused; a lock left by a dead run is taken over; saves never share a temporary name', async () => {
    const ck = join(dir, 'busy.ckpt');
    const first = trainToyClip(cfg, { threads: 1, checkpoint: ck });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/another run is using the checkpoint .*busy\.ckpt \(process \d+ holds .*busy\.ckpt\.lock\)/);
    await expect(first).resolves.toMatchObject({ step: 2 });
    expect(existsSync(`${ck}.lock`)).toBe(false); // released
    // A run killed with SIGKILL leaves its lock: the next run takes it over.
    let dead = 900_000;
    for (;; dead++) {
      try {
        process.kill(dead, 0);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ESRCH') break;
      }
    }
    writeFileSync(`${ck}.lock`, JSON.stringify({ pid: dead, host: hostname() }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, resume: false })).resolves.toMatchObject({ step: 2 });
    // So is one with this process's pid from before a restart (a container's pids repeat).
    writeFileSync(`${ck}.lock`, JSON.stringify({ pid: process.pid, host: hostname(), mark: 'an earlier process' }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, resume: false })).resolves.toMatchObject({ step: 2 });
    expect(existsSync(`${ck}.lock`)).toBe(false);
    // Two saves at once (two runs when a lock was taken over twice): both land, no ENOENT on a shared name.
    const adam = { step: 1, m: new Map<string, Float32Array>(), v: new Map<string, Float32Array>() };
    const params = new Map([['x', { dtype: 'float32' as const, dims: [1], data: new Float32Array([1]) }]]);
    adam.m.set('x', new Float32Array(1));
    adam.v.set('x', new Float32Array(1));
    const save = (step: number) => saveCheckpoint(join(dir, 'twice.ckpt'), { kind: 'k', config: {}, step, elapsedS: 0, history: [], params, adam });
    await expect(Promise.all([save(1), save(2)])).resolves.toBeDefined();
    expect(readdirSync(dir).filter((n) => n.includes('.partial'))).toEqual([]);
    expect(readSafetensors(join(dir, 'twice.ckpt')).metadata?.step).toMatch(/^[12]$/);
  });

  it('a fresh run does not replace a checkpoint of another kind (a judge\'s) unless forced', async () => {
    const ck = join(dir, 'judge-kind.ckpt');
    await trainJudge(defaultJudgeConfig({ steps: 1, batch: 2, warmup: 1 }), { threads: 1, checkpoint: ck });
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, resume: false })).rejects.toThrow(/judge-kind\.ckpt holds a "toy-judge" checkpoint, not "toy-clip": a fresh run would overwrite it; choose another --checkpoint, or pass --force/);
    expect(readSafetensors(ck).metadata?.kind).toBe('toy-judge');
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, resume: false, force: true })).resolves.toMatchObject({ step: 2 });
    expect(readSafetensors(ck).metadata?.kind).toBe('toy-clip');
  });

  it('a checkpoint carries its format version; another version is refused, a version-less one read as version 1', async () => {
    const ck = join(dir, 'version.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 1 });
    expect(readSafetensors(ck).metadata?.format_version).toBe('1');
    const edit = async (f: (meta: Record<string, string>) => Record<string, string>) => {
      const st = readSafetensors(ck);
      const { sha256: _, ...rest } = st.metadata ?? {};
      await writeSafetensors(ck, st.tensors, f(rest));
    };
    await edit((m) => ({ ...m, format_version: '2' }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/checkpoint .*version\.ckpt is clipag-toy-checkpoint version "2"; this clipag reads version 1/);
    await edit(({ format_version: _, ...m }) => m);
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 0 })).resolves.toMatchObject({ resumedFrom: 1 });
  });

  it('Adam moments that do not fit their weights, and tensors of no kind, are refused', async () => {
    const ck = join(dir, 'moments.ckpt');
    await trainToyClip(cfg, { threads: 1, checkpoint: ck, maxStepsThisRun: 1 });
    const original = readSafetensors(ck);
    const withTensors = async (f: (t: Map<string, TensorData>) => void) => {
      const { sha256: _, ...rest } = original.metadata ?? {};
      const tensors = new Map(original.tensors);
      f(tensors);
      await writeSafetensors(ck, tensors, rest);
    };
    await withTensors((t) => t.set('m/visual.proj', { dtype: 'float32', dims: [1], data: new Float32Array(1) }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/the Adam moment m\/visual\.proj has 1 values, but the weight has \d+; delete it to start over/);
    await withTensors((t) => t.set('v/visual.proj', { dtype: 'float32', dims: [5000], data: new Float32Array(5000) }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/the Adam moment v\/visual\.proj has 5000 values/);
    await withTensors((t) => t.set('extra', { dtype: 'float32', dims: [1], data: new Float32Array(1) }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/holds a tensor "extra" that is not a weight/);
    await withTensors((t) => t.set('m/ghost', { dtype: 'float32', dims: [1], data: new Float32Array(1) }));
    await expect(trainToyClip(cfg, { threads: 1, checkpoint: ck })).rejects.toThrow(/holds Adam moments for ghost, which has no weight/);
  });
});
