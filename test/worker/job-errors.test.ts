// What a failed job may carry (shared/error-codes.ts JOB_ERROR_CODES, a review of the error catalogue):
// only the documented codes, a record the job store refuses as a bug of ours (internal_error, logged
// at error), never as the caller's `validation_error` with zod's dump; and an image score that is not
// finite, which made the whole record refused, left out instead. The ports are the real local ones;
// the synthesizers are stand-ins that return what the test needs.
import { afterEach, describe, expect, it } from 'vitest';
import { EngineError, type EngineErrorCode } from '../../gpu-worker/engine/errors.ts';
import { attemptErrorOf, classifyError, INTERNAL_JOB_ERROR_MESSAGE, jobErrorOf } from '../../gpu-worker/worker/errors.ts';
import { isJobErrorCode, JOB_ERROR_CODES } from '../../shared/error-codes.ts';
import { ConfigError, NonRetryableError, PreconditionFailedError, ValidationError } from '../../shared/errors.ts';
import { RefusedJobRecordError } from '../../shared/jobstore.ts';
import { OWNER, listKeys, makeEnv, submit, waitFor } from './helpers.ts';
import { finishedOf, standInImage, start, stepping, stopWorkers } from './stand-ins.ts';

afterEach(stopWorkers);

/** Every engine code, so that a new one fails to typecheck here until it is placed. */
const ENGINE_CODES: Record<EngineErrorCode, true> = {
  unsupported_op: true, not_differentiable: true, invalid_graph: true, invalid_model: true, invalid_weights: true, invalid_tokenizer: true,
  invalid_input: true, runtime_unavailable: true, runtime_failed: true, numerical_error: true, aborted: true,
};

describe('jobErrorOf keeps a failed job to the documented codes', () => {
  it('an engine code a job can fail with for good is in the table, with its own message', () => {
    for (const code of Object.keys(ENGINE_CODES) as EngineErrorCode[]) {
      const error = new EngineError(code, `the ${code} detail`);
      // The retryable ones end a job as retries_exhausted (or out_of_memory), never as themselves.
      if (classifyError(error) === 'retryable') continue;
      expect(isJobErrorCode(code), code).toBe(true);
      expect(jobErrorOf(error)).toEqual({ code, message: `the ${code} detail` });
    }
  });

  it('any other code is internal_error with a generic message; the attempt keeps its own code for the log line', () => {
    const cases = [
      new ValidationError('invalid job record: [{"path":["outputs",0,"clip_score"]}]', 'job'),
      new NonRetryableError('S3 bucket "clipag-prod-models" does not exist', { code: 'config_error' }),
      new ConfigError(['CLIPAG_BUCKET: required']),
      new PreconditionFailedError('object already exists: acct_x/jobs/y.json'),
      new RefusedJobRecordError('it does not validate: clip_score'),
      new EngineError('runtime_failed', 'onnxruntime run failed: shapes'),
    ];
    for (const error of cases) {
      expect(jobErrorOf(error), error.message).toEqual({ code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE });
      expect(attemptErrorOf(error).code, error.message).toBe(error.code);
    }
    expect(jobErrorOf('a string')).toEqual({ code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE });
    expect(jobErrorOf({ code: 'invalid_input', message: 'a look-alike, not an error of ours' })).toEqual({ code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE });
  });

  it('the codes the worker and the API write themselves are in the table', () => {
    const written = ['timeout', 'content_policy', 'retries_exhausted', 'out_of_memory', 'invalid_model', 'internal_error', 'expired', 'enqueue_failed'];
    for (const code of written) expect(isJobErrorCode(code), code).toBe(true);
    expect(new Set(JOB_ERROR_CODES.map((e) => e.code)).size).toBe(JOB_ERROR_CODES.length);
  });
});

