import { CorruptDocumentError, PreconditionFailedError } from './errors.ts';
import type { BlobStore } from './ports.ts';

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
/** The JSON a document holds, or undefined where it holds none (not UTF-8, not JSON: readDoc says why). */
export function parsedJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
}

export function readDoc<T>(schema: DocSchema<T>, bytes: Uint8Array, key: string): T {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw new CorruptDocumentError(key, bytes.byteLength === 0 ? 'empty document' : `not UTF-8 JSON: ${parseFailure(error)}`, { cause: error });
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.map(String).join('.')}: ` : '';
    throw new CorruptDocumentError(key, `does not match its schema: ${where}${issue?.message ?? 'invalid'}`);
  }
  return parsed.data;
}

/**
 * Why the bytes did not parse, without the bytes: V8's JSON.parse message quotes the text around the
 * fault ('Unexpected token ..."HIV test","x":bogus}" is not valid JSON'), and this detail goes to the
 * operator's log, where a record's prompt has no place. Its position is kept where V8 gives one.
 */
function parseFailure(error: unknown): string {
  if (!(error instanceof SyntaxError)) return 'not valid UTF-8';
  const at = /position (\d+)/.exec(error.message);
  return `not valid JSON${at ? ` (at character ${at[1]})` : ''}`;
}

/** Writers of one small shared document (run statistics, an owner's monthly usage) racing at once: enough tries for a fleet. */
const UPDATE_TRIES = 20;

/**
 * Read-modify-write of one small JSON document that many processes update: `next` gets the current
 * bytes (null when there is none) and returns the new ones, or null to leave the document as it is
 * (the change is there already); the write is conditional on what was
 * read, and a lost race re-reads after a short jittered pause. Throws after UPDATE_TRIES lost races,
 * or on any other store error.
 */
export async function updateDocument(blobs: BlobStore, key: string, next: (current: Uint8Array | null) => Uint8Array | null): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const found = await blobs.get(key);
    const body = next(found ? found.body : null);
    if (body === null) return; // nothing to change
    try {
      if (found) await blobs.replaceIfMatch(key, body, found.etag, { contentType: 'application/json' });
      else await blobs.putIfAbsent(key, body, { contentType: 'application/json' });
      return;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError) || attempt + 1 >= UPDATE_TRIES) throw error;
      await new Promise((r) => setTimeout(r, Math.random() * 10 * (attempt + 1)));
    }
  }
}
