// open_clip's hub repos ship open_clip_config.json next to the weights: model_cfg.quick_gelu (absent
// means exact GELU), text_cfg.heads, vision_cfg.width / head_width, and preprocess_cfg mean/std. The
// import reads it instead of defaulting to QuickGELU (a wrong activation passes the gradient check and
// silently changes every embedding), and a flag that contradicts it is an error. The weights here are
// the reference tiny CLIP (the GELU and QuickGELU files hold the same tensors); the embeddings are
// checked against the official model's vectors for the activation the config names.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { importModel, type ImportOptions } from '../../gpu-worker/engine/import/import.ts';
import { main } from '../../cli/main.ts';
import { asNumbers, loadReference, maxRelErr } from '../helpers/clip.ts';
import { referencePath } from '../helpers/reference.ts';

const work = mkdtempSync(join(tmpdir(), 'clipag-open-clip-config-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const quiet: Partial<ImportOptions> = { vocab: referencePath('bpe_simple_vocab_16e6.txt.gz'), license: 'MIT (test weights)', verify: false };
const PROMPTS = ['a photo of a cat', 'a diagram of a red circle', 'two dogs playing in the snow!', 'café 赤い円 🙂'];
let n = 0;

/** The tiny model's open_clip config (open_clip's model_configs layout), with `extra` merged into model_cfg. */
function modelCfg(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    embed_dim: 32,
    vision_cfg: { image_size: 32, layers: 2, width: 64, patch_size: 8 },
    text_cfg: { context_length: 77, vocab_size: 49408, width: 64, heads: 4, layers: 2 },
    ...extra,
  };
}
const OPENAI = { mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711] };

/** A hub-style folder: open_clip_model.safetensors + open_clip_config.json (when given). */
function hubFolder(config: unknown): string {
  const dir = join(work, `hub-${n++}`);
  mkdirSync(dir);
  copyFileSync(referencePath('tiny-quickgelu.safetensors'), join(dir, 'open_clip_model.safetensors'));
  if (config !== undefined) writeFileSync(join(dir, 'open_clip_config.json'), JSON.stringify(config));
  return join(dir, 'open_clip_model.safetensors');
}

async function textError(dir: string, vectors: string): Promise<number> {
  const engine = await ClipEngine.open(dir);
  try {
    return maxRelErr((await engine.embedText(PROMPTS)).raw, asNumbers(loadReference(vectors).get('text_features')!));
  } finally {
    await engine.close();
  }
}

async function refusal(src: string, opts: Partial<ImportOptions>): Promise<EngineError> {
  const out = join(work, `refused-${n++}`);
  const err = await importModel(src, { ...quiet, ...opts, out }).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(EngineError);
  expect(existsSync(out)).toBe(false);
  return err as EngineError;
}

