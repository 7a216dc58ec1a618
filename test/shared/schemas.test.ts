import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../shared/errors.ts';
import {
  ApiKeyRecord,
  ErrorEnvelope,
  GenerationRequest,
  GenerationSpec,
  JobRecord,
  encodeQueueMessage,
  newJobRecord,
  parseQueueMessage,
  weightedPrompts,
} from '../../shared/schemas/index.ts';

const issuesOf = (input: unknown) => {
  const r = GenerationRequest.safeParse(input);
  return r.success ? [] : r.error.issues.map((i) => i.path.join('.'));
};

describe('GenerationRequest', () => {
  it("fills defaults (the size is left to the API: the model's own) and trims the prompt; a side must be a multiple of 32", () => {
    expect(GenerationRequest.parse({ prompt: '  a red fox  ' })).toEqual({
      prompt: 'a red fox',
      steps: 100,
      n: 1,
      init: 'gmm',
    });
    expect(GenerationRequest.safeParse({ prompt: 'x', width: 100 }).error?.issues[0]).toMatchObject({ path: ['width'], message: 'must be a multiple of 32 (such as 96 or 128)' });
    // A stored spec from before sizes were the model's own still gets 224.
    expect(GenerationSpec.parse({ prompt: 'x', model: 'toy' })).toMatchObject({ width: 224, height: 224 });
  });

  it('a spec stored before the strength check (strength with a gmm start) still parses as a job spec', () => {
    expect(GenerationSpec.parse({ prompt: 'x', model: 'toy', init: 'gmm', strength: 0.5 }).strength).toBe(0.5);
  });

  it('leaves model unset (the API fills in the deployment default); a stored spec must name one', () => {
    expect(GenerationRequest.parse({ prompt: 'x' }).model).toBeUndefined();
    expect(GenerationRequest.parse({ prompt: 'x', model: 'clipag-vitb32' }).model).toBe('clipag-vitb32');
    expect(GenerationSpec.safeParse({ prompt: 'x' }).success).toBe(false);
    expect(GenerationSpec.parse({ prompt: 'x', model: 'toy' }).model).toBe('toy');
  });

  it('accepts weighted prompts and every init form', () => {
    const spec = GenerationSpec.parse({
      model: 'toy',
      prompts: [
        { text: 'a cat', weight: 1 },
        { text: 'blurry', weight: -0.5 },
      ],
      init: 'upload:up_123',
      strength: 0.6,
      seed: 4294967295,
      width: 1024,
      height: 64,
      n: 4,
      steps: 500,
    });
    expect(weightedPrompts(spec)).toHaveLength(2);
    expect(GenerationRequest.parse({ prompt: 'x', init: 'noise' }).init).toBe('noise');
    expect(weightedPrompts(GenerationSpec.parse({ prompt: 'x', model: 'toy' }))).toEqual([{ text: 'x', weight: 1 }]);
  });

  it.each([
    [{}, 'prompt'],
    [{ prompt: 'a', prompts: [{ text: 'b', weight: 1 }] }, 'prompt'],
    [{ prompt: '   ' }, 'prompt'],
    [{ prompt: 'x'.repeat(301) }, 'prompt'],
    [{ prompt: 'a', width: 100 }, 'width'],
    [{ prompt: 'a', height: 32 }, 'height'],
    [{ prompt: 'a', width: 1056 }, 'width'],
    [{ prompt: 'a', steps: 0 }, 'steps'],
    [{ prompt: 'a', steps: 501 }, 'steps'],
    [{ prompt: 'a', steps: 1.5 }, 'steps'],
    [{ prompt: 'a', n: 5 }, 'n'],
    [{ prompt: 'a', seed: -1 }, 'seed'],
    [{ prompt: 'a', seed: 2 ** 32 }, 'seed'],
    [{ prompt: 'a', init: 'upload:' }, 'init'],
    [{ prompt: 'a', init: 'upload:../x' }, 'init'],
    [{ prompt: 'a', init: 'zeros' }, 'init'],
    [{ prompt: 'a', init: 'upload:up_1', strength: 1.5 }, 'strength'],
    [{ prompt: 'a', strength: 0.5 }, 'strength'],
    [{ prompts: Array.from({ length: 8 }, (_, i) => ({ text: `p${i}`, weight: 1 })), negative_prompt: 'blurry' }, 'negative_prompt'],
    [{ prompt: 'a', init: 'noise', strength: 0.5 }, 'strength'],
    [{ prompt: 'a', model: 'Bad Name' }, 'model'],
    [{ prompt: 'a', colour: 'red' }, ''],
    [{ prompts: [{ text: 'a', weight: 0 }] }, 'prompts.0.weight'],
    [{ prompts: [{ text: 'a', weight: Infinity }] }, 'prompts.0.weight'],
    [{ prompts: [{ text: 'a', weight: -1 }, { text: 'b', weight: -2 }] }, 'prompts'],
    [{ prompts: [] }, 'prompts'],
    [{ prompts: [{ text: 'a', weight: 1, extra: 1 }] }, 'prompts.0'],
  ])('rejects %j at %s', (input, path) => {
    expect(issuesOf(input)).toContain(path);
  });
});

