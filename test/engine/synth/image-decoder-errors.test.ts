// What a job's error says when fast-png itself fails on a file the shared check took: the reason in
// words, never a message that ends at a colon or is empty. fast-png is replaced here by a decoder that
// throws as fast-png does (its inflate error is "Error while decompressing the data:" with the reason
// only in its cause), since the check now refuses every file known to reach that.
import { describe, expect, it, vi } from 'vitest';

const thrown = vi.hoisted(() => ({ error: new Error('') as unknown }));

vi.mock('fast-png', async (importOriginal) => {
  const real = await importOriginal<typeof import('fast-png')>();
  return { ...real, decode: () => { throw thrown.error; } };
});

const { decodeImage, encodePng, solidImage } = await import('../../../gpu-worker/engine/synth/image.ts');
const { EngineError } = await import('../../../gpu-worker/engine/errors.ts');

function messageOf(error: unknown): string {
  thrown.error = error;
  try {
    decodeImage(encodePng(solidImage(2, 2, [0.5, 0.5, 0.5])));
  } catch (e) {
    expect(e).toBeInstanceOf(EngineError);
    expect((e as InstanceType<typeof EngineError>).code).toBe('invalid_input');
    return (e as Error).message;
  }
  throw new Error('expected decodeImage to fail');
}

describe('decodeImage when the decoder fails', () => {
  it('an error with an empty message gets a fixed reason', () => {
    expect(messageOf(new Error(''))).toBe('corrupt PNG: the decoder could not read it (a damaged file, or a feature the decoder does not support)');
    expect(messageOf('a string, not an Error')).toBe('corrupt PNG: the decoder could not read it (a damaged file, or a feature the decoder does not support)');
  });

  it("fast-png's inflate error ending at a colon is completed from its cause", () => {
    const wrapped = new Error('Error while decompressing the data:', { cause: new Error('invalid zlib data: need dictionary') });
    expect(messageOf(wrapped)).toBe('corrupt PNG: Error while decompressing the data: invalid zlib data: need dictionary');
    expect(messageOf(new Error('Error while decompressing the data:'))).toBe('corrupt PNG: Error while decompressing the data');
  });

  it('an ordinary message is kept as it was', () => {
    expect(messageOf(new Error('Unsupported filter: 9'))).toBe('corrupt PNG: Unsupported filter: 9');
  });
});
