import { describe, expect, it } from 'vitest';
import {
  AuthError,
  ConflictError,
  NonRetryableError,
  NotFoundError,
  PayloadTooLargeError,
  PreconditionFailedError,
  RetryableError,
  ValidationError,
  isRetryable,
  toErrorEnvelope,
} from '../../shared/errors.ts';
import { SORTABLE_ID_PATTERN, idTime, jobIdTime, newId, newJobId } from '../../shared/ids.ts';

describe('sortable ids', () => {
  it('newId sorts oldest first and newJobId newest first, and both decode their time', () => {
    const t = Date.UTC(2025, 0, 1);
    const ids = [newId(t), newId(t + 1), newId(t + 1000)];
    expect([...ids].sort()).toEqual(ids);
    const jobIds = [newJobId(t), newJobId(t + 1), newJobId(t + 1000)];
    expect([...jobIds].sort()).toEqual([...jobIds].reverse());
    expect(idTime(ids[2]!)).toBe(t + 1000);
    expect(jobIdTime(jobIds[1]!)).toBe(t + 1);
    for (const id of [...ids, ...jobIds]) expect(id).toMatch(SORTABLE_ID_PATTERN);
    expect(new Set(Array.from({ length: 1000 }, () => newJobId(t))).size).toBe(1000);
  });
});

describe('errors', () => {
  it.each([
    [new ValidationError('bad', 'width'), 'validation_error', 400, false],
    [new AuthError(), 'unauthorized', 401, false],
    [new NotFoundError(), 'not_found', 404, false],
    [new ConflictError('c'), 'conflict', 409, false],
    [new PreconditionFailedError('p'), 'precondition_failed', 412, false],
    [new PayloadTooLargeError('big'), 'payload_too_large', 413, false],
    [new RetryableError('later'), 'unavailable', 503, true],
    [new NonRetryableError('never'), 'internal_error', 500, false],
  ])('%s has a stable code, status and retryable flag', (error, code, status, retryable) => {
    expect(error).toMatchObject({ code, status, retryable });
    expect(isRetryable(error)).toBe(retryable);
    expect(error).toBeInstanceOf(Error);
  });

  it('codes can be specialised (e.g. retries_exhausted)', () => {
    expect(new NonRetryableError('gave up', { code: 'retries_exhausted' }).code).toBe('retries_exhausted');
  });

  it('toErrorEnvelope keeps client errors and hides internal details', () => {
    expect(toErrorEnvelope(new ValidationError('width must be a multiple of 32', 'width'), 'req_1')).toEqual({
      status: 400,
      body: { error: { code: 'validation_error', message: 'width must be a multiple of 32', param: 'width', request_id: 'req_1' } },
    });
    expect(toErrorEnvelope(new Error('db password is hunter2'), 'req_2')).toEqual({
      status: 500,
      body: { error: { code: 'internal_error', message: 'internal error', param: null, request_id: 'req_2' } },
    });
    expect(toErrorEnvelope(new NonRetryableError('stack details'), 'r').body.error.message).toBe('internal error');
  });

  it('isRetryable treats transient socket errors as retryable and unknown errors as permanent', () => {
    expect(isRetryable(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe(true);
    expect(isRetryable(new TypeError('bug'))).toBe(false);
  });
});

describe('newId within one millisecond', () => {
  it('is strictly increasing, so the local queue keeps send order', () => {
    const t = Date.now();
    const ids = Array.from({ length: 1000 }, () => newId(t));
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(ids.length);
  });
});
