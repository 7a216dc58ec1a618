// `clipag models import` refuses a tokenizer with more ids than the model's token embedding has rows
// before anything is written, --no-verify included: loading would refuse that bundle.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { importModel } from '../../gpu-worker/engine/import/import.ts';
import { readSafetensors, writeSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';
import { writeClipTokenizerJson } from '../../gpu-worker/engine/clip/tokenizer-json.ts';
import { referencePath } from '../helpers/reference.ts';

const work = mkdtempSync(join(tmpdir(), 'clipag-import-checks-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const vocab = referencePath('bpe_simple_vocab_16e6.txt.gz');

/** The tiny reference CLIP with its token embedding cut to `rows` rows (the CLIP tokenizer has 49 408 ids). */
async function fewerRows(rows: number): Promise<string> {
  const w = readSafetensors(referencePath('tiny-quickgelu.safetensors')).tensors;
  const t = w.get('token_embedding.weight')!;
  w.set('token_embedding.weight', { ...t, dims: [rows, t.dims[1]!], data: t.data.slice(0, rows * t.dims[1]!) });
  const path = join(work, `rows${rows}.safetensors`);
  await writeSafetensors(path, w);
  return path;
}

async function refusal(p: Promise<unknown>): Promise<EngineError> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(EngineError);
  return e as EngineError;
}

describe('tokenizer ids beyond the token embedding', () => {
  it('--vocab (49 408 ids) on a 49 000-row embedding is refused before anything is written, --no-verify too', async () => {
    const src = await fewerRows(49_000);
    const out = join(work, 'out-vocab');
    const e = await refusal(importModel(src, { out, vocab, textHeads: 4, verify: false }));
    expect(e.code).toBe('invalid_tokenizer');
    expect(e.message).toMatch(/built from --vocab .* has 49408 token ids, but the model's token embedding \(token_embedding\.weight\) has only 49000 rows/);
    expect(e.message).toMatch(/nothing was written/);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(work).filter((f) => f.includes('out-vocab'))).toEqual([]); // no staging folder left either
  });

  it('--tokenizer with more ids than rows is refused the same way', async () => {
    const src = await fewerRows(49_000);
    const tok = join(work, 'tokenizer.json');
    writeClipTokenizerJson(vocab, tok);
    const out = join(work, 'out-tok');
    const e = await refusal(importModel(src, { out, tokenizer: tok, textHeads: 4, verify: false }));
    expect(e.code).toBe('invalid_tokenizer');
    expect(e.message).toContain(`--tokenizer ${tok} has 49408 token ids, but the model's token embedding (token_embedding.weight) has only 49000 rows`);
    expect(existsSync(out)).toBe(false);
  });
});
