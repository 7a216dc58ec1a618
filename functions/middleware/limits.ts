import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { PayloadTooLargeError } from '../../shared/errors.ts';
import type { AppEnv } from '../types.ts';
import { HttpError, errorResponse } from './errors.ts';

/** Refuses bodies over `maxBytes` (declared or streamed) with a 413 envelope. */
export function bodySizeLimit(maxBytes: number): MiddlewareHandler<AppEnv> {
  const limit = bodyLimit({
    maxSize: maxBytes,
    onError: (c) => errorResponse(c as never, new PayloadTooLargeError(`request body exceeds ${maxBytes} bytes`)),
  });
  return async function bodySizeLimitMiddleware(c, next) {
    return limit(c, next);
  };
}

const JSON_MEDIA = /^application\/(?:[\w.-]+\+)?json$/i;

/** POST/PUT/PATCH bodies must be JSON: 415 envelope otherwise (also when the header is missing). */
export function requireJson(): MiddlewareHandler<AppEnv> {
  return async function requireJsonMiddleware(c, next) {
    if (c.req.method === 'POST' || c.req.method === 'PUT' || c.req.method === 'PATCH') {
      const media = (c.req.header('Content-Type') ?? '').split(';')[0].trim();
      if (!JSON_MEDIA.test(media)) {
        throw new HttpError(415, 'unsupported_media_type', 'Content-Type must be application/json', 'Content-Type');
      }
    }
    await next();
  };
}
