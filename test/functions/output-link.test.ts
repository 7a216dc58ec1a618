// GET /v1/generations/{id}/outputs/{index}: a stable, authenticated address for one image, answered
// with a redirect to a freshly signed URL (the peers review's G5: a pipeline that kept outputs[].url
// found it dead an hour later). The same rules as the view's outputs: nothing while it runs, nothing
// for a withheld image, 410 once deleted or expired, and a link that never outlives the expiry.
import { handle } from 'hono/aws-lambda';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import { mountLocalBlobRoutes } from '../../functions/local-blobs.ts';
import { verifyLocalSignature } from '../../shared/adapters/local/index.ts';
import { harness, type Harness } from './helpers.ts';

let h: Harness;
beforeEach(async () => {
  h = await harness();
  mountLocalBlobRoutes(h.app, h.blobs, 'x'.repeat(32));
});
afterEach(() => h.close());

const DAY = 86_400_000;
const PNG_BYTES = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 1]), new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 2])];

/** A generation of `n` images that succeeded `daysAgo` days before `now`; image 1 withheld when asked. */
async function succeeded(opts: { n?: number; daysAgo?: number; withhold?: number; now?: number } = {}): Promise<string> {
  const { n = 2, daysAgo = 0, withhold, now = Date.now() } = opts;
  const res = await h.request('/v1/generations', { json: { prompt: 'apple', n } });
  expect(res.status).toBe(202);
  const { id } = (await res.json()) as { id: string };
  const published = [...Array(n).keys()].filter((i) => i !== withhold);
  await h.jobs.update('acct_alice', id, (cur) => ({
    ...cur,
    status: 'succeeded',
    attempts: 1,
    started_at: new Date(now - daysAgo * DAY - 5_000).toISOString(),
    finished_at: new Date(now - daysAgo * DAY).toISOString(),
    progress: { step: cur.progress.total, total: cur.progress.total },
    outputs: published.map((i) => ({ key: `outputs/acct_alice/${id}/${i}.png`, width: 224, height: 224 })),
    ...(withhold !== undefined ? { output_checks: [{ index: withhold, withheld: true, flags: [{ rule: 'r1', category: 'test', action: 'withhold', concept: 'a test concept', message: 'withheld', cosine: 0.3 }] }] } : {}),
  }));
  for (const i of published) await h.blobs.put(`outputs/acct_alice/${id}/${i}.png`, PNG_BYTES[i]!, { contentType: 'image/png' });
  return id;
}

