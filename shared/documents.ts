import { CorruptDocumentError } from './errors.ts';

/** The part of a zod schema `readDoc` needs (structural, so any zod instance's schema fits). */
export interface DocSchema<T> {
  safeParse(value: unknown): { success: true; data: T } | { success: false; error: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> } };
}

/**
 * Decodes a stored JSON document (bytes as read from a BlobStore) and checks it against `schema`.
 * Anything unreadable (not UTF-8, not JSON, wrong shape, zero bytes) is a CorruptDocumentError
 * naming `key`: the one way every store reads its documents, so corruption never surfaces as a
 * SyntaxError / ZodError 500.
 */
export function readDoc<T>(schema: DocSchema<T>, bytes: Uint8Array, key: string): T {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new CorruptDocumentError(key, bytes.byteLength === 0 ? 'empty document' : `not UTF-8 JSON: ${(error as Error).message}`, { cause: error });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.map(String).join('.')}: ` : '';
    throw new CorruptDocumentError(key, `does not match its schema: ${where}${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}
