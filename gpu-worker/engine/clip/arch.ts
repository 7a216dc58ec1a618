// CLIP architecture configs (OpenAI/open_clip layout) and inference of a config from tensor shapes.

import { z } from 'zod';
import { EngineError } from '../errors.ts';

export const ActivationSchema = z.enum(['quick_gelu', 'gelu']);
export type Activation = z.infer<typeof ActivationSchema>;

/**
 * Upper bounds far above any published CLIP (ViT-bigG-14: 48 vision layers, width 1664; vocabularies
 * of 250 000 tokens): a manifest is input, and a layer count of 200 000 000 must be refused by its
 * check, not build a list of tensors until the process runs out of memory.
 */
const size = (max: number) => z.number().int().positive().max(max);

export const ClipArchSchema = z
  .object({
    embedDim: size(65_536),
    imageResolution: size(4096),
    visionLayers: size(512),
    visionWidth: size(65_536),
    visionPatchSize: size(1024),
    visionHeads: size(1024),
    // The start token, at least one word and the end token: at 2 every prompt is cut to [start, end]
    // and embeds alike; at 1 none can be encoded at all.
    contextLength: size(65_536).min(3, 'must be at least 3 (the start token, one token of text and the end token)'),
    vocabSize: size(4_000_000),
    textWidth: size(65_536),
    textHeads: size(1024),
    textLayers: size(512),
    activation: ActivationSchema,
  })
  .strict()
  .superRefine((a, ctx) => {
    if (a.imageResolution % a.visionPatchSize !== 0) ctx.addIssue({ code: 'custom', message: 'imageResolution must be a multiple of visionPatchSize' });
    if (a.visionWidth % a.visionHeads !== 0) ctx.addIssue({ code: 'custom', message: 'visionWidth must be divisible by visionHeads' });
    if (a.textWidth % a.textHeads !== 0) ctx.addIssue({ code: 'custom', message: 'textWidth must be divisible by textHeads' });
  });
export type ClipArch = z.infer<typeof ClipArchSchema>;

/** Published configs. Heads follow the official code: vision heads = width // 64; text heads from the config. */
export const PRESETS = {
  'ViT-B-32': {
    embedDim: 512, imageResolution: 224, visionLayers: 12, visionWidth: 768, visionPatchSize: 32, visionHeads: 12,
    contextLength: 77, vocabSize: 49408, textWidth: 512, textHeads: 8, textLayers: 12, activation: 'quick_gelu',
  },
  'ViT-B-16': {
    embedDim: 512, imageResolution: 224, visionLayers: 12, visionWidth: 768, visionPatchSize: 16, visionHeads: 12,
    contextLength: 77, vocabSize: 49408, textWidth: 512, textHeads: 8, textLayers: 12, activation: 'quick_gelu',
  },
  'ViT-L-14': {
    embedDim: 768, imageResolution: 224, visionLayers: 24, visionWidth: 1024, visionPatchSize: 14, visionHeads: 16,
    contextLength: 77, vocabSize: 49408, textWidth: 768, textHeads: 12, textLayers: 12, activation: 'quick_gelu',
  },
  /** The reference fixture's config (../shared/data/clip-reference/README.md). */
  tiny: {
    embedDim: 32, imageResolution: 32, visionLayers: 2, visionWidth: 64, visionPatchSize: 8, visionHeads: 1,
    contextLength: 77, vocabSize: 49408, textWidth: 64, textHeads: 4, textLayers: 2, activation: 'quick_gelu',
  },
} satisfies Record<string, ClipArch>;
export type PresetName = keyof typeof PRESETS;

/** Every tensor a CLIP state_dict holds, with its shape, in the official order. */
export function expectedTensors(a: ClipArch): [string, number[]][] {
  const grid = a.imageResolution / a.visionPatchSize;
  const out: [string, number[]][] = [
    ['positional_embedding', [a.contextLength, a.textWidth]],
    ['text_projection', [a.textWidth, a.embedDim]],
    ['logit_scale', []],
    ['visual.class_embedding', [a.visionWidth]],
    ['visual.positional_embedding', [grid * grid + 1, a.visionWidth]],
    ['visual.proj', [a.visionWidth, a.embedDim]],
    ['visual.conv1.weight', [a.visionWidth, 3, a.visionPatchSize, a.visionPatchSize]],
    ['visual.ln_pre.weight', [a.visionWidth]],
    ['visual.ln_pre.bias', [a.visionWidth]],
  ];
  const block = (prefix: string, w: number) => {
    out.push(
      [`${prefix}.attn.in_proj_weight`, [3 * w, w]],
      [`${prefix}.attn.in_proj_bias`, [3 * w]],
      [`${prefix}.attn.out_proj.weight`, [w, w]],
      [`${prefix}.attn.out_proj.bias`, [w]],
      [`${prefix}.ln_1.weight`, [w]],
      [`${prefix}.ln_1.bias`, [w]],
      [`${prefix}.mlp.c_fc.weight`, [4 * w, w]],
      [`${prefix}.mlp.c_fc.bias`, [4 * w]],
      [`${prefix}.mlp.c_proj.weight`, [w, 4 * w]],
      [`${prefix}.mlp.c_proj.bias`, [w]],
      [`${prefix}.ln_2.weight`, [w]],
      [`${prefix}.ln_2.bias`, [w]],
    );
  };
  for (let i = 0; i < a.visionLayers; i++) block(`visual.transformer.resblocks.${i}`, a.visionWidth);
  out.push(['visual.ln_post.weight', [a.visionWidth]], ['visual.ln_post.bias', [a.visionWidth]]);
  for (let i = 0; i < a.textLayers; i++) block(`transformer.resblocks.${i}`, a.textWidth);
  out.push(['token_embedding.weight', [a.vocabSize, a.textWidth]], ['ln_final.weight', [a.textWidth]], ['ln_final.bias', [a.textWidth]]);
  return out;
}

