// What every operation shares, added to the generated OpenAPI document in one place: the responses and
// headers that middleware and the AWS gateway give any route, which the routes' own declarations
// (typed for their handlers) leave out.

import { rateLimitFields } from './routes/common.ts';

type Json = Record<string, any>;

const REQUEST_ID_HEADER = {
  description: "This request's id (also `error.request_id`), given by the API (in AWS, the gateway's own id for the request); never the caller's X-Request-Id",
  required: true,
  schema: { type: 'string' },
};

const ERROR_OR_GATEWAY = {
  'application/json': { schema: { oneOf: [{ $ref: '#/components/schemas/ErrorEnvelope' }, { $ref: '#/components/schemas/GatewayError' }] } },
};

const GATEWAY_ERROR = {
  type: 'object',
  properties: { message: { type: 'string', examples: ['Too Many Requests'] } },
  required: ['message'],
  description:
    "AWS API Gateway's own answer, before the app: its throttle (429 \"Too Many Requests\"), a body over its 10 MB (413), a request that outlived the function (503 \"Service Unavailable\"), a function crash (500). No envelope, no Retry-After and no X-Request-Id: retry with back-off (with the same Idempotency-Key for POST /v1/generations). Not in local mode.",
};

const RATE_LIMIT_FIELDS_ON_413 = Object.fromEntries(
  Object.entries(rateLimitFields).map(([name, field]) => [name, { ...field, description: `${field.description}. Absent on a 413 for a request body over the limit (refused before the key is read)` }]),
);

/** The operations that read an `init` upload, and what their 400 adds for it. */
const INIT_UPLOAD_OPERATIONS = new Set(['createGeneration', 'createEstimate']);
const UPLOAD_NOT_FOUND =
  'upload_not_found (`param` "init"): the upload does not exist, expired or is another account\'s; upload the image again. An upload that is there but not a usable image is a validation_error (`param` "init"): uploading it again will not help';

/**
 * The `generation.started` webhook (ADR 0036), beside the end events' `generation.ended` (functions/app.ts):
 * the same body (GenerationEvent), signature and retries, sent only to a request that asked for it.
 */
function withStartedWebhook(doc: Json): void {
  const ended = doc.webhooks?.['generation.ended'];
  if (!ended?.post) return;
  ended.post.description = `${ended.post.description} With webhook_events ["started", "ended"] the URL also receives generation.started (below), before the end event.`;
  const started: Json = structuredClone(ended);
  started.post.operationId = 'generationStarted';
  started.post.summary = 'A generation started (asked for with webhook_events ["started", "ended"]): POSTed to its webhook_url';
  started.post.description =
    'Sent once a worker first starts the generation (a later run of it, after a worker stopped, sends none), so that a wait before it (the queue, or the fleet scaling up from zero) can be told from a slow run. Signed, delivered at least once and retried exactly as the end events are (same secrets, headers and back-off), with its own webhook-id, while the generation has not ended: none is sent after its end event. The body is a GenerationEvent of type generation.started, `timestamp` its started_at, `data` the generation as it stood when the attempt was sent (running; already ended for a run so short that it ended first, the end event still following). Its delivery does not show in the generation\'s `webhook` (that is the end event\'s).';
  const id = "evt_<generation id>_started: the same on every attempt, and never an end event's";
  for (const p of started.post.parameters ?? []) {
    if (p.name !== 'webhook-id') continue;
    p.description = id;
    if (p.schema) p.schema.description = id;
  }
  doc.webhooks['generation.started'] = started;
}

