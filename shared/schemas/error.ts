import { z } from '@hono/zod-openapi';
import { API_ERROR_CODES, errorCodeTableText } from '../error-codes.ts';

export const ErrorEnvelope = z
  .object({
    error: z
      .object({
        // A string, not an enum: codes may be added (a generated enum would refuse a new one). The
        // extension lists today's for generators that make constants of it.
        code: z.string().openapi({ example: 'validation_error', description: errorCodeTableText(), 'x-extensible-enum': API_ERROR_CODES.map((e) => e.code) }),
        message: z.string(),
        param: z.string().nullable().openapi({ example: 'width' }),
        request_id: z.string(),
      })
      .strict(),
  })
  .strict()
  .openapi('ErrorEnvelope');
export type ErrorEnvelope = z.output<typeof ErrorEnvelope>;
