import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readDoc } from './documents.ts';
import { CorruptDocumentError, NotFoundError, ValidationError } from './errors.ts';
import { newId, SORTABLE_ID_PATTERN } from './ids.ts';
import type { BlobStore } from './ports.ts';
import { OWNER_ID_PATTERN } from './schemas/common.ts';
import { ApiKeyRecord, sha256Hex, StoredApiKeyRecord } from './schemas/apikey.ts';

/**
 * API keys on any BlobStore: one JSON document per key at `keys/<keyId>.json` holding only the
 * sha256 of the secret (see docs/adr/0004). The secret is `ck_<keyId>_<43 base64url chars>`:
 * the key id inside it names the document to read, and the hash comparison (constant time)
 * decides. So a lookup is one GET, revoke is by id, and a leaked bucket leaks no usable secret.
 */
export const API_KEY_PATTERN = /^ck_([0-9a-hjkmnp-tv-z]{26})_([A-Za-z0-9_-]{43})$/;

export interface CreatedApiKey {
  /** Shown once; never stored. */
  secret: string;
  record: ApiKeyRecord;
}

export class BlobApiKeyStore {
  /** `log` hears about corrupt key records (refused by verify(), skipped by list()). */
  constructor(
    private readonly blobs: BlobStore,
    private readonly options: { log?: { warn(msg: string, fields?: Record<string, unknown>): void } } = {},
  ) {}

  static keyFor(id: string): string {
    if (!SORTABLE_ID_PATTERN.test(id)) throw new ValidationError('invalid API key id', 'id');
    return `keys/${id}.json`;
  }

  async create(args: { name: string; owner: string; now?: Date }): Promise<CreatedApiKey> {
    if (!OWNER_ID_PATTERN.test(args.owner)) throw new ValidationError('owner must match [A-Za-z0-9_-]{1,64}', 'owner');
    const twin = await ownerCaseTwin(this, args.owner);
    if (twin !== undefined) throw new ValidationError(`owner "${args.owner}" differs from the existing owner "${twin}" only in case: use "${twin}", or another id (owners that differ only in case would share files in a local data folder on a case-insensitive file system)`, 'owner');
    const now = args.now ?? new Date();
    const id = newId(now.getTime());
    const secret = `ck_${id}_${randomBytes(32).toString('base64url')}`;
    const parsed = ApiKeyRecord.safeParse({
      id,
      name: args.name,
      owner: args.owner,
      key_sha256: sha256Hex(secret),
      created_at: now.toISOString(),
      revoked_at: null,
    });
    if (!parsed.success) throw new ValidationError(`invalid API key: ${parsed.error.issues[0]?.message}`, 'name');
    await this.blobs.putIfAbsent(BlobApiKeyStore.keyFor(id), encode(parsed.data), { contentType: 'application/json' });
    return { secret, record: parsed.data };
  }

  /**
   * The record as a key is verified by (ApiKeyRecord, strict). Throws CorruptDocumentError for one
   * that does not read so, a record with a field this version does not know included (verify() treats
   * that as an unknown key).
   */
  async get(id: string): Promise<ApiKeyRecord | null> {
    const key = BlobApiKeyStore.keyFor(id);
    const object = await this.blobs.get(key);
    if (!object) return null;
    return ofId(readDoc(ApiKeyRecord, object.body, key), id, key);
  }

  /** The record for a presented secret, or null when it is malformed, unknown or revoked. */
  async verify(secret: string): Promise<ApiKeyRecord | null> {
    const match = API_KEY_PATTERN.exec(secret);
    if (!match) return null;
    const key = BlobApiKeyStore.keyFor(match[1]);
    const object = await this.blobs.get(key);
    if (!object) return null;
    let record: ApiKeyRecord;
    try {
      record = ofId(readDoc(ApiKeyRecord, object.body, key), match[1], key);
    } catch (error) {
      // A record this version cannot fully read cannot vouch for anyone: the caller gets the same 401
      // as for an unknown key. That holds for one a newer clipag wrote with a field this version does
      // not know (an expiry, a scope): ignoring it could grant more than the record means.
      if (error instanceof CorruptDocumentError) {
        const newer = unknownFields(object.body, match[1], key);
        if (newer) this.options.log?.warn('API key record has fields this version does not know (a newer clipag wrote it); refusing the key until the API is upgraded', { key, fields: newer });
        else this.options.log?.warn('corrupt API key record; refusing the key', { key: error.key, detail: error.detail });
        return null;
      }
      throw error;
    }
    if (!record || record.revoked_at !== null) return null;
    const presented = Buffer.from(sha256Hex(secret), 'hex');
    const stored = Buffer.from(record.key_sha256, 'hex');
    return presented.length === stored.length && timingSafeEqual(presented, stored) ? record : null;
  }