describe('models import with an open_clip config', () => {
  it('no quick_gelu in model_cfg: exact GELU (open_clip\'s default), heads from the config; embeddings match the GELU model', async () => {
    const src = hubFolder({ model_cfg: modelCfg(), preprocess_cfg: OPENAI });
    const res = await importModel(src, { ...quiet, out: join(work, 'gelu') });
    expect(res.arch.activation).toBe('gelu');
    expect(res.arch.textHeads).toBe(4);
    expect(res.arch.visionHeads).toBe(1);
    expect(res.inferred.activation).toContain('open_clip_config.json model_cfg (no quick_gelu: open_clip runs exact GELU)');
    expect(res.inferred.textHeads).toContain('open_clip_config.json model_cfg.text_cfg.heads');
    expect(res.inferred.visionHeads).toContain('width 64 / head_width 64');
    expect(await textError(res.dir, 'tiny-gelu-vectors.safetensors')).toBeLessThan(1e-5);
  });

  it('quick_gelu: true gives QuickGELU; embeddings match the QuickGELU model', async () => {
    const src = hubFolder({ model_cfg: modelCfg({ quick_gelu: true }), preprocess_cfg: OPENAI });
    const res = await importModel(src, { ...quiet, out: join(work, 'quickgelu') });
    expect(res.arch.activation).toBe('quick_gelu');
    expect(res.inferred.activation).toContain('model_cfg.quick_gelu = true');
    expect(await textError(res.dir, 'tiny-quickgelu-vectors.safetensors')).toBeLessThan(1e-5);
  });

  it('a flag that contradicts the config is an error naming both; one that agrees is fine', async () => {
    const src = hubFolder({ model_cfg: modelCfg({ quick_gelu: true }) });
    const act = await refusal(src, { activation: 'gelu' });
    expect(act.code).toBe('invalid_input');
    expect(act.message).toMatch(/^--activation gelu contradicts the model's own config: .*open_clip_config\.json model_cfg\.quick_gelu = true gives quick_gelu/);
    const heads = await refusal(src, { textHeads: 8 });
    expect(heads.message).toMatch(/^--text-heads 8 contradicts the model's own config: .*text_cfg\.heads gives 4/);
    const res = await importModel(src, { ...quiet, out: join(work, 'agrees'), activation: 'quick_gelu', textHeads: 4 });
    expect(res.inferred.activation).toBe('flag');
  });

  it('preprocess_cfg mean/std go into the manifest (the engine normalizes with them)', async () => {
    const mean = [0.5, 0.5, 0.5];
    const std = [0.25, 0.25, 0.25];
    const res = await importModel(hubFolder({ model_cfg: modelCfg(), preprocess_cfg: { mean, std } }), { ...quiet, out: join(work, 'mean-std') });
    expect(res.manifest.preprocess).toEqual({ image_size: 32, mean, std });
    expect(res.inferred.preprocess).toContain('open_clip_config.json preprocess_cfg');
    // Without a preprocess_cfg: OpenAI's
    const plain = await importModel(hubFolder({ model_cfg: modelCfg() }), { ...quiet, out: join(work, 'no-pre') });
    expect(plain.manifest.preprocess).toEqual({ image_size: 32, ...OPENAI });
  });

  it('the CLI takes --open-clip-config FILE (a bare model config too); a missing or wrong file is refused naming it', async () => {
    const src = hubFolder(undefined);
    const cfg = join(work, 'ViT-tiny.json');
    writeFileSync(cfg, JSON.stringify(modelCfg()));
    const out = join(work, 'cli');
    const logs: string[] = [];
    const orig = { log: console.log, err: console.error };
    console.log = (s: string) => void logs.push(s);
    console.error = (s: string) => void logs.push(s);
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true); // --json: the progress lines
    try {
      expect(await main(['models', 'import', src, '-o', out, '--vocab', quiet.vocab!, '--open-clip-config', cfg, '--no-verify', '--json'])).toBe(0);
    } finally {
      console.log = orig.log;
      console.error = orig.err;
      stderr.mockRestore();
    }
    expect(JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')).activation).toBe('gelu');
    expect(JSON.parse(logs.at(-1)!).inferred.activation).toContain(`${cfg} (no quick_gelu`);

    const missing = await refusal(src, { openClipConfig: join(work, 'nope.json') });
    expect(missing.message).toBe(`open_clip config ${join(work, 'nope.json')} does not exist`);
    const notConfig = join(work, 'not-config.json');
    writeFileSync(notConfig, JSON.stringify({ hello: 'world' }));
    const wrong = await refusal(src, { openClipConfig: notConfig });
    expect(wrong.code).toBe('invalid_input');
    expect(wrong.message).toContain(`${notConfig}: it has neither vision_cfg nor text_cfg; it is not an open_clip model config`);
    const badFlag = join(work, 'bad-flag.json');
    writeFileSync(badFlag, JSON.stringify({ model_cfg: modelCfg({ quick_gelu: 'yes' }) }));
    expect((await refusal(src, { openClipConfig: badFlag })).message).toContain('quick_gelu is a string ("yes"), not true or false');
  });
});
