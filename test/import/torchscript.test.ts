// OpenAI's official CLIP files (what clip.load downloads, e.g. ViT-B-32.pt) are TorchScript archives
// (torch.jit.save): data.pkl pickles the compiled model's class under `__torch__.`, next to
// constants.pkl and the model's code/. The import refuses them (it runs no model code) with the export
// that works, torch.jit.load(...).state_dict(), instead of calling the file malicious and suggesting
// torch.load. The archives here follow torch.jit.save's layout with minimal contents.
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';
import { importModel } from '../../gpu-worker/engine/import/import.ts';
import { referencePath } from '../helpers/reference.ts';
import { zipStored } from './torch-writer.ts';

const work = mkdtempSync(join(tmpdir(), 'clipag-torchscript-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const vocab = referencePath('bpe_simple_vocab_16e6.txt.gz');

/** PROTO 2, GLOBAL __torch__.multimodal.model.multimodal_transformer Multimodal, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, BUILD, STOP. */
const jitPickle = Buffer.concat([
  Buffer.from([0x80, 0x02]),
  Buffer.from('c__torch__.multimodal.model.multimodal_transformer\nMultimodal\n', 'latin1'),
  Buffer.from([0x29, 0x81, 0x7d, 0x62, 0x2e]),
]);

/** `<work>/<folder>/ViT-B-32.pt`, the name clip.load gives the file. */
function jitArchive(folder: string, withCodeAndConstants: boolean): string {
  const records: [string, Uint8Array][] = [['ViT-B-32/data.pkl', jitPickle]];
  if (withCodeAndConstants) {
    records.push(['ViT-B-32/code/__torch__/multimodal/model/multimodal_transformer.py', Buffer.from('class Multimodal(Module):\n  pass\n')]);
    records.push(['ViT-B-32/constants.pkl', Buffer.from([0x80, 0x02, 0x29, 0x2e])]);
  }
  records.push(['ViT-B-32/version', Buffer.from('3\n')]);
  mkdirSync(join(work, folder));
  const path = join(work, folder, 'ViT-B-32.pt');
  writeFileSync(path, zipStored(records));
  return path;
}

async function refusal(src: string): Promise<EngineError> {
  const out = join(work, `out-${Math.random().toString(36).slice(2)}`);
  const err = await importModel(src, { out, vocab, verify: false }).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(EngineError);
  expect(existsSync(out)).toBe(false);
  return err as EngineError;
}

function expectExportAdvice(err: EngineError, path: string): void {
  expect(err.code).toBe('invalid_model');
  expect(err.message).toContain(`${path} is a TorchScript (torch.jit) archive, as OpenAI's clip.load downloads`);
  expect(err.message).toContain(`torch.save(torch.jit.load('ViT-B-32.pt', map_location='cpu').state_dict(), 'ViT-B-32-state-dict.pt')`);
  // Not the advice for a hostile pickle: the file is no attack, and torch.load cannot open it.
  expect(err.message).not.toMatch(/malicious/);
  expect(err.message).not.toMatch(/torch\.load\b/);
}

describe('TorchScript archives (OpenAI clip.load files)', () => {
  it('an archive with constants.pkl and code/ is recognized before its pickle is decoded, with the export that works', async () => {
    const path = jitArchive('full', true);
    expectExportAdvice(await refusal(path), path);
  });

  it('a data.pkl that asks for a __torch__ class is recognized too (no constants.pkl or code/ records)', async () => {
    const path = jitArchive('bare', false);
    expectExportAdvice(await refusal(path), path);
  });

  it('a hostile global outside __torch__ is still refused as one', async () => {
    const err = await refusal(referencePath('malicious.pt'));
    expect(err.message).toMatch(/posix system|os system/);
    expect(err.message).toMatch(/malicious/);
  });
});
