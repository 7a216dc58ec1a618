import { createRoute, type OpenAPIHono } from '@hono/zod-openapi';
import { MAX_KEYS_PER_DAY, monthCostUsd, readUsage } from '../../shared/usage.ts';
import { UsageQuery, UsageView } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { SECURITY, pick } from './common.ts';

const getUsage = createRoute({
  operationId: 'getUsage',
  tags: ['usage'],
  method: 'get',
  path: '/v1/usage',
  summary: "The caller's usage in a month, day by day, with its cost",
  description: 'What the worker recorded as each generation ended (ADR 0019): the same figures as each generation\'s usage, summed per UTC day.',
  security: SECURITY,
  request: { query: UsageQuery },
  responses: {
    200: { description: 'Usage', content: { 'application/json': { schema: UsageView } } },
    ...pick(400, 401, 409, 503),
  },
});

export function registerUsageRoutes(app: OpenAPIHono<AppEnv>, deps: AppDeps, ctx: { clock: () => Date }): void {
  const price = deps.limits.workerHourlyUsd;
  app.openapi(getUsage, async (c) => {
    const query = c.req.valid('query');
    const month = query.month ?? ctx.clock().toISOString().slice(0, 7);
    const all = await readUsage(deps.blobs, c.get('owner'), month);
    // One key's share of each day (ADR 0022): only the days it created generations on.
    const key = query.api_key_id;
    const share = (d: (typeof all)[number]) => (key !== undefined && d.by_api_key !== undefined && Object.hasOwn(d.by_api_key, key) ? d.by_api_key[key] : undefined);
    const days = key === undefined ? all : all.flatMap((d) => (share(d) ? [{ date: d.date, ...share(d)! }] : []));
    // Days that itemised their MAX_KEYS_PER_DAY keys without this one: its figures there are unknown.
    const incomplete = key === undefined ? [] : all.filter((d) => !share(d) && Object.keys(d.by_api_key ?? {}).length >= MAX_KEYS_PER_DAY).map((d) => d.date);
    const sum = (f: 'generations' | 'images' | 'worker_seconds' | 'encoder_passes') => days.reduce((a, d) => a + d[f], 0);
    const seconds = Math.round(sum('worker_seconds') * 1000) / 1000;
    // Each day's jobs at the price of their day where the worker kept it (ADR 0022), today's otherwise;
    // the total, the sum of the days' as shown (one function, shared with `clipag usage show`).
    const cost = monthCostUsd(days, price);
    const priced = days.map((d, i) => ({
      date: d.date,
      generations: d.generations,
      images: d.images,
      worker_seconds: d.worker_seconds,
      encoder_passes: d.encoder_passes,
      cost_usd: cost.days[i] ?? null,
    }));
    const totalCost = cost.total;
    return c.json(
      {
        object: 'usage' as const,
        month,
        api_key_id: key ?? null,
        incomplete_days: incomplete,
        days: priced,
        total: { generations: sum('generations'), images: sum('images'), worker_seconds: seconds, encoder_passes: sum('encoder_passes'), cost_usd: totalCost },
        hourly_usd: price ?? null,
      },
      200,
    );
  });
}
