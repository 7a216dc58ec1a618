import { z } from '@hono/zod-openapi';
import { ValidationError } from '../errors.ts';
import { OwnerId, ResourceId } from './common.ts';

/** The queue message stays tiny: the spec lives in the job record, so a message can never
 * disagree with the record and never hits the 256 KiB SQS limit. */
export const QueueMessage = z
  .object({ v: z.literal(1), job_id: ResourceId, owner: OwnerId })
  .strict()
  .openapi('QueueMessage');
export type QueueMessage = z.output<typeof QueueMessage>;

export function encodeQueueMessage(message: QueueMessage): string {
  return JSON.stringify(QueueMessage.parse(message));
}

/** Parses a raw queue body; throws ValidationError (never a SyntaxError) on anything malformed,
 * so a worker can route poison messages to its dead-letter path instead of crashing. */
export function parseQueueMessage(body: string): QueueMessage {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new ValidationError('queue message is not JSON', 'body');
  }
  const parsed = QueueMessage.safeParse(json);
  if (!parsed.success) throw new ValidationError(`malformed queue message: ${parsed.error.message}`, 'body');
  return parsed.data;
}
