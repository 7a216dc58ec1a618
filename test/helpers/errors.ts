// Asserts that a synchronous call throws an EngineError with the given code and message.
import { expect } from 'vitest';
import { EngineError } from '../../gpu-worker/engine/errors.ts';

export function expectEngineError(fn: () => unknown, code: string, ...messages: (RegExp | string)[]): EngineError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(EngineError);
  const e = caught as EngineError;
  expect(e.code).toBe(code);
  for (const m of messages) {
    if (typeof m === 'string') expect(e.message).toContain(m);
    else expect(e.message).toMatch(m);
  }
  return e;
}

/** The EngineError a promise rejects with (fails the test when it resolves or rejects with anything else). */
export async function rejection(p: Promise<unknown>): Promise<EngineError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(EngineError);
  return e as EngineError;
}