/** Tensors of the image tower only (what a vision-only bundle needs). */
export const isVisionTensor = (name: string) => name.startsWith('visual.');

/**
 * Infer the architecture from tensor shapes, like the official `build_model`.
 * Heads cannot be read from shapes; they default to width // 64 (the official rule) unless overridden.
 * The activation cannot be read either; it defaults to QuickGELU (OpenAI weights).
 */
export function inferArch(
  shapes: Map<string, number[]>,
  overrides: Partial<Pick<ClipArch, 'visionHeads' | 'textHeads' | 'activation'>> = {},
): ClipArch {
  const need = (name: string): number[] => {
    const s = shapes.get(name);
    if (!s) throw new EngineError('invalid_weights', `cannot infer the architecture: tensor ${name} is missing (is this an OpenAI/open_clip CLIP state_dict?)`, { tensor: name });
    return s;
  };
  const conv = need('visual.conv1.weight');
  if (conv.length !== 4 || conv[1] !== 3 || conv[2] !== conv[3]) {
    throw new EngineError('invalid_weights', `visual.conv1.weight has shape [${conv}]; expected [width, 3, patch, patch] of a ViT (ResNet CLIPs are not supported)`, { tensor: 'visual.conv1.weight' });
  }
  const [visionWidth, , patch] = conv;
  const vpos = need('visual.positional_embedding');
  const grid = Math.round(Math.sqrt(vpos[0] - 1));
  if (grid * grid + 1 !== vpos[0]) throw new EngineError('invalid_weights', `visual.positional_embedding has ${vpos[0]} rows, which is not grid²+1`, { tensor: 'visual.positional_embedding' });
  const tok = need('token_embedding.weight');
  const textWidth = tok[1];
  const arch: ClipArch = {
    embedDim: need('visual.proj')[1],
    imageResolution: grid * patch,
    visionLayers: countLayers(shapes, VISION_BLOCKS),
    visionWidth,
    visionPatchSize: patch,
    visionHeads: overrides.visionHeads ?? Math.max(1, Math.floor(visionWidth / 64)),
    contextLength: need('positional_embedding')[0],
    vocabSize: tok[0],
    textWidth,
    textHeads: overrides.textHeads ?? Math.max(1, Math.floor(textWidth / 64)),
    textLayers: countLayers(shapes, TEXT_BLOCKS),
    activation: overrides.activation ?? 'quick_gelu',
  };
  const parsed = ClipArchSchema.safeParse(arch);
  if (!parsed.success) {
    throw new EngineError('invalid_weights', `inferred architecture is inconsistent: ${parsed.error.issues.map((i) => (i.path.length ? `${i.path.join('.')} is ${JSON.stringify((arch as Record<string, unknown>)[String(i.path[0])])}: ` : '') + i.message).join('; ')}`);
  }
  return arch;
}

const VISION_BLOCKS = 'visual.transformer.resblocks';
const TEXT_BLOCKS = 'transformer.resblocks';

/** How many residual blocks `prefix.0`, `prefix.1`, … the weights hold, counted up to the first gap. */
function countLayers(shapes: Map<string, number[]>, prefix: string): number {
  let n = 0;
  while (shapes.has(`${prefix}.${n}.ln_1.weight`)) n++;
  return n;
}

/** Check a weight set against an architecture: every missing, extra or misshapen tensor is listed. */
export function checkWeights(a: ClipArch, shapes: Map<string, number[]>, opts: { visionOnly?: boolean; textOnly?: boolean; allowExtra?: boolean } = {}): void {
  const problems: string[] = [];
  // Layer counts first: a count that is off says so in one line, not as a block's dozen tensors per layer.
  for (const [tower, prefix, declared, skip] of [['visionLayers', VISION_BLOCKS, a.visionLayers, opts.textOnly], ['textLayers', TEXT_BLOCKS, a.textLayers, opts.visionOnly]] as const) {
    const found = countLayers(shapes, prefix);
    if (!skip && found !== declared) problems.push(`architecture.${tower} is ${declared}, but the weights hold ${found} (${prefix}.N)`);
  }
  if (problems.length) throw new EngineError('invalid_weights', `weights do not match the architecture: ${problems.join('; ')}`, { problems });
  const expected = expectedTensors(a).filter(([n]) => (!opts.visionOnly || isVisionTensor(n)) && (!opts.textOnly || !isVisionTensor(n)));
  const names = new Set(expected.map(([n]) => n));
  for (const [name, shape] of expected) {
    const got = shapes.get(name);
    if (!got) problems.push(`missing ${name} [${shape}]`);
    else if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) problems.push(`${name} has shape [${got}], expected [${shape}]`);
  }
  if (!opts.allowExtra) {
    for (const name of shapes.keys()) if (!names.has(name) && !(opts.visionOnly && !isVisionTensor(name))) problems.push(`unexpected tensor ${name}${opts.textOnly && isVisionTensor(name) ? ' (the image tower comes from image_onnx)' : ''}`);
  }
  if (problems.length) {
    const shown = problems.slice(0, 12).join('; ') + (problems.length > 12 ? `; … ${problems.length - 12} more` : '');
    throw new EngineError('invalid_weights', `weights do not match the architecture: ${shown}`, { problems });
  }
}