/** The document as served: each operation may also answer 429 and 5xx from the gateway, and 500 from the app; every response of the app carries X-Request-Id. */
export function withSharedResponses(doc: Json): Json {
  withStartedWebhook(doc);
  doc.components ??= {};
  doc.components.schemas ??= {};
  doc.components.schemas.GatewayError = GATEWAY_ERROR;
  // A request field with a default may be left out; some generators (openapi-typescript) type every
  // field with a `default` as required, so that `{prompt}` alone would not compile. The default is
  // stated in words instead.
  for (const field of Object.values<Json>(doc.components.schemas.GenerationRequest?.properties ?? {})) {
    if (field.default === undefined) continue;
    field.description = `${field.description ? `${field.description}. ` : ''}Default: ${JSON.stringify(field.default)}`;
    delete field.default;
  }
  for (const [path, item] of Object.entries<Json>(doc.paths ?? {})) {
    for (const [method, op] of Object.entries<Json>(item)) {
      if (!['get', 'post', 'put', 'patch', 'delete'].includes(method)) continue;
      const responses: Json = (op.responses ??= {});
      // The gateway's throttle stands before every route; the per-account limit before every /v1 route.
      const v1 = path.startsWith('/v1/');
      responses[429] = responses[429]
        ? { ...responses[429], description: `${responses[429].description}. Also the gateway's throttle (GatewayError), on any route`, content: ERROR_OR_GATEWAY }
        : v1
          ? {
              description: "rate_limited: over the account's requests per minute (see the RateLimit fields); retry after Retry-After seconds. Also the gateway's throttle (GatewayError; AWS only): retry with back-off",
              headers: { 'Retry-After': { description: 'Seconds to wait before retrying (absent on a GatewayError)', schema: { type: 'integer', minimum: 0 } } },
              content: ERROR_OR_GATEWAY,
            }
          : { description: "The gateway's throttle (GatewayError; AWS only): retry with back-off", content: ERROR_OR_GATEWAY };
      if (responses[503]) responses[503] = { ...responses[503], description: `${responses[503].description}. Also a request that outlived the function (GatewayError; AWS only)`, content: ERROR_OR_GATEWAY };
      if (responses[413]) responses[413] = { ...responses[413], description: `${responses[413].description}. Also the gateway's own, for a request past Lambda's 6 MB payload limit (GatewayError; AWS only)`, content: ERROR_OR_GATEWAY };
      if (v1) {
        if (responses[401]) {
          responses[401].headers = { ...responses[401].headers, 'WWW-Authenticate': { description: 'Bearer realm="clipag"', required: true, schema: { type: 'string' } } };
        }
        op.parameters = [
          ...(op.parameters ?? []),
          { name: 'X-Request-Id', in: 'header', required: false, description: "Your own id for this request: logged beside the API's own id (the response's X-Request-Id) when it is 8–128 characters of [A-Za-z0-9._:-]; it never replaces it", schema: { type: 'string' } },
        ];
      }
      // The shared 400 (routes/common.ts) is one text for many routes: the init-taking ones add their own code.
      if (INIT_UPLOAD_OPERATIONS.has(op.operationId) && responses[400]) responses[400] = { ...responses[400], description: `${responses[400].description}; ${UPLOAD_NOT_FOUND}` };
      responses.default = { description: 'Unexpected error: 500 internal_error (retry later; report its request_id), or a gateway error in AWS', content: ERROR_OR_GATEWAY };
      for (const [status, response] of Object.entries<Json>(responses)) {
        // The gateway's own answers come without it (a GatewayError): required only where the app alone answers.
        const orGateway = response.content === ERROR_OR_GATEWAY;
        response.headers = { 'X-Request-Id': orGateway ? { ...REQUEST_ID_HEADER, required: false, description: `${REQUEST_ID_HEADER.description}; absent on a GatewayError` } : REQUEST_ID_HEADER, ...response.headers };
        // Where the deployment limits requests per account; not on a 401 (no account yet). A 413 has them when
        // the operation refused a size it was told (POST /v1/uploads' `bytes`), not when the body itself was
        // too large (refused before the key is read).
        if (v1 && status === '413') response.headers = { ...response.headers, ...RATE_LIMIT_FIELDS_ON_413 };
        else if (v1 && status !== '401') response.headers = { ...response.headers, ...rateLimitFields };
      }
    }
  }
  return doc;
}