describe('a failure with a code the table does not list', () => {
  it('fails the job internal_error with a generic message, logged at error and counted by the metric with its own code', async () => {
    const env = await makeEnv();
    const thrown = [
      new NonRetryableError('S3 bucket "clipag-prod-models" does not exist', { code: 'config_error' }),
      new ValidationError('key conflicts with an existing key used as a folder: /srv/clipag/data/outputs/x', 'key'),
    ];
    for (const error of thrown) {
      const job = await submit(env, {});
      const w = start(env, { run: async () => Promise.reject(error) });
      await waitFor('the job to finish', () => finishedOf(w.events));
      await w.worker.stop();
      expect((await env.jobs.get(OWNER, job.id))!, error.code).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE } });
      expect(w.logs.find((l) => l.msg === 'job attempt failed'), error.code).toMatchObject({ level: 'error', fields: { class: 'permanent', error: { code: error.code, message: error.message } } });
      // The failures-by-code metric keeps the error's own code; the job shows internal_error.
      expect(w.logs.find((l) => l.msg === 'job finished'), error.code).toMatchObject({ fields: { outcome: 'failed', error_code: error.code, error: { code: 'internal_error' } } });
    }
  });
});

describe('a record the job store refuses to write', () => {
  it('fails the job internal_error with a generic message and an error line that keeps the detail, on its first attempt', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 2 });
    // A width of 0: the record's JobOutput refuses it, as it would any value the worker got wrong.
    const w = start(env, stepping(2, 1, undefined, [standInImage(0), { ...standInImage(1), width: 0 }]));
    await waitFor('the job to finish', () => finishedOf(w.events));
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec).toMatchObject({ status: 'failed', attempts: 1, error: { code: 'internal_error', message: INTERNAL_JOB_ERROR_MESSAGE }, outputs: [] });
    expect(finishedOf(w.events)).toMatchObject({ outcome: 'failed', error: { code: 'internal_error' } });
    // A bug: an error line (which pages), with the store's own words for the operator.
    const failed = w.logs.find((l) => l.msg === 'job attempt failed');
    expect(failed).toMatchObject({ level: 'error', fields: { class: 'permanent', error: { name: 'RefusedJobRecordError', code: 'internal_error' } } });
    expect(String((failed!.fields!.error as { message: string }).message)).toMatch(/^the job store refused to write a job record: it does not validate: .*"width"/s);
    // Not storage trouble: no retries in place, no dead letter, and the image it stored is removed.
    expect(w.events.some((e) => e.type === 'dead_lettered' || e.type === 'released')).toBe(false);
    await waitFor('the stored images removed', async () => (await listKeys(env.blobs, `outputs/${OWNER}/${job.id}/`)).length === 0);
  });
});

describe('an image score that is not finite', () => {
  it('is left out of its output; the job succeeds with its images', async () => {
    const env = await makeEnv();
    const job = await submit(env, { n: 3 });
    const images = [standInImage(0), { ...standInImage(1), clipScore: Number.NaN }, { ...standInImage(2), clipScore: Number.POSITIVE_INFINITY }];
    const w = start(env, stepping(2, 1, undefined, images));
    await waitFor('the job to finish', () => finishedOf(w.events));
    const rec = (await env.jobs.get(OWNER, job.id))!;
    expect(rec.status).toBe('succeeded');
    expect(rec.outputs).toEqual([
      { key: `outputs/${OWNER}/${job.id}/0.png`, width: 64, height: 64, clip_score: 0.25 },
      { key: `outputs/${OWNER}/${job.id}/1.png`, width: 64, height: 64 },
      { key: `outputs/${OWNER}/${job.id}/2.png`, width: 64, height: 64 },
    ]);
    expect(w.logs.filter((l) => l.msg === 'image score is not finite; its output has no clip_score').map((l) => [l.level, l.fields?.image, l.fields?.clip_score])).toEqual([
      ['warn', 1, 'NaN'],
      ['warn', 2, 'Infinity'],
    ]);
  });
});
