// Name patterns with no dependencies, so every side (the engine included, which must not load hono)
// can import them. shared/schemas/common.ts re-exports them for the zod schemas.

/** Owner ids and job ids become path segments of blob keys, so their charset is closed:
 * no `/`, no `.`, nothing that could climb out of `jobs/<owner>/`. */
export const OWNER_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export const RESOURCE_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** A sortable id (shared/ids.ts newId): 10 time and 16 random characters, Crockford base32 in lower case. */
export const SORTABLE_ID_PATTERN = /^[0-9abcdefghjkmnpqrstvwxyz]{26}$/;

/**
 * A model name: lower-case letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most
 * 64 characters. The one definition: request schemas, config, the model store, the registry, bundle
 * manifests and the models folder scan all use it (a name is also a folder and a blob-key segment).
 */
export const MODEL_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;