  /**
   * Every key record that reads, fields a newer clipag added kept (the operator sees and can revoke
   * such a key; verify() still refuses it). Corrupt records are skipped with a warning.
   */
  async list(): Promise<StoredApiKeyRecord[]> {
    const out: StoredApiKeyRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.blobs.list('keys/', cursor === undefined ? {} : { cursor });
      for (const item of page.items) {
        const id = item.key.slice('keys/'.length, -'.json'.length);
        if (!SORTABLE_ID_PATTERN.test(id)) continue;
        try {
          const object = await this.blobs.get(item.key);
          if (object) out.push(ofId(readDoc(StoredApiKeyRecord, object.body, item.key), id, item.key));
        } catch (error) {
          if (!(error instanceof CorruptDocumentError)) throw error;
          this.options.log?.warn('skipping a corrupt API key record', { key: error.key, detail: error.detail });
        }
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return out;
  }

  /**
   * Idempotent: revoking a revoked key keeps its first revocation time. A record a newer clipag wrote
   * is revoked too, its fields this version does not know written back as they were: a leaked key
   * must be revocable with whichever clipag the operator has at hand.
   */
  async revoke(id: string, now: Date = new Date()): Promise<StoredApiKeyRecord> {
    const key = BlobApiKeyStore.keyFor(id);
    for (let attempt = 0; ; attempt++) {
      const object = await this.blobs.get(key);
      if (!object) throw new NotFoundError(`API key ${id} not found`);
      const record = ofId(readDoc(StoredApiKeyRecord, object.body, key), id, key);
      if (record.revoked_at !== null) return record;
      const next = { ...record, revoked_at: now.toISOString() };
      try {
        await this.blobs.replaceIfMatch(key, encode(next), object.etag, { contentType: 'application/json' });
        return next;
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
  }
}

/**
 * The owner of an existing key whose id differs from `owner` only in case (acct_Alice for acct_alice),
 * or undefined. Owner ids are keys of files in the local data folder too: on a case-insensitive file
 * system (macOS and Windows by default, a bind mount from a Mac) acct_Alice and acct_alice would share
 * usage, uploads, policies and the webhook secret, so what creates a key or writes an owner's files
 * refuses such an id. Revoked keys count: their owner's files remain. Every key record is read, which
 * suits the operator's commands that call this (rare), not a request path.
 */
export async function ownerCaseTwin(keys: Pick<BlobApiKeyStore, 'list'>, owner: string): Promise<string | undefined> {
  const folded = owner.toLowerCase();
  const all = await keys.list();
  // An owner with keys of its own is an account: a pair made before key creation refused twins (each
  // its own on S3 and Linux) keeps being served. The guard keeps a new pair from being made.
  if (all.some((k) => k.owner === owner)) return undefined;
  return all.find((k) => k.owner.toLowerCase() === folded)?.owner;
}

function encode(record: StoredApiKeyRecord): Uint8Array {
  return Buffer.from(JSON.stringify(record));
}

/** The record, if it is the one its document's name says (a document naming another key is corrupt). */
function ofId<T extends { id: string }>(record: T, id: string, key: string): T {
  if (record.id !== id) throw new CorruptDocumentError(key, `names key ${record.id}`);
  return record;
}

/**
 * The fields of a key record this version does not know, when that is all that keeps it from reading
 * (a newer clipag wrote it); undefined for a record that is corrupt otherwise.
 */
function unknownFields(bytes: Uint8Array, id: string, key: string): string[] | undefined {
  try {
    const record = ofId(readDoc(StoredApiKeyRecord, bytes, key), id, key);
    const known = new Set(Object.keys(ApiKeyRecord.shape));
    const unknown = Object.keys(record).filter((field) => !known.has(field));
    return unknown.length > 0 ? unknown : undefined;
  } catch {
    return undefined;
  }
}
