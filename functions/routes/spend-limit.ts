// The calling account's monthly spend limit (ADR 0033): set it, read it with this month's figures,
// remove it. POST /v1/generations reads it before each new generation (routes/generations.ts).
import { createRoute, type OpenAPIHono } from '@hono/zod-openapi';
import { ValidationError } from '../../shared/errors.ts';
import { deleteSpendLimit, putSpendLimit, readSpendLimit, readSpendLimits, spendLimitStatus, spentThisMonthUsd } from '../../shared/spend-limits.ts';
import { SpendLimitBody, SpendLimitDeleted, SpendLimitView } from '../schemas.ts';
import type { AppDeps, AppEnv } from '../types.ts';
import { SECURITY, errors, pick } from './common.ts';

const PATH = '/v1/spend-limit';

const getSpendLimit = createRoute({
  operationId: 'getSpendLimit',
  tags: ['usage'],
  method: 'get',
  path: PATH,
  summary: "The account's monthly spend limit, with this month's cost so far",
  security: SECURITY,
  responses: {
    200: { description: "The account's limit (monthly_usd null: it set none), the operator's for it (operator_monthly_usd) and the month", content: { 'application/json': { schema: SpendLimitView } } },
    ...pick(400, 401, 413, 503),
    409: { ...errors[409], description: "corrupt_record: the account's stored limit, the operator's limit for it, or this month's usage does not read. The account's own: PUT replaces it, DELETE removes it. The operator's, or a month: the operator repairs it (`clipag usage limit`, `clipag usage rebuild`); while a limit is set, new generations are refused 409 until then" },
  },
});

const putSpendLimitRoute = createRoute({
  operationId: 'putSpendLimit',
  tags: ['usage'],
  method: 'put',
  path: PATH,
  summary: "Set the account's monthly spend limit",
  description:
    "Once this UTC month's cost (GET /v1/usage's total: the generations that ended, each at the price its run ended with) reaches `monthly_usd` (or the lower limit the operator set for the account, `operator_monthly_usd`, which this does not change), every new POST /v1/generations is refused with 402 `spend_limit_reached` until the limit is raised or removed, or the next UTC month begins. Generations already queued or running still run and are billed, so a month can end above the limit by what was in flight when it was reached (at most as many generations as the account may have active at once). A retry of a POST with an Idempotency-Key whose generation exists is answered that generation, as always. It applies from the next request. On a deployment that sets no price there is no cost to compare, so a limit cannot be set (400).",
  security: SECURITY,
  request: { body: { required: true, content: { 'application/json': { schema: SpendLimitBody } } } },
  responses: {
    200: { description: 'The limit as now set, with the month', content: { 'application/json': { schema: SpendLimitView } } },
    ...pick(400, 401, 413, 415, 503),
    409: { ...errors[409], description: "corrupt_record: this month's usage does not read (nothing is stored)" },
  },
});

const deleteSpendLimitRoute = createRoute({
  operationId: 'deleteSpendLimit',
  tags: ['usage'],
  method: 'delete',
  path: PATH,
  summary: "Remove the account's monthly spend limit (idempotent; a limit the operator set stays)",
  security: SECURITY,
  responses: {
    200: { description: 'Removed, or there was none', content: { 'application/json': { schema: SpendLimitDeleted } } },
    ...pick(400, 401, 413, 503),
  },
});

export function registerSpendLimitRoutes(app: OpenAPIHono<AppEnv>, deps: AppDeps, ctx: { clock: () => Date }): void {
  const price = deps.limits.workerHourlyUsd;
  app.openapi(getSpendLimit, async (c) => {
    const owner = c.get('owner');
    const now = ctx.clock();
    const [limits, spent] = await Promise.all([readSpendLimits(deps.blobs, owner), spentThisMonthUsd(deps.blobs, owner, now, price)]);
    return c.json({ object: 'spend_limit' as const, ...spendLimitStatus(limits, spent, now), hourly_usd: price ?? null }, 200);
  });

  app.openapi(putSpendLimitRoute, async (c) => {
    // Without a price no generation has a cost, so nothing could ever reach the limit: say so, rather
    // than store a limit that looks like protection and is none.
    if (price === undefined) {
      throw new ValidationError('this deployment sets no price (hourly_usd is null), so generations have no cost to hold to a limit in dollars (its operator sets one with CLIPAG_WORKER_HOURLY_USD)', 'monthly_usd');
    }
    const owner = c.get('owner');
    const now = ctx.clock();
    // The month first: when it does not read (a 409) nothing is stored.
    const spent = await spentThisMonthUsd(deps.blobs, owner, now, price);
    const operator = await readSpendLimit(deps.blobs, owner, 'operator');
    const account = await putSpendLimit(deps.blobs, owner, c.req.valid('json').monthly_usd, now);
    return c.json({ object: 'spend_limit' as const, ...spendLimitStatus({ account, operator }, spent, now), hourly_usd: price }, 200);
  });

  app.openapi(deleteSpendLimitRoute, async (c) => {
    const deleted = await deleteSpendLimit(deps.blobs, c.get('owner'));
    return c.json({ object: 'spend_limit' as const, deleted }, 200);
  });
}
