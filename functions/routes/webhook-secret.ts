// The calling account's webhook signing secret (ADR 0028): create or rotate it (its only showing),
// say whether there is one, delete it. The deliverers read it at each attempt (shared/webhooks.ts).
import { createRoute, z, type OpenAPIHono } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { PreconditionFailedError, RetryableError, ValidationError } from '../../shared/errors.ts';
import { deleteAccountWebhookSecret, readAccountWebhookSecret, rotateAccountWebhookSecret, type AccountWebhookSecret } from '../../shared/webhook-secrets.ts';
import { IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE, idempotencyKeyHash } from '../idempotency.ts';
import { WebhookSecretCreated, WebhookSecretDeleted, WebhookSecretStatus } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { SECURITY, errors, pick } from './common.ts';

const PATH = '/v1/webhook-secret';

const noBody = { ...errors[400], description: 'validation_error: a request body or a query parameter was sent (these operations take none; `param` names the parameter)' };

const createHeaders = z.object({
  // The rule of POST /v1/generations' key; the two operations' keys are apart (one is never the other's replay).
  'Idempotency-Key': z.string().regex(IDEMPOTENCY_KEY_PATTERN, IDEMPOTENCY_KEY_RULE).optional().openapi({
    param: { name: 'Idempotency-Key', in: 'header' },
    description:
      "A retry with the same key within 24 hours, while the secret it made is still the account's current one, is answered that secret again, with the status it was answered first (201 or 200) and `Idempotent-Replayed: true`, and rotates nothing. Once that secret has been replaced by another request's rotation, or deleted (or after 24 hours), the key is not remembered: the request rotates (or creates) as one with a new key would, so a retry is never handed a secret that has stopped signing or soon will. A key belongs to the account (shared by all its API keys), apart from the keys of POST /v1/generations.",
  }),
});
const replayed = { 'Idempotent-Replayed': { description: 'Always "true" on an idempotent replay: the secret an earlier request with this Idempotency-Key made, answered again (nothing rotated)', schema: { type: 'string' as const, enum: ['true'] } } };

const createWebhookSecret = createRoute({
  operationId: 'createWebhookSecret',
  tags: ['webhooks'],
  method: 'post',
  path: PATH,
  summary: "Create or rotate the account's webhook signing secret; the answer is its only showing",
  description:
    "No body. Once the account has a secret, every event of every generation of the account is signed with it, beside the generation's own `webhook.secret` (several space-separated signatures in `webhook-signature`, as Standard Webhooks allows): a receiver holding either verifies it, and one holding this secret has it before any generation exists, so an event that comes before its POST has answered verifies too. Creating it answers 201; rotating answers 200, and the secret it replaces keeps signing for 24 hours so that receivers can move to the new one (`previous`). Each call without an Idempotency-Key makes a new secret: a retried POST rotates again (the earlier one then stays in `previous` for its 24 hours); send one so that a retry after a lost answer gets the secret the first made instead (see the header). It applies from the next delivery attempt, retries of earlier events included. A stored secret that no longer reads is replaced (201).",
  security: SECURITY,
  request: { headers: createHeaders },
  responses: {
    201: { description: 'Created: the account had no secret (or, with Idempotent-Replayed, an earlier request with this key created it)', headers: replayed, content: { 'application/json': { schema: WebhookSecretCreated } } },
    200: { description: 'Rotated: the new secret, and the replaced ones that still sign (or, with Idempotent-Replayed, an earlier request with this key rotated it)', headers: replayed, content: { 'application/json': { schema: WebhookSecretCreated } } },
    ...pick(401, 413, 503),
    400: { ...errors[400], description: `${noBody.description}; or an Idempotency-Key that breaks its rule (\`param\` "Idempotency-Key")` },
  },
});