describe('JobRecord', () => {
  const spec = GenerationSpec.parse({ prompt: 'a fox', steps: 10, model: 'toy' });

  it('newJobRecord makes a valid queued record at version 1', () => {
    const job = newJobRecord({ id: 'j1', owner: 'acme', spec, now: new Date('2025-01-01T00:00:00Z') });
    expect(job).toMatchObject({ status: 'queued', version: 1, progress: { step: 0, total: 10 }, created_at: '2025-01-01T00:00:00.000Z' });
    expect(JobRecord.parse(JSON.parse(JSON.stringify(job)))).toEqual(job);
  });

  it('keeps top-level fields it does not know (a newer version wrote them); rejects bad statuses and bad body hashes', () => {
    const job = newJobRecord({ id: 'j1', owner: 'acme', spec });
    expect(JobRecord.parse({ ...job, added_later: { x: 1 } })).toEqual({ ...job, added_later: { x: 1 } });
    expect(JobRecord.safeParse({ ...job, spec: { ...job.spec, extra: 1 } }).success).toBe(false); // the spec stays strict
    expect(JobRecord.safeParse({ ...job, status: 'paused' }).success).toBe(false);
    expect(JobRecord.safeParse({ ...job, body_hash: 'abc' }).success).toBe(false);
    expect(JobRecord.safeParse({ ...job, owner: '../x' }).success).toBe(false);
  });
});

describe('QueueMessage', () => {
  it('round-trips a small message', () => {
    const body = encodeQueueMessage({ v: 1, job_id: 'j1', owner: 'acme' });
    expect(body).toBe('{"v":1,"job_id":"j1","owner":"acme"}');
    expect(parseQueueMessage(body)).toEqual({ v: 1, job_id: 'j1', owner: 'acme' });
  });

  it.each(['not json', '{}', '{"v":2,"job_id":"j","owner":"o"}', '{"v":1,"job_id":"j","owner":"o","spec":{}}', '{"v":1,"job_id":"../j","owner":"o"}'])(
    'rejects the malformed body %s with a ValidationError',
    (body) => {
      expect(() => parseQueueMessage(body)).toThrow(ValidationError);
    },
  );
});

describe('ErrorEnvelope and ApiKeyRecord', () => {
  it('ErrorEnvelope requires code, message, param and request_id', () => {
    expect(ErrorEnvelope.safeParse({ error: { code: 'x', message: 'm', param: null, request_id: 'r' } }).success).toBe(true);
    expect(ErrorEnvelope.safeParse({ error: { code: 'x', message: 'm', request_id: 'r' } }).success).toBe(false);
  });

  it('ApiKeyRecord stores a sha256 hash, never a secret', () => {
    const record = { id: 'k1', name: 'acme', owner: 'acme', key_sha256: 'a'.repeat(64), created_at: '2025-01-01T00:00:00.000Z', revoked_at: null };
    expect(ApiKeyRecord.parse(record)).toEqual(record);
    expect(ApiKeyRecord.safeParse({ ...record, key_sha256: 'sk_live_secret' }).success).toBe(false);
    expect(ApiKeyRecord.safeParse({ ...record, secret: 'x' }).success).toBe(false);
  });
});
