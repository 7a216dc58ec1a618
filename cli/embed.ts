// clipag embed: print a text or image embedding.
import { readFileSync } from 'node:fs';
import { ClipEngine } from '../gpu-worker/engine/engine.ts';
import { EngineError, whereFrom } from '../gpu-worker/engine/errors.ts';
import { decodeImage } from '../gpu-worker/engine/synth/image.ts';
import { UsageError, modelDir, parseCliArgs } from './common.ts';

export const summary = 'print the CLIP embedding of a text or an image';
export const usage = `usage: clipag embed [--model DIR] (--text T | --image PNG) [--raw] [--json]

  --model DIR   model bundle (default: models/toy)
  --text T      embed a text prompt
  --image PNG   embed a PNG image (resized to the encoder size)
  --raw         print the unnormalized features instead of the unit vector
  --json        print one JSON object: {model, kind, dim, embedding}`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCliArgs({
    args: argv,
    options: { model: { type: 'string' }, text: { type: 'string' }, image: { type: 'string' }, raw: { type: 'boolean' }, json: { type: 'boolean' } },
    strict: true,
  });
  if ((values.text === undefined) === (values.image === undefined)) throw new UsageError('give exactly one of --text or --image');
  // A usage error, as generate's empty prompt is.
  if (values.text !== undefined && !values.text.trim()) throw new UsageError('--text is empty');
  const engine = await ClipEngine.open(modelDir(values.model));
  try {
    let res;
    if (values.text !== undefined) {
      // What the model cannot read of the text (as generate warns): its embedding says little about those words.
      for (const w of engine.promptWarnings([values.text])) process.stderr.write(`warning: ${w}\n`);
      res = await engine.embedText([values.text]);
    }
    else {
      let bytes: Uint8Array;
      try {
        bytes = readFileSync(values.image!);
      } catch (e) {
        throw new EngineError('invalid_input', `cannot read image ${values.image}: ${(e as Error).message}`);
      }
      res = await engine.embedImages([whereFrom(`--image ${values.image}`, () => decodeImage(bytes, { maxBytes: 50 << 20, maxPixels: 4096 * 4096 }))]);
    }
    const vec = Array.from(values.raw ? res.raw : res.unit);
    if (values.json) {
      console.log(JSON.stringify({ model: engine.name, kind: values.text !== undefined ? 'text' : 'image', normalized: !values.raw, dim: vec.length, embedding: vec }));
    } else console.log(vec.map((v) => v.toFixed(6)).join(' '));
    return 0;
  } finally {
    await engine.close();
  }
}