describe('GET /v1/generations/{id}/outputs/{index}', () => {
  it('redirects to a freshly signed URL of that image, which serves its bytes; no cache keeps the redirect', async () => {
    const id = await succeeded();
    for (const index of [0, 1]) {
      const res = await h.request(`/v1/generations/${id}/outputs/${index}`);
      expect(res.status).toBe(302);
      expect(res.headers.get('cache-control')).toBe('private, no-store');
      const location = res.headers.get('location')!;
      expect(location).toContain(`outputs/acct_alice/${id}/${index}.png`);
      expect(verifyLocalSignature('x'.repeat(32), 'GET', location, Date.now()).ok).toBe(true);
      // The view's link for the same image: the same key, the same expiry.
      const view = (await (await h.request(`/v1/generations/${id}`)).json()) as { outputs: Array<{ index: number; url: string; expires_at: string }> };
      expect(res.headers.get('link-expires-at')).toBe(view.outputs[index]!.expires_at);
      // Followed as a same-origin fetch does, the Authorization header still set: the local link serves the image.
      const image = await h.app.request(location, { headers: { Authorization: `Bearer ${h.alice}` } });
      expect(image.status).toBe(200);
      expect(new Uint8Array(await image.arrayBuffer())).toEqual(PNG_BYTES[index]);
    }
  });

  it('HEAD answers the same redirect without a body', async () => {
    const id = await succeeded();
    const res = await h.request(`/v1/generations/${id}/outputs/0`, { method: 'HEAD' });
    expect(res.status).toBe(302);
    expect(res.headers.get('location')).toContain(`${id}/0.png`);
  });

  it("404 for another account's generation, an index it did not make, and a withheld image; 400 for an index that is not one", async () => {
    const id = await succeeded({ n: 2, withhold: 1 });
    const other = await h.request(`/v1/generations/${id}/outputs/0`, { key: h.bob });
    expect(other.status).toBe(404);
    expect(((await other.json()) as any).error).toMatchObject({ code: 'not_found', param: 'id' });

    const beyond = await h.request(`/v1/generations/${id}/outputs/2`);
    expect(beyond.status).toBe(404);
    expect(((await beyond.json()) as any).error).toMatchObject({ code: 'not_found', param: 'index', message: `generation ${id} has no image 2: it made 2 (index 0-1)` });

    const withheld = await h.request(`/v1/generations/${id}/outputs/1`);
    expect(withheld.status).toBe(404);
    expect(((await withheld.json()) as any).error).toMatchObject({ code: 'not_found', param: 'index' });
    expect(((await (await h.request(`/v1/generations/${id}/outputs/1`)).json()) as any).error.message).toMatch(/withheld by the output check/);
    // The image that was published is still there.
    expect((await h.request(`/v1/generations/${id}/outputs/0`)).status).toBe(302);

    for (const bad of ['-1', '01', '1e0', 'one', '1.0', '9999999']) {
      const res = await h.request(`/v1/generations/${id}/outputs/${bad}`);
      expect(res.status, bad).toBe(400);
      expect(((await res.json()) as any).error, bad).toMatchObject({ code: 'validation_error', param: 'index' });
    }
  });

  it('409 job_not_finished while queued or running; 404 for a failed one that made none', async () => {
    const res = await h.request('/v1/generations', { json: { prompt: 'apple' } });
    const { id } = (await res.json()) as { id: string };
    const queued = await h.request(`/v1/generations/${id}/outputs/0`);
    expect(queued.status).toBe(409);
    expect(((await queued.json()) as any).error).toMatchObject({ code: 'job_not_finished', message: `generation ${id} is queued: its images are stored when it ends` });
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'running', attempts: 1, started_at: new Date().toISOString() }));
    expect((await h.request(`/v1/generations/${id}/outputs/0`)).status).toBe(409);
    await h.jobs.update('acct_alice', id, (cur) => ({ ...cur, status: 'failed', finished_at: new Date().toISOString(), error: { code: 'numerical_error', message: 'nan' } }));
    const failed = await h.request(`/v1/generations/${id}/outputs/0`);
    expect(failed.status).toBe(404);
    expect(((await failed.json()) as any).error).toMatchObject({ code: 'not_found', param: 'index', message: `generation ${id} failed and made no images` });
  });

  it('410 output_gone after a DELETE, naming the seed that makes it again', async () => {
    const id = await succeeded();
    const view = (await (await h.request(`/v1/generations/${id}`)).json()) as { outputs: Array<{ seed: number }> };
    expect((await h.request(`/v1/generations/${id}`, { method: 'DELETE' })).status).toBe(200);
    const res = await h.request(`/v1/generations/${id}/outputs/1`);
    expect(res.status).toBe(410);
    const error = ((await res.json()) as any).error;
    expect(error).toMatchObject({ code: 'output_gone', param: 'index' });
    expect(error.message).toContain(`seed ${view.outputs[1]!.seed} and n 1`);
  });

  it('with a retention: a link never outlives outputs_expire_at, and past it 410 output_gone', async () => {
    const now = Date.now();
    const app = createApp({ ...h.deps, clock: () => new Date(now), limits: { ...h.deps.limits, outputRetentionDays: 30 } });
    const get = (path: string) => app.request(path, { headers: { Authorization: `Bearer ${h.alice}` } });

    // Ends 5 minutes from now (links live 10): the redirect's link ends with it.
    const ending = await succeeded({ daysAgo: 30 - 5 / 1440, now });
    const soon = await get(`/v1/generations/${ending}/outputs/0`);
    expect(soon.status).toBe(302);
    const expireAt = Date.parse(((await (await get(`/v1/generations/${ending}`)).json()) as any).outputs_expire_at);
    expect(Date.parse(soon.headers.get('link-expires-at')!)).toBeLessThanOrEqual(expireAt);
    expect(verifyLocalSignature('x'.repeat(32), 'GET', soon.headers.get('location')!, expireAt + 1_000).ok).toBe(false);

    const expired = await succeeded({ daysAgo: 31, now });
    const past = await get(`/v1/generations/${expired}/outputs/0`);
    expect(past.status).toBe(410);
    const error = ((await past.json()) as any).error;
    expect(error).toMatchObject({ code: 'output_gone', param: 'index' });
    expect(error.message).toMatch(new RegExp(`^image 0 of generation ${expired} expired at \\S+; the same request with seed \\d+ and n 1 makes it again$`));
  });

  it('in Lambda (an HTTP API event) the redirect keeps its status and Location', async () => {
    const id = await succeeded();
    const path = `/v1/generations/${id}/outputs/1`;
    const res = (await handle(h.app)({
      version: '2.0',
      routeKey: '$default',
      rawPath: path,
      rawQueryString: '',
      headers: { host: 'api.example.com', authorization: `Bearer ${h.alice}` },
      body: null,
      isBase64Encoded: false,
      requestContext: { accountId: '1', apiId: 'api', domainName: 'api.example.com', domainPrefix: 'api', http: { method: 'GET', path, protocol: 'HTTP/1.1', sourceIp: '203.0.113.9', userAgent: 'test' }, requestId: 'gw-1', routeKey: '$default', stage: '$default', time: '01/Jan/2026:00:00:00 +0000', timeEpoch: 1767225600000 },
    } as never, {} as never)) as { statusCode: number; headers: Record<string, string> };
    expect(res.statusCode).toBe(302);
    expect(res.headers.location).toContain(`outputs/acct_alice/${id}/1.png`);
    expect(res.headers['cache-control']).toBe('private, no-store');
  });

  it('is in the OpenAPI document with its 302 and 410', async () => {
    const doc = (await (await h.request('/openapi.json', { key: null })).json()) as any;
    const op = doc.paths['/v1/generations/{id}/outputs/{index}'].get;
    expect(op.operationId).toBe('getGenerationOutput');
    expect(Object.keys(op.responses)).toEqual(expect.arrayContaining(['302', '404', '409', '410']));
    expect(op.responses['302'].headers.Location).toBeDefined();
    expect(op.parameters.filter((p: { in: string }) => p.in === 'path').map((p: { name: string }) => p.name)).toEqual(['id', 'index']);
  });
});
