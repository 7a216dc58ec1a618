import { OpenAPIHono, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { withSharedResponses } from './openapi-document.ts';
import { toOpenApi30 } from './openapi-30.ts';
import { IdempotencyLedger } from './idempotency.ts';
import { auth } from './middleware/auth.ts';
import { describeError, notFound, onError, validationHook } from './middleware/errors.ts';
import { bodySizeLimit, declaredQueryOnly, requireJson, singleQueryParams, strictListQuery } from './middleware/limits.ts';
import { noStore } from './middleware/cache.ts';
import { headContentLength } from './middleware/head.ts';
import { CounterBreaker, RateGate, rateLimit } from './middleware/rate-limit.ts';
import { requestId } from './middleware/request-id.ts';
import { requestLog } from './middleware/request-log.ts';
import { registerGenerationRoutes } from './routes/generations.ts';
import { registerHealthRoutes, registerModelRoutes } from './routes/models.ts';
import { registerUploadRoutes } from './routes/uploads.ts';
import { registerSpendLimitRoutes } from './routes/spend-limit.ts';
import { registerUsageRoutes } from './routes/usage.ts';
import { registerWebhookSecretRoutes } from './routes/webhook-secret.ts';
import { ErrorEnvelope } from '../shared/schemas/error.ts';
import { SlidingWindowRateLimiter } from '../shared/rate-limit.ts';
import { GenerationEvent } from '../shared/schemas/view.ts';
import { jsonLineLog } from './log.ts';
import type { AppDeps, AppEnv } from './types.ts';

export type { AppDeps, AppLimits, ApiKeyVerifier, AppEnv } from './types.ts';
export type { ModelInfo } from './schemas.ts';

/** Paths the app serves, with their methods, so a wrong method is a 405 rather than a 404 (a test holds it to the document's operations). */
export const ROUTES = [
  { pattern: /^\/healthz$/, methods: ['GET'] },
  { pattern: /^\/openapi\.json$/, methods: ['GET'] },
  { pattern: /^\/openapi-3\.0\.json$/, methods: ['GET'] },
  { pattern: /^\/v1\/models$/, methods: ['GET'] },
  { pattern: /^\/v1\/models\/[^/]+$/, methods: ['GET'] },
  { pattern: /^\/v1\/uploads$/, methods: ['POST'] },
  { pattern: /^\/v1\/uploads\/[^/]+$/, methods: ['DELETE'] },
  { pattern: /^\/v1\/estimates$/, methods: ['POST'] },
  { pattern: /^\/v1\/usage$/, methods: ['GET'] },
  { pattern: /^\/v1\/webhook-secret$/, methods: ['GET', 'POST', 'DELETE'] },
  { pattern: /^\/v1\/spend-limit$/, methods: ['GET', 'PUT', 'DELETE'] },
  { pattern: /^\/v1\/generations$/, methods: ['GET', 'POST'] },
  { pattern: /^\/v1\/generations\/[^/]+$/, methods: ['GET', 'DELETE'] },
  { pattern: /^\/v1\/generations\/[^/]+\/cancel$/, methods: ['POST'] },
  { pattern: /^\/v1\/generations\/[^/]+\/frames$/, methods: ['GET'] },
  { pattern: /^\/v1\/generations\/[^/]+\/outputs\/[^/]+$/, methods: ['GET'] },
  { pattern: /^\/v1\/generations\/[^/]+\/webhook\/redeliver$/, methods: ['POST'] },
];

/**
 * The whole HTTP API, built once from its dependencies. No environment reads and no SDK clients
 * here: `lambda.ts` and `server.ts` choose the adapters and call this.
 */
export function createApp(deps: AppDeps): OpenAPIHono<AppEnv> {
  const clock = deps.clock ?? (() => new Date());
  const log = deps.log ?? jsonLineLog;
  const ledger = new IdempotencyLedger(deps.blobs, deps.jobs, { log });
  const app = new OpenAPIHono<AppEnv>({ defaultHook: validationHook });

  app.use('*', requestId());
  // Inside requestId: the HEAD's answer it makes again keeps every header, the request id included.
  app.use('*', headContentLength());
  // Every answer, /healthz, the documents and the 404 of an unknown path included: no-store (where the
  // route set no Cache-Control of its own), nosniff and no framing (security review F5).
  app.use('*', noStore());
  app.use('*', nonErrorThrowsAsErrors({ outsideRequestLog: true }));
  app.onError(onError(log));
  app.notFound(notFound(ROUTES));

  registerHealthRoutes(app);
  // Each document's pointer to the other: the 3.0 form swaps the first for the second.
  const pointerTo30 = ' The same API as OpenAPI 3.0.3, for client generators that read only 3.0, is at /openapi-3.0.json.';
  const pointerTo31 =
    " This is /openapi.json (OpenAPI 3.1.0, the original) converted mechanically to OpenAPI 3.0.3, for client generators that read only 3.0: the JSON Schema rules 3.0 cannot state (contains, propertyNames) are in the fields' descriptions instead.";
  // Built on first request, once every route is registered; the same for the life of the app.
  let document: Record<string, any> | undefined;
  let document30: Record<string, any> | undefined;
  const openApi31 = () =>
    (document ??= withSharedResponses(
      app.getOpenAPI31Document({
        openapi: '3.1.0',
        info: {
          title: 'clipag API',
          version: '1.0.0',
          description:
            "Generator-free text-to-image: pixels optimized along the gradients of a robust CLIP (CLIPAG). Every 4xx/5xx the app gives has the ErrorEnvelope body; in AWS the gateway's own 429, 500 and 503 have the GatewayError body instead. Every response carries X-Request-Id. Undeclared methods on a path answer 405 method_not_allowed with Allow; HEAD answers as GET without a body. A /v1 operation refuses a query parameter it does not declare (an operation that declares none refuses any): 400 validation_error, `param` naming it." +
            pointerTo30,
        },
        // Relative to where the document is served: the deployment answering this request.
        servers: [{ url: '/', description: 'This deployment' }],
        tags: [
          { name: 'generations', description: 'Text-to-image jobs: create, estimate, poll, list, cancel, delete, redeliver their webhook' },
          { name: 'uploads', description: 'Init images for image-to-image: upload, delete' },
          { name: 'models', description: 'The deployed models' },
          { name: 'usage', description: "The caller's usage and cost, and its monthly spend limit" },
          { name: 'webhooks', description: "The account's webhook signing secret" },
          { name: 'health', description: 'Liveness' },
        ],
      }) as unknown as Record<string, any>,
    ));
  app.get('/openapi.json', (c) => {
    // Public and credential-free: a web tool (an API explorer, a client generator in the browser) may
    // load the deployment's own document. The API itself sends no CORS headers: keys stay on servers.
    c.header('Access-Control-Allow-Origin', '*');
    return c.json(openApi31());
  });
  app.get('/openapi-3.0.json', (c) => {
    c.header('Access-Control-Allow-Origin', '*');
    const doc31 = openApi31();
    return c.json((document30 ??= toOpenApi30({ ...doc31, info: { ...doc31.info, description: String(doc31.info.description).replace(pointerTo30, pointerTo31) } })));
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    description: 'API key from `clipag keys create`',
  });
  app.openAPIRegistry.register('ErrorEnvelope', ErrorEnvelope);
  // What a generation's webhook_url receives (ADR 0013), so that clients can generate its type too.
  app.openAPIRegistry.registerWebhook({
    method: 'post',
    path: 'generation.ended',
    operationId: 'generationEnded',
    summary: 'A generation ended (succeeded, failed or canceled): POSTed to its webhook_url',
    security: [], // signed (webhook-signature), not authenticated with a key
    description:
      "Signed as Standard Webhooks: verify webhook-signature over `webhook-id.webhook-timestamp.body` with the account's webhook secret (POST /v1/webhook-secret), or with the `webhook.secret` the generation's POST answered: with an account secret the header holds one space-separated signature per secret, and any one that verifies will do (the reference libraries check each). Delivered at least once: drop repeats by webhook-id. Any 2xx within 10 s counts as delivered (5 s for the attempt a cancel of a queued generation makes before it answers); anything else is retried (30 s, 2 min, 10 min, 30 min, 2 h, 6 h). The event can arrive before its POST has answered (with `Prefer: wait`, or a POST retried after a lost answer): a receiver that verifies with the account secret needs nothing more; one that verifies with the generation's own secret must answer an event for a generation id it does not know yet with a non-2xx (503), never a 2xx, so it comes again once it holds that secret.",
    request: {
      headers: z.object({
        'webhook-id': z.string().openapi({ description: 'evt_<generation id>_<status>: the same on every attempt' }),
        'webhook-timestamp': z.string().openapi({ description: 'Unix seconds of the attempt' }),
        'webhook-signature': z.string().openapi({ description: "v1,<base64 HMAC-SHA256>: one per signing secret, space-separated (the account's current secret, its replaced ones still inside their 24 hours, then the generation's own)" }),
      }),
      body: { required: true, content: { 'application/json': { schema: GenerationEvent } } },
    },
    responses: { '2XX': { description: 'Any 2xx: delivered' } },
  });

  // First under /v1, so its one line per request follows every answer below it, refusals included.
  app.use('/v1/*', requestLog(log));
  // The key before the body: auth reads only headers, so a request without a valid key gets its 401
  // before any of its body is read (a chunked one is read whole by the limit).
  app.use('/v1/*', auth(deps.keys));
  app.use('/v1/*', bodySizeLimit(deps.limits.maxBodyBytes));
  // Per-account limits (ADR 0026): every request; the uploads among them (each may store an image for
  // days); and the `Prefer: wait` holds (each keeps an API instance busy), counted over one longest
  // wait so that the budget is about the holds one account can have at once.
  const breaker = new CounterBreaker(log);
  const gate = (limit: number | undefined, windowSec: number, name: string, overMessage?: string) =>
    deps.rateCounter && (limit ?? 0) > 0 && windowSec > 0
      ? new RateGate(new SlidingWindowRateLimiter(deps.rateCounter, { limit: limit!, windowSec, name }), { clock, log, breaker, ...(overMessage ? { overMessage } : {}) })
      : undefined;
  const requestGate = gate(deps.limits.rateLimitPerMin, 60, 'requests');
  if (requestGate) app.use('/v1/*', rateLimit(requestGate));
  // Each /v1 operation takes the query parameters its route declares (as the document lists them), no
  // others. A route's query is a z.object (one that is not would have all its parameters refused).
  app.use(
    '/v1/*',
    declaredQueryOnly(() =>
      app.openAPIRegistry.definitions.flatMap((d) => {
        if (d.type !== 'route') return [];
        const query = d.route.request?.query;
        const shape: Record<string, z.ZodType> = query && 'shape' in query ? (query.shape as Record<string, z.ZodType>) : {};
        // A record-typed parameter is a deep object: `metadata[KEY]=VALUE`.
        const deepObject = Object.keys(shape).filter((name) => {
          const schema = shape[name];
          return (schema instanceof z.ZodOptional ? schema.unwrap() : schema) instanceof z.ZodRecord;
        });
        return [{ method: d.route.method, path: d.route.path, query: Object.keys(shape), deepObject }];
      }),
    ),
  );
  const uploadGate = gate(deps.limits.uploadsPerHour, 3600, 'uploads');
  const waitGate = gate(deps.limits.maxWaits, deps.limits.maxWaitSec ?? 0, 'waits', 'rate limit: an account has used its budget of waits (Prefer: wait not honoured)');
  app.use('/v1/generations', requireJson());
  app.use('/v1/generations', strictListQuery());
  // The other GET under /v1 that reads a query (the list's own rules are strictListQuery's).
  app.use('/v1/usage', singleQueryParams());
  app.use('/v1/uploads', requireJson());
  app.use('/v1/estimates', requireJson());
  app.use('/v1/spend-limit', requireJson('PUT'));
  // Again innermost, next to the /v1 routes: there a non-Error's 500 is made where an Error's would
  // be, so the middleware above (the request's log line, no-store, the RateLimit fields) sees it too.
  app.use('/v1/*', nonErrorThrowsAsErrors({ outsideRequestLog: false }));

  registerModelRoutes(app, deps);
  registerUploadRoutes(app, deps, { clock, uploadGate });
  registerGenerationRoutes(app, deps, { clock, ledger, log, ...(waitGate ? { waitGate } : {}), ...(uploadGate ? { uploadGate } : {}) });
  registerUsageRoutes(app, deps, { clock });
  registerWebhookSecretRoutes(app, deps, { clock });
  registerSpendLimitRoutes(app, deps, { clock });
  return app;
}

/**
 * Hono hands onError only what is an `instanceof Error`; anything else thrown (a string, a plain
 * object a library rejects with) would escape app.fetch, and in Lambda fail the invocation, which the
 * gateway answers with its own 500 and no envelope. Rethrown as an Error (the value kept as its
 * cause, for the log), it is answered as any bug is: 500 internal_error.
 */
function nonErrorThrowsAsErrors(options: { outsideRequestLog: boolean }): MiddlewareHandler<AppEnv> {
  return async function nonErrorThrowsAsErrorsMiddleware(c, next) {
    try {
      await next();
    } catch (thrown) {
      if (thrown instanceof Error) throw thrown;
      // Outside it, the value went past the request-log middleware (if that ran) before it wrote its
      // line: the line is onError's to write. Inside it, the request-log middleware still writes it.
      if (options.outsideRequestLog) c.set('requestLinePending', false);
      throw new Error(`a non-Error was thrown: ${describeError(thrown)}`, { cause: thrown });
    }
  };
}
