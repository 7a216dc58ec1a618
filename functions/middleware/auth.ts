import type { MiddlewareHandler } from 'hono';
import { AuthError } from '../../shared/errors.ts';
import type { ApiKeyVerifier, AppEnv } from '../types.ts';

const BEARER = /^Bearer +([\x21-\x7e]{1,256}) *$/i;

/** `Authorization: Bearer <key>`; sets `owner` and `apiKeyId`. Missing, malformed, unknown or revoked → 401. */
export function auth(keys: ApiKeyVerifier): MiddlewareHandler<AppEnv> {
  return async function authMiddleware(c, next) {
    const header = c.req.header('Authorization');
    if (!header) throw new AuthError('missing API key: send Authorization: Bearer <key>');
    const match = BEARER.exec(header);
    if (!match) throw new AuthError('malformed Authorization header: expected Bearer <key>');
    const record = await keys.verify(match[1]);
    // One message for unknown and revoked keys: the response never tells which.
    if (!record) throw new AuthError('invalid or revoked API key');
    c.set('owner', record.owner);
    c.set('apiKeyId', record.id);
    await next();
  };
}
