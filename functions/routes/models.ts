import { createRoute, z, type OpenAPIHono } from '@hono/zod-openapi';
import { NotFoundError } from '../../shared/errors.ts';
import { Health, ModelInfo, ModelList } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { SECURITY, pick } from './common.ts';

const listModels = createRoute({
  operationId: 'listModels',
  tags: ['models'],
  method: 'get',
  path: '/v1/models',
  summary: 'The deployed models',
  security: SECURITY,
  // 400: it takes no query parameters, and refuses any (as every /v1 operation refuses one it does not declare).
  responses: { 200: { description: 'Models', content: { 'application/json': { schema: ModelList } } }, ...pick(400, 401, 503) },
});

const getModel = createRoute({
  operationId: 'getModel',
  tags: ['models'],
  method: 'get',
  path: '/v1/models/{id}',
  summary: 'One deployed model, as the list shows it',
  security: SECURITY,
  // Any name: one the deployment does not serve is a 404, whatever its form (`Toy` too).
  request: { params: z.object({ id: z.string().min(1).max(200).openapi({ param: { name: 'id', in: 'path' }, description: 'A model name, as `GET /v1/models` lists it (`toy`)' }) }) },
  responses: { 200: { description: 'The model', content: { 'application/json': { schema: ModelInfo } } }, ...pick(400, 401, 404, 503) },
});

const healthz = createRoute({
  operationId: 'getHealth',
  tags: ['health'],
  method: 'get',
  path: '/healthz',
  summary: 'Liveness (no auth)',
  security: [],
  responses: { 200: { description: 'Alive', content: { 'application/json': { schema: Health } } } },
});

export function registerModelRoutes(app: OpenAPIHono<AppEnv>, deps: AppDeps): void {
  app.openapi(listModels, async (c) => c.json({ object: 'list' as const, data: await deps.models() }, 200));
  app.openapi(getModel, async (c) => {
    const { id } = c.req.valid('param');
    const found = (await deps.models()).find((m) => m.id === id);
    if (!found) throw new NotFoundError(`no model ${id} in this deployment (GET /v1/models lists them)`, { param: 'id' });
    return c.json(found, 200);
  });
}

export function registerHealthRoutes(app: OpenAPIHono<AppEnv>): void {
  app.openapi(healthz, (c) => c.json({ status: 'ok' as const }, 200));
}
