import { createRoute, type OpenAPIHono } from '@hono/zod-openapi';
import { Health, ModelList } from '../schemas.ts';
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
}

export function registerHealthRoutes(app: OpenAPIHono<AppEnv>): void {
  app.openapi(healthz, (c) => c.json({ status: 'ok' as const }, 200));
}