const getWebhookSecret = createRoute({
  operationId: 'getWebhookSecret',
  tags: ['webhooks'],
  method: 'get',
  path: PATH,
  summary: 'Whether the account has a webhook signing secret, and since when (never the secret)',
  security: SECURITY,
  responses: {
    200: { description: "The account's secret, without the secret", content: { 'application/json': { schema: WebhookSecretStatus } } },
    ...pick(401, 413, 503),
    400: noBody,
    409: { ...errors[409], description: 'corrupt_record: the stored secret does not read (it signs nothing; the generations\' own secrets still do). POST replaces it, DELETE removes it' },
  },
});

const deleteWebhookSecret = createRoute({
  operationId: 'deleteWebhookSecret',
  tags: ['webhooks'],
  method: 'delete',
  path: PATH,
  summary: "Delete the account's webhook signing secret (idempotent)",
  description: "The secret and the replaced ones still signing stop signing from the next delivery attempt; events are then signed with their generation's own secret alone, as for an account that never had one.",
  security: SECURITY,
  responses: {
    200: { description: 'Deleted, or there was none', content: { 'application/json': { schema: WebhookSecretDeleted } } },
    ...pick(401, 413, 503),
    400: noBody,
  },
});

/**
 * These operations take no body: one sent is refused rather than ignored, since a caller who sends
 * one (a secret of their choosing, say) expects it to mean something. Whitespace alone is no body.
 */
function refuseBody(): MiddlewareHandler<AppEnv> {
  return async function refuseBodyMiddleware(c, next) {
    if (c.req.raw.body !== null) {
      const bytes = new Uint8Array(await c.req.arrayBuffer());
      if (bytes.some((b) => b !== 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d)) {
        throw new ValidationError(`${c.req.method} ${PATH} takes no request body; send none`);
      }
    }
    await next();
  };
}

function previousView(doc: AccountWebhookSecret, now: Date) {
  return doc.previous.filter((p) => Date.parse(p.expires_at) > now.getTime()).map((p) => ({ created_at: p.created_at, expires_at: p.expires_at }));
}

export function registerWebhookSecretRoutes(app: OpenAPIHono<AppEnv>, deps: AppDeps, ctx: { clock: () => Date }): void {
  app.use(PATH, refuseBody());

  app.openapi(createWebhookSecret, async (c) => {
    const now = ctx.clock();
    const idempotencyKey = c.req.header('Idempotency-Key');
    let rotated: Awaited<ReturnType<typeof rotateAccountWebhookSecret>>;
    try {
      rotated = await rotateAccountWebhookSecret(deps.blobs, c.get('owner'), now, idempotencyKey === undefined ? {} : { idempotencyKeySha256: idempotencyKeyHash(idempotencyKey) });
    } catch (error) {
      // Lost every conditional write to other rotations of the same account at once: no secret of
      // this request's was stored, so trying again is safe. `busy`: the table's code for a record
      // another request is updating (an `unavailable` would have its message replaced by a generic one).
      if (error instanceof PreconditionFailedError) throw new RetryableError('the webhook secret is being rotated by other requests; retry', { code: 'busy', cause: error });
      throw error;
    }
    const { doc, created } = rotated;
    if (rotated.replayed) c.header('Idempotent-Replayed', 'true');
    return c.json({ object: 'webhook_secret' as const, secret: doc.secret, created_at: doc.created_at, previous: previousView(doc, now) }, created ? 201 : 200);
  });

  app.openapi(getWebhookSecret, async (c) => {
    const doc = await readAccountWebhookSecret(deps.blobs, c.get('owner'));
    return c.json({ object: 'webhook_secret' as const, exists: doc !== null, created_at: doc?.created_at ?? null, previous: doc ? previousView(doc, ctx.clock()) : [] }, 200);
  });

  app.openapi(deleteWebhookSecret, async (c) => {
    const deleted = await deleteAccountWebhookSecret(deps.blobs, c.get('owner'));
    return c.json({ object: 'webhook_secret' as const, deleted }, 200);
  });
}
