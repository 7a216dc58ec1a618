import { z } from '@hono/zod-openapi';

export const ErrorEnvelope = z
  .object({
    error: z
      .object({
        code: z.string().openapi({ example: 'validation_error' }),
        message: z.string(),
        param: z.string().nullable().openapi({ example: 'width' }),
        request_id: z.string(),
      })
      .strict(),
  })
  .strict()
  .openapi('ErrorEnvelope');
export type ErrorEnvelope = z.output<typeof ErrorEnvelope>;
