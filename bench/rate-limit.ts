// What the per-account rate limit (ADR 0026) adds to a request. Not a test. Run: npm run bench:rate-limit
//
// The app on the local adapters answers GET /v1/models with no limiter, with the memory counter (local
// mode) and with the DynamoDB counter talking to dynalite on 127.0.0.1 (the AWS adapter's code path;
// real DynamoDB answers in single-digit ms in-region, dynalite on this machine is its own figure).
// Variants are interleaved round by round; per variant the median and p90 over all requests. Also the
// refused path: an account over its limit, refused by the store once, then from memory.
// The last line printed is one JSON object.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { CreateTableCommand, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { createApp, type AppDeps } from '../functions/app.ts';
import { DynamoDbRateCounter } from '../shared/adapters/aws/dynamodb-rate-counter.ts';
import { MemoryRateCounter } from '../shared/adapters/local/rate-counter.ts';
import type { RateCounter } from '../shared/ports.ts';
import { harness } from '../test/functions/helpers.ts';
import { median, r3 } from './common.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 9);
const PER_ROUND = Number(process.env.BENCH_REQUESTS ?? 100);
const dynalite = createRequire(import.meta.url)('dynalite') as (options: Record<string, unknown>) => Server;

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

async function main(): Promise<void> {
  const server = dynalite({ createTableMs: 0 });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = new DynamoDBClient({ region: 'us-east-1', endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, credentials: { accessKeyId: 'local', secretAccessKey: 'local' }, maxAttempts: 2 });
  await client.send(new CreateTableCommand({ TableName: 'bench-rate', AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }], KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }], BillingMode: 'PAY_PER_REQUEST' }));
  const h = await harness();
  try {
    const appWith = (counter: RateCounter | undefined, limit: number) =>
      createApp({ ...h.deps, ...(counter ? { rateCounter: counter } : {}), limits: { ...h.deps.limits, rateLimitPerMin: limit } } as AppDeps);
    const variants = {
      none: appWith(undefined, 0),
      memory: appWith(new MemoryRateCounter(), 1_000_000),
      dynamodb: appWith(new DynamoDbRateCounter({ client, table: 'bench-rate' }), 1_000_000),
    };
    const headers = { Authorization: `Bearer ${h.alice}` };
    const ms: Record<string, number[]> = { none: [], memory: [], dynamodb: [] };
    for (const app of Object.values(variants)) for (let i = 0; i < 20; i++) await app.request('/v1/models', { headers }); // warm-up
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, app] of Object.entries(variants)) {
        for (let i = 0; i < PER_ROUND; i++) {
          const t = performance.now();
          const res = await app.request('/v1/models', { headers });
          ms[name]!.push(performance.now() - t);
          if (res.status !== 200) throw new Error(`${name}: status ${res.status}`);
        }
      }
    }
    // The refused path: an account at its limit; the first refusal asks the store, the rest are remembered.
    const refused: Record<string, { first: number; later: number }> = {};
    for (const [name, counter] of [['memory', new MemoryRateCounter()], ['dynamodb', new DynamoDbRateCounter({ client, table: 'bench-rate' })]] as const) {
      const app = appWith(counter, 1);
      const bob = { Authorization: `Bearer ${h.bob}` };
      await app.request('/v1/models', { headers: bob });
      let t = performance.now();
      if ((await app.request('/v1/models', { headers: bob })).status !== 429) throw new Error('expected a 429');
      const first = performance.now() - t;
      const later: number[] = [];
      for (let i = 0; i < PER_ROUND; i++) {
        t = performance.now();
        await app.request('/v1/models', { headers: bob });
        later.push(performance.now() - t);
      }
      refused[name] = { first: r3(first), later: r3(median(later)) };
    }
    const summary = Object.fromEntries(Object.entries(ms).map(([name, xs]) => [name, { median_ms: r3(median(xs)), p90_ms: r3(quantile(xs, 0.9)), n: xs.length }]));
    for (const [name, s] of Object.entries(summary)) console.log(`${name.padEnd(9)} median ${s.median_ms} ms  p90 ${s.p90_ms} ms  (${s.n} requests)`);
    const added = { memory_ms: r3(summary.memory!.median_ms - summary.none!.median_ms), dynamodb_ms: r3(summary.dynamodb!.median_ms - summary.none!.median_ms) };
    console.log(`added per request (median): memory ${added.memory_ms} ms, DynamoDB adapter on dynalite ${added.dynamodb_ms} ms`);
    console.log(`refused: memory first ${refused.memory!.first} ms, later ${refused.memory!.later} ms; dynalite first ${refused.dynamodb!.first} ms, later ${refused.dynamodb!.later} ms`);
    console.log(JSON.stringify({ bench: 'rate-limit', rounds: ROUNDS, per_round: PER_ROUND, ...summary, added, refused }));
  } finally {
    await h.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

await main();
