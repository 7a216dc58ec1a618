import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readDoc } from './documents.ts';
import { CorruptDocumentError, NotFoundError, ValidationError } from './errors.ts';
import { newId, SORTABLE_ID_PATTERN } from './ids.ts';
import type { BlobStore } from './ports.ts';
import { OWNER_ID_PATTERN } from './schemas/common.ts';
import { ApiKeyRecord, sha256Hex } from './schemas/apikey.ts';

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

  /** Throws CorruptDocumentError for an unreadable record (verify() treats that as an unknown key). */
  async get(id: string): Promise<ApiKeyRecord | null> {
    const key = BlobApiKeyStore.keyFor(id);
    const object = await this.blobs.get(key);
    if (!object) return null;
    const record = readDoc(ApiKeyRecord, object.body, key);
    if (record.id !== id) throw new CorruptDocumentError(key, `names key ${record.id}`);
    return record;
  }

  /** The record for a presented secret, or null when it is malformed, unknown or revoked. */
  async verify(secret: string): Promise<ApiKeyRecord | null> {
    const match = API_KEY_PATTERN.exec(secret);
    if (!match) return null;
    let record: ApiKeyRecord | null;
    try {
      record = await this.get(match[1]);
    } catch (error) {
      // A corrupt record cannot vouch for anyone: the caller gets the same 401 as for an unknown key.
      if (error instanceof CorruptDocumentError) {
        this.options.log?.warn('corrupt API key record; refusing the key', { key: error.key, detail: error.detail });
        return null;
      }
      throw error;
    }
    if (!record || record.revoked_at !== null) return null;
    const presented = Buffer.from(sha256Hex(secret), 'hex');
    const stored = Buffer.from(record.key_sha256, 'hex');
    return presented.length === stored.length && timingSafeEqual(presented, stored) ? record : null;
  }

  async list(): Promise<ApiKeyRecord[]> {
    const out: ApiKeyRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.blobs.list('keys/', cursor === undefined ? {} : { cursor });
      for (const item of page.items) {
        const id = item.key.slice('keys/'.length, -'.json'.length);
        if (!SORTABLE_ID_PATTERN.test(id)) continue;
        try {
          const record = await this.get(id);
          if (record) out.push(record);
        } catch (error) {
          if (!(error instanceof CorruptDocumentError)) throw error;
          this.options.log?.warn('skipping a corrupt API key record', { key: error.key, detail: error.detail });
        }
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return out;
  }

  /** Idempotent: revoking a revoked key keeps its first revocation time. */
  async revoke(id: string, now: Date = new Date()): Promise<ApiKeyRecord> {
    const key = BlobApiKeyStore.keyFor(id);
    for (let attempt = 0; ; attempt++) {
      const object = await this.blobs.get(key);
      if (!object) throw new NotFoundError(`API key ${id} not found`);
      const record = readDoc(ApiKeyRecord, object.body, key);
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

function encode(record: ApiKeyRecord): Uint8Array {
  return Buffer.from(JSON.stringify(record));
}
