// Telling data a newer clipag wrote from damage (F1 of the compatibility review): a queue message with a
// higher `v` or a field this version does not know is a NewerQueueMessageError naming its job; garbage
// stays a plain ValidationError. newerWriterOf is the rule, on any strict schema.
import { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../shared/errors.ts';
import { GenerationSpec } from '../../shared/schemas/generation.ts';
import { NewerQueueMessageError, newerWriterOf, parseQueueMessage } from '../../shared/schemas/queue.ts';

const thrown = (body: string): unknown => {
  try {
    parseQueueMessage(body);
  } catch (error) {
    return error;
  }
  return undefined;
};

describe('parseQueueMessage and newer writers', () => {
  it.each([
    [{ v: 2, job_id: 'j1', owner: 'acme' }, ['v: 2']],
    [{ v: 1, job_id: 'j1', owner: 'acme', priority: 'high' }, ['priority']],
    [{ v: 7, job_id: 'j1', owner: 'acme', trace: { id: 'x' } }, ['trace', 'v: 7']],
  ])('%j is a newer writer\'s message for job j1 of acme', (body, unknown) => {
    const error = thrown(JSON.stringify(body));
    expect(error).toBeInstanceOf(NewerQueueMessageError);
    expect(error).toBeInstanceOf(ValidationError); // callers that only tell good from bad still refuse it
    expect((error as NewerQueueMessageError).job).toEqual({ job_id: 'j1', owner: 'acme' });
    expect((error as NewerQueueMessageError).unknown).toEqual(unknown);
    expect((error as Error).message).toMatch(/written by a newer clipag/);
  });

  it.each(['not json', '[]', '{}', '{"v":0,"job_id":"j1","owner":"acme"}', '{"v":"2","job_id":"j1","owner":"acme"}', '{"v":1.5,"job_id":"j1","owner":"acme"}', '{"v":2,"owner":"acme"}', '{"v":2,"job_id":"../j","owner":"acme"}', '{"v":1,"job_id":7,"owner":"acme","x":1}'])(
    'the garbage %s stays malformed',
    (body) => {
      const error = thrown(body);
      expect(error).toBeInstanceOf(ValidationError);
      expect(error).not.toBeInstanceOf(NewerQueueMessageError);
    },
  );

  it('a good message still parses', () => {
    expect(parseQueueMessage('{"v":1,"job_id":"j1","owner":"acme"}')).toEqual({ v: 1, job_id: 'j1', owner: 'acme' });
  });
});

describe('newerWriterOf', () => {
  const Doc = z
    .object({ v: z.literal(1), status: z.enum(['queued', 'done']), size: z.number().int().max(10), inner: z.object({ a: z.string() }).strict(), items: z.array(z.object({ b: z.number() }).strict()) })
    .strict()
    .refine((d) => d.size > 0, { message: 'size must be positive' });
  const good = { v: 1, status: 'queued', size: 3, inner: { a: 'x' }, items: [{ b: 1 }] };

  it('unknown keys at any depth: named, and the value parsed without them', () => {
    expect(newerWriterOf(Doc, { ...good, extra: 1, inner: { a: 'x', more: true }, items: [{ b: 1 }, { b: 2, c: 3 }] })).toEqual({
      unknown: expect.arrayContaining(['extra', 'inner.more', 'items.1.c']),
      data: { ...good, items: [{ b: 1 }, { b: 2 }] },
    });
  });

  it('an enum value or a version this version does not know: named, with no value to use', () => {
    expect(newerWriterOf(Doc, { ...good, status: 'paused' })).toEqual({ unknown: ['status: "paused"'], data: undefined });
    expect(newerWriterOf(Doc, { ...good, v: 2, extra: 1 })).toEqual({ unknown: ['extra', 'v: 2'], data: undefined });
  });

  it('damage is not a newer writer: a wrong type, a broken bound, a failed refinement once the unknown keys are set aside, a lower version', () => {
    expect(newerWriterOf(Doc, { ...good, size: 'three', extra: 1 })).toBeNull();
    expect(newerWriterOf(Doc, { ...good, size: 11 })).toBeNull();
    expect(newerWriterOf(Doc, { ...good, size: 0, extra: 1 })).toBeNull();
    expect(newerWriterOf(Doc, { ...good, v: 0 })).toBeNull();
    expect(newerWriterOf(Doc, { ...good, status: 3 })).toBeNull();
    expect(newerWriterOf(Doc, { ...good, inner: 'x', extra: 1 })).toBeNull();
    expect(newerWriterOf(Doc, good)).toBeNull(); // nothing unknown: not for this rule
  });

  it('a stored spec with a request parameter this version does not know (the spec stays strict on purpose)', () => {
    const spec = JSON.parse(JSON.stringify(GenerationSpec.parse({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 2, seed: 7, model: 'tiny' })));
    expect(GenerationSpec.safeParse({ ...spec, guidance: 3 }).success).toBe(false);
    expect(newerWriterOf(GenerationSpec, { ...spec, guidance: 3 })).toEqual({ unknown: ['guidance'], data: GenerationSpec.parse(spec) });
    expect(newerWriterOf(GenerationSpec, { ...spec, steps: 'two', guidance: 3 })).toBeNull();
  });
});
